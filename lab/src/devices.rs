//! The kubelet stand-in's device manager, as kubelet's (`pkg/kubelet/cm/devicemanager`) works
//! with device plugins (API `v1beta1`): it serves `Registration` on `kubelet.sock` in the
//! node's device-plugin directory; for each plugin that registers it dials the plugin's
//! socket, keeps its `ListAndWatch` stream open and turns every list into the Node's
//! `capacity` (all devices) and `allocatable` (healthy ones) for that resource; at container
//! start it picks devices (the plugin's `GetPreferredAllocation` when offered), calls
//! `Allocate` and hands the answer — devices, mounts, environment, annotations — to the
//! container's CRI configuration. A plugin that goes away leaves its devices unhealthy
//! (allocatable 0, capacity kept) until it registers again, which a restarting plugin does.
//!
//! The lab's nodes share the host's filesystem, so a node's `/dev` is the host's overlaid
//! with the node's own device tree ([`DeviceManager::dev_root`]): the synthetic RDMA device
//! nodes the lab gives each node live there, and a host path `/dev/...` an `Allocate` answer
//! names is taken from there when the node has it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skein_proto::cri::v1 as cri_api;
use skein_proto::deviceplugin::v1beta1 as api;
use skein_proto::deviceplugin::v1beta1::device_plugin_client::DevicePluginClient;
use skein_proto::deviceplugin::v1beta1::registration_server::{Registration, RegistrationServer};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

/// How long a call to a plugin may take.
const PLUGIN_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a container's devices could not be allocated: kubelet fails such a pod at admission
/// with the reason `UnexpectedAdmissionError` and this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocationError {
    /// No plugin serves the resource.
    #[error("Allocate failed due to can't allocate unregistered device {resource}, which is unexpected")]
    Unregistered {
        /// The extended resource.
        resource: String,
    },
    /// Too few healthy, unallocated devices.
    #[error(
        "Allocate failed due to requested number of devices unavailable for {resource}. Requested: {requested}, Available: {available}, which is unexpected"
    )]
    Unavailable {
        /// The extended resource.
        resource: String,
        /// How many the container asks for.
        requested: usize,
        /// How many are free.
        available: usize,
    },
    /// The quantity is not a whole number.
    #[error("{resource}: quantity {quantity:?} is not a whole number of devices")]
    Quantity {
        /// The extended resource.
        resource: String,
        /// The quantity as written.
        quantity: String,
    },
    /// The plugin refused or did not answer.
    #[error("Allocate failed due to rpc error from the {resource} plugin: {message}, which is unexpected")]
    Plugin {
        /// The extended resource.
        resource: String,
        /// What it said.
        message: String,
    },
}

/// A device as its plugin last listed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceState {
    /// `Healthy` (true) or not.
    pub healthy: bool,
    /// NUMA nodes of its topology.
    pub numa: Vec<i64>,
}

/// One registered plugin.
struct Plugin {
    options: api::DevicePluginOptions,
    client: Option<DevicePluginClient<Channel>>,
    devices: BTreeMap<String, DeviceState>,
    /// Whether its `ListAndWatch` stream is open.
    connected: bool,
    /// Ends the stream task of this registration (a new registration replaces it).
    stop: CancellationToken,
    /// Which registration this is (a stream of an older one must not touch it).
    generation: u64,
}

/// Who holds a device: (pod uid, container name, resource).
type Holder = (String, String, String);

#[derive(Default)]
struct State {
    plugins: BTreeMap<String, Plugin>,
    allocations: BTreeMap<Holder, Vec<String>>,
    registrations: u64,
}

/// A node's device manager.
#[derive(Clone)]
pub struct DeviceManager {
    node: String,
    dir: PathBuf,
    dev_root: Option<PathBuf>,
    state: Arc<Mutex<State>>,
    /// Held through a whole allocation (choice, reservation, `Allocate`), so that two
    /// containers starting at once never get one device, as kubelet's device manager lock.
    allocating: Arc<tokio::sync::Mutex<()>>,
    /// Poked whenever a resource's devices change (the node status follows).
    pub changed: Arc<Notify>,
}

impl std::fmt::Debug for DeviceManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceManager").field("node", &self.node).field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// A container's share of the devices: what goes into its CRI configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerDevices {
    /// Environment from the plugins (container `env` entries override them, as in kubelet).
    pub envs: Vec<cri_api::KeyValue>,
    /// Bind mounts.
    pub mounts: Vec<cri_api::Mount>,
    /// Device nodes.
    pub devices: Vec<cri_api::Device>,
    /// Container annotations.
    pub annotations: BTreeMap<String, String>,
    /// The device IDs per resource (for the log and the pod's Events).
    pub ids: BTreeMap<String, Vec<String>>,
}

/// Whether `name` is an extended resource kubelet hands to device plugins: a
/// domain-qualified name outside `kubernetes.io` (and not a `requests.` quota name).
pub fn is_extended_resource(name: &str) -> bool {
    let Some((domain, _)) = name.split_once('/') else { return false };
    !domain.is_empty() && !domain.ends_with("kubernetes.io") && !name.starts_with("requests.")
}

/// The whole number of devices a quantity asks for (extended resources are integers:
/// `1`, `2`; also `1k`-style decimal suffixes as the API server accepts them).
pub fn device_count(quantity: &str) -> Option<usize> {
    let quantity = quantity.trim();
    let (digits, factor) = match quantity.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (quantity, 1),
        Some((at, _)) => {
            let factor = match &quantity[at..] {
                "k" => 1_000,
                "M" => 1_000_000,
                "Ki" => 1 << 10,
                "Mi" => 1 << 20,
                _ => return None,
            };
            (&quantity[..at], factor)
        }
    };
    if digits.is_empty() {
        return None;
    }
    digits.parse::<usize>().ok()?.checked_mul(factor)
}

/// The extended resources a container asks for: limits, else requests (kubelet takes the
/// limit; for extended resources a request must equal it).
pub fn container_requests(container: &k8s_openapi::api::core::v1::Container) -> BTreeMap<String, String> {
    let mut wanted = BTreeMap::new();
    let Some(resources) = container.resources.as_ref() else { return wanted };
    for map in [resources.requests.as_ref(), resources.limits.as_ref()].into_iter().flatten() {
        for (name, quantity) in map {
            if is_extended_resource(name) {
                wanted.insert(name.clone(), quantity.0.clone());
            }
        }
    }
    wanted
}

#[derive(Clone)]
struct RegistrationService {
    manager: DeviceManager,
    stop: CancellationToken,
}

#[tonic::async_trait]
impl Registration for RegistrationService {
    async fn register(
        &self,
        request: tonic::Request<api::RegisterRequest>,
    ) -> Result<tonic::Response<api::Empty>, tonic::Status> {
        let request = request.into_inner();
        if request.version != api::VERSION {
            return Err(tonic::Status::invalid_argument(format!(
                "unsupported device plugin API version {:?} (this kubelet speaks {})",
                request.version,
                api::VERSION
            )));
        }
        if !is_extended_resource(&request.resource_name) {
            return Err(tonic::Status::invalid_argument(format!(
                "invalid extended resource name {:?}",
                request.resource_name
            )));
        }
        if request.endpoint.is_empty() || request.endpoint.contains('/') {
            return Err(tonic::Status::invalid_argument(format!(
                "endpoint {:?} must be a socket file name in {}",
                request.endpoint,
                self.manager.dir.display()
            )));
        }
        tracing::info!(node = %self.manager.node, resource = %request.resource_name, endpoint = %request.endpoint,
            "device plugin registered");
        // Like kubelet: answer Register, then dial the plugin (it serves before registering).
        let manager = self.manager.clone();
        let stop = self.stop.child_token();
        tokio::spawn(async move { manager.watch_plugin(request, stop).await });
        Ok(tonic::Response::new(api::Empty {}))
    }
}

async fn connect(path: &Path) -> Result<Channel, String> {
    let text = path.to_str().ok_or_else(|| format!("{} is not UTF-8", path.display()))?;
    Endpoint::from_shared(format!("unix://{text}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(PLUGIN_CALL_TIMEOUT)
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

fn call<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(PLUGIN_CALL_TIMEOUT);
    request
}

impl DeviceManager {
    /// A manager for `node` serving in `dir`; `dev_root` is the node's own device tree.
    pub fn new(node: &str, dir: PathBuf, dev_root: Option<PathBuf>) -> DeviceManager {
        DeviceManager {
            node: node.to_string(),
            dir,
            dev_root,
            state: Arc::default(),
            allocating: Arc::default(),
            changed: Arc::new(Notify::new()),
        }
    }

    /// The device-plugin directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The node's own device tree, overlaid on the host's `/dev`.
    pub fn dev_root(&self) -> Option<&Path> {
        self.dev_root.as_deref()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves `Registration` on `<dir>/kubelet.sock` until `stop` (a stale socket is replaced,
    /// as a restarting kubelet replaces it).
    pub async fn serve(self, stop: CancellationToken) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let socket = self.dir.join(api::KUBELET_SOCKET);
        let _ = std::fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket)?;
        tracing::info!(node = %self.node, socket = %socket.display(), "device plugin registration served");
        let service = RegistrationService { manager: self.clone(), stop: stop.clone() };
        tonic::transport::Server::builder()
            .add_service(RegistrationServer::new(service))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                stop.clone().cancelled_owned(),
            )
            .await?;
        let _ = std::fs::remove_file(&socket);
        Ok(())
    }

    /// One registration's life: dial, options, `ListAndWatch` until the stream ends (the
    /// devices become unhealthy) or a newer registration of the resource replaces it.
    async fn watch_plugin(self, request: api::RegisterRequest, stop: CancellationToken) {
        let resource = request.resource_name.clone();
        let socket = self.dir.join(&request.endpoint);
        let generation = {
            let mut state = self.lock();
            state.registrations += 1;
            let generation = state.registrations;
            let previous = state.plugins.insert(
                resource.clone(),
                Plugin {
                    options: request.options.unwrap_or_default(),
                    client: None,
                    devices: BTreeMap::new(),
                    connected: false,
                    stop: stop.clone(),
                    generation,
                },
            );
            // A re-registration keeps the devices known so far until the new list arrives.
            if let Some(previous) = previous {
                previous.stop.cancel();
                if let Some(plugin) = state.plugins.get_mut(&resource) {
                    plugin.devices = previous.devices;
                }
            }
            generation
        };
        let stream = async {
            let channel = connect(&socket).await?;
            let mut client = DevicePluginClient::new(channel);
            let options = client.get_device_plugin_options(call(api::Empty {})).await.map_err(|s| s.to_string())?;
            let stream = client.list_and_watch(api::Empty {}).await.map_err(|s| s.to_string())?;
            Ok::<_, String>((client, options.into_inner(), stream.into_inner()))
        };
        let (client, options, mut stream) = match stream.await {
            Ok(parts) => parts,
            Err(error) => {
                tracing::warn!(node = %self.node, %resource, socket = %socket.display(), %error,
                    "cannot reach the device plugin it registered; its devices are unhealthy until it registers again");
                self.disconnected(&resource, generation);
                return;
            }
        };
        if let Some(plugin) = self.lock().plugins.get_mut(&resource).filter(|p| p.generation == generation) {
            plugin.client = Some(client);
            plugin.options = options;
            plugin.connected = true;
        }
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                message = stream.message() => match message {
                    Ok(Some(list)) => self.update(&resource, generation, &list.devices),
                    Ok(None) => break,
                    Err(error) => {
                        tracing::warn!(node = %self.node, %resource, %error, "ListAndWatch failed");
                        break;
                    }
                },
            }
        }
        tracing::warn!(node = %self.node, %resource, "device plugin gone; its devices are unhealthy until it registers again");
        self.disconnected(&resource, generation);
    }

    fn update(&self, resource: &str, generation: u64, devices: &[api::Device]) {
        let list: BTreeMap<String, DeviceState> = devices
            .iter()
            .map(|d| {
                let numa = d.topology.iter().flat_map(|t| t.nodes.iter().map(|n| n.id)).collect();
                (d.id.clone(), DeviceState { healthy: d.health == api::HEALTHY, numa })
            })
            .collect();
        let healthy = list.values().filter(|d| d.healthy).count();
        tracing::info!(node = %self.node, %resource, devices = list.len(), healthy, "device list");
        if let Some(plugin) = self.lock().plugins.get_mut(resource).filter(|p| p.generation == generation) {
            plugin.devices = list;
        }
        self.changed.notify_one();
    }

    fn disconnected(&self, resource: &str, generation: u64) {
        if let Some(plugin) = self.lock().plugins.get_mut(resource).filter(|p| p.generation == generation) {
            plugin.connected = false;
            plugin.client = None;
            for device in plugin.devices.values_mut() {
                device.healthy = false;
            }
        }
        self.changed.notify_one();
    }

    /// Capacity and allocatable per resource: (all devices, healthy devices).
    pub fn resources(&self) -> BTreeMap<String, (usize, usize)> {
        self.lock()
            .plugins
            .iter()
            .map(|(name, p)| (name.clone(), (p.devices.len(), p.devices.values().filter(|d| d.healthy).count())))
            .collect()
    }

    /// The devices a resource's plugin last listed (for tests and `get nodes`).
    pub fn devices(&self, resource: &str) -> BTreeMap<String, DeviceState> {
        self.lock().plugins.get(resource).map(|p| p.devices.clone()).unwrap_or_default()
    }

    /// The devices held by containers of pods other than those in `live` are freed (kubelet
    /// frees the devices of terminated pods).
    pub fn release_except(&self, live: &BTreeSet<String>) {
        let mut state = self.lock();
        let before = state.allocations.len();
        state.allocations.retain(|(uid, _, _), _| live.contains(uid));
        if state.allocations.len() != before {
            tracing::info!(node = %self.node, freed = before - state.allocations.len(), "devices of finished pods freed");
        }
    }

    /// Frees the devices of one pod.
    pub fn release(&self, pod_uid: &str) {
        self.lock().allocations.retain(|(uid, _, _), _| uid != pod_uid);
    }

    /// Picks and allocates the devices a container asks for (`requests`: resource →
    /// quantity), or reuses what it already holds (a restarted container keeps its devices).
    pub async fn allocate(
        &self,
        pod_uid: &str,
        container: &str,
        requests: &BTreeMap<String, String>,
    ) -> Result<ContainerDevices, AllocationError> {
        let _serialized = self.allocating.lock().await;
        let mut out = ContainerDevices::default();
        for (resource, quantity) in requests {
            let needed = device_count(quantity)
                .ok_or_else(|| AllocationError::Quantity { resource: resource.clone(), quantity: quantity.clone() })?;
            if needed == 0 {
                continue;
            }
            let holder: Holder = (pod_uid.to_string(), container.to_string(), resource.clone());
            let (client, options, pick) = {
                let state = self.lock();
                let plugin = state
                    .plugins
                    .get(resource)
                    .filter(|p| p.connected)
                    .ok_or_else(|| AllocationError::Unregistered { resource: resource.clone() })?;
                let client = plugin
                    .client
                    .clone()
                    .ok_or_else(|| AllocationError::Unregistered { resource: resource.clone() })?;
                let pick = match state.allocations.get(&holder) {
                    Some(ids) => Pick::Held(ids.clone()),
                    None => {
                        let taken: BTreeSet<&String> = state.allocations.values().flatten().collect();
                        let free: Vec<String> = plugin
                            .devices
                            .iter()
                            .filter(|(id, d)| d.healthy && !taken.contains(id))
                            .map(|(id, _)| id.clone())
                            .collect();
                        if free.len() < needed {
                            return Err(AllocationError::Unavailable {
                                resource: resource.clone(),
                                requested: needed,
                                available: free.len(),
                            });
                        }
                        Pick::Choose(free)
                    }
                };
                (client, plugin.options, pick)
            };
            let ids = match pick {
                Pick::Held(ids) => ids,
                Pick::Choose(free) => self.choose(client.clone(), &options, resource, free, needed).await?,
            };
            // Reserved before the call, so two containers starting at once never get one device.
            self.lock().allocations.insert(holder.clone(), ids.clone());
            let answer = self.call_allocate(client, &options, resource, &ids).await;
            let answer = match answer {
                Ok(answer) => answer,
                Err(error) => {
                    self.lock().allocations.remove(&holder);
                    return Err(error);
                }
            };
            self.merge(&mut out, answer);
            tracing::info!(node = %self.node, pod_uid, container, %resource, ids = ?ids, "devices allocated");
            out.ids.insert(resource.clone(), ids);
        }
        Ok(out)
    }

    /// The plugin's preferred devices among `free` when it offers a preference and its answer
    /// is usable, else the first `needed` by ID.
    async fn choose(
        &self,
        mut client: DevicePluginClient<Channel>,
        options: &api::DevicePluginOptions,
        resource: &str,
        free: Vec<String>,
        needed: usize,
    ) -> Result<Vec<String>, AllocationError> {
        if options.get_preferred_allocation_available {
            let request = api::PreferredAllocationRequest {
                container_requests: vec![api::ContainerPreferredAllocationRequest {
                    available_device_i_ds: free.clone(),
                    must_include_device_i_ds: Vec::new(),
                    allocation_size: i32::try_from(needed).unwrap_or(i32::MAX),
                }],
            };
            match client.get_preferred_allocation(call(request)).await {
                Ok(answer) => {
                    let chosen: Vec<String> = answer
                        .into_inner()
                        .container_responses
                        .into_iter()
                        .next()
                        .map(|r| r.device_i_ds)
                        .unwrap_or_default();
                    let distinct: BTreeSet<&String> = chosen.iter().collect();
                    if chosen.len() == needed && distinct.len() == needed && chosen.iter().all(|id| free.contains(id)) {
                        return Ok(chosen);
                    }
                    tracing::warn!(node = %self.node, resource, ?chosen, needed,
                        "the plugin's preferred allocation is not a choice of the free devices; taking the first free ones");
                }
                Err(status) => {
                    tracing::warn!(node = %self.node, resource, error = %status.message(),
                        "GetPreferredAllocation failed; taking the first free devices");
                }
            }
        }
        Ok(free.into_iter().take(needed).collect())
    }

    async fn call_allocate(
        &self,
        mut client: DevicePluginClient<Channel>,
        options: &api::DevicePluginOptions,
        resource: &str,
        ids: &[String],
    ) -> Result<api::ContainerAllocateResponse, AllocationError> {
        let failed = |message: String| AllocationError::Plugin { resource: resource.to_string(), message };
        if options.pre_start_required {
            client
                .pre_start_container(call(api::PreStartContainerRequest { devices_ids: ids.to_vec() }))
                .await
                .map_err(|s| failed(s.message().to_string()))?;
        }
        let request = api::AllocateRequest {
            container_requests: vec![api::ContainerAllocateRequest { devices_ids: ids.to_vec() }],
        };
        let answer = client.allocate(call(request)).await.map_err(|s| failed(s.message().to_string()))?.into_inner();
        answer
            .container_responses
            .into_iter()
            .next()
            .ok_or_else(|| failed("the answer holds no container response".into()))
    }

    /// Adds one plugin's answer to a container's share.
    fn merge(&self, out: &mut ContainerDevices, answer: api::ContainerAllocateResponse) {
        let mut envs: Vec<(String, String)> = answer.envs.into_iter().collect();
        envs.sort();
        out.envs.extend(envs.into_iter().map(|(key, value)| cri_api::KeyValue { key, value }));
        out.mounts.extend(answer.mounts.into_iter().map(|m| cri_api::Mount {
            container_path: m.container_path,
            host_path: m.host_path,
            readonly: m.read_only,
        }));
        out.devices.extend(answer.devices.into_iter().map(|d| cri_api::Device {
            container_path: d.container_path,
            host_path: self.node_device_path(&d.host_path),
            permissions: d.permissions,
        }));
        out.annotations.extend(answer.annotations);
    }

    /// Where the node's `host_path` is: under the node's own device tree when it has that
    /// node, else the host's.
    pub fn node_device_path(&self, host_path: &str) -> String {
        if let (Some(root), Some(rest)) = (&self.dev_root, host_path.strip_prefix("/dev/")) {
            let candidate = root.join(rest);
            if !rest.split('/').any(|part| part == "..") && std::fs::symlink_metadata(&candidate).is_ok() {
                return candidate.display().to_string();
            }
        }
        host_path.to_string()
    }
}

/// Which devices a container gets.
enum Pick {
    /// What it already holds (a restarted container).
    Held(Vec<String>),
    /// A choice among these free ones.
    Choose(Vec<String>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_proto::deviceplugin::v1beta1::device_plugin_server::{DevicePlugin, DevicePluginServer};
    use skein_proto::deviceplugin::v1beta1::registration_client::RegistrationClient;
    use std::pin::Pin;
    use tokio_stream::Stream;

    /// A device plugin that lists what its channel says and answers Allocate with the IDs.
    #[derive(Clone)]
    struct FakePlugin {
        lists: tokio::sync::watch::Receiver<Vec<api::Device>>,
        preferred: Option<Vec<String>>,
    }

    #[tonic::async_trait]
    impl DevicePlugin for FakePlugin {
        type ListAndWatchStream = Pin<Box<dyn Stream<Item = Result<api::ListAndWatchResponse, tonic::Status>> + Send>>;

        async fn get_device_plugin_options(
            &self,
            _: tonic::Request<api::Empty>,
        ) -> Result<tonic::Response<api::DevicePluginOptions>, tonic::Status> {
            Ok(tonic::Response::new(api::DevicePluginOptions {
                pre_start_required: false,
                get_preferred_allocation_available: self.preferred.is_some(),
            }))
        }

        async fn list_and_watch(
            &self,
            _: tonic::Request<api::Empty>,
        ) -> Result<tonic::Response<Self::ListAndWatchStream>, tonic::Status> {
            // Every list, then every change, until the test drops the sender.
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let mut lists = self.lists.clone();
            tokio::spawn(async move {
                loop {
                    let devices = lists.borrow_and_update().clone();
                    if tx.send(Ok(api::ListAndWatchResponse { devices })).await.is_err()
                        || lists.changed().await.is_err()
                    {
                        return;
                    }
                }
            });
            Ok(tonic::Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
        }

        async fn get_preferred_allocation(
            &self,
            _: tonic::Request<api::PreferredAllocationRequest>,
        ) -> Result<tonic::Response<api::PreferredAllocationResponse>, tonic::Status> {
            let ids = self.preferred.clone().unwrap_or_default();
            Ok(tonic::Response::new(api::PreferredAllocationResponse {
                container_responses: vec![api::ContainerPreferredAllocationResponse { device_i_ds: ids }],
            }))
        }

        async fn allocate(
            &self,
            request: tonic::Request<api::AllocateRequest>,
        ) -> Result<tonic::Response<api::AllocateResponse>, tonic::Status> {
            let ids = request.into_inner().container_requests.remove(0).devices_ids;
            Ok(tonic::Response::new(api::AllocateResponse {
                container_responses: vec![api::ContainerAllocateResponse {
                    envs: [("DEVICES".to_string(), ids.join(","))].into(),
                    mounts: Vec::new(),
                    devices: ids
                        .iter()
                        .map(|id| api::DeviceSpec {
                            container_path: format!("/dev/infiniband/{id}"),
                            host_path: format!("/dev/infiniband/{id}"),
                            permissions: "rw".into(),
                        })
                        .collect(),
                    annotations: Default::default(),
                    cdi_devices: Vec::new(),
                }],
            }))
        }

        async fn pre_start_container(
            &self,
            _: tonic::Request<api::PreStartContainerRequest>,
        ) -> Result<tonic::Response<api::PreStartContainerResponse>, tonic::Status> {
            Ok(tonic::Response::new(api::PreStartContainerResponse {}))
        }
    }

    fn device(id: &str, healthy: bool, numa: i64) -> api::Device {
        api::Device {
            id: id.into(),
            health: if healthy { api::HEALTHY } else { api::UNHEALTHY }.into(),
            topology: Some(api::TopologyInfo { nodes: vec![api::NumaNode { id: numa }] }),
        }
    }

    /// Serves `plugin` on `<dir>/<socket>` and registers it, as a plugin does.
    async fn start_plugin(dir: &Path, socket: &str, plugin: FakePlugin, stop: CancellationToken) {
        let path = dir.join(socket);
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(DevicePluginServer::new(plugin))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    stop.cancelled_owned(),
                ),
        );
        let channel = connect(&dir.join(api::KUBELET_SOCKET)).await.unwrap();
        RegistrationClient::new(channel)
            .register(api::RegisterRequest {
                version: api::VERSION.into(),
                endpoint: socket.into(),
                resource_name: "skein.dev/rdma".into(),
                options: None,
            })
            .await
            .unwrap();
    }

    async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
        for _ in 0..400 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("not seen within 4 s: {what}");
    }

    #[test]
    fn extended_resources_and_whole_device_counts() {
        assert!(is_extended_resource("skein.dev/rdma") && is_extended_resource("rdma/hca_shared"));
        assert!(!is_extended_resource("cpu") && !is_extended_resource("kubernetes.io/foo"));
        assert!(!is_extended_resource("hugepages-2Mi") && !is_extended_resource("requests.skein.dev/rdma"));
        assert_eq!((device_count("2"), device_count("1k"), device_count("2Ki")), (Some(2), Some(1000), Some(2048)));
        for bad in ["", "500m", "1.5", "-1", "x", "1e3", "99999999999999999999999"] {
            assert_eq!(device_count(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn plugins_register_list_allocate_and_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let dev_root = dir.path().join("nodedev");
        std::fs::create_dir_all(dev_root.join("infiniband")).unwrap();
        std::fs::write(dev_root.join("infiniband/mlx5_1"), "").unwrap();
        let manager = DeviceManager::new("node1", dir.path().join("plugins"), Some(dev_root.clone()));
        let stop = CancellationToken::new();
        let server = tokio::spawn(manager.clone().serve(stop.clone()));
        eventually("kubelet.sock", || dir.path().join("plugins/kubelet.sock").exists()).await;

        let (lists, receiver) = tokio::sync::watch::channel(vec![device("mlx5_0", true, 0), device("mlx5_1", true, 1)]);
        let plugin_stop = CancellationToken::new();
        let plugin = FakePlugin { lists: receiver.clone(), preferred: Some(vec!["mlx5_1".into()]) };
        start_plugin(&dir.path().join("plugins"), "fake.sock", plugin, plugin_stop.clone()).await;
        eventually("two healthy devices", || manager.resources().get("skein.dev/rdma") == Some(&(2, 2))).await;
        assert_eq!(manager.devices("skein.dev/rdma")["mlx5_1"].numa, [1]);

        // The plugin's preference is taken; its device path is the node's own tree's.
        let wanted = BTreeMap::from([("skein.dev/rdma".to_string(), "1".to_string())]);
        let share = manager.allocate("pod-a", "rank", &wanted).await.unwrap();
        assert_eq!(share.ids["skein.dev/rdma"], ["mlx5_1"]);
        assert_eq!(share.envs[0].key, "DEVICES");
        assert_eq!(share.devices[0].host_path, dev_root.join("infiniband/mlx5_1").display().to_string());
        assert_eq!(share.devices[0].container_path, "/dev/infiniband/mlx5_1");
        // The same container again (a restart) keeps its device; another gets the other one,
        // the preference (taken) being ignored; a third finds none.
        assert_eq!(manager.allocate("pod-a", "rank", &wanted).await.unwrap().ids["skein.dev/rdma"], ["mlx5_1"]);
        let other = manager.allocate("pod-b", "rank", &wanted).await.unwrap();
        assert_eq!(other.ids["skein.dev/rdma"], ["mlx5_0"]);
        assert_eq!(other.devices[0].host_path, "/dev/infiniband/mlx5_0", "not in the node's tree: the host's");
        let error = manager.allocate("pod-c", "rank", &wanted).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "Allocate failed due to requested number of devices unavailable for skein.dev/rdma. Requested: 1, Available: 0, which is unexpected"
        );
        manager.release_except(&BTreeSet::from(["pod-a".to_string()]));
        assert_eq!(manager.allocate("pod-c", "rank", &wanted).await.unwrap().ids["skein.dev/rdma"], ["mlx5_0"]);
        let unknown = BTreeMap::from([("example.com/gpu".to_string(), "1".to_string())]);
        assert!(matches!(manager.allocate("pod-d", "c", &unknown).await, Err(AllocationError::Unregistered { .. })));

        // A device going unhealthy lowers allocatable only.
        lists.send_replace(vec![device("mlx5_0", true, 0), device("mlx5_1", false, 1)]);
        eventually("one healthy", || manager.resources().get("skein.dev/rdma") == Some(&(2, 1))).await;

        // The plugin goes away: nothing allocatable; it comes back and registers again.
        plugin_stop.cancel();
        drop(lists);
        eventually("unhealthy after the plugin left", || manager.resources().get("skein.dev/rdma") == Some(&(2, 0)))
            .await;
        let (_lists, receiver) =
            tokio::sync::watch::channel(vec![device("mlx5_0", true, 0), device("mlx5_1", true, 1)]);
        let plugin = FakePlugin { lists: receiver, preferred: None };
        start_plugin(&dir.path().join("plugins"), "fake.sock", plugin, CancellationToken::new()).await;
        eventually("healthy again", || manager.resources().get("skein.dev/rdma") == Some(&(2, 2))).await;
        stop.cancel();
        server.await.unwrap().unwrap();
    }
}
