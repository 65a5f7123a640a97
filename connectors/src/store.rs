//! Where a sync's output goes: [`SyncStore`] opens a [`SyncSession`] per sync, which reads the
//! cursors back and commits each page (records for `calls.raw`, DLQ records, the new cursor
//! and any progress event) atomically.
//!
//! [`KafkaSyncStore`] is the real one: a transactional producer per (provider, account, mode)
//! — opening it fences (and aborts the open transaction of) any earlier process with the same
//! `transactional.id`, so a killed sync's half-written page never becomes visible — and a
//! read_committed read of `callsync.source-offsets` to its end. [`MemorySyncStore`] serves
//! unit tests and the benchmark.
//!
//! The id is named after the scope, not the process
//! (`{topic_prefix}{transactional_id_prefix}-{scope}`, [`TransactionalId::scoped`]): any number
//! of connector processes share one config, and since one account's sync requests reach one
//! worker at a time, two sessions of a scope meet only when one is a zombie (a worker that
//! lost its requests' partition, or a killed one), which the newer one fences.
//!
//! A transactional call into librdkafka can block without a bound (see
//! [`callsync_runtime::step_watch`]). The Kafka store gives `init_transactions` and each
//! page's commit (begin, commit, abort) twice its timeout ([`KafkaSyncStore::stuck_after`]);
//! past that, the call fails with [`StoreError::Stuck`] naming the step, the scope and the
//! transactional id, and the session is abandoned: its producer is never used again (its
//! transaction's state is unknown) and every later commit of it fails the same way. The
//! connector role then ends with that error. The stuck transaction is aborted by the broker
//! (`transaction.timeout.ms`) or fenced when the scope is opened again, and the sync resumes
//! from the last committed cursor: the page given up is written once or not at all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use callsync_runtime::{names, Isolation, KafkaClientFactory, StepWatch, TransactionalId};
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::cursor::SourceCursor;
use crate::error::StoreError;

/// One Kafka record to write.
#[derive(Debug, Clone, PartialEq)]
pub struct OutRecord {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Everything one page produces, committed together or not at all.
#[derive(Debug, Clone, Default)]
pub struct CommitBatch {
    /// For `calls.raw`.
    pub records: Vec<OutRecord>,
    /// For `calls.dlq`.
    pub dlq: Vec<OutRecord>,
    /// For `callsync.sync-events`.
    pub events: Vec<OutRecord>,
    /// For `callsync.source-offsets`.
    pub cursor: Option<SourceCursor>,
}

/// Opens sessions.
#[async_trait]
pub trait SyncStore: Send + Sync {
    /// A session for `scope` (`{provider}-{account}-{mode}`). Opening fences every earlier
    /// session of the same scope.
    async fn open(&self, scope: &str) -> Result<Arc<dyn SyncSession>, StoreError>;
}

/// One sync's writer.
#[async_trait]
pub trait SyncSession: Send + Sync {
    /// Every committed cursor whose key starts with `prefix`.
    async fn cursors(&self, prefix: &str) -> Result<HashMap<String, SourceCursor>, StoreError>;
    /// Commits a page atomically.
    async fn commit(&self, batch: CommitBatch) -> Result<(), StoreError>;
}

// ---------------------------------------------------------------------------------------
// Kafka

/// Topic names (prefix applied) a Kafka store writes.
#[derive(Debug, Clone)]
pub struct StoreTopics {
    pub calls_raw: String,
    pub calls_dlq: String,
    pub sync_events: String,
    pub source_offsets: String,
}

impl StoreTopics {
    pub fn from_factory(factory: &KafkaClientFactory) -> Self {
        let s = factory.settings();
        StoreTopics {
            calls_raw: s.topic(names::CALLS_RAW),
            calls_dlq: s.topic(names::CALLS_DLQ),
            sync_events: s.topic(names::SYNC_EVENTS),
            source_offsets: s.topic(names::SOURCE_OFFSETS),
        }
    }
}

/// Faults a test injects into a [`KafkaSyncStore`], to drive it down its failure paths on a
/// real broker. [`StoreFaults::default`] injects none.
#[derive(Debug, Clone, Default)]
pub struct StoreFaults {
    /// In every session's first commit, once its records are sent, hold the thread inside the
    /// `commit_transaction` step for the given time (then commit), as a librdkafka call that
    /// does not return would.
    pub hang_in_commit: Option<Duration>,
    /// In `open`, hold the thread inside the `init_transactions` step for the given time.
    pub hang_in_open: Option<Duration>,
}

/// The exactly-once store on Kafka.
#[derive(Debug, Clone)]
pub struct KafkaSyncStore {
    factory: KafkaClientFactory,
    topics: StoreTopics,
    transactional_id_prefix: String,
    timeout: Duration,
    stuck_after: Duration,
    faults: StoreFaults,
}

impl KafkaSyncStore {
    pub fn new(
        factory: KafkaClientFactory,
        transactional_id_prefix: impl Into<String>,
        timeout: Duration,
    ) -> Self {
        KafkaSyncStore {
            topics: StoreTopics::from_factory(&factory),
            factory,
            transactional_id_prefix: transactional_id_prefix.into(),
            timeout,
            stuck_after: timeout.saturating_mul(2),
            faults: StoreFaults::default(),
        }
    }

    pub fn topics(&self) -> &StoreTopics {
        &self.topics
    }

    /// How long a transactional call may run before the session gives it up as stuck
    /// (default: twice the store's timeout, which librdkafka is given for each call).
    pub fn stuck_after(&self) -> Duration {
        self.stuck_after
    }

    /// Gives transactional calls up after `limit` instead of twice the timeout (tests).
    pub fn with_stuck_after(mut self, limit: Duration) -> Self {
        self.stuck_after = limit;
        self
    }

    /// Injects `faults` (tests).
    pub fn with_faults(mut self, faults: StoreFaults) -> Self {
        self.faults = faults;
        self
    }
}

/// Runs `call` on a blocking thread whose transactional steps `watch` marks, and gives it up
/// (`StoreError::Stuck`) once a step has run longer than `limit`. A call given up keeps its
/// thread: it is left behind, and whatever it holds must not be used again.
async fn run_watched<T: Send + 'static>(
    call: impl FnOnce(&StepWatch) -> Result<T, StoreError> + Send + 'static,
    task: &'static str,
    limit: Duration,
    scope: &str,
    transactional_id: &str,
) -> Result<T, StoreError> {
    let watch = Arc::new(StepWatch::default());
    let blocking = tokio::task::spawn_blocking({
        let watch = watch.clone();
        move || call(&watch)
    });
    tokio::select! {
        done = blocking => done.map_err(|e| StoreError::Other(format!("{task} task: {e}")))?,
        (step, running) = watch.stuck_longer_than(limit) => {
            tracing::error!(
                step,
                scope,
                transactional_id,
                running_secs = running.as_secs(),
                limit_secs = limit.as_secs(),
                "a Kafka transaction call did not return; abandoning its producer (its thread is left behind)"
            );
            Err(StoreError::Stuck {
                step,
                scope: scope.to_string(),
                transactional_id: transactional_id.to_string(),
                secs: running.as_secs(),
            })
        }
    }
}

#[async_trait]
impl SyncStore for KafkaSyncStore {
    async fn open(&self, scope: &str) -> Result<Arc<dyn SyncSession>, StoreError> {
        let id = TransactionalId::scoped(
            &self.factory.settings().topic_prefix,
            &self.transactional_id_prefix,
            scope,
        )
        .to_string();
        let factory = self.factory.clone();
        let timeout = self.timeout;
        let hang = self.faults.hang_in_open;
        let producer = run_watched(
            {
                let id = id.clone();
                move |watch| {
                    let _step = watch.enter("init_transactions");
                    if let Some(hang) = hang {
                        tracing::warn!(?hang, "injected fault: hanging in init_transactions");
                        std::thread::sleep(hang);
                    }
                    Ok(factory.transactional_producer(&id, timeout)?)
                }
            },
            "transactional producer",
            self.stuck_after,
            scope,
            &id,
        )
        .await?;
        Ok(Arc::new(KafkaSyncSession {
            producer,
            factory: self.factory.clone(),
            topics: self.topics.clone(),
            scope: scope.to_string(),
            transactional_id: id,
            timeout: self.timeout,
            stuck_after: self.stuck_after,
            hang_in_commit: Mutex::new(self.faults.hang_in_commit),
            abandoned: Mutex::new(None),
            lock: tokio::sync::Mutex::new(()),
        }))
    }
}

struct KafkaSyncSession {
    producer: FutureProducer,
    factory: KafkaClientFactory,
    topics: StoreTopics,
    scope: String,
    transactional_id: String,
    timeout: Duration,
    stuck_after: Duration,
    /// Injected once, at the first commit.
    hang_in_commit: Mutex<Option<Duration>>,
    /// The step given up as stuck and how long it had run: the producer is not used again.
    abandoned: Mutex<Option<(&'static str, u64)>>,
    lock: tokio::sync::Mutex<()>,
}

impl KafkaSyncSession {
    fn abandoned(&self) -> Option<StoreError> {
        let abandoned = *self.abandoned.lock().unwrap_or_else(|p| p.into_inner());
        abandoned.map(|(step, secs)| StoreError::Stuck {
            step,
            scope: self.scope.clone(),
            transactional_id: self.transactional_id.clone(),
            secs,
        })
    }
}

fn kafka_err<'a>(
    operation: &'static str,
    scope: &'a str,
) -> impl Fn(KafkaError) -> StoreError + 'a {
    move |source| StoreError::Kafka {
        operation,
        scope: scope.to_string(),
        source,
    }
}

fn headers_of(rec: &OutRecord) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(rec.headers.len());
    for (k, v) in &rec.headers {
        h = h.insert(Header {
            key: k.as_str(),
            value: Some(v.as_slice()),
        });
    }
    h
}

fn send_all(
    producer: &FutureProducer,
    topic: &str,
    records: &[OutRecord],
    scope: &str,
) -> Result<(), StoreError> {
    for rec in records {
        loop {
            let mut fr = FutureRecord::to(topic).key(&rec.key).payload(&rec.value);
            if !rec.headers.is_empty() {
                fr = fr.headers(headers_of(rec));
            }
            match producer.send_result(fr) {
                // delivery is confirmed by commit_transaction, which flushes
                Ok(_delivery) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(kafka_err("produce", scope)(e)),
            }
        }
    }
    Ok(())
}

#[async_trait]
impl SyncSession for KafkaSyncSession {
    async fn cursors(&self, prefix: &str) -> Result<HashMap<String, SourceCursor>, StoreError> {
        let factory = self.factory.clone();
        let topic = self.topics.source_offsets.clone();
        let timeout = self.timeout;
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || read_cursors(&factory, &topic, &prefix, timeout))
            .await
            .map_err(|e| StoreError::Other(format!("cursor reader task: {e}")))?
    }

    async fn commit(&self, batch: CommitBatch) -> Result<(), StoreError> {
        let _guard = self.lock.lock().await;
        // a session whose transaction call was given up never touches its producer again
        if let Some(stuck) = self.abandoned() {
            return Err(stuck);
        }
        let producer = self.producer.clone();
        let topics = self.topics.clone();
        let scope = self.scope.clone();
        let timeout = self.timeout;
        let hang = self
            .hang_in_commit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let call = move |watch: &StepWatch| {
            let step = watch.enter("begin_transaction");
            producer
                .begin_transaction()
                .map_err(kafka_err("begin transaction", &scope))?;
            drop(step);
            let mut result = send_all(&producer, &topics.calls_raw, &batch.records, &scope)
                .and_then(|_| send_all(&producer, &topics.calls_dlq, &batch.dlq, &scope))
                .and_then(|_| send_all(&producer, &topics.sync_events, &batch.events, &scope));
            if result.is_ok() {
                if let Some(cursor) = &batch.cursor {
                    let rec = OutRecord {
                        key: cursor.key().into_bytes(),
                        value: cursor.to_json(),
                        headers: Vec::new(),
                    };
                    result = send_all(
                        &producer,
                        &topics.source_offsets,
                        std::slice::from_ref(&rec),
                        &scope,
                    );
                }
            }
            if let Err(e) = result {
                let _step = watch.enter("abort_transaction");
                let _ = producer.abort_transaction(timeout);
                return Err(e);
            }
            let step = watch.enter("commit_transaction");
            if let Some(hang) = hang {
                tracing::warn!(?hang, "injected fault: hanging in commit_transaction");
                std::thread::sleep(hang);
            }
            let committed =
                callsync_runtime::delivery::commit_future_transaction(&producer, timeout);
            drop(step);
            if let Err(e) = committed {
                let abortable = matches!(&e, KafkaError::Transaction(t) if t.txn_requires_abort());
                if abortable {
                    let _step = watch.enter("abort_transaction");
                    let _ = producer.abort_transaction(timeout);
                }
                return Err(kafka_err("commit transaction", &scope)(e));
            }
            Ok(())
        };
        let result = run_watched(
            call,
            "commit",
            self.stuck_after,
            &self.scope,
            &self.transactional_id,
        )
        .await;
        if let Err(StoreError::Stuck { step, secs, .. }) = &result {
            *self.abandoned.lock().unwrap_or_else(|p| p.into_inner()) = Some((*step, *secs));
        }
        result
    }
}

/// Reads `topic` from the beginning to its end (read_committed) and returns the newest cursor
/// per key starting with `prefix` (tombstones delete).
pub fn read_cursors(
    factory: &KafkaClientFactory,
    topic: &str,
    prefix: &str,
    timeout: Duration,
) -> Result<HashMap<String, SourceCursor>, StoreError> {
    let mut cfg = factory.consumer_config("callsync-cursor-reader", Isolation::ReadCommitted);
    cfg.remove("partition.assignment.strategy");
    let consumer = factory.create_read_to_end("cursor reader", &cfg)?;
    let scope = format!("topic {topic}");
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(kafka_err("metadata", &scope))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if partitions.is_empty() {
        return Err(StoreError::Other(format!(
            "topic {topic} does not exist or has no partitions (run `callsync topics ensure`)"
        )));
    }
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .map_err(kafka_err("assign", &scope))?;
    }
    consumer.assign(&tpl).map_err(kafka_err("assign", &scope))?;
    let mut remaining: std::collections::HashSet<i32> = partitions.into_iter().collect();
    let mut out = HashMap::new();
    let started = Instant::now();
    while !remaining.is_empty() {
        if started.elapsed() > timeout {
            return Err(StoreError::ReadTimeout {
                topic: topic.to_string(),
                waited: timeout,
            });
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                remaining.remove(&p);
            }
            Some(Err(e)) => return Err(kafka_err("read", &scope)(e)),
            Some(Ok(msg)) => {
                let Some(key) = msg.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                    continue;
                };
                if !key.starts_with(prefix) {
                    continue;
                }
                match msg.payload() {
                    None => {
                        out.remove(key);
                    }
                    Some(bytes) => {
                        let cursor: SourceCursor =
                            serde_json::from_slice(bytes).map_err(|e| StoreError::BadCursor {
                                topic: topic.to_string(),
                                key: key.to_string(),
                                detail: e.to_string(),
                            })?;
                        out.insert(key.to_string(), cursor);
                    }
                }
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Memory

/// What a [`MemorySyncStore`] holds (committed batches only).
#[derive(Debug, Default, Clone)]
pub struct MemoryTopics {
    pub records: Vec<OutRecord>,
    pub dlq: Vec<OutRecord>,
    pub events: Vec<OutRecord>,
    pub cursors: HashMap<String, SourceCursor>,
    pub commits: u64,
}

/// An in-memory store with the same atomicity as the Kafka one; `fail_after_commits` makes
/// the Nth commit fail (a crash between pages, for resume tests).
#[derive(Debug, Default, Clone)]
pub struct MemorySyncStore {
    pub state: Arc<Mutex<MemoryTopics>>,
    pub fail_after_commits: Arc<Mutex<Option<u64>>>,
}

impl MemorySyncStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn snapshot(&self) -> MemoryTopics {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The next commit after `n` more commits fails.
    pub fn fail_after(&self, n: Option<u64>) {
        *self
            .fail_after_commits
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = n;
    }
}

#[async_trait]
impl SyncStore for MemorySyncStore {
    async fn open(&self, _scope: &str) -> Result<Arc<dyn SyncSession>, StoreError> {
        Ok(Arc::new(self.clone()))
    }
}

#[async_trait]
impl SyncSession for MemorySyncStore {
    async fn cursors(&self, prefix: &str) -> Result<HashMap<String, SourceCursor>, StoreError> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Ok(s.cursors
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn commit(&self, batch: CommitBatch) -> Result<(), StoreError> {
        {
            let mut f = self
                .fail_after_commits
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(n) = f.as_mut() {
                if *n == 0 {
                    return Err(StoreError::Other("injected commit failure".to_string()));
                }
                *n -= 1;
            }
        }
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.records.extend(batch.records);
        s.dlq.extend(batch.dlq);
        s.events.extend(batch.events);
        if let Some(c) = batch.cursor {
            s.cursors.insert(c.key(), c);
        }
        s.commits += 1;
        Ok(())
    }
}
