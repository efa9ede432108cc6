//! Rewriting frames in place: one writer per settable header field, each keeping the
//! IPv4 header checksum and the TCP/UDP/ICMP/ICMPv6 checksums correct by incremental
//! update (RFC 1624), plus VLAN push/pop. Writers check that the header they touch is
//! present; a field whose header the frame lacks changes nothing in the bytes.

use crate::key::{Field, VLAN_PRESENT, ip_proto};
use crate::parse::{ABSENT, HeaderOffsets, L3};

/// Folds a 32-bit one's-complement sum to 16 bits.
#[inline]
fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Incrementally updates a checksum for one 16-bit word changing from `old` to `new`.
#[inline]
pub fn csum_update16(csum: u16, old: u16, new: u16) -> u16 {
    // HC' = ~(~HC + ~m + m')
    !fold((!csum as u32) + (!old as u32) + (new as u32))
}

/// Incrementally updates a checksum for a 32-bit value change.
#[inline]
pub fn csum_update32(csum: u16, old: u32, new: u32) -> u16 {
    let c = csum_update16(csum, (old >> 16) as u16, (new >> 16) as u16);
    csum_update16(c, old as u16, new as u16)
}

/// Incrementally updates a checksum for a 128-bit value change.
#[inline]
pub fn csum_update128(mut csum: u16, old: u128, new: u128) -> u16 {
    for i in 0..4 {
        let sh = 96 - 32 * i;
        csum = csum_update32(csum, (old >> sh) as u32, (new >> sh) as u32);
    }
    csum
}

/// One's-complement sum of `data` (odd trailing byte padded with zero) added to `acc`
/// (a sum of big-endian 16-bit words; the result is one too, folded to at most 17 bits).
///
/// The words are summed eight bytes at a time in native order, two 32-bit halves into a
/// 64-bit accumulator (which the compiler vectorises), then folded and byte-swapped: the
/// one's-complement sum does not depend on byte order (RFC 1071 §2(B)). Segmenting and
/// merging TCP super-frames sums every payload byte, so this is on the forwarding path.
pub fn ones_sum(data: &[u8], acc: u32) -> u32 {
    let mut sum: u64 = 0;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let w = u64::from_le_bytes(w);
        // At most 2^33 per chunk: no overflow below 2^31 chunks (16 GiB).
        sum += (w & 0xffff_ffff) + (w >> 32);
    }
    let mut rest = chunks.remainder();
    while let [a, b, tail @ ..] = rest {
        sum += u16::from_le_bytes([*a, *b]) as u64;
        rest = tail;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let mut total = acc as u64 + (sum as u16).swap_bytes() as u64;
    if let [b] = rest {
        total += (*b as u64) << 8;
    }
    while total >> 17 != 0 {
        total = (total & 0xffff) + (total >> 16);
    }
    total as u32
}

/// Internet checksum of `data` starting from `acc`.
pub fn checksum(data: &[u8], acc: u32) -> u16 {
    !fold(ones_sum(data, acc))
}

#[inline]
fn rd16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

#[inline]
fn wr16(f: &mut [u8], at: usize, v: u16) {
    f[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[inline]
fn rd32(f: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]])
}

#[inline]
fn rd128(f: &[u8], at: usize) -> u128 {
    let mut b = [0u8; 16];
    b.copy_from_slice(&f[at..at + 16]);
    u128::from_be_bytes(b)
}

/// Offset of the L4 checksum that covers the IP pseudo-header, if the frame has one that
/// is in use (UDP over IPv4 may carry 0 = "no checksum").
fn pseudo_csum_offset(f: &[u8], o: &HeaderOffsets) -> Option<usize> {
    if o.l4 == ABSENT {
        return None;
    }
    let l4 = o.l4 as usize;
    match o.l4_proto {
        ip_proto::TCP => Some(l4 + 16),
        ip_proto::UDP if rd16(f, l4 + 6) != 0 => Some(l4 + 6),
        ip_proto::ICMPV6 => Some(l4 + 2),
        _ => None,
    }
}

fn store_l4_csum(f: &mut [u8], o: &HeaderOffsets, at: usize, c: u16) {
    // A computed UDP checksum of 0 is sent as 0xffff (0 means "none").
    let c = if o.l4_proto == ip_proto::UDP && c == 0 { 0xffff } else { c };
    wr16(f, at, c);
}

fn set_ipv4_addr(f: &mut [u8], o: &HeaderOffsets, at: usize, new: u32) {
    let old = rd32(f, at);
    if old == new {
        return;
    }
    f[at..at + 4].copy_from_slice(&new.to_be_bytes());
    let l3 = o.l3 as usize;
    let c = csum_update32(rd16(f, l3 + 10), old, new);
    wr16(f, l3 + 10, c);
    // Whatever L4 checksum covers the pseudo-header (even an ICMPv6 one in an IPv4
    // packet, however odd) must follow the address.
    if let Some(ca) = pseudo_csum_offset(f, o) {
        if o.csum_partial {
            // The field holds the folded pseudo-header sum itself, not its complement.
            wr16(f, ca, !csum_update32(!rd16(f, ca), old, new));
        } else {
            let c = csum_update32(rd16(f, ca), old, new);
            store_l4_csum(f, o, ca, c);
        }
    }
}

fn set_ipv6_addr(f: &mut [u8], o: &HeaderOffsets, at: usize, new: u128) {
    let old = rd128(f, at);
    if old == new {
        return;
    }
    f[at..at + 16].copy_from_slice(&new.to_be_bytes());
    if let Some(ca) = pseudo_csum_offset(f, o) {
        if o.csum_partial {
            wr16(f, ca, !csum_update128(!rd16(f, ca), old, new));
        } else {
            let c = csum_update128(rd16(f, ca), old, new);
            store_l4_csum(f, o, ca, c);
        }
    }
}

fn set_l4_port(f: &mut [u8], o: &HeaderOffsets, at: usize, new: u16) {
    let old = rd16(f, at);
    if old == new {
        return;
    }
    wr16(f, at, new);
    if o.csum_partial {
        // A partial checksum is completed over the header as it leaves: nothing to do.
        return;
    }
    let l4 = o.l4 as usize;
    match o.l4_proto {
        ip_proto::TCP => {
            let c = csum_update16(rd16(f, l4 + 16), old, new);
            wr16(f, l4 + 16, c);
        }
        ip_proto::UDP if rd16(f, l4 + 6) != 0 => {
            let c = csum_update16(rd16(f, l4 + 6), old, new);
            store_l4_csum(f, o, l4 + 6, c);
        }
        ip_proto::SCTP => {
            // SCTP uses CRC32c over the whole packet: recompute it.
            let end = f.len();
            f[l4 + 8..l4 + 12].copy_from_slice(&[0; 4]);
            let crc = crc32c(&f[l4..end]);
            f[l4 + 8..l4 + 12].copy_from_slice(&crc.to_le_bytes());
        }
        _ => {}
    }
}

/// Writes `value` into the frame's bytes for `field`, if the frame has that header.
/// Metadata fields (registers, tunnel, conntrack) have no bytes and are ignored here.
pub fn write_field(f: &mut [u8], o: &HeaderOffsets, field: Field, value: u128) {
    let l3 = o.l3 as usize;
    let l4 = o.l4 as usize;
    match field {
        Field::EthDst | Field::EthSrc => {
            if o.eth_type == ABSENT {
                return;
            }
            let at = if field == Field::EthDst { 0 } else { 6 };
            f[at..at + 6].copy_from_slice(&(value as u64).to_be_bytes()[2..]);
        }
        Field::VlanTci if o.eth_type == 16 => wr16(f, 14, (value as u16) & !VLAN_PRESENT),
        Field::Ipv4Src | Field::Ipv4Dst | Field::ArpSpa | Field::ArpTpa => {
            let src = matches!(field, Field::Ipv4Src | Field::ArpSpa);
            match o.l3_kind {
                L3::Ipv4 => set_ipv4_addr(f, o, l3 + if src { 12 } else { 16 }, value as u32),
                L3::Arp => {
                    let at = l3 + if src { 14 } else { 24 };
                    f[at..at + 4].copy_from_slice(&(value as u32).to_be_bytes());
                }
                _ => {}
            }
        }
        Field::ArpOp if o.l3_kind == L3::Arp => wr16(f, l3 + 6, value as u8 as u16),
        Field::ArpSha | Field::ArpTha if o.l3_kind == L3::Arp => {
            let at = l3 + if field == Field::ArpSha { 8 } else { 18 };
            f[at..at + 6].copy_from_slice(&(value as u64).to_be_bytes()[2..]);
        }
        Field::IpDscp | Field::IpEcn => match o.l3_kind {
            L3::Ipv4 => {
                let old = f[l3 + 1];
                let new = if field == Field::IpDscp {
                    ((value as u8) << 2) | (old & 3)
                } else {
                    (old & !3) | (value as u8 & 3)
                };
                if old != new {
                    let c = csum_update16(rd16(f, l3 + 10), rd16(f, l3), ((f[l3] as u16) << 8) | new as u16);
                    f[l3 + 1] = new;
                    wr16(f, l3 + 10, c);
                }
            }
            L3::Ipv6 => {
                let w = rd32(f, l3);
                let tc = ((w >> 20) & 0xff) as u8;
                let tc = if field == Field::IpDscp {
                    ((value as u8) << 2) | (tc & 3)
                } else {
                    (tc & !3) | (value as u8 & 3)
                };
                let w = (w & !0x0ff0_0000) | ((tc as u32) << 20);
                f[l3..l3 + 4].copy_from_slice(&w.to_be_bytes());
            }
            _ => {}
        },
        Field::NwTtl => match o.l3_kind {
            L3::Ipv4 => {
                let old = rd16(f, l3 + 8);
                let new = ((value as u8 as u16) << 8) | (old & 0xff);
                if old != new {
                    wr16(f, l3 + 8, new);
                    let c = csum_update16(rd16(f, l3 + 10), old, new);
                    wr16(f, l3 + 10, c);
                }
            }
            L3::Ipv6 => f[l3 + 7] = value as u8,
            _ => {}
        },
        Field::Ipv6Label if o.l3_kind == L3::Ipv6 => {
            let w = (rd32(f, l3) & !0x000f_ffff) | (value as u32 & 0x000f_ffff);
            f[l3..l3 + 4].copy_from_slice(&w.to_be_bytes());
        }
        Field::Ipv6Src | Field::Ipv6Dst if o.l3_kind == L3::Ipv6 => {
            set_ipv6_addr(f, o, l3 + if field == Field::Ipv6Src { 8 } else { 24 }, value)
        }
        Field::TpSrc | Field::TpDst
            if o.l4 != ABSENT && matches!(o.l4_proto, ip_proto::TCP | ip_proto::UDP | ip_proto::SCTP) =>
        {
            set_l4_port(f, o, l4 + if field == Field::TpSrc { 0 } else { 2 }, value as u16)
        }
        Field::IcmpType | Field::IcmpCode => {
            if o.l4 == ABSENT {
                return;
            }
            let first = field == Field::IcmpType;
            match o.l4_proto {
                ip_proto::ICMP | ip_proto::ICMPV6 => {
                    let old = rd16(f, l4);
                    let new = if first {
                        ((value as u8 as u16) << 8) | (old & 0xff)
                    } else {
                        (old & 0xff00) | value as u8 as u16
                    };
                    if old != new {
                        wr16(f, l4, new);
                        if o.csum_partial {
                            return;
                        }
                        let c = csum_update16(rd16(f, l4 + 2), old, new);
                        wr16(f, l4 + 2, c);
                    }
                }
                _ => {}
            }
        }
        _ => {}
    }
}

/// Sets the identifier of an ICMP/ICMPv6 echo request or reply, keeping its checksum.
pub fn set_icmp_echo_id(f: &mut [u8], o: &HeaderOffsets, id: u16) {
    if o.l4 == ABSENT || !matches!(o.l4_proto, ip_proto::ICMP | ip_proto::ICMPV6) || f.len() < o.l4 as usize + 6 {
        return;
    }
    let at = o.l4 as usize + 4;
    let old = rd16(f, at);
    if old != id {
        wr16(f, at, id);
        if o.csum_partial {
            return;
        }
        let c = csum_update16(rd16(f, o.l4 as usize + 2), old, id);
        wr16(f, o.l4 as usize + 2, c);
    }
}

/// Recomputes the ICMP/ICMPv6 checksum over the whole message (after rewriting the
/// packet quoted inside an ICMP error, where incremental updates would be error-prone).
pub fn recompute_icmp_checksum(f: &mut [u8], o: &HeaderOffsets) {
    if o.l4 == ABSENT || !matches!(o.l4_proto, ip_proto::ICMP | ip_proto::ICMPV6) {
        return;
    }
    let at = o.l4 as usize + 2;
    wr16(f, at, 0);
    let c = l4_checksum(f, o);
    wr16(f, at, c);
}

/// Inserts an 802.1Q tag with `tci` after the MAC addresses. Returns false (frame
/// unchanged) if the frame is too short to have an Ethernet header or is already tagged.
pub fn push_vlan(f: &mut Vec<u8>, o: &mut HeaderOffsets, tci: u16) -> bool {
    if o.eth_type != 12 {
        return false;
    }
    let tag = [0x81, 0x00, (tci >> 8) as u8 & !0x10, tci as u8];
    f.splice(12..12, tag);
    shift_offsets(o, 4);
    true
}

/// Removes the 802.1Q tag, if any. Returns whether a tag was removed.
pub fn pop_vlan(f: &mut Vec<u8>, o: &mut HeaderOffsets) -> bool {
    if o.eth_type != 16 {
        return false;
    }
    f.drain(12..16);
    shift_offsets(o, -4);
    true
}

fn shift_offsets(o: &mut HeaderOffsets, by: i32) {
    for off in [&mut o.eth_type, &mut o.l3, &mut o.l4] {
        if *off != ABSENT {
            *off = (*off as i32 + by) as u16;
        }
    }
}

/// CRC32c (Castagnoli), as SCTP uses; bitwise, since SCTP port rewrites are rare.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    !crc
}

/// Recomputes every checksum of an Ethernet frame from scratch (IPv4 header, TCP, UDP,
/// ICMP, ICMPv6). For building test and benchmark frames; the forwarding path only
/// updates checksums incrementally.
pub fn fill_checksums(f: &mut [u8]) {
    let mut key = crate::key::FlowKey::ZERO;
    let o = crate::parse::parse_frame(f, &mut key);
    if o.l3_kind == L3::Ipv4 {
        let l3 = o.l3 as usize;
        let ihl = ((f[l3] & 0x0f) as usize) * 4;
        wr16(f, l3 + 10, 0);
        let c = checksum(&f[l3..l3 + ihl], 0);
        wr16(f, l3 + 10, c);
    }
    if let Some(at) = l4_csum_offset(&o) {
        wr16(f, at, 0);
        let c = l4_checksum(f, &o);
        store_l4_csum(f, &o, at, c);
    }
}

fn l4_csum_offset(o: &HeaderOffsets) -> Option<usize> {
    if o.l4 == ABSENT {
        return None;
    }
    let l4 = o.l4 as usize;
    match o.l4_proto {
        ip_proto::TCP => Some(l4 + 16),
        ip_proto::UDP => Some(l4 + 6),
        ip_proto::ICMP | ip_proto::ICMPV6 => Some(l4 + 2),
        _ => None,
    }
}

/// The L4 checksum the frame should carry (computed over the whole L4 segment).
fn l4_checksum(f: &[u8], o: &HeaderOffsets) -> u16 {
    let l3 = o.l3 as usize;
    let l4 = o.l4 as usize;
    let end = match o.l3_kind {
        L3::Ipv4 => (l3 + rd16(f, l3 + 2) as usize).min(f.len()),
        _ => (l3 + 40 + rd16(f, l3 + 4) as usize).min(f.len()),
    };
    let len = (end - l4) as u32;
    let mut acc = 0u32;
    if o.l4_proto != ip_proto::ICMP {
        match o.l3_kind {
            L3::Ipv4 => acc = ones_sum(&f[l3 + 12..l3 + 20], acc),
            _ => acc = ones_sum(&f[l3 + 8..l3 + 40], acc),
        }
        acc += o.l4_proto as u32 + (len >> 16) + (len & 0xffff);
    }
    checksum(&f[l4..end], acc)
}

/// True if every checksum the frame carries is correct (for tests).
pub fn checksums_valid(f: &[u8]) -> bool {
    let mut key = crate::key::FlowKey::ZERO;
    let o = crate::parse::parse_frame(f, &mut key);
    if o.l3_kind == L3::Ipv4 {
        let l3 = o.l3 as usize;
        let ihl = ((f[l3] & 0x0f) as usize) * 4;
        if checksum(&f[l3..l3 + ihl], 0) != 0 {
            return false;
        }
    }
    if let Some(at) = l4_csum_offset(&o) {
        let stored = rd16(f, at);
        if o.l4_proto == ip_proto::UDP && stored == 0 && o.l3_kind == L3::Ipv4 {
            return true;
        }
        let mut copy = f.to_vec();
        wr16(&mut copy, at, 0);
        let mut c = l4_checksum(&copy, &o);
        if o.l4_proto == ip_proto::UDP && c == 0 {
            c = 0xffff;
        }
        return c == stored;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::FlowKey;
    use crate::parse::parse_frame;
    use crate::parse::tests::ipv4_frame;

    fn offsets(f: &[u8]) -> HeaderOffsets {
        parse_frame(f, &mut FlowKey::ZERO.clone())
    }

    /// The checksum as RFC 1071 defines it, word by word: what `ones_sum` must agree with.
    fn reference_sum(data: &[u8], mut acc: u64) -> u64 {
        for c in data.chunks(2) {
            acc += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u64;
        }
        acc
    }

    fn fold64(mut x: u64) -> u16 {
        while x >> 16 != 0 {
            x = (x & 0xffff) + (x >> 16);
        }
        x as u16
    }

    #[test]
    fn ones_sum_agrees_with_the_word_by_word_definition() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for len in (0..300).chain([1399, 1400, 1448, 9000, 65_535]) {
            let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            for acc in [0u32, 1, 0xffff, 0x1_fffe, 0xffff_0000, next() as u32 & 0x00ff_ffff] {
                assert_eq!(
                    fold(ones_sum(&data, acc)),
                    fold64(reference_sum(&data, acc as u64)),
                    "len {len} acc {acc:#x}"
                );
            }
        }
        // All ones: the largest sums fold without overflow.
        let ones = vec![0xffu8; 65_535];
        assert_eq!(fold(ones_sum(&ones, u32::MAX)), fold64(reference_sum(&ones, u32::MAX as u64)));
        // A sum over pieces equals the sum over the whole when the pieces are even.
        let data: Vec<u8> = (0..1000).map(|_| next() as u8).collect();
        assert_eq!(fold(ones_sum(&data[500..], ones_sum(&data[..500], 0))), fold(ones_sum(&data, 0)));
    }

    #[test]
    fn rewrites_keep_checksums_valid() {
        let cases: &[(u8, Field, u128)] = &[
            (ip_proto::TCP, Field::Ipv4Src, 0xc0a8_0101),
            (ip_proto::TCP, Field::Ipv4Dst, 0x0102_0304),
            (ip_proto::TCP, Field::TpSrc, 40000),
            (ip_proto::TCP, Field::TpDst, 8080),
            (ip_proto::UDP, Field::Ipv4Src, 0xc0a8_0101),
            (ip_proto::UDP, Field::TpDst, 53),
            (ip_proto::TCP, Field::NwTtl, 3),
            (ip_proto::TCP, Field::IpDscp, 10),
            (ip_proto::TCP, Field::IpEcn, 1),
            (ip_proto::ICMP, Field::IcmpType, 0),
            (ip_proto::ICMP, Field::IcmpCode, 3),
            (ip_proto::ICMP, Field::Ipv4Dst, 0x0a0a_0a0a),
        ];
        for &(proto, field, value) in cases {
            let mut f = ipv4_frame(proto, 0x0a00_0001, 0x0a00_0002, 1234, 80, b"some payload!");
            assert!(checksums_valid(&f));
            let o = offsets(&f);
            write_field(&mut f, &o, field, value);
            let mut k = FlowKey::ZERO;
            parse_frame(&f, &mut k);
            assert_eq!(k.get(field), value, "{field:?}");
            assert!(checksums_valid(&f), "{field:?} on proto {proto} broke a checksum");
        }
    }

    #[test]
    fn icmpv6_in_ipv4_follows_address_rewrites() {
        // Nonsense on the wire, but found by fuzzing: the checksum the frame carries
        // covers the pseudo-header, so it must track the rewritten address.
        let mut f = ipv4_frame(ip_proto::ICMP, 1, 2, 0, 0, b"abcd");
        f[14 + 9] = ip_proto::ICMPV6;
        fill_checksums(&mut f);
        assert!(checksums_valid(&f));
        let o = offsets(&f);
        write_field(&mut f, &o, Field::Ipv4Src, 0x6440_0001);
        assert!(checksums_valid(&f));
    }

    #[test]
    fn udp_without_checksum_stays_without() {
        let mut f = ipv4_frame(ip_proto::UDP, 1, 2, 3, 4, b"x");
        f[34 + 6] = 0;
        f[34 + 7] = 0;
        let o = offsets(&f);
        write_field(&mut f, &o, Field::Ipv4Src, 99);
        assert_eq!(&f[40..42], &[0, 0]);
        assert!(checksums_valid(&f));
    }

    #[test]
    fn vlan_push_pop_round_trip() {
        let orig = ipv4_frame(ip_proto::TCP, 1, 2, 3, 4, b"abc");
        let mut f = orig.clone();
        let mut o = offsets(&f);
        assert!(push_vlan(&mut f, &mut o, 0x2064 | VLAN_PRESENT));
        assert_eq!(o, offsets(&f));
        let mut k = FlowKey::ZERO;
        parse_frame(&f, &mut k);
        assert_eq!(k.get(Field::VlanTci), (0x2064 | VLAN_PRESENT) as u128);
        assert_eq!(k.get(Field::TpDst), 4);
        assert!(!push_vlan(&mut f, &mut o, 5));
        assert!(pop_vlan(&mut f, &mut o));
        assert_eq!(f, orig);
        assert!(!pop_vlan(&mut f, &mut o));
    }

    #[test]
    fn csum_update_matches_recompute() {
        let data = [0x45u8, 0x00, 0x00, 0x54, 0x12, 0x34, 0x40, 0x00, 0x40, 0x01, 0, 0];
        let c0 = checksum(&data, 0);
        let mut d2 = data;
        d2[8] = 0x3f;
        let c1 = checksum(&d2, 0);
        assert_eq!(csum_update16(c0, 0x4001, 0x3f01), c1);
    }

    #[test]
    fn crc32c_known_vector() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }
}
