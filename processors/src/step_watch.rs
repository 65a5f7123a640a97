//! A watch on the blocking Kafka calls of the processor thread.
//!
//! librdkafka bounds `send_offsets_to_transaction` and `commit_transaction` by the timeout
//! given, but in a CI trial, after the broker stalled and the group session expired, a
//! `send_offsets_to_transaction` never returned: librdkafka waits for its own transaction op
//! without a bound (`rd_kafka_txn_op_req1(..., RD_POLL_INFINITE)`), and that op never
//! answered. The thread stopped polling, the group evicted the instance, and nothing was
//! processed again while the process looked alive.
//!
//! The processor thread marks each such call with [`StepWatch::enter`]; the task that started
//! the thread checks [`StepWatch::running_longer_than`] and ends the instance with
//! [`crate::ProcessorError::Stuck`] once a call has run twice its timeout. A new
//! instance (the process restarted by its supervisor) fences the stuck transaction and resumes
//! from the committed offsets, so nothing is lost or written twice.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Which call is running, and since when.
#[derive(Debug)]
pub struct StepWatch {
    origin: Instant,
    /// Microseconds from `origin` to the start of the running step, plus one; 0: none.
    started: AtomicU64,
    step: Mutex<&'static str>,
}

impl Default for StepWatch {
    fn default() -> Self {
        StepWatch {
            origin: Instant::now(),
            started: AtomicU64::new(0),
            step: Mutex::new(""),
        }
    }
}

/// The running step; it ends when this is dropped.
#[must_use = "the step ends when the guard is dropped"]
pub struct Step<'a> {
    watch: &'a StepWatch,
}

impl Drop for Step<'_> {
    fn drop(&mut self) {
        self.watch.started.store(0, Ordering::SeqCst);
    }
}

impl StepWatch {
    /// Marks `step` as running until the returned guard is dropped.
    pub fn enter(&self, step: &'static str) -> Step<'_> {
        if let Ok(mut name) = self.step.lock() {
            *name = step;
        }
        let since = self.origin.elapsed().as_micros() as u64 + 1;
        self.started.store(since, Ordering::SeqCst);
        Step { watch: self }
    }

    /// The running step and how long it has run, if that is longer than `limit`.
    pub fn running_longer_than(&self, limit: Duration) -> Option<(&'static str, Duration)> {
        let started = self.started.load(Ordering::SeqCst);
        if started == 0 {
            return None;
        }
        let running = self
            .origin
            .elapsed()
            .saturating_sub(Duration::from_micros(started - 1));
        if running <= limit {
            return None;
        }
        let step = self.step.lock().map(|s| *s).unwrap_or("a transaction step");
        Some((step, running))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_step_still_running_past_the_limit_is_reported() {
        let watch = StepWatch::default();
        assert_eq!(watch.running_longer_than(Duration::ZERO), None);
        {
            let _step = watch.enter("commit_transaction");
            std::thread::sleep(Duration::from_millis(20));
            assert_eq!(watch.running_longer_than(Duration::from_secs(5)), None);
            let (step, running) = watch
                .running_longer_than(Duration::from_millis(10))
                .expect("running past 10 ms");
            assert_eq!(step, "commit_transaction");
            assert!(running >= Duration::from_millis(20), "{running:?}");
        }
        // ended: never reported, however long ago it started
        assert_eq!(watch.running_longer_than(Duration::ZERO), None);
    }
}
