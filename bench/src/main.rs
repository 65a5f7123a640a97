//! `cargo run --release -p callsync-bench -- NAME`: one benchmark with its
//! baseline side by side in the same run, ending with one JSON line of figures.
//! `all` runs every benchmark in turn and writes docs/benchmarks.md.

mod bench_topics;
mod connector;
mod debezium_peer;
mod measurement_window;
mod pipeline;
mod proc_usage;
mod report;
mod services;
mod sink_drain;
mod sink_role;
mod stages;
mod topic_times;
mod webhook;

use clap::{Parser, ValueEnum};

use report::BenchOutcome;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Benchmark {
    /// Postgres sink vs psql's staging COPY + INSERT ON CONFLICT and vs row-by-row upserts.
    Sink,
    /// Processor records/s through validate + dedup + transactional produce; state restore.
    Processor,
    /// A backfill against the simulator at 600 requests/min: share of the rate-limit ceiling.
    Connector,
    /// The whole pipeline calls.raw -> Postgres vs a plain Kafka read; peak RSS.
    Pipeline,
    /// Signed webhooks at 500/s -> Postgres commit latency, zero loss; read API p99 under load.
    Webhook,
    /// Every benchmark in turn; writes docs/benchmarks.md.
    All,
}

#[derive(Debug, Parser)]
#[command(
    name = "callsync-bench",
    about = "callsync's benchmarks, each against its baseline"
)]
struct Args {
    benchmark: Benchmark,
    /// Scale: records (pipeline, processor) or rows (sink). Default per benchmark.
    #[arg(long)]
    records: Option<usize>,
    /// Duration of time-bound benchmarks (connector, webhook), in seconds.
    #[arg(long)]
    seconds: Option<u64>,
    /// Calls of the backfill whose `callsync` process's peak RSS is measured (connector:
    /// the connector role; pipeline: all roles). Default 1,000,000.
    #[arg(long)]
    calls: Option<u64>,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The latency benchmark first: the others leave gigabytes of deleted topics that the
    // broker removes from disk a minute later (`file.delete.delay.ms`), and a 2.2 GB database
    // to drop, whose I/O stalled the whole machine under a webhook run that followed them.
    let all = [
        Benchmark::Webhook,
        Benchmark::Sink,
        Benchmark::Processor,
        Benchmark::Connector,
        Benchmark::Pipeline,
    ];
    let chosen: Vec<Benchmark> = if args.benchmark == Benchmark::All {
        all.to_vec()
    } else {
        vec![args.benchmark]
    };
    // built (or found fresh) before anything is measured, and handed to the benchmarks that
    // `all` runs as processes of their own: no cargo runs beside a measurement
    let callsync_bin = services::prepare_callsync_binary()?;
    let mut outcomes: Vec<BenchOutcome> = Vec::new();
    let mut failures: Vec<(String, String)> = Vec::new();
    for bench in chosen {
        let name = format!("{bench:?}").to_lowercase();
        eprintln!("bench: running {name}");
        let result = if args.benchmark == Benchmark::All {
            if !outcomes.is_empty() || !failures.is_empty() {
                settle();
            }
            // each benchmark in a process of its own, so peak RSS is its own
            let (started, load_before) = (chrono::Utc::now(), report::load_average());
            run_in_child(&name, &args, &callsync_bin).map(|mut outcome| {
                let load = |l: Option<f64>| l.map_or("?".to_string(), |l| format!("{l:.1}"));
                outcome.conditions = Some(format!(
                    "{}-{}, load {} -> {}",
                    started.format("%H:%M"),
                    chrono::Utc::now().format("%H:%M"),
                    load(load_before),
                    load(report::load_average()),
                ));
                outcome
            })
        } else {
            let before =
                services::kafka_bootstrap().and_then(|b| bench_topics::TopicsBefore::snapshot(&b));
            let result = match bench {
                Benchmark::Sink => stages::sink(args.records.unwrap_or(200_000)).await,
                Benchmark::Processor => stages::processor(args.records.unwrap_or(1_000_000)).await,
                Benchmark::Connector => {
                    connector::run(
                        args.seconds.unwrap_or(60),
                        args.calls.unwrap_or(connector::DEFAULT_MEMORY_CALLS),
                    )
                    .await
                }
                Benchmark::Pipeline => {
                    pipeline::run(
                        args.records.unwrap_or(200_000),
                        args.calls.unwrap_or(connector::DEFAULT_MEMORY_CALLS),
                    )
                    .await
                }
                Benchmark::Webhook => webhook::run(args.seconds.unwrap_or(60)).await,
                Benchmark::All => unreachable_all(),
            };
            match before {
                Ok(before) => match before.delete_created().await {
                    Ok(n) => eprintln!("bench: deleted the {n} topics {name} created"),
                    Err(e) => eprintln!("bench: leaving {name}'s topics: {e:#}"),
                },
                Err(e) => eprintln!("bench: not cleaning up topics: {e:#}"),
            }
            result
        };
        match result {
            Ok(outcome) => {
                println!("{}", outcome.json_line());
                outcomes.push(outcome);
            }
            Err(e) => {
                eprintln!("bench: {name} failed: {e:#}");
                failures.push((name, format!("{e:#}")));
            }
        }
    }
    if args.benchmark == Benchmark::All {
        let path = services::repo_root().join("docs/benchmarks.md");
        let md = report::markdown(
            &outcomes,
            &failures,
            &services::machine(),
            "cargo run --release -p callsync-bench -- all",
        );
        std::fs::write(&path, md)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    }
    if failures.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{} benchmark(s) failed", failures.len())
    }
}

/// Between two benchmarks of `all`: wait (at most 2 minutes) until the 1-minute load average
/// is under the number of cores, so that one benchmark's aftermath (the broker deleting the
/// gigabytes of topics the previous one wrote, compactions, Postgres checkpoints) does not
/// land on the next one's figures.
fn settle() {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as f64;
    let started = std::time::Instant::now();
    let limit = std::time::Duration::from_secs(120);
    std::thread::sleep(std::time::Duration::from_secs(10));
    while let Some(load) = report::load_average() {
        if load < cores || started.elapsed() >= limit {
            eprintln!(
                "bench: settled for {:.0} s (load {load:.1}, {cores} cores)",
                started.elapsed().as_secs_f64()
            );
            return;
        }
        std::thread::sleep(std::time::Duration::from_secs(5));
    }
}

/// Run one benchmark as a child process of this binary and read back its JSON line.
fn run_in_child(
    name: &str,
    args: &Args,
    callsync_bin: &std::path::Path,
) -> anyhow::Result<BenchOutcome> {
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg(name).env(services::CALLSYNC_BIN_ENV, callsync_bin);
    if let Some(r) = args.records {
        cmd.arg("--records").arg(r.to_string());
    }
    if let Some(s) = args.seconds {
        cmd.arg("--seconds").arg(s.to_string());
    }
    if let Some(c) = args.calls {
        cmd.arg("--calls").arg(c.to_string());
    }
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| anyhow::anyhow!("starting the {name} benchmark: {e}"))?;
    if !out.status.success() {
        anyhow::bail!("the {name} benchmark exited with {}", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| anyhow::anyhow!("the {name} benchmark printed no JSON line"))?;
    report::BenchOutcome::from_json_line(line)
}

fn unreachable_all() -> anyhow::Result<BenchOutcome> {
    anyhow::bail!("`all` is expanded before dispatch")
}
