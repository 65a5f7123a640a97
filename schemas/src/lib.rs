//! callsync's records: Avro schemas, the typed model and the wire codecs.
//!
//! - [`model`]: the typed records ([`CallRecord`], [`SyncRequest`], [`SyncEvent`],
//!   [`DedupEntry`]) every stage codes against.
//! - [`partial`]: partial records, a [`CallRecord`] that carries only some fields
//!   (`present_fields`): [`CallField`], [`FieldSet`] and the constructor parsers use,
//!   [`CallRecord::into_partial`] (fill the fields you have as for a complete record, then name
//!   them: `record.into_partial(FieldSet::EMPTY.with(CallField::Revenue))`). `provider`,
//!   `account_id`, `call_id`, `version`, `source` and `observed_at` are always carried;
//!   [`CallRecord::apply`] is how a reader merges a record onto the row it holds.
//! - [`fingerprint`]: the content fingerprint ([`ContentFingerprint`]) and the order of
//!   versions of one call ([`Precedence`]: version, then fingerprint), shared by the processor's
//!   dedup and the sink's upsert guard so both break ties between equal versions alike.
//! - [`schema`]: the `.avsc` files in `schemas/avro/` (the single source of the wire shape),
//!   embedded and parsed once, with their Parsing Canonical Form and CRC-64-AVRO fingerprint;
//!   and CallRecord's earlier revision (without `present_fields`), derived from the same file:
//!   complete records are written with it in single-object encoding (the bytes older readers
//!   know), partial records with the current schema.
//! - [`AvroRecord`]: per record type, a direct Avro binary encoder/decoder (the fast path) and
//!   the conversion to and from apache-avro `Value`s (schema resolution).
//! - [`wire`]: the two value framings, Avro single-object (`C3 01` + fingerprint) and Confluent
//!   (`00` + schema id): [`encode`], [`RecordEncoder`], [`RecordDecoder`].
//! - [`registry`]: a Confluent-compatible schema registry client and a decoder that fetches
//!   unknown writer schemas.
//!
//! ```
//! use callsync_schemas::{encode_to_vec, decode_call_record, WireFormat, CallRecord};
//! # fn demo(record: &CallRecord) -> Result<(), Box<dyn std::error::Error>> {
//! let bytes = encode_to_vec(record, WireFormat::SingleObject)?;
//! let back = decode_call_record(&bytes)?;
//! assert_eq!(&back, record);
//! # Ok(()) }
//! ```
//!
//! Encoding rules: times are microseconds since the epoch (sub-microsecond precision is
//! truncated); money is `decimal(18,4)`, rescaled only when exact, else an [`EncodeError`];
//! decoding never panics and never allocates more than the input could hold.

pub mod binary;
pub mod error;
pub mod fingerprint;
#[doc(hidden)]
pub mod fuzzing;
pub mod model;
pub mod partial;
pub mod records;
pub mod registry;
pub mod schema;
pub mod view;
pub mod wire;

pub use binary::{DatumError, DatumReader, DecimalProblem, Problem};
pub use error::{DecodeError, DetectedFormat, EncodeError};
pub use fingerprint::{ContentFingerprint, Precedence};
pub use model::*;
pub use partial::{CallField, FieldSet, UnknownField};
pub use records::AvroRecord;
pub use registry::{
    value_subject, wire_format_for, RegistryDecodeError, RegistryDecoder, RegistryError,
    SchemaRegistryClient,
};
pub use schema::{
    call_record_revisions, call_record_schema, dedup_entry_schema, sync_event_schema,
    sync_request_schema, Revision, SchemaError, SchemaInfo,
};
pub use view::{CallRecordView, TagsView};
pub use wire::{
    call_record_decoder, decode_call_record, detect_format, encode, encode_call_record,
    encode_to_vec, DecodedCall, RecordDecoder, RecordEncoder, WireFormat,
};
