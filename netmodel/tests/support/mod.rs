//! Builders for cluster objects shared by the engine tests.
#![allow(dead_code)]

use std::net::IpAddr;

use skein_netmodel::annotations::{ChassisAnnotation, Encap, PodNetwork};
use skein_netmodel::cluster::{
    AddressType, ContainerPort, Endpoint, EndpointConditions, EndpointPort, EndpointSlice, Labels, Node, Pod, PortRef,
    Protocol, Service, ServicePort, ServiceType, SessionAffinity, TrafficPolicy,
};
use skein_netmodel::{ChassisView, Engine, IpNet, MacAddr, NetworkConfig, ObjectKey};

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// Node `name` with subnet number `index` (None: not assigned yet), registered if `chassis`.
pub fn node(name: &str, index: Option<u8>, chassis: bool) -> Node {
    let n = name.bytes().fold(0u8, |a, b| a.wrapping_add(b));
    Node {
        name: name.into(),
        internal_ips: vec![ip(&format!("192.0.2.{n}"))],
        subnets: index.map(|i| vec![net(&format!("10.244.{i}.0/24"))]).unwrap_or_default(),
        chassis: chassis.then(|| ChassisAnnotation {
            id: format!("uuid-{name}"),
            tunnel_ip: ip(&format!("198.51.100.{n}")),
            encap: Encap::Geneve,
        }),
        zone: None,
    }
}

pub fn pod_network(subnet: u8, host: u8) -> PodNetwork {
    let addr = ip(&format!("10.244.{subnet}.{host}"));
    PodNetwork {
        ip_addresses: vec![IpNet::new(addr, 24).unwrap()],
        mac_address: MacAddr::derived(addr),
        gateway_ips: vec![ip(&format!("10.244.{subnet}.1"))],
        routes: vec![],
        mtu: 1400,
    }
}

/// Pod `name` on `node` with address `10.244.<subnet>.<host>`.
pub fn pod(name: &str, node: &str, subnet: u8, host: u8) -> Pod {
    Pod {
        namespace: "default".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        node: Some(node.into()),
        labels: Labels::new(),
        host_network: false,
        terminal: false,
        ports: vec![ContainerPort { name: Some("http".into()), port: 8080, protocol: Protocol::Tcp }],
        network: Some(pod_network(subnet, host)),
    }
}

pub fn service(name: &str, cluster_ip: &str, port: u16) -> Service {
    Service {
        namespace: "default".into(),
        name: name.into(),
        service_type: ServiceType::ClusterIp,
        cluster_ips: vec![ip(cluster_ip)],
        ports: vec![ServicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port,
            target_port: PortRef::Name("http".into()),
            node_port: None,
        }],
        selector: Some(Labels::new()),
        external_ips: vec![],
        load_balancer_ips: vec![],
        external_traffic_policy: TrafficPolicy::Cluster,
        internal_traffic_policy: TrafficPolicy::Cluster,
        session_affinity: SessionAffinity::None,
    }
}

/// A slice for `service` with endpoints `(address, node, ready)` on port 8080.
pub fn slice(name: &str, service: &str, endpoints: &[(&str, &str, bool)]) -> EndpointSlice {
    EndpointSlice {
        namespace: "default".into(),
        name: name.into(),
        service_name: Some(service.into()),
        address_type: AddressType::Ipv4,
        ports: vec![EndpointPort { name: "http".into(), port: Some(8080), protocol: Protocol::Tcp }],
        endpoints: endpoints
            .iter()
            .map(|(a, n, ready)| Endpoint {
                addresses: vec![ip(a)],
                conditions: EndpointConditions { ready: Some(*ready), serving: Some(*ready), terminating: Some(false) },
                node: Some((*n).into()),
                zone: None,
            })
            .collect(),
    }
}

pub fn key(name: &str) -> ObjectKey {
    ObjectKey::new("default", name)
}

/// Every chassis's view from a fresh engine fed the engine's final state in one batch.
pub fn full_compile(engine: &Engine) -> Vec<ChassisView> {
    let mut fresh = Engine::new(engine.config().clone()).unwrap();
    fresh.apply(engine.state().to_changes());
    fresh.chassis_names().map(|c| fresh.snapshot(c).unwrap()).collect()
}

pub fn default_engine() -> Engine {
    Engine::new(NetworkConfig::default()).unwrap()
}

/// Pod `name` in namespace `ns` with labels `app` and `tier` (each optional).
pub fn labelled_pod(
    ns: &str,
    name: &str,
    node: &str,
    subnet: u8,
    host: u8,
    app: Option<&str>,
    tier: Option<&str>,
) -> Pod {
    let mut p = pod(name, node, subnet, host);
    p.namespace = ns.into();
    p.uid = format!("uid-{ns}-{name}");
    if let Some(a) = app {
        p.labels.insert("app".into(), a.into());
    }
    if let Some(t) = tier {
        p.labels.insert("tier".into(), t.into());
    }
    p
}

pub mod policies {
    //! Random NetworkPolicies for property tests: small label and port vocabularies, so
    //! that selectors match and miss often.
    use proptest::prelude::*;
    use skein_netmodel::cluster::{
        IpBlock, LabelSelector, Labels, NetworkPolicy, PolicyPeer, PolicyPort, PolicyRule, PolicyType, PortRef,
        Protocol, SelectorOperator, SelectorRequirement,
    };

    pub fn selector() -> impl Strategy<Value = LabelSelector> {
        prop_oneof![
            3 => Just(LabelSelector::default()),
            3 => prop_oneof![Just("a"), Just("b")].prop_map(|a| LabelSelector {
                match_labels: [("app".to_owned(), a.to_owned())].into_iter().collect(),
                match_expressions: vec![],
            }),
            1 => Just(LabelSelector {
                match_labels: Labels::new(),
                match_expressions: vec![SelectorRequirement {
                    key: "tier".into(),
                    operator: SelectorOperator::Exists,
                    values: vec![],
                }],
            }),
            1 => Just(LabelSelector {
                match_labels: Labels::new(),
                match_expressions: vec![SelectorRequirement {
                    key: "app".into(),
                    operator: SelectorOperator::NotIn,
                    values: vec!["a".into()],
                }],
            }),
            1 => Just(LabelSelector {
                match_labels: Labels::new(),
                match_expressions: vec![SelectorRequirement {
                    key: "tier".into(),
                    operator: SelectorOperator::In,
                    values: vec!["x".into(), "y".into()],
                }],
            }),
        ]
    }

    pub fn namespace_selector() -> impl Strategy<Value = LabelSelector> {
        prop_oneof![
            Just(LabelSelector::default()),
            prop_oneof![Just("red"), Just("blue")].prop_map(|t| LabelSelector {
                match_labels: [("team".to_owned(), t.to_owned())].into_iter().collect(),
                match_expressions: vec![],
            }),
            prop_oneof![Just("ns0"), Just("ns1"), Just("ns2")].prop_map(|n| LabelSelector {
                match_labels: [("kubernetes.io/metadata.name".to_owned(), n.to_owned())].into_iter().collect(),
                match_expressions: vec![],
            }),
        ]
    }

    pub fn peer() -> impl Strategy<Value = PolicyPeer> {
        prop_oneof![
            3 => selector().prop_map(|s| PolicyPeer { pod_selector: Some(s), ..Default::default() }),
            2 => namespace_selector().prop_map(|s| PolicyPeer { namespace_selector: Some(s), ..Default::default() }),
            2 => (selector(), namespace_selector()).prop_map(|(p, n)| PolicyPeer {
                pod_selector: Some(p),
                namespace_selector: Some(n),
                ip_block: None,
            }),
            2 => (prop_oneof![Just("10.244.0.0/16"), Just("10.244.1.0/24"), Just("0.0.0.0/0"), Just("198.51.100.0/24")],
                  proptest::collection::vec(prop_oneof![Just("10.244.1.4/32"), Just("10.244.0.0/25"), Just("198.51.100.7/32")], 0..2))
                .prop_map(|(cidr, except)| {
                    let cidr = cidr.parse().unwrap();
                    PolicyPeer {
                        ip_block: Some(IpBlock {
                            cidr,
                            except: except.into_iter().map(|e| e.parse().unwrap()).filter(|e| cidr.contains_net(e)).collect(),
                        }),
                        ..Default::default()
                    }
                }),
        ]
    }

    pub fn port() -> impl Strategy<Value = PolicyPort> {
        prop_oneof![
            3 => Just(PolicyPort { protocol: Protocol::Tcp, port: Some(PortRef::Number(8080)), end_port: None }),
            2 => Just(PolicyPort { protocol: Protocol::Tcp, port: Some(PortRef::Name("http".into())), end_port: None }),
            1 => Just(PolicyPort { protocol: Protocol::Tcp, port: Some(PortRef::Name("metrics".into())), end_port: None }),
            1 => Just(PolicyPort { protocol: Protocol::Tcp, port: Some(PortRef::Number(8000)), end_port: Some(8090) }),
            1 => Just(PolicyPort { protocol: Protocol::Udp, port: None, end_port: None }),
            1 => Just(PolicyPort { protocol: Protocol::Udp, port: Some(PortRef::Number(53)), end_port: None }),
            1 => Just(PolicyPort { protocol: Protocol::Sctp, port: Some(PortRef::Number(9000)), end_port: None }),
            // Invalid: left out with an issue.
            1 => Just(PolicyPort { protocol: Protocol::Tcp, port: None, end_port: Some(90) }),
        ]
    }

    pub fn rule() -> impl Strategy<Value = PolicyRule> {
        (proptest::collection::vec(peer(), 0..3), proptest::collection::vec(port(), 0..3))
            .prop_map(|(peers, ports)| PolicyRule { peers, ports })
    }

    /// Policy `name` in `ns`.
    pub fn policy(ns: String, name: String) -> impl Strategy<Value = NetworkPolicy> {
        (
            selector(),
            prop_oneof![
                Just(vec![]),
                Just(vec![PolicyType::Ingress]),
                Just(vec![PolicyType::Egress]),
                Just(vec![PolicyType::Ingress, PolicyType::Egress]),
            ],
            proptest::collection::vec(rule(), 0..3),
            proptest::collection::vec(rule(), 0..3),
        )
            .prop_map(move |(pod_selector, policy_types, ingress, egress)| NetworkPolicy {
                namespace: ns.clone(),
                name: name.clone(),
                pod_selector,
                policy_types,
                ingress,
                egress,
            })
    }
}
