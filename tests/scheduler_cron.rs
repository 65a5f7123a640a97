//! The scheduler without Kafka: catch-up, disabled providers, replicas agreeing on ids.

use std::sync::Arc;
use std::time::Duration;

use callsync::scheduler::cron_scheduler::{Scheduler, SlotOutcome};
use callsync::scheduler::health::ProviderRegistry;
use callsync::scheduler::publish::MemorySyncPublisher;
use callsync::scheduler::schedule::{scheduled_sync_id, SchedulerConfig};
use callsync_schemas::{Provider, SyncMode};
use chrono::{DateTime, TimeZone, Utc};

fn at(h: u32, m: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 6, 3, h, m, 0).unwrap()
}

fn config() -> SchedulerConfig {
    toml::from_str(
        r#"
        [[accounts]]
        provider = "retreaver"
        account_id = "RT1"
        [[accounts]]
        provider = "invoca"
        account_id = "IV1"
        full = "off"
        "#,
    )
    .unwrap()
}

#[tokio::test]
async fn a_restarted_scheduler_runs_only_the_latest_missed_slot_of_each_schedule() {
    let publisher = Arc::new(MemorySyncPublisher::default());
    let registry = ProviderRegistry::new();
    // down since 00:50; restarted at 03:07 with a 24 h catch-up window
    let mut scheduler = Scheduler::new(
        config().schedules().unwrap(),
        publisher.clone(),
        registry,
        Duration::from_secs(86_400),
        at(3, 7),
    );
    let fired = scheduler.fire_due(at(3, 7)).await;
    assert_eq!(fired.len(), 3, "one full and two incremental schedules");
    let requests = publisher.requests();
    let incremental: Vec<_> = requests
        .iter()
        .filter(|r| r.mode == SyncMode::Incremental)
        .collect();
    assert_eq!(incremental.len(), 2);
    for r in &incremental {
        assert_eq!(
            r.id,
            scheduled_sync_id(r.provider, &r.account_id, SyncMode::Incremental, at(3, 0))
        );
    }
    let full: Vec<_> = requests
        .iter()
        .filter(|r| r.mode == SyncMode::Full)
        .collect();
    assert_eq!(full.len(), 1);
    assert_eq!(
        full[0].id,
        scheduled_sync_id(Provider::Retreaver, "RT1", SyncMode::Full, at(2, 0))
    );
    assert!(requests
        .iter()
        .all(|r| r.attempt == 1 && r.requested_by == "scheduler"));

    // nothing new until the next slot, then exactly that slot
    assert!(scheduler.fire_due(at(3, 14)).await.is_empty());
    let fired = scheduler.fire_due(at(3, 15)).await;
    assert_eq!(fired.len(), 2);
    assert!(fired.iter().all(|(_, slot, _)| *slot == at(3, 15)));
    assert_eq!(scheduler.next_wake(at(3, 15)), Some(at(3, 30)));
}

#[tokio::test]
async fn two_replicas_write_the_same_ids_for_the_same_slots() {
    let a = Arc::new(MemorySyncPublisher::default());
    let b = Arc::new(MemorySyncPublisher::default());
    let mut first = Scheduler::new(
        config().schedules().unwrap(),
        a.clone(),
        ProviderRegistry::new(),
        Duration::from_secs(3600),
        at(9, 0),
    );
    let mut second = Scheduler::new(
        config().schedules().unwrap(),
        b.clone(),
        ProviderRegistry::new(),
        Duration::from_secs(600),
        at(9, 1),
    );
    first.fire_due(at(9, 16)).await;
    second.fire_due(at(9, 15)).await;
    let ids = |p: &MemorySyncPublisher| {
        let mut ids: Vec<String> = p.requests().into_iter().map(|r| r.id).collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&a), ids(&b));
    assert_eq!(ids(&a).len(), 2);
}

#[tokio::test]
async fn a_disabled_provider_is_skipped_and_resumes_when_re_enabled() {
    let publisher = Arc::new(MemorySyncPublisher::default());
    let registry = ProviderRegistry::new();
    registry.record_failure(Provider::Invoca, "IV1", "503 from Invoca", 1, Utc::now());
    let mut scheduler = Scheduler::new(
        config().schedules().unwrap(),
        publisher.clone(),
        registry.clone(),
        Duration::from_secs(60),
        at(10, 0),
    );
    let fired = scheduler.fire_due(at(10, 0)).await;
    let skipped: Vec<_> = fired
        .iter()
        .filter_map(|(_, _, o)| match o {
            SlotOutcome::SkippedDisabled { reason } => Some(reason.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0].contains("503 from Invoca"));
    assert!(publisher
        .requests()
        .iter()
        .all(|r| r.provider != Provider::Invoca));

    registry.record_success(Provider::Invoca, "IV1", Utc::now());
    scheduler.fire_due(at(10, 15)).await;
    assert!(publisher
        .requests()
        .iter()
        .any(|r| r.provider == Provider::Invoca));
}
