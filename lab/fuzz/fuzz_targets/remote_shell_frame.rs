//! The remote shell's client reads frames from the network: any bytes are frames or an
//! error, never a panic or an allocation beyond the frame limit; what parses re-encodes to
//! the bytes it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skein_lab::remote_shell::read_frame;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some(frame)) = read_frame(&mut rest) {
        let consumed = data.len() - rest.len();
        let encoded = frame.encode();
        assert!(encoded.len() <= consumed, "a frame re-encodes to what it was read from");
    }
});
