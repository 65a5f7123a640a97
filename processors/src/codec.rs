//! The processor's use of the wire codecs of `callsync-schemas`: decoding call records from
//! `calls.raw`, encoding normalized ones for `calls`, and the dedup changelog's values.

use callsync_schemas::wire::{self, RecordDecoder, WireFormat};
use callsync_schemas::{CallRecord, DecodeError, DecodedCall, DedupEntry, EncodeError};

/// Decodes and encodes call record values.
#[derive(Debug)]
pub struct CallRecordCodec {
    decoder: &'static RecordDecoder<CallRecord>,
    format: WireFormat,
}

impl Default for CallRecordCodec {
    fn default() -> Self {
        Self::new(WireFormat::SingleObject)
    }
}

impl CallRecordCodec {
    /// Reads both wire formats (with the process-wide decoder, which knows the schema ids
    /// registered in this process); writes `format`.
    pub fn new(format: WireFormat) -> Self {
        CallRecordCodec {
            decoder: wire::call_record_decoder(),
            format,
        }
    }

    pub fn decode(&self, value: &[u8]) -> Result<CallRecord, DecodeError> {
        self.decoder.decode(value)
    }

    /// Decodes `value` with the same checks as [`Self::decode`], reading a record written with
    /// our schema in place (nothing copied until [`DecodedCall::into_record`]).
    pub fn decode_call<'a>(&self, value: &'a [u8]) -> Result<DecodedCall<'a>, DecodeError> {
        self.decoder.decode_call(value)
    }

    /// Appends `record` to `out` (cleared first).
    pub fn encode(&self, record: &CallRecord, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        out.clear();
        wire::encode(record, self.format, out)
    }
}

/// Decodes and encodes dedup changelog values (always single-object encoded: the changelog is
/// callsync's own and needs no registry).
#[derive(Debug, Default)]
pub struct DedupEntryCodec {
    decoder: RecordDecoder<DedupEntry>,
}

impl DedupEntryCodec {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn decode(&self, value: &[u8]) -> Result<DedupEntry, DecodeError> {
        self.decoder.decode(value)
    }

    /// Appends `entry` to `out` (cleared first).
    pub fn encode(&self, entry: &DedupEntry, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        out.clear();
        wire::encode(entry, WireFormat::SingleObject, out)
    }
}
