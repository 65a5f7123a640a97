//! `pipeline`: five figures.
//!
//! 1. Records through calls.raw -> processor -> calls -> sink -> Postgres (in this process,
//!    `--records`), against the floor cost of merely consuming the same records from Kafka.
//! 2. A backfill of `--calls` calls (default 1M) through one `callsync run` process with
//!    every role, against the simulator, the real broker and Postgres: records/s until every
//!    call is in Postgres, and that process's peak RSS (`VmHWM` from /proc, so the
//!    benchmark's own clients are not counted).
//! 3. The CPU that backfill cost, per 1,000 calls and per process (callsync, the broker, the
//!    benchmark's own Postgres cluster, the simulator in this process), from /proc: which part
//!    of the machine's budget is ours.
//! 4. The same process started again on the same topics: its peak RSS until its processor has
//!    restored the dedup state of the whole backfill (the restore's buffers and the full state
//!    together, which a restart of a loaded instance meets).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use callsync_processors::ProcessorConfig;
use callsync_runtime::{
    ensure_catalogue, names, CatalogueOptions, Isolation, KafkaClientFactory, KafkaSettings,
    Shutdown,
};
use callsync_sinks::{CallStore, PgStore, SinkConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::json;

use crate::report::{BenchOutcome, Figure};
use crate::services::OwnPostgres;
use crate::{connector, services, sink_drain};

/// The all-roles backfill rate that the target doubles (its run: docs/benchmark-history.md).
const BACKFILL_BEFORE: f64 = 6339.0;

pub async fn run(records: usize, calls: u64) -> anyhow::Result<BenchOutcome> {
    let bootstrap = services::kafka_bootstrap()?;
    // a cluster of the benchmark's own, so that all of Postgres's CPU is the pipeline's
    let postgres = OwnPostgres::start().await?;
    let db = postgres.database().await?;
    let mut settings = KafkaSettings::plaintext(&bootstrap);
    settings.topic_prefix = format!("bench-pipeline-{}.", uuid::Uuid::new_v4().simple());
    let factory = KafkaClientFactory::new(settings.clone());
    let options = CatalogueOptions {
        call_partitions: 4,
        calls_retention_days: 1,
    };
    ensure_catalogue(&factory, &options, Duration::from_secs(30)).await?;

    let raw_topic = settings.topic(names::CALLS_RAW);
    crate::sink_role::produce_calls(&factory, &raw_topic, records)?;

    // baseline: a plain read_committed consumer draining the same records
    let baseline_secs = drain_with_plain_consumer(&factory, &raw_topic, records)?;

    let shutdown = Shutdown::new();
    let store = Arc::new(
        PgStore::connect(&db.url, 8, callsync_sinks::pg_store::DEFAULT_COPY_THRESHOLD).await?,
    );
    store.migrate().await?;
    let sink_config: SinkConfig = serde_json::from_value(json!({ "database_url": db.url }))?;
    let started = Instant::now();
    let processor = tokio::spawn(callsync_processors::run_processor(
        ProcessorConfig::default(),
        factory.clone(),
        shutdown.clone(),
    ));
    let sink_store: Arc<dyn CallStore> = store.clone();
    let sink = tokio::spawn(callsync_sinks::run_sink(
        sink_config,
        factory.clone(),
        sink_store,
        shutdown.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        // the statistics first (cheap), then one exact count to confirm
        if sink_drain::rows_written(&db.pool).await? >= records as u64
            && sink_drain::count_rows(&db.pool).await? >= records
        {
            break;
        }
        if processor.is_finished() || sink.is_finished() || Instant::now() > deadline {
            shutdown.trigger();
            anyhow::bail!("pipeline stopped or timed out before {records} rows");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pipeline_secs = started.elapsed().as_secs_f64();
    shutdown.trigger();
    processor.await.context("processor task")??;
    sink.await.context("sink task")??;

    let rate = records as f64 / pipeline_secs;
    let baseline_rate = records as f64 / baseline_secs;
    drop(store);
    // on the error paths above, dropping the guard drops the database
    db.drop_database().await;

    let all =
        connector::backfill_through_process(calls, connector::Roles::All, Some(&postgres)).await?;
    let all_rate = all.calls as f64 / all.secs.max(1e-9);
    let cpu = &all.cpu;
    let per_1000 = |s: f64| s * 1000.0 / (all.calls.max(1) as f64);
    let cpu_figure = Figure {
        benchmark: "pipeline".into(),
        name: format!(
            "CPU seconds per 1,000 calls end to end through the {}-call backfill (all \
             callsync processes, the broker, Postgres and the simulated provider, from /proc; \
             ratio: callsync's share)",
            all.calls
        ),
        target: "reported".into(),
        measured: format!(
            "{:.2} CPU s: callsync {:.2}, broker {:.2}, Postgres {:.2}, simulator + driver {:.2}",
            per_1000(cpu.total()),
            per_1000(cpu.callsync),
            per_1000(cpu.broker.unwrap_or(0.0)),
            per_1000(cpu.postgres.unwrap_or(0.0)),
            per_1000(cpu.simulator_and_driver),
        ),
        baseline: format!(
            "{:.0} s x {} cores = {:.0} CPU s available; {}",
            all.secs,
            cpu.conditions.cores,
            all.secs * cpu.conditions.cores as f64,
            cpu.conditions.summary()
        ),
        ratio: Some(cpu.callsync / cpu.total().max(1e-9)),
        met: None,
    };
    let rss_mib = all.peak_rss_bytes as f64 / 1024.0 / 1024.0;
    let restart_mib = all
        .restart
        .map(|r| r.peak_rss_bytes as f64 / 1024.0 / 1024.0);
    let restart_figure = Figure {
        benchmark: "pipeline".into(),
        name: format!(
            "peak RSS of `callsync run` (all roles) restarted after the backfill, restoring {} keys of dedup state",
            all.restart.map_or(0, |r| r.keys)
        ),
        target: "< 256 MiB (1M-call backfill)".into(),
        measured: match (restart_mib, all.restart) {
            (Some(mib), Some(r)) => format!("{mib:.0} MiB (restored in {:.1} s)", r.secs),
            _ => "-".into(),
        },
        baseline: "-".into(),
        ratio: None,
        met: restart_mib.map(|mib| mib < 256.0 && all.calls >= connector::DEFAULT_MEMORY_CALLS),
    };
    Ok(BenchOutcome {
        name: "pipeline".into(),
        figures: vec![
            Figure {
                benchmark: "pipeline".into(),
                name: format!("calls.raw -> Postgres records/s ({records} records)"),
                target: "as close to a plain Kafka read as possible".into(),
                measured: format!("{rate:.0}/s"),
                baseline: format!("{baseline_rate:.0}/s plain read_committed consume"),
                ratio: Some(rate / baseline_rate),
                met: None,
            },
            Figure {
                benchmark: "pipeline".into(),
                name: format!(
                    "`callsync run` (all roles): {}-call backfill, provider to Postgres",
                    all.calls
                ),
                target: format!(">= 2 x {BACKFILL_BEFORE:.0} calls/s"),
                measured: format!("{all_rate:.0} calls/s ({:.0} s)", all.secs),
                baseline: format!("{BACKFILL_BEFORE:.0} calls/s"),
                ratio: Some(all_rate / BACKFILL_BEFORE),
                met: Some(all_rate >= 2.0 * BACKFILL_BEFORE),
            },
            cpu_figure,
            Figure {
                benchmark: "pipeline".into(),
                name: format!(
                    "peak RSS of `callsync run` (all roles) through a {}-call backfill",
                    all.calls
                ),
                target: "< 256 MiB (1M-call backfill)".into(),
                measured: format!("{rss_mib:.0} MiB"),
                baseline: "-".into(),
                ratio: None,
                met: Some(rss_mib < 256.0 && all.calls >= connector::DEFAULT_MEMORY_CALLS),
            },
            restart_figure,
        ],
        json: json!({
            "records": records,
            "pipeline_secs": pipeline_secs,
            "pipeline_records_per_sec": rate,
            "plain_consume_records_per_sec": baseline_rate,
            "ratio": rate / baseline_rate,
            "all_roles_calls": all.calls,
            "all_roles_secs": all.secs,
            "all_roles_calls_per_sec": all_rate,
            "all_roles_rows": all.rows,
            "all_roles_peak_rss_bytes": all.peak_rss_bytes,
            "restart_restored_keys": all.restart.map(|r| r.keys),
            "restart_restore_secs": all.restart.map(|r| r.secs),
            "restart_peak_rss_bytes": all.restart.map(|r| r.peak_rss_bytes),
            "all_roles_cpu": &all.cpu,
            "all_roles_cpu_secs_per_1000_calls": per_1000(all.cpu.total()),
            "all_roles_callsync_cpu_share": all.cpu.callsync / all.cpu.total().max(1e-9),
        }),
        conditions: None,
    })
}

fn drain_with_plain_consumer(
    factory: &KafkaClientFactory,
    topic: &str,
    records: usize,
) -> anyhow::Result<f64> {
    let group = format!("bench-plain-{}", uuid::Uuid::new_v4().simple());
    let consumer: BaseConsumer = factory.create(
        "bench consumer",
        &factory.consumer_config(&group, Isolation::ReadCommitted),
    )?;
    consumer.subscribe(&[topic])?;
    let started = Instant::now();
    let mut seen = 0usize;
    let deadline = Instant::now() + Duration::from_secs(300);
    while seen < records {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => seen += 1,
            Some(Err(e)) => return Err(e).context("plain consume"),
            None if Instant::now() > deadline => {
                anyhow::bail!("plain consume timed out at {seen} of {records}")
            }
            None => {}
        }
    }
    Ok(started.elapsed().as_secs_f64())
}
