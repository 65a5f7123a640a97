//! A fixed-size memo of phone numbers already normalized to E.164.
//!
//! Tracking and destination numbers repeat across many calls, and every version of a call
//! repeats its caller's number, so most numbers the processor sees it has normalized before.
//! Parsing one with libphonenumber costs about a microsecond; looking it up here costs a hash
//! and a compare of a few bytes.
//!
//! The memo is direct-mapped: each number has one slot, chosen by its hash, and a new number
//! takes the slot over. It never allocates after it is built, never grows, and a stream of
//! numbers seen once (callers) only evicts a frequent number for as long as it takes to see
//! that number again. Only successful normalizations are kept: a number that fails is rare and
//! is parsed again to build its error message.

use xxhash_rust::xxh3::xxh3_64;

/// Longest input kept (longer inputs, such as numbers with extensions, are not memoized).
const MAX_INPUT: usize = 30;
/// E.164 numbers are `+` and at most 15 digits.
const MAX_E164: usize = 16;
/// Slots (a power of two): 8,192 of 48 bytes each, 384 KiB per processor instance.
const SLOTS: usize = 8_192;

#[derive(Clone, Copy)]
struct Slot {
    input_len: u8,
    e164_len: u8,
    input: [u8; MAX_INPUT],
    e164: [u8; MAX_E164],
}

impl Slot {
    const EMPTY: Slot = Slot {
        input_len: 0,
        e164_len: 0,
        input: [0; MAX_INPUT],
        e164: [0; MAX_E164],
    };

    fn input(&self) -> &[u8] {
        &self.input[..usize::from(self.input_len)]
    }
}

/// What the memo knows about an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhoneMemoHit<'a> {
    /// The input normalizes to this E.164 number.
    E164(&'a str),
    /// The input is not in the memo.
    Unknown,
}

/// The memo of one validator (one processor instance: no locking).
pub struct PhoneMemo {
    slots: Box<[Slot]>,
}

impl std::fmt::Debug for PhoneMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let used = self.slots.iter().filter(|s| s.input_len > 0).count();
        f.debug_struct("PhoneMemo")
            .field("slots", &self.slots.len())
            .field("used", &used)
            .finish()
    }
}

impl Clone for PhoneMemo {
    fn clone(&self) -> Self {
        PhoneMemo {
            slots: self.slots.clone(),
        }
    }
}

impl Default for PhoneMemo {
    fn default() -> Self {
        PhoneMemo {
            slots: vec![Slot::EMPTY; SLOTS].into_boxed_slice(),
        }
    }
}

impl PhoneMemo {
    fn slot_index(input: &[u8]) -> usize {
        // SLOTS is a power of two; the mask keeps the index in range on any target width
        (xxh3_64(input) as usize) & (SLOTS - 1)
    }

    /// The E.164 form of `input`, if it was remembered.
    pub fn get(&self, input: &str) -> PhoneMemoHit<'_> {
        let input = input.as_bytes();
        if input.is_empty() || input.len() > MAX_INPUT {
            return PhoneMemoHit::Unknown;
        }
        let slot = &self.slots[Self::slot_index(input)];
        if slot.input() != input {
            return PhoneMemoHit::Unknown;
        }
        match std::str::from_utf8(&slot.e164[..usize::from(slot.e164_len)]) {
            Ok(e164) => PhoneMemoHit::E164(e164),
            Err(_) => PhoneMemoHit::Unknown,
        }
    }

    /// Remember that `input` normalizes to `e164` (ignored when either is too long to keep).
    pub fn remember(&mut self, input: &str, e164: &str) {
        let (input, e164) = (input.as_bytes(), e164.as_bytes());
        if input.is_empty() || input.len() > MAX_INPUT || e164.len() > MAX_E164 {
            return;
        }
        let slot = &mut self.slots[Self::slot_index(input)];
        slot.input[..input.len()].copy_from_slice(input);
        slot.e164[..e164.len()].copy_from_slice(e164);
        // both lengths are bounded by the checks above (at most 30 and 16)
        slot.input_len = input.len() as u8;
        slot.e164_len = e164.len() as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_remembered_number_is_found_and_others_are_not() {
        let mut memo = PhoneMemo::default();
        assert_eq!(memo.get("415-555-2671"), PhoneMemoHit::Unknown);
        memo.remember("415-555-2671", "+14155552671");
        assert_eq!(memo.get("415-555-2671"), PhoneMemoHit::E164("+14155552671"));
        assert_eq!(memo.get("415-555-2672"), PhoneMemoHit::Unknown);
        assert_eq!(memo.get("415-555-267"), PhoneMemoHit::Unknown);
    }

    #[test]
    fn inputs_too_long_to_keep_are_never_remembered() {
        let mut memo = PhoneMemo::default();
        let long = "+1 415 555 2671 extension 1234567";
        memo.remember(long, "+14155552671");
        assert_eq!(memo.get(long), PhoneMemoHit::Unknown);
        memo.remember("", "+14155552671");
        assert_eq!(memo.get(""), PhoneMemoHit::Unknown);
    }

    proptest! {
        /// Whatever was remembered in whatever order, a hit is always the answer last
        /// remembered for exactly that input (a slot taken over never answers for another).
        #[test]
        fn a_hit_is_always_the_last_answer_for_that_input(
            pairs in proptest::collection::vec(("[0-9+() -]{1,30}", "\\+[0-9]{7,15}"), 1..300),
        ) {
            let mut memo = PhoneMemo::default();
            let mut last = std::collections::HashMap::new();
            for (input, e164) in &pairs {
                memo.remember(input, e164);
                last.insert(input.clone(), e164.clone());
                for (seen, answer) in &last {
                    match memo.get(seen) {
                        PhoneMemoHit::E164(hit) => prop_assert_eq!(hit, answer.as_str()),
                        PhoneMemoHit::Unknown => {}
                    }
                }
            }
            // the newest entry is always there
            let (input, e164) = pairs.last().unwrap();
            prop_assert_eq!(memo.get(input), PhoneMemoHit::E164(e164.as_str()));
        }
    }
}
