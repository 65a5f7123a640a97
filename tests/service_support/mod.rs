//! The whole service in the test process on the real broker and real Postgres, shared by
//! `service_e2e` and `metrics_scrape`: the provider simulator, the topic catalogue under a
//! prefix unique to the test, and `callsync run` roles (`run_roles_with`) behind the two HTTP
//! listeners on ephemeral ports: the control API (with a token) and the public webhook one.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use callsync::cli::connectors_for_simulator;
use callsync::config::CallsyncConfig;
use callsync::roles::{run_roles_with, Role, RolesReport, RunOptions};
use callsync::webhooks::signature::{hmac_sha256_signature, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use callsync_runtime::{
    ensure_catalogue, CatalogueOptions, KafkaClientFactory, KafkaSettings, Shutdown,
};
use callsync_schemas::Provider;
use callsync_simulator::{AccountConfig, RunningSimulator, Simulator, SimulatorConfig};
use callsync_testkit::{RealKafka, TestDatabase};
use serde_json::{json, Value};

pub const WEBHOOK_SECRET: &str = "service-test-webhook-secret";
/// The control API's token (read and operate); `Service::http` sends it.
pub const API_TOKEN: &str = "service-test-api-token-0123456789abcdef";
/// Partitions of the call topics (few: a lean test on a 2-core machine).
pub const CALL_PARTITIONS: i32 = 3;

/// What to simulate and how to schedule it.
pub struct ServiceOptions {
    pub seed: u64,
    pub providers: Vec<Provider>,
    pub calls_per_account: u64,
    /// Share of calls the simulator serves broken (they go to the DLQ).
    pub bad_record_share: f64,
    /// The simulated clock starts this far behind the wall clock (frozen), so advancing it
    /// later brings late changes and new calls into the sync windows.
    pub clock_behind: chrono::Duration,
    /// Cron expression of the full syncs of every account (`off` disables them).
    pub full_cron: String,
    pub roles: Vec<Role>,
}

/// The running service.
pub struct Service {
    pub sim: RunningSimulator,
    pub config: CallsyncConfig,
    /// The control API (private listener).
    pub api: String,
    /// The public webhook listener.
    pub hooks: String,
    /// Sends the API token with every request.
    pub http: reqwest::Client,
    pub shutdown: Shutdown,
    pub db: TestDatabase,
    pub factory: KafkaClientFactory,
    pub accounts: Vec<(Provider, String)>,
    roles: Option<tokio::task::JoinHandle<anyhow::Result<RolesReport>>>,
}

impl Service {
    pub async fn start(kafka: &RealKafka, db: TestDatabase, options: ServiceOptions) -> Service {
        // every metric recorded from here on is rendered by /metrics
        let _ = callsync_runtime::metrics::prometheus();
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let prefix = format!("svc{}.", &unique[..12]);
        let mut settings = KafkaSettings::plaintext(kafka.bootstrap());
        settings.topic_prefix = prefix.clone();
        let factory = KafkaClientFactory::new(settings.clone());
        let topics = CatalogueOptions {
            call_partitions: CALL_PARTITIONS,
            calls_retention_days: 30,
        };
        ensure_catalogue(&factory, &topics, Duration::from_secs(60))
            .await
            .expect("creating the topics");

        let sim = start_simulator(&options).await;
        let accounts: Vec<(Provider, String)> = options
            .providers
            .iter()
            .flat_map(|&p| sim.accounts(p).into_iter().map(move |a| (p, a)))
            .collect();
        let config = service_config(&settings, &sim, &options, &accounts, &db.url, &unique);

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the API");
        let api = format!("http://{}", listener.local_addr().expect("API address"));
        let hooks_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the webhook listener");
        let hooks = format!(
            "http://{}",
            hooks_listener
                .local_addr()
                .expect("webhook listener address")
        );
        let shutdown = Shutdown::new();
        let roles = {
            let config = config.clone();
            let shutdown = shutdown.clone();
            let roles = options.roles.clone();
            let run_options = RunOptions {
                api_listener: Some(listener),
                webhook_listener: Some(hooks_listener),
                ..RunOptions::default()
            };
            tokio::spawn(
                async move { run_roles_with(&config, &roles, shutdown, run_options).await },
            )
        };
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {API_TOKEN}").parse().expect("header"),
        );
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .default_headers(headers)
            .build()
            .expect("HTTP client");
        let mut service = Service {
            sim,
            config,
            api,
            hooks,
            http,
            shutdown,
            db,
            factory,
            accounts,
            roles: Some(roles),
        };
        service.wait_healthy().await;
        service
    }

    async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.roles.as_ref().is_some_and(|r| r.is_finished()) {
                let result = self.roles.take().expect("roles task").await;
                panic!("the roles stopped while starting: {result:?}");
            }
            if let Ok(r) = self.http.get(format!("{}/healthz", self.api)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "the API did not answer in 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Fails the test if a role stopped (they run until shutdown).
    pub fn assert_running(&self) {
        assert!(
            !self.roles.as_ref().is_some_and(|r| r.is_finished()),
            "a role stopped early (see the log above)"
        );
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let response = self
            .http
            .get(format!("{}{path}", self.api))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status();
        let body: Value = response.json().await.expect("JSON answer");
        assert!(status.is_success(), "GET {path} answered {status}: {body}");
        body
    }

    /// `POST /api/syncs`; returns the sync id.
    pub async fn trigger(&self, provider: Provider, account: &str, mode: &str) -> String {
        let response = self
            .http
            .post(format!("{}/api/syncs", self.api))
            .json(&json!({"provider": provider.as_str(), "account_id": account, "mode": mode}))
            .send()
            .await
            .expect("POST /api/syncs");
        let status = response.status();
        let body: Value = response.json().await.expect("JSON answer");
        assert_eq!(status.as_u16(), 202, "POST /api/syncs answered {body}");
        body["id"].as_str().expect("an id").to_string()
    }

    /// Waits (through `GET /api/syncs/{id}`) until every sync of `ids` completed; returns the
    /// records each fetched.
    pub async fn wait_completed(&self, ids: &[String], timeout: Duration) -> Vec<i64> {
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_running();
            let mut records = Vec::new();
            for id in ids {
                let response = self
                    .http
                    .get(format!("{}/api/syncs/{id}", self.api))
                    .send()
                    .await
                    .expect("GET /api/syncs/{id}");
                if !response.status().is_success() {
                    break; // not seen yet
                }
                let status: Value = response.json().await.expect("JSON answer");
                match status["state"].as_str() {
                    Some("completed") => records.push(status["records"].as_i64().unwrap_or(0)),
                    Some("failed") if status["next_attempt_at"].is_null() => {
                        panic!("sync {id} failed for good: {status}")
                    }
                    _ => break,
                }
            }
            if records.len() == ids.len() {
                return records;
            }
            assert!(
                Instant::now() < deadline,
                "syncs {ids:?} not completed within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Posts a signed webhook (HMAC-SHA256 over timestamp + body); returns the status code.
    pub async fn post_webhook(
        &self,
        provider: Provider,
        account: &str,
        body: &[u8],
        secret: &str,
    ) -> u16 {
        let ts = chrono::Utc::now().timestamp();
        self.http
            .post(format!(
                "{}/webhooks/{}/{account}",
                self.hooks,
                provider.as_str()
            ))
            .header(TIMESTAMP_HEADER, ts.to_string())
            .header(
                SIGNATURE_HEADER,
                hmac_sha256_signature(secret.as_bytes(), ts, body),
            )
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .expect("POST webhook")
            .status()
            .as_u16()
    }

    /// The newest `n` Retreaver calls as the simulator's API serves them (the templated
    /// webhook payload of Retreaver is its API record).
    pub async fn retreaver_calls(&self, account: &str, n: usize) -> Vec<Value> {
        let creds = self
            .sim
            .credentials(Provider::Retreaver, account)
            .expect("simulator credentials");
        let url = format!(
            "{}/api/v2/calls.json?api_key={}&company_id={account}&per_page={n}&sort_by=created_at&order=desc",
            self.sim.base_url(Provider::Retreaver),
            creds.api_key,
        );
        let page: Vec<Value> = self
            .http
            .get(url)
            .send()
            .await
            .expect("simulator calls")
            .json()
            .await
            .expect("simulator JSON");
        page.into_iter()
            .filter_map(|c| c.get("call").cloned())
            .collect()
    }

    /// Compares the calls table with the simulator's ground truth (as of its clock) plus
    /// `extra_keys` (webhook-only calls) until they agree or `timeout` passes; returns the
    /// differences (empty when equal) and the row count.
    pub async fn compare_with_truth(
        &self,
        extra_keys: &HashSet<String>,
        timeout: Duration,
    ) -> (Vec<String>, usize, usize) {
        let mut truth: BTreeMap<String, callsync_simulator::TruthRecord> = BTreeMap::new();
        for (provider, account) in &self.accounts {
            let summary = self
                .sim
                .truth_summary(*provider, account, None)
                .expect("truth summary");
            let before = truth.len();
            for t in self
                .sim
                .truth(*provider, account, None)
                .expect("truth")
                .filter(|t| t.bad.is_none())
            {
                truth.insert(t.call_key.clone(), t);
            }
            assert_eq!(
                (truth.len() - before) as u64,
                summary.calls,
                "truth and truth_summary agree on {provider}/{account}"
            );
        }
        let store = callsync_sinks::PgStore::connect(&self.db.url, 2, 1_000)
            .await
            .expect("connecting to Postgres");
        let expected = truth.len() + extra_keys.len();
        let deadline = Instant::now() + timeout;
        loop {
            let rows = callsync_sinks::CallStore::all_calls(&store)
                .await
                .expect("reading calls");
            let mismatches = callsync::demo::summary::truth_mismatches(&rows, &truth, extra_keys);
            if mismatches.is_empty() && rows.len() == expected {
                return (mismatches, rows.len(), truth.len());
            }
            if Instant::now() > deadline {
                return (mismatches, rows.len(), truth.len());
            }
            self.assert_running();
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Triggers shutdown and waits for every role to drain; returns their reports.
    pub async fn stop(mut self) -> RolesReport {
        self.shutdown.trigger();
        let roles = self.roles.take().expect("roles task");
        let report = tokio::time::timeout(Duration::from_secs(60), roles)
            .await
            .expect("the roles stopped within 60 s")
            .expect("roles task")
            .expect("roles");
        // the simulator stops when dropped
        report
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // a failing assertion must stop the roles, or they outlive the test
        self.shutdown.trigger();
    }
}

async fn start_simulator(options: &ServiceOptions) -> RunningSimulator {
    let mut config = SimulatorConfig::for_tests(options.seed);
    config.clock.start = chrono::Utc::now() - options.clock_behind;
    config.clock.speed = 0.0;
    for provider in Provider::ALL {
        let p = config.provider_mut(provider);
        p.accounts = if options.providers.contains(&provider) {
            vec![AccountConfig {
                calls: options.calls_per_account,
                future_calls: (options.calls_per_account / 20).max(1),
                history_secs: 86_400,
                bad_record_share: options.bad_record_share,
                ..AccountConfig::with_calls(options.calls_per_account)
            }]
        } else {
            Vec::new()
        };
    }
    Simulator::start(config).await.expect("simulator")
}

fn service_config(
    settings: &KafkaSettings,
    sim: &RunningSimulator,
    options: &ServiceOptions,
    accounts: &[(Provider, String)],
    database_url: &str,
    unique: &str,
) -> CallsyncConfig {
    let mut connectors = connectors_for_simulator(sim, &options.providers, 60_000.0);
    let two_days = 2 * 86_400;
    connectors["sync"] = json!({
        // every window covers the whole simulated day of history, so full and incremental
        // syncs both see every late change
        "full_window_days": 2,
        "initial_incremental_secs": two_days,
        "lookback_secs": two_days,
        "created_scan_lookback_secs": two_days,
        "backfill_window_secs": 12 * 3600,
        "progress_every": 200,
        "request_timeout_secs": 10,
        "kafka_timeout_secs": 20,
        "transactional_id_prefix": format!("svc-{unique}"),
    });
    connectors["retry"] = json!({"base_delay_ms": 20, "max_delay_ms": 500});
    let schedule_accounts: Vec<Value> = accounts
        .iter()
        .map(|(p, a)| {
            json!({"provider": p.as_str(), "account_id": a, "full": options.full_cron, "incremental": "off"})
        })
        .collect();
    let webhook_accounts: Vec<Value> = accounts
        .iter()
        .map(|(p, a)| {
            json!({"provider": p.as_str(), "account_id": a, "method": "hmac_sha256", "secret": WEBHOOK_SECRET})
        })
        .collect();
    let value = json!({
        "kafka": {"bootstrap_servers": settings.bootstrap_servers, "topic_prefix": settings.topic_prefix},
        "topics": {"call_partitions": CALL_PARTITIONS},
        "processor": {
            "group_id": format!("svc-{unique}-processor"),
            "batch_max_time_ms": 100,
        },
        "sink": {
            "database_url": database_url,
            "group": format!("svc-{unique}-sink"),
            "batch_max_ms": 100,
            "max_connections": 2,
        },
        "connectors": connectors,
        // the latest slot of the last two minutes fires at once, the next one on the minute
        "scheduler": {"catch_up_secs": 120, "accounts": schedule_accounts},
        "workers": {
            "group_id": format!("svc-{unique}-workers"),
            "max_concurrent": 3,
            "retry_initial_delay_secs": 1,
            "catch_up_timeout_secs": 10,
        },
        "health": {"interval_secs": 30},
        "webhooks": {"listen": "127.0.0.1:0", "accounts": webhook_accounts},
        "api": {
            "listen": "127.0.0.1:0",
            "lag_interval_secs": 1,
            "tokens": [{"name": "test", "token": API_TOKEN, "scopes": ["read", "operate"]}],
        },
        "log": {"filter": "warn"},
    });
    CallsyncConfig::from_value(&value).expect("the test's config")
}
