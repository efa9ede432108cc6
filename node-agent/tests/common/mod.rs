//! Test fixtures for the device plugin: a synthetic sysfs + /dev tree with HCAs, and a
//! stand-in kubelet that accepts registrations and talks back to the plugin the way
//! kubelet does.
#![allow(dead_code, missing_docs)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::registry::Registry;
use skein_agent::deviceplugin::config::Format;
use skein_agent::deviceplugin::dcb::{DcbError, DcbSource, DcbState};
use skein_agent::deviceplugin::endpoint::connect_unix;
use skein_agent::deviceplugin::metrics::DevicePluginMetrics;
use skein_agent::deviceplugin::sysfs::DiscoveryRoots;
use skein_agent::deviceplugin::{ConfigSource, DevicePluginDeps, DevicePluginSettings};
use skein_proto::deviceplugin::v1beta1 as api;
use skein_proto::deviceplugin::v1beta1::device_plugin_client::DevicePluginClient;
use skein_proto::deviceplugin::v1beta1::registration_server::{Registration, RegistrationServer};
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Deadline for events the plugin promises within a second: generous for a loaded CI
/// machine, and only ever a deadline, never a measured bound.
pub const EVENT_DEADLINE: Duration = Duration::from_secs(5);

/// How one synthetic HCA looks.
#[derive(Clone, Debug)]
pub struct HcaSpec {
    pub name: &'static str,
    pub numa_node: i32,
    pub link_layer: &'static str,
    pub netdev: Option<&'static str>,
    pub uverbs: u32,
    pub umad: Option<u32>,
    pub node_guid: &'static str,
}

/// The IB HCA of the standard tree: NUMA node 0, ACTIVE.
pub fn ib_hca() -> HcaSpec {
    HcaSpec {
        name: "mlx5_0",
        numa_node: 0,
        link_layer: "InfiniBand",
        netdev: Some("ib0"),
        uverbs: 0,
        umad: Some(0),
        node_guid: "0002:c903:0031:7a40",
    }
}

/// The RoCE HCA of the standard tree: NUMA node 1, ACTIVE, netdev ens2f0.
pub fn roce_hca() -> HcaSpec {
    HcaSpec {
        name: "mlx5_1",
        numa_node: 1,
        link_layer: "Ethernet",
        netdev: Some("ens2f0"),
        uverbs: 1,
        umad: None,
        node_guid: "b859:9f03:00d4:1e2a",
    }
}

/// A sysfs tree and a /dev tree in a temporary directory.
pub struct SyntheticNode {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub roots: DiscoveryRoots,
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

impl SyntheticNode {
    /// Two HCAs on two NUMA nodes (one IB, one RoCE) and `rdma_cm`.
    pub fn standard() -> SyntheticNode {
        let node = SyntheticNode::empty();
        node.add_hca(&ib_hca());
        node.add_hca(&roce_hca());
        write(&node.roots.dev.join("infiniband/rdma_cm"), "");
        node
    }

    pub fn empty() -> SyntheticNode {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let roots = DiscoveryRoots { sysfs: root.join("sys"), dev: root.join("dev") };
        std::fs::create_dir_all(roots.sysfs.join("class/infiniband")).unwrap();
        std::fs::create_dir_all(roots.dev.join("infiniband")).unwrap();
        SyntheticNode { _dir: dir, root, roots }
    }

    fn hca_dir(&self, name: &str) -> PathBuf {
        self.roots.sysfs.join("class/infiniband").join(name)
    }

    /// Adds an HCA atomically (built aside, then renamed into place), as a hot-plug.
    pub fn add_hca(&self, spec: &HcaSpec) {
        let staging = self.root.join(format!("staging-{}", spec.name));
        write(&staging.join("node_guid"), &format!("{}\n", spec.node_guid));
        write(&staging.join("ports/1/state"), "4: ACTIVE\n");
        write(&staging.join("ports/1/link_layer"), &format!("{}\n", spec.link_layer));
        let device = staging.join("device");
        write(&device.join("numa_node"), &format!("{}\n", spec.numa_node));
        write(&device.join("vendor"), "0x15b3\n");
        write(&device.join("device"), "0x1017\n");
        std::os::unix::fs::symlink("../../../../bus/pci/drivers/mlx5_core", device.join("driver")).unwrap();
        if let Some(netdev) = spec.netdev {
            std::fs::create_dir_all(device.join("net").join(netdev)).unwrap();
        }
        std::fs::create_dir_all(device.join(format!("infiniband_verbs/uverbs{}", spec.uverbs))).unwrap();
        write(&self.roots.dev.join(format!("infiniband/uverbs{}", spec.uverbs)), "");
        if let Some(umad) = spec.umad {
            std::fs::create_dir_all(device.join(format!("infiniband_mad/umad{umad}"))).unwrap();
            write(&self.roots.dev.join(format!("infiniband/umad{umad}")), "");
        }
        std::fs::rename(&staging, self.hca_dir(spec.name)).unwrap();
    }

    pub fn remove_hca(&self, name: &str) {
        std::fs::remove_dir_all(self.hca_dir(name)).unwrap();
    }

    /// Writes `ports/<port>/state`, e.g. `"1: DOWN"`.
    pub fn set_port_state(&self, hca: &str, port: u32, state: &str) {
        write(&self.hca_dir(hca).join(format!("ports/{port}/state")), &format!("{state}\n"));
    }

    /// Writes `class/net/<netdev>/ecn/<point>/enable/<prio>`.
    pub fn set_ecn(&self, netdev: &str, point: &str, prio: u8, enabled: bool) {
        write(
            &self.roots.sysfs.join(format!("class/net/{netdev}/ecn/{point}/enable/{prio}")),
            if enabled { "1\n" } else { "0\n" },
        );
    }
}

/// DCB state from a table; unknown interfaces have no DCB.
#[derive(Default)]
pub struct FakeDcb(pub Mutex<std::collections::HashMap<String, DcbState>>);

impl DcbSource for FakeDcb {
    fn query(&self, ifname: &str) -> Result<DcbState, DcbError> {
        self.0.lock().unwrap().get(ifname).cloned().ok_or_else(|| DcbError::NotSupported { ifname: ifname.to_owned() })
    }
}

/// Settings pointing at `node` and `plugin_dir`, with fast intervals.
pub fn settings(node: &SyntheticNode, plugin_dir: &Path, config: Option<&str>) -> DevicePluginSettings {
    DevicePluginSettings {
        roots: node.roots.clone(),
        config: match config {
            Some(text) => ConfigSource::Text { text: text.to_owned(), format: Format::Yaml },
            None => ConfigSource::Default,
        },
        discovery_interval: Duration::from_millis(50),
        socket_check_interval: Duration::from_millis(50),
        readiness_interval: Duration::from_millis(100),
        ..DevicePluginSettings::new(plugin_dir)
    }
}

/// A metrics registry with the device plugin's families, and deps without annotator.
pub fn deps(dcb: Arc<dyn DcbSource>) -> (Arc<Registry>, DevicePluginDeps) {
    let mut registry = Registry::default();
    let metrics = DevicePluginMetrics::register(&mut registry);
    (Arc::new(registry), DevicePluginDeps { metrics, annotator: None, dcb })
}

/// What the stand-in kubelet saw from one registered plugin.
pub struct PluginView {
    pub request: api::RegisterRequest,
    pub options: api::DevicePluginOptions,
    /// Device lists in the order the plugin sent them.
    pub lists: mpsc::UnboundedReceiver<Vec<api::Device>>,
}

#[derive(Clone)]
struct RegistrationService {
    dir: PathBuf,
    views: mpsc::UnboundedSender<PluginView>,
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
            return Err(tonic::Status::invalid_argument("unsupported version"));
        }
        // Like kubelet: answer Register, then dial the plugin's socket and watch it.
        let socket = self.dir.join(&request.endpoint);
        let views = self.views.clone();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let Ok(channel) = connect_unix(&socket).await else {
                return;
            };
            let mut client = DevicePluginClient::new(channel);
            let Ok(options) = client.get_device_plugin_options(api::Empty {}).await else {
                return;
            };
            let Ok(stream) = client.list_and_watch(api::Empty {}).await else {
                return;
            };
            let mut stream = stream.into_inner();
            let (tx, rx) = mpsc::unbounded_channel();
            let _ = views.send(PluginView { request, options: options.into_inner(), lists: rx });
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    message = stream.message() => match message {
                        Ok(Some(response)) => { let _ = tx.send(response.devices); }
                        _ => break,
                    },
                }
            }
        });
        Ok(tonic::Response::new(api::Empty {}))
    }
}

/// A kubelet stand-in serving `v1beta1.Registration` on `<dir>/kubelet.sock`.
pub struct FakeKubelet {
    pub dir: PathBuf,
    views: mpsc::UnboundedReceiver<PluginView>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl FakeKubelet {
    pub async fn start(dir: &Path) -> FakeKubelet {
        let socket = dir.join(api::KUBELET_SOCKET);
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).unwrap();
        let (tx, views) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let service = RegistrationService { dir: dir.to_owned(), views: tx, stop: stop.clone() };
        let server_stop = stop.clone();
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(RegistrationServer::new(service))
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), server_stop.cancelled_owned())
                .await
                .unwrap();
        });
        FakeKubelet { dir: dir.to_owned(), views, stop, task }
    }

    /// The next plugin that registered and was dialled back.
    pub async fn next_plugin(&mut self) -> PluginView {
        tokio::time::timeout(EVENT_DEADLINE, self.views.recv())
            .await
            .expect("no registration within the deadline")
            .expect("kubelet stand-in stopped")
    }

    /// Whether a registration arrived (without waiting).
    pub fn try_next_plugin(&mut self) -> Option<PluginView> {
        self.views.try_recv().ok()
    }

    /// Stops serving; with `wipe`, deletes every socket in the directory as a
    /// restarting kubelet does.
    pub async fn stop(self, wipe: bool) {
        self.stop.cancel();
        let _ = self.task.await;
        let _ = std::fs::remove_file(self.dir.join(api::KUBELET_SOCKET));
        if wipe {
            for entry in std::fs::read_dir(&self.dir).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "sock") {
                    std::fs::remove_file(path).unwrap();
                }
            }
        }
    }
}

/// Receives lists until one satisfies `done`, or panics after the deadline.
pub async fn wait_for_list(
    view: &mut PluginView,
    what: &str,
    mut done: impl FnMut(&[api::Device]) -> bool,
) -> Vec<api::Device> {
    let deadline = tokio::time::Instant::now() + EVENT_DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, view.lists.recv()).await {
            Ok(Some(list)) if done(&list) => return list,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("ListAndWatch ended while waiting for {what}"),
            Err(_) => panic!("not seen within {EVENT_DEADLINE:?}: {what}"),
        }
    }
}

/// Polls `check` until it holds, or panics after the deadline.
pub async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + EVENT_DEADLINE;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "not seen within {EVENT_DEADLINE:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client of the plugin socket, as kubelet would dial it.
pub async fn plugin_client(dir: &Path, endpoint: &str) -> DevicePluginClient<Channel> {
    DevicePluginClient::new(connect_unix(&dir.join(endpoint)).await.unwrap())
}

/// Health of device `id` in `list`.
pub fn health_of<'a>(list: &'a [api::Device], id: &str) -> Option<&'a str> {
    list.iter().find(|d| d.id == id).map(|d| d.health.as_str())
}

/// GET /metrics over plain HTTP/1.1.
pub async fn scrape(address: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}
