//! libFuzzer entry of the `elf` target (kpatch_fuzz::elf).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kpatch_fuzz::elf(data));
