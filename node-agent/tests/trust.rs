//! Annotation spoofing end to end, in network namespaces (`docs/security.md`): a pod whose
//! author copied another pod's `skein.dev/pod-networks` onto it gets nothing from its CNI
//! ADD — the master ignores the value, so its view has no port for the pod — and the victim
//! keeps its address and its connectivity. Real `skein-agent` processes, the real
//! `skein-cni`, the in-process master and API fake, as in `cluster.rs`.
//!
//! A spoofed tunnel frame: a Geneve frame to a node from an address that is no chassis is
//! dropped and counted (`tunnel_unknown_source`); the same frame from a chassis is
//! delivered.
//!
//! Needs root. CI runs it as root; without root it fails, unless SKEIN_SKIP_NETNS_TESTS=1,
//! which skips it (and says so).

#[path = "cluster/harness.rs"]
#[allow(dead_code)]
mod harness;

#[path = "../../datapath/tests/netns/traffic.rs"]
#[allow(dead_code)]
mod traffic;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use harness::{Cluster, exec, ping};
use serde_json::json;
use skein_datapath::geneve::{EncapParams, GENEVE_PORT, encap};
use skein_kube_fake::Kind;
use traffic::{join_within, spawn_in};

#[test]
fn netns_a_pod_with_a_forged_address_gets_nothing_and_the_victim_keeps_its_connectivity() {
    let Some(mut c) = Cluster::new("agent_trust", "t", 2) else { return };
    let victim = c.add_pod("victim", 0, "web");
    let peer = c.add_pod("peer", 1, "client");
    if let Err(e) = ping(&peer.ns, &victim.ip, 2, 10) {
        c.fail(&format!("peer → victim before the attack: {e}"));
    }
    let victim_pod = c.api.get(Kind::Pod, Some("default"), "victim").expect("victim");
    let value = victim_pod["metadata"]["annotations"]["skein.dev/pod-networks"].clone();

    // The attacker creates a pod on the victim's node carrying the victim's address.
    let created = c
        .api
        .insert(
            Kind::Pod,
            json!({"metadata": {"name": "thief", "namespace": "default",
                                "annotations": {"skein.dev/pod-networks": value}},
                   "spec": {"nodeName": c.nodes[0].name, "containers": [{"name": "c", "image": "x"}]}}),
        )
        .expect("thief created");
    let uid = created["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
    let ns = c.namespace("p-thief");
    let container = format!("ctr-thief-{}", c.prefix);
    let out = c.cni_raw(
        0,
        "ADD",
        &container,
        &format!("/run/netns/{ns}"),
        "eth0",
        &Cluster::cni_args("thief", &container, &uid),
        None,
    );
    assert_ne!(out.code, 0, "the thief's ADD succeeded: {out:?}");
    assert_eq!(out.error_code(), Some(11), "try again later: {out:?}");
    let addresses = exec(&ns, &["ip", "-o", "-4", "addr", "show"]).unwrap_or_default();
    assert!(!addresses.contains(&victim.ip), "the thief holds the victim's address: {addresses}");
    // The master said why, on the thief.
    let events: Vec<String> = c
        .api
        .list(Kind::EventsV1Event, Some("default"))
        .into_iter()
        .filter(|e| e.pointer("/regarding/name").and_then(|n| n.as_str()) == Some("thief"))
        .filter_map(|e| e.get("reason").and_then(|r| r.as_str()).map(str::to_owned))
        .collect();
    assert!(events.iter().any(|r| r == "ForgedAnnotation"), "{events:?}");

    // The victim keeps its address and reaches, and is reached from, the other node.
    let victim_now = c.api.get(Kind::Pod, Some("default"), "victim").expect("victim");
    assert_eq!(victim_now["metadata"]["annotations"], victim_pod["metadata"]["annotations"]);
    if let Err(e) = ping(&peer.ns, &victim.ip, 3, 10) {
        c.fail(&format!("peer → victim after the attack: {e}"));
    }
    if let Err(e) = ping(&victim.ns, &peer.ip, 3, 10) {
        c.fail(&format!("victim → peer after the attack: {e}"));
    }
    let _ = c.cni_raw(
        0,
        "DEL",
        &container,
        &format!("/run/netns/{ns}"),
        "eth0",
        &Cluster::cni_args("thief", &container, &uid),
        None,
    );
}

/// The (VNI, egress port key) pairs node `from`'s saved flows tunnel to `to_ip` with.
fn tunnel_targets(c: &Cluster, from: usize, to_ip: &str) -> Vec<(u32, u16)> {
    let text = std::fs::read_to_string(c.nodes[from].state.join("flows.txt")).unwrap_or_default();
    let value = |line: &str, field: &str| -> Option<u64> {
        let at = line.find(&format!("->{field}"))?;
        let v = line[..at].rsplit("set_field:").next()?;
        match v.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => v.parse().ok(),
        }
    };
    let mut out: Vec<(u32, u16)> = text
        .lines()
        .filter(|l| l.contains(&format!("set_field:{to_ip}->tun_dst")))
        .filter_map(|l| {
            Some((u32::try_from(value(l, "tun_id")?).ok()?, u16::try_from(value(l, "tun_egress_port")?).ok()?))
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The Geneve payload (what follows the outer UDP header) carrying a UDP datagram
/// `src` → `dst`:9999 with `body` to the pod with MAC `dst_mac`, for `vni` and `egress`.
fn geneve_payload(vni: u32, egress: u16, dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, body: &[u8]) -> Vec<u8> {
    let mut inner = Vec::new();
    inner.extend_from_slice(&dst_mac);
    inner.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    inner.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = 20 + 8 + body.len();
    inner.extend_from_slice(&[0x45, 0]);
    inner.extend_from_slice(&u16::try_from(total).expect("small").to_be_bytes());
    inner.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    inner.extend_from_slice(&src.octets());
    inner.extend_from_slice(&dst.octets());
    inner.extend_from_slice(&40000u16.to_be_bytes());
    inner.extend_from_slice(&9999u16.to_be_bytes());
    inner.extend_from_slice(&u16::try_from(8 + body.len()).expect("small").to_be_bytes());
    inner.extend_from_slice(&[0, 0]);
    inner.extend_from_slice(body);
    skein_datapath::packet::fill_checksums(&mut inner);
    let params = EncapParams {
        outer_eth_src: [0; 6],
        outer_eth_dst: [0; 6],
        src: 0,
        dst: 0,
        ttl: 64,
        vni,
        ingress: 0,
        egress,
        identity: 0,
    };
    let mut wire = Vec::new();
    encap(&inner, &params, 0, &mut wire).expect("encapsulate");
    // Outer Ethernet, IPv4 and UDP: the sending socket's kernel writes its own.
    wire.split_off(14 + 20 + 8)
}

#[test]
fn netns_a_tunnel_frame_from_no_chassis_is_dropped_and_counted() {
    let Some(mut c) = Cluster::new("agent_tunnel_spoof", "s", 2) else { return };
    let victim = c.add_pod("victim", 0, "web");
    let peer = c.add_pod("peer", 1, "client");
    if let Err(e) = ping(&peer.ns, &victim.ip, 2, 10) {
        c.fail(&format!("peer → victim: {e}"));
    }
    let node0 = c.nodes[0].ip.clone();
    let mut targets = Vec::new();
    c.wait_for("node2's saved flows to tunnel to node1", Duration::from_secs(20), || {
        targets = tunnel_targets(&c, 1, &node0);
        !targets.is_empty()
    });
    let mac = victim.result["interfaces"]
        .as_array()
        .and_then(|ifs| ifs.iter().find(|i| i["sandbox"].as_str().is_some_and(|s| !s.is_empty())))
        .and_then(|i| i["mac"].as_str())
        .unwrap_or_default()
        .to_owned();
    let dst_mac: Vec<u8> = mac.split(':').filter_map(|b| u8::from_str_radix(b, 16).ok()).collect();
    let dst_mac: [u8; 6] = dst_mac.try_into().unwrap_or_else(|_| c.fail(&format!("victim MAC {mac:?}")));
    let (src, dst): (Ipv4Addr, Ipv4Addr) = (peer.ip.parse().expect("peer ip"), victim.ip.parse().expect("victim ip"));

    // What the victim receives on UDP 9999, until the first frame sent from the chassis
    // (sent after the spoofed ones, along the same path) or 30 s.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let received = spawn_in(&victim.ns, "udp receiver", move || {
        let socket = UdpSocket::bind("0.0.0.0:9999").map_err(|e| format!("bind: {e}"))?;
        socket.set_read_timeout(Some(Duration::from_millis(100))).map_err(|e| e.to_string())?;
        let _ = ready_tx.send(());
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut got: Vec<String> = Vec::new();
        let mut buf = [0u8; 256];
        while Instant::now() < deadline && !got.iter().any(|m| m.starts_with("chassis")) {
            if let Ok(n) = socket.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        Ok(got)
    });
    let _ = ready_rx.recv_timeout(Duration::from_secs(10));

    let before = c.stats(0).get("drops_tunnel_unknown_source").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let to: SocketAddrV4 = SocketAddrV4::new(node0.parse().expect("node ip"), GENEVE_PORT);
    // The spoofer: the host on the underlay that is no chassis (the bridge's address).
    let spoofer = UdpSocket::bind("0.0.0.0:0").expect("spoofer socket");
    for (k, (vni, egress)) in targets.iter().enumerate() {
        let payload = geneve_payload(*vni, *egress, dst_mac, src, dst, format!("spoofed-{k}").as_bytes());
        spoofer.send_to(&payload, to).expect("send the spoofed frame");
    }
    // The same frames from node2, a chassis: at least one reaches the victim.
    let frames: Vec<Vec<u8>> = targets
        .iter()
        .enumerate()
        .map(|(k, (vni, egress))| geneve_payload(*vni, *egress, dst_mac, src, dst, format!("chassis-{k}").as_bytes()))
        .collect();
    let sent = spawn_in(&c.nodes[1].ns, "chassis sender", move || {
        let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        for f in &frames {
            socket.send_to(f, to).map_err(|e| e.to_string())?;
        }
        Ok(())
    });
    if let Err(e) = join_within(sent, Duration::from_secs(10)) {
        c.fail(&format!("sending from node2: {e}"));
    }
    let spoofed = targets.len() as u64;
    c.wait_for("the spoofed frames to be counted", Duration::from_secs(20), || {
        c.stats(0).get("drops_tunnel_unknown_source").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            >= before + spoofed
    });
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
        metrics
            .lines()
            .any(|l| l.starts_with("skein_datapath_drops_total{reason=\"tunnel_unknown_source\"} ")
                && !l.ends_with(" 0")),
        "{metrics}"
    );
    let got = join_within(received, Duration::from_secs(40)).unwrap_or_else(|e| c.fail(&format!("receiver: {e}")));
    assert!(got.iter().all(|m| !m.starts_with("spoofed")), "a spoofed frame was delivered: {got:?}");
    assert!(got.iter().any(|m| m.starts_with("chassis")), "the same frame from a chassis was not delivered: {got:?}");
}
