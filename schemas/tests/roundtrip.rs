//! Every record round-trips through both wire formats, and our bytes agree with apache-avro's
//! in both directions.

mod common;

use apache_avro::types::Value;
use callsync_schemas::{
    encode, encode_to_vec, AvroRecord, CallRecord, DedupEntry, RecordDecoder, RecordEncoder,
    SyncEvent, SyncRequest, WireFormat,
};
use common::*;
use proptest::prelude::*;

/// Encodes `record` both ways, decodes it back, and cross-checks the datum with apache-avro.
fn check<T: AvroRecord + PartialEq + std::fmt::Debug>(record: &T, bytes_must_match: bool) {
    let decoder = RecordDecoder::<T>::new();
    decoder.add_own_schema_id(17);

    let single = encode_to_vec(record, WireFormat::SingleObject).unwrap();
    // a record an earlier revision of the schema holds is written with that revision
    let revision = record.single_object_revision();
    let header = revision.map_or(T::schema_info().single_object_header(), |r| {
        r.info().single_object_header()
    });
    assert_eq!(&single[..10], &header);
    assert_eq!(&decoder.decode(&single).unwrap(), record);

    let mut confluent = b"prefix".to_vec();
    encode(
        record,
        WireFormat::Confluent { schema_id: 17 },
        &mut confluent,
    )
    .unwrap();
    let confluent = &confluent[6..];
    assert_eq!(&confluent[..5], &[0, 0, 0, 0, 17]);
    assert_eq!(&decoder.decode(confluent).unwrap(), record);
    let datum = &confluent[5..];
    if revision.is_none() {
        assert_eq!(&single[10..], datum, "same datum in both formats");
    } else {
        // CallRecord's first revision: the datum without the trailing null of present_fields
        assert_eq!(&single[10..], &datum[..datum.len() - 1]);
        assert_eq!(datum.last(), Some(&0));
    }

    // apache-avro reads our datum as the same value...
    let schema = T::schema_info().schema();
    let theirs = apache_avro::from_avro_datum(schema, &mut &datum[..], None).unwrap();
    let ours = record.to_avro_value().unwrap();
    assert_eq!(theirs, ours);
    assert_eq!(&T::from_avro_value(theirs).unwrap(), record);

    // ...and we read apache-avro's datum.
    let their_datum = apache_avro::to_avro_datum(schema, ours).unwrap();
    if bytes_must_match {
        assert_eq!(hex::encode(&their_datum), hex::encode(datum));
    }
    let mut framed = T::schema_info().single_object_header().to_vec();
    framed.extend_from_slice(&their_datum);
    assert_eq!(&decoder.decode(&framed).unwrap(), record);
}

#[test]
fn fixed_records_roundtrip() {
    check(&full_record(), true);
    check(&minimal_record(), true);
}

#[test]
fn record_encoder_reuses_its_buffer() {
    let mut enc = RecordEncoder::<CallRecord>::new(WireFormat::SingleObject);
    let a = enc.encode(&full_record()).unwrap().to_vec();
    let b = enc.encode(&minimal_record()).unwrap().to_vec();
    assert_eq!(
        a,
        encode_to_vec(&full_record(), WireFormat::SingleObject).unwrap()
    );
    assert_eq!(
        b,
        encode_to_vec(&minimal_record(), WireFormat::SingleObject).unwrap()
    );
    let mut out = vec![1, 2, 3];
    enc.encode_into(&minimal_record(), &mut out).unwrap();
    assert_eq!(&out[3..], &b[..]);
}

#[test]
fn sub_microsecond_precision_is_truncated() {
    let mut r = minimal_record();
    r.started_at = chrono::DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap();
    r.observed_at = chrono::DateTime::from_timestamp(-1, 999_999_999).unwrap();
    let back =
        callsync_schemas::decode_call_record(&encode_to_vec(&r, WireFormat::SingleObject).unwrap())
            .unwrap();
    assert_eq!(
        back.started_at,
        chrono::DateTime::from_timestamp(1_700_000_000, 123_456_000).unwrap()
    );
    assert_eq!(
        back.observed_at,
        chrono::DateTime::from_timestamp(-1, 999_999_000).unwrap()
    );
}

#[test]
fn decimals_outside_18_4_are_encode_errors() {
    let mut out = vec![9u8];
    for (value, field) in [
        ("0.00001", "revenue"),
        ("100000000000000", "payout"),
        ("-123456789012345.5", "payout"),
    ] {
        let mut r = minimal_record();
        if field == "revenue" {
            r.revenue = Some(value.parse().unwrap());
        } else {
            r.payout = Some(value.parse().unwrap());
        }
        let e = encode(&r, WireFormat::SingleObject, &mut out).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(field) && msg.contains(value), "{msg}");
        assert_eq!(out, [9u8], "buffer restored after a failed encode");
        assert!(r.to_avro_value().is_err());
    }
    // Exact rescale: extra zero digits are fine.
    let mut r = minimal_record();
    r.revenue = Some("1.230000000".parse().unwrap());
    let back =
        callsync_schemas::decode_call_record(&encode_to_vec(&r, WireFormat::SingleObject).unwrap())
            .unwrap();
    assert_eq!(back.revenue, Some("1.23".parse().unwrap()));
    assert_eq!(back.revenue.unwrap().scale(), 4);
}

#[test]
fn nan_rate_roundtrips_bitwise() {
    let ev = SyncEvent {
        sync_id: "s".into(),
        provider: callsync_schemas::Provider::Invoca,
        account_id: "a".into(),
        mode: callsync_schemas::SyncMode::Full,
        kind: callsync_schemas::SyncEventKind::Progress,
        records: 1000,
        pages: 10,
        rate_per_sec: f64::NAN,
        eta_secs: None,
        error: None,
        at: ts(5),
    };
    let d = RecordDecoder::<SyncEvent>::new();
    let back = d
        .decode(&encode_to_vec(&ev, WireFormat::SingleObject).unwrap())
        .unwrap();
    assert!(back.rate_per_sec.is_nan());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn call_records_roundtrip(record in call_record()) {
        // apache-avro writes maps from a HashMap: byte order of 2+ tags differs, values don't.
        let single_tag = record.tags.len() <= 1;
        check(&record, single_tag);
    }

    #[test]
    fn sync_requests_roundtrip(record in sync_request()) {
        check(&record, true);
    }

    #[test]
    fn sync_events_roundtrip(record in sync_event()) {
        check(&record, true);
    }

    #[test]
    fn dedup_entries_roundtrip(record in dedup_entry()) {
        check(&record, true);
    }
}

#[test]
fn dedup_entry_is_fixed_16_big_endian() {
    let e = DedupEntry {
        fingerprint: 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10,
        version: 1,
        seen_at: ts(0),
    };
    let bytes = encode_to_vec(&e, WireFormat::Confluent { schema_id: 1 }).unwrap();
    assert_eq!(
        hex::encode(&bytes),
        "0000000001".to_owned() + "0102030405060708090a0b0c0d0e0f10" + "02" + "00"
    );
    match e.to_avro_value().unwrap() {
        Value::Record(f) => assert_eq!(f[0].1, Value::Fixed(16, (1..=16).collect())),
        v => panic!("{v:?}"),
    }
}

#[test]
fn sync_request_full() {
    let r = SyncRequest {
        id: "retreaver/acct/full/2024-06-01T02:00".into(),
        provider: callsync_schemas::Provider::Retreaver,
        account_id: "acct".into(),
        mode: callsync_schemas::SyncMode::Backfill,
        window_start: Some(ts(-5)),
        window_end: Some(ts(5)),
        requested_at: ts(7),
        requested_by: "scheduler".into(),
        attempt: 3,
        not_before: Some(ts(9)),
    };
    check(&r, true);
}
