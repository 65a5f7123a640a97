//! The sink role as production runs it: the real `callsync run --roles sink` process
//! draining a `calls` topic into Postgres. Measures the drain rate including Kafka (steady
//! state, from the first committed batch to the last) and that process's own peak RSS
//! (VmHWM from /proc/<pid>/status), so the benchmark's producer is not counted.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use callsync_processors::synthetic::call_record;
use callsync_runtime::{
    ensure_catalogue, names, send_waiting, CatalogueOptions, KafkaClientFactory, KafkaSettings,
};
use callsync_schemas::{encode_to_vec, WireFormat};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde::Serialize;

use crate::services::CallsyncProcess;

/// What one sink-role run measured.
#[derive(Debug, Clone, Serialize)]
pub struct SinkRoleDrain {
    pub records: usize,
    pub partitions: i32,
    /// rows committed after the first batch, per second until the last
    pub steady_rows_per_sec: f64,
    /// from process spawn to the last commit, start-up and group join included
    pub total_seconds: f64,
    pub peak_rss_bytes: u64,
}

/// Produce `records` synthetic calls (one version each) to `topic`, as the processor would.
pub fn produce_calls(
    factory: &KafkaClientFactory,
    topic: &str,
    records: usize,
) -> anyhow::Result<()> {
    let producer: BaseProducer = factory.create("bench producer", &factory.producer_config())?;
    for i in 0..records {
        let record = call_record(i as u64, 1);
        let key = record.key().into_string();
        let value = encode_to_vec(&record, WireFormat::SingleObject)?;
        let record = BaseRecord::to(topic)
            .key(key.as_str())
            .payload(value.as_slice());
        send_waiting(&producer, record).with_context(|| format!("producing to {topic}"))?;
    }
    producer
        .flush(Duration::from_secs(60))
        .with_context(|| format!("flushing the records for {topic}"))?;
    Ok(())
}

fn write_config(
    path: &Path,
    bootstrap: &str,
    prefix: &str,
    partitions: i32,
    database_url: &str,
    group: &str,
) -> anyhow::Result<()> {
    let toml = format!(
        "[kafka]\nbootstrap_servers = {bootstrap:?}\ntopic_prefix = {prefix:?}\n\n\
         [topics]\ncall_partitions = {partitions}\n\n\
         [sink]\ndatabase_url = {database_url:?}\ngroup = {group:?}\n"
    );
    std::fs::write(path, toml).with_context(|| format!("writing {}", path.display()))
}

/// Fill a fresh `calls` topic with `records` calls, then run the sink role process until
/// Postgres holds all of them (its offsets in `callsync_offsets` reach the end).
pub async fn drain(
    database_url: &str,
    pool: &sqlx::PgPool,
    records: usize,
    partitions: i32,
) -> anyhow::Result<SinkRoleDrain> {
    let bootstrap = crate::services::kafka_bootstrap()?;
    let mut settings = KafkaSettings::plaintext(&bootstrap);
    settings.topic_prefix = format!("bench-sink-{}.", uuid::Uuid::new_v4().simple());
    let factory = KafkaClientFactory::new(settings.clone());
    let options = CatalogueOptions {
        call_partitions: partitions,
        calls_retention_days: 1,
    };
    ensure_catalogue(&factory, &options, Duration::from_secs(30)).await?;
    let topic = settings.topic(names::CALLS);
    produce_calls(&factory, &topic, records)?;

    let work = tempfile::tempdir()?;
    let config = work.path().join("sink.toml");
    let group = format!("{}callsync-sink", settings.topic_prefix);
    write_config(
        &config,
        &bootstrap,
        &settings.topic_prefix,
        partitions,
        database_url,
        &group,
    )?;
    let spawned = Instant::now();
    let mut sink = CallsyncProcess::spawn(
        &config,
        &["run", "--roles", "sink"],
        work.path().join("sink.log"),
    )?;

    let want = records as i64;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first: Option<(Instant, i64)> = None;
    let done_at = loop {
        let (stored,): (Option<i64>,) = sqlx::query_as(
            "SELECT sum(next_offset)::bigint FROM callsync_offsets WHERE consumer_group = $1",
        )
        .bind(&group)
        .fetch_one(pool)
        .await
        .or_else(|e| match &e {
            // the sink creates the table at start; until then nothing is stored
            sqlx::Error::Database(d) if d.code().as_deref() == Some("42P01") => Ok((None,)),
            _ => Err(e),
        })
        .context("reading the sink's offsets")?;
        let stored = stored.unwrap_or(0);
        if stored > 0 && first.is_none() {
            first = Some((Instant::now(), stored));
        }
        if stored >= want {
            break Instant::now();
        }
        sink.check_running()?;
        if Instant::now() > deadline {
            bail!("the sink process stalled at {stored} of {want} rows");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let peak_rss = sink.peak_rss_bytes();
    // SIGTERM: the role drains and exits cleanly
    sink.terminate(Duration::from_secs(30))?;
    let (first_at, first_rows) = first.context("no batch was ever committed")?;
    let steady_secs = done_at.duration_since(first_at).as_secs_f64().max(1e-3);
    Ok(SinkRoleDrain {
        records,
        partitions,
        steady_rows_per_sec: (want - first_rows) as f64 / steady_secs,
        total_seconds: done_at.duration_since(spawned).as_secs_f64(),
        peak_rss_bytes: peak_rss,
    })
}
