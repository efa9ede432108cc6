//! Which network interface a rank's connections use, and which transport runs over it.
//!
//! Where a device plugin hands a pod RDMA devices it names their network interfaces
//! (`SKEIN_RDMA_NETDEVS`, e.g. `ens2f0,ib0`). The data path follows them when they are in the
//! rank's network namespace (host-network pods, or an RDMA interface moved into the pod); when
//! none is (the device nodes are there but the pod's network is its own `eth0`), the rank uses
//! the pod's own interface, the one its route to rank 0 takes. `SKEIN_SOCKET_IFNAME` names the
//! interface outright (as `NCCL_SOCKET_IFNAME` does). A rank binds its connections and its data
//! listener to the chosen interface's address, so rank 0's address table, and every peer's
//! connection, go over it.
//!
//! The transport is `SKEIN_TRANSPORT`: `tcp`, the only one built (an RDMA verbs transport needs
//! a verbs device; the engine's plan/transport split is where it would plug in).
//!
//! Interfaces are read with rtnetlink (`RTM_GETLINK`/`RTM_GETADDR` dumps) in the caller's
//! namespace; the choice is pure over that list ([`select`]).

use std::fmt;
use std::io;
use std::net::IpAddr;

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::error::{Error, Result};

/// The transports a communicator can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// TCP sockets (kernel networking: the pod network, or an RDMA NIC's IP interface).
    #[default]
    Tcp,
}

impl Transport {
    /// The names `SKEIN_TRANSPORT` accepts.
    pub const NAMES: &'static [&'static str] = &["tcp"];

    /// The transport's name.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Transport {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tcp" => Ok(Transport::Tcp),
            "rdma" | "verbs" | "ib" | "roce" => Err(format!(
                "{s:?} is an RDMA verbs transport, which this build does not have (it needs a verbs device); supported: {}",
                Transport::NAMES.join(", ")
            )),
            _ => Err(format!("unknown transport {s:?}; supported: {}", Transport::NAMES.join(", "))),
        }
    }
}

/// Parses an interface list (`eth0,ens2f0`): names of 1 to 15 bytes without `/`, spaces or
/// commas inside, as the kernel allows them.
pub fn parse_interface_list(text: &str) -> std::result::Result<Vec<String>, String> {
    let mut names = Vec::new();
    for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if name.len() > 15 || name.contains('/') || name.contains(char::is_whitespace) || name == "." || name == ".." {
            return Err(format!("{name:?} is not an interface name (1 to 15 bytes, no '/' or spaces)"));
        }
        names.push(name.to_string());
    }
    Ok(names)
}

/// One interface of the rank's network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Administratively up.
    pub up: bool,
    /// Its addresses.
    pub addresses: Vec<IpAddr>,
}

impl Interface {
    /// The address to bind: its first IPv4 address, else its first global IPv6 one.
    pub fn bind_address(&self) -> Option<IpAddr> {
        self.addresses
            .iter()
            .find(|a| a.is_ipv4())
            .or_else(|| {
                self.addresses.iter().find(|a| matches!(a, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) != 0xfe80))
            })
            .copied()
    }
}

/// What the rank binds to, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The interface and its address, or `None` for "the one the route to rank 0 takes".
    pub bind: Option<(String, IpAddr)>,
    /// Why (printed by `skein-allreduce` and logged).
    pub reason: String,
}

/// Chooses the interface: `socket_ifname` (must exist), else the first of `rdma_netdevs` present,
/// up and addressed, else none (the route's).
pub fn select(socket_ifname: &[String], rdma_netdevs: &[String], interfaces: &[Interface]) -> Result<Selection> {
    let usable = |name: &str| {
        interfaces.iter().find(|i| i.name == name && i.up).and_then(|i| i.bind_address().map(|a| (i.name.clone(), a)))
    };
    if !socket_ifname.is_empty() {
        return match socket_ifname.iter().find_map(|n| usable(n)) {
            Some(bind) => {
                Ok(Selection { reason: format!("SKEIN_SOCKET_IFNAME={}", socket_ifname.join(",")), bind: Some(bind) })
            }
            None => Err(Error::config(
                "SKEIN_SOCKET_IFNAME",
                &socket_ifname.join(","),
                format!(
                    "no such interface up with an address in this network namespace (it has {})",
                    interfaces.iter().map(describe).collect::<Vec<_>>().join(", ")
                ),
            )),
        };
    }
    if !rdma_netdevs.is_empty() {
        if let Some(bind) = rdma_netdevs.iter().find_map(|n| usable(n)) {
            return Ok(Selection {
                reason: format!("SKEIN_RDMA_NETDEVS={}", rdma_netdevs.join(",")),
                bind: Some(bind),
            });
        }
        return Ok(Selection {
            bind: None,
            reason: format!(
                "SKEIN_RDMA_NETDEVS={}: not in this network namespace; the pod's own interface towards rank 0",
                rdma_netdevs.join(",")
            ),
        });
    }
    Ok(Selection { bind: None, reason: "the interface towards rank 0".into() })
}

fn describe(interface: &Interface) -> String {
    let state = if interface.up { "" } else { " down" };
    let addresses: Vec<String> = interface.addresses.iter().map(ToString::to_string).collect();
    format!("{}{state} [{}]", interface.name, addresses.join(" "))
}

/// The name of the interface holding `address`, if any.
pub fn interface_of(address: IpAddr, interfaces: &[Interface]) -> Option<&str> {
    interfaces.iter().find(|i| i.addresses.contains(&address)).map(|i| i.name.as_str())
}

/// Every interface of the calling thread's network namespace, with its addresses.
pub fn local_interfaces() -> io::Result<Vec<Interface>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let links = dump(&mut socket, 1, RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
    let addresses = dump(&mut socket, 2, RouteNetlinkMessage::GetAddress(AddressMessage::default()))?;
    let mut out = Vec::new();
    for message in links {
        let RouteNetlinkMessage::NewLink(link) = message else { continue };
        let Some(name) = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        }) else {
            continue;
        };
        let index = link.header.index;
        let addresses = addresses
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => a
                    .attributes
                    .iter()
                    .find_map(|attr| match attr {
                        AddressAttribute::Local(ip) => Some(*ip),
                        _ => None,
                    })
                    .or_else(|| {
                        a.attributes.iter().find_map(|attr| match attr {
                            AddressAttribute::Address(ip) => Some(*ip),
                            _ => None,
                        })
                    }),
                _ => None,
            })
            .collect();
        out.push(Interface { name, up: link.header.flags.contains(LinkFlags::Up), addresses });
    }
    Ok(out)
}

/// One dump request, its replies until `NLMSG_DONE`.
fn dump(socket: &mut Socket, sequence: u32, message: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = sequence;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let mut replies = Vec::new();
    loop {
        let (bytes, _) = socket.recv_from_full()?;
        let mut offset = 0;
        while offset < bytes.len() {
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[offset..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let length = reply.header.length as usize;
            if length == 0 {
                break;
            }
            offset += (length + 3) & !3;
            if reply.header.sequence_number != sequence {
                continue;
            }
            match reply.payload {
                NetlinkPayload::InnerMessage(inner) => replies.push(inner),
                NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                NetlinkPayload::Error(_) | NetlinkPayload::Done(_) => return Ok(replies),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, up: bool, addresses: &[&str]) -> Interface {
        Interface { name: name.into(), up, addresses: addresses.iter().map(|a| a.parse().unwrap()).collect() }
    }

    fn names(list: &str) -> Vec<String> {
        parse_interface_list(list).unwrap()
    }

    #[test]
    fn transports_and_interface_lists_parse_with_named_errors() {
        assert_eq!("tcp".parse::<Transport>(), Ok(Transport::Tcp));
        assert_eq!(" TCP ".parse::<Transport>(), Ok(Transport::Tcp));
        let verbs = "verbs".parse::<Transport>().unwrap_err();
        assert!(verbs.contains("RDMA verbs") && verbs.contains("supported: tcp"), "{verbs}");
        assert!("udp".parse::<Transport>().unwrap_err().contains("unknown transport \"udp\""));
        assert_eq!(names("ens2f0, ib0,,"), ["ens2f0", "ib0"]);
        for bad in ["a/b", "sixteen-chars-xx", "a b"] {
            assert!(parse_interface_list(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rdma_netdevs_are_followed_when_present_else_the_pods_own_interface() {
        let pod = [iface("lo", true, &["127.0.0.1"]), iface("eth0", true, &["fe80::1", "10.244.1.5"])];
        let chosen = select(&[], &names("ib0,ens2f0"), &pod).unwrap();
        assert_eq!(chosen.bind, None);
        assert_eq!(
            chosen.reason,
            "SKEIN_RDMA_NETDEVS=ib0,ens2f0: not in this network namespace; the pod's own interface towards rank 0"
        );
        let host = [
            iface("eth0", true, &["172.18.0.11"]),
            iface("ib0", false, &["192.168.10.1"]),
            iface("ens2f0", true, &["fe80::2", "fd00::7"]),
        ];
        let chosen = select(&[], &names("ib0,ens2f0"), &host).unwrap();
        assert_eq!(chosen.bind, Some(("ens2f0".into(), "fd00::7".parse().unwrap())), "ib0 is down; link-local skipped");
        let chosen = select(&names("eth0"), &names("ens2f0"), &host).unwrap();
        assert_eq!(chosen.bind, Some(("eth0".into(), "172.18.0.11".parse().unwrap())), "SKEIN_SOCKET_IFNAME wins");
        let error = select(&names("eth9"), &[], &host).unwrap_err().to_string();
        assert!(
            error.contains("SKEIN_SOCKET_IFNAME")
                && error.contains("eth9")
                && error.contains("ib0 down [192.168.10.1]"),
            "{error}"
        );
        assert_eq!(select(&[], &[], &pod).unwrap().reason, "the interface towards rank 0");
        assert_eq!(interface_of("10.244.1.5".parse().unwrap(), &pod), Some("eth0"));
    }

    #[test]
    fn the_namespace_has_a_loopback_interface() {
        let interfaces = local_interfaces().unwrap();
        let lo = interfaces.iter().find(|i| i.name == "lo").expect("lo");
        assert!(lo.addresses.contains(&"127.0.0.1".parse().unwrap()), "{lo:?}");
    }
}
