//! The commands: `up`, `down`, `apply`, `get`, `logs`, `exec`, `check`, `demo`, `kubeconfig`,
//! and the hidden `daemon`, `echo-server` and `probe` the lab runs itself.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::checks::{self, CheckResult, ClusterView, Prober};
use crate::cni_runtime::NodeCni;
use crate::echo::{self, ProbeOptions, ServePort, Target, TargetReport};
use crate::layout::{Layout, STATE_ROOT};
use crate::state::{Binaries, ControlRequest, LabState, control};
use crate::{containerd, daemon, hold, manifest, prereq, scenario, sys, topology};

/// skein-lab: a whole Skein cluster on one Linux host, in network namespaces, running the
/// real skein-master, skein-agent and skein-cni. Needs root.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// Names every namespace, link and state directory of this lab (1–8 lowercase letters or
    /// digits); `down` removes everything carrying it.
    #[arg(long, global = true, env = "SKEIN_LAB_PREFIX", default_value = "sklab")]
    pub prefix: String,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Output formats of `get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// More columns.
    Wide,
}

/// What `get` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Resource {
    /// Pods.
    #[value(alias = "pod", alias = "po")]
    Pods,
    /// Services.
    #[value(alias = "service", alias = "svc")]
    Services,
    /// Nodes.
    #[value(alias = "node", alias = "no")]
    Nodes,
    /// Jobs.
    #[value(alias = "job")]
    Jobs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a lab, deploy the demo scenario (pods on every node, ClusterIP, NodePort and
    /// session-affinity Services), run every check, print the table, tear the lab down.
    /// Exits 0 only if every check passed.
    Demo {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Leave the lab running afterwards (remove it with `skein-lab down`).
        #[arg(long)]
        keep: bool,
        /// Where skein-master, skein-agent and skein-cni are (default: next to skein-lab).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Longest wait for nodes and pods to become ready, in seconds.
        #[arg(long, default_value_t = 240)]
        wait: u64,
    },
    /// Build a lab and leave it running: topology, API server, controllers, kubelets, master, agents.
    Up {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Where skein-master, skein-agent and skein-cni are (default: next to skein-lab).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Longest wait for the nodes to become ready, in seconds.
        #[arg(long, default_value_t = 120)]
        wait: u64,
        /// A node whose kubelet registers and reports the node but leaves its pods alone, so
        /// that a test can drive the node's containerd over CRI itself (repeatable).
        #[arg(long = "manual-pods", value_name = "NODE")]
        manual_pods: Vec<String>,
        /// MTU of the underlay (the bridge and the nodes' uplinks), 1280 to 9216: each agent
        /// gives its pods the uplink's MTU less the Geneve encapsulation (66), so 9000 gives
        /// jumbo pods of 8934.
        #[arg(long, default_value_t = crate::layout::DEFAULT_UNDERLAY_MTU, value_parser = clap::value_parser!(u32).range(1280..=9216))]
        underlay_mtu: u32,
    },
    /// Stop the lab and remove everything named with its prefix (also after a crash).
    Down,
    /// Print the path of the running lab's kubeconfig (for kubectl); exit 1 when no lab runs.
    Kubeconfig,
    /// Create or update the objects of a YAML file (Namespace, Pod, Deployment, Job, Service, NetworkPolicy; many documents).
    Apply {
        /// The file (`-` for standard input).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Namespace for objects that name none.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// List pods, services, nodes or jobs.
    Get {
        /// What to list.
        resource: Resource,
        /// Only this namespace (default: all).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// `-o wide` adds columns.
        #[arg(short = 'o', long)]
        output: Option<Output>,
    },
    /// Print a container's log (its latest run, or the one before with --previous).
    Logs {
        /// The pod (`NAME`, or `NAMESPACE/NAME`).
        pod: String,
        /// The pod's namespace (default: wherever a pod of that name is).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// The container (default: the pod's first).
        #[arg(short = 'c', long)]
        container: Option<String>,
        /// The run before the latest (a restarted container's).
        #[arg(short = 'p', long)]
        previous: bool,
    },
    /// Run a command inside a pod's network namespace.
    Exec {
        /// The pod (`NAME`, or `NAMESPACE/NAME`).
        pod: String,
        /// The pod's namespace (default: wherever a pod of that name is).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Run the checks against whatever is deployed and print the table.
    Check {
        /// Also delete a pod and restart an agent (the lab creates and deletes its own probe pods).
        #[arg(long)]
        disruptive: bool,
        /// Longest wait for pods to become ready, in seconds.
        #[arg(long, default_value_t = 120)]
        wait: u64,
    },
    /// (internal) The lab's background process.
    #[command(hide = true)]
    Daemon {
        /// Number of nodes.
        #[arg(long)]
        nodes: usize,
        /// Where the binaries are.
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Nodes whose pods the kubelet leaves alone.
        #[arg(long = "manual-pods", value_name = "NODE")]
        manual_pods: Vec<String>,
        /// MTU of the underlay.
        #[arg(long, default_value_t = crate::layout::DEFAULT_UNDERLAY_MTU)]
        underlay_mtu: u32,
    },
    /// (internal) The pods' workload: answers on each port with its name and the client's address.
    #[command(hide = true)]
    EchoServer {
        /// The name to answer with.
        #[arg(long)]
        name: String,
        /// The address to listen on.
        #[arg(long, default_value = "0.0.0.0")]
        address: IpAddr,
        /// `tcp:PORT` or `udp:PORT`, repeated.
        #[arg(long = "port", required = true)]
        ports: Vec<ServePort>,
    },
    /// (internal) A remote shell server for MPI launchers between pods (`docs/lab.md`).
    #[command(hide = true)]
    RemoteShellServer {
        /// The address to listen on.
        #[arg(long, default_value = "0.0.0.0")]
        address: IpAddr,
        /// The port.
        #[arg(long, default_value_t = crate::remote_shell::DEFAULT_PORT)]
        port: u16,
    },
    /// (internal) The rsh-style agent: `remote-shell [FLAGS] HOST COMMAND...`, or `--stop HOST`.
    #[command(hide = true)]
    RemoteShell {
        /// The server's port.
        #[arg(long, default_value_t = crate::remote_shell::DEFAULT_PORT)]
        port: u16,
        /// Ask the server on HOST to stop.
        #[arg(long, value_name = "HOST")]
        stop: Option<String>,
        /// Longest wait for the server to answer, in seconds.
        #[arg(long, default_value_t = 60)]
        wait: u64,
        /// `[flags] HOST COMMAND...` as an rsh agent is called.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// (internal) Sends requests to targets and prints one JSON report per target.
    #[command(hide = true)]
    Probe {
        /// Requests per target.
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Wait per request, in milliseconds.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        /// UDP datagrams (each from a new socket) per request.
        #[arg(long, default_value_t = 2)]
        udp_tries: usize,
        /// Stop sending to a target whose first N requests all went unanswered (0: never).
        #[arg(long, default_value_t = 3)]
        give_up_after: usize,
        /// `tcp:ADDR:PORT` or `udp:ADDR:PORT`.
        #[arg(required = true)]
        targets: Vec<Target>,
    },
}

/// Progress lines on stderr, stamped with the time since the command started.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    started: Instant,
}

impl Progress {
    fn new() -> Progress {
        Progress { started: Instant::now() }
    }

    fn say(&self, message: impl std::fmt::Display) {
        eprintln!("[{:>6.1}s] {message}", self.started.elapsed().as_secs_f64());
    }
}

fn require_root() -> anyhow::Result<()> {
    if !sys::is_root() {
        bail!("skein-lab needs root (network namespaces, veths, bridges): run it with sudo");
    }
    Ok(())
}

/// A kube-rs client for a running lab.
pub async fn lab_client(layout: &Layout) -> anyhow::Result<Client> {
    let path = layout.kubeconfig();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).with_context(|| {
        format!("no lab {:?} is up ({} is missing): run `skein-lab up`", layout.prefix(), path.display())
    })?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default()).await?;
    config.connect_timeout = Some(Duration::from_secs(3));
    Ok(Client::try_from(config)?)
}

/// The kubeconfig of the lab of `layout` if its daemon runs, else why not.
pub fn running_kubeconfig(layout: &Layout) -> Result<PathBuf, String> {
    let Some(state) = LabState::read(layout) else {
        return Err(format!(
            "no lab {:?} is running (no {}): start one with `sudo skein-lab up`",
            layout.prefix(),
            layout.state_file().display()
        ));
    };
    if !daemon_alive(&state) {
        return Err(format!(
            "lab {:?} is not running (its daemon, pid {}, is gone): `sudo skein-lab down` cleans up, `sudo skein-lab up` starts a new one",
            layout.prefix(),
            state.daemon_pid
        ));
    }
    let path = if state.kubeconfig.as_os_str().is_empty() { layout.kubeconfig() } else { state.kubeconfig };
    if !path.is_file() {
        return Err(format!(
            "lab {:?} is starting (phase {:?}): {} is not written yet",
            layout.prefix(),
            state.phase,
            path.display()
        ));
    }
    Ok(path)
}

fn daemon_alive(state: &LabState) -> bool {
    state.daemon_pid > 0
        && sys::alive(state.daemon_pid)
        && sys::cmdline(state.daemon_pid).is_some_and(|c| c.contains("skein-lab") && c.contains("daemon"))
}

/// The lab's processes that may outlive a crashed daemon: skein binaries, the nodes'
/// containerds and their shims, whose command line names this lab's state directory or
/// prefix.
fn leftover_processes(layout: &Layout) -> Vec<i32> {
    let marker = format!("{}/", layout.state_dir().display());
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            let Some(line) = sys::cmdline(pid) else { return false };
            let program = line.split(' ').next().unwrap_or("");
            let skein = ["skein-lab", "skein-master", "skein-agent", "containerd", "containerd-shim-runc-v2"]
                .iter()
                .any(|b| program.ends_with(b));
            let daemon = program.ends_with("skein-lab")
                && line.contains(" daemon ")
                && line.contains(&format!("--prefix {}", layout.prefix()));
            skein && (line.contains(&marker) || daemon)
        })
        .collect()
}

/// `skein-lab down`: stop the daemon (gracefully, then by force), kill what is left, remove
/// every namespace and link with the prefix and the state directory.
pub async fn down(layout: &Layout, progress: Progress) -> anyhow::Result<()> {
    require_root()?;
    // Ask the nodes' runtimes for their sandboxes' namespaces while they still answer.
    let mut runtime_netns = Vec::new();
    if let Ok(entries) = std::fs::read_dir(layout.state_dir()) {
        for entry in entries.filter_map(Result::ok) {
            let socket = entry.path().join("containerd").join("containerd.sock");
            if socket.exists() {
                runtime_netns.extend(containerd::sandbox_netns(&socket).await);
            }
        }
    }
    if let Some(state) = LabState::read(layout)
        && daemon_alive(&state)
    {
        progress.say(format!("stopping the lab daemon (pid {})", state.daemon_pid));
        let _ = control(layout, &ControlRequest::Shutdown, Duration::from_secs(5)).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while sys::alive(state.daemon_pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if sys::alive(state.daemon_pid) {
            sys::signal(state.daemon_pid, rustix::process::Signal::KILL);
        }
    }
    let leftovers = leftover_processes(layout);
    let mut programs: BTreeMap<String, usize> = BTreeMap::new();
    for &pid in &leftovers {
        let line = sys::cmdline(pid).unwrap_or_default();
        let program = line.split(' ').next().unwrap_or("").rsplit('/').next().unwrap_or("").to_string();
        *programs.entry(program).or_default() += 1;
        sys::signal(pid, rustix::process::Signal::KILL);
    }
    if !leftovers.is_empty() {
        let what: Vec<String> = programs.iter().map(|(p, n)| format!("{p} ×{n}")).collect();
        progress.say(format!("killed {} leftover processes: {}", leftovers.len(), what.join(", ")));
    }
    // The sandboxes' namespaces containerd made, found through the names the lab attached
    // them under, before those go.
    let ours: Vec<String> =
        sys::netns_list().unwrap_or_default().into_iter().filter(|n| layout.owns_netns(n)).collect();
    runtime_netns.extend(containerd::runtime_netns_of(&ours));
    runtime_netns.sort();
    runtime_netns.dedup();
    let mut removed = topology::destroy(layout);
    for netns in runtime_netns {
        if sys::ip(&["netns", "del", &netns]).is_ok() {
            removed.push(format!("netns {netns}"));
        }
    }
    if !removed.is_empty() {
        progress.say(format!("removed {}", removed.join(", ")));
    }
    let unmounted = containerd::unmount_under(&layout.state_dir());
    if unmounted > 0 {
        progress.say(format!("unmounted {unmounted} container mounts"));
    }
    containerd::remove_cgroups(layout);
    let dir = layout.state_dir();
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        progress.say(format!("removed {}", dir.display()));
    }
    let _ = std::fs::remove_dir(STATE_ROOT);
    Ok(())
}

/// `skein-lab up`: start the daemon and wait for the nodes.
pub async fn up(
    layout: &Layout,
    nodes: usize,
    bin_dir: Option<&Path>,
    wait: Duration,
    manual_pods: &[String],
    underlay_mtu: u32,
    progress: Progress,
) -> anyhow::Result<Client> {
    require_root()?;
    if !(1..=crate::layout::MAX_NODES).contains(&nodes) {
        bail!("--nodes {nodes}: must be from 1 to {}", crate::layout::MAX_NODES);
    }
    let binaries = Binaries::find(bin_dir)?;
    prereq::ensure(sys::is_root(), |line| progress.say(line))?;
    if let Some(state) = LabState::read(layout)
        && daemon_alive(&state)
    {
        bail!("lab {:?} is already up (daemon pid {}); run `skein-lab down` first", layout.prefix(), state.daemon_pid);
    }
    if layout.state_dir().exists() || sys::netns_list().unwrap_or_default().iter().any(|n| layout.owns_netns(n)) {
        progress.say("removing the leftovers of an earlier lab");
        down(layout, progress).await?;
    }
    std::fs::create_dir_all(layout.state_dir())?;
    let log = std::fs::File::create(layout.daemon_log())?;
    let mut command = std::process::Command::new(&binaries.lab);
    command.args(["--prefix", layout.prefix(), "daemon", "--nodes", &nodes.to_string()]);
    command.args(["--underlay-mtu", &underlay_mtu.to_string()]);
    if let Some(dir) = bin_dir {
        command.arg("--bin-dir").arg(dir);
    }
    for node in manual_pods {
        if Layout::node_index(node).is_none_or(|i| i > nodes) {
            bail!("--manual-pods {node}: this lab's nodes are node1 to node{nodes}");
        }
        command.arg("--manual-pods").arg(node);
    }
    // Its own process group: a Ctrl-C in this terminal does not reach it.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let child = command.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).spawn()?;
    let daemon_pid = child.id() as i32;
    progress.say(format!("lab daemon started (pid {daemon_pid}, log {})", layout.daemon_log().display()));
    let mut last_phase = String::new();
    let started = Instant::now();
    loop {
        let state = LabState::read(layout).unwrap_or_default();
        if state.phase != last_phase && !state.phase.is_empty() {
            progress.say(format!("{}: {}", state.phase, state.message));
            last_phase = state.phase.clone();
        }
        match state.phase.as_str() {
            "running" => break,
            "failed" => bail!("the lab did not come up: {}\n{}", state.message, sys::tail(&layout.daemon_log(), 15)),
            _ => {}
        }
        if !sys::alive(daemon_pid) {
            bail!("the lab daemon exited:\n{}", sys::tail(&layout.daemon_log(), 20));
        }
        if let Some(exit) = state.exits.first() {
            bail!("the lab did not come up: {exit}");
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the lab daemon did not start within 60 s:\n{}", sys::tail(&layout.daemon_log(), 20));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = lab_client(layout).await?;
    wait_for_nodes(&client, layout, nodes, wait, progress).await?;
    Ok(client)
}

fn node_ready(node: &Node) -> (bool, String) {
    let condition =
        node.status.as_ref().and_then(|s| s.conditions.as_ref()).and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
    match condition {
        Some(c) => (c.status == "True", c.message.clone().unwrap_or_default()),
        None => (false, "not registered".into()),
    }
}

async fn wait_for_nodes(
    client: &Client,
    layout: &Layout,
    nodes: usize,
    wait: Duration,
    progress: Progress,
) -> anyhow::Result<()> {
    let api = Api::<Node>::all(client.clone());
    let started = Instant::now();
    let mut last = String::new();
    let mut last_said = Instant::now();
    loop {
        let list = api.list(&ListParams::default()).await?;
        let ready = list.items.iter().filter(|n| node_ready(n).0).count();
        let waiting: Vec<String> = list
            .items
            .iter()
            .filter(|n| !node_ready(n).0)
            .map(|n| format!("{}: {}", n.name_any(), node_ready(n).1))
            .collect();
        let line = format!(
            "nodes ready {ready}/{nodes}{}",
            if waiting.is_empty() { String::new() } else { format!(" ({})", waiting.join("; ")) }
        );
        if line != last || last_said.elapsed() > Duration::from_secs(10) {
            progress.say(&line);
            last = line;
            last_said = Instant::now();
        }
        if ready >= nodes {
            return Ok(());
        }
        // A component that exits while the nodes come up will not bring them up by waiting.
        if let Some(exit) = LabState::read(layout).and_then(|s| s.exits.into_iter().next()) {
            bail!("nodes ready {ready}/{nodes}, and {exit}");
        }
        if started.elapsed() > wait {
            let mut logs = String::new();
            for n in list.items.iter().filter(|n| !node_ready(n).0) {
                let node = n.name_any();
                logs.push_str(&format!(
                    "\n--- {} ---\n{}",
                    layout.agent_log(&node).display(),
                    sys::tail(&layout.agent_log(&node), 10)
                ));
            }
            bail!("nodes not ready after {} s: {}{logs}", wait.as_secs(), waiting.join("; "));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn read_manifest(file: &Path) -> anyhow::Result<String> {
    if file == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
        Ok(text)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
    }
}

/// `skein-lab apply`.
pub async fn apply(client: &Client, text: &str, namespace: &str) -> anyhow::Result<Vec<String>> {
    let manifests = manifest::parse(text, namespace).map_err(|errors| {
        anyhow::anyhow!("nothing applied:\n{}", errors.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))
    })?;
    manifest::apply(client, &manifests).await
}

fn age(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    let Some(created) = meta.creation_timestamp.as_ref() else { return "-".into() };
    let seconds = k8s_openapi::jiff::Timestamp::now().as_second() - created.0.as_second();
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}

fn print_table(rows: Vec<Vec<String>>) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> =
            row.iter().enumerate().map(|(i, cell)| format!("{cell:<width$}", width = widths[i])).collect();
        println!("{}", line.join("   ").trim_end());
    }
}

/// `skein-lab get`.
pub async fn get(
    client: &Client,
    layout: &Layout,
    resource: Resource,
    namespace: Option<&str>,
    wide: bool,
) -> anyhow::Result<()> {
    match resource {
        Resource::Pods => {
            let api = match namespace {
                Some(ns) => Api::<Pod>::namespaced(client.clone(), ns),
                None => Api::<Pod>::all(client.clone()),
            };
            let mut pods = api.list(&ListParams::default()).await?.items;
            pods.sort_by_key(|p| (p.namespace(), p.name_any()));
            let mut rows =
                vec![["NAMESPACE", "NAME", "READY", "STATUS", "IP", "NODE", "AGE"].map(String::from).to_vec()];
            if wide {
                rows[0].extend(["SANDBOX", "PORTS"].map(String::from));
            }
            for pod in pods {
                let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_else(|| "<none>".into());
                let status = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
                let ready = if crate::endpointslices::pod_ready(&pod) { "1/1" } else { "0/1" };
                let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_else(|| "<none>".into());
                let mut row = vec![
                    pod.namespace().unwrap_or_default(),
                    pod.name_any(),
                    ready.into(),
                    status,
                    ip,
                    node.clone(),
                    age(&pod.metadata),
                ];
                if wide {
                    let sandbox = if node == "<none>" {
                        "-".into()
                    } else {
                        layout.pod_netns(&node, &pod.uid().unwrap_or_default())
                    };
                    // The echo server's ports, or what a pod running its own program declares.
                    let ports: Vec<String> = if echo_pods(layout, vec![pod.clone()]).is_empty() {
                        pod.spec
                            .iter()
                            .flat_map(|s| s.containers.iter())
                            .flat_map(|c| c.ports.iter().flatten())
                            .map(|p| {
                                format!(
                                    "{}:{}",
                                    p.protocol.as_deref().unwrap_or("TCP").to_lowercase(),
                                    p.container_port
                                )
                            })
                            .collect()
                    } else {
                        crate::kubelet::workload_ports(&pod).iter().map(ToString::to_string).collect()
                    };
                    row.extend([sandbox, if ports.is_empty() { "-".into() } else { ports.join(",") }]);
                }
                rows.push(row);
            }
            print_table(rows);
        }
        Resource::Services => {
            let api = match namespace {
                Some(ns) => Api::<Service>::namespaced(client.clone(), ns),
                None => Api::<Service>::all(client.clone()),
            };
            let slices = Api::<EndpointSlice>::all(client.clone()).list(&ListParams::default()).await?.items;
            let mut services = api.list(&ListParams::default()).await?.items;
            services.sort_by_key(|s| (s.namespace(), s.name_any()));
            let mut rows =
                vec![["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "PORT(S)", "AGE"].map(String::from).to_vec()];
            if wide {
                rows[0].extend(["SELECTOR", "AFFINITY", "ENDPOINTS"].map(String::from));
            }
            for service in services {
                let spec = service.spec.clone().unwrap_or_default();
                let ports: Vec<String> = spec
                    .ports
                    .iter()
                    .flatten()
                    .map(|p| match p.node_port {
                        Some(np) => format!("{}:{np}/{}", p.port, p.protocol.as_deref().unwrap_or("TCP")),
                        None => format!("{}/{}", p.port, p.protocol.as_deref().unwrap_or("TCP")),
                    })
                    .collect();
                let mut row = vec![
                    service.namespace().unwrap_or_default(),
                    service.name_any(),
                    spec.type_.clone().unwrap_or_else(|| "ClusterIP".into()),
                    spec.cluster_ip.clone().unwrap_or_else(|| "<none>".into()),
                    ports.join(","),
                    age(&service.metadata),
                ];
                if wide {
                    let selector: Vec<String> =
                        spec.selector.iter().flatten().map(|(k, v)| format!("{k}={v}")).collect();
                    let endpoints: Vec<String> = slices
                        .iter()
                        .filter(|s| {
                            s.namespace() == service.namespace()
                                && s.labels().get(crate::endpointslices::SERVICE_NAME_LABEL)
                                    == Some(&service.name_any())
                        })
                        .flat_map(|s| {
                            let ports: Vec<i32> = s.ports.iter().flatten().filter_map(|p| p.port).collect();
                            s.endpoints
                                .iter()
                                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
                                .flat_map(move |e| {
                                    let ports = ports.clone();
                                    e.addresses.iter().map(move |a| {
                                        let ports: Vec<String> = ports.iter().map(ToString::to_string).collect();
                                        format!("{a}:{}", ports.join("/"))
                                    })
                                })
                        })
                        .collect();
                    row.extend([
                        if selector.is_empty() { "<none>".into() } else { selector.join(",") },
                        spec.session_affinity.clone().unwrap_or_else(|| "None".into()),
                        if endpoints.is_empty() { "<none>".into() } else { endpoints.join(",") },
                    ]);
                }
                rows.push(row);
            }
            print_table(rows);
        }
        Resource::Nodes => {
            let mut nodes = Api::<Node>::all(client.clone()).list(&ListParams::default()).await?.items;
            nodes.sort_by_key(|n| Layout::node_index(&n.name_any()).unwrap_or(usize::MAX));
            let mut rows = vec![["NAME", "STATUS", "INTERNAL-IP", "AGE"].map(String::from).to_vec()];
            if wide {
                rows[0].extend(["NETNS", "POD-SUBNETS", "CHASSIS", "DEVICES", "MESSAGE"].map(String::from));
            }
            for node in nodes {
                let (ready, message) = node_ready(&node);
                let ip = node
                    .status
                    .as_ref()
                    .and_then(|s| s.addresses.as_ref())
                    .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
                    .map(|a| a.address.clone())
                    .unwrap_or_default();
                let mut row =
                    vec![node.name_any(), if ready { "Ready" } else { "NotReady" }.into(), ip, age(&node.metadata)];
                if wide {
                    let annotation =
                        |key: &str| node.annotations().get(key).cloned().unwrap_or_else(|| "<none>".into());
                    // Device plugins' resources: allocatable/capacity.
                    let status = node.status.clone().unwrap_or_default();
                    let capacity = status.capacity.unwrap_or_default();
                    let allocatable = status.allocatable.unwrap_or_default();
                    let devices: Vec<String> = capacity
                        .iter()
                        .filter(|(name, _)| crate::devices::is_extended_resource(name))
                        .map(|(name, total)| {
                            let free = allocatable.get(name).map_or("0", |q| q.0.as_str());
                            format!("{name}={free}/{}", total.0)
                        })
                        .collect();
                    row.extend([
                        layout.node_netns(&node.name_any()),
                        annotation("skein.dev/node-subnets"),
                        annotation("skein.dev/chassis"),
                        if devices.is_empty() { "<none>".into() } else { devices.join(",") },
                        message,
                    ]);
                }
                rows.push(row);
            }
            print_table(rows);
        }
        Resource::Jobs => {
            let api = match namespace {
                Some(ns) => Api::<Job>::namespaced(client.clone(), ns),
                None => Api::<Job>::all(client.clone()),
            };
            let mut jobs = api.list(&ListParams::default()).await?.items;
            jobs.sort_by_key(|j| (j.namespace(), j.name_any()));
            let mut rows =
                vec![["NAMESPACE", "NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"].map(String::from).to_vec()];
            if wide {
                rows[0].extend(["MODE", "COMPLETED-INDEXES", "IMAGES"].map(String::from));
            }
            for job in jobs {
                let spec = job.spec.clone().unwrap_or_default();
                let status = job.status.clone().unwrap_or_default();
                let has =
                    |kind: &str| status.conditions.iter().flatten().any(|c| c.type_ == kind && c.status == "True");
                let state = if has("Complete") {
                    "Complete"
                } else if has("Failed") {
                    "Failed"
                } else if has("Suspended") {
                    "Suspended"
                } else {
                    "Running"
                };
                let duration = match (status.start_time.as_ref(), status.completion_time.as_ref()) {
                    (Some(start), Some(end)) => format!("{}s", end.0.as_second() - start.0.as_second()),
                    (Some(start), None) => {
                        format!("{}s", k8s_openapi::jiff::Timestamp::now().as_second() - start.0.as_second())
                    }
                    _ => String::new(),
                };
                let mut row = vec![
                    job.namespace().unwrap_or_default(),
                    job.name_any(),
                    state.into(),
                    format!("{}/{}", status.succeeded.unwrap_or(0), spec.completions.unwrap_or(1)),
                    duration,
                    age(&job.metadata),
                ];
                if wide {
                    let images: Vec<String> = spec
                        .template
                        .spec
                        .iter()
                        .flat_map(|s| s.containers.iter())
                        .filter_map(|c| c.image.clone())
                        .collect();
                    row.extend([
                        spec.completion_mode.clone().unwrap_or_else(|| "NonIndexed".into()),
                        status.completed_indexes.clone().unwrap_or_else(|| "<none>".into()),
                        images.join(","),
                    ]);
                }
                rows.push(row);
            }
            print_table(rows);
        }
    }
    Ok(())
}

/// The lines of a container's log, as the kubelet stand-in keeps it
/// (`<node>/pods/<ns>_<name>_<uid>/<container>/<attempt>.log`, CRI format): the latest run,
/// or the one before.
pub fn container_log(
    layout: &Layout,
    pod: &Pod,
    container: Option<&str>,
    previous: bool,
) -> anyhow::Result<Vec<String>> {
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty());
    let Some(node) = node else { bail!("pod {} is not scheduled yet", pod.name_any()) };
    let names: Vec<String> = pod
        .spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten().chain(s.containers.iter()))
        .map(|c| c.name.clone())
        .collect();
    let container = match container {
        Some(c) if names.iter().any(|n| n == c) => c.to_string(),
        Some(c) => bail!("pod {} has no container {c:?} (it has {})", pod.name_any(), names.join(", ")),
        None => pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .map(|c| c.name.clone())
            .ok_or_else(|| anyhow::anyhow!("pod {} has no containers", pod.name_any()))?,
    };
    let dir = layout
        .node_dir(&node)
        .join("pods")
        .join(format!("{}_{}_{}", pod.namespace().unwrap_or_default(), pod.name_any(), pod.uid().unwrap_or_default()))
        .join(&container);
    let mut attempts: Vec<(u32, PathBuf)> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().to_string();
                    Some((name.strip_suffix(".log")?.parse().ok()?, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    attempts.sort();
    let chosen = if previous { attempts.iter().rev().nth(1) } else { attempts.last() };
    let Some((_, path)) = chosen else {
        let which = if previous { "a previous run" } else { "a log yet" };
        bail!("container {container} of pod {} has no {which} (in {})", pod.name_any(), dir.display());
    };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(crate::kubelet::cri_log_lines(&text))
}

async fn find_pod(client: &Client, name: &str, namespace: Option<&str>) -> anyhow::Result<Pod> {
    let (namespace, name) = match (namespace, name.split_once('/')) {
        (_, Some((ns, n))) => (Some(ns), n),
        (ns, None) => (ns, name),
    };
    let pods = match namespace {
        Some(ns) => Api::<Pod>::namespaced(client.clone(), ns).list(&ListParams::default()).await?.items,
        None => Api::<Pod>::all(client.clone()).list(&ListParams::default()).await?.items,
    };
    let mut matching: Vec<Pod> = pods.into_iter().filter(|p| p.name_any() == name).collect();
    match matching.len() {
        0 => bail!("pod {name:?} not found{}", namespace.map(|n| format!(" in namespace {n}")).unwrap_or_default()),
        1 => Ok(matching.remove(0)),
        _ => bail!(
            "pod {name:?} exists in namespaces {}: say which with -n",
            matching.iter().filter_map(|p| p.namespace()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The namespace a pod's processes run in.
pub fn pod_netns(layout: &Layout, pod: &Pod) -> anyhow::Result<String> {
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty());
    let Some(node) = node else { bail!("pod {} is not scheduled yet", pod.name_any()) };
    if pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false) {
        return Ok(layout.node_netns(&node));
    }
    Ok(layout.pod_netns(&node, &pod.uid().unwrap_or_default()))
}

/// `skein-lab exec`: returns the command's exit code.
pub async fn exec(
    client: &Client,
    layout: &Layout,
    pod: &str,
    namespace: Option<&str>,
    command: &[String],
) -> anyhow::Result<i32> {
    let pod = find_pod(client, pod, namespace).await?;
    let netns = pod_netns(layout, &pod)?;
    if !sys::netns_list()?.contains(&netns) {
        bail!("pod {} has no sandbox yet ({netns} does not exist)", pod.name_any());
    }
    let Some((program, args)) = command.split_first() else { bail!("no command given") };
    let status = std::process::Command::new("ip")
        .args(["netns", "exec", &netns, program])
        .args(args)
        .status()
        .with_context(|| format!("running {program} in {netns}"))?;
    Ok(status.code().unwrap_or(128))
}

/// Probes through `skein-lab probe` run inside the namespace with `ip netns exec`.
#[derive(Debug, Clone)]
pub struct NetnsProber {
    /// The skein-lab binary.
    pub lab_binary: PathBuf,
}

impl Prober for NetnsProber {
    async fn probe(&self, netns: &str, targets: &[Target], options: ProbeOptions) -> Result<Vec<TargetReport>, String> {
        let mut command = sys::async_command_in_netns(netns, &self.lab_binary);
        command
            .arg("probe")
            .arg("--count")
            .arg(options.count.to_string())
            .arg("--timeout-ms")
            .arg(options.timeout.as_millis().to_string())
            .arg("--udp-tries")
            .arg(options.udp_tries.to_string())
            .arg("--give-up-after")
            .arg(options.give_up_after.to_string())
            .args(targets.iter().map(ToString::to_string))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let limit = options.timeout * (options.count * options.udp_tries.max(1)) as u32 + Duration::from_secs(10);
        let output = match tokio::time::timeout(limit, command.output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(error)) => return Err(format!("cannot run the prober in {netns}: {error}")),
            Err(_) => return Err(format!("the prober in {netns} did not finish within {limit:?}")),
        };
        if !output.status.success() {
            return Err(format!(
                "prober in {netns}: {} {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| serde_json::from_str::<TargetReport>(line).map_err(|e| format!("prober output {line:?}: {e}")))
            .collect()
    }
}

async fn latest_warning(client: &Client, namespace: &str, pod: &str) -> Option<String> {
    let events = Api::<Event>::namespaced(client.clone(), namespace).list(&ListParams::default()).await.ok()?;
    events
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(pod) && e.type_.as_deref() == Some("Warning"))
        .max_by_key(|e| e.resource_version())
        .and_then(|e| e.message)
}

/// The pods that run the lab's echo server: the ones the connectivity checks probe (a pod
/// that runs its own program, as its spec says, answers nothing the checks could judge).
fn echo_pods(layout: &Layout, pods: Vec<Pod>) -> Vec<Pod> {
    let bin_dir = LabState::read(layout).map(|s| s.binaries.bin_dir()).unwrap_or_default();
    let images = crate::podspec::LabImages::skein(&bin_dir);
    pods.into_iter()
        .filter(|p| crate::podspec::classify(p, &images, &|_| false) == Ok(crate::podspec::PodWorkload::Echo))
        .collect()
}

async fn cluster_view(client: &Client, layout: &Layout) -> anyhow::Result<ClusterView> {
    let nodes = Api::<Node>::all(client.clone()).list(&ListParams::default()).await?.items;
    let pods = echo_pods(layout, Api::<Pod>::all(client.clone()).list(&ListParams::default()).await?.items);
    let services = Api::<Service>::all(client.clone()).list(&ListParams::default()).await?.items;
    let namespaces = Api::<Namespace>::all(client.clone()).list(&ListParams::default()).await?.items;
    let policies = Api::<NetworkPolicy>::all(client.clone()).list(&ListParams::default()).await?.items;
    Ok(ClusterView::new(layout, &nodes, &pods, &services).with_policies(&namespaces, &pods, &policies))
}

/// Waits until every pod is ready (showing progress and the reason of the first waiting
/// ones), then returns the view.
async fn wait_for_pods(
    client: &Client,
    layout: &Layout,
    wait: Duration,
    progress: Progress,
) -> anyhow::Result<ClusterView> {
    let started = Instant::now();
    let mut last = String::new();
    let mut last_said = Instant::now();
    loop {
        let view = cluster_view(client, layout).await?;
        let total = view.pods.len() + view.not_ready.len();
        let mut line = format!("pods ready {}/{total}", view.pods.len());
        if let Some((key, why)) = view.not_ready.iter().next() {
            let (namespace, name) = key.split_once('/').unwrap_or(("", key));
            let warning = latest_warning(client, namespace, name).await.map(|w| format!(": {w}")).unwrap_or_default();
            line.push_str(&format!(" (waiting for {key}, {why}{warning})"));
        }
        if line != last || last_said.elapsed() > Duration::from_secs(10) {
            progress.say(&line);
            last = line;
            last_said = Instant::now();
        }
        if view.not_ready.is_empty() {
            return Ok(view);
        }
        if started.elapsed() > wait {
            bail!(
                "pods not ready after {} s: {}",
                wait.as_secs(),
                view.not_ready.iter().map(|(k, v)| format!("{k} ({v})")).collect::<Vec<_>>().join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn wait_pod_ready(client: &Client, namespace: &str, name: &str, wait: Duration) -> anyhow::Result<Pod> {
    let api = Api::<Pod>::namespaced(client.clone(), namespace);
    let started = Instant::now();
    loop {
        if let Some(pod) = api.get_opt(name).await?
            && crate::endpointslices::pod_ready(&pod)
            && !crate::endpointslices::pod_ips(&pod).is_empty()
        {
            return Ok(pod);
        }
        if started.elapsed() > wait {
            let warning = latest_warning(client, namespace, name).await.unwrap_or_default();
            bail!("pod {namespace}/{name} not ready after {} s {warning}", wait.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn probe_pod(name: &str, node: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "labels": {"skein-lab/role": "probe"}},
        "spec": {"nodeSelector": {"kubernetes.io/hostname": node}, "containers": [{"name": "main", "image": "skein-lab/echo"}]}
    }))?)
}

async fn answers_as(prober: &NetnsProber, from: &str, target: Target) -> Option<String> {
    let options = ProbeOptions { count: 1, timeout: Duration::from_millis(700), udp_tries: 1, give_up_after: 0 };
    let reports = prober.probe(from, &[target], options).await.ok()?;
    reports.first()?.attempts.first()?.reply.as_ref().map(|r| r.name.clone())
}

/// A deleted pod's address stops answering, its sandbox goes, and the next pod on that node
/// (which may get the address once released) answers as itself.
async fn check_pod_deletion(
    client: &Client,
    layout: &Layout,
    view: &ClusterView,
    prober: &NetnsProber,
    progress: Progress,
) -> CheckResult {
    let node = view.nodes.last().map(|n| n.name.clone()).unwrap_or_else(|| "node1".into());
    // The probe pods are not in the policy model: probe from a pod no egress policy holds
    // back (they land in `default`, which the demo's policies do not isolate).
    let client_pod = view.open_client(&node);
    let title = format!("pod deleted on {node}: its IP stops answering, address released and reused");
    let fail = |detail: String| CheckResult { title: title.clone(), passed: false, detail, latency: None, tries: 1 };
    let Some(client_pod) = client_pod else { return fail("no client pod to probe from".into()) };
    let api = Api::<Pod>::namespaced(client.clone(), "default");
    let suffix = format!("{:04x}", crate::layout::fnv1a64(format!("{:?}", Instant::now()).as_bytes()) as u16);
    let (first, second) = (format!("lab-probe-{suffix}-a"), format!("lab-probe-{suffix}-b"));
    progress.say(format!("deletion check: creating pod default/{first} on {node}"));
    let outcome: anyhow::Result<CheckResult> = async {
        api.create(&PostParams::default(), &probe_pod(&first, &node)?).await?;
        let pod = wait_pod_ready(client, "default", &first, Duration::from_secs(90)).await?;
        let ip = crate::endpointslices::pod_ips(&pod)[0];
        let netns = pod_netns(layout, &pod)?;
        let target = Target { proto: echo::Proto::Tcp, addr: SocketAddr::new(ip, 8080) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while answers_as(prober, &client_pod.netns, target).await.as_deref() != Some(first.as_str()) {
            if Instant::now() > deadline {
                bail!("{first} ({ip}) never answered {} before deletion", client_pod.name);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        api.delete(&first, &DeleteParams::default()).await?;
        let deleted = Instant::now();
        let silent_after = loop {
            match answers_as(prober, &client_pod.netns, target).await {
                Some(name) if name == first => {}
                _ => break deleted.elapsed(),
            }
            if deleted.elapsed() > Duration::from_secs(20) {
                bail!("{ip} still answered as {first} 20 s after the pod was deleted");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        while sys::netns_list()?.contains(&netns) {
            if deleted.elapsed() > Duration::from_secs(30) {
                bail!("sandbox {netns} still exists 30 s after the pod was deleted");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        progress.say(format!(
            "deletion check: {ip} silent {:.1} s after delete; creating default/{second} on {node}",
            silent_after.as_secs_f64()
        ));
        api.create(&PostParams::default(), &probe_pod(&second, &node)?).await?;
        let next = wait_pod_ready(client, "default", &second, Duration::from_secs(90)).await?;
        let next_ip = crate::endpointslices::pod_ips(&next)[0];
        let next_target = Target { proto: echo::Proto::Tcp, addr: SocketAddr::new(next_ip, 8080) };
        let deadline = Instant::now() + Duration::from_secs(20);
        let answer = loop {
            let answer = answers_as(prober, &client_pod.netns, next_target).await;
            if answer.as_deref() == Some(second.as_str()) || Instant::now() > deadline {
                break answer;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if answer.as_deref() != Some(second.as_str()) {
            bail!("{second} ({next_ip}) answered as {answer:?}, expected {second}");
        }
        let reuse = if next_ip == ip { "reused by" } else { "not reused; next pod" };
        Ok(CheckResult {
            title: title.clone(),
            passed: true,
            detail: format!(
                "{ip} silent after delete, sandbox removed; {reuse} {second} ({next_ip}), answers as itself"
            ),
            latency: Some(silent_after),
            tries: 1,
        })
    }
    .await;
    for name in [&first, &second] {
        let _ = api.delete(name, &DeleteParams::default()).await;
    }
    outcome.unwrap_or_else(|e| fail(format!("{e:#}")))
}

/// The port of the restart check's own echo servers (in pods' namespaces and outside).
const HOLD_PORT: u16 = 47070;

/// The restart check's long-lived connections: every kind through `node`, with the servers
/// and the Service they need.
struct Held {
    connections: Vec<hold::Connection>,
    _servers: Vec<hold::EchoServer>,
    /// Kinds that could not be set up (no pod where one is needed).
    missing: Vec<&'static str>,
}

/// The connection kinds the restart check holds across the restart.
const HELD_KINDS: [&str; 8] = hold::KINDS;

/// Starts echo servers in a pod on `node`, a pod on another node and the outside, a NodePort
/// Service (TCP and UDP, without selector: its EndpointSlice names those two pods), and one
/// connection of each of [`HELD_KINDS`] through `node`: from a third pod on it, and from
/// outside to `node`'s NodePort.
async fn hold_connections(client: &Client, layout: &Layout, view: &ClusterView, node: &str) -> anyhow::Result<Held> {
    let on_node: Vec<&checks::PodInfo> = view.pods.iter().filter(|p| p.node == node).collect();
    let Some(client_pod) = on_node.first() else { bail!("no pod on {node}") };
    let local = on_node.get(1);
    let remote = view.pods.iter().find(|p| p.node != node);
    let node_ip = view.nodes.iter().find(|n| n.name == node).map(|n| n.ip).context("the node's address")?;
    let IpAddr::V4(node_ip) = node_ip else { bail!("{node} has no IPv4 address") };
    let v4 = |ip: IpAddr| match ip {
        IpAddr::V4(ip) => Some(std::net::SocketAddrV4::new(ip, HOLD_PORT)),
        IpAddr::V6(_) => None,
    };
    let mut servers = Vec::new();
    let mut backends = Vec::new();
    for pod in [local.copied(), remote].into_iter().flatten() {
        let at = v4(pod.ip).context("pods have IPv4 addresses")?;
        let bind = std::net::SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, HOLD_PORT);
        servers.push(hold::EchoServer::start(&pod.netns, bind).map_err(anyhow::Error::msg)?);
        backends.push((pod, at));
    }
    let outside = std::net::SocketAddrV4::new(crate::layout::OUTSIDE_IP, HOLD_PORT);
    servers.push(hold::EchoServer::start(&layout.outside_netns(), outside).map_err(anyhow::Error::msg)?);

    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let _ = services.delete(HOLD_SERVICE, &DeleteParams::default()).await;
    let _ = slices.delete(HOLD_SERVICE, &DeleteParams::default()).await;
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": HOLD_SERVICE, "namespace": "default"},
        "spec": {"type": "NodePort", "ports": [
            {"name": "tcp", "port": HOLD_PORT, "targetPort": HOLD_PORT, "protocol": "TCP"},
            {"name": "udp", "port": HOLD_PORT, "targetPort": HOLD_PORT, "protocol": "UDP"}]}
    }))?;
    let service = services.create(&PostParams::default(), &service).await.context("creating the check's Service")?;
    let spec = service.spec.unwrap_or_default();
    let vip: std::net::Ipv4Addr =
        spec.cluster_ip.as_deref().and_then(|ip| ip.parse().ok()).context("the Service got no IPv4 ClusterIP")?;
    let node_port = spec
        .ports
        .iter()
        .flatten()
        .find(|p| p.protocol.as_deref() == Some("TCP"))
        .and_then(|p| p.node_port)
        .and_then(|p| u16::try_from(p).ok())
        .context("the Service got no NodePort")?;
    let endpoints: Vec<serde_json::Value> = backends
        .iter()
        .map(|(pod, at)| json!({"addresses": [at.ip().to_string()], "conditions": {"ready": true}, "nodeName": pod.node}))
        .collect();
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": HOLD_SERVICE, "namespace": "default",
                     "labels": {"kubernetes.io/service-name": HOLD_SERVICE}},
        "addressType": "IPv4",
        "ports": [{"name": "tcp", "port": HOLD_PORT, "protocol": "TCP"}, {"name": "udp", "port": HOLD_PORT, "protocol": "UDP"}],
        "endpoints": endpoints,
    }))?;
    slices.create(&PostParams::default(), &slice).await.context("creating the check's EndpointSlice")?;

    let vip = std::net::SocketAddrV4::new(vip, HOLD_PORT);
    let node_port = std::net::SocketAddrV4::new(node_ip, node_port);
    let pod_ns = client_pod.netns.clone();
    let local_at = local.and_then(|p| v4(p.ip));
    let remote_at = remote.and_then(|p| v4(p.ip));
    let has_backend = !backends.is_empty();
    let wanted: [(&'static str, String, hold::Proto, Option<std::net::SocketAddrV4>); 8] = [
        (HELD_KINDS[0], pod_ns.clone(), hold::Proto::Tcp, local_at),
        (HELD_KINDS[1], pod_ns.clone(), hold::Proto::Tcp, remote_at),
        (HELD_KINDS[2], pod_ns.clone(), hold::Proto::Tcp, has_backend.then_some(vip)),
        (HELD_KINDS[3], layout.outside_netns(), hold::Proto::Tcp, has_backend.then_some(node_port)),
        (HELD_KINDS[4], pod_ns.clone(), hold::Proto::Tcp, Some(outside)),
        (HELD_KINDS[5], pod_ns.clone(), hold::Proto::Udp, remote_at),
        (HELD_KINDS[6], pod_ns.clone(), hold::Proto::Udp, has_backend.then_some(vip)),
        (HELD_KINDS[7], pod_ns, hold::Proto::Udp, Some(outside)),
    ];
    tokio::task::spawn_blocking(move || {
        let mut connections = Vec::new();
        let mut missing = Vec::new();
        for (kind, ns, proto, dst) in wanted {
            let Some(dst) = dst else {
                missing.push(kind);
                continue;
            };
            // The Service's flows reach the node a moment after the objects exist.
            let deadline = Instant::now() + Duration::from_secs(30);
            while !hold::answers(&ns, proto, dst) {
                if Instant::now() > deadline {
                    bail!("{kind}: {dst} does not answer from {ns}");
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            connections.push(hold::Connection::start(kind, &ns, proto, dst));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for c in &connections {
            while c.answered() < 3 {
                if Instant::now() > deadline {
                    bail!("{} does not exchange", c.kind());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(Held { connections, _servers: servers, missing })
    })
    .await?
}

/// The restart check's Service and EndpointSlice.
const HOLD_SERVICE: &str = "skein-lab-restart-hold";

/// Restarts one node's agent, waits until its CNI plugin reports ready again, then runs the
/// connectivity checks again; long-lived connections of every kind through the node are held
/// across the restart and must all survive.
async fn check_agent_restart(
    client: &Client,
    layout: &Layout,
    view: &ClusterView,
    plan: &[checks::Check],
    before: &[CheckResult],
    prober: &NetnsProber,
    progress: Progress,
) -> CheckResult {
    let mut load: BTreeMap<&str, usize> = BTreeMap::new();
    for pod in &view.pods {
        *load.entry(pod.node.as_str()).or_default() += 1;
    }
    let node = load
        .iter()
        .max_by_key(|(n, c)| (**c, std::cmp::Reverse(**n)))
        .map(|(n, _)| n.to_string())
        .unwrap_or_else(|| "node1".into());
    let title = format!("after restarting skein-agent on {node}: the checks that passed still pass");
    let fail = |detail: String| CheckResult { title: title.clone(), passed: false, detail, latency: None, tries: 1 };
    progress.say(format!("restart check: holding connections of every kind through {node}"));
    let held = match hold_connections(client, layout, view, &node).await {
        Ok(held) => held,
        Err(e) => return fail(format!("setting up the long-lived connections: {e:#}")),
    };
    let restarted_at = Instant::now();
    progress.say(format!("restart check: restarting skein-agent on {node}"));
    let response =
        match control(layout, &ControlRequest::RestartAgent { node: node.clone() }, Duration::from_secs(30)).await {
            Ok(r) if r.ok => r,
            Ok(r) => return fail(r.message),
            Err(e) => return fail(format!("{e:#}")),
        };
    let restarted = Instant::now();
    let mut bin_dirs = vec![layout.cni_bin_dir(&node)];
    bin_dirs.extend(containerd::REFERENCE_PLUGIN_DIRS.iter().map(PathBuf::from));
    let cni = NodeCni { node_netns: layout.node_netns(&node), conf_dir: layout.cni_conf_dir(&node), bin_dirs };
    // The old process may still answer for a moment; the new one is what counts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    loop {
        match cni.status().await {
            Ok(_) => break,
            Err(error) if restarted.elapsed() > Duration::from_secs(60) => {
                return fail(format!("{}; network not ready 60 s after the restart: {error}", response.message));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let ready_after = restarted.elapsed();
    progress.say(format!(
        "restart check: {node} ready again after {:.1} s; running the {} checks again",
        ready_after.as_secs_f64(),
        plan.len()
    ));
    let passed_before: Vec<bool> = plan.iter().map(|c| before.iter().any(|r| r.title == c.title && r.passed)).collect();
    let results = checks::run_all(prober, plan, Duration::from_secs(2), Duration::from_secs(30), |_, _| {}).await;
    let regressed: Vec<&CheckResult> =
        results.iter().zip(&passed_before).filter(|(r, before)| **before && !r.passed).map(|(r, _)| r).collect();
    let passing_before = passed_before.iter().filter(|p| **p).count();
    let still_failing = results.iter().zip(&passed_before).filter(|(r, before)| !**before && !r.passed).count();
    let retried = results.iter().filter(|r| r.passed && r.tries > 1).count();
    // The held connections: a second more after the checks, then their reports.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let Held { connections, _servers, missing } = held;
    let reports = tokio::task::spawn_blocking(move || {
        let reports: Vec<hold::Report> = connections.into_iter().map(hold::Connection::finish).collect();
        drop(_servers);
        reports
    })
    .await
    .unwrap_or_default();
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let _ = services.delete(HOLD_SERVICE, &DeleteParams::default()).await;
    let _ = slices.delete(HOLD_SERVICE, &DeleteParams::default()).await;
    let lost: Vec<String> =
        reports.iter().filter_map(|r| r.lost.as_ref().map(|why| format!("{}: {why}", r.kind))).collect();
    let pause = reports.iter().map(|r| r.stall_within(restarted_at, Instant::now())).max().unwrap_or_default();
    let unanswered: u64 =
        reports.iter().filter(|r| r.kind.starts_with("udp")).map(|r| r.sent.saturating_sub(r.answered)).sum();
    if !lost.is_empty() {
        return fail(format!("{}/{} long-lived connections lost: {}", lost.len(), reports.len(), lost.join(" | ")));
    }
    let mut notes = Vec::new();
    if !missing.is_empty() {
        notes.push(format!("not held (no pod for them): {}", missing.join(", ")));
    }
    if retried > 0 {
        notes.push(format!("{retried} after a retry"));
    }
    if still_failing > 0 {
        notes.push(format!("{still_failing} that failed before still fail"));
    }
    let notes = if notes.is_empty() { String::new() } else { format!(" ({})", notes.join(", ")) };
    if regressed.is_empty() {
        CheckResult {
            title,
            passed: true,
            detail: format!(
                "{}, network ready after {:.1} s; {passing_before}/{passing_before} pass again; {}/{} long-lived connections kept (longest pause {} ms, {unanswered} UDP requests unanswered){notes}",
                response.message,
                ready_after.as_secs_f64(),
                reports.len(),
                reports.len(),
                pause.as_millis()
            ),
            latency: Some(ready_after),
            tries: 1,
        }
    } else {
        let shown: Vec<String> = regressed.iter().take(3).map(|r| format!("{} ({})", r.title, r.detail)).collect();
        fail(format!("{}/{passing_before} no longer pass: {}", regressed.len(), shown.join(" | ")))
    }
}

/// Waits (up to `wait`) for every Job to finish, then judges each: complete, and for
/// `skein-allreduce` Jobs, rank 0's results against the reference (`checks::judge_job`).
async fn check_jobs(
    client: &Client,
    layout: &Layout,
    wait: Duration,
    progress: Progress,
) -> anyhow::Result<Vec<CheckResult>> {
    let api = Api::<Job>::all(client.clone());
    let started = Instant::now();
    let mut said = String::new();
    let jobs = loop {
        let jobs = api.list(&ListParams::default()).await?.items;
        let running: Vec<String> = jobs
            .iter()
            .filter(|j| !crate::jobs::finished(j))
            .map(|j| format!("{}/{}", j.namespace().unwrap_or_default(), j.name_any()))
            .collect();
        if running.is_empty() || started.elapsed() > wait {
            break jobs;
        }
        let line = format!("waiting for jobs to finish: {}", running.join(", "));
        if line != said {
            progress.say(&line);
            said = line;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut results = Vec::new();
    for job in jobs {
        let namespace = job.namespace().unwrap_or_default();
        let uid = job.uid().unwrap_or_default();
        let selector = format!("{}={uid}", crate::jobs::CONTROLLER_UID_LABEL);
        let pods = Api::<Pod>::namespaced(client.clone(), &namespace)
            .list(&ListParams::default().labels(&selector))
            .await?
            .items;
        // Rank 0: completion index 0 (the latest such pod), else the only pod.
        let rank0 = pods
            .iter()
            .filter(|p| crate::jobs::completion_index(p).is_none_or(|i| i == 0))
            .max_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
        let log = rank0.map(|p| container_log(layout, p, None, false).unwrap_or_default()).unwrap_or_default();
        let (passed, detail) = checks::judge_job(&job, &pods, &log);
        let status = job.status.clone().unwrap_or_default();
        let latency = match (status.start_time, status.completion_time) {
            (Some(start), Some(end)) => {
                Some(Duration::from_secs(u64::try_from(end.0.as_second() - start.0.as_second()).unwrap_or(0)))
            }
            _ => None,
        };
        results.push(CheckResult { title: checks::job_title(&job), passed, detail, latency, tries: 1 });
    }
    Ok(results)
}

/// Whether the lab's API refused the master or an agent anything, from their logs: the lab's
/// API enforces the install manifests' RBAC on their ServiceAccount tokens, so a refusal is
/// a verb the chart does not grant (or a token that does not authenticate).
fn check_api_permissions(layout: &Layout, nodes: usize) -> CheckResult {
    let mut logs = vec![("skein-master".to_owned(), layout.master_log())];
    for index in 1..=nodes {
        let node = Layout::node_name(index);
        logs.push((format!("skein-agent on {node}"), layout.agent_log(&node)));
    }
    let texts: Vec<(String, String)> =
        logs.iter().map(|(who, path)| (who.clone(), std::fs::read_to_string(path).unwrap_or_default())).collect();
    let refused = api_refusals(&texts);
    let title =
        "skein-master and skein-agents: every API request allowed (the install manifests' RBAC and admission policies)"
            .to_owned();
    let detail = match refused.first() {
        None => format!("no refusal in {} component logs", logs.len()),
        Some(first) => format!("{} refusals, the first: {first}", refused.len()),
    };
    CheckResult { title, passed: refused.is_empty(), detail, latency: None, tries: 1 }
}

/// The lines of components' logs (component, text) that report a request the API refused
/// (403 Forbidden from RBAC or an admission policy, 401 for a token), each prefixed with its
/// component.
fn api_refusals(logs: &[(String, String)]) -> Vec<String> {
    let refusal =
        |line: &str| line.contains("is forbidden: ") || line.contains("code: 401") || line.contains("code: 403");
    logs.iter()
        .flat_map(|(who, text)| text.lines().filter(|l| refusal(l)).map(move |l| format!("{who}: {}", l.trim())))
        .collect()
}

/// `skein-lab check`: returns the results (the caller prints the table).
pub async fn check(
    client: &Client,
    layout: &Layout,
    disruptive: bool,
    wait: Duration,
    progress: Progress,
) -> anyhow::Result<Vec<CheckResult>> {
    let state =
        LabState::read(layout).with_context(|| format!("no lab {:?} is up: run `skein-lab up`", layout.prefix()))?;
    let prober = NetnsProber { lab_binary: std::env::current_exe()? };
    let view = wait_for_pods(client, layout, wait, progress).await?;
    let plan = checks::plan(&view, layout);
    let policies = match &view.policies {
        Some(p) => {
            for problem in &p.problems {
                progress.say(format!("warning: {problem}"));
            }
            format!(", {} network policies (expected verdicts from the reference model)", p.names.len())
        }
        None => String::new(),
    };
    progress.say(format!(
        "running {} checks over {} pods, {} services, {} nodes{policies}",
        plan.len(),
        view.pods.len(),
        view.services.len(),
        view.nodes.len()
    ));
    let mut last_done = usize::MAX;
    let mut results =
        checks::run_all(&prober, &plan, Duration::from_secs(2), Duration::from_secs(30), |done, total| {
            if done != last_done {
                last_done = done;
                progress.say(format!("checks passed so far {done}/{total}"));
            }
        })
        .await;
    results.extend(check_jobs(client, layout, wait, progress).await?);
    results.push(check_api_permissions(layout, state.nodes));
    if disruptive {
        results.push(check_pod_deletion(client, layout, &view, &prober, progress).await);
        let before = results.clone();
        results.push(check_agent_restart(client, layout, &view, &plan, &before, &prober, progress).await);
    }
    let exits = LabState::read(layout).map(|s| s.exits).unwrap_or_default();
    if exits.len() > state.exits.len() {
        for exit in &exits[state.exits.len()..] {
            progress.say(format!("warning: {exit}"));
        }
    }
    Ok(results)
}

async fn demo(
    layout: &Layout,
    nodes: usize,
    keep: bool,
    bin_dir: Option<&Path>,
    wait: Duration,
    progress: Progress,
) -> anyhow::Result<bool> {
    progress.say(format!("skein-lab demo: {nodes} nodes, prefix {:?}", layout.prefix()));
    let binaries = Binaries::find(bin_dir)?;
    if !binaries.allreduce.is_file() {
        bail!(
            "{} is missing (the demo's allreduce job runs it): cargo build -p skein-collectives --bin skein-allreduce",
            binaries.allreduce.display()
        );
    }
    let outcome: anyhow::Result<Vec<CheckResult>> = async {
        let client = up(layout, nodes, bin_dir, wait, &[], crate::layout::DEFAULT_UNDERLAY_MTU, progress).await?;
        progress.say(format!("applying the demo scenario (namespace {})", scenario::NAMESPACE));
        for line in apply(&client, &scenario::demo_yaml(nodes), "default").await? {
            progress.say(line);
        }
        progress.say(format!(
            "applying the allreduce job (manifests/examples/allreduce-job.yaml, a short sweep; namespace {})",
            scenario::NAMESPACE
        ));
        let job = scenario::allreduce_job_yaml().map_err(anyhow::Error::msg)?;
        for line in apply(&client, &job, scenario::NAMESPACE).await? {
            progress.say(line);
        }
        check(&client, layout, true, wait, progress).await
    }
    .await;
    let passed = match &outcome {
        Ok(results) => {
            print!("{}", checks::table(results));
            results.iter().all(|r| r.passed)
        }
        Err(error) => {
            eprintln!("demo failed: {error:#}");
            println!("checks passed: 0/1");
            false
        }
    };
    if keep {
        progress.say(format!("the lab stays up: `skein-lab get pods -o wide`, `skein-lab exec POD -- CMD`, `skein-lab down` (logs in {})", layout.state_dir().display()));
    } else {
        if !passed {
            save_logs(layout);
        }
        progress.say("tearing the lab down");
        if let Err(error) = down(layout, progress).await {
            eprintln!("down: {error:#}");
        }
    }
    Ok(passed)
}

/// Keeps the logs of a failed demo in /tmp before the state directory goes.
fn save_logs(layout: &Layout) {
    let target = PathBuf::from(format!("/tmp/skein-lab-{}-logs", layout.prefix()));
    let _ = std::fs::remove_dir_all(&target);
    if sys::run("cp", ["-r", &layout.state_dir().display().to_string(), &target.display().to_string()]).is_ok() {
        eprintln!("logs of the failed run kept in {}", target.display());
    }
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SKEIN_LAB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
}

/// Runs a command; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    let layout = Layout::new(&cli.prefix)?;
    let progress = Progress::new();
    match cli.command {
        Command::EchoServer { name, address, ports } => {
            echo::serve(&name, address, &ports).map_err(anyhow::Error::msg)?;
            println!("ready");
            std::io::Write::flush(&mut std::io::stdout())?;
            loop {
                std::thread::park();
            }
        }
        Command::RemoteShellServer { address, port } => {
            crate::remote_shell::serve(SocketAddr::new(address, port), &crate::remote_shell::token_from_env())?;
            Ok(0)
        }
        Command::RemoteShell { port, stop, wait, args } => {
            use crate::remote_shell::{Request, run, token_from_env};
            let token = token_from_env();
            let (host, request) = match stop {
                Some(host) => (host, Request::Stop { token }),
                None => {
                    let (host, command) = crate::remote_shell::parse_agent_args(&args).map_err(anyhow::Error::msg)?;
                    (host, Request::Run { token, command })
                }
            };
            match run(&host, port, &request, Duration::from_secs(wait)) {
                Ok(code) => Ok(code),
                Err(error) => {
                    eprintln!("skein-lab remote-shell: {error}");
                    Ok(255)
                }
            }
        }
        Command::Probe { count, timeout_ms, udp_tries, give_up_after, targets } => {
            let options = ProbeOptions { count, timeout: Duration::from_millis(timeout_ms), udp_tries, give_up_after };
            let reports = tokio::task::spawn_blocking(move || echo::probe(&targets, options)).await?;
            for report in reports {
                println!("{}", serde_json::to_string(&report)?);
            }
            Ok(0)
        }
        Command::Daemon { nodes, bin_dir, manual_pods, underlay_mtu } => {
            init_logging("info,kube_runtime=warn,kube_client=warn");
            let binaries = Binaries::find(bin_dir.as_deref())?;
            daemon::run(layout, nodes, underlay_mtu, binaries, manual_pods).await?;
            Ok(0)
        }
        Command::Up { nodes, bin_dir, wait, manual_pods, underlay_mtu } => {
            init_logging("warn");
            let wait = Duration::from_secs(wait);
            up(&layout, nodes, bin_dir.as_deref(), wait, &manual_pods, underlay_mtu, progress).await?;
            progress.say(format!(
                "lab {:?} is up: `skein-lab get nodes -o wide`, `skein-lab apply -f FILE`, `skein-lab check`",
                layout.prefix()
            ));
            Ok(0)
        }
        Command::Down => {
            init_logging("warn");
            down(&layout, progress).await?;
            Ok(0)
        }
        Command::Kubeconfig => match running_kubeconfig(&layout) {
            Ok(path) => {
                println!("{}", path.display());
                Ok(0)
            }
            Err(why) => {
                eprintln!("skein-lab: {why}");
                Ok(1)
            }
        },
        Command::Apply { file, namespace } => {
            init_logging("warn");
            let text = read_manifest(&file).await?;
            let client = lab_client(&layout).await?;
            for line in apply(&client, &text, &namespace).await? {
                println!("{line}");
            }
            Ok(0)
        }
        Command::Get { resource, namespace, output } => {
            init_logging("warn");
            let client = lab_client(&layout).await?;
            get(&client, &layout, resource, namespace.as_deref(), output == Some(Output::Wide)).await?;
            Ok(0)
        }
        Command::Logs { pod, namespace, container, previous } => {
            init_logging("warn");
            let client = lab_client(&layout).await?;
            let pod = find_pod(&client, &pod, namespace.as_deref()).await?;
            for line in container_log(&layout, &pod, container.as_deref(), previous)? {
                println!("{line}");
            }
            Ok(0)
        }
        Command::Exec { pod, namespace, command } => {
            init_logging("warn");
            require_root()?;
            let client = lab_client(&layout).await?;
            exec(&client, &layout, &pod, namespace.as_deref(), &command).await
        }
        Command::Check { disruptive, wait } => {
            init_logging("warn");
            require_root()?;
            let client = lab_client(&layout).await?;
            let results = check(&client, &layout, disruptive, Duration::from_secs(wait), progress).await?;
            print!("{}", checks::table(&results));
            Ok(if results.iter().all(|r| r.passed) { 0 } else { 1 })
        }
        Command::Demo { nodes, keep, bin_dir, wait } => {
            init_logging("warn");
            require_root()?;
            // Ctrl-C tears the lab down (its daemon is in its own process group and would stay).
            tokio::select! {
                passed = demo(&layout, nodes, keep, bin_dir.as_deref(), Duration::from_secs(wait), progress) => {
                    Ok(if passed? { 0 } else { 1 })
                }
                _ = tokio::signal::ctrl_c() => {
                    progress.say("interrupted: tearing the lab down");
                    down(&layout, progress).await?;
                    Ok(130)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_api_requests_are_found_in_the_components_logs() {
        let master = "INFO serving\nWARN annotation write refused object=pod demo/p code=403 reason=pods \"p\" is forbidden: User \"system:serviceaccount:skein-system:skein-master\" cannot patch resource \"pods\"\nINFO done";
        let agent = "WARN watch failed: ApiError: Unauthorized (ErrorResponse { status: \"Failure\", message: \"Unauthorized\", reason: \"Unauthorized\", code: 401 })";
        let logs =
            vec![("skein-master".to_owned(), master.to_owned()), ("skein-agent on node1".to_owned(), agent.to_owned())];
        let refused = api_refusals(&logs);
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(refused[0].starts_with("skein-master: WARN annotation write refused"));
        assert!(refused[1].starts_with("skein-agent on node1: "));
        assert!(api_refusals(&[("skein-master".to_owned(), "INFO all fine, code: 200".to_owned())]).is_empty());
        let denied = "WARN nodes \"node2\" is forbidden: ValidatingAdmissionPolicy 'skein-agent-own-node' with binding 'skein-agent-own-node' denied request: skein-agent may change only the Node it runs on, not node2";
        assert_eq!(api_refusals(&[("skein-agent on node1".to_owned(), denied.to_owned())]).len(), 1);
    }
}
