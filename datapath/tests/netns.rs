//! Network-namespace integration tests: `skein-dp` forwarding real traffic between pods.
//! Each test builds its own nodes and pods (network namespaces wired with veth pairs),
//! runs the switch binary inside a node namespace with a flow file (or, to change ports
//! while it runs, a switch in the test process whose ports are opened from inside the node
//! namespace), and drives ARP, ping and TCP through it from threads inside the pod
//! namespaces.
//!
//! They need root. CI runs them as root; without root they fail, unless
//! SKEIN_SKIP_NETNS_TESTS=1, which skips them (and says so).

#[path = "netns/lab.rs"]
mod lab;
#[path = "netns/traffic.rs"]
mod traffic;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use lab::{Dp, Lab, Pod, PodConfig};
use skein_datapath::control::Control;
use skein_datapath::io::{PortError, PortSpec, Switch, SwitchConfig, now_ns};
use skein_datapath::{Datapath, DatapathConfig, flowtext};
use traffic::{NameServer, TcpSink, TcpSource, fetch_answers, join_within, spawn_in};

const MIB: u64 = 1 << 20;

/// Bound on a bulk transfer of a few tens of MiB (through an unoptimized test build).
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(180);

/// Bound on a running stream making visible progress.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(30);

/// Bound on opening a port of an in-process switch.
const ADD_PORT_TIMEOUT: Duration = Duration::from_secs(30);

fn addr(ip: &str, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip.parse::<Ipv4Addr>().expect("test address"), port)
}

/// Pods `a` (port 1) and `b` (port 2) of one subnet on one switch in namespace `node`.
struct TwoPods {
    a: Pod,
    b: Pod,
    dp: Dp,
}

/// L2 forwarding between the two pods: by destination MAC, broadcasts (ARP) flooded to
/// the other port; anything else (IPv6 multicast from the pods) is dropped.
fn l2_flows(a: &Pod, b: &Pod) -> String {
    format!(
        "# two pods on one segment\n\
         table=0,priority=100,in_port=1,dl_dst=ff:ff:ff:ff:ff:ff,actions=output:2\n\
         table=0,priority=100,in_port=2,dl_dst=ff:ff:ff:ff:ff:ff,actions=output:1\n\
         table=0,priority=50,dl_dst={},actions=output:1\n\
         table=0,priority=50,dl_dst={},actions=output:2\n",
        a.mac, b.mac
    )
}

fn two_pods(lab: &mut Lab) -> TwoPods {
    let node = lab.namespace("node");
    let a = lab.pod(&node, PodConfig::new("a", "02:00:0a:0b:00:01", "10.11.0.1/24"));
    let b = lab.pod(&node, PodConfig::new("b", "02:00:0a:0b:00:02", "10.11.0.2/24"));
    let dp = lab.start_switch(&node, "switch", &l2_flows(&a, &b), &[(1, &a.host_if), (2, &b.host_if)], &[]);
    TwoPods { a, b, dp }
}

/// Asserts that `pod` resolved `ip` to `mac` (`ip neigh` shows it).
fn assert_neighbour(lab: &Lab, pod: &Pod, ip: &str, mac: &str) {
    let neigh = lab.exec(&pod.ns, &["ip", "neigh", "show", ip]);
    lab.ensure(neigh.contains(&format!("lladdr {mac}")), || {
        format!("{} should have resolved {ip} to {mac}; `ip neigh show {ip}` says: {neigh:?}", pod.ns)
    });
}

/// Sends `bytes` from `from` to a sink on `to`:`port` and checks that every byte arrived,
/// in order.
fn transfer(lab: &Lab, from: &Pod, to: &Pod, port: u16, bytes: u64) {
    let sink = TcpSink::start(&to.ns, addr(&to.ip, port)).unwrap_or_else(|e| lab.fail(&e));
    let source = TcpSource::start(&from.ns, addr(&to.ip, port), Some(bytes));
    let sent = source.finish(TRANSFER_TIMEOUT).unwrap_or_else(|e| lab.fail(&e));
    let received = sink.finish(TRANSFER_TIMEOUT).unwrap_or_else(|e| lab.fail(&e));
    lab.ensure(sent.bytes == bytes, || format!("the source sent {} bytes, not {bytes}", sent.bytes));
    lab.ensure(received == sent, || format!("sent {sent:?} but received {received:?}"));
}

#[test]
fn netns_two_pods_one_switch() {
    let Some(mut lab) = Lab::new("netns_two_pods_one_switch", "tp") else { return };
    let TwoPods { a, b, dp } = two_pods(&mut lab);
    for pod in [&a, &b] {
        lab.exec(&pod.ns, &["ethtool", "-K", "eth0", "tso", "on", "gso", "on"]);
        let features = lab.exec(&pod.ns, &["ethtool", "-k", "eth0"]);
        lab.ensure(features.contains("tcp-segmentation-offload: on"), || {
            format!("TSO should be on in {}: `ethtool -k eth0` says:\n{features}", pod.ns)
        });
    }

    lab.ping(&a.ns, &b.ip, 3);
    assert_neighbour(&lab, &a, &b.ip, &b.mac);
    assert_neighbour(&lab, &b, &a.ip, &a.mac);

    transfer(&lab, &a, &b, 5001, 64 * MIB);
    let gso = lab.stat(&dp, "port_1_rx_gso");
    lab.ensure(gso > 0, || format!("no TSO super-frame from pod a crossed the switch whole (port_1_rx_gso={gso})"));
    let delivered = lab.stat(&dp, "port_2_tx");
    lab.ensure(delivered > 0, || format!("nothing was sent to pod b (port_2_tx={delivered})"));
}

#[test]
fn netns_frames_lost_at_a_full_ring_are_counted() {
    // A switch that cannot run (stopped) while a pod sends: the port's receive ring fills
    // and the kernel drops the rest. Each of those drops is counted, at that port, as a
    // receive drop because the ring was full; every datagram is accounted for.
    let Some(mut lab) = Lab::new("netns_frames_lost_at_a_full_ring_are_counted", "rf") else { return };
    let TwoPods { a, b, dp } = two_pods(&mut lab);
    lab.ping(&a.ns, &b.ip, 1);
    let (before_rx, before_full) = (lab.stat(&dp, "port_1_rx"), lab.stat(&dp, "port_1_rx_ring_full"));
    lab.ensure(before_full == 0, || format!("ring-full drops before the burst: {before_full}"));
    lab.signal(&dp, "STOP");
    // More datagrams than a 32 MiB ring of 4 KiB slots holds (8,192).
    const SENT: u64 = 12_000;
    let to = addr(&b.ip, 9);
    let burst = spawn_in(&a.ns, "a burst of datagrams", move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        for _ in 0..SENT {
            s.send_to(b"burst", to).map_err(|e| e.to_string())?;
        }
        Ok(())
    });
    let sent = join_within(burst, PROGRESS_TIMEOUT);
    lab.signal(&dp, "CONT");
    sent.unwrap_or_else(|e| lab.fail(&e));
    lab.wait_for("the switch to count the ring's drops", PROGRESS_TIMEOUT, || {
        let full = lab.stat(&dp, "port_1_rx_ring_full");
        full > 0 && lab.stat(&dp, "port_1_rx") - before_rx + full >= SENT
    });
    let (rx, full, dropped) = (
        lab.stat(&dp, "port_1_rx") - before_rx,
        lab.stat(&dp, "port_1_rx_ring_full"),
        lab.stat(&dp, "port_1_rx_dropped"),
    );
    lab.ensure(full <= SENT && dropped >= full, || {
        format!("{SENT} sent: rx={rx} rx_ring_full={full} rx_dropped={dropped}")
    });
}

#[test]
fn netns_reload_while_traffic_flows() {
    let Some(mut lab) = Lab::new("netns_reload_while_traffic_flows", "rl") else { return };
    let TwoPods { a, b, dp } = two_pods(&mut lab);
    let base = l2_flows(&a, &b);
    let no_ping = format!("{base}table=0,priority=200,icmp,in_port=1,actions=drop\n");
    // The bad line comes last, so its number is the file's line count.
    let broken = format!("{no_ping}table=0,priority=10,nw_dst=10.11.0.300,actions=drop\n");
    let broken_line = format!("line {}", broken.lines().count());

    lab.ping(&a.ns, &b.ip, 2);
    let sink = TcpSink::start(&b.ns, addr(&b.ip, 5002)).unwrap_or_else(|e| lab.fail(&e));
    let source = TcpSource::start(&a.ns, addr(&b.ip, 5002), None);
    let advances = |lab: &Lab, what: &str| {
        let from = sink.received();
        lab.wait_for(what, PROGRESS_TIMEOUT, || sink.received() >= from + 4 * MIB);
    };
    advances(&lab, "the stream to start");

    // An equivalent file plus one flow: pings from a are dropped from now on, the stream
    // goes on.
    let reply = lab.reload(&dp, "no-ping.flows", &no_ping).unwrap_or_else(|e| lab.fail(&format!("reload: {e}")));
    lab.ensure(lab.ctl(&dp, &["dump-flows"]).contains("icmp"), || {
        format!("the new flow is not listed (reload said {reply:?})")
    });
    advances(&lab, "the stream to go on after the reload");
    if let Ok(out) = lab::try_ping(&a.ns, &b.ip, 2, 2) {
        lab.fail(&format!("ping should be dropped by the reloaded flows, but it got through:\n{out}"));
    }

    // A file with a bad line is refused, naming the line; the flows installed stay.
    match lab.reload(&dp, "broken.flows", &broken) {
        Ok(out) => lab.fail(&format!("a flow file with a bad last line was accepted: {out:?}")),
        Err(e) => lab.ensure(e.contains(&broken_line) && e.contains("nw_dst"), || {
            format!("the refusal should name {broken_line} and nw_dst: {e}")
        }),
    }
    let flows = lab.ctl(&dp, &["dump-flows"]);
    lab.ensure(flows.contains("icmp") && !flows.contains("priority=10,"), || {
        format!("a refused reload changed the flows:\n{flows}")
    });
    advances(&lab, "the stream to go on after the refused reload");
    if let Ok(out) = lab::try_ping(&a.ns, &b.ip, 2, 2) {
        lab.fail(&format!("after the refused reload, ping should still be dropped, but it got through:\n{out}"));
    }

    // Back to the first file: pings pass again.
    lab.reload(&dp, "base.flows", &base).unwrap_or_else(|e| lab.fail(&format!("reload: {e}")));
    lab.ping(&a.ns, &b.ip, 2);
    advances(&lab, "the stream to go on after the last reload");

    source.stop();
    let sent = source.finish(TRANSFER_TIMEOUT).unwrap_or_else(|e| lab.fail(&e));
    let received = sink.finish(TRANSFER_TIMEOUT).unwrap_or_else(|e| lab.fail(&e));
    lab.ensure(received == sent, || {
        format!("the stream lost or changed data across reloads: sent {sent:?}, received {received:?}")
    });
}

const ROUTER_MAC: &str = "02:00:00:00:00:fe";

#[test]
fn netns_routing_between_subnets() {
    let Some(mut lab) = Lab::new("netns_routing_between_subnets", "rt") else { return };
    let node = lab.namespace("node");
    let a = lab.pod(&node, PodConfig::new("a", "02:00:0a:01:00:02", "10.1.0.2/24").gateway("10.1.0.1"));
    let b = lab.pod(&node, PodConfig::new("b", "02:00:0a:02:00:02", "10.2.0.2/24").gateway("10.2.0.1"));
    let flows = format!(
        "# the switch is the router of 10.1.0.0/24 (port 1) and 10.2.0.0/24 (port 2)\n\
         table=0,priority=100,arp,arp_op=1,arp_tpa=10.1.0.1,actions=arp_responder(mac={r})\n\
         table=0,priority=100,arp,arp_op=1,arp_tpa=10.2.0.1,actions=arp_responder(mac={r})\n\
         table=0,priority=100,icmp,icmp_type=8,nw_dst=10.1.0.1,actions=icmp_echo_responder\n\
         table=0,priority=100,icmp,icmp_type=8,nw_dst=10.2.0.1,actions=icmp_echo_responder\n\
         table=0,priority=50,ip,in_port=1,dl_dst={r},nw_dst=10.2.0.0/24,actions=mod_dl_src:{r},mod_dl_dst:{b},dec_ttl,output:2\n\
         table=0,priority=50,ip,in_port=2,dl_dst={r},nw_dst=10.1.0.0/24,actions=mod_dl_src:{r},mod_dl_dst:{a},dec_ttl,output:1\n",
        r = ROUTER_MAC,
        a = a.mac,
        b = b.mac,
    );
    let dp = lab.start_switch(&node, "router", &flows, &[(1, &a.host_if), (2, &b.host_if)], &[]);

    for (from, to) in [(&a, &b), (&b, &a)] {
        let out = lab.ping(&from.ns, &to.ip, 3);
        let replies: Vec<&str> = out.lines().filter(|l| l.contains("bytes from")).collect();
        // The reply left `to` with TTL 64 and crossed the router once. With a deadline,
        // ping sends until it has 3 replies: requests queued behind a slow first ARP
        // resolution are all answered at once, so there may be more than 3.
        lab.ensure(replies.len() >= 3 && replies.iter().all(|l| l.contains("ttl=63")), || {
            format!("{} → {}: every reply should arrive with ttl=63:\n{out}", from.ns, to.ip)
        });
    }
    assert_neighbour(&lab, &a, "10.1.0.1", ROUTER_MAC);
    assert_neighbour(&lab, &b, "10.2.0.1", ROUTER_MAC);
    lab.ping(&a.ns, "10.1.0.1", 2);
    lab.ping(&b.ns, "10.2.0.1", 2);
    // TSO super-frames are routed whole: TTL and MACs rewritten, checksums still right.
    transfer(&lab, &a, &b, 5004, 16 * MIB);
    let gso = lab.stat(&dp, "port_1_rx_gso");
    lab.ensure(gso > 0, || format!("no TSO super-frame from pod a was routed whole (port_1_rx_gso={gso})"));
}

/// One node of the Geneve test: its pod on port 1, the other node through tunnel port 10.
fn geneve_flows(local_ip: &str, peer_ip: &str) -> String {
    format!(
        "# pod on port 1; the other node through tunnel port 10 over Geneve port 100\n\
         tunnel=10,local_ip={local_ip},underlay_port=100\n\
         table=0,priority=100,in_port=1,actions=set_field:5->tun_id,set_field:{peer_ip}->tun_dst,\\\n  \
             set_field:1->tun_ingress_port,set_field:2->tun_egress_port,output:10\n\
         table=0,priority=100,in_port=100,tun_id=5,tun_src={peer_ip},tun_ingress_port=1,tun_egress_port=2,\\\n  \
             actions=output:1\n"
    )
}

#[test]
fn netns_two_nodes_geneve() {
    let Some(mut lab) = Lab::new("netns_two_nodes_geneve", "gn") else { return };
    let (ip_a, ip_b) = ("192.168.77.1", "192.168.77.2");
    let node_a = lab.namespace("node-a");
    let node_b = lab.namespace("node-b");
    lab.underlay(&node_a, &format!("{ip_a}/24"), &node_b, &format!("{ip_b}/24"));
    lab.ping(&node_a, ip_b, 1);
    // One L2 segment across both nodes; the pods' MTU leaves room for the 58 bytes of
    // encapsulation under the underlay's 1500.
    let a = lab.pod(&node_a, PodConfig::new("a", "02:00:0a:03:00:01", "10.3.0.1/24").mtu(1400));
    let b = lab.pod(&node_b, PodConfig::new("b", "02:00:0a:03:00:02", "10.3.0.2/24").mtu(1400));
    let dp_a = lab.start_switch(&node_a, "node-a", &geneve_flows(ip_a, ip_b), &[(1, &a.host_if)], &[(100, ip_a)]);
    let dp_b = lab.start_switch(&node_b, "node-b", &geneve_flows(ip_b, ip_a), &[(1, &b.host_if)], &[(100, ip_b)]);

    lab.ping(&a.ns, &b.ip, 3);
    assert_neighbour(&lab, &a, &b.ip, &b.mac);
    // TSO super-frames from pod a are segmented into the tunnel.
    transfer(&lab, &a, &b, 5003, 16 * MIB);
    for dp in [&dp_a, &dp_b] {
        for counter in ["port_100_tx", "port_100_rx"] {
            let n = lab.stat(dp, counter);
            lab.ensure(n > 0, || format!("{counter}=0 on {}: nothing crossed the tunnel", dp.name));
        }
    }
}

#[test]
fn netns_vip_load_balancing() {
    let Some(mut lab) = Lab::new("netns_vip_load_balancing", "lb") else { return };
    const VIP: &str = "10.96.0.10";
    let node = lab.namespace("node");
    let client = lab.pod(&node, PodConfig::new("c", "02:00:0a:04:00:02", "10.4.0.2/24").gateway("10.4.0.1"));
    let backends: Vec<Pod> = (1..=3)
        .map(|i| {
            let (name, mac, cidr) = (format!("be{i}"), format!("02:00:0a:04:00:1{i}"), format!("10.4.0.1{i}/24"));
            lab.pod(&node, PodConfig::new(&name, &mac, &cidr).gateway("10.4.0.1"))
        })
        .collect();

    // Port 1: the client; ports 2-4: the backends. Table 0 answers ARP (gateway and every
    // pod, so no broadcast needs flooding) and sends IP through conntrack: ct_lb for the
    // VIP, ct(nat) for the rest (un-DNATs the backends' replies). Table 1 routes by nw_dst.
    let mut flows = format!(
        "lb=1,backends={}\n\
         table=0,priority=200,arp,arp_op=1,arp_tpa=10.4.0.1,actions=arp_responder(mac={ROUTER_MAC})\n\
         table=0,priority=100,tcp,nw_dst={VIP},tp_dst=80,actions=ct_lb(lb=1,zone=1,table=1)\n\
         table=0,priority=50,ip,actions=ct(zone=1,nat,table=1)\n",
        backends.iter().map(|b| format!("{}:8080", b.ip)).collect::<Vec<_>>().join(";")
    );
    let mut ports = Vec::new();
    for (port, pod) in (1u32..).zip(std::iter::once(&client).chain(&backends)) {
        flows.push_str(&format!(
            "table=0,priority=200,arp,arp_op=1,arp_tpa={ip},actions=arp_responder(mac={mac})\n\
             table=1,priority=100,ip,nw_dst={ip},actions=mod_dl_src:{ROUTER_MAC},mod_dl_dst:{mac},output:{port}\n",
            ip = pod.ip,
            mac = pod.mac,
        ));
        ports.push((port, pod.host_if.as_str()));
    }
    let dp = lab.start_switch(&node, "lb", &flows, &ports, &[]);

    let _servers: Vec<NameServer> = backends
        .iter()
        .map(|b| NameServer::start(&b.ns, addr("0.0.0.0", 8080), &b.ns).unwrap_or_else(|e| lab.fail(&e)))
        .collect();
    let answers =
        join_within(fetch_answers(&client.ns, addr(VIP, 80), 60), TRANSFER_TIMEOUT).unwrap_or_else(|e| lab.fail(&e));
    let names: BTreeSet<&str> = backends.iter().map(|b| b.ns.as_str()).collect();
    let reached: BTreeSet<&str> = answers.iter().map(String::as_str).collect();
    lab.ensure(reached.is_subset(&names), || format!("answers that name no backend: {answers:?}"));
    lab.ensure(reached == names, || format!("60 connections should reach all of {names:?}, reached only {reached:?}"));

    let conntrack = lab.ctl(&dp, &["dump-conntrack"]);
    let to_vip: Vec<&str> = conntrack.lines().filter(|l| l.contains(&format!("dst={VIP},sport="))).collect();
    lab.ensure(!to_vip.is_empty(), || format!("dump-conntrack lists no connection to the VIP:\n{conntrack}"));
    lab.ensure(to_vip.iter().all(|l| backends.iter().any(|b| l.contains(&format!("reply=(src={},", b.ip)))), || {
        format!("every connection to the VIP should be answered by a backend:\n{conntrack}")
    });
}

/// Adds interface `ifname` of namespace `ns` to an in-process `switch` as port `number`,
/// from a thread inside `ns`: there the name resolves and the packet socket is created.
fn add_interface(lab: &Lab, ns: &str, switch: &Arc<Switch>, number: u32, ifname: &str) -> Result<(), PortError> {
    let (sw, name) = (switch.clone(), ifname.to_string());
    let adding =
        spawn_in(ns, &format!("add port {number}"), move || Ok(sw.add_port(&PortSpec::Interface { number, name })));
    join_within(adding, ADD_PORT_TIMEOUT).unwrap_or_else(|e| lab.fail(&e))
}

/// How many packet sockets of namespace `ns` are bound to interface `ifname`
/// (`/proc/net/packet` lists them with the interface index).
fn packet_sockets_on(lab: &Lab, ns: &str, ifname: &str) -> usize {
    let link = lab.exec(ns, &["ip", "-o", "link", "show", ifname]);
    let index = link.split(':').next().unwrap_or("").trim().to_string();
    let sockets = lab.exec(ns, &["cat", "/proc/net/packet"]);
    // Columns: sk RefCnt Type Proto Iface R Rmem User Inode.
    sockets.lines().skip(1).filter(|l| l.split_whitespace().nth(4) == Some(index.as_str())).count()
}

/// Ports added to and removed from a running switch, as the node agent does for pods.
#[test]
fn netns_ports_added_and_removed_while_running() {
    let Some(mut lab) = Lab::new("netns_ports_added_and_removed_while_running", "pc") else { return };
    let node = lab.namespace("node");
    let a = lab.pod(&node, PodConfig::new("a", "02:00:0a:0c:00:01", "10.12.0.1/24"));
    let b = lab.pod(&node, PodConfig::new("b", "02:00:0a:0c:00:02", "10.12.0.2/24"));
    // The switch runs in this process, started without ports, as the node agent starts it.
    let dp = Arc::new(Datapath::new(DatapathConfig::default()));
    let switch = Arc::new(
        Switch::start(dp.clone(), &[], SwitchConfig::default())
            .unwrap_or_else(|e| lab.fail(&format!("start a switch without ports: {e}"))),
    );
    let control = {
        let sw = switch.clone();
        Control::new(dp, Box::new(move || sw.stats()), now_ns)
    };
    let flows = flowtext::parse_flow_file(&l2_flows(&a, &b)).unwrap_or_else(|e| lab.fail(&format!("flows: {e}")));
    control.install(&flows).unwrap_or_else(|e| lab.fail(&format!("install: {e}")));
    let numbers = || switch.port_stats().iter().map(|p| p.number).collect::<Vec<_>>();
    let state = || format!("switch stats:\n{}", control.stats());

    for (number, pod) in [(1, &a), (2, &b)] {
        add_interface(&lab, &node, &switch, number, &pod.host_if)
            .unwrap_or_else(|e| lab.fail(&format!("add port {number} ({}): {e}", pod.host_if)));
    }
    lab.ensure(numbers() == [1, 2], || format!("ports 1 and 2 should be listed; {}", state()));
    lab.ping(&a.ns, &b.ip, 3);
    let stats = switch.port_stats();
    lab.ensure(stats[0].rx > 0 && stats[1].tx > 0, || format!("pings should cross port 1 to 2; {}", state()));

    // A taken number and an interface that does not exist are refused; nothing changes.
    let before = switch.stats();
    match add_interface(&lab, &node, &switch, 1, &b.host_if) {
        Err(PortError::DuplicateNumber(1)) => {}
        other => lab.fail(&format!("adding a second port 1 should fail as a duplicate, got {other:?}")),
    }
    let missing = format!("{}zz", a.host_if);
    match add_interface(&lab, &node, &switch, 3, &missing) {
        Err(e) => lab.ensure(e.to_string().contains(&format!("{missing:?}")), || {
            format!("the error for a missing interface should name {missing:?}: {e}")
        }),
        Ok(()) => lab.fail(&format!("interface {missing:?} does not exist, yet it was added as port 3")),
    }
    lab.ensure(numbers() == [1, 2] && switch.stats().unknown_port_drops == before.unknown_port_drops, || {
        format!("refused additions changed the switch; {}", state())
    });
    lab.ensure(packet_sockets_on(&lab, &node, &b.host_if) == 1, || {
        format!("the refused duplicate left a packet socket on {}", b.host_if)
    });
    lab.ping(&a.ns, &b.ip, 2);

    // Port 2 removed: its socket is closed when remove_port returns, pings to b are
    // dropped as output to an unknown port.
    lab.ensure(switch.remove_port(2), || format!("port 2 should have existed; {}", state()));
    lab.ensure(!switch.remove_port(2), || "port 2 was removed twice".to_string());
    lab.ensure(numbers() == [1], || format!("only port 1 should be left; {}", state()));
    let sockets = packet_sockets_on(&lab, &node, &b.host_if);
    lab.ensure(sockets == 0, || format!("{sockets} packet sockets still bound to {} after remove_port", b.host_if));
    let unknown = switch.stats().unknown_port_drops;
    if let Ok(out) = lab::try_ping(&a.ns, &b.ip, 2, 2) {
        lab.fail(&format!("port 2 is removed, yet ping got through:\n{out}"));
    }
    let now = switch.stats().unknown_port_drops;
    lab.ensure(now > unknown, || format!("unknown_port_drops should grow ({unknown} → {now}); {}", state()));

    // Back under the same number: pings pass again.
    add_interface(&lab, &node, &switch, 2, &b.host_if)
        .unwrap_or_else(|e| lab.fail(&format!("add port 2 again ({}): {e}", b.host_if)));
    lab.ping(&a.ns, &b.ip, 3);
    lab.ensure(numbers() == [1, 2], || format!("ports 1 and 2 should be listed again; {}", state()));
    let stats = switch.port_stats();
    lab.ensure(stats[1].tx > 0, || format!("the new port 2 should have sent the pings; {}", state()));
}
