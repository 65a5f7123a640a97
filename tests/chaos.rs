//! The chaos test: a backfill with late updates through the real pipeline run the way
//! production runs it, while faults hit every part of it. At the end every column of every
//! row in Postgres must equal the provider's data (the simulator's ground truth), the DLQ must
//! hold only the records made bad on purpose, and the processor's and sink's lag must be 0.
//!
//! - Roles: separate `callsync run --roles X` processes with one shared config file, started
//!   by the lines of docs/operations.md: three connectors throughout; processors and sinks
//!   one, then three, then one again in the middle of the backfill, and three after the
//!   database move through the late phase.
//! - Provider data changes while pages are read: the simulated clock runs during the
//!   backfill (new calls, conversions, adjustments), then jumps the late hours.
//! - Faults in the backfill: SIGKILLs of every role (a random process of the role), the
//!   broker stopped for 10 s, a Postgres crash restart, 5xx and 429 bursts, invalid records
//!   in `calls.raw`; the sinks moved to a fresh database halfway by the documented procedure
//!   (docs/operations.md section 8.A, run as written). In the late phase: SIGKILLs of every
//!   role and 5xx and 429 bursts while the incremental syncs read.
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
    decode_call_record, encode_to_vec, CallField, CallRecord, ContentFingerprint, Provider,
    RecordSource, SyncMode, SyncRequest, WireFormat,
};
use callsync_simulator::{
    record_checksum, AccountConfig, BadRecordKind, FaultConfig, RateLimitRule, RunningSimulator,
    Simulator, SimulatorConfig, TruthRecord,
};
use callsync_sinks::{CallStore, PgStore, StoredCall};
use callsync_testkit::{PgServer, PgStopMode, RealKafka, TestDatabase};
use chaos_support::compare::{
    self, CallsEntry, CallsIndex, ColumnReport, ReadRules, ReferenceCheck, RowOrigin,
};
use chaos_support::docs::{scaling_run_line, DatabaseMove};
use chaos_support::roles::{Fleet, Launcher, RoleProcess};
use chaos_support::webhooks::{self as hooks, WebhookTraffic};
use chaos_support::{reference, SeededRng, Timeline};
use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use rust_decimal::Decimal;
use serde_json::json;
use tokio::sync::Mutex;

/// Simulated hours between the start of the backfill and the incremental sync (late
/// changes); part of them pass while the backfill reads (the clock runs), the rest at once.
const LATE_HOURS: u64 = 2;
/// Simulated seconds per wall-clock second while the backfill reads: pages shift under the
/// connectors (new calls, changes of recent ones).
const BACKFILL_CLOCK_SPEED: f64 = 20.0;
/// History of each account: the backfill reads this many days.
const HISTORY_DAYS: u64 = 3;
/// Partitions of the call topics (fewer than production's 12: less overhead on 2 cores).
const PARTITIONS: i32 = 6;
/// Share of calls the simulator serves broken on purpose (they must land in the DLQ).
const BAD_SHARE: f64 = 0.0005;
const ROLES: [&str; 4] = ["connector", "processor", "sink", "api"];
/// Share of calls whose changes the providers also send as webhooks.
const WEBHOOK_SHARE: f64 = 0.5;
/// The longest window of simulated time sent as webhooks at once (the late hours go out in
/// slices of it, spread over the late phase).
const WEBHOOK_SLICE: chrono::TimeDelta = chrono::TimeDelta::minutes(3);
/// Processes per role when the pipeline runs at full size.
const PER_ROLE: usize = 3;
/// SIGKILLs per role during the backfill, and during the late phase.
const BACKFILL_KILLS_PER_ROLE: usize = 4;
const LATE_KILLS_PER_ROLE: usize = 1;
const BROKER_OUTAGE: Duration = Duration::from_secs(10);
/// How long a process stopped with SIGTERM may take to drain and exit.
const STOP_GRACE: Duration = Duration::from_secs(30);
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

/// What the test does to the pipeline, in the order it happens.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Event {
    /// SIGKILL a random process of the role, restart it after a moment.
    Kill(&'static str),
    BrokerOutage,
    PostgresRestart,
    ServerErrorBurst,
    RateLimitBurst,
    InjectBadRecords,
    /// Processors and sinks: one process each becomes three.
    ScaleOut,
    /// Processors and sinks: three become one (SIGTERM).
    ScaleIn,
    /// The sinks move to a fresh database (docs/operations.md 8.A); from here processors and
    /// sinks run three processes each.
    MoveDatabase,
}

/// A bad record produced straight to calls.raw: (key, reason) the DLQ must show.
type ExpectedDlq = Vec<(String, String)>;

/// What the database move left behind, for the verdict.
#[derive(Debug, Clone, Default)]
struct MoveFacts {
    /// Rows in the old database when its sinks had stopped (nothing may change them after).
    old_rows: u64,
    old_checksum: u64,
    /// SINK PARTITIONS states of `status --json` right after the sinks started on the new one.
    states_after: BTreeMap<String, usize>,
}

struct Run {
    sim: RunningSimulator,
    kafka: RealKafka,
    factory: KafkaClientFactory,
    settings: KafkaSettings,
    fleet: Arc<Mutex<Fleet>>,
    launcher: Launcher,
    timeline: Timeline,
    status: SyncStatusStore,
    accounts: Vec<(Provider, String)>,
    processor_group: String,
    sink_group: String,
    old_db: TestDatabase,
    new_db: TestDatabase,
    /// Whether the sinks write to `new_db` yet.
    moved: AtomicBool,
    move_facts: std::sync::Mutex<Option<MoveFacts>>,
    /// Processes stopped with SIGTERM that did not exit with status 0.
    unclean_stops: std::sync::Mutex<Vec<String>>,
    injected: std::sync::Mutex<ExpectedDlq>,
    calls: u64,
    webhooks: WebhookTraffic,
}

impl Run {
    /// The database the sinks write to now.
    fn sink_pool(&self) -> &sqlx::PgPool {
        if self.moved.load(Ordering::SeqCst) {
            &self.new_db.pool
        } else {
            &self.old_db.pool
        }
    }
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
    // the database the sinks start with, and the fresh one they move to halfway
    let old_db = durable_database(pg).await;
    let new_db = durable_database(pg).await;

    let calls = chaos_calls();
    let seed = chaos_seed();
    let timeline = Timeline::new();
    let run_started = Utc::now();
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
    let clock_start = sim.now();
    let accounts = run_accounts(&sim);

    // one config file for every process
    let work = tempfile::Builder::new()
        .prefix("callsync-chaos-")
        .tempdir()
        .expect("work dir")
        .keep();
    let processor_group = format!("{prefix}processor");
    let sink_group = format!("{prefix}sink");
    let config_path = work.join("callsync.toml");
    // the api processes' listeners: a port pair each (one host; in production, one address
    // behind a load balancer)
    let ports = free_ports(2 * PER_ROLE);
    let api_ports: Vec<(u16, u16)> = ports.chunks(2).map(|p| (p[0], p[1])).collect();
    let connectors = write_config(
        &config_path,
        &sim,
        kafka.bootstrap(),
        &prefix,
        &old_db.url,
        &processor_group,
        &sink_group,
        api_ports[0],
    );
    let launcher = Launcher::new(
        Path::new(env!("CARGO_BIN_EXE_callsync")),
        &work,
        vec![
            (
                "RUST_LOG".into(),
                "info,rdkafka=warn,librdkafka=warn,sqlx=warn".into(),
            ),
            ("CALLSYNC_CONFIG".into(), config_path.display().to_string()),
            ("OLD_DATABASE_URL".into(), old_db.url.clone()),
            ("NEW_DATABASE_URL".into(), new_db.url.clone()),
        ],
    );
    let mut fleet = Fleet::default();
    fleet.start(
        "connector",
        &scaling_run_line("connector"),
        &launcher,
        PER_ROLE,
    );
    fleet.start("processor", &scaling_run_line("processor"), &launcher, 1);
    fleet.start("sink", &scaling_run_line("sink"), &launcher, 1);
    for (webhooks_port, api_port) in &api_ports {
        fleet.start(
            "api",
            &format!(
                "CALLSYNC__WEBHOOKS__LISTEN=127.0.0.1:{webhooks_port} CALLSYNC__API__LISTEN=127.0.0.1:{api_port} {}",
                scaling_run_line("api")
            ),
            &launcher,
            1,
        );
    }
    timeline.note(format!(
        "started with one config file: {PER_ROLE} connectors, 1 processor, 1 sink, {PER_ROLE} api (webhooks on ports {:?}) (`{}`; logs in {})",
        api_ports.iter().map(|p| p.0).collect::<Vec<_>>(),
        scaling_run_line("processor"),
        work.display()
    ));
    let webhooks = WebhookTraffic::new(
        &accounts,
        &api_ports.iter().map(|p| p.0).collect::<Vec<_>>(),
    );

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
        fleet: Arc::new(Mutex::new(fleet)),
        launcher,
        timeline: timeline.clone(),
        status,
        accounts,
        processor_group,
        sink_group,
        old_db,
        new_db,
        moved: AtomicBool::new(false),
        move_facts: std::sync::Mutex::new(None),
        unclean_stops: std::sync::Mutex::new(Vec::new()),
        injected: std::sync::Mutex::new(Vec::new()),
        calls,
        webhooks,
    });

    // restart a process that stops by itself (as a supervisor would)
    let supervising = Arc::new(AtomicBool::new(true));
    let supervisor = tokio::spawn(supervise(Arc::clone(&run), Arc::clone(&supervising)));

    let late_instant = clock_start + chrono::Duration::seconds((LATE_HOURS * 3600) as i64);
    let mut rng = SeededRng::new(seed);
    let backfill_events = backfill_schedule(&mut rng);
    let late_events = late_schedule(&mut rng);
    let budget = Duration::from_secs(420 + calls / 150);
    let late_phase = Arc::new(AtomicBool::new(false));
    let webhooks_stop = Arc::new(AtomicBool::new(false));
    let webhook_flow = tokio::spawn(send_webhooks(
        Arc::clone(&run),
        clock_start,
        Arc::clone(&late_phase),
        Arc::clone(&webhooks_stop),
    ));
    let main_flow = async {
        // 1. backfill of the whole history, the clock running; the backfill's events are
        //    spread over the filling of the calls table
        run.sim.clock().set_speed(BACKFILL_CLOCK_SPEED);
        let clock_stop = Arc::new(AtomicBool::new(false));
        let clock_guard = tokio::spawn(stop_clock_at(
            Arc::clone(&run),
            late_instant - chrono::Duration::minutes(10),
            Arc::clone(&clock_stop),
        ));
        run.timeline.note(format!(
            "simulated clock runs at {BACKFILL_CLOCK_SPEED}x while the backfill reads"
        ));
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
        let backfill_done = AtomicBool::new(false);
        let syncs = async {
            let fetched = wait_syncs(&run, &ids, "backfill").await;
            backfill_done.store(true, Ordering::SeqCst);
            run.timeline.note(format!(
                "backfill syncs completed: {fetched} records fetched"
            ));
        };
        let faults = drive(
            &run,
            pg,
            &mut rng,
            backfill_events,
            Phase::Backfill,
            &backfill_done,
        );
        tokio::join!(syncs, faults);
        clock_stop.store(true, Ordering::SeqCst);
        let _ = clock_guard.await;

        // 2. the late hours: late conversions, adjustments, corrections, new calls, picked
        //    up by an incremental sync while kills and bursts go on
        run.sim.clock().set_speed(0.0);
        late_phase.store(true, Ordering::SeqCst);
        if run.sim.now() < late_instant {
            run.sim.clock().set(late_instant);
        }
        run.timeline.note(format!(
            "clock stopped at {} ({LATE_HOURS} simulated hours after the start): late changes",
            run.sim.now().to_rfc3339()
        ));
        let mut ids = Vec::new();
        for (provider, account) in &run.accounts {
            ids.push(publish(&publisher, *provider, account, SyncMode::Incremental, None).await);
        }
        let late_done = AtomicBool::new(false);
        let syncs = async {
            let fetched = wait_syncs(&run, &ids, "incremental").await;
            late_done.store(true, Ordering::SeqCst);
            run.timeline.note(format!(
                "incremental syncs completed: {fetched} records fetched"
            ));
        };
        let faults = drive(
            &run,
            pg,
            &mut rng,
            late_events,
            Phase::Late(&ids),
            &late_done,
        );
        tokio::join!(syncs, faults);
        // the webhooks of the late hours not sent yet go out now
        webhooks_stop.store(true, Ordering::SeqCst);
        webhook_flow.await.expect("webhook traffic");
        run.timeline
            .note(format!("webhooks sent: {:?}", run.webhooks.figures()));
    };
    tokio::time::timeout(budget, main_flow)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the run did not finish within {budget:?}\n{}\n{}",
                timeline.render(),
                logs_tail_blocking(&run)
            )
        });
    let as_of = run.sim.now();
    // the reference read: the clock stands still from here, and no fault is on
    let reference_read = {
        let windows: Vec<(Provider, String, DateTime<Utc>, DateTime<Utc>)> = run
            .accounts
            .iter()
            .map(|(p, a)| {
                let info = run.sim.account_info(*p, a).expect("account");
                (
                    *p,
                    a.clone(),
                    info.first_call_at - chrono::Duration::hours(1),
                    as_of + chrono::Duration::seconds(1),
                )
            })
            .collect();
        let connectors = connectors.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let read = reference::read_all(&connectors, &windows).await;
            (read, started.elapsed().as_secs_f64())
        })
    };

    // 3. the ground truth, and waiting until Postgres reaches it
    let truth = tokio::task::spawn_blocking({
        let run = Arc::clone(&run);
        move || Truth::collect(&run)
    })
    .await
    .expect("truth task");
    run.timeline.note(format!(
        "ground truth as of {}: {} calls, {} broken on purpose",
        as_of.to_rfc3339(),
        truth.good.len(),
        truth.bad.len()
    ));
    let settle = Duration::from_secs(120 + calls / 2_000);
    let table = wait_for_table(&run.new_db.pool, &truth, settle).await;
    run.timeline.note(format!(
        "Postgres (the new database): {} rows, checksum {:#018x}",
        table.rows, table.checksum
    ));
    let lags = wait_for_zero_lag(&run, Duration::from_secs(90)).await;
    run.timeline.note(format!("consumer lag: {lags:?}"));
    let dlq = read_dlq(&run).await;
    let calls_topic = read_calls_topic(&run).await;
    supervising.store(false, Ordering::SeqCst);
    let _ = supervisor.await;
    {
        let mut fleet = run.fleet.lock().await;
        for p in fleet.active.iter_mut() {
            p.stop(Duration::from_secs(20)).await;
        }
    }
    follow_shutdown.trigger();
    let _ = follower.await;
    run.timeline.note("roles stopped");

    // 4. every column: the reference read, the rows, the old database after the move
    let (reference, reference_secs) = reference_read.await.expect("reference task");
    let reference = reference.expect("the reference read");
    run.timeline.note(format!(
        "reference read (begun when the late phase ended): {} calls in {reference_secs:.0} s",
        reference.len()
    ));
    let reference_check = compare::check_reference(&reference, &truth.records);
    let rows: Vec<StoredCall> = PgStore::from_pool(run.new_db.pool.clone(), 500)
        .all_calls()
        .await
        .expect("every row of the new database");
    let rules = ReadRules {
        observed_from: run_started,
        observed_to: Utc::now(),
        sources: vec![
            RecordSource::Backfill,
            RecordSource::Poll,
            RecordSource::Webhook,
        ],
        calls_topic: run.settings.topic(names::CALLS),
    };
    let columns = compare::compare_rows(&rows, &reference, &calls_topic.index, &rules);
    let old_after = read_table(&run.old_db.pool).await.ok();

    // 5. the report, then the verdict
    let injected = run.injected.lock().expect("injected").clone();
    let move_facts = run.move_facts.lock().expect("move facts").clone();
    let unclean = run.unclean_stops.lock().expect("stops").clone();
    let verdict = Verdict::judge(Judged {
        truth: &truth,
        table: &table,
        dlq: &dlq,
        injected: &injected,
        duplicates: calls_topic.duplicates,
        lags: &lags,
        reference: &reference_check,
        columns: &columns,
        move_facts: move_facts.as_ref(),
        old_after: old_after.as_ref(),
        unclean_stops: &unclean,
        webhooks: &run.webhooks.figures(),
        webhook_records: calls_topic.webhook_records,
        rows_from_webhooks: rows
            .iter()
            .filter(|r| r.record.source == RecordSource::Webhook)
            .count() as u64,
    });
    let fleet = run.fleet.lock().await;
    let figures = fleet.figures();
    println!(
        "\n## Chaos run: {calls} calls, seed {seed}, {:.0} s\n",
        run.timeline.elapsed().as_secs_f64()
    );
    println!("### Fault timeline\n\n{}", run.timeline.render());
    println!(
        "### Roles\n\n| role | processes | most at once | started (restarts included) | SIGKILLs | stopped by SIGTERM | exits on their own | log lines about a fence |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (role, f) in &figures {
        println!(
            "| {role} | {} | {} | {} | {} | {} | {} | {} |",
            f.processes,
            f.most_at_once,
            f.starts,
            f.kills,
            f.terms,
            f.unplanned_exits,
            f.fence_lines
        );
    }
    println!("\n### Postgres vs ground truth\n\n{}", verdict.render());
    let kills: u32 = figures.values().map(|f| f.kills).sum();
    assert!(kills >= 10, "only {kills} kills happened");
    for role in ROLES {
        assert!(
            figures.get(role).is_some_and(|f| f.kills >= 2),
            "{role} was not killed in both phases"
        );
        assert!(
            figures
                .get(role)
                .is_some_and(|f| f.most_at_once >= PER_ROLE),
            "{role} never ran {PER_ROLE} processes at once"
        );
    }
    assert!(
        verdict.failures.is_empty(),
        "the chaos run differs from the ground truth:\n{}\n\nfirst differences:\n{}",
        verdict.failures.join("\n"),
        verdict.examples.join("\n")
    );
}

/// A database of `pg` for a sink, with durable commits: scripts/postgres.sh runs with
/// synchronous_commit off (fast tests), so a commit is acknowledged before its WAL is
/// written and the crash restart would lose it. The sink's exactly-once rests on durable
/// commits, as in production.
async fn durable_database(pg: &PgServer) -> TestDatabase {
    let db = pg.create_database().await.expect("a chaos database");
    sqlx::query(&format!(
        "ALTER DATABASE \"{}\" SET synchronous_commit = on",
        db.name
    ))
    .execute(&db.pool)
    .await
    .expect("synchronous_commit on");
    db
}

async fn start_simulator(seed: u64, calls: u64) -> RunningSimulator {
    let per_provider = (calls / Provider::ALL.len() as u64).max(100);
    let mut config = SimulatorConfig::for_tests(seed);
    // LATE_HOURS (and a minute) behind the wall clock: the clock never passes the wall
    // clock, and at the late phase it stands LATE_HOURS after its start
    config.clock.start =
        Utc::now() - chrono::Duration::hours(LATE_HOURS as i64) - chrono::Duration::minutes(1);
    config.clock.speed = 0.0;
    for provider in Provider::ALL {
        let p = config.provider_mut(provider);
        p.rate_limits = vec![GENEROUS_LIMIT];
        p.webhooks.share = WEBHOOK_SHARE;
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

/// Every account of the simulator, by provider.
fn run_accounts(sim: &RunningSimulator) -> Vec<(Provider, String)> {
    Provider::ALL
        .iter()
        .flat_map(|&p| sim.accounts(p).into_iter().map(move |a| (p, a)))
        .collect()
}

/// `n` distinct free ports (their listeners held open together, so none is handed out twice).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("its address").port())
        .collect()
}

/// The providers' webhooks for the changes of simulated time as it passes, from `from` on:
/// every second the window since the last one (at most [`WEBHOOK_SLICE`] at once, so the
/// late hours go out spread over the late phase), every fifth window a second time. Once
/// `stop` is set it sends what is left up to the (stopped) clock and returns.
async fn send_webhooks(
    run: Arc<Run>,
    from: DateTime<Utc>,
    late_phase: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) {
    let mut last = from;
    let mut windows = 0u64;
    let mut previous = None;
    loop {
        let now = run.sim.now();
        let phase = if late_phase.load(Ordering::SeqCst) {
            "late phase"
        } else {
            "backfill"
        };
        if now > last {
            let to = (last + WEBHOOK_SLICE).min(now);
            run.webhooks.send(&run.sim, phase, last, to, false).await;
            windows += 1;
            if windows % 5 == 0 {
                if let Some((a, b)) = previous {
                    run.webhooks.send(&run.sim, phase, a, b, true).await;
                }
            }
            previous = Some((last, to));
            last = to;
            if last < now {
                continue;
            }
        } else if stop.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Freezes the simulated clock when it reaches `at` (a slow backfill would otherwise run it
/// past the late instant) or when `stop` is set.
async fn stop_clock_at(run: Arc<Run>, at: DateTime<Utc>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        if run.sim.now() >= at {
            run.sim.clock().set_speed(0.0);
            run.timeline
                .note("simulated clock stopped early (the backfill took long)");
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Writes the one config file of every process; returns its `[connectors]` section (the
/// reference read uses it too).
#[allow(clippy::too_many_arguments)]
fn write_config(
    path: &Path,
    sim: &RunningSimulator,
    bootstrap: &str,
    prefix: &str,
    database_url: &str,
    processor_group: &str,
    sink_group: &str,
    (webhooks_port, api_port): (u16, u16),
) -> serde_json::Value {
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
            // a transaction a killed process left open blocks read_committed readers of its
            // partitions until the broker aborts it; the delivery timeout may not exceed it
            "client_properties": {"transaction.timeout.ms": "20000", "message.timeout.ms": "20000"},
        },
        "topics": {"call_partitions": PARTITIONS},
        "processor": {"group_id": processor_group, "batch_max_time_ms": 100},
        "sink": {"database_url": database_url, "group": sink_group, "batch_max_ms": 200},
        "connectors": connectors,
        // webhooks from every account; the api processes override the listeners' ports
        "webhooks": {
            "listen": format!("127.0.0.1:{webhooks_port}"),
            "accounts": run_accounts(sim).iter().map(|(p, a)| hooks::account_config(*p, a)).collect::<Vec<_>>(),
            // the simulator posts every account from one address, in bursts
            "per_client_requests_per_second": 5000,
            "per_client_burst": 10000,
            "requests_per_second": 2000,
            "burst": 4000,
        },
        "api": {"listen": format!("127.0.0.1:{api_port}"), "lag_interval_secs": 0},
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
    value["connectors"].clone()
}

async fn publish(
    publisher: &KafkaSyncPublisher,
    provider: Provider,
    account: &str,
    mode: SyncMode,
    window: Option<(DateTime<Utc>, DateTime<Utc>)>,
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

/// Records the syncs `ids` fetched so far (their last attempts).
fn fetched_by(run: &Run, ids: &[String]) -> u64 {
    ids.iter()
        .filter_map(|id| run.status.get(id))
        .map(|s| u64::try_from(s.records).unwrap_or(0))
        .sum()
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
        for id in ids {
            let Some(s) = run.status.get(id) else {
                continue;
            };
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
        let total = fetched_by(run, ids);
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

/// Rows in the calls table of the sinks' current database (0 while Postgres is down).
async fn rows_so_far(run: &Run) -> u64 {
    let count: Result<(i64,), _> = sqlx::query_as("SELECT count(*) FROM calls")
        .fetch_one(run.sink_pool())
        .await;
    count.map(|(n,)| n.max(0) as u64).unwrap_or(0)
}

/// Restarts a role process that exited by itself (not one the test killed or stopped).
async fn supervise(run: Arc<Run>, active: Arc<AtomicBool>) {
    while active.load(Ordering::SeqCst) {
        {
            let mut fleet = run.fleet.lock().await;
            for p in fleet.active.iter_mut() {
                if let Some(status) = p.exited() {
                    let why = format!("{} exited by itself ({status}); restarting it", p.name);
                    run.timeline.note(why.clone());
                    eprintln!("--- {} log tail:\n{}", p.name, p.log_tail(15));
                    p.unplanned_exits.push(why);
                    p.start();
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The backfill's events at points of its progress (share of the calls in the sinks'
/// database): the scaling and the move at fixed points, the faults at random ones.
fn backfill_schedule(rng: &mut SeededRng) -> Vec<(f64, Event)> {
    let mut random: Vec<Event> = (0..BACKFILL_KILLS_PER_ROLE * ROLES.len())
        .map(|i| Event::Kill(ROLES[i % ROLES.len()]))
        .collect();
    random.extend([
        Event::BrokerOutage,
        Event::PostgresRestart,
        Event::ServerErrorBurst,
        Event::RateLimitBurst,
        Event::InjectBadRecords,
    ]);
    let mut events: Vec<(f64, Event)> = random
        .into_iter()
        .map(|e| (0.03 + 0.87 * rng.range(0, 10_000) as f64 / 10_000.0, e))
        .collect();
    events.extend([
        (0.12, Event::ScaleOut),
        (0.30, Event::ScaleIn),
        (0.45, Event::MoveDatabase),
    ]);
    events.sort_by(|a, b| a.0.partial_cmp(&b.0).expect("no NaN"));
    events
}

/// The late phase's events at points of the incremental syncs' progress (records fetched,
/// as a share of the calls).
fn late_schedule(rng: &mut SeededRng) -> Vec<(f64, Event)> {
    let mut events: Vec<(f64, Event)> = (0..LATE_KILLS_PER_ROLE * ROLES.len())
        .map(|i| Event::Kill(ROLES[i % ROLES.len()]))
        .chain([Event::ServerErrorBurst, Event::RateLimitBurst])
        .map(|e| (0.05 + 0.5 * rng.range(0, 10_000) as f64 / 10_000.0, e))
        .collect();
    events.sort_by(|a, b| a.0.partial_cmp(&b.0).expect("no NaN"));
    events
}

/// How a phase's progress is measured.
#[derive(Clone, Copy)]
enum Phase<'a> {
    /// Rows in the sinks' database, as a share of the calls.
    Backfill,
    /// Records the incremental syncs `ids` fetched, as a share of the calls.
    Late(&'a [String]),
}

/// Runs `events` in order, each once its phase reached its point and at least 1.5 s after
/// the previous one. Once `phase_done` is set, the rest run without waiting for their points
/// (noted as late).
async fn drive(
    run: &Run,
    pg: &PgServer,
    rng: &mut SeededRng,
    events: Vec<(f64, Event)>,
    phase: Phase<'_>,
    phase_done: &AtomicBool,
) {
    let mut last = Instant::now();
    for (point, event) in events {
        let min_gap = rng.millis(1_500, 4_000);
        loop {
            let progress = match phase {
                Phase::Backfill => rows_so_far(run).await as f64 / run.calls as f64,
                Phase::Late(ids) => fetched_by(run, ids) as f64 / run.calls as f64,
            };
            let reached = progress >= point || phase_done.load(Ordering::SeqCst);
            if reached && last.elapsed() >= min_gap {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        if phase_done.load(Ordering::SeqCst) && matches!(phase, Phase::Late(_)) {
            run.timeline.note(format!(
                "(the incremental syncs had completed before {event:?})"
            ));
        }
        happen(run, pg, rng, event).await;
        last = Instant::now();
    }
    run.timeline.note(match phase {
        Phase::Backfill => "the backfill's events done",
        Phase::Late(_) => "the late phase's events done",
    });
}

async fn happen(run: &Run, pg: &PgServer, rng: &mut SeededRng, event: Event) {
    match event {
        Event::Kill(role) => {
            let mut fleet = run.fleet.lock().await;
            let Some(p) = fleet.pick(role, rng) else {
                run.timeline
                    .note(format!("no running {role} to kill right now"));
                return;
            };
            p.kill().await;
            let name = p.name.clone();
            run.timeline.note(format!("SIGKILL {name}"));
            drop(fleet);
            tokio::time::sleep(rng.millis(200, 2_500)).await;
            let mut fleet = run.fleet.lock().await;
            if let Some(p) = fleet.active.iter_mut().find(|p| p.name == name) {
                if !p.is_running() {
                    p.start();
                    run.timeline.note(format!("{name} restarted"));
                }
            }
        }
        Event::BrokerOutage => {
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
        Event::PostgresRestart => {
            run.timeline
                .note("Postgres: crash restart (pg_ctl stop -m immediate, start)");
            pg.restart(PgStopMode::Immediate)
                .await
                .expect("restart Postgres");
            run.timeline.note("Postgres accepting connections again");
        }
        Event::ServerErrorBurst => {
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
        Event::RateLimitBurst => {
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
        Event::InjectBadRecords => {
            let injected = inject_bad_records(run).await;
            run.timeline.note(format!(
                "{} invalid records produced straight to calls.raw",
                injected.len()
            ));
            run.injected.lock().expect("injected").extend(injected);
        }
        Event::ScaleOut => {
            let mut fleet = run.fleet.lock().await;
            for role in ["processor", "sink"] {
                let more = PER_ROLE.saturating_sub(fleet.count(role));
                let line = fleet
                    .active
                    .iter()
                    .find(|p| p.role == role)
                    .map(|p| p.line.clone())
                    .unwrap_or_else(|| scaling_run_line(role));
                fleet.start(role, &line, &run.launcher, more);
            }
            run.timeline.note(format!(
                "scale out: {PER_ROLE} processors and {PER_ROLE} sinks (processes added with the same line and config)"
            ));
        }
        Event::ScaleIn => {
            for role in ["processor", "sink"] {
                stop_for_good(run, role, 1).await;
            }
            run.timeline
                .note("scale in: 1 processor and 1 sink (the others stopped with SIGTERM)");
        }
        Event::MoveDatabase => move_database(run).await,
    }
}

/// SIGTERMs the newest processes of `role` until `keep` remain, waits for them to drain and
/// exit; a process that does not exit 0 within the grace period is a failure of the run.
async fn stop_for_good(run: &Run, role: &str, keep: usize) {
    let mut stopping = run.fleet.lock().await.take_newest(role, keep);
    for p in stopping.iter_mut() {
        match p.stop(STOP_GRACE).await {
            Some(status) if status.success() => {}
            Some(status) => run.unclean_stops.lock().expect("stops").push(format!(
                "{} exited with {status} after SIGTERM: {}",
                p.name,
                p.log_tail(10)
            )),
            None => run.unclean_stops.lock().expect("stops").push(format!(
                "{} did not exit within {STOP_GRACE:?} of SIGTERM",
                p.name
            )),
        }
    }
    run.fleet.lock().await.retire(stopping);
}

/// docs/operations.md 8.A, "Fill a new database from Kafka", its commands run as written:
/// migrate the new database, `status` (every partition not started), the sinks stopped on
/// the old database and started on the new one, `status --json`. Processors and sinks run
/// three processes each from here.
async fn move_database(run: &Run) {
    let steps = DatabaseMove::from_docs();
    run.timeline.note(format!(
        "database move (docs/operations.md 8.A): `{}`",
        steps.migrate
    ));
    run.launcher
        .run(&steps.migrate)
        .await
        .unwrap_or_else(|e| panic!("moving the database: {e}"));
    let text = run
        .launcher
        .run(&steps.status)
        .await
        .unwrap_or_else(|e| panic!("moving the database: {e}"));
    assert!(
        text.contains("SINK PARTITIONS") && text.matches("not_started").count() >= 1,
        "`{}` on the new database shows no partition to backfill:\n{text}",
        steps.status
    );
    stop_for_good(run, "sink", 0).await;
    let old = read_table(&run.old_db.pool)
        .await
        .expect("the old database after its sinks stopped");
    run.moved.store(true, Ordering::SeqCst);
    run.fleet
        .lock()
        .await
        .start("sink", &steps.run_sink, &run.launcher, PER_ROLE);
    {
        let mut fleet = run.fleet.lock().await;
        let more = PER_ROLE.saturating_sub(fleet.count("processor"));
        fleet.start(
            "processor",
            &scaling_run_line("processor"),
            &run.launcher,
            more,
        );
    }
    run.timeline.note(format!(
        "sinks stopped on the old database ({} rows); {PER_ROLE} sinks started with `{}`, processors back to {PER_ROLE}",
        old.rows, steps.run_sink
    ));
    let mut states = BTreeMap::new();
    match run.launcher.run(&steps.status_json).await {
        Ok(text) => {
            let status: serde_json::Value =
                serde_json::from_str(&text).expect("`status --json` prints JSON");
            for p in status["sink"]["partitions"]
                .as_array()
                .into_iter()
                .flatten()
            {
                *states
                    .entry(p["state"].as_str().unwrap_or("?").to_string())
                    .or_insert(0usize) += 1;
            }
        }
        Err(e) => panic!("moving the database: {e}"),
    }
    run.timeline.note(format!(
        "`{}`: sink partitions {states:?}",
        steps.status_json
    ));
    *run.move_facts.lock().expect("move facts") = Some(MoveFacts {
        old_rows: old.rows,
        old_checksum: old.checksum,
        states_after: states,
    });
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

/// The ground truth: every good call's newest version, and the calls broken on purpose.
struct Truth {
    /// Call key -> checksum over key, version, status, revenue.
    good: HashMap<String, u64>,
    /// Call key -> the whole truth record (every field the simulator knows).
    records: HashMap<String, TruthRecord>,
    checksum: u64,
    bad: Vec<(String, BadRecordKind)>,
}

impl Truth {
    fn collect(run: &Run) -> Truth {
        let mut good = HashMap::new();
        let mut records = HashMap::new();
        let mut checksum = 0u64;
        let mut bad = Vec::new();
        for (provider, account) in &run.accounts {
            for t in run.sim.truth(*provider, account, None).expect("truth") {
                match t.bad {
                    Some(kind) => bad.push((t.call_key.clone(), kind)),
                    None => {
                        let c = t.checksum();
                        checksum = checksum.wrapping_add(c);
                        good.insert(t.call_key.clone(), c);
                        records.insert(t.call_key.clone(), t);
                    }
                }
            }
        }
        Truth {
            good,
            records,
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

/// The committed records of `calls`: where each one sits (for the rows' Kafka coordinates),
/// and the (key, version) pairs written more than once (what exactly-once forbids).
struct CallsTopic {
    index: CallsIndex,
    duplicates: u64,
    /// Records that came from a webhook (partial records).
    webhook_records: u64,
}

async fn read_calls_topic(run: &Run) -> CallsTopic {
    let factory = run.factory.clone();
    let topic = run.settings.topic(names::CALLS);
    tokio::task::spawn_blocking(move || {
        // exactly once: a (key, version, content) twice; one version may carry two contents
        // (a webhook's partial record and a poll's complete one), ordered by fingerprint
        let mut seen: HashSet<(String, i64, ContentFingerprint)> = HashSet::new();
        let mut index = CallsIndex::new();
        let mut duplicates = 0u64;
        let mut webhook_records = 0u64;
        read_topic_to_end(&factory, &topic, |m| {
            let record: CallRecord = decode_call_record(m.payload().unwrap_or_default())
                .expect("a calls record decodes");
            let entry = CallsEntry::of(&record);
            if record.source == RecordSource::Webhook {
                webhook_records += 1;
            }
            let first = seen.insert((entry.key.clone(), entry.version, entry.fingerprint));
            index.insert((m.partition(), m.offset()), entry);
            if !first {
                duplicates += 1;
            }
        });
        CallsTopic {
            index,
            duplicates,
            webhook_records,
        }
    })
    .await
    .expect("calls task")
}

/// What the verdict weighs.
struct Judged<'a> {
    truth: &'a Truth,
    table: &'a Table,
    dlq: &'a [DlqEntry],
    injected: &'a ExpectedDlq,
    duplicates: u64,
    lags: &'a BTreeMap<String, (i64, i64)>,
    reference: &'a ReferenceCheck,
    columns: &'a ColumnReport,
    move_facts: Option<&'a MoveFacts>,
    old_after: Option<&'a Table>,
    unclean_stops: &'a [String],
    webhooks: &'a BTreeMap<&'static str, hooks::Sent>,
    webhook_records: u64,
    /// Rows whose last record was a webhook's.
    rows_from_webhooks: u64,
}

/// The comparison, and what failed.
struct Verdict {
    rows: Vec<(String, String, String)>,
    failures: Vec<String>,
    examples: Vec<String>,
}

impl Verdict {
    fn judge(j: Judged<'_>) -> Verdict {
        let (truth, table) = (j.truth, j.table);
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
                        let t = truth.records.get(key);
                        examples.push(format!(
                            "lost: {key} {:?}",
                            t.map(|t| (t.index, t.started_at, t.stage))
                        ));
                    }
                }
                Some(got) if got != want => {
                    stale += 1;
                    if examples.len() < 10 {
                        let t = truth.records.get(key);
                        examples.push(format!(
                            "other version/status/revenue: {key} {:?}",
                            t.map(|t| (t.index, t.started_at, t.stage))
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
        let mut processor_dlq: Vec<(String, String)> = j
            .dlq
            .iter()
            .filter(|e| e.stage != "connector")
            .map(|e| (e.key.clone(), e.reason.clone()))
            .collect();
        processor_dlq.sort();
        let mut want_processor = j.injected.clone();
        want_processor.sort();
        let connector_dlq: Vec<&DlqEntry> =
            j.dlq.iter().filter(|e| e.stage == "connector").collect();
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
        examples.extend(
            j.reference
                .fields
                .examples
                .iter()
                .take(30)
                .map(|e| format!("reference vs truth: {e}")),
        );
        examples.extend(
            j.columns
                .examples
                .iter()
                .take(40)
                .map(|e| format!("row vs reference: {e}")),
        );
        examples.extend(j.unclean_stops.iter().cloned());

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
        check(
            j.reference.missing == 0 && j.reference.unexpected == 0,
            format!(
                "the reference read misses {} calls of the truth and has {} it has not",
                j.reference.missing, j.reference.unexpected
            ),
        );
        check(
            j.reference.fields.total() == 0,
            format!(
                "the reference read differs from the truth in {} fields (per provider {:?})",
                j.reference.fields.total(),
                j.reference.by_provider
            ),
        );
        check(
            j.columns.compared == truth.good.len() as u64,
            format!(
                "{} of {} rows compared column by column",
                j.columns.compared,
                truth.good.len()
            ),
        );
        for (column, n) in &j.columns.differing {
            check(*n == 0, format!("{n} rows differ in {column}"));
        }
        check(
            j.duplicates == 0,
            format!("{} duplicates in calls", j.duplicates),
        );
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
        for (group, (records, _)) in j.lags {
            check(
                *records == 0,
                format!("{group} has {records} records left to consume"),
            );
        }
        match (j.move_facts, j.old_after) {
            (Some(m), Some(old)) => check(
                old.rows == m.old_rows && old.checksum == m.old_checksum,
                format!(
                    "the old database changed after its sinks stopped: {} rows then, {} now",
                    m.old_rows, old.rows
                ),
            ),
            _ => check(false, "the database move did not happen".into()),
        }
        for phase in ["backfill", "late phase"] {
            let delivered = j.webhooks.get(phase).map_or(0, |w| w.first.delivered);
            check(
                delivered > 0,
                format!("no webhook was delivered in the {phase}"),
            );
        }
        check(
            j.webhook_records > 0,
            "no webhook record reached `calls`".into(),
        );
        check(
            j.unclean_stops.is_empty(),
            format!(
                "{} processes did not stop cleanly on SIGTERM",
                j.unclean_stops.len()
            ),
        );

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
                "reference read: calls (missing / not in the truth)".into(),
                n(truth.good.len() as u64),
                format!(
                    "{} ({} / {})",
                    j.reference.fields.compared, j.reference.missing, j.reference.unexpected
                ),
            ),
            (
                format!(
                    "reference read vs truth: field differences over {} fields",
                    compare::TRUTH_FIELDS.len()
                ),
                n(0),
                n(j.reference.fields.total()),
            ),
            (
                format!(
                    "reference read vs truth: not compared: {}",
                    compare::NOT_COMPARED.join("; ")
                ),
                "-".into(),
                "-".into(),
            ),
            (
                format!(
                    "rows compared column by column ({} columns)",
                    compare::ROW_COLUMNS.len()
                ),
                n(truth.good.len() as u64),
                n(j.columns.compared),
            ),
        ];
        for (column, differing) in &j.columns.differing {
            rows.push((format!("rows differing in `{column}`"), n(0), n(*differing)));
        }
        rows.extend([
            (
                "duplicated (same key, version and content twice in `calls`)".into(),
                n(0),
                n(j.duplicates),
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
        ]);
        if let (Some(m), Some(old)) = (j.move_facts, j.old_after) {
            rows.push((
                "old database: rows when its sinks stopped / at the end".into(),
                n(m.old_rows),
                n(old.rows),
            ));
            rows.push((
                "new database: sink partitions right after the move".into(),
                "-".into(),
                format!("{:?}", m.states_after),
            ));
        }
        for (phase, w) in j.webhooks {
            rows.push((
                format!(
                    "webhooks, {phase}: windows of simulated time sent; webhooks due / delivered / failed (attempts)"
                ),
                "-".into(),
                format!(
                    "{}; {} / {} / {} ({})",
                    w.windows, w.first.events, w.first.delivered, w.first.failed, w.first.attempts
                ),
            ));
            rows.push((
                format!("webhooks, {phase}: sent a second time, due / delivered / failed"),
                "-".into(),
                format!(
                    "{} / {} / {}",
                    w.again.events, w.again.delivered, w.again.failed
                ),
            ));
        }
        rows.push((
            "webhook records in `calls` (partial records)".into(),
            "> 0".into(),
            n(j.webhook_records),
        ));
        rows.push((
            "rows last applied from a webhook (compared like the others)".into(),
            "-".into(),
            n(j.rows_from_webhooks),
        ));
        rows.push((
            "processes stopped by SIGTERM that did not exit 0".into(),
            n(0),
            n(j.unclean_stops.len() as u64),
        ));
        for (group, (records, offsets)) in j.lags {
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
            "\nverdict: Postgres equals the ground truth in every column: zero lost, zero duplicated\n"
        } else {
            "\nverdict: DIFFERS (see the failures)\n"
        });
        out
    }
}

fn logs_tail_blocking(run: &Run) -> String {
    match run.fleet.try_lock() {
        Ok(fleet) => fleet
            .active
            .iter()
            .map(|p: &RoleProcess| {
                format!(
                    "--- {} ({}):\n{}",
                    p.name,
                    p.log_path().display(),
                    p.log_tail(20)
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Err(_) => "(role logs busy)".into(),
    }
}

/// The comparison the verdict rests on can fail, column by column: a row equal to its
/// reference passes, and a row changed in any one column is reported in that column and
/// only there (no service needed; it runs in the suite's main lane).
#[test]
fn a_row_differing_in_any_one_column_is_reported_in_that_column() {
    use std::collections::BTreeMap as Map;
    let observed: DateTime<Utc> = "2026-01-02T03:04:05.123456Z".parse().expect("time");
    let reference = CallRecord {
        provider: Provider::Retreaver,
        account_id: "acct".into(),
        call_id: "call-1".into(),
        version: 1_700_000_000_000_000,
        started_at: "2026-01-01T10:00:00Z".parse().expect("time"),
        answered_at: Some("2026-01-01T10:00:05Z".parse().expect("time")),
        ended_at: Some("2026-01-01T10:03:00Z".parse().expect("time")),
        duration_secs: Some(180),
        billable_secs: Some(175),
        caller_number: Some("+14155550100".into()),
        tracking_number: Some("+18005550100".into()),
        destination_number: Some("+12125550100".into()),
        campaign_id: Some("c1".into()),
        campaign_name: Some("Campaign".into()),
        publisher_id: Some("p1".into()),
        publisher_name: Some("Publisher".into()),
        buyer_id: Some("b1".into()),
        buyer_name: Some("Buyer".into()),
        status: callsync_schemas::CallStatus::Completed,
        provider_status: Some("finished".into()),
        converted: Some(true),
        revenue: Some(Decimal::new(1250, 2)),
        payout: Some(Decimal::new(500, 2)),
        currency: Some("USD".into()),
        recording_url: Some("https://example.com/r.mp3".into()),
        tags: Map::from([("geo".to_string(), "CA".to_string())]),
        source: RecordSource::Backfill,
        observed_at: observed,
        provider_updated_at: Some("2026-01-01T10:03:00Z".parse().expect("time")),
        raw: Some(br#"{"uuid":"call-1"}"#.to_vec()),
        present_fields: None,
    };
    let topic = "chaos.calls";
    let mut calls = CallsIndex::new();
    let entry = CallsEntry::of;
    calls.insert((2, 40), entry(&reference));
    let mut older = reference.clone();
    older.version -= 1;
    older.revenue = None;
    calls.insert((2, 41), entry(&older));
    // a row applied last from a webhook (a partial record of a newer version): that record's
    // version and body, the fields merged from every record still the provider's
    let mut hook = reference.clone();
    hook.version += 1_000_000;
    hook.source = RecordSource::Webhook;
    hook.raw = Some(br#"{"call_id":"call-1","status":"completed"}"#.to_vec());
    let hook = hook.into_partial(callsync_schemas::FieldSet::EMPTY.with(CallField::Raw));
    calls.insert((2, 42), entry(&hook));
    let at = |partition: i32, offset: i64| RowOrigin {
        topic,
        partition,
        offset,
        fingerprint: calls
            .get(&(partition, offset))
            .map_or(ContentFingerprint::of(&reference), |e| e.fingerprint),
    };
    let rules = ReadRules {
        observed_from: observed - chrono::Duration::hours(1),
        observed_to: observed + chrono::Duration::hours(1),
        sources: vec![RecordSource::Backfill, RecordSource::Poll],
        calls_topic: topic.into(),
    };
    let found = |row: &CallRecord, origin: RowOrigin<'_>| -> Vec<&'static str> {
        compare::row_differences(row, origin, &reference, &calls, &rules)
            .into_iter()
            .map(|(column, _)| column)
            .collect()
    };
    assert_eq!(found(&reference, at(2, 40)), Vec::<&str>::new());

    type Change = fn(&mut CallRecord);
    let changes: Vec<(&str, Change)> = vec![
        ("provider", |r| r.provider = Provider::TrackDrive),
        ("account_id", |r| r.account_id.push('x')),
        ("call_id", |r| r.call_id.push('x')),
        ("started_at", |r| {
            r.started_at += chrono::Duration::seconds(1)
        }),
        ("answered_at", |r| r.answered_at = None),
        ("ended_at", |r| r.ended_at = None),
        ("duration_secs", |r| r.duration_secs = Some(181)),
        ("billable_secs", |r| r.billable_secs = None),
        ("caller_number", |r| r.caller_number = None),
        ("tracking_number", |r| r.tracking_number = None),
        ("destination_number", |r| r.destination_number = None),
        ("campaign_id", |r| r.campaign_id = None),
        ("campaign_name", |r| r.campaign_name = None),
        ("publisher_id", |r| r.publisher_id = None),
        ("publisher_name", |r| r.publisher_name = None),
        ("buyer_id", |r| r.buyer_id = None),
        ("buyer_name", |r| r.buyer_name = None),
        ("status", |r| r.status = callsync_schemas::CallStatus::Busy),
        ("provider_status", |r| r.provider_status = None),
        ("converted", |r| r.converted = Some(false)),
        ("revenue", |r| r.revenue = Some(Decimal::new(1251, 2))),
        ("payout", |r| r.payout = None),
        ("currency", |r| r.currency = Some("EUR".into())),
        ("recording_url", |r| r.recording_url = None),
        ("tags", |r| r.tags.clear()),
        ("source", |r| r.source = RecordSource::Webhook),
        ("observed_at", |r| {
            r.observed_at += chrono::Duration::days(1)
        }),
        ("provider_updated_at", |r| r.provider_updated_at = None),
        ("raw", |r| r.raw = Some(br#"{"uuid":"call-2"}"#.to_vec())),
    ];
    let mut exercised: HashSet<&str> = HashSet::new();
    for (column, change) in changes {
        exercised.insert(column);
        let mut row = reference.clone();
        change(&mut row);
        let mut got = found(&row, at(2, 40));
        // a changed key no longer matches the record its Kafka coordinates point at
        got.retain(|c| *c != "kafka_topic, kafka_partition, kafka_offset");
        assert_eq!(got, vec![column], "a row changed in {column}");
    }
    // the version: another version, and coordinates of another record or topic
    let mut row = reference.clone();
    row.version -= 1;
    assert_eq!(found(&row, at(2, 41)), vec!["version"], "another version");
    assert_eq!(
        found(&reference, at(2, 41)),
        vec!["kafka_topic, kafka_partition, kafka_offset"]
    );
    assert_eq!(
        found(&reference, at(3, 40)),
        vec!["kafka_topic, kafka_partition, kafka_offset"]
    );
    assert_eq!(
        found(
            &reference,
            RowOrigin {
                topic: "other.calls",
                ..at(2, 40)
            }
        ),
        vec!["kafka_topic, kafka_partition, kafka_offset"]
    );
    // the fingerprint of another record than the one at the row's coordinates
    assert_eq!(
        found(
            &reference,
            RowOrigin {
                fingerprint: ContentFingerprint::of(&older),
                ..at(2, 40)
            }
        ),
        vec!["fingerprint"]
    );
    // a partial row (no record has carried its start yet)
    let mut row = reference.clone();
    row.present_fields = Some(callsync_schemas::FieldSet::ALL);
    assert_eq!(
        found(&row, at(2, 40)),
        vec!["present_fields (none: a complete row)"]
    );
    exercised.extend([
        "version",
        "kafka_topic, kafka_partition, kafka_offset",
        "fingerprint",
        "present_fields (none: a complete row)",
    ]);
    let mut row = reference.clone();
    row.version = hook.version;
    row.source = RecordSource::Webhook;
    row.raw.clone_from(&hook.raw);
    let webhook_rules = ReadRules {
        sources: vec![RecordSource::Poll, RecordSource::Webhook],
        ..rules.clone()
    };
    let from_hook = |row: &CallRecord| -> Vec<&'static str> {
        compare::row_differences(row, at(2, 42), &reference, &calls, &webhook_rules)
            .into_iter()
            .map(|(column, _)| column)
            .collect()
    };
    assert_eq!(from_hook(&row), Vec::<&str>::new());
    let mut other_body = row.clone();
    other_body.raw = reference.raw.clone();
    assert_eq!(
        from_hook(&other_body),
        vec!["raw"],
        "not the webhook's body"
    );
    let mut merged_wrong = row.clone();
    merged_wrong.buyer_id = None;
    assert_eq!(
        from_hook(&merged_wrong),
        vec!["buyer_id"],
        "a field the webhook did not carry, lost"
    );
    // a provider whose version is the time it read the call: the version must be observed_at
    let ringba = CallRecord {
        provider: Provider::Ringba,
        version: observed.timestamp_micros(),
        ..reference.clone()
    };
    let mut calls = CallsIndex::new();
    calls.insert((0, 7), entry(&ringba));
    let at = RowOrigin {
        topic,
        partition: 0,
        offset: 7,
        fingerprint: ContentFingerprint::of(&ringba),
    };
    assert!(compare::row_differences(&ringba, at, &ringba, &calls, &rules).is_empty());
    let mut row = ringba.clone();
    row.observed_at += chrono::Duration::milliseconds(1);
    let got: Vec<&str> = compare::row_differences(&row, at, &ringba, &calls, &rules)
        .into_iter()
        .map(|(c, _)| c)
        .collect();
    assert_eq!(got, vec!["version"], "a version that is not observed_at");
    // every column the verdict lists was changed above
    let listed: HashSet<&str> = compare::ROW_COLUMNS.iter().copied().collect();
    assert_eq!(exercised, listed);
}
