//! The webhook receiver: `POST /webhooks/{provider}/{account}`.
//!
//! In order, for each request:
//! 1. unknown provider or unconfigured account: 404;
//! 2. past the account's request rate: 429 with `Retry-After`;
//! 3. body larger than the limit: 413;
//! 4. signature or token wrong or missing (checked on the raw bytes, before parsing): 401;
//! 5. body that does not parse into call records: 400;
//! 6. each record produced to `calls.raw` with the idempotent `acks=all` producer; if Kafka
//!    does not acknowledge every record in time: 503 (the sender retries, and the processor
//!    drops the duplicates);
//! 7. 202 once every record is acknowledged.
//!
//! Nothing is produced before the signature is verified. See `docs/webhooks.md`.

pub mod signature;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use callsync_runtime::metrics::RECORDS_TOTAL;
use callsync_schemas::{CallRecord, Provider, WireFormat};
use chrono::{DateTime, Utc};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde::Deserialize;
use serde_json::json;
use tracing::Instrument;

pub use signature::{verify, SignatureError, WebhookAuth};

/// Webhooks received, labelled `provider`, `outcome` (accepted, unknown, rate_limited,
/// too_large, unauthorized, malformed, unavailable, error).
pub const WEBHOOKS_TOTAL: &str = "callsync_webhooks_total";
/// Seconds from receipt to the answer, labelled `provider`, `outcome`.
pub const WEBHOOK_SECONDS: &str = "callsync_webhook_seconds";

/// `[webhooks]` in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Largest body accepted, in bytes (default 1 MiB).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Sustained requests per second per account (default 100).
    #[serde(default = "default_requests_per_second")]
    pub requests_per_second: u32,
    /// Burst above the sustained rate per account (default 200).
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Accepted clock difference for signed timestamps, seconds (default 300).
    #[serde(default = "default_tolerance_secs")]
    pub timestamp_tolerance_secs: u64,
    /// Longest wait for Kafka's acknowledgement before answering 503, seconds (default 10).
    #[serde(default = "default_produce_timeout_secs")]
    pub produce_timeout_secs: u64,
    /// The accounts that may post, each with its authentication.
    #[serde(default)]
    pub accounts: Vec<WebhookAccountConfig>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            max_body_bytes: default_max_body_bytes(),
            requests_per_second: default_requests_per_second(),
            burst: default_burst(),
            timestamp_tolerance_secs: default_tolerance_secs(),
            produce_timeout_secs: default_produce_timeout_secs(),
            accounts: Vec::new(),
        }
    }
}

fn default_max_body_bytes() -> usize {
    1024 * 1024
}
fn default_requests_per_second() -> u32 {
    100
}
fn default_burst() -> u32 {
    200
}
fn default_tolerance_secs() -> u64 {
    300
}
fn default_produce_timeout_secs() -> u64 {
    10
}

/// One account allowed to post webhooks.
#[derive(Debug, Clone, Deserialize)]
pub struct WebhookAccountConfig {
    pub provider: Provider,
    pub account_id: String,
    #[serde(flatten)]
    pub auth: WebhookAuth,
}

/// The body could not be turned into call records (answered 400 with the message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MalformedPayload(pub String);

/// A call record could not be encoded (answered 500: a defect, not the sender's fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EncodeError(pub String);

/// Maps a verified webhook body to call records (connectors' webhook parsing: CallRail's
/// post-call and call-modified JSON, the templated payloads of the others).
pub trait WebhookPayloadParser: Send + Sync + 'static {
    fn parse(
        &self,
        provider: Provider,
        account_id: &str,
        body: &[u8],
        received_at: DateTime<Utc>,
    ) -> Result<Vec<CallRecord>, MalformedPayload>;
}

/// Encodes a call record for `calls.raw` (the schemas crate's Avro codec).
pub trait CallRecordEncoder: Send + Sync + 'static {
    fn encode(&self, record: &CallRecord) -> Result<Vec<u8>, EncodeError>;
}

/// The Avro encoding of `callsync-schemas` (single-object, or Confluent with a registry id).
#[derive(Debug, Clone, Copy)]
pub struct AvroCallRecordEncoder {
    pub format: WireFormat,
}

impl AvroCallRecordEncoder {
    pub fn single_object() -> Self {
        AvroCallRecordEncoder {
            format: WireFormat::SingleObject,
        }
    }
}

impl CallRecordEncoder for AvroCallRecordEncoder {
    fn encode(&self, record: &CallRecord) -> Result<Vec<u8>, EncodeError> {
        callsync_schemas::encode_to_vec(record, self.format).map_err(|e| EncodeError(e.to_string()))
    }
}

type AccountKey = (Provider, String);

/// Everything the webhook route needs. Build once, share with [`router`].
pub struct WebhookReceiver {
    accounts: HashMap<AccountKey, WebhookAuth>,
    parser: Arc<dyn WebhookPayloadParser>,
    encoder: Arc<dyn CallRecordEncoder>,
    producer: FutureProducer,
    topic: String,
    max_body_bytes: usize,
    tolerance: Duration,
    produce_timeout: Duration,
    limiter: DefaultKeyedRateLimiter<AccountKey>,
}

impl WebhookReceiver {
    /// `producer` must be the idempotent `acks=all` producer of the client factory;
    /// `topic` is the full name of `calls.raw`.
    pub fn new(
        config: &WebhookConfig,
        parser: Arc<dyn WebhookPayloadParser>,
        encoder: Arc<dyn CallRecordEncoder>,
        producer: FutureProducer,
        topic: String,
    ) -> Self {
        let rate = NonZeroU32::new(config.requests_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(config.burst).unwrap_or(rate).max(rate);
        WebhookReceiver {
            accounts: config
                .accounts
                .iter()
                .map(|a| ((a.provider, a.account_id.clone()), a.auth.clone()))
                .collect(),
            parser,
            encoder,
            producer,
            topic,
            max_body_bytes: config.max_body_bytes,
            tolerance: Duration::from_secs(config.timestamp_tolerance_secs),
            produce_timeout: Duration::from_secs(config.produce_timeout_secs.max(1)),
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
        }
    }

    /// Overrides the acknowledgement timeout (tests).
    pub fn with_produce_timeout(mut self, timeout: Duration) -> Self {
        self.produce_timeout = timeout;
        self
    }
}

/// The webhook route, `POST /webhooks/{provider}/{account}`, ready to merge into the service.
pub fn router(receiver: Arc<WebhookReceiver>) -> Router {
    Router::new()
        .route("/webhooks/{provider}/{account}", post(receive_webhook))
        .with_state(receiver)
}

struct Answer {
    status: StatusCode,
    outcome: &'static str,
    body: serde_json::Value,
    retry_after: Option<u64>,
}

impl Answer {
    fn error(status: StatusCode, outcome: &'static str, message: impl std::fmt::Display) -> Self {
        Answer {
            status,
            outcome,
            body: json!({ "error": message.to_string() }),
            retry_after: None,
        }
    }
}

async fn receive_webhook(
    State(receiver): State<Arc<WebhookReceiver>>,
    Path((provider, account)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let span = tracing::info_span!("webhook", %provider, %account);
    let started = Instant::now();
    let provider_label = provider
        .parse::<Provider>()
        .map(Provider::as_str)
        .unwrap_or("unknown");
    let answer = handle(
        &receiver,
        &provider,
        &account,
        query.as_deref(),
        &headers,
        body,
    )
    .instrument(span.clone())
    .await;
    metrics::counter!(WEBHOOKS_TOTAL, "provider" => provider_label, "outcome" => answer.outcome)
        .increment(1);
    metrics::histogram!(WEBHOOK_SECONDS, "provider" => provider_label, "outcome" => answer.outcome)
        .record(started.elapsed().as_secs_f64());
    span.in_scope(|| {
        tracing::debug!(
            status = answer.status.as_u16(),
            outcome = answer.outcome,
            "webhook answered"
        )
    });
    let mut response = (answer.status, Json(answer.body)).into_response();
    if let Some(secs) = answer.retry_after {
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    response
}

async fn handle(
    receiver: &WebhookReceiver,
    provider: &str,
    account: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Answer {
    let Ok(provider) = provider.parse::<Provider>() else {
        return Answer::error(
            StatusCode::NOT_FOUND,
            "unknown",
            format!("unknown provider {provider:?}"),
        );
    };
    let key = (provider, account.to_string());
    let Some(auth) = receiver.accounts.get(&key) else {
        return Answer::error(
            StatusCode::NOT_FOUND,
            "unknown",
            format!("no webhooks are configured for {provider} account {account:?}"),
        );
    };
    if let Err(not_until) = receiver.limiter.check_key(&key) {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ));
        let mut answer = Answer::error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests for this account",
        );
        answer.retry_after = Some(wait.as_secs().max(1));
        return answer;
    }
    let too_large = || {
        Answer::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("body larger than {} bytes", receiver.max_body_bytes),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > receiver.max_body_bytes as u64) {
        return too_large();
    }
    let bytes = match axum::body::to_bytes(body, receiver.max_body_bytes).await {
        Ok(bytes) => bytes,
        Err(e) if e.to_string().contains("length limit") => return too_large(),
        Err(e) => {
            return Answer::error(
                StatusCode::BAD_REQUEST,
                "malformed",
                format!("reading the body: {e}"),
            )
        }
    };
    let now = Utc::now();
    if let Err(e) = verify(auth, headers, query, &bytes, now, receiver.tolerance) {
        tracing::warn!(error = %e, "webhook refused");
        return Answer::error(StatusCode::UNAUTHORIZED, "unauthorized", e);
    }
    let records = match receiver.parser.parse(provider, account, &bytes, now) {
        Ok(records) => records,
        Err(e) => return Answer::error(StatusCode::BAD_REQUEST, "malformed", e),
    };
    let mut encoded = Vec::with_capacity(records.len());
    for record in &records {
        if record.provider != provider || record.account_id != account {
            return Answer::error(
                StatusCode::BAD_REQUEST,
                "malformed",
                "the payload names another provider account",
            );
        }
        match receiver.encoder.encode(record) {
            Ok(value) => encoded.push((record.key(), value)),
            Err(e) => {
                tracing::error!(error = %e, call_id = %record.call_id, "encoding a webhook call record");
                return Answer::error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "error",
                    "the record could not be encoded",
                );
            }
        }
    }
    let sends = encoded.iter().map(|(key, value)| {
        let record = FutureRecord::to(&receiver.topic)
            .key(key.as_bytes())
            .payload(value);
        receiver
            .producer
            .send(record, Timeout::After(receiver.produce_timeout))
    });
    let acked =
        tokio::time::timeout(receiver.produce_timeout, futures::future::join_all(sends)).await;
    let failure = match acked {
        Err(_) => Some(format!(
            "no acknowledgement within {:?}",
            receiver.produce_timeout
        )),
        Ok(results) => results
            .into_iter()
            .find_map(|r| r.err())
            .map(|(e, _)| e.to_string()),
    };
    if let Some(reason) = failure {
        tracing::warn!(%reason, records = encoded.len(), "Kafka did not take the webhook's records");
        metrics::counter!(RECORDS_TOTAL, "stage" => "webhook", "outcome" => "unavailable")
            .increment(encoded.len() as u64);
        let mut answer = Answer::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Kafka is unavailable; retry later",
        );
        answer.retry_after = Some(5);
        return answer;
    }
    metrics::counter!(RECORDS_TOTAL, "stage" => "webhook", "outcome" => "produced")
        .increment(encoded.len() as u64);
    Answer {
        status: StatusCode::ACCEPTED,
        outcome: "accepted",
        body: json!({ "accepted": encoded.len() }),
        retry_after: None,
    }
}
