//! Where the sink starts reading a partition it is given, decided from the row of
//! `callsync_offsets` and what Kafka says of the partition now:
//!
//! - no stored offset: from the earliest retained record (a new or restored database fills
//!   completely); the partition is *backfilling* until it reaches the end it had then;
//! - a stored offset inside the partition's range, of the same topic incarnation: from there;
//! - a stored offset outside the range (the topic was recreated, retention deleted records the
//!   sink never applied) or of another incarnation (another topic id): not at all. The
//!   partition is stopped with an error naming the fix, never skipped silently.
//!
//! [`classify`] is used by the sink and by `callsync status`, so both say the same.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use callsync_runtime::{ClientError, Isolation, KafkaClientFactory};
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::store::StoredOffset;

/// The sink group's default name: the fix command names `--group` only for another one.
const DEFAULT_GROUP: &str = "callsync-sink";

/// The offsets a partition holds now: `low` is the earliest retained, `high` the next to be
/// written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionRange {
    pub low: i64,
    pub high: i64,
}

impl PartitionRange {
    pub fn contains(&self, offset: i64) -> bool {
        offset >= self.low && offset <= self.high
    }
}

/// What Kafka says of the topic now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicSnapshot {
    /// The topic's id (None: the cluster gave none, or it could not be read).
    pub topic_id: Option<String>,
    /// partition -> its range (absent: it could not be read).
    pub ranges: BTreeMap<i32, PartitionRange>,
}

/// How the sink starts a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionStart {
    /// From the stored next offset; `backfill_until` while an earlier backfill is not done.
    Resume {
        next_offset: i64,
        backfill_until: Option<i64>,
    },
    /// No stored offset: from the earliest retained record (`from`, when known) up to `until`
    /// (the end when the backfill began, when known).
    Backfill {
        from: Option<i64>,
        until: Option<i64>,
    },
    /// Not read: the stored offset does not fit the partition.
    Stopped(PartitionStopped),
}

/// Why a stored offset does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    /// Another topic id: the topic was deleted and created again.
    TopicRecreated,
    /// Past the partition's end: recreated (with fewer records so far) or truncated.
    PastTheEnd,
    /// Before the earliest retained record: retention deleted records never applied.
    BeforeTheStart,
}

/// A partition the sink does not read until an operator resolves it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PartitionStopped {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    /// The sink's next offset (stored in `callsync_offsets`, or reached while reading).
    pub next_offset: i64,
    pub range: PartitionRange,
    pub stored_topic_id: Option<String>,
    pub topic_id: Option<String>,
    pub cause: StopCause,
}

impl PartitionStopped {
    /// The command that resolves it (run with the sink stopped).
    pub fn fix_command(&self) -> String {
        let group = if self.group == DEFAULT_GROUP {
            String::new()
        } else {
            format!(" --group {}", self.group)
        };
        format!(
            "callsync sink rewind --to-earliest --partitions {}{group}",
            self.partition
        )
    }

    /// One line for tables: the cause and the offsets.
    pub fn summary(&self) -> String {
        let PartitionRange { low, high } = self.range;
        match self.cause {
            StopCause::TopicRecreated => format!(
                "topic recreated: stored offset {} belongs to topic id {}, the topic is now {} (offsets {low}..{high})",
                self.next_offset,
                self.stored_topic_id.as_deref().unwrap_or("?"),
                self.topic_id.as_deref().unwrap_or("?"),
            ),
            StopCause::PastTheEnd => format!(
                "stored offset {} is past the end: the partition holds offsets {low}..{high}",
                self.next_offset
            ),
            StopCause::BeforeTheStart => format!(
                "stored offset {} is before the earliest retained offset {low} (offsets {low}..{high})",
                self.next_offset
            ),
        }
    }
}

impl std::fmt::Display for PartitionStopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let why = match self.cause {
            StopCause::TopicRecreated => "the topic was deleted and created again",
            StopCause::PastTheEnd => {
                "the topic was deleted and created again, or its log was truncated"
            }
            StopCause::BeforeTheStart => {
                "retention deleted records before the sink applied them; they are lost to it"
            }
        };
        write!(
            f,
            "topic {} partition {} stopped (sink group {}): {} ({why}). Nothing of this \
             partition is read until this is resolved: stop the sink, run `{}` (re-apply the \
             partition from its earliest retained record), then start the sink again",
            self.topic,
            self.partition,
            self.group,
            self.summary(),
            self.fix_command()
        )
    }
}

/// Decides how to start `partition` of `topic` for the sink group `group`.
pub fn classify(
    group: &str,
    topic: &str,
    partition: i32,
    stored: Option<&StoredOffset>,
    snapshot: &TopicSnapshot,
) -> PartitionStart {
    let range = snapshot.ranges.get(&partition).copied();
    let Some(stored) = stored else {
        return PartitionStart::Backfill {
            from: range.map(|r| r.low),
            until: range.map(|r| r.high),
        };
    };
    let stop = |cause, range| {
        PartitionStart::Stopped(PartitionStopped {
            group: group.to_string(),
            topic: topic.to_string(),
            partition,
            next_offset: stored.next_offset,
            range,
            stored_topic_id: stored.topic_id.clone(),
            topic_id: snapshot.topic_id.clone(),
            cause,
        })
    };
    if let (Some(was), Some(now)) = (&stored.topic_id, &snapshot.topic_id) {
        if was != now {
            return stop(
                StopCause::TopicRecreated,
                range.unwrap_or(PartitionRange { low: -1, high: -1 }),
            );
        }
    }
    if let Some(r) = range {
        if stored.next_offset > r.high {
            return stop(StopCause::PastTheEnd, r);
        }
        if stored.next_offset < r.low {
            return stop(StopCause::BeforeTheStart, r);
        }
    }
    PartitionStart::Resume {
        next_offset: stored.next_offset,
        backfill_until: (stored.backfill_remaining() > 0)
            .then_some(stored.backfill_until)
            .flatten(),
    }
}

/// Reads partition ranges and the topic id for the sink, with a client of its own (the
/// consumer belongs to the poller thread). Blocking calls run on tokio's blocking pool.
#[derive(Clone)]
pub struct TopicInspector {
    consumer: Arc<BaseConsumer>,
    topic: String,
    timeout: Duration,
    /// After the cluster failed to describe the topic, when to ask again: not at every
    /// assignment (each failure can cost the whole timeout).
    next_id_attempt: Arc<Mutex<Option<Instant>>>,
}

/// How long topic ids are not asked for after a failure.
const TOPIC_ID_RETRY: Duration = Duration::from_secs(300);

impl std::fmt::Debug for TopicInspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicInspector")
            .field("topic", &self.topic)
            .finish()
    }
}

impl TopicInspector {
    pub fn new(
        kafka: &KafkaClientFactory,
        group: &str,
        topic: impl Into<String>,
    ) -> Result<Self, ClientError> {
        // never subscribes: the group id only satisfies the client
        let config = kafka.consumer_config(&format!("{group}.inspector"), Isolation::ReadCommitted);
        let consumer: BaseConsumer = kafka.create("sink topic inspector", &config)?;
        Ok(TopicInspector {
            consumer: Arc::new(consumer),
            topic: topic.into(),
            timeout: Duration::from_secs(5),
            next_id_attempt: Arc::new(Mutex::new(None)),
        })
    }

    /// Ranges of `partitions` and the topic id; what cannot be read is left out (and logged).
    pub async fn snapshot(&self, partitions: Vec<i32>) -> TopicSnapshot {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.snapshot_blocking(&partitions))
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "reading partition ranges failed");
                TopicSnapshot::default()
            })
    }

    fn snapshot_blocking(&self, partitions: &[i32]) -> TopicSnapshot {
        let mut snapshot = TopicSnapshot::default();
        let due = self
            .next_id_attempt
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none_or(|at| Instant::now() >= at);
        if due {
            match callsync_runtime::topic_id(self.consumer.client(), &self.topic, self.timeout) {
                Ok(id) => snapshot.topic_id = id,
                Err(e) => {
                    *self
                        .next_id_attempt
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) =
                        Some(Instant::now() + TOPIC_ID_RETRY);
                    tracing::warn!(error = %e, "the topic's id cannot be read; offsets are checked against the partitions' ranges only");
                }
            }
        }
        for &p in partitions {
            match self.consumer.fetch_watermarks(&self.topic, p, self.timeout) {
                Ok((low, high)) => {
                    snapshot.ranges.insert(p, PartitionRange { low, high });
                }
                Err(e) => tracing::warn!(
                    topic = %self.topic,
                    partition = p,
                    error = %e,
                    "reading the partition's offsets failed; its stored offset is not checked"
                ),
            }
        }
        snapshot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(id: Option<&str>, low: i64, high: i64) -> TopicSnapshot {
        TopicSnapshot {
            topic_id: id.map(str::to_string),
            ranges: BTreeMap::from([(3, PartitionRange { low, high })]),
        }
    }

    fn stored(next: i64, id: Option<&str>, backfill_until: Option<i64>) -> StoredOffset {
        StoredOffset {
            next_offset: next,
            topic_id: id.map(str::to_string),
            backfill_until,
        }
    }

    #[test]
    fn no_stored_offset_backfills_from_the_earliest_retained_record() {
        assert_eq!(
            classify("g", "calls", 3, None, &snapshot(Some("A"), 100, 900)),
            PartitionStart::Backfill {
                from: Some(100),
                until: Some(900)
            }
        );
    }

    #[test]
    fn an_offset_inside_the_range_of_the_same_topic_resumes() {
        let s = snapshot(Some("A"), 100, 900);
        for next in [100, 500, 900] {
            assert_eq!(
                classify("g", "calls", 3, Some(&stored(next, Some("A"), None)), &s),
                PartitionStart::Resume {
                    next_offset: next,
                    backfill_until: None
                }
            );
        }
        // an unfinished backfill goes on; ids unknown on either side are not compared
        assert_eq!(
            classify("g", "calls", 3, Some(&stored(500, None, Some(800))), &s),
            PartitionStart::Resume {
                next_offset: 500,
                backfill_until: Some(800)
            }
        );
        assert_eq!(
            classify(
                "g",
                "calls",
                3,
                Some(&stored(500, Some("A"), Some(400))),
                &snapshot(None, 100, 900)
            ),
            PartitionStart::Resume {
                next_offset: 500,
                backfill_until: None
            }
        );
    }

    #[test]
    fn offsets_outside_the_range_or_of_another_incarnation_stop_the_partition() {
        let cases = [
            (
                stored(1200, Some("A"), None),
                snapshot(Some("A"), 0, 40),
                StopCause::PastTheEnd,
            ),
            (
                stored(50, Some("A"), None),
                snapshot(Some("A"), 100, 900),
                StopCause::BeforeTheStart,
            ),
            (
                stored(10, Some("A"), None),
                snapshot(Some("B"), 0, 40),
                StopCause::TopicRecreated,
            ),
        ];
        for (s, snap, cause) in cases {
            let PartitionStart::Stopped(stop) =
                classify("callsync-sink", "calls", 3, Some(&s), &snap)
            else {
                panic!("{s:?} in {snap:?} should stop");
            };
            assert_eq!(stop.cause, cause);
            let text = stop.to_string();
            assert!(
                text.contains("topic calls partition 3 stopped")
                    && text.contains(&format!("stored offset {}", s.next_offset))
                    && text.contains("callsync sink rewind --to-earliest --partitions 3`"),
                "{text}"
            );
        }
        let PartitionStart::Stopped(stop) = classify(
            "other-sink",
            "calls",
            3,
            Some(&stored(1200, None, None)),
            &snapshot(None, 0, 40),
        ) else {
            panic!("should stop");
        };
        assert_eq!(
            stop.fix_command(),
            "callsync sink rewind --to-earliest --partitions 3 --group other-sink"
        );
    }
}
