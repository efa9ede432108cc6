//! `skein-master dump`: the logical network (like `ovn-nbctl show`) and a chassis's
//! logical flows (like `ovn-sbctl lflow-list`) as readable tables. The cluster is read
//! from the API server and compiled here with the same engine the master runs, so the
//! dump shows what the master serves for the annotations now in the cluster.

use std::fmt::Write as _;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Api;
use kube::api::ListParams;
use skein_netmodel::logical::{LogicalNetwork, LogicalPort, StaticRoute, VipAddress};
use skein_netmodel::southbound::{ChassisView, NextHop, Pipeline, PortKind};
use skein_netmodel::{ClusterChange, Engine, NetworkConfig};

use crate::objects;

/// Lists every object the network depends on and compiles it.
pub async fn load(client: &kube::Client, config: NetworkConfig) -> anyhow::Result<Engine> {
    let lp = ListParams::default();
    let mut changes = Vec::new();
    let mut problems = Vec::new();
    let mut note = |what: String, p: &[objects::Problem]| {
        for p in p {
            problems.push(format!("{what}: {p}"));
        }
    };
    for ns in Api::<Namespace>::all(client.clone()).list(&lp).await? {
        let c = objects::namespace(&ns);
        note(format!("namespace/{}", ns.metadata.name.unwrap_or_default()), &c.problems);
        changes.extend(c.object.map(ClusterChange::UpsertNamespace));
    }
    for n in Api::<Node>::all(client.clone()).list(&lp).await? {
        let c = objects::node(&n);
        note(format!("node/{}", n.metadata.name.unwrap_or_default()), &c.problems);
        changes.extend(c.object.map(ClusterChange::UpsertNode));
    }
    for p in Api::<Pod>::all(client.clone()).list(&lp).await? {
        let c = objects::pod(&p);
        note(
            format!("pod/{}/{}", p.metadata.namespace.unwrap_or_default(), p.metadata.name.unwrap_or_default()),
            &c.problems,
        );
        changes.extend(c.object.map(ClusterChange::UpsertPod));
    }
    for s in Api::<Service>::all(client.clone()).list(&lp).await? {
        let c = objects::service(&s);
        note(
            format!("service/{}/{}", s.metadata.namespace.unwrap_or_default(), s.metadata.name.unwrap_or_default()),
            &c.problems,
        );
        changes.extend(c.object.map(ClusterChange::UpsertService));
    }
    for s in Api::<EndpointSlice>::all(client.clone()).list(&lp).await? {
        let c = objects::endpoint_slice(&s);
        note(
            format!(
                "endpointslice/{}/{}",
                s.metadata.namespace.unwrap_or_default(),
                s.metadata.name.unwrap_or_default()
            ),
            &c.problems,
        );
        changes.extend(c.object.map(ClusterChange::UpsertEndpointSlice));
    }
    for p in Api::<NetworkPolicy>::all(client.clone()).list(&lp).await? {
        let c = objects::network_policy(&p);
        note(
            format!(
                "networkpolicy/{}/{}",
                p.metadata.namespace.unwrap_or_default(),
                p.metadata.name.unwrap_or_default()
            ),
            &c.problems,
        );
        changes.extend(c.object.map(ClusterChange::UpsertNetworkPolicy));
    }
    for p in &problems {
        tracing::warn!(problem = %p, "invalid object");
    }
    let mut engine = Engine::new(config)?;
    engine.apply(changes);
    Ok(engine)
}

fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < row.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |out: &mut String, cells: Vec<&str>| {
        let last = cells.len() - 1;
        for (i, c) in cells.into_iter().enumerate() {
            if i == last {
                let _ = writeln!(out, "{c}");
            } else {
                let _ = write!(out, "{c:<w$}  ", w = widths[i]);
            }
        }
    };
    line(out, header.to_vec());
    for row in rows {
        line(out, row.iter().map(String::as_str).collect());
    }
}

fn port_row(p: &LogicalPort) -> Vec<String> {
    let kind = match &p.kind {
        PortKind::Pod { pod, .. } => format!("pod {pod}"),
        PortKind::Management => "management".into(),
        PortKind::Patch { peer_datapath, peer_port } => format!("patch → dp {peer_datapath} port {peer_port}"),
        PortKind::External => "uplink".into(),
    };
    vec![
        p.key.to_string(),
        p.name.clone(),
        p.mac.map_or_else(|| "-".into(), |m| m.to_string()),
        p.ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "),
        p.chassis.clone().unwrap_or_else(|| "*".into()),
        kind,
    ]
}

fn route_row(r: &StaticRoute) -> Vec<String> {
    let via = match r.next_hop {
        NextHop::Destination => "ip.dst".to_owned(),
        NextHop::Ip(ip) => ip.to_string(),
        NextHop::Uplink => "uplink".to_owned(),
    };
    vec![
        format!("{:?}", r.policy).to_lowercase(),
        r.prefix.to_string(),
        via,
        r.output_port.to_string(),
        r.chassis.clone().unwrap_or_else(|| "*".into()),
    ]
}

/// The logical network as text.
pub fn format_logical_network(net: &LogicalNetwork) -> String {
    let mut out = String::new();
    for r in net.routers.values() {
        let _ = writeln!(
            out,
            "router {} (datapath {}) chassis {}",
            r.name,
            r.key,
            r.chassis.as_deref().unwrap_or("* (distributed)")
        );
        let rows: Vec<Vec<String>> = r.ports.values().map(port_row).collect();
        table(&mut out, &["  KEY", "PORT", "MAC", "ADDRESSES", "CHASSIS", "KIND"], &indent(rows));
        if !r.routes.is_empty() {
            let rows: Vec<Vec<String>> = r.routes.iter().map(route_row).collect();
            table(&mut out, &["  ROUTE", "PREFIX", "NEXTHOP", "OUTPORT", "CHASSIS"], &indent(rows));
        }
        for n in &r.nat {
            let _ = writeln!(out, "  snat {} → {} (out port {})", n.logical_ip, n.external_ip, n.output_port);
        }
        if !r.load_balancers.is_empty() {
            let _ = writeln!(out, "  load balancers: {}", r.load_balancers.len());
        }
        out.push('\n');
    }
    for s in net.switches.values() {
        let subnets = s.subnets.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ");
        let _ = writeln!(
            out,
            "switch {} (datapath {}) subnets [{subnets}] chassis {}",
            s.name,
            s.key,
            s.chassis.as_deref().unwrap_or("* (distributed)")
        );
        let rows: Vec<Vec<String>> = s.ports.values().map(port_row).collect();
        table(&mut out, &["  KEY", "PORT", "MAC", "ADDRESSES", "CHASSIS", "KIND"], &indent(rows));
        if !s.load_balancers.is_empty() {
            let _ = writeln!(out, "  load balancers: {}", s.load_balancers.len());
        }
        out.push('\n');
    }
    if !net.load_balancers.is_empty() {
        let mut rows = Vec::new();
        for lb in net.load_balancers.values() {
            for v in &lb.vips {
                let addr = match v.address {
                    VipAddress::Ip(ip) => ip.to_string(),
                    VipAddress::NodeIps(f) => format!("<node {f}>"),
                };
                let endpoints = lb
                    .target(&v.lb)
                    .map(|t| t.endpoints.iter().map(|e| format!("{}:{}", e.ip, e.port)).collect::<Vec<_>>().join(" "))
                    .unwrap_or_default();
                rows.push(vec![
                    lb.name.clone(),
                    format!("{:?}", v.kind),
                    format!("{addr}:{}", v.port),
                    format!("{:?}", v.attachment),
                    if endpoints.is_empty() { "(none: reject)".into() } else { endpoints },
                ]);
            }
        }
        table(&mut out, &["LOAD BALANCER", "KIND", "VIP", "ATTACHED", "ENDPOINTS"], &rows);
    }
    out
}

fn indent(rows: Vec<Vec<String>>) -> Vec<Vec<String>> {
    rows.into_iter()
        .map(|mut r| {
            if let Some(first) = r.first_mut() {
                *first = format!("  {first}");
            }
            r
        })
        .collect()
}

/// A chassis's view as text: bindings, load balancers and flows (OVN notation), sorted
/// by datapath, pipeline, table and descending priority.
pub fn format_chassis_view(view: &ChassisView) -> String {
    let mut out = String::new();
    let items = &view.items;
    let _ = writeln!(out, "chassis {} at version {}: {} items\n", view.chassis, view.version, items.len());
    let rows: Vec<Vec<String>> = items
        .chassis
        .iter()
        .map(|c| vec![c.name.clone(), c.id.clone(), c.tunnel_ip.to_string(), format!("{:?}", c.encap).to_lowercase()])
        .collect();
    table(&mut out, &["CHASSIS", "ID", "TUNNEL IP", "ENCAP"], &rows);
    out.push('\n');
    let rows: Vec<Vec<String>> =
        items.datapaths.iter().map(|d| vec![d.key.to_string(), d.name.clone(), format!("{:?}", d.kind)]).collect();
    table(&mut out, &["DATAPATH", "NAME", "KIND"], &rows);
    out.push('\n');
    let rows: Vec<Vec<String>> = items
        .ports
        .iter()
        .map(|p| {
            vec![
                p.datapath.to_string(),
                p.key.to_string(),
                p.name.clone(),
                p.mac.map_or_else(|| "-".into(), |m| m.to_string()),
                p.ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "),
                p.chassis.clone().unwrap_or_else(|| "*".into()),
            ]
        })
        .collect();
    table(&mut out, &["DATAPATH", "PORT", "NAME", "MAC", "ADDRESSES", "CHASSIS"], &rows);
    out.push('\n');
    let rows: Vec<Vec<String>> = items
        .load_balancers
        .iter()
        .map(|lb| {
            let backends = lb.backends.iter().map(|b| format!("{}:{}", b.ip, b.port)).collect::<Vec<_>>().join(" ");
            vec![lb.id.to_string(), if backends.is_empty() { "(none: reject)".into() } else { backends }]
        })
        .collect();
    table(&mut out, &["LOAD BALANCER", "BACKENDS"], &rows);
    out.push('\n');
    let mut flows: Vec<_> = items.flows.iter().collect();
    flows.sort_by(|a, b| {
        (a.datapath, a.stage.pipeline() == Pipeline::Egress, a.stage.table(), std::cmp::Reverse(a.priority))
            .cmp(&(b.datapath, b.stage.pipeline() == Pipeline::Egress, b.stage.table(), std::cmp::Reverse(b.priority)))
            .then_with(|| a.cmp(b))
    });
    let rows: Vec<Vec<String>> = flows
        .iter()
        .map(|f| {
            let pipeline = match f.stage.pipeline() {
                Pipeline::Ingress => "in",
                Pipeline::Egress => "out",
            };
            vec![
                f.datapath.to_string(),
                format!("{pipeline}/{} {}", f.stage.table(), f.stage),
                f.priority.to_string(),
                f.owner.to_string(),
                f.matches.to_string(),
                f.actions.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "),
            ]
        })
        .collect();
    table(&mut out, &["DP", "TABLE", "PRIO", "OWNER", "MATCH", "ACTIONS"], &rows);
    out
}

/// The whole dump: the logical network, the compiler's issues, and `chassis`'s view.
pub fn format(engine: &Engine, chassis: Option<&str>) -> Result<String, String> {
    let mut out = format_logical_network(&engine.logical_network());
    let issues: Vec<String> = engine.issues().map(ToString::to_string).collect();
    if !issues.is_empty() {
        let _ = writeln!(out, "\nissues (objects not or partly programmed):");
        for i in issues {
            let _ = writeln!(out, "  {i}");
        }
    }
    if let Some(c) = chassis {
        let view = engine.snapshot(c).ok_or_else(|| {
            let known: Vec<&str> = engine.chassis_names().collect();
            format!("no chassis {c:?}: the node needs a skein.dev/chassis annotation (chassis: {known:?})")
        })?;
        out.push('\n');
        out.push_str(&format_chassis_view(&view));
    }
    Ok(out)
}
