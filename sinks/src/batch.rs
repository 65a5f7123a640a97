//! A sink batch: the records read from Kafka since the last commit, bounded by
//! rows, bytes and time, collapsed by primary key, with the next offset of every
//! partition it covers.
//!
//! Collapsing keeps what applying the key's records one by one, in the order read, under
//! the upsert guard (apply a record only when its [`Precedence`] is greater than the row's)
//! would leave, whatever the row holds before the batch: a record that does not exceed every
//! record before it in the batch is dropped (it would never apply); a complete record replaces
//! what the key had in the batch; a partial record that exceeds them is kept *on top* of them
//! ([`SinkRow::earlier`]), because which of the records under it apply depends on the row's
//! precedence, which only the database knows. The stores apply a key's updates in that order,
//! each under the guard.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use callsync_schemas::{CallRecord, ContentFingerprint, Precedence};

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

/// One row to upsert: the newest version of a call seen in this batch and, when it is a
/// partial record, the older records of the call it is applied on top of.
#[derive(Debug, Clone)]
pub struct SinkRow {
    /// The newest record (the greatest precedence) of the call in this batch.
    pub record: CallRecord,
    pub fingerprint: ContentFingerprint,
    pub source: SourceRecord,
    /// Older records of the call the store applies first, oldest first: empty unless `record`
    /// is partial (then: the complete record and partial ones it lies on, each of greater
    /// precedence than the one before).
    pub earlier: Vec<RowUpdate>,
}

/// One record the store applies to a row under the guard.
#[derive(Debug, Clone)]
pub struct RowUpdate {
    pub record: CallRecord,
    pub fingerprint: ContentFingerprint,
    pub source: SourceRecord,
}

/// A record to apply, borrowed from a [`SinkRow`].
#[derive(Debug, Clone, Copy)]
pub struct Update<'a> {
    pub record: &'a CallRecord,
    pub fingerprint: ContentFingerprint,
    pub source: &'a SourceRecord,
}

impl SinkRow {
    /// A row of one record (fingerprinted here).
    pub fn new(record: CallRecord, source: SourceRecord) -> Self {
        SinkRow {
            fingerprint: ContentFingerprint::of(&record),
            record,
            source,
            earlier: Vec::new(),
        }
    }

    pub fn precedence(&self) -> Precedence {
        Precedence::new(self.record.version, self.fingerprint)
    }

    /// The records to apply, oldest first (`record` last).
    pub fn updates(&self) -> impl Iterator<Item = Update<'_>> + '_ {
        (0..self.update_count()).filter_map(move |layer| self.update(layer))
    }

    /// The `layer`-th record to apply (0: the oldest).
    pub fn update(&self, layer: usize) -> Option<Update<'_>> {
        match layer.cmp(&self.earlier.len()) {
            std::cmp::Ordering::Less => self.earlier.get(layer).map(|u| Update {
                record: &u.record,
                fingerprint: u.fingerprint,
                source: &u.source,
            }),
            std::cmp::Ordering::Equal => Some(Update {
                record: &self.record,
                fingerprint: self.fingerprint,
                source: &self.source,
            }),
            std::cmp::Ordering::Greater => None,
        }
    }

    /// How many records the store applies for this row.
    pub fn update_count(&self) -> usize {
        self.earlier.len() + 1
    }
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
    /// A complete record that replaced what the batch held for the key (all of lesser
    /// precedence).
    Replaced,
    /// A partial record of greater precedence than what the batch held for the key, kept on
    /// top of it.
    Stacked,
    /// Not greater than what the batch holds for the key (an older version, or the same
    /// record again): it would never apply; dropped.
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

    /// Add a decoded record (see the module docs). Offsets must grow within a partition.
    pub fn push(&mut self, mut record: CallRecord, source: SourceRecord) -> Pushed {
        self.note(&source);
        // a partial record's uncarried fields are placeholders: never trust their values
        record.clear_uncarried();
        let key = RowKey::of(&record);
        let incoming = SinkRow::new(record, source);
        match self.rows.get_mut(&key) {
            None => {
                self.rows.insert(key, incoming);
                Pushed::Added
            }
            Some(existing) if incoming.precedence() <= existing.precedence() => Pushed::Superseded,
            Some(existing) if !incoming.record.is_partial() => {
                *existing = incoming;
                Pushed::Replaced
            }
            Some(existing) => {
                let below = std::mem::replace(existing, incoming);
                existing.earlier = below.earlier;
                existing.earlier.push(RowUpdate {
                    record: below.record,
                    fingerprint: below.fingerprint,
                    source: below.source,
                });
                Pushed::Stacked
            }
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

    /// Move rows the database rejected to the dead letters (every record of the row), with
    /// its message.
    pub fn reject(&mut self, rejected: &[(RowKey, String)]) {
        for (key, reason) in rejected {
            if let Some(row) = self.rows.remove(key) {
                for update in row.earlier {
                    self.dead_letters.push(DeadLetter {
                        source: update.source,
                        reason: reason.clone(),
                    });
                }
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

    /// Records the stores apply (one per row unless partial records are stacked).
    pub fn update_count(&self) -> usize {
        self.rows.values().map(SinkRow::update_count).sum()
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
    use callsync_schemas::{CallField, FieldSet};

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

    fn revenue_only(mut record: CallRecord, revenue: &str) -> CallRecord {
        record.revenue = Some(revenue.parse().unwrap());
        record.into_partial(FieldSet::EMPTY.with(CallField::Revenue))
    }

    /// Issue 16: equal versions with different content are ordered by fingerprint, the same
    /// whichever comes first. Failed before the fix: the last pushed won.
    #[test]
    fn equal_versions_keep_the_greater_fingerprint_whichever_comes_first() {
        let a = call("a", 5);
        let mut b = call("a", 5);
        b.campaign_name = Some("other".into());
        let (low, high) = if ContentFingerprint::of(&a) < ContentFingerprint::of(&b) {
            (a, b)
        } else {
            (b, a)
        };
        for order in [[&low, &high], [&high, &low]] {
            let mut batch = SinkBatch::from_rows("calls", []);
            batch.push(order[0].clone(), src(0, 0));
            batch.push(order[1].clone(), src(0, 1));
            let (_, row) = batch.rows().next().unwrap();
            assert_eq!(&row.record, &high);
        }
        let mut batch = SinkBatch::from_rows("calls", []);
        batch.push(high.clone(), src(0, 0));
        assert_eq!(
            batch.push(high.clone(), src(0, 1)),
            Pushed::Superseded,
            "the same record again never applies"
        );
    }

    #[test]
    fn partial_records_stack_on_older_ones_and_complete_ones_replace_them() {
        let mut b = SinkBatch::from_rows("calls", []);
        assert_eq!(b.push(call("a", 10), src(0, 0)), Pushed::Added);
        assert_eq!(
            b.push(revenue_only(call("a", 20), "7.5"), src(0, 1)),
            Pushed::Stacked
        );
        assert_eq!(
            b.push(revenue_only(call("a", 15), "1"), src(0, 2)),
            Pushed::Superseded,
            "an older partial under a newer record never applies"
        );
        assert_eq!(
            b.push(revenue_only(call("a", 30), "8"), src(0, 3)),
            Pushed::Stacked
        );
        let (_, row) = b.rows().next().unwrap();
        let applied: Vec<(i64, bool, i64)> = row
            .updates()
            .map(|u| (u.record.version, u.record.is_partial(), u.source.offset))
            .collect();
        assert_eq!(applied, [(10, false, 0), (20, true, 1), (30, true, 3)]);
        assert_eq!(b.update_count(), 3);
        // a rejected row dead-letters every record of it
        let mut rejected = SinkBatch::from_rows("calls", []);
        for (i, r) in [call("x", 1), revenue_only(call("x", 2), "1")]
            .into_iter()
            .enumerate()
        {
            rejected.push(r, src(0, i as i64));
        }
        rejected.reject(&[(RowKey::of(&call("x", 1)), "refused".into())]);
        assert_eq!(rejected.dead_letters().len(), 2);
        // a newer complete record replaces the stack
        assert_eq!(b.push(call("a", 40), src(0, 4)), Pushed::Replaced);
        let (_, row) = b.rows().next().unwrap();
        assert!(row.earlier.is_empty());
        assert_eq!(row.record, call("a", 40));
        // a partial record pushed first stands alone
        let mut p = SinkBatch::from_rows("calls", []);
        assert_eq!(
            p.push(revenue_only(call("p", 3), "2"), src(1, 0)),
            Pushed::Added
        );
        assert_eq!(p.push(call("p", 2), src(1, 1)), Pushed::Superseded);
        assert_eq!(p.push(call("p", 4), src(1, 2)), Pushed::Replaced);
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
