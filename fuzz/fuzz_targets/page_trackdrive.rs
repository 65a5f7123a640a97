//! A TrackDrive list-calls response through the page reader and the mapping to CallRecord.
#![no_main]

use callsync_schemas::Provider;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = callsync_connectors::fuzzing::provider_page(Provider::TrackDrive, data);
});
