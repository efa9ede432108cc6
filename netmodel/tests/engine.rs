//! The compiler's output on small clusters: what each chassis receives, what one change
//! touches, and how bad input is reported.

mod support;

use skein_netmodel::ClusterChange::*;
use skein_netmodel::cluster::{ServiceType, SessionAffinity, TrafficPolicy};
use skein_netmodel::engine::CompileError;
use skein_netmodel::southbound::{Action, DatapathKey, LbScope, NextHop, Owner, PortKind, Stage, port_keys};
use skein_netmodel::{ChassisView, Engine};
use support::*;

/// Three registered nodes (subnets 0, 1, 2), pods on `a`, one Service with two endpoints.
fn cluster() -> Engine {
    let mut e = default_engine();
    let update = e.apply([
        UpsertNode(node("a", Some(0), true)),
        UpsertNode(node("b", Some(1), true)),
        UpsertNode(node("c", Some(2), true)),
        UpsertPod(pod("p1", "a", 0, 3)),
        UpsertPod(pod("p2", "a", 0, 4)),
        UpsertPod(pod("q1", "b", 1, 3)),
        UpsertService(service("web", "10.96.0.10", 80)),
        UpsertEndpointSlice(slice("web-1", "web", &[("10.244.0.3", "a", true), ("10.244.1.3", "b", true)])),
    ]);
    assert!(update.deltas.is_empty());
    assert_eq!(update.added_chassis, ["a", "b", "c"]);
    assert!(["a", "b", "c"].iter().all(|c| e.version(c) == Some(1)));
    assert_eq!(e.issues().count(), 0, "{:?}", e.issues().collect::<Vec<_>>());
    e
}

fn flows_of<'a>(view: &'a ChassisView, owner: &'a Owner) -> impl Iterator<Item = &'a skein_netmodel::LogicalFlow> {
    view.items.flows.iter().filter(move |f| &f.owner == owner)
}

#[test]
fn a_chassis_gets_its_own_datapaths_and_routes_to_every_node() {
    let e = cluster();
    let view = e.snapshot("a").unwrap();
    let names: Vec<&str> = view.items.datapaths.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["cluster-router", "join", "node-a", "gw-a"]);
    assert_eq!(view.items.chassis.len(), 3);
    // One destination route per node subnet, to the port bound to the owning chassis.
    let routes: Vec<_> = view
        .items
        .flows
        .iter()
        .filter(|f| f.datapath == DatapathKey::CLUSTER_ROUTER && f.stage == Stage::LrInRouting)
        .filter(|f| f.matches.ip_dst.is_some_and(|d| d.prefix_len() == 24))
        .collect();
    assert_eq!(routes.len(), 3);
    for route in routes {
        let out =
            route.actions.iter().find_map(|a| if let Action::SetOutport(p) = a { Some(*p) } else { None }).unwrap();
        let port = view.items.ports.iter().find(|p| p.datapath == DatapathKey::CLUSTER_ROUTER && p.key == out).unwrap();
        let subnet = route.matches.ip_dst.unwrap();
        let owner =
            ["a", "b", "c"][usize::from(subnet.addr().to_string().split('.').nth(2).unwrap().parse::<u8>().unwrap())];
        assert_eq!(port.chassis.as_deref(), Some(owner), "{route}");
        assert!(matches!(port.kind, PortKind::Patch { .. }));
    }
    // The source route of a's pods goes to a's gateway router, and exists only on a.
    let src_routes = |v: &ChassisView| {
        v.items.flows.iter().filter(|f| f.stage == Stage::LrInRouting && f.matches.ip_src.is_some()).count()
    };
    assert_eq!(src_routes(&view), 1);
    let gw_join = e.node_layout("a").unwrap().join_ips[0].addr();
    assert!(
        view.items
            .flows
            .iter()
            .any(|f| f.matches.ip_src.is_some() && f.actions.contains(&Action::SetNextHop(NextHop::Ip(gw_join))))
    );
    // Pods: only a's.
    let pods: Vec<&str> =
        view.items.ports.iter().filter(|p| matches!(p.kind, PortKind::Pod { .. })).map(|p| p.name.as_str()).collect();
    assert_eq!(pods, ["default_p1", "default_p2"]);
    // Pod port keys are the host index.
    assert!(view.items.ports.iter().any(|p| p.name == "default_p2" && p.key.get() == 4));
    // SNAT of pod egress to the node IP on the gateway router.
    let node_ip = e.node_layout("a").unwrap().node_ips[0];
    assert!(view.items.flows.iter().any(|f| f.stage == Stage::LrOutSnat
        && f.actions.iter().any(|a| matches!(a, Action::CtSnat { ip, .. } if *ip == node_ip))));
}

#[test]
fn one_pod_change_touches_only_that_pods_flows() {
    let mut e = cluster();
    let before_b = e.snapshot("b").unwrap();
    let update = e.apply([UpsertPod(pod("p3", "a", 0, 5))]);
    assert_eq!(update.recompiled, 1);
    assert_eq!(update.deltas.len(), 1, "only a's chassis changes");
    let delta = &update.deltas[0];
    assert_eq!(delta.chassis, "a");
    assert_eq!((delta.from_version, delta.to_version), (1, 2));
    assert!(delta.removed.is_empty());
    let owner = Owner::Pod(key("p3"));
    assert!(delta.added.flows.iter().all(|f| f.owner == owner));
    // port_sec_l2 1, port_sec_ip 3 (IP, ARP, drop), arp_rsp 2, l2_lkup 1, hairpin 1, deliver 1.
    assert_eq!(delta.added.flows.len(), 9);
    assert_eq!(delta.added.ports.len(), 1);
    assert_eq!(delta.added.len(), 10);
    assert_eq!(e.snapshot("b").unwrap().items, before_b.items);

    // Changing its labels changes nothing; deleting it removes exactly what it added.
    let mut relabelled = pod("p3", "a", 0, 5);
    relabelled.labels.insert("app".into(), "x".into());
    assert!(e.apply([UpsertPod(relabelled)]).deltas.is_empty());
    let added = delta.added.clone();
    let update = e.apply([DeletePod(key("p3"))]);
    assert_eq!(update.deltas.len(), 1);
    assert_eq!(update.deltas[0].removed, added);
    assert!(update.deltas[0].added.is_empty());
}

#[test]
fn an_endpoint_change_touches_only_load_balancer_tables() {
    let mut e = cluster();
    let update = e.apply([UpsertEndpointSlice(slice("web-1", "web", &[("10.244.0.3", "a", true)]))]);
    assert_eq!(update.deltas.len(), 3);
    for d in &update.deltas {
        assert!(d.added.flows.is_empty() && d.removed.flows.is_empty());
        assert_eq!(d.removed.load_balancers.len(), 1);
        assert_eq!(d.added.load_balancers.len(), 1);
        let lb = d.added.load_balancers.first().unwrap();
        assert_eq!(lb.backends.len(), 1);
        assert_eq!(lb.backends[0].port, 8080);
    }
}

#[test]
fn remote_pods_do_not_grow_a_chassis_view() {
    let mut e = cluster();
    let before = e.snapshot("b").unwrap().items.len();
    let pods: Vec<_> = (10..60).map(|h| UpsertPod(pod(&format!("x{h}"), "a", 0, h))).collect();
    let update = e.apply(pods);
    assert!(update.deltas.iter().all(|d| d.chassis == "a"));
    assert_eq!(e.snapshot("b").unwrap().items.len(), before);
}

#[test]
fn services_compile_to_vip_flows_and_per_chassis_backends() {
    let mut e = cluster();
    let mut svc = service("np", "10.96.0.20", 443);
    svc.service_type = ServiceType::NodePort;
    svc.ports[0].node_port = Some(30443);
    svc.external_traffic_policy = TrafficPolicy::Local;
    svc.external_ips = vec![ip("203.0.113.7")];
    svc.session_affinity = SessionAffinity::ClientIp { timeout_seconds: 600 };
    e.apply([
        UpsertService(svc),
        UpsertEndpointSlice(slice("np-1", "np", &[("10.244.0.3", "a", true), ("10.244.1.3", "b", false)])),
    ]);
    let owner = Owner::Service(key("np"));
    for (chassis, local_backends) in [("a", 1), ("b", 0), ("c", 0)] {
        let view = e.snapshot(chassis).unwrap();
        let layout = e.node_layout(chassis).unwrap();
        let lbs: Vec<_> = view.items.load_balancers.iter().filter(|l| l.id.service == key("np")).collect();
        // Cluster-wide entry (cluster IP, external IP from pods) and node-local entry
        // (NodePort and external IP from outside).
        assert_eq!(lbs.len(), 2);
        for lb in &lbs {
            assert_eq!(lb.affinity_timeout_seconds, Some(600));
            match lb.id.scope {
                // b's endpoint is not ready.
                LbScope::Cluster => assert_eq!(lb.backends.len(), 1),
                LbScope::NodeLocal => assert_eq!(lb.backends.len(), local_backends, "{chassis}"),
            }
        }
        let flows: Vec<_> = flows_of(&view, &owner).collect();
        let on_switch = flows.iter().filter(|f| f.datapath == layout.switch_key && f.stage == Stage::LsInLb).count();
        let on_gateway =
            flows.iter().filter(|f| f.datapath == layout.gateway_key && f.stage == Stage::LrInDnat).count();
        // Switch: cluster IP + external IP. Gateway: external IP, NodePort from outside,
        // NodePort from pods (SNATed).
        assert_eq!((on_switch, on_gateway), (2, 3), "{chassis}: {flows:#?}");
        let node_port = flows.iter().find(|f| f.matches.l4_dst == Some(30443) && f.matches.inport.is_none()).unwrap();
        assert_eq!(node_port.matches.ip_dst.unwrap().addr(), layout.node_ips[0]);
    }
}

#[test]
fn a_service_without_ready_endpoints_rejects() {
    let mut e = cluster();
    e.apply([UpsertEndpointSlice(slice("web-1", "web", &[("10.244.0.3", "a", false)]))]);
    let view = e.snapshot("c").unwrap();
    let lb = view.items.load_balancers.iter().find(|l| l.id.service == key("web")).unwrap();
    assert!(lb.backends.is_empty(), "an empty backend list makes ct_lb reject");
}

#[test]
fn output_does_not_depend_on_event_order() {
    let e = cluster();
    let mut changes = e.state().to_changes();
    changes.reverse();
    let mut other = default_engine();
    for change in changes {
        other.apply([change]);
    }
    for c in ["a", "b", "c"] {
        assert_eq!(e.snapshot(c).unwrap().items, other.snapshot(c).unwrap().items, "{c}");
    }
    // What a restarted master computes from the same objects: the same keys everywhere.
    for (a, b) in full_compile(&e).iter().zip(["a", "b", "c"]) {
        assert_eq!(a.items, e.snapshot(b).unwrap().items);
    }
}

#[test]
fn bad_objects_are_reported_and_the_rest_is_served() {
    let mut e = cluster();
    let update = e.apply([
        // Same address as p1, name sorts after it: p1 keeps it.
        UpsertPod(pod("p9", "a", 0, 3)),
        // Address outside a's subnet.
        UpsertPod(pod("p8", "a", 1, 7)),
        // Same subnet as b.
        UpsertNode(node("d", Some(1), true)),
    ]);
    let issues: Vec<String> = e.issues().map(ToString::to_string).collect();
    assert_eq!(issues.len(), 3, "{issues:#?}");
    assert!(e.issues().any(|i| matches!(&i.error, CompileError::AddressTaken { holder, .. } if &*holder.name == "p1")));
    assert!(e.issues().any(|i| matches!(&i.error, CompileError::SubnetTaken { holder, .. } if holder == "b")));
    assert!(issues.iter().any(|i| i.contains("pod/default/p8") && i.contains("10.244.1.7")), "{issues:#?}");
    // d registered: it gets a view (cluster-wide items, no switch of its own).
    assert_eq!(update.added_chassis, ["d"]);
    let d = e.snapshot("d").unwrap();
    assert_eq!(d.items.datapaths.len(), 2);
    assert!(e.snapshot("a").unwrap().items.ports.iter().all(|p| p.name != "default_p9" && p.name != "default_p8"));

    // p1 leaves: p9 takes the address over; b leaves: d takes the subnet over.
    e.apply([DeletePod(key("p1")), DeleteNode("b".into())]);
    assert!(e.snapshot("a").unwrap().items.ports.iter().any(|p| p.name == "default_p9"));
    assert_eq!(e.node_layout("d").unwrap().index, 1);
    assert_eq!(e.issues().count(), 1);
    assert!(e.snapshot("b").is_none());
    for view in full_compile(&e) {
        assert_eq!(view.items, e.snapshot(&view.chassis).unwrap().items, "{}", view.chassis);
    }
}

#[test]
fn nodes_appear_when_registered_and_leave_cleanly() {
    let mut e = default_engine();
    let update = e.apply([UpsertNode(node("a", None, false))]);
    assert!(update.deltas.is_empty());
    let update = e.apply([UpsertNode(node("a", None, true))]);
    assert_eq!(update.added_chassis, ["a"]);
    assert_eq!(e.snapshot("a").unwrap().items.datapaths.len(), 2);
    let update = e.apply([UpsertNode(node("a", Some(4), true)), UpsertNode(node("b", Some(5), true))]);
    let a = update.deltas.iter().find(|d| d.chassis == "a").unwrap();
    assert_eq!(a.added.datapaths.len(), 2);
    assert!(a.added.datapaths.iter().any(|d| d.key == DatapathKey::node_switch(4)));
    let update = e.apply([DeleteNode("b".into())]);
    assert_eq!(update.removed_chassis, ["b"]);
    let a = &update.deltas[0];
    assert!(a.added.is_empty());
    // b's chassis entry, its two ports on shared datapaths, and the flows towards them.
    assert_eq!(a.removed.chassis.len(), 1);
    assert_eq!(a.removed.ports.len(), 2);
    assert!(a.removed.flows.iter().all(|f| f.owner == Owner::Node("b".into())));
}

#[test]
fn logical_network_lists_the_topology() {
    let e = cluster();
    let net = e.logical_network();
    let routers: Vec<&str> = net.routers.keys().map(String::as_str).collect();
    assert_eq!(routers, ["cluster-router", "gw-a", "gw-b", "gw-c"]);
    let switches: Vec<&str> = net.switches.keys().map(String::as_str).collect();
    assert_eq!(switches, ["join", "node-a", "node-b", "node-c"]);
    assert_eq!(net.routers["cluster-router"].ports.len(), 4);
    assert_eq!(net.switches["join"].ports.len(), 4);
    assert_eq!(net.switches["node-a"].ports.len(), 4);
    assert!(net.switches["node-a"].ports.values().any(|p| p.name == "mgmt-a" && p.key == port_keys::MANAGEMENT));
    assert_eq!(net.load_balancers.keys().collect::<Vec<_>>(), ["svc-default-web-tcp"]);
    assert_eq!(net.switches["node-b"].load_balancers, ["svc-default-web-tcp"]);
    assert_eq!(net.routers["gw-a"].nat.len(), 1);
}

fn policy(
    ns: &str,
    name: &str,
    select: Option<(&str, &str)>,
    from_app: &str,
) -> skein_netmodel::cluster::NetworkPolicy {
    use skein_netmodel::cluster::{LabelSelector, NetworkPolicy, PolicyPeer, PolicyRule};
    let sel = |k: &str, v: &str| LabelSelector {
        match_labels: [(k.to_owned(), v.to_owned())].into_iter().collect(),
        match_expressions: vec![],
    };
    NetworkPolicy {
        namespace: ns.into(),
        name: name.into(),
        pod_selector: select.map(|(k, v)| sel(k, v)).unwrap_or_default(),
        policy_types: vec![],
        ingress: vec![PolicyRule {
            peers: vec![PolicyPeer { pod_selector: Some(sel("app", from_app)), ..Default::default() }],
            ports: vec![],
        }],
        egress: vec![],
    }
}

#[test]
fn policies_cost_a_chassis_nothing_per_remote_pod_of_a_known_class() {
    let mut e = cluster();
    let mut web = labelled_pod("shop", "web", "a", 0, 10, Some("a"), None);
    web.labels.insert("app".into(), "web".into());
    let client = labelled_pod("shop", "client", "b", 1, 10, Some("a"), None);
    e.apply([UpsertPod(web), UpsertPod(client), UpsertNetworkPolicy(policy("shop", "web", Some(("app", "web")), "a"))]);
    assert_eq!(e.issues().count(), 0, "{:?}", e.issues().collect::<Vec<_>>());
    assert!(e.policies_enforced());
    let before = e.snapshot("a").unwrap();
    // The web pod isolated: its ingress evaluation names the policy's rule.
    let web_flows: Vec<String> = flows_of(&before, &Owner::Pod(skein_netmodel::ObjectKey::new("shop", "web")))
        .map(ToString::to_string)
        .collect();
    assert!(web_flows.iter().any(|f| f.contains("ls_out_pre_acl") && f.contains("acl_eval(")), "{web_flows:#?}");
    // Ten more clients on b and c, all of the class the rule allows: chassis a's view
    // does not change by one item, and only b and c get deltas (their own pods).
    let more: Vec<_> = (0..10)
        .map(|i| {
            let node = if i % 2 == 0 { ("b", 1) } else { ("c", 2) };
            UpsertPod(labelled_pod("shop", &format!("c{i}"), node.0, node.1, 20 + i, Some("a"), None))
        })
        .collect();
    let update = e.apply(more);
    assert!(
        update.deltas.iter().all(|d| d.chassis != "a"),
        "{:?}",
        update.deltas.iter().map(|d| &d.chassis).collect::<Vec<_>>()
    );
    assert_eq!(e.snapshot("a").unwrap().items, before.items);
    // A label no policy reads does not make a new class: a remote pod's change of it
    // costs chassis a nothing either.
    let odd = labelled_pod("shop", "c0", "b", 1, 20, Some("a"), Some("x"));
    let update = e.apply([UpsertPod(odd)]);
    assert!(update.deltas.iter().all(|d| d.chassis != "a"));
    assert_eq!(e.snapshot("a").unwrap().items, before.items);
}

#[test]
fn a_policy_that_cannot_be_compiled_is_reported_and_the_rest_is_served() {
    use skein_netmodel::cluster::{
        LabelSelector, PolicyPort, PortRef, Protocol, SelectorOperator, SelectorRequirement,
    };
    let mut e = cluster();
    let mut bad_rule = policy("default", "bad-rule", None, "a");
    bad_rule.ingress[0].ports =
        vec![PolicyPort { protocol: Protocol::Tcp, port: Some(PortRef::Number(90)), end_port: Some(80) }];
    let mut bad_selector = policy("default", "bad-selector", None, "a");
    bad_selector.pod_selector = LabelSelector {
        match_labels: Default::default(),
        match_expressions: vec![SelectorRequirement {
            key: "app".into(),
            operator: SelectorOperator::In,
            values: vec![],
        }],
    };
    e.apply([UpsertNetworkPolicy(bad_rule), UpsertNetworkPolicy(bad_selector)]);
    let issues: Vec<String> = e.issues().map(ToString::to_string).collect();
    assert_eq!(issues.len(), 2, "{issues:#?}");
    assert!(
        issues[0].starts_with("networkpolicy/default/bad-rule: spec.ingress[0].ports[0]: endPort 80 is below port 90"),
        "{issues:#?}"
    );
    assert!(issues[1].contains("networkpolicy/default/bad-selector: spec.podSelector"), "{issues:#?}");
    assert!(e.issues().all(|i| matches!(i.error, CompileError::Policy(_))));
    // The bad rule is left out but its policy still isolates the pods (deny all); the
    // other policy is not programmed at all.
    let view = e.snapshot("a").unwrap();
    let p1 = Owner::Pod(key("p1"));
    assert!(
        flows_of(&view, &p1)
            .any(|f| f.stage == Stage::LsOutAcl && f.actions.iter().any(|a| matches!(a, Action::Deny { .. })))
    );
    assert_eq!(flows_of(&view, &Owner::Policy(key("bad-selector"))).count(), 0);
}
