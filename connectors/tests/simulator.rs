//! Client and runner tests against the provider simulator (no Kafka: the in-memory store has
//! the same page atomicity).

mod common;

use std::sync::Arc;
use std::time::Duration;

use callsync_connectors::{run_sync, CircuitState, MemorySyncStore, NoProgress, SyncError};
use callsync_schemas::{Provider, SyncMode};
use callsync_simulator::{FaultConfig, RateLimitRule};
use common::*;
use serde_json::json;

async fn backfill_equals_truth(provider: Provider, calls: u64) {
    let sim = simulator(provider, calls).await;
    let (config, account) = config(&sim, provider, 60_000.0, json!({}));
    let store = MemorySyncStore::new();
    let deps = deps(&config, Arc::new(store.clone()));
    let req = full_history(&sim, provider, &account, "bf-1");
    let out = run_sync(&req, &deps, NoProgress)
        .await
        .expect("backfill completes");
    let records = decoded(&store);
    assert_eq!(out.records as usize, records.len());
    assert_eq!(out.dlq, 0, "no bad records in this data set");
    assert_matches_truth(&sim, provider, &account, &records);
    // every call version exactly once: windows do not overlap
    let versions: std::collections::BTreeSet<_> =
        records.iter().map(|r| (r.key(), r.version)).collect();
    assert_eq!(
        versions.len(),
        records.len(),
        "{provider}: duplicates across windows"
    );
}

#[tokio::test]
async fn retreaver_backfill_equals_truth() {
    backfill_equals_truth(Provider::Retreaver, 10_000).await;
}

#[tokio::test]
async fn ringba_backfill_equals_truth() {
    backfill_equals_truth(Provider::Ringba, 10_000).await;
}

#[tokio::test]
async fn invoca_backfill_equals_truth() {
    backfill_equals_truth(Provider::Invoca, 10_000).await;
}

#[tokio::test]
async fn callrail_backfill_equals_truth() {
    backfill_equals_truth(Provider::CallRail, 10_000).await;
}

#[tokio::test]
async fn trackdrive_backfill_equals_truth() {
    backfill_equals_truth(Provider::TrackDrive, 10_000).await;
}

#[tokio::test]
async fn rejected_credentials_fail_at_once_naming_provider_and_account() {
    let sim = simulator(Provider::Ringba, 200).await;
    let (config, account) = config(
        &sim,
        Provider::Ringba,
        60_000.0,
        json!({"account": {"token": "wrong"}}),
    );
    let deps = deps(&config, Arc::new(MemorySyncStore::new()));
    let err = run_sync(
        &full_history(&sim, Provider::Ringba, &account, "auth"),
        &deps,
        NoProgress,
    )
    .await
    .expect_err("401 fails the sync");
    assert!(err.is_auth(), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("ringba") && msg.contains(&account), "{msg}");
    let stats = sim.all_stats();
    let requests: u64 = stats
        .iter()
        .filter(|s| s.provider == Provider::Ringba)
        .map(|s| s.requests)
        .sum();
    assert!(
        requests <= 4,
        "no retries after 401 (at most one request per concurrent window): {requests}"
    );
}

#[tokio::test]
async fn server_errors_timeouts_and_malformed_pages_are_retried_and_nothing_is_lost() {
    let provider = Provider::TrackDrive;
    let sim = simulator(provider, 3_000).await;
    let (config, account) = config(
        &sim,
        provider,
        60_000.0,
        json!({"sync": {"request_timeout_secs": 1}}),
    );
    sim.set_faults(
        provider,
        None,
        FaultConfig {
            server_error_share: 0.2,
            timeout_share: 0.03,
            hang_secs: 5,
            truncated_share: 0.03,
            malformed_share: 0.03,
            ..FaultConfig::default()
        },
    )
    .expect("faults set");
    let store = MemorySyncStore::new();
    let deps = deps(&config, Arc::new(store.clone()));
    let out = run_sync(
        &full_history(&sim, provider, &account, "faults"),
        &deps,
        NoProgress,
    )
    .await
    .expect("completes despite faults");
    let stats = sim.stats(provider, &account).expect("stats");
    assert!(stats.server_errors > 0, "faults were injected: {stats:?}");
    assert_eq!(out.dlq, 0);
    assert_matches_truth(&sim, provider, &account, &decoded(&store));
}

#[tokio::test]
async fn a_malformed_page_that_never_heals_fails_the_sync_clearly() {
    let provider = Provider::Retreaver;
    let sim = simulator(provider, 300).await;
    let (config, account) = config(
        &sim,
        provider,
        60_000.0,
        json!({"retry": {"max_attempts": 3}}),
    );
    sim.set_faults(
        provider,
        None,
        FaultConfig {
            malformed_share: 1.0,
            ..FaultConfig::default()
        },
    )
    .expect("faults");
    let store = MemorySyncStore::new();
    let deps = deps(&config, Arc::new(store.clone()));
    let err = run_sync(
        &full_history(&sim, provider, &account, "malformed"),
        &deps,
        NoProgress,
    )
    .await
    .expect_err("fails");
    let msg = err.to_string();
    assert!(
        msg.contains("malformed page") && msg.contains("after 3 attempts"),
        "{msg}"
    );
    assert!(
        !msg.contains(&sim.credentials(provider, &account).unwrap().api_key),
        "no secret in errors: {msg}"
    );
    assert!(
        store.snapshot().records.is_empty(),
        "nothing committed from a broken page"
    );
}

#[tokio::test]
async fn rate_limit_429_with_retry_after_is_honoured_and_the_sync_completes() {
    let provider = Provider::Retreaver;
    let sim = simulator(provider, 2_000).await;
    // the provider allows 10 requests per 2 s; we are configured far above it and adapt
    sim.set_rate_limits(provider, vec![RateLimitRule::new(10, 2)], true)
        .expect("limits");
    let (config, account) = config(
        &sim,
        provider,
        6_000.0,
        json!({"account": {"per_page": 50}, "sync": {"backfill_concurrency": 1}}),
    );
    let store = MemorySyncStore::new();
    let deps = deps(&config, Arc::new(store.clone()));
    let started = std::time::Instant::now();
    let out = run_sync(
        &full_history(&sim, provider, &account, "rl"),
        &deps,
        NoProgress,
    )
    .await
    .expect("completes through 429s");
    let elapsed = started.elapsed().as_secs_f64();
    let stats = sim.stats(provider, &account).expect("stats");
    assert!(stats.rate_limited >= 1, "the limit was hit: {stats:?}");
    // each 429 paused everyone until the window reset: at most one 429 per window elapsed
    let windows = (elapsed / 2.0).ceil() as u64 + 1;
    assert!(
        stats.rate_limited <= windows,
        "{} 429s in {windows} windows: Retry-After not honoured",
        stats.rate_limited
    );
    assert_eq!(out.rate_limited, stats.rate_limited);
    assert_matches_truth(&sim, provider, &account, &decoded(&store));
}

#[tokio::test]
async fn circuit_opens_after_repeated_failures_and_half_opens_later() {
    let provider = Provider::CallRail;
    let sim = simulator(provider, 300).await;
    let (config, account) = config(
        &sim,
        provider,
        60_000.0,
        json!({"circuit": {"failure_threshold": 3, "open_secs": 0.5}, "retry": {"max_attempts": 10}}),
    );
    sim.set_faults(
        provider,
        None,
        FaultConfig {
            server_error_share: 1.0,
            ..FaultConfig::default()
        },
    )
    .expect("faults");
    let store = MemorySyncStore::new();
    let deps = deps(&config, Arc::new(store.clone()));
    let req = full_history(&sim, provider, &account, "cb");
    let err = run_sync(&req, &deps, NoProgress)
        .await
        .expect_err("provider down");
    assert!(
        matches!(
            err,
            SyncError::Client(callsync_connectors::ClientError::CircuitOpen { .. })
        ),
        "{err}"
    );
    let health = deps.connectors.health();
    assert_eq!(health[0].circuit, CircuitState::Open);
    assert!(!health[0].healthy);
    let requests = sim.stats(provider, &account).expect("stats").requests;
    assert!(
        requests <= 3 + 4,
        "the open circuit stops requests: {requests}"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(deps.connectors.health()[0].circuit, CircuitState::HalfOpen);
    sim.reset_faults();
    let out = run_sync(&req, &deps, NoProgress).await.expect("recovers");
    assert_eq!(deps.connectors.health()[0].circuit, CircuitState::Closed);
    assert!(out.records > 0);
    assert_matches_truth(&sim, provider, &account, &decoded(&store));
}

#[tokio::test]
async fn incremental_picks_up_late_changes_and_invoca_corrections_win() {
    for provider in [Provider::Retreaver, Provider::Invoca, Provider::TrackDrive] {
        // changes weeks after the call are past TrackDrive's incremental lookback by design:
        // the reconcile catches them (tests/realism.rs)
        let sim = simulator_without_late_changes(provider, 2_000).await;
        let (config, account) = config(
            &sim,
            provider,
            60_000.0,
            json!({"sync": {"lookback_secs": 600, "initial_incremental_secs": 40 * 86400},
                   "account": {"rate_limit": {"per_minute": 60000.0, "min_incremental_interval_secs": 0}}}),
        );
        let store = MemorySyncStore::new();
        let deps = deps(&config, Arc::new(store.clone()));
        let first = request(
            "inc-1",
            provider,
            &account,
            SyncMode::Incremental,
            None,
            Some(sim.now()),
        );
        run_sync(&first, &deps, NoProgress)
            .await
            .expect("first incremental");
        assert_matches_truth(&sim, provider, &account, &decoded(&store));
        // two simulated days pass: conversions are posted, revenue adjusted, corrections made
        sim.clock().advance(Duration::from_secs(2 * 86_400));
        let second = request(
            "inc-2",
            provider,
            &account,
            SyncMode::Incremental,
            None,
            Some(sim.now() + chrono::Duration::seconds(1)),
        );
        let out = run_sync(&second, &deps, NoProgress)
            .await
            .expect("second incremental");
        assert!(out.records > 0, "{provider}: changes found");
        assert_matches_truth(&sim, provider, &account, &decoded(&store));
    }
}

#[tokio::test]
async fn full_sync_rereads_the_trailing_window() {
    let provider = Provider::Ringba;
    let sim = simulator(provider, 2_000).await;
    let (config, account) = config(
        &sim,
        provider,
        60_000.0,
        json!({"sync": {"full_window_days": 40}}),
    );
    let store = MemorySyncStore::new();
    let deps = deps(&config, Arc::new(store.clone()));
    let end = sim.now() + chrono::Duration::seconds(1);
    run_sync(
        &request(
            "full-1",
            provider,
            &account,
            SyncMode::Full,
            None,
            Some(end),
        ),
        &deps,
        NoProgress,
    )
    .await
    .expect("full");
    sim.clock().advance(Duration::from_secs(2 * 86_400));
    let end = sim.now() + chrono::Duration::seconds(1);
    run_sync(
        &request(
            "full-2",
            provider,
            &account,
            SyncMode::Full,
            None,
            Some(end),
        ),
        &deps,
        NoProgress,
    )
    .await
    .expect("full again");
    // Ringba has no update time: the later observation wins
    assert_matches_truth(&sim, provider, &account, &decoded(&store));
}

#[tokio::test]
async fn a_backfill_failing_between_pages_resumes_without_duplicates_or_gaps() {
    let provider = Provider::Retreaver;
    let sim = simulator(provider, 3_000).await;
    let (final_config, account) = config(
        &sim,
        provider,
        60_000.0,
        json!({"account": {"per_page": 25}}),
    );
    let store = MemorySyncStore::new();
    let req = full_history(&sim, provider, &account, "resume-1");
    // each attempt cuts its new windows differently: resuming must not depend on the sizes
    for (fail_after, window_secs, pages) in [
        (7u64, 86_400, 2),
        (13, 3 * 86_400, 5),
        (29, 7 * 86_400, 100),
    ] {
        let (attempt_config, _) = config(
            &sim,
            provider,
            60_000.0,
            json!({"account": {"per_page": 25}, "sync": {"backfill_window_secs": window_secs, "backfill_pages_per_window": pages}}),
        );
        let attempt = deps(&attempt_config, Arc::new(store.clone()));
        store.fail_after(Some(fail_after));
        let err = run_sync(&req, &attempt, NoProgress).await;
        assert!(err.is_err(), "injected failure");
    }
    let deps = deps(&final_config, Arc::new(store.clone()));
    store.fail_after(None);
    let out = run_sync(&req, &deps, NoProgress)
        .await
        .expect("resumed run completes");
    assert!(
        out.windows_already_done > 0,
        "windows done earlier are skipped"
    );
    let records = decoded(&store);
    assert_eq!(newest(&records).len(), records.len(), "no duplicates");
    assert_matches_truth(&sim, provider, &account, &records);
}

#[tokio::test]
async fn progress_events_every_thousand_records_plus_started_and_completed() {
    let provider = Provider::Ringba;
    let sim = simulator(provider, 3_500).await;
    let (config, account) = config(&sim, provider, 60_000.0, json!({}));
    let store = MemorySyncStore::new();
    let deps = deps(&config, Arc::new(store.clone()));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    run_sync(
        &full_history(&sim, provider, &account, "prog"),
        &deps,
        move |p: &callsync_connectors::Progress| {
            s2.lock().unwrap().push(p.clone());
        },
    )
    .await
    .expect("sync");
    let events: Vec<_> = store
        .snapshot()
        .events
        .iter()
        .map(|e| {
            let ev: callsync_schemas::SyncEvent = callsync_schemas::RecordDecoder::new()
                .decode(&e.value)
                .expect("event decodes");
            ev.kind
        })
        .collect();
    use callsync_schemas::SyncEventKind::*;
    assert_eq!(events.first(), Some(&Started));
    assert_eq!(events.last(), Some(&Completed));
    assert_eq!(
        events.iter().filter(|k| **k == Progress).count(),
        3,
        "{events:?}"
    );
    let seen = seen.lock().unwrap();
    assert!(seen.len() > 3 && seen.last().unwrap().records >= 3_500);
}

/// A short run of the connector benchmark: the simulator enforces 300 requests/min in fixed
/// 60 s windows. Asserted: zero 429s and never above the ceiling. The share reached is
/// printed, not asserted (targets are measured by the release bench, never as timed tests;
/// alone on this 2-core box a debug build reaches ~96%).
#[tokio::test]
async fn benchmark_reaches_the_rate_limit_ceiling_without_429s() {
    let provider = Provider::Retreaver;
    let sim = simulator(provider, 60_000).await;
    sim.set_rate_limits(provider, vec![RateLimitRule::new(300, 60)], false)
        .expect("limits");
    let (config, account) = config(
        &sim,
        provider,
        300.0,
        json!({"sync": {"backfill_window_secs": 3600 * 6, "backfill_concurrency": 4}}),
    );
    // ~10 s of requests: 50 pages of 100
    let info = sim.account_info(provider, &account).expect("info");
    let start = info.first_call_at;
    let end = start + chrono::Duration::milliseconds(info.call_interval_ms * 5_000);
    let req = request(
        "bench",
        provider,
        &account,
        SyncMode::Backfill,
        Some(start),
        Some(end),
    );
    let report = callsync_connectors::bench::connector_benchmark(&config, &req, 300.0, 100)
        .await
        .expect("bench");
    eprintln!("{report}");
    let stats = sim.stats(provider, &account).expect("stats");
    assert_eq!(stats.rate_limited, 0, "no 429s caused by us");
    assert_eq!(report.rate_limited, 0);
    assert!(report.ceiling_share <= 1.0, "{report}");
    assert_eq!(report.records, 5_000);
}

/// Deliberately broken records (unparseable start time, missing call id) go to the DLQ with
/// stage, reason and field headers and their raw JSON; everything else arrives.
#[tokio::test]
async fn unmappable_records_go_to_the_dlq_with_reason_headers() {
    for provider in Provider::ALL {
        let mut sim_config =
            callsync_simulator::SimulatorConfig::for_tests(11).with_accounts(provider, 1, 1_500);
        sim_config.provider_mut(provider).accounts[0].bad_record_share = 0.05;
        let sim = callsync_simulator::Simulator::start(sim_config)
            .await
            .expect("simulator");
        let (config, account) = config(&sim, provider, 60_000.0, json!({}));
        let store = MemorySyncStore::new();
        let deps = deps(&config, Arc::new(store.clone()));
        let out = run_sync(
            &full_history(&sim, provider, &account, "dlq"),
            &deps,
            NoProgress,
        )
        .await
        .expect("sync completes");
        let bad = sim
            .truth(provider, &account, None)
            .expect("truth")
            .filter(|t| t.bad.is_some())
            .count() as u64;
        assert!(bad > 0);
        let snap = store.snapshot();
        // Invoca serves a bad call once per row (original and corrections)
        assert!(out.dlq >= bad, "{provider}: {} DLQ'd, {bad} bad", out.dlq);
        for d in &snap.dlq {
            let h = |k: &str| {
                d.headers
                    .iter()
                    .find(|(hk, _)| hk == k)
                    .map(|(_, v)| String::from_utf8_lossy(v).to_string())
            };
            assert_eq!(h("callsync.error.stage").as_deref(), Some("connector"));
            assert!(h("callsync.error.reason").is_some() && h("callsync.error.field").is_some());
            assert!(
                serde_json::from_slice::<serde_json::Value>(&d.value).is_ok(),
                "raw JSON as value"
            );
        }
        assert_matches_truth(&sim, provider, &account, &decoded(&store));
    }
}
