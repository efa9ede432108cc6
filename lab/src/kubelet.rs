//! The kubelet stand-in of one node, in front of the node's real container runtime
//! (containerd, over CRI): registers the Node, reports it Ready from the runtime's `Status`
//! (RuntimeReady and NetworkReady, as kubelet does), and for every pod bound to the node runs
//! `RunPodSandbox` — containerd then runs the CNI chain of the node's conflist through libcni,
//! so `skein-cni` is invoked exactly as on a real node —, reads the sandbox's addresses from
//! `PodSandboxStatus`, runs the workload (the lab's echo server on each declared container
//! port) as a container in the sandbox, and reports `status.podIPs` and readiness. A workload
//! that exits is started again (a new attempt). When the pod goes away: `StopContainer`,
//! `RemoveContainer`, `StopPodSandbox` (CNI DEL), `RemovePodSandbox`.
//!
//! Each sandbox's network namespace is also attached under the lab's own name
//! (`Layout::pod_netns`), so that `skein-lab exec`, the probes and `down` find it by name.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use skein_proto::cri::v1 as cri_api;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::containerd::NodeRuntime;
use crate::cri::Cri;
use crate::echo::{Proto, ServePort};
use crate::image::{IMAGE_REF, WORKLOAD_PATH};
use crate::layout::Layout;
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
    pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false)
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

/// The pod's sandbox configuration, as kubelet builds it for a cgroupfs node.
pub fn sandbox_config(pod: &Pod, runtime: &NodeRuntime, attempt: u32) -> cri_api::PodSandboxConfig {
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
        hostname: if host { String::new() } else { pod.name_any() },
        log_directory: runtime.pod_log_dir.join(format!("{namespace}_{}_{uid}", pod.name_any())).display().to_string(),
        dns_config: None,
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
                privileged: false,
            }),
            sysctls: HashMap::new(),
        }),
    }
}

/// The workload container: the lab's echo server on the pod's ports, from the lab's image
/// with the `skein-lab` binary mounted at [`WORKLOAD_PATH`].
pub fn container_config(pod: &Pod, lab_binary: &Path, attempt: u32) -> cri_api::ContainerConfig {
    let name =
        pod.spec.as_ref().and_then(|s| s.containers.first()).map_or_else(|| "main".to_string(), |c| c.name.clone());
    let mut args = vec!["echo-server".to_string(), "--name".to_string(), pod.name_any()];
    for port in workload_ports(pod) {
        args.push("--port".into());
        args.push(port.to_string());
    }
    let network = if host_network(pod) { cri_api::NamespaceMode::Node } else { cri_api::NamespaceMode::Pod };
    cri_api::ContainerConfig {
        metadata: Some(cri_api::ContainerMetadata { name: name.clone(), attempt }),
        image: Some(cri_api::ImageSpec { image: IMAGE_REF.into(), ..Default::default() }),
        command: vec![WORKLOAD_PATH.into()],
        args,
        working_dir: "/".into(),
        envs: vec![cri_api::KeyValue { key: "RUST_LOG".into(), value: "info".into() }],
        mounts: vec![cri_api::Mount {
            container_path: WORKLOAD_PATH.into(),
            host_path: lab_binary.display().to_string(),
            readonly: true,
        }],
        labels: HashMap::from([
            ("io.kubernetes.container.name".to_string(), name.clone()),
            ("io.kubernetes.pod.name".to_string(), pod.name_any()),
            ("io.kubernetes.pod.namespace".to_string(), pod.namespace().unwrap_or_default()),
            ("io.kubernetes.pod.uid".to_string(), pod.uid().unwrap_or_default()),
        ]),
        annotations: HashMap::new(),
        log_path: format!("{name}/{attempt}.log"),
        linux: Some(cri_api::LinuxContainerConfig {
            security_context: Some(cri_api::LinuxContainerSecurityContext {
                privileged: false,
                namespace_options: Some(cri_api::NamespaceOption {
                    network: network as i32,
                    pid: cri_api::NamespaceMode::Container as i32,
                    ipc: cri_api::NamespaceMode::Pod as i32,
                    target_id: String::new(),
                }),
            }),
        }),
    }
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

/// A running workload.
struct Workload {
    id: String,
    log: PathBuf,
}

impl Kubelet {
    /// Registers the node, then runs until `stop`: node readiness and every pod's lifecycle.
    pub async fn run(self, client: Client, stop: CancellationToken) {
        let me = Arc::new(self);
        if let Err(error) = me.register(&client).await {
            tracing::error!(node = %me.node, "cannot register the node: {error:#}");
        }
        let readiness = tokio::spawn(me.clone().report_readiness(client.clone(), stop.clone()));
        if !me.runs_pods {
            tracing::info!(node = %me.node, "this node's pods are left to whoever drives its runtime");
            let _ = readiness.await;
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
            let wanted: BTreeMap<String, Arc<Pod>> = pods
                .state()
                .into_iter()
                .filter(|p| !pod_finished(p))
                .filter_map(|p| p.uid().map(|uid| (uid, p)))
                .collect();
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
        let _ = readiness.await;
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

    /// Sets a pod up: its sandbox (unless it has one), then its workload.
    async fn set_up(
        &self,
        pod: &Pod,
        sandbox: &mut Option<Sandbox>,
        sandbox_attempt: &mut u32,
        container_attempt: &mut u32,
    ) -> Result<Workload, Failure> {
        if sandbox.is_none() {
            let attempt = *sandbox_attempt;
            *sandbox_attempt += 1;
            let created = self
                .create_sandbox(pod, attempt)
                .await
                .map_err(|message| Failure { reason: "FailedCreatePodSandBox", message })?;
            *sandbox = Some(created);
        }
        let Some(sandbox) = sandbox.as_ref() else {
            return Err(Failure { reason: "Failed", message: "no sandbox".into() });
        };
        let started = self.start_workload(pod, sandbox, *container_attempt).await;
        if started.is_err() {
            *container_attempt += 1;
        }
        started.map_err(|message| Failure { reason: "Failed", message })
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

    /// One pod's life on this node: set up (retrying with backoff), run, tear down.
    async fn run_pod(
        self: Arc<Self>,
        client: Client,
        pod: Arc<Pod>,
        deleted: CancellationToken,
        stop: CancellationToken,
    ) {
        let key = pod_key(&pod);
        let mut backoff = Duration::from_millis(500);
        let seen = Instant::now();
        let mut sandbox: Option<Sandbox> = None;
        let mut workload: Option<Workload> = None;
        let (mut sandbox_attempt, mut container_attempt) = (0u32, 0u32);
        'life: loop {
            match self.set_up(&pod, &mut sandbox, &mut sandbox_attempt, &mut container_attempt).await {
                Ok(started) => workload = Some(started),
                Err(failed) => match self.set_up_failed(&client, &pod, &failed, &mut backoff, &deleted, &stop).await {
                    AfterFailure::Retry => continue,
                    AfterFailure::Deleted => break 'life,
                    AfterFailure::Stopped => return,
                },
            }
            let ips: Vec<String> = match &sandbox {
                Some(s) if !host_network(&pod) => s.ips.clone(),
                _ => vec![self.node_ip.to_string()],
            };
            self.report_running(&client, &pod, &ips, container_attempt).await;
            tracing::info!(pod = %key, node = %self.node, ips = ?ips, seconds = seen.elapsed().as_secs_f64(), "pod running");
            // Watch the workload until the pod is deleted or the workload exits.
            let exited = loop {
                tokio::select! {
                    () = deleted.cancelled() => break false,
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(WORKLOAD_CHECK) => {}
                }
                let Some(running) = &workload else { break true };
                match self.cri.container_status(&running.id).await {
                    Ok(status) if status.state == cri_api::ContainerState::ContainerExited as i32 => {
                        tracing::warn!(pod = %key, exit_code = status.exit_code, reason = %status.reason,
                            log = %running.log.display(), "workload exited; starting it again");
                        break true;
                    }
                    Ok(_) => {}
                    Err(error) if error.is_not_found() => {
                        tracing::warn!(pod = %key, %error, "workload container gone; starting it again");
                        break true;
                    }
                    Err(error) => tracing::debug!(pod = %key, %error, "ContainerStatus"),
                }
            };
            if !exited {
                break 'life;
            }
            if let Some(old) = workload.take() {
                let _ = self.cri.remove_container(&old.id, Duration::ZERO).await;
            }
            container_attempt += 1;
        }
        self.tear_down(&key, workload, sandbox).await;
        self.remove_stale_sandboxes(&pod, None).await;
    }

    /// Stops and removes the workload and the sandbox (StopPodSandbox runs CNI DEL).
    async fn tear_down(&self, key: &str, workload: Option<Workload>, sandbox: Option<Sandbox>) {
        if let Some(workload) = workload
            && let Err(error) = self.cri.remove_container(&workload.id, STOP_GRACE).await
            && !error.is_not_found()
        {
            tracing::warn!(pod = %key, %error, "removing the workload");
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
    /// itself), then its status: addresses, and the namespace attached under the lab's name.
    async fn create_sandbox(&self, pod: &Pod, attempt: u32) -> Result<Sandbox, String> {
        let config = sandbox_config(pod, &self.runtime, attempt);
        if let Some(dir) = Some(&config.log_directory) {
            let _ = std::fs::create_dir_all(dir);
        }
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

    /// Creates and starts the workload container, and waits until it says it listens.
    async fn start_workload(&self, pod: &Pod, sandbox: &Sandbox, attempt: u32) -> Result<Workload, String> {
        let config = container_config(pod, &self.lab_binary, attempt);
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
        let api = Api::<Pod>::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
        for attempt in 0..5 {
            match api.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => return,
                Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => return,
                Err(error) => {
                    tracing::warn!(pod = %pod_key(pod), %error, attempt, "cannot report pod status");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
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
        let container = container_config(&p, Path::new("/x/skein-lab"), 1);
        let options = container.linux.unwrap().security_context.unwrap().namespace_options.unwrap();
        assert_eq!(options.network, cri_api::NamespaceMode::Node as i32);
    }

    #[test]
    fn the_workload_container_runs_the_mounted_echo_server_on_the_pods_ports() {
        let p = pod(
            json!({"containers": [{"name": "web", "ports": [{"containerPort": 8080}, {"containerPort": 53, "protocol": "UDP"}]}]}),
        );
        let config = container_config(&p, Path::new("/x/skein-lab"), 3);
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
