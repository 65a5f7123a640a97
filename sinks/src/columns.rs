//! The columns of `calls` the sink writes, in one order shared by the
//! Postgres and SQLite stores, and the mapping of a stored row back to a record.

use std::collections::BTreeMap;

use callsync_schemas::CallRecord;

use crate::store::StoreError;

/// Every column the sink writes (`synced_at` is set by the store).
pub const CALL_COLUMNS: [&str; 33] = [
    "provider",
    "account_id",
    "call_id",
    "version",
    "started_at",
    "answered_at",
    "ended_at",
    "duration_secs",
    "billable_secs",
    "caller_number",
    "tracking_number",
    "destination_number",
    "campaign_id",
    "campaign_name",
    "publisher_id",
    "publisher_name",
    "buyer_id",
    "buyer_name",
    "status",
    "provider_status",
    "converted",
    "revenue",
    "payout",
    "currency",
    "recording_url",
    "tags",
    "source",
    "observed_at",
    "provider_updated_at",
    "raw",
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
];

/// Columns after the primary key: what an upsert updates.
pub fn updated_columns() -> impl Iterator<Item = &'static str> {
    CALL_COLUMNS.iter().skip(3).copied()
}

/// `ON CONFLICT ... DO UPDATE SET ... WHERE calls.version <= EXCLUDED.version`,
/// the version guard shared by both stores.
pub fn upsert_conflict_clause() -> String {
    let mut set: Vec<String> = updated_columns()
        .map(|c| format!("{c} = EXCLUDED.{c}"))
        .collect();
    set.push("synced_at = EXCLUDED.synced_at".to_string());
    format!(
        "ON CONFLICT (provider, account_id, call_id) DO UPDATE SET {} WHERE calls.version <= EXCLUDED.version",
        set.join(", ")
    )
}

/// The tags map as JSON text.
pub fn tags_json(tags: &BTreeMap<String, String>) -> Vec<u8> {
    // a map of strings always serializes
    serde_json::to_vec(tags).unwrap_or_else(|_| b"{}".to_vec())
}

pub fn parse_field<T: std::str::FromStr>(
    column: &'static str,
    key: &str,
    text: &str,
) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    text.parse::<T>().map_err(|e| StoreError::Decode {
        column,
        key: key.to_string(),
        message: e.to_string(),
    })
}

pub fn parse_tags(key: &str, json: &str) -> Result<BTreeMap<String, String>, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Decode {
        column: "tags",
        key: key.to_string(),
        message: e.to_string(),
    })
}

/// Provider, account and call id of a record, joined for messages.
pub fn describe(record: &CallRecord) -> String {
    record.key().into_string()
}
