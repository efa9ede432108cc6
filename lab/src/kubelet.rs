//! The kubelet and container runtime stand-in of one node: registers the Node, reports it
//! Ready once the network plugin is (its conflist is there and the plugin answers STATUS),
//! and for every pod bound to the node creates a sandbox (a network namespace), runs the CNI
//! chain on it exactly as containerd does, starts the pod's workload (the lab's echo server on
//! each declared container port) inside it, and reports `status.podIPs` and readiness. When
//! the pod goes away: workload stopped, CNI DEL (reverse chain, cached result), sandbox removed.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Map, Value, json};
use tokio::io::AsyncBufReadExt;
use tokio::process::Child;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::cni_runtime::{Attachment, NodeCni, pod_ips};
use crate::echo::{Proto, ServePort};
use crate::layout::{Layout, fnv1a64};
use crate::scheduler::pod_finished;
use crate::sys;
use crate::watch::{ReadyWait, reflect, run_loop};

/// The interface name pods get.
pub const POD_IFNAME: &str = "eth0";
/// The port the workload serves when the pod declares none.
pub const DEFAULT_PORT: ServePort = ServePort { proto: Proto::Tcp, port: 8080 };
/// How long the workload may take to listen.
const WORKLOAD_START: Duration = Duration::from_secs(15);

/// One node's kubelet.
#[derive(Debug, Clone)]
pub struct Kubelet {
    /// The lab's naming.
    pub layout: Layout,
    /// The node's name.
    pub node: String,
    /// The node's InternalIP.
    pub node_ip: Ipv4Addr,
    /// The `skein-lab` binary (the workload is its `echo-server` subcommand).
    pub lab_binary: PathBuf,
    /// The node's CNI runtime.
    pub cni: NodeCni,
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

/// `runtimeConfig` as containerd offers it: `portMappings` from the containers' `hostPort`s.
pub fn runtime_config(pod: &Pod) -> Map<String, Value> {
    let mappings: Vec<Value> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.host_port.is_some_and(|h| h > 0))
        .map(|p| {
            json!({
                "hostPort": p.host_port,
                "containerPort": p.container_port,
                "protocol": p.protocol.as_deref().unwrap_or("TCP").to_lowercase(),
                "hostIP": p.host_ip.as_deref().unwrap_or(""),
            })
        })
        .collect();
    let mut config = Map::new();
    config.insert("portMappings".into(), Value::Array(mappings));
    config
}

fn host_network(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false)
}

fn pod_key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

fn container_id(uid: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let seed = format!("{uid}/{nanos}/{}", std::process::id());
    (0..4u8).map(|i| format!("{:016x}", fnv1a64(format!("{i}{seed}").as_bytes()))).collect()
}

struct PodWorker {
    deleted: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

impl Kubelet {
    /// Registers the node, then runs until `stop`: node readiness and every pod's lifecycle.
    pub async fn run(self, client: Client, stop: CancellationToken) {
        let me = Arc::new(self);
        if let Err(error) = me.register(&client).await {
            tracing::error!(node = %me.node, "cannot register the node: {error:#}");
        }
        let readiness = tokio::spawn(me.clone().report_readiness(client.clone(), stop.clone()));
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
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": self.node, "labels": {
                "kubernetes.io/hostname": self.node, "kubernetes.io/os": "linux", "kubernetes.io/arch": std::env::consts::ARCH,
                "node.kubernetes.io/instance-type": "skein-lab"}},
            "status": {
                "addresses": [{"type": "InternalIP", "address": self.node_ip.to_string()}, {"type": "Hostname", "address": self.node}],
                "conditions": [self.ready_condition(false, "NetworkPluginNotReady", "network plugin not ready: starting")],
                "capacity": {"cpu": "2", "memory": "4Gi", "pods": "110"},
                "allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
                "nodeInfo": {"kubeletVersion": "v1.35.0-skein-lab", "containerRuntimeVersion": "skein-lab://0.1",
                    "operatingSystem": "linux", "architecture": std::env::consts::ARCH, "osImage": "skein-lab",
                    "kernelVersion": "", "kubeProxyVersion": "", "machineID": "", "systemUUID": "", "bootID": ""},
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
        tracing::info!(node = %self.node, ip = %self.node_ip, "node registered");
        Ok(())
    }

    fn ready_condition(&self, ready: bool, reason: &str, message: &str) -> Value {
        json!({"type": "Ready", "status": if ready {"True"} else {"False"}, "reason": reason, "message": message,
               "lastHeartbeatTime": now(), "lastTransitionTime": now()})
    }

    async fn report_readiness(self: Arc<Self>, client: Client, stop: CancellationToken) {
        let api = Api::<Node>::all(client);
        let mut last: Option<(bool, String)> = None;
        loop {
            let (ready, reason, message) = match self.cni.status().await {
                Ok(conf) => {
                    (true, "KubeletReady", format!("kubelet is posting ready status ({})", conf.file.display()))
                }
                Err(error) => (false, "NetworkPluginNotReady", format!("container runtime network not ready: {error}")),
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

    /// Sets a pod up: its sandbox (unless it has one, or uses the host's network), then
    /// its workload.
    async fn set_up(
        &self,
        pod: &Pod,
        netns: &str,
        host_net: bool,
        sandbox: &mut Option<Sandbox>,
    ) -> Result<Child, Failure> {
        if sandbox.is_none() && !host_net {
            let created = self
                .create_sandbox(pod, netns)
                .await
                .map_err(|message| Failure { reason: "FailedCreatePodSandBox", message })?;
            *sandbox = Some(created);
        }
        self.start_workload(pod, netns).await.map_err(|message| Failure { reason: "Failed", message })
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
        let uid = pod.uid().unwrap_or_default();
        let key = pod_key(&pod);
        let host_net = host_network(&pod);
        let netns = if host_net { self.layout.node_netns(&self.node) } else { self.layout.pod_netns(&self.node, &uid) };
        let mut backoff = Duration::from_millis(500);
        let seen = Instant::now();
        let mut sandbox: Option<Sandbox> = None;
        let mut workload: Option<Child> = None;
        let mut restarts = 0u32;
        'life: loop {
            match self.set_up(&pod, &netns, host_net, &mut sandbox).await {
                Ok(child) => workload = Some(child),
                Err(failed) => match self.set_up_failed(&client, &pod, &failed, &mut backoff, &deleted, &stop).await {
                    AfterFailure::Retry => continue,
                    AfterFailure::Deleted => break 'life,
                    AfterFailure::Stopped => return,
                },
            }
            let ips: Vec<String> = match &sandbox {
                Some((_, Some(result), _)) => pod_ips(result, crate::kubelet::POD_IFNAME),
                _ => vec![self.node_ip.to_string()],
            };
            self.report_running(&client, &pod, &ips, restarts).await;
            tracing::info!(pod = %key, node = %self.node, ips = ?ips, netns = %netns, seconds = seen.elapsed().as_secs_f64(), "pod running");
            let exited = {
                let child = workload.as_mut();
                tokio::select! {
                    () = deleted.cancelled() => false,
                    () = stop.cancelled() => {
                        if let Some(mut child) = workload.take() { let _ = child.kill().await; }
                        return;
                    }
                    status = async { match child { Some(c) => c.wait().await.ok(), None => None } } => {
                        tracing::warn!(pod = %key, ?status, "workload exited; restarting it");
                        true
                    }
                }
            };
            if !exited {
                break 'life;
            }
            workload = None;
            restarts += 1;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // Deleted: stop the workload, run DEL, remove the sandbox.
        if let Some(mut child) = workload.take() {
            let _ = child.kill().await;
        }
        if let Some((attachment, result, conf)) = sandbox.take() {
            if let Err(error) = self.cni.del(&conf, &attachment, result.as_ref()).await {
                tracing::warn!(pod = %key, "CNI DEL: {error}");
            }
            let _ = sys::ip(&["netns", "del", &netns]);
        }
        tracing::info!(pod = %key, node = %self.node, "pod sandbox removed");
    }

    /// Creates the namespace and runs ADD; after a failed ADD runs DEL and removes the
    /// namespace (a runtime always follows ADD with DEL).
    async fn create_sandbox(&self, pod: &Pod, netns: &str) -> Result<Sandbox, String> {
        let conf = self.cni.load().map_err(|e| e.to_string())?;
        let _ = sys::ip(&["netns", "del", netns]);
        sys::ip(&["netns", "add", netns]).map_err(|e| format!("creating the sandbox: {e}"))?;
        let _ = sys::ip_in(netns, &["link", "set", "lo", "up"]);
        let attachment = Attachment {
            container_id: container_id(&pod.uid().unwrap_or_default()),
            netns: PathBuf::from("/run/netns").join(netns),
            ifname: POD_IFNAME.into(),
            pod_namespace: pod.namespace().unwrap_or_default(),
            pod_name: pod.name_any(),
            pod_uid: pod.uid().unwrap_or_default(),
            runtime_config: runtime_config(pod),
        };
        let started = Instant::now();
        match self.cni.add(&conf, &attachment).await {
            Ok(result) => {
                tracing::info!(pod = %pod_key(pod), ms = started.elapsed().as_millis() as u64, "CNI ADD done");
                Ok((attachment, Some(result), conf))
            }
            Err(error) => {
                let _ = self.cni.del(&conf, &attachment, None).await;
                let _ = sys::ip(&["netns", "del", netns]);
                Err(format!("Failed to create pod sandbox: failed to setup network for sandbox: {error}"))
            }
        }
    }

    async fn start_workload(&self, pod: &Pod, netns: &str) -> Result<Child, String> {
        let namespace = pod.namespace().unwrap_or_default();
        let log = self.layout.pod_log(&self.node, &namespace, &pod.name_any());
        if let Some(dir) = log.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
        let mut command = sys::async_command_in_netns(netns, &self.lab_binary);
        command.arg("echo-server").arg("--name").arg(pod.name_any());
        for port in workload_ports(pod) {
            command.arg("--port").arg(port.to_string());
        }
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log_file).kill_on_drop(true);
        let mut child = command.spawn().map_err(|e| format!("cannot start the workload: {e}"))?;
        let Some(stdout) = child.stdout.take() else { return Err("workload has no stdout".into()) };
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        match tokio::time::timeout(WORKLOAD_START, lines.next_line()).await {
            Ok(Ok(Some(line))) if line.trim() == "ready" => Ok(child),
            other => {
                let _ = child.kill().await;
                Err(format!("workload did not start ({other:?}); log {}: {}", log.display(), sys::tail(&log, 3)))
            }
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
                json!({"name": c.name, "image": c.image.clone().unwrap_or_default(), "imageID": "", "ready": true,
                       "started": true, "restartCount": restarts, "containerID": format!("skein-lab://{}", c.name),
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

/// A pod's sandbox: its CNI attachment, the result of ADD, and the configuration it was
/// added with (for DEL).
type Sandbox = (Attachment, Option<Value>, crate::cni_runtime::LoadedConf);

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
    fn host_ports_become_port_mappings() {
        let p = pod(json!({"containers": [{"name": "a", "ports": [
            {"containerPort": 80, "hostPort": 8080}, {"containerPort": 53, "protocol": "UDP", "hostPort": 5353}, {"containerPort": 9}]}]}));
        let config = runtime_config(&p);
        assert_eq!(
            config["portMappings"],
            json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""},
                   {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": ""}])
        );
    }

    #[test]
    fn container_ids_look_like_containerds() {
        let id = container_id("u");
        assert_eq!(id.len(), 64);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(id, container_id("u"));
    }
}
