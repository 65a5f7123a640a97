//! The reference read: after the run, with the simulated clock frozen and no faults, every
//! account is read once more by the connectors' own sync runner into memory (no Kafka, no
//! processor, no sink). Its newest record per call is what every column of that call's row
//! must hold: the provider's current data as the connector maps it. The simulator's ground
//! truth checks the reference in turn (see `compare`).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use callsync_connectors::store::MemorySyncStore;
use callsync_connectors::{run_sync, Connectors, ConnectorsConfig, NoProgress, SyncDeps};
use callsync_runtime::Shutdown;
use callsync_schemas::{
    decode_call_record, CallRecord, Provider, SyncMode, SyncRequest, WireFormat,
};
use chrono::{DateTime, Utc};

/// Reads every `(provider, account, window)` through `run_sync` (backfill mode) with the
/// `[connectors]` section of the run's config; returns the newest record per call key.
pub async fn read_all(
    connectors: &serde_json::Value,
    accounts: &[(Provider, String, DateTime<Utc>, DateTime<Utc>)],
) -> anyhow::Result<HashMap<String, CallRecord>> {
    let config: ConnectorsConfig = serde_json::from_value(connectors.clone())
        .context("the run's [connectors] section as ConnectorsConfig")?;
    let shutdown = Shutdown::new();
    let store = MemorySyncStore::new();
    let deps = SyncDeps {
        connectors: Arc::new(Connectors::from_config(&config, &shutdown)?),
        store: Arc::new(store.clone()),
        settings: config.sync.clone(),
        wire_format: WireFormat::SingleObject,
        shutdown,
    };
    let syncs = accounts.iter().map(|(provider, account, start, end)| {
        let request = SyncRequest {
            id: uuid::Uuid::new_v4().to_string(),
            provider: *provider,
            account_id: account.clone(),
            mode: SyncMode::Backfill,
            window_start: Some(*start),
            window_end: Some(*end),
            requested_at: Utc::now(),
            requested_by: "chaos-test reference read".into(),
            attempt: 1,
            not_before: None,
        };
        let deps = &deps;
        async move {
            run_sync(&request, deps, NoProgress)
                .await
                .with_context(|| format!("reference read of {provider} {account}"))
        }
    });
    for outcome in futures::future::join_all(syncs).await {
        outcome?;
    }
    let mut newest: HashMap<String, CallRecord> = HashMap::new();
    for out in store.snapshot().records {
        let record = decode_call_record(&out.value).context("a reference record decodes")?;
        let key = record.key().into_string();
        match newest.get(&key) {
            Some(held) if held.version > record.version => {}
            _ => {
                newest.insert(key, record);
            }
        }
    }
    Ok(newest)
}
