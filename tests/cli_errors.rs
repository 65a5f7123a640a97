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

#[test]
fn config_check_prints_the_effective_settings_without_secrets() {
    let cfg = config_file(
        "[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\nsasl_password = \"kafka-pw\"\n\
         [sink]\ndatabase_url = \"postgres://u:pg-pw@h/db\"\n",
    );
    let out = callsync()
        .arg("--config")
        .arg(cfg.path())
        .env("CALLSYNC__PROCESSOR__BATCH_MAX_RECORDS", "500")
        .args(["config", "check"])
        .output()
        .expect("run callsync");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("config OK for roles connector,processor,sink,scheduler,api"),
        "{stdout}"
    );
    // file + environment + defaults
    assert!(
        stdout.contains("CALLSYNC__PROCESSOR__BATCH_MAX_RECORDS"),
        "{stdout}"
    );
    assert!(stdout.contains("batch_max_records: 500"), "{stdout}");
    assert!(stdout.contains("transaction_timeout_ms: 10000"), "{stdout}");
    assert!(
        !stdout.contains("kafka-pw") && !stdout.contains("pg-pw"),
        "{stdout}"
    );
    assert!(stdout.contains("[redacted]"), "{stdout}");
}

#[test]
fn config_check_fails_naming_the_key() {
    // the old docker-compose.yml's variable
    let out = callsync()
        .env("CALLSYNC__KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
        .env("CALLSYNC__POSTGRES__URL", "postgres://u:pw@h/db")
        .args(["config", "check"])
        .output()
        .expect("run callsync");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("postgres") && stderr.contains("CALLSYNC__POSTGRES"),
        "{stderr}"
    );

    // a value serde takes but the processor cannot work with
    let out = callsync()
        .env("CALLSYNC__KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
        .env("CALLSYNC__PROCESSOR__TRANSACTION_TIMEOUT_MS", "50")
        .args(["config", "check", "--roles", "processor"])
        .output()
        .expect("run callsync");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("transaction_timeout_ms"), "{stderr}");

    // the sink role without a database, a database URL that is no URL (never echoed)
    let out = callsync()
        .env("CALLSYNC__KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
        .args(["config", "check", "--roles", "sink"])
        .output()
        .expect("run callsync");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sink.database_url"));
    let out = callsync()
        .env("CALLSYNC__KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
        .env("CALLSYNC__SINK__DATABASE_URL", "secret-password-not-a-url")
        .args(["config", "check", "--roles", "sink"])
        .output()
        .expect("run callsync");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sink.database_url"), "{stderr}");
    assert!(!stderr.contains("secret-password"), "{stderr}");
}
