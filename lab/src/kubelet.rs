//! The kubelet stand-in of one node, in front of the node's real container runtime
//! (containerd, over CRI): registers the Node, reports it Ready from the runtime's `Status`
//! (RuntimeReady and NetworkReady, as kubelet does), serves device plugins (`devices`) and
//! reports their resources in the Node's capacity, and for every pod bound to the node:
//! admits it (devices allocated through the plugins, or the pod fails with
//! `UnexpectedAdmissionError`), runs `RunPodSandbox` — containerd then runs the CNI chain of
//! the node's conflist through libcni, so `skein-cni` is invoked exactly as on a real node —
//! with the pod's hostname and DNS configuration, reads the sandbox's addresses from
//! `PodSandboxStatus`, writes the pod's hosts file, and runs its containers.
//!
//! A pod whose images the lab can run (`podspec::classify`) runs as its spec says: init
//! containers one after the other, then every container with its command, arguments,
//! environment, mounts, capabilities and devices; an exit is handled as `restartPolicy` says
//! (`Always` and `OnFailure` restart with a growing back-off, `Never` does not), and once
//! every container is done the pod is `Succeeded` or `Failed` and its sandbox is stopped
//! (CNI DEL: the address goes back), its logs kept. Any other pod runs the lab's echo server
//! on its declared ports, restarted whenever it exits. When the pod goes away:
//! `StopContainer`, `RemoveContainer`, `StopPodSandbox` (CNI DEL), `RemovePodSandbox`.
//!
//! Each sandbox's network namespace is also attached under the lab's own name
//! (`Layout::pod_netns`), so that `skein-lab exec`, the probes and `down` find it by name.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use skein_proto::cri::v1 as cri_api;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::containerd::NodeRuntime;
use crate::cri::Cri;
use crate::devices::{ContainerDevices, DeviceManager, container_requests};
use crate::echo::{Proto, ServePort};
use crate::image::{IMAGE_REF, WORKLOAD_PATH};
use crate::layout::Layout;
use crate::podspec::{self, LabImages, PodContext, PodWorkload};
use crate::scheduler::pod_finished;
use crate::sys;
use crate::watch::{ReadyWait, reflect, run_loop};

/// The interface name pods get (containerd's CNI_IFNAME).
pub const POD_IFNAME: &str = "eth0";
/// The port the workload serves when the pod declares none.
pub const DEFAULT_PORT: ServePort = ServePort { proto: Proto::Tcp, port: 8080 };
/// How long the workload may take to listen.
const WORKLOAD_START: Duration = Duration::from_secs(15);
/// How often running workloads are looked at (an exited one is started again).
const WORKLOAD_CHECK: Duration = Duration::from_secs(1);
/// Grace period of a stopped workload.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// First wait before a container that exited is started again (doubled each time, at most
/// [`MAX_RESTART_BACKOFF`]): kubelet's CrashLoopBackOff, shortened for a lab.
const RESTART_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait before a restart.
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(30);

/// One node's kubelet.
#[derive(Debug, Clone)]
pub struct Kubelet {
    /// The lab's naming.
    pub layout: Layout,
    /// The node's name.
    pub node: String,
    /// The node's InternalIP.
    pub node_ip: Ipv4Addr,
    /// The `skein-lab` binary (the workload is its `echo-server` subcommand, mounted into the
    /// container read-only).
    pub lab_binary: PathBuf,
    /// Whether this kubelet runs the node's pods; when not, it only registers and reports the
    /// node, and a test drives the node's runtime itself (`skein-lab up --manual-pods`).
    pub runs_pods: bool,
    /// The node's container runtime.
    pub runtime: NodeRuntime,
    /// The runtime's CRI endpoint.
    pub cri: Cri,
    /// The images the lab assembles from the workspace's binaries.
    pub images: LabImages,
    /// The node's device manager (device plugins register with it).
    pub devices: DeviceManager,
    /// The cluster DNS server pods get (`--cluster-dns`).
    pub cluster_dns: Option<IpAddr>,
}

/// RFC 3339 "now", to the second, as Kubernetes writes times.
pub fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The ports a pod's workload serves: every container port (TCP or UDP), or 8080/TCP.
pub fn workload_ports(pod: &Pod) -> Vec<ServePort> {
    let mut ports: Vec<ServePort> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let proto = Proto::from_kubernetes(p.protocol.as_deref())?;
            let port = u16::try_from(p.container_port).ok()?;
            Some(ServePort { proto, port })
        })
        .collect();
    ports.sort();
    ports.dedup();
    if ports.is_empty() {
        ports.push(DEFAULT_PORT);
    }
    ports
}

/// The sandbox's port mappings, as kubelet builds them: one per container port with a
/// `hostPort` (containerd hands them to the CNI plugins that ask for `portMappings`).
pub fn port_mappings(pod: &Pod) -> Vec<cri_api::PortMapping> {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.host_port.is_some_and(|h| h > 0))
        .map(|p| cri_api::PortMapping {
            protocol: match p.protocol.as_deref() {
                Some("UDP") => cri_api::Protocol::Udp as i32,
                Some("SCTP") => cri_api::Protocol::Sctp as i32,
                _ => cri_api::Protocol::Tcp as i32,
            },
            container_port: p.container_port,
            host_port: p.host_port.unwrap_or_default(),
            host_ip: p.host_ip.clone().unwrap_or_default(),
        })
        .collect()
}

fn host_network(pod: &Pod) -> bool {
    podspec::host_network(pod)
}

fn pod_key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

/// The labels kubelet puts on a sandbox: the pod's own plus its identity.
fn sandbox_labels(pod: &Pod) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = pod.labels().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    labels.insert("io.kubernetes.pod.name".into(), pod.name_any());
    labels.insert("io.kubernetes.pod.namespace".into(), pod.namespace().unwrap_or_default());
    labels.insert("io.kubernetes.pod.uid".into(), pod.uid().unwrap_or_default());
    labels
}

/// The pod's sandbox configuration, as kubelet builds it for a cgroupfs node, without cluster
/// DNS.
pub fn sandbox_config(pod: &Pod, runtime: &NodeRuntime, attempt: u32) -> cri_api::PodSandboxConfig {
    pod_sandbox_config(pod, runtime, attempt, None)
}

/// The pod's directory on the node: container logs, volumes, the hosts file.
pub fn pod_dir(runtime: &NodeRuntime, pod: &Pod) -> PathBuf {
    runtime.pod_log_dir.join(format!(
        "{}_{}_{}",
        pod.namespace().unwrap_or_default(),
        pod.name_any(),
        pod.uid().unwrap_or_default()
    ))
}

/// The pod's sandbox configuration, as kubelet builds it for a cgroupfs node with
/// `--cluster-dns` `cluster_dns`.
pub fn pod_sandbox_config(
    pod: &Pod,
    runtime: &NodeRuntime,
    attempt: u32,
    cluster_dns: Option<IpAddr>,
) -> cri_api::PodSandboxConfig {
    let uid = pod.uid().unwrap_or_default();
    let namespace = pod.namespace().unwrap_or_default();
    let host = host_network(pod);
    let network = if host { cri_api::NamespaceMode::Node } else { cri_api::NamespaceMode::Pod };
    cri_api::PodSandboxConfig {
        metadata: Some(cri_api::PodSandboxMetadata {
            name: pod.name_any(),
            uid: uid.clone(),
            namespace: namespace.clone(),
            attempt,
        }),
        hostname: podspec::sandbox_hostname(pod),
        log_directory: pod_dir(runtime, pod).display().to_string(),
        dns_config: podspec::dns_config(pod, cluster_dns),
        port_mappings: if host { Vec::new() } else { port_mappings(pod) },
        labels: sandbox_labels(pod),
        annotations: pod.annotations().iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        linux: Some(cri_api::LinuxPodSandboxConfig {
            cgroup_parent: format!("{}/pod{uid}", runtime.cgroup_parent),
            security_context: Some(cri_api::LinuxSandboxSecurityContext {
                namespace_options: Some(cri_api::NamespaceOption {
                    network: network as i32,
                    pid: cri_api::NamespaceMode::Container as i32,
                    ipc: cri_api::NamespaceMode::Pod as i32,
                    target_id: String::new(),
                }),
                privileged: podspec::any_privileged(pod),
            }),
            sysctls: HashMap::new(),
        }),
    }
}

fn container_labels(pod: &Pod, name: &str) -> HashMap<String, String> {
    HashMap::from([
        ("io.kubernetes.container.name".to_string(), name.to_string()),
        ("io.kubernetes.pod.name".to_string(), pod.name_any()),
        ("io.kubernetes.pod.namespace".to_string(), pod.namespace().unwrap_or_default()),
        ("io.kubernetes.pod.uid".to_string(), pod.uid().unwrap_or_default()),
    ])
}

fn namespace_options(pod: &Pod) -> cri_api::NamespaceOption {
    let network = if host_network(pod) { cri_api::NamespaceMode::Node } else { cri_api::NamespaceMode::Pod };
    cri_api::NamespaceOption {
        network: network as i32,
        pid: cri_api::NamespaceMode::Container as i32,
        ipc: cri_api::NamespaceMode::Pod as i32,
        target_id: String::new(),
    }
}

/// The echo workload container: the lab's echo server on the pod's ports, from the lab's
/// image with the `skein-lab` binary mounted at [`WORKLOAD_PATH`], and whatever devices the
/// pod was given.
pub fn container_config(
    pod: &Pod,
    lab_binary: &Path,
    attempt: u32,
    devices: &ContainerDevices,
) -> cri_api::ContainerConfig {
    let name =
        pod.spec.as_ref().and_then(|s| s.containers.first()).map_or_else(|| "main".to_string(), |c| c.name.clone());
    let mut args = vec!["echo-server".to_string(), "--name".to_string(), pod.name_any()];
    for port in workload_ports(pod) {
        args.push("--port".into());
        args.push(port.to_string());
    }
    let mut envs = devices.envs.clone();
    envs.push(cri_api::KeyValue { key: "RUST_LOG".into(), value: "info".into() });
    let mut mounts = vec![cri_api::Mount {
        container_path: WORKLOAD_PATH.into(),
        host_path: lab_binary.display().to_string(),
        readonly: true,
    }];
    mounts.extend(devices.mounts.iter().cloned());
    cri_api::ContainerConfig {
        metadata: Some(cri_api::ContainerMetadata { name: name.clone(), attempt }),
        image: Some(cri_api::ImageSpec { image: IMAGE_REF.into(), ..Default::default() }),
        command: vec![WORKLOAD_PATH.into()],
        args,
        working_dir: "/".into(),
        envs,
        mounts,
        devices: devices.devices.clone(),
        labels: container_labels(pod, &name),
        annotations: devices.annotations.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        log_path: format!("{name}/{attempt}.log"),
        linux: Some(cri_api::LinuxContainerConfig {
            security_context: Some(cri_api::LinuxContainerSecurityContext {
                capabilities: None,
                privileged: false,
                namespace_options: Some(namespace_options(pod)),
            }),
        }),
    }
}

/// A container as its spec says, in CRI terms: the image (the runtime's, or the lab's base
/// image with the workspace binaries an assembled image holds, mounted read-only), command
/// and arguments (expanded, with an assembled image's entrypoint), environment (device
/// plugins' first, the spec's over them), mounts (volumes, the devices' mounts, the hosts
/// file, an assembled image's binaries), devices, capabilities.
pub fn spec_container_config(
    ctx: &PodContext<'_>,
    container: &Container,
    images: &LabImages,
    attempt: u32,
    devices: &ContainerDevices,
) -> Result<cri_api::ContainerConfig, podspec::ConfigError> {
    let image_name = container.image.clone().unwrap_or_default();
    let assembled = images.find(&image_name);
    let env = podspec::container_env(ctx, container, &devices.envs)?;
    let (command, args) = podspec::command_and_args(container, assembled, &env)?;
    let mut mounts = podspec::container_mounts(ctx, container)?;
    mounts.extend(devices.mounts.iter().cloned());
    let image = match assembled {
        Some(lab_image) => {
            for (name, host) in &lab_image.binaries {
                if !host.is_file() {
                    return Err(podspec::ConfigError {
                        container: container.name.clone(),
                        message: format!(
                            "image {image_name:?}: {} is not built (cargo build -p the crate that makes {name}, next to skein-lab)",
                            host.display()
                        ),
                    });
                }
                mounts.push(cri_api::Mount {
                    container_path: format!("{}/{name}", podspec::SKEIN_BIN_DIR),
                    host_path: host.display().to_string(),
                    readonly: true,
                });
            }
            IMAGE_REF.to_string()
        }
        None => image_name,
    };
    let (capabilities, privileged) = podspec::security(container);
    Ok(cri_api::ContainerConfig {
        metadata: Some(cri_api::ContainerMetadata { name: container.name.clone(), attempt }),
        image: Some(cri_api::ImageSpec { image, ..Default::default() }),
        command,
        args,
        working_dir: container.working_dir.clone().unwrap_or_default(),
        envs: env.into_iter().map(|(key, value)| cri_api::KeyValue { key, value }).collect(),
        mounts,
        devices: devices.devices.clone(),
        labels: container_labels(ctx.pod, &container.name),
        annotations: devices.annotations.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        log_path: format!("{}/{attempt}.log", container.name),
        linux: Some(cri_api::LinuxContainerConfig {
            security_context: Some(cri_api::LinuxContainerSecurityContext {
                capabilities,
                privileged,
                namespace_options: Some(namespace_options(ctx.pod)),
            }),
        }),
    })
}

/// The lines a container wrote, from a CRI log file (`<time> <stream> <F|P> <text>`):
/// partial lines (`P`) joined to the line they continue.
pub fn cri_log_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut partial = String::new();
    for record in text.lines() {
        let mut fields = record.splitn(4, ' ');
        let (Some(_time), Some(_stream), Some(tag)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        partial.push_str(fields.next().unwrap_or(""));
        if tag != "P" {
            lines.push(std::mem::take(&mut partial));
        }
    }
    lines
}

struct PodWorker {
    deleted: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

/// A pod's sandbox on this node.
struct Sandbox {
    id: String,
    config: cri_api::PodSandboxConfig,
    ips: Vec<String>,
    /// The name the sandbox's namespace is attached under (none for host-network pods).
    attached: Option<String>,
}

/// A running echo workload.
struct Workload {
    id: String,
    log: PathBuf,
}

/// How a container that ran ended.
#[derive(Debug, Clone)]
struct Terminated {
    id: String,
    exit_code: i32,
    reason: String,
    message: String,
    started_at: String,
    finished_at: String,
}

/// What a container of a spec pod is doing.
#[derive(Debug, Clone)]
enum RunState {
    /// Not started (yet, or again): the reason and message kubelet would show.
    Waiting { reason: String, message: String },
    /// Running since.
    Running { id: String, started_at: String },
    /// Exited and not to be started again.
    Done(Terminated),
}

/// One container of a spec pod.
struct ContainerRun {
    container: Container,
    init: bool,
    attempt: u32,
    restarts: u32,
    state: RunState,
    last: Option<Terminated>,
    /// When it may be started (again).
    not_before: Instant,
    backoff: Duration,
}

impl ContainerRun {
    fn new(container: Container, init: bool) -> ContainerRun {
        ContainerRun {
            container,
            init,
            attempt: 0,
            restarts: 0,
            state: RunState::Waiting { reason: "ContainerCreating".into(), message: String::new() },
            last: None,
            not_before: Instant::now(),
            backoff: RESTART_BACKOFF,
        }
    }

    fn exit_code(&self) -> Option<i32> {
        match &self.state {
            RunState::Done(t) => Some(t.exit_code),
            _ => None,
        }
    }

    fn running(&self) -> bool {
        matches!(self.state, RunState::Running { .. })
    }

    fn status(&self) -> Value {
        let terminated = |t: &Terminated| {
            json!({"terminated": {"exitCode": t.exit_code, "reason": t.reason, "message": t.message,
                   "startedAt": t.started_at, "finishedAt": t.finished_at, "containerID": format!("containerd://{}", t.id)}})
        };
        let (state, id) = match &self.state {
            RunState::Waiting { reason, message } => (json!({"waiting": {"reason": reason, "message": message}}), None),
            RunState::Running { id, started_at } => (json!({"running": {"startedAt": started_at}}), Some(id.clone())),
            RunState::Done(t) => (terminated(t), Some(t.id.clone())),
        };
        let mut status = json!({
            "name": self.container.name, "image": self.container.image.clone().unwrap_or_default(), "imageID": "",
            "ready": self.running() && !self.init, "started": self.running(), "restartCount": self.restarts,
            "state": state,
        });
        if let Some(id) = id {
            status["containerID"] = json!(format!("containerd://{id}"));
        }
        if let Some(last) = &self.last {
            status["lastState"] = terminated(last);
        }
        status
    }
}

/// RFC 3339 time of CRI nanoseconds since the epoch (`now` when zero).
fn cri_time(nanos: i64) -> String {
    if nanos <= 0 {
        return now();
    }
    k8s_openapi::jiff::Timestamp::from_nanosecond(i128::from(nanos))
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|_| now())
}

impl Kubelet {
    /// Registers the node, then runs until `stop`: device plugins, node readiness and
    /// capacity, and every pod's lifecycle.
    pub async fn run(self, client: Client, stop: CancellationToken) {
        let me = Arc::new(self);
        let registration = tokio::spawn({
            let (devices, stop) = (me.devices.clone(), stop.clone());
            let node = me.node.clone();
            async move {
                if let Err(error) = devices.serve(stop).await {
                    tracing::error!(node = %node, "device plugin registration: {error:#}");
                }
            }
        });
        if let Err(error) = me.register(&client).await {
            tracing::error!(node = %me.node, "cannot register the node: {error:#}");
        }
        let readiness = tokio::spawn(me.clone().report_readiness(client.clone(), stop.clone()));
        let capacity = tokio::spawn(me.clone().report_devices(client.clone(), stop.clone()));
        if !me.runs_pods {
            tracing::info!(node = %me.node, "this node's pods are left to whoever drives its runtime");
            let _ = tokio::join!(readiness, capacity, registration);
            return;
        }
        let changed = Arc::new(Notify::new());
        let pods = reflect(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().fields(&format!("spec.nodeName={}", me.node)),
            changed.clone(),
            stop.clone(),
        );
        let workers: Arc<Mutex<HashMap<String, PodWorker>>> = Arc::default();
        let ready: Vec<Box<dyn ReadyWait>> = vec![Box::new(pods.clone())];
        let name = format!("kubelet {}", me.node);
        run_loop(&name, ready, changed, stop.clone(), || {
            let all = pods.state();
            let wanted: BTreeMap<String, Arc<Pod>> =
                all.iter().filter(|p| !pod_finished(p)).filter_map(|p| p.uid().map(|uid| (uid, p.clone()))).collect();
            let mut workers = workers.lock().unwrap_or_else(|e| e.into_inner());
            workers.retain(|uid, worker| {
                if worker.handle.is_finished() {
                    return false;
                }
                if !wanted.contains_key(uid) {
                    worker.deleted.cancel();
                }
                true
            });
            // Devices go back once a pod is finished or gone and its worker is done with it.
            let live: BTreeSet<String> = wanted.keys().chain(workers.keys()).cloned().collect();
            me.devices.release_except(&live);
            for (uid, pod) in wanted {
                if workers.contains_key(&uid) {
                    continue;
                }
                let deleted = CancellationToken::new();
                let handle = tokio::spawn(me.clone().run_pod(client.clone(), pod, deleted.clone(), stop.clone()));
                workers.insert(uid, PodWorker { deleted, handle });
            }
            async { Ok(()) }
        })
        .await;
        let handles: Vec<_> =
            workers.lock().unwrap_or_else(|e| e.into_inner()).drain().map(|(_, w)| w.handle).collect();
        for handle in handles {
            let _ = handle.await;
        }
        let _ = tokio::join!(readiness, capacity, registration);
    }

    async fn register(&self, client: &Client) -> anyhow::Result<()> {
        let runtime_version = match self.cri.version().await {
            Ok(v) => format!("{}://{}", v.runtime_name, v.runtime_version),
            Err(error) => {
                tracing::warn!(node = %self.node, %error, "the container runtime does not answer Version");
                "unknown".into()
            }
        };
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": self.node, "labels": {
                "kubernetes.io/hostname": self.node, "kubernetes.io/os": "linux", "kubernetes.io/arch": std::env::consts::ARCH,
                "node.kubernetes.io/instance-type": "skein-lab"}},
            "status": {
                "addresses": [{"type": "InternalIP", "address": self.node_ip.to_string()}, {"type": "Hostname", "address": self.node}],
                "conditions": [self.ready_condition(false, "KubeletNotReady", "container runtime network not ready: starting")],
                "capacity": {"cpu": "2", "memory": "4Gi", "pods": "110"},
                "allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
                "nodeInfo": {"kubeletVersion": "v1.35.0-skein-lab", "containerRuntimeVersion": runtime_version,
                    "operatingSystem": "linux", "architecture": std::env::consts::ARCH, "osImage": "skein-lab",
                    "kernelVersion": kernel_version(), "kubeProxyVersion": "", "machineID": "", "systemUUID": "", "bootID": ""},
            }
        }))?;
        let api = Api::<Node>::all(client.clone());
        match api.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let patch = json!({"status": node.status});
                api.patch_status(&self.node, &PatchParams::default(), &Patch::Merge(patch)).await?;
            }
            Err(error) => return Err(error.into()),
        }
        tracing::info!(node = %self.node, ip = %self.node_ip, runtime = %runtime_version, "node registered");
        Ok(())
    }

    fn ready_condition(&self, ready: bool, reason: &str, message: &str) -> Value {
        json!({"type": "Ready", "status": if ready {"True"} else {"False"}, "reason": reason, "message": message,
               "lastHeartbeatTime": now(), "lastTransitionTime": now()})
    }

    /// Node readiness as kubelet derives it: the runtime's RuntimeReady and NetworkReady.
    async fn report_readiness(self: Arc<Self>, client: Client, stop: CancellationToken) {
        let api = Api::<Node>::all(client);
        let mut last: Option<(bool, String)> = None;
        loop {
            let (ready, reason, message) = match self.cri.readiness().await {
                Ok(r) if r.runtime_ready && r.network_ready => {
                    (true, "KubeletReady", "kubelet is posting ready status".to_string())
                }
                Ok(r) => (false, "KubeletNotReady", r.message),
                Err(error) => (false, "KubeletNotReady", format!("container runtime is down: {error}")),
            };
            if last.as_ref() != Some(&(ready, message.clone())) {
                let patch = json!({"status": {"conditions": [self.ready_condition(ready, reason, &message)]}});
                match api.patch_status(&self.node, &PatchParams::default(), &Patch::Merge(patch)).await {
                    Ok(_) => {
                        tracing::info!(node = %self.node, ready, %message, "node readiness");
                        last = Some((ready, message));
                    }
                    Err(error) => tracing::warn!(node = %self.node, %error, "cannot report node readiness"),
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// The device plugins' resources in the Node's status: capacity counts every device,
    /// allocatable the healthy ones (an unhealthy device lowers allocatable only).
    async fn report_devices(self: Arc<Self>, client: Client, stop: CancellationToken) {
        let api = Api::<Node>::all(client);
        let mut last: Option<BTreeMap<String, (usize, usize)>> = None;
        loop {
            let resources = self.devices.resources();
            if last.as_ref() != Some(&resources) {
                let capacity: serde_json::Map<String, Value> =
                    resources.iter().map(|(name, (all, _))| (name.clone(), json!(all.to_string()))).collect();
                let allocatable: serde_json::Map<String, Value> =
                    resources.iter().map(|(name, (_, healthy))| (name.clone(), json!(healthy.to_string()))).collect();
                let patch = json!({"status": {"capacity": capacity, "allocatable": allocatable}});
                match api.patch_status(&self.node, &PatchParams::default(), &Patch::Merge(patch)).await {
                    Ok(_) => {
                        tracing::info!(node = %self.node, resources = ?resources, "device resources reported");
                        last = Some(resources);
                    }
                    Err(error) => tracing::warn!(node = %self.node, %error, "cannot report device resources"),
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.devices.changed.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }

    async fn event(&self, client: &Client, pod: &Pod, type_: &str, reason: &str, message: &str) {
        let namespace = pod.namespace().unwrap_or_default();
        let event = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": format!("{}.", pod.name_any()), "namespace": namespace},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": namespace, "name": pod.name_any(), "uid": pod.uid()},
            "type": type_, "reason": reason, "message": message, "count": 1,
            "firstTimestamp": now(), "lastTimestamp": now(),
            "source": {"component": "kubelet", "host": self.node},
            "reportingComponent": "kubelet", "reportingInstance": self.node,
        });
        let api = Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), &namespace);
        if let Ok(event) = serde_json::from_value(event)
            && let Err(error) = api.create(&PostParams::default(), &event).await
        {
            tracing::debug!(%error, "cannot record an event");
        }
    }

    /// Reports a failed step of a pod's set-up (a warning and an Event with `failed`'s
    /// reason), then waits `backoff` — doubled for the next failure, at most 5 s — unless
    /// the pod is deleted or the kubelet stops first.
    async fn set_up_failed(
        &self,
        client: &Client,
        pod: &Pod,
        failed: &Failure,
        backoff: &mut Duration,
        deleted: &CancellationToken,
        stop: &CancellationToken,
    ) -> AfterFailure {
        tracing::warn!(pod = %pod_key(pod), node = %self.node, reason = failed.reason, "{}", failed.message);
        self.event(client, pod, "Warning", failed.reason, &failed.message).await;
        tokio::select! {
            () = deleted.cancelled() => return AfterFailure::Deleted,
            () = stop.cancelled() => return AfterFailure::Stopped,
            () = tokio::time::sleep(*backoff) => {}
        }
        *backoff = (*backoff * 2).min(MAX_BACKOFF);
        AfterFailure::Retry
    }

    /// Which images the runtime holds, of those the pod names.
    async fn present_images(&self, pod: &Pod) -> BTreeSet<String> {
        let mut present = BTreeSet::new();
        let spec = pod.spec.clone().unwrap_or_default();
        let names: BTreeSet<String> = spec
            .init_containers
            .unwrap_or_default()
            .into_iter()
            .chain(spec.containers)
            .filter_map(|c| c.image)
            .collect();
        for name in names {
            if self.cri.image_present(&name).await.unwrap_or(false) {
                present.insert(name);
            }
        }
        present
    }

    /// Admission: how the pod runs, and every container's devices. `Err` is a failure the pod
    /// does not get past: (reason, message, whether the pod fails — a device shortage — or
    /// waits for its deletion — an image the lab cannot run).
    async fn admit(
        &self,
        pod: &Pod,
    ) -> Result<(PodWorkload, BTreeMap<String, ContainerDevices>), (&'static str, String, bool)> {
        let present = self.present_images(pod).await;
        let workload = podspec::classify(pod, &self.images, &|image| present.contains(image))
            .map_err(|message| ("ErrImageNeverPull", message, false))?;
        let uid = pod.uid().unwrap_or_default();
        let mut shares = BTreeMap::new();
        // Owned: nothing borrowed from the pod through a closure may live across the awaits.
        let spec = pod.spec.clone().unwrap_or_default();
        let containers: Vec<Container> =
            spec.init_containers.unwrap_or_default().into_iter().chain(spec.containers).collect();
        for container in &containers {
            let requests = container_requests(container);
            if requests.is_empty() {
                continue;
            }
            match self.devices.allocate(&uid, &container.name, &requests).await {
                Ok(share) => {
                    shares.insert(container.name.clone(), share);
                }
                Err(error) => {
                    self.devices.release(&uid);
                    return Err(("UnexpectedAdmissionError", error.to_string(), true));
                }
            }
        }
        Ok((workload, shares))
    }

    /// One pod's life on this node: admission, the sandbox (retried with backoff), its
    /// containers, tear-down.
    async fn run_pod(
        self: Arc<Self>,
        client: Client,
        pod: Arc<Pod>,
        deleted: CancellationToken,
        stop: CancellationToken,
    ) {
        let key = pod_key(&pod);
        let (workload, shares) = match self.admit(&pod).await {
            Ok(admitted) => admitted,
            Err((reason, message, fails)) => {
                tracing::warn!(pod = %key, node = %self.node, reason, "{message}");
                self.event(&client, &pod, "Warning", reason, &message).await;
                if fails {
                    self.report_rejected(&client, &pod, reason, &message).await;
                } else {
                    self.report_waiting(&client, &pod, reason, &message).await;
                }
                tokio::select! {
                    () = deleted.cancelled() => {}
                    () = stop.cancelled() => {}
                }
                return;
            }
        };
        for (container, share) in &shares {
            let ids: Vec<String> = share.ids.iter().map(|(r, ids)| format!("{r}={}", ids.join(","))).collect();
            self.event(
                &client,
                &pod,
                "Normal",
                "DevicesAllocated",
                &format!("container {container}: {}", ids.join(" ")),
            )
            .await;
        }
        let mut backoff = Duration::from_millis(500);
        let mut sandbox_attempt = 0u32;
        let sandbox = loop {
            let attempt = sandbox_attempt;
            sandbox_attempt += 1;
            match self.create_sandbox(&pod, attempt).await {
                Ok(sandbox) => break sandbox,
                Err(message) => {
                    let failed = Failure { reason: "FailedCreatePodSandBox", message };
                    match self.set_up_failed(&client, &pod, &failed, &mut backoff, &deleted, &stop).await {
                        AfterFailure::Retry => continue,
                        AfterFailure::Deleted => {
                            self.remove_stale_sandboxes(&pod, None).await;
                            self.devices.release(&pod.uid().unwrap_or_default());
                            return;
                        }
                        AfterFailure::Stopped => return,
                    }
                }
            }
        };
        let ended = match workload {
            PodWorkload::Echo => self.run_echo(&client, &pod, &sandbox, &shares, &deleted, &stop).await,
            PodWorkload::Spec => self.run_spec(&client, &pod, &sandbox, &shares, &deleted, &stop).await,
        };
        match ended {
            Ended::Stopped => return,
            Ended::Deleted(containers) | Ended::Finished(containers) => {
                self.tear_down(&key, containers, Some(sandbox)).await;
            }
        }
        self.remove_stale_sandboxes(&pod, None).await;
        self.devices.release(&pod.uid().unwrap_or_default());
    }

    /// The echo workload: started (and waited for until it listens), watched, started again
    /// whenever it exits, until the pod is deleted.
    async fn run_echo(
        &self,
        client: &Client,
        pod: &Pod,
        sandbox: &Sandbox,
        shares: &BTreeMap<String, ContainerDevices>,
        deleted: &CancellationToken,
        stop: &CancellationToken,
    ) -> Ended {
        let key = pod_key(pod);
        let seen = Instant::now();
        let share = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .and_then(|c| shares.get(&c.name))
            .cloned()
            .unwrap_or_default();
        let mut backoff = Duration::from_millis(500);
        let mut attempt = 0u32;
        loop {
            let workload = match self.start_workload(pod, sandbox, attempt, &share).await {
                Ok(workload) => workload,
                Err(message) => {
                    attempt += 1;
                    let failed = Failure { reason: "Failed", message };
                    match self.set_up_failed(client, pod, &failed, &mut backoff, deleted, stop).await {
                        AfterFailure::Retry => continue,
                        AfterFailure::Deleted => return Ended::Deleted(Vec::new()),
                        AfterFailure::Stopped => return Ended::Stopped,
                    }
                }
            };
            let ips: Vec<String> = if host_network(pod) { vec![self.node_ip.to_string()] } else { sandbox.ips.clone() };
            self.report_running(client, pod, &ips, attempt).await;
            tracing::info!(pod = %key, node = %self.node, ips = ?ips, seconds = seen.elapsed().as_secs_f64(), "pod running");
            // Watch the workload until the pod is deleted or the workload exits.
            loop {
                tokio::select! {
                    () = deleted.cancelled() => return Ended::Deleted(vec![workload.id]),
                    () = stop.cancelled() => return Ended::Stopped,
                    () = tokio::time::sleep(WORKLOAD_CHECK) => {}
                }
                match self.cri.container_status(&workload.id).await {
                    Ok(status) if status.state == cri_api::ContainerState::ContainerExited as i32 => {
                        tracing::warn!(pod = %key, exit_code = status.exit_code, reason = %status.reason,
                            log = %workload.log.display(), "workload exited; starting it again");
                        break;
                    }
                    Ok(_) => {}
                    Err(error) if error.is_not_found() => {
                        tracing::warn!(pod = %key, %error, "workload container gone; starting it again");
                        break;
                    }
                    Err(error) => tracing::debug!(pod = %key, %error, "ContainerStatus"),
                }
            }
            let _ = self.cri.remove_container(&workload.id, Duration::ZERO).await;
            attempt += 1;
        }
    }

    /// A pod as its spec says: init containers in order, then every container; exits handled
    /// as the restart policy says, until every container is done (the pod finished) or the
    /// pod is deleted.
    async fn run_spec(
        &self,
        client: &Client,
        pod: &Pod,
        sandbox: &Sandbox,
        shares: &BTreeMap<String, ContainerDevices>,
        deleted: &CancellationToken,
        stop: &CancellationToken,
    ) -> Ended {
        let key = pod_key(pod);
        let seen = Instant::now();
        let policy = podspec::restart_policy(pod).to_string();
        let ips: Vec<String> = if host_network(pod) { vec![self.node_ip.to_string()] } else { sandbox.ips.clone() };
        let spec = pod.spec.clone().unwrap_or_default();
        let mut runs: Vec<ContainerRun> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| ContainerRun::new(c.clone(), true))
            .chain(spec.containers.iter().map(|c| ContainerRun::new(c.clone(), false)))
            .collect();
        let deadline =
            spec.active_deadline_seconds.and_then(|s| u64::try_from(s).ok()).map(|s| seen + Duration::from_secs(s));
        let ctx = PodContext {
            pod,
            node: &self.node,
            host_ip: self.node_ip.to_string(),
            pod_ips: ips.clone(),
            pod_dir: pod_dir(&self.runtime, pod),
        };
        let mut reported: Option<Value> = None;
        let mut announced = false;
        loop {
            let initialized = runs.iter().filter(|r| r.init).all(|r| r.exit_code() == Some(0));
            // The first init container not done, or every container once they are.
            let next: Vec<usize> = if initialized {
                (0..runs.len()).filter(|i| !runs[*i].init).collect()
            } else {
                runs.iter().position(|r| r.init && r.exit_code() != Some(0)).into_iter().collect()
            };
            for index in next {
                if matches!(runs[index].state, RunState::Waiting { .. }) && Instant::now() >= runs[index].not_before {
                    self.start_spec_container(client, &ctx, sandbox, shares, &mut runs[index]).await;
                }
            }
            // An init container that failed under `Never` fails the pod.
            let init_failed = runs.iter().any(|r| r.init && r.exit_code().is_some_and(|c| c != 0));
            let app: Vec<Option<i32>> = runs.iter().filter(|r| !r.init).map(ContainerRun::exit_code).collect();
            let phase = if init_failed {
                "Failed"
            } else if !initialized {
                "Pending"
            } else {
                podspec::phase(&app)
            };
            let finished = matches!(phase, "Succeeded" | "Failed");
            let status = self.spec_status(pod, &ips, &runs, phase, initialized);
            if reported.as_ref() != Some(&status) {
                self.patch_status(client, pod, &status).await;
                reported = Some(status);
            }
            if !announced && runs.iter().filter(|r| !r.init).all(ContainerRun::running) {
                tracing::info!(pod = %key, node = %self.node, ips = ?ips, seconds = seen.elapsed().as_secs_f64(), "pod running");
                announced = true;
            }
            let ids = || {
                runs.iter()
                    .filter_map(|r| match &r.state {
                        RunState::Running { id, .. } => Some(id.clone()),
                        RunState::Done(t) => Some(t.id.clone()),
                        RunState::Waiting { .. } => None,
                    })
                    .collect::<Vec<_>>()
            };
            if finished {
                tracing::info!(pod = %key, node = %self.node, phase, seconds = seen.elapsed().as_secs_f64(), "pod finished");
                self.event(client, pod, "Normal", "Completed", &format!("pod {phase}")).await;
                return Ended::Finished(ids());
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                let message = "Pod was active on the node longer than the specified deadline".to_string();
                for id in ids() {
                    let _ = self.cri.remove_container(&id, STOP_GRACE).await;
                }
                self.report_rejected(client, pod, "DeadlineExceeded", &message).await;
                self.event(client, pod, "Normal", "DeadlineExceeded", &message).await;
                return Ended::Finished(Vec::new());
            }
            tokio::select! {
                () = deleted.cancelled() => return Ended::Deleted(ids()),
                () = stop.cancelled() => return Ended::Stopped,
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            for run in runs.iter_mut() {
                self.observe(client, pod, &policy, run).await;
            }
        }
    }

    /// Creates and starts one container of a spec pod; a failure leaves it waiting with the
    /// reason kubelet gives (and an Event), to be tried again after a back-off.
    async fn start_spec_container(
        &self,
        client: &Client,
        ctx: &PodContext<'_>,
        sandbox: &Sandbox,
        shares: &BTreeMap<String, ContainerDevices>,
        run: &mut ContainerRun,
    ) {
        let share = shares.get(&run.container.name).cloned().unwrap_or_default();
        let config = match spec_container_config(ctx, &run.container, &self.images, run.attempt, &share) {
            Ok(config) => config,
            Err(error) => {
                self.container_failed(client, ctx.pod, run, "CreateContainerConfigError", error.to_string()).await;
                return;
            }
        };
        match self.cri.start_container(&sandbox.id, config, sandbox.config.clone()).await {
            Ok(id) => {
                tracing::info!(pod = %pod_key(ctx.pod), container = %run.container.name, attempt = run.attempt, "container started");
                run.state = RunState::Running { id, started_at: now() };
                run.attempt += 1;
            }
            Err(error) => {
                run.attempt += 1;
                self.container_failed(client, ctx.pod, run, "CreateContainerError", error.to_string()).await;
            }
        }
    }

    async fn container_failed(
        &self,
        client: &Client,
        pod: &Pod,
        run: &mut ContainerRun,
        reason: &str,
        message: String,
    ) {
        tracing::warn!(pod = %pod_key(pod), container = %run.container.name, reason, "{message}");
        self.event(client, pod, "Warning", "Failed", &format!("{reason}: {message}")).await;
        run.state = RunState::Waiting { reason: reason.into(), message };
        run.not_before = Instant::now() + run.backoff;
        run.backoff = (run.backoff * 2).min(MAX_RESTART_BACKOFF);
    }

    /// Looks at a running container: an exit is kept as its last state and, as the restart
    /// policy says, it waits for its restart (`CrashLoopBackOff`) or is done.
    async fn observe(&self, client: &Client, pod: &Pod, policy: &str, run: &mut ContainerRun) {
        let RunState::Running { id, started_at } = &run.state else { return };
        let (id, started_at) = (id.clone(), started_at.clone());
        let status = match self.cri.container_status(&id).await {
            Ok(status) => status,
            Err(error) if error.is_not_found() => cri_api::ContainerStatus {
                exit_code: 137,
                reason: "ContainerGone".into(),
                message: error.to_string(),
                state: cri_api::ContainerState::ContainerExited as i32,
                ..Default::default()
            },
            Err(error) => {
                tracing::debug!(pod = %pod_key(pod), %error, "ContainerStatus");
                return;
            }
        };
        if status.state != cri_api::ContainerState::ContainerExited as i32 {
            return;
        }
        let terminated = Terminated {
            id: id.clone(),
            exit_code: status.exit_code,
            reason: if status.reason.is_empty() {
                if status.exit_code == 0 { "Completed".into() } else { "Error".into() }
            } else {
                status.reason.clone()
            },
            message: status.message.clone(),
            started_at: if status.started_at > 0 { cri_time(status.started_at) } else { started_at },
            finished_at: cri_time(status.finished_at),
        };
        tracing::info!(pod = %pod_key(pod), container = %run.container.name, exit_code = terminated.exit_code,
            reason = %terminated.reason, "container exited");
        // An init container that succeeded is done whatever the policy; one that failed is
        // retried unless the policy is Never (kubelet's rule for init containers).
        let again = if run.init {
            terminated.exit_code != 0 && policy != "Never"
        } else {
            podspec::restarts(policy, terminated.exit_code)
        };
        if again {
            let _ = self.cri.remove_container(&id, Duration::ZERO).await;
            run.restarts += 1;
            run.last = Some(terminated);
            let message = format!("back-off {:?} restarting failed container {}", run.backoff, run.container.name);
            self.event(client, pod, "Warning", "BackOff", &message).await;
            run.state = RunState::Waiting { reason: "CrashLoopBackOff".into(), message };
            run.not_before = Instant::now() + run.backoff;
            run.backoff = (run.backoff * 2).min(MAX_RESTART_BACKOFF);
        } else {
            run.state = RunState::Done(terminated);
        }
    }

    /// The pod's status from its containers.
    fn spec_status(&self, pod: &Pod, ips: &[String], runs: &[ContainerRun], phase: &str, initialized: bool) -> Value {
        let started = pod.status.as_ref().and_then(|s| s.start_time.clone()).map_or(json!(now()), |t| json!(t));
        let finished = matches!(phase, "Succeeded" | "Failed");
        let all_ready = !finished && runs.iter().filter(|r| !r.init).all(ContainerRun::running);
        let condition = |type_: &str, ok: bool, reason: Option<&str>| {
            let mut c = json!({"type": type_, "status": if ok { "True" } else { "False" }});
            if let Some(reason) = reason {
                c["reason"] = json!(reason);
            }
            c
        };
        let not_ready = if finished {
            Some("PodCompleted")
        } else if !all_ready {
            Some("ContainersNotReady")
        } else {
            None
        };
        json!({
            "metadata": {"uid": pod.uid()},
            "status": {
                "phase": phase,
                "hostIP": self.node_ip.to_string(), "hostIPs": [{"ip": self.node_ip.to_string()}],
                "podIP": ips.first(), "podIPs": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
                "startTime": started,
                "conditions": [
                    condition("PodReadyToStartContainers", !finished, None),
                    condition("Initialized", initialized, (!initialized).then_some("ContainersNotInitialized")),
                    condition("ContainersReady", all_ready, not_ready),
                    condition("Ready", all_ready, not_ready),
                    condition("PodScheduled", true, None),
                ],
                "initContainerStatuses": runs.iter().filter(|r| r.init).map(ContainerRun::status).collect::<Vec<_>>(),
                "containerStatuses": runs.iter().filter(|r| !r.init).map(ContainerRun::status).collect::<Vec<_>>(),
            }
        })
    }

    async fn patch_status(&self, client: &Client, pod: &Pod, patch: &Value) {
        let api = Api::<Pod>::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
        for attempt in 0..5 {
            match api.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await {
                Ok(_) => return,
                Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => return,
                Err(error) => {
                    tracing::warn!(pod = %pod_key(pod), %error, attempt, "cannot report pod status");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// A pod that cannot run here: `Failed` with kubelet's reason and message.
    async fn report_rejected(&self, client: &Client, pod: &Pod, reason: &str, message: &str) {
        let patch = json!({"metadata": {"uid": pod.uid()},
            "status": {"phase": "Failed", "reason": reason, "message": message,
                       "conditions": [{"type": "Ready", "status": "False", "reason": "PodFailed"}]}});
        self.patch_status(client, pod, &patch).await;
    }

    /// A pod that waits (an image the lab cannot run): `Pending`, its containers waiting with
    /// the reason.
    async fn report_waiting(&self, client: &Client, pod: &Pod, reason: &str, message: &str) {
        let statuses: Vec<Value> = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .map(|c| {
                json!({"name": c.name, "image": c.image.clone().unwrap_or_default(), "imageID": "", "ready": false,
                            "restartCount": 0, "state": {"waiting": {"reason": reason, "message": message}}})
            })
            .collect();
        let patch = json!({"metadata": {"uid": pod.uid()}, "status": {"containerStatuses": statuses}});
        self.patch_status(client, pod, &patch).await;
    }

    /// Stops and removes the containers and the sandbox (StopPodSandbox runs CNI DEL). The
    /// pod's directory (logs) stays.
    async fn tear_down(&self, key: &str, containers: Vec<String>, sandbox: Option<Sandbox>) {
        for id in containers {
            if let Err(error) = self.cri.remove_container(&id, STOP_GRACE).await
                && !error.is_not_found()
            {
                tracing::warn!(pod = %key, %error, "removing a container");
            }
        }
        if let Some(sandbox) = sandbox {
            if let Some(name) = &sandbox.attached {
                let _ = sys::ip(&["netns", "del", name]);
            }
            for attempt in 0..5 {
                match self.cri.stop_pod_sandbox(&sandbox.id).await {
                    Ok(()) => break,
                    Err(error) => {
                        tracing::warn!(pod = %key, %error, attempt, "StopPodSandbox failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            if let Err(error) = self.cri.remove_pod_sandbox(&sandbox.id).await {
                tracing::warn!(pod = %key, %error, "RemovePodSandbox failed");
            }
        }
        tracing::info!(pod = %key, node = %self.node, "pod sandbox removed");
    }

    /// RunPodSandbox (the runtime runs CNI ADD, and after a failed ADD tears the sandbox down
    /// itself), then its status: addresses, the namespace attached under the lab's name, and
    /// the pod's hosts file.
    async fn create_sandbox(&self, pod: &Pod, attempt: u32) -> Result<Sandbox, String> {
        let config = pod_sandbox_config(pod, &self.runtime, attempt, self.cluster_dns);
        let _ = std::fs::create_dir_all(&config.log_directory);
        let started = Instant::now();
        let id = match self.cri.run_pod_sandbox(config.clone()).await {
            Ok(id) => id,
            Err(error) => {
                // A runtime whose clean-up of the failed sandbox failed too (its CNI DEL, say)
                // keeps it, not ready; kubelet's garbage collection stops and removes it.
                self.remove_stale_sandboxes(pod, None).await;
                return Err(format!("Failed to create pod sandbox: {error}"));
            }
        };
        let status = match self.cri.sandbox_status(&id).await {
            Ok(status) => status,
            Err(error) => {
                self.discard_sandbox(&id).await;
                return Err(format!("PodSandboxStatus of {id}: {error}"));
            }
        };
        let mut attached = None;
        if !host_network(pod) {
            let name = self.layout.pod_netns(&self.node, &pod.uid().unwrap_or_default());
            let _ = sys::ip(&["netns", "del", &name]);
            if let Err(error) = sys::ip(&["netns", "attach", &name, &status.pid.to_string()]) {
                self.discard_sandbox(&id).await;
                return Err(format!("attaching the sandbox's namespace ({}) as {name}: {error}", status.netns));
            }
            attached = Some(name);
            let hosts = Path::new(&config.log_directory).join("etc-hosts");
            if let Err(error) = std::fs::write(&hosts, podspec::hosts_file(pod, &status.ips)) {
                self.discard_sandbox(&id).await;
                return Err(format!("writing the pod's hosts file {}: {error}", hosts.display()));
            }
        }
        tracing::info!(pod = %pod_key(pod), sandbox = %id, ips = ?status.ips, netns = %status.netns,
            ms = started.elapsed().as_millis() as u64, "sandbox running");
        Ok(Sandbox { id, config, ips: status.ips, attached })
    }

    /// Stops and removes every sandbox of `pod` but `keep` (StopPodSandbox runs CNI DEL
    /// again, so what a failed ADD left behind is released).
    async fn remove_stale_sandboxes(&self, pod: &Pod, keep: Option<&str>) {
        let labels = HashMap::from([("io.kubernetes.pod.uid".to_string(), pod.uid().unwrap_or_default())]);
        let sandboxes = match self.cri.list_pod_sandboxes(labels).await {
            Ok(list) => list,
            Err(error) => {
                tracing::warn!(pod = %pod_key(pod), %error, "ListPodSandbox failed");
                return;
            }
        };
        for stale in sandboxes.iter().filter(|s| Some(s.id.as_str()) != keep) {
            match self.cri.stop_pod_sandbox(&stale.id).await {
                Ok(()) => match self.cri.remove_pod_sandbox(&stale.id).await {
                    Ok(()) => tracing::info!(pod = %pod_key(pod), sandbox = %stale.id, "stale sandbox removed"),
                    Err(error) => tracing::warn!(pod = %pod_key(pod), sandbox = %stale.id, %error, "RemovePodSandbox"),
                },
                Err(error) => tracing::warn!(pod = %pod_key(pod), sandbox = %stale.id, %error,
                    "StopPodSandbox of a stale sandbox failed; trying again later"),
            }
        }
    }

    async fn discard_sandbox(&self, id: &str) {
        let _ = self.cri.stop_pod_sandbox(id).await;
        let _ = self.cri.remove_pod_sandbox(id).await;
    }

    /// Creates and starts the echo workload, and waits until it says it listens.
    async fn start_workload(
        &self,
        pod: &Pod,
        sandbox: &Sandbox,
        attempt: u32,
        share: &ContainerDevices,
    ) -> Result<Workload, String> {
        let mut config = container_config(pod, &self.lab_binary, attempt, share);
        if !host_network(pod) {
            config.mounts.push(cri_api::Mount {
                container_path: "/etc/hosts".into(),
                host_path: Path::new(&sandbox.config.log_directory).join("etc-hosts").display().to_string(),
                readonly: false,
            });
        }
        let log = Path::new(&sandbox.config.log_directory).join(&config.log_path);
        let id = self
            .cri
            .start_container(&sandbox.id, config, sandbox.config.clone())
            .await
            .map_err(|e| format!("starting the workload: {e}"))?;
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if cri_log_lines(&text).iter().any(|l| l.trim() == "ready") {
                return Ok(Workload { id, log });
            }
            let exited = matches!(self.cri.container_status(&id).await,
                Ok(s) if s.state == cri_api::ContainerState::ContainerExited as i32);
            if exited || started.elapsed() > WORKLOAD_START {
                let _ = self.cri.remove_container(&id, Duration::ZERO).await;
                let tail: Vec<String> = cri_log_lines(&text).into_iter().rev().take(3).collect();
                let why = if exited { "exited" } else { "did not listen in time" };
                return Err(format!(
                    "workload {why}; log {}: {}",
                    log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn report_running(&self, client: &Client, pod: &Pod, ips: &[String], restarts: u32) {
        let now = now();
        let condition = |type_: &str| json!({"type": type_, "status": "True", "lastTransitionTime": now});
        let containers: Vec<Value> = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .map(|c| {
                json!({"name": c.name, "image": c.image.clone().unwrap_or_default(), "imageID": IMAGE_REF, "ready": true,
                       "started": true, "restartCount": restarts, "containerID": format!("containerd://{}", c.name),
                       "state": {"running": {"startedAt": now}}})
            })
            .collect();
        let patch = json!({
            "metadata": {"uid": pod.uid()},
            "status": {
                "phase": "Running",
                "hostIP": self.node_ip.to_string(), "hostIPs": [{"ip": self.node_ip.to_string()}],
                "podIP": ips.first(), "podIPs": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
                "startTime": pod.status.as_ref().and_then(|s| s.start_time.clone()).map_or(json!(now), |t| json!(t)),
                "conditions": [condition("PodReadyToStartContainers"), condition("Initialized"),
                               condition("ContainersReady"), condition("Ready"), condition("PodScheduled")],
                "containerStatuses": containers,
            }
        });
        self.patch_status(client, pod, &patch).await;
    }
}

/// How a pod's containers stopped running.
enum Ended {
    /// The kubelet is stopping: leave everything.
    Stopped,
    /// The pod was deleted: these containers to remove.
    Deleted(Vec<String>),
    /// Every container is done (or the pod's deadline passed): these containers to remove.
    Finished(Vec<String>),
}

/// The kernel release, as kubelet reports it.
fn kernel_version() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// A failed step of a pod's set-up: the Event reason and what went wrong.
struct Failure {
    reason: &'static str,
    message: String,
}

/// What follows a failed set-up step.
enum AfterFailure {
    /// Try again (the backoff has passed).
    Retry,
    /// The pod was deleted meanwhile: tear down.
    Deleted,
    /// The kubelet is stopping: leave everything as it is.
    Stopped,
}

/// Longest wait between two attempts to set a pod up.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "d", "uid": "u"}, "spec": spec})).unwrap()
    }

    #[test]
    fn the_workload_serves_every_declared_port_or_8080() {
        let p = pod(json!({"containers": [
            {"name": "a", "ports": [{"containerPort": 8080}, {"containerPort": 53, "protocol": "UDP"}, {"containerPort": 9, "protocol": "SCTP"}]},
            {"name": "b", "ports": [{"containerPort": 8080, "protocol": "TCP"}, {"containerPort": 53, "protocol": "TCP"}]},
        ]}));
        let ports: Vec<String> = workload_ports(&p).iter().map(ToString::to_string).collect();
        assert_eq!(ports, ["tcp:53", "tcp:8080", "udp:53"]);
        assert_eq!(workload_ports(&pod(json!({"containers": [{"name": "a"}]}))), [DEFAULT_PORT]);
    }

    #[test]
    fn host_ports_become_the_sandboxs_port_mappings() {
        let p = pod(json!({"containers": [{"name": "a", "ports": [
            {"containerPort": 80, "hostPort": 8080}, {"containerPort": 53, "protocol": "UDP", "hostPort": 5353, "hostIP": "172.18.0.11"},
            {"containerPort": 9}]}]}));
        let mappings = port_mappings(&p);
        assert_eq!(mappings.len(), 2);
        assert_eq!((mappings[0].host_port, mappings[0].container_port), (8080, 80));
        assert_eq!(mappings[0].protocol, cri_api::Protocol::Tcp as i32);
        assert_eq!(mappings[1].protocol, cri_api::Protocol::Udp as i32);
        assert_eq!(mappings[1].host_ip, "172.18.0.11");
        let layout = Layout::new("sklab").unwrap();
        let runtime = NodeRuntime::new(&layout, "node1");
        let config = sandbox_config(&p, &runtime, 2);
        assert_eq!(config.port_mappings, mappings);
        let meta = config.metadata.unwrap();
        assert_eq!((meta.name.as_str(), meta.namespace.as_str(), meta.uid.as_str(), meta.attempt), ("p", "d", "u", 2));
        assert_eq!(config.labels["io.kubernetes.pod.uid"], "u");
        assert_eq!(config.log_directory, "/run/skein-lab/sklab/node1/pods/d_p_u");
        let linux = config.linux.unwrap();
        assert_eq!(linux.cgroup_parent, "/skein-lab-sklab/node1/podu");
        let network = linux.security_context.unwrap().namespace_options.unwrap().network;
        assert_eq!(network, cri_api::NamespaceMode::Pod as i32);
    }

    #[test]
    fn host_network_pods_share_the_nodes_namespace_and_get_no_port_mappings() {
        let p = pod(
            json!({"hostNetwork": true, "containers": [{"name": "a", "ports": [{"containerPort": 80, "hostPort": 80}]}]}),
        );
        let runtime = NodeRuntime::new(&Layout::new("sklab").unwrap(), "node1");
        let config = sandbox_config(&p, &runtime, 0);
        assert!(config.port_mappings.is_empty());
        assert!(config.hostname.is_empty());
        let options = config.linux.unwrap().security_context.unwrap().namespace_options.unwrap();
        assert_eq!(options.network, cri_api::NamespaceMode::Node as i32);
        let container = container_config(&p, Path::new("/x/skein-lab"), 1, &ContainerDevices::default());
        let options = container.linux.unwrap().security_context.unwrap().namespace_options.unwrap();
        assert_eq!(options.network, cri_api::NamespaceMode::Node as i32);
    }

    #[test]
    fn the_workload_container_runs_the_mounted_echo_server_on_the_pods_ports() {
        let p = pod(
            json!({"containers": [{"name": "web", "ports": [{"containerPort": 8080}, {"containerPort": 53, "protocol": "UDP"}]}]}),
        );
        let config = container_config(&p, Path::new("/x/skein-lab"), 3, &ContainerDevices::default());
        assert_eq!(config.command, [WORKLOAD_PATH]);
        assert_eq!(config.args, ["echo-server", "--name", "p", "--port", "tcp:8080", "--port", "udp:53"]);
        assert_eq!(config.mounts[0].host_path, "/x/skein-lab");
        assert!(config.mounts[0].readonly);
        assert_eq!(config.log_path, "web/3.log");
        assert_eq!(config.metadata.unwrap().attempt, 3);
        assert_eq!(config.image.unwrap().image, IMAGE_REF);
    }

    #[test]
    fn cri_log_records_become_lines() {
        let text = "2026-12-07T09:40:02.1Z stdout F ready\n2026-12-07T09:40:02.2Z stderr P part one \n\
                    2026-12-07T09:40:02.3Z stderr F and two\ngarbage\n2026-12-07T09:40:02.4Z stdout F \n";
        assert_eq!(cri_log_lines(text), ["ready", "part one and two", ""]);
    }
}
