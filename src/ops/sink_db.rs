//! The sink's database as the operations commands see it: where each partition of `calls`
//! stands (live, backfilling, stopped: [`callsync_sinks::classify`], as the sink decides it)
//! and the dead letters kept there.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use callsync_runtime::{names, KafkaClientFactory};
use callsync_sinks::{
    classify, CallStore, DeadLetterCounts, PartitionRange, PartitionStart, SinkConfig,
    StoredOffset, TopicSnapshot,
};
use serde::Serialize;

use super::offsets::Watermarks;
use super::table::{opt_cell, TextTable};
use super::OpsError;

/// The sink's store with the group and topic whose offsets and dead letters it holds.
#[derive(Debug, Clone)]
pub struct SinkDatabase {
    pub store: Arc<dyn CallStore>,
    pub group: String,
    pub topic: String,
}

impl SinkDatabase {
    /// Connects to `config.database_url` (no migrations: `callsync db migrate` does them).
    pub async fn connect(
        config: &SinkConfig,
        factory: &KafkaClientFactory,
    ) -> Result<Self, OpsError> {
        let store = callsync_sinks::connect_store(config)
            .await
            .map_err(|e| OpsError::Usage(format!("connecting to the sink's database: {e}")))?;
        Ok(SinkDatabase {
            store,
            group: config.group.clone(),
            topic: config
                .topic
                .clone()
                .unwrap_or_else(|| factory.settings().topic(names::CALLS)),
        })
    }
}

/// One partition of the sink's topic, as its database has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SinkPartitionStatus {
    pub partition: i32,
    pub low: i64,
    pub high: i64,
    /// `next_offset` in `callsync_offsets` (None: no row yet).
    pub stored: Option<i64>,
    /// `live`, `backfilling` (read from the earliest record, not at the end it had then
    /// yet), `not_started` (no row: the sink reads it from the earliest record; an empty
    /// partition without a row is `live`) or `stopped`.
    pub state: String,
    /// Offsets left before a backfill is done.
    pub backfill_remaining: Option<i64>,
    /// For a stopped partition: the sink's error, with the command that resolves it.
    pub detail: Option<String>,
}

/// The sink's partitions and dead letters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SinkStatus {
    pub group: String,
    pub topic: String,
    pub topic_id: Option<String>,
    pub partitions: Vec<SinkPartitionStatus>,
    pub dead_letters: DeadLetterCounts,
}

impl SinkStatus {
    pub fn backfilling(&self) -> usize {
        self.partitions
            .iter()
            .filter(|p| p.state == "backfilling" || p.state == "not_started")
            .count()
    }

    pub fn stopped(&self) -> usize {
        self.partitions
            .iter()
            .filter(|p| p.state == "stopped")
            .count()
    }
}

/// What the database holds, read before the Kafka side.
#[derive(Debug, Clone)]
pub(crate) struct SinkRows {
    pub stored: BTreeMap<i32, StoredOffset>,
    pub dead_letters: DeadLetterCounts,
}

impl SinkDatabase {
    pub(crate) async fn rows(&self) -> Result<SinkRows, OpsError> {
        let fail = |what: &str, e: callsync_sinks::StoreError| {
            OpsError::Usage(format!(
                "reading {what} of sink group {:?} on {:?} from the sink's database: {e}",
                self.group, self.topic
            ))
        };
        Ok(SinkRows {
            stored: self
                .store
                .load_partition_offsets(&self.group, &self.topic)
                .await
                .map_err(|e| fail("callsync_offsets", e))?,
            dead_letters: self
                .store
                .count_dead_letters(&self.group, &self.topic)
                .await
                .map_err(|e| fail("callsync_dead_letters", e))?,
        })
    }
}

/// The sink's status from its rows and the topic as Kafka has it now.
pub(crate) fn sink_status(
    db: &SinkDatabase,
    rows: &SinkRows,
    marks: &BTreeMap<i32, Watermarks>,
    topic_id: Option<String>,
) -> SinkStatus {
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
    let partitions = marks
        .iter()
        .map(|(&partition, w)| {
            let stored = rows.stored.get(&partition);
            let (state, backfill_remaining, detail) =
                match classify(&db.group, &db.topic, partition, stored, &snapshot) {
                    // an empty partition gets no row until its first record: nothing to read
                    PartitionStart::Backfill { .. } if w.high <= w.low => ("live", None, None),
                    PartitionStart::Backfill { from, .. } => {
                        ("not_started", Some(w.high - from.unwrap_or(w.low)), None)
                    }
                    PartitionStart::Resume {
                        backfill_until: Some(until),
                        next_offset,
                    } => ("backfilling", Some(until - next_offset), None),
                    PartitionStart::Resume { .. } => ("live", None, None),
                    PartitionStart::Stopped(stop) => ("stopped", None, Some(stop.to_string())),
                };
            SinkPartitionStatus {
                partition,
                low: w.low,
                high: w.high,
                stored: stored.map(|s| s.next_offset),
                state: state.to_string(),
                backfill_remaining,
                detail,
            }
        })
        .collect();
    SinkStatus {
        group: db.group.clone(),
        topic: db.topic.clone(),
        topic_id,
        partitions,
        dead_letters: rows.dead_letters,
    }
}

pub(crate) fn write_sink_status(sink: &SinkStatus, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "SINK PARTITIONS (group {}, topic {}, offsets in the sink's database)",
        sink.group, sink.topic
    )?;
    let mut table = TextTable::new(["partition", "low", "high", "stored", "state", "to-backfill"]);
    for p in &sink.partitions {
        table.row([
            p.partition.to_string(),
            p.low.to_string(),
            p.high.to_string(),
            opt_cell(p.stored),
            p.state.clone(),
            opt_cell(p.backfill_remaining),
        ]);
    }
    table.write_to(out)?;
    for p in sink.partitions.iter().filter_map(|p| p.detail.as_ref()) {
        writeln!(out, "STOPPED: {p}")?;
    }
    writeln!(
        out,
        "sink dead letters: {} kept, {} pending redrive, {} not yet in the DLQ topic",
        sink.dead_letters.total, sink.dead_letters.pending, sink.dead_letters.unpublished
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn db() -> SinkDatabase {
        // sink_status uses only the names
        let store: Arc<dyn CallStore> = Arc::new(
            callsync_sinks::SqliteStore::open(":memory:")
                .await
                .expect("sqlite"),
        );
        SinkDatabase {
            store,
            group: "callsync-sink".into(),
            topic: "calls".into(),
        }
    }

    #[tokio::test]
    async fn partitions_are_judged_as_the_sink_judges_them() {
        let stored = |next: i64, until: Option<i64>, id: &str| StoredOffset {
            next_offset: next,
            topic_id: Some(id.to_string()),
            backfill_until: until,
        };
        let rows = SinkRows {
            stored: BTreeMap::from([
                (0, stored(100, None, "A")),
                (1, stored(40, Some(90), "A")),
                (3, stored(500, None, "A")),
            ]),
            dead_letters: DeadLetterCounts::default(),
        };
        let mut marks: BTreeMap<i32, Watermarks> = (0..4)
            .map(|p| (p, Watermarks { low: 0, high: 100 }))
            .collect();
        marks.insert(4, Watermarks { low: 7, high: 7 });
        let status = sink_status(&db().await, &rows, &marks, Some("A".into()));
        let states: Vec<(&str, Option<i64>)> = status
            .partitions
            .iter()
            .map(|p| (p.state.as_str(), p.backfill_remaining))
            .collect();
        assert_eq!(
            states,
            [
                ("live", None),
                ("backfilling", Some(50)),
                ("not_started", Some(100)),
                ("stopped", None),
                ("live", None)
            ]
        );
        assert!(status.partitions[3]
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("--to-earliest --partitions 3")));
        assert_eq!((status.backfilling(), status.stopped()), (2, 1));
        let mut out = Vec::new();
        write_sink_status(&status, &mut out).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(
            text.contains("SINK PARTITIONS") && text.contains("STOPPED: topic calls partition 3"),
            "{text}"
        );
    }
}
