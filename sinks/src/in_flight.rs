//! A batch being written to the store while the sink loop fills the next one (one batch
//! ahead, no more). The write runs as a task of its own, so the store's encoding and the
//! database's work overlap the decoding and collapsing of the next batch; a committed batch
//! is freed by that task too, off the loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use callsync_runtime::metrics::END_TO_END_SECONDS;
use callsync_runtime::Shutdown;
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::batch::{DeadLetter, SinkBatch};
use crate::store::{
    AppliedCounts, ApplyOutcome, CallStore, OffsetCommit, OffsetConflict, RejectedRow, StoreError,
};

/// How hard a flush tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlushMode {
    /// Retry transient errors per the policy; give up early on shutdown.
    Normal,
    /// A few attempts, then abort (revocation, shutdown).
    Bounded,
}

/// What became of one attempt at writing a batch.
#[derive(Debug)]
pub(crate) enum Landing {
    /// Rows and offsets committed; the batch itself is already freed.
    Committed(CommittedBatch),
    /// Nothing committed: the batch comes back with why.
    NotCommitted { batch: SinkBatch, why: NotCommitted },
}

/// What the loop still needs of a committed batch.
#[derive(Debug)]
pub(crate) struct CommittedBatch {
    pub counts: AppliedCounts,
    /// partition -> next offset now stored.
    pub next_offsets: Vec<(i32, i64)>,
    pub rows: usize,
    /// Committed with the batch; to publish to the DLQ topic.
    pub dead_letters: Vec<DeadLetter>,
}

/// Why an attempt committed nothing.
#[derive(Debug)]
pub(crate) enum NotCommitted {
    /// Rows the database refused (found by bisecting); the rest can be written again.
    Rejected(Vec<RejectedRow>),
    /// Another instance moved these partitions' offsets on.
    OffsetConflict(Vec<OffsetConflict>),
    Failed(StoreError),
}

/// The batch being written.
#[derive(Debug)]
pub(crate) struct InFlight {
    landing: oneshot::Receiver<Landing>,
    /// Attempts that failed with a transient error so far.
    pub attempt: u32,
    pub mode: FlushMode,
    /// When the batch was first handed to the store.
    pub started: Instant,
}

/// The task writing a batch stopped without an answer (it panicked).
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriteLost;

impl InFlight {
    /// Start writing `batch` with `offsets` after `delay` (a retry's backoff; cut short by
    /// `shutdown` when given).
    pub fn start(
        store: Arc<dyn CallStore>,
        batch: SinkBatch,
        offsets: OffsetCommit,
        delay: Duration,
        shutdown: Option<Shutdown>,
        attempt: (u32, FlushMode, Instant),
    ) -> Self {
        let (tx, landing) = oneshot::channel();
        let span = tracing::info_span!(
            "sink_batch",
            records = batch.record_count(),
            rows = batch.row_count(),
            partitions = batch.next_offsets().len()
        );
        tokio::spawn(
            async move {
                if !delay.is_zero() {
                    match shutdown {
                        Some(shutdown) => tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = shutdown.wait() => {}
                        },
                        None => tokio::time::sleep(delay).await,
                    }
                }
                let outcome = store.apply(&batch, &offsets).await;
                let why = match outcome {
                    Ok(ApplyOutcome::Committed(counts)) => {
                        let committed = committed(batch, counts);
                        let _ = tx.send(Landing::Committed(committed.0));
                        // the batch's rows are freed here, after the loop has its answer
                        drop(committed.1);
                        return;
                    }
                    Ok(ApplyOutcome::Rejected(rows)) => NotCommitted::Rejected(rows),
                    Ok(ApplyOutcome::OffsetConflict(c)) => NotCommitted::OffsetConflict(c),
                    Err(e) => NotCommitted::Failed(e),
                };
                let _ = tx.send(Landing::NotCommitted { batch, why });
            }
            .instrument(span),
        );
        let (attempt, mode, started) = attempt;
        InFlight {
            landing,
            attempt,
            mode,
            started,
        }
    }

    /// Wait for the attempt's answer.
    pub async fn landed(&mut self) -> Result<Landing, WriteLost> {
        (&mut self.landing).await.map_err(|_| WriteLost)
    }
}

/// Wait for the answer of the write in flight, if any (never resolves otherwise).
pub(crate) async fn next_landing(flight: Option<&mut InFlight>) -> Result<Landing, WriteLost> {
    match flight {
        Some(flight) => flight.landed().await,
        None => std::future::pending().await,
    }
}

/// What the loop needs of a committed batch, and the batch's remains to free.
fn committed(mut batch: SinkBatch, counts: AppliedCounts) -> (CommittedBatch, SinkBatch) {
    let now = chrono::Utc::now();
    for (_, row) in batch.rows() {
        let lag = (now - row.record.observed_at)
            .num_microseconds()
            .unwrap_or(0) as f64
            / 1e6;
        metrics::histogram!(END_TO_END_SECONDS).record(lag.max(0.0));
    }
    let summary = CommittedBatch {
        counts,
        next_offsets: batch.next_offsets().iter().map(|(p, n)| (*p, *n)).collect(),
        rows: batch.row_count(),
        dead_letters: batch.take_dead_letters(),
    };
    (summary, batch)
}
