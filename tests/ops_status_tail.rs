//! `callsync status` and `callsync tail` on the real broker.

mod ops_support;

use callsync::ops::{run_status, run_tail, StatusArgs, TailArgs};
use callsync_schemas::{encode_to_vec, Provider, SyncEvent, SyncEventKind, SyncMode, WireFormat};
use callsync_sinks::testing::sample_call;
use chrono::{TimeZone, Utc};
use ops_support::*;
use rdkafka::message::{Header, OwnedHeaders};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_lag_syncs_health_and_dlq_reasons_and_tail_decodes_calls() {
    let kafka = callsync_testkit::skip_unless_kafka!();
    let prefix = unique_prefix(&kafka, "ops-status");
    let f = factory(&kafka, &prefix);
    for (base, partitions) in [
        ("calls.raw", 2),
        ("calls", 2),
        ("calls.dlq", 2),
        ("callsync.sync-requests", 1),
        ("callsync.sync-events", 1),
    ] {
        kafka
            .create_topic(&f.settings().topic(base), partitions, &[])
            .await
            .expect("topic");
    }
    let calls = f.settings().topic("calls");

    let base_ms = (Utc::now() - chrono::Duration::minutes(30)).timestamp_millis();
    // 6 calls, one group reads them all, then 4 more arrive: lag 4
    let mut records = Vec::new();
    for i in 0..10 {
        let call = sample_call(
            Provider::Retreaver,
            "acct-1",
            &format!("call-{i}"),
            1_000 + i,
        );
        let bytes = encode_to_vec(&call, WireFormat::SingleObject).expect("encode");
        records.push((
            call.key().into_string(),
            bytes,
            Some(base_ms + i * 1000),
            None,
            OwnedHeaders::new(),
        ));
    }
    let (first, rest) = records.split_at(6);
    produce(&f, &calls, first.to_vec()).await;
    let group = kafka.unique_group("analytics");
    let (f2, g2, t2) = (f.clone(), group.clone(), calls.clone());
    tokio::task::spawn_blocking(move || consume_group_to_end(&f2, &g2, &t2))
        .await
        .expect("join");
    produce(&f, &calls, rest.to_vec()).await;

    // sync events: acct-1 failed twice after a success; acct-2 completed
    let events = f.settings().topic("callsync.sync-events");
    let event =
        |id: &str, account: &str, kind: SyncEventKind, secs: i64, error: Option<&str>| SyncEvent {
            sync_id: id.into(),
            provider: Provider::Retreaver,
            account_id: account.into(),
            mode: SyncMode::Incremental,
            kind,
            records: 1200,
            pages: 12,
            rate_per_sec: 40.0,
            eta_secs: None,
            error: error.map(str::to_string),
            at: Utc
                .timestamp_opt(1_800_000_000 + secs, 0)
                .single()
                .expect("time"),
        };
    let mut ev = Vec::new();
    for e in [
        event("s1", "acct-1", SyncEventKind::Completed, 0, None),
        event(
            "s2",
            "acct-1",
            SyncEventKind::Failed,
            60,
            Some("HTTP 503 from api.retreaver.com"),
        ),
        event("s3", "acct-1", SyncEventKind::Started, 120, None),
        event("s3", "acct-1", SyncEventKind::Failed, 130, Some("timeout")),
        event("s4", "acct-2", SyncEventKind::Completed, 100, None),
    ] {
        ev.push((
            e.sync_id.clone(),
            encode_to_vec(&e, WireFormat::SingleObject).expect("encode"),
            None,
            None,
            OwnedHeaders::new(),
        ));
    }
    produce(&f, &events, ev).await;

    // DLQ: 2 + 1 by reason
    let dlq = f.settings().topic("calls.dlq");
    let mut dl = Vec::new();
    for (i, reason) in ["unknown_currency", "unknown_currency", "invalid_phone"]
        .iter()
        .enumerate()
    {
        dl.push((
            format!("k{i}"),
            b"x".to_vec(),
            None,
            None,
            OwnedHeaders::new().insert(Header {
                key: "callsync.error.reason",
                value: Some(*reason),
            }),
        ));
    }
    produce(&f, &dlq, dl).await;

    let args = StatusArgs {
        json: false,
        groups: vec![group.clone()],
        dlq_scan_limit: 1_000,
        events_scan_limit: 1_000,
        own_groups: Vec::new(),
    };
    let mut out = Vec::new();
    let report = run_status(&args, &f, &mut out).await.expect("status");
    let text = String::from_utf8(out).expect("utf8");
    println!("{text}");
    let g = report
        .groups
        .iter()
        .find(|g| g.group == group)
        .expect("our group");
    let lag = g
        .topics
        .iter()
        .find(|t| t.topic == calls)
        .expect("calls lag");
    assert_eq!(lag.total_lag, 4, "{text}");
    assert_eq!(report.syncs.len(), 2);
    let a1 = report
        .providers
        .iter()
        .find(|p| p.account_id == "acct-1")
        .expect("acct-1");
    assert_eq!(
        (a1.health.as_str(), a1.consecutive_failures),
        ("failing", 2)
    );
    assert_eq!(a1.last_error.as_deref(), Some("timeout"));
    let d = report.dlq.as_ref().expect("dlq");
    assert_eq!(d.by_reason.get("unknown_currency"), Some(&2));
    assert!(!d.truncated);
    assert!(
        text.contains("PROVIDER HEALTH") && text.contains("failing"),
        "{text}"
    );

    // a bounded DLQ scan says so
    let small = StatusArgs {
        json: true,
        dlq_scan_limit: 1,
        ..args.clone()
    };
    let mut out = Vec::new();
    let report = run_status(&small, &f, &mut out).await.expect("status json");
    assert!(report.dlq.as_ref().expect("dlq").truncated);
    let json: serde_json::Value = serde_json::from_slice(&out).expect("json output");
    assert!(json["groups"].is_array());

    // tail: by key (one partition), newest, from a time
    let key = "retreaver:acct-1:call-7";
    let mut out = Vec::new();
    let t = run_tail(
        &TailArgs {
            topic: "calls".into(),
            from_datetime: None,
            key: Some(key.into()),
            limit: 5,
        },
        &f,
        None,
        &mut out,
    )
    .await
    .expect("tail by key");
    let text = String::from_utf8(out).expect("utf8");
    assert_eq!(t.printed, 1, "{text}");
    let line: serde_json::Value = serde_json::from_str(text.trim()).expect("json line");
    assert_eq!(line["key"], key);
    assert_eq!(line["value"]["call_id"], "call-7");
    assert_eq!(
        line["value"]["raw"]["id"], "call-7",
        "raw JSON shown as JSON"
    );

    let mut out = Vec::new();
    let t = run_tail(
        &TailArgs {
            topic: "calls".into(),
            from_datetime: None,
            key: None,
            limit: 3,
        },
        &f,
        None,
        &mut out,
    )
    .await
    .expect("tail newest");
    assert_eq!(t.printed, 3);
    let text = String::from_utf8(out).expect("utf8");
    assert!(text.contains("call-9"), "newest last: {text}");

    let from = Utc
        .timestamp_millis_opt(base_ms + 8_000)
        .single()
        .expect("time");
    let mut out = Vec::new();
    let t = run_tail(
        &TailArgs {
            topic: "calls".into(),
            from_datetime: Some(from),
            key: None,
            limit: 10,
        },
        &f,
        None,
        &mut out,
    )
    .await
    .expect("tail from time");
    assert_eq!(t.printed, 2, "{}", String::from_utf8_lossy(&out));

    let mut out = Vec::new();
    let t = run_tail(
        &TailArgs {
            topic: "calls.dlq".into(),
            from_datetime: None,
            key: None,
            limit: 10,
        },
        &f,
        None,
        &mut out,
    )
    .await
    .expect("tail dlq");
    assert_eq!(t.printed, 3);
    let text = String::from_utf8(out).expect("utf8");
    assert!(
        text.contains("value_base64") && text.contains("unknown_currency"),
        "{text}"
    );
}
