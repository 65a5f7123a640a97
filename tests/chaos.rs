//! The chaos test: a backfill with late updates through the real pipeline (separate
//! `callsync run --roles X` processes, the real Kafka broker, real Postgres, the provider
//! simulator), while the test SIGKILLs the roles at random moments, stops the broker for
//! 10 s, crash-restarts Postgres and has the simulator answer 5xx and 429 bursts. At the end
//! Postgres must equal the simulator's ground truth exactly, the DLQ must hold only the
//! records made bad on purpose, and the processor's and sink's consumer lag must be 0.
//!
//! Size: 100,000 calls under `CI=true`, else `CALLSYNC_CHAOS_CALLS` (default 100,000).
//! Seed: `CALLSYNC_CHAOS_SEED` (default: from the clock; printed either way).
//!
//! It stops and starts the broker of `scripts/kafka-broker.sh` (`KAFKA_BOOTSTRAP` must be
//! `127.0.0.1:$CALLSYNC_KAFKA_PORT`) and restarts the Postgres of `scripts/postgres.sh`
//! (`CALLSYNC_PG_DATA`), or a throwaway Postgres of its own. It is a test binary of its own,
//! so no other test runs while the broker is down. See docs/testing.md.

mod chaos_support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use callsync::scheduler::publish::{AvroSyncCodec, KafkaSyncPublisher, SyncCodec, SyncPublisher};
use callsync::scheduler::status::{
    follow_sync_events, sync_events_consumer, SyncState, SyncStatusStore,
};
use callsync_processors::synthetic::bad_record_corpus;
use callsync_runtime::{
    ensure_catalogue, names, CatalogueOptions, Isolation, KafkaClientFactory, KafkaSettings,
    Shutdown,
};
use callsync_schemas::{
    decode_call_record, encode_to_vec, Provider, SyncMode, SyncRequest, WireFormat,
};
use callsync_simulator::{
    record_checksum, AccountConfig, BadRecordKind, FaultConfig, RateLimitRule, RunningSimulator,
    Simulator, SimulatorConfig,
};
use callsync_testkit::{PgServer, PgStopMode, RealKafka};
use chaos_support::{RoleProcess, SeededRng, Timeline};
use chrono::Utc;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use rust_decimal::Decimal;
use serde_json::json;
use tokio::sync::Mutex;

/// Simulated hours that pass between the backfill and the incremental sync (late changes).
const LATE_HOURS: u64 = 2;
/// History of each account: the backfill reads this many days.
const HISTORY_DAYS: u64 = 3;
/// Partitions of the call topics (fewer than production's 12: less overhead on 2 cores).
const PARTITIONS: i32 = 6;
/// Share of calls the simulator serves broken on purpose (they must land in the DLQ).
const BAD_SHARE: f64 = 0.0005;
/// SIGKILLs per role.
const KILLS_PER_ROLE: usize = 4;
const ROLES: [&str; 3] = ["connector", "processor", "sink"];
const BROKER_OUTAGE: Duration = Duration::from_secs(10);
/// A rate limit no sync reaches (429s come from the bursts only).
const GENEROUS_LIMIT: RateLimitRule = RateLimitRule::new(1_000_000, 60);

fn chaos_calls() -> u64 {
    if callsync_testkit::ci() {
        return 100_000;
    }
    std::env::var("CALLSYNC_CHAOS_CALLS")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(100_000)
}

fn chaos_seed() -> u64 {
    std::env::var("CALLSYNC_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(7)
        })
}

/// The faults of one run, in the order they happen.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill(usize),
    BrokerOutage,
    PostgresRestart,
    ServerErrorBurst,
    RateLimitBurst,
    InjectBadRecords,
}

/// A bad record produced straight to calls.raw: (key, reason) the DLQ must show.
type ExpectedDlq = Vec<(String, String)>;

struct Run {
    sim: RunningSimulator,
    kafka: RealKafka,
    factory: KafkaClientFactory,
    settings: KafkaSettings,
    roles: Arc<Mutex<Vec<RoleProcess>>>,
    timeline: Timeline,
    status: SyncStatusStore,
    accounts: Vec<(Provider, String)>,
    processor_group: String,
    sink_group: String,
    pool: sqlx::PgPool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_backfill_with_kills_and_outages_equals_ground_truth() {
    let kafka = callsync_testkit::skip_unless_kafka!();
    let port = std::env::var("CALLSYNC_KAFKA_PORT").unwrap_or_else(|_| "19092".into());
    if kafka.bootstrap() != format!("127.0.0.1:{port}") {
        callsync_testkit::require(
            "a Kafka broker the test may stop",
            &format!(
                "KAFKA_BOOTSTRAP={} is not the broker of scripts/kafka-broker.sh on port {port}",
                kafka.bootstrap()
            ),
        );
        return;
    }
    // Postgres it may restart: scripts/postgres.sh's (CALLSYNC_PG_DATA), else its own
    let controllable = std::env::var("DATABASE_URL").is_ok_and(|v| !v.trim().is_empty())
        && std::env::var("CALLSYNC_PG_DATA").is_ok_and(|v| !v.trim().is_empty());
    let owned_pg;
    let pg: &PgServer = if controllable {
        callsync_testkit::pg_server().await.expect("Postgres")
    } else {
        match PgServer::start_throwaway().await {
            Ok(server) => {
                owned_pg = server;
                &owned_pg
            }
            Err(e) if e.is_unavailable() => {
                callsync_testkit::require("PostgreSQL", &e.to_string());
                return;
            }
            Err(e) => panic!("throwaway Postgres: {e}"),
        }
    };
    let db = pg.create_database().await.expect("chaos database");
    // scripts/postgres.sh runs with synchronous_commit off (fast tests): a commit is
    // acknowledged before its WAL is written, and the crash restart below would lose it. The
    // sink's exactly-once rests on durable commits, as in production: turn it on for ours.
    sqlx::query(&format!(
        "ALTER DATABASE \"{}\" SET synchronous_commit = on",
        db.name
    ))
    .execute(&db.pool)
    .await
    .expect("synchronous_commit on");

    let calls = chaos_calls();
    let seed = chaos_seed();
    let timeline = Timeline::new();
    timeline.note(format!(
        "start: {calls} calls, seed {seed} (rerun with CALLSYNC_CHAOS_SEED={seed})"
    ));

    // topics, unique per run
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let prefix = format!("chaos{tag}.");
    let mut settings = KafkaSettings::plaintext(kafka.bootstrap());
    settings.topic_prefix = prefix.clone();
    let factory = KafkaClientFactory::new(settings.clone());
    let options = CatalogueOptions {
        call_partitions: PARTITIONS,
        calls_retention_days: 7,
    };
    ensure_catalogue(&factory, &options, Duration::from_secs(30))
        .await
        .expect("topics");

    let sim = start_simulator(seed, calls).await;
    let accounts: Vec<(Provider, String)> = Provider::ALL
        .iter()
        .flat_map(|&p| sim.accounts(p).into_iter().map(move |a| (p, a)))
        .collect();

    // the roles, each a process of its own
    let work = tempfile::Builder::new()
        .prefix("callsync-chaos-")
        .tempdir()
        .expect("work dir")
        .keep();
    let processor_group = format!("{prefix}processor");
    let sink_group = format!("{prefix}sink");
    let config_path = work.join("callsync.toml");
    write_config(
        &config_path,
        &sim,
        kafka.bootstrap(),
        &prefix,
        &db.url,
        &processor_group,
        &sink_group,
    );
    let mut processes = Vec::new();
    for role in ROLES {
        let mut p = RoleProcess::new(
            role,
            Path::new(env!("CARGO_BIN_EXE_callsync")),
            &config_path,
            &work,
            vec![(
                "RUST_LOG".into(),
                "info,rdkafka=warn,librdkafka=warn,sqlx=warn".into(),
            )],
        );
        p.start();
        processes.push(p);
    }
    timeline.note(format!(
        "roles started as processes: {} (logs in {})",
        ROLES.join(", "),
        work.display()
    ));

    // sync status, as the API would see it
    let status = SyncStatusStore::new(10_000);
    let codec: Arc<dyn SyncCodec> = Arc::new(AvroSyncCodec::single_object());
    let follow_shutdown = Shutdown::new();
    let events = sync_events_consumer(
        &factory,
        &settings.topic(names::SYNC_EVENTS),
        &format!("{prefix}test-events"),
        Duration::from_secs(30),
    )
    .expect("sync events consumer");
    let follower = tokio::spawn(follow_sync_events(
        events,
        status.clone(),
        Arc::clone(&codec),
        follow_shutdown.clone(),
    ));
    let publisher = KafkaSyncPublisher::new(
        factory.producer().expect("producer"),
        codec,
        settings.topic(names::SYNC_REQUESTS),
        settings.topic(names::SYNC_EVENTS),
        Duration::from_secs(60),
    );

    let run = Arc::new(Run {
        sim,
        kafka,
        factory,
        settings,
        roles: Arc::new(Mutex::new(processes)),
        timeline: timeline.clone(),
        status,
        accounts,
        processor_group,
        sink_group,
        pool: db.pool.clone(),
    });

    // restart a role that stops by itself (as a supervisor would)
    let supervising = Arc::new(AtomicBool::new(true));
    let supervisor = tokio::spawn(supervise(Arc::clone(&run), Arc::clone(&supervising)));

    // the faults, driven by the backfill's progress
    let expected_rows = calls as f64;
    let faults_done = Arc::new(AtomicBool::new(false));
    let driver = {
        let run = Arc::clone(&run);
        let done = Arc::clone(&faults_done);
        let pg_admin = pg;
        // the driver needs the Postgres server for its restart: run it on this task's scope
        async move {
            let expected = drive_faults(&run, pg_admin, seed, expected_rows).await;
            done.store(true, Ordering::SeqCst);
            expected
        }
    };
    let budget = Duration::from_secs(240 + calls / 250);
    let main_flow = async {
        // 1. backfill of the whole history
        let end = run.sim.now() + chrono::Duration::seconds(1);
        let mut ids = Vec::new();
        for (provider, account) in &run.accounts {
            let info = run.sim.account_info(*provider, account).expect("account");
            let start = info.first_call_at - chrono::Duration::hours(1);
            ids.push(
                publish(
                    &publisher,
                    *provider,
                    account,
                    SyncMode::Backfill,
                    Some((start, end)),
                )
                .await,
            );
        }
        run.timeline
            .note(format!("backfill requested: {} accounts", ids.len()));
        let fetched = wait_syncs(&run, &ids, "backfill").await;
        run.timeline.note(format!(
            "backfill syncs completed: {fetched} records fetched"
        ));

        // 2. late changes, picked up by an incremental sync
        run.sim
            .clock()
            .advance(Duration::from_secs(LATE_HOURS * 3600));
        run.timeline.note(format!(
            "{LATE_HOURS} simulated hours pass (late conversions, revenue adjustments, corrections, new calls)"
        ));
        let mut ids = Vec::new();
        for (provider, account) in &run.accounts {
            ids.push(publish(&publisher, *provider, account, SyncMode::Incremental, None).await);
        }
        let fetched = wait_syncs(&run, &ids, "incremental").await;
        run.timeline.note(format!(
            "incremental syncs completed: {fetched} records fetched"
        ));
    };
    let (expected_bad, ()) =
        tokio::time::timeout(budget, async { tokio::join!(driver, main_flow) })
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the run did not finish within {budget:?}\n{}\n{}",
                    timeline.render(),
                    logs_tail_blocking(&run)
                )
            });
    assert!(faults_done.load(Ordering::SeqCst));

    // 3. the ground truth, and waiting until Postgres reaches it
    let truth = tokio::task::spawn_blocking({
        let run = Arc::clone(&run);
        move || Truth::collect(&run)
    })
    .await
    .expect("truth task");
    run.timeline.note(format!(
        "ground truth: {} calls, {} broken on purpose",
        truth.good.len(),
        truth.bad.len()
    ));
    let settle = Duration::from_secs(120 + calls / 2_000);
    let table = wait_for_table(&db.pool, &truth, settle).await;
    run.timeline.note(format!(
        "Postgres: {} rows, checksum {:#018x}",
        table.rows, table.checksum
    ));
    let lags = wait_for_zero_lag(&run, Duration::from_secs(90)).await;
    run.timeline.note(format!("consumer lag: {lags:?}"));
    let dlq = read_dlq(&run).await;
    let duplicates = duplicated_in_calls_topic(&run).await;
    supervising.store(false, Ordering::SeqCst);
    let _ = supervisor.await;
    {
        let mut roles = run.roles.lock().await;
        for p in roles.iter_mut() {
            p.stop(Duration::from_secs(20)).await;
        }
    }
    follow_shutdown.trigger();
    let _ = follower.await;
    run.timeline.note("roles stopped");

    // 4. the report, then the verdict
    let verdict = Verdict::judge(&truth, &table, &dlq, &expected_bad, duplicates, &lags);
    let roles = run.roles.lock().await;
    println!(
        "\n## Chaos run: {calls} calls, seed {seed}, {:.0} s\n",
        run.timeline.elapsed().as_secs_f64()
    );
    println!("### Fault timeline\n\n{}", run.timeline.render());
    println!("### Roles\n\n| role | processes started | SIGKILLs | exits on their own |\n|---|---:|---:|---:|");
    for p in roles.iter() {
        println!(
            "| {} | {} | {} | {} |",
            p.role,
            p.starts,
            p.kills,
            p.unplanned_exits.len()
        );
    }
    println!("\n### Postgres vs ground truth\n\n{}", verdict.render());
    let kills: u32 = roles.iter().map(|p| p.kills).sum();
    assert!(kills >= 10, "only {kills} kills happened");
    for p in roles.iter() {
        assert!(p.kills >= 1, "{} was never killed", p.role);
    }
    assert!(
        verdict.failures.is_empty(),
        "the chaos run differs from the ground truth:\n{}\n\nfirst differences:\n{}",
        verdict.failures.join("\n"),
        verdict.examples.join("\n")
    );
}

async fn start_simulator(seed: u64, calls: u64) -> RunningSimulator {
    let per_provider = (calls / Provider::ALL.len() as u64).max(100);
    let mut config = SimulatorConfig::for_tests(seed);
    // frozen LATE_HOURS (and a minute) behind the wall clock: advancing it later brings it to
    // now, so the incremental sync's window covers the late changes
    config.clock.start =
        Utc::now() - chrono::Duration::hours(LATE_HOURS as i64) - chrono::Duration::minutes(1);
    config.clock.speed = 0.0;
    for provider in Provider::ALL {
        let p = config.provider_mut(provider);
        p.rate_limits = vec![GENEROUS_LIMIT];
        p.accounts = vec![AccountConfig {
            calls: per_provider,
            future_calls: (per_provider / 20).max(1),
            history_secs: HISTORY_DAYS * 86_400,
            bad_record_share: BAD_SHARE,
            ..AccountConfig::with_calls(per_provider)
        }];
    }
    Simulator::start(config).await.expect("simulator")
}

fn write_config(
    path: &Path,
    sim: &RunningSimulator,
    bootstrap: &str,
    prefix: &str,
    database_url: &str,
    processor_group: &str,
    sink_group: &str,
) {
    let mut connectors = callsync::cli::connectors_for_simulator(sim, &Provider::ALL, 600_000.0);
    connectors["sync"] = json!({
        "backfill_window_secs": 6 * 3600,
        "backfill_concurrency": 4,
        "progress_every": 1000,
        // the first incremental sync reads the whole history (late changes of any call)
        "initial_incremental_secs": (HISTORY_DAYS + 1) * 86_400,
        "request_timeout_secs": 10,
        "kafka_timeout_secs": 30,
        "transactional_id_prefix": format!("{prefix}connector"),
    });
    connectors["retry"] = json!({"max_attempts": 10, "base_delay_ms": 50, "max_delay_ms": 1000});
    connectors["circuit"] = json!({"failure_threshold": 30, "open_secs": 1.0});
    let value = json!({
        "kafka": {
            "bootstrap_servers": bootstrap,
            "topic_prefix": prefix,
            // a transaction a killed process left open blocks its successor's
            // init_transactions until it times out (librdkafka's default: 60 s); the
            // delivery timeout may not exceed it
            "client_properties": {"transaction.timeout.ms": "20000", "message.timeout.ms": "20000"},
        },
        "topics": {"call_partitions": PARTITIONS},
        "processor": {"group_id": processor_group, "batch_max_time_ms": 100},
        "sink": {"database_url": database_url, "group": sink_group, "batch_max_ms": 200},
        "connectors": connectors,
        "workers": {
            "group_id": format!("{prefix}workers"),
            "max_concurrent": Provider::ALL.len(),
            "retry_initial_delay_secs": 1,
            "retry_max_delay_secs": 5,
            "max_attempts": 30,
            "claim_ttl_secs": 5,
            "catch_up_timeout_secs": 30,
        },
        "log": {"filter": "info"},
    });
    let text = toml::to_string(&value).expect("config as TOML");
    std::fs::write(path, text).expect("write the config");
}

async fn publish(
    publisher: &KafkaSyncPublisher,
    provider: Provider,
    account: &str,
    mode: SyncMode,
    window: Option<(chrono::DateTime<Utc>, chrono::DateTime<Utc>)>,
) -> String {
    let request = SyncRequest {
        id: uuid::Uuid::new_v4().to_string(),
        provider,
        account_id: account.to_string(),
        mode,
        window_start: window.map(|w| w.0),
        window_end: window.map(|w| w.1),
        requested_at: Utc::now(),
        requested_by: "chaos-test".into(),
        attempt: 1,
        not_before: None,
    };
    // the broker may be down right now: keep trying
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match publisher.publish_request(&request).await {
            Ok(()) => return request.id,
            Err(e) if Instant::now() < deadline => {
                eprintln!("publishing a sync request: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => panic!("could not publish a sync request: {e}"),
        }
    }
}

/// Waits until every sync of `ids` completed; a sync that failed for good fails the test.
/// Returns the records they fetched.
async fn wait_syncs(run: &Run, ids: &[String], what: &str) -> u64 {
    let mut last_report = Instant::now();
    // the runner writes `failed` itself before the worker writes `failed ...; next attempt
    // at ...`: a failure is final only when no retry follows for a while
    let mut failed_since: HashMap<String, Instant> = HashMap::new();
    loop {
        let mut done = 0;
        let mut total = 0u64;
        for id in ids {
            let Some(s) = run.status.get(id) else {
                continue;
            };
            total += u64::try_from(s.records).unwrap_or(0);
            match s.state {
                SyncState::Completed => done += 1,
                SyncState::Failed => {
                    let since = *failed_since.entry(id.clone()).or_insert_with(Instant::now);
                    assert!(
                        since.elapsed() < Duration::from_secs(60),
                        "{what} sync {id} ({} {}) failed and was not retried within 60 s: {:?}\n{}",
                        s.provider,
                        s.account_id,
                        s.error,
                        run.timeline.render()
                    );
                }
                _ => {
                    failed_since.remove(id);
                }
            }
        }
        if done == ids.len() {
            return total;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            last_report = Instant::now();
            eprintln!(
                "[chaos {:>7.1}s] {what}: {done}/{} syncs done, {total} records",
                run.timeline.elapsed().as_secs_f64(),
                ids.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Rows in the calls table so far (the driver's measure of progress; 0 while Postgres is
/// down).
async fn rows_so_far(run: &Run) -> u64 {
    let count: Result<(i64,), _> = sqlx::query_as("SELECT count(*) FROM calls")
        .fetch_one(&run.pool)
        .await;
    count.map(|(n,)| n.max(0) as u64).unwrap_or(0)
}

/// Restarts a role process that exited by itself (not one the test killed).
async fn supervise(run: Arc<Run>, active: Arc<AtomicBool>) {
    while active.load(Ordering::SeqCst) {
        {
            let mut roles = run.roles.lock().await;
            for p in roles.iter_mut() {
                if let Some(status) = p.exited() {
                    let why = format!("{} exited by itself ({status}); restarting it", p.role);
                    run.timeline.note(why.clone());
                    eprintln!("--- {} log tail:\n{}", p.role, p.log_tail(15));
                    p.unplanned_exits.push(why);
                    p.start();
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Runs the faults at moments drawn from `seed`, spread over the backfill's progress; returns
/// the bad records it produced straight to calls.raw.
async fn drive_faults(run: &Run, pg: &PgServer, seed: u64, expected_rows: f64) -> ExpectedDlq {
    let mut rng = SeededRng::new(seed);
    let mut faults: Vec<Fault> = (0..KILLS_PER_ROLE * ROLES.len())
        .map(|i| Fault::Kill(i % ROLES.len()))
        .collect();
    rng.shuffle(&mut faults);
    // the outages mid-run, the bursts and the bad records anywhere
    let n = faults.len();
    faults.insert(n / 3, Fault::BrokerOutage);
    faults.insert(2 * n / 3, Fault::PostgresRestart);
    for extra in [
        Fault::ServerErrorBurst,
        Fault::RateLimitBurst,
        Fault::InjectBadRecords,
    ] {
        let at = rng.range(1, faults.len() as u64) as usize;
        faults.insert(at, extra);
    }
    // each fault fires once the calls table reached its share of the calls (sorted random
    // points in 3%..90%), and at least 1.5 s after the previous one
    let mut points: Vec<f64> = (0..faults.len())
        .map(|_| 0.03 + 0.87 * (rng.range(0, 10_000) as f64 / 10_000.0))
        .collect();
    points.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let mut expected = Vec::new();
    let mut last = Instant::now();
    for (fault, point) in faults.into_iter().zip(points) {
        let min_gap = rng.millis(1_500, 4_000);
        loop {
            let progress = rows_so_far(run).await as f64 / expected_rows;
            if progress >= point && last.elapsed() >= min_gap {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        match fault {
            Fault::Kill(i) => {
                let mut roles = run.roles.lock().await;
                let p = &mut roles[i];
                p.kill().await;
                run.timeline.note(format!("SIGKILL {}", p.role));
                drop(roles);
                tokio::time::sleep(rng.millis(200, 2_500)).await;
                let mut roles = run.roles.lock().await;
                roles[i].start();
                run.timeline.note(format!("{} restarted", roles[i].role));
            }
            Fault::BrokerOutage => {
                run.timeline.note("Kafka broker: stopping");
                run.kafka.stop_broker().await.expect("stop the broker");
                run.timeline.note(format!(
                    "Kafka broker stopped; down for {} s",
                    BROKER_OUTAGE.as_secs()
                ));
                tokio::time::sleep(BROKER_OUTAGE).await;
                run.kafka.start_broker().await.expect("start the broker");
                run.timeline.note("Kafka broker started again");
            }
            Fault::PostgresRestart => {
                run.timeline
                    .note("Postgres: crash restart (pg_ctl stop -m immediate, start)");
                pg.restart(PgStopMode::Immediate)
                    .await
                    .expect("restart Postgres");
                run.timeline.note("Postgres accepting connections again");
            }
            Fault::ServerErrorBurst => {
                burst(
                    run,
                    "5xx burst: 50% of provider requests answer 500/502/503",
                    FaultConfig {
                        server_error_share: 0.5,
                        ..FaultConfig::default()
                    },
                    None,
                )
                .await;
            }
            Fault::RateLimitBurst => {
                burst(
                    run,
                    "429 burst: 50% injected 429s, and a limit of 3 requests/s with Retry-After",
                    FaultConfig {
                        rate_limited_share: 0.5,
                        ..FaultConfig::default()
                    },
                    Some(RateLimitRule::new(3, 1)),
                )
                .await;
            }
            Fault::InjectBadRecords => {
                expected = inject_bad_records(run).await;
                run.timeline.note(format!(
                    "{} invalid records produced straight to calls.raw",
                    expected.len()
                ));
            }
        }
        last = Instant::now();
    }
    run.timeline.note("all faults done");
    expected
}

async fn burst(run: &Run, what: &str, faults: FaultConfig, limit: Option<RateLimitRule>) {
    run.timeline.note(format!("{what}: on for 4 s"));
    for provider in Provider::ALL {
        run.sim
            .set_faults(provider, None, faults.clone())
            .expect("set faults");
        if let Some(rule) = limit {
            run.sim
                .set_rate_limits(provider, vec![rule], true)
                .expect("set rate limits");
        }
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    for provider in Provider::ALL {
        run.sim
            .set_faults(provider, None, FaultConfig::default())
            .expect("clear faults");
        run.sim
            .set_rate_limits(provider, vec![GENEROUS_LIMIT], false)
            .expect("reset rate limits");
    }
    run.timeline.note(format!("{what}: off"));
}

/// One record per validation rule of the processor, plus bytes no decoder reads.
async fn inject_bad_records(run: &Run) -> ExpectedDlq {
    let producer: FutureProducer = run.factory.producer().expect("producer");
    let topic = run.settings.topic(names::CALLS_RAW);
    let mut expected = Vec::new();
    let mut send = |key: Option<Vec<u8>>, value: Vec<u8>, reason: &str| {
        expected.push((
            key.as_deref()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default(),
            reason.to_string(),
        ));
        let producer = producer.clone();
        let topic = topic.clone();
        async move {
            let mut record = FutureRecord::to(&topic).payload(&value);
            if let Some(key) = &key {
                record = record.key(key);
            }
            producer
                .send(record, Duration::from_secs(60))
                .await
                .map_err(|(e, _)| e)
                .expect("produce a bad record");
        }
    };
    let mut sends = Vec::new();
    for case in bad_record_corpus(Utc::now()) {
        // a value our encoder refuses (e.g. too many decimals) cannot be produced this way
        let Ok(value) = encode_to_vec(&case.record, WireFormat::SingleObject) else {
            continue;
        };
        sends.push(send(case.key.clone(), value, case.reason.code()));
    }
    sends.push(send(
        Some(b"retreaver:chaos:undecodable".to_vec()),
        b"\xC3\x01not avro at all".to_vec(),
        "undecodable",
    ));
    futures::future::join_all(sends).await;
    expected
}

/// The ground truth: checksum per good call key, and the calls broken on purpose.
struct Truth {
    good: HashMap<String, u64>,
    /// Where each good call sits (for the report of a difference): index, start, stage.
    detail: HashMap<String, (u64, chrono::DateTime<Utc>, callsync_simulator::Stage)>,
    checksum: u64,
    bad: Vec<(String, BadRecordKind)>,
}

impl Truth {
    fn collect(run: &Run) -> Truth {
        let mut good = HashMap::new();
        let mut detail = HashMap::new();
        let mut checksum = 0u64;
        let mut bad = Vec::new();
        for (provider, account) in &run.accounts {
            for t in run.sim.truth(*provider, account, None).expect("truth") {
                match t.bad {
                    Some(kind) => bad.push((t.call_key.clone(), kind)),
                    None => {
                        let c = t.checksum();
                        checksum = checksum.wrapping_add(c);
                        detail.insert(t.call_key.clone(), (t.index, t.started_at, t.stage));
                        good.insert(t.call_key, c);
                    }
                }
            }
        }
        Truth {
            good,
            detail,
            checksum,
            bad,
        }
    }
}

/// What the `calls` table holds: key -> checksum of (key, version, status, revenue).
struct Table {
    rows: u64,
    checksum: u64,
    by_key: HashMap<String, u64>,
}

async fn read_table(pool: &sqlx::PgPool) -> Result<Table, sqlx::Error> {
    let rows: Vec<(String, String, String, i64, String, Option<Decimal>)> =
        sqlx::query_as("SELECT provider, account_id, call_id, version, status, revenue FROM calls")
            .fetch_all(pool)
            .await?;
    let mut by_key = HashMap::with_capacity(rows.len());
    let mut checksum = 0u64;
    for (provider, account, call_id, version, status, revenue) in &rows {
        let key = format!("{provider}:{account}:{call_id}");
        let p: Provider = provider.parse().expect("provider column");
        let c = record_checksum(p, &key, Some(*version), status, *revenue);
        checksum = checksum.wrapping_add(c);
        by_key.insert(key, c);
    }
    Ok(Table {
        rows: rows.len() as u64,
        checksum,
        by_key,
    })
}

/// Polls the table until it equals the truth (count and checksum) or `timeout` passes;
/// returns the last reading.
async fn wait_for_table(pool: &sqlx::PgPool, truth: &Truth, timeout: Duration) -> Table {
    let deadline = Instant::now() + timeout;
    let want = truth.good.len() as i64;
    loop {
        let count: Result<(i64,), _> = sqlx::query_as("SELECT count(*) FROM calls")
            .fetch_one(pool)
            .await;
        let near = matches!(count, Ok((n,)) if n >= want);
        if near || Instant::now() >= deadline {
            match read_table(pool).await {
                Ok(table) => {
                    if (table.rows == want as u64 && table.checksum == truth.checksum)
                        || Instant::now() >= deadline
                    {
                        return table;
                    }
                }
                Err(e) if Instant::now() >= deadline => panic!("reading the calls table: {e}"),
                Err(_) => {}
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The lag of one group on one topic, summed over partitions: `(records, offsets)`.
/// `offsets` is the high watermark minus the committed offset (what lag tools show);
/// `records` is `callsync::ops::scan::records_left`: the committed records a read_committed
/// consumer starting at the committed offset would still receive (counted for short tails,
/// offsets beyond). They differ by the transaction markers (and aborted records) after the
/// last record a group consumed.
fn group_lag(factory: &KafkaClientFactory, group: &str, topic: &str) -> anyhow::Result<(i64, i64)> {
    use callsync::ops::scan::{records_left, scan_consumer, READ_ONLY_GROUP};
    let timeout = Duration::from_secs(10);
    let consumer: BaseConsumer = factory.create(
        "lag probe",
        &factory.consumer_config(group, Isolation::ReadCommitted),
    )?;
    let partitions = callsync::ops::offsets::topic_partitions(&consumer, topic, timeout)?;
    let marks = callsync::ops::offsets::watermarks(&consumer, topic, &partitions, timeout)?;
    let committed =
        callsync::ops::offsets::committed_offsets(&consumer, group, topic, &partitions, timeout)?;
    let gaps: BTreeMap<i32, (i64, i64)> = marks
        .iter()
        .map(|(p, m)| (*p, (committed.get(p).copied().unwrap_or(m.low), m.high)))
        .collect();
    let offsets = gaps.values().map(|(from, end)| (end - from).max(0)).sum();
    let reader = scan_consumer(factory, READ_ONLY_GROUP, Isolation::ReadCommitted)?;
    let records = records_left(&reader, topic, &gaps)?.values().sum();
    Ok((records, offsets))
}

/// Waits until the processor's and the sink's groups have no records left to consume;
/// returns the last lags per group (records, offsets).
async fn wait_for_zero_lag(run: &Run, timeout: Duration) -> BTreeMap<String, (i64, i64)> {
    let deadline = Instant::now() + timeout;
    let groups = [
        (
            run.processor_group.clone(),
            run.settings.topic(names::CALLS_RAW),
        ),
        (run.sink_group.clone(), run.settings.topic(names::CALLS)),
    ];
    loop {
        let factory = run.factory.clone();
        let groups2 = groups.clone();
        let lags = tokio::task::spawn_blocking(move || {
            groups2
                .iter()
                .map(|(g, t)| {
                    let lag = group_lag(&factory, g, t).unwrap_or_else(|e| {
                        eprintln!("measuring the lag of {g}: {e:#}");
                        (i64::MAX, i64::MAX)
                    });
                    (format!("{g} on {t}"), lag)
                })
                .collect::<BTreeMap<String, (i64, i64)>>()
        })
        .await
        .expect("lag task");
        if lags.values().all(|&(records, _)| records == 0) || Instant::now() >= deadline {
            return lags;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Reads `topic` from the beginning to its end (read_committed), calling `each` per record.
fn read_topic_to_end(
    factory: &KafkaClientFactory,
    topic: &str,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) {
    let timeout = Duration::from_secs(10);
    let consumer: BaseConsumer = factory
        .create(
            "chaos reader",
            &factory.consumer_config(
                &format!("chaos-reader-{}", uuid::Uuid::new_v4().simple()),
                Isolation::ReadCommitted,
            ),
        )
        .expect("reader");
    let partitions =
        callsync::ops::offsets::topic_partitions(&consumer, topic, timeout).expect("partitions");
    let marks =
        callsync::ops::offsets::watermarks(&consumer, topic, &partitions, timeout).expect("marks");
    let mut tpl = TopicPartitionList::new();
    let mut pending: HashSet<i32> = HashSet::new();
    for (p, m) in &marks {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .expect("assign");
        if m.high > m.low {
            pending.insert(*p);
        }
    }
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(600);
    while !pending.is_empty() {
        assert!(Instant::now() < deadline, "reading {topic} timed out");
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                each(&m);
                // the last data record may sit before a transaction marker at high - 1
                if m.offset() + 2 >= marks[&m.partition()].high {
                    pending.remove(&m.partition());
                }
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {
                // a partition whose tail is only markers/aborted records: check the position
                if let Ok(positions) = consumer.position() {
                    for e in positions.elements() {
                        if let Offset::Offset(o) = e.offset() {
                            if o >= marks[&e.partition()].high {
                                pending.remove(&e.partition());
                            }
                        }
                    }
                }
            }
        }
    }
}

/// One DLQ record: its key, stage and reason headers.
#[derive(Debug, Clone)]
struct DlqEntry {
    key: String,
    stage: String,
    reason: String,
}

async fn read_dlq(run: &Run) -> Vec<DlqEntry> {
    let factory = run.factory.clone();
    let topic = run.settings.topic(names::CALLS_DLQ);
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        read_topic_to_end(&factory, &topic, |m| {
            let header = |name: &str| {
                m.headers()
                    .and_then(|h| {
                        h.iter()
                            .find(|x| x.key == name)
                            .and_then(|x| x.value.map(|v| String::from_utf8_lossy(v).into_owned()))
                    })
                    .unwrap_or_default()
            };
            out.push(DlqEntry {
                key: m
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .unwrap_or_default(),
                stage: header("callsync.error.stage"),
                reason: header("callsync.error.reason"),
            });
        });
        out
    })
    .await
    .expect("dlq task")
}

/// (key, version) pairs written to `calls` more than once: what exactly-once forbids.
async fn duplicated_in_calls_topic(run: &Run) -> u64 {
    let factory = run.factory.clone();
    let topic = run.settings.topic(names::CALLS);
    tokio::task::spawn_blocking(move || {
        let mut seen: HashSet<(String, i64)> = HashSet::new();
        let mut duplicates = 0u64;
        read_topic_to_end(&factory, &topic, |m| {
            let record = decode_call_record(m.payload().unwrap_or_default())
                .expect("a calls record decodes");
            if !seen.insert((record.key().into_string(), record.version)) {
                duplicates += 1;
            }
        });
        duplicates
    })
    .await
    .expect("calls task")
}

/// The comparison, and what failed.
struct Verdict {
    rows: Vec<(String, String, String)>,
    failures: Vec<String>,
    examples: Vec<String>,
}

impl Verdict {
    fn judge(
        truth: &Truth,
        table: &Table,
        dlq: &[DlqEntry],
        injected: &ExpectedDlq,
        duplicates: u64,
        lags: &BTreeMap<String, (i64, i64)>,
    ) -> Verdict {
        let mut examples = Vec::new();
        let mut lost = 0u64;
        let mut stale = 0u64;
        let mut lost_by_account: BTreeMap<String, u64> = BTreeMap::new();
        for (key, want) in &truth.good {
            match table.by_key.get(key) {
                None => {
                    lost += 1;
                    let account = key.rsplit_once(':').map_or("", |(a, _)| a);
                    *lost_by_account.entry(account.to_string()).or_default() += 1;
                    if examples.len() < 10 {
                        examples.push(format!("lost: {key} {:?}", truth.detail.get(key)));
                    }
                }
                Some(got) if got != want => {
                    stale += 1;
                    if examples.len() < 10 {
                        examples.push(format!(
                            "other version/status/revenue: {key} {:?}",
                            truth.detail.get(key)
                        ));
                    }
                }
                Some(_) => {}
            }
        }
        if !lost_by_account.is_empty() {
            examples.insert(0, format!("lost per account: {lost_by_account:?}"));
        }
        let extra = table
            .by_key
            .keys()
            .filter(|k| !truth.good.contains_key(*k))
            .inspect(|k| {
                if examples.len() < 10 {
                    examples.push(format!("extra: {k}"));
                }
            })
            .count() as u64;

        // DLQ: the processor's entries are exactly the injected ones; the connectors' are
        // the simulator's broken records
        let mut processor_dlq: Vec<(String, String)> = dlq
            .iter()
            .filter(|e| e.stage != "connector")
            .map(|e| (e.key.clone(), e.reason.clone()))
            .collect();
        processor_dlq.sort();
        let mut want_processor = injected.clone();
        want_processor.sort();
        let connector_dlq: Vec<&DlqEntry> = dlq.iter().filter(|e| e.stage == "connector").collect();
        let bad_keys: HashMap<&str, BadRecordKind> = truth
            .bad
            .iter()
            .map(|(k, kind)| (k.as_str(), *kind))
            .collect();
        let mut unexpected = 0u64;
        let mut found_bad: HashSet<&str> = HashSet::new();
        for e in &connector_dlq {
            let account_prefix = e.key.rsplit_once(':').map_or("", |(a, _)| a);
            let account_has = |kind: BadRecordKind| {
                truth.bad.iter().any(|(k, k_kind)| {
                    *k_kind == kind && k.rsplit_once(':').is_some_and(|(a, _)| a == account_prefix)
                })
            };
            let explained = if let Some((k, _)) = bad_keys.get_key_value(e.key.as_str()) {
                found_bad.insert(k);
                true
            } else if e.reason == "missing" {
                // a record without its id: keyed by whatever id field the provider still sent
                account_has(BadRecordKind::MissingId)
            } else {
                // Invoca's DLQ key names the row (transaction_id), not the call
                e.key.starts_with("invoca:") && account_has(BadRecordKind::UnparseableStartTime)
            };
            if !explained {
                unexpected += 1;
                if examples.len() < 20 {
                    examples.push(format!("unexpected DLQ entry: {e:?}"));
                }
            }
        }
        let identifiable: Vec<&str> = truth
            .bad
            .iter()
            .filter(|(k, kind)| *kind != BadRecordKind::MissingId && !k.starts_with("invoca:"))
            .map(|(k, _)| k.as_str())
            .collect();
        let missing_from_dlq = identifiable
            .iter()
            .filter(|k| !found_bad.contains(**k))
            .inspect(|k| {
                if examples.len() < 20 {
                    examples.push(format!("broken call not in the DLQ: {k}"));
                }
            })
            .count() as u64;
        let processor_ok = processor_dlq == want_processor;
        if !processor_ok {
            examples.push(format!(
                "processor DLQ entries {processor_dlq:?}\n  expected {want_processor:?}"
            ));
        }

        let mut failures = Vec::new();
        let mut check = |ok: bool, what: String| {
            if !ok {
                failures.push(what);
            }
        };
        check(
            table.rows == truth.good.len() as u64,
            format!("rows {} != truth {}", table.rows, truth.good.len()),
        );
        check(
            table.checksum == truth.checksum,
            format!(
                "checksum {:#018x} != truth {:#018x}",
                table.checksum, truth.checksum
            ),
        );
        check(lost == 0, format!("{lost} calls lost"));
        check(stale == 0, format!("{stale} calls at another version"));
        check(extra == 0, format!("{extra} extra rows"));
        check(duplicates == 0, format!("{duplicates} duplicates in calls"));
        check(
            processor_ok,
            "the processor's DLQ entries differ from the injected ones".into(),
        );
        check(
            unexpected == 0,
            format!("{unexpected} unexpected DLQ entries"),
        );
        check(
            missing_from_dlq == 0,
            format!("{missing_from_dlq} broken records missing from the DLQ"),
        );
        for (group, (records, _)) in lags {
            check(
                *records == 0,
                format!("{group} has {records} records left to consume"),
            );
        }

        let n = |v: u64| v.to_string();
        let mut rows = vec![
            (
                "calls in Postgres".to_string(),
                n(truth.good.len() as u64),
                n(table.rows),
            ),
            (
                "checksum over key, version, status, revenue".to_string(),
                format!("{:#018x}", truth.checksum),
                format!("{:#018x}", table.checksum),
            ),
            ("lost (in the truth, not in Postgres)".into(), n(0), n(lost)),
            ("at another version/revenue".into(), n(0), n(stale)),
            (
                "extra (in Postgres, not in the truth)".into(),
                n(0),
                n(extra),
            ),
            (
                "duplicated (same key and version twice in `calls`)".into(),
                n(0),
                n(duplicates),
            ),
            (
                "DLQ: simulator's broken calls found (identifiable by key)".into(),
                n(identifiable.len() as u64),
                n(identifiable.len() as u64 - missing_from_dlq),
            ),
            (
                "DLQ: connector entries (re-reads repeat a broken record)".into(),
                "-".into(),
                n(connector_dlq.len() as u64),
            ),
            (
                "DLQ: records made bad on purpose in calls.raw".into(),
                n(want_processor.len() as u64),
                n(processor_dlq.len() as u64),
            ),
            ("DLQ: unexpected entries".into(), n(0), n(unexpected)),
        ];
        for (group, (records, offsets)) in lags {
            rows.push((format!("lag, records: {group}"), n(0), records.to_string()));
            rows.push((
                format!(
                    "lag, offsets (high watermark - committed; transaction markers count): {group}"
                ),
                "-".into(),
                offsets.to_string(),
            ));
        }
        Verdict {
            rows,
            failures,
            examples,
        }
    }

    fn render(&self) -> String {
        let mut out = String::from("| figure | expected | actual |\n|---|---:|---:|\n");
        for (what, want, got) in &self.rows {
            out.push_str(&format!("| {what} | {want} | {got} |\n"));
        }
        out.push_str(if self.failures.is_empty() {
            "\nverdict: Postgres equals the ground truth: zero lost, zero duplicated\n"
        } else {
            "\nverdict: DIFFERS (see the failures)\n"
        });
        out
    }
}

fn logs_tail_blocking(run: &Run) -> String {
    match run.roles.try_lock() {
        Ok(roles) => roles
            .iter()
            .map(|p| {
                format!(
                    "--- {} ({}):\n{}",
                    p.role,
                    p.log_path().display(),
                    p.log_tail(20)
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Err(_) => "(role logs busy)".into(),
    }
}
