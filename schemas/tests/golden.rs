//! The exact bytes of one fully populated CallRecord, in both wire formats. A change here is a
//! wire-format change: every consumer of `calls` sees it.

mod common;

use callsync_schemas::{
    call_record_revisions, call_record_schema, encode_to_vec, CallField, CallRecord,
    ContentFingerprint, FieldSet, RecordDecoder, WireFormat,
};
use common::full_record;

/// CRC-64-AVRO of the Parsing Canonical Form of call_record.avsc's first revision (before
/// `present_fields`), as Java computes it: complete records are still written with it.
const FINGERPRINT: u64 = 0xbd76_5dae_1315_6738;
/// Cross-checked with Python's `avro` 1.12: it reads this datum as the same record and
/// re-encodes it to the same bytes.
const SINGLE_OBJECT_HEX: &str = concat!(
    "c30138671513ae5d76bd127265747265617665720e616363742d34320c43413132333480c9fdeedaf48c0680",
    "c0eeeedaf48c060280edd0f3daf48c0602c0f2c4a4dcf48c0602fc0202f20202182b31353535313233343536",
    "3702182b313830303535353031303002182b3135353537363534333231020a636d702d370224526f6f66696e",
    "6720e280932044616c6c6173020a7075622d33021441636d65204d65646961020a6275792d39021442657374",
    "20526f6f667312636f6d706c657465640210616e7377657265640201020606f1580206fe1dc0020655534402",
    "3c68747470733a2f2f7265632e6578616d706c652f4341313233342e6d7033020e6b6579776f726416726f6f",
    "6620726570616972000e776562686f6f6b82c8ccaddcf48c060280c9fdeedaf48c06021e7b226964223a2243",
    "4131323334227d"
);
/// Schema id 0x01020304: the current schema's datum, ending in the null of `present_fields`.
const CONFLUENT_HEX: &str = concat!(
    "0001020304127265747265617665720e616363742d34320c43413132333480c9fdeedaf48c0680c0eeeedaf4",
    "8c060280edd0f3daf48c0602c0f2c4a4dcf48c0602fc0202f20202182b313535353132333435363702182b31",
    "3830303535353031303002182b3135353537363534333231020a636d702d370224526f6f66696e6720e28093",
    "2044616c6c6173020a7075622d33021441636d65204d65646961020a6275792d3902144265737420526f6f66",
    "7312636f6d706c657465640210616e7377657265640201020606f1580206fe1dc00206555344023c68747470",
    "733a2f2f7265632e6578616d706c652f4341313233342e6d7033020e6b6579776f726416726f6f6620726570",
    "616972000e776562686f6f6b82c8ccaddcf48c060280c9fdeedaf48c06021e7b226964223a22434131323334",
    "227d00"
);

/// The current schema's fingerprint (with `present_fields`): partial records carry it.
const CURRENT_FINGERPRINT: u64 = 0x73e7791c077b5a60;

/// The content fingerprint of the golden record: the processor's dedup state and the sink's
/// `fingerprint` column hold these bits, so a change makes every stored version look changed.
const CONTENT_FINGERPRINT: u64 = 0xd86f6361798fdaba;

#[test]
fn golden_content_fingerprints() {
    let record = full_record();
    assert_eq!(
        ContentFingerprint::of(&record).bits(),
        CONTENT_FINGERPRINT,
        "content fingerprint changed"
    );
    let partial = record.into_partial(FieldSet::EMPTY.with(CallField::Revenue));
    assert_eq!(
        ContentFingerprint::of(&partial).bits(),
        PARTIAL_CONTENT_FINGERPRINT,
        "content fingerprint of a partial record changed"
    );
}

const PARTIAL_CONTENT_FINGERPRINT: u64 = 0x62b68803b7b67cf1;

/// A partial record in single-object encoding: the current schema's fingerprint and the list
/// of carried field names at the end.
#[test]
fn golden_partial_bytes() {
    let record = full_record().into_partial(
        FieldSet::EMPTY
            .with(CallField::Revenue)
            .with(CallField::Currency),
    );
    let single = hex::encode(encode_to_vec(&record, WireFormat::SingleObject).unwrap());
    assert_eq!(single, PARTIAL_SINGLE_OBJECT_HEX);
    let d = RecordDecoder::<CallRecord>::new();
    assert_eq!(
        d.decode(&hex::decode(PARTIAL_SINGLE_OBJECT_HEX).unwrap())
            .unwrap(),
        record
    );
}

const PARTIAL_SINGLE_OBJECT_HEX: &str = concat!(
    "c301605a7b071c79e773127265747265617665720e616363742d34320c43413132333480c9fdeedaf48c0600",
    "000000000000000000000000000e756e6b6e6f776e0000020606f15800020655534400000e776562686f6f6b",
    "82c8ccaddcf48c06000002101070726f7669646572146163636f756e745f69640e63616c6c5f69640e766572",
    "73696f6e0e726576656e75651063757272656e63790c736f75726365166f627365727665645f617400",
);

#[test]
fn golden_bytes() {
    let record = full_record();
    let single = hex::encode(encode_to_vec(&record, WireFormat::SingleObject).unwrap());
    let confluent = hex::encode(
        encode_to_vec(
            &record,
            WireFormat::Confluent {
                schema_id: 0x0102_0304,
            },
        )
        .unwrap(),
    );
    assert_eq!(
        call_record_revisions()[0].info().fingerprint(),
        FINGERPRINT,
        "the first revision's fingerprint changed"
    );
    assert_eq!(
        call_record_schema().fingerprint(),
        CURRENT_FINGERPRINT,
        "schema fingerprint changed"
    );
    assert_eq!(single, SINGLE_OBJECT_HEX);
    assert_eq!(confluent, CONFLUENT_HEX);

    let d = RecordDecoder::<CallRecord>::new();
    d.add_own_schema_id(0x0102_0304);
    assert_eq!(
        d.decode(&hex::decode(SINGLE_OBJECT_HEX).unwrap()).unwrap(),
        record
    );
    assert_eq!(
        d.decode(&hex::decode(CONFLUENT_HEX).unwrap()).unwrap(),
        record
    );
}
