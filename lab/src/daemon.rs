//! The lab's background process (`skein-lab up` starts it, `skein-lab down` stops it): builds
//! the topology, serves the API and the cluster DNS, runs the scheduler, the EndpointSlice,
//! Deployment and Job controllers and one kubelet per node (with its synthetic RDMA
//! hardware), and supervises the real `skein-master`, one `skein-dp` and one `skein-agent` per node (in
//! the node's namespace) and the outside echo server — restarting any that exits, as
//! Kubernetes would. It records its state in the state file and answers on a control socket.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skein_kube_fake::access::Access;
use skein_kube_fake::{FakeApiServer, ServerOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::containerd::NodeRuntime;
use crate::devices::DeviceManager;
use crate::image::{self, ImageContents};
use crate::kubelet::Kubelet;
use crate::layout::{
    API_PORT, DNS_PORT, HOST_IP, Layout, MASTER_METRICS_PORT, OUTSIDE_IP, OUTSIDE_PORT, SOUTHBOUND_PORT,
};
use crate::podspec::LabImages;
use crate::rdma::RdmaTree;
use crate::state::{Binaries, ControlRequest, ControlResponse, LabState, ProcessExit};
use crate::{deployments, dns, endpointslices, jobs, scheduler, sys, topology};

/// How long a node's containerd may take to answer its first CRI call.
const RUNTIME_START: Duration = Duration::from_secs(30);

/// A child process the daemon keeps running (unless asked to keep it stopped).
struct Supervised {
    role: String,
    program: PathBuf,
    args: Vec<String>,
    netns: Option<String>,
    log: PathBuf,
    pid: AtomicI32,
    restart: Notify,
    /// Whether it should run: `stop-process` clears it, `start-process` sets it.
    wanted: tokio::sync::watch::Sender<bool>,
}

impl Supervised {
    fn new(role: String, program: PathBuf, args: Vec<String>, netns: Option<String>, log: PathBuf) -> Supervised {
        Supervised {
            role,
            program,
            args,
            netns,
            log,
            pid: AtomicI32::new(0),
            restart: Notify::new(),
            wanted: tokio::sync::watch::Sender::new(true),
        }
    }

    fn command(&self) -> tokio::process::Command {
        let mut command = match &self.netns {
            Some(netns) => sys::async_command_in_netns(netns, &self.program),
            None => tokio::process::Command::new(&self.program),
        };
        command.args(&self.args);
        command
    }
}

/// Waits until `wanted` holds `value` (forever if its sender is gone).
async fn wait_until(wanted: &mut tokio::sync::watch::Receiver<bool>, value: bool) {
    if wanted.wait_for(|w| *w == value).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn terminate(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        sys::signal(pid, rustix::process::Signal::TERM);
    }
    if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

struct Daemon {
    layout: Layout,
    state: Mutex<LabState>,
    processes: Mutex<BTreeMap<String, Arc<Supervised>>>,
    stop: CancellationToken,
}

impl Daemon {
    fn update(&self, change: impl FnOnce(&mut LabState)) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut state);
        if let Err(error) = state.write(&self.layout) {
            tracing::warn!(%error, "cannot write the state file");
        }
    }

    fn phase(&self, phase: &str, message: impl Into<String>) {
        let message = message.into();
        tracing::info!(phase, "{message}");
        self.update(|s| {
            s.phase = phase.into();
            s.message = message;
        });
    }

    /// Runs `process` until the daemon stops, restarting it whenever it exits or is asked to.
    async fn supervise(self: Arc<Self>, process: Arc<Supervised>) {
        let mut backoff = Duration::from_millis(500);
        let mut wanted = process.wanted.subscribe();
        loop {
            let run = *wanted.borrow_and_update();
            if !run {
                tokio::select! {
                    () = self.stop.cancelled() => return,
                    () = wait_until(&mut wanted, true) => {}
                }
                backoff = Duration::from_millis(500);
            }
            let log = std::fs::OpenOptions::new().create(true).append(true).open(&process.log);
            let (stdout, stderr) = match log.and_then(|f| Ok((f.try_clone()?, f))) {
                Ok((a, b)) => (Stdio::from(a), Stdio::from(b)),
                Err(_) => (Stdio::null(), Stdio::null()),
            };
            let mut command = process.command();
            command.stdin(Stdio::null()).stdout(stdout).stderr(stderr).kill_on_drop(true);
            let mut child = match command.spawn() {
                Ok(child) => child,
                Err(error) => {
                    tracing::error!(role = %process.role, %error, "cannot start");
                    tokio::select! {
                        () = self.stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(2)) => continue,
                    }
                }
            };
            let pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
            process.pid.store(pid, Ordering::SeqCst);
            self.update(|s| {
                s.processes.insert(process.role.clone(), pid);
            });
            tracing::info!(role = %process.role, pid, log = %process.log.display(), "started");
            let started = std::time::Instant::now();
            tokio::select! {
                status = child.wait() => {
                    let status = status.map_or_else(|e| format!("wait failed: {e}"), |s| s.to_string());
                    tracing::warn!(role = %process.role, pid, %status, "exited; restarting in {backoff:?}");
                    let exit = ProcessExit {
                        role: process.role.clone(),
                        pid,
                        status,
                        after_seconds: started.elapsed().as_secs_f64(),
                        log: process.log.clone(),
                        last_lines: sys::tail(&process.log, 12),
                    };
                    self.update(|s| s.record_exit(exit));
                    tokio::select! {
                        () = self.stop.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
                () = process.restart.notified() => {
                    tracing::info!(role = %process.role, pid, "restarting on request");
                    terminate(&mut child).await;
                    backoff = Duration::from_millis(500);
                }
                () = wait_until(&mut wanted, false) => {
                    terminate(&mut child).await;
                    process.pid.store(0, Ordering::SeqCst);
                    self.update(|s| { s.processes.remove(&process.role); });
                    tracing::info!(role = %process.role, pid, "stopped on request");
                }
                () = self.stop.cancelled() => {
                    terminate(&mut child).await;
                    process.pid.store(0, Ordering::SeqCst);
                    self.update(|s| { s.processes.remove(&process.role); });
                    tracing::info!(role = %process.role, pid, "stopped");
                    return;
                }
            }
        }
    }

    fn add_process(self: &Arc<Self>, process: Supervised, tasks: &mut Vec<tokio::task::JoinHandle<()>>) {
        let process = Arc::new(process);
        self.processes.lock().unwrap_or_else(|e| e.into_inner()).insert(process.role.clone(), process.clone());
        tasks.push(tokio::spawn(self.clone().supervise(process)));
    }

    async fn handle(self: &Arc<Self>, request: ControlRequest) -> ControlResponse {
        match request {
            ControlRequest::Status => {
                let state = self.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
                ControlResponse {
                    ok: true,
                    message: format!("{}: {}", state.phase, state.message),
                    pid: Some(state.daemon_pid),
                }
            }
            ControlRequest::Shutdown => {
                self.stop.cancel();
                ControlResponse { ok: true, message: "stopping".into(), pid: None }
            }
            ControlRequest::StopProcess { ref role } | ControlRequest::StartProcess { ref role } => {
                let run = matches!(request, ControlRequest::StartProcess { .. });
                let role = role.clone();
                let process = self.processes.lock().unwrap_or_else(|e| e.into_inner()).get(&role).cloned();
                let Some(process) = process else {
                    return ControlResponse { ok: false, message: format!("no {role} runs in this lab"), pid: None };
                };
                process.wanted.send_replace(run);
                for _ in 0..300 {
                    let pid = process.pid.load(Ordering::SeqCst);
                    if (pid != 0) == run {
                        let what = if run { "started" } else { "stopped" };
                        return ControlResponse { ok: true, message: format!("{role} {what}"), pid: Some(pid) };
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                ControlResponse { ok: false, message: format!("{role} did not change within 15 s"), pid: None }
            }
            ControlRequest::RestartAgent { node } => {
                let role = format!("agent/{node}");
                let process = self.processes.lock().unwrap_or_else(|e| e.into_inner()).get(&role).cloned();
                let Some(process) = process else {
                    return ControlResponse { ok: false, message: format!("no {role} runs in this lab"), pid: None };
                };
                let old = process.pid.load(Ordering::SeqCst);
                process.restart.notify_one();
                for _ in 0..300 {
                    let pid = process.pid.load(Ordering::SeqCst);
                    if pid != 0 && pid != old {
                        return ControlResponse {
                            ok: true,
                            message: format!("{role} restarted (pid {old} → {pid})"),
                            pid: Some(pid),
                        };
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                ControlResponse { ok: false, message: format!("{role} did not come back within 15 s"), pid: None }
            }
        }
    }

    async fn serve_control(self: Arc<Self>) -> anyhow::Result<()> {
        let path = self.layout.control_socket();
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)?;
        loop {
            let (stream, _) = tokio::select! {
                () = self.stop.cancelled() => return Ok(()),
                accepted = listener.accept() => accepted?,
            };
            let me = self.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                if tokio::io::BufReader::new(read).read_line(&mut line).await.is_err() {
                    return;
                }
                let response = match serde_json::from_str::<ControlRequest>(&line) {
                    Ok(request) => me.handle(request).await,
                    Err(error) => ControlResponse { ok: false, message: format!("bad request: {error}"), pid: None },
                };
                let mut answer = serde_json::to_vec(&response).unwrap_or_default();
                answer.push(b'\n');
                let _ = write.write_all(&answer).await;
            });
        }
    }
}

/// The agent's command line in the lab: every flag is one `skein-agent --help` documents
/// (the lab and the agent come from one workspace, so a flag the agent no longer takes is an
/// error at start, in the agent's log, not silently dropped).
fn agent_args(layout: &Layout, node: &str, index: usize, binaries: &Binaries) -> Vec<String> {
    let path = |p: PathBuf| p.display().to_string();
    vec![
        "--node-name".into(),
        node.to_string(),
        "--kubeconfig".into(),
        path(component_kubeconfig(layout, &format!("{node}-agent"))),
        "--master".into(),
        Layout::master_url(),
        "--master-ca-configmap".into(),
        format!("{SKEIN_NAMESPACE}/skein-southbound-ca"),
        "--token-file".into(),
        path(agent_token_file(layout, node)),
        "--tunnel-ip".into(),
        Layout::node_ip(index).to_string(),
        "--uplink-interface".into(),
        "eth0".into(),
        "--cni-socket".into(),
        path(layout.cni_socket(node)),
        "--state-dir".into(),
        path(layout.agent_state_dir(node)),
        "--datapath-socket".into(),
        path(layout.datapath_socket(node)),
        "--cni-bin-dir".into(),
        path(layout.cni_bin_dir(node)),
        "--cni-conf-dir".into(),
        path(layout.cni_conf_dir(node)),
        "--cni-plugin".into(),
        path(binaries.cni.clone()),
        "--metrics-listen".into(),
        "0.0.0.0:9476".into(),
        // The device plugin on the node's synthetic RDMA hardware, registering with the
        // node's kubelet as on a real node.
        "--device-plugin-dir".into(),
        path(layout.device_plugin_dir(node)),
        "--sysfs-root".into(),
        path(RdmaTree::under(&layout.rdma_dir(node)).sysfs),
        "--dev-root".into(),
        path(RdmaTree::under(&layout.rdma_dir(node)).dev),
        "--log".into(),
        "info".into(),
    ]
}

/// The datapath process's command line in the lab: no ports (the agent adds them), the
/// agent's ring size.
fn datapath_args(layout: &Layout, node: &str) -> Vec<String> {
    vec![
        "run".into(),
        "--ring-mib".into(),
        "2".into(),
        "--control".into(),
        layout.datapath_socket(node).display().to_string(),
    ]
}

/// Where node `node`'s agent finds its southbound token.
fn agent_token_file(layout: &Layout, node: &str) -> PathBuf {
    layout.state_dir().join(format!("{node}-southbound.token"))
}

/// How long the agents wait, at most, for the kubelets to register their nodes.
const NODE_REGISTRATION_WAIT: Duration = Duration::from_secs(30);

/// Skein's namespace, as the install manifests name it.
const SKEIN_NAMESPACE: &str = "skein-system";

/// The install manifests' namespace, ServiceAccounts, RBAC and admission policies — applied
/// to the lab's API, which enforces RBAC and evaluates the policies, so the master and the
/// agents run with exactly the permissions and limits an install gives them: a verb missing
/// from the chart, or a write the policies refuse, is refused here as on a cluster.
const INSTALL_ACCESS: [(&str, &str); 5] = [
    ("manifests/00-namespace.yaml", include_str!("../../manifests/00-namespace.yaml")),
    ("manifests/01-serviceaccounts.yaml", include_str!("../../manifests/01-serviceaccounts.yaml")),
    ("manifests/02-rbac-master.yaml", include_str!("../../manifests/02-rbac-master.yaml")),
    ("manifests/03-rbac-agent.yaml", include_str!("../../manifests/03-rbac-agent.yaml")),
    ("manifests/04-admission-policy.yaml", include_str!("../../manifests/04-admission-policy.yaml")),
];

/// The kubeconfig of a component (`master`, `node1-agent`, ...): the lab's API with the
/// component's ServiceAccount token, read from its token file (renewed while the lab runs,
/// as kubelet renews a projected token; kube-rs reads the file again).
fn component_kubeconfig(layout: &Layout, component: &str) -> PathBuf {
    layout.state_dir().join(format!("{component}.kubeconfig"))
}

/// Where a component's API token is.
fn component_api_token(layout: &Layout, component: &str) -> PathBuf {
    layout.state_dir().join(format!("{component}-api.token"))
}

/// Writes the kubeconfig of `component` (see [`component_kubeconfig`]).
fn write_component_kubeconfig(layout: &Layout, component: &str) -> std::io::Result<()> {
    let token_file = component_api_token(layout, component);
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: skein-lab\n  cluster:\n    server: {url}\n\
         users:\n- name: {component}\n  user:\n    tokenFile: {token}\n\
         contexts:\n- name: {component}\n  context:\n    cluster: skein-lab\n    user: {component}\n\
         current-context: {component}\n",
        url = Layout::api_url(),
        token = serde_json::Value::String(token_file.display().to_string()),
    );
    write_private(&component_kubeconfig(layout, component), &text)
}

/// How long the components' tokens live; they are renewed at a third of it, as kubelet
/// renews projected tokens well before they expire.
const TOKEN_SECONDS: u64 = 3600;

/// Writes every component's tokens, as kubelet would project them into their pods: the
/// master's API token (`skein-system/skein-master`), and per registered node the agent's
/// API token and southbound token (`skein-system/skein-agent`, for the API's audience and
/// for `skein.dev/southbound`, both bound to the node). Returns how many could not be
/// written yet (a node that has not registered).
fn write_tokens(store: &skein_kube_fake::Store, layout: &Layout, nodes: usize) -> usize {
    let write = |account: &str, audiences: &[&str], node: Option<&str>, file: PathBuf| {
        let mut spec = serde_json::json!({"audiences": audiences, "expirationSeconds": TOKEN_SECONDS});
        if let Some(node) = node {
            spec["boundObjectRef"] = serde_json::json!({"kind": "Node", "apiVersion": "v1", "name": node});
        }
        store
            .request_token(SKEIN_NAMESPACE, account, &serde_json::json!({ "spec": spec }))
            .map_err(|e| e.to_string())
            .and_then(|answer| {
                let token = answer.pointer("/status/token").and_then(|t| t.as_str()).unwrap_or_default().to_owned();
                write_private(&file, &token).map_err(|e| e.to_string())
            })
    };
    let api = [skein_kube_fake::DEFAULT_AUDIENCE];
    let mut missing = 0;
    if let Err(error) = write("skein-master", &api, None, component_api_token(layout, "master")) {
        tracing::warn!(%error, "the master's API token");
        missing += 1;
    }
    for index in 1..=nodes {
        let node = Layout::node_name(index);
        let agent = format!("{node}-agent");
        let written = write("skein-agent", &api, Some(&node), component_api_token(layout, &agent)).and_then(|()| {
            write("skein-agent", &["skein.dev/southbound"], Some(&node), agent_token_file(layout, &node))
        });
        if let Err(error) = written {
            // The node registers when its kubelet starts.
            tracing::debug!(node = %node, %error, "agent tokens not written yet");
            missing += 1;
        }
    }
    missing
}

/// Keeps the components' tokens fresh ([`write_tokens`]) until `stop`.
async fn renew_tokens(store: skein_kube_fake::Store, layout: Layout, nodes: usize, stop: CancellationToken) {
    loop {
        let missing = write_tokens(&store, &layout, nodes);
        let wait = if missing > 0 { Duration::from_millis(500) } else { Duration::from_secs(TOKEN_SECONDS / 3) };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// A random token for the lab's administrator (what the lab's kubeconfig presents).
fn admin_token() -> std::io::Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `text` to `path` readable by its owner only, replacing it atomically.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temporary)?;
    file.write_all(text.as_bytes())?;
    std::fs::rename(&temporary, path)
}

/// Runs the daemon until a shutdown request or SIGTERM/SIGINT.
pub async fn run(
    layout: Layout,
    nodes: usize,
    underlay_mtu: u32,
    binaries: Binaries,
    manual_pods: Vec<String>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(layout.state_dir())?;
    let daemon = Arc::new(Daemon {
        layout: layout.clone(),
        state: Mutex::new(LabState {
            prefix: layout.prefix().into(),
            nodes,
            phase: "starting".into(),
            daemon_pid: std::process::id() as i32,
            api_url: Layout::api_url(),
            kubeconfig: layout.kubeconfig(),
            master_url: Layout::master_url(),
            binaries: binaries.clone(),
            ..Default::default()
        }),
        processes: Mutex::default(),
        stop: CancellationToken::new(),
    });
    daemon.phase(
        "topology",
        format!("bridge {}, {nodes} node namespaces, {}, MTU {underlay_mtu}", layout.bridge(), layout.outside_netns()),
    );
    if let Err(error) = topology::create(&layout, nodes, underlay_mtu) {
        daemon.phase("failed", format!("topology: {error}"));
        return Err(error.into());
    }
    daemon.phase("api", format!("API server on {}", Layout::api_url()));
    let options = ServerOptions {
        addr: SocketAddr::from((HOST_IP, API_PORT)),
        // The lab's kubeconfig carries the administrator's token, but kubectl sends no
        // credential over plain HTTP: a request without one is the administrator's (the old
        // insecure port). The components present their ServiceAccount tokens, which are
        // checked and held to the install manifests' RBAC.
        access: Access::Rbac { admin_token: admin_token()?, anonymous_is_admin: true },
        ..Default::default()
    };
    let server = match FakeApiServer::start_with(options).await {
        Ok(server) => server,
        Err(error) => {
            daemon.phase("failed", format!("API server on {HOST_IP}:{API_PORT}: {error}"));
            return Err(error.into());
        }
    };
    server.write_kubeconfig(&layout.kubeconfig())?;
    for (file, text) in INSTALL_ACCESS {
        if let Err(error) = server.insert_yaml(text) {
            daemon.phase("failed", format!("applying {file}: {}", error.message));
            anyhow::bail!("applying {file}: {}", error.message);
        }
    }
    let client = server.client();
    let mut tasks = Vec::new();
    daemon.phase("dns", format!("cluster DNS on {HOST_IP}:{DNS_PORT}"));
    {
        let (client, stop) = (client.clone(), daemon.stop.clone());
        // Bound before anything starts, so a port clash fails `up` at once.
        let udp = std::net::UdpSocket::bind((HOST_IP, DNS_PORT));
        if let Err(error) = udp {
            daemon.phase("failed", format!("cluster DNS on {HOST_IP}:{DNS_PORT}: {error}"));
            return Err(error.into());
        }
        drop(udp);
        tasks.push(tokio::spawn(async move {
            if let Err(error) = dns::serve(client, SocketAddr::from((HOST_IP, DNS_PORT)), stop).await {
                tracing::error!("cluster DNS: {error:#}");
            }
        }));
    }

    daemon.phase("image", "the pods' image (busybox and the C libraries of the lab's binaries)");
    let archive = layout.state_dir().join("node-image.tar");
    let mut linked = vec![binaries.lab.clone()];
    linked.extend(
        [&binaries.allreduce, &binaries.master, &binaries.agent, &binaries.cni]
            .into_iter()
            .filter(|b| b.is_file())
            .cloned(),
    );
    let contents = ImageContents { busybox: binaries.busybox.clone(), binaries: linked };
    let built = match tokio::task::spawn_blocking(move || image::build(&contents, &archive)).await? {
        Ok(built) => built,
        Err(error) => {
            daemon.phase("failed", format!("building the image: {error}"));
            return Err(error.into());
        }
    };
    daemon.phase("runtimes", format!("containerd in each of the {nodes} node namespaces"));
    let mut runtimes = Vec::new();
    for index in 1..=nodes {
        let node = Layout::node_name(index);
        std::fs::create_dir_all(layout.agent_state_dir(&node))?;
        let runtime = NodeRuntime::new(&layout, &node);
        if let Err(error) = runtime.prepare() {
            daemon.phase("failed", format!("preparing containerd on {node}: {error}"));
            return Err(error.into());
        }
        if let Err(error) = RdmaTree::under(&layout.rdma_dir(&node)).create() {
            daemon.phase("failed", format!("the synthetic RDMA devices of {node}: {error}"));
            return Err(error.into());
        }
        let (program, args) = runtime.command(&binaries.containerd);
        daemon
            .add_process(Supervised::new(format!("containerd/{node}"), program, args, None, runtime.log()), &mut tasks);
        runtimes.push((index, node, runtime));
    }
    let mut kubelets = Vec::new();
    for (index, node, runtime) in runtimes {
        let cri = match runtime.wait_ready(RUNTIME_START).await {
            Ok(cri) => cri,
            Err(error) => {
                let message = format!(
                    "containerd on {node} does not answer: {error}; last lines of {}:\n{}",
                    runtime.log().display(),
                    sys::tail(&runtime.log(), 12)
                );
                daemon.phase("failed", message.clone());
                daemon.stop.cancel();
                anyhow::bail!(message);
            }
        };
        let (rt, archive) = (runtime.clone(), built.archive.clone());
        if let Err(error) = tokio::task::spawn_blocking(move || rt.import(&archive)).await? {
            daemon.phase("failed", format!("importing the image into containerd on {node}: {error}"));
            daemon.stop.cancel();
            return Err(error.into());
        }
        tracing::info!(node = %node, image = %image::IMAGE_REF, digest = %built.manifest_digest, "image imported");
        let dev_root = RdmaTree::under(&layout.rdma_dir(&node)).dev;
        kubelets.push(Kubelet {
            layout: layout.clone(),
            node: node.clone(),
            node_ip: Layout::node_ip(index),
            lab_binary: binaries.lab.clone(),
            runs_pods: !manual_pods.contains(&node),
            runtime,
            cri,
            images: LabImages::skein(&binaries.bin_dir()),
            devices: DeviceManager::new(&node, layout.device_plugin_dir(&node), Some(dev_root)),
            cluster_dns: Some(std::net::IpAddr::V4(HOST_IP)),
        });
    }
    daemon.phase("controllers", "scheduler, EndpointSlice, Deployment and Job controllers, kubelets");
    tasks.push(tokio::spawn(scheduler::run(client.clone(), daemon.stop.clone())));
    tasks.push(tokio::spawn(endpointslices::run(client.clone(), daemon.stop.clone())));
    tasks.push(tokio::spawn(deployments::run(client.clone(), daemon.stop.clone())));
    tasks.push(tokio::spawn(jobs::run(client.clone(), daemon.stop.clone())));
    for kubelet in kubelets {
        tasks.push(tokio::spawn(kubelet.run(client.clone(), daemon.stop.clone())));
    }

    daemon.phase("master", format!("skein-master, southbound on {}", Layout::master_url()));
    // The components' credentials: a kubeconfig each, with the token kubelet would project.
    write_component_kubeconfig(&layout, "master")?;
    for index in 1..=nodes {
        write_component_kubeconfig(&layout, &format!("{}-agent", Layout::node_name(index)))?;
    }
    write_tokens(server.store(), &layout, nodes);
    daemon.add_process(
        Supervised::new(
            "outside-echo".into(),
            binaries.lab.clone(),
            [
                "echo-server",
                "--name",
                "outside",
                "--address",
                &OUTSIDE_IP.to_string(),
                "--port",
                &format!("tcp:{OUTSIDE_PORT}"),
                "--port",
                &format!("udp:{OUTSIDE_PORT}"),
            ]
            .map(String::from)
            .to_vec(),
            Some(layout.outside_netns()),
            layout.state_dir().join("outside-echo.log"),
        ),
        &mut tasks,
    );
    daemon.add_process(
        Supervised::new(
            "master".into(),
            binaries.master.clone(),
            vec![
                "--kubeconfig".into(),
                component_kubeconfig(&layout, "master").display().to_string(),
                "--pki-namespace".into(),
                SKEIN_NAMESPACE.into(),
                "--agent-service-account".into(),
                format!("{SKEIN_NAMESPACE}/skein-agent"),
                "--no-leader-election".into(),
                "--identity".into(),
                format!("{}-master", layout.prefix()),
                "--southbound-listen".into(),
                format!("{HOST_IP}:{SOUTHBOUND_PORT}"),
                "--metrics-listen".into(),
                format!("{HOST_IP}:{MASTER_METRICS_PORT}"),
                "--log".into(),
                "info".into(),
            ],
            None,
            layout.master_log(),
        ),
        &mut tasks,
    );

    tasks.push(tokio::spawn(renew_tokens(server.store().clone(), layout.clone(), nodes, daemon.stop.clone())));
    // An agent reads its Node at start, as the agent pod of a DaemonSet does, which only runs
    // once the node is registered: wait for the kubelets to register them (bounded: an agent
    // started without its Node exits saying so, and `up` shows it).
    let registered = |index| server.store().get(skein_kube_fake::Kind::Node, None, &Layout::node_name(index)).is_some();
    let waiting_since = std::time::Instant::now();
    while !(1..=nodes).all(registered) && waiting_since.elapsed() < NODE_REGISTRATION_WAIT {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The agents' tokens are bound to their Nodes, which exist now.
    write_tokens(server.store(), &layout, nodes);
    daemon.phase("agents", format!("skein-dp and skein-agent in each of the {nodes} node namespaces"));
    for index in 1..=nodes {
        let node = Layout::node_name(index);
        // The datapath is its own process, as on a cluster (its own DaemonSet): it forwards
        // while the agent restarts.
        daemon.add_process(
            Supervised::new(
                format!("datapath/{node}"),
                binaries.datapath.clone(),
                datapath_args(&layout, &node),
                Some(layout.node_netns(&node)),
                layout.datapath_log(&node),
            ),
            &mut tasks,
        );
        daemon.add_process(
            Supervised::new(
                format!("agent/{node}"),
                binaries.agent.clone(),
                agent_args(&layout, &node, index, &binaries),
                Some(layout.node_netns(&node)),
                layout.agent_log(&node),
            ),
            &mut tasks,
        );
    }
    daemon.phase("running", "up");

    let control = tokio::spawn(daemon.clone().serve_control());
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        () = daemon.stop.cancelled() => {}
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    daemon.phase("stopping", "stopping processes and controllers");
    daemon.stop.cancel();
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
    let _ = control.await;
    drop(server);
    let _ = std::fs::remove_file(layout.control_socket());
    daemon.phase("stopped", "stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_gets_the_nodes_paths_and_addresses() {
        let layout = Layout::new("sklab").unwrap();
        let binaries = Binaries { cni: "/x/skein-cni".into(), ..Default::default() };
        let args = agent_args(&layout, "node2", 2, &binaries);
        let value = |flag: &str| args.iter().position(|a| a == flag).map(|i| args[i + 1].as_str());
        assert_eq!(value("--cni-socket"), Some("/run/skein-lab/sklab/node2/state/cni.sock"));
        assert_eq!(value("--tunnel-ip"), Some("172.18.0.12"));
        assert_eq!(value("--cni-plugin"), Some("/x/skein-cni"));
        assert_eq!(value("--master"), Some("https://172.18.0.1:6643"));
        assert_eq!(value("--token-file"), Some("/run/skein-lab/sklab/node2-southbound.token"));
        assert_eq!(value("--datapath-socket"), Some("/run/skein-lab/sklab/node2/dp.sock"));
        assert_eq!(value("--kubeconfig"), Some("/run/skein-lab/sklab/node2-agent.kubeconfig"));
        assert_eq!(value("--master-ca-configmap"), Some("skein-system/skein-southbound-ca"));
        let dp = datapath_args(&layout, "node2");
        assert_eq!(dp.last().map(String::as_str), Some("/run/skein-lab/sklab/node2/dp.sock"));
        assert_eq!(value("--device-plugin-dir"), Some("/run/skein-lab/sklab/node2/device-plugins"));
        assert_eq!(value("--sysfs-root"), Some("/run/skein-lab/sklab/node2/rdma/sys"));
        assert_eq!(value("--dev-root"), Some("/run/skein-lab/sklab/node2/rdma/dev"));
        assert!(!args.contains(&"--no-device-plugin".to_string()));
    }
}
