//! `pipeline`: three figures.
//!
//! 1. Records through calls.raw -> processor -> calls -> sink -> Postgres (in this process,
//!    `--records`), against the floor cost of merely consuming the same records from Kafka.
//! 2. A backfill of `--calls` calls (default 1M) through one `callsync run` process with
//!    every role, against the simulator, the real broker and Postgres: records/s until every
//!    call is in Postgres, and that process's peak RSS (`VmHWM` from /proc, so the
//!    benchmark's own clients are not counted).
//! 3. The same process started again on the same topics: its peak RSS until its processor has
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
use crate::{connector, services};

pub async fn run(records: usize, calls: u64) -> anyhow::Result<BenchOutcome> {
    let bootstrap = services::kafka_bootstrap()?;
    let db = services::database().await?;
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
        let (rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM calls")
            .fetch_one(&db.pool)
            .await?;
        if rows as usize >= records {
            break;
        }
        if processor.is_finished() || sink.is_finished() || Instant::now() > deadline {
            shutdown.trigger();
            anyhow::bail!("pipeline stopped or timed out at {rows} of {records} rows");
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

    let all = connector::backfill_through_process(calls, connector::Roles::All).await?;
    let all_rate = all.calls as f64 / all.secs.max(1e-9);
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
                target: "reported".into(),
                measured: format!("{all_rate:.0} calls/s ({:.0} s)", all.secs),
                baseline: "-".into(),
                ratio: None,
                met: None,
            },
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
