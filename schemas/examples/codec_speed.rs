//! Rough encode/decode throughput of the fast paths (not a test; run with --release).
use std::collections::BTreeMap;
use std::time::Instant;

use callsync_schemas::*;
use chrono::{DateTime, Utc};

fn ts(m: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(m).unwrap()
}

fn main() {
    let mut tags = BTreeMap::new();
    tags.insert("keyword".to_string(), "roof repair".to_string());
    tags.insert("utm_source".to_string(), "google".to_string());
    let base = CallRecord {
        provider: Provider::Retreaver,
        account_id: "acct-42".into(),
        call_id: "CA1234".into(),
        version: 1_717_243_200_123_456,
        started_at: ts(1_717_243_200_000_000),
        answered_at: Some(ts(1_717_243_205_000_000)),
        ended_at: Some(ts(1_717_243_390_500_000)),
        duration_secs: Some(190),
        billable_secs: Some(185),
        caller_number: Some("+15551234567".into()),
        tracking_number: Some("+18005550100".into()),
        destination_number: Some("+15557654321".into()),
        campaign_id: Some("cmp-7".into()),
        campaign_name: Some("Roofing Dallas".into()),
        publisher_id: Some("pub-3".into()),
        publisher_name: Some("Acme Media".into()),
        buyer_id: Some("buy-9".into()),
        buyer_name: Some("Best Roofs".into()),
        status: CallStatus::Completed,
        provider_status: Some("answered".into()),
        converted: Some(true),
        revenue: Some("45.5".parse().unwrap()),
        payout: Some("-12.3456".parse().unwrap()),
        currency: Some("USD".into()),
        recording_url: Some("https://rec.example/CA1234.mp3".into()),
        tags,
        source: RecordSource::Webhook,
        observed_at: ts(1_717_243_400_000_001),
        provider_updated_at: Some(ts(1_717_243_200_123_456)),
        raw: Some(vec![b'x'; 400]),
        present_fields: None,
    };
    let n = 1_000_000;
    let records: Vec<CallRecord> = (0..1000)
        .map(|i| {
            let mut r = base.clone();
            r.call_id = format!("CA{i}");
            r.version += i;
            r
        })
        .collect();

    let mut buf = Vec::with_capacity(1024);
    let mut total = 0usize;
    let t = Instant::now();
    for i in 0..n {
        buf.clear();
        encode(&records[i % 1000], WireFormat::SingleObject, &mut buf).unwrap();
        total += buf.len();
    }
    let enc = t.elapsed();
    println!(
        "encode: {:.0} records/s ({} bytes each)",
        n as f64 / enc.as_secs_f64(),
        total / n
    );

    let encoded: Vec<Vec<u8>> = records
        .iter()
        .map(|r| encode_to_vec(r, WireFormat::Confluent { schema_id: 3 }).unwrap())
        .collect();
    let d = RecordDecoder::<CallRecord>::new();
    d.add_own_schema_id(3);
    let t = Instant::now();
    let mut sum = 0i64;
    for i in 0..n {
        sum += d.decode(&encoded[i % 1000]).unwrap().version;
    }
    let dec = t.elapsed();
    println!(
        "decode: {:.0} records/s ({sum})",
        n as f64 / dec.as_secs_f64()
    );

    let entries: Vec<Vec<u8>> = (0..1000)
        .map(|i| {
            encode_to_vec(
                &DedupEntry {
                    fingerprint: i as u128 * 7919,
                    version: i,
                    seen_at: ts(i),
                },
                WireFormat::SingleObject,
            )
            .unwrap()
        })
        .collect();
    let dd = RecordDecoder::<DedupEntry>::new();
    let t = Instant::now();
    let mut acc = 0u128;
    for i in 0..n {
        acc ^= dd.decode(&entries[i % 1000]).unwrap().fingerprint;
    }
    let e = t.elapsed();
    println!(
        "dedup entry decode: {:.0} records/s ({acc})",
        n as f64 / e.as_secs_f64()
    );

    // Resolution path, for scale: a writer schema with one extra field.
    let mut v: serde_json::Value = serde_json::from_str(schema::CALL_RECORD_AVSC).unwrap();
    v["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name":"x","type":["null","string"],"default":null}));
    d.add_schema_id(9, &v.to_string()).unwrap();
    let mut slow: Vec<u8> = vec![0, 0, 0, 0, 9];
    slow.extend_from_slice(&encoded[0][5..]);
    slow.push(0);
    let m = 50_000;
    let t = Instant::now();
    for _ in 0..m {
        d.decode(&slow).unwrap();
    }
    println!(
        "resolved decode (apache-avro): {:.0} records/s",
        m as f64 / t.elapsed().as_secs_f64()
    );
}
