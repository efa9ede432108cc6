//! The underlay: a bridge in the root namespace holding the host's address, one namespace
//! per node with `eth0` on the bridge and a default route to the outside namespace, which
//! stands for the world beyond the nodes' gateway (and holds the "internet" address).
//! `destroy` removes everything named with the prefix, whether or not a daemon is alive.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use crate::layout::{GATEWAY_IP, HOST_IP, Layout, OUTSIDE_IP, UNDERLAY_PREFIX_LEN};
use crate::sys::{self, CommandError};

fn sysctl_in(netns: &str, key: &str, value: &str) -> Result<(), CommandError> {
    sys::run("ip", ["netns", "exec", netns, "sysctl", "-q", "-w", &format!("{key}={value}")]).map(|_| ())
}

/// The host's neighbour (ARP) table thresholds the lab needs, and what they are for.
///
/// The kernel keeps one neighbour table for all network namespaces, limited by
/// `gc_thresh3` (1,024 by default): every pod holds an entry per peer of its own subnet it
/// talks to, so 200 pods of a node talking to each other need about 20,000 entries, and
/// past the limit the kernel refuses new ones (`neighbor table overflow!` in the kernel
/// log; the pods' connections time out). A real node with many pods needs the same
/// tuning (docs/install.md); the lab's nodes all share this host's table.
pub const NEIGHBOUR_THRESHOLDS: [(&str, u64); 3] = [
    ("net.ipv4.neigh.default.gc_thresh1", 16_384),
    ("net.ipv4.neigh.default.gc_thresh2", 65_536),
    ("net.ipv4.neigh.default.gc_thresh3", 131_072),
];

/// Raises the host's neighbour table thresholds to [`NEIGHBOUR_THRESHOLDS`] (a threshold
/// already higher is left alone). Returns the settings it changed.
pub fn raise_neighbour_thresholds() -> Result<Vec<String>, CommandError> {
    let mut changed = Vec::new();
    for (key, want) in NEIGHBOUR_THRESHOLDS {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let now: u64 = std::fs::read_to_string(&path).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0);
        if now < want {
            sys::run("sysctl", ["-q", "-w", &format!("{key}={want}")])?;
            changed.push(format!("{key}: {now} -> {want}"));
        }
    }
    Ok(changed)
}

fn add_veth_into(layout: &Layout, root_end: &str, netns: &str, address: &str, mtu: u32) -> Result<(), CommandError> {
    sys::ip(&["netns", "add", netns])?;
    sys::ip(&["link", "add", root_end, "type", "veth", "peer", "name", "eth0", "netns", netns])?;
    sys::ip(&["link", "set", root_end, "mtu", &mtu.to_string(), "master", &layout.bridge(), "up"])?;
    sys::ip_in(netns, &["link", "set", "lo", "up"])?;
    sys::ip_in(netns, &["link", "set", "eth0", "mtu", &mtu.to_string(), "up"])?;
    sys::ip_in(netns, &["addr", "add", &format!("{address}/{UNDERLAY_PREFIX_LEN}"), "dev", "eth0"])?;
    Ok(())
}

/// The first `(link, address)` of an `ip -o -4 addr show` listing inside the lab's
/// underlay subnet (172.18.0.0/24).
fn underlay_holder(listing: &str) -> Option<(String, String)> {
    let subnet = u32::from(HOST_IP) >> (32 - UNDERLAY_PREFIX_LEN);
    listing.lines().find_map(|line| {
        // "7: plab-br    inet 172.18.0.1/24 brd 172.18.0.255 scope global plab-br"
        let mut fields = line.split_whitespace();
        let link = fields.nth(1)?;
        let address = fields.skip_while(|f| *f != "inet").nth(1)?;
        let ip: Ipv4Addr = address.split('/').next()?.parse().ok()?;
        (u32::from(ip) >> (32 - UNDERLAY_PREFIX_LEN) == subnet).then(|| (link.to_string(), address.to_string()))
    })
}

/// Raises the host's neighbour table thresholds (see [`NEIGHBOUR_THRESHOLDS`]), creates
/// the bridge, `nodes` node namespaces and the outside namespace, every link of the
/// underlay with MTU `mtu`. Refuses when a
/// root-namespace link already holds an address of the underlay subnet: the lab's nodes
/// would reach the API server's address through that link instead.
pub fn create(layout: &Layout, nodes: usize, mtu: u32) -> Result<(), CommandError> {
    if let Some((link, address)) = underlay_holder(&sys::ip(&["-o", "-4", "addr", "show"])?) {
        return Err(CommandError::UnderlayInUse { link, address, subnet: format!("{HOST_IP}/{UNDERLAY_PREFIX_LEN}") });
    }
    raise_neighbour_thresholds()?;
    let bridge = layout.bridge();
    sys::ip(&["link", "add", &bridge, "type", "bridge"])?;
    sys::ip(&["link", "set", &bridge, "mtu", &mtu.to_string()])?;
    sys::ip(&["addr", "add", &format!("{HOST_IP}/{UNDERLAY_PREFIX_LEN}"), "dev", &bridge])?;
    sys::ip(&["link", "set", &bridge, "up"])?;
    for index in 1..=nodes {
        let netns = layout.node_netns(&Layout::node_name(index));
        add_veth_into(layout, &layout.node_uplink_peer(index), &netns, &Layout::node_ip(index).to_string(), mtu)?;
        sys::ip_in(&netns, &["route", "add", "default", "via", &GATEWAY_IP.to_string()])?;
        sysctl_in(&netns, "net.ipv4.ip_forward", "1")?;
    }
    let outside = layout.outside_netns();
    add_veth_into(layout, &layout.outside_peer(), &outside, &GATEWAY_IP.to_string(), mtu)?;
    sys::ip_in(&outside, &["addr", "add", &format!("{OUTSIDE_IP}/32"), "dev", "lo"])?;
    sysctl_in(&outside, "net.ipv4.ip_forward", "1")?;
    Ok(())
}

/// Removes every namespace and root link of the lab, killing the processes inside the
/// namespaces first. Returns what it removed.
pub fn destroy(layout: &Layout) -> Vec<String> {
    let mut removed = Vec::new();
    let namespaces: Vec<String> =
        sys::netns_list().unwrap_or_default().into_iter().filter(|n| layout.owns_netns(n)).collect();
    // Pods first, then nodes and outside: a pod's workload dies before its node's agent.
    let (pods, others): (Vec<&String>, Vec<&String>) = namespaces.iter().partition(|n| {
        let rest = n.strip_prefix(layout.prefix()).unwrap_or("");
        rest.matches('-').count() >= 2
    });
    for netns in pods.into_iter().chain(others) {
        let pids: BTreeSet<i32> = sys::netns_pids(netns).into_iter().collect();
        for pid in &pids {
            sys::signal(*pid, rustix::process::Signal::KILL);
        }
        if sys::ip(&["netns", "del", netns]).is_ok() {
            removed.push(format!("netns {netns}"));
        }
    }
    for link in sys::root_links().unwrap_or_default().into_iter().filter(|l| layout.owns_link(l)) {
        if sys::ip(&["link", "del", &link]).is_ok() {
            removed.push(format!("link {link}"));
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::underlay_holder;

    #[test]
    fn a_link_in_the_underlay_subnet_is_found() {
        let listing = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
2: eth0    inet 10.0.2.15/24 brd 10.0.2.255 scope global eth0\\       valid_lft forever
7: plab-br    inet 172.18.0.1/24 brd 172.18.0.255 scope global plab-br\\       valid_lft forever
";
        assert_eq!(underlay_holder(listing), Some(("plab-br".to_string(), "172.18.0.1/24".to_string())));
        assert_eq!(underlay_holder("9: x    inet 172.19.0.1/24 scope global x\n"), None);
        assert_eq!(underlay_holder("9: y    inet 172.18.0.77/32 scope global y\n").map(|h| h.0), Some("y".into()));
        assert_eq!(underlay_holder("garbage\n3:\n"), None);
    }
}
