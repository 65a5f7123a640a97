//! Mapping a connector dead letter (the provider's raw JSON, as the connector read it) again,
//! with the current mapping and the account's current settings, for `callsync dlq redrive`.

use callsync_connectors::runner::headers as connector_headers;
use callsync_connectors::Connectors;
use callsync_schemas::{encode_to_vec, Provider, RecordSource, WireFormat};
use chrono::{TimeZone, Utc};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::Message;
use serde_json::value::RawValue;

use super::OpsError;

/// What mapping a connector dead letter again gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remapped {
    /// The record for `calls.raw`: key and value (single-object Avro, as connectors write it).
    Record { key: Vec<u8>, value: Vec<u8> },
    /// The mapping failed again.
    Failed(RemapFailure),
}

/// Why a connector dead letter could not be mapped again: the new DLQ headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemapFailure {
    pub reason: String,
    pub field: String,
    pub message: String,
}

impl RemapFailure {
    /// `headers` (the redrive headers) with the connector stage's error headers added.
    pub fn headers(&self, headers: OwnedHeaders) -> OwnedHeaders {
        headers
            .insert(Header {
                key: connector_headers::ERROR_STAGE,
                value: Some("connector"),
            })
            .insert(Header {
                key: connector_headers::ERROR_REASON,
                value: Some(self.reason.as_str()),
            })
            .insert(Header {
                key: connector_headers::ERROR_FIELD,
                value: Some(self.field.as_str()),
            })
            .insert(Header {
                key: connector_headers::ERROR_MESSAGE,
                value: Some(self.message.as_str()),
            })
    }
}

fn header<'a>(m: &'a BorrowedMessage<'_>, key: &str) -> Option<&'a str> {
    m.headers()?
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// Maps the connector dead letter `m` again. An Err is a dead letter that cannot be redriven
/// with this config (no provider/account headers, or an account the config does not have).
pub fn remap(connectors: &Connectors, m: &BorrowedMessage<'_>) -> Result<Remapped, OpsError> {
    let origin = format!("{}/{}/{}", m.topic(), m.partition(), m.offset());
    let (Some(provider), Some(account)) = (
        header(m, connector_headers::PROVIDER),
        header(m, connector_headers::ACCOUNT),
    ) else {
        return Err(OpsError::Usage(format!(
            "connector dead letter {origin} has no {} / {} headers: cannot tell which \
             account's mapping to use",
            connector_headers::PROVIDER,
            connector_headers::ACCOUNT
        )));
    };
    let provider: Provider = provider.parse().map_err(|_| {
        OpsError::Usage(format!(
            "connector dead letter {origin}: unknown provider {provider:?}"
        ))
    })?;
    let Some(handle) = connectors.get(provider, account) else {
        return Err(OpsError::Usage(format!(
            "connector dead letter {origin} is of {provider} account {account:?}, which the \
             `connectors` section of the config does not have: add it to redrive this record"
        )));
    };
    let client = &handle.client;
    let failure = |reason: &str, field: &str, message: String| RemapFailure {
        reason: reason.to_string(),
        field: field.to_string(),
        message,
    };
    let raw: &RawValue = match serde_json::from_slice(m.payload().unwrap_or_default()) {
        Ok(raw) => raw,
        Err(e) => {
            return Ok(Remapped::Failed(failure(
                "malformed_json",
                "$",
                format!("{provider} record (account {account}): not JSON: {e}"),
            )))
        }
    };
    let mut ctx = client.map_context(RecordSource::Poll);
    // first seen when the connector read it (the version of providers without update times)
    if let Some(t) = m
        .timestamp()
        .to_millis()
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
    {
        ctx.observed_at = t;
    }
    let record = match client.map_record(raw, &ctx) {
        Ok(record) => record,
        Err(e) => return Ok(Remapped::Failed(failure(e.reason, &e.field, e.to_string()))),
    };
    match encode_to_vec(&record, WireFormat::SingleObject) {
        Ok(value) => Ok(Remapped::Record {
            key: record.key().into_string().into_bytes(),
            value,
        }),
        Err(e) => Ok(Remapped::Failed(failure("encode", "$", e.to_string()))),
    }
}
