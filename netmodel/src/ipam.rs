//! Address management: node subnets carved from the cluster networks, pod addresses inside
//! a node's subnet. Dual-stack by construction: a node gets subnet number `i` in every
//! cluster network and a pod host number `k` in every subnet of its node, so one number
//! stands for all families (and is the pod's port key).
//!
//! The allocator keeps no state of its own beyond what the annotations hold: on start the
//! master restores every existing assignment ([`Ipam::restore_node`], [`Ipam::restore_pod`]
//! or [`Ipam::from_existing`]) *before* allocating anything, so a live pod's address is
//! never changed or handed to another pod. Allocation is next-fit from a cursor (a freed
//! address is reused last, which keeps stale ARP and conntrack entries harmless), and
//! deterministic for a given sequence of calls. Exhaustion is an error, never a panic.

use std::collections::{BTreeMap, HashMap};

use thiserror::Error;

use crate::addr::{IpNet, MacAddr};
use crate::annotations::PodNetwork;
use crate::cluster::ObjectKey;
use crate::config::{ConfigError, FIRST_POD_INDEX, GATEWAY_INDEX, LayoutError, NetworkConfig, NodeLayout};

/// Why an allocation or restoration failed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum IpamError {
    /// Every node subnet is taken.
    #[error("node {node}: no free node subnet (all {capacity} are assigned)")]
    NodeSubnetsExhausted {
        /// The node.
        node: String,
        /// How many subnets exist.
        capacity: u32,
    },
    /// Every pod address of the node is taken.
    #[error("pod {pod}: no free address in the subnets {subnets:?} of node {node} (all {capacity} are assigned)")]
    PodAddressesExhausted {
        /// The pod.
        pod: ObjectKey,
        /// Its node.
        node: String,
        /// The node's subnets.
        subnets: Vec<IpNet>,
        /// Pod addresses per node.
        capacity: u32,
    },
    /// The node has no subnet yet.
    #[error("pod {pod}: node {node} has no subnet yet")]
    NodeWithoutSubnet {
        /// The pod.
        pod: ObjectKey,
        /// The node.
        node: String,
    },
    /// A restored node subnet is already held by another node.
    #[error("node {node}: subnets {subnets:?} are already assigned to node {holder}")]
    SubnetInUse {
        /// The node.
        node: String,
        /// Its annotated subnets.
        subnets: Vec<IpNet>,
        /// The node holding them.
        holder: String,
    },
    /// The node already holds other subnets.
    #[error("node {node}: already holds {existing:?}, cannot also take {requested:?}")]
    NodeHasOtherSubnet {
        /// The node.
        node: String,
        /// What it holds.
        existing: Vec<IpNet>,
        /// What was asked.
        requested: Vec<IpNet>,
    },
    /// A restored pod address is already held by another pod.
    #[error("pod {pod}: addresses {ips:?} are already assigned to pod {holder}")]
    AddressInUse {
        /// The pod.
        pod: ObjectKey,
        /// Its annotated addresses.
        ips: Vec<IpNet>,
        /// The pod holding them.
        holder: ObjectKey,
    },
    /// The pod already holds an address (on `node`) that differs from the request.
    #[error("pod {pod}: already holds {existing:?} on node {node}")]
    PodHasOtherAddress {
        /// The pod.
        pod: ObjectKey,
        /// Its node at allocation time.
        node: String,
        /// What it holds.
        existing: Vec<IpNet>,
    },
    /// An annotated address or subnet does not fit the configuration.
    #[error("{object}: {source}")]
    Layout {
        /// `node/<name>` or `pod/<ns>/<name>`.
        object: String,
        /// Why.
        source: LayoutError,
    },
}

#[derive(Clone, Debug)]
struct NodeAlloc {
    index: u32,
    layout: NodeLayout,
    pods: BTreeMap<u32, ObjectKey>,
    cursor: u32,
}

/// Usage figures (for metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IpamUsage {
    /// Node subnets that exist.
    pub node_subnets_total: u32,
    /// Node subnets assigned.
    pub node_subnets_used: u32,
    /// Pod addresses per node subnet.
    pub pod_addresses_per_node: u32,
    /// Pod addresses assigned, over all nodes.
    pub pod_addresses_used: u64,
}

/// The allocator.
#[derive(Clone, Debug)]
pub struct Ipam {
    config: NetworkConfig,
    capacity: u32,
    max_pod_index: u32,
    nodes: BTreeMap<String, NodeAlloc>,
    subnet_holder: BTreeMap<u32, String>,
    subnet_cursor: u32,
    pods: HashMap<ObjectKey, (String, u32)>,
}

impl Ipam {
    /// An allocator with nothing assigned.
    pub fn new(config: NetworkConfig) -> Result<Ipam, ConfigError> {
        config.validate()?;
        Ok(Ipam {
            capacity: config.node_subnet_capacity(),
            max_pod_index: config.max_pod_index(),
            config,
            nodes: BTreeMap::new(),
            subnet_holder: BTreeMap::new(),
            subnet_cursor: 0,
            pods: HashMap::new(),
        })
    }

    /// An allocator holding the existing assignments — every annotated node subnet, then
    /// every annotated pod address — and the ones that could not be restored, with why.
    /// Restoring is order-independent for consistent input; for conflicting input the
    /// first one listed keeps the address.
    pub fn from_existing<'a>(
        config: NetworkConfig,
        nodes: impl IntoIterator<Item = (&'a str, &'a [IpNet])>,
        pods: impl IntoIterator<Item = (&'a ObjectKey, &'a str, &'a [IpNet])>,
    ) -> Result<(Ipam, Vec<IpamError>), ConfigError> {
        let mut ipam = Ipam::new(config)?;
        let mut errors = Vec::new();
        for (node, subnets) in nodes {
            if let Err(e) = ipam.restore_node(node, subnets) {
                errors.push(e);
            }
        }
        for (pod, node, ips) in pods {
            if let Err(e) = ipam.restore_pod(pod, node, ips) {
                errors.push(e);
            }
        }
        Ok((ipam, errors))
    }

    /// The configuration.
    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    fn take_subnet(&mut self, node: &str, index: u32) -> Result<Vec<IpNet>, IpamError> {
        let subnets = self.config.node_subnets(index).unwrap_or_default();
        let layout = NodeLayout::new(&self.config, node, &subnets, &[])
            .map_err(|source| IpamError::Layout { object: format!("node/{node}"), source })?;
        self.subnet_holder.insert(index, node.to_owned());
        self.nodes.insert(node.to_owned(), NodeAlloc { index, layout, pods: BTreeMap::new(), cursor: FIRST_POD_INDEX });
        Ok(subnets)
    }

    /// Records a node's annotated subnets.
    pub fn restore_node(&mut self, node: &str, subnets: &[IpNet]) -> Result<Vec<IpNet>, IpamError> {
        let index = self
            .config
            .node_subnet_index(subnets)
            .map_err(|source| IpamError::Layout { object: format!("node/{node}"), source })?;
        if let Some(existing) = self.nodes.get(node) {
            if existing.index == index {
                return Ok(existing.layout.subnets.clone());
            }
            return Err(IpamError::NodeHasOtherSubnet {
                node: node.to_owned(),
                existing: existing.layout.subnets.clone(),
                requested: subnets.to_vec(),
            });
        }
        if let Some(holder) = self.subnet_holder.get(&index) {
            return Err(IpamError::SubnetInUse {
                node: node.to_owned(),
                subnets: subnets.to_vec(),
                holder: holder.clone(),
            });
        }
        self.take_subnet(node, index)
    }

    /// The node's subnets, allocating the next free ones if it has none.
    pub fn allocate_node(&mut self, node: &str) -> Result<Vec<IpNet>, IpamError> {
        if let Some(existing) = self.nodes.get(node) {
            return Ok(existing.layout.subnets.clone());
        }
        for step in 0..self.capacity {
            let index = (self.subnet_cursor + step) % self.capacity;
            if !self.subnet_holder.contains_key(&index) {
                self.subnet_cursor = (index + 1) % self.capacity;
                return self.take_subnet(node, index);
            }
        }
        Err(IpamError::NodeSubnetsExhausted { node: node.to_owned(), capacity: self.capacity })
    }

    /// Frees a deleted node's subnets and its pods' addresses.
    pub fn release_node(&mut self, node: &str) {
        if let Some(alloc) = self.nodes.remove(node) {
            self.subnet_holder.remove(&alloc.index);
            for pod in alloc.pods.values() {
                self.pods.remove(pod);
            }
        }
    }

    /// The node's subnets, if assigned.
    pub fn node_subnets(&self, node: &str) -> Option<&[IpNet]> {
        self.nodes.get(node).map(|a| a.layout.subnets.as_slice())
    }

    fn network(config: &NetworkConfig, alloc: &NodeAlloc, index: u32) -> PodNetwork {
        let ip_addresses: Vec<IpNet> = alloc
            .layout
            .subnets
            .iter()
            .filter_map(|s| s.nth(u128::from(index)).map(|ip| IpNet::clamped(ip, s.prefix_len())))
            .collect();
        let gateway_ips = alloc.layout.subnets.iter().filter_map(|s| s.nth(u128::from(GATEWAY_INDEX))).collect();
        PodNetwork {
            mac_address: ip_addresses.first().map(|n| MacAddr::derived(n.addr())).unwrap_or_default(),
            ip_addresses,
            gateway_ips,
            routes: Vec::new(),
            mtu: config.mtu,
        }
    }

    /// Records a pod's annotated addresses on `node` (whose subnet must be known).
    pub fn restore_pod(&mut self, pod: &ObjectKey, node: &str, ips: &[IpNet]) -> Result<PodNetwork, IpamError> {
        let alloc = self
            .nodes
            .get(node)
            .ok_or_else(|| IpamError::NodeWithoutSubnet { pod: pod.clone(), node: node.to_owned() })?;
        let index = u32::from(
            alloc
                .layout
                .pod_port_key(&self.config, ips)
                .map_err(|source| IpamError::Layout { object: format!("pod/{pod}"), source })?
                .get(),
        );
        if let Some((held_node, held)) = self.pods.get(pod) {
            if held_node == node && *held == index {
                return Ok(Self::network(&self.config, alloc, index));
            }
            let existing = self
                .nodes
                .get(held_node)
                .map(|a| Self::network(&self.config, a, *held).ip_addresses)
                .unwrap_or_default();
            return Err(IpamError::PodHasOtherAddress { pod: pod.clone(), node: held_node.clone(), existing });
        }
        if let Some(holder) = alloc.pods.get(&index) {
            return Err(IpamError::AddressInUse { pod: pod.clone(), ips: ips.to_vec(), holder: holder.clone() });
        }
        let network = Self::network(&self.config, alloc, index);
        if let Some(alloc) = self.nodes.get_mut(node) {
            alloc.pods.insert(index, pod.clone());
        }
        self.pods.insert(pod.clone(), (node.to_owned(), index));
        Ok(network)
    }

    /// The pod's network on `node`: its existing one, or the next free address.
    pub fn allocate_pod(&mut self, pod: &ObjectKey, node: &str) -> Result<PodNetwork, IpamError> {
        if let Some((held_node, held)) = self.pods.get(pod) {
            let alloc = self.nodes.get(held_node);
            let network = alloc.map(|a| Self::network(&self.config, a, *held));
            return match network {
                Some(n) if held_node == node => Ok(n),
                n => Err(IpamError::PodHasOtherAddress {
                    pod: pod.clone(),
                    node: held_node.clone(),
                    existing: n.map(|n| n.ip_addresses).unwrap_or_default(),
                }),
            };
        }
        let max = self.max_pod_index;
        let alloc = self
            .nodes
            .get_mut(node)
            .ok_or_else(|| IpamError::NodeWithoutSubnet { pod: pod.clone(), node: node.to_owned() })?;
        let span = max + 1 - FIRST_POD_INDEX;
        for step in 0..span {
            let index = FIRST_POD_INDEX + (alloc.cursor - FIRST_POD_INDEX + step) % span;
            if let std::collections::btree_map::Entry::Vacant(slot) = alloc.pods.entry(index) {
                slot.insert(pod.clone());
                alloc.cursor = if index == max { FIRST_POD_INDEX } else { index + 1 };
                let network = Self::network(&self.config, alloc, index);
                self.pods.insert(pod.clone(), (node.to_owned(), index));
                return Ok(network);
            }
        }
        Err(IpamError::PodAddressesExhausted {
            pod: pod.clone(),
            node: node.to_owned(),
            subnets: alloc.layout.subnets.clone(),
            capacity: span,
        })
    }

    /// Frees a pod's address (pod deleted or finished).
    pub fn release_pod(&mut self, pod: &ObjectKey) {
        if let Some((node, index)) = self.pods.remove(pod)
            && let Some(alloc) = self.nodes.get_mut(&node)
        {
            alloc.pods.remove(&index);
        }
    }

    /// The pod's current addresses, if any.
    pub fn pod_addresses(&self, pod: &ObjectKey) -> Option<Vec<IpNet>> {
        let (node, index) = self.pods.get(pod)?;
        Some(Self::network(&self.config, self.nodes.get(node)?, *index).ip_addresses)
    }

    /// Usage figures.
    pub fn usage(&self) -> IpamUsage {
        IpamUsage {
            node_subnets_total: self.capacity,
            // At most `capacity` (a u32) nodes hold subnets.
            node_subnets_used: self.nodes.len() as u32,
            pod_addresses_per_node: self.max_pod_index + 1 - FIRST_POD_INDEX,
            pod_addresses_used: self.pods.len() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClusterNetwork;

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new("default", name)
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn allocates_the_contract_shapes() {
        let mut ipam = Ipam::new(NetworkConfig::default()).unwrap();
        assert_eq!(ipam.allocate_node("a").unwrap(), vec![net("10.244.0.0/24")]);
        assert_eq!(ipam.allocate_node("b").unwrap(), vec![net("10.244.1.0/24")]);
        assert_eq!(ipam.allocate_node("a").unwrap(), vec![net("10.244.0.0/24")]);
        let n = ipam.allocate_pod(&key("p"), "b").unwrap();
        assert_eq!(n.ip_addresses, vec![net("10.244.1.3/24")]);
        assert_eq!(n.mac_address.to_string(), "0a:58:0a:f4:01:03");
        assert_eq!(n.gateway_ips, vec!["10.244.1.1".parse::<std::net::IpAddr>().unwrap()]);
        assert_eq!(n.mtu, 0, "left to the node by default");
        n.validate().unwrap();
        assert_eq!(ipam.allocate_pod(&key("p"), "b").unwrap(), n);
        assert!(matches!(ipam.allocate_pod(&key("p"), "a"), Err(IpamError::PodHasOtherAddress { .. })));
        assert!(matches!(ipam.allocate_pod(&key("q"), "zzz"), Err(IpamError::NodeWithoutSubnet { .. })));
    }

    #[test]
    fn next_fit_reuses_freed_addresses_last() {
        let mut ipam = Ipam::new(NetworkConfig::default()).unwrap();
        ipam.allocate_node("a").unwrap();
        let first = ipam.allocate_pod(&key("p1"), "a").unwrap();
        ipam.release_pod(&key("p1"));
        let second = ipam.allocate_pod(&key("p2"), "a").unwrap();
        assert_ne!(first.ip_addresses, second.ip_addresses);
    }

    #[test]
    fn exhaustion_is_an_error() {
        let config = NetworkConfig {
            cluster_networks: vec![ClusterNetwork { cidr: net("10.244.0.0/28"), host_prefix_len: 29 }],
            ..NetworkConfig::default()
        };
        let mut ipam = Ipam::new(config).unwrap();
        ipam.allocate_node("a").unwrap();
        ipam.allocate_node("b").unwrap();
        assert!(matches!(ipam.allocate_node("c"), Err(IpamError::NodeSubnetsExhausted { capacity: 2, .. })));
        // A /29 holds .3 to .6 for pods.
        for i in 0..4 {
            ipam.allocate_pod(&key(&format!("p{i}")), "a").unwrap();
        }
        let err = ipam.allocate_pod(&key("p4"), "a").unwrap_err();
        assert!(matches!(err, IpamError::PodAddressesExhausted { capacity: 4, .. }), "{err}");
        assert!(err.to_string().contains("10.244.0.0/29"));
        ipam.release_node("a");
        assert_eq!(ipam.allocate_node("c").unwrap(), vec![net("10.244.0.0/29")]);
        assert_eq!(ipam.usage().pod_addresses_used, 0);
    }

    #[test]
    fn restore_keeps_existing_assignments() {
        let pods = [(key("x"), "a", vec![net("10.244.5.9/24")]), (key("y"), "a", vec![net("10.244.5.9/24")])];
        let nodes = [("a", vec![net("10.244.5.0/24")]), ("b", vec![net("10.244.5.0/24")])];
        let (mut ipam, errors) = Ipam::from_existing(
            NetworkConfig::default(),
            nodes.iter().map(|(n, s)| (*n, s.as_slice())),
            pods.iter().map(|(k, n, ips)| (k, *n, ips.as_slice())),
        )
        .unwrap();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(matches!(&errors[0], IpamError::SubnetInUse { holder, .. } if holder == "a"));
        assert!(matches!(&errors[1], IpamError::AddressInUse { holder, .. } if &*holder.name == "x"));
        assert_eq!(ipam.pod_addresses(&key("x")).unwrap(), vec![net("10.244.5.9/24")]);
        // New allocations go around the restored ones.
        assert_ne!(ipam.allocate_node("b").unwrap(), vec![net("10.244.5.0/24")]);
        for i in 0..251 {
            let n = ipam.allocate_pod(&key(&format!("n{i}")), "a").unwrap();
            assert_ne!(n.ip_addresses, vec![net("10.244.5.9/24")]);
        }
        assert!(matches!(ipam.restore_pod(&key("z"), "a", &[net("10.244.6.9/24")]), Err(IpamError::Layout { .. })));
    }
}
