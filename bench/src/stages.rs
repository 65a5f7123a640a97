//! `sink` and `processor`: each crate's bench support and the processes the benchmark runs
//! (the sink role, the Debezium peer), turned into figures with their targets from design.md.

use std::time::Duration;

use anyhow::Context;
use callsync_processors::bench_support::{bench_processor, ProcessorBenchOptions};
use callsync_processors::synthetic::call_record;
use callsync_runtime::{
    ensure_catalogue, names, CatalogueOptions, KafkaClientFactory, KafkaSettings,
};
use callsync_schemas::CallRecord;
use callsync_sinks::bench_support::{self, Measurement, RowByRowCommit};
use callsync_sinks::{CallStore, PgStore, SinkRow, SourceRecord};
use callsync_testkit::{PgDurability, PgServer};
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use serde_json::json;

use crate::debezium_peer::{self, PeerConfig, PeerTarget};
use crate::report::{BenchOutcome, Figure};
use crate::sink_drain::{
    self, ChildPeakRss, InlineWatch, LandedKeys, MethodFigures, OwnCpu, Servers,
};
use crate::{proc_usage, services, sink_role};

/// Partitions of the sink benchmark's topics.
const SINK_PARTITIONS: i32 = 12;
/// Our sink's batch bound in rows (the store path's batches; the peer's `batch.size`).
const SINK_BATCH_ROWS: usize = 10_000;

pub async fn sink(rows: usize) -> anyhow::Result<BenchOutcome> {
    // Everything a measurement needs is set up first: the peer's jars, a Postgres cluster,
    // both topics filled. Then each method runs on its own from an empty table.
    let plugin_path = debezium_peer::fetch().context("fetching Kafka Connect and Debezium")?;
    // Postgres as production runs it (fsync and synchronous_commit on): what each method
    // pays per commit is part of what is compared
    let server = PgServer::start_throwaway_with(PgDurability::Production)
        .await
        .context("starting a PostgreSQL cluster with production durability")?;
    let db = server
        .create_database()
        .await
        .context("creating the benchmark database")?;
    let store = PgStore::connect(&db.url, 4, callsync_sinks::pg_store::DEFAULT_COPY_THRESHOLD)
        .await
        .context("connecting the sink's store")?;
    store.migrate().await.context("migrating the database")?;

    let bootstrap = services::kafka_bootstrap()?;
    let servers = Servers {
        postgres: server.data_dir().and_then(proc_usage::postmaster_pid),
        broker: proc_usage::port_of(&bootstrap).and_then(proc_usage::pid_listening_on),
    };
    let mut settings = KafkaSettings::plaintext(&bootstrap);
    settings.topic_prefix = format!("bench-sink-{}.", uuid::Uuid::new_v4().simple());
    let factory = KafkaClientFactory::new(settings.clone());
    let options = CatalogueOptions {
        call_partitions: SINK_PARTITIONS,
        calls_retention_days: 1,
    };
    ensure_catalogue(&factory, &options, Duration::from_secs(30)).await?;
    let calls: Vec<CallRecord> = (0..rows).map(|i| call_record(i as u64, 1)).collect();
    let keys = LandedKeys::new(&calls, SINK_PARTITIONS);
    let role_topic = settings.topic(names::CALLS);
    eprintln!("bench: producing {rows} calls for the sink role and {rows} for the peer");
    sink_role::produce_partitioned(&factory, &role_topic, &calls, SINK_PARTITIONS)?;
    let peer_topic = settings.topic("calls.connect-json");
    create_topic(&factory, &peer_topic, SINK_PARTITIONS).await?;
    debezium_peer::produce(&factory, &peer_topic, &calls, SINK_PARTITIONS)?;
    let sink_rows: Vec<SinkRow> = calls
        .iter()
        .enumerate()
        .map(|(i, call)| {
            let (partition, offset) = sink_drain::coordinates(i, SINK_PARTITIONS);
            SinkRow::new(
                call.clone(),
                SourceRecord {
                    partition,
                    offset,
                    key: None,
                    payload: None,
                },
            )
        })
        .collect();
    drop(calls);
    let work = tempfile::tempdir()?;

    // 1. psql's staging COPY + INSERT ON CONFLICT of the same rows (the baseline)
    eprintln!("bench: psql");
    let psql_rss = ChildPeakRss::watch("psql");
    let watch = InlineWatch::start("psql", &servers);
    let m = bench_support::measure_psql_copy(&store, &db.url, &role_topic, &sink_rows, work.path())
        .await?;
    let psql = watch.finish(OwnCpu::ReapedChildren, m.rows, m.seconds, psql_rss.stop());

    // 2. the sink's store path, in this process (no Kafka)
    eprintln!("bench: the sink's store path");
    let watch = InlineWatch::start("sink store path (this process)", &servers);
    let m =
        bench_support::measure_sink_drain(&store, &role_topic, &sink_rows, SINK_BATCH_ROWS).await?;
    let store_path = watch.finish(OwnCpu::ThisProcess, m.rows, m.seconds, 0);

    // 3. the row-by-row baselines, on fewer rows (they are slow)
    eprintln!("bench: row by row");
    let row_by_row_rows = (rows / 100).clamp(500, 5_000).min(rows);
    let batched_row_by_row_rows = (rows / 10).clamp(1_000, 20_000).min(rows);
    let row_by_row = bench_support::measure_row_by_row(
        &store,
        &role_topic,
        &sink_rows[..row_by_row_rows],
        RowByRowCommit::PerRow,
    )
    .await?;
    let row_by_row_batched = bench_support::measure_row_by_row(
        &store,
        &role_topic,
        &sink_rows[..batched_row_by_row_rows],
        RowByRowCommit::PerBatch(SINK_BATCH_ROWS),
    )
    .await?;
    drop(sink_rows);

    // 4. the sink role process, from Kafka
    eprintln!("bench: the sink role");
    sink_drain::empty_table(&db.pool).await?;
    let role = sink_role::drain(
        &db.pool,
        &db.url,
        &bootstrap,
        &settings.topic_prefix,
        SINK_PARTITIONS,
        &keys,
        &servers,
    )
    .await?;

    // 5. the peer: Kafka Connect with the Debezium JDBC sink, from Kafka
    eprintln!("bench: Kafka Connect with the Debezium JDBC sink");
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let peer_config = PeerConfig {
        tasks: cores,
        batch_rows: SINK_BATCH_ROWS,
    };
    sink_drain::empty_table(&db.pool).await?;
    let target = PeerTarget {
        bootstrap: &bootstrap,
        topic: &peer_topic,
        database_url: &db.url,
        plugin_path: &plugin_path,
    };
    let peer = debezium_peer::drain(&db.pool, &target, &keys, &servers, &peer_config).await?;
    sink_drain::empty_table(&db.pool).await?;
    drop(store);
    db.drop_database()
        .await
        .context("dropping the benchmark database")?;

    Ok(sink_outcome(SinkResults {
        rows,
        psql,
        store_path,
        row_by_row,
        row_by_row_batched,
        role,
        peer,
        peer_config: peer_config.describe(),
    }))
}

/// Every method's figures from one sink run.
struct SinkResults {
    rows: usize,
    psql: MethodFigures,
    store_path: MethodFigures,
    row_by_row: Measurement,
    row_by_row_batched: Measurement,
    role: MethodFigures,
    peer: MethodFigures,
    peer_config: String,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1024.0 / 1024.0
}

fn sink_outcome(r: SinkResults) -> BenchOutcome {
    let rows = r.rows;
    let psql_rate = r.psql.steady_rows_per_sec.max(1e-9);
    let store_vs_psql = r.store_path.steady_rows_per_sec / psql_rate;
    let role_vs_psql = r.role.steady_rows_per_sec / psql_rate;
    let role_vs_peer = r.role.steady_rows_per_sec / r.peer.steady_rows_per_sec.max(1e-9);
    let peer_vs_psql = r.peer.steady_rows_per_sec / psql_rate;
    let store_rate = r.store_path.steady_rows_per_sec;
    let vs_row_by_row = store_rate / r.row_by_row.rows_per_sec.max(1e-9);
    let vs_row_by_row_batched = store_rate / r.row_by_row_batched.rows_per_sec.max(1e-9);
    let total_cpu = |m: &MethodFigures| {
        m.process_cpu_secs + m.postgres_cpu_secs.unwrap_or(0.0) + m.broker_cpu_secs.unwrap_or(0.0)
    };
    let figure = |name: String, target: &str, measured: String, baseline: String| Figure {
        benchmark: "sink".into(),
        name,
        target: target.into(),
        measured,
        baseline,
        ratio: None,
        met: None,
    };
    let figures = vec![
        Figure {
            ratio: Some(store_vs_psql),
            met: Some(store_vs_psql >= 0.9),
            ..figure(
                format!("upsert rows/s vs psql staging COPY + INSERT ON CONFLICT ({rows} rows)"),
                ">= 0.90 x psql",
                format!("{store_rate:.0}/s"),
                format!("{psql_rate:.0}/s psql"),
            )
        },
        Figure {
            ratio: Some(vs_row_by_row),
            met: Some(vs_row_by_row >= 10.0),
            ..figure(
                format!(
                    "upsert rows/s vs row-by-row upsert, a commit per row ({} rows)",
                    r.row_by_row.rows
                ),
                ">= 10 x row-by-row",
                format!("{store_rate:.0}/s"),
                format!("{:.0}/s row-by-row", r.row_by_row.rows_per_sec),
            )
        },
        Figure {
            ratio: Some(vs_row_by_row_batched),
            ..figure(
                format!(
                    "upsert rows/s vs row-by-row upsert in 10,000-row transactions ({} rows)",
                    r.row_by_row_batched.rows
                ),
                "- (generous variant of the row-by-row baseline)",
                format!("{store_rate:.0}/s"),
                format!(
                    "{:.0}/s row-by-row, batched",
                    r.row_by_row_batched.rows_per_sec
                ),
            )
        },
        Figure {
            ratio: Some(role_vs_psql),
            met: Some(role_vs_psql >= 1.0),
            ..figure(
                format!(
                    "sink role process (callsync run --roles sink) draining {rows} records \
                     from Kafka, steady rows/s vs psql (`sink_role_vs_psql`)"
                ),
                ">= 1.0 x psql",
                format!("{:.0}/s", r.role.steady_rows_per_sec),
                format!("{psql_rate:.0}/s psql"),
            )
        },
        Figure {
            ratio: Some(role_vs_peer),
            ..figure(
                format!(
                    "sink role vs Kafka Connect + Debezium JDBC sink draining the same {rows} \
                     calls (JSON with schema), steady rows/s (`sink_role_vs_debezium`)"
                ),
                "reported (peer: see below)",
                format!("{:.0}/s", r.role.steady_rows_per_sec),
                format!(
                    "{:.0}/s Debezium ({peer_vs_psql:.2} x psql)",
                    r.peer.steady_rows_per_sec
                ),
            )
        },
        Figure {
            ratio: Some(r.peer.seconds_to_last_row / r.role.seconds_to_last_row.max(1e-9)),
            ..figure(
                "time from process start to the last row: sink role vs Debezium (ratio: \
                 Debezium's time / ours) vs psql"
                    .into(),
                "reported",
                format!("{:.1} s sink role", r.role.seconds_to_last_row),
                format!(
                    "{:.1} s Debezium, {:.1} s psql",
                    r.peer.seconds_to_last_row, r.psql.seconds_to_last_row
                ),
            )
        },
        Figure {
            ratio: Some(total_cpu(&r.peer) / total_cpu(&r.role).max(1e-9)),
            ..figure(
                "CPU seconds to the last row, the process + Postgres + broker (ratio: \
                 Debezium's / ours)"
                    .into(),
                "reported",
                format!(
                    "sink role {:.1} s ({:.1} + Postgres {:.1} + broker {:.1})",
                    total_cpu(&r.role),
                    r.role.process_cpu_secs,
                    r.role.postgres_cpu_secs.unwrap_or(0.0),
                    r.role.broker_cpu_secs.unwrap_or(0.0)
                ),
                format!(
                    "Debezium {:.1} s ({:.1} + Postgres {:.1} + broker {:.1}); psql {:.1} s \
                     ({:.1} + Postgres {:.1})",
                    total_cpu(&r.peer),
                    r.peer.process_cpu_secs,
                    r.peer.postgres_cpu_secs.unwrap_or(0.0),
                    r.peer.broker_cpu_secs.unwrap_or(0.0),
                    total_cpu(&r.psql),
                    r.psql.process_cpu_secs,
                    r.psql.postgres_cpu_secs.unwrap_or(0.0)
                ),
            )
        },
        Figure {
            ratio: Some(r.peer.peak_rss_bytes as f64 / (r.role.peak_rss_bytes.max(1)) as f64),
            ..figure(
                "peak RSS: sink role process vs the Connect worker (ratio: Connect's / ours)"
                    .into(),
                "-",
                format!("{:.0} MiB sink role", mib(r.role.peak_rss_bytes)),
                format!(
                    "{:.0} MiB Kafka Connect, {:.0} MiB psql",
                    mib(r.peer.peak_rss_bytes),
                    mib(r.psql.peak_rss_bytes)
                ),
            )
        },
        figure(
            "the peer's configuration".into(),
            "fair: batch = our batch bound, tasks = cores",
            r.peer_config.clone(),
            "-".into(),
        ),
        figure(
            "conditions of each measurement (load average; other processes' CPU)".into(),
            "-",
            format!(
                "psql: {}; sink role: {}; Debezium: {}",
                r.psql.conditions.summary(),
                r.role.conditions.summary(),
                r.peer.conditions.summary()
            ),
            "-".into(),
        ),
    ];
    BenchOutcome {
        name: "sink".into(),
        figures,
        json: json!({
            "rows": rows,
            "partitions": SINK_PARTITIONS,
            "sink_role_vs_psql": role_vs_psql,
            "sink_role_vs_debezium": role_vs_peer,
            "debezium_vs_psql": peer_vs_psql,
            "sink_store_vs_psql": store_vs_psql,
            "sink_store_vs_row_by_row": vs_row_by_row,
            "sink_store_vs_row_by_row_batched": vs_row_by_row_batched,
            "psql": r.psql,
            "sink_store": r.store_path,
            "row_by_row": r.row_by_row,
            "row_by_row_batched": r.row_by_row_batched,
            "sink_role": r.role,
            "debezium": r.peer,
            "debezium_config": r.peer_config,
        }),
        conditions: None,
    }
}

/// A plain topic of `partitions` partitions (the peer's JSON records).
async fn create_topic(
    factory: &KafkaClientFactory,
    name: &str,
    partitions: i32,
) -> anyhow::Result<()> {
    let admin = factory.admin()?;
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let results = admin
        .create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .with_context(|| format!("creating {name}"))?;
    for r in results {
        if let Err((topic, code)) = r {
            anyhow::bail!("creating {topic}: {code}");
        }
    }
    Ok(())
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
