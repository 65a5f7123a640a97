//! `callsync demo` at a small size: in-process Kafka, the simulator, every role and SQLite.
//! Needs no service, so it runs everywhere (CI included).

use std::process::Command;

#[test]
fn the_demo_runs_end_to_end_and_its_table_equals_the_ground_truth() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_callsync"))
        .args(["demo", "--calls", "1500", "--no-progress", "--dir"])
        .arg(dir.path())
        .env("RUST_LOG", "error,rdkafka=off")
        .output()
        .expect("the demo starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "demo failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    // the steps and the honest note about the mock cluster
    for needle in [
        "mock cluster",
        "shallow",
        "[1/4] backfill",
        "[2/4]",
        "[3/4] signed webhooks",
        "3 new calls accepted (202)",
        "2 forged/replayed rejected (401)",
        "the table equals the ground truth",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
    // the summary table
    let row = |name: &str| -> String {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {name}")))
            .unwrap_or_else(|| panic!("no {name:?} row in:\n{stdout}"))
            .to_string()
    };
    let number = |name: &str| -> u64 {
        row(name)
            .split('|')
            .nth(2)
            .and_then(|v| v.split_whitespace().next().map(str::to_string))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name:?} row has no number:\n{stdout}"))
    };
    let fetched = number("fetched");
    let upserted = number("upserted");
    let rows = number("rows in the table");
    assert!(fetched >= 1400, "fetched {fetched}\n{stdout}");
    assert!(number("duplicates dropped") > 0, "{stdout}");
    assert!(
        number("dead-lettered") > 0,
        "the data set has 1% broken records\n{stdout}"
    );
    assert!(
        upserted >= rows && rows >= 1400,
        "upserted {upserted}, rows {rows}\n{stdout}"
    );
    assert!(row("equals the ground truth").contains("yes"), "{stdout}");
    assert!(
        row("p99 latency").contains("ms") || row("p99 latency").contains("s"),
        "{stdout}"
    );
    // the command to look at the data names the kept SQLite file
    let db = dir.path().join("callsync-demo.db");
    assert!(db.exists(), "{} missing", db.display());
    assert!(
        stdout.contains(&format!("sqlite3 {}", db.display())),
        "{stdout}"
    );
}
