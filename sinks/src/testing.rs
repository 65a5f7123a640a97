//! Realistic call records for tests, benchmarks and the demo.

use std::collections::BTreeMap;

use callsync_schemas::{CallRecord, CallStatus, Provider, RecordSource};
use chrono::{DateTime, TimeZone, Utc};
use rust_decimal::Decimal;

/// A call of account `acct-1` with every field set, at `version`.
pub fn call(call_id: &str, version: i64) -> CallRecord {
    sample_call(Provider::Retreaver, "acct-1", call_id, version)
}

/// A call with every field set; content varies with `version` so a newer
/// version is visibly different.
pub fn sample_call(
    provider: Provider,
    account_id: &str,
    call_id: &str,
    version: i64,
) -> CallRecord {
    let started_at: DateTime<Utc> = Utc
        .timestamp_opt(1_700_000_000 + (version % 100_000), 123_456_000)
        .single()
        .unwrap_or_default();
    let mut tags = BTreeMap::new();
    tags.insert("utm_source".to_string(), "google".to_string());
    tags.insert("version".to_string(), version.to_string());
    CallRecord {
        provider,
        account_id: account_id.to_string(),
        call_id: call_id.to_string(),
        version,
        started_at,
        answered_at: Some(started_at + chrono::Duration::seconds(3)),
        ended_at: Some(started_at + chrono::Duration::seconds(125)),
        duration_secs: Some(125),
        billable_secs: Some((version % 120) as i32),
        caller_number: Some("+14155550100".to_string()),
        tracking_number: Some("+18005550199".to_string()),
        destination_number: Some("+12125550123".to_string()),
        campaign_id: Some(format!("cmp-{}", version % 7)),
        campaign_name: Some("Spring Insurance".to_string()),
        publisher_id: Some("pub-9".to_string()),
        publisher_name: Some("Acme Media".to_string()),
        buyer_id: Some("buy-3".to_string()),
        buyer_name: Some("Best Buyers LLC".to_string()),
        status: CallStatus::Completed,
        provider_status: Some("completed".to_string()),
        converted: Some(version % 2 == 0),
        revenue: Some(Decimal::new(1234567 + version, 4)),
        payout: Some(Decimal::new(-25, 1)),
        currency: Some("USD".to_string()),
        recording_url: Some(format!("https://rec.example.com/{call_id}.mp3")),
        tags,
        source: RecordSource::Poll,
        observed_at: started_at + chrono::Duration::seconds(300),
        provider_updated_at: Some(started_at + chrono::Duration::seconds(200)),
        raw: Some(format!("{{\"id\":\"{call_id}\",\"v\":{version}}}").into_bytes()),
        present_fields: None,
    }
}
