//! A circuit breaker per provider account. Its state is the provider's health: `closed`
//! (healthy), `open` (unhealthy: requests fail at once until a cool-down passes) and
//! `half_open` (one probe request is let through; its outcome closes or reopens the circuit).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use callsync_runtime::metrics::CIRCUIT_STATE;
use callsync_schemas::Provider;
use serde::Serialize;

/// The state of a circuit, as exposed to the API and the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    Closed,
    HalfOpen,
    Open,
}

impl CircuitState {
    /// The value of the `callsync_circuit_state` gauge: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> f64 {
        match self {
            CircuitState::Closed => 0.0,
            CircuitState::HalfOpen => 1.0,
            CircuitState::Open => 2.0,
        }
    }

    pub fn is_healthy(self) -> bool {
        self == CircuitState::Closed
    }
}

/// Why the breaker refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitDenied {
    /// Time until the next probe may go (or until the probe in flight is likely done).
    pub retry_in: Duration,
    /// A half-open probe is in flight: wait for its outcome rather than fail.
    pub probing: bool,
}

#[derive(Debug)]
struct Inner {
    state: CircuitState,
    consecutive_failures: u32,
    opened_at: Option<Instant>,
    probe_in_flight: bool,
}

/// A closed/open/half-open breaker. Failures are transport errors, timeouts, 5xx and
/// malformed bodies; any success resets the count.
#[derive(Debug)]
pub struct CircuitBreaker {
    provider: Provider,
    account: String,
    failure_threshold: u32,
    open_for: Duration,
    inner: Mutex<Inner>,
}

impl CircuitBreaker {
    pub fn new(
        provider: Provider,
        account: impl Into<String>,
        failure_threshold: u32,
        open_for: Duration,
    ) -> Self {
        let b = CircuitBreaker {
            provider,
            account: account.into(),
            failure_threshold: failure_threshold.max(1),
            open_for,
            inner: Mutex::new(Inner {
                state: CircuitState::Closed,
                consecutive_failures: 0,
                opened_at: None,
                probe_in_flight: false,
            }),
        };
        b.publish(CircuitState::Closed);
        b
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // a poisoned breaker is still a valid state machine
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current state (an open circuit whose cool-down has passed reads `half_open`).
    pub fn state(&self) -> CircuitState {
        let inner = self.lock();
        match inner.state {
            CircuitState::Open
                if inner
                    .opened_at
                    .is_some_and(|t| t.elapsed() >= self.open_for) =>
            {
                CircuitState::HalfOpen
            }
            s => s,
        }
    }

    /// May a request go out now? `Err` when the circuit is open (or a half-open probe is
    /// already out), with the time left before the next probe.
    pub fn try_acquire(&self) -> Result<(), CircuitDenied> {
        let mut inner = self.lock();
        match inner.state {
            CircuitState::Closed => Ok(()),
            CircuitState::Open => {
                let elapsed = inner
                    .opened_at
                    .map(|t| t.elapsed())
                    .unwrap_or(self.open_for);
                if elapsed >= self.open_for {
                    inner.state = CircuitState::HalfOpen;
                    inner.probe_in_flight = true;
                    drop(inner);
                    self.publish(CircuitState::HalfOpen);
                    tracing::info!(provider = %self.provider, account = %self.account, "circuit half-open: probing");
                    Ok(())
                } else {
                    Err(CircuitDenied {
                        retry_in: self.open_for - elapsed,
                        probing: false,
                    })
                }
            }
            CircuitState::HalfOpen => {
                if inner.probe_in_flight {
                    Err(CircuitDenied {
                        retry_in: Duration::from_millis(50),
                        probing: true,
                    })
                } else {
                    inner.probe_in_flight = true;
                    Ok(())
                }
            }
        }
    }

    pub fn record_success(&self) {
        let mut inner = self.lock();
        let was = inner.state;
        inner.state = CircuitState::Closed;
        inner.consecutive_failures = 0;
        inner.opened_at = None;
        inner.probe_in_flight = false;
        drop(inner);
        if was != CircuitState::Closed {
            tracing::info!(provider = %self.provider, account = %self.account, "circuit closed: provider healthy again");
            self.publish(CircuitState::Closed);
        }
    }

    pub fn record_failure(&self) {
        let mut inner = self.lock();
        inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
        let open = inner.state == CircuitState::HalfOpen
            || inner.consecutive_failures >= self.failure_threshold;
        if open && inner.state != CircuitState::Open {
            inner.state = CircuitState::Open;
            inner.opened_at = Some(Instant::now());
            inner.probe_in_flight = false;
            let failures = inner.consecutive_failures;
            drop(inner);
            tracing::warn!(provider = %self.provider, account = %self.account, failures, "circuit open: provider unhealthy");
            self.publish(CircuitState::Open);
        } else if open {
            inner.opened_at = Some(Instant::now());
        }
    }

    /// A request that was let through ended without telling health either way (e.g. 4xx).
    pub fn record_neutral(&self) {
        self.lock().probe_in_flight = false;
    }

    fn publish(&self, state: CircuitState) {
        metrics::gauge!(CIRCUIT_STATE, "provider" => self.provider.as_str(), "account" => self.account.clone())
            .set(state.gauge());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_then_half_opens_and_closes() {
        let b = CircuitBreaker::new(Provider::Ringba, "a", 3, Duration::from_millis(50));
        for _ in 0..2 {
            assert!(b.try_acquire().is_ok());
            b.record_failure();
        }
        assert_eq!(b.state(), CircuitState::Closed);
        b.record_failure();
        assert_eq!(b.state(), CircuitState::Open);
        assert!(b.try_acquire().is_err());
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert!(b.try_acquire().is_ok(), "one probe goes through");
        assert!(b.try_acquire().is_err(), "a second probe waits");
        b.record_failure();
        assert_eq!(b.state(), CircuitState::Open, "failed probe reopens");
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.try_acquire().is_ok());
        b.record_success();
        assert_eq!(b.state(), CircuitState::Closed);
    }
}
