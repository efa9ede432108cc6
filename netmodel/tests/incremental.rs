//! Property: applying every delta in order gives exactly what a full compile of the final
//! state gives, for random sequences of node, pod, Service, EndpointSlice, namespace and
//! NetworkPolicy changes — including conflicting annotations, unregistered nodes, label
//! changes, invalid policy rules and deleted objects. Every view
//! is also checked for the structural promises the agent relies on.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use skein_netmodel::ClusterChange;
use skein_netmodel::ObjectKey;
use skein_netmodel::cluster::{
    ContainerPort, EndpointConditions, Labels, Namespace, NetworkPolicy, Protocol, ServiceType, SessionAffinity,
    TrafficPolicy,
};
use skein_netmodel::southbound::{Action, ChassisView};
use support::*;

#[derive(Clone, Debug)]
enum Op {
    Node { n: u8, subnet: Option<u8>, chassis: bool },
    DeleteNode(u8),
    Pod { p: u8, node: u8, subnet: u8, host: u8, host_network: bool, annotated: bool },
    DeletePod(u8),
    Service { s: u8, kind: u8, port: u16, etp_local: bool, itp_local: bool, affinity: bool, external_ip: bool },
    DeleteService(u8),
    Slice { e: u8, svc: u8, endpoints: Vec<(u8, u8, bool, bool)> },
    DeleteSlice(u8),
    Labels { p: u8, node: u8, host: u8, app: Option<u8>, tier: Option<u8>, metrics: bool },
    Namespace { ns: u8, team: Option<u8> },
    DeleteNamespace(u8),
    Policy(NetworkPolicy),
    DeletePolicy(u8, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        // Mostly each node on its own subnet, sometimes a clash or none.
        3 => (0..4u8, proptest::option::weighted(0.9, 0..4u8), proptest::bool::weighted(0.7), proptest::bool::weighted(0.8))
            .prop_map(|(n, other, own, chassis)| Op::Node { n, subnet: other.map(|o| if own { n } else { o }), chassis }),
        1 => (0..4u8).prop_map(Op::DeleteNode),
        // Mostly in the node's subnet, on few addresses (so that some clash).
        5 => (0..8u8, 0..4u8, 0..4u8, proptest::bool::weighted(0.85), 3..6u8, proptest::bool::weighted(0.1), proptest::bool::weighted(0.9))
            .prop_map(|(p, node, other, own, host, host_network, annotated)| Op::Pod {
                p, node, subnet: if own { node } else { other }, host, host_network, annotated
            }),
        2 => (0..8u8).prop_map(Op::DeletePod),
        3 => (0..3u8, 0..4u8, prop_oneof![Just(80u16), Just(443)], any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>())
            .prop_map(|(s, kind, port, etp_local, itp_local, affinity, external_ip)| Op::Service {
                s, kind, port, etp_local, itp_local, affinity, external_ip
            }),
        1 => (0..3u8).prop_map(Op::DeleteService),
        4 => (0..4u8, 0..3u8, proptest::collection::vec((3..7u8, 0..4u8, any::<bool>(), any::<bool>()), 0..4))
            .prop_map(|(e, svc, endpoints)| Op::Slice { e, svc, endpoints }),
        1 => (0..4u8).prop_map(Op::DeleteSlice),
        4 => (8..14u8, 0..4u8, 3..8u8, proptest::option::of(0..2u8), proptest::option::of(0..2u8), any::<bool>())
            .prop_map(|(p, node, host, app, tier, metrics)| Op::Labels { p, node, host, app, tier, metrics }),
        1 => (0..3u8, proptest::option::of(0..2u8)).prop_map(|(ns, team)| Op::Namespace { ns, team }),
        1 => (0..3u8).prop_map(Op::DeleteNamespace),
        3 => (0..3u8, 0..3u8).prop_flat_map(|(ns, n)| policies::policy(format!("ns{ns}"), format!("np{n}"))).prop_map(Op::Policy),
        1 => (0..3u8, 0..3u8).prop_map(|(ns, n)| Op::DeletePolicy(ns, n)),
    ]
}

fn change(op: &Op) -> ClusterChange {
    let node_name = |n: u8| format!("n{n}");
    match op {
        Op::Node { n, subnet, chassis } => ClusterChange::UpsertNode(node(&node_name(*n), *subnet, *chassis)),
        Op::DeleteNode(n) => ClusterChange::DeleteNode(node_name(*n)),
        Op::Pod { p, node, subnet, host, host_network, annotated } => {
            let mut pod = pod(&format!("p{p}"), &node_name(*node), *subnet, *host);
            pod.host_network = *host_network;
            if !annotated {
                pod.network = None;
            }
            ClusterChange::UpsertPod(pod)
        }
        Op::DeletePod(p) => ClusterChange::DeletePod(key(&format!("p{p}"))),
        Op::Service { s, kind, port, etp_local, itp_local, affinity, external_ip } => {
            let mut svc = service(&format!("s{s}"), &format!("10.96.0.{}", 10 + s), *port);
            svc.service_type = match kind {
                0 => ServiceType::ClusterIp,
                1 => ServiceType::NodePort,
                2 => ServiceType::LoadBalancer,
                _ => ServiceType::ExternalName,
            };
            if svc.service_type != ServiceType::ClusterIp {
                svc.ports[0].node_port = Some(30000 + u16::from(*s));
            }
            if svc.service_type == ServiceType::LoadBalancer {
                svc.load_balancer_ips = vec![ip(&format!("203.0.113.{}", 100 + s))];
            }
            if *external_ip {
                svc.external_ips = vec![ip(&format!("203.0.113.{}", 10 + s))];
            }
            let policy = |local: bool| if local { TrafficPolicy::Local } else { TrafficPolicy::Cluster };
            svc.external_traffic_policy = policy(*etp_local);
            svc.internal_traffic_policy = policy(*itp_local);
            if *affinity {
                svc.session_affinity = SessionAffinity::ClientIp { timeout_seconds: 10800 };
            }
            ClusterChange::UpsertService(svc)
        }
        Op::DeleteService(s) => ClusterChange::DeleteService(key(&format!("s{s}"))),
        Op::Slice { e, svc, endpoints } => {
            let eps: Vec<(String, String, bool)> = endpoints
                .iter()
                .map(|(host, node, ready, _)| (format!("10.244.{node}.{host}"), node_name(*node), *ready))
                .collect();
            let borrowed: Vec<(&str, &str, bool)> = eps.iter().map(|(a, n, r)| (a.as_str(), n.as_str(), *r)).collect();
            let mut slice = slice(&format!("e{e}"), &format!("s{svc}"), &borrowed);
            for (ep, (_, _, ready, terminating)) in slice.endpoints.iter_mut().zip(endpoints) {
                ep.conditions =
                    EndpointConditions { ready: Some(*ready), serving: Some(true), terminating: Some(*terminating) };
            }
            ClusterChange::UpsertEndpointSlice(slice)
        }
        Op::DeleteSlice(e) => ClusterChange::DeleteEndpointSlice(key(&format!("e{e}"))),
        Op::Labels { p, node, host, app, tier, metrics } => {
            let ns = format!("ns{}", p % 3);
            let app = app.map(|a| if a == 0 { "a" } else { "b" });
            let tier = tier.map(|t| if t == 0 { "x" } else { "y" });
            let mut pod = labelled_pod(&ns, &format!("q{p}"), &node_name(*node), *node, *host, app, tier);
            if *metrics {
                // Two pods may map one name to different numbers.
                pod.ports.push(ContainerPort {
                    name: Some("metrics".into()),
                    port: 9000 + u16::from(*p),
                    protocol: Protocol::Tcp,
                });
            }
            ClusterChange::UpsertPod(pod)
        }
        Op::Namespace { ns, team } => {
            let mut labels = Labels::new();
            if let Some(t) = team {
                labels.insert("team".into(), if *t == 0 { "red".into() } else { "blue".into() });
            }
            ClusterChange::UpsertNamespace(Namespace { name: format!("ns{ns}"), labels })
        }
        Op::DeleteNamespace(ns) => ClusterChange::DeleteNamespace(format!("ns{ns}")),
        Op::Policy(np) => ClusterChange::UpsertNetworkPolicy(np.clone()),
        Op::DeletePolicy(ns, n) => {
            ClusterChange::DeleteNetworkPolicy(ObjectKey::new(format!("ns{ns}"), format!("np{n}")))
        }
    }
}

/// What the agent relies on in any view.
fn check_structure(view: &ChassisView) -> Result<(), TestCaseError> {
    let items = &view.items;
    let datapaths: BTreeSet<_> = items.datapaths.iter().map(|d| d.key).collect();
    prop_assert_eq!(datapaths.len(), items.datapaths.len(), "datapath keys unique");
    let mut ports = BTreeSet::new();
    for p in &items.ports {
        prop_assert!(datapaths.contains(&p.datapath), "port {} on a datapath the chassis has", p.name);
        prop_assert!(ports.insert((p.datapath, p.key)), "port key {} unique in datapath {}", p.key, p.datapath);
    }
    let chassis: BTreeSet<_> = items.chassis.iter().map(|c| c.name.as_str()).collect();
    for p in &items.ports {
        if let Some(c) = &p.chassis {
            prop_assert!(chassis.contains(c.as_str()), "port {} bound to a known chassis", p.name);
        }
    }
    let lbs: BTreeSet<_> = items.load_balancers.iter().map(|l| &l.id).collect();
    prop_assert_eq!(lbs.len(), items.load_balancers.len(), "load balancer ids unique");
    let mut matches = BTreeMap::new();
    for f in &items.flows {
        prop_assert!(datapaths.contains(&f.datapath), "flow on a datapath the chassis has: {}", f);
        for a in &f.actions {
            if let Action::CtLb { lb, .. } = a {
                prop_assert!(lbs.contains(lb), "load balancer {} present for {}", lb, f);
            }
        }
        let previous = matches.insert((f.datapath, f.stage, f.priority, f.matches.clone()), f);
        prop_assert!(previous.is_none(), "two flows with one match: {} and {}", previous.unwrap(), f);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn deltas_in_order_equal_a_full_compile(batches in proptest::collection::vec(proptest::collection::vec(op(), 1..5), 1..14)) {
        let mut engine = default_engine();
        let mut mirror: BTreeMap<String, ChassisView> = BTreeMap::new();
        for batch in &batches {
            let update = engine.apply(batch.iter().map(change));
            for c in &update.removed_chassis {
                prop_assert!(mirror.remove(c).is_some(), "removed chassis {} was known", c);
            }
            for c in &update.added_chassis {
                let view = engine.snapshot(c).unwrap();
                prop_assert_eq!(view.version, 1);
                prop_assert!(mirror.insert(c.clone(), view).is_none(), "added chassis {} was new", c);
            }
            for delta in &update.deltas {
                prop_assert!(!delta.removed.is_empty() || !delta.added.is_empty());
                let view = mirror.get_mut(&delta.chassis).unwrap();
                view.apply(delta).map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            let names: Vec<&str> = engine.chassis_names().collect();
            prop_assert_eq!(names, mirror.keys().map(String::as_str).collect::<Vec<_>>());
            let full = full_compile(&engine);
            prop_assert_eq!(full.len(), mirror.len());
            for expected in &full {
                let view = &mirror[&expected.chassis];
                prop_assert_eq!(view.version, engine.version(&expected.chassis).unwrap_or_default());
                if view.items != expected.items {
                    let extra: Vec<String> = view.items.flows.difference(&expected.items.flows).map(ToString::to_string).collect();
                    let missing: Vec<String> = expected.items.flows.difference(&view.items.flows).map(ToString::to_string).collect();
                    prop_assert!(false, "chassis {}: incremental differs from full; extra flows {:#?}, missing flows {:#?}",
                        expected.chassis, extra, missing);
                }
                check_structure(view)?;
            }
        }
    }
}
