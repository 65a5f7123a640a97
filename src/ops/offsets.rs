//! Partition offsets: partitions of a topic, watermarks, a group's committed offsets,
//! `offsets_for_times`, and committing a group's offsets without joining it. All blocking.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};

use super::OpsError;

/// The low and high watermark of a partition: the first offset still held and the offset the
/// next record will get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Watermarks {
    pub low: i64,
    pub high: i64,
}

impl Watermarks {
    /// `offset` moved into `[low, high]`.
    pub fn clamp(&self, offset: i64) -> i64 {
        offset.clamp(self.low, self.high.max(self.low))
    }
}

/// The partition ids of `topic`, sorted; `UnknownTopic` when it has none.
pub fn topic_partitions(
    consumer: &BaseConsumer<impl ConsumerContext>,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, OpsError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| OpsError::kafka(format!("reading metadata of topic {topic:?}"), e))?;
    let mut partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    partitions.sort_unstable();
    if partitions.is_empty() {
        return Err(OpsError::UnknownTopic {
            topic: topic.to_string(),
        });
    }
    Ok(partitions)
}

/// `all` restricted to `wanted` (all of them when `wanted` is empty); an error names the
/// partitions the topic lacks.
pub fn select_partitions(topic: &str, all: &[i32], wanted: &[i32]) -> Result<Vec<i32>, OpsError> {
    if wanted.is_empty() {
        return Ok(all.to_vec());
    }
    let missing: Vec<i32> = wanted
        .iter()
        .copied()
        .filter(|p| !all.contains(p))
        .collect();
    if !missing.is_empty() {
        return Err(OpsError::UnknownPartitions {
            topic: topic.to_string(),
            count: all.len(),
            asked: missing,
        });
    }
    let mut selected = wanted.to_vec();
    selected.sort_unstable();
    selected.dedup();
    Ok(selected)
}

/// Watermarks of each partition.
pub fn watermarks(
    consumer: &BaseConsumer<impl ConsumerContext>,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
) -> Result<BTreeMap<i32, Watermarks>, OpsError> {
    let mut out = BTreeMap::new();
    for &p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout).map_err(|e| {
            OpsError::kafka(format!("reading watermarks of {topic:?} partition {p}"), e)
        })?;
        out.insert(p, Watermarks { low, high });
    }
    Ok(out)
}

/// The offsets `consumer`'s group has committed for `partitions` of `topic`; a partition
/// without a commit is absent.
pub fn committed_offsets(
    consumer: &BaseConsumer<impl ConsumerContext>,
    group: &str,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
) -> Result<BTreeMap<i32, i64>, OpsError> {
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, timeout).map_err(|e| {
        OpsError::kafka(
            format!("reading offsets committed by group {group:?} on {topic:?}"),
            e,
        )
    })?;
    Ok(committed
        .elements_for_topic(topic)
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect())
}

/// For each partition, the offset of the first record with a timestamp at or after `at`;
/// a partition with no such record maps to its high watermark (the end), as Kafka's
/// `kafka-consumer-groups --to-datetime` does.
pub fn offsets_for_time(
    consumer: &BaseConsumer<impl ConsumerContext>,
    topic: &str,
    partitions: &[i32],
    at: DateTime<Utc>,
    marks: &BTreeMap<i32, Watermarks>,
    timeout: Duration,
) -> Result<BTreeMap<i32, i64>, OpsError> {
    let mut tpl = TopicPartitionList::new();
    let millis = at.timestamp_millis();
    for &p in partitions {
        tpl.add_partition_offset(topic, p, Offset::Offset(millis))
            .map_err(|e| OpsError::kafka(format!("building a request for {topic:?}/{p}"), e))?;
    }
    let found = consumer.offsets_for_times(tpl, timeout).map_err(|e| {
        OpsError::kafka(
            format!("looking up offsets of {topic:?} at {}", at.to_rfc3339()),
            e,
        )
    })?;
    let mut out = BTreeMap::new();
    for e in found.elements_for_topic(topic) {
        let p = e.partition();
        if let Err(err) = e.error() {
            return Err(OpsError::kafka(
                format!(
                    "looking up the offset of {topic:?}/{p} at {}",
                    at.to_rfc3339()
                ),
                err,
            ));
        }
        let end = marks.get(&p).map_or(0, |m| m.high);
        let offset = match e.offset() {
            Offset::Offset(o) if o >= 0 => o,
            // no record at or after the time: the end of the partition
            _ => end,
        };
        out.insert(p, offset);
    }
    for &p in partitions {
        out.entry(p)
            .or_insert_with(|| marks.get(&p).map_or(0, |m| m.high));
    }
    Ok(out)
}

/// Commits `offsets` for `consumer`'s group on `topic` without joining the group (a simple
/// commit: no generation, no member id). The broker accepts it only while the group has no
/// members.
pub fn commit_offsets(
    consumer: &BaseConsumer<impl ConsumerContext>,
    group: &str,
    topic: &str,
    offsets: &BTreeMap<i32, i64>,
) -> Result<(), OpsError> {
    let mut tpl = TopicPartitionList::new();
    for (&p, &o) in offsets {
        tpl.add_partition_offset(topic, p, Offset::Offset(o))
            .map_err(|e| OpsError::kafka(format!("building a commit for {topic:?}/{p}"), e))?;
    }
    consumer.commit(&tpl, CommitMode::Sync).map_err(|e| {
        OpsError::kafka(
            format!("committing offsets of group {group:?} on {topic:?}: {offsets:?}"),
            e,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamp_keeps_offsets_within_the_watermarks() {
        let w = Watermarks { low: 10, high: 20 };
        assert_eq!(w.clamp(5), 10);
        assert_eq!(w.clamp(15), 15);
        assert_eq!(w.clamp(25), 20);
        let empty = Watermarks { low: 7, high: 7 };
        assert_eq!(empty.clamp(0), 7);
    }

    #[test]
    fn select_partitions_names_the_missing_ones() {
        assert_eq!(
            select_partitions("t", &[0, 1, 2], &[]).unwrap(),
            vec![0, 1, 2]
        );
        assert_eq!(
            select_partitions("t", &[0, 1, 2], &[2, 0, 2]).unwrap(),
            vec![0, 2]
        );
        let e = select_partitions("t", &[0, 1, 2], &[1, 5])
            .unwrap_err()
            .to_string();
        assert!(e.contains("[5]"), "{e}");
    }
}
