//! The chunk file of a snapshot's scans: a header naming the format, then each chunk as its
//! length, a CRC-32 of the length and bytes, and the bytes; then a trailer with the number of
//! chunks (the file is complete only with it). Reading verifies every checksum, the trailer
//! and that nothing follows it, so a flipped byte anywhere, a truncated file or a file of
//! another format is an error, never a changed scan.

use std::io::{Read, Write};

/// The first bytes of a chunk file of this format.
const MAGIC: &[u8; 8] = b"PCSCAN1\n";
/// The length field that starts the trailer instead of a chunk.
const END: u64 = u64::MAX;
/// Largest chunk accepted when reading (a snapshot chunk is a few MiB at most).
const MAX_CHUNK: u64 = 1 << 31;

fn crc(length: u64, bytes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&length.to_le_bytes());
    hasher.update(bytes);
    hasher.finalize()
}

/// Writes the header of a new chunk file.
pub fn write_header(out: &mut impl Write) -> std::io::Result<()> {
    out.write_all(MAGIC)
}

/// Appends one chunk.
pub fn write_chunk(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    let length = bytes.len() as u64;
    out.write_all(&length.to_le_bytes())?;
    out.write_all(&crc(length, bytes).to_le_bytes())?;
    out.write_all(bytes)
}

/// Ends the file after `count` chunks.
pub fn write_trailer(out: &mut impl Write, count: u64) -> std::io::Result<()> {
    out.write_all(&END.to_le_bytes())?;
    out.write_all(&count.to_le_bytes())?;
    out.write_all(&crc(END, &count.to_le_bytes()).to_le_bytes())
}

/// Reads every chunk in order, handing each to `chunk`; any damage is an error naming where.
pub fn read(
    input: &mut impl Read,
    mut chunk: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<(), String> {
    let mut magic = [0; 8];
    input
        .read_exact(&mut magic)
        .map_err(|e| format!("no chunk file header: {e}"))?;
    if &magic != MAGIC {
        return Err("not a scan chunk file of this format".into());
    }
    let mut buffer = Vec::new();
    let mut count = 0u64;
    loop {
        let at = count;
        let mut word = [0; 8];
        input
            .read_exact(&mut word)
            .map_err(|e| format!("chunk {at}: truncated before its length or the trailer: {e}"))?;
        let length = u64::from_le_bytes(word);
        let mut sum = [0; 4];
        if length == END {
            let mut counted = [0; 8];
            input
                .read_exact(&mut counted)
                .and_then(|()| input.read_exact(&mut sum))
                .map_err(|e| format!("truncated trailer: {e}"))?;
            if u32::from_le_bytes(sum) != crc(END, &counted) {
                return Err("trailer checksum mismatch".into());
            }
            if u64::from_le_bytes(counted) != count {
                return Err(format!(
                    "the trailer counts {} chunks; the file holds {count}",
                    u64::from_le_bytes(counted)
                ));
            }
            let mut rest = [0; 1];
            return match input.read(&mut rest) {
                Ok(0) => Ok(()),
                Ok(_) => Err("bytes after the trailer".into()),
                Err(e) => Err(format!("after the trailer: {e}")),
            };
        }
        if length > MAX_CHUNK {
            return Err(format!("chunk {at}: a length of {length} bytes"));
        }
        input
            .read_exact(&mut sum)
            .map_err(|e| format!("chunk {at}: truncated checksum: {e}"))?;
        // Read what is there, up to the stated length: memory follows the bytes on disk, not
        // a length field (a damaged one once claimed 2 GiB before a byte was read).
        buffer.clear();
        (&mut *input)
            .take(length)
            .read_to_end(&mut buffer)
            .map_err(|e| format!("chunk {at}: {e}"))?;
        if buffer.len() as u64 != length {
            return Err(format!(
                "chunk {at}: truncated: {} of {length} bytes",
                buffer.len()
            ));
        }
        if u32::from_le_bytes(sum) != crc(length, &buffer) {
            return Err(format!("chunk {at}: checksum mismatch"));
        }
        chunk(&buffer).map_err(|e| format!("chunk {at}: {e}"))?;
        count += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(chunks: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        write_header(&mut out).unwrap();
        for chunk in chunks {
            write_chunk(&mut out, chunk).unwrap();
        }
        write_trailer(&mut out, chunks.len() as u64).unwrap();
        out
    }

    fn chunks_of(bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        let mut out = Vec::new();
        read(&mut &bytes[..], |chunk| {
            out.push(chunk.to_vec());
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn chunks_read_back_in_order() {
        let bytes = file(&[b"first", b"", b"third"]);
        assert_eq!(
            chunks_of(&bytes).unwrap(),
            [b"first".to_vec(), Vec::new(), b"third".to_vec()]
        );
        assert_eq!(chunks_of(&file(&[])).unwrap(), Vec::<Vec<u8>>::new());
    }

    /// A flipped byte at every position of the file (header, lengths, checksums, bytes,
    /// trailer), and every truncation, is an error.
    #[test]
    fn every_flipped_byte_and_every_truncation_is_detected() {
        let bytes = file(&[b"summary one", b"summary two, longer", b""]);
        for at in 0..bytes.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut damaged = bytes.clone();
                damaged[at] ^= flip;
                assert!(chunks_of(&damaged).is_err(), "byte {at} ^ {flip:#x}");
            }
        }
        for end in 0..bytes.len() {
            assert!(chunks_of(&bytes[..end]).is_err(), "cut at {end}");
        }
        // A length claiming far more than the file holds is refused without allocating it.
        let mut lying = Vec::new();
        write_header(&mut lying).unwrap();
        lying.extend_from_slice(&((1u64 << 31) - 1).to_le_bytes());
        lying.extend_from_slice(&[0; 4]);
        assert!(chunks_of(&lying).unwrap_err().contains("truncated: 0 of"));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(
            chunks_of(&longer)
                .unwrap_err()
                .contains("after the trailer")
        );
    }
}
