//! Every column of every row, compared.
//!
//! Two comparisons, chained:
//! - **truth → reference**: the reference read (`reference`) against the simulator's ground
//!   truth, on every field the truth knows (ids, version, times, durations, status, money,
//!   numbers, names). It shows the reference is the provider's current data.
//! - **reference → table**: every column of every `calls` row against the reference's record
//!   of that call. The columns that depend on when a call was read rather than on what it is
//!   follow rules instead: `observed_at` lies within the run, `source` is one the run's
//!   traffic produces, a version that is an observation time (Ringba, CallRail) equals
//!   `observed_at`, the Kafka coordinates point at the record of `calls` the row came
//!   from (same key, version and fingerprint), and the row is complete (`present_fields`
//!   none: some record has told its start). A row whose last record was a webhook (a
//!   partial record) holds that record's version and `raw` (the webhook's body), a version
//!   never below the provider's; its fields, merged from every record, are still the
//!   provider's current data.
//!
//! A `CallRecord` field added later fails to compile in [`row_differences`] until it is
//! compared here.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;

use callsync_schemas::{CallRecord, ContentFingerprint, Provider, RecordSource};
use callsync_simulator::{provider_has_versions, TruthRecord};
use chrono::{DateTime, Utc};

/// A committed record of `calls`: its key, version, content fingerprint, source and a hash of
/// its `raw` (a row applied last from a webhook carries the webhook's body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallsEntry {
    pub key: String,
    pub version: i64,
    pub fingerprint: ContentFingerprint,
    pub source: RecordSource,
    pub raw: u64,
}

impl CallsEntry {
    pub fn of(record: &CallRecord) -> Self {
        CallsEntry {
            key: record.key().into_string(),
            version: record.version,
            fingerprint: ContentFingerprint::of(record),
            source: record.source,
            raw: raw_hash(&record.raw),
        }
    }
}

/// A hash of a `raw` column (the index holds hashes, not the bodies).
pub fn raw_hash(raw: &Option<Vec<u8>>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    raw.hash(&mut h);
    h.finish()
}

/// `(partition, offset)` of a record in `calls` -> what it holds.
pub type CallsIndex = HashMap<(i32, i64), CallsEntry>;

/// Where a row says it came from: the record of `calls` it was applied from
/// (`kafka_topic`, `kafka_partition`, `kafka_offset`) and that record's content fingerprint
/// (`fingerprint`, the tie order the sink's guard keeps).
#[derive(Debug, Clone, Copy)]
pub struct RowOrigin<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub fingerprint: ContentFingerprint,
}

/// Columns whose value depends on the read, and what they may hold.
#[derive(Debug, Clone)]
pub struct ReadRules {
    /// `observed_at` lies in `[observed_from, observed_to]`.
    pub observed_from: DateTime<Utc>,
    pub observed_to: DateTime<Utc>,
    /// The sources the run's traffic produces.
    pub sources: Vec<RecordSource>,
    /// The full name of the `calls` topic.
    pub calls_topic: String,
}

/// Rows (or records) that differ, per column, with a few examples.
#[derive(Debug, Default)]
pub struct ColumnReport {
    /// Rows compared (present on both sides).
    pub compared: u64,
    /// Column -> rows differing, in the record's field order.
    pub differing: Vec<(&'static str, u64)>,
    pub examples: Vec<String>,
}

impl ColumnReport {
    fn new(columns: &[&'static str]) -> Self {
        ColumnReport {
            compared: 0,
            differing: columns.iter().map(|c| (*c, 0)).collect(),
            examples: Vec::new(),
        }
    }

    fn note(&mut self, key: &str, column: &'static str, what: String) {
        if let Some(entry) = self.differing.iter_mut().find(|(c, _)| *c == column) {
            entry.1 += 1;
        }
        // a few examples per column
        let prefix = format!(": {column}: ");
        if self.examples.iter().filter(|e| e.contains(&prefix)).count() < 3 {
            self.examples.push(format!("{key}{prefix}{what}"));
        }
    }

    /// Rows that differ in at least one column (each counted once per column).
    pub fn total(&self) -> u64 {
        self.differing.iter().map(|(_, n)| n).sum()
    }
}

/// The columns of `calls` [`row_differences`] compares, in order.
pub const ROW_COLUMNS: &[&str] = &[
    "provider",
    "account_id",
    "call_id",
    "version",
    "started_at",
    "answered_at",
    "ended_at",
    "duration_secs",
    "billable_secs",
    "caller_number",
    "tracking_number",
    "destination_number",
    "campaign_id",
    "campaign_name",
    "publisher_id",
    "publisher_name",
    "buyer_id",
    "buyer_name",
    "status",
    "provider_status",
    "converted",
    "revenue",
    "payout",
    "currency",
    "recording_url",
    "tags",
    "source",
    "observed_at",
    "provider_updated_at",
    "raw",
    "present_fields (none: a complete row)",
    "kafka_topic, kafka_partition, kafka_offset",
    "fingerprint",
];

fn differs<T: PartialEq + Debug>(got: &T, want: &T) -> Option<String> {
    (got != want).then(|| format!("{got:?} stored, {want:?} expected"))
}

/// What differs between the row `got` (with its origin) and the reference `want`.
pub fn row_differences(
    got: &CallRecord,
    origin: RowOrigin<'_>,
    want: &CallRecord,
    calls: &CallsIndex,
    rules: &ReadRules,
) -> Vec<(&'static str, String)> {
    // no `..`: a field added to CallRecord must be compared here before this compiles
    let CallRecord {
        provider,
        account_id,
        call_id,
        version,
        started_at,
        answered_at,
        ended_at,
        duration_secs,
        billable_secs,
        caller_number,
        tracking_number,
        destination_number,
        campaign_id,
        campaign_name,
        publisher_id,
        publisher_name,
        buyer_id,
        buyer_name,
        status,
        provider_status,
        converted,
        revenue,
        payout,
        currency,
        recording_url,
        tags,
        source,
        observed_at,
        provider_updated_at,
        raw,
        present_fields,
    } = got;
    let RowOrigin {
        topic,
        partition,
        offset,
        fingerprint,
    } = origin;
    let source_record = calls.get(&(partition, offset));
    // the record last applied was a webhook: its version and body are the row's
    let from_webhook = source_record.filter(|e| e.source == RecordSource::Webhook);
    let mut out = Vec::new();
    let mut check = |column: &'static str, difference: Option<String>| {
        if let Some(d) = difference {
            out.push((column, d));
        }
    };
    check("provider", differs(provider, &want.provider));
    check("account_id", differs(account_id, &want.account_id));
    check("call_id", differs(call_id, &want.call_id));
    check(
        "version",
        if from_webhook.is_some() {
            // the webhook's own version (the coordinates check says it is that record's);
            // never below the provider's current one, or the poll would have won
            (provider_has_versions(*provider) && *version < want.version).then(|| {
                format!(
                    "{version} from a webhook is below the provider's version {}",
                    want.version
                )
            })
        } else if provider_has_versions(*provider) {
            differs(version, &want.version)
        } else {
            // the version of a provider without update times is the time it was read
            (*version != observed_at.timestamp_micros()).then(|| {
                format!(
                    "{version} is not observed_at {} in microseconds",
                    observed_at.to_rfc3339()
                )
            })
        },
    );
    check("started_at", differs(started_at, &want.started_at));
    check("answered_at", differs(answered_at, &want.answered_at));
    check("ended_at", differs(ended_at, &want.ended_at));
    check("duration_secs", differs(duration_secs, &want.duration_secs));
    check("billable_secs", differs(billable_secs, &want.billable_secs));
    check("caller_number", differs(caller_number, &want.caller_number));
    check(
        "tracking_number",
        differs(tracking_number, &want.tracking_number),
    );
    check(
        "destination_number",
        differs(destination_number, &want.destination_number),
    );
    check("campaign_id", differs(campaign_id, &want.campaign_id));
    check("campaign_name", differs(campaign_name, &want.campaign_name));
    check("publisher_id", differs(publisher_id, &want.publisher_id));
    check(
        "publisher_name",
        differs(publisher_name, &want.publisher_name),
    );
    check("buyer_id", differs(buyer_id, &want.buyer_id));
    check("buyer_name", differs(buyer_name, &want.buyer_name));
    check("status", differs(status, &want.status));
    check(
        "provider_status",
        differs(provider_status, &want.provider_status),
    );
    check("converted", differs(converted, &want.converted));
    check("revenue", differs(revenue, &want.revenue));
    check("payout", differs(payout, &want.payout));
    check("currency", differs(currency, &want.currency));
    check("recording_url", differs(recording_url, &want.recording_url));
    check("tags", differs(tags, &want.tags));
    check(
        "source",
        (!rules.sources.contains(source))
            .then(|| format!("{source:?}, not one of {:?}", rules.sources)),
    );
    check(
        "observed_at",
        (*observed_at < rules.observed_from || *observed_at > rules.observed_to).then(|| {
            format!(
                "{} is outside the run ({} .. {})",
                observed_at.to_rfc3339(),
                rules.observed_from.to_rfc3339(),
                rules.observed_to.to_rfc3339()
            )
        }),
    );
    check(
        "provider_updated_at",
        differs(provider_updated_at, &want.provider_updated_at),
    );
    check(
        "raw",
        if let Some(e) = from_webhook {
            (raw_hash(raw) != e.raw).then(|| {
                "the row's raw is not the body of the webhook record it was applied from".into()
            })
        } else {
            (raw != &want.raw).then(|| {
                let text = |r: &Option<Vec<u8>>| {
                    r.as_deref().map(|b| {
                        String::from_utf8_lossy(b)
                            .chars()
                            .take(300)
                            .collect::<String>()
                    })
                };
                format!("{:?} stored, {:?} expected", text(raw), text(&want.raw))
            })
        },
    );
    // a stored row is partial only until some record tells the call's start
    check(
        "present_fields (none: a complete row)",
        differs(present_fields, &None),
    );
    let key = got.key().into_string();
    check(
        "kafka_topic, kafka_partition, kafka_offset",
        if topic != rules.calls_topic {
            Some(format!("topic {topic}, not {}", rules.calls_topic))
        } else {
            match source_record {
                Some(e) if e.key == key && e.version == *version => None,
                Some(e) => Some(format!(
                    "{partition}/{offset} holds {} version {}, the row has version {version}",
                    e.key, e.version
                )),
                None => Some(format!(
                    "{partition}/{offset} is no committed record of {topic}"
                )),
            }
        },
    );
    check(
        "fingerprint",
        match source_record {
            Some(e) if e.fingerprint != fingerprint => Some(format!(
                "{fingerprint:?} stored, the record at {partition}/{offset} has {:?}",
                e.fingerprint
            )),
            _ => None,
        },
    );
    out
}

/// Every row of the table against the reference; rows without a reference record are
/// counted by the caller (lost / extra), not here.
pub fn compare_rows(
    table: &[callsync_sinks::StoredCall],
    reference: &HashMap<String, CallRecord>,
    calls: &CallsIndex,
    rules: &ReadRules,
) -> ColumnReport {
    let mut report = ColumnReport::new(ROW_COLUMNS);
    for row in table {
        let key = row.record.key().into_string();
        let Some(want) = reference.get(&key) else {
            continue;
        };
        report.compared += 1;
        let origin = RowOrigin {
            topic: row.kafka_topic.as_str(),
            partition: row.kafka_partition,
            offset: row.kafka_offset,
            fingerprint: row.fingerprint,
        };
        for (column, what) in row_differences(&row.record, origin, want, calls, rules) {
            report.note(&key, column, what);
        }
    }
    report
}

/// The fields of the ground truth [`truth_differences`] compares, in order.
pub const TRUTH_FIELDS: &[&str] = &[
    "call_id",
    "version",
    "provider_updated_at",
    "started_at",
    "ended_at",
    "duration_secs",
    "status",
    "provider_status",
    "converted",
    "revenue",
    "payout",
    "currency",
    "caller_number",
    "tracking_number",
    "destination_number",
    "campaign_name",
    "publisher_name",
    "buyer_name",
];

/// Where the truth and a provider's API model a field differently, the field is not compared
/// for that provider (what [`truth_differences`] leaves out, for the report).
pub const NOT_COMPARED: &[&str] = &[
    "provider_status where the truth has none (Ringba, CallRail: connectors derive a word)",
    "Invoca buyer_name of unrouted calls (Invoca names the advertiser on every row)",
    "duration_secs of calls in progress (Ringba and TrackDrive report 0, the truth none)",
    "Invoca tracking_number (the simulator's Invoca rows carry no promo number)",
];

/// What differs between a reference record and the simulator's truth of the call, leaving
/// out what [`NOT_COMPARED`] lists.
pub fn truth_differences(got: &CallRecord, truth: &TruthRecord) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let mut check = |field: &'static str, difference: Option<String>| {
        if let Some(d) = difference {
            out.push((field, d));
        }
    };
    let invoca = truth.provider == Provider::Invoca;
    let as_i32 = |v: Option<u32>| v.and_then(|v| i32::try_from(v).ok());
    check("call_id", differs(&got.call_id, &truth.call_id));
    check(
        "version",
        truth.version.and_then(|v| differs(&got.version, &v)),
    );
    check(
        "provider_updated_at",
        differs(&got.provider_updated_at, &truth.provider_updated_at),
    );
    check("started_at", differs(&got.started_at, &truth.started_at));
    check("ended_at", differs(&got.ended_at, &truth.ended_at));
    let in_progress_zero = truth.duration_secs.is_none() && got.duration_secs == Some(0);
    if !in_progress_zero {
        check(
            "duration_secs",
            differs(&got.duration_secs, &as_i32(truth.duration_secs)),
        );
    }
    check("status", differs(&got.status, &truth.status));
    if truth.provider_status.is_some() {
        check(
            "provider_status",
            differs(&got.provider_status, &truth.provider_status),
        );
    }
    check(
        "converted",
        differs(&got.converted.unwrap_or(false), &truth.converted),
    );
    check("revenue", differs(&got.revenue, &truth.revenue));
    check("payout", differs(&got.payout, &truth.payout));
    check("currency", differs(&got.currency, &truth.currency));
    check(
        "caller_number",
        differs(&got.caller_number, &Some(truth.caller_number.clone())),
    );
    if !invoca {
        check(
            "tracking_number",
            differs(&got.tracking_number, &Some(truth.tracking_number.clone())),
        );
    }
    check(
        "destination_number",
        differs(&got.destination_number, &truth.destination_number),
    );
    check(
        "campaign_name",
        differs(&got.campaign_name, &Some(truth.campaign_name.clone())),
    );
    check(
        "publisher_name",
        differs(&got.publisher_name, &truth.publisher_name),
    );
    if !(invoca && truth.buyer_name.is_none()) {
        check("buyer_name", differs(&got.buyer_name, &truth.buyer_name));
    }
    out
}

/// The reference against the truth: field differences, and calls one side has and the
/// other has not (`missing`: in the truth, not read; `unexpected`: read, not in the truth).
#[derive(Debug, Default)]
pub struct ReferenceCheck {
    pub fields: ColumnReport,
    pub missing: u64,
    pub unexpected: u64,
    /// Differences per provider and field (which provider's data or mapping disagrees).
    pub by_provider: BTreeMap<String, u64>,
}

pub fn check_reference(
    reference: &HashMap<String, CallRecord>,
    truth: &HashMap<String, TruthRecord>,
) -> ReferenceCheck {
    let mut check = ReferenceCheck {
        fields: ColumnReport::new(TRUTH_FIELDS),
        ..ReferenceCheck::default()
    };
    for (key, t) in truth {
        let Some(got) = reference.get(key) else {
            check.missing += 1;
            if check.fields.examples.len() < 12 {
                check
                    .fields
                    .examples
                    .push(format!("{key}: not read by the reference read"));
            }
            continue;
        };
        check.fields.compared += 1;
        for (field, what) in truth_differences(got, t) {
            *check
                .by_provider
                .entry(format!("{} {field}", provider_of(key)))
                .or_default() += 1;
            check.fields.note(key, field, what);
        }
    }
    check.unexpected = reference.keys().filter(|k| !truth.contains_key(*k)).count() as u64;
    check
}

fn provider_of(key: &str) -> &str {
    key.split(':').next().unwrap_or("")
}
