//! Sync workers: a consumer group on `callsync.sync-requests` that runs each request through a
//! [`SyncExecutor`].
//!
//! - At most `max_concurrent` syncs at once (default 3) and at most one per provider account.
//! - A request with `not_before` in the future waits in memory; its offset stays uncommitted
//!   until it has run, so a crash loses nothing.
//! - A failed sync is re-enqueued as a new request with the same id, `attempt + 1` and a
//!   growing `not_before` (5 min, 10 min, ... up to a maximum), until `max_attempts`.
//! - **A sync id runs once.** Every scheduler replica writes the same id for the same slot,
//!   keyed `{provider}/{account}`, so the duplicates land on one partition and reach one worker
//!   in order. Before running a request the worker claims it by writing a `started` event to
//!   the compacted `callsync.sync-events` (keyed by sync id, acks=all) and consults the
//!   [`SyncStatusStore`] fed by that topic: a completed id is skipped, a failed one runs only
//!   as a later attempt, a running one (on this worker or another) waits until it ends or its
//!   claim goes stale (`claim_ttl` without any event: its worker died), see [`admit`].
//! - Offsets are committed up to the oldest request not yet finished, per partition.
//! - A request whose window is out of bounds ([`check_window`]) fails for good without
//!   running, and a sync that panics fails for good too: its account is freed, its failure
//!   recorded, and its offset committed, so it does not panic again after every restart.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use callsync_runtime::{Isolation, KafkaClientFactory, Shutdown};
use callsync_schemas::{SyncEvent, SyncEventKind, SyncRequest};
use chrono::{DateTime, Utc};
use futures::FutureExt as _;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::publish::{SyncCodec, SyncPublisher};
use super::status::{SyncState, SyncStatus, SyncStatusStore};
use super::trigger::check_window;

/// Syncs finished by workers, labelled `provider`, `mode`, `outcome` (completed, failed,
/// retry_scheduled, skipped_duplicate, unreadable).
pub const SYNCS_TOTAL: &str = "callsync_syncs_total";
/// Syncs running now on this worker.
pub const SYNCS_RUNNING: &str = "callsync_syncs_running";
/// Requests received and not yet run on this worker (waiting for a slot, an account or
/// their `not_before`).
pub const SYNC_REQUESTS_WAITING: &str = "callsync_sync_requests_waiting";
/// Seconds a sync took, labelled `provider`, `mode`.
pub const SYNC_SECONDS: &str = "callsync_sync_seconds";

/// What a finished sync did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncSummary {
    pub records: i64,
    pub pages: i64,
}

/// Why a sync failed, and whether running it again may help (an auth error will not).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SyncFailure {
    pub message: String,
    pub retryable: bool,
}

impl SyncFailure {
    pub fn retryable(message: impl Into<String>) -> Self {
        SyncFailure {
            message: message.into(),
            retryable: true,
        }
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        SyncFailure {
            message: message.into(),
            retryable: false,
        }
    }
}

/// Runs one sync (implemented with the connectors' `run_sync`). The worker writes the
/// `started`, `completed` and `failed` events itself; the executor may add `progress` ones.
#[async_trait]
pub trait SyncExecutor: Send + Sync + 'static {
    async fn execute(&self, request: &SyncRequest) -> Result<SyncSummary, SyncFailure>;
}

/// When failed syncs run again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay after the first failure (default 5 min).
    pub initial_delay: Duration,
    /// Each further failure multiplies the delay by this (default 2).
    pub multiplier: u32,
    /// The delay never grows past this (default 1 h).
    pub max_delay: Duration,
    /// Attempts in all, the first included (default 5).
    pub max_attempts: i32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_delay: Duration::from_secs(300),
            multiplier: 2,
            max_delay: Duration::from_secs(3600),
            max_attempts: 5,
        }
    }
}

impl RetryPolicy {
    /// The delay before the attempt after `failed_attempt` (1-based).
    pub fn delay_after(&self, failed_attempt: i32) -> Duration {
        let exponent = failed_attempt.saturating_sub(1).clamp(0, 30) as u32;
        let factor = self.multiplier.max(1).saturating_pow(exponent);
        self.initial_delay
            .saturating_mul(factor)
            .min(self.max_delay)
    }
}

/// Settings of the worker pool.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Consumer group of the workers (default `callsync-workers`).
    pub group_id: String,
    /// Syncs at once (default 3).
    pub max_concurrent: usize,
    pub retry: RetryPolicy,
    /// A sync whose latest event is older than this is taken as abandoned (default 30 min).
    pub claim_ttl: Duration,
    /// Requests held in memory before the worker stops reading more (default 1000).
    pub max_waiting: usize,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            group_id: "callsync-workers".to_string(),
            max_concurrent: 3,
            retry: RetryPolicy::default(),
            claim_ttl: Duration::from_secs(1800),
            max_waiting: 1000,
        }
    }
}

/// Whether a request may run now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Run,
    /// Not to be run: it already ran (or runs) under the same id and attempt.
    Skip(&'static str),
    /// Another run of this id is in progress; check again at `until` (or when a local
    /// sync ends, for `None`).
    Wait {
        until: Option<DateTime<Utc>>,
    },
}

/// Decides whether `request` runs, given what is known of its id.
pub fn admit(
    request: &SyncRequest,
    status: Option<&SyncStatus>,
    running_here: bool,
    now: DateTime<Utc>,
    claim_ttl: Duration,
) -> Admission {
    if running_here {
        return Admission::Wait { until: None };
    }
    let Some(status) = status else {
        return Admission::Run;
    };
    let known_attempt = status.attempt.unwrap_or(1);
    match status.state {
        SyncState::Requested => Admission::Run,
        SyncState::Completed => Admission::Skip("already completed"),
        SyncState::Failed if request.attempt > known_attempt => Admission::Run,
        SyncState::Failed => Admission::Skip("this attempt already failed"),
        SyncState::Running if status.attempt.is_some() && request.attempt > known_attempt => {
            Admission::Run
        }
        SyncState::Running => {
            let ttl = chrono::Duration::from_std(claim_ttl).unwrap_or(chrono::Duration::MAX);
            let stale_at = status
                .updated_at
                .checked_add_signed(ttl)
                .unwrap_or(DateTime::<Utc>::MAX_UTC);
            if now >= stale_at {
                Admission::Run
            } else {
                Admission::Wait {
                    until: Some(stale_at),
                }
            }
        }
    }
}

/// Setting up the workers failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("creating the workers' consumer: {0}")]
    Consumer(String),
    #[error("subscribing to {topic}: {reason}")]
    Subscribe { topic: String, reason: String },
}

/// Hands the partitions a rebalance takes away to the dispatcher, which then drops the
/// requests of those partitions that have not started (their new owner reads them again).
#[derive(Default)]
pub struct WorkerConsumerContext {
    revoked: Mutex<Vec<(String, i32)>>,
}

impl ClientContext for WorkerConsumerContext {}

impl ConsumerContext for WorkerConsumerContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            tracing::info!(
                partitions = ?partition_ids(partitions),
                lost = consumer.assignment_lost(),
                "sync request partitions revoked"
            );
            if let Ok(mut revoked) = self.revoked.lock() {
                for e in partitions.elements() {
                    revoked.push((e.topic().to_string(), e.partition()));
                }
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => tracing::info!(
                partitions = ?partition_ids(partitions),
                "sync request partitions assigned"
            ),
            Rebalance::Error(error) => {
                tracing::warn!(%error, "sync request consumer rebalance failed")
            }
            Rebalance::Revoke(_) => {}
        }
    }
}

fn partition_ids(partitions: &TopicPartitionList) -> Vec<i32> {
    partitions
        .elements()
        .iter()
        .map(|e| e.partition())
        .collect()
}

impl WorkerConsumerContext {
    fn take_revoked(&self) -> Vec<(String, i32)> {
        self.revoked
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default()
    }
}

pub type WorkerConsumer = StreamConsumer<WorkerConsumerContext>;

/// The workers' consumer, subscribed to `requests_topic` (a full name).
pub fn worker_consumer(
    factory: &KafkaClientFactory,
    group_id: &str,
    requests_topic: &str,
) -> Result<WorkerConsumer, WorkerError> {
    let consumer: WorkerConsumer = factory
        .consumer_with_context(
            group_id,
            Isolation::ReadCommitted,
            WorkerConsumerContext::default(),
        )
        .map_err(|e| WorkerError::Consumer(e.to_string()))?;
    consumer
        .subscribe(&[requests_topic])
        .map_err(|e| WorkerError::Subscribe {
            topic: requests_topic.to_string(),
            reason: e.to_string(),
        })?;
    Ok(consumer)
}

type PartitionKey = (String, i32);

struct Waiting {
    request: SyncRequest,
    partition: PartitionKey,
    offset: i64,
    wait_until: Option<DateTime<Utc>>,
}

#[derive(Default)]
struct PartitionProgress {
    outstanding: BTreeSet<i64>,
    next: i64,
    committed: i64,
}

enum RunOutcome {
    /// Done with this offset (completed, failed for good, or handed to a retry request).
    Finished,
    /// Could not claim or hand over: keep the request (and its offset) and try again later.
    Requeue {
        request: SyncRequest,
        at: DateTime<Utc>,
    },
}

struct RunDone {
    partition: PartitionKey,
    offset: i64,
    account: String,
    sync_id: String,
    outcome: RunOutcome,
}

/// The worker pool. Build it, then [`SyncWorkers::run`] until shutdown.
pub struct SyncWorkers {
    consumer: WorkerConsumer,
    executor: Arc<dyn SyncExecutor>,
    publisher: Arc<dyn SyncPublisher>,
    codec: Arc<dyn SyncCodec>,
    store: SyncStatusStore,
    settings: WorkerSettings,
}

impl SyncWorkers {
    pub fn new(
        consumer: WorkerConsumer,
        executor: Arc<dyn SyncExecutor>,
        publisher: Arc<dyn SyncPublisher>,
        codec: Arc<dyn SyncCodec>,
        store: SyncStatusStore,
        settings: WorkerSettings,
    ) -> Self {
        SyncWorkers {
            consumer,
            executor,
            publisher,
            codec,
            store,
            settings,
        }
    }

    /// Runs requests until `shutdown`; then stops reading, lets running syncs finish, commits
    /// and returns. Requests still waiting stay uncommitted and are read again later.
    pub async fn run(self, shutdown: Shutdown) {
        let mut state = Dispatcher {
            waiting: VecDeque::new(),
            progress: BTreeMap::new(),
            running: JoinSet::new(),
            running_tasks: HashMap::new(),
            running_accounts: HashSet::new(),
            running_ids: HashSet::new(),
            workers: &self,
        };
        let mut draining = false;
        loop {
            for partition in self.consumer.context().take_revoked() {
                state.drop_partition(&partition);
            }
            if !draining {
                state.start_admissible(Utc::now());
            }
            metrics::gauge!(SYNCS_RUNNING).set(state.running.len() as f64);
            metrics::gauge!(SYNC_REQUESTS_WAITING).set(state.waiting.len() as f64);
            if draining && state.running.is_empty() {
                break;
            }
            let wake = state.next_wake(Utc::now());
            let can_read = !draining && state.waiting.len() < self.settings.max_waiting;
            tokio::select! {
                _ = shutdown.wait(), if !draining => {
                    tracing::info!(running = state.running.len(), "sync workers draining");
                    draining = true;
                }
                message = self.consumer.recv(), if can_read => {
                    // the borrowed message is not Send: handle it before any await
                    let failure = match message {
                        Ok(m) => {
                            state.accept(&m);
                            None
                        }
                        Err(e) => Some(e.to_string()),
                    };
                    if let Some(error) = failure {
                        tracing::warn!(%error, "reading sync requests");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                Some(done) = state.running.join_next_with_id(), if !state.running.is_empty() => match done {
                    Ok((id, done)) => {
                        state.running_tasks.remove(&id);
                        state.finish_run(done);
                    }
                    Err(e) => state.lose_run(e),
                },
                _ = tokio::time::sleep(wake) => {}
            }
        }
        state.commit_all(CommitMode::Sync);
        tracing::info!("sync workers stopped");
    }
}

/// What the dispatcher knows of a running task, to free its account should it die.
struct RunningTask {
    partition: PartitionKey,
    offset: i64,
    account: String,
    sync_id: String,
}

struct Dispatcher<'a> {
    waiting: VecDeque<Waiting>,
    progress: BTreeMap<PartitionKey, PartitionProgress>,
    running: JoinSet<RunDone>,
    running_tasks: HashMap<tokio::task::Id, RunningTask>,
    running_accounts: HashSet<String>,
    running_ids: HashSet<String>,
    workers: &'a SyncWorkers,
}

fn account_key(request: &SyncRequest) -> String {
    format!("{}/{}", request.provider, request.account_id)
}

impl Dispatcher<'_> {
    fn accept(&mut self, message: &BorrowedMessage<'_>) {
        let partition = (message.topic().to_string(), message.partition());
        let offset = message.offset();
        let progress = self.progress.entry(partition.clone()).or_default();
        if progress.next == 0 && progress.committed == 0 {
            progress.committed = offset;
        }
        progress.outstanding.insert(offset);
        progress.next = progress.next.max(offset + 1);
        let decoded = message
            .payload()
            .ok_or_else(|| "empty payload".to_string())
            .and_then(|p| {
                self.workers
                    .codec
                    .decode_request(p)
                    .map_err(|e| e.to_string())
            });
        match decoded {
            Ok(request) => {
                self.workers.store.record_request(&request);
                self.waiting.push_back(Waiting {
                    request,
                    partition,
                    offset,
                    wait_until: None,
                });
            }
            Err(reason) => {
                metrics::counter!(SYNCS_TOTAL, "provider" => "unknown", "mode" => "unknown", "outcome" => "unreadable")
                    .increment(1);
                tracing::error!(topic = %partition.0, partition = partition.1, offset, %reason, "skipping an unreadable sync request");
                self.finish_offset(&partition, offset);
            }
        }
    }

    fn next_wake(&self, now: DateTime<Utc>) -> Duration {
        let earliest = self
            .waiting
            .iter()
            .filter_map(|w| match (w.request.not_before, w.wait_until) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            })
            .min();
        let fallback = Duration::from_secs(1);
        match earliest {
            Some(t) if t > now => (t - now).to_std().unwrap_or(fallback).min(fallback),
            Some(_) => Duration::from_millis(20),
            None => fallback,
        }
    }

    fn start_admissible(&mut self, now: DateTime<Utc>) {
        let settings = &self.workers.settings;
        let mut i = 0;
        while i < self.waiting.len() && self.running.len() < settings.max_concurrent {
            let w = &self.waiting[i];
            let due = w.request.not_before.is_none_or(|t| t <= now)
                && w.wait_until.is_none_or(|t| t <= now);
            if !due || self.running_accounts.contains(&account_key(&w.request)) {
                i += 1;
                continue;
            }
            let status = self.workers.store.get(&w.request.id);
            let running_here = self.running_ids.contains(&w.request.id);
            match admit(
                &w.request,
                status.as_ref(),
                running_here,
                now,
                settings.claim_ttl,
            ) {
                Admission::Run => {
                    if let Some(w) = self.waiting.remove(i) {
                        self.start(w);
                    }
                }
                Admission::Skip(reason) => {
                    if let Some(w) = self.waiting.remove(i) {
                        tracing::info!(sync_id = %w.request.id, attempt = w.request.attempt, reason, "skipping a duplicate sync request");
                        metrics::counter!(SYNCS_TOTAL, "provider" => w.request.provider.as_str(), "mode" => w.request.mode.as_str(), "outcome" => "skipped_duplicate").increment(1);
                        self.finish_offset(&w.partition, w.offset);
                    }
                }
                Admission::Wait { .. } => {
                    // checked again on every pass (at least each second), so a sync that
                    // ends elsewhere releases its duplicates as soon as its event arrives
                    i += 1;
                }
            }
        }
    }

    fn start(&mut self, waiting: Waiting) {
        let Waiting {
            request,
            partition,
            offset,
            ..
        } = waiting;
        let account = account_key(&request);
        self.running_accounts.insert(account.clone());
        self.running_ids.insert(request.id.clone());
        let executor = Arc::clone(&self.workers.executor);
        let publisher = Arc::clone(&self.workers.publisher);
        let store = self.workers.store.clone();
        let retry = self.workers.settings.retry;
        let span = tracing::info_span!(
            "sync",
            sync_id = %request.id,
            provider = %request.provider,
            account = %request.account_id,
            mode = %request.mode,
            attempt = request.attempt
        );
        let task = RunningTask {
            partition: partition.clone(),
            offset,
            account: account.clone(),
            sync_id: request.id.clone(),
        };
        let handle = self.running.spawn(
            async move {
                let sync_id = request.id.clone();
                let outcome = run_one(
                    request,
                    executor.as_ref(),
                    publisher.as_ref(),
                    &store,
                    retry,
                )
                .await;
                RunDone {
                    partition,
                    offset,
                    account,
                    sync_id,
                    outcome,
                }
            }
            .instrument(span),
        );
        self.running_tasks.insert(handle.id(), task);
    }

    /// A sync task ended without its outcome (it panicked outside the executor, or was
    /// cancelled): free its account and move past its offset, as for a permanent failure.
    fn lose_run(&mut self, error: tokio::task::JoinError) {
        let Some(task) = self.running_tasks.remove(&error.id()) else {
            tracing::error!(%error, "an unknown sync task ended abnormally");
            return;
        };
        tracing::error!(%error, sync_id = %task.sync_id, "a sync task ended abnormally; its account is freed");
        self.running_accounts.remove(&task.account);
        self.running_ids.remove(&task.sync_id);
        self.finish_offset(&task.partition, task.offset);
    }

    fn finish_run(&mut self, done: RunDone) {
        self.running_accounts.remove(&done.account);
        self.running_ids.remove(&done.sync_id);
        match done.outcome {
            RunOutcome::Finished => self.finish_offset(&done.partition, done.offset),
            RunOutcome::Requeue { request, at } => {
                if self.progress.contains_key(&done.partition) {
                    self.waiting.push_back(Waiting {
                        request,
                        partition: done.partition,
                        offset: done.offset,
                        wait_until: Some(at),
                    });
                }
            }
        }
    }

    fn finish_offset(&mut self, partition: &PartitionKey, offset: i64) {
        let Some(progress) = self.progress.get_mut(partition) else {
            return; // revoked meanwhile: the new owner commits
        };
        progress.outstanding.remove(&offset);
        let committable = progress
            .outstanding
            .first()
            .copied()
            .unwrap_or(progress.next);
        if committable > progress.committed {
            progress.committed = committable;
            let mut tpl = TopicPartitionList::new();
            if tpl
                .add_partition_offset(&partition.0, partition.1, Offset::Offset(committable))
                .is_ok()
            {
                if let Err(e) = self.workers.consumer.commit(&tpl, CommitMode::Async) {
                    tracing::warn!(error = %e, topic = %partition.0, partition = partition.1, "committing sync request offsets");
                }
            }
        }
    }

    fn drop_partition(&mut self, partition: &PartitionKey) {
        self.progress.remove(partition);
        self.waiting.retain(|w| &w.partition != partition);
    }

    fn commit_all(&mut self, mode: CommitMode) {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), progress) in &self.progress {
            let committable = progress
                .outstanding
                .first()
                .copied()
                .unwrap_or(progress.next);
            if committable > 0 {
                let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(committable));
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = self.workers.consumer.commit(&tpl, mode) {
                tracing::warn!(error = %e, "committing sync request offsets on shutdown");
            }
        }
    }
}

fn event(
    request: &SyncRequest,
    kind: SyncEventKind,
    summary: SyncSummary,
    elapsed: Duration,
    error: Option<String>,
) -> SyncEvent {
    let secs = elapsed.as_secs_f64();
    SyncEvent {
        sync_id: request.id.clone(),
        provider: request.provider,
        account_id: request.account_id.clone(),
        mode: request.mode,
        kind,
        records: summary.records,
        pages: summary.pages,
        rate_per_sec: if secs > 0.0 {
            summary.records as f64 / secs
        } else {
            0.0
        },
        eta_secs: None,
        error,
        at: Utc::now(),
    }
}

/// The text of a panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

async fn run_one(
    request: SyncRequest,
    executor: &dyn SyncExecutor,
    publisher: &dyn SyncPublisher,
    store: &SyncStatusStore,
    retry: RetryPolicy,
) -> RunOutcome {
    let provider = request.provider.as_str();
    let mode = request.mode.as_str();
    // claim: the started event is acknowledged before anything runs
    let started = event(
        &request,
        SyncEventKind::Started,
        SyncSummary::default(),
        Duration::ZERO,
        None,
    );
    if let Err(e) = publisher.publish_event(&started).await {
        tracing::warn!(error = %e, "cannot write the started event; trying again shortly");
        let at = Utc::now() + chrono::Duration::seconds(5);
        return RunOutcome::Requeue { request, at };
    }
    store.record_event(&started, Some(request.attempt));
    tracing::info!("sync started");
    let clock = Instant::now();
    let result = match check_window(request.window_start, request.window_end, Utc::now()) {
        Err(e) => Err(SyncFailure::permanent(format!("invalid request: {e}"))),
        Ok(()) => AssertUnwindSafe(executor.execute(&request))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                let message = panic_message(panic.as_ref());
                tracing::error!(%message, "the sync panicked");
                Err(SyncFailure::permanent(format!(
                    "the sync panicked: {message}"
                )))
            }),
    };
    let elapsed = clock.elapsed();
    metrics::histogram!(SYNC_SECONDS, "provider" => provider, "mode" => mode)
        .record(elapsed.as_secs_f64());
    match result {
        Ok(summary) => {
            let completed = event(&request, SyncEventKind::Completed, summary, elapsed, None);
            store.record_event(&completed, Some(request.attempt));
            if let Err(e) = publisher.publish_event(&completed).await {
                tracing::warn!(error = %e, "cannot write the completed event");
            }
            metrics::counter!(SYNCS_TOTAL, "provider" => provider, "mode" => mode, "outcome" => "completed").increment(1);
            tracing::info!(
                records = summary.records,
                pages = summary.pages,
                secs = elapsed.as_secs_f64(),
                "sync completed"
            );
            RunOutcome::Finished
        }
        Err(failure) => {
            let retry_at = (failure.retryable && request.attempt < retry.max_attempts).then(|| {
                let delay = chrono::Duration::from_std(retry.delay_after(request.attempt))
                    .unwrap_or(chrono::Duration::MAX);
                Utc::now()
                    .checked_add_signed(delay)
                    .unwrap_or(DateTime::<Utc>::MAX_UTC)
            });
            let message = match retry_at {
                Some(at) => format!(
                    "attempt {} failed: {}; next attempt at {}",
                    request.attempt,
                    failure.message,
                    at.to_rfc3339()
                ),
                None if failure.retryable => format!(
                    "attempt {} failed: {}; giving up after {} attempts",
                    request.attempt, failure.message, request.attempt
                ),
                None => format!(
                    "attempt {} failed: {} (not retried)",
                    request.attempt, failure.message
                ),
            };
            if let Some(at) = retry_at {
                // the retry request goes first: if the worker dies after it, the sync still runs
                let next = SyncRequest {
                    attempt: request.attempt + 1,
                    not_before: Some(at),
                    requested_at: Utc::now(),
                    requested_by: "retry".to_string(),
                    ..request.clone()
                };
                if let Err(e) = publisher.publish_request(&next).await {
                    tracing::warn!(error = %e, "cannot write the retry request; keeping it in memory");
                    return RunOutcome::Requeue { request: next, at };
                }
            }
            let failed = event(
                &request,
                SyncEventKind::Failed,
                SyncSummary::default(),
                elapsed,
                Some(message.clone()),
            );
            store.record_event(&failed, Some(request.attempt));
            if let Some(at) = retry_at {
                store.record_retry(&request.id, request.attempt + 1, at);
            }
            if let Err(e) = publisher.publish_event(&failed).await {
                tracing::warn!(error = %e, "cannot write the failed event");
            }
            let outcome = if retry_at.is_some() {
                "retry_scheduled"
            } else {
                "failed"
            };
            metrics::counter!(SYNCS_TOTAL, "provider" => provider, "mode" => mode, "outcome" => outcome).increment(1);
            tracing::warn!(%message, "sync failed");
            RunOutcome::Finished
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use callsync_schemas::{Provider, SyncMode};

    fn request(attempt: i32) -> SyncRequest {
        SyncRequest {
            id: "id-1".into(),
            provider: Provider::Retreaver,
            account_id: "a".into(),
            mode: SyncMode::Incremental,
            window_start: None,
            window_end: None,
            requested_at: Utc::now(),
            requested_by: "scheduler".into(),
            attempt,
            not_before: None,
        }
    }

    fn status(state: SyncState, attempt: Option<i32>, age_secs: i64) -> SyncStatus {
        let store = SyncStatusStore::new(4);
        store.record_request(&request(1));
        let mut s = store.get("id-1").unwrap();
        s.state = state;
        s.attempt = attempt;
        s.updated_at = Utc::now() - chrono::Duration::seconds(age_secs);
        s
    }

    #[test]
    fn admission_runs_each_id_and_attempt_once() {
        let ttl = Duration::from_secs(600);
        let now = Utc::now();
        assert_eq!(admit(&request(1), None, false, now, ttl), Admission::Run);
        assert_eq!(
            admit(&request(1), None, true, now, ttl),
            Admission::Wait { until: None }
        );
        let completed = status(SyncState::Completed, Some(1), 0);
        assert!(matches!(
            admit(&request(1), Some(&completed), false, now, ttl),
            Admission::Skip(_)
        ));
        assert!(matches!(
            admit(&request(3), Some(&completed), false, now, ttl),
            Admission::Skip(_)
        ));
        let failed = status(SyncState::Failed, Some(1), 0);
        assert!(matches!(
            admit(&request(1), Some(&failed), false, now, ttl),
            Admission::Skip(_)
        ));
        assert_eq!(
            admit(&request(2), Some(&failed), false, now, ttl),
            Admission::Run
        );
        // an event from another worker (attempt unknown) counts as attempt 1
        let failed_elsewhere = status(SyncState::Failed, None, 0);
        assert_eq!(
            admit(&request(2), Some(&failed_elsewhere), false, now, ttl),
            Admission::Run
        );
        let running = status(SyncState::Running, None, 60);
        assert!(matches!(
            admit(&request(1), Some(&running), false, now, ttl),
            Admission::Wait { until: Some(_) }
        ));
        let abandoned = status(SyncState::Running, None, 601);
        assert_eq!(
            admit(&request(1), Some(&abandoned), false, now, ttl),
            Admission::Run
        );
        let requested = status(SyncState::Requested, Some(1), 0);
        assert_eq!(
            admit(&request(1), Some(&requested), false, now, ttl),
            Admission::Run
        );
    }

    /// An executor that panics, as the runner did on `end - Duration::days(7)` with an absurd
    /// window end.
    struct Panicking;

    #[async_trait]
    impl SyncExecutor for Panicking {
        async fn execute(&self, _request: &SyncRequest) -> Result<SyncSummary, SyncFailure> {
            panic!("`DateTime - TimeDelta` overflowed");
        }
    }

    #[tokio::test]
    async fn a_panicking_sync_fails_for_good_and_frees_its_request() {
        let publisher = crate::scheduler::MemorySyncPublisher::default();
        let store = SyncStatusStore::new(4);
        let outcome = run_one(
            request(1),
            &Panicking,
            &publisher,
            &store,
            RetryPolicy::default(),
        )
        .await;
        assert!(matches!(outcome, RunOutcome::Finished));
        let status = store.get("id-1").unwrap();
        assert_eq!(status.state, SyncState::Failed);
        let error = status.error.unwrap_or_default();
        assert!(
            error.contains("panicked") && error.contains("overflowed"),
            "{error}"
        );
        assert!(error.contains("not retried"), "{error}");
        // no retry request: it would panic again
        assert!(publisher.requests().is_empty());
    }

    #[tokio::test]
    async fn an_out_of_bounds_window_fails_without_running() {
        let publisher = crate::scheduler::MemorySyncPublisher::default();
        let store = SyncStatusStore::new(4);
        let mut absurd = request(1);
        absurd.mode = SyncMode::Full;
        absurd.window_end = Some(DateTime::<Utc>::MIN_UTC);
        // Panicking is never called: the window is checked first
        let outcome = run_one(
            absurd,
            &Panicking,
            &publisher,
            &store,
            RetryPolicy::default(),
        )
        .await;
        assert!(matches!(outcome, RunOutcome::Finished));
        let error = store.get("id-1").unwrap().error.unwrap_or_default();
        assert!(error.contains("invalid request: window_end"), "{error}");
    }

    #[test]
    fn retry_delays_grow_to_a_maximum() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay_after(1), Duration::from_secs(300));
        assert_eq!(p.delay_after(2), Duration::from_secs(600));
        assert_eq!(p.delay_after(3), Duration::from_secs(1200));
        assert_eq!(p.delay_after(5), Duration::from_secs(3600));
        assert_eq!(p.delay_after(1000), Duration::from_secs(3600));
    }
}
