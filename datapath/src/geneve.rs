//! Geneve tunnels (RFC 8926) in Skein's wire format, which is OVN's: encapsulation,
//! decapsulation, the outer source port that spreads flows over ECMP paths, and the ICMP
//! errors that tell a pod its packet will not fit in the tunnel.
//!
//! Decapsulation takes untrusted input: it checks every length, never panics, never
//! reads out of bounds and never allocates. See `docs/geneve.md` for the byte layout.

use thiserror::Error;

use crate::key::{FRAG_ANY, Field, FlowKey, eth_type, ip_proto};
use crate::packet::checksum;
use crate::parse::{L3, parse_frame};
use crate::responder::{IcmpError, Ipv4Fields, icmp_error, push_ipv4};

/// UDP destination port of Geneve (IANA).
pub const GENEVE_PORT: u16 = 6081;

/// Geneve protocol type of the inner frame: Transparent Ethernet Bridging.
pub const PROTO_TYPE_ETHERNET: u16 = 0x6558;

/// Option class of Skein's (OVN's) port-key option.
pub const SKEIN_OPTION_CLASS: u16 = 0x0102;

/// Option type of Skein's port-key option. Its high bit is RFC 8926's "critical" bit: an
/// endpoint that does not know the option must drop the packet rather than deliver it
/// without knowing which port it is for.
pub const SKEIN_OPTION_TYPE: u8 = 0x80;

/// Option class of Skein's identity option: RFC 8926's range for experimental use
/// (0xFF00–0xFFFF), since it is Skein's own, not OVN's.
pub const IDENTITY_OPTION_CLASS: u16 = 0xff01;

/// Option type of Skein's identity option. Not critical: a receiver that does not know
/// it (one that enforces no NetworkPolicy) may ignore it.
pub const IDENTITY_OPTION_TYPE: u8 = 0x01;

/// Bytes the identity option adds when a packet carries one.
pub const IDENTITY_OPTION_LEN: usize = 8;

/// The first egress port key that names a multicast group rather than a port: keys
/// 32768–65535 are groups, as in OVN. Decapsulation passes them through like any key;
/// the pipeline tells them apart.
pub const FIRST_MULTICAST_EGRESS: u16 = 32768;

/// Largest ingress port key: the option gives it 15 bits.
pub const MAX_INGRESS_KEY: u16 = 0x7fff;

/// Largest VNI (datapath key): 24 bits.
pub const MAX_VNI: u32 = 0x00ff_ffff;

/// Geneve header as Skein sends it: the 8-byte base header plus the 8-byte port-key
/// option.
pub const GENEVE_HEADER_LEN: usize = 16;

/// The outer UDP source port is `SOURCE_PORT_BASE + entropy % 16384`: the IANA dynamic
/// range 49152–65535, as RFC 8926 §3.3 recommends.
pub const SOURCE_PORT_BASE: u16 = 49152;

/// Bytes [`encap`] puts in front of the inner Ethernet frame: outer Ethernet 14 + IPv4 20 +
/// UDP 8 + Geneve 8 + option 8 = 58.
///
/// The same figure is the MTU budget, counted from the other end. An MTU counts IP bytes,
/// not the Ethernet header of its own link. The underlay's IP packet carries IPv4 20 + UDP
/// 8 + Geneve 8 + option 8 + the *inner* Ethernet header 14 + the pod's IP packet, so
/// pod MTU ≤ underlay MTU − 58 (1442 on a 1500-byte underlay); the outer and inner
/// Ethernet headers trade places. An inner VLAN tag would cost 4 bytes more; Skein's pod
/// ports are untagged.
pub const ENCAP_OVERHEAD_V4: usize = 58;

const ETH_LEN: usize = 14;
const IPV4_LEN: usize = 20;
const UDP_LEN: usize = 8;

const _: () = assert!(ETH_LEN + IPV4_LEN + UDP_LEN + GENEVE_HEADER_LEN == ENCAP_OVERHEAD_V4);

/// Bytes [`encap`] puts in front of an inner frame that carries an identity: the
/// identity option's 8 more than [`ENCAP_OVERHEAD_V4`]. While NetworkPolicies are in use
/// pod traffic carries one, so pod MTU ≤ underlay MTU − 66.
pub const ENCAP_OVERHEAD_V4_IDENTITY: usize = ENCAP_OVERHEAD_V4 + IDENTITY_OPTION_LEN;

/// The encapsulation overhead of a packet with `identity` (0: none).
pub fn encap_overhead_v4(identity: u32) -> usize {
    if identity == 0 { ENCAP_OVERHEAD_V4 } else { ENCAP_OVERHEAD_V4_IDENTITY }
}

/// Largest inner frame that fits in one outer IPv4 datagram (total length is 16 bits);
/// 8 bytes less with the identity option.
pub const MAX_INNER_FRAME: usize = u16::MAX as usize - IPV4_LEN - UDP_LEN - GENEVE_HEADER_LEN;
/// Geneve flags: O (OAM) bit.
const FLAG_OAM: u8 = 0x80;
/// Geneve flags: C (critical options present) bit. Skein's option is critical, so Skein
/// sets it, as Open vSwitch does for OVN.
const FLAG_CRITICAL: u8 = 0x40;
/// Option type bit that marks an option critical.
const OPTION_CRITICAL: u8 = 0x80;

/// What decapsulation found in a Geneve header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GeneveHeader {
    /// Virtual network identifier: the 24-bit datapath key.
    pub vni: u32,
    /// Logical ingress port key (15 bits).
    pub ingress: u16,
    /// Logical egress port key; 32768 and above name multicast groups.
    pub egress: u16,
    /// The identity option's data (0: no option).
    pub identity: u32,
}

/// Tunnel metadata of a decapsulated frame: the Geneve fields plus the outer addresses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TunnelMeta {
    /// Virtual network identifier: the 24-bit datapath key.
    pub vni: u32,
    /// Outer IPv4 source (host order): the sending chassis.
    pub src: u32,
    /// Outer IPv4 destination (host order): this chassis.
    pub dst: u32,
    /// Logical ingress port key (15 bits).
    pub ingress: u16,
    /// Logical egress port key; 32768 and above name multicast groups.
    pub egress: u16,
    /// The identity option's data (0: no option).
    pub identity: u32,
}

impl TunnelMeta {
    /// Writes the metadata into the tunnel fields of a flow key (`tun_id`, `tun_src`,
    /// `tun_dst`, `tun_ingress_port`, `tun_egress_port`, `tun_identity`), which the
    /// pipeline matches on.
    pub fn write_key(&self, key: &mut FlowKey) {
        key.set(Field::TunId, self.vni as u128);
        key.set(Field::TunSrc, self.src as u128);
        key.set(Field::TunDst, self.dst as u128);
        key.set(Field::TunIngressPort, self.ingress as u128);
        key.set(Field::TunEgressPort, self.egress as u128);
        key.set(Field::TunIdentity, self.identity as u128);
    }
}

/// Everything [`encap`] needs besides the inner frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncapParams {
    /// Outer Ethernet source: this chassis's underlay interface.
    pub outer_eth_src: [u8; 6],
    /// Outer Ethernet destination: the next hop towards `dst` on the underlay.
    pub outer_eth_dst: [u8; 6],
    /// Outer IPv4 source (host order): this chassis's tunnel IP.
    pub src: u32,
    /// Outer IPv4 destination (host order): the remote chassis's tunnel IP.
    pub dst: u32,
    /// Outer TTL (Open vSwitch's default is 64).
    pub ttl: u8,
    /// Virtual network identifier: the 24-bit datapath key.
    pub vni: u32,
    /// Logical ingress port key, at most [`MAX_INGRESS_KEY`].
    pub ingress: u16,
    /// Logical egress port key (or multicast group, from [`FIRST_MULTICAST_EGRESS`]).
    pub egress: u16,
    /// Data of the identity option (0: the option is left out).
    pub identity: u32,
}

/// Why a frame could not be encapsulated or decapsulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum GeneveError {
    /// truncated {layer}: {need} bytes needed, {have} present
    #[error("truncated {layer}: {need} bytes needed, {have} present")]
    Truncated {
        /// The header or part that does not fit.
        layer: &'static str,
        /// Bytes it needs, counted from the start of the input.
        need: usize,
        /// Bytes the input has.
        have: usize,
    },
    /// outer frame is not IPv4: Ethernet type {ether_type:#06x}
    #[error("outer frame is not IPv4: Ethernet type {ether_type:#06x}")]
    NotIpv4 {
        /// The Ethernet type found.
        ether_type: u16,
    },
    /// bad outer IPv4 header: version/IHL byte {version_ihl:#04x}
    #[error("bad outer IPv4 header: version/IHL byte {version_ihl:#04x}")]
    BadIpv4Header {
        /// The first byte of the header.
        version_ihl: u8,
    },
    /// bad outer IPv4 header checksum {checksum:#06x}
    #[error("bad outer IPv4 header checksum {checksum:#06x}")]
    BadIpv4Checksum {
        /// The checksum the header carries.
        checksum: u16,
    },
    /// outer IPv4 total length {total_len} is shorter than its {header_len}-byte header
    #[error("outer IPv4 total length {total_len} is shorter than its {header_len}-byte header")]
    BadIpv4Length {
        /// The total length field.
        total_len: u16,
        /// The header length from the IHL field.
        header_len: usize,
    },
    /// outer IPv4 packet is a fragment (offset {offset}, more fragments: {more}); reassemble it first
    #[error("outer IPv4 packet is a fragment (offset {offset}, more fragments: {more}); reassemble it first")]
    Fragment {
        /// Fragment offset in bytes.
        offset: u16,
        /// The "more fragments" flag.
        more: bool,
    },
    /// outer IPv4 packet is not UDP: protocol {protocol}
    #[error("outer IPv4 packet is not UDP: protocol {protocol}")]
    NotUdp {
        /// The IP protocol number found.
        protocol: u8,
    },
    /// UDP destination port {port} is not Geneve's 6081
    #[error("UDP destination port {port} is not Geneve's 6081")]
    NotGenevePort {
        /// The destination port found.
        port: u16,
    },
    /// UDP length {udp_len} does not fit the {ip_payload}-byte IPv4 payload
    #[error("UDP length {udp_len} does not fit the {ip_payload}-byte IPv4 payload")]
    BadUdpLength {
        /// The UDP length field.
        udp_len: u16,
        /// Bytes of IPv4 payload.
        ip_payload: usize,
    },
    /// {extra} bytes follow the UDP datagram in the frame
    #[error("{extra} bytes follow the UDP datagram in the frame")]
    TrailingBytes {
        /// Bytes after the end of the UDP datagram.
        extra: usize,
    },
    /// unsupported Geneve version {version}
    #[error("unsupported Geneve version {version}")]
    BadVersion {
        /// The version field.
        version: u8,
    },
    /// Geneve OAM packet (O bit set): control traffic, not a frame to forward
    #[error("Geneve OAM packet (O bit set): control traffic, not a frame to forward")]
    Oam,
    /// Geneve protocol type {protocol:#06x} is not Ethernet (0x6558)
    #[error("Geneve protocol type {protocol:#06x} is not Ethernet (0x6558)")]
    NotEthernet {
        /// The protocol type found.
        protocol: u16,
    },
    /// Geneve option class {class:#06x} type {option_type:#04x}: {len} data bytes overrun the options area ({room} bytes left)
    #[error(
        "Geneve option class {class:#06x} type {option_type:#04x}: {len} data bytes overrun the options area ({room} bytes left)"
    )]
    OptionOverrun {
        /// The option's class.
        class: u16,
        /// The option's type.
        option_type: u8,
        /// The option's data length in bytes.
        len: usize,
        /// Bytes left in the options area after the option's own 4-byte header.
        room: usize,
    },
    /// unknown critical Geneve option class {class:#06x} type {option_type:#04x}
    #[error("unknown critical Geneve option class {class:#06x} type {option_type:#04x}")]
    UnknownCriticalOption {
        /// The option's class.
        class: u16,
        /// The option's type.
        option_type: u8,
    },
    /// Skein port-key option has {len} data bytes, expected 4
    #[error("Skein port-key option has {len} data bytes, expected 4")]
    BadSkeinOption {
        /// The option's data length in bytes.
        len: usize,
    },
    /// Skein identity option has {len} data bytes, expected 4
    #[error("Skein identity option has {len} data bytes, expected 4")]
    BadIdentityOption {
        /// The option's data length in bytes.
        len: usize,
    },
    /// Skein identity option appears more than once
    #[error("Skein identity option appears more than once")]
    DuplicateIdentityOption,
    /// Skein port-key option appears more than once
    #[error("Skein port-key option appears more than once")]
    DuplicateSkeinOption,
    /// Skein port-key option (class 0x0102, type 0x80) is missing
    #[error("Skein port-key option (class 0x0102, type 0x80) is missing")]
    MissingSkeinOption,
    /// inner frame of {len} bytes cannot be encapsulated (14 to 65491 bytes, 65483 with an identity)
    #[error("inner frame of {len} bytes cannot be encapsulated (14 to 65491 bytes, 65483 with an identity)")]
    BadInnerLength {
        /// The inner frame's length.
        len: usize,
    },
    /// VNI {vni:#x} does not fit in 24 bits
    #[error("VNI {vni:#x} does not fit in 24 bits")]
    VniTooWide {
        /// The VNI asked for.
        vni: u32,
    },
    /// ingress port key {key} does not fit in 15 bits
    #[error("ingress port key {key} does not fit in 15 bits")]
    IngressKeyTooWide {
        /// The key asked for.
        key: u16,
    },
}

const _: () = assert!(MAX_INNER_FRAME == 65491);

#[inline]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline]
fn need(b: &[u8], len: usize, layer: &'static str) -> Result<(), GeneveError> {
    if b.len() < len { Err(GeneveError::Truncated { layer, need: len, have: b.len() }) } else { Ok(()) }
}

/// Encapsulates the Ethernet frame `inner` into `out` (cleared first; its capacity is
/// reused): outer Ethernet, IPv4, UDP to port 6081, Geneve with Skein's option (and the
/// identity option if `p.identity` is not 0), then `inner` unchanged —
/// [`encap_overhead_v4`] bytes in front of it.
///
/// The outer UDP source port is `49152 + entropy % 16384`; pass
/// [`inner_flow_entropy`] of the frame so that one inner flow keeps one outer port (and
/// one ECMP path) while different flows spread. The outer IPv4 header has DF set (the
/// underlay must not fragment; oversized inner packets get [`frag_needed`] instead), ID 0
/// (RFC 6864: an atomic datagram's ID means nothing), DSCP 0 and a valid checksum. The UDP
/// checksum is 0, as Open vSwitch and Linux send Geneve over IPv4 by default: the inner
/// frame carries its own checksums end to end, and the outer IPv4 header has one.
///
/// Errors: an inner frame shorter than an Ethernet header or longer than
/// [`MAX_INNER_FRAME`], a VNI over 24 bits, an ingress key over 15 bits.
pub fn encap(inner: &[u8], p: &EncapParams, entropy: u32, out: &mut Vec<u8>) -> Result<(), GeneveError> {
    let room = if p.identity == 0 { MAX_INNER_FRAME } else { MAX_INNER_FRAME - IDENTITY_OPTION_LEN };
    if inner.len() < ETH_LEN || inner.len() > room {
        return Err(GeneveError::BadInnerLength { len: inner.len() });
    }
    if p.vni > MAX_VNI {
        return Err(GeneveError::VniTooWide { vni: p.vni });
    }
    if p.ingress > MAX_INGRESS_KEY {
        return Err(GeneveError::IngressKeyTooWide { key: p.ingress });
    }
    let opt_len = GENEVE_HEADER_LEN - 8 + if p.identity == 0 { 0 } else { IDENTITY_OPTION_LEN };
    out.clear();
    out.reserve(ENCAP_OVERHEAD_V4 + IDENTITY_OPTION_LEN + inner.len());
    out.extend_from_slice(&p.outer_eth_dst);
    out.extend_from_slice(&p.outer_eth_src);
    out.extend_from_slice(&eth_type::IPV4.to_be_bytes());
    // Both lengths were bounded by the MAX_INNER_FRAME check.
    let udp_len = (UDP_LEN + 8 + opt_len + inner.len()) as u16;
    let ip = Ipv4Fields { tos: 0, id: 0, df: true, ttl: p.ttl, proto: ip_proto::UDP, src: p.src, dst: p.dst };
    push_ipv4(out, &ip, IPV4_LEN as u16 + udp_len);
    let sport = SOURCE_PORT_BASE + (entropy % 16384) as u16;
    out.extend_from_slice(&sport.to_be_bytes());
    out.extend_from_slice(&GENEVE_PORT.to_be_bytes());
    out.extend_from_slice(&udp_len.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    let vni = p.vni.to_be_bytes();
    out.extend_from_slice(&[(opt_len / 4) as u8, FLAG_CRITICAL]);
    out.extend_from_slice(&PROTO_TYPE_ETHERNET.to_be_bytes());
    out.extend_from_slice(&[vni[1], vni[2], vni[3], 0]);
    out.extend_from_slice(&SKEIN_OPTION_CLASS.to_be_bytes());
    // Option length is counted in 4-byte words: 1.
    out.extend_from_slice(&[SKEIN_OPTION_TYPE, 1]);
    let data = ((p.ingress as u32) << 16) | p.egress as u32;
    out.extend_from_slice(&data.to_be_bytes());
    if p.identity != 0 {
        out.extend_from_slice(&IDENTITY_OPTION_CLASS.to_be_bytes());
        out.extend_from_slice(&[IDENTITY_OPTION_TYPE, 1]);
        out.extend_from_slice(&p.identity.to_be_bytes());
    }
    out.extend_from_slice(inner);
    Ok(())
}

/// A hash of the inner frame's flow — IP (or ARP) addresses, IP protocol and L4 ports —
/// for [`encap`]'s outer source port, so that all packets of one inner flow take one
/// ECMP path (no reordering) and different flows spread over paths.
///
/// Fragments hash without ports, since only the first one carries them: every fragment
/// of a datagram takes the same path. A frame without an IP or ARP header hashes its
/// Ethernet addresses and type.
pub fn inner_flow_entropy(inner: &[u8]) -> u32 {
    let mut key = FlowKey::ZERO;
    let o = parse_frame(inner, &mut key);
    let words = if o.l3_kind == L3::None {
        [key.get(Field::EthDst) as u64, key.get(Field::EthSrc) as u64, key.get(Field::EthType) as u64, 0, 0, 0]
    } else {
        let ports = if key.get(Field::NwFrag) as u8 & FRAG_ANY != 0 {
            0
        } else {
            ((key.get(Field::TpSrc) << 16) | key.get(Field::TpDst)) as u64
        };
        let v6_src = key.get(Field::Ipv6Src);
        let v6_dst = key.get(Field::Ipv6Dst);
        [
            ((key.get(Field::Ipv4Src) << 32) | key.get(Field::Ipv4Dst)) as u64,
            (v6_src >> 64) as u64,
            v6_src as u64,
            (v6_dst >> 64) as u64,
            v6_dst as u64,
            ((key.get(Field::NwProto) as u64) << 32) | ports,
        ]
    };
    let h = crate::hash::hash_words(0x6081_6558, &words);
    (h ^ (h >> 32)) as u32
}

/// Decapsulates a full outer frame as an Ethernet port receives it: Ethernet (one
/// optional 802.1Q or 802.1ad tag), IPv4 (options allowed, header checksum verified, no
/// fragments), UDP to port 6081, Geneve. Returns the tunnel metadata and the offset of the
/// inner Ethernet frame, which runs to the end of `frame`.
///
/// The frame must end where the UDP datagram ends: a Geneve frame is never short enough
/// for Ethernet padding, so extra bytes mean a malformed frame (or a trailing FCS, which
/// ports must not pass up). A non-zero UDP checksum is not verified here: the port knows
/// whether the NIC or kernel already has, and the inner frame carries its own checksums.
/// Checking that `dst` is this chassis is the caller's job. The Geneve rules are those
/// of [`decap_payload`].
pub fn decap(frame: &[u8]) -> Result<(TunnelMeta, usize), GeneveError> {
    need(frame, ETH_LEN, "Ethernet header")?;
    let mut ether_type = be16(frame, 12);
    let mut l3 = ETH_LEN;
    if ether_type == eth_type::VLAN || ether_type == eth_type::QINQ {
        need(frame, ETH_LEN + 4, "VLAN tag")?;
        ether_type = be16(frame, 16);
        l3 += 4;
    }
    if ether_type != eth_type::IPV4 {
        return Err(GeneveError::NotIpv4 { ether_type });
    }
    need(frame, l3 + IPV4_LEN, "IPv4 header")?;
    let version_ihl = frame[l3];
    let header_len = ((version_ihl & 0x0f) as usize) * 4;
    if version_ihl >> 4 != 4 || header_len < IPV4_LEN {
        return Err(GeneveError::BadIpv4Header { version_ihl });
    }
    need(frame, l3 + header_len, "IPv4 options")?;
    if checksum(&frame[l3..l3 + header_len], 0) != 0 {
        return Err(GeneveError::BadIpv4Checksum { checksum: be16(frame, l3 + 10) });
    }
    let total_len = be16(frame, l3 + 2);
    if (total_len as usize) < header_len {
        return Err(GeneveError::BadIpv4Length { total_len, header_len });
    }
    let ip_end = l3 + total_len as usize;
    need(frame, ip_end, "IPv4 packet")?;
    let frag = be16(frame, l3 + 6);
    if frag & 0x3fff != 0 {
        return Err(GeneveError::Fragment { offset: (frag & 0x1fff) << 3, more: frag & 0x2000 != 0 });
    }
    let protocol = frame[l3 + 9];
    if protocol != ip_proto::UDP {
        return Err(GeneveError::NotUdp { protocol });
    }
    let udp = l3 + header_len;
    if ip_end < udp + UDP_LEN {
        return Err(GeneveError::Truncated { layer: "UDP header", need: udp + UDP_LEN, have: ip_end });
    }
    let port = be16(frame, udp + 2);
    if port != GENEVE_PORT {
        return Err(GeneveError::NotGenevePort { port });
    }
    let udp_len = be16(frame, udp + 4);
    let udp_end = udp + udp_len as usize;
    if (udp_len as usize) < UDP_LEN || udp_end > ip_end {
        return Err(GeneveError::BadUdpLength { udp_len, ip_payload: ip_end - udp });
    }
    if udp_end < frame.len() {
        return Err(GeneveError::TrailingBytes { extra: frame.len() - udp_end });
    }
    let payload = udp + UDP_LEN;
    let (h, inner) = decap_payload(&frame[payload..])?;
    let src = u32::from_be_bytes([frame[l3 + 12], frame[l3 + 13], frame[l3 + 14], frame[l3 + 15]]);
    let dst = u32::from_be_bytes([frame[l3 + 16], frame[l3 + 17], frame[l3 + 18], frame[l3 + 19]]);
    Ok((
        TunnelMeta { vni: h.vni, src, dst, ingress: h.ingress, egress: h.egress, identity: h.identity },
        payload + inner,
    ))
}

/// Decapsulates a UDP payload as a UDP socket on port 6081 receives it. Returns the
/// Geneve fields and the offset of the inner Ethernet frame (at least 14 bytes), which
/// runs to the end of `udp_payload`.
///
/// RFC 8926 rules: the version must be 0; OAM packets (O bit) are refused with an error
/// of their own so that they can be counted apart; the protocol type must be Ethernet;
/// every option must lie inside the options area; an unknown option with the critical
/// bit is an error (the endpoint must drop the packet), an unknown non-critical one is
/// skipped. Skein's option must appear exactly once with 4 data bytes; its top bit is
/// reserved and ignored, as OVN ignores it. Skein's identity option may appear once, with
/// 4 data bytes.
pub fn decap_payload(udp_payload: &[u8]) -> Result<(GeneveHeader, usize), GeneveError> {
    let p = udp_payload;
    need(p, 8, "Geneve header")?;
    let version = p[0] >> 6;
    if version != 0 {
        return Err(GeneveError::BadVersion { version });
    }
    if p[1] & FLAG_OAM != 0 {
        return Err(GeneveError::Oam);
    }
    let protocol = be16(p, 2);
    if protocol != PROTO_TYPE_ETHERNET {
        return Err(GeneveError::NotEthernet { protocol });
    }
    let header_len = 8 + ((p[0] & 0x3f) as usize) * 4;
    need(p, header_len, "Geneve options")?;
    let vni = u32::from_be_bytes([0, p[4], p[5], p[6]]);
    let mut port_keys = None;
    let mut identity = None;
    let mut at = 8;
    // Options are whole 4-byte words and so is the area: a header always fits.
    while at + 4 <= header_len {
        let class = be16(p, at);
        let option_type = p[at + 2];
        let len = ((p[at + 3] & 0x1f) as usize) * 4;
        let data = at + 4;
        if data + len > header_len {
            return Err(GeneveError::OptionOverrun { class, option_type, len, room: header_len - data });
        }
        if class == SKEIN_OPTION_CLASS && option_type == SKEIN_OPTION_TYPE {
            if len != 4 {
                return Err(GeneveError::BadSkeinOption { len });
            }
            if port_keys.is_some() {
                return Err(GeneveError::DuplicateSkeinOption);
            }
            port_keys = Some(u32::from_be_bytes([p[data], p[data + 1], p[data + 2], p[data + 3]]));
        } else if class == IDENTITY_OPTION_CLASS && option_type == IDENTITY_OPTION_TYPE {
            if len != 4 {
                return Err(GeneveError::BadIdentityOption { len });
            }
            if identity.is_some() {
                return Err(GeneveError::DuplicateIdentityOption);
            }
            identity = Some(u32::from_be_bytes([p[data], p[data + 1], p[data + 2], p[data + 3]]));
        } else if option_type & OPTION_CRITICAL != 0 {
            return Err(GeneveError::UnknownCriticalOption { class, option_type });
        }
        at = data + len;
    }
    let keys = port_keys.ok_or(GeneveError::MissingSkeinOption)?;
    need(p, header_len + ETH_LEN, "inner Ethernet header")?;
    let h = GeneveHeader {
        vni,
        ingress: (keys >> 16) as u16 & MAX_INGRESS_KEY,
        egress: keys as u16,
        identity: identity.unwrap_or(0),
    };
    Ok((h, header_len))
}

/// The ICMP "destination unreachable, fragmentation needed" (type 3 code 4, RFC 1191) for
/// an IPv4 frame too big for the next hop, whose MTU is `mtu`: from `router_mac` and
/// `router_ip` back to the frame's source (Ethernet and IP), TTL 64, quoting the original
/// IP header and the first 8 bytes of its payload, every checksum valid, VLAN tag kept.
///
/// `None` when no such error may be sent. DF clear: the datagram may be fragmented, so
/// the caller fragments it (or drops it, counting the drop) instead. Also, as RFC 1122
/// §3.2.2 and RFC 1812 §4.3.2.7 say: the frame is not IPv4; it is an ICMP error, or its
/// ICMP type cannot be read; it is a fragment other than the first; its destination is
/// multicast or broadcast (IP or Ethernet); its source is not one host's (0/8, 127/8,
/// 224/4, 240/4, or an Ethernet group address).
pub fn frag_needed(frame: &[u8], mtu: u16, router_mac: [u8; 6], router_ip: u32) -> Option<Vec<u8>> {
    icmp_error(frame, IcmpError::FragNeeded(mtu), router_mac, router_ip, 0)
}

/// The ICMPv6 "packet too big" (type 2 code 0, RFC 4443 §3.2) for an IPv6 frame larger
/// than `mtu`: from `router_mac` and `router_ip` back to the frame's source, hop limit 64,
/// carrying as much of the original packet as fits in a 1280-byte IPv6 packet, ICMPv6
/// checksum valid, VLAN tag kept.
///
/// `None` when RFC 4443 §2.4 (e) forbids it: the frame is not IPv6; it is an ICMPv6 error
/// or redirect, or its upper layer cannot be found; its source is `::`, `::1` or
/// multicast, or an Ethernet group address. Unlike other errors, Packet Too Big is sent
/// for multicast destinations too, so that path MTU discovery works for multicast. A
/// fragment other than the first gets none (it cannot be told apart from a fragment of
/// an ICMPv6 error, and the first fragment, never smaller, gets one).
pub fn packet_too_big_v6(frame: &[u8], mtu: u32, router_mac: [u8; 6], router_ip: u128) -> Option<Vec<u8>> {
    icmp_error(frame, IcmpError::PacketTooBig(mtu), router_mac, 0, router_ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{checksums_valid, fill_checksums};
    use crate::parse::tests::ipv4_frame;
    use crate::responder::tests::{HOST6_A, HOST6_B, ROUTER_IP, ROUTER_IP6, ROUTER_MAC, ipv6_frame};

    const PARAMS: EncapParams = EncapParams {
        outer_eth_src: [0x02, 0, 0xc0, 0, 0x02, 0x0b],
        outer_eth_dst: [0x02, 0, 0xc0, 0, 0x02, 0x0c],
        src: 0xc000_020b,
        dst: 0xc000_020c,
        ttl: 64,
        vni: 0x00ab_cdef,
        ingress: 0x1234,
        egress: 0x8765,
        identity: 0,
    };

    fn inner_tcp() -> Vec<u8> {
        ipv4_frame(ip_proto::TCP, 0x0af4_0105, 0x0af4_0209, 43210, 80, b"GET / HTTP/1.1\r\n")
    }

    fn encapped(inner: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encap(inner, &PARAMS, inner_flow_entropy(inner), &mut out).expect("encap");
        out
    }

    fn err(frame: &[u8]) -> GeneveError {
        decap(frame).expect_err("decap should fail")
    }

    /// Rewrites the outer IPv4 header checksum after a test edits the header.
    fn fix_ip_checksum(f: &mut [u8]) {
        f[24..26].copy_from_slice(&[0, 0]);
        let c = checksum(&f[14..34], 0);
        f[24..26].copy_from_slice(&c.to_be_bytes());
    }

    /// Replaces the Geneve options of an encapsulated frame, fixing every length.
    fn with_options(f: &[u8], options: &[u8]) -> Vec<u8> {
        let mut g = f[..42 + 8].to_vec();
        g[42] = (g[42] & 0xc0) | (options.len() / 4) as u8;
        g.extend_from_slice(options);
        g.extend_from_slice(&f[42 + GENEVE_HEADER_LEN..]);
        let udp_len = (g.len() - 34) as u16;
        g[38..40].copy_from_slice(&udp_len.to_be_bytes());
        g[16..18].copy_from_slice(&(udp_len + 20).to_be_bytes());
        fix_ip_checksum(&mut g);
        g
    }

    #[test]
    fn encap_writes_every_field() {
        let inner = inner_tcp();
        let f = encapped(&inner);
        assert_eq!(f.len(), inner.len() + ENCAP_OVERHEAD_V4);
        assert_eq!(&f[0..6], &PARAMS.outer_eth_dst);
        assert_eq!(&f[6..12], &PARAMS.outer_eth_src);
        assert!(checksums_valid(&f));
        let mut k = FlowKey::ZERO;
        let o = parse_frame(&f, &mut k);
        assert_eq!(o.l3_kind, L3::Ipv4);
        assert_eq!(k.get(Field::Ipv4Src), PARAMS.src as u128);
        assert_eq!(k.get(Field::Ipv4Dst), PARAMS.dst as u128);
        assert_eq!(k.get(Field::NwProto), ip_proto::UDP as u128);
        assert_eq!(k.get(Field::NwTtl), 64);
        assert_eq!(k.get(Field::NwFrag), 0);
        assert_eq!(k.get(Field::TpDst), GENEVE_PORT as u128);
        let sport = k.get(Field::TpSrc) as u16;
        assert_eq!(sport, SOURCE_PORT_BASE + (inner_flow_entropy(&inner) % 16384) as u16);
        assert_eq!(&f[20..22], &[0x40, 0], "DF set, not a fragment");
        assert_eq!(be16(&f, 16) as usize, f.len() - 14, "IPv4 total length");
        assert_eq!(be16(&f, 38) as usize, f.len() - 34, "UDP length");
        assert_eq!(&f[40..42], &[0, 0], "no UDP checksum");
        assert_eq!(
            &f[42..58],
            &[0x02, 0x40, 0x65, 0x58, 0xab, 0xcd, 0xef, 0, 0x01, 0x02, 0x80, 0x01, 0x12, 0x34, 0x87, 0x65]
        );
        assert_eq!(&f[58..], &inner[..]);
    }

    #[test]
    fn decap_returns_what_encap_wrote() {
        for inner in [inner_tcp(), ipv4_frame(ip_proto::UDP, 1, 2, 3, 4, b""), vec![0x5a; 14]] {
            let f = encapped(&inner);
            let (m, off) = decap(&f).expect("decap");
            assert_eq!(off, ENCAP_OVERHEAD_V4);
            assert_eq!(&f[off..], &inner[..]);
            assert_eq!(
                m,
                TunnelMeta {
                    vni: PARAMS.vni,
                    src: PARAMS.src,
                    dst: PARAMS.dst,
                    ingress: PARAMS.ingress,
                    egress: PARAMS.egress,
                    identity: 0,
                }
            );
            let (h, inner_off) = decap_payload(&f[42..]).expect("decap_payload");
            assert_eq!(inner_off, GENEVE_HEADER_LEN);
            assert_eq!(
                h,
                GeneveHeader { vni: PARAMS.vni, ingress: PARAMS.ingress, egress: PARAMS.egress, identity: 0 }
            );
        }
    }

    #[test]
    fn the_identity_option_follows_the_port_keys_and_round_trips() {
        let inner = inner_tcp();
        let p = EncapParams { identity: 0x0100_5007, ..PARAMS };
        let mut f = Vec::new();
        encap(&inner, &p, 0, &mut f).unwrap();
        assert_eq!(f.len(), inner.len() + ENCAP_OVERHEAD_V4_IDENTITY);
        assert_eq!(f[42] & 0x3f, 4, "options: 4 words");
        assert_eq!(&f[58..66], &[0xff, 0x01, 0x01, 0x01, 0x01, 0x00, 0x50, 0x07]);
        assert!(checksums_valid(&f));
        let (m, off) = decap(&f).unwrap();
        assert_eq!((m.identity, off), (0x0100_5007, ENCAP_OVERHEAD_V4_IDENTITY));
        assert_eq!(&f[off..], &inner[..]);
        // Twice, or with the wrong length: refused.
        let opts = |o: &[u8]| {
            let mut g = f[..50].to_vec();
            g[42] = (g[42] & 0xc0) | ((8 + o.len()) / 4) as u8;
            g.extend_from_slice(&f[50..58]);
            g.extend_from_slice(o);
            g.extend_from_slice(&inner);
            g
        };
        let twice = opts(&[0xff, 1, 1, 1, 0, 0, 0, 1, 0xff, 1, 1, 1, 0, 0, 0, 2]);
        assert_eq!(decap_payload(&twice[42..]), Err(GeneveError::DuplicateIdentityOption));
        let long = opts(&[0xff, 1, 1, 2, 0, 0, 0, 1, 0, 0, 0, 2]);
        assert_eq!(decap_payload(&long[42..]), Err(GeneveError::BadIdentityOption { len: 8 }));
    }

    #[test]
    fn key_extremes_round_trip() {
        for (vni, ingress, egress) in [(0, 0, 0), (MAX_VNI, MAX_INGRESS_KEY, u16::MAX), (1, 1, FIRST_MULTICAST_EGRESS)]
        {
            let p = EncapParams { vni, ingress, egress, ..PARAMS };
            let mut f = Vec::new();
            encap(&inner_tcp(), &p, 7, &mut f).expect("encap");
            let (m, _) = decap(&f).expect("decap");
            assert_eq!((m.vni, m.ingress, m.egress), (vni, ingress, egress));
            assert_eq!(f[54] & 0x80, 0, "option data bit 31 stays zero");
        }
    }

    #[test]
    fn encap_refuses_what_does_not_fit() {
        let mut out = vec![1, 2, 3];
        let e = |inner: &[u8], p: &EncapParams, out: &mut Vec<u8>| encap(inner, p, 0, out).expect_err("refused");
        assert_eq!(e(&[0; 13], &PARAMS, &mut out), GeneveError::BadInnerLength { len: 13 });
        let huge = vec![0u8; MAX_INNER_FRAME + 1];
        assert_eq!(e(&huge, &PARAMS, &mut out), GeneveError::BadInnerLength { len: MAX_INNER_FRAME + 1 });
        let p = EncapParams { vni: MAX_VNI + 1, ..PARAMS };
        assert_eq!(e(&inner_tcp(), &p, &mut out), GeneveError::VniTooWide { vni: MAX_VNI + 1 });
        let p = EncapParams { ingress: MAX_INGRESS_KEY + 1, ..PARAMS };
        assert_eq!(e(&inner_tcp(), &p, &mut out), GeneveError::IngressKeyTooWide { key: 0x8000 });
        assert_eq!(out, [1, 2, 3], "out untouched on error");
        let biggest = vec![0u8; MAX_INNER_FRAME];
        encap(&biggest, &PARAMS, 0, &mut out).expect("the largest frame fits");
        assert_eq!(be16(&out, 16), u16::MAX);
        assert_eq!(decap(&out).expect("decap").1, ENCAP_OVERHEAD_V4);
    }

    #[test]
    fn entropy_follows_the_flow() {
        let a = ipv4_frame(ip_proto::TCP, 0x0af4_0105, 0x0af4_0209, 43210, 80, b"one");
        let a2 = ipv4_frame(ip_proto::TCP, 0x0af4_0105, 0x0af4_0209, 43210, 80, b"another payload");
        assert_eq!(inner_flow_entropy(&a), inner_flow_entropy(&a2), "same flow, same port");
        let mut ports = std::collections::HashSet::new();
        for sport in 40000..40064 {
            let f = ipv4_frame(ip_proto::TCP, 0x0af4_0105, 0x0af4_0209, sport, 80, b"");
            ports.insert(inner_flow_entropy(&f) % 16384);
        }
        assert!(ports.len() >= 60, "64 flows got only {} source ports", ports.len());
        let mut first = ipv4_frame(ip_proto::UDP, 1, 2, 3, 4, b"abcdefgh");
        first[20] = 0x20;
        let mut later = ipv4_frame(ip_proto::UDP, 1, 2, 3, 4, b"abcdefgh");
        later[20..22].copy_from_slice(&[0x00, 0x03]);
        assert_eq!(inner_flow_entropy(&first), inner_flow_entropy(&later), "fragments stay together");
        let v6a = ipv6_frame(HOST6_A, HOST6_B, 0, &[], ip_proto::UDP, &[0, 1, 0, 2, 0, 8, 0, 0]);
        let v6b = ipv6_frame(HOST6_A, HOST6_B + 1, 0, &[], ip_proto::UDP, &[0, 1, 0, 2, 0, 8, 0, 0]);
        assert_ne!(inner_flow_entropy(&v6a), inner_flow_entropy(&v6b));
        assert_ne!(inner_flow_entropy(&[0u8; 14]), inner_flow_entropy(&[1u8; 14]), "non-IP hashes MACs");
    }

    #[test]
    fn tunnel_meta_fills_the_key() {
        let m = TunnelMeta { vni: 5, src: 6, dst: 7, ingress: 8, egress: 40000, identity: 9 };
        let mut k = FlowKey::ZERO;
        m.write_key(&mut k);
        assert_eq!(k.get(Field::TunId), 5);
        assert_eq!(k.get(Field::TunSrc), 6);
        assert_eq!(k.get(Field::TunDst), 7);
        assert_eq!(k.get(Field::TunIngressPort), 8);
        assert_eq!(k.get(Field::TunEgressPort), 40000);
        assert_eq!(k.get(Field::TunIdentity), 9);
    }

    #[test]
    fn decap_accepts_a_vlan_tag_and_ip_options() {
        let inner = inner_tcp();
        let mut f = encapped(&inner);
        f.splice(12..12, [0x81, 0x00, 0x00, 0x64]);
        let (m, off) = decap(&f).expect("tagged");
        assert_eq!(&f[off..], &inner[..]);
        assert_eq!(m.vni, PARAMS.vni);

        let mut g = encapped(&inner);
        g.splice(34..34, [1, 1, 1, 1]);
        g[14] = 0x46;
        let total = be16(&g, 16) + 4;
        g[16..18].copy_from_slice(&total.to_be_bytes());
        g[24..26].copy_from_slice(&[0, 0]);
        let c = checksum(&g[14..38], 0);
        g[24..26].copy_from_slice(&c.to_be_bytes());
        let (_, off) = decap(&g).expect("IPv4 options");
        assert_eq!(&g[off..], &inner[..]);
    }

    #[test]
    fn decap_skips_unknown_non_critical_options() {
        let f = encapped(&inner_tcp());
        let skein = &f[50..58];
        let mut opts = vec![0x01, 0x03, 0x05, 0x02, 1, 2, 3, 4, 5, 6, 7, 8];
        opts.extend_from_slice(skein);
        opts.extend_from_slice(&[0xff, 0xff, 0x7f, 0x00]);
        let g = with_options(&f, &opts);
        let (m, off) = decap(&g).expect("decap");
        assert_eq!((m.ingress, m.egress), (PARAMS.ingress, PARAMS.egress));
        assert_eq!(&g[off..], &inner_tcp()[..]);
    }

    #[test]
    fn decap_ignores_the_reserved_top_bit() {
        let mut f = encapped(&inner_tcp());
        f[54] |= 0x80;
        assert_eq!(decap(&f).expect("decap").0.ingress, PARAMS.ingress);
    }

    #[test]
    fn decap_reports_every_error() {
        let inner = inner_tcp();
        let good = encapped(&inner);
        assert!(decap(&good).is_ok());
        let edit = |at: usize, bytes: &[u8]| {
            let mut f = good.clone();
            f[at..at + bytes.len()].copy_from_slice(bytes);
            f
        };
        let edit_ip = |at: usize, bytes: &[u8]| {
            let mut f = edit(at, bytes);
            fix_ip_checksum(&mut f);
            f
        };

        assert_eq!(err(&good[..13]), GeneveError::Truncated { layer: "Ethernet header", need: 14, have: 13 });
        let mut tag_only = good[..14].to_vec();
        tag_only[12..14].copy_from_slice(&[0x81, 0x00]);
        assert_eq!(err(&tag_only), GeneveError::Truncated { layer: "VLAN tag", need: 18, have: 14 });
        assert_eq!(err(&edit(12, &[0x86, 0xdd])), GeneveError::NotIpv4 { ether_type: 0x86dd });
        assert_eq!(err(&good[..30]), GeneveError::Truncated { layer: "IPv4 header", need: 34, have: 30 });
        assert_eq!(err(&edit(14, &[0x65])), GeneveError::BadIpv4Header { version_ihl: 0x65 });
        assert_eq!(err(&edit(14, &[0x44])), GeneveError::BadIpv4Header { version_ihl: 0x44 });
        let mut short_opts = good[..34].to_vec();
        short_opts[14] = 0x4f;
        assert_eq!(err(&short_opts), GeneveError::Truncated { layer: "IPv4 options", need: 74, have: 34 });
        let bad_sum = edit(24, &[good[24] ^ 0xff, good[25]]);
        assert_eq!(err(&bad_sum), GeneveError::BadIpv4Checksum { checksum: be16(&bad_sum, 24) });
        assert_eq!(err(&edit_ip(16, &[0, 19])), GeneveError::BadIpv4Length { total_len: 19, header_len: 20 });
        let long = (good.len() - 14 + 1) as u16;
        assert_eq!(
            err(&edit_ip(16, &long.to_be_bytes())),
            GeneveError::Truncated { layer: "IPv4 packet", need: good.len() + 1, have: good.len() }
        );
        assert_eq!(err(&edit_ip(20, &[0x20, 0x00])), GeneveError::Fragment { offset: 0, more: true });
        assert_eq!(err(&edit_ip(20, &[0x00, 0x02])), GeneveError::Fragment { offset: 16, more: false });
        assert_eq!(err(&edit_ip(23, &[6])), GeneveError::NotUdp { protocol: 6 });
        let mut ip_only = edit_ip(16, &[0, 24]);
        ip_only.truncate(38);
        assert_eq!(err(&ip_only), GeneveError::Truncated { layer: "UDP header", need: 42, have: 38 });
        assert_eq!(err(&edit(36, &[0x12, 0xb5])), GeneveError::NotGenevePort { port: 4789 });
        let ip_payload = good.len() - 34;
        assert_eq!(err(&edit(38, &[0, 7])), GeneveError::BadUdpLength { udp_len: 7, ip_payload });
        let over = (ip_payload + 1) as u16;
        assert_eq!(err(&edit(38, &over.to_be_bytes())), GeneveError::BadUdpLength { udp_len: over, ip_payload });
        let under = (ip_payload - 1) as u16;
        assert_eq!(err(&edit(38, &under.to_be_bytes())), GeneveError::TrailingBytes { extra: 1 });
        let mut padded = good.clone();
        padded.extend_from_slice(&[0; 4]);
        assert_eq!(err(&padded), GeneveError::TrailingBytes { extra: 4 });

        // Geneve itself, through decap_payload (what a UDP socket hands over).
        let payload = &good[42..];
        let perr = |p: &[u8]| decap_payload(p).expect_err("decap_payload should fail");
        let pedit = |at: usize, bytes: &[u8]| {
            let mut p = payload.to_vec();
            p[at..at + bytes.len()].copy_from_slice(bytes);
            p
        };
        assert_eq!(perr(&payload[..7]), GeneveError::Truncated { layer: "Geneve header", need: 8, have: 7 });
        assert_eq!(perr(&pedit(0, &[0x42])), GeneveError::BadVersion { version: 1 });
        assert_eq!(perr(&pedit(1, &[0xc0])), GeneveError::Oam);
        assert_eq!(perr(&pedit(2, &[0x08, 0x00])), GeneveError::NotEthernet { protocol: 0x0800 });
        assert_eq!(perr(&payload[..12]), GeneveError::Truncated { layer: "Geneve options", need: 16, have: 12 });
        assert_eq!(
            perr(&pedit(11, &[0x02])),
            GeneveError::OptionOverrun { class: 0x0102, option_type: 0x80, len: 8, room: 4 }
        );
        assert_eq!(perr(&pedit(11, &[0x00])), GeneveError::BadSkeinOption { len: 0 });
        assert_eq!(perr(&pedit(10, &[0x81])), GeneveError::UnknownCriticalOption { class: 0x0102, option_type: 0x81 });
        assert_eq!(
            perr(&pedit(8, &[0xff, 0xff])),
            GeneveError::UnknownCriticalOption { class: 0xffff, option_type: 0x80 }
        );
        assert_eq!(perr(&pedit(10, &[0x01])), GeneveError::MissingSkeinOption, "non-critical, skipped");
        assert_eq!(
            perr(&payload[..16 + 13]),
            GeneveError::Truncated { layer: "inner Ethernet header", need: 30, have: 29 }
        );
        let mut no_options = payload[..8].to_vec();
        no_options[0] = 0;
        no_options.extend_from_slice(&inner);
        assert_eq!(perr(&no_options), GeneveError::MissingSkeinOption);
        let two = [&good[50..58], &good[50..58]].concat();
        assert_eq!(err(&with_options(&good, &two)), GeneveError::DuplicateSkeinOption);
        let wide = [0x01, 0x02, 0x80, 0x02, 0, 0, 0, 1, 0, 0, 0, 2];
        assert_eq!(err(&with_options(&good, &wide)), GeneveError::BadSkeinOption { len: 8 });

        // Errors propagate through decap, and their messages name the value.
        assert_eq!(err(&edit(42, &[0x42])), GeneveError::BadVersion { version: 1 });
        assert_eq!(
            GeneveError::NotGenevePort { port: 4789 }.to_string(),
            "UDP destination port 4789 is not Geneve's 6081"
        );
    }

    #[test]
    fn every_prefix_and_byte_flip_is_safe() {
        let f = encapped(&inner_tcp());
        for n in 0..f.len() {
            assert!(decap(&f[..n]).is_err(), "prefix {n} decapsulated");
            let _ = decap_payload(&f[n..]);
        }
        for i in 0..f.len() {
            for bit in 0..8 {
                let mut g = f.clone();
                g[i] ^= 1 << bit;
                let _ = decap(&g);
            }
        }
    }

    #[test]
    fn frag_needed_builds_a_valid_error() {
        let mut f = ipv4_frame(ip_proto::TCP, 0x0af4_0105, 0x0af4_0209, 43210, 80, &[0x55; 1400]);
        f[20] = 0x40;
        fill_checksums(&mut f);
        let e = frag_needed(&f, 1442, ROUTER_MAC, ROUTER_IP).expect("error");
        assert!(checksums_valid(&e));
        assert_eq!(&e[0..6], &f[6..12]);
        assert_eq!(&e[6..12], &ROUTER_MAC);
        let mut k = FlowKey::ZERO;
        let o = parse_frame(&e, &mut k);
        assert_eq!(k.get(Field::Ipv4Src), ROUTER_IP as u128);
        assert_eq!(k.get(Field::Ipv4Dst), 0x0af4_0105);
        assert_eq!(k.get(Field::NwTtl), 64);
        assert_eq!(k.get(Field::IcmpType), 3);
        assert_eq!(k.get(Field::IcmpCode), 4);
        let l4 = o.l4 as usize;
        assert_eq!(be16(&e, l4 + 6), 1442, "next-hop MTU");
        assert_eq!(&e[l4 + 8..], &f[14..14 + 28], "IP header and 8 bytes");
        assert_eq!(e.len(), 14 + 20 + 8 + 28);
    }

    #[test]
    fn frag_needed_refuses() {
        let df = |mut f: Vec<u8>| {
            f[20] |= 0x40;
            fill_checksums(&mut f);
            f
        };
        let none = |f: &[u8], why: &str| assert_eq!(frag_needed(f, 1400, ROUTER_MAC, ROUTER_IP), None, "{why}");
        none(&ipv4_frame(ip_proto::UDP, 0x0af4_0105, 0x0af4_0209, 1, 2, b""), "DF clear: caller fragments");
        let mut icmp_err = ipv4_frame(ip_proto::ICMP, 0x0af4_0105, 0x0af4_0209, 0, 0, b"");
        icmp_err[34] = 3;
        none(&df(icmp_err), "ICMP error");
        let mut later = ipv4_frame(ip_proto::UDP, 0x0af4_0105, 0x0af4_0209, 1, 2, b"abcdefgh");
        later[21] = 1;
        none(&df(later), "later fragment");
        none(&df(ipv4_frame(ip_proto::UDP, 0x0af4_0105, 0xe000_0001, 1, 2, b"")), "multicast");
        none(&df(ipv4_frame(ip_proto::UDP, 0x0af4_0105, u32::MAX, 1, 2, b"")), "broadcast");
        none(&df(ipv4_frame(ip_proto::UDP, 0, 0x0af4_0209, 1, 2, b"")), "source 0.0.0.0");
        let mut eth_bcast = df(ipv4_frame(ip_proto::UDP, 0x0af4_0105, 0x0af4_0209, 1, 2, b""));
        eth_bcast[0] = 0xff;
        none(&eth_bcast, "link-layer multicast");
        let v6 = ipv6_frame(HOST6_A, HOST6_B, 0, &[], ip_proto::UDP, &[0, 1, 0, 2, 0, 8, 0, 0]);
        none(&v6, "IPv6");
        assert!(
            frag_needed(
                &df(ipv4_frame(ip_proto::ICMP, 0x0af4_0105, 0x0af4_0209, 0, 0, b"")),
                1400,
                ROUTER_MAC,
                ROUTER_IP
            )
            .is_some(),
            "echo request"
        );
    }

    #[test]
    fn packet_too_big_fills_1280_bytes() {
        let mut udp = vec![0u8; 2000];
        udp[0..8].copy_from_slice(&[0x9c, 0x40, 0x00, 0x35, 0x07, 0xd0, 0, 0]);
        let f = ipv6_frame(HOST6_A, HOST6_B, 0, &[], ip_proto::UDP, &udp);
        let e = packet_too_big_v6(&f, 1442, ROUTER_MAC, ROUTER_IP6).expect("error");
        assert_eq!(e.len(), 14 + 1280);
        assert!(checksums_valid(&e));
        let mut k = FlowKey::ZERO;
        let o = parse_frame(&e, &mut k);
        assert_eq!(k.get(Field::Ipv6Src), ROUTER_IP6);
        assert_eq!(k.get(Field::Ipv6Dst), HOST6_A);
        assert_eq!(k.get(Field::NwTtl), 64);
        assert_eq!(k.get(Field::IcmpType), 2);
        assert_eq!(k.get(Field::IcmpCode), 0);
        let l4 = o.l4 as usize;
        assert_eq!(&e[l4 + 4..l4 + 8], &1442u32.to_be_bytes());
        assert_eq!(&e[l4 + 8..], &f[14..14 + 1232]);
        assert_eq!(&e[0..6], &f[6..12]);
    }

    #[test]
    fn packet_too_big_rules() {
        let udp = [0, 1, 0, 2, 0, 8, 0, 0];
        let ptb = |f: &[u8]| packet_too_big_v6(f, 1400, ROUTER_MAC, ROUTER_IP6);
        let to_group = ipv6_frame(HOST6_A, (0xff0e << 112) | 0x101, 0, &[], ip_proto::UDP, &udp);
        assert!(ptb(&to_group).is_some(), "multicast destinations get Packet Too Big (RFC 4443 2.4 e.3)");
        let err = ipv6_frame(HOST6_A, HOST6_B, 0, &[], ip_proto::ICMPV6, &[2, 0, 0, 0, 0, 0, 5, 0]);
        assert_eq!(ptb(&err), None, "ICMPv6 error");
        assert_eq!(ptb(&ipv6_frame(0, HOST6_B, 0, &[], ip_proto::UDP, &udp)), None, "unspecified source");
        let mut v4 = ipv4_frame(ip_proto::UDP, 0x0af4_0105, 0x0af4_0209, 1, 2, b"");
        v4[20] = 0x40;
        assert_eq!(ptb(&v4), None, "IPv4");
        let later = [ip_proto::UDP, 0, 0x05, 0x00, 0, 0, 0, 1];
        assert_eq!(ptb(&ipv6_frame(HOST6_A, HOST6_B, 44, &later, ip_proto::UDP, &udp)), None, "later fragment");
    }
}
