//! The embedded Avro schemas, their Parsing Canonical Form and CRC-64-AVRO fingerprints.
//!
//! The `.avsc` files in `schemas/avro/` are the single source of every record's wire shape.
//! They are compiled into the crate with `include_str!` and parsed once, on first use.
//!
//! The Parsing Canonical Form is computed here from the schema JSON, following the Avro
//! specification exactly as Java's `SchemaNormalization` does. apache-avro 0.21's own
//! `Schema::canonical_form` keeps logical-type annotations as `{"type":"long"}` where the
//! specification (and Java, Python, Kafka Connect) write `"long"`, which would give our
//! single-object encoding a fingerprint Java (Spark, Flink, Kafka Connect) does not compute.
//! Python's `avro` (1.12) writes `{"type":"long"}` too, and apache-avro also keeps a decimal's
//! precision and scale: three implementations, three fingerprints for one schema. Our encoders
//! write the specification's; our decoders also accept single-object values framed with the
//! other two fingerprints of our own schemas (see [`SchemaInfo::alt_fingerprints`]).

use std::fmt;
use std::sync::LazyLock;

use apache_avro::Schema;
use serde_json::Value as Json;

/// The `callsync.v1.CallRecord` schema, `schemas/avro/call_record.avsc`.
pub const CALL_RECORD_AVSC: &str = include_str!("../avro/call_record.avsc");
/// The `callsync.v1.SyncRequest` schema, `schemas/avro/sync_request.avsc`.
pub const SYNC_REQUEST_AVSC: &str = include_str!("../avro/sync_request.avsc");
/// The `callsync.v1.SyncEvent` schema, `schemas/avro/sync_event.avsc`.
pub const SYNC_EVENT_AVSC: &str = include_str!("../avro/sync_event.avsc");
/// The `callsync.v1.DedupEntry` schema, `schemas/avro/dedup_entry.avsc`.
pub const DEDUP_ENTRY_AVSC: &str = include_str!("../avro/dedup_entry.avsc");

/// A schema that failed to parse or that cannot be used where it was offered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// The text is not JSON.
    #[error("schema {origin}: not JSON: {reason}")]
    Json {
        /// Where the schema came from (a file name, a registry id).
        origin: String,
        /// serde_json's message.
        reason: String,
    },
    /// The JSON is not a valid Avro schema.
    #[error("schema {origin}: not a valid Avro schema: {reason}")]
    Invalid {
        /// Where the schema came from (a file name, a registry id).
        origin: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Data written with this schema cannot be read as the record we want.
    #[error(
        "schema {origin} (fingerprint 0x{fingerprint:016x}) cannot be read as {reader}: {reason}"
    )]
    Incompatible {
        /// Where the schema came from (a file name, a registry id).
        origin: String,
        /// The CRC-64-AVRO fingerprint of the writer schema.
        fingerprint: u64,
        /// The full name of the reader schema (`callsync.v1.CallRecord`).
        reader: &'static str,
        /// apache-avro's compatibility verdict.
        reason: String,
    },
}

/// A parsed Avro schema with its Parsing Canonical Form and fingerprint.
///
/// Our own schemas are `&'static SchemaInfo`s (see [`call_record_schema`] and
/// [`crate::AvroRecord::schema_info`]); writer schemas from a registry are parsed into one with
/// [`SchemaInfo::parse`].
#[derive(Clone)]
pub struct SchemaInfo {
    full_name: String,
    json: String,
    schema: Schema,
    canonical_form: String,
    fingerprint: u64,
    alt_fingerprints: Vec<u64>,
}

impl fmt::Debug for SchemaInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SchemaInfo")
            .field("full_name", &self.full_name)
            .field("fingerprint", &format_args!("0x{:016x}", self.fingerprint))
            .finish_non_exhaustive()
    }
}

impl SchemaInfo {
    /// Parses a schema from its JSON text. `origin` names it in errors ("call_record.avsc",
    /// "registry id 42").
    pub fn parse(origin: &str, json: &str) -> Result<Self, SchemaError> {
        let value: Json = serde_json::from_str(json).map_err(|e| SchemaError::Json {
            origin: origin.to_string(),
            reason: e.to_string(),
        })?;
        let canonical_form =
            parsing_canonical_form_of(&value).map_err(|reason| SchemaError::Invalid {
                origin: origin.to_string(),
                reason,
            })?;
        let schema = Schema::parse(&value).map_err(|e| SchemaError::Invalid {
            origin: origin.to_string(),
            reason: e.to_string(),
        })?;
        let full_name = match &schema {
            Schema::Record(r) => r.name.fullname(None),
            other => format!("{:?}", apache_avro::schema::SchemaKind::from(other)),
        };
        Ok(SchemaInfo {
            fingerprint: rabin_fingerprint(canonical_form.as_bytes()),
            full_name,
            json: json.to_string(),
            schema,
            canonical_form,
            alt_fingerprints: Vec::new(),
        })
    }

    /// The schema's full name, e.g. `callsync.v1.CallRecord`.
    pub fn full_name(&self) -> &str {
        &self.full_name
    }

    /// The schema's JSON text as given (for ours, the `.avsc` file with docs and defaults).
    pub fn json(&self) -> &str {
        &self.json
    }

    /// The schema parsed by apache-avro.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The Parsing Canonical Form (the specification's, as Java computes it).
    pub fn canonical_form(&self) -> &str {
        &self.canonical_form
    }

    /// The CRC-64-AVRO (Rabin) fingerprint of the Parsing Canonical Form.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// For our own schemas: the fingerprints other Avro implementations compute for them where
    /// those differ from the specification's: Python `avro` 1.12 (logical types kept as
    /// `{"type":"long"}`) and apache-avro 0.21 (also keeping a decimal's precision and scale).
    /// Decoders accept them as ours; encoders never write them.
    pub fn alt_fingerprints(&self) -> &[u64] {
        &self.alt_fingerprints
    }

    /// Whether a single-object fingerprint names this schema.
    #[inline]
    pub fn is_own_fingerprint(&self, fingerprint: u64) -> bool {
        fingerprint == self.fingerprint || self.alt_fingerprints.contains(&fingerprint)
    }

    /// The 10-byte single-object header: `C3 01` and the fingerprint, little-endian.
    pub fn single_object_header(&self) -> [u8; 10] {
        let mut header = [0u8; 10];
        header[0] = 0xC3;
        header[1] = 0x01;
        header[2..].copy_from_slice(&self.fingerprint.to_le_bytes());
        header
    }
}

fn builtin(file: &str, json: &str) -> SchemaInfo {
    match SchemaInfo::parse(file, json) {
        Ok(mut info) => {
            let python = serde_json::from_str::<Json>(json)
                .ok()
                .and_then(|v| {
                    let mut out = String::new();
                    pcf(&v, "", &mut Vec::new(), &mut out, 0, Style::LogicalAsObject).ok()?;
                    Some(out)
                })
                .unwrap_or_default();
            for form in [python, info.schema.canonical_form()] {
                let fp = rabin_fingerprint(form.as_bytes());
                if fp != info.fingerprint && !info.alt_fingerprints.contains(&fp) {
                    info.alt_fingerprints.push(fp);
                }
            }
            info
        }
        // The files are compiled in and covered by tests; a failure here is a build defect.
        Err(e) => panic!("embedded schema is broken: {e}"),
    }
}

static CALL_RECORD: LazyLock<SchemaInfo> =
    LazyLock::new(|| builtin("call_record.avsc", CALL_RECORD_AVSC));
static SYNC_REQUEST: LazyLock<SchemaInfo> =
    LazyLock::new(|| builtin("sync_request.avsc", SYNC_REQUEST_AVSC));
static SYNC_EVENT: LazyLock<SchemaInfo> =
    LazyLock::new(|| builtin("sync_event.avsc", SYNC_EVENT_AVSC));
static DEDUP_ENTRY: LazyLock<SchemaInfo> =
    LazyLock::new(|| builtin("dedup_entry.avsc", DEDUP_ENTRY_AVSC));

/// `callsync.v1.CallRecord`, parsed once.
pub fn call_record_schema() -> &'static SchemaInfo {
    &CALL_RECORD
}

/// An earlier revision of one of our schemas: our fields up to [`Self::fields`], in the same
/// order and of the same types (each later revision added fields with defaults at the end).
///
/// Values written with it are read by the fast path; and a record the revision can hold
/// unchanged (its later fields at their defaults) is written with it in single-object
/// encoding, so a reader built before the later fields existed still reads it (see
/// [`crate::AvroRecord::single_object_revision`]).
#[derive(Debug)]
pub struct Revision {
    info: SchemaInfo,
    fields: usize,
}

impl Revision {
    /// The revision's schema: our schema cut to its first `fields` fields, derived from the
    /// `.avsc` file (the single source), with its own fingerprints.
    fn derive(file: &str, json: &str, fields: usize) -> Revision {
        let cut = serde_json::from_str::<Json>(json).ok().map(|mut v| {
            if let Some(list) = v.get_mut("fields").and_then(Json::as_array_mut) {
                list.truncate(fields);
            }
            v.to_string()
        });
        Revision {
            info: builtin(file, cut.as_deref().unwrap_or(json)),
            fields,
        }
    }

    pub fn info(&self) -> &SchemaInfo {
        &self.info
    }

    /// How many of our fields (from the first) the revision has.
    pub fn fields(&self) -> usize {
        self.fields
    }
}

/// Fields of CallRecord's first revision (before `present_fields`).
pub const CALL_RECORD_V1_FIELDS: usize = 30;

static CALL_RECORD_REVISIONS: LazyLock<[Revision; 1]> = LazyLock::new(|| {
    [Revision::derive(
        "call_record.avsc (first revision)",
        CALL_RECORD_AVSC,
        CALL_RECORD_V1_FIELDS,
    )]
});

/// The earlier revisions of `callsync.v1.CallRecord`, oldest first.
pub fn call_record_revisions() -> &'static [Revision] {
    &*CALL_RECORD_REVISIONS
}

/// `callsync.v1.SyncRequest`, parsed once.
pub fn sync_request_schema() -> &'static SchemaInfo {
    &SYNC_REQUEST
}

/// `callsync.v1.SyncEvent`, parsed once.
pub fn sync_event_schema() -> &'static SchemaInfo {
    &SYNC_EVENT
}

/// `callsync.v1.DedupEntry`, parsed once.
pub fn dedup_entry_schema() -> &'static SchemaInfo {
    &DEDUP_ENTRY
}

// ---------------------------------------------------------------------------------------------
// CRC-64-AVRO

const RABIN_EMPTY: u64 = 0xc15d_213a_a4d7_a795;

const RABIN_TABLE: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut fp = i as u64;
        let mut j = 0;
        while j < 8 {
            fp = (fp >> 1) ^ (RABIN_EMPTY & (fp & 1).wrapping_neg());
            j += 1;
        }
        table[i] = fp;
        i += 1;
    }
    table
};

/// The CRC-64-AVRO (Rabin) fingerprint of `bytes`, as the Avro specification defines it for
/// schema fingerprints. Single-object encoding writes it little-endian.
pub fn rabin_fingerprint(bytes: &[u8]) -> u64 {
    let mut fp = RABIN_EMPTY;
    for &b in bytes {
        fp = (fp >> 8) ^ RABIN_TABLE[((fp ^ u64::from(b)) & 0xff) as usize];
    }
    fp
}

// ---------------------------------------------------------------------------------------------
// Parsing Canonical Form

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

/// The Parsing Canonical Form of a schema given as JSON text.
pub fn parsing_canonical_form(json: &str) -> Result<String, SchemaError> {
    let value: Json = serde_json::from_str(json).map_err(|e| SchemaError::Json {
        origin: "(text)".to_string(),
        reason: e.to_string(),
    })?;
    parsing_canonical_form_of(&value).map_err(|reason| SchemaError::Invalid {
        origin: "(text)".to_string(),
        reason,
    })
}

/// Which implementation's canonical form to write.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    /// The specification's (and Java's `SchemaNormalization`).
    Spec,
    /// Python `avro` 1.12: a primitive with a logical type stays `{"type":"long"}`.
    LogicalAsObject,
}

fn parsing_canonical_form_of(schema: &Json) -> Result<String, String> {
    let mut out = String::with_capacity(1024);
    let mut defined = Vec::new();
    pcf(schema, "", &mut defined, &mut out, 0, Style::Spec)?;
    Ok(out)
}

fn full_name(name: &str, namespace: Option<&str>, enclosing: &str) -> String {
    if name.contains('.') {
        return name.to_string();
    }
    let ns = match namespace {
        Some(ns) => ns,
        None => enclosing,
    };
    if ns.is_empty() {
        name.to_string()
    } else {
        format!("{ns}.{name}")
    }
}

/// Whether `full` is a valid Avro full name: dot-separated parts, each `[A-Za-z_][A-Za-z0-9_]*`
/// (the spec's rule; apache-avro panics on a name that breaks it, so it is checked first).
fn is_valid_full_name(full: &str) -> bool {
    full.split('.').all(|part| {
        let mut chars = part.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

fn namespace_of(full: &str) -> &str {
    match full.rfind('.') {
        Some(i) => &full[..i],
        None => "",
    }
}

fn push_json_str(out: &mut String, s: &str) {
    // Names and symbols are identifiers; serde_json escapes anything else correctly.
    match serde_json::to_string(s) {
        Ok(quoted) => out.push_str(&quoted),
        Err(_) => {
            out.push('"');
            out.push_str(s);
            out.push('"');
        }
    }
}

fn pcf(
    schema: &Json,
    ns: &str,
    defined: &mut Vec<String>,
    out: &mut String,
    depth: usize,
    style: Style,
) -> Result<(), String> {
    if depth > 256 {
        return Err("schema nested more than 256 levels deep".to_string());
    }
    match schema {
        Json::String(s) => {
            if PRIMITIVES.contains(&s.as_str()) {
                push_json_str(out, s);
            } else {
                push_json_str(out, &full_name(s, None, ns));
            }
            Ok(())
        }
        Json::Array(branches) => {
            out.push('[');
            for (i, b) in branches.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                pcf(b, ns, defined, out, depth + 1, style)?;
            }
            out.push(']');
            Ok(())
        }
        Json::Object(map) => {
            let ty = map
                .get("type")
                .ok_or_else(|| format!("schema object without \"type\": {schema}"))?;
            let ty = match ty {
                Json::String(t) => t.as_str(),
                // {"type": {...}} or {"type": [...]}: the attributes around it don't matter.
                nested => return pcf(nested, ns, defined, out, depth + 1, style),
            };
            if PRIMITIVES.contains(&ty) {
                if style == Style::LogicalAsObject && map.contains_key("logicalType") {
                    out.push_str("{\"type\":");
                    push_json_str(out, ty);
                    out.push('}');
                } else {
                    // [PRIMITIVES]: logicalType and every other attribute are stripped.
                    push_json_str(out, ty);
                }
                return Ok(());
            }
            match ty {
                "record" | "error" | "enum" | "fixed" => {
                    let name = map
                        .get("name")
                        .and_then(Json::as_str)
                        .ok_or_else(|| format!("{ty} without a name"))?;
                    let namespace = map.get("namespace").and_then(Json::as_str);
                    let full = full_name(name, namespace, ns);
                    if !is_valid_full_name(&full) {
                        return Err(format!(
                            "{ty} name {full:?} is not a valid Avro name (dot-separated parts of \
                             letters, digits and _, not starting with a digit)"
                        ));
                    }
                    if defined.contains(&full) {
                        push_json_str(out, &full);
                        return Ok(());
                    }
                    defined.push(full.clone());
                    out.push_str("{\"name\":");
                    push_json_str(out, &full);
                    out.push_str(",\"type\":");
                    match ty {
                        "enum" => {
                            out.push_str("\"enum\",\"symbols\":[");
                            let symbols = map
                                .get("symbols")
                                .and_then(Json::as_array)
                                .ok_or_else(|| format!("enum {full} without symbols"))?;
                            for (i, s) in symbols.iter().enumerate() {
                                if i > 0 {
                                    out.push(',');
                                }
                                let s = s.as_str().ok_or_else(|| {
                                    format!("enum {full}: symbol {s} is not a string")
                                })?;
                                push_json_str(out, s);
                            }
                            out.push_str("]}");
                        }
                        "fixed" => {
                            let size = match map.get("size") {
                                Some(Json::Number(n)) => n.as_u64(),
                                Some(Json::String(s)) => s.parse::<u64>().ok(),
                                _ => None,
                            }
                            .ok_or_else(|| format!("fixed {full} without a valid size"))?;
                            out.push_str("\"fixed\",\"size\":");
                            out.push_str(&size.to_string());
                            out.push('}');
                        }
                        _ => {
                            out.push_str("\"record\",\"fields\":[");
                            let fields = map
                                .get("fields")
                                .and_then(Json::as_array)
                                .ok_or_else(|| format!("record {full} without fields"))?;
                            let inner_ns = namespace_of(&full).to_string();
                            for (i, f) in fields.iter().enumerate() {
                                if i > 0 {
                                    out.push(',');
                                }
                                let fname =
                                    f.get("name").and_then(Json::as_str).ok_or_else(|| {
                                        format!("record {full}: a field without a name")
                                    })?;
                                let ftype = f.get("type").ok_or_else(|| {
                                    format!("record {full}: field {fname} without a type")
                                })?;
                                out.push_str("{\"name\":");
                                push_json_str(out, fname);
                                out.push_str(",\"type\":");
                                pcf(ftype, &inner_ns, defined, out, depth + 1, style)?;
                                out.push('}');
                            }
                            out.push_str("]}");
                        }
                    }
                    Ok(())
                }
                "array" => {
                    let items = map
                        .get("items")
                        .ok_or_else(|| "array without items".to_string())?;
                    out.push_str("{\"type\":\"array\",\"items\":");
                    pcf(items, ns, defined, out, depth + 1, style)?;
                    out.push('}');
                    Ok(())
                }
                "map" => {
                    let values = map
                        .get("values")
                        .ok_or_else(|| "map without values".to_string())?;
                    out.push_str("{\"type\":\"map\",\"values\":");
                    pcf(values, ns, defined, out, depth + 1, style)?;
                    out.push('}');
                    Ok(())
                }
                // {"type": "some.Named"}: a reference.
                other => {
                    push_json_str(out, &full_name(other, None, ns));
                    Ok(())
                }
            }
        }
        other => Err(format!("{other} is not a schema")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors from the Avro project's `share/test/data/schema-tests.txt`, which Java's
    /// implementation cross-checks.
    const VECTORS: &[(&str, &str, Option<i64>)] = &[
        (r#""null""#, r#""null""#, Some(7195948357588979594)),
        (r#"{"type":"null"}"#, r#""null""#, None),
        (r#""boolean""#, r#""boolean""#, Some(-6970731678124411036)),
        (r#""int""#, r#""int""#, Some(8247732601305521295)),
        (r#""long""#, r#""long""#, Some(-3434872931120570953)),
        (r#""float""#, r#""float""#, Some(5583340709985441680)),
        (r#""double""#, r#""double""#, Some(-8181574048448539266)),
        (r#""bytes""#, r#""bytes""#, Some(5746618253357095269)),
        (r#""string""#, r#""string""#, Some(-8142146995180207161)),
        (r#"[  ]"#, r#"[]"#, Some(-1241056759729112623)),
        (r#"[ "int"  ]"#, r#"["int"]"#, Some(-5232228896498058493)),
        (
            r#"[ "int" , {"type":"boolean"} ]"#,
            r#"["int","boolean"]"#,
            Some(5392556393470105090),
        ),
        (
            r#"{"fields":[], "type":"record", "name":"foo"}"#,
            r#"{"name":"foo","type":"record","fields":[]}"#,
            Some(-4824392279771201922),
        ),
        (
            r#"{"fields":[], "type":"record", "name":"foo", "namespace":"x.y"}"#,
            r#"{"name":"x.y.foo","type":"record","fields":[]}"#,
            Some(5916914534497305771),
        ),
        (
            r#"{"fields":[], "type":"record", "name":"a.b.foo", "namespace":"x.y"}"#,
            r#"{"name":"a.b.foo","type":"record","fields":[]}"#,
            Some(-4616218487480524110),
        ),
        (
            r#"{"fields":[], "type":"record", "name":"foo", "doc":"foo", "aliases":["foo","bar"]}"#,
            r#"{"name":"foo","type":"record","fields":[]}"#,
            Some(-4824392279771201922),
        ),
        (
            r#"{"fields":[{"type":{"type":"boolean"}, "name":"f1"}], "type":"record", "name":"foo"}"#,
            r#"{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"}]}"#,
            Some(7843277075252814651),
        ),
        (
            r#"{ "fields":[{"type":"boolean", "aliases":[], "name":"f1", "default":"true"},
                 {"order":"descending","name":"f2","doc":"Hello","type":"int"}],
                 "type":"record", "name":"foo" }"#,
            r#"{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"},{"name":"f2","type":"int"}]}"#,
            Some(-4860222112080293046),
        ),
        (
            r#"{"type":"enum", "name":"foo", "symbols":["A1"]}"#,
            r#"{"name":"foo","type":"enum","symbols":["A1"]}"#,
            Some(-6342190197741309591),
        ),
        (
            r#"{"namespace":"x.y.z", "type":"enum", "name":"foo", "doc":"foo bar", "symbols":["A1", "A2"]}"#,
            r#"{"name":"x.y.z.foo","type":"enum","symbols":["A1","A2"]}"#,
            Some(-4448647247586288245),
        ),
        (
            r#"{"name":"foo","type":"fixed","size":15}"#,
            r#"{"name":"foo","type":"fixed","size":15}"#,
            Some(1756455273707447556),
        ),
        (
            r#"{"namespace":"x.y.z", "type":"fixed", "name":"foo", "doc":"foo bar", "size":32}"#,
            r#"{"name":"x.y.z.foo","type":"fixed","size":32}"#,
            Some(-3064184465700546786),
        ),
        (
            r#"{ "items":{"type":"null"}, "type":"array"}"#,
            r#"{"type":"array","items":"null"}"#,
            Some(-589620603366471059),
        ),
        (
            r#"{ "values":"string", "type":"map"}"#,
            r#"{"type":"map","values":"string"}"#,
            Some(-8732877298790414990),
        ),
        (
            r#"{"name":"PigValue","type":"record",
                "fields":[{"name":"value", "type":["null", "int", "long", "PigValue"]}]}"#,
            r#"{"name":"PigValue","type":"record","fields":[{"name":"value","type":["null","int","long","PigValue"]}]}"#,
            Some(-1759257747318642341),
        ),
        // Logical types reduce to their underlying type, as Java's SchemaNormalization does.
        (
            r#"{"type":"long","logicalType":"timestamp-micros"}"#,
            r#""long""#,
            None,
        ),
        (
            r#"{"type":"bytes","logicalType":"decimal","precision":18,"scale":4}"#,
            r#""bytes""#,
            None,
        ),
    ];

    #[test]
    fn canonical_form_and_fingerprint_match_the_avro_test_vectors() {
        for (input, canonical, fingerprint) in VECTORS {
            let got = parsing_canonical_form(input).unwrap();
            assert_eq!(&got, canonical, "canonical form of {input}");
            if let Some(fp) = fingerprint {
                assert_eq!(
                    rabin_fingerprint(got.as_bytes()) as i64,
                    *fp,
                    "fingerprint of {input}"
                );
            }
        }
    }

    #[test]
    fn rabin_matches_apache_avro() {
        use apache_avro::rabin::Rabin;
        use apache_avro::schema::Schema;
        let s = Schema::parse_str(r#"{"name":"foo","type":"fixed","size":15}"#).unwrap();
        let theirs = s.fingerprint::<Rabin>();
        let ours = rabin_fingerprint(s.canonical_form().as_bytes());
        assert_eq!(theirs.bytes, ours.to_le_bytes().to_vec());
    }

    #[test]
    fn embedded_schemas_parse() {
        for info in [
            call_record_schema(),
            sync_request_schema(),
            sync_event_schema(),
            dedup_entry_schema(),
        ] {
            assert!(info.full_name().starts_with("callsync.v1."), "{info:?}");
            assert!(!info.canonical_form().contains("logicalType"));
            assert!(!info.canonical_form().contains("doc"));
        }
        assert_eq!(call_record_schema().full_name(), "callsync.v1.CallRecord");
        assert_eq!(dedup_entry_schema().full_name(), "callsync.v1.DedupEntry");
        assert!(dedup_entry_schema()
            .canonical_form()
            .contains(r#"{"name":"callsync.v1.Fingerprint128","type":"fixed","size":16}"#));
    }

    #[test]
    fn alt_fingerprints_cover_python_and_apache_avro() {
        // `avro` 1.12 on PyPI:
        // avro.schema.parse(open(f).read()).fingerprint("CRC-64-AVRO").hex()  (little-endian)
        // (call_record.avsc before present_fields: its first revision, derived from the file)
        let cases = [
            (call_record_revisions()[0].info(), "65f192db216ee255"),
            (sync_request_schema(), "8d497be9133a1d28"),
            (sync_event_schema(), "be2e095e8f7dbb6a"),
            (dedup_entry_schema(), "5a44eb1e46be0ff1"),
        ];
        for (info, python) in cases {
            let hexes: Vec<String> = info
                .alt_fingerprints()
                .iter()
                .map(|fp| {
                    fp.to_le_bytes()
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect()
                })
                .collect();
            assert!(
                hexes.iter().any(|h| h == python),
                "{}: {hexes:?}",
                info.full_name()
            );
            let apache = rabin_fingerprint(info.schema().canonical_form().as_bytes());
            assert!(info.is_own_fingerprint(apache) && info.is_own_fingerprint(info.fingerprint()));
            assert!(!info.is_own_fingerprint(0));
        }
    }

    #[test]
    fn bad_schemas_are_named_in_errors() {
        let e = SchemaInfo::parse("registry id 7", "{nope").unwrap_err();
        assert!(e.to_string().contains("registry id 7"), "{e}");
        let e = SchemaInfo::parse("registry id 8", r#"{"type":"record"}"#).unwrap_err();
        assert!(e.to_string().contains("registry id 8"), "{e}");
    }

    /// Found by the avro_resolution fuzz target: apache-avro 0.21 panics (an `unwrap` in
    /// `Name::parse`) on a named type whose name breaks the spec's rule.
    #[test]
    fn an_invalid_type_name_is_an_error_not_a_panic() {
        for name in [
            "CallRee (connected) secocord",
            "1abc",
            "a..b",
            "",
            "ns.",
            "a-b",
        ] {
            let json = format!(r#"{{"type":"record","name":{name:?},"fields":[]}}"#);
            let e = SchemaInfo::parse("registry id 9", &json).unwrap_err();
            assert!(
                e.to_string().contains("not a valid Avro name"),
                "{name}: {e}"
            );
        }
        let json = r#"{"type":"enum","name":"E","namespace":"com.9x","symbols":["A"]}"#;
        assert!(SchemaInfo::parse("registry id 10", json).is_err());
        for ok in ["CallRecord", "_x", "callsync.v1.CallRecord"] {
            let json = format!(r#"{{"type":"record","name":{ok:?},"fields":[]}}"#);
            SchemaInfo::parse("registry id 11", &json).expect(ok);
        }
    }
}
