//! The webhook receiver: `POST /webhooks/{provider}/{account}` on the public listener.
//!
//! In order, for each request (nothing is produced before step 7, and an unsigned request
//! spends no account's budget):
//! 1. past the client address's request rate: 429 with `Retry-After`;
//! 2. unknown provider or unconfigured account: 404;
//! 3. body larger than the limit (declared, or once read past it): 413; a body that does not
//!    arrive within `body_read_timeout_secs`: 408;
//! 4. signature or token wrong or missing (checked on the raw bytes, before parsing): 401;
//! 5. the exact replay of a request accepted within the tolerance window: 200, `duplicate`;
//! 6. past the account's request rate: 429 with `Retry-After`;
//! 7. body that does not parse into call records, or with times out of range: 400; a record
//!    larger than Kafka takes (`message.max.bytes`): 413;
//! 8. each record produced to `calls.raw` with the idempotent `acks=all` producer; if Kafka
//!    does not acknowledge every record in time: 503 (the sender retries, and the processor
//!    drops the duplicates);
//! 9. 202 once every record is acknowledged.
//!
//! See `docs/webhooks.md` and `docs/security.md`.

pub mod config;
pub mod replay;
pub mod signature;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use callsync_runtime::metrics::RECORDS_TOTAL;
use callsync_runtime::KafkaSettings;
use callsync_schemas::{CallField, CallRecord, Provider, WireFormat};
use chrono::{DateTime, TimeZone, Utc};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde_json::json;
use tracing::Instrument;

use crate::api::listener::client_address;
pub use config::{
    WebhookAccountConfig, WebhookConfig, KAFKA_DEFAULT_MESSAGE_MAX_BYTES, MIN_SECRET_LEN,
};
use replay::{request_digest, ReplayCache};
pub use signature::{verify, SignatureError, WebhookAuth};

/// Webhooks received, labelled `provider`, `outcome` (accepted, duplicate, unknown,
/// client_rate_limited, rate_limited, too_large, timeout, unauthorized, malformed,
/// unavailable, error).
pub const WEBHOOKS_TOTAL: &str = "callsync_webhooks_total";
/// Seconds from receipt to the answer, labelled `provider`, `outcome`.
pub const WEBHOOK_SECONDS: &str = "callsync_webhook_seconds";

/// Bytes a Kafka record takes beyond its key and value (record batch framing, headers).
const RECORD_OVERHEAD_BYTES: usize = 512;

/// The earliest call time a webhook may carry.
const EARLIEST_CALL_YEAR: i32 = 2000;

/// How far ahead of this clock a webhook's times may be.
const MAX_FUTURE_SKEW: chrono::Duration = chrono::Duration::days(1);

/// How often the per-client limiter forgets clients that are back to a full budget.
const CLIENT_LIMITER_CLEANUP: Duration = Duration::from_secs(60);

/// The producer's `message.max.bytes` from `[kafka.client_properties]` (librdkafka's default
/// when unset or unreadable).
pub fn kafka_message_max_bytes(settings: &KafkaSettings) -> usize {
    settings
        .client_properties
        .get("message.max.bytes")
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(KAFKA_DEFAULT_MESSAGE_MAX_BYTES)
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
    body_read_timeout: Duration,
    tolerance: Duration,
    produce_timeout: Duration,
    max_message_bytes: usize,
    account_limiter: DefaultKeyedRateLimiter<AccountKey>,
    client_limiter: DefaultKeyedRateLimiter<IpAddr>,
    client_limiter_cleaned: Mutex<Instant>,
    trusted_proxies: Vec<IpAddr>,
    replays: ReplayCache,
}

fn quota(per_second: u32, burst: u32) -> Quota {
    let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst).unwrap_or(rate).max(rate);
    Quota::per_second(rate).allow_burst(burst)
}

impl WebhookReceiver {
    /// `producer` must be the idempotent `acks=all` producer of the client factory;
    /// `topic` is the full name of `calls.raw`. `config` must have passed
    /// [`WebhookConfig::problems`].
    pub fn new(
        config: &WebhookConfig,
        parser: Arc<dyn WebhookPayloadParser>,
        encoder: Arc<dyn CallRecordEncoder>,
        producer: FutureProducer,
        topic: String,
    ) -> Self {
        let tolerance = Duration::from_secs(config.timestamp_tolerance_secs.max(1));
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
            body_read_timeout: Duration::from_secs(config.body_read_timeout_secs.max(1)),
            tolerance,
            produce_timeout: Duration::from_secs(config.produce_timeout_secs.max(1)),
            max_message_bytes: KAFKA_DEFAULT_MESSAGE_MAX_BYTES,
            account_limiter: RateLimiter::keyed(quota(config.requests_per_second, config.burst)),
            client_limiter: RateLimiter::keyed(quota(
                config.per_client_requests_per_second,
                config.per_client_burst,
            )),
            client_limiter_cleaned: Mutex::new(Instant::now()),
            trusted_proxies: config.trusted_proxies.clone(),
            replays: ReplayCache::new(tolerance, config.replay_cache_entries),
        }
    }

    /// The producer's `message.max.bytes` (see [`kafka_message_max_bytes`]): larger records
    /// answer 413 instead of being offered to Kafka.
    pub fn with_max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// Overrides the acknowledgement timeout (tests).
    pub fn with_produce_timeout(mut self, timeout: Duration) -> Self {
        self.produce_timeout = timeout;
        self
    }

    /// Checks a client's budget; forgets idle clients now and then so the map stays small.
    fn check_client(&self, client: IpAddr) -> Result<(), Duration> {
        if let Ok(mut cleaned) = self.client_limiter_cleaned.try_lock() {
            if cleaned.elapsed() >= CLIENT_LIMITER_CLEANUP {
                self.client_limiter.retain_recent();
                self.client_limiter.shrink_to_fit();
                *cleaned = Instant::now();
            }
        }
        self.client_limiter
            .check_key(&client_key(client))
            .map_err(wait_time)
    }
}

/// IPv6 clients are limited per /64 (one host usually holds a whole /64).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let mut segments = v6.segments();
            for s in &mut segments[4..] {
                *s = 0;
            }
            IpAddr::V6(segments.into())
        }
    }
}

fn wait_time(not_until: governor::NotUntil<governor::clock::QuantaInstant>) -> Duration {
    not_until.wait_time_from(governor::clock::Clock::now(
        &governor::clock::DefaultClock::default(),
    ))
}

/// The webhook route, `POST /webhooks/{provider}/{account}`, ready to merge into the public
/// listener's router.
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

    fn rate_limited(outcome: &'static str, message: &str, wait: Duration) -> Self {
        let mut answer = Answer::error(StatusCode::TOO_MANY_REQUESTS, outcome, message);
        answer.retry_after = Some(wait.as_secs().max(1));
        answer
    }
}

async fn receive_webhook(
    State(receiver): State<Arc<WebhookReceiver>>,
    Path((provider, account)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let client = client_address(peer, &parts.headers, &receiver.trusted_proxies);
    let provider_label = provider
        .parse::<Provider>()
        .map(Provider::as_str)
        .unwrap_or("unknown");
    let span = tracing::info_span!("webhook", provider = provider_label, %account);
    let started = Instant::now();
    let answer = handle(
        &receiver,
        client,
        &provider,
        &account,
        query.as_deref(),
        &parts.headers,
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

/// Reads the body: at most `max` bytes, all of it within `timeout`.
async fn read_body(body: Body, max: usize, timeout: Duration) -> Result<axum::body::Bytes, Answer> {
    let too_large = || {
        Answer::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("body larger than {max} bytes"),
        )
    };
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, max)).await {
        Err(_) => Err(Answer::error(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!("the body did not arrive within {} s", timeout.as_secs()),
        )),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(c) = cause {
                if c.is::<tower_http::timeout::TimeoutError>() {
                    return Err(Answer::error(
                        StatusCode::REQUEST_TIMEOUT,
                        "timeout",
                        "the body stalled",
                    ));
                }
                if c.to_string().contains("length limit") {
                    return Err(too_large());
                }
                cause = c.source();
            }
            Err(Answer::error(
                StatusCode::BAD_REQUEST,
                "malformed",
                format!("reading the body: {e}"),
            ))
        }
    }
}

/// The times of a webhook's record must be plausible call times (2000 to now + 1 day).
fn check_times(record: &CallRecord, now: DateTime<Utc>) -> Result<(), String> {
    let earliest = Utc
        .with_ymd_and_hms(EARLIEST_CALL_YEAR, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let latest = now
        .checked_add_signed(MAX_FUTURE_SKEW)
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    let times = [
        // a partial record's uncarried started_at is a placeholder, not a time it claims
        (
            "started_at",
            record
                .carries(CallField::StartedAt)
                .then_some(record.started_at),
        ),
        ("answered_at", record.answered_at),
        ("ended_at", record.ended_at),
        ("provider_updated_at", record.provider_updated_at),
    ];
    for (field, time) in times {
        if let Some(t) = time {
            if t < earliest || t > latest {
                return Err(format!(
                    "call {:?}: {field} {} is outside {EARLIEST_CALL_YEAR}-01-01 .. now + 1 day",
                    record.call_id,
                    t.to_rfc3339()
                ));
            }
        }
    }
    if record.version < 0 {
        return Err(format!("call {:?}: negative version", record.call_id));
    }
    Ok(())
}

fn is_too_large(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidRecord)
    ) || matches!(
        error,
        KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)
    )
}

#[allow(clippy::too_many_arguments)]
async fn handle(
    receiver: &WebhookReceiver,
    client: Option<IpAddr>,
    provider: &str,
    account: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Answer {
    if let Some(client) = client {
        if let Err(wait) = receiver.check_client(client) {
            return Answer::rate_limited(
                "client_rate_limited",
                "too many requests from this address",
                wait,
            );
        }
    }
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
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > receiver.max_body_bytes as u64) {
        return Answer::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("body larger than {} bytes", receiver.max_body_bytes),
        );
    }
    let bytes = match read_body(body, receiver.max_body_bytes, receiver.body_read_timeout).await {
        Ok(bytes) => bytes,
        Err(answer) => return answer,
    };
    let now = Utc::now();
    if let Err(e) = verify(auth, headers, query, &bytes, now, receiver.tolerance) {
        tracing::warn!(error = %e, "webhook refused");
        return Answer::error(StatusCode::UNAUTHORIZED, "unauthorized", e);
    }
    let signed_timestamp = auth
        .signs_timestamp()
        .then(|| headers.get(signature::TIMESTAMP_HEADER))
        .flatten()
        .and_then(|v| v.to_str().ok());
    let digest = request_digest(&format!("{provider}/{account}"), signed_timestamp, &bytes);
    if receiver.replays.seen(&digest, Instant::now()) {
        tracing::info!("the replay of an accepted webhook; nothing produced");
        return Answer {
            status: StatusCode::OK,
            outcome: "duplicate",
            body: json!({ "accepted": 0, "duplicate": true }),
            retry_after: None,
        };
    }
    if let Err(not_until) = receiver.account_limiter.check_key(&key) {
        return Answer::rate_limited(
            "rate_limited",
            "too many requests for this account",
            wait_time(not_until),
        );
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
        if let Err(e) = check_times(record, now) {
            return Answer::error(StatusCode::BAD_REQUEST, "malformed", e);
        }
        let value = match receiver.encoder.encode(record) {
            Ok(value) => value,
            Err(e) => {
                tracing::error!(error = %e, call_id = %record.call_id, "encoding a webhook call record");
                return Answer::error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "error",
                    "the record could not be encoded",
                );
            }
        };
        let key = record.key();
        let size = key
            .as_bytes()
            .len()
            .saturating_add(value.len())
            .saturating_add(RECORD_OVERHEAD_BYTES);
        if size > receiver.max_message_bytes {
            return Answer::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "call {:?} makes a Kafka record of about {size} bytes, over the {} bytes                      Kafka takes (message.max.bytes); send less",
                    record.call_id, receiver.max_message_bytes
                ),
            );
        }
        encoded.push((key, value));
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
        Err(_) => Some((
            format!("no acknowledgement within {:?}", receiver.produce_timeout),
            false,
        )),
        Ok(results) => results
            .into_iter()
            .find_map(|r| r.err())
            .map(|(e, _)| (e.to_string(), is_too_large(&e))),
    };
    if let Some((reason, too_large)) = failure {
        if too_large {
            tracing::warn!(%reason, "Kafka refused a webhook's record as too large");
            return Answer::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "Kafka refused the record as too large (message.max.bytes or the topic's \
                 max.message.bytes); send less",
            );
        }
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
    receiver.replays.remember(digest, Instant::now());
    metrics::counter!(RECORDS_TOTAL, "stage" => "webhook", "outcome" => "produced")
        .increment(encoded.len() as u64);
    Answer {
        status: StatusCode::ACCEPTED,
        outcome: "accepted",
        body: json!({ "accepted": encoded.len() }),
        retry_after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_share_their_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(client_key(v4), v4);
    }

    #[test]
    fn the_message_limit_comes_from_the_client_properties() {
        let mut settings = KafkaSettings::plaintext("b:1");
        assert_eq!(kafka_message_max_bytes(&settings), 1_000_000);
        settings
            .client_properties
            .insert("message.max.bytes".into(), "20000".into());
        assert_eq!(kafka_message_max_bytes(&settings), 20_000);
    }

    fn time_check_record(
        started_at: chrono::DateTime<chrono::Utc>,
    ) -> callsync_schemas::CallRecord {
        let now = chrono::Utc::now();
        callsync_schemas::CallRecord {
            provider: callsync_schemas::Provider::Retreaver,
            account_id: "A1".into(),
            call_id: "c-1".into(),
            version: now.timestamp_micros(),
            started_at,
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
            status: callsync_schemas::CallStatus::Unknown,
            provider_status: None,
            converted: None,
            revenue: None,
            payout: None,
            currency: None,
            recording_url: None,
            tags: Default::default(),
            source: callsync_schemas::RecordSource::Webhook,
            observed_at: now,
            provider_updated_at: None,
            raw: None,
            present_fields: None,
        }
    }

    /// A webhook that carries no start (only a conversion, say) was answered 400 "started_at
    /// 1970-01-01 is outside 2000-01-01 .. now + 1 day": its placeholder start was checked.
    #[test]
    fn a_partial_record_without_a_start_passes_and_a_carried_bad_start_does_not() {
        use callsync_schemas::{CallField, FieldSet};
        use chrono::Utc;
        let epoch = chrono::DateTime::<Utc>::UNIX_EPOCH;
        let partial =
            time_check_record(epoch).into_partial(FieldSet::EMPTY.with(CallField::Revenue));
        assert_eq!(check_times(&partial, Utc::now()), Ok(()));
        assert!(check_times(&time_check_record(epoch), Utc::now()).is_err());
        let carried =
            time_check_record(epoch).into_partial(FieldSet::EMPTY.with(CallField::StartedAt));
        assert!(check_times(&carried, Utc::now()).is_err());
    }
}
