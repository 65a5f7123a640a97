//! The demo's closing table, from the stages' reports and the process's Prometheus metrics.

use std::io::Write;
use std::time::Duration;

use callsync_runtime::metrics::{DLQ_TOTAL, END_TO_END_SECONDS, RECORDS_TOTAL};

use super::DriveReport;
use crate::roles::RolesReport;

/// What the demo did, end to end.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DemoSummary {
    pub accounts: usize,
    /// Records the connectors fetched and wrote to `calls.raw`.
    pub fetched: u64,
    pub webhooks_accepted: u64,
    pub webhooks_rejected: u64,
    /// Records the processor dropped as duplicates (same version, or unchanged content).
    pub duplicates_dropped: u64,
    /// Records sent to `calls.dlq` by any stage.
    pub dlq: u64,
    /// Rows the sink upserted.
    pub upserted: u64,
    /// Backfill rate, records per second.
    pub backfill_rate: f64,
    /// p99 of observed_at -> database commit, seconds (a histogram bucket's upper bound).
    pub p99_latency_secs: Option<f64>,
    pub table_rows: u64,
    pub truth_calls: u64,
    pub matches_truth: bool,
    pub elapsed_secs: f64,
}

impl DemoSummary {
    pub fn collect(drive: &DriveReport, reports: Option<&RolesReport>, elapsed: Duration) -> Self {
        let text = callsync_runtime::metrics::prometheus().render();
        let metric = |name: &str, labels: &[(&str, &str)]| sum_metric(&text, name, labels);
        let processor = reports.and_then(|r| r.processor.as_ref());
        let sink = reports.and_then(|r| r.sink.as_ref());
        let duplicates = match processor {
            Some(p) => p.duplicates_dropped(),
            None => {
                (metric(
                    RECORDS_TOTAL,
                    &[("stage", "processor"), ("outcome", "duplicate")],
                ) + metric(
                    RECORDS_TOTAL,
                    &[("stage", "processor"), ("outcome", "unchanged")],
                )) as u64
            }
        };
        let upserted = match sink {
            Some(s) => s.rows_written,
            None => metric(RECORDS_TOTAL, &[("stage", "sink"), ("outcome", "written")]) as u64,
        };
        DemoSummary {
            accounts: drive.accounts,
            fetched: metric(
                RECORDS_TOTAL,
                &[("stage", "connector"), ("outcome", "emitted")],
            ) as u64,
            webhooks_accepted: drive.webhooks_accepted + drive.webhooks_duplicates,
            webhooks_rejected: drive.webhooks_rejected,
            duplicates_dropped: duplicates,
            dlq: metric(DLQ_TOTAL, &[]) as u64,
            upserted,
            backfill_rate: drive.backfill_records as f64 / drive.backfill_secs.max(0.001),
            p99_latency_secs: histogram_quantile(&text, END_TO_END_SECONDS, 0.99),
            table_rows: drive.table_rows,
            truth_calls: drive.truth_calls,
            matches_truth: drive.mismatches.is_empty(),
            elapsed_secs: elapsed.as_secs_f64(),
        }
    }

    pub fn write_table(&self, out: &mut impl Write) -> std::io::Result<()> {
        let p99 = match self.p99_latency_secs {
            Some(s) if s.is_finite() => format!("<= {:.0} ms", s * 1000.0),
            Some(_) => "> 10 s".to_string(),
            None => "n/a".to_string(),
        };
        let rows: Vec<(&str, String)> = vec![
            ("provider accounts", self.accounts.to_string()),
            (
                "fetched (connectors -> calls.raw)",
                self.fetched.to_string(),
            ),
            (
                "webhooks accepted / rejected",
                format!("{} / {}", self.webhooks_accepted, self.webhooks_rejected),
            ),
            (
                "duplicates dropped (processor)",
                self.duplicates_dropped.to_string(),
            ),
            ("dead-lettered (calls.dlq)", self.dlq.to_string()),
            ("upserted (sink)", self.upserted.to_string()),
            ("rows in the table", self.table_rows.to_string()),
            (
                "backfill rate",
                format!("{:.0} records/s", self.backfill_rate),
            ),
            ("p99 latency (observed -> committed)", p99),
            (
                "equals the ground truth",
                if self.matches_truth {
                    format!("yes ({} calls)", self.truth_calls)
                } else {
                    "NO".to_string()
                },
            ),
            ("elapsed", format!("{:.1} s", self.elapsed_secs)),
        ];
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let value_width = rows.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
        let rule = format!("+-{}-+-{}-+", "-".repeat(width), "-".repeat(value_width));
        writeln!(out, "\nsummary")?;
        writeln!(out, "{rule}")?;
        for (k, v) in rows {
            writeln!(out, "| {k:<width$} | {v:>value_width$} |")?;
        }
        writeln!(out, "{rule}")?;
        Ok(())
    }
}

/// Parses `name{labels} value` lines of Prometheus text; sums the samples whose labels
/// include all of `labels`.
pub fn sum_metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")));
            if !all {
                return None;
            }
            value.parse::<f64>().ok()
        })
        .sum()
}

/// The upper bound of the bucket holding quantile `q` of histogram `name` (all label sets
/// summed); `None` without samples, infinity when it is past the last finite bucket.
pub fn histogram_quantile(text: &str, name: &str, q: f64) -> Option<f64> {
    let bucket_name = format!("{name}_bucket");
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for line in text.lines().filter(|l| l.starts_with(&bucket_name)) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some(le) = series
            .split("le=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
        else {
            continue;
        };
        let bound = if le == "+Inf" {
            f64::INFINITY
        } else {
            match le.parse::<f64>() {
                Ok(b) => b,
                Err(_) => continue,
            }
        };
        let Ok(count) = value.parse::<f64>() else {
            continue;
        };
        match buckets.iter_mut().find(|(b, _)| *b == bound) {
            Some(entry) => entry.1 += count,
            None => buckets.push((bound, count)),
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map(|(_, c)| *c)?;
    if total <= 0.0 {
        return None;
    }
    buckets
        .iter()
        .find(|(_, c)| *c >= q * total)
        .map(|(b, _)| *b)
}

/// How the calls table differs from the simulator's ground truth: one line per call that is
/// missing, held twice, at another version or revenue, or not in the truth (calls in
/// `extra_keys`, e.g. taken from webhooks, are expected without a truth record).
pub fn truth_mismatches(
    rows: &[callsync_sinks::StoredCall],
    truth: &std::collections::BTreeMap<String, callsync_simulator::TruthRecord>,
    extra_keys: &std::collections::HashSet<String>,
) -> Vec<String> {
    let mut mismatches = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for row in rows {
        let r = &row.record;
        let key = r.key().into_string();
        if !seen.insert(key.clone()) {
            mismatches.push(format!("{key}: more than one row"));
        }
        match truth.get(&key) {
            Some(t) => {
                if t.version.is_some_and(|v| v != r.version) {
                    mismatches.push(format!(
                        "{key}: version {} != truth {:?}",
                        r.version, t.version
                    ));
                } else if t.revenue != r.revenue {
                    mismatches.push(format!(
                        "{key}: revenue {:?} != truth {:?}",
                        r.revenue, t.revenue
                    ));
                }
            }
            None if extra_keys.contains(&key) => {}
            None => mismatches.push(format!("{key}: in the table, not in the ground truth")),
        }
    }
    for key in truth.keys().chain(extra_keys.iter()) {
        if !seen.contains(key) {
            mismatches.push(format!("{key}: missing from the table"));
        }
    }
    mismatches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_and_quantiles_from_prometheus_text() {
        let text = "# TYPE x counter\nx{stage=\"a\",outcome=\"ok\"} 3\nx{stage=\"b\",outcome=\"ok\"} 4\n\
                    h_bucket{le=\"0.1\"} 90\nh_bucket{le=\"0.5\"} 99\nh_bucket{le=\"1\"} 100\nh_bucket{le=\"+Inf\"} 100\n";
        assert_eq!(sum_metric(text, "x", &[("outcome", "ok")]), 7.0);
        assert_eq!(sum_metric(text, "x", &[("stage", "b")]), 4.0);
        assert_eq!(histogram_quantile(text, "h", 0.99), Some(0.5));
        assert_eq!(histogram_quantile(text, "h", 0.5), Some(0.1));
        assert_eq!(histogram_quantile(text, "nope", 0.5), None);
    }
}
