//! Counter-based pseudo-randomness: every draw is a pure function of its inputs, so call
//! `i` of an account can be generated without generating calls `0..i`.

/// SplitMix64 finaliser: a fast, well-mixed bijection on `u64`.
pub(crate) const fn splitmix64(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Mixes two words into one well-distributed word.
pub(crate) const fn mix(a: u64, b: u64) -> u64 {
    splitmix64(a ^ splitmix64(b.wrapping_add(0x632B_E59B_D9B4_E019)))
}

/// A stable 64-bit hash of a string (FNV-1a, then mixed).
pub(crate) fn hash_str(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
    }
    splitmix64(hash)
}

/// A uniform draw in `[0, 1)`.
pub(crate) fn unit(word: u64) -> f64 {
    (word >> 11) as f64 / (1u64 << 53) as f64
}

/// A uniform draw in `[0, bound)` (`0` when `bound` is `0`).
pub(crate) fn below(word: u64, bound: u64) -> u64 {
    ((u128::from(word) * u128::from(bound)) >> 64) as u64
}

/// A uniform draw in `[low, high]` (inclusive).
pub(crate) fn between(word: u64, low: u64, high: u64) -> u64 {
    if high <= low {
        return low;
    }
    low + below(word, high - low + 1)
}

/// A keyed bijection on `u32`: distinct inputs give distinct, random-looking outputs. Used to
/// embed a call index in an id so ids are unique without looking sequential.
pub(crate) fn permute32(value: u32, key: u64) -> u32 {
    let mut x = value ^ (key as u32);
    x = x.wrapping_mul(0x9E37_79B1);
    x ^= x >> 16;
    x = x.wrapping_mul(0x85EB_CA6B ^ ((key >> 32) as u32 | 1));
    x ^= x >> 13;
    x
}

/// A sequence of independent draws from one seed word.
pub(crate) struct Draws {
    seed: u64,
    counter: u64,
}

impl Draws {
    pub(crate) fn new(seed: u64) -> Self {
        Draws { seed, counter: 0 }
    }

    pub(crate) fn next_word(&mut self) -> u64 {
        self.counter += 1;
        mix(self.seed, self.counter)
    }

    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        below(self.next_word(), bound)
    }

    pub(crate) fn between(&mut self, low: u64, high: u64) -> u64 {
        between(self.next_word(), low, high)
    }

    pub(crate) fn chance(&mut self, share: f64) -> bool {
        unit(self.next_word()) < share
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute32_is_injective_on_a_sample() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..100_000u32 {
            assert!(seen.insert(permute32(i, 0xDEAD_BEEF_1234_5678)));
        }
    }

    #[test]
    fn below_stays_in_bounds() {
        for i in 0..10_000u64 {
            assert!(below(splitmix64(i), 7) < 7);
            let value = between(splitmix64(i), 3, 5);
            assert!((3..=5).contains(&value));
        }
    }
}
