//! The flow key: every field the pipeline can match on, packed into a fixed array of
//! 64-bit words so that masking, hashing and comparing a key are a handful of word
//! operations. [`Field`] names each field's place (word, shift, width) in that array.

use std::fmt;

/// Number of 64-bit words in a [`FlowKey`].
pub const KEY_WORDS: usize = 24;

/// `vlan_tci` bit that says a tag is present (the 802.1Q CFI/DEI bit, as Open vSwitch
/// uses it): a VID of 0 with this bit set is a priority tag, without it no tag at all.
pub const VLAN_PRESENT: u16 = 0x1000;

/// `nw_frag` bit: the packet is an IP fragment.
pub const FRAG_ANY: u8 = 1;
/// `nw_frag` bit: the fragment is not the first one (no L4 header in it).
pub const FRAG_LATER: u8 = 2;

/// `ct_state` bits (filled by connection tracking).
pub mod ct_state {
    /// Packet starts a new connection.
    pub const NEW: u8 = 0x01;
    /// Packet belongs to an established connection.
    pub const EST: u8 = 0x02;
    /// Packet is related to a tracked connection (e.g. an ICMP error).
    pub const REL: u8 = 0x04;
    /// Packet is in the reply direction.
    pub const RPL: u8 = 0x08;
    /// Packet is invalid for the connection's state.
    pub const INV: u8 = 0x10;
    /// Packet has been through connection tracking.
    pub const TRK: u8 = 0x20;
    /// Packet's source (address or port) was translated by the `ct` action that tracked
    /// it: the original direction of a source-NATed connection, or a reply of a
    /// destination-NATed one (as Open vSwitch's `snat`).
    pub const SNAT: u8 = 0x40;
    /// Packet's destination was translated by the `ct` action that tracked it: the
    /// original direction of a destination-NATed connection, or a reply of a source-NATed
    /// one (as Open vSwitch's `dnat`).
    pub const DNAT: u8 = 0x80;
}

/// A parsed packet's header fields plus pipeline metadata, as 24 little-endian-agnostic
/// 64-bit words. All values are host-order integers (an IPv4 address `10.0.0.1` is
/// `0x0a000001`), so masks and prefixes read naturally.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    /// The packed words; use [`FlowKey::get`]/[`FlowKey::set`] rather than indexing.
    pub w: [u64; KEY_WORDS],
}

impl FlowKey {
    /// A key (or mask) with every bit zero.
    pub const ZERO: FlowKey = FlowKey { w: [0; KEY_WORDS] };

    /// A mask with every bit set (exact match on everything).
    pub const EXACT: FlowKey = FlowKey { w: [u64::MAX; KEY_WORDS] };

    /// The value of `field`.
    #[inline(always)]
    pub fn get(&self, field: Field) -> u128 {
        let s = field.spec();
        if s.bits > 64 {
            ((self.w[s.word] as u128) << 64) | self.w[s.word + 1] as u128
        } else {
            ((self.w[s.word] >> s.shift) & low_bits(s.bits)) as u128
        }
    }

    /// Sets `field` to `value` (bits beyond the field's width are dropped).
    #[inline(always)]
    pub fn set(&mut self, field: Field, value: u128) {
        let s = field.spec();
        if s.bits > 64 {
            self.w[s.word] = (value >> 64) as u64;
            self.w[s.word + 1] = value as u64;
        } else {
            let m = low_bits(s.bits) << s.shift;
            self.w[s.word] = (self.w[s.word] & !m) | (((value as u64) << s.shift) & m);
        }
    }

    /// Sets only the bits of `field` selected by `mask` to those of `value`.
    #[inline]
    pub fn set_masked(&mut self, field: Field, value: u128, mask: u128) {
        let old = self.get(field);
        self.set(field, (old & !mask) | (value & mask));
    }

    /// `self & mask`, word by word.
    #[inline]
    pub fn and(&self, mask: &FlowKey) -> FlowKey {
        let mut out = FlowKey::ZERO;
        for i in 0..KEY_WORDS {
            out.w[i] = self.w[i] & mask.w[i];
        }
        out
    }

    /// `self |= other`, word by word (accumulating wildcards).
    #[inline]
    pub fn or_assign(&mut self, other: &FlowKey) {
        for i in 0..KEY_WORDS {
            self.w[i] |= other.w[i];
        }
    }

    /// True if every bit set in `self` is also set in `other`.
    pub fn is_subset_of(&self, other: &FlowKey) -> bool {
        self.w.iter().zip(other.w.iter()).all(|(a, b)| a & !b == 0)
    }

    /// True if no bit is set.
    pub fn is_zero(&self) -> bool {
        self.w.iter().all(|&w| w == 0)
    }

    /// The mask that covers exactly `field`.
    pub fn field_mask(field: Field) -> FlowKey {
        let mut m = FlowKey::ZERO;
        m.set(field, u128::MAX);
        m
    }

    /// Marks all bits of `field` as consulted in a wildcard mask.
    #[inline]
    pub fn unwildcard(&mut self, field: Field) {
        self.set(field, u128::MAX);
    }
}

impl fmt::Debug for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_map();
        for field in Field::ALL {
            let v = self.get(*field);
            if v != 0 {
                d.entry(&field.name(), &format_args!("{v:#x}"));
            }
        }
        d.finish()
    }
}

#[inline]
const fn low_bits(bits: u32) -> u64 {
    if bits >= 64 { u64::MAX } else { (1u64 << bits) - 1 }
}

/// Where a field lives in a [`FlowKey`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldSpec {
    /// Word index (the first of two for 128-bit fields).
    pub word: usize,
    /// Bit offset inside the word (0 for 128-bit fields).
    pub shift: u32,
    /// Width in bits (at most 64, or exactly 128).
    pub bits: u32,
}

macro_rules! fields {
    ($( $(#[$doc:meta])* $name:ident = $str:literal, $word:literal, $shift:literal, $bits:literal, $writable:literal; )*) => {
        /// A field of the [`FlowKey`] that flows can match on and actions can set.
        ///
        /// Some fields share key bits the way Open vSwitch shares them, because the
        /// packets that carry them are mutually exclusive: ARP's opcode and addresses
        /// live in `nw_proto`/`nw_src`/`nw_dst` and the IPv6 hop limit in `nw_ttl`. ICMP
        /// type and code have bits of their own, so that a write through one name can
        /// never change part of another field.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Field {
            $( $(#[$doc])* $name, )*
        }

        impl Field {
            /// Every field, in key order.
            pub const ALL: &'static [Field] = &[ $( Field::$name, )* ];

            /// The field's place in the key.
            #[inline(always)]
            pub const fn spec(self) -> FieldSpec {
                match self {
                    $( Field::$name => FieldSpec { word: $word, shift: $shift, bits: $bits }, )*
                }
            }

            /// The field's name in flow syntax (`nw_src`, `reg3`, ...).
            pub const fn name(self) -> &'static str {
                match self {
                    $( Field::$name => $str, )*
                }
            }

            /// Whether `set_field` may write this field. Fields that describe the
            /// packet's structure (`eth_type`, `nw_proto`, fragment flags, TCP flags)
            /// and the connection-tracking results cannot be set by a flow.
            pub const fn writable(self) -> bool {
                match self {
                    $( Field::$name => $writable, )*
                }
            }
        }
    };
}

fields! {
    /// Input port.
    InPort = "in_port", 0, 0, 32, true;
    /// Recirculation id (set by the datapath when a packet re-enters the pipeline).
    RecircId = "recirc_id", 0, 32, 32, false;
    /// 64-bit pipeline metadata.
    Metadata = "metadata", 1, 0, 64, true;
    /// Register 0.
    Reg0 = "reg0", 2, 0, 32, true;
    /// Register 1.
    Reg1 = "reg1", 2, 32, 32, true;
    /// Register 2.
    Reg2 = "reg2", 3, 0, 32, true;
    /// Register 3.
    Reg3 = "reg3", 3, 32, 32, true;
    /// Register 4.
    Reg4 = "reg4", 4, 0, 32, true;
    /// Register 5.
    Reg5 = "reg5", 4, 32, 32, true;
    /// Register 6.
    Reg6 = "reg6", 5, 0, 32, true;
    /// Register 7.
    Reg7 = "reg7", 5, 32, 32, true;
    /// Tunnel id (the Geneve VNI).
    TunId = "tun_id", 6, 0, 64, true;
    /// Outer IPv4 source of a tunnelled packet.
    TunSrc = "tun_src", 7, 0, 32, true;
    /// Outer IPv4 destination of a tunnelled packet.
    TunDst = "tun_dst", 7, 32, 32, true;
    /// Geneve option: logical ingress port key (15 bits).
    TunIngressPort = "tun_ingress_port", 8, 0, 15, true;
    /// Geneve option: logical egress port key (16 bits).
    TunEgressPort = "tun_egress_port", 8, 16, 16, true;
    /// Conntrack zone.
    CtZone = "ct_zone", 8, 32, 16, false;
    /// Conntrack state bits ([`ct_state`]).
    CtState = "ct_state", 8, 48, 8, false;
    /// Conntrack mark.
    CtMark = "ct_mark", 9, 0, 32, false;
    /// Conntrack label.
    CtLabel = "ct_label", 10, 0, 128, false;
    /// Ethernet destination.
    EthDst = "eth_dst", 12, 0, 48, true;
    /// Ethernet type (after the VLAN tag, if any).
    EthType = "eth_type", 12, 48, 16, false;
    /// Ethernet source.
    EthSrc = "eth_src", 13, 0, 48, true;
    /// 802.1Q TCI with [`VLAN_PRESENT`] set when a tag is present.
    VlanTci = "vlan_tci", 13, 48, 16, true;
    /// IPv4 source.
    Ipv4Src = "nw_src", 14, 0, 32, true;
    /// IPv4 destination.
    Ipv4Dst = "nw_dst", 14, 32, 32, true;
    /// ARP sender protocol address (shares bits with `nw_src`).
    ArpSpa = "arp_spa", 14, 0, 32, true;
    /// ARP target protocol address (shares bits with `nw_dst`).
    ArpTpa = "arp_tpa", 14, 32, 32, true;
    /// IP protocol / IPv6 next header.
    NwProto = "nw_proto", 15, 0, 8, false;
    /// ARP opcode (shares bits with `nw_proto`, low 8 bits of the opcode).
    ArpOp = "arp_op", 15, 0, 8, true;
    /// IP DSCP (6 bits).
    IpDscp = "ip_dscp", 15, 8, 6, true;
    /// IP ECN (2 bits).
    IpEcn = "ip_ecn", 15, 16, 2, true;
    /// IPv4 TTL / IPv6 hop limit.
    NwTtl = "nw_ttl", 15, 24, 8, true;
    /// Fragment flags ([`FRAG_ANY`], [`FRAG_LATER`]).
    NwFrag = "nw_frag", 15, 32, 8, false;
    /// TCP flags (12 bits).
    TcpFlags = "tcp_flags", 15, 40, 12, false;
    /// TCP/UDP/SCTP source port.
    TpSrc = "tp_src", 16, 0, 16, true;
    /// TCP/UDP/SCTP destination port.
    TpDst = "tp_dst", 16, 16, 16, true;
    /// ICMP/ICMPv6 type.
    IcmpType = "icmp_type", 9, 32, 8, true;
    /// ICMP/ICMPv6 code.
    IcmpCode = "icmp_code", 9, 40, 8, true;
    /// IPv6 flow label (20 bits).
    Ipv6Label = "ipv6_label", 16, 32, 20, true;
    /// ARP sender hardware address.
    ArpSha = "arp_sha", 17, 0, 48, true;
    /// ARP target hardware address.
    ArpTha = "arp_tha", 18, 0, 48, true;
    /// IPv6 source.
    Ipv6Src = "ipv6_src", 19, 0, 128, true;
    /// IPv6 destination.
    Ipv6Dst = "ipv6_dst", 21, 0, 128, true;
    /// Geneve identity option: the sender's security identity and bits that travel with
    /// it (32 bits; 0 = no option).
    TunIdentity = "tun_identity", 23, 0, 32, true;
    /// Register 8.
    Reg8 = "reg8", 23, 32, 32, true;
}

impl Field {
    /// Width of the field in bits.
    pub const fn bits(self) -> u32 {
        self.spec().bits
    }

    /// The largest value the field holds.
    pub const fn max_value(self) -> u128 {
        let b = self.spec().bits;
        if b >= 128 { u128::MAX } else { (1u128 << b) - 1 }
    }

    /// Looks a field up by its flow-syntax name.
    pub fn from_name(name: &str) -> Option<Field> {
        Field::ALL.iter().copied().find(|f| f.name() == name)
    }

    /// Register `n` (0..9).
    pub fn reg(n: usize) -> Option<Field> {
        [
            Field::Reg0,
            Field::Reg1,
            Field::Reg2,
            Field::Reg3,
            Field::Reg4,
            Field::Reg5,
            Field::Reg6,
            Field::Reg7,
            Field::Reg8,
        ]
        .get(n)
        .copied()
    }
}

/// Ethernet types the parser understands.
pub mod eth_type {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// ARP.
    pub const ARP: u16 = 0x0806;
    /// IPv6.
    pub const IPV6: u16 = 0x86dd;
    /// 802.1Q VLAN tag.
    pub const VLAN: u16 = 0x8100;
    /// 802.1ad service tag (parsed as the single tag).
    pub const QINQ: u16 = 0x88a8;
}

/// IP protocol numbers the parser understands.
pub mod ip_proto {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// SCTP.
    pub const SCTP: u8 = 132;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_do_not_overlap_except_documented_aliases() {
        let aliases =
            [(Field::Ipv4Src, Field::ArpSpa), (Field::Ipv4Dst, Field::ArpTpa), (Field::NwProto, Field::ArpOp)];
        for (i, a) in Field::ALL.iter().enumerate() {
            for b in &Field::ALL[i + 1..] {
                let overlap = !FlowKey::field_mask(*a).and(&FlowKey::field_mask(*b)).is_zero();
                let alias = aliases.contains(&(*a, *b)) || aliases.contains(&(*b, *a));
                assert_eq!(overlap, alias, "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn get_set_round_trip_every_field() {
        for f in Field::ALL {
            let mut k = FlowKey::EXACT;
            let v = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210u128 & f.max_value();
            k.set(*f, v);
            assert_eq!(k.get(*f), v, "{f:?}");
            // Neighbouring bits are untouched.
            let others = FlowKey::EXACT.and(&{
                let mut m = FlowKey::EXACT;
                m.set(*f, 0);
                m
            });
            assert_eq!(k.and(&others), others, "{f:?} clobbered a neighbour");
        }
    }

    #[test]
    fn set_masked_touches_only_masked_bits() {
        let mut k = FlowKey::ZERO;
        k.set(Field::Reg3, 0xffff_0000);
        k.set_masked(Field::Reg3, 0x0000_00ab, 0x0000_00ff);
        assert_eq!(k.get(Field::Reg3), 0xffff_00ab);
    }

    #[test]
    fn names_round_trip() {
        for f in Field::ALL {
            assert_eq!(Field::from_name(f.name()), Some(*f));
        }
    }
}
