//! Compile figures for the reference cluster: 100 nodes × 100 pods and 1,000
//! Services × 10 endpoints. Prints one line of figures; asserts nothing.
//!
//! `cargo bench -p skein-netmodel --bench compile`

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use skein_netmodel::ClusterChange::{self, UpsertEndpointSlice, UpsertNode, UpsertPod, UpsertService};
use support::*;

const NODES: u8 = 100;
const PODS_PER_NODE: u8 = 100;
const SERVICES: u32 = 1000;
const ENDPOINTS: u32 = 10;

fn cluster() -> Vec<ClusterChange> {
    let mut changes = Vec::new();
    for n in 0..NODES {
        let mut nd = node(&format!("n{n}"), Some(n), true);
        nd.internal_ips = vec![ip(&format!("192.0.2.{n}"))];
        if let Some(chassis) = nd.chassis.as_mut() {
            chassis.tunnel_ip = ip(&format!("198.51.100.{n}"));
        }
        changes.push(UpsertNode(nd));
        for h in 3..3 + PODS_PER_NODE {
            changes.push(UpsertPod(pod(&format!("p{n}-{h}"), &format!("n{n}"), n, h)));
        }
    }
    for s in 0..SERVICES {
        let name = format!("s{s}");
        changes.push(UpsertService(service(&name, &format!("10.96.{}.{}", s / 250, s % 250 + 1), 80)));
        let endpoints: Vec<(String, String)> = (0..ENDPOINTS)
            .map(|i| {
                let n = (s * 7 + i * 13) % u32::from(NODES);
                (format!("10.244.{n}.{}", 3 + (s + i) % u32::from(PODS_PER_NODE)), format!("n{n}"))
            })
            .collect();
        let borrowed: Vec<(&str, &str, bool)> = endpoints.iter().map(|(a, n)| (a.as_str(), n.as_str(), true)).collect();
        changes.push(UpsertEndpointSlice(slice(&format!("{name}-1"), &name, &borrowed)));
    }
    changes
}

fn main() {
    let changes = cluster();
    let mut engine = default_engine();
    let start = Instant::now();
    engine.apply(changes);
    let full = start.elapsed();

    let snapshot = engine.snapshot("n0").map(|v| serde_json::to_vec(&v).map(|j| j.len()).unwrap_or(0)).unwrap_or(0);

    let start = Instant::now();
    let update = engine.apply([UpsertEndpointSlice(slice("s5-1", "s5", &[("10.244.1.3", "n1", true)]))]);
    let endpoint = start.elapsed();
    let endpoint_deltas = update.deltas.len();

    let start = Instant::now();
    engine.apply([UpsertPod(pod("extra", "n3", 3, 200))]);
    let pod_add = start.elapsed();

    println!(
        "full_compile_ms={:.1} endpoint_change_us={:.0} endpoint_change_deltas={endpoint_deltas} pod_add_us={:.0} snapshot_json_bytes_per_chassis={snapshot}",
        full.as_secs_f64() * 1e3,
        endpoint.as_secs_f64() * 1e6,
        pod_add.as_secs_f64() * 1e6,
    );
}
