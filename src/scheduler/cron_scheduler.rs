//! The scheduler: fires each schedule's slots as SyncRequests.
//!
//! Each schedule remembers up to when it has looked. On every wake-up it fires the latest slot
//! in `(looked_until, now]` (one request even if several slots passed while the process was
//! down or asleep) and moves on. At start `looked_until` is `now - catch_up`, so a restarted
//! scheduler runs the latest slot it missed, once. Slot ids are deterministic, so a slot that
//! ran already (or that another replica fires too) is skipped by the workers.

use std::sync::Arc;
use std::time::Duration;

use callsync_runtime::Shutdown;
use callsync_schemas::SyncRequest;
use chrono::{DateTime, Utc};

use super::health::ProviderRegistry;
use super::publish::SyncPublisher;
use super::schedule::Schedule;
use super::status::SyncStatusStore;

/// Scheduled slots, labelled `provider`, `mode`, `outcome` (requested, skipped_disabled,
/// publish_failed).
pub const SCHEDULED_SLOTS_TOTAL: &str = "callsync_scheduled_slots_total";

/// What became of one due slot.
#[derive(Debug, Clone, PartialEq)]
pub enum SlotOutcome {
    Requested(SyncRequest),
    /// The provider account is disabled by health checks.
    SkippedDisabled {
        reason: String,
    },
    /// Kafka did not take the request; the slot is tried again on the next wake-up.
    PublishFailed {
        reason: String,
    },
}

/// Fires the slots of a set of schedules.
pub struct Scheduler {
    schedules: Vec<Schedule>,
    looked_until: Vec<DateTime<Utc>>,
    publisher: Arc<dyn SyncPublisher>,
    registry: ProviderRegistry,
    store: Option<SyncStatusStore>,
}

impl Scheduler {
    /// A scheduler that starts looking `catch_up` before `now`.
    pub fn new(
        schedules: Vec<Schedule>,
        publisher: Arc<dyn SyncPublisher>,
        registry: ProviderRegistry,
        catch_up: Duration,
        now: DateTime<Utc>,
    ) -> Self {
        let start = now - chrono::Duration::from_std(catch_up).unwrap_or(chrono::Duration::days(1));
        Scheduler {
            looked_until: vec![start; schedules.len()],
            schedules,
            publisher,
            registry,
            store: None,
        }
    }

    /// Records every request written in `store` (for `/api/syncs`).
    pub fn with_status_store(mut self, store: SyncStatusStore) -> Self {
        self.store = Some(store);
        self
    }

    pub fn schedules(&self) -> &[Schedule] {
        &self.schedules
    }

    /// Fires the latest due slot of every schedule, as of `now`.
    pub async fn fire_due(
        &mut self,
        now: DateTime<Utc>,
    ) -> Vec<(usize, DateTime<Utc>, SlotOutcome)> {
        let mut fired = Vec::new();
        for i in 0..self.schedules.len() {
            let schedule = &self.schedules[i];
            let Some(slot) = schedule.latest_slot_in(self.looked_until[i], now) else {
                self.looked_until[i] = now.max(self.looked_until[i]);
                continue;
            };
            let labels = [
                ("provider", schedule.provider.as_str()),
                ("mode", schedule.mode.as_str()),
            ];
            let outcome = if let Some(reason) = self
                .registry
                .disabled_reason(schedule.provider, &schedule.account_id)
            {
                tracing::warn!(provider = %schedule.provider, account = %schedule.account_id, mode = %schedule.mode, %slot, %reason, "provider disabled: skipping the slot");
                SlotOutcome::SkippedDisabled { reason }
            } else {
                let request = SyncRequest {
                    id: schedule.sync_id(slot),
                    provider: schedule.provider,
                    account_id: schedule.account_id.clone(),
                    mode: schedule.mode,
                    window_start: None,
                    window_end: None,
                    requested_at: now,
                    requested_by: "scheduler".to_string(),
                    attempt: 1,
                    not_before: None,
                };
                match self.publisher.publish_request(&request).await {
                    Ok(()) => {
                        tracing::info!(sync_id = %request.id, provider = %request.provider, account = %request.account_id, mode = %request.mode, %slot, "scheduled sync requested");
                        if let Some(store) = &self.store {
                            store.record_request(&request);
                        }
                        SlotOutcome::Requested(request)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, provider = %schedule.provider, account = %schedule.account_id, %slot, "cannot write the scheduled sync request; retrying");
                        SlotOutcome::PublishFailed {
                            reason: e.to_string(),
                        }
                    }
                }
            };
            let label = match &outcome {
                SlotOutcome::Requested(_) => "requested",
                SlotOutcome::SkippedDisabled { .. } => "skipped_disabled",
                SlotOutcome::PublishFailed { .. } => "publish_failed",
            };
            metrics::counter!(SCHEDULED_SLOTS_TOTAL, "provider" => labels[0].1, "mode" => labels[1].1, "outcome" => label).increment(1);
            if !matches!(outcome, SlotOutcome::PublishFailed { .. }) {
                self.looked_until[i] = now;
            }
            fired.push((i, slot, outcome));
        }
        fired
    }

    /// When the next wake-up is due after `now`.
    pub fn next_wake(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedules
            .iter()
            .filter_map(|s| s.next_slot_after(now))
            .min()
    }

    /// Fires slots until shutdown.
    pub async fn run(mut self, shutdown: Shutdown) {
        tracing::info!(schedules = self.schedules.len(), "scheduler started");
        loop {
            let now = Utc::now();
            let fired = self.fire_due(now).await;
            let retry_soon = fired
                .iter()
                .any(|(_, _, o)| matches!(o, SlotOutcome::PublishFailed { .. }));
            // wake at the next slot, at least every minute (clock jumps), sooner after a failure
            let mut sleep = self
                .next_wake(now)
                .and_then(|t| (t - now).to_std().ok())
                .unwrap_or(Duration::from_secs(60))
                .min(Duration::from_secs(60));
            if retry_soon {
                sleep = sleep.min(Duration::from_secs(5));
            }
            tokio::select! {
                _ = shutdown.wait() => break,
                _ = tokio::time::sleep(sleep + Duration::from_millis(5)) => {}
            }
        }
        tracing::info!("scheduler stopped");
    }
}
