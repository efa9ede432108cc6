//! As root, in a 2-node lab: a burst of connections across many pods. A Deployment of
//! `SKEIN_BURST_PODS` echo pods (default 100; `skein-lab check` has been run at 200), then
//! `skein-lab check`, in which every pod connects to every other pod — eight source pods at
//! a time, each to all its targets at once — must pass with no switch port losing a frame
//! at its receive ring and no send failing. Before the switch's rings took small frames in
//! small slots and the lab raised the host's neighbour table (see `lab/src/topology.rs`),
//! half of these checks failed with `connect: connection timed out` at 200 pods. Needs
//! root; `SKEIN_SKIP_NETNS_TESTS=1` skips it without root. Wrap in
//! `flock /tmp/skein-lab.lock` (one lab per host).

use std::process::Command;
use std::time::{Duration, Instant};

#[path = "../../datapath/tests/netns/command.rs"]
mod command;
mod support;

use support::{LAB, Lab};

const PREFIX: &str = "sklabb";

fn lab(args: &[&str]) -> (bool, String) {
    let output = Command::new(LAB).args(["--prefix", PREFIX]).args(args).output().expect("running skein-lab");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// Sum of the counters named `port_N_<suffix>` in a switch's `stats` text.
fn port_total(stats: &str, suffix: &str) -> u64 {
    stats
        .split_whitespace()
        .filter_map(|t| t.split_once('='))
        .filter(|(k, _)| k.starts_with("port_") && k.ends_with(suffix))
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum()
}

#[test]
fn netns_every_pod_reaches_every_other_pod_at_once() {
    if !command::root_or_skip("a burst across many pods", "network namespaces") {
        return;
    }
    let pods: usize = std::env::var("SKEIN_BURST_PODS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let lab_handle = Lab::up(PREFIX, &["--nodes", "2"]);
    let manifest = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: burst}}\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: echo, namespace: burst}}\n\
         spec:\n  replicas: {pods}\n  selector: {{matchLabels: {{app: echo}}}}\n  template:\n    \
         metadata: {{labels: {{app: echo}}}}\n    spec:\n      containers:\n      - name: main\n        \
         image: skein-lab/echo\n        ports: [{{name: http, containerPort: 8080}}]\n"
    );
    let file = std::env::temp_dir().join(format!("{PREFIX}-burst.yaml"));
    std::fs::write(&file, manifest).unwrap();
    let (ok, text) = lab(&["apply", "-f", file.to_str().unwrap()]);
    assert!(ok, "apply: {text}");
    // `check` waits for the pods it sees; wait until the Deployment's are all there.
    let started = Instant::now();
    loop {
        let (_, text) = lab(&["get", "pods", "-n", "burst"]);
        let running = text.lines().filter(|l| l.split_whitespace().nth(3) == Some("Running")).count();
        if running == pods {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(300), "{running}/{pods} pods running after 300 s:\n{text}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let (ok, table) = lab(&["check"]);
    // Every pod to every pod, every pod to the outside, and the components' API requests.
    let checks = 2 * pods + 1;
    assert!(ok && table.contains(&format!("checks passed: {checks}/{checks}")), "skein-lab check failed:\n{table}");
    let dp = std::path::Path::new(LAB).with_file_name("skein-dp");
    for node in ["node1", "node2"] {
        let socket = lab_handle.dir().join(node).join("dp.sock");
        let output =
            Command::new(&dp).args(["stats", "--control"]).arg(&socket).output().expect("running skein-dp stats");
        let stats = String::from_utf8_lossy(&output.stdout).to_string();
        assert!(output.status.success(), "skein-dp stats on {node}: {}", String::from_utf8_lossy(&output.stderr));
        let (ring_full, rx_dropped, tx_dropped) =
            (port_total(&stats, "_rx_ring_full"), port_total(&stats, "_rx_dropped"), port_total(&stats, "_tx_dropped"));
        assert!(
            ring_full == 0 && rx_dropped == 0 && tx_dropped == 0,
            "{node}'s switch dropped frames in the burst: rx_ring_full={ring_full} rx_dropped={rx_dropped} \
             tx_dropped={tx_dropped}\n{stats}"
        );
    }
}
