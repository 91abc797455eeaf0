#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herd_gateway::fuzz_targets::chat_request(data));
