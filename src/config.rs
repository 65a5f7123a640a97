//! callsync's configuration: one TOML file plus `CALLSYNC__SECTION__KEY`
//! environment overrides (e.g. `CALLSYNC__KAFKA__BOOTSTRAP_SERVERS`).
//!
//! Unknown keys, wrong types and values out of range fail at startup with the key's full path:
//! every duration (`*_secs`, `*_ms`, `*_days`) anywhere in the file is at most ten years (so no
//! date arithmetic can overflow), and the HTTP sections are checked in full (tokens, secrets,
//! limits).
//!
//! An environment override is parsed like a TOML value (`4` is a number), except for secrets
//! and identifiers (keys ending in `key`, `token`, `secret`, `password`, `sha256`, `url`,
//! `username` or `_id`), which are always read as the string they are: a numeric password
//! keeps its leading zeros.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use callsync_connectors::ConnectorsConfig;
use callsync_processors::ProcessorConfig;
use callsync_runtime::{CatalogueOptions, KafkaSettings, Secret};
use callsync_sinks::SinkConfig;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::Value;
use figment::Figment;
use serde::Deserialize;

use crate::api::{ApiTokenConfig, ListenerLimits, DEFAULT_API_MAX_BODY_BYTES};
use crate::scheduler::{HealthSettings, RetryPolicy, SchedulerConfig, WorkerSettings};
use crate::secrets::{self, SecretsError};
use crate::webhooks::{kafka_message_max_bytes, WebhookConfig};

/// The environment prefix of overrides; `__` separates nested keys.
pub const ENV_PREFIX: &str = "CALLSYNC__";

/// Everything callsync reads from its config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallsyncConfig {
    pub kafka: KafkaSettings,
    #[serde(default)]
    pub topics: TopicsConfig,
    #[serde(default)]
    pub schema_registry: Option<SchemaRegistryConfig>,
    /// `[processor]`: validate + dedup (every key has a default).
    #[serde(default)]
    pub processor: ProcessorConfig,
    /// `[sink]`: the database the calls land in; required by the sink role.
    #[serde(default)]
    pub sink: Option<SinkConfig>,
    /// `[connectors]`: provider accounts, credentials, rate limits, retries, circuit breakers.
    #[serde(default)]
    pub connectors: ConnectorsConfig,
    /// `[scheduler]`: cron schedules per provider account (default: every connectors account
    /// with the default schedules).
    #[serde(default)]
    pub scheduler: SchedulerConfig,
    /// `[workers]`: the sync workers (connector role).
    #[serde(default)]
    pub workers: WorkersConfig,
    /// `[health]`: provider health checks (scheduler role).
    #[serde(default)]
    pub health: HealthConfig,
    /// `[webhooks]`: the webhook receiver (api role).
    #[serde(default)]
    pub webhooks: WebhookConfig,
    /// `[api]`: the HTTP API (api role).
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub log: LogConfig,
}

/// `[api]`: the private listener (control API, readiness, metrics) and who may call it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Listen address (default `127.0.0.1:8081`; keep it off the internet).
    #[serde(default = "default_api_listen")]
    pub listen: SocketAddr,
    /// Seconds each `/readyz` check may take (default 3).
    #[serde(default = "default_readiness_timeout_secs")]
    pub readiness_timeout_secs: u64,
    /// Seconds between consumer-lag measurements for `callsync_consumer_lag` (0: off; default 15).
    #[serde(default = "default_lag_interval_secs")]
    pub lag_interval_secs: u64,
    /// Serve `/metrics` without a token (for a Prometheus that cannot send one; default false).
    #[serde(default)]
    pub metrics_public: bool,
    /// Largest request body, bytes (default 64 KiB; 413 past it).
    #[serde(default = "default_api_max_body_bytes")]
    pub max_body_bytes: usize,
    /// The bearer tokens that may call the API (none: every call but `/healthz` answers 401).
    #[serde(default)]
    pub tokens: Vec<ApiTokenConfig>,
    /// Timeouts and connection caps of the private listener.
    #[serde(default)]
    pub limits: ListenerLimits,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: default_api_listen(),
            readiness_timeout_secs: default_readiness_timeout_secs(),
            lag_interval_secs: default_lag_interval_secs(),
            metrics_public: false,
            max_body_bytes: default_api_max_body_bytes(),
            tokens: Vec::new(),
            limits: ListenerLimits::default(),
        }
    }
}

fn default_api_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8081))
}
fn default_readiness_timeout_secs() -> u64 {
    3
}
fn default_lag_interval_secs() -> u64 {
    15
}
fn default_api_max_body_bytes() -> usize {
    DEFAULT_API_MAX_BODY_BYTES
}

impl ApiConfig {
    /// Every value out of range, as `(key under [api], problem)`.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .limits
            .problems()
            .into_iter()
            .map(|(k, p)| (format!("limits.{k}"), p))
            .collect();
        if !(1..=60).contains(&self.readiness_timeout_secs) {
            out.push((
                "readiness_timeout_secs".into(),
                format!(
                    "must be 1 to 60 seconds, not {}",
                    self.readiness_timeout_secs
                ),
            ));
        }
        if !(1..=16 * 1024 * 1024).contains(&self.max_body_bytes) {
            out.push((
                "max_body_bytes".into(),
                format!("must be 1 to 16777216, not {}", self.max_body_bytes),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, token) in self.tokens.iter().enumerate() {
            for (key, problem) in token.problems() {
                out.push((format!("tokens[{i}].{key}"), problem));
            }
            if !names.insert(token.name.trim().to_string()) {
                out.push((
                    format!("tokens[{i}].name"),
                    format!("{:?} is used by another token", token.name),
                ));
            }
        }
        out
    }
}

/// `[workers]`: the consumer group that runs sync requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkersConfig {
    /// Consumer group of the workers.
    pub group_id: String,
    /// Syncs running at once per process.
    pub max_concurrent: usize,
    /// Delay before the first retry of a failed sync, seconds.
    pub retry_initial_delay_secs: u64,
    /// Each further failure multiplies the delay by this.
    pub retry_multiplier: u32,
    /// The retry delay never grows past this, seconds.
    pub retry_max_delay_secs: u64,
    /// Attempts in all, the first included.
    pub max_attempts: i32,
    /// A running sync with no event for this long is taken as abandoned, seconds.
    pub claim_ttl_secs: u64,
    /// Requests held in memory before the worker stops reading more.
    pub max_waiting: usize,
    /// How long a starting worker waits to read `callsync.sync-events` to its end, seconds.
    pub catch_up_timeout_secs: u64,
}

impl Default for WorkersConfig {
    fn default() -> Self {
        let d = WorkerSettings::default();
        WorkersConfig {
            group_id: d.group_id,
            max_concurrent: d.max_concurrent,
            retry_initial_delay_secs: d.retry.initial_delay.as_secs(),
            retry_multiplier: d.retry.multiplier,
            retry_max_delay_secs: d.retry.max_delay.as_secs(),
            max_attempts: d.retry.max_attempts,
            claim_ttl_secs: d.claim_ttl.as_secs(),
            max_waiting: d.max_waiting,
            catch_up_timeout_secs: 30,
        }
    }
}

impl WorkersConfig {
    pub fn settings(&self) -> WorkerSettings {
        WorkerSettings {
            group_id: self.group_id.clone(),
            max_concurrent: self.max_concurrent.max(1),
            retry: RetryPolicy {
                initial_delay: Duration::from_secs(self.retry_initial_delay_secs),
                multiplier: self.retry_multiplier.max(1),
                max_delay: Duration::from_secs(self.retry_max_delay_secs),
                max_attempts: self.max_attempts.max(1),
            },
            claim_ttl: Duration::from_secs(self.claim_ttl_secs),
            max_waiting: self.max_waiting.max(1),
        }
    }
}

/// `[health]`: a cheap authenticated call per provider account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Seconds between rounds of probes.
    pub interval_secs: u64,
    /// A probe taking longer fails, seconds.
    pub probe_timeout_secs: u64,
    /// Failed probes in a row that disable an account.
    pub failures_to_disable: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        let d = HealthSettings::default();
        HealthConfig {
            interval_secs: d.interval.as_secs(),
            probe_timeout_secs: d.probe_timeout.as_secs(),
            failures_to_disable: d.failures_to_disable,
        }
    }
}

impl HealthConfig {
    pub fn settings(&self) -> HealthSettings {
        HealthSettings {
            interval: Duration::from_secs(self.interval_secs.max(1)),
            probe_timeout: Duration::from_secs(self.probe_timeout_secs.max(1)),
            failures_to_disable: self.failures_to_disable.max(1),
        }
    }
}

/// `[topics]`: partitioning and retention of the topics callsync creates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    #[serde(default = "default_call_partitions")]
    pub call_partitions: i32,
    #[serde(default = "default_calls_retention_days")]
    pub calls_retention_days: u64,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            call_partitions: default_call_partitions(),
            calls_retention_days: default_calls_retention_days(),
        }
    }
}

fn default_call_partitions() -> i32 {
    12
}

fn default_calls_retention_days() -> u64 {
    30
}

impl TopicsConfig {
    pub fn catalogue_options(&self) -> CatalogueOptions {
        CatalogueOptions {
            call_partitions: self.call_partitions,
            calls_retention_days: self.calls_retention_days,
        }
    }
}

/// `[schema_registry]`: when set, values use the Confluent wire format.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaRegistryConfig {
    pub url: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
}

/// `[log]`: tracing output.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// An env-filter directive, e.g. `info,callsync=debug`.
    #[serde(default = "default_log_filter")]
    pub filter: String,
    /// `text` or `json`.
    #[serde(default = "default_log_format")]
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            filter: default_log_filter(),
            format: default_log_format(),
        }
    }
}

fn default_log_filter() -> String {
    "info".to_string()
}

fn default_log_format() -> LogFormat {
    LogFormat::Text
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path} does not exist")]
    FileMissing { path: PathBuf },
    /// figment's message names the key path (e.g. `kafka.bootstrap_servers`) and
    /// the source (file or environment variable).
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// An `enc:` value could not be decrypted (the message never carries the value).
    #[error("invalid configuration: key `{key}`: {source}")]
    Secret {
        key: String,
        #[source]
        source: SecretsError,
    },
}

impl CallsyncConfig {
    /// Load `path` (if given), then apply `CALLSYNC__*` environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(path, Env::prefixed(ENV_PREFIX).split("__"))
    }

    /// Like [`CallsyncConfig::load`] with an explicit environment provider (tests).
    pub fn load_with_env(path: Option<&Path>, env: Env) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = path {
            if !path.exists() {
                return Err(ConfigError::FileMissing {
                    path: path.to_path_buf(),
                });
            }
            figment = figment.merge(Toml::file(path));
        }
        let secret_env = env.clone().filter(|key| is_verbatim_key(key.as_str()));
        figment = figment.merge(env.filter(|key| !is_verbatim_key(key.as_str())));
        for (key, value) in secret_env.iter() {
            figment = figment.merge(VerbatimEnv {
                key: key.as_str().to_string(),
                value,
            });
        }
        let figment = resolve_encrypted(figment)?;
        Self::checked(figment)
    }

    /// Extracts the typed config and checks every value's range.
    fn checked(figment: Figment) -> Result<Self, ConfigError> {
        let mut problems = match figment.extract::<Value>() {
            Ok(root) => duration_problems(&root),
            Err(_) => Vec::new(),
        };
        let config: CallsyncConfig = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(describe(e)))?;
        problems.extend(config.problems());
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(
                problems
                    .into_iter()
                    .map(|(key, problem)| format!("key `{key}`: {problem}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            ))
        }
    }

    /// Every value out of range in the HTTP sections, as `(full key, problem)`.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .api
            .problems()
            .into_iter()
            .map(|(k, p)| (format!("api.{k}"), p))
            .collect();
        out.extend(
            self.webhooks
                .problems(kafka_message_max_bytes(&self.kafka))
                .into_iter()
                .map(|(k, p)| (format!("webhooks.{k}"), p)),
        );
        if self.api.listen.port() != 0 && self.api.listen == self.webhooks.listen {
            out.push((
                "api.listen".into(),
                format!(
                    "{} is also `webhooks.listen`: the control API and the public webhook \
                     listener need addresses of their own",
                    self.api.listen
                ),
            ));
        }
        out
    }

    /// Builds a config from serde values (the demo and tests), with the same checks.
    pub fn from_value(value: &serde_json::Value) -> Result<Self, ConfigError> {
        let figment = Figment::new().merge(Serialized::defaults(value));
        let figment = resolve_encrypted(figment)?;
        Self::checked(figment)
    }

    /// Built-in defaults for `callsync demo`: a broker at `bootstrap_servers`.
    pub fn embedded(bootstrap_servers: &str) -> Result<Self, ConfigError> {
        Figment::new()
            .merge(Serialized::default(
                "kafka.bootstrap_servers",
                bootstrap_servers,
            ))
            .extract()
            .map_err(|e| ConfigError::Invalid(describe(e)))
    }
}

/// Environment overrides taken verbatim as strings (secrets and identifiers): the last
/// segment of the dotted key ends in one of these.
const VERBATIM_KEY_ENDINGS: [&str; 8] = [
    "key", "token", "secret", "password", "sha256", "url", "username", "_id",
];

/// One environment override kept as the string it is (see [`VERBATIM_KEY_ENDINGS`]); its
/// errors name the variable like those of figment's `Env`.
struct VerbatimEnv {
    key: String,
    value: String,
}

impl figment::Provider for VerbatimEnv {
    fn metadata(&self) -> figment::Metadata {
        // no source: `describe` names the environment variable
        figment::Metadata::named("environment variable")
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let nested = figment::util::nest(&self.key, Value::from(self.value.clone()));
        let dict = nested.into_dict().unwrap_or_default();
        Ok(figment::Profile::Default.collect(dict))
    }
}

fn is_verbatim_key(dotted: &str) -> bool {
    let last = dotted
        .rsplit('.')
        .next()
        .unwrap_or(dotted)
        .to_ascii_lowercase();
    VERBATIM_KEY_ENDINGS.iter().any(|end| last.ends_with(end))
}

/// The largest duration any key may hold: ten years.
const MAX_DURATION_SECS: f64 = 10.0 * 365.0 * 86_400.0;

/// Every duration key (`*_secs`, `*_seconds`, `*_ms`, `*_days`) of the tree that is negative,
/// not a finite number, or longer than ten years.
fn duration_problems(root: &Value) -> Vec<(String, String)> {
    fn walk(value: &Value, path: &str, out: &mut Vec<(String, String)>) {
        match value {
            Value::Dict(_, dict) => {
                for (k, v) in dict {
                    let child = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    if let Some(unit_secs) = duration_unit_secs(k) {
                        if let Some(problem) = duration_problem(v, unit_secs) {
                            out.push((child.clone(), problem));
                        }
                    }
                    walk(v, &child, out);
                }
            }
            Value::Array(_, items) => {
                for (i, v) in items.iter().enumerate() {
                    walk(v, &format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(root, "", &mut out);
    out
}

/// Seconds per unit of a duration key, from its suffix.
fn duration_unit_secs(key: &str) -> Option<f64> {
    let key = key.to_ascii_lowercase();
    if key.ends_with("_secs") || key.ends_with("_seconds") {
        Some(1.0)
    } else if key.ends_with("_ms") {
        Some(0.001)
    } else if key.ends_with("_days") {
        Some(86_400.0)
    } else {
        None
    }
}

fn duration_problem(value: &Value, unit_secs: f64) -> Option<String> {
    let amount = match value {
        Value::Num(_, n) => n
            .to_f64()
            .or_else(|| n.to_u128().map(|v| v as f64))
            .or_else(|| n.to_i128().map(|v| v as f64))?,
        _ => return None, // the typed extract names a wrong type
    };
    if !amount.is_finite() || amount < 0.0 {
        return Some(format!("must be a non-negative number, not {amount}"));
    }
    if amount * unit_secs > MAX_DURATION_SECS {
        return Some(format!(
            "{amount} is longer than ten years ({} in this key's unit)",
            (MAX_DURATION_SECS / unit_secs).floor()
        ));
    }
    None
}

/// Replaces every `enc:` string of the merged config by its plaintext (key from
/// `CALLSYNC_SECRET_KEY`), so every `Secret` field of every section may be stored encrypted.
/// A value that cannot be decrypted fails naming its key; the key is only needed when an
/// `enc:` value is present.
fn resolve_encrypted(figment: Figment) -> Result<Figment, ConfigError> {
    // a config that does not even extract as a tree reports its error in the typed extract
    let Ok(root) = figment.extract::<Value>() else {
        return Ok(figment);
    };
    let mut anchors: Vec<Vec<String>> = Vec::new();
    find_encrypted(&root, &mut Vec::new(), &mut anchors);
    if anchors.is_empty() {
        return Ok(figment);
    }
    anchors.dedup();
    let mut figment = figment;
    for anchor in anchors {
        let dotted = anchor.join(".");
        let Some(value) = root.find_ref(&dotted) else {
            continue;
        };
        let resolved = resolve_tree(value, &dotted)?;
        figment = figment.merge(Serialized::default(&dotted, resolved));
    }
    Ok(figment)
}

/// Collects the dict path of each `enc:` string, cut at the first array (figment paths cannot
/// index arrays: the whole array is replaced).
fn find_encrypted(value: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match value {
        Value::String(_, s) if secrets::is_encrypted(s) => out.push(path.clone()),
        Value::Dict(_, dict) => {
            for (k, v) in dict {
                path.push(k.clone());
                find_encrypted(v, path, out);
                path.pop();
            }
        }
        Value::Array(_, items) => {
            let mut inner = Vec::new();
            for item in items {
                find_encrypted(item, &mut Vec::new(), &mut inner);
            }
            if !inner.is_empty() {
                out.push(path.clone());
            }
        }
        _ => {}
    }
}

fn resolve_tree(value: &Value, path: &str) -> Result<Value, ConfigError> {
    Ok(match value {
        Value::String(tag, s) if secrets::is_encrypted(s) => {
            let plain = secrets::resolve(s).map_err(|source| ConfigError::Secret {
                key: path.to_string(),
                source,
            })?;
            Value::String(*tag, plain.expose().to_string())
        }
        Value::Dict(tag, dict) => {
            let mut out = figment::value::Dict::new();
            for (k, v) in dict {
                out.insert(k.clone(), resolve_tree(v, &format!("{path}.{k}"))?);
            }
            Value::Dict(*tag, out)
        }
        Value::Array(tag, items) => Value::Array(
            *tag,
            items
                .iter()
                .enumerate()
                .map(|(i, v)| resolve_tree(v, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        other => other.clone(),
    })
}

/// All of figment's errors, one per line, each naming its key path and where
/// the value came from (file or environment variable).
fn describe(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| {
            let path = if e.path.is_empty() {
                String::new()
            } else {
                format!("key `{}`: ", e.path.join("."))
            };
            let source = match &e.metadata {
                Some(md) => match &md.source {
                    Some(figment::Source::File(file)) => format!(" (in {})", file.display()),
                    Some(src) => format!(" (from {src})"),
                    // our only source without a file: the CALLSYNC__ environment
                    None => format!(
                        " (from environment variable {ENV_PREFIX}{})",
                        e.path.join("__").to_uppercase()
                    ),
                },
                None => String::new(),
            };
            format!("{path}{}{source}", e.kind)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail closures return figment::Error
mod tests {
    use super::*;
    use std::io::Write;

    fn write(contents: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(contents.as_bytes()).unwrap();
        f
    }

    fn no_env() -> Env {
        Env::prefixed("CALLSYNC_TEST_NEVER_SET__").split("__")
    }

    #[test]
    fn a_missing_required_key_is_named() {
        let f = write("[topics]\ncall_partitions = 3\n");
        let err = CallsyncConfig::load_with_env(Some(f.path()), no_env()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("kafka"), "{msg}");
        assert!(msg.contains("missing field"), "{msg}");
    }

    #[test]
    fn a_nested_missing_key_is_named_with_its_path() {
        let f = write("[kafka]\ntopic_prefix = \"x.\"\n");
        let msg = CallsyncConfig::load_with_env(Some(f.path()), no_env())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("bootstrap_servers"), "{msg}");
    }

    #[test]
    fn a_wrong_type_and_an_unknown_key_are_named() {
        let f =
            write("[kafka]\nbootstrap_servers = \"b:1\"\n[topics]\ncall_partitions = \"many\"\n");
        let msg = CallsyncConfig::load_with_env(Some(f.path()), no_env())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("key `topics.call_partitions`"), "{msg}");

        let f = write("[kafka]\nbootstrap_servers = \"b:1\"\nbootstrap_sevrers = \"typo\"\n");
        let msg = CallsyncConfig::load_with_env(Some(f.path()), no_env())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("bootstrap_sevrers"), "{msg}");
    }

    #[test]
    fn environment_overrides_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[kafka]\nbootstrap_servers = \"file:1\"\n")?;
            jail.set_env("CALLSYNC__KAFKA__BOOTSTRAP_SERVERS", "env:2");
            jail.set_env("CALLSYNC__TOPICS__CALL_PARTITIONS", "4");
            let cfg = CallsyncConfig::load(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(cfg.kafka.bootstrap_servers, "env:2");
            assert_eq!(cfg.topics.call_partitions, 4);
            Ok(())
        });
    }

    #[test]
    fn numeric_looking_secrets_from_the_environment_stay_strings() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                "[kafka]\nbootstrap_servers = \"b:1\"\n[sink]\ndatabase_url = \"sqlite::memory:\"\n",
            )?;
            // figment would read these as numbers: 123, 1000 and 7 (no leading zeros)
            jail.set_env("CALLSYNC__KAFKA__SASL_PASSWORD", "000123");
            jail.set_env("CALLSYNC__KAFKA__SASL_USERNAME", "1e3");
            jail.set_env("CALLSYNC__SCHEMA_REGISTRY__URL", "http://r:8081");
            jail.set_env("CALLSYNC__SCHEMA_REGISTRY__PASSWORD", "007");
            jail.set_env("CALLSYNC__PROCESSOR__GROUP_ID", "42");
            // and numbers where numbers belong still are numbers
            jail.set_env("CALLSYNC__TOPICS__CALL_PARTITIONS", "6");
            let cfg = CallsyncConfig::load(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(
                cfg.kafka.sasl_password.as_ref().map(|s| s.expose()),
                Some("000123")
            );
            assert_eq!(cfg.kafka.sasl_username.as_deref(), Some("1e3"));
            let registry = cfg.schema_registry.as_ref().ok_or("registry")?;
            assert_eq!(registry.password.as_ref().map(|s| s.expose()), Some("007"));
            assert_eq!(cfg.processor.group_id, "42");
            assert_eq!(cfg.topics.call_partitions, 6);
            Ok(())
        });
    }

    #[test]
    fn api_tokens_can_come_from_the_environment() {
        // what a container without a config file sets (docs/security.md)
        figment::Jail::expect_with(|jail| {
            let sha = crate::api::auth::token_sha256_hex("env-token-0123456789abcdef0123456789");
            jail.set_env("CALLSYNC__KAFKA__BOOTSTRAP_SERVERS", "kafka:9092");
            jail.set_env(
                "CALLSYNC__API__TOKENS",
                format!("[{{name=\"ops\",sha256=\"{sha}\",scopes=[\"read\",\"operate\"]}}]"),
            );
            jail.set_env("CALLSYNC__API__LISTEN", "0.0.0.0:8081");
            jail.set_env("CALLSYNC__WEBHOOKS__LISTEN", "0.0.0.0:8080");
            let cfg = CallsyncConfig::load(None).map_err(|e| e.to_string())?;
            assert_eq!(cfg.api.tokens.len(), 1);
            assert_eq!(cfg.api.tokens[0].sha256.as_deref(), Some(sha.as_str()));
            assert_eq!(cfg.webhooks.listen.to_string(), "0.0.0.0:8080");
            Ok(())
        });
    }

    #[test]
    fn durations_past_ten_years_and_bad_floats_are_named() {
        let f = write(
            "[kafka]\nbootstrap_servers = \"b:1\"\n\
             [connectors.sync]\nlookback_secs = 9223372036854775807\nfull_window_days = 4000000000\n\
             [connectors.circuit]\nopen_secs = nan\n\
             [scheduler]\ncatch_up_secs = 99999999999\n",
        );
        let msg = CallsyncConfig::load_with_env(Some(f.path()), no_env())
            .unwrap_err()
            .to_string();
        for key in [
            "connectors.sync.lookback_secs",
            "connectors.sync.full_window_days",
            "connectors.circuit.open_secs",
            "scheduler.catch_up_secs",
        ] {
            assert!(msg.contains(&format!("key `{key}`")), "{key}: {msg}");
        }
    }

    #[test]
    fn http_sections_are_checked_at_startup() {
        let f = write(
            "[kafka]\nbootstrap_servers = \"b:1\"\n\
             [api]\nlisten = \"127.0.0.1:8080\"\n\
             [[api.tokens]]\nname = \"ops\"\ntoken = \"tiny-tok\"\nscopes = [\"read\"]\n\
             [api.limits]\nheader_read_timeout_secs = 0\n\
             [webhooks]\nlisten = \"127.0.0.1:8080\"\n\
             [[webhooks.accounts]]\nprovider = \"ringba\"\naccount_id = \"R1\"\nmethod = \"token\"\ntoken = \"\"\n",
        );
        let msg = CallsyncConfig::load_with_env(Some(f.path()), no_env())
            .unwrap_err()
            .to_string();
        for key in [
            "api.tokens[0].token",
            "api.limits.header_read_timeout_secs",
            "webhooks.accounts[0].token",
            "api.listen",
        ] {
            assert!(msg.contains(&format!("key `{key}`")), "{key}: {msg}");
        }
        assert!(
            !msg.contains("tiny-tok"),
            "the value of a secret is never printed: {msg}"
        );
    }

    #[test]
    fn a_missing_file_is_named() {
        let msg =
            CallsyncConfig::load_with_env(Some(Path::new("/nonexistent/callsync.toml")), no_env())
                .unwrap_err()
                .to_string();
        assert!(msg.contains("/nonexistent/callsync.toml"), "{msg}");
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let f = write(
            "[kafka]\nbootstrap_servers = \"b:1\"\nsasl_password = \"kafka-pw\"\n[sink]\ndatabase_url = \"postgres://u:pg-pw@h/db\"\n",
        );
        let cfg = CallsyncConfig::load_with_env(Some(f.path()), no_env()).unwrap();
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("kafka-pw") && !dbg.contains("pg-pw"), "{dbg}");
    }

    #[test]
    fn the_example_config_parses_and_builds() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("callsync.example.toml");
        let cfg = CallsyncConfig::load_with_env(Some(&path), no_env()).unwrap();
        assert_eq!(cfg.api.listen.to_string(), "127.0.0.1:8081");
        assert_eq!(cfg.webhooks.listen.to_string(), "127.0.0.1:8080");
        // no token ships with the example: a copied example keeps the control API closed
        assert!(cfg.api.tokens.is_empty());
        assert_eq!(cfg.connectors.retreaver.len(), 1);
        assert_eq!(cfg.webhooks.accounts.len(), 3);
        assert_eq!(cfg.workers.settings().max_concurrent, 3);
        assert!(!cfg.scheduler.schedules().unwrap().is_empty());
        // every account builds a client
        let shutdown = callsync_runtime::Shutdown::new();
        callsync_connectors::Connectors::from_config(&cfg.connectors, &shutdown).unwrap();
    }

    /// The configuration block of README.md, as written, loads and keeps the control API
    /// private and the webhook listener public.
    #[test]
    fn the_readme_config_block_loads_as_written() {
        let readme = include_str!("../README.md");
        let blocks = callsync_testkit::markdown::code_blocks(readme, "toml");
        assert_eq!(blocks.len(), 1, "README.md's toml blocks: {blocks:?}");
        let f = write(&blocks[0].1);
        let cfg = CallsyncConfig::load_with_env(Some(f.path()), no_env()).unwrap();
        assert_eq!(cfg.webhooks.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(cfg.api.listen.to_string(), "127.0.0.1:8081");
        assert!(cfg.api.tokens.is_empty());
        assert_eq!(cfg.topics.call_partitions, 12);
    }

    #[test]
    fn encrypted_values_are_decrypted_and_a_bad_one_is_named() {
        const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
        let key = crate::secrets::SecretKey::from_base64(KEY).unwrap();
        let db = key.encrypt("postgres://u:pg-pw@h/db").unwrap();
        let api = key.encrypt("retreaver-key").unwrap();
        let hook = key.encrypt("hook-secret-0123456789").unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env(crate::secrets::SECRET_KEY_ENV, KEY);
            jail.create_file(
                "c.toml",
                &format!(
                    "[kafka]\nbootstrap_servers = \"b:1\"\n[sink]\ndatabase_url = \"{db}\"\n\
                     [[connectors.retreaver]]\naccount = \"1\"\napi_key = \"{api}\"\n\
                     [[webhooks.accounts]]\nprovider = \"retreaver\"\naccount_id = \"1\"\nmethod = \"hmac_sha256\"\nsecret = \"{hook}\"\n"
                ),
            )?;
            let cfg = CallsyncConfig::load(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
            let sink = cfg.sink.as_ref().ok_or("sink")?;
            assert_eq!(sink.database_url.expose(), "postgres://u:pg-pw@h/db");
            assert_eq!(
                cfg.connectors.retreaver[0].api_key.expose(),
                "retreaver-key"
            );
            let dbg = format!("{:?}", cfg.webhooks.accounts[0]);
            assert!(!dbg.contains("hook-secret"), "{dbg}");
            let (_, secret) = cfg.webhooks.accounts[0].auth.secret();
            assert_eq!(secret.expose(), "hook-secret-0123456789");

            // an enc: value that does not decrypt fails naming its key, not its value
            jail.set_env(
                "CALLSYNC__SINK__DATABASE_URL",
                "enc:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            );
            let msg = CallsyncConfig::load(Some(Path::new("c.toml")))
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(msg.contains("sink.database_url"), "{msg}");
            assert!(!msg.contains("AAAA"), "{msg}");

            // without the key, an enc: value fails naming the key variable
            jail.set_env(crate::secrets::SECRET_KEY_ENV, "");
            let msg = CallsyncConfig::load(Some(Path::new("c.toml")))
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(msg.contains("CALLSYNC_SECRET_KEY"), "{msg}");
            Ok(())
        });
    }
}
