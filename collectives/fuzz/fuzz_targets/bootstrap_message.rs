//! Bootstrap messages arrive from anyone who can reach a rank's port: decoding must never
//! panic, and whatever decodes must encode back to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skein_collectives::wire::BootstrapMessage;

fuzz_target!(|data: &[u8]| {
    if data.len() >= 4 {
        let _ = BootstrapMessage::check_length_prefix([data[0], data[1], data[2], data[3]]);
    }
    if let Ok(m) = BootstrapMessage::decode_body(data) {
        let again = BootstrapMessage::decode_body(&m.encode_body()).expect("re-decode");
        assert_eq!(again, m);
    }
});
