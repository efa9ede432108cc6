//! The RDMA device plugin against a synthetic sysfs/dev tree and a stand-in kubelet:
//! registration, ListAndWatch updates, Allocate, preferred allocation, kubelet and agent
//! restarts, and a bad configuration.

mod common;

use std::sync::Arc;

use common::*;
use prometheus_client::registry::Registry;
use skein_agent::deviceplugin::config::ConfigError;
use skein_agent::deviceplugin::dcb::NetlinkDcb;
use skein_agent::deviceplugin::{DevicePluginStatus, RunningDevicePlugin, launch};
use skein_agent::metrics;
use skein_proto::deviceplugin::v1beta1 as api;
use tokio_util::sync::CancellationToken;

const DEFAULT_SOCKET: &str = "skein-skein.dev_rdma.sock";

fn running(status: DevicePluginStatus) -> RunningDevicePlugin {
    match status {
        DevicePluginStatus::Running(running) => running,
        DevicePluginStatus::Disabled(e) => panic!("device plugin disabled: {e}"),
    }
}

fn allocate_request(ids: &[&str]) -> api::AllocateRequest {
    api::AllocateRequest {
        container_requests: vec![api::ContainerAllocateRequest {
            devices_ids: ids.iter().map(|s| s.to_string()).collect(),
        }],
    }
}

/// A synthetic node, a stand-in kubelet in a temporary plugin directory, and a device
/// plugin running against both.
struct Harness {
    node: SyntheticNode,
    plugin_dir: tempfile::TempDir,
    kubelet: FakeKubelet,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
    plugin: RunningDevicePlugin,
}

impl Harness {
    async fn start(config: Option<&str>) -> Harness {
        let node = SyntheticNode::standard();
        let plugin_dir = tempfile::tempdir().unwrap();
        let kubelet = FakeKubelet::start(plugin_dir.path()).await;
        let (registry, deps) = deps(Arc::new(NetlinkDcb));
        let shutdown = CancellationToken::new();
        let plugin = running(launch(settings(&node, plugin_dir.path(), config), deps, shutdown.clone()));
        Harness { node, plugin_dir, kubelet, registry, shutdown, plugin }
    }

    /// Stops the plugin, then the kubelet; returns the plugin directory for inspection.
    async fn stop(self) -> tempfile::TempDir {
        self.shutdown.cancel();
        self.plugin.wait().await;
        self.kubelet.stop(false).await;
        self.plugin_dir
    }
}

#[tokio::test]
async fn registers_and_lists_devices_with_topology() {
    let mut h = Harness::start(None).await;
    assert_eq!(h.plugin.resources(), ["skein.dev/rdma"]);

    let mut view = h.kubelet.next_plugin().await;
    assert_eq!(
        view.request,
        api::RegisterRequest {
            version: "v1beta1".into(),
            endpoint: DEFAULT_SOCKET.into(),
            resource_name: "skein.dev/rdma".into(),
            options: Some(api::DevicePluginOptions {
                pre_start_required: false,
                get_preferred_allocation_available: true,
            }),
        }
    );
    assert!(h.plugin_dir.path().join(DEFAULT_SOCKET).exists());
    assert!(view.options.get_preferred_allocation_available);

    let list = wait_for_list(&mut view, "both HCAs", |l| l.len() == 2).await;
    let numa = |id: &str| {
        list.iter()
            .find(|d| d.id == id)
            .and_then(|d| d.topology.as_ref())
            .map(|t| t.nodes.iter().map(|n| n.id).collect::<Vec<_>>())
    };
    assert_eq!(health_of(&list, "mlx5_0"), Some("Healthy"));
    assert_eq!(health_of(&list, "mlx5_1"), Some("Healthy"));
    assert_eq!(numa("mlx5_0"), Some(vec![0]));
    assert_eq!(numa("mlx5_1"), Some(vec![1]));

    let text = metrics::render(&h.registry);
    assert!(text.contains(r#"skein_deviceplugin_registrations_total{resource="skein.dev/rdma"} 1"#), "{text}");
    assert!(text.contains(r#"skein_rdma_devices{resource="skein.dev/rdma",health="healthy"} 2"#), "{text}");
    assert!(text.contains("skein_deviceplugin_enabled 1"), "{text}");

    let plugin_dir = h.stop().await;
    assert!(!plugin_dir.path().join(DEFAULT_SOCKET).exists(), "socket removed on shutdown");
}

#[tokio::test]
async fn port_state_and_hot_plug_reach_kubelet() {
    let mut h = Harness::start(None).await;
    let mut view = h.kubelet.next_plugin().await;
    wait_for_list(&mut view, "initial list", |l| l.len() == 2).await;

    h.node.set_port_state("mlx5_1", 1, "1: DOWN");
    let list =
        wait_for_list(&mut view, "mlx5_1 Unhealthy after port DOWN", |l| health_of(l, "mlx5_1") == Some("Unhealthy"))
            .await;
    assert_eq!(health_of(&list, "mlx5_0"), Some("Healthy"));

    h.node.set_port_state("mlx5_1", 1, "4: ACTIVE");
    wait_for_list(&mut view, "mlx5_1 Healthy after port ACTIVE", |l| health_of(l, "mlx5_1") == Some("Healthy")).await;

    h.node.add_hca(&HcaSpec {
        name: "mlx5_2",
        numa_node: -1,
        link_layer: "Ethernet",
        netdev: Some("ens3f0"),
        uverbs: 2,
        umad: None,
        node_guid: "b859:9f03:00d4:1e2b",
    });
    let list = wait_for_list(&mut view, "hot-added mlx5_2", |l| l.len() == 3).await;
    let added = list.iter().find(|d| d.id == "mlx5_2").unwrap();
    assert_eq!(added.health, "Healthy");
    assert!(added.topology.is_none(), "numa_node -1 means no topology");

    h.node.remove_hca("mlx5_2");
    wait_for_list(&mut view, "mlx5_2 gone", |l| l.len() == 2 && health_of(l, "mlx5_2").is_none()).await;
    h.stop().await;
}

#[tokio::test]
async fn allocate_gives_char_devices_and_env_and_rejects_unknown_ids() {
    let mut h = Harness::start(None).await;
    let view = h.kubelet.next_plugin().await;
    let mut client = plugin_client(h.plugin_dir.path(), &view.request.endpoint).await;

    let response = client.allocate(allocate_request(&["mlx5_1", "mlx5_0"])).await.unwrap().into_inner();
    assert_eq!(response.container_responses.len(), 1);
    let container = &response.container_responses[0];
    assert_eq!(container.envs["SKEIN_RDMA_DEVICES"], "mlx5_0,mlx5_1");
    assert_eq!(container.envs["SKEIN_RDMA_NETDEVS"], "ens2f0,ib0");
    assert!(container.mounts.is_empty(), "nothing but devices is mounted");
    let specs: Vec<(&str, &str, &str)> = container
        .devices
        .iter()
        .map(|d| (d.container_path.as_str(), d.host_path.as_str(), d.permissions.as_str()))
        .collect();
    assert_eq!(
        specs,
        [
            ("/dev/infiniband/rdma_cm", "/dev/infiniband/rdma_cm", "rw"),
            ("/dev/infiniband/umad0", "/dev/infiniband/umad0", "rw"),
            ("/dev/infiniband/uverbs0", "/dev/infiniband/uverbs0", "rw"),
            ("/dev/infiniband/uverbs1", "/dev/infiniband/uverbs1", "rw"),
        ]
    );

    let only_roce = client.allocate(allocate_request(&["mlx5_1"])).await.unwrap().into_inner();
    let paths: Vec<&str> = only_roce.container_responses[0].devices.iter().map(|d| d.host_path.as_str()).collect();
    assert_eq!(paths, ["/dev/infiniband/rdma_cm", "/dev/infiniband/uverbs1"]);

    let error = client.allocate(allocate_request(&["mlx5_0", "mlx5_9"])).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::NotFound);
    assert!(error.message().contains("mlx5_9"), "{}", error.message());
    let error = client.allocate(allocate_request(&[])).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument);

    // The plugin survived the bad requests.
    client.allocate(allocate_request(&["mlx5_0"])).await.expect("still serving after bad requests");
    client.pre_start_container(api::PreStartContainerRequest { devices_ids: vec!["mlx5_0".into()] }).await.unwrap();
    let text = metrics::render(&h.registry);
    assert!(text.contains(r#"skein_deviceplugin_allocation_errors_total{resource="skein.dev/rdma"} 2"#), "{text}");
    assert!(text.contains(r#"skein_deviceplugin_allocations_total{resource="skein.dev/rdma"} 3"#), "{text}");
    h.stop().await;
}

#[tokio::test]
async fn preferred_allocation_keeps_to_one_numa_node_in_shared_mode() {
    let config = "resources:\n  - name: rdma/hca_shared\n    sharedSlots: 4\n";
    let mut h = Harness::start(Some(config)).await;
    let mut view = h.kubelet.next_plugin().await;
    assert_eq!(view.request.resource_name, "rdma/hca_shared");
    assert_eq!(view.request.endpoint, "skein-rdma_hca_shared.sock");
    let list = wait_for_list(&mut view, "8 slots", |l| l.len() == 8).await;
    let ids: Vec<String> = list.iter().map(|d| d.id.clone()).collect();
    assert!(ids.contains(&"mlx5_0-slot3".to_owned()), "{ids:?}");

    let mut client = plugin_client(h.plugin_dir.path(), &view.request.endpoint).await;
    let numa_of = |id: &str| list.iter().find(|d| d.id == id).and_then(|d| d.topology.as_ref()).map(|t| t.nodes[0].id);
    let ask = |must: &[&str], size: i32| api::PreferredAllocationRequest {
        container_requests: vec![api::ContainerPreferredAllocationRequest {
            available_device_i_ds: ids.clone(),
            must_include_device_i_ds: must.iter().map(|s| s.to_string()).collect(),
            allocation_size: size,
        }],
    };

    let picked = client.get_preferred_allocation(ask(&[], 3)).await.unwrap().into_inner();
    let picked = &picked.container_responses[0].device_i_ds;
    assert_eq!(picked.len(), 3);
    let nodes: std::collections::BTreeSet<_> = picked.iter().map(|id| numa_of(id)).collect();
    assert_eq!(nodes.len(), 1, "one NUMA node: {picked:?}");

    let picked = client.get_preferred_allocation(ask(&["mlx5_1-slot2"], 2)).await.unwrap().into_inner();
    let picked = &picked.container_responses[0].device_i_ds;
    assert_eq!(picked[0], "mlx5_1-slot2");
    assert!(picked.iter().all(|id| numa_of(id) == Some(1)), "{picked:?}");

    let error = client.get_preferred_allocation(ask(&["mlx5_7-slot0"], 2)).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::NotFound);

    // In shared mode one HCA is behind several IDs; Allocate names it once.
    let response = client.allocate(allocate_request(&["mlx5_1-slot0", "mlx5_1-slot3"])).await.unwrap().into_inner();
    assert_eq!(response.container_responses[0].envs["SKEIN_RDMA_DEVICES"], "mlx5_1");
    h.stop().await;
}

#[tokio::test]
async fn kubelet_restart_leads_to_serving_and_registering_again() {
    let node = SyntheticNode::standard();
    let plugin_dir = tempfile::tempdir().unwrap();
    let mut kubelet = FakeKubelet::start(plugin_dir.path()).await;
    let (registry, deps) = deps(Arc::new(NetlinkDcb));
    let shutdown = CancellationToken::new();
    let plugin = running(launch(settings(&node, plugin_dir.path(), None), deps, shutdown.clone()));
    let first = kubelet.next_plugin().await;

    // A restarting kubelet deletes every socket in the directory, then comes back.
    kubelet.stop(true).await;
    let mut kubelet = FakeKubelet::start(plugin_dir.path()).await;
    let mut second = kubelet.next_plugin().await;
    assert_eq!(second.request, first.request);
    wait_for_list(&mut second, "devices over the new socket", |l| l.len() == 2).await;
    assert!(plugin_dir.path().join(DEFAULT_SOCKET).exists());

    // Only kubelet.sock replaced (plugin socket left alone): register again too.
    kubelet.stop(false).await;
    let mut kubelet = FakeKubelet::start(plugin_dir.path()).await;
    let mut third = kubelet.next_plugin().await;
    wait_for_list(&mut third, "devices after kubelet.sock was replaced", |l| l.len() == 2).await;

    let text = metrics::render(&registry);
    assert!(text.contains(r#"skein_deviceplugin_registrations_total{resource="skein.dev/rdma"} 3"#), "{text}");
    shutdown.cancel();
    plugin.wait().await;
    kubelet.stop(false).await;
}

#[tokio::test]
async fn agent_restart_replaces_a_stale_socket_and_registers_late_kubelet() {
    let node = SyntheticNode::standard();
    let plugin_dir = tempfile::tempdir().unwrap();
    // A leftover from a crashed agent: not even a socket.
    std::fs::write(plugin_dir.path().join(DEFAULT_SOCKET), "stale").unwrap();

    // Plugin first, kubelet later: the plugin waits for kubelet.sock to appear.
    let (_registry, deps_a) = deps(Arc::new(NetlinkDcb));
    let shutdown = CancellationToken::new();
    let plugin = running(launch(settings(&node, plugin_dir.path(), None), deps_a, shutdown.clone()));
    let mut kubelet = FakeKubelet::start(plugin_dir.path()).await;
    let mut view = kubelet.next_plugin().await;
    wait_for_list(&mut view, "devices from the first agent", |l| l.len() == 2).await;
    shutdown.cancel();
    plugin.wait().await;
    assert!(!plugin_dir.path().join(DEFAULT_SOCKET).exists());

    let (_registry, deps_b) = deps(Arc::new(NetlinkDcb));
    let shutdown = CancellationToken::new();
    let plugin = running(launch(settings(&node, plugin_dir.path(), None), deps_b, shutdown.clone()));
    let mut view = kubelet.next_plugin().await;
    wait_for_list(&mut view, "devices from the restarted agent", |l| l.len() == 2).await;
    shutdown.cancel();
    plugin.wait().await;
    kubelet.stop(false).await;
}

#[tokio::test]
async fn malformed_config_turns_off_only_the_device_plugin() {
    let node = SyntheticNode::standard();
    let plugin_dir = tempfile::tempdir().unwrap();
    let mut kubelet = FakeKubelet::start(plugin_dir.path()).await;
    let (registry, deps) = deps(Arc::new(NetlinkDcb));
    let shutdown = CancellationToken::new();

    // Another agent function, started before the device plugin: the metrics server.
    let listener = metrics::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let address = listener.local_addr().unwrap();
    let metrics_task = tokio::spawn(metrics::serve(listener, Arc::clone(&registry), shutdown.clone()));

    let bad = "resources:\n  - name: skein.dev/rdma\n    sharedSlots: many\n";
    let status = launch(settings(&node, plugin_dir.path(), Some(bad)), deps.clone(), shutdown.clone());
    let DevicePluginStatus::Disabled(error) = status else {
        panic!("a malformed config must disable the device plugin");
    };
    match &error {
        ConfigError::Field { field, reason } => {
            assert_eq!(field, "resources[0].sharedSlots");
            assert!(reason.contains("many"), "{reason}");
        }
        other => panic!("expected a field error, got {other:?}"),
    }
    assert!(error.to_string().contains("resources[0].sharedSlots"));

    let body = scrape(address).await;
    assert!(body.contains("skein_deviceplugin_enabled 0"), "{body}");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(kubelet.try_next_plugin().is_none(), "nothing registered");
    let sockets: Vec<_> = std::fs::read_dir(plugin_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "kubelet.sock")
        .collect();
    assert!(sockets.is_empty(), "no plugin socket: {sockets:?}");

    // The runtime and the other functions are unaffected: metrics still answer, and a
    // corrected configuration starts the plugin in the same process.
    let body = scrape(address).await;
    assert!(body.contains("# EOF"), "{body}");
    let good = "resources:\n  - name: skein.dev/rdma\n    sharedSlots: 2\n";
    let plugin = running(launch(settings(&node, plugin_dir.path(), Some(good)), deps, shutdown.clone()));
    let mut view = kubelet.next_plugin().await;
    wait_for_list(&mut view, "4 shared slots", |l| l.len() == 4).await;
    assert!(scrape(address).await.contains("skein_deviceplugin_enabled 1"));

    shutdown.cancel();
    plugin.wait().await;
    metrics_task.await.unwrap();
    kubelet.stop(false).await;
}
