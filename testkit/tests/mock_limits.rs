//! Pins what librdkafka's mock cluster does NOT do (docs/testing.md lists these). If one of
//! these tests starts failing after an rdkafka upgrade, the mock gained the feature: update
//! docs/testing.md and move the affected tests to the fast tier.

use std::time::Duration;

use callsync_testkit::{unique_group, unique_topic, MockKafka};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(30);

async fn send(p: &FutureProducer, topic: &str, value: &str) {
    p.send(
        FutureRecord::to(topic).key("k").payload(value),
        Duration::from_secs(10),
    )
    .await
    .map_err(|(e, _)| e)
    .unwrap();
}

/// EndTxn writes no abort marker: a read_committed consumer reads aborted records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_read_committed_sees_aborted_records() {
    let mock = MockKafka::new(1).unwrap();
    let topic = unique_topic("mock-txn");
    mock.create_topic(&topic, 1).unwrap();
    let p: FutureProducer = mock
        .client_config()
        .set("transactional.id", unique_group("mock-txn"))
        .create()
        .unwrap();
    p.init_transactions(TIMEOUT).unwrap();
    p.begin_transaction().unwrap();
    for i in 0..3 {
        send(&p, &topic, &format!("aborted-{i}")).await;
    }
    p.flush(TIMEOUT).unwrap();
    p.abort_transaction(TIMEOUT).unwrap();
    p.begin_transaction().unwrap();
    for i in 0..3 {
        send(&p, &topic, &format!("committed-{i}")).await;
    }
    p.commit_transaction(TIMEOUT).unwrap();

    let c: BaseConsumer = mock
        .client_config()
        .set("group.id", unique_group("mock-rc"))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    c.subscribe(&[&topic]).unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut n = 0;
    while n < 6 && std::time::Instant::now() < deadline {
        if let Some(Ok(_)) = c.poll(Duration::from_millis(200)) {
            n += 1;
        }
    }
    assert_eq!(
        n, 6,
        "the mock now hides aborted records: update docs/testing.md"
    );
}

/// The admin API's CreateTopics is not implemented by the mock brokers.
#[tokio::test]
async fn mock_has_no_create_topics_admin_api() {
    let mock = MockKafka::new(1).unwrap();
    let admin: AdminClient<DefaultClientContext> = mock.client_config().create().unwrap();
    let topic = unique_topic("mock-admin");
    let new = NewTopic::new(&topic, 1, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(2)));
    let res = admin.create_topics([&new], &opts).await;
    let failed = match &res {
        Err(_) => true,
        Ok(results) => results.iter().any(|r| r.is_err()),
    };
    assert!(
        failed,
        "the mock now supports CreateTopics ({res:?}): update docs/testing.md"
    );
    eprintln!("mock create_topics -> {res:?}");
}

/// ListOffsets by timestamp is not implemented: offsets_for_times answers "end" (-1) instead of
/// the first offset at or after the timestamp, without an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_offsets_for_times_answers_end() {
    let mock = MockKafka::new(1).unwrap();
    let topic = unique_topic("mock-times");
    mock.create_topic(&topic, 1).unwrap();
    let p: FutureProducer = mock.client_config().create().unwrap();
    for i in 0..5 {
        send(&p, &topic, &format!("v{i}")).await;
    }
    let c: BaseConsumer = mock
        .client_config()
        .set("group.id", unique_group("mock-times"))
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    // a timestamp before every record: a real broker answers offset 0
    tpl.add_partition_offset(&topic, 0, Offset::Offset(1))
        .unwrap();
    let res = c.offsets_for_times(tpl, TIMEOUT).unwrap();
    let offset = res.elements()[0].offset();
    assert_ne!(
        offset,
        Offset::Offset(0),
        "the mock now resolves timestamps: update docs/testing.md"
    );
    eprintln!("mock offsets_for_times(ts=1) -> {offset:?}");
}

/// TxnOffsetCommit is checked but not stored: offsets sent with send_offsets_to_transaction are
/// not the group's committed offsets afterwards (a plain commit is).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_does_not_store_transactional_offsets() {
    use rdkafka::consumer::CommitMode;

    let mock = MockKafka::new(1).unwrap();
    let topic = unique_topic("mock-txn-offsets");
    mock.create_topic(&topic, 1).unwrap();
    let plain: FutureProducer = mock.client_config().create().unwrap();
    for i in 0..3 {
        send(&plain, &topic, &format!("v{i}")).await;
    }
    let c: BaseConsumer = mock
        .client_config()
        .set("group.id", unique_group("mock-txn-offsets"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    c.subscribe(&[&topic]).unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut n = 0;
    while n < 3 && std::time::Instant::now() < deadline {
        if let Some(Ok(_)) = c.poll(Duration::from_millis(100)) {
            n += 1;
        }
    }
    assert_eq!(n, 3);

    let p: FutureProducer = mock
        .client_config()
        .set("transactional.id", unique_group("mock-txn-offsets"))
        .create()
        .unwrap();
    p.init_transactions(TIMEOUT).unwrap();
    p.begin_transaction().unwrap();
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(&topic, 0, Offset::Offset(2))
        .unwrap();
    p.send_offsets_to_transaction(&offsets, &c.group_metadata().unwrap(), TIMEOUT)
        .unwrap();
    p.commit_transaction(TIMEOUT).unwrap();
    let committed = c.committed(TIMEOUT).unwrap();
    assert_ne!(
        committed.elements()[0].offset(),
        Offset::Offset(2),
        "the mock now stores transactional offsets: update docs/testing.md"
    );

    // a plain commit is stored
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(&topic, 0, Offset::Offset(1))
        .unwrap();
    c.commit(&offsets, CommitMode::Sync).unwrap();
    let committed = c.committed(TIMEOUT).unwrap();
    assert_eq!(committed.elements()[0].offset(), Offset::Offset(1));
}
