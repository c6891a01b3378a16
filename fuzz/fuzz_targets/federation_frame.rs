#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tether_proto::fuzz_harness::federation_frame(data));
