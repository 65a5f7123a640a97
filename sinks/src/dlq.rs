//! Dead letters to `calls.dlq`: the original key and bytes, with headers
//! saying why, from which stage and from where.

use std::time::Duration;

use futures::future::join_all;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::batch::DeadLetter;

pub const HEADER_REASON: &str = "callsync.error.reason";
pub const HEADER_STAGE: &str = "callsync.error.stage";
pub const HEADER_SOURCE_TOPIC: &str = "callsync.source.topic";
pub const HEADER_SOURCE_PARTITION: &str = "callsync.source.partition";
pub const HEADER_SOURCE_OFFSET: &str = "callsync.source.offset";

/// Sending to the DLQ failed.
#[derive(Debug, thiserror::Error)]
#[error("producing {count} dead letter(s) from {source_topic} to {dlq_topic}: {source}")]
pub struct DlqError {
    pub count: usize,
    pub source_topic: String,
    pub dlq_topic: String,
    #[source]
    pub source: rdkafka::error::KafkaError,
}

/// Produces dead letters and waits until Kafka has them (acks=all).
pub struct DeadLetterQueue {
    producer: FutureProducer,
    topic: String,
}

impl std::fmt::Debug for DeadLetterQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetterQueue")
            .field("topic", &self.topic)
            .finish()
    }
}

impl DeadLetterQueue {
    pub fn new(producer: FutureProducer, topic: impl Into<String>) -> Self {
        DeadLetterQueue {
            producer,
            topic: topic.into(),
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Send every dead letter of `source_topic`; Ok once all are acknowledged.
    pub async fn send_all(
        &self,
        source_topic: &str,
        letters: &[DeadLetter],
    ) -> Result<(), DlqError> {
        let sends = letters.iter().map(|letter| {
            let partition = letter.source.partition.to_string();
            let offset = letter.source.offset.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: HEADER_REASON,
                    value: Some(letter.reason.as_str()),
                })
                .insert(Header {
                    key: HEADER_STAGE,
                    value: Some("sink"),
                })
                .insert(Header {
                    key: HEADER_SOURCE_TOPIC,
                    value: Some(source_topic),
                })
                .insert(Header {
                    key: HEADER_SOURCE_PARTITION,
                    value: Some(partition.as_str()),
                })
                .insert(Header {
                    key: HEADER_SOURCE_OFFSET,
                    value: Some(offset.as_str()),
                });
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&self.topic).headers(headers);
            if let Some(key) = &letter.source.key {
                record = record.key(key.as_slice());
            }
            if let Some(payload) = &letter.source.payload {
                record = record.payload(payload.as_slice());
            }
            self.producer.send(record, Duration::from_secs(30))
        });
        for result in join_all(sends).await {
            if let Err((source, _)) = result {
                return Err(DlqError {
                    count: letters.len(),
                    source_topic: source_topic.to_string(),
                    dlq_topic: self.topic.clone(),
                    source,
                });
            }
        }
        for letter in letters {
            metrics::counter!(callsync_runtime::metrics::DLQ_TOTAL, "stage" => "sink", "reason" => reason_label(&letter.reason))
                .increment(1);
        }
        Ok(())
    }
}

/// A low-cardinality label for a reason: its first words.
fn reason_label(reason: &str) -> String {
    reason
        .split([':', '('])
        .next()
        .unwrap_or(reason)
        .trim()
        .chars()
        .take(48)
        .collect()
}
