//! A processor killed without warning (SIGKILL) mid-stream and restarted: `calls`
//! (read_committed) has every input key exactly once, and the restarted instance's state came
//! back from the changelog (it drops a second round of the same records as duplicates).
//!
//! The processor runs in a child process: this test binary re-executes itself with
//! `CALLSYNC_PROCESSOR_TEST_WORKER` set and `--exact processor_worker_process`; that test runs
//! the processor when the variable is set and returns at once otherwise.
//!
//! Skipped without `KAFKA_BOOTSTRAP` (fails under `CI=true`).

mod common;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use callsync_processors::run_processor;
use callsync_processors::synthetic::call_record;
use callsync_runtime::{names, KafkaClientFactory, KafkaSettings, Shutdown};
use common::{count_by_key, Fixture};

const WORKER_ENV: &str = "CALLSYNC_PROCESSOR_TEST_WORKER";

/// The child process: runs one processor instance until SIGTERM, then prints its report.
/// Spec in the environment: `bootstrap|topic prefix|group|instance id|batch max records`.
#[test]
fn processor_worker_process() {
    let Ok(spec) = std::env::var(WORKER_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let [bootstrap, prefix, group, instance, batch] = parts[..] else {
        panic!("bad {WORKER_ENV} spec {spec:?}");
    };
    let mut settings = KafkaSettings::plaintext(bootstrap);
    settings.topic_prefix = prefix.to_string();
    let mut config = callsync_processors::ProcessorConfig {
        instance_id: Some(instance.to_string()),
        group_id: group.to_string(),
        batch_max_time_ms: 100,
        restore_timeout_secs: 90,
        ..Default::default()
    };
    config.batch_max_records = batch.parse().expect("batch size");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let shutdown = Shutdown::new();
        shutdown.listen_for_signals().expect("signals");
        let report = run_processor(config, KafkaClientFactory::new(settings), shutdown)
            .await
            .expect("processor");
        println!(
            "WORKER_REPORT consumed={} emitted={} duplicates={} keys_restored={}",
            report.consumed, report.emitted, report.duplicates, report.keys_restored
        );
    });
}

fn spawn_worker(fx: &Fixture, group: &str, instance: &str) -> Child {
    let spec = format!(
        "{}|{}|{group}|{instance}|500",
        fx.kafka.bootstrap(),
        fx.prefix()
    );
    Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "processor_worker_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(WORKER_ENV, spec)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn worker")
}

/// `name=value` from the worker's report line.
fn report_value(stdout: &str, name: &str) -> u64 {
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("WORKER_REPORT").map(|(_, report)| report))
        .unwrap_or_else(|| panic!("no report in worker output:\n{stdout}"));
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_killed_mid_stream_and_restarted_loses_and_duplicates_nothing() {
    if std::env::var(WORKER_ENV).is_ok() {
        return;
    }
    let Some(kafka) = callsync_testkit::real_kafka() else {
        return;
    };
    let fx = Fixture::new(kafka, 3).await;
    const N: u64 = 60_000;
    let first: Vec<_> = (0..N).map(|i| call_record(i, 1)).collect();
    fx.produce_records(&first);
    let group = fx.kafka.unique_group("proc");

    let fx = std::sync::Arc::new(fx);
    let fx2 = fx.clone();
    let group2 = group.clone();
    tokio::task::spawn_blocking(move || {
        let fx = fx2;
        let group = group2;
        // 1. run, and kill without warning once some batches have committed
        let mut worker = spawn_worker(&fx, &group, "crashy");
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut at_kill = 0;
        while at_kill < 3_000 {
            assert!(Instant::now() < deadline, "worker made no progress");
            std::thread::sleep(Duration::from_millis(20));
            at_kill = fx.committed_total(&group);
        }
        worker.kill().expect("SIGKILL");
        worker.wait().expect("reap");
        eprintln!("killed after {at_kill} records committed");
        assert!(
            (at_kill as u64) < N,
            "the kill came after the stream ended; make the input larger"
        );

        // 2. restart the same instance: its init_transactions aborts the dead one's open
        // transaction at once (offsets stay unstable until then)
        let mut worker = spawn_worker(&fx, &group, "crashy");
        fx.wait_for_committed(&group, N as i64, Duration::from_secs(180));

        // 3. the same records again, plus new ones: the restored state drops the repeats
        let more: Vec<_> = (N..N + 5_000).map(|i| call_record(i, 1)).collect();
        fx.produce_records(first.iter().chain(&more));
        fx.wait_for_committed(&group, (2 * N + 5_000) as i64, Duration::from_secs(180));
        let status = Command::new("kill")
            .args(["-TERM", &worker.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let mut stdout = String::new();
        worker
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut stdout)
            .expect("read worker output");
        assert!(
            worker.wait().expect("reap").success(),
            "worker failed:\n{stdout}"
        );
        eprintln!("{stdout}");
        assert!(
            report_value(&stdout, "keys_restored") >= at_kill as u64,
            "state restored from the changelog"
        );
        assert_eq!(
            report_value(&stdout, "duplicates"),
            N,
            "every repeat dropped by the restored state"
        );
    })
    .await
    .unwrap();

    let calls = fx.read_topic(names::CALLS);
    let counts = count_by_key(&calls);
    assert_eq!(counts.len() as u64, N + 5_000, "no gaps");
    assert_eq!(calls.len() as u64, N + 5_000, "no duplicates");
}
