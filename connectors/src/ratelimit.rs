//! Request pacing per provider account:
//! - a governor quota (GCRA, no burst), so requests are evenly spaced and no sliding or fixed
//!   window of the provider's ever sees more than the rate aimed at;
//! - the rate aimed at is a configurable *share* of the provider's ceiling, because several
//!   providers count one budget for everyone using the account (Ringba's reporting limit is
//!   shared with the customer's own UI users);
//! - AIMD: a 429 (or a 2xx body saying it was rate limited) halves the rate, a run of
//!   successes adds a step back, up to the share;
//! - period quotas (CallRail's 10,000 a day): a sliding log of the requests sent in the
//!   period; when the period's budget is used up, requests wait until the oldest one leaves
//!   the period (the sync pauses, it does not fail);
//! - a cap on requests in flight, and a shared pause after a 429 with `Retry-After`.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A budget of requests per period (on top of the per-minute pacing).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeriodQuota {
    /// Requests the provider allows per period (its ceiling; the share applies to it).
    pub max_requests: f64,
    pub period: Duration,
}

/// How one account is paced.
#[derive(Debug, Clone, PartialEq)]
pub struct RatePolicy {
    /// Requests per minute the provider allows (the ceiling).
    pub per_minute: f64,
    /// The share of every ceiling we aim at: below 1 so that clock skew never costs a 429,
    /// well below 1 where others spend the same budget.
    pub share: f64,
    /// Lower the rate on 429 and step back up (AIMD).
    pub adaptive: bool,
    /// Requests in flight at once.
    pub max_concurrency: u32,
    /// Budgets per longer period (CallRail: per hour and per day).
    pub quotas: Vec<PeriodQuota>,
}

impl RatePolicy {
    pub fn target_per_minute(&self) -> f64 {
        (self.per_minute * self.share).max(0.01)
    }

    /// Requests we allow ourselves per period of each quota.
    pub fn quota_budgets(&self) -> Vec<(usize, Duration)> {
        self.quotas
            .iter()
            .map(|q| {
                (
                    ((q.max_requests * self.share).floor().max(1.0)) as usize,
                    q.period,
                )
            })
            .collect()
    }
}

#[derive(Debug)]
struct State {
    limiter: Arc<DefaultDirectRateLimiter>,
    rate: f64,
    successes: u32,
    last_429: Option<Instant>,
}

/// The sliding log of one period quota.
#[derive(Debug)]
struct PeriodLog {
    budget: usize,
    period: Duration,
    sent: VecDeque<Instant>,
}

impl PeriodLog {
    /// When a request may be sent (now if the budget has room), after dropping old entries.
    fn next_slot(&mut self, now: Instant) -> Option<Instant> {
        while self
            .sent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.period)
        {
            self.sent.pop_front();
        }
        if self.sent.len() < self.budget {
            None
        } else {
            self.sent.front().map(|t| *t + self.period)
        }
    }
}

/// The limiter of one provider account; shared by every sync of that account.
#[derive(Debug)]
pub struct AccountRateLimiter {
    policy: RatePolicy,
    state: Mutex<State>,
    paused_until: Mutex<Option<Instant>>,
    periods: Mutex<Vec<PeriodLog>>,
    in_flight: Arc<Semaphore>,
}

/// Successes in a row (and no 429 for this long) before an adaptive rate steps up.
const PROBE_AFTER_SUCCESSES: u32 = 20;
const PROBE_QUIET: Duration = Duration::from_secs(30);
/// The additive step of AIMD, as a share of the rate aimed at.
const ADDITIVE_STEP: f64 = 0.1;

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
        let periods = policy
            .quota_budgets()
            .into_iter()
            .map(|(budget, period)| PeriodLog {
                budget,
                period,
                sent: VecDeque::with_capacity(budget.min(16_384)),
            })
            .collect();
        AccountRateLimiter {
            in_flight: Arc::new(Semaphore::new(policy.max_concurrency.max(1) as usize)),
            state: Mutex::new(State {
                limiter: build(rate),
                rate,
                successes: 0,
                last_429: None,
            }),
            paused_until: Mutex::new(None),
            periods: Mutex::new(periods),
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

    /// Requests left in each period quota now (for health output and tests).
    pub fn quota_remaining(&self) -> Vec<usize> {
        let now = Instant::now();
        let mut periods = self.periods.lock().unwrap_or_else(|p| p.into_inner());
        periods
            .iter_mut()
            .map(|p| {
                let _ = p.next_slot(now);
                p.budget.saturating_sub(p.sent.len())
            })
            .collect()
    }

    async fn wait_for_pause(&self) {
        loop {
            let pause = *self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
            match pause {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t.into()).await,
                _ => break,
            }
        }
    }

    /// Waits until every period quota has room, then books the request in each.
    async fn wait_for_quotas(&self) {
        loop {
            let wait = {
                let now = Instant::now();
                let mut periods = self.periods.lock().unwrap_or_else(|p| p.into_inner());
                let slot = periods.iter_mut().filter_map(|p| p.next_slot(now)).max();
                if slot.is_none() {
                    for p in periods.iter_mut() {
                        p.sent.push_back(now);
                    }
                }
                slot
            };
            match wait {
                None => return,
                Some(until) => {
                    tracing::info!(
                        wait_secs = until.saturating_duration_since(Instant::now()).as_secs(),
                        "period quota used up; pausing until it has room"
                    );
                    tokio::time::sleep_until(until.into()).await;
                }
            }
        }
    }

    /// Waits for a slot: the pause after a 429, a free in-flight permit, the period quotas,
    /// then the pacing. Hold the permit until the response has arrived.
    pub async fn acquire(&self) -> OwnedSemaphorePermit {
        self.wait_for_pause().await;
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
        self.wait_for_pause().await;
        self.wait_for_quotas().await;
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
            s.rate = (s.rate + target * ADDITIVE_STEP).min(target);
            s.limiter = build(s.rate);
            s.successes = 0;
            tracing::debug!(rate_per_min = s.rate, "adaptive rate stepping up");
        }
    }

    /// The provider said we are over its limit (a 429, or a 2xx body saying so): an adaptive
    /// rate halves, and everyone of this account pauses for `retry_after` when the provider
    /// said, else for one interval of the (new) rate, so that the retry does not go out at
    /// once on a fresh pacing quota.
    pub fn on_rate_limited(&self, retry_after: Option<Duration>) {
        let rate = if self.policy.adaptive {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let floor = (self.policy.target_per_minute() / 64.0).max(0.5);
            s.rate = (s.rate * 0.5).max(floor);
            s.limiter = build(s.rate);
            s.successes = 0;
            s.last_429 = Some(Instant::now());
            tracing::info!(
                rate_per_min = s.rate,
                "adaptive rate halved after a rate-limited answer"
            );
            s.rate
        } else {
            self.current_per_minute()
        };
        let pause = retry_after.unwrap_or_else(|| Duration::from_secs_f64(60.0 / rate.max(0.01)));
        let until = Instant::now() + pause;
        let mut p = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        if p.is_none_or(|t| t < until) {
            *p = Some(until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(per_minute: f64, adaptive: bool) -> RatePolicy {
        RatePolicy {
            per_minute,
            share: 1.0,
            adaptive,
            max_concurrency: 4,
            quotas: Vec::new(),
        }
    }

    #[tokio::test]
    async fn requests_are_spaced_by_the_quota() {
        let l = AccountRateLimiter::new(policy(1200.0, false));
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
    fn the_share_lowers_the_rate_aimed_at() {
        let mut p = policy(80.0, true);
        p.share = 0.5;
        assert_eq!(p.target_per_minute(), 40.0);
        p.quotas = vec![PeriodQuota {
            max_requests: 10_000.0,
            period: Duration::from_secs(86_400),
        }];
        assert_eq!(
            p.quota_budgets(),
            vec![(5_000, Duration::from_secs(86_400))]
        );
    }

    #[test]
    fn adaptive_rate_halves_on_429_and_steps_back_up_additively() {
        let l = AccountRateLimiter::new(policy(100.0, true));
        l.on_rate_limited(None);
        assert_eq!(l.current_per_minute(), 50.0);
        l.on_rate_limited(None);
        assert_eq!(l.current_per_minute(), 25.0);
        {
            let mut s = l.state.lock().unwrap();
            s.last_429 = Some(Instant::now() - PROBE_QUIET);
        }
        for _ in 0..PROBE_AFTER_SUCCESSES {
            l.on_success();
        }
        assert_eq!(l.current_per_minute(), 35.0);
    }

    /// A period quota used up makes the next request wait for the oldest to leave the
    /// period: the caller pauses instead of being refused.
    #[tokio::test]
    async fn a_used_up_period_quota_pauses_until_it_has_room() {
        let mut p = policy(60_000.0, false);
        p.quotas = vec![PeriodQuota {
            max_requests: 3.0,
            period: Duration::from_millis(400),
        }];
        let l = AccountRateLimiter::new(p);
        let start = Instant::now();
        for _ in 0..3 {
            drop(l.acquire().await);
        }
        assert!(start.elapsed() < Duration::from_millis(200));
        assert_eq!(l.quota_remaining(), vec![0]);
        drop(l.acquire().await);
        let e = start.elapsed();
        assert!(e >= Duration::from_millis(390), "{e:?}");
    }
}
