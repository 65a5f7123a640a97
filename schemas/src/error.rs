//! Encode and decode errors. Each names the record type, the wire format detected and, for a
//! datum that fails, the field, the byte offset and what was expected.

use std::fmt;

use rust_decimal::Decimal;

use crate::binary::{DatumError, DecimalProblem};

/// A record that cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A money value outside `decimal(18,4)`.
    #[error("{record}.{field}: decimal {value} does not fit decimal(18,4): {problem}")]
    Decimal {
        /// The record type (`CallRecord`).
        record: &'static str,
        /// The field (`revenue`, `payout`).
        field: &'static str,
        /// The value as given.
        value: Decimal,
        /// Why it does not fit.
        problem: DecimalProblem,
    },
}

/// The wire format a decoder detected in a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DetectedFormat {
    /// Avro single-object encoding (`C3 01` + 8-byte fingerprint).
    SingleObject {
        /// The CRC-64-AVRO fingerprint of the writer schema.
        fingerprint: u64,
    },
    /// Confluent wire format (`00` + 4-byte schema id).
    Confluent {
        /// The registry's schema id.
        schema_id: u32,
    },
}

impl DetectedFormat {
    /// The length of the header before the Avro datum.
    pub fn header_len(&self) -> usize {
        match self {
            DetectedFormat::SingleObject { .. } => 10,
            DetectedFormat::Confluent { .. } => 5,
        }
    }
}

impl fmt::Display for DetectedFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DetectedFormat::SingleObject { fingerprint } => {
                write!(f, "Avro single-object (fingerprint 0x{fingerprint:016x})")
            }
            DetectedFormat::Confluent { schema_id } => {
                write!(f, "Confluent (schema id {schema_id})")
            }
        }
    }
}

/// A value that cannot be decoded. `Display` says what was detected and what could not be
/// read, e.g. `Confluent (schema id 3) CallRecord: field revenue at byte 57: union branch 7
/// out of range 0..=1`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// A zero-length value (not a tombstone: tombstones have no value at all in Kafka).
    #[error("empty value: expected an Avro single-object (C3 01) or Confluent (00) {record}")]
    Empty {
        /// The record type expected.
        record: &'static str,
    },
    /// The first byte is neither `0x00` nor `0xC3`.
    #[error("unknown magic byte 0x{byte:02x}{hint}: expected 0x00 (Confluent) or 0xC3 0x01 (Avro single-object) {record}")]
    UnknownMagic {
        /// The record type expected.
        record: &'static str,
        /// The first byte.
        byte: u8,
        /// A guess at what the value is instead (" (looks like JSON)"), or "".
        hint: &'static str,
    },
    /// `0xC3` followed by something other than `0x01`.
    #[error("Avro single-object: second marker byte is 0x{byte:02x}, expected 0x01 (value is not Avro single-object {record})")]
    BadSingleObjectMarker {
        /// The record type expected.
        record: &'static str,
        /// The second byte.
        byte: u8,
    },
    /// The value ends inside its header.
    #[error("{format}: header truncated: the value has {len} bytes, the header alone needs {need} ({record})")]
    TruncatedHeader {
        /// "Avro single-object" or "Confluent".
        format: &'static str,
        /// The record type expected.
        record: &'static str,
        /// The value's length.
        len: usize,
        /// The header's length.
        need: usize,
    },
    /// A single-object value whose writer schema this decoder does not know.
    #[error("Avro single-object, fingerprint 0x{fingerprint:016x} is not a known schema for {record} (ours is 0x{ours:016x}; add the writer schema to the decoder to read it)")]
    UnknownFingerprint {
        /// The record type expected.
        record: &'static str,
        /// The writer schema's fingerprint.
        fingerprint: u64,
        /// Our schema's fingerprint.
        ours: u64,
    },
    /// A Confluent value whose schema id this decoder does not know (and could not fetch).
    #[error("Confluent, schema id {schema_id} is not a known schema for {record} (configure the schema registry, or register the id with the decoder)")]
    UnknownSchemaId {
        /// The record type expected.
        record: &'static str,
        /// The registry's schema id.
        schema_id: u32,
    },
    /// The writer schema (from the registry) cannot be read as this record.
    #[error("{format} {record}: {reason}")]
    IncompatibleSchema {
        /// The format detected.
        format: DetectedFormat,
        /// The record type.
        record: &'static str,
        /// Why (the schema error).
        reason: String,
    },
    /// The datum does not follow the writer schema.
    #[error("{format} {record}: {error}")]
    Datum {
        /// The format detected.
        format: DetectedFormat,
        /// The record type.
        record: &'static str,
        /// Which field, where and what.
        error: DatumError,
    },
    /// Bytes left over after a complete record: usually a wrong writer schema.
    #[error("{format} {record}: {count} unread bytes after the record, from byte {offset}")]
    TrailingBytes {
        /// The format detected.
        format: DetectedFormat,
        /// The record type.
        record: &'static str,
        /// Where the unread bytes start.
        offset: usize,
        /// How many there are.
        count: usize,
    },
    /// apache-avro failed to decode or resolve a datum written with another schema.
    #[error("{format} {record}: reading with writer schema {writer}: {message}")]
    Resolution {
        /// The format detected.
        format: DetectedFormat,
        /// The record type.
        record: &'static str,
        /// The writer schema's full name.
        writer: String,
        /// apache-avro's message.
        message: String,
    },
}

impl DecodeError {
    /// The field that failed, when one did (for a DLQ's `callsync.error.field` header).
    pub fn field(&self) -> Option<&str> {
        match self {
            DecodeError::Datum { error, .. } => Some(&error.field),
            _ => None,
        }
    }

    /// The byte offset in the value where decoding failed, when known.
    pub fn offset(&self) -> Option<usize> {
        match self {
            DecodeError::Datum { error, .. } => error.offset,
            DecodeError::TrailingBytes { offset, .. } => Some(*offset),
            _ => None,
        }
    }

    /// The format detected, when the header was readable.
    pub fn format(&self) -> Option<DetectedFormat> {
        match self {
            DecodeError::Datum { format, .. }
            | DecodeError::TrailingBytes { format, .. }
            | DecodeError::Resolution { format, .. }
            | DecodeError::IncompatibleSchema { format, .. } => Some(*format),
            DecodeError::UnknownFingerprint { fingerprint, .. } => {
                Some(DetectedFormat::SingleObject {
                    fingerprint: *fingerprint,
                })
            }
            DecodeError::UnknownSchemaId { schema_id, .. } => Some(DetectedFormat::Confluent {
                schema_id: *schema_id,
            }),
            _ => None,
        }
    }
}

/// A guess at what a value that is not ours is, from its first bytes.
pub(crate) fn magic_hint(bytes: &[u8]) -> &'static str {
    match bytes {
        [b'{', ..] => " (looks like JSON)",
        [b'[', ..] => " (looks like a JSON array)",
        [b'"', ..] => " (looks like a JSON string)",
        [b'O', b'b', b'j', 1, ..] => " (looks like an Avro object container file)",
        [0x1f, 0x8b, ..] => " (looks like gzip)",
        [first, ..] if first.is_ascii_graphic() || first.is_ascii_whitespace() => {
            " (looks like text)"
        }
        _ => "",
    }
}
