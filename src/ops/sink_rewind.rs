//! `callsync sink rewind`: move the sink's offsets in Postgres (`callsync_offsets`, the
//! sink's source of truth) back to a point in time (or to the earliest retained record), so
//! the sink re-applies `calls` from there. Re-applying is harmless: the upsert's version guard
//! keeps the newest version of each call.
//!
//! - The offset of each partition at the time comes from `offsets_for_times` on the topic
//!   (end of the partition when no record is that new), clamped to the watermarks;
//!   `--to-earliest` takes the low watermark.
//! - A rewind only moves offsets back: a partition whose stored offset is already before the
//!   target keeps it (moving it forward would skip records the sink never applied). A
//!   partition without a row keeps having none (the sink then reads it from the beginning).
//! - Except a stored offset that does not fit the partition (the sink stops such a
//!   partition: the topic was recreated, so the offset belongs to another topic id or lies
//!   past the end, or retention deleted records before it): it moves to the target, forward
//!   if need be, and takes the topic's current id. This is the fix the sink's error names.
//! - Moved rows get `backfill_until` = the partition's end, so `callsync status` shows them
//!   backfilling until the sink has re-applied up to there.
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
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Serialize;
use sqlx::PgPool;

use super::group::describe_group;
use super::offsets::{
    commit_offsets, offsets_for_time, select_partitions, topic_partitions, watermarks, Watermarks,
};
use super::table::{opt_cell, TextTable};
use super::time::datetime_arg;
use super::{blocking, OpsError, DEFAULT_KAFKA_TIMEOUT};
use callsync_sinks::{classify, PartitionRange, PartitionStart, StoredOffset, TopicSnapshot};

/// The sink's consumer group (sinks' default `group`).
pub const SINK_GROUP: &str = "callsync-sink";

/// `callsync sink rewind`: re-apply `calls` to Postgres from a point in time.
#[derive(Debug, Clone, clap::Args)]
#[command(group(
    clap::ArgGroup::new("target")
        .required(true)
        .args(["to_datetime", "to_earliest"])
))]
pub struct SinkRewindArgs {
    /// Re-apply records from this time on (RFC 3339, or YYYY-MM-DDTHH:MM:SS in UTC).
    #[arg(long, value_parser = datetime_arg)]
    pub to_datetime: Option<DateTime<Utc>>,
    /// Re-apply from the earliest record each partition still holds.
    #[arg(long)]
    pub to_earliest: bool,
    /// Only these partitions (comma-separated); default all.
    #[arg(long, value_delimiter = ',')]
    pub partitions: Vec<i32>,
    /// Show the plan, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The sink's consumer group (default: the config's `sink.group`, else `callsync-sink`).
    #[arg(long)]
    pub group: Option<String>,
    /// The topic the sink reads (default: the config's `sink.topic`, else `calls` with the
    /// configured prefix).
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
    /// Why the stored offset does not fit the partition, when it does not (it then moves to
    /// the target even if that is forward).
    pub misfit: Option<String>,
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
    /// The time rewound to; None for `--to-earliest`.
    pub to_datetime: Option<DateTime<Utc>>,
    /// The topic's id, stored with the moved offsets (None: the cluster gave none).
    pub topic_id: Option<String>,
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
        let target = self.to_datetime.map_or_else(
            || "the earliest retained records".to_string(),
            |t| t.to_rfc3339(),
        );
        writeln!(
            out,
            "sink group {} on {} {verb} to {target} (callsync_offsets in Postgres)",
            self.group, self.topic,
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
            "note",
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
                m.misfit.clone().unwrap_or_else(|| "-".into()),
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
    let group = args.group.clone().unwrap_or_else(|| SINK_GROUP.to_string());
    let consumer: BaseConsumer = factory.create(
        "sink rewind consumer",
        &factory.consumer_config(&group, Isolation::ReadCommitted),
    )?;
    let consumer = std::sync::Arc::new(consumer);
    let (at, dry_run) = (args.to_datetime, args.dry_run);
    let wanted = args.partitions.clone();

    let planning = {
        let (consumer, group, topic) = (consumer.clone(), group.clone(), topic.clone());
        blocking("sink rewind: reading Kafka offsets", move || {
            let timeout = DEFAULT_KAFKA_TIMEOUT;
            let description = describe_group(&consumer, &group, timeout)?;
            if !dry_run {
                description.ensure_inactive()?;
            }
            let all = topic_partitions(&consumer, &topic, timeout)?;
            let partitions = select_partitions(&topic, &all, &wanted)?;
            let marks = watermarks(&consumer, &topic, &partitions, timeout)?;
            let by_time = match at {
                Some(at) => offsets_for_time(&consumer, &topic, &partitions, at, &marks, timeout)?,
                None => marks.iter().map(|(&p, w)| (p, w.low)).collect(),
            };
            let topic_id = callsync_runtime::topic_id(consumer.client(), &topic, timeout)
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "the topic's id cannot be read; offsets are checked against the partitions' ranges only");
                    None
                });
            Ok((marks, by_time, topic_id))
        })
    };
    let (marks, by_time, topic_id) = planning.await?;

    let mut tx = pool
        .begin()
        .await
        .map_err(|e| OpsError::postgres("starting the sink rewind transaction", e))?;
    let stored: BTreeMap<i32, StoredOffset> = sqlx::query_as::<_, (i32, i64, Option<String>)>(
        "SELECT partition, next_offset, topic_id FROM callsync_offsets \
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
    .map(|(p, next_offset, topic_id)| {
        (
            p,
            StoredOffset {
                next_offset,
                topic_id,
                backfill_until: None,
            },
        )
    })
    .collect();

    let snapshot = TopicSnapshot {
        topic_id: topic_id.clone(),
        ranges: marks
            .iter()
            .map(|(&p, w)| {
                (
                    p,
                    PartitionRange {
                        low: w.low,
                        high: w.high,
                    },
                )
            })
            .collect(),
    };
    let moves: Vec<RewindMove> = marks
        .iter()
        .map(|(&partition, &w)| {
            let at_time = w.clamp(by_time.get(&partition).copied().unwrap_or(w.high));
            let row = stored.get(&partition);
            let misfit = match classify(&group, &topic, partition, row, &snapshot) {
                PartitionStart::Stopped(stop) => Some(stop.summary()),
                _ => None,
            };
            let before = row.map(|s| s.next_offset);
            RewindMove {
                partition,
                watermarks: w,
                stored: before,
                at_time,
                new: match (before, &misfit) {
                    (None, _) => None,
                    (Some(_), Some(_)) => Some(at_time),
                    (Some(s), None) => Some(s.min(at_time)),
                },
                misfit,
            }
        })
        .collect();

    let mut applied = false;
    if !dry_run {
        for m in moves.iter().filter(|m| m.changed() || m.misfit.is_some()) {
            let Some(new) = m.new else { continue };
            sqlx::query(
                "UPDATE callsync_offsets SET next_offset = $4, updated_at = now(), \
                 topic_id = COALESCE($5, topic_id), backfill_until = $6 \
                 WHERE consumer_group = $1 AND topic = $2 AND partition = $3",
            )
            .bind(&group)
            .bind(&topic)
            .bind(m.partition)
            .bind(new)
            .bind(topic_id.as_deref())
            .bind(m.watermarks.high)
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
        topic_id,
        dry_run,
        applied,
        partitions: moves,
        kafka_commit_warning,
    };
    report.write_table(out)?;
    Ok(report)
}
