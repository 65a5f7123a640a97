//! Proves the harness works: Postgres databases, the mock cluster, the real broker.

use std::collections::HashSet;
use std::time::Duration;

use callsync_testkit::{
    skip_unless_kafka, skip_unless_postgres, unique_group, unique_topic, MockKafka, PgServer,
    PgStopMode, RealKafka,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------- postgres

#[tokio::test]
async fn postgres_databases_are_fresh_and_distinct() {
    let a = skip_unless_postgres!();
    let b = skip_unless_postgres!();
    assert_ne!(a.name, b.name);
    assert!(a.name.starts_with("cs_test_"));

    let current: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&a.pool)
        .await
        .unwrap();
    assert_eq!(current, a.name);

    sqlx::query("CREATE TABLE t (id int PRIMARY KEY)")
        .execute(&a.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO t VALUES (1), (2)")
        .execute(&a.pool)
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&a.pool)
        .await
        .unwrap();
    assert_eq!(n, 2);
    // b is another database: no table t there
    let in_b: Option<String> = sqlx::query_scalar("SELECT to_regclass('t')::text")
        .fetch_one(&b.pool)
        .await
        .unwrap();
    assert_eq!(in_b, None);

    assert!(a.admin_url().starts_with("postgres://"));
    b.drop_database().await.unwrap();
}

/// A cluster of the test's own, restarted fast and then "crashed" (immediate stop); the pool
/// reconnects after each start.
#[tokio::test]
async fn throwaway_postgres_survives_restarts() {
    let server = match PgServer::start_throwaway().await {
        Ok(s) => s,
        Err(e) if e.is_unavailable() => {
            callsync_testkit::require("PostgreSQL", &e.to_string());
            return;
        }
        Err(e) => panic!("{e}"),
    };
    assert!(server.is_owned());
    let db = server.create_database().await.unwrap();
    sqlx::query("CREATE TABLE t (id int PRIMARY KEY)")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO t VALUES (1)")
        .execute(&db.pool)
        .await
        .unwrap();

    server.restart(PgStopMode::Fast).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(n, 1, "a clean shutdown keeps committed rows");

    server.stop(PgStopMode::Immediate).await.unwrap();
    // down: a new connection is refused at once (the pool itself would retry until its
    // 30 s acquire timeout)
    assert!(<sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
        .await
        .is_err());
    server.start().await.unwrap();
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(one, 1);

    let dir = server.data_dir().unwrap().to_path_buf();
    drop(db);
    drop(server);
    assert!(
        !dir.exists(),
        "dropping the server deletes {}",
        dir.display()
    );
}

// ---------------------------------------------------------------------------------- mock kafka

fn producer(config: &ClientConfig) -> FutureProducer {
    config
        .clone()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .create()
        .unwrap()
}

fn consumer(config: &ClientConfig, group: &str, isolation: &str) -> BaseConsumer {
    config
        .clone()
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()
        .unwrap()
}

/// Polls until `want` messages arrived (or TIMEOUT); returns their (key, value) pairs.
fn read(consumer: &BaseConsumer, want: usize) -> Vec<(String, String)> {
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut got = Vec::new();
    while got.len() < want && std::time::Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            got.push((key, value));
        }
    }
    got
}

/// Polls for `quiet` more and returns whatever else arrives.
fn read_more(consumer: &BaseConsumer, quiet: Duration) -> Vec<String> {
    let deadline = std::time::Instant::now() + quiet;
    let mut got = Vec::new();
    while std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            got.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
        }
    }
    got
}

async fn send(producer: &FutureProducer, topic: &str, key: &str, value: &str) {
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(value),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_kafka_round_trip() {
    let mock = MockKafka::new(3).unwrap();
    let topic = unique_topic("mock");
    mock.create_topic(&topic, 3).unwrap();

    let p = producer(&mock.client_config());
    for i in 0..10 {
        send(&p, &topic, &format!("k{i}"), &format!("v{i}")).await;
    }
    let c = consumer(
        &mock.client_config(),
        &unique_group("mock"),
        "read_committed",
    );
    c.subscribe(&[&topic]).unwrap();
    let got = read(&c, 10);
    let values: HashSet<_> = got.iter().map(|(_, v)| v.clone()).collect();
    assert_eq!(values.len(), 10, "got {got:?}");
    assert!(values.contains("v0") && values.contains("v9"));
}

#[test]
fn mock_kafka_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<MockKafka>();
}

// ---------------------------------------------------------------------------------- real kafka

/// Idempotent + transactional producer, committed and aborted transactions, read_committed
/// consumer: only committed records are read (the mock cannot show this, see docs/testing.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_kafka_transactions_are_read_committed() {
    let kafka: RealKafka = skip_unless_kafka!();
    let topic = kafka.unique_topic("txn");
    kafka.create_topic(&topic, 3, &[]).await.unwrap();

    let p: FutureProducer = kafka
        .client_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("transactional.id", kafka.unique_group("txn"))
        .create()
        .unwrap();
    p.init_transactions(TIMEOUT).unwrap();

    p.begin_transaction().unwrap();
    for i in 0..10 {
        send(&p, &topic, &format!("k{i}"), &format!("committed-a{i}")).await;
    }
    p.commit_transaction(TIMEOUT).unwrap();

    p.begin_transaction().unwrap();
    for i in 0..5 {
        send(&p, &topic, &format!("k{i}"), &format!("aborted-{i}")).await;
    }
    p.flush(TIMEOUT).unwrap(); // really on the broker, then aborted
    p.abort_transaction(TIMEOUT).unwrap();

    p.begin_transaction().unwrap();
    for i in 0..10 {
        send(&p, &topic, &format!("k{i}"), &format!("committed-b{i}")).await;
    }
    p.commit_transaction(TIMEOUT).unwrap();

    let c = consumer(
        &kafka.client_config(),
        &kafka.unique_group("rc"),
        "read_committed",
    );
    c.subscribe(&[&topic]).unwrap();
    let mut values: Vec<String> = read(&c, 20).into_iter().map(|(_, v)| v).collect();
    values.extend(read_more(&c, Duration::from_millis(500)));
    assert_eq!(values.len(), 20, "got {values:?}");
    assert!(
        values.iter().all(|v| v.starts_with("committed-")),
        "got {values:?}"
    );

    // and read_uncommitted does see the aborted ones
    let c = consumer(
        &kafka.client_config(),
        &kafka.unique_group("ru"),
        "read_uncommitted",
    );
    c.subscribe(&[&topic]).unwrap();
    let mut all: Vec<String> = read(&c, 25).into_iter().map(|(_, v)| v).collect();
    all.extend(read_more(&c, Duration::from_millis(500)));
    assert_eq!(all.len(), 25, "got {all:?}");
    assert_eq!(all.iter().filter(|v| v.starts_with("aborted-")).count(), 5);
}

/// The consume-transform-produce basis: offsets sent with send_offsets_to_transaction become
/// the group's committed offsets when the transaction commits, and not when it aborts (the
/// mock stores neither, see mock_limits.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_kafka_commits_offsets_in_transactions() {
    use rdkafka::Offset;

    let kafka = skip_unless_kafka!();
    let topic = kafka.unique_topic("txn-offsets");
    kafka.create_topic(&topic, 1, &[]).await.unwrap();
    let plain = producer(&kafka.client_config());
    for i in 0..3 {
        send(&plain, &topic, "k", &format!("v{i}")).await;
    }
    let group = kafka.unique_group("txn-offsets");
    let c = consumer(&kafka.client_config(), &group, "read_committed");
    c.subscribe(&[&topic]).unwrap();
    assert_eq!(read(&c, 3).len(), 3);

    let p: FutureProducer = kafka
        .client_config()
        .set("transactional.id", kafka.unique_group("txn-offsets"))
        .create()
        .unwrap();
    p.init_transactions(TIMEOUT).unwrap();
    let offsets = |o: i64| {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Offset(o))
            .unwrap();
        tpl
    };
    let meta = c.group_metadata().unwrap();

    p.begin_transaction().unwrap();
    p.send_offsets_to_transaction(&offsets(1), &meta, TIMEOUT)
        .unwrap();
    p.abort_transaction(TIMEOUT).unwrap();
    let committed = c.committed(TIMEOUT).unwrap();
    assert_ne!(committed.elements()[0].offset(), Offset::Offset(1));

    p.begin_transaction().unwrap();
    p.send_offsets_to_transaction(&offsets(3), &meta, TIMEOUT)
        .unwrap();
    p.commit_transaction(TIMEOUT).unwrap();
    let committed = c.committed(TIMEOUT).unwrap();
    assert_eq!(committed.elements()[0].offset(), Offset::Offset(3));
}

/// The broker's cleaner runs every 100 ms (log.cleaner.backoff.ms): with segment.ms and
/// min.cleanable.dirty.ratio small, a compacted topic drops old versions within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_kafka_compacts_quickly() {
    let kafka = skip_unless_kafka!();
    let topic = kafka.unique_topic("compact");
    kafka
        .create_topic(
            &topic,
            1,
            &[
                ("cleanup.policy", "compact"),
                ("segment.ms", "100"),
                ("min.cleanable.dirty.ratio", "0.01"),
                ("delete.retention.ms", "100"),
                ("min.compaction.lag.ms", "0"),
            ],
        )
        .await
        .unwrap();
    let p = producer(&kafka.client_config());
    for version in 0..5 {
        for k in 0..10 {
            send(&p, &topic, &format!("k{k}"), &format!("v{version}")).await;
        }
    }
    let started = std::time::Instant::now();
    let deadline = started + TIMEOUT;
    loop {
        // the active segment is never cleaned: a later record rolls it (segment.ms=100)
        tokio::time::sleep(Duration::from_millis(200)).await;
        send(&p, &topic, "roll", "x").await;
        let c: BaseConsumer = kafka
            .client_config()
            .set("group.id", kafka.unique_group("compact"))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, rdkafka::Offset::Beginning)
            .unwrap();
        c.assign(&tpl).unwrap();
        let (low, high) = c.fetch_watermarks(&topic, 0, TIMEOUT).unwrap();
        let mut count = 0;
        let mut last_offset = -1;
        while last_offset + 1 < high {
            match c.poll(Duration::from_secs(5)) {
                Some(Ok(m)) => {
                    count += 1;
                    last_offset = m.offset();
                }
                Some(Err(e)) => panic!("{e}"),
                None => break,
            }
        }
        let _ = low;
        // 50 versions of k0..k9 collapse to 10 (plus the roll records kept for key "roll")
        if count < 50 {
            eprintln!(
                "compacted {} -> {count} records in {:?}",
                high,
                started.elapsed()
            );
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no compaction after {TIMEOUT:?} ({count} records of {high})"
        );
    }
}
