//! The typed call record and the other records callsync moves through Kafka.
//!
//! The Avro schemas in `schemas/avro/*.avsc` are the single source of the wire
//! shape; these types mirror them field for field.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::partial::FieldSet;

/// A call-tracking provider callsync syncs from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Retreaver,
    Ringba,
    Invoca,
    #[serde(rename = "callrail")]
    CallRail,
    #[serde(rename = "trackdrive")]
    TrackDrive,
}

impl Provider {
    pub const ALL: [Provider; 5] = [
        Provider::Retreaver,
        Provider::Ringba,
        Provider::Invoca,
        Provider::CallRail,
        Provider::TrackDrive,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Retreaver => "retreaver",
            Provider::Ringba => "ringba",
            Provider::Invoca => "invoca",
            Provider::CallRail => "callrail",
            Provider::TrackDrive => "trackdrive",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no provider callsync knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown provider {0:?} (expected one of retreaver, ringba, invoca, callrail, trackdrive)")]
pub struct UnknownProvider(pub String);

impl FromStr for Provider {
    type Err = UnknownProvider;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Provider::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownProvider(s.to_string()))
    }
}

/// The normalized outcome of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallStatus {
    InProgress,
    Completed,
    NoAnswer,
    Busy,
    Failed,
    Unknown,
}

impl CallStatus {
    pub const ALL: [CallStatus; 6] = [
        CallStatus::InProgress,
        CallStatus::Completed,
        CallStatus::NoAnswer,
        CallStatus::Busy,
        CallStatus::Failed,
        CallStatus::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CallStatus::InProgress => "in_progress",
            CallStatus::Completed => "completed",
            CallStatus::NoAnswer => "no_answer",
            CallStatus::Busy => "busy",
            CallStatus::Failed => "failed",
            CallStatus::Unknown => "unknown",
        }
    }
}

impl fmt::Display for CallStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no call status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown call status {0:?} (expected in_progress, completed, no_answer, busy, failed or unknown)")]
pub struct UnknownStatus(pub String);

impl FromStr for CallStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CallStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_string()))
    }
}

/// How a record reached callsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordSource {
    Poll,
    Webhook,
    Backfill,
}

impl RecordSource {
    pub const ALL: [RecordSource; 3] = [
        RecordSource::Poll,
        RecordSource::Webhook,
        RecordSource::Backfill,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RecordSource::Poll => "poll",
            RecordSource::Webhook => "webhook",
            RecordSource::Backfill => "backfill",
        }
    }
}

impl fmt::Display for RecordSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no record source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown record source {0:?} (expected poll, webhook or backfill)")]
pub struct UnknownSource(pub String);

impl FromStr for RecordSource {
    type Err = UnknownSource;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RecordSource::ALL
            .into_iter()
            .find(|src| src.as_str() == s)
            .ok_or_else(|| UnknownSource(s.to_string()))
    }
}

/// One version of one call, as every stage after the connectors sees it.
///
/// Times are UTC with microsecond precision (Avro `timestamp-micros`); money is
/// `decimal(18,4)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    pub provider: Provider,
    pub account_id: String,
    pub call_id: String,
    /// Higher wins; equal versions are ordered by content fingerprint
    /// ([`crate::Precedence`]).
    pub version: i64,
    pub started_at: DateTime<Utc>,
    pub answered_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub duration_secs: Option<i32>,
    pub billable_secs: Option<i32>,
    pub caller_number: Option<String>,
    pub tracking_number: Option<String>,
    pub destination_number: Option<String>,
    pub campaign_id: Option<String>,
    pub campaign_name: Option<String>,
    pub publisher_id: Option<String>,
    pub publisher_name: Option<String>,
    pub buyer_id: Option<String>,
    pub buyer_name: Option<String>,
    pub status: CallStatus,
    pub provider_status: Option<String>,
    pub converted: Option<bool>,
    pub revenue: Option<Decimal>,
    pub payout: Option<Decimal>,
    pub currency: Option<String>,
    pub recording_url: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub source: RecordSource,
    pub observed_at: DateTime<Utc>,
    pub provider_updated_at: Option<DateTime<Utc>>,
    /// The provider's JSON, for audit and re-normalization.
    pub raw: Option<Vec<u8>>,
    /// `None`: a complete record. `Some`: a partial record carrying only these fields (and
    /// the six every record carries); see [`crate::partial`] and
    /// [`CallRecord::into_partial`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present_fields: Option<FieldSet>,
}

impl CallRecord {
    /// The Kafka key of every version of this call: `{provider}:{account_id}:{call_id}`.
    pub fn key(&self) -> CallKey {
        CallKey::new(self.provider, &self.account_id, &self.call_id)
    }
}

/// The key of a call: `{provider}:{account_id}:{call_id}`, UTF-8.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallKey(String);

impl CallKey {
    pub fn new(provider: Provider, account_id: &str, call_id: &str) -> Self {
        CallKey(format!("{provider}:{account_id}:{call_id}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for CallKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Sync modes a connector worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    Incremental,
    Full,
    Backfill,
}

impl SyncMode {
    pub const ALL: [SyncMode; 3] = [SyncMode::Incremental, SyncMode::Full, SyncMode::Backfill];

    pub fn as_str(self) -> &'static str {
        match self {
            SyncMode::Incremental => "incremental",
            SyncMode::Full => "full",
            SyncMode::Backfill => "backfill",
        }
    }
}

impl fmt::Display for SyncMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no sync mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown sync mode {0:?} (expected incremental, full or backfill)")]
pub struct UnknownSyncMode(pub String);

impl FromStr for SyncMode {
    type Err = UnknownSyncMode;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SyncMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| UnknownSyncMode(s.to_string()))
    }
}

/// A request to run one sync, written by the scheduler, the CLI or the API to
/// `callsync.sync-requests` (key `{provider}/{account}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncRequest {
    /// Deterministic per (provider, account, mode, slot) for scheduled syncs.
    pub id: String,
    pub provider: Provider,
    pub account_id: String,
    pub mode: SyncMode,
    pub window_start: Option<DateTime<Utc>>,
    pub window_end: Option<DateTime<Utc>>,
    pub requested_at: DateTime<Utc>,
    /// `scheduler`, `cli`, `api` or `retry`.
    pub requested_by: String,
    pub attempt: i32,
    /// A retried request is not run before this time.
    pub not_before: Option<DateTime<Utc>>,
}

/// What happened to a sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncEventKind {
    Started,
    Progress,
    Completed,
    Failed,
}

impl SyncEventKind {
    pub const ALL: [SyncEventKind; 4] = [
        SyncEventKind::Started,
        SyncEventKind::Progress,
        SyncEventKind::Completed,
        SyncEventKind::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SyncEventKind::Started => "started",
            SyncEventKind::Progress => "progress",
            SyncEventKind::Completed => "completed",
            SyncEventKind::Failed => "failed",
        }
    }
}

/// A string that names no sync event kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown sync event kind {0:?} (expected started, progress, completed or failed)")]
pub struct UnknownSyncEventKind(pub String);

impl FromStr for SyncEventKind {
    type Err = UnknownSyncEventKind;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SyncEventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownSyncEventKind(s.to_string()))
    }
}

/// Progress of a sync, written to `callsync.sync-events` (key: sync id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncEvent {
    pub sync_id: String,
    pub provider: Provider,
    pub account_id: String,
    pub mode: SyncMode,
    pub kind: SyncEventKind,
    pub records: i64,
    pub pages: i64,
    pub rate_per_sec: f64,
    pub eta_secs: Option<i64>,
    pub error: Option<String>,
    pub at: DateTime<Utc>,
}

/// The processor's dedup state for one call key, in `callsync.dedup-state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupEntry {
    /// A 128-bit hash of the record's content (everything but observed_at, source and raw).
    pub fingerprint: u128,
    pub version: i64,
    pub seen_at: DateTime<Utc>,
}
