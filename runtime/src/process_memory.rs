//! The process's resident memory and the most it may use, as gauges for the "RSS near its
//! limit" alert: `callsync_process_resident_memory_bytes` and
//! `callsync_process_memory_limit_bytes` (the container's cgroup limit, or the machine's
//! memory when there is none). Linux only: read from /proc and /sys/fs/cgroup (two small
//! files; no crate covers the cgroup limit).

use std::time::Duration;

use crate::Shutdown;

/// Resident set size of this process, bytes.
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "callsync_process_resident_memory_bytes";
/// The memory this process may use: its cgroup's limit, else the machine's total, bytes.
pub const PROCESS_MEMORY_LIMIT_BYTES: &str = "callsync_process_memory_limit_bytes";

/// Resident bytes of this process (`/proc/self/statm`'s second field times the page size).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages.checked_mul(u64::try_from(page).ok()?)
}

/// The cgroup v2 (`memory.max`) or v1 (`memory.limit_in_bytes`) limit when one is set, else
/// `MemTotal` of /proc/meminfo.
pub fn limit_bytes() -> Option<u64> {
    let total = meminfo_total();
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|path| std::fs::read_to_string(path).ok())
    .find_map(|text| text.trim().parse::<u64>().ok());
    match (cgroup, total) {
        // v1 reports "no limit" as a huge number
        (Some(limit), Some(total)) => Some(limit.min(total)),
        (limit, total) => limit.or(total),
    }
}

fn meminfo_total() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Sets both gauges now and every `interval` until `shutdown`.
pub async fn report_process_memory(interval: Duration, shutdown: Shutdown) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = ticker.tick() => {}
        }
        if let Some(rss) = resident_bytes() {
            metrics::gauge!(PROCESS_RESIDENT_MEMORY_BYTES).set(rss as f64);
        }
        if let Some(limit) = limit_bytes() {
            metrics::gauge!(PROCESS_MEMORY_LIMIT_BYTES).set(limit as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_resident_size_below_its_limit() {
        let rss = resident_bytes().expect("rss");
        let limit = limit_bytes().expect("limit");
        assert!(rss > 1024 * 1024, "{rss}");
        assert!(rss < limit, "{rss} < {limit}");
    }
}
