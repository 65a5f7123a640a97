//! The Kafka client factory: every producer, consumer and admin client of
//! callsync is configured here, from one [`KafkaSettings`].
//!
//! Producers are idempotent (`acks=all`) and partition with `murmur2_random`,
//! so Java clients and Kafka Streams co-partition with us.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::{ClientConfig, FromClientConfig, FromClientConfigAndContext};
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseProducer, BaseRecord, FutureProducer, Producer, ProducerContext};
use serde::Deserialize;

use crate::read_to_end::ReadToEndContext;
use crate::secret::Secret;

/// How callsync reaches Kafka. Loaded from the `[kafka]` config section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// Comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// Prefix for every topic name (e.g. `prod.` gives `prod.calls`).
    #[serde(default)]
    pub topic_prefix: String,
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    #[serde(default)]
    pub security_protocol: Option<String>,
    /// `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`, ...
    #[serde(default)]
    pub sasl_mechanism: Option<String>,
    #[serde(default)]
    pub sasl_username: Option<String>,
    #[serde(default)]
    pub sasl_password: Option<Secret>,
    #[serde(default)]
    pub ssl_ca_location: Option<String>,
    /// Replication factor for topics callsync creates.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// Any other librdkafka property, passed through unchanged.
    #[serde(default)]
    pub client_properties: BTreeMap<String, String>,
}

fn default_replication_factor() -> i32 {
    1
}

impl KafkaSettings {
    /// Settings for a plaintext cluster at `bootstrap_servers` with no prefix.
    pub fn plaintext(bootstrap_servers: impl Into<String>) -> Self {
        KafkaSettings {
            bootstrap_servers: bootstrap_servers.into(),
            topic_prefix: String::new(),
            security_protocol: None,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            ssl_ca_location: None,
            replication_factor: 1,
            client_properties: BTreeMap::new(),
        }
    }

    /// The full name of a topic, prefix included.
    pub fn topic(&self, base: &str) -> String {
        format!("{}{}", self.topic_prefix, base)
    }
}

/// `queue.buffering.max.kbytes` of producers (librdkafka: 1 GiB).
pub const PRODUCER_QUEUE_KBYTES: &str = "65536";
/// `queued.max.messages.kbytes` of consumers (librdkafka: 64 MiB). Counts the values as
/// decompressed: 8 MiB is ~6,000 records of a backfill with the providers' raw JSON (~1.5 KB
/// each), a fraction of a second of work for the processor or the sink, which librdkafka
/// refills in one round trip.
pub const CONSUMER_QUEUE_KBYTES: &str = "8192";
/// `queued.min.messages` of consumers (librdkafka: 100,000).
pub const CONSUMER_QUEUED_MIN_MESSAGES: &str = "20000";
/// `fetch.max.bytes` of consumers (librdkafka: 50 MiB). Counts the batches as compressed, and
/// one fetch response lands in the queue whole, past the queue bound: 4 MiB of lz4-compressed
/// JSON-laden records is 10-16 MiB once decompressed, where 16 MiB could be ~60 MiB. 4 MiB a
/// round trip is still far above what any callsync stage consumes.
pub const CONSUMER_FETCH_MAX_BYTES: &str = "4194304";
/// `fetch.queue.backoff.ms` of consumers (librdkafka: 1000): how long a partition's fetching
/// pauses once the queue bounds above are reached. With queues this small the bounds are
/// reached every few batches, and a full second without fetching capped the processor at
/// ~39,000 records/s; 10 ms re-checks the queue instead (no request is sent while it is
/// still full). `callsync-bench processor` went from 39k to 89k records/s with it.
pub const CONSUMER_FETCH_QUEUE_BACKOFF_MS: &str = "10";

/// Isolation of a consumer: what it sees of transactional producers' output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Only committed transactions (every callsync stage reads this way).
    ReadCommitted,
    /// Everything, aborted records included (tools that inspect raw topics).
    ReadUncommitted,
}

/// A Kafka client failed to be created.
#[derive(Debug, thiserror::Error)]
#[error("creating a Kafka {role} for {bootstrap}: {source}")]
pub struct ClientError {
    pub role: &'static str,
    pub bootstrap: String,
    #[source]
    pub source: rdkafka::error::KafkaError,
}

/// Builds every Kafka client of callsync from one set of settings.
#[derive(Debug, Clone)]
pub struct KafkaClientFactory {
    settings: KafkaSettings,
}

impl KafkaClientFactory {
    pub fn new(settings: KafkaSettings) -> Self {
        KafkaClientFactory { settings }
    }

    pub fn settings(&self) -> &KafkaSettings {
        &self.settings
    }

    /// The base client config: servers, security, pass-through properties.
    pub fn base_config(&self) -> ClientConfig {
        let s = &self.settings;
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &s.bootstrap_servers);
        if let Some(p) = &s.security_protocol {
            cfg.set("security.protocol", p);
        }
        if let Some(m) = &s.sasl_mechanism {
            cfg.set("sasl.mechanism", m);
        }
        if let Some(u) = &s.sasl_username {
            cfg.set("sasl.username", u);
        }
        if let Some(p) = &s.sasl_password {
            cfg.set("sasl.password", p.expose());
        }
        if let Some(ca) = &s.ssl_ca_location {
            cfg.set("ssl.ca.location", ca);
        }
        for (k, v) in &s.client_properties {
            cfg.set(k, v);
        }
        cfg
    }

    /// An idempotent producer config: `acks=all`, `murmur2_random`.
    pub fn producer_config(&self) -> ClientConfig {
        let mut cfg = self.base_config();
        cfg.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            .set("message.timeout.ms", "30000")
            // librdkafka may queue 1 GiB per producer by default; every producer of callsync
            // sends in batches it waits for (a page, a transaction), so 64 MiB is plenty and
            // keeps memory bounded when the broker is slow
            .set("queue.buffering.max.kbytes", PRODUCER_QUEUE_KBYTES);
        // pass-through properties win over our defaults
        for (k, v) in &self.settings.client_properties {
            cfg.set(k, v);
        }
        cfg
    }

    /// A transactional producer config with the given `transactional.id`.
    pub fn transactional_producer_config(&self, transactional_id: &str) -> ClientConfig {
        let mut cfg = self.producer_config();
        cfg.set("transactional.id", transactional_id)
            .set("transaction.timeout.ms", "60000")
            // A transaction begun right after the previous commit finds the coordinator still
            // writing that commit's markers: its AddPartitionsToTxn / AddOffsetsToTxn answer
            // CONCURRENT_TRANSACTIONS and librdkafka retries after `retry.backoff.ms` (100 ms
            // by default), which back-to-back transactions paid every time. The markers take a
            // few ms on a healthy broker; the backoff still grows (to the max) if they do not.
            .set("retry.backoff.ms", "5")
            .set("retry.backoff.max.ms", "250");
        for (k, v) in &self.settings.client_properties {
            cfg.set(k, v);
        }
        cfg
    }

    /// A consumer config for `group`: auto-commit off (every stage commits
    /// itself), offsets reset to earliest.
    pub fn consumer_config(&self, group: &str, isolation: Isolation) -> ClientConfig {
        let mut cfg = self.base_config();
        cfg.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "isolation.level",
                match isolation {
                    Isolation::ReadCommitted => "read_committed",
                    Isolation::ReadUncommitted => "read_uncommitted",
                },
            )
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            // prefetch bounds: librdkafka's defaults (64 MiB queued, 100,000 messages,
            // 50 MiB per fetch) let a consumer behind a slow stage hold far more than one
            // batch of callsync needs
            .set("queued.max.messages.kbytes", CONSUMER_QUEUE_KBYTES)
            .set("queued.min.messages", CONSUMER_QUEUED_MIN_MESSAGES)
            .set("fetch.max.bytes", CONSUMER_FETCH_MAX_BYTES)
            .set("fetch.queue.backoff.ms", CONSUMER_FETCH_QUEUE_BACKOFF_MS);
        for (k, v) in &self.settings.client_properties {
            cfg.set(k, v);
        }
        cfg
    }

    pub fn producer(&self) -> Result<FutureProducer, ClientError> {
        self.create("producer", &self.producer_config())
    }

    /// A transactional producer with `init_transactions` already done.
    pub fn transactional_producer(
        &self,
        transactional_id: &str,
        timeout: Duration,
    ) -> Result<FutureProducer, ClientError> {
        let producer: FutureProducer = self.create(
            "transactional producer",
            &self.transactional_producer_config(transactional_id),
        )?;
        producer
            .init_transactions(timeout)
            .map_err(|source| self.error("transactional producer", source))?;
        Ok(producer)
    }

    pub fn consumer_with_context<C, T>(
        &self,
        group: &str,
        isolation: Isolation,
        context: C,
    ) -> Result<T, ClientError>
    where
        C: ConsumerContext,
        T: FromClientConfigAndContext<C>,
    {
        self.consumer_config(group, isolation)
            .create_with_context(context)
            .map_err(|source| self.error("consumer", source))
    }

    pub fn admin(&self) -> Result<AdminClient<DefaultClientContext>, ClientError> {
        self.create("admin client", &self.base_config())
    }

    /// A consumer of `cfg` that reads partitions to their end: `enable.partition.eof` is set
    /// here, and the ends it reports are not logged as errors ([`ReadToEndContext`]).
    pub fn create_read_to_end(
        &self,
        role: &'static str,
        cfg: &ClientConfig,
    ) -> Result<BaseConsumer<ReadToEndContext>, ClientError> {
        let mut cfg = cfg.clone();
        cfg.set("enable.partition.eof", "true");
        cfg.create_with_context(ReadToEndContext)
            .map_err(|source| self.error(role, source))
    }

    pub fn create<T: FromClientConfig>(
        &self,
        role: &'static str,
        cfg: &ClientConfig,
    ) -> Result<T, ClientError> {
        cfg.create().map_err(|source| self.error(role, source))
    }

    fn error(&self, role: &'static str, source: rdkafka::error::KafkaError) -> ClientError {
        ClientError {
            role,
            bootstrap: self.settings.bootstrap_servers.clone(),
            source,
        }
    }
}

/// Enqueue `record` on `producer`, serving delivery reports while its queue is full
/// (backpressure instead of an error); any other refusal is returned.
pub fn send_waiting<K, P, C>(
    producer: &BaseProducer<C>,
    mut record: BaseRecord<'_, K, P, C::DeliveryOpaque>,
) -> Result<(), KafkaError>
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
    C: ProducerContext,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                record = returned;
                producer.poll(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_config_is_idempotent_murmur2_and_passes_overrides_through() {
        let mut s = KafkaSettings::plaintext("127.0.0.1:1");
        s.client_properties.insert("linger.ms".into(), "50".into());
        s.sasl_password = Some(Secret::new("pw"));
        let cfg = KafkaClientFactory::new(s).producer_config();
        assert_eq!(cfg.get("enable.idempotence"), Some("true"));
        assert_eq!(cfg.get("acks"), Some("all"));
        assert_eq!(cfg.get("partitioner"), Some("murmur2_random"));
        assert_eq!(cfg.get("linger.ms"), Some("50"));
        assert_eq!(cfg.get("sasl.password"), Some("pw"));
    }

    #[test]
    fn consumer_config_turns_auto_commit_off_and_sets_isolation() {
        let f = KafkaClientFactory::new(KafkaSettings::plaintext("127.0.0.1:1"));
        let cfg = f.consumer_config("g", Isolation::ReadCommitted);
        assert_eq!(cfg.get("enable.auto.commit"), Some("false"));
        assert_eq!(cfg.get("isolation.level"), Some("read_committed"));
        assert_eq!(cfg.get("group.id"), Some("g"));
        assert_eq!(
            cfg.get("queued.max.messages.kbytes"),
            Some(CONSUMER_QUEUE_KBYTES)
        );
        assert_eq!(
            cfg.get("fetch.queue.backoff.ms"),
            Some(CONSUMER_FETCH_QUEUE_BACKOFF_MS)
        );
    }

    #[test]
    fn memory_bounds_can_be_overridden() {
        let mut s = KafkaSettings::plaintext("127.0.0.1:1");
        s.client_properties
            .insert("queued.max.messages.kbytes".into(), "65536".into());
        let f = KafkaClientFactory::new(s);
        assert_eq!(
            f.producer_config().get("queue.buffering.max.kbytes"),
            Some(PRODUCER_QUEUE_KBYTES)
        );
        assert_eq!(
            f.consumer_config("g", Isolation::ReadCommitted)
                .get("queued.max.messages.kbytes"),
            Some("65536")
        );
    }

    #[test]
    fn settings_debug_redacts_the_password() {
        let mut s = KafkaSettings::plaintext("b:1");
        s.sasl_password = Some(Secret::new("very-secret"));
        assert!(!format!("{s:?}").contains("very-secret"));
    }
}
