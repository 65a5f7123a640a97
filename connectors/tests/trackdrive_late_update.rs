//! TrackDrive late changes: a backfill, then simulated hours pass (late conversions, revenue
//! adjustments), then an incremental sync over the same calls. Regression for seed 5's chaos
//! run, where call 12131 ended in Postgres at its "completed" version: its revenue
//! adjustment was exactly 100 %, a newer `updated_at` with the same content, which the
//! processor drops as unchanged (design: emit only when newer *and* different).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use callsync_connectors::{run_sync, MemorySyncStore, NoProgress};
use callsync_schemas::{CallRecord, Provider, SyncMode};
use callsync_simulator::{AccountConfig, Simulator, SimulatorConfig, Stage};
use chrono::Utc;
use common::*;
use serde_json::json;

/// The chaos run's settings (tests/chaos.rs: 100,000 calls over 5 providers).
const SEED: u64 = 5;
const CALLS: u64 = 20_000;
const LATE_HOURS: u64 = 2;
const HISTORY_DAYS: u64 = 3;
const SUSPECT: u64 = 12_131;

/// What the processor's fingerprint sees of the fields a late change touches.
fn content(r: &CallRecord) -> String {
    format!(
        "{:?} {:?} {:?} {:?}",
        r.status, r.converted, r.revenue, r.payout
    )
}

#[tokio::test]
async fn trackdrive_late_revenue_adjustment_is_a_new_content_version() {
    let provider = Provider::TrackDrive;
    let mut sim_config = SimulatorConfig::for_tests(SEED);
    sim_config.clock.start =
        Utc::now() - chrono::Duration::hours(LATE_HOURS as i64) - chrono::Duration::minutes(1);
    sim_config.clock.speed = 0.0;
    sim_config.provider_mut(provider).accounts = vec![AccountConfig {
        calls: CALLS,
        future_calls: CALLS / 20,
        history_secs: HISTORY_DAYS * 86_400,
        bad_record_share: 0.0005,
        ..AccountConfig::with_calls(CALLS)
    }];
    let sim = Simulator::start(sim_config).await.expect("simulator");
    let (config, account) = config(&sim, provider, 600_000.0, json!({}));
    let store = MemorySyncStore::new();
    let deps = deps(&config, Arc::new(store.clone()));

    // the calls created within an hour of the suspect, before and after the late hours
    let suspect = sim
        .truth_of_call(provider, &account, SUSPECT, None)
        .expect("truth")
        .expect("the suspect exists");
    assert_eq!(suspect.stage, Stage::Completed);
    let start = suspect.started_at - chrono::Duration::hours(1);
    let end = suspect.started_at + chrono::Duration::hours(1);
    let window = |id: &str, mode| request(id, provider, &account, mode, Some(start), Some(end));
    run_sync(&window("bf", SyncMode::Backfill), &deps, NoProgress)
        .await
        .expect("backfill");
    let backfilled = newest(&decoded(&store));

    sim.clock().advance(Duration::from_secs(LATE_HOURS * 3600));
    let adjusted = sim
        .truth_of_call(provider, &account, SUSPECT, None)
        .expect("truth")
        .expect("the suspect exists");
    assert_eq!(adjusted.stage, Stage::RevenueAdjusted);
    run_sync(&window("inc", SyncMode::Incremental), &deps, NoProgress)
        .await
        .expect("incremental");
    let latest = newest(&decoded(&store));

    // the connector reads the adjusted version
    let read = &latest[&suspect.call_key];
    assert_eq!(Some(read.version), adjusted.version, "call {SUSPECT}");
    assert_eq!(read.revenue, adjusted.revenue, "call {SUSPECT}");
    // every newer version differs in content, or the processor would drop it
    let mut changed = BTreeMap::new();
    for (key, before) in &backfilled {
        let after = &latest[key];
        if after.version > before.version {
            assert_ne!(
                content(before),
                content(after),
                "{key}: version {} -> {} without a change of content",
                before.version,
                after.version
            );
            changed.insert(key.clone(), after.version);
        }
    }
    assert!(changed.contains_key(&suspect.call_key));
}
