//! The sink's lifecycle on the real broker and real Postgres: a database without offsets
//! for an existing group, a stored offset that does not fit its partition, a rebalance the
//! loop answers too late, topic ids, and dead letters kept once through conflicts and
//! crashes. Skipped without KAFKA_BOOTSTRAP (and Postgres) outside CI; failures under
//! CI=true.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use callsync_runtime::{Isolation, KafkaClientFactory, KafkaSettings, Shutdown};
use callsync_schemas::{encode_to_vec, CallRecord, Provider, WireFormat};
use callsync_sinks::testing::sample_call;
use callsync_sinks::{
    run_sink, ApplyOutcome, CallStore, DeadLetterId, DeadLetterQuery, OffsetAdvance, OffsetCommit,
    PgStore, RedriveMarks, RedriveOutcome, SinkBatch, SinkConfig, SinkReport, SinkRow,
    SourceRecord, StoreError, StoredCall, StoredDeadLetter, StoredOffset, TopicInspector,
};
use callsync_testkit::RealKafka;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const PARTITIONS: i32 = 3;

fn factory(kafka: &RealKafka) -> KafkaClientFactory {
    KafkaClientFactory::new(KafkaSettings::plaintext(kafka.bootstrap()))
}

/// `n` calls, one version each, spread over the partitions by key.
fn dataset(n: usize, tag: &str) -> Vec<CallRecord> {
    (0..n)
        .map(|i| {
            sample_call(
                Provider::Ringba,
                "acct-1",
                &format!("{tag}-{i}"),
                1000 + i as i64,
            )
        })
        .collect()
}

async fn produce(kafka: &RealKafka, topic: &str, records: &[CallRecord]) {
    let producer: FutureProducer = factory(kafka).producer().expect("producer");
    let sends = records.iter().map(|r| {
        let key = r.key().into_string();
        let value = encode_to_vec(r, WireFormat::SingleObject).expect("encode");
        let producer = producer.clone();
        let topic = topic.to_string();
        async move {
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&value),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("produce");
        }
    });
    futures::future::join_all(sends).await;
}

async fn produce_raw(kafka: &RealKafka, topic: &str, partition: i32, key: &str, value: &[u8]) {
    let producer: FutureProducer = factory(kafka).producer().expect("producer");
    producer
        .send(
            FutureRecord::to(topic)
                .key(key)
                .payload(value)
                .partition(partition),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produce");
}

fn watermarks(kafka: &RealKafka, topic: &str) -> BTreeMap<i32, (i64, i64)> {
    let consumer: BaseConsumer = kafka.client_config().create().expect("consumer");
    (0..PARTITIONS)
        .map(|p| {
            (
                p,
                consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .expect("watermarks"),
            )
        })
        .collect()
}

/// Commits the end of every partition for `group`, as a group that has read everything.
fn commit_group_at_end(kafka: &RealKafka, group: &str, topic: &str) {
    let consumer: BaseConsumer = factory(kafka)
        .create(
            "group seeder",
            &factory(kafka).consumer_config(group, Isolation::ReadCommitted),
        )
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for (p, (_, high)) in watermarks(kafka, topic) {
        tpl.add_partition_offset(topic, p, Offset::Offset(high))
            .expect("tpl");
    }
    consumer.commit(&tpl, CommitMode::Sync).expect("commit");
}

fn config(db_url: &str, topic: &str, group: &str) -> SinkConfig {
    let mut c = SinkConfig::new(db_url);
    c.topic = Some(topic.to_string());
    c.dlq_topic = Some(format!("{topic}.dlq"));
    c.group = group.to_string();
    c.batch_rows = 500;
    c.batch_max_ms = 100;
    c
}

struct RunningSink {
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<Result<SinkReport, callsync_sinks::SinkError>>,
    _stop_on_drop: tokio_util::sync::DropGuard,
}

fn start_sink(kafka: &RealKafka, config: SinkConfig, store: Arc<dyn CallStore>) -> RunningSink {
    let shutdown = Shutdown::new();
    let task = tokio::spawn(run_sink(config, factory(kafka), store, shutdown.clone()));
    RunningSink {
        _stop_on_drop: shutdown.trigger_on_drop(),
        shutdown,
        task,
    }
}

impl RunningSink {
    async fn stop(self) -> SinkReport {
        self.shutdown.trigger();
        self.task.await.expect("sink task").expect("sink")
    }
}

async fn topic(kafka: &RealKafka, name: &str) -> String {
    let topic = kafka.unique_topic(name);
    kafka
        .create_topic(&topic, PARTITIONS, &[])
        .await
        .expect("create topic");
    kafka
        .create_topic(&format!("{topic}.dlq"), 1, &[])
        .await
        .expect("create dlq");
    topic
}

async fn wait_for_rows(store: &dyn CallStore, n: usize, timeout: Duration) -> Vec<StoredCall> {
    let started = Instant::now();
    loop {
        let rows = store.all_calls().await.expect("read calls");
        if rows.len() >= n {
            return rows;
        }
        assert!(
            started.elapsed() < timeout,
            "{} of {n} rows after {timeout:?}",
            rows.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fails on the code before this change: partitions without a row in `callsync_offsets` were
/// assigned at the group's committed Kafka offset, so a new database behind an existing group
/// stayed empty (0 rows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_database_behind_a_group_that_has_read_everything_is_filled_completely() {
    let kafka = callsync_testkit::skip_unless_kafka!();
    let db = callsync_testkit::skip_unless_postgres!();
    let metrics = callsync_runtime::metrics::prometheus();
    let topic = topic(&kafka, "sink-new-db").await;
    let records = dataset(600, "n");
    produce(&kafka, &topic, &records).await;
    let group = kafka.unique_group("sink-new-db");
    commit_group_at_end(&kafka, &group, &topic);

    let store = PgStore::connect(&db.url, 4, 500).await.unwrap();
    store.migrate().await.unwrap();
    let store: Arc<dyn CallStore> = Arc::new(store);
    let sink = start_sink(&kafka, config(&db.url, &topic, &group), store.clone());
    let rows = wait_for_rows(store.as_ref(), records.len(), Duration::from_secs(30)).await;
    let report = sink.stop().await;
    assert_eq!(rows.len(), records.len());
    assert_eq!(
        report.partitions_backfilled, PARTITIONS as u64,
        "{report:?}"
    );
    let stored = store
        .load_partition_offsets(&group, &topic)
        .await
        .expect("offsets");
    for (p, (_, high)) in watermarks(&kafka, &topic) {
        let s = &stored[&p];
        assert_eq!(s.next_offset, high, "partition {p}");
        assert_eq!(s.backfill_until, Some(high), "the backfill's end is kept");
        assert!(s.topic_id.is_some(), "the real broker gives topic ids");
    }
    // the gauges are process-wide (other tests of this binary set them too): their series exist
    let rendered = metrics.render();
    for series in [
        "callsync_sink_partitions{state=\"backfilling\"}",
        "callsync_sink_partitions{state=\"live\"}",
        "callsync_sink_backfill_remaining",
    ] {
        assert!(
            rendered.contains(series),
            "{series} missing from:\n{rendered}"
        );
    }
}

/// The group's offsets in Kafka, per partition of `topic` (`None`: nothing committed).
fn kafka_committed(kafka: &RealKafka, group: &str, topic: &str) -> BTreeMap<i32, Option<i64>> {
    let consumer: BaseConsumer = factory(kafka)
        .create(
            "offset reader",
            &factory(kafka).consumer_config(group, Isolation::ReadCommitted),
        )
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets")
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => (e.partition(), Some(o)),
            _ => (e.partition(), None),
        })
        .collect()
}

/// A partition resumed from the database's offset gets that offset in Kafka too, at once.
/// The process that applied the last batch may have died before its asynchronous commit to
/// Kafka (a SIGKILL); with no new record on the partition nothing else corrected Kafka's
/// copy, and lag tools (`callsync status`, the lag metric) showed records left for good.
/// Fails on the code before this change (Kafka's offsets stay where the test put them); found
/// by the chaos test (a sink group with lag 21 and every row applied).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_partition_puts_the_database_offset_in_kafka_for_lag_tools() {
    let kafka = callsync_testkit::skip_unless_kafka!();
    let db = callsync_testkit::skip_unless_postgres!();
    let topic = topic(&kafka, "sink-resume-commit").await;
    let records = dataset(300, "r");
    produce(&kafka, &topic, &records).await;
    let group = kafka.unique_group("sink-resume-commit");
    let store = PgStore::connect(&db.url, 4, 500).await.unwrap();
    store.migrate().await.unwrap();
    let store: Arc<dyn CallStore> = Arc::new(store);
    let sink = start_sink(&kafka, config(&db.url, &topic, &group), store.clone());
    wait_for_rows(store.as_ref(), records.len(), Duration::from_secs(30)).await;
    sink.stop().await;

    // Kafka's copy back at the start of every partition, as a killed sink can leave it
    let consumer: BaseConsumer = factory(&kafka)
        .create(
            "group rewinder",
            &factory(&kafka).consumer_config(&group, Isolation::ReadCommitted),
        )
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(&topic, p, Offset::Offset(0))
            .expect("tpl");
    }
    consumer.commit(&tpl, CommitMode::Sync).expect("commit");
    drop(consumer);

    let ends: BTreeMap<i32, Option<i64>> = watermarks(&kafka, &topic)
        .into_iter()
        .map(|(p, (_, high))| (p, Some(high)))
        .collect();
    let sink = start_sink(&kafka, config(&db.url, &topic, &group), store.clone());
    let started = Instant::now();
    let mut committed = kafka_committed(&kafka, &group, &topic);
    while committed != ends && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        committed = kafka_committed(&kafka, &group, &topic);
    }
    sink.stop().await;
    assert_eq!(
        committed, ends,
        "the group's Kafka offsets after the sink resumed (nothing new to read)"
    );
}

/// A store whose first `load_partition_offsets` takes `delay` (longer than the sink's
/// rebalance timeout: the loop answers its first assignment after the poller gave up
/// waiting), or fails when `fail` is set (the database is away at the assignment).
#[derive(Debug)]
struct SlowFirstLoad {
    inner: PgStore,
    slowed: AtomicBool,
    delay: Duration,
    fail: bool,
}

#[async_trait]
impl CallStore for SlowFirstLoad {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    async fn migrate(&self) -> Result<(), StoreError> {
        self.inner.migrate().await
    }
    async fn load_partition_offsets(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<BTreeMap<i32, StoredOffset>, StoreError> {
        if !self.slowed.swap(true, Ordering::SeqCst) {
            tokio::time::sleep(self.delay).await;
            if self.fail {
                return Err(StoreError::Transient {
                    operation: "loading callsync_offsets",
                    source: sqlx::Error::PoolTimedOut,
                });
            }
        }
        self.inner.load_partition_offsets(group, topic).await
    }
    async fn apply(
        &self,
        batch: &SinkBatch,
        offsets: &OffsetCommit,
    ) -> Result<ApplyOutcome, StoreError> {
        self.inner.apply(batch, offsets).await
    }
    async fn dead_letters(
        &self,
        group: &str,
        topic: &str,
        query: &DeadLetterQuery,
    ) -> Result<Vec<StoredDeadLetter>, StoreError> {
        self.inner.dead_letters(group, topic, query).await
    }
    async fn count_dead_letters(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<callsync_sinks::DeadLetterCounts, StoreError> {
        self.inner.count_dead_letters(group, topic).await
    }
    async fn mark_dead_letters_published(
        &self,
        group: &str,
        topic: &str,
        ids: &[DeadLetterId],
    ) -> Result<(), StoreError> {
        self.inner
            .mark_dead_letters_published(group, topic, ids)
            .await
    }
    async fn redrive(
        &self,
        batch: &SinkBatch,
        marks: &RedriveMarks,
    ) -> Result<RedriveOutcome, StoreError> {
        self.inner.redrive(batch, marks).await
    }
    async fn record_redrive_failure(
        &self,
        group: &str,
        topic: &str,
        id: DeadLetterId,
        error: &str,
    ) -> Result<(), StoreError> {
        self.inner
            .record_redrive_failure(group, topic, id, error)
            .await
    }
    async fn get(
        &self,
        provider: &str,
        account_id: &str,
        call_id: &str,
    ) -> Result<Option<StoredCall>, StoreError> {
        self.inner.get(provider, account_id, call_id).await
    }
    async fn all_calls(&self) -> Result<Vec<StoredCall>, StoreError> {
        self.inner.all_calls().await
    }
}

/// The handshake times out (the loop is busy for longer than `rebalance_timeout_ms`), the
/// poller assigns the partitions unread, and the loop, reaching the stale assignment, seeks
/// them to the database's offsets (here: none, so the beginning) and fills the table. Without
/// the seek (checked by removing it) the partitions stay at their end and nothing lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_answered_after_the_rebalance_timeout_seeks_to_the_stored_offsets() {
    let kafka = callsync_testkit::skip_unless_kafka!();
    let db = callsync_testkit::skip_unless_postgres!();
    let topic = topic(&kafka, "sink-stale-assign").await;
    let records = dataset(300, "s");
    produce(&kafka, &topic, &records).await;
    let group = kafka.unique_group("sink-stale-assign");
    commit_group_at_end(&kafka, &group, &topic);

    let inner = PgStore::connect(&db.url, 4, 500).await.unwrap();
    inner.migrate().await.unwrap();
    let store: Arc<dyn CallStore> = Arc::new(SlowFirstLoad {
        inner,
        slowed: AtomicBool::new(false),
        delay: Duration::from_millis(2500),
        fail: false,
    });
    let mut cfg = config(&db.url, &topic, &group);
    cfg.rebalance_timeout_ms = 300;
    let sink = start_sink(&kafka, cfg, store.clone());
    let rows = wait_for_rows(store.as_ref(), records.len(), Duration::from_secs(30)).await;
    sink.stop().await;
    assert_eq!(rows.len(), records.len());
}

/// The database does not answer when the partitions are assigned: they are assigned at their
/// end, unread, and on a topic where nothing new arrives no record would ever make the sink
/// look at them; it checks them again by itself and reads the backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_assigned_while_the_database_is_away_are_read_once_it_answers() {
    let kafka = callsync_testkit::skip_unless_kafka!();
    let db = callsync_testkit::skip_unless_postgres!();
    let topic = topic(&kafka, "sink-db-away").await;
    let records = dataset(200, "a");
    produce(&kafka, &topic, &records).await;
    let group = kafka.unique_group("sink-db-away");
    let inner = PgStore::connect(&db.url, 4, 500).await.unwrap();
    inner.migrate().await.unwrap();
    let store: Arc<dyn CallStore> = Arc::new(SlowFirstLoad {
        inner,
        slowed: AtomicBool::new(false),
        delay: Duration::ZERO,
        fail: true,
    });
    let sink = start_sink(&kafka, config(&db.url, &topic, &group), store.clone());
    let rows = wait_for_rows(store.as_ref(), records.len(), Duration::from_secs(30)).await;
    sink.stop().await;
    assert_eq!(rows.len(), records.len());
}

/// A stored offset past a partition's end (here set by hand, as a recreated topic leaves
/// it) stops that partition, with the error naming the fix; the other partitions go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_offset_past_the_end_stops_only_its_partition() {
    let kafka = callsync_testkit::skip_unless_kafka!();
    let db = callsync_testkit::skip_unless_postgres!();
    let topic = topic(&kafka, "sink-past-end").await;
    let group = kafka.unique_group("sink-past-end");
    let store = PgStore::connect(&db.url, 4, 500).await.unwrap();
    store.migrate().await.unwrap();
    sqlx::query(
        "INSERT INTO callsync_offsets (consumer_group, topic, partition, next_offset) VALUES ($1, $2, 1, 5000)",
    )
    .bind(&group)
    .bind(&topic)
    .execute(store.pool())
    .await
    .unwrap();
    let records = dataset(200, "p");
    produce(&kafka, &topic, &records).await;
    let in_partition_1 = {
        let consumer: BaseConsumer = kafka.client_config().create().unwrap();
        consumer
            .fetch_watermarks(&topic, 1, Duration::from_secs(10))
            .unwrap()
            .1 as usize
    };
    assert!(in_partition_1 > 0);

    let store: Arc<dyn CallStore> = Arc::new(store);
    let sink = start_sink(&kafka, config(&db.url, &topic, &group), store.clone());
    let rows = wait_for_rows(
        store.as_ref(),
        records.len() - in_partition_1,
        Duration::from_secs(60),
    )
    .await;
    // the stopped partition stays unread, while the others keep going
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = sink.stop().await;
    assert_eq!(rows.len(), records.len() - in_partition_1);
    assert!(rows.iter().all(|r| r.kafka_partition != 1));
    assert_eq!(report.partitions_stopped, 1, "{report:?}");
    let stored = store.load_partition_offsets(&group, &topic).await.unwrap();
    assert_eq!(
        stored[&1].next_offset, 5000,
        "a stopped partition's offset is kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_topic_has_another_id() {
    let kafka = callsync_testkit::skip_unless_kafka!();
    let topic = topic(&kafka, "sink-topic-id").await;
    let inspector = TopicInspector::new(&factory(&kafka), "g", topic.clone()).expect("inspector");
    let before = inspector.snapshot(vec![0, 1, 2]).await;
    assert!(before.topic_id.is_some(), "{before:?}");
    assert_eq!(before.ranges.len(), 3);
    kafka.delete_topic(&topic).await.expect("delete");
    kafka
        .create_topic(&topic, 2, &[])
        .await
        .expect("create again");
    let inspector = TopicInspector::new(&factory(&kafka), "g", topic.clone()).expect("inspector");
    let after = inspector.snapshot(vec![0, 1]).await;
    assert!(after.topic_id.is_some(), "{after:?}");
    assert_ne!(before.topic_id, after.topic_id);
}

fn row(call_id: &str, partition: i32, offset: i64) -> SinkRow {
    SinkRow::new(
        sample_call(Provider::Ringba, "acct-1", call_id, 7),
        SourceRecord {
            partition,
            offset,
            key: Some(call_id.as_bytes().to_vec()),
            payload: Some(b"v".to_vec()),
        },
    )
}

/// A batch with one row and one dead letter at offset 1 of partition 0.
fn batch_with_a_dead_letter(topic: &str) -> SinkBatch {
    let mut batch = SinkBatch::from_rows(topic, [row("ok", 0, 0)]);
    batch.push_dead_letter(
        SourceRecord {
            partition: 0,
            offset: 1,
            key: Some(b"ringba:acct-1:bad".to_vec()),
            payload: Some(b"not avro".to_vec()),
        },
        "undecodable: not avro",
    );
    batch
}

fn first_commit(group: &str, topic: &str) -> OffsetCommit {
    OffsetCommit {
        consumer_group: group.into(),
        topic: topic.into(),
        topic_id: None,
        advances: vec![OffsetAdvance {
            partition: 0,
            expected: None,
            next_offset: 2,
            backfill_until: None,
        }],
    }
}

/// Dead letters are written with the offsets that move past them: a second instance whose
/// batch meets the offset conflict writes none, and a sink that committed but died before
/// publishing has them published once by the next one, with an id that names them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_kept_once_through_an_offset_conflict_and_published_after_a_crash() {
    let kafka = callsync_testkit::skip_unless_kafka!();
    let db = callsync_testkit::skip_unless_postgres!();
    let topic = topic(&kafka, "sink-dead-letters").await;
    let group = kafka.unique_group("sink-dead-letters");
    let store = PgStore::connect(&db.url, 4, 500).await.unwrap();
    store.migrate().await.unwrap();

    // two instances apply the same batch from the same (absent) offset
    let batch = batch_with_a_dead_letter(&topic);
    let commit = first_commit(&group, &topic);
    assert!(matches!(
        store.apply(&batch, &commit).await.unwrap(),
        ApplyOutcome::Committed(_)
    ));
    assert!(matches!(
        store.apply(&batch, &commit).await.unwrap(),
        ApplyOutcome::OffsetConflict(_)
    ));
    let all = DeadLetterQuery {
        limit: 100,
        ..DeadLetterQuery::default()
    };
    let kept = store.dead_letters(&group, &topic, &all).await.unwrap();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0].reason, "undecodable");
    assert!(
        kept[0].published_at.is_none(),
        "the instance 'died' before publishing"
    );

    // the records are in Kafka too; the next sink of the group publishes what is pending
    produce_raw(&kafka, &topic, 0, "ringba:acct-1:ok", b"x").await;
    produce_raw(&kafka, &topic, 0, "ringba:acct-1:bad", b"not avro").await;
    let store: Arc<dyn CallStore> = Arc::new(store);
    for _ in 0..2 {
        let sink = start_sink(&kafka, config(&db.url, &topic, &group), store.clone());
        let started = Instant::now();
        while store.dead_letters(&group, &topic, &all).await.unwrap()[0]
            .published_at
            .is_none()
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "never published"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        sink.stop().await;
    }
    let dlq: BaseConsumer = kafka
        .client_config()
        .set("group.id", kafka.unique_group("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    dlq.subscribe(&[&format!("{topic}.dlq")]).unwrap();
    let mut published = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        if let Some(m) = dlq.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            let headers: BTreeMap<String, String> = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_string(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            published.push(headers);
        }
    }
    assert_eq!(published.len(), 1, "published once: {published:?}");
    assert_eq!(
        published[0]["callsync.dead_letter.id"],
        format!("{group}/{topic}/0/1")
    );
    assert_eq!(published[0]["callsync.error.reason"], "undecodable");
    assert_eq!(published[0]["callsync.error.stage"], "sink");
}
