//! Synthetic call records for tests and benchmarks: valid records with a given index and
//! version, and a corpus of bad records, one per validation rule.

use std::collections::BTreeMap;
use std::str::FromStr;

use callsync_schemas::{CallRecord, CallStatus, Provider, RecordSource};
use chrono::{DateTime, Duration, TimeZone, Utc};
use rust_decimal::Decimal;

use crate::validate::RejectReason;

/// A valid, already normalized record: call `c{index}` of account `acct-{index % 50}`,
/// with the given version. Content depends on `index` only, so two versions of one index
/// have equal fingerprints; use [`changed_call_record`] for a new content.
pub fn call_record(index: u64, version: i64) -> CallRecord {
    let provider = Provider::ALL[(index % Provider::ALL.len() as u64) as usize];
    let started_at = base_time() + Duration::seconds((index % 86_400) as i64);
    let answered_at = started_at + Duration::seconds(3);
    let duration = 30 + (index % 600) as i32;
    let mut tags = BTreeMap::new();
    tags.insert("utm_source".to_string(), format!("src-{}", index % 7));
    CallRecord {
        provider,
        account_id: format!("acct-{}", index % 50),
        call_id: format!("c{index:010}"),
        version,
        started_at,
        answered_at: Some(answered_at),
        ended_at: Some(answered_at + Duration::seconds(duration as i64)),
        duration_secs: Some(duration + 3),
        billable_secs: Some(duration),
        caller_number: Some(format!(
            "+1415{:03}{:04}",
            200 + index % 700,
            index % 10_000
        )),
        tracking_number: Some("+18002250199".to_string()),
        destination_number: Some(format!(
            "+1212{:03}{:04}",
            300 + index % 600,
            (index / 7) % 10_000
        )),
        campaign_id: Some(format!("camp-{}", index % 20)),
        campaign_name: Some(format!("Campaign {}", index % 20)),
        publisher_id: Some(format!("pub-{}", index % 30)),
        publisher_name: None,
        buyer_id: Some(format!("buyer-{}", index % 10)),
        buyer_name: Some("Acme Insurance".to_string()),
        status: CallStatus::Completed,
        provider_status: Some("completed".to_string()),
        converted: Some(index % 3 == 0),
        revenue: Some(Decimal::new((index % 10_000) as i64 * 25, 2)),
        payout: Some(Decimal::new((index % 10_000) as i64 * 10, 2)),
        currency: Some("USD".to_string()),
        recording_url: Some(format!("https://recordings.example.com/{index}.mp3")),
        tags,
        source: if index % 2 == 0 {
            RecordSource::Poll
        } else {
            RecordSource::Webhook
        },
        observed_at: started_at + Duration::seconds(duration as i64 + 60),
        provider_updated_at: None,
        raw: Some(format!("{{\"id\":\"c{index}\"}}").into_bytes()),
        present_fields: None,
    }
}

/// Record `index` at `version` with content that differs from [`call_record`]'s (a revenue
/// adjustment), as a provider correction would.
pub fn changed_call_record(index: u64, version: i64) -> CallRecord {
    let mut r = call_record(index, version);
    r.revenue = Some(Decimal::new((index % 10_000) as i64 * 25 + 1, 2));
    r.converted = Some(true);
    r
}

fn base_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 6, 1, 0, 0, 0)
        .single()
        .unwrap_or_default()
}

/// One bad record and the rule it breaks.
#[derive(Debug, Clone)]
pub struct BadRecordCase {
    pub name: &'static str,
    /// The Kafka key to send it with.
    pub key: Option<Vec<u8>>,
    pub record: CallRecord,
    pub reason: RejectReason,
    pub field: &'static str,
}

/// One bad record per validation rule (decoding excepted: see the processor's tests),
/// each otherwise valid, with distinct call ids `bad-{name}`.
pub fn bad_record_corpus(now: DateTime<Utc>) -> Vec<BadRecordCase> {
    type Breaker = Box<dyn Fn(&mut CallRecord) -> Option<Option<Vec<u8>>>>;
    let cases: Vec<(&'static str, RejectReason, &'static str, Breaker)> = vec![
        (
            "missing-key",
            RejectReason::MissingKey,
            "key",
            Box::new(|_| Some(None)),
        ),
        (
            "key-mismatch",
            RejectReason::KeyMismatch,
            "key",
            Box::new(|_| Some(Some(b"retreaver:other:call".to_vec()))),
        ),
        (
            "blank-account",
            RejectReason::MissingField,
            "account_id",
            Box::new(|r| {
                r.account_id = " ".into();
                None
            }),
        ),
        (
            "zero-version",
            RejectReason::InvalidVersion,
            "version",
            Box::new(|r| {
                r.version = 0;
                None
            }),
        ),
        (
            "ended-before-answered",
            RejectReason::TimestampsOutOfOrder,
            "ended_at",
            Box::new(|r| {
                r.ended_at = r.answered_at.map(|a| a - Duration::seconds(1));
                None
            }),
        ),
        (
            "started-next-year",
            RejectReason::TimestampInFuture,
            "started_at",
            Box::new(move |r| {
                r.started_at = now + Duration::days(365);
                r.answered_at = None;
                r.ended_at = None;
                None
            }),
        ),
        (
            "negative-billable",
            RejectReason::NegativeDuration,
            "billable_secs",
            Box::new(|r| {
                r.billable_secs = Some(-5);
                None
            }),
        ),
        (
            "revenue-five-decimals",
            RejectReason::MoneyPrecision,
            "revenue",
            Box::new(|r| {
                r.revenue = Decimal::from_str("1.23456").ok();
                None
            }),
        ),
        (
            "payout-too-large",
            RejectReason::MoneyOutOfRange,
            "payout",
            Box::new(|r| {
                r.payout = Decimal::from_str("123456789012345.5").ok();
                None
            }),
        ),
        (
            "currency-xyz",
            RejectReason::UnknownCurrency,
            "currency",
            Box::new(|r| {
                r.currency = Some("XYZ".into());
                None
            }),
        ),
        (
            "caller-not-a-number",
            RejectReason::InvalidPhoneNumber,
            "caller_number",
            Box::new(|r| {
                r.caller_number = Some("call me maybe".into());
                None
            }),
        ),
        (
            "status-teleported",
            RejectReason::UnmappedStatus,
            "provider_status",
            Box::new(|r| {
                r.status = CallStatus::Unknown;
                r.provider_status = Some("teleported".into());
                None
            }),
        ),
    ];
    cases
        .into_iter()
        .enumerate()
        .map(|(i, (name, reason, field, breaker))| {
            let mut record = call_record(1_000_000 + i as u64, 1_000);
            record.call_id = format!("bad-{name}");
            let key_override = breaker(&mut record);
            let key = key_override.unwrap_or_else(|| Some(record.key().into_string().into_bytes()));
            BadRecordCase {
                name,
                key,
                record,
                reason,
                field,
            }
        })
        .collect()
}
