//! The rtnetlink DCB reply parser on arbitrary bytes: a state or an error, never a
//! panic or an out-of-bounds read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skein_agent::deviceplugin::dcb::parse_ieee_get_reply;

fuzz_target!(|data: &[u8]| {
    let _ = parse_ieee_get_reply(data, 1, "fuzz0");
});
