//! Network configuration (the master's flags) and the *layout* derived from it: which
//! subnet, join address and tunnel keys a node gets, as pure functions of the node's subnet.
//!
//! Everything a restart must reproduce — node subnets, pod addresses, datapath and port
//! keys, join addresses — is either stored in the annotations of `DESIGN.md` or derived
//! from them here, so the master keeps no other state: the position `i` of a node's
//! subnet in the cluster network fixes its switch and gateway router keys and its join
//! address; the position of a pod's address in its node subnet fixes its port key.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::addr::{IpFamily, IpNet, MacAddr};
use crate::southbound::{DatapathKey, PortKey};

/// Most node subnets: the cluster router's and the join switch's port keys (15 bits)
/// number nodes from 2, and datapath keys (24 bits) take two per node.
pub const MAX_NODE_SUBNETS: u32 = PortKey::MAX as u32 - 1;
/// First pod host index in a node subnet: `.0` is the network, `.1` the gateway (the
/// cluster router's port), `.2` the management port.
pub const FIRST_POD_INDEX: u32 = 3;
/// Host index of the gateway in a node subnet.
pub const GATEWAY_INDEX: u32 = 1;
/// Host index of the management port in a node subnet.
pub const MANAGEMENT_INDEX: u32 = 2;

/// One cluster network: the CIDR node subnets are carved from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNetwork {
    /// The cluster CIDR (e.g. `10.244.0.0/16`).
    pub cidr: IpNet,
    /// Prefix length of each node's subnet (e.g. 24).
    pub host_prefix_len: u8,
}

/// The master's network configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    /// Cluster networks, at most one per family; the first is the *primary* family, whose
    /// addresses determine keys and MACs.
    pub cluster_networks: Vec<ClusterNetwork>,
    /// Join switch subnets, one for each cluster network's family.
    pub join_subnets: Vec<IpNet>,
    /// Pod interface MTU written into pod annotations (0: each node's agent decides).
    pub mtu: u16,
    /// Source address a pod's traffic to itself through its own Service (hairpin) is
    /// translated to, per family (OVN-Kubernetes' choice: `169.254.169.5`, `fd69::5`).
    pub hairpin_snat_ips: Vec<IpAddr>,
}

impl Default for NetworkConfig {
    /// `10.244.0.0/16` with a `/24` per node, join `100.64.0.0/16`, MTU 1400.
    fn default() -> NetworkConfig {
        NetworkConfig {
            cluster_networks: vec![ClusterNetwork {
                cidr: IpNet::clamped(IpAddr::V4(Ipv4Addr::new(10, 244, 0, 0)), 16),
                host_prefix_len: 24,
            }],
            join_subnets: vec![
                IpNet::clamped(IpAddr::V4(Ipv4Addr::new(100, 64, 0, 0)), 16),
                IpNet::clamped(IpAddr::V6(Ipv6Addr::new(0xfd98, 0, 0, 0, 0, 0, 0, 0)), 64),
            ],
            mtu: 0,
            hairpin_snat_ips: vec![
                IpAddr::V4(Ipv4Addr::new(169, 254, 169, 5)),
                IpAddr::V6(Ipv6Addr::new(0xfd69, 0, 0, 0, 0, 0, 0, 5)),
            ],
        }
    }
}

/// Why a configuration was rejected.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// No cluster network.
    #[error("cluster_networks is empty")]
    NoClusterNetwork,
    /// Two cluster networks of one family.
    #[error("cluster_networks: two {0} networks (one per family)")]
    DuplicateFamily(IpFamily),
    /// A CIDR has host bits set.
    #[error("{field}: {value} has host bits set (did you mean {network}?)")]
    NotANetwork {
        /// Which setting.
        field: &'static str,
        /// The value.
        value: IpNet,
        /// The network it probably meant.
        network: IpNet,
    },
    /// Host prefix length out of range.
    #[error("cluster network {cidr}: host_prefix_len {len} must be between {min} and {max}")]
    BadHostPrefix {
        /// The cluster CIDR.
        cidr: IpNet,
        /// The length given.
        len: u8,
        /// Smallest allowed (the CIDR's own length).
        min: u8,
        /// Largest allowed (a subnet must hold the gateway, management port and a pod).
        max: u8,
    },
    /// A family has a cluster network but no join subnet.
    #[error("join_subnets: no {0} join subnet for the {0} cluster network")]
    NoJoinSubnet(IpFamily),
    /// A join subnet overlaps the cluster network.
    #[error("join subnet {join} overlaps cluster network {cluster}")]
    JoinOverlap {
        /// The join subnet.
        join: IpNet,
        /// The cluster CIDR.
        cluster: IpNet,
    },
    /// A join subnet cannot hold even one gateway router.
    #[error("join subnet {0} is too small (it needs at least 4 addresses)")]
    JoinTooSmall(IpNet),
    /// MTU out of range.
    #[error("mtu {0} is out of range (0, or 576..=65535)")]
    BadMtu(u16),
}

impl NetworkConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cluster_networks.is_empty() {
            return Err(ConfigError::NoClusterNetwork);
        }
        for (i, net) in self.cluster_networks.iter().enumerate() {
            if self.cluster_networks[..i].iter().any(|n| n.cidr.family() == net.cidr.family()) {
                return Err(ConfigError::DuplicateFamily(net.cidr.family()));
            }
            if !net.cidr.is_network() {
                return Err(ConfigError::NotANetwork {
                    field: "cluster_networks.cidr",
                    value: net.cidr,
                    network: net.cidr.network(),
                });
            }
            let max = net.cidr.family().bits() - 3;
            if net.host_prefix_len < net.cidr.prefix_len() || net.host_prefix_len > max {
                return Err(ConfigError::BadHostPrefix {
                    cidr: net.cidr,
                    len: net.host_prefix_len,
                    min: net.cidr.prefix_len(),
                    max,
                });
            }
            let join = self.join_subnet(net.cidr.family()).ok_or(ConfigError::NoJoinSubnet(net.cidr.family()))?;
            if !join.is_network() {
                return Err(ConfigError::NotANetwork { field: "join_subnets", value: join, network: join.network() });
            }
            if join.contains_net(&net.cidr) || net.cidr.contains_net(&join) {
                return Err(ConfigError::JoinOverlap { join, cluster: net.cidr });
            }
            if join.host_bits() < 2 {
                return Err(ConfigError::JoinTooSmall(join));
            }
        }
        if self.mtu != 0 && self.mtu < 576 {
            return Err(ConfigError::BadMtu(self.mtu));
        }
        Ok(())
    }

    /// The primary cluster network (the first).
    pub fn primary(&self) -> Option<&ClusterNetwork> {
        self.cluster_networks.first()
    }

    /// The join subnet of `family`.
    pub fn join_subnet(&self, family: IpFamily) -> Option<IpNet> {
        self.join_subnets.iter().copied().find(|j| j.family() == family)
    }

    /// The hairpin SNAT address of `family`.
    pub fn hairpin_snat_ip(&self, family: IpFamily) -> Option<IpAddr> {
        self.hairpin_snat_ips.iter().copied().find(|ip| IpFamily::of(*ip) == family)
    }

    /// How many node subnets can be handed out: the smallest of each family's subnet
    /// count, the join subnets' room (two addresses are the network and the cluster
    /// router; IPv4 loses the broadcast address) and [`MAX_NODE_SUBNETS`].
    pub fn node_subnet_capacity(&self) -> u32 {
        let mut cap = u128::from(MAX_NODE_SUBNETS);
        for net in &self.cluster_networks {
            let bits = net.host_prefix_len.saturating_sub(net.cidr.prefix_len());
            cap = cap.min(if bits >= 64 { u128::MAX } else { 1u128 << bits });
            if let Some(join) = self.join_subnet(net.cidr.family()) {
                let broadcast = u128::from(join.family() == IpFamily::V4);
                cap = cap.min(join.size().saturating_sub(2 + broadcast));
            }
        }
        // `cap <= MAX_NODE_SUBNETS` fits u32.
        cap as u32
    }

    /// Highest pod host index in a node subnet (IPv4 keeps the broadcast address free;
    /// a pod's port key is its host index, so at most [`PortKey::MAX`]).
    pub fn max_pod_index(&self) -> u32 {
        let mut max = u128::from(PortKey::MAX);
        for net in &self.cluster_networks {
            let host_bits = net.cidr.family().bits() - net.host_prefix_len;
            let size = if host_bits >= 64 { u128::MAX } else { 1u128 << host_bits };
            let broadcast = u128::from(net.cidr.family() == IpFamily::V4);
            max = max.min(size.saturating_sub(1 + broadcast));
        }
        // `max <= PortKey::MAX` fits u32.
        max as u32
    }

    /// The subnets of node subnet number `index`, one per cluster network.
    pub fn node_subnets(&self, index: u32) -> Option<Vec<IpNet>> {
        if index >= self.node_subnet_capacity() {
            return None;
        }
        self.cluster_networks.iter().map(|n| n.cidr.subnet(n.host_prefix_len, u128::from(index))).collect()
    }

    /// The subnet number of a node's subnets: their position in the cluster networks,
    /// which must agree across families.
    pub fn node_subnet_index(&self, subnets: &[IpNet]) -> Result<u32, LayoutError> {
        let mut index = None;
        for net in &self.cluster_networks {
            let subnet = subnets
                .iter()
                .find(|s| s.family() == net.cidr.family())
                .ok_or(LayoutError::MissingFamily(net.cidr.family()))?;
            let i = net
                .cidr
                .subnet_index(subnet, net.host_prefix_len)
                .filter(|i| *i < u128::from(self.node_subnet_capacity()))
                .ok_or(LayoutError::SubnetOutsideCluster {
                    subnet: *subnet,
                    cidr: net.cidr,
                    len: net.host_prefix_len,
                })?;
            // `i < capacity <= u32::MAX` was checked by the filter.
            let i = i as u32;
            match index {
                None => index = Some(i),
                Some(first) if first != i => return Err(LayoutError::FamiliesDisagree(subnets.to_vec())),
                Some(_) => {}
            }
        }
        index.ok_or(LayoutError::MissingFamily(IpFamily::V4))
    }

    /// The join-switch address of the gateway router of node subnet `index` (with the
    /// join prefix length), per family.
    pub fn gateway_join_ips(&self, index: u32) -> Vec<IpNet> {
        self.join_ips(u128::from(index) + 2)
    }

    /// The cluster router's join-switch addresses (host index 1 of each join subnet).
    pub fn cluster_router_join_ips(&self) -> Vec<IpNet> {
        self.join_ips(1)
    }

    fn join_ips(&self, host: u128) -> Vec<IpNet> {
        self.cluster_networks
            .iter()
            .filter_map(|n| self.join_subnet(n.cidr.family()))
            .filter_map(|j| j.nth(host).and_then(|ip| IpNet::new(ip, j.prefix_len()).ok()))
            .collect()
    }
}

/// Why a node's or pod's addresses do not fit the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum LayoutError {
    /// No address of a configured family.
    #[error("no {0} address or subnet")]
    MissingFamily(IpFamily),
    /// The node subnet is not one of the cluster network's subnets.
    #[error("node subnet {subnet} is not a /{len} subnet of cluster network {cidr} within the node capacity")]
    SubnetOutsideCluster {
        /// The subnet.
        subnet: IpNet,
        /// The cluster CIDR.
        cidr: IpNet,
        /// The configured node prefix length.
        len: u8,
    },
    /// The families' subnets are at different positions.
    #[error("node subnets {0:?} are at different positions in their cluster networks")]
    FamiliesDisagree(Vec<IpNet>),
    /// A pod address outside its node subnet.
    #[error("pod address {ip} is not in node subnet {subnet}")]
    AddressOutsideSubnet {
        /// The address.
        ip: IpAddr,
        /// The node subnet.
        subnet: IpNet,
    },
    /// A pod address on a reserved position (network, gateway, management, broadcast, or
    /// beyond the port-key range).
    #[error("pod address {ip} is reserved in node subnet {subnet} (host index {index})")]
    ReservedAddress {
        /// The address.
        ip: IpAddr,
        /// The node subnet.
        subnet: IpNet,
        /// Its host index.
        index: u128,
    },
    /// A pod's families are at different host positions.
    #[error("pod addresses {0:?} are at different host positions of their node subnets")]
    PodFamiliesDisagree(Vec<IpNet>),
}

/// Names, keys and addresses of everything a node contributes to the logical network, all
/// derived from its subnet number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeLayout {
    /// Node name.
    pub node: String,
    /// Position of the node's subnet in the cluster networks.
    pub index: u32,
    /// The node subnets (one per family).
    pub subnets: Vec<IpNet>,
    /// `node-<node>` switch key.
    pub switch_key: DatapathKey,
    /// `gw-<node>` router key.
    pub gateway_key: DatapathKey,
    /// Gateway addresses (`.1`, with the subnet prefix length): the cluster router's port
    /// on this node's switch.
    pub gateway_ips: Vec<IpNet>,
    /// Management port addresses (`.2`).
    pub management_ips: Vec<IpNet>,
    /// The gateway router's join addresses.
    pub join_ips: Vec<IpNet>,
    /// The node's own addresses (`InternalIP`), the gateway router's external addresses
    /// and the SNAT source of pod egress.
    pub node_ips: Vec<IpAddr>,
    /// The cluster router's port key for this node's switch, and the join switch's port
    /// key for this node's gateway router (both `2 + index`).
    pub cluster_port_key: PortKey,
}

impl NodeLayout {
    /// The layout of a node whose subnets are `subnets`.
    pub fn new(
        config: &NetworkConfig,
        node: &str,
        subnets: &[IpNet],
        node_ips: &[IpAddr],
    ) -> Result<NodeLayout, LayoutError> {
        let index = config.node_subnet_index(subnets)?;
        let ordered: Vec<IpNet> = config
            .cluster_networks
            .iter()
            .filter_map(|n| n.cidr.subnet(n.host_prefix_len, u128::from(index)))
            .collect();
        let host = |i: u32| -> Vec<IpNet> {
            ordered
                .iter()
                .filter_map(|s| s.nth(u128::from(i)).and_then(|ip| IpNet::new(ip, s.prefix_len()).ok()))
                .collect()
        };
        Ok(NodeLayout {
            node: node.to_owned(),
            index,
            switch_key: DatapathKey::node_switch(index),
            gateway_key: DatapathKey::gateway_router(index),
            gateway_ips: host(GATEWAY_INDEX),
            management_ips: host(MANAGEMENT_INDEX),
            join_ips: config.gateway_join_ips(index),
            node_ips: node_ips.to_vec(),
            // `index < MAX_NODE_SUBNETS = PortKey::MAX - 1`, so `index + 2 <= PortKey::MAX`.
            cluster_port_key: PortKey::new((index + 2) as u16).unwrap_or(PortKey::NONE),
            subnets: ordered,
        })
    }

    /// The node's address of `family`.
    pub fn node_ip(&self, family: IpFamily) -> Option<IpAddr> {
        self.node_ips.iter().copied().find(|ip| IpFamily::of(*ip) == family)
    }

    /// MAC of the cluster router's port on this node's switch.
    pub fn gateway_mac(&self) -> MacAddr {
        derived_mac(&self.gateway_ips)
    }

    /// MAC of the management port.
    pub fn management_mac(&self) -> MacAddr {
        derived_mac(&self.management_ips)
    }

    /// MAC of the gateway router's join port.
    pub fn join_mac(&self) -> MacAddr {
        derived_mac(&self.join_ips)
    }

    /// The port key of a pod with addresses `ips` on this node: their common host index,
    /// checked to be a pod position.
    pub fn pod_port_key(&self, config: &NetworkConfig, ips: &[IpNet]) -> Result<PortKey, LayoutError> {
        let mut index = None;
        for subnet in &self.subnets {
            let ip = ips
                .iter()
                .find(|n| n.family() == subnet.family())
                .ok_or(LayoutError::MissingFamily(subnet.family()))?
                .addr();
            let i = subnet.index_of(ip).ok_or(LayoutError::AddressOutsideSubnet { ip, subnet: *subnet })?;
            if i < u128::from(FIRST_POD_INDEX) || i > u128::from(config.max_pod_index()) {
                return Err(LayoutError::ReservedAddress { ip, subnet: *subnet, index: i });
            }
            match index {
                None => index = Some(i),
                Some(first) if first != i => return Err(LayoutError::PodFamiliesDisagree(ips.to_vec())),
                Some(_) => {}
            }
        }
        let i = index.ok_or(LayoutError::MissingFamily(IpFamily::V4))?;
        // `i <= max_pod_index() <= PortKey::MAX` was checked above.
        Ok(PortKey::new(i as u16).unwrap_or(PortKey::NONE))
    }
}

/// The MAC derived from the first of `ips` (the primary family).
pub fn derived_mac(ips: &[IpNet]) -> MacAddr {
    ips.first().map(|n| MacAddr::derived(n.addr())).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn default_config_layout() {
        let config = NetworkConfig::default();
        config.validate().unwrap();
        assert_eq!(config.node_subnet_capacity(), 256);
        assert_eq!(config.max_pod_index(), 254);
        let layout = NodeLayout::new(&config, "n1", &[net("10.244.7.0/24")], &["192.0.2.7".parse().unwrap()]).unwrap();
        assert_eq!(layout.index, 7);
        assert_eq!(layout.gateway_ips, vec![net("10.244.7.1/24")]);
        assert_eq!(layout.management_ips, vec![net("10.244.7.2/24")]);
        assert_eq!(layout.join_ips, vec![net("100.64.0.9/16")]);
        assert_eq!(layout.gateway_mac().to_string(), "0a:58:0a:f4:07:01");
        assert_eq!(layout.cluster_port_key.get(), 9);
        assert_eq!(layout.switch_key, DatapathKey::node_switch(7));
        assert_eq!(layout.pod_port_key(&config, &[net("10.244.7.5/24")]).unwrap().get(), 5);
        assert!(layout.pod_port_key(&config, &[net("10.244.7.2/24")]).is_err());
        assert!(layout.pod_port_key(&config, &[net("10.244.7.255/24")]).is_err());
        assert!(layout.pod_port_key(&config, &[net("10.244.8.5/24")]).is_err());
        assert!(NodeLayout::new(&config, "n", &[net("10.245.7.0/24")], &[]).is_err());
        assert!(NodeLayout::new(&config, "n", &[net("10.244.7.0/25")], &[]).is_err());
    }

    #[test]
    fn dual_stack_layout_and_validation() {
        let config = NetworkConfig {
            cluster_networks: vec![
                ClusterNetwork { cidr: net("10.244.0.0/16"), host_prefix_len: 24 },
                ClusterNetwork { cidr: net("fd00:10:244::/48"), host_prefix_len: 64 },
            ],
            ..NetworkConfig::default()
        };
        config.validate().unwrap();
        assert_eq!(config.node_subnets(3).unwrap(), vec![net("10.244.3.0/24"), net("fd00:10:244:3::/64")]);
        let layout = NodeLayout::new(&config, "n", &config.node_subnets(3).unwrap(), &[]).unwrap();
        assert_eq!(layout.join_ips.len(), 2);
        assert!(matches!(
            config.node_subnet_index(&[net("10.244.3.0/24"), net("fd00:10:244:4::/64")]),
            Err(LayoutError::FamiliesDisagree(_))
        ));
        let key = layout.pod_port_key(&config, &[net("10.244.3.9/24"), net("fd00:10:244:3::9/64")]).unwrap();
        assert_eq!(key.get(), 9);
        assert!(layout.pod_port_key(&config, &[net("10.244.3.9/24"), net("fd00:10:244:3::8/64")]).is_err());

        let bad = |f: fn(&mut NetworkConfig)| {
            let mut c = NetworkConfig::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(matches!(bad(|c| c.cluster_networks.clear()), ConfigError::NoClusterNetwork));
        assert!(matches!(bad(|c| c.cluster_networks[0].cidr = net("10.244.1.0/16")), ConfigError::NotANetwork { .. }));
        assert!(matches!(bad(|c| c.cluster_networks[0].host_prefix_len = 30), ConfigError::BadHostPrefix { .. }));
        assert!(matches!(bad(|c| c.join_subnets.clear()), ConfigError::NoJoinSubnet(IpFamily::V4)));
        assert!(matches!(bad(|c| c.join_subnets[0] = net("10.0.0.0/8")), ConfigError::JoinOverlap { .. }));
        assert!(matches!(bad(|c| c.mtu = 100), ConfigError::BadMtu(100)));
        let set = NetworkConfig { mtu: 1400, ..NetworkConfig::default() };
        assert!(set.validate().is_ok(), "one MTU for every node");
    }

    #[test]
    fn capacity_is_bounded_by_join_and_keys() {
        let config = NetworkConfig {
            cluster_networks: vec![ClusterNetwork { cidr: net("10.0.0.0/8"), host_prefix_len: 24 }],
            join_subnets: vec![net("100.64.0.0/24")],
            ..NetworkConfig::default()
        };
        config.validate().unwrap();
        assert_eq!(config.node_subnet_capacity(), 253);
        let config = NetworkConfig {
            cluster_networks: vec![ClusterNetwork { cidr: net("10.0.0.0/8"), host_prefix_len: 28 }],
            join_subnets: vec![net("100.64.0.0/10")],
            ..NetworkConfig::default()
        };
        assert_eq!(config.node_subnet_capacity(), MAX_NODE_SUBNETS);
        assert_eq!(config.max_pod_index(), 14);
    }
}
