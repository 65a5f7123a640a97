//! The sink loop: read `calls` (read_committed), batch, upsert with the
//! offsets in one database transaction, then commit the offsets to Kafka.
//!
//! One batch is written while the next one fills ([`InFlight`]): records are decoded and
//! collapsed into the next batch until it is full, then the loop waits for the write in
//! flight. A batch is handed to the store only once the one before it has landed, so each
//! write moves the offsets from where the previous one left them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use callsync_runtime::metrics::{
    RECORDS_TOTAL, SINK_BACKFILL_REMAINING, SINK_BATCH_ROWS, SINK_BATCH_SECONDS, SINK_PARTITIONS,
};
use callsync_runtime::topics::names;
use callsync_runtime::{ClientError, Isolation, KafkaClientFactory, Shutdown};
use callsync_schemas::CallRecord;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::sync::mpsc;

use crate::batch::{BatchLimits, SinkBatch, SourceRecord};
use crate::config::SinkConfig;
use crate::consumer::{
    poll_until_stopped, send_command, ChunkLimits, PolledRecord, PollerCommand, PollerEvent,
    SeekBoard, SinkConsumerContext, StartAt,
};
use crate::dlq::{
    count_dead_letters, DeadLetterQueue, DlqError, DlqMessage, REASON_DATABASE_REJECTED,
    REASON_EMPTY_VALUE, REASON_UNDECODABLE,
};
use crate::in_flight::{
    next_landing, CommittedBatch, FlushMode, InFlight, Landing, NotCommitted, WriteLost,
};
use crate::partition_start::{classify, PartitionStart, TopicInspector, TopicSnapshot};
use crate::store::{
    CallStore, DeadLetterId, DeadLetterQuery, OffsetAdvance, OffsetCommit, StoreError,
    StoredDeadLetter,
};

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
    /// Records dropped because their partition is stopped (see [`PartitionStart`]).
    pub records_of_stopped_partitions: u64,
    /// Partitions stopped because their stored offset did not fit them.
    pub partitions_stopped: u64,
    /// Partitions read from the earliest retained record for want of a stored offset.
    pub partitions_backfilled: u64,
    pub batches_committed: u64,
    pub rows_written: u64,
    /// Rows the version guard left alone (the table held a newer version).
    pub rows_stale: u64,
    /// Dead letters committed with their batch (kept in the database).
    pub dead_letters: u64,
    /// Dead letters published to the DLQ topic.
    pub dead_letters_published: u64,
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
    #[error("the task writing a sink batch stopped unexpectedly; its records are read again")]
    WriteLost,
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

    let (event_tx, event_rx) = mpsc::channel(POLLER_CHANNEL_CHUNKS);
    let (command_tx, command_rx) = sync_channel(1024);
    let seeks = Arc::new(SeekBoard::default());
    let closing = Arc::new(AtomicBool::new(false));
    let context = SinkConsumerContext::new(
        topic.clone(),
        event_tx.clone(),
        command_rx,
        seeks.clone(),
        closing,
        config.rebalance_timeout(),
        chunk_limits(config.batch_rows, config.batch_max_bytes),
    );
    let inspector = TopicInspector::new(&kafka, &config.group, topic.clone())?;
    let mut consumer_config = kafka.consumer_config(&config.group, Isolation::ReadCommitted);
    // a stored offset outside the partition is an error to report, never a silent jump
    consumer_config.set("auto.offset.reset", "error");
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
        limits,
        backlog: VecDeque::new(),
        flight: None,
        flush_requested: false,
        topic,
        config,
        store,
        dlq,
        decoder,
        commands: command_tx,
        seeks,
        shutdown,
        inspector,
        topic_id: None,
        partitions: HashMap::new(),
        unpublished: false,
        report: SinkReport::default(),
    };
    let result = sink.run(event_rx).await;
    stop.store(true, Ordering::SeqCst);
    let _ = tokio::task::spawn_blocking(move || poller.join()).await;
    result.map(|()| sink.report)
}

/// How often partitions assigned while the database did not answer are checked again.
const UNVERIFIED_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Chunks the poller may hand ahead of the loop.
const POLLER_CHANNEL_CHUNKS: usize = 4;

/// A chunk of the poller: a sixteenth of a batch (64..=1024 records, and of its byte bound).
///
/// The channel only decouples the poller thread from the loop; the read-ahead while a batch
/// is being written is the next batch and librdkafka's own prefetch queue (the client
/// factory's consumer bounds). Four chunks are a quarter of a batch: a channel as long as the
/// batch (10,000 records of ~1.5 KB, copied out of Kafka's buffers) held a third copy of a
/// batch in memory next to the batch and librdkafka's queue.
fn chunk_limits(batch_rows: usize, batch_max_bytes: usize) -> ChunkLimits {
    ChunkLimits {
        max_records: (batch_rows / 16).clamp(64, 1024),
        max_bytes: (batch_max_bytes / 16).max(64 * 1024),
    }
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
    /// While backfilling: the end offset the partition had when the backfill began.
    backfill_until: Option<i64>,
    /// The stored offset does not fit the partition: nothing of it is read.
    stopped: bool,
}

impl PartitionState {
    fn unverified() -> Self {
        PartitionState {
            stored: None,
            accept_from: 0,
            verified: false,
            backfill_until: None,
            stopped: false,
        }
    }
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
    inspector: TopicInspector,
    /// The topic's id as last read (stored with the offsets).
    topic_id: Option<String>,
    /// The batch filling (the next one to write, while one is in flight).
    batch: SinkBatch,
    limits: BatchLimits,
    /// Records of a chunk not taken yet (the batch filled first).
    backlog: VecDeque<PolledRecord>,
    /// The batch being written, if any.
    flight: Option<InFlight>,
    /// The batch is to be written as soon as the one in flight lands (the input went idle,
    /// or its age bound passed).
    flush_requested: bool,
    partitions: HashMap<i32, PartitionState>,
    /// Dead letters committed but not published yet (Kafka refused them): retried.
    unpublished: bool,
    report: SinkReport,
}

impl SinkLoop {
    async fn run(&mut self, mut events: mpsc::Receiver<PollerEvent>) -> Result<(), SinkError> {
        let mut checks = tokio::time::interval(UNVERIFIED_CHECK_INTERVAL);
        checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.take_backlog().await?;
            if self.flight.is_none() && self.due() {
                self.launch(FlushMode::Normal);
            }
            let deadline = if self.flush_requested {
                None
            } else {
                self.batch.deadline()
            };
            let unverified = self.partitions.values().any(|s| !s.verified);
            // one batch ahead: no more records while the next batch is full
            let reading = self.backlog.is_empty() && !self.batch.is_full();
            tokio::select! {
                biased;
                _ = self.shutdown.wait() => break,
                landing = next_landing(self.flight.as_mut()) => self.on_landing(landing).await?,
                event = events.recv(), if reading => match event {
                    None => return Err(SinkError::PollerStopped),
                    Some(PollerEvent::Records(records)) => self.backlog.extend(records),
                    // Nothing more to read now: commit rather than wait for the timer.
                    Some(PollerEvent::Idle) => self.flush_requested = true,
                    Some(PollerEvent::Assigned { partitions, reply }) => {
                        let starts = self.assigned(&partitions).await;
                        if let Err(starts) = reply.answer(starts) {
                            // the poller gave up waiting and assigned them unread: seek
                            // each where the database says
                            tracing::warn!(?partitions, "handling a stale assignment: seeking to the stored offsets");
                            self.start_by_seeking(&starts);
                        }
                        self.publish_pending(&partitions).await;
                    }
                    Some(PollerEvent::Revoked { partitions, reply }) => {
                        self.revoked(&partitions).await;
                        let _ = reply.answer(());
                    }
                    Some(PollerEvent::OffsetOutOfRange { message }) => {
                        tracing::warn!(%message, "checking the partitions' offsets");
                        self.check_positions().await;
                    }
                },
                _ = sleep_until_opt(deadline), if deadline.is_some() => {
                    self.flush_requested = true;
                }
                _ = checks.tick(), if unverified => self.verify_unverified().await,
            }
        }
        // Shutdown: commit what is in flight if we can, else leave it for the next run.
        events.close();
        if let Err(e) = self.flush(FlushMode::Bounded).await {
            tracing::warn!(error = %e, "final batch not committed; it will be read again");
        }
        Ok(())
    }

    /// Take the records of the backlog into the batch until it is full.
    async fn take_backlog(&mut self) -> Result<(), SinkError> {
        while !self.batch.is_full() {
            let Some(polled) = self.backlog.pop_front() else {
                break;
            };
            self.accept(polled.record, polled.seek_epoch).await?;
        }
        Ok(())
    }

    /// Whether the batch filling is to be written now (if nothing is in flight).
    fn due(&mut self) -> bool {
        if self.batch.is_empty() {
            self.flush_requested = false;
            return false;
        }
        self.flush_requested || self.batch.is_full()
    }

    /// Where newly assigned partitions start, from the offsets stored in the database and
    /// the partitions' ranges now.
    async fn assigned(&mut self, partitions: &[i32]) -> BTreeMap<i32, StartAt> {
        let loaded = tokio::time::timeout(
            Duration::from_secs(10),
            self.store
                .load_partition_offsets(&self.config.group, &self.topic),
        )
        .await;
        let stored = match loaded {
            Ok(Ok(stored)) => stored,
            other => {
                let error = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_string(),
                };
                tracing::warn!(%error, ?partitions, "stored offsets unavailable at assignment; checked before the first record");
                for &p in partitions {
                    self.partitions.insert(p, PartitionState::unverified());
                }
                self.update_gauges();
                return partitions
                    .iter()
                    .map(|&p| (p, StartAt::Unchecked))
                    .collect();
            }
        };
        let snapshot = self.inspector.snapshot(partitions.to_vec()).await;
        let starts = partitions
            .iter()
            .map(|&p| (p, self.start_partition(p, stored.get(&p), &snapshot)))
            .collect();
        self.update_gauges();
        starts
    }

    /// Decide how `partition` starts and remember it.
    fn start_partition(
        &mut self,
        partition: i32,
        stored: Option<&crate::store::StoredOffset>,
        snapshot: &TopicSnapshot,
    ) -> StartAt {
        if snapshot.topic_id.is_some() {
            self.topic_id = snapshot.topic_id.clone();
        }
        let (state, start) = match classify(
            &self.config.group,
            &self.topic,
            partition,
            stored,
            snapshot,
        ) {
            PartitionStart::Resume {
                next_offset,
                backfill_until,
            } => {
                // Kafka's copy of the offset (for lag tools) may trail the database's when
                // the process that applied the last batch died before committing it there;
                // without a new record on the partition nothing else would correct it
                send_command(
                    &self.commands,
                    PollerCommand::Commit(vec![(partition, next_offset)]),
                );
                (
                    PartitionState {
                        stored: Some(next_offset),
                        accept_from: next_offset,
                        verified: true,
                        backfill_until,
                        stopped: false,
                    },
                    StartAt::Offset(next_offset),
                )
            }
            PartitionStart::Backfill { from, until } => {
                tracing::info!(
                    topic = %self.topic,
                    partition,
                    from = ?from,
                    until = ?until,
                    "no stored offset: backfilling the partition from its earliest retained record"
                );
                self.report.partitions_backfilled += 1;
                (
                    PartitionState {
                        stored: None,
                        accept_from: from.unwrap_or(0),
                        verified: true,
                        backfill_until: until.filter(|&u| u > from.unwrap_or(0)),
                        stopped: false,
                    },
                    StartAt::Beginning,
                )
            }
            PartitionStart::Stopped(stop) => {
                tracing::error!(
                    topic = %self.topic,
                    partition,
                    stored = stop.next_offset,
                    low = stop.range.low,
                    high = stop.range.high,
                    fix = %stop.fix_command(),
                    "{stop}"
                );
                self.report.partitions_stopped += 1;
                (
                    PartitionState {
                        stored: stored.map(|s| s.next_offset),
                        accept_from: i64::MAX,
                        verified: true,
                        backfill_until: None,
                        stopped: true,
                    },
                    StartAt::Paused,
                )
            }
        };
        self.partitions.insert(partition, state);
        start
    }

    /// Make the starts of a handshake the poller gave up on: seek, or pause.
    fn start_by_seeking(&mut self, starts: &BTreeMap<i32, StartAt>) {
        let mut paused = Vec::new();
        for (&p, start) in starts {
            match start {
                StartAt::Offset(next) => {
                    self.seeks.request(p, Some(*next));
                }
                StartAt::Beginning => {
                    self.seeks.request(p, None);
                }
                StartAt::Paused => paused.push(p),
                // checked before the first record is taken (`verify`)
                StartAt::Unchecked => {}
            }
        }
        if !paused.is_empty() {
            send_command(&self.commands, PollerCommand::Pause(paused));
        }
    }

    /// The consumer stopped a partition whose position left its range: find which (its
    /// next offset is outside the range now: stop it) and seek the others where they were.
    async fn check_positions(&mut self) {
        let owned: Vec<i32> = self
            .partitions
            .iter()
            .filter(|(_, s)| s.verified && !s.stopped)
            .map(|(p, _)| *p)
            .collect();
        if owned.is_empty() {
            return;
        }
        let snapshot = self.inspector.snapshot(owned.clone()).await;
        let mut paused = Vec::new();
        for p in owned {
            let Some(state) = self.partitions.get(&p).copied() else {
                continue;
            };
            let position = crate::store::StoredOffset {
                next_offset: state.accept_from,
                topic_id: self.topic_id.clone(),
                backfill_until: None,
            };
            match classify(
                &self.config.group,
                &self.topic,
                p,
                Some(&position),
                &snapshot,
            ) {
                PartitionStart::Stopped(stop) => {
                    tracing::error!(
                        topic = %self.topic,
                        partition = p,
                        next = stop.next_offset,
                        low = stop.range.low,
                        high = stop.range.high,
                        fix = %stop.fix_command(),
                        "{stop}"
                    );
                    self.report.partitions_stopped += 1;
                    if let Some(s) = self.partitions.get_mut(&p) {
                        s.stopped = true;
                    }
                    paused.push(p);
                }
                _ => {
                    // in range: restart its fetch where the loop is (harmless if it runs)
                    self.seeks.request(p, Some(state.accept_from));
                }
            }
        }
        if !paused.is_empty() {
            send_command(&self.commands, PollerCommand::Pause(paused));
        }
        self.update_gauges();
    }

    /// The partitions' states as gauges: how many are live, backfilling, stopped, and how
    /// many offsets the backfills still have to read.
    fn update_gauges(&self) {
        let (mut live, mut backfilling, mut stopped, mut remaining) = (0u64, 0u64, 0u64, 0i64);
        for state in self.partitions.values() {
            if state.stopped {
                stopped += 1;
            } else if let Some(until) = state.backfill_until {
                backfilling += 1;
                remaining += until.saturating_sub(state.accept_from).max(0);
            } else {
                live += 1;
            }
        }
        metrics::gauge!(SINK_PARTITIONS, "state" => "live").set(live as f64);
        metrics::gauge!(SINK_PARTITIONS, "state" => "backfilling").set(backfilling as f64);
        metrics::gauge!(SINK_PARTITIONS, "state" => "stopped").set(stopped as f64);
        metrics::gauge!(SINK_BACKFILL_REMAINING).set(remaining as f64);
    }

    /// Let the batch in flight land, finish the batch filling if it holds revoked partitions
    /// (or abort their part of it), then forget them.
    async fn revoked(&mut self, partitions: &[i32]) {
        if let Err(e) = self.settle(FlushMode::Bounded).await {
            tracing::warn!(error = %e, ?partitions, "batch in flight aborted; its partitions are read again");
        }
        let touches = partitions
            .iter()
            .any(|p| self.batch.next_offsets().contains_key(p));
        if touches {
            if let Err(e) = self.flush(FlushMode::Bounded).await {
                tracing::warn!(error = %e, ?partitions, "batch of revoked partitions aborted");
            }
            for p in partitions {
                self.drop_from_filling(*p);
            }
        }
        for p in partitions {
            self.partitions.remove(p);
        }
        self.update_gauges();
    }

    /// Read the stored offset of a partition whose assignment could not, and seek (or stop
    /// it) accordingly.
    async fn verify(&mut self, partition: i32) -> Result<PartitionState, SinkError> {
        let mut attempt = 0;
        loop {
            match self.verify_once(partition).await {
                Ok(state) => return Ok(state),
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

    async fn verify_once(&mut self, partition: i32) -> Result<PartitionState, StoreError> {
        let stored = self
            .store
            .load_partition_offsets(&self.config.group, &self.topic)
            .await?;
        let snapshot = self.inspector.snapshot(vec![partition]).await;
        // The consumer started at the partition's end; the database is the source of truth.
        let start = self.start_partition(partition, stored.get(&partition), &snapshot);
        self.start_by_seeking(&BTreeMap::from([(partition, start)]));
        self.update_gauges();
        Ok(self
            .partitions
            .get(&partition)
            .copied()
            .unwrap_or_else(PartitionState::unverified))
    }

    /// Check the partitions whose assignment could not read the database: they were assigned
    /// at their end, so on a quiet topic no record would ever trigger the check.
    async fn verify_unverified(&mut self) {
        let unverified: Vec<i32> = self
            .partitions
            .iter()
            .filter(|(_, s)| !s.verified)
            .map(|(p, _)| *p)
            .collect();
        for p in unverified {
            if let Err(e) = self.verify_once(p).await {
                tracing::warn!(error = %e, partition = p, "loading stored offsets; trying again shortly");
                return;
            }
        }
    }

    async fn accept(&mut self, record: SourceRecord, seek_epoch: u64) -> Result<(), SinkError> {
        let p = record.partition;
        let mut state = match self.partitions.get(&p) {
            Some(s) if s.verified => *s,
            _ => self.verify(p).await?,
        };
        if state.stopped {
            self.report.records_of_stopped_partitions += 1;
            return Ok(());
        }
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
            None => self.batch.push_dead_letter(
                record,
                format!("{REASON_EMPTY_VALUE}: empty value (tombstone) in the calls topic"),
            ),
            Some(bytes) => match (self.decoder)(bytes) {
                Ok(call) => {
                    self.batch.push(call, record);
                }
                Err(reason) => self
                    .batch
                    .push_dead_letter(record, format!("{REASON_UNDECODABLE}: {reason}")),
            },
        }
        Ok(())
    }

    /// Publish committed dead letters to the DLQ topic and note it; on failure they stay
    /// unpublished in the database and are tried again after the next batch.
    async fn publish(&mut self, letters: &[DlqMessage<'_>]) {
        if letters.is_empty() {
            return;
        }
        match self
            .dlq
            .send_all(&self.config.group, &self.topic, letters)
            .await
        {
            Ok(()) => {
                self.report.dead_letters_published += letters.len() as u64;
                let ids: Vec<DeadLetterId> = letters.iter().map(|l| l.id).collect();
                if let Err(e) = self
                    .store
                    .mark_dead_letters_published(&self.config.group, &self.topic, &ids)
                    .await
                {
                    // published again later, with the same id header
                    tracing::warn!(error = %e, "noting dead letters as published failed");
                    self.unpublished = true;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "publishing dead letters failed; they are kept in the database and published later");
                self.unpublished = true;
            }
        }
    }

    /// Publish the dead letters of `partitions` that are in the database but not in the DLQ
    /// topic (a crash or a Kafka outage after their batch committed).
    async fn publish_pending(&mut self, partitions: &[i32]) {
        let query = DeadLetterQuery {
            unpublished_only: true,
            partitions: partitions.to_vec(),
            limit: 1000,
            ..DeadLetterQuery::default()
        };
        let pending: Vec<StoredDeadLetter> = match self
            .store
            .dead_letters(&self.config.group, &self.topic, &query)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "reading unpublished dead letters failed");
                return;
            }
        };
        let more = pending.len() as i64 >= query.limit;
        let refs: Vec<DlqMessage<'_>> = pending.iter().map(DlqMessage::from).collect();
        self.unpublished = more;
        self.publish(&refs).await;
    }

    /// Write the batch in flight and then the batch filling, waiting for both.
    async fn flush(&mut self, mode: FlushMode) -> Result<(), SinkError> {
        self.settle(mode).await?;
        if !self.batch.is_empty() {
            self.launch(mode);
            self.settle(mode).await?;
        }
        Ok(())
    }

    /// Wait until nothing is in flight (retries included).
    async fn settle(&mut self, mode: FlushMode) -> Result<(), SinkError> {
        while let Some(flight) = self.flight.as_mut() {
            if mode == FlushMode::Bounded {
                flight.mode = FlushMode::Bounded;
            }
            let landing = flight.landed().await;
            self.on_landing(landing).await?;
        }
        Ok(())
    }

    /// Hand the batch filling to the store; a new one starts filling.
    fn launch(&mut self, mode: FlushMode) {
        let fresh = SinkBatch::new(self.topic.clone(), self.limits);
        let batch = std::mem::replace(&mut self.batch, fresh);
        self.flush_requested = false;
        self.write(batch, (0, mode, Instant::now()), Duration::ZERO);
    }

    /// Start an attempt at writing `batch`, with the offsets as the loop knows them now.
    fn write(&mut self, batch: SinkBatch, attempt: (u32, FlushMode, Instant), delay: Duration) {
        let advances = batch
            .next_offsets()
            .iter()
            .map(|(&partition, &next_offset)| {
                let state = self.partitions.get(&partition);
                OffsetAdvance {
                    partition,
                    expected: state.and_then(|s| s.stored),
                    next_offset,
                    backfill_until: state.and_then(|s| s.backfill_until),
                }
            })
            .collect();
        let offsets = OffsetCommit {
            consumer_group: self.config.group.clone(),
            topic: self.topic.clone(),
            topic_id: self.topic_id.clone(),
            advances,
        };
        let shutdown = (attempt.1 == FlushMode::Normal).then(|| self.shutdown.clone());
        self.flight = Some(InFlight::start(
            self.store.clone(),
            batch,
            offsets,
            delay,
            shutdown,
            attempt,
        ));
    }

    /// The write in flight answered: note a commit, or write the batch again (without the
    /// refused rows or the partitions another instance moved on, after a transient error),
    /// or give up.
    async fn on_landing(&mut self, landing: Result<Landing, WriteLost>) -> Result<(), SinkError> {
        let Some(flight) = self.flight.take() else {
            return Ok(());
        };
        let (mut batch, why) = match landing {
            Err(WriteLost) => return Err(SinkError::WriteLost),
            Ok(Landing::Committed(committed)) => {
                self.committed(committed, flight.started).await;
                return Ok(());
            }
            Ok(Landing::NotCommitted { batch, why }) => (batch, why),
        };
        let again = (flight.attempt, flight.mode, flight.started);
        match why {
            NotCommitted::Rejected(rows) => {
                tracing::warn!(
                    rejected = rows.len(),
                    "rows refused by the database go to the DLQ"
                );
                let rejected: Vec<_> = rows
                    .into_iter()
                    .map(|r| (r.key, format!("{REASON_DATABASE_REJECTED}: {}", r.reason)))
                    .collect();
                batch.reject(&rejected);
                self.write(batch, again, Duration::ZERO);
            }
            NotCommitted::OffsetConflict(conflicts) => {
                for c in conflicts {
                    tracing::warn!(
                        partition = c.partition,
                        expected = ?c.expected,
                        stored = ?c.stored,
                        "another instance moved this partition on; its part of the batch is dropped"
                    );
                    self.report.offset_conflicts += 1;
                    batch.drop_partition(c.partition);
                    self.drop_from_filling(c.partition);
                    if let Some(state) = self.partitions.get_mut(&c.partition) {
                        state.stored = c.stored;
                        state.accept_from = c.stored.unwrap_or(0);
                        // Records already queued past the stored offset must
                        // not be taken: read the partition again from there.
                        self.seeks.request(c.partition, c.stored);
                    }
                }
                if !batch.is_empty() {
                    self.write(batch, again, Duration::ZERO);
                }
            }
            NotCommitted::Failed(e) if e.is_transient() => {
                let attempt = flight.attempt + 1;
                self.report.transient_retries += 1;
                if e.sqlstate().as_deref() == Some("40P01") {
                    self.report.deadlocks += 1;
                }
                let give_up = match flight.mode {
                    FlushMode::Normal => !self.config.retry.allows(attempt),
                    FlushMode::Bounded => attempt >= 3,
                };
                if give_up || (flight.mode == FlushMode::Normal && self.shutdown.is_triggered()) {
                    self.rewind(&batch);
                    return Err(SinkError::RetriesExhausted {
                        operation: "applying a batch",
                        attempts: attempt,
                        last: e.to_string(),
                    });
                }
                let delay = self.config.retry.backoff(attempt);
                tracing::warn!(error = %e, attempt, delay_ms = delay.as_millis() as u64, "transient database error; retrying the batch");
                self.write(batch, (attempt, flight.mode, flight.started), delay);
            }
            NotCommitted::Failed(e) => {
                self.rewind(&batch);
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// A batch was given up: read its partitions again from their stored offsets (the
    /// records of the batch filling included), so a sink that goes on loses none of them.
    fn rewind(&mut self, batch: &SinkBatch) {
        for &p in batch.next_offsets().keys() {
            self.drop_from_filling(p);
            if let Some(state) = self.partitions.get_mut(&p) {
                state.accept_from = state.stored.unwrap_or(0);
                self.seeks.request(p, state.stored);
            }
        }
    }

    /// Forget what the batch filling holds of `partition`. A batch left empty starts over:
    /// its record and byte counts still hold the dropped records, which would otherwise
    /// keep it "full" with nothing to write.
    fn drop_from_filling(&mut self, partition: i32) {
        self.batch.drop_partition(partition);
        if self.batch.is_empty() {
            self.batch.clear();
        }
    }

    /// Note a committed batch: the partitions' stored offsets, the metrics and report, the
    /// commit to Kafka (for lag tools) and the publication of its dead letters.
    async fn committed(&mut self, committed: CommittedBatch, started: Instant) {
        for (p, next) in &committed.next_offsets {
            if let Some(state) = self.partitions.get_mut(p) {
                state.stored = Some(*next);
                if state.backfill_until.is_some_and(|until| *next >= until) {
                    tracing::info!(topic = %self.topic, partition = p, "backfill done: the partition is live");
                    state.backfill_until = None;
                }
            }
        }
        self.update_gauges();
        send_command(
            &self.commands,
            PollerCommand::Commit(committed.next_offsets),
        );
        let counts = committed.counts;
        metrics::histogram!(SINK_BATCH_ROWS).record(committed.rows as f64);
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
        let letters = committed.dead_letters;
        self.report.dead_letters += letters.len() as u64;
        count_dead_letters(&letters);
        let refs: Vec<DlqMessage<'_>> = letters.iter().map(DlqMessage::from).collect();
        self.publish(&refs).await;
        if self.unpublished {
            let owned: Vec<i32> = self.partitions.keys().copied().collect();
            self.publish_pending(&owned).await;
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
