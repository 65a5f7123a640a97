//! The bad-records corpus on the real broker: one record per validation rule plus undecodable
//! values; each lands in `calls.dlq` with its original key and bytes and the right reason,
//! field, stage and source headers, and the valid records pass.
//!
//! Skipped without `KAFKA_BOOTSTRAP` (fails under `CI=true`).

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use callsync_processors::dlq::{
    HEADER_ERROR_FIELD, HEADER_ERROR_REASON, HEADER_ERROR_STAGE, HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION, HEADER_SOURCE_TOPIC,
};
use callsync_processors::synthetic::{bad_record_corpus, call_record};
use callsync_processors::validate::RejectReason;
use callsync_processors::{run_processor_with_counters, ProcessorCounters};
use callsync_runtime::{names, Shutdown};
use callsync_schemas::CallRecord;
use callsync_schemas::{encode_to_vec, WireFormat};
use chrono::Utc;
use common::Fixture;
use rust_decimal::Decimal;

/// A Kafka record's optional key and value.
type KeyValue = (Option<Vec<u8>>, Option<Vec<u8>>);

/// One expected dead letter: name, key, value, reason, field, stage.
type Case = (
    String,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    &'static str,
    &'static str,
    &'static str,
);

/// `record` encoded with a payout of 10^15 (unscaled 10^19 at scale 4: 20 digits, beyond
/// decimal(18,4)), which no encoder of ours would write.
fn with_oversized_payout(record: &CallRecord) -> Vec<u8> {
    let mut r = record.clone();
    let max_unscaled: i128 = 999_999_999_999_999_999;
    r.payout = Some(Decimal::from_i128_with_scale(max_unscaled, 4));
    let mut bytes = encode_to_vec(&r, WireFormat::SingleObject).expect("encode");
    // Avro bytes: zigzag length (8 -> 16), then the minimal big-endian two's complement
    let pattern = [&[16u8][..], &max_unscaled.to_be_bytes()[8..]].concat();
    let big: i128 = 10_000_000_000_000_000_000;
    let replacement = [&[18u8][..], &big.to_be_bytes()[7..]].concat();
    let at = bytes
        .windows(pattern.len())
        .position(|w| w == pattern.as_slice())
        .expect("payout bytes");
    bytes.splice(at..at + pattern.len(), replacement);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_record_lands_in_the_dlq_with_its_reason_and_field() {
    let Some(kafka) = callsync_testkit::real_kafka() else {
        return;
    };
    let fx = Fixture::new(kafka, 2).await;

    // (name, key, value, expected reason, field, stage)
    let mut cases: Vec<Case> = Vec::new();
    // (the value `field` of undecodable records is where the decoder stopped, or `value`)
    for case in bad_record_corpus(Utc::now()) {
        let value = match case.reason {
            // decimal(18,4) fixes the scale in the schema: more decimals cannot be sent over
            // the wire (the rule guards records built in process)
            RejectReason::MoneyPrecision => continue,
            // the encoder refuses out-of-range money: splice a 19-digit amount into the bytes
            RejectReason::MoneyOutOfRange => with_oversized_payout(&case.record),
            _ => encode_to_vec(&case.record, WireFormat::SingleObject).expect("encode"),
        };
        cases.push((
            case.name.to_string(),
            case.key,
            Some(value),
            case.reason.code(),
            case.field,
            "validate",
        ));
    }
    let valid = call_record(5, 1);
    let valid_bytes = encode_to_vec(&valid, WireFormat::SingleObject).expect("encode");
    let key = |s: &str| Some(format!("retreaver:acct-1:{s}").into_bytes());
    let undecodable: Vec<(&str, Option<Vec<u8>>)> = vec![
        ("random-bytes", Some(vec![0x17, 0xff, 0x00, 0x42, 0x99])),
        (
            "json",
            Some(br#"{"call_id":"x","provider":"retreaver"}"#.to_vec()),
        ),
        ("empty", Some(Vec::new())),
        ("tombstone", None),
        (
            "truncated",
            Some(valid_bytes[..valid_bytes.len() / 2].to_vec()),
        ),
        (
            "unknown-fingerprint",
            Some([&[0xc3, 0x01][..], &[9; 8], &valid_bytes[10..]].concat()),
        ),
    ];
    for (name, value) in undecodable {
        // a truncated record names the field the decoder stopped in
        let field = if name == "truncated" { "*" } else { "value" };
        cases.push((
            format!("undecodable-{name}"),
            key(name),
            value,
            "undecodable",
            field,
            "decode",
        ));
    }
    let good: Vec<_> = (0..10).map(|i| call_record(i, 1)).collect();

    let mut items: Vec<KeyValue> = cases
        .iter()
        .map(|(_, k, v, ..)| (k.clone(), v.clone()))
        .collect();
    for r in &good {
        items.push((
            Some(r.key().into_string().into_bytes()),
            Some(encode_to_vec(r, WireFormat::SingleObject).expect("encode")),
        ));
    }
    let total = fx.produce_raw(items) as u64;

    let counters = Arc::new(ProcessorCounters::default());
    let shutdown = Shutdown::new();
    // a failing assertion must stop the stage, or the runtime waits for it forever
    let _stop_shutdown = shutdown.trigger_on_drop();
    let run = tokio::spawn(run_processor_with_counters(
        fx.processor_config(&fx.kafka.unique_group("proc")),
        fx.factory.clone(),
        shutdown.clone(),
        counters.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    while counters.snapshot().consumed < total {
        assert!(
            Instant::now() < deadline,
            "processor did not consume {total} records"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.trigger();
    let report = run.await.unwrap().expect("processor");
    assert_eq!(report.emitted, 10);
    assert_eq!(report.invalid, 11);
    assert_eq!(report.undecodable, 6);

    let input = fx.read_topic(names::CALLS_RAW);
    let by_position: HashMap<(i32, i64), _> =
        input.iter().map(|r| ((r.partition, r.offset), r)).collect();
    let dlq = fx.read_topic(names::CALLS_DLQ);
    assert_eq!(dlq.len(), cases.len());
    for (name, key, value, reason, field, stage) in &cases {
        let found = dlq
            .iter()
            .find(|r| &r.key == key && &r.value == value)
            .unwrap_or_else(|| panic!("{name}: not in the DLQ with its original key and bytes"));
        let h = &found.headers;
        assert_eq!(
            h.get(HEADER_ERROR_REASON).map(String::as_str),
            Some(*reason),
            "{name}"
        );
        if *field == "*" {
            assert!(
                h.get(HEADER_ERROR_FIELD)
                    .is_some_and(|f| !f.is_empty() && f != "value"),
                "{name}: {h:?}"
            );
        } else {
            assert_eq!(
                h.get(HEADER_ERROR_FIELD).map(String::as_str),
                Some(*field),
                "{name}"
            );
        }
        assert_eq!(
            h.get(HEADER_ERROR_STAGE).map(String::as_str),
            Some(*stage),
            "{name}"
        );
        assert_eq!(
            h.get(HEADER_SOURCE_TOPIC),
            Some(&fx.topic(names::CALLS_RAW)),
            "{name}"
        );
        let partition: i32 = h[HEADER_SOURCE_PARTITION].parse().expect("partition");
        let offset: i64 = h[HEADER_SOURCE_OFFSET].parse().expect("offset");
        let source = by_position
            .get(&(partition, offset))
            .expect("source position exists");
        assert_eq!(
            (&source.key, &source.value),
            (key, value),
            "{name}: source position points at the original"
        );
    }

    let calls = fx.read_topic(names::CALLS);
    let mut keys: Vec<String> = calls.iter().map(|r| r.key_str()).collect();
    keys.sort();
    let mut expected: Vec<String> = good.iter().map(|r| r.key().into_string()).collect();
    expected.sort();
    assert_eq!(keys, expected, "the valid records pass");
}
