//! Dedup state: per partition, call key -> (content fingerprint, version, seen_at).
//!
//! - [`key_hash`]: the 128-bit hash the state holds instead of each key's text.
//! - [`state`]: the in-memory map of one partition, the verdict on each record, the changes a
//!   batch stages before its transaction commits, and the memory it holds.
//! - [`restore`]: reading a partition's changelog (`callsync.dedup-state`) back to its end,
//!   and finding the text of hashed keys in it (for the TTL sweep's tombstones).

pub mod key_hash;
pub mod restore;
pub mod state;

pub use key_hash::{KeyHash, StateKey};
pub use restore::{find_changelog_keys, restore_partitions, RestoreError, RestoreStats};
pub use state::{PartitionState, StagedChanges, StoredEntry, Verdict};
