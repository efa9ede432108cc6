//! `master-bench`: the master's figures for the reference cluster — 100 nodes ×
//! 100 pods and 1,000 Services × 10 endpoints — with 100 in-process agents following
//! their chassis over real gRPC (tonic over loopback TCP).
//!
//! Prints the figures, then exactly one summary line:
//! `full_compile_ms=.. endpoint_change_acked_ms=.. snapshot_bytes_per_chassis=.. memory_mb=..`
//! (`endpoint_change_acked_ms` is the median of several endpoint changes; `memory_mb` the
//! resident set after the full compile). Asserts nothing about time; it fails only if the
//! scale rule is broken (a chassis's snapshot grows with pods on other nodes).
//!
//! `cargo run --release -p skein-master --bin master-bench`
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use prometheus_client::registry::Registry;
use prost::Message;
use skein_master::auth::StaticTokens;
use skein_master::grpc::SouthboundService;
use skein_master::metrics::MasterMetrics;
use skein_master::state::Shared;
use skein_netmodel::annotations::{ChassisAnnotation, Encap, PodNetwork};
use skein_netmodel::cluster::{
    AddressType, Endpoint, EndpointConditions, EndpointPort, EndpointSlice, Node, Pod, PortRef, Protocol, Service,
    ServicePort, ServiceType, SessionAffinity, TrafficPolicy,
};
use skein_netmodel::{ClusterChange, Engine, IpNet, MacAddr, NetworkConfig};
use skein_southbound::convert::snapshot_to_proto;
use skein_southbound::{AgentClient, ClientSettings, ClientTls, Registration, TokenSource};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const NODES: u32 = 100;
const PODS_PER_NODE: u32 = 100;
const SERVICES: u32 = 1000;
const ENDPOINTS: u32 = 10;
const ENDPOINT_CHANGES: u32 = 21;

fn ip(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn byte(v: u32) -> u8 {
    u8::try_from(v).unwrap_or(u8::MAX)
}

fn node(n: u32) -> Node {
    Node {
        name: format!("n{n}"),
        internal_ips: vec![ip(192, 0, 2, byte(n))],
        subnets: vec![IpNet::clamped(ip(10, 244, byte(n), 0), 24)],
        chassis: Some(ChassisAnnotation {
            id: format!("chassis-{n}"),
            tunnel_ip: ip(198, 51, 100, byte(n)),
            encap: Encap::Geneve,
        }),
        zone: None,
    }
}

fn pod(name: String, n: u32, host: u32) -> Pod {
    let addr = ip(10, 244, byte(n), byte(host));
    Pod {
        namespace: "default".into(),
        name,
        uid: format!("uid-{n}-{host}"),
        node: Some(format!("n{n}")),
        labels: Default::default(),
        host_network: false,
        terminal: false,
        ports: Vec::new(),
        network: Some(PodNetwork {
            ip_addresses: vec![IpNet::clamped(addr, 24)],
            mac_address: MacAddr::derived(addr),
            gateway_ips: vec![ip(10, 244, byte(n), 1)],
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
        cluster_ips: vec![ip(10, 96, byte(s / 250), byte(s % 250 + 1))],
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

fn slice(s: u32, round: u32) -> EndpointSlice {
    let endpoints = (0..ENDPOINTS)
        .map(|i| {
            let n = (s * 7 + i * 13 + round) % NODES;
            Endpoint {
                addresses: vec![ip(10, 244, byte(n), byte(3 + (s + i + round) % PODS_PER_NODE))],
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

fn cluster() -> Vec<ClusterChange> {
    let mut changes = Vec::new();
    for n in 0..NODES {
        changes.push(ClusterChange::UpsertNode(node(n)));
        for h in 3..3 + PODS_PER_NODE {
            changes.push(ClusterChange::UpsertPod(pod(format!("p{n}-{h}"), n, h)));
        }
    }
    for s in 0..SERVICES {
        changes.push(ClusterChange::UpsertService(service(s)));
        changes.push(ClusterChange::UpsertEndpointSlice(slice(s, 0)));
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let changes = cluster();
    let rss_before = rss_mb("VmRSS:");
    let mut engine = Engine::new(NetworkConfig::default())?;
    let start = Instant::now();
    let update = engine.apply(changes);
    let full_compile = start.elapsed();
    let rss_after = rss_mb("VmRSS:");
    println!(
        "full compile: {:.1} ms, {} chassis, {} owner compilations; RSS {rss_before:.0} MB → {rss_after:.0} MB",
        full_compile.as_secs_f64() * 1e3,
        update.added_chassis.len(),
        update.recompiled
    );

    let mut registry = Registry::default();
    let metrics = MasterMetrics::register(&mut registry);
    let shared = Arc::new(Shared::new(engine, metrics, "bench".into()));
    let snapshot = snapshot_bytes(&shared, "n0");
    let items = shared.with_engine(|e| e.snapshot("n0").map_or(0, |v| v.items.len()));
    println!("snapshot of chassis n0: {items} items, {snapshot} bytes encoded");

    let shutdown = CancellationToken::new();
    let (_leading_tx, leading) = watch::channel(true);
    let listener = SouthboundService::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
    let addr = listener.local_addr()?;
    // Authenticated and encrypted like a real master: one token per agent, an ephemeral CA.
    let tokens = StaticTokens::new((0..NODES).map(|n| (format!("bench-token-{n}"), format!("n{n}"))));
    let (ca_pem, tls) = skein_master::pki::ephemeral(&["skein-master.bench".to_owned()])?;
    let service = SouthboundService::new(Arc::clone(&shared), Arc::new(tokens), 2, leading, shutdown.clone());
    let server = tokio::spawn(service.serve(listener, tls));

    let mut acked = shared.acked();
    let start = Instant::now();
    let agents: Vec<AgentClient> = (0..NODES)
        .map(|n| {
            let n_ip = ip(198, 51, 100, byte(n));
            let mut settings = ClientSettings::new(
                format!("https://{addr}"),
                Registration {
                    node_name: format!("n{n}"),
                    chassis_id: format!("chassis-{n}"),
                    tunnel_ip: n_ip,
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
    let initial: Vec<(String, u64)> = (0..NODES).map(|n| (format!("n{n}"), 1)).collect();
    tokio::time::timeout(Duration::from_secs(120), wait_all_acked(&mut acked, &initial))
        .await
        .context("agents did not all install their snapshots within 120 s")?;
    println!(
        "{NODES} agents subscribed and installed their snapshots in {:.0} ms",
        start.elapsed().as_secs_f64() * 1e3
    );

    let mut samples = Vec::new();
    for round in 1..=ENDPOINT_CHANGES {
        let s = round * 37 % SERVICES;
        let start = Instant::now();
        let update = shared.apply(vec![ClusterChange::UpsertEndpointSlice(slice(s, round))], start);
        let want: Vec<(String, u64)> = update.deltas.iter().map(|d| (d.chassis.clone(), d.to_version)).collect();
        if want.len() != NODES as usize {
            bail!("an endpoint change produced {} deltas, expected one per chassis ({NODES})", want.len());
        }
        tokio::time::timeout(Duration::from_secs(30), wait_all_acked(&mut acked, &want))
            .await
            .context("agents did not acknowledge an endpoint change within 30 s")?;
        samples.push(start.elapsed());
    }
    samples.sort();
    let median = samples[samples.len() / 2];
    println!(
        "endpoint change → all {NODES} agents acked: median {:.2} ms, min {:.2} ms, max {:.2} ms ({} changes)",
        median.as_secs_f64() * 1e3,
        samples[0].as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3,
        samples.len()
    );

    // The scale rule: pods on other nodes do not grow a chassis's snapshot.
    let before = snapshot_bytes(&shared, "n0");
    let extra: Vec<ClusterChange> =
        (1..NODES).map(|n| ClusterChange::UpsertPod(pod(format!("extra-{n}"), n, 3 + PODS_PER_NODE))).collect();
    shared.apply(extra, Instant::now());
    let after = snapshot_bytes(&shared, "n0");
    println!("snapshot of n0 before/after {} pods added on other nodes: {before} / {after} bytes", NODES - 1);

    let views_ok = agents.iter().filter(|a| a.view().is_some()).count();
    println!("{views_ok} agents hold a view");
    drop(agents);
    shutdown.cancel();
    let _ = server.await;
    if after != before {
        bail!("scale rule broken: chassis n0's snapshot grew from {before} to {after} bytes");
    }
    println!(
        "full_compile_ms={:.1} endpoint_change_acked_ms={:.2} snapshot_bytes_per_chassis={snapshot} memory_mb={:.0}",
        full_compile.as_secs_f64() * 1e3,
        median.as_secs_f64() * 1e3,
        rss_after
    );
    Ok(())
}
