//! Partial records (`present_fields`) on the wire, their content fingerprint, and the schema
//! revisions that keep older readers and writers working.

mod common;

use apache_avro::types::Value;
use callsync_schemas::{
    call_record_revisions, decode_call_record, encode_to_vec, AvroRecord, CallField, CallRecord,
    CallStatus, ContentFingerprint, DecodeError, DecodedCall, FieldSet, Precedence, RecordDecoder,
    WireFormat,
};
use common::*;
use proptest::prelude::*;

fn revenue_only() -> FieldSet {
    FieldSet::EMPTY.with(CallField::Revenue)
}

#[test]
fn a_partial_record_lists_every_field_it_carries_by_name() {
    let record = full_record().into_partial(revenue_only().with(CallField::Status));
    let Value::Record(fields) = record.to_avro_value().unwrap() else {
        panic!("a record")
    };
    let (_, present) = fields.last().unwrap();
    let names: Vec<String> = match present {
        Value::Union(1, inner) => match &**inner {
            Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => panic!("{other:?}"),
                })
                .collect(),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    assert_eq!(
        names,
        [
            "provider",
            "account_id",
            "call_id",
            "version",
            "status",
            "revenue",
            "source",
            "observed_at"
        ]
    );
    // apache-avro reads our bytes as the same value
    let bytes = encode_to_vec(&record, WireFormat::Confluent { schema_id: 1 }).unwrap();
    let schema = CallRecord::schema_info().schema();
    let theirs = apache_avro::from_avro_datum(schema, &mut &bytes[5..], None).unwrap();
    assert_eq!(CallRecord::from_avro_value(theirs).unwrap(), record);
}

#[test]
fn into_partial_resets_what_it_does_not_carry_and_all_fields_is_complete() {
    let full = full_record();
    let partial = full.clone().into_partial(revenue_only());
    assert_eq!(partial.revenue, full.revenue);
    assert_eq!(partial.started_at, chrono::DateTime::UNIX_EPOCH);
    assert_eq!(partial.status, CallStatus::Unknown);
    assert!(partial.tags.is_empty() && partial.raw.is_none() && partial.currency.is_none());
    assert_eq!(
        (&partial.call_id, partial.version, partial.observed_at),
        (&full.call_id, full.version, full.observed_at),
        "identity and bookkeeping are always carried"
    );
    assert!(partial.is_partial() && partial.carries(CallField::Revenue));
    assert!(!partial.carries(CallField::Payout));
    assert!(full.carries(CallField::Payout));
    assert_eq!(full.clone().into_partial(FieldSet::ALL), full);
}

#[test]
fn apply_merges_a_partial_record_onto_a_complete_one() {
    let mut row = full_record();
    let mut update = full_record();
    update.version += 1;
    update.revenue = Some("99.5".parse().unwrap());
    update.campaign_name = Some("changed, but not carried".into());
    let update = update.into_partial(revenue_only());
    row.apply(&update);
    let mut want = full_record();
    want.version += 1;
    want.revenue = Some("99.5".parse().unwrap());
    assert_eq!(row, want, "only revenue and the bookkeeping change");
    // a complete record replaces everything
    let mut row2 = row.clone();
    row2.apply(&minimal_record());
    assert_eq!(row2, minimal_record());
}

/// An unknown name in present_fields is a decode error naming the field and the name.
#[test]
fn unknown_field_names_are_decode_errors() {
    let record = full_record().into_partial(revenue_only());
    let Value::Record(mut fields) = record.to_avro_value().unwrap() else {
        panic!("a record")
    };
    fields.last_mut().unwrap().1 = Value::Union(
        1,
        Box::new(Value::Array(vec![
            Value::String("revenue".into()),
            Value::String("revenu".into()),
        ])),
    );
    let datum =
        apache_avro::to_avro_datum(CallRecord::schema_info().schema(), Value::Record(fields))
            .unwrap();
    let mut bytes = CallRecord::schema_info().single_object_header().to_vec();
    bytes.extend_from_slice(&datum);
    let e = decode_call_record(&bytes).unwrap_err();
    assert_eq!(e.field(), Some("present_fields"), "{e}");
    assert!(e.to_string().contains("\"revenu\""), "{e}");
    // the in-place path says the same
    let e = callsync_schemas::call_record_decoder()
        .decode_call(&bytes)
        .unwrap_err();
    assert!(matches!(e, DecodeError::Datum { .. }), "{e}");
    assert_eq!(e.field(), Some("present_fields"));
}

/// Complete records keep the bytes readers built before `present_fields` know: the first
/// revision's fingerprint and datum. Data written by such older writers decodes by the fast
/// path (a view). (Partial records are new: an older reader resolves them only through a
/// registry, which serves the current schema for their id.)
#[test]
fn older_readers_and_writers_keep_working() {
    let v1 = call_record_revisions()[0].info();
    let full = full_record();
    let single = encode_to_vec(&full, WireFormat::SingleObject).unwrap();
    assert_eq!(&single[..10], &v1.single_object_header());
    // an older reader: apache-avro with the first revision's schema
    let theirs = apache_avro::from_avro_datum(v1.schema(), &mut &single[10..], None).unwrap();
    let mut expected = full.to_avro_value().unwrap();
    if let Value::Record(fields) = &mut expected {
        fields.pop();
    }
    assert_eq!(theirs, expected);
    // an older writer's value is read in place
    match callsync_schemas::call_record_decoder()
        .decode_call(&single)
        .unwrap()
    {
        DecodedCall::View { view, .. } => assert!(view.present_fields.is_none()),
        DecodedCall::Owned(_) => panic!("the first revision takes the fast path"),
    }
    // ...also when its registry id names the first revision
    let d = RecordDecoder::<CallRecord>::new();
    d.add_schema_id(3, v1.json()).unwrap();
    let mut confluent = vec![0, 0, 0, 0, 3];
    confluent.extend_from_slice(&single[10..]);
    assert_eq!(d.decode(&confluent).unwrap(), full);
    assert!(matches!(
        d.decode_call(&confluent).unwrap(),
        DecodedCall::View { .. }
    ));
}

#[test]
fn a_partial_record_fingerprints_only_what_it_carries_and_its_set() {
    let full = full_record();
    let a = full.clone().into_partial(revenue_only());
    let mut other = full_record();
    other.campaign_name = Some("another".into());
    other.tags.clear();
    let b = other.into_partial(revenue_only());
    assert_eq!(ContentFingerprint::of(&a), ContentFingerprint::of(&b));
    let mut c = a.clone();
    c.revenue = Some("1".parse().unwrap());
    assert_ne!(ContentFingerprint::of(&a), ContentFingerprint::of(&c));
    // the same values with another set, or as a complete record, hash differently
    let d = full
        .clone()
        .into_partial(revenue_only().with(CallField::Raw));
    assert_ne!(ContentFingerprint::of(&a), ContentFingerprint::of(&d));
    assert_ne!(ContentFingerprint::of(&a), ContentFingerprint::of(&full));
    // fields left out of every fingerprint stay out of a partial one
    let mut e = a.clone();
    e.version += 5;
    e.observed_at = ts(1);
    assert_eq!(ContentFingerprint::of(&a), ContentFingerprint::of(&e));
}

#[test]
fn precedence_orders_by_version_then_signed_fingerprint() {
    let low = ContentFingerprint::from_i64(-5);
    let high = ContentFingerprint::from_i64(7);
    assert!(Precedence::new(1, high) < Precedence::new(2, low));
    assert!(Precedence::new(2, low) < Precedence::new(2, high));
    assert!(Precedence::new(2, ContentFingerprint::UNKNOWN) < Precedence::new(2, low));
    assert_eq!(ContentFingerprint::UNKNOWN.as_i64(), i64::MIN);
    let fp = ContentFingerprint::of(&full_record());
    assert_eq!(ContentFingerprint::from_i64(fp.as_i64()), fp);
    assert_eq!(
        ContentFingerprint::from_u128(u128::from(fp.bits()) | 7 << 64),
        fp
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The fingerprint of a record read in place is the fingerprint of the owned record.
    #[test]
    fn view_and_record_fingerprints_agree(record in call_record(), canonical in any::<bool>()) {
        let record = match (canonical, record.present_fields) {
            (true, Some(set)) => record.into_partial(set),
            _ => record,
        };
        for format in [WireFormat::SingleObject, WireFormat::Confluent { schema_id: 1 }] {
            let bytes = encode_to_vec(&record, format).unwrap();
            let d = RecordDecoder::<CallRecord>::new();
            d.add_own_schema_id(1);
            let call = d.decode_call(&bytes).unwrap();
            let in_place = matches!(call, DecodedCall::View { .. });
            prop_assert!(in_place);
            prop_assert_eq!(call.content_fingerprint(), Some(ContentFingerprint::of(&record)));
        }
    }
}
