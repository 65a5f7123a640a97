//! The sink benchmark on its own (the lead wires the same functions into
//! `callsync-bench -- sink`):
//!
//! `DATABASE_URL=postgres://... cargo run --release -p callsync-sinks --example sink_bench -- [ROWS] [ROW_BY_ROW_ROWS]`
//!
//! Prints one JSON line of [`callsync_sinks::bench_support::SinkBenchReport`].

use callsync_sinks::bench_support::run_sink_benchmark;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url =
        std::env::var("DATABASE_URL").map_err(|_| "set DATABASE_URL to a Postgres database")?;
    let mut args = std::env::args().skip(1);
    let rows: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(200_000);
    let row_by_row: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(20_000);
    let dir = tempfile::tempdir()?;
    let report = run_sink_benchmark(&url, rows, row_by_row, 10_000, 1_000, dir.path()).await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
