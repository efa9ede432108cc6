//! The node agent and the CNI plugin end to end, in network namespaces: the in-process
//! API fake and master feed real `skein-agent` processes (one per node namespace), pods
//! get their interfaces from the real `skein-cni` invoked as containerd does, and real
//! packets cross the agents' datapaths, the Geneve tunnel and the gateways.
//!
//! They need root. CI runs them as root; without root they fail, unless
//! SKEIN_SKIP_NETNS_TESTS=1, which skips them (and says so).

#[path = "cluster/connections.rs"]
#[allow(dead_code)]
mod connections;
#[path = "cluster/harness.rs"]
#[allow(dead_code)]
mod harness;
#[path = "../../lab/src/hold.rs"]
#[allow(dead_code)]
mod hold;
#[path = "../../datapath/tests/netns/traffic.rs"]
#[allow(dead_code)]
mod traffic;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::time::{Duration, Instant};

use harness::{Cluster, INTERNET, Libcni, exec, ping, try_run, without_colours};
use serde_json::json;
use skein_kube_fake::Kind;
use traffic::{NameServer, TcpSink, TcpSource, fetch_answers, join_within, spawn_in};

fn addr(ip: &str, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip.parse::<Ipv4Addr>().expect("address"), port)
}

/// A server in `ns` answering each connection with the client's address.
fn echo_peer_server(ns: &str, at: SocketAddrV4) -> std::thread::JoinHandle<Result<(), String>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = spawn_in(ns, "peer echo", move || {
        let listener = TcpListener::bind(at).map_err(|e| format!("bind {at}: {e}"))?;
        let _ = tx.send(());
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((mut s, peer)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = writeln!(s, "{}", peer.ip());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    });
    let _ = rx.recv_timeout(Duration::from_secs(10));
    handle
}

fn fetch_one(ns: &str, dst: SocketAddrV4) -> Result<String, String> {
    join_within(fetch_answers(ns, dst, 1), Duration::from_secs(40)).map(|mut v| v.pop().unwrap_or_default())
}

/// A UDP server in `ns` answering each datagram with the sender's address.
fn udp_peer_server(ns: &str, at: SocketAddrV4) -> std::thread::JoinHandle<Result<(), String>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = spawn_in(ns, "udp peer echo", move || {
        let socket = std::net::UdpSocket::bind(at).map_err(|e| format!("bind {at}: {e}"))?;
        let _ = tx.send(());
        socket.set_read_timeout(Some(Duration::from_millis(100))).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut buf = [0u8; 64];
        while Instant::now() < deadline {
            match socket.recv_from(&mut buf) {
                Ok((_, peer)) => {
                    let _ = socket.send_to(peer.ip().to_string().as_bytes(), peer);
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    });
    let _ = rx.recv_timeout(Duration::from_secs(10));
    handle
}

/// Asks `dst` over UDP from `ns` (a few tries, each waiting a second); the answer.
fn udp_ask(ns: &str, dst: SocketAddrV4) -> Result<String, String> {
    let asked = spawn_in(ns, "udp client", move || {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        socket.set_read_timeout(Some(Duration::from_secs(1))).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        let mut last = String::new();
        for _ in 0..10 {
            socket.send_to(b"who am i", dst).map_err(|e| format!("send to {dst}: {e}"))?;
            match socket.recv_from(&mut buf) {
                Ok((n, _)) => return Ok(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(e) => last = e.to_string(),
            }
        }
        Err(format!("no answer from {dst} over UDP: {last}"))
    });
    join_within(asked, Duration::from_secs(30))
}

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

/// The value of the sample `series` (name with labels, as printed) in `metrics`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' '))?.trim().parse().ok())
}

/// The agent's port record files of node `i`.
fn port_records(c: &Cluster, i: usize) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(c.nodes[i].state.join("ports"))
        .map(|entries| entries.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

fn has_link(c: &Cluster, i: usize, name: &str) -> bool {
    exec(&c.nodes[i].ns, &["ip", "-o", "link"]).expect("links").contains(name)
}

#[test]
fn pods_get_their_network_and_reach_pods_services_and_the_outside() {
    let Some(mut c) = Cluster::new("agent_cluster", "a", 2) else { return };

    // The agent installed the plugin and its configuration.
    let conflist = std::fs::read_to_string(c.nodes[0].cni_conf.join("10-skein.conflist"))
        .unwrap_or_else(|e| c.fail(&format!("the conflist is not written: {e}")));
    skein_cni::ConfList::parse(conflist.as_bytes()).expect("the conflist parses");
    assert!(c.nodes[0].cni_bin.join("skein-cni").exists(), "skein-cni installed");

    let p1 = c.add_pod("p1", 0, "client");
    let p2 = c.add_pod("p2", 0, "web");
    let p3 = c.add_pod("p3", 1, "web");

    // p1 has exactly its annotation's address, MAC and routes, and the node's MTU (the
    // annotation leaves it to the node: the uplink's less Geneve's 66 bytes).
    let ann = c.pod_annotation("p1");
    let link = exec(&p1.ns, &["ip", "-o", "link", "show", "eth0"]).expect("link");
    assert!(link.contains(ann["mac_address"].as_str().unwrap()), "MAC of {ann}: {link}");
    assert_eq!(ann["mtu"], 0, "the master leaves the MTU to the nodes: {ann}");
    let uplink: u32 =
        exec(&c.nodes[0].ns, &["cat", "/sys/class/net/eth0/mtu"]).expect("uplink MTU").trim().parse().unwrap();
    assert!(link.contains(&format!("mtu {} ", uplink - 66)), "the node's MTU ({uplink} − 66): {link}");
    let addrs = exec(&p1.ns, &["ip", "-o", "-4", "addr", "show", "eth0"]).expect("addresses");
    assert!(addrs.contains(ann["ip_addresses"][0].as_str().unwrap()), "{addrs}");
    let gateway = ann["gateway_ips"][0].as_str().unwrap().to_owned();
    let routes = exec(&p1.ns, &["ip", "-4", "route", "show"]).expect("routes");
    assert!(routes.contains(&format!("default via {gateway} dev eth0")), "{routes}");
    assert_eq!(p1.result["ips"][0]["gateway"], json!(gateway));

    // The first packet passes: ADD answered only once the flows were installed.
    if let Err(e) = ping(&p1.ns, &gateway, 1, 5) {
        c.fail(&format!("p1 → its gateway: {e}"));
    }
    if let Err(e) = ping(&p1.ns, &p2.ip, 3, 10) {
        c.fail(&format!("p1 → p2 (same node): {e}"));
    }
    if let Err(e) = ping(&p1.ns, &p3.ip, 3, 10) {
        c.fail(&format!("p1 → p3 (other node, Geneve): {e}"));
    }
    if let Err(e) = ping(&p3.ns, &p1.ip, 3, 10) {
        c.fail(&format!("p3 → p1 (other node, Geneve): {e}"));
    }

    // A ClusterIP Service with a backend on each node, and a NodePort on it.
    let _s2 = NameServer::start(&p2.ns, addr("0.0.0.0", 8080), "p2").expect("server p2");
    let _s3 = NameServer::start(&p3.ns, addr("0.0.0.0", 8080), "p3").expect("server p3");
    c.insert(
        Kind::Service,
        json!({"metadata": {"name": "web", "namespace": "default"},
               "spec": {"type": "NodePort", "clusterIP": "10.96.0.50", "selector": {"app": "web"},
                        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080, "protocol": "TCP"}]}}),
    );
    c.insert(
        Kind::EndpointSlice,
        json!({"metadata": {"name": "web-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
               "addressType": "IPv4",
               "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
               "endpoints": [
                   {"addresses": [p2.ip], "conditions": {"ready": true}, "nodeName": "node1"},
                   {"addresses": [p3.ip], "conditions": {"ready": true}, "nodeName": "node2"}]}),
    );
    let vip = addr("10.96.0.50", 80);
    c.wait_for("the Service to answer", Duration::from_secs(30), || fetch_one(&p1.ns, vip).is_ok());
    let answers = join_within(fetch_answers(&p1.ns, vip, 40), Duration::from_secs(120))
        .unwrap_or_else(|e| c.fail(&format!("p1 → 10.96.0.50:80: {e}")));
    let seen: BTreeSet<&str> = answers.iter().map(String::as_str).collect();
    assert_eq!(seen, BTreeSet::from(["p2", "p3"]), "every backend answers over 40 connections: {answers:?}");

    // NodePort from the outside, on both nodes, reaching the local and the remote backend
    // (DNAT, forced SNAT to the gateway's join address, and for the remote one the tunnel).
    for n in 0..2 {
        let at = addr(&c.nodes[n].ip, 30080);
        let answers = join_within(fetch_answers(&c.outside, at, 20), Duration::from_secs(120))
            .unwrap_or_else(|e| c.fail(&format!("outside → {at}: {e}")));
        let seen: BTreeSet<&str> = answers.iter().map(String::as_str).collect();
        assert_eq!(seen, BTreeSet::from(["p2", "p3"]), "NodePort on {at} over 20 connections: {answers:?}");
    }

    // The outside sees a pod with its node's IP.
    let _echo = echo_peer_server(&c.outside, addr(INTERNET, 7000));
    let seen_as = fetch_one(&p1.ns, addr(INTERNET, 7000)).unwrap_or_else(|e| c.fail(&format!("p1 → outside: {e}")));
    assert_eq!(seen_as, c.nodes[0].ip, "the outside sees p1 as its node");
    let seen_as = fetch_one(&p3.ns, addr(INTERNET, 7000)).unwrap_or_else(|e| c.fail(&format!("p3 → outside: {e}")));
    assert_eq!(seen_as, c.nodes[1].ip, "the outside sees p3 as its node");

    // The host reaches pods and Services through the management port.
    if let Err(e) = ping(&c.nodes[0].ns, &p2.ip, 2, 10) {
        c.fail(&format!("node1 host → p2: {e}"));
    }
    let from_host = join_within(fetch_answers(&c.nodes[0].ns, vip, 20), Duration::from_secs(120))
        .unwrap_or_else(|e| c.fail(&format!("node1 host → the VIP: {e}")));
    let seen: BTreeSet<&str> = from_host.iter().map(String::as_str).collect();
    assert_eq!(seen, BTreeSet::from(["p2", "p3"]), "the host reaches both backends of the VIP: {from_host:?}");

    // `skein-agent trace` shows the walk of a packet from p1 to the VIP.
    let trace = try_run(&[
        harness::AGENT,
        "trace",
        "--state-dir",
        c.nodes[0].state.to_str().unwrap(),
        &format!(
            "in_port=100,dl_src={},dl_dst=0a:58:0a:f4:00:01,tcp,nw_src={},nw_dst=10.96.0.50,tp_src=40000,tp_dst=80,tcp_flags=0x2",
            ann["mac_address"].as_str().unwrap_or_default(),
            p1.ip
        ),
    ])
    .unwrap_or_else(|e| c.fail(&format!("trace: {e}")));
    assert!(trace.contains("ct_lb") || trace.contains("ct("), "the trace reaches the load balancer:\n{trace}");

    // /metrics on the agent.
    let metrics = exec(
        &c.nodes[0].ns,
        &[
            "bash",
            "-c",
            "exec 3<>/dev/tcp/127.0.0.1/9476; printf 'GET /metrics HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n' >&3; cat <&3",
        ],
    )
    .unwrap_or_default();
    for name in [
        "cni_request_duration_seconds_bucket",
        "skein_flows_installed",
        "skein_installed_version",
        "skein_conntrack_entries",
        "skein_cache_hit_ratio{cache=\"megaflow\"}",
        "skein_datapath_upcalls_total",
    ] {
        assert!(metrics.contains(name), "{name} in /metrics:\n{metrics}");
    }
    // Read when scraped: what is installed now, not a sample from before.
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} has no value in /metrics:\n{metrics}"))
    };
    assert!(value("skein_installed_version") >= 1.0, "{metrics}");
    assert!(value("skein_pod_ports") >= 1.0, "{metrics}");
    assert!(value("skein_flows_installed") >= 100.0, "{metrics}");
    assert!(value("skein_datapath_packets_total") >= 1.0, "{metrics}");
    assert!(
        metrics.contains("command=\"ADD\",result=\"ok\"") || metrics.contains("result=\"ok\",command=\"ADD\""),
        "{metrics}"
    );
    drop(c);
}

#[test]
fn cni_edge_cases_against_the_real_agent() {
    let Some(mut c) = Cluster::new("agent_cni_edges", "b", 1) else { return };
    // A runtime that negotiated CNI 1.0.0 (Debian's containerd with its portmap) gets a
    // 1.0.0 result.
    let p1 = c.add_pod_in_version("e1", 0, "x", "1.0.0");
    assert_eq!(p1.result["cniVersion"], json!("1.0.0"), "answered in kind: {}", p1.result);
    let netns = format!("/run/netns/{}", p1.ns);
    let args = Cluster::cni_args("e1", &p1.container, "");

    // CHECK after ADD, with the ADD result as prevResult.
    let mut conf = c.plugin_conf(0, "1.0.0");
    conf["prevResult"] = p1.result.clone();
    let out = c.cni_raw(0, "CHECK", &p1.container, &netns, "eth0", &args, Some(&conf.to_string()));
    assert_eq!(out.code, 0, "CHECK after ADD: {out:?}");

    // Chained with the reference portmap plugin (Debian's speaks CNI up to 1.0.0, so the
    // chain runs at 1.0.0 as a runtime negotiates it).
    let portmap = std::path::Path::new("/usr/lib/cni/portmap");
    assert!(portmap.exists(), "the reference portmap plugin is installed (containernetworking-plugins)");
    let pm_conf = json!({"cniVersion": "1.0.0", "name": "skein", "type": "portmap", "capabilities": {"portMappings": true},
                          "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}]},
                          "prevResult": p1.result});
    let out = c.exec_plugin(0, portmap, "ADD", &p1.container, &netns, "eth0", &args, &pm_conf.to_string());
    assert_eq!(out.code, 0, "portmap after skein-cni: {out:?}");
    assert_eq!(out.json()["ips"], p1.result["ips"], "portmap passes Skein's result on");
    let nat = exec(&c.nodes[0].ns, &["iptables", "-t", "nat", "-S"]).expect("iptables");
    assert!(nat.contains("18080"), "portmap's hostPort rule:\n{nat}");
    let out = c.exec_plugin(0, portmap, "DEL", &p1.container, &netns, "eth0", &args, &pm_conf.to_string());
    assert_eq!(out.code, 0, "portmap DEL: {out:?}");

    // DEL twice, DEL without ADD.
    let out = c.cni_raw(0, "DEL", &p1.container, &netns, "eth0", &args, None);
    assert_eq!(out.code, 0, "DEL: {out:?}");
    let links = exec(&c.nodes[0].ns, &["ip", "-o", "link"]).expect("links");
    assert!(!links.contains(&skein_cni::host::host_ifname(&p1.container, "eth0")), "host end removed:\n{links}");
    let out = c.cni_raw(0, "DEL", &p1.container, &netns, "eth0", &args, None);
    assert_eq!(out.code, 0, "DEL again: {out:?}");
    let out = c.cni_raw(0, "DEL", "never-added", "", "eth0", "", None);
    assert_eq!(out.code, 0, "DEL without ADD: {out:?}");

    // GC removes an attachment the runtime no longer lists.
    let p2 = c.add_pod("e2", 0, "x");
    let p3 = c.add_pod("e3", 0, "x");
    let mut gc = c.plugin_conf(0, "1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": p2.container, "ifname": "eth0"}]);
    let out = c.cni_raw(0, "GC", "", "", "", "", Some(&gc.to_string()));
    assert_eq!(out.code, 0, "GC: {out:?}");
    let links = exec(&c.nodes[0].ns, &["ip", "-o", "link"]).expect("links");
    assert!(links.contains(&skein_cni::host::host_ifname(&p2.container, "eth0")), "valid attachment kept");
    assert!(!links.contains(&skein_cni::host::host_ifname(&p3.container, "eth0")), "leaked attachment removed");
    if let Err(e) = ping(&p2.ns, p2.result["ips"][0]["gateway"].as_str().unwrap(), 1, 5) {
        c.fail(&format!("the kept pod still forwards after GC: {e}"));
    }

    // Malformed input, unknown version, missing netns.
    let out = c.cni_raw(0, "ADD", "c-bad", &netns, "eth0", &args, Some("{not json"));
    assert_eq!(out.error_code(), Some(6), "malformed JSON: {out:?}");
    let bad_version = c.plugin_conf(0, "9.9.9").to_string();
    let out = c.cni_raw(0, "ADD", "c-bad", &format!("/run/netns/{}", p2.ns), "eth1", &args, Some(&bad_version));
    assert_eq!(out.error_code(), Some(1), "unknown cniVersion: {out:?}");
    let out = c.cni_raw(0, "ADD", "c-bad", "/run/netns/does-not-exist", "eth0", &args, None);
    assert_eq!(out.error_code(), Some(4), "missing netns: {out:?}");

    // STATUS while the agent is down; then up again, and the pod kept forwarding state.
    c.stop_agent(0);
    let out = c.cni_raw(0, "STATUS", "", "", "", "", None);
    assert_eq!(out.error_code(), Some(50), "STATUS with the agent down: {out:?}");
    c.start_agent(0);
    c.wait_ready(0);
    if let Err(e) = ping(&p2.ns, p2.result["ips"][0]["gateway"].as_str().unwrap(), 1, 10) {
        c.fail(&format!("the pod forwards after the agent restarted: {e}"));
    }
}

#[test]
fn an_established_tcp_stream_survives_an_agent_restart() {
    // Every kind of connection through node1 (pod ↔ pod on the node and across the tunnel,
    // ClusterIP, NodePort from outside, egress SNAT; TCP and UDP) and a bulk TCP stream,
    // across node1's agent stopped (SIGTERM), crashed (SIGKILL), and crashed with the master
    // down: the datapath process keeps forwarding with its conntrack and NAT state, so no
    // connection is lost. The stall is printed as a figure, not asserted.
    let Some(mut c) = Cluster::new("agent_restart", "c", 2) else { return };
    let workload = connections::every_kind(&mut c, "rs", "10.96.0.77", 30777, 1);
    let a = c.add_pod("r1", 0, "x");
    let b = c.add_pod("r2", 0, "x");
    let sink = TcpSink::start(&b.ns, addr(&b.ip, 5201)).expect("sink");
    let source = TcpSource::start(&a.ns, addr(&b.ip, 5201), None);
    c.wait_for("the stream to flow", Duration::from_secs(20), || sink.received() > 1 << 20);
    // Sample the bulk stream's progress every 5 ms; the longest pause is its stall.
    let mut last = (Instant::now(), sink.received());
    let mut longest = Duration::ZERO;
    let mut sample_until = |until: Instant, longest: &mut Duration| {
        while Instant::now() < until {
            let now = sink.received();
            if now != last.1 {
                *longest = (*longest).max(last.0.elapsed());
                last = (Instant::now(), now);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    sample_until(Instant::now() + Duration::from_millis(500), &mut longest);
    let before = longest;
    let mut windows = Vec::new();
    for (how, master_down) in [("stop", false), ("crash", false), ("crash, master down", true)] {
        if master_down {
            c.stop_master();
        }
        let started = Instant::now();
        if how == "stop" {
            c.stop_agent(0);
        } else {
            c.kill_agent(0);
        }
        c.start_agent(0);
        c.wait_ready(0);
        sample_until(Instant::now() + Duration::from_secs(2), &mut longest);
        windows.push((how, started, Instant::now()));
    }
    let stalled = sink.received();
    source.stop();
    let sent =
        source.finish(Duration::from_secs(30)).unwrap_or_else(|e| c.fail(&format!("the source failed (reset?): {e}")));
    let received = sink.finish(Duration::from_secs(30)).unwrap_or_else(|e| c.fail(&format!("the sink failed: {e}")));
    assert_eq!(sent.bytes, received.bytes, "every byte arrived, in order");
    assert!(stalled > 0);
    let reports = workload.finish();
    let lost: Vec<String> =
        reports.iter().filter_map(|r| r.lost.as_ref().map(|why| format!("{}: {why}", r.kind))).collect();
    for (how, from, to) in &windows {
        let stall = reports.iter().map(|r| r.stall_within(*from, *to)).max().unwrap_or_default();
        eprintln!("agent restart ({how}): longest pause of any connection {} ms", stall.as_millis());
    }
    let unanswered: u64 = reports.iter().filter(|r| r.kind.starts_with("udp")).map(|r| r.sent - r.answered).sum();
    eprintln!(
        "agent_restart_tcp_stall_ms={} (longest pause before the restart: {} ms) connections={} connections_lost={} udp_unanswered={unanswered}",
        longest.as_millis(),
        before.as_millis(),
        reports.len(),
        lost.len()
    );
    if !lost.is_empty() {
        c.fail(&format!("connections lost across the agent's restarts: {lost:#?}"));
    }
    let kinds: BTreeSet<&str> = reports.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(kinds, connections::KINDS.into_iter().collect(), "every kind was exercised");
    // Nothing was torn down: the pods' interfaces are the same.
    let links = exec(&c.nodes[0].ns, &["ip", "-o", "link"]).expect("links");
    assert!(links.contains(&skein_cni::host::host_ifname(&a.container, "eth0")));
}

#[test]
fn a_new_datapath_process_gets_the_ports_and_flows_again() {
    // The datapath process replaced under a running agent (a rolling update of its
    // DaemonSet: SIGTERM): the old process hands its conntrack over in a file, the new one
    // takes it in before its first packet, and the agent, seeing its watch end, gives the
    // new process the node's ports, the pods' ports and the installed view. Every
    // connection keeps its NAT binding and state; what it costs is the pause (a figure,
    // printed).
    let Some(mut c) = Cluster::new("datapath_restart", "h", 2) else { return };
    let workload = connections::every_kind(&mut c, "dr", "10.96.0.78", 30778, 1);
    let a = c.add_pod("d1", 0, "x");
    let b = c.add_pod("d2", 0, "x");
    std::thread::sleep(Duration::from_millis(300));
    let stopped = Instant::now();
    c.stop_datapath(0);
    c.start_datapath(0);
    c.wait_for("the agent to set up the new datapath process", Duration::from_secs(30), || {
        c.agent_log(0).contains("the new datapath process has the node's ports and flows")
    });
    std::thread::sleep(Duration::from_secs(2));
    let window = (stopped, Instant::now());
    if let Err(e) = ping(&a.ns, &b.ip, 2, 10) {
        c.fail(&format!("d1 → d2 through the new datapath process: {e}"));
    }
    let log = c.datapath_log(0);
    let taken = log
        .lines()
        .find(|l| l.contains("took over the previous switch's conntrack"))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("connections=")))
        .and_then(|n| n.parse::<usize>().ok());
    // At least the five NATed connections (ClusterIP TCP and UDP, NodePort, SNAT TCP and
    // UDP) are tracked on node 1.
    if !log.contains("conntrack handed over") || taken.is_none_or(|n| n < 5) {
        c.fail(&format!(
            "the old datapath process hands conntrack over and the new one takes the NATed connections in: {log}"
        ));
    }
    let stats = c.stats(0);
    for port in ["port_1_rx", "port_2_rx", "port_3_rx", "port_100_rx"] {
        assert!(stats.contains_key(port), "{port}: the node's and pods' ports are re-added: {stats:?}");
    }
    let reports = workload.finish();
    let pause = reports.iter().map(|r| r.stall_within(window.0, window.1)).max().unwrap_or_default();
    let lost: Vec<String> =
        reports.iter().filter_map(|r| r.lost.as_ref().map(|why| format!("{}: {why}", r.kind))).collect();
    eprintln!(
        "datapath_restart_pause_ms={} connections={} connections_lost={}",
        pause.as_millis(),
        reports.len(),
        lost.len()
    );
    if !lost.is_empty() {
        c.fail(&format!("connections lost across the datapath's restart: {lost:#?}"));
    }
}

/// The versions every plugin of the chain answers VERSION with, as the agent computes them.
fn chain_versions(c: &Cluster, i: usize) -> Vec<String> {
    let mut common: Vec<String> = ["0.4.0", "1.0.0", "1.1.0"].map(String::from).to_vec();
    for plugin in ["portmap", "bandwidth"] {
        let supported = skein_agent::cniinstall::plugin_versions(&c.nodes[i].cni_bin.join(plugin))
            .unwrap_or_else(|e| c.fail(&format!("{plugin} VERSION: {e}")));
        common.retain(|v| supported.contains(v));
    }
    common
}

#[test]
fn host_ports_answer_from_outside_and_from_pods_on_other_nodes() {
    let Some(mut c) = Cluster::new("agent_host_ports", "d", 2) else { return };

    // The conflist every runtime reads: `cniVersion` what libcni 1.1 knows, `cniVersions`
    // what every chained plugin speaks (Debian's 1.1.1 plugins: up to 1.0.0).
    let list = c.conflist(0);
    assert_eq!(list.cni_version, "1.0.0", "containerd 1.6 hands cniVersion to every plugin");
    assert_eq!(list.cni_versions, chain_versions(&c, 0), "cniVersions = what skein-cni, portmap and bandwidth speak");
    let types: Vec<&str> = list.plugins.iter().filter_map(|p| p["type"].as_str()).collect();
    assert_eq!(types, ["skein-cni", "portmap", "bandwidth"]);

    // A pod with a TCP and a UDP hostPort on node1, started the way containerd 1.6 does.
    let spec = json!({"containers": [{"name": "c", "image": "x", "ports": [
        {"containerPort": 8080, "hostPort": 18080, "protocol": "TCP"},
        {"containerPort": 5353, "hostPort": 18053, "protocol": "UDP"}]}]});
    let uid = c.insert_pod("hp", 0, "hp", spec);
    let (hp_ns, hp_container) = c.sandbox("hp");
    let hp_netns = format!("/run/netns/{hp_ns}");
    let hp_args = Cluster::cni_args("hp", &hp_container, &uid);
    let mappings = json!({"portMappings": [
        {"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"},
        {"hostPort": 18053, "containerPort": 5353, "protocol": "udp"}]});
    let (version, outs) = c.run_chain(0, Libcni::V1_1, "ADD", &hp_container, &hp_netns, &hp_args, &mappings, None);
    assert_eq!(version, "1.0.0");
    assert_eq!(outs.len(), 3, "{outs:?}");
    for (plugin, out) in &outs {
        if out.code != 0 {
            c.fail(&format!("{plugin} ADD (libcni 1.1, {version}): {out:?}"));
        }
    }
    let hp_result = outs[2].1.json();
    assert_eq!(hp_result["cniVersion"], json!("1.0.0"), "a result containerd 1.6 accepts: {hp_result}");
    let sandbox_if = hp_result["interfaces"]
        .as_array()
        .and_then(|ifs| ifs.iter().position(|i| i["name"] == "eth0" && i["sandbox"] == json!(hp_netns)))
        .unwrap_or_else(|| c.fail(&format!("no eth0 with its sandbox in {hp_result}")));
    assert_eq!(hp_result["ips"][0]["interface"], json!(sandbox_if), "{hp_result}");
    let gateway: Ipv4Addr = hp_result["ips"][0]["gateway"].as_str().and_then(|g| g.parse().ok()).expect("gateway");
    let management = Ipv4Addr::from(u32::from(gateway) + 1);

    // A client pod on node2, started the way libcni ≥ 1.2 runtimes do.
    let uid = c.insert_pod("hc", 1, "hc", json!({"containers": [{"name": "c", "image": "x"}]}));
    let (hc_ns, hc_container) = c.sandbox("hc");
    let hc_args = Cluster::cni_args("hc", &hc_container, &uid);
    let (version, outs) =
        c.run_chain(1, Libcni::V1_2, "ADD", &hc_container, &format!("/run/netns/{hc_ns}"), &hc_args, &json!({}), None);
    assert_eq!(Some(version.as_str()), chain_versions(&c, 1).last().map(String::as_str));
    for (plugin, out) in &outs {
        if out.code != 0 {
            c.fail(&format!("{plugin} ADD (libcni 1.2, {version}): {out:?}"));
        }
    }

    // The pod serves; each server answers with the address it sees.
    let _tcp = echo_peer_server(&hp_ns, addr("0.0.0.0", 8080));
    let _udp = udp_peer_server(&hp_ns, addr("0.0.0.0", 5353));
    let node1 = c.nodes[0].ip.clone();
    for (from, who) in [(c.outside.clone(), "the outside"), (hc_ns.clone(), "a pod on node2")] {
        let seen = fetch_one(&from, addr(&node1, 18080))
            .unwrap_or_else(|e| c.fail(&format!("{who} → {node1}:18080/tcp (hostPort): {e}")));
        assert_eq!(seen, management.to_string(), "{who} over TCP: the pod sees node1's management address");
        let seen = udp_ask(&from, addr(&node1, 18053))
            .unwrap_or_else(|e| c.fail(&format!("{who} → {node1}:18053/udp (hostPort): {e}")));
        assert_eq!(seen, management.to_string(), "{who} over UDP: the pod sees node1's management address");
    }

    // DEL through the chain in reverse, with the cached result: the hostPort and the pod's
    // port go.
    let (_, outs) =
        c.run_chain(0, Libcni::V1_1, "DEL", &hp_container, &hp_netns, &hp_args, &mappings, Some(&hp_result));
    for (plugin, out) in &outs {
        assert_eq!(out.code, 0, "{plugin} DEL: {out:?}");
    }
    let nat = exec(&c.nodes[0].ns, &["iptables", "-t", "nat", "-S"]).expect("iptables");
    assert!(!nat.contains("18080"), "portmap's rules are gone:\n{nat}");
    assert!(!has_link(&c, 0, &skein_cni::host::host_ifname(&hp_container, "eth0")), "the veth is gone");
    assert!(port_records(&c, 0).is_empty(), "no port record left: {:?}", port_records(&c, 0));
}

#[test]
fn failed_adds_leave_nothing_behind() {
    let Some(mut c) = Cluster::new("agent_failed_adds", "e", 1) else { return };
    c.stop_agent(0);
    let master = c.master_url.clone();
    c.start_agent_with(0, &master, &["--add-timeout", "4s"]);
    c.wait_ready(0);
    // The agent's account of each rollback: one log line per plugin that left.
    let rollbacks = |c: &Cluster| -> Vec<String> {
        c.agent_log(0).lines().filter(|l| l.contains("left before the ADD's answer")).map(without_colours).collect()
    };
    let nothing_left = |c: &Cluster, container: &str, what: &str| {
        let host = skein_cni::host::host_ifname(container, "eth0");
        c.wait_for(&format!("{what}: the veth and the port record to go"), Duration::from_secs(20), || {
            !has_link(c, 0, &host) && port_records(c, 0).is_empty()
        });
        let metrics = scrape(c, 0);
        assert_eq!(sample(&metrics, "skein_pod_ports"), Some(0.0), "{what}: no datapath port:\n{metrics}");
    };

    // 1. A chained plugin fails after skein-cni succeeded (portmap without iptables on its
    // PATH); the runtime then runs DEL through the chain, and everything goes.
    let uid = c.insert_pod("f1", 0, "x", json!({"containers": [{"name": "c", "image": "x"}]}));
    let (ns, container) = c.sandbox("f1");
    let netns = format!("/run/netns/{ns}");
    let args = Cluster::cni_args("f1", &container, &uid);
    let list = c.conflist(0);
    let version = list.cni_version.clone();
    let mappings = json!({"portMappings": [{"hostPort": 18081, "containerPort": 8080, "protocol": "tcp"}]});
    let skein_conf = list.plugin_config(0, &version, mappings.as_object(), None).expect("skein-cni's config");
    let out = c.exec_plugin(
        0,
        &c.nodes[0].cni_bin.join("skein-cni"),
        "ADD",
        &container,
        &netns,
        "eth0",
        &args,
        &skein_conf.to_string(),
    );
    assert_eq!(out.code, 0, "skein-cni ADD: {out:?}");
    assert_eq!(port_records(&c, 0).len(), 1, "bound");
    let portmap_conf =
        list.plugin_config(1, &version, mappings.as_object(), Some(&out.json())).expect("portmap's config");
    let failed = c
        .spawn_plugin_with_path(
            0,
            &c.nodes[0].cni_bin.join("portmap"),
            "ADD",
            &container,
            &netns,
            "eth0",
            &args,
            &portmap_conf.to_string(),
            Some("/nonexistent"),
        )
        .wait_with_output()
        .expect("portmap");
    assert!(!failed.status.success(), "portmap without iptables fails: {}", String::from_utf8_lossy(&failed.stdout));
    let (_, outs) = c.run_chain(0, Libcni::V1_1, "DEL", &container, &netns, &args, &mappings, None);
    for (plugin, out) in &outs {
        assert_eq!(out.code, 0, "{plugin} DEL after the failed ADD: {out:?}");
    }
    nothing_left(&c, &container, "a chained plugin failed");

    // A pod the master gives no port (host network) but whose annotation is there: the
    // agent binds its veth and then waits for flows that never come.
    let annotation = json!({"default": {"ip_addresses": ["10.244.0.200/24"], "mac_address": "0a:58:0a:f4:00:c8",
        "gateway_ips": ["10.244.0.1"], "routes": [], "mtu": 1400}});
    let created = c
        .api
        .insert(
            Kind::Pod,
            json!({"metadata": {"name": "f2", "namespace": "default",
                                "annotations": {"skein.dev/pod-networks": annotation.to_string()}},
                   "spec": {"nodeName": c.nodes[0].name, "hostNetwork": true,
                            "containers": [{"name": "c", "image": "x"}]}}),
        )
        .expect("pod f2");
    let uid = created["metadata"]["uid"].as_str().unwrap_or_default().to_owned();

    // 2. The agent gives up (its ADD timeout, 4 s): error 11, its binding undone, and the
    // plugin removes the veth.
    let (ns, container) = c.sandbox("f2");
    let netns = format!("/run/netns/{ns}");
    let args = Cluster::cni_args("f2", &container, &uid);
    let out = c.cni_raw(0, "ADD", &container, &netns, "eth0", &args, None);
    assert_eq!(out.error_code(), Some(11), "the agent gives up: {out:?}");
    nothing_left(&c, &container, "the agent gave up");

    // 3. The plugin gives up first (timeoutSeconds 1): it removes the veth, and the agent,
    // seeing it leave, undoes the binding.
    let mut conf = c.plugin_conf(0, "1.0.0");
    conf["timeoutSeconds"] = json!(1);
    let skein = c.cni.clone();
    let out = c.exec_plugin(0, &skein, "ADD", &container, &netns, "eth0", &args, &conf.to_string());
    assert_eq!(out.error_code(), Some(11), "the plugin times out: {out:?}");
    nothing_left(&c, &container, "the plugin timed out");
    c.wait_for("the agent to roll back", Duration::from_secs(10), || rollbacks(&c).len() == 1);
    assert!(rollbacks(&c)[0].contains("unbound=true"), "{:?}", rollbacks(&c));

    // 4. The plugin is killed while the agent holds the binding: the agent undoes it and
    // deletes the veth the plugin left.
    let conf = c.plugin_conf(0, "1.0.0");
    let host = skein_cni::host::host_ifname(&container, "eth0");
    let mut child = c.spawn_plugin(0, &skein, "ADD", &container, &netns, "eth0", &args, &conf.to_string());
    c.wait_for("the agent to bind f2", Duration::from_secs(10), || {
        port_records(&c, 0).contains(&format!("{host}.json"))
    });
    child.kill().expect("kill the plugin");
    let _ = child.wait();
    nothing_left(&c, &container, "the plugin was killed while bound");
    c.wait_for("the agent to roll back", Duration::from_secs(10), || rollbacks(&c).len() == 2);
    let line = &rollbacks(&c)[1];
    assert!(line.contains("unbound=true") && line.contains("veth_deleted=true"), "the agent removed the veth: {line}");

    // 5. The plugin is killed while the agent still waits for the pod (not in the API):
    // the veth goes too.
    let (ns, container) = c.sandbox("f3");
    let args = Cluster::cni_args("f3", &container, "");
    let waits = |c: &Cluster| c.agent_log(0).matches("waiting for the pod's network").count();
    let before = waits(&c);
    let mut child =
        c.spawn_plugin(0, &skein, "ADD", &container, &format!("/run/netns/{ns}"), "eth0", &args, &conf.to_string());
    c.wait_for("the agent to wait for f3", Duration::from_secs(10), || waits(&c) > before);
    child.kill().expect("kill the plugin");
    let _ = child.wait();
    nothing_left(&c, &container, "the plugin was killed before the pod was known");
    c.wait_for("the agent to roll back", Duration::from_secs(10), || rollbacks(&c).len() == 3);
    let line = &rollbacks(&c)[2];
    assert!(line.contains("unbound=false") && line.contains("veth_deleted=true"), "the agent removed the veth: {line}");

    // Nothing else broke: a pod still starts and forwards.
    let p = c.add_pod("f4", 0, "x");
    if let Err(e) = ping(&p.ns, p.result["ips"][0]["gateway"].as_str().unwrap_or_default(), 1, 5) {
        c.fail(&format!("a pod after the failures: {e}"));
    }
}

#[test]
fn stale_ports_are_reclaimed() {
    let Some(mut c) = Cluster::new("agent_stale_ports", "f", 1) else { return };
    let reclaimed = |c: &Cluster, reason: &str| {
        sample(&scrape(c, 0), &format!("skein_cni_stale_ports_reclaimed_total{{reason=\"{reason}\"}}")).unwrap_or(0.0)
    };

    // A veth removed behind the agent's back (a runtime whose DEL never reached skein-cni),
    // then the runtime's retry of the same sandbox: the new ADD finds the record stale,
    // reclaims it and binds the new veth.
    let p = c.add_pod("s1", 0, "x");
    let host = skein_cni::host::host_ifname(&p.container, "eth0");
    exec(&c.nodes[0].ns, &["ip", "link", "del", &host]).expect("delete the veth");
    let netns = format!("/run/netns/{}", p.ns);
    let args = Cluster::cni_args("s1", &p.container, "");
    let out = c.cni_raw(0, "ADD", &p.container, &netns, "eth0", &args, None);
    assert_eq!(out.code, 0, "ADD again: {out:?}");
    assert_eq!(reclaimed(&c, "veth_gone"), 1.0, "{}", scrape(&c, 0));
    if let Err(e) = ping(&p.ns, p.result["ips"][0]["gateway"].as_str().unwrap_or_default(), 1, 5) {
        c.fail(&format!("the pod forwards on its new veth: {e}"));
    }

    // Periodically: a sandbox namespace removed without DEL.
    c.stop_agent(0);
    let master = c.master_url.clone();
    c.start_agent_with(0, &master, &["--stale-port-interval", "1s"]);
    c.wait_ready(0);
    let q = c.add_pod("s2", 0, "x");
    let q_host = skein_cni::host::host_ifname(&q.container, "eth0");
    assert!(port_records(&c, 0).contains(&format!("{q_host}.json")));
    try_run(&["ip", "netns", "del", &q.ns]).expect("delete the sandbox");
    c.wait_for("the periodic check to reclaim s2", Duration::from_secs(20), || {
        !port_records(&c, 0).contains(&format!("{q_host}.json"))
    });
    assert_eq!(reclaimed(&c, "netns_gone"), 1.0, "{}", scrape(&c, 0));
    // s1, alive, is kept.
    assert!(port_records(&c, 0).contains(&format!("{host}.json")), "{:?}", port_records(&c, 0));

    // At start: a veth removed while the agent was down.
    c.stop_agent(0);
    exec(&c.nodes[0].ns, &["ip", "link", "del", &host]).expect("delete s1's veth");
    c.start_agent(0);
    c.wait_ready(0);
    assert!(port_records(&c, 0).is_empty(), "{:?}", port_records(&c, 0));
    assert_eq!(reclaimed(&c, "veth_gone"), 1.0, "counted since this start:\n{}", scrape(&c, 0));
}

#[test]
fn the_node_is_network_ready_only_when_it_can_network() {
    let Some(mut c) = Cluster::new("agent_readiness", "g", 1) else { return };
    let conflist = c.nodes[0].cni_conf.join("10-skein.conflist");
    let status = |c: &Cluster| c.cni_raw(0, "STATUS", "", "", "", "", None);

    // A fresh node whose agent cannot reach the master: the CNI server answers, but not
    // ready, and there is no conflist (the runtime does not call it network-ready).
    c.stop_agent(0);
    std::fs::remove_dir_all(&c.nodes[0].state).expect("fresh state");
    std::fs::remove_file(&conflist).expect("no conflist");
    c.start_agent_with(0, "http://127.0.0.1:9", &[]);
    c.wait_for("the CNI server to answer STATUS", Duration::from_secs(30), || status(&c).stdout.contains("not ready"));
    let out = status(&c);
    assert_eq!(out.error_code(), Some(50), "{out:?}");
    assert!(out.stdout.contains("no view from the master yet"), "{out:?}");
    assert!(!conflist.exists(), "no conflist before a view is installed");

    // The master's first view: the conflist appears, STATUS is ready, pods start.
    c.stop_agent(0);
    c.start_agent(0);
    c.wait_for("the conflist", Duration::from_secs(30), || conflist.exists());
    c.wait_ready(0);
    let p = c.add_pod("r1", 0, "x");

    // The agent stops: the conflist stays, ADD answers "try again" and leaves nothing.
    c.stop_agent(0);
    assert!(conflist.exists(), "the conflist stays while the agent restarts");
    let (ns, container) = c.sandbox("r2");
    let uid = c.insert_pod("r2", 0, "x", json!({"containers": [{"name": "c", "image": "x"}]}));
    let out = c.cni_raw(
        0,
        "ADD",
        &container,
        &format!("/run/netns/{ns}"),
        "eth0",
        &Cluster::cni_args("r2", &container, &uid),
        None,
    );
    assert_eq!(out.error_code(), Some(11), "ADD with the agent down: {out:?}");
    assert!(!has_link(&c, 0, &skein_cni::host::host_ifname(&container, "eth0")));

    // Back with the master gone: the previous run's view is installed, STATUS is ready,
    // and the pod forwards.
    c.stop_master();
    c.start_agent_with(0, "http://127.0.0.1:9", &[]);
    c.wait_ready(0);
    assert!(c.agent_log(0).contains("the previous run's view installed"), "restored from the state dir");
    if let Err(e) = ping(&p.ns, p.result["ips"][0]["gateway"].as_str().unwrap_or_default(), 1, 10) {
        c.fail(&format!("the pod forwards with the restored view: {e}"));
    }
    let out = status(&c);
    assert_eq!(out.code, 0, "ready without the master: {out:?}");
}

/// A TCP connection from `ns` to `dst` that answers within `within`: the server's line.
fn reach(ns: &str, dst: SocketAddrV4, within: Duration) -> Result<String, String> {
    let handle = spawn_in(ns, "probe", move || {
        let mut s =
            std::net::TcpStream::connect_timeout(&dst.into(), within).map_err(|e| format!("connect {dst}: {e}"))?;
        s.set_read_timeout(Some(within)).map_err(|e| e.to_string())?;
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut s, &mut answer).map_err(|e| format!("read {dst}: {e}"))?;
        Ok(answer.trim().to_owned())
    });
    join_within(handle, within * 2)
}

/// An established TCP connection from `ns` to an echo server at `dst`: each line sent
/// on the returned channel is written, and whether its echo came back is answered.
fn echo_session(
    server_ns: &str,
    client_ns: &str,
    dst: SocketAddrV4,
) -> (std::sync::mpsc::Sender<String>, std::sync::mpsc::Receiver<bool>) {
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let _server = spawn_in(server_ns, "echo server", move || {
        let listener = TcpListener::bind(dst).map_err(|e| format!("bind {dst}: {e}"))?;
        let _ = bound_tx.send(());
        let (s, _) = listener.accept().map_err(|e| e.to_string())?;
        let mut reader = std::io::BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
        let mut writer = s;
        let mut line = String::new();
        while std::io::BufRead::read_line(&mut reader, &mut line).map_err(|e| e.to_string())? > 0 {
            let _ = writer.write_all(line.as_bytes());
            line.clear();
        }
        Ok(())
    });
    let _ = bound_rx.recv_timeout(Duration::from_secs(10));
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    let (echo_tx, echo_rx) = std::sync::mpsc::channel();
    let _client = spawn_in(client_ns, "echo client", move || {
        let s = std::net::TcpStream::connect_timeout(&dst.into(), Duration::from_secs(10))
            .map_err(|e| format!("connect {dst}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3))).map_err(|e| e.to_string())?;
        let mut reader = std::io::BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
        let mut writer = s;
        for line in lines_rx {
            let _ = writer.write_all(format!("{line}\n").as_bytes());
            let mut echo = String::new();
            let ok = std::io::BufRead::read_line(&mut reader, &mut echo).is_ok_and(|n| n > 0) && echo.trim() == line;
            let _ = echo_tx.send(ok);
            if !ok {
                break;
            }
        }
        Ok(())
    });
    (lines_tx, echo_rx)
}

#[test]
fn network_policies_are_enforced_on_real_packets() {
    let Some(mut c) = Cluster::new("agent_policy", "p", 2) else { return };
    let http = |port: u16| json!([{"name": "http", "containerPort": port, "protocol": "TCP"}]);
    // Two carts mapping the named port `http` to different numbers, a client, a bystander.
    let cart1 = c.add_pod_with("cart1", 0, json!({"app": "cart"}), http(8080));
    let cart2 = c.add_pod_with("cart2", 1, json!({"app": "cart"}), http(9090));
    let client = c.add_pod_with("client", 1, json!({"app": "client"}), json!([]));
    let other = c.add_pod_with("other", 0, json!({"app": "other"}), http(8080));
    let _servers = [
        NameServer::start(&cart1.ns, addr("0.0.0.0", 8080), "cart1:8080").expect("server"),
        NameServer::start(&cart1.ns, addr("0.0.0.0", 9999), "cart1:9999").expect("server"),
        NameServer::start(&cart2.ns, addr("0.0.0.0", 9090), "cart2:9090").expect("server"),
        NameServer::start(&other.ns, addr("0.0.0.0", 8080), "other:8080").expect("server"),
    ];
    c.insert(
        Kind::Service,
        json!({"metadata": {"name": "cart", "namespace": "default"},
               "spec": {"clusterIP": "10.96.0.60", "selector": {"app": "cart"},
                        "ports": [{"name": "web", "port": 80, "targetPort": "http", "protocol": "TCP"}]}}),
    );
    c.insert(
        Kind::EndpointSlice,
        json!({"metadata": {"name": "cart-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "cart"}},
               "addressType": "IPv4",
               "ports": [{"name": "web", "port": 8080, "protocol": "TCP"}],
               "endpoints": [{"addresses": [cart1.ip], "conditions": {"ready": true}, "nodeName": "node1"}]}),
    );
    let vip = addr("10.96.0.60", 80);
    let quick = Duration::from_secs(2);
    let at = |pod: &harness::Pod, port| addr(&pod.ip, port);
    // Before any policy everything reaches everything.
    c.wait_for("the Service", Duration::from_secs(30), || reach(&other.ns, vip, quick).is_ok());
    assert!(reach(&other.ns, at(&cart1, 9999), quick).is_ok());

    // An established connection from the client, before the policies.
    let (lines, echoes) = echo_session(&cart2.ns, &client.ns, addr(&cart2.ip, 9091));
    let send = |line: &str| {
        lines.send(line.into()).ok();
        echoes.recv_timeout(Duration::from_secs(10)).unwrap_or(false)
    };
    assert!(send("before"), "the connection works");

    // The carts take `http` from the clients only (default deny for the rest); the
    // bystander takes anything from the pod network except the client (ipBlock with
    // except); the client may only reach carts (egress deny for the rest).
    let policy = |name: &str, spec: serde_json::Value| {
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": name, "namespace": "default"}, "spec": spec})
    };
    c.insert(
        Kind::NetworkPolicy,
        policy(
            "cart",
            json!({"podSelector": {"matchLabels": {"app": "cart"}},
                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                                "ports": [{"port": "http"}, {"port": 9091}]}]}),
        ),
    );
    c.insert(
        Kind::NetworkPolicy,
        policy(
            "other",
            json!({"podSelector": {"matchLabels": {"app": "other"}},
                   "ingress": [{"from": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": [format!("{}/32", client.ip)]}}]}]}),
        ),
    );
    c.insert(
        Kind::NetworkPolicy,
        policy(
            "client-egress",
            json!({"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
                   "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "cart"}}}]}]}),
        ),
    );
    c.wait_for("the policies to be enforced", Duration::from_secs(30), || {
        reach(&other.ns, at(&cart1, 8080), quick).is_err() && reach(&client.ns, at(&other, 8080), quick).is_err()
    });

    // Allow-from-app on a named port: each cart's own number, across nodes and locally.
    assert_eq!(reach(&client.ns, at(&cart1, 8080), quick).as_deref(), Ok("cart1:8080"));
    assert_eq!(reach(&client.ns, at(&cart2, 9090), quick).as_deref(), Ok("cart2:9090"));
    // Default deny: another port of a cart, another source, ICMP.
    assert!(reach(&client.ns, at(&cart1, 9999), quick).is_err(), "not the named port");
    assert!(reach(&other.ns, at(&cart1, 8080), quick).is_err(), "not a client");
    assert!(ping(&client.ns, &cart1.ip, 1, 2).is_err(), "ICMP is not allowed either");
    // Service traffic is judged after DNAT, against the backend.
    assert_eq!(reach(&client.ns, vip, quick).as_deref(), Ok("cart1:8080"));
    assert!(reach(&other.ns, vip, quick).is_err(), "the bystander's Service traffic is judged at the backend");
    // ipBlock with except: the carts reach the bystander, the client does not.
    assert_eq!(reach(&cart1.ns, at(&other, 8080), quick).as_deref(), Ok("other:8080"));
    assert!(reach(&client.ns, at(&other, 8080), quick).is_err(), "excepted");
    // Egress deny: the client reaches nothing but carts.
    assert!(reach(&client.ns, addr(INTERNET, 7000), quick).is_err(), "egress to the outside");
    // Kubelet-style probes from the node reach its pods whatever the policies.
    assert_eq!(reach(&c.nodes[0].ns, at(&cart1, 8080), quick).as_deref(), Ok("cart1:8080"));
    assert_eq!(reach(&c.nodes[0].ns, at(&cart1, 9999), quick).as_deref(), Ok("cart1:9999"));

    // The established connection: still allowed by the new policies, so it flows on;
    // once the client is no longer a client, its next packet is denied (OVN's semantics).
    assert!(send("after the policies"), "allowed connections survive a policy change");
    c.relabel_pod("client", json!({"app": "former-client"}));
    c.wait_for("the new label to be enforced", Duration::from_secs(30), || {
        reach(&client.ns, at(&cart2, 9090), quick).is_err()
    });
    assert!(!send("after the label change"), "a connection the policies no longer allow is cut");

    // Counters and the trace name the policy.
    let metrics = exec(
        &c.nodes[0].ns,
        &[
            "bash",
            "-c",
            "exec 3<>/dev/tcp/127.0.0.1/9476; printf 'GET /metrics HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n' >&3; cat <&3",
        ],
    )
    .unwrap_or_default();
    assert!(
        metrics.lines().any(|l| l.starts_with("skein_policy_packets_total")
            && l.contains("policy=\"default/cart\"")
            && l.contains("verdict=\"denied\"")),
        "per-policy counters in /metrics:\n{metrics}"
    );
    // The audit log across the process split: the agent sets the rate in the datapath
    // process (`set-audit`), gives it again to a new datapath process, and collects the
    // records (`take-audit`) into its log, naming the policy.
    let count = |c: &Cluster, what: &str| c.agent_log(0).matches(what).count();
    let runs = count(&c, "node network running");
    c.stop_agent(0);
    let master = c.master_url.clone();
    c.start_agent_with(0, &master, &["--policy-audit-log-rate", "100"]);
    c.wait_for("the agent to run again", Duration::from_secs(30), || count(&c, "node network running") > runs);
    let resyncs = count(&c, "the new datapath process has the node's ports and flows");
    c.stop_datapath(0);
    c.start_datapath(0);
    c.wait_for("the agent to set up the new datapath process", Duration::from_secs(30), || {
        count(&c, "the new datapath process has the node's ports and flows") > resyncs
    });
    c.wait_for("an audit record of the denied connection", Duration::from_secs(30), || {
        assert!(reach(&other.ns, at(&cart1, 8080), quick).is_err(), "still denied");
        c.agent_log(0).lines().map(without_colours).any(|l| {
            l.contains("connection denied by NetworkPolicy")
                && l.contains("default/cart")
                && l.contains(&format!("src={}", other.ip))
                && l.contains("dport=8080")
        })
    });
    // A deleted policy stops isolating.
    c.delete(Kind::NetworkPolicy, Some("default"), "other");
    c.wait_for("the deleted policy to stop isolating", Duration::from_secs(30), || {
        reach(&cart1.ns, at(&other, 8080), quick).is_ok() && reach(&c.nodes[1].ns, at(&other, 8080), quick).is_ok()
    });
    drop(c);
}
