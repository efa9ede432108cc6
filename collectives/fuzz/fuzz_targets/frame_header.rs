//! Frame headers come from peers: decoding must never panic, and a decoded header must
//! encode back to the very same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skein_collectives::wire::FrameHeader;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = FrameHeader::decode(data) {
        assert_eq!(&h.encode()[..], data);
        let _ = h.to_string();
    }
});
