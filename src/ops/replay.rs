//! `callsync replay`: reset a consumer group's offsets on a topic, like Kafka's
//! `kafka-consumer-groups --reset-offsets`, for analytics groups that must re-read data.
//!
//! - The group must be inactive (no members): the command describes the group first and
//!   refuses otherwise. Its members would overwrite the new offsets with their next commit.
//! - New offsets are clamped to each partition's `[low, high]` watermarks.
//! - `--to-datetime`: `offsets_for_times`; a partition with no record at or after the time
//!   goes to its end (nothing to replay there), as Kafka's tool does.
//! - `--shift-by N`: from the committed offset (a partition without one counts from its low
//!   watermark, which is where a consumer with `auto.offset.reset=earliest` would start).
//! - The offsets are committed by a client of the group that never joins it (assign-free
//!   simple commit), then read back and shown.

use std::collections::BTreeMap;
use std::io::Write;

use callsync_runtime::{Isolation, KafkaClientFactory};
use chrono::{DateTime, Utc};
use clap::ArgGroup;
use rdkafka::consumer::BaseConsumer;
use serde::Serialize;

use super::group::{describe_group, GroupDescription};
use super::offsets::{
    commit_offsets, committed_offsets, offsets_for_time, select_partitions, topic_partitions,
    watermarks, Watermarks,
};
use super::table::{opt_cell, TextTable};
use super::time::datetime_arg;
use super::{blocking, OpsError, DEFAULT_KAFKA_TIMEOUT};

/// `callsync replay`: move a consumer group's offsets on one topic.
#[derive(Debug, Clone, clap::Args)]
#[command(group(
    ArgGroup::new("target")
        .required(true)
        .args(["to_datetime", "to_offset", "shift_by", "to_earliest", "to_latest"])
))]
pub struct ReplayArgs {
    /// The consumer group whose offsets move (it must have no active members).
    #[arg(long)]
    pub group: String,
    /// The topic: a callsync base name (`calls`; the configured prefix is added) or a full
    /// name. The command says which it used.
    #[arg(long)]
    pub topic: String,
    /// Move to the first record at or after this time (RFC 3339, or YYYY-MM-DDTHH:MM:SS in UTC).
    #[arg(long, value_parser = datetime_arg)]
    pub to_datetime: Option<DateTime<Utc>>,
    /// Move every selected partition to this offset (clamped to the partition's range).
    #[arg(long)]
    pub to_offset: Option<i64>,
    /// Move by N records from the committed offset (negative goes back).
    #[arg(long, allow_hyphen_values = true)]
    pub shift_by: Option<i64>,
    /// Move to the oldest record still held.
    #[arg(long)]
    pub to_earliest: bool,
    /// Move to the end (skip everything not read yet).
    #[arg(long)]
    pub to_latest: bool,
    /// Only these partitions (comma-separated); default all.
    #[arg(long, value_delimiter = ',')]
    pub partitions: Vec<i32>,
    /// Show the plan, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Where `replay` moves the offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum ReplayTarget {
    DateTime(DateTime<Utc>),
    Offset(i64),
    ShiftBy(i64),
    Earliest,
    Latest,
}

impl std::fmt::Display for ReplayTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplayTarget::DateTime(t) => write!(f, "to date-time {}", t.to_rfc3339()),
            ReplayTarget::Offset(o) => write!(f, "to offset {o}"),
            ReplayTarget::ShiftBy(n) => write!(f, "shift by {n}"),
            ReplayTarget::Earliest => f.write_str("to earliest"),
            ReplayTarget::Latest => f.write_str("to latest"),
        }
    }
}

impl ReplayArgs {
    /// The one target the arguments name.
    pub fn target(&self) -> Result<ReplayTarget, OpsError> {
        let mut targets = Vec::new();
        if let Some(t) = self.to_datetime {
            targets.push(ReplayTarget::DateTime(t));
        }
        if let Some(o) = self.to_offset {
            targets.push(ReplayTarget::Offset(o));
        }
        if let Some(n) = self.shift_by {
            targets.push(ReplayTarget::ShiftBy(n));
        }
        if self.to_earliest {
            targets.push(ReplayTarget::Earliest);
        }
        if self.to_latest {
            targets.push(ReplayTarget::Latest);
        }
        match targets.as_slice() {
            [one] => Ok(*one),
            _ => Err(OpsError::Usage(
                "give exactly one of --to-datetime, --to-offset, --shift-by, --to-earliest, \
                 --to-latest"
                    .to_string(),
            )),
        }
    }
}

/// One partition's move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionMove {
    pub partition: i32,
    pub watermarks: Watermarks,
    /// The committed offset before (None: the group had none).
    pub current: Option<i64>,
    /// The offset committed (or, in a dry run, that would be).
    pub new: i64,
    pub lag_before: Option<i64>,
    pub lag_after: i64,
}

/// What `replay` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    pub group: String,
    pub topic: String,
    pub target: ReplayTarget,
    pub dry_run: bool,
    /// True when the new offsets were committed (and read back).
    pub applied: bool,
    /// The group's state when the command ran.
    pub group_state: String,
    pub partitions: Vec<PartitionMove>,
}

impl ReplayReport {
    /// The new offset of each partition.
    pub fn new_offsets(&self) -> BTreeMap<i32, i64> {
        self.partitions
            .iter()
            .map(|m| (m.partition, m.new))
            .collect()
    }

    /// Writes the before/after table.
    pub fn write_table(&self, out: &mut impl Write) -> std::io::Result<()> {
        let verb = if self.applied {
            "moved"
        } else {
            "would move (dry run, nothing changed)"
        };
        writeln!(
            out,
            "group {} on topic {} {verb}: {}",
            self.group, self.topic, self.target
        )?;
        write_moves_table(&self.partitions, out)
    }
}

pub(crate) fn write_moves_table(
    moves: &[PartitionMove],
    out: &mut impl Write,
) -> std::io::Result<()> {
    let mut table = TextTable::new([
        "partition",
        "low",
        "high",
        "current",
        "new",
        "lag-before",
        "lag-after",
    ]);
    for m in moves {
        table.row([
            m.partition.to_string(),
            m.watermarks.low.to_string(),
            m.watermarks.high.to_string(),
            opt_cell(m.current),
            m.new.to_string(),
            opt_cell(m.lag_before),
            m.lag_after.to_string(),
        ]);
    }
    table.write_to(out)
}

/// Computes each partition's new offset for `target`, clamped to its watermarks.
pub fn plan_moves(
    target: ReplayTarget,
    marks: &BTreeMap<i32, Watermarks>,
    committed: &BTreeMap<i32, i64>,
    by_time: &BTreeMap<i32, i64>,
) -> Vec<PartitionMove> {
    marks
        .iter()
        .map(|(&partition, &w)| {
            let current = committed.get(&partition).copied();
            let wanted = match target {
                ReplayTarget::DateTime(_) => by_time.get(&partition).copied().unwrap_or(w.high),
                ReplayTarget::Offset(o) => o,
                ReplayTarget::ShiftBy(n) => current.unwrap_or(w.low).saturating_add(n),
                ReplayTarget::Earliest => w.low,
                ReplayTarget::Latest => w.high,
            };
            let new = w.clamp(wanted);
            PartitionMove {
                partition,
                watermarks: w,
                current,
                new,
                lag_before: current.map(|c| (w.high - c).max(0)),
                lag_after: (w.high - new).max(0),
            }
        })
        .collect()
}

/// Runs `callsync replay` and writes the before/after table to `out`.
pub async fn run_replay(
    args: &ReplayArgs,
    factory: &KafkaClientFactory,
    out: &mut impl Write,
) -> Result<ReplayReport, OpsError> {
    let target = args.target()?;
    let consumer: BaseConsumer = factory.create(
        "replay consumer",
        &factory.consumer_config(&args.group, Isolation::ReadCommitted),
    )?;
    let named = super::TopicName::resolve(factory.settings(), &args.topic);
    eprintln!("replay: {named}");
    let (group, topic, wanted, dry_run) = (
        args.group.clone(),
        named.full,
        args.partitions.clone(),
        args.dry_run,
    );
    let report = blocking("replay", move || {
        reset_group_offsets(&consumer, &group, &topic, &wanted, target, dry_run)
    })
    .await?;
    report.write_table(out)?;
    if report.dry_run && report.group_state != "Empty" && report.group_state != "Dead" {
        writeln!(
            out,
            "note: group {} is {}; a real run is refused until its consumers stop",
            report.group, report.group_state
        )?;
    }
    Ok(report)
}

/// The blocking core of `replay` (also used by tests through [`run_replay`]).
pub fn reset_group_offsets(
    consumer: &BaseConsumer,
    group: &str,
    topic: &str,
    wanted_partitions: &[i32],
    target: ReplayTarget,
    dry_run: bool,
) -> Result<ReplayReport, OpsError> {
    let timeout = DEFAULT_KAFKA_TIMEOUT;
    let description: GroupDescription = describe_group(consumer, group, timeout)?;
    if !dry_run {
        description.ensure_inactive()?;
    }
    let all = topic_partitions(consumer, topic, timeout)?;
    let partitions = select_partitions(topic, &all, wanted_partitions)?;
    let marks = watermarks(consumer, topic, &partitions, timeout)?;
    let committed = committed_offsets(consumer, group, topic, &partitions, timeout)?;
    let by_time = match target {
        ReplayTarget::DateTime(at) => {
            offsets_for_time(consumer, topic, &partitions, at, &marks, timeout)?
        }
        _ => BTreeMap::new(),
    };
    let mut moves = plan_moves(target, &marks, &committed, &by_time);
    let mut applied = false;
    if !dry_run {
        let new: BTreeMap<i32, i64> = moves.iter().map(|m| (m.partition, m.new)).collect();
        commit_offsets(consumer, group, topic, &new).map_err(|e| {
            // a member that joined after the check makes the broker refuse the simple commit
            match describe_group(consumer, group, timeout) {
                Ok(d) if d.is_active() => d.ensure_inactive().err().unwrap_or(e),
                _ => e,
            }
        })?;
        let stored = committed_offsets(consumer, group, topic, &partitions, timeout)?;
        for m in &mut moves {
            if let Some(&s) = stored.get(&m.partition) {
                m.new = s;
                m.lag_after = (m.watermarks.high - s).max(0);
            }
        }
        applied = true;
    }
    Ok(ReplayReport {
        group: group.to_string(),
        topic: topic.to_string(),
        target,
        dry_run,
        applied,
        group_state: description.state,
        partitions: moves,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        replay: ReplayArgs,
    }

    #[test]
    fn exactly_one_target_is_required() {
        assert!(Cli::try_parse_from(["x", "--group", "g", "--topic", "t"]).is_err());
        assert!(Cli::try_parse_from([
            "x",
            "--group",
            "g",
            "--topic",
            "t",
            "--to-earliest",
            "--to-latest"
        ])
        .is_err());
        let cli = Cli::try_parse_from([
            "x",
            "--group",
            "g",
            "--topic",
            "t",
            "--shift-by",
            "-5",
            "--partitions",
            "0,2",
        ])
        .unwrap();
        assert_eq!(cli.replay.target().unwrap(), ReplayTarget::ShiftBy(-5));
        assert_eq!(cli.replay.partitions, vec![0, 2]);
        let cli = Cli::try_parse_from([
            "x",
            "--group",
            "g",
            "--topic",
            "t",
            "--to-datetime",
            "2024-05-01T12:00:00Z",
            "--dry-run",
        ])
        .unwrap();
        assert!(matches!(
            cli.replay.target().unwrap(),
            ReplayTarget::DateTime(_)
        ));
        assert!(cli.replay.dry_run);
    }

    #[test]
    fn plan_clamps_to_watermarks_and_computes_lag() {
        let marks = BTreeMap::from([
            (0, Watermarks { low: 10, high: 100 }),
            (1, Watermarks { low: 0, high: 5 }),
        ]);
        let committed = BTreeMap::from([(0, 50)]);
        let moves = plan_moves(
            ReplayTarget::ShiftBy(-45),
            &marks,
            &committed,
            &BTreeMap::new(),
        );
        assert_eq!(moves[0].new, 10, "clamped to low");
        assert_eq!(moves[0].lag_before, Some(50));
        assert_eq!(moves[0].lag_after, 90);
        assert_eq!(moves[1].current, None);
        assert_eq!(moves[1].new, 0, "no commit: shift from low, clamped");
        let moves = plan_moves(
            ReplayTarget::Offset(1_000),
            &marks,
            &committed,
            &BTreeMap::new(),
        );
        assert_eq!((moves[0].new, moves[1].new), (100, 5));
        let by_time = BTreeMap::from([(0, 42)]);
        let moves = plan_moves(
            ReplayTarget::DateTime(Utc::now()),
            &marks,
            &committed,
            &by_time,
        );
        assert_eq!((moves[0].new, moves[1].new), (42, 5), "missing time -> end");
    }
}
