//! Helpers shared by the `ops_*` tests (real Kafka broker).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use callsync::ops::offsets::{topic_partitions, watermarks};
use callsync::ops::scan::{scan_consumer, scan_partitions, Visit};
use callsync_runtime::{Isolation, KafkaClientFactory, KafkaSettings};
use callsync_testkit::RealKafka;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

pub const TIMEOUT: Duration = Duration::from_secs(15);

/// A record to produce: key, value, timestamp (ms), partition, headers.
pub type TestRecord = (String, Vec<u8>, Option<i64>, Option<i32>, OwnedHeaders);

/// A record read back: key, value, headers as UTF-8 pairs.
pub type ReadRecord = (String, Vec<u8>, Vec<(String, String)>);

/// A factory whose topic prefix is unique to the test, so callsync's topic names
/// (`calls`, `calls.dlq`, ...) never collide with other tests on the shared broker.
pub fn factory(kafka: &RealKafka, prefix: &str) -> KafkaClientFactory {
    let mut settings = KafkaSettings::plaintext(kafka.bootstrap());
    settings.topic_prefix = prefix.to_string();
    KafkaClientFactory::new(settings)
}

pub fn unique_prefix(kafka: &RealKafka, name: &str) -> String {
    format!("{}.", kafka.unique_topic(name))
}

/// Produces `records` (key, value, timestamp ms, headers) to `topic`/`partition`.
pub async fn produce(factory: &KafkaClientFactory, topic: &str, records: Vec<TestRecord>) {
    let producer: FutureProducer = factory.producer().expect("producer");
    for (key, value, ts, partition, headers) in records {
        let mut record = FutureRecord::to(topic)
            .key(&key)
            .payload(&value)
            .headers(headers);
        if let Some(ts) = ts {
            record = record.timestamp(ts);
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        producer
            .send(record, TIMEOUT)
            .await
            .unwrap_or_else(|(e, _)| panic!("producing to {topic}: {e}"));
    }
}

/// A consumer of `group` that subscribes to `topic`, reads until it has caught up with the
/// end offsets (as they are when it starts), commits, and returns the keys it read.
pub fn consume_group_to_end(factory: &KafkaClientFactory, group: &str, topic: &str) -> Vec<String> {
    let consumer: BaseConsumer = factory
        .create(
            "test consumer",
            &factory.consumer_config(group, Isolation::ReadCommitted),
        )
        .expect("consumer");
    let parts = topic_partitions(&consumer, topic, TIMEOUT).expect("partitions");
    let ends: BTreeMap<i32, i64> = watermarks(&consumer, topic, &parts, TIMEOUT)
        .expect("watermarks")
        .into_iter()
        .map(|(p, w)| (p, w.high))
        .collect();
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut keys = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.expect("message");
            keys.push(String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned());
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, m.partition(), Offset::Offset(m.offset() + 1))
                .expect("tpl");
            consumer.commit(&tpl, CommitMode::Sync).expect("commit");
        }
        // caught up when every partition's position reached its end
        let assignment = consumer.assignment().expect("assignment");
        if assignment.count() == parts.len() {
            let positions = consumer.position().expect("position");
            let done = positions.elements_for_topic(topic).iter().all(|e| {
                let end = ends.get(&e.partition()).copied().unwrap_or(0);
                match e.offset() {
                    Offset::Offset(o) => o >= end,
                    _ => end == 0 || committed_at_least(&consumer, topic, e.partition(), end),
                }
            });
            if done {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "group {group} did not catch up on {topic}"
        );
    }
    keys
}

fn committed_at_least(consumer: &BaseConsumer, topic: &str, partition: i32, end: i64) -> bool {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    consumer
        .committed_offsets(tpl, TIMEOUT)
        .ok()
        .and_then(|c| {
            c.find_partition(topic, partition)
                .map(|e| match e.offset() {
                    Offset::Offset(o) => o >= end,
                    _ => false,
                })
        })
        .unwrap_or(false)
}

/// Every committed record of `topic` (read_committed), as (key, value, headers).
pub fn read_all(factory: &KafkaClientFactory, topic: &str) -> Vec<ReadRecord> {
    use rdkafka::message::Headers;
    let consumer =
        scan_consumer(factory, "ops-test-reader", Isolation::ReadCommitted).expect("consumer");
    let parts = topic_partitions(&consumer, topic, TIMEOUT).expect("partitions");
    let ranges = watermarks(&consumer, topic, &parts, TIMEOUT)
        .expect("watermarks")
        .into_iter()
        .map(|(p, w)| (p, (w.low, w.high)))
        .collect();
    let mut out = Vec::new();
    scan_partitions(&consumer, topic, &ranges, Duration::from_secs(20), |m| {
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push((
            String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
            m.payload().unwrap_or_default().to_vec(),
            headers,
        ));
        Ok(Visit::Continue)
    })
    .expect("scan");
    out
}

/// The offsets `group` has committed on `topic`.
pub fn committed(factory: &KafkaClientFactory, group: &str, topic: &str) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = factory
        .create(
            "test consumer",
            &factory.consumer_config(group, Isolation::ReadCommitted),
        )
        .expect("consumer");
    let parts = topic_partitions(&consumer, topic, TIMEOUT).expect("partitions");
    callsync::ops::offsets::committed_offsets(&consumer, group, topic, &parts, TIMEOUT)
        .expect("committed")
}
