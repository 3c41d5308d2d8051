//! libFuzzer entry of the `system_map` target (kpatch_fuzz::system_map).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kpatch_fuzz::system_map(data));
