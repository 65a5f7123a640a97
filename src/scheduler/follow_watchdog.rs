//! A watchdog for the sync-events follower ([`super::status::follow_sync_events`]).
//!
//! The follower's consumer has its partitions assigned by hand. After a broker reconnect such
//! a consumer has been seen to stop receiving for good while its partitions had committed
//! records beyond its position (fede1024/rust-rdkafka#597; here after a ~30 s stall of a CI
//! machine). Every [`WatchdogSettings::interval`] the watchdog reads each partition's position
//! (local) and its watermarks (a blocking broker query, run on the blocking pool); a partition
//! that had records to read at one check and has not moved by the next is re-assigned from
//! its position.
//!
//! A false positive costs one re-fetch: every partition is re-assigned from the next offset
//! the follower would have received (what librdkafka had prefetched beyond it is dropped and
//! fetched again), so nothing is skipped or received twice; and an event received twice
//! would change nothing, as [`super::status::SyncStatusStore::record_event`] ignores an event
//! it holds already or one older than the latest of its sync.
//!
//! The decision is [`partitions_to_reassign`], a pure function; [`FollowWatchdog`] gathers
//! its inputs and acts on the consumer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

/// Partitions of `callsync.sync-events` the follower re-assigned because they stopped
/// receiving while records were readable.
pub const SYNC_EVENTS_REASSIGNED_TOTAL: &str = "callsync_sync_events_reassigned_total";

/// When the watchdog looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchdogSettings {
    /// Time between two checks. A partition is re-assigned when it received nothing over
    /// one interval although records were readable at its start, so a stall is repaired
    /// within one to two intervals.
    pub interval: Duration,
    /// Bound of the watermark query of one partition.
    pub query_timeout: Duration,
}

impl Default for WatchdogSettings {
    fn default() -> Self {
        WatchdogSettings {
            interval: Duration::from_secs(10),
            query_timeout: Duration::from_secs(5),
        }
    }
}

/// A partition of the follower's assignment: (topic, partition).
pub type PartitionKey = (String, i32);

/// One partition as one check saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// The next offset the follower will receive: its position, or, while it has received
    /// nothing since the partition was (re)assigned, the offset it was assigned from (the
    /// low watermark for "the beginning").
    pub next: i64,
    /// The partition's first offset.
    pub low: i64,
    /// The end of what the consumer may read: the high watermark, or the last stable offset
    /// for a read_committed consumer. Transaction markers take offsets and are never
    /// delivered; librdkafka moves the position past the markers it has fetched, but a
    /// partition may still look one or more records behind for a moment.
    pub high: i64,
}

impl Reading {
    fn has_records_to_read(&self) -> bool {
        self.high > self.next.max(self.low)
    }
}

/// The partitions that stopped receiving: those that had records to read at the `previous`
/// check, have them still (`current`) and have not moved since. After a partition was
/// re-assigned at some next offset (`reassigned`), only records beyond the end it had then
/// count while it stays at that offset, so a reading that never resolves (say, a marker
/// librdkafka never skips) costs one re-assign, not one per interval; new records that are not
/// received within an interval make it stall again. Sorted.
pub fn partitions_to_reassign(
    previous: &HashMap<PartitionKey, Reading>,
    current: &HashMap<PartitionKey, Reading>,
    reassigned: &HashMap<PartitionKey, Reading>,
) -> Vec<PartitionKey> {
    let mut stalled: Vec<PartitionKey> = current
        .iter()
        .filter(|(key, now)| {
            let Some(before) = previous.get(*key) else {
                return false;
            };
            let waiting_at_previous_check = match reassigned.get(*key) {
                Some(at) if at.next == now.next => {
                    before.has_records_to_read() && before.high > at.high
                }
                _ => before.has_records_to_read(),
            };
            before.next == now.next && waiting_at_previous_check && now.has_records_to_read()
        })
        .map(|(key, _)| key.clone())
        .collect();
    stalled.sort();
    stalled
}

/// A check could not read the partitions.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("reading positions or watermarks: {0}")]
    Kafka(#[from] KafkaError),
    #[error("the watermark query task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The watchdog's state between checks.
#[derive(Debug)]
pub struct FollowWatchdog {
    settings: WatchdogSettings,
    /// Where each partition was last assigned from; absent: the beginning (as
    /// [`super::status::sync_events_consumer`] assigns them).
    assigned_from: HashMap<PartitionKey, Offset>,
    /// The previous check's readings.
    previous: HashMap<PartitionKey, Reading>,
    /// The reading at which each partition was last re-assigned.
    reassigned: HashMap<PartitionKey, Reading>,
}

impl FollowWatchdog {
    pub fn new(settings: WatchdogSettings) -> Self {
        FollowWatchdog {
            settings,
            assigned_from: HashMap::new(),
            previous: HashMap::new(),
            reassigned: HashMap::new(),
        }
    }

    pub fn settings(&self) -> WatchdogSettings {
        self.settings
    }

    /// Reads every assigned partition of `consumer` and re-assigns them when one stopped
    /// receiving. Returns the partitions that had stopped. Must not run while a message of
    /// `consumer` is being handled (positions would move under it): the follower calls it
    /// between two `recv()`s.
    pub async fn check(&mut self, consumer: &Arc<StreamConsumer>) -> Vec<PartitionKey> {
        let current = match self.read(consumer).await {
            Ok(current) => current,
            Err(error) => {
                // no decision on a partial picture; the next complete check starts afresh
                tracing::debug!(%error, "sync-events watchdog: no reading this time");
                self.previous.clear();
                return Vec::new();
            }
        };
        let stalled = partitions_to_reassign(&self.previous, &current, &self.reassigned);
        if !stalled.is_empty() {
            match self.reassign(consumer) {
                Ok(()) => {
                    for key in &stalled {
                        let reading = current[key];
                        tracing::warn!(
                            topic = %key.0,
                            partition = key.1,
                            next_offset = reading.next,
                            end_offset = reading.high,
                            interval_ms = self.settings.interval.as_millis() as u64,
                            "sync-events follower received nothing from a partition with records to read: re-assigned it from its position"
                        );
                        self.reassigned.insert(key.clone(), reading);
                    }
                    metrics::counter!(SYNC_EVENTS_REASSIGNED_TOTAL).increment(stalled.len() as u64);
                }
                Err(error) => {
                    tracing::warn!(%error, partitions = ?stalled, "sync-events follower: re-assigning stalled partitions failed");
                }
            }
        }
        self.previous = current;
        stalled
    }

    /// Positions (local) and watermarks (the broker, on the blocking pool) of every assigned
    /// partition.
    async fn read(
        &self,
        consumer: &Arc<StreamConsumer>,
    ) -> Result<HashMap<PartitionKey, Reading>, ReadError> {
        let positions: Vec<(PartitionKey, Option<i64>)> = consumer
            .position()?
            .elements()
            .iter()
            .map(|e| {
                let position = match e.offset() {
                    Offset::Offset(n) => Some(n),
                    _ => None,
                };
                ((e.topic().to_string(), e.partition()), position)
            })
            .collect();
        let keys: Vec<PartitionKey> = positions.iter().map(|(k, _)| k.clone()).collect();
        let query = Arc::clone(consumer);
        let timeout = self.settings.query_timeout;
        let watermarks = tokio::task::spawn_blocking(move || {
            keys.into_iter()
                .map(|(topic, partition)| query.fetch_watermarks(&topic, partition, timeout))
                .collect::<Result<Vec<(i64, i64)>, KafkaError>>()
        })
        .await??;
        Ok(positions
            .into_iter()
            .zip(watermarks)
            .map(|((key, position), (low, high))| {
                let next = position.unwrap_or_else(|| match self.assigned_from.get(&key) {
                    Some(Offset::Offset(n)) => *n,
                    _ => low,
                });
                (key, Reading { next, low, high })
            })
            .collect())
    }

    /// Assigns every partition again (`assign` replaces the whole assignment) from the next
    /// offset the follower would receive, which restarts their fetchers. A re-assign keeps an
    /// application pause (librdkafka 2.12 resets only its own pause flag), so the partitions
    /// are resumed first: this follower never pauses them.
    fn reassign(&mut self, consumer: &StreamConsumer) -> Result<(), KafkaError> {
        // read again: nothing was received since the check read them (same task)
        let positions = consumer.position()?;
        let mut assignment = TopicPartitionList::new();
        let mut assigned_from = HashMap::new();
        for e in positions.elements() {
            let key = (e.topic().to_string(), e.partition());
            let from = match e.offset() {
                Offset::Offset(n) => Offset::Offset(n),
                _ => self
                    .assigned_from
                    .get(&key)
                    .copied()
                    .unwrap_or(Offset::Beginning),
            };
            assignment.add_partition_offset(e.topic(), e.partition(), from)?;
            assigned_from.insert(key, from);
        }
        consumer.resume(&assignment)?;
        consumer.assign(&assignment)?;
        // librdkafka forgets the positions of re-assigned partitions until they receive again
        self.assigned_from = assigned_from;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(partition: i32) -> PartitionKey {
        ("callsync.sync-events".to_string(), partition)
    }

    fn readings(list: &[(i32, i64, i64, i64)]) -> HashMap<PartitionKey, Reading> {
        list.iter()
            .map(|&(p, next, low, high)| (key(p), Reading { next, low, high }))
            .collect()
    }

    fn none() -> HashMap<PartitionKey, Reading> {
        HashMap::new()
    }

    #[test]
    fn a_partition_behind_its_end_that_did_not_move_over_an_interval_is_reassigned() {
        // partition 0 stuck at 5 of 8; 1 moved; 2 is at its end
        let before = readings(&[(0, 5, 0, 8), (1, 3, 0, 9), (2, 7, 0, 7)]);
        let now = readings(&[(0, 5, 0, 9), (1, 6, 0, 9), (2, 7, 0, 7)]);
        assert_eq!(partitions_to_reassign(&before, &now, &none()), vec![key(0)]);
    }

    #[test]
    fn one_reading_is_not_enough() {
        let now = readings(&[(0, 5, 0, 8)]);
        assert!(partitions_to_reassign(&none(), &now, &none()).is_empty());
        // a partition new in the assignment has no previous reading either
        let before = readings(&[(1, 5, 0, 8)]);
        assert!(partitions_to_reassign(&before, &now, &none()).is_empty());
    }

    #[test]
    fn records_that_arrived_after_the_previous_check_get_one_more_interval() {
        // at its end at the first check; records came since: not a stall yet
        let before = readings(&[(0, 5, 0, 5)]);
        let now = readings(&[(0, 5, 0, 6)]);
        assert!(partitions_to_reassign(&before, &now, &none()).is_empty());
        // still not received one interval later: a stall
        let later = readings(&[(0, 5, 0, 6)]);
        assert_eq!(partitions_to_reassign(&now, &later, &none()), vec![key(0)]);
    }

    #[test]
    fn a_partition_at_its_end_is_never_stalled() {
        // idle at the end, and read_committed: the end is the last stable offset, which an
        // open transaction may hold below the high watermark
        let before = readings(&[(0, 12, 0, 12)]);
        let now = readings(&[(0, 12, 0, 12)]);
        assert!(partitions_to_reassign(&before, &now, &none()).is_empty());
        // a position past the end (a watermark answer older than the position)
        let now = readings(&[(0, 13, 0, 12)]);
        assert!(partitions_to_reassign(&now, &now, &none()).is_empty());
    }

    #[test]
    fn records_deleted_below_the_position_do_not_count() {
        // the follower never read partition 0 ("next" is the low watermark it was assigned
        // from) and retention moved the low watermark up to the end: nothing to read
        let before = readings(&[(0, 0, 40, 40)]);
        let now = readings(&[(0, 0, 40, 40)]);
        assert!(partitions_to_reassign(&before, &now, &none()).is_empty());
        // but readable records above the low watermark do
        let now = readings(&[(0, 0, 40, 41)]);
        let before = readings(&[(0, 0, 40, 41)]);
        assert_eq!(partitions_to_reassign(&before, &now, &none()), vec![key(0)]);
    }

    #[test]
    fn a_reassign_is_not_repeated_for_the_same_reading() {
        // e.g. a transaction marker as the last offset that the position never passes
        let stuck = readings(&[(0, 20, 0, 21)]);
        assert_eq!(
            partitions_to_reassign(&stuck, &stuck, &none()),
            vec![key(0)]
        );
        let reassigned = stuck.clone();
        assert!(partitions_to_reassign(&stuck, &stuck, &reassigned).is_empty());
        // new records and still no progress: re-assigned again
        let more = readings(&[(0, 20, 0, 23)]);
        assert!(partitions_to_reassign(&stuck, &more, &reassigned).is_empty());
        assert_eq!(
            partitions_to_reassign(&more, &more, &reassigned),
            vec![key(0)]
        );
    }

    #[test]
    fn several_stalled_partitions_come_sorted() {
        let before = readings(&[(2, 1, 0, 4), (0, 1, 0, 4), (1, 1, 0, 4)]);
        assert_eq!(
            partitions_to_reassign(&before, &before, &none()),
            vec![key(0), key(1), key(2)]
        );
    }
}
