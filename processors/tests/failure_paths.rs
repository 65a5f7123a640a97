//! The processor's failure paths on the real broker: TTL expiry writing tombstones, an
//! aborted transaction rewinding to the committed offsets with its state dropped, and an
//! assignment lost mid-batch (the instance evicted by `max.poll.interval.ms`).
//!
//! Skipped without `KAFKA_BOOTSTRAP` (fails under `CI=true`).

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use callsync_processors::dedup::restore_partitions;
use callsync_processors::synthetic::call_record;
use callsync_processors::{
    run_processor_with_faults, ProcessorCounters, ProcessorFaults, ProcessorReport,
};
use callsync_runtime::{names, KafkaClientFactory, Shutdown};
use common::{count_by_key, Fixture};

/// The processor's log on stderr (shown for failing tests), filtered by `RUST_LOG`.
fn log_to_stderr() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "callsync_processors=info".into()),
        )
        .with_test_writer()
        .try_init();
}

type Run = tokio::task::JoinHandle<Result<ProcessorReport, callsync_processors::ProcessorError>>;

/// Waits until `done` holds for the counters' snapshot; a processor that stopped early is
/// joined so its error shows.
async fn wait_until(
    run: &mut Option<Run>,
    counters: &Arc<ProcessorCounters>,
    what: &'static str,
    timeout: Duration,
    done: fn(&ProcessorReport) -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !done(&counters.snapshot()) {
        if run.as_ref().is_some_and(|r| r.is_finished()) {
            let result = run.take().expect("run").await.expect("join");
            panic!("{what}: the processor stopped early: {result:?}");
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached within {timeout:?}: {:?}",
            counters.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn stop(run: &mut Option<Run>, shutdown: &Shutdown) -> ProcessorReport {
    shutdown.trigger();
    let report = run
        .take()
        .expect("running")
        .await
        .expect("join")
        .expect("processor");
    eprintln!("{report:?}");
    report
}

/// `calls` (read_committed) holds each of `n` keys exactly `times` times.
fn assert_calls_hold_each_key(fx: &Fixture, n: u64, times: usize) {
    let calls = fx.read_topic(names::CALLS);
    let counts = count_by_key(&calls);
    assert_eq!(counts.len() as u64, n, "no gaps in calls");
    let off: Vec<_> = counts.iter().filter(|(_, &c)| c != times).take(5).collect();
    assert!(off.is_empty(), "keys not held {times} time(s): {off:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_entries_get_tombstones_and_their_keys_pass_again() {
    log_to_stderr();
    let Some(kafka) = callsync_testkit::real_kafka() else {
        return;
    };
    let fx = Fixture::new(kafka, 2).await;
    const N: u64 = 2_000;
    let records: Vec<_> = (0..N).map(|i| call_record(i, 1)).collect();
    fx.produce_records(&records);

    let group = fx.kafka.unique_group("proc");
    let mut config = fx.processor_config(&group);
    config.dedup_ttl_secs = 2;
    config.ttl_sweep_interval_secs = 1;
    let counters = Arc::new(ProcessorCounters::default());
    let shutdown = Shutdown::new();
    let _stop_shutdown = shutdown.trigger_on_drop();
    let mut run = Some(tokio::spawn(run_processor_with_faults(
        config,
        fx.factory.clone(),
        shutdown.clone(),
        counters.clone(),
        ProcessorFaults::default(),
    )));
    wait_until(
        &mut run,
        &counters,
        "first feed",
        Duration::from_secs(60),
        |r| r.consumed >= N,
    )
    .await;
    wait_until(
        &mut run,
        &counters,
        "expiry",
        Duration::from_secs(15),
        |r| r.expired >= N,
    )
    .await;

    // the changelog's last word on every key is a tombstone, and a restore holds nothing
    let changelog = fx.read_topic(names::DEDUP_STATE);
    let mut last: HashMap<String, bool> = HashMap::new();
    for r in &changelog {
        last.insert(r.key_str(), r.value.is_some());
    }
    assert_eq!(
        last.len() as u64,
        N,
        "every key was written to the changelog"
    );
    let live: Vec<_> = last.iter().filter(|(_, &v)| v).take(5).collect();
    assert!(
        live.is_empty(),
        "keys whose last changelog record is not a tombstone: {live:?}"
    );
    let factory = fx.factory.clone();
    let state_topic = fx.topic(names::DEDUP_STATE);
    let stats = tokio::task::spawn_blocking(move || {
        restore_partitions(&factory, &state_topic, &[0, 1], Duration::from_secs(30))
            .expect("restore")
            .1
    })
    .await
    .expect("restore task");
    assert_eq!(stats.keys, 0, "expired keys are not restored");

    // the same records again: the state forgot them, so they pass again
    fx.produce_records(&records);
    wait_until(
        &mut run,
        &counters,
        "second feed",
        Duration::from_secs(60),
        |r| r.consumed >= 2 * N,
    )
    .await;
    let report = stop(&mut run, &shutdown).await;
    assert_eq!(report.emitted, 2 * N);
    assert_eq!(report.duplicates, 0);
    assert!(report.expired >= N, "{report:?}");
    assert_calls_hold_each_key(&fx, N, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_batch_rewinds_to_its_first_offsets_and_drops_its_state() {
    log_to_stderr();
    let Some(kafka) = callsync_testkit::real_kafka() else {
        return;
    };
    let fx = Fixture::new(kafka, 2).await;
    const N: u64 = 4_000;
    let records: Vec<_> = (0..N).map(|i| call_record(i, 1)).collect();
    fx.produce_records(&records);

    let group = fx.kafka.unique_group("proc");
    let counters = Arc::new(ProcessorCounters::default());
    let shutdown = Shutdown::new();
    let _stop_shutdown = shutdown.trigger_on_drop();
    let mut run = Some(tokio::spawn(run_processor_with_faults(
        fx.processor_config(&group),
        fx.factory.clone(),
        shutdown.clone(),
        counters.clone(),
        // the first batch fails after 500 records, their outputs already sent
        ProcessorFaults {
            fail_batch_at_records: Some(500),
            ..ProcessorFaults::default()
        },
    )));
    wait_until(
        &mut run,
        &counters,
        "processing",
        Duration::from_secs(60),
        |r| r.consumed >= N,
    )
    .await;
    let report = stop(&mut run, &shutdown).await;
    assert_eq!(report.batches_aborted, 1, "{report:?}");
    // had the aborted batch's staged state survived, its redone records would be judged
    // duplicates and never reach calls
    assert_eq!(report.consumed, N, "committed work counts each record once");
    assert_eq!(report.emitted, N);
    assert_eq!(report.duplicates, 0);
    assert_eq!(fx.committed_total(&group), N as i64);
    assert_calls_hold_each_key(&fx, N, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_assignment_aborts_the_batch_and_the_partitions_resume_exactly_once() {
    log_to_stderr();
    let Some(kafka) = callsync_testkit::real_kafka() else {
        return;
    };
    let fx = Fixture::new(kafka, 2).await;
    const N: u64 = 4_000;
    let records: Vec<_> = (0..N).map(|i| call_record(i, 1)).collect();
    fx.produce_records(&records);

    // the group evicts a member that does not poll for 6 s (the broker's minimum session)
    let mut settings = fx.factory.settings().clone();
    for (k, v) in [
        ("session.timeout.ms", "6000"),
        ("max.poll.interval.ms", "6000"),
    ] {
        settings.client_properties.insert(k.into(), v.into());
    }
    let factory = KafkaClientFactory::new(settings);
    let group = fx.kafka.unique_group("proc");
    let counters = Arc::new(ProcessorCounters::default());
    let shutdown = Shutdown::new();
    let _stop_shutdown = shutdown.trigger_on_drop();
    let mut config = fx.processor_config(&group);
    // the batch is still open when the stall begins
    config.batch_max_records = 50_000;
    config.batch_max_time_ms = 2_000;
    let mut run = Some(tokio::spawn(run_processor_with_faults(
        config,
        factory,
        shutdown.clone(),
        counters.clone(),
        ProcessorFaults {
            stall_after_records: Some((1_000, Duration::from_millis(7_500))),
            ..ProcessorFaults::default()
        },
    )));
    wait_until(
        &mut run,
        &counters,
        "processing",
        Duration::from_secs(60),
        |r| r.consumed >= N,
    )
    .await;
    let report = stop(&mut run, &shutdown).await;
    assert!(
        report.batches_aborted >= 1,
        "the open batch was aborted: {report:?}"
    );
    assert!(
        report.partitions_restored >= 4,
        "both partitions restored again after the eviction: {report:?}"
    );
    assert_eq!(report.consumed, N);
    assert_eq!(report.emitted, N);
    assert_eq!(fx.committed_total(&group), N as i64);
    assert_calls_hold_each_key(&fx, N, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_call_that_never_returns_stops_the_instance_and_a_new_one_resumes_exactly_once(
) {
    log_to_stderr();
    let Some(kafka) = callsync_testkit::real_kafka() else {
        return;
    };
    let fx = Fixture::new(kafka, 2).await;
    const N: u64 = 500;
    let records: Vec<_> = (0..N).map(|i| call_record(i, 1)).collect();
    fx.produce_records(&records);
    let group = fx.kafka.unique_group("stuck");
    let shutdown = Shutdown::new();
    let _stop_shutdown = shutdown.trigger_on_drop();
    let mut config = fx.processor_config(&group);
    // a stable id: the restarted instance fences the stuck one's transaction at once
    config.instance_id = Some("stuck".into());
    // a call running twice this (4 s) is taken for one that will not return
    config.commit_timeout_secs = 2;
    // the hang ends after 8 s (a real one never does): the instance must have given up on
    // it before, and when the thread wakes up its transaction has been fenced
    let stuck = tokio::time::timeout(
        Duration::from_secs(30),
        run_processor_with_faults(
            config.clone(),
            fx.factory.clone(),
            shutdown.clone(),
            Arc::default(),
            ProcessorFaults {
                hang_in_commit: Some(Duration::from_secs(8)),
                ..ProcessorFaults::default()
            },
        ),
    )
    .await
    .expect("the stuck instance was not detected within 30 s");
    match stuck {
        Err(callsync_processors::ProcessorError::Stuck { step, secs }) => {
            assert_eq!(step, "commit_transaction");
            assert!((4..8).contains(&secs), "{secs}");
        }
        other => panic!("expected the instance to stop as stuck: {other:?}"),
    }

    // the restarted instance (same transactional id) fences the stuck transaction and takes
    // every record from the committed offsets
    let counters = Arc::new(ProcessorCounters::default());
    let restarted = Shutdown::new();
    let _stop_restarted = restarted.trigger_on_drop();
    let mut run = Some(tokio::spawn(run_processor_with_faults(
        config,
        fx.factory.clone(),
        restarted.clone(),
        counters.clone(),
        ProcessorFaults::default(),
    )));
    wait_until(
        &mut run,
        &counters,
        "processing after the restart",
        Duration::from_secs(60),
        |r| r.consumed >= N,
    )
    .await;
    let report = stop(&mut run, &restarted).await;
    assert_eq!(report.emitted, N);
    assert_eq!(fx.committed_total(&group), N as i64);
    assert_calls_hold_each_key(&fx, N, 1);
}

/// The TTL sweep of a member that lost its partitions (evicted while it did not poll, not yet
/// told) is fenced like its batches: the sweep's transaction carries the group's offsets, the
/// stale generation is refused, and no tombstone of it becomes visible. On the code before the
/// fix the sweep's transaction held no offsets and committed its tombstones (this test failed:
/// `expired` = 1000 and 1000 tombstones in the changelog).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ttl_sweep_of_a_member_that_lost_its_partitions_writes_no_tombstone() {
    log_to_stderr();
    let Some(kafka) = callsync_testkit::real_kafka() else {
        return;
    };
    let fx = Fixture::new(kafka, 2).await;
    const N: u64 = 1_000;
    let first: Vec<_> = (0..N).map(|i| call_record(i, 1)).collect();
    let second: Vec<_> = (N..2 * N).map(|i| call_record(i, 1)).collect();
    fx.produce_records(&first);

    // the group evicts a member that does not poll for 6 s (the broker's minimum session)
    let mut settings = fx.factory.settings().clone();
    for (k, v) in [
        ("session.timeout.ms", "6000"),
        ("max.poll.interval.ms", "6000"),
    ] {
        settings.client_properties.insert(k.into(), v.into());
    }
    let factory = KafkaClientFactory::new(settings);
    let group = fx.kafka.unique_group("proc");
    let counters = Arc::new(ProcessorCounters::default());
    let shutdown = Shutdown::new();
    let _stop_shutdown = shutdown.trigger_on_drop();
    let mut config = fx.processor_config(&group);
    // the first feed's entries expire during the stall, and a sweep is due right after it
    config.dedup_ttl_secs = 4;
    config.ttl_sweep_interval_secs = 1;
    // the second feed's batch is still open when the stall begins
    config.batch_max_records = 50_000;
    config.batch_max_time_ms = 2_000;
    let mut run = Some(tokio::spawn(run_processor_with_faults(
        config,
        factory,
        shutdown.clone(),
        counters.clone(),
        ProcessorFaults {
            stall_after_records: Some((N + 200, Duration::from_millis(9_000))),
            ..ProcessorFaults::default()
        },
    )));
    wait_until(
        &mut run,
        &counters,
        "first feed committed",
        Duration::from_secs(60),
        |r| r.consumed >= N,
    )
    .await;
    fx.produce_records(&second);
    // stop while it stalls: after the stall it only ticks (batch, sweep) and then stops, so
    // it never rejoins the group and sweeps as a member again
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = stop(&mut run, &shutdown).await;

    assert!(
        report.batches_aborted >= 2,
        "the batch open through the stall and the sweep after it were both refused: {report:?}"
    );
    assert_eq!(report.expired, 0, "no tombstone committed: {report:?}");
    let tombstones = fx
        .read_topic(names::DEDUP_STATE)
        .iter()
        .filter(|r| r.value.is_none())
        .count();
    assert_eq!(
        tombstones, 0,
        "tombstones written by a member that had lost its partitions"
    );
}
