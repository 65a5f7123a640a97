//! Parts of the chaos test: the role processes it starts, scales, kills and restarts
//! ([`roles`]), the documented commands it runs ([`docs`]), the reference read
//! ([`reference`]) and the every-column comparison ([`compare`]); here the fault timeline it
//! prints and a small seeded random number generator.

pub mod compare;
pub mod docs;
pub mod reference;
pub mod roles;
pub mod webhooks;

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// SplitMix64: enough randomness for a fault schedule, and the same schedule for one seed.
#[derive(Debug, Clone)]
pub struct SeededRng(u64);

impl SeededRng {
    pub fn new(seed: u64) -> Self {
        SeededRng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[low, high)` (`low` when the range is empty).
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        if high <= low {
            return low;
        }
        low + self.next_u64() % (high - low)
    }

    /// A duration uniform in `[low_ms, high_ms)` milliseconds.
    pub fn millis(&mut self, low_ms: u64, high_ms: u64) -> Duration {
        Duration::from_millis(self.range(low_ms, high_ms))
    }
}

/// What was done when, relative to the start of the run.
#[derive(Clone)]
pub struct Timeline {
    start: Instant,
    entries: Arc<Mutex<Vec<(Duration, String)>>>,
}

impl Timeline {
    pub fn new() -> Self {
        Timeline {
            start: Instant::now(),
            entries: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Records `what` now, and echoes it to stderr so a hanging run shows its progress.
    pub fn note(&self, what: impl Into<String>) {
        let what = what.into();
        let at = self.start.elapsed();
        eprintln!("[chaos {:>7.1}s] {what}", at.as_secs_f64());
        self.entries.lock().expect("timeline lock").push((at, what));
    }

    /// The timeline as a Markdown table.
    pub fn render(&self) -> String {
        let entries = self.entries.lock().expect("timeline lock");
        let mut out = String::from("| t (s) | what |\n|---:|---|\n");
        for (at, what) in entries.iter() {
            let _ = writeln!(out, "| {:.1} | {what} |", at.as_secs_f64());
        }
        out
    }
}
