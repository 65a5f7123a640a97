//! CPU time and memory of processes and of the whole machine, read from /proc (Linux), so that
//! every measurement can say what each process it names cost and what else ran beside it.

use std::collections::HashMap;
use std::path::Path;

/// Clock ticks per second of the CPU times in /proc (`USER_HZ`).
pub fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a constant of the running kernel
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// The CPU times of one process in /proc/<pid>/stat, in ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcTimes {
    pub ppid: u32,
    /// user + system time of the process's own threads
    pub own: u64,
    /// user + system time of its children that it has waited for
    pub reaped_children: u64,
}

/// Reads /proc/<pid>/stat; `None` once the process is gone.
pub fn proc_times(pid: u32) -> Option<ProcTimes> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// The fields after `comm` (which may hold spaces and parentheses, so split at the last ')').
fn parse_stat(stat: &str) -> Option<ProcTimes> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): ppid is field 4, utime..cstime fields 14..17
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(ProcTimes {
        ppid: u32::try_from(field(4)?).ok()?,
        own: field(14)?.checked_add(field(15)?)?,
        reaped_children: field(16)?.checked_add(field(17)?)?,
    })
}

/// Seconds of CPU a process's own threads have used; `None` once it is gone.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    proc_times(pid).map(|t| t.own as f64 / ticks_per_sec())
}

/// The short name of a process (`comm`).
pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".to_string())
}

/// Every process's CPU times now, by pid.
pub fn all_processes() -> HashMap<u32, ProcTimes> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(t) = proc_times(pid) {
            out.insert(pid, t);
        }
    }
    out
}

/// CPU seconds of a process and all its descendants, the exited ones included (their time
/// is in their parents' reaped-children time once waited for, as a postmaster does at once).
pub fn tree_cpu_secs(root: u32) -> Option<f64> {
    let all = all_processes();
    let root_times = all.get(&root)?;
    let mut ticks = root_times.own + root_times.reaped_children;
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (&pid, t) in &all {
            if t.ppid == parent && pid != root {
                ticks += t.own + t.reaped_children;
                frontier.push(pid);
            }
        }
    }
    Some(ticks as f64 / ticks_per_sec())
}

/// Busy CPU seconds of the whole machine since boot (every core: all but idle and iowait).
pub fn machine_busy_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest times are inside user)
    let all: u64 = v.iter().take(8).sum();
    let busy = all.saturating_sub(*v.get(3)?).saturating_sub(*v.get(4)?);
    Some(busy as f64 / ticks_per_sec())
}

/// One field of `/proc/<pid>/status` in bytes (`VmHWM`, `VmRSS`); `None` once it is gone.
pub fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .and_then(|kb| kb.checked_mul(1024))
}

/// The process listening on TCP `port` of 127.0.0.1 or any address (the broker of a
/// bootstrap address, a Postgres server), found through its socket's inode.
pub fn pid_listening_on(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address "0100007F:4A8C", state 0A = LISTEN, inode is field 9
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let listening_port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if *state == "0A" && listening_port == Some(port) {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let dir = std::fs::read_dir("/proc").ok()?;
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if inodes.iter().any(|i| Path::new(i) == target) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// The port of a `host:port` address (the first of a comma-separated list).
pub fn port_of(address: &str) -> Option<u16> {
    address
        .split(',')
        .next()?
        .trim()
        .rsplit(':')
        .next()?
        .parse()
        .ok()
}

/// The postmaster of a cluster: the first line of `<data>/postmaster.pid`.
pub fn postmaster_pid(data_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_a_comm_with_spaces_and_parentheses() {
        let line = "4242 (a (weird) name) S 17 4242 4242 0 -1 4194304 100 0 0 0 \
                    250 50 7 3 20 0 4 0 100 1000 200";
        let t = parse_stat(line).expect("parses");
        assert_eq!(
            t,
            ProcTimes {
                ppid: 17,
                own: 300,
                reaped_children: 10
            }
        );
    }

    #[test]
    fn this_process_is_found_and_uses_cpu() {
        let me = std::process::id();
        let before = proc_times(me).expect("own stat");
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        let after = proc_times(me).expect("own stat");
        assert!(after.own >= before.own);
        assert!(machine_busy_secs().is_some());
        assert!(status_bytes(me, "VmHWM").unwrap_or(0) > 0);
        assert!(tree_cpu_secs(me).is_some());
    }

    #[test]
    fn the_listener_of_a_port_is_this_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert_eq!(pid_listening_on(port), Some(std::process::id()));
        assert_eq!(port_of("127.0.0.1:19092,other:1"), Some(19092));
    }
}
