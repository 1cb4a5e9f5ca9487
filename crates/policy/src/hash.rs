//! The one fast non-cryptographic hasher of the scan index, the vulnerability id interner and
//! the engine's memo of prepared images: FxHash's multiply-rotate over eight bytes at a time,
//! finished with murmur3's 64-bit avalanche. The index's and the interner's keys (image
//! references, vulnerability ids) come from the control plane, not from admission requests,
//! and requests only read, so there is no collision flood to defend against; SipHash cost more
//! than the rest of a lookup. The memo does hash images from requests, but it is direct-mapped
//! (one slot per hash, no probing), so colliding names only cost misses.
//!
//! The avalanche matters: keys differ mostly in their last bytes (`CVE-2019-01234`,
//! `…/app-81234`), and a product's low bits depend only on its operands' low bits, so FxHash
//! alone leaves those differences out of the low bits a hash table indexes with. Without it
//! the agent's interner spent most of a 100,000-image snapshot walking probe chains.

use std::hash::{BuildHasher, Hasher};

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

/// Builds `FastHasher`s (for `HashMap::with_hasher`).
#[derive(Clone, Copy, Debug, Default)]
pub struct FastHash;

impl BuildHasher for FastHash {
    type Hasher = FastHasher;

    fn build_hasher(&self) -> FastHasher {
        FastHasher::default()
    }
}

#[derive(Default)]
pub struct FastHasher(u64);

impl FastHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Keys that differ only in their last digits spread over the low bits (a table's bucket)
    /// and the top seven (hashbrown's tag) alike.
    #[test]
    fn similar_keys_spread_over_low_and_high_bits() {
        let keys: Vec<String> = (0..4096).map(|i| format!("CVE-2019-{i:05}")).collect();
        let hashes: Vec<u64> = keys.iter().map(|k| FastHash.hash_one(k)).collect();
        let low: HashSet<u64> = hashes.iter().map(|h| h & 0xfff).collect();
        let top: HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        // 4,096 keys into 4,096 buckets: a good hash fills about 63% of them.
        assert!(low.len() > 2300, "{} buckets used", low.len());
        assert_eq!(top.len(), 128);
    }
}
