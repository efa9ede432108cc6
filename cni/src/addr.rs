//! Addresses in their CNI text forms: `10.244.1.5/24` (an address with its prefix length,
//! as in results and annotations) and `0a:58:0a:f4:01:05` (a MAC).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An interface address with its prefix length, e.g. `10.244.1.5/24` or `fd00::5/64`.
/// The host bits are kept: this is an address on a network, not only a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length (≤ 32 for IPv4, ≤ 128 for IPv6).
    pub prefix_len: u8,
}

/// Why a string is not an [`IpNet`] or a [`MacAddr`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrParseError {
    /// Missing `/prefix`.
    #[error("{0:?} has no /prefix length")]
    NoPrefix(String),
    /// The address part is not an IP address.
    #[error("{0:?} is not an IP address")]
    BadAddress(String),
    /// The prefix is not a number or too long for the family.
    #[error("{0:?} has an invalid prefix length")]
    BadPrefix(String),
    /// Not six colon-separated hex bytes.
    #[error("{0:?} is not a MAC address (want six hex bytes separated by ':')")]
    BadMac(String),
}

impl IpNet {
    /// Whether this is an IPv4 address.
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// The network (host bits cleared) with the same prefix length.
    pub fn network(&self) -> IpNet {
        let addr = match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix_len)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix_len)).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        };
        IpNet { addr, prefix_len: self.prefix_len }
    }

    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.is_ipv4() && IpNet { addr: ip, prefix_len: self.prefix_len }.network() == self.network()
    }
}

impl FromStr for IpNet {
    type Err = AddrParseError;

    fn from_str(s: &str) -> Result<IpNet, AddrParseError> {
        let (addr, prefix) = s.split_once('/').ok_or_else(|| AddrParseError::NoPrefix(s.into()))?;
        let addr: IpAddr = addr.parse().map_err(|_| AddrParseError::BadAddress(s.into()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len: u8 = match prefix.parse() {
            Ok(p) if p <= max && !prefix.starts_with('+') => p,
            _ => return Err(AddrParseError::BadPrefix(s.into())),
        };
        Ok(IpNet { addr, prefix_len })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = AddrParseError;

    fn from_str(s: &str) -> Result<MacAddr, AddrParseError> {
        let bad = || AddrParseError::BadMac(s.into());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipnet_round_trip_and_contains() {
        let n: IpNet = "10.244.1.5/24".parse().unwrap();
        assert_eq!(n.to_string(), "10.244.1.5/24");
        assert_eq!(n.network().to_string(), "10.244.1.0/24");
        assert!(n.contains("10.244.1.1".parse().unwrap()));
        assert!(!n.contains("10.244.2.1".parse().unwrap()));
        let d: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(d.contains("8.8.8.8".parse().unwrap()));
        let v6: IpNet = "fd00::5/64".parse().unwrap();
        assert_eq!(v6.network().to_string(), "fd00::/64");
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        for bad in ["10.0.0.1", "10.0.0.1/33", "x/24", "10.0.0.1/+3", "fd00::1/129", "/", ""] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn mac_round_trip() {
        let m: MacAddr = "0a:58:0A:f4:01:05".parse().unwrap();
        assert_eq!(m.to_string(), "0a:58:0a:f4:01:05");
        for bad in ["", "0a:58:0a:f4:01", "0a:58:0a:f4:01:05:06", "0a:58:0a:f4:01:5", "+a:58:0a:f4:01:05"] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }
}
