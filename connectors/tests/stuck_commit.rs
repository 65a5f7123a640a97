//! A transactional call of the Kafka sync store that does not return (librdkafka can wait
//! without a bound, see `callsync_runtime::step_watch`) is given up with `StoreError::Stuck`
//! naming the step, and its session is never used again; the restart (a new store opening
//! the same scope) fences the stuck transaction, resumes from the last committed cursor and
//! commits normally. Real broker: the mock cluster has no transaction markers.
//! Skipped without `KAFKA_BOOTSTRAP` (fails under CI=true), as testkit's `real_kafka` rules.

use std::time::{Duration, Instant};

use callsync_connectors::store::read_cursors;
use callsync_connectors::store::OutRecord;
use callsync_connectors::{
    CommitBatch, KafkaSyncStore, SourceCursor, StoreError, StoreFaults, SyncStore,
};
use callsync_runtime::{names, Isolation, KafkaClientFactory, KafkaSettings};
use callsync_schemas::{Provider, SyncMode};
use chrono::Utc;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};

/// What the store is given per call, and when a call is given up.
const TIMEOUT: Duration = Duration::from_secs(10);
const STUCK_AFTER: Duration = Duration::from_secs(3);
/// Longer than `STUCK_AFTER`: the injected hang, after which the held call goes on.
const HANG: Duration = Duration::from_secs(7);
const SCOPE: &str = "retreaver-acct-backfill";

async fn setup(kafka: &callsync_testkit::RealKafka, name: &str) -> (KafkaClientFactory, String) {
    let prefix = format!("{}.", kafka.unique_topic(name));
    for (topic, configs) in [
        (names::CALLS_RAW, vec![]),
        (names::CALLS_DLQ, vec![]),
        (names::SYNC_EVENTS, vec![]),
        (names::SOURCE_OFFSETS, vec![("cleanup.policy", "compact")]),
    ] {
        kafka
            .create_topic(&format!("{prefix}{topic}"), 1, &configs)
            .await
            .expect("topic created");
    }
    let mut settings = KafkaSettings::plaintext(kafka.bootstrap());
    settings.topic_prefix = prefix.clone();
    (KafkaClientFactory::new(settings), format!("{prefix}txn"))
}

fn cursor(pages: u64) -> SourceCursor {
    let now = Utc::now();
    SourceCursor {
        v: 1,
        provider: Provider::Retreaver,
        account: "acct".into(),
        stream: "backfill".into(),
        sync_id: "stuck-test".into(),
        mode: SyncMode::Backfill,
        scan: callsync_connectors::Scan::Created,
        window_start: now,
        window_end: now,
        next: None,
        done: false,
        watermark: None,
        after_transaction_id: None,
        records: pages,
        pages,
        updated_at: now,
    }
}

fn batch(keys: &[&str], pages: u64) -> CommitBatch {
    CommitBatch {
        records: keys
            .iter()
            .map(|k| OutRecord {
                key: k.as_bytes().to_vec(),
                value: format!("value of {k}").into_bytes(),
                headers: Vec::new(),
            })
            .collect(),
        cursor: Some(cursor(pages)),
        ..CommitBatch::default()
    }
}

/// The keys of `topic`'s single partition, read_committed, to its end.
fn committed_keys(factory: &KafkaClientFactory, topic: &str) -> Vec<String> {
    let mut cfg = factory.consumer_config(&format!("{topic}-verify"), Isolation::ReadCommitted);
    cfg.set("enable.partition.eof", "true");
    let consumer: BaseConsumer = cfg.create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .expect("tpl");
    consumer.assign(&tpl).expect("assign");
    let started = Instant::now();
    let mut keys = Vec::new();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "reading {topic}"
        );
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => return keys,
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            Some(Ok(m)) => keys.push(String::from_utf8_lossy(m.key().expect("key")).into_owned()),
        }
    }
}

#[tokio::test]
async fn a_stuck_commit_is_given_up_and_the_restart_fences_it() {
    let Some(kafka) = callsync_testkit::real_kafka() else {
        return;
    };
    let (factory, txn_prefix) = setup(&kafka, "cs-conn-stuck-commit").await;
    let store =
        KafkaSyncStore::new(factory.clone(), &txn_prefix, TIMEOUT).with_stuck_after(STUCK_AFTER);
    assert_eq!(
        KafkaSyncStore::new(factory.clone(), &txn_prefix, TIMEOUT).stuck_after(),
        TIMEOUT * 2
    );

    let first = store.open(SCOPE).await.expect("open");
    first
        .commit(batch(&["a1", "a2"], 1))
        .await
        .expect("page 1 commits");

    // the next process's first commit hangs inside commit_transaction
    let hanging = store.clone().with_faults(StoreFaults {
        hang_in_commit: Some(HANG),
        ..StoreFaults::default()
    });
    let session = hanging.open(SCOPE).await.expect("open");
    let started = Instant::now();
    let err = session
        .commit(batch(&["b1", "b2", "b3"], 2))
        .await
        .expect_err("a commit stuck past its bound is not a success");
    let given_up_after = started.elapsed();
    eprintln!("given up after {given_up_after:?}: {err}");
    match &err {
        StoreError::Stuck {
            step,
            scope,
            transactional_id,
            secs,
        } => {
            assert_eq!(*step, "commit_transaction");
            assert_eq!(scope, SCOPE);
            // named after the scope, under the deployment's topic prefix
            assert_eq!(
                transactional_id,
                &format!("{}{txn_prefix}-{SCOPE}", factory.settings().topic_prefix)
            );
            assert!(*secs >= STUCK_AFTER.as_secs(), "{secs}");
        }
        other => panic!("expected Stuck, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("commit_transaction") && message.contains(&txn_prefix),
        "{message}"
    );
    assert!(
        given_up_after < HANG,
        "the commit was only given up when the hang ended ({given_up_after:?})"
    );
    // the abandoned session never touches its producer again
    let again = Instant::now();
    let err = session
        .commit(batch(&["x1"], 9))
        .await
        .expect_err("an abandoned session does not commit");
    assert!(err.is_stuck(), "{err}");
    assert!(again.elapsed() < Duration::from_secs(1));

    // the restart: opening the scope fences the stuck transaction; the sync resumes from the
    // last committed cursor and commits normally
    let restarted = KafkaSyncStore::new(factory.clone(), &txn_prefix, TIMEOUT)
        .open(SCOPE)
        .await
        .expect("the restart opens the scope");
    let prefix = "retreaver/acct/";
    let resumed = restarted.cursors(prefix).await.expect("cursors");
    let resumed_pages = resumed.values().map(|c| c.pages).max();
    eprintln!(
        "resumed at page {resumed_pages:?} after {:?}",
        started.elapsed()
    );
    restarted
        .commit(batch(&["c1"], 3))
        .await
        .expect("the restarted session commits");

    // let the held thread go on to its (fenced) commit before looking
    tokio::time::sleep((HANG + Duration::from_secs(1)).saturating_sub(started.elapsed())).await;
    let topics = store.topics().clone();
    let keys = {
        let factory = factory.clone();
        let topic = topics.calls_raw.clone();
        tokio::task::spawn_blocking(move || committed_keys(&factory, &topic))
            .await
            .expect("reader")
    };
    let count = |k: &str| keys.iter().filter(|x| x.as_str() == k).count();
    for k in ["a1", "a2", "c1"] {
        assert_eq!(count(k), 1, "{k} in {keys:?}");
    }
    let stuck_batch: Vec<usize> = ["b1", "b2", "b3"].iter().map(|k| count(k)).collect();
    // fenced before it went on: none of it; had it committed first: all of it, once, and
    // the restart would have resumed after it
    match resumed_pages {
        Some(1) => assert_eq!(stuck_batch, vec![0, 0, 0], "{keys:?}"),
        Some(2) => assert_eq!(stuck_batch, vec![1, 1, 1], "{keys:?}"),
        other => panic!("resumed from {other:?}"),
    }
    assert_eq!(count("x1"), 0);
    assert_eq!(
        keys.len(),
        3 + stuck_batch.iter().sum::<usize>(),
        "{keys:?}"
    );
    let cursors = {
        let factory = factory.clone();
        tokio::task::spawn_blocking(move || {
            read_cursors(&factory, &topics.source_offsets, prefix, TIMEOUT)
                .map_err(|e| e.to_string())
        })
        .await
        .expect("reader")
        .expect("cursors")
    };
    assert_eq!(cursors.values().map(|c| c.pages).max(), Some(3));
}

#[tokio::test]
async fn a_stuck_init_transactions_is_given_up() {
    let Some(kafka) = callsync_testkit::real_kafka() else {
        return;
    };
    let (factory, txn_prefix) = setup(&kafka, "cs-conn-stuck-init").await;
    let store = KafkaSyncStore::new(factory.clone(), &txn_prefix, TIMEOUT)
        .with_stuck_after(STUCK_AFTER)
        .with_faults(StoreFaults {
            hang_in_open: Some(HANG),
            ..StoreFaults::default()
        });
    let started = Instant::now();
    let err = match store.open(SCOPE).await {
        Ok(_) => panic!("an open stuck past its bound is not a success"),
        Err(e) => e,
    };
    eprintln!("given up after {:?}: {err}", started.elapsed());
    assert!(
        matches!(&err, StoreError::Stuck { step: "init_transactions", scope, .. } if scope == SCOPE),
        "{err:?}"
    );
    assert!(started.elapsed() < HANG, "{:?}", started.elapsed());
}

/// Sessions are named after their scope under the deployment's topic prefix: two deployments
/// sharing a cluster (and the default `transactional_id_prefix`) run the same scope without
/// fencing each other, while a second session of the scope in one deployment still fences
/// the first (a zombie sync). Before the prefix, the second deployment's open fenced the
/// first's session and its next commit failed.
#[tokio::test]
async fn sessions_of_one_scope_fence_within_a_deployment_not_across_deployments() {
    let Some(kafka) = callsync_testkit::real_kafka() else {
        return;
    };
    let (prod, _) = setup(&kafka, "cs-conn-deploy-a").await;
    let (staging, _) = setup(&kafka, "cs-conn-deploy-b").await;
    let shared_prefix = kafka.unique_group("callsync-connector");
    let a = KafkaSyncStore::new(prod.clone(), &shared_prefix, TIMEOUT);
    let b = KafkaSyncStore::new(staging.clone(), &shared_prefix, TIMEOUT);
    let first = a.open(SCOPE).await.expect("open in prod");
    let other = b.open(SCOPE).await.expect("open in staging");
    first
        .commit(batch(&["p1"], 1))
        .await
        .expect("prod's session is not fenced by staging's");
    other
        .commit(batch(&["s1"], 1))
        .await
        .expect("staging's session commits");

    // within one deployment, the newer session of the scope fences the older one
    let newer = a.open(SCOPE).await.expect("a second session in prod");
    assert!(
        first.commit(batch(&["p2"], 2)).await.is_err(),
        "the older session of a scope is fenced"
    );
    newer
        .commit(batch(&["p3"], 2))
        .await
        .expect("the newer commits");
    let raw = prod.settings().topic(names::CALLS_RAW);
    assert_eq!(committed_keys(&prod, &raw), ["p1", "p3"]);
}
