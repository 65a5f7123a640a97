//! `callsync dlq list|redrive` on the real broker: records move from `calls.dlq` to
//! `calls.raw` exactly once, per-reason progress, dry run, and a crashed redrive's open
//! transaction is aborted (its records never become visible).
//!
//! Needs `KAFKA_BOOTSTRAP` (scripts/kafka-broker.sh start); skipped without it, fails under CI.

mod ops_support;

use std::time::Duration;

use callsync::ops::dlq::{HEADER_ERROR_REASON, HEADER_REDRIVE_COUNT, HEADER_REDRIVE_FROM};
use callsync::ops::{run_dlq_list, run_dlq_redrive, DlqListArgs, DlqRedriveArgs};
use ops_support::*;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

fn dlq_headers(reason: &str, redrives: Option<&str>) -> OwnedHeaders {
    let mut h = OwnedHeaders::new()
        .insert(Header {
            key: "traceparent",
            value: Some("00-abc-01"),
        })
        .insert(Header {
            key: HEADER_ERROR_REASON,
            value: Some(reason),
        })
        .insert(Header {
            key: "callsync.error.field",
            value: Some("currency"),
        })
        .insert(Header {
            key: "callsync.error.stage",
            value: Some("validate"),
        })
        .insert(Header {
            key: "callsync.error.message",
            value: Some("\"XYZ\" is not ISO 4217"),
        })
        .insert(Header {
            key: "callsync.source.topic",
            value: Some("calls.raw"),
        })
        .insert(Header {
            key: "callsync.source.partition",
            value: Some("0"),
        })
        .insert(Header {
            key: "callsync.source.offset",
            value: Some("7"),
        });
    if let Some(n) = redrives {
        h = h.insert(Header {
            key: HEADER_REDRIVE_COUNT,
            value: Some(n),
        });
    }
    h
}

fn redrive_args(group: &str, reason: Option<&str>) -> DlqRedriveArgs {
    DlqRedriveArgs {
        reason: reason.map(str::to_string),
        dry_run: false,
        limit: None,
        batch_size: 2,
        group: group.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_moves_records_to_calls_raw_exactly_once() {
    let kafka = callsync_testkit::skip_unless_kafka!();
    let prefix = unique_prefix(&kafka, "ops-dlq");
    let f = factory(&kafka, &prefix);
    let dlq = f.settings().topic("calls.dlq");
    let raw = f.settings().topic("calls.raw");
    kafka.create_topic(&dlq, 2, &[]).await.expect("dlq topic");
    kafka.create_topic(&raw, 2, &[]).await.expect("raw topic");
    let group = kafka.unique_group("redrive");

    // 4 unknown_currency (one redriven once before), 3 invalid_phone, interleaved
    let mut records = Vec::new();
    for i in 0..7 {
        let (reason, redrives) = match i {
            0 | 2 | 4 => ("unknown_currency", None),
            6 => ("unknown_currency", Some("1")),
            _ => ("invalid_phone", None),
        };
        records.push((
            format!("retreaver:acct-1:call-{i}"),
            format!("bytes-{i}").into_bytes(),
            None,
            Some(i % 2),
            dlq_headers(reason, redrives),
        ));
    }
    produce(&f, &dlq, records).await;

    // a redrive that crashed mid-transaction: records sent, never committed
    {
        let producer: BaseProducer = f
            .create("crashed redrive", &f.transactional_producer_config(&group))
            .expect("producer");
        producer.init_transactions(TIMEOUT).expect("init");
        producer.begin_transaction().expect("begin");
        for i in 0..3 {
            producer
                .send(
                    BaseRecord::to(&raw)
                        .key("crashed")
                        .payload(&format!("junk-{i}")),
                )
                .map_err(|(e, _)| e)
                .expect("send");
        }
        producer.flush(TIMEOUT).expect("flush");
        // dropped without commit or abort: the transaction stays open on the broker
    }

    // list, filtered
    let mut out = Vec::new();
    let listed = run_dlq_list(
        &DlqListArgs {
            reason: Some("invalid_phone".into()),
            limit: 2,
            json: false,
            redrive_group: group.clone(),
        },
        &f,
        &mut out,
    )
    .await
    .expect("list");
    let text = String::from_utf8(out).expect("utf8");
    assert_eq!(
        (listed.scanned, listed.matching, listed.records.len()),
        (7, 3, 2),
        "{text}"
    );
    assert!(
        text.contains("invalid_phone") && text.contains("2 shown of 3 matching"),
        "{text}"
    );
    assert!(
        listed.records.iter().all(|r| r.redriven == Some(false)),
        "nothing redriven yet: {text}"
    );

    // dry run: counts, moves nothing
    let mut dry = redrive_args(&group, Some("unknown_currency"));
    dry.dry_run = true;
    let report = run_dlq_redrive(&dry, &f, &mut Vec::new())
        .await
        .expect("dry run");
    assert_eq!(report.redriven(), 4);
    assert_eq!(report.transactions, 0);

    // redrive one reason: its 4 records, once; the crashed transaction is aborted first
    let mut out = Vec::new();
    let report = run_dlq_redrive(
        &redrive_args(&group, Some("unknown_currency")),
        &f,
        &mut out,
    )
    .await
    .expect("redrive unknown_currency");
    println!("{}", String::from_utf8_lossy(&out));
    assert_eq!(report.redriven(), 4);
    assert_eq!(report.skipped, 3, "other reasons are read, not redriven");
    assert!(report.transactions >= 2, "batches of 2 records");
    let moved = read_all(&f, &raw);
    assert_eq!(
        moved.len(),
        4,
        "exactly the 4 records, none of the crashed run's: {moved:?}"
    );
    for (key, value, headers) in &moved {
        let i: usize = key
            .rsplit('-')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("key");
        assert_eq!(value, format!("bytes-{i}").as_bytes(), "original bytes");
        let get = |k: &str| {
            headers
                .iter()
                .find(|(hk, _)| hk == k)
                .map(|(_, v)| v.clone())
        };
        let expected_count = if i == 6 { "2" } else { "1" };
        assert_eq!(get(HEADER_REDRIVE_COUNT).as_deref(), Some(expected_count));
        assert!(get(HEADER_REDRIVE_FROM).is_some_and(|v| v.starts_with(&dlq)));
        assert_eq!(
            get("traceparent").as_deref(),
            Some("00-abc-01"),
            "other headers kept"
        );
        assert!(headers
            .iter()
            .all(|(k, _)| !k.starts_with("callsync.error.") && !k.starts_with("callsync.source.")));
    }

    // again: nothing left for that reason
    let report = run_dlq_redrive(
        &redrive_args(&group, Some("unknown_currency")),
        &f,
        &mut Vec::new(),
    )
    .await
    .expect("second redrive");
    assert_eq!(report.redriven(), 0);

    // all reasons: only the 3 invalid_phone records are still pending
    let report = run_dlq_redrive(&redrive_args(&group, None), &f, &mut Vec::new())
        .await
        .expect("redrive all");
    assert_eq!(report.redriven(), 3, "{report:?}");
    assert_eq!(report.redriven_by_reason.get("invalid_phone"), Some(&3));
    let report = run_dlq_redrive(&redrive_args(&group, None), &f, &mut Vec::new())
        .await
        .expect("redrive all again");
    assert_eq!(report.redriven(), 0);
    let report = run_dlq_redrive(
        &redrive_args(&group, Some("invalid_phone")),
        &f,
        &mut Vec::new(),
    )
    .await
    .expect("redrive a reason after all");
    assert_eq!(
        report.redriven(),
        0,
        "an all-reasons redrive covers every reason"
    );

    let moved = read_all(&f, &raw);
    assert_eq!(moved.len(), 7, "each DLQ record once in calls.raw");
    let mut out = Vec::new();
    let listed = run_dlq_list(
        &DlqListArgs {
            reason: None,
            limit: 50,
            json: false,
            redrive_group: group.clone(),
        },
        &f,
        &mut out,
    )
    .await
    .expect("list after the redrives");
    let text = String::from_utf8(out).expect("utf8");
    assert_eq!(listed.records.len(), 7, "{text}");
    assert!(
        listed.records.iter().all(|r| r.redriven == Some(true)),
        "dlq list shows every record redriven: {text}"
    );

    // a new DLQ record after all that is redriven by the next run, once
    produce(
        &f,
        &dlq,
        vec![(
            "retreaver:acct-1:call-9".into(),
            b"bytes-9".to_vec(),
            None,
            Some(0),
            dlq_headers("invalid_phone", None),
        )],
    )
    .await;
    let mut limited = redrive_args(&group, None);
    limited.limit = Some(5);
    let report = run_dlq_redrive(&limited, &f, &mut Vec::new())
        .await
        .expect("redrive new");
    assert_eq!(report.redriven(), 1);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(read_all(&f, &raw).len(), 8);
}
