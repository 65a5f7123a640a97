//! What the in-memory dedup state holds instead of a call key: its 128-bit hash.
//!
//! A call key (`{provider}:{account_id}:{call_id}`) is 30-60 bytes of text in its own heap
//! allocation; its hash is 16 bytes inline in the table's slot. Two different keys with the
//! same hash would make the second call a "duplicate" of the first, a lost record, so the
//! hash is 128 bits wide: among 10^9 keys the chance of any collision is about 10^-21
//! (a 64-bit hash would reach 3% there). The hash is seeded with a value drawn once per
//! process: nothing outside the process ever sees a [`KeyHash`] (the changelog keeps the key
//! text, and every state is rebuilt from it), so keys chosen to collide cannot be prepared
//! in advance.
//!
//! [`KeyHash`] is its own hash-table hash: [`KeyHashBuilder`] hands its low 64 bits to the
//! table unchanged, so a lookup does not hash anything again.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::OnceLock;

use xxhash_rust::xxh3::xxh3_128_with_seed;

/// The 128-bit hash of a call key (stored as four `u32`, so a table slot needs 4-byte
/// alignment only and carries no padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyHash([u32; 4]);

impl KeyHash {
    /// The hash of `key` in this process.
    pub fn of(key: &str) -> KeyHash {
        let hash = xxh3_128_with_seed(key.as_bytes(), process_seed());
        KeyHash([
            hash as u32,
            (hash >> 32) as u32,
            (hash >> 64) as u32,
            (hash >> 96) as u32,
        ])
    }

    /// The top `bits` (at most 32) bits of the hash, which a table (it uses the low 64 bits)
    /// never looks at: for choosing among tables.
    pub fn top_bits(&self, bits: u32) -> usize {
        debug_assert!((1..=32).contains(&bits));
        (u64::from(self.0[3]) >> (32 - bits)) as usize
    }

    fn low_u64(&self) -> u64 {
        u64::from(self.0[0]) | u64::from(self.0[1]) << 32
    }
}

fn process_seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| RandomState::new().hash_one("callsync dedup key seed"))
}

impl Hash for KeyHash {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.low_u64());
    }
}

/// The hasher of tables keyed by [`KeyHash`]: passes the key's own bits through.
#[derive(Debug, Default, Clone, Copy)]
pub struct KeyHashHasher(u64);

impl Hasher for KeyHashHasher {
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    /// Not used by [`KeyHash`]; folds other input so the hasher stays correct for it.
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The [`BuildHasher`] of tables keyed by [`KeyHash`].
pub type KeyHashBuilder = BuildHasherDefault<KeyHashHasher>;

/// A call key with its hash, computed once per record.
#[derive(Debug, Clone, Copy)]
pub struct StateKey<'a> {
    pub text: &'a str,
    pub hash: KeyHash,
}

impl<'a> StateKey<'a> {
    pub fn new(text: &'a str) -> StateKey<'a> {
        StateKey {
            text,
            hash: KeyHash::of(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn equal_keys_hash_alike_and_different_keys_do_not() {
        assert_eq!(KeyHash::of("retreaver:a:1"), KeyHash::of("retreaver:a:1"));
        let hashes: HashSet<u128> = (0..100_000)
            .map(|i| {
                let h = KeyHash::of(&format!("retreaver:acct-1:call-{i:08}"));
                u128::from(h.low_u64()) | u128::from(h.0[2]) << 64 | u128::from(h.0[3]) << 96
            })
            .collect();
        assert_eq!(hashes.len(), 100_000);
    }

    #[test]
    fn the_table_hash_is_the_low_bits_of_the_key_hash() {
        let h = KeyHash::of("callrail:acct:call");
        assert_eq!(KeyHashBuilder::default().hash_one(h), h.low_u64());
        assert_eq!(std::mem::align_of::<KeyHash>(), 4);
        assert_eq!(std::mem::size_of::<KeyHash>(), 16);
    }
}
