//! Runs the processor benchmark against `KAFKA_BOOTSTRAP` and prints one JSON line.
//!
//! `KAFKA_BOOTSTRAP=127.0.0.1:19092 cargo run --release -p callsync-processors --example processor_bench -- [records] [restore_keys]`

use callsync_processors::bench_support::{bench_processor, ProcessorBenchOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP").map_err(|_| "KAFKA_BOOTSTRAP is not set")?;
    let mut args = std::env::args().skip(1);
    let mut options = ProcessorBenchOptions::default();
    if let Some(records) = args.next() {
        options.records = records.parse()?;
    }
    if let Some(keys) = args.next() {
        options.restore_keys = keys.parse()?;
    }
    let result = bench_processor(&bootstrap, options).await?;
    println!("{}", result.to_json());
    Ok(())
}
