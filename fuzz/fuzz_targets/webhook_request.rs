//! A whole webhook request (auth method, provider, headers, query, body) through the
//! receiver's signature check, parser and encoder.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = callsync::fuzzing::webhook_request(data);
});
