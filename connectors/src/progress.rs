//! Progress of a sync: a [`ProgressSink`] callback for the CLI (the lead wires indicatif to
//! it) and the counters behind the `SyncEvent`s written to `callsync.sync-events`.

use std::time::Instant;

use callsync_schemas::{SyncEvent, SyncEventKind, SyncRequest};
use chrono::Utc;

/// A snapshot of a running sync.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub sync_id: String,
    pub kind: SyncEventKind,
    /// Records emitted so far (DLQ'd ones excluded).
    pub records: u64,
    pub dlq: u64,
    pub pages: u64,
    /// Backfill windows done / total (1/1 for incremental and full).
    pub windows_done: u64,
    pub windows_total: u64,
    pub rate_per_sec: f64,
    pub eta_secs: Option<u64>,
    pub error: Option<String>,
}

/// Receives progress as a sync runs. Called from the sync's tasks: keep it cheap.
pub trait ProgressSink: Send + Sync {
    fn on_progress(&self, progress: &Progress);
}

/// Ignores progress.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn on_progress(&self, _: &Progress) {}
}

impl<F: Fn(&Progress) + Send + Sync> ProgressSink for F {
    fn on_progress(&self, progress: &Progress) {
        self(progress)
    }
}

/// Counts a sync's records and pages and estimates its rate and ETA.
#[derive(Debug)]
pub struct ProgressTracker {
    started: Instant,
    pub records: u64,
    pub dlq: u64,
    pub pages: u64,
    pub windows_done: u64,
    pub windows_total: u64,
    /// Records emitted by earlier attempts of a resumed sync (for the ETA's denominator).
    pub resumed_records: u64,
    next_event_at: u64,
    every: u64,
}

impl ProgressTracker {
    pub fn new(every: u64, windows_total: u64) -> Self {
        ProgressTracker {
            started: Instant::now(),
            records: 0,
            dlq: 0,
            pages: 0,
            windows_done: 0,
            windows_total,
            resumed_records: 0,
            next_event_at: every.max(1),
            every: every.max(1),
        }
    }

    pub fn rate(&self) -> f64 {
        let secs = self.started.elapsed().as_secs_f64();
        if secs > 0.0 {
            self.records as f64 / secs
        } else {
            0.0
        }
    }

    /// ETA from the share of windows done (the only denominator providers give us).
    pub fn eta_secs(&self) -> Option<u64> {
        if self.windows_total == 0
            || self.windows_done == 0
            || self.windows_done >= self.windows_total
        {
            return None;
        }
        let elapsed = self.started.elapsed().as_secs_f64();
        let per_window = elapsed / self.windows_done as f64;
        Some((per_window * (self.windows_total - self.windows_done) as f64) as u64)
    }

    /// Adds a page; `true` when a progress event is due (every `every` records).
    pub fn add_page(&mut self, records: u64, dlq: u64) -> bool {
        self.records += records;
        self.dlq += dlq;
        self.pages += 1;
        if self.records >= self.next_event_at {
            while self.next_event_at <= self.records {
                self.next_event_at += self.every;
            }
            true
        } else {
            false
        }
    }

    pub fn snapshot(&self, sync_id: &str, kind: SyncEventKind, error: Option<String>) -> Progress {
        Progress {
            sync_id: sync_id.to_string(),
            kind,
            records: self.records,
            dlq: self.dlq,
            pages: self.pages,
            windows_done: self.windows_done,
            windows_total: self.windows_total,
            rate_per_sec: self.rate(),
            eta_secs: self.eta_secs(),
            error,
        }
    }

    pub fn event(
        &self,
        request: &SyncRequest,
        kind: SyncEventKind,
        error: Option<String>,
    ) -> SyncEvent {
        SyncEvent {
            sync_id: request.id.clone(),
            provider: request.provider,
            account_id: request.account_id.clone(),
            mode: request.mode,
            kind,
            records: i64::try_from(self.records).unwrap_or(i64::MAX),
            pages: i64::try_from(self.pages).unwrap_or(i64::MAX),
            rate_per_sec: self.rate(),
            eta_secs: self
                .eta_secs()
                .map(|e| i64::try_from(e).unwrap_or(i64::MAX)),
            error,
            at: Utc::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_every_thousand_records() {
        let mut t = ProgressTracker::new(1000, 4);
        assert!(!t.add_page(999, 0));
        assert!(t.add_page(1, 0));
        assert!(!t.add_page(500, 0));
        assert!(
            t.add_page(2600, 0),
            "crossing several boundaries at once is one event"
        );
        assert!(!t.add_page(800, 0));
        assert!(t.add_page(100, 0));
    }
}
