#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tether_proto::fuzz_harness::dr_journal(data));
