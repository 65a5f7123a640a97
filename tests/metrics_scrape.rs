//! Scrapes `/metrics` of the running service after real traffic and checks that every metric
//! the service promises is there with sane values: records per stage and outcome, provider
//! requests by status with a latency histogram, 429s, circuit state, sink batch size and
//! latency, consumer lag, DLQ count, and the end-to-end latency from `observed_at` to the
//! database commit.
//!
//! Traffic: a sync triggered through the API against the simulator (with injected 429s and a
//! share of broken records, which land in the DLQ), signed webhooks (and a forged one), all
//! carried by the processor and the sink into Postgres. Every role runs in this process, so the
//! one registry `/metrics` renders holds them all. Real broker and real Postgres.
//!
//! The Prometheus text is parsed by a small parser below (the exposition format is a
//! line-based grammar; the parser checks every line it reads, so a malformed exposition
//! fails the test).

mod service_support;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use callsync::roles::Role;
use callsync_schemas::Provider;
use callsync_simulator::FaultConfig;
use serde_json::json;
use service_support::{Service, ServiceOptions, WEBHOOK_SECRET};

const CALLS: u64 = 600;
const WEBHOOK_CALLS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_endpoint_reports_every_stage_after_real_traffic() {
    let kafka = callsync_testkit::skip_unless_kafka!();
    let db = callsync_testkit::skip_unless_postgres!();

    let service = Service::start(
        &kafka,
        db,
        ServiceOptions {
            seed: 61,
            providers: vec![Provider::Retreaver],
            calls_per_account: CALLS,
            bad_record_share: 0.05,
            clock_behind: chrono::Duration::minutes(1),
            full_cron: "off".to_string(),
            roles: Role::ALL.to_vec(),
        },
    )
    .await;
    let (provider, account) = service.accounts[0].clone();

    // a sync with 429s injected on a share of the provider's answers
    service
        .sim
        .set_faults(
            provider,
            Some(&account),
            FaultConfig {
                rate_limited_share: 0.3,
                ..FaultConfig::default()
            },
        )
        .expect("faults");
    let id = service.trigger(provider, &account, "full").await;
    service.wait_completed(&[id], Duration::from_secs(60)).await;
    service.sim.reset_faults();

    // webhooks: new calls (202), a forged one (401)
    let mut webhook_keys = HashSet::new();
    let calls = service.retreaver_calls(&account, WEBHOOK_CALLS).await;
    assert_eq!(calls.len(), WEBHOOK_CALLS);
    for (i, call) in calls.iter().enumerate() {
        let mut call = call.clone();
        let call_id = format!("metrics-webhook-{i}-{}", uuid::Uuid::new_v4().simple());
        call["uuid"] = json!(call_id);
        let body = serde_json::to_vec(&call).expect("JSON");
        let code = service
            .post_webhook(provider, &account, &body, WEBHOOK_SECRET)
            .await;
        assert_eq!(code, 202, "a signed webhook is accepted");
        webhook_keys.insert(format!("{}:{account}:{call_id}", provider.as_str()));
    }
    let forged = serde_json::to_vec(&calls[0]).expect("JSON");
    assert_eq!(
        service
            .post_webhook(provider, &account, &forged, "not-the-secret")
            .await,
        401
    );

    // everything lands: the table equals the truth plus the webhook calls
    let (mismatches, rows, truth_calls) = service
        .compare_with_truth(&webhook_keys, Duration::from_secs(30))
        .await;
    assert!(
        mismatches.is_empty(),
        "table vs truth: {:?}",
        &mismatches[..mismatches.len().min(10)]
    );
    assert_eq!(rows, truth_calls + WEBHOOK_CALLS);

    // the API's lag reporter runs every second: wait for a scrape that shows both groups
    // caught up. Lag counts records, not offsets: a fully consumed partition whose last
    // entries are transaction markers (the connectors and the processor write
    // transactionally) shows 0, where Kafka's own tools show 1.
    let processor_group = service.config.processor.group_id.clone();
    let sink_group = service.config.sink.as_ref().expect("sink").group.clone();
    let partitions = service_support::CALL_PARTITIONS as usize;
    let deadline = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let metrics = scrape(&service).await;
        let lag = |group: &str| {
            let samples = metrics.samples("callsync_consumer_lag", &[("group", group)]);
            assert!(samples.iter().all(|s| s.value >= 0.0), "{samples:?}");
            (
                samples.len(),
                samples.iter().map(|s| s.value).fold(0.0, f64::max),
            )
        };
        let (processor_partitions, processor_lag) = lag(&processor_group);
        let (sink_partitions, sink_lag) = lag(&sink_group);
        if processor_partitions == partitions
            && sink_partitions == partitions
            && processor_lag == 0.0
            && sink_lag == 0.0
        {
            break metrics;
        }
        assert!(
            Instant::now() < deadline,
            "consumer lag of {processor_group} ({processor_partitions} partitions, max {processor_lag}) and {sink_group} ({sink_partitions} partitions, max {sink_lag}) did not drain"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(metrics.kind("callsync_consumer_lag"), Some("gauge"));

    // records per stage and outcome
    let connector_emitted = metrics.value(
        "callsync_records_total",
        &[("stage", "connector"), ("outcome", "emitted")],
    );
    assert!(
        connector_emitted >= truth_calls as f64,
        "connector emitted {connector_emitted} for {truth_calls} calls"
    );
    assert_eq!(
        metrics.value(
            "callsync_records_total",
            &[("stage", "webhook"), ("outcome", "produced")]
        ),
        WEBHOOK_CALLS as f64
    );
    let processed = metrics.sum("callsync_records_total", &[("stage", "processor")]);
    assert!(
        processed >= connector_emitted + WEBHOOK_CALLS as f64,
        "the processor handled {processed} records of {connector_emitted} + {WEBHOOK_CALLS}"
    );
    let written = metrics.sum("callsync_records_total", &[("stage", "sink")]);
    assert!(
        written >= rows as f64,
        "the sink wrote {written} records for {rows} rows"
    );
    assert_eq!(metrics.kind("callsync_records_total"), Some("counter"));

    // webhooks by outcome
    assert_eq!(
        metrics.value(
            "callsync_webhooks_total",
            &[("provider", "retreaver"), ("outcome", "accepted")]
        ),
        WEBHOOK_CALLS as f64
    );
    assert_eq!(
        metrics.value(
            "callsync_webhooks_total",
            &[("provider", "retreaver"), ("outcome", "unauthorized")]
        ),
        1.0
    );

    // provider requests by status, their latency, 429s
    let ok = metrics.value(
        "callsync_provider_requests_total",
        &[("provider", "retreaver"), ("status", "200")],
    );
    let throttled = metrics.value(
        "callsync_provider_requests_total",
        &[("provider", "retreaver"), ("status", "429")],
    );
    assert!(ok >= 1.0, "200 answers counted: {ok}");
    assert!(throttled >= 1.0, "429 answers counted: {throttled}");
    let rate_limited = metrics.value(
        "callsync_provider_rate_limited_total",
        &[("provider", "retreaver"), ("account", account.as_str())],
    );
    assert_eq!(
        rate_limited, throttled,
        "every 429 is counted as rate limited"
    );
    let requests = metrics.sum(
        "callsync_provider_requests_total",
        &[("provider", "retreaver")],
    );
    let latency = metrics.histogram(
        "callsync_provider_request_seconds",
        &[("provider", "retreaver")],
    );
    assert_eq!(
        latency.count, requests,
        "one latency observation per provider request"
    );
    assert!(
        latency.sum > 0.0 && latency.sum / latency.count < 10.0,
        "{latency:?}"
    );

    // circuit state: closed (0) for the healthy account
    assert_eq!(
        metrics.value(
            "callsync_circuit_state",
            &[("provider", "retreaver"), ("account", account.as_str())]
        ),
        0.0
    );
    assert_eq!(metrics.kind("callsync_circuit_state"), Some("gauge"));

    // sink batches: size and commit latency
    let batch_rows = metrics.histogram("callsync_sink_batch_rows", &[]);
    let batch_secs = metrics.histogram("callsync_sink_batch_seconds", &[]);
    assert!(batch_rows.count >= 1.0, "{batch_rows:?}");
    assert_eq!(batch_rows.count, batch_secs.count, "one latency per batch");
    assert!(
        batch_rows.sum >= rows as f64,
        "batches held {} rows for {rows} rows in the table",
        batch_rows.sum
    );
    assert!(batch_secs.sum > 0.0 && batch_secs.sum / batch_secs.count < 10.0);

    // the DLQ: the simulator's broken records
    let bad: u64 = service
        .accounts
        .iter()
        .map(|(p, a)| service.sim.truth_summary(*p, a, None).expect("truth").bad)
        .sum();
    assert!(bad >= 1, "the simulator served broken records");
    let dlq = metrics.sum("callsync_dlq_total", &[]);
    assert!(
        dlq >= bad as f64,
        "{dlq} records in the DLQ for {bad} broken records"
    );

    // end to end: observed_at -> database commit, one observation per row written
    let e2e = metrics.histogram("callsync_end_to_end_seconds", &[]);
    assert!(
        e2e.count >= rows as f64,
        "{} end-to-end observations for {rows} rows",
        e2e.count
    );
    assert!(
        e2e.sum >= 0.0 && e2e.sum / e2e.count < 60.0,
        "mean end-to-end latency {}s",
        e2e.sum / e2e.count
    );

    // the HTTP API's own metrics
    assert!(
        metrics.sum(
            "callsync_http_requests_total",
            &[("route", "/webhooks/{provider}/{account}")]
        ) >= (WEBHOOK_CALLS + 1) as f64
    );

    // every name the alert rules and the dashboard use is one /metrics exposes
    deploy_files_use_exposed_metrics(&metrics);

    service.stop().await;
}

/// The `callsync_*` metric names in `text` (PromQL), histogram suffixes kept.
fn metric_names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("callsync_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// deploy/prometheus/alerts.yml and deploy/grafana/callsync.json: each alert the runbooks
/// promise is there, and every `callsync_*` series they query is one the running service
/// exposes (a histogram's `_bucket`/`_sum`/`_count` counts as its family).
fn deploy_files_use_exposed_metrics(metrics: &Exposition) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let rules: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root.join("prometheus/alerts.yml")).expect("alerts.yml"),
    )
    .expect("alerts.yml is YAML");
    let mut alerts = BTreeMap::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("alert name").to_string();
            let expr = rule["expr"].as_str().expect("expr").to_string();
            assert!(
                rule["labels"]["severity"].as_str().is_some()
                    && rule["annotations"]["summary"].as_str().is_some(),
                "{name} has a severity and a summary"
            );
            alerts.insert(name, expr);
        }
    }
    for wanted in [
        "CallsyncConsumerLagGrowing",
        "CallsyncDeadLettersGrowing",
        "CallsyncProviderDisabled",
        "CallsyncSyncsFailing",
        "CallsyncRoleFailed",
        "CallsyncRoleWithoutMembers",
        "CallsyncProcessDown",
        "CallsyncMemoryNearLimit",
        "CallsyncWebhook5xx",
    ] {
        assert!(alerts.contains_key(wanted), "alert {wanted} in alerts.yml");
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("grafana/callsync.json")).expect("dashboard"),
    )
    .expect("the dashboard is JSON");
    let mut queries: Vec<(String, String)> = alerts
        .iter()
        .map(|(name, expr)| (format!("alert {name}"), expr.clone()))
        .collect();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            queries.push((
                format!("panel {}", panel["title"]),
                target["expr"].as_str().expect("expr").to_string(),
            ));
        }
    }
    assert!(queries.len() > alerts.len(), "the dashboard has queries");
    let exposed = |name: &str| {
        metrics.types.contains_key(name)
            || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                name.strip_suffix(suffix)
                    .is_some_and(|family| metrics.kind(family) == Some("histogram"))
            })
    };
    let mut missing = Vec::new();
    for (place, expr) in &queries {
        for name in metric_names_in(expr) {
            if !exposed(&name) {
                missing.push(format!("{place}: {name}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "metrics used in deploy/ that /metrics does not expose: {missing:?}"
    );
}

async fn scrape(service: &Service) -> Exposition {
    let response = service
        .http
        .get(format!("{}/metrics", service.api))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("text/plain"),
        "content type {content_type}"
    );
    let text = response.text().await.expect("metrics text");
    Exposition::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Label names and values, sorted by name.
type LabelSet = Vec<(String, String)>;

/// One sample: `name{labels} value`.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug, Clone, Copy)]
struct Histogram {
    count: f64,
    sum: f64,
}

/// A parsed Prometheus text exposition (format 0.0.4).
#[derive(Debug, Default)]
struct Exposition {
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    fn parse(text: &str) -> Result<Exposition, String> {
        let mut out = Exposition::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                let mut words = comment.split_whitespace();
                if words.next() == Some("TYPE") {
                    let name = words
                        .next()
                        .ok_or(format!("line {n}: TYPE without a name"))?;
                    let kind = words
                        .next()
                        .ok_or(format!("line {n}: TYPE without a type"))?;
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(format!("line {n}: unknown type {kind}"));
                    }
                    out.types.insert(name.to_string(), kind.to_string());
                }
                continue;
            }
            out.samples
                .push(parse_sample(line).map_err(|e| format!("line {n} {line:?}: {e}"))?);
        }
        Ok(out)
    }

    fn kind(&self, name: &str) -> Option<&str> {
        self.types.get(name).map(String::as_str)
    }

    /// Samples named `name` whose labels include `labels`.
    fn samples(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
            })
            .collect()
    }

    /// The one sample named `name` with exactly the labels `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let matching: Vec<&Sample> = self
            .samples(name, labels)
            .into_iter()
            .filter(|s| s.labels.len() == labels.len())
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "one sample {name}{labels:?} expected; the exposition has {:?}",
            self.samples(name, &[])
        );
        matching[0].value
    }

    /// The sum over the samples named `name` whose labels include `labels` (at least one).
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let samples = self.samples(name, labels);
        assert!(
            !samples.is_empty(),
            "no sample {name}{labels:?}; the exposition has {:?}",
            self.samples(name, &[])
        );
        samples.iter().map(|s| s.value).sum()
    }

    /// Count and sum of a histogram (summed over label sets that include `labels`); checks
    /// that it is typed a histogram and that its buckets are cumulative and end in `+Inf`
    /// equal to the count.
    fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Histogram {
        assert_eq!(self.kind(name), Some("histogram"), "{name} is a histogram");
        let count = self.sum(&format!("{name}_count"), labels);
        let sum = self.sum(&format!("{name}_sum"), labels);
        // label set without `le` -> (upper bound, cumulative count) of each bucket
        let mut by_series: BTreeMap<LabelSet, Vec<(f64, f64)>> = BTreeMap::new();
        for s in self.samples(&format!("{name}_bucket"), labels) {
            let le = s.labels.get("le").expect("a bucket has le");
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().expect("numeric le")
            };
            let series: LabelSet = s
                .labels
                .iter()
                .filter(|(k, _)| k.as_str() != "le")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            by_series.entry(series).or_default().push((bound, s.value));
        }
        assert!(!by_series.is_empty(), "{name} has buckets");
        let mut inf_total = 0.0;
        for (series, mut buckets) in by_series {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{name}{series:?}: buckets are cumulative: {buckets:?}"
            );
            let last = buckets.last().expect("a bucket");
            assert!(last.0.is_infinite(), "{name}{series:?} ends with +Inf");
            inf_total += last.1;
        }
        assert_eq!(inf_total, count, "{name}: the +Inf bucket equals _count");
        Histogram { count, sum }
    }
}

/// `name{k="v",...} value [timestamp]`, with `\\`, `\"` and `\n` escapes in label values.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let mut chars = after_brace.char_indices().peekable();
        let mut consumed = None;
        loop {
            while chars.peek().is_some_and(|(_, c)| *c == ',' || *c == ' ') {
                chars.next();
            }
            match chars.peek() {
                Some((i, '}')) => {
                    consumed = Some(i + 1);
                    break;
                }
                None => break,
                _ => {}
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {key:?} without a quoted value"));
            }
            let mut value = String::new();
            let mut closed = false;
            while let Some((_, c)) = chars.next() {
                match c {
                    '\\' => match chars.next().map(|(_, c)| c) {
                        Some('n') => value.push('\n'),
                        Some(other) => value.push(other),
                        None => return Err("dangling escape".into()),
                    },
                    '"' => {
                        closed = true;
                        break;
                    }
                    other => value.push(other),
                }
            }
            if !closed {
                return Err(format!("label {key:?}: unterminated value"));
            }
            labels.insert(key.trim().to_string(), value);
        }
        let consumed = consumed.ok_or("labels without a closing brace")?;
        rest = &after_brace[consumed..];
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().map_err(|e| format!("value {v:?}: {e}"))?,
    };
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|e| format!("timestamp {ts:?}: {e}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

#[test]
fn the_parser_reads_labels_escapes_and_histograms() {
    let text = "# HELP x_total a counter\n# TYPE x_total counter\n\
                x_total{a=\"1\",b=\"q\\\"uote\\\\\"} 3\n\
                # TYPE h histogram\n\
                h_bucket{le=\"0.5\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.7\nh_count 2\n\
                plain 4.5 1700000000000\n";
    let e = Exposition::parse(text).expect("parses");
    assert_eq!(e.value("x_total", &[("a", "1"), ("b", "q\"uote\\")]), 3.0);
    assert_eq!(e.value("plain", &[]), 4.5);
    let h = e.histogram("h", &[]);
    assert_eq!((h.count, h.sum), (2.0, 0.7));
    assert!(Exposition::parse("bad{a=\"1\" 3").is_err());
    assert!(Exposition::parse("x{a=1} 3").is_err());
    assert!(Exposition::parse("x 3 4 5").is_err());
}
