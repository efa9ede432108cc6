//! The RDMA device plugin: discovers HCAs, advertises them to kubelet as extended
//! resources over the device plugin API v1beta1, hands them to containers, and reports
//! whether RoCE interfaces are configured for lossless RDMA.
//!
//! [`launch`] is the entry point the agent calls: it either starts the plugin as one
//! task among the agent's others, or — on a bad configuration — reports the error and
//! stays off without disturbing anything else.

pub mod allocation;
pub mod annotation;
pub mod config;
pub mod dcb;
pub mod endpoint;
pub mod inventory;
pub mod metrics;
pub mod readiness;
pub mod service;
pub mod sysfs;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use skein_proto::deviceplugin::v1beta1 as api;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use self::annotation::NodeAnnotator;
use self::config::{Config, ConfigError, Format, RoceExpectation};
use self::dcb::DcbSource;
use self::endpoint::{EndpointSettings, run_endpoint};
use self::inventory::{ResourceInventory, build_inventories};
use self::metrics::{DeviceCountLabels, DevicePluginMetrics, RoceDeviceLabels, RoceSettingLabels};
use self::readiness::{Readiness, ReadinessReport, RoceTarget};
use self::sysfs::{Discovery, DiscoveryRoots, LinkLayer, discover};

/// Where the configuration comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// No file: one exclusive resource `skein.dev/rdma` with every HCA.
    Default,
    /// A JSON (`.json`) or YAML file.
    File(PathBuf),
    /// Configuration text (for embedding and tests).
    Text {
        /// The text.
        text: String,
        /// Its format.
        format: Format,
    },
}

impl ConfigSource {
    /// Reads and validates the configuration.
    pub fn load(&self) -> Result<Config, ConfigError> {
        match self {
            ConfigSource::Default => Ok(Config::default()),
            ConfigSource::File(path) => Config::load(path),
            ConfigSource::Text { text, format } => Config::parse(text, *format),
        }
    }
}

/// How the device plugin runs.
#[derive(Clone, Debug)]
pub struct DevicePluginSettings {
    /// Device plugin directory (kubelet's `/var/lib/kubelet/device-plugins/`).
    pub plugin_dir: PathBuf,
    /// Kubelet's registration socket; `<plugin_dir>/kubelet.sock` by default.
    pub kubelet_socket: PathBuf,
    /// Where HCAs are discovered.
    pub roots: DiscoveryRoots,
    /// The configuration.
    pub config: ConfigSource,
    /// How often sysfs is re-read for port state changes and hot-plugged devices.
    pub discovery_interval: Duration,
    /// How often the plugin and kubelet sockets are checked.
    pub socket_check_interval: Duration,
    /// How often RoCE readiness is re-evaluated (also when the set of RoCE interfaces
    /// changes).
    pub readiness_interval: Duration,
}

impl DevicePluginSettings {
    /// Settings for a node: kubelet's directory, `/sys`, `/dev`, default config, and
    /// intervals that notice changes well within a second.
    pub fn new(plugin_dir: impl Into<PathBuf>) -> DevicePluginSettings {
        let plugin_dir = plugin_dir.into();
        DevicePluginSettings {
            kubelet_socket: plugin_dir.join(api::KUBELET_SOCKET),
            plugin_dir,
            roots: DiscoveryRoots { sysfs: PathBuf::from("/sys"), dev: PathBuf::from("/dev") },
            config: ConfigSource::Default,
            discovery_interval: Duration::from_millis(250),
            socket_check_interval: Duration::from_millis(100),
            readiness_interval: Duration::from_secs(30),
        }
    }
}

impl Default for DevicePluginSettings {
    fn default() -> Self {
        DevicePluginSettings::new(api::DEVICE_PLUGIN_PATH)
    }
}

/// What the device plugin talks to besides kubelet and sysfs.
#[derive(Clone)]
pub struct DevicePluginDeps {
    /// Metric handles (registered in the agent's registry).
    pub metrics: DevicePluginMetrics,
    /// Writes the readiness annotation; `None` = log and metrics only.
    pub annotator: Option<Arc<dyn NodeAnnotator>>,
    /// DCB state of network interfaces.
    pub dcb: Arc<dyn DcbSource>,
}

/// Result of [`launch`].
pub enum DevicePluginStatus {
    /// The plugin runs until the shutdown token is cancelled.
    Running(RunningDevicePlugin),
    /// The configuration was rejected; the plugin is off. The error names the field.
    Disabled(ConfigError),
}

/// Handle to a running device plugin.
pub struct RunningDevicePlugin {
    resources: Vec<String>,
    task: JoinHandle<()>,
}

impl RunningDevicePlugin {
    /// Names of the advertised resources.
    pub fn resources(&self) -> &[String] {
        &self.resources
    }

    /// Waits until the plugin has stopped (after shutdown) and removed its sockets.
    pub async fn wait(self) {
        if let Err(e) = self.task.await {
            error!(error = %e, "device plugin task failed");
        }
    }
}

/// Starts the device plugin as a task of the current tokio runtime, or — if the
/// configuration is bad — logs the error, sets `skein_deviceplugin_enabled` to 0 and
/// returns [`DevicePluginStatus::Disabled`] without starting anything, so that the rest
/// of the agent keeps running.
pub fn launch(
    settings: DevicePluginSettings,
    deps: DevicePluginDeps,
    shutdown: CancellationToken,
) -> DevicePluginStatus {
    let config = match settings.config.load() {
        Ok(config) => config,
        Err(e) => {
            error!(error = %e, "RDMA device plugin disabled: bad configuration");
            deps.metrics.enabled.set(0);
            return DevicePluginStatus::Disabled(e);
        }
    };
    deps.metrics.enabled.set(1);
    let resources = config.resources.iter().map(|r| r.name.clone()).collect();
    info!(
        resources = ?config.resources.iter().map(|r| &r.name).collect::<Vec<_>>(),
        plugin_dir = %settings.plugin_dir.display(),
        sysfs = %settings.roots.sysfs.display(),
        dev = %settings.roots.dev.display(),
        "starting RDMA device plugin"
    );
    let task = tokio::spawn(run(settings, config, deps, shutdown));
    DevicePluginStatus::Running(RunningDevicePlugin { resources, task })
}

async fn discover_blocking(roots: &DiscoveryRoots) -> Discovery {
    let roots = roots.clone();
    match tokio::task::spawn_blocking(move || discover(&roots)).await {
        Ok(discovery) => discovery,
        Err(e) => {
            error!(error = %e, "discovery task failed");
            Discovery::default()
        }
    }
}

fn roce_targets(inventories: &[ResourceInventory]) -> Vec<RoceTarget> {
    let mut targets = BTreeSet::new();
    for inventory in inventories {
        for hca in inventory.hcas().into_values() {
            if !hca.has_link_layer(LinkLayer::Ethernet) {
                continue;
            }
            if hca.netdevs.is_empty() {
                targets.insert(RoceTarget { device: hca.name.clone(), netdev: None });
            }
            for netdev in &hca.netdevs {
                targets.insert(RoceTarget { device: hca.name.clone(), netdev: Some(netdev.clone()) });
            }
        }
    }
    targets.into_iter().collect()
}

// One log line per event an operator cares about: an HCA appearing, disappearing or
// changing health — per HCA, not per shared slot.
fn log_changes(resource: &str, old: &ResourceInventory, new: &ResourceInventory) {
    let old_hcas = old.hcas();
    let new_hcas = new.hcas();
    let health =
        |inv: &ResourceInventory, name: &str| inv.devices.values().find(|d| d.hca.name == name).map(|d| d.health);
    for (name, hca) in &new_hcas {
        let now = health(new, name);
        match old_hcas.get(name) {
            None => info!(
                resource,
                device = name,
                numa_node = ?hca.numa_node,
                netdevs = ?hca.netdevs,
                uverbs = ?hca.uverbs,
                node_guid = ?hca.node_guid_text(),
                health = ?now,
                "RDMA device added"
            ),
            Some(_) => {
                let before = health(old, name);
                if before != now
                    && let Some(now) = now
                {
                    if now.is_healthy() {
                        info!(resource, device = name, "RDMA device healthy again");
                    } else {
                        warn!(resource, device = name, reason = now.reason(), "RDMA device unhealthy");
                    }
                }
            }
        }
    }
    for name in old_hcas.keys() {
        if !new_hcas.contains_key(name) {
            warn!(resource, device = name, "RDMA device removed");
        }
    }
}

async fn run(settings: DevicePluginSettings, config: Config, deps: DevicePluginDeps, shutdown: CancellationToken) {
    let children = shutdown.child_token();
    let mut tasks = JoinSet::new();

    let discovery = discover_blocking(&settings.roots).await;
    let (inventories, mut warnings) = build_inventories(&config, &discovery);
    warnings.extend(discovery.warnings.iter().cloned());
    let mut seen_warnings: BTreeSet<String> = BTreeSet::new();
    for w in &warnings {
        warn!(problem = %w, "RDMA discovery");
        seen_warnings.insert(w.clone());
    }
    if discovery.hcas.is_empty() {
        info!(
            sysfs = %settings.roots.infiniband_class().display(),
            "no RDMA devices found; advertising none until some appear"
        );
    }
    let empty = ResourceInventory::default();
    let mut senders = Vec::new();
    for (resource, inventory) in config.resources.iter().zip(inventories.iter()) {
        log_changes(&resource.name, &empty, inventory);
        update_device_metrics(&deps.metrics, &resource.name, inventory);
        let (tx, rx) = watch::channel(Arc::new(inventory.clone()));
        senders.push(tx);
        tasks.spawn(run_endpoint(
            EndpointSettings {
                resource: resource.name.clone(),
                plugin_dir: settings.plugin_dir.clone(),
                kubelet_socket: settings.kubelet_socket.clone(),
                check_interval: settings.socket_check_interval,
            },
            rx,
            deps.metrics.clone(),
            children.clone(),
        ));
    }
    let (targets_tx, targets_rx) = watch::channel(roce_targets(&inventories));
    tasks.spawn(readiness_loop(
        settings.roots.sysfs.clone(),
        config.roce.clone(),
        targets_rx,
        settings.readiness_interval,
        deps.clone(),
        children.clone(),
    ));

    let mut current = inventories;
    let mut ticker = tokio::time::interval(settings.discovery_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let discovery = discover_blocking(&settings.roots).await;
        let (next, mut warnings) = build_inventories(&config, &discovery);
        warnings.extend(discovery.warnings);
        // Warn once per distinct problem while it lasts, not every pass.
        let now_seen: BTreeSet<String> = warnings.into_iter().collect();
        for w in now_seen.difference(&seen_warnings) {
            warn!(problem = %w, "RDMA discovery");
        }
        seen_warnings = now_seen;
        for (i, resource) in config.resources.iter().enumerate() {
            if current[i] != next[i] {
                log_changes(&resource.name, &current[i], &next[i]);
                update_device_metrics(&deps.metrics, &resource.name, &next[i]);
                senders[i].send_replace(Arc::new(next[i].clone()));
            }
        }
        let targets = roce_targets(&next);
        targets_tx.send_if_modified(|old| {
            if *old == targets {
                false
            } else {
                *old = targets;
                true
            }
        });
        current = next;
    }

    children.cancel();
    while let Some(result) = tasks.join_next().await {
        if let Err(e) = result {
            error!(error = %e, "device plugin subtask failed");
        }
    }
    info!("RDMA device plugin stopped");
}

fn update_device_metrics(metrics: &DevicePluginMetrics, resource: &str, inventory: &ResourceInventory) {
    let (healthy, unhealthy) = inventory.health_counts();
    for (health, count) in [("healthy", healthy), ("unhealthy", unhealthy)] {
        metrics
            .devices
            .get_or_create(&DeviceCountLabels { resource: resource.to_owned(), health: health.to_owned() })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
}

async fn readiness_loop(
    sysfs_root: PathBuf,
    expect: RoceExpectation,
    mut targets: watch::Receiver<Vec<RoceTarget>>,
    interval: Duration,
    deps: DevicePluginDeps,
    shutdown: CancellationToken,
) {
    if deps.annotator.is_none() {
        info!("no Kubernetes client: RoCE readiness goes to logs and metrics only");
    }
    let mut previous = ReadinessReport::default();
    let mut first = true;
    let mut annotated: Option<String> = None;
    let mut setting_series: BTreeSet<RoceSettingLabels> = BTreeSet::new();
    let mut device_series: BTreeSet<RoceDeviceLabels> = BTreeSet::new();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
            changed = targets.changed() => if changed.is_err() { break },
        }
        let current_targets = targets.borrow_and_update().clone();
        let report = {
            let sysfs_root = sysfs_root.clone();
            let expect = expect.clone();
            let dcb = Arc::clone(&deps.dcb);
            match tokio::task::spawn_blocking(move || {
                ReadinessReport::collect(&sysfs_root, &current_targets, &expect, dcb.as_ref())
            })
            .await
            {
                Ok(report) => report,
                Err(e) => {
                    error!(error = %e, "RoCE readiness task failed");
                    continue;
                }
            }
        };
        log_readiness(&previous, &report, first);
        first = false;
        (setting_series, device_series) =
            update_readiness_metrics(&deps.metrics, &report, setting_series, device_series);
        let annotation = report.annotation();
        if let Some(annotator) = &deps.annotator
            && annotated.as_deref() != Some(annotation.as_str())
        {
            match annotator.annotate(readiness::ANNOTATION, &annotation).await {
                Ok(()) => {
                    info!(annotation = readiness::ANNOTATION, value = %annotation, "node annotation updated");
                    annotated = Some(annotation);
                }
                Err(e) => {
                    deps.metrics.annotation_failures.inc();
                    warn!(error = %e, "cannot write the RoCE readiness annotation; retrying on the next pass");
                }
            }
        }
        previous = report;
    }
}

fn log_readiness(previous: &ReadinessReport, report: &ReadinessReport, first: bool) {
    let before: BTreeMap<&RoceTarget, _> =
        previous.devices.iter().map(|d| (&d.target, (d.readiness, &d.checks))).collect();
    for device in &report.devices {
        if !first && before.get(&device.target) == Some(&(device.readiness, &device.checks)) {
            continue;
        }
        let netdev = device.target.netdev.as_deref().unwrap_or("");
        let listed =
            |status| device.checks.iter().filter(|c| c.status == status).map(ToString::to_string).collect::<Vec<_>>();
        let mismatches = listed(readiness::Status::Mismatch);
        let unknown = listed(readiness::Status::Unknown);
        match device.readiness {
            Readiness::NotReady => warn!(
                device = %device.target.device, netdev, status = device.readiness.name(),
                mismatches = ?mismatches, unknown = ?unknown, notes = ?device.notes,
                "RoCE device not ready for lossless RDMA"
            ),
            _ => info!(
                device = %device.target.device, netdev, status = device.readiness.name(),
                unknown = ?unknown, notes = ?device.notes,
                "RoCE readiness"
            ),
        }
    }
}

fn update_readiness_metrics(
    metrics: &DevicePluginMetrics,
    report: &ReadinessReport,
    old_settings: BTreeSet<RoceSettingLabels>,
    old_devices: BTreeSet<RoceDeviceLabels>,
) -> (BTreeSet<RoceSettingLabels>, BTreeSet<RoceDeviceLabels>) {
    let mut settings = BTreeSet::new();
    let mut devices = BTreeSet::new();
    for device in &report.devices {
        let netdev = device.target.netdev.clone().unwrap_or_default();
        let device_labels = RoceDeviceLabels { device: device.target.device.clone(), netdev: netdev.clone() };
        metrics.roce_ready.get_or_create(&device_labels).set(device.readiness.metric_value());
        devices.insert(device_labels);
        for check in &device.checks {
            let labels = RoceSettingLabels {
                device: device.target.device.clone(),
                netdev: netdev.clone(),
                setting: check.setting.name().to_owned(),
                priority: check.priority.map(|p| p.to_string()).unwrap_or_default(),
            };
            metrics.roce_setting.get_or_create(&labels).set(check.status.metric_value());
            settings.insert(labels);
        }
    }
    // Series of devices that went away must not linger with stale values.
    for gone in old_settings.difference(&settings) {
        metrics.roce_setting.remove(gone);
    }
    for gone in old_devices.difference(&devices) {
        metrics.roce_ready.remove(gone);
    }
    (settings, devices)
}

/// Checks that `path` names a directory the plugin can use; for start-up diagnostics.
pub fn check_plugin_dir(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(format!("{} is not a directory", path.display())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}
