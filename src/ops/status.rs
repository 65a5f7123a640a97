//! `callsync status`: lag per consumer group, topic and partition (with the member holding
//! each partition); the last sync per provider account; provider health; DLQ counts by reason.
//!
//! - Lag: committed offset vs high watermark, for callsync's groups (processor, sink,
//!   workers) and any `--group`, on every callsync topic the group has committed offsets on
//!   or is assigned; each partition with the member that holds it (member id, host, client
//!   id, as `kafka-consumer-groups --describe` shows them).
//! - Members: each member of each group with the partitions assigned to it, so a scale-out
//!   or scale-in shows as partitions moving between members.
//! - Syncs: `callsync.sync-events` is read (its newest `--events-scan-limit` records), the
//!   latest event per sync id is kept, then the latest sync per provider account.
//! - Provider health is derived from those events: `ok` (latest sync completed), `syncing`,
//!   or `failing` with the number of failed syncs in a row and the last error. (The running
//!   service's live probe results are at `/api/providers`.)
//! - DLQ: `calls.dlq` is read up to `--dlq-scan-limit` records (the newest) and counted by
//!   `callsync.error.reason`; `truncated` says when the DLQ holds more.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use callsync_runtime::ReadToEndContext;
use callsync_runtime::{names, Isolation, KafkaClientFactory};
use callsync_schemas::{Provider, RecordDecoder, SyncEvent, SyncEventKind, SyncMode};
use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Serialize;

use super::dlq::message_reason;
use super::group::{describe_group, GroupMember, PartitionOwner};
use super::offsets::{topic_partitions, watermarks, Watermarks};
use super::scan::{records_left, scan_consumer, scan_partitions, Visit, READ_ONLY_GROUP};
use super::sink_db::{sink_status, write_sink_status, SinkDatabase, SinkStatus};
use super::table::{opt_cell, TextTable};
use super::{blocking, OpsError, DEFAULT_KAFKA_TIMEOUT};

/// callsync's own consumer groups (the roles' defaults).
pub const CALLSYNC_GROUPS: [&str; 3] = ["callsync-processor", "callsync-sink", "callsync-workers"];

/// `callsync status`: lag, syncs, provider health, DLQ.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Also show this consumer group (repeatable), e.g. an analytics group reading `calls`.
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// Read at most this many DLQ records to count reasons (the newest).
    #[arg(long, default_value_t = 100_000)]
    pub dlq_scan_limit: u64,
    /// Read at most this many sync events (the newest).
    #[arg(long, default_value_t = 100_000)]
    pub events_scan_limit: u64,
    /// callsync's own groups as configured (`processor.group_id`, `sink.group`,
    /// `workers.group_id`); empty: the roles' default names ([`CALLSYNC_GROUPS`]).
    #[arg(skip)]
    pub own_groups: Vec<String>,
}

/// One partition's lag for a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionLag {
    pub partition: i32,
    pub committed: Option<i64>,
    pub low: i64,
    pub high: i64,
    /// Records left to read after the committed offset (after `low` when nothing is committed):
    /// counted for a tail of up to `EXACT_LAG_TAIL` offsets (transaction markers are no
    /// records), else `high - committed`.
    pub lag: i64,
    /// The member holding the partition, when the group is active and not rebalancing.
    pub owner: Option<PartitionOwner>,
}

/// A group's lag on one topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicLag {
    pub topic: String,
    pub total_lag: i64,
    pub partitions: Vec<PartitionLag>,
}

/// One consumer group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupStatus {
    pub group: String,
    pub state: String,
    /// Members with their assigned partitions per topic.
    pub members: Vec<GroupMember>,
    pub topics: Vec<TopicLag>,
}

/// The latest sync of one provider account.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccountSync {
    pub provider: Provider,
    pub account_id: String,
    pub sync_id: String,
    pub mode: SyncMode,
    pub outcome: SyncEventKind,
    pub records: i64,
    pub rate_per_sec: f64,
    pub at: DateTime<Utc>,
    pub error: Option<String>,
}

/// Health of one provider account, from its syncs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProviderHealthRow {
    pub provider: Provider,
    pub account_id: String,
    /// `ok`, `syncing` or `failing`.
    pub health: String,
    /// Failed syncs in a row, newest first.
    pub consecutive_failures: u32,
    pub last_ok_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

/// DLQ records by reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DlqSummary {
    pub topic: String,
    /// Records held (sum of high - low; transaction markers included).
    pub held: i64,
    pub scanned: u64,
    /// True when the DLQ holds more than was read.
    pub truncated: bool,
    pub by_reason: BTreeMap<String, u64>,
}

/// Everything `status` shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusReport {
    pub generated_at: DateTime<Utc>,
    pub groups: Vec<GroupStatus>,
    pub syncs: Vec<AccountSync>,
    pub providers: Vec<ProviderHealthRow>,
    pub dlq: Option<DlqSummary>,
    /// The sink's partitions and dead letters, from its database (when the config names one).
    pub sink: Option<SinkStatus>,
    /// Parts that could not be read (a missing topic, ...), with why.
    pub problems: Vec<String>,
}

/// Runs `callsync status` (Kafka only).
pub async fn run_status(
    args: &StatusArgs,
    factory: &KafkaClientFactory,
    out: &mut impl Write,
) -> Result<StatusReport, OpsError> {
    run_status_with(args, factory, None, out).await
}

/// Runs `callsync status`, with the sink's partitions and dead letters from `sink`'s
/// database.
pub async fn run_status_with(
    args: &StatusArgs,
    factory: &KafkaClientFactory,
    sink: Option<&SinkDatabase>,
    out: &mut impl Write,
) -> Result<StatusReport, OpsError> {
    let sink_rows = match sink {
        Some(db) => Some(db.rows().await),
        None => None,
    };
    let factory = factory.clone();
    let args_owned = args.clone();
    let sink_topic = sink.map(|db| db.topic.clone());
    let (mut report, sink_topic_state) = blocking("status", move || {
        let report = status_blocking(&args_owned, &factory)?;
        let sink_topic_state = sink_topic.map(|topic| sink_topic_state(&factory, &topic));
        Ok((report, sink_topic_state))
    })
    .await?;
    if let (Some(db), Some(rows), Some(topic_state)) = (sink, sink_rows, sink_topic_state) {
        match (rows, topic_state) {
            (Ok(rows), Ok((marks, topic_id))) => {
                report.sink = Some(sink_status(db, &rows, &marks, topic_id));
            }
            (Err(e), _) | (_, Err(e)) => report.problems.push(e.to_string()),
        }
    }
    if args.json {
        let text = serde_json::to_string_pretty(&report).map_err(|source| OpsError::Json {
            what: "the status report",
            source,
        })?;
        writeln!(out, "{text}")?;
    } else {
        write_status(&report, out)?;
    }
    Ok(report)
}

fn status_blocking(
    args: &StatusArgs,
    factory: &KafkaClientFactory,
) -> Result<StatusReport, OpsError> {
    let timeout = DEFAULT_KAFKA_TIMEOUT;
    let reader = scan_consumer(factory, READ_ONLY_GROUP, Isolation::ReadCommitted)?;
    let mut problems = Vec::new();

    // topics and their watermarks
    let settings = factory.settings();
    let mut topics: BTreeMap<String, BTreeMap<i32, Watermarks>> = BTreeMap::new();
    for base in [
        names::CALLS_RAW,
        names::CALLS,
        names::CALLS_DLQ,
        names::SYNC_REQUESTS,
        names::SYNC_EVENTS,
    ] {
        let topic = settings.topic(base);
        match topic_partitions(&reader, &topic, timeout)
            .and_then(|parts| watermarks(&reader, &topic, &parts, timeout))
        {
            Ok(marks) => {
                topics.insert(topic, marks);
            }
            Err(e) => problems.push(e.to_string()),
        }
    }

    // groups
    let mut group_names: Vec<String> = if args.own_groups.is_empty() {
        CALLSYNC_GROUPS.iter().map(|g| g.to_string()).collect()
    } else {
        args.own_groups.clone()
    };
    for g in &args.groups {
        if !group_names.contains(g) {
            group_names.push(g.clone());
        }
    }
    let mut groups = Vec::new();
    for group in &group_names {
        match group_status(factory, &reader, group, &topics) {
            Ok(g) => groups.push(g),
            Err(e) => problems.push(e.to_string()),
        }
    }

    // syncs and provider health
    let events_topic = settings.topic(names::SYNC_EVENTS);
    let (syncs, providers) = match topics.get(&events_topic) {
        Some(marks) => match latest_syncs(&reader, &events_topic, marks, args.events_scan_limit) {
            Ok(latest) => summarize_syncs(latest),
            Err(e) => {
                problems.push(e.to_string());
                (Vec::new(), Vec::new())
            }
        },
        None => (Vec::new(), Vec::new()),
    };

    // DLQ
    let dlq_topic = settings.topic(names::CALLS_DLQ);
    let dlq = match topics.get(&dlq_topic) {
        Some(marks) => match dlq_summary(&reader, &dlq_topic, marks, args.dlq_scan_limit) {
            Ok(s) => Some(s),
            Err(e) => {
                problems.push(e.to_string());
                None
            }
        },
        None => None,
    };

    Ok(StatusReport {
        generated_at: Utc::now(),
        groups,
        syncs,
        providers,
        dlq,
        sink: None,
        problems,
    })
}

/// The sink topic's ranges and id.
fn sink_topic_state(
    factory: &KafkaClientFactory,
    topic: &str,
) -> Result<(BTreeMap<i32, Watermarks>, Option<String>), OpsError> {
    let timeout = DEFAULT_KAFKA_TIMEOUT;
    let reader = scan_consumer(factory, READ_ONLY_GROUP, Isolation::ReadCommitted)?;
    let partitions = topic_partitions(&reader, topic, timeout)?;
    let marks = watermarks(&reader, topic, &partitions, timeout)?;
    let topic_id = callsync_runtime::topic_id(reader.client(), topic, timeout).unwrap_or(None);
    Ok((marks, topic_id))
}

fn group_status(
    factory: &KafkaClientFactory,
    reader: &BaseConsumer<ReadToEndContext>,
    group: &str,
    topics: &BTreeMap<String, BTreeMap<i32, Watermarks>>,
) -> Result<GroupStatus, OpsError> {
    let timeout = DEFAULT_KAFKA_TIMEOUT;
    let consumer: BaseConsumer = factory.create(
        "status consumer",
        &factory.consumer_config(group, Isolation::ReadCommitted),
    )?;
    let description = describe_group(&consumer, group, timeout)?;
    let mut tpl = TopicPartitionList::new();
    for (topic, marks) in topics {
        for p in marks.keys() {
            tpl.add_partition(topic, *p);
        }
    }
    let committed = if tpl.count() == 0 {
        TopicPartitionList::new()
    } else {
        consumer.committed_offsets(tpl, timeout).map_err(|e| {
            OpsError::kafka(format!("reading offsets committed by group {group:?}"), e)
        })?
    };
    let assigned: BTreeSet<&String> = description
        .members
        .iter()
        .flat_map(|m| m.assignment.keys())
        .collect();
    let mut topic_lags = Vec::new();
    for (topic, marks) in topics {
        let offsets: BTreeMap<i32, i64> = committed
            .elements_for_topic(topic)
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect();
        if offsets.is_empty() && !assigned.contains(topic) {
            continue;
        }
        let gaps: BTreeMap<i32, (i64, i64)> = marks
            .iter()
            .map(|(&p, w)| (p, (offsets.get(&p).copied().unwrap_or(w.low), w.high)))
            .collect();
        let left = records_left(reader, topic, &gaps)?;
        let partitions: Vec<PartitionLag> = marks
            .iter()
            .map(|(&partition, w)| PartitionLag {
                partition,
                committed: offsets.get(&partition).copied(),
                low: w.low,
                high: w.high,
                lag: left.get(&partition).copied().unwrap_or(0),
                owner: description.owner_of(topic, partition),
            })
            .collect();
        topic_lags.push(TopicLag {
            topic: topic.clone(),
            total_lag: partitions.iter().map(|p| p.lag).sum(),
            partitions,
        });
    }
    Ok(GroupStatus {
        group: group.to_string(),
        state: description.state,
        members: description.members,
        topics: topic_lags,
    })
}

/// Start offsets that read the newest `limit` records in total (split evenly).
fn newest_ranges(
    marks: &BTreeMap<i32, Watermarks>,
    limit: u64,
) -> (BTreeMap<i32, (i64, i64)>, bool) {
    let held: i64 = marks.values().map(|w| w.high - w.low).sum();
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    if held <= limit {
        return (
            marks.iter().map(|(p, w)| (*p, (w.low, w.high))).collect(),
            false,
        );
    }
    let per_partition = (limit / marks.len().max(1) as i64).max(1);
    (
        marks
            .iter()
            .map(|(p, w)| (*p, (w.clamp(w.high - per_partition), w.high)))
            .collect(),
        true,
    )
}

fn latest_syncs(
    reader: &BaseConsumer<ReadToEndContext>,
    topic: &str,
    marks: &BTreeMap<i32, Watermarks>,
    limit: u64,
) -> Result<BTreeMap<String, SyncEvent>, OpsError> {
    let decoder: RecordDecoder<SyncEvent> = RecordDecoder::new();
    let (ranges, _) = newest_ranges(marks, limit);
    let mut latest: BTreeMap<String, SyncEvent> = BTreeMap::new();
    scan_partitions(reader, topic, &ranges, super::scan_idle(), |m| {
        if let Some(event) = m.payload().and_then(|v| decoder.decode(v).ok()) {
            let newer = latest
                .get(&event.sync_id)
                .is_none_or(|seen| (seen.at, rank(seen.kind)) <= (event.at, rank(event.kind)));
            if newer {
                latest.insert(event.sync_id.clone(), event);
            }
        }
        Ok(Visit::Continue)
    })?;
    Ok(latest)
}

/// Orders event kinds of one sync at the same instant: an end wins over progress.
fn rank(kind: SyncEventKind) -> u8 {
    match kind {
        SyncEventKind::Started => 0,
        SyncEventKind::Progress => 1,
        SyncEventKind::Completed | SyncEventKind::Failed => 2,
    }
}

/// The latest sync per provider account, and each account's health.
pub fn summarize_syncs(
    latest: BTreeMap<String, SyncEvent>,
) -> (Vec<AccountSync>, Vec<ProviderHealthRow>) {
    let mut by_account: BTreeMap<(String, String), Vec<SyncEvent>> = BTreeMap::new();
    for event in latest.into_values() {
        by_account
            .entry((
                event.provider.as_str().to_string(),
                event.account_id.clone(),
            ))
            .or_default()
            .push(event);
    }
    let mut syncs = Vec::new();
    let mut providers = Vec::new();
    for (_, mut events) in by_account {
        events.sort_by_key(|e| std::cmp::Reverse(e.at)); // newest first
        let Some(newest) = events.first() else {
            continue;
        };
        syncs.push(AccountSync {
            provider: newest.provider,
            account_id: newest.account_id.clone(),
            sync_id: newest.sync_id.clone(),
            mode: newest.mode,
            outcome: newest.kind,
            records: newest.records,
            rate_per_sec: newest.rate_per_sec,
            at: newest.at,
            error: newest.error.clone(),
        });
        let finished: Vec<&SyncEvent> = events
            .iter()
            .filter(|e| matches!(e.kind, SyncEventKind::Completed | SyncEventKind::Failed))
            .collect();
        let consecutive_failures = finished
            .iter()
            .take_while(|e| e.kind == SyncEventKind::Failed)
            .count() as u32;
        let last_ok_at = finished
            .iter()
            .find(|e| e.kind == SyncEventKind::Completed)
            .map(|e| e.at);
        let health = if consecutive_failures > 0 {
            "failing"
        } else if finished.is_empty()
            || matches!(
                newest.kind,
                SyncEventKind::Started | SyncEventKind::Progress
            )
        {
            "syncing"
        } else {
            "ok"
        };
        providers.push(ProviderHealthRow {
            provider: newest.provider,
            account_id: newest.account_id.clone(),
            health: health.to_string(),
            consecutive_failures,
            last_ok_at,
            last_error: finished
                .iter()
                .find(|e| e.kind == SyncEventKind::Failed)
                .and_then(|e| e.error.clone()),
        });
    }
    (syncs, providers)
}

fn dlq_summary(
    reader: &BaseConsumer<ReadToEndContext>,
    topic: &str,
    marks: &BTreeMap<i32, Watermarks>,
    limit: u64,
) -> Result<DlqSummary, OpsError> {
    let (ranges, truncated) = newest_ranges(marks, limit);
    let mut summary = DlqSummary {
        topic: topic.to_string(),
        held: marks.values().map(|w| w.high - w.low).sum(),
        scanned: 0,
        truncated,
        by_reason: BTreeMap::new(),
    };
    scan_partitions(reader, topic, &ranges, super::scan_idle(), |m| {
        summary.scanned += 1;
        *summary.by_reason.entry(message_reason(m)).or_insert(0) += 1;
        Ok(Visit::Continue)
    })?;
    Ok(summary)
}

/// Writes the human tables.
pub fn write_status(report: &StatusReport, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "CONSUMER GROUPS")?;
    let mut lag = TextTable::new([
        "group",
        "state",
        "topic",
        "partition",
        "committed",
        "high",
        "lag",
        "member-id",
        "host",
        "client-id",
    ]);
    for g in &report.groups {
        if g.topics.is_empty() {
            lag.row([
                g.group.clone(),
                g.state.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                format!("{} member(s)", g.members.len()),
                "-".into(),
                "-".into(),
            ]);
        }
        for t in &g.topics {
            for p in &t.partitions {
                let (member, host, client) = match &p.owner {
                    Some(o) => (o.member_id.clone(), o.host.clone(), o.client_id.clone()),
                    None => ("-".into(), "-".into(), "-".into()),
                };
                lag.row([
                    g.group.clone(),
                    g.state.clone(),
                    t.topic.clone(),
                    p.partition.to_string(),
                    opt_cell(p.committed),
                    p.high.to_string(),
                    p.lag.to_string(),
                    member,
                    host,
                    client,
                ]);
            }
            lag.row([
                g.group.clone(),
                g.state.clone(),
                t.topic.clone(),
                "total".to_string(),
                String::new(),
                String::new(),
                t.total_lag.to_string(),
                format!("{} member(s)", g.members.len()),
                String::new(),
                String::new(),
            ]);
        }
    }
    lag.write_to(out)?;

    writeln!(out, "\nGROUP MEMBERS")?;
    let mut members = TextTable::new(["group", "member-id", "host", "client-id", "partitions"]);
    for g in &report.groups {
        for m in &g.members {
            members.row([
                g.group.clone(),
                m.member_id.clone(),
                m.client_host.trim_start_matches('/').to_string(),
                m.client_id.clone(),
                m.assignment_text(),
            ]);
        }
    }
    if members.is_empty() {
        writeln!(out, "(no active members)")?;
    } else {
        members.write_to(out)?;
    }

    writeln!(out, "\nLAST SYNC PER PROVIDER ACCOUNT")?;
    let mut syncs = TextTable::new([
        "provider", "account", "mode", "outcome", "records", "rate/s", "at", "sync id", "error",
    ]);
    for s in &report.syncs {
        syncs.row([
            s.provider.as_str().to_string(),
            s.account_id.clone(),
            s.mode.as_str().to_string(),
            s.outcome.as_str().to_string(),
            s.records.to_string(),
            format!("{:.1}", s.rate_per_sec),
            s.at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            s.sync_id.clone(),
            s.error.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    if syncs.is_empty() {
        writeln!(out, "(no sync events)")?;
    } else {
        syncs.write_to(out)?;
    }

    writeln!(out, "\nPROVIDER HEALTH")?;
    let mut health = TextTable::new([
        "provider",
        "account",
        "health",
        "failures-in-a-row",
        "last-ok",
        "last-error",
    ]);
    for p in &report.providers {
        health.row([
            p.provider.as_str().to_string(),
            p.account_id.clone(),
            p.health.clone(),
            p.consecutive_failures.to_string(),
            opt_cell(p.last_ok_at.map(|t| t.format("%Y-%m-%dT%H:%M:%SZ"))),
            p.last_error.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    if health.is_empty() {
        writeln!(out, "(no syncs seen)")?;
    } else {
        health.write_to(out)?;
    }

    writeln!(out, "\nDLQ")?;
    match &report.dlq {
        Some(d) => {
            let mut reasons = TextTable::new(["reason", "records"]);
            for (reason, n) in &d.by_reason {
                reasons.row([reason.clone(), n.to_string()]);
            }
            reasons.write_to(out)?;
            write!(
                out,
                "{} record(s) read of {} held in {}",
                d.scanned, d.held, d.topic
            )?;
            if d.truncated {
                write!(
                    out,
                    " (TRUNCATED: only the newest were counted; raise --dlq-scan-limit)"
                )?;
            }
            writeln!(out)?;
        }
        None => writeln!(out, "(DLQ topic not found)")?,
    }
    if let Some(sink) = &report.sink {
        writeln!(out)?;
        write_sink_status(sink, out)?;
    }
    for p in &report.problems {
        writeln!(out, "problem: {p}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn event(
        id: &str,
        account: &str,
        kind: SyncEventKind,
        secs: i64,
        error: Option<&str>,
    ) -> SyncEvent {
        SyncEvent {
            sync_id: id.into(),
            provider: Provider::Retreaver,
            account_id: account.into(),
            mode: SyncMode::Incremental,
            kind,
            records: 10,
            pages: 1,
            rate_per_sec: 5.0,
            eta_secs: None,
            error: error.map(str::to_string),
            at: Utc.timestamp_opt(1_700_000_000 + secs, 0).single().unwrap(),
        }
    }

    #[test]
    fn latest_sync_and_health_per_account() {
        let latest = BTreeMap::from([
            (
                "s1".to_string(),
                event("s1", "a", SyncEventKind::Completed, 0, None),
            ),
            (
                "s2".to_string(),
                event("s2", "a", SyncEventKind::Failed, 10, Some("401")),
            ),
            (
                "s3".to_string(),
                event("s3", "a", SyncEventKind::Failed, 20, Some("503")),
            ),
            (
                "s4".to_string(),
                event("s4", "b", SyncEventKind::Completed, 5, None),
            ),
            (
                "s5".to_string(),
                event("s5", "c", SyncEventKind::Progress, 5, None),
            ),
        ]);
        let (syncs, health) = summarize_syncs(latest);
        assert_eq!(syncs.len(), 3);
        assert_eq!(syncs[0].sync_id, "s3");
        assert_eq!(health[0].health, "failing");
        assert_eq!(health[0].consecutive_failures, 2);
        assert_eq!(health[0].last_error.as_deref(), Some("503"));
        assert!(health[0].last_ok_at.is_some());
        assert_eq!(health[1].health, "ok");
        assert_eq!(health[2].health, "syncing");
    }

    #[test]
    fn the_tables_show_which_member_holds_each_partition() {
        let member = |id: &str, client: &str, parts: Vec<i32>| GroupMember {
            member_id: id.into(),
            client_id: client.into(),
            client_host: "/10.0.0.7".into(),
            assignment: BTreeMap::from([("calls".to_string(), parts)]),
        };
        let owner = |id: &str, client: &str| {
            Some(PartitionOwner {
                member_id: id.into(),
                client_id: client.into(),
                host: "10.0.0.7".into(),
            })
        };
        let partition = |p: i32, owner: Option<PartitionOwner>| PartitionLag {
            partition: p,
            committed: Some(10),
            low: 0,
            high: 12,
            lag: 2,
            owner,
        };
        let report = StatusReport {
            generated_at: Utc.timestamp_opt(1_800_000_000, 0).single().unwrap(),
            groups: vec![GroupStatus {
                group: "callsync-sink".into(),
                state: "Stable".into(),
                members: vec![
                    member("sink-1-aaa", "sink-1", vec![0]),
                    member("sink-2-bbb", "sink-2", vec![1]),
                ],
                topics: vec![TopicLag {
                    topic: "calls".into(),
                    total_lag: 4,
                    partitions: vec![
                        partition(0, owner("sink-1-aaa", "sink-1")),
                        partition(1, owner("sink-2-bbb", "sink-2")),
                    ],
                }],
            }],
            syncs: vec![],
            providers: vec![],
            dlq: None,
            sink: None,
            problems: vec![],
        };
        let mut out = Vec::new();
        write_status(&report, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0] == "CONSUMER GROUPS", "{text}");
        assert!(
            lines[1].contains("member-id") && lines[1].contains("client-id"),
            "{text}"
        );
        let row = |needle: &str| {
            lines
                .iter()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("{needle} in {text}"))
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            row("calls  1"),
            [
                "callsync-sink",
                "Stable",
                "calls",
                "1",
                "10",
                "12",
                "2",
                "sink-2-bbb",
                "10.0.0.7",
                "sink-2"
            ]
        );
        let members_at = lines.iter().position(|l| *l == "GROUP MEMBERS").unwrap();
        let members: Vec<&&str> = lines[members_at + 2..members_at + 4].iter().collect();
        assert!(
            members[0].contains("sink-1-aaa") && members[0].ends_with("calls: 0"),
            "{text}"
        );
        assert!(
            members[1].contains("sink-2-bbb") && members[1].ends_with("calls: 1"),
            "{text}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json["groups"][0]["topics"][0]["partitions"][1]["owner"]["member_id"],
            "sink-2-bbb"
        );
    }

    #[test]
    fn newest_ranges_bound_the_scan() {
        let marks = BTreeMap::from([
            (0, Watermarks { low: 0, high: 100 }),
            (1, Watermarks { low: 90, high: 100 }),
        ]);
        let (ranges, truncated) = newest_ranges(&marks, 1_000);
        assert!(!truncated);
        assert_eq!(ranges[&0], (0, 100));
        let (ranges, truncated) = newest_ranges(&marks, 20);
        assert!(truncated);
        assert_eq!(ranges[&0], (90, 100));
        assert_eq!(ranges[&1], (90, 100));
    }
}
