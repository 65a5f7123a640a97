//! The processor's settings: the `[processor]` section of callsync's config.
//!
//! Every field has a default, unknown keys are rejected, and
//! [`ProcessorConfig::check`] names the key of a value that cannot work.

use std::time::Duration;

use callsync_runtime::{names, TransactionalId};
use serde::Deserialize;

/// What every processor transactional id starts with (after the topic prefix).
const TRANSACTIONAL_ID_BASE: &str = "callsync-processor";

/// How strictly phone numbers are checked after they are parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhoneCheck {
    /// The number must match a numbering plan's patterns for a real range
    /// (libphonenumber's `isValidNumber`).
    Valid,
    /// The number must parse to a country code and a national number of a
    /// plausible length; fictional ranges such as 555-01xx pass.
    Parseable,
}

/// Settings of the validate + dedup processor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorConfig {
    /// Unset (the default): every process gets a transactional id of its own
    /// (`{topic_prefix}callsync-processor-{host}-{pid}-{random}`), so any number of processes
    /// share one config; zombies are fenced by the consumer group's generation (KIP-447).
    /// Set: a stable identity for static membership: the transactional id
    /// `{topic_prefix}callsync-processor-{instance_id}` and the consumer's `group.instance.id`,
    /// so a restarted instance fences its predecessor and takes its partitions back at once.
    /// It must then be unique among running instances.
    pub instance_id: Option<String>,
    /// The consumer group of all processor instances.
    pub group_id: String,
    /// Base names (the Kafka topic prefix is added) of the topics read and written.
    pub input_topic: String,
    pub output_topic: String,
    pub dlq_topic: String,
    pub state_topic: String,
    /// A batch (one transaction) closes at this many input records (at ~100,000 records/s,
    /// ~200 ms of a catch-up; live traffic closes its batches by time long before) ...
    pub batch_max_records: usize,
    /// ... or this long after its first record, whichever comes first; and at once when
    /// the input has nothing more to read (a poll of 20 ms returns nothing).
    pub batch_max_time_ms: u64,
    /// While the input is behind (the batch's newest record was written to the input topic
    /// more than `catch_up_after_ms` before it was read), a batch stays open up to this long
    /// instead of `batch_max_time_ms` (never less than it; still closing at `batch_max_records`
    /// or when the input runs dry). Those records are late already; fewer, bigger transactions drain the backlog
    /// faster (each commit costs a few round trips to the broker whatever its size).
    pub catch_up_batch_max_time_ms: u64,
    /// How old (by its Kafka timestamp) a record must be when read for the input to count as
    /// behind. Producers' clocks skewed by more than this only change batch sizes.
    pub catch_up_after_ms: u64,
    /// Dedup entries not seen for this long expire and get a tombstone (default 35 days).
    pub dedup_ttl_secs: u64,
    /// How often the state of each partition is swept for expired entries.
    pub ttl_sweep_interval_secs: u64,
    /// Timeout of `init_transactions`, `send_offsets_to_transaction` and `commit_transaction`.
    pub commit_timeout_secs: u64,
    /// `transaction.timeout.ms` of the producer: how long the broker lets a transaction stay
    /// open before aborting it. A killed process's open transaction is never aborted by a
    /// successor (ids are not reused), so this bounds how long read_committed readers of its
    /// partitions (the sink, the next owner's state restore) wait behind it.
    pub transaction_timeout_ms: u64,
    /// Longest wait for a partition's dedup state to be read back from its changelog.
    pub restore_timeout_secs: u64,
    /// Region (ISO 3166 alpha-2) for phone numbers written without a country code.
    pub default_phone_region: String,
    /// How strictly phone numbers are checked. Default `parseable`: caller and tracking
    /// numbers come from the telephone network, and libphonenumber's range metadata lags new
    /// number ranges, so `valid` can reject real calls (and costs ~10x more CPU).
    pub phone_check: PhoneCheck,
    /// Timestamps later than now plus this are rejected as in the far future.
    pub max_future_skew_secs: u64,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        ProcessorConfig {
            instance_id: None,
            group_id: "callsync-processor".to_string(),
            input_topic: names::CALLS_RAW.to_string(),
            output_topic: names::CALLS.to_string(),
            dlq_topic: names::CALLS_DLQ.to_string(),
            state_topic: names::DEDUP_STATE.to_string(),
            batch_max_records: 20_000,
            batch_max_time_ms: 50,
            catch_up_batch_max_time_ms: 200,
            catch_up_after_ms: 1_000,
            dedup_ttl_secs: 35 * 24 * 60 * 60,
            ttl_sweep_interval_secs: 60,
            commit_timeout_secs: 30,
            transaction_timeout_ms: 10_000,
            restore_timeout_secs: 300,
            default_phone_region: "US".to_string(),
            phone_check: PhoneCheck::Parseable,
            max_future_skew_secs: 24 * 60 * 60,
        }
    }
}

/// A processor setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid processor setting {key} = {value:?}: {reason}")]
pub struct ConfigError {
    /// The key under `[processor]`.
    pub key: &'static str,
    pub value: String,
    pub reason: &'static str,
}

impl ProcessorConfig {
    /// Check values serde cannot: empty names, zero limits, unknown regions.
    pub fn check(&self) -> Result<(), ConfigError> {
        let err = |key: &'static str, value: &dyn ToString, reason: &'static str| ConfigError {
            key,
            value: value.to_string(),
            reason,
        };
        if let Some(instance) = &self.instance_id {
            if instance.trim().is_empty() {
                return Err(err("instance_id", instance, "must not be empty when set"));
            }
        }
        let names = [
            ("group_id", &self.group_id),
            ("input_topic", &self.input_topic),
            ("output_topic", &self.output_topic),
            ("dlq_topic", &self.dlq_topic),
            ("state_topic", &self.state_topic),
        ];
        for (key, value) in names {
            if value.trim().is_empty() {
                return Err(err(key, value, "must not be empty"));
            }
        }
        if self.batch_max_records == 0 {
            return Err(err(
                "batch_max_records",
                &self.batch_max_records,
                "must be at least 1",
            ));
        }
        if self.batch_max_time_ms == 0 {
            return Err(err(
                "batch_max_time_ms",
                &self.batch_max_time_ms,
                "must be at least 1",
            ));
        }
        if self.dedup_ttl_secs == 0 {
            return Err(err(
                "dedup_ttl_secs",
                &self.dedup_ttl_secs,
                "must be at least 1",
            ));
        }
        if self.commit_timeout_secs == 0 {
            return Err(err(
                "commit_timeout_secs",
                &self.commit_timeout_secs,
                "must be at least 1",
            ));
        }
        // a batch stays open up to `catch_up_batch_max_time_ms`, then commits
        if self.transaction_timeout_ms < 1_000
            || self.transaction_timeout_ms <= self.catch_up_batch_max_time_ms
        {
            return Err(err(
                "transaction_timeout_ms",
                &self.transaction_timeout_ms,
                "must be at least 1000 and longer than catch_up_batch_max_time_ms",
            ));
        }
        if self.restore_timeout_secs == 0 {
            return Err(err(
                "restore_timeout_secs",
                &self.restore_timeout_secs,
                "must be at least 1",
            ));
        }
        if crate::normalize::phone_region(&self.default_phone_region).is_none() {
            return Err(err(
                "default_phone_region",
                &self.default_phone_region,
                "not an ISO 3166 alpha-2 region known to libphonenumber (e.g. US, GB)",
            ));
        }
        Ok(())
    }

    /// The transactional id of a new run: stable with `instance_id`, else unique to this run.
    pub fn transactional_id(&self, topic_prefix: &str) -> TransactionalId {
        match &self.instance_id {
            Some(instance) => {
                TransactionalId::stable(topic_prefix, TRANSACTIONAL_ID_BASE, instance)
            }
            None => TransactionalId::per_process(topic_prefix, TRANSACTIONAL_ID_BASE),
        }
    }

    /// `group.instance.id` of the consumer: only with a configured `instance_id`.
    pub fn group_instance_id(&self, topic_prefix: &str) -> Option<String> {
        self.instance_id
            .as_ref()
            .map(|instance| format!("{topic_prefix}{TRANSACTIONAL_ID_BASE}-{instance}"))
    }

    pub fn transaction_timeout(&self) -> Duration {
        Duration::from_millis(self.transaction_timeout_ms)
    }

    pub fn batch_max_time(&self) -> Duration {
        Duration::from_millis(self.batch_max_time_ms)
    }

    /// `catch_up_batch_max_time_ms`, never less than `batch_max_time_ms`.
    pub fn catch_up_batch_max_time(&self) -> Duration {
        Duration::from_millis(self.catch_up_batch_max_time_ms.max(self.batch_max_time_ms))
    }

    pub fn catch_up_after(&self) -> Duration {
        Duration::from_millis(self.catch_up_after_ms)
    }

    pub fn dedup_ttl(&self) -> Duration {
        Duration::from_secs(self.dedup_ttl_secs)
    }

    pub fn ttl_sweep_interval(&self) -> Duration {
        Duration::from_secs(self.ttl_sweep_interval_secs)
    }

    pub fn commit_timeout(&self) -> Duration {
        Duration::from_secs(self.commit_timeout_secs)
    }

    pub fn restore_timeout(&self) -> Duration {
        Duration::from_secs(self.restore_timeout_secs)
    }

    pub fn max_future_skew(&self) -> Duration {
        Duration::from_secs(self.max_future_skew_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catch_up_batch_time_is_never_shorter_than_the_batch_time() {
        let cfg: ProcessorConfig =
            toml::from_str("batch_max_time_ms = 300\ncatch_up_batch_max_time_ms = 200").unwrap();
        assert_eq!(cfg.catch_up_batch_max_time(), Duration::from_millis(300));
        let cfg: ProcessorConfig = toml::from_str("catch_up_batch_max_time_ms = 400").unwrap();
        assert_eq!(cfg.catch_up_batch_max_time(), Duration::from_millis(400));
    }

    #[test]
    fn an_empty_section_gives_the_defaults() {
        let cfg: ProcessorConfig = toml::from_str("").unwrap();
        assert_eq!(cfg.dedup_ttl_secs, 35 * 86_400);
        assert_eq!(cfg.input_topic, "calls.raw");
        assert_eq!(cfg.state_topic, "callsync.dedup-state");
        assert_eq!(cfg.phone_check, PhoneCheck::Parseable);
        cfg.check().unwrap();
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let err = toml::from_str::<ProcessorConfig>("batch_max_recs = 5").unwrap_err();
        assert!(err.to_string().contains("batch_max_recs"), "{err}");
    }

    #[test]
    fn values_that_cannot_work_name_their_key() {
        let cfg: ProcessorConfig = toml::from_str("batch_max_records = 0").unwrap();
        assert_eq!(cfg.check().unwrap_err().key, "batch_max_records");
        let cfg: ProcessorConfig = toml::from_str("default_phone_region = \"XX\"").unwrap();
        let err = cfg.check().unwrap_err();
        assert_eq!(err.key, "default_phone_region");
        assert!(err.to_string().contains("\"XX\""), "{err}");
        let cfg: ProcessorConfig = toml::from_str("instance_id = \" \"").unwrap();
        assert_eq!(cfg.check().unwrap_err().key, "instance_id");
        let cfg: ProcessorConfig = toml::from_str("transaction_timeout_ms = 100").unwrap();
        assert_eq!(cfg.check().unwrap_err().key, "transaction_timeout_ms");
    }

    #[test]
    fn transactional_id_is_stable_per_configured_instance() {
        let cfg: ProcessorConfig = toml::from_str("instance_id = \"p-2\"").unwrap();
        assert_eq!(
            cfg.transactional_id("prod.").as_str(),
            "prod.callsync-processor-p-2"
        );
        assert_eq!(cfg.transactional_id("prod."), cfg.transactional_id("prod."));
        assert_eq!(
            cfg.group_instance_id("prod.").as_deref(),
            Some("prod.callsync-processor-p-2")
        );
    }

    #[test]
    fn without_an_instance_every_run_gets_its_own_transactional_id() {
        // one config shared by any number of processes: no two runs may fence each other
        let cfg: ProcessorConfig = toml::from_str("").unwrap();
        let a = cfg.transactional_id("prod.");
        let b = cfg.transactional_id("prod.");
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("prod.callsync-processor-"), "{a}");
        assert_eq!(cfg.group_instance_id("prod."), None, "dynamic membership");
        assert_eq!(cfg.transaction_timeout(), Duration::from_secs(10));
    }
}
