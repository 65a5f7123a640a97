//! A writer schema (as a registry would serve it) and a datum written with it: schema parsing
//! and resolution to our CallRecord.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = callsync_schemas::fuzzing::resolve_writer_schema(data);
});
