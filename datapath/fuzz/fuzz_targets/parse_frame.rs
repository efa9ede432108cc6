//! Any byte string parses without panicking or reading out of bounds, and every header
//! writer and VLAN push/pop works on whatever the parser found.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skein_datapath::key::{Field, FlowKey};
use skein_datapath::packet;
use skein_datapath::parse::parse_frame;

fuzz_target!(|data: &[u8]| {
    let mut key = FlowKey::ZERO;
    let mut offs = parse_frame(data, &mut key);
    let mut frame = data.to_vec();
    for (i, f) in Field::ALL.iter().enumerate() {
        if f.writable() {
            packet::write_field(&mut frame, &offs, *f, (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15) & f.max_value());
        }
    }
    packet::push_vlan(&mut frame, &mut offs, 0x1064);
    packet::pop_vlan(&mut frame, &mut offs);
    let _ = packet::checksums_valid(&frame);
});
