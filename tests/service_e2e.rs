//! The service end to end on the real broker and real Postgres: the scheduler fires a full
//! sync of every provider account, the sync workers run it against the provider simulator,
//! the processor and the sink carry the records into Postgres, and the table equals the
//! simulator's ground truth. Then simulated time passes (late conversions, revenue
//! adjustments, new calls), an incremental sync is triggered through `POST /api/syncs`, and
//! the table equals the new ground truth.
//!
//! Every role runs in this process through `run_roles_with`, exactly as `callsync run` wires
//! them. Skipped without `KAFKA_BOOTSTRAP` / Postgres outside CI (a failure under `CI=true`).

mod service_support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use callsync::roles::Role;
use callsync_schemas::Provider;
use chrono::Timelike;
use service_support::{Service, ServiceOptions};

const CALLS_PER_ACCOUNT: u64 = 1_000;
const LATE_HOURS: u64 = 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduled_and_triggered_syncs_leave_postgres_equal_to_the_ground_truth() {
    let kafka = callsync_testkit::skip_unless_kafka!();
    let db = callsync_testkit::skip_unless_postgres!();
    let started = Instant::now();

    // A full-sync slot in the current minute and never again today: the scheduler fires it
    // at start (it runs the latest slot it missed within `catch_up_secs`, as a restarted
    // scheduler does), and no later slot fires during the test.
    let now = chrono::Utc::now();
    let full_cron = format!("{} {} * * *", now.minute(), now.hour());
    let providers = vec![Provider::Retreaver, Provider::Ringba, Provider::Invoca];
    let service = Service::start(
        &kafka,
        db,
        ServiceOptions {
            seed: 6,
            providers: providers.clone(),
            calls_per_account: CALLS_PER_ACCOUNT,
            bad_record_share: 0.01,
            clock_behind: chrono::Duration::hours(LATE_HOURS as i64) + chrono::Duration::minutes(1),
            full_cron,
            roles: Role::ALL.to_vec(),
        },
    )
    .await;
    assert_eq!(service.accounts.len(), providers.len());

    // 1. the scheduler's requests show up in GET /api/syncs, one full sync per account
    let deadline = Instant::now() + Duration::from_secs(20);
    let scheduled: Vec<String> = loop {
        let list = service.get_json("/api/syncs").await;
        let ids: Vec<String> = list["syncs"]
            .as_array()
            .expect("a list of syncs")
            .iter()
            .filter(|s| s["requested_by"] == "scheduler" && s["mode"] == "full")
            .map(|s| s["sync_id"].as_str().expect("sync_id").to_string())
            .collect();
        if ids.len() == service.accounts.len() {
            break ids;
        }
        assert!(
            Instant::now() < deadline,
            "the scheduler did not request a full sync per account within 20 s: {list}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let fetched = service
        .wait_completed(&scheduled, Duration::from_secs(60))
        .await;
    let fetched_total: i64 = fetched.iter().sum();
    assert!(
        fetched_total >= (CALLS_PER_ACCOUNT as i64) * providers.len() as i64 * 9 / 10,
        "the scheduled full syncs fetched {fetched_total} records"
    );

    let (mismatches, rows, truth_calls) = service
        .compare_with_truth(&HashSet::new(), Duration::from_secs(30))
        .await;
    assert!(
        mismatches.is_empty(),
        "after the scheduled full syncs the table differs from the truth ({} differences, {rows} rows, {truth_calls} calls): {:?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(10)]
    );
    assert_eq!(rows, truth_calls);
    let first_truth = truth_calls;

    // 2. late changes and new calls; an incremental sync per account through the HTTP API
    service
        .sim
        .clock()
        .advance(Duration::from_secs(LATE_HOURS * 3600));
    let mut triggered = Vec::new();
    for (provider, account) in &service.accounts {
        triggered.push(service.trigger(*provider, account, "incremental").await);
    }
    service
        .wait_completed(&triggered, Duration::from_secs(60))
        .await;
    let (mismatches, rows, truth_calls) = service
        .compare_with_truth(&HashSet::new(), Duration::from_secs(30))
        .await;
    assert!(
        mismatches.is_empty(),
        "after the triggered incremental syncs the table differs from the truth ({} differences, {rows} rows, {truth_calls} calls): {:?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(10)]
    );
    assert_eq!(rows, truth_calls);
    assert!(
        truth_calls > first_truth,
        "new calls arrived in the simulated hour ({first_truth} -> {truth_calls})"
    );

    // the triggered syncs are listed with who asked for them
    for id in &triggered {
        let status = service.get_json(&format!("/api/syncs/{id}")).await;
        assert_eq!(status["requested_by"], "api", "{status}");
        assert_eq!(status["mode"], "incremental", "{status}");
    }

    let report = service.stop().await;
    let processor = report.processor.expect("the processor's report");
    let sink = report.sink.expect("the sink's report");
    eprintln!(
        "service e2e: {truth_calls} calls in {:.1}s; processor {processor:?}; sink {sink:?}",
        started.elapsed().as_secs_f64()
    );
}
