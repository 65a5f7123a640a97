//! Dead-letter records: what the processor writes to `calls.dlq` for a record it will not
//! pass on. The original key and bytes are kept as they were; headers say why, where in the
//! processor, and where the record came from.

use rdkafka::message::{Header, Headers, OwnedHeaders};

use crate::validate::Rejection;

pub const HEADER_ERROR_REASON: &str = "callsync.error.reason";
pub const HEADER_ERROR_FIELD: &str = "callsync.error.field";
pub const HEADER_ERROR_STAGE: &str = "callsync.error.stage";
pub const HEADER_ERROR_MESSAGE: &str = "callsync.error.message";
pub const HEADER_SOURCE_TOPIC: &str = "callsync.source.topic";
pub const HEADER_SOURCE_PARTITION: &str = "callsync.source.partition";
pub const HEADER_SOURCE_OFFSET: &str = "callsync.source.offset";

/// Where in the processor a record failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorStage {
    /// The value's bytes could not be decoded.
    Decode,
    /// A validation rule rejected the record.
    Validate,
    /// The normalized record could not be encoded again.
    Encode,
}

impl ErrorStage {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorStage::Decode => "decode",
            ErrorStage::Validate => "validate",
            ErrorStage::Encode => "encode",
        }
    }
}

/// Where an input record was read.
#[derive(Debug, Clone, Copy)]
pub struct SourcePosition<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// The headers of a dead-letter record: the input's own headers first, then ours.
pub fn dlq_headers(
    original: Option<&rdkafka::message::BorrowedHeaders>,
    rejection: &Rejection,
    stage: ErrorStage,
    source: SourcePosition<'_>,
) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new_with_capacity(original.map_or(0, |h| h.count()) + 7);
    if let Some(original) = original {
        for h in original.iter() {
            if h.key.starts_with("callsync.error.") || h.key.starts_with("callsync.source.") {
                continue; // a redriven record gets fresh error headers
            }
            headers = headers.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    let partition = source.partition.to_string();
    let offset = source.offset.to_string();
    for (key, value) in [
        (HEADER_ERROR_REASON, rejection.reason.code()),
        (HEADER_ERROR_FIELD, &*rejection.field),
        (HEADER_ERROR_STAGE, stage.as_str()),
        (HEADER_ERROR_MESSAGE, rejection.message.as_str()),
        (HEADER_SOURCE_TOPIC, source.topic),
        (HEADER_SOURCE_PARTITION, partition.as_str()),
        (HEADER_SOURCE_OFFSET, offset.as_str()),
    ] {
        headers = headers.insert(Header {
            key,
            value: Some(value),
        });
    }
    headers
}

/// The value of header `key` as UTF-8, if present (for readers of the DLQ).
pub fn header_str<'a, H: Headers>(headers: &'a H, key: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::RejectReason;

    #[test]
    fn headers_carry_reason_field_stage_and_source() {
        let rejection = Rejection::new(
            RejectReason::UnknownCurrency,
            "currency",
            "\"XYZ\" is not ISO 4217",
        );
        let h = dlq_headers(
            None,
            &rejection,
            ErrorStage::Validate,
            SourcePosition {
                topic: "calls.raw",
                partition: 3,
                offset: 42,
            },
        );
        assert_eq!(
            header_str(&h, HEADER_ERROR_REASON),
            Some("unknown_currency")
        );
        assert_eq!(header_str(&h, HEADER_ERROR_FIELD), Some("currency"));
        assert_eq!(header_str(&h, HEADER_ERROR_STAGE), Some("validate"));
        assert_eq!(header_str(&h, HEADER_SOURCE_TOPIC), Some("calls.raw"));
        assert_eq!(header_str(&h, HEADER_SOURCE_PARTITION), Some("3"));
        assert_eq!(header_str(&h, HEADER_SOURCE_OFFSET), Some("42"));
    }
}
