//! The sink loop: read `calls` (read_committed), batch, upsert with the
//! offsets in one database transaction, then commit the offsets to Kafka.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use callsync_runtime::metrics::{
    END_TO_END_SECONDS, RECORDS_TOTAL, SINK_BATCH_ROWS, SINK_BATCH_SECONDS,
};
use callsync_runtime::topics::names;
use callsync_runtime::{ClientError, Isolation, KafkaClientFactory, Shutdown};
use callsync_schemas::CallRecord;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::batch::{BatchLimits, SinkBatch, SourceRecord};
use crate::config::SinkConfig;
use crate::consumer::{
    poll_until_stopped, send_command, PollerCommand, PollerEvent, SeekBoard, SinkConsumerContext,
};
use crate::dlq::{DeadLetterQueue, DlqError};
use crate::store::{ApplyOutcome, CallStore, OffsetAdvance, OffsetCommit, StoreError};

/// Turns a Kafka value into a record; the error text goes to the DLQ.
pub type CallDecoder = Arc<dyn Fn(&[u8]) -> Result<CallRecord, String> + Send + Sync>;

/// The default decoder: Avro single-object or Confluent framing with our schema.
pub fn avro_decoder() -> CallDecoder {
    Arc::new(|bytes: &[u8]| callsync_schemas::decode_call_record(bytes).map_err(|e| e.to_string()))
}

/// What a sink run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkReport {
    /// Kafka records read and accepted into batches.
    pub records_read: u64,
    /// Records skipped because the stored offset is past them (already applied).
    pub records_already_applied: u64,
    /// Records dropped because they were read before a seek the sink asked for
    /// (they are read again from the seek's offset).
    pub records_before_seek: u64,
    pub batches_committed: u64,
    pub rows_written: u64,
    /// Rows the version guard left alone (the table held a newer version).
    pub rows_stale: u64,
    pub dead_letters: u64,
    /// Batches (or parts) dropped because another instance had moved the offsets.
    pub offset_conflicts: u64,
    pub transient_retries: u64,
    /// Transient errors that were deadlocks (40P01); expected to stay 0.
    pub deadlocks: u64,
}

/// The sink stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("subscribing consumer group {group} to {topic}: {source}")]
    Subscribe {
        group: String,
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    DeadLetters(#[from] DlqError),
    #[error("giving up after {attempts} attempts at {operation}: {last}")]
    RetriesExhausted {
        operation: &'static str,
        attempts: u32,
        last: String,
    },
    #[error("the Kafka poller thread of the sink stopped unexpectedly")]
    PollerStopped,
    #[error("starting the Kafka poller thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Run the sink until `shutdown`, with the Avro decoder.
pub async fn run_sink(
    config: SinkConfig,
    kafka: KafkaClientFactory,
    store: Arc<dyn CallStore>,
    shutdown: Shutdown,
) -> Result<SinkReport, SinkError> {
    run_sink_with_decoder(config, kafka, store, shutdown, avro_decoder()).await
}

/// Run the sink until `shutdown` with a given decoder (e.g. one backed by a
/// schema registry).
pub async fn run_sink_with_decoder(
    config: SinkConfig,
    kafka: KafkaClientFactory,
    store: Arc<dyn CallStore>,
    shutdown: Shutdown,
    decoder: CallDecoder,
) -> Result<SinkReport, SinkError> {
    if config.migrate_on_start {
        store.migrate().await?;
    }
    let topic = config
        .topic
        .clone()
        .unwrap_or_else(|| kafka.settings().topic(names::CALLS));
    let dlq_topic = config
        .dlq_topic
        .clone()
        .unwrap_or_else(|| kafka.settings().topic(names::CALLS_DLQ));
    let dlq = DeadLetterQueue::new(kafka.producer()?, dlq_topic);

    let (event_tx, event_rx) = mpsc::channel(poller_channel_capacity(config.batch_rows));
    let (command_tx, command_rx) = sync_channel(1024);
    let seeks = Arc::new(SeekBoard::default());
    let closing = Arc::new(AtomicBool::new(false));
    let context = SinkConsumerContext::new(
        topic.clone(),
        event_tx.clone(),
        command_rx,
        seeks.clone(),
        closing,
        Duration::from_secs(30),
    );
    let mut consumer_config = kafka.consumer_config(&config.group, Isolation::ReadCommitted);
    if let Some(id) = &config.group_instance_id {
        consumer_config.set("group.instance.id", id);
    }
    let consumer: BaseConsumer<SinkConsumerContext> = consumer_config
        .create_with_context(context)
        .map_err(|source| ClientError {
            role: "sink consumer",
            bootstrap: kafka.settings().bootstrap_servers.clone(),
            source,
        })?;
    consumer
        .subscribe(&[&topic])
        .map_err(|source| SinkError::Subscribe {
            group: config.group.clone(),
            topic: topic.clone(),
            source,
        })?;
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let stop = stop.clone();
        let idle = config.idle_timing();
        std::thread::Builder::new()
            .name("callsync-sink-poller".into())
            .spawn(move || poll_until_stopped(consumer, event_tx, stop, idle))
            .map_err(SinkError::Thread)?
    };

    let limits = BatchLimits {
        max_records: config.batch_rows.max(1),
        max_bytes: config.batch_max_bytes.max(1),
        max_age: config.batch_max_age(),
    };
    let mut sink = SinkLoop {
        batch: SinkBatch::new(topic.clone(), limits),
        topic,
        config,
        store,
        dlq,
        decoder,
        commands: command_tx,
        seeks,
        shutdown,
        partitions: HashMap::new(),
        report: SinkReport::default(),
    };
    let result = sink.run(event_rx).await;
    stop.store(true, Ordering::SeqCst);
    let _ = tokio::task::spawn_blocking(move || poller.join()).await;
    result.map(|()| sink.report)
}

/// Records the poller may hand ahead of the loop: an eighth of a batch (256..=2048).
///
/// The channel only decouples the poller thread from the loop; the read-ahead while a batch
/// is being written is librdkafka's own prefetch queue (the client factory's consumer bounds),
/// from which the poller refills the channel far faster than the loop empties it. A channel
/// as long as the batch (10,000 records of ~1.5 KB, copied out of Kafka's buffers) held a
/// third copy of a batch in memory next to the batch and librdkafka's queue.
fn poller_channel_capacity(batch_rows: usize) -> usize {
    (batch_rows / 8).clamp(256, 2048)
}

/// What the loop knows of a partition it owns.
#[derive(Debug, Clone, Copy)]
struct PartitionState {
    /// The next offset stored in the database, as of our last read or commit.
    stored: Option<i64>,
    /// Records below this offset are already applied (or already in the batch).
    accept_from: i64,
    /// Whether `stored` was read from the database for this assignment.
    verified: bool,
}

struct SinkLoop {
    topic: String,
    config: SinkConfig,
    store: Arc<dyn CallStore>,
    dlq: DeadLetterQueue,
    decoder: CallDecoder,
    commands: SyncSender<PollerCommand>,
    seeks: Arc<SeekBoard>,
    shutdown: Shutdown,
    batch: SinkBatch,
    partitions: HashMap<i32, PartitionState>,
    report: SinkReport,
}

/// How hard a flush tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlushMode {
    /// Retry transient errors per the policy; give up early on shutdown.
    Normal,
    /// A few attempts, then abort (revocation, shutdown).
    Bounded,
}

impl SinkLoop {
    async fn run(&mut self, mut events: mpsc::Receiver<PollerEvent>) -> Result<(), SinkError> {
        loop {
            let deadline = self.batch.deadline();
            tokio::select! {
                biased;
                _ = self.shutdown.wait() => break,
                event = events.recv() => match event {
                    None => return Err(SinkError::PollerStopped),
                    Some(PollerEvent::Record { record, seek_epoch }) => {
                        self.accept(record, seek_epoch).await?;
                        if self.batch.is_full() {
                            self.flush(FlushMode::Normal).await?;
                        }
                    }
                    // Nothing more to read now: commit rather than wait for the timer.
                    Some(PollerEvent::Idle) => self.flush(FlushMode::Normal).await?,
                    Some(PollerEvent::Assigned { partitions, reply }) => {
                        let stored = self.assigned(&partitions).await;
                        let _ = reply.send(stored);
                    }
                    Some(PollerEvent::Revoked { partitions, reply }) => {
                        self.revoked(&partitions).await;
                        let _ = reply.send(());
                    }
                },
                _ = sleep_until_opt(deadline), if deadline.is_some() => {
                    self.flush(FlushMode::Normal).await?;
                }
            }
        }
        // Shutdown: commit what is in flight if we can, else leave it for the next run.
        events.close();
        if let Err(e) = self.flush(FlushMode::Bounded).await {
            tracing::warn!(error = %e, "final batch not committed; it will be read again");
        }
        Ok(())
    }

    /// Offsets stored for newly assigned partitions (the consumer seeks there).
    async fn assigned(&mut self, partitions: &[i32]) -> BTreeMap<i32, i64> {
        let loaded = tokio::time::timeout(
            Duration::from_secs(10),
            self.store.load_offsets(&self.config.group, &self.topic),
        )
        .await;
        match loaded {
            Ok(Ok(stored)) => {
                for &p in partitions {
                    let s = stored.get(&p).copied();
                    self.partitions.insert(
                        p,
                        PartitionState {
                            stored: s,
                            accept_from: s.unwrap_or(0),
                            verified: true,
                        },
                    );
                }
                stored
                    .into_iter()
                    .filter(|(p, _)| partitions.contains(p))
                    .collect()
            }
            other => {
                let error = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_string(),
                };
                tracing::warn!(%error, ?partitions, "stored offsets unavailable at assignment; checked before the first record");
                for &p in partitions {
                    self.partitions.insert(
                        p,
                        PartitionState {
                            stored: None,
                            accept_from: 0,
                            verified: false,
                        },
                    );
                }
                BTreeMap::new()
            }
        }
    }

    /// Finish the batch in flight if it holds revoked partitions (or abort
    /// their part of it), then forget them.
    async fn revoked(&mut self, partitions: &[i32]) {
        let touches = partitions
            .iter()
            .any(|p| self.batch.next_offsets().contains_key(p));
        if touches {
            if let Err(e) = self.flush(FlushMode::Bounded).await {
                tracing::warn!(error = %e, ?partitions, "batch of revoked partitions aborted");
            }
            for p in partitions {
                self.batch.drop_partition(*p);
            }
        }
        for p in partitions {
            self.partitions.remove(p);
        }
    }

    /// Read the stored offset of a partition whose assignment could not.
    async fn verify(&mut self, partition: i32) -> Result<PartitionState, SinkError> {
        let mut attempt = 0;
        loop {
            match self
                .store
                .load_offsets(&self.config.group, &self.topic)
                .await
            {
                Ok(stored) => {
                    let s = stored.get(&partition).copied();
                    let state = PartitionState {
                        stored: s,
                        accept_from: s.unwrap_or(0),
                        verified: true,
                    };
                    self.partitions.insert(partition, state);
                    // The consumer started at Kafka's committed offset (or the
                    // earliest); the database is the source of truth.
                    self.seeks.request(partition, s);
                    return Ok(state);
                }
                Err(e) if e.is_transient() => {
                    attempt += 1;
                    self.report.transient_retries += 1;
                    if !self.config.retry.allows(attempt) {
                        return Err(SinkError::RetriesExhausted {
                            operation: "loading stored offsets",
                            attempts: attempt,
                            last: e.to_string(),
                        });
                    }
                    tracing::warn!(error = %e, attempt, "loading stored offsets; retrying");
                    tokio::time::sleep(self.config.retry.backoff(attempt)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn accept(&mut self, record: SourceRecord, seek_epoch: u64) -> Result<(), SinkError> {
        let p = record.partition;
        let mut state = match self.partitions.get(&p) {
            Some(s) if s.verified => *s,
            _ => self.verify(p).await?,
        };
        if seek_epoch < self.seeks.requested(p) {
            // read before a seek we asked for: it will be read again from there
            self.report.records_before_seek += 1;
            return Ok(());
        }
        if record.offset < state.accept_from {
            self.report.records_already_applied += 1;
            return Ok(());
        }
        state.accept_from = record.offset + 1;
        self.partitions.insert(p, state);
        self.report.records_read += 1;
        match record.payload.as_deref() {
            None => self
                .batch
                .push_dead_letter(record, "empty value (tombstone) in the calls topic"),
            Some(bytes) => match (self.decoder)(bytes) {
                Ok(call) => {
                    self.batch.push(call, record);
                }
                Err(reason) => self.batch.push_dead_letter(record, reason),
            },
        }
        Ok(())
    }

    async fn send_dead_letters(&mut self, mode: FlushMode) -> Result<(), SinkError> {
        if self.batch.dead_letters().is_empty() {
            return Ok(());
        }
        let mut attempt = 0;
        loop {
            match self
                .dlq
                .send_all(&self.topic, self.batch.dead_letters())
                .await
            {
                Ok(()) => {
                    let sent = self.batch.take_dead_letters();
                    self.report.dead_letters += sent.len() as u64;
                    return Ok(());
                }
                Err(e) => {
                    attempt += 1;
                    let give_up = match mode {
                        FlushMode::Normal => {
                            !self.config.retry.allows(attempt) || self.shutdown.is_triggered()
                        }
                        FlushMode::Bounded => attempt >= 3,
                    };
                    if give_up {
                        return Err(e.into());
                    }
                    tracing::warn!(error = %e, attempt, "sending dead letters; retrying");
                    tokio::time::sleep(self.config.retry.backoff(attempt)).await;
                }
            }
        }
    }

    async fn flush(&mut self, mode: FlushMode) -> Result<(), SinkError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let span = tracing::info_span!(
            "sink_batch",
            records = self.batch.record_count(),
            rows = self.batch.row_count(),
            partitions = self.batch.next_offsets().len()
        );
        self.flush_inner(mode).instrument(span).await
    }

    async fn flush_inner(&mut self, mode: FlushMode) -> Result<(), SinkError> {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            self.send_dead_letters(mode).await?;
            let advances = self
                .batch
                .next_offsets()
                .iter()
                .map(|(&partition, &next_offset)| OffsetAdvance {
                    partition,
                    expected: self.partitions.get(&partition).and_then(|s| s.stored),
                    next_offset,
                })
                .collect();
            let offsets = OffsetCommit {
                consumer_group: self.config.group.clone(),
                topic: self.topic.clone(),
                advances,
            };
            match self.store.apply(&self.batch, &offsets).await {
                Ok(ApplyOutcome::Committed(counts)) => {
                    let committed: Vec<(i32, i64)> = self
                        .batch
                        .next_offsets()
                        .iter()
                        .map(|(p, n)| (*p, *n))
                        .collect();
                    for (p, next) in &committed {
                        if let Some(state) = self.partitions.get_mut(p) {
                            state.stored = Some(*next);
                        }
                    }
                    send_command(&self.commands, PollerCommand::Commit(committed));
                    let now = chrono::Utc::now();
                    for (_, row) in self.batch.rows() {
                        let lag = (now - row.record.observed_at)
                            .num_microseconds()
                            .unwrap_or(0) as f64
                            / 1e6;
                        metrics::histogram!(END_TO_END_SECONDS).record(lag.max(0.0));
                    }
                    metrics::histogram!(SINK_BATCH_ROWS).record(self.batch.row_count() as f64);
                    metrics::histogram!(SINK_BATCH_SECONDS).record(started.elapsed().as_secs_f64());
                    metrics::counter!(RECORDS_TOTAL, "stage" => "sink", "outcome" => "written")
                        .increment(counts.written);
                    metrics::counter!(RECORDS_TOTAL, "stage" => "sink", "outcome" => "stale")
                        .increment(counts.stale);
                    self.report.batches_committed += 1;
                    self.report.rows_written += counts.written;
                    self.report.rows_stale += counts.stale;
                    tracing::debug!(
                        written = counts.written,
                        stale = counts.stale,
                        "batch committed"
                    );
                    self.batch.clear();
                    return Ok(());
                }
                Ok(ApplyOutcome::Rejected(rows)) => {
                    tracing::warn!(
                        rejected = rows.len(),
                        "rows refused by the database go to the DLQ"
                    );
                    let rejected: Vec<_> = rows.into_iter().map(|r| (r.key, r.reason)).collect();
                    self.batch.reject(&rejected);
                }
                Ok(ApplyOutcome::OffsetConflict(conflicts)) => {
                    for c in conflicts {
                        tracing::warn!(
                            partition = c.partition,
                            expected = ?c.expected,
                            stored = ?c.stored,
                            "another instance moved this partition on; its part of the batch is dropped"
                        );
                        self.report.offset_conflicts += 1;
                        self.batch.drop_partition(c.partition);
                        if let Some(state) = self.partitions.get_mut(&c.partition) {
                            state.stored = c.stored;
                            state.accept_from = c.stored.unwrap_or(0);
                            // Records already queued past the stored offset must
                            // not be taken: read the partition again from there.
                            self.seeks.request(c.partition, c.stored);
                        }
                    }
                    if self.batch.is_empty() {
                        return Ok(());
                    }
                }
                Err(e) if e.is_transient() => {
                    attempt += 1;
                    self.report.transient_retries += 1;
                    if e.sqlstate().as_deref() == Some("40P01") {
                        self.report.deadlocks += 1;
                    }
                    let give_up = match mode {
                        FlushMode::Normal => !self.config.retry.allows(attempt),
                        FlushMode::Bounded => attempt >= 3,
                    };
                    if give_up || (mode == FlushMode::Normal && self.shutdown.is_triggered()) {
                        return Err(SinkError::RetriesExhausted {
                            operation: "applying a batch",
                            attempts: attempt,
                            last: e.to_string(),
                        });
                    }
                    let delay = self.config.retry.backoff(attempt);
                    tracing::warn!(error = %e, attempt, delay_ms = delay.as_millis() as u64, "transient database error; retrying the batch");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.shutdown.wait(), if mode == FlushMode::Normal => {}
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
