//! `callsync topics ensure` on the real broker: creates the catalogue with the
//! design's configs, and a second run changes nothing.

use std::process::Command;
use std::time::Duration;

use callsync_runtime::{
    ensure_topics, CatalogueOptions, KafkaClientFactory, KafkaSettings, TopicCatalogue, TopicStatus,
};
use rdkafka::admin::{AdminOptions, ResourceSpecifier};

fn prefix() -> String {
    format!("t{}.", uuid::Uuid::new_v4().simple())
}

async fn topic_config(factory: &KafkaClientFactory, topic: &str, key: &str) -> Option<String> {
    let admin = factory.admin().expect("admin client");
    let results = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .expect("describe configs");
    let resource = results
        .into_iter()
        .next()
        .expect("one result")
        .expect("resource");
    resource.get(key).and_then(|e| e.value.clone())
}

#[tokio::test]
async fn ensure_creates_compacted_state_topics_and_a_second_run_changes_nothing() {
    let kafka = callsync_testkit::skip_unless_kafka!();
    let mut settings = KafkaSettings::plaintext(kafka.bootstrap());
    settings.topic_prefix = prefix();
    let factory = KafkaClientFactory::new(settings.clone());
    let options = CatalogueOptions {
        call_partitions: 3,
        calls_retention_days: 30,
    };
    let catalogue = TopicCatalogue::new(&settings, &options);
    let admin = factory.admin().expect("admin client");

    let first = ensure_topics(&admin, &catalogue, Duration::from_secs(30))
        .await
        .expect("first ensure");
    assert_eq!(first.created(), 7, "{first}");

    for base in ["callsync.dedup-state", "callsync.source-offsets"] {
        let topic = settings.topic(base);
        assert_eq!(
            topic_config(&factory, &topic, "cleanup.policy")
                .await
                .as_deref(),
            Some("compact"),
            "{topic}"
        );
    }
    assert_eq!(
        topic_config(&factory, &settings.topic("calls.raw"), "retention.ms")
            .await
            .as_deref(),
        Some("604800000")
    );

    let second = ensure_topics(&admin, &catalogue, Duration::from_secs(30))
        .await
        .expect("second ensure");
    assert!(
        second
            .topics
            .iter()
            .all(|(_, s)| *s == TopicStatus::UpToDate),
        "second run should change nothing:\n{second}"
    );

    // a catalogue that wants more partitions is reported, not applied
    let wider = TopicCatalogue::new(
        &settings,
        &CatalogueOptions {
            call_partitions: 4,
            calls_retention_days: 30,
        },
    );
    let third = ensure_topics(&admin, &wider, Duration::from_secs(30))
        .await
        .expect("third ensure");
    assert_eq!(third.differing(), 4, "{third}");
    assert!(
        third
            .to_string()
            .contains("partitions: expected 4, found 3"),
        "{third}"
    );
}

#[test]
fn the_cli_reports_created_then_ok() {
    let Some(kafka) = callsync_testkit::real_kafka() else {
        return;
    };
    let prefix = prefix();
    let run = || {
        let out = Command::new(env!("CARGO_BIN_EXE_callsync"))
            .env("CALLSYNC__KAFKA__BOOTSTRAP_SERVERS", kafka.bootstrap())
            .env("CALLSYNC__KAFKA__TOPIC_PREFIX", &prefix)
            .env("CALLSYNC__TOPICS__CALL_PARTITIONS", "2")
            .args(["topics", "ensure"])
            .output()
            .expect("run callsync");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let first = run();
    assert_eq!(first.matches("created").count(), 7, "{first}");
    let second = run();
    assert_eq!(second.matches("ok ").count(), 7, "{second}");
    assert!(
        second.contains(&format!("{prefix}callsync.dedup-state")),
        "{second}"
    );
}
