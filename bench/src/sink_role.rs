//! The sink role as production runs it: the real `callsync run --roles sink` process draining
//! a `calls` topic into Postgres, measured like every other method of the sink benchmark
//! ([`crate::sink_drain`]): its own CPU and peak RSS (from /proc, so the benchmark's clients
//! are not counted), Postgres's and the broker's CPU, and the rate from its first committed
//! batch to its last row.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use callsync_processors::synthetic::call_record;
use callsync_runtime::{send_waiting, KafkaClientFactory};
use callsync_schemas::{encode_to_vec, CallRecord, WireFormat};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::services::BenchProcess;
use crate::sink_drain::{coordinates, DrainWatch, LandedKeys, MethodFigures, Servers};

/// Produce `records` synthetic calls (one version each) to `topic`, partitioned by key as the
/// processor would.
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

/// Produce `calls` as the processor writes them (Avro, keyed), call `i` to partition
/// `i % partitions`: the same coordinates as the other methods' rows.
pub fn produce_partitioned(
    factory: &KafkaClientFactory,
    topic: &str,
    calls: &[CallRecord],
    partitions: i32,
) -> anyhow::Result<()> {
    let producer: BaseProducer = factory.create("bench producer", &factory.producer_config())?;
    for (i, call) in calls.iter().enumerate() {
        let key = call.key().into_string();
        let value = encode_to_vec(call, WireFormat::SingleObject)?;
        let record = BaseRecord::to(topic)
            .partition(coordinates(i, partitions).0)
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

/// Runs the sink role process from an empty `calls` table until every call of the `calls`
/// topic under `prefix` is in it.
pub async fn drain(
    pool: &sqlx::PgPool,
    database_url: &str,
    bootstrap: &str,
    prefix: &str,
    partitions: i32,
    keys: &LandedKeys,
    servers: &Servers,
) -> anyhow::Result<MethodFigures> {
    let work = tempfile::tempdir()?;
    let config = work.path().join("sink.toml");
    let group = format!("{prefix}callsync-sink");
    write_config(&config, bootstrap, prefix, partitions, database_url, &group)?;
    let watch = DrainWatch::start("callsync sink role", servers);
    let started = Instant::now();
    let mut sink = BenchProcess::spawn(
        &config,
        &["run", "--roles", "sink"],
        work.path().join("sink.log"),
    )?;
    let figures = watch
        .until_landed(pool, keys, &mut sink, started)
        .await
        .context("the sink role's drain")?;
    // SIGTERM: the role drains and exits cleanly
    sink.terminate(Duration::from_secs(30))?;
    Ok(figures)
}
