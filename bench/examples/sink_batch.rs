//! The sink role's work between Kafka and Postgres in memory (Avro decode, collapse by key,
//! the binary COPY encoding of each batch of 10,000 records, freeing it) over `N` distinct
//! calls. For instruction counts that do not depend on the machine's load:
//! `valgrind --tool=callgrind target/release/examples/sink_batch 20000`.

use std::time::Instant;

use callsync_processors::synthetic::call_record;
use callsync_schemas::{encode_to_vec, WireFormat};
use callsync_sinks::bench_support::encode_batches_in_memory;

fn main() -> anyhow::Result<()> {
    let records: usize = match std::env::args().nth(1) {
        Some(n) => n
            .parse()
            .map_err(|e| anyhow::anyhow!("records {n:?}: {e}"))?,
        None => 200_000,
    };
    let payloads = (0..records as u64)
        .map(|i| encode_to_vec(&call_record(i, 1), WireFormat::SingleObject))
        .collect::<Result<Vec<_>, _>>()?;
    let started = Instant::now();
    let (bytes, undecodable) = encode_batches_in_memory(&payloads, 10_000);
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(undecodable == 0, "{undecodable} records did not decode");
    println!(
        "{{\"records\":{records},\"copy_bytes\":{bytes},\"records_per_sec\":{:.0}}}",
        records as f64 / secs
    );
    Ok(())
}
