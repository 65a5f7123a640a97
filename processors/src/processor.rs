//! The exactly-once processor loop.
//!
//! - A transactional producer whose `transactional.id` is unique to the run by default, so any
//!   number of processes share one config; a member that lost its partitions is fenced by
//!   the group generation its offsets carry (KIP-447), and a killed run's open transaction is
//!   aborted by the broker after `transaction_timeout_ms`. With a configured `instance_id`
//!   the id is stable (`{prefix}callsync-processor-{instance_id}`, static membership): a
//!   restarted instance's `init_transactions` fences its predecessor at once.
//! - A `read_committed` consumer in the processor group, auto-commit off.
//! - Per batch (closed at a record count, after a time, or as soon as the input is idle) one
//!   transaction holding the records for `calls`, the DLQ records, the dedup changelog
//!   updates and the consumed offsets (`send_offsets_to_transaction` with the group's
//!   metadata, so a member that lost its partitions cannot commit them).
//! - Rebalances are handled in the consumer's context: before partitions are revoked the
//!   batch in flight is committed (or aborted, when the assignment was lost) and their state
//!   dropped; after partitions are assigned the batch in flight is committed (no transaction
//!   stays open through a restore) and their state is restored from the changelog before any
//!   of their records is processed.
//! - Every transaction carries consumed offsets with the group's metadata, the TTL sweep's
//!   tombstones included (it re-commits the committed offsets), so nothing a member writes after
//!   losing its partitions becomes visible.
//! - A batch that fails with an abortable error is aborted, its staged state dropped, and its
//!   partitions rewound to the batch's first offsets. A fenced or fatally failed producer
//!   stops the instance without writing anything more.
//!
//! The loop runs on a blocking thread: librdkafka's transactional calls block, and the
//! rebalance callbacks run inside `poll`, on the loop's own thread.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use callsync_runtime::metrics::{DEDUP_STATE_BYTES, DEDUP_STATE_ENTRIES, DLQ_TOTAL, RECORDS_TOTAL};
use callsync_runtime::{send_waiting, Isolation, KafkaClientFactory, Shutdown};
use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::codec::DedupEntryCodec;
use crate::config::ProcessorConfig;
use crate::counters::{metric_names, BatchTally, ProcessorCounters, ProcessorReport};
use crate::dedup::{
    find_changelog_keys, restore_partitions, PartitionState, RestoreError, StagedChanges, StateKey,
    Verdict,
};
use crate::dlq::{dlq_headers, ErrorStage, SourcePosition};
use crate::error::ProcessorError;
use crate::pipeline::{Accepted, RecordPipeline, Rejected};
use crate::step_watch::StepWatch;
use crate::validate::{RejectReason, Rejection};

/// Run one processor instance until `shutdown` is triggered (the batch in flight is then
/// committed) or a fatal error (a fenced producer included) stops it.
pub async fn run_processor(
    config: ProcessorConfig,
    kafka: KafkaClientFactory,
    shutdown: Shutdown,
) -> Result<ProcessorReport, ProcessorError> {
    run_processor_with_counters(config, kafka, shutdown, Arc::default()).await
}

/// [`run_processor`], counting into `counters` as it goes (for tests, benchmarks and status
/// pages that watch a running instance).
pub async fn run_processor_with_counters(
    config: ProcessorConfig,
    kafka: KafkaClientFactory,
    shutdown: Shutdown,
    counters: Arc<ProcessorCounters>,
) -> Result<ProcessorReport, ProcessorError> {
    run_processor_with_faults(
        config,
        kafka,
        shutdown,
        counters,
        ProcessorFaults::default(),
    )
    .await
}

/// Faults a test injects into a running instance, to drive it down its failure paths on a
/// real broker. [`ProcessorFaults::default`] injects none.
#[derive(Debug, Clone, Default)]
pub struct ProcessorFaults {
    /// Once, when the batch in flight has consumed this many records, send a record to a
    /// partition the output topic does not have: librdkafka refuses it, and the batch takes
    /// the abortable-failure path (abort, drop the staged state, rewind).
    pub fail_batch_at_records: Option<u64>,
    /// Once, after this many records were consumed in total, stop polling for the given time
    /// with the batch open (longer than `max.poll.interval.ms`, the group evicts the instance
    /// and the assignment is lost).
    pub stall_after_records: Option<(u64, Duration)>,
    /// Once, at the first batch commit, hold the thread inside `commit_transaction` for the
    /// given time, as a librdkafka call that does not return would.
    pub hang_in_commit: Option<Duration>,
}

/// [`run_processor_with_counters`] with injected `faults` (tests).
pub async fn run_processor_with_faults(
    config: ProcessorConfig,
    kafka: KafkaClientFactory,
    shutdown: Shutdown,
    counters: Arc<ProcessorCounters>,
    faults: ProcessorFaults,
) -> Result<ProcessorReport, ProcessorError> {
    config.check()?;
    let watch = Arc::new(StepWatch::default());
    // a transaction call that runs twice its own timeout is not coming back
    let limit = config.commit_timeout() * 2;
    let mut worker = tokio::task::spawn_blocking({
        let watch = watch.clone();
        move || run_blocking(config, kafka, shutdown, counters, faults, watch)
    });
    let mut checks = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            done = &mut worker => {
                return done.map_err(|e| ProcessorError::Worker(e.to_string()))?;
            }
            _ = checks.tick() => {
                if let Some((step, running)) = watch.running_longer_than(limit) {
                    tracing::error!(step, running_secs = running.as_secs(), "the processor thread is blocked in a Kafka call that did not return; stopping the instance (its thread is left behind)");
                    return Err(ProcessorError::Stuck { step, secs: running.as_secs() });
                }
            }
        }
    }
}

/// Full topic names (prefix applied).
#[derive(Debug, Clone)]
struct Topics {
    input: String,
    output: String,
    dlq: String,
    state: String,
}

fn run_blocking(
    config: ProcessorConfig,
    kafka: KafkaClientFactory,
    shutdown: Shutdown,
    counters: Arc<ProcessorCounters>,
    faults: ProcessorFaults,
    watch: Arc<StepWatch>,
) -> Result<ProcessorReport, ProcessorError> {
    let settings = kafka.settings();
    let topics = Topics {
        input: settings.topic(&config.input_topic),
        output: settings.topic(&config.output_topic),
        dlq: settings.topic(&config.dlq_topic),
        state: settings.topic(&config.state_topic),
    };
    let transactional_id = config.transactional_id(&settings.topic_prefix).to_string();
    let pipeline = RecordPipeline::new(&config)?;

    // The queue keeps the factory's bounds (64 MiB, librdkafka's 100,000 messages): a batch
    // sends at most `batch_max_records` outputs plus as many changelog records (20,000 + 20,000
    // by default, ~14 MB at ~600 + ~100 bytes), and
    // `send_waiting` serves delivery reports when the queue is full. Larger message sets per
    // partition request (librdkafka's defaults are 10,000 messages and 1 MB) keep the
    // produce round trips few.
    let mut producer_config = kafka.transactional_producer_config(&transactional_id);
    producer_config
        .set("batch.num.messages", "10000")
        .set("batch.size", "1000000")
        .set(
            "transaction.timeout.ms",
            config.transaction_timeout_ms.to_string(),
        )
        // librdkafka wants a record delivered (or failed) within its transaction's timeout
        .set(
            "message.timeout.ms",
            config.transaction_timeout_ms.min(30_000).to_string(),
        );
    for (k, v) in &settings.client_properties {
        producer_config.set(k, v);
    }
    let producer: BaseProducer = kafka.create("transactional producer", &producer_config)?;
    producer
        .init_transactions(config.commit_timeout())
        .map_err(|source| ProcessorError::InitTransactions {
            transactional_id: transactional_id.clone(),
            source,
        })?;
    tracing::info!(%transactional_id, input = %topics.input, group = %config.group_id, "processor started");

    let engine = Arc::new(Mutex::new(Engine {
        config: config.clone(),
        topics: topics.clone(),
        transactional_id,
        kafka: kafka.clone(),
        producer,
        pipeline,
        state_codec: DedupEntryCodec::new(),
        partitions: HashMap::new(),
        batch: None,
        counters: counters.clone(),
        fatal: None,
        last_sweep: Instant::now(),
        scratch: Vec::with_capacity(1024),
        consumed_total: 0,
        faults,
        watch,
    }));

    // The prefetch keeps the factory's bounds (8 MiB queued, 4 MiB per fetch): at ~500 bytes
    // a record that is ~16,000 records ahead, most of a full batch, where the former 128 MiB
    // queue held a quarter of a million records nobody was ready to process.
    let mut consumer_config = kafka.consumer_config(&config.group_id, Isolation::ReadCommitted);
    consumer_config
        .set("max.partition.fetch.bytes", "4194304")
        .set("fetch.wait.max.ms", "50");
    if let Some(instance) = config.group_instance_id(&settings.topic_prefix) {
        consumer_config.set("group.instance.id", instance);
    }
    for (k, v) in &settings.client_properties {
        consumer_config.set(k, v);
    }
    let consumer: BaseConsumer<ProcessorContext> = consumer_config
        .create_with_context(ProcessorContext {
            engine: engine.clone(),
        })
        .map_err(|source| callsync_runtime::ClientError {
            role: "consumer",
            bootstrap: settings.bootstrap_servers.clone(),
            source,
        })?;
    consumer
        .subscribe(&[&topics.input])
        .map_err(|source| ProcessorError::Subscribe {
            group: config.group_id.clone(),
            topic: topics.input.clone(),
            source,
        })?;

    let result = poll_loop(&consumer, &engine, &shutdown);
    if result.is_err() {
        // never commit after a failure: closing the consumer below runs the revoke callback
        lock(&engine).discard_batch();
    } else {
        // leave the group now: the revoke callback drops the (committed) state
        consumer.unsubscribe();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && !lock(&engine).partitions.is_empty() {
            consumer.poll(Duration::from_millis(50));
        }
    }
    drop(consumer);
    let mut engine = lock(&engine);
    if let Some(fatal) = engine.fatal.take() {
        return Err(fatal);
    }
    result?;
    engine.publish_state_size();
    Ok(counters.snapshot())
}

fn poll_loop(
    consumer: &BaseConsumer<ProcessorContext>,
    shared: &Mutex<Engine>,
    shutdown: &Shutdown,
) -> Result<(), ProcessorError> {
    let poll_timeout = Duration::from_millis(20);
    loop {
        if shutdown.is_triggered() {
            let mut engine = lock(shared);
            engine.take_fatal()?;
            tracing::info!("shutdown: committing the batch in flight");
            return engine.commit_batch(consumer, &[]);
        }
        let polled = consumer.poll(poll_timeout);
        let mut engine = lock(shared);
        engine.take_fatal()?;
        match polled {
            // idle: nothing more to read for now, so close the batch in flight rather than
            // hold its records back until `batch_max_time`
            None => engine.commit_batch(consumer, &[])?,
            Some(Ok(message)) => engine.process(&message, consumer)?,
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(KafkaError::MessageConsumptionFatal(code))) => {
                return Err(ProcessorError::Consume {
                    topic: engine.topics.input.clone(),
                    source: KafkaError::MessageConsumptionFatal(code),
                })
            }
            Some(Err(e)) => tracing::warn!(error = %e, "consumer error (librdkafka retries)"),
        }
        if let Some(stall) = engine.take_due_stall() {
            drop(engine);
            tracing::warn!(?stall, "injected fault: not polling");
            std::thread::sleep(stall);
            engine = lock(shared);
        }
        engine.tick(consumer)?;
    }
}

fn lock(engine: &Mutex<Engine>) -> MutexGuard<'_, Engine> {
    engine.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The consumer context: rebalance callbacks, run by librdkafka inside `poll`.
struct ProcessorContext {
    engine: Arc<Mutex<Engine>>,
}

impl ClientContext for ProcessorContext {}

impl ConsumerContext for ProcessorContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut engine = lock(&self.engine);
            let revoked = partitions_of(tpl, &engine.topics.input);
            let lost = consumer.assignment_lost();
            if let Err(e) = engine.on_revoke(consumer, &revoked, lost) {
                tracing::error!(error = %e, "handling revocation failed");
                engine.fatal.get_or_insert(e);
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let mut engine = lock(&self.engine);
            if engine.fatal.is_some() {
                return;
            }
            let assigned = partitions_of(tpl, &engine.topics.input);
            if let Err(e) = engine.on_assign(consumer, &assigned) {
                tracing::error!(error = %e, "handling assignment failed");
                engine.fatal.get_or_insert(e);
            }
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList, topic: &str) -> Vec<i32> {
    tpl.elements_for_topic(topic)
        .iter()
        .map(|e| e.partition())
        .collect()
}

/// The batch in flight: one open transaction.
struct Batch {
    started: Instant,
    now: DateTime<Utc>,
    first_offsets: BTreeMap<i32, i64>,
    next_offsets: BTreeMap<i32, i64>,
    staged: HashMap<i32, StagedChanges>,
    tally: BatchTally,
    dead_letters: HashMap<(ErrorStage, RejectReason), u64>,
    sends: usize,
    /// Whether the newest record read was older than `catch_up_after` (the input is behind):
    /// the batch may then stay open up to `catch_up_batch_max_time`.
    catching_up: bool,
}

impl Batch {
    /// An empty batch opened now.
    fn new() -> Self {
        Batch {
            started: Instant::now(),
            now: Utc::now(),
            first_offsets: BTreeMap::new(),
            next_offsets: BTreeMap::new(),
            staged: HashMap::new(),
            tally: BatchTally::default(),
            dead_letters: HashMap::new(),
            sends: 0,
            catching_up: false,
        }
    }

    /// How long this batch may stay open.
    fn max_time(&self, config: &ProcessorConfig) -> Duration {
        if self.catching_up {
            config.catch_up_batch_max_time()
        } else {
            config.batch_max_time()
        }
    }
}

/// Whether a record with Kafka timestamp `timestamp` (ms since the epoch), read at `now_ms`,
/// was written more than `behind_after` ago. A record without a timestamp does not count.
fn is_behind(timestamp: Option<i64>, now_ms: i64, behind_after: Duration) -> bool {
    timestamp.is_some_and(|ts| now_ms.saturating_sub(ts) > behind_after.as_millis() as i64)
}

/// How a failed transactional call is handled.
enum Failure {
    /// Fenced by a newer instance: stop without writing.
    Fenced,
    /// The producer is unusable.
    Fatal,
    /// Abort the transaction and redo the batch.
    Abort,
    /// Try the same call again.
    Retry,
}

struct Engine {
    config: ProcessorConfig,
    topics: Topics,
    transactional_id: String,
    kafka: KafkaClientFactory,
    producer: BaseProducer,
    pipeline: RecordPipeline,
    state_codec: DedupEntryCodec,
    partitions: HashMap<i32, PartitionState>,
    batch: Option<Batch>,
    counters: Arc<ProcessorCounters>,
    /// An error raised inside a rebalance callback, returned by the loop.
    fatal: Option<ProcessorError>,
    last_sweep: Instant,
    scratch: Vec<u8>,
    /// Input records handled since the start (committed or not), for injected faults.
    consumed_total: u64,
    faults: ProcessorFaults,
    /// The Kafka call in progress, watched by the task that started this thread.
    watch: Arc<StepWatch>,
}

const COMMIT_RETRIES: usize = 5;

/// How long a TTL sweep may spend finding the text of expired keys in the changelog.
const SWEEP_LOOKUP_TIMEOUT: Duration = Duration::from_secs(120);

impl Engine {
    /// The injected stall, once it is due.
    fn take_due_stall(&mut self) -> Option<Duration> {
        match self.faults.stall_after_records {
            Some((after, stall)) if self.consumed_total >= after => {
                self.faults.stall_after_records = None;
                Some(stall)
            }
            _ => None,
        }
    }

    /// The injected batch failure, once it is due: a record librdkafka refuses.
    fn injected_send_failure(&mut self) -> Option<KafkaError> {
        let at = self.faults.fail_batch_at_records?;
        let consumed = self.batch.as_ref().map_or(0, |b| b.tally.consumed);
        if consumed < at {
            return None;
        }
        self.faults.fail_batch_at_records = None;
        tracing::warn!(
            consumed,
            "injected fault: sending to a partition that does not exist"
        );
        let record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.topics.output)
            .partition(i32::MAX)
            .payload(&b"injected fault"[..]);
        self.producer.send(record).err().map(|(e, _)| e)
    }

    /// Abort the open transaction. librdkafka's abort waits until no message of the
    /// transaction is outstanding, delivery reports included, and with a `BaseProducer` only
    /// this thread serves those (rdkafka's `abort_transaction` does not, unlike its commit),
    /// so serve them first. (Purging the queue here instead would leave the idempotent
    /// producer bumping its epoch, and the next batch's first send failing.)
    fn abort_transaction(&self) -> Result<(), KafkaError> {
        let deadline = Instant::now() + self.config.commit_timeout();
        loop {
            // not yet delivered by the deadline: the abort below still gets its 100 ms
            let _ = callsync_runtime::delivery::await_deliveries(
                &self.producer,
                deadline.saturating_duration_since(Instant::now()),
            );
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(100));
            match self.producer.abort_transaction(left) {
                Ok(()) => return Ok(()),
                Err(KafkaError::Transaction(e))
                    if e.is_retriable() && Instant::now() < deadline =>
                {
                    tracing::warn!(error = %e, "abort_transaction timed out; retrying");
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn take_fatal(&mut self) -> Result<(), ProcessorError> {
        match self.fatal.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Abort the batch in flight (best effort) without rewinding: the instance is stopping
    /// on an error and whoever takes its partitions resumes from the committed offsets.
    fn discard_batch(&mut self) {
        if self.batch.take().is_some() && self.producer.client().fatal_error().is_none() {
            if let Err(e) = self.abort_transaction() {
                tracing::warn!(error = %e, "aborting the batch in flight while stopping failed");
            }
        }
    }

    fn begin_batch(&mut self) -> Result<(), ProcessorError> {
        if self.batch.is_some() {
            return Ok(());
        }
        self.producer
            .begin_transaction()
            .map_err(|source| self.fatal_error("begin_transaction", source))?;
        self.batch = Some(Batch::new());
        Ok(())
    }

    /// Handle one input record inside the current batch (opened if needed).
    fn process(
        &mut self,
        message: &BorrowedMessage<'_>,
        consumer: &BaseConsumer<ProcessorContext>,
    ) -> Result<(), ProcessorError> {
        let partition = message.partition();
        if message.topic() != self.topics.input {
            return Ok(());
        }
        if !self.partitions.contains_key(&partition) {
            // not expected (assignment restores first), but never judge without state; no
            // transaction stays open through a restore
            self.commit_batch(consumer, &[])?;
            self.restore(consumer, &[partition])?;
        }
        self.begin_batch()?;
        let Some(batch) = self.batch.as_mut() else {
            return Ok(());
        };
        let offset = message.offset();
        batch.first_offsets.entry(partition).or_insert(offset);
        batch.next_offsets.insert(partition, offset + 1);
        batch.tally.consumed += 1;
        batch.catching_up = is_behind(
            message.timestamp().to_millis(),
            batch.now.timestamp_millis(),
            self.config.catch_up_after(),
        );
        self.consumed_total += 1;
        let now = batch.now;

        let refresh_after = (self.config.dedup_ttl_secs as i64).saturating_mul(1_000_000) / 4;
        let now_micros = now.timestamp_micros();
        let sent = match self.judge(message, partition, now, now_micros, refresh_after) {
            Err(rejected) => self.dead_letter(message, rejected),
            Ok(None) => Ok(()),
            Ok(Some(accepted)) => {
                let (Some(key), Some(batch)) = (message.key(), self.batch.as_mut()) else {
                    return Ok(());
                };
                batch.tally.emitted += 1;
                let payload: &[u8] = if accepted.normalized {
                    match self
                        .pipeline
                        .codec()
                        .encode(&accepted.record, &mut self.scratch)
                    {
                        Ok(()) => &self.scratch,
                        Err(e) => {
                            // Not reachable for validated records (validation rejects the
                            // money values the encoder refuses); if it happens the record goes
                            // to the DLQ and its staged state stays.
                            batch.tally.emitted -= 1;
                            let rejected = Rejected {
                                rejection: Rejection::new(
                                    RejectReason::Unencodable,
                                    "value",
                                    e.to_string(),
                                ),
                                stage: ErrorStage::Encode,
                            };
                            match self.dead_letter(message, rejected) {
                                Ok(()) => return Ok(()),
                                Err(e) => return self.fail_batch(consumer, "produce", e, &[]),
                            }
                        }
                    }
                } else {
                    message.payload().unwrap_or_default()
                };
                batch.sends += 1;
                send_waiting(
                    &self.producer,
                    BaseRecord::to(&self.topics.output)
                        .key(key)
                        .payload(payload),
                )
            }
        };
        if let Err(e) = sent {
            return self.fail_batch(consumer, "produce", e, &[]);
        }
        if let Some(e) = self.injected_send_failure() {
            return self.fail_batch(consumer, "produce (injected fault)", e, &[]);
        }
        let Some(batch) = self.batch.as_mut() else {
            return Ok(());
        };
        if batch.sends % 1024 == 1023 {
            self.producer.poll(Duration::ZERO);
        }
        if batch.tally.consumed as usize >= self.config.batch_max_records {
            self.commit_batch(consumer, &[])?;
        }
        Ok(())
    }

    /// Decode, dedup and validate one record, staging its state change and counting the
    /// dropped. `Ok(Some)` is a record to emit, `Ok(None)` one dropped as a duplicate or stale.
    fn judge(
        &mut self,
        message: &BorrowedMessage<'_>,
        partition: i32,
        now: DateTime<Utc>,
        now_micros: i64,
        refresh_after: i64,
    ) -> Result<Option<Accepted>, Rejected> {
        let call = self.pipeline.decode(message.key(), message.payload())?;
        // the key rule passed: the message key is the record's UTF-8 key
        let (Some(key), Some(state), Some(batch)) = (
            message.key().and_then(|k| std::str::from_utf8(k).ok()),
            self.partitions.get(&partition),
            self.batch.as_mut(),
        ) else {
            return Ok(None);
        };
        let staged = batch.staged.entry(partition).or_default();
        let key = StateKey::new(key);
        let verdict = match state.observe_version(
            staged,
            &key,
            call.version(),
            || call.content_fingerprint(),
            now_micros,
            refresh_after,
        ) {
            Some(verdict) => verdict,
            None => {
                let accepted = self.pipeline.accept(call, message.key(), now)?;
                let verdict = state.observe(
                    staged,
                    &key,
                    accepted.fingerprint,
                    accepted.record.version,
                    now_micros,
                    refresh_after,
                );
                if verdict == Verdict::Emit {
                    return Ok(Some(accepted));
                }
                verdict
            }
        };
        match verdict {
            Verdict::Duplicate => batch.tally.duplicates += 1,
            Verdict::Unchanged => batch.tally.unchanged += 1,
            Verdict::Stale => batch.tally.stale += 1,
            Verdict::Emit => {}
        }
        Ok(None)
    }

    fn dead_letter(
        &mut self,
        message: &BorrowedMessage<'_>,
        rejected: Rejected,
    ) -> Result<(), KafkaError> {
        let Some(batch) = self.batch.as_mut() else {
            return Ok(());
        };
        match rejected.stage {
            ErrorStage::Decode => batch.tally.undecodable += 1,
            ErrorStage::Validate | ErrorStage::Encode => batch.tally.invalid += 1,
        }
        *batch
            .dead_letters
            .entry((rejected.stage, rejected.rejection.reason))
            .or_default() += 1;
        batch.sends += 1;
        let headers = dlq_headers(
            message.headers(),
            &rejected.rejection,
            rejected.stage,
            SourcePosition {
                topic: message.topic(),
                partition: message.partition(),
                offset: message.offset(),
            },
        );
        let mut record: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(&self.topics.dlq).headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        send_waiting(&self.producer, record)
    }

    /// Close the batch by time (a busy consumer; an idle one closes it at once), and sweep
    /// expired state when due.
    fn tick(&mut self, consumer: &BaseConsumer<ProcessorContext>) -> Result<(), ProcessorError> {
        if let Some(batch) = &self.batch {
            if batch.started.elapsed() >= batch.max_time(&self.config) {
                self.commit_batch(consumer, &[])?;
            }
        }
        if self.last_sweep.elapsed() >= self.config.ttl_sweep_interval() {
            self.last_sweep = Instant::now();
            self.sweep_expired(consumer)?;
        }
        Ok(())
    }

    /// Write tombstones for the entries not seen within the TTL, in a transaction of their
    /// own. The state holds keys as hashes, so their texts are read back from the changelog
    /// first ([`find_changelog_keys`]), after committing the batch in flight, whose open
    /// transaction would keep that read_committed reader from reaching the changelog's end.
    /// The transaction also commits the partitions' committed offsets again, with the group's
    /// metadata: a member that lost its partitions (evicted, not yet told) is fenced by the
    /// group generation, and its tombstones are aborted with the transaction.
    fn sweep_expired(
        &mut self,
        consumer: &BaseConsumer<ProcessorContext>,
    ) -> Result<(), ProcessorError> {
        let ttl_micros = (self.config.dedup_ttl_secs as i64).saturating_mul(1_000_000);
        let cutoff = Utc::now().timestamp_micros().saturating_sub(ttl_micros);
        if !self.partitions.values().any(|s| s.has_expired(cutoff)) {
            return Ok(());
        }
        self.commit_batch(consumer, &[])?;
        if self.batch.is_some() {
            return Ok(());
        }
        let no_changes = StagedChanges::default();
        let mut wanted: HashMap<_, _> = self
            .partitions
            .iter()
            .map(|(&partition, state)| (partition, state.expired(&no_changes, cutoff)))
            .collect();
        let started = Instant::now();
        // bounded well inside max.poll.interval.ms: the group's consumer is not polled
        // meanwhile
        let timeout = self.config.restore_timeout().min(SWEEP_LOOKUP_TIMEOUT);
        let found = match find_changelog_keys(&self.kafka, &self.topics.state, &mut wanted, timeout)
        {
            Ok(found) => found,
            Err(e) => {
                // nothing staged yet: the next sweep tries again
                tracing::warn!(error = %e, "reading expired keys back from the changelog failed; sweep skipped");
                return Ok(());
            }
        };
        // not in the changelog (it was deleted or truncated behind our back): no record for a
        // tombstone to delete, so only forget them
        let mut forgotten = 0usize;
        for (partition, hashes) in &wanted {
            if let Some(state) = self.partitions.get_mut(partition) {
                forgotten += hashes.iter().filter(|h| state.forget(h)).count();
            }
        }
        if forgotten > 0 {
            tracing::warn!(
                forgotten,
                topic = %self.topics.state,
                "expired dedup keys not found in the changelog were dropped without a tombstone"
            );
        }
        if found.is_empty() {
            return Ok(());
        }
        let fence = match self.committed_positions(consumer) {
            Ok(offsets) if !offsets.is_empty() => offsets,
            Ok(_) => {
                tracing::debug!("no committed offset to fence the sweep with; sweep skipped");
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the committed offsets for the sweep failed; sweep skipped");
                return Ok(());
            }
        };
        self.begin_batch()?;
        let Some(batch) = self.batch.as_mut() else {
            return Ok(());
        };
        // committed again unchanged: only the group generation they carry matters
        batch.next_offsets = fence;
        let mut expired = 0;
        for (partition, keys) in &found {
            let staged = batch.staged.entry(*partition).or_default();
            for key in keys {
                staged.stage_deletion(&StateKey::new(key));
            }
            expired += keys.len();
        }
        batch.tally.expired += expired as u64;
        tracing::info!(
            expired,
            lookup_ms = started.elapsed().as_millis() as u64,
            "dedup entries expired (tombstones staged)"
        );
        self.commit_batch(consumer, &[])
    }

    /// The group's committed offsets of the partitions this member holds (those without one
    /// left out).
    fn committed_positions(
        &self,
        consumer: &BaseConsumer<ProcessorContext>,
    ) -> Result<BTreeMap<i32, i64>, KafkaError> {
        let mut tpl = TopicPartitionList::new();
        for &partition in self.partitions.keys() {
            tpl.add_partition(&self.topics.input, partition);
        }
        let committed = consumer.committed_offsets(tpl, self.config.commit_timeout())?;
        Ok(committed
            .elements_for_topic(&self.topics.input)
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(offset) => Some((e.partition(), offset)),
                _ => None,
            })
            .collect())
    }

    /// Write the batch's state changes and offsets and commit its transaction. On an
    /// abortable failure the batch is aborted and its partitions (except `revoking`) are
    /// rewound; that is not an error.
    fn commit_batch(
        &mut self,
        consumer: &BaseConsumer<ProcessorContext>,
        revoking: &[i32],
    ) -> Result<(), ProcessorError> {
        let commit_started = Instant::now();
        let Some(batch) = self.batch.as_mut() else {
            return Ok(());
        };
        let span = tracing::info_span!(
            "processor_batch",
            records = batch.tally.consumed,
            emitted = batch.tally.emitted,
            partitions = batch.next_offsets.len()
        );
        let _entered = span.enter();

        // 1. the dedup changelog: one record per changed key, a tombstone per deletion
        let mut writes = 0u64;
        let mut tombstones = 0u64;
        let mut send_error = None;
        'changes: for (partition, staged) in &batch.staged {
            for (key, entry) in staged.iter() {
                let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.topics.state)
                    .partition(*partition)
                    .key(key.as_bytes());
                match entry {
                    Some(entry) => {
                        let entry = callsync_schemas::DedupEntry::from(entry);
                        if let Err(e) = self.state_codec.encode(&entry, &mut self.scratch) {
                            tracing::error!(key, error = %e, "dedup entry not encodable; state not written");
                            continue;
                        }
                        record = record.payload(&self.scratch[..]);
                        writes += 1;
                    }
                    None => tombstones += 1,
                }
                if let Err(e) = send_waiting(&self.producer, record) {
                    send_error = Some(e);
                    break 'changes;
                }
            }
        }
        batch.tally.state_writes = writes;
        if let Some(e) = send_error {
            return self.fail_batch(consumer, "produce dedup state", e, revoking);
        }
        metrics::counter!(metric_names::PROCESSOR_STATE_WRITES_TOTAL, "kind" => "entry")
            .increment(writes);
        metrics::counter!(metric_names::PROCESSOR_STATE_WRITES_TOTAL, "kind" => "tombstone")
            .increment(tombstones);

        // (how long each step took, for the debug log)
        let t_changelog = commit_started.elapsed();
        // 2. the consumed offsets, with the group's metadata
        if !batch.next_offsets.is_empty() {
            let mut offsets = TopicPartitionList::new();
            for (&partition, &next) in &batch.next_offsets {
                if let Err(e) = offsets.add_partition_offset(
                    &self.topics.input,
                    partition,
                    Offset::Offset(next),
                ) {
                    return self.fail_batch(consumer, "send_offsets_to_transaction", e, revoking);
                }
            }
            let Some(group) = consumer.group_metadata() else {
                tracing::error!("the consumer has no group metadata; aborting the batch");
                return self.abort_batch(consumer, revoking, true);
            };
            let mut attempt = 0;
            let watch = self.watch.clone();
            loop {
                let step = watch.enter("send_offsets_to_transaction");
                let sent = self.producer.send_offsets_to_transaction(
                    &offsets,
                    &group,
                    self.config.commit_timeout(),
                );
                drop(step);
                match sent {
                    Ok(()) => break,
                    Err(e) => match classify(&self.producer, &e) {
                        Failure::Retry if attempt < COMMIT_RETRIES => attempt += 1,
                        _ => {
                            return self.fail_batch(
                                consumer,
                                "send_offsets_to_transaction",
                                e,
                                revoking,
                            )
                        }
                    },
                }
            }
        }

        let t_offsets = commit_started.elapsed();
        // 3. commit
        let mut attempt = 0;
        let watch = self.watch.clone();
        loop {
            let step = watch.enter("commit_transaction");
            if let Some(hang) = self.faults.hang_in_commit.take() {
                tracing::warn!(?hang, "injected fault: hanging in commit_transaction");
                std::thread::sleep(hang);
            }
            let committed = callsync_runtime::delivery::commit_transaction(
                &self.producer,
                self.config.commit_timeout(),
            );
            drop(step);
            match committed {
                Ok(()) => break,
                Err(e) => match classify(&self.producer, &e) {
                    Failure::Retry if attempt < COMMIT_RETRIES => {
                        attempt += 1;
                        tracing::warn!(error = %e, attempt, "commit_transaction failed; retrying");
                    }
                    _ => return self.fail_batch(consumer, "commit_transaction", e, revoking),
                },
            }
        }

        let Some(batch) = self.batch.take() else {
            return Ok(());
        };
        for (partition, staged) in batch.staged {
            if let Some(state) = self.partitions.get_mut(&partition) {
                state.apply(staged);
            }
        }
        self.counters.add_batch(&batch.tally);
        self.counters.commit_micros.fetch_add(
            commit_started.elapsed().as_micros() as u64,
            Ordering::Relaxed,
        );
        let t = &batch.tally;
        for (outcome, n) in [
            ("emitted", t.emitted),
            ("duplicate", t.duplicates),
            ("unchanged", t.unchanged),
            ("stale", t.stale),
            ("invalid", t.invalid),
            ("undecodable", t.undecodable),
        ] {
            metrics::counter!(RECORDS_TOTAL, "stage" => "processor", "outcome" => outcome)
                .increment(n);
        }
        for ((stage, reason), n) in &batch.dead_letters {
            metrics::counter!(DLQ_TOTAL, "stage" => stage.as_str(), "reason" => reason.code())
                .increment(*n);
        }
        metrics::counter!(metric_names::PROCESSOR_BATCHES_TOTAL, "outcome" => "committed")
            .increment(1);
        metrics::histogram!(metric_names::PROCESSOR_BATCH_SECONDS)
            .record(batch.started.elapsed().as_secs_f64());
        metrics::histogram!(metric_names::PROCESSOR_COMMIT_SECONDS)
            .record(commit_started.elapsed().as_secs_f64());
        metrics::histogram!(metric_names::PROCESSOR_BATCH_RECORDS).record(t.consumed as f64);
        tracing::debug!(
            consumed = t.consumed,
            emitted = t.emitted,
            duplicates = t.duplicates,
            stale = t.stale,
            dead_letters = t.invalid + t.undecodable,
            changelog_ms = t_changelog.as_secs_f64() * 1e3,
            offsets_ms = t_offsets.saturating_sub(t_changelog).as_secs_f64() * 1e3,
            commit_ms = commit_started
                .elapsed()
                .saturating_sub(t_offsets)
                .as_secs_f64()
                * 1e3,
            "batch committed"
        );
        self.publish_state_size();
        Ok(())
    }

    /// A transactional step failed: stop if fenced or fatal, else abort the batch, drop its
    /// staged state and rewind its partitions (but `revoking`) to their first offsets.
    fn fail_batch(
        &mut self,
        consumer: &BaseConsumer<ProcessorContext>,
        step: &'static str,
        error: KafkaError,
        revoking: &[i32],
    ) -> Result<(), ProcessorError> {
        match classify(&self.producer, &error) {
            Failure::Fenced => {
                self.batch = None;
                return Err(ProcessorError::Fenced {
                    transactional_id: self.transactional_id.clone(),
                    source: error,
                });
            }
            Failure::Fatal => {
                self.batch = None;
                return Err(self.fatal_error(step, error));
            }
            Failure::Abort | Failure::Retry => {}
        }
        tracing::warn!(step, error = %error, "transaction failed; aborting the batch and rewinding");
        self.abort_batch(consumer, revoking, true)
    }

    fn abort_batch(
        &mut self,
        consumer: &BaseConsumer<ProcessorContext>,
        revoking: &[i32],
        rewind: bool,
    ) -> Result<(), ProcessorError> {
        let Some(batch) = self.batch.take() else {
            return Ok(());
        };
        if let Err(e) = self.abort_transaction() {
            return Err(match classify(&self.producer, &e) {
                Failure::Fenced => ProcessorError::Fenced {
                    transactional_id: self.transactional_id.clone(),
                    source: e,
                },
                _ => self.fatal_error("abort_transaction", e),
            });
        }
        self.counters
            .batches_aborted
            .fetch_add(1, Ordering::Relaxed);
        metrics::counter!(metric_names::PROCESSOR_BATCHES_TOTAL, "outcome" => "aborted")
            .increment(1);
        if rewind {
            for (&partition, &first) in &batch.first_offsets {
                if revoking.contains(&partition) || !self.partitions.contains_key(&partition) {
                    continue;
                }
                if let Err(e) = consumer.seek(
                    &self.topics.input,
                    partition,
                    Offset::Offset(first),
                    self.config.commit_timeout(),
                ) {
                    // cannot rewind: fail so a restart resumes from the committed offsets
                    return Err(ProcessorError::Consume {
                        topic: self.topics.input.clone(),
                        source: e,
                    });
                }
            }
        }
        Ok(())
    }

    fn on_revoke(
        &mut self,
        consumer: &BaseConsumer<ProcessorContext>,
        revoked: &[i32],
        lost: bool,
    ) -> Result<(), ProcessorError> {
        tracing::info!(?revoked, lost, "partitions revoked");
        if lost {
            // the group has moved on: our offsets would be rejected; never commit
            self.abort_batch(consumer, revoked, true)?;
        } else {
            self.commit_batch(consumer, revoked)?;
        }
        for p in revoked {
            self.partitions.remove(p);
        }
        self.publish_state_size();
        Ok(())
    }

    fn on_assign(
        &mut self,
        consumer: &BaseConsumer<ProcessorContext>,
        assigned: &[i32],
    ) -> Result<(), ProcessorError> {
        let new: Vec<i32> = assigned
            .iter()
            .copied()
            .filter(|p| !self.partitions.contains_key(p))
            .collect();
        tracing::info!(?assigned, restoring = ?new, "partitions assigned");
        if !new.is_empty() {
            // a restore can take seconds: the batch in flight must not stay open past the
            // transaction timeout meanwhile
            self.commit_batch(consumer, &[])?;
        }
        self.restore(consumer, &new)
    }

    /// Restore the state of `partitions`: first wait until their committed offsets are
    /// stable (no transaction of a previous owner still pending), then read the changelog.
    fn restore(
        &mut self,
        consumer: &BaseConsumer<ProcessorContext>,
        partitions: &[i32],
    ) -> Result<(), ProcessorError> {
        if partitions.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let mut tpl = TopicPartitionList::new();
        for &p in partitions {
            tpl.add_partition(&self.topics.input, p);
        }
        consumer
            .committed_offsets(tpl, self.config.restore_timeout())
            .map_err(|source| RestoreError::CommittedOffsets {
                topic: self.topics.input.clone(),
                partitions: partitions.to_vec(),
                source,
            })?;
        let (states, stats) = restore_partitions(
            &self.kafka,
            &self.topics.state,
            partitions,
            self.config.restore_timeout(),
        )?;
        self.partitions.extend(states);
        let elapsed = started.elapsed();
        self.counters
            .partitions_restored
            .fetch_add(stats.partitions as u64, Ordering::Relaxed);
        self.counters
            .keys_restored
            .fetch_add(stats.keys, Ordering::Relaxed);
        self.counters
            .restore_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        metrics::histogram!(metric_names::PROCESSOR_RESTORE_SECONDS).record(elapsed.as_secs_f64());
        tracing::info!(
            ?partitions,
            keys = stats.keys,
            changelog_records = stats.records,
            unreadable = stats.unreadable,
            elapsed_ms = elapsed.as_millis() as u64,
            "dedup state restored"
        );
        self.publish_state_size();
        Ok(())
    }

    fn publish_state_size(&self) {
        let mut keys = 0;
        let mut bytes = 0;
        for (partition, state) in &self.partitions {
            keys += state.len();
            bytes += state.approx_heap_bytes();
            metrics::gauge!(DEDUP_STATE_ENTRIES, "partition" => partition.to_string())
                .set(state.len() as f64);
        }
        metrics::gauge!(DEDUP_STATE_BYTES).set(bytes as f64);
        self.counters
            .state_keys
            .store(keys as u64, Ordering::Relaxed);
        self.counters
            .state_bytes
            .store(bytes as u64, Ordering::Relaxed);
    }

    fn fatal_error(&self, step: &'static str, source: KafkaError) -> ProcessorError {
        if matches!(classify(&self.producer, &source), Failure::Fenced) {
            return ProcessorError::Fenced {
                transactional_id: self.transactional_id.clone(),
                source,
            };
        }
        ProcessorError::Transaction {
            step,
            transactional_id: self.transactional_id.clone(),
            source,
        }
    }
}

fn classify(producer: &BaseProducer, error: &KafkaError) -> Failure {
    let fenced_code = |code: RDKafkaErrorCode| {
        matches!(
            code,
            RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
        )
    };
    if let Some((code, _)) = producer.client().fatal_error() {
        return if fenced_code(code) {
            Failure::Fenced
        } else {
            Failure::Fatal
        };
    }
    match error {
        KafkaError::Transaction(e) if e.is_fatal() => {
            if fenced_code(e.code()) {
                Failure::Fenced
            } else {
                Failure::Fatal
            }
        }
        KafkaError::Transaction(e) if e.txn_requires_abort() => Failure::Abort,
        KafkaError::Transaction(e) if e.is_retriable() => Failure::Retry,
        KafkaError::Flush(_) => Failure::Retry,
        _ => Failure::Abort,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_counts_as_behind_only_past_the_threshold() {
        let after = Duration::from_millis(1_000);
        assert!(!is_behind(Some(10_000), 10_500, after));
        assert!(!is_behind(Some(10_000), 11_000, after));
        assert!(is_behind(Some(10_000), 11_001, after));
        assert!(!is_behind(None, 11_001, after), "no timestamp: not behind");
        // a producer clock ahead of ours is not behind
        assert!(!is_behind(Some(20_000), 11_001, after));
    }

    #[test]
    fn a_batch_that_is_catching_up_may_stay_open_longer() {
        let config = ProcessorConfig::default();
        let mut batch = Batch::new();
        assert_eq!(batch.max_time(&config), config.batch_max_time());
        batch.catching_up = true;
        assert_eq!(batch.max_time(&config), config.catch_up_batch_max_time());
        assert!(config.catch_up_batch_max_time() > config.batch_max_time());
    }
}
