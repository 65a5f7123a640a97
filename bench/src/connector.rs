//! `connector`: two figures.
//!
//! 1. Backfills against the simulator at a ceiling of 600 requests/min, the account
//!    configured with that ceiling and its default share of it: requests/min and records/min
//!    against the configured share (requests/min, and requests/min x page size), with the
//!    429s counted. Twice: Retreaver on a budget of its own (share 97%), and Ringba on a
//!    budget a second consumer spends 30% of (share 50%). In this process with a counting
//!    store (`--seconds` each).
//! 2. Peak RSS of the connector role through a backfill of `--calls` calls (default 1M):
//!    the real `callsync run --roles connector` process against the simulator and the real
//!    broker, its `VmHWM` read from /proc, so the benchmark's own clients are not counted.
//!    [`backfill_through_process`] is shared with the `pipeline` benchmark (all roles).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use callsync_connectors::ConnectorsConfig;
use callsync_runtime::{
    ensure_catalogue, names, CatalogueOptions, Isolation, KafkaClientFactory, KafkaSettings,
};
use callsync_schemas::{Provider, RecordDecoder, SyncEvent, SyncEventKind, SyncMode, SyncRequest};
use callsync_simulator::{RateLimitRule, Simulator, SimulatorConfig};
use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Serialize;
use serde_json::json;

use crate::measurement_window::{Conditions, MeasurementWindow};
use crate::report::{BenchOutcome, Figure};
use crate::services::{self, BenchProcess, OwnPostgres};
use crate::{proc_usage, sink_drain};

const CEILING_PER_MINUTE: u32 = 600;
const PAGE_SIZE: u32 = 100;
/// Calls of the memory run unless `--calls` says otherwise.
pub const DEFAULT_MEMORY_CALLS: u64 = 1_000_000;
const MIB: f64 = 1024.0 * 1024.0;

pub async fn run(seconds: u64, calls: u64) -> anyhow::Result<BenchOutcome> {
    let plain = ceiling_share(Provider::Retreaver, seconds).await?;
    let shared = ceiling_share(Provider::Ringba, seconds).await?;
    let mem = backfill_through_process(calls, Roles::Connector, None).await?;
    let rss_mib = mem.peak_rss_bytes as f64 / MIB;
    let mut figures = Vec::new();
    for (label, share) in [
        ("Retreaver, its own budget", &plain),
        ("Ringba, a budget 30% spent by another consumer", &shared),
    ] {
        let records_target = (share.target_per_minute * f64::from(PAGE_SIZE)).max(1e-9);
        figures.push(Figure {
            benchmark: "connector".into(),
            name: format!(
                "backfill requests/min vs the configured share ({:.0}% of {CEILING_PER_MINUTE} req/min), {label}, {} requests",
                share.configured_share * 100.0,
                share.requests
            ),
            target: ">= 95% of the configured share, zero 429s".into(),
            measured: format!(
                "{:.0}/min, {} x 429",
                share.requests_per_minute, share.rate_limited
            ),
            baseline: format!("{:.0}/min", share.target_per_minute),
            ratio: Some(share.target_share),
            met: Some(share.target_share >= 0.95 && share.rate_limited == 0),
        });
        figures.push(Figure {
            benchmark: "connector".into(),
            name: format!(
                "backfill records/min vs the configured share x {PAGE_SIZE}, {label}, {} records",
                share.records
            ),
            target: ">= 95% of the configured share, zero 429s".into(),
            measured: format!(
                "{:.0}/min, {} x 429",
                share.records_per_minute, share.rate_limited
            ),
            baseline: format!("{records_target:.0}/min"),
            ratio: Some(share.records_per_minute / records_target),
            met: Some(share.records_per_minute >= 0.95 * records_target && share.rate_limited == 0),
        });
    }
    figures.push(Figure {
        benchmark: "connector".into(),
        name: format!(
            "peak RSS of `callsync run --roles connector` through a {}-call backfill",
            mem.calls
        ),
        target: "< 128 MiB (1M-call backfill)".into(),
        measured: format!(
            "{rss_mib:.0} MiB ({} records in {:.0} s, {:.0}/s)",
            mem.records,
            mem.secs,
            mem.records as f64 / mem.secs.max(1e-9)
        ),
        baseline: "-".into(),
        ratio: None,
        met: Some(rss_mib < 128.0 && mem.calls >= DEFAULT_MEMORY_CALLS),
    });
    let run_json = |r: &callsync_connectors::bench::ConnectorBenchReport| {
        json!({
            "provider": r.provider.as_str(),
            "records": r.records,
            "requests": r.requests,
            "rate_limited": r.rate_limited,
            "elapsed_secs": r.elapsed.as_secs_f64(),
            "requests_per_minute": r.requests_per_minute,
            "ceiling_per_minute": r.ceiling_per_minute,
            "ceiling_share": r.ceiling_share,
            "configured_share": r.configured_share,
            "target_per_minute": r.target_per_minute,
            "target_share": r.target_share,
            "records_per_minute": r.records_per_minute,
            "records_target_share": r.records_per_minute
                / (r.target_per_minute * f64::from(PAGE_SIZE)).max(1e-9),
        })
    };
    Ok(BenchOutcome {
        name: "connector".into(),
        figures,
        json: json!({
            "own_budget": run_json(&plain),
            "shared_budget": run_json(&shared),
            "memory_run_calls": mem.calls,
            "memory_run_records": mem.records,
            "memory_run_secs": mem.secs,
            "connector_role_peak_rss_bytes": mem.peak_rss_bytes,
        }),
        conditions: None,
    })
}

/// An in-process backfill at a ceiling of 600 requests/min, the account configured with the
/// ceiling and its default share: Retreaver alone on its budget; Ringba with a second
/// consumer spending 30% of every window (the simulator counts only our 429s).
async fn ceiling_share(
    provider: Provider,
    seconds: u64,
) -> anyhow::Result<callsync_connectors::bench::ConnectorBenchReport> {
    // enough calls that the run is bounded by the rate limit, not by the data
    let pages = (u64::from(CEILING_PER_MINUTE) * seconds / 60).max(10);
    let calls = pages * u64::from(PAGE_SIZE);
    let sim =
        Simulator::start(SimulatorConfig::for_tests(11).with_accounts(provider, 1, calls + 1_000))
            .await
            .context("starting the simulator")?;
    sim.set_rate_limits(
        provider,
        vec![RateLimitRule::new(CEILING_PER_MINUTE, 60)],
        false,
    )
    .map_err(|e| anyhow::anyhow!("setting the simulator's rate limit: {e}"))?;
    if provider == Provider::Ringba {
        sim.set_shared_consumer(provider, 0.3)
            .map_err(|e| anyhow::anyhow!("setting the second consumer: {e}"))?;
    }
    let account = sim
        .accounts(provider)
        .first()
        .cloned()
        .with_context(|| format!("the simulator has no {provider} account"))?;
    let info = sim
        .account_info(provider, &account)
        .context("simulator account info")?;
    let rate_limit = json!({"per_minute": CEILING_PER_MINUTE, "max_concurrency": 4});
    let account_config = match provider {
        Provider::Retreaver => json!({
            "account": account,
            "api_key": info.credentials.api_key,
            "company_id": account,
            "per_page": PAGE_SIZE,
            "base_url": sim.base_url(provider),
            "rate_limit": rate_limit,
        }),
        _ => json!({
            "account": account,
            "token": info.credentials.api_key,
            "page_size": PAGE_SIZE,
            "base_url": sim.base_url(provider),
            "rate_limit": rate_limit,
        }),
    };
    let mut config = json!({"sync": {"backfill_window_secs": 3600 * 6, "backfill_concurrency": 4}});
    config[provider.as_str()] = json!([account_config]);
    let config: ConnectorsConfig =
        serde_json::from_value(config).context("connector benchmark config")?;
    let start = info.first_call_at;
    let end = start + chrono::Duration::milliseconds(info.call_interval_ms * calls as i64);
    let request = SyncRequest {
        id: format!("bench-connector-{}", uuid::Uuid::new_v4().simple()),
        provider,
        account_id: account,
        mode: SyncMode::Backfill,
        window_start: Some(start),
        window_end: Some(end),
        requested_at: Utc::now(),
        requested_by: "bench".to_string(),
        attempt: 1,
        not_before: None,
    };
    let r = callsync_connectors::bench::connector_benchmark(
        &config,
        &request,
        f64::from(CEILING_PER_MINUTE),
        PAGE_SIZE,
    )
    .await?;
    eprintln!("bench: {r}");
    Ok(r)
}

/// Which roles the measured process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Roles {
    /// `callsync run --roles connector`.
    Connector,
    /// `callsync run` (every role), with a Postgres database for the sink.
    All,
}

/// What a backfill through a separate `callsync` process measured.
#[derive(Debug, Clone)]
pub struct ProcessBackfill {
    pub calls: u64,
    /// Records the sync reported in its `completed` event.
    pub records: u64,
    /// Connector: the sync's `started` to `completed` events. All roles: `started` to every
    /// call being in Postgres.
    pub secs: f64,
    /// `VmHWM` of the callsync process.
    pub peak_rss_bytes: u64,
    /// All roles: rows in `calls` at the end.
    pub rows: Option<u64>,
    /// All roles: the process started again on the same topics, until its processor restored
    /// the dedup state the backfill wrote.
    pub restart: Option<RestartRestore>,
    /// CPU of every process of the pipeline from the enqueue to the end of the measurement.
    pub cpu: CpuBudget,
}

/// The CPU seconds the backfill cost, per process, from its enqueue until every call was in
/// Postgres (all roles) or the sync completed (connector), read from /proc.
#[derive(Debug, Clone, Serialize)]
pub struct CpuBudget {
    /// the `callsync` process (every role it runs)
    pub callsync: f64,
    pub broker: Option<f64>,
    /// the benchmark's own Postgres cluster (postmaster and every backend)
    pub postgres: Option<f64>,
    /// this process: the simulated provider API serving the pages, and the benchmark's own
    /// watchers
    pub simulator_and_driver: f64,
    pub conditions: Conditions,
}

impl CpuBudget {
    pub fn total(&self) -> f64 {
        self.callsync
            + self.broker.unwrap_or(0.0)
            + self.postgres.unwrap_or(0.0)
            + self.simulator_and_driver
    }
}

/// CPU seconds so far of the processes a backfill measures.
struct CpuMarks {
    callsync: f64,
    broker: Option<f64>,
    postgres: Option<f64>,
    this_process: f64,
}

impl CpuMarks {
    fn read(callsync: &BenchProcess, broker: Option<u32>, postmaster: Option<u32>) -> Self {
        CpuMarks {
            callsync: callsync.cpu_secs(),
            broker: broker.and_then(proc_usage::cpu_secs),
            postgres: postmaster.and_then(proc_usage::tree_cpu_secs),
            this_process: proc_usage::cpu_secs(std::process::id()).unwrap_or(0.0),
        }
    }
}

fn cpu_budget(
    window: MeasurementWindow,
    start: &CpuMarks,
    end: &CpuMarks,
    pids: (u32, Option<u32>, Option<u32>),
) -> CpuBudget {
    let delta = |e: Option<f64>, s: Option<f64>| Some((e? - s?).max(0.0));
    let callsync = (end.callsync - start.callsync).max(0.0);
    let broker = delta(end.broker, start.broker);
    let postgres = delta(end.postgres, start.postgres);
    let simulator_and_driver = (end.this_process - start.this_process).max(0.0);
    let mut measured = vec![
        ("callsync", Some(pids.0), callsync),
        (
            "simulator + benchmark driver",
            Some(std::process::id()),
            simulator_and_driver,
        ),
    ];
    if let Some(cpu) = broker {
        measured.push(("kafka broker", pids.1, cpu));
    }
    if let Some(cpu) = postgres {
        measured.push(("postgres", pids.2, cpu));
    }
    CpuBudget {
        callsync,
        broker,
        postgres,
        simulator_and_driver,
        conditions: window.close(&measured),
    }
}

/// A restart of the all-roles process that restores the dedup state of the whole backfill.
#[derive(Debug, Clone, Copy)]
pub struct RestartRestore {
    /// Keys the processor reported restored.
    pub keys: u64,
    /// From the process's start until the last restore was logged.
    pub secs: f64,
    /// `VmHWM` of the restarted process.
    pub peak_rss_bytes: u64,
}

/// Keys in the processor's "dedup state restored" log lines of `log` so far.
fn restored_keys(log: &Path) -> u64 {
    let Ok(text) = std::fs::read_to_string(log) else {
        return 0;
    };
    text.lines()
        .filter(|l| l.contains("dedup state restored"))
        .filter_map(|l| {
            let at = l.find("keys")? + "keys".len();
            let digits: String = l[at..]
                .trim_start_matches(['=', '"', ':'])
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse::<u64>().ok()
        })
        .sum()
}

/// Backfills a simulated Ringba account of `calls` calls (pages of 1000, no rate limit)
/// through a `callsync run` process of `roles`, and reads that process's peak RSS.
pub async fn backfill_through_process(
    calls: u64,
    roles: Roles,
    postgres: Option<&OwnPostgres>,
) -> anyhow::Result<ProcessBackfill> {
    let provider = Provider::Ringba;
    let sim = Simulator::start(SimulatorConfig::for_tests(13).with_accounts(provider, 1, calls))
        .await
        .context("starting the simulator")?;
    let account = sim
        .accounts(provider)
        .first()
        .cloned()
        .context("the simulator has no Ringba account")?;
    let info = sim
        .account_info(provider, &account)
        .context("simulator account info")?;

    let bootstrap = services::kafka_bootstrap()?;
    let prefix = format!("bench-roles-{}.", uuid::Uuid::new_v4().simple());
    let mut settings = KafkaSettings::plaintext(&bootstrap);
    settings.topic_prefix = prefix.clone();
    let factory = KafkaClientFactory::new(settings.clone());
    let partitions = 4;
    let options = CatalogueOptions {
        call_partitions: partitions,
        calls_retention_days: 1,
    };
    ensure_catalogue(&factory, &options, Duration::from_secs(60)).await?;

    let db = match roles {
        Roles::All => Some(
            postgres
                .context("the all-roles backfill needs the benchmark's own Postgres")?
                .database()
                .await?,
        ),
        Roles::Connector => None,
    };
    let broker_pid = proc_usage::port_of(&bootstrap).and_then(proc_usage::pid_listening_on);
    let postmaster = postgres.and_then(|p| p.postmaster);
    let dir = tempfile::tempdir().context("temp dir")?;
    let config_path = dir.path().join("callsync.toml");
    let sink = db.as_ref().map_or(String::new(), |db| {
        format!(
            "[sink]\ndatabase_url = {:?}\ngroup = \"{prefix}sink\"\n",
            db.url
        )
    });
    let toml = format!(
        r#"[kafka]
bootstrap_servers = {bootstrap:?}
topic_prefix = {prefix:?}

[topics]
call_partitions = {partitions}

[log]
filter = "warn"

[api]
listen = "127.0.0.1:0"

[processor]
group_id = "{prefix}processor"

{sink}
[workers]
group_id = "{prefix}workers"

[connectors.sync]
transactional_id_prefix = "{prefix}connector"

[[connectors.ringba]]
account = {account:?}
token = {token:?}
base_url = {base:?}
page_size = 1000

[connectors.ringba.rate_limit]
per_minute = 60000
max_concurrency = 4

[[scheduler.accounts]]
provider = "ringba"
account_id = {account:?}
full = "off"
incremental = "off"
"#,
        token = info.credentials.api_key,
        base = sim.base_url(provider),
    );
    std::fs::write(&config_path, toml).context("writing the callsync config")?;

    let args: &[&str] = match roles {
        Roles::Connector => &["run", "--roles", "connector"],
        Roles::All => &["run"],
    };
    let mut process = BenchProcess::spawn(&config_path, args, dir.path().join("callsync.log"))?;

    let from = info.first_call_at - chrono::Duration::hours(1);
    let to = sim.now() + chrono::Duration::seconds(1);
    let window = MeasurementWindow::open();
    let cpu_start = CpuMarks::read(&process, broker_pid, postmaster);
    let sync_id = enqueue_backfill(&config_path, provider, &account, from, to).await?;
    eprintln!(
        "bench: backfill {sync_id} of {calls} calls enqueued for `callsync {}`",
        args.join(" ")
    );

    let (tx, mut rx) = tokio::sync::mpsc::channel::<SyncEvent>(1024);
    let watcher = {
        let factory = factory.clone();
        let topic = settings.topic(names::SYNC_EVENTS);
        let id = sync_id.clone();
        tokio::task::spawn_blocking(move || follow_sync_events(&factory, &topic, &id, &tx))
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
    let mut started_at: Option<DateTime<Utc>> = None;
    let completed = loop {
        process.check_running()?;
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("the backfill did not complete within an hour");
        }
        match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
            Err(_) => {}
            Ok(None) => {
                let r = watcher.await.context("sync-events watcher")?;
                r?;
                anyhow::bail!("the sync-events watcher stopped");
            }
            Ok(Some(ev)) => match ev.kind {
                SyncEventKind::Started => {
                    started_at.get_or_insert(ev.at);
                }
                SyncEventKind::Completed => break ev,
                SyncEventKind::Failed => {
                    anyhow::bail!("the backfill failed: {}", ev.error.unwrap_or_default())
                }
                _ => {}
            },
        }
    };
    drop(rx);
    let started_at = started_at.unwrap_or(completed.at);
    let records = u64::try_from(completed.records).unwrap_or(0);
    let (secs, rows) = match &db {
        None => (
            (completed.at - started_at).num_milliseconds() as f64 / 1000.0,
            None,
        ),
        Some(db) => {
            // every call in Postgres: the statistics first, then one exact count to confirm
            let rows = loop {
                process.check_running()?;
                if sink_drain::rows_written(&db.pool).await? >= calls {
                    let (rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM calls")
                        .fetch_one(&db.pool)
                        .await
                        .context("counting rows")?;
                    if rows as u64 >= calls {
                        break rows as u64;
                    }
                }
                if tokio::time::Instant::now() > deadline {
                    anyhow::bail!("not all {calls} calls reached Postgres within an hour");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            (
                (Utc::now() - started_at).num_milliseconds() as f64 / 1000.0,
                Some(rows),
            )
        }
    };
    let cpu_end = CpuMarks::read(&process, broker_pid, postmaster);
    let cpu = cpu_budget(
        window,
        &cpu_start,
        &cpu_end,
        (process.pid(), broker_pid, postmaster),
    );
    let peak_rss_bytes = process.peak_rss_bytes();
    eprintln!(
        "bench: `callsync {}`: {records} records in {secs:.1} s, peak RSS {:.1} MiB",
        args.join(" "),
        peak_rss_bytes as f64 / MIB
    );
    tokio::task::spawn_blocking(move || process.terminate(Duration::from_secs(30)))
        .await
        .context("stopping callsync")??;
    let _ = watcher.await;
    let restart = match roles {
        Roles::Connector => None,
        Roles::All => Some(restart_and_restore(&config_path, dir.path(), calls).await?),
    };
    // the database holds the whole backfill (2.2 GB at 1M calls); on the error paths above,
    // dropping the guard (after the process guards, declared later) drops it
    if let Some(db) = db {
        db.drop_database().await;
    }
    // its topics are deleted by the benchmark runner (bench_topics) when the benchmark ends
    Ok(ProcessBackfill {
        calls,
        records,
        secs,
        peak_rss_bytes,
        rows,
        restart,
        cpu,
    })
}

/// Start `callsync run` again on `config` (every role, the processor logging its restores)
/// and wait until its processor has restored `keys` keys of dedup state.
async fn restart_and_restore(
    config: &Path,
    dir: &Path,
    keys: u64,
) -> anyhow::Result<RestartRestore> {
    let toml = std::fs::read_to_string(config).context("reading the callsync config")?;
    let restart_config = dir.join("callsync-restart.toml");
    std::fs::write(
        &restart_config,
        toml.replace(
            "filter = \"warn\"",
            "filter = \"warn,callsync_processors=info\"",
        ),
    )
    .context("writing the restart config")?;
    let log = dir.join("callsync-restart.log");
    let started = tokio::time::Instant::now();
    let mut process = BenchProcess::spawn(&restart_config, &["run"], log.clone())?;
    let deadline = started + Duration::from_secs(300);
    let restored = loop {
        process.check_running()?;
        let restored = restored_keys(&log);
        if restored >= keys {
            break restored;
        }
        if tokio::time::Instant::now() > deadline {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            anyhow::bail!(
                "the restarted process restored {restored} of {keys} keys in 300 s; its log ends:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let secs = started.elapsed().as_secs_f64();
    // let the first batches after the restore run too
    tokio::time::sleep(Duration::from_secs(5)).await;
    let peak_rss_bytes = process.peak_rss_bytes();
    eprintln!(
        "bench: restarted `callsync run` restored {restored} keys in {secs:.1} s, peak RSS {:.1} MiB",
        peak_rss_bytes as f64 / MIB
    );
    tokio::task::spawn_blocking(move || process.terminate(Duration::from_secs(30)))
        .await
        .context("stopping the restarted callsync")??;
    Ok(RestartRestore {
        keys: restored,
        secs,
        peak_rss_bytes,
    })
}

/// `callsync backfill --enqueue`; returns the sync id it printed.
async fn enqueue_backfill(
    config: &Path,
    provider: Provider,
    account: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> anyhow::Result<String> {
    let bin = services::callsync_binary()?;
    let out = tokio::process::Command::new(bin)
        .arg("--config")
        .arg(config)
        .args(["backfill", "--enqueue", "--provider", provider.as_str()])
        .args(["--account", account])
        .arg("--from")
        .arg(from.to_rfc3339())
        .arg("--to")
        .arg(to.to_rfc3339())
        .output()
        .await
        .context("running callsync backfill --enqueue")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        anyhow::bail!(
            "callsync backfill --enqueue failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    stdout
        .split_whitespace()
        .skip_while(|w| *w != "sync")
        .nth(1)
        .map(str::to_string)
        .with_context(|| format!("no sync id in {stdout:?}"))
}

/// Sends every event of `sync_id` on `topic` (read_committed, from the start) until the
/// receiver is gone.
fn follow_sync_events(
    factory: &KafkaClientFactory,
    topic: &str,
    sync_id: &str,
    tx: &tokio::sync::mpsc::Sender<SyncEvent>,
) -> anyhow::Result<()> {
    let group = format!("bench-events-{}", uuid::Uuid::new_v4().simple());
    let consumer: BaseConsumer = factory.create(
        "sync-events reader",
        &factory.consumer_config(&group, Isolation::ReadCommitted),
    )?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(30))?;
    let mut tpl = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
        }
    }
    consumer.assign(&tpl)?;
    let decoder: RecordDecoder<SyncEvent> = RecordDecoder::new();
    while !tx.is_closed() {
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(e)) => return Err(e).context("reading sync events"),
            Some(Ok(m)) => {
                let Some(value) = m.payload() else { continue };
                match decoder.decode(value) {
                    Ok(ev) if ev.sync_id == sync_id => {
                        if tx.blocking_send(ev).is_err() {
                            return Ok(());
                        }
                    }
                    Ok(_) => {}
                    Err(e) => eprintln!("bench: an undecodable sync event: {e}"),
                }
            }
        }
    }
    Ok(())
}
