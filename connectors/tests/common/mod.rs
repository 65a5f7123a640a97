//! Shared helpers of the connectors' integration tests: a simulator, a config pointing at it,
//! sync requests, and the truth comparison.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use callsync_connectors::{Connectors, ConnectorsConfig, MemorySyncStore, SyncDeps, SyncStore};
use callsync_runtime::Shutdown;
use callsync_schemas::{
    decode_call_record, CallRecord, Provider, SyncMode, SyncRequest, WireFormat,
};
use callsync_simulator::{RunningSimulator, Simulator, SimulatorConfig};
use chrono::{DateTime, Utc};
use serde_json::json;

pub async fn simulator(provider: Provider, calls: u64) -> RunningSimulator {
    let config = SimulatorConfig::for_tests(7).with_accounts(provider, 1, calls);
    Simulator::start(config).await.expect("simulator starts")
}

/// A simulator whose calls change only within days of the call: no second adjustment weeks
/// later, which only a reconcile catches for providers scanned by call time (see
/// tests/realism.rs).
pub async fn simulator_without_late_changes(provider: Provider, calls: u64) -> RunningSimulator {
    let mut config = SimulatorConfig::for_tests(7).with_accounts(provider, 1, calls);
    config.lifecycle.late_adjustment_share = 0.0;
    Simulator::start(config).await.expect("simulator starts")
}

/// A connectors config with one account of `provider` on the simulator. `rate` is the
/// account's requests/min (high by default so tests are not paced).
pub fn config(
    sim: &RunningSimulator,
    provider: Provider,
    rate: f64,
    extra: serde_json::Value,
) -> (ConnectorsConfig, String) {
    let account = sim.accounts(provider)[0].clone();
    let info = sim.account_info(provider, &account).expect("account info");
    let creds = info.credentials.clone();
    let base = sim.base_url(provider);
    let tz = format!("Etc/GMT{:+}", -(info.utc_offset_minutes / 60));
    let rl = json!({"per_minute": rate, "max_concurrency": 4});
    let mut acct = match provider {
        Provider::Retreaver => {
            json!({"account": account, "api_key": creds.api_key, "company_id": account, "base_url": base})
        }
        Provider::Ringba => json!({"account": account, "token": creds.api_key, "base_url": base}),
        Provider::Invoca => {
            json!({"account": account, "role_id": account, "token": creds.api_key, "base_url": base, "time_zone": tz})
        }
        Provider::CallRail => {
            json!({"account": account, "api_key": creds.api_key, "base_url": base, "time_zone": tz})
        }
        Provider::TrackDrive => {
            json!({"account": account, "base_url": base, "public_key": creds.api_key, "private_key": creds.api_secret})
        }
    };
    acct["rate_limit"] = rl;
    if let serde_json::Value::Object(m) = extra.get("account").cloned().unwrap_or(json!({})) {
        for (k, v) in m {
            acct[k] = v;
        }
    }
    let mut cfg = json!({
        "sync": {"backfill_window_secs": 86400 * 3, "backfill_concurrency": 4, "request_timeout_secs": 5},
        "retry": {"base_delay_ms": 5, "max_delay_ms": 100, "max_attempts": 8},
        "circuit": {"failure_threshold": 50, "open_secs": 1.0},
    });
    for key in ["sync", "retry", "circuit"] {
        if let Some(serde_json::Value::Object(m)) = extra.get(key) {
            for (k, v) in m {
                cfg[key][k] = v.clone();
            }
        }
    }
    cfg[provider.as_str()] = json!([acct]);
    let config: ConnectorsConfig = serde_json::from_value(cfg).expect("config deserializes");
    (config, account)
}

pub fn deps(config: &ConnectorsConfig, store: Arc<dyn SyncStore>) -> SyncDeps {
    let shutdown = Shutdown::new();
    SyncDeps {
        connectors: Arc::new(Connectors::from_config(config, &shutdown).expect("connectors build")),
        store,
        settings: config.sync.clone(),
        wire_format: WireFormat::SingleObject,
        shutdown,
    }
}

pub fn request(
    id: &str,
    provider: Provider,
    account: &str,
    mode: SyncMode,
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
) -> SyncRequest {
    SyncRequest {
        id: id.to_string(),
        provider,
        account_id: account.to_string(),
        mode,
        window_start: start,
        window_end: end,
        requested_at: Utc::now(),
        requested_by: "test".to_string(),
        attempt: 1,
        not_before: None,
    }
}

/// A backfill of the account's whole history up to the simulator's now.
pub fn full_history(
    sim: &RunningSimulator,
    provider: Provider,
    account: &str,
    id: &str,
) -> SyncRequest {
    let info = sim.account_info(provider, account).expect("account info");
    let start = info.first_call_at - chrono::Duration::hours(1);
    let end = sim.now() + chrono::Duration::seconds(1);
    request(
        id,
        provider,
        account,
        SyncMode::Backfill,
        Some(start),
        Some(end),
    )
}

pub fn decoded(store: &MemorySyncStore) -> Vec<CallRecord> {
    store
        .snapshot()
        .records
        .iter()
        .map(|r| decode_call_record(&r.value).expect("records decode"))
        .collect()
}

/// Newest record per call key (highest version, later wins on ties).
pub fn newest(records: &[CallRecord]) -> BTreeMap<String, CallRecord> {
    let mut out: BTreeMap<String, CallRecord> = BTreeMap::new();
    for r in records {
        let k = r.key().into_string();
        match out.get(&k) {
            Some(prev) if prev.version > r.version => {}
            _ => {
                out.insert(k, r.clone());
            }
        }
    }
    out
}

/// Asserts the records equal the simulator's ground truth as of now: the same call keys, and
/// per call the same version (where the provider has one), status, revenue and payout.
pub fn assert_matches_truth(
    sim: &RunningSimulator,
    provider: Provider,
    account: &str,
    records: &[CallRecord],
) {
    let got = newest(records);
    let truth: BTreeMap<String, _> = sim
        .truth(provider, account, None)
        .expect("truth")
        .filter(|t| t.bad.is_none())
        .map(|t| (t.call_key.clone(), t))
        .collect();
    let missing: Vec<_> = truth
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !truth.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{provider}: {} truth vs {} got; missing {missing:?}, extra {extra:?}",
        truth.len(),
        got.len()
    );
    let mut mismatches = Vec::new();
    for (k, t) in &truth {
        let r = &got[k];
        if let Some(v) = t.version {
            if v != r.version {
                mismatches.push(format!("{k}: version {} != truth {v}", r.version));
            }
        }
        if t.status != r.status {
            mismatches.push(format!(
                "{k}: status {:?} ({:?}) != truth {:?} ({:?})",
                r.status, r.provider_status, t.status, t.provider_status
            ));
        }
        if t.revenue != r.revenue {
            mismatches.push(format!(
                "{k}: revenue {:?} != truth {:?}",
                r.revenue, t.revenue
            ));
        }
        if t.payout != r.payout {
            mismatches.push(format!(
                "{k}: payout {:?} != truth {:?}",
                r.payout, t.payout
            ));
        }
        // Invoca's transaction rows carry no tracking number (only virtual_line_id)
        let tracking_ok =
            provider == Provider::Invoca || Some(&t.tracking_number) == r.tracking_number.as_ref();
        if Some(&t.caller_number) != r.caller_number.as_ref() || !tracking_ok {
            mismatches.push(format!(
                "{k}: numbers {:?}/{:?} != truth {}/{}",
                r.caller_number, r.tracking_number, t.caller_number, t.tracking_number
            ));
        }
        if t.started_at != r.started_at {
            mismatches.push(format!(
                "{k}: started_at {} != truth {}",
                r.started_at, t.started_at
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{provider}: {} mismatches, e.g. {:#?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(8)]
    );
}
