//! What every method of the sink benchmark is measured by, the same way for each: rows/s, time
//! to the last row, the CPU of its own process, of Postgres and of the broker, its peak RSS,
//! and the conditions of the machine meanwhile.
//!
//! A Kafka-fed method (our sink role, the Debezium peer) drains a topic whose call `i` sits in
//! partition `i % partitions` at offset `i / partitions`. Both apply a partition's records in
//! order and commit whole batches, so a partition is in the table once its last call is:
//! progress is read from the primary key of each partition's first and last call (a few index
//! lookups), never by counting the table under the measured process's feet.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use callsync_schemas::CallRecord;
use serde::Serialize;

use crate::measurement_window::{Conditions, MeasurementWindow};
use crate::proc_usage;
use crate::services::BenchProcess;

/// The Kafka coordinates of call `i` in a new topic written with explicit partitions.
pub fn coordinates(i: usize, partitions: i32) -> (i32, i64) {
    let p = partitions.max(1) as usize;
    ((i % p) as i32, (i / p) as i64)
}

/// The figures of one method.
#[derive(Debug, Clone, Serialize)]
pub struct MethodFigures {
    pub rows: usize,
    /// from the method's start (process spawn, for the Kafka-fed ones) to its last row
    pub seconds_to_last_row: f64,
    /// rows/s from the first committed batch to the last (psql: over its whole run)
    pub steady_rows_per_sec: f64,
    /// rows/s over `seconds_to_last_row`, start-up included
    pub rows_per_sec_from_start: f64,
    /// CPU of the method's own process up to its last row
    pub process_cpu_secs: f64,
    pub postgres_cpu_secs: Option<f64>,
    pub broker_cpu_secs: Option<f64>,
    /// peak RSS of the method's own process
    pub peak_rss_bytes: u64,
    pub conditions: Conditions,
}

/// The servers whose CPU a measurement counts besides the method's own process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Servers {
    /// the postmaster of a cluster this benchmark owns (its backends are its children)
    pub postgres: Option<u32>,
    pub broker: Option<u32>,
}

impl Servers {
    /// `(postgres, broker)` CPU seconds so far.
    pub fn cpu(&self) -> (Option<f64>, Option<f64>) {
        (
            self.postgres.and_then(proc_usage::tree_cpu_secs),
            self.broker.and_then(proc_usage::cpu_secs),
        )
    }

    /// The measured processes of a window: the method's own, then the servers.
    pub fn measured<'a>(
        &self,
        own: (&'a str, Option<u32>, f64),
        postgres: Option<f64>,
        broker: Option<f64>,
    ) -> Vec<(&'a str, Option<u32>, f64)> {
        let mut v = vec![own];
        if let Some(cpu) = postgres {
            v.push(("postgres", self.postgres, cpu));
        }
        if let Some(cpu) = broker {
            v.push(("kafka broker", self.broker, cpu));
        }
        v
    }
}

fn delta(end: Option<f64>, start: Option<f64>) -> Option<f64> {
    Some((end? - start?).max(0.0))
}

/// The primary keys of each partition's first and last call.
pub struct LandedKeys {
    pub rows: usize,
    first: [Vec<String>; 3],
    last: [Vec<String>; 3],
}

impl LandedKeys {
    pub fn new(calls: &[CallRecord], partitions: i32) -> Self {
        let p = partitions.max(1) as usize;
        let columns = |indexes: &mut dyn Iterator<Item = usize>| {
            let mut cols: [Vec<String>; 3] = Default::default();
            for i in indexes {
                let c = &calls[i];
                cols[0].push(c.provider.as_str().to_string());
                cols[1].push(c.account_id.clone());
                cols[2].push(c.call_id.clone());
            }
            cols
        };
        let n = calls.len();
        let first = columns(&mut (0..p.min(n)));
        let last = columns(&mut (n.saturating_sub(p)..n));
        LandedKeys {
            rows: n,
            first,
            last,
        }
    }

    async fn present(pool: &sqlx::PgPool, keys: &[Vec<String>; 3]) -> anyhow::Result<usize> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM calls c \
             JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(provider, account_id, call_id) \
             USING (provider, account_id, call_id)",
        )
        .bind(&keys[0])
        .bind(&keys[1])
        .bind(&keys[2])
        .fetch_one(pool)
        .await
        .context("looking up the first and last calls of each partition")?;
        Ok(usize::try_from(n).unwrap_or(0))
    }
}

/// `SELECT count(*) FROM calls`, for the start and the end of a drain (not while it runs).
pub async fn count_rows(pool: &sqlx::PgPool) -> anyhow::Result<usize> {
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM calls")
        .fetch_one(pool)
        .await
        .context("counting the rows of calls")?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Rows Postgres reports written to `calls` (inserted or updated), from its statistics: a
/// cheap read that trails the commits by about a second, where `count(*)` would scan a table
/// of gigabytes under the measured process's feet.
pub async fn rows_written(pool: &sqlx::PgPool) -> anyhow::Result<u64> {
    let (n,): (Option<i64>,) = sqlx::query_as(
        "SELECT (n_tup_ins + n_tup_upd)::bigint FROM pg_stat_user_tables WHERE relname = 'calls'",
    )
    .fetch_one(pool)
    .await
    .context("reading the statistics of calls")?;
    Ok(n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0))
}

/// `TRUNCATE calls, callsync_offsets`: every method starts from an empty table.
pub async fn empty_table(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    sqlx::query("TRUNCATE calls, callsync_offsets")
        .execute(pool)
        .await
        .context("emptying calls")?;
    Ok(())
}

/// Opened just before a Kafka-fed method's process starts.
pub struct DrainWatch {
    name: &'static str,
    window: MeasurementWindow,
    servers: Servers,
    start_cpu: (Option<f64>, Option<f64>),
}

impl DrainWatch {
    pub fn start(name: &'static str, servers: &Servers) -> Self {
        DrainWatch {
            name,
            window: MeasurementWindow::open(),
            servers: *servers,
            start_cpu: servers.cpu(),
        }
    }

    /// Waits until the last call of every partition is in the table, then reads the figures
    /// (before the process is stopped, so its shutdown is not counted) and checks every row.
    pub async fn until_landed(
        self,
        pool: &sqlx::PgPool,
        keys: &LandedKeys,
        process: &mut BenchProcess,
        started: Instant,
    ) -> anyhow::Result<MethodFigures> {
        let deadline = started + Duration::from_secs(1800);
        let mut first: Option<(Instant, usize)> = None;
        let partitions = keys.last[0].len();
        let done_at = loop {
            if first.is_none() && LandedKeys::present(pool, &keys.first).await? > 0 {
                // the first batch is in: how much of it (once, while the table is small)
                first = Some((Instant::now(), count_rows(pool).await?));
            }
            if first.is_some() && LandedKeys::present(pool, &keys.last).await? >= partitions {
                break Instant::now();
            }
            process.check_running()?;
            if Instant::now() > deadline {
                bail!("no drain within 30 minutes");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let process_cpu = process.cpu_secs();
        let peak_rss_bytes = process.peak_rss_bytes();
        let (postgres, broker) = self.servers.cpu();
        let (postgres, broker) = (
            delta(postgres, self.start_cpu.0),
            delta(broker, self.start_cpu.1),
        );
        let own = (self.name, Some(process.pid()), process_cpu);
        let conditions = self
            .window
            .close(&self.servers.measured(own, postgres, broker));
        let rows = count_rows(pool).await?;
        if rows != keys.rows {
            bail!(
                "the table holds {rows} rows once every partition's last call landed, not {}",
                keys.rows
            );
        }
        let (first_at, first_rows) = first.context("no batch was ever committed")?;
        let steady_secs = done_at.duration_since(first_at).as_secs_f64().max(1e-3);
        let total_secs = done_at.duration_since(started).as_secs_f64().max(1e-3);
        Ok(MethodFigures {
            rows,
            seconds_to_last_row: total_secs,
            steady_rows_per_sec: rows.saturating_sub(first_rows) as f64 / steady_secs,
            rows_per_sec_from_start: rows as f64 / total_secs,
            process_cpu_secs: process_cpu,
            postgres_cpu_secs: postgres,
            broker_cpu_secs: broker,
            peak_rss_bytes,
            conditions,
        })
    }
}

/// Measures a method run inside this process or by a child it waits for (psql): the CPU of
/// `own` (`this process` or its reaped children), Postgres's, and the conditions.
pub struct InlineWatch {
    name: &'static str,
    window: MeasurementWindow,
    servers: Servers,
    start_cpu: (Option<f64>, Option<f64>),
    start_own: proc_usage::ProcTimes,
}

/// Whose CPU an [`InlineWatch`] counts as the method's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnCpu {
    /// this process's threads (the sink's store path, run in this process)
    ThisProcess,
    /// the children this process waited for meanwhile (a psql it ran)
    ReapedChildren,
}

impl InlineWatch {
    pub fn start(name: &'static str, servers: &Servers) -> Self {
        InlineWatch {
            name,
            window: MeasurementWindow::open(),
            servers: *servers,
            start_cpu: servers.cpu(),
            start_own: proc_usage::proc_times(std::process::id()).unwrap_or_default(),
        }
    }

    pub fn finish(
        self,
        own: OwnCpu,
        rows: usize,
        seconds: f64,
        peak_rss_bytes: u64,
    ) -> MethodFigures {
        let now = proc_usage::proc_times(std::process::id()).unwrap_or_default();
        let ticks = match own {
            OwnCpu::ThisProcess => now.own.saturating_sub(self.start_own.own),
            OwnCpu::ReapedChildren => now
                .reaped_children
                .saturating_sub(self.start_own.reaped_children),
        };
        let own_cpu = ticks as f64 / proc_usage::ticks_per_sec();
        let postgres = delta(self.servers.cpu().0, self.start_cpu.0);
        let pid = match own {
            OwnCpu::ThisProcess => Some(std::process::id()),
            OwnCpu::ReapedChildren => None,
        };
        let conditions = self.window.close(&self.servers.measured(
            (self.name, pid, own_cpu),
            postgres,
            None,
        ));
        let seconds = seconds.max(1e-9);
        MethodFigures {
            rows,
            seconds_to_last_row: seconds,
            steady_rows_per_sec: rows as f64 / seconds,
            rows_per_sec_from_start: rows as f64 / seconds,
            process_cpu_secs: own_cpu,
            postgres_cpu_secs: postgres,
            broker_cpu_secs: None,
            peak_rss_bytes,
            conditions,
        }
    }
}

/// The peak RSS of this process's children named `name` (a psql it runs), polled from a
/// thread until [`ChildPeakRss::stop`].
pub struct ChildPeakRss {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl ChildPeakRss {
    pub fn watch(name: &'static str) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let me = std::process::id();
        let thread = std::thread::spawn(move || {
            let mut peak = 0u64;
            while !flag.load(Ordering::Relaxed) {
                for (pid, t) in proc_usage::all_processes() {
                    if t.ppid == me && proc_usage::comm(pid) == name {
                        peak = peak.max(proc_usage::status_bytes(pid, "VmHWM").unwrap_or(0));
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        });
        ChildPeakRss { stop, thread }
    }

    pub fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_partition_has_its_first_and_last_call() {
        let calls: Vec<CallRecord> = (0..30)
            .map(|i| callsync_processors::synthetic::call_record(i, 1))
            .collect();
        let keys = LandedKeys::new(&calls, 12);
        assert_eq!(keys.first[2].len(), 12);
        assert_eq!(keys.first[2][0], calls[0].call_id);
        // 30 calls in 12 partitions: the last of partition 5 is call 29, of partition 6 call 18
        assert_eq!(keys.last[2].len(), 12);
        assert!(keys.last[2].contains(&calls[29].call_id));
        assert!(keys.last[2].contains(&calls[18].call_id));
        assert_eq!(coordinates(29, 12), (5, 2));
    }
}
