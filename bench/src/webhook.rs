//! `webhook`: signed webhooks at a fixed rate through the HTTP API, the processor and the sink
//! into Postgres, on the real broker and real Postgres, with the read API under load.
//!
//! A warm-up of 10 s at the same rate comes first and is not measured: the groups join, and the
//! broker's JIT and heap settle (a broker started a minute before gave p99 250 ms where a warm
//! one gave 122-160 ms).
//!
//! Open loop: request `i` is due at `start + i / rate` and is sent then whether or not earlier
//! ones were answered, and every latency is measured from that due time (not from when the
//! request actually left), so a stall shows up in the figures instead of slowing the sender
//! (no coordinated omission). The webhook -> Postgres latency of a call is its row's
//! `synced_at` (`now()` of the sink transaction that wrote it) minus its due time; every
//! call id carries its index, and at the end every row is counted (zero loss means every call
//! sent has its row). The read API (`/api/providers`, `/api/syncs`, `/api/syncs/{id}`) is
//! polled open-loop at the same time.
//!
//! The api, processor and sink roles run in this process through `run_roles_with`, with the
//! production defaults of `[processor]` and `[sink]` unless `CALLSYNC_BENCH_PROCESSOR_BATCH_MS`
//! / `CALLSYNC_BENCH_SINK_BATCH_MS` are set (to compare batch timings);
//! `CALLSYNC_BENCH_KAFKA_PROPS="k=v;k=v"` adds librdkafka properties to every client.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use callsync::config::CallsyncConfig;
use callsync::roles::{run_roles_with, Role, RunOptions};
use callsync::webhooks::signature::{hmac_sha256_signature, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use callsync_runtime::{
    ensure_catalogue, CatalogueOptions, KafkaClientFactory, KafkaSettings, Shutdown,
};
use callsync_schemas::Provider;
use callsync_simulator::{AccountConfig, Simulator, SimulatorConfig};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::report::{BenchOutcome, Figure};
use crate::services;
use crate::topic_times::timestamps_by_index;

/// Webhooks per second.
const RATE: u64 = 500;
/// Read API requests per second (spread over the three routes).
const READ_RATE: u64 = 30;
const SECRET: &str = "bench-webhook-secret";
/// The benchmark's token to the control API (read and operate).
const API_TOKEN: &str = "bench-api-token-0123456789abcdef0123456789";
const TARGET_WEBHOOK_P99_MS: f64 = 250.0;
const TARGET_API_P99_MS: f64 = 200.0;
const CALL_PARTITIONS: i32 = 4;
/// Unmeasured load at [`RATE`] before the measurement (see [`warm_up`]).
const WARM_UP: Duration = Duration::from_secs(10);

/// One request's fate: due offset from the start, latency from its due time, status.
#[derive(Debug, Clone, Copy)]
struct Sent {
    index: u64,
    latency: Duration,
    status: u16,
}

pub async fn run(seconds: u64) -> anyhow::Result<BenchOutcome> {
    let bootstrap = services::kafka_bootstrap()?;
    let db = services::database().await?;
    let _ = callsync_runtime::metrics::prometheus();
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let run_id = &run_id[..12];
    let mut settings = KafkaSettings::plaintext(&bootstrap);
    settings.topic_prefix = format!("bench-webhook-{run_id}.");
    let factory = KafkaClientFactory::new(settings.clone());
    let options = CatalogueOptions {
        call_partitions: CALL_PARTITIONS,
        calls_retention_days: 1,
    };
    ensure_catalogue(&factory, &options, Duration::from_secs(60)).await?;

    // the simulator gives a real Retreaver record to use as the payload template and an
    // account the API knows
    let provider = Provider::Retreaver;
    let mut sim_config = SimulatorConfig::for_tests(500);
    sim_config.clock.start = Utc::now();
    for p in Provider::ALL {
        sim_config.provider_mut(p).accounts = if p == provider {
            vec![AccountConfig {
                history_secs: 3600,
                ..AccountConfig::with_calls(10)
            }]
        } else {
            Vec::new()
        };
    }
    let sim = Simulator::start(sim_config)
        .await
        .context("starting the simulator")?;
    let account = sim
        .accounts(provider)
        .first()
        .cloned()
        .context("the simulator has no Retreaver account")?;
    let mut auth = reqwest::header::HeaderMap::new();
    auth.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {API_TOKEN}").parse()?,
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .default_headers(auth)
        .build()?;
    let template = template_call(&http, &sim, provider, &account).await?;

    let config = service_config(&settings, &sim, provider, &account, &db.url, run_id)?;
    let processor_batch_ms = config.processor.batch_max_time_ms;
    let sink_batch_ms = config.sink.as_ref().map_or(0, |s| s.batch_max_ms);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api = format!("http://{}", listener.local_addr()?);
    let hooks_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hooks = format!("http://{}", hooks_listener.local_addr()?);
    let shutdown = Shutdown::new();
    let _stop_on_error = shutdown.trigger_on_drop();
    let roles = {
        let config = config.clone();
        let shutdown = shutdown.clone();
        let options = RunOptions {
            api_listener: Some(listener),
            webhook_listener: Some(hooks_listener),
            ..RunOptions::default()
        };
        tokio::spawn(async move {
            run_roles_with(
                &config,
                &[Role::Api, Role::Processor, Role::Sink],
                shutdown,
                options,
            )
            .await
        })
    };
    wait_ready(&http, &api, &roles).await?;
    let sync_id = trigger_sync(&http, &api, provider, &account).await?;
    // let the processor and the sink join their groups and the first batches settle
    warm_up(
        &http, &hooks, provider, &account, &template, run_id, &db.pool,
    )
    .await?;

    eprintln!(
        "bench: webhook: {RATE}/s for {seconds}s (processor batch {processor_batch_ms} ms, sink batch {sink_batch_ms} ms)"
    );
    let total = RATE * seconds;
    let interval = Duration::from_nanos(1_000_000_000 / RATE);
    let started = Instant::now();
    let wall_start = Utc::now();
    let reads = tokio::spawn(read_load(
        http.clone(),
        api.clone(),
        sync_id,
        Duration::from_secs(seconds),
    ));
    let sent: Arc<Mutex<Vec<Sent>>> = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let url = Arc::new(format!("{hooks}/webhooks/{}/{account}", provider.as_str()));
    let template = Arc::new(template);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let due = started + interval * u32::try_from(i).unwrap_or(u32::MAX);
        tokio::time::sleep_until(due.into()).await;
        let body = payload(&template, run_id, i)?;
        let (http, url, sent) = (http.clone(), Arc::clone(&url), Arc::clone(&sent));
        tasks.spawn(async move {
            let status = match signed_webhook(&http, &url, body).send().await {
                Ok(r) => r.status().as_u16(),
                Err(_) => 0,
            };
            let latency = due.elapsed();
            if let Ok(mut s) = sent.lock() {
                s.push(Sent {
                    index: i,
                    latency,
                    status,
                });
            }
        });
        // reap finished tasks as we go so the set stays small
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let send_secs = started.elapsed().as_secs_f64();
    let sent: Vec<Sent> = sent.lock().map(|s| s.clone()).unwrap_or_default();
    let accepted: Vec<u64> = sent
        .iter()
        .filter(|s| s.status == 202)
        .map(|s| s.index)
        .collect();
    let rejected = sent.len() - accepted.len();
    // answers other than 202 by status (0: no answer within the client's 30 s timeout)
    let mut not_accepted_by_status: std::collections::BTreeMap<String, usize> =
        std::collections::BTreeMap::new();
    for s in sent.iter().filter(|s| s.status != 202) {
        *not_accepted_by_status
            .entry(s.status.to_string())
            .or_default() += 1;
    }

    // wait for every accepted call's row, then read the commit times
    let pattern = format!("bench-wh-{run_id}-%");
    let deadline = Instant::now() + Duration::from_secs(60);
    let rows: Vec<(String, DateTime<Utc>)> = loop {
        let rows: Vec<(String, DateTime<Utc>)> =
            sqlx::query_as("SELECT call_id, synced_at FROM calls WHERE call_id LIKE $1")
                .bind(&pattern)
                .fetch_all(&db.pool)
                .await?;
        if rows.len() >= accepted.len() || Instant::now() > deadline || roles.is_finished() {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let reads = reads.await.context("read load task")?;
    let stage_times = {
        let factory = factory.clone();
        let raw_topic = settings.topic(callsync_runtime::names::CALLS_RAW);
        let calls_topic = settings.topic(callsync_runtime::names::CALLS);
        // the measured calls' ids, not the warm-up's (`bench-wh-warm{run_id}-`)
        let key_part = format!("bench-wh-{run_id}-");
        tokio::task::spawn_blocking(move || {
            let timeout = Duration::from_secs(120);
            let raw =
                timestamps_by_index(&factory, &raw_topic, CALL_PARTITIONS, &key_part, timeout)?;
            let calls =
                timestamps_by_index(&factory, &calls_topic, CALL_PARTITIONS, &key_part, timeout)?;
            anyhow::Ok((raw, calls))
        })
        .await
        .context("reading the topics' timestamps")??
    };
    let metrics_text = http
        .get(format!("{api}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    shutdown.trigger();
    match tokio::time::timeout(Duration::from_secs(60), roles).await {
        Ok(joined) => {
            joined.context("roles task")??;
        }
        Err(_) => eprintln!("bench: webhook: the roles did not stop within 60 s"),
    }
    let _ = sim.shutdown().await;

    let interval_secs = interval.as_secs_f64();
    let mut commit_ms: Vec<f64> = rows
        .iter()
        .filter_map(|(call_id, synced_at)| {
            let index: u64 = call_id.rsplit('-').next()?.parse().ok()?;
            let due = wall_start
                + chrono::Duration::microseconds((index as f64 * interval_secs * 1e6) as i64);
            Some((*synced_at - due).num_microseconds()? as f64 / 1000.0)
        })
        .collect();
    let stages = StageLatencies::of(&rows, &stage_times.0, &stage_times.1, |index| {
        wall_start + chrono::Duration::microseconds((index as f64 * interval_secs * 1e6) as i64)
    });
    eprintln!("bench: webhook: where the time went (p50 / p99 ms): {stages}");
    let lost = accepted.len().saturating_sub(rows.len());
    let mut answer_ms: Vec<f64> = sent
        .iter()
        .map(|s| s.latency.as_secs_f64() * 1000.0)
        .collect();
    let webhook_p50 = percentile(&mut commit_ms, 0.50);
    let webhook_p99 = percentile(&mut commit_ms, 0.99);
    let webhook_max = percentile(&mut commit_ms, 1.0);
    let answer_p50 = percentile(&mut answer_ms, 0.50);
    let answer_p99 = percentile(&mut answer_ms, 0.99);
    let mut api_ms: Vec<f64> = reads.iter().map(|r| r.1).collect();
    let api_errors = reads.iter().filter(|r| r.0 != 200).count();
    let api_p50 = percentile(&mut api_ms, 0.50);
    let api_p99 = percentile(&mut api_ms, 0.99);
    let per_route: Value = ["/api/providers", "/api/syncs", "/api/syncs/{id}"]
        .iter()
        .map(|route| {
            let mut ms: Vec<f64> = reads
                .iter()
                .filter(|r| r.2 == *route)
                .map(|r| r.1)
                .collect();
            (
                route.to_string(),
                json!({"requests": ms.len(), "p50_ms": percentile(&mut ms, 0.5), "p99_ms": percentile(&mut ms, 0.99)}),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into();
    let e2e_mean_ms = histogram_mean(&metrics_text, "callsync_end_to_end_seconds") * 1000.0;
    let sink_batch_mean_ms = histogram_mean(&metrics_text, "callsync_sink_batch_seconds") * 1000.0;
    let sink_batch_mean_rows = histogram_mean(&metrics_text, "callsync_sink_batch_rows");
    let achieved_rate = sent.len() as f64 / send_secs;
    let rss_mib = services::peak_rss_bytes() as f64 / 1024.0 / 1024.0;

    let loss_ok = lost == 0 && rejected == 0;
    Ok(BenchOutcome {
        name: "webhook".into(),
        figures: vec![
            Figure {
                benchmark: "webhook".into(),
                name: format!(
                    "signed webhook -> Postgres commit latency at {RATE}/s for {seconds}s ({} webhooks, open loop, after {}s unmeasured at the same rate; processor batch {processor_batch_ms} ms, sink batch {sink_batch_ms} ms)",
                    sent.len(),
                    WARM_UP.as_secs()
                ),
                target: format!("p99 < {TARGET_WEBHOOK_P99_MS:.0} ms, zero loss"),
                measured: format!(
                    "p50 {webhook_p50:.0} ms, p99 {webhook_p99:.0} ms, max {webhook_max:.0} ms; {lost} lost, {rejected} not accepted"
                ),
                baseline: format!("202 answer: p50 {answer_p50:.0} ms, p99 {answer_p99:.0} ms"),
                ratio: None,
                met: Some(webhook_p99 < TARGET_WEBHOOK_P99_MS && loss_ok),
            },
            Figure {
                benchmark: "webhook".into(),
                name: format!(
                    "read API p99 under the webhook load ({} requests to /api/providers, /api/syncs, /api/syncs/{{id}})",
                    reads.len()
                ),
                target: format!("p99 < {TARGET_API_P99_MS:.0} ms"),
                measured: format!("p50 {api_p50:.1} ms, p99 {api_p99:.1} ms, {api_errors} errors"),
                baseline: "-".into(),
                ratio: None,
                met: Some(api_p99 < TARGET_API_P99_MS && api_errors == 0),
            },
        ],
        json: json!({
            "rate_per_sec": RATE,
            "warm_up_secs": WARM_UP.as_secs(),
            "seconds": seconds,
            "sent": sent.len(),
            "achieved_rate_per_sec": achieved_rate,
            "accepted": accepted.len(),
            "not_accepted": rejected,
            "not_accepted_by_status": not_accepted_by_status,
            "rows": rows.len(),
            "lost": lost,
            "webhook_to_commit_ms": {"p50": webhook_p50, "p99": webhook_p99, "max": webhook_max},
            "stage_ms": stages.to_json(),
            "answer_ms": {"p50": answer_p50, "p99": answer_p99},
            "read_api_ms": {"p50": api_p50, "p99": api_p99, "requests": reads.len(), "errors": api_errors, "routes": per_route},
            "end_to_end_metric_mean_ms": e2e_mean_ms,
            "sink_batch_mean_ms": sink_batch_mean_ms,
            "sink_batch_mean_rows": sink_batch_mean_rows,
            "processor_batch_mean_ms": histogram_mean(&metrics_text, "callsync_processor_batch_seconds") * 1000.0,
            "processor_commit_mean_ms": histogram_mean(&metrics_text, "callsync_processor_commit_seconds") * 1000.0,
            "processor_batch_mean_records": histogram_mean(&metrics_text, "callsync_processor_batch_records"),
            "processor_batch_max_time_ms": processor_batch_ms,
            "sink_batch_max_ms": sink_batch_ms,
            "peak_rss_bytes": services::peak_rss_bytes(),
            "peak_rss_mib": rss_mib,
        }),
        conditions: None,
    })
}

fn env_ms(name: &str) -> anyhow::Result<Option<u64>> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map(Some)
            .with_context(|| format!("{name}={v:?} is not a whole number of milliseconds")),
        _ => Ok(None),
    }
}

fn service_config(
    settings: &KafkaSettings,
    sim: &callsync_simulator::RunningSimulator,
    provider: Provider,
    account: &str,
    database_url: &str,
    run_id: &str,
) -> anyhow::Result<CallsyncConfig> {
    let connectors = callsync::cli::connectors_for_simulator(sim, &[provider], 60_000.0);
    let mut processor = json!({
        "group_id": format!("bench-webhook-{run_id}-processor"),
    });
    if let Some(ms) = env_ms("CALLSYNC_BENCH_PROCESSOR_BATCH_MS")? {
        processor["batch_max_time_ms"] = json!(ms);
    }
    let mut sink = json!({
        "database_url": database_url,
        "group": format!("bench-webhook-{run_id}-sink"),
    });
    if let Some(ms) = env_ms("CALLSYNC_BENCH_SINK_BATCH_MS")? {
        sink["batch_max_ms"] = json!(ms);
    }
    // experiments: librdkafka properties for every client of the roles
    let mut client_properties = serde_json::Map::new();
    if let Ok(props) = std::env::var("CALLSYNC_BENCH_KAFKA_PROPS") {
        for pair in props.split(';').filter(|p| !p.trim().is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .with_context(|| format!("CALLSYNC_BENCH_KAFKA_PROPS: not k=v: {pair:?}"))?;
            client_properties.insert(k.trim().into(), json!(v.trim()));
        }
    }
    let value = json!({
        "kafka": {"bootstrap_servers": settings.bootstrap_servers, "topic_prefix": settings.topic_prefix, "client_properties": client_properties},
        "topics": {"call_partitions": CALL_PARTITIONS},
        "processor": processor,
        "sink": sink,
        "connectors": connectors,
        "scheduler": {"accounts": [{"provider": provider.as_str(), "account_id": account, "full": "off", "incremental": "off"}]},
        // one account sends the whole load from one address: its request limits are raised
        // above the rate, and the client may hold as many connections as the load needs
        "webhooks": {
            "listen": "127.0.0.1:0",
            "requests_per_second": RATE * 4,
            "burst": RATE * 4,
            "per_client_requests_per_second": RATE * 4,
            "per_client_burst": RATE * 4,
            "limits": {"max_connections_per_client": 1024},
            "accounts": [{"provider": provider.as_str(), "account_id": account, "method": "hmac_sha256", "secret": SECRET}],
        },
        "api": {
            "listen": "127.0.0.1:0",
            "lag_interval_secs": 5,
            "tokens": [{"name": "bench", "token": API_TOKEN, "scopes": ["read", "operate"]}],
        },
        "log": {"filter": "warn"},
    });
    CallsyncConfig::from_value(&value).context("the benchmark's config")
}

async fn template_call(
    http: &reqwest::Client,
    sim: &callsync_simulator::RunningSimulator,
    provider: Provider,
    account: &str,
) -> anyhow::Result<Value> {
    let creds = sim
        .credentials(provider, account)
        .context("simulator credentials")?;
    let url = format!(
        "{}/api/v2/calls.json?api_key={}&company_id={account}&per_page=1&sort_by=created_at&order=desc",
        sim.base_url(provider),
        creds.api_key,
    );
    let page: Vec<Value> = http.get(url).send().await?.json().await?;
    page.into_iter()
        .find_map(|c| c.get("call").cloned())
        .context("the simulator served no Retreaver call")
}

/// The template with a call id that carries the run and the request's index.
fn payload(template: &Value, run_id: &str, index: u64) -> anyhow::Result<Vec<u8>> {
    let mut call = template.clone();
    call["uuid"] = json!(format!("bench-wh-{run_id}-{index}"));
    Ok(serde_json::to_vec(&call)?)
}

async fn wait_ready(
    http: &reqwest::Client,
    api: &str,
    roles: &tokio::task::JoinHandle<anyhow::Result<callsync::roles::RolesReport>>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if roles.is_finished() {
            anyhow::bail!("the roles stopped while starting");
        }
        if let Ok(r) = http.get(format!("{api}/readyz")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            anyhow::bail!("the API was not ready within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn trigger_sync(
    http: &reqwest::Client,
    api: &str,
    provider: Provider,
    account: &str,
) -> anyhow::Result<String> {
    let answer: Value = http
        .post(format!("{api}/api/syncs"))
        .json(&json!({"provider": provider.as_str(), "account_id": account, "mode": "incremental"}))
        .send()
        .await?
        .json()
        .await?;
    answer["id"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("POST /api/syncs answered {answer}"))
}

/// A webhook POST of `body` to `url`, signed now with the benchmark's secret.
fn signed_webhook(http: &reqwest::Client, url: &str, body: Vec<u8>) -> reqwest::RequestBuilder {
    let ts = Utc::now().timestamp();
    let signature = hmac_sha256_signature(SECRET.as_bytes(), ts, &body);
    http.post(url)
        .header(TIMESTAMP_HEADER, ts.to_string())
        .header(SIGNATURE_HEADER, signature)
        .header("content-type", "application/json")
        .body(body)
}

/// Sends webhooks at the benchmark's rate for [`WARM_UP`] and waits for their rows, so the
/// groups have joined, the broker's JIT and heap have settled and the measurement starts on a
/// pipeline in its steady state. None of these is measured.
async fn warm_up(
    http: &reqwest::Client,
    hooks: &str,
    provider: Provider,
    account: &str,
    template: &Value,
    run_id: &str,
    pool: &sqlx::PgPool,
) -> anyhow::Result<()> {
    let warm_id = format!("warm{run_id}");
    let total = RATE * WARM_UP.as_secs();
    let mut ticks = tokio::time::interval(Duration::from_nanos(1_000_000_000 / RATE));
    let url = format!("{hooks}/webhooks/{}/{account}", provider.as_str());
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..total {
        ticks.tick().await;
        let request = signed_webhook(http, &url, payload(template, &warm_id, i)?);
        sends.spawn(async move { request.send().await.map(|r| r.status()) });
    }
    while let Some(sent) = sends.join_next().await {
        let status = sent??;
        if status.as_u16() != 202 {
            anyhow::bail!("a warm-up webhook answered {status}");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM calls WHERE call_id LIKE $1")
            .bind(format!("bench-wh-{warm_id}-%"))
            .fetch_one(pool)
            .await?;
        if n >= total as i64 {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "the warm-up webhooks did not reach Postgres within 60 s ({n} of {total})"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One read: HTTP status (0: no answer), latency in ms from its due time, route.
type Read = (u16, f64, &'static str);

/// Open-loop reads of the API for `duration`.
async fn read_load(
    http: reqwest::Client,
    api: String,
    sync_id: String,
    duration: Duration,
) -> Vec<Read> {
    let routes: [(&'static str, String); 3] = [
        ("/api/providers", format!("{api}/api/providers")),
        ("/api/syncs", format!("{api}/api/syncs")),
        ("/api/syncs/{id}", format!("{api}/api/syncs/{sync_id}")),
    ];
    let interval = Duration::from_nanos(1_000_000_000 / READ_RATE);
    let total = READ_RATE * duration.as_secs();
    let started = Instant::now();
    let out: Arc<Mutex<Vec<Read>>> = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let due = started + interval * u32::try_from(i).unwrap_or(u32::MAX);
        tokio::time::sleep_until(due.into()).await;
        let (route, url) = routes[(i % 3) as usize].clone();
        let (http, out) = (http.clone(), Arc::clone(&out));
        tasks.spawn(async move {
            let status = match http.get(url).send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    // the whole body is part of the answer
                    let _ = r.bytes().await;
                    status
                }
                Err(_) => 0,
            };
            let ms = due.elapsed().as_secs_f64() * 1000.0;
            if let Ok(mut o) = out.lock() {
                o.push((status, ms, route));
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let result = out.lock().map(|o| o.clone()).unwrap_or_default();
    result
}

/// The `q` quantile (nearest rank) of `values`; 0 when empty. Sorts in place.
fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

/// `_sum / _count` of an unlabelled histogram in Prometheus text; 0 when absent.
fn histogram_mean(text: &str, name: &str) -> f64 {
    let read = |suffix: &str| {
        let prefix = format!("{name}_{suffix} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let count = read("count");
    if count > 0.0 {
        read("sum") / count
    } else {
        0.0
    }
}

/// The webhook -> Postgres latency split at the two topics, from the Kafka timestamps of each
/// call's records (producer create times) and its row's commit time.
struct StageLatencies {
    /// due time -> the API's producer took it (`calls.raw` timestamp)
    to_raw: Vec<f64>,
    /// `calls.raw` -> the processor's producer took it (`calls` timestamp): consume, judge
    to_calls: Vec<f64>,
    /// `calls` -> the row committed: the processor's batch wait and transaction commit, the
    /// sink's fetch, batch and upsert
    to_commit: Vec<f64>,
}

impl StageLatencies {
    fn of(
        rows: &[(String, DateTime<Utc>)],
        raw: &std::collections::HashMap<u64, i64>,
        calls: &std::collections::HashMap<u64, i64>,
        due: impl Fn(u64) -> DateTime<Utc>,
    ) -> Self {
        let mut stages = StageLatencies {
            to_raw: Vec::with_capacity(rows.len()),
            to_calls: Vec::with_capacity(rows.len()),
            to_commit: Vec::with_capacity(rows.len()),
        };
        for (call_id, synced_at) in rows {
            let Some(index) = call_id
                .rsplit('-')
                .next()
                .and_then(|d| d.parse::<u64>().ok())
            else {
                continue;
            };
            let (Some(&raw_ms), Some(&calls_ms)) = (raw.get(&index), calls.get(&index)) else {
                continue;
            };
            let due_ms = due(index).timestamp_micros() as f64 / 1000.0;
            let synced_ms = synced_at.timestamp_micros() as f64 / 1000.0;
            stages.to_raw.push(raw_ms as f64 - due_ms);
            stages.to_calls.push((calls_ms - raw_ms) as f64);
            stages.to_commit.push(synced_ms - calls_ms as f64);
        }
        stages
    }

    fn percentiles(values: &[f64]) -> (f64, f64) {
        let mut v = values.to_vec();
        (percentile(&mut v, 0.5), percentile(&mut v, 0.99))
    }

    fn to_json(&self) -> Value {
        let entry = |values: &[f64]| {
            let (p50, p99) = Self::percentiles(values);
            json!({"p50": p50, "p99": p99, "calls": values.len()})
        };
        json!({
            "due_to_calls_raw": entry(&self.to_raw),
            "calls_raw_to_calls": entry(&self.to_calls),
            "calls_to_row_commit": entry(&self.to_commit),
        })
    }
}

impl std::fmt::Display for StageLatencies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (name, values) in [
            ("due -> calls.raw", &self.to_raw),
            ("calls.raw -> calls", &self.to_calls),
            ("calls -> row commit", &self.to_commit),
        ] {
            let (p50, p99) = Self::percentiles(values);
            write!(f, "{name} {p50:.0} / {p99:.0}; ")?;
        }
        write!(f, "({} calls)", self.to_raw.len())
    }
}
