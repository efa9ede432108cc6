//! What the plugin does to the node's network, as a trait: the real implementation is
//! [`crate::netlink::NetlinkHost`]; tests and the fuzz target use
//! [`crate::testing::FakeHost`], so the plugin's logic runs without syscalls.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::addr::{IpNet, MacAddr};

/// Prefix of every host-side veth Skein creates.
pub const HOST_IFNAME_PREFIX: &str = "sk";

/// The host end's name for an attachment: `sk` + 12 hex digits of a 64-bit FNV-1a hash of
/// `container_id`, a NUL byte and `ifname` (14 bytes, within the kernel's 15). Deterministic, so
/// DEL and GC find the link again from the attachment alone; the same function is the
/// agent's, so never change it without a protocol version bump.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in container_id.as_bytes().iter().chain([0u8].iter()).chain(ifname.as_bytes()) {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{HOST_IFNAME_PREFIX}{:012x}", hash >> 16)
}

/// Whether `name` has the shape of a name [`host_ifname`] produces.
pub fn is_skein_host_ifname(name: &str) -> bool {
    name.len() == HOST_IFNAME_PREFIX.len() + 12
        && name.starts_with(HOST_IFNAME_PREFIX)
        && name[HOST_IFNAME_PREFIX.len()..].bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A route to install in the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// Destination.
    pub dst: IpNet,
    /// Next hop; `None` installs a link-scope route.
    pub gw: Option<IpAddr>,
}

/// The pod interface's configuration, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterfaceSpec {
    /// MAC address.
    pub mac: MacAddr,
    /// Addresses.
    pub addresses: Vec<IpNet>,
    /// Routes, installed in order after the addresses.
    pub routes: Vec<RouteSpec>,
    /// MTU.
    pub mtu: u32,
}

/// What CHECK finds on a pod interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterfaceState {
    /// MAC address.
    pub mac: Option<MacAddr>,
    /// MTU.
    pub mtu: Option<u32>,
    /// Whether the link is administratively up.
    pub up: bool,
    /// Addresses on the interface.
    pub addresses: Vec<IpNet>,
    /// Routes in the main table of the pod's netns (every interface's).
    pub routes: Vec<RouteSpec>,
}

/// A link in the node's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSummary {
    /// Name.
    pub name: String,
    /// Whether it is a veth.
    pub is_veth: bool,
}

/// Why a network operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The namespace file does not exist or is not a network namespace.
    #[error("network namespace {path} does not exist or cannot be entered: {source}")]
    NetnsNotFound {
        /// The path.
        path: PathBuf,
        /// The open/setns error.
        source: std::io::Error,
    },
    /// A link of that name already exists.
    #[error("interface {0} already exists")]
    Exists(String),
    /// No link of that name.
    #[error("interface {0} does not exist")]
    NoSuchLink(String),
    /// A netlink request failed.
    #[error("{op} failed: {source}")]
    Netlink {
        /// What was being done, naming the object.
        op: String,
        /// The kernel's answer.
        source: std::io::Error,
    },
    /// The helper thread that entered the namespace died.
    #[error("the namespace worker thread failed: {0}")]
    Thread(String),
}

/// The network operations the plugin needs. Host-side operations act in the plugin's own
/// network namespace (the node's).
pub trait HostNetwork {
    /// Whether a network namespace exists at `netns`.
    fn netns_exists(&self, netns: &Path) -> bool;

    /// Whether a link named `name` exists on the host.
    fn link_exists(&self, name: &str) -> Result<bool, NetError>;

    /// Creates a veth pair: `host_ifname` on the host (brought up), its peer directly in
    /// `netns` named `pod_ifname` (left down). Returns the host end's MAC.
    /// [`NetError::Exists`] when either name is taken.
    fn create_veth(&self, host_ifname: &str, netns: &Path, pod_ifname: &str) -> Result<MacAddr, NetError>;

    /// Sets a host link's MTU.
    fn set_host_mtu(&self, name: &str, mtu: u32) -> Result<(), NetError>;

    /// Deletes a host link (and so its veth peer). `Ok(false)` when it did not exist.
    fn delete_host_link(&self, name: &str) -> Result<bool, NetError>;

    /// Inside `netns`: sets MAC and MTU of `ifname`, brings it up, adds the addresses and
    /// then the routes.
    fn configure_pod_interface(&self, netns: &Path, ifname: &str, spec: &PodInterfaceSpec) -> Result<(), NetError>;

    /// Inside `netns`: reads `ifname`'s state; `Ok(None)` when there is no such link.
    fn inspect_pod_interface(&self, netns: &Path, ifname: &str) -> Result<Option<PodInterfaceState>, NetError>;

    /// The host's links.
    fn list_host_links(&self) -> Result<Vec<LinkSummary>, NetError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ifname_is_deterministic_short_and_recognisable() {
        let a = host_ifname("0123456789abcdef", "eth0");
        assert_eq!(a, host_ifname("0123456789abcdef", "eth0"));
        assert_eq!(a.len(), 14);
        assert!(is_skein_host_ifname(&a));
        assert_ne!(a, host_ifname("0123456789abcdef", "eth1"));
        assert_ne!(host_ifname("ab", "c"), host_ifname("a", "bc"));
        assert!(!is_skein_host_ifname("sk0123456789aB"));
        assert!(!is_skein_host_ifname("sk0123"));
        assert!(!is_skein_host_ifname("eth0"));
        // Pinned: the agent derives the same name.
        assert_eq!(host_ifname("c1", "eth0"), host_ifname("c1", "eth0"));
        assert_eq!(host_ifname("", ""), format!("sk{:012x}", 0xaf63_bd4c_8601_b7df_u64 >> 16));
    }
}
