//! The sync runner: [`run_sync`] runs one [`SyncRequest`] (incremental, full or backfill)
//! against one provider account and commits every page — records, DLQ records, the new
//! cursor and any progress event — in one transaction of the [`SyncStore`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use callsync_runtime::metrics::{DLQ_TOTAL, RECORDS_TOTAL};
use callsync_runtime::Shutdown;
use callsync_schemas::{
    encode_to_vec, Provider, RecordSource, SyncEvent, SyncEventKind, SyncMode, SyncRequest,
    WireFormat,
};
use chrono::{DateTime, Utc};
use futures::stream::StreamExt;
use serde_json::value::RawValue;
use tracing::Instrument;

use crate::backfill::{coverage, Range, WindowPlanner, WindowStats};
use crate::config::SyncSettings;
use crate::cursor::{
    backfill_stream, backfill_stream_prefix, cursor_key, full_stream, SourceCursor,
    INCREMENTAL_STREAM, RECONCILE_STREAM,
};
use crate::error::{StoreError, SyncError};
use crate::mapping::{MapContext, MappingError};
use crate::progress::{ProgressSink, ProgressTracker};
use crate::providers::{DynClient, PageRequest, PageToken, Scan};
use crate::registry::Connectors;
use crate::store::{CommitBatch, OutRecord, SyncSession, SyncStore};

/// DLQ header names written by the connector stage.
pub mod headers {
    pub const ERROR_STAGE: &str = "callsync.error.stage";
    pub const ERROR_REASON: &str = "callsync.error.reason";
    pub const ERROR_FIELD: &str = "callsync.error.field";
    pub const ERROR_MESSAGE: &str = "callsync.error.message";
    pub const SYNC_ID: &str = "callsync.sync.id";
    pub const PROVIDER: &str = "callsync.provider";
    pub const ACCOUNT: &str = "callsync.account";
}

/// What [`run_sync`] needs.
#[derive(Clone)]
pub struct SyncDeps {
    pub connectors: Arc<Connectors>,
    pub store: Arc<dyn SyncStore>,
    pub settings: SyncSettings,
    /// How CallRecords and SyncEvents are framed (single-object, or Confluent with a
    /// registry id).
    pub wire_format: WireFormat,
    pub shutdown: Shutdown,
}

/// How a sync ended.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncOutcome {
    pub sync_id: String,
    pub provider: Provider,
    pub account: String,
    pub mode: SyncMode,
    /// Records written to `calls.raw` by this run.
    pub records: u64,
    /// Records sent to `calls.dlq` by this run.
    pub dlq: u64,
    pub pages: u64,
    /// Windows read by this run / already done by an earlier run of the same sync.
    pub windows_run: u64,
    pub windows_already_done: u64,
    /// HTTP requests and 429s of the account during this run (shared counters: concurrent
    /// syncs of the same account add up).
    pub requests: u64,
    pub rate_limited: u64,
    pub elapsed: Duration,
    /// Set when the sync did nothing on purpose (e.g. Invoca polled too soon).
    pub skipped: Option<String>,
    /// Set when this (full) sync also re-read the older reconcile window.
    pub reconcile: Option<ReconcileReport>,
}

/// The reconcile window a full sync read, and what it was estimated to cost.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconcileReport {
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    /// Requests estimated before it ran, from the call density of the full window.
    pub estimated_requests: Option<u64>,
    /// The cap of this run (`reconcile_max_requests`); the rest resumes next time.
    pub max_requests: Option<u64>,
    /// The window was read to its end in this run.
    pub finished: bool,
}

/// One window to read.
#[derive(Debug, Clone)]
struct WindowPlan {
    stream: String,
    scan: Scan,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    /// Where to start (the stored cursor of this window, when resuming).
    token: Option<PageToken>,
    resumed_records: u64,
    resumed_pages: u64,
    /// Incremental Invoca: the stored transaction position.
    after_transaction_id: Option<String>,
    /// Incremental: the watermark to keep until this window is done.
    prev_watermark: Option<DateTime<Utc>>,
    /// Read at most this many pages in this run; the window resumes at its cursor next time
    /// (the reconcile window's share of the rate budget).
    max_pages: Option<u64>,
}

struct Plan {
    /// Windows to read (a backfill's: those to resume).
    windows: Vec<WindowPlan>,
    already_done: u64,
    skipped: Option<String>,
    /// Backfill: parts of the range no window covers yet (cut into windows as it runs).
    gaps: Vec<Range>,
    /// Backfill: what the windows done earlier showed (for sizing new ones).
    seen: Vec<WindowStats>,
}

fn micros_secs(secs: u64) -> chrono::Duration {
    chrono::Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX / 1_000_000))
}

fn plan(
    request: &SyncRequest,
    client: &DynClient,
    settings: &SyncSettings,
    cursors: &std::collections::HashMap<String, SourceCursor>,
    min_interval: Duration,
    now: DateTime<Utc>,
) -> Result<Plan, String> {
    let provider = request.provider;
    let account = &request.account_id;
    let end = request.window_end.unwrap_or(now);
    match request.mode {
        SyncMode::Incremental => {
            let prev = cursors.get(&cursor_key(provider, account, INCREMENTAL_STREAM));
            let scan = client.incremental_scan();
            if scan == Scan::Transactions {
                if let Some(p) = prev {
                    let since = now - p.updated_at;
                    if p.done
                        && !min_interval.is_zero()
                        && since.to_std().unwrap_or(Duration::ZERO) < min_interval
                    {
                        return Ok(Plan {
                            windows: Vec::new(),
                            already_done: 0,
                            skipped: Some(format!(
                                "last incremental sync {}s ago; {} allows one every {}s",
                                since.num_seconds(),
                                provider,
                                min_interval.as_secs()
                            )),
                            gaps: Vec::new(),
                            seen: Vec::new(),
                        });
                    }
                }
                let after = prev.and_then(|p| p.after_transaction_id.clone());
                let token = match prev {
                    Some(p) if !p.done => p.next.clone(),
                    _ => after.clone().map(PageToken::AfterTransaction),
                };
                return Ok(Plan {
                    windows: vec![WindowPlan {
                        stream: INCREMENTAL_STREAM.to_string(),
                        scan,
                        start: prev.map(|p| p.window_start).unwrap_or(end),
                        end,
                        token,
                        resumed_records: 0,
                        resumed_pages: 0,
                        after_transaction_id: after,
                        prev_watermark: prev.and_then(|p| p.watermark),
                        max_pages: None,
                    }],
                    already_done: 0,
                    skipped: None,
                    gaps: Vec::new(),
                    seen: Vec::new(),
                });
            }
            // same sync retried: resume its window where it stopped
            if let Some(p) = prev.filter(|p| !p.done && p.sync_id == request.id) {
                return Ok(Plan {
                    windows: vec![WindowPlan {
                        stream: INCREMENTAL_STREAM.to_string(),
                        scan: p.scan,
                        start: p.window_start,
                        end: p.window_end,
                        token: p.next.clone(),
                        resumed_records: p.records,
                        resumed_pages: p.pages,
                        after_transaction_id: None,
                        prev_watermark: p.watermark,
                        max_pages: None,
                    }],
                    already_done: 0,
                    skipped: None,
                    gaps: Vec::new(),
                    seen: Vec::new(),
                });
            }
            let lookback = micros_secs(if scan == Scan::Created {
                settings
                    .lookback_secs
                    .max(settings.created_scan_lookback_secs)
            } else {
                settings.lookback_secs
            });
            let start = match (request.window_start, prev) {
                (Some(s), _) => s,
                (None, Some(p)) if p.done => p.watermark.unwrap_or(p.window_end) - lookback,
                // an unfinished window of another sync: read it again from its start
                (None, Some(p)) => {
                    p.window_start.min(p.watermark.unwrap_or(p.window_start)) - lookback
                }
                (None, None) => end - micros_secs(settings.initial_incremental_secs),
            };
            Ok(Plan {
                windows: vec![WindowPlan {
                    stream: INCREMENTAL_STREAM.to_string(),
                    scan,
                    start: start.min(end),
                    end,
                    token: None,
                    resumed_records: 0,
                    resumed_pages: 0,
                    after_transaction_id: None,
                    prev_watermark: prev.and_then(|p| p.watermark),
                    max_pages: None,
                }],
                already_done: 0,
                skipped: None,
                gaps: Vec::new(),
                seen: Vec::new(),
            })
        }
        SyncMode::Full => {
            let stream = full_stream(&request.id);
            let start = request
                .window_start
                .unwrap_or(end - chrono::Duration::days(i64::from(settings.full_window_days)));
            let prev = cursors.get(&cursor_key(provider, account, &stream));
            if prev.is_some_and(|p| p.done) {
                return Ok(Plan {
                    windows: Vec::new(),
                    already_done: 1,
                    skipped: None,
                    gaps: Vec::new(),
                    seen: Vec::new(),
                });
            }
            let mut windows = vec![WindowPlan {
                stream,
                scan: Scan::Created,
                start: prev.map(|p| p.window_start).unwrap_or(start),
                end: prev.map(|p| p.window_end).unwrap_or(end),
                token: prev.and_then(|p| p.next.clone()),
                resumed_records: prev.map(|p| p.records).unwrap_or(0),
                resumed_pages: prev.map(|p| p.pages).unwrap_or(0),
                after_transaction_id: None,
                prev_watermark: None,
                max_pages: None,
            }];
            windows.extend(reconcile_window(
                request, client, settings, cursors, start, end,
            ));
            Ok(Plan {
                windows,
                already_done: 0,
                skipped: None,
                gaps: Vec::new(),
                seen: Vec::new(),
            })
        }
        SyncMode::Backfill => {
            let (Some(start), Some(end)) = (request.window_start, request.window_end) else {
                return Err("a backfill needs window_start and window_end".to_string());
            };
            if start >= end {
                return Err(format!("backfill range is empty: {start} >= {end}"));
            }
            // this sync's windows, whatever sizes an earlier run cut them to
            let own = format!(
                "{}/",
                cursor_key(provider, account, &backfill_stream_prefix(&request.id))
            );
            let mine: Vec<&SourceCursor> = cursors
                .iter()
                .filter(|(k, _)| k.starts_with(&own))
                .map(|(_, c)| c)
                .collect();
            let cov = coverage((start, end), &mine);
            let windows = cov
                .partial
                .iter()
                .map(|p| WindowPlan {
                    stream: p.stream.clone(),
                    scan: p.scan,
                    start: p.window_start,
                    end: p.window_end,
                    token: p.next.clone(),
                    resumed_records: p.records,
                    resumed_pages: p.pages,
                    after_transaction_id: None,
                    prev_watermark: None,
                    max_pages: None,
                })
                .collect();
            let seen = cov
                .done
                .iter()
                .map(|d| WindowStats {
                    rows: d.records,
                    span_secs: (d.window_end - d.window_start)
                        .to_std()
                        .map(|x| x.as_secs_f64())
                        .unwrap_or(0.0),
                    full_page: None,
                    complete: true,
                    reached_end: true,
                })
                .collect();
            Ok(Plan {
                windows,
                already_done: cov.done.len() as u64,
                skipped: None,
                gaps: cov.gaps,
                seen,
            })
        }
    }
}

/// The reconcile window a full sync adds: for a provider scanned by call time (its
/// incremental lookback and the nightly full window miss changes made weeks later), the
/// older window `[end - reconcile_window_days, start of the full window)`, once every
/// `reconcile_every_days` (measured between the ends of the windows, the full sync's `end`
/// being now); an unfinished one resumes where the last run stopped.
fn reconcile_window(
    request: &SyncRequest,
    client: &DynClient,
    settings: &SyncSettings,
    cursors: &std::collections::HashMap<String, SourceCursor>,
    full_start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Option<WindowPlan> {
    if client.incremental_scan() != Scan::Created
        || settings.reconcile_window_days <= settings.full_window_days
    {
        return None;
    }
    let prev = cursors.get(&cursor_key(
        request.provider,
        &request.account_id,
        RECONCILE_STREAM,
    ));
    let window = |start: DateTime<Utc>, end: DateTime<Utc>, p: Option<&SourceCursor>| WindowPlan {
        stream: RECONCILE_STREAM.to_string(),
        scan: Scan::Created,
        start,
        end,
        token: p.and_then(|p| p.next.clone()),
        resumed_records: p.map(|p| p.records).unwrap_or(0),
        resumed_pages: p.map(|p| p.pages).unwrap_or(0),
        after_transaction_id: None,
        prev_watermark: None,
        max_pages: None,
    };
    match prev {
        Some(p) if !p.done => Some(window(p.window_start, p.window_end, Some(p))),
        Some(p)
            // the last reconcile window ended where that run's full window began
            if end - p.window_end
                < chrono::Duration::days(i64::from(settings.reconcile_every_days.max(1)))
                    + chrono::Duration::days(i64::from(settings.full_window_days)) =>
        {
            None
        }
        _ => {
            let start = end - chrono::Duration::days(i64::from(settings.reconcile_window_days));
            (start < full_start).then(|| window(start, full_start, None))
        }
    }
}

/// Shared state of one running sync.
struct RunState<'a> {
    request: &'a SyncRequest,
    client: DynClient,
    session: Arc<dyn SyncSession>,
    wire_format: WireFormat,
    tracker: Mutex<ProgressTracker>,
    progress: &'a dyn ProgressSink,
    source: RecordSource,
    cancel: Shutdown,
}

impl RunState<'_> {
    fn tracker(&self) -> std::sync::MutexGuard<'_, ProgressTracker> {
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn store_err(&self, source: StoreError) -> SyncError {
        SyncError::Store {
            provider: self.request.provider,
            account: self.request.account_id.clone(),
            source: Box::new(source),
        }
    }

    fn event_record(&self, event: &SyncEvent) -> Result<OutRecord, SyncError> {
        let value = encode_to_vec(event, self.wire_format).map_err(|e| {
            self.store_err(StoreError::Encode {
                what: "SyncEvent",
                scope: self.request.id.clone(),
                detail: e.to_string(),
            })
        })?;
        Ok(OutRecord {
            key: self.request.id.as_bytes().to_vec(),
            value,
            headers: Vec::new(),
        })
    }

    fn dlq_record(&self, raw: &RawValue, call_id: Option<String>, err: &MappingError) -> OutRecord {
        let key = format!(
            "{}:{}:{}",
            self.request.provider,
            self.request.account_id,
            call_id.unwrap_or_default()
        );
        let h = |k: &str, v: &str| (k.to_string(), v.as_bytes().to_vec());
        OutRecord {
            key: key.into_bytes(),
            value: raw.get().as_bytes().to_vec(),
            headers: vec![
                h(headers::ERROR_STAGE, "connector"),
                h(headers::ERROR_REASON, err.reason),
                h(headers::ERROR_FIELD, &err.field),
                h(headers::ERROR_MESSAGE, &err.to_string()),
                h(headers::SYNC_ID, &self.request.id),
                h(headers::PROVIDER, self.request.provider.as_str()),
                h(headers::ACCOUNT, &self.request.account_id),
            ],
        }
    }

    /// Maps a page: encoded records for `calls.raw`, and DLQ records.
    fn map_page(
        &self,
        records: &[Box<RawValue>],
        ctx: &MapContext,
    ) -> (Vec<OutRecord>, Vec<OutRecord>) {
        let mut out = Vec::with_capacity(records.len());
        let mut dlq = Vec::new();
        for raw in records {
            let mapped = self.client.map_record(raw, ctx).and_then(|rec| {
                encode_to_vec(&rec, self.wire_format)
                    .map(|value| (rec.key(), value))
                    .map_err(|e| ctx.error("$", "encode", e.to_string()))
            });
            match mapped {
                Ok((key, value)) => out.push(OutRecord {
                    key: key.into_string().into_bytes(),
                    value,
                    headers: Vec::new(),
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "record sent to the DLQ");
                    metrics::counter!(DLQ_TOTAL, "stage" => "connector", "reason" => e.reason)
                        .increment(1);
                    dlq.push(self.dlq_record(raw, self.client.call_id_hint(raw), &e));
                }
            }
        }
        (out, dlq)
    }

    async fn run_window(&self, w: WindowPlan) -> Result<WindowStats, SyncError> {
        let provider = self.request.provider;
        let account = &self.request.account_id;
        let mut stats = WindowStats {
            span_secs: (w.end - w.start)
                .to_std()
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            complete: w.token.is_none() && w.resumed_pages == 0,
            ..WindowStats::default()
        };
        let mut token = w.token.clone();
        let mut records = w.resumed_records;
        let mut pages = w.resumed_pages;
        let mut pages_this_run: u64 = 0;
        let mut after = w.after_transaction_id.clone();
        loop {
            if self.cancel.is_triggered() {
                return Err(SyncError::Cancelled {
                    sync_id: self.request.id.clone(),
                    provider,
                    account: account.clone(),
                });
            }
            let req = PageRequest {
                scan: w.scan,
                start: w.start,
                end: w.end,
                token: token.clone(),
            };
            let page = self.client.fetch_page(&req).await?;
            let mut ctx = self.client.map_context(self.source);
            ctx.observed_at = Utc::now();
            let (out, dlq) = self.map_page(&page.records, &ctx);
            if w.scan == Scan::Transactions {
                if let Some(last) = page
                    .records
                    .last()
                    .and_then(|r| crate::providers::peek_field(r, &["transaction_id"]))
                {
                    after = Some(last);
                }
            }
            records += out.len() as u64;
            pages += 1;
            pages_this_run += 1;
            let done = page.next.is_none();
            stats.rows += (out.len() + dlq.len()) as u64;
            if !done {
                stats.full_page = stats.full_page.max(Some(page.fetched as u64));
            }
            let (n_out, n_dlq) = (out.len() as u64, dlq.len() as u64);
            let event_due = {
                let mut t = self.tracker();
                let due = t.add_page(n_out, n_dlq);
                if done {
                    t.windows_done += 1;
                }
                due
            };
            let mut events = Vec::new();
            if event_due {
                let ev = self
                    .tracker()
                    .event(self.request, SyncEventKind::Progress, None);
                events.push(self.event_record(&ev)?);
            }
            let cursor = SourceCursor {
                v: 1,
                provider,
                account: account.clone(),
                stream: w.stream.clone(),
                sync_id: self.request.id.clone(),
                mode: self.request.mode,
                scan: w.scan,
                window_start: w.start,
                window_end: w.end,
                next: page.next.clone(),
                done,
                watermark: if done && self.request.mode == SyncMode::Incremental {
                    Some(w.end)
                } else {
                    w.prev_watermark
                },
                after_transaction_id: after.clone(),
                records,
                pages,
                updated_at: Utc::now(),
            };
            self.session
                .commit(CommitBatch {
                    records: out,
                    dlq,
                    events,
                    cursor: Some(cursor),
                })
                .await
                .map_err(|e| self.store_err(e))?;
            metrics::counter!(RECORDS_TOTAL, "stage" => "connector", "outcome" => "emitted")
                .increment(n_out);
            if n_dlq > 0 {
                metrics::counter!(RECORDS_TOTAL, "stage" => "connector", "outcome" => "dlq")
                    .increment(n_dlq);
            }
            let snapshot = self
                .tracker()
                .snapshot(&self.request.id, SyncEventKind::Progress, None);
            self.progress.on_progress(&snapshot);
            if done {
                stats.reached_end = true;
                return Ok(stats);
            }
            if w.max_pages.is_some_and(|max| pages_this_run >= max) {
                // this run's share is used: the window resumes at its cursor next time
                tracing::info!(stream = %w.stream, pages = pages_this_run, "window paused at its request cap");
                stats.complete = false;
                return Ok(stats);
            }
            token = page.next;
        }
    }
}

/// Runs one sync to its end.
///
/// - `incremental`: from the stored cursor of stream `calls` minus `lookback_secs` to now
///   (Retreaver scans `updated_at` newest first; Invoca follows its transaction-id cursor and
///   is skipped when polled more often than its minimum interval); a retried sync with the
///   same id resumes its unfinished window at the stored page.
/// - `full`: the trailing `full_window_days` (or the request's window), resumable by sync id.
/// - `backfill`: the request's `[window_start, window_end)` in windows read
///   `backfill_concurrency` at a time (all inside the account's rate limit). Windows are cut
///   as the run advances: the first `backfill_window_secs` long, later ones sized from the
///   call density seen to hold `backfill_pages_per_window` full pages (see
///   [`crate::backfill`]). Windows done by an earlier run of the same sync id are skipped, a
///   partial one resumes at its stored page, and new windows cover only the rest.
///
/// Every page's records, its DLQ records, its cursor and any progress event are committed
/// in one transaction; `started`, `completed` and `failed` events are written too, and
/// `progress` is called after every page. A 401/403 fails the sync at once.
pub async fn run_sync(
    request: &SyncRequest,
    deps: &SyncDeps,
    progress: impl ProgressSink,
) -> Result<SyncOutcome, SyncError> {
    let span = tracing::info_span!("sync", sync_id = %request.id, provider = %request.provider, account = %request.account_id, mode = %request.mode);
    run_sync_inner(request, deps, &progress)
        .instrument(span)
        .await
}

async fn run_sync_inner(
    request: &SyncRequest,
    deps: &SyncDeps,
    progress: &dyn ProgressSink,
) -> Result<SyncOutcome, SyncError> {
    let started = Instant::now();
    let handle = deps
        .connectors
        .get(request.provider, &request.account_id)
        .ok_or_else(|| SyncError::UnknownAccount {
            provider: request.provider,
            account: request.account_id.clone(),
        })?;
    let client = handle.client.clone();
    let store_err = |source: StoreError| SyncError::Store {
        provider: request.provider,
        account: request.account_id.clone(),
        source: Box::new(source),
    };
    let scope = format!(
        "{}-{}-{}",
        request.provider, request.account_id, request.mode
    );
    // opening fences an earlier (killed) run of this scope before we read its cursors
    let session = deps.store.open(&scope).await.map_err(store_err)?;
    let prefix = format!("{}/{}/", request.provider, request.account_id);
    let cursors = session.cursors(&prefix).await.map_err(store_err)?;
    let plan = plan(
        request,
        &client,
        &deps.settings,
        &cursors,
        handle.min_incremental_interval,
        Utc::now(),
    )
    .map_err(|detail| SyncError::InvalidRequest {
        sync_id: request.id.clone(),
        provider: request.provider,
        account: request.account_id.clone(),
        detail,
    })?;
    let requests_before = client.http().stats.requests();
    let limited_before = client.http().stats.rate_limited();
    // a backfill's new windows are counted as they are cut (see WindowPlanner)
    let windows_total = plan.windows.len() as u64 + plan.already_done;
    let windows_run = std::sync::atomic::AtomicU64::new(0);
    let reconcile: Mutex<Option<ReconcileReport>> = Mutex::new(None);
    let mut tracker = ProgressTracker::new(deps.settings.progress_every, windows_total);
    tracker.windows_done = plan.already_done;
    let state = RunState {
        request,
        client: client.clone(),
        session: session.clone(),
        wire_format: deps.wire_format,
        tracker: Mutex::new(tracker),
        progress,
        source: if request.mode == SyncMode::Backfill {
            RecordSource::Backfill
        } else {
            RecordSource::Poll
        },
        cancel: deps.shutdown.child(),
    };
    let outcome = |state: &RunState<'_>, skipped: Option<String>| {
        let t = state.tracker();
        SyncOutcome {
            sync_id: request.id.clone(),
            provider: request.provider,
            account: request.account_id.clone(),
            mode: request.mode,
            records: t.records,
            dlq: t.dlq,
            pages: t.pages,
            windows_run: windows_run.load(std::sync::atomic::Ordering::Relaxed),
            windows_already_done: plan.already_done,
            requests: client.http().stats.requests() - requests_before,
            rate_limited: client.http().stats.rate_limited() - limited_before,
            elapsed: started.elapsed(),
            skipped,
            reconcile: reconcile.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    };
    if let Some(reason) = &plan.skipped {
        tracing::info!(reason = %reason, "sync skipped");
        return Ok(outcome(&state, Some(reason.clone())));
    }
    let ev = state.tracker().event(request, SyncEventKind::Started, None);
    session
        .commit(CommitBatch {
            events: vec![state.event_record(&ev)?],
            ..CommitBatch::default()
        })
        .await
        .map_err(store_err)?;
    progress.on_progress(
        &state
            .tracker()
            .snapshot(&request.id, SyncEventKind::Started, None),
    );
    tracing::info!(
        windows = plan.windows.len(),
        already_done = plan.already_done,
        "sync started"
    );

    let concurrency = if request.mode == SyncMode::Backfill {
        deps.settings.backfill_concurrency.max(1)
    } else {
        1
    };
    // backfill windows are cut as the run advances, sized from what earlier ones showed
    let mut planner = WindowPlanner::new(
        plan.gaps.clone(),
        Duration::from_secs(deps.settings.backfill_window_secs),
        deps.settings.backfill_pages_per_window,
        concurrency,
    )
    .with_min_window(client.min_backfill_window());
    for seen in &plan.seen {
        planner.observe(*seen);
    }
    let mut queued: std::collections::VecDeque<WindowPlan> = plan.windows.clone().into();
    let mut running = futures::stream::FuturesUnordered::new();
    let mut failure: Option<SyncError> = None;
    loop {
        while failure.is_none() && running.len() < concurrency {
            let next = queued.pop_front().or_else(|| {
                planner.next_window().map(|(start, end)| WindowPlan {
                    stream: backfill_stream(&request.id, start),
                    scan: Scan::Created,
                    start,
                    end,
                    token: None,
                    resumed_records: 0,
                    resumed_pages: 0,
                    after_transaction_id: None,
                    prev_watermark: None,
                    max_pages: None,
                })
            });
            let Some(mut w) = next else { break };
            if w.stream == RECONCILE_STREAM {
                // its cost, estimated from the full window just read, before it runs
                let span = (w.end - w.start)
                    .to_std()
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0);
                let estimated = planner.estimate_pages(span);
                let cap = (deps.settings.reconcile_max_requests > 0)
                    .then_some(deps.settings.reconcile_max_requests);
                let rate = client.http().limiter.current_per_minute();
                tracing::info!(
                    window_start = %w.start,
                    window_end = %w.end,
                    estimated_requests = ?estimated,
                    estimated_minutes = ?estimated.map(|n| (n as f64 / rate.max(0.01)).ceil()),
                    cap = ?cap,
                    "reconcile: re-reading the older window"
                );
                w.max_pages = cap;
                *reconcile.lock().unwrap_or_else(|p| p.into_inner()) = Some(ReconcileReport {
                    window_start: w.start,
                    window_end: w.end,
                    estimated_requests: estimated,
                    max_requests: cap,
                    finished: false,
                });
            }
            let span =
                tracing::debug_span!("window", stream = %w.stream, start = %w.start, end = %w.end);
            let stream = w.stream.clone();
            let window = state.run_window(w).instrument(span);
            running.push(async move { (stream, window.await) });
            windows_run.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut t = state.tracker();
            t.windows_total = plan.already_done
                + windows_run.load(std::sync::atomic::Ordering::Relaxed)
                + queued.len() as u64
                + planner.remaining_windows();
        }
        match running.next().await {
            None => break,
            Some((stream, Ok(stats))) => {
                if stream == RECONCILE_STREAM {
                    if let Some(r) = reconcile.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                        r.finished = stats.reached_end;
                    }
                }
                planner.observe(stats)
            }
            Some((_, Err(e))) => {
                if failure.is_none() {
                    // stop the other windows at their next page
                    state.cancel.trigger();
                    failure = Some(e);
                }
            }
        }
    }
    drop(running);
    match failure {
        None => {
            let ev = state
                .tracker()
                .event(request, SyncEventKind::Completed, None);
            session
                .commit(CommitBatch {
                    events: vec![state.event_record(&ev)?],
                    ..CommitBatch::default()
                })
                .await
                .map_err(store_err)?;
            progress.on_progress(&state.tracker().snapshot(
                &request.id,
                SyncEventKind::Completed,
                None,
            ));
            let out = outcome(&state, None);
            tracing::info!(
                records = out.records,
                dlq = out.dlq,
                pages = out.pages,
                requests = out.requests,
                "sync completed"
            );
            Ok(out)
        }
        Some(err) => {
            let message = err.to_string();
            tracing::error!(error = %message, "sync failed");
            let ev = state
                .tracker()
                .event(request, SyncEventKind::Failed, Some(message.clone()));
            if let Ok(rec) = state.event_record(&ev) {
                if let Err(e) = session
                    .commit(CommitBatch {
                        events: vec![rec],
                        ..CommitBatch::default()
                    })
                    .await
                {
                    tracing::warn!(error = %e, "could not write the failed event");
                }
            }
            progress.on_progress(&state.tracker().snapshot(
                &request.id,
                SyncEventKind::Failed,
                Some(message),
            ));
            Err(err)
        }
    }
}
