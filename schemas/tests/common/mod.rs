//! Shared fixtures and proptest strategies for the schemas tests.
#![allow(dead_code)]

use std::collections::BTreeMap;

use callsync_schemas::{
    CallField, CallRecord, CallStatus, DedupEntry, FieldSet, Provider, RecordSource, SyncEvent,
    SyncEventKind, SyncMode, SyncRequest,
};
use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use rust_decimal::Decimal;

pub fn ts(micros: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_micros(micros).unwrap()
}

/// A fully populated record with fixed values (the golden test's input).
pub fn full_record() -> CallRecord {
    let mut tags = BTreeMap::new();
    tags.insert("keyword".to_string(), "roof repair".to_string());
    CallRecord {
        provider: Provider::Retreaver,
        account_id: "acct-42".into(),
        call_id: "CA1234".into(),
        version: 1_717_243_200_123_456,
        started_at: Utc.with_ymd_and_hms(2024, 6, 1, 12, 0, 0).unwrap(),
        answered_at: Some(ts(1_717_243_205_000_000)),
        ended_at: Some(ts(1_717_243_390_500_000)),
        duration_secs: Some(190),
        billable_secs: Some(185),
        caller_number: Some("+15551234567".into()),
        tracking_number: Some("+18005550100".into()),
        destination_number: Some("+15557654321".into()),
        campaign_id: Some("cmp-7".into()),
        campaign_name: Some("Roofing – Dallas".into()),
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
        raw: Some(br#"{"id":"CA1234"}"#.to_vec()),
        present_fields: None,
    }
}

/// A record with every optional field empty.
pub fn minimal_record() -> CallRecord {
    CallRecord {
        provider: Provider::Ringba,
        account_id: String::new(),
        call_id: "x".into(),
        version: 0,
        started_at: ts(0),
        answered_at: None,
        ended_at: None,
        duration_secs: None,
        billable_secs: None,
        caller_number: None,
        tracking_number: None,
        destination_number: None,
        campaign_id: None,
        campaign_name: None,
        publisher_id: None,
        publisher_name: None,
        buyer_id: None,
        buyer_name: None,
        status: CallStatus::Unknown,
        provider_status: None,
        converted: None,
        revenue: None,
        payout: None,
        currency: None,
        recording_url: None,
        tags: BTreeMap::new(),
        source: RecordSource::Poll,
        observed_at: ts(-1),
        provider_updated_at: None,
        raw: None,
        present_fields: None,
    }
}

pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "(?s).{0,24}",
        "[a-z0-9+:_-]{1,12}",
        any::<String>(),
    ]
}

pub fn opt_text() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(text())
}

pub fn timestamp() -> impl Strategy<Value = DateTime<Utc>> {
    let min = DateTime::<Utc>::MIN_UTC.timestamp_micros();
    let max = DateTime::<Utc>::MAX_UTC.timestamp_micros();
    prop_oneof![
        // around the epoch, before and after 1970
        -10_000_000_000_000_000i64..10_000_000_000_000_000i64,
        min..=max,
        Just(min),
        Just(max),
        Just(0i64),
        Just(-1i64),
    ]
    .prop_map(ts)
}

pub fn opt_timestamp() -> impl Strategy<Value = Option<DateTime<Utc>>> {
    proptest::option::of(timestamp())
}

const MAX_UNSCALED: i64 = 999_999_999_999_999_999;

/// Decimals that fit decimal(18,4): negative, zero, 18 digits, and at scales 0..=4 (the same
/// values normalized) or padded with zeros beyond 4 (exact rescale).
pub fn money() -> impl Strategy<Value = Decimal> {
    let unscaled = prop_oneof![
        -MAX_UNSCALED..=MAX_UNSCALED,
        Just(MAX_UNSCALED),
        Just(-MAX_UNSCALED),
        Just(0i64),
        -1000i64..1000,
    ];
    (unscaled, 0u32..3).prop_map(|(u, form)| {
        let d = Decimal::new(u, 4);
        match form {
            0 => d,
            1 => d.normalize(),
            _ => {
                let mut padded = d;
                padded.rescale(9);
                padded
            }
        }
    })
}

/// `None` (a complete record) two times in three, else any set of optional fields.
pub fn field_set() -> impl Strategy<Value = Option<FieldSet>> {
    prop_oneof![
        2 => Just(None),
        1 => any::<u32>().prop_map(|bits| {
            Some(
                CallField::ALL
                    .into_iter()
                    .filter(|f| bits & (1 << (*f as u8)) != 0)
                    .collect(),
            )
        }),
    ]
}

pub fn provider() -> impl Strategy<Value = Provider> {
    proptest::sample::select(Provider::ALL.to_vec())
}

prop_compose! {
    pub fn call_record()(
        (provider, account_id, call_id, version, started_at, answered_at, ended_at) in
            (provider(), text(), text(), any::<i64>(), timestamp(), opt_timestamp(), opt_timestamp()),
        (duration_secs, billable_secs, caller_number, tracking_number, destination_number) in
            (proptest::option::of(any::<i32>()), proptest::option::of(any::<i32>()), opt_text(), opt_text(), opt_text()),
        (campaign_id, campaign_name, publisher_id, publisher_name, buyer_id, buyer_name) in
            (opt_text(), opt_text(), opt_text(), opt_text(), opt_text(), opt_text()),
        (status, provider_status, converted, revenue, payout, currency, recording_url) in
            (proptest::sample::select(CallStatus::ALL.to_vec()), opt_text(), proptest::option::of(any::<bool>()),
             proptest::option::of(money()), proptest::option::of(money()), opt_text(), opt_text()),
        (tags, source, observed_at, provider_updated_at, raw, present_fields) in
            (proptest::collection::btree_map(text(), text(), 0..5),
             proptest::sample::select(RecordSource::ALL.to_vec()), timestamp(), opt_timestamp(),
             proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)), field_set()),
    ) -> CallRecord {
        CallRecord {
            provider, account_id, call_id, version, started_at, answered_at, ended_at,
            duration_secs, billable_secs, caller_number, tracking_number, destination_number,
            campaign_id, campaign_name, publisher_id, publisher_name, buyer_id, buyer_name,
            status, provider_status, converted, revenue, payout, currency, recording_url,
            tags, source, observed_at, provider_updated_at, raw, present_fields,
        }
    }
}

prop_compose! {
    pub fn sync_request()(
        (id, provider, account_id, mode, window_start, window_end) in
            (text(), provider(), text(), proptest::sample::select(SyncMode::ALL.to_vec()), opt_timestamp(), opt_timestamp()),
        (requested_at, requested_by, attempt, not_before) in
            (timestamp(), text(), any::<i32>(), opt_timestamp()),
    ) -> SyncRequest {
        SyncRequest { id, provider, account_id, mode, window_start, window_end, requested_at, requested_by, attempt, not_before }
    }
}

prop_compose! {
    pub fn sync_event()(
        (sync_id, provider, account_id, mode, kind) in
            (text(), provider(), text(), proptest::sample::select(SyncMode::ALL.to_vec()),
             proptest::sample::select(SyncEventKind::ALL.to_vec())),
        (records, pages, rate_per_sec, eta_secs, error, at) in
            (any::<i64>(), any::<i64>(),
             prop_oneof![any::<f64>().prop_filter("not NaN", |f| !f.is_nan()), Just(f64::INFINITY), Just(-0.0f64)],
             proptest::option::of(any::<i64>()), opt_text(), timestamp()),
    ) -> SyncEvent {
        SyncEvent { sync_id, provider, account_id, mode, kind, records, pages, rate_per_sec, eta_secs, error, at }
    }
}

prop_compose! {
    pub fn dedup_entry()(fingerprint in any::<u128>(), version in any::<i64>(), seen_at in timestamp()) -> DedupEntry {
        DedupEntry { fingerprint, version, seen_at }
    }
}
