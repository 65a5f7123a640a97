//! A TOML config file plus `CALLSYNC__*`-style environment overrides through the loader.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = callsync::fuzzing::load_config(data);
});
