//! The processor's benchmark, for `cargo run --release -p callsync-bench -- processor`.
//!
//! [`bench_processor`] measures, on a real broker, side by side in one run:
//! - `pipeline_records_per_sec`: decode + validate + normalize + fingerprint + dedup verdict in
//!   memory, no Kafka (the CPU ceiling of one instance);
//! - `processor_records_per_sec`: the whole exactly-once loop, from `calls.raw` through
//!   validate + dedup + transactional produce (outputs, changelog, offsets) to commit;
//! - `produce_records_per_sec`: a plain idempotent producer writing the same input (the
//!   broker's own ceiling on this machine, for comparison);
//! - the restore of a changelog holding `restore_keys` keys, and the memory per key (the
//!   state's own estimate and the process's resident-memory growth).
//!
//! It creates its own topics under a unique prefix and deletes nothing (the broker is a
//! throwaway one).
//!
//! For experiments, `CALLSYNC_BENCH_PROCESSOR_PROPS="k=v;k=v"` passes librdkafka properties to
//! the processor's clients in step 3 (both its producer and its consumer).

use std::sync::Arc;
use std::time::{Duration, Instant};

use callsync_runtime::{names, send_waiting, KafkaClientFactory, KafkaSettings, Shutdown};
use callsync_schemas::{encode_to_vec, DedupEntry, WireFormat};
use chrono::Utc;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::codec::DedupEntryCodec;
use crate::config::ProcessorConfig;
use crate::counters::ProcessorCounters;
use crate::dedup::{restore_partitions, PartitionState, StagedChanges, StateKey};
use crate::pipeline::RecordPipeline;
use crate::processor::run_processor_with_counters;
use crate::synthetic::call_record;

/// What to measure.
#[derive(Debug, Clone)]
pub struct ProcessorBenchOptions {
    /// Input records for the end-to-end run; half are distinct calls, half repeat them.
    pub records: usize,
    /// Keys in the changelog of the restore measurement.
    pub restore_keys: usize,
    /// Partitions of the benchmark's topics.
    pub partitions: i32,
}

impl Default for ProcessorBenchOptions {
    fn default() -> Self {
        ProcessorBenchOptions {
            records: 1_000_000,
            restore_keys: 1_000_000,
            partitions: 4,
        }
    }
}

/// The figures, printable as one JSON line with [`ProcessorBenchResult::to_json`].
#[derive(Debug, Clone, Default)]
pub struct ProcessorBenchResult {
    pub records: usize,
    pub pipeline_records_per_sec: f64,
    pub produce_records_per_sec: f64,
    pub processor_records_per_sec: f64,
    pub processor_secs: f64,
    pub emitted: u64,
    pub duplicates: u64,
    pub batches: u64,
    /// Seconds of `processor_secs` spent closing batches (changelog, offsets, commit).
    pub commit_secs: f64,
    pub restore_keys: u64,
    pub restore_secs: f64,
    pub state_bytes_per_key_estimate: f64,
    pub state_bytes_per_key_rss: f64,
}

impl ProcessorBenchResult {
    pub fn to_json(&self) -> String {
        format!(
            concat!(
                "{{\"benchmark\":\"processor\",\"records\":{},\"pipeline_records_per_sec\":{:.0},",
                "\"produce_records_per_sec\":{:.0},\"processor_records_per_sec\":{:.0},\"processor_secs\":{:.3},",
                "\"emitted\":{},\"duplicates\":{},\"batches\":{},\"commit_secs\":{:.3},\"restore_keys\":{},\"restore_secs\":{:.3},",
                "\"state_bytes_per_key_estimate\":{:.1},\"state_bytes_per_key_rss\":{:.1},",
                "\"target_records_per_sec\":100000,\"target_restore_secs_1m\":5.0}}"
            ),
            self.records,
            self.pipeline_records_per_sec,
            self.produce_records_per_sec,
            self.processor_records_per_sec,
            self.processor_secs,
            self.emitted,
            self.duplicates,
            self.batches,
            self.commit_secs,
            self.restore_keys,
            self.restore_secs,
            self.state_bytes_per_key_estimate,
            self.state_bytes_per_key_rss,
        )
    }
}

/// The benchmark failed to run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("benchmark setup: {0}")]
    Setup(String),
    #[error("benchmark processor: {0}")]
    Processor(#[from] crate::ProcessorError),
    #[error("benchmark restore: {0}")]
    Restore(#[from] crate::dedup::RestoreError),
}

/// Records per second through decode + validate + normalize + fingerprint + dedup verdict in
/// memory (no Kafka), over `sample` records where record `i` is call `index(i)`, as the
/// processor does it: the version first, the full rules only for records that may be emitted.
pub fn measure_in_memory_pipeline(
    sample: usize,
    index: impl Fn(usize) -> u64,
) -> Result<f64, BenchError> {
    let config = ProcessorConfig::default();
    let mut pipeline =
        RecordPipeline::new(&config).map_err(|e| BenchError::Setup(e.to_string()))?;
    let inputs: Vec<(Vec<u8>, Vec<u8>)> = (0..sample)
        .map(|i| {
            let r = call_record(index(i), 1);
            let value = encode_to_vec(&r, WireFormat::SingleObject).unwrap_or_default();
            (r.key().into_string().into_bytes(), value)
        })
        .collect();
    let now = Utc::now();
    let state = PartitionState::new();
    let mut staged = StagedChanges::default();
    let t = Instant::now();
    for (key, value) in &inputs {
        let Ok(call) = pipeline.decode(Some(key), Some(value)) else {
            continue;
        };
        let key_str = StateKey::new(std::str::from_utf8(key).unwrap_or_default());
        if state
            .observe_version(
                &mut staged,
                &key_str,
                call.version(),
                || call.content_fingerprint(),
                0,
                i64::MAX,
            )
            .is_none()
        {
            if let Ok(accepted) = pipeline.accept(call, Some(key), now) {
                state.observe(
                    &mut staged,
                    &key_str,
                    accepted.fingerprint,
                    accepted.record.version,
                    0,
                    i64::MAX,
                );
            }
        }
    }
    Ok(sample as f64 / t.elapsed().as_secs_f64())
}

/// An experiment's override of a processor setting, from the environment.
fn env_number(name: &str) -> Result<Option<u64>, BenchError> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map(Some)
            .map_err(|e| BenchError::Setup(format!("{name}={v:?}: {e}"))),
        Err(_) => Ok(None),
    }
}

/// Run the processor benchmark against the broker at `bootstrap`.
pub async fn bench_processor(
    bootstrap: &str,
    options: ProcessorBenchOptions,
) -> Result<ProcessorBenchResult, BenchError> {
    let stamp = Utc::now().timestamp_micros();
    let mut settings = KafkaSettings::plaintext(bootstrap);
    settings.topic_prefix = format!("bench-{}-{stamp}.", std::process::id());
    let kafka = KafkaClientFactory::new(settings);
    create_topics(&kafka, options.partitions).await?;

    let mut result = ProcessorBenchResult {
        records: options.records,
        ..Default::default()
    };
    let distinct = options.records.div_ceil(2) as u64;
    let index = move |i: usize| (i as u64) % distinct;

    // 1. the in-memory pipeline
    // with the end-to-end run's share of duplicates: each call twice
    let sample = options.records.min(200_000);
    let sample_distinct = sample.div_ceil(2) as u64;
    result.pipeline_records_per_sec =
        measure_in_memory_pipeline(sample, move |i| (i as u64) % sample_distinct)?;

    // 2. plain produce of the input (also the processor's input)
    let input_topic = kafka.settings().topic(names::CALLS_RAW);
    let producer: BaseProducer = kafka
        .create("bench producer", &kafka.producer_config())
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let t = Instant::now();
    for i in 0..options.records {
        let r = call_record(index(i), 1);
        let key = r.key().into_string();
        let value = encode_to_vec(&r, WireFormat::SingleObject).unwrap_or_default();
        let record: BaseRecord<'_, str, [u8]> = BaseRecord::to(&input_topic)
            .key(key.as_str())
            .payload(value.as_slice());
        send_waiting(&producer, record)
            .map_err(|e| BenchError::Setup(format!("producing input: {e}")))?;
    }
    producer
        .flush(Duration::from_secs(120))
        .map_err(|e| BenchError::Setup(format!("flushing input: {e}")))?;
    result.produce_records_per_sec = options.records as f64 / t.elapsed().as_secs_f64();

    // 3. the processor, end to end
    let counters = Arc::new(ProcessorCounters::default());
    let shutdown = Shutdown::new();
    let config = ProcessorConfig {
        group_id: format!("bench-processor-{stamp}"),
        ..ProcessorConfig::default()
    };
    let mut config = config;
    if let Some(ms) = env_number("CALLSYNC_BENCH_PROCESSOR_BATCH_MS")? {
        config.batch_max_time_ms = ms;
    }
    if let Some(ms) = env_number("CALLSYNC_BENCH_PROCESSOR_CATCH_UP_MS")? {
        config.catch_up_batch_max_time_ms = ms;
    }
    if let Some(n) = env_number("CALLSYNC_BENCH_PROCESSOR_BATCH_RECORDS")? {
        config.batch_max_records = n as usize;
    }
    let mut processor_kafka = kafka.clone();
    if let Ok(props) = std::env::var("CALLSYNC_BENCH_PROCESSOR_PROPS") {
        let mut settings = kafka.settings().clone();
        for pair in props.split(';').filter(|p| !p.trim().is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| BenchError::Setup(format!("not k=v: {pair:?}")))?;
            settings
                .client_properties
                .insert(k.trim().to_string(), v.trim().to_string());
        }
        processor_kafka = KafkaClientFactory::new(settings);
    }
    let run = tokio::spawn(run_processor_with_counters(
        config,
        processor_kafka,
        shutdown.clone(),
        counters.clone(),
    ));
    let total = options.records as u64;
    let mut first_seen: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let consumed = counters.snapshot().consumed;
        if consumed > 0 && first_seen.is_none() {
            first_seen = Some(Instant::now());
        }
        if consumed >= total || Instant::now() > deadline || run.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = first_seen.map(|t| t.elapsed()).unwrap_or_default();
    shutdown.trigger();
    let report = run
        .await
        .map_err(|e| BenchError::Setup(format!("processor task: {e}")))??;
    // the first batch's own time is not seen by `first_seen`: add one batch's share
    let batches = report.batches_committed.max(1);
    let secs = elapsed.as_secs_f64() * batches as f64 / (batches - 1).max(1) as f64;
    result.processor_secs = secs;
    result.processor_records_per_sec = report.consumed as f64 / secs.max(1e-9);
    result.emitted = report.emitted;
    result.duplicates = report.duplicates;
    result.batches = report.batches_committed;
    result.commit_secs = report.commit_micros as f64 / 1e6;

    // 4. restore of `restore_keys` keys
    let state_topic = kafka.settings().topic("restore-bench.dedup-state");
    create_topic(&kafka, &state_topic, options.partitions, true).await?;
    let codec = DedupEntryCodec::new();
    let mut value = Vec::new();
    let now = Utc::now();
    for i in 0..options.restore_keys {
        let key = call_record(i as u64, 1).key().into_string();
        let entry = DedupEntry {
            fingerprint: u128::from(i as u64) << 64 | 0xfeed,
            version: 1,
            seen_at: now,
        };
        codec
            .encode(&entry, &mut value)
            .map_err(|e| BenchError::Setup(e.to_string()))?;
        let partition = (i % options.partitions as usize) as i32;
        let record: BaseRecord<'_, str, [u8]> = BaseRecord::to(&state_topic)
            .partition(partition)
            .key(key.as_str())
            .payload(value.as_slice());
        send_waiting(&producer, record)
            .map_err(|e| BenchError::Setup(format!("producing changelog: {e}")))?;
    }
    producer
        .flush(Duration::from_secs(120))
        .map_err(|e| BenchError::Setup(format!("flushing changelog: {e}")))?;
    let partitions: Vec<i32> = (0..options.partitions).collect();
    let rss_before = resident_bytes();
    let restore_kafka = kafka.clone();
    let (states, stats) = tokio::task::spawn_blocking(move || {
        restore_partitions(
            &restore_kafka,
            &state_topic,
            &partitions,
            Duration::from_secs(300),
        )
    })
    .await
    .map_err(|e| BenchError::Setup(format!("restore task: {e}")))??;
    let rss_after = resident_bytes();
    result.restore_keys = stats.keys;
    result.restore_secs = stats.elapsed.as_secs_f64();
    let keys = stats.keys.max(1) as f64;
    result.state_bytes_per_key_estimate = states
        .values()
        .map(|s| s.approx_heap_bytes())
        .sum::<usize>() as f64
        / keys;
    result.state_bytes_per_key_rss = rss_after.saturating_sub(rss_before) as f64 / keys;
    drop(states);
    Ok(result)
}

async fn create_topics(kafka: &KafkaClientFactory, partitions: i32) -> Result<(), BenchError> {
    for base in [names::CALLS_RAW, names::CALLS, names::CALLS_DLQ] {
        create_topic(kafka, &kafka.settings().topic(base), partitions, false).await?;
    }
    create_topic(
        kafka,
        &kafka.settings().topic(names::DEDUP_STATE),
        partitions,
        true,
    )
    .await
}

async fn create_topic(
    kafka: &KafkaClientFactory,
    name: &str,
    partitions: i32,
    compact: bool,
) -> Result<(), BenchError> {
    let admin: AdminClient<DefaultClientContext> = kafka
        .admin()
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    if compact {
        topic = topic.set("cleanup.policy", "compact");
    }
    let results = admin
        .create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .map_err(|e| BenchError::Setup(format!("creating {name}: {e}")))?;
    for r in results {
        if let Err((topic, code)) = r {
            return Err(BenchError::Setup(format!("creating {topic}: {code}")));
        }
    }
    // wait for leaders
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = admin
            .inner()
            .fetch_metadata(Some(name), Duration::from_secs(5))
            .ok()
            .and_then(|m| {
                m.topics().first().map(|t| {
                    t.error().is_none()
                        && t.partitions().len() == partitions as usize
                        && t.partitions().iter().all(|p| p.leader() >= 0)
                })
            })
            .unwrap_or(false);
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Setup(format!(
                "topic {name} has no leaders after 30 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Resident set size of this process in bytes (Linux; 0 elsewhere).
fn resident_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}
