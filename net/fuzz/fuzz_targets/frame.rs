//! Every decoder of client and server frames, on arbitrary bytes: none may panic, hang or
//! allocate past the input, and decoded messages must survive a re-encode.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tim_net::testsuite::exercise_decoders(data));
