//! Arbitrary bytes through Geneve decapsulation and the responders that parse frames: no
//! panic, no out-of-bounds read; whatever a responder builds has valid checksums; and
//! encapsulating any inner frame with parameters taken from the input decapsulates back
//! to exactly that frame and those parameters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skein_datapath::geneve::{self, EncapParams, GeneveHeader, TunnelMeta};
use skein_datapath::packet::checksums_valid;
use skein_datapath::responder;

/// Bytes at the front of the input that choose the encapsulation parameters.
const PARAMS_LEN: usize = 31;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fuzz_target!(|data: &[u8]| {
    let _ = geneve::decap(data);
    let _ = geneve::decap_payload(data);

    let mac = [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x01];
    let built = [
        responder::arp_reply(data, mac),
        responder::icmp_echo_reply(data),
        responder::time_exceeded(data, mac, 0x0af4_0101, (0xfd00 << 112) | 1),
        geneve::frag_needed(data, 1442, mac, 0x0af4_0101),
        geneve::packet_too_big_v6(data, 1442, mac, (0xfd00 << 112) | 1),
    ];
    for frame in built.iter().flatten() {
        assert!(checksums_valid(frame), "a built frame has a bad checksum: {frame:02x?}");
    }

    if data.len() < PARAMS_LEN {
        return;
    }
    let (p, inner) = data.split_at(PARAMS_LEN);
    let params = EncapParams {
        outer_eth_src: [p[0], p[1], p[2], p[3], p[4], p[5]],
        outer_eth_dst: [p[6], p[7], p[8], p[9], p[10], p[11]],
        src: u32_at(p, 12),
        dst: u32_at(p, 16),
        ttl: p[20],
        vni: u32_at(p, 21) & geneve::MAX_VNI,
        ingress: u16_at(p, 25) & geneve::MAX_INGRESS_KEY,
        egress: u16_at(p, 27),
        // Every other input carries an identity option.
        identity: if p[29] & 1 == 0 { 0 } else { u32_at(p, 21) | 1 },
    };
    let entropy = u32::from(u16_at(p, 29)) ^ geneve::inner_flow_entropy(inner);
    let mut out = Vec::new();
    if inner.len() < 14 {
        assert!(geneve::encap(inner, &params, entropy, &mut out).is_err());
        return;
    }
    geneve::encap(inner, &params, entropy, &mut out).expect("any inner frame of 14 bytes or more encapsulates");
    assert_eq!(out.len(), inner.len() + geneve::encap_overhead_v4(params.identity));
    assert!(checksums_valid(&out));
    let (meta, off) = geneve::decap(&out).expect("decap of encap");
    assert_eq!(&out[off..], inner);
    let p = &params;
    assert_eq!(
        meta,
        TunnelMeta { vni: p.vni, src: p.src, dst: p.dst, ingress: p.ingress, egress: p.egress, identity: p.identity }
    );
    let (h, inner_off) = geneve::decap_payload(&out[42..]).expect("decap_payload of encap");
    assert_eq!(h, GeneveHeader { vni: p.vni, ingress: p.ingress, egress: p.egress, identity: p.identity });
    assert_eq!(&out[42 + inner_off..], inner);
});
