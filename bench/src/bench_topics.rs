//! The topics a benchmark leaves behind, deleted when it ends.
//!
//! Every benchmark creates its topics under a prefix of its own (`bench-...`) and the broker is
//! the shared one of the tests: a 1M-record benchmark leaves gigabytes, and a broker holding
//! thousands of old partitions (compacting the old changelogs meanwhile) is slower for the next
//! benchmark. The names present before the benchmark are kept whatever their prefix, so only
//! what this run created goes.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context;
use callsync_runtime::{KafkaClientFactory, KafkaSettings};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;

/// Prefix shared by every benchmark's topics.
const BENCH_PREFIX: &str = "bench-";

fn admin(bootstrap: &str) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    KafkaClientFactory::new(KafkaSettings::plaintext(bootstrap))
        .admin()
        .with_context(|| format!("creating an admin client for {bootstrap}"))
}

fn topic_names(admin: &AdminClient<DefaultClientContext>) -> anyhow::Result<BTreeSet<String>> {
    let metadata = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(30))
        .context("listing the broker's topics")?;
    Ok(metadata
        .topics()
        .iter()
        .map(|t| t.name().to_string())
        .collect())
}

/// The broker's topics before a benchmark.
pub struct TopicsBefore {
    bootstrap: String,
    names: BTreeSet<String>,
}

impl TopicsBefore {
    pub fn snapshot(bootstrap: &str) -> anyhow::Result<Self> {
        Ok(TopicsBefore {
            bootstrap: bootstrap.to_string(),
            names: topic_names(&admin(bootstrap)?)?,
        })
    }

    /// Delete the `bench-` topics created since the snapshot; returns how many.
    pub async fn delete_created(&self) -> anyhow::Result<usize> {
        let admin = admin(&self.bootstrap)?;
        let created: Vec<String> = topic_names(&admin)?
            .into_iter()
            .filter(|name| name.starts_with(BENCH_PREFIX) && !self.names.contains(name))
            .collect();
        if created.is_empty() {
            return Ok(0);
        }
        let names: Vec<&str> = created.iter().map(String::as_str).collect();
        let results = admin
            .delete_topics(
                &names,
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(60))),
            )
            .await
            .context("deleting the benchmark's topics")?;
        let mut deleted = 0;
        for result in results {
            match result {
                Ok(_) => deleted += 1,
                Err((topic, code)) => eprintln!("bench: could not delete topic {topic}: {code}"),
            }
        }
        Ok(deleted)
    }
}
