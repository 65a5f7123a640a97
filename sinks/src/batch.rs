//! A sink batch: the records read from Kafka since the last commit, bounded by
//! rows, bytes and time, collapsed by primary key (highest version wins), with the
//! next offset of every partition it covers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use callsync_schemas::CallRecord;

/// The primary key of `calls`: (provider, account_id, call_id). Ordered the same
/// way by every instance, so concurrent writers lock rows in one order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RowKey {
    pub provider: &'static str,
    pub account_id: String,
    pub call_id: String,
}

impl RowKey {
    pub fn of(record: &CallRecord) -> Self {
        RowKey {
            provider: record.provider.as_str(),
            account_id: record.account_id.clone(),
            call_id: record.call_id.clone(),
        }
    }
}

impl std::fmt::Display for RowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.provider, self.account_id, self.call_id)
    }
}

/// Where a Kafka record came from, and its bytes as read (for the DLQ).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

/// One row to upsert: the newest version of a call seen in this batch.
#[derive(Debug, Clone)]
pub struct SinkRow {
    pub record: CallRecord,
    pub source: SourceRecord,
}

/// A record that will not reach the table, bound for `calls.dlq`.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub source: SourceRecord,
    /// Why: the decoder's or the database's message.
    pub reason: String,
}

/// Limits of one batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Kafka records (before collapsing) after which the batch is flushed.
    pub max_records: usize,
    /// Kafka value bytes (before collapsing) after which the batch is flushed. A row is held
    /// twice (decoded, and as read, for the DLQ), so this bounds the batch's memory where a
    /// count of records cannot: a record carrying the provider's raw JSON is several times
    /// the size of one without.
    pub max_bytes: usize,
    /// Age of the oldest record after which the batch is flushed.
    pub max_age: Duration,
}

/// What pushing a record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// A key new to this batch.
    Added,
    /// Replaced an older (or equal) version of the key already in the batch.
    Replaced,
    /// Older than the version of the key already in the batch; dropped.
    Superseded,
}

/// See the module docs.
#[derive(Debug)]
pub struct SinkBatch {
    topic: String,
    limits: BatchLimits,
    rows: BTreeMap<RowKey, SinkRow>,
    dead_letters: Vec<DeadLetter>,
    /// partition -> offset after the last record of that partition in the batch
    next_offsets: BTreeMap<i32, i64>,
    records: usize,
    /// Value bytes of the records pushed.
    bytes: usize,
    opened_at: Option<Instant>,
}

impl SinkBatch {
    pub fn new(topic: impl Into<String>, limits: BatchLimits) -> Self {
        SinkBatch {
            topic: topic.into(),
            limits,
            rows: BTreeMap::new(),
            dead_letters: Vec::new(),
            next_offsets: BTreeMap::new(),
            records: 0,
            bytes: 0,
            opened_at: None,
        }
    }

    /// A batch holding exactly `rows` (benchmarks and store tests); offsets are
    /// taken from the rows' sources.
    pub fn from_rows(topic: impl Into<String>, rows: impl IntoIterator<Item = SinkRow>) -> Self {
        let mut batch = SinkBatch::new(
            topic,
            BatchLimits {
                max_records: usize::MAX,
                max_bytes: usize::MAX,
                max_age: Duration::MAX,
            },
        );
        for row in rows {
            batch.push(row.record, row.source);
        }
        batch
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Add a decoded record. Offsets must grow within a partition.
    pub fn push(&mut self, record: CallRecord, source: SourceRecord) -> Pushed {
        self.note(&source);
        let key = RowKey::of(&record);
        match self.rows.get_mut(&key) {
            None => {
                self.rows.insert(key, SinkRow { record, source });
                Pushed::Added
            }
            Some(existing) if existing.record.version <= record.version => {
                *existing = SinkRow { record, source };
                Pushed::Replaced
            }
            Some(_) => Pushed::Superseded,
        }
    }

    /// Add a record that cannot be decoded; its offset still advances.
    pub fn push_dead_letter(&mut self, source: SourceRecord, reason: impl Into<String>) {
        self.note(&source);
        self.dead_letters.push(DeadLetter {
            source,
            reason: reason.into(),
        });
    }

    fn note(&mut self, source: &SourceRecord) {
        self.records += 1;
        self.bytes += source.payload.as_ref().map_or(0, Vec::len);
        self.opened_at.get_or_insert_with(Instant::now);
        let next = self
            .next_offsets
            .entry(source.partition)
            .or_insert(source.offset + 1);
        *next = (*next).max(source.offset + 1);
    }

    /// Move rows the database rejected to the dead letters, with its message.
    pub fn reject(&mut self, rejected: &[(RowKey, String)]) {
        for (key, reason) in rejected {
            if let Some(row) = self.rows.remove(key) {
                self.dead_letters.push(DeadLetter {
                    source: row.source,
                    reason: reason.clone(),
                });
            }
        }
    }

    /// Forget everything read from `partition` (its batch is aborted).
    pub fn drop_partition(&mut self, partition: i32) {
        self.rows.retain(|_, row| row.source.partition != partition);
        self.dead_letters
            .retain(|d| d.source.partition != partition);
        self.next_offsets.remove(&partition);
    }

    /// Rows sorted by primary key.
    pub fn rows(&self) -> impl ExactSizeIterator<Item = (&RowKey, &SinkRow)> {
        self.rows.iter()
    }

    pub fn row_count(&self) -> usize {
        self.rows.len()
    }

    /// Kafka records pushed (before collapsing), dead letters included.
    pub fn record_count(&self) -> usize {
        self.records
    }

    /// Value bytes of the Kafka records pushed (before collapsing), dead letters included.
    pub fn byte_count(&self) -> usize {
        self.bytes
    }

    /// Dead letters not yet sent.
    pub fn take_dead_letters(&mut self) -> Vec<DeadLetter> {
        std::mem::take(&mut self.dead_letters)
    }

    pub fn dead_letters(&self) -> &[DeadLetter] {
        &self.dead_letters
    }

    /// partition -> next offset to read after this batch.
    pub fn next_offsets(&self) -> &BTreeMap<i32, i64> {
        &self.next_offsets
    }

    pub fn is_empty(&self) -> bool {
        self.next_offsets.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.records >= self.limits.max_records || self.bytes >= self.limits.max_bytes
    }

    /// When the batch must be flushed by age, if it holds anything.
    pub fn deadline(&self) -> Option<Instant> {
        self.opened_at.map(|t| t + self.limits.max_age)
    }

    pub fn clear(&mut self) {
        self.rows.clear();
        self.dead_letters.clear();
        self.next_offsets.clear();
        self.records = 0;
        self.bytes = 0;
        self.opened_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::call;

    fn src(partition: i32, offset: i64) -> SourceRecord {
        SourceRecord {
            partition,
            offset,
            key: None,
            payload: None,
        }
    }

    #[test]
    fn collapses_by_key_keeping_the_highest_version_and_tracks_next_offsets() {
        let mut b = SinkBatch::from_rows("calls", []);
        assert_eq!(b.push(call("a", 2), src(0, 10)), Pushed::Added);
        assert_eq!(b.push(call("a", 1), src(0, 11)), Pushed::Superseded);
        assert_eq!(b.push(call("b", 1), src(1, 5)), Pushed::Added);
        assert_eq!(b.push(call("a", 3), src(0, 12)), Pushed::Replaced);
        b.push_dead_letter(src(1, 6), "bad bytes");
        assert_eq!(b.row_count(), 2);
        assert_eq!(b.record_count(), 5);
        let rows: Vec<_> = b
            .rows()
            .map(|(_, r)| (r.record.call_id.clone(), r.record.version))
            .collect();
        assert_eq!(rows, [("a".to_string(), 3), ("b".to_string(), 1)]);
        assert_eq!(b.next_offsets().get(&0), Some(&13));
        assert_eq!(b.next_offsets().get(&1), Some(&7));
        assert_eq!(b.rows().next().map(|(_, r)| r.source.offset), Some(12));
    }

    #[test]
    fn is_full_by_records_and_has_a_deadline_once_opened() {
        let limits = BatchLimits {
            max_records: 2,
            max_bytes: usize::MAX,
            max_age: Duration::from_millis(50),
        };
        let mut b = SinkBatch::new("calls", limits);
        assert!(b.deadline().is_none());
        b.push(call("a", 1), src(0, 0));
        assert!(!b.is_full());
        assert!(b.deadline().is_some());
        b.push(call("a", 1), src(0, 1));
        assert!(b.is_full());
        b.clear();
        assert!(b.is_empty() && !b.is_full() && b.deadline().is_none());
    }

    #[test]
    fn is_full_by_value_bytes() {
        let limits = BatchLimits {
            max_records: 100,
            max_bytes: 1000,
            max_age: Duration::from_secs(1),
        };
        let sized = |offset: i64, len: usize| SourceRecord {
            payload: Some(vec![0; len]),
            ..src(0, offset)
        };
        let mut b = SinkBatch::new("calls", limits);
        b.push(call("a", 1), sized(0, 600));
        assert!(!b.is_full());
        b.push_dead_letter(sized(1, 399), "bad bytes");
        assert_eq!(b.byte_count(), 999);
        assert!(!b.is_full());
        b.push(call("a", 2), sized(2, 1));
        assert!(b.is_full(), "replaced rows still count: they were read");
        b.clear();
        assert_eq!(b.byte_count(), 0);
        assert!(!b.is_full());
    }

    #[test]
    fn reject_and_drop_partition_keep_the_rest() {
        let mut b = SinkBatch::from_rows("calls", []);
        b.push(call("a", 1), src(0, 0));
        b.push(call("b", 1), src(1, 0));
        b.push(call("c", 1), src(1, 1));
        let key_b = RowKey::of(&call("b", 1));
        b.reject(&[(key_b, "numeric field overflow".into())]);
        assert_eq!(b.row_count(), 2);
        assert_eq!(b.dead_letters()[0].reason, "numeric field overflow");
        b.drop_partition(1);
        assert_eq!(b.row_count(), 1);
        assert!(b.dead_letters().is_empty());
        assert_eq!(b.next_offsets().keys().copied().collect::<Vec<_>>(), [0]);
    }
}
