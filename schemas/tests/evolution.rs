//! Data written with an older or newer writer schema decodes through schema resolution.

mod common;

use apache_avro::types::Value;
use callsync_schemas::schema::CALL_RECORD_AVSC;
use callsync_schemas::{AvroRecord, CallRecord, DecodeError, RecordDecoder, SchemaInfo};
use common::*;
use serde_json::json;

/// Our schema with `edit` applied to its field list.
fn variant(edit: impl FnOnce(&mut Vec<serde_json::Value>)) -> String {
    let mut v: serde_json::Value = serde_json::from_str(CALL_RECORD_AVSC).unwrap();
    edit(v["fields"].as_array_mut().unwrap());
    v.to_string()
}

fn without<'a>(fields: &'a [&'a str]) -> impl FnOnce(&mut Vec<serde_json::Value>) + 'a {
    move |f| f.retain(|x| !fields.contains(&x["name"].as_str().unwrap()))
}

/// Writes `record` with the writer schema `writer_json`, dropping fields it lacks and adding
/// `extra` values, as a producer built against that schema would.
fn write_with(writer_json: &str, record: &CallRecord, extra: Vec<(String, Value)>) -> Vec<u8> {
    let writer = apache_avro::Schema::parse_str(writer_json).unwrap();
    let names: Vec<String> = match &writer {
        apache_avro::Schema::Record(r) => r.fields.iter().map(|f| f.name.clone()).collect(),
        _ => unreachable!(),
    };
    let Value::Record(mut fields) = record.to_avro_value().unwrap() else {
        unreachable!()
    };
    fields.extend(extra);
    let ordered: Vec<(String, Value)> = names
        .iter()
        .map(|n| fields.iter().find(|(k, _)| k == n).cloned().unwrap())
        .collect();
    apache_avro::to_avro_datum(&writer, Value::Record(ordered)).unwrap()
}

fn single_object(writer_json: &str, datum: &[u8]) -> Vec<u8> {
    let mut out = SchemaInfo::parse("w", writer_json)
        .unwrap()
        .single_object_header()
        .to_vec();
    out.extend_from_slice(datum);
    out
}

fn confluent(id: u32, datum: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(datum);
    out
}

#[test]
fn older_writer_missing_fields_with_defaults() {
    // An "older" schema without provider_updated_at, raw and tags: the reader fills defaults.
    let old = variant(without(&["provider_updated_at", "raw", "tags"]));
    let record = full_record();
    let datum = write_with(&old, &record, vec![]);

    let mut expected = record.clone();
    expected.provider_updated_at = None;
    expected.raw = None;
    expected.tags.clear();

    let d = RecordDecoder::<CallRecord>::new();
    let fp = d.add_writer_schema(&old).unwrap();
    assert_ne!(fp, CallRecord::schema_info().fingerprint());
    assert_eq!(d.decode(&single_object(&old, &datum)).unwrap(), expected);

    d.add_schema_id(41, &old).unwrap();
    assert_eq!(d.decode(&confluent(41, &datum)).unwrap(), expected);

    // Without the writer schema, the error names the fingerprint.
    let fresh = RecordDecoder::<CallRecord>::new();
    let e = fresh.decode(&single_object(&old, &datum)).unwrap_err();
    assert!(
        matches!(e, DecodeError::UnknownFingerprint { fingerprint, .. } if fingerprint == fp),
        "{e}"
    );
}

#[test]
fn newer_writer_with_extra_fields() {
    // A "newer" schema with two fields we don't know, one in the middle: they are skipped.
    let new = variant(|f| {
        f.insert(
            5,
            json!({"name": "sentiment", "type": ["null", "string"], "default": null}),
        );
        f.push(json!({"name": "score", "type": "double"}));
        f.push(
            json!({"name": "labels", "type": {"type": "array", "items": "string"}, "default": []}),
        );
    });
    let record = full_record();
    let datum = write_with(
        &new,
        &record,
        vec![
            (
                "sentiment".into(),
                Value::Union(1, Box::new(Value::String("positive".into()))),
            ),
            ("score".into(), Value::Double(0.75)),
            (
                "labels".into(),
                Value::Array(vec![Value::String("a".into()), Value::String("b".into())]),
            ),
        ],
    );
    let d = RecordDecoder::<CallRecord>::new();
    d.add_schema_id(42, &new).unwrap();
    assert_eq!(d.decode(&confluent(42, &datum)).unwrap(), record);
    d.add_writer_schema(&new).unwrap();
    assert_eq!(d.decode(&single_object(&new, &datum)).unwrap(), record);

    // The minimal record (all optionals null) too.
    let datum = write_with(
        &new,
        &minimal_record(),
        vec![
            ("sentiment".into(), Value::Union(0, Box::new(Value::Null))),
            ("score".into(), Value::Double(-1.0)),
            ("labels".into(), Value::Array(vec![])),
        ],
    );
    assert_eq!(d.decode(&confluent(42, &datum)).unwrap(), minimal_record());
}

#[test]
fn writer_without_a_required_field_is_rejected() {
    let broken = variant(without(&["call_id"]));
    let d = RecordDecoder::<CallRecord>::new();
    let e = d.add_schema_id(43, &broken).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("registry id 43") && msg.contains("cannot be read as CallRecord"),
        "{msg}"
    );
    let e = d.decode(&confluent(43, &[0])).unwrap_err();
    assert!(matches!(e, DecodeError::IncompatibleSchema { .. }), "{e}");
    assert!(d.add_writer_schema(&broken).is_err());
}

#[test]
fn a_registry_copy_of_our_schema_takes_the_fast_path() {
    // A registry may return the schema reformatted (no docs): same canonical form, same
    // fingerprint, so it is read as ours.
    let compact = variant(|f| {
        for x in f.iter_mut() {
            x.as_object_mut().unwrap().remove("doc");
        }
    });
    let d = RecordDecoder::<CallRecord>::new();
    d.add_schema_id(44, &compact).unwrap();
    let bytes = callsync_schemas::encode_to_vec(
        &full_record(),
        callsync_schemas::WireFormat::Confluent { schema_id: 44 },
    )
    .unwrap();
    assert_eq!(d.decode(&bytes).unwrap(), full_record());
}

#[test]
fn resolution_path_names_the_field_of_a_corrupt_datum() {
    let new = variant(|f| f.insert(1, json!({"name": "region", "type": "string"})));
    let d = RecordDecoder::<CallRecord>::new();
    d.add_schema_id(45, &new).unwrap();
    let mut datum = write_with(
        &new,
        &minimal_record(),
        vec![("region".into(), Value::String("eu".into()))],
    );
    // provider "ringba" = 7 bytes; region's length byte follows at datum offset 7.
    datum[7] = 0x7E; // length 63, more than is left
    let e = d.decode(&confluent(45, &datum)).unwrap_err();
    assert_eq!(e.field(), Some("region"));
    assert_eq!(e.offset(), Some(5 + 7));
    assert!(e.to_string().contains("string length 63 exceeds"), "{e}");
}
