//! A CRI v1 client, as kubelet is one: the lab's kubelet stand-in runs every pod through a
//! real container runtime (containerd) with these calls, so the runtime — not the lab —
//! invokes the CNI plugins, through libcni, exactly as on a node.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use skein_proto::cri::v1 as api;
use skein_proto::cri::v1::image_service_client::ImageServiceClient;
use skein_proto::cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint};

/// Longest wait for one call (RunPodSandbox includes the CNI ADD: the Skein plugin's own
/// limit is 150 s, so this is above it).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(180);

/// A failed CRI call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CriError {
    /// The runtime's socket did not answer.
    #[error("container runtime at {socket}: {reason}")]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// Why.
        reason: String,
    },
    /// The runtime answered a call with an error.
    #[error("{call}: {message}")]
    Call {
        /// The RPC (`RunPodSandbox`, …).
        call: &'static str,
        /// The gRPC code.
        code: tonic::Code,
        /// The runtime's message.
        message: String,
    },
    /// The runtime's answer lacks what the call must return.
    #[error("{call}: the runtime's answer has no {missing}")]
    Incomplete {
        /// The RPC.
        call: &'static str,
        /// What is missing.
        missing: &'static str,
    },
}

impl CriError {
    /// Whether the runtime said the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, CriError::Call { code: tonic::Code::NotFound, .. })
            || matches!(self, CriError::Call { message, .. } if message.contains("not found"))
    }
}

/// The runtime's readiness, from its `Status`: both conditions kubelet requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeReadiness {
    /// `RuntimeReady`.
    pub runtime_ready: bool,
    /// `NetworkReady`.
    pub network_ready: bool,
    /// The reason and message of the first condition that is not met, as kubelet words it
    /// (`container runtime network not ready: NetworkReady=false reason:… message:…`).
    pub message: String,
}

/// What the lab needs of a sandbox's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxStatus {
    /// Ready or not.
    pub ready: bool,
    /// The pod's addresses (the primary one first).
    pub ips: Vec<String>,
    /// The sandbox process's pid (0 when the runtime did not say).
    pub pid: u32,
    /// The sandbox's network namespace (empty for a host-network sandbox).
    pub netns: String,
}

/// A connection to one CRI runtime.
#[derive(Debug, Clone)]
pub struct Cri {
    socket: PathBuf,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

fn failed(call: &'static str) -> impl Fn(tonic::Status) -> CriError {
    move |status| CriError::Call { call, code: status.code(), message: status.message().to_string() }
}

fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(CALL_TIMEOUT);
    request
}

impl Cri {
    /// Connects to the runtime's socket (as kubelet does: `unix://`, authority `localhost`).
    pub async fn connect(socket: &Path) -> Result<Cri, CriError> {
        let connect_error = |reason: String| CriError::Connect { socket: socket.to_path_buf(), reason };
        let text = socket.to_str().ok_or_else(|| connect_error("the path is not UTF-8".into()))?;
        let channel = Endpoint::from_shared(format!("unix://{text}"))
            .map_err(|e| connect_error(e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| connect_error(format!("{e:?}")))?;
        Ok(Cri {
            socket: socket.to_path_buf(),
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `Version`: the runtime's name and version.
    pub async fn version(&self) -> Result<api::VersionResponse, CriError> {
        let mut runtime = self.runtime.clone();
        Ok(runtime
            .version(request(api::VersionRequest { version: "v1".into() }))
            .await
            .map_err(failed("Version"))?
            .into_inner())
    }

    /// `Status`: whether the runtime and its network are ready.
    pub async fn readiness(&self) -> Result<RuntimeReadiness, CriError> {
        let mut runtime = self.runtime.clone();
        let status = runtime
            .status(request(api::StatusRequest { verbose: false }))
            .await
            .map_err(failed("Status"))?
            .into_inner()
            .status
            .ok_or(CriError::Incomplete { call: "Status", missing: "status" })?;
        Ok(readiness(&status.conditions))
    }

    /// Whether the runtime holds `image`.
    pub async fn image_present(&self, image: &str) -> Result<bool, CriError> {
        let mut images = self.images.clone();
        let answer = images
            .image_status(request(api::ImageStatusRequest {
                image: Some(api::ImageSpec { image: image.into(), ..Default::default() }),
                verbose: false,
            }))
            .await
            .map_err(failed("ImageStatus"))?
            .into_inner();
        Ok(answer.image.is_some())
    }

    /// `RunPodSandbox`: creates and starts the sandbox, network included; returns its id.
    pub async fn run_pod_sandbox(&self, config: api::PodSandboxConfig) -> Result<String, CriError> {
        let mut runtime = self.runtime.clone();
        let id = runtime
            .run_pod_sandbox(request(api::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            }))
            .await
            .map_err(failed("RunPodSandbox"))?
            .into_inner()
            .pod_sandbox_id;
        if id.is_empty() {
            return Err(CriError::Incomplete { call: "RunPodSandbox", missing: "pod_sandbox_id" });
        }
        Ok(id)
    }

    /// `PodSandboxStatus` (verbose, for the pid and network namespace).
    pub async fn sandbox_status(&self, id: &str) -> Result<SandboxStatus, CriError> {
        let mut runtime = self.runtime.clone();
        let answer = runtime
            .pod_sandbox_status(request(api::PodSandboxStatusRequest { pod_sandbox_id: id.into(), verbose: true }))
            .await
            .map_err(failed("PodSandboxStatus"))?
            .into_inner();
        let status = answer.status.ok_or(CriError::Incomplete { call: "PodSandboxStatus", missing: "status" })?;
        let mut ips = Vec::new();
        if let Some(network) = &status.network {
            if !network.ip.is_empty() {
                ips.push(network.ip.clone());
            }
            ips.extend(network.additional_ips.iter().map(|ip| ip.ip.clone()).filter(|ip| !ip.is_empty()));
        }
        let (pid, netns) = sandbox_info(&answer.info);
        Ok(SandboxStatus { ready: status.state == api::PodSandboxState::SandboxReady as i32, ips, pid, netns })
    }

    /// `StopPodSandbox`: stops its containers and tears its network down (CNI DEL).
    pub async fn stop_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        let mut runtime = self.runtime.clone();
        runtime
            .stop_pod_sandbox(request(api::StopPodSandboxRequest { pod_sandbox_id: id.into() }))
            .await
            .map_err(failed("StopPodSandbox"))?;
        Ok(())
    }

    /// `RemovePodSandbox`.
    pub async fn remove_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        let mut runtime = self.runtime.clone();
        runtime
            .remove_pod_sandbox(request(api::RemovePodSandboxRequest { pod_sandbox_id: id.into() }))
            .await
            .map_err(failed("RemovePodSandbox"))?;
        Ok(())
    }

    /// `ListPodSandbox`, optionally only those carrying every label of `labels`.
    pub async fn list_pod_sandboxes(&self, labels: HashMap<String, String>) -> Result<Vec<api::PodSandbox>, CriError> {
        let mut runtime = self.runtime.clone();
        let filter = api::PodSandboxFilter { label_selector: labels, ..Default::default() };
        Ok(runtime
            .list_pod_sandbox(request(api::ListPodSandboxRequest { filter: Some(filter) }))
            .await
            .map_err(failed("ListPodSandbox"))?
            .into_inner()
            .items)
    }

    /// `CreateContainer` then `StartContainer`; returns the container's id.
    pub async fn start_container(
        &self,
        sandbox: &str,
        config: api::ContainerConfig,
        sandbox_config: api::PodSandboxConfig,
    ) -> Result<String, CriError> {
        let mut runtime = self.runtime.clone();
        let id = runtime
            .create_container(request(api::CreateContainerRequest {
                pod_sandbox_id: sandbox.into(),
                config: Some(config),
                sandbox_config: Some(sandbox_config),
            }))
            .await
            .map_err(failed("CreateContainer"))?
            .into_inner()
            .container_id;
        if id.is_empty() {
            return Err(CriError::Incomplete { call: "CreateContainer", missing: "container_id" });
        }
        runtime
            .start_container(request(api::StartContainerRequest { container_id: id.clone() }))
            .await
            .map_err(failed("StartContainer"))?;
        Ok(id)
    }

    /// `ContainerStatus`.
    pub async fn container_status(&self, id: &str) -> Result<api::ContainerStatus, CriError> {
        let mut runtime = self.runtime.clone();
        runtime
            .container_status(request(api::ContainerStatusRequest { container_id: id.into(), verbose: false }))
            .await
            .map_err(failed("ContainerStatus"))?
            .into_inner()
            .status
            .ok_or(CriError::Incomplete { call: "ContainerStatus", missing: "status" })
    }

    /// `StopContainer` with a grace period, then `RemoveContainer`.
    pub async fn remove_container(&self, id: &str, grace: Duration) -> Result<(), CriError> {
        let mut runtime = self.runtime.clone();
        let timeout = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
        runtime
            .stop_container(request(api::StopContainerRequest { container_id: id.into(), timeout }))
            .await
            .map_err(failed("StopContainer"))?;
        runtime
            .remove_container(request(api::RemoveContainerRequest { container_id: id.into() }))
            .await
            .map_err(failed("RemoveContainer"))?;
        Ok(())
    }
}

/// Kubelet's reading of the runtime's conditions.
pub fn readiness(conditions: &[api::RuntimeCondition]) -> RuntimeReadiness {
    let find = |kind: &str| conditions.iter().find(|c| c.r#type == kind);
    let describe = |kind: &str, what: &str| match find(kind) {
        Some(c) if c.status => None,
        Some(c) => Some(format!("{what}: {kind}=false reason:{} message:{}", c.reason, c.message)),
        None => Some(format!("{what}: the runtime reports no {kind} condition")),
    };
    let runtime = describe("RuntimeReady", "container runtime not ready");
    let network = describe("NetworkReady", "container runtime network not ready");
    RuntimeReadiness {
        runtime_ready: runtime.is_none(),
        network_ready: network.is_none(),
        message: runtime.or(network).unwrap_or_default(),
    }
}

/// The sandbox's pid and network namespace from containerd's verbose `info` (a JSON
/// document under the key `info` holding `pid` and the OCI `runtimeSpec`).
pub fn sandbox_info(info: &HashMap<String, String>) -> (u32, String) {
    let Some(doc) = info.get("info").and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok()) else {
        return (0, String::new());
    };
    let pid = doc.get("pid").and_then(serde_json::Value::as_u64).and_then(|p| u32::try_from(p).ok()).unwrap_or(0);
    let netns = doc
        .pointer("/runtimeSpec/linux/namespaces")
        .and_then(serde_json::Value::as_array)
        .and_then(|list| list.iter().find(|ns| ns.get("type").and_then(serde_json::Value::as_str) == Some("network")))
        .and_then(|ns| ns.get("path"))
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_string();
    (pid, netns)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(kind: &str, status: bool, reason: &str, message: &str) -> api::RuntimeCondition {
        api::RuntimeCondition { r#type: kind.into(), status, reason: reason.into(), message: message.into() }
    }

    #[test]
    fn readiness_is_worded_as_kubelet_words_it() {
        let ready = readiness(&[condition("RuntimeReady", true, "", ""), condition("NetworkReady", true, "", "")]);
        assert!(ready.runtime_ready && ready.network_ready && ready.message.is_empty());
        let not = readiness(&[
            condition("RuntimeReady", true, "", ""),
            condition("NetworkReady", false, "NetworkPluginNotReady", "cni plugin not initialized"),
        ]);
        assert!(not.runtime_ready && !not.network_ready);
        assert_eq!(
            not.message,
            "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:cni plugin not initialized"
        );
        let silent = readiness(&[]);
        assert!(!silent.runtime_ready && silent.message.contains("no RuntimeReady"), "{}", silent.message);
    }

    #[test]
    fn sandbox_info_gives_pid_and_network_namespace() {
        let info = HashMap::from([(
            "info".to_string(),
            r#"{"pid":4242,"runtimeSpec":{"linux":{"namespaces":[{"type":"pid"},{"type":"network","path":"/var/run/netns/cni-1234"}]}}}"#
                .to_string(),
        )]);
        assert_eq!(sandbox_info(&info), (4242, "/var/run/netns/cni-1234".to_string()));
        assert_eq!(sandbox_info(&HashMap::new()), (0, String::new()));
        let broken = HashMap::from([("info".to_string(), "{not json".to_string())]);
        assert_eq!(sandbox_info(&broken), (0, String::new()));
    }
}
