//! What the service knows about syncs: the latest state of each sync id, kept in a bounded
//! map fed by `callsync.sync-events` (a compacted topic keyed by sync id) and by this
//! process's own requests and events.
//!
//! The API reads it for `/api/syncs`; workers read it to run a sync id once (see
//! [`crate::scheduler::worker`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use callsync_runtime::{Isolation, KafkaClientFactory, Shutdown};
use callsync_schemas::{Provider, SyncEvent, SyncEventKind, SyncMode, SyncRequest};
use chrono::{DateTime, Utc};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Serialize;

use super::follow_watchdog::{FollowWatchdog, WatchdogSettings};
use super::publish::SyncCodec;

/// Events kept per sync for `/api/syncs/{id}`.
const EVENTS_KEPT_PER_SYNC: usize = 16;

/// The state of one sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncState {
    /// Written to `callsync.sync-requests`, not started yet.
    Requested,
    Running,
    Completed,
    /// Failed; a retry may be scheduled (`next_attempt_at`).
    Failed,
}

/// What is known of one sync id.
#[derive(Debug, Clone, Serialize)]
pub struct SyncStatus {
    pub sync_id: String,
    pub provider: Provider,
    pub account_id: String,
    pub mode: SyncMode,
    pub state: SyncState,
    /// The attempt of the latest state, when this process saw it (events carry no attempt).
    pub attempt: Option<i32>,
    pub records: i64,
    pub pages: i64,
    pub rate_per_sec: f64,
    pub eta_secs: Option<i64>,
    pub error: Option<String>,
    pub window_start: Option<DateTime<Utc>>,
    pub window_end: Option<DateTime<Utc>>,
    pub requested_at: Option<DateTime<Utc>>,
    pub requested_by: Option<String>,
    /// When a failed sync runs again.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Time of the latest event or request.
    pub updated_at: DateTime<Utc>,
    /// The latest events, oldest first.
    pub events: VecDeque<SyncEvent>,
}

struct Inner {
    by_id: HashMap<String, SyncStatus>,
    /// (updated sequence) -> id, for evicting the least recently updated entry.
    order: BTreeMap<u64, String>,
    seq_of: HashMap<String, u64>,
    next_seq: u64,
}

/// A bounded map of sync id -> [`SyncStatus`]; cheap to clone (shared).
#[derive(Clone)]
pub struct SyncStatusStore {
    inner: Arc<RwLock<Inner>>,
    capacity: usize,
}

impl std::fmt::Debug for SyncStatusStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncStatusStore")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish()
    }
}

impl SyncStatusStore {
    /// A store keeping at most `capacity` syncs (the least recently updated go first).
    pub fn new(capacity: usize) -> Self {
        SyncStatusStore {
            inner: Arc::new(RwLock::new(Inner {
                by_id: HashMap::new(),
                order: BTreeMap::new(),
                seq_of: HashMap::new(),
                next_seq: 0,
            })),
            capacity: capacity.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.inner.read().map(|i| i.by_id.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, sync_id: &str) -> Option<SyncStatus> {
        self.inner.read().ok()?.by_id.get(sync_id).cloned()
    }

    /// The most recently updated syncs first, at most `limit`, optionally for one provider
    /// account.
    pub fn list(&self, limit: usize, filter: Option<(Provider, &str)>) -> Vec<SyncStatus> {
        let Ok(inner) = self.inner.read() else {
            return Vec::new();
        };
        inner
            .order
            .values()
            .rev()
            .filter_map(|id| inner.by_id.get(id))
            .filter(|s| match filter {
                Some((p, a)) => s.provider == p && s.account_id == a,
                None => true,
            })
            .take(limit)
            .cloned()
            .collect()
    }

    /// Records that `request` was written (by this process or seen elsewhere).
    pub fn record_request(&self, request: &SyncRequest) {
        let now = Utc::now();
        self.update(
            &request.id,
            request.provider,
            &request.account_id,
            request.mode,
            |s, created| {
                s.window_start = request.window_start;
                s.window_end = request.window_end;
                s.requested_at = Some(request.requested_at);
                s.requested_by = Some(request.requested_by.clone());
                if created {
                    s.state = SyncState::Requested;
                    s.attempt = Some(request.attempt);
                    s.updated_at = request.requested_at.max(now);
                } else if request.attempt > 1 {
                    s.next_attempt_at = request.not_before;
                }
            },
        );
    }

    /// Applies an event; `attempt` is known when this process produced it.
    pub fn record_event(&self, event: &SyncEvent, attempt: Option<i32>) {
        if let Ok(inner) = self.inner.read() {
            if let Some(s) = inner.by_id.get(&event.sync_id) {
                // this process's own events come back from the topic later: applying them
                // again (or any event older than the latest) would move the state backwards
                let stale = s.events.back().is_some_and(|last| event.at < last.at);
                if stale || s.events.iter().any(|e| e == event) {
                    return;
                }
            }
        }
        self.update(
            &event.sync_id,
            event.provider,
            &event.account_id,
            event.mode,
            |s, _| {
                // events of one sync arrive in order on one partition; a Progress never
                // overrides a terminal state written later by the same worker
                s.state = match event.kind {
                    SyncEventKind::Started => SyncState::Running,
                    SyncEventKind::Progress if matches!(s.state, SyncState::Completed) => s.state,
                    SyncEventKind::Progress => SyncState::Running,
                    SyncEventKind::Completed => SyncState::Completed,
                    SyncEventKind::Failed => SyncState::Failed,
                };
                if attempt.is_some() {
                    s.attempt = attempt;
                }
                if matches!(event.kind, SyncEventKind::Started) {
                    s.next_attempt_at = None;
                    s.error = None;
                }
                s.records = event.records;
                s.pages = event.pages;
                s.rate_per_sec = event.rate_per_sec;
                s.eta_secs = event.eta_secs;
                if event.error.is_some() {
                    s.error = event.error.clone();
                }
                s.updated_at = event.at;
                if s.events.len() == EVENTS_KEPT_PER_SYNC {
                    s.events.pop_front();
                }
                s.events.push_back(event.clone());
            },
        );
    }

    /// Notes when a failed sync's retry will run.
    pub fn record_retry(&self, sync_id: &str, attempt: i32, at: DateTime<Utc>) {
        if let Ok(mut inner) = self.inner.write() {
            if let Some(s) = inner.by_id.get_mut(sync_id) {
                s.next_attempt_at = Some(at);
                s.attempt = Some(attempt - 1);
            }
        }
    }

    fn update(
        &self,
        sync_id: &str,
        provider: Provider,
        account_id: &str,
        mode: SyncMode,
        apply: impl FnOnce(&mut SyncStatus, bool),
    ) {
        let Ok(mut inner) = self.inner.write() else {
            return;
        };
        let inner = &mut *inner;
        let created = !inner.by_id.contains_key(sync_id);
        if created && inner.by_id.len() >= self.capacity {
            if let Some((_, oldest)) = inner.order.pop_first() {
                inner.seq_of.remove(&oldest);
                inner.by_id.remove(&oldest);
            }
        }
        let status = inner
            .by_id
            .entry(sync_id.to_string())
            .or_insert_with(|| SyncStatus {
                sync_id: sync_id.to_string(),
                provider,
                account_id: account_id.to_string(),
                mode,
                state: SyncState::Requested,
                attempt: None,
                records: 0,
                pages: 0,
                rate_per_sec: 0.0,
                eta_secs: None,
                error: None,
                window_start: None,
                window_end: None,
                requested_at: None,
                requested_by: None,
                next_attempt_at: None,
                updated_at: Utc::now(),
                events: VecDeque::new(),
            });
        apply(status, created);
        if let Some(seq) = inner.seq_of.remove(sync_id) {
            inner.order.remove(&seq);
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.order.insert(seq, sync_id.to_string());
        inner.seq_of.insert(sync_id.to_string(), seq);
    }
}

/// A consumer that reads `topic` from the beginning of every partition, without a group
/// membership or commits (`group_id` only names it to the broker).
pub fn sync_events_consumer(
    factory: &KafkaClientFactory,
    topic: &str,
    group_id: &str,
    timeout: Duration,
) -> Result<StreamConsumer, FollowError> {
    let consumer: StreamConsumer = factory
        .create(
            "sync-events consumer",
            &factory.consumer_config(group_id, Isolation::ReadCommitted),
        )
        .map_err(|e| FollowError(e.to_string()))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| FollowError(format!("reading metadata of {topic}: {e}")))?;
    let mut assignment = TopicPartitionList::new();
    for t in metadata.topics() {
        if let Some(err) = t.error() {
            return Err(FollowError(format!("topic {topic}: {err:?}")));
        }
        for p in t.partitions() {
            assignment
                .add_partition_offset(topic, p.id(), Offset::Beginning)
                .map_err(|e| FollowError(e.to_string()))?;
        }
    }
    if assignment.count() == 0 {
        return Err(FollowError(format!("topic {topic} has no partitions")));
    }
    consumer
        .assign(&assignment)
        .map_err(|e| FollowError(e.to_string()))?;
    Ok(consumer)
}

/// Following `callsync.sync-events` failed to start.
#[derive(Debug, Clone, thiserror::Error)]
#[error("following sync events: {0}")]
pub struct FollowError(pub String);

/// Applies every event of `consumer` to `store` until shutdown, with the default
/// [`WatchdogSettings`]. Undecodable records are counted and skipped (the topic is not ours
/// alone to validate).
pub async fn follow_sync_events(
    consumer: StreamConsumer,
    store: SyncStatusStore,
    codec: Arc<dyn SyncCodec>,
    shutdown: Shutdown,
) {
    follow_sync_events_with(
        Arc::new(consumer),
        store,
        codec,
        shutdown,
        WatchdogSettings::default(),
    )
    .await
}

/// [`follow_sync_events`] with the watchdog's settings given: between messages, every
/// `watchdog.interval`, it re-assigns partitions that stopped receiving although records
/// were readable (see [`super::follow_watchdog`]).
pub async fn follow_sync_events_with(
    consumer: Arc<StreamConsumer>,
    store: SyncStatusStore,
    codec: Arc<dyn SyncCodec>,
    shutdown: Shutdown,
    watchdog: WatchdogSettings,
) {
    let mut watchdog = FollowWatchdog::new(watchdog);
    let interval = watchdog.settings().interval;
    let mut checks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let message = tokio::select! {
            _ = shutdown.wait() => return,
            _ = checks.tick() => {
                // recv() is cancellation safe: nothing is lost while the check runs
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = watchdog.check(&consumer) => {}
                }
                continue;
            }
            m = consumer.recv() => m,
        };
        // the borrowed message is not Send: finish with it before any await
        let failure = match message {
            Ok(m) => {
                if let Some(payload) = m.payload() {
                    match codec.decode_event(payload) {
                        Ok(event) => store.record_event(&event, None),
                        Err(e) => {
                            metrics::counter!(SYNC_EVENTS_UNREADABLE_TOTAL).increment(1);
                            tracing::warn!(error = %e, partition = m.partition(), offset = m.offset(), "skipping an unreadable sync event");
                        }
                    }
                }
                None
            }
            Err(e) => Some(e.to_string()),
        };
        if let Some(error) = failure {
            tracing::warn!(%error, "reading sync events");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Sync events that could not be decoded.
pub const SYNC_EVENTS_UNREADABLE_TOTAL: &str = "callsync_sync_events_unreadable_total";

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, kind: SyncEventKind, records: i64) -> SyncEvent {
        SyncEvent {
            sync_id: id.into(),
            provider: Provider::Ringba,
            account_id: "a".into(),
            mode: SyncMode::Incremental,
            kind,
            records,
            pages: 1,
            rate_per_sec: 1.0,
            eta_secs: None,
            error: None,
            at: Utc::now(),
        }
    }

    #[test]
    fn keeps_the_latest_state_and_evicts_the_least_recently_updated() {
        let store = SyncStatusStore::new(2);
        store.record_event(&event("s1", SyncEventKind::Started, 0), Some(1));
        store.record_event(&event("s2", SyncEventKind::Started, 0), None);
        store.record_event(&event("s1", SyncEventKind::Progress, 1000), None);
        store.record_event(&event("s1", SyncEventKind::Completed, 1500), None);
        let s1 = store.get("s1").unwrap();
        assert_eq!(s1.state, SyncState::Completed);
        assert_eq!(s1.records, 1500);
        assert_eq!(s1.attempt, Some(1));
        assert_eq!(s1.events.len(), 3);
        // s2 is the least recently updated: a third sync evicts it
        store.record_event(&event("s3", SyncEventKind::Started, 0), None);
        assert!(store.get("s2").is_none());
        assert_eq!(store.len(), 2);
        let listed: Vec<_> = store
            .list(10, None)
            .into_iter()
            .map(|s| s.sync_id)
            .collect();
        assert_eq!(listed, vec!["s3", "s1"]);
        assert!(store.list(10, Some((Provider::Invoca, "a"))).is_empty());
    }
}
