//! Property: under random allocations, releases and master restarts (rebuilding from the
//! annotations), no address or subnet is ever held twice, a live pod's address never
//! changes, and exhaustion is reported only when everything is really taken.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use skein_netmodel::config::ClusterNetwork;
use skein_netmodel::{IpNet, Ipam, IpamError, NetworkConfig, ObjectKey};

#[derive(Clone, Debug)]
enum Op {
    AllocNode(u8),
    ReleaseNode(u8),
    AllocPod(u8, u8),
    ReleasePod(u8),
    Restart { reverse: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..6u8).prop_map(Op::AllocNode),
        1 => (0..6u8).prop_map(Op::ReleaseNode),
        6 => (0..20u8, 0..6u8).prop_map(|(p, n)| Op::AllocPod(p, n)),
        3 => (0..20u8).prop_map(Op::ReleasePod),
        1 => any::<bool>().prop_map(|reverse| Op::Restart { reverse }),
    ]
}

fn config(dual_stack: bool) -> NetworkConfig {
    // Four node subnets of four pod addresses each: exhaustion happens often.
    let mut cluster_networks = vec![ClusterNetwork { cidr: "10.244.0.0/27".parse().unwrap(), host_prefix_len: 29 }];
    if dual_stack {
        cluster_networks.push(ClusterNetwork { cidr: "fd00:10:244::/64".parse().unwrap(), host_prefix_len: 125 });
    }
    NetworkConfig { cluster_networks, ..NetworkConfig::default() }
}

fn pod_key(p: u8) -> ObjectKey {
    ObjectKey::new("ns", format!("p{p}"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn never_double_allocates(dual_stack in any::<bool>(), ops in proptest::collection::vec(op(), 1..80)) {
        let config = config(dual_stack);
        let mut ipam = Ipam::new(config.clone()).unwrap();
        // What the annotations would hold.
        let mut nodes: BTreeMap<String, Vec<IpNet>> = BTreeMap::new();
        let mut pods: BTreeMap<ObjectKey, (String, Vec<IpNet>)> = BTreeMap::new();
        for op in ops {
            match op {
                Op::AllocNode(n) => {
                    let name = format!("n{n}");
                    match ipam.allocate_node(&name) {
                        Ok(subnets) => {
                            if let Some(old) = nodes.get(&name) {
                                prop_assert_eq!(old, &subnets);
                            }
                            prop_assert_eq!(subnets.len(), config.cluster_networks.len());
                            nodes.insert(name, subnets);
                        }
                        Err(IpamError::NodeSubnetsExhausted { capacity, .. }) => {
                            prop_assert_eq!(nodes.len() as u32, capacity);
                        }
                        Err(e) => prop_assert!(false, "unexpected {}", e),
                    }
                }
                Op::ReleaseNode(n) => {
                    let name = format!("n{n}");
                    ipam.release_node(&name);
                    nodes.remove(&name);
                    pods.retain(|_, (node, _)| *node != name);
                }
                Op::AllocPod(p, n) => {
                    let key = pod_key(p);
                    let node = format!("n{n}");
                    match ipam.allocate_pod(&key, &node) {
                        Ok(net) => {
                            net.validate().map_err(|e| TestCaseError::fail(e.to_string()))?;
                            if let Some((old_node, old)) = pods.get(&key) {
                                prop_assert_eq!(old_node, &node);
                                prop_assert_eq!(old, &net.ip_addresses, "a live pod's address changed");
                            }
                            let subnets = &nodes[&node];
                            for (ip, subnet) in net.ip_addresses.iter().zip(subnets) {
                                prop_assert!(subnet.contains(ip.addr()), "{} in {}", ip, subnet);
                            }
                            pods.insert(key, (node, net.ip_addresses));
                        }
                        Err(IpamError::NodeWithoutSubnet { .. }) => prop_assert!(!nodes.contains_key(&node)),
                        Err(IpamError::PodHasOtherAddress { node: held, .. }) => {
                            prop_assert_eq!(&pods[&key].0, &held);
                            prop_assert_ne!(held, node);
                        }
                        Err(IpamError::PodAddressesExhausted { capacity, .. }) => {
                            prop_assert_eq!(capacity, 4);
                            prop_assert_eq!(pods.values().filter(|(n, _)| *n == node).count(), 4);
                        }
                        Err(e) => prop_assert!(false, "unexpected {}", e),
                    }
                }
                Op::ReleasePod(p) => {
                    ipam.release_pod(&pod_key(p));
                    pods.remove(&pod_key(p));
                }
                Op::Restart { reverse } => {
                    let mut node_list: Vec<(&str, &[IpNet])> =
                        nodes.iter().map(|(n, s)| (n.as_str(), s.as_slice())).collect();
                    let mut pod_list: Vec<(&ObjectKey, &str, &[IpNet])> =
                        pods.iter().map(|(k, (n, ips))| (k, n.as_str(), ips.as_slice())).collect();
                    if reverse {
                        node_list.reverse();
                        pod_list.reverse();
                    }
                    let (restored, errors) = Ipam::from_existing(config.clone(), node_list, pod_list).unwrap();
                    prop_assert!(errors.is_empty(), "{:?}", errors);
                    ipam = restored;
                }
            }
            // Invariants over what is held.
            let mut subnets = BTreeSet::new();
            for (name, s) in &nodes {
                prop_assert_eq!(ipam.node_subnets(name), Some(s.as_slice()));
                for net in s {
                    prop_assert!(subnets.insert(*net), "subnet {} held twice", net);
                }
            }
            let mut addresses = BTreeSet::new();
            for (key, (_, ips)) in &pods {
                prop_assert_eq!(ipam.pod_addresses(key), Some(ips.clone()));
                for ip in ips {
                    prop_assert!(addresses.insert(ip.addr()), "address {} held twice", ip);
                }
            }
            let usage = ipam.usage();
            prop_assert_eq!(usage.node_subnets_used as usize, nodes.len());
            prop_assert_eq!(usage.pod_addresses_used as usize, pods.len());
        }
    }
}
