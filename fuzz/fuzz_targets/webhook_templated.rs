//! A templated webhook body (first byte: the provider) through its parser and the Avro encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((first, body)) = data.split_first() {
        let provider = callsync_connectors::fuzzing::provider_of(*first);
        let _ = callsync_connectors::fuzzing::webhook(provider, body);
    }
});
