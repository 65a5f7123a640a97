//! Helpers of the processor's real-broker tests: topics under a unique prefix, producing
//! synthetic records, reading topics back (read_committed), waiting for the group's progress.

#![allow(dead_code)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use callsync_processors::ProcessorConfig;
use callsync_runtime::{names, KafkaClientFactory, KafkaSettings};
use callsync_schemas::{encode_to_vec, CallRecord, WireFormat};
use callsync_testkit::RealKafka;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// One test's world: its own topics (under a unique prefix) on the real broker.
pub struct Fixture {
    pub kafka: RealKafka,
    pub factory: KafkaClientFactory,
    pub partitions: i32,
}

impl Fixture {
    /// Creates `calls.raw`, `calls`, `calls.dlq` and `callsync.dedup-state` under a new prefix.
    pub async fn new(kafka: RealKafka, partitions: i32) -> Fixture {
        let prefix = format!("{}.", kafka.unique_topic("proc"));
        let mut settings = KafkaSettings::plaintext(kafka.bootstrap());
        settings.topic_prefix = prefix;
        let factory = KafkaClientFactory::new(settings);
        for base in [names::CALLS_RAW, names::CALLS, names::CALLS_DLQ] {
            kafka
                .create_topic(&factory.settings().topic(base), partitions, &[])
                .await
                .expect("create topic");
        }
        kafka
            .create_topic(
                &factory.settings().topic(names::DEDUP_STATE),
                partitions,
                &[("cleanup.policy", "compact")],
            )
            .await
            .expect("create state topic");
        Fixture {
            kafka,
            factory,
            partitions,
        }
    }

    pub fn topic(&self, base: &str) -> String {
        self.factory.settings().topic(base)
    }

    pub fn prefix(&self) -> &str {
        &self.factory.settings().topic_prefix
    }

    /// A processor config for this fixture with a unique group (no `instance_id`: each run
    /// gets a transactional id of its own).
    pub fn processor_config(&self, group: &str) -> ProcessorConfig {
        ProcessorConfig {
            instance_id: None,
            group_id: group.to_string(),
            batch_max_records: 5_000,
            batch_max_time_ms: 100,
            commit_timeout_secs: 30,
            restore_timeout_secs: 60,
            ..ProcessorConfig::default()
        }
    }

    /// Produce `records` to `calls.raw`, keyed, single-object encoded; waits for delivery.
    pub fn produce_records<'a>(&self, records: impl IntoIterator<Item = &'a CallRecord>) -> usize {
        let items = records.into_iter().map(|r| {
            (
                Some(r.key().into_string().into_bytes()),
                Some(encode_to_vec(r, WireFormat::SingleObject).expect("encode")),
            )
        });
        self.produce_raw(items)
    }

    /// Produce raw (key, value) pairs to `calls.raw`; waits for delivery.
    pub fn produce_raw(
        &self,
        items: impl IntoIterator<Item = (Option<Vec<u8>>, Option<Vec<u8>>)>,
    ) -> usize {
        let producer: BaseProducer = self
            .factory
            .create("test producer", &self.factory.producer_config())
            .expect("producer");
        let topic = self.topic(names::CALLS_RAW);
        let mut n = 0;
        for (key, value) in items {
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&topic);
            if let Some(k) = key.as_deref() {
                record = record.key(k);
            }
            if let Some(v) = value.as_deref() {
                record = record.payload(v);
            }
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((
                        KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                        r,
                    )) => {
                        record = r;
                        producer.poll(Duration::from_millis(10));
                    }
                    Err((e, _)) => panic!("produce: {e}"),
                }
            }
            n += 1;
            if n % 1000 == 0 {
                producer.poll(Duration::ZERO);
            }
        }
        producer.flush(Duration::from_secs(60)).expect("flush");
        n
    }

    /// Every record of `base` topic, read_committed, to the end.
    pub fn read_topic(&self, base: &str) -> Vec<ReadRecord> {
        let topic = self.topic(base);
        let mut cfg = self.factory.consumer_config(
            &self.kafka.unique_group("reader"),
            callsync_runtime::Isolation::ReadCommitted,
        );
        cfg.set("enable.partition.eof", "true");
        let consumer: BaseConsumer = self.factory.create("reader", &cfg).expect("reader");
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)
                .expect("tpl");
        }
        consumer.assign(&tpl).expect("assign");
        let mut out = Vec::new();
        let mut eof = std::collections::HashSet::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        while eof.len() < self.partitions as usize {
            assert!(Instant::now() < deadline, "reading {topic} timed out");
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    eof.insert(p);
                }
                Some(Err(e)) => panic!("reading {topic}: {e}"),
                Some(Ok(m)) => {
                    eof.remove(&m.partition());
                    let headers = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| {
                                    (
                                        h.key.to_string(),
                                        String::from_utf8_lossy(h.value.unwrap_or_default())
                                            .into_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    out.push(ReadRecord {
                        key: m.key().map(<[u8]>::to_vec),
                        value: m.payload().map(<[u8]>::to_vec),
                        headers,
                        partition: m.partition(),
                        offset: m.offset(),
                    });
                }
            }
        }
        out
    }

    /// Sum of the group's committed offsets on `calls.raw` (stable ones: waits for pending
    /// transactional commits).
    pub fn committed_total(&self, group: &str) -> i64 {
        self.try_committed_total(group, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("committed offsets of {group}: {e}"))
    }

    /// [`Fixture::committed_total`], or the error when a pending transaction of a member keeps
    /// the offsets unstable beyond `timeout`.
    pub fn try_committed_total(&self, group: &str, timeout: Duration) -> Result<i64, KafkaError> {
        let topic = self.topic(names::CALLS_RAW);
        let cfg = self
            .factory
            .consumer_config(group, callsync_runtime::Isolation::ReadCommitted);
        let consumer: BaseConsumer = self
            .factory
            .create("offset checker", &cfg)
            .expect("checker");
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            tpl.add_partition(&topic, p);
        }
        let committed = consumer.committed_offsets(tpl, timeout)?;
        Ok(committed
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            })
            .sum())
    }

    /// Waits until the group has committed `expected` input records in total.
    pub fn wait_for_committed(&self, group: &str, expected: i64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let total = self
                .try_committed_total(group, Duration::from_secs(5))
                .unwrap_or(-1);
            if total >= expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "group {group} committed {total} of {expected} records within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// One record read back.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: HashMap<String, String>,
    pub partition: i32,
    pub offset: i64,
}

impl ReadRecord {
    pub fn key_str(&self) -> String {
        String::from_utf8_lossy(self.key.as_deref().unwrap_or_default()).into_owned()
    }

    pub fn record(&self) -> CallRecord {
        callsync_schemas::decode_call_record(self.value.as_deref().expect("value")).expect("decode")
    }
}

/// Count of records per key.
pub fn count_by_key(records: &[ReadRecord]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in records {
        *counts.entry(r.key_str()).or_insert(0) += 1;
    }
    counts
}
