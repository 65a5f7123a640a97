//! Scaling the sink mid-stream, on the real broker and real Postgres, with real `callsync run
//! --roles sink` processes: one instance, then three, then one again (of the two that leave, one
//! is SIGKILLed without warning, the other stopped with SIGTERM), while a producer keeps
//! writing call records (four records per call, the newest version second, an older one and a
//! duplicate after it). At each phase `callsync status --json` (the real binary) must show the
//! sink group's partitions held by one member, split over three, then held by the survivor;
//! at the end the `calls` table must be exactly the newest version of every call produced.
//!
//! Needs `KAFKA_BOOTSTRAP` and Postgres (skipped without them outside CI, fails under CI).

mod ops_support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use callsync_runtime::KafkaClientFactory;
use callsync_schemas::{encode_to_vec, CallRecord, Provider, WireFormat};
use callsync_sinks::testing::sample_call;
use callsync_sinks::{CallStore, PgStore};
use callsync_testkit::RealKafka;
use ops_support::*;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

const PARTITIONS: i32 = 6;
/// New calls per producer tick; each tick writes 4 records per call in flight.
const CALLS_PER_TICK: usize = 40;
const TICK: Duration = Duration::from_millis(100);
/// How long one phase may take to show in `callsync status` (a SIGKILLed member is dropped
/// by the coordinator after its session timeout, 6 s here).
const PHASE_TIMEOUT: Duration = Duration::from_secs(60);

// ------------------------------------------------------------------------ the stream

/// The records of producer tick `tick`: call `c` of tick `t` gets version 2 at tick `t`, its
/// newest version 3 at `t + 1`, the older version 1 (late) at `t + 2`, and version 2 again
/// (a duplicate) at `t + 3`. Ticks at or past `last_new` start no new calls.
fn tick_records(tick: usize, last_new: usize) -> Vec<CallRecord> {
    let mut out = Vec::with_capacity(CALLS_PER_TICK * 4);
    for (age, version) in [(0usize, 2i64), (1, 3), (2, 1), (3, 2)] {
        let Some(born) = tick.checked_sub(age) else {
            continue;
        };
        if born >= last_new {
            continue;
        }
        for i in 0..CALLS_PER_TICK {
            let n = born * CALLS_PER_TICK + i;
            let provider = if n % 2 == 0 {
                Provider::TrackDrive
            } else {
                Provider::Retreaver
            };
            out.push(sample_call(
                provider,
                &format!("acct-{}", n % 7),
                &format!("scale-{n}"),
                version * 100_000 + n as i64,
            ));
        }
    }
    out
}

/// Produces ticks until `stop`, then the ticks that finish the calls in flight. Returns every
/// record produced (all acknowledged).
async fn produce_stream(
    factory: KafkaClientFactory,
    topic: String,
    stop: Arc<AtomicBool>,
    produced: Arc<AtomicUsize>,
) -> Vec<CallRecord> {
    let producer: FutureProducer = factory.producer().expect("producer");
    let mut all = Vec::new();
    let mut last_new = usize::MAX;
    let mut tick = 0usize;
    loop {
        if last_new == usize::MAX && stop.load(Ordering::SeqCst) {
            last_new = tick;
        }
        if tick >= last_new.saturating_add(3) {
            break;
        }
        let started = Instant::now();
        let records = tick_records(tick, last_new);
        let sends = records.iter().map(|r| {
            let key = r.key().into_string();
            let value = encode_to_vec(r, WireFormat::SingleObject).expect("encode");
            let producer = producer.clone();
            let topic = topic.clone();
            async move {
                producer
                    .send(FutureRecord::to(&topic).key(&key).payload(&value), TIMEOUT)
                    .await
                    .map_err(|(e, _)| e)
                    .expect("produce");
            }
        });
        futures::future::join_all(sends).await;
        produced.fetch_add(records.len(), Ordering::SeqCst);
        all.extend(records);
        tick += 1;
        tokio::time::sleep(TICK.saturating_sub(started.elapsed())).await;
    }
    all
}

/// The newest version of every call.
fn expected(records: &[CallRecord]) -> BTreeMap<String, CallRecord> {
    let mut m: BTreeMap<String, CallRecord> = BTreeMap::new();
    for r in records {
        let k = r.key().into_string();
        if m.get(&k).is_none_or(|old| old.version <= r.version) {
            m.insert(k, r.clone());
        }
    }
    m
}

// ------------------------------------------------------------------------ processes

struct Setup {
    dir: tempfile::TempDir,
    bootstrap: String,
    prefix: String,
    db_url: String,
    group: String,
}

impl Setup {
    /// A config file for one process; `client_id` names the instance in the group.
    fn config(&self, client_id: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{client_id}.toml"));
        let text = format!(
            r#"[kafka]
bootstrap_servers = "{bootstrap}"
topic_prefix = "{prefix}"

[kafka.client_properties]
"client.id" = "{client_id}"
# the broker's minimum: a SIGKILLed instance leaves the group 6 s after its last heartbeat
"session.timeout.ms" = "6000"

[sink]
database_url = "{db}"
group = "{group}"
batch_rows = 2000
batch_max_ms = 200
copy_threshold = 500
max_connections = 2

[log]
filter = "warn"
"#,
            bootstrap = self.bootstrap,
            prefix = self.prefix,
            db = self.db_url,
            group = self.group,
        );
        let mut f = std::fs::File::create(&path).expect("config file");
        f.write_all(text.as_bytes()).expect("write config");
        path
    }

    fn callsync(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_callsync"));
        for (key, _) in std::env::vars() {
            if key.starts_with("CALLSYNC") {
                cmd.env_remove(key);
            }
        }
        cmd.env_remove("RUST_LOG");
        cmd
    }

    /// Starts `callsync run --roles sink` as instance `name`.
    fn start_sink(&self, name: &str) -> SinkProcess {
        let config = self.config(name);
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).expect("log");
        let child = self
            .callsync()
            .arg("--config")
            .arg(&config)
            .args(["run", "--roles", "sink"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start callsync run --roles sink");
        SinkProcess {
            name: name.to_string(),
            child: Some(child),
            log: self.dir.path().join(format!("{name}.log")),
        }
    }

    /// `callsync status [--json] --group <sink group>`: stdout.
    fn status(&self, json: bool) -> String {
        let config = self.config("callsync-status");
        let mut cmd = self.callsync();
        cmd.arg("--config").arg(&config).arg("status");
        if json {
            cmd.arg("--json");
        }
        let out = cmd
            .args(["--group", &self.group])
            .output()
            .expect("run callsync status");
        assert!(
            out.status.success(),
            "callsync status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 status")
    }
}

/// A sink process; SIGKILLed on drop if still running (a failing test leaves none behind).
struct SinkProcess {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl SinkProcess {
    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL: the instance leaves without a word; the coordinator notices by the session
    /// timeout.
    fn kill(mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
    }

    /// SIGTERM, then waits for a clean exit.
    fn terminate(mut self) -> ExitStatus {
        let pid = self.pid().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        assert!(sent.success(), "kill -TERM {pid}");
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not stop within 30 s of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Panics (with its log) when the process has exited on its own.
    fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("running");
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!(
                "sink {} exited with {status}: {}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

impl Drop for SinkProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ------------------------------------------------------------------------ status

/// Who holds what in the sink group, as `callsync status --json` shows it.
#[derive(Debug, Clone)]
struct Ownership {
    state: String,
    /// partition -> (member id, client id), from each partition's `owner`.
    owners: BTreeMap<i32, (String, String)>,
    /// member id -> partitions of the topic, from `members[].assignment`.
    members: BTreeMap<String, Vec<i32>>,
    /// partition -> committed offset.
    committed: BTreeMap<i32, i64>,
    /// Partitions of the topic status lists.
    partitions: usize,
}

impl Ownership {
    fn from_status(report: &Value, group: &str, topic: &str) -> Ownership {
        let g = report["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .find(|g| g["group"] == group)
            .unwrap_or_else(|| panic!("group {group} not in status: {report}"));
        let mut owners = BTreeMap::new();
        let mut committed = BTreeMap::new();
        let mut partitions = 0;
        for t in g["topics"].as_array().expect("topics") {
            if t["topic"] != topic {
                continue;
            }
            for p in t["partitions"].as_array().expect("partitions") {
                partitions += 1;
                let partition = p["partition"].as_i64().expect("partition") as i32;
                if let Some(c) = p["committed"].as_i64() {
                    committed.insert(partition, c);
                }
                if let Some(owner) = p["owner"].as_object() {
                    owners.insert(
                        partition,
                        (
                            owner["member_id"].as_str().expect("member_id").to_string(),
                            owner["client_id"].as_str().expect("client_id").to_string(),
                        ),
                    );
                }
            }
        }
        let members = g["members"]
            .as_array()
            .expect("members")
            .iter()
            .map(|m| {
                let parts = m["assignment"][topic]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_i64)
                            .map(|p| p as i32)
                            .collect()
                    })
                    .unwrap_or_default();
                (
                    m["member_id"].as_str().expect("member_id").to_string(),
                    parts,
                )
            })
            .collect();
        Ownership {
            state: g["state"].as_str().unwrap_or_default().to_string(),
            owners,
            members,
            committed,
            partitions,
        }
    }

    /// Client ids of the members holding partitions.
    fn owning_clients(&self) -> BTreeSet<String> {
        self.owners.values().map(|(_, c)| c.clone()).collect()
    }

    /// A stable group of `n` members, each holding a share of the partitions, all partitions
    /// held, and the per-partition owners agreeing with the members' assignments.
    fn is_settled_with(&self, n: usize) -> bool {
        let owning: BTreeSet<&String> = self.owners.values().map(|(m, _)| m).collect();
        self.state == "Stable"
            && self.members.len() == n
            && self.partitions > 0
            && self.owners.len() == self.partitions
            && owning.len() == n
            && self.members.values().all(|parts| !parts.is_empty())
            && self
                .owners
                .iter()
                .all(|(p, (m, _))| self.members.get(m).is_some_and(|parts| parts.contains(p)))
    }
}

/// Runs `callsync status --json` until the sink group has settled with `n` members.
fn wait_for_members(setup: &Setup, topic: &str, n: usize, phase: &str) -> Ownership {
    let started = Instant::now();
    loop {
        let text = setup.status(true);
        let report: Value = serde_json::from_str(&text).expect("status --json is JSON");
        let ownership = Ownership::from_status(&report, &setup.group, topic);
        if ownership.is_settled_with(n) {
            eprintln!(
                "{phase}: settled with {n} member(s) after {:.1}s: {:?}",
                started.elapsed().as_secs_f64(),
                ownership.owners
            );
            return ownership;
        }
        assert!(
            started.elapsed() < PHASE_TIMEOUT,
            "{phase}: `callsync status` did not show {n} member(s) sharing the {PARTITIONS} \
             partitions within {PHASE_TIMEOUT:?}; last: {ownership:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Waits until the committed offset of every partition has moved past `since`: every
/// member holding partitions is applying records.
fn wait_for_progress(setup: &Setup, topic: &str, since: &Ownership, phase: &str) {
    let started = Instant::now();
    loop {
        let report: Value = serde_json::from_str(&setup.status(true)).expect("status JSON");
        let now = Ownership::from_status(&report, &setup.group, topic);
        let advanced = (0..PARTITIONS).all(|p| {
            now.committed.get(&p).copied().unwrap_or(-1)
                > since.committed.get(&p).copied().unwrap_or(-1)
        });
        if advanced {
            return;
        }
        assert!(
            started.elapsed() < PHASE_TIMEOUT,
            "{phase}: committed offsets did not advance on every partition: before {:?}, now {:?}",
            since.committed,
            now.committed
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Waits until the sink's offsets in Postgres (its source of truth) reach the topic's end.
async fn wait_caught_up(
    kafka_factory: &KafkaClientFactory,
    pool: &sqlx::PgPool,
    group: &str,
    topic: &str,
) {
    let consumer = callsync::ops::scan::scan_consumer(
        kafka_factory,
        "ops-scaling-watermarks",
        callsync_runtime::Isolation::ReadCommitted,
    )
    .expect("consumer");
    let parts =
        callsync::ops::offsets::topic_partitions(&consumer, topic, TIMEOUT).expect("partitions");
    let ends: BTreeMap<i32, i64> =
        callsync::ops::offsets::watermarks(&consumer, topic, &parts, TIMEOUT)
            .expect("watermarks")
            .into_iter()
            .map(|(p, w)| (p, w.high))
            .filter(|(_, high)| *high > 0)
            .collect();
    let started = Instant::now();
    loop {
        let stored: Vec<(i32, i64)> = sqlx::query_as(
            "SELECT partition, next_offset FROM callsync_offsets \
             WHERE consumer_group = $1 AND topic = $2",
        )
        .bind(group)
        .bind(topic)
        .fetch_all(pool)
        .await
        .unwrap_or_default();
        let stored: BTreeMap<i32, i64> = stored.into_iter().collect();
        if stored == ends {
            return;
        }
        assert!(
            started.elapsed() < PHASE_TIMEOUT,
            "the sink did not catch up: stored {stored:?}, end {ends:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn exact_table_diff(got: &[callsync_sinks::StoredCall], want: &BTreeMap<String, CallRecord>) {
    let mut missing: BTreeSet<&String> = want.keys().collect();
    let mut wrong = Vec::new();
    let mut extra = Vec::new();
    for stored in got {
        let k = stored.record.key().into_string();
        match want.get(&k) {
            Some(w) => {
                missing.remove(&k);
                if *w != stored.record {
                    wrong.push(format!(
                        "{k}: version {} stored, {} expected",
                        stored.record.version, w.version
                    ));
                }
            }
            None => extra.push(k),
        }
    }
    assert!(
        missing.is_empty() && wrong.is_empty() && extra.is_empty() && got.len() == want.len(),
        "table differs from the newest versions: {} missing (e.g. {:?}), {} wrong (e.g. {:?}), \
         {} extra (e.g. {:?}), {} rows for {} calls",
        missing.len(),
        missing.iter().take(3).collect::<Vec<_>>(),
        wrong.len(),
        wrong.iter().take(3).collect::<Vec<_>>(),
        extra.len(),
        extra.iter().take(3).collect::<Vec<_>>(),
        got.len(),
        want.len()
    );
}

async fn create_topics(kafka: &RealKafka, factory: &KafkaClientFactory) -> String {
    for (base, partitions) in [
        ("calls", PARTITIONS),
        ("calls.raw", 1),
        ("calls.dlq", 1),
        ("callsync.sync-requests", 1),
        ("callsync.sync-events", 1),
    ] {
        kafka
            .create_topic(&factory.settings().topic(base), partitions, &[])
            .await
            .expect("create topic");
    }
    factory.settings().topic("calls")
}

fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    tokio::task::spawn_blocking(f)
}

fn path_of(p: &Path) -> String {
    p.display().to_string()
}

// ------------------------------------------------------------------------ the test

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_three_sinks_and_back_mid_stream_keeps_the_table_exact_and_status_shows_the_moves() {
    let kafka = callsync_testkit::skip_unless_kafka!();
    let db = callsync_testkit::skip_unless_postgres!();
    let test_started = Instant::now();
    let prefix = unique_prefix(&kafka, "ops-scaling");
    let f = factory(&kafka, &prefix);
    let topic = create_topics(&kafka, &f).await;
    // migrate once here, so the three instances do not race on it at start
    let store = PgStore::connect(&db.url, 2, 500).await.expect("store");
    store.migrate().await.expect("migrate");
    let setup = Arc::new(Setup {
        dir: tempfile::tempdir().expect("temp dir"),
        bootstrap: kafka.bootstrap().to_string(),
        prefix: prefix.clone(),
        db_url: db.url.clone(),
        group: kafka.unique_group("ops-scaling-sink"),
    });
    eprintln!("configs and sink logs in {}", path_of(setup.dir.path()));

    // phase 1: one instance, the stream running
    let mut sink_1 = setup.start_sink("sink-1");
    let stop = Arc::new(AtomicBool::new(false));
    let produced = Arc::new(AtomicUsize::new(0));
    let producer = tokio::spawn(produce_stream(
        f.clone(),
        topic.clone(),
        stop.clone(),
        produced.clone(),
    ));
    let (s, t) = (setup.clone(), topic.clone());
    let phase_1 = blocking(move || wait_for_members(&s, &t, 1, "phase 1 (one instance)"))
        .await
        .expect("join");
    assert_eq!(
        phase_1.owning_clients(),
        BTreeSet::from(["sink-1".to_string()]),
        "phase 1: sink-1 holds every partition: {phase_1:?}"
    );
    let (s, t, p1) = (setup.clone(), topic.clone(), phase_1.clone());
    blocking(move || wait_for_progress(&s, &t, &p1, "phase 1"))
        .await
        .expect("join");
    let produced_at_scale_out = produced.load(Ordering::SeqCst);

    // phase 2: two more join mid-stream
    let mut sink_2 = setup.start_sink("sink-2");
    let mut sink_3 = setup.start_sink("sink-3");
    let (s, t) = (setup.clone(), topic.clone());
    let phase_2 = blocking(move || wait_for_members(&s, &t, 3, "phase 2 (three instances)"))
        .await
        .expect("join");
    assert_eq!(
        phase_2.owning_clients(),
        BTreeSet::from(["sink-1", "sink-2", "sink-3"].map(String::from)),
        "phase 2: the partitions are split over the three instances: {phase_2:?}"
    );
    let phase_1_member = phase_1.owners[&0].0.clone();
    assert!(
        phase_2.members[&phase_1_member].len() < PARTITIONS as usize,
        "phase 2: sink-1 gave partitions away: {phase_2:?}"
    );
    let (s, t, p2) = (setup.clone(), topic.clone(), phase_2.clone());
    blocking(move || wait_for_progress(&s, &t, &p2, "phase 2"))
        .await
        .expect("join");
    // the human table shows the same: three members of the group with their partitions
    let (s, group) = (setup.clone(), setup.group.clone());
    let table = blocking(move || s.status(false)).await.expect("join");
    eprintln!("phase 2, `callsync status`:\n{table}");
    let member_rows: Vec<&str> = table
        .lines()
        .skip_while(|l| !l.starts_with("GROUP MEMBERS"))
        .filter(|l| l.starts_with(group.as_str()))
        .collect();
    assert_eq!(member_rows.len(), 3, "GROUP MEMBERS rows: {table}");
    for name in ["sink-1", "sink-2", "sink-3"] {
        assert!(
            member_rows
                .iter()
                .any(|r| r.contains(name) && r.contains(&format!("{topic}: "))),
            "{name} with its partitions in: {table}"
        );
    }
    sink_1.assert_running();
    sink_2.assert_running();
    sink_3.assert_running();
    let produced_at_scale_in = produced.load(Ordering::SeqCst);
    assert!(
        produced_at_scale_in > produced_at_scale_out,
        "records kept flowing while the group grew"
    );

    // phase 3: back to one, mid-stream: sink-2 without warning, sink-3 cleanly
    sink_2.kill();
    let status_3 = blocking(move || sink_3.terminate()).await.expect("join");
    assert!(status_3.success(), "sink-3 stopped by SIGTERM: {status_3}");
    let (s, t) = (setup.clone(), topic.clone());
    let phase_3 = blocking(move || wait_for_members(&s, &t, 1, "phase 3 (back to one)"))
        .await
        .expect("join");
    assert_eq!(
        phase_3.owning_clients(),
        BTreeSet::from(["sink-1".to_string()]),
        "phase 3: sink-1 holds every partition again: {phase_3:?}"
    );
    assert_eq!(
        phase_3.owners[&0].0, phase_1_member,
        "phase 3: the survivor is the same member as in phase 1"
    );
    let (s, t, p3) = (setup.clone(), topic.clone(), phase_3.clone());
    blocking(move || wait_for_progress(&s, &t, &p3, "phase 3"))
        .await
        .expect("join");
    sink_1.assert_running();

    // the stream ends; the survivor catches up
    stop.store(true, Ordering::SeqCst);
    let records = producer.await.expect("producer");
    assert!(
        records.len() > produced_at_scale_in,
        "records kept flowing while the group shrank"
    );
    wait_caught_up(&f, &db.pool, &setup.group, &topic).await;
    let want = expected(&records);
    let got = store.all_calls().await.expect("all calls");
    exact_table_diff(&got, &want);
    let status_1 = blocking(move || sink_1.terminate()).await.expect("join");
    assert!(status_1.success(), "sink-1 stopped by SIGTERM: {status_1}");
    eprintln!(
        "scaling: {} records for {} calls, 1 -> 3 -> 1 sink instances, table exact; {:.1}s",
        records.len(),
        want.len(),
        test_started.elapsed().as_secs_f64()
    );
}

// ------------------------------------------------------------------------ every role scaled

/// Processes of one fleet: every one runs `callsync run --roles R` with the same config file,
/// as ops scale a role (no per-process setting at all).
struct Fleet {
    dir: tempfile::TempDir,
    config: PathBuf,
    processor_group: String,
    sink_group: String,
}

impl Fleet {
    fn new(
        bootstrap: &str,
        prefix: &str,
        db_url: &str,
        processor_group: &str,
        sink_group: &str,
    ) -> Fleet {
        let dir = tempfile::tempdir().expect("temp dir");
        let text = format!(
            r#"[kafka]
bootstrap_servers = "{bootstrap}"
topic_prefix = "{prefix}"

[kafka.client_properties]
# the broker's minimum: a SIGKILLed process leaves its group 6 s after its last heartbeat
"session.timeout.ms" = "6000"

[processor]
group_id = "{processor_group}"
batch_max_time_ms = 100

[sink]
database_url = "{db_url}"
group = "{sink_group}"
batch_rows = 2000
batch_max_ms = 200
copy_threshold = 500
max_connections = 2

[log]
filter = "warn"
"#
        );
        Fleet::with_config(dir, &text, processor_group, sink_group)
    }

    fn with_config(
        dir: tempfile::TempDir,
        text: &str,
        processor_group: &str,
        sink_group: &str,
    ) -> Fleet {
        let config = dir.path().join("callsync.toml");
        std::fs::write(&config, text).expect("config file");
        Fleet {
            dir,
            config,
            processor_group: processor_group.to_string(),
            sink_group: sink_group.to_string(),
        }
    }

    /// Starts `callsync run` with `args` and extra environment; `name` names its log file.
    fn start_with(&self, name: &str, args: &[&str], env: &[(&str, String)]) -> SinkProcess {
        let log = self.dir.path().join(format!("{name}.log"));
        let mut cmd = self.callsync();
        cmd.arg("run").args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start callsync run");
        SinkProcess {
            name: name.to_string(),
            child: Some(child),
            log,
        }
    }

    fn callsync(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_callsync"));
        for (key, _) in std::env::vars() {
            if key.starts_with("CALLSYNC") {
                cmd.env_remove(key);
            }
        }
        cmd.env_remove("RUST_LOG");
        cmd.arg("--config").arg(&self.config);
        cmd
    }

    /// Starts `callsync run --roles <role>`; `name` only names its log file.
    fn start(&self, name: &str, role: &str) -> SinkProcess {
        self.start_with(name, &["--roles", role], &[])
    }

    fn status(&self) -> Value {
        let out = self
            .callsync()
            .args(["status", "--json"])
            .output()
            .expect("run callsync status");
        assert!(
            out.status.success(),
            "callsync status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status --json is JSON")
    }

    /// Waits until `group` is stable with `n` members sharing every partition of `topic`.
    fn wait_for_members(&self, group: &str, topic: &str, n: usize, phase: &str) {
        let started = Instant::now();
        loop {
            let ownership = Ownership::from_status(&self.status(), group, topic);
            if ownership.is_settled_with(n) {
                eprintln!(
                    "{phase}: {group} settled with {n} member(s) after {:.1}s",
                    started.elapsed().as_secs_f64()
                );
                return;
            }
            assert!(
                started.elapsed() < PHASE_TIMEOUT,
                "{phase}: {group} did not settle with {n} members: {ownership:?}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// The processor group's committed offsets on `calls.raw` and the sink's offsets in Postgres
/// on `calls`, per partition.
async fn progress(
    f: &KafkaClientFactory,
    pool: &sqlx::PgPool,
    fleet: &Fleet,
) -> (BTreeMap<i32, i64>, BTreeMap<i32, i64>) {
    let (f2, group, raw) = (
        f.clone(),
        fleet.processor_group.clone(),
        f.settings().topic("calls.raw"),
    );
    let processed = blocking(move || committed(&f2, &group, &raw))
        .await
        .expect("join");
    let stored: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT partition, next_offset FROM callsync_offsets WHERE consumer_group = $1",
    )
    .bind(&fleet.sink_group)
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    (processed, stored.into_iter().collect())
}

/// How long after `since` every partition of `before` moved past its offset there: the longest
/// stall any partition saw.
async fn longest_stall(
    f: &KafkaClientFactory,
    pool: &sqlx::PgPool,
    fleet: &Fleet,
    since: Instant,
    bound: Duration,
) -> (Duration, Duration) {
    let (raw_before, sink_before) = progress(f, pool, fleet).await;
    let mut raw_done: BTreeMap<i32, Duration> = BTreeMap::new();
    let mut sink_done: BTreeMap<i32, Duration> = BTreeMap::new();
    loop {
        let (raw, sink) = progress(f, pool, fleet).await;
        for (p, before) in &raw_before {
            if raw.get(p).is_some_and(|now| now > before) {
                raw_done.entry(*p).or_insert_with(|| since.elapsed());
            }
        }
        for (p, before) in &sink_before {
            if sink.get(p).is_some_and(|now| now > before) {
                sink_done.entry(*p).or_insert_with(|| since.elapsed());
            }
        }
        if raw_done.len() == PARTITIONS as usize && sink_done.len() == PARTITIONS as usize {
            eprintln!("after the kill, partitions moved again: processor {raw_done:?}, sink {sink_done:?}");
            let max = |m: &BTreeMap<i32, Duration>| m.values().copied().max().unwrap_or_default();
            return (max(&raw_done), max(&sink_done));
        }
        assert!(
            since.elapsed() < bound,
            "partitions stalled longer than {bound:?} after a kill -9: processor moved {raw_done:?} \
             of {raw_before:?}, sink moved {sink_done:?} of {sink_before:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Three processor and three sink processes with one config file; one of each SIGKILLed and one
/// of each added mid-stream, one of each stopped by SIGTERM; at the end the `calls` table is the
/// newest version of every call, every column, and no process left except by a kill or a
/// SIGTERM. On the code before per-run transactional ids this failed at once: the second
/// processor's `init_transactions` (callsync-processor-0) fenced the first, which exited.
///
/// Also the bound the per-run ids cost: a SIGKILLed processor's open transaction is aborted by
/// the broker after `processor.transaction_timeout_ms` (10 s), and its partitions move after
/// the session timeout (6 s here); no partition (processor or sink) may stall longer than
/// those two plus 20 s of slack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processors_and_three_sinks_with_one_config_survive_kills_and_additions() {
    let kafka = callsync_testkit::skip_unless_kafka!();
    let db = callsync_testkit::skip_unless_postgres!();
    let test_started = Instant::now();
    let prefix = unique_prefix(&kafka, "ops-fleet");
    let f = factory(&kafka, &prefix);
    callsync_runtime::ensure_catalogue(
        &f,
        &callsync_runtime::CatalogueOptions {
            call_partitions: PARTITIONS,
            calls_retention_days: 1,
        },
        TIMEOUT,
    )
    .await
    .expect("topics");
    let store = PgStore::connect(&db.url, 2, 500).await.expect("store");
    store.migrate().await.expect("migrate");
    let fleet = Arc::new(Fleet::new(
        kafka.bootstrap(),
        &prefix,
        &db.url,
        &kafka.unique_group("fleet-processor"),
        &kafka.unique_group("fleet-sink"),
    ));
    eprintln!("config and logs in {}", path_of(fleet.dir.path()));
    let raw = f.settings().topic("calls.raw");
    let calls = f.settings().topic("calls");

    let mut processes: Vec<SinkProcess> = Vec::new();
    for i in 1..=3 {
        processes.push(fleet.start(&format!("processor-{i}"), "processor"));
        processes.push(fleet.start(&format!("sink-{i}"), "sink"));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let produced = Arc::new(AtomicUsize::new(0));
    let producer = tokio::spawn(produce_stream(
        f.clone(),
        raw.clone(),
        stop.clone(),
        produced.clone(),
    ));
    let (fl, r, c) = (fleet.clone(), raw.clone(), calls.clone());
    blocking(move || {
        fl.wait_for_members(&fl.processor_group, &r, 3, "three processors");
        fl.wait_for_members(&fl.sink_group, &c, 3, "three sinks");
    })
    .await
    .expect("join");
    for p in processes.iter_mut() {
        p.assert_running();
    }

    // a processor and a sink die without a word, mid-stream
    let killed_at = Instant::now();
    let processor_2 = processes.remove(2);
    let sink_2 = processes.remove(2);
    processor_2.kill();
    sink_2.kill();
    let bound = Duration::from_secs(6 + 10 + 20);
    let (processor_stall, sink_stall) = longest_stall(&f, &db.pool, &fleet, killed_at, bound).await;
    eprintln!(
        "kill -9 of one processor and one sink of three: longest stall {:.1}s (processor), {:.1}s (sink)",
        processor_stall.as_secs_f64(),
        sink_stall.as_secs_f64()
    );

    // one of each added, then one of each stopped cleanly
    processes.push(fleet.start("processor-4", "processor"));
    processes.push(fleet.start("sink-4", "sink"));
    let (fl, r, c) = (fleet.clone(), raw.clone(), calls.clone());
    blocking(move || {
        fl.wait_for_members(&fl.processor_group, &r, 3, "a processor added");
        fl.wait_for_members(&fl.sink_group, &c, 3, "a sink added");
    })
    .await
    .expect("join");
    // processes: processor-1, sink-1, processor-3, sink-3, processor-4, sink-4
    let processor_3 = processes.remove(2);
    let sink_3 = processes.remove(2);
    for p in [processor_3, sink_3] {
        let name = p.name.clone();
        let status = blocking(move || p.terminate()).await.expect("join");
        assert!(status.success(), "{name} stopped by SIGTERM: {status}");
    }
    let (fl, r, c) = (fleet.clone(), raw.clone(), calls.clone());
    blocking(move || {
        fl.wait_for_members(&fl.processor_group, &r, 2, "a processor stopped");
        fl.wait_for_members(&fl.sink_group, &c, 2, "a sink stopped");
    })
    .await
    .expect("join");

    // the stream ends; the survivors catch up
    stop.store(true, Ordering::SeqCst);
    let records = producer.await.expect("producer");
    let started = Instant::now();
    loop {
        let (f2, group, r) = (f.clone(), fleet.processor_group.clone(), raw.clone());
        let processed: i64 = blocking(move || committed(&f2, &group, &r))
            .await
            .expect("join")
            .values()
            .sum();
        if processed == records.len() as i64 {
            break;
        }
        assert!(
            started.elapsed() < PHASE_TIMEOUT,
            "the processors did not catch up: {processed} of {} records",
            records.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // `calls` is written in transactions (it ends in commit markers): wait for the rows
    let want = expected(&records);
    let started = Instant::now();
    let got = loop {
        let got = store.all_calls().await.expect("all calls");
        let exact = got.len() == want.len()
            && got
                .iter()
                .all(|row| want.get(&row.record.key().into_string()) == Some(&row.record));
        if exact || started.elapsed() > PHASE_TIMEOUT {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    exact_table_diff(&got, &want);

    // nobody was fenced out: the survivors still run, then stop cleanly
    for mut p in processes {
        p.assert_running();
        let log = p.log.clone();
        let name = p.name.clone();
        let status = blocking(move || p.terminate()).await.expect("join");
        assert!(status.success(), "{name} stopped by SIGTERM: {status}");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            !text.to_lowercase().contains("fenced"),
            "{name} logged a fence: {text}"
        );
    }
    eprintln!(
        "fleet: {} records for {} calls through 3 -> 2 -> 3 -> 2 processors and sinks, table exact; {:.1}s",
        records.len(),
        want.len(),
        test_started.elapsed().as_secs_f64()
    );
}

/// A free port on 127.0.0.1 (bound, then released for a process to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `GET url`: status and body (`None` while nothing answers).
async fn get(http: &reqwest::Client, url: &str) -> Option<(u16, String)> {
    let response = http.get(url).send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.unwrap_or_default()))
}

/// Waits until `process` exits on its own; its exit code.
fn wait_exit(mut process: SinkProcess, within: Duration) -> Option<i32> {
    let mut child = process.child.take().expect("running");
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{} did not exit within {within:?}: {}",
                process.name,
                std::fs::read_to_string(&process.log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A role that fails for a reason of its own (here: the processor fenced by another process
/// that was given the same static `instance_id`) never takes the process's healthy roles down
/// silently: with `--on-role-failure keep-others` the api goes on and `/readyz` answers 503
/// naming the failed role, and the exit code at SIGTERM is the processor's (12); with the
/// default (stop-all) the process logs which healthy roles it stops because of it and exits
/// with 12 at once. Before this, a fenced processor ended its process with exit code 1 and
/// the log line "role failed; stopping the others", and /readyz never said anything.
/// The read token of `a_failed_role_shows_in_readyz_and_the_exit_code`'s processes.
const READYZ_TOKEN: &str = "ops-scaling-readyz-token-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_role_shows_in_readyz_and_the_exit_code() {
    let kafka = callsync_testkit::skip_unless_kafka!();
    let prefix = unique_prefix(&kafka, "ops-roles");
    let f = factory(&kafka, &prefix);
    callsync_runtime::ensure_catalogue(
        &f,
        &callsync_runtime::CatalogueOptions {
            call_partitions: 2,
            calls_retention_days: 1,
        },
        TIMEOUT,
    )
    .await
    .expect("topics");
    let group = kafka.unique_group("roles-processor");
    let text = format!(
        r#"[kafka]
bootstrap_servers = "{bootstrap}"
topic_prefix = "{prefix}"

[kafka.client_properties]
"session.timeout.ms" = "6000"

[processor]
group_id = "{group}"
# static membership: a second process with this id fences the first
instance_id = "the-same"

# /readyz needs a read token; the public webhook listener takes any free port
[webhooks]
listen = "127.0.0.1:0"

[[api.tokens]]
name = "test"
token = "{READYZ_TOKEN}"
scopes = ["read"]

[log]
filter = "info"
"#,
        bootstrap = kafka.bootstrap()
    );
    let fleet = Fleet::with_config(tempfile::tempdir().expect("dir"), &text, &group, "unused");
    let mut auth = reqwest::header::HeaderMap::new();
    auth.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {READYZ_TOKEN}").parse().expect("header"),
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .default_headers(auth)
        .build()
        .expect("http");
    let api = |port: u16| ("CALLSYNC__API__LISTEN", format!("127.0.0.1:{port}"));

    // A keeps its other roles when one fails
    let port_a = free_port();
    let a = fleet.start_with(
        "a",
        &[
            "--roles",
            "processor,api",
            "--on-role-failure",
            "keep-others",
        ],
        &[api(port_a)],
    );
    let ready_a = format!("http://127.0.0.1:{port_a}/readyz");
    let started = Instant::now();
    while get(&http, &ready_a).await.map(|(s, _)| s) != Some(200) {
        assert!(started.elapsed() < PHASE_TIMEOUT, "a never became ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // /readyz answers before the processor's init_transactions ends; B must start after it,
    // or A's later init fences B instead of B fencing A
    let log_a = fleet.dir.path().join("a.log");
    while !std::fs::read_to_string(&log_a)
        .unwrap_or_default()
        .contains("processor started")
    {
        assert!(
            started.elapsed() < PHASE_TIMEOUT,
            "a's processor never started"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // B, with the same instance id, fences A's processor (B stops all on a failure)
    let port_b = free_port();
    let mut b = fleet.start_with("b", &["--roles", "processor,api"], &[api(port_b)]);
    let started = Instant::now();
    let body = loop {
        b.assert_running();
        produce(
            &f,
            &f.settings().topic("calls.raw"),
            vec![(
                "retreaver:a:fence".to_string(),
                encode_to_vec(
                    &sample_call(Provider::Retreaver, "a", "fence", 1),
                    WireFormat::SingleObject,
                )
                .expect("encode"),
                None,
                None,
                rdkafka::message::OwnedHeaders::new(),
            )],
        )
        .await;
        if let Some((503, body)) = get(&http, &ready_a).await {
            break body;
        }
        assert!(
            started.elapsed() < 2 * PHASE_TIMEOUT,
            "a's /readyz never reported its failed processor: {}\n\nb's log: {}",
            std::fs::read_to_string(fleet.dir.path().join("a.log")).unwrap_or_default(),
            std::fs::read_to_string(&b.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(body.contains("role processor failed"), "{body}");
    let health = get(&http, &format!("http://127.0.0.1:{port_a}/healthz")).await;
    assert_eq!(health.map(|(s, _)| s), Some(200), "a's api still serves");

    // C, with the same id again, fences B: B stops its api with it and exits with 12
    let c = fleet.start_with("c", &["--roles", "processor"], &[]);
    let b_log = b.log.clone();
    let code_b = blocking(move || wait_exit(b, PHASE_TIMEOUT))
        .await
        .expect("join");
    let log_b = std::fs::read_to_string(&b_log).unwrap_or_default();
    assert_eq!(
        code_b,
        Some(12),
        "b exits with the processor's code: {log_b}"
    );
    assert!(
        log_b.contains("stopping the healthy roles") && log_b.contains("Api"),
        "b says which healthy roles it stops: {log_b}"
    );

    // A, asked to stop, exits with its failed role's code
    let code_a = blocking(move || a.terminate()).await.expect("join");
    assert_eq!(code_a.code(), Some(12), "a exits with the processor's code");
    let code_c = blocking(move || c.terminate()).await.expect("join");
    assert!(code_c.success(), "c stopped cleanly: {code_c}");
}

/// The commands of docs/operations.md's "Scaling" block, run as written (the binary first on
/// PATH, in a directory holding the test's `callsync.toml`): the one-shot commands must
/// succeed, each `run` line becomes a process of its own, the groups settle with as many
/// members as the block starts, and a process stopped with SIGTERM leaves its group cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_commands_run_as_written() {
    let kafka = callsync_testkit::skip_unless_kafka!();
    let db = callsync_testkit::skip_unless_postgres!();
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md"))
            .expect("docs/operations.md");
    let marker = "<!-- tests/ops_scaling.rs runs this block as written";
    let block: Vec<&str> = docs[docs.find(marker).expect("the scaling block's marker")..]
        .lines()
        .skip_while(|l| !l.starts_with("```sh"))
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .collect();
    assert!(block.len() >= 5, "the block: {block:?}");

    let prefix = unique_prefix(&kafka, "ops-docs");
    let processor_group = kafka.unique_group("docs-processor");
    let sink_group = kafka.unique_group("docs-sink");
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("callsync.toml"),
        format!(
            r#"[kafka]
bootstrap_servers = "{bootstrap}"
topic_prefix = "{prefix}"

[kafka.client_properties]
"session.timeout.ms" = "6000"

[topics]
call_partitions = 3
calls_retention_days = 1

[processor]
group_id = "{processor_group}"

[sink]
database_url = "{db}"
group = "{sink_group}"
max_connections = 2

[log]
filter = "warn"
"#,
            bootstrap = kafka.bootstrap(),
            db = db.url,
        ),
    )
    .expect("config");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_callsync"))
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let shell = |line: &str| {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words[0], "callsync", "a callsync command: {line}");
        let mut cmd = Command::new(words[0]);
        for (key, _) in std::env::vars() {
            if key.starts_with("CALLSYNC") {
                cmd.env_remove(key);
            }
        }
        cmd.env_remove("RUST_LOG")
            .env("PATH", &path)
            .current_dir(dir.path())
            .args(&words[1..])
            .stdin(Stdio::null());
        cmd
    };

    let mut running = Vec::new();
    let (mut processors, mut sinks) = (0usize, 0usize);
    for (n, line) in block.iter().enumerate() {
        if line.contains(" run ") {
            let log = dir.path().join(format!("line-{n}.log"));
            let child = shell(line)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log"))
                .spawn()
                .unwrap_or_else(|e| panic!("{line}: {e}"));
            processors += usize::from(line.ends_with("--roles processor"));
            sinks += usize::from(line.ends_with("--roles sink"));
            running.push(SinkProcess {
                name: line.to_string(),
                child: Some(child),
                log,
            });
        } else {
            let out = shell(line)
                .output()
                .unwrap_or_else(|e| panic!("{line}: {e}"));
            assert!(
                out.status.success(),
                "`{line}` failed with {}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    assert!(
        processors >= 2 && sinks >= 2,
        "the block scales both roles: {block:?}"
    );

    // the groups settle with one member per process started
    let fleet = Arc::new(Fleet::with_config(
        tempfile::tempdir().expect("dir"),
        &std::fs::read_to_string(dir.path().join("callsync.toml")).expect("config"),
        &processor_group,
        &sink_group,
    ));
    let (fl, p) = (fleet.clone(), prefix.clone());
    blocking(move || {
        fl.wait_for_members(
            &fl.processor_group,
            &format!("{p}calls.raw"),
            processors,
            "docs: processors",
        );
        fl.wait_for_members(&fl.sink_group, &format!("{p}calls"), sinks, "docs: sinks");
    })
    .await
    .expect("join");

    // scale in as the section says: SIGTERM one process, the others take its partitions
    let first = running.remove(0);
    let status = blocking(move || first.terminate()).await.expect("join");
    assert!(status.success(), "a SIGTERMed process exits 0: {status}");
    let (fl, p) = (fleet.clone(), prefix.clone());
    blocking(move || {
        fl.wait_for_members(
            &fl.processor_group,
            &format!("{p}calls.raw"),
            processors - 1,
            "docs: scaled in",
        )
    })
    .await
    .expect("join");
    for mut process in running {
        process.assert_running();
        let status = blocking(move || process.terminate()).await.expect("join");
        assert!(status.success(), "exits 0 on SIGTERM: {status}");
    }
}
