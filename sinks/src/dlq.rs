//! Dead letters to `calls.dlq`: the original key and bytes, with headers
//! saying why, from which stage and from where.
//!
//! The sink keeps its dead letters in the database, in the transaction that moves the offsets
//! past them (so a crash or an offset conflict never loses or doubles one), and publishes them
//! here after the commit. Each carries `callsync.dead_letter.id`
//! (`{group}/{topic}/{partition}/{offset}`): if a crash lands between the publication and its
//! note in the database, the next publication of the same dead letter has the same id, and
//! `callsync dlq list` counts it once.

use std::time::Duration;

use futures::future::join_all;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::batch::DeadLetter;
use crate::store::{DeadLetterId, StoredDeadLetter};

pub const HEADER_REASON: &str = "callsync.error.reason";
pub const HEADER_MESSAGE: &str = "callsync.error.message";
pub const HEADER_STAGE: &str = "callsync.error.stage";
pub const HEADER_SOURCE_TOPIC: &str = "callsync.source.topic";
pub const HEADER_SOURCE_PARTITION: &str = "callsync.source.partition";
pub const HEADER_SOURCE_OFFSET: &str = "callsync.source.offset";
/// `{group}/{topic}/{partition}/{offset}` of a sink dead letter: the same for every
/// publication of it.
pub const HEADER_DEAD_LETTER_ID: &str = "callsync.dead_letter.id";
/// The consumer group of the sink that wrote a dead letter.
pub const HEADER_SINK_GROUP: &str = "callsync.sink.group";

/// Reason codes of the sink's dead letters (the text before the first `: ` of a reason).
pub const REASON_UNDECODABLE: &str = "undecodable";
pub const REASON_EMPTY_VALUE: &str = "empty_value";
pub const REASON_DATABASE_REJECTED: &str = "database_rejected";

/// The code of a reason written as `code: detail`.
pub fn reason_code(reason: &str) -> &str {
    reason
        .split_once(": ")
        .map_or(reason, |(code, _)| code)
        .trim()
}

/// The id header's value of a sink dead letter.
pub fn dead_letter_id(group: &str, topic: &str, id: DeadLetterId) -> String {
    format!("{group}/{topic}/{}/{}", id.partition, id.offset)
}

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

/// One dead letter to publish.
#[derive(Debug, Clone, Copy)]
pub struct DlqMessage<'a> {
    pub id: DeadLetterId,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// `code: detail` or a bare code.
    pub reason: &'a str,
}

impl<'a> From<&'a DeadLetter> for DlqMessage<'a> {
    fn from(d: &'a DeadLetter) -> Self {
        DlqMessage {
            id: DeadLetterId {
                partition: d.source.partition,
                offset: d.source.offset,
            },
            key: d.source.key.as_deref(),
            value: d.source.payload.as_deref(),
            reason: &d.reason,
        }
    }
}

impl<'a> From<&'a StoredDeadLetter> for DlqMessage<'a> {
    fn from(d: &'a StoredDeadLetter) -> Self {
        DlqMessage {
            id: d.id,
            key: d.key.as_deref(),
            value: d.value.as_deref(),
            reason: &d.message,
        }
    }
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

    /// Send every dead letter that the sink of `group` read from `source_topic`; Ok once
    /// all are acknowledged.
    pub async fn send_all(
        &self,
        group: &str,
        source_topic: &str,
        letters: &[DlqMessage<'_>],
    ) -> Result<(), DlqError> {
        let sends = letters.iter().map(|letter| {
            let partition = letter.id.partition.to_string();
            let offset = letter.id.offset.to_string();
            let id = dead_letter_id(group, source_topic, letter.id);
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: HEADER_REASON,
                    value: Some(reason_code(letter.reason)),
                })
                .insert(Header {
                    key: HEADER_MESSAGE,
                    value: Some(letter.reason),
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
                })
                .insert(Header {
                    key: HEADER_SINK_GROUP,
                    value: Some(group),
                })
                .insert(Header {
                    key: HEADER_DEAD_LETTER_ID,
                    value: Some(id.as_str()),
                });
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&self.topic).headers(headers);
            if let Some(key) = letter.key {
                record = record.key(key);
            }
            if let Some(payload) = letter.value {
                record = record.payload(payload);
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
        Ok(())
    }
}

/// Counts dead letters written (once, when their batch commits).
pub fn count_dead_letters(letters: &[DeadLetter]) {
    for letter in letters {
        metrics::counter!(callsync_runtime::metrics::DLQ_TOTAL, "stage" => "sink", "reason" => reason_label(&letter.reason))
            .increment(1);
    }
}

/// A low-cardinality label for a reason: its code.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_split_into_a_code_and_the_detail() {
        assert_eq!(
            reason_code("database_rejected: value too long (SQLSTATE 22001)"),
            "database_rejected"
        );
        assert_eq!(reason_code("empty_value"), "empty_value");
        assert_eq!(reason_label("undecodable: bad magic"), "undecodable");
        assert_eq!(
            dead_letter_id(
                "callsync-sink",
                "calls",
                DeadLetterId {
                    partition: 3,
                    offset: 17
                }
            ),
            "callsync-sink/calls/3/17"
        );
    }
}
