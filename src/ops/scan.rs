//! Bounded reads of a topic: each partition from a start offset up to an end offset fixed
//! when the scan begins (records written later are not read, so a scan always ends).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use callsync_runtime::ReadToEndContext;
use callsync_runtime::{Isolation, KafkaClientFactory};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::OpsError;

/// The group id of ops consumers that only read (they never commit).
pub const READ_ONLY_GROUP: &str = "callsync-ops-reader";

/// Whether a scan goes on after a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visit {
    Continue,
    Stop,
}

/// How a scan ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanEnd {
    /// Every partition was read up to its end.
    Completed,
    /// The visitor stopped it.
    Stopped,
}

/// A consumer for scans: `enable.partition.eof` on (a partition whose remaining offsets are
/// only transaction markers still ends), never commits.
pub fn scan_consumer(
    factory: &KafkaClientFactory,
    group: &str,
    isolation: Isolation,
) -> Result<BaseConsumer<ReadToEndContext>, OpsError> {
    let cfg = factory.consumer_config(group, isolation);
    Ok(factory.create_read_to_end("scan consumer", &cfg)?)
}

/// Reads `topic`'s partitions over `ranges` (partition -> `[start, end)`), calling `visit`
/// for each record in order per partition. Fails when no record and no end-of-partition
/// arrives for `idle_timeout`.
pub fn scan_partitions(
    consumer: &BaseConsumer<ReadToEndContext>,
    topic: &str,
    ranges: &BTreeMap<i32, (i64, i64)>,
    idle_timeout: Duration,
    mut visit: impl FnMut(&BorrowedMessage<'_>) -> Result<Visit, OpsError>,
) -> Result<ScanEnd, OpsError> {
    let mut remaining: BTreeSet<i32> = ranges
        .iter()
        .filter(|(_, (start, end))| start < end)
        .map(|(p, _)| *p)
        .collect();
    if remaining.is_empty() {
        return Ok(ScanEnd::Completed);
    }
    let mut tpl = TopicPartitionList::new();
    for &p in &remaining {
        let (start, _) = ranges[&p];
        tpl.add_partition_offset(topic, p, Offset::Offset(start))
            .map_err(|e| OpsError::kafka(format!("assigning {topic:?}/{p} at {start}"), e))?;
    }
    consumer
        .assign(&tpl)
        .map_err(|e| OpsError::kafka(format!("assigning partitions of {topic:?}"), e))?;
    let mut last_progress = Instant::now();
    let outcome = loop {
        if remaining.is_empty() {
            break ScanEnd::Completed;
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                last_progress = Instant::now();
                let p = message.partition();
                let Some(&(_, end)) = ranges.get(&p) else {
                    continue;
                };
                if !remaining.contains(&p) || message.offset() >= end {
                    remaining.remove(&p);
                    continue;
                }
                if message.offset() + 1 >= end {
                    remaining.remove(&p);
                }
                if visit(&message)? == Visit::Stop {
                    break ScanEnd::Stopped;
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                last_progress = Instant::now();
                remaining.remove(&p);
            }
            Some(Err(e)) => {
                let _ = consumer.unassign();
                return Err(OpsError::kafka(format!("reading {topic:?}"), e));
            }
            None => {
                if last_progress.elapsed() > idle_timeout {
                    let _ = consumer.unassign();
                    return Err(OpsError::kafka(
                        format!(
                            "reading {topic:?}: no record for {}s from partitions {remaining:?}",
                            idle_timeout.as_secs()
                        ),
                        KafkaError::MessageConsumption(
                            rdkafka::types::RDKafkaErrorCode::RequestTimedOut,
                        ),
                    ));
                }
            }
        }
    };
    let _ = consumer.unassign();
    Ok(outcome)
}

/// Gaps up to this many offsets are counted record by record in [`records_left`].
pub const EXACT_LAG_TAIL: i64 = 64;

/// The records a read_committed consumer positioned at `from` still has to read before `end`,
/// per partition of `gaps` (partition -> `(from, end)`). A transactional topic ends each
/// transaction with a marker that takes an offset but is no record, so a fully consumed
/// partition can sit one or more offsets before its end: gaps of up to [`EXACT_LAG_TAIL`]
/// offsets are read and counted (markers and aborted records excluded), larger ones are
/// given in offsets (an upper bound, exact for topics written without transactions).
pub fn records_left(
    reader: &BaseConsumer<ReadToEndContext>,
    topic: &str,
    gaps: &BTreeMap<i32, (i64, i64)>,
) -> Result<BTreeMap<i32, i64>, OpsError> {
    let mut left: BTreeMap<i32, i64> = gaps
        .iter()
        .map(|(&p, &(from, end))| (p, (end - from).max(0)))
        .collect();
    let tails: BTreeMap<i32, (i64, i64)> = gaps
        .iter()
        .filter(|(_, (from, end))| (1..=EXACT_LAG_TAIL).contains(&(end - from)))
        .map(|(&p, &range)| (p, range))
        .collect();
    if tails.is_empty() {
        return Ok(left);
    }
    for p in tails.keys() {
        left.insert(*p, 0);
    }
    scan_partitions(reader, topic, &tails, super::scan_idle(), |m| {
        *left.entry(m.partition()).or_default() += 1;
        Ok(Visit::Continue)
    })?;
    Ok(left)
}
