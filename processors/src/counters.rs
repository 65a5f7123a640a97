//! What the processor did, counted: live atomic counters shared with whoever started it,
//! the report it returns, and the names of the metrics it exports.

use std::sync::atomic::{AtomicU64, Ordering};

/// Metric names specific to the processor (the shared ones live in
/// `callsync_runtime::metrics`).
pub mod metric_names {
    /// Transactions (batches) ended, labelled `outcome` = `committed` | `aborted`.
    pub const PROCESSOR_BATCHES_TOTAL: &str = "callsync_processor_batches_total";
    /// Seconds from a batch's first record to its commit.
    pub const PROCESSOR_BATCH_SECONDS: &str = "callsync_processor_batch_seconds";
    /// Seconds closing a batch: changelog writes, offsets and the transaction's commit.
    pub const PROCESSOR_COMMIT_SECONDS: &str = "callsync_processor_commit_seconds";
    /// Input records per committed batch.
    pub const PROCESSOR_BATCH_RECORDS: &str = "callsync_processor_batch_records";
    /// Seconds spent restoring dedup state on assignment.
    pub const PROCESSOR_RESTORE_SECONDS: &str = "callsync_processor_restore_seconds";
    /// Dedup changelog records written, labelled `kind` = `entry` | `tombstone`.
    pub const PROCESSOR_STATE_WRITES_TOTAL: &str = "callsync_processor_state_writes_total";
}

/// Live counters of one processor instance. Only committed batches are counted, so after a
/// crash and restart the counts of the two runs add up to the work done exactly once.
#[derive(Debug, Default)]
pub struct ProcessorCounters {
    /// Input records in committed batches.
    pub consumed: AtomicU64,
    /// Records written to `calls`.
    pub emitted: AtomicU64,
    /// Exact duplicates dropped (same version).
    pub duplicates: AtomicU64,
    /// Newer versions with unchanged content dropped.
    pub unchanged: AtomicU64,
    /// Older versions dropped.
    pub stale: AtomicU64,
    /// Records that failed validation (sent to the DLQ).
    pub invalid: AtomicU64,
    /// Values that could not be decoded (sent to the DLQ).
    pub undecodable: AtomicU64,
    pub batches_committed: AtomicU64,
    pub batches_aborted: AtomicU64,
    /// Time spent closing committed batches (changelog writes, offsets, commit), in µs.
    pub commit_micros: AtomicU64,
    /// Dedup changelog entries written.
    pub state_writes: AtomicU64,
    /// Tombstones written for expired entries.
    pub expired: AtomicU64,
    /// Partitions whose state was restored, keys restored, and time spent.
    pub partitions_restored: AtomicU64,
    pub keys_restored: AtomicU64,
    pub restore_micros: AtomicU64,
    /// Keys and estimated heap bytes of the state held now.
    pub state_keys: AtomicU64,
    pub state_bytes: AtomicU64,
}

impl ProcessorCounters {
    pub fn snapshot(&self) -> ProcessorReport {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ProcessorReport {
            consumed: get(&self.consumed),
            emitted: get(&self.emitted),
            duplicates: get(&self.duplicates),
            unchanged: get(&self.unchanged),
            stale: get(&self.stale),
            invalid: get(&self.invalid),
            undecodable: get(&self.undecodable),
            batches_committed: get(&self.batches_committed),
            batches_aborted: get(&self.batches_aborted),
            commit_micros: get(&self.commit_micros),
            state_writes: get(&self.state_writes),
            expired: get(&self.expired),
            partitions_restored: get(&self.partitions_restored),
            keys_restored: get(&self.keys_restored),
            restore_micros: get(&self.restore_micros),
            state_keys: get(&self.state_keys),
            state_bytes: get(&self.state_bytes),
        }
    }

    pub(crate) fn add_batch(&self, tally: &BatchTally) {
        let add = |c: &AtomicU64, n: u64| {
            c.fetch_add(n, Ordering::Relaxed);
        };
        add(&self.consumed, tally.consumed);
        add(&self.emitted, tally.emitted);
        add(&self.duplicates, tally.duplicates);
        add(&self.unchanged, tally.unchanged);
        add(&self.stale, tally.stale);
        add(&self.invalid, tally.invalid);
        add(&self.undecodable, tally.undecodable);
        add(&self.state_writes, tally.state_writes);
        add(&self.expired, tally.expired);
        add(&self.batches_committed, 1);
    }
}

/// Counts of one batch, added to the counters when its transaction commits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BatchTally {
    pub consumed: u64,
    pub emitted: u64,
    pub duplicates: u64,
    pub unchanged: u64,
    pub stale: u64,
    pub invalid: u64,
    pub undecodable: u64,
    pub state_writes: u64,
    pub expired: u64,
}

/// What a processor instance did (committed work only), returned when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessorReport {
    pub consumed: u64,
    pub emitted: u64,
    pub duplicates: u64,
    pub unchanged: u64,
    pub stale: u64,
    pub invalid: u64,
    pub undecodable: u64,
    pub batches_committed: u64,
    pub batches_aborted: u64,
    /// Time spent closing committed batches (changelog writes, offsets, commit), in µs.
    pub commit_micros: u64,
    pub state_writes: u64,
    pub expired: u64,
    pub partitions_restored: u64,
    pub keys_restored: u64,
    pub restore_micros: u64,
    pub state_keys: u64,
    pub state_bytes: u64,
}

impl ProcessorReport {
    /// Records dropped as duplicates of any kind (same version, or newer with the same content).
    pub fn duplicates_dropped(&self) -> u64 {
        self.duplicates + self.unchanged
    }

    /// Records sent to the DLQ.
    pub fn dead_lettered(&self) -> u64 {
        self.invalid + self.undecodable
    }

    /// Estimated bytes of state memory per key held (0 with no keys).
    pub fn state_bytes_per_key(&self) -> u64 {
        self.state_bytes.checked_div(self.state_keys).unwrap_or(0)
    }
}
