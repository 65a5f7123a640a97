//! Backfill windows sized so that pages are full.
//!
//! A provider pages each query separately, so every window ends in a partly filled page:
//! with windows of a fixed length over sparse data (two pages a window) a third of the
//! requests carry half a page, and records/min stays far below requests/min × page size.
//! The [`WindowPlanner`] therefore cuts windows as the backfill advances: the first ones are
//! `backfill_window_secs` long; once windows have been read, later ones are sized from the
//! observed call density to hold about `backfill_pages_per_window` full pages, so the
//! partial last page costs about half a page in that many. Near the end the remaining range
//! is spread over the concurrent windows (never below a quarter of the target), so a slow
//! provider still sees `backfill_concurrency` requests in flight.
//!
//! Resumability does not depend on the sizes chosen: every window's cursor carries its own
//! `[window_start, window_end)`. A restarted backfill resumes the windows that have cursors
//! ([`coverage`]) and plans new windows only over the gaps between them, which hold no
//! committed record (a window's records are committed together with its cursor).

use std::collections::VecDeque;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::cursor::SourceCursor;

/// Never cut a window shorter than this.
pub(crate) const MIN_WINDOW: Duration = Duration::from_secs(60);
/// A window is never more than this many times longer than the one before it (a sparse
/// sample must not produce one window over years of dense data).
const MAX_GROWTH: f64 = 8.0;

/// A half-open time range `[start, end)`.
pub(crate) type Range = (DateTime<Utc>, DateTime<Utc>);

/// What one fully read window showed about the data.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct WindowStats {
    /// Rows of the window (records and DLQ records), counted over the whole window.
    pub rows: u64,
    /// Length of the window.
    pub span_secs: f64,
    /// The largest page seen that had a following page (a full page): the page size.
    pub full_page: Option<u64>,
    /// The window was read from its first page in this run (its `rows` are the window's).
    pub complete: bool,
    /// The window was read to its last page.
    pub reached_end: bool,
}

/// The covered and uncovered parts of a backfill range, from the cursors of its windows.
#[derive(Debug, Default)]
pub(crate) struct Coverage<'a> {
    /// Windows fully read earlier.
    pub done: Vec<&'a SourceCursor>,
    /// Windows with committed pages that are not done: resume them at their cursor.
    pub partial: Vec<&'a SourceCursor>,
    /// Parts of the range no window covers yet.
    pub gaps: Vec<Range>,
}

/// Splits `range` by the cursors of its windows (any order; windows may reach outside it).
pub(crate) fn coverage<'a>(range: Range, windows: &[&'a SourceCursor]) -> Coverage<'a> {
    let mut sorted: Vec<&SourceCursor> = windows.to_vec();
    sorted.sort_by_key(|c| (c.window_start, c.window_end));
    let mut out = Coverage::default();
    let mut at = range.0;
    for c in sorted {
        if c.window_start > at && at < range.1 {
            out.gaps.push((at, c.window_start.min(range.1)));
        }
        at = at.max(c.window_end);
        if c.done {
            out.done.push(c);
        } else {
            out.partial.push(c);
        }
    }
    if at < range.1 {
        out.gaps.push((at, range.1));
    }
    out
}

/// Cuts new windows from the gaps of a backfill, sized from what earlier windows showed.
#[derive(Debug)]
pub(crate) struct WindowPlanner {
    gaps: VecDeque<Range>,
    /// The length of the next window when nothing is known yet; afterwards the last one cut.
    span_secs: f64,
    target_pages: f64,
    concurrency: f64,
    page_size: Option<u64>,
    /// Rows and seconds of every window read in full.
    rows: u64,
    secs: f64,
    /// No window is cut shorter (the provider's [`crate::ProviderClient::min_backfill_window`]).
    min_secs: f64,
}

fn secs_between(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    (b - a).to_std().map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl WindowPlanner {
    pub fn new(gaps: Vec<Range>, initial: Duration, target_pages: u64, concurrency: usize) -> Self {
        WindowPlanner {
            gaps: gaps.into_iter().filter(|(s, e)| s < e).collect(),
            span_secs: initial.max(MIN_WINDOW).as_secs_f64(),
            target_pages: target_pages.max(1) as f64,
            concurrency: concurrency.max(1) as f64,
            page_size: None,
            rows: 0,
            secs: 0.0,
            min_secs: MIN_WINDOW.as_secs_f64(),
        }
    }

    /// No window shorter than `min` (and the first ones at least that long).
    pub fn with_min_window(mut self, min: Duration) -> Self {
        self.min_secs = min.max(MIN_WINDOW).as_secs_f64();
        self.span_secs = self.span_secs.max(self.min_secs);
        self
    }

    /// Learns from a window read to its end (or from a page size seen).
    pub fn observe(&mut self, stats: WindowStats) {
        if let Some(p) = stats.full_page.filter(|p| *p > 0) {
            self.page_size = Some(self.page_size.map_or(p, |q| q.max(p)));
        }
        if stats.complete && stats.span_secs > 0.0 {
            self.rows += stats.rows;
            self.secs += stats.span_secs;
        }
    }

    /// The length a new window should have, before the end-of-range split.
    fn target_span(&self) -> f64 {
        let min = self.min_secs;
        if self.secs <= 0.0 {
            return self.span_secs;
        }
        let wanted = match self.page_size {
            // rows per second seen so far → the length holding `target_pages` full pages
            Some(page) if self.rows > 0 => {
                let density = self.rows as f64 / self.secs;
                self.target_pages * page as f64 / density
            }
            // no window needed a second page yet: every one fitted in one page; grow
            _ => self.span_secs * MAX_GROWTH,
        };
        wanted.clamp(min, (self.span_secs * MAX_GROWTH).max(min))
    }

    /// Pages needed to read `span_secs` more at the call density and page size seen so far
    /// (`None` before any window was read).
    pub fn estimate_pages(&self, span_secs: f64) -> Option<u64> {
        if self.secs <= 0.0 {
            return None;
        }
        let rows = self.rows as f64 / self.secs * span_secs.max(0.0);
        let pages = match self.page_size {
            Some(page) if page > 0 => (rows / page as f64).ceil(),
            // every window so far fitted one page: assume the same page holds this one
            _ => 1.0,
        };
        Some((pages as u64).max(1))
    }

    /// Seconds of the range that no window has been cut for yet.
    pub fn remaining_secs(&self) -> f64 {
        self.gaps.iter().map(|(s, e)| secs_between(*s, *e)).sum()
    }

    /// Windows still to cut, at the current size (for the progress estimate).
    pub fn remaining_windows(&self) -> u64 {
        let span = self.target_span().max(1.0);
        self.gaps
            .iter()
            .map(|(s, e)| (secs_between(*s, *e) / span).ceil() as u64)
            .sum()
    }

    /// The next window to read, or `None` when the range is all handed out.
    pub fn next_window(&mut self) -> Option<Range> {
        let target = self.target_span();
        // near the end, spread what is left over the concurrent windows
        let remaining = self.remaining_secs();
        let span = (remaining / self.concurrency).clamp(target / 4.0, target);
        let span = span.max(self.min_secs);
        let (start, end) = self.gaps.pop_front()?;
        let step = chrono::Duration::microseconds((span * 1e6) as i64);
        let cut = start + step;
        // a sliver shorter than a minimum window goes with this one
        let window_end = if cut >= end || secs_between(cut, end) < self.min_secs {
            end
        } else {
            self.gaps.push_front((cut, end));
            cut
        };
        self.span_secs = secs_between(start, window_end).max(self.min_secs);
        Some((start, window_end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::Scan;
    use callsync_schemas::{Provider, SyncMode};
    use chrono::TimeZone;

    fn t(h: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::hours(h)
    }

    fn cursor(start: i64, end: i64, done: bool) -> SourceCursor {
        SourceCursor {
            v: 1,
            provider: Provider::Ringba,
            account: "a".into(),
            stream: format!("backfill/s/{start}"),
            sync_id: "s".into(),
            mode: SyncMode::Backfill,
            scan: Scan::Created,
            window_start: t(start),
            window_end: t(end),
            next: None,
            done,
            watermark: None,
            after_transaction_id: None,
            records: 0,
            pages: 1,
            updated_at: t(0),
        }
    }

    #[test]
    fn coverage_finds_the_gaps_between_window_cursors() {
        let (a, b, c) = (
            cursor(10, 20, true),
            cursor(0, 5, false),
            cursor(30, 40, true),
        );
        let cov = coverage((t(0), t(48)), &[&a, &b, &c]);
        assert_eq!(
            cov.gaps,
            vec![(t(5), t(10)), (t(20), t(30)), (t(40), t(48))]
        );
        assert_eq!(cov.done.len(), 2);
        assert_eq!(cov.partial.len(), 1);
        let none = coverage((t(0), t(48)), &[]);
        assert_eq!(none.gaps, vec![(t(0), t(48))]);
        let whole = cursor(0, 10, true);
        let all = coverage((t(0), t(10)), &[&whole]);
        assert!(all.gaps.is_empty());
    }

    #[test]
    fn windows_tile_the_gaps_exactly() {
        let gaps = vec![(t(0), t(100)), (t(200), t(203))];
        let mut p = WindowPlanner::new(gaps, Duration::from_secs(7 * 3600), 100, 4);
        let mut cut = Vec::new();
        while let Some(w) = p.next_window() {
            cut.push(w);
        }
        assert_eq!(cut.first().unwrap().0, t(0));
        assert_eq!(cut.last().unwrap().1, t(203));
        for pair in cut.windows(2) {
            assert!(pair[0].0 < pair[0].1);
            assert!(pair[0].1 == pair[1].0 || (pair[0].1 == t(100) && pair[1].0 == t(200)));
        }
    }

    #[test]
    fn windows_grow_to_hold_the_target_pages_once_the_density_is_known() {
        // 100 calls an hour, pages of 100: 100 pages is 100 hours
        let mut p = WindowPlanner::new(vec![(t(0), t(10_000))], Duration::from_secs(3600), 100, 4);
        let first = p.next_window().unwrap();
        assert_eq!(first, (t(0), t(1)));
        p.observe(WindowStats {
            rows: 100,
            span_secs: 3600.0,
            full_page: None,
            complete: true,
            reached_end: true,
        });
        // one page only so far: the page size is unknown, grow by the cap
        let second = p.next_window().unwrap();
        assert_eq!(second.1 - second.0, chrono::Duration::hours(8));
        p.observe(WindowStats {
            rows: 800,
            span_secs: 8.0 * 3600.0,
            full_page: Some(100),
            complete: true,
            reached_end: true,
        });
        let third = p.next_window().unwrap();
        assert_eq!(
            third.1 - third.0,
            chrono::Duration::hours(64),
            "capped growth"
        );
        p.observe(WindowStats::default());
        let fourth = p.next_window().unwrap();
        assert_eq!(fourth.1 - fourth.0, chrono::Duration::hours(100));
    }

    #[test]
    fn the_end_of_the_range_is_spread_over_the_concurrent_windows() {
        let mut p = WindowPlanner::new(
            vec![(t(0), t(100))],
            Duration::from_secs(100 * 3600),
            100,
            4,
        );
        p.observe(WindowStats {
            rows: 10_000,
            span_secs: 100.0 * 3600.0,
            full_page: Some(100),
            complete: true,
            reached_end: true,
        });
        // the target is 100 h, the range 100 h: four windows of 25 h
        let w = p.next_window().unwrap();
        assert_eq!(w, (t(0), t(25)));
    }
}
