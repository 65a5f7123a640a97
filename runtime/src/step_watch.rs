//! A watch on blocking librdkafka transaction calls that may never return.
//!
//! librdkafka bounds `init_transactions`, `send_offsets_to_transaction` and
//! `commit_transaction` by the timeout given, but in a CI trial, after the broker stalled and
//! the group session expired, a `send_offsets_to_transaction` never returned: librdkafka waits
//! for its own transaction op without a bound (`rd_kafka_txn_op_req1(..., RD_POLL_INFINITE)`),
//! and that op never answered. The calling thread stopped, and nothing was produced again
//! while the process looked alive.
//!
//! The blocking thread marks each such call with [`StepWatch::enter`]; the async task that
//! started the thread checks [`StepWatch::running_longer_than`] (or awaits
//! [`StepWatch::stuck_longer_than`]) and gives the call up once it has run past its bound
//! (callsync uses twice the call's own timeout). The thread and its producer are abandoned,
//! never reused: the stage ends with an error, and the process restarted by its supervisor
//! fences the stuck transaction (`init_transactions` with the same `transactional.id`) and
//! resumes from what was committed, so nothing is lost or written twice.
//!
//! Used by the processor (`callsync_processors::step_watch` re-exports it) and the
//! connectors' transactional sync store.

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

    /// Resolves once a step has run longer than `limit` (checked every `limit / 8`, between
    /// 10 ms and 1 s), with that step and how long it has run. Pending forever while steps
    /// end in time: race it against the blocking task (`tokio::select!`).
    pub async fn stuck_longer_than(&self, limit: Duration) -> (&'static str, Duration) {
        let every = (limit / 8).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut checks = tokio::time::interval(every);
        checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            checks.tick().await;
            if let Some(stuck) = self.running_longer_than(limit) {
                return stuck;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

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

    #[tokio::test]
    async fn a_blocking_step_past_its_bound_is_given_up_and_one_in_time_is_not() {
        let watch = Arc::new(StepWatch::default());
        let limit = Duration::from_millis(100);
        let task = tokio::task::spawn_blocking({
            let watch = watch.clone();
            move || {
                let _step = watch.enter("init_transactions");
                std::thread::sleep(Duration::from_millis(30));
            }
        });
        tokio::select! {
            done = task => done.expect("in time"),
            stuck = watch.stuck_longer_than(limit) => panic!("given up too early: {stuck:?}"),
        }
        let task = tokio::task::spawn_blocking({
            let watch = watch.clone();
            move || {
                let _step = watch.enter("commit_transaction");
                std::thread::sleep(Duration::from_millis(400));
            }
        });
        let started = Instant::now();
        tokio::select! {
            _ = task => panic!("the watch did not give the step up"),
            (step, running) = watch.stuck_longer_than(limit) => {
                assert_eq!(step, "commit_transaction");
                assert!(running > limit, "{running:?}");
                assert!(started.elapsed() < Duration::from_millis(300), "{:?}", started.elapsed());
            }
        }
    }
}
