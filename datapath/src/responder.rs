//! Packets the datapath answers itself instead of forwarding: ARP replies, ICMP and ICMPv6
//! echo replies, and ICMP/ICMPv6 errors. The error builder here is also what
//! [`crate::geneve::frag_needed`] and [`crate::geneve::packet_too_big_v6`] use, so the
//! RFC 1122/1812/4443 rules on when *not* to answer live in one place.
//!
//! Requests are untrusted input: every builder returns `None` for anything it does not
//! fully understand, never panics and never reads out of bounds. Every answer goes back
//! to the Ethernet source of the request and keeps its VLAN tag, so the caller can send
//! it out of the port the request came in on.

use crate::key::{FRAG_ANY, FRAG_LATER, Field, FlowKey, eth_type, ip_proto};
use crate::packet::{checksum, ones_sum};
use crate::parse::{ABSENT, HeaderOffsets, L3, parse_frame};

/// TTL (IPv4) or hop limit (IPv6) of every packet the responders originate.
pub const RESPONSE_TTL: u8 = 64;

/// Largest IPv6 packet an ICMPv6 error may be (RFC 4443 §2.4 (c)): the IPv6 minimum
/// MTU, so that the error itself is never too big for any path.
pub const ICMPV6_ERROR_MAX: usize = 1280;

/// Bytes of the invoking datagram's payload an ICMPv4 error quotes after its IP header
/// (RFC 792): enough for the source to find the transport ports.
const ICMPV4_QUOTE_PAYLOAD: usize = 8;

/// DSCP CS6 ("internetwork control"), the precedence RFC 1812 §4.3.2.5 gives ICMP errors,
/// so that they are not dropped ahead of ordinary traffic on a congested path.
const TOS_INTERNETWORK_CONTROL: u8 = 0xc0;

/// Length of an Ethernet/IPv4 ARP packet.
const ARP_LEN: usize = 28;

#[inline]
fn rd16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline]
fn rd32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline]
fn rd128(b: &[u8], at: usize) -> u128 {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    u128::from_be_bytes(a)
}

/// The fields of an IPv4 header that differ between the packets the datapath builds.
pub(crate) struct Ipv4Fields {
    /// DSCP and ECN byte.
    pub tos: u8,
    /// Identification.
    pub id: u16,
    /// Don't Fragment.
    pub df: bool,
    /// Time to live.
    pub ttl: u8,
    /// Protocol of the payload.
    pub proto: u8,
    /// Source address.
    pub src: u32,
    /// Destination address.
    pub dst: u32,
}

/// Appends a 20-byte IPv4 header with a valid checksum. `total_len` includes the header.
pub(crate) fn push_ipv4(out: &mut Vec<u8>, h: &Ipv4Fields, total_len: u16) {
    let start = out.len();
    out.extend_from_slice(&[0x45, h.tos]);
    out.extend_from_slice(&total_len.to_be_bytes());
    out.extend_from_slice(&h.id.to_be_bytes());
    out.extend_from_slice(&[if h.df { 0x40 } else { 0 }, 0, h.ttl, h.proto, 0, 0]);
    out.extend_from_slice(&h.src.to_be_bytes());
    out.extend_from_slice(&h.dst.to_be_bytes());
    let c = checksum(&out[start..start + 20], 0);
    out[start + 10..start + 12].copy_from_slice(&c.to_be_bytes());
}

/// Appends a 40-byte IPv6 header (traffic class and flow label zero).
fn push_ipv6(out: &mut Vec<u8>, payload_len: u16, next: u8, src: u128, dst: u128) {
    out.extend_from_slice(&[0x60, 0, 0, 0]);
    out.extend_from_slice(&payload_len.to_be_bytes());
    out.extend_from_slice(&[next, RESPONSE_TTL]);
    out.extend_from_slice(&src.to_be_bytes());
    out.extend_from_slice(&dst.to_be_bytes());
}

/// Appends the Ethernet header of an answer to `frame`: to its source, from `src`, with
/// its VLAN tag if it has one (the caller guarantees a parsed Ethernet header).
fn push_eth_reply(out: &mut Vec<u8>, frame: &[u8], o: &HeaderOffsets, src: [u8; 6], ty: u16) {
    out.extend_from_slice(&frame[6..12]);
    out.extend_from_slice(&src);
    if o.eth_type == 16 {
        out.extend_from_slice(&frame[12..16]);
    }
    out.extend_from_slice(&ty.to_be_bytes());
}

/// The ICMPv6 checksum of `msg` sent from `src` to `dst` (RFC 8200 §8.1 pseudo-header).
fn icmpv6_checksum(src: u128, dst: u128, msg: &[u8]) -> u16 {
    let mut pseudo = [0u8; 40];
    pseudo[..16].copy_from_slice(&src.to_be_bytes());
    pseudo[16..32].copy_from_slice(&dst.to_be_bytes());
    pseudo[32..36].copy_from_slice(&(msg.len() as u32).to_be_bytes());
    pseudo[39] = ip_proto::ICMPV6;
    checksum(msg, ones_sum(&pseudo, 0))
}

/// True for an Ethernet group (multicast or broadcast) address.
#[inline]
fn is_group_mac(first_octet: u8) -> bool {
    first_octet & 1 != 0
}

/// True if `a` may be the source of a datagram that gets an ICMP error: not "this
/// network" 0/8, not loopback 127/8, not multicast 224/4, not class E 240/4 (which holds
/// the limited broadcast) — RFC 1812 §4.3.2.7.
fn is_unicast_source_v4(a: u32) -> bool {
    let first = (a >> 24) as u8;
    first != 0 && first != 127 && first < 224
}

/// True for IPv4 multicast (224/4) and the limited broadcast address.
fn is_group_v4(a: u32) -> bool {
    (a >> 28) == 0xe || a == u32::MAX
}

/// True for IPv6 multicast (ff00::/8).
fn is_multicast_v6(a: u128) -> bool {
    (a >> 120) == 0xff
}

/// ICMPv4 types that are error messages (RFC 1812 §4.3.2.7: never answer one with another).
fn is_icmpv4_error(ty: u8) -> bool {
    matches!(ty, 3 | 4 | 5 | 11 | 12)
}

/// IPv6 extension headers: a chain the parser left at one of these was cut short.
fn is_ipv6_extension(next: u8) -> bool {
    matches!(next, 0 | 43 | 44 | 51 | 60)
}

/// Which ICMP error to build; the kind decides the address family and the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IcmpError {
    /// IPv4 destination unreachable, fragmentation needed (type 3 code 4), next-hop MTU.
    FragNeeded(u16),
    /// ICMPv6 packet too big (type 2), MTU.
    PacketTooBig(u32),
    /// Time exceeded in transit: ICMPv4 type 11 or ICMPv6 type 3, code 0.
    TimeExceeded,
    /// Port unreachable: ICMPv4 type 3 code 3 or ICMPv6 type 1 code 4.
    PortUnreachable,
}

/// Builds the ICMP error `kind` about `frame`, from `router_mac` and `router_ip` (IPv4) or
/// `router_ip6` (IPv6), back to the frame's source — or `None` where RFC 1122 §3.2.2,
/// RFC 1812 §4.3.2.7 and RFC 4443 §2.4 (e) forbid an error, or the frame cannot be
/// understood well enough to tell.
pub(crate) fn icmp_error(
    frame: &[u8],
    kind: IcmpError,
    router_mac: [u8; 6],
    router_ip: u32,
    router_ip6: u128,
) -> Option<Vec<u8>> {
    let mut key = FlowKey::ZERO;
    let o = parse_frame(frame, &mut key);
    // An Ethernet group address can never be a source: nobody to answer.
    if o.l3 == ABSENT || is_group_mac(frame[6]) {
        return None;
    }
    match (o.l3_kind, kind) {
        (L3::Ipv4, IcmpError::FragNeeded(_) | IcmpError::TimeExceeded | IcmpError::PortUnreachable) => {
            icmpv4_error(frame, &o, &key, kind, router_mac, router_ip)
        }
        (L3::Ipv6, IcmpError::PacketTooBig(_) | IcmpError::TimeExceeded | IcmpError::PortUnreachable) => {
            icmpv6_error(frame, &o, &key, kind, router_mac, router_ip6)
        }
        _ => None,
    }
}

fn icmpv4_error(
    frame: &[u8],
    o: &HeaderOffsets,
    key: &FlowKey,
    kind: IcmpError,
    router_mac: [u8; 6],
    router_ip: u32,
) -> Option<Vec<u8>> {
    let l3 = o.l3 as usize;
    // The parser only reports IPv4 with the whole header present and total ≥ IHL.
    let ihl = ((frame[l3] & 0x0f) as usize) * 4;
    let total = rd16(frame, l3 + 2) as usize;
    let frag = rd16(frame, l3 + 6);
    let src = rd32(frame, l3 + 12);
    let dst = rd32(frame, l3 + 16);
    if frag & 0x1fff != 0
        || is_group_mac(frame[0])
        || is_group_v4(dst)
        || !is_unicast_source_v4(src)
        || is_icmp_error_or_unknown(frame, o, key, ip_proto::ICMP)
    {
        return None;
    }
    let (ty, code, rest) = match kind {
        IcmpError::FragNeeded(mtu) => {
            // Without DF the datagram may be fragmented: the caller fragments (or drops).
            if frag & 0x4000 == 0 {
                return None;
            }
            let m = mtu.to_be_bytes();
            (3, 4, [0, 0, m[0], m[1]])
        }
        IcmpError::TimeExceeded => (11, 0, [0; 4]),
        IcmpError::PortUnreachable => (3, 3, [0; 4]),
        IcmpError::PacketTooBig(_) => return None,
    };
    let ip_end = frame.len().min(l3 + total);
    let quote = &frame[l3..ip_end.min(l3 + ihl + ICMPV4_QUOTE_PAYLOAD)];
    let icmp_len = 8 + quote.len();
    let mut out = Vec::with_capacity(18 + 20 + icmp_len);
    push_eth_reply(&mut out, frame, o, router_mac, eth_type::IPV4);
    let ip = Ipv4Fields {
        tos: TOS_INTERNETWORK_CONTROL,
        id: 0,
        // Atomic (RFC 6864), so an ID of 0 is fine; the error is at most 96 bytes.
        df: true,
        ttl: RESPONSE_TTL,
        proto: ip_proto::ICMP,
        src: router_ip,
        dst: src,
    };
    // At most 20 + 8 + 60 + 8 bytes: fits.
    push_ipv4(&mut out, &ip, (20 + icmp_len) as u16);
    let icmp = out.len();
    out.extend_from_slice(&[ty, code, 0, 0]);
    out.extend_from_slice(&rest);
    out.extend_from_slice(quote);
    let c = checksum(&out[icmp..], 0);
    out[icmp + 2..icmp + 4].copy_from_slice(&c.to_be_bytes());
    Some(out)
}

fn icmpv6_error(
    frame: &[u8],
    o: &HeaderOffsets,
    key: &FlowKey,
    kind: IcmpError,
    router_mac: [u8; 6],
    router_ip6: u128,
) -> Option<Vec<u8>> {
    let l3 = o.l3 as usize;
    let payload_len = rd16(frame, l3 + 4) as usize;
    let src = rd128(frame, l3 + 8);
    let dst = rd128(frame, l3 + 24);
    // Packet Too Big goes even to a multicast destination, so that path MTU discovery
    // works for multicast (RFC 4443 §2.4 (e.3), (e.4)); time exceeded does not.
    let multicast_ok = matches!(kind, IcmpError::PacketTooBig(_));
    if (!multicast_ok && (is_group_mac(frame[0]) || is_multicast_v6(dst)))
        || src == 0
        || src == 1
        || is_multicast_v6(src)
        || key.get(Field::NwFrag) as u8 & FRAG_LATER != 0
        || is_icmp_error_or_unknown(frame, o, key, ip_proto::ICMPV6)
    {
        return None;
    }
    let (ty, code, rest) = match kind {
        IcmpError::PacketTooBig(mtu) => (2, 0, mtu.to_be_bytes()),
        IcmpError::TimeExceeded => (3, 0, [0; 4]),
        IcmpError::PortUnreachable => (1, 4, [0; 4]),
        IcmpError::FragNeeded(_) => return None,
    };
    let ip_end = frame.len().min(l3 + 40 + payload_len);
    let quote = &frame[l3..ip_end.min(l3 + ICMPV6_ERROR_MAX - 40 - 8)];
    let icmp_len = 8 + quote.len();
    let mut out = Vec::with_capacity(18 + 40 + icmp_len);
    push_eth_reply(&mut out, frame, o, router_mac, eth_type::IPV6);
    // At most 1240 bytes: fits.
    push_ipv6(&mut out, icmp_len as u16, ip_proto::ICMPV6, router_ip6, src);
    let icmp = out.len();
    out.extend_from_slice(&[ty, code, 0, 0]);
    out.extend_from_slice(&rest);
    out.extend_from_slice(quote);
    let c = icmpv6_checksum(router_ip6, src, &out[icmp..]);
    out[icmp + 2..icmp + 4].copy_from_slice(&c.to_be_bytes());
    Some(out)
}

/// True if the frame carries an ICMP (`icmp` = [`ip_proto::ICMP`]) or ICMPv6 error, or
/// might (its upper layer could not be found): RFC 1812 and RFC 4443 forbid answering an
/// error with an error, and when in doubt staying silent is the safe side. An ICMPv6
/// Redirect counts as an error (RFC 4443 §2.4 (e.2)).
fn is_icmp_error_or_unknown(frame: &[u8], o: &HeaderOffsets, key: &FlowKey, icmp: u8) -> bool {
    let proto = key.get(Field::NwProto) as u8;
    if icmp == ip_proto::ICMPV6 && is_ipv6_extension(proto) {
        return true;
    }
    // A later fragment has no ICMP header to look at; callers refuse those anyway.
    if proto != icmp || key.get(Field::NwFrag) as u8 & FRAG_LATER != 0 {
        return false;
    }
    if o.l4 == ABSENT {
        return true;
    }
    let ty = frame[o.l4 as usize];
    if icmp == ip_proto::ICMP { is_icmpv4_error(ty) } else { ty < 128 || ty == 137 }
}

/// The ARP reply to an Ethernet/IPv4 ARP request (opcode 1) saying "the requested address
/// (`tpa`) is at `mac`": Ethernet to the requester from `mac`, `sha` = `mac`, `spa` = the
/// request's `tpa`, `tha`/`tpa` = the requester's `sha`/`spa`; a VLAN tag is kept.
///
/// `None` for anything else, and for a request from an Ethernet group address. Which
/// addresses to answer for is the pipeline's decision (it matches `arp_tpa`); this only
/// builds the bytes. The reply is not padded to 60 bytes: the port that sends it does
/// that, as for any short frame.
pub fn arp_reply(request: &[u8], mac: [u8; 6]) -> Option<Vec<u8>> {
    let mut key = FlowKey::ZERO;
    let o = parse_frame(request, &mut key);
    // The parser reports ARP only for a complete Ethernet/IPv4 ARP header.
    if o.l3_kind != L3::Arp || is_group_mac(request[6]) {
        return None;
    }
    let arp = o.l3 as usize;
    if rd16(request, arp + 6) != 1 {
        return None;
    }
    let mut out = Vec::with_capacity(18 + ARP_LEN);
    push_eth_reply(&mut out, request, &o, mac, eth_type::ARP);
    out.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
    out.extend_from_slice(&mac);
    out.extend_from_slice(&request[arp + 24..arp + 28]);
    out.extend_from_slice(&request[arp + 8..arp + 18]);
    Some(out)
}

/// The echo reply to an ICMP echo request (IPv4 type 8 → type 0) or ICMPv6 echo request
/// (128 → 129): MAC and IP addresses swapped, TTL/hop limit [`RESPONSE_TTL`], identifier,
/// sequence number and data unchanged, checksums valid.
///
/// `None` for anything else, and also for: a request with a bad IPv4 header or ICMP
/// checksum (as a host would drop it), a fragment (answering needs reassembly), a request
/// to a multicast or broadcast address (there is no unicast address to answer from), or
/// from one. IPv4 options and IPv6 extension headers are not reflected: the reply has a
/// plain 20- or 40-byte header (RFC 1122 §3.2.2.6 only says a host *should* echo record
/// route and timestamp options).
pub fn icmp_echo_reply(request: &[u8]) -> Option<Vec<u8>> {
    let mut key = FlowKey::ZERO;
    let o = parse_frame(request, &mut key);
    if o.l4 == ABSENT || key.get(Field::NwFrag) as u8 & FRAG_ANY != 0 || is_group_mac(request[6]) {
        return None;
    }
    // ABSENT was ruled out: l3 and l4 are real offsets.
    let (l3, l4) = (o.l3 as usize, o.l4 as usize);
    match (o.l3_kind, o.l4_proto) {
        (L3::Ipv4, ip_proto::ICMP) => echo_reply_v4(request, &o, l3, l4),
        (L3::Ipv6, ip_proto::ICMPV6) => echo_reply_v6(request, &o, l3, l4),
        _ => None,
    }
}

fn echo_reply_v4(request: &[u8], o: &HeaderOffsets, l3: usize, l4: usize) -> Option<Vec<u8>> {
    let ihl = ((request[l3] & 0x0f) as usize) * 4;
    let ip_end = l3 + rd16(request, l3 + 2) as usize;
    let src = rd32(request, l3 + 12);
    let dst = rd32(request, l3 + 16);
    if ip_end > request.len()
        || ip_end < l4 + 8
        || request[l4] != 8
        || checksum(&request[l3..l3 + ihl], 0) != 0
        || checksum(&request[l4..ip_end], 0) != 0
        || !is_unicast_source_v4(src)
        || !is_unicast_source_v4(dst)
    {
        return None;
    }
    let msg = &request[l4..ip_end];
    let mut out = Vec::with_capacity(18 + 20 + msg.len());
    out.extend_from_slice(&request[6..12]);
    out.extend_from_slice(&request[0..6]);
    out.extend_from_slice(&request[12..o.eth_type as usize + 2]);
    let ip = Ipv4Fields {
        tos: request[l3 + 1],
        id: rd16(request, l3 + 4),
        // The reply is as big as the request was, so the request's DF choice fits it.
        df: request[l3 + 6] & 0x40 != 0,
        ttl: RESPONSE_TTL,
        proto: ip_proto::ICMP,
        src: dst,
        dst: src,
    };
    // No longer than the request's own total length.
    push_ipv4(&mut out, &ip, (20 + msg.len()) as u16);
    let icmp = out.len();
    out.extend_from_slice(msg);
    out[icmp] = 0;
    out[icmp + 1] = 0;
    out[icmp + 2] = 0;
    out[icmp + 3] = 0;
    let c = checksum(&out[icmp..], 0);
    out[icmp + 2..icmp + 4].copy_from_slice(&c.to_be_bytes());
    Some(out)
}

fn echo_reply_v6(request: &[u8], o: &HeaderOffsets, l3: usize, l4: usize) -> Option<Vec<u8>> {
    let ip_end = l3 + 40 + rd16(request, l3 + 4) as usize;
    let src = rd128(request, l3 + 8);
    let dst = rd128(request, l3 + 24);
    if ip_end > request.len()
        || ip_end < l4 + 8
        || request[l4] != 128
        || icmpv6_checksum(src, dst, &request[l4..ip_end]) != 0
        || src == 0
        || is_multicast_v6(src)
        || is_multicast_v6(dst)
    {
        return None;
    }
    let msg = &request[l4..ip_end];
    let mut out = Vec::with_capacity(18 + 40 + msg.len());
    out.extend_from_slice(&request[6..12]);
    out.extend_from_slice(&request[0..6]);
    out.extend_from_slice(&request[12..o.eth_type as usize + 2]);
    // The message is shorter than the request's payload: fits.
    push_ipv6(&mut out, msg.len() as u16, ip_proto::ICMPV6, dst, src);
    let icmp = out.len();
    out.extend_from_slice(msg);
    out[icmp] = 129;
    out[icmp + 1] = 0;
    out[icmp + 2] = 0;
    out[icmp + 3] = 0;
    let c = icmpv6_checksum(dst, src, &out[icmp..]);
    out[icmp + 2..icmp + 4].copy_from_slice(&c.to_be_bytes());
    Some(out)
}

/// The "time exceeded in transit" error for a frame whose TTL (IPv4) or hop limit (IPv6)
/// ran out: ICMP type 11 code 0 quoting the IP header and 8 bytes of payload, or ICMPv6
/// type 3 code 0 quoting as much of the packet as fits in 1280 bytes; from `router_mac`
/// and `router_ip` / `router_ip6` back to the frame's source, VLAN tag kept.
///
/// `None` where no error may be sent: the frame is not IP, is an ICMP error (or an
/// ICMPv6 redirect) or might be one, is a fragment other than the first, is sent to a
/// multicast or broadcast address (IP or Ethernet), or comes from an address that is not
/// one host's (0/8, 127/8, 224/4, 240/4; `::`, `::1`, ff00::/8). A directed subnet
/// broadcast cannot be recognised here; the pipeline, which knows the subnets, must not
/// ask for it.
pub fn time_exceeded(frame: &[u8], router_mac: [u8; 6], router_ip: u32, router_ip6: u128) -> Option<Vec<u8>> {
    icmp_error(frame, IcmpError::TimeExceeded, router_mac, router_ip, router_ip6)
}

/// ICMP / ICMPv6 port unreachable about `frame`, sent as if by its destination (address
/// and MAC): how a Service with no endpoints refuses a non-TCP client. `None` under the
/// same rules as [`time_exceeded`].
pub fn port_unreachable(frame: &[u8]) -> Option<Vec<u8>> {
    let mut key = FlowKey::ZERO;
    let o = parse_frame(frame, &mut key);
    let mac: [u8; 6] = frame.get(0..6)?.try_into().ok()?;
    let (v4, v6) = match o.l3_kind {
        L3::Ipv4 => (key.get(Field::Ipv4Dst) as u32, 0),
        L3::Ipv6 => (0, key.get(Field::Ipv6Dst)),
        _ => return None,
    };
    icmp_error(frame, IcmpError::PortUnreachable, mac, v4, v6)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::packet::checksums_valid;
    use crate::parse::tests::ipv4_frame;

    pub(crate) const ROUTER_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x01];
    pub(crate) const ROUTER_IP: u32 = 0x0af4_0101;
    pub(crate) const ROUTER_IP6: u128 = 0xfd00_0000_0000_0000_0000_0000_0000_0001;
    pub(crate) const HOST6_A: u128 = 0xfd00_0000_0000_0000_0000_0000_0000_00aa;
    pub(crate) const HOST6_B: u128 = 0xfd00_0000_0000_0000_0000_0000_0000_00bb;

    /// An Ethernet/IPv6 frame with `ext` extension-header bytes (first one named by
    /// `first_next`) before an L4 header of protocol `proto` + `l4` bytes, with a valid
    /// ICMPv6/UDP/TCP checksum.
    pub(crate) fn ipv6_frame(src: u128, dst: u128, first_next: u8, ext: &[u8], proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut f = vec![0x0a, 0x58, 0, 0, 0, 0xbb, 0x0a, 0x58, 0, 0, 0, 0xaa];
        f.extend_from_slice(&eth_type::IPV6.to_be_bytes());
        let payload = ext.len() + l4.len();
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&(payload as u16).to_be_bytes());
        f.extend_from_slice(&[if ext.is_empty() { proto } else { first_next }, 9]);
        f.extend_from_slice(&src.to_be_bytes());
        f.extend_from_slice(&dst.to_be_bytes());
        f.extend_from_slice(ext);
        f.extend_from_slice(l4);
        crate::packet::fill_checksums(&mut f);
        f
    }

    fn ipv4_icmp(src: u32, dst: u32, ty: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = ipv4_frame(ip_proto::ICMP, src, dst, 0, 0, payload);
        f[34] = ty;
        crate::packet::fill_checksums(&mut f);
        f
    }

    fn arp_request(tag: Option<[u8; 2]>, op: u16) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05]);
        if let Some(tci) = tag {
            f.extend_from_slice(&[0x81, 0x00, tci[0], tci[1]]);
        }
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4]);
        f.extend_from_slice(&op.to_be_bytes());
        f.extend_from_slice(&[0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05, 10, 244, 1, 5]);
        f.extend_from_slice(&[0, 0, 0, 0, 0, 0, 10, 244, 1, 1]);
        f.resize(f.len().max(60), 0);
        f
    }

    fn parsed(f: &[u8]) -> (FlowKey, HeaderOffsets) {
        let mut k = FlowKey::ZERO;
        let o = parse_frame(f, &mut k);
        (k, o)
    }

    #[test]
    fn arp_reply_answers_a_request() {
        let req = arp_request(None, 1);
        let r = arp_reply(&req, ROUTER_MAC).expect("reply");
        assert_eq!(r.len(), 14 + ARP_LEN);
        assert_eq!(&r[0..6], &req[6..12], "to the requester");
        assert_eq!(&r[6..12], &ROUTER_MAC);
        let (k, o) = parsed(&r);
        assert_eq!(o.l3_kind, L3::Arp);
        assert_eq!(k.get(Field::ArpOp), 2);
        assert_eq!(k.get(Field::ArpSha), 0x0a58_0af4_0101);
        assert_eq!(k.get(Field::ArpSpa), 0x0af4_0101);
        assert_eq!(k.get(Field::ArpTha), 0x0a58_0af4_0105);
        assert_eq!(k.get(Field::ArpTpa), 0x0af4_0105);
    }

    #[test]
    fn arp_reply_keeps_the_vlan_tag() {
        let req = arp_request(Some([0x20, 0x64]), 1);
        let r = arp_reply(&req, ROUTER_MAC).expect("reply");
        assert_eq!(r.len(), 18 + ARP_LEN);
        assert_eq!(&r[12..16], &[0x81, 0x00, 0x20, 0x64]);
        let (k, o) = parsed(&r);
        assert_eq!(o.eth_type, 16);
        assert_eq!(k.get(Field::ArpOp), 2);
        assert_eq!(k.get(Field::ArpSpa), 0x0af4_0101);
        assert_eq!(k.get(Field::ArpTpa), 0x0af4_0105);
        assert_eq!(&r[0..6], &[0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05]);
    }

    #[test]
    fn arp_reply_ignores_everything_else() {
        assert_eq!(arp_reply(&arp_request(None, 2), ROUTER_MAC), None, "a reply");
        assert_eq!(arp_reply(&arp_request(None, 0x0101), ROUTER_MAC), None, "an odd opcode");
        let mut rarp = arp_request(None, 1);
        rarp[12..14].copy_from_slice(&[0x80, 0x35]);
        assert_eq!(arp_reply(&rarp, ROUTER_MAC), None, "not ARP");
        let mut ipv6_arp = arp_request(None, 1);
        ipv6_arp[16..18].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(arp_reply(&ipv6_arp, ROUTER_MAC), None, "not IPv4 ARP");
        let mut group_src = arp_request(None, 1);
        group_src[6] = 0x01;
        assert_eq!(arp_reply(&group_src, ROUTER_MAC), None, "group source MAC");
        let req = arp_request(None, 1);
        for n in 0..14 + ARP_LEN {
            assert_eq!(arp_reply(&req[..n], ROUTER_MAC), None, "truncated at {n}");
        }
        let tcp = ipv4_frame(ip_proto::TCP, 1, 2, 3, 4, b"");
        assert_eq!(arp_reply(&tcp, ROUTER_MAC), None);
    }

    #[test]
    fn echo_reply_v4_swaps_and_keeps_checksums() {
        let req = ipv4_icmp(0x0af4_0105, 0x0af4_0101, 8, b"\x12\x34\x00\x07ping data");
        assert!(checksums_valid(&req));
        let r = icmp_echo_reply(&req).expect("reply");
        assert!(checksums_valid(&r));
        assert_eq!(&r[0..6], &req[6..12]);
        assert_eq!(&r[6..12], &req[0..6]);
        let (k, o) = parsed(&r);
        assert_eq!(k.get(Field::Ipv4Src), 0x0af4_0101);
        assert_eq!(k.get(Field::Ipv4Dst), 0x0af4_0105);
        assert_eq!(k.get(Field::NwTtl), RESPONSE_TTL as u128);
        assert_eq!(k.get(Field::IcmpType), 0);
        assert_eq!(k.get(Field::IcmpCode), 0);
        assert_eq!(&r[o.l4 as usize + 4..], &req[38..], "id, sequence and data unchanged");
    }

    #[test]
    fn echo_reply_v4_drops_padding_and_options() {
        let mut req = ipv4_icmp(0x0af4_0105, 0x0af4_0101, 8, b"\0\x01\0\x02");
        // An IP header with a 4-byte option (NOP NOP NOP EOL), then Ethernet padding.
        req.splice(34..34, [1, 1, 1, 0]);
        req[14] = 0x46;
        let total = rd16(&req, 16) + 4;
        req[16..18].copy_from_slice(&total.to_be_bytes());
        crate::packet::fill_checksums(&mut req);
        req.resize(80, 0xee);
        let r = icmp_echo_reply(&req).expect("reply");
        assert_eq!(r.len(), 14 + 20 + 8 + 4);
        assert_eq!(r[14], 0x45);
        assert!(checksums_valid(&r));
    }

    #[test]
    fn echo_reply_v6() {
        let icmp = [128, 0, 0, 0, 0xab, 0xcd, 0, 1, b'h', b'i', b'!'];
        let req = ipv6_frame(HOST6_A, HOST6_B, 0, &[], ip_proto::ICMPV6, &icmp);
        assert!(checksums_valid(&req));
        let r = icmp_echo_reply(&req).expect("reply");
        assert!(checksums_valid(&r));
        let (k, o) = parsed(&r);
        assert_eq!(k.get(Field::Ipv6Src), HOST6_B);
        assert_eq!(k.get(Field::Ipv6Dst), HOST6_A);
        assert_eq!(k.get(Field::IcmpType), 129);
        assert_eq!(k.get(Field::NwTtl), RESPONSE_TTL as u128);
        assert_eq!(&r[o.l4 as usize + 4..], &icmp[4..]);
        assert_eq!(&r[0..6], &req[6..12]);
    }

    #[test]
    fn echo_reply_v6_behind_an_extension_header() {
        let icmp = [128, 0, 0, 0, 0, 9, 0, 9];
        let hop_by_hop = [ip_proto::ICMPV6, 0, 1, 4, 0, 0, 0, 0];
        let req = ipv6_frame(HOST6_A, HOST6_B, 0, &hop_by_hop, ip_proto::ICMPV6, &icmp);
        assert!(checksums_valid(&req));
        let r = icmp_echo_reply(&req).expect("reply");
        assert_eq!(r.len(), 14 + 40 + 8);
        assert_eq!(r[20], ip_proto::ICMPV6, "extension headers are not reflected");
        assert!(checksums_valid(&r));
    }

    #[test]
    fn echo_reply_refuses() {
        let good = ipv4_icmp(0x0af4_0105, 0x0af4_0101, 8, b"\0\x01\0\x02");
        assert!(icmp_echo_reply(&good).is_some());
        let reply = ipv4_icmp(0x0af4_0105, 0x0af4_0101, 0, b"\0\x01\0\x02");
        assert_eq!(icmp_echo_reply(&reply), None, "an echo reply");
        let mut bad_sum = good.clone();
        bad_sum[40] ^= 1;
        assert_eq!(icmp_echo_reply(&bad_sum), None, "bad ICMP checksum");
        let mut bad_ip_sum = good.clone();
        bad_ip_sum[22] ^= 1;
        assert_eq!(icmp_echo_reply(&bad_ip_sum), None, "bad IPv4 header checksum");
        let bcast = ipv4_icmp(0x0af4_0105, 0xffff_ffff, 8, b"\0\x01\0\x02");
        assert_eq!(icmp_echo_reply(&bcast), None, "broadcast destination");
        let mcast = ipv4_icmp(0x0af4_0105, 0xe000_0001, 8, b"\0\x01\0\x02");
        assert_eq!(icmp_echo_reply(&mcast), None, "multicast destination");
        let mut frag = good.clone();
        frag[20] = 0x20;
        crate::packet::fill_checksums(&mut frag);
        assert_eq!(icmp_echo_reply(&frag), None, "first fragment");
        let short = ipv4_icmp(0x0af4_0105, 0x0af4_0101, 8, b"");
        assert_eq!(icmp_echo_reply(&short[..short.len() - 2]), None, "truncated");
        let udp = ipv4_frame(ip_proto::UDP, 1, 2, 3, 4, b"");
        assert_eq!(icmp_echo_reply(&udp), None, "UDP");
        let v6_to_mcast =
            ipv6_frame(HOST6_A, (0xff02 << 112) | 1, 0, &[], ip_proto::ICMPV6, &[128, 0, 0, 0, 0, 1, 0, 1]);
        assert_eq!(icmp_echo_reply(&v6_to_mcast), None, "IPv6 multicast destination");
        let v6_reply = ipv6_frame(HOST6_A, HOST6_B, 0, &[], ip_proto::ICMPV6, &[129, 0, 0, 0, 0, 1, 0, 1]);
        assert_eq!(icmp_echo_reply(&v6_reply), None, "ICMPv6 echo reply");
        for n in 0..good.len() {
            assert_eq!(icmp_echo_reply(&good[..n]), None, "truncated at {n}");
        }
    }

    #[test]
    fn time_exceeded_v4_quotes_header_and_eight_bytes() {
        let f = ipv4_frame(ip_proto::UDP, 0x0af4_0105, 0x0af4_0209, 5353, 53, b"a long enough payload");
        let e = time_exceeded(&f, ROUTER_MAC, ROUTER_IP, ROUTER_IP6).expect("error");
        assert!(checksums_valid(&e));
        assert_eq!(&e[0..6], &f[6..12]);
        assert_eq!(&e[6..12], &ROUTER_MAC);
        let (k, o) = parsed(&e);
        assert_eq!(k.get(Field::Ipv4Src), ROUTER_IP as u128);
        assert_eq!(k.get(Field::Ipv4Dst), 0x0af4_0105);
        assert_eq!(k.get(Field::NwTtl), 64);
        assert_eq!(k.get(Field::IcmpType), 11);
        assert_eq!(k.get(Field::IcmpCode), 0);
        assert_eq!(&e[o.l4 as usize + 4..o.l4 as usize + 8], &[0; 4]);
        assert_eq!(&e[o.l4 as usize + 8..], &f[14..14 + 28]);
    }

    #[test]
    fn time_exceeded_v6_quotes_up_to_1280_bytes() {
        let small = ipv6_frame(HOST6_A, HOST6_B, 0, &[], ip_proto::UDP, &[0, 1, 0, 2, 0, 12, 0, 0, 1, 2, 3, 4]);
        let e = time_exceeded(&small, ROUTER_MAC, ROUTER_IP, ROUTER_IP6).expect("error");
        assert!(checksums_valid(&e));
        let (k, o) = parsed(&e);
        assert_eq!(k.get(Field::Ipv6Src), ROUTER_IP6);
        assert_eq!(k.get(Field::Ipv6Dst), HOST6_A);
        assert_eq!(k.get(Field::IcmpType), 3);
        assert_eq!(k.get(Field::IcmpCode), 0);
        assert_eq!(&e[o.l4 as usize + 8..], &small[14..], "the whole small packet");

        let mut udp = vec![0u8; 1500 - 40];
        udp[0..8].copy_from_slice(&[0, 1, 0, 2, 0x05, 0xb4, 0, 0]);
        for (i, b) in udp[8..].iter_mut().enumerate() {
            *b = i as u8;
        }
        let big = ipv6_frame(HOST6_A, HOST6_B, 0, &[], ip_proto::UDP, &udp);
        let e = time_exceeded(&big, ROUTER_MAC, ROUTER_IP, ROUTER_IP6).expect("error");
        assert_eq!(e.len() - 14, ICMPV6_ERROR_MAX);
        assert!(checksums_valid(&e));
        assert_eq!(&e[14 + 48..], &big[14..14 + ICMPV6_ERROR_MAX - 48]);
    }

    #[test]
    fn time_exceeded_keeps_vlan_tag() {
        let mut f = ipv4_frame(ip_proto::TCP, 0x0af4_0105, 0x0af4_0209, 1, 2, b"");
        f.splice(12..12, [0x81, 0x00, 0x00, 0x07]);
        let e = time_exceeded(&f, ROUTER_MAC, ROUTER_IP, ROUTER_IP6).expect("error");
        assert_eq!(&e[12..16], &[0x81, 0x00, 0x00, 0x07]);
        assert!(checksums_valid(&e));
        assert_eq!(parsed(&e).1.l3, 18);
    }

    #[test]
    fn time_exceeded_stays_silent_where_the_rfcs_say_so() {
        let none = |f: &[u8], why: &str| {
            assert_eq!(time_exceeded(f, ROUTER_MAC, ROUTER_IP, ROUTER_IP6), None, "{why}");
        };
        for ty in [3, 4, 5, 11, 12] {
            none(&ipv4_icmp(0x0af4_0105, 0x0af4_0209, ty, b"quoted header"), "ICMP error");
        }
        // Queries are answered.
        let echo = ipv4_icmp(0x0af4_0105, 0x0af4_0209, 8, b"");
        assert!(time_exceeded(&echo, ROUTER_MAC, ROUTER_IP, ROUTER_IP6).is_some());
        let icmp_truncated = ipv4_icmp(0x0af4_0105, 0x0af4_0209, 8, b"");
        none(&icmp_truncated[..14 + 20 + 2], "ICMP type unknown");
        let mut later = ipv4_frame(ip_proto::UDP, 0x0af4_0105, 0x0af4_0209, 1, 2, b"xxxxxxxx");
        later[20..22].copy_from_slice(&[0x00, 0x10]);
        none(&later, "later fragment");
        let mut first = ipv4_frame(ip_proto::UDP, 0x0af4_0105, 0x0af4_0209, 1, 2, b"xxxxxxxx");
        first[20..22].copy_from_slice(&[0x20, 0x00]);
        assert!(time_exceeded(&first, ROUTER_MAC, ROUTER_IP, ROUTER_IP6).is_some(), "first fragment");
        for dst in [0xffff_ffff, 0xe000_00fb, 0xefff_fffa] {
            none(&ipv4_frame(ip_proto::UDP, 0x0af4_0105, dst, 1, 2, b""), "group destination");
        }
        for src in [0, 0x0000_0001, 0x7f00_0001, 0xe000_0001, 0xf000_0001, 0xffff_ffff] {
            none(&ipv4_frame(ip_proto::UDP, src, 0x0af4_0209, 1, 2, b""), "not one host's source");
        }
        let mut eth_bcast = ipv4_frame(ip_proto::UDP, 0x0af4_0105, 0x0af4_0209, 1, 2, b"");
        eth_bcast[0..6].copy_from_slice(&[0xff; 6]);
        none(&eth_bcast, "link-layer broadcast");
        let mut eth_group_src = ipv4_frame(ip_proto::UDP, 0x0af4_0105, 0x0af4_0209, 1, 2, b"");
        eth_group_src[6] |= 1;
        none(&eth_group_src, "group source MAC");
        none(&arp_request(None, 1), "ARP");
        none(&[], "empty");
        let tcp = ipv4_frame(ip_proto::TCP, 0x0af4_0105, 0x0af4_0209, 1, 2, b"");
        none(&tcp[..14 + 19], "truncated IPv4 header");

        let icmp6_err = ipv6_frame(HOST6_A, HOST6_B, 0, &[], ip_proto::ICMPV6, &[1, 4, 0, 0, 0, 0, 0, 0]);
        none(&icmp6_err, "ICMPv6 error");
        let redirect = ipv6_frame(HOST6_A, HOST6_B, 0, &[], ip_proto::ICMPV6, &[137, 0, 0, 0, 0, 0, 0, 0]);
        none(&redirect, "ICMPv6 redirect");
        let udp6 = [0, 1, 0, 2, 0, 8, 0, 0];
        none(&ipv6_frame(HOST6_A, (0xff02 << 112) | 1, 0, &[], ip_proto::UDP, &udp6), "multicast destination");
        none(&ipv6_frame(0, HOST6_B, 0, &[], ip_proto::UDP, &udp6), "unspecified source");
        none(&ipv6_frame(1, HOST6_B, 0, &[], ip_proto::UDP, &udp6), "loopback source");
        none(&ipv6_frame((0xff02 << 112) | 1, HOST6_B, 0, &[], ip_proto::UDP, &udp6), "multicast source");
        let later6 = [ip_proto::UDP, 0, 0x00, 0x08, 0, 0, 0, 1];
        none(&ipv6_frame(HOST6_A, HOST6_B, 44, &later6, ip_proto::UDP, &udp6), "later IPv6 fragment");
        let first6 = [ip_proto::UDP, 0, 0x00, 0x01, 0, 0, 0, 1];
        let f = ipv6_frame(HOST6_A, HOST6_B, 44, &first6, ip_proto::UDP, &udp6);
        assert!(time_exceeded(&f, ROUTER_MAC, ROUTER_IP, ROUTER_IP6).is_some(), "first IPv6 fragment");
        // A hop-by-hop header cut short: the upper layer could be an ICMPv6 error.
        let cut = ipv6_frame(HOST6_A, HOST6_B, 0, &[ip_proto::ICMPV6, 0, 1, 4, 0, 0, 0, 0], ip_proto::ICMPV6, &[]);
        none(&cut[..14 + 40 + 1], "unfinished extension chain");
    }

    #[test]
    fn port_unreachable_comes_from_the_destination() {
        let f = ipv4_frame(ip_proto::UDP, 0x0af4_0105, 0x0a60_000a, 5000, 53, b"query");
        let r = port_unreachable(&f).expect("answer");
        let (k, o) = parsed(&r);
        assert_eq!(k.get(Field::Ipv4Src), 0x0a60_000a);
        assert_eq!(k.get(Field::Ipv4Dst), 0x0af4_0105);
        assert_eq!((k.get(Field::IcmpType), k.get(Field::IcmpCode)), (3, 3));
        assert_eq!(&r[0..6], &f[6..12]);
        assert_eq!(&r[6..12], &f[0..6]);
        assert!(checksums_valid(&r));
        // The quote is the original IP header and 8 bytes of UDP.
        assert_eq!(&r[o.l4 as usize + 8..], &f[14..14 + 28]);
        // Never about an ICMP error.
        assert!(port_unreachable(&r).is_none());
    }

    #[test]
    fn every_prefix_of_a_request_is_safe() {
        let frames = [
            ipv4_icmp(0x0af4_0105, 0x0af4_0101, 8, b"\0\x01\0\x02abc"),
            ipv6_frame(HOST6_A, HOST6_B, 0, &[], ip_proto::ICMPV6, &[128, 0, 0, 0, 0, 1, 0, 1]),
            arp_request(Some([0, 5]), 1),
        ];
        for f in &frames {
            for n in 0..=f.len() {
                let g = &f[..n];
                let _ = arp_reply(g, ROUTER_MAC);
                for out in
                    [icmp_echo_reply(g), time_exceeded(g, ROUTER_MAC, ROUTER_IP, ROUTER_IP6)].into_iter().flatten()
                {
                    assert!(checksums_valid(&out));
                }
            }
        }
    }
}
