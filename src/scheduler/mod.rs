//! Scheduling and running syncs.
//!
//! - [`schedule`]: cron schedules per provider account and deterministic slot ids.
//! - [`cron_scheduler`]: fires due slots as SyncRequests (latest missed slot once).
//! - [`worker`]: the consumer group that runs SyncRequests through a [`SyncExecutor`].
//! - [`health`]: provider health checks and the registry that enables/disables accounts.
//! - [`trigger`](mod@trigger): manual syncs (CLI and HTTP).
//! - [`status`]: what is known of each sync, from `callsync.sync-events`.
//! - [`follow_watchdog`]: re-assigns the sync-events follower's partitions when they stall.
//! - [`publish`]: writing requests and events to Kafka.

pub mod cron_scheduler;
pub mod follow_watchdog;
pub mod health;
pub mod publish;
pub mod schedule;
pub mod status;
pub mod trigger;
pub mod worker;

pub use cron_scheduler::{Scheduler, SlotOutcome};
pub use follow_watchdog::{WatchdogSettings, SYNC_EVENTS_REASSIGNED_TOTAL};
pub use health::{
    run_health_checks, HealthProbe, HealthSettings, ProbeError, ProviderHealth, ProviderRegistry,
};
pub use publish::{
    AvroSyncCodec, KafkaSyncPublisher, MemorySyncPublisher, PublishError, SyncCodec, SyncPublisher,
};
pub use schedule::{scheduled_sync_id, Schedule, ScheduleError, SchedulerConfig};
pub use status::{
    follow_sync_events, follow_sync_events_with, sync_events_consumer, SyncState, SyncStatus,
    SyncStatusStore,
};
pub use trigger::{trigger, TriggerError, TriggerRequest};
pub use worker::{
    worker_consumer, RetryPolicy, SyncExecutor, SyncFailure, SyncSummary, SyncWorkers,
    WorkerSettings,
};
