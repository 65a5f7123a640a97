//! The binary fails with clear messages on bad config and unreachable services.

use std::io::Write;
use std::process::Command;

fn callsync() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_callsync"));
    // keep the developer's environment out of these tests
    for (key, _) in std::env::vars() {
        if key.starts_with("CALLSYNC") {
            cmd.env_remove(key);
        }
    }
    cmd
}

fn config_file(contents: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(contents.as_bytes()).expect("write config");
    f
}

#[test]
fn a_missing_config_key_names_the_key() {
    let cfg = config_file("[kafka]\ntopic_prefix = \"x.\"\n");
    let out = callsync()
        .args(["--config"])
        .arg(cfg.path())
        .args(["topics", "ensure"])
        .output()
        .expect("run callsync");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("key `kafka`") && stderr.contains("bootstrap_servers"),
        "stderr: {stderr}"
    );
}

#[test]
fn an_unknown_config_key_is_refused_by_name() {
    let cfg =
        config_file("[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\n[topcs]\ncall_partitions = 3\n");
    let out = callsync()
        .arg("--config")
        .arg(cfg.path())
        .args(["topics", "ensure"])
        .output()
        .expect("run callsync");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("topcs"), "stderr: {stderr}");
}

#[test]
fn an_env_override_with_a_wrong_type_names_the_variable_and_key() {
    let out = callsync()
        .env("CALLSYNC__KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
        .env("CALLSYNC__TOPICS__CALL_PARTITIONS", "lots")
        .args(["topics", "ensure"])
        .output()
        .expect("run callsync");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("topics.call_partitions"),
        "stderr: {stderr}"
    );
    assert!(
        stderr.contains("CALLSYNC__TOPICS__CALL_PARTITIONS"),
        "stderr: {stderr}"
    );
}

#[test]
fn an_unreachable_broker_is_named_in_the_error() {
    // port 1 on loopback: nothing listens there
    let out = callsync()
        .env("CALLSYNC__KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
        .args(["topics", "ensure", "--timeout", "3s"])
        .output()
        .expect("run callsync");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Kafka at 127.0.0.1:1"), "stderr: {stderr}");
    assert!(
        stderr.contains("cannot reach")
            || stderr.contains("Timed out")
            || stderr.contains("transport"),
        "stderr: {stderr}"
    );
}

#[test]
fn a_malformed_malloc_trim_period_is_refused_by_name() {
    let out = callsync()
        .env("CALLSYNC_MALLOC_TRIM_SECS", "often")
        .arg("--version")
        .output()
        .expect("run callsync");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("CALLSYNC_MALLOC_TRIM_SECS") && stderr.contains("often"),
        "stderr: {stderr}"
    );
    for ok in ["0", "30"] {
        let out = callsync()
            .env("CALLSYNC_MALLOC_TRIM_SECS", ok)
            .arg("--version")
            .output()
            .expect("run callsync");
        assert!(out.status.success(), "{ok}: {out:?}");
    }
}
