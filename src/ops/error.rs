//! Errors of the operations commands. Each names what failed and with which input.

use callsync_runtime::ClientError;
use rdkafka::error::KafkaError;

/// An operations command failed.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// A Kafka client could not be created.
    #[error(transparent)]
    Client(#[from] ClientError),

    /// A Kafka request failed.
    #[error("{operation}: {source}")]
    Kafka {
        /// What we asked Kafka, with its inputs (topic, group, partitions).
        operation: String,
        #[source]
        source: KafkaError,
    },

    /// The topic does not exist (or has no partitions) on the cluster.
    #[error("topic {topic:?} does not exist on the cluster (or has no partitions)")]
    UnknownTopic { topic: String },

    /// `--partitions` named partitions the topic does not have.
    #[error("topic {topic:?} has partitions 0..{count}; asked for {asked:?}")]
    UnknownPartitions {
        topic: String,
        count: usize,
        asked: Vec<i32>,
    },

    /// The consumer group has members; moving its offsets now would be overwritten by them.
    #[error(
        "consumer group {group:?} is active ({state}, {members} member(s): {member_list}); stop \
         its consumers first (offsets can only be reset while the group is empty)"
    )]
    GroupActive {
        group: String,
        state: String,
        members: usize,
        member_list: String,
    },

    /// A date/time argument could not be parsed.
    #[error(
        "{argument} {input:?} is not a date-time: use RFC 3339 (2024-05-01T12:00:00Z, \
         2024-05-01T14:00:00+02:00), YYYY-MM-DDTHH:MM:SS[.sss] (UTC) or YYYY-MM-DD (midnight UTC)"
    )]
    BadDateTime {
        argument: &'static str,
        input: String,
    },

    /// A Postgres statement of `sink rewind` failed.
    #[error("{operation}: {source}")]
    Postgres {
        operation: String,
        #[source]
        source: sqlx::Error,
    },

    /// Writing the command's output failed.
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),

    /// Serializing the JSON output failed.
    #[error("serializing {what} to JSON: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },

    /// A background task failed.
    #[error("{what}: the task failed: {message}")]
    Task { what: &'static str, message: String },

    /// An argument combination that cannot work.
    #[error("{0}")]
    Usage(String),
}

impl OpsError {
    pub(crate) fn kafka(operation: impl Into<String>, source: KafkaError) -> Self {
        OpsError::Kafka {
            operation: operation.into(),
            source,
        }
    }

    pub(crate) fn postgres(operation: impl Into<String>, source: sqlx::Error) -> Self {
        OpsError::Postgres {
            operation: operation.into(),
            source,
        }
    }
}
