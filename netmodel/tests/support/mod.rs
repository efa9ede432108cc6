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
