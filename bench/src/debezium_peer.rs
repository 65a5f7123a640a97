//! The peer users choose between us and: Kafka Connect (standalone worker) with the Debezium
//! JDBC sink connector, upserting the same calls into the same `calls` table of the same
//! Postgres, run by `scripts/kafka-connect.sh` (Maven Central jars and plugin archive).
//!
//! Its records are what Connect's JsonConverter reads without a schema registry: JSON with the
//! schema inline, the key a struct of the primary key's columns (`primary.key.mode=record_key`),
//! the value every column, with Debezium's logical types where Postgres needs them
//! (`ZonedTimestamp` for timestamptz, `Json` for jsonb, Connect's `Decimal` for numeric).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use callsync_runtime::{send_waiting, KafkaClientFactory};
use callsync_schemas::CallRecord;
use chrono::{DateTime, SecondsFormat, Utc};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rust_decimal::Decimal;
use serde_json::{json, Map, Value};

use crate::services::{self, BenchProcess};
use crate::sink_drain::{DrainWatch, LandedKeys, MethodFigures, Servers};

/// The connector's configuration beside ours, said in the report: what makes it fair.
pub struct PeerConfig {
    /// `tasks.max`: one per core, as our sink role has the machine's cores.
    pub tasks: usize,
    /// `batch.size` and the worker's `consumer.max.poll.records`: our sink's batch bound in rows.
    pub batch_rows: usize,
}

impl PeerConfig {
    pub fn describe(&self) -> String {
        format!(
            "Debezium JDBC sink {} on Kafka Connect {} standalone: tasks.max={}, batch.size={} \
             with consumer.max.poll.records={}, insert.mode=upsert, primary.key.mode=record_key, \
             use.reduction.buffer=true, reWriteBatchedInserts=true, JsonConverter with schemas, \
             JVM as connect-standalone.sh (G1, -Xmx2G)",
            DEBEZIUM_VERSION, CONNECT_VERSION, self.tasks, self.batch_rows, self.batch_rows
        )
    }
}

/// The versions scripts/kafka-connect/pom.xml fetches.
pub const DEBEZIUM_VERSION: &str = "3.6.0.Final";
pub const CONNECT_VERSION: &str = "4.1.2";

/// Fetches (once) Connect's jars and the connector's plugin archive; returns the plugin path.
/// Run before anything is measured.
pub fn fetch() -> anyhow::Result<PathBuf> {
    let script = services::repo_root().join("scripts/kafka-connect.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg("fetch")
        .output()
        .with_context(|| format!("running {} fetch", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} fetch failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("CONNECT_PLUGIN_PATH="))
        .map(|p| PathBuf::from(p.trim()))
        .with_context(|| format!("{} fetch printed no CONNECT_PLUGIN_PATH", script.display()))
}

fn field(name: &str, kind: &str, optional: bool) -> Value {
    json!({ "field": name, "type": kind, "optional": optional })
}

fn logical(name: &str, kind: &str, optional: bool, logical: &str) -> Value {
    json!({ "field": name, "type": kind, "optional": optional, "name": logical, "version": 1 })
}

fn zoned(name: &str, optional: bool) -> Value {
    logical(name, "string", optional, "io.debezium.time.ZonedTimestamp")
}

fn money(name: &str) -> Value {
    json!({
        "field": name, "type": "bytes", "optional": true,
        "name": "org.apache.kafka.connect.data.Decimal", "version": 1,
        "parameters": { "scale": MONEY_SCALE.to_string(), "connect.decimal.precision": "18" },
    })
}

const MONEY_SCALE: u32 = 4;

/// The key's schema: the primary key's columns.
fn key_schema() -> Value {
    json!({
        "type": "struct", "optional": false, "name": "callsync.bench.CallKey",
        "fields": [
            field("provider", "string", false),
            field("account_id", "string", false),
            field("call_id", "string", false),
        ],
    })
}

/// The value's schema: every column of `calls` but `synced_at` (its default).
fn value_schema() -> Value {
    let text = |n: &str| field(n, "string", true);
    let mut tags = logical("tags", "string", false, "io.debezium.data.Json");
    // binds as jsonb (Debezium casts a plain Json value to json)
    tags["parameters"] = json!({ "__debezium.source.column.type": "JSONB" });
    json!({
        "type": "struct", "optional": false, "name": "callsync.bench.Call",
        "fields": [
            field("provider", "string", false),
            field("account_id", "string", false),
            field("call_id", "string", false),
            field("version", "int64", false),
            field("fingerprint", "int64", false),
            zoned("started_at", false),
            zoned("answered_at", true),
            zoned("ended_at", true),
            field("duration_secs", "int32", true),
            field("billable_secs", "int32", true),
            text("caller_number"),
            text("tracking_number"),
            text("destination_number"),
            text("campaign_id"),
            text("campaign_name"),
            text("publisher_id"),
            text("publisher_name"),
            text("buyer_id"),
            text("buyer_name"),
            field("status", "string", false),
            text("provider_status"),
            field("converted", "boolean", true),
            money("revenue"),
            money("payout"),
            text("currency"),
            text("recording_url"),
            tags,
            field("source", "string", false),
            zoned("observed_at", false),
            zoned("provider_updated_at", true),
            field("raw", "bytes", true),
            field("kafka_topic", "string", false),
            field("kafka_partition", "int32", false),
            field("kafka_offset", "int64", false),
        ],
    })
}

fn timestamp(t: &DateTime<Utc>) -> Value {
    Value::String(t.to_rfc3339_opts(SecondsFormat::Micros, true))
}

/// Connect's Decimal: the unscaled value's shortest big-endian two's complement, in base64.
fn decimal(d: &Decimal) -> Value {
    let mut d = *d;
    d.rescale(MONEY_SCALE);
    let bytes = d.mantissa().to_be_bytes();
    // drop leading bytes that only repeat the sign
    let mut start = 0;
    while start + 1 < bytes.len() {
        let (b, next) = (bytes[start], bytes[start + 1]);
        if (b == 0x00 && next & 0x80 == 0) || (b == 0xff && next & 0x80 != 0) {
            start += 1;
        } else {
            break;
        }
    }
    Value::String(BASE64.encode(&bytes[start..]))
}

fn opt<T>(v: &Option<T>, f: impl Fn(&T) -> Value) -> Value {
    v.as_ref().map_or(Value::Null, f)
}

fn text(v: &Option<String>) -> Value {
    opt(v, |s| Value::String(s.clone()))
}

/// The key and value payloads of one call, at its Kafka coordinates.
fn payloads(r: &CallRecord, topic: &str, partition: i32, offset: i64) -> (Value, Value) {
    let key = json!({
        "provider": r.provider.as_str(),
        "account_id": r.account_id,
        "call_id": r.call_id,
    });
    let mut v = Map::new();
    v.insert("provider".into(), r.provider.as_str().into());
    v.insert("account_id".into(), r.account_id.clone().into());
    v.insert("call_id".into(), r.call_id.clone().into());
    v.insert("version".into(), r.version.into());
    v.insert(
        "fingerprint".into(),
        callsync_schemas::ContentFingerprint::of(r).as_i64().into(),
    );
    v.insert("started_at".into(), timestamp(&r.started_at));
    v.insert("answered_at".into(), opt(&r.answered_at, timestamp));
    v.insert("ended_at".into(), opt(&r.ended_at, timestamp));
    v.insert(
        "duration_secs".into(),
        opt(&r.duration_secs, |x| (*x).into()),
    );
    v.insert(
        "billable_secs".into(),
        opt(&r.billable_secs, |x| (*x).into()),
    );
    v.insert("caller_number".into(), text(&r.caller_number));
    v.insert("tracking_number".into(), text(&r.tracking_number));
    v.insert("destination_number".into(), text(&r.destination_number));
    v.insert("campaign_id".into(), text(&r.campaign_id));
    v.insert("campaign_name".into(), text(&r.campaign_name));
    v.insert("publisher_id".into(), text(&r.publisher_id));
    v.insert("publisher_name".into(), text(&r.publisher_name));
    v.insert("buyer_id".into(), text(&r.buyer_id));
    v.insert("buyer_name".into(), text(&r.buyer_name));
    v.insert("status".into(), r.status.as_str().into());
    v.insert("provider_status".into(), text(&r.provider_status));
    v.insert("converted".into(), opt(&r.converted, |x| (*x).into()));
    v.insert("revenue".into(), opt(&r.revenue, decimal));
    v.insert("payout".into(), opt(&r.payout, decimal));
    v.insert("currency".into(), text(&r.currency));
    v.insert("recording_url".into(), text(&r.recording_url));
    v.insert(
        "tags".into(),
        Value::String(serde_json::to_string(&r.tags).unwrap_or_else(|_| "{}".into())),
    );
    v.insert("source".into(), r.source.as_str().into());
    v.insert("observed_at".into(), timestamp(&r.observed_at));
    v.insert(
        "provider_updated_at".into(),
        opt(&r.provider_updated_at, timestamp),
    );
    v.insert("raw".into(), opt(&r.raw, |b| BASE64.encode(b).into()));
    v.insert("kafka_topic".into(), topic.into());
    v.insert("kafka_partition".into(), partition.into());
    v.insert("kafka_offset".into(), offset.into());
    (key, Value::Object(v))
}

/// `{"schema":...,"payload":...}` with the schema text written once and reused.
fn envelope(schema: &str, payload: &Value) -> Vec<u8> {
    format!("{{\"schema\":{schema},\"payload\":{payload}}}").into_bytes()
}

/// Produces `calls` as the connector reads them to `topic`, call `i` to partition
/// `i % partitions` (its offset there `i / partitions`, the topic being new), so that the
/// rows it writes carry the same Kafka coordinates as the other methods' rows.
pub fn produce(
    factory: &KafkaClientFactory,
    topic: &str,
    calls: &[CallRecord],
    partitions: i32,
) -> anyhow::Result<()> {
    let producer: BaseProducer =
        factory.create("bench peer producer", &factory.producer_config())?;
    let (key_schema, value_schema) = (key_schema().to_string(), value_schema().to_string());
    for (i, call) in calls.iter().enumerate() {
        let (partition, offset) = crate::sink_drain::coordinates(i, partitions);
        let (key, value) = payloads(call, topic, partition, offset);
        let (key, value) = (envelope(&key_schema, &key), envelope(&value_schema, &value));
        let record = BaseRecord::to(topic)
            .partition(partition)
            .key(key.as_slice())
            .payload(value.as_slice());
        send_waiting(&producer, record).with_context(|| format!("producing to {topic}"))?;
    }
    producer
        .flush(Duration::from_secs(120))
        .with_context(|| format!("flushing the records for {topic}"))?;
    Ok(())
}

/// Where the connector connects: `jdbc:postgresql://host:port/db` and the user.
fn jdbc_target(database_url: &str) -> anyhow::Result<(String, String)> {
    let url = url::Url::parse(database_url).context("parsing the database URL")?;
    let host = url.host_str().context("the database URL has no host")?;
    let port = url.port().unwrap_or(5432);
    let db = url.path().trim_start_matches('/');
    let user = if url.username().is_empty() {
        "postgres".to_string()
    } else {
        url.username().to_string()
    };
    Ok((
        format!("jdbc:postgresql://{host}:{port}/{db}?reWriteBatchedInserts=true"),
        user,
    ))
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Writes the worker's and the connector's properties into `dir`.
fn write_configs(
    dir: &Path,
    bootstrap: &str,
    plugin_path: &Path,
    topic: &str,
    database_url: &str,
    config: &PeerConfig,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let worker = dir.join("connect-standalone.properties");
    let connector = dir.join("debezium-jdbc-sink.properties");
    let port = free_port()?;
    std::fs::write(
        &worker,
        format!(
            "bootstrap.servers={bootstrap}\n\
             key.converter=org.apache.kafka.connect.json.JsonConverter\n\
             value.converter=org.apache.kafka.connect.json.JsonConverter\n\
             key.converter.schemas.enable=true\n\
             value.converter.schemas.enable=true\n\
             offset.storage.file.filename={}\n\
             offset.flush.interval.ms=10000\n\
             listeners=http://127.0.0.1:{port}\n\
             plugin.path={}\n\
             plugin.discovery=service_load\n\
             # a connector batch is at most one poll (Debezium's batch.size docs)\n\
             consumer.max.poll.records={}\n",
            dir.join("connect.offsets").display(),
            plugin_path.display(),
            config.batch_rows,
        ),
    )
    .with_context(|| format!("writing {}", worker.display()))?;
    let (jdbc_url, user) = jdbc_target(database_url)?;
    std::fs::write(
        &connector,
        format!(
            "name=callsync-bench-debezium-{}\n\
             connector.class=io.debezium.connector.jdbc.JdbcSinkConnector\n\
             tasks.max={}\n\
             topics={topic}\n\
             connection.url={jdbc_url}\n\
             connection.username={user}\n\
             connection.password=\n\
             insert.mode=upsert\n\
             primary.key.mode=record_key\n\
             schema.evolution=none\n\
             collection.name.format=calls\n\
             batch.size={}\n\
             use.reduction.buffer=true\n\
             use.time.zone=UTC\n",
            uuid::Uuid::new_v4().simple(),
            config.tasks,
            config.batch_rows,
        ),
    )
    .with_context(|| format!("writing {}", connector.display()))?;
    Ok((worker, connector))
}

/// Where the peer reads and writes.
pub struct PeerTarget<'a> {
    pub bootstrap: &'a str,
    pub topic: &'a str,
    pub database_url: &'a str,
    /// the plugin path [`fetch`] returned
    pub plugin_path: &'a Path,
}

/// Runs the connector from an empty `calls` table until every call of the topic is in it.
pub async fn drain(
    pool: &sqlx::PgPool,
    target: &PeerTarget<'_>,
    keys: &LandedKeys,
    servers: &Servers,
    config: &PeerConfig,
) -> anyhow::Result<MethodFigures> {
    let work = tempfile::tempdir()?;
    let (worker, connector) = write_configs(
        work.path(),
        target.bootstrap,
        target.plugin_path,
        target.topic,
        target.database_url,
        config,
    )?;
    let script = services::repo_root().join("scripts/kafka-connect.sh");
    let log = work.path().join("connect.log");
    let log_file = std::fs::File::create(&log)?;
    let watch = DrainWatch::start("kafka connect", servers);
    let started = Instant::now();
    let child = std::process::Command::new("bash")
        .arg(&script)
        .arg("run")
        .arg(&worker)
        .arg(&connector)
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting {} run", script.display()))?;
    // `run` execs the JVM: the child's pid is the worker's
    let mut process = BenchProcess::adopt(child, "Kafka Connect with the Debezium JDBC sink", log);
    let figures = watch
        .until_landed(pool, keys, &mut process, started)
        .await
        .context("the Debezium JDBC sink's drain")?;
    process.terminate(Duration::from_secs(30))?;
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_connects_shortest_twos_complement() {
        let b = |s: &str| decimal(&s.parse::<Decimal>().expect("decimal"));
        // 1.5 at scale 4 = 15000 = 0x3a98
        assert_eq!(b("1.5"), Value::String(BASE64.encode([0x3a, 0x98])));
        // 0.0128 = 128 = 0x0080: the zero byte stays, or it would read as -128
        assert_eq!(b("0.0128"), Value::String(BASE64.encode([0x00, 0x80])));
        // -0.0001 = -1 = 0xff
        assert_eq!(b("-0.0001"), Value::String(BASE64.encode([0xff])));
        assert_eq!(b("0"), Value::String(BASE64.encode([0x00])));
    }

    #[test]
    fn a_record_carries_every_column_its_schema_names() {
        let call = callsync_processors::synthetic::call_record(7, 1);
        let (key, value) = payloads(&call, "t", 3, 41);
        let names = |schema: Value| -> Vec<String> {
            schema["fields"]
                .as_array()
                .map(|f| {
                    f.iter()
                        .filter_map(|f| f["field"].as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let value_fields = names(value_schema());
        assert_eq!(value_fields.len(), value.as_object().map_or(0, |m| m.len()));
        for f in &value_fields {
            assert!(value.get(f).is_some(), "{f} missing from the payload");
        }
        // the columns of `calls` the sink writes (all but synced_at, its default)
        for c in callsync_sinks::columns::CALL_COLUMNS {
            assert!(value_fields.iter().any(|f| f == c), "{c} has no field");
        }
        assert_eq!(names(key_schema()), ["provider", "account_id", "call_id"]);
        assert_eq!(key["call_id"], "c0000000007");
        assert_eq!(value["kafka_offset"], 41);
        assert!(value["started_at"]
            .as_str()
            .is_some_and(|s| s.ends_with(".000000Z")));
    }
}
