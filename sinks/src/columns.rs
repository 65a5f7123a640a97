//! The columns of `calls` the sink writes, in one order shared by the
//! Postgres and SQLite stores, the upsert statements' conflict clauses, and the
//! mapping of a stored row back to a record.
//!
//! The guard of every upsert is the [`callsync_schemas::Precedence`] of the row against the
//! record's, as a row value: `(calls.version, calls.fingerprint) < (EXCLUDED.version,
//! EXCLUDED.fingerprint)`: the processor's dedup order, so both keep the same one of two
//! versions that tie, and a record equal to the row (a replay) is skipped by the `WHERE` of
//! `DO UPDATE`: no new row version, no index change.

use std::collections::BTreeMap;

use callsync_schemas::{CallField, CallRecord, FieldSet};

use crate::store::StoreError;

/// Every column the sink writes (`synced_at` is set by the store).
pub const CALL_COLUMNS: [&str; 34] = [
    "provider",
    "account_id",
    "call_id",
    "version",
    "fingerprint",
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

/// The guard of every upsert (see the module docs).
pub const PRECEDENCE_GUARD: &str =
    "WHERE (calls.version, calls.fingerprint) < (EXCLUDED.version, EXCLUDED.fingerprint)";

/// What every update writes besides the fields: the precedence, how and when the record was
/// seen, and where it came from.
const BOOKKEEPING_COLUMNS: [&str; 7] = [
    "version",
    "fingerprint",
    "source",
    "observed_at",
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
];

/// `ON CONFLICT ... DO UPDATE SET <every column> ... WHERE <guard>` for complete records,
/// shared by both stores.
pub fn upsert_conflict_clause() -> String {
    conflict_clause(updated_columns())
}

/// The conflict clause of a partial record carrying `carried`: it updates only those fields'
/// columns and the bookkeeping, under the same guard. (Its INSERT writes NULL into the
/// columns of the fields it does not carry, `unknown` into `status` and `{}` into `tags`.)
pub fn partial_conflict_clause(carried: FieldSet) -> String {
    conflict_clause(
        carried
            .iter()
            .map(CallField::as_str)
            .chain(BOOKKEEPING_COLUMNS),
    )
}

fn conflict_clause<'a>(columns: impl Iterator<Item = &'a str>) -> String {
    let mut set: Vec<String> = columns.map(|c| format!("{c} = EXCLUDED.{c}")).collect();
    set.push("synced_at = EXCLUDED.synced_at".to_string());
    format!(
        "ON CONFLICT (provider, account_id, call_id) DO UPDATE SET {} {PRECEDENCE_GUARD}",
        set.join(", ")
    )
}

/// The field set of a stored row read back as a record: complete, unless no record has told
/// the call's start yet (a row a partial record created), which is then the one field the row
/// does not carry (`started_at` reads as the epoch).
pub fn stored_fields(started_at_known: bool) -> Option<FieldSet> {
    (!started_at_known).then(|| {
        let mut set = FieldSet::ALL;
        set.remove(CallField::StartedAt);
        set
    })
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
