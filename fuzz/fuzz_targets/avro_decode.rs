//! Any bytes as a Kafka value: framing detection (Confluent, single-object), every record
//! type's decoder, and resolution from a foreign writer schema.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    callsync_schemas::fuzzing::decode_value(data);
});
