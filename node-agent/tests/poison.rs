//! Failure isolation end to end, in network namespaces (`docs/security.md`): a poison
//! object — two Services sharing an externalIP and port, a mistake anyone allowed to
//! create Services can make — is left out of the translation and reported (a counter, a
//! warning in the log), and every node keeps installing new views, completing CNI ADD and
//! reporting ready. Real `skein-agent` processes, the real `skein-cni`, the in-process
//! master and API fake, as in `cluster.rs`.
//!
//! A SYN flood from spoofed sources to a NodePort, with small conntrack limits: the
//! established connection through the NodePort keeps flowing, and new connections to
//! another Service — from a pod and from outside — still open (early drop).
//!
//! Needs root. CI runs it as root; without root it fails, unless SKEIN_SKIP_NETNS_TESTS=1,
//! which skips it (and says so).

#[path = "cluster/harness.rs"]
#[allow(dead_code)]
mod harness;
#[path = "../../datapath/tests/netns/traffic.rs"]
#[allow(dead_code)]
mod traffic;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use harness::{Cluster, exec, ping};
use serde_json::json;
use skein_kube_fake::Kind;
use traffic::{NameServer, TcpSink, TcpSource, fetch_answers, join_within, spawn_in};

/// The agent's `/metrics` on node `i`.
fn scrape(c: &Cluster, i: usize) -> String {
    exec(
        &c.nodes[i].ns,
        &[
            "bash",
            "-c",
            "exec 3<>/dev/tcp/127.0.0.1/9476; printf 'GET /metrics HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n' >&3; cat <&3",
        ],
    )
    .unwrap_or_default()
}

/// The value of the sample `series` in `metrics`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' '))?.trim().parse().ok())
}

/// A ClusterIP Service `name` on `vip`:80 → port 8080 of `backend` (on `node`), with
/// `external_ips`.
fn service(c: &Cluster, name: &str, vip: &str, external_ips: &[&str], backend: &str, node: &str) {
    c.insert(
        Kind::Service,
        json!({"metadata": {"name": name, "namespace": "default"},
               "spec": {"clusterIP": vip, "externalIPs": external_ips, "selector": {"app": name},
                        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}}),
    );
    c.insert(
        Kind::EndpointSlice,
        json!({"metadata": {"name": format!("{name}-1"), "namespace": "default",
                            "labels": {"kubernetes.io/service-name": name}},
               "addressType": "IPv4",
               "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
               "endpoints": [{"addresses": [backend], "conditions": {"ready": true}, "nodeName": node}]}),
    );
}

fn fetch_one(ns: &str, dst: SocketAddrV4) -> Result<String, String> {
    join_within(fetch_answers(ns, dst, 1), Duration::from_secs(40)).map(|mut v| v.pop().unwrap_or_default())
}

#[test]
fn netns_two_services_sharing_an_external_ip_stop_nothing_else() {
    let Some(mut c) = Cluster::new("agent_poison", "x", 2) else { return };
    let web = c.add_pod("web", 0, "first");
    let other = c.add_pod("other", 1, "second");
    let at = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8080);
    let _web_server = NameServer::start(&web.ns, at, "web").expect("server web");
    let _other_server = NameServer::start(&other.ns, at, "other").expect("server other");

    // The poison: "second" claims the externalIP and port "first" already has.
    let (n0, n1) = (c.nodes[0].name.clone(), c.nodes[1].name.clone());
    service(&c, "first", "10.96.0.70", &["203.0.113.50"], &web.ip, &n0);
    service(&c, "second", "10.96.0.71", &["203.0.113.50"], &other.ip, &n1);
    for i in 0..2 {
        c.wait_for("the conflict to be reported", Duration::from_secs(30), || {
            sample(&scrape(&c, i), "skein_untranslated_flows").is_some_and(|n| n > 0.0)
        });
        c.wait_ready(i);
    }
    let log = c.agent_log(0);
    assert!(log.contains("logical flow left out") && log.contains("second"), "the log names the object: {log}");
    // Each node says so on the Service, with an Event.
    c.wait_for("an Event on the second Service from each node", Duration::from_secs(30), || {
        let reporters: std::collections::BTreeSet<String> = c
            .api
            .list(Kind::EventsV1Event, Some("default"))
            .into_iter()
            .filter(|e| e.pointer("/regarding/name").and_then(|n| n.as_str()) == Some("second"))
            .filter(|e| e.get("reason").and_then(|r| r.as_str()) == Some("NotInstalled"))
            .filter_map(|e| e.get("reportingInstance").and_then(|r| r.as_str()).map(str::to_owned))
            .collect();
        reporters.len() == 2
    });
    let on_first = c
        .api
        .list(Kind::EventsV1Event, Some("default"))
        .into_iter()
        .filter(|e| e.pointer("/regarding/name").and_then(|n| n.as_str()) == Some("first"))
        .filter(|e| e.get("reason").and_then(|r| r.as_str()) == Some("NotInstalled"))
        .count();
    assert_eq!(on_first, 0, "the Service that keeps the address is not blamed");

    // Both nodes keep installing: a Service created after the poison works from both,
    // and so do both poisoned Services' cluster IPs.
    let late = c.add_pod("late", 1, "late");
    let _late_server = NameServer::start(&late.ns, at, "late").expect("server late");
    service(&c, "late", "10.96.0.72", &[], &late.ip, &n1);
    let from0 = c.add_pod("client0", 0, "client");
    let from1 = c.add_pod("client1", 1, "client");
    for client in [&from0, &from1] {
        for (vip, answer) in [("10.96.0.72", "late"), ("10.96.0.70", "web"), ("10.96.0.71", "other")] {
            match fetch_one(&client.ns, SocketAddrV4::new(vip.parse().expect("vip"), 80)) {
                Ok(got) if got == answer => {}
                other => c.fail(&format!("{} → {vip}: {other:?}", client.name)),
            }
        }
        for peer in [&web, &other, &late] {
            if let Err(e) = ping(&client.ns, &peer.ip, 2, 10) {
                c.fail(&format!("{} → {}: {e}", client.name, peer.name));
            }
        }
    }
    for i in 0..2 {
        c.wait_ready(i);
    }
}

/// A NodePort Service `name` (`node_port` → 8080 of `backend` on `node`), cluster IP `vip`.
fn node_port_service(c: &Cluster, name: &str, vip: &str, node_port: u16, backend: &str, node: &str) {
    c.insert(
        Kind::Service,
        json!({"metadata": {"name": name, "namespace": "default"},
               "spec": {"type": "NodePort", "clusterIP": vip, "selector": {"app": name},
                        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": node_port, "protocol": "TCP"}]}}),
    );
    c.insert(
        Kind::EndpointSlice,
        json!({"metadata": {"name": format!("{name}-1"), "namespace": "default",
                            "labels": {"kubernetes.io/service-name": name}},
               "addressType": "IPv4",
               "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
               "endpoints": [{"addresses": [backend], "conditions": {"ready": true}, "nodeName": node}]}),
    );
}

/// Sends `count` TCP SYNs to `dst` from inside `ns`, each from another spoofed source
/// (203.0.113.1–250, ports from 1024): what a SYN flood looks like to conntrack.
fn syn_flood(ns: &str, dst: SocketAddrV4, count: u32) -> Result<u32, String> {
    use rustix::net::{AddressFamily, SendFlags, SocketType, ipproto, sendto, socket};
    let handle = spawn_in(ns, "syn flood", move || {
        // IPPROTO_RAW: the frame carries its own IPv4 header (the spoofed source).
        let fd =
            socket(AddressFamily::INET, SocketType::RAW, Some(ipproto::RAW)).map_err(|e| format!("raw socket: {e}"))?;
        let mut sent = 0;
        for k in 0..count {
            // In bursts of 100 that the node's receive ring holds (a test-sized flood
            // that reaches conntrack, rather than the ring's overflow).
            if k % 100 == 0 {
                std::thread::sleep(Duration::from_millis(10));
            }
            let src = Ipv4Addr::new(203, 0, 113, (k % 250 + 1) as u8);
            let sport = 1024 + (k / 250) as u16;
            // Ethernet (for the checksum helper), IPv4, TCP with SYN.
            let mut f = vec![0u8; 14 + 20 + 20];
            f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
            f[14..26].copy_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]);
            f[26..30].copy_from_slice(&src.octets());
            f[30..34].copy_from_slice(&dst.ip().octets());
            f[34..36].copy_from_slice(&sport.to_be_bytes());
            f[36..38].copy_from_slice(&dst.port().to_be_bytes());
            f[38..42].copy_from_slice(&k.to_be_bytes());
            f[46] = 5 << 4;
            f[47] = 0x02;
            f[48..50].copy_from_slice(&64240u16.to_be_bytes());
            skein_datapath::packet::fill_checksums(&mut f);
            match sendto(&fd, &f[14..], SendFlags::empty(), &std::net::SocketAddr::V4(dst)) {
                Ok(_) => sent += 1,
                // The socket's buffer is full: let it drain.
                Err(rustix::io::Errno::NOBUFS | rustix::io::Errno::AGAIN) => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(format!("send SYN {k}: {e}")),
            }
        }
        Ok(sent)
    });
    join_within(handle, Duration::from_secs(120))
}

fn stat(c: &Cluster, i: usize, name: &str) -> u64 {
    c.stats(i).get(name).and_then(|v| v.parse().ok()).unwrap_or(0)
}

#[test]
fn netns_a_syn_flood_to_a_node_port_leaves_established_and_other_connections_working() {
    let Some(mut c) = Cluster::new("agent_synflood", "f", 1) else { return };
    // Small limits, so that a test-sized flood fills them.
    c.stop_agent(0);
    let master = c.master_url.clone();
    c.start_agent_with(0, &master, &["--ct-max-connections", "1000", "--ct-gateway-zone-limit", "200"]);
    c.wait_ready(0);
    let sink = c.add_pod("sink", 0, "flooded");
    let other = c.add_pod("other", 0, "other");
    let client = c.add_pod("client", 0, "client");
    let n0 = c.nodes[0].name.clone();
    let node_ip: Ipv4Addr = c.nodes[0].ip.parse().expect("node ip");
    node_port_service(&c, "flooded", "10.96.0.80", 30080, &sink.ip, &n0);
    node_port_service(&c, "other", "10.96.0.81", 30081, &other.ip, &n0);
    let at = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8080);
    let _other_server = NameServer::start(&other.ns, at, "other").expect("server other");
    let other_vip = SocketAddrV4::new("10.96.0.81".parse().expect("vip"), 80);
    c.wait_for("the other Service to answer", Duration::from_secs(30), || fetch_one(&client.ns, other_vip).is_ok());

    // An established connection from outside through the flooded NodePort.
    let receiver = TcpSink::start(&sink.ns, at).expect("sink");
    let stream = TcpSource::start(&c.outside, SocketAddrV4::new(node_ip, 30080), None);
    c.wait_for("the stream to flow", Duration::from_secs(30), || receiver.received() > 0);

    let early_before = stat(&c, 0, "ct_early_drops");
    let sent = syn_flood(&c.outside, SocketAddrV4::new(node_ip, 30080), 4000)
        .unwrap_or_else(|e| c.fail(&format!("flood: {e}")));
    assert!(sent >= 2000, "only {sent} SYNs sent");
    c.wait_for("the flood to reach conntrack's limits", Duration::from_secs(60), || {
        stat(&c, 0, "ct_early_drops") > early_before
    });

    // The established stream keeps flowing.
    let flowed = receiver.received();
    c.wait_for("the established stream to keep flowing", Duration::from_secs(30), || {
        receiver.received() > flowed + (1 << 20)
    });
    // New connections to the other Service: from a pod (cluster IP) and from outside
    // (its NodePort, through the gateway zones the flood filled).
    for (from, dst) in [(&client.ns, other_vip), (&c.outside, SocketAddrV4::new(node_ip, 30081))] {
        let answers = join_within(fetch_answers(from, dst, 5), Duration::from_secs(60))
            .unwrap_or_else(|e| c.fail(&format!("{from} → {dst} after the flood: {e}")));
        assert_eq!(answers, vec!["other"; 5], "{from} → {dst}");
    }
    stream.stop();
    let sent = stream.finish(Duration::from_secs(30)).unwrap_or_else(|e| c.fail(&format!("stream: {e}")));
    let got = receiver.finish(Duration::from_secs(30)).unwrap_or_else(|e| c.fail(&format!("sink: {e}")));
    assert_eq!((got.bytes, got.digest), (sent.bytes, sent.digest), "every byte of the stream, in order");
    let metrics = scrape(&c, 0);
    assert!(sample(&metrics, "skein_conntrack_early_drops_total").is_some_and(|n| n > 0.0), "{metrics}");
}

/// Warning Events with `reason` on `name` (in `namespace`), by reporting instance.
fn event_reporters(c: &Cluster, namespace: &str, name: &str, reason: &str) -> std::collections::BTreeSet<String> {
    c.api
        .list(Kind::EventsV1Event, Some(namespace))
        .into_iter()
        .filter(|e| e.pointer("/regarding/name").and_then(|n| n.as_str()) == Some(name))
        .filter(|e| e.get("reason").and_then(|r| r.as_str()) == Some(reason))
        .filter_map(|e| e.get("reportingInstance").and_then(|r| r.as_str()).map(str::to_owned))
        .collect()
}

#[test]
fn netns_a_chassis_with_an_ipv6_tunnel_address_stops_nothing_else() {
    use skein_netmodel::annotations::{CHASSIS, ChassisAnnotation, Encap, format_chassis};
    let Some(mut c) = Cluster::new("agent_poison6", "y", 2) else { return };
    let a = c.add_pod("a", 0, "a");
    // The poison: a node whose chassis has an IPv6 tunnel address (the tunnel is IPv4).
    let chassis = ChassisAnnotation {
        id: "uuid-poison".into(),
        tunnel_ip: "2001:db8::9".parse().expect("address"),
        encap: Encap::Geneve,
    };
    c.insert(
        Kind::Node,
        json!({"metadata": {"name": "poison", "labels": {"kubernetes.io/hostname": "poison"},
                            "annotations": {CHASSIS: format_chassis(&chassis)}},
               "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.99"}],
                          "conditions": [{"type": "Ready", "status": "True"}]}}),
    );
    for i in 0..2 {
        c.wait_for("the chassis to be left out", Duration::from_secs(30), || {
            sample(&scrape(&c, i), "skein_view_items_skipped").is_some_and(|n| n > 0.0)
        });
    }
    c.wait_for("an Event on the node from each agent", Duration::from_secs(30), || {
        event_reporters(&c, "default", "poison", "NotInstalled").len() == 2
    });
    // Both nodes keep installing views and completing CNI ADD, and forward.
    let b = c.add_pod("b", 1, "b");
    let a2 = c.add_pod("a2", 0, "a");
    for (from, to) in [(&a, &b), (&b, &a2), (&a2, &a)] {
        if let Err(e) = ping(&from.ns, &to.ip, 2, 10) {
            c.fail(&format!("{} → {}: {e}", from.name, to.name));
        }
    }
    for i in 0..2 {
        c.wait_ready(i);
    }
}
