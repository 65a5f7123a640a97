//! `callsync demo`: the whole pipeline in one process with nothing installed.
//!
//! An in-process Kafka (librdkafka's mock cluster), the provider simulator, every role, and
//! the embedded SQLite store (or Postgres with `--database-url`). It runs a backfill through
//! the HTTP API, advances the simulated clock so late changes (conversions, revenue
//! adjustments) and new calls appear, runs an incremental sync that picks them up, posts
//! signed webhooks (new calls, duplicates of polled calls, a forged one), and checks the
//! table against the simulator's ground truth.

pub mod mock;
pub mod summary;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use callsync_runtime::{CatalogueOptions, KafkaSettings, Shutdown, TopicCatalogue};
use callsync_schemas::{Provider, SyncMode};
use callsync_simulator::{AccountConfig, RunningSimulator, Simulator, SimulatorConfig};
use chrono::{DateTime, Utc};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::cli::connectors_for_simulator;
use crate::config::CallsyncConfig;
use crate::roles::{run_roles_with, Role, RunOptions};
use crate::scheduler::{SyncState, SyncStatusStore};
use crate::webhooks::signature::{hmac_sha256_signature, SIGNATURE_HEADER, TIMESTAMP_HEADER};

pub use summary::DemoSummary;

/// `callsync demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Calls in the simulated data set, spread over the providers.
    #[arg(long, default_value_t = 20_000)]
    pub calls: u64,
    /// Providers to simulate (at least three make the point; default all five).
    #[arg(long, value_delimiter = ',', default_values_t = Provider::ALL.to_vec())]
    pub providers: Vec<Provider>,
    /// Use this Postgres database instead of the embedded SQLite store.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Directory for the SQLite file (default: a new directory under the system temp dir,
    /// kept after the demo so you can look at the data).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Seed of the simulated data set.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Plain progress lines instead of progress bars.
    #[arg(long)]
    pub no_progress: bool,
}

/// Hours of simulated time the clock is advanced between the backfill and the incremental sync.
const LATE_HOURS: i64 = 2;
const WEBHOOK_SECRET: &str = "demo-webhook-secret";
const WEBHOOK_NEW_CALLS: usize = 3;
const WEBHOOK_DUPLICATES: usize = 2;

/// Runs the demo, writing what happens to `out`; returns the summary.
pub async fn run_demo(
    args: &DemoArgs,
    out: &mut (impl std::io::Write + Send),
) -> anyhow::Result<DemoSummary> {
    let started = Instant::now();
    // every metric recorded from here on shows up in /metrics and the summary
    let _ = callsync_runtime::metrics::prometheus();
    let mut providers = args.providers.clone();
    providers.sort_by_key(|p| p.as_str());
    providers.dedup();
    if providers.is_empty() {
        anyhow::bail!("--providers needs at least one provider");
    }
    let per_provider = (args.calls / providers.len() as u64).max(10);

    writeln!(
        out,
        "callsync demo: the whole pipeline in this process, nothing installed"
    )?;
    writeln!(
        out,
        "  note: Kafka here is librdkafka's in-process mock cluster. Its transactions are"
    )?;
    writeln!(
        out,
        "  shallow (no transaction markers, no compaction): the demo shows the flow; the"
    )?;
    writeln!(
        out,
        "  exactly-once guarantees are proven by the tests against a real broker."
    )?;

    // 1. Kafka
    let kafka = mock::InProcessKafka::start()?;
    let settings = KafkaSettings::plaintext(kafka.bootstrap());
    let catalogue = TopicCatalogue::new(
        &settings,
        &CatalogueOptions {
            call_partitions: 4,
            calls_retention_days: 30,
        },
    );
    for topic in catalogue.topics() {
        kafka.create_topic(&topic.name, topic.partitions)?;
    }
    writeln!(
        out,
        "  kafka       in-process mock cluster at {} ({} topics)",
        kafka.bootstrap(),
        catalogue.topics().len()
    )?;

    // 2. simulator: its clock starts LATE_HOURS behind the wall clock, frozen, so advancing
    //    it later brings it to now and the incremental sync's window covers the late changes
    let sim = start_simulator(args.seed, &providers, per_provider).await?;
    writeln!(
        out,
        "  simulator   {} ({} providers x {} calls over 3 days, 1% broken records)",
        sim.root_url(),
        providers.len(),
        per_provider
    )?;

    // 3. store
    let (database_url, sqlite_path) = match &args.database_url {
        Some(url) => (url.clone(), None),
        None => {
            let dir = match &args.dir {
                Some(d) => d.clone(),
                None => std::env::temp_dir()
                    .join(format!("callsync-demo-{}", uuid::Uuid::new_v4().simple())),
            };
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let path = dir.join("callsync-demo.db");
            let _ = std::fs::remove_file(&path);
            (format!("sqlite://{}", path.display()), Some(path))
        }
    };
    writeln!(
        out,
        "  store       {}",
        match &sqlite_path {
            Some(p) => format!("SQLite {}", p.display()),
            None => "Postgres (--database-url)".to_string(),
        }
    )?;

    // 4. every role
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the demo's HTTP API")?;
    let api_addr = listener.local_addr().context("the API's address")?;
    let hooks_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the demo's webhook listener")?;
    let hooks_addr = hooks_listener
        .local_addr()
        .context("the webhook listener's address")?;
    // the demo's own token to the control API, read and operate, valid for this run only
    let token = crate::api::auth::generate_token();
    let config = demo_config(&kafka, &sim, &providers, &database_url, &token)?;
    let status = SyncStatusStore::new(10_000);
    let shutdown = Shutdown::new();
    let roles_task = {
        let config = config.clone();
        let shutdown = shutdown.clone();
        let options = RunOptions {
            api_listener: Some(listener),
            webhook_listener: Some(hooks_listener),
            status_store: Some(status.clone()),
            ..RunOptions::default()
        };
        tokio::spawn(async move { run_roles_with(&config, &Role::ALL, shutdown, options).await })
    };
    let api = format!("http://{api_addr}");
    let hooks = format!("http://{hooks_addr}");
    let mut auth = reqwest::header::HeaderMap::new();
    let mut bearer = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        .context("the demo's API token")?;
    bearer.set_sensitive(true);
    auth.insert(reqwest::header::AUTHORIZATION, bearer);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .default_headers(auth)
        .build()
        .context("building the HTTP client")?;
    wait_healthy(&http, &api, &roles_task).await?;
    writeln!(
        out,
        "  roles       connector, processor, sink, scheduler, api (control API at {api}, webhooks at {hooks})"
    )?;

    let endpoints = Endpoints {
        api: &api,
        hooks: &hooks,
    };
    let result = drive(
        args, out, &sim, &providers, &http, endpoints, &status, &config,
    )
    .await;

    // stop everything, drain, collect the reports
    shutdown.trigger();
    let reports = match tokio::time::timeout(Duration::from_secs(30), roles_task).await {
        Ok(Ok(Ok(reports))) => Some(reports),
        Ok(Ok(Err(e))) => {
            writeln!(out, "warning: a role failed while stopping: {e:#}")?;
            None
        }
        Ok(Err(e)) => {
            writeln!(out, "warning: the roles task failed: {e}")?;
            None
        }
        Err(_) => {
            writeln!(out, "warning: the roles did not stop within 30 s")?;
            None
        }
    };
    let drive = result?;
    let summary = DemoSummary::collect(&drive, reports.as_ref(), started.elapsed());
    summary.write_table(out)?;
    if let Some(path) = &sqlite_path {
        writeln!(out, "\nlook at the data:")?;
        writeln!(
            out,
            "  sqlite3 {} 'select provider, count(*), sum(revenue), max(synced_at) from calls group by provider'",
            path.display()
        )?;
    } else {
        writeln!(out, "\nlook at the data:")?;
        writeln!(out, "  psql \"$DATABASE_URL\" -c 'select provider, count(*), sum(revenue) from calls group by provider'")?;
    }
    drop(kafka);
    sim.shutdown().await.context("stopping the simulator")?;
    Ok(summary)
}

/// What the driving part of the demo measured.
#[derive(Debug, Default, Clone)]
pub struct DriveReport {
    pub accounts: usize,
    pub backfill_records: u64,
    pub backfill_secs: f64,
    pub incremental_records: u64,
    pub webhooks_accepted: u64,
    pub webhooks_duplicates: u64,
    pub webhooks_rejected: u64,
    pub truth_calls: u64,
    pub table_rows: u64,
    pub mismatches: Vec<String>,
}

async fn start_simulator(
    seed: u64,
    providers: &[Provider],
    calls: u64,
) -> anyhow::Result<RunningSimulator> {
    let mut config = SimulatorConfig::for_tests(seed);
    let now = Utc::now();
    config.clock.start = now - chrono::Duration::hours(LATE_HOURS) - chrono::Duration::minutes(1);
    config.clock.speed = 0.0;
    for provider in Provider::ALL {
        let p = config.provider_mut(provider);
        p.accounts = if providers.contains(&provider) {
            vec![AccountConfig {
                calls,
                future_calls: (calls / 20).max(1),
                history_secs: 3 * 86_400,
                bad_record_share: 0.01,
                ..AccountConfig::with_calls(calls)
            }]
        } else {
            Vec::new()
        };
    }
    Simulator::start(config)
        .await
        .context("starting the provider simulator")
}

fn demo_config(
    kafka: &mock::InProcessKafka,
    sim: &RunningSimulator,
    providers: &[Provider],
    database_url: &str,
    token: &callsync_runtime::Secret,
) -> anyhow::Result<CallsyncConfig> {
    let mut connectors = connectors_for_simulator(sim, providers, 60_000.0);
    connectors["sync"] = json!({
        "backfill_window_secs": 12 * 3600,
        "backfill_concurrency": 4,
        "progress_every": 250,
        // the first incremental sync reads the whole 3-day history window (late changes of
        // any call; in production the nightly full sync covers older adjustments)
        "initial_incremental_secs": 4 * 86_400,
        "request_timeout_secs": 10,
        "kafka_timeout_secs": 20,
    });
    connectors["retry"] = json!({"base_delay_ms": 20, "max_delay_ms": 500});
    let mut schedule_accounts = Vec::new();
    let mut webhook_accounts = Vec::new();
    for &provider in providers {
        for account in sim.accounts(provider) {
            // the demo triggers its syncs itself; the scheduler only has the incremental slot
            schedule_accounts
                .push(json!({"provider": provider.as_str(), "account_id": account, "full": "off"}));
            webhook_accounts.push(json!({"provider": provider.as_str(), "account_id": account, "method": "hmac_sha256", "secret": WEBHOOK_SECRET}));
        }
    }
    let value = json!({
        "kafka": {"bootstrap_servers": kafka.bootstrap()},
        "topics": {"call_partitions": 4},
        "processor": {"batch_max_time_ms": 100},
        "sink": {"database_url": database_url, "batch_max_ms": 100},
        "connectors": connectors,
        "scheduler": {"catch_up_secs": 0, "accounts": schedule_accounts},
        "workers": {"max_concurrent": providers.len().max(1), "retry_initial_delay_secs": 2, "catch_up_timeout_secs": 10},
        "health": {"interval_secs": 30},
        "webhooks": {"listen": "127.0.0.1:0", "accounts": webhook_accounts},
        "api": {
            "listen": "127.0.0.1:0",
            "lag_interval_secs": 2,
            "tokens": [{"name": "demo", "token": token.expose(), "scopes": ["read", "operate"]}],
        },
        "log": {"filter": "warn"},
    });
    CallsyncConfig::from_value(&value).context("the demo's config")
}

async fn wait_healthy(
    http: &reqwest::Client,
    api: &str,
    roles: &tokio::task::JoinHandle<anyhow::Result<crate::roles::RolesReport>>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if roles.is_finished() {
            anyhow::bail!("the roles stopped while starting (run with RUST_LOG=info to see why)");
        }
        if let Ok(r) = http.get(format!("{api}/healthz")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            anyhow::bail!("the HTTP API did not answer within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Where the demo's roles answer: the control API and the public webhook listener.
#[derive(Clone, Copy)]
struct Endpoints<'a> {
    api: &'a str,
    hooks: &'a str,
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    args: &DemoArgs,
    out: &mut (impl std::io::Write + Send),
    sim: &RunningSimulator,
    providers: &[Provider],
    http: &reqwest::Client,
    endpoints: Endpoints<'_>,
    status: &SyncStatusStore,
    config: &CallsyncConfig,
) -> anyhow::Result<DriveReport> {
    let api = endpoints.api;
    let mut report = DriveReport::default();
    let accounts: Vec<(Provider, String)> = providers
        .iter()
        .flat_map(|&p| sim.accounts(p).into_iter().map(move |a| (p, a)))
        .collect();
    report.accounts = accounts.len();

    // backfill of the whole history, through POST /api/syncs
    writeln!(
        out,
        "\n[1/4] backfill of 3 days of history, {} accounts ...",
        accounts.len()
    )?;
    let t = Instant::now();
    let end = sim.now() + chrono::Duration::seconds(1);
    let mut ids = Vec::new();
    for (provider, account) in &accounts {
        let info = sim
            .account_info(*provider, account)
            .context("simulator account info")?;
        let start = info.first_call_at - chrono::Duration::hours(1);
        ids.push(
            trigger(
                http,
                api,
                *provider,
                account,
                SyncMode::Backfill,
                Some((start, end)),
            )
            .await?,
        );
    }
    let records = wait_syncs(
        out,
        status,
        &ids,
        args.no_progress,
        Duration::from_secs(120),
    )
    .await?;
    report.backfill_records = records;
    report.backfill_secs = t.elapsed().as_secs_f64();
    writeln!(
        out,
        "      {records} records fetched in {:.1}s ({:.0} records/s)",
        report.backfill_secs,
        records as f64 / report.backfill_secs.max(0.001)
    )?;

    // late changes: advance the simulated clock; conversions, adjustments and new calls appear
    sim.clock()
        .advance(Duration::from_secs(LATE_HOURS.unsigned_abs() * 3600));
    writeln!(
        out,
        "\n[2/4] {LATE_HOURS} simulated hours pass (late conversions, revenue adjustments, new calls); incremental sync ..."
    )?;
    let mut ids = Vec::new();
    for (provider, account) in &accounts {
        ids.push(trigger(http, api, *provider, account, SyncMode::Incremental, None).await?);
    }
    report.incremental_records =
        wait_syncs(out, status, &ids, args.no_progress, Duration::from_secs(90)).await?;
    writeln!(
        out,
        "      {} records fetched (re-read overlap included; dedup drops the unchanged)",
        report.incremental_records
    )?;

    // webhooks
    writeln!(out, "\n[3/4] signed webhooks ...")?;
    let extra_keys = post_webhooks(out, sim, providers, http, endpoints.hooks, &mut report).await?;

    // compare with the ground truth
    writeln!(out, "\n[4/4] waiting for the sink, then comparing the table with the simulator's ground truth ...")?;
    compare_with_truth(sim, &accounts, &extra_keys, config, &mut report).await?;
    if report.mismatches.is_empty() {
        writeln!(
            out,
            "      the table equals the ground truth: {} calls, each once, at its newest version (+{} webhook-only calls)",
            report.truth_calls,
            extra_keys.len()
        )?;
    } else {
        writeln!(
            out,
            "      the table differs from the ground truth ({} differences), e.g.:",
            report.mismatches.len()
        )?;
        for m in report.mismatches.iter().take(5) {
            writeln!(out, "        {m}")?;
        }
    }
    Ok(report)
}

async fn trigger(
    http: &reqwest::Client,
    api: &str,
    provider: Provider,
    account: &str,
    mode: SyncMode,
    window: Option<(DateTime<Utc>, DateTime<Utc>)>,
) -> anyhow::Result<String> {
    let mut body =
        json!({"provider": provider.as_str(), "account_id": account, "mode": mode.as_str()});
    if let Some((start, end)) = window {
        body["window_start"] = json!(start);
        body["window_end"] = json!(end);
    }
    let response = http
        .post(format!("{api}/api/syncs"))
        .json(&body)
        .send()
        .await
        .context("POST /api/syncs")?;
    let code = response.status();
    let answer: serde_json::Value = response
        .json()
        .await
        .context("reading the answer of POST /api/syncs")?;
    if !code.is_success() {
        anyhow::bail!("POST /api/syncs answered {code}: {answer}");
    }
    answer["id"]
        .as_str()
        .map(str::to_string)
        .context("POST /api/syncs answered without an id")
}

/// Waits until every sync of `ids` completed; draws a bar per sync. Returns their records.
async fn wait_syncs(
    out: &mut (impl std::io::Write + Send),
    status: &SyncStatusStore,
    ids: &[String],
    plain: bool,
    timeout: Duration,
) -> anyhow::Result<u64> {
    let multi = MultiProgress::with_draw_target(if plain {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr_with_hz(8)
    });
    let style = ProgressStyle::with_template("      {spinner} {prefix:<28} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let bars: Vec<ProgressBar> = ids
        .iter()
        .map(|_| {
            let bar = multi.add(ProgressBar::new_spinner());
            bar.set_style(style.clone());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        })
        .collect();
    let deadline = Instant::now() + timeout;
    let mut last_plain = Instant::now();
    loop {
        let mut done = 0;
        let mut total = 0u64;
        let mut failed = Vec::new();
        for (id, bar) in ids.iter().zip(&bars) {
            let Some(s) = status.get(id) else {
                bar.set_message("requested");
                continue;
            };
            bar.set_prefix(format!("{} {}", s.provider, s.account_id));
            let eta = s
                .eta_secs
                .and_then(|e| u64::try_from(e).ok())
                .map(|e| format!(", ETA {}", crate::cli::sync::format_secs(e)))
                .unwrap_or_default();
            let state = match s.state {
                SyncState::Completed => {
                    done += 1;
                    "done".to_string()
                }
                SyncState::Failed if s.next_attempt_at.is_none() => {
                    done += 1;
                    failed.push(format!(
                        "{} {}: {}",
                        s.provider,
                        s.account_id,
                        s.error.clone().unwrap_or_default()
                    ));
                    "FAILED".to_string()
                }
                other => format!("{other:?}").to_lowercase(),
            };
            total += u64::try_from(s.records).unwrap_or(0);
            bar.set_message(format!(
                "{:>8} records  {:>7.0}/s{eta}  {state}",
                s.records, s.rate_per_sec
            ));
            if matches!(s.state, SyncState::Completed) {
                bar.finish();
            }
        }
        if plain && last_plain.elapsed() > Duration::from_secs(2) {
            last_plain = Instant::now();
            writeln!(
                out,
                "      ... {done}/{} syncs done, {total} records",
                ids.len()
            )?;
        }
        if done == ids.len() {
            for bar in &bars {
                bar.finish();
            }
            let _ = multi.clear();
            if !failed.is_empty() {
                anyhow::bail!("syncs failed: {}", failed.join("; "));
            }
            return Ok(total);
        }
        if Instant::now() > deadline {
            let _ = multi.clear();
            anyhow::bail!(
                "syncs did not finish within {timeout:?} ({done}/{} done)",
                ids.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Posts signed webhooks: new calls (not in the API yet), exact duplicates of polled calls
/// (the processor drops them) and a forged one (401). Returns the keys of the new calls.
async fn post_webhooks(
    out: &mut (impl std::io::Write + Send),
    sim: &RunningSimulator,
    providers: &[Provider],
    http: &reqwest::Client,
    hooks: &str,
    report: &mut DriveReport,
) -> anyhow::Result<HashSet<String>> {
    let mut new_keys = HashSet::new();
    // Retreaver's templated payload is its API record; take real ones from the simulator
    let provider = Provider::Retreaver;
    if !providers.contains(&provider) {
        writeln!(
            out,
            "      (skipped: the webhook part of the demo uses Retreaver payloads)"
        )?;
        return Ok(new_keys);
    }
    let Some(account) = sim.accounts(provider).into_iter().next() else {
        return Ok(new_keys);
    };
    let creds = sim
        .credentials(provider, &account)
        .context("simulator credentials")?;
    let url = format!(
        "{}/api/v2/calls.json?api_key={}&company_id={}&per_page={}&sort_by=created_at&order=desc",
        sim.base_url(provider),
        creds.api_key,
        account,
        WEBHOOK_DUPLICATES + WEBHOOK_NEW_CALLS
    );
    let page: Vec<serde_json::Value> = http
        .get(url)
        .send()
        .await
        .context("reading Retreaver calls from the simulator")?
        .json()
        .await
        .context("decoding Retreaver calls")?;
    let calls: Vec<serde_json::Value> = page
        .into_iter()
        .filter_map(|c| c.get("call").cloned())
        .collect();
    let target = format!("{hooks}/webhooks/{}/{account}", provider.as_str());
    let post = |body: Vec<u8>, secret: &'static str, ts: i64| {
        let signature = hmac_sha256_signature(secret.as_bytes(), ts, &body);
        http.post(&target)
            .header(TIMESTAMP_HEADER, ts.to_string())
            .header(SIGNATURE_HEADER, signature)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let now = Utc::now();
    for call in calls.iter().take(WEBHOOK_DUPLICATES) {
        let body = serde_json::to_vec(call)?;
        let code = post(body, WEBHOOK_SECRET, now.timestamp()).await?.status();
        if code.is_success() {
            report.webhooks_duplicates += 1;
        }
    }
    for (i, call) in calls
        .iter()
        .skip(WEBHOOK_DUPLICATES)
        .take(WEBHOOK_NEW_CALLS)
        .enumerate()
    {
        let mut call = call.clone();
        let call_id = format!("demo-webhook-{}-{i}", uuid::Uuid::new_v4().simple());
        // a call the API has not shown yet: same shape, a new id
        call["uuid"] = json!(call_id);
        let body = serde_json::to_vec(&call)?;
        let response = post(body, WEBHOOK_SECRET, now.timestamp()).await?;
        if response.status().is_success() {
            report.webhooks_accepted += 1;
            new_keys.insert(format!("{}:{account}:{call_id}", provider.as_str()));
        } else {
            let code = response.status();
            let text = response.text().await.unwrap_or_default();
            writeln!(out, "      webhook for a new call answered {code}: {text}")?;
        }
    }
    // forged: signed with the wrong secret; and a replay with a stale timestamp
    if let Some(call) = calls.first() {
        let body = serde_json::to_vec(call)?;
        if post(body.clone(), "not-the-secret", now.timestamp())
            .await?
            .status()
            == reqwest::StatusCode::UNAUTHORIZED
        {
            report.webhooks_rejected += 1;
        }
        let stale = now.timestamp() - 3600;
        if post(body, WEBHOOK_SECRET, stale).await?.status() == reqwest::StatusCode::UNAUTHORIZED {
            report.webhooks_rejected += 1;
        }
    }
    writeln!(
        out,
        "      {} new calls accepted (202), {} duplicates of polled calls accepted (dropped by dedup), {} forged/replayed rejected (401)",
        report.webhooks_accepted, report.webhooks_duplicates, report.webhooks_rejected
    )?;
    Ok(new_keys)
}

async fn compare_with_truth(
    sim: &RunningSimulator,
    accounts: &[(Provider, String)],
    extra_keys: &HashSet<String>,
    config: &CallsyncConfig,
    report: &mut DriveReport,
) -> anyhow::Result<()> {
    let mut truth: BTreeMap<String, callsync_simulator::TruthRecord> = BTreeMap::new();
    for (provider, account) in accounts {
        for t in sim
            .truth(*provider, account, None)?
            .filter(|t| t.bad.is_none())
        {
            truth.insert(t.call_key.clone(), t);
        }
    }
    report.truth_calls = truth.len() as u64;
    let sink = config.sink.clone().context("the demo config has a sink")?;
    let store = callsync_sinks::connect_store(&sink)
        .await
        .context("opening the store to compare")?;
    let expected = truth.len() + extra_keys.len();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = store.all_calls().await.context("reading the calls table")?;
        report.table_rows = rows.len() as u64;
        let mismatches = summary::truth_mismatches(&rows, &truth, extra_keys);
        report.mismatches = mismatches;
        if report.mismatches.is_empty() && rows.len() == expected {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
