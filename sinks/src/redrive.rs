//! Redriving the sink's dead letters: each pending one is decoded again and its row upserted
//! (the version guard still applies: a newer version already in the table stays) in the same
//! transaction that marks it redriven, so it lands exactly once however often, and from how
//! many places at once, `callsync dlq redrive` runs. One the database still refuses stays
//! pending with the new error (`last_redrive_error`).

use std::collections::BTreeMap;

use crate::batch::{RowKey, SinkBatch, SinkRow, SourceRecord};
use crate::dlq::REASON_UNDECODABLE;
use crate::sink::CallDecoder;
use crate::store::{
    CallStore, DeadLetterId, DeadLetterQuery, RedriveMarks, RedriveOutcome, StoreError,
    StoredDeadLetter,
};

/// What to redrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedriveOptions {
    /// Only dead letters of this reason code.
    pub reason: Option<String>,
    /// Stop after this many dead letters.
    pub limit: Option<u64>,
    /// Dead letters per transaction.
    pub batch_size: usize,
    /// Count what would be redriven, change nothing.
    pub dry_run: bool,
}

/// What a redrive of the sink's dead letters did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetterRedriveReport {
    /// Pending dead letters read.
    pub read: u64,
    /// Marked redriven (their rows applied), per reason code.
    pub redriven_by_reason: BTreeMap<String, u64>,
    /// Rows written by the redrive (the others were older than the table's).
    pub rows_written: u64,
    pub rows_stale: u64,
    /// Still refused (or still undecodable): left pending with the new error.
    pub failed_again: u64,
    /// True when `limit` stopped the run before the last pending dead letter.
    pub stopped_by_limit: bool,
}

impl DeadLetterRedriveReport {
    pub fn redriven(&self) -> u64 {
        self.redriven_by_reason.values().sum()
    }
}

/// Redrives the pending dead letters of the sink group `group` on `topic`.
pub async fn redrive_dead_letters(
    store: &dyn CallStore,
    group: &str,
    topic: &str,
    decoder: &CallDecoder,
    options: &RedriveOptions,
) -> Result<DeadLetterRedriveReport, StoreError> {
    let mut report = DeadLetterRedriveReport::default();
    let page_size = i64::try_from(options.batch_size.max(1)).unwrap_or(i64::MAX);
    let mut after: Option<DeadLetterId> = None;
    let mut handled: u64 = 0;
    loop {
        let query = DeadLetterQuery {
            pending_only: true,
            reason: options.reason.clone(),
            after,
            limit: page_size,
            ..DeadLetterQuery::default()
        };
        let mut page = store.dead_letters(group, topic, &query).await?;
        if page.is_empty() {
            return Ok(report);
        }
        if let Some(limit) = options.limit {
            let room = usize::try_from(limit.saturating_sub(handled)).unwrap_or(usize::MAX);
            if page.len() > room {
                page.truncate(room);
                report.stopped_by_limit = true;
            }
        }
        if page.is_empty() {
            return Ok(report);
        }
        let page_after = page.last().map(|d| d.id);
        let page_len = page.len() as u64;
        report.read += page_len;
        handled += page_len;
        if options.dry_run {
            for d in &page {
                *report
                    .redriven_by_reason
                    .entry(d.reason.clone())
                    .or_insert(0) += 1;
            }
        } else {
            let again = redrive_page(store, group, topic, decoder, page, &mut report).await?;
            if again {
                // another redrive marked some of them first: read the page again (those it
                // did are no longer pending)
                report.read -= page_len;
                handled -= page_len;
                report.stopped_by_limit = false;
                continue;
            }
        }
        if report.stopped_by_limit {
            return Ok(report);
        }
        after = page_after;
    }
}

/// Applies one page; true when another redrive got to some of it first (nothing written).
async fn redrive_page(
    store: &dyn CallStore,
    group: &str,
    topic: &str,
    decoder: &CallDecoder,
    page: Vec<StoredDeadLetter>,
    report: &mut DeadLetterRedriveReport,
) -> Result<bool, StoreError> {
    let mut entries: Vec<(StoredDeadLetter, SinkRow)> = Vec::with_capacity(page.len());
    for d in page {
        let decoded = match d.value.as_deref() {
            Some(bytes) => decoder(bytes),
            None => Err("the record has no value".to_string()),
        };
        match decoded {
            Ok(record) => {
                let source = SourceRecord {
                    partition: d.id.partition,
                    offset: d.id.offset,
                    key: d.key.clone(),
                    payload: d.value.clone(),
                };
                entries.push((d, SinkRow::new(record, source)));
            }
            Err(e) => {
                store
                    .record_redrive_failure(
                        group,
                        topic,
                        d.id,
                        &format!("{REASON_UNDECODABLE}: {e}"),
                    )
                    .await?;
                report.failed_again += 1;
            }
        }
    }
    while !entries.is_empty() {
        let batch = SinkBatch::from_rows(topic, entries.iter().map(|(_, row)| row.clone()));
        let marks = RedriveMarks {
            consumer_group: group.to_string(),
            topic: topic.to_string(),
            ids: entries.iter().map(|(d, _)| d.id).collect(),
        };
        match store.redrive(&batch, &marks).await? {
            RedriveOutcome::Committed(counts) => {
                report.rows_written += counts.written;
                report.rows_stale += counts.stale;
                for (d, _) in &entries {
                    *report
                        .redriven_by_reason
                        .entry(d.reason.clone())
                        .or_insert(0) += 1;
                }
                return Ok(false);
            }
            RedriveOutcome::Rejected(rows) => {
                let refused: BTreeMap<RowKey, String> =
                    rows.into_iter().map(|r| (r.key, r.reason)).collect();
                let mut kept = Vec::with_capacity(entries.len());
                for (d, row) in entries {
                    match refused.get(&RowKey::of(&row.record)) {
                        Some(reason) => {
                            store
                                .record_redrive_failure(
                                    group,
                                    topic,
                                    d.id,
                                    &format!("database_rejected: {reason}"),
                                )
                                .await?;
                            report.failed_again += 1;
                        }
                        None => kept.push((d, row)),
                    }
                }
                entries = kept;
            }
            RedriveOutcome::AlreadyRedriven => return Ok(true),
        }
    }
    Ok(false)
}
