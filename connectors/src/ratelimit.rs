//! Request pacing per provider account: a governor quota (GCRA, no burst, so requests are
//! evenly spaced and no sliding or fixed window of the provider's ever sees more than its
//! limit), a cap on requests in flight, a shared pause after a 429, and, where the provider
//! publishes no limit, an adaptive rate that halves on a 429 and probes back up after a run
//! of successes.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How one account is paced.
#[derive(Debug, Clone, PartialEq)]
pub struct RatePolicy {
    /// Requests per minute the provider allows (the ceiling).
    pub per_minute: f64,
    /// The share of the ceiling we aim at (e.g. 0.97), so clock skew between us and the
    /// provider's window never costs a 429.
    pub headroom: f64,
    /// Lower the rate on 429 and probe back up (for providers that publish no limit).
    pub adaptive: bool,
    /// Requests in flight at once.
    pub max_concurrency: u32,
}

impl RatePolicy {
    pub fn target_per_minute(&self) -> f64 {
        (self.per_minute * self.headroom).max(0.01)
    }
}

#[derive(Debug)]
struct State {
    limiter: Arc<DefaultDirectRateLimiter>,
    rate: f64,
    successes: u32,
    last_429: Option<Instant>,
}

/// The limiter of one provider account; shared by every sync of that account.
#[derive(Debug)]
pub struct AccountRateLimiter {
    policy: RatePolicy,
    state: Mutex<State>,
    paused_until: Mutex<Option<Instant>>,
    in_flight: Arc<Semaphore>,
}

/// Successes in a row (and no 429 for this long) before an adaptive rate steps up.
const PROBE_AFTER_SUCCESSES: u32 = 20;
const PROBE_QUIET: Duration = Duration::from_secs(30);

fn build(rate_per_min: f64) -> Arc<DefaultDirectRateLimiter> {
    let period = Duration::from_secs_f64(60.0 / rate_per_min.max(0.01));
    let quota = Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(NonZeroU32::MIN);
    Arc::new(RateLimiter::direct(quota))
}

impl AccountRateLimiter {
    pub fn new(policy: RatePolicy) -> Self {
        let rate = policy.target_per_minute();
        AccountRateLimiter {
            in_flight: Arc::new(Semaphore::new(policy.max_concurrency.max(1) as usize)),
            state: Mutex::new(State {
                limiter: build(rate),
                rate,
                successes: 0,
                last_429: None,
            }),
            paused_until: Mutex::new(None),
            policy,
        }
    }

    pub fn policy(&self) -> &RatePolicy {
        &self.policy
    }

    /// The rate (requests/min) currently aimed at.
    pub fn current_per_minute(&self) -> f64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).rate
    }

    /// Waits for a slot: the pause after a 429, a free in-flight permit, then the quota.
    /// Hold the permit until the response has arrived.
    pub async fn acquire(&self) -> OwnedSemaphorePermit {
        loop {
            let pause = *self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
            match pause {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t.into()).await,
                _ => break,
            }
        }
        // the semaphore is never closed; a closed one would mean no cap, so build a fresh permit
        let permit = match self.in_flight.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => Arc::new(Semaphore::new(1))
                .acquire_owned()
                .await
                .unwrap_or_else(|_| unreachable!("a new semaphore is open")),
        };
        let limiter = self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .limiter
            .clone();
        limiter.until_ready().await;
        // a 429 may have arrived while we waited
        let pause = *self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = pause {
            if t > Instant::now() {
                tokio::time::sleep_until(t.into()).await;
            }
        }
        permit
    }

    pub fn on_success(&self) {
        if !self.policy.adaptive {
            return;
        }
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.successes += 1;
        let quiet = s.last_429.is_none_or(|t| t.elapsed() >= PROBE_QUIET);
        let target = self.policy.target_per_minute();
        if s.successes >= PROBE_AFTER_SUCCESSES && quiet && s.rate < target {
            s.rate = (s.rate * 1.25).min(target);
            s.limiter = build(s.rate);
            s.successes = 0;
            tracing::debug!(rate_per_min = s.rate, "adaptive rate probing up");
        }
    }

    /// A 429 arrived: everyone of this account pauses for `retry_after` (when the provider
    /// said), and an adaptive rate halves.
    pub fn on_rate_limited(&self, retry_after: Option<Duration>) {
        if let Some(d) = retry_after {
            let until = Instant::now() + d;
            let mut p = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
            if p.is_none_or(|t| t < until) {
                *p = Some(until);
            }
        }
        if self.policy.adaptive {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let floor = (self.policy.target_per_minute() / 64.0).max(0.5);
            s.rate = (s.rate * 0.5).max(floor);
            s.limiter = build(s.rate);
            s.successes = 0;
            s.last_429 = Some(Instant::now());
            tracing::info!(rate_per_min = s.rate, "adaptive rate lowered after 429");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_are_spaced_by_the_quota() {
        let l = AccountRateLimiter::new(RatePolicy {
            per_minute: 1200.0,
            headroom: 1.0,
            adaptive: false,
            max_concurrency: 4,
        });
        let start = Instant::now();
        for _ in 0..6 {
            drop(l.acquire().await);
        }
        // 6 requests at 20/s: the first is immediate, then 5 x 50 ms
        let e = start.elapsed();
        assert!(e >= Duration::from_millis(240), "{e:?}");
        assert!(e < Duration::from_millis(600), "{e:?}");
    }

    #[test]
    fn adaptive_rate_halves_on_429_and_recovers() {
        let l = AccountRateLimiter::new(RatePolicy {
            per_minute: 100.0,
            headroom: 1.0,
            adaptive: true,
            max_concurrency: 1,
        });
        l.on_rate_limited(None);
        assert_eq!(l.current_per_minute(), 50.0);
        {
            let mut s = l.state.lock().unwrap();
            s.last_429 = Some(Instant::now() - PROBE_QUIET);
        }
        for _ in 0..PROBE_AFTER_SUCCESSES {
            l.on_success();
        }
        assert_eq!(l.current_per_minute(), 62.5);
    }
}
