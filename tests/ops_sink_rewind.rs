//! `callsync sink rewind` on the real broker and Postgres: `callsync_offsets` moves back to
//! the offsets at the time in one transaction (never forward, rows that do not exist stay
//! absent), a dry run changes nothing, an active sink group is refused, and the Kafka offsets
//! for lag tools follow.
//!
//! Needs `KAFKA_BOOTSTRAP` and Postgres (`DATABASE_URL` or local binaries).

mod ops_support;

use std::collections::BTreeMap;

use callsync::ops::{run_sink_rewind, OpsError, SinkRewindArgs};
use chrono::{TimeZone, Utc};
use ops_support::*;
use rdkafka::message::OwnedHeaders;

async fn stored_offsets(pool: &sqlx::PgPool, group: &str, topic: &str) -> BTreeMap<i32, i64> {
    sqlx::query_as::<_, (i32, i64)>(
        "SELECT partition, next_offset FROM callsync_offsets WHERE consumer_group = $1 AND topic = $2",
    )
    .bind(group)
    .bind(topic)
    .fetch_all(pool)
    .await
    .expect("read offsets")
    .into_iter()
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_rewind_moves_postgres_offsets_back_to_the_time() {
    let kafka = callsync_testkit::skip_unless_kafka!();
    let db = callsync_testkit::skip_unless_postgres!();
    callsync_sinks::PG_MIGRATOR
        .run(&db.pool)
        .await
        .expect("migrate");

    let prefix = unique_prefix(&kafka, "ops-rewind");
    let f = factory(&kafka, &prefix);
    let topic = f.settings().topic("calls");
    kafka
        .create_topic(&topic, 3, &[])
        .await
        .expect("create calls");

    // per partition: 5 records before the cut, 3 after
    // the broker refuses timestamps more than an hour ahead: stay in the recent past
    let cut = Utc
        .timestamp_millis_opt((Utc::now() - chrono::Duration::minutes(10)).timestamp_millis())
        .single()
        .expect("time");
    let cut_ms = cut.timestamp_millis();
    let mut records = Vec::new();
    for p in 0..3 {
        for i in 0..5 {
            records.push((
                format!("old-{p}-{i}"),
                b"v".to_vec(),
                Some(cut_ms - 60_000 + i),
                Some(p),
                OwnedHeaders::new(),
            ));
        }
        for i in 0..3 {
            records.push((
                format!("new-{p}-{i}"),
                b"v".to_vec(),
                Some(cut_ms + i),
                Some(p),
                OwnedHeaders::new(),
            ));
        }
    }
    produce(&f, &topic, records).await;

    // partition 0: fully applied (8); partition 1: only 2 applied (before the cut); 2: no row
    let group = kafka.unique_group("sink");
    for (p, next) in [(0, 8i64), (1, 2)] {
        sqlx::query("INSERT INTO callsync_offsets (consumer_group, topic, partition, next_offset) VALUES ($1, $2, $3, $4)")
            .bind(&group)
            .bind(&topic)
            .bind(p)
            .bind(next)
            .execute(&db.pool)
            .await
            .expect("seed offsets");
    }
    let before = stored_offsets(&db.pool, &group, &topic).await;

    let mut args = SinkRewindArgs {
        to_datetime: Some(cut),
        to_earliest: false,
        partitions: vec![],
        dry_run: true,
        group: Some(group.clone()),
        topic: None,
    };
    let mut out = Vec::new();
    let plan = run_sink_rewind(&args, &f, &db.pool, &mut out)
        .await
        .expect("dry run");
    let text = String::from_utf8(out).expect("utf8");
    assert!(!plan.applied && text.contains("dry run"), "{text}");
    assert_eq!(
        stored_offsets(&db.pool, &group, &topic).await,
        before,
        "dry run changes nothing"
    );

    args.dry_run = false;
    let mut out = Vec::new();
    let report = run_sink_rewind(&args, &f, &db.pool, &mut out)
        .await
        .expect("rewind");
    println!("{}", String::from_utf8_lossy(&out));
    assert!(report.applied);
    let after = stored_offsets(&db.pool, &group, &topic).await;
    assert_eq!(
        after,
        BTreeMap::from([(0, 5), (1, 2)]),
        "0 back to the cut, 1 never forward, 2 still absent"
    );
    assert!(
        report.kafka_commit_warning.is_none(),
        "{:?}",
        report.kafka_commit_warning
    );
    assert_eq!(
        committed(&f, &group, &topic).get(&0),
        Some(&5),
        "Kafka offsets follow for lag tools"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_rewind_is_refused_while_the_sink_group_is_active() {
    let kafka = callsync_testkit::skip_unless_kafka!();
    let db = callsync_testkit::skip_unless_postgres!();
    callsync_sinks::PG_MIGRATOR
        .run(&db.pool)
        .await
        .expect("migrate");
    let prefix = unique_prefix(&kafka, "ops-rewind-active");
    let f = factory(&kafka, &prefix);
    let topic = f.settings().topic("calls");
    kafka
        .create_topic(&topic, 1, &[])
        .await
        .expect("create calls");
    let group = kafka.unique_group("sink-live");

    let consumer: rdkafka::consumer::BaseConsumer = f
        .create(
            "member",
            &f.consumer_config(&group, callsync_runtime::Isolation::ReadCommitted),
        )
        .expect("consumer");
    use rdkafka::consumer::Consumer;
    consumer.subscribe(&[&topic]).expect("subscribe");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while consumer
        .assignment()
        .map(|a| a.count() == 0)
        .unwrap_or(true)
    {
        let _ = consumer.poll(std::time::Duration::from_millis(100));
        assert!(std::time::Instant::now() < deadline, "never joined");
    }
    let args = SinkRewindArgs {
        to_datetime: Some(Utc::now()),
        to_earliest: false,
        partitions: vec![],
        dry_run: false,
        group: Some(group.clone()),
        topic: None,
    };
    let err = run_sink_rewind(&args, &f, &db.pool, &mut Vec::new())
        .await
        .expect_err("refused");
    assert!(matches!(err, OpsError::GroupActive { .. }), "{err}");
}

/// Retention passed the sink (records deleted before it applied them, here with Kafka's
/// DeleteRecords): the sink stops the partition instead of jumping over the gap, and
/// `sink rewind --to-earliest` moves its offset forward to the earliest retained record,
/// accepting the loss; the sink then applies the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_past_the_stored_offset_stops_the_partition_until_a_rewind_to_earliest() {
    use callsync_sinks::{run_sink, CallStore, PgStore, SinkConfig};
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;

    let kafka = callsync_testkit::skip_unless_kafka!();
    let db = callsync_testkit::skip_unless_postgres!();
    let prefix = unique_prefix(&kafka, "ops-rewind-retention");
    let f = factory(&kafka, &prefix);
    let topic = f.settings().topic("calls");
    kafka.create_topic(&topic, 1, &[]).await.expect("calls");
    kafka
        .create_topic(&f.settings().topic("calls.dlq"), 1, &[])
        .await
        .expect("calls.dlq");
    let calls: Vec<_> = (0..20)
        .map(|i| callsync_sinks::testing::call(&format!("call-{i}"), 3))
        .collect();
    produce(
        &f,
        &topic,
        calls
            .iter()
            .map(|r| {
                (
                    r.key().into_string(),
                    callsync_schemas::encode_to_vec(r, callsync_schemas::WireFormat::SingleObject)
                        .expect("encode"),
                    None,
                    Some(0),
                    OwnedHeaders::new(),
                )
            })
            .collect(),
    )
    .await;
    let store = PgStore::from_pool(db.pool.clone(), 1000);
    store.migrate().await.expect("migrate");
    let group = kafka.unique_group("sink-retention");
    sqlx::query("INSERT INTO callsync_offsets (consumer_group, topic, partition, next_offset) VALUES ($1, $2, 0, 5)")
        .bind(&group)
        .bind(&topic)
        .execute(&db.pool)
        .await
        .expect("seed offset");
    // retention deletes offsets 0..10, five of them never applied
    let admin: AdminClient<DefaultClientContext> =
        kafka.client_config().create().expect("admin client");
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, rdkafka::Offset::Offset(10))
        .expect("tpl");
    admin
        .delete_records(&tpl, &AdminOptions::new())
        .await
        .expect("delete records");

    let mut config = SinkConfig::new(db.url.clone());
    config.group = group.clone();
    config.batch_max_ms = 100;
    let store: std::sync::Arc<dyn CallStore> = std::sync::Arc::new(store);
    let run = |config: SinkConfig| {
        let shutdown = callsync_runtime::Shutdown::new();
        let task = tokio::spawn(run_sink(config, f.clone(), store.clone(), shutdown.clone()));
        (shutdown, task)
    };
    let (shutdown, task) = run(config.clone());
    // until the group has given the sink its partition, and the sink has looked at it
    let watcher: rdkafka::consumer::BaseConsumer = f
        .create(
            "group watcher",
            &f.consumer_config(&group, callsync_runtime::Isolation::ReadCommitted),
        )
        .expect("consumer");
    let started = std::time::Instant::now();
    loop {
        let description =
            callsync::ops::describe_group(&watcher, &group, TIMEOUT).expect("describe");
        if description
            .members
            .iter()
            .any(|m| m.assignment.get(&topic).is_some_and(|p| p.contains(&0)))
        {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "never assigned"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    shutdown.trigger();
    let report = task.await.expect("task").expect("sink");
    assert_eq!(report.partitions_stopped, 1, "{report:?}");
    assert_eq!(
        report.records_read, 0,
        "nothing jumped over the gap: {report:?}"
    );
    assert!(store.all_calls().await.expect("calls").is_empty());

    let args = SinkRewindArgs {
        to_datetime: None,
        to_earliest: true,
        partitions: vec![0],
        dry_run: false,
        group: Some(group.clone()),
        topic: None,
    };
    let mut out = Vec::new();
    let report = run_sink_rewind(&args, &f, &db.pool, &mut out)
        .await
        .expect("rewind");
    let text = String::from_utf8_lossy(&out);
    assert_eq!(report.partitions[0].new, Some(10), "{text}");
    assert!(
        report.partitions[0]
            .misfit
            .as_deref()
            .is_some_and(|m| m.contains("before the earliest retained offset 10")),
        "{text}"
    );

    let (shutdown, task) = run(config);
    let started = std::time::Instant::now();
    while store.all_calls().await.expect("calls").len() < 10 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "never applied"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    shutdown.trigger();
    let report = task.await.expect("task").expect("sink");
    assert_eq!(report.partitions_stopped, 0, "{report:?}");
    assert_eq!(
        stored_offsets(&db.pool, &group, &topic).await,
        BTreeMap::from([(0, 20)])
    );
}
