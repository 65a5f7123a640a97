//! `callsync sink rewind`: move the sink's offsets in Postgres (`callsync_offsets`, the
//! sink's source of truth) back to a point in time, so the sink re-applies `calls` from there.
//! Re-applying is harmless: the upsert's version guard keeps the newest version of each call.
//!
//! - The offset of each partition at the time comes from `offsets_for_times` on the topic
//!   (end of the partition when no record is that new), clamped to the watermarks.
//! - A rewind only moves offsets back: a partition whose stored offset is already before the
//!   time keeps it (moving it forward would skip records the sink never applied). A partition
//!   without a row keeps having none (the sink then reads it from the beginning).
//! - All rows change in one Postgres transaction, under `SELECT ... FOR UPDATE`.
//! - The sink group must have no members (checked with the group's description). A sink
//!   instance that starts during the rewind cannot undo it: its next batch's compare-and-set on
//!   `callsync_offsets` finds the moved offset and reloads.
//! - Afterwards the same offsets are committed to Kafka for the group, so lag tools agree
//!   (best effort: Postgres is what the sink reads).

use std::collections::BTreeMap;
use std::io::Write;

use callsync_runtime::{names, Isolation, KafkaClientFactory};
use chrono::{DateTime, Utc};
use rdkafka::consumer::BaseConsumer;
use serde::Serialize;
use sqlx::PgPool;

use super::group::describe_group;
use super::offsets::{commit_offsets, offsets_for_time, topic_partitions, watermarks, Watermarks};
use super::table::{opt_cell, TextTable};
use super::time::datetime_arg;
use super::{blocking, OpsError, DEFAULT_KAFKA_TIMEOUT};

/// The sink's consumer group (sinks' default `group`).
pub const SINK_GROUP: &str = "callsync-sink";

/// `callsync sink rewind`: re-apply `calls` to Postgres from a point in time.
#[derive(Debug, Clone, clap::Args)]
pub struct SinkRewindArgs {
    /// Re-apply records from this time on (RFC 3339, or YYYY-MM-DDTHH:MM:SS in UTC).
    #[arg(long, value_parser = datetime_arg)]
    pub to_datetime: DateTime<Utc>,
    /// Show the plan, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The sink's consumer group.
    #[arg(long, default_value = SINK_GROUP)]
    pub group: String,
    /// The topic the sink reads (default: `calls` with the configured prefix).
    #[arg(long)]
    pub topic: Option<String>,
}

/// One partition of a rewind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RewindMove {
    pub partition: i32,
    pub watermarks: Watermarks,
    /// `next_offset` stored before (None: no row).
    pub stored: Option<i64>,
    /// The first offset at or after the time.
    pub at_time: i64,
    /// `next_offset` after (None: still no row).
    pub new: Option<i64>,
}

impl RewindMove {
    pub fn changed(&self) -> bool {
        self.stored != self.new
    }
}

/// What `sink rewind` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SinkRewindReport {
    pub group: String,
    pub topic: String,
    pub to_datetime: DateTime<Utc>,
    pub dry_run: bool,
    pub applied: bool,
    pub partitions: Vec<RewindMove>,
    /// Set when the Kafka commit for lag tools failed (Postgres was updated regardless).
    pub kafka_commit_warning: Option<String>,
}

impl SinkRewindReport {
    pub fn write_table(&self, out: &mut impl Write) -> std::io::Result<()> {
        let verb = if self.applied {
            "rewound"
        } else {
            "would rewind (dry run, nothing changed)"
        };
        writeln!(
            out,
            "sink group {} on {} {verb} to {} (callsync_offsets in Postgres)",
            self.group,
            self.topic,
            self.to_datetime.to_rfc3339()
        )?;
        let mut table = TextTable::new([
            "partition",
            "low",
            "high",
            "stored",
            "at-time",
            "new",
            "lag-before",
            "lag-after",
        ]);
        for m in &self.partitions {
            let high = m.watermarks.high;
            table.row([
                m.partition.to_string(),
                m.watermarks.low.to_string(),
                high.to_string(),
                opt_cell(m.stored),
                m.at_time.to_string(),
                opt_cell(m.new),
                opt_cell(m.stored.map(|s| (high - s).max(0))),
                opt_cell(m.new.map(|n| (high - n).max(0))),
            ]);
        }
        table.write_to(out)?;
        if self.partitions.iter().any(|m| m.stored.is_none()) {
            writeln!(
                out,
                "partitions without a stored offset keep none: the sink reads them from the beginning"
            )?;
        }
        if let Some(w) = &self.kafka_commit_warning {
            writeln!(out, "warning: {w}")?;
        }
        Ok(())
    }
}

/// Runs `callsync sink rewind` against the sink's database `pool`.
pub async fn run_sink_rewind(
    args: &SinkRewindArgs,
    factory: &KafkaClientFactory,
    pool: &PgPool,
    out: &mut impl Write,
) -> Result<SinkRewindReport, OpsError> {
    let topic = args
        .topic
        .clone()
        .unwrap_or_else(|| factory.settings().topic(names::CALLS));
    let consumer: BaseConsumer = factory.create(
        "sink rewind consumer",
        &factory.consumer_config(&args.group, Isolation::ReadCommitted),
    )?;
    let consumer = std::sync::Arc::new(consumer);
    let (group, at, dry_run) = (args.group.clone(), args.to_datetime, args.dry_run);

    let planning = {
        let (consumer, group, topic) = (consumer.clone(), group.clone(), topic.clone());
        blocking("sink rewind: reading Kafka offsets", move || {
            let timeout = DEFAULT_KAFKA_TIMEOUT;
            let description = describe_group(&consumer, &group, timeout)?;
            if !dry_run {
                description.ensure_inactive()?;
            }
            let partitions = topic_partitions(&consumer, &topic, timeout)?;
            let marks = watermarks(&consumer, &topic, &partitions, timeout)?;
            let by_time = offsets_for_time(&consumer, &topic, &partitions, at, &marks, timeout)?;
            Ok((marks, by_time))
        })
    };
    let (marks, by_time) = planning.await?;

    let mut tx = pool
        .begin()
        .await
        .map_err(|e| OpsError::postgres("starting the sink rewind transaction", e))?;
    let stored: BTreeMap<i32, i64> = sqlx::query_as::<_, (i32, i64)>(
        "SELECT partition, next_offset FROM callsync_offsets \
         WHERE consumer_group = $1 AND topic = $2 ORDER BY partition FOR UPDATE",
    )
    .bind(&group)
    .bind(&topic)
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| {
        OpsError::postgres(
            format!("locking callsync_offsets of group {group:?} topic {topic:?}"),
            e,
        )
    })?
    .into_iter()
    .collect();

    let moves: Vec<RewindMove> = marks
        .iter()
        .map(|(&partition, &w)| {
            let at_time = w.clamp(by_time.get(&partition).copied().unwrap_or(w.high));
            let before = stored.get(&partition).copied();
            RewindMove {
                partition,
                watermarks: w,
                stored: before,
                at_time,
                new: before.map(|s| s.min(at_time)),
            }
        })
        .collect();

    let mut applied = false;
    if !dry_run {
        for m in moves.iter().filter(|m| m.changed()) {
            let Some(new) = m.new else { continue };
            sqlx::query(
                "UPDATE callsync_offsets SET next_offset = $4, updated_at = now() \
                 WHERE consumer_group = $1 AND topic = $2 AND partition = $3",
            )
            .bind(&group)
            .bind(&topic)
            .bind(m.partition)
            .bind(new)
            .execute(&mut *tx)
            .await
            .map_err(|e| {
                OpsError::postgres(
                    format!(
                        "rewinding callsync_offsets of group {group:?} {topic:?}/{} to {new}",
                        m.partition
                    ),
                    e,
                )
            })?;
        }
        tx.commit()
            .await
            .map_err(|e| OpsError::postgres("committing the sink rewind", e))?;
        applied = true;
    } else {
        tx.rollback()
            .await
            .map_err(|e| OpsError::postgres("ending the dry-run transaction", e))?;
    }

    let mut kafka_commit_warning = None;
    let changed: BTreeMap<i32, i64> = moves
        .iter()
        .filter(|m| m.changed())
        .filter_map(|m| m.new.map(|n| (m.partition, n)))
        .collect();
    if applied && !changed.is_empty() {
        let (group2, topic2) = (group.clone(), topic.clone());
        let committed = blocking("sink rewind: committing Kafka offsets", move || {
            commit_offsets(&consumer, &group2, &topic2, &changed)
        })
        .await;
        if let Err(e) = committed {
            kafka_commit_warning = Some(format!(
                "Postgres was rewound, but the Kafka offsets (for lag tools only) were not: {e}"
            ));
        }
    }

    let report = SinkRewindReport {
        group,
        topic,
        to_datetime: at,
        dry_run,
        applied,
        partitions: moves,
        kafka_commit_warning,
    };
    report.write_table(out)?;
    Ok(report)
}
