//! Long-lived connections of every kind a node carries — pod ↔ pod on the node and across
//! the tunnel, through a ClusterIP, to a NodePort from outside, out through egress SNAT,
//! over TCP and UDP — set up on a test cluster, so that a test or a bench can restart things
//! under them. The connections themselves are the lab's (`lab/src/hold.rs`).

use std::net::SocketAddrV4;
use std::time::Duration;

pub use super::hold::{Connection, EchoServer, Proto, Report, answers};

/// The connection kinds of [`Proto`] and path.
pub use super::hold::KINDS;

/// Echo servers and the connections to them.
pub struct Workload {
    /// The connections, `per_kind` of each of [`KINDS`], in that order.
    pub connections: Vec<Connection>,
    _servers: Vec<EchoServer>,
}

impl Workload {
    /// Stops every connection; their reports.
    pub fn finish(self) -> Vec<Report> {
        let Workload { connections, _servers } = self;
        connections.into_iter().map(Connection::finish).collect()
    }
}

/// Port of the echo servers and the Service.
const ECHO_PORT: u16 = 7000;

/// Sets up, on cluster `c` (two nodes or more), a client pod and an echo pod on node 1, an
/// echo pod on node 2, an echo server outside, a NodePort Service (TCP and UDP, on
/// `cluster_ip`, TCP NodePort `node_port`) whose backends are both echo pods, and starts
/// `per_kind` connections of each of [`KINDS`] — every one of them through node 1.
pub fn every_kind(
    c: &mut super::harness::Cluster,
    tag: &str,
    cluster_ip: &str,
    node_port: u16,
    per_kind: usize,
) -> Workload {
    use serde_json::json;
    use skein_kube_fake::Kind;
    let app = format!("{tag}-echo");
    let client = c.add_pod(&format!("{tag}-client"), 0, &format!("{tag}-client"));
    let local = c.add_pod(&format!("{tag}-local"), 0, &app);
    let remote = c.add_pod(&format!("{tag}-remote"), 1, &app);
    let any = |ip: &str| SocketAddrV4::new(ip.parse().expect("address"), ECHO_PORT);
    let mut servers = Vec::new();
    for (ns, at) in
        [(&local.ns, any("0.0.0.0")), (&remote.ns, any("0.0.0.0")), (&c.outside, any(super::harness::INTERNET))]
    {
        servers.push(EchoServer::start(ns, at).unwrap_or_else(|e| c.fail(&format!("echo server in {ns}: {e}"))));
    }
    c.insert(
        Kind::Service,
        json!({"metadata": {"name": app, "namespace": "default"},
               "spec": {"type": "NodePort", "clusterIP": cluster_ip, "selector": {"app": app},
                        "ports": [{"name": "tcp", "port": ECHO_PORT, "targetPort": ECHO_PORT, "nodePort": node_port, "protocol": "TCP"},
                                  {"name": "udp", "port": ECHO_PORT, "targetPort": ECHO_PORT, "protocol": "UDP"}]}}),
    );
    c.insert(
        Kind::EndpointSlice,
        json!({"metadata": {"name": format!("{app}-1"), "namespace": "default", "labels": {"kubernetes.io/service-name": app}},
               "addressType": "IPv4",
               "ports": [{"name": "tcp", "port": ECHO_PORT, "protocol": "TCP"}, {"name": "udp", "port": ECHO_PORT, "protocol": "UDP"}],
               "endpoints": [
                   {"addresses": [local.ip], "conditions": {"ready": true}, "nodeName": c.nodes[0].name},
                   {"addresses": [remote.ip], "conditions": {"ready": true}, "nodeName": c.nodes[1].name}]}),
    );
    let vip = any(cluster_ip);
    let node_port_at = SocketAddrV4::new(c.nodes[0].ip.parse().expect("node IP"), node_port);
    let targets: [(&str, &str, Proto, SocketAddrV4); 8] = [
        (KINDS[0], &client.ns, Proto::Tcp, any(&local.ip)),
        (KINDS[1], &client.ns, Proto::Tcp, any(&remote.ip)),
        (KINDS[2], &client.ns, Proto::Tcp, vip),
        (KINDS[3], &c.outside, Proto::Tcp, node_port_at),
        (KINDS[4], &client.ns, Proto::Tcp, any(super::harness::INTERNET)),
        (KINDS[5], &client.ns, Proto::Udp, any(&remote.ip)),
        (KINDS[6], &client.ns, Proto::Udp, vip),
        (KINDS[7], &client.ns, Proto::Udp, any(super::harness::INTERNET)),
    ];
    for (kind, ns, proto, dst) in &targets {
        c.wait_for(&format!("{kind} ({dst}) to answer"), Duration::from_secs(30), || answers(ns, *proto, *dst));
    }
    let mut connections = Vec::new();
    for (kind, ns, proto, dst) in &targets {
        for _ in 0..per_kind {
            connections.push(Connection::start(kind, ns, *proto, *dst));
        }
    }
    for conn in &connections {
        c.wait_for(&format!("{} to exchange", conn.kind()), Duration::from_secs(30), || conn.answered() >= 3);
    }
    Workload { connections, _servers: servers }
}
