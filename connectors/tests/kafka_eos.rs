//! Exactly-once on the real broker: a backfill killed without warning (SIGKILL of a child
//! process, mid-page or mid-transaction) and restarted ends with every call version in
//! `calls.raw` exactly once (read_committed), equal to the simulator's truth.
//! Skipped without `KAFKA_BOOTSTRAP` (fails under CI=true), as testkit's `real_kafka` rules.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use callsync_connectors::{run_sync, ConnectorsConfig, KafkaSyncStore, NoProgress};
use callsync_runtime::{names, Isolation, KafkaClientFactory, KafkaSettings};
use callsync_schemas::{decode_call_record, CallRecord, Provider, SyncRequest};
use callsync_simulator::FaultConfig;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

const CHILD_ENV: &str = "CALLSYNC_CONNECTORS_EOS_CHILD";

#[derive(Serialize, Deserialize)]
struct ChildJob {
    bootstrap: String,
    prefix: String,
    config: serde_json::Value,
    request: SyncRequest,
}

/// The child process: runs the backfill to its end (or until killed).
#[tokio::test]
async fn child_backfill_worker() {
    let Ok(job) = std::env::var(CHILD_ENV) else {
        return;
    };
    let job: ChildJob = serde_json::from_str(&job).expect("child job");
    let config: ConnectorsConfig = serde_json::from_value(job.config).expect("config");
    let mut settings = KafkaSettings::plaintext(job.bootstrap);
    settings.topic_prefix = job.prefix.clone();
    let factory = KafkaClientFactory::new(settings);
    let store = KafkaSyncStore::new(
        factory,
        format!("{}txn", job.prefix),
        Duration::from_secs(30),
    );
    let deps = common::deps(&config, Arc::new(store));
    run_sync(&job.request, &deps, NoProgress)
        .await
        .expect("backfill completes");
}

fn read_committed(factory: &KafkaClientFactory, topic: &str, partitions: i32) -> Vec<CallRecord> {
    let mut cfg = factory.consumer_config(&format!("{topic}-verify"), Isolation::ReadCommitted);
    cfg.set("enable.partition.eof", "true");
    let consumer: BaseConsumer = cfg.create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    let mut eof = HashSet::new();
    let mut out = Vec::new();
    let started = Instant::now();
    while eof.len() < partitions as usize {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "reading {topic} timed out"
        );
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                eof.insert(p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            Some(Ok(m)) => {
                out.push(decode_call_record(m.payload().expect("value")).expect("decodes"))
            }
        }
    }
    out
}

#[tokio::test]
async fn killed_backfill_resumes_exactly_once_on_the_real_broker() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let Some(kafka) = callsync_testkit::real_kafka() else {
        eprintln!("skipped: no KAFKA_BOOTSTRAP");
        return;
    };
    let prefix = format!("{}.", kafka.unique_topic("cs-conn-eos"));
    let raw_partitions = 3;
    for (name, partitions, configs) in [
        (names::CALLS_RAW, raw_partitions, vec![]),
        (names::CALLS_DLQ, 1, vec![]),
        (names::SYNC_EVENTS, 1, vec![]),
        (
            names::SOURCE_OFFSETS,
            1,
            vec![("cleanup.policy", "compact")],
        ),
    ] {
        kafka
            .create_topic(&format!("{prefix}{name}"), partitions, &configs)
            .await
            .expect("topic created");
    }

    let provider = Provider::Retreaver;
    let sim = common::simulator(provider, 3_000).await;
    // slow enough that kills land mid-run: ~120 pages at 20 ms latency, 1200 requests/min
    sim.set_faults(
        provider,
        None,
        FaultConfig {
            latency_ms: 20,
            ..FaultConfig::default()
        },
    )
    .expect("latency");
    let (config, account) = common::config(
        &sim,
        provider,
        1_200.0,
        serde_json::json!({"account": {"per_page": 25}, "sync": {"backfill_window_secs": 2 * 86400, "backfill_concurrency": 3}}),
    );
    let request = common::full_history(&sim, provider, &account, "eos-backfill");
    // the config again, as JSON, for the child (secrets serialize redacted, so rebuild it)
    let (_, _) = (&config, &account);
    let child_config = {
        let info = sim.account_info(provider, &account).expect("info");
        serde_json::json!({
            "sync": {"backfill_window_secs": 2 * 86400, "backfill_concurrency": 3, "request_timeout_secs": 5},
            "retry": {"base_delay_ms": 5, "max_delay_ms": 100},
            "retreaver": [{"account": account, "api_key": info.credentials.api_key, "company_id": account,
                           "base_url": sim.base_url(provider), "per_page": 25,
                           "rate_limit": {"per_minute": 1200.0, "max_concurrency": 3}}]
        })
    };
    let job = serde_json::to_string(&ChildJob {
        bootstrap: kafka.bootstrap().to_string(),
        prefix: prefix.clone(),
        config: child_config,
        request,
    })
    .expect("job");
    let exe = std::env::current_exe().expect("test binary");
    let spawn = || {
        Command::new(&exe)
            .args(["child_backfill_worker", "--exact", "--test-threads=1"])
            .env(CHILD_ENV, &job)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("child starts")
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut kills = 0;
    for _ in 0..4 {
        let mut child = spawn();
        let after = Duration::from_millis(rng.gen_range(1_500..4_000));
        tokio::time::sleep(after).await;
        if child.try_wait().expect("wait").is_some() {
            break; // finished before the kill
        }
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        kills += 1;
    }
    let mut child = spawn();
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "final run did not finish"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "final run failed: {status}");
    eprintln!("killed {kills} times, then completed");

    let mut settings = KafkaSettings::plaintext(kafka.bootstrap());
    settings.topic_prefix = prefix.clone();
    let factory = KafkaClientFactory::new(settings);
    let topic = format!("{prefix}{}", names::CALLS_RAW);
    let records =
        tokio::task::spawn_blocking(move || read_committed(&factory, &topic, raw_partitions))
            .await
            .expect("reader");
    let versions: BTreeSet<_> = records
        .iter()
        .map(|r| (r.key().into_string(), r.version))
        .collect();
    assert_eq!(
        versions.len(),
        records.len(),
        "every call version exactly once in calls.raw"
    );
    common::assert_matches_truth(&sim, provider, &account, &records);
    for (name, _) in [
        (names::CALLS_RAW, 0),
        (names::CALLS_DLQ, 0),
        (names::SYNC_EVENTS, 0),
        (names::SOURCE_OFFSETS, 0),
    ] {
        let _ = kafka.delete_topic(&format!("{prefix}{name}")).await;
    }
}
