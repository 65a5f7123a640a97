//! Restarts the shared services: its own test binary, so no other test runs meanwhile.
//! The two tests share one lock, so they don't overlap either.

use std::time::Duration;

use callsync_testkit::{pg_server, require, skip_unless_kafka, PgStopMode, TestkitError};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The broker started by scripts/kafka-broker.sh restarts with its data: a record written before
/// is read after, and a producer created before the restart still delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_broker_restart_keeps_data() {
    let _serial = SERIAL.lock().await;
    let kafka = skip_unless_kafka!();
    let topic = kafka.unique_topic("restart");
    kafka.create_topic(&topic, 1, &[]).await.unwrap();
    let p: FutureProducer = kafka
        .client_config()
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "60000")
        .create()
        .unwrap();
    let send = |v: &'static str| {
        p.send(
            FutureRecord::to(&topic).key("k").payload(v),
            Duration::from_secs(10),
        )
    };
    send("before").await.map_err(|(e, _)| e).unwrap();

    let t0 = std::time::Instant::now();
    match kafka.restart_broker().await {
        Ok(()) => {}
        Err(e @ TestkitError::NotControllable { .. }) => {
            require(
                "a broker started by scripts/kafka-broker.sh",
                &e.to_string(),
            );
            return;
        }
        Err(e) => panic!("{e}"),
    }
    eprintln!("broker restarted in {:?}", t0.elapsed());
    send("after").await.map_err(|(e, _)| e).unwrap();

    let c: BaseConsumer = kafka
        .client_config()
        .set("group.id", kafka.unique_group("restart"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    c.subscribe(&[&topic]).unwrap();
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while got.len() < 2 && std::time::Instant::now() < deadline {
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            use rdkafka::Message;
            let m = m.unwrap();
            got.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
        }
    }
    assert_eq!(got, ["before", "after"]);
}

/// The shared Postgres server (DATABASE_URL's via scripts/postgres.sh, or the owned throwaway
/// cluster) restarts, and an existing pool reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_postgres_restart() {
    let _serial = SERIAL.lock().await;
    let db = callsync_testkit::skip_unless_postgres!();
    let server = pg_server().await.unwrap();
    sqlx::query("CREATE TABLE t (id int)")
        .execute(&db.pool)
        .await
        .unwrap();
    match server.restart(PgStopMode::Fast).await {
        Ok(()) => {}
        Err(e @ TestkitError::NotControllable { .. }) => {
            require("a Postgres started by scripts/postgres.sh", &e.to_string());
            return;
        }
        Err(e) => panic!("{e}"),
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
}
