//! The dedup state of one partition and the verdict on each record.
//!
//! A batch never changes the committed state directly: it stages its changes in
//! [`StagedChanges`] (looked up before the committed map), which are written to the
//! changelog inside the batch's transaction and merged with [`PartitionState::apply`] only
//! once that transaction commits. An aborted batch just drops its staged changes.
//!
//! Memory: the committed map holds, per key, its [`KeyHash`] (16 bytes) and a
//! [`StoredEntry`] (20 bytes) inline in the table's slot, and no heap allocation of its own.
//! The map of a partition is split into [`SHARDS`] tables by bits of the key hash the tables
//! do not use themselves, for two reasons:
//! - a table that grows doubles ~1/16 of the partition's keys at a time: with one table, the
//!   old and the new table of a partition of 250,000 keys were both held while it grew
//!   (+12 MB for a moment, times the partitions that grow together);
//! - the tables get unequal shares of the keys, spread over one doubling (table `i` gets a
//!   share proportional to 2^(i/16)), so they double at different sizes of the partition.
//!   A table's buckets are a power of two it fills to at most 7/8, so one table (or equal
//!   ones) holds 1.14 to 2.29 buckets per key depending on the key count alone (2.1 at the
//!   benchmark's 250,000 keys per partition), and memory grows in cliffs of +100% at a time.
//!   Spread over one doubling, the tables hold ~1.65 buckets per key at any count, and memory
//!   grows with the keys: 59 to 63 bytes per key instead of 42 to 85.
//!
//! The key text lives only in the changelog and, for the keys a batch changes, in its
//! [`StagedChanges`] (the changelog record needs it). The TTL sweep, which writes tombstones
//! for keys it holds only as hashes, reads their text back from the changelog
//! ([`crate::dedup::find_changelog_keys`]).

use std::collections::{HashMap, HashSet};
use std::mem::size_of;
use std::sync::LazyLock;

use callsync_schemas::{ContentFingerprint, DedupEntry, Precedence};
use chrono::{DateTime, Utc};

use super::key_hash::{KeyHash, KeyHashBuilder, StateKey};

/// What the processor does with a valid record, judged by [`Precedence`] (version, then
/// content fingerprint) against the one held: the order the sink's upsert guard uses, so
/// both keep the same one of two versions that tie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// New key, or a greater precedence with different content (a newer version, or the same
    /// version with content whose fingerprint is greater): emit to `calls`.
    Emit,
    /// The same version and content as the one held: drop.
    Duplicate,
    /// A newer version with the same content (a re-poll that only moved the provider's
    /// clock): drop, but remember the newer version so older versions stay stale.
    Unchanged,
    /// A lesser precedence than the one held (an older version, or the same version with
    /// content whose fingerprint is less): drop.
    Stale,
}

/// One key's state as held in memory: 20 bytes, 4-byte aligned (the 64-bit content
/// fingerprint, the version, and `seen_at` in whole seconds, which is all the TTL needs).
///
/// Why 64 bits of fingerprint are enough, where the key hash needs 128: the fingerprint is
/// only ever compared with the fingerprint of another version *of the same key* (see
/// [`ContentFingerprint`]). The changelog keeps writing a 128-bit field (with these 64 bits in
/// it); entries written with all 128 bits are read back to their low 64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredEntry {
    fingerprint: [u32; 2],
    version: [u32; 2],
    /// Seconds since the epoch when the processor last saw the key.
    seen_at_secs: u32,
}

impl StoredEntry {
    /// `seen_at_micros` is kept to the second (clamped to 1970..2106), the fingerprint to
    /// its low 64 bits.
    pub fn new(fingerprint: ContentFingerprint, version: i64, seen_at_micros: i64) -> StoredEntry {
        let v = version as u64;
        let f = fingerprint.bits();
        StoredEntry {
            fingerprint: [f as u32, (f >> 32) as u32],
            version: [v as u32, (v >> 32) as u32],
            seen_at_secs: seen_at_micros
                .div_euclid(1_000_000)
                .clamp(0, i64::from(u32::MAX)) as u32,
        }
    }

    pub fn fingerprint(&self) -> ContentFingerprint {
        ContentFingerprint::from_bits(
            u64::from(self.fingerprint[0]) | u64::from(self.fingerprint[1]) << 32,
        )
    }

    /// Whether a record with `fingerprint` has the content this entry holds.
    pub fn same_content(&self, fingerprint: ContentFingerprint) -> bool {
        self.fingerprint() == fingerprint
    }

    /// The (version, fingerprint) of the version held.
    pub fn precedence(&self) -> Precedence {
        Precedence::new(self.version(), self.fingerprint())
    }

    pub fn version(&self) -> i64 {
        (u64::from(self.version[0]) | u64::from(self.version[1]) << 32) as i64
    }

    /// When the key was last seen, in microseconds since the epoch (whole seconds).
    pub fn seen_at_micros(&self) -> i64 {
        i64::from(self.seen_at_secs) * 1_000_000
    }

    fn seen_at(self, micros: i64) -> StoredEntry {
        StoredEntry::new(self.fingerprint(), self.version(), micros)
    }
}

impl From<&DedupEntry> for StoredEntry {
    fn from(e: &DedupEntry) -> Self {
        StoredEntry::new(
            ContentFingerprint::from_u128(e.fingerprint),
            e.version,
            e.seen_at.timestamp_micros(),
        )
    }
}

impl From<&StoredEntry> for DedupEntry {
    fn from(e: &StoredEntry) -> Self {
        DedupEntry {
            fingerprint: u128::from(e.fingerprint().bits()),
            version: e.version(),
            seen_at: DateTime::<Utc>::from_timestamp_micros(e.seen_at_micros()).unwrap_or_default(),
        }
    }
}

type HashedMap<V> = HashMap<KeyHash, V, KeyHashBuilder>;

/// Tables per partition of the committed state (see the module docs).
pub const SHARDS: usize = 16;
/// Bits of the key hash that choose a key's table (through [`SHARD_OF_SLOT`]).
const SHARD_SLOT_BITS: u32 = 10;

/// Table of each of the 1,024 slots of the key hash's top bits: table `i` gets a run of slots
/// proportional to 2^(i/16), from 45 slots (table 0) to 87 (table 15).
static SHARD_OF_SLOT: LazyLock<[u8; 1 << SHARD_SLOT_BITS]> = LazyLock::new(|| {
    let slots = 1usize << SHARD_SLOT_BITS;
    let weights: Vec<f64> = (0..SHARDS)
        .map(|i| (i as f64 / SHARDS as f64).exp2())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut ends = Vec::with_capacity(SHARDS);
    let mut cumulative = 0.0;
    for w in &weights {
        cumulative += w;
        ends.push(((cumulative / total) * slots as f64).round() as usize);
    }
    let mut table = [0u8; 1 << SHARD_SLOT_BITS];
    let mut shard = 0;
    for (slot, entry) in table.iter_mut().enumerate() {
        while slot >= ends[shard] {
            shard += 1;
        }
        *entry = shard as u8;
    }
    table
});

/// The table of `key` among a partition's [`SHARDS`].
fn shard_of(key: &KeyHash) -> usize {
    usize::from(SHARD_OF_SLOT[key.top_bits(SHARD_SLOT_BITS)])
}

/// One staged change: where its key text is in [`StagedChanges::keys`], and the new entry
/// (`None`: a deletion).
#[derive(Debug, Clone, Copy)]
struct StagedChange {
    key_start: usize,
    key_end: usize,
    entry: Option<StoredEntry>,
}

/// Changes a batch made to one partition's state, not yet committed. `None` is a deletion
/// (a tombstone in the changelog). Holds the text of every changed key (in one buffer) for
/// the changelog records.
#[derive(Debug, Default)]
pub struct StagedChanges {
    changes: HashedMap<StagedChange>,
    keys: String,
}

impl StagedChanges {
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Every staged change: key and new entry, `None` for a deletion.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&StoredEntry>)> {
        self.changes
            .values()
            .map(|c| (&self.keys[c.key_start..c.key_end], c.entry.as_ref()))
    }

    /// Stage a deletion of `key` (a tombstone in the changelog).
    pub fn stage_deletion(&mut self, key: &StateKey<'_>) {
        self.stage(key, None);
    }

    fn stage(&mut self, key: &StateKey<'_>, entry: Option<StoredEntry>) {
        match self.changes.get_mut(&key.hash) {
            Some(slot) => slot.entry = entry,
            None => {
                let key_start = self.keys.len();
                self.keys.push_str(key.text);
                self.changes.insert(
                    key.hash,
                    StagedChange {
                        key_start,
                        key_end: self.keys.len(),
                        entry,
                    },
                );
            }
        }
    }
}

/// The committed dedup state of one partition: [`SHARDS`] tables, a key's table chosen by
/// the top bits of its hash.
#[derive(Debug)]
pub struct PartitionState {
    shards: Box<[HashedMap<StoredEntry>]>,
}

impl Default for PartitionState {
    fn default() -> Self {
        PartitionState {
            shards: (0..SHARDS).map(|_| HashedMap::default()).collect(),
        }
    }
}

impl PartitionState {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(HashMap::is_empty)
    }

    pub fn get(&self, key: &str) -> Option<&StoredEntry> {
        self.lookup(&KeyHash::of(key))
    }

    fn lookup(&self, key: &KeyHash) -> Option<&StoredEntry> {
        self.shards[shard_of(key)].get(key)
    }

    fn entries(&self) -> impl Iterator<Item = (&KeyHash, &StoredEntry)> {
        self.shards.iter().flat_map(HashMap::iter)
    }

    /// The entry for `key` as the batch sees it: staged first, then committed.
    fn current<'a>(&'a self, staged: &'a StagedChanges, key: KeyHash) -> Option<&'a StoredEntry> {
        match staged.changes.get(&key) {
            Some(change) => change.entry.as_ref(),
            None => self.lookup(&key),
        }
    }

    /// Judge `key` at `version` before the record is validated: `Some(Stale)` when an older
    /// version is held, `Some(Duplicate)` when the same version is held and the record as
    /// decoded has the content held (`decoded_fingerprint`, asked only then; `None` when it
    /// cannot tell), staging the same `seen_at` refresh as [`Self::observe`]; `None` when the
    /// record may be emitted and needs its normalized fingerprint ([`Self::observe`]).
    pub fn observe_version(
        &self,
        staged: &mut StagedChanges,
        key: &StateKey<'_>,
        version: i64,
        decoded_fingerprint: impl FnOnce() -> Option<ContentFingerprint>,
        now_micros: i64,
        refresh_after_micros: i64,
    ) -> Option<Verdict> {
        let held = *self.current(staged, key.hash)?;
        let verdict = if version < held.version() {
            Verdict::Stale
        } else if version == held.version()
            && decoded_fingerprint().is_some_and(|fp| held.same_content(fp))
        {
            Verdict::Duplicate
        } else {
            return None;
        };
        if now_micros.saturating_sub(held.seen_at_micros()) > refresh_after_micros {
            staged.stage(key, Some(held.seen_at(now_micros)));
        }
        Some(verdict)
    }

    /// Judge a valid record of `key` with `fingerprint` and `version` seen at `now_micros`,
    /// staging the state change it implies.
    ///
    /// `seen_at` of a key that is only seen again (duplicate, stale) is refreshed, and a
    /// change staged, only when it is older than `refresh_after_micros`: a re-polled window
    /// keeps its keys alive without writing the changelog on every poll.
    pub fn observe(
        &self,
        staged: &mut StagedChanges,
        key: &StateKey<'_>,
        fingerprint: ContentFingerprint,
        version: i64,
        now_micros: i64,
        refresh_after_micros: i64,
    ) -> Verdict {
        let fresh = StoredEntry::new(fingerprint, version, now_micros);
        let Some(held) = self.current(staged, key.hash).copied() else {
            staged.stage(key, Some(fresh));
            return Verdict::Emit;
        };
        let verdict = match Precedence::new(version, fingerprint).cmp(&held.precedence()) {
            std::cmp::Ordering::Less => Verdict::Stale,
            std::cmp::Ordering::Equal => Verdict::Duplicate,
            std::cmp::Ordering::Greater if held.same_content(fingerprint) => Verdict::Unchanged,
            std::cmp::Ordering::Greater => Verdict::Emit,
        };
        match verdict {
            Verdict::Emit | Verdict::Unchanged => staged.stage(key, Some(fresh)),
            Verdict::Duplicate | Verdict::Stale => {
                if now_micros.saturating_sub(held.seen_at_micros()) > refresh_after_micros {
                    staged.stage(key, Some(held.seen_at(now_micros)));
                }
            }
        }
        verdict
    }

    /// Whether any committed key was last seen before `cutoff_micros`.
    pub fn has_expired(&self, cutoff_micros: i64) -> bool {
        self.entries()
            .any(|(_, e)| e.seen_at_micros() < cutoff_micros)
    }

    /// The hashes of the committed keys last seen before `cutoff_micros` (and not touched
    /// by `staged`). Their deletions are staged with [`StagedChanges::stage_deletion`] once
    /// their text has been read back from the changelog.
    pub fn expired(&self, staged: &StagedChanges, cutoff_micros: i64) -> HashSet<KeyHash> {
        self.entries()
            .filter(|(key, entry)| {
                entry.seen_at_micros() < cutoff_micros && !staged.changes.contains_key(key)
            })
            .map(|(key, _)| *key)
            .collect()
    }

    /// Drop `key` without a tombstone (an expired key whose text the changelog no longer
    /// holds, so there is no record a tombstone could delete).
    pub fn forget(&mut self, key: &KeyHash) -> bool {
        self.shards[shard_of(key)].remove(key).is_some()
    }

    /// Merge a committed batch's changes.
    pub fn apply(&mut self, staged: StagedChanges) {
        for (key, change) in staged.changes {
            self.put_hashed(key, change.entry);
        }
    }

    /// Set (or with `None`, remove) one key, as a changelog record read back does.
    pub fn put(&mut self, key: &str, entry: Option<StoredEntry>) {
        self.put_hashed(KeyHash::of(key), entry);
    }

    fn put_hashed(&mut self, key: KeyHash, entry: Option<StoredEntry>) {
        let shard = &mut self.shards[shard_of(&key)];
        match entry {
            Some(entry) => {
                shard.insert(key, entry);
            }
            None => {
                shard.remove(&key);
            }
        }
    }

    /// The heap bytes this state holds: the table's slots and control bytes. The benchmark
    /// checks it against the process's resident memory.
    pub fn approx_heap_bytes(&self) -> usize {
        // a table holds at most 7/8 of its buckets (a power of two) full; small ones hold
        // one bucket less than their count
        let slot = size_of::<(KeyHash, StoredEntry)>() + 1;
        self.shards
            .iter()
            .map(|shard| {
                let buckets = match shard.capacity() {
                    0 => 0,
                    c if c < 8 => (c + 1).next_power_of_two(),
                    c => (c * 8 / 7).next_power_of_two(),
                };
                buckets * slot
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000_000;

    fn fp(n: i64) -> ContentFingerprint {
        ContentFingerprint::from_i64(n)
    }

    fn observe(
        state: &PartitionState,
        staged: &mut StagedChanges,
        key: &str,
        fingerprint: i64,
        version: i64,
    ) -> Verdict {
        state.observe(
            staged,
            &StateKey::new(key),
            fp(fingerprint),
            version,
            10 * DAY,
            DAY,
        )
    }

    fn entry(fingerprint: i64, version: i64, seen_at_micros: i64) -> Option<StoredEntry> {
        Some(StoredEntry::new(fp(fingerprint), version, seen_at_micros))
    }

    #[test]
    fn the_first_version_emits_and_repeats_are_duplicates() {
        let mut state = PartitionState::new();
        let mut staged = StagedChanges::default();
        assert_eq!(observe(&state, &mut staged, "k", 1, 10), Verdict::Emit);
        // within the same batch the staged change counts
        assert_eq!(observe(&state, &mut staged, "k", 1, 10), Verdict::Duplicate);
        state.apply(staged);
        let mut staged = StagedChanges::default();
        assert_eq!(observe(&state, &mut staged, "k", 1, 10), Verdict::Duplicate);
        assert!(staged.is_empty(), "a fresh duplicate writes no state");
    }

    /// Issue 16: a record with the same version but different content is not a duplicate; the
    /// greater fingerprint wins, as in the sink's guard. Failed before the fix: every equal
    /// version was a Duplicate, whatever its content.
    #[test]
    fn equal_versions_with_different_content_break_the_tie_by_fingerprint() {
        let mut state = PartitionState::new();
        let mut staged = StagedChanges::default();
        assert_eq!(observe(&state, &mut staged, "k", 1, 10), Verdict::Emit);
        state.apply(staged);
        let mut staged = StagedChanges::default();
        assert_eq!(
            observe(&state, &mut staged, "k", 2, 10),
            Verdict::Emit,
            "same version, greater fingerprint"
        );
        assert_eq!(
            observe(&state, &mut staged, "k", 1, 10),
            Verdict::Stale,
            "same version, the lesser fingerprint just replaced"
        );
        assert_eq!(
            observe(&state, &mut staged, "k", -7, 10),
            Verdict::Stale,
            "fingerprints compare as signed integers, as Postgres bigints do"
        );
        assert_eq!(observe(&state, &mut staged, "k", 2, 10), Verdict::Duplicate);
        state.apply(staged);
        assert_eq!(state.get("k").map(|e| e.fingerprint()), Some(fp(2)));
        // whichever order they come in, the greater fingerprint is held
        let mut state = PartitionState::new();
        let mut staged = StagedChanges::default();
        assert_eq!(observe(&state, &mut staged, "k", 2, 10), Verdict::Emit);
        assert_eq!(observe(&state, &mut staged, "k", 1, 10), Verdict::Stale);
        state.apply(staged);
        assert_eq!(state.get("k").map(|e| e.fingerprint()), Some(fp(2)));
    }

    #[test]
    fn the_version_alone_decides_stale_and_duplicate() {
        let mut state = PartitionState::new();
        let mut staged = StagedChanges::default();
        let k = StateKey::new("k");
        let unasked = || -> Option<ContentFingerprint> { panic!("the version decides") };
        assert_eq!(
            state.observe_version(&mut staged, &k, 10, unasked, 0, DAY),
            None,
            "unknown key"
        );
        observe(&state, &mut staged, "k", 1, 10);
        state.apply(staged);
        let mut staged = StagedChanges::default();
        assert_eq!(
            state.observe_version(&mut staged, &k, 9, unasked, 0, DAY),
            Some(Verdict::Stale)
        );
        assert_eq!(
            state.observe_version(&mut staged, &k, 10, || Some(fp(1)), 0, DAY),
            Some(Verdict::Duplicate),
            "the same version with the content held"
        );
        assert_eq!(
            state.observe_version(&mut staged, &k, 10, || Some(fp(0)), 0, DAY),
            None,
            "the same version with other content (as decoded): needs the normalized content"
        );
        assert_eq!(
            state.observe_version(&mut staged, &k, 10, || None, 0, DAY),
            None,
            "a decoded fingerprint that cannot be told"
        );
        assert_eq!(
            state.observe_version(&mut staged, &k, 11, unasked, 0, DAY),
            None,
            "newer: needs the content"
        );
    }

    #[test]
    fn newer_versions_emit_only_when_content_differs_and_older_ones_are_stale() {
        let mut state = PartitionState::new();
        let mut staged = StagedChanges::default();
        observe(&state, &mut staged, "k", 1, 10);
        state.apply(staged);
        let mut staged = StagedChanges::default();
        assert_eq!(observe(&state, &mut staged, "k", 1, 20), Verdict::Unchanged);
        assert_eq!(
            observe(&state, &mut staged, "k", 2, 15),
            Verdict::Stale,
            "v15 is older than the v20 just seen"
        );
        assert_eq!(observe(&state, &mut staged, "k", 2, 30), Verdict::Emit);
        state.apply(staged);
        assert_eq!(
            state.get("k").map(|e| (e.fingerprint(), e.version())),
            Some((fp(2), 30))
        );
    }

    #[test]
    fn aborted_changes_leave_the_committed_state_alone() {
        let mut state = PartitionState::new();
        let mut staged = StagedChanges::default();
        observe(&state, &mut staged, "k", 1, 10);
        drop(staged);
        assert!(state.is_empty());
        let mut staged = StagedChanges::default();
        assert_eq!(observe(&state, &mut staged, "k", 1, 10), Verdict::Emit);
        state.apply(staged);
        assert_eq!(state.len(), 1);
    }

    #[test]
    fn staged_changes_keep_each_key_text_once_with_its_last_entry() {
        let state = PartitionState::new();
        let mut staged = StagedChanges::default();
        observe(&state, &mut staged, "callrail:a:1", 1, 10);
        observe(&state, &mut staged, "callrail:a:2", 1, 10);
        observe(&state, &mut staged, "callrail:a:1", 2, 20);
        staged.stage_deletion(&StateKey::new("callrail:a:2"));
        let mut changes: Vec<_> = staged
            .iter()
            .map(|(k, e)| (k.to_string(), e.map(|e| e.version())))
            .collect();
        changes.sort();
        assert_eq!(
            changes,
            [
                ("callrail:a:1".to_string(), Some(20)),
                ("callrail:a:2".to_string(), None)
            ]
        );
    }

    #[test]
    fn entries_keep_every_field_through_the_changelog_form() {
        let fingerprint = ContentFingerprint::from_bits(u64::MAX - 12_345);
        let e = StoredEntry::new(fingerprint, -7, 1_700_000_000_123_456);
        assert_eq!(e.fingerprint(), fingerprint);
        assert!(e.same_content(fingerprint));
        assert!(!e.same_content(ContentFingerprint::from_bits(u64::MAX - 12_346)));
        // a changelog entry written with all 128 bits is read back to its low 64
        let wide = DedupEntry {
            fingerprint: u128::MAX - 12_345,
            ..DedupEntry::from(&e)
        };
        assert!(StoredEntry::from(&wide).same_content(fingerprint));
        assert_eq!(e.version(), -7);
        assert_eq!(
            e.seen_at_micros(),
            1_700_000_000_000_000,
            "kept to the second"
        );
        let back = StoredEntry::from(&DedupEntry::from(&e));
        assert_eq!(back, e);
        let e = StoredEntry::new(fp(1), i64::MAX, 0);
        assert_eq!(e.version(), i64::MAX);
        assert_eq!(size_of::<StoredEntry>(), 20);
    }

    #[test]
    fn old_entries_are_refreshed_when_seen_and_expire_when_not() {
        let mut state = PartitionState::new();
        state.put("old", entry(1, 1, 0));
        state.put("seen", entry(1, 1, 0));
        state.put("new", entry(1, 1, 9 * DAY));
        let mut staged = StagedChanges::default();
        assert_eq!(
            observe(&state, &mut staged, "seen", 1, 1),
            Verdict::Duplicate
        );
        assert_eq!(
            staged.len(),
            1,
            "seen_at older than the refresh interval is refreshed"
        );
        let expired = state.expired(&staged, 5 * DAY);
        assert_eq!(expired, HashSet::from([KeyHash::of("old")]));
        staged.stage_deletion(&StateKey::new("old"));
        let deleted: Vec<_> = staged
            .iter()
            .filter(|(_, e)| e.is_none())
            .map(|(k, _)| k.to_string())
            .collect();
        assert_eq!(deleted, ["old"]);
        state.apply(staged);
        assert_eq!(state.len(), 2);
        assert!(state.get("old").is_none());
        assert_eq!(
            state.get("seen").map(|e| e.seen_at_micros()),
            Some(10 * DAY)
        );
        assert!(state.forget(&KeyHash::of("new")));
        assert_eq!(state.len(), 1);
    }

    #[test]
    fn memory_per_key_is_the_slot_and_its_control_byte() {
        let mut state = PartitionState::new();
        assert_eq!(state.approx_heap_bytes(), 0);
        const N: usize = 100_000;
        for i in 0..N {
            state.put(
                &format!("retreaver:acct-1:call-{i:08}"),
                entry(i as i64, 1, 0),
            );
        }
        // slots of 37 bytes (with the control byte), ~1.65 of them per key
        assert_eq!(size_of::<(KeyHash, StoredEntry)>(), 36);
        let per_key = state.approx_heap_bytes() / N;
        assert!((50..=70).contains(&per_key), "{per_key} bytes per key");
        // table i holds a share of the keys proportional to 2^(i/16): the last about twice
        // the first
        let tables: Vec<usize> = state.shards.iter().map(HashMap::len).collect();
        let ratio = tables[SHARDS - 1] as f64 / tables[0] as f64;
        assert!((1.75..=2.25).contains(&ratio), "{tables:?}");
        assert!(
            tables.windows(2).all(|w| w[0] < w[1] + N / 200),
            "{tables:?}"
        );
        for i in 0..N {
            state.put(&format!("retreaver:acct-1:call-{i:08}"), None);
        }
        assert!(state.is_empty());
    }

    #[test]
    fn memory_per_key_does_not_depend_on_the_key_count() {
        // one table, or equal ones, would hold 42 to 85 bytes per key along this range (85
        // at 240,000: 32,768 buckets a table, a quarter past the last doubling)
        let mut state = PartitionState::new();
        let mut per_key = Vec::new();
        for i in 0..400_000u64 {
            state.put(&format!("ringba:acct-1:call-{i:08}"), entry(1, 1, 0));
            let keys = i + 1;
            if keys % 40_000 == 0 {
                per_key.push(state.approx_heap_bytes() as u64 / keys);
            }
        }
        assert!(
            per_key.iter().all(|b| (52..=70).contains(b)),
            "bytes per key at 40,000 .. 400,000 keys: {per_key:?}"
        );
    }
}
