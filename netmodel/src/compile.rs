//! Compilation of logical-network fragments into southbound items for one chassis:
//! bindings and the logical flows of every pipeline stage (`docs/netmodel.md` lists them
//! table by table). Each function handles one fragment kind and appends to [`Items`];
//! the engine decides which fragments a chassis needs.

use std::net::IpAddr;

use crate::addr::{IpFamily, IpNet, MacAddr};
use crate::annotations::ChassisAnnotation;
use crate::config::{NetworkConfig, NodeLayout};
use crate::logical::{
    LbAttachment, LoadBalancer, LogicalPort, LogicalRouter, LogicalSwitch, NatRule, NodeFragment, StaticRoute,
    VipAddress,
};
use crate::southbound::{
    Action, Backend, Chassis, CtState, DatapathBinding, DatapathKey, DatapathKind, Flags, IpProto, L3,
    LoadBalancerEntry, LogicalFlow, Match, Owner, PortBinding, PortKey, PortKind, Stage, ZoneScope, port_keys,
};

/// ICMP echo request type (IPv4) and ICMPv6 echo request type.
const ICMP4_ECHO_REQUEST: u8 = 8;
const ICMP6_ECHO_REQUEST: u8 = 128;

/// The southbound items one owner contributes to one chassis, sorted and deduplicated.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub(crate) struct Items {
    pub chassis: Vec<Chassis>,
    pub datapaths: Vec<DatapathBinding>,
    pub ports: Vec<PortBinding>,
    pub flows: Vec<LogicalFlow>,
    pub load_balancers: Vec<LoadBalancerEntry>,
}

impl Items {
    pub fn normalize(&mut self) {
        fn norm<T: Ord>(v: &mut Vec<T>) {
            v.sort();
            v.dedup();
        }
        norm(&mut self.chassis);
        norm(&mut self.datapaths);
        norm(&mut self.ports);
        norm(&mut self.flows);
        norm(&mut self.load_balancers);
    }

    pub fn is_empty(&self) -> bool {
        self.chassis.is_empty()
            && self.datapaths.is_empty()
            && self.ports.is_empty()
            && self.flows.is_empty()
            && self.load_balancers.is_empty()
    }
}

/// Appends flows of one owner.
struct Flows<'a> {
    out: &'a mut Vec<LogicalFlow>,
    owner: &'a Owner,
}

impl Flows<'_> {
    fn add(&mut self, datapath: DatapathKey, stage: Stage, priority: u16, matches: Match, actions: Vec<Action>) {
        self.out.push(LogicalFlow { datapath, stage, priority, matches, actions, owner: self.owner.clone() });
    }
}

fn binding(datapath: DatapathKey, port: &LogicalPort) -> PortBinding {
    PortBinding {
        datapath,
        key: port.key,
        name: port.name.clone(),
        kind: port.kind.clone(),
        mac: port.mac,
        ips: port.ips.clone(),
        chassis: port.chassis.clone(),
    }
}

fn v4(ip: IpAddr) -> Option<std::net::Ipv4Addr> {
    match ip {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    }
}

/// Default flows of a switch: what every table does with packets no port-specific flow
/// took. `node_switch` adds the Service stages' generic flows.
fn switch_defaults(f: &mut Flows<'_>, dp: DatapathKey, node_switch: bool, config: &NetworkConfig) {
    f.add(dp, Stage::LsInPortSecL2, 0, Match::any(), vec![Action::Drop]);
    for stage in [
        Stage::LsInPortSecIp,
        Stage::LsInPreAcl,
        Stage::LsInLb,
        Stage::LsInHairpin,
        Stage::LsInAclCt,
        Stage::LsInAcl,
        Stage::LsInAclAction,
        Stage::LsInArpResponder,
        Stage::LsOutLb,
        Stage::LsOutPreAcl,
        Stage::LsOutAcl,
    ] {
        f.add(dp, stage, 0, Match::any(), vec![Action::Next]);
    }
    f.add(dp, Stage::LsInL2Lookup, 110, Match::any().eth_dst(MacAddr::BROADCAST), vec![Action::Flood]);
    f.add(dp, Stage::LsInL2Lookup, 0, Match::any(), vec![Action::Drop]);
    f.add(dp, Stage::LsOutDeliver, 0, Match::any(), vec![Action::Drop]);
    if node_switch {
        // Replies of hairpinned connections: undo the hairpin SNAT, then the Service DNAT.
        let families = config.cluster_networks.iter().map(|n| n.cidr.family());
        for ip in families.filter_map(|family| config.hairpin_snat_ip(family)) {
            f.add(
                dp,
                Stage::LsInLb,
                110,
                Match::any().ip_dst(IpNet::host(ip)),
                vec![Action::SetFlags(Flags::HAIRPIN_REPLY), Action::CtNat { zone: ZoneScope::InPortHairpin }],
            );
        }
        f.add(
            dp,
            Stage::LsInHairpin,
            110,
            Match::any().flags_set(Flags::HAIRPIN_REPLY),
            vec![Action::CtNat { zone: ZoneScope::InPort }],
        );
        // Replies from Service backends are un-DNATed in the client port's zone, on the
        // client's chassis; the router port needs none.
        f.add(dp, Stage::LsOutLb, 110, Match::any().outport(port_keys::SWITCH_ROUTER), vec![Action::Next]);
        f.add(dp, Stage::LsOutLb, 100, Match::any().l3(L3::Ip), vec![Action::CtNat { zone: ZoneScope::OutPort }]);
    }
}

/// Default flows of a router.
fn router_defaults(f: &mut Flows<'_>, dp: DatapathKey) {
    f.add(dp, Stage::LrInAdmission, 0, Match::any(), vec![Action::Drop]);
    for stage in [Stage::LrInIpInput, Stage::LrInUnsnat, Stage::LrInDnat, Stage::LrOutSnat] {
        f.add(dp, stage, 0, Match::any(), vec![Action::Next]);
    }
    f.add(dp, Stage::LrInRouting, 0, Match::any(), vec![Action::Drop]);
    f.add(dp, Stage::LrInArpResolve, 0, Match::any(), vec![Action::Drop]);
    f.add(dp, Stage::LrOutDeliver, 0, Match::any(), vec![Action::Drop]);
}

/// Flows for a switch port that resides on this chassis: admission, source-address
/// checks (pods and the management port), ARP answers, delivery.
fn switch_port_local(f: &mut Flows<'_>, dp: DatapathKey, port: &LogicalPort) {
    let is_endpoint = matches!(port.kind, PortKind::Pod { .. } | PortKind::Management);
    let admit = match (is_endpoint, port.mac) {
        (true, Some(mac)) => Match::any().inport(port.key).eth_src(mac),
        _ => Match::any().inport(port.key),
    };
    f.add(dp, Stage::LsInPortSecL2, 50, admit, vec![Action::Next]);
    if is_endpoint {
        for ip in &port.ips {
            f.add(
                dp,
                Stage::LsInPortSecIp,
                90,
                Match::any().inport(port.key).ip_src(IpNet::host(ip.addr())),
                vec![Action::Next],
            );
            if let (Some(a), Some(mac)) = (v4(ip.addr()), port.mac) {
                let mut m = Match::any().inport(port.key).l3(L3::Arp);
                m.arp_sha = Some(mac);
                m.arp_spa = Some(a);
                f.add(dp, Stage::LsInPortSecIp, 90, m, vec![Action::Next]);
            }
        }
        f.add(dp, Stage::LsInPortSecIp, 80, Match::any().inport(port.key), vec![Action::Drop]);
    }
    if let Some(mac) = port.mac {
        for a in port.ips.iter().filter_map(|ip| v4(ip.addr())) {
            // The port's own requests for its address (duplicate address detection) are
            // forwarded, not answered.
            f.add(
                dp,
                Stage::LsInArpResponder,
                100,
                Match::any().inport(port.key).arp_request_for(a),
                vec![Action::Next],
            );
            f.add(dp, Stage::LsInArpResponder, 50, Match::any().arp_request_for(a), vec![Action::ArpReply { mac }]);
        }
    }
    f.add(dp, Stage::LsOutDeliver, 50, Match::any().outport(port.key), vec![Action::Output]);
}

/// The L2 lookup flow for a port (on every chassis that can send to it).
fn switch_port_lookup(f: &mut Flows<'_>, dp: DatapathKey, port: &LogicalPort) {
    if let Some(mac) = port.mac {
        f.add(
            dp,
            Stage::LsInL2Lookup,
            50,
            Match::any().eth_dst(mac),
            vec![Action::SetOutport(port.key), Action::Output],
        );
    }
}

/// Flows for a router port whose ingress happens on this chassis: admission, the
/// router's own addresses, TTL expiry, delivery. Addresses in `snat_ips` are also the
/// router's SNAT addresses: traffic to them is not dropped here but goes on to be
/// un-SNATed (as in OVN, where `lr_in_ip_input` skips the drop for SNAT IPs).
fn router_port_local(f: &mut Flows<'_>, dp: DatapathKey, port: &LogicalPort, snat_ips: &[IpAddr]) {
    match port.mac {
        Some(mac) => {
            f.add(dp, Stage::LrInAdmission, 50, Match::any().inport(port.key).eth_dst(mac), vec![Action::Next]);
            f.add(
                dp,
                Stage::LrInAdmission,
                50,
                Match::any().inport(port.key).eth_dst(MacAddr::BROADCAST),
                vec![Action::Next],
            );
        }
        // The uplink: the agent hands the router only frames meant for it.
        None => f.add(dp, Stage::LrInAdmission, 50, Match::any().inport(port.key), vec![Action::Next]),
    }
    let owns_addresses = !matches!(port.kind, PortKind::External);
    for ip in &port.ips {
        let family = ip.family();
        let mut expiring = Match::any().inport(port.key).l3(crate::southbound::l3_of(family));
        expiring.ttl_expiring = true;
        f.add(dp, Stage::LrInIpInput, 40, expiring, vec![Action::IcmpTimeExceeded { source: ip.addr() }]);
        if !owns_addresses {
            continue;
        }
        if let (Some(a), Some(mac)) = (v4(ip.addr()), port.mac) {
            f.add(
                dp,
                Stage::LrInIpInput,
                90,
                Match::any().inport(port.key).arp_request_for(a),
                vec![Action::ArpReply { mac }],
            );
        }
        let mut echo = Match::any().ip_dst(IpNet::host(ip.addr()));
        echo.ip_proto = Some(IpProto::Icmp);
        echo.icmp_type = Some(if family == IpFamily::V4 { ICMP4_ECHO_REQUEST } else { ICMP6_ECHO_REQUEST });
        f.add(dp, Stage::LrInIpInput, 90, echo, vec![Action::IcmpEchoReply]);
        if !snat_ips.contains(&ip.addr()) {
            f.add(dp, Stage::LrInIpInput, 60, Match::any().ip_dst(IpNet::host(ip.addr())), vec![Action::Drop]);
        }
    }
    f.add(dp, Stage::LrOutDeliver, 100, Match::any().outport(port.key), vec![Action::Output]);
}

/// The next-hop MAC resolution for a router port (on every chassis that routes to it).
fn router_port_resolve(f: &mut Flows<'_>, dp: DatapathKey, port: &LogicalPort) {
    f.add(
        dp,
        Stage::LrInArpResolve,
        100,
        Match::any().outport(port.key),
        vec![Action::SetEthDstForNextHop, Action::Output],
    );
}

fn route_flow(f: &mut Flows<'_>, dp: DatapathKey, route: &StaticRoute, out_mac: Option<MacAddr>) {
    let m = match route.policy {
        crate::logical::RoutePolicy::DstIp => Match::any().ip_dst(route.prefix),
        crate::logical::RoutePolicy::SrcIp => Match::any().ip_src(route.prefix),
    };
    let mut actions = vec![Action::DecTtl, Action::SetNextHop(route.next_hop)];
    if let Some(mac) = out_mac {
        actions.push(Action::SetEthSrc(mac));
    }
    actions.extend([Action::SetOutport(route.output_port), Action::Next]);
    f.add(dp, Stage::LrInRouting, route.priority(), m, actions);
}

fn nat_flows(f: &mut Flows<'_>, dp: DatapathKey, nat: &NatRule) {
    f.add(
        dp,
        Stage::LrOutSnat,
        100 + u16::from(nat.logical_ip.prefix_len()),
        Match::any().outport(nat.output_port).ip_src(nat.logical_ip),
        vec![Action::CtSnat { ip: nat.external_ip, zone: ZoneScope::RouterSnat }],
    );
    f.add(
        dp,
        Stage::LrInUnsnat,
        90,
        Match::any().inport(nat.output_port).ip_dst(IpNet::host(nat.external_ip)),
        vec![Action::CtNat { zone: ZoneScope::RouterSnat }],
    );
}

fn datapath(key: DatapathKey, name: &str, kind: DatapathKind) -> DatapathBinding {
    DatapathBinding { key, name: name.to_owned(), kind }
}

fn out_mac(router: &LogicalRouter, port: PortKey) -> Option<MacAddr> {
    router.ports.get(&port).and_then(|p| p.mac)
}

/// The cluster router and join switch: present on every chassis.
pub(crate) fn compile_cluster(
    config: &NetworkConfig,
    router: &LogicalRouter,
    join: &LogicalSwitch,
    owner: &Owner,
    out: &mut Items,
) {
    out.datapaths.push(datapath(router.key, &router.name, DatapathKind::Router));
    out.datapaths.push(datapath(join.key, &join.name, DatapathKind::Switch));
    let mut f = Flows { out: &mut out.flows, owner };
    router_defaults(&mut f, router.key);
    switch_defaults(&mut f, join.key, false, config);
    for port in router.ports.values() {
        out.ports.push(binding(router.key, port));
        router_port_local(&mut f, router.key, port, &[]);
        router_port_resolve(&mut f, router.key, port);
    }
    for route in &router.routes {
        route_flow(&mut f, router.key, route, out_mac(router, route.output_port));
    }
    for port in join.ports.values() {
        out.ports.push(binding(join.key, port));
        switch_port_local(&mut f, join.key, port);
        switch_port_lookup(&mut f, join.key, port);
    }
}

/// A node's fragment as chassis `local` (true: the node's own chassis) needs it. Other
/// chassis get the node's chassis entry, its ports on the cluster router and join switch
/// (bound to its chassis, so output to them is tunnelled there), the route to its subnet
/// and the lookups that send packets towards it.
pub(crate) fn compile_node(config: &NetworkConfig, frag: &NodeFragment, owner: &Owner, local: bool, out: &mut Items) {
    let cr = DatapathKey::CLUSTER_ROUTER;
    let join = DatapathKey::JOIN;
    out.ports.push(binding(cr, &frag.cluster_router_port));
    out.ports.push(binding(join, &frag.join_port));
    let mut f = Flows { out: &mut out.flows, owner };
    router_port_resolve(&mut f, cr, &frag.cluster_router_port);
    switch_port_lookup(&mut f, join, &frag.join_port);
    for route in frag.cluster_routes.iter().filter(|r| r.chassis.is_none() || local) {
        let mac = if route.output_port == frag.cluster_router_port.key {
            frag.cluster_router_port.mac
        } else {
            Some(crate::config::derived_mac(&config.cluster_router_join_ips()))
        };
        route_flow(&mut f, cr, route, mac);
    }
    if !local {
        return;
    }
    router_port_local(&mut f, cr, &frag.cluster_router_port, &[]);
    switch_port_local(&mut f, join, &frag.join_port);

    let sw = &frag.switch;
    out.datapaths.push(datapath(sw.key, &sw.name, DatapathKind::Switch));
    switch_defaults(&mut f, sw.key, true, config);
    for port in sw.ports.values() {
        out.ports.push(binding(sw.key, port));
        switch_port_local(&mut f, sw.key, port);
        switch_port_lookup(&mut f, sw.key, port);
    }

    let gw = &frag.gateway;
    out.datapaths.push(datapath(gw.key, &gw.name, DatapathKind::Router));
    router_defaults(&mut f, gw.key);
    // Replies of connections DNATed here (NodePort, external IPs) are un-DNATed.
    f.add(gw.key, Stage::LrInDnat, 50, Match::any().l3(L3::Ip), vec![Action::CtNat { zone: ZoneScope::RouterDnat }]);
    // The join address is the forced-SNAT address (below); NAT rules' external addresses too.
    let snat_ips: Vec<IpAddr> = gw
        .ports
        .get(&port_keys::GATEWAY_JOIN)
        .map(|p| p.ips.iter().map(|ip| ip.addr()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(gw.nat.iter().map(|n| n.external_ip))
        .collect();
    for port in gw.ports.values() {
        out.ports.push(binding(gw.key, port));
        router_port_local(&mut f, gw.key, port, &snat_ips);
        router_port_resolve(&mut f, gw.key, port);
    }
    for route in &gw.routes {
        route_flow(&mut f, gw.key, route, out_mac(gw, route.output_port));
    }
    for nat in &gw.nat {
        nat_flows(&mut f, gw.key, nat);
    }
    // Forced SNAT to the join address, so that replies of external Service traffic sent
    // into the cluster return through this gateway; replies are un-SNATed by address.
    if let Some(join_port) = gw.ports.get(&port_keys::GATEWAY_JOIN) {
        for ip in &join_port.ips {
            f.add(
                gw.key,
                Stage::LrOutSnat,
                110,
                Match::any()
                    .outport(port_keys::GATEWAY_JOIN)
                    .l3(crate::southbound::l3_of(ip.family()))
                    .flags_set(Flags::FORCE_SNAT),
                vec![Action::CtSnat { ip: ip.addr(), zone: ZoneScope::RouterSnat }],
            );
            f.add(
                gw.key,
                Stage::LrInUnsnat,
                90,
                Match::any().inport(port_keys::GATEWAY_JOIN).ip_dst(IpNet::host(ip.addr())),
                vec![Action::CtNat { zone: ZoneScope::RouterSnat }],
            );
        }
    }
}

/// The chassis entry of a registered node.
pub(crate) fn chassis_entry(node: &str, annotation: &ChassisAnnotation) -> Chassis {
    Chassis {
        name: node.to_owned(),
        id: annotation.id.clone(),
        tunnel_ip: annotation.tunnel_ip,
        encap: annotation.encap,
    }
}

/// A pod's port on its node's switch (only on that node's chassis).
pub(crate) fn compile_pod(
    config: &NetworkConfig,
    switch: DatapathKey,
    port: &LogicalPort,
    owner: &Owner,
    out: &mut Items,
) {
    out.ports.push(binding(switch, port));
    let mut f = Flows { out: &mut out.flows, owner };
    switch_port_local(&mut f, switch, port);
    switch_port_lookup(&mut f, switch, port);
    // Hairpin: a pod reaching itself through a Service is SNATed to the hairpin address,
    // or its kernel would drop a packet from its own address.
    for ip in &port.ips {
        if let Some(hairpin) = config.hairpin_snat_ip(ip.family()) {
            f.add(
                switch,
                Stage::LsInHairpin,
                100,
                Match::any().inport(port.key).ip_dst(IpNet::host(ip.addr())).ct_set(CtState::DNAT),
                vec![Action::CtSnat { ip: hairpin, zone: ZoneScope::InPortHairpin }],
            );
        }
    }
}

/// A Service's VIP flows on the chassis's node switch and gateway router, and its load
/// balancer entries with the backends this chassis uses.
pub(crate) fn compile_service(lbs: &[LoadBalancer], local: &NodeLayout, owner: &Owner, out: &mut Items) {
    let mut f = Flows { out: &mut out.flows, owner };
    let mut used = Vec::new();
    for lb in lbs {
        let proto = IpProto::from(lb.protocol);
        for vip in &lb.vips {
            let ct_lb = |zone| Action::CtLb { lb: vip.lb.clone(), zone };
            match (vip.attachment, vip.address) {
                (LbAttachment::NodeSwitches, VipAddress::Ip(ip)) => {
                    f.add(
                        local.switch_key,
                        Stage::LsInLb,
                        120,
                        Match::any().ip_dst(IpNet::host(ip)).l4_dst(proto, vip.port),
                        vec![ct_lb(ZoneScope::InPort)],
                    );
                }
                (LbAttachment::GatewayRouters, VipAddress::Ip(ip)) => {
                    let mut actions = Vec::new();
                    if vip.force_snat {
                        actions.push(Action::SetFlags(Flags::FORCE_SNAT));
                    }
                    actions.push(ct_lb(ZoneScope::RouterDnat));
                    f.add(
                        local.gateway_key,
                        Stage::LrInDnat,
                        120,
                        Match::any()
                            .inport(port_keys::GATEWAY_EXTERNAL)
                            .ip_dst(IpNet::host(ip))
                            .l4_dst(proto, vip.port),
                        actions,
                    );
                }
                (LbAttachment::GatewayRouters, VipAddress::NodeIps(family)) => {
                    let Some(node_ip) = local.node_ip(family) else { continue };
                    let m = Match::any().ip_dst(IpNet::host(node_ip)).l4_dst(proto, vip.port);
                    let snat = vec![Action::SetFlags(Flags::FORCE_SNAT), ct_lb(ZoneScope::RouterDnat)];
                    if vip.force_snat {
                        f.add(local.gateway_key, Stage::LrInDnat, 120, m, snat);
                    } else {
                        // Local policy: clients from outside keep their address; pods
                        // reaching their own node's NodePort must be SNATed to get the
                        // reply back through here.
                        f.add(local.gateway_key, Stage::LrInDnat, 121, m.clone().inport(port_keys::GATEWAY_JOIN), snat);
                        f.add(local.gateway_key, Stage::LrInDnat, 120, m, vec![ct_lb(ZoneScope::RouterDnat)]);
                    }
                }
                (LbAttachment::NodeSwitches, VipAddress::NodeIps(_)) => continue,
            }
            used.push((lb, vip.lb.clone()));
        }
    }
    for (lb, id) in used {
        let backends = lb
            .target(&id)
            .map(|t| t.backends(id.scope, &local.node))
            .unwrap_or_default()
            .into_iter()
            .map(|(ip, port)| Backend { ip, port })
            .collect();
        out.load_balancers.push(LoadBalancerEntry {
            id,
            backends,
            affinity_timeout_seconds: lb.affinity_timeout_seconds,
        });
    }
}
