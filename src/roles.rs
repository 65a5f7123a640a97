//! `callsync run --roles ...`: each role is a task under one shutdown signal.
//!
//! Every role scales by adding processes with the same config (they join the
//! same consumer group). When one role fails, the others are asked to drain
//! and stop, and the error is returned.

use std::fmt;

use anyhow::Context;
use callsync_runtime::{KafkaClientFactory, Shutdown};
use tokio::task::JoinSet;

use crate::config::CallsyncConfig;

/// A part of callsync that can run in a process of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Role {
    /// Validate + dedup: `calls.raw` -> `calls` (exactly once).
    Processor,
    /// Batch-upsert `calls` into Postgres (or SQLite), offsets in the same transaction.
    Sink,
}

impl Role {
    pub const ALL: [Role; 2] = [Role::Processor, Role::Sink];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Processor => "processor",
            Role::Sink => "sink",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Run `roles` until `shutdown` is triggered or one of them fails.
pub async fn run_roles(config: &CallsyncConfig, roles: &[Role], shutdown: Shutdown) -> anyhow::Result<()> {
    // Check every role's config before starting any, so a bad key fails at startup.
    if roles.contains(&Role::Sink) && config.sink.is_none() {
        anyhow::bail!("the sink role needs the `sink.database_url` key (set CALLSYNC__SINK__DATABASE_URL or [sink] database_url)");
    }
    let factory = KafkaClientFactory::new(config.kafka.clone());
    let mut tasks: JoinSet<(Role, anyhow::Result<()>)> = JoinSet::new();
    for &role in roles {
        let shutdown = shutdown.clone();
        let factory = factory.clone();
        let config = config.clone();
        tasks.spawn(async move {
            let result = run_role(role, &config, factory, shutdown).await;
            (role, result)
        });
        tracing::info!(role = %role, "role started");
    }

    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((role, Ok(()))) => tracing::info!(role = %role, "role stopped"),
            Ok((role, Err(e))) => {
                tracing::error!(role = %role, error = %format!("{e:#}"), "role failed; stopping the others");
                shutdown.trigger();
                first_error.get_or_insert(e.context(format!("role {role} failed")));
            }
            Err(join_error) => {
                shutdown.trigger();
                first_error.get_or_insert(anyhow::anyhow!("a role task panicked: {join_error}"));
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn run_role(role: Role, config: &CallsyncConfig, factory: KafkaClientFactory, shutdown: Shutdown) -> anyhow::Result<()> {
    match role {
        Role::Processor => {
            let report = callsync_processors::run_processor(config.processor.clone(), factory, shutdown)
                .await
                .context("processor")?;
            tracing::info!(?report, "processor finished");
        }
        Role::Sink => {
            let sink_config = config
                .sink
                .clone()
                .context("the sink role needs the `sink.database_url` key")?;
            let store = callsync_sinks::connect_store(&sink_config)
                .await
                .context("connecting the sink's store")?;
            let report = callsync_sinks::run_sink(sink_config, factory, store, shutdown)
                .await
                .context("sink")?;
            tracing::info!(?report, "sink finished");
        }
    }
    Ok(())
}
