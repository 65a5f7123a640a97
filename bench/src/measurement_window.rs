//! The conditions of one measurement: the load average at its start and end, the machine's busy
//! CPU over it, the CPU of the processes the measurement names, and what every other process
//! used meanwhile (a compiler beside a benchmark shows up here by name).

use std::collections::HashMap;
use std::time::Instant;

use serde::Serialize;

use crate::proc_usage::{self, ProcTimes};
use crate::report;

/// How many of the other processes are listed by name.
const OTHERS_LISTED: usize = 5;

/// Opened just before a measurement starts; [`MeasurementWindow::close`] reads the rest.
pub struct MeasurementWindow {
    started: Instant,
    load_start: Option<f64>,
    machine_start: Option<f64>,
    processes: HashMap<u32, ProcTimes>,
}

/// A process named by a measurement, and the CPU it used during it.
#[derive(Debug, Clone, Serialize)]
pub struct MeasuredProcess {
    pub name: String,
    pub cpu_secs: f64,
}

/// Another process and the CPU its own threads used during the measurement (a process that
/// started and ended within it is only in the machine's total).
#[derive(Debug, Clone, Serialize)]
pub struct OtherProcess {
    pub pid: u32,
    pub name: String,
    pub cpu_secs: f64,
}

/// What ran during one measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Conditions {
    pub secs: f64,
    pub load_start: Option<f64>,
    pub load_end: Option<f64>,
    pub cores: usize,
    /// busy CPU of the whole machine over the window (all cores)
    pub machine_cpu_secs: Option<f64>,
    pub measured: Vec<MeasuredProcess>,
    /// machine busy CPU less the measured processes' CPU
    pub others_cpu_secs: Option<f64>,
    /// the busiest other processes
    pub top_others: Vec<OtherProcess>,
}

impl Conditions {
    /// `load 1.2 -> 1.9, others 0.8 CPU s (rustc 0.5)`, for a figure's text.
    pub fn summary(&self) -> String {
        let load = |l: Option<f64>| l.map_or("?".to_string(), |l| format!("{l:.1}"));
        let top = self
            .top_others
            .iter()
            .take(2)
            .map(|o| format!("{} {:.1}", o.name, o.cpu_secs))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "load {} -> {}, others {} CPU s{}",
            load(self.load_start),
            load(self.load_end),
            self.others_cpu_secs
                .map_or("?".to_string(), |s| format!("{s:.1}")),
            if top.is_empty() {
                String::new()
            } else {
                format!(" ({top})")
            }
        )
    }
}

impl MeasurementWindow {
    pub fn open() -> Self {
        MeasurementWindow {
            load_start: report::load_average(),
            machine_start: proc_usage::machine_busy_secs(),
            processes: proc_usage::all_processes(),
            started: Instant::now(),
        }
    }

    /// Closes the window. `measured` names the measurement's own processes (pids) with the CPU
    /// each used over the window, as the caller counted it (a process tree, a child's share).
    /// Those pids are left out of the list of others.
    pub fn close(self, measured: &[(&str, Option<u32>, f64)]) -> Conditions {
        let secs = self.started.elapsed().as_secs_f64();
        let machine_cpu_secs = proc_usage::machine_busy_secs()
            .zip(self.machine_start)
            .map(|(end, start)| (end - start).max(0.0));
        let load_end = report::load_average();
        let now = proc_usage::all_processes();
        let ticks = proc_usage::ticks_per_sec();
        let ours: Vec<u32> = measured.iter().filter_map(|(_, pid, _)| *pid).collect();
        let mut others: Vec<OtherProcess> = now
            .iter()
            .filter(|(&pid, _)| !descends_from(&now, pid, &ours))
            .filter_map(|(&pid, t)| {
                // its own threads only: a shell's reaped children include whole builds that
                // began before the window
                let before = self.processes.get(&pid).copied().unwrap_or_default();
                let used = t.own.saturating_sub(before.own);
                (used > 0).then(|| OtherProcess {
                    pid,
                    name: proc_usage::comm(pid),
                    cpu_secs: used as f64 / ticks,
                })
            })
            .collect();
        others.sort_by(|a, b| b.cpu_secs.total_cmp(&a.cpu_secs));
        others.truncate(OTHERS_LISTED);
        let measured_total: f64 = measured.iter().map(|(_, _, cpu)| cpu).sum();
        Conditions {
            secs,
            load_start: self.load_start,
            load_end,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            machine_cpu_secs,
            measured: measured
                .iter()
                .map(|(name, _, cpu)| MeasuredProcess {
                    name: name.to_string(),
                    cpu_secs: *cpu,
                })
                .collect(),
            others_cpu_secs: machine_cpu_secs.map(|m| (m - measured_total).max(0.0)),
            top_others: others,
        }
    }
}

/// Whether `pid` is one of `roots` or a descendant of one (a Postgres backend of a measured
/// postmaster).
fn descends_from(all: &HashMap<u32, ProcTimes>, pid: u32, roots: &[u32]) -> bool {
    let mut at = pid;
    // a bounded walk: a chain of parents is short, and a pid may vanish mid-walk
    for _ in 0..64 {
        if roots.contains(&at) {
            return true;
        }
        match all.get(&at) {
            Some(t) if t.ppid > 1 => at = t.ppid,
            _ => return false,
        }
    }
    false
}
