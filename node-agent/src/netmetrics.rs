//! Metrics of the node's network: CNI requests (recorded as they are served), and the
//! installed flows and version, pod ports, stale pod ports reclaimed, and the datapath's
//! caches, upcalls and conntrack — read from the running network when `/metrics` is
//! scraped, so nothing is sampled while nobody asks.

use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use skein_netmodel::cluster::PolicyType;

use crate::node::NodeNetwork;
use crate::policyview::PolicyView;

/// Labels of `cni_request_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CniLabels {
    /// `ADD`, `DEL`, `CHECK`, `STATUS`, `GC`.
    pub command: String,
    /// `ok` or `error`.
    pub result: String,
}

/// Labels of `skein_datapath_drops_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// The datapath's drop reason (`tunnel_unknown_source`, `ct_zone_full`, ...), as in
    /// `skein-agent stats` (`drops_<reason>=`).
    pub reason: String,
}

/// Labels of `skein_port_drops_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PortDropLabels {
    /// The datapath's port number.
    pub port: String,
    /// Its interface (`eth0`, a pod's veth, `geneve_192.0.2.1:6081`).
    pub interface: String,
    /// `rx_ring_full`, `rx_other` or `tx`.
    pub reason: String,
}

/// Labels of `skein_slow_batches_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SlowLabels {
    /// `1ms` or `10ms`.
    pub over: String,
}

/// Labels of `skein_cni_stale_ports_reclaimed_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StaleLabels {
    /// `netns_gone`, `veth_gone` or `superseded`.
    pub reason: String,
}

/// Labels naming a cache.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// `microflow` or `megaflow`.
    pub cache: String,
}

/// Labels of `skein_policy_packets_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    /// `namespace/name` of the NetworkPolicy.
    pub policy: String,
    /// `ingress` or `egress`.
    pub direction: String,
    /// `allowed` (its rules allowed the packet) or `denied` (it isolated the endpoint and
    /// no rule allowed the packet).
    pub verdict: String,
}

/// The network metrics.
#[derive(Clone, Debug)]
pub struct NetMetrics {
    /// Duration of CNI requests served, by command and result.
    pub cni_requests: Family<CniLabels, Histogram>,
    /// The running network, once there is one (read at scrape time).
    network: Arc<OnceLock<Arc<NodeNetwork>>>,
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
            network: Arc::new(OnceLock::new()),
        };
        registry.register(
            "cni_request_duration_seconds",
            "Time to answer a CNI request (ADD includes waiting for the pod's annotation and flows)",
            m.cni_requests.clone(),
        );
        registry.register_collector(Box::new(NetworkCollector { network: m.network.clone() }));
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

    /// From now on `/metrics` reports `net` (the first network attached stays).
    pub fn attach(&self, net: Arc<NodeNetwork>) {
        let _ = self.network.set(net);
    }
}

/// Reads the network's figures on each scrape.
#[derive(Debug)]
struct NetworkCollector {
    network: Arc<OnceLock<Arc<NodeNetwork>>>,
}

impl Collector for NetworkCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(net) = self.network.get() else {
            return Ok(());
        };
        // A datapath process that does not answer shows zeros in this scrape (the log says why).
        let s = net.datapath().figures().unwrap_or_default();
        let installed = net.installed().borrow().clone();
        let gauge = |encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64| {
            let g = ConstGauge::new(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
        };
        let as_gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        gauge(&mut encoder, "skein_flows_installed", "Datapath flows installed", as_gauge(installed.flows))?;
        gauge(
            &mut encoder,
            "skein_installed_version",
            "Version of the chassis view installed (0 before the first)",
            i64::try_from(installed.version.unwrap_or(0)).unwrap_or(i64::MAX),
        )?;
        gauge(
            &mut encoder,
            "skein_untranslated_flows",
            "Logical flows not translated (see the log)",
            as_gauge(installed.untranslated),
        )?;
        gauge(
            &mut encoder,
            "skein_view_items_skipped",
            "Items of the chassis view left out of the translation: chassis without a usable tunnel address, ports on them, duplicated ports (see the log)",
            as_gauge(installed.skipped),
        )?;
        gauge(&mut encoder, "skein_pod_ports", "Pod ports bound to the datapath", as_gauge(net.records().len()))?;
        gauge(&mut encoder, "skein_conntrack_entries", "Connections tracked", as_gauge(s.connections))?;
        gauge(&mut encoder, "skein_megaflows", "Megaflows cached", as_gauge(s.megaflows))?;

        let ratio = |hits: u64| if s.packets == 0 { 0.0 } else { hits as f64 / s.packets as f64 };
        let kind = ConstGauge::new(0.0f64).metric_type();
        let mut family = encoder.encode_descriptor(
            "skein_cache_hit_ratio",
            "Share of packets answered by each datapath cache since start",
            None,
            kind,
        )?;
        for (cache, hits) in [("microflow", s.microflow_hits), ("megaflow", s.megaflow_hits)] {
            let labels = CacheLabels { cache: cache.into() };
            ConstGauge::new(ratio(hits)).encode(family.encode_family(&labels)?)?;
        }

        let counter = |encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64| {
            let c = ConstCounter::new(value);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
        };
        let mut family = encoder.encode_descriptor(
            "skein_cni_stale_ports_reclaimed",
            "Pod port records reclaimed because their veth or sandbox namespace was gone, or a newer ADD of the pod replaced them",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for (reason, count) in net.stale_reclaimed() {
            let labels = StaleLabels { reason: reason.label().into() };
            ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
        }

        counter(&mut encoder, "skein_datapath_packets", "Packets processed by the datapath", s.packets)?;
        counter(
            &mut encoder,
            "skein_datapath_upcalls",
            "Packets that missed the caches and ran the flow tables",
            s.upcalls,
        )?;

        let mut family = encoder.encode_descriptor(
            "skein_datapath_drops",
            "Packets the datapath dropped, by reason (a frame through the tunnel from no chassis: tunnel_unknown_source; a new connection over a conntrack limit: ct_zone_full, ct_table_full; no free NAT port: nat_exhausted)",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for (reason, count) in &s.drops {
            let labels = DropLabels { reason: reason.clone() };
            ConstCounter::new(*count).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "skein_port_drops",
            "Frames dropped at the datapath's ports: rx_ring_full (the receive ring was full: the forwarding thread did not empty it in time), rx_other (too big for the ring, invalid Geneve), tx (the send failed)",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for (port, interface, reason, count) in &s.port_drops {
            let labels =
                PortDropLabels { port: port.to_string(), interface: interface.clone(), reason: (*reason).to_owned() };
            ConstCounter::new(*count).encode(family.encode_family(&labels)?)?;
        }
        counter(
            &mut encoder,
            "skein_output_unknown_port_drops",
            "Frames the flows sent to a port number the datapath does not have",
            s.unknown_port_drops,
        )?;
        let mut family = encoder.encode_descriptor(
            "skein_slow_batches",
            "Forwarding batches that took over 1 ms and over 10 ms (a forwarding thread held up while its rings fill)",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for (over, count) in [("1ms", s.slow_batches[0]), ("10ms", s.slow_batches[1])] {
            ConstCounter::new(count).encode(family.encode_family(&SlowLabels { over: over.into() })?)?;
        }
        counter(
            &mut encoder,
            "skein_conntrack_early_drops",
            "Never-answered connections conntrack evicted to make room for new ones",
            s.ct_early_drops,
        )?;

        // Per NetworkPolicy: what its rules allowed, what was dropped while it isolated.
        let Some(view) = net.view() else { return Ok(()) };
        let policies = PolicyView::new(&view);
        if policies.is_empty() {
            return Ok(());
        }
        let counts = policies.counts(&net.datapath().flow_stats());
        let kind = ConstCounter::new(0u64).metric_type();
        let mut family = encoder.encode_descriptor(
            "skein_policy_packets",
            "Packets NetworkPolicy judged on this node, by policy, direction and verdict",
            None,
            kind,
        )?;
        for ((policy, direction), c) in counts {
            let direction = match direction {
                PolicyType::Ingress => "ingress",
                PolicyType::Egress => "egress",
            };
            for (verdict, n) in [("allowed", c.allowed), ("denied", c.denied)] {
                let labels =
                    PolicyLabels { policy: policy.to_string(), direction: direction.into(), verdict: verdict.into() };
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
