//! Where a record's time went between two topics: the Kafka timestamp of each record of a
//! topic, by the number its key ends with (the webhook benchmark's call index).
//!
//! Records produced without an explicit timestamp carry their producer's create time, so the
//! timestamp of a call in `calls.raw` is when the API handed it to its producer, and in
//! `calls` when the processor did. With the due time of the webhook and the commit time of
//! its row, that splits the webhook -> Postgres latency into its stages.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use callsync_runtime::{Isolation, KafkaClientFactory};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};

/// Reads `topic` from its start to its end (read_committed) and returns, per call index (the
/// digits after the key's last `-`) of the keys that contain `key_part`, the timestamp in
/// milliseconds since the epoch of its first record. Other keys (a warm-up's, with indexes of
/// their own) are skipped. Blocking: call it from `spawn_blocking`.
pub fn timestamps_by_index(
    factory: &KafkaClientFactory,
    topic: &str,
    partitions: i32,
    key_part: &str,
    timeout: Duration,
) -> anyhow::Result<HashMap<u64, i64>> {
    let config = factory.consumer_config("callsync-bench-topic-times", Isolation::ReadCommitted);
    let consumer = factory
        .create_read_to_end("topic timestamps reader", &config)
        .with_context(|| format!("a consumer for {topic}"))?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer
        .assign(&assignment)
        .with_context(|| format!("assigning {topic}"))?;
    let mut times = HashMap::new();
    let mut at_end = 0;
    let deadline = Instant::now() + timeout;
    while at_end < partitions {
        if Instant::now() > deadline {
            anyhow::bail!("{topic} was not read to its end within {timeout:?}");
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => at_end += 1,
            Some(Err(e)) => return Err(e).with_context(|| format!("reading {topic}")),
            Some(Ok(message)) => {
                let index = message
                    .key()
                    .and_then(|k| std::str::from_utf8(k).ok())
                    .filter(|k| k.contains(key_part))
                    .and_then(|k| k.rsplit('-').next())
                    .and_then(|digits| digits.parse::<u64>().ok());
                if let (Some(index), Some(ms)) = (index, message.timestamp().to_millis()) {
                    times.entry(index).or_insert(ms);
                }
            }
        }
    }
    Ok(times)
}
