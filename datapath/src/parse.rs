//! Frame parsing: Ethernet (one 802.1Q/802.1ad tag), ARP, IPv4, IPv6 (with extension
//! headers), TCP, UDP, SCTP, ICMP and ICMPv6 into a [`FlowKey`], plus the header offsets
//! the action executor needs to rewrite the frame.
//!
//! Untrusted input: every read is bounds-checked, a truncated or malformed header stops
//! parsing at the last valid layer (the key keeps what was parsed so far), and nothing
//! allocates.

use crate::key::{FRAG_ANY, FRAG_LATER, Field, FlowKey, VLAN_PRESENT, eth_type, ip_proto};

/// Offset value meaning "this header is absent or incomplete".
pub const ABSENT: u16 = u16::MAX;

/// Which network-layer header a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum L3 {
    /// None that the parser understood (or it was truncated).
    #[default]
    None,
    /// A complete IPv4 header.
    Ipv4,
    /// A complete IPv6 fixed header.
    Ipv6,
    /// A complete Ethernet/IPv4 ARP packet.
    Arp,
}

/// Where the headers of a parsed frame start, for rewriting it in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderOffsets {
    /// Offset of the Ethernet type field that names the L3 protocol (12, or 16 when
    /// tagged); [`ABSENT`] for frames shorter than an Ethernet header.
    pub eth_type: u16,
    /// Offset of the L3 header, [`ABSENT`] if none.
    pub l3: u16,
    /// Kind of L3 header at `l3`.
    pub l3_kind: L3,
    /// Offset of a complete L4 header (TCP, UDP, SCTP, ICMP, ICMPv6), [`ABSENT`] if none.
    pub l4: u16,
    /// IP protocol of the L4 header at `l4`.
    pub l4_proto: u8,
    /// The L4 checksum is partial (it holds only the pseudo-header sum, to be completed
    /// by whoever transmits the frame): header rewrites update it accordingly. Set by
    /// the caller from the frame's offload metadata; `parse_frame` leaves it false.
    pub csum_partial: bool,
}

impl HeaderOffsets {
    /// Offsets of a frame with no parsed headers.
    pub const NONE: HeaderOffsets =
        HeaderOffsets { eth_type: ABSENT, l3: ABSENT, l3_kind: L3::None, l4: ABSENT, l4_proto: 0, csum_partial: false };
}

#[inline(always)]
fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

#[inline(always)]
fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

#[inline(always)]
fn mac(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at + 6)?;
    Some(u64::from_be_bytes([0, 0, s[0], s[1], s[2], s[3], s[4], s[5]]))
}

#[inline(always)]
fn ip6(b: &[u8], at: usize) -> Option<u128> {
    let s: [u8; 16] = b.get(at..at + 16)?.try_into().ok()?;
    Some(u128::from_be_bytes(s))
}

/// Parses `frame` into the packet-header fields of `key`. The caller sets metadata
/// fields (`in_port`, tunnel, registers) beforehand; header fields must be zero on entry
/// (start from [`FlowKey::ZERO`]).
#[inline]
pub fn parse_frame(frame: &[u8], key: &mut FlowKey) -> HeaderOffsets {
    let mut offs = HeaderOffsets::NONE;
    parse_l2(frame, key, &mut offs);
    offs
}

#[inline(always)]
fn parse_l2(b: &[u8], key: &mut FlowKey, offs: &mut HeaderOffsets) -> Option<()> {
    let dst = mac(b, 0)?;
    let src = mac(b, 6)?;
    let mut ty = be16(b, 12)?;
    key.set(Field::EthDst, dst as u128);
    key.set(Field::EthSrc, src as u128);
    let mut at = 12usize;
    if ty == eth_type::VLAN || ty == eth_type::QINQ {
        let tci = be16(b, 14)?;
        let inner = be16(b, 16)?;
        key.set(Field::VlanTci, ((tci & !VLAN_PRESENT) | VLAN_PRESENT) as u128);
        ty = inner;
        at = 16;
    }
    key.set(Field::EthType, ty as u128);
    offs.eth_type = at as u16;
    let l3 = at + 2;
    match ty {
        eth_type::IPV4 => parse_ipv4(b, l3, key, offs),
        eth_type::IPV6 => parse_ipv6(b, l3, key, offs),
        eth_type::ARP => parse_arp(b, l3, key, offs),
        _ => Some(()),
    }
}

fn parse_arp(b: &[u8], at: usize, key: &mut FlowKey, offs: &mut HeaderOffsets) -> Option<()> {
    let h = b.get(at..at + 28)?;
    // Only Ethernet/IPv4 ARP has the fixed layout the key describes.
    if h[0..2] != [0, 1] || h[2..4] != [8, 0] || h[4] != 6 || h[5] != 4 {
        return Some(());
    }
    let op = u16::from_be_bytes([h[6], h[7]]);
    if op <= 0xff {
        key.set(Field::ArpOp, op as u128);
    }
    key.set(Field::ArpSha, mac(h, 8)? as u128);
    key.set(Field::ArpSpa, be32(h, 14)? as u128);
    key.set(Field::ArpTha, mac(h, 18)? as u128);
    key.set(Field::ArpTpa, be32(h, 24)? as u128);
    offs.l3 = at as u16;
    offs.l3_kind = L3::Arp;
    Some(())
}

#[inline(always)]
fn parse_ipv4(b: &[u8], at: usize, key: &mut FlowKey, offs: &mut HeaderOffsets) -> Option<()> {
    let h = b.get(at..at + 20)?;
    if h[0] >> 4 != 4 {
        return Some(());
    }
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    let total = u16::from_be_bytes([h[2], h[3]]) as usize;
    if ihl < 20 || b.len() < at + ihl || total < ihl {
        return Some(());
    }
    let tos = h[1];
    let frag = u16::from_be_bytes([h[6], h[7]]);
    let proto = h[9];
    key.set(Field::Ipv4Src, u32::from_be_bytes([h[12], h[13], h[14], h[15]]) as u128);
    key.set(Field::Ipv4Dst, u32::from_be_bytes([h[16], h[17], h[18], h[19]]) as u128);
    key.set(Field::NwProto, proto as u128);
    key.set(Field::IpDscp, (tos >> 2) as u128);
    key.set(Field::IpEcn, (tos & 3) as u128);
    key.set(Field::NwTtl, h[8] as u128);
    let mut nw_frag = 0u8;
    if frag & 0x3fff != 0 {
        nw_frag |= FRAG_ANY;
        if frag & 0x1fff != 0 {
            nw_frag |= FRAG_LATER;
        }
    }
    key.set(Field::NwFrag, nw_frag as u128);
    offs.l3 = at as u16;
    offs.l3_kind = L3::Ipv4;
    if nw_frag & FRAG_LATER != 0 {
        return Some(());
    }
    // The L4 header must lie inside both the frame and the IP datagram.
    let end = b.len().min(at + total);
    parse_l4(&b[..end], at + ihl, proto, key, offs)
}

fn parse_ipv6(b: &[u8], at: usize, key: &mut FlowKey, offs: &mut HeaderOffsets) -> Option<()> {
    let h = b.get(at..at + 40)?;
    if h[0] >> 4 != 6 {
        return Some(());
    }
    let vtcfl = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    let tclass = ((vtcfl >> 20) & 0xff) as u8;
    let payload = u16::from_be_bytes([h[4], h[5]]) as usize;
    key.set(Field::Ipv6Label, (vtcfl & 0x000f_ffff) as u128);
    key.set(Field::IpDscp, (tclass >> 2) as u128);
    key.set(Field::IpEcn, (tclass & 3) as u128);
    key.set(Field::NwTtl, h[7] as u128);
    key.set(Field::Ipv6Src, ip6(h, 8)?);
    key.set(Field::Ipv6Dst, ip6(h, 24)?);
    offs.l3 = at as u16;
    offs.l3_kind = L3::Ipv6;
    let end = b.len().min(at + 40 + payload);
    let b = &b[..end];
    let mut next = h[6];
    let mut pos = at + 40;
    let mut nw_frag = 0u8;
    // Walk a bounded number of extension headers.
    for _ in 0..8 {
        match next {
            0 | 43 | 60 => {
                let nh = *b.get(pos)?;
                let len = (*b.get(pos + 1)? as usize + 1) * 8;
                next = nh;
                pos += len;
            }
            51 => {
                let nh = *b.get(pos)?;
                let len = (*b.get(pos + 1)? as usize + 2) * 4;
                next = nh;
                pos += len;
            }
            44 => {
                let nh = *b.get(pos)?;
                let off = be16(b, pos + 2)?;
                nw_frag |= FRAG_ANY;
                if off >> 3 != 0 {
                    nw_frag |= FRAG_LATER;
                }
                next = nh;
                pos += 8;
            }
            _ => break,
        }
    }
    key.set(Field::NwProto, next as u128);
    key.set(Field::NwFrag, nw_frag as u128);
    if nw_frag & FRAG_LATER != 0 {
        return Some(());
    }
    parse_l4(b, pos, next, key, offs)
}

#[inline(always)]
fn parse_l4(b: &[u8], at: usize, proto: u8, key: &mut FlowKey, offs: &mut HeaderOffsets) -> Option<()> {
    match proto {
        ip_proto::TCP => {
            let h = b.get(at..at + 20)?;
            key.set(Field::TpSrc, u16::from_be_bytes([h[0], h[1]]) as u128);
            key.set(Field::TpDst, u16::from_be_bytes([h[2], h[3]]) as u128);
            key.set(Field::TcpFlags, ((((h[12] & 0x0f) as u16) << 8) | h[13] as u16) as u128);
        }
        ip_proto::UDP => {
            let h = b.get(at..at + 8)?;
            key.set(Field::TpSrc, u16::from_be_bytes([h[0], h[1]]) as u128);
            key.set(Field::TpDst, u16::from_be_bytes([h[2], h[3]]) as u128);
        }
        ip_proto::SCTP => {
            let h = b.get(at..at + 12)?;
            key.set(Field::TpSrc, u16::from_be_bytes([h[0], h[1]]) as u128);
            key.set(Field::TpDst, u16::from_be_bytes([h[2], h[3]]) as u128);
        }
        ip_proto::ICMP | ip_proto::ICMPV6 => {
            let h = b.get(at..at + 4)?;
            key.set(Field::IcmpType, h[0] as u128);
            key.set(Field::IcmpCode, h[1] as u128);
        }
        _ => return Some(()),
    }
    offs.l4 = at as u16;
    offs.l4_proto = proto;
    Some(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds an Ethernet/IPv4/L4 frame with valid checksums (test helper shared by the
    /// crate's tests).
    pub(crate) fn ipv4_frame(proto: u8, src: u32, dst: u32, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let l4len = match proto {
            ip_proto::TCP => 20,
            ip_proto::UDP => 8,
            _ => 8,
        };
        let total = 20 + l4len + payload.len();
        let mut f = vec![0u8; 14 + total];
        f[0..6].copy_from_slice(&[0x0a, 0x58, 0x0a, 0, 0, 2]);
        f[6..12].copy_from_slice(&[0x0a, 0x58, 0x0a, 0, 0, 1]);
        f[12..14].copy_from_slice(&eth_type::IPV4.to_be_bytes());
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[1] = 0x2e;
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip[8] = 64;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&src.to_be_bytes());
        ip[16..20].copy_from_slice(&dst.to_be_bytes());
        let l4 = &mut f[34..34 + l4len];
        match proto {
            ip_proto::TCP => {
                l4[0..2].copy_from_slice(&sport.to_be_bytes());
                l4[2..4].copy_from_slice(&dport.to_be_bytes());
                l4[12] = 0x50;
                l4[13] = 0x18;
            }
            ip_proto::UDP => {
                l4[0..2].copy_from_slice(&sport.to_be_bytes());
                l4[2..4].copy_from_slice(&dport.to_be_bytes());
                l4[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            }
            _ => {
                l4[0] = 8; // echo request
            }
        }
        f[34 + l4len..].copy_from_slice(payload);
        crate::packet::fill_checksums(&mut f);
        f
    }

    /// (IPv4 source, destination, L4 source port, destination port) of a frame.
    pub(crate) fn l4_addrs(f: &[u8]) -> (u32, u32, u16, u16) {
        let mut k = FlowKey::ZERO;
        parse_frame(f, &mut k);
        (
            k.get(Field::Ipv4Src) as u32,
            k.get(Field::Ipv4Dst) as u32,
            k.get(Field::TpSrc) as u16,
            k.get(Field::TpDst) as u16,
        )
    }

    #[test]
    fn parses_tcp_over_ipv4() {
        let f = ipv4_frame(ip_proto::TCP, 0x0a00_0001, 0x0a00_0002, 1234, 80, b"hi");
        let mut k = FlowKey::ZERO;
        let o = parse_frame(&f, &mut k);
        assert_eq!(k.get(Field::EthType), 0x0800);
        assert_eq!(k.get(Field::Ipv4Src), 0x0a00_0001);
        assert_eq!(k.get(Field::Ipv4Dst), 0x0a00_0002);
        assert_eq!(k.get(Field::NwProto), 6);
        assert_eq!(k.get(Field::IpDscp), 0x2e >> 2);
        assert_eq!(k.get(Field::IpEcn), 2);
        assert_eq!(k.get(Field::NwTtl), 64);
        assert_eq!(k.get(Field::TpSrc), 1234);
        assert_eq!(k.get(Field::TpDst), 80);
        assert_eq!(k.get(Field::TcpFlags), 0x018);
        assert_eq!(o.l3, 14);
        assert_eq!(o.l4, 34);
        assert_eq!(o.l3_kind, L3::Ipv4);
    }

    #[test]
    fn truncated_l4_keeps_l3() {
        let f = ipv4_frame(ip_proto::TCP, 1, 2, 3, 4, b"");
        let mut k = FlowKey::ZERO;
        let o = parse_frame(&f[..40], &mut k);
        assert_eq!(k.get(Field::Ipv4Src), 1);
        assert_eq!(k.get(Field::TpSrc), 0);
        assert_eq!(o.l4, ABSENT);
    }

    #[test]
    fn later_fragment_has_no_ports() {
        let mut f = ipv4_frame(ip_proto::UDP, 1, 2, 3, 4, b"abcd");
        f[14 + 6] = 0x00;
        f[14 + 7] = 0x10; // offset 16*8
        let mut k = FlowKey::ZERO;
        let o = parse_frame(&f, &mut k);
        assert_eq!(k.get(Field::NwFrag), (FRAG_ANY | FRAG_LATER) as u128);
        assert_eq!(k.get(Field::TpSrc), 0);
        assert_eq!(o.l4, ABSENT);
    }

    #[test]
    fn vlan_tag_and_arp() {
        let mut f = vec![0xffu8; 6];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&[0x81, 0x00, 0x20, 0x64, 0x08, 0x06]);
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 10, 0, 0, 1]);
        f.extend_from_slice(&[0, 0, 0, 0, 0, 0, 10, 0, 0, 2]);
        let mut k = FlowKey::ZERO;
        let o = parse_frame(&f, &mut k);
        assert_eq!(k.get(Field::VlanTci), (0x2064 | VLAN_PRESENT) as u128);
        assert_eq!(k.get(Field::EthType), 0x0806);
        assert_eq!(k.get(Field::ArpOp), 1);
        assert_eq!(k.get(Field::ArpSpa), 0x0a00_0001);
        assert_eq!(k.get(Field::ArpTpa), 0x0a00_0002);
        assert_eq!(k.get(Field::ArpSha), 0x0200_0000_0001);
        assert_eq!(o.l3, 18);
        assert_eq!(o.eth_type, 16);
    }

    #[test]
    fn ipv6_with_extension_and_fragment_headers() {
        let mut f = vec![0u8; 14];
        f[12] = 0x86;
        f[13] = 0xdd;
        let mut ip = vec![0u8; 40];
        ip[0] = 0x60 | 0x0b; // tclass high nibble 0xb
        ip[1] = 0x81; // tclass low nibble 8, label high nibble 1
        ip[2] = 0x23;
        ip[3] = 0x45;
        ip[6] = 0; // hop-by-hop
        ip[7] = 9;
        ip[8..24].copy_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        ip[24..40].copy_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        let mut ext = vec![44, 0, 0, 0, 0, 0, 0, 0]; // hop-by-hop → fragment
        ext.extend_from_slice(&[17, 0, 0, 1, 0, 0, 0, 7]); // fragment (first, M) → UDP
        ext.extend_from_slice(&[0x04, 0xd2, 0x00, 0x35, 0, 8, 0, 0]);
        ip[4..6].copy_from_slice(&(ext.len() as u16).to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&ext);
        let mut k = FlowKey::ZERO;
        let o = parse_frame(&f, &mut k);
        assert_eq!(k.get(Field::NwProto), 17);
        assert_eq!(k.get(Field::NwFrag), FRAG_ANY as u128);
        assert_eq!(k.get(Field::TpSrc), 1234);
        assert_eq!(k.get(Field::TpDst), 53);
        assert_eq!(k.get(Field::Ipv6Label), 0x12345);
        assert_eq!(k.get(Field::IpDscp), 0xb8 >> 2);
        assert_eq!(k.get(Field::NwTtl), 9);
        assert_eq!(k.get(Field::Ipv6Dst) & 0xff, 2);
        assert_eq!(o.l4, 14 + 40 + 16);
    }

    #[test]
    fn every_prefix_of_a_frame_parses_without_panic() {
        let f = ipv4_frame(ip_proto::UDP, 1, 2, 3, 4, b"payload");
        for n in 0..=f.len() {
            let mut k = FlowKey::ZERO;
            let _ = parse_frame(&f[..n], &mut k);
        }
    }
}
