//! The sink's database and topic lifecycle, with real `callsync` processes on the real broker
//! and real Postgres, by the commands of docs/operations.md section 8 ("Moving the
//! database"), run as written (`sh -c`, with `$OLD_DATABASE_URL`, `$NEW_DATABASE_URL` and the
//! test's config in `CALLSYNC_CONFIG`; a `callsync run` line is started in the background):
//!
//! - A: a sink with an existing group (its Kafka offsets at the end) pointed at a new, empty
//!   database fills it completely; `callsync status` shows the partitions to backfill first.
//!   Before this change the partitions were assigned at the group's Kafka offsets and the new
//!   database stayed empty (seen with the same assignment in
//!   `sinks/tests/sink_lifecycle.rs`: 0 of 600 rows).
//! - B: a copy made with `pg_dump` while the old sink runs goes on from the copied offsets,
//!   applying nothing before them.
//! - C: `calls` deleted and created again (with one partition more): the sink stops the old
//!   partitions with the documented error (compared with the doc's example), reads the new one,
//!   and the documented `sink rewind --to-earliest` resolves it. Before this change the sink
//!   skipped every new record below the old offsets as "already applied", silently (issue 16).
//!
//! Needs `KAFKA_BOOTSTRAP` and Postgres (skipped without them outside CI, fails under CI).

mod ops_support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use callsync_runtime::KafkaClientFactory;
use callsync_schemas::{encode_to_vec, CallRecord, Provider, WireFormat};
use callsync_sinks::testing::sample_call;
use callsync_sinks::{CallStore, PgStore};
use callsync_testkit::{RealKafka, TestDatabase};
use ops_support::*;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

const PARTITIONS: i32 = 3;
const WAIT: Duration = Duration::from_secs(60);

// ------------------------------------------------------------------------ the doc

/// The fenced blocks (`lang`) of docs/operations.md section 8, in order, as lines.
fn doc_blocks(lang: &str) -> Vec<Vec<String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md");
    let text = std::fs::read_to_string(&path).expect("docs/operations.md");
    let start = text
        .find("\n## 8. Moving the database")
        .expect("section 8 of docs/operations.md");
    let section = &text[start + 1..];
    let section = match section[3..].find("\n## ") {
        Some(end) => &section[..end + 3],
        None => section,
    };
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in section.lines() {
        match &mut current {
            None if line.trim() == format!("```{lang}") => current = Some(Vec::new()),
            Some(block) if line.trim() == "```" => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            Some(block) if !line.trim().is_empty() => block.push(line.to_string()),
            _ => {}
        }
    }
    blocks
}

// ------------------------------------------------------------------------ processes

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    factory: KafkaClientFactory,
    topic: String,
    group: String,
}

impl Setup {
    async fn new(kafka: &RealKafka, name: &str, db_url: &str) -> Setup {
        let prefix = unique_prefix(kafka, name);
        let factory = factory(kafka, &prefix);
        let topic = factory.settings().topic("calls");
        kafka
            .create_topic(&topic, PARTITIONS, &[])
            .await
            .expect("create calls");
        kafka
            .create_topic(&factory.settings().topic("calls.dlq"), 1, &[])
            .await
            .expect("create calls.dlq");
        let dir = tempfile::tempdir().expect("temp dir");
        let group = kafka.unique_group(name);
        let config = dir.path().join("callsync.toml");
        let text = format!(
            r#"[kafka]
bootstrap_servers = "{bootstrap}"
topic_prefix = "{prefix}"

[kafka.client_properties]
"session.timeout.ms" = "6000"

[sink]
database_url = "{db_url}"
group = "{group}"
batch_rows = 500
batch_max_ms = 100
max_connections = 2

[log]
filter = "warn"
"#,
            bootstrap = kafka.bootstrap(),
        );
        std::fs::File::create(&config)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .expect("config file");
        Setup {
            dir,
            config,
            factory,
            topic,
            group,
        }
    }

    /// `sh -c line` as a user types it: `callsync` on the PATH, the config in
    /// `CALLSYNC_CONFIG`, and the databases in `$OLD_DATABASE_URL` / `$NEW_DATABASE_URL`.
    fn shell(&self, line: &str, old_db: &str, new_db: &str) -> Command {
        let bin = Path::new(env!("CARGO_BIN_EXE_callsync"))
            .parent()
            .expect("bin dir")
            .to_path_buf();
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(line);
        for (key, _) in std::env::vars() {
            if key.starts_with("CALLSYNC") {
                cmd.env_remove(key);
            }
        }
        cmd.env_remove("RUST_LOG")
            .env("PATH", path)
            .env("CALLSYNC_CONFIG", &self.config)
            .env("OLD_DATABASE_URL", old_db)
            .env("NEW_DATABASE_URL", new_db)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs a documented command to completion; it must succeed.
    fn run(&self, line: &str, old_db: &str, new_db: &str) -> String {
        let out: Output = self
            .shell(line, old_db, new_db)
            .output()
            .unwrap_or_else(|e| panic!("running {line}: {e}"));
        assert!(
            out.status.success(),
            "`{line}` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Starts a long-running documented command (`callsync run ...`) with its stderr in a file.
    fn spawn(&self, line: &str, old_db: &str, new_db: &str, name: &str) -> Process {
        let log = self.dir.path().join(format!("{name}.log"));
        // `exec` (after any leading `VAR=value` words), so SIGTERM reaches callsync itself
        let at = line.find("callsync ").expect("a callsync command");
        let line_exec = format!("{}exec {}", &line[..at], &line[at..]);
        let child = self
            .shell(&line_exec, old_db, new_db)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {line}: {e}"));
        Process {
            child: Some(child),
            log,
        }
    }

    /// The sink on `db_url`, as the config file has it but for the database.
    fn start_sink(&self, db_url: &str, name: &str) -> Process {
        self.spawn(
            "CALLSYNC__SINK__DATABASE_URL=\"$NEW_DATABASE_URL\" callsync run --roles sink",
            "",
            db_url,
            name,
        )
    }

    /// `callsync status --json` against the database `db_url`.
    fn status(&self, db_url: &str) -> Value {
        let text = self.run(
            "CALLSYNC__SINK__DATABASE_URL=\"$NEW_DATABASE_URL\" callsync status --json",
            "",
            db_url,
        );
        serde_json::from_str(&text).expect("status JSON")
    }
}

/// A `callsync` process: SIGKILLed on drop if still running.
struct Process {
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("running");
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("callsync exited with {status}: {}", self.log());
        }
    }

    /// SIGTERM, then waits for a clean exit.
    fn stop(mut self) {
        let mut child = self.child.take().expect("running");
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                assert!(status.success(), "exit {status}: {}", self.log());
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("callsync did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ------------------------------------------------------------------------ data

/// Calls `from..to`, two versions each (the newer one second), and keeps the newest in `truth`.
async fn produce_calls(
    factory: &KafkaClientFactory,
    topic: &str,
    from: usize,
    to: usize,
    truth: &mut BTreeMap<String, CallRecord>,
) {
    let producer: FutureProducer = factory.producer().expect("producer");
    let mut records = Vec::new();
    for v in [1i64, 2] {
        for i in from..to {
            records.push(sample_call(
                Provider::Retreaver,
                &format!("acct-{}", i % 5),
                &format!("call-{i}"),
                v * 100_000 + i as i64,
            ));
        }
    }
    let sends = records.iter().map(|r| {
        let key = r.key().into_string();
        let value = encode_to_vec(r, WireFormat::SingleObject).expect("encode");
        let producer = producer.clone();
        async move {
            producer
                .send(
                    FutureRecord::to(topic).key(&key).payload(&value),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("produce");
        }
    });
    futures::future::join_all(sends).await;
    for r in records {
        let k = r.key().into_string();
        if truth.get(&k).is_none_or(|old| old.version <= r.version) {
            truth.insert(k, r);
        }
    }
}

fn high_watermarks(factory: &KafkaClientFactory, topic: &str) -> BTreeMap<i32, i64> {
    let consumer = callsync::ops::scan::scan_consumer(
        factory,
        "sink-lifecycle-watermarks",
        callsync_runtime::Isolation::ReadCommitted,
    )
    .expect("consumer");
    let parts =
        callsync::ops::offsets::topic_partitions(&consumer, topic, TIMEOUT).expect("partitions");
    callsync::ops::offsets::watermarks(&consumer, topic, &parts, TIMEOUT)
        .expect("watermarks")
        .into_iter()
        .map(|(p, w)| (p, w.high))
        .collect()
}

/// Commits the end of every partition of `topic` for `group`.
fn commit_group(factory: &KafkaClientFactory, group: &str, topic: &str) {
    let consumer = callsync::ops::scan::scan_consumer(
        factory,
        group,
        callsync_runtime::Isolation::ReadCommitted,
    )
    .expect("consumer");
    callsync::ops::offsets::commit_offsets(
        &consumer,
        group,
        topic,
        &high_watermarks(factory, topic),
    )
    .expect("commit");
}

/// Waits until `db` holds exactly `truth` (every column of every row).
async fn wait_for_table(db: &TestDatabase, truth: &BTreeMap<String, CallRecord>, what: &str) {
    let store = PgStore::from_pool(db.pool.clone(), 1000);
    let started = Instant::now();
    loop {
        let rows = store.all_calls().await.unwrap_or_default();
        let got: BTreeMap<String, CallRecord> = rows
            .into_iter()
            .map(|s| (s.record.key().into_string(), s.record))
            .collect();
        if &got == truth {
            return;
        }
        if started.elapsed() > WAIT {
            let missing = truth.keys().filter(|k| !got.contains_key(*k)).count();
            let wrong = truth
                .iter()
                .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
                .count();
            panic!(
                "{what}: the table never matched: {} rows for {} calls, {missing} missing, {wrong} not the newest version",
                got.len(),
                truth.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls `callsync status --json` until `done` holds for the sink's partitions.
fn wait_for_status(
    setup: &Setup,
    db_url: &str,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let status = setup.status(db_url);
        let partitions = status["sink"]["partitions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if done(&partitions) {
            return status;
        }
        assert!(
            started.elapsed() < WAIT,
            "{what}: status never showed it: {}",
            serde_json::to_string_pretty(&status["sink"]).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn states(partitions: &[Value]) -> BTreeMap<i64, String> {
    partitions
        .iter()
        .map(|p| {
            (
                p["partition"].as_i64().unwrap_or(-1),
                p["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

async fn stored_offsets(db: &TestDatabase, group: &str, topic: &str) -> BTreeMap<i32, i64> {
    sqlx::query_as::<_, (i32, i64)>(
        "SELECT partition, next_offset FROM callsync_offsets WHERE consumer_group = $1 AND topic = $2",
    )
    .bind(group)
    .bind(topic)
    .fetch_all(&db.pool)
    .await
    .expect("offsets")
    .into_iter()
    .collect()
}

// ------------------------------------------------------------------------ the tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_the_database_as_documented_fills_a_new_one_and_continues_a_copy() {
    let kafka = callsync_testkit::skip_unless_kafka!();
    let old_db = callsync_testkit::skip_unless_postgres!();
    let new_db = callsync_testkit::test_database()
        .await
        .expect("second database");
    let copy_db = callsync_testkit::test_database()
        .await
        .expect("third database");
    let setup = Setup::new(&kafka, "sink-move", &old_db.url).await;
    let blocks = doc_blocks("sh");
    assert_eq!(
        blocks.len(),
        3,
        "section 8 has the fill, copy and rewind blocks: {blocks:?}"
    );
    let (fill, copy) = (&blocks[0], &blocks[1]);
    assert_eq!(fill.len(), 4, "{fill:?}");
    assert_eq!(copy.len(), 3, "{copy:?}");

    // the old database, filled by a sink of the group, which also commits its Kafka offsets
    let mut truth = BTreeMap::new();
    produce_calls(&setup.factory, &setup.topic, 0, 300, &mut truth).await;
    let sink = setup.start_sink(&old_db.url, "old");
    wait_for_table(&old_db, &truth, "the old database").await;
    sink.stop();
    // the group has read everything, as far as Kafka knows (the sink commits its offsets to
    // Kafka too, asynchronously; make sure of the last ones)
    commit_group(&setup.factory, &setup.group, &setup.topic);
    assert_eq!(
        committed(&setup.factory, &setup.group, &setup.topic),
        high_watermarks(&setup.factory, &setup.topic)
    );
    produce_calls(&setup.factory, &setup.topic, 300, 450, &mut truth).await;

    // A. fill the new database from Kafka
    setup.run(&fill[0], &old_db.url, &new_db.url);
    let status: Value =
        serde_json::from_str(&setup.run(&format!("{} --json", fill[1]), &old_db.url, &new_db.url))
            .expect("status JSON");
    let partitions = status["sink"]["partitions"]
        .as_array()
        .expect("sink partitions");
    assert_eq!(partitions.len(), PARTITIONS as usize, "{status}");
    let highs = high_watermarks(&setup.factory, &setup.topic);
    for p in partitions {
        let partition = p["partition"].as_i64().expect("partition") as i32;
        assert_eq!(p["state"], "not_started", "{p}");
        assert_eq!(
            p["backfill_remaining"].as_i64(),
            Some(highs[&partition]),
            "{p}"
        );
    }
    let text = setup.run(&fill[1], &old_db.url, &new_db.url);
    assert!(
        text.contains("SINK PARTITIONS") && text.matches("not_started").count() == 3,
        "{text}"
    );
    let mut sink = setup.spawn(&fill[2], &old_db.url, &new_db.url, "new");
    wait_for_table(&new_db, &truth, "the new database").await;
    sink.assert_running();
    let line = &fill[3];
    let status = wait_for_status(&setup, &new_db.url, "every partition live", |ps| {
        states(ps).values().all(|s| s == "live")
    });
    let _ = setup.run(line, &old_db.url, &new_db.url);
    assert_eq!(status["sink"]["dead_letters"]["total"], 0);
    let backfilled: Vec<(i32, Option<i64>)> = sqlx::query_as(
        "SELECT partition, backfill_until FROM callsync_offsets WHERE consumer_group = $1 ORDER BY partition",
    )
    .bind(&setup.group)
    .fetch_all(&new_db.pool)
    .await
    .expect("offsets");
    assert!(
        backfilled.iter().all(|(_, until)| until.is_some()),
        "every partition was backfilled: {backfilled:?}"
    );

    // B. copy the new database (its sink still running) and go on from the copy
    setup.run(&copy[0], &new_db.url, &copy_db.url);
    setup.run(&copy[1], &new_db.url, &copy_db.url);
    sink.stop();
    let copied = stored_offsets(&copy_db, &setup.group, &setup.topic).await;
    assert_eq!(
        copied.len(),
        PARTITIONS as usize,
        "offsets copied: {copied:?}"
    );
    // every row version the copy's sink applies from here on
    sqlx::raw_sql(
        "CREATE TABLE applications (kafka_partition int, kafka_offset bigint);
         CREATE FUNCTION count_application() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO applications VALUES (NEW.kafka_partition, NEW.kafka_offset); RETURN NEW; END $$;
         CREATE TRIGGER count_applications AFTER INSERT OR UPDATE ON calls
           FOR EACH ROW EXECUTE FUNCTION count_application();",
    )
    .execute(&copy_db.pool)
    .await
    .expect("trigger");
    produce_calls(&setup.factory, &setup.topic, 450, 520, &mut truth).await;
    let sink = setup.spawn(&copy[2], &new_db.url, &copy_db.url, "copy");
    wait_for_table(&copy_db, &truth, "the copied database").await;
    sink.stop();
    let applied: Vec<(i32, i64)> =
        sqlx::query_as("SELECT kafka_partition, kafka_offset FROM applications")
            .fetch_all(&copy_db.pool)
            .await
            .expect("applications");
    assert!(!applied.is_empty());
    assert!(
        applied.iter().all(|(p, o)| *o >= copied[p]),
        "the copy's sink applied nothing before the copied offsets {copied:?}: {applied:?}"
    );
}

/// Digits, topic ids and names of an error line replaced, to compare it with the doc's example.
fn error_shape(line: &str, topic: &str, group: &str) -> String {
    // the fix names `--group` for any but the default group
    let text = line
        .replace(&format!(" --group {group}"), "")
        .replace(topic, "calls")
        .replace(group, "callsync-sink");
    let mut out = String::new();
    for word in text.split(' ') {
        let bare = word.trim_matches(|c: char| ",.()".contains(c));
        let is_id = bare.len() == 22
            && bare
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '+' || c == '/');
        if !out.is_empty() {
            out.push(' ');
        }
        if is_id {
            out.push_str(&word.replace(bare, "ID"));
        } else {
            let mut last_digit = false;
            for c in word.chars() {
                if c.is_ascii_digit() {
                    if !last_digit {
                        out.push('N');
                    }
                    last_digit = true;
                } else {
                    out.push(c);
                    last_digit = false;
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_calls_topic_stops_its_old_partitions_with_the_documented_error() {
    let kafka = callsync_testkit::skip_unless_kafka!();
    let db = callsync_testkit::skip_unless_postgres!();
    let setup = Setup::new(&kafka, "sink-recreated", &db.url).await;
    let blocks = doc_blocks("sh");
    let rewind = &blocks[2];
    assert_eq!(rewind.len(), 3, "{rewind:?}");
    let documented = doc_blocks("text");
    assert_eq!(documented.len(), 1, "the documented error: {documented:?}");
    let documented = &documented[0][0];

    let mut old_truth = BTreeMap::new();
    produce_calls(&setup.factory, &setup.topic, 0, 200, &mut old_truth).await;
    let sink = setup.start_sink(&db.url, "before");
    wait_for_table(&db, &old_truth, "before the topic is recreated").await;
    sink.stop();
    let old_offsets = stored_offsets(&db, &setup.group, &setup.topic).await;

    // calls recreated with one partition more (what changing its partition count takes),
    // with fewer records per partition than the old offsets
    kafka
        .delete_topic(&setup.topic)
        .await
        .expect("delete calls");
    kafka
        .create_topic(&setup.topic, PARTITIONS + 1, &[])
        .await
        .expect("create calls again");
    let mut new_truth = BTreeMap::new();
    produce_calls(&setup.factory, &setup.topic, 1000, 1060, &mut new_truth).await;
    let highs = high_watermarks(&setup.factory, &setup.topic);
    assert!(highs.len() == 4 && highs[&3] > 0, "{highs:?}");

    let mut sink = setup.start_sink(&db.url, "after");
    let status = wait_for_status(&setup, &db.url, "partitions 0-2 stopped, 3 live", |ps| {
        let s = states(ps);
        s.len() == 4 && (0..3).all(|p| s[&p] == "stopped") && s[&3] == "live"
    });
    let started = Instant::now();
    let log = loop {
        let log = sink.log();
        if (0..3).all(|p| log.contains(&format!("partition {p} stopped"))) {
            break log;
        }
        sink.assert_running();
        assert!(started.elapsed() < WAIT, "no stop errors logged: {log}");
        std::thread::sleep(Duration::from_millis(200));
    };
    // the sink's error is the documented one
    let needle = format!("topic {} partition 0 stopped", setup.topic);
    let start = log.find(&needle).expect("the error line");
    let end = log[start..]
        .find("then start the sink again")
        .map(|e| start + e + "then start the sink again".len())
        .expect("the end of the error");
    let logged = &log[start..end];
    assert_eq!(
        error_shape(logged, &setup.topic, &setup.group),
        error_shape(documented, "calls", "callsync-sink"),
        "the logged error differs from docs/operations.md:\n{logged}\n{documented}"
    );
    assert!(logged.contains("topic recreated") && logged.contains("--partitions 0"));
    for p in &status["sink"]["partitions"].as_array().expect("partitions")[..3] {
        let detail = p["detail"].as_str().expect("detail of a stopped partition");
        assert!(
            detail.contains("callsync sink rewind --to-earliest --partitions"),
            "{detail}"
        );
    }
    // nothing of partitions 0-2 was taken: their stored offsets did not move, and only
    // partition 3's calls are in the table besides the old ones
    assert_eq!(
        stored_offsets(&db, &setup.group, &setup.topic).await,
        old_offsets
            .iter()
            .map(|(p, o)| (*p, *o))
            .chain([(3, highs[&3])])
            .collect::<BTreeMap<_, _>>()
    );
    sink.stop();

    // the documented fix
    let plan = setup.run(&rewind[0], "", &db.url);
    assert!(
        plan.contains("would rewind") && plan.contains("topic recreated"),
        "{plan}"
    );
    let done = setup.run(&rewind[1], "", &db.url);
    assert!(done.contains("rewound"), "{done}");
    let sink = setup.spawn(&rewind[2], "", &db.url, "fixed");
    let mut truth = old_truth;
    truth.extend(new_truth);
    wait_for_table(&db, &truth, "after the rewind").await;
    let status = wait_for_status(&setup, &db.url, "every partition live", |ps| {
        states(ps).values().all(|s| s == "live")
    });
    sink.stop();
    let stored = stored_offsets(&db, &setup.group, &setup.topic).await;
    assert_eq!(stored, highs, "{status}");
}
