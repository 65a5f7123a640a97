//! The topic catalogue (the design's topic table) and `callsync topics ensure`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, ConfigResourceResult, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use crate::kafka::{ClientError, KafkaClientFactory, KafkaSettings};

/// Base names of callsync's topics (before the configured prefix).
pub mod names {
    pub const CALLS_RAW: &str = "calls.raw";
    pub const CALLS: &str = "calls";
    pub const CALLS_DLQ: &str = "calls.dlq";
    pub const DEDUP_STATE: &str = "callsync.dedup-state";
    pub const SOURCE_OFFSETS: &str = "callsync.source-offsets";
    pub const SYNC_REQUESTS: &str = "callsync.sync-requests";
    pub const SYNC_EVENTS: &str = "callsync.sync-events";
}

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// One topic as callsync wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Full name, prefix included.
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub configs: BTreeMap<String, String>,
}

/// Settings that change the catalogue.
#[derive(Debug, Clone)]
pub struct CatalogueOptions {
    /// Partitions of `calls.raw`, `calls`, `calls.dlq` and the dedup state (all equal,
    /// so they stay co-partitioned).
    pub call_partitions: i32,
    /// Retention of the `calls` topic in days.
    pub calls_retention_days: u64,
}

impl Default for CatalogueOptions {
    fn default() -> Self {
        CatalogueOptions {
            call_partitions: 12,
            calls_retention_days: 30,
        }
    }
}

/// Every topic callsync uses, with its partition count and configs.
#[derive(Debug, Clone)]
pub struct TopicCatalogue {
    topics: Vec<TopicSpec>,
}

impl TopicCatalogue {
    pub fn new(kafka: &KafkaSettings, options: &CatalogueOptions) -> Self {
        let rf = kafka.replication_factor;
        let p = options.call_partitions;
        let spec = |base: &str, partitions: i32, configs: &[(&str, String)]| TopicSpec {
            name: kafka.topic(base),
            partitions,
            replication_factor: rf,
            configs: configs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        };
        let delete = |days: u64| {
            vec![
                ("cleanup.policy", "delete".to_string()),
                ("retention.ms", (days * DAY_MS).to_string()),
            ]
        };
        let topics = vec![
            spec(names::CALLS_RAW, p, &delete(7)),
            spec(names::CALLS, p, &delete(options.calls_retention_days)),
            spec(names::CALLS_DLQ, p, &delete(30)),
            spec(
                names::DEDUP_STATE,
                p,
                &[
                    ("cleanup.policy", "compact".to_string()),
                    ("min.cleanable.dirty.ratio", "0.1".to_string()),
                    ("delete.retention.ms", DAY_MS.to_string()),
                ],
            ),
            spec(
                names::SOURCE_OFFSETS,
                3,
                &[("cleanup.policy", "compact".to_string())],
            ),
            spec(names::SYNC_REQUESTS, 6, &delete(7)),
            spec(
                names::SYNC_EVENTS,
                3,
                &[
                    ("cleanup.policy", "compact,delete".to_string()),
                    ("retention.ms", (7 * DAY_MS).to_string()),
                ],
            ),
        ];
        TopicCatalogue { topics }
    }

    pub fn topics(&self) -> &[TopicSpec] {
        &self.topics
    }

    pub fn get(&self, full_name: &str) -> Option<&TopicSpec> {
        self.topics.iter().find(|t| t.name == full_name)
    }
}

/// What `ensure` found for one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicStatus {
    Created,
    UpToDate,
    /// The topic exists but differs; callsync does not change existing topics.
    Differs(Vec<TopicDifference>),
}

/// One way an existing topic differs from the catalogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicDifference {
    Partitions {
        expected: i32,
        actual: i32,
    },
    Config {
        key: String,
        expected: String,
        actual: Option<String>,
    },
}

impl fmt::Display for TopicDifference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicDifference::Partitions { expected, actual } => {
                write!(f, "partitions: expected {expected}, found {actual}")
            }
            TopicDifference::Config {
                key,
                expected,
                actual,
            } => match actual {
                Some(a) => write!(f, "{key}: expected {expected}, found {a}"),
                None => write!(f, "{key}: expected {expected}, not set"),
            },
        }
    }
}

/// The result of `ensure` for every topic of the catalogue.
#[derive(Debug, Clone)]
pub struct EnsureReport {
    pub topics: Vec<(String, TopicStatus)>,
}

impl EnsureReport {
    pub fn created(&self) -> usize {
        self.topics
            .iter()
            .filter(|(_, s)| *s == TopicStatus::Created)
            .count()
    }

    pub fn differing(&self) -> usize {
        self.topics
            .iter()
            .filter(|(_, s)| matches!(s, TopicStatus::Differs(_)))
            .count()
    }
}

impl fmt::Display for EnsureReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, status) in &self.topics {
            match status {
                TopicStatus::Created => writeln!(f, "created     {name}")?,
                TopicStatus::UpToDate => writeln!(f, "ok          {name}")?,
                TopicStatus::Differs(diffs) => {
                    writeln!(f, "DIFFERS     {name}")?;
                    for d in diffs {
                        writeln!(f, "              {d}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// `topics ensure` failed.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error(transparent)]
    Admin(#[from] ClientError),
    #[error("cannot reach the cluster to read its metadata: {0}")]
    Metadata(#[source] rdkafka::error::KafkaError),
    #[error("creating topic {topic}: {source}")]
    Create {
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("creating topic {topic}: broker answered {code}")]
    CreateRejected {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("topic {topic} was created but did not show in the metadata with all partitions within {timeout:?}")]
    NotVisible { topic: String, timeout: Duration },
    #[error("describing configs of topic {topic}: {message}")]
    Describe { topic: String, message: String },
}

/// [`ensure_topics`] for the catalogue of `factory`'s settings (its topic prefix included),
/// through an admin client of that factory.
pub async fn ensure_catalogue(
    factory: &KafkaClientFactory,
    options: &CatalogueOptions,
    timeout: Duration,
) -> Result<EnsureReport, TopicError> {
    let catalogue = TopicCatalogue::new(factory.settings(), options);
    ensure_topics(&factory.admin()?, &catalogue, timeout).await
}

/// Create every missing topic of the catalogue and report how existing ones differ.
pub async fn ensure_topics(
    admin: &AdminClient<DefaultClientContext>,
    catalogue: &TopicCatalogue,
    timeout: Duration,
) -> Result<EnsureReport, TopicError> {
    let metadata = admin
        .inner()
        .fetch_metadata(None, timeout)
        .map_err(TopicError::Metadata)?;
    let existing: BTreeMap<String, i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name().to_string(), t.partitions().len() as i32))
        .collect();

    let opts = AdminOptions::new().operation_timeout(Some(timeout));
    let mut report = Vec::new();
    for spec in catalogue.topics() {
        match existing.get(&spec.name) {
            None => {
                let mut new = NewTopic::new(
                    &spec.name,
                    spec.partitions,
                    TopicReplication::Fixed(spec.replication_factor),
                );
                for (k, v) in &spec.configs {
                    new = new.set(k, v);
                }
                let results = admin.create_topics([&new], &opts).await.map_err(|source| {
                    TopicError::Create {
                        topic: spec.name.clone(),
                        source,
                    }
                })?;
                for result in results {
                    match result {
                        Ok(_) => {}
                        // another replica created it between our metadata read and now
                        Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((topic, code)) => {
                            return Err(TopicError::CreateRejected { topic, code })
                        }
                    }
                }
                report.push((spec.name.clone(), TopicStatus::Created));
            }
            Some(&actual_partitions) => {
                let mut diffs = Vec::new();
                if actual_partitions != spec.partitions {
                    diffs.push(TopicDifference::Partitions {
                        expected: spec.partitions,
                        actual: actual_partitions,
                    });
                }
                diffs.extend(config_differences(admin, spec, &opts).await?);
                let status = if diffs.is_empty() {
                    TopicStatus::UpToDate
                } else {
                    TopicStatus::Differs(diffs)
                };
                report.push((spec.name.clone(), status));
            }
        }
    }
    let created: Vec<&TopicSpec> = catalogue
        .topics()
        .iter()
        .filter(|spec| {
            report
                .iter()
                .any(|(name, s)| *name == spec.name && *s == TopicStatus::Created)
        })
        .collect();
    wait_until_visible(admin, &created, timeout).await?;
    Ok(EnsureReport { topics: report })
}

/// Wait until every created topic shows in the cluster metadata with all its
/// partitions, so that stages started right after `ensure` find them.
async fn wait_until_visible(
    admin: &AdminClient<DefaultClientContext>,
    created: &[&TopicSpec],
    timeout: Duration,
) -> Result<(), TopicError> {
    let deadline = std::time::Instant::now() + timeout;
    for spec in created {
        loop {
            let metadata = admin
                .inner()
                .fetch_metadata(Some(&spec.name), timeout)
                .map_err(TopicError::Metadata)?;
            let ready = metadata.topics().iter().any(|t| {
                t.error().is_none()
                    && t.partitions().len() as i32 == spec.partitions
                    && t.partitions().iter().all(|p| p.leader() >= 0)
            });
            if ready {
                break;
            }
            if std::time::Instant::now() >= deadline {
                return Err(TopicError::NotVisible {
                    topic: spec.name.clone(),
                    timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

async fn config_differences(
    admin: &AdminClient<DefaultClientContext>,
    spec: &TopicSpec,
    opts: &AdminOptions,
) -> Result<Vec<TopicDifference>, TopicError> {
    let describe_err = |message: String| TopicError::Describe {
        topic: spec.name.clone(),
        message,
    };
    let results: Vec<ConfigResourceResult> = admin
        .describe_configs([&ResourceSpecifier::Topic(&spec.name)], opts)
        .await
        .map_err(|e| describe_err(e.to_string()))?;
    let mut diffs = Vec::new();
    for result in results {
        let resource = result.map_err(|code| describe_err(code.to_string()))?;
        for (key, expected) in &spec.configs {
            let actual = resource.get(key).and_then(|entry| entry.value.clone());
            if actual.as_deref() != Some(expected.as_str()) {
                diffs.push(TopicDifference::Config {
                    key: key.clone(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
    }
    Ok(diffs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_matches_the_design_table() {
        let mut kafka = KafkaSettings::plaintext("x:1");
        kafka.topic_prefix = "prod.".into();
        let cat = TopicCatalogue::new(&kafka, &CatalogueOptions::default());
        let names: Vec<_> = cat.topics().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "prod.calls.raw",
                "prod.calls",
                "prod.calls.dlq",
                "prod.callsync.dedup-state",
                "prod.callsync.source-offsets",
                "prod.callsync.sync-requests",
                "prod.callsync.sync-events"
            ]
        );
        let raw = cat.get("prod.calls.raw").unwrap();
        let state = cat.get("prod.callsync.dedup-state").unwrap();
        assert_eq!(raw.partitions, 12);
        assert_eq!(
            state.partitions, raw.partitions,
            "dedup state is co-partitioned with calls.raw"
        );
        assert_eq!(state.configs["cleanup.policy"], "compact");
        assert_eq!(raw.configs["retention.ms"], (7 * DAY_MS).to_string());
        assert_eq!(
            cat.get("prod.calls").unwrap().configs["retention.ms"],
            (30 * DAY_MS).to_string()
        );
        assert_eq!(
            cat.get("prod.callsync.sync-requests").unwrap().partitions,
            6
        );
        assert_eq!(
            cat.get("prod.callsync.sync-events").unwrap().configs["cleanup.policy"],
            "compact,delete"
        );
    }
}
