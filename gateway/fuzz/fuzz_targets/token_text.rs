#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herd_engines::fuzz_targets::token_text(data));
