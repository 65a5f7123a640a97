//! The webhook receiver against Kafka: an in-process MockCluster for the acknowledged path,
//! an unreachable broker for the 503 path.
//!
//! valid, forged, replayed (stale timestamp, or the exact re-post of an accepted request),
//! oversize (for the receiver or for Kafka), malformed, unknown provider/account, rate limited
//! (and unsigned requests spending no account's budget), Kafka down: each answers as documented
//! and only the valid ones are produced.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use callsync::api::public_router;
use callsync::webhooks::signature::{callrail_signature, hmac_sha256_signature};
use callsync::webhooks::{
    AvroCallRecordEncoder, MalformedPayload, WebhookAccountConfig, WebhookAuth, WebhookConfig,
    WebhookPayloadParser, WebhookReceiver,
};
use callsync_runtime::{KafkaClientFactory, KafkaSettings, Secret};
use callsync_schemas::{CallRecord, CallStatus, Provider, RecordSource};
use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::FutureProducer;
use tower::ServiceExt;

const TOPIC: &str = "calls.raw";

/// A stand-in for the connectors' parser: `{"call_id": "...", "status": "..."}`.
struct MinimalParser;

impl WebhookPayloadParser for MinimalParser {
    fn parse(
        &self,
        provider: Provider,
        account_id: &str,
        body: &[u8],
        received_at: DateTime<Utc>,
    ) -> Result<Vec<CallRecord>, MalformedPayload> {
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| MalformedPayload(format!("not JSON: {e}")))?;
        let call_id = value["call_id"]
            .as_str()
            .ok_or_else(|| MalformedPayload("call_id is missing".into()))?;
        Ok(vec![CallRecord {
            provider,
            account_id: account_id.to_string(),
            call_id: call_id.to_string(),
            version: received_at.timestamp_micros(),
            started_at: received_at,
            answered_at: None,
            ended_at: None,
            duration_secs: None,
            billable_secs: None,
            caller_number: None,
            tracking_number: None,
            destination_number: None,
            campaign_id: None,
            campaign_name: None,
            publisher_id: None,
            publisher_name: None,
            buyer_id: None,
            buyer_name: None,
            status: CallStatus::Completed,
            provider_status: None,
            converted: None,
            revenue: None,
            payout: None,
            currency: None,
            recording_url: None,
            tags: BTreeMap::new(),
            source: RecordSource::Webhook,
            observed_at: received_at,
            provider_updated_at: None,
            raw: Some(body.to_vec()),
            present_fields: None,
        }])
    }
}

fn config(max_body_bytes: usize, burst: u32) -> WebhookConfig {
    WebhookConfig {
        max_body_bytes,
        requests_per_second: 1,
        burst,
        timestamp_tolerance_secs: 300,
        produce_timeout_secs: 5,
        accounts: vec![
            WebhookAccountConfig {
                provider: Provider::CallRail,
                account_id: "CR1".into(),
                auth: WebhookAuth::CallrailSignature {
                    signing_key: Secret::new("callrail-key"),
                },
            },
            WebhookAccountConfig {
                provider: Provider::Ringba,
                account_id: "RA1".into(),
                auth: WebhookAuth::HmacSha256 {
                    secret: Secret::new("ringba-secret"),
                },
            },
            WebhookAccountConfig {
                provider: Provider::Retreaver,
                account_id: "RT1".into(),
                auth: WebhookAuth::Token {
                    token: Secret::new("retreaver-token"),
                },
            },
        ],
        ..WebhookConfig::default()
    }
}

fn producer(bootstrap: &str, overrides: &[(&str, &str)]) -> FutureProducer {
    let mut settings = KafkaSettings::plaintext(bootstrap);
    for (k, v) in overrides {
        settings
            .client_properties
            .insert(k.to_string(), v.to_string());
    }
    KafkaClientFactory::new(settings).producer().unwrap()
}

fn app(receiver: WebhookReceiver) -> Router {
    public_router(Some(Arc::new(receiver)))
}

async fn post(
    app: &Router,
    uri: &str,
    headers: &[(&str, String)],
    body: impl Into<Vec<u8>>,
) -> (StatusCode, String) {
    let mut request = Request::builder()
        .method("POST")
        .uri(uri)
        .header("content-type", "application/json");
    for (k, v) in headers {
        request = request.header(*k, v);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::from(body.into())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

fn records_in_topic(bootstrap: &str) -> i64 {
    let mut cfg = KafkaClientFactory::new(KafkaSettings::plaintext(bootstrap)).base_config();
    cfg.set("group.id", "webhook-test-reader");
    let consumer: BaseConsumer = cfg.create().unwrap();
    (0..3)
        .map(|p| {
            let (low, high) = consumer
                .fetch_watermarks(TOPIC, p, Duration::from_secs(5))
                .unwrap();
            high - low
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_is_answered_as_documented_and_only_valid_ones_are_produced() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 3, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let receiver = WebhookReceiver::new(
        &config(4096, 100),
        Arc::new(MinimalParser),
        Arc::new(AvroCallRecordEncoder::single_object()),
        producer(&bootstrap, &[]),
        TOPIC.to_string(),
    );
    let app = app(receiver);
    let now = Utc::now().timestamp();

    // valid: CallRail signature over the raw body
    let body = br#"{"call_id":"CAL1","timestamp":"2025-01-01T00:00:00Z"}"#;
    let sig = callrail_signature(b"callrail-key", body);
    let (status, text) = post(
        &app,
        "/webhooks/callrail/CR1",
        &[("signature", sig.clone())],
        body.to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    assert!(text.contains("\"accepted\":1"), "{text}");

    // valid: HMAC-SHA256 over timestamp + body
    let body2 = br#"{"call_id":"RG1"}"#;
    let headers = [
        ("x-callsync-timestamp", now.to_string()),
        (
            "x-callsync-signature",
            hmac_sha256_signature(b"ringba-secret", now, body2),
        ),
    ];
    let (status, text) = post(&app, "/webhooks/ringba/RA1", &headers, body2.to_vec()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{text}");

    // valid: token in the query string
    let (status, text) = post(
        &app,
        "/webhooks/retreaver/RT1?token=retreaver-token",
        &[],
        br#"{"call_id":"RT-1"}"#.to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    assert_eq!(records_in_topic(&bootstrap), 3);

    // replayed: the exact re-post of an accepted request (tokens and CallRail's signature
    // sign no time) is a duplicate and produces nothing; before, it was produced again with
    // a fresh receipt-time version
    let (status, text) = post(
        &app,
        "/webhooks/retreaver/RT1?token=retreaver-token",
        &[],
        br#"{"call_id":"RT-1"}"#.to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(text.contains("\"duplicate\":true"), "{text}");
    let (status, _) = post(
        &app,
        "/webhooks/callrail/CR1",
        &[("signature", sig.clone())],
        body.to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = post(&app, "/webhooks/ringba/RA1", &headers, body2.to_vec()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(records_in_topic(&bootstrap), 3, "replays produce nothing");

    // forged: signature of another body
    let (status, text) = post(
        &app,
        "/webhooks/callrail/CR1",
        &[("signature", sig.clone())],
        br#"{"call_id":"EVIL"}"#.to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{text}");
    // missing signature
    let (status, _) = post(&app, "/webhooks/callrail/CR1", &[], body.to_vec()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // wrong token
    let (status, _) = post(
        &app,
        "/webhooks/retreaver/RT1?token=guess",
        &[],
        br#"{"call_id":"X"}"#.to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // replayed: a correctly signed request from ten minutes ago
    let old = now - 600;
    let stale = [
        ("x-callsync-timestamp", old.to_string()),
        (
            "x-callsync-signature",
            hmac_sha256_signature(b"ringba-secret", old, body2),
        ),
    ];
    let (status, text) = post(&app, "/webhooks/ringba/RA1", &stale, body2.to_vec()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{text}");
    assert!(text.contains("timestamp"), "{text}");
    // a forged body that is not even JSON is refused as unauthorized, not parsed
    let (status, _) = post(
        &app,
        "/webhooks/callrail/CR1",
        &[("signature", sig.clone())],
        b"{not json".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // oversize, declared and chunked alike
    let big = vec![b' '; 5000];
    let big_sig = callrail_signature(b"callrail-key", &big);
    let (status, _) = post(
        &app,
        "/webhooks/callrail/CR1",
        &[("signature", big_sig)],
        big,
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    // malformed, correctly signed
    let junk = b"{\"no_call_id\":true}";
    let (status, text) = post(
        &app,
        "/webhooks/callrail/CR1",
        &[("signature", callrail_signature(b"callrail-key", junk))],
        junk.to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("call_id"), "{text}");

    // unknown provider, unconfigured account
    let (status, _) = post(&app, "/webhooks/five9/X", &[], body.to_vec()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = post(
        &app,
        "/webhooks/callrail/OTHER",
        &[("signature", sig)],
        body.to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    assert_eq!(
        records_in_topic(&bootstrap),
        3,
        "only the valid webhooks were produced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_account_rate_the_answer_is_429() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 3, 1).unwrap();
    let receiver = WebhookReceiver::new(
        &config(4096, 2),
        Arc::new(MinimalParser),
        Arc::new(AvroCallRecordEncoder::single_object()),
        producer(&cluster.bootstrap_servers(), &[]),
        TOPIC.to_string(),
    );
    let app = app(receiver);
    // unsigned requests spend no account's budget: before, these five made the real
    // webhooks below answer 429 (and CallRail never retries)
    for i in 0..5 {
        let (status, _) = post(
            &app,
            "/webhooks/retreaver/RT1?token=forged",
            &[],
            format!("{{\"call_id\":\"forged-{i}\"}}"),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let mut statuses = Vec::new();
    for i in 0..4 {
        let (status, _) = post(
            &app,
            "/webhooks/retreaver/RT1?token=retreaver-token",
            &[],
            format!("{{\"call_id\":\"{i}\"}}"),
        )
        .await;
        statuses.push(status);
    }
    assert_eq!(
        &statuses[..2],
        &[StatusCode::ACCEPTED, StatusCode::ACCEPTED]
    );
    assert_eq!(statuses[3], StatusCode::TOO_MANY_REQUESTS, "{statuses:?}");
    // another account has its own budget
    let body = br#"{"call_id":"C"}"#;
    let (status, _) = post(
        &app,
        "/webhooks/callrail/CR1",
        &[("signature", callrail_signature(b"callrail-key", body))],
        body.to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_down_answers_503_so_the_sender_retries() {
    // nothing listens on port 1: the acks=all produce times out
    let receiver = WebhookReceiver::new(
        &config(4096, 100),
        Arc::new(MinimalParser),
        Arc::new(AvroCallRecordEncoder::single_object()),
        producer("127.0.0.1:1", &[("message.timeout.ms", "1500")]),
        TOPIC.to_string(),
    )
    .with_produce_timeout(Duration::from_secs(3));
    let app = app(receiver);
    let started = std::time::Instant::now();
    let (status, text) = post(
        &app,
        "/webhooks/retreaver/RT1?token=retreaver-token",
        &[],
        br#"{"call_id":"down"}"#.to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_kafka_would_refuse_answers_413_not_503() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 3, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    // the body fits the receiver's limit, the record it makes not Kafka's message.max.bytes
    let body = format!("{{\"call_id\":\"{}\"}}", "L".repeat(1500));
    for precheck in [true, false] {
        let mut receiver = WebhookReceiver::new(
            &config(4096, 100),
            Arc::new(MinimalParser),
            Arc::new(AvroCallRecordEncoder::single_object()),
            producer(&bootstrap, &[("message.max.bytes", "2000")]),
            TOPIC.to_string(),
        );
        if precheck {
            // what `callsync run` does: the receiver knows the producer's limit
            receiver = receiver.with_max_message_bytes(2000);
        }
        let app = app(receiver);
        // before, Kafka's refusal answered 503 with Retry-After, so the sender retried forever
        let (status, text) = post(
            &app,
            "/webhooks/retreaver/RT1?token=retreaver-token",
            &[],
            body.clone(),
        )
        .await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{text}");
        assert!(text.contains("message.max.bytes"), "{text}");
    }
    assert_eq!(records_in_topic(&bootstrap), 0);
}
