//! `callsync replay` on the real broker: replay by datetime re-delivers exactly the records
//! since that time, a dry run changes nothing, and an active group is refused.
//!
//! Needs `KAFKA_BOOTSTRAP` (scripts/kafka-broker.sh start); skipped without it, fails under CI.

mod ops_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use callsync::ops::{run_replay, OpsError, ReplayArgs};
use chrono::{TimeZone, Utc};
use ops_support::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedHeaders;

fn args(group: &str, topic: &str) -> ReplayArgs {
    ReplayArgs {
        group: group.to_string(),
        topic: topic.to_string(),
        to_datetime: None,
        to_offset: None,
        shift_by: None,
        to_earliest: false,
        to_latest: false,
        partitions: vec![],
        dry_run: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_by_datetime_redelivers_exactly_the_records_since_then_and_dry_run_changes_nothing()
{
    let kafka = callsync_testkit::skip_unless_kafka!();
    let prefix = unique_prefix(&kafka, "ops-replay");
    let f = factory(&kafka, &prefix);
    let topic = f.settings().topic("analytics-input");
    kafka
        .create_topic(&topic, 3, &[])
        .await
        .expect("create topic");

    // 24 records an hour before the cut, 9 after it, spread over the partitions
    // the broker refuses timestamps more than an hour ahead: stay in the recent past
    let cut = (Utc::now() - chrono::Duration::minutes(10)).timestamp_millis();
    let mut records = Vec::new();
    for i in 0..24 {
        records.push((
            format!("old-{i}"),
            b"v".to_vec(),
            Some(cut - 3_600_000 + i * 1000),
            Some((i % 3) as i32),
            OwnedHeaders::new(),
        ));
    }
    for i in 0..9 {
        records.push((
            format!("new-{i}"),
            b"v".to_vec(),
            Some(cut + i * 1000),
            Some(((i + 1) % 3) as i32),
            OwnedHeaders::new(),
        ));
    }
    produce(&f, &topic, records).await;

    let group = kafka.unique_group("analytics");
    let (f2, g2, t2) = (f.clone(), group.clone(), topic.clone());
    let first = tokio::task::spawn_blocking(move || consume_group_to_end(&f2, &g2, &t2))
        .await
        .expect("join");
    assert_eq!(first.len(), 33, "the group read everything once");
    let before = committed(&f, &group, &topic);
    assert_eq!(before.values().sum::<i64>(), 33);

    // dry run: the plan, nothing committed
    let mut a = args(&group, &topic);
    a.to_datetime = Some(Utc.timestamp_millis_opt(cut).single().expect("cut"));
    a.dry_run = true;
    let mut out = Vec::new();
    let plan = run_replay(&a, &f, &mut out).await.expect("dry run");
    let text = String::from_utf8(out).expect("utf8");
    assert!(text.contains("dry run"), "{text}");
    assert!(!plan.applied);
    assert_eq!(
        plan.partitions.iter().map(|m| m.lag_after).sum::<i64>(),
        9,
        "{text}"
    );
    assert_eq!(
        committed(&f, &group, &topic),
        before,
        "a dry run changes nothing"
    );

    // the real run
    a.dry_run = false;
    let mut out = Vec::new();
    let report = run_replay(&a, &f, &mut out).await.expect("replay");
    let text = String::from_utf8(out).expect("utf8");
    println!("{text}");
    assert!(report.applied);
    assert!(
        text.contains("lag-before") && text.contains("lag-after"),
        "{text}"
    );
    let after = committed(&f, &group, &topic);
    assert_eq!(after, report.new_offsets());
    assert_eq!(after.values().sum::<i64>(), 33 - 9);

    // a real consumer of the group now receives exactly the 9 records since the cut
    let (f2, g2, t2) = (f.clone(), group.clone(), topic.clone());
    let mut again = tokio::task::spawn_blocking(move || consume_group_to_end(&f2, &g2, &t2))
        .await
        .expect("join");
    again.sort();
    let mut expected: Vec<String> = (0..9).map(|i| format!("new-{i}")).collect();
    expected.sort();
    assert_eq!(again, expected);

    // a time after every record: every partition goes to its end (nothing to replay)
    let mut late = args(&group, &topic);
    late.to_datetime = Some(
        Utc.timestamp_millis_opt(cut + 86_400_000)
            .single()
            .expect("late"),
    );
    let report = run_replay(&late, &f, &mut Vec::new())
        .await
        .expect("late replay");
    assert!(report
        .partitions
        .iter()
        .all(|m| m.new == m.watermarks.high && m.lag_after == 0));

    // shift, earliest, offsets clamp to the watermarks; --partitions restricts
    let mut shift = args(&group, &topic);
    shift.shift_by = Some(-1_000);
    shift.partitions = vec![1];
    let report = run_replay(&shift, &f, &mut Vec::new())
        .await
        .expect("shift");
    assert_eq!(report.partitions.len(), 1);
    assert_eq!(report.partitions[0].new, 0, "clamped to the low watermark");
    let mut to = args(&group, &topic);
    to.to_offset = Some(1_000_000);
    let report = run_replay(&to, &f, &mut Vec::new())
        .await
        .expect("to offset");
    assert!(report.partitions.iter().all(|m| m.new == m.watermarks.high));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_is_refused_while_the_group_has_members() {
    let kafka = callsync_testkit::skip_unless_kafka!();
    let prefix = unique_prefix(&kafka, "ops-replay-active");
    let f = factory(&kafka, &prefix);
    let topic = f.settings().topic("analytics-input");
    kafka
        .create_topic(&topic, 2, &[])
        .await
        .expect("create topic");
    produce(
        &f,
        &topic,
        vec![(
            "k".into(),
            b"v".to_vec(),
            None,
            Some(0),
            OwnedHeaders::new(),
        )],
    )
    .await;
    let group = kafka.unique_group("analytics-live");

    // a live member of the group, polling on its own thread
    let stop = Arc::new(AtomicBool::new(false));
    let joined = Arc::new(AtomicBool::new(false));
    let member = {
        let (f, group, topic, stop, joined) = (
            f.clone(),
            group.clone(),
            topic.clone(),
            stop.clone(),
            joined.clone(),
        );
        std::thread::spawn(move || {
            let consumer: BaseConsumer = f
                .create(
                    "member",
                    &f.consumer_config(&group, callsync_runtime::Isolation::ReadCommitted),
                )
                .expect("consumer");
            consumer.subscribe(&[&topic]).expect("subscribe");
            while !stop.load(Ordering::SeqCst) {
                let _ = consumer.poll(Duration::from_millis(100));
                if consumer
                    .assignment()
                    .map(|a| a.count() > 0)
                    .unwrap_or(false)
                {
                    joined.store(true, Ordering::SeqCst);
                }
            }
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !joined.load(Ordering::SeqCst) {
        assert!(
            std::time::Instant::now() < deadline,
            "the member never joined"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut a = args(&group, &topic);
    a.to_earliest = true;
    let err = run_replay(&a, &f, &mut Vec::new())
        .await
        .expect_err("refused");
    let msg = err.to_string();
    assert!(
        matches!(err, OpsError::GroupActive { members: 1, .. }),
        "{msg}"
    );
    assert!(
        msg.contains(&group) && msg.contains("stop its consumers"),
        "{msg}"
    );

    // the dry run still shows the plan, with a note
    a.dry_run = true;
    let mut out = Vec::new();
    run_replay(&a, &f, &mut out)
        .await
        .expect("dry run while active");
    let text = String::from_utf8(out).expect("utf8");
    assert!(text.contains("a real run is refused"), "{text}");

    stop.store(true, Ordering::SeqCst);
    member.join().expect("member thread");
    // once the member has left, the same replay goes through
    a.dry_run = false;
    let report = run_replay(&a, &f, &mut Vec::new())
        .await
        .expect("replay after the member left");
    assert!(report.applied);
}

/// One naming rule in the CLI: `replay --topic calls` with `kafka.topic_prefix` set takes the
/// base name and adds the prefix (before, it answered "topic calls does not exist"), the full
/// name works too, and the command says which it used. Run as users do: the real binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_takes_the_base_name_or_the_full_name_and_says_which() {
    let kafka = callsync_testkit::skip_unless_kafka!();
    let prefix = unique_prefix(&kafka, "ops-naming");
    let f = factory(&kafka, &prefix);
    let calls = f.settings().topic("calls");
    kafka
        .create_topic(&calls, 2, &[])
        .await
        .expect("create topic");
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("callsync.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbootstrap_servers = \"{}\"\ntopic_prefix = \"{prefix}\"\n",
            kafka.bootstrap()
        ),
    )
    .expect("config");
    let group = kafka.unique_group("analytics");
    for (given, says) in [
        (
            "calls",
            format!("topic {calls} (base name calls with kafka.topic_prefix \"{prefix}\")"),
        ),
        (
            calls.as_str(),
            format!("topic {calls} (full name, as given)"),
        ),
    ] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_callsync"));
        for (key, _) in std::env::vars() {
            if key.starts_with("CALLSYNC") {
                cmd.env_remove(key);
            }
        }
        let out = cmd
            .arg("--config")
            .arg(&config)
            .args([
                "replay",
                "--group",
                &group,
                "--topic",
                given,
                "--to-earliest",
                "--dry-run",
            ])
            .output()
            .expect("run callsync replay");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "replay --topic {given}: {stderr}");
        assert!(
            stderr.contains(&says),
            "replay --topic {given} says {says:?}: {stderr}"
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(&calls));
    }
}
