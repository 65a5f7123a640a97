//! `callsync dlq list` and `callsync dlq redrive`.
//!
//! ## Where a redriven record goes (by `callsync.error.stage`)
//! - the processor's (`decode`, `validate`, `encode`, or none): back into `calls.raw`, through
//!   validation again (original key and bytes, the original headers minus the error/source
//!   headers, plus `callsync.redrive.count` incremented and `callsync.redrive.from` =
//!   `topic/partition/offset`), after a fix to a validation rule;
//! - the connectors' (`connector`, the provider's raw JSON): mapped again with the current
//!   mapping and the account's current settings, and the record written to `calls.raw`; one
//!   that still fails goes back to `calls.dlq` with the new error (same transaction);
//! - the sink's (`sink`): its rows are re-applied to the sink's database from the dead
//!   letters kept there, each in the transaction that marks it redriven
//!   ([`callsync_sinks::redrive_dead_letters`]). In `calls.dlq` they are only passed over:
//!   sending them to `calls.raw` would not land (the processor has emitted that version
//!   already and drops it as a duplicate).
//!
//! ## Kafka redrive semantics (exactly once)
//!
//! Progress is kept as consumer-group offsets on `calls.dlq`, committed in the **same Kafka
//! transaction** as the re-injected records (`send_offsets_to_transaction`):
//! - `callsync-dlq-redrive` (`C_all`): every record before it was redriven, whatever its reason;
//! - `callsync-dlq-redrive.<reason>` (`C_r`): every record *of reason r* before it was redriven.
//!
//! A record of reason `r` at offset `o` is pending iff `o >= max(C_all, C_r)`.
//! - `dlq redrive` (no `--reason`) reads from `C_all`, re-injects every pending record (looking
//!   up `C_r` of each reason it meets), and moves `C_all` to the end of what it read.
//! - `dlq redrive --reason r` reads from `max(C_all, C_r)`, re-injects the records of reason
//!   `r`, and moves only `C_r`: records of other reasons are not consumed for anyone else, a
//!   later redrive of their reason (or of all) still finds them.
//!
//! Every run uses one `transactional.id` (the topic prefix and the group base name), so a
//! second run fences the first, and a run that crashed mid-transaction is aborted when the
//! next one starts (`init_transactions`): records and offsets commit together or not at all. Readers of
//! `calls.raw` (the processor) read committed. A run reads up to the end offsets fixed when it
//! starts, so records that fail again and come back to the DLQ during the run are not looped.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use callsync_runtime::{names, Isolation, KafkaClientFactory};
use chrono::{DateTime, TimeZone, Utc};
use rdkafka::consumer::Consumer;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Serialize;

use callsync_connectors::Connectors;
use callsync_sinks::dlq::{HEADER_DEAD_LETTER_ID, HEADER_SINK_GROUP};
use callsync_sinks::{redrive_dead_letters, DeadLetterRedriveReport, RedriveOptions};
use std::sync::Arc;

use super::offsets::{committed_offsets, topic_partitions, watermarks};
use super::remap::{remap, Remapped};
use super::scan::{scan_consumer, scan_partitions, Visit, READ_ONLY_GROUP};
use super::sink_db::SinkDatabase;
use super::table::TextTable;
use super::{blocking, OpsError, DEFAULT_KAFKA_TIMEOUT};

// The processor's DLQ headers (processors/src/dlq.rs); the same strings.
pub const HEADER_ERROR_REASON: &str = "callsync.error.reason";
pub const HEADER_ERROR_FIELD: &str = "callsync.error.field";
pub const HEADER_ERROR_STAGE: &str = "callsync.error.stage";
pub const HEADER_ERROR_MESSAGE: &str = "callsync.error.message";
pub const HEADER_SOURCE_TOPIC: &str = "callsync.source.topic";
pub const HEADER_SOURCE_PARTITION: &str = "callsync.source.partition";
pub const HEADER_SOURCE_OFFSET: &str = "callsync.source.offset";
/// How many times a record was redriven (set by `dlq redrive`).
pub const HEADER_REDRIVE_COUNT: &str = "callsync.redrive.count";
/// `topic/partition/offset` of the DLQ record a redriven record came from.
pub const HEADER_REDRIVE_FROM: &str = "callsync.redrive.from";

/// The consumer group base name (and transactional id) of `dlq redrive`.
pub const REDRIVE_GROUP: &str = "callsync-dlq-redrive";
/// The reason shown for DLQ records without a reason header.
pub const UNKNOWN_REASON: &str = "(none)";

/// `callsync dlq list`: show dead-lettered records.
#[derive(Debug, Clone, clap::Args)]
pub struct DlqListArgs {
    /// Only records with this `callsync.error.reason`.
    #[arg(long)]
    pub reason: Option<String>,
    /// Show at most this many records (the oldest first).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// JSON lines (headers and base64 bytes) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The consumer group base name `dlq redrive` records its progress in (to show what
    /// was redriven).
    #[arg(long, default_value = REDRIVE_GROUP)]
    pub redrive_group: String,
}

/// `callsync dlq redrive`: send DLQ records on to the stage that can take them, exactly once.
#[derive(Debug, Clone, clap::Args)]
pub struct DlqRedriveArgs {
    /// Only records with this `callsync.error.reason` (tracked per reason).
    #[arg(long)]
    pub reason: Option<String>,
    /// Count what would be redriven, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Redrive at most this many records in this run.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Records read per transaction.
    #[arg(long, default_value_t = 500)]
    pub batch_size: usize,
    /// Consumer group base name and transactional id of the redrive.
    #[arg(long, default_value = REDRIVE_GROUP)]
    pub group: String,
}

/// One DLQ record, decoded for people.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DlqRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<DateTime<Utc>>,
    /// The key as UTF-8 (lossy).
    pub key: Option<String>,
    pub reason: String,
    pub field: Option<String>,
    pub stage: Option<String>,
    pub message: Option<String>,
    pub source: Option<String>,
    pub redrive_count: u32,
    /// Whether `dlq redrive` sent it on (a sink entry: applied to the sink's database);
    /// None when that cannot be told (a sink entry without the sink's database).
    pub redriven: Option<bool>,
    /// When a sink entry was applied to the sink's database by `dlq redrive`.
    pub redriven_at: Option<DateTime<Utc>>,
    /// A sink entry's `callsync.dead_letter.id` (every publication of it has the same).
    pub dead_letter_id: Option<String>,
    /// Every header, values as UTF-8 (lossy).
    pub headers: Vec<(String, Option<String>)>,
    /// The original value, base64 (standard alphabet).
    pub value_base64: Option<String>,
}

fn header_value<'a, H: Headers>(headers: Option<&'a H>, key: &str) -> Option<&'a str> {
    headers?
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// The `callsync.error.reason` of a DLQ message ([`UNKNOWN_REASON`] without one).
pub fn message_reason(message: &BorrowedMessage<'_>) -> String {
    header_value(message.headers(), HEADER_ERROR_REASON)
        .unwrap_or(UNKNOWN_REASON)
        .to_string()
}

fn message_time(message: &BorrowedMessage<'_>) -> Option<DateTime<Utc>> {
    message
        .timestamp()
        .to_millis()
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
}

/// Decodes a DLQ message for `dlq list`, `tail` and `status`.
pub fn dlq_record(message: &BorrowedMessage<'_>) -> DlqRecord {
    use base64::Engine as _;
    let headers = message.headers();
    let get = |k: &str| header_value(headers, k).map(str::to_string);
    let source = match (
        get(HEADER_SOURCE_TOPIC),
        get(HEADER_SOURCE_PARTITION),
        get(HEADER_SOURCE_OFFSET),
    ) {
        (Some(t), Some(p), Some(o)) => Some(format!("{t}/{p}/{o}")),
        _ => None,
    };
    DlqRecord {
        topic: message.topic().to_string(),
        partition: message.partition(),
        offset: message.offset(),
        timestamp: message_time(message),
        key: message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned()),
        reason: message_reason(message),
        field: get(HEADER_ERROR_FIELD),
        stage: get(HEADER_ERROR_STAGE),
        message: get(HEADER_ERROR_MESSAGE),
        source,
        redrive_count: redrive_count(headers),
        redriven: None,
        redriven_at: None,
        dead_letter_id: get(HEADER_DEAD_LETTER_ID),
        headers: headers
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            h.value.map(|v| String::from_utf8_lossy(v).into_owned()),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
        value_base64: message
            .payload()
            .map(|v| base64::engine::general_purpose::STANDARD.encode(v)),
    }
}

fn redrive_count<H: Headers>(headers: Option<&H>) -> u32 {
    header_value(headers, HEADER_REDRIVE_COUNT)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The headers of a redriven record: the original ones without the error, source and redrive
/// headers, then `callsync.redrive.count` (+1) and `callsync.redrive.from`.
pub fn redrive_headers(message: &BorrowedMessage<'_>) -> OwnedHeaders {
    let original = message.headers();
    let count = redrive_count(original).saturating_add(1).to_string();
    let from = format!(
        "{}/{}/{}",
        message.topic(),
        message.partition(),
        message.offset()
    );
    let mut headers = OwnedHeaders::new();
    if let Some(original) = original {
        for h in original.iter() {
            if h.key.starts_with("callsync.error.")
                || h.key.starts_with("callsync.source.")
                || h.key.starts_with("callsync.redrive.")
            {
                continue;
            }
            headers = headers.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    headers
        .insert(Header {
            key: HEADER_REDRIVE_COUNT,
            value: Some(count.as_str()),
        })
        .insert(Header {
            key: HEADER_REDRIVE_FROM,
            value: Some(from.as_str()),
        })
}

/// What `dlq list` found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DlqListReport {
    pub scanned: u64,
    pub matching: u64,
    /// Sink entries published more than once (a crash between their publication and its
    /// note in the database), counted once.
    pub duplicates: u64,
    pub records: Vec<DlqRecord>,
}

/// Runs `callsync dlq list`: reads `calls.dlq` from the oldest record to the current end.
pub async fn run_dlq_list(
    args: &DlqListArgs,
    factory: &KafkaClientFactory,
    out: &mut impl Write,
) -> Result<DlqListReport, OpsError> {
    run_dlq_list_with(args, factory, None, out).await
}

/// Runs `callsync dlq list`, telling sink entries redriven from `sink`'s database.
pub async fn run_dlq_list_with(
    args: &DlqListArgs,
    factory: &KafkaClientFactory,
    sink: Option<&SinkDatabase>,
    out: &mut impl Write,
) -> Result<DlqListReport, OpsError> {
    let topic = factory.settings().topic(names::CALLS_DLQ);
    let consumer = scan_consumer(factory, READ_ONLY_GROUP, Isolation::ReadCommitted)?;
    let (reason, limit) = (args.reason.clone(), args.limit);
    let redrive_base = args.redrive_group.clone();
    let factory_owned = factory.clone();
    let mut report = blocking("dlq list", move || {
        let timeout = DEFAULT_KAFKA_TIMEOUT;
        let partitions = topic_partitions(&consumer, &topic, timeout)?;
        let marks = watermarks(&consumer, &topic, &partitions, timeout)?;
        let ranges = marks.iter().map(|(p, w)| (*p, (w.low, w.high))).collect();
        let mut report = DlqListReport {
            scanned: 0,
            matching: 0,
            duplicates: 0,
            records: Vec::new(),
        };
        let mut seen_ids = std::collections::HashSet::new();
        // redrive progress: C_all, and C_r per reason (see the module docs)
        let all_group = redrive_group(&redrive_base, None);
        let all_consumer = scan_consumer(&factory_owned, &all_group, Isolation::ReadCommitted)?;
        let all_floor = committed_offsets(&all_consumer, &all_group, &topic, &partitions, timeout)?;
        let mut reason_floors: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
        scan_partitions(&consumer, &topic, &ranges, super::scan_idle(), |m| {
            report.scanned += 1;
            let record_reason = message_reason(m);
            if reason.as_deref().is_none_or(|r| r == record_reason) {
                if let Some(id) = header_value(m.headers(), HEADER_DEAD_LETTER_ID) {
                    if !seen_ids.insert(id.to_string()) {
                        report.duplicates += 1;
                        return Ok(Visit::Continue);
                    }
                }
                report.matching += 1;
                if report.records.len() < limit {
                    let mut record = dlq_record(m);
                    if record.stage.as_deref() != Some("sink") {
                        if !reason_floors.contains_key(&record_reason) {
                            let g = redrive_group(&redrive_base, Some(&record_reason));
                            let c = scan_consumer(&factory_owned, &g, Isolation::ReadCommitted)?;
                            let floors = committed_offsets(&c, &g, &topic, &partitions, timeout)?;
                            reason_floors.insert(record_reason.clone(), floors);
                        }
                        let floor = all_floor
                            .get(&m.partition())
                            .copied()
                            .max(reason_floors[&record_reason].get(&m.partition()).copied());
                        record.redriven = Some(floor.is_some_and(|f| m.offset() < f));
                    }
                    report.records.push(record);
                }
            }
            Ok(Visit::Continue)
        })?;
        report
            .records
            .sort_by_key(|r| (r.timestamp, r.partition, r.offset));
        Ok(report)
    })
    .await?;
    if let Some(db) = sink {
        mark_sink_entries(&mut report.records, db).await?;
    }

    if args.json {
        for r in &report.records {
            let line = serde_json::to_string(r).map_err(|source| OpsError::Json {
                what: "a DLQ record",
                source,
            })?;
            writeln!(out, "{line}")?;
        }
    } else {
        let mut table = TextTable::new([
            "partition/offset",
            "time",
            "reason",
            "field",
            "stage",
            "redrives",
            "redriven",
            "key",
            "message",
        ]);
        for r in &report.records {
            let mut message = r.message.clone().unwrap_or_default();
            if message.chars().count() > 60 {
                message = message.chars().take(57).collect::<String>() + "...";
            }
            table.row([
                format!("{}/{}", r.partition, r.offset),
                r.timestamp
                    .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
                    .unwrap_or_else(|| "-".into()),
                r.reason.clone(),
                r.field.clone().unwrap_or_else(|| "-".into()),
                r.stage.clone().unwrap_or_else(|| "-".into()),
                r.redrive_count.to_string(),
                match r.redriven {
                    Some(true) => "yes".to_string(),
                    Some(false) => "no".to_string(),
                    None => "?".to_string(),
                },
                r.key.clone().unwrap_or_else(|| "-".into()),
                message,
            ]);
        }
        table.write_to(out)?;
        writeln!(
            out,
            "{} shown of {} matching ({} DLQ records read{})",
            report.records.len(),
            report.matching,
            report.scanned,
            if report.duplicates > 0 {
                format!(
                    "; {} repeated publication(s) of sink dead letters counted once",
                    report.duplicates
                )
            } else {
                String::new()
            }
        )?;
    }
    Ok(report)
}

/// Sink entries: redriven (and when) as the sink's database says.
async fn mark_sink_entries(records: &mut [DlqRecord], db: &SinkDatabase) -> Result<(), OpsError> {
    if !records.iter().any(|r| r.stage.as_deref() == Some("sink")) {
        return Ok(());
    }
    let query = callsync_sinks::DeadLetterQuery {
        limit: 1_000_000,
        ..Default::default()
    };
    let kept = db
        .store
        .dead_letters(&db.group, &db.topic, &query)
        .await
        .map_err(|e| {
            OpsError::Usage(format!(
                "reading the dead letters of sink group {:?} on {:?} from its database: {e}",
                db.group, db.topic
            ))
        })?;
    let by_id: BTreeMap<String, Option<DateTime<Utc>>> = kept
        .iter()
        .map(|d| {
            (
                callsync_sinks::dlq::dead_letter_id(&d.consumer_group, &d.topic, d.id),
                d.redriven_at,
            )
        })
        .collect();
    for r in records
        .iter_mut()
        .filter(|r| r.stage.as_deref() == Some("sink"))
    {
        if let Some(redriven_at) = r.dead_letter_id.as_ref().and_then(|id| by_id.get(id)) {
            r.redriven = Some(redriven_at.is_some());
            r.redriven_at = *redriven_at;
        }
    }
    Ok(())
}

/// What `dlq redrive` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RedriveReport {
    pub dlq_topic: String,
    pub target_topic: String,
    /// The group whose offsets record the progress.
    pub group: String,
    pub reason: Option<String>,
    pub dry_run: bool,
    /// DLQ records read.
    pub scanned: u64,
    /// Records sent on (or, in a dry run, that would be), per reason: processor entries to
    /// `calls.raw`, connector entries mapped again.
    pub redriven_by_reason: BTreeMap<String, u64>,
    /// Connector entries mapped again and written to `calls.raw`.
    pub remapped: u64,
    /// Connector entries whose mapping failed again: back in the DLQ with the new error.
    pub failed_again: u64,
    /// Sink entries passed over in the DLQ topic: their rows are redriven from the sink's
    /// database (`database`).
    pub sink_entries: u64,
    /// Sink entries of another sink group or topic than the configured sink's: not redriven
    /// here.
    pub sink_entries_elsewhere: u64,
    /// Records read but not re-injected: other reason, or redriven before for their reason.
    pub skipped: u64,
    /// Transactions committed.
    pub transactions: u64,
    /// True when `--limit` stopped the run before the end of the DLQ.
    pub stopped_by_limit: bool,
    /// The sink's dead letters re-applied to its database (None: no sink database).
    pub database: Option<DeadLetterRedriveReport>,
}

/// Where `dlq redrive` can send what it finds besides `calls.raw`.
#[derive(Debug, Clone, Default)]
pub struct RedriveTargets {
    /// The sink's database: its dead letters are re-applied there.
    pub sink: Option<SinkDatabase>,
    /// The configured provider accounts: connector entries are mapped again with them.
    pub connectors: Option<Arc<Connectors>>,
}

impl RedriveReport {
    pub fn redriven(&self) -> u64 {
        self.redriven_by_reason.values().sum()
    }
}

/// The consumer group recording redrive progress for `reason` (all reasons when `None`).
pub fn redrive_group(base: &str, reason: Option<&str>) -> String {
    match reason {
        Some(r) => format!("{base}.{r}"),
        None => base.to_string(),
    }
}

/// Runs `callsync dlq redrive` with only `calls.raw` as a target (processor entries).
pub async fn run_dlq_redrive(
    args: &DlqRedriveArgs,
    factory: &KafkaClientFactory,
    out: &mut impl Write,
) -> Result<RedriveReport, OpsError> {
    run_dlq_redrive_with(args, factory, &RedriveTargets::default(), out).await
}

/// Runs `callsync dlq redrive`: the DLQ topic, then the sink's dead letters in its database.
pub async fn run_dlq_redrive_with(
    args: &DlqRedriveArgs,
    factory: &KafkaClientFactory,
    targets: &RedriveTargets,
    out: &mut impl Write,
) -> Result<RedriveReport, OpsError> {
    if args.batch_size == 0 {
        return Err(OpsError::Usage("--batch-size must be at least 1".into()));
    }
    let factory = factory.clone();
    let args_owned = args.clone();
    let targets_owned = targets.clone();
    let mut report = blocking("dlq redrive", move || {
        redrive_blocking(&args_owned, &factory, &targets_owned)
    })
    .await?;
    if let Some(db) = &targets.sink {
        let options = RedriveOptions {
            reason: args.reason.clone(),
            limit: args
                .limit
                .map(|l| l.saturating_sub(report.redriven() + report.failed_again)),
            batch_size: args.batch_size,
            dry_run: args.dry_run,
        };
        let done = redrive_dead_letters(
            db.store.as_ref(),
            &db.group,
            &db.topic,
            &callsync_sinks::avro_decoder(),
            &options,
        )
        .await
        .map_err(|e| {
            OpsError::Usage(format!(
                "redriving the dead letters of sink group {:?} on {:?} in its database: {e}",
                db.group, db.topic
            ))
        })?;
        report.stopped_by_limit |= done.stopped_by_limit;
        report.database = Some(done);
    }
    write_redrive_report(&report, targets.sink.as_ref(), out)?;
    Ok(report)
}

fn write_redrive_report(
    report: &RedriveReport,
    sink: Option<&SinkDatabase>,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let verb = if report.dry_run {
        "would redrive (dry run, nothing changed)"
    } else {
        "redriven"
    };
    writeln!(
        out,
        "{} -> {} {verb}: {} record(s) ({} mapped again, {} failed again and back in the DLQ); \
         {} skipped; {} read; {} transaction(s); progress in group {}",
        report.dlq_topic,
        report.target_topic,
        report.redriven(),
        report.remapped,
        report.failed_again,
        report.skipped,
        report.scanned,
        report.transactions,
        report.group
    )?;
    let mut table = TextTable::new(["reason", "records"]);
    for (reason, n) in &report.redriven_by_reason {
        table.row([reason.clone(), n.to_string()]);
    }
    if !table.is_empty() {
        table.write_to(out)?;
    }
    match (&report.database, sink) {
        (Some(db), Some(sink)) => {
            writeln!(
                out,
                "sink dead letters (group {}, topic {}) -> the sink's database {verb}: {} \
                 ({} rows written, {} older than the table's); {} refused again (still pending)",
                sink.group,
                sink.topic,
                db.redriven(),
                db.rows_written,
                db.rows_stale,
                db.failed_again
            )?;
            let mut table = TextTable::new(["reason", "records"]);
            for (reason, n) in &db.redriven_by_reason {
                table.row([reason.clone(), n.to_string()]);
            }
            if !table.is_empty() {
                table.write_to(out)?;
            }
        }
        _ => {
            if report.sink_entries > 0 {
                writeln!(
                    out,
                    "{} sink dead letter(s) passed over: the config names no sink database to \
                     re-apply them to",
                    report.sink_entries
                )?;
            }
        }
    }
    if report.sink_entries_elsewhere > 0 {
        writeln!(
            out,
            "{} sink dead letter(s) of another sink group or topic passed over: redrive them \
             with that sink's config",
            report.sink_entries_elsewhere
        )?;
    }
    if report.stopped_by_limit {
        writeln!(out, "stopped at --limit; run again to go on")?;
    }
    Ok(())
}

/// A record to re-inject: topic, key, value, headers, and `topic/partition/offset` it came
/// from.
type RedriveRecord = (
    String,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    OwnedHeaders,
    String,
);

/// One transaction's worth of work.
struct RedriveBatch {
    records: Vec<RedriveRecord>,
    /// partition -> next offset to read, for the progress group
    progress: BTreeMap<i32, i64>,
    read: usize,
}

impl RedriveBatch {
    fn new() -> Self {
        RedriveBatch {
            records: Vec::new(),
            progress: BTreeMap::new(),
            read: 0,
        }
    }
}

fn redrive_blocking(
    args: &DlqRedriveArgs,
    factory: &KafkaClientFactory,
    targets: &RedriveTargets,
) -> Result<RedriveReport, OpsError> {
    let timeout = DEFAULT_KAFKA_TIMEOUT;
    let dlq_topic = factory.settings().topic(names::CALLS_DLQ);
    let target_topic = factory.settings().topic(names::CALLS_RAW);
    let reason = args.reason.clone();
    let group = redrive_group(&args.group, reason.as_deref());

    // 1. fence any earlier run (and abort its open transaction) before reading offsets
    let producer: Option<BaseProducer> = if args.dry_run {
        None
    } else {
        // prefixed like the topics, so deployments sharing a cluster never fence each other
        let transactional_id = factory.settings().topic(&args.group);
        let producer: BaseProducer = factory.create(
            "redrive producer",
            &factory.transactional_producer_config(&transactional_id),
        )?;
        producer.init_transactions(timeout).map_err(|e| {
            OpsError::kafka(
                format!("initialising transactions for transactional.id {transactional_id:?}"),
                e,
            )
        })?;
        Some(producer)
    };

    // 2. where to start: max(C_all, C_reason), within the watermarks
    let consumer = scan_consumer(factory, &group, Isolation::ReadCommitted)?;
    let partitions = topic_partitions(&consumer, &dlq_topic, timeout)?;
    let marks = watermarks(&consumer, &dlq_topic, &partitions, timeout)?;
    let all_group = redrive_group(&args.group, None);
    let all_committed = if reason.is_some() {
        let all_consumer = scan_consumer(factory, &all_group, Isolation::ReadCommitted)?;
        committed_offsets(&all_consumer, &all_group, &dlq_topic, &partitions, timeout)?
    } else {
        committed_offsets(&consumer, &all_group, &dlq_topic, &partitions, timeout)?
    };
    let own_committed = if reason.is_some() {
        committed_offsets(&consumer, &group, &dlq_topic, &partitions, timeout)?
    } else {
        all_committed.clone()
    };
    let ranges: BTreeMap<i32, (i64, i64)> = marks
        .iter()
        .map(|(&p, w)| {
            let floor = all_committed
                .get(&p)
                .copied()
                .max(own_committed.get(&p).copied())
                .unwrap_or(w.low);
            (p, (w.clamp(floor), w.high))
        })
        .collect();

    // per-reason progress, looked up when a full redrive meets a reason
    let mut reason_floors: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
    let group_metadata = consumer.group_metadata();

    let mut report = RedriveReport {
        dlq_topic: dlq_topic.clone(),
        target_topic: target_topic.clone(),
        group: group.clone(),
        reason: reason.clone(),
        dry_run: args.dry_run,
        scanned: 0,
        redriven_by_reason: BTreeMap::new(),
        remapped: 0,
        failed_again: 0,
        sink_entries: 0,
        sink_entries_elsewhere: 0,
        skipped: 0,
        transactions: 0,
        stopped_by_limit: false,
        database: None,
    };
    let mut batch = RedriveBatch::new();
    let mut redriven_total: u64 = 0;

    let commit_batch =
        |batch: &mut RedriveBatch, report: &mut RedriveReport| -> Result<(), OpsError> {
            if batch.progress.is_empty() {
                return Ok(());
            }
            let Some(producer) = producer.as_ref() else {
                *batch = RedriveBatch::new();
                return Ok(());
            };
            let Some(cgm) = group_metadata.as_ref() else {
                return Err(OpsError::Usage(format!(
                    "no consumer group metadata for group {group:?}"
                )));
            };
            producer
                .begin_transaction()
                .map_err(|e| OpsError::kafka("beginning a redrive transaction", e))?;
            let result = (|| {
                for (topic, key, value, headers, origin) in batch.records.drain(..) {
                    let mut record: BaseRecord<'_, [u8], [u8]> =
                        BaseRecord::to(&topic).headers(headers);
                    if let Some(k) = key.as_deref() {
                        record = record.key(k);
                    }
                    if let Some(v) = value.as_deref() {
                        record = record.payload(v);
                    }
                    let mut pending = record;
                    loop {
                        match producer.send(pending) {
                            Ok(()) => break,
                            Err((
                                rdkafka::error::KafkaError::MessageProduction(
                                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                                ),
                                back,
                            )) => {
                                producer.poll(Duration::from_millis(50));
                                pending = back;
                            }
                            Err((source, _)) => {
                                return Err(OpsError::kafka(
                                    format!("producing to {topic:?} (from {origin})"),
                                    source,
                                ))
                            }
                        }
                    }
                }
                let mut tpl = TopicPartitionList::new();
                for (&p, &next) in &batch.progress {
                    tpl.add_partition_offset(&dlq_topic, p, Offset::Offset(next))
                        .map_err(|e| OpsError::kafka(format!("offset of {dlq_topic:?}/{p}"), e))?;
                }
                producer
                    .send_offsets_to_transaction(&tpl, cgm, timeout)
                    .map_err(|e| {
                        OpsError::kafka(
                            format!("adding offsets of group {group:?} to the redrive transaction"),
                            e,
                        )
                    })?;
                callsync_runtime::delivery::commit_transaction(producer, Duration::from_secs(60))
                    .map_err(|e| OpsError::kafka("committing a redrive transaction", e))
            })();
            if let Err(e) = result {
                let _ = producer.abort_transaction(Duration::from_secs(30));
                return Err(e);
            }
            report.transactions += 1;
            *batch = RedriveBatch::new();
            Ok(())
        };

    scan_partitions(&consumer, &dlq_topic, &ranges, super::scan_idle(), |m| {
        if args.limit.is_some_and(|limit| redriven_total >= limit) {
            report.stopped_by_limit = true;
            return Ok(Visit::Stop);
        }
        report.scanned += 1;
        let record_reason = message_reason(m);
        let wanted = match &reason {
            Some(r) => *r == record_reason,
            None => {
                if !reason_floors.contains_key(&record_reason) {
                    let g = redrive_group(&args.group, Some(&record_reason));
                    let c = scan_consumer(factory, &g, Isolation::ReadCommitted)?;
                    let floors = committed_offsets(&c, &g, &dlq_topic, &partitions, timeout)?;
                    reason_floors.insert(record_reason.clone(), floors);
                }
                let floor = reason_floors
                    .get(&record_reason)
                    .and_then(|f| f.get(&m.partition()))
                    .copied()
                    .unwrap_or(i64::MIN);
                m.offset() >= floor
            }
        };
        if wanted {
            let origin = format!("{}/{}/{}", m.topic(), m.partition(), m.offset());
            match header_value(m.headers(), HEADER_ERROR_STAGE) {
                Some("sink") => {
                    // re-applied from the sink's database (see the module docs)
                    let group = header_value(m.headers(), HEADER_SINK_GROUP);
                    let topic = header_value(m.headers(), HEADER_SOURCE_TOPIC);
                    match &targets.sink {
                        Some(db)
                            if group.is_none_or(|g| g == db.group)
                                && topic.is_none_or(|t| t == db.topic) =>
                        {
                            report.sink_entries += 1
                        }
                        Some(_) => report.sink_entries_elsewhere += 1,
                        None => report.sink_entries += 1,
                    }
                }
                Some("connector") => {
                    let Some(connectors) = targets.connectors.as_deref() else {
                        return Err(OpsError::Usage(format!(
                            "{origin} is a connector dead letter (the provider's raw JSON): \
                             redriving it maps it again, which needs the `connectors` section \
                             of the config"
                        )));
                    };
                    redriven_total += 1;
                    *report.redriven_by_reason.entry(record_reason).or_insert(0) += 1;
                    match remap(connectors, m)? {
                        Remapped::Record { key, value } => {
                            report.remapped += 1;
                            batch.records.push((
                                target_topic.clone(),
                                Some(key),
                                Some(value),
                                redrive_headers(m),
                                origin,
                            ));
                        }
                        Remapped::Failed(failure) => {
                            report.failed_again += 1;
                            batch.records.push((
                                dlq_topic.clone(),
                                m.key().map(<[u8]>::to_vec),
                                m.payload().map(<[u8]>::to_vec),
                                failure.headers(redrive_headers(m)),
                                origin,
                            ));
                        }
                    }
                }
                _ => {
                    redriven_total += 1;
                    *report.redriven_by_reason.entry(record_reason).or_insert(0) += 1;
                    batch.records.push((
                        target_topic.clone(),
                        m.key().map(<[u8]>::to_vec),
                        m.payload().map(<[u8]>::to_vec),
                        redrive_headers(m),
                        origin,
                    ));
                }
            }
        } else {
            report.skipped += 1;
        }
        batch.progress.insert(m.partition(), m.offset() + 1);
        batch.read += 1;
        if batch.read >= args.batch_size {
            commit_batch(&mut batch, &mut report)?;
        }
        Ok(Visit::Continue)
    })?;
    commit_batch(&mut batch, &mut report)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redrive_groups_are_per_reason() {
        assert_eq!(
            redrive_group("callsync-dlq-redrive", None),
            "callsync-dlq-redrive"
        );
        assert_eq!(
            redrive_group("callsync-dlq-redrive", Some("unknown_currency")),
            "callsync-dlq-redrive.unknown_currency"
        );
    }
}
