//! Kafka for tests: the in-process mock cluster (fast tier) and the real broker (real tier).

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{Client, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::types::RDKafkaType;
use rdkafka::ClientConfig;

use crate::process::{self, command, run};
use crate::{require, TestkitError};

/// `prefix-<uuid>`: a topic name no other test (or earlier run) uses.
pub fn unique_topic(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// `prefix-<uuid>`: a consumer group / transactional id no other test uses.
pub fn unique_group(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

// ------------------------------------------------------------------------------------------------
// fast tier

/// librdkafka's in-process mock cluster (`rdkafka::mocking`): brokers on loopback ports served
/// by librdkafka threads, no JVM, always available. Use it for producer/consumer logic,
/// consumer-group rebalances and fault injection ([`MockKafka::cluster`]).
///
/// It does **not** implement (see `docs/testing.md`): the admin API (CreateTopics,
/// DescribeConfigs, DeleteRecords...; create topics with [`MockKafka::create_topic`]), log
/// compaction, retention or any topic config, `offsets_for_times` (returns offset -1 = end,
/// silently), transaction markers (a `read_committed` consumer sees aborted records) and
/// offsets committed with `send_offsets_to_transaction` (not stored). Test those against the
/// real broker ([`crate::real_kafka`]).
///
/// The cluster is created through a client configured with `test.mock.num.brokers` and is
/// destroyed when this value is dropped. Unlike a bare `MockCluster` (which is `!Send`), a
/// `MockKafka` is `Send + Sync`: it only holds that client, and [`MockKafka::cluster`] hands out
/// a short-lived borrowed `MockCluster` handle (which is `!Send`: use it, don't keep it across
/// an `.await` in a spawned task).
pub struct MockKafka {
    client: Client<DefaultClientContext>,
    bootstrap: String,
    brokers: i32,
}

impl std::fmt::Debug for MockKafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockKafka")
            .field("bootstrap", &self.bootstrap)
            .field("brokers", &self.brokers)
            .finish()
    }
}

impl MockKafka {
    /// Starts a mock cluster of `brokers` brokers (ids 1..=brokers), with the consumer-group
    /// initial rebalance delay set to 0 (the mock's default is 3 s; the real test broker uses 0
    /// too).
    pub fn new(brokers: i32) -> Result<MockKafka, TestkitError> {
        let mock_err = |operation: &str, source| TestkitError::Kafka {
            bootstrap: format!("<mock cluster of {brokers}>"),
            operation: operation.to_string(),
            source: Box::new(source),
        };
        let mut config = ClientConfig::new();
        config.set("test.mock.num.brokers", brokers.to_string());
        let native = config
            .create_native_config()
            .map_err(|e| mock_err("configure test.mock.num.brokers", e))?;
        let client = Client::new(
            &config,
            native,
            RDKafkaType::RD_KAFKA_PRODUCER,
            DefaultClientContext,
        )
        .map_err(|e| mock_err("create the mock cluster", e))?;
        let bootstrap = client
            .mock_cluster()
            .map(|c| c.bootstrap_servers())
            .ok_or_else(|| {
                mock_err(
                    "find the mock cluster of the client",
                    rdkafka::error::KafkaError::MockCluster(rdkafka::types::RDKafkaErrorCode::Fail),
                )
            })?;
        let mock = MockKafka {
            client,
            bootstrap,
            brokers,
        };
        mock.set_group_initial_rebalance_delay(Duration::ZERO)?;
        Ok(mock)
    }

    /// The `bootstrap.servers` list of the mock brokers.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// A `ClientConfig` with `bootstrap.servers` set to the mock brokers.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        c
    }

    /// Creates `name` with `partitions` partitions (replication factor min(3, brokers)).
    /// The mock's only way to create topics besides auto-creation: the CreateTopics admin API
    /// is not implemented.
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), TestkitError> {
        self.cluster()
            .create_topic(name, partitions, self.brokers.clamp(1, 3))
            .map_err(|source| TestkitError::Kafka {
                bootstrap: self.bootstrap.clone(),
                operation: format!("mock create_topic {name:?} with {partitions} partitions"),
                source: Box::new(source),
            })
    }

    /// A handle to the mock cluster for fault injection: `broker_down`/`broker_up`,
    /// `request_errors`, `partition_leader`, `broker_round_trip_time`, ... The handle borrows
    /// `self` and is `!Send`.
    pub fn cluster(&self) -> MockCluster<'_, DefaultClientContext> {
        match self.client.mock_cluster() {
            Some(c) => c,
            // the client was created with test.mock.num.brokers, checked in new()
            None => unreachable!("MockKafka's client has no mock cluster"),
        }
    }

    /// Sets the classic consumer-group initial rebalance delay of the mock coordinator
    /// (librdkafka's `rd_kafka_mock_group_initial_rebalance_delay_ms`, not wrapped by rdkafka).
    pub fn set_group_initial_rebalance_delay(&self, delay: Duration) -> Result<(), TestkitError> {
        let ms = i32::try_from(delay.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `native_ptr` is the live rd_kafka_t owned by `self.client`; it was created with
        // test.mock.num.brokers, so it owns a mock cluster, which lives as long as the client.
        // The mock API functions only enqueue an op for the mock cluster's thread.
        unsafe {
            let mc = rdkafka::bindings::rd_kafka_handle_mock_cluster(self.client.native_ptr());
            if mc.is_null() {
                return Err(TestkitError::Kafka {
                    bootstrap: self.bootstrap.clone(),
                    operation: "get the mock cluster handle".to_string(),
                    source: Box::new(rdkafka::error::KafkaError::MockCluster(
                        rdkafka::types::RDKafkaErrorCode::Fail,
                    )),
                });
            }
            rdkafka::bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(mc, ms);
        }
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------------
// real tier

/// The real Kafka broker at `KAFKA_BOOTSTRAP`, or `None` when that is unset: outside CI the
/// caller should skip the test (a line says so on stderr); under CI this panics (via
/// [`require`]). `scripts/test.sh` and `scripts/kafka-broker.sh start` provide it.
pub fn real_kafka() -> Option<RealKafka> {
    match std::env::var("KAFKA_BOOTSTRAP") {
        Ok(b) if !b.trim().is_empty() => Some(RealKafka {
            bootstrap: b.trim().to_string(),
        }),
        _ => {
            require(
                "Kafka broker",
                "KAFKA_BOOTSTRAP is not set (start one with scripts/kafka-broker.sh start)",
            );
            None
        }
    }
}

/// A real Apache Kafka broker (the single-node KRaft broker of `scripts/kafka-broker.sh`):
/// compaction, transactions with markers, timestamps, admin API, all real.
///
/// Topics and groups outlive the test: name them with [`RealKafka::unique_topic`] /
/// [`RealKafka::unique_group`] so tests never collide.
#[derive(Debug, Clone)]
pub struct RealKafka {
    bootstrap: String,
}

impl RealKafka {
    /// A handle for an explicit bootstrap list (no environment involved).
    pub fn new(bootstrap: impl Into<String>) -> RealKafka {
        RealKafka {
            bootstrap: bootstrap.into(),
        }
    }

    /// `bootstrap.servers` of the broker (`KAFKA_BOOTSTRAP`).
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// A `ClientConfig` with `bootstrap.servers` set.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        c
    }

    /// `prefix-<uuid>`, see [`unique_topic`].
    pub fn unique_topic(&self, prefix: &str) -> String {
        unique_topic(prefix)
    }

    /// `prefix-<uuid>`, see [`unique_group`].
    pub fn unique_group(&self, prefix: &str) -> String {
        unique_group(prefix)
    }

    /// Creates `name` (replication factor 1) with topic `configs` such as
    /// `("cleanup.policy", "compact")`, and waits until every partition has a leader in the
    /// broker's metadata.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: &[(&str, &str)],
    ) -> Result<(), TestkitError> {
        let admin: AdminClient<DefaultClientContext> = self
            .client_config()
            .create()
            .map_err(|source| self.err("create admin client", source))?;
        let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        for (k, v) in configs {
            topic = topic.set(k, v);
        }
        let opts = AdminOptions::new()
            .request_timeout(Some(Duration::from_secs(30)))
            .operation_timeout(Some(Duration::from_secs(30)));
        let results = admin
            .create_topics([&topic], &opts)
            .await
            .map_err(|source| self.err(&format!("create topic {name:?}"), source))?;
        for r in results {
            if let Err((topic, code)) = r {
                return Err(TestkitError::TopicCreation {
                    bootstrap: self.bootstrap.clone(),
                    topic,
                    error: format!("{code} (configs {configs:?}, {partitions} partitions)"),
                });
            }
        }
        self.wait_for_topic(name, partitions, Duration::from_secs(30))
            .await
    }

    /// Deletes `name` (best effort cleanup for tests that make many topics).
    pub async fn delete_topic(&self, name: &str) -> Result<(), TestkitError> {
        let admin: AdminClient<DefaultClientContext> = self
            .client_config()
            .create()
            .map_err(|source| self.err("create admin client", source))?;
        let results = admin
            .delete_topics(&[name], &AdminOptions::new())
            .await
            .map_err(|source| self.err(&format!("delete topic {name:?}"), source))?;
        for r in results {
            if let Err((topic, code)) = r {
                return Err(TestkitError::TopicCreation {
                    bootstrap: self.bootstrap.clone(),
                    topic,
                    error: format!("delete failed: {code}"),
                });
            }
        }
        Ok(())
    }

    async fn wait_for_topic(
        &self,
        name: &str,
        partitions: i32,
        timeout: Duration,
    ) -> Result<(), TestkitError> {
        let consumer: BaseConsumer = self
            .client_config()
            .create()
            .map_err(|source| self.err("create metadata client", source))?;
        let (topic, bootstrap) = (name.to_string(), self.bootstrap.clone());
        // fetch_metadata blocks: poll on a blocking thread, not on the test's runtime
        let waited = tokio::task::spawn_blocking(move || {
            let want = usize::try_from(partitions).unwrap_or(0);
            let deadline = std::time::Instant::now() + timeout;
            loop {
                if let Ok(md) = consumer.fetch_metadata(Some(&topic), Duration::from_secs(1)) {
                    let ready = md.topics().iter().any(|t| {
                        t.name() == topic
                            && t.error().is_none()
                            && t.partitions().len() == want
                            && t.partitions()
                                .iter()
                                .all(|p| p.leader() >= 0 && p.error().is_none())
                    });
                    if ready {
                        return Ok(());
                    }
                }
                if std::time::Instant::now() >= deadline {
                    return Err(TestkitError::Timeout {
                        what: format!(
                            "topic {topic:?} ({partitions} partitions) to have leaders on {bootstrap}"
                        ),
                        seconds: timeout.as_secs(),
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .await;
        match waited {
            Ok(result) => result,
            Err(e) => Err(TestkitError::Task(format!(
                "waiting for topic {name:?}: {e}"
            ))),
        }
    }

    /// Stops the broker (`scripts/kafka-broker.sh stop`: SIGTERM, controlled shutdown, wait).
    ///
    /// Only for the broker that script started on this machine (`KAFKA_BOOTSTRAP` is
    /// `127.0.0.1:$CALLSYNC_KAFKA_PORT`, default 19092). It stops the broker for every test in
    /// the process: put broker-fault tests in a test binary of their own.
    pub async fn stop_broker(&self) -> Result<(), TestkitError> {
        self.broker_script("stop").await
    }

    /// Starts the broker again (`scripts/kafka-broker.sh start`, same data and port) and waits
    /// until it serves (typically 5–10 s). See [`RealKafka::stop_broker`].
    pub async fn start_broker(&self) -> Result<(), TestkitError> {
        self.broker_script("start").await
    }

    /// [`stop_broker`](RealKafka::stop_broker) then [`start_broker`](RealKafka::start_broker).
    pub async fn restart_broker(&self) -> Result<(), TestkitError> {
        self.stop_broker().await?;
        self.start_broker().await
    }

    async fn broker_script(&self, action: &str) -> Result<(), TestkitError> {
        let port = std::env::var("CALLSYNC_KAFKA_PORT").unwrap_or_else(|_| "19092".to_string());
        let managed = format!("127.0.0.1:{port}");
        if self.bootstrap != managed {
            return Err(TestkitError::NotControllable {
                service: "Kafka broker",
                reason: format!(
                    "{} is not the broker of scripts/kafka-broker.sh ({managed}); only that one \
                     can be stopped and started by tests",
                    self.bootstrap
                ),
            });
        }
        let script = process::repo_root().join("scripts").join("kafka-broker.sh");
        let (mut cmd, shown) = command(
            None,
            Path::new("bash"),
            &[script.as_os_str(), OsStr::new(action)],
        );
        // a restart keeps the data (topics, committed offsets)
        cmd.env_remove("CALLSYNC_KAFKA_FRESH");
        run(cmd, shown).await.map(|_| ())
    }

    fn err(&self, operation: &str, source: rdkafka::error::KafkaError) -> TestkitError {
        TestkitError::Kafka {
            bootstrap: self.bootstrap.clone(),
            operation: operation.to_string(),
            source: Box::new(source),
        }
    }
}
