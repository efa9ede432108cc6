//! `master-bench`: the master's figures for the issue's reference cluster — by default
//! 100 nodes × 100 pods, 1,000 Services × 10 endpoints and 1,000 NetworkPolicies — with
//! in-process agents following their chassis over real gRPC (tonic over loopback TCP).
//!
//! Two clusters are compiled in one run: the same pods and Services without policies (the
//! baseline), then with the policies (a realistic mix per namespace: default deny,
//! allow-from-namespace, allow-from-app on named ports, allow from a monitoring
//! namespace, egress to DNS and an ipBlock with except). Prints the figures, then the
//! summary lines
//! `full_compile_ms=.. endpoint_change_acked_ms=.. snapshot_bytes_per_chassis=.. memory_mb=..`
//! (the baseline, as before) and
//! `policy_full_compile_ms=.. policy_label_change_acked_ms=.. policy_snapshot_bytes_per_chassis=.. policy_memory_mb=..`
//! (medians of several changes; memory is the resident set after the compile). Asserts
//! nothing about time; it fails only if the scale rule is broken (a chassis's snapshot
//! grows with pods on other nodes).
//!
//! `cargo run --release -p skein-master --bin master-bench -- [--nodes N] [--pods-per-node P]
//!  [--services S] [--policies K] [--agents A]`
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use prometheus_client::registry::Registry;
use prost::Message;
use skein_master::auth::StaticTokens;
use skein_master::grpc::SouthboundService;
use skein_master::metrics::MasterMetrics;
use skein_master::state::Shared;
use skein_netmodel::annotations::{ChassisAnnotation, Encap, PodNetwork};
use skein_netmodel::cluster::{
    AddressType, ContainerPort, Endpoint, EndpointConditions, EndpointPort, EndpointSlice, IpBlock, LabelSelector,
    Labels, Namespace, NetworkPolicy, Node, Pod, PolicyPeer, PolicyPort, PolicyRule, PolicyType, PortRef, Protocol,
    Service, ServicePort, ServiceType, SessionAffinity, TrafficPolicy,
};
use skein_netmodel::{ClusterChange, Engine, IpNet, MacAddr, NetworkConfig};
use skein_southbound::convert::snapshot_to_proto;
use skein_southbound::{AgentClient, ClientSettings, ClientTls, Registration, TokenSource};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The sizes of the cluster.
#[derive(Parser, Debug, Clone, Copy)]
#[command(about = "The master's compile, change-latency and snapshot figures")]
struct Sizes {
    /// Nodes (each with a chassis).
    #[arg(long, default_value_t = 100)]
    nodes: u32,
    /// Pods per node.
    #[arg(long, default_value_t = 100)]
    pods_per_node: u32,
    /// ClusterIP Services (10 endpoints each).
    #[arg(long, default_value_t = 1000)]
    services: u32,
    /// NetworkPolicies (10 per namespace; namespaces = policies / 10).
    #[arg(long, default_value_t = 1000)]
    policies: u32,
    /// In-process agents subscribed over gRPC (the first A nodes; default: every node).
    #[arg(long)]
    agents: Option<u32>,
    /// Compile the cluster with policies and exit (for profiling the compiler).
    #[arg(long)]
    compile_only: bool,
}

const ENDPOINTS: u32 = 10;
const ENDPOINT_CHANGES: u32 = 21;
const LABEL_CHANGES: u32 = 21;
/// Apps (deployments) per namespace.
const APPS: u32 = 10;

fn ip(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// Node `n`'s subnet `10.(n / 256).(n % 256).0/24`-style address inside 10.0.0.0/8 (the
/// cluster network is widened to fit 1,000 nodes).
fn node_net(n: u32) -> (u8, u8) {
    let n = n + 256; // 10.1.0.0/24 and up: clear of 10.0.x
    ((n >> 8) as u8, n as u8)
}

fn node(n: u32) -> Node {
    let (a, b) = node_net(n);
    let [_, _, t2, t3] = (0xc633_6400u32 + n + 1).to_be_bytes();
    let [_, _, i2, i3] = (0xc000_0200u32 + n).to_be_bytes();
    Node {
        name: format!("n{n}"),
        internal_ips: vec![ip(192, 0, i2, i3)],
        subnets: vec![IpNet::clamped(ip(10, a, b, 0), 24)],
        chassis: Some(ChassisAnnotation {
            id: format!("chassis-{n}"),
            tunnel_ip: ip(198, 51, t2, t3),
            encap: Encap::Geneve,
        }),
        zone: None,
    }
}

fn namespaces(sizes: Sizes) -> u32 {
    (sizes.policies / 10).max(1)
}

/// Pod `host` of node `n`: its namespace, app and named ports follow from its position, so
/// every node holds pods of every namespace, as deployments spread.
fn pod(sizes: Sizes, name: String, n: u32, host: u32, app_shift: u32) -> Pod {
    let (a, b) = node_net(n);
    let addr = ip(10, a, b, host as u8);
    let index = n * sizes.pods_per_node + host;
    let ns = index % namespaces(sizes);
    let app = (index / namespaces(sizes) + app_shift) % APPS;
    let mut labels = Labels::new();
    labels.insert("app".into(), format!("app-{app}"));
    labels.insert("tier".into(), if app < 5 { "frontend".into() } else { "backend".into() });
    labels.insert("pod-template-hash".into(), format!("{:x}", 0x5f00 + app));
    Pod {
        namespace: format!("ns-{ns}"),
        name,
        uid: format!("uid-{n}-{host}"),
        node: Some(format!("n{n}")),
        labels,
        host_network: false,
        terminal: false,
        ports: vec![
            ContainerPort {
                name: Some("http".into()),
                port: if app.is_multiple_of(3) { 9090 } else { 8080 },
                protocol: Protocol::Tcp,
            },
            ContainerPort { name: Some("metrics".into()), port: 9100, protocol: Protocol::Tcp },
        ],
        network: Some(PodNetwork {
            ip_addresses: vec![IpNet::clamped(addr, 24)],
            mac_address: MacAddr::derived(addr),
            gateway_ips: vec![ip(10, a, b, 1)],
            routes: Vec::new(),
            mtu: 1400,
        }),
    }
}

fn service(s: u32) -> Service {
    Service {
        namespace: "default".into(),
        name: format!("s{s}"),
        service_type: ServiceType::ClusterIp,
        cluster_ips: vec![ip(172, 16 + (s >> 16) as u8, (s >> 8) as u8, s as u8)],
        ports: vec![ServicePort {
            name: String::new(),
            protocol: Protocol::Tcp,
            port: 80,
            target_port: PortRef::Number(8080),
            node_port: None,
        }],
        selector: None,
        external_ips: Vec::new(),
        load_balancer_ips: Vec::new(),
        external_traffic_policy: TrafficPolicy::Cluster,
        internal_traffic_policy: TrafficPolicy::Cluster,
        session_affinity: SessionAffinity::None,
    }
}

fn slice(sizes: Sizes, s: u32, round: u32) -> EndpointSlice {
    let endpoints = (0..ENDPOINTS)
        .map(|i| {
            let n = (s * 7 + i * 13 + round) % sizes.nodes;
            let (a, b) = node_net(n);
            Endpoint {
                addresses: vec![ip(10, a, b, (3 + (s + i + round) % sizes.pods_per_node) as u8)],
                conditions: EndpointConditions { ready: Some(true), serving: None, terminating: None },
                node: Some(format!("n{n}")),
                zone: None,
            }
        })
        .collect();
    EndpointSlice {
        namespace: "default".into(),
        name: format!("s{s}-1"),
        service_name: Some(format!("s{s}")),
        address_type: AddressType::Ipv4,
        ports: vec![EndpointPort { name: String::new(), port: Some(8080), protocol: Protocol::Tcp }],
        endpoints,
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn select(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector { match_labels: labels(pairs), match_expressions: vec![] }
}

fn pods_peer(s: LabelSelector) -> PolicyPeer {
    PolicyPeer { pod_selector: Some(s), ..Default::default() }
}

fn named(name: &str) -> PolicyPort {
    PolicyPort { protocol: Protocol::Tcp, port: Some(PortRef::Name(name.into())), end_port: None }
}

/// Namespace `ns`'s ten policies.
fn policies(ns: u32) -> Vec<NetworkPolicy> {
    let namespace = format!("ns-{ns}");
    let np = |name: String, pod_selector, policy_types, ingress, egress| NetworkPolicy {
        namespace: namespace.clone(),
        name,
        pod_selector,
        policy_types,
        ingress,
        egress,
    };
    let mut out = vec![
        // Default deny ingress, and allow from the pods of the namespace.
        np("default-deny".into(), LabelSelector::default(), vec![PolicyType::Ingress], vec![], vec![]),
        np(
            "allow-same-namespace".into(),
            LabelSelector::default(),
            vec![PolicyType::Ingress],
            vec![PolicyRule { peers: vec![pods_peer(LabelSelector::default())], ports: vec![] }],
            vec![],
        ),
        // Metrics scraped from the monitoring namespaces.
        np(
            "allow-monitoring".into(),
            LabelSelector::default(),
            vec![PolicyType::Ingress],
            vec![PolicyRule {
                peers: vec![PolicyPeer {
                    namespace_selector: Some(select(&[("team", "monitoring")])),
                    ..Default::default()
                }],
                ports: vec![named("metrics")],
            }],
            vec![],
        ),
        // Egress: DNS to kube-system, the namespace itself, and an address block.
        np(
            "egress".into(),
            LabelSelector::default(),
            vec![PolicyType::Egress],
            vec![],
            vec![
                PolicyRule {
                    peers: vec![PolicyPeer {
                        namespace_selector: Some(select(&[("kubernetes.io/metadata.name", "kube-system")])),
                        pod_selector: Some(select(&[("k8s-app", "kube-dns")])),
                        ip_block: None,
                    }],
                    ports: vec![PolicyPort {
                        protocol: Protocol::Udp,
                        port: Some(PortRef::Number(53)),
                        end_port: None,
                    }],
                },
                PolicyRule { peers: vec![pods_peer(LabelSelector::default())], ports: vec![] },
            ],
        ),
        np(
            "egress-to-storage".into(),
            select(&[("tier", "backend")]),
            vec![PolicyType::Egress],
            vec![],
            vec![PolicyRule {
                peers: vec![PolicyPeer {
                    ip_block: Some(IpBlock {
                        cidr: IpNet::clamped(ip(203, 0, 113, 0), 24),
                        except: vec![IpNet::clamped(ip(203, 0, 113, 128), 25)],
                    }),
                    ..Default::default()
                }],
                ports: vec![PolicyPort { protocol: Protocol::Tcp, port: Some(PortRef::Number(443)), end_port: None }],
            }],
        ),
    ];
    // Allow-from-app on named ports: app-k takes http from app-(k+1).
    for k in 0..5 {
        out.push(np(
            format!("allow-app-{k}"),
            select(&[("app", &format!("app-{k}"))]),
            vec![],
            vec![PolicyRule {
                peers: vec![pods_peer(select(&[("app", &format!("app-{}", k + 1))]))],
                ports: vec![named("http")],
            }],
            vec![],
        ));
    }
    out
}

fn cluster(sizes: Sizes, with_policies: bool) -> Vec<ClusterChange> {
    let mut changes = Vec::new();
    if with_policies {
        for ns in 0..namespaces(sizes) {
            let team = if ns.is_multiple_of(10) { "monitoring".to_owned() } else { format!("team-{}", ns % 7) };
            changes.push(ClusterChange::UpsertNamespace(Namespace {
                name: format!("ns-{ns}"),
                labels: labels(&[("team", &team)]),
            }));
            changes.extend(policies(ns).into_iter().map(ClusterChange::UpsertNetworkPolicy));
        }
    }
    for n in 0..sizes.nodes {
        changes.push(ClusterChange::UpsertNode(node(n)));
        for h in 3..3 + sizes.pods_per_node {
            changes.push(ClusterChange::UpsertPod(pod(sizes, format!("p{n}-{h}"), n, h, 0)));
        }
    }
    for s in 0..sizes.services {
        changes.push(ClusterChange::UpsertService(service(s)));
        changes.push(ClusterChange::UpsertEndpointSlice(slice(sizes, s, 0)));
    }
    changes
}

/// Resident set size in MB (from /proc/self/status).
fn rss_mb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn snapshot_bytes(shared: &Shared, chassis: &str) -> usize {
    shared
        .with_engine(|e| e.snapshot(chassis))
        .map_or(0, |v| snapshot_to_proto(&v, shared.master_id(), 1).encoded_len())
}

async fn wait_all_acked(acked: &mut watch::Receiver<std::collections::BTreeMap<String, u64>>, want: &[(String, u64)]) {
    loop {
        {
            let now = acked.borrow_and_update();
            if want.iter().all(|(c, v)| now.get(c).is_some_and(|a| a >= v)) {
                return;
            }
        }
        if acked.changed().await.is_err() {
            return;
        }
    }
}

/// One compiled cluster served to agents.
struct Run {
    compile: Duration,
    rss: f64,
    rss_added: f64,
    snapshot: usize,
    items: usize,
    shared: Arc<Shared>,
    agents: Vec<AgentClient>,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<()>,
    /// This master leads for the whole run.
    _leading: watch::Sender<bool>,
}

async fn start(sizes: Sizes, with_policies: bool) -> anyhow::Result<Run> {
    let changes = cluster(sizes, with_policies);
    let rss_before = rss_mb("VmRSS:");
    let mut config = NetworkConfig::default();
    // Room for 1,000 nodes: 10.0.0.0/8 in /24s.
    config.cluster_networks[0].cidr = IpNet::clamped(ip(10, 0, 0, 0), 8);
    let mut engine = Engine::new(config)?;
    let start = Instant::now();
    let update = engine.apply(changes);
    let compile = start.elapsed();
    let rss = rss_mb("VmRSS:");
    let issues = engine.issues().count();
    println!(
        "{} full compile: {:.1} ms, {} chassis, {} owner compilations, {issues} issues; RSS {rss_before:.0} MB → {rss:.0} MB",
        if with_policies { "with policies:" } else { "baseline:" },
        compile.as_secs_f64() * 1e3,
        update.added_chassis.len(),
        update.recompiled
    );
    let mut registry = Registry::default();
    let metrics = MasterMetrics::register(&mut registry);
    let shared = Arc::new(Shared::new(engine, metrics, "bench".into()));
    let snapshot = snapshot_bytes(&shared, "n0");
    let items = shared.with_engine(|e| e.snapshot("n0").map_or(0, |v| v.items.len()));
    println!("  snapshot of chassis n0: {items} items, {snapshot} bytes encoded");

    let shutdown = CancellationToken::new();
    let (leading_tx, leading) = watch::channel(true);
    let listener = SouthboundService::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
    let addr = listener.local_addr()?;
    // Authenticated and encrypted like a real master: one token per agent, an ephemeral CA.
    let tokens = StaticTokens::new((0..sizes.nodes).map(|n| (format!("bench-token-{n}"), format!("n{n}"))));
    let (ca_pem, tls) = skein_master::pki::ephemeral(&["skein-master.bench".to_owned()])?;
    let service = SouthboundService::new(Arc::clone(&shared), Arc::new(tokens), 2, leading, shutdown.clone());
    let server = tokio::spawn(async move {
        if let Err(error) = service.serve(listener, tls).await {
            eprintln!("master-bench: the southbound server failed: {error}");
        }
    });

    let mut acked = shared.acked();
    let start = Instant::now();
    let count = sizes.agents.unwrap_or(sizes.nodes).min(sizes.nodes);
    let agents: Vec<AgentClient> = (0..count)
        .map(|n| {
            let mut settings = ClientSettings::new(
                format!("https://{addr}"),
                Registration {
                    node_name: format!("n{n}"),
                    chassis_id: format!("chassis-{n}"),
                    tunnel_ip: node(n).chassis.map(|c| c.tunnel_ip).unwrap_or(ip(0, 0, 0, 0)),
                    encap: Encap::Geneve,
                },
            );
            let mut tls = ClientTls::new(ca_pem.clone());
            tls.server_name = Some("skein-master.bench".to_owned());
            settings.tls = Some(tls);
            settings.token = Some(TokenSource::Value(format!("bench-token-{n}")));
            AgentClient::start(settings)
        })
        .collect();
    let initial: Vec<(String, u64)> = (0..count).map(|n| (format!("n{n}"), 1)).collect();
    tokio::time::timeout(Duration::from_secs(600), wait_all_acked(&mut acked, &initial))
        .await
        .context("agents did not all install their snapshots within 600 s")?;
    println!(
        "  {count} agents subscribed and installed their snapshots in {:.0} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    Ok(Run {
        compile,
        rss,
        rss_added: rss - rss_before,
        snapshot,
        items,
        shared,
        agents,
        shutdown,
        server,
        _leading: leading_tx,
    })
}

impl Run {
    /// Applies `changes` and waits for every subscribed agent that got a delta to ack it.
    async fn change_acked(&self, changes: Vec<ClusterChange>) -> anyhow::Result<(Duration, usize)> {
        let mut acked = self.shared.acked();
        let subscribed = self.agents.len() as u32;
        let start = Instant::now();
        let update = self.shared.apply(changes, start);
        let want: Vec<(String, u64)> = update
            .deltas
            .iter()
            .filter(|d| d.chassis[1..].parse::<u32>().is_ok_and(|n| n < subscribed))
            .map(|d| (d.chassis.clone(), d.to_version))
            .collect();
        tokio::time::timeout(Duration::from_secs(60), wait_all_acked(&mut acked, &want))
            .await
            .context("agents did not acknowledge a change within 60 s")?;
        Ok((start.elapsed(), update.deltas.len()))
    }

    async fn stop(self) {
        drop(self.agents);
        self.shutdown.cancel();
        let _ = self.server.await;
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sizes = Sizes::parse();
    if sizes.nodes == 0 || sizes.nodes > 60_000 || sizes.pods_per_node == 0 || sizes.pods_per_node > 250 {
        bail!("--nodes must be 1..=60000 and --pods-per-node 1..=250 (addresses are .3–.252 of a /24)");
    }
    println!(
        "cluster: {} nodes × {} pods, {} Services × {ENDPOINTS} endpoints, {} policies in {} namespaces",
        sizes.nodes,
        sizes.pods_per_node,
        sizes.services,
        sizes.policies,
        namespaces(sizes)
    );

    if sizes.compile_only {
        let mut config = NetworkConfig::default();
        config.cluster_networks[0].cidr = IpNet::clamped(ip(10, 0, 0, 0), 8);
        let mut engine = Engine::new(config)?;
        let changes = cluster(sizes, true);
        let start = Instant::now();
        engine.apply(changes);
        println!("policy_full_compile_ms={:.1}", start.elapsed().as_secs_f64() * 1e3);
        return Ok(());
    }

    // The baseline: no policies.
    let base = start(sizes, false).await?;
    let mut samples = Vec::new();
    for round in 1..=ENDPOINT_CHANGES {
        let s = round * 37 % sizes.services.max(1);
        let (t, deltas) = base.change_acked(vec![ClusterChange::UpsertEndpointSlice(slice(sizes, s, round))]).await?;
        // (In small clusters a new round may give the same backends: no change at all.)
        if deltas == sizes.nodes as usize {
            samples.push(t);
        } else if deltas != 0 {
            bail!("an endpoint change produced {deltas} deltas, expected one per chassis ({})", sizes.nodes);
        }
    }
    if samples.is_empty() {
        bail!("no endpoint change changed anything");
    }
    let endpoint_change = median(samples);
    println!("  endpoint change → agents acked: median {:.2} ms", endpoint_change.as_secs_f64() * 1e3);
    // The scale rule: pods on other nodes do not grow a chassis's snapshot.
    let before = snapshot_bytes(&base.shared, "n0");
    let extra: Vec<ClusterChange> = (1..sizes.nodes)
        .map(|n| ClusterChange::UpsertPod(pod(sizes, format!("extra-{n}"), n, 3 + sizes.pods_per_node, 0)))
        .collect();
    base.shared.apply(extra, Instant::now());
    let after = snapshot_bytes(&base.shared, "n0");
    println!("  snapshot of n0 before/after {} pods added on other nodes: {before} / {after} bytes", sizes.nodes - 1);
    if after != before {
        bail!("scale rule broken: chassis n0's snapshot grew from {before} to {after} bytes");
    }
    let (base_compile, base_rss, base_snapshot) = (base.compile, base.rss, base.snapshot);
    base.stop().await;

    // With the policies.
    let run = start(sizes, true).await?;
    // One pod's labels change (it moves to another app of its namespace): its own
    // chassis recompiles it; every chassis holds the classes already.
    let mut samples = Vec::new();
    let mut touched = Vec::new();
    for round in 1..=LABEL_CHANGES {
        let n = (round * 13) % sizes.nodes;
        let h = 3 + (round * 7) % sizes.pods_per_node;
        let p = pod(sizes, format!("p{n}-{h}"), n, h, round);
        let (t, deltas) = run.change_acked(vec![ClusterChange::UpsertPod(p)]).await?;
        samples.push(t);
        touched.push(deltas);
    }
    let label_change = median(samples);
    touched.sort();
    println!(
        "  one pod's label change → affected agents acked: median {:.2} ms ({} chassis changed, median)",
        label_change.as_secs_f64() * 1e3,
        touched[touched.len() / 2]
    );
    // A remote pod with a new label class is one identity for every chassis; a pod with
    // an existing class costs chassis other than its own nothing.
    let before = snapshot_bytes(&run.shared, "n0");
    let extra: Vec<ClusterChange> = (1..sizes.nodes)
        .map(|n| ClusterChange::UpsertPod(pod(sizes, format!("extra-{n}"), n, 3 + sizes.pods_per_node, 0)))
        .collect();
    run.shared.apply(extra, Instant::now());
    let after = snapshot_bytes(&run.shared, "n0");
    println!("  snapshot of n0 before/after {} pods added on other nodes: {before} / {after} bytes", sizes.nodes - 1);
    if after != before {
        bail!("scale rule broken with policies: chassis n0's snapshot grew from {before} to {after} bytes");
    }
    let views = run.agents.iter().filter(|a| a.view().is_some()).count();
    println!("  {views} agents hold a view; n0: {} items", run.items);
    let (compile, rss, rss_added, snapshot) = (run.compile, run.rss, run.rss_added, run.snapshot);
    run.stop().await;

    println!(
        "full_compile_ms={:.1} endpoint_change_acked_ms={:.2} snapshot_bytes_per_chassis={base_snapshot} memory_mb={:.0}",
        base_compile.as_secs_f64() * 1e3,
        endpoint_change.as_secs_f64() * 1e3,
        base_rss
    );
    println!(
        "policy_full_compile_ms={:.1} policy_label_change_acked_ms={:.2} policy_snapshot_bytes_per_chassis={snapshot} policy_snapshot_ratio={:.2} policy_memory_mb={:.0} policy_compile_added_mb={:.0}",
        compile.as_secs_f64() * 1e3,
        label_change.as_secs_f64() * 1e3,
        snapshot as f64 / base_snapshot.max(1) as f64,
        rss,
        rss_added
    );
    Ok(())
}
