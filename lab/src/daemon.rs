//! The lab's background process (`skein-lab up` starts it, `skein-lab down` stops it): builds
//! the topology, serves the API, runs the scheduler, the EndpointSlice and Deployment
//! controllers and one kubelet per node, and supervises the real `skein-master`, one `skein-agent` per node (in
//! the node's namespace) and the outside echo server — restarting any that exits, as
//! Kubernetes would. It records its state in the state file and answers on a control socket.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skein_kube_fake::{FakeApiServer, ServerOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::cni_runtime::NodeCni;
use crate::kubelet::Kubelet;
use crate::layout::{API_PORT, HOST_IP, Layout, MASTER_METRICS_PORT, OUTSIDE_IP, OUTSIDE_PORT, SOUTHBOUND_PORT};
use crate::state::{Binaries, ControlRequest, ControlResponse, LabState};
use crate::{deployments, endpointslices, scheduler, sys, topology};

/// Where the reference CNI plugins (portmap, bandwidth, loopback) are looked for after the
/// node's own CNI bin dir.
pub const REFERENCE_PLUGIN_DIRS: &[&str] = &["/usr/lib/cni", "/opt/cni/bin"];

/// A child process the daemon keeps running.
struct Supervised {
    role: String,
    program: PathBuf,
    args: Vec<String>,
    netns: Option<String>,
    log: PathBuf,
    pid: AtomicI32,
    restart: Notify,
}

impl Supervised {
    fn command(&self) -> tokio::process::Command {
        let mut command = match &self.netns {
            Some(netns) => sys::async_command_in_netns(netns, &self.program),
            None => tokio::process::Command::new(&self.program),
        };
        command.args(&self.args);
        command
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
        loop {
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
            tokio::select! {
                status = child.wait() => {
                    tracing::warn!(role = %process.role, pid, ?status, "exited; restarting in {backoff:?}");
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

/// The flags of the agent's command line this lab would like to pass, in order; only those
/// the binary's `--help` lists are passed (the agent grows flags over time).
fn agent_args(layout: &Layout, node: &str, index: usize, binaries: &Binaries) -> Vec<(String, Option<String>)> {
    let path = |p: PathBuf| Some(p.display().to_string());
    vec![
        ("--node-name".into(), Some(node.to_string())),
        ("--kubeconfig".into(), path(layout.kubeconfig())),
        ("--master".into(), Some(Layout::master_url())),
        ("--tunnel-ip".into(), Some(Layout::node_ip(index).to_string())),
        ("--uplink-interface".into(), Some("eth0".into())),
        ("--cni-socket".into(), path(layout.cni_socket(node))),
        ("--state-dir".into(), path(layout.agent_state_dir(node))),
        ("--cni-bin-dir".into(), path(layout.cni_bin_dir(node))),
        ("--cni-conf-dir".into(), path(layout.cni_conf_dir(node))),
        ("--cni-plugin".into(), path(binaries.cni.clone())),
        ("--metrics-listen".into(), Some("0.0.0.0:9476".into())),
        ("--no-device-plugin".into(), None),
        ("--log".into(), Some("info".into())),
    ]
}

/// The flags a binary's `--help` lists.
pub fn help_flags(binary: &std::path::Path) -> Vec<String> {
    let text = sys::output(&binary.display().to_string(), ["--help"])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    text.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']' || c == '=')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()).to_string())
        .collect()
}

/// Whether the agent has its networking (it takes `--master`).
pub fn agent_has_networking(agent: &std::path::Path) -> bool {
    help_flags(agent).iter().any(|f| f == "--master")
}

/// Runs the daemon until a shutdown request or SIGTERM/SIGINT.
pub async fn run(layout: Layout, nodes: usize, binaries: Binaries) -> anyhow::Result<()> {
    std::fs::create_dir_all(layout.state_dir())?;
    let networking = agent_has_networking(&binaries.agent);
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
            agent_networking: networking,
            binaries: binaries.clone(),
            ..Default::default()
        }),
        processes: Mutex::default(),
        stop: CancellationToken::new(),
    });
    daemon
        .phase("topology", format!("bridge {}, {nodes} node namespaces, {}", layout.bridge(), layout.outside_netns()));
    if let Err(error) = topology::create(&layout, nodes) {
        daemon.phase("failed", format!("topology: {error}"));
        return Err(error.into());
    }
    daemon.phase("api", format!("API server on {}", Layout::api_url()));
    let options = ServerOptions { addr: SocketAddr::from((HOST_IP, API_PORT)), ..Default::default() };
    let server = match FakeApiServer::start_with(options).await {
        Ok(server) => server,
        Err(error) => {
            daemon.phase("failed", format!("API server on {HOST_IP}:{API_PORT}: {error}"));
            return Err(error.into());
        }
    };
    server.write_kubeconfig(&layout.kubeconfig())?;
    let client = server.client();

    let mut tasks = Vec::new();
    daemon.phase("controllers", "scheduler, EndpointSlice and Deployment controllers, kubelets");
    tasks.push(tokio::spawn(scheduler::run(client.clone(), daemon.stop.clone())));
    tasks.push(tokio::spawn(endpointslices::run(client.clone(), daemon.stop.clone())));
    tasks.push(tokio::spawn(deployments::run(client.clone(), daemon.stop.clone())));
    for index in 1..=nodes {
        let node = Layout::node_name(index);
        for dir in [layout.cni_bin_dir(&node), layout.cni_conf_dir(&node), layout.agent_state_dir(&node)] {
            std::fs::create_dir_all(dir)?;
        }
        let mut bin_dirs = vec![layout.cni_bin_dir(&node)];
        bin_dirs.extend(REFERENCE_PLUGIN_DIRS.iter().map(PathBuf::from));
        let kubelet = Kubelet {
            layout: layout.clone(),
            node: node.clone(),
            node_ip: Layout::node_ip(index),
            lab_binary: binaries.lab.clone(),
            cni: NodeCni { node_netns: layout.node_netns(&node), conf_dir: layout.cni_conf_dir(&node), bin_dirs },
        };
        tasks.push(tokio::spawn(kubelet.run(client.clone(), daemon.stop.clone())));
    }

    daemon.phase("master", format!("skein-master, southbound on {}", Layout::master_url()));
    daemon.add_process(
        Supervised {
            role: "outside-echo".into(),
            program: binaries.lab.clone(),
            args: [
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
            netns: Some(layout.outside_netns()),
            log: layout.state_dir().join("outside-echo.log"),
            pid: AtomicI32::new(0),
            restart: Notify::new(),
        },
        &mut tasks,
    );
    daemon.add_process(
        Supervised {
            role: "master".into(),
            program: binaries.master.clone(),
            args: vec![
                "--kubeconfig".into(),
                layout.kubeconfig().display().to_string(),
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
            netns: None,
            log: layout.master_log(),
            pid: AtomicI32::new(0),
            restart: Notify::new(),
        },
        &mut tasks,
    );

    if networking {
        daemon.phase("agents", format!("skein-agent in each of the {nodes} node namespaces"));
        let supported = help_flags(&binaries.agent);
        for index in 1..=nodes {
            let node = Layout::node_name(index);
            let mut args = Vec::new();
            for (flag, value) in agent_args(&layout, &node, index, &binaries) {
                if supported.contains(&flag) {
                    args.push(flag);
                    args.extend(value);
                } else {
                    tracing::debug!(%flag, "the agent does not take this flag; not passed");
                }
            }
            daemon.add_process(
                Supervised {
                    role: format!("agent/{node}"),
                    program: binaries.agent.clone(),
                    args,
                    netns: Some(layout.node_netns(&node)),
                    log: layout.agent_log(&node),
                    pid: AtomicI32::new(0),
                    restart: Notify::new(),
                },
                &mut tasks,
            );
        }
    } else {
        tracing::warn!(
            agent = %binaries.agent.display(),
            "this skein-agent has no networking (no --master flag): not started; pods will stay without an interface"
        );
    }
    daemon.phase(
        "running",
        if networking {
            "up".to_string()
        } else {
            "up, but skein-agent has no networking yet (no --master flag)".to_string()
        },
    );

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
    fn agent_flags_are_filtered_by_what_help_lists() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("agent");
        std::fs::write(
            &fake,
            "#!/bin/sh\necho '      --node-name <NODE_NAME>\n      --master <URL>  [env: X=]\n  -h, --help'\n",
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let flags = help_flags(&fake);
        assert_eq!(flags, ["--node-name", "--master", "--help"]);
        assert!(agent_has_networking(&fake));
        let layout = Layout::new("sklab").unwrap();
        let binaries = Binaries { cni: "/x/skein-cni".into(), ..Default::default() };
        let args = agent_args(&layout, "node2", 2, &binaries);
        let cni_socket = args.iter().find(|(f, _)| f == "--cni-socket").unwrap();
        assert_eq!(cni_socket.1.as_deref(), Some("/run/skein-lab/sklab/node2/state/cni.sock"));
        let tunnel = args.iter().find(|(f, _)| f == "--tunnel-ip").unwrap();
        assert_eq!(tunnel.1.as_deref(), Some("172.18.0.12"));
    }
}
