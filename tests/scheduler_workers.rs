//! Sync workers on the real broker with a fake executor.
//!
//! Skipped without `KAFKA_BOOTSTRAP` (start one with `scripts/kafka-broker.sh start`); under
//! `CI=true` a missing broker fails the test instead.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use callsync::scheduler::cron_scheduler::Scheduler;
use callsync::scheduler::health::ProviderRegistry;
use callsync::scheduler::publish::{AvroSyncCodec, KafkaSyncPublisher, SyncCodec, SyncPublisher};
use callsync::scheduler::schedule::{Schedule, DEFAULT_INCREMENTAL_CRON};
use callsync::scheduler::status::{
    follow_sync_events, sync_events_consumer, SyncState, SyncStatusStore,
};
use callsync::scheduler::worker::{
    worker_consumer, RetryPolicy, SyncExecutor, SyncFailure, SyncSummary, SyncWorkers,
    WorkerSettings,
};
use callsync_runtime::{KafkaClientFactory, KafkaSettings, Shutdown};
use callsync_schemas::{Provider, SyncMode, SyncRequest};
use chrono::Utc;

/// The real broker (testkit: skipped locally without `KAFKA_BOOTSTRAP`, a failure under CI).
fn kafka_bootstrap() -> Option<String> {
    callsync_testkit::real_kafka().map(|k| k.bootstrap().to_string())
}

struct Env {
    factory: KafkaClientFactory,
    requests_topic: String,
    events_topic: String,
    group: String,
}

async fn env(bootstrap: &str) -> Env {
    let prefix = format!("t{}.", uuid::Uuid::new_v4().simple());
    let mut settings = KafkaSettings::plaintext(bootstrap);
    settings.topic_prefix = prefix.clone();
    let factory = KafkaClientFactory::new(settings);
    let requests_topic = factory.settings().topic("callsync.sync-requests");
    let events_topic = factory.settings().topic("callsync.sync-events");
    // testkit's create_topic waits until every partition has a leader, so the first
    // produce never meets UNKNOWN_TOPIC_OR_PART
    let kafka = callsync_testkit::RealKafka::new(bootstrap);
    kafka.create_topic(&requests_topic, 3, &[]).await.unwrap();
    kafka
        .create_topic(&events_topic, 2, &[("cleanup.policy", "compact,delete")])
        .await
        .unwrap();
    Env {
        factory,
        requests_topic,
        events_topic,
        group: format!("{prefix}workers"),
    }
}

impl Env {
    fn publisher(&self) -> Arc<KafkaSyncPublisher> {
        Arc::new(KafkaSyncPublisher::new(
            self.factory.producer().unwrap(),
            Arc::new(AvroSyncCodec::single_object()),
            self.requests_topic.clone(),
            self.events_topic.clone(),
            Duration::from_secs(10),
        ))
    }

    /// One worker process: a status store following the events topic, and the workers.
    fn start_worker(
        &self,
        executor: Arc<dyn SyncExecutor>,
        settings: WorkerSettings,
        shutdown: &Shutdown,
    ) -> tokio::task::JoinHandle<()> {
        let codec: Arc<dyn SyncCodec> = Arc::new(AvroSyncCodec::single_object());
        let store = SyncStatusStore::new(10_000);
        let events = sync_events_consumer(
            &self.factory,
            &self.events_topic,
            &format!("{}-events", self.group),
            Duration::from_secs(10),
        )
        .unwrap();
        tokio::spawn(follow_sync_events(
            events,
            store.clone(),
            codec.clone(),
            shutdown.clone(),
        ));
        let consumer = worker_consumer(&self.factory, &self.group, &self.requests_topic).unwrap();
        let workers =
            SyncWorkers::new(consumer, executor, self.publisher(), codec, store, settings);
        tokio::spawn(workers.run(shutdown.clone()))
    }
}

#[derive(Default)]
struct FakeExecutor {
    delay: Duration,
    /// sync id -> attempts that fail (retryable), or all attempts with `permanent`
    failing: HashMap<String, Vec<i32>>,
    permanent: Vec<String>,
    runs: Mutex<Vec<(String, i32, Instant)>>,
    running: AtomicUsize,
    max_running: AtomicUsize,
    per_account: Mutex<HashMap<String, usize>>,
    max_per_account: AtomicUsize,
}

#[async_trait]
impl SyncExecutor for FakeExecutor {
    async fn execute(&self, request: &SyncRequest) -> Result<SyncSummary, SyncFailure> {
        let now_running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now_running, Ordering::SeqCst);
        let account = format!("{}/{}", request.provider, request.account_id);
        {
            let mut per = self.per_account.lock().unwrap();
            let n = per.entry(account.clone()).or_default();
            *n += 1;
            self.max_per_account.fetch_max(*n, Ordering::SeqCst);
        }
        self.runs
            .lock()
            .unwrap()
            .push((request.id.clone(), request.attempt, Instant::now()));
        tokio::time::sleep(self.delay).await;
        *self.per_account.lock().unwrap().get_mut(&account).unwrap() -= 1;
        self.running.fetch_sub(1, Ordering::SeqCst);
        if self.permanent.contains(&request.id) {
            return Err(SyncFailure::permanent("401 Unauthorized"));
        }
        if self
            .failing
            .get(&request.id)
            .is_some_and(|a| a.contains(&request.attempt))
        {
            return Err(SyncFailure::retryable(format!(
                "503 on attempt {}",
                request.attempt
            )));
        }
        Ok(SyncSummary {
            records: 10,
            pages: 1,
        })
    }
}

impl FakeExecutor {
    fn runs(&self) -> Vec<(String, i32, Instant)> {
        self.runs.lock().unwrap().clone()
    }
}

fn request(id: &str, provider: Provider, account: &str) -> SyncRequest {
    SyncRequest {
        id: id.to_string(),
        provider,
        account_id: account.to_string(),
        mode: SyncMode::Incremental,
        window_start: None,
        window_end: None,
        requested_at: Utc::now(),
        requested_by: "test".into(),
        attempt: 1,
        not_before: None,
    }
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_scheduler_replicas_and_two_workers_run_each_slot_once() {
    let Some(bootstrap) = kafka_bootstrap() else {
        return;
    };
    let env = env(&bootstrap).await;
    let executor = Arc::new(FakeExecutor {
        delay: Duration::from_millis(200),
        ..FakeExecutor::default()
    });
    let shutdown = Shutdown::new();
    let w1 = env.start_worker(
        executor.clone(),
        WorkerSettings {
            group_id: env.group.clone(),
            ..WorkerSettings::default()
        },
        &shutdown,
    );
    let w2 = env.start_worker(
        executor.clone(),
        WorkerSettings {
            group_id: env.group.clone(),
            ..WorkerSettings::default()
        },
        &shutdown,
    );

    // let both members join before requests arrive: this test is about duplicate slots, not
    // about a rebalance in the middle of a sync
    tokio::time::sleep(Duration::from_secs(3)).await;
    let schedules = || {
        [
            ("RT1", Provider::Retreaver),
            ("RT2", Provider::Retreaver),
            ("RG1", Provider::Ringba),
            ("CR1", Provider::CallRail),
        ]
        .into_iter()
        .map(|(account, provider)| {
            Schedule::new(
                provider,
                account,
                SyncMode::Incremental,
                DEFAULT_INCREMENTAL_CRON,
                chrono_tz::Tz::UTC,
            )
            .unwrap()
        })
        .collect::<Vec<_>>()
    };
    let now = Utc::now();
    // two replicas, each firing the latest slot and the one before (a replica that was slow)
    for _ in 0..2 {
        let mut replica = Scheduler::new(
            schedules(),
            env.publisher(),
            ProviderRegistry::new(),
            Duration::from_secs(1800),
            now,
        );
        let previous = now - chrono::Duration::minutes(15);
        replica.fire_due(previous).await;
        replica.fire_due(now).await;
    }
    // 4 accounts x 2 slots, each written twice
    wait_until("8 distinct syncs to run", Duration::from_secs(30), || {
        let mut ids: Vec<_> = executor.runs().into_iter().map(|r| r.0).collect();
        ids.sort();
        ids.dedup();
        ids.len() == 8
    })
    .await;
    // give the duplicates time to be (wrongly) run
    tokio::time::sleep(Duration::from_secs(2)).await;
    let runs = executor.runs();
    assert_eq!(runs.len(), 8, "every slot ran exactly once: {runs:?}");
    assert!(executor.max_per_account.load(Ordering::SeqCst) <= 1);
    shutdown.trigger();
    w1.await.unwrap();
    w2.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_is_bounded_and_one_sync_per_account_runs_at_a_time() {
    let Some(bootstrap) = kafka_bootstrap() else {
        return;
    };
    let env = env(&bootstrap).await;
    let executor = Arc::new(FakeExecutor {
        delay: Duration::from_millis(300),
        ..FakeExecutor::default()
    });
    let shutdown = Shutdown::new();
    let settings = WorkerSettings {
        group_id: env.group.clone(),
        max_concurrent: 2,
        ..WorkerSettings::default()
    };
    let worker = env.start_worker(executor.clone(), settings, &shutdown);
    let publisher = env.publisher();
    let accounts = ["A", "A", "A", "B", "B", "C", "D", "E"];
    for (i, account) in accounts.iter().enumerate() {
        publisher
            .publish_request(&request(
                &format!("sync-{i}"),
                Provider::TrackDrive,
                account,
            ))
            .await
            .unwrap();
    }
    wait_until("all 8 syncs", Duration::from_secs(30), || {
        executor.runs().len() == 8
    })
    .await;
    assert_eq!(
        executor.max_running.load(Ordering::SeqCst),
        2,
        "at most 2 at once, and the limit was reached"
    );
    assert_eq!(
        executor.max_per_account.load(Ordering::SeqCst),
        1,
        "one per account"
    );
    // one account's syncs run in the order they were requested
    let a_order: Vec<_> = executor
        .runs()
        .into_iter()
        .filter(|r| ["sync-0", "sync-1", "sync-2"].contains(&r.0.as_str()))
        .map(|r| r.0)
        .collect();
    assert_eq!(a_order, vec!["sync-0", "sync-1", "sync-2"]);
    shutdown.trigger();
    worker.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_syncs_are_retried_later_with_growing_delays_up_to_the_limit() {
    let Some(bootstrap) = kafka_bootstrap() else {
        return;
    };
    let env = env(&bootstrap).await;
    let executor = Arc::new(FakeExecutor {
        delay: Duration::from_millis(10),
        failing: HashMap::from([
            ("flaky".to_string(), vec![1]),
            ("broken".to_string(), vec![1, 2, 3, 4]),
        ]),
        permanent: vec!["unauthorized".to_string()],
        ..FakeExecutor::default()
    });
    let shutdown = Shutdown::new();
    let settings = WorkerSettings {
        group_id: env.group.clone(),
        retry: RetryPolicy {
            initial_delay: Duration::from_millis(400),
            multiplier: 2,
            max_delay: Duration::from_secs(5),
            max_attempts: 3,
        },
        ..WorkerSettings::default()
    };
    let store_probe = SyncStatusStore::new(100);
    let events = sync_events_consumer(
        &env.factory,
        &env.events_topic,
        "probe",
        Duration::from_secs(10),
    )
    .unwrap();
    tokio::spawn(follow_sync_events(
        events,
        store_probe.clone(),
        Arc::new(AvroSyncCodec::single_object()),
        shutdown.clone(),
    ));
    let worker = env.start_worker(executor.clone(), settings, &shutdown);
    let publisher = env.publisher();
    for (id, account) in [("flaky", "F"), ("broken", "B"), ("unauthorized", "U")] {
        publisher
            .publish_request(&request(id, Provider::Invoca, account))
            .await
            .unwrap();
    }
    wait_until("broken to give up", Duration::from_secs(30), || {
        store_probe.get("broken").is_some_and(|s| {
            s.state == SyncState::Failed
                && s.error.as_deref().is_some_and(|e| e.contains("giving up"))
        })
    })
    .await;
    wait_until("flaky to complete", Duration::from_secs(10), || {
        store_probe
            .get("flaky")
            .is_some_and(|s| s.state == SyncState::Completed)
    })
    .await;
    let runs = executor.runs();
    let attempts = |id: &str| {
        runs.iter()
            .filter(|r| r.0 == id)
            .map(|r| (r.1, r.2))
            .collect::<Vec<_>>()
    };
    let flaky = attempts("flaky");
    assert_eq!(flaky.iter().map(|a| a.0).collect::<Vec<_>>(), vec![1, 2]);
    assert!(flaky[1].1 - flaky[0].1 >= Duration::from_millis(400));
    let broken = attempts("broken");
    assert_eq!(
        broken.iter().map(|a| a.0).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "max 3 attempts"
    );
    assert!(
        broken[2].1 - broken[1].1 >= Duration::from_millis(800),
        "the delay grows"
    );
    assert_eq!(
        attempts("unauthorized").len(),
        1,
        "a permanent failure is not retried"
    );
    let unauthorized = store_probe.get("unauthorized").unwrap();
    assert_eq!(unauthorized.state, SyncState::Failed);
    assert!(unauthorized.error.unwrap().contains("not retried"));
    shutdown.trigger();
    worker.await.unwrap();
}
