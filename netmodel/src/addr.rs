//! Address types shared by every layer: IP prefixes ([`IpNet`]), MAC addresses ([`MacAddr`])
//! and IP families. Both families use one type so that dual-stack needs no second code path;
//! arithmetic is done on `u128` for either family.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// An IP family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum IpFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IpFamily {
    /// The family of `addr`.
    pub fn of(addr: IpAddr) -> IpFamily {
        match addr {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    /// Address width in bits (32 or 128).
    pub fn bits(self) -> u8 {
        match self {
            IpFamily::V4 => 32,
            IpFamily::V6 => 128,
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        })
    }
}

/// Why an address or prefix did not parse or does not fit.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum AddrError {
    /// The text is not `address/prefix-length`.
    #[error("invalid IP prefix {0:?}: expected ADDRESS/LENGTH")]
    InvalidPrefix(String),
    /// The prefix length is larger than the family's width.
    #[error("invalid prefix length {len} in {text:?}: at most {max}")]
    PrefixTooLong {
        /// The offending text.
        text: String,
        /// The length given.
        len: u32,
        /// The family's width.
        max: u8,
    },
    /// The text is not a MAC address `xx:xx:xx:xx:xx:xx`.
    #[error("invalid MAC address {0:?}: expected six hex bytes separated by ':'")]
    InvalidMac(String),
}

/// Converts an address to a `u128` (IPv4 in the low 32 bits).
pub fn ip_to_u128(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// Converts a `u128` back to an address of `family` (IPv4 takes the low 32 bits).
pub fn u128_to_ip(family: IpFamily, value: u128) -> IpAddr {
    match family {
        // Truncation is the point: IPv4 values live in the low 32 bits.
        IpFamily::V4 => IpAddr::V4(Ipv4Addr::from(value as u32)),
        IpFamily::V6 => IpAddr::V6(Ipv6Addr::from(value)),
    }
}

/// An IP address with a prefix length: a network (`10.244.1.0/24`) or an interface address
/// (`10.244.1.5/24`, the form of the pod annotation). Serialized, and debug-printed, as
/// that text.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpNet {
    addr: IpAddr,
    prefix_len: u8,
}

impl IpNet {
    /// `addr/prefix_len`; fails if the length exceeds the family's width.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<IpNet, AddrError> {
        let max = IpFamily::of(addr).bits();
        if prefix_len > max {
            return Err(AddrError::PrefixTooLong { text: format!("{addr}/{prefix_len}"), len: prefix_len.into(), max });
        }
        Ok(IpNet { addr, prefix_len })
    }

    /// `addr/prefix_len`, the length cut to the family's width.
    pub fn clamped(addr: IpAddr, prefix_len: u8) -> IpNet {
        IpNet { addr, prefix_len: prefix_len.min(IpFamily::of(addr).bits()) }
    }

    /// A host prefix: `/32` or `/128`.
    pub fn host(addr: IpAddr) -> IpNet {
        IpNet { addr, prefix_len: IpFamily::of(addr).bits() }
    }

    /// The address as written (for an interface address, the host's address).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The family.
    pub fn family(&self) -> IpFamily {
        IpFamily::of(self.addr)
    }

    /// Number of host bits (`width - prefix_len`).
    pub fn host_bits(&self) -> u8 {
        self.family().bits() - self.prefix_len
    }

    fn mask(&self) -> u128 {
        let bits = self.family().bits();
        let width_mask = if bits == 128 { u128::MAX } else { (1u128 << bits) - 1 };
        let host_mask = if self.host_bits() >= 128 { u128::MAX } else { (1u128 << self.host_bits()) - 1 };
        width_mask & !host_mask
    }

    /// The network: host bits cleared.
    pub fn network(&self) -> IpNet {
        IpNet { addr: u128_to_ip(self.family(), ip_to_u128(self.addr) & self.mask()), prefix_len: self.prefix_len }
    }

    /// True if the host bits are zero.
    pub fn is_network(&self) -> bool {
        self.network().addr == self.addr
    }

    /// True if `addr` is inside this prefix.
    pub fn contains(&self, addr: IpAddr) -> bool {
        IpFamily::of(addr) == self.family() && ip_to_u128(addr) & self.mask() == ip_to_u128(self.addr) & self.mask()
    }

    /// True if `other` lies entirely inside this prefix.
    pub fn contains_net(&self, other: &IpNet) -> bool {
        other.prefix_len >= self.prefix_len && self.contains(other.addr)
    }

    /// The address `index` positions after the network address, or `None` if outside.
    pub fn nth(&self, index: u128) -> Option<IpAddr> {
        if self.host_bits() < 128 && index >> self.host_bits() != 0 {
            return None;
        }
        let base = ip_to_u128(self.addr) & self.mask();
        Some(u128_to_ip(self.family(), base | index))
    }

    /// The position of `addr` inside this prefix (0 = the network address), if inside.
    pub fn index_of(&self, addr: IpAddr) -> Option<u128> {
        self.contains(addr).then(|| ip_to_u128(addr) & !self.mask() & self.width_mask())
    }

    fn width_mask(&self) -> u128 {
        if self.family().bits() == 128 { u128::MAX } else { (1u128 << self.family().bits()) - 1 }
    }

    /// Number of addresses, saturated at `u128::MAX`.
    pub fn size(&self) -> u128 {
        if self.host_bits() >= 128 { u128::MAX } else { 1u128 << self.host_bits() }
    }

    /// The `index`-th sub-prefix of length `prefix_len` inside this one, if it exists.
    pub fn subnet(&self, prefix_len: u8, index: u128) -> Option<IpNet> {
        if prefix_len < self.prefix_len || prefix_len > self.family().bits() {
            return None;
        }
        let count_bits = prefix_len - self.prefix_len;
        if count_bits < 128 && index >> count_bits != 0 {
            return None;
        }
        let shift = self.family().bits() - prefix_len;
        let offset = if shift >= 128 { 0 } else { index << shift };
        let base = ip_to_u128(self.addr) & self.mask();
        Some(IpNet { addr: u128_to_ip(self.family(), base | offset), prefix_len })
    }

    /// Which `prefix_len` sub-prefix of this one `net` is (inverse of [`IpNet::subnet`]).
    pub fn subnet_index(&self, net: &IpNet, prefix_len: u8) -> Option<u128> {
        if net.prefix_len != prefix_len || !self.contains_net(net) || !net.is_network() {
            return None;
        }
        let shift = self.family().bits() - prefix_len;
        let offset = ip_to_u128(net.addr) & !self.mask() & self.width_mask();
        Some(if shift >= 128 { 0 } else { offset >> shift })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl fmt::Debug for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for IpNet {
    type Err = AddrError;

    fn from_str(text: &str) -> Result<IpNet, AddrError> {
        let (addr, len) = text.split_once('/').ok_or_else(|| AddrError::InvalidPrefix(text.to_owned()))?;
        let addr: IpAddr = addr.parse().map_err(|_| AddrError::InvalidPrefix(text.to_owned()))?;
        if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AddrError::InvalidPrefix(text.to_owned()));
        }
        let len: u32 = len.parse().map_err(|_| AddrError::InvalidPrefix(text.to_owned()))?;
        let max = IpFamily::of(addr).bits();
        if len > u32::from(max) {
            return Err(AddrError::PrefixTooLong { text: text.to_owned(), len, max });
        }
        // `len <= max <= 128` was checked just above.
        Ok(IpNet { addr, prefix_len: len as u8 })
    }
}

impl Serialize for IpNet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpNet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<IpNet, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A 48-bit Ethernet address. Serialized, and debug-printed, as `0a:58:0a:f4:01:05`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// Skein's (and OVN-Kubernetes') address derivation: `0a:58:` followed by the four
    /// bytes of the IPv4 address, or the last four bytes of an IPv6 address. Every logical
    /// port's MAC is derived this way, which is what lets a router set the destination MAC
    /// of a remote pod from its IP without any per-pod table.
    pub fn derived(addr: IpAddr) -> MacAddr {
        let b = match addr {
            IpAddr::V4(a) => a.octets(),
            IpAddr::V6(a) => {
                let o = a.octets();
                [o[12], o[13], o[14], o[15]]
            }
        };
        MacAddr([0x0a, 0x58, b[0], b[1], b[2], b[3]])
    }

    /// The address as a 48-bit integer (the datapath's representation).
    pub fn to_u64(self) -> u64 {
        self.0.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
    }

    /// True for group (multicast and broadcast) addresses.
    pub fn is_multicast(self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = AddrError;

    fn from_str(text: &str) -> Result<MacAddr, AddrError> {
        let mut out = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or_else(|| AddrError::InvalidMac(text.to_owned()))?;
            if part.len() != 2 {
                return Err(AddrError::InvalidMac(text.to_owned()));
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| AddrError::InvalidMac(text.to_owned()))?;
        }
        if parts.next().is_some() {
            return Err(AddrError::InvalidMac(text.to_owned()));
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<MacAddr, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn prefix_parsing_and_display() {
        assert_eq!(net("10.244.1.5/24").to_string(), "10.244.1.5/24");
        assert_eq!(net("10.244.1.5/24").network().to_string(), "10.244.1.0/24");
        assert_eq!(net("fd00::1/64").network().to_string(), "fd00::/64");
        for bad in ["10.0.0.0", "10.0.0.0/", "10.0.0.0/33", "x/8", "10.0.0.0/+8", "::/129", "10.0.0.0/0008"] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
        assert!(net("0.0.0.0/0").contains("1.2.3.4".parse().unwrap()));
        assert!(net("::/0").contains("fd00::1".parse().unwrap()));
        assert!(!net("::/0").contains("1.2.3.4".parse().unwrap()));
    }

    #[test]
    fn subnets_and_indices() {
        let cluster = net("10.244.0.0/16");
        assert_eq!(cluster.subnet(24, 1).unwrap().to_string(), "10.244.1.0/24");
        assert_eq!(cluster.subnet(24, 255).unwrap().to_string(), "10.244.255.0/24");
        assert!(cluster.subnet(24, 256).is_none());
        assert_eq!(cluster.subnet_index(&net("10.244.7.0/24"), 24), Some(7));
        assert_eq!(cluster.subnet_index(&net("10.244.7.1/24"), 24), None);
        assert_eq!(cluster.subnet_index(&net("10.245.7.0/24"), 24), None);
        let node = net("10.244.7.0/24");
        assert_eq!(node.nth(5).unwrap().to_string(), "10.244.7.5");
        assert!(node.nth(256).is_none());
        assert_eq!(node.index_of("10.244.7.9".parse().unwrap()), Some(9));
        let v6 = net("fd00:10:244::/48");
        assert_eq!(v6.subnet(64, 3).unwrap().to_string(), "fd00:10:244:3::/64");
        assert_eq!(v6.subnet_index(&net("fd00:10:244:3::/64"), 64), Some(3));
        assert_eq!(net("::/0").size(), u128::MAX);
        assert_eq!(net("::/0").subnet(0, 0).unwrap().to_string(), "::/0");
    }

    #[test]
    fn derived_mac() {
        let mac = MacAddr::derived("10.244.1.5".parse().unwrap());
        assert_eq!(mac.to_string(), "0a:58:0a:f4:01:05");
        assert_eq!(mac.to_string().parse::<MacAddr>().unwrap(), mac);
        assert_eq!(MacAddr::derived("fd00::a:b0c".parse().unwrap()).to_string(), "0a:58:00:0a:0b:0c");
        for bad in ["", "0a:58:0a:f4:01", "0a:58:0a:f4:01:05:06", "0a:58:0a:f4:01:5", "zz:58:0a:f4:01:05"] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        assert!(MacAddr::BROADCAST.is_multicast());
        assert_eq!(mac.to_u64(), 0x0a580af40105);
    }
}
