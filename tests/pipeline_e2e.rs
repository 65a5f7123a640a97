//! The walking skeleton end to end on the real broker and real Postgres:
//! records produced to `calls.raw` pass the processor into `calls`, and the sink
//! upserts them into Postgres, where they are read back and compared field by field.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use callsync_processors::synthetic::{call_record, changed_call_record};
use callsync_processors::ProcessorConfig;
use callsync_runtime::{
    ensure_catalogue, names, CatalogueOptions, KafkaClientFactory, KafkaSettings, Secret, Shutdown,
};
use callsync_schemas::{
    decode_call_record, encode_to_vec, CallField, CallRecord, ContentFingerprint, FieldSet,
    Precedence, RecordSource, WireFormat,
};
use callsync_sinks::{CallStore, PgStore, SinkConfig};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

const RECORDS: u64 = 3_000;

async fn produce(factory: &KafkaClientFactory, topic: &str, records: &[CallRecord]) {
    let producer: FutureProducer = factory.producer().expect("producer");
    let mut pending = Vec::with_capacity(records.len());
    for record in records {
        let key = record.key().into_string();
        let value = encode_to_vec(record, WireFormat::SingleObject).expect("encode");
        let delivery = producer
            .send_result(FutureRecord::to(topic).key(&key).payload(&value))
            .expect("enqueue");
        pending.push(delivery);
    }
    for delivery in pending {
        delivery.await.expect("delivery future").expect("delivered");
    }
    producer.flush(Duration::from_secs(10)).expect("flush");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_produced_to_calls_raw_become_rows_in_postgres() {
    let kafka = callsync_testkit::skip_unless_kafka!();
    let db = callsync_testkit::skip_unless_postgres!();

    let mut settings = KafkaSettings::plaintext(kafka.bootstrap());
    settings.topic_prefix = format!("e2e{}.", uuid::Uuid::new_v4().simple());
    let factory = KafkaClientFactory::new(settings.clone());
    let options = CatalogueOptions {
        call_partitions: 3,
        calls_retention_days: 30,
    };
    ensure_catalogue(&factory, &options, Duration::from_secs(30))
        .await
        .expect("topics");

    let input: Vec<CallRecord> = (0..RECORDS)
        .map(|i| call_record(i, 1_000 + i as i64))
        .collect();
    produce(&factory, &settings.topic(names::CALLS_RAW), &input).await;

    let shutdown = Shutdown::new();
    // a failing assertion must stop the stage, or the runtime waits for it forever
    let _stop_shutdown = shutdown.trigger_on_drop();
    let processor_config = ProcessorConfig {
        group_id: kafka.unique_group("e2e-processor"),
        ..ProcessorConfig::default()
    };
    let processor = tokio::spawn(callsync_processors::run_processor(
        processor_config,
        factory.clone(),
        shutdown.clone(),
    ));

    let sink_config: SinkConfig = serde_json::from_value(serde_json::json!({
        "database_url": db.url,
        "group": kafka.unique_group("e2e-sink"),
    }))
    .expect("sink config");
    assert_eq!(sink_config.database_url, Secret::new(db.url.clone()));
    let store: Arc<dyn CallStore> = Arc::new(
        PgStore::connect(&db.url, 4, sink_config.copy_threshold)
            .await
            .expect("store"),
    );
    let sink = tokio::spawn(callsync_sinks::run_sink(
        sink_config,
        factory.clone(),
        store.clone(),
        shutdown.clone(),
    ));

    let deadline = Instant::now() + Duration::from_secs(180);
    let stored = loop {
        if let Ok(rows) = store.all_calls().await {
            if rows.len() as u64 >= RECORDS {
                break rows;
            }
        }
        assert!(
            !processor.is_finished() && !sink.is_finished(),
            "a stage stopped before the rows arrived"
        );
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {RECORDS} rows"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    shutdown.trigger();
    let processor_report = processor.await.expect("processor task").expect("processor");
    sink.await.expect("sink task").expect("sink");

    assert_eq!(stored.len() as u64, RECORDS, "exactly one row per call");
    let by_key: BTreeMap<String, &CallRecord> =
        input.iter().map(|r| (r.key().into_string(), r)).collect();
    let calls_topic = settings.topic(names::CALLS);
    for row in &stored {
        let key = row.record.key().into_string();
        let expected = by_key
            .get(&key)
            .unwrap_or_else(|| panic!("unexpected row {key}"));
        assert_eq!(
            &row.record, *expected,
            "row {key} differs from what was produced"
        );
        assert_eq!(row.kafka_topic, calls_topic);
    }
    eprintln!("processor: {processor_report:?}");
}

/// What the sink holds after `records` of one call arrive in this order: each applied (as
/// the sink's guard does) when its (version, fingerprint) is greater than the row's.
fn fold(records: &[&CallRecord]) -> CallRecord {
    let mut row: Option<(Precedence, CallRecord)> = None;
    for r in records {
        let p = Precedence::of(r);
        match &mut row {
            None => row = Some((p, (*r).clone())),
            Some((held, record)) if p > *held => {
                *held = p;
                record.apply(r);
            }
            Some(_) => {}
        }
    }
    row.map(|(_, r)| r).expect("at least one record")
}

/// A row as the store reads it back: complete, except that `started_at` is not carried while
/// no record has told it (see `callsync_sinks::columns::stored_fields`).
fn as_stored(mut record: CallRecord) -> CallRecord {
    if record.is_partial() {
        record.present_fields =
            callsync_sinks::columns::stored_fields(record.carries(CallField::StartedAt));
    }
    record
}

/// Waits until the table holds exactly `want` (key -> record), or fails with the difference.
async fn wait_for_table(
    store: &dyn CallStore,
    want: &BTreeMap<String, CallRecord>,
    stages_running: impl Fn() -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got: BTreeMap<String, CallRecord> = store
            .all_calls()
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|row| (row.record.key().into_string(), row.record))
            .collect();
        if &got == want {
            return;
        }
        assert!(stages_running(), "a stage stopped before the rows arrived");
        if Instant::now() > deadline {
            for (key, record) in want {
                assert_eq!(got.get(key), Some(record), "row {key}");
            }
            panic!("unexpected rows: {:?}", got.keys().collect::<Vec<_>>());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Issue 16 bullet 4 and issue 18 bullet 2 through the real processor and sink: equal versions
/// with different content (either order), a partial webhook before and after a poll, a
/// duplicate partial webhook, and a partial carrying only revenue against a full row. The
/// processor emits exactly the records that change the row (the same winner as the sink's
/// guard), and the table ends as applying them one by one would leave it. Each update arrives
/// after the previous state is in the table, so the database's guard decides, not only the
/// batch collapse. Failed before the fix: the processor dropped the equal version with other
/// content as a duplicate, and a partial record overwrote every column of the row.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ties_and_partial_records_end_the_same_in_the_processor_and_the_table() {
    let kafka = callsync_testkit::skip_unless_kafka!();
    let db = callsync_testkit::skip_unless_postgres!();

    let mut settings = KafkaSettings::plaintext(kafka.bootstrap());
    settings.topic_prefix = format!("sem{}.", uuid::Uuid::new_v4().simple());
    let factory = KafkaClientFactory::new(settings.clone());
    let options = CatalogueOptions {
        call_partitions: 3,
        calls_retention_days: 30,
    };
    ensure_catalogue(&factory, &options, Duration::from_secs(30))
        .await
        .expect("topics");

    let revenue_only = |index: u64, version: i64, cents: i64| {
        let mut r = call_record(index, version);
        r.revenue = Some(rust_decimal::Decimal::new(cents, 2));
        r.source = RecordSource::Webhook;
        r.into_partial(FieldSet::EMPTY.with(CallField::Revenue))
    };
    // two contents of one version, ordered by fingerprint
    let tie = |index: u64| {
        let a = call_record(index, 1_000);
        let b = changed_call_record(index, 1_000);
        if ContentFingerprint::of(&a) < ContentFingerprint::of(&b) {
            (a, b)
        } else {
            (b, a)
        }
    };
    let (tie_low, tie_high) = tie(1);
    let (rev_low, rev_high) = tie(2);
    let mut webhook_first = revenue_only(4, 1_000, 12_345);
    webhook_first.converted = Some(true);
    let webhook_first = webhook_first.into_partial(
        FieldSet::EMPTY
            .with(CallField::Revenue)
            .with(CallField::Converted),
    );
    // (phase 1, phase 2) records per call, in the order produced
    let calls: Vec<(Vec<CallRecord>, Vec<CallRecord>)> = vec![
        // equal versions, the greater fingerprint second: both emitted, the second wins
        (vec![tie_low.clone()], vec![tie_high.clone()]),
        // equal versions, the greater fingerprint first: the second is stale
        (vec![rev_high.clone()], vec![rev_low.clone()]),
        // poll, then a partial webhook carrying only revenue: every other column kept
        (
            vec![call_record(3, 1_000)],
            vec![revenue_only(3, 2_000, 999)],
        ),
        // a partial webhook first (creates the row), then the poll fills it
        (vec![webhook_first], vec![call_record(4, 2_000)]),
        // a partial webhook, its duplicate at once and again later
        (
            vec![
                call_record(5, 1_000),
                revenue_only(5, 2_000, 555),
                revenue_only(5, 2_000, 555),
            ],
            vec![revenue_only(5, 2_000, 555)],
        ),
    ];

    let shutdown = Shutdown::new();
    let _stop_shutdown = shutdown.trigger_on_drop();
    let counters = Arc::new(callsync_processors::ProcessorCounters::default());
    let processor = tokio::spawn(callsync_processors::run_processor_with_counters(
        ProcessorConfig {
            instance_id: None,
            group_id: kafka.unique_group("sem-processor"),
            ..ProcessorConfig::default()
        },
        factory.clone(),
        shutdown.clone(),
        counters.clone(),
    ));
    let sink_config: SinkConfig = serde_json::from_value(serde_json::json!({
        "database_url": db.url,
        "group": kafka.unique_group("sem-sink"),
    }))
    .expect("sink config");
    let store: Arc<dyn CallStore> = Arc::new(
        PgStore::connect(&db.url, 4, sink_config.copy_threshold)
            .await
            .expect("store"),
    );
    let sink = tokio::spawn(callsync_sinks::run_sink(
        sink_config,
        factory.clone(),
        store.clone(),
        shutdown.clone(),
    ));

    let raw = settings.topic(names::CALLS_RAW);
    let mut seen: BTreeMap<String, Vec<&CallRecord>> = BTreeMap::new();
    for phase in 0..2 {
        let records: Vec<CallRecord> = calls
            .iter()
            .flat_map(|(first, second)| if phase == 0 { first } else { second })
            .cloned()
            .collect();
        produce(&factory, &raw, &records).await;
        for (first, second) in &calls {
            let list = if phase == 0 { first } else { second };
            for r in list {
                seen.entry(r.key().into_string()).or_default().push(r);
            }
        }
        let want: BTreeMap<String, CallRecord> = seen
            .iter()
            .map(|(k, rs)| (k.clone(), as_stored(fold(rs))))
            .collect();
        wait_for_table(store.as_ref(), &want, || {
            !processor.is_finished() && !sink.is_finished()
        })
        .await;
    }
    let row = |index: u64| {
        let key = call_record(index, 1).key().into_string();
        let seen = &seen[&key];
        fold(seen)
    };
    // spot checks of what fold() stands for
    assert_eq!(row(1), tie_high);
    assert_eq!(row(2), rev_high);
    let mut kept = call_record(3, 2_000);
    kept.revenue = Some(rust_decimal::Decimal::new(999, 2));
    kept.source = RecordSource::Webhook;
    kept.observed_at = call_record(3, 1).observed_at;
    assert_eq!(row(3), kept, "revenue changed, every other column kept");

    shutdown.trigger();
    let report = processor.await.expect("processor task").expect("processor");
    sink.await.expect("sink task").expect("sink");
    // what the processor emitted: exactly the records that change a row
    let emitted = read_calls_topic(&factory, &settings.topic(names::CALLS), 3).await;
    let mut expected_emitted: BTreeMap<String, Vec<CallRecord>> = BTreeMap::new();
    for (key, records) in &seen {
        let mut held: Option<Precedence> = None;
        for r in records {
            let p = Precedence::of(r);
            if held.is_none_or(|h| p > h) {
                held = Some(p);
                expected_emitted
                    .entry(key.clone())
                    .or_default()
                    .push((*r).clone());
            }
        }
    }
    assert_eq!(emitted, expected_emitted, "records on `calls`, per call");
    assert_eq!(report.duplicates, 2, "{report:?}");
    assert_eq!(report.stale, 1, "{report:?}");
}

/// Every record of the `calls` topic (read_committed), per key in order.
async fn read_calls_topic(
    factory: &KafkaClientFactory,
    topic: &str,
    partitions: i32,
) -> BTreeMap<String, Vec<CallRecord>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let mut cfg = factory.consumer_config(
        &format!("sem-reader-{}", uuid::Uuid::new_v4().simple()),
        callsync_runtime::Isolation::ReadCommitted,
    );
    cfg.set("enable.partition.eof", "true");
    let consumer: BaseConsumer = factory.create("reader", &cfg).expect("reader");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    let mut out: BTreeMap<String, Vec<CallRecord>> = BTreeMap::new();
    let mut eof = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while eof.len() < partitions as usize {
        assert!(Instant::now() < deadline, "reading {topic} timed out");
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                eof.insert(p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            Some(Ok(m)) => {
                eof.remove(&m.partition());
                let record = decode_call_record(m.payload().expect("value")).expect("decode");
                out.entry(record.key().into_string())
                    .or_default()
                    .push(record);
            }
        }
    }
    out
}
