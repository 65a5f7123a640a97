//! The reference read: after the run, with the simulated clock frozen and no faults, every
//! account is read once more by the connectors' own sync runner into memory (no Kafka, no
//! processor, no sink). Its records of a call merged as the sink merges them (in
//! (version, fingerprint) order, a partial record updating the fields it carries) are what
//! every column of that call's row must hold: the provider's current data as the connector maps it. The simulator's ground
//! truth checks the reference in turn (see `compare`).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use callsync_connectors::store::MemorySyncStore;
use callsync_connectors::{run_sync, Connectors, ConnectorsConfig, NoProgress, SyncDeps};
use callsync_runtime::Shutdown;
use callsync_schemas::{
    decode_call_record, CallRecord, Precedence, Provider, SyncMode, SyncRequest, WireFormat,
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
    // every record of a call, applied in precedence order as the sink applies them (an
    // Invoca call row and its conversion rows are partial records of one call)
    let mut by_key: HashMap<String, Vec<CallRecord>> = HashMap::new();
    for out in store.snapshot().records {
        let record = decode_call_record(&out.value).context("a reference record decodes")?;
        by_key
            .entry(record.key().into_string())
            .or_default()
            .push(record);
    }
    let mut newest: HashMap<String, CallRecord> = HashMap::with_capacity(by_key.len());
    for (key, mut records) in by_key {
        records.sort_by_key(Precedence::of);
        let mut records = records.into_iter();
        let Some(mut merged) = records.next() else {
            continue;
        };
        for record in records {
            if Precedence::of(&record) > Precedence::of(&merged) {
                merged.apply(&record);
            }
        }
        newest.insert(key, merged);
    }
    Ok(newest)
}
