//! Errors that stop a processor instance.

use rdkafka::error::KafkaError;

use crate::config::ConfigError;
use crate::dedup::RestoreError;

/// Why a processor instance stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Client(#[from] callsync_runtime::ClientError),
    #[error("subscribing group {group} to {topic}: {source}")]
    Subscribe {
        group: String,
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("init_transactions for transactional.id {transactional_id}: {source}")]
    InitTransactions {
        transactional_id: String,
        #[source]
        source: KafkaError,
    },
    /// Another producer with the same transactional id took over (this instance is a
    /// zombie); it stops without writing anything more.
    #[error("producer {transactional_id} was fenced by a newer instance with the same transactional.id; stopping without writing: {source}")]
    Fenced {
        transactional_id: String,
        #[source]
        source: KafkaError,
    },
    #[error("{step} failed fatally for transactional.id {transactional_id}: {source}")]
    Transaction {
        step: &'static str,
        transactional_id: String,
        #[source]
        source: KafkaError,
    },
    #[error("restoring dedup state: {0}")]
    Restore(#[from] RestoreError),
    #[error("consuming {topic}: {source}")]
    Consume {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("the processor worker thread failed: {0}")]
    Worker(String),
    #[error("the processor thread has been blocked in {step} for {secs} s, past its timeout (a librdkafka call that did not return); the instance stops; its transaction is aborted by the broker (transaction timeout) or fenced by a restart with the same instance_id, and the next owner resumes from the committed offsets")]
    Stuck { step: &'static str, secs: u64 },
}
