//! Schema-registry interop: callsync writes CallRecords in the Confluent wire format,
//! registering the schema through `callsync_schemas::SchemaRegistryClient`; Confluent's own
//! Python consumer (confluent-kafka with its AvroDeserializer, fetching the writer schema
//! from the registry) reads them, and the values must be the same.
//!
//! Registry: `SCHEMA_REGISTRY_URL` when set (e.g. Karapace started by scripts/karapace.sh),
//! else `tests/interop/mini_registry.py` (a minimal in-memory server of the registry's REST
//! API). Python: a venv in `.work/interop-venv` with tests/interop/requirements.txt, created
//! on first use. Needs `KAFKA_BOOTSTRAP`; skipped without it or without python3 (fails under CI).

mod ops_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use callsync_schemas::{encode_to_vec, CallRecord, Provider, SchemaRegistryClient, WireFormat};
use callsync_sinks::testing::sample_call;
use ops_support::*;
use rdkafka::message::OwnedHeaders;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
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

/// A child process killed when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_mini_registry(python: &Path) -> (KillOnDrop, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let port_file = dir.path().join("port");
    let child = Command::new(python)
        .arg(repo_root().join("tests/interop/mini_registry.py"))
        .arg(&port_file)
        .spawn()
        .expect("start mini_registry.py");
    let guard = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(port) = std::fs::read_to_string(&port_file) {
            if !port.trim().is_empty() {
                return (guard, format!("http://127.0.0.1:{}", port.trim()));
            }
        }
        assert!(Instant::now() < deadline, "mini_registry.py did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluent_python_consumer_decodes_our_confluent_wire_format_records() {
    let kafka = callsync_testkit::skip_unless_kafka!();
    let Some(python) = interop_python() else {
        return;
    };
    let (_registry_process, registry_url) = match std::env::var("SCHEMA_REGISTRY_URL") {
        Ok(url) if !url.trim().is_empty() => (None, url.trim().to_string()),
        _ => {
            let (guard, url) = start_mini_registry(&python);
            (Some(guard), url)
        }
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
    let records = calls
        .iter()
        .map(|c| {
            let bytes = encode_to_vec(c, format).expect("encode");
            assert_eq!(bytes[0], 0, "Confluent magic byte");
            (
                c.key().into_string(),
                bytes,
                None,
                None,
                OwnedHeaders::new(),
            )
        })
        .collect();
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
