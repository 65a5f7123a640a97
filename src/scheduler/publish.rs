//! Writing SyncRequests to `callsync.sync-requests` and SyncEvents to `callsync.sync-events`.
//!
//! The wire encoding is behind [`SyncCodec`]; [`AvroSyncCodec`] is the Avro encoding of
//! `callsync-schemas` (single-object or Confluent framing).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use callsync_schemas::{encode_to_vec, RecordDecoder, SyncEvent, SyncRequest, WireFormat};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

/// Encoding or decoding a sync record failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct CodecError {
    pub what: &'static str,
    pub reason: String,
}

/// The wire encoding of SyncRequests and SyncEvents.
pub trait SyncCodec: Send + Sync + 'static {
    fn encode_request(&self, request: &SyncRequest) -> Result<Vec<u8>, CodecError>;
    fn decode_request(&self, bytes: &[u8]) -> Result<SyncRequest, CodecError>;
    fn encode_event(&self, event: &SyncEvent) -> Result<Vec<u8>, CodecError>;
    fn decode_event(&self, bytes: &[u8]) -> Result<SyncEvent, CodecError>;
}

/// The Avro codecs of `callsync-schemas`: writes `format` (single-object without a schema
/// registry, Confluent with one), reads both.
pub struct AvroSyncCodec {
    format: WireFormat,
    requests: RecordDecoder<SyncRequest>,
    events: RecordDecoder<SyncEvent>,
}

impl std::fmt::Debug for AvroSyncCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AvroSyncCodec")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl AvroSyncCodec {
    pub fn new(format: WireFormat) -> Self {
        AvroSyncCodec {
            format,
            requests: RecordDecoder::new(),
            events: RecordDecoder::new(),
        }
    }

    /// Avro single-object encoding (no schema registry).
    pub fn single_object() -> Self {
        Self::new(WireFormat::SingleObject)
    }

    /// The SyncRequest decoder (to teach it registry schema ids).
    pub fn requests_decoder(&self) -> &RecordDecoder<SyncRequest> {
        &self.requests
    }

    /// The SyncEvent decoder (to teach it registry schema ids).
    pub fn events_decoder(&self) -> &RecordDecoder<SyncEvent> {
        &self.events
    }
}

impl SyncCodec for AvroSyncCodec {
    fn encode_request(&self, request: &SyncRequest) -> Result<Vec<u8>, CodecError> {
        encode_to_vec(request, self.format).map_err(|e| CodecError {
            what: "encoding a SyncRequest",
            reason: e.to_string(),
        })
    }
    fn decode_request(&self, bytes: &[u8]) -> Result<SyncRequest, CodecError> {
        self.requests.decode(bytes).map_err(|e| CodecError {
            what: "decoding a SyncRequest",
            reason: e.to_string(),
        })
    }
    fn encode_event(&self, event: &SyncEvent) -> Result<Vec<u8>, CodecError> {
        encode_to_vec(event, self.format).map_err(|e| CodecError {
            what: "encoding a SyncEvent",
            reason: e.to_string(),
        })
    }
    fn decode_event(&self, bytes: &[u8]) -> Result<SyncEvent, CodecError> {
        self.events.decode(bytes).map_err(|e| CodecError {
            what: "decoding a SyncEvent",
            reason: e.to_string(),
        })
    }
}

/// A sync record could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("writing to {topic}: {reason}")]
    Kafka { topic: String, reason: String },
}

/// Where SyncRequests and SyncEvents go (Kafka in production, a vector in unit tests).
#[async_trait]
pub trait SyncPublisher: Send + Sync + 'static {
    /// Writes `request` keyed `{provider}/{account}`; returns once acknowledged.
    async fn publish_request(&self, request: &SyncRequest) -> Result<(), PublishError>;
    /// Writes `event` keyed by its sync id; returns once acknowledged.
    async fn publish_event(&self, event: &SyncEvent) -> Result<(), PublishError>;
}

/// The Kafka key of a SyncRequest: `{provider}/{account}`, so one account's requests stay in
/// order on one partition (and on one worker).
pub fn request_key(request: &SyncRequest) -> String {
    format!("{}/{}", request.provider, request.account_id)
}

/// Writes sync records with the idempotent (`acks=all`) producer of the client factory.
#[derive(Clone)]
pub struct KafkaSyncPublisher {
    producer: FutureProducer,
    codec: Arc<dyn SyncCodec>,
    requests_topic: String,
    events_topic: String,
    timeout: Duration,
}

impl KafkaSyncPublisher {
    /// `requests_topic`/`events_topic` are full names (prefix included); `timeout` bounds
    /// the wait for a free slot in the producer queue.
    pub fn new(
        producer: FutureProducer,
        codec: Arc<dyn SyncCodec>,
        requests_topic: String,
        events_topic: String,
        timeout: Duration,
    ) -> Self {
        KafkaSyncPublisher {
            producer,
            codec,
            requests_topic,
            events_topic,
            timeout,
        }
    }

    pub fn codec(&self) -> &Arc<dyn SyncCodec> {
        &self.codec
    }

    async fn send(&self, topic: &str, key: &str, payload: &[u8]) -> Result<(), PublishError> {
        let record = FutureRecord::to(topic).key(key).payload(payload);
        self.producer
            .send(record, Timeout::After(self.timeout))
            .await
            .map(|_| ())
            .map_err(|(e, _)| PublishError::Kafka {
                topic: topic.to_string(),
                reason: e.to_string(),
            })
    }
}

#[async_trait]
impl SyncPublisher for KafkaSyncPublisher {
    async fn publish_request(&self, request: &SyncRequest) -> Result<(), PublishError> {
        let payload = self.codec.encode_request(request)?;
        self.send(&self.requests_topic, &request_key(request), &payload)
            .await
    }

    async fn publish_event(&self, event: &SyncEvent) -> Result<(), PublishError> {
        let payload = self.codec.encode_event(event)?;
        self.send(&self.events_topic, &event.sync_id, &payload)
            .await
    }
}

/// Keeps everything published in memory (unit tests, dry runs).
#[derive(Debug, Default)]
pub struct MemorySyncPublisher {
    pub requests: std::sync::Mutex<Vec<SyncRequest>>,
    pub events: std::sync::Mutex<Vec<SyncEvent>>,
}

impl MemorySyncPublisher {
    pub fn requests(&self) -> Vec<SyncRequest> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
    pub fn events(&self) -> Vec<SyncEvent> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

#[async_trait]
impl SyncPublisher for MemorySyncPublisher {
    async fn publish_request(&self, request: &SyncRequest) -> Result<(), PublishError> {
        if let Ok(mut requests) = self.requests.lock() {
            requests.push(request.clone());
        }
        Ok(())
    }
    async fn publish_event(&self, event: &SyncEvent) -> Result<(), PublishError> {
        if let Ok(mut events) = self.events.lock() {
            events.push(event.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use callsync_schemas::{Provider, SyncEventKind, SyncMode};
    use chrono::{TimeZone, Utc};

    #[test]
    fn avro_round_trips_requests_and_events() {
        let codec = AvroSyncCodec::single_object();
        let at = Utc.timestamp_opt(1_700_000_000, 123_000).unwrap();
        let request = SyncRequest {
            id: "abc".into(),
            provider: Provider::CallRail,
            account_id: "ACC".into(),
            mode: SyncMode::Backfill,
            window_start: Some(at),
            window_end: None,
            requested_at: at,
            requested_by: "api".into(),
            attempt: 2,
            not_before: Some(at),
        };
        let bytes = codec.encode_request(&request).unwrap();
        assert_eq!(&bytes[..2], &[0xC3, 0x01]);
        assert_eq!(codec.decode_request(&bytes).unwrap(), request);
        assert_eq!(request_key(&request), "callrail/ACC");
        let event = SyncEvent {
            sync_id: "abc".into(),
            provider: Provider::CallRail,
            account_id: "ACC".into(),
            mode: SyncMode::Backfill,
            kind: SyncEventKind::Failed,
            records: 5,
            pages: 1,
            rate_per_sec: 2.5,
            eta_secs: None,
            error: Some("boom".into()),
            at,
        };
        let bytes = codec.encode_event(&event).unwrap();
        assert_eq!(codec.decode_event(&bytes).unwrap(), event);
        assert!(codec.decode_event(b"garbage").is_err());
    }
}
