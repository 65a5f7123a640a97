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
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

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
    let mut cfg = kafka.consumer_config(
        "callsync-processor-restore",
        callsync_runtime::Isolation::ReadCommitted,
    );
    cfg.set("enable.partition.eof", "true")
        .set("fetch.max.bytes", "104857600")
        .set("max.partition.fetch.bytes", "16777216")
        .set("queued.max.messages.kbytes", "262144")
        .set("fetch.wait.max.ms", "10");
    let consumer: BaseConsumer =
        kafka
            .create("restore consumer", &cfg)
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

    let codec = DedupEntryCodec::new();
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
        let message = match result {
            Ok(m) => m,
            Err(KafkaError::PartitionEOF(p)) => {
                pending.remove(&p);
                continue;
            }
            Err(source) => {
                return Err(RestoreError::Read {
                    topic: topic.to_string(),
                    source,
                })
            }
        };
        stats.records += 1;
        let Some(state) = states.get_mut(&message.partition()) else {
            continue;
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
                continue;
            }
        };
        match message.payload() {
            None => state.put(key.into(), None),
            Some(value) => match codec.decode(value) {
                Ok(entry) => state.put(key.into(), Some(StoredEntry::from(&entry))),
                Err(e) => {
                    stats.unreadable += 1;
                    tracing::warn!(topic, partition = message.partition(), offset = message.offset(), key, error = %e, "undecodable dedup changelog value skipped");
                }
            },
        }
    }
    stats.keys = states.values().map(|s| s.len() as u64).sum();
    stats.elapsed = started.elapsed();
    Ok((states, stats))
}
