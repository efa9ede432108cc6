//! CNI ADD latency: pods added one after another on one node of a real Skein cluster (the
//! in-process API fake and master, the release `skein-agent` in a node namespace, the release
//! `skein-cni` executed from the node namespace as containerd does). For each pod it times
//! ADD alone and ADD start → the first echo reply from the pod's gateway, and prints the
//! per-pod figures, their percentiles, and last a `name=value` summary line.
//!
//! Needs root. Run by `bench/cni-add.sh`, or `cargo bench -p skein-agent --bench cni_add`;
//! `BENCH_PODS` sets the number of pods (default 100).

#![forbid(unsafe_code)]

#[path = "../tests/cluster/harness.rs"]
#[allow(dead_code, unused_imports)]
mod harness;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use harness::{AGENT, Cluster, CniOutput, ping, run, try_run};
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::io::Errno;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType, ipproto, recv, sendto, socket};
use serde_json::json;
use skein_kube_fake::Kind;

/// Number of pods unless `BENCH_PODS` says otherwise (the figure).
const DEFAULT_PODS: usize = 100;

/// Bound on the master's annotation of one pod (before the timer starts).
const ANNOTATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Bound on ADD end → first gateway reply.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A new echo request goes out when the last one was not answered within this.
const PROBE_INTERVAL: Duration = Duration::from_millis(2);

/// The annotation the master writes and the agent waits for.
const POD_NETWORKS: &str = "skein.dev/pod-networks";

/// One pod's figures.
struct Sample {
    /// ADD start → ADD's exit.
    add: Duration,
    /// ADD start → the first echo reply from the gateway.
    ready: Duration,
    /// Pod created → annotated by the master (before the timer; kubelet's ADD comes later).
    annotation: Duration,
    /// Which echo request was answered first (0: the very first packet passed).
    answered_seq: u16,
}

/// Network namespaces this bench created; deleted on drop, also when a step panics.
#[derive(Default)]
struct Sandboxes(Vec<String>);

impl Drop for Sandboxes {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = try_run(&["ip", "netns", "del", ns]);
        }
    }
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and a cluster of
    // namespaces has no place in a test run.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("cni_add: a benchmark (needs root): run it with `cargo bench -p skein-agent --bench cni_add`");
        return ExitCode::SUCCESS;
    }
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cni_add: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench() -> Result<(), String> {
    let pods = match std::env::var("BENCH_PODS") {
        Ok(v) => v.parse::<usize>().ok().filter(|&n| n > 0).ok_or(format!("BENCH_PODS={v}: not a positive number"))?,
        Err(_) => DEFAULT_PODS,
    };
    if cfg!(debug_assertions) {
        return Err("built with debug assertions: run it with `cargo bench` (the release settings)".into());
    }
    let cni = release_plugin()?;
    // `CARGO_BIN_EXE_*` is the agent of this bench's own profile; it must be the optimised one
    // that sits beside the plugin (target/release).
    if Path::new(AGENT).parent() != cni.parent() {
        return Err(format!("the agent {AGENT} is not the release build beside {}", cni.display()));
    }

    let Some(cluster) = Cluster::new("cni_add_bench", "c", 1) else {
        return Err("skipped: needs root".into());
    };
    if cluster.cni != cni {
        return Err(format!("the cluster runs {}, not the release plugin {}", cluster.cni.display(), cni.display()));
    }
    let mut sandboxes = Sandboxes::default();
    eprintln!("cni_add: {pods} sequential pods on {} (agent {AGENT}, plugin {})", cluster.nodes[0].name, cni.display());

    let mut samples = Vec::with_capacity(pods);
    let mut gateways = Vec::with_capacity(pods);
    for i in 1..=pods {
        let (sample, gateway) = add_one(&cluster, &mut sandboxes, i);
        samples.push(sample);
        gateways.push(gateway);
    }

    // Cross-check of the raw probe with the ordinary tool, once all pods exist: every pod
    // still reaches its gateway.
    let pinging = sandboxes.0.iter().zip(&gateways).filter(|(ns, gw)| ping(ns, &gw.to_string(), 1, 2).is_ok()).count();
    report(&samples, pinging);
    drop(sandboxes);
    drop(cluster);
    Ok(())
}

/// The release `skein-cni` beside this bench's directory (target/release), built if missing:
/// the harness would otherwise build a debug one.
fn release_plugin() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("this executable: {e}"))?;
    let dir = exe.parent().and_then(Path::parent).ok_or("no target directory above this executable")?;
    let cni = dir.join("skein-cni");
    if !cni.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "-p", "skein-cni", "--bin", "skein-cni"])
            .status()
            .map_err(|e| format!("cargo build: {e}"))?;
        if !status.success() || !cni.exists() {
            return Err(format!("building the release skein-cni into {} failed", dir.display()));
        }
    }
    Ok(cni)
}

/// Adds pod `bench-<i>`: the pod object (annotated by the master) and its sandbox exist
/// before the timer starts, as when kubelet runs ADD; then ADD, then echo requests to the
/// gateway until one is answered. Fails the run (with the agent's log) on any error.
fn add_one(cluster: &Cluster, sandboxes: &mut Sandboxes, i: usize) -> (Sample, Ipv4Addr) {
    let name = format!("bench-{i}");
    let node = &cluster.nodes[0].name;
    let created = cluster
        .api
        .insert(
            Kind::Pod,
            json!({"metadata": {"name": name, "namespace": "default", "labels": {"app": "bench"}},
                   "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]}}),
        )
        .unwrap_or_else(|e| cluster.fail(&format!("creating pod {name}: {e}")));
    let uid = created["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
    let created_at = Instant::now();
    while cluster
        .api
        .get(Kind::Pod, Some("default"), &name)
        .is_none_or(|p| p["metadata"]["annotations"][POD_NETWORKS].is_null())
    {
        if created_at.elapsed() > ANNOTATION_TIMEOUT {
            cluster.fail(&format!("the master did not annotate {name} within {ANNOTATION_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let annotation = created_at.elapsed();

    let ns = format!("{}-p-{name}", cluster.prefix);
    let _ = try_run(&["ip", "netns", "del", &ns]);
    run(&["ip", "netns", "add", &ns]);
    sandboxes.0.push(ns.clone());
    run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
    let netns = format!("/run/netns/{ns}");
    let probe =
        GatewayProbe::open(Path::new(&netns), i as u16).unwrap_or_else(|e| cluster.fail(&format!("{name}: {e}")));

    let container = format!("ctr-{name}-{}", cluster.prefix);
    let args = Cluster::cni_args(&name, &container, &uid);
    let (out, start, end) = add_from_node(cluster, 0, &container, &netns, &args)
        .unwrap_or_else(|e| cluster.fail(&format!("ADD of {name}: {e}")));
    if out.code != 0 {
        cluster.fail(&format!("ADD of {name} failed: {out:?}"));
    }
    let result = out.json();
    let gateway = result["ips"][0]["gateway"]
        .as_str()
        .and_then(|g| g.parse::<Ipv4Addr>().ok())
        .unwrap_or_else(|| cluster.fail(&format!("ADD of {name}: no IPv4 gateway in {result}")));
    let (answered, answered_seq) = probe
        .first_reply(gateway, end + PROBE_TIMEOUT)
        .unwrap_or_else(|e| cluster.fail(&format!("{name} → its gateway: {e}")));
    (Sample { add: end - start, ready: answered - start, annotation, answered_seq }, gateway)
}

/// Runs `skein-cni ADD` as containerd does: the same environment and configuration as the
/// harness's `cni_raw`, but executed directly from a thread inside node `i`'s namespace (as
/// the runtime executes plugins in the host namespace), so that `ip netns exec`'s own start
/// is not counted. Returns the output and the instants just before the spawn and after exit.
fn add_from_node(
    cluster: &Cluster,
    i: usize,
    container: &str,
    netns: &str,
    args: &str,
) -> Result<(CniOutput, Instant, Instant), String> {
    let conf = cluster.plugin_conf(i, "1.1.0").to_string();
    let node_netns = PathBuf::from(format!("/run/netns/{}", cluster.nodes[i].ns));
    let plugin = &cluster.cni;
    let invoke = || {
        let mut cmd = Command::new(plugin);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_COMMAND", "ADD")
            .env("CNI_PATH", "/usr/lib/cni:/opt/cni/bin")
            .env("CNI_CONTAINERID", container)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let mut child = cmd.spawn().map_err(|e| format!("run {}: {e}", plugin.display()))?;
        let mut stdin = child.stdin.take().ok_or("the plugin has no stdin")?;
        stdin.write_all(conf.as_bytes()).map_err(|e| format!("write the plugin's stdin: {e}"))?;
        drop(stdin);
        let out = child.wait_with_output().map_err(|e| format!("the plugin's output: {e}"))?;
        let end = Instant::now();
        let output = CniOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        Ok((output, start, end))
    };
    skein_cni::netns::run_in(&node_netns, || Ok(invoke()))
        .map_err(|e| format!("entering {}: {e}", node_netns.display()))?
}

/// Echo requests to a pod's gateway from a raw ICMP socket opened in the pod's namespace:
/// no process starts per attempt, so what is timed is the network becoming ready, not ping.
struct GatewayProbe {
    socket: OwnedFd,
    id: u16,
}

impl GatewayProbe {
    /// Opens the socket inside `netns` (before ADD: the socket belongs to the namespace, not
    /// to an interface).
    fn open(netns: &Path, id: u16) -> Result<GatewayProbe, String> {
        let socket =
            skein_cni::netns::run_in(netns, || Ok(socket(AddressFamily::INET, SocketType::RAW, Some(ipproto::ICMP))))
                .map_err(|e| format!("entering {}: {e}", netns.display()))?
                .map_err(|e| format!("raw ICMP socket: {e}"))?;
        Ok(GatewayProbe { socket, id })
    }

    /// Sends an echo request to `to` every `PROBE_INTERVAL` until one is answered or
    /// `deadline`; returns when the first reply arrived and which request it answered.
    fn first_reply(&self, to: Ipv4Addr, deadline: Instant) -> Result<(Instant, u16), String> {
        let dest = SocketAddrV4::new(to, 0);
        let mut buf = [0u8; 2048];
        let mut seq: u16 = 0;
        loop {
            let sent_at = Instant::now();
            if sent_at > deadline {
                return Err(format!("no echo reply after {seq} requests"));
            }
            // A send can fail while the pod's route is not usable yet: that counts as "not
            // answered", like a lost request.
            let _ = sendto(&self.socket, &echo_request(self.id, seq), SendFlags::empty(), &dest);
            seq = seq.wrapping_add(1);
            let until = (sent_at + PROBE_INTERVAL).min(deadline);
            loop {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let timeout = Timespec { tv_sec: left.as_secs() as i64, tv_nsec: i64::from(left.subsec_nanos()) };
                let mut fds = [PollFd::new(&self.socket, PollFlags::IN)];
                match poll(&mut fds, Some(&timeout)) {
                    Ok(0) | Err(Errno::INTR) => continue,
                    Ok(_) => {}
                    Err(e) => return Err(format!("poll: {e}")),
                }
                match recv(&self.socket, &mut buf[..], RecvFlags::DONTWAIT) {
                    Ok((n, _)) => {
                        if let Some(answered) = echo_reply_seq(&buf[..n], to, self.id) {
                            return Ok((Instant::now(), answered));
                        }
                    }
                    Err(Errno::AGAIN | Errno::INTR) => {}
                    Err(e) => return Err(format!("recv: {e}")),
                }
            }
        }
    }
}

/// An ICMP echo request (8 bytes of header, 8 of payload).
fn echo_request(id: u16, seq: u16) -> [u8; 16] {
    let mut packet = [0u8; 16];
    packet[0] = 8;
    packet[4..6].copy_from_slice(&id.to_be_bytes());
    packet[6..8].copy_from_slice(&seq.to_be_bytes());
    packet[8..16].copy_from_slice(b"skeinadd");
    let sum = internet_checksum(&packet);
    packet[2..4].copy_from_slice(&sum.to_be_bytes());
    packet
}

/// RFC 1071 checksum.
fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 =
        data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The sequence number of an echo reply from `from` to request `id`, given what a raw IPv4
/// socket receives (IP header included); `None` for any other packet.
fn echo_reply_seq(packet: &[u8], from: Ipv4Addr, id: u16) -> Option<u16> {
    let header_len = usize::from(packet.first()? & 0x0f) * 4;
    let source = packet.get(12..16)?;
    let icmp = packet.get(header_len..header_len + 8)?;
    let is_reply = icmp[0] == 0 && icmp[1] == 0 && icmp[4..6] == id.to_be_bytes();
    (source == from.octets() && is_reply).then(|| u16::from_be_bytes([icmp[6], icmp[7]]))
}

/// The `q` quantile in microseconds, ranked as `../shared/bench/peer-kernel-bridge.sh` ranks
/// its ADD times (the ceiling of n·q, 1-based), so both sides are read the same way.
fn quantile_us(sorted: &[u128], q: f64) -> u128 {
    let rank = ((sorted.len() as f64 * q + 0.999) as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Microseconds of each sample's `field`, sorted.
fn sorted_us(samples: &[Sample], field: impl Fn(&Sample) -> Duration) -> Vec<u128> {
    let mut us: Vec<u128> = samples.iter().map(|s| field(s).as_micros()).collect();
    us.sort_unstable();
    us
}

fn report(samples: &[Sample], pinging: usize) {
    let list = |field: fn(&Sample) -> Duration| {
        samples.iter().map(|s| field(s).as_micros().to_string()).collect::<Vec<_>>().join(" ")
    };
    println!("skein_add_ping_us: {}", list(|s| s.ready));
    println!("skein_add_only_us: {}", list(|s| s.add));

    let ready = sorted_us(samples, |s| s.ready);
    let add = sorted_us(samples, |s| s.add);
    let rows: [(&str, Vec<u128>); 4] = [
        ("ADD start → gateway echo reply", ready.clone()),
        ("ADD only (plugin exec → exit)", add.clone()),
        ("ADD exit → gateway echo reply", sorted_us(samples, |s| s.ready.saturating_sub(s.add))),
        ("pod created → annotated (untimed)", sorted_us(samples, |s| s.annotation)),
    ];
    println!();
    println!(
        "{:<36} {:>9} {:>9} {:>9} {:>9} {:>9}",
        format!("skein, {} pods (us)", samples.len()),
        "p50",
        "p99",
        "min",
        "max",
        "mean"
    );
    for (what, us) in &rows {
        let mean = us.iter().sum::<u128>() / us.len().max(1) as u128;
        println!(
            "{what:<36} {:>9} {:>9} {:>9} {:>9} {mean:>9}",
            quantile_us(us, 0.5),
            quantile_us(us, 0.99),
            us.first().copied().unwrap_or(0),
            us.last().copied().unwrap_or(0)
        );
    }
    let first_passed = samples.iter().filter(|s| s.answered_seq == 0).count();
    println!("first echo request answered: {first_passed}/{} pods", samples.len());
    println!("pods answering `ping -c1` to their gateway after all ADDs: {pinging}/{}", samples.len());
    println!(
        "skein_add_p50_us={} skein_add_p99_us={} skein_add_only_p50_us={} skein_add_only_p99_us={} pods={}",
        quantile_us(&ready, 0.5),
        quantile_us(&ready, 0.99),
        quantile_us(&add, 0.5),
        quantile_us(&add, 0.99),
        samples.len()
    );
}
