//! Checksummed records: a value written to sled (the agent's cache and outboxes, the control
//! plane's audit records) is stored with a CRC-32 of its key and bytes, and verified when read
//! back, so a flipped byte on disk (or a value moved under another key) is corruption, never a
//! changed verdict, event or violation. sled checksums its own log; this covers what sled
//! hands back as valid.

/// Bytes of the checksum after each value.
const CHECKSUM: usize = 4;

fn checksum(key: &[u8], value: &[u8]) -> [u8; CHECKSUM] {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&(key.len() as u64).to_le_bytes());
    hasher.update(key);
    hasher.update(value);
    hasher.finalize().to_le_bytes()
}

/// `value` as stored under `key`: the bytes, then their checksum.
pub fn seal(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + CHECKSUM);
    out.extend_from_slice(value);
    out.extend_from_slice(&checksum(key, value));
    out
}

/// The value stored under `key`, verified; the error says what is wrong.
pub fn open<'a>(key: &[u8], stored: &'a [u8]) -> Result<&'a [u8], String> {
    let Some(at) = stored.len().checked_sub(CHECKSUM) else {
        return Err(format!(
            "record {:?}: {} bytes, too short for its checksum",
            String::from_utf8_lossy(key),
            stored.len()
        ));
    };
    let (value, sum) = stored.split_at(at);
    if sum != checksum(key, value) {
        return Err(format!(
            "record {:?}: checksum mismatch",
            String::from_utf8_lossy(key)
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flipped_byte_and_every_other_key_is_detected() {
        let sealed = seal(b"policy-a", b"the policy bytes");
        assert_eq!(open(b"policy-a", &sealed).unwrap(), b"the policy bytes");
        for at in 0..sealed.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut damaged = sealed.clone();
                damaged[at] ^= flip;
                assert!(
                    open(b"policy-a", &damaged).is_err(),
                    "byte {at} ^ {flip:#x}"
                );
            }
        }
        assert!(open(b"policy-b", &sealed).is_err());
        assert!(open(b"k", &sealed[..3]).is_err());
        assert!(open(b"k", &seal(b"k", b"")).unwrap().is_empty());
    }
}
