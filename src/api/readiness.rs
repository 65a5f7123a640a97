//! Readiness checks for `/readyz`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// One dependency `/readyz` checks.
#[async_trait]
pub trait ReadinessCheck: Send + Sync + 'static {
    fn name(&self) -> &str;
    /// `Err` carries a message for the answer (never a secret).
    async fn check(&self) -> Result<(), String>;
}

/// Kafka is ready when a metadata request for a topic answers.
pub struct KafkaReadiness {
    client: Arc<BaseConsumer>,
    topic: String,
    timeout: Duration,
}

impl KafkaReadiness {
    /// `client` is any consumer of the client factory (it is not subscribed); `topic` a
    /// topic that must exist (e.g. `calls.raw`).
    pub fn new(client: BaseConsumer, topic: String, timeout: Duration) -> Self {
        KafkaReadiness {
            client: Arc::new(client),
            topic,
            timeout,
        }
    }
}

#[async_trait]
impl ReadinessCheck for KafkaReadiness {
    fn name(&self) -> &str {
        "kafka"
    }

    async fn check(&self) -> Result<(), String> {
        let client = Arc::clone(&self.client);
        let topic = self.topic.clone();
        let timeout = self.timeout;
        let metadata = tokio::task::spawn_blocking(move || {
            client
                .fetch_metadata(Some(&topic), timeout)
                .map_err(|e| e.to_string())
                .and_then(|m| match m.topics().first().and_then(|t| t.error()) {
                    Some(err) => Err(format!("topic {topic}: {err:?}")),
                    None if m.brokers().is_empty() => Err("no brokers".to_string()),
                    None => Ok(()),
                })
        })
        .await
        .map_err(|e| e.to_string())?;
        metadata
    }
}

/// Postgres is ready when `SELECT 1` answers.
pub struct PostgresReadiness {
    pool: sqlx::PgPool,
}

impl PostgresReadiness {
    pub fn new(pool: sqlx::PgPool) -> Self {
        PostgresReadiness { pool }
    }
}

#[async_trait]
impl ReadinessCheck for PostgresReadiness {
    fn name(&self) -> &str {
        "postgres"
    }

    async fn check(&self) -> Result<(), String> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// A readiness check from a closure (e.g. the SQLite store of the demo).
pub struct FnReadiness {
    name: String,
    check: Box<dyn Fn() -> CheckFuture + Send + Sync>,
}

impl FnReadiness {
    pub fn new<F, Fut>(name: impl Into<String>, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        FnReadiness {
            name: name.into(),
            check: Box::new(move || Box::pin(check())),
        }
    }
}

#[async_trait]
impl ReadinessCheck for FnReadiness {
    fn name(&self) -> &str {
        &self.name
    }

    async fn check(&self) -> Result<(), String> {
        (self.check)().await
    }
}
