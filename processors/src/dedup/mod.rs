//! Dedup state: per partition, call key -> (content fingerprint, version, seen_at).
//!
//! - [`state`]: the in-memory map of one partition, the verdict on each record, the changes a
//!   batch stages before its transaction commits, and the memory it holds.
//! - [`restore`]: reading a partition's changelog (`callsync.dedup-state`) back to its end.

pub mod restore;
pub mod state;

pub use restore::{restore_partitions, RestoreError, RestoreStats};
pub use state::{PartitionState, StagedChanges, StoredEntry, Verdict};
