//! Simulated time.
//!
//! Simulated now = anchor + speed × (wall time since the anchor was set). Advancing or
//! setting the clock moves the anchor; changing the speed re-anchors at the current
//! simulated instant, so time never jumps when the speed changes. Rate limits and
//! latency use wall-clock time; everything about the data (which calls exist, which
//! changes have happened) uses simulated time.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};

use crate::config::ClockConfig;

/// The simulator's clock; shared by the server and every handle.
#[derive(Debug)]
pub struct SimClock {
    state: Mutex<ClockState>,
}

#[derive(Debug, Clone, Copy)]
struct ClockState {
    anchor_sim_ms: i64,
    anchor_wall: Instant,
    speed: f64,
}

impl ClockState {
    fn now_ms(&self) -> i64 {
        if self.speed == 0.0 {
            return self.anchor_sim_ms;
        }
        let elapsed_ms = self.anchor_wall.elapsed().as_secs_f64() * 1000.0 * self.speed;
        self.anchor_sim_ms.saturating_add(elapsed_ms as i64)
    }
}

impl SimClock {
    pub fn new(config: &ClockConfig) -> Self {
        SimClock {
            state: Mutex::new(ClockState {
                anchor_sim_ms: config.start.timestamp_millis(),
                anchor_wall: Instant::now(),
                speed: config.speed,
            }),
        }
    }

    fn with_state<T>(&self, action: impl FnOnce(&mut ClockState) -> T) -> T {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        action(&mut guard)
    }

    /// Simulated now, in epoch milliseconds.
    pub fn now_ms(&self) -> i64 {
        self.with_state(|state| state.now_ms())
    }

    /// Simulated now.
    pub fn now(&self) -> DateTime<Utc> {
        millis_to_datetime(self.now_ms())
    }

    /// Moves simulated time forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by_ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.with_state(|state| {
            state.anchor_sim_ms = state.now_ms().saturating_add(by_ms);
            state.anchor_wall = Instant::now();
        });
    }

    /// Sets simulated now (it may move backwards; the data then looks as it did then).
    pub fn set(&self, to: DateTime<Utc>) {
        self.with_state(|state| {
            state.anchor_sim_ms = to.timestamp_millis();
            state.anchor_wall = Instant::now();
        });
    }

    /// Sets how many simulated seconds pass per wall-clock second (0 freezes the clock).
    /// Negative or non-finite speeds are treated as 0.
    pub fn set_speed(&self, speed: f64) {
        let speed = if speed.is_finite() && speed > 0.0 {
            speed
        } else {
            0.0
        };
        self.with_state(|state| {
            state.anchor_sim_ms = state.now_ms();
            state.anchor_wall = Instant::now();
            state.speed = speed;
        });
    }

    pub fn speed(&self) -> f64 {
        self.with_state(|state| state.speed)
    }
}

pub(crate) fn millis_to_datetime(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frozen_clock_moves_only_when_advanced() {
        let clock = SimClock::new(&ClockConfig {
            start: millis_to_datetime(1_000_000),
            speed: 0.0,
        });
        assert_eq!(clock.now_ms(), 1_000_000);
        clock.advance(Duration::from_secs(60));
        assert_eq!(clock.now_ms(), 1_060_000);
        clock.set(millis_to_datetime(5));
        assert_eq!(clock.now_ms(), 5);
    }
}
