//! The dedup state of one partition and the verdict on each record.
//!
//! A batch never changes the committed state directly: it stages its changes in
//! [`StagedChanges`] (looked up before the committed map), which are written to the
//! changelog inside the batch's transaction and merged with [`PartitionState::apply`] only
//! once that transaction commits. An aborted batch just drops its staged changes.

use std::collections::HashMap;
use std::mem::size_of;

use callsync_schemas::DedupEntry;
use chrono::{DateTime, Utc};
use xxhash_rust::xxh3::Xxh3DefaultBuilder;

use crate::fingerprint::Fingerprint;

/// What the processor does with a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// New key, or a newer version with different content: emit to `calls`.
    Emit,
    /// The same version as the one held (equal versions are the same record): drop.
    Duplicate,
    /// A newer version with the same content (a re-poll that only moved the provider's
    /// clock): drop, but remember the newer version so older versions stay stale.
    Unchanged,
    /// An older version than the one held: drop.
    Stale,
}

/// One key's state as held in memory (32 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredEntry {
    pub fingerprint: Fingerprint,
    pub version: i64,
    /// Microseconds since the epoch when the processor last saw the key.
    pub seen_at_micros: i64,
}

impl From<&DedupEntry> for StoredEntry {
    fn from(e: &DedupEntry) -> Self {
        StoredEntry {
            fingerprint: e.fingerprint,
            version: e.version,
            seen_at_micros: e.seen_at.timestamp_micros(),
        }
    }
}

impl From<&StoredEntry> for DedupEntry {
    fn from(e: &StoredEntry) -> Self {
        DedupEntry {
            fingerprint: e.fingerprint,
            version: e.version,
            seen_at: DateTime::<Utc>::from_timestamp_micros(e.seen_at_micros).unwrap_or_default(),
        }
    }
}

type KeyMap<V> = HashMap<Box<str>, V, Xxh3DefaultBuilder>;

/// Changes a batch made to one partition's state, not yet committed. `None` is a deletion
/// (a tombstone in the changelog).
#[derive(Debug, Default)]
pub struct StagedChanges {
    changes: KeyMap<Option<StoredEntry>>,
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
        self.changes.iter().map(|(k, v)| (&**k, v.as_ref()))
    }

    fn stage(&mut self, key: &str, entry: Option<StoredEntry>) {
        match self.changes.get_mut(key) {
            Some(slot) => *slot = entry,
            None => {
                self.changes.insert(key.into(), entry);
            }
        }
    }
}

/// The committed dedup state of one partition.
#[derive(Debug, Default)]
pub struct PartitionState {
    entries: KeyMap<StoredEntry>,
    key_bytes: usize,
}

impl PartitionState {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&StoredEntry> {
        self.entries.get(key)
    }

    /// The entry for `key` as the batch sees it: staged first, then committed.
    fn current<'a>(&'a self, staged: &'a StagedChanges, key: &str) -> Option<&'a StoredEntry> {
        match staged.changes.get(key) {
            Some(change) => change.as_ref(),
            None => self.entries.get(key),
        }
    }

    /// Judge `key` at `version` on the version alone: `Some(Stale)` or `Some(Duplicate)`
    /// (staging the same `seen_at` refresh as [`Self::observe`]) when a version at least as new
    /// is held, `None` when the record may be emitted and needs its fingerprint.
    pub fn observe_version(
        &self,
        staged: &mut StagedChanges,
        key: &str,
        version: i64,
        now_micros: i64,
        refresh_after_micros: i64,
    ) -> Option<Verdict> {
        let held = *self.current(staged, key)?;
        if version > held.version {
            return None;
        }
        if now_micros.saturating_sub(held.seen_at_micros) > refresh_after_micros {
            staged.stage(
                key,
                Some(StoredEntry {
                    seen_at_micros: now_micros,
                    ..held
                }),
            );
        }
        Some(if version < held.version {
            Verdict::Stale
        } else {
            Verdict::Duplicate
        })
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
        key: &str,
        fingerprint: Fingerprint,
        version: i64,
        now_micros: i64,
        refresh_after_micros: i64,
    ) -> Verdict {
        let fresh = StoredEntry {
            fingerprint,
            version,
            seen_at_micros: now_micros,
        };
        let Some(held) = self.current(staged, key).copied() else {
            staged.stage(key, Some(fresh));
            return Verdict::Emit;
        };
        let verdict = if version < held.version {
            Verdict::Stale
        } else if version == held.version {
            Verdict::Duplicate
        } else if fingerprint == held.fingerprint {
            Verdict::Unchanged
        } else {
            Verdict::Emit
        };
        match verdict {
            Verdict::Emit | Verdict::Unchanged => staged.stage(key, Some(fresh)),
            Verdict::Duplicate | Verdict::Stale => {
                if now_micros.saturating_sub(held.seen_at_micros) > refresh_after_micros {
                    staged.stage(
                        key,
                        Some(StoredEntry {
                            seen_at_micros: now_micros,
                            ..held
                        }),
                    );
                }
            }
        }
        verdict
    }

    /// Whether any committed key was last seen before `cutoff_micros`.
    pub fn has_expired(&self, cutoff_micros: i64) -> bool {
        self.entries
            .values()
            .any(|e| e.seen_at_micros < cutoff_micros)
    }

    /// Stage a deletion for every committed key last seen before `cutoff_micros` (and not
    /// touched by the batch). Returns how many expired.
    pub fn stage_expired(&self, staged: &mut StagedChanges, cutoff_micros: i64) -> usize {
        let mut expired = 0;
        for (key, entry) in &self.entries {
            if entry.seen_at_micros < cutoff_micros && !staged.changes.contains_key(key) {
                staged.changes.insert(key.clone(), None);
                expired += 1;
            }
        }
        expired
    }

    /// Merge a committed batch's changes.
    pub fn apply(&mut self, staged: StagedChanges) {
        for (key, change) in staged.changes {
            self.put(key, change);
        }
    }

    /// Set (or with `None`, remove) one key, as a changelog record read back does.
    pub fn put(&mut self, key: Box<str>, entry: Option<StoredEntry>) {
        match entry {
            Some(entry) => {
                let len = key.len();
                if self.entries.insert(key, entry).is_none() {
                    self.key_bytes += len;
                }
            }
            None => {
                if self.entries.remove(&key).is_some() {
                    self.key_bytes -= key.len();
                }
            }
        }
    }

    /// An estimate of the heap bytes this state holds: the table's slots and control bytes
    /// at its capacity, plus every key's allocation (rounded up to the allocator's 16-byte
    /// granularity). The benchmark checks it against the process's resident memory.
    pub fn approx_heap_bytes(&self) -> usize {
        let slot = size_of::<(Box<str>, StoredEntry)>() + 1;
        let table = self.entries.capacity() * slot;
        let keys = self.key_bytes + self.entries.len() * 8; // average rounding to 16 bytes
        table + keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000_000;

    fn observe(
        state: &PartitionState,
        staged: &mut StagedChanges,
        key: &str,
        fp: u128,
        version: i64,
    ) -> Verdict {
        state.observe(staged, key, fp, version, 10 * DAY, DAY)
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
        assert_eq!(
            observe(&state, &mut staged, "k", 2, 10),
            Verdict::Duplicate,
            "equal versions are the same record"
        );
        assert!(staged.is_empty(), "a fresh duplicate writes no state");
    }

    #[test]
    fn the_version_alone_decides_stale_and_duplicate() {
        let mut state = PartitionState::new();
        let mut staged = StagedChanges::default();
        assert_eq!(
            state.observe_version(&mut staged, "k", 10, 0, DAY),
            None,
            "unknown key"
        );
        observe(&state, &mut staged, "k", 1, 10);
        state.apply(staged);
        let mut staged = StagedChanges::default();
        assert_eq!(
            state.observe_version(&mut staged, "k", 9, 0, DAY),
            Some(Verdict::Stale)
        );
        assert_eq!(
            state.observe_version(&mut staged, "k", 10, 0, DAY),
            Some(Verdict::Duplicate)
        );
        assert_eq!(
            state.observe_version(&mut staged, "k", 11, 0, DAY),
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
            state.get("k").map(|e| (e.fingerprint, e.version)),
            Some((2, 30))
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
    fn old_entries_are_refreshed_when_seen_and_expire_when_not() {
        let mut state = PartitionState::new();
        state.put(
            "old".into(),
            Some(StoredEntry {
                fingerprint: 1,
                version: 1,
                seen_at_micros: 0,
            }),
        );
        state.put(
            "seen".into(),
            Some(StoredEntry {
                fingerprint: 1,
                version: 1,
                seen_at_micros: 0,
            }),
        );
        state.put(
            "new".into(),
            Some(StoredEntry {
                fingerprint: 1,
                version: 1,
                seen_at_micros: 9 * DAY,
            }),
        );
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
        assert_eq!(state.stage_expired(&mut staged, 5 * DAY), 1);
        let deleted: Vec<_> = staged
            .iter()
            .filter(|(_, e)| e.is_none())
            .map(|(k, _)| k.to_string())
            .collect();
        assert_eq!(deleted, ["old"]);
        state.apply(staged);
        assert_eq!(state.len(), 2);
        assert!(state.get("old").is_none());
        assert_eq!(state.get("seen").map(|e| e.seen_at_micros), Some(10 * DAY));
    }

    #[test]
    fn memory_estimate_grows_with_keys() {
        let mut state = PartitionState::new();
        let empty = state.approx_heap_bytes();
        for i in 0..1000 {
            state.put(
                format!("retreaver:acct-1:call-{i:08}").into(),
                Some(StoredEntry {
                    fingerprint: i,
                    version: 1,
                    seen_at_micros: 0,
                }),
            );
        }
        let per_key = (state.approx_heap_bytes() - empty) / 1000;
        assert!((60..200).contains(&per_key), "{per_key} bytes per key");
        for i in 0..1000 {
            state.put(format!("retreaver:acct-1:call-{i:08}").into(), None);
        }
        assert!(state.is_empty());
    }
}
