//! The processor's verdict loop in memory (decode, version check, validate and normalize,
//! fingerprint; no Kafka) over `N` synthetic records, each call twice, as the processor
//! benchmark's first step runs it. For instruction counts that do not depend on the machine's
//! load: `valgrind --tool=callgrind target/release/examples/verdict_loop 20000`.

use callsync_processors::bench_support::measure_in_memory_pipeline;

fn main() -> anyhow::Result<()> {
    let records: usize = match std::env::args().nth(1) {
        Some(n) => n
            .parse()
            .map_err(|e| anyhow::anyhow!("records {n:?}: {e}"))?,
        None => 200_000,
    };
    let distinct = records.div_ceil(2).max(1) as u64;
    let rate = measure_in_memory_pipeline(records, move |i| i as u64 % distinct)?;
    println!("{{\"records\":{records},\"records_per_sec\":{rate:.0}}}");
    Ok(())
}
