//! The datapath the agent drives: a separate long-lived `skein-dp` process reached over its
//! control socket (`--datapath-socket`; how Skein is deployed, so that forwarding, ports and
//! conntrack outlive the agent — docs/node-agent.md "Restart and upgrade"), or a switch
//! inside the agent process (without the flag; forwarding then stops with the agent).
//! Both offer the same operations; the node network ([`crate::node`]) does not care which.

use std::sync::Arc;
use std::time::Duration;

use skein_datapath::audit::{AuditBatch, AuditConfig};
use skein_datapath::conntrack::CtTableLimits;
use skein_datapath::control::{Control, ReloadReport};
use skein_datapath::datapath::{Datapath, FlowStats};
use skein_datapath::flow::{Flow, Match};
use skein_datapath::flowtext::FlowFile;
use skein_datapath::io::{PortSpec, Switch};
use skein_datapath::service::{Client, Hello};

/// How long a request to the datapath process may take (an install of a large view
/// included) before the agent gives up on it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// The datapath's figures the agent's `/metrics` shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatapathFigures {
    /// Packets processed.
    pub packets: u64,
    /// Answered by the microflow cache.
    pub microflow_hits: u64,
    /// Answered by the megaflow cache.
    pub megaflow_hits: u64,
    /// Ran the flow tables.
    pub upcalls: u64,
    /// Megaflows cached.
    pub megaflows: usize,
    /// Connections tracked.
    pub connections: usize,
    /// Never-answered connections conntrack evicted to make room.
    pub ct_early_drops: u64,
    /// Packets dropped, by reason name (`tunnel_unknown_source`, `ct_zone_full`, ...): by
    /// name, so that a datapath process of another version with other reasons still shows
    /// them all.
    pub drops: Vec<(String, u64)>,
    /// Frames dropped at the ports, by port number: (interface, reason, count), the
    /// reasons `rx_ring_full` (the receive ring full), `rx_other` (too big for the ring,
    /// invalid Geneve) and `tx` (the send failed).
    pub port_drops: Vec<(u32, String, &'static str, u64)>,
    /// Frames the flows sent to a port the switch does not have.
    pub unknown_port_drops: u64,
    /// Forwarding batches over 1 ms and over 10 ms.
    pub slow_batches: [u64; 2],
}

impl DatapathFigures {
    /// Reads the `name=value` lines of the datapath's `stats`.
    pub fn parse(stats: &str) -> DatapathFigures {
        let mut f = DatapathFigures::default();
        // port number -> (name, rx_dropped, rx_ring_full, tx_dropped)
        let mut ports: std::collections::BTreeMap<u32, (String, u64, u64, u64)> = Default::default();
        for (name, value) in stats.split_ascii_whitespace().filter_map(|kv| kv.split_once('=')) {
            let n = value.parse::<u64>().ok();
            if let Some((number, field)) = name.strip_prefix("port_").and_then(|r| r.split_once('_'))
                && let Ok(number) = number.parse::<u32>()
            {
                let p = ports.entry(number).or_default();
                match (field, n) {
                    ("name", _) => p.0 = value.to_owned(),
                    ("rx_dropped", Some(n)) => p.1 = n,
                    ("rx_ring_full", Some(n)) => p.2 = n,
                    ("tx_dropped", Some(n)) => p.3 = n,
                    _ => {}
                }
                continue;
            }
            match (name, n) {
                ("output_unknown_port_drops", Some(n)) => f.unknown_port_drops = n,
                ("slow_batches_1ms", Some(n)) => f.slow_batches[0] = n,
                ("slow_batches_10ms", Some(n)) => f.slow_batches[1] = n,
                ("packets", Some(n)) => f.packets = n,
                ("microflow_hits", Some(n)) => f.microflow_hits = n,
                ("megaflow_hits", Some(n)) => f.megaflow_hits = n,
                ("upcalls", Some(n)) => f.upcalls = n,
                ("megaflows", Some(n)) => f.megaflows = usize::try_from(n).unwrap_or(usize::MAX),
                ("connections", Some(n)) => f.connections = usize::try_from(n).unwrap_or(usize::MAX),
                ("ct_early_drops", Some(n)) => f.ct_early_drops = n,
                (name, Some(n)) if name.starts_with("drops_") => f.drops.push((name["drops_".len()..].to_owned(), n)),
                _ => {}
            }
        }
        for (number, (name, rx_dropped, ring_full, tx_dropped)) in ports {
            let reasons =
                [("rx_ring_full", ring_full), ("rx_other", rx_dropped.saturating_sub(ring_full)), ("tx", tx_dropped)];
            for (reason, count) in reasons {
                f.port_drops.push((number, name.clone(), reason, count));
            }
        }
        f
    }
}

/// A datapath in this process or in another.
#[derive(Clone)]
pub enum DatapathHandle {
    /// The switch runs inside the agent.
    InProcess {
        /// The pipeline, caches and conntrack.
        dp: Arc<Datapath>,
        /// The ports and forwarding threads.
        switch: Arc<Switch>,
        /// Installs and dumps.
        control: Arc<Control>,
    },
    /// A `skein-dp` process at this control socket.
    Remote(Client),
}

impl std::fmt::Debug for DatapathHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatapathHandle::InProcess { .. } => f.write_str("DatapathHandle::InProcess"),
            DatapathHandle::Remote(c) => write!(f, "DatapathHandle::Remote({})", c.path().display()),
        }
    }
}

impl DatapathHandle {
    /// Whether the datapath lives in another process (and outlives the agent).
    pub fn is_remote(&self) -> bool {
        matches!(self, DatapathHandle::Remote(_))
    }

    /// Which run of the datapath process answers (`None` in process).
    pub fn hello(&self) -> Result<Option<Hello>, String> {
        match self {
            DatapathHandle::InProcess { .. } => Ok(None),
            DatapathHandle::Remote(c) => c.hello().map(Some).map_err(|e| e.to_string()),
        }
    }

    /// Opens a port; a remote datapath that has the same port already keeps it (a
    /// restarted agent adds again what it had).
    pub fn add_port(&self, spec: &PortSpec) -> Result<(), String> {
        match self {
            DatapathHandle::InProcess { switch, .. } => switch.add_port(spec).map_err(|e| e.to_string()),
            DatapathHandle::Remote(c) => c.add_port(spec).map(|_| ()).map_err(|e| e.to_string()),
        }
    }

    /// Removes a port; whether it existed (false also when the datapath cannot be asked:
    /// then it is logged).
    pub fn remove_port(&self, number: u32) -> bool {
        match self {
            DatapathHandle::InProcess { switch, .. } => switch.remove_port(number),
            DatapathHandle::Remote(c) => c.remove_port(number).unwrap_or_else(|e| {
                tracing::warn!(port = number, error = %e, "the datapath did not remove the port");
                false
            }),
        }
    }

    /// The numbers of the ports the datapath has.
    pub fn ports(&self) -> Result<Vec<PortSpec>, String> {
        match self {
            // Nothing outlives an in-process switch: what it has, this agent added.
            DatapathHandle::InProcess { .. } => Ok(Vec::new()),
            DatapathHandle::Remote(c) => c.ports().map_err(|e| e.to_string()),
        }
    }

    /// Replaces what is installed with `file`, in one step.
    pub fn install(&self, file: &FlowFile) -> Result<ReloadReport, String> {
        match self {
            DatapathHandle::InProcess { control, switch, .. } => {
                let r = control.install(file).map_err(|e| e.to_string())?;
                switch.wake();
                Ok(r)
            }
            DatapathHandle::Remote(c) => c.install(file).map_err(|e| e.to_string()),
        }
    }

    /// Replaces what is installed with a flow file's text.
    pub fn reload(&self, text: &str) -> Result<ReloadReport, String> {
        match self {
            DatapathHandle::InProcess { control, switch, .. } => {
                let r = control.reload(text).map_err(|e| e.to_string())?;
                switch.wake();
                Ok(r)
            }
            DatapathHandle::Remote(c) => c
                .request(&format!("reload\n{text}"))
                .map_err(|e| e.to_string())
                .and_then(|body| ReloadReport::parse(&body)),
        }
    }

    /// Adds and removes some flows, in one step.
    pub fn update_flows(&self, add: &[Flow], remove: &[(u8, u16, Match)]) -> Result<ReloadReport, String> {
        match self {
            DatapathHandle::InProcess { control, switch, .. } => {
                let r = control.update_flows(add, remove).map_err(|e| e.to_string())?;
                switch.wake();
                Ok(r)
            }
            DatapathHandle::Remote(c) => c.update_flows(add, remove).map_err(|e| e.to_string()),
        }
    }

    /// What is installed.
    pub fn installed(&self) -> Result<FlowFile, String> {
        match self {
            DatapathHandle::InProcess { control, .. } => Ok(control.installed()),
            DatapathHandle::Remote(c) => c.installed().map_err(|e| e.to_string()),
        }
    }

    /// A read-only control request (`dump-flows`, `dump-cache`, `dump-conntrack`, `stats`,
    /// `trace ...`): the answer's body.
    pub fn request(&self, text: &str) -> Result<String, String> {
        match self {
            DatapathHandle::InProcess { control, .. } => control.handle(text).map_err(|e| e.to_string()),
            DatapathHandle::Remote(c) => c.request(text).map_err(|e| e.to_string()),
        }
    }

    /// Every flow with its counters (empty, and logged, when the datapath cannot be asked).
    pub fn flow_stats(&self) -> Vec<FlowStats> {
        match self {
            DatapathHandle::InProcess { dp, .. } => dp.flow_stats(),
            DatapathHandle::Remote(c) => c.flow_stats().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read the datapath's flow counters");
                Vec::new()
            }),
        }
    }

    /// Sets the rate of the `log` actions' audit records.
    pub fn set_audit(&self, config: AuditConfig) -> Result<(), String> {
        match self {
            DatapathHandle::InProcess { dp, .. } => {
                dp.set_audit(config);
                Ok(())
            }
            DatapathHandle::Remote(c) => c.set_audit(config).map_err(|e| e.to_string()),
        }
    }

    /// Sets conntrack's table-wide limits (the connections it holds stay).
    pub fn set_conntrack(&self, limits: CtTableLimits) -> Result<(), String> {
        match self {
            DatapathHandle::InProcess { dp, .. } => {
                dp.set_conntrack_limits(limits);
                Ok(())
            }
            DatapathHandle::Remote(c) => c.set_conntrack(&limits).map_err(|e| e.to_string()),
        }
    }

    /// The audit records since the last call.
    pub fn take_audit(&self) -> Result<AuditBatch, String> {
        match self {
            DatapathHandle::InProcess { dp, .. } => Ok(dp.take_audit()),
            DatapathHandle::Remote(c) => c.take_audit().map_err(|e| e.to_string()),
        }
    }

    /// The datapath's figures (`None` when the datapath process cannot be asked).
    pub fn figures(&self) -> Option<DatapathFigures> {
        match self {
            // The same text either way: one parser, the same figures.
            DatapathHandle::InProcess { control, .. } => Some(DatapathFigures::parse(&control.stats())),
            DatapathHandle::Remote(c) => c.request("stats").ok().map(|s| DatapathFigures::parse(&s)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_come_from_the_stats_lines() {
        let stats = "packets=10\nmicroflow_hits=6\nmegaflow_hits=3\nupcalls=1\nmicroflow_hit_ratio=0.6000\n\
                     megaflows=2\nconnections=4\nct_early_drops=5\ndrops_table_miss=7\n\
                     drops_tunnel_unknown_source=1\nport_1_rx=5 port_1_name=eth0\n\
                     port_100_rx=9 port_100_rx_dropped=5 port_100_rx_ring_full=4 port_100_tx=2 port_100_tx_dropped=1 \
                     port_100_name=sk12\noutput_unknown_port_drops=3\nslow_batches_1ms=6 slow_batches_10ms=2\n";
        assert_eq!(
            DatapathFigures::parse(stats),
            DatapathFigures {
                packets: 10,
                microflow_hits: 6,
                megaflow_hits: 3,
                upcalls: 1,
                megaflows: 2,
                connections: 4,
                ct_early_drops: 5,
                drops: vec![("table_miss".into(), 7), ("tunnel_unknown_source".into(), 1)],
                port_drops: vec![
                    (1, "eth0".into(), "rx_ring_full", 0),
                    (1, "eth0".into(), "rx_other", 0),
                    (1, "eth0".into(), "tx", 0),
                    (100, "sk12".into(), "rx_ring_full", 4),
                    (100, "sk12".into(), "rx_other", 1),
                    (100, "sk12".into(), "tx", 1),
                ],
                unknown_port_drops: 3,
                slow_batches: [6, 2],
            }
        );
    }
}
