//! Reading dedup state back from its changelog, `callsync.dedup-state`.
//!
//! The changelog is co-partitioned with the input: input partition `p`'s state lives in
//! changelog partition `p`. A restore reads each partition from its beginning to its end
//! with `isolation.level=read_committed` (so state written by aborted transactions is never
//! restored), where "end" is the last stable offset when the restore reaches it:
//! librdkafka signals it with a partition EOF once its fetch position, which moves past
//! transaction markers, equals the end offset the broker reports for read_committed.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use callsync_runtime::KafkaClientFactory;
use callsync_runtime::ReadToEndContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::key_hash::{KeyHash, StateKey};
use super::state::{PartitionState, StoredEntry};
use crate::codec::DedupEntryCodec;

/// A restore that could not finish.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("creating the restore consumer for {topic}: {source}")]
    Client {
        topic: String,
        #[source]
        source: callsync_runtime::ClientError,
    },
    #[error("assigning {topic} partitions {partitions:?} to the restore consumer: {source}")]
    Assign {
        topic: String,
        partitions: Vec<i32>,
        #[source]
        source: KafkaError,
    },
    #[error("reading the committed offsets of {topic} partitions {partitions:?} (waiting for a previous owner's transaction to end): {source}")]
    CommittedOffsets {
        topic: String,
        partitions: Vec<i32>,
        #[source]
        source: KafkaError,
    },
    #[error("reading {topic}: {source}")]
    Read {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("restoring {topic} partitions {pending:?} did not reach the end within {timeout:?}")]
    Timeout {
        topic: String,
        pending: Vec<i32>,
        timeout: Duration,
    },
}

/// What a restore read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreStats {
    pub partitions: usize,
    /// Changelog records read (entries and tombstones).
    pub records: u64,
    /// Keys held after the restore.
    pub keys: u64,
    /// Records whose key or value could not be read (skipped, logged).
    pub unreadable: u64,
    pub elapsed: Duration,
}

/// Read changelog `topic` (full name) partitions `partitions` to their end and return the
/// state of each.
pub fn restore_partitions(
    kafka: &KafkaClientFactory,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
) -> Result<(HashMap<i32, PartitionState>, RestoreStats), RestoreError> {
    let started = Instant::now();
    let mut states: HashMap<i32, PartitionState> = partitions
        .iter()
        .map(|&p| (p, PartitionState::new()))
        .collect();
    let mut stats = RestoreStats {
        partitions: partitions.len(),
        ..RestoreStats::default()
    };
    if partitions.is_empty() {
        return Ok((states, stats));
    }
    let consumer = changelog_reader(kafka, topic, partitions)?;

    let codec = DedupEntryCodec::new();
    read_changelog(&consumer, topic, partitions, started, timeout, |message| {
        stats.records += 1;
        let Some(state) = states.get_mut(&message.partition()) else {
            return ChangelogRead::Continue;
        };
        let key = match message.key().map(std::str::from_utf8) {
            Some(Ok(k)) => k,
            _ => {
                stats.unreadable += 1;
                tracing::warn!(
                    topic,
                    partition = message.partition(),
                    offset = message.offset(),
                    "dedup changelog record without a UTF-8 key skipped"
                );
                return ChangelogRead::Continue;
            }
        };
        match message.payload() {
            None => state.put(key, None),
            Some(value) => match codec.decode(value) {
                Ok(entry) => state.put(key, Some(StoredEntry::from(&entry))),
                Err(e) => {
                    stats.unreadable += 1;
                    tracing::warn!(topic, partition = message.partition(), offset = message.offset(), key, error = %e, "undecodable dedup changelog value skipped");
                }
            },
        }
        ChangelogRead::Continue
    })?;
    stats.keys = states.values().map(|s| s.len() as u64).sum();
    stats.elapsed = started.elapsed();
    Ok((states, stats))
}

/// A consumer reading changelog `topic` partitions `partitions` from their beginning,
/// read_committed, with a partition EOF at each end.
///
/// Its prefetch keeps the client factory's consumer bounds (8 MiB queued, 4 MiB per fetch,
/// and a 10 ms pause when the queue is full). It used 16/16 MiB while librdkafka paused a
/// full second at the bound: then the factory's bounds made a restore of 1M keys take 6.1 s.
/// With the short pause they take 1.6-1.8 s, against 4.1-4.4 s with 16/16 MiB and the long
/// pause, and the process grows by ~100-120 bytes per restored key instead of ~220-235
/// (`callsync-bench processor`, 2026-11-30). Up to 4 MiB per partition in one fetch
/// (librdkafka's default is 1 MiB) keeps the round trips per restored key low.
fn changelog_reader(
    kafka: &KafkaClientFactory,
    topic: &str,
    partitions: &[i32],
) -> Result<BaseConsumer<ReadToEndContext>, RestoreError> {
    let mut cfg = kafka.consumer_config(
        "callsync-processor-restore",
        callsync_runtime::Isolation::ReadCommitted,
    );
    cfg.set("max.partition.fetch.bytes", "4194304")
        .set("fetch.wait.max.ms", "10");
    for (k, v) in &kafka.settings().client_properties {
        cfg.set(k, v);
    }
    let consumer = kafka
        .create_read_to_end("changelog reader", &cfg)
        .map_err(|source| RestoreError::Client {
            topic: topic.to_string(),
            source,
        })?;
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .map_err(|source| RestoreError::Assign {
                topic: topic.to_string(),
                partitions: partitions.to_vec(),
                source,
            })?;
    }
    consumer
        .assign(&tpl)
        .map_err(|source| RestoreError::Assign {
            topic: topic.to_string(),
            partitions: partitions.to_vec(),
            source,
        })?;
    Ok(consumer)
}

/// The key texts of hashed keys, read back from changelog `topic` (full name), for the
/// TTL sweep's tombstones: the state holds only [`KeyHash`]es, a tombstone needs the key.
///
/// Reads each partition of `wanted` from its beginning until every wanted hash of it was
/// found or its end is reached. Expired keys are the oldest, so their records are near the
/// beginning of the (compacted) changelog and a sweep reads a short prefix of it. Must not run
/// while this instance's own transaction holds changelog records open: a read_committed
/// reader cannot pass them. Returns, per partition, the texts found; what is still in
/// `wanted` afterwards was not found.
pub fn find_changelog_keys(
    kafka: &KafkaClientFactory,
    topic: &str,
    wanted: &mut HashMap<i32, HashSet<KeyHash>>,
    timeout: Duration,
) -> Result<HashMap<i32, Vec<String>>, RestoreError> {
    let started = Instant::now();
    wanted.retain(|_, hashes| !hashes.is_empty());
    let mut found: HashMap<i32, Vec<String>> = HashMap::new();
    if wanted.is_empty() {
        return Ok(found);
    }
    let mut partitions: Vec<i32> = wanted.keys().copied().collect();
    partitions.sort_unstable();
    let consumer = changelog_reader(kafka, topic, &partitions)?;
    read_changelog(&consumer, topic, &partitions, started, timeout, |message| {
        let partition = message.partition();
        let (Some(hashes), Some(Ok(key))) = (
            wanted.get_mut(&partition),
            message.key().map(std::str::from_utf8),
        ) else {
            return ChangelogRead::Continue;
        };
        let key = StateKey::new(key);
        if hashes.remove(&key.hash) {
            found
                .entry(partition)
                .or_default()
                .push(key.text.to_string());
            if hashes.is_empty() {
                return ChangelogRead::PartitionDone;
            }
        }
        ChangelogRead::Continue
    })?;
    wanted.retain(|_, hashes| !hashes.is_empty());
    Ok(found)
}

/// A consumer error that only says the broker cannot be reached for now (a restart, a
/// network blip), after which librdkafka reconnects and fetching goes on.
fn is_transient(error: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        error,
        KafkaError::MessageConsumption(
            Code::BrokerTransportFailure
                | Code::AllBrokersDown
                | Code::OperationTimedOut
                | Code::RequestTimedOut
                | Code::NetworkException
                | Code::NotLeaderForPartition
                | Code::LeaderNotAvailable
        )
    )
}

/// What a changelog visitor wants after a record.
enum ChangelogRead {
    Continue,
    /// Nothing more is needed from this record's partition.
    PartitionDone,
}

/// Polls `consumer` (a [`changelog_reader`] of `partitions`) until every partition reached its
/// end or was declared done by `visit`, failing once `timeout` since `started` has passed.
fn read_changelog(
    consumer: &BaseConsumer<ReadToEndContext>,
    topic: &str,
    partitions: &[i32],
    started: Instant,
    timeout: Duration,
    mut visit: impl FnMut(&BorrowedMessage<'_>) -> ChangelogRead,
) -> Result<(), RestoreError> {
    let mut pending: HashSet<i32> = partitions.iter().copied().collect();
    while !pending.is_empty() {
        let left = timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            let mut pending: Vec<i32> = pending.into_iter().collect();
            pending.sort_unstable();
            return Err(RestoreError::Timeout {
                topic: topic.to_string(),
                pending,
                timeout,
            });
        }
        let Some(result) = consumer.poll(left.min(Duration::from_millis(100))) else {
            continue;
        };
        match result {
            Ok(message) => {
                if let ChangelogRead::PartitionDone = visit(&message) {
                    pending.remove(&message.partition());
                }
            }
            Err(KafkaError::PartitionEOF(p)) => {
                pending.remove(&p);
            }
            Err(source) if is_transient(&source) => {
                // librdkafka reconnects by itself; the restore's timeout still bounds the wait
                tracing::warn!(topic, error = %source, "reading the changelog: broker unavailable, waiting");
            }
            Err(source) => {
                return Err(RestoreError::Read {
                    topic: topic.to_string(),
                    source,
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::types::RDKafkaErrorCode as Code;

    #[test]
    fn only_an_unreachable_broker_is_waited_out() {
        for code in [Code::BrokerTransportFailure, Code::AllBrokersDown] {
            assert!(
                is_transient(&KafkaError::MessageConsumption(code)),
                "{code:?}"
            );
        }
        assert!(!is_transient(&KafkaError::MessageConsumption(
            Code::UnknownTopicOrPartition
        )));
        assert!(!is_transient(&KafkaError::MessageConsumption(
            Code::TopicAuthorizationFailed
        )));
        assert!(!is_transient(&KafkaError::MessageConsumptionFatal(
            Code::BrokerTransportFailure
        )));
    }
}
