//! callsync's configuration: one TOML file plus `CALLSYNC__SECTION__KEY`
//! environment overrides (e.g. `CALLSYNC__KAFKA__BOOTSTRAP_SERVERS`).
//!
//! Unknown keys and wrong types fail at startup with the key's full path.

use std::path::{Path, PathBuf};

use callsync_processors::ProcessorConfig;
use callsync_runtime::{CatalogueOptions, KafkaSettings, Secret};
use callsync_sinks::SinkConfig;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::Deserialize;

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
    #[serde(default)]
    pub log: LogConfig,
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
        figment = figment.merge(env);
        figment
            .extract()
            .map_err(|e| ConfigError::Invalid(describe(e)))
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
}
