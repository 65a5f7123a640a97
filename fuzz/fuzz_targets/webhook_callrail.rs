//! A CallRail post-call / call-modified webhook body through its parser and the Avro encoding.
#![no_main]

use callsync_schemas::Provider;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = callsync_connectors::fuzzing::webhook(Provider::CallRail, data);
});
