//! Fuzzes the frame decoder with arbitrary bytes: it must never panic or allocate past
//! the cap, and whatever it accepts must re-encode to the same bytes.
#![no_main]

use ferry_wire::frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = frame::decode(data) {
        let again = message.encode().expect("a decoded message re-encodes");
        assert_eq!(frame::decode(&again).expect("re-encoded frame decodes"), message);
    }
});
