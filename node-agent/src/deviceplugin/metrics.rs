//! Metric families of the device plugin, registered in the agent's registry.
//!
//! Names follow Prometheus conventions: counters end in `_total`; values without a
//! unit (counts, statuses) carry no unit suffix.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels naming a resource.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    /// Extended resource name.
    pub resource: String,
}

/// Labels of `skein_rdma_devices`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceCountLabels {
    /// Extended resource name.
    pub resource: String,
    /// `healthy` or `unhealthy`.
    pub health: String,
}

/// Labels of `skein_rdma_roce_setting`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct RoceSettingLabels {
    /// HCA name.
    pub device: String,
    /// Network interface.
    pub netdev: String,
    /// `trust`, `pfc`, `ecn_np` or `ecn_rp`.
    pub setting: String,
    /// Priority 0–7; empty for `trust`.
    pub priority: String,
}

/// Labels of `skein_rdma_roce_ready`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct RoceDeviceLabels {
    /// HCA name.
    pub device: String,
    /// Network interface.
    pub netdev: String,
}

/// Handles to the device plugin's metrics (cheap to clone).
#[derive(Clone, Debug, Default)]
pub struct DevicePluginMetrics {
    /// `skein_deviceplugin_enabled`: 1 running, 0 off because of a configuration error.
    pub enabled: Gauge,
    /// `skein_rdma_devices{resource,health}`: advertised device IDs.
    pub devices: Family<DeviceCountLabels, Gauge>,
    /// `skein_deviceplugin_registrations_total{resource}`: successful registrations.
    pub registrations: Family<ResourceLabels, Counter>,
    /// `skein_deviceplugin_registration_failures_total{resource}`.
    pub registration_failures: Family<ResourceLabels, Counter>,
    /// `skein_deviceplugin_allocations_total{resource}`: containers given devices.
    pub allocations: Family<ResourceLabels, Counter>,
    /// `skein_deviceplugin_allocation_errors_total{resource}`: refused Allocate and
    /// GetPreferredAllocation calls.
    pub allocation_errors: Family<ResourceLabels, Counter>,
    /// `skein_rdma_roce_setting{device,netdev,setting,priority}`: 1 ok, 0 mismatch,
    /// -1 unknown.
    pub roce_setting: Family<RoceSettingLabels, Gauge>,
    /// `skein_rdma_roce_ready{device,netdev}`: 1 ready, 0 not ready, -1 unknown.
    pub roce_ready: Family<RoceDeviceLabels, Gauge>,
    /// `skein_rdma_readiness_annotation_failures_total`: failed node annotation patches.
    pub annotation_failures: Counter,
}

impl DevicePluginMetrics {
    /// Creates the families and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> DevicePluginMetrics {
        let metrics = DevicePluginMetrics::default();
        registry.register(
            "skein_deviceplugin_enabled",
            "1 if the RDMA device plugin runs, 0 if its configuration was rejected",
            metrics.enabled.clone(),
        );
        registry.register(
            "skein_rdma_devices",
            "RDMA device IDs advertised to kubelet, by resource and health",
            metrics.devices.clone(),
        );
        registry.register(
            "skein_deviceplugin_registrations",
            "Successful registrations with kubelet",
            metrics.registrations.clone(),
        );
        registry.register(
            "skein_deviceplugin_registration_failures",
            "Failed registration attempts with kubelet",
            metrics.registration_failures.clone(),
        );
        registry.register(
            "skein_deviceplugin_allocations",
            "Containers given RDMA devices by Allocate",
            metrics.allocations.clone(),
        );
        registry.register(
            "skein_deviceplugin_allocation_errors",
            "Refused Allocate or GetPreferredAllocation requests",
            metrics.allocation_errors.clone(),
        );
        registry.register(
            "skein_rdma_roce_setting",
            "RoCE QoS setting compared with the expectation: 1 ok, 0 mismatch, -1 unknown",
            metrics.roce_setting.clone(),
        );
        registry.register(
            "skein_rdma_roce_ready",
            "RoCE interface readiness: 1 ready, 0 not ready, -1 unknown",
            metrics.roce_ready.clone(),
        );
        registry.register(
            "skein_rdma_readiness_annotation_failures",
            "Failed patches of the skein.dev/rdma-readiness node annotation",
            metrics.annotation_failures.clone(),
        );
        metrics
    }
}
