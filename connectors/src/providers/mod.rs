//! One folder per provider: `config.rs` (its account settings), `client.rs` (the list-calls
//! API: auth, pagination and its last-page signal, date filters), `mapping.rs` (its record to
//! [`CallRecord`]).
//!
//! Every client implements [`ProviderClient`]: fetch one page of a window given a
//! [`PageToken`] (what the cursor stores), and map one record.

use std::sync::Arc;

use async_trait::async_trait;
use callsync_schemas::{CallRecord, Provider, RecordSource};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::ClientError;
use crate::http::ProviderHttp;
use crate::mapping::{MapContext, MappingError};

pub mod callrail;
pub mod invoca;
pub mod retreaver;
pub mod ringba;
pub mod trackdrive;

/// Where the next page of a window starts. `None` in a cursor means the first page.
/// Never a URL: provider URLs can carry credentials (Retreaver's `api_key`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PageToken {
    /// Page number, from 1 (Retreaver, CallRail).
    Page(u32),
    /// Offset into the result set (Ringba).
    Offset(u64),
    /// An opaque provider cursor (TrackDrive `next_cursor`).
    Cursor(String),
    /// Invoca's `start_after_transaction_id`.
    AfterTransaction(String),
}

/// What a window selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scan {
    /// Calls whose start/creation time is in the window, oldest first where the API allows
    /// (stable paging: new calls land on later pages).
    Created,
    /// Calls updated in the window (Retreaver: `sort_by=updated_at`, newest first, stop at
    /// the window start).
    Updated,
    /// Every transaction after the stored one, no date range (Invoca incremental).
    Transactions,
}

/// One page request.
#[derive(Debug, Clone)]
pub struct PageRequest {
    pub scan: Scan,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub token: Option<PageToken>,
}

/// One page of records, each the provider's own JSON text.
#[derive(Debug)]
pub struct Page {
    pub records: Vec<Box<RawValue>>,
    /// Where the following page starts; `None` on the last page.
    pub next: Option<PageToken>,
    /// How many rows the provider returned (before records outside the window were dropped).
    pub fetched: usize,
}

/// A provider account's list-calls API and mapping.
#[async_trait]
pub trait ProviderClient: Send + Sync + 'static {
    fn provider(&self) -> Provider;
    fn account_id(&self) -> &str;
    /// The HTTP side (limiter, breaker, stats).
    fn http(&self) -> &ProviderHttp;
    /// What an incremental sync of this provider scans.
    fn incremental_scan(&self) -> Scan {
        Scan::Created
    }
    /// Fetches one page.
    async fn fetch_page(&self, request: &PageRequest) -> Result<Page, ClientError>;
    /// Maps one record of a page (or of a webhook) to a CallRecord.
    fn map_record(&self, raw: &RawValue, ctx: &MapContext) -> Result<CallRecord, MappingError>;
    /// The mapping context of this account (time zone, region, currency).
    fn map_context(&self, source: RecordSource) -> MapContext;
    /// A best-effort call id of a record that failed mapping (for the DLQ key).
    fn call_id_hint(&self, raw: &RawValue) -> Option<String>;
}

/// Shared handle to a client.
pub type DynClient = Arc<dyn ProviderClient>;

/// Keeps the records of a page whose window time is inside `[start, end)`; a record whose
/// time cannot be read is kept (its mapping will send it to the DLQ if it is broken).
pub(crate) fn keep_in_window(
    records: Vec<Box<RawValue>>,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    time_of: impl Fn(&RawValue) -> Option<DateTime<Utc>>,
) -> Vec<Box<RawValue>> {
    records
        .into_iter()
        .filter(|r| match time_of(r) {
            Some(t) => t >= start && t < end,
            None => true,
        })
        .collect()
}

/// A cheap read of one top-level string/number field of a record.
pub(crate) fn peek_field(raw: &RawValue, path: &[&str]) -> Option<String> {
    let mut current: &RawValue = raw;
    let mut holder: std::collections::HashMap<String, &RawValue>;
    for key in path {
        holder = serde_json::from_str(current.get()).ok()?;
        current = holder.get(*key).copied()?;
    }
    match crate::mapping::kind_of(current) {
        crate::mapping::JsonKind::String => serde_json::from_str::<String>(current.get()).ok(),
        crate::mapping::JsonKind::Number => Some(current.get().trim().to_string()),
        _ => None,
    }
    .filter(|s| !s.is_empty())
}

/// Splits a JSON array body into its elements' raw text.
pub(crate) fn split_array(body: &[u8]) -> Result<Vec<Box<RawValue>>, String> {
    serde_json::from_slice::<Vec<Box<RawValue>>>(body)
        .map_err(|e| format!("expected a JSON array of records: {e}"))
}

/// The error for a page token of another provider (a corrupted or foreign cursor).
pub(crate) fn bad_token(client: &(impl ProviderClient + ?Sized), token: &PageToken) -> ClientError {
    ClientError::Rejected {
        provider: client.provider(),
        account: client.account_id().to_string(),
        url: String::new(),
        status: 0,
        body: format!("page token {token:?} does not belong to this provider"),
    }
}
