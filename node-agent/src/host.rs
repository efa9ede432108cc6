//! The node's side of the gateway: finding the uplink (the interface that holds the node
//! IP), its default gateway's MAC, the management port (host ↔ pods), and the kernel
//! rules that leave Skein's traffic on the uplink to Skein.
//!
//! The uplink is read with AF_PACKET, which gets a copy of every frame the NIC receives
//! while the kernel processes the original. For the two kinds of traffic Skein answers on
//! the node IP — NodePorts and the return traffic of pods' SNAT'ed connections, whose
//! ports come from a range the host does not use — the kernel must stay silent (no RST,
//! no port unreachable): a `raw` table chain `SKEIN-UPLINK` drops them before the
//! kernel's stack sees them. Packet sockets get their copy before netfilter runs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use skein_cni::addr::{IpNet as CniNet, MacAddr as CniMac};
use skein_cni::host::RouteSpec;
use skein_cni::netlink;
use skein_netmodel::MacAddr;
use tracing::{info, warn};

/// Name of the management interface on the host.
pub const MANAGEMENT_IFNAME: &str = "skein-mgmt0";
/// Name of its peer, the datapath's port.
pub const MANAGEMENT_DP_IFNAME: &str = "skein-mgmt0-dp";
/// The `raw` table chain that hides Skein's uplink traffic from the host's stack.
pub const UPLINK_CHAIN: &str = "SKEIN-UPLINK";
/// Bytes Geneve over IPv4 adds to an inner frame (outer IPv4, UDP, Geneve, the port-key
/// option, inner Ethernet — and the identity option the host's traffic carries while
/// NetworkPolicies are in use).
pub const GENEVE_OVERHEAD: u32 = skein_datapath::geneve::ENCAP_OVERHEAD_V4_IDENTITY as u32;

/// Why host set-up failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// No interface holds the address.
    #[error("no interface holds the node IP {0}; give --uplink-interface or --tunnel-ip")]
    NoUplink(Ipv4Addr),
    /// The named interface does not exist or has no IPv4 address.
    #[error("uplink interface {name}: {problem}")]
    Uplink {
        /// Interface.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// A netlink operation failed.
    #[error(transparent)]
    Net(#[from] skein_cni::host::NetError),
    /// The gateway's MAC could not be learned.
    #[error("the MAC of the default gateway {gateway} is not known after {waited:?} (no ARP answer on {interface})")]
    GatewayMac {
        /// Gateway.
        gateway: Ipv4Addr,
        /// Interface.
        interface: String,
        /// How long we waited.
        waited: Duration,
    },
    /// A sysctl could not be set.
    #[error("setting {name}: {problem}")]
    Sysctl {
        /// The sysctl.
        name: String,
        /// Why.
        problem: String,
    },
    /// iptables failed.
    #[error("iptables {args}: {problem}")]
    Iptables {
        /// Arguments.
        args: String,
        /// Output or error.
        problem: String,
    },
}

/// The node's uplink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UplinkInfo {
    /// Interface name.
    pub name: String,
    /// Its MAC.
    pub mac: MacAddr,
    /// Its MTU.
    pub mtu: u32,
    /// The node IP on it.
    pub node_ip: Ipv4Addr,
    /// The default gateway, if the main table has an IPv4 default route.
    pub gateway: Option<Ipv4Addr>,
}

/// Finds the uplink: `name` if given, else the interface that holds `node_ip`.
pub fn find_uplink(node_ip: Option<Ipv4Addr>, name: Option<&str>) -> Result<UplinkInfo, HostError> {
    let interfaces = netlink::interfaces()?;
    let v4 = |i: &netlink::InterfaceInfo| -> Vec<Ipv4Addr> {
        i.addresses
            .iter()
            .filter_map(|a| match a.addr {
                IpAddr::V4(v) => Some(v),
                IpAddr::V6(_) => None,
            })
            .collect()
    };
    let iface = match (name, node_ip) {
        (Some(name), _) => interfaces
            .iter()
            .find(|i| i.name == name)
            .ok_or_else(|| HostError::Uplink { name: name.to_owned(), problem: "no such interface".to_owned() })?,
        (None, Some(ip)) => interfaces.iter().find(|i| v4(i).contains(&ip)).ok_or(HostError::NoUplink(ip))?,
        (None, None) => {
            return Err(HostError::Uplink {
                name: "(none)".to_owned(),
                problem: "neither --uplink-interface nor a node IP is known".to_owned(),
            });
        }
    };
    let addresses = v4(iface);
    let node_ip = match node_ip {
        Some(ip) if addresses.contains(&ip) => ip,
        Some(ip) => {
            return Err(HostError::Uplink {
                name: iface.name.clone(),
                problem: format!("does not hold the node IP {ip} (it has {addresses:?})"),
            });
        }
        None => *addresses
            .first()
            .ok_or_else(|| HostError::Uplink { name: iface.name.clone(), problem: "has no IPv4 address".to_owned() })?,
    };
    let mac = iface
        .mac
        .map(|m| MacAddr(m.0))
        .ok_or_else(|| HostError::Uplink { name: iface.name.clone(), problem: "has no MAC address".to_owned() })?;
    let gateway = netlink::main_routes()?.into_iter().find_map(|r| match (r.dst.addr, r.dst.prefix_len, r.gw) {
        (IpAddr::V4(_), 0, Some(IpAddr::V4(gw))) => Some(gw),
        _ => None,
    });
    Ok(UplinkInfo { name: iface.name.clone(), mac, mtu: iface.mtu.unwrap_or(1500), node_ip, gateway })
}

/// The MAC of `ip` on `interface`, from the kernel's neighbour table; while unknown, a
/// datagram to the discard port makes the kernel ask (ARP), until `timeout`.
pub fn resolve_mac(ip: Ipv4Addr, interface: &str, timeout: Duration) -> Result<MacAddr, HostError> {
    let start = Instant::now();
    let mut poke = Instant::now() - Duration::from_secs(1);
    loop {
        if let Some(mac) = arp_entry(Path::new("/proc/net/arp"), ip, interface) {
            return Ok(mac);
        }
        if start.elapsed() >= timeout {
            return Err(HostError::GatewayMac { gateway: ip, interface: interface.to_owned(), waited: timeout });
        }
        if poke.elapsed() >= Duration::from_millis(500) {
            poke = Instant::now();
            if let Ok(sock) = UdpSocket::bind("0.0.0.0:0") {
                let _ = sock.send_to(&[0], SocketAddr::from((ip, 9)));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Parses `/proc/net/arp` for a complete entry of `ip` on `interface`.
fn arp_entry(path: &Path, ip: Ipv4Addr, interface: &str) -> Option<MacAddr> {
    let text = std::fs::read_to_string(path).ok()?;
    parse_arp_table(&text, ip, interface)
}

/// `IP address HW type Flags HW address Mask Device` lines; flags 0x2 = complete.
pub fn parse_arp_table(text: &str, ip: Ipv4Addr, interface: &str) -> Option<MacAddr> {
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || f[0].parse::<Ipv4Addr>().ok()? != ip || f[5] != interface {
            return None;
        }
        let flags = u32::from_str_radix(f[2].trim_start_matches("0x"), 16).ok()?;
        if flags & 0x2 == 0 {
            return None;
        }
        let mac: CniMac = f[3].parse().ok()?;
        (mac.0 != [0; 6]).then_some(MacAddr(mac.0))
    })
}

/// What the management interface gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagementSpec {
    /// MAC (the logical port's).
    pub mac: MacAddr,
    /// Addresses with the node subnet's prefix length.
    pub addresses: Vec<skein_netmodel::IpNet>,
    /// Next hop for the routed prefixes (the node subnet's gateway).
    pub gateway: IpAddr,
    /// Prefixes routed through the management port: the cluster CIDRs and Service CIDRs.
    pub routes: Vec<skein_netmodel::IpNet>,
    /// MTU.
    pub mtu: u32,
}

/// Creates the management veth pair if it does not exist (keeping it if it does).
pub fn ensure_management_link() -> Result<bool, HostError> {
    let interfaces = netlink::interfaces()?;
    let has = |name: &str| interfaces.iter().any(|i| i.name == name);
    if has(MANAGEMENT_IFNAME) && has(MANAGEMENT_DP_IFNAME) {
        return Ok(false);
    }
    let _ = netlink::delete_link(MANAGEMENT_IFNAME);
    let _ = netlink::delete_link(MANAGEMENT_DP_IFNAME);
    netlink::create_veth_pair(MANAGEMENT_DP_IFNAME, MANAGEMENT_IFNAME)?;
    info!(interface = MANAGEMENT_IFNAME, peer = MANAGEMENT_DP_IFNAME, "management port created");
    Ok(true)
}

fn cni_net(n: &skein_netmodel::IpNet) -> CniNet {
    CniNet { addr: n.addr(), prefix_len: n.prefix_len() }
}

/// Configures the management interface (idempotent: what is there already stays).
pub fn configure_management(spec: &ManagementSpec) -> Result<(), HostError> {
    netlink::set_link(MANAGEMENT_DP_IFNAME, None, spec.mtu)?;
    netlink::set_link(MANAGEMENT_IFNAME, Some(CniMac(spec.mac.0)), spec.mtu)?;
    for a in &spec.addresses {
        if netlink::ensure_address(MANAGEMENT_IFNAME, cni_net(a))? {
            info!(interface = MANAGEMENT_IFNAME, address = %a, "management address added");
        }
    }
    for r in &spec.routes {
        if r.addr().is_ipv4() != spec.gateway.is_ipv4() {
            continue;
        }
        let route = RouteSpec { dst: cni_net(r), gw: Some(spec.gateway) };
        if netlink::ensure_route(MANAGEMENT_IFNAME, &route)? {
            info!(route = %r, via = %spec.gateway, "route through the management port added");
        }
    }
    Ok(())
}

/// The ports Skein answers on the node IP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UplinkPorts {
    /// NodePort range.
    pub node_ports: (u16, u16),
    /// Source ports of pods' SNAT'ed connections.
    pub snat_ports: (u16, u16),
}

/// Installs (replacing) the `raw` rules that drop, before the host's stack, TCP and UDP to
/// `node_ip` on Skein's ports.
pub fn ensure_uplink_rules(node_ip: Ipv4Addr, ports: UplinkPorts) -> Result<(), HostError> {
    // Replaced in one transaction: a restarting agent must not leave a moment in which the
    // kernel sees an established NodePort or SNAT connection's packet and resets it.
    let dst = format!("{node_ip}/32");
    let mut rules = Vec::new();
    for (lo, hi) in [ports.node_ports, ports.snat_ports] {
        for proto in ["tcp", "udp"] {
            rules.push(format!("-A {UPLINK_CHAIN} -d {dst} -p {proto} -m {proto} --dport {lo}:{hi} -j DROP"));
        }
    }
    replace_chain("raw", UPLINK_CHAIN, &rules)?;
    if iptables(&["-t", "raw", "-C", "PREROUTING", "-j", UPLINK_CHAIN]).is_err() {
        iptables(&["-t", "raw", "-I", "PREROUTING", "-j", UPLINK_CHAIN])?;
    }
    info!(chain = UPLINK_CHAIN, %node_ip, node_ports = ?ports.node_ports, snat_ports = ?ports.snat_ports, "uplink rules installed");
    Ok(())
}

/// Creates `chain` in `table` or replaces its rules with `rules` (`-A CHAIN ...` lines), in
/// one `iptables-restore` transaction that touches no other chain.
fn replace_chain(table: &str, chain: &str, rules: &[String]) -> Result<(), HostError> {
    use std::io::Write as _;
    let mut input = format!("*{table}\n:{chain} - [0:0]\n");
    for rule in rules {
        input.push_str(rule);
        input.push('\n');
    }
    input.push_str("COMMIT\n");
    let args = format!("iptables-restore --noflush ({table} {chain})");
    let fail = |problem: String| HostError::Iptables { args: args.clone(), problem };
    let mut child = Command::new("iptables-restore")
        .args(["-w", "--noflush"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run iptables-restore: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).map_err(|e| fail(format!("writing the rules: {e}")))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if out.status.success() { Ok(()) } else { Err(fail(String::from_utf8_lossy(&out.stderr).trim().to_owned())) }
}

/// The `nat` chain that masquerades what the kernel DNATed into the management port.
pub const HOST_PORT_NAT_CHAIN: &str = "SKEIN-POSTROUTING";
/// The `filter` chain that lets that traffic through a host whose FORWARD policy drops.
pub const HOST_PORT_FORWARD_CHAIN: &str = "SKEIN-FORWARD";

/// Makes hostPorts work: the chained `portmap` plugin DNATs `NODE_IP:hostPort` to the pod
/// in the node's kernel, which forwards it into the management port. Without more, the
/// pod's reply would go to the client's address, which the datapath routes out of the
/// gateway router, SNAT'ed, straight onto the uplink, and the kernel never un-NATs it. So
/// the kernel masquerades such traffic to the management address (the pod answers that,
/// through the management port back into the kernel, which un-NATs it), and forwards:
/// `ip_forward` on, and `FORWARD` accepts it. `rp_filter` (strict or loose) passes both
/// directions: each arrives on the interface its source is routed through.
pub fn ensure_host_port_rules() -> Result<(), HostError> {
    let forward = Path::new("/proc/sys/net/ipv4/ip_forward");
    match std::fs::read_to_string(forward) {
        Ok(v) if v.trim() == "1" => {}
        _ => {
            std::fs::write(forward, "1")
                .map_err(|e| HostError::Sysctl { name: "net.ipv4.ip_forward".to_owned(), problem: e.to_string() })?;
            info!("net.ipv4.ip_forward set to 1 (hostPorts are forwarded into the management port)");
        }
    }
    let _ = iptables(&["-t", "nat", "-N", HOST_PORT_NAT_CHAIN]);
    iptables(&["-t", "nat", "-F", HOST_PORT_NAT_CHAIN])?;
    iptables(&[
        "-t",
        "nat",
        "-A",
        HOST_PORT_NAT_CHAIN,
        "-o",
        MANAGEMENT_IFNAME,
        "-m",
        "conntrack",
        "--ctstate",
        "DNAT",
        "-j",
        "MASQUERADE",
    ])?;
    if iptables(&["-t", "nat", "-C", "POSTROUTING", "-j", HOST_PORT_NAT_CHAIN]).is_err() {
        iptables(&["-t", "nat", "-I", "POSTROUTING", "-j", HOST_PORT_NAT_CHAIN])?;
    }
    let _ = iptables(&["-N", HOST_PORT_FORWARD_CHAIN]);
    iptables(&["-F", HOST_PORT_FORWARD_CHAIN])?;
    // Both directions of a DNATed hostPort connection through the management port.
    for direction in ["-o", "-i"] {
        let rule = ["-A", HOST_PORT_FORWARD_CHAIN, direction, MANAGEMENT_IFNAME];
        iptables(&[&rule[..], &["-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT"]].concat())?;
    }
    if iptables(&["-C", "FORWARD", "-j", HOST_PORT_FORWARD_CHAIN]).is_err() {
        iptables(&["-I", "FORWARD", "-j", HOST_PORT_FORWARD_CHAIN])?;
    }
    info!(
        nat = HOST_PORT_NAT_CHAIN,
        filter = HOST_PORT_FORWARD_CHAIN,
        interface = MANAGEMENT_IFNAME,
        "hostPort rules installed"
    );
    Ok(())
}

fn iptables(args: &[&str]) -> Result<(), HostError> {
    let joined = args.join(" ");
    let out = Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .map_err(|e| HostError::Iptables { args: joined.clone(), problem: format!("cannot run iptables: {e}") })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(HostError::Iptables { args: joined, problem: String::from_utf8_lossy(&out.stderr).trim().to_owned() })
    }
}

/// Warns when the host's ephemeral port range overlaps Skein's SNAT ports (the host's own
/// connections would then be dropped on return).
pub fn check_ephemeral_ports(snat: (u16, u16)) {
    let Ok(text) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") else { return };
    let mut it = text.split_whitespace().filter_map(|v| v.parse::<u16>().ok());
    if let (Some(lo), Some(hi)) = (it.next(), it.next())
        && lo <= snat.1
        && snat.0 <= hi
    {
        warn!(
            host_range = %format!("{lo}-{hi}"),
            snat_range = %format!("{}-{}", snat.0, snat.1),
            "the host's ephemeral ports overlap Skein's SNAT ports: host connections using them will fail; \
             narrow net.ipv4.ip_local_port_range"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arp_table_lines_are_matched_by_address_interface_and_completeness() {
        let text = "IP address       HW type     Flags       HW address            Mask     Device\n\
                    172.18.0.254     0x1         0x2         aa:bb:cc:dd:ee:01     *        eth0\n\
                    172.18.0.12      0x1         0x0         00:00:00:00:00:00     *        eth0\n\
                    172.18.0.13      0x1         0x2         aa:bb:cc:dd:ee:03     *        eth1\n";
        let gw: Ipv4Addr = "172.18.0.254".parse().unwrap();
        assert_eq!(parse_arp_table(text, gw, "eth0"), Some(MacAddr([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x01])));
        assert_eq!(parse_arp_table(text, gw, "eth1"), None);
        assert_eq!(parse_arp_table(text, "172.18.0.12".parse().unwrap(), "eth0"), None, "incomplete entry");
        assert_eq!(parse_arp_table(text, "172.18.0.13".parse().unwrap(), "eth0"), None, "other interface");
        assert_eq!(parse_arp_table("garbage", gw, "eth0"), None);
        assert_eq!(parse_arp_table("h\n172.18.0.254 0x1 zz aa:bb eth0", gw, "eth0"), None);
    }
}
