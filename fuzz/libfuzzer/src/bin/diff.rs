//! libFuzzer entry of the `diff` target (kpatch_fuzz::diff).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kpatch_fuzz::diff(data));
