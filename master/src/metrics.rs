//! The master's Prometheus metrics. Every family is registered once into one
//! [`Registry`], which `/metrics` serves (see [`crate::http`]).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label of per-chassis series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChassisLabel {
    /// The chassis (node name).
    pub chassis: String,
}

/// Label of refused southbound streams.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabel {
    /// Why (`unauthenticated`, `wrong_node`, `too_many_streams`).
    pub reason: String,
}

/// Label of per-kind error series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    /// Object kind (`Pod`, `Node`, ...).
    pub kind: String,
    /// Short reason (`InvalidObject`, `IpamExhausted`, ...).
    pub reason: String,
}

/// Label of the IPAM usage gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IpamLabel {
    /// `node_subnets` or `pod_addresses`.
    pub pool: String,
    /// `free` or `used`.
    pub state: String,
}

fn latency_histogram() -> Histogram {
    // 100 µs … ~100 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 21))
}

/// Every metric of the master.
#[derive(Clone, Debug)]
pub struct MasterMetrics {
    /// Pods whose `skein.dev/pod-networks` annotation this master wrote.
    pub pods_annotated: Counter,
    /// Nodes whose `skein.dev/node-subnets` annotation this master wrote.
    pub nodes_annotated: Counter,
    /// Pod seen needing an address → annotation written.
    pub annotation_latency: Histogram,
    /// Annotation writes that failed (each attempt).
    pub annotation_write_errors: Counter,
    /// Duration of one `Engine::apply` (one batch of watch events).
    pub compile_latency: Histogram,
    /// Watch events applied.
    pub changes_applied: Counter,
    /// Current version of each chassis's view.
    pub chassis_version: Family<ChassisLabel, Gauge>,
    /// Version each chassis's agent acknowledged as installed.
    pub chassis_installed_version: Family<ChassisLabel, Gauge>,
    /// Change seen → agent acknowledged the version holding it, per chassis.
    pub programming_latency: Family<ChassisLabel, Histogram, fn() -> Histogram>,
    /// Open southbound streams.
    pub southbound_streams: Gauge,
    /// Bytes of snapshots sent.
    pub snapshot_bytes: Counter,
    /// Southbound streams refused, by reason.
    pub southbound_refused: Family<RefusedLabel, Counter>,
    /// Leadership given up because the lease was not renewed in time.
    pub lease_renewal_deadline_missed: Counter,
    /// Objects with problems, by kind and reason.
    pub object_errors: Family<ErrorLabel, Counter>,
    /// Objects the compiler currently reports (`Engine::issues`).
    pub compile_issues: Gauge,
    /// IPAM usage.
    pub ipam: Family<IpamLabel, Gauge>,
    /// 1 while this replica holds the lease.
    pub is_leader: Gauge,
    /// Leadership acquired.
    pub leader_transitions: Counter,
}

impl MasterMetrics {
    /// Registers every family in `registry` (prefix `skein_master`).
    pub fn register(registry: &mut Registry) -> MasterMetrics {
        let m = MasterMetrics {
            pods_annotated: Counter::default(),
            nodes_annotated: Counter::default(),
            annotation_latency: latency_histogram(),
            annotation_write_errors: Counter::default(),
            compile_latency: latency_histogram(),
            changes_applied: Counter::default(),
            chassis_version: Family::default(),
            chassis_installed_version: Family::default(),
            programming_latency: Family::new_with_constructor(latency_histogram),
            southbound_streams: Gauge::default(),
            snapshot_bytes: Counter::default(),
            southbound_refused: Family::default(),
            lease_renewal_deadline_missed: Counter::default(),
            object_errors: Family::default(),
            compile_issues: Gauge::default(),
            ipam: Family::default(),
            is_leader: Gauge::default(),
            leader_transitions: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("skein_master");
        r.register(
            "pods_annotated",
            "Pods whose skein.dev/pod-networks annotation was written",
            m.pods_annotated.clone(),
        );
        r.register(
            "nodes_annotated",
            "Nodes whose skein.dev/node-subnets annotation was written",
            m.nodes_annotated.clone(),
        );
        r.register(
            "pod_annotation_latency_seconds",
            "Pod seen needing an address until its annotation was written",
            m.annotation_latency.clone(),
        );
        r.register(
            "annotation_write_errors",
            "Failed annotation write attempts (retried with backoff)",
            m.annotation_write_errors.clone(),
        );
        r.register(
            "compile_latency_seconds",
            "Duration of one incremental compile (a batch of changes)",
            m.compile_latency.clone(),
        );
        r.register("cluster_changes_applied", "Watch events applied to the logical network", m.changes_applied.clone());
        r.register("chassis_version", "Current version of each chassis's view", m.chassis_version.clone());
        r.register(
            "chassis_installed_version",
            "Version of its view each chassis acknowledged as installed",
            m.chassis_installed_version.clone(),
        );
        r.register(
            "chassis_programming_latency_seconds",
            "Cluster change seen until the chassis acknowledged the version holding it",
            m.programming_latency.clone(),
        );
        r.register("southbound_streams", "Open southbound streams", m.southbound_streams.clone());
        r.register("snapshot_bytes", "Encoded bytes of the snapshots sent to agents", m.snapshot_bytes.clone());
        r.register(
            "southbound_refused",
            "Southbound streams refused (unauthenticated, registration for another node, too many streams)",
            m.southbound_refused.clone(),
        );
        r.register(
            "lease_renewal_deadline_missed",
            "Times this replica stopped leading because its lease was not renewed within the renew deadline",
            m.lease_renewal_deadline_missed.clone(),
        );
        r.register("object_errors", "Objects with problems, by kind and reason", m.object_errors.clone());
        r.register(
            "compile_issues",
            "Objects (partly) not programmed because of a conflict or bad data",
            m.compile_issues.clone(),
        );
        r.register("ipam_addresses", "IPAM usage: node subnets and pod addresses, free and used", m.ipam.clone());
        r.register("is_leader", "1 while this replica holds the leader lease", m.is_leader.clone());
        r.register("leader_acquisitions", "Times this replica acquired the leader lease", m.leader_transitions.clone());
        m
    }

    /// Counts one refused southbound stream.
    pub fn southbound_refused(&self, reason: &str) {
        self.southbound_refused.get_or_create(&RefusedLabel { reason: reason.to_owned() }).inc();
    }

    /// Counts one problem with an object.
    pub fn object_error(&self, kind: &str, reason: &str) {
        self.object_errors.get_or_create(&ErrorLabel { kind: kind.to_owned(), reason: reason.to_owned() }).inc();
    }

    /// Sets the IPAM gauges.
    pub fn set_ipam(&self, usage: &skein_netmodel::ipam::IpamUsage) {
        let set = |pool: &str, state: &str, value: u64| {
            self.ipam
                .get_or_create(&IpamLabel { pool: pool.to_owned(), state: state.to_owned() })
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        };
        let subnets_used = u64::from(usage.node_subnets_used);
        set("node_subnets", "used", subnets_used);
        set("node_subnets", "free", u64::from(usage.node_subnets_total).saturating_sub(subnets_used));
        let pod_capacity = subnets_used * u64::from(usage.pod_addresses_per_node);
        set("pod_addresses", "used", usage.pod_addresses_used);
        set("pod_addresses", "free", pod_capacity.saturating_sub(usage.pod_addresses_used));
    }
}
