//! The logical ("northbound") network: routers, switches, ports, routes, NAT and load
//! balancers, as an operator reads them (`ovn-nbctl show`). Built per cluster object by
//! the `*_fragment` functions below — the unit the incremental compiler recompiles — and
//! assembled into a whole [`LogicalNetwork`] for dumps.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::addr::{IpFamily, IpNet, MacAddr};
use crate::cluster::{EndpointSlice, ObjectKey, Pod, Protocol, Service, ServiceType, SessionAffinity, TrafficPolicy};
use crate::config::{NetworkConfig, NodeLayout, derived_mac};
use crate::southbound::{DatapathKey, LbId, LbScope, NextHop, PortKey, PortKind, port_keys};

/// Name of the distributed cluster router.
pub const CLUSTER_ROUTER: &str = "cluster-router";
/// Name of the join switch.
pub const JOIN_SWITCH: &str = "join";

/// `node-<node>`.
pub fn node_switch_name(node: &str) -> String {
    format!("node-{node}")
}

/// `gw-<node>`.
pub fn gateway_router_name(node: &str) -> String {
    format!("gw-{node}")
}

/// `mgmt-<node>`.
pub fn management_port_name(node: &str) -> String {
    format!("mgmt-{node}")
}

/// `svc-<ns>-<name>-<proto>`.
pub fn load_balancer_name(service: &ObjectKey, protocol: Protocol) -> String {
    format!("svc-{}-{}-{}", service.namespace, service.name, protocol)
}

/// A port of a logical switch or router.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogicalPort {
    /// Name.
    pub name: String,
    /// Key within its datapath.
    pub key: PortKey,
    /// What it is attached to.
    pub kind: PortKind,
    /// MAC (`None` for the uplink, whose MAC the agent knows).
    pub mac: Option<MacAddr>,
    /// Addresses (router ports: their networks).
    pub ips: Vec<IpNet>,
    /// Where it resides (`None`: everywhere).
    pub chassis: Option<String>,
}

/// A logical switch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogicalSwitch {
    /// Name.
    pub name: String,
    /// Tunnel key.
    pub key: DatapathKey,
    /// Subnets.
    pub subnets: Vec<IpNet>,
    /// The chassis it lives on (`None`: distributed).
    pub chassis: Option<String>,
    /// Ports, by key.
    pub ports: BTreeMap<PortKey, LogicalPort>,
    /// Load balancers applied to traffic entering from its ports (node switches: all).
    pub load_balancers: Vec<String>,
}

/// Destination- or source-based route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RoutePolicy {
    /// Match the destination (more specific wins; beats every source route).
    DstIp,
    /// Match the source (pod egress to the node's own gateway router).
    SrcIp,
}

/// A static or connected route.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StaticRoute {
    /// Destination or source match.
    pub policy: RoutePolicy,
    /// The prefix.
    pub prefix: IpNet,
    /// Next hop.
    pub next_hop: NextHop,
    /// Output port.
    pub output_port: PortKey,
    /// Only in effect on this chassis (source routes of a node's pods), else everywhere.
    pub chassis: Option<String>,
}

impl StaticRoute {
    /// Routing-table priority: destination routes `1000 + prefix length`, above every
    /// source route (`prefix length`).
    pub fn priority(&self) -> u16 {
        let len = u16::from(self.prefix.prefix_len());
        match self.policy {
            RoutePolicy::DstIp => 1000 + len,
            RoutePolicy::SrcIp => len,
        }
    }
}

/// A source NAT rule of a gateway router.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NatRule {
    /// Translated source.
    pub external_ip: IpAddr,
    /// Sources translated.
    pub logical_ip: IpNet,
    /// Applies to packets leaving through this port.
    pub output_port: PortKey,
}

/// A logical router.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogicalRouter {
    /// Name.
    pub name: String,
    /// Tunnel key.
    pub key: DatapathKey,
    /// The chassis it is bound to (`None`: distributed).
    pub chassis: Option<String>,
    /// Ports, by key.
    pub ports: BTreeMap<PortKey, LogicalPort>,
    /// Routes.
    pub routes: Vec<StaticRoute>,
    /// SNAT rules.
    pub nat: Vec<NatRule>,
    /// Load balancers applied here (gateway routers: all, for external traffic).
    pub load_balancers: Vec<String>,
}

/// What kind of Service address a VIP is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum VipKind {
    /// `spec.clusterIPs`.
    ClusterIp,
    /// `spec.externalIPs`.
    ExternalIp,
    /// `status.loadBalancer.ingress`.
    LoadBalancerIp,
    /// `nodePort` on every node IP.
    NodePort,
}

/// A VIP's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum VipAddress {
    /// One address.
    Ip(IpAddr),
    /// The node's own address of this family, on every node.
    NodeIps(IpFamily),
}

/// Where a VIP is matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LbAttachment {
    /// On every node switch: traffic from pods and the host (through the management port).
    NodeSwitches,
    /// On every gateway router: traffic from outside (and NodePort from pods).
    GatewayRouters,
}

/// One VIP of a load balancer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LbVip {
    /// Kind.
    pub kind: VipKind,
    /// Address.
    pub address: VipAddress,
    /// Port.
    pub port: u16,
    /// Where it is matched.
    pub attachment: LbAttachment,
    /// The backend set it uses.
    pub lb: LbId,
    /// Gateway routers SNAT such traffic to their join address so replies return through
    /// them (`externalTrafficPolicy: Cluster`).
    pub force_snat: bool,
}

/// An endpoint as the load balancer sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LbEndpoint {
    /// Address.
    pub ip: IpAddr,
    /// Backend port.
    pub port: u16,
    /// Node it runs on.
    pub node: Option<String>,
    /// Zone.
    pub zone: Option<String>,
    /// `ready` condition.
    pub ready: bool,
    /// `serving` and `terminating`: usable when no endpoint is ready.
    pub serving_terminating: bool,
}

/// The endpoints of one Service port and family.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbTarget {
    /// The Service port.
    pub port: u16,
    /// Family.
    pub family: IpFamily,
    /// Endpoints, sorted.
    pub endpoints: Vec<LbEndpoint>,
}

impl LbTarget {
    /// The backends a load balancer of `scope` uses on `node`: ready endpoints, or if
    /// there are none, serving-and-terminating ones (as kube-proxy does); for
    /// [`LbScope::NodeLocal`] only those on `node`.
    pub fn backends(&self, scope: LbScope, node: &str) -> Vec<(IpAddr, u16)> {
        let in_scope = |e: &&LbEndpoint| scope == LbScope::Cluster || e.node.as_deref() == Some(node);
        let ready: Vec<(IpAddr, u16)> =
            self.endpoints.iter().filter(in_scope).filter(|e| e.ready).map(|e| (e.ip, e.port)).collect();
        let mut out = if ready.is_empty() {
            self.endpoints.iter().filter(in_scope).filter(|e| e.serving_terminating).map(|e| (e.ip, e.port)).collect()
        } else {
            ready
        };
        out.sort();
        out.dedup();
        out
    }
}

/// A Service's load balancer for one protocol (`svc-<ns>-<name>-<proto>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadBalancer {
    /// Name.
    pub name: String,
    /// The Service.
    pub service: ObjectKey,
    /// Protocol.
    pub protocol: Protocol,
    /// VIPs.
    pub vips: Vec<LbVip>,
    /// Endpoints per Service port and family.
    pub targets: Vec<LbTarget>,
    /// `sessionAffinity: ClientIP` timeout.
    pub affinity_timeout_seconds: Option<u32>,
}

impl LoadBalancer {
    /// The endpoints of `lb`'s port and family.
    pub fn target(&self, lb: &LbId) -> Option<&LbTarget> {
        self.targets.iter().find(|t| t.port == lb.port && t.family == lb.family)
    }
}

/// The cluster-wide datapaths: the cluster router and the join switch, with the link
/// between them and the join subnet's connected route.
pub fn cluster_fragment(config: &NetworkConfig) -> (LogicalRouter, LogicalSwitch) {
    let join_ips = config.cluster_router_join_ips();
    let mac = derived_mac(&join_ips);
    let rtoj = LogicalPort {
        name: "rtoj-cluster-router".into(),
        key: port_keys::CLUSTER_ROUTER_JOIN,
        kind: PortKind::Patch { peer_datapath: DatapathKey::JOIN, peer_port: port_keys::CLUSTER_ROUTER_JOIN },
        mac: Some(mac),
        ips: join_ips.clone(),
        chassis: None,
    };
    let jtor = LogicalPort {
        name: "jtor-cluster-router".into(),
        key: port_keys::CLUSTER_ROUTER_JOIN,
        kind: PortKind::Patch { peer_datapath: DatapathKey::CLUSTER_ROUTER, peer_port: port_keys::CLUSTER_ROUTER_JOIN },
        mac: Some(mac),
        ips: join_ips.clone(),
        chassis: None,
    };
    let routes = join_ips
        .iter()
        .map(|ip| StaticRoute {
            policy: RoutePolicy::DstIp,
            prefix: ip.network(),
            next_hop: NextHop::Destination,
            output_port: port_keys::CLUSTER_ROUTER_JOIN,
            chassis: None,
        })
        .collect();
    let router = LogicalRouter {
        name: CLUSTER_ROUTER.into(),
        key: DatapathKey::CLUSTER_ROUTER,
        chassis: None,
        ports: [(rtoj.key, rtoj)].into_iter().collect(),
        routes,
        nat: Vec::new(),
        load_balancers: Vec::new(),
    };
    let join = LogicalSwitch {
        name: JOIN_SWITCH.into(),
        key: DatapathKey::JOIN,
        subnets: join_ips.iter().map(IpNet::network).collect(),
        chassis: None,
        ports: [(jtor.key, jtor)].into_iter().collect(),
        load_balancers: Vec::new(),
    };
    (router, join)
}

/// What one node adds: its switch and gateway router, and its ports and routes on the
/// cluster router and the join switch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFragment {
    /// `node-<node>` with its router and management ports (pods are added by theirs).
    pub switch: LogicalSwitch,
    /// `gw-<node>`.
    pub gateway: LogicalRouter,
    /// `rtos-<node>` on the cluster router.
    pub cluster_router_port: LogicalPort,
    /// The cluster router's routes for this node: its subnets (everywhere) and its pods'
    /// egress to its gateway router (on its chassis).
    pub cluster_routes: Vec<StaticRoute>,
    /// `jtor-gw-<node>` on the join switch.
    pub join_port: LogicalPort,
}

/// The fragment of a node with layout `layout` on chassis `chassis` (the node name).
pub fn node_fragment(config: &NetworkConfig, layout: &NodeLayout) -> NodeFragment {
    let node = &layout.node;
    let chassis = Some(node.clone());
    let switch_name = node_switch_name(node);
    let gw_name = gateway_router_name(node);
    let stor = LogicalPort {
        name: format!("stor-{node}"),
        key: port_keys::SWITCH_ROUTER,
        kind: PortKind::Patch { peer_datapath: DatapathKey::CLUSTER_ROUTER, peer_port: layout.cluster_port_key },
        mac: Some(layout.gateway_mac()),
        ips: layout.gateway_ips.clone(),
        chassis: chassis.clone(),
    };
    let mgmt = LogicalPort {
        name: management_port_name(node),
        key: port_keys::MANAGEMENT,
        kind: PortKind::Management,
        mac: Some(layout.management_mac()),
        ips: layout.management_ips.clone(),
        chassis: chassis.clone(),
    };
    let switch = LogicalSwitch {
        name: switch_name,
        key: layout.switch_key,
        subnets: layout.subnets.clone(),
        chassis: chassis.clone(),
        ports: [(stor.key, stor), (mgmt.key, mgmt)].into_iter().collect(),
        load_balancers: Vec::new(),
    };
    let cluster_router_port = LogicalPort {
        name: format!("rtos-{node}"),
        key: layout.cluster_port_key,
        kind: PortKind::Patch { peer_datapath: layout.switch_key, peer_port: port_keys::SWITCH_ROUTER },
        mac: Some(layout.gateway_mac()),
        ips: layout.gateway_ips.clone(),
        chassis: chassis.clone(),
    };
    let mut cluster_routes = Vec::new();
    for (subnet, join) in layout.subnets.iter().zip(&layout.join_ips) {
        cluster_routes.push(StaticRoute {
            policy: RoutePolicy::DstIp,
            prefix: subnet.network(),
            next_hop: NextHop::Destination,
            output_port: layout.cluster_port_key,
            chassis: None,
        });
        cluster_routes.push(StaticRoute {
            policy: RoutePolicy::SrcIp,
            prefix: subnet.network(),
            next_hop: NextHop::Ip(join.addr()),
            output_port: port_keys::CLUSTER_ROUTER_JOIN,
            chassis: chassis.clone(),
        });
    }
    let join_port = LogicalPort {
        name: format!("jtor-{gw_name}"),
        key: layout.cluster_port_key,
        kind: PortKind::Patch { peer_datapath: layout.gateway_key, peer_port: port_keys::GATEWAY_JOIN },
        mac: Some(layout.join_mac()),
        ips: layout.join_ips.clone(),
        chassis: chassis.clone(),
    };
    let rtoj = LogicalPort {
        name: format!("rtoj-{gw_name}"),
        key: port_keys::GATEWAY_JOIN,
        kind: PortKind::Patch { peer_datapath: DatapathKey::JOIN, peer_port: layout.cluster_port_key },
        mac: Some(layout.join_mac()),
        ips: layout.join_ips.clone(),
        chassis: chassis.clone(),
    };
    let rtoe = LogicalPort {
        name: format!("rtoe-{gw_name}"),
        key: port_keys::GATEWAY_EXTERNAL,
        kind: PortKind::External,
        mac: None,
        ips: layout.node_ips.iter().map(|ip| IpNet::host(*ip)).collect(),
        chassis: chassis.clone(),
    };
    let mut routes = Vec::new();
    let mut nat = Vec::new();
    for net in &config.cluster_networks {
        let family = net.cidr.family();
        if let Some(cr_join) = config.cluster_router_join_ips().into_iter().find(|j| j.family() == family) {
            routes.push(StaticRoute {
                policy: RoutePolicy::DstIp,
                prefix: net.cidr,
                next_hop: NextHop::Ip(cr_join.addr()),
                output_port: port_keys::GATEWAY_JOIN,
                chassis: None,
            });
            routes.push(StaticRoute {
                policy: RoutePolicy::DstIp,
                prefix: cr_join.network(),
                next_hop: NextHop::Destination,
                output_port: port_keys::GATEWAY_JOIN,
                chassis: None,
            });
        }
        if let Some(node_ip) = layout.node_ip(family) {
            routes.push(StaticRoute {
                policy: RoutePolicy::DstIp,
                prefix: IpNet::clamped(crate::addr::u128_to_ip(family, 0), 0),
                next_hop: NextHop::Uplink,
                output_port: port_keys::GATEWAY_EXTERNAL,
                chassis: None,
            });
            nat.push(NatRule { external_ip: node_ip, logical_ip: net.cidr, output_port: port_keys::GATEWAY_EXTERNAL });
        }
    }
    let gateway = LogicalRouter {
        name: gw_name,
        key: layout.gateway_key,
        chassis,
        ports: [(rtoj.key, rtoj), (rtoe.key, rtoe)].into_iter().collect(),
        routes,
        nat,
        load_balancers: Vec::new(),
    };
    NodeFragment { switch, gateway, cluster_router_port, cluster_routes, join_port }
}

/// A pod's port on its node switch (`key` from its address, see [`NodeLayout::pod_port_key`]).
pub fn pod_port(pod: &Pod, key: PortKey, ips: &[IpNet], mac: MacAddr, node: &str) -> LogicalPort {
    LogicalPort {
        name: format!("{}_{}", pod.namespace, pod.name),
        key,
        kind: PortKind::Pod { pod: pod.key(), uid: pod.uid.clone() },
        mac: Some(mac),
        ips: ips.to_vec(),
        chassis: Some(node.to_owned()),
    }
}

/// Something wrong with a Service that the compiler skipped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ServiceIssue {
    /// Two ports with one protocol and number.
    #[error("spec.ports: {protocol} port {port} appears twice; the second is ignored")]
    DuplicatePort {
        /// Protocol.
        protocol: Protocol,
        /// Port.
        port: u16,
    },
    /// Port 0.
    #[error("spec.ports[{index}].port is 0; ignored")]
    ZeroPort {
        /// Index in `spec.ports`.
        index: usize,
    },
    /// NodePort 0.
    #[error("spec.ports[{index}].nodePort is 0; ignored")]
    ZeroNodePort {
        /// Index in `spec.ports`.
        index: usize,
    },
}

/// A Service's load balancers (one per protocol) with their endpoints, and what was
/// skipped. ExternalName Services have none.
pub fn service_fragment<'a>(
    svc: &Service,
    slices: impl Iterator<Item = &'a EndpointSlice> + Clone,
) -> (Vec<LoadBalancer>, Vec<ServiceIssue>) {
    let mut issues = Vec::new();
    if svc.service_type == ServiceType::ExternalName {
        return (Vec::new(), issues);
    }
    let key = svc.key();
    let affinity = match svc.session_affinity {
        SessionAffinity::None => None,
        SessionAffinity::ClientIp { timeout_seconds } => Some(timeout_seconds),
    };
    let scope = |p: TrafficPolicy| match p {
        TrafficPolicy::Cluster => LbScope::Cluster,
        TrafficPolicy::Local => LbScope::NodeLocal,
    };
    let internal = scope(svc.internal_traffic_policy);
    let external = scope(svc.external_traffic_policy);
    let node_ports = matches!(svc.service_type, ServiceType::NodePort | ServiceType::LoadBalancer);
    let mut by_proto: BTreeMap<Protocol, LoadBalancer> = BTreeMap::new();
    let mut seen = Vec::new();
    for (index, sp) in svc.ports.iter().enumerate() {
        if sp.port == 0 {
            issues.push(ServiceIssue::ZeroPort { index });
            continue;
        }
        if seen.contains(&(sp.protocol, sp.port)) {
            issues.push(ServiceIssue::DuplicatePort { protocol: sp.protocol, port: sp.port });
            continue;
        }
        seen.push((sp.protocol, sp.port));
        let lb = by_proto.entry(sp.protocol).or_insert_with(|| LoadBalancer {
            name: load_balancer_name(&key, sp.protocol),
            service: key.clone(),
            protocol: sp.protocol,
            vips: Vec::new(),
            targets: Vec::new(),
            affinity_timeout_seconds: affinity,
        });
        for family in [IpFamily::V4, IpFamily::V6] {
            let id = |scope| LbId { service: key.clone(), protocol: sp.protocol, port: sp.port, family, scope };
            let fam = |ip: &&IpAddr| IpFamily::of(**ip) == family;
            let mut vips = Vec::new();
            for ip in svc.cluster_ips.iter().filter(fam) {
                vips.push(LbVip {
                    kind: VipKind::ClusterIp,
                    address: VipAddress::Ip(*ip),
                    port: sp.port,
                    attachment: LbAttachment::NodeSwitches,
                    lb: id(internal),
                    force_snat: false,
                });
            }
            let externals = svc
                .external_ips
                .iter()
                .filter(fam)
                .map(|ip| (VipKind::ExternalIp, *ip))
                .chain(svc.load_balancer_ips.iter().filter(fam).map(|ip| (VipKind::LoadBalancerIp, *ip)));
            for (kind, ip) in externals {
                vips.push(LbVip {
                    kind,
                    address: VipAddress::Ip(ip),
                    port: sp.port,
                    attachment: LbAttachment::NodeSwitches,
                    lb: id(LbScope::Cluster),
                    force_snat: false,
                });
                vips.push(LbVip {
                    kind,
                    address: VipAddress::Ip(ip),
                    port: sp.port,
                    attachment: LbAttachment::GatewayRouters,
                    lb: id(external),
                    force_snat: external == LbScope::Cluster,
                });
            }
            if node_ports {
                match sp.node_port {
                    Some(0) if family == IpFamily::V4 => issues.push(ServiceIssue::ZeroNodePort { index }),
                    Some(0) => {}
                    Some(np) => vips.push(LbVip {
                        kind: VipKind::NodePort,
                        address: VipAddress::NodeIps(family),
                        port: np,
                        attachment: LbAttachment::GatewayRouters,
                        lb: id(external),
                        force_snat: external == LbScope::Cluster,
                    }),
                    None => {}
                }
            }
            if vips.is_empty() {
                continue;
            }
            lb.vips.extend(vips);
            lb.targets.push(LbTarget { port: sp.port, family, endpoints: endpoints(sp, family, slices.clone()) });
        }
    }
    let lbs = by_proto.into_values().filter(|lb| !lb.vips.is_empty()).collect();
    (lbs, issues)
}

fn endpoints<'a>(
    sp: &crate::cluster::ServicePort,
    family: IpFamily,
    slices: impl Iterator<Item = &'a EndpointSlice>,
) -> Vec<LbEndpoint> {
    use crate::cluster::AddressType;
    let mut out = Vec::new();
    for slice in slices {
        let slice_family = match slice.address_type {
            AddressType::Ipv4 => IpFamily::V4,
            AddressType::Ipv6 => IpFamily::V6,
            AddressType::Fqdn => continue,
        };
        if slice_family != family {
            continue;
        }
        let Some(port) =
            slice.ports.iter().find(|p| p.name == sp.name && p.protocol == sp.protocol).and_then(|p| p.port)
        else {
            continue;
        };
        for ep in &slice.endpoints {
            for ip in ep.addresses.iter().filter(|ip| IpFamily::of(**ip) == family) {
                out.push(LbEndpoint {
                    ip: *ip,
                    port,
                    node: ep.node.clone(),
                    zone: ep.zone.clone(),
                    ready: ep.conditions.is_ready(),
                    serving_terminating: ep.conditions.is_serving() && ep.conditions.is_terminating(),
                });
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The whole logical network, for dumps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LogicalNetwork {
    /// Routers by name.
    pub routers: BTreeMap<String, LogicalRouter>,
    /// Switches by name.
    pub switches: BTreeMap<String, LogicalSwitch>,
    /// Load balancers by name.
    pub load_balancers: BTreeMap<String, LoadBalancer>,
}
