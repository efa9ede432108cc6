//! Property: NetworkPolicy as compiled and translated does what the reference model
//! (`skein-policy-model`) says. Random clusters — three nodes, pods in three namespaces
//! with random labels and named ports, a Service, random policies — are compiled by the
//! real engine, each chassis's view translated by the real agent translation into a real
//! datapath, and random connections are sent as frames: pod to pod on one node and across
//! the Geneve tunnel, pod to a Service (judged after DNAT), pod to the outside, a node's
//! host to pods. A connection's first packet must arrive exactly when the model allows
//! it; then its reply must come back, un-NATed, and a second packet must pass too.
//!
//! `PROPTEST_CASES=N` changes the number of cases (default 128).

use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use skein_agent::translate::{LocalBindings, Tunnel, Uplink, translate};
use skein_datapath::datapath::Packet;
use skein_datapath::exec::CollectSink;
use skein_datapath::packet::fill_checksums;
use skein_datapath::{Datapath, DatapathConfig};
use skein_netmodel::annotations::{ChassisAnnotation, Encap, PodNetwork};
use skein_netmodel::cluster::{
    AddressType, ContainerPort, Endpoint, EndpointConditions, EndpointPort, EndpointSlice, IpBlock, LabelSelector,
    Labels, Namespace, NetworkPolicy, Node, Pod, PolicyPeer, PolicyPort, PolicyRule, PolicyType, PortRef, Protocol,
    SelectorOperator, SelectorRequirement, Service, ServicePort, ServiceType, SessionAffinity, TrafficPolicy,
};
use skein_netmodel::{ClusterChange, Engine, IpNet, MacAddr, NetworkConfig, ObjectKey};
use skein_policy_model::{Connection, Endpoint as Peer, Model, Transport};

const NODES: u8 = 3;
const MGMT: u32 = 50;
const UPLINK: u32 = 51;
const TUN: u32 = 100;
const UNDERLAY: u32 = 101;
const NIC_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x11]);
const GATEWAY_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xfe]);
const VIP: &str = "10.96.0.10";
const OUTSIDE: [&str; 2] = ["203.0.113.7", "203.0.113.9"];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn tunnel_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, n + 1)
}

fn node_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 10 + n)
}

fn node(n: u8) -> Node {
    Node {
        name: format!("n{n}"),
        internal_ips: vec![IpAddr::V4(node_ip(n))],
        subnets: vec![format!("10.244.{n}.0/24").parse().unwrap()],
        chassis: Some(ChassisAnnotation {
            id: format!("uuid-{n}"),
            tunnel_ip: IpAddr::V4(tunnel_ip(n)),
            encap: Encap::Geneve,
        }),
        zone: None,
    }
}

/// A generated pod: namespace, node, labels, the number its `http` port maps to, and
/// whether it has a `metrics` port.
#[derive(Clone, Debug)]
struct PodSpec {
    ns: u8,
    node: u8,
    app: Option<u8>,
    tier: Option<u8>,
    http: u16,
    metrics: bool,
}

fn pod_spec() -> impl Strategy<Value = PodSpec> {
    (
        0..3u8,
        0..NODES,
        proptest::option::of(0..2u8),
        proptest::option::of(0..2u8),
        prop_oneof![Just(8080u16), Just(9090)],
        any::<bool>(),
    )
        .prop_map(|(ns, node, app, tier, http, metrics)| PodSpec { ns, node, app, tier, http, metrics })
}

fn pod(i: usize, s: &PodSpec) -> Pod {
    let addr = ip(&format!("10.244.{}.{}", s.node, 10 + i));
    let mut labels = Labels::new();
    if let Some(a) = s.app {
        labels.insert("app".into(), ["a", "b"][a as usize].into());
    }
    if let Some(t) = s.tier {
        labels.insert("tier".into(), ["x", "y"][t as usize].into());
    }
    let mut ports = vec![ContainerPort { name: Some("http".into()), port: s.http, protocol: Protocol::Tcp }];
    if s.metrics {
        ports.push(ContainerPort { name: Some("metrics".into()), port: 9000 + i as u16, protocol: Protocol::Tcp });
    }
    Pod {
        namespace: format!("ns{}", s.ns),
        name: format!("p{i}"),
        uid: format!("uid-{i}"),
        node: Some(format!("n{}", s.node)),
        labels,
        host_network: false,
        terminal: false,
        ports,
        network: Some(PodNetwork {
            ip_addresses: vec![IpNet::new(addr, 24).unwrap()],
            mac_address: MacAddr::derived(addr),
            gateway_ips: vec![ip(&format!("10.244.{}.1", s.node))],
            routes: vec![],
            mtu: 1400,
        }),
    }
}

fn selector() -> impl Strategy<Value = LabelSelector> {
    let labels = |k: &str, v: &str| LabelSelector {
        match_labels: [(k.to_owned(), v.to_owned())].into_iter().collect(),
        match_expressions: vec![],
    };
    let expr = |key: &str, operator, values: &[&str]| LabelSelector {
        match_labels: Labels::new(),
        match_expressions: vec![SelectorRequirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| (*v).to_owned()).collect(),
        }],
    };
    prop_oneof![
        3 => Just(LabelSelector::default()),
        2 => Just(labels("app", "a")),
        1 => Just(labels("app", "b")),
        1 => Just(expr("tier", SelectorOperator::Exists, &[])),
        1 => Just(expr("app", SelectorOperator::DoesNotExist, &[])),
        1 => Just(expr("app", SelectorOperator::NotIn, &["a"])),
        1 => Just(expr("tier", SelectorOperator::In, &["x", "y"])),
    ]
}

fn namespace_selector() -> impl Strategy<Value = LabelSelector> {
    let labels = |k: &str, v: &str| LabelSelector {
        match_labels: [(k.to_owned(), v.to_owned())].into_iter().collect(),
        match_expressions: vec![],
    };
    prop_oneof![
        Just(LabelSelector::default()),
        Just(labels("team", "red")),
        Just(labels("kubernetes.io/metadata.name", "ns1")),
    ]
}

fn peer() -> impl Strategy<Value = PolicyPeer> {
    let block = |cidr: &str, except: &[&str]| PolicyPeer {
        ip_block: Some(IpBlock {
            cidr: cidr.parse().unwrap(),
            except: except.iter().map(|e| e.parse().unwrap()).collect(),
        }),
        ..Default::default()
    };
    prop_oneof![
        3 => selector().prop_map(|s| PolicyPeer { pod_selector: Some(s), ..Default::default() }),
        2 => namespace_selector().prop_map(|s| PolicyPeer { namespace_selector: Some(s), ..Default::default() }),
        2 => (selector(), namespace_selector()).prop_map(|(p, n)| PolicyPeer {
            pod_selector: Some(p),
            namespace_selector: Some(n),
            ip_block: None,
        }),
        1 => Just(block("203.0.113.0/24", &["203.0.113.7/32"])),
        1 => Just(block("10.244.0.0/16", &["10.244.1.0/24"])),
        1 => Just(block("10.244.1.2/32", &[])),
        1 => Just(block("0.0.0.0/0", &[])),
    ]
}

fn port() -> impl Strategy<Value = PolicyPort> {
    let p = |protocol, port: Option<PortRef>, end_port| PolicyPort { protocol, port, end_port };
    prop_oneof![
        3 => Just(p(Protocol::Tcp, Some(PortRef::Number(8080)), None)),
        3 => Just(p(Protocol::Tcp, Some(PortRef::Name("http".into())), None)),
        1 => Just(p(Protocol::Tcp, Some(PortRef::Name("metrics".into())), None)),
        1 => Just(p(Protocol::Tcp, Some(PortRef::Number(8000)), Some(8090))),
        1 => Just(p(Protocol::Udp, None, None)),
        1 => Just(p(Protocol::Udp, Some(PortRef::Number(53)), None)),
        1 => Just(p(Protocol::Sctp, Some(PortRef::Number(9000)), Some(9100))),
        // Invalid (endPort without a port): the rule allows nothing.
        1 => Just(p(Protocol::Tcp, None, Some(90))),
    ]
}

fn rule() -> impl Strategy<Value = PolicyRule> {
    (proptest::collection::vec(peer(), 0..3), proptest::collection::vec(port(), 0..3))
        .prop_map(|(peers, ports)| PolicyRule { peers, ports })
}

fn policy(i: usize) -> impl Strategy<Value = NetworkPolicy> {
    (
        0..3u8,
        selector(),
        prop_oneof![
            Just(vec![]),
            Just(vec![PolicyType::Ingress]),
            Just(vec![PolicyType::Egress]),
            Just(vec![PolicyType::Ingress, PolicyType::Egress]),
        ],
        proptest::collection::vec(rule(), 0..3),
        proptest::collection::vec(rule(), 0..3),
    )
        .prop_map(move |(ns, pod_selector, policy_types, ingress, egress)| NetworkPolicy {
            namespace: format!("ns{ns}"),
            name: format!("np{i}"),
            pod_selector,
            policy_types,
            ingress,
            egress,
        })
}

/// Who sends the first packet.
#[derive(Clone, Debug)]
enum Src {
    Pod(usize),
    Host(u8),
}

/// Where to.
#[derive(Clone, Debug)]
enum Dst {
    Pod(usize),
    Service,
    Outside(usize),
}

#[derive(Clone, Copy, Debug)]
enum Proto {
    Tcp(u16),
    Udp(u16),
    Sctp(u16),
    Icmp,
}

fn conn() -> impl Strategy<Value = (Src, Dst, Proto)> {
    (
        prop_oneof![4 => (0..8usize).prop_map(Src::Pod), 1 => (0..NODES).prop_map(Src::Host)],
        prop_oneof![5 => (0..8usize).prop_map(Dst::Pod), 1 => Just(Dst::Service), 1 => (0..2usize).prop_map(Dst::Outside)],
        prop_oneof![
            4 => prop_oneof![Just(8080u16), Just(9090), Just(8085), Just(9001), Just(9003), Just(22)].prop_map(Proto::Tcp),
            2 => prop_oneof![Just(53u16), Just(5000)].prop_map(Proto::Udp),
            1 => prop_oneof![Just(9000u16), Just(9200)].prop_map(Proto::Sctp),
            1 => Just(Proto::Icmp),
        ],
    )
}

/// The cluster's datapaths, one per chassis, fed by one engine.
struct Fabric {
    engine: Engine,
    dps: Vec<Datapath>,
    bindings: Vec<LocalBindings>,
    pods: Vec<Pod>,
    now: u64,
}

fn bindings(n: u8, pods: &[Pod]) -> LocalBindings {
    let ports = pods
        .iter()
        .enumerate()
        .filter(|(_, p)| p.node.as_deref() == Some(format!("n{n}").as_str()))
        .map(|(i, p)| (format!("{}_{}", p.namespace, p.name), i as u32 + 1))
        .collect();
    LocalBindings {
        ports,
        management_port: Some(MGMT),
        uplink: Some(Uplink::new(UPLINK, NIC_MAC, GATEWAY_MAC)),
        tunnel: Tunnel {
            port: TUN,
            underlay_port: UNDERLAY,
            local_ip: tunnel_ip(n),
            local_mac: MacAddr([0x02, 0, 0, 0, 1, n]),
            next_hop_mac: MacAddr([0x02, 0, 0, 0, 2, 0]),
            mtu: 1500,
        },
        conntrack: Default::default(),
        lb_id_key: Default::default(),
    }
}

/// Where a packet ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Landed {
    Pod(usize, Vec<u8>),
    Host(u8, Vec<u8>),
    Outside(u8, Vec<u8>),
}

impl Fabric {
    fn new(pods: Vec<Pod>, policies: &[NetworkPolicy], namespaces: &[Namespace], backend: Option<usize>) -> Fabric {
        let mut engine = Engine::new(NetworkConfig::default()).unwrap();
        let mut changes: Vec<ClusterChange> = (0..NODES).map(|n| ClusterChange::UpsertNode(node(n))).collect();
        changes.extend(namespaces.iter().cloned().map(ClusterChange::UpsertNamespace));
        changes.extend(pods.iter().cloned().map(ClusterChange::UpsertPod));
        changes.extend(policies.iter().cloned().map(ClusterChange::UpsertNetworkPolicy));
        if let Some(b) = backend {
            changes.extend(service(&pods[b]));
        }
        engine.apply(changes);
        let mut f = Fabric { engine, dps: Vec::new(), bindings: Vec::new(), pods, now: 1_000_000 };
        f.install();
        f
    }

    /// (Re)translates every chassis's view into its datapath (kept: conntrack survives).
    fn install(&mut self) {
        for n in 0..NODES {
            let view = self.engine.snapshot(&format!("n{n}")).expect("a view per chassis");
            let b = bindings(n, &self.pods);
            let file = translate(&view, &b).unwrap_or_else(|e| panic!("chassis n{n}: {e}"));
            if self.dps.len() <= n as usize {
                self.dps.push(Datapath::new(DatapathConfig::default()));
                self.bindings.push(b);
            }
            let dp = &self.dps[n as usize];
            // Replace everything: delete the old flows by cookie mask 0, then add.
            let mut mods =
                vec![skein_datapath::FlowMod::DeleteFlowsByCookie { table: None, cookie: 0, cookie_mask: 0 }];
            mods.extend(file.to_mods());
            if let Err((i, err, _)) = dp.apply(&mods) {
                panic!("chassis n{n}: modification {i} refused: {err}");
            }
        }
    }

    fn node_of(&self, i: usize) -> u8 {
        self.pods[i].node.as_deref().unwrap()[1..].parse().unwrap()
    }

    fn pod_ip(&self, i: usize) -> Ipv4Addr {
        match self.pods[i].network.as_ref().unwrap().ip_addresses[0].addr() {
            IpAddr::V4(a) => a,
            IpAddr::V6(_) => unreachable!(),
        }
    }

    /// Sends `frame` into chassis `n` on `port` and follows it through tunnels until it
    /// lands (or is dropped).
    fn send(&mut self, n: u8, port: u32, frame: Vec<u8>) -> Vec<Landed> {
        self.now += 1_000_000;
        let mut queue = vec![(n, Packet::new(frame, port))];
        let mut landed = Vec::new();
        let mut hops = 0;
        while let Some((n, packet)) = queue.pop() {
            hops += 1;
            assert!(hops < 20, "a packet bounced between chassis");
            let dp = &self.dps[n as usize];
            let mut worker = dp.worker();
            let mut sink = CollectSink::default();
            dp.process_batch(&mut worker, &mut [packet], self.now, &mut sink);
            for (_, out, bytes) in sink.outputs {
                match out {
                    UNDERLAY => {
                        let (meta, _) = skein_datapath::geneve::decap(&bytes).expect("a Geneve frame");
                        let to = (0..NODES).find(|m| u32::from(tunnel_ip(*m)) == meta.dst).expect("to a chassis");
                        queue.push((to, Packet::from_geneve(&bytes, TUN).expect("decap")));
                    }
                    MGMT => landed.push(Landed::Host(n, bytes)),
                    UPLINK => landed.push(Landed::Outside(n, bytes)),
                    p => {
                        let pod = (p - 1) as usize;
                        landed.push(Landed::Pod(pod, bytes));
                    }
                }
            }
        }
        landed
    }
}

fn service(backend: &Pod) -> Vec<ClusterChange> {
    let svc = Service {
        namespace: backend.namespace.clone(),
        name: "web".into(),
        service_type: ServiceType::ClusterIp,
        cluster_ips: vec![ip(VIP)],
        ports: vec![ServicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            target_port: PortRef::Name("http".into()),
            node_port: None,
        }],
        selector: Some(Labels::new()),
        external_ips: vec![],
        load_balancer_ips: vec![],
        external_traffic_policy: TrafficPolicy::Cluster,
        internal_traffic_policy: TrafficPolicy::Cluster,
        session_affinity: SessionAffinity::None,
    };
    let http = backend.ports[0].port;
    let slice = EndpointSlice {
        namespace: backend.namespace.clone(),
        name: "web-1".into(),
        service_name: Some("web".into()),
        address_type: AddressType::Ipv4,
        ports: vec![EndpointPort { name: "http".into(), port: Some(http), protocol: Protocol::Tcp }],
        endpoints: vec![Endpoint {
            addresses: vec![backend.network.as_ref().unwrap().ip_addresses[0].addr()],
            conditions: EndpointConditions { ready: Some(true), serving: Some(true), terminating: Some(false) },
            node: backend.node.clone(),
            zone: None,
        }],
    };
    vec![ClusterChange::UpsertService(svc), ClusterChange::UpsertEndpointSlice(slice)]
}

// ---- frames ----

const SYN: u8 = 0x02;
const SYN_ACK: u8 = 0x12;
const ACK: u8 = 0x10;

impl Proto {
    fn number(self) -> u8 {
        match self {
            Proto::Tcp(_) => 6,
            Proto::Udp(_) => 17,
            Proto::Sctp(_) => 132,
            Proto::Icmp => 1,
        }
    }

    fn dport(self) -> u16 {
        match self {
            Proto::Tcp(d) | Proto::Udp(d) | Proto::Sctp(d) => d,
            Proto::Icmp => 0,
        }
    }
}

/// An IPv4 frame: TCP (with `flags`), UDP, SCTP between ports, or an ICMP echo (`sport`
/// is its id; `reply` makes it an echo reply).
#[allow(clippy::too_many_arguments)]
fn frame(
    eth_src: MacAddr,
    eth_dst: MacAddr,
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: u8,
    reply: bool,
) -> Vec<u8> {
    let l4: Vec<u8> = match proto {
        6 => {
            let mut t = vec![0u8; 20];
            t[0..2].copy_from_slice(&sport.to_be_bytes());
            t[2..4].copy_from_slice(&dport.to_be_bytes());
            t[4..8].copy_from_slice(&1000u32.to_be_bytes());
            t[8..12].copy_from_slice(&(if flags & ACK != 0 { 2000u32 } else { 0 }).to_be_bytes());
            t[12] = 0x50;
            t[13] = flags;
            t[14..16].copy_from_slice(&1024u16.to_be_bytes());
            t
        }
        1 => {
            let mut e = vec![0u8; 16];
            e[0] = if reply { 0 } else { 8 };
            e[4..6].copy_from_slice(&sport.to_be_bytes());
            e[6..8].copy_from_slice(&1u16.to_be_bytes());
            e
        }
        _ => {
            let mut u = vec![0u8; 12];
            u[0..2].copy_from_slice(&sport.to_be_bytes());
            u[2..4].copy_from_slice(&dport.to_be_bytes());
            if proto == 17 {
                u[4..6].copy_from_slice(&12u16.to_be_bytes());
            }
            u
        }
    };
    let mut f = Vec::new();
    f.extend_from_slice(&eth_dst.0);
    f.extend_from_slice(&eth_src.0);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&(20 + l4.len() as u16).to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    f.extend_from_slice(&h);
    f.extend_from_slice(&l4);
    fill_checksums(&mut f);
    f
}

fn ip_src(f: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(f[26], f[27], f[28], f[29])
}

fn ip_dst(f: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(f[30], f[31], f[32], f[33])
}

/// Source and destination port (an ICMP echo's id twice).
fn l4_ports(f: &[u8]) -> (u16, u16) {
    if f[23] == 1 {
        let id = u16::from_be_bytes([f[38], f[39]]);
        return (id, id);
    }
    (u16::from_be_bytes([f[34], f[35]]), u16::from_be_bytes([f[36], f[37]]))
}

fn mac(ip: Ipv4Addr) -> MacAddr {
    MacAddr::derived(IpAddr::V4(ip))
}

fn gateway(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, n, 1)
}

fn mgmt_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, n, 2)
}

fn same_subnet(a: Ipv4Addr, b: Ipv4Addr) -> bool {
    a.octets()[..3] == b.octets()[..3]
}

/// Runs one connection and checks it against the model.
fn check(f: &mut Fabric, model: &Model, src: &Src, dst: &Dst, proto: Proto, sport: u16) -> Result<(), TestCaseError> {
    let npods = f.pods.len();
    let (src_node, src_ip, src_port, src_peer) = match *src {
        Src::Pod(i) => {
            let i = i % npods;
            (f.node_of(i), f.pod_ip(i), i as u32 + 1, Peer::Pod(f.pods[i].key()))
        }
        Src::Host(n) => (n, mgmt_ip(n), MGMT, Peer::Host { node: format!("n{n}"), ip: IpAddr::V4(mgmt_ip(n)) }),
    };
    // The address the packet is sent to, the pod it must reach, and what the model judges
    // (a Service is judged after DNAT: its backend on the backend's port).
    let backend = 0;
    let (dst_ip, proto, expect_pod, dst_peer) = match *dst {
        Dst::Pod(j) => {
            let j = j % npods;
            (f.pod_ip(j), proto, Some(j), Peer::Pod(f.pods[j].key()))
        }
        Dst::Service => (VIP.parse().unwrap(), Proto::Tcp(80), Some(backend), Peer::Pod(f.pods[backend].key())),
        Dst::Outside(k) => (OUTSIDE[k].parse().unwrap(), proto, None, Peer::External(ip(OUTSIDE[k]))),
    };
    let transport = match (dst, proto) {
        (Dst::Service, _) => Transport::Port(Protocol::Tcp, f.pods[backend].ports[0].port),
        (_, Proto::Tcp(p)) => Transport::Port(Protocol::Tcp, p),
        (_, Proto::Udp(p)) => Transport::Port(Protocol::Udp, p),
        (_, Proto::Sctp(p)) => Transport::Port(Protocol::Sctp, p),
        (_, Proto::Icmp) => Transport::Icmp,
    };
    let verdict = model.verdict(&Connection { src: src_peer, dst: dst_peer, transport });
    // A pod sends to its own subnet directly, to the rest through its gateway.
    let eth_dst = if same_subnet(src_ip, dst_ip) { mac(dst_ip) } else { mac(gateway(src_node)) };
    let p = proto.number();
    let first = frame(mac(src_ip), eth_dst, p, src_ip, dst_ip, sport, proto.dport(), SYN, false);
    let landed = f.send(src_node, src_port, first);
    let ctx = format!("{src:?} -> {dst:?} {proto:?}: the model says {verdict}");

    let arrived = landed.iter().find_map(|l| match (l, expect_pod) {
        (Landed::Pod(j, bytes), Some(want)) if *j == want => Some(bytes.clone()),
        (Landed::Outside(n, bytes), None) if ip_dst(bytes) == dst_ip => Some((*n, bytes.clone())).map(|(_, b)| b),
        _ => None,
    });
    prop_assert_eq!(arrived.is_some(), verdict.allowed(), "{}; landed {:?}", ctx, landed);
    let Some(arrived) = arrived else { return Ok(()) };

    // The reply, from where the first packet arrived, back to where it came from.
    let (a_src, a_dst) = (ip_src(&arrived), ip_dst(&arrived));
    let (a_sport, a_dport) = l4_ports(&arrived);
    let reply_landed = match expect_pod {
        Some(j) => {
            let n = f.node_of(j);
            let eth = if same_subnet(a_dst, a_src) { mac(a_src) } else { mac(gateway(n)) };
            let reply = frame(mac(a_dst), eth, p, a_dst, a_src, a_dport, a_sport, SYN_ACK, true);
            f.send(n, j as u32 + 1, reply)
        }
        None => {
            let n = landed.iter().find_map(|l| if let Landed::Outside(n, _) = l { Some(*n) } else { None }).unwrap();
            let reply = frame(GATEWAY_MAC, NIC_MAC, p, a_dst, a_src, a_dport, a_sport, SYN_ACK, true);
            f.send(n, UPLINK, reply)
        }
    };
    let back = reply_landed.iter().find_map(|l| match (l, src) {
        (Landed::Pod(i, b), Src::Pod(s)) if *i == s % npods => Some(b.clone()),
        (Landed::Host(n, b), Src::Host(h)) if n == h => Some(b.clone()),
        _ => None,
    });
    prop_assert!(back.is_some(), "the reply did not come back: {}; reply landed {:?}", ctx, reply_landed);
    let back = back.unwrap();
    prop_assert_eq!((ip_src(&back), ip_dst(&back)), (dst_ip, src_ip), "reply un-NATed: {}", ctx);

    // A second packet of the connection passes too.
    let second = frame(mac(src_ip), eth_dst, p, src_ip, dst_ip, sport, proto.dport(), ACK, false);
    let landed2 = f.send(src_node, src_port, second);
    let again = landed2.iter().any(|l| match (l, expect_pod) {
        (Landed::Pod(j, _), Some(want)) => *j == want,
        (Landed::Outside(..), None) => true,
        _ => false,
    });
    prop_assert!(again, "the second packet did not pass: {}; landed {:?}", ctx, landed2);
    Ok(())
}

fn namespaces(teams: &[bool]) -> Vec<Namespace> {
    teams
        .iter()
        .enumerate()
        .map(|(i, red)| Namespace {
            name: format!("ns{i}"),
            labels: if *red { [("team".to_owned(), "red".to_owned())].into_iter().collect() } else { Labels::new() },
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn compiled_policies_agree_with_the_reference_model(
        pods in proptest::collection::vec(pod_spec(), 2..8),
        policies in proptest::collection::vec(0..6usize, 0..5).prop_flat_map(|ids| {
            ids.into_iter().enumerate().map(|(i, _)| policy(i)).collect::<Vec<_>>()
        }),
        teams in proptest::collection::vec(any::<bool>(), 3),
        service in any::<bool>(),
        conns in proptest::collection::vec(conn(), 1..12),
    ) {
        let pods: Vec<Pod> = pods.iter().enumerate().map(|(i, s)| pod(i, s)).collect();
        let namespaces = namespaces(&teams);
        let mut f = Fabric::new(pods.clone(), &policies, &namespaces, service.then_some(0));
        prop_assert_eq!(f.engine.issues().filter(|i| !matches!(i.object, skein_netmodel::southbound::Owner::Policy(_))).count(), 0);
        let model = Model::new(&namespaces, &pods, &policies);
        for (k, (src, dst, proto)) in conns.iter().enumerate() {
            if matches!(dst, Dst::Service) && !service {
                continue;
            }
            // The uplink takes back TCP, UDP and ICMP only (SCTP out works, its replies
            // do not: a limit of the uplink, not of policy).
            if matches!((dst, proto), (Dst::Outside(_), Proto::Sctp(_))) {
                continue;
            }
            // A pod's packets to its own address never leave it (through its Service
            // they do: hairpin, tested as Dst::Service from p0).
            if let (Src::Pod(a), Dst::Pod(b)) = (src, dst) && a % pods.len() == b % pods.len() {
                continue;
            }
            check(&mut f, &model, src, dst, *proto, 40000 + k as u16)?;
        }
    }
}

/// The issue's scenario, by hand: a policy selecting `app=cart` allows ingress only from
/// `app=client` on a named port — directly, across nodes and through the Service — and a
/// change of the client's labels is enforced on its next connection, while an
/// established connection is cut only if the new policy denies it (OVN's semantics).
#[test]
fn the_issues_scenario_and_a_label_change() {
    let spec = |node, app: &str, http| {
        let mut s = PodSpec { ns: 0, node, app: None, tier: None, http, metrics: false };
        s.app = Some(if app == "a" { 0 } else { 1 });
        s
    };
    // p0 cart on n0 (http 8080), p1 cart on n1 (http 9090), p2 client (app=b) on n2,
    // p3 client on n0.
    let specs = [spec(0, "a", 8080), spec(1, "a", 9090), spec(2, "b", 8080), spec(0, "b", 8080)];
    let pods: Vec<Pod> = specs.iter().enumerate().map(|(i, s)| pod(i, s)).collect();
    let np = NetworkPolicy {
        namespace: "ns0".into(),
        name: "cart".into(),
        pod_selector: LabelSelector {
            match_labels: [("app".to_owned(), "a".to_owned())].into_iter().collect(),
            match_expressions: vec![],
        },
        policy_types: vec![],
        ingress: vec![PolicyRule {
            peers: vec![PolicyPeer {
                pod_selector: Some(LabelSelector {
                    match_labels: [("app".to_owned(), "b".to_owned())].into_iter().collect(),
                    match_expressions: vec![],
                }),
                ..Default::default()
            }],
            ports: vec![PolicyPort {
                protocol: Protocol::Tcp,
                port: Some(PortRef::Name("http".into())),
                end_port: None,
            }],
        }],
        egress: vec![],
    };
    let namespaces = namespaces(&[false, false, false]);
    let mut f = Fabric::new(pods.clone(), std::slice::from_ref(&np), &namespaces, Some(0));
    let model = Model::new(&namespaces, &pods, [&np]);
    let run = |f: &mut Fabric, src, dst, proto, sport| check(f, &model, &src, &dst, proto, sport).unwrap();
    // Allowed: client → cart on each cart's own http number, locally and across nodes.
    run(&mut f, Src::Pod(3), Dst::Pod(0), Proto::Tcp(8080), 41000);
    run(&mut f, Src::Pod(2), Dst::Pod(1), Proto::Tcp(9090), 41001);
    run(&mut f, Src::Pod(2), Dst::Service, Proto::Tcp(80), 41002);
    // Denied: the wrong number for that pod, ICMP, a cart as the client.
    run(&mut f, Src::Pod(2), Dst::Pod(1), Proto::Tcp(8080), 41003);
    run(&mut f, Src::Pod(2), Dst::Pod(0), Proto::Icmp, 41004);
    run(&mut f, Src::Pod(1), Dst::Pod(0), Proto::Tcp(8080), 41005);
    // The node's own host (kubelet) always reaches its pods; another node's does not.
    run(&mut f, Src::Host(0), Dst::Pod(0), Proto::Tcp(8080), 41006);
    run(&mut f, Src::Host(1), Dst::Pod(0), Proto::Tcp(8080), 41007);

    // An established connection p2 → p1, then p2 loses its label: the next packet of the
    // established connection is judged again and dropped, as is a new connection.
    let sport = 41010;
    let (p2, p1) = (f.pod_ip(2), f.pod_ip(1));
    let from_p2 = |sport, flags| frame(mac(p2), mac(gateway(2)), 6, p2, p1, sport, 9090, flags, false);
    let from_p1 = |flags| frame(mac(p1), mac(gateway(1)), 6, p1, p2, 9090, sport, flags, false);
    let reaches = |l: &[Landed], pod: usize| l.iter().any(|l| matches!(l, Landed::Pod(p, _) if *p == pod));
    assert!(reaches(&f.send(2, 3, from_p2(sport, SYN)), 1));
    assert!(reaches(&f.send(1, 2, from_p1(SYN_ACK)), 2));
    assert!(reaches(&f.send(2, 3, from_p2(sport, ACK)), 1));
    // An unrelated change keeps it flowing.
    let mut other = np.clone();
    other.name = "unrelated".into();
    f.engine.apply([ClusterChange::UpsertNetworkPolicy(other)]);
    f.install();
    assert!(reaches(&f.send(2, 3, from_p2(sport, ACK)), 1), "still allowed: it flows on");
    assert!(reaches(&f.send(1, 2, from_p1(ACK)), 2));
    let mut relabelled = f.pods[2].clone();
    relabelled.labels.insert("app".into(), "z".into());
    f.pods[2] = relabelled.clone();
    f.engine.apply([ClusterChange::UpsertPod(relabelled)]);
    f.install();
    assert!(f.send(2, 3, from_p2(sport, ACK)).is_empty(), "the established connection is cut by the new verdict");
    assert!(f.send(1, 2, from_p1(ACK)).is_empty(), "and its replies too (blocked both ways)");
    assert!(f.send(2, 3, from_p2(sport + 1, SYN)).is_empty(), "a new connection is denied");
}

/// What the user sees: per-policy counters from the datapath's flow counters, and a
/// trace that names the policy and rule that allowed a packet or the policies whose
/// isolation dropped it.
#[test]
fn counters_and_traces_name_the_policy_and_rule() {
    use std::sync::Arc;

    use skein_agent::policyview::PolicyView;
    use skein_datapath::control::Control;

    let spec = |node, app: u8| PodSpec { ns: 0, node, app: Some(app), tier: None, http: 8080, metrics: false };
    // p0: a cart (app=a) on n0; p1: a client (app=b) on n0.
    let pods: Vec<Pod> = [spec(0, 0), spec(0, 1)].iter().enumerate().map(|(i, s)| pod(i, s)).collect();
    let select = |app: &str| LabelSelector {
        match_labels: [("app".to_owned(), app.to_owned())].into_iter().collect(),
        match_expressions: vec![],
    };
    let np = NetworkPolicy {
        namespace: "ns0".into(),
        name: "cart".into(),
        pod_selector: select("a"),
        policy_types: vec![PolicyType::Ingress],
        ingress: vec![PolicyRule {
            peers: vec![PolicyPeer { pod_selector: Some(select("b")), ..Default::default() }],
            ports: vec![PolicyPort {
                protocol: Protocol::Tcp,
                port: Some(PortRef::Name("http".into())),
                end_port: None,
            }],
        }],
        egress: vec![],
    };
    let namespaces = namespaces(&[false, false, false]);
    let mut f = Fabric::new(pods.clone(), std::slice::from_ref(&np), &namespaces, None);
    let (p0, p1) = (f.pod_ip(0), f.pod_ip(1));
    let to_cart = |port, sport| frame(mac(p1), mac(p0), 6, p1, p0, sport, port, SYN, false);
    assert_eq!(f.send(0, 2, to_cart(8080, 50000)).len(), 1, "allowed");
    assert_eq!(f.send(0, 2, to_cart(8080, 50001)).len(), 1, "allowed");
    assert!(f.send(0, 2, to_cart(9999, 50002)).is_empty(), "denied");

    let view = f.engine.snapshot("n0").unwrap();
    let policies = PolicyView::new(&view);
    let counts = policies.counts(&f.dps[0].flow_stats());
    let c = counts[&(ObjectKey::new("ns0", "cart"), PolicyType::Ingress)];
    assert_eq!((c.allowed, c.denied), (2, 1), "{counts:?}");

    // The denied packet was offered to the audit log, which names the policy.
    let audit = f.dps[0].take_audit();
    assert_eq!(audit.records.len(), 1);
    let r = audit.records[0];
    assert_eq!((r.src, r.dst, r.dport), (Some(IpAddr::V4(p1)), Some(IpAddr::V4(p0)), 9999));
    let denial = policies.denial_logged(&r).expect("the log id maps back to the denial");
    assert_eq!(denial.policies, vec![ObjectKey::new("ns0", "cart")]);

    // A trace of each through a datapath holding the same flows.
    let dp = Arc::new(Datapath::new(DatapathConfig::default()));
    dp.apply(&translate(&view, &bindings(0, &pods)).unwrap().to_mods()).unwrap();
    let control = Control::new(dp, Box::new(Default::default), || 0);
    let packet = |port| {
        format!(
            "in_port=2,dl_src={},dl_dst={},tcp,nw_src={p1},nw_dst={p0},tp_src=40000,tp_dst={port}",
            mac(p1),
            mac(p0)
        )
    };
    let allowed = policies.annotate_trace(&control.trace(&packet(8080), &[]).unwrap());
    assert!(allowed.contains("-> networkpolicy ns0/cart: spec.ingress[0] allows"), "{allowed}");
    assert!(allowed.ends_with("NetworkPolicy: networkpolicy ns0/cart: spec.ingress[0] allows\n"), "{allowed}");
    let denied = policies.annotate_trace(&control.trace(&packet(9999), &[]).unwrap());
    assert!(
        denied.contains(
            "NetworkPolicy: networkpolicy: ingress denied: isolated by ns0/cart, and none of their rules allows it"
        ),
        "{denied}"
    );
}

/// A Service whose backend is outside the pod network (as the API server's): the client's
/// egress is judged at its own chassis after DNAT, the load-balanced connection committed
/// as allowed in the same zone, and the reply, un-NATed there, let back in.
#[test]
fn a_service_with_an_outside_backend_is_judged_after_dnat_at_the_client() {
    let spec = PodSpec { ns: 0, node: 0, app: Some(0), tier: None, http: 8080, metrics: false };
    let pods = vec![pod(0, &spec)];
    let egress_to = |cidr: &str| NetworkPolicy {
        namespace: "ns0".into(),
        name: "out".into(),
        pod_selector: LabelSelector::default(),
        policy_types: vec![PolicyType::Ingress, PolicyType::Egress],
        ingress: vec![],
        egress: vec![PolicyRule {
            peers: vec![PolicyPeer {
                ip_block: Some(IpBlock { cidr: cidr.parse().unwrap(), except: vec![] }),
                ..Default::default()
            }],
            ports: vec![],
        }],
    };
    for (cidr, allowed) in [("203.0.113.0/24", true), ("192.0.2.0/24", false)] {
        let np = egress_to(cidr);
        let mut f = Fabric::new(pods.clone(), std::slice::from_ref(&np), &namespaces(&[false; 3]), None);
        let mut changes = service(&pods[0]);
        if let ClusterChange::UpsertEndpointSlice(s) = &mut changes[1] {
            s.endpoints[0].addresses = vec![ip(OUTSIDE[0])];
            s.endpoints[0].node = None;
        }
        f.engine.apply(changes);
        f.install();
        let p0 = f.pod_ip(0);
        let vip: Ipv4Addr = VIP.parse().unwrap();
        let out = f.send(0, 1, frame(mac(p0), mac(gateway(0)), 6, p0, vip, 40000, 80, SYN, false));
        let Some(Landed::Outside(_, sent)) = out.first() else {
            assert!(!allowed, "{cidr}: the SYN must leave: {out:?}");
            continue;
        };
        assert!(allowed, "{cidr}: denied egress left: {out:?}");
        assert_eq!(ip_dst(sent), OUTSIDE[0].parse::<Ipv4Addr>().unwrap(), "DNATed to the backend");
        let (sport, _) = l4_ports(sent);
        let reply = frame(GATEWAY_MAC, NIC_MAC, 6, ip_dst(sent), ip_src(sent), 8080, sport, SYN_ACK, true);
        let back = f.send(0, UPLINK, reply);
        let Some(Landed::Pod(0, b)) = back.first() else { panic!("the reply must come back: {back:?}") };
        assert_eq!((ip_src(b), ip_dst(b)), (vip, p0), "un-SNATed and un-DNATed");
    }
}
