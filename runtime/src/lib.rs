//! Shared plumbing of callsync's stages: the Kafka client factory, the topic
//! catalogue, graceful shutdown, metrics names and secrets.

pub mod delivery;
pub mod kafka;
pub mod metrics;
pub mod process_memory;
pub mod read_to_end;
pub mod secret;
pub mod shutdown;
pub mod step_watch;
pub mod topic_id;
pub mod topics;
pub mod transactional_id;

pub use kafka::{send_waiting, ClientError, Isolation, KafkaClientFactory, KafkaSettings};
pub use read_to_end::ReadToEndContext;
pub use secret::Secret;
pub use shutdown::Shutdown;
pub use step_watch::StepWatch;
pub use topic_id::{topic_id, TopicIdError};
pub use topics::{
    ensure_catalogue, ensure_topics, names, CatalogueOptions, EnsureReport, TopicCatalogue,
    TopicSpec, TopicStatus,
};
pub use transactional_id::TransactionalId;
