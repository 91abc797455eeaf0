#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herd_cluster::fuzz_targets::tunnel_preamble(data));
