//! Agent restarts under load: a two-node Skein cluster (the in-process API fake and master,
//! release `skein-dp` and `skein-agent` in each node namespace), `BENCH_PODS` pods on
//! node1, and long-lived connections of every kind through node1 — pod ↔ pod on the node
//! and across the tunnel, ClusterIP, NodePort from outside, egress SNAT, over TCP and UDP
//! (`BENCH_PER_KIND` of each). node1's agent is restarted `BENCH_RESTARTS` times — stopped
//! (SIGTERM) and crashed (SIGKILL) in turn, the second half with the master down — and one of
//! the restarts (with the master up) is an upgrade to `BENCH_UPGRADE_AGENT`, a rebuilt
//! binary whose log must show `build=$BENCH_UPGRADE_BUILD`.
//!
//! Per restart it prints the longest pause of any connection from the moment the agent was
//! stopped until a second after it was ready again; last a summary line:
//! `stall_ms_p50=.. stall_ms_max=.. connections_lost=.. packets_lost=..` (packets: UDP
//! requests that got no answer; pauses under 10 ms are not recorded, so they count as 0).
//!
//! Needs root. Run by `bench/agent-restart.sh`, which builds the upgrade binary.

#![forbid(unsafe_code)]

#[path = "../tests/cluster/connections.rs"]
#[allow(dead_code)]
mod connections;
#[path = "../tests/cluster/harness.rs"]
#[allow(dead_code, unused_imports)]
mod harness;
#[path = "../../lab/src/hold.rs"]
#[allow(dead_code)]
mod hold;
#[path = "../../datapath/tests/netns/traffic.rs"]
#[allow(dead_code)]
mod traffic;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use harness::{AGENT, Cluster, without_colours};

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and a cluster of
    // namespaces has no place in a test run.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("agent_restart: a benchmark (needs root): run bench/agent-restart.sh");
        return ExitCode::SUCCESS;
    }
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent_restart: {e}");
            ExitCode::FAILURE
        }
    }
}

fn number(name: &str, default: usize) -> Result<usize, String> {
    match std::env::var(name) {
        Ok(v) => v.parse::<usize>().ok().filter(|&n| n > 0).ok_or(format!("{name}={v}: not a positive number")),
        Err(_) => Ok(default),
    }
}

fn bench() -> Result<(), String> {
    let pods = number("BENCH_PODS", 200)?;
    let restarts = number("BENCH_RESTARTS", 10)?;
    let per_kind = number("BENCH_PER_KIND", 4)?;
    let upgrade = PathBuf::from(std::env::var("BENCH_UPGRADE_AGENT").map_err(|_| "BENCH_UPGRADE_AGENT is not set")?);
    let upgrade_build = std::env::var("BENCH_UPGRADE_BUILD").map_err(|_| "BENCH_UPGRADE_BUILD is not set")?;
    if !upgrade.exists() {
        return Err(format!("the upgrade binary {} does not exist", upgrade.display()));
    }
    if cfg!(debug_assertions) {
        return Err("built with debug assertions: run it with `cargo bench` (the release settings)".into());
    }
    let dir = Path::new(AGENT).parent().ok_or("no directory above the agent")?;
    for binary in ["skein-cni", "skein-dp"] {
        if !dir.join(binary).exists() {
            return Err(format!(
                "{binary} is not built beside {AGENT}: cargo build --release -p skein-cni -p skein-datapath"
            ));
        }
    }

    let Some(mut c) = Cluster::new("agent_restart_bench", "r", 2) else {
        return Err("skipped: needs root".into());
    };
    let workload = connections::every_kind(&mut c, "rb", "10.96.0.88", 30888, per_kind);
    // The node's other pods (the workload made three, two of them on node1).
    let others = pods.saturating_sub(2);
    let started = Instant::now();
    for i in 0..others {
        c.add_pod(&format!("idle{i}"), 0, "idle");
    }
    eprintln!(
        "agent_restart: {} pods on node1 ({others} added in {:.1} s), {} connections ({per_kind} of each of {} kinds)",
        others + 2,
        started.elapsed().as_secs_f64(),
        workload.connections.len(),
        connections::KINDS.len()
    );
    std::thread::sleep(Duration::from_secs(1));

    // What is dropped without a restart, over as long as a restart's window.
    let quiet = drop_counters(&c);
    std::thread::sleep(Duration::from_millis(1300));
    let quiet = counters_delta(&quiet, &drop_counters(&c));
    println!("no restart, 1.3 s: dropped {}", if quiet.is_empty() { "nothing".to_owned() } else { quiet.join(" ") });

    let upgrade_at = restarts / 2 - usize::from(restarts >= 2);
    let master_down_from = restarts / 2;
    let mut windows = Vec::new();
    for i in 0..restarts {
        if i == master_down_from {
            c.stop_master();
            eprintln!("agent_restart: master stopped");
            std::thread::sleep(Duration::from_millis(500));
        }
        let crash = i % 2 == 1;
        let how = match (i == upgrade_at, crash) {
            (true, _) => "upgrade (SIGTERM, new binary)",
            (false, true) => "crash (SIGKILL)",
            (false, false) => "stop (SIGTERM)",
        };
        let counted_before = drop_counters(&c);
        let from = Instant::now();
        if crash && i != upgrade_at {
            c.kill_agent(0);
        } else {
            c.stop_agent(0);
        }
        if i == upgrade_at {
            c.nodes[0].agent_binary = upgrade.clone();
        }
        c.start_agent(0);
        c.wait_ready(0);
        let ready = from.elapsed();
        std::thread::sleep(Duration::from_secs(1));
        let dropped = counters_delta(&counted_before, &drop_counters(&c));
        windows.push((i, how, i >= master_down_from, from, Instant::now(), ready, dropped));
    }
    // The agent's log is coloured (`ESC[3mbuild ESC[0m ESC[2m= ESC[0m...`): compare without.
    let log = without_colours(&c.agent_log(0));
    if !log.contains(&format!("build={upgrade_build}")) && !log.contains(&format!("build=\"{upgrade_build}\"")) {
        return Err(format!("the upgraded agent's log does not show build={upgrade_build}"));
    }

    // Frames the datapath dropped on node1's ports over the whole run (ring full on
    // receive, socket full on send): where packets went when a pause was not a restart's.
    let stats = c.stats(0);
    let dropped = |suffix: &str| -> u64 {
        stats
            .iter()
            .filter(|(k, _)| k.starts_with("port_") && k.ends_with(suffix))
            .filter_map(|(_, v)| v.parse::<u64>().ok())
            .sum()
    };
    println!("datapath node1: rx_dropped={} tx_dropped={}", dropped("_rx_dropped"), dropped("_tx_dropped"));
    let reports = workload.finish();
    let lost: Vec<String> =
        reports.iter().filter_map(|r| r.lost.as_ref().map(|why| format!("{}: {why}", r.kind))).collect();
    let packets_lost: u64 =
        reports.iter().filter(|r| r.kind.starts_with("udp")).map(|r| r.sent.saturating_sub(r.answered)).sum();
    let mut stalls = Vec::new();
    for (i, how, master_down, from, to, ready, dropped) in &windows {
        let (stall, kind) = reports
            .iter()
            .map(|r| (r.stall_within(*from, *to), r.kind.as_str()))
            .max()
            .unwrap_or((Duration::ZERO, "-"));
        println!(
            "restart {:>2} {how:<30} master {:<4} ready after {:>5} ms  longest pause {:>4} ms ({kind})",
            i + 1,
            if *master_down { "down" } else { "up" },
            ready.as_millis(),
            stall.as_millis()
        );
        stalls.push(stall.as_millis());
        // Every kind that paused, and where packets were counted as dropped meanwhile.
        let mut paused: Vec<(u128, &str)> = reports
            .iter()
            .map(|r| (r.stall_within(*from, *to).as_millis(), r.kind.as_str()))
            .filter(|(ms, _)| *ms > 0)
            .collect();
        paused.sort_unstable_by(|a, b| b.cmp(a));
        paused.dedup_by(|a, b| a.1 == b.1);
        if !paused.is_empty() {
            let list: Vec<String> = paused.iter().map(|(ms, kind)| format!("{kind} {ms} ms")).collect();
            println!("           paused: {}", list.join(", "));
        }
        if !dropped.is_empty() {
            println!("           dropped meanwhile: {}", dropped.join(" "));
        }
    }
    for why in &lost {
        println!("lost: {why}");
    }
    stalls.sort_unstable();
    let p50 = stalls.get(stalls.len() / 2).copied().unwrap_or(0);
    let max = stalls.last().copied().unwrap_or(0);
    println!(
        "stall_ms_p50={p50} stall_ms_max={max} connections_lost={} packets_lost={packets_lost} restarts={restarts} pods={} connections={}",
        lost.len(),
        others + 2,
        reports.len()
    );
    Ok(())
}

/// Counters of where a packet can be dropped: each datapath's drops by reason and its
/// ports' ring and send drops, and each node namespace's kernel UDP and TCP errors
/// (`/proc/net/snmp`), keyed `node<i>:<name>`.
fn drop_counters(c: &Cluster) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for (i, node) in c.nodes.iter().enumerate() {
        for (k, v) in c.stats(i) {
            if (k.starts_with("drops_")
                || k.ends_with("_dropped")
                || k.ends_with("_ring_full")
                || k.starts_with("slow_batches"))
                && let Ok(n) = v.parse::<u64>()
            {
                out.push((format!("node{}:{k}", i + 1), n));
            }
        }
        // Each flow whose action is to drop, by its match: which one took the packets.
        let flows = std::process::Command::new(harness::workspace_binary("skein-dp", "skein-datapath"))
            .args(["dump-flows", "--control"])
            .arg(&node.dp_socket)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for line in flows.lines().filter(|l| l.ends_with("actions=drop")) {
            let Some((counters, flow)) = line.split_once(", n_bytes=") else { continue };
            let flow = flow.split_once(", ").map_or(flow, |(_, f)| f);
            if let Some(n) = counters.strip_prefix("n_packets=").and_then(|n| n.parse::<u64>().ok()) {
                out.push((format!("node{}:[{flow}]", i + 1), n));
            }
        }
        // Time the datapath's forwarding threads, and its other threads, were runnable but
        // waited for a CPU (`/proc/PID/task/TID/schedstat`, second field, ns).
        if let Some(pid) = c.datapath_pid(i) {
            let mut waited = [0u64; 2];
            for task in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
                let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
                let ns = std::fs::read_to_string(task.path().join("schedstat"))
                    .ok()
                    .and_then(|s| s.split_whitespace().nth(1).and_then(|n| n.parse::<u64>().ok()))
                    .unwrap_or(0);
                waited[usize::from(!comm.starts_with("skein-dp-w"))] += ns;
            }
            out.push((format!("node{}:forwarding_waited_for_cpu_us", i + 1), waited[0] / 1000));
            out.push((format!("node{}:control_waited_for_cpu_us", i + 1), waited[1] / 1000));
        }
        let snmp = std::process::Command::new("ip")
            .args(["netns", "exec", &node.ns, "cat", "/proc/net/snmp"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        // Pairs of lines: `Udp: InDatagrams NoPorts ...` then `Udp: 12 0 ...`.
        let lines: Vec<&str> = snmp.lines().collect();
        for pair in lines.chunks_exact(2) {
            let (names, values) = (pair[0].split_whitespace(), pair[1].split_whitespace());
            for (name, value) in names.zip(values).skip(1) {
                let proto = pair[0].split(':').next().unwrap_or_default();
                let wanted = [
                    "NoPorts",
                    "InErrors",
                    "RcvbufErrors",
                    "SndbufErrors",
                    "InCsumErrors",
                    "RetransSegs",
                    "OutRsts",
                    "InDiscards",
                    "OutDiscards",
                    "OutNoRoutes",
                ];
                if wanted.contains(&name)
                    && let Ok(n) = value.parse::<u64>()
                {
                    out.push((format!("node{}:{proto}{name}", i + 1), n));
                }
            }
        }
    }
    out
}

/// The counters that grew from `before` to `after`, as `name=+n`; the drop flows' (named
/// `node<i>:[flow]`) summed per node, the flow that took most named.
fn counters_delta(before: &[(String, u64)], after: &[(String, u64)]) -> Vec<String> {
    let grown = after.iter().filter_map(|(k, v)| {
        let was = before.iter().find(|(b, _)| b == k).map_or(0, |(_, n)| *n);
        (*v > was).then(|| (k.as_str(), v - was))
    });
    let mut out = Vec::new();
    let mut flows: Vec<(&str, u64, usize, &str, u64)> = Vec::new();
    for (k, n) in grown {
        match k.split_once(":[") {
            Some((node, flow)) => match flows.iter_mut().find(|f| f.0 == node) {
                Some(f) => {
                    f.1 += n;
                    f.2 += 1;
                    if n > f.4 {
                        (f.3, f.4) = (flow.trim_end_matches(']'), n);
                    }
                }
                None => flows.push((node, n, 1, flow.trim_end_matches(']'), n)),
            },
            None => out.push(format!("{k}=+{n}")),
        }
    }
    for (node, n, count, top, top_n) in flows {
        out.push(format!("{node}:drop_flows=+{n} ({count} flows; most: {top} +{top_n})"));
    }
    out
}
