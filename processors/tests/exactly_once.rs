//! Exactly-once processing on the real broker: the same records fed twice, two instances
//! with a rebalance mid-stream, and a fenced zombie.
//!
//! Skipped without `KAFKA_BOOTSTRAP` (fails under `CI=true`).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use callsync_processors::synthetic::{call_record, changed_call_record};
use callsync_processors::{run_processor_with_counters, ProcessorCounters, ProcessorError};
use callsync_runtime::{names, Shutdown};
use common::{count_by_key, Fixture};

fn wait_for_consumed(counters: &ProcessorCounters, expected: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while counters.snapshot().consumed < expected {
        assert!(
            Instant::now() < deadline,
            "processor consumed {} of {expected} within {timeout:?}",
            counters.snapshot().consumed
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_records_fed_twice_come_out_once_and_changes_pass() {
    let Some(kafka) = callsync_testkit::real_kafka() else {
        return;
    };
    let fx = Fixture::new(kafka, 4).await;
    const N: u64 = 100_000;
    let first: Vec<_> = (0..N).map(|i| call_record(i, 1_000)).collect();
    // 1000 corrections (newer, different content), 1000 stale versions, 1000 re-polls with a
    // newer version but the same content
    let changed: Vec<_> = (0..1_000).map(|i| changed_call_record(i, 2_000)).collect();
    let stale: Vec<_> = (1_000..2_000).map(|i| call_record(i, 500)).collect();
    let unchanged: Vec<_> = (2_000..3_000).map(|i| call_record(i, 3_000)).collect();

    let t0 = Instant::now();
    fx.produce_records(&first);
    fx.produce_records(&first);
    fx.produce_records(changed.iter().chain(&stale).chain(&unchanged));
    let total = 2 * N + 3_000;
    eprintln!("produced {total} records in {:?}", t0.elapsed());

    let group = fx.kafka.unique_group("proc");
    let counters = Arc::new(ProcessorCounters::default());
    let shutdown = Shutdown::new();
    // a failing assertion must stop the stage, or the runtime waits for it forever
    let _stop_shutdown = shutdown.trigger_on_drop();
    let t1 = Instant::now();
    let run = tokio::spawn(run_processor_with_counters(
        fx.processor_config(&group),
        fx.factory.clone(),
        shutdown.clone(),
        counters.clone(),
    ));
    let watch = counters.clone();
    tokio::task::spawn_blocking(move || wait_for_consumed(&watch, total, Duration::from_secs(120)))
        .await
        .unwrap();
    eprintln!("processed {total} records in {:?}", t1.elapsed());
    shutdown.trigger();
    let report = run.await.unwrap().expect("processor");
    eprintln!("{report:?}");

    assert_eq!(report.consumed, total);
    assert_eq!(
        report.emitted,
        N + 1_000,
        "every key once, plus the 1000 corrections"
    );
    assert_eq!(report.duplicates, N);
    assert_eq!(report.stale, 1_000);
    assert_eq!(report.unchanged, 1_000);
    assert_eq!(report.dead_lettered(), 0);

    let calls = fx.read_topic(names::CALLS);
    assert_eq!(calls.len() as u64, N + 1_000);
    let counts = count_by_key(&calls);
    assert_eq!(counts.len() as u64, N);
    for i in 0..N {
        let key = call_record(i, 1).key().into_string();
        let expected = if i < 1_000 { 2 } else { 1 };
        assert_eq!(counts.get(&key), Some(&expected), "{key}");
    }
    // the correction follows the original, in its partition
    let versions: Vec<i64> = calls
        .iter()
        .filter(|r| r.key_str() == call_record(7, 1).key().into_string())
        .map(|r| r.record().version)
        .collect();
    assert_eq!(versions, [1_000, 2_000]);
    assert_eq!(fx.committed_total(&group), total as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_and_a_rebalance_mid_stream_lose_and_duplicate_nothing() {
    let Some(kafka) = callsync_testkit::real_kafka() else {
        return;
    };
    let fx = Fixture::new(kafka, 4).await;
    const N: u64 = 60_000;
    let records: Vec<_> = (0..N).map(|i| call_record(i, 10)).collect();
    fx.produce_records(&records);

    let group = fx.kafka.unique_group("proc");
    let mut config = fx.processor_config(&group);
    // small batches so the stream is still flowing when the second instance joins
    config.batch_max_records = 500;
    let counters_a = Arc::new(ProcessorCounters::default());
    let shutdown_a = Shutdown::new();
    // a failing assertion must stop the stage, or the runtime waits for it forever
    let _stop_shutdown_a = shutdown_a.trigger_on_drop();
    let run_a = tokio::spawn(run_processor_with_counters(
        config.clone(),
        fx.factory.clone(),
        shutdown_a.clone(),
        counters_a.clone(),
    ));
    let watch = counters_a.clone();
    tokio::task::spawn_blocking(move || wait_for_consumed(&watch, 5_000, Duration::from_secs(60)))
        .await
        .unwrap();

    // a second instance joins: partitions move mid-stream
    let counters_b = Arc::new(ProcessorCounters::default());
    let shutdown_b = Shutdown::new();
    // a failing assertion must stop the stage, or the runtime waits for it forever
    let _stop_shutdown_b = shutdown_b.trigger_on_drop();
    // the same config: each run has a transactional id of its own
    let config_b = config.clone();
    let run_b = tokio::spawn(run_processor_with_counters(
        config_b,
        fx.factory.clone(),
        shutdown_b.clone(),
        counters_b.clone(),
    ));
    // the same records again while both run: all duplicates
    let fx_ref = &fx;
    fx_ref.produce_records(&records);
    let total = 2 * N;

    // wait until b has taken partitions and worked, then a leaves: another rebalance
    let watch = counters_b.clone();
    tokio::task::spawn_blocking(move || wait_for_consumed(&watch, 1, Duration::from_secs(60)))
        .await
        .unwrap();
    shutdown_a.trigger();
    let report_a = run_a.await.unwrap().expect("instance a");
    let group_ref = group.clone();
    let fx_check = Fixture {
        kafka: fx.kafka.clone(),
        factory: fx.factory.clone(),
        partitions: fx.partitions,
    };
    tokio::task::spawn_blocking(move || {
        fx_check.wait_for_committed(&group_ref, total as i64, Duration::from_secs(120))
    })
    .await
    .unwrap();
    shutdown_b.trigger();
    let report_b = run_b.await.unwrap().expect("instance b");
    eprintln!("a: {report_a:?}\nb: {report_b:?}");

    assert!(
        report_a.consumed > 0 && report_b.consumed > 0,
        "both instances worked"
    );
    assert!(
        report_b.keys_restored > 0,
        "b restored the state a had written"
    );
    assert_eq!(report_a.consumed + report_b.consumed, total);
    assert_eq!(report_a.emitted + report_b.emitted, N);
    assert_eq!(report_a.duplicates + report_b.duplicates, N);

    let calls = fx.read_topic(names::CALLS);
    let counts = count_by_key(&calls);
    assert_eq!(calls.len() as u64, N, "no duplicates");
    assert_eq!(counts.len() as u64, N, "no gaps");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_instance_stops_without_writing() {
    let Some(kafka) = callsync_testkit::real_kafka() else {
        return;
    };
    let fx = Fixture::new(kafka, 2).await;
    let group = fx.kafka.unique_group("proc");
    let mut config = fx.processor_config(&group);
    // a stable id (static membership), so another producer can take it over
    config.instance_id = Some("zombie".into());
    fx.produce_records(&(0..1_000).map(|i| call_record(i, 1)).collect::<Vec<_>>());

    let counters = Arc::new(ProcessorCounters::default());
    let shutdown = Shutdown::new();
    // stops the instance if the test fails before it was fenced
    let _stop_shutdown = shutdown.trigger_on_drop();
    let run = tokio::spawn(run_processor_with_counters(
        config.clone(),
        fx.factory.clone(),
        shutdown.clone(),
        counters.clone(),
    ));
    let watch = counters.clone();
    tokio::task::spawn_blocking(move || wait_for_consumed(&watch, 1_000, Duration::from_secs(60)))
        .await
        .unwrap();

    // a new producer with the same transactional id fences the running instance
    let factory = fx.factory.clone();
    let transactional_id = config.transactional_id(fx.prefix()).to_string();
    let _usurper = tokio::task::spawn_blocking(move || {
        factory
            .transactional_producer(&transactional_id, Duration::from_secs(30))
            .expect("usurper")
    })
    .await
    .unwrap();
    let emitted_before = fx.read_topic(names::CALLS).len();
    // more input: the zombie's next transaction must fail
    fx.produce_records(
        &(1_000..2_000)
            .map(|i| call_record(i, 1))
            .collect::<Vec<_>>(),
    );
    let result = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the fenced instance stops")
        .unwrap();
    assert!(
        matches!(result, Err(ProcessorError::Fenced { .. })),
        "{result:?}"
    );
    assert_eq!(
        fx.read_topic(names::CALLS).len(),
        emitted_before,
        "nothing written after the fence"
    );
    assert_eq!(emitted_before, 1_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_record_is_committed_once_the_input_is_idle_not_after_batch_max_time() {
    let Some(kafka) = callsync_testkit::real_kafka() else {
        return;
    };
    let fx = Fixture::new(kafka, 1).await;
    let group = fx.kafka.unique_group("proc");
    let mut config = fx.processor_config(&group);
    let batch_max_time = Duration::from_secs(10);
    config.batch_max_time_ms = batch_max_time.as_millis() as u64;
    let counters = Arc::new(ProcessorCounters::default());
    let shutdown = Shutdown::new();
    // a failing assertion must stop the stage, or the runtime waits for it forever
    let _stop_shutdown = shutdown.trigger_on_drop();
    let run = tokio::spawn(run_processor_with_counters(
        config,
        fx.factory.clone(),
        shutdown.clone(),
        counters.clone(),
    ));
    // joined the group and restored its partition: from here on only the batch timing counts
    let deadline = Instant::now() + Duration::from_secs(60);
    while counters.snapshot().partitions_restored < 1 {
        assert!(
            Instant::now() < deadline,
            "the partition was never assigned"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let sent = Instant::now();
    fx.produce_records(&[call_record(1, 1)]);
    let mut calls = Vec::new();
    while calls.is_empty() {
        assert!(
            sent.elapsed() < batch_max_time / 2,
            "the record was not committed within {:?} (batch_max_time {batch_max_time:?})",
            sent.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        calls = fx.read_topic(names::CALLS);
    }
    let latency = sent.elapsed();
    eprintln!("one record from calls.raw to calls (read_committed) in {latency:?}");
    shutdown.trigger();
    let report = run.await.unwrap().expect("processor");
    assert_eq!(calls.len(), 1);
    assert_eq!(report.emitted, 1);
}
