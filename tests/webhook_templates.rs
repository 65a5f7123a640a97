//! Webhooks as the providers send them, into the real binary, on the real broker and the real
//! Postgres.
//!
//! 1. Every template of docs/webhooks.md, exactly as written there, is rendered by the
//!    simulator as the provider renders its tokens (Ringba's `11/26/2025 9:48:06 PM` in the
//!    account's zone, Invoca's decimal commas, …), posted with its token to a
//!    `callsync run --roles api,processor,sink` process, and found in `calls` with the
//!    values the provider sent; CallRail's own bodies (Pre-Call, Post-Call, in both id styles)
//!    are posted signed. Before issue 18 every documented template was refused: the parser
//!    expected the API's field names (`uuid`, `inboundCallId`, …): 400.
//! 2. The interleavings of webhooks and polls, with a connector role and `callsync sync`:
//!    webhook then poll, poll then webhook, a duplicate webhook, and a partial webhook (only
//!    the revenue) on a polled row. Before, a webhook's missing fields were written as NULL
//!    with status unknown and a receipt-time version that outranked the later poll.
//!
//! Needs `KAFKA_BOOTSTRAP` and Postgres (skipped without them outside CI, fails under CI).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use callsync::webhooks::signature::callrail_signature;
use callsync_runtime::{ensure_catalogue, CatalogueOptions, KafkaClientFactory, KafkaSettings};
use callsync_schemas::{CallRecord, CallStatus, Provider};
use callsync_simulator::{
    AccountConfig, RunningSimulator, Simulator, SimulatorConfig, Stage, TruthRecord,
};
use callsync_sinks::CallStore;
use callsync_testkit::{RealKafka, TestDatabase};
use serde_json::json;

const TOKEN: &str = "e2e-webhook-token";
const CALLRAIL_KEY: &str = "e2e-callrail-signing-key";
const TEMPLATED: [Provider; 4] = [
    Provider::Retreaver,
    Provider::Ringba,
    Provider::Invoca,
    Provider::TrackDrive,
];

/// Where webhooks are posted: the public `[webhooks] listen` (the private API listener
/// answers 401 to anything without a bearer token).
fn webhook_url(service: &Callsync, provider: Provider, account: &str) -> String {
    format!(
        "{}/webhooks/{}/{account}",
        service.webhooks,
        provider.as_str()
    )
}

/// The JSON template under each provider's heading of docs/webhooks.md, as written.
fn documented_templates() -> BTreeMap<Provider, String> {
    let doc = include_str!("../docs/webhooks.md");
    let mut out = BTreeMap::new();
    for (heading, block) in callsync_testkit::markdown::code_blocks(doc, "json") {
        for provider in TEMPLATED {
            if heading.to_ascii_lowercase().starts_with(provider.as_str()) {
                out.insert(provider, block.trim_end().to_string());
            }
        }
    }
    out
}

/// A `callsync run` process; killed on drop (a failing test leaves none behind).
struct Callsync {
    child: Option<Child>,
    /// The public webhook listener's base URL.
    webhooks: String,
    config: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Callsync {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn callsync_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_callsync"));
    for (key, _) in std::env::vars() {
        if key.starts_with("CALLSYNC") {
            cmd.env_remove(key);
        }
    }
    cmd.env_remove("RUST_LOG");
    cmd
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The config of the test's processes: the simulator's accounts (Ringba with its zone), a
/// webhook account per provider (a token; CallRail's signing key).
fn config_text(
    kafka: &RealKafka,
    prefix: &str,
    db: &TestDatabase,
    sim: &RunningSimulator,
    port: u16,
) -> String {
    let providers = Provider::ALL.to_vec();
    let mut connectors = callsync::cli::connectors_for_simulator(sim, &providers, 60_000.0);
    connectors["sync"] = json!({
        "transactional_id_prefix": format!("{prefix}connector"),
        "full_window_days": 2,
        "reconcile_window_days": 0,
        "request_timeout_secs": 10,
    });
    let mut webhook_accounts = Vec::new();
    let mut schedule = Vec::new();
    for provider in providers {
        for account in sim.accounts(provider) {
            webhook_accounts.push(if provider == Provider::CallRail {
                json!({"provider": "callrail", "account_id": account, "method": "callrail_signature", "signing_key": CALLRAIL_KEY})
            } else {
                json!({"provider": provider.as_str(), "account_id": account, "method": "token", "token": TOKEN})
            });
            schedule.push(json!({"provider": provider.as_str(), "account_id": account, "full": "off", "incremental": "off"}));
        }
    }
    let value = json!({
        "kafka": {"bootstrap_servers": kafka.bootstrap(), "topic_prefix": prefix},
        "topics": {"call_partitions": 3},
        "log": {"filter": "warn"},
        "api": {"listen": "127.0.0.1:0", "lag_interval_secs": 0},
        "processor": {"group_id": format!("{prefix}processor"), "batch_max_time_ms": 50},
        "sink": {"database_url": db.url, "group": format!("{prefix}sink"), "batch_max_ms": 100, "max_connections": 2},
        "workers": {"group_id": format!("{prefix}workers")},
        "connectors": connectors,
        "scheduler": {"accounts": schedule},
        "webhooks": {"listen": format!("127.0.0.1:{port}"), "accounts": webhook_accounts},
    });
    toml::to_string(&value).expect("the config as TOML")
}

async fn start(
    kafka: &RealKafka,
    db: &TestDatabase,
    sim: &RunningSimulator,
    roles: &str,
) -> Callsync {
    let prefix = format!("{}.", kafka.unique_topic("webhook-templates"));
    let mut settings = KafkaSettings::plaintext(kafka.bootstrap());
    settings.topic_prefix = prefix.clone();
    let factory = KafkaClientFactory::new(settings);
    ensure_catalogue(
        &factory,
        &CatalogueOptions {
            call_partitions: 3,
            calls_retention_days: 1,
        },
        Duration::from_secs(60),
    )
    .await
    .expect("topics");
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let config = dir.path().join("callsync.toml");
    std::fs::write(&config, config_text(kafka, &prefix, db, sim, port)).expect("config");
    let log = dir.path().join("callsync.log");
    let child = callsync_command()
        .arg("--config")
        .arg(&config)
        .args(["run", "--roles", roles])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start callsync run");
    let mut service = Callsync {
        child: Some(child),
        webhooks: format!("http://127.0.0.1:{port}"),
        config,
        log,
        _dir: dir,
    };
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        service.assert_running();
        if let Ok(r) = http
            .get(format!("{}/healthz", service.webhooks))
            .send()
            .await
        {
            if r.status().is_success() {
                return service;
            }
        }
        assert!(Instant::now() < deadline, "callsync did not answer in 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Callsync {
    fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "callsync exited with {status}: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
        }
    }

    /// `callsync sync --mode full` of one account, in its own process (the poll).
    fn poll(&self, provider: Provider, account: &str) {
        let out = callsync_command()
            .arg("--config")
            .arg(&self.config)
            .args(["sync", "--mode", "full", "--provider", provider.as_str()])
            .args(["--account", account])
            .output()
            .expect("run callsync sync");
        assert!(
            out.status.success(),
            "callsync sync failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Posts `body` as the provider sends it (its token header; CallRail signed).
async fn post(service: &Callsync, provider: Provider, account: &str, body: &[u8]) -> (u16, String) {
    let mut request = reqwest::Client::new()
        .post(webhook_url(service, provider, account))
        .header("content-type", "application/json")
        .body(body.to_vec());
    request = if provider == Provider::CallRail {
        request.header(
            "Signature",
            callrail_signature(CALLRAIL_KEY.as_bytes(), body),
        )
    } else {
        request.header("X-Callsync-Token", TOKEN)
    };
    let response = request.send().await.expect("POST webhook");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// Rows of `calls` by call key, waiting until `keys` are all there (and `until` holds).
async fn rows(
    db: &TestDatabase,
    keys: &[String],
    until: impl Fn(&BTreeMap<String, CallRecord>) -> bool,
) -> BTreeMap<String, CallRecord> {
    let store = callsync_sinks::PgStore::connect(&db.url, 2, 1_000)
        .await
        .expect("Postgres");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // the sink migrates the database when it starts: until then the query may fail
        let all: BTreeMap<String, CallRecord> = match store.all_calls().await {
            Ok(calls) => calls
                .into_iter()
                .map(|c| (c.record.key().into_string(), c.record))
                .collect(),
            Err(_) => BTreeMap::new(),
        };
        if keys.iter().all(|k| all.contains_key(k)) && until(&all) {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "rows {:?} not in calls within 60 s (have {})",
            keys,
            all.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn simulator_config(seed: u64) -> SimulatorConfig {
    let mut config = SimulatorConfig::for_tests(seed);
    // an hour behind the wall clock, frozen: payload times are before their receipt
    config.clock.start = chrono::Utc::now() - chrono::Duration::hours(1);
    config.clock.speed = 0.0;
    for provider in Provider::ALL {
        config.provider_mut(provider).accounts = vec![AccountConfig {
            calls: 300,
            future_calls: 10,
            history_secs: 86_400,
            ..AccountConfig::with_calls(300)
        }];
    }
    config
}

/// Completed calls of the account created 2 to 12 hours before the simulator's now.
fn recent_completed(sim: &RunningSimulator, provider: Provider, account: &str) -> Vec<TruthRecord> {
    let now = sim.now();
    sim.truth(provider, account, None)
        .expect("truth")
        .filter(|t| t.bad.is_none() && t.stage >= Stage::Completed)
        .filter(|t| t.started_at < now - chrono::Duration::hours(2))
        .filter(|t| t.started_at > now - chrono::Duration::hours(12))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_template_reaches_postgres_as_the_provider_sent_it() {
    let kafka = callsync_testkit::skip_unless_kafka!();
    let db = callsync_testkit::skip_unless_postgres!();
    let sim = Simulator::start(simulator_config(31))
        .await
        .expect("simulator");
    let mut service = start(&kafka, &db, &sim, "api,processor,sink").await;
    let templates = documented_templates();
    assert_eq!(templates.len(), 4, "{templates:?}");

    let mut expected: Vec<(String, TruthRecord, Vec<u8>)> = Vec::new();
    for provider in TEMPLATED {
        let account = sim.accounts(provider)[0].clone();
        // calls whose last change is their completion: the body sent then is the truth now
        let calls = recent_completed(&sim, provider, &account)
            .into_iter()
            .filter(|t| t.stage == Stage::Completed);
        for truth in calls.take(3) {
            let body = sim
                .render_webhook(
                    provider,
                    &account,
                    truth.index,
                    Stage::Completed,
                    &templates[&provider],
                )
                .expect("the documented template renders");
            let (status, answer) = post(&service, provider, &account, body.as_bytes()).await;
            assert_eq!(status, 202, "{provider}: {answer}\n{body}");
            expected.push((truth.call_key.clone(), truth, body.into_bytes()));
        }
    }
    // CallRail's own bodies: a Post-Call and a Pre-Call, in whichever id style they come
    let account = sim.accounts(Provider::CallRail)[0].clone();
    let events = sim
        .webhook_events(
            Provider::CallRail,
            &account,
            sim.now() - chrono::Duration::hours(12),
            sim.now(),
        )
        .expect("events");
    for kind in ["post_call", "pre_call"] {
        let event = events
            .iter()
            .find(|e| {
                e.kind == kind
                    && !expected
                        .iter()
                        .any(|x| x.1.index == e.index && x.1.provider == Provider::CallRail)
            })
            .expect("an event of each kind");
        let (status, answer) = post(&service, Provider::CallRail, &account, &event.body).await;
        assert_eq!(status, 202, "CallRail {kind}: {answer}");
        let truth = sim
            .truth_of_call(Provider::CallRail, &account, event.index, Some(event.at))
            .expect("truth")
            .expect("exists");
        expected.push((truth.call_key.clone(), truth, event.body.clone()));
    }
    // a template with a field the parser does not know is refused, naming it
    let ringba = sim.accounts(Provider::Ringba)[0].clone();
    let (status, answer) = post(
        &service,
        Provider::Ringba,
        &ringba,
        br#"{"call_id": "x", "revnue": "1"}"#,
    )
    .await;
    assert_eq!(status, 400);
    assert!(answer.contains("revnue"), "{answer}");

    let keys: Vec<String> = expected.iter().map(|e| e.0.clone()).collect();
    let rows = rows(&db, &keys, |_| true).await;
    service.assert_running();
    for (key, truth, body) in &expected {
        let row = &rows[key];
        let what = format!("{key}: {}", String::from_utf8_lossy(body));
        assert_eq!(
            row.source,
            callsync_schemas::RecordSource::Webhook,
            "{what}"
        );
        assert!(
            (row.started_at - truth.started_at).num_milliseconds().abs() < 1000,
            "{what}: started_at {} vs {}",
            row.started_at,
            truth.started_at
        );
        assert_eq!(
            row.caller_number.as_ref(),
            Some(&truth.caller_number),
            "{what}"
        );
        if truth.provider == Provider::CallRail && row.status == CallStatus::InProgress {
            assert_eq!(
                row.duration_secs, None,
                "a Pre-Call carries no duration: {what}"
            );
        } else if truth.provider != Provider::Ringba {
            // Ringba has no status token; the others carry the call's status
            assert_eq!(row.status, truth.status, "{what}");
        }
        if truth.provider == Provider::Retreaver || truth.provider == Provider::TrackDrive {
            assert_eq!(row.revenue, truth.revenue, "{what}");
        }
        assert!(row.version <= chrono::Utc::now().timestamp_micros());
    }
}

/// The rows a poll of `account` leaves, as the truth says (for comparing after the poll).
fn polled(
    sim: &RunningSimulator,
    provider: Provider,
    account: &str,
) -> BTreeMap<String, TruthRecord> {
    sim.truth(provider, account, None)
        .expect("truth")
        .filter(|t| t.bad.is_none())
        .map(|t| (t.call_key.clone(), t))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_and_polls_interleave_without_losing_fields() {
    let kafka = callsync_testkit::skip_unless_kafka!();
    let db = callsync_testkit::skip_unless_postgres!();
    let provider = Provider::Retreaver;
    let sim = Simulator::start(simulator_config(32))
        .await
        .expect("simulator");
    let mut service = start(&kafka, &db, &sim, "api,processor,sink").await;
    let account = sim.accounts(provider)[0].clone();
    let template = documented_templates()[&provider].clone();
    let calls = recent_completed(&sim, provider, &account);
    let [before_poll, after_poll, duplicate, partial] =
        [&calls[0], &calls[1], &calls[2], &calls[3]];
    let render = |t: &TruthRecord| {
        sim.render_webhook(provider, &account, t.index, Stage::Completed, &template)
            .expect("renders")
    };

    // 1. webhook then poll: the webhook's row, then the poll's complete record over it
    let (status, answer) = post(&service, provider, &account, render(before_poll).as_bytes()).await;
    assert_eq!(status, 202, "{answer}");
    rows(&db, std::slice::from_ref(&before_poll.call_key), |_| true).await;
    // 3. a duplicate webhook: twice the same body
    // the second delivery of the same body is a replay: 200, nothing produced
    for expected in [202, 200] {
        let (status, answer) =
            post(&service, provider, &account, render(duplicate).as_bytes()).await;
        assert_eq!(status, expected, "{answer}");
    }
    service.poll(provider, &account);
    let truth = polled(&sim, provider, &account);
    let keys: Vec<String> = truth.keys().cloned().collect();
    let after_first_poll = rows(&db, &keys, |all| {
        all.get(&before_poll.call_key)
            .is_some_and(|r| r.source != callsync_schemas::RecordSource::Webhook)
    })
    .await;
    for key in [&before_poll.call_key, &duplicate.call_key] {
        let row = &after_first_poll[key];
        let t = &truth[key];
        assert_eq!(Some(row.version), t.version, "{key}: the poll's version");
        assert_eq!(row.revenue, t.revenue, "{key}");
        assert_eq!(
            row.tracking_number.as_ref(),
            Some(&t.tracking_number),
            "{key}"
        );
        assert!(!row.is_partial(), "{key}: complete after the poll");
    }

    // 2. poll then webhook: the (older) webhook changes nothing
    let (status, _) = post(&service, provider, &account, render(after_poll).as_bytes()).await;
    assert_eq!(status, 202);

    // 4. a partial webhook on a polled row: only the revenue, newer than the poll
    let partial_body = format!(
        r#"{{"call_id": "{}", "revenue": "77.25", "updated_at": "{}"}}"#,
        partial.call_id,
        (chrono::Utc::now() - chrono::Duration::seconds(5)).to_rfc3339()
    );
    let (status, answer) = post(&service, provider, &account, partial_body.as_bytes()).await;
    assert_eq!(status, 202, "{answer}");
    let after = rows(&db, &keys, |all| {
        all.get(&partial.call_key)
            .is_some_and(|r| r.revenue == Some(rust_decimal::Decimal::new(7725, 2)))
    })
    .await;
    service.assert_running();
    let row = &after[&partial.call_key];
    let t = &truth[&partial.call_key];
    assert_eq!(row.caller_number.as_ref(), Some(&t.caller_number), "kept");
    assert_eq!(
        row.tracking_number.as_ref(),
        Some(&t.tracking_number),
        "kept"
    );
    assert_eq!(row.status, t.status, "kept");
    assert_eq!(row.payout, t.payout, "kept");
    assert_eq!(row.duration_secs, t.duration_secs.map(|d| d as i32), "kept");
    assert_eq!(row.started_at, t.started_at, "kept");
    // the older webhook of step 2 left the polled row as it was
    let row = &after[&after_poll.call_key];
    let t = &truth[&after_poll.call_key];
    assert_eq!(Some(row.version), t.version);
    assert_eq!(row.revenue, t.revenue);
    assert!(!row.is_partial());
}
