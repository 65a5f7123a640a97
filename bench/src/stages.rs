//! `sink` and `processor`: thin wrappers over each crate's bench support, turned
//! into figures with their targets from design.md.

use anyhow::Context;
use callsync_processors::bench_support::{bench_processor, ProcessorBenchOptions};
use callsync_testkit::{PgDurability, PgServer};
use serde_json::json;

use crate::report::{BenchOutcome, Figure};
use crate::services;
use crate::sink_role;

pub async fn sink(rows: usize) -> anyhow::Result<BenchOutcome> {
    // Postgres as production runs it (fsync and synchronous_commit on): what each method
    // pays per commit is part of what is compared
    let server = PgServer::start_throwaway_with(PgDurability::Production)
        .await
        .context("starting a PostgreSQL cluster with production durability")?;
    let db = server
        .create_database()
        .await
        .context("creating the benchmark database")?;
    let work = tempfile::tempdir()?;
    let row_by_row_rows = (rows / 100).clamp(500, 5_000);
    let batched_row_by_row_rows = (rows / 10).clamp(1_000, 20_000);
    let r = callsync_sinks::bench_support::run_sink_benchmark(
        &db.url,
        rows,
        row_by_row_rows,
        batched_row_by_row_rows,
        10_000,
        callsync_sinks::pg_store::DEFAULT_COPY_THRESHOLD,
        work.path(),
    )
    .await?;
    let role = sink_role::drain(&db.url, &db.pool, rows, 12).await?;
    let role_vs_psql = role.steady_rows_per_sec / r.psql_copy.rows_per_sec;
    let role_rss_mib = role.peak_rss_bytes as f64 / 1024.0 / 1024.0;
    Ok(BenchOutcome {
        name: "sink".into(),
        figures: vec![
            Figure {
                benchmark: "sink".into(),
                name: format!(
                    "upsert rows/s vs psql staging COPY + INSERT ON CONFLICT ({rows} rows)"
                ),
                target: ">= 0.90 x psql".into(),
                measured: format!("{:.0}/s", r.sink.rows_per_sec),
                baseline: format!("{:.0}/s psql", r.psql_copy.rows_per_sec),
                ratio: Some(r.sink_vs_psql),
                met: Some(r.sink_vs_psql >= 0.9),
            },
            Figure {
                benchmark: "sink".into(),
                name: format!(
                    "upsert rows/s vs row-by-row upsert, a commit per row ({row_by_row_rows} rows)"
                ),
                target: ">= 10 x row-by-row".into(),
                measured: format!("{:.0}/s", r.sink.rows_per_sec),
                baseline: format!("{:.0}/s row-by-row", r.row_by_row.rows_per_sec),
                ratio: Some(r.sink_vs_row_by_row),
                met: Some(r.sink_vs_row_by_row >= 10.0),
            },
            Figure {
                benchmark: "sink".into(),
                name: format!(
                    "upsert rows/s vs row-by-row upsert in 10,000-row transactions \
                     ({batched_row_by_row_rows} rows)"
                ),
                target: "- (generous variant of the row-by-row baseline)".into(),
                measured: format!("{:.0}/s", r.sink.rows_per_sec),
                baseline: format!(
                    "{:.0}/s row-by-row, batched",
                    r.row_by_row_batched.rows_per_sec
                ),
                ratio: Some(r.sink_vs_row_by_row_batched),
                met: None,
            },
            Figure {
                benchmark: "sink".into(),
                name: format!(
                    "sink role process (callsync run --roles sink) draining {rows} records \
                     from Kafka, steady rows/s vs psql"
                ),
                target: ">= 0.90 x psql".into(),
                measured: format!("{:.0}/s", role.steady_rows_per_sec),
                baseline: format!("{:.0}/s psql", r.psql_copy.rows_per_sec),
                ratio: Some(role_vs_psql),
                met: Some(role_vs_psql >= 0.9),
            },
            Figure {
                benchmark: "sink".into(),
                name: "peak RSS of the sink role process".into(),
                target: "-".into(),
                measured: format!("{role_rss_mib:.0} MiB"),
                baseline: "-".into(),
                ratio: None,
                met: None,
            },
        ],
        json: json!({ "store": serde_json::to_value(&r)?, "sink_role": serde_json::to_value(&role)? }),
        conditions: None,
    })
}

pub async fn processor(records: usize) -> anyhow::Result<BenchOutcome> {
    let bootstrap = services::kafka_bootstrap()?;
    let options = ProcessorBenchOptions {
        records,
        restore_keys: 1_000_000,
        ..ProcessorBenchOptions::default()
    };
    let r = bench_processor(&bootstrap, options).await?;
    let raw: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap_or_else(|_| json!({}));
    Ok(BenchOutcome {
        name: "processor".into(),
        figures: vec![
            Figure {
                benchmark: "processor".into(),
                name: format!(
                    "records/s through validate + dedup + transactional produce ({} records)",
                    r.records
                ),
                target: ">= 100,000/s".into(),
                measured: format!("{:.0}/s", r.processor_records_per_sec),
                baseline: format!(
                    "{:.0}/s plain idempotent produce",
                    r.produce_records_per_sec
                ),
                ratio: Some(r.processor_records_per_sec / r.produce_records_per_sec.max(1e-9)),
                met: Some(r.processor_records_per_sec >= 100_000.0),
            },
            Figure {
                benchmark: "processor".into(),
                name: format!("dedup state restore, {} keys", r.restore_keys),
                target: "< 5 s for 1M keys".into(),
                measured: format!("{:.2} s", r.restore_secs),
                baseline: "-".into(),
                ratio: None,
                met: Some(r.restore_keys >= 1_000_000 && r.restore_secs < 5.0),
            },
            Figure {
                benchmark: "processor".into(),
                name: "dedup state memory per key".into(),
                target: "measured and reported".into(),
                measured: format!(
                    "{:.0} B (estimate), {:.0} B (RSS delta)",
                    r.state_bytes_per_key_estimate, r.state_bytes_per_key_rss
                ),
                baseline: "-".into(),
                ratio: None,
                met: None,
            },
        ],
        json: raw,
        conditions: None,
    })
}
