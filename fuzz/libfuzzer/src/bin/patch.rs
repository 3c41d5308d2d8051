//! libFuzzer entry of the `patch` target (kpatch_fuzz::patch).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kpatch_fuzz::patch(data));
