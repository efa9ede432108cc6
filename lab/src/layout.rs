//! Names and addresses of everything a lab creates, derived from its prefix and node count.
//! Pure: `up`, `down`, the kubelets and the checks all read the same layout, so a name is
//! computed in one place and `down` finds everything again from the prefix alone.

use std::net::Ipv4Addr;
use std::path::PathBuf;

/// Where every lab keeps its state: `/run/skein-lab/<prefix>/`.
pub const STATE_ROOT: &str = "/run/skein-lab";
/// The host's address on the underlay bridge: the API server and the master listen here.
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 1);
/// The underlay's prefix length.
pub const UNDERLAY_PREFIX_LEN: u8 = 24;
/// The outside namespace's address on the underlay: every node's default gateway.
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 254);
/// The "internet" address pods reach (on the outside namespace's loopback).
pub const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The port of the outside echo server (TCP and UDP).
pub const OUTSIDE_PORT: u16 = 80;
/// The API server's port on [`HOST_IP`].
pub const API_PORT: u16 = 6443;
/// The master's southbound port on [`HOST_IP`].
pub const SOUTHBOUND_PORT: u16 = 6643;
/// The cluster DNS stand-in's port on [`HOST_IP`] (UDP and TCP).
pub const DNS_PORT: u16 = 53;
/// The master's metrics port on [`HOST_IP`].
pub const MASTER_METRICS_PORT: u16 = 9477;
/// The most nodes a lab has (node IPs are 172.18.0.11 up to .(10 + MAX_NODES)).
pub const MAX_NODES: usize = 200;
/// The underlay MTU unless `skein-lab up --underlay-mtu` says otherwise.
pub const DEFAULT_UNDERLAY_MTU: u32 = 1500;

/// A bad `--prefix`.
#[derive(Debug, thiserror::Error)]
#[error(
    "--prefix {0:?}: must be 1 to 8 lowercase letters or digits, starting with a letter (it starts interface names of at most 15 characters)"
)]
pub struct BadPrefix(pub String);

/// The lab's naming: prefix plus fixed addressing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    prefix: String,
}

impl Layout {
    /// A layout for `prefix` (checked: it starts link names, which are at most 15 bytes).
    pub fn new(prefix: &str) -> Result<Layout, BadPrefix> {
        let ok = !prefix.is_empty()
            && prefix.len() <= 8
            && prefix.starts_with(|c: char| c.is_ascii_lowercase())
            && prefix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if ok { Ok(Layout { prefix: prefix.to_string() }) } else { Err(BadPrefix(prefix.to_string())) }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `/run/skein-lab/<prefix>`.
    pub fn state_dir(&self) -> PathBuf {
        PathBuf::from(STATE_ROOT).join(&self.prefix)
    }

    /// The state file the daemon keeps up to date.
    pub fn state_file(&self) -> PathBuf {
        self.state_dir().join("state.json")
    }

    /// The daemon's control socket.
    pub fn control_socket(&self) -> PathBuf {
        self.state_dir().join("daemon.sock")
    }

    /// The kubeconfig every component and command uses.
    pub fn kubeconfig(&self) -> PathBuf {
        self.state_dir().join("kubeconfig")
    }

    /// The daemon's log.
    pub fn daemon_log(&self) -> PathBuf {
        self.state_dir().join("daemon.log")
    }

    /// The master's log.
    pub fn master_log(&self) -> PathBuf {
        self.state_dir().join("master.log")
    }

    /// The underlay bridge in the root namespace.
    pub fn bridge(&self) -> String {
        format!("{}-br", self.prefix)
    }

    /// The root-namespace end of node `index`'s underlay veth (1-based index).
    pub fn node_uplink_peer(&self, index: usize) -> String {
        format!("{}-n{index}", self.prefix)
    }

    /// The root-namespace end of the outside namespace's veth.
    pub fn outside_peer(&self) -> String {
        format!("{}-out", self.prefix)
    }

    /// The outside namespace.
    pub fn outside_netns(&self) -> String {
        format!("{}-outside", self.prefix)
    }

    /// The name of node `index` (1-based): `node<i>`.
    pub fn node_name(index: usize) -> String {
        format!("node{index}")
    }

    /// The 1-based index of a node name made by [`Layout::node_name`].
    pub fn node_index(name: &str) -> Option<usize> {
        name.strip_prefix("node").and_then(|i| i.parse().ok()).filter(|i| (1..=MAX_NODES).contains(i))
    }

    /// The network namespace of node `name`.
    pub fn node_netns(&self, node: &str) -> String {
        format!("{}-{node}", self.prefix)
    }

    /// The underlay address of node `index` (1-based): 172.18.0.(10 + i).
    pub fn node_ip(index: usize) -> Ipv4Addr {
        let last = u8::try_from(10 + index.clamp(1, MAX_NODES)).unwrap_or(u8::MAX);
        Ipv4Addr::new(172, 18, 0, last)
    }

    /// A node's own directory: CNI binaries, CNI config, agent state, logs.
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.state_dir().join(node)
    }

    /// The node's CNI binary directory (the agent installs `skein-cni` here).
    pub fn cni_bin_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("cni-bin")
    }

    /// The node's CNI configuration directory (the agent writes its conflist here).
    pub fn cni_conf_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("cni-conf")
    }

    /// The node agent's state directory.
    pub fn agent_state_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("state")
    }

    /// The node agent's CNI socket.
    pub fn cni_socket(&self, node: &str) -> PathBuf {
        self.agent_state_dir(node).join("cni.sock")
    }

    /// The node's device-plugin directory (kubelet's `/var/lib/kubelet/device-plugins`).
    pub fn device_plugin_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("device-plugins")
    }

    /// The node's synthetic RDMA hardware (`sys/`, `dev/`).
    pub fn rdma_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("rdma")
    }

    /// The node agent's log.
    pub fn agent_log(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("agent.log")
    }

    /// The datapath process's control socket (the agent drives the datapath through it).
    pub fn datapath_socket(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("dp.sock")
    }

    /// The datapath process's log.
    pub fn datapath_log(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("datapath.log")
    }

    /// Where a pod's workload logs.
    pub fn pod_log(&self, node: &str, namespace: &str, pod: &str) -> PathBuf {
        self.node_dir(node).join("pods").join(format!("{namespace}_{pod}.log"))
    }

    /// The sandbox (network namespace) of the pod with this UID on `node`:
    /// `<prefix>-<node>-<8 hex digits of the UID's hash>`.
    pub fn pod_netns(&self, node: &str, pod_uid: &str) -> String {
        format!("{}-{node}-{:08x}", self.prefix, fnv1a64(pod_uid.as_bytes()) as u32)
    }

    /// Whether a network namespace name belongs to this lab.
    pub fn owns_netns(&self, name: &str) -> bool {
        name.strip_prefix(&self.prefix).is_some_and(|rest| rest.starts_with('-'))
    }

    /// Whether a root-namespace link name belongs to this lab.
    pub fn owns_link(&self, name: &str) -> bool {
        name.strip_prefix(&self.prefix).is_some_and(|rest| rest.starts_with('-'))
    }

    /// `http://172.18.0.1:6443`.
    pub fn api_url() -> String {
        format!("http://{HOST_IP}:{API_PORT}")
    }

    /// `http://172.18.0.1:6643`.
    pub fn master_url() -> String {
        format!("https://{HOST_IP}:{SOUTHBOUND_PORT}")
    }
}

/// 64-bit FNV-1a: short, stable names from UIDs and port sets.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_checked() {
        assert!(Layout::new("sklab").is_ok());
        assert!(Layout::new("a1").is_ok());
        for bad in ["", "Sklab", "1lab", "sk-lab", "toolongpre"] {
            let error = Layout::new(bad).unwrap_err().to_string();
            assert!(error.contains(&format!("{bad:?}")), "{error}");
        }
    }

    #[test]
    fn names_fit_interface_and_path_limits() {
        let layout = Layout::new("abcdefgh").unwrap();
        assert!(layout.bridge().len() <= 15);
        assert!(layout.node_uplink_peer(MAX_NODES).len() <= 15);
        assert!(layout.outside_peer().len() <= 15);
        // A Unix socket path is at most 107 bytes.
        assert!(layout.cni_socket("node200").as_os_str().len() < 100);
    }

    #[test]
    fn addresses_and_names_follow_the_topology() {
        let layout = Layout::new("sklab").unwrap();
        assert_eq!(Layout::node_ip(1), Ipv4Addr::new(172, 18, 0, 11));
        assert_eq!(Layout::node_ip(3), Ipv4Addr::new(172, 18, 0, 13));
        assert_eq!(layout.node_netns("node2"), "sklab-node2");
        assert_eq!(Layout::node_index("node12"), Some(12));
        assert_eq!(Layout::node_index("nodex"), None);
        assert_eq!(layout.cni_socket("node1"), PathBuf::from("/run/skein-lab/sklab/node1/state/cni.sock"));
        let netns = layout.pod_netns("node1", "8b1c7e2a-0000-4000-8000-000000000001");
        assert!(netns.starts_with("sklab-node1-") && netns.len() == "sklab-node1-".len() + 8, "{netns}");
        assert_eq!(netns, layout.pod_netns("node1", "8b1c7e2a-0000-4000-8000-000000000001"));
        assert!(layout.owns_netns(&netns) && layout.owns_netns("sklab-outside"));
        assert!(!layout.owns_netns("sklabx-node1") && !layout.owns_link("sklabbr"));
        assert!(layout.owns_link("sklab-br"));
    }
}
