//! Metrics of the node's network: CNI requests, installed flows and version, and the
//! datapath's caches, upcalls and conntrack (sampled from the datapath every second).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::node::NodeNetwork;

/// Labels of `cni_request_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CniLabels {
    /// `ADD`, `DEL`, `CHECK`, `STATUS`, `GC`.
    pub command: String,
    /// `ok` or `error`.
    pub result: String,
}

/// Labels naming a cache.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// `microflow` or `megaflow`.
    pub cache: String,
}

/// The network metrics.
#[derive(Clone, Debug)]
pub struct NetMetrics {
    /// Duration of CNI requests served, by command and result.
    pub cni_requests: Family<CniLabels, Histogram>,
    /// Datapath flows installed.
    pub flows_installed: Gauge,
    /// View version installed (0 before the first).
    pub installed_version: Gauge,
    /// Logical flows that could not be translated.
    pub untranslated: Gauge,
    /// Pod ports bound.
    pub pod_ports: Gauge,
    /// Hit ratio of each cache since start (per mille would lose precision; a float).
    pub cache_hit_ratio: Family<CacheLabels, Gauge<f64, AtomicU64>>,
    /// Packets processed.
    pub packets: Counter,
    /// Upcalls (packets that went through the flow tables).
    pub upcalls: Counter,
    /// Tracked connections.
    pub conntrack_entries: Gauge,
    /// Megaflows cached.
    pub megaflows: Gauge,
}

impl NetMetrics {
    /// Registers the families in `registry`.
    pub fn register(registry: &mut Registry) -> NetMetrics {
        let m = NetMetrics {
            cni_requests: Family::new_with_constructor(|| {
                Histogram::new([
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
                ])
            }),
            flows_installed: Gauge::default(),
            installed_version: Gauge::default(),
            untranslated: Gauge::default(),
            pod_ports: Gauge::default(),
            cache_hit_ratio: Family::default(),
            packets: Counter::default(),
            upcalls: Counter::default(),
            conntrack_entries: Gauge::default(),
            megaflows: Gauge::default(),
        };
        registry.register(
            "cni_request_duration_seconds",
            "Time to answer a CNI request (ADD includes waiting for the pod's annotation and flows)",
            m.cni_requests.clone(),
        );
        registry.register("skein_flows_installed", "Datapath flows installed", m.flows_installed.clone());
        registry.register(
            "skein_installed_version",
            "Version of the chassis view installed",
            m.installed_version.clone(),
        );
        registry.register(
            "skein_untranslated_flows",
            "Logical flows not translated (see the log)",
            m.untranslated.clone(),
        );
        registry.register("skein_pod_ports", "Pod ports bound to the datapath", m.pod_ports.clone());
        registry.register(
            "skein_cache_hit_ratio",
            "Share of packets answered by each datapath cache since start",
            m.cache_hit_ratio.clone(),
        );
        registry.register("skein_datapath_packets", "Packets processed by the datapath", m.packets.clone());
        registry.register(
            "skein_datapath_upcalls",
            "Packets that missed the caches and ran the flow tables",
            m.upcalls.clone(),
        );
        registry.register("skein_conntrack_entries", "Connections tracked", m.conntrack_entries.clone());
        registry.register("skein_megaflows", "Megaflows cached", m.megaflows.clone());
        m
    }

    /// Records one CNI request.
    pub fn observe_cni(&self, command: &str, ok: bool, seconds: f64) {
        self.cni_requests
            .get_or_create(&CniLabels {
                command: command.to_owned(),
                result: if ok { "ok" } else { "error" }.to_owned(),
            })
            .observe(seconds);
    }

    /// Samples `net` every second until `shutdown`.
    pub async fn sample(self, net: Arc<NodeNetwork>, shutdown: CancellationToken) {
        let (mut packets, mut upcalls) = (0u64, 0u64);
        loop {
            let s = net.datapath().stats();
            self.packets.inc_by(s.packets.saturating_sub(packets));
            self.upcalls.inc_by(s.upcalls.saturating_sub(upcalls));
            (packets, upcalls) = (s.packets.max(packets), s.upcalls.max(upcalls));
            let ratio = |hits: u64| if s.packets == 0 { 0.0 } else { hits as f64 / s.packets as f64 };
            self.cache_hit_ratio.get_or_create(&CacheLabels { cache: "microflow".into() }).set(ratio(s.microflow_hits));
            self.cache_hit_ratio.get_or_create(&CacheLabels { cache: "megaflow".into() }).set(ratio(s.megaflow_hits));
            self.conntrack_entries.set(s.connections as i64);
            self.megaflows.set(s.megaflows as i64);
            let installed = net.installed().borrow().clone();
            self.flows_installed.set(installed.flows as i64);
            self.installed_version.set(installed.version.unwrap_or(0) as i64);
            self.untranslated.set(installed.untranslated as i64);
            self.pod_ports.set(net.records().len() as i64);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}
