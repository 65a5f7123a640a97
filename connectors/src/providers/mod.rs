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
/// A URL only where the provider's URLs never carry credentials and its next link must be
/// followed as given (CallRail's relative `next_page`; checked by [`same_origin_link`]).
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
    /// The provider's own link to the next page, followed exactly (CallRail `next_page`).
    NextLink(String),
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
    /// The shortest backfill window worth a request: providers whose filters are whole dates
    /// fetch about a day more than the window on each side, so their windows are longer.
    fn min_backfill_window(&self) -> std::time::Duration {
        crate::backfill::MIN_WINDOW
    }
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

/// The dates to send a filter that takes whole dates read in a zone we may not know (Invoca's
/// `from`/`to` in the API user's zone, CallRail's `start_date`/`end_date`), first and last
/// inclusive, so that `[start, end)` lies inside them in any zone from UTC-12 to UTC+14. The
/// rows outside `[start, end)` are dropped client-side.
pub(crate) fn covering_dates(
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> (chrono::NaiveDate, chrono::NaiveDate) {
    let first = (start - chrono::Duration::hours(12)).date_naive();
    let last = (end - chrono::Duration::microseconds(1) + chrono::Duration::hours(14)).date_naive();
    (first, last.max(first))
}

/// Backfill windows of providers filtered by whole dates are at least this long, so that the
/// day fetched beyond each end stays a small part of a window.
pub(crate) const DATE_FILTER_MIN_WINDOW: std::time::Duration =
    std::time::Duration::from_secs(7 * 86_400);

/// A next-page link of the provider: only followed when it points at the same scheme, host
/// and port as `base_url` (the request carries the account's credentials).
pub(crate) fn same_origin_link(base_url: &str, link: &str) -> Result<String, String> {
    let base = url::Url::parse(base_url).map_err(|e| format!("base_url {base_url:?}: {e}"))?;
    let next = url::Url::parse(link).map_err(|e| format!("next page link {link:?}: {e}"))?;
    if next.scheme() != base.scheme()
        || next.host_str() != base.host_str()
        || next.port_or_known_default() != base.port_or_known_default()
    {
        return Err(format!(
            "next page link {} points away from {}",
            crate::http::redact_url(&next),
            crate::http::redact_url(&base)
        ));
    }
    Ok(next.to_string())
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
