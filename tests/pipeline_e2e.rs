//! The walking skeleton end to end on the real broker and real Postgres:
//! records produced to `calls.raw` pass the processor into `calls`, and the sink
//! upserts them into Postgres, where they are read back and compared field by field.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use callsync_processors::synthetic::call_record;
use callsync_processors::ProcessorConfig;
use callsync_runtime::{
    ensure_catalogue, names, CatalogueOptions, KafkaClientFactory, KafkaSettings, Secret, Shutdown,
};
use callsync_schemas::{encode_to_vec, CallRecord, WireFormat};
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
