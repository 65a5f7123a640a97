//! The sync-events follower's watchdog (`src/scheduler/follow_watchdog.rs`) against
//! librdkafka's mock cluster (no services needed): a follower whose partitions stop
//! delivering while records sit beyond its position receives those records anyway, within a
//! few of the watchdog's intervals.

use std::sync::Arc;
use std::time::{Duration, Instant};

use callsync::scheduler::follow_watchdog::WatchdogSettings;
use callsync::scheduler::publish::{AvroSyncCodec, SyncCodec};
use callsync::scheduler::status::{follow_sync_events_with, sync_events_consumer, SyncStatusStore};
use callsync_runtime::{KafkaClientFactory, KafkaSettings, Shutdown};
use callsync_schemas::{Provider, SyncEvent, SyncEventKind, SyncMode};
use callsync_testkit::MockKafka;
use chrono::Utc;
use rdkafka::consumer::Consumer;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const TOPIC: &str = "callsync.sync-events";

fn event(sync_id: &str) -> SyncEvent {
    SyncEvent {
        sync_id: sync_id.into(),
        provider: Provider::Ringba,
        account_id: "a".into(),
        mode: SyncMode::Incremental,
        kind: SyncEventKind::Started,
        records: 0,
        pages: 0,
        rate_per_sec: 0.0,
        eta_secs: None,
        error: None,
        at: Utc::now(),
    }
}

/// Writes the event of `sync_id` to `partition`; returns its offset.
async fn send(
    producer: &FutureProducer,
    codec: &dyn SyncCodec,
    partition: i32,
    sync_id: &str,
) -> i64 {
    let payload = codec.encode_event(&event(sync_id)).expect("encode");
    let record = FutureRecord::to(TOPIC)
        .partition(partition)
        .key(sync_id)
        .payload(&payload);
    producer
        .send(record, Duration::from_secs(5))
        .await
        .expect("produce")
        .offset
}

async fn wait_for(store: &SyncStatusStore, ids: &[&str], within: Duration) {
    let start = Instant::now();
    while !ids.iter().all(|id| store.get(id).is_some()) {
        let missing: Vec<_> = ids.iter().filter(|id| store.get(id).is_none()).collect();
        assert!(
            start.elapsed() < within,
            "not in the store after {within:?}: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn one(partition: i32) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(TOPIC, partition);
    tpl
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_partitions_stop_delivering_gets_their_records_by_reassign() {
    let kafka = MockKafka::new(1).expect("mock cluster");
    kafka.create_topic(TOPIC, 2).expect("topic");
    let mut settings = KafkaSettings::plaintext(kafka.bootstrap());
    // the mock answers a fetch with no data after fetch.wait.max.ms (500 ms by default)
    settings
        .client_properties
        .insert("fetch.wait.max.ms".into(), "20".into());
    let factory = KafkaClientFactory::new(settings);
    let consumer = Arc::new(
        sync_events_consumer(&factory, TOPIC, "follower-test", Duration::from_secs(10))
            .expect("consumer"),
    );
    let codec: Arc<dyn SyncCodec> = Arc::new(AvroSyncCodec::single_object());
    let store = SyncStatusStore::new(100);
    let shutdown = Shutdown::new();
    let interval = Duration::from_millis(300);
    let follower = tokio::spawn(follow_sync_events_with(
        Arc::clone(&consumer),
        store.clone(),
        Arc::clone(&codec),
        shutdown.clone(),
        WatchdogSettings {
            interval,
            query_timeout: Duration::from_secs(2),
        },
    ));
    let producer: FutureProducer = factory.producer().expect("producer");
    let send = |partition: i32, sync_id: &'static str| {
        let (producer, codec) = (&producer, Arc::clone(&codec));
        async move { send(producer, codec.as_ref(), partition, sync_id).await }
    };
    // a stall is seen at the first check after the records were written and repaired at the
    // next one; the rest is the mock's round trips
    let window = interval * 10;

    send(0, "first-0").await;
    send(1, "first-1").await;
    wait_for(&store, &["first-0", "first-1"], Duration::from_secs(10)).await;

    // partition 0 stops fetching: paused behind the follower's back (a re-assign keeps an
    // application pause; the watchdog resumes the partitions as well)
    consumer.pause(&one(0)).expect("pause 0");
    send(0, "paused-0").await;
    let written = Instant::now();
    wait_for(&store, &["paused-0"], window).await;
    eprintln!(
        "paused partition: delivered {:?} after the record was written",
        written.elapsed()
    );

    // partition 1's fetcher moves past a record the follower never received: paused while
    // the record is written, sent one offset further and resumed (the fetcher is alive, the
    // record is behind it, and librdkafka forgets the position: the watchdog re-assigns the
    // partition from where it was last assigned)
    consumer.pause(&one(1)).expect("pause 1");
    let behind = send(1, "behind-1").await;
    consumer
        .seek(TOPIC, 1, Offset::Offset(behind + 1), Duration::from_secs(5))
        .expect("seek 1");
    consumer.resume(&one(1)).expect("resume 1");
    let written = Instant::now();
    wait_for(&store, &["behind-1"], window).await;
    eprintln!(
        "skipped record: delivered {:?} after it was written",
        written.elapsed()
    );

    // and the follower goes on from where it is
    send(0, "after-0").await;
    send(1, "after-1").await;
    wait_for(&store, &["after-0", "after-1"], Duration::from_secs(5)).await;

    shutdown.trigger();
    follower.await.expect("follower");
}
