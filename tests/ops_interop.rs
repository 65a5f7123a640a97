//! Schema-registry interop against a real Confluent-compatible registry: callsync writes
//! CallRecords in the Confluent wire format, registering the schema through
//! `callsync_schemas::SchemaRegistryClient`; Confluent's own Python consumer (confluent-kafka
//! with its AvroDeserializer, fetching the writer schema from the registry) reads them, and
//! the values must be the same. A second test checks the registry API our client relies on
//! (subjects, versions, schema by id, compatibility, content type) against the same registry.
//!
//! Registry: `SCHEMA_REGISTRY_URL`, the Confluent API of Apicurio Registry started by
//! `scripts/schema-registry.sh start` (scripts/test.sh starts it). Python: a venv in
//! `.work/interop-venv` with tests/interop/requirements.txt, created on first use. The first
//! test needs `KAFKA_BOOTSTRAP` and `SCHEMA_REGISTRY_URL`, the second `SCHEMA_REGISTRY_URL`:
//! a missing one skips them, and under `CI=true` fails them.

mod ops_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use callsync_schemas::{
    encode_to_vec, value_subject, AvroRecord, CallRecord, Provider, RegistryDecoder, RegistryError,
    SchemaRegistryClient, WireFormat,
};
use callsync_sinks::testing::sample_call;
use ops_support::*;
use rdkafka::message::OwnedHeaders;
use serde_json::{json, Value};

/// The content type of the registry API.
const REGISTRY_JSON: &str = "application/vnd.schemaregistry.v1+json";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `SCHEMA_REGISTRY_URL`, or None (after `require`: a failure under CI) when it is unset.
fn registry_url() -> Option<String> {
    match std::env::var("SCHEMA_REGISTRY_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url.trim().trim_end_matches('/').to_string()),
        _ => {
            callsync_testkit::require(
                "schema registry",
                "SCHEMA_REGISTRY_URL is not set (scripts/schema-registry.sh start prints it)",
            );
            None
        }
    }
}

/// The venv's python with confluent-kafka installed, or None (after `require`) when python3
/// is missing.
fn interop_python() -> Option<PathBuf> {
    let venv = repo_root().join(".work").join("interop-venv");
    let python = venv.join("bin").join("python");
    let ready = |p: &Path| {
        Command::new(p)
            .args([
                "-c",
                "import confluent_kafka, fastavro, confluent_kafka.schema_registry.avro",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if python.exists() && ready(&python) {
        return Some(python);
    }
    let base = ["python3.11", "python3.12", "python3"]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
        });
    let Some(base) = base else {
        callsync_testkit::require("python3", "no python3 on PATH for the interop consumer");
        return None;
    };
    let status = Command::new(base)
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .expect("python -m venv");
    assert!(status.success(), "creating the venv {venv:?} failed");
    let status = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "-r"])
        .arg(repo_root().join("tests/interop/requirements.txt"))
        .status()
        .expect("pip install");
    assert!(
        status.success(),
        "pip install -r tests/interop/requirements.txt failed"
    );
    assert!(
        ready(&python),
        "confluent-kafka not importable after install"
    );
    Some(python)
}

/// A raw call to the registry's REST API (what our client does not wrap): the status, the
/// response content type and the JSON body.
async fn registry_call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (u16, String, Value) {
    let mut req = http
        .request(method.clone(), &url)
        .header(reqwest::header::ACCEPT, REGISTRY_JSON);
    if let Some(body) = body {
        req = req
            .header(reqwest::header::CONTENT_TYPE, REGISTRY_JSON)
            .body(body.to_string());
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = resp.text().await.expect("response body");
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{method} {url}: HTTP {status}, not JSON ({e}): {text}"));
    (status, content_type, json)
}

/// CallRecord's schema with one more field appended.
fn call_schema_with(field: Value) -> String {
    let mut schema: Value =
        serde_json::from_str(CallRecord::schema_info().json()).expect("our schema is JSON");
    schema["fields"]
        .as_array_mut()
        .expect("a record schema has fields")
        .push(field);
    schema.to_string()
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluent_python_consumer_decodes_our_confluent_wire_format_records() {
    let kafka = callsync_testkit::skip_unless_kafka!();
    let Some(registry_url) = registry_url() else {
        return;
    };
    let Some(python) = interop_python() else {
        return;
    };

    let prefix = unique_prefix(&kafka, "ops-interop");
    let f = factory(&kafka, &prefix);
    let topic = f.settings().topic("calls");
    kafka
        .create_topic(&topic, 1, &[])
        .await
        .expect("create topic");

    let registry = SchemaRegistryClient::new(&registry_url).expect("registry client");
    let format = registry
        .wire_format::<CallRecord>(&topic)
        .await
        .expect("register the schema");
    assert!(matches!(format, WireFormat::Confluent { .. }));

    let mut calls = [
        sample_call(
            Provider::Retreaver,
            "acct-1",
            "call-1",
            1_700_000_000_000_001,
        ),
        sample_call(Provider::Ringba, "acct-2", "call-2", 42),
        sample_call(Provider::Invoca, "acct-3", "call-3", 7),
    ];
    // optional fields absent, an empty map, no raw bytes
    calls[2].answered_at = None;
    calls[2].revenue = None;
    calls[2].tags.clear();
    calls[2].raw = None;
    // our own consumer side too: a decoder with an empty cache fetches the writer schema
    // from the registry by the id in each value
    let decoder = RegistryDecoder::<CallRecord>::new(Some(std::sync::Arc::new(
        SchemaRegistryClient::new(&registry_url).expect("registry client"),
    )));
    let mut records = Vec::new();
    for c in &calls {
        let bytes = encode_to_vec(c, format).expect("encode");
        assert_eq!(bytes[0], 0, "Confluent magic byte");
        let decoded = decoder
            .decode(&bytes)
            .await
            .expect("decode via the registry");
        assert_eq!(&decoded, c);
        records.push((
            c.key().into_string(),
            bytes,
            None,
            None,
            OwnedHeaders::new(),
        ));
    }
    produce(&f, &topic, records).await;

    let output = Command::new(&python)
        .arg(repo_root().join("tests/interop/read_calls.py"))
        .args([
            kafka.bootstrap(),
            &topic,
            &registry_url,
            &calls.len().to_string(),
            "60",
        ])
        .output()
        .expect("run read_calls.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "read_calls.py failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), calls.len(), "{stdout}");

    use base64::Engine as _;
    let micros = |t: chrono::DateTime<chrono::Utc>| serde_json::json!(t.timestamp_micros());
    for (call, line) in calls.iter().zip(&lines) {
        let v = &line["value"];
        assert_eq!(line["key"], call.key().as_str());
        assert_eq!(v["provider"], call.provider.as_str());
        assert_eq!(v["account_id"], call.account_id.as_str());
        assert_eq!(v["call_id"], call.call_id.as_str());
        assert_eq!(v["version"], call.version);
        assert_eq!(v["started_at"], micros(call.started_at));
        assert_eq!(
            v["answered_at"],
            call.answered_at.map_or(serde_json::Value::Null, micros)
        );
        assert_eq!(v["observed_at"], micros(call.observed_at));
        assert_eq!(v["duration_secs"], serde_json::json!(call.duration_secs));
        assert_eq!(v["status"], call.status.as_str());
        assert_eq!(v["source"], call.source.as_str());
        assert_eq!(v["caller_number"], serde_json::json!(call.caller_number));
        assert_eq!(v["converted"], serde_json::json!(call.converted));
        assert_eq!(v["currency"], serde_json::json!(call.currency));
        // decimal(18,4): Python's Decimal keeps the scale, e.g. "123.4567"
        let revenue = call.revenue.map(|mut d| {
            d.rescale(4);
            d.to_string()
        });
        let payout = call.payout.map(|mut d| {
            d.rescale(4);
            d.to_string()
        });
        assert_eq!(v["revenue"], serde_json::json!(revenue), "{line}");
        assert_eq!(v["payout"], serde_json::json!(payout), "{line}");
        assert_eq!(v["tags"], serde_json::json!(call.tags));
        let raw = call
            .raw
            .as_ref()
            .map(|r| base64::engine::general_purpose::STANDARD.encode(r));
        assert_eq!(v["raw"], serde_json::json!(raw));
    }
}

/// The registry calls our client makes and the ones around them, against the real registry:
/// register (idempotent, same id for the same schema), subjects and versions, schema by id
/// (from a client with an empty cache), the content type, and compatibility (a subject set to
/// BACKWARD refuses a breaking change with HTTP 409 through our client and accepts a
/// compatible one as version 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_registry_speaks_the_confluent_api_our_client_uses() {
    let Some(base) = registry_url() else {
        return;
    };
    let http = reqwest::Client::new();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let topic = format!("interop-api-{run}.calls");
    let subject = value_subject(&topic);
    let ours = CallRecord::schema_info().json();

    // register: an id, the same id again from a client with an empty cache
    let client = SchemaRegistryClient::new(&base).expect("registry client");
    let id = client
        .register_record::<CallRecord>(&topic)
        .await
        .expect("register");
    let fresh = SchemaRegistryClient::new(&base).expect("registry client");
    assert_eq!(
        fresh
            .register_record::<CallRecord>(&topic)
            .await
            .expect("register again"),
        id,
        "the same schema under the same subject keeps its id"
    );

    // schema by id, uncached: the registry gives back our schema
    let by_id = fresh.schema_by_id(id).await.expect("schema by id");
    assert_eq!(json_of(&by_id), json_of(ours));
    // an unknown id is a 404 with the registry's error body
    match fresh.schema_by_id(u32::MAX - 7).await {
        Err(RegistryError::Status { status, body, .. }) => {
            assert_eq!(status, 404, "{body}");
            assert_eq!(json_of(&body)["error_code"], 40403, "{body}");
        }
        other => panic!("an unknown schema id: expected HTTP 404, got {other:?}"),
    }

    // subjects and versions, in the API's own content type
    let (status, content_type, subjects) = registry_call(
        &http,
        reqwest::Method::GET,
        format!("{base}/subjects"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with(REGISTRY_JSON),
        "content type {content_type:?}"
    );
    assert!(
        subjects
            .as_array()
            .expect("subjects is a list")
            .contains(&json!(subject)),
        "{subject} not in {subjects}"
    );
    let versions_url = format!("{base}/subjects/{subject}/versions");
    let (status, _, versions) =
        registry_call(&http, reqwest::Method::GET, versions_url.clone(), None).await;
    assert_eq!((status, versions), (200, json!([1])));
    let (status, _, latest) = registry_call(
        &http,
        reqwest::Method::GET,
        format!("{versions_url}/latest"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(latest["subject"], json!(subject));
    assert_eq!(latest["version"], 1);
    assert_eq!(latest["id"], id);
    assert_eq!(
        json_of(latest["schema"].as_str().expect("schema text")),
        json_of(ours)
    );

    // compatibility: BACKWARD on the subject (Confluent's default level)
    let config_url = format!("{base}/config/{subject}");
    let (status, _, set) = registry_call(
        &http,
        reqwest::Method::PUT,
        config_url.clone(),
        Some(json!({"compatibility": "BACKWARD"})),
    )
    .await;
    assert_eq!((status, &set["compatibility"]), (200, &json!("BACKWARD")));
    let (status, _, level) = registry_call(&http, reqwest::Method::GET, config_url, None).await;
    assert_eq!(
        (status, &level["compatibilityLevel"]),
        (200, &json!("BACKWARD"))
    );

    // a new field without a default cannot read the old data: incompatible
    let breaking = call_schema_with(json!({"name": "interop_probe", "type": "string"}));
    // a new optional field with a default can: compatible
    let compatible = call_schema_with(
        json!({"name": "interop_probe", "type": ["null", "string"], "default": null}),
    );
    let check_url = format!("{base}/compatibility/subjects/{subject}/versions/latest");
    for (schema, expected) in [(&breaking, false), (&compatible, true)] {
        let (status, _, verdict) = registry_call(
            &http,
            reqwest::Method::POST,
            check_url.clone(),
            Some(json!({ "schema": schema })),
        )
        .await;
        assert_eq!(status, 200, "{verdict}");
        assert_eq!(verdict["is_compatible"], expected, "{verdict}");
    }
    match client.register(&subject, &breaking).await {
        Err(RegistryError::Status { status, body, .. }) => {
            assert_eq!(status, 409, "{body}");
        }
        other => panic!("a breaking change: expected HTTP 409, got {other:?}"),
    }
    let evolved = client
        .register(&subject, &compatible)
        .await
        .expect("a compatible change registers");
    assert_ne!(evolved, id);
    let (status, _, versions) =
        registry_call(&http, reqwest::Method::GET, versions_url, None).await;
    assert_eq!((status, versions), (200, json!([1, 2])));
    assert_eq!(
        json_of(&fresh.schema_by_id(evolved).await.expect("schema by id")),
        json_of(&compatible)
    );
}
