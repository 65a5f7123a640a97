//! `callsync tail`: records of a topic as JSON lines, for a person at a terminal.
//!
//! - `calls`, `calls.raw` (and any other topic): the value decoded as a CallRecord (Avro
//!   single-object or Confluent framing; a registry resolves unknown schema ids), printed with
//!   serde's JSON; `raw` (the provider's bytes) is shown as JSON when it is JSON, else base64.
//! - `calls.dlq`: the headers and the original bytes in base64.
//! - `callsync.sync-events`: the SyncEvent.
//!
//! Without `--from-datetime` it shows the newest `--limit` records; with it, the first
//! `--limit` records from that time. `--key` reads only the key's partition (the producers'
//! murmur2 partitioner) and shows only that key.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use callsync_runtime::{names, Isolation, KafkaClientFactory};
use callsync_schemas::{RecordDecoder, RegistryDecoder, SchemaRegistryClient, SyncEvent};
use chrono::{DateTime, TimeZone, Utc};
use rdkafka::message::Headers;
use rdkafka::Message;
use serde::Serialize;
use serde_json::{json, Value};

use super::dlq::{dlq_record, DlqRecord};
use super::offsets::{offsets_for_time, topic_partitions, watermarks};
use super::scan::{scan_consumer, scan_partitions, Visit, READ_ONLY_GROUP};
use super::time::datetime_arg;
use super::{blocking, OpsError, DEFAULT_KAFKA_TIMEOUT};

/// Records read at most per partition when filtering by key.
const MAX_SCANNED_FOR_KEY: u64 = 2_000_000;

/// `callsync tail`: decode a topic's records to JSON lines.
#[derive(Debug, Clone, clap::Args)]
pub struct TailArgs {
    /// The topic: a callsync topic's base name (`calls`, `calls.raw`, `calls.dlq`,
    /// `callsync.sync-events`; the configured prefix is added) or any full name.
    #[arg(long, default_value = names::CALLS)]
    pub topic: String,
    /// Start at the first record at or after this time (default: the newest records).
    #[arg(long, value_parser = datetime_arg)]
    pub from_datetime: Option<DateTime<Utc>>,
    /// Only records with this key (e.g. `retreaver:acct-1:call-9`).
    #[arg(long)]
    pub key: Option<String>,
    /// Show at most this many records.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
}

/// What `tail` printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TailReport {
    pub topic: String,
    pub printed: usize,
    pub undecodable: usize,
}

/// The full name of `topic` ([`super::TopicName`]'s rule: callsync's base names get the
/// configured prefix).
pub fn resolve_topic(factory: &KafkaClientFactory, topic: &str) -> String {
    super::TopicName::resolve(factory.settings(), topic).full
}

/// Kafka's murmur2 hash (the Java client's `Utils.murmur2`, also librdkafka's).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut h: u32 = SEED ^ (length as u32);
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for chunk in chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition the producers' `murmur2_random` partitioner gives `key`.
pub fn partition_for_key(key: &[u8], partitions: usize) -> i32 {
    let positive = (murmur2(key) & 0x7fff_ffff) as u32;
    (positive % (partitions.max(1) as u32)) as i32
}

/// A record read by `tail`, owned.
#[derive(Debug, Clone)]
struct RawRecord {
    partition: i32,
    offset: i64,
    timestamp: Option<DateTime<Utc>>,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    dlq: Option<DlqRecord>,
    headers: Vec<(String, Option<String>)>,
}

/// What kind of values a topic holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TopicKind {
    Calls,
    Dlq,
    SyncEvents,
}

/// Runs `callsync tail`, writing one JSON object per line.
pub async fn run_tail(
    args: &TailArgs,
    factory: &KafkaClientFactory,
    registry: Option<Arc<SchemaRegistryClient>>,
    out: &mut impl Write,
) -> Result<TailReport, OpsError> {
    let named = super::TopicName::resolve(factory.settings(), &args.topic);
    eprintln!("tail: {named}");
    let topic = named.full;
    let kind = if topic == factory.settings().topic(names::CALLS_DLQ) {
        TopicKind::Dlq
    } else if topic == factory.settings().topic(names::SYNC_EVENTS) {
        TopicKind::SyncEvents
    } else {
        TopicKind::Calls
    };
    let consumer = scan_consumer(factory, READ_ONLY_GROUP, Isolation::ReadCommitted)?;
    let (scan_topic, from, key, limit) = (
        topic.clone(),
        args.from_datetime,
        args.key.clone(),
        args.limit,
    );
    let records = blocking("tail", move || {
        let timeout = DEFAULT_KAFKA_TIMEOUT;
        let topic = scan_topic;
        let all = topic_partitions(&consumer, &topic, timeout)?;
        let partitions = match &key {
            Some(k) => vec![partition_for_key(k.as_bytes(), all.len())],
            None => all,
        };
        let marks = watermarks(&consumer, &topic, &partitions, timeout)?;
        let starts: BTreeMap<i32, i64> = match from {
            Some(at) => offsets_for_time(&consumer, &topic, &partitions, at, &marks, timeout)?,
            None if key.is_some() => marks.iter().map(|(p, w)| (*p, w.low)).collect(),
            None => marks
                .iter()
                .map(|(p, w)| (*p, w.clamp(w.high - limit as i64)))
                .collect(),
        };
        let ranges = marks
            .iter()
            .map(|(p, w)| (*p, (starts.get(p).copied().unwrap_or(w.high), w.high)))
            .collect();
        let mut per_partition: BTreeMap<i32, usize> = BTreeMap::new();
        let mut records: Vec<RawRecord> = Vec::new();
        let mut scanned: u64 = 0;
        scan_partitions(&consumer, &topic, &ranges, super::scan_idle(), |m| {
            scanned += 1;
            if scanned > MAX_SCANNED_FOR_KEY {
                return Ok(Visit::Stop);
            }
            if let Some(k) = &key {
                if m.key() != Some(k.as_bytes()) {
                    return Ok(Visit::Continue);
                }
            }
            let taken = per_partition.entry(m.partition()).or_insert(0);
            // from a time: the first `limit` per partition; newest: keep the last `limit`
            if from.is_some() && *taken >= limit {
                return Ok(Visit::Continue);
            }
            *taken += 1;
            records.push(RawRecord {
                partition: m.partition(),
                offset: m.offset(),
                timestamp: m
                    .timestamp()
                    .to_millis()
                    .and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
                dlq: (kind == TopicKind::Dlq).then(|| dlq_record(m)),
                headers: m
                    .headers()
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
            });
            Ok(Visit::Continue)
        })?;
        records.sort_by_key(|r| (r.timestamp, r.partition, r.offset));
        if from.is_some() {
            records.truncate(limit);
        } else if records.len() > limit {
            records.drain(..records.len() - limit);
        }
        Ok(records)
    })
    .await?;

    let decoder: RegistryDecoder<callsync_schemas::CallRecord> = RegistryDecoder::new(registry);
    let events: RecordDecoder<SyncEvent> = RecordDecoder::new();
    let mut report = TailReport {
        topic: topic.clone(),
        printed: 0,
        undecodable: 0,
    };
    for r in records {
        let line = match kind {
            TopicKind::Dlq => match &r.dlq {
                Some(d) => serde_json::to_value(d).map_err(|source| OpsError::Json {
                    what: "a DLQ record",
                    source,
                })?,
                None => Value::Null,
            },
            TopicKind::SyncEvents | TopicKind::Calls => {
                let decoded: Result<Value, String> = match (&r.value, kind) {
                    (None, _) => Ok(Value::Null), // a tombstone
                    (Some(v), TopicKind::SyncEvents) => events
                        .decode(v)
                        .map_err(|e| e.to_string())
                        .and_then(|e| serde_json::to_value(e).map_err(|e| e.to_string())),
                    (Some(v), _) => match decoder.decode(v).await {
                        Ok(call) => call_record_json(&call).map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    },
                };
                let mut obj = json!({
                    "topic": topic,
                    "partition": r.partition,
                    "offset": r.offset,
                    "timestamp": r.timestamp,
                    "key": r.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
                });
                match decoded {
                    Ok(value) => obj["value"] = value,
                    Err(error) => {
                        use base64::Engine as _;
                        report.undecodable += 1;
                        obj["error"] = Value::String(error);
                        obj["value_base64"] = r
                            .value
                            .as_ref()
                            .map(|v| base64::engine::general_purpose::STANDARD.encode(v))
                            .into();
                    }
                }
                if !r.headers.is_empty() {
                    obj["headers"] = serde_json::to_value(&r.headers).unwrap_or(Value::Null);
                }
                obj
            }
        };
        let text = serde_json::to_string(&line).map_err(|source| OpsError::Json {
            what: "a record",
            source,
        })?;
        writeln!(out, "{text}")?;
        report.printed += 1;
    }
    Ok(report)
}

/// A CallRecord as serde JSON, with `raw` shown as JSON (when it is) or base64.
pub fn call_record_json(call: &callsync_schemas::CallRecord) -> Result<Value, serde_json::Error> {
    use base64::Engine as _;
    let mut value = serde_json::to_value(call)?;
    if let (Some(raw), Some(obj)) = (&call.raw, value.as_object_mut()) {
        let shown = serde_json::from_slice::<Value>(raw).unwrap_or_else(|_| {
            Value::String(base64::engine::general_purpose::STANDARD.encode(raw))
        });
        obj.insert("raw".to_string(), shown);
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafkas_java_client() {
        // vectors from Kafka's UtilsTest.testMurmur2
        assert_eq!(murmur2(b"21"), -973_932_308);
        assert_eq!(murmur2(b"foobar"), -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985_981_536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1_486_304_829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
            -58_897_971
        );
        assert_eq!(murmur2(b"abc"), 479_470_107);
        assert_eq!(murmur2(b""), 275_646_681);
    }

    #[test]
    fn base_names_get_the_prefix_others_do_not() {
        let mut settings = callsync_runtime::KafkaSettings::plaintext("x:1");
        settings.topic_prefix = "prod.".into();
        let f = KafkaClientFactory::new(settings);
        assert_eq!(resolve_topic(&f, "calls"), "prod.calls");
        assert_eq!(resolve_topic(&f, "calls.dlq"), "prod.calls.dlq");
        assert_eq!(
            resolve_topic(&f, "analytics.enriched"),
            "analytics.enriched"
        );
    }
}
