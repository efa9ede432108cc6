//! The real [`HostNetwork`]: synchronous rtnetlink requests over a `NETLINK_ROUTE` socket,
//! built with `netlink-packet-route`. No async runtime: each request is sent and its
//! acknowledgement (or dump) read before the next, which is all a CNI invocation needs.

use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::Path;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::addr::{IpNet, MacAddr};
use crate::host::{HostNetwork, LinkSummary, NetError, PodInterfaceSpec, PodInterfaceState, RouteSpec};
use crate::netns;

/// A `NETLINK_ROUTE` socket in the namespace of the thread that opened it.
struct RouteSocket {
    socket: Socket,
    sequence: u32,
}

fn netlink_err(op: impl Into<String>, source: io::Error) -> NetError {
    NetError::Netlink { op: op.into(), source }
}

impl RouteSocket {
    fn open() -> Result<RouteSocket, NetError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| netlink_err("opening a netlink socket", e))?;
        socket.bind_auto().map_err(|e| netlink_err("binding the netlink socket", e))?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(|e| netlink_err("connecting the netlink socket", e))?;
        Ok(RouteSocket { socket, sequence: 0 })
    }

    /// Sends one request and collects the replies: a dump until `NLMSG_DONE`, anything else
    /// until its acknowledgement. A kernel error becomes `Err(io::Error)` with its errno.
    fn request(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.sequence = self.sequence.wrapping_add(1);
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags | if dump { 0 } else { NLM_F_ACK };
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;

        let mut replies = Vec::new();
        loop {
            let (bytes, _) = self.socket.recv_from_full()?;
            let mut offset = 0;
            while offset < bytes.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[offset..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let length = reply.header.length as usize;
                if length == 0 {
                    break;
                }
                offset += (length + 3) & !3;
                if reply.header.sequence_number != self.sequence {
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

    fn link_by_name(&mut self, name: &str) -> Result<Option<LinkMessage>, NetError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(replies) => Ok(replies.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(link),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc_enodev()) => Ok(None),
            Err(e) => Err(netlink_err(format!("looking up interface {name}"), e)),
        }
    }

    fn require_link(&mut self, name: &str) -> Result<LinkMessage, NetError> {
        self.link_by_name(name)?.ok_or_else(|| NetError::NoSuchLink(name.to_string()))
    }

    fn set_link(&mut self, index: u32, attributes: Vec<LinkAttribute>, up: bool, op: &str) -> Result<(), NetError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        if up {
            msg.header.flags = LinkFlags::Up;
            msg.header.change_mask = LinkFlags::Up;
        }
        msg.attributes = attributes;
        self.request(RouteNetlinkMessage::SetLink(msg), 0).map(|_| ()).map_err(|e| netlink_err(op, e))
    }

    fn dump_links(&mut self) -> Result<Vec<LinkMessage>, NetError> {
        let replies = self
            .request(RouteNetlinkMessage::GetLink(LinkMessage::default()), NLM_F_DUMP)
            .map_err(|e| netlink_err("listing interfaces", e))?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(link),
                _ => None,
            })
            .collect())
    }

    fn add_address(&mut self, index: u32, ifname: &str, address: IpNet) -> Result<(), NetError> {
        let mut msg = AddressMessage::default();
        msg.header.family = family_of(address.addr);
        msg.header.prefix_len = address.prefix_len;
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(address.addr));
        msg.attributes.push(AddressAttribute::Address(address.addr));
        if !address.is_ipv4() {
            // The address must be usable at once: the pod's first packet must not wait for DAD.
            msg.header.flags = AddressHeaderFlags::Nodad;
            msg.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.request(RouteNetlinkMessage::NewAddress(msg), NLM_F_CREATE | NLM_F_EXCL)
            .map(|_| ())
            .map_err(|e| netlink_err(format!("adding address {address} to {ifname}"), e))
    }

    fn addresses_of(&mut self, index: u32) -> Result<Vec<IpNet>, NetError> {
        let replies = self
            .request(RouteNetlinkMessage::GetAddress(AddressMessage::default()), NLM_F_DUMP)
            .map_err(|e| netlink_err("listing addresses", e))?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    let prefix_len = a.header.prefix_len;
                    a.attributes
                        .iter()
                        .find_map(|attr| match attr {
                            AddressAttribute::Local(addr) => Some(IpNet { addr: *addr, prefix_len }),
                            _ => None,
                        })
                        .or_else(|| {
                            a.attributes.iter().find_map(|attr| match attr {
                                AddressAttribute::Address(addr) => Some(IpNet { addr: *addr, prefix_len }),
                                _ => None,
                            })
                        })
                }
                _ => None,
            })
            .collect())
    }

    fn add_route(&mut self, index: u32, ifname: &str, route: &RouteSpec) -> Result<(), NetError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family_of(route.dst.addr);
        msg.header.destination_prefix_length = route.dst.prefix_len;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = if route.gw.is_some() { RouteScope::Universe } else { RouteScope::Link };
        msg.header.kind = RouteType::Unicast;
        if route.dst.prefix_len > 0 {
            msg.attributes.push(RouteAttribute::Destination(RouteAddress::from(route.dst.network().addr)));
        }
        if let Some(gw) = route.gw {
            msg.attributes.push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        msg.attributes.push(RouteAttribute::Oif(index));
        let what = match route.gw {
            Some(gw) => format!("adding route {} via {gw} dev {ifname}", route.dst),
            None => format!("adding route {} dev {ifname}", route.dst),
        };
        self.request(RouteNetlinkMessage::NewRoute(msg), NLM_F_CREATE | NLM_F_EXCL)
            .map(|_| ())
            .map_err(|e| netlink_err(what, e))
    }

    fn main_table_routes(&mut self) -> Result<Vec<RouteSpec>, NetError> {
        let replies = self
            .request(RouteNetlinkMessage::GetRoute(RouteMessage::default()), NLM_F_DUMP)
            .map_err(|e| netlink_err("listing routes", e))?;
        let mut routes = Vec::new();
        for reply in replies {
            let RouteNetlinkMessage::NewRoute(r) = reply else { continue };
            let table = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(r.header.table));
            if table != u32::from(RouteHeader::RT_TABLE_MAIN) || r.header.kind != RouteType::Unicast {
                continue;
            }
            let to_ip = |a: &RouteAddress| match a {
                RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
                RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
                _ => None,
            };
            let unspecified = match r.header.address_family {
                AddressFamily::Inet6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                _ => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            };
            let dst = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Destination(d) => to_ip(d),
                    _ => None,
                })
                .unwrap_or(unspecified);
            let gw = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(g) => to_ip(g),
                _ => None,
            });
            routes.push(RouteSpec { dst: IpNet { addr: dst, prefix_len: r.header.destination_prefix_length }, gw });
        }
        Ok(routes)
    }
}

fn libc_enodev() -> i32 {
    rustix::io::Errno::NODEV.raw_os_error()
}

fn family_of(addr: IpAddr) -> AddressFamily {
    if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 }
}

fn mac_of(link: &LinkMessage) -> Option<MacAddr> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok().map(MacAddr),
        _ => None,
    })
}

fn mtu_of(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
}

/// [`HostNetwork`] over netlink. Host-side operations run on the calling thread (the
/// plugin runs in the node's namespace); pod-side ones on a thread inside the pod's namespace.
#[derive(Debug, Default, Clone, Copy)]
pub struct NetlinkHost;

impl HostNetwork for NetlinkHost {
    fn netns_exists(&self, netns: &Path) -> bool {
        netns.exists()
    }

    fn link_exists(&self, name: &str) -> Result<bool, NetError> {
        Ok(RouteSocket::open()?.link_by_name(name)?.is_some())
    }

    fn create_veth(&self, host_ifname: &str, netns: &Path, pod_ifname: &str) -> Result<MacAddr, NetError> {
        let ns = netns::open(netns)?;
        let mut sock = RouteSocket::open()?;
        let mut peer = LinkMessage::default();
        peer.attributes.push(LinkAttribute::IfName(pod_ifname.to_string()));
        // The peer is created directly inside the pod's namespace under its final name, so
        // a pod name that also exists on the host (`eth0`) never clashes.
        peer.attributes.push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
        let mut msg = LinkMessage::default();
        // The host end is a datapath port, not a host interface: it must never answer ARP
        // (the node's kernel would claim the node's addresses to the pod, racing the
        // datapath's own answers).
        msg.header.flags = LinkFlags::Up | LinkFlags::Noarp;
        msg.header.change_mask = LinkFlags::Up | LinkFlags::Noarp;
        msg.attributes.push(LinkAttribute::IfName(host_ifname.to_string()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        match sock.request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(NetError::Exists(format!("{host_ifname} (host) or {pod_ifname} (in {})", netns.display())));
            }
            Err(e) => {
                return Err(netlink_err(
                    format!("creating veth {host_ifname} with peer {pod_ifname} in {}", netns.display()),
                    e,
                ));
            }
        }
        drop(ns);
        let link = sock.require_link(host_ifname)?;
        mac_of(&link)
            .ok_or_else(|| netlink_err(format!("reading the MAC of {host_ifname}"), io::ErrorKind::NotFound.into()))
    }

    fn set_host_mtu(&self, name: &str, mtu: u32) -> Result<(), NetError> {
        let mut sock = RouteSocket::open()?;
        let link = sock.require_link(name)?;
        sock.set_link(link.header.index, vec![LinkAttribute::Mtu(mtu)], false, &format!("setting MTU {mtu} on {name}"))
    }

    fn delete_host_link(&self, name: &str) -> Result<bool, NetError> {
        let mut sock = RouteSocket::open()?;
        let Some(link) = sock.link_by_name(name)? else { return Ok(false) };
        let mut msg = LinkMessage::default();
        msg.header.index = link.header.index;
        match sock.request(RouteNetlinkMessage::DelLink(msg), 0) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc_enodev()) => Ok(false),
            Err(e) => Err(netlink_err(format!("deleting interface {name}"), e)),
        }
    }

    fn configure_pod_interface(&self, netns: &Path, ifname: &str, spec: &PodInterfaceSpec) -> Result<(), NetError> {
        netns::run_in(netns, || {
            let mut sock = RouteSocket::open()?;
            let index = sock.require_link(ifname)?.header.index;
            // MAC and MTU while the link is down (not every driver changes them live), then up.
            sock.set_link(
                index,
                vec![LinkAttribute::Address(spec.mac.0.to_vec()), LinkAttribute::Mtu(spec.mtu)],
                false,
                &format!("setting MAC {} and MTU {} on {ifname}", spec.mac, spec.mtu),
            )?;
            sock.set_link(index, Vec::new(), true, &format!("bringing {ifname} up"))?;
            for address in &spec.addresses {
                sock.add_address(index, ifname, *address)?;
            }
            for route in &spec.routes {
                sock.add_route(index, ifname, route)?;
            }
            Ok(())
        })
    }

    fn inspect_pod_interface(&self, netns: &Path, ifname: &str) -> Result<Option<PodInterfaceState>, NetError> {
        netns::run_in(netns, || {
            let mut sock = RouteSocket::open()?;
            let Some(link) = sock.link_by_name(ifname)? else { return Ok(None) };
            let addresses = sock.addresses_of(link.header.index)?;
            let routes = sock.main_table_routes()?;
            Ok(Some(PodInterfaceState {
                mac: mac_of(&link),
                mtu: mtu_of(&link),
                up: link.header.flags.contains(LinkFlags::Up),
                addresses,
                routes,
            }))
        })
    }

    fn list_host_links(&self) -> Result<Vec<LinkSummary>, NetError> {
        let links = RouteSocket::open()?.dump_links()?;
        Ok(links
            .iter()
            .filter_map(|link| {
                let name = link.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                })?;
                let is_veth = link.attributes.iter().any(|a| match a {
                    LinkAttribute::LinkInfo(infos) => infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))),
                    _ => false,
                });
                Some(LinkSummary { name, is_veth })
            })
            .collect())
    }
}

/// One interface of the calling thread's namespace (for the node agent's own set-up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceInfo {
    /// Name.
    pub name: String,
    /// Interface index.
    pub index: u32,
    /// MAC address, if it has one.
    pub mac: Option<MacAddr>,
    /// MTU.
    pub mtu: Option<u32>,
    /// Administratively up.
    pub up: bool,
    /// Addresses with prefix lengths.
    pub addresses: Vec<IpNet>,
}

/// Every interface of the calling thread's namespace, with its addresses.
pub fn interfaces() -> Result<Vec<InterfaceInfo>, NetError> {
    let mut sock = RouteSocket::open()?;
    let links = sock.dump_links()?;
    let mut out = Vec::with_capacity(links.len());
    for link in links {
        let Some(name) = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        }) else {
            continue;
        };
        let index = link.header.index;
        out.push(InterfaceInfo {
            name,
            index,
            mac: mac_of(&link),
            mtu: mtu_of(&link),
            up: link.header.flags.contains(LinkFlags::Up),
            addresses: sock.addresses_of(index)?,
        });
    }
    Ok(out)
}

/// The routes of the main table of the calling thread's namespace.
pub fn main_routes() -> Result<Vec<RouteSpec>, NetError> {
    RouteSocket::open()?.main_table_routes()
}

/// Creates a veth pair `a` ↔ `b` in the calling thread's namespace (both ends up). Fails
/// with [`NetError::Exists`] if either name exists.
pub fn create_veth_pair(a: &str, b: &str) -> Result<(), NetError> {
    NetlinkHost.create_veth(a, Path::new("/proc/thread-self/ns/net"), b).map(|_| ())
}

/// Sets `name`'s MAC (when given) and MTU and brings it up.
pub fn set_link(name: &str, mac: Option<MacAddr>, mtu: u32) -> Result<(), NetError> {
    let mut sock = RouteSocket::open()?;
    let link = sock.require_link(name)?;
    let mut attributes = vec![LinkAttribute::Mtu(mtu)];
    if let Some(mac) = mac {
        attributes.push(LinkAttribute::Address(mac.0.to_vec()));
    }
    sock.set_link(link.header.index, attributes, true, &format!("configuring {name}"))
}

/// Adds `address` to `name` unless it is there; returns whether it was added.
pub fn ensure_address(name: &str, address: IpNet) -> Result<bool, NetError> {
    let mut sock = RouteSocket::open()?;
    let link = sock.require_link(name)?;
    if sock.addresses_of(link.header.index)?.contains(&address) {
        return Ok(false);
    }
    sock.add_address(link.header.index, name, address).map(|()| true)
}

/// Adds `route` through `name` unless a main-table route to the same destination with
/// the same next hop exists; returns whether it was added.
pub fn ensure_route(name: &str, route: &RouteSpec) -> Result<bool, NetError> {
    let mut sock = RouteSocket::open()?;
    let link = sock.require_link(name)?;
    let want = RouteSpec { dst: route.dst.network(), gw: route.gw };
    if sock.main_table_routes()?.iter().any(|r| r.dst.network() == want.dst && r.gw == want.gw) {
        return Ok(false);
    }
    sock.add_route(link.header.index, name, route).map(|()| true)
}

/// Deletes the interface `name` in the calling thread's namespace; `Ok(false)` if absent.
pub fn delete_link(name: &str) -> Result<bool, NetError> {
    NetlinkHost.delete_host_link(name)
}

/// Deletes the interface with index `index` in the calling thread's namespace, and only
/// that one: `Ok(false)` if it is gone, also when another interface has taken its name
/// since (an interface index is not reused while the namespace lives). `name` is for the
/// error message.
pub fn delete_link_by_index(index: u32, name: &str) -> Result<bool, NetError> {
    let mut sock = RouteSocket::open()?;
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    match sock.request(RouteNetlinkMessage::DelLink(msg), 0) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc_enodev()) => Ok(false),
        Err(e) => Err(netlink_err(format!("deleting interface {name} (index {index})"), e)),
    }
}
