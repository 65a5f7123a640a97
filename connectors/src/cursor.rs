//! Source cursors: where a sync stands, per (provider, account, stream), stored as JSON in the
//! compacted topic `callsync.source-offsets` under the key `{provider}/{account}/{stream}`.
//!
//! Streams:
//! - `calls` — the incremental stream (its watermark, and for Invoca the last transaction id);
//! - `full/{sync_id}` — one full re-read (resumable while that sync is retried);
//! - `reconcile` — the older window the full syncs re-read every few days (resumable);
//! - `backfill/{sync_id}/{window_start}` — one backfill window, resumable on its own.

use callsync_schemas::{Provider, SyncMode};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::providers::{PageToken, Scan};

/// The incremental stream's name.
pub const INCREMENTAL_STREAM: &str = "calls";

/// The reconcile stream: one window of older calls re-read every few days, resumable across
/// the nightly full syncs that read it.
pub const RECONCILE_STREAM: &str = "reconcile";

/// The cursor key `{provider}/{account}/{stream}`.
pub fn cursor_key(provider: Provider, account: &str, stream: &str) -> String {
    format!("{provider}/{account}/{stream}")
}

/// The stream of a full sync.
pub fn full_stream(sync_id: &str) -> String {
    format!("full/{sync_id}")
}

/// The streams of one backfill share this prefix (`backfill/{sync_id}`).
pub fn backfill_stream_prefix(sync_id: &str) -> String {
    format!("backfill/{sync_id}")
}

/// The stream of one backfill window.
pub fn backfill_stream(sync_id: &str, window_start: DateTime<Utc>) -> String {
    format!(
        "{}/{}",
        backfill_stream_prefix(sync_id),
        window_start.format("%Y%m%dT%H%M%S%.6fZ")
    )
}

/// Where one stream of one account stands. Written in the same Kafka transaction as the
/// records of the page it follows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceCursor {
    /// Format version of this JSON (1).
    pub v: u32,
    pub provider: Provider,
    pub account: String,
    pub stream: String,
    /// The sync that wrote it.
    pub sync_id: String,
    pub mode: SyncMode,
    pub scan: Scan,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    /// The next page of the window; `None` with `done = false` means the first page.
    pub next: Option<PageToken>,
    /// The window is fully read.
    pub done: bool,
    /// Incremental: everything before this has been read (the next window starts here minus
    /// the lookback).
    pub watermark: Option<DateTime<Utc>>,
    /// Invoca's transaction stream: the last transaction id read.
    pub after_transaction_id: Option<String>,
    /// Records emitted in this window so far.
    pub records: u64,
    pub pages: u64,
    pub updated_at: DateTime<Utc>,
}

impl SourceCursor {
    pub fn key(&self) -> String {
        cursor_key(self.provider, &self.account, &self.stream)
    }

    pub fn to_json(&self) -> Vec<u8> {
        // a struct of strings, numbers and enums always serializes
        serde_json::to_vec(self).unwrap_or_default()
    }
}
