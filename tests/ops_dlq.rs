//! `callsync dlq list|redrive` on the real broker: records move from `calls.dlq` to
//! `calls.raw` exactly once, per-reason progress, dry run, and a crashed redrive's open
//! transaction is aborted (its records never become visible). With real `callsync`
//! processes and Postgres: a row the database refused lands once after the constraint is
//! relaxed, and a connector dead letter lands after its mapping is fixed; `dlq list` shows
//! them redriven.
//!
//! Needs `KAFKA_BOOTSTRAP` (scripts/kafka-broker.sh start) and, for the last two, Postgres;
//! skipped without them, fails under CI.

mod ops_support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use callsync::ops::dlq::{HEADER_ERROR_REASON, HEADER_REDRIVE_COUNT, HEADER_REDRIVE_FROM};
use callsync::ops::{run_dlq_list, run_dlq_redrive, DlqListArgs, DlqRedriveArgs};
use ops_support::*;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

fn dlq_headers(reason: &str, redrives: Option<&str>) -> OwnedHeaders {
    let mut h = OwnedHeaders::new()
        .insert(Header {
            key: "traceparent",
            value: Some("00-abc-01"),
        })
        .insert(Header {
            key: HEADER_ERROR_REASON,
            value: Some(reason),
        })
        .insert(Header {
            key: "callsync.error.field",
            value: Some("currency"),
        })
        .insert(Header {
            key: "callsync.error.stage",
            value: Some("validate"),
        })
        .insert(Header {
            key: "callsync.error.message",
            value: Some("\"XYZ\" is not ISO 4217"),
        })
        .insert(Header {
            key: "callsync.source.topic",
            value: Some("calls.raw"),
        })
        .insert(Header {
            key: "callsync.source.partition",
            value: Some("0"),
        })
        .insert(Header {
            key: "callsync.source.offset",
            value: Some("7"),
        });
    if let Some(n) = redrives {
        h = h.insert(Header {
            key: HEADER_REDRIVE_COUNT,
            value: Some(n),
        });
    }
    h
}

fn redrive_args(group: &str, reason: Option<&str>) -> DlqRedriveArgs {
    DlqRedriveArgs {
        reason: reason.map(str::to_string),
        dry_run: false,
        limit: None,
        batch_size: 2,
        group: group.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_moves_records_to_calls_raw_exactly_once() {
    let kafka = callsync_testkit::skip_unless_kafka!();
    let prefix = unique_prefix(&kafka, "ops-dlq");
    let f = factory(&kafka, &prefix);
    let dlq = f.settings().topic("calls.dlq");
    let raw = f.settings().topic("calls.raw");
    kafka.create_topic(&dlq, 2, &[]).await.expect("dlq topic");
    kafka.create_topic(&raw, 2, &[]).await.expect("raw topic");
    let group = kafka.unique_group("redrive");

    // 4 unknown_currency (one redriven once before), 3 invalid_phone, interleaved
    let mut records = Vec::new();
    for i in 0..7 {
        let (reason, redrives) = match i {
            0 | 2 | 4 => ("unknown_currency", None),
            6 => ("unknown_currency", Some("1")),
            _ => ("invalid_phone", None),
        };
        records.push((
            format!("retreaver:acct-1:call-{i}"),
            format!("bytes-{i}").into_bytes(),
            None,
            Some(i % 2),
            dlq_headers(reason, redrives),
        ));
    }
    produce(&f, &dlq, records).await;

    // a redrive that crashed mid-transaction: records sent, never committed
    {
        let producer: BaseProducer = f
            .create(
                "crashed redrive",
                // a run of this deployment: the topic prefix and the group base name
                &f.transactional_producer_config(&f.settings().topic(&group)),
            )
            .expect("producer");
        producer.init_transactions(TIMEOUT).expect("init");
        producer.begin_transaction().expect("begin");
        for i in 0..3 {
            producer
                .send(
                    BaseRecord::to(&raw)
                        .key("crashed")
                        .payload(&format!("junk-{i}")),
                )
                .map_err(|(e, _)| e)
                .expect("send");
        }
        producer.flush(TIMEOUT).expect("flush");
        // dropped without commit or abort: the transaction stays open on the broker
    }

    // list, filtered
    let mut out = Vec::new();
    let listed = run_dlq_list(
        &DlqListArgs {
            reason: Some("invalid_phone".into()),
            limit: 2,
            json: false,
            redrive_group: group.clone(),
        },
        &f,
        &mut out,
    )
    .await
    .expect("list");
    let text = String::from_utf8(out).expect("utf8");
    assert_eq!(
        (listed.scanned, listed.matching, listed.records.len()),
        (7, 3, 2),
        "{text}"
    );
    assert!(
        text.contains("invalid_phone") && text.contains("2 shown of 3 matching"),
        "{text}"
    );
    assert!(
        listed.records.iter().all(|r| r.redriven == Some(false)),
        "nothing redriven yet: {text}"
    );

    // dry run: counts, moves nothing
    let mut dry = redrive_args(&group, Some("unknown_currency"));
    dry.dry_run = true;
    let report = run_dlq_redrive(&dry, &f, &mut Vec::new())
        .await
        .expect("dry run");
    assert_eq!(report.redriven(), 4);
    assert_eq!(report.transactions, 0);

    // redrive one reason: its 4 records, once; the crashed transaction is aborted first
    let mut out = Vec::new();
    let report = run_dlq_redrive(
        &redrive_args(&group, Some("unknown_currency")),
        &f,
        &mut out,
    )
    .await
    .expect("redrive unknown_currency");
    println!("{}", String::from_utf8_lossy(&out));
    assert_eq!(report.redriven(), 4);
    assert_eq!(report.skipped, 3, "other reasons are read, not redriven");
    assert!(report.transactions >= 2, "batches of 2 records");
    let moved = read_all(&f, &raw);
    assert_eq!(
        moved.len(),
        4,
        "exactly the 4 records, none of the crashed run's: {moved:?}"
    );
    for (key, value, headers) in &moved {
        let i: usize = key
            .rsplit('-')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("key");
        assert_eq!(value, format!("bytes-{i}").as_bytes(), "original bytes");
        let get = |k: &str| {
            headers
                .iter()
                .find(|(hk, _)| hk == k)
                .map(|(_, v)| v.clone())
        };
        let expected_count = if i == 6 { "2" } else { "1" };
        assert_eq!(get(HEADER_REDRIVE_COUNT).as_deref(), Some(expected_count));
        assert!(get(HEADER_REDRIVE_FROM).is_some_and(|v| v.starts_with(&dlq)));
        assert_eq!(
            get("traceparent").as_deref(),
            Some("00-abc-01"),
            "other headers kept"
        );
        assert!(headers
            .iter()
            .all(|(k, _)| !k.starts_with("callsync.error.") && !k.starts_with("callsync.source.")));
    }

    // again: nothing left for that reason
    let report = run_dlq_redrive(
        &redrive_args(&group, Some("unknown_currency")),
        &f,
        &mut Vec::new(),
    )
    .await
    .expect("second redrive");
    assert_eq!(report.redriven(), 0);

    // all reasons: only the 3 invalid_phone records are still pending
    let report = run_dlq_redrive(&redrive_args(&group, None), &f, &mut Vec::new())
        .await
        .expect("redrive all");
    assert_eq!(report.redriven(), 3, "{report:?}");
    assert_eq!(report.redriven_by_reason.get("invalid_phone"), Some(&3));
    let report = run_dlq_redrive(&redrive_args(&group, None), &f, &mut Vec::new())
        .await
        .expect("redrive all again");
    assert_eq!(report.redriven(), 0);
    let report = run_dlq_redrive(
        &redrive_args(&group, Some("invalid_phone")),
        &f,
        &mut Vec::new(),
    )
    .await
    .expect("redrive a reason after all");
    assert_eq!(
        report.redriven(),
        0,
        "an all-reasons redrive covers every reason"
    );

    let moved = read_all(&f, &raw);
    assert_eq!(moved.len(), 7, "each DLQ record once in calls.raw");
    let mut out = Vec::new();
    let listed = run_dlq_list(
        &DlqListArgs {
            reason: None,
            limit: 50,
            json: false,
            redrive_group: group.clone(),
        },
        &f,
        &mut out,
    )
    .await
    .expect("list after the redrives");
    let text = String::from_utf8(out).expect("utf8");
    assert_eq!(listed.records.len(), 7, "{text}");
    assert!(
        listed.records.iter().all(|r| r.redriven == Some(true)),
        "dlq list shows every record redriven: {text}"
    );

    // a new DLQ record after all that is redriven by the next run, once
    produce(
        &f,
        &dlq,
        vec![(
            "retreaver:acct-1:call-9".into(),
            b"bytes-9".to_vec(),
            None,
            Some(0),
            dlq_headers("invalid_phone", None),
        )],
    )
    .await;
    let mut limited = redrive_args(&group, None);
    limited.limit = Some(5);
    let report = run_dlq_redrive(&limited, &f, &mut Vec::new())
        .await
        .expect("redrive new");
    assert_eq!(report.redriven(), 1);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(read_all(&f, &raw).len(), 8);
}

// ------------------------------------------------------------------ with real processes

/// A `callsync` command with the test's config and nothing from the environment.
fn callsync(config: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_callsync"));
    for (key, _) in std::env::vars() {
        if key.starts_with("CALLSYNC") {
            cmd.env_remove(key);
        }
    }
    cmd.env_remove("RUST_LOG").arg("--config").arg(config);
    cmd
}

/// Runs `callsync <args>` to completion; it must succeed. Returns stdout.
fn run_ok(config: &Path, args: &[&str]) -> String {
    let out = callsync(config).args(args).output().expect("run callsync");
    assert!(
        out.status.success(),
        "callsync {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// `callsync run --roles <roles>`: SIGTERMed by `stop`, SIGKILLed on drop.
struct Roles {
    child: Option<Child>,
    log: PathBuf,
}

impl Roles {
    fn start(config: &Path, roles: &str, log: PathBuf) -> Roles {
        let child = callsync(config)
            .args(["run", "--roles", roles])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start callsync run");
        Roles {
            child: Some(child),
            log,
        }
    }

    fn assert_running(&mut self) {
        if let Some(status) = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            panic!(
                "callsync run exited with {status}: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    fn stop(mut self) {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().expect("try_wait").is_none() {
            assert!(Instant::now() < deadline, "callsync run did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Roles {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .expect("config file");
    path
}

/// `dlq list --json --redrive-group <group>` as (stage, reason, redriven, key) per record.
fn listed(config: &Path, group: &str) -> Vec<(String, String, Option<bool>, String)> {
    run_ok(config, &["dlq", "list", "--json", "--redrive-group", group])
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
            (
                v["stage"].as_str().unwrap_or("").to_string(),
                v["reason"].as_str().unwrap_or("").to_string(),
                v["redriven"].as_bool(),
                v["key"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

async fn produce_calls(
    f: &callsync_runtime::KafkaClientFactory,
    topic: &str,
    calls: &[callsync_schemas::CallRecord],
) {
    let records = calls
        .iter()
        .map(|r| {
            (
                r.key().into_string(),
                callsync_schemas::encode_to_vec(r, callsync_schemas::WireFormat::SingleObject)
                    .expect("encode"),
                None,
                None,
                OwnedHeaders::new(),
            )
        })
        .collect();
    produce(f, topic, records).await;
}

fn big(call_id: &str, version: i64) -> callsync_schemas::CallRecord {
    let mut r = callsync_sinks::testing::sample_call(
        callsync_schemas::Provider::Retreaver,
        "acct-1",
        call_id,
        version,
    );
    r.revenue = Some(rust_decimal::Decimal::new(5000, 0));
    r
}

/// Before this change `dlq redrive` sent the sink's dead letters to `calls.raw`, where the
/// processor drops them as duplicates of versions it has emitted, and the rows never landed
/// (issue 16). Not re-run on that code: it has no dead-letter table to set this test up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_database_refused_lands_once_after_the_constraint_is_relaxed_and_a_redrive() {
    let kafka = callsync_testkit::skip_unless_kafka!();
    let db = callsync_testkit::skip_unless_postgres!();
    let prefix = unique_prefix(&kafka, "dlq-sink");
    let f = factory(&kafka, &prefix);
    let calls = f.settings().topic("calls");
    for (base, partitions) in [("calls", 2), ("calls.dlq", 1), ("calls.raw", 1)] {
        kafka
            .create_topic(&f.settings().topic(base), partitions, &[])
            .await
            .expect("topic");
    }
    let dir = tempfile::tempdir().expect("dir");
    let group = kafka.unique_group("dlq-sink");
    // redrive runs of concurrent tests must not fence each other (one transactional id)
    let redrive = kafka.unique_group("dlq-sink-redrive");
    let config = write_config(
        dir.path(),
        "callsync.toml",
        &format!(
            r#"[kafka]
bootstrap_servers = "{}"
topic_prefix = "{prefix}"

[sink]
database_url = "{}"
group = "{group}"
batch_rows = 100
batch_max_ms = 100

[log]
filter = "warn"
"#,
            kafka.bootstrap(),
            db.url
        ),
    );
    run_ok(&config, &["db", "migrate"]);
    sqlx::query(
        "ALTER TABLE calls ADD CONSTRAINT revenue_cap CHECK (revenue IS NULL OR revenue < 1000)",
    )
    .execute(&db.pool)
    .await
    .expect("constraint");

    let mut good: Vec<_> = (0..20)
        .map(|i| callsync_sinks::testing::call(&format!("call-{i}"), 7))
        .collect();
    let refused = [big("big-1", 7), big("big-2", 7), big("mixed", 1)];
    good.extend(refused.iter().cloned());
    produce_calls(&f, &calls, &good).await;
    let mut sink = Roles::start(&config, "sink", dir.path().join("sink.log"));
    let count = |sql: &'static str| {
        let pool = db.pool.clone();
        move || {
            futures::executor::block_on(sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool))
                .unwrap_or(-1)
        }
    };
    wait_until("20 rows and 3 dead letters", || {
        count("SELECT count(*) FROM calls")() == 20
            && count("SELECT count(*) FROM callsync_dead_letters")() == 3
    });
    // a newer, acceptable version of one refused call
    let mut mixed = callsync_sinks::testing::sample_call(
        callsync_schemas::Provider::Retreaver,
        "acct-1",
        "mixed",
        2,
    );
    mixed.revenue = Some(rust_decimal::Decimal::new(10, 0));
    produce_calls(&f, &calls, std::slice::from_ref(&mixed)).await;
    wait_until("the newer version", || {
        count("SELECT count(*) FROM calls")() == 21
    });
    wait_until("the dead letters in the DLQ topic", || {
        listed(&config, &redrive)
            .iter()
            .filter(|e| e.0 == "sink")
            .count()
            == 3
    });
    for (stage, reason, redriven, _) in listed(&config, &redrive) {
        assert_eq!(
            (stage.as_str(), reason.as_str(), redriven),
            ("sink", "database_rejected", Some(false))
        );
    }

    // before the fix: refused again, still pending
    let out = run_ok(&config, &["dlq", "redrive", "--group", &redrive]);
    println!("{out}");
    let pending = count("SELECT count(*) FROM callsync_dead_letters WHERE redriven_at IS NULL");
    assert!(pending() >= 2, "{out}");
    assert_eq!(
        count(
            "SELECT count(*) FROM callsync_dead_letters WHERE last_redrive_error LIKE 'database_rejected%' \
             AND redriven_at IS NULL AND convert_from(record_key, 'UTF8') LIKE '%:big-_'"
        )(),
        2,
        "{out}"
    );

    // the fix, then every row the redrive applies is counted
    sqlx::raw_sql(
        "ALTER TABLE calls DROP CONSTRAINT revenue_cap;
         CREATE TABLE applications (call_id text, version bigint);
         CREATE FUNCTION count_application() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO applications VALUES (NEW.call_id, NEW.version); RETURN NEW; END $$;
         CREATE TRIGGER count_applications AFTER INSERT OR UPDATE ON calls
           FOR EACH ROW EXECUTE FUNCTION count_application();",
    )
    .execute(&db.pool)
    .await
    .expect("relax the constraint");
    let out = run_ok(&config, &["dlq", "redrive", "--group", &redrive]);
    println!("{out}");
    assert!(out.contains("the sink's database redriven"), "{out}");
    let _ = run_ok(&config, &["dlq", "redrive", "--group", &redrive]);
    sink.assert_running();
    sink.stop();

    let store = callsync_sinks::PgStore::from_pool(db.pool.clone(), 1000);
    use callsync_sinks::CallStore;
    for r in &refused[..2] {
        let stored = store
            .get("retreaver", "acct-1", &r.call_id)
            .await
            .expect("read")
            .expect("the refused row landed");
        assert_eq!(&stored.record, r, "every column as produced");
        assert_eq!(stored.kafka_topic, calls);
    }
    let stored = store
        .get("retreaver", "acct-1", "mixed")
        .await
        .expect("read")
        .expect("mixed");
    assert_eq!(
        stored.record, mixed,
        "the older refused version does not win"
    );
    let applications: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT call_id, count(*) FROM applications GROUP BY call_id",
    )
    .fetch_all(&db.pool)
    .await
    .expect("applications")
    .into_iter()
    .collect();
    assert_eq!(
        applications,
        BTreeMap::from([("big-1".to_string(), 1), ("big-2".to_string(), 1)]),
        "each refused row applied once, over two redrives; the stale one never"
    );
    assert_eq!(count("SELECT count(*) FROM calls")(), 23);
    assert_eq!(
        count("SELECT count(*) FROM callsync_dead_letters WHERE redriven_at IS NULL")(),
        0
    );
    let entries = listed(&config, &redrive);
    assert_eq!(entries.len(), 3, "{entries:?}");
    assert!(
        entries.iter().all(|e| e.2 == Some(true)),
        "dlq list shows them redriven: {entries:?}"
    );
}

/// A CallRail record whose naive `start_time` falls in the hour that does not exist in
/// America/New_York (the spring DST gap): with the account's `time_zone` set to New York the
/// connector's mapping refuses it; the account's calls are in UTC, so the fix is to the
/// account's settings.
const DST_GAP_CALL: &str = r#"{"id": "CALDST1", "answered": true, "voicemail": false, "start_time": "2024-03-10T02:30:00", "duration": 61, "customer_phone_number": "+19044566789", "tracking_phone_number": "+14044755488"}"#;

fn connector_config(
    kafka: &callsync_testkit::RealKafka,
    prefix: &str,
    db_url: &str,
    unique: &str,
    time_zone: Option<&str>,
) -> String {
    format!(
        r#"[kafka]
bootstrap_servers = "{bootstrap}"
topic_prefix = "{prefix}"

[kafka.client_properties]
"session.timeout.ms" = "6000"

[topics]
call_partitions = 2

[processor]
group_id = "{unique}-processor"
instance_id = "{unique}"

[sink]
database_url = "{db_url}"
group = "{unique}-sink"
batch_max_ms = 100

[[connectors.callrail]]
account = "ACC1"
api_key = "callrail-api-key"
base_url = "http://127.0.0.1:9"
{tz}

[log]
filter = "warn"
"#,
        bootstrap = kafka.bootstrap(),
        tz = time_zone
            .map(|tz| format!("time_zone = \"{tz}\""))
            .unwrap_or_default(),
    )
}

/// Before this change the raw provider JSON was sent to `calls.raw`, where the processor
/// cannot decode it and dead-letters it again (issue 16): this test's "1 failed again" /
/// "1 mapped again" checks fail there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_dead_letter_lands_after_its_mapping_is_fixed_and_a_redrive() {
    use callsync_connectors::runner::headers;
    let kafka = callsync_testkit::skip_unless_kafka!();
    let db = callsync_testkit::skip_unless_postgres!();
    let prefix = unique_prefix(&kafka, "dlq-connector");
    let f = factory(&kafka, &prefix);
    let unique = kafka.unique_group("dlq-connector");
    let redrive = format!("{unique}-redrive");
    let dir = tempfile::tempdir().expect("dir");
    let broken = write_config(
        dir.path(),
        "broken.toml",
        &connector_config(&kafka, &prefix, &db.url, &unique, Some("America/New_York")),
    );
    let fixed = write_config(
        dir.path(),
        "fixed.toml",
        &connector_config(&kafka, &prefix, &db.url, &unique, None),
    );
    run_ok(&broken, &["topics", "ensure"]);

    // the dead letter, as the connector writes it, with the error of the real mapping
    let config = callsync::config::CallsyncConfig::load(Some(&broken)).expect("config");
    let connectors = callsync_connectors::Connectors::from_config(
        &config.connectors,
        &callsync_runtime::Shutdown::new(),
    )
    .expect("connectors");
    let client = &connectors
        .get(callsync_schemas::Provider::CallRail, "ACC1")
        .expect("account")
        .client;
    let raw: Box<serde_json::value::RawValue> =
        serde_json::from_str(DST_GAP_CALL).expect("raw JSON");
    let error = client
        .map_record(
            &raw,
            &client.map_context(callsync_schemas::RecordSource::Poll),
        )
        .expect_err("the mapping refuses a time in the DST gap");
    assert_eq!(
        (error.reason, error.field.as_str()),
        ("invalid_value", "start_time")
    );
    fn h<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
        Header {
            key,
            value: Some(value),
        }
    }
    let message = error.to_string();
    let dead_letter = OwnedHeaders::new()
        .insert(h(headers::ERROR_STAGE, "connector"))
        .insert(h(headers::ERROR_REASON, error.reason))
        .insert(h(headers::ERROR_FIELD, &error.field))
        .insert(h(headers::ERROR_MESSAGE, &message))
        .insert(h(headers::SYNC_ID, "sync-1"))
        .insert(h(headers::PROVIDER, "callrail"))
        .insert(h(headers::ACCOUNT, "ACC1"));
    let dlq = f.settings().topic("calls.dlq");
    produce(
        &f,
        &dlq,
        vec![(
            "callrail:ACC1:CALDST1".into(),
            DST_GAP_CALL.as_bytes().to_vec(),
            None,
            None,
            dead_letter,
        )],
    )
    .await;

    let mut roles = Roles::start(&fixed, "processor,sink", dir.path().join("roles.log"));
    let rows = || {
        futures::executor::block_on(
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM calls WHERE call_id = 'CALDST1'")
                .fetch_one(&db.pool),
        )
        .unwrap_or(-1)
    };
    assert_eq!(
        listed(&broken, &redrive),
        vec![(
            "connector".to_string(),
            "invalid_value".to_string(),
            Some(false),
            "callrail:ACC1:CALDST1".to_string()
        )]
    );

    // before the fix: mapped again, refused again, back in the DLQ with the new error
    let out = run_ok(&broken, &["dlq", "redrive", "--group", &redrive]);
    assert!(out.contains("1 failed again"), "{out}");
    let entries = listed(&broken, &redrive);
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(entries[0].2, Some(true), "the first one was redriven");
    assert_eq!(
        entries[1].2,
        Some(false),
        "its copy is pending: {entries:?}"
    );

    // the fix: the account's calls are in UTC
    let out = run_ok(&fixed, &["dlq", "redrive", "--group", &redrive]);
    assert!(out.contains("1 mapped again"), "{out}");
    wait_until("the call in the table", || {
        roles.assert_running();
        rows() == 1
    });
    let _ = run_ok(&fixed, &["dlq", "redrive", "--group", &redrive]);
    std::thread::sleep(Duration::from_secs(1));
    roles.stop();
    assert_eq!(rows(), 1);
    let started_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT started_at FROM calls WHERE call_id = 'CALDST1'")
            .fetch_one(&db.pool)
            .await
            .expect("started_at");
    assert_eq!(started_at.to_rfc3339(), "2024-03-10T02:30:00+00:00");
    let entries = listed(&fixed, &redrive);
    assert_eq!(entries.len(), 2, "nothing new in the DLQ: {entries:?}");
    assert!(entries.iter().all(|e| e.2 == Some(true)), "{entries:?}");
}
