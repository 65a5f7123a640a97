//! An in-process Kafka for the demo: librdkafka's mock cluster.
//!
//! The cluster lives inside a plain client handle (which is `Send + Sync`); the `!Send`
//! `MockCluster` view is only borrowed for a moment to create topics. It has no admin API
//! (topics are created through the mock), no compaction and only shallow transactions
//! (no transaction markers): enough to show the flow, not to prove exactly-once.

use std::time::Duration;

use rdkafka::client::{Client, DefaultClientContext};
use rdkafka::error::KafkaError;
use rdkafka::types::{RDKafkaErrorCode, RDKafkaType};
use rdkafka::ClientConfig;

/// The mock cluster could not be started or changed.
#[derive(Debug, thiserror::Error)]
#[error("in-process Kafka: {operation}: {source}")]
pub struct MockKafkaError {
    pub operation: String,
    #[source]
    pub source: KafkaError,
}

/// A one-broker in-process Kafka, destroyed when dropped.
pub struct InProcessKafka {
    client: Client<DefaultClientContext>,
    bootstrap: String,
}

impl InProcessKafka {
    pub fn start() -> Result<Self, MockKafkaError> {
        let err = |operation: &str| {
            let operation = operation.to_string();
            move |source| MockKafkaError { operation, source }
        };
        let mut config = ClientConfig::new();
        config.set("test.mock.num.brokers", "1");
        let native = config
            .create_native_config()
            .map_err(err("configuring the mock cluster"))?;
        let client = Client::new(
            &config,
            native,
            RDKafkaType::RD_KAFKA_PRODUCER,
            DefaultClientContext,
        )
        .map_err(err("creating the mock cluster"))?;
        let bootstrap = client
            .mock_cluster()
            .map(|c| c.bootstrap_servers())
            .ok_or_else(|| MockKafkaError {
                operation: "finding the mock cluster".to_string(),
                source: KafkaError::MockCluster(RDKafkaErrorCode::Fail),
            })?;
        let kafka = InProcessKafka { client, bootstrap };
        kafka.set_group_initial_rebalance_delay(Duration::ZERO);
        Ok(kafka)
    }

    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Creates a topic (the mock has no CreateTopics API).
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), MockKafkaError> {
        let cluster = self.client.mock_cluster().ok_or_else(|| MockKafkaError {
            operation: format!("creating topic {name}"),
            source: KafkaError::MockCluster(RDKafkaErrorCode::Fail),
        })?;
        cluster
            .create_topic(name, partitions, 1)
            .map_err(|source| MockKafkaError {
                operation: format!("creating topic {name}"),
                source,
            })
    }

    /// The mock coordinator waits 3 s before the first rebalance by default; the demo
    /// (like the real test broker) uses 0.
    fn set_group_initial_rebalance_delay(&self, delay: Duration) {
        let ms = i32::try_from(delay.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `native_ptr` is the live rd_kafka_t owned by `self.client`, created with
        // test.mock.num.brokers, so it owns a mock cluster that lives as long as the client.
        // The mock API only enqueues an op for the mock cluster's thread.
        unsafe {
            let mc = rdkafka::bindings::rd_kafka_handle_mock_cluster(self.client.native_ptr());
            if !mc.is_null() {
                rdkafka::bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(mc, ms);
            }
        }
    }
}
