//! The decoder never panics and says what it could not read.

mod common;

use callsync_schemas::{
    encode_to_vec, CallRecord, DecodeError, DedupEntry, DetectedFormat, Problem, RecordDecoder,
    SyncEvent, SyncRequest, WireFormat,
};
use common::*;
use proptest::prelude::*;
use std::sync::LazyLock;

/// A writer schema other than ours (an extra field), so the resolution path is fuzzed too.
fn foreign_schema() -> String {
    let mut v: serde_json::Value =
        serde_json::from_str(callsync_schemas::schema::CALL_RECORD_AVSC).unwrap();
    v["fields"].as_array_mut().unwrap().insert(
        3,
        serde_json::json!({"name": "extra", "type": {"type": "array", "items": ["null", "string", {"type": "map", "values": "long"}]}}),
    );
    v.to_string()
}

static DECODER: LazyLock<RecordDecoder<CallRecord>> = LazyLock::new(|| {
    let d = RecordDecoder::<CallRecord>::new();
    d.add_own_schema_id(1);
    d.add_schema_id(2, &foreign_schema()).unwrap();
    d.add_writer_schema(&foreign_schema()).unwrap();
    d
});

fn decoder() -> &'static RecordDecoder<CallRecord> {
    &DECODER
}

fn all_decoders(bytes: &[u8], d: &RecordDecoder<CallRecord>) {
    static OTHERS: LazyLock<(
        RecordDecoder<SyncRequest>,
        RecordDecoder<SyncEvent>,
        RecordDecoder<DedupEntry>,
    )> = LazyLock::new(|| {
        (
            RecordDecoder::new(),
            RecordDecoder::new(),
            RecordDecoder::new(),
        )
    });
    decode_call_agrees(bytes, d);
    let _ = OTHERS.0.decode(bytes);
    let _ = OTHERS.1.decode(bytes);
    let _ = OTHERS.2.decode(bytes);
    let _ = callsync_schemas::decode_call_record(bytes);
    // the `avro_decode` fuzz target's body: the same decoders plus the round-trip check
    callsync_schemas::fuzzing::decode_value(bytes);
}

/// `decode_call` (the in-place read the processor uses) accepts exactly what `decode` accepts,
/// with the same record or the same error.
fn decode_call_agrees(bytes: &[u8], d: &RecordDecoder<CallRecord>) {
    let decoded = d.decode(bytes);
    let called = d.decode_call(bytes);
    match (&decoded, called) {
        (Ok(record), Ok(call)) => {
            assert_eq!(
                (
                    call.provider(),
                    call.account_id(),
                    call.call_id(),
                    call.version()
                ),
                (
                    record.provider,
                    record.account_id.as_str(),
                    record.call_id.as_str(),
                    record.version
                )
            );
            assert_eq!(&call.into_record().unwrap(), record);
        }
        (Err(e), Err(c)) => assert_eq!(e.to_string(), c.to_string()),
        (decoded, called) => panic!("decode gave {decoded:?}, decode_call gave {called:?}"),
    }
}

fn headers() -> &'static [Vec<u8>] {
    static HEADERS: LazyLock<Vec<Vec<u8>>> = LazyLock::new(make_headers);
    &HEADERS
}

fn make_headers() -> Vec<Vec<u8>> {
    let foreign_fp = callsync_schemas::SchemaInfo::parse("x", &foreign_schema())
        .unwrap()
        .fingerprint();
    let mut foreign = vec![0xC3, 0x01];
    foreign.extend_from_slice(&foreign_fp.to_le_bytes());
    vec![
        vec![],
        vec![0, 0, 0, 0, 1],
        vec![0, 0, 0, 0, 2],
        callsync_schemas::call_record_schema()
            .single_object_header()
            .to_vec(),
        callsync_schemas::call_record_revisions()[0]
            .info()
            .single_object_header()
            .to_vec(),
        callsync_schemas::dedup_entry_schema()
            .single_object_header()
            .to_vec(),
        callsync_schemas::sync_event_schema()
            .single_object_header()
            .to_vec(),
        callsync_schemas::sync_request_schema()
            .single_object_header()
            .to_vec(),
        foreign,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(header in 0usize..9, body in proptest::collection::vec(any::<u8>(), 0..200)) {
        let d = decoder();
        let mut bytes = headers()[header].clone();
        bytes.extend_from_slice(&body);
        all_decoders(&bytes, d);
    }

    #[test]
    fn mutated_encodings_never_panic(
        record in call_record(),
        confluent in any::<bool>(),
        mutations in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let d = decoder();
        let format = if confluent { WireFormat::Confluent { schema_id: 1 } } else { WireFormat::SingleObject };
        let mut bytes = encode_to_vec(&record, format).unwrap();
        for (idx, byte, op) in mutations {
            if bytes.is_empty() { break; }
            let i = idx.index(bytes.len());
            match op {
                0 => bytes[i] = byte,
                1 => bytes[i] ^= 1 << (byte % 8),
                2 => bytes.insert(i, byte),
                _ => { bytes.remove(i); }
            }
        }
        all_decoders(&bytes, d);
        // The same mutated datum behind the foreign schema's id: the resolution path.
        if bytes.len() > 5 {
            let mut foreign = vec![0, 0, 0, 0, 2];
            foreign.extend_from_slice(&bytes[5..]);
            decode_call_agrees(&foreign, d);
        }
        let n = cut.index(bytes.len() + 1);
        all_decoders(&bytes[..n], d);
    }
}

#[test]
fn huge_length_prefix_does_not_allocate() {
    // A string length of 2^62 after a valid header: rejected by the length check.
    let mut bytes = callsync_schemas::call_record_schema()
        .single_object_header()
        .to_vec();
    bytes.extend_from_slice(&[0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]);
    let e = decoder().decode(&bytes).unwrap_err();
    assert_eq!(e.field(), Some("provider"));
    assert!(e.to_string().contains("exceeds the 0 bytes left"), "{e}");
    // Same through the resolution path (apache-avro would otherwise try to allocate it).
    let mut foreign = vec![0, 0, 0, 0, 2];
    foreign.extend_from_slice(&bytes[10..]);
    let e = decoder().decode(&foreign).unwrap_err();
    assert!(e.to_string().contains("field provider at byte 5"), "{e}");
}

#[test]
fn errors_say_what_could_not_be_read() {
    let d = decoder();
    let msg = |b: &[u8]| d.decode(b).unwrap_err().to_string();

    assert!(msg(b"").starts_with("empty value"), "{}", msg(b""));
    let m = msg(br#"{"provider":"retreaver"}"#);
    assert!(
        m.contains("unknown magic byte 0x7b (looks like JSON)"),
        "{m}"
    );
    let m = msg(&[0xC3, 0x02, 1]);
    assert!(m.contains("second marker byte is 0x02"), "{m}");
    let m = msg(&[0xC3, 0x01, 1, 2]);
    assert!(
        m.contains("header truncated") && m.contains("4 bytes"),
        "{m}"
    );
    let m = msg(&[0x00, 0, 0]);
    assert!(
        m.contains("Confluent") && m.contains("header truncated"),
        "{m}"
    );
    let m = msg(&[0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 0]);
    assert!(m.contains("Avro single-object, fingerprint 0x0807060504030201 is not a known schema for CallRecord"), "{m}");
    let m = msg(&[0x00, 0, 0, 0, 99, 0]);
    assert!(
        m.contains("Confluent, schema id 99 is not a known schema for CallRecord"),
        "{m}"
    );

    // Field, offset, problem: a union branch out of range in `revenue`.
    let mut r = minimal_record();
    r.revenue = Some("1".parse().unwrap());
    let mut bytes = encode_to_vec(&r, WireFormat::Confluent { schema_id: 1 }).unwrap();
    let good = d.decode(&bytes).unwrap();
    assert_eq!(good, r);
    // Locate the revenue branch: the byte after `converted` (null = 0x00). Encode a marker
    // record instead of computing offsets by hand.
    let prefix_len = {
        let mut no_money = r.clone();
        no_money.revenue = None;
        let b = encode_to_vec(&no_money, WireFormat::Confluent { schema_id: 1 }).unwrap();
        // Everything up to revenue is identical; find the first differing byte.
        b.iter()
            .zip(bytes.iter())
            .position(|(a, b)| a != b)
            .unwrap()
    };
    bytes[prefix_len] = 14; // zigzag(7)
    let e = d.decode(&bytes).unwrap_err();
    assert_eq!(e.field(), Some("revenue"));
    assert_eq!(e.offset(), Some(prefix_len));
    assert_eq!(
        e.to_string(),
        format!("Confluent (schema id 1) CallRecord: field revenue at byte {prefix_len}: union branch 7 out of range 0..=1")
    );
    assert!(matches!(
        e,
        DecodeError::Datum {
            format: DetectedFormat::Confluent { schema_id: 1 },
            ..
        }
    ));

    // An unknown provider string.
    let mut bytes = encode_to_vec(&minimal_record(), WireFormat::SingleObject).unwrap();
    bytes[11..17].copy_from_slice(b"RINGBA");
    let e = d.decode(&bytes).unwrap_err();
    assert!(
        e.to_string()
            .contains("field provider at byte 10: unknown provider \"RINGBA\""),
        "{e}"
    );

    // Trailing bytes.
    let mut bytes = encode_to_vec(&minimal_record(), WireFormat::SingleObject).unwrap();
    bytes.push(0);
    let e = d.decode(&bytes).unwrap_err();
    assert!(
        matches!(e, DecodeError::TrailingBytes { count: 1, .. }),
        "{e}"
    );

    // Truncated datum.
    let bytes = encode_to_vec(&full_record(), WireFormat::SingleObject).unwrap();
    let e = d.decode(&bytes[..bytes.len() - 3]).unwrap_err();
    assert_eq!(e.field(), Some("raw"));
    assert!(e.to_string().contains("exceeds"), "{e}");

    // Invalid UTF-8.
    let mut bytes = encode_to_vec(&minimal_record(), WireFormat::SingleObject).unwrap();
    // provider "ringba" at 10..17, account_id "" at 17, call_id "x" at 18..20.
    bytes[19] = 0xFF;
    let e = d.decode(&bytes).unwrap_err();
    assert_eq!(e.field(), Some("call_id"));
    assert!(
        matches!(e, DecodeError::Datum { ref error, .. } if matches!(error.problem, Problem::InvalidUtf8 { .. })),
        "{e}"
    );
}

#[test]
fn unrelated_writer_schemas_are_refused() {
    let schema = r#"{"type":"record","name":"Other","fields":[{"name":"a","type":"long"}]}"#;
    let d = RecordDecoder::<CallRecord>::new();
    let e = d.add_schema_id(5, schema).unwrap_err();
    assert!(
        e.to_string().contains("registry id 5")
            && e.to_string().contains("cannot be read as CallRecord"),
        "{e}"
    );
    let e = d.decode(&[0, 0, 0, 0, 5, 0]).unwrap_err();
    assert!(matches!(e, DecodeError::IncompatibleSchema { .. }), "{e}");
}

#[test]
fn deep_nesting_is_refused() {
    // Our schema plus a recursive field: a datum nesting it 1000 levels deep is refused before
    // apache-avro recurses into it.
    let mut v: serde_json::Value =
        serde_json::from_str(callsync_schemas::schema::CALL_RECORD_AVSC).unwrap();
    v["fields"].as_array_mut().unwrap().insert(
        0,
        serde_json::json!({"name": "tree", "type": ["null", {"type": "record", "name": "Node",
            "fields": [{"name": "next", "type": ["null", "Node"]}]}], "default": null}),
    );
    let d = RecordDecoder::<CallRecord>::new();
    d.add_schema_id(6, &v.to_string()).unwrap();
    let mut bytes = vec![0, 0, 0, 0, 6];
    bytes.extend(std::iter::repeat_n(2u8, 1000));
    bytes.push(0);
    bytes.extend_from_slice(
        &encode_to_vec(&minimal_record(), WireFormat::Confluent { schema_id: 0 }).unwrap()[5..],
    );
    let e = d.decode(&bytes).unwrap_err();
    assert!(
        matches!(&e, DecodeError::Datum { error, .. } if matches!(error.problem, Problem::TooDeep(_))),
        "{e}"
    );
    assert!(e.to_string().contains("field tree.next.next"), "{e}");
    // A shallow one decodes.
    let mut bytes = vec![0, 0, 0, 0, 6, 2, 2, 0];
    bytes.extend_from_slice(
        &encode_to_vec(&minimal_record(), WireFormat::Confluent { schema_id: 0 }).unwrap()[5..],
    );
    assert_eq!(d.decode(&bytes).unwrap(), minimal_record());
}
