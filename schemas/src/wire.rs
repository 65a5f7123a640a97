//! Wire formats of Kafka values: Avro single-object encoding and the Confluent wire format, an
//! encoder that appends to a caller's buffer, and a decoder that reads both.
//!
//! Decoding data written with our own schema (recognised by fingerprint, or by a registry id
//! whose schema has our fingerprint) takes the direct binary fast path. Data written with
//! another schema (an older or newer version, fetched from a registry or added by hand) is
//! first checked against its writer schema by a bounds-checked walk (so a corrupt length
//! prefix cannot make apache-avro allocate, and nesting is bounded), then decoded and resolved
//! against our reader schema by apache-avro.

use std::borrow::Cow;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, LazyLock, PoisonError, RwLock};

use apache_avro::schema::{Name, Namespace, ResolvedSchema, Schema, UnionSchema};

use crate::binary::{DatumError, DatumReader, Problem};
use crate::error::{magic_hint, DecodeError, DetectedFormat, EncodeError};
use crate::fingerprint::ContentFingerprint;
use crate::model::{CallRecord, Provider};
use crate::records::AvroRecord;
use crate::schema::{SchemaError, SchemaInfo};
use crate::view::CallRecordView;

/// Length of the single-object header: `C3 01` + 8-byte fingerprint.
pub const SINGLE_OBJECT_HEADER_LEN: usize = 10;
/// Length of the Confluent header: `00` + 4-byte big-endian schema id.
pub const CONFLUENT_HEADER_LEN: usize = 5;

/// How a value is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WireFormat {
    /// Avro single-object encoding: `C3 01`, the 8-byte little-endian CRC-64-AVRO fingerprint
    /// of the schema's Parsing Canonical Form, then the Avro binary datum. Used when no schema
    /// registry is configured.
    SingleObject,
    /// Confluent wire format: `00`, the 4-byte big-endian schema id the registry gave our
    /// schema, then the Avro binary datum.
    Confluent {
        /// The registry's id of the writer schema.
        schema_id: u32,
    },
}

impl WireFormat {
    /// Appends the header of this format for a record of type `T`.
    pub fn write_header<T: AvroRecord>(&self, out: &mut Vec<u8>) {
        match *self {
            WireFormat::SingleObject => {
                out.extend_from_slice(&T::schema_info().single_object_header())
            }
            WireFormat::Confluent { schema_id } => {
                out.push(0);
                out.extend_from_slice(&schema_id.to_be_bytes());
            }
        }
    }

    /// The header's length.
    pub fn header_len(&self) -> usize {
        match self {
            WireFormat::SingleObject => SINGLE_OBJECT_HEADER_LEN,
            WireFormat::Confluent { .. } => CONFLUENT_HEADER_LEN,
        }
    }
}

/// Appends `record` in `format` to `out`. On error `out` is left as it was.
///
/// A single-object value is written with the earliest revision of our schema that holds the
/// record unchanged ([`AvroRecord::single_object_revision`]): a complete CallRecord has the
/// same bytes as before `present_fields` existed, so readers built before it still read it.
///
/// Times are written as microseconds (sub-microsecond precision is truncated); money must fit
/// `decimal(18,4)`: a value with more decimal places is rescaled only when exact (trailing
/// zeros), otherwise, and beyond 18 digits, it is an [`EncodeError::Decimal`].
pub fn encode<T: AvroRecord>(
    record: &T,
    format: WireFormat,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let start = out.len();
    out.reserve(format.header_len() + record.size_hint());
    let written = match (format, record.single_object_revision()) {
        (WireFormat::SingleObject, Some(revision)) => {
            out.extend_from_slice(&revision.info().single_object_header());
            record.write_revision_datum(revision, out)
        }
        _ => {
            format.write_header::<T>(out);
            record.write_datum(out)
        }
    };
    if let Err(e) = written {
        out.truncate(start);
        return Err(e);
    }
    Ok(())
}

/// `record` in `format`, in a new `Vec`.
pub fn encode_to_vec<T: AvroRecord>(
    record: &T,
    format: WireFormat,
) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    encode(record, format, &mut out)?;
    Ok(out)
}

/// Appends a [`CallRecord`] in `format` to `out` (see [`encode`]).
pub fn encode_call_record(
    record: &CallRecord,
    format: WireFormat,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    encode(record, format, out)
}

/// Encodes records of one type in one format into a buffer it reuses.
#[derive(Debug, Clone)]
pub struct RecordEncoder<T> {
    format: WireFormat,
    buf: Vec<u8>,
    _record: PhantomData<fn(&T)>,
}

impl<T: AvroRecord> RecordEncoder<T> {
    /// An encoder writing `format`.
    pub fn new(format: WireFormat) -> Self {
        RecordEncoder {
            format,
            buf: Vec::with_capacity(512),
            _record: PhantomData,
        }
    }

    /// The format it writes.
    pub fn format(&self) -> WireFormat {
        self.format
    }

    /// Encodes `record` into the internal buffer (cleared first) and returns the bytes.
    pub fn encode(&mut self, record: &T) -> Result<&[u8], EncodeError> {
        self.buf.clear();
        encode(record, self.format, &mut self.buf)?;
        Ok(&self.buf)
    }

    /// Appends `record` to `out`.
    pub fn encode_into(&self, record: &T, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        encode(record, self.format, out)
    }
}

/// Reads the header of `value` without decoding the datum.
pub fn detect_format(value: &[u8]) -> Result<DetectedFormat, DecodeError> {
    detect(value, "value")
}

fn detect(value: &[u8], record: &'static str) -> Result<DetectedFormat, DecodeError> {
    match value {
        [] => Err(DecodeError::Empty { record }),
        [0xC3, rest @ ..] => {
            if let Some(&b) = rest.first() {
                if b != 0x01 {
                    return Err(DecodeError::BadSingleObjectMarker { record, byte: b });
                }
            }
            match value.get(2..SINGLE_OBJECT_HEADER_LEN) {
                Some(fp) => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(fp);
                    Ok(DetectedFormat::SingleObject {
                        fingerprint: u64::from_le_bytes(b),
                    })
                }
                None => Err(DecodeError::TruncatedHeader {
                    format: "Avro single-object",
                    record,
                    len: value.len(),
                    need: SINGLE_OBJECT_HEADER_LEN,
                }),
            }
        }
        [0x00, ..] => match value.get(1..CONFLUENT_HEADER_LEN) {
            Some(id) => {
                let mut b = [0u8; 4];
                b.copy_from_slice(id);
                Ok(DetectedFormat::Confluent {
                    schema_id: u32::from_be_bytes(b),
                })
            }
            None => Err(DecodeError::TruncatedHeader {
                format: "Confluent",
                record,
                len: value.len(),
                need: CONFLUENT_HEADER_LEN,
            }),
        },
        [byte, ..] => Err(DecodeError::UnknownMagic {
            record,
            byte: *byte,
            hint: magic_hint(value),
        }),
    }
}

/// A writer schema other than ours, prepared for resolution.
struct OtherSchema {
    info: SchemaInfo,
    /// The schema with `bytes` decimals as plain `bytes` (see [`strip_decimals`]).
    resolution: Schema,
    /// Named types of the schema, for references met while walking a datum.
    names: HashMap<Name, Schema>,
}

enum Writer {
    Ours,
    /// An earlier revision of our schema (by its index in [`AvroRecord::revisions`]): the fast
    /// path, reading only the revision's fields.
    Earlier(usize),
    Other(Box<OtherSchema>),
    /// A registry id whose schema cannot be read as `T` (ids are immutable, so this is final).
    Rejected(SchemaError),
}

/// Decodes values of type `T` in either wire format.
///
/// It knows our own schema by fingerprint from the start. Confluent schema ids must be added
/// ([`add_own_schema_id`](Self::add_own_schema_id) when we registered the schema ourselves,
/// [`add_schema_id`](Self::add_schema_id) with a schema fetched from the registry; the
/// [`crate::registry::RegistryDecoder`] does that on demand); other single-object writer
/// schemas are added with [`add_writer_schema`](Self::add_writer_schema). Safe to share
/// between threads (`&self` everywhere); lookups take a read lock.
pub struct RecordDecoder<T> {
    /// Our schema with `bytes` decimals as plain `bytes`, the reader of the resolution path.
    resolution_reader: Schema,
    by_id: RwLock<HashMap<u32, Arc<Writer>>>,
    by_fingerprint: RwLock<HashMap<u64, Arc<Writer>>>,
    _record: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for RecordDecoder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<u32> = self
            .by_id
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .copied()
            .collect();
        f.debug_struct("RecordDecoder")
            .field("schema_ids", &ids)
            .finish_non_exhaustive()
    }
}

impl<T: AvroRecord> Default for RecordDecoder<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// Nesting limit for datums read with a foreign writer schema.
const MAX_DEPTH: usize = 64;

impl<T: AvroRecord> RecordDecoder<T> {
    /// A decoder that knows our own schema and its earlier revisions (single-object) and no
    /// registry ids.
    pub fn new() -> Self {
        RecordDecoder {
            resolution_reader: strip_decimals(T::schema_info().schema()),
            by_id: RwLock::new(HashMap::new()),
            by_fingerprint: RwLock::new(HashMap::new()),
            _record: PhantomData,
        }
    }

    fn prepare(origin: &str, json: &str) -> Result<(u64, Writer), SchemaError> {
        let info = SchemaInfo::parse(origin, json)?;
        let ours = T::schema_info();
        if info.fingerprint() == ours.fingerprint() {
            return Ok((info.fingerprint(), Writer::Ours));
        }
        if let Some(i) = T::revisions()
            .iter()
            .position(|r| r.info().fingerprint() == info.fingerprint())
        {
            return Ok((info.fingerprint(), Writer::Earlier(i)));
        }
        check_readable(info.schema(), ours.schema()).map_err(|reason| {
            SchemaError::Incompatible {
                origin: origin.to_string(),
                fingerprint: info.fingerprint(),
                reader: T::NAME,
                reason,
            }
        })?;
        let names = ResolvedSchema::try_from(info.schema())
            .map_err(|e| SchemaError::Invalid {
                origin: origin.to_string(),
                reason: e.to_string(),
            })?
            .get_names()
            .iter()
            .map(|(n, s)| (n.clone(), (*s).clone()))
            .collect();
        let resolution = strip_decimals(info.schema());
        Ok((
            info.fingerprint(),
            Writer::Other(Box::new(OtherSchema {
                info,
                resolution,
                names,
            })),
        ))
    }

    /// Records that registry id `schema_id` is our own schema (e.g. the id the registry
    /// returned when we registered it).
    pub fn add_own_schema_id(&self, schema_id: u32) {
        self.by_id
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(schema_id, Arc::new(Writer::Ours));
    }

    /// Adds the writer schema that registry id `schema_id` names. A schema whose fingerprint is
    /// ours is read by the fast path; any other must be readable as `T` (Avro schema
    /// resolution rules), else this is an [`SchemaError::Incompatible`] error.
    ///
    /// A rejected id is remembered: values with it then fail at once with
    /// [`DecodeError::IncompatibleSchema`].
    pub fn add_schema_id(&self, schema_id: u32, schema_json: &str) -> Result<(), SchemaError> {
        let (writer, result) = match Self::prepare(&format!("registry id {schema_id}"), schema_json)
        {
            Ok((_, writer)) => (writer, Ok(())),
            Err(e) => (Writer::Rejected(e.clone()), Err(e)),
        };
        self.by_id
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(schema_id, Arc::new(writer));
        result
    }

    /// Adds a writer schema for single-object values (an older or newer version of ours) and
    /// returns its fingerprint. It must be readable as `T`.
    pub fn add_writer_schema(&self, schema_json: &str) -> Result<u64, SchemaError> {
        let (fingerprint, writer) = Self::prepare("(writer schema)", schema_json)?;
        if let Writer::Other(_) = writer {
            self.by_fingerprint
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(fingerprint, Arc::new(writer));
        }
        Ok(fingerprint)
    }

    /// Whether registry id `schema_id` is known.
    pub fn knows_schema_id(&self, schema_id: u32) -> bool {
        self.by_id
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&schema_id)
    }

    fn decode_with(
        &self,
        format: DetectedFormat,
        writer: &Writer,
        body: &[u8],
    ) -> Result<T, DecodeError> {
        match writer {
            Writer::Ours => decode_fast::<T>(format, body),
            Writer::Earlier(i) => decode_earlier::<T>(format, *i, body),
            Writer::Other(other) => {
                decode_resolved::<T>(format, other, &self.resolution_reader, body)
            }
            Writer::Rejected(e) => Err(DecodeError::IncompatibleSchema {
                format,
                record: T::NAME,
                reason: e.to_string(),
            }),
        }
    }

    /// Reads the header of `value` (errors name `T`).
    pub fn detect(&self, value: &[u8]) -> Result<DetectedFormat, DecodeError> {
        detect(value, T::NAME)
    }

    /// The writer schema of a value in `format`: our own schema or one of its earlier
    /// revisions by fingerprint (the fast path, no lookup), else the one this decoder was given
    /// for that fingerprint or id.
    fn writer(&self, format: DetectedFormat) -> Result<WriterOf, DecodeError> {
        match format {
            DetectedFormat::SingleObject { fingerprint } => {
                let info = T::schema_info();
                if info.is_own_fingerprint(fingerprint) {
                    return Ok(WriterOf::Ours);
                }
                if let Some(i) = T::revisions()
                    .iter()
                    .position(|r| r.info().is_own_fingerprint(fingerprint))
                {
                    return Ok(WriterOf::Earlier(i));
                }
                let writer = self
                    .by_fingerprint
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&fingerprint)
                    .cloned();
                match writer {
                    Some(w) => Ok(WriterOf::Given(w)),
                    None => Err(DecodeError::UnknownFingerprint {
                        record: T::NAME,
                        fingerprint,
                        ours: info.fingerprint(),
                    }),
                }
            }
            DetectedFormat::Confluent { schema_id } => {
                let writer = self
                    .by_id
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&schema_id)
                    .cloned();
                match writer {
                    Some(w) => Ok(WriterOf::Given(w)),
                    None => Err(DecodeError::UnknownSchemaId {
                        record: T::NAME,
                        schema_id,
                    }),
                }
            }
        }
    }

    /// Decodes one value in either wire format.
    pub fn decode(&self, value: &[u8]) -> Result<T, DecodeError> {
        let format = detect(value, T::NAME)?;
        let body = &value[format.header_len()..];
        match self.writer(format)? {
            WriterOf::Ours => decode_fast::<T>(format, body),
            WriterOf::Earlier(i) => decode_earlier::<T>(format, i, body),
            WriterOf::Given(writer) => self.decode_with(format, &writer, body),
        }
    }
}

/// The writer schema of one value, as [`RecordDecoder`] found it.
enum WriterOf {
    Ours,
    Earlier(usize),
    Given(Arc<Writer>),
}

/// `schema` with every decimal over `bytes` replaced by plain `bytes`.
///
/// apache-avro 0.21 refuses to resolve a `bytes` decimal shorter than its precision could need
/// ("Precision 18 too small to hold decimal values with 3 bytes"), i.e. the minimal
/// two's-complement bytes Java and we write. The binary encoding is the same either way, and
/// [`check_readable`] makes sure the scales agree, so the resolution path reads the unscaled
/// bytes as `bytes` and [`AvroRecord::from_avro_value`] applies the scale.
fn strip_decimals(schema: &Schema) -> Schema {
    match schema {
        Schema::Decimal(d) if matches!(*d.inner, Schema::Bytes) => Schema::Bytes,
        Schema::Union(u) => {
            let variants = u.variants().iter().map(strip_decimals).collect();
            match UnionSchema::new(variants) {
                Ok(u) => Schema::Union(u),
                Err(_) => schema.clone(),
            }
        }
        Schema::Array(a) => {
            let mut a = a.clone();
            a.items = Box::new(strip_decimals(&a.items));
            Schema::Array(a)
        }
        Schema::Map(m) => {
            let mut m = m.clone();
            m.types = Box::new(strip_decimals(&m.types));
            Schema::Map(m)
        }
        Schema::Record(r) => {
            let mut r = r.clone();
            for f in &mut r.fields {
                f.schema = strip_decimals(&f.schema);
            }
            Schema::Record(r)
        }
        other => other.clone(),
    }
}

/// The decimal scales found in a field's schema (directly or as a union branch).
fn decimal_scales(schema: &Schema) -> Vec<usize> {
    match schema {
        Schema::Decimal(d) => vec![d.scale],
        Schema::Union(u) => u.variants().iter().flat_map(decimal_scales).collect(),
        _ => Vec::new(),
    }
}

/// Whether data written with `writer` can be resolved into `reader` at the record level: both
/// records of the same (unqualified) name, and every reader field without a default present in
/// the writer (by name or alias). Field type mismatches surface per value, as
/// [`DecodeError::Resolution`], with apache-avro's message.
///
/// apache-avro 0.21's `SchemaCompatibility::can_read` is not used: it rejects identical
/// `["null", decimal]` fields ("Field 'revenue' in reader schema does not match").
fn check_readable(writer: &Schema, reader: &Schema) -> Result<(), String> {
    let (Schema::Record(w), Schema::Record(r)) = (writer, reader) else {
        return Err("the writer schema is not a record".to_string());
    };
    let same_name =
        w.name.name == r.name.name || r.aliases.iter().flatten().any(|a| a.name() == w.name.name);
    if !same_name {
        return Err(format!(
            "writer record {} is not {}",
            w.name.fullname(None),
            r.name.fullname(None)
        ));
    }
    let missing: Vec<&str> = r
        .fields
        .iter()
        .filter(|f| f.default.is_none())
        .filter(|f| {
            !w.fields
                .iter()
                .any(|wf| wf.name == f.name || f.aliases.iter().flatten().any(|a| *a == wf.name))
        })
        .map(|f| f.name.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "field(s) {} have no default and are missing from the writer schema",
            missing.join(", ")
        ));
    }
    for rf in &r.fields {
        let Some(wf) = w.fields.iter().find(|wf| wf.name == rf.name) else {
            continue;
        };
        let (ws, rs) = (decimal_scales(&wf.schema), decimal_scales(&rf.schema));
        if let (Some(ws), Some(rs)) = (ws.first(), rs.first()) {
            if ws != rs {
                return Err(format!(
                    "field {}: the writer's decimal scale {ws} differs from ours, {rs}",
                    rf.name
                ));
            }
        }
    }
    Ok(())
}

/// Decodes a datum written with our schema (`body` follows a header of `format`).
fn decode_fast<T: AvroRecord>(format: DetectedFormat, body: &[u8]) -> Result<T, DecodeError> {
    read_whole_datum(format, T::NAME, body, T::read_datum)
}

/// Decodes a datum written with earlier revision `i` of our schema.
fn decode_earlier<T: AvroRecord>(
    format: DetectedFormat,
    i: usize,
    body: &[u8],
) -> Result<T, DecodeError> {
    match T::revisions().get(i) {
        Some(revision) => read_whole_datum(format, T::NAME, body, |r| {
            T::read_revision_datum(r, revision)
        }),
        None => decode_fast::<T>(format, body),
    }
}

/// Reads `body` (a datum after a header of `format`) with `read`, which must consume all of it.
fn read_whole_datum<'a, R>(
    format: DetectedFormat,
    record: &'static str,
    body: &'a [u8],
    read: impl FnOnce(&mut DatumReader<'a>) -> Result<R, DatumError>,
) -> Result<R, DecodeError> {
    let mut r = DatumReader::new(body, format.header_len());
    let value = read(&mut r).map_err(|error| DecodeError::Datum {
        format,
        record,
        error,
    })?;
    if r.remaining() != 0 {
        return Err(DecodeError::TrailingBytes {
            format,
            record,
            offset: r.offset(),
            count: r.remaining(),
        });
    }
    Ok(value)
}

/// A call record decoded from a Kafka value by [`RecordDecoder::decode_call`].
#[derive(Debug, Clone)]
pub enum DecodedCall<'a> {
    /// Written with our schema: read in place, every field checked, nothing copied yet.
    View {
        view: CallRecordView<'a>,
        format: DetectedFormat,
    },
    /// Written with another schema: decoded and resolved into an owned record.
    Owned(CallRecord),
}

impl DecodedCall<'_> {
    pub fn provider(&self) -> Provider {
        match self {
            DecodedCall::View { view, .. } => view.provider,
            DecodedCall::Owned(r) => r.provider,
        }
    }

    pub fn account_id(&self) -> &str {
        match self {
            DecodedCall::View { view, .. } => view.account_id,
            DecodedCall::Owned(r) => &r.account_id,
        }
    }

    pub fn call_id(&self) -> &str {
        match self {
            DecodedCall::View { view, .. } => view.call_id,
            DecodedCall::Owned(r) => &r.call_id,
        }
    }

    pub fn version(&self) -> i64 {
        match self {
            DecodedCall::View { view, .. } => view.version,
            DecodedCall::Owned(r) => r.version,
        }
    }

    /// The content fingerprint of the record as decoded (not normalized), without copying a
    /// view; `None` when a view's tags are not in canonical order.
    pub fn content_fingerprint(&self) -> Option<ContentFingerprint> {
        match self {
            DecodedCall::View { view, .. } => ContentFingerprint::of_view(view),
            DecodedCall::Owned(r) => Some(ContentFingerprint::of(r)),
        }
    }

    /// The owned record (a copy of the view's fields).
    pub fn into_record(self) -> Result<CallRecord, DecodeError> {
        match self {
            DecodedCall::View { view, format } => {
                view.to_record().map_err(|error| DecodeError::Datum {
                    format,
                    record: CallRecord::NAME,
                    error,
                })
            }
            DecodedCall::Owned(r) => Ok(r),
        }
    }
}

impl RecordDecoder<CallRecord> {
    /// Decodes a call record value as [`Self::decode`] does (the same checks, the same
    /// errors), but reads one written with our schema in place: a caller that only needs the
    /// key and version (the processor's dedup lookup) allocates nothing.
    pub fn decode_call<'a>(&self, value: &'a [u8]) -> Result<DecodedCall<'a>, DecodeError> {
        let format = detect(value, CallRecord::NAME)?;
        let body = &value[format.header_len()..];
        // CallRecord's only earlier revision ends before present_fields
        match self.writer(format)? {
            WriterOf::Ours => decode_view(format, body, true),
            WriterOf::Earlier(_) => decode_view(format, body, false),
            WriterOf::Given(writer) => match &*writer {
                Writer::Ours => decode_view(format, body, true),
                Writer::Earlier(_) => decode_view(format, body, false),
                _ => self
                    .decode_with(format, &writer, body)
                    .map(DecodedCall::Owned),
            },
        }
    }
}

fn decode_view(
    format: DetectedFormat,
    body: &[u8],
    has_present_fields: bool,
) -> Result<DecodedCall<'_>, DecodeError> {
    let view = read_whole_datum(format, CallRecord::NAME, body, |r| {
        CallRecordView::read_revision(r, has_present_fields)
    })?;
    Ok(DecodedCall::View { view, format })
}

/// Decodes a datum written with another schema, resolving it against ours.
fn decode_resolved<T: AvroRecord>(
    format: DetectedFormat,
    writer: &OtherSchema,
    reader: &Schema,
    body: &[u8],
) -> Result<T, DecodeError> {
    let datum_error = |error| DecodeError::Datum {
        format,
        record: T::NAME,
        error,
    };
    // Walk the datum first: bounds and depth checked, so apache-avro sees only sane input.
    let mut r = DatumReader::new(body, format.header_len());
    let mut walker = Walker {
        names: &writer.names,
        path: Vec::new(),
    };
    walker
        .walk(&mut r, writer.info.schema(), &None, 0)
        .map_err(datum_error)?;
    if r.remaining() != 0 {
        return Err(DecodeError::TrailingBytes {
            format,
            record: T::NAME,
            offset: r.offset(),
            count: r.remaining(),
        });
    }
    let mut input = body;
    let value = apache_avro::from_avro_datum(&writer.resolution, &mut input, Some(reader))
        .map_err(|e| DecodeError::Resolution {
            format,
            record: T::NAME,
            writer: writer.info.full_name().to_string(),
            message: e.to_string(),
        })?;
    T::from_avro_value(value).map_err(datum_error)
}

/// A schema-driven walk over a datum that checks every length, count, branch and nesting
/// level against the input, reporting the field path on error.
struct Walker<'s> {
    names: &'s HashMap<Name, Schema>,
    path: Vec<&'s str>,
}

impl<'s> Walker<'s> {
    fn named(&self, mut e: DatumError) -> DatumError {
        e.field = if self.path.is_empty() {
            Cow::Borrowed("(record)")
        } else {
            Cow::Owned(self.path.join("."))
        };
        e
    }

    fn walk(
        &mut self,
        r: &mut DatumReader<'_>,
        schema: &'s Schema,
        ns: &Namespace,
        depth: usize,
    ) -> Result<(), DatumError> {
        if depth > MAX_DEPTH {
            let at = r.offset();
            return Err(self.named(DatumError {
                field: Cow::Borrowed(""),
                offset: Some(at),
                problem: Problem::TooDeep(MAX_DEPTH),
            }));
        }
        let res = match schema {
            Schema::Null => Ok(()),
            Schema::Boolean => r.boolean().map(drop),
            Schema::Int | Schema::Date | Schema::TimeMillis => r.int().map(drop),
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => r.long().map(drop),
            Schema::Float => r.float().map(drop),
            Schema::Double => r.double().map(drop),
            Schema::String => r.str().map(drop),
            Schema::Bytes | Schema::BigDecimal | Schema::Uuid => r.bytes().map(drop),
            Schema::Fixed(f) => r.fixed(f.size).map(drop),
            Schema::Duration => r.fixed(12).map(drop),
            Schema::Decimal(d) => return self.walk(r, &d.inner, ns, depth + 1),
            Schema::Enum(e) => {
                let start = r.offset();
                match r.long() {
                    Ok(i) if i >= 0 && (i as u64) < e.symbols.len() as u64 => Ok(()),
                    Ok(index) => Err(DatumError {
                        field: Cow::Borrowed(""),
                        offset: Some(start),
                        problem: Problem::EnumIndex {
                            index,
                            symbols: e.symbols.len(),
                        },
                    }),
                    Err(e) => Err(e),
                }
            }
            Schema::Union(u) => {
                let variants = u.variants();
                let max = variants.len().saturating_sub(1);
                let start = r.offset();
                let i = r.branch(max).map_err(|e| self.named(e))?;
                match variants.get(i) {
                    Some(v) => return self.walk(r, v, ns, depth + 1),
                    None => Err(DatumError {
                        field: Cow::Borrowed(""),
                        offset: Some(start),
                        problem: Problem::UnionBranch { index: 0, max: 0 },
                    }),
                }
            }
            Schema::Array(a) => {
                while let Some(n) = r.block_count("array", 1).map_err(|e| self.named(e))? {
                    for _ in 0..n {
                        self.walk(r, &a.items, ns, depth + 1)?;
                    }
                }
                return Ok(());
            }
            Schema::Map(m) => {
                while let Some(n) = r.block_count("map", 1).map_err(|e| self.named(e))? {
                    for _ in 0..n {
                        r.str().map_err(|e| self.named(e))?;
                        self.walk(r, &m.types, ns, depth + 1)?;
                    }
                }
                return Ok(());
            }
            Schema::Record(rec) => {
                let inner_ns = &rec.name.namespace;
                for f in &rec.fields {
                    self.path.push(&f.name);
                    let res = self.walk(r, &f.schema, inner_ns, depth + 1);
                    self.path.pop();
                    res?;
                }
                return Ok(());
            }
            Schema::Ref { name } => {
                let full = name.fully_qualified_name(ns);
                match self.names.get(&full) {
                    Some(s) => {
                        let next_ns = full.namespace.clone();
                        return self.walk(r, s, &next_ns, depth + 1);
                    }
                    None => Err(DatumError {
                        field: Cow::Borrowed(""),
                        offset: Some(r.offset()),
                        problem: Problem::UndefinedType(full.fullname(None)),
                    }),
                }
            }
        };
        res.map_err(|e| self.named(e))
    }
}

static CALL_RECORD_DECODER: LazyLock<RecordDecoder<CallRecord>> = LazyLock::new(RecordDecoder::new);

/// Decodes a [`CallRecord`] written in single-object encoding with our schema, or in the
/// Confluent format with a schema id registered in [`call_record_decoder`] (a process-wide
/// decoder). Services with a registry use a [`crate::registry::RegistryDecoder`] instead.
pub fn decode_call_record(value: &[u8]) -> Result<CallRecord, DecodeError> {
    CALL_RECORD_DECODER.decode(value)
}

/// The process-wide decoder behind [`decode_call_record`].
pub fn call_record_decoder() -> &'static RecordDecoder<CallRecord> {
    &CALL_RECORD_DECODER
}
