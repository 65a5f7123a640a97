//! Entry points for the fuzz targets in `fuzz/` and their stable twins (the proptests in
//! `schemas/tests/robustness.rs` and `schemas/tests/decoder_fuzz.rs`). Each runs outside
//! bytes through the decoder and panics only when an invariant breaks. Not an API.
//!
//! - [`decode_value`]: any Kafka value through framing detection and every record type's
//!   decoder, including resolution from a foreign writer schema registered by id and by
//!   fingerprint; a record that decodes must re-encode and decode to itself.
//! - [`resolve_writer_schema`]: a writer schema as a registry would serve it, a NUL byte, then
//!   a datum written with it: schema parsing, then resolution to our CallRecord.

use std::sync::LazyLock;

use crate::{
    encode_to_vec, CallRecord, DedupEntry, RecordDecoder, SchemaError, SyncEvent, SyncRequest,
    WireFormat,
};

/// The Confluent schema id of our own CallRecord schema in the fuzzing decoders.
pub const OWN_SCHEMA_ID: u32 = 1;
/// The Confluent schema id of [`foreign_schema`].
pub const FOREIGN_SCHEMA_ID: u32 = 2;

/// A writer schema other than ours (an extra field of nested unions), so the resolution
/// path is exercised.
pub fn foreign_schema() -> String {
    let mut v: serde_json::Value = serde_json::from_str(crate::schema::CALL_RECORD_AVSC)
        .expect("the embedded CallRecord schema is JSON");
    if let Some(fields) = v["fields"].as_array_mut() {
        fields.insert(
            3,
            serde_json::json!({"name": "extra", "type": {"type": "array", "items": ["null", "string", {"type": "map", "values": "long"}]}}),
        );
    }
    v.to_string()
}

/// The decoders [`decode_value`] tries, built once.
pub struct Decoders {
    pub call_record: RecordDecoder<CallRecord>,
    pub sync_request: RecordDecoder<SyncRequest>,
    pub sync_event: RecordDecoder<SyncEvent>,
    pub dedup_entry: RecordDecoder<DedupEntry>,
}

/// Our decoders, the CallRecord one knowing [`OWN_SCHEMA_ID`] and the foreign schema (by
/// [`FOREIGN_SCHEMA_ID`] and by its single-object fingerprint).
pub fn decoders() -> &'static Decoders {
    static DECODERS: LazyLock<Decoders> = LazyLock::new(|| {
        let call_record = RecordDecoder::<CallRecord>::new();
        call_record.add_own_schema_id(OWN_SCHEMA_ID);
        let foreign = foreign_schema();
        call_record
            .add_schema_id(FOREIGN_SCHEMA_ID, &foreign)
            .expect("the foreign schema resolves to ours");
        call_record
            .add_writer_schema(&foreign)
            .expect("the foreign schema resolves to ours");
        Decoders {
            call_record,
            sync_request: RecordDecoder::new(),
            sync_event: RecordDecoder::new(),
            dedup_entry: RecordDecoder::new(),
        }
    });
    &DECODERS
}

/// A decoded CallRecord re-encodes and decodes to itself. The one value the encoder may
/// refuse is money wider than `decimal(18,4)`: the decoder accepts it by design and the
/// processor's validation sends it to the DLQ with a reason.
fn assert_round_trips(record: &CallRecord) {
    let bytes = match encode_to_vec(record, WireFormat::SingleObject) {
        Ok(bytes) => bytes,
        Err(crate::EncodeError::Decimal { .. }) => return,
        #[allow(unreachable_patterns)]
        Err(e) => panic!("a decoded record does not encode: {e}\n{record:?}"),
    };
    match decoders().call_record.decode(&bytes) {
        Ok(back) => assert_eq!(&back, record, "a decoded record changed through Avro"),
        Err(e) => panic!("a re-encoded record does not decode: {e}\n{record:?}"),
    }
}

/// `value` through every decoder, as a Kafka value of any of our topics; and, when it is
/// long enough, its datum behind the foreign schema's id (the resolution path).
pub fn decode_value(value: &[u8]) {
    let d = decoders();
    if let Ok(record) = assert_decode_call_agrees(&d.call_record, value) {
        assert_round_trips(&record);
    }
    let _ = d.sync_request.decode(value);
    let _ = d.sync_event.decode(value);
    let _ = d.dedup_entry.decode(value);
    let _ = crate::decode_call_record(value);
    let _ = crate::detect_format(value);
    if value.len() > 5 {
        let mut foreign = FOREIGN_SCHEMA_ID.to_be_bytes().to_vec();
        foreign.insert(0, 0);
        foreign.extend_from_slice(&value[5..]);
        if let Ok(record) = assert_decode_call_agrees(&d.call_record, &foreign) {
            assert_round_trips(&record);
        }
    }
}

/// Decodes `value` both ways, owned and in place ([`RecordDecoder::decode_call`], what the
/// processor uses): they must accept the same values, with the same record or the same error.
fn assert_decode_call_agrees(
    decoder: &RecordDecoder<CallRecord>,
    value: &[u8],
) -> Result<CallRecord, crate::DecodeError> {
    let decoded = decoder.decode(value);
    let in_place = decoder.decode_call(value).and_then(|c| c.into_record());
    match (&decoded, &in_place) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "decode and decode_call read different records"),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("decode gave {decoded:?}, decode_call gave {in_place:?}"),
    }
    decoded
}

/// What [`resolve_writer_schema`] came to.
#[derive(Debug)]
pub enum Resolution {
    /// The input has no NUL byte between schema and datum.
    NoDatum,
    /// The schema was refused (not Avro, or not resolvable to CallRecord).
    Schema(SchemaError),
    /// The schema was taken; the datum decoded (or not).
    Decoded(Box<Result<CallRecord, crate::DecodeError>>),
}

/// `schema NUL datum`: registers the schema as a writer schema (Confluent id 7), then decodes
/// the datum behind that id.
pub fn resolve_writer_schema(input: &[u8]) -> Resolution {
    let Some(nul) = input.iter().position(|b| *b == 0) else {
        return Resolution::NoDatum;
    };
    let Ok(schema) = std::str::from_utf8(&input[..nul]) else {
        return Resolution::NoDatum;
    };
    let decoder = RecordDecoder::<CallRecord>::new();
    if let Err(e) = decoder.add_schema_id(7, schema) {
        return Resolution::Schema(e);
    }
    let mut value = vec![0, 0, 0, 0, 7];
    value.extend_from_slice(&input[nul + 1..]);
    let decoded = decoder.decode(&value);
    if let Ok(record) = &decoded {
        assert_round_trips(record);
    }
    Resolution::Decoded(Box::new(decoded))
}

/// The stable twin of the `avro_resolution` fuzz target (`avro_decode`'s twin is the pair of
/// proptests in `tests/robustness.rs`, which call [`decode_value`]).
#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// Writer-side field types a registry could serve, resolvable to ours or not.
    fn odd_type() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            Just(json!("null")),
            Just(json!("int")),
            Just(json!("long")),
            Just(json!("float")),
            Just(json!("double")),
            Just(json!("bytes")),
            Just(json!("string")),
            Just(json!(["null", "string", "long", "bytes"])),
            Just(json!(["string", "null"])),
            Just(json!({"type": "bytes", "logicalType": "decimal", "precision": 38, "scale": 10})),
            Just(json!({"type": "bytes", "logicalType": "decimal", "precision": 1, "scale": 0})),
            Just(
                json!({"type": "fixed", "name": "F", "size": 16, "logicalType": "decimal", "precision": 30, "scale": 4})
            ),
            Just(json!({"type": "fixed", "name": "Big", "size": 2147483647})),
            Just(json!({"type": "long", "logicalType": "timestamp-millis"})),
            Just(json!({"type": "long", "logicalType": "timestamp-nanos"})),
            Just(json!({"type": "int", "logicalType": "date"})),
            Just(json!({"type": "enum", "name": "E", "symbols": ["A", "B"]})),
            Just(json!({"type": "map", "values": ["null", "string"]})),
            Just(json!({"type": "array", "items": {"type": "array", "items": "long"}})),
            Just(
                json!({"type": "record", "name": "R", "fields": [{"name": "r", "type": ["null", "R"]}]})
            ),
            Just(json!("com.example.Unknown")),
        ]
    }

    fn base() -> serde_json::Value {
        serde_json::from_str(&foreign_schema()).unwrap()
    }

    fn datum(record: &CallRecord) -> Vec<u8> {
        let mut bytes = encode_to_vec(record, WireFormat::Confluent { schema_id: 1 }).unwrap();
        bytes.drain(..5);
        bytes
    }

    fn sample() -> CallRecord {
        use crate::{CallStatus, Provider, RecordSource};
        let ts = |micros| chrono::DateTime::from_timestamp_micros(micros).unwrap();
        CallRecord {
            provider: Provider::Retreaver,
            account_id: "acct-42".into(),
            call_id: "CA1234".into(),
            version: 1_717_243_200_123_456,
            started_at: ts(1_717_243_200_000_000),
            answered_at: Some(ts(1_717_243_205_000_000)),
            ended_at: Some(ts(1_717_243_390_500_000)),
            duration_secs: Some(190),
            billable_secs: Some(185),
            caller_number: Some("+15551234567".into()),
            tracking_number: Some("+18005550100".into()),
            destination_number: None,
            campaign_id: Some("cmp-7".into()),
            campaign_name: Some("Roofing – Dallas".into()),
            publisher_id: None,
            publisher_name: None,
            buyer_id: Some("buy-9".into()),
            buyer_name: None,
            status: CallStatus::Completed,
            provider_status: Some("answered".into()),
            converted: Some(true),
            revenue: Some("45.5".parse().unwrap()),
            payout: Some("-12.3456".parse().unwrap()),
            currency: Some("USD".into()),
            recording_url: None,
            tags: [("keyword".to_string(), "roof repair".to_string())].into(),
            source: RecordSource::Webhook,
            observed_at: ts(1_717_243_400_000_001),
            provider_updated_at: Some(ts(1_717_243_200_123_456)),
            raw: Some(br#"{"id":"CA1234"}"#.to_vec()),
            present_fields: None,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn foreign_writer_schemas_resolve_or_are_refused(
            changes in proptest::collection::vec((any::<prop::sample::Index>(), odd_type()), 1..3),
            default_null in any::<bool>(),
            body in proptest::collection::vec(any::<u8>(), 0..96),
            use_sample in any::<bool>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut schema = base();
            let fields = schema["fields"].as_array_mut().unwrap();
            for (at, ty) in changes {
                let i = at.index(fields.len());
                fields[i]["type"] = ty;
                if default_null {
                    fields[i]["default"] = serde_json::Value::Null;
                }
            }
            let mut input = schema.to_string().into_bytes();
            input.push(0);
            if use_sample {
                // the datum was written with our schema: the reader must not trust it
                let d = datum(&sample());
                input.extend_from_slice(&d[..cut.index(d.len() + 1)]);
            }
            input.extend_from_slice(&body);
            let _ = resolve_writer_schema(&input);
        }

        #[test]
        fn arbitrary_schema_text_is_refused_not_a_panic(
            text in "\\PC{0,64}",
            body in proptest::collection::vec(any::<u8>(), 0..32),
        ) {
            let mut input = text.into_bytes();
            input.push(0);
            input.extend_from_slice(&body);
            let _ = resolve_writer_schema(&input);
        }
    }

    /// Writes the Avro fuzz targets' seeds (`cargo test -p callsync-schemas --lib
    /// write_fuzz_seeds -- --ignored`): every record type in both framings, and writer
    /// schema + datum pairs.
    #[test]
    #[ignore = "writes fuzz/seeds; run by hand"]
    fn write_fuzz_seeds() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
        let decode = root.join("avro_decode");
        let resolution = root.join("avro_resolution");
        std::fs::create_dir_all(&decode).unwrap();
        std::fs::create_dir_all(&resolution).unwrap();
        let record = sample();
        let mut minimal = record.clone();
        minimal.tags.clear();
        minimal.raw = None;
        minimal.revenue = None;
        minimal.payout = None;
        let write = |name: &str, bytes: &[u8]| {
            std::fs::write(decode.join(format!("seed-{name}")), bytes).unwrap();
        };
        for (tag, format) in [
            ("single-object", WireFormat::SingleObject),
            (
                "confluent",
                WireFormat::Confluent {
                    schema_id: OWN_SCHEMA_ID,
                },
            ),
        ] {
            write(
                &format!("call-record-full-{tag}"),
                &encode_to_vec(&record, format).unwrap(),
            );
            write(
                &format!("call-record-minimal-{tag}"),
                &encode_to_vec(&minimal, format).unwrap(),
            );
        }
        // the foreign schema by id: an `extra` array field after call_id
        let mut foreign = vec![0, 0, 0, 0, FOREIGN_SCHEMA_ID as u8];
        let d = datum(&record);
        foreign.extend_from_slice(&d);
        write("call-record-foreign-id", &foreign);
        for (name, schema) in [
            ("own", crate::schema::CALL_RECORD_AVSC.to_string()),
            ("foreign", foreign_schema()),
        ] {
            let mut input = schema.into_bytes();
            input.push(0);
            input.extend_from_slice(&d);
            std::fs::write(resolution.join(format!("seed-{name}")), input).unwrap();
        }
    }

    #[test]
    fn our_own_schema_as_a_writer_schema_decodes_our_datum() {
        let record = sample();
        let mut input = crate::schema::CALL_RECORD_AVSC.as_bytes().to_vec();
        input.push(0);
        input.extend_from_slice(&datum(&record));
        match resolve_writer_schema(&input) {
            Resolution::Decoded(decoded) => assert_eq!(*decoded, Ok(record)),
            other => panic!("{other:?}"),
        }
    }
}
