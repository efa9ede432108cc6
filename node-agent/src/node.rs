//! The node's network as the agent runs it: the datapath's ports, the bindings of logical
//! ports to datapath ports, and the installation of each chassis view. The datapath itself
//! is usually another process ([`crate::datapath`]), which keeps forwarding while the agent
//! restarts.
//!
//! Every install translates the view with the current bindings ([`crate::translate`])
//! and hands the result to the datapath's install (`Control::install`), which changes only
//! what differs in one atomic step: a packet sees the old version or the new one, never
//! half of each, and flows that did not change keep their counters and cached decisions.
//! Binding or unbinding a pod (the CNI ADD and DEL paths) changes only the pod ports' own
//! flows ([`pod_port_flows`]): those are computed alone and their difference is installed
//! with `Control::update_flows`, so an ADD costs the same with 10 pods or 500.
//!
//! What must survive an agent restart is kept in the state directory: one record per
//! bound pod port (`ports/<host interface>.json`: pod, container, port number), written
//! before the pod's flows are installed, and the last installed flow file (`flows.txt`),
//! written by a thread after each install (a burst of installs costs one write), with the
//! view it was translated from (`view.json`). A restarted agent adds the ports again (a
//! datapath process that has them keeps them), leaves the flows of a datapath that kept
//! forwarding alone until a whole view is installed — the saved view (so it serves CNI ADDs
//! and answers STATUS "ready" before the master has answered), then the master's snapshot,
//! each applied as a difference — and gives a new, empty datapath the saved flows at once.
//! A datapath process that restarts under a running agent is given everything again
//! ([`NodeNetwork::resync_datapath`]).
//!
//! A port record whose veth or sandbox network namespace is gone — the CNI plugin was
//! killed, a runtime skipped DEL — is reclaimed: at start, periodically
//! ([`NodeNetwork::reclaim_stale`]), and when an ADD for the same pod arrives. The veth's
//! interface index and the namespace's device and inode are recorded when the port is
//! bound, so a veth or namespace made later under the same name is not taken for it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use skein_datapath::conntrack::CtTableLimits;
use skein_datapath::control::ReloadReport;
use skein_datapath::flowtext::format_flow_file;
use skein_datapath::io::PortSpec;
use skein_netmodel::southbound::{ChassisView, PortKind};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::datapath::DatapathHandle;
use crate::translate::{
    ConntrackLimits, LbIdKey, LocalBindings, SkipReason, Tunnel, Unsupported, Uplink, pod_port_delta, pod_port_flows,
    translate_partial,
};

/// Datapath port number of the uplink (the node's NIC).
pub const UPLINK_PORT: u32 = 1;
/// Datapath port number of the management port's datapath end.
pub const MANAGEMENT_PORT: u32 = 2;
/// Datapath port number of the Geneve UDP endpoint. It is also the tunnel port: flows
/// output to it to encapsulate (the tunnel port sends through the endpoint of the same
/// number), and decapsulated packets arrive with it as `in_port`.
pub const GENEVE_PORT: u32 = 3;
/// The first datapath port number given to pods.
pub const FIRST_POD_PORT: u32 = 100;

/// A pod port the agent bound, as recorded in the state directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRecord {
    /// Logical port name (`<namespace>_<pod>`).
    pub logical_port: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Pod UID, when the runtime sent it.
    #[serde(default)]
    pub uid: Option<String>,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// The veth's host end (the datapath port's interface).
    pub host_ifname: String,
    /// Datapath port number.
    pub port: u32,
    /// The host end's interface index when the ADD arrived (a veth made later under the
    /// same name is another one). Absent in records of older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifindex: Option<u32>,
    /// The sandbox's network namespace (`CNI_NETNS`), when the runtime gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// Device and inode of that namespace when the ADD arrived, when the agent could see
    /// it (its identity while it lives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_id: Option<NetnsId>,
}

/// A network namespace's identity: the device and inode its path resolves to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsId {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

impl NetnsId {
    /// The identity of the namespace at `path`, if the agent can see it.
    pub fn of(path: &str) -> Option<NetnsId> {
        fs::metadata(path).ok().map(|m| NetnsId { dev: m.dev(), ino: m.ino() })
    }
}

/// The interface index of `name` in the agent's namespace.
pub fn interface_index(name: &str) -> Option<u32> {
    skein_datapath::io::sys::if_index(name).ok()
}

/// Why a port record no longer describes a live attachment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StaleReason {
    /// The sandbox's network namespace is gone (or its path names another one now).
    NetnsGone,
    /// The veth is gone (or its name belongs to a newer veth).
    VethGone,
    /// A newer ADD of the same pod replaced it.
    Superseded,
}

impl StaleReason {
    /// Every reason, in the order of [`NodeNetwork::stale_reclaimed`].
    pub const ALL: [StaleReason; 3] = [StaleReason::NetnsGone, StaleReason::VethGone, StaleReason::Superseded];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            StaleReason::NetnsGone => "netns_gone",
            StaleReason::VethGone => "veth_gone",
            StaleReason::Superseded => "superseded",
        }
    }

    fn index(self) -> usize {
        match self {
            StaleReason::NetnsGone => 0,
            StaleReason::VethGone => 1,
            StaleReason::Superseded => 2,
        }
    }
}

/// Whether `record` is stale, and why. The veth is judged by its name and the index it
/// had; the namespace by the identity it had, when the agent could see it then (an agent
/// in a container without the runtime's netns directory judges by the veth alone).
pub fn staleness(record: &PortRecord) -> Option<StaleReason> {
    // The namespace first: when a sandbox goes, its veth goes with it, and the sandbox is
    // what the operator knows.
    if let (Some(path), Some(had)) = (&record.netns, record.netns_id) {
        match fs::metadata(path) {
            Ok(m) if (NetnsId { dev: m.dev(), ino: m.ino() }) != had => return Some(StaleReason::NetnsGone),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(StaleReason::NetnsGone),
            Err(_) => {}
        }
    }
    let gone = [rustix::io::Errno::NODEV.raw_os_error(), rustix::io::Errno::NXIO.raw_os_error()];
    match skein_datapath::io::sys::if_index(&record.host_ifname) {
        Ok(index) if record.ifindex.is_some_and(|had| had != index) => Some(StaleReason::VethGone),
        Ok(_) => None,
        Err(e) if e.raw_os_error().is_some_and(|code| gone.contains(&code)) => Some(StaleReason::VethGone),
        // Anything else (out of descriptors?) proves nothing.
        Err(_) => None,
    }
}

/// The logical port name of a pod.
pub fn logical_port_name(namespace: &str, pod: &str) -> String {
    format!("{namespace}_{pod}")
}

/// What is installed now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstallState {
    /// The view version installed last (`None` before the first snapshot).
    pub version: Option<u64>,
    /// Pod logical ports bound here whose flows are installed (in the view, on this
    /// chassis, and bound to a datapath port).
    pub ready_ports: BTreeSet<String>,
    /// Logical flows of the view that could not be translated (or that conflict with
    /// another object's flows and were left out).
    pub untranslated: usize,
    /// Items of the view left out of the translation (a chassis with no usable tunnel
    /// address, a port on it, a duplicated port); everything else is installed.
    pub skipped: usize,
    /// The objects left out of the installed view because they cannot be installed
    /// (a conflict with another object's flows, a skipped view item), each with why: what
    /// the agent reports as Events.
    pub left_out: BTreeSet<LeftOut>,
    /// Flows installed.
    pub flows: usize,
    /// Why the last install failed, if it did.
    pub error: Option<String>,
}

/// An object left out of the installed view, and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LeftOut {
    /// The object.
    pub object: skein_netmodel::southbound::Owner,
    /// Why.
    pub reason: String,
}

/// Why a bind failed.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The datapath could not open the interface.
    #[error("opening {interface} as datapath port {port}: {reason}")]
    Port {
        /// Interface.
        interface: String,
        /// Port number.
        port: u32,
        /// Why (the datapath's words).
        reason: String,
    },
    /// The record could not be written.
    #[error("recording the binding in {path}: {source}")]
    Record {
        /// File.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

struct Inner {
    view: Option<Arc<ChassisView>>,
    /// The pod-port flows installed with `view`, while the datapath holds `view`'s
    /// translation (`None` after a failed install: the next change installs in full).
    pod_flows: Option<Vec<skein_datapath::Flow>>,
    bindings: LocalBindings,
    /// By host interface name.
    records: BTreeMap<String, PortRecord>,
    /// What the last translation left out, as logged (each is logged as a warning once,
    /// when it first appears, not at every install).
    left_out: BTreeSet<String>,
    /// Pod ports of the view left out of the last translation: not ready, though bound.
    skipped_ports: BTreeSet<String>,
}

/// The node's datapath, bindings and installed state.
pub struct NodeNetwork {
    dp: DatapathHandle,
    /// The node's own ports (uplink, management, Geneve), added before the pods'.
    node_ports: Vec<PortSpec>,
    /// The datapath process's boot id when this agent last gave it its ports and flows.
    datapath_boot: Mutex<Option<String>>,
    /// Conntrack's table-wide limits (given to the datapath at start and again to a new
    /// datapath process).
    ct_table: CtTableLimits,
    /// The audit rate the agent set (given again to a new datapath process).
    audit: Mutex<Option<skein_datapath::audit::AuditConfig>>,
    inner: Mutex<Inner>,
    installed: watch::Sender<InstallState>,
    state_dir: PathBuf,
    saver: FlowSaver,
    /// Stale port records reclaimed, by [`StaleReason::index`].
    stale_reclaimed: [AtomicU64; 3],
    /// The view saved by the previous run (`view.json`), until it is installed or replaced.
    saved_view: Mutex<Option<ChassisView>>,
}

impl std::fmt::Debug for NodeNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeNetwork").field("state_dir", &self.state_dir).finish_non_exhaustive()
    }
}

impl NodeNetwork {
    /// Takes over the datapath: gives it conntrack's table-wide limits (`ct_table`; a
    /// datapath process that kept running gets this run's, which may be new ones), adds
    /// the node's ports (`node_ports`; a datapath process that has them keeps them), reads
    /// the port records in `state_dir`, adds the ports whose interfaces still exist
    /// (forgetting the others), and — only if the datapath has no flows, as a new one
    /// has — re-installs the flows of the previous run. A datapath process that kept
    /// forwarding through the agent's restart keeps its flows until a whole view is
    /// installed ([`NodeNetwork::install_saved_view`] or the master's). `conntrack`: the
    /// zone limits installed with the flows.
    pub fn new(
        dp: DatapathHandle,
        node_ports: Vec<PortSpec>,
        state_dir: &Path,
        tunnel: Tunnel,
        management_port: Option<u32>,
        conntrack: ConntrackLimits,
        ct_table: CtTableLimits,
    ) -> Result<Arc<NodeNetwork>, String> {
        let bindings = LocalBindings {
            ports: BTreeMap::new(),
            management_port,
            uplink: None,
            tunnel,
            conntrack,
            lb_id_key: lb_id_key(state_dir),
        };
        let boot = dp.hello()?.map(|h| h.boot_id);
        let saver = FlowSaver::start(dp.clone(), state_dir.join("flows.txt"), state_dir.join("view.json"));
        let net = NodeNetwork {
            dp,
            node_ports,
            ct_table,
            datapath_boot: Mutex::new(boot),
            audit: Mutex::new(None),
            inner: Mutex::new(Inner {
                view: None,
                pod_flows: None,
                bindings,
                records: BTreeMap::new(),
                left_out: BTreeSet::new(),
                skipped_ports: BTreeSet::new(),
            }),
            installed: watch::Sender::new(InstallState::default()),
            state_dir: state_dir.to_path_buf(),
            saver,
            stale_reclaimed: Default::default(),
            saved_view: Mutex::new(None),
        };
        net.dp.set_conntrack(net.ct_table).map_err(|e| format!("setting conntrack's limits: {e}"))?;
        for spec in &net.node_ports {
            net.dp.add_port(spec).map_err(|e| format!("adding the node's port {}: {e}", spec.number()))?;
        }
        net.restore();
        Ok(Arc::new(net))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn ports_dir(&self) -> PathBuf {
        self.state_dir.join("ports")
    }

    fn flows_path(&self) -> PathBuf {
        self.state_dir.join("flows.txt")
    }

    fn restore(&self) {
        let dir = self.ports_dir();
        // No records directory: no pod was ever bound here (the saved flows and view are
        // still the previous run's). An unreadable one: its ports are left alone.
        let (entries, records_known) = match fs::read_dir(&dir) {
            Ok(entries) => (Some(entries), true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, true),
            Err(e) => {
                warn!(dir = %dir.display(), error = %e, "cannot read the port records; starting without them");
                (None, false)
            }
        };
        let mut inner = self.lock();
        for entry in entries.into_iter().flatten().flatten() {
            let path = entry.path();
            let record: PortRecord = match fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(record) => record,
                Err(e) => {
                    warn!(file = %path.display(), error = %e, "unreadable port record removed");
                    let _ = fs::remove_file(&path);
                    continue;
                }
            };
            if let Some(why) = staleness(&record) {
                info!(pod = %record.logical_port, interface = %record.host_ifname, reason = why.label(), "stale port record reclaimed");
                self.count_stale(why);
                let _ = fs::remove_file(&path);
                continue;
            }
            let spec = PortSpec::Interface { number: record.port, name: record.host_ifname.clone() };
            match self.dp.add_port(&spec) {
                Ok(()) => {
                    info!(pod = %record.logical_port, interface = %record.host_ifname, port = record.port, "pod port re-opened");
                    inner.bindings.ports.insert(record.logical_port.clone(), record.port);
                    inner.records.insert(record.host_ifname.clone(), record);
                }
                Err(e) => {
                    info!(pod = %record.logical_port, interface = %record.host_ifname, error = %e, "pod port gone; record removed");
                    self.count_stale(StaleReason::VethGone);
                    let _ = fs::remove_file(&path);
                }
            }
        }
        // A port the datapath has that no record names was being bound when the previous
        // run stopped (the record is written after the port is opened, and before any flow
        // names it): nothing forwards to it.
        let recorded: BTreeSet<u32> = inner.records.values().map(|r| r.port).collect();
        drop(inner);
        match self.dp.ports() {
            Ok(_) if !records_known => {}
            Ok(ports) => {
                for spec in ports {
                    let n = spec.number();
                    if n >= FIRST_POD_PORT && !recorded.contains(&n) {
                        info!(port = n, "datapath port without a record removed");
                        self.dp.remove_port(n);
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot list the datapath's ports"),
        }
        match fs::read(self.state_dir.join("view.json")) {
            Ok(bytes) => match serde_json::from_slice::<ChassisView>(&bytes) {
                Ok(view) => {
                    info!(version = view.version, "the previous run's view is kept until it can be installed");
                    *self.saved_view.lock().unwrap_or_else(|p| p.into_inner()) = Some(view);
                }
                Err(e) => warn!(error = %e, "the previous run's view does not parse; waiting for the master"),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(error = %e, "cannot read the previous run's view"),
        }
        // Wait before clear: flows the datapath kept are left alone until a whole view
        // replaces them; only an empty datapath gets the previous run's flows.
        match self.dp.installed() {
            Ok(kept) if !kept.flows.is_empty() => {
                info!(
                    flows = kept.flows.len(),
                    "the datapath kept forwarding; its flows stay until a whole view is installed"
                );
                return;
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot read the datapath's flows"),
        }
        self.restore_saved_flows();
    }

    fn restore_saved_flows(&self) {
        match fs::read_to_string(self.flows_path()) {
            Ok(text) => match self.dp.reload(&text) {
                Ok(r) => {
                    info!(flows = r.flows_added, "flows of the previous run re-installed until the master answers");
                }
                Err(e) => warn!(error = %e, "the previous run's flows do not load; waiting for the master"),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(error = %e, "cannot read the previous run's flows"),
        }
    }

    /// The datapath (installs, dumps, figures).
    pub fn datapath(&self) -> &DatapathHandle {
        &self.dp
    }

    /// Called when the datapath process may have restarted (its watch connection ended
    /// and a datapath answers again): if it is another run than the one this agent set up,
    /// it has no ports and no flows, so the node's ports, the pods' ports and the
    /// installed view (or, before one, the saved flows) are given to it again. Returns
    /// whether it was another run.
    pub fn resync_datapath(&self) -> Result<bool, String> {
        let Some(hello) = self.dp.hello()? else { return Ok(false) };
        let mut boot = self.datapath_boot.lock().unwrap_or_else(|p| p.into_inner());
        if boot.as_deref() == Some(hello.boot_id.as_str()) {
            return Ok(false);
        }
        warn!(boot_id = %hello.boot_id, pid = hello.pid, "a new datapath process: giving it the node's ports, the pods' ports and the flows");
        // The audit rate first: it is the one step that cannot half-happen, and the log
        // actions of the flows installed below record from their first packet.
        if let Some(config) = *self.audit.lock().unwrap_or_else(|p| p.into_inner()) {
            self.dp.set_audit(config).map_err(|e| format!("setting the audit rate: {e}"))?;
        }
        // Conntrack's limits before any port forwards into it.
        self.dp.set_conntrack(self.ct_table).map_err(|e| format!("setting conntrack's limits: {e}"))?;
        for spec in &self.node_ports {
            self.dp.add_port(spec).map_err(|e| format!("adding the node's port {}: {e}", spec.number()))?;
        }
        let mut inner = self.lock();
        for record in inner.records.values() {
            let spec = PortSpec::Interface { number: record.port, name: record.host_ifname.clone() };
            if let Err(e) = self.dp.add_port(&spec) {
                warn!(pod = %record.logical_port, interface = %record.host_ifname, error = %e, "pod port not re-opened; the stale-port check reclaims it if its veth is gone");
            }
        }
        if inner.view.is_some() {
            inner.pod_flows = None;
            self.reinstall(&mut inner)?;
        } else {
            drop(inner);
            self.restore_saved_flows();
        }
        *boot = Some(hello.boot_id);
        Ok(true)
    }

    /// Sets the datapath's audit rate (and gives it again to a datapath process that
    /// restarts).
    pub fn set_audit(&self, config: skein_datapath::audit::AuditConfig) -> Result<(), String> {
        *self.audit.lock().unwrap_or_else(|p| p.into_inner()) = Some(config);
        self.dp.set_audit(config)
    }

    /// Follows what is installed.
    pub fn installed(&self) -> watch::Receiver<InstallState> {
        self.installed.subscribe()
    }

    /// The view installed last.
    pub fn view(&self) -> Option<ChassisView> {
        self.lock().view.as_deref().cloned()
    }

    /// Installs the view the previous run saved, if no view is installed yet and it is
    /// `chassis`'s: a restarted agent then serves CNI ADDs for the pods it knew, and
    /// STATUS answers ready, before the master has answered. Returns its version.
    pub fn install_saved_view(&self, chassis: &str) -> Option<u64> {
        let view = self.saved_view.lock().unwrap_or_else(|p| p.into_inner()).take()?;
        if view.chassis != chassis {
            warn!(saved = %view.chassis, chassis, "the saved view is another chassis's; ignored");
            return None;
        }
        let mut inner = self.lock();
        if inner.view.is_some() {
            return None;
        }
        let version = view.version;
        inner.view = Some(Arc::new(view));
        match self.reinstall(&mut inner) {
            Ok(()) => {
                info!(version, "the previous run's view installed until the master answers");
                Some(version)
            }
            Err(e) => {
                warn!(version, error = %e, "the previous run's view does not install; waiting for the master");
                inner.view = None;
                None
            }
        }
    }

    /// Stale port records reclaimed since start, by reason.
    pub fn stale_reclaimed(&self) -> [(StaleReason, u64); 3] {
        StaleReason::ALL.map(|r| (r, self.stale_reclaimed[r.index()].load(Ordering::Relaxed)))
    }

    fn count_stale(&self, why: StaleReason) {
        self.stale_reclaimed[why.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Reclaims the port records (of `pod`'s logical port, or all) whose veth or sandbox
    /// namespace is gone: unbinds them and counts them. Returns what was reclaimed.
    pub fn reclaim_stale(&self, pod: Option<&str>) -> Vec<(PortRecord, StaleReason)> {
        // Judged without the lock (a syscall or two per record), then removed under it only
        // if the record is still the one judged: an ADD may have rebound the name meanwhile.
        let candidates: Vec<PortRecord> =
            self.lock().records.values().filter(|r| pod.is_none_or(|p| r.logical_port == p)).cloned().collect();
        let stale: Vec<(PortRecord, StaleReason)> =
            candidates.into_iter().filter_map(|r| staleness(&r).map(|why| (r, why))).collect();
        if stale.is_empty() {
            return stale;
        }
        let mut inner = self.lock();
        let mut reclaimed = Vec::new();
        for (record, why) in stale {
            if inner.records.get(&record.host_ifname) != Some(&record) {
                continue;
            }
            self.forget(&mut inner, &record.host_ifname);
            self.count_stale(why);
            warn!(
                pod = %record.logical_port,
                interface = %record.host_ifname,
                container = %record.container_id,
                reason = why.label(),
                "stale pod port reclaimed"
            );
            reclaimed.push((record, why));
        }
        if !reclaimed.is_empty()
            && let Err(e) = self.update_ports(&mut inner)
        {
            warn!(error = %e, "install after reclaiming stale ports failed");
        }
        reclaimed
    }

    /// The pod port records.
    pub fn records(&self) -> Vec<PortRecord> {
        self.lock().records.values().cloned().collect()
    }

    /// The record of a host interface.
    pub fn record(&self, host_ifname: &str) -> Option<PortRecord> {
        self.lock().records.get(host_ifname).cloned()
    }

    /// Binds (or rebinds) the uplink and installs again.
    pub fn set_uplink(&self, uplink: Option<Uplink>) -> Result<(), String> {
        let mut inner = self.lock();
        if inner.bindings.uplink == uplink {
            return Ok(());
        }
        inner.bindings.uplink = uplink;
        self.reinstall(&mut inner)
    }

    /// Installs `view`.
    pub fn install_view(&self, view: &ChassisView) -> Result<(), String> {
        let mut inner = self.lock();
        // The master's view supersedes the previous run's.
        self.saved_view.lock().unwrap_or_else(|p| p.into_inner()).take();
        // The view installed already (the master's snapshot after a restart found the
        // saved view current): its translation is what the datapath holds, so translating
        // and installing it again would change nothing — and cost a node that just
        // restarted its agent tens of milliseconds of CPU beside forwarding.
        let current =
            inner.view.as_deref() == Some(view) && inner.pod_flows.is_some() && self.installed.borrow().error.is_none();
        if current {
            debug!(version = view.version, "the view is installed already");
            return Ok(());
        }
        inner.view = Some(Arc::new(view.clone()));
        self.reinstall(&mut inner)
    }

    /// Binds a pod's host interface as a datapath port (replacing an older binding of the
    /// same pod), records it, and installs again. The pod's flows are installed when
    /// [`InstallState::ready_ports`] has its logical port.
    pub fn bind_pod(&self, mut record: PortRecord) -> Result<PortRecord, BindError> {
        let mut inner = self.lock();
        if let Some(existing) = inner.records.get(&record.host_ifname) {
            if existing.ifindex == record.ifindex || existing.ifindex.is_none() || record.ifindex.is_none() {
                // The same attachment again (a retried ADD): keep it.
                return Ok(existing.clone());
            }
            // The name is on a newer veth: the recorded port reads a dead interface.
            let host = record.host_ifname.clone();
            info!(pod = %record.logical_port, interface = %host, "the recorded veth was replaced; rebinding");
            self.forget(&mut inner, &host);
            self.count_stale(StaleReason::VethGone);
        }
        let stale: Vec<String> = inner
            .records
            .values()
            .filter(|r| r.logical_port == record.logical_port)
            .map(|r| r.host_ifname.clone())
            .collect();
        for host in stale {
            info!(pod = %record.logical_port, interface = %host, "replacing the pod's previous interface");
            self.forget(&mut inner, &host);
            self.count_stale(StaleReason::Superseded);
        }
        let used: BTreeSet<u32> = inner.records.values().map(|r| r.port).collect();
        let port = (FIRST_POD_PORT..).find(|p| !used.contains(p)).unwrap_or(FIRST_POD_PORT);
        record.port = port;
        // A datapath port speaks no IPv6 of its own (no router solicitations, no DAD).
        let _ = fs::write(format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", record.host_ifname), "1");
        let spec = PortSpec::Interface { number: port, name: record.host_ifname.clone() };
        let opening = std::time::Instant::now();
        self.dp.add_port(&spec).map_err(|reason| BindError::Port {
            interface: record.host_ifname.clone(),
            port,
            reason,
        })?;
        debug!(port, ms = opening.elapsed().as_secs_f64() * 1e3, "datapath port opened");
        let path = self.ports_dir().join(format!("{}.json", record.host_ifname));
        if let Err(source) =
            write_atomically(&path, &serde_json::to_vec_pretty(&record).unwrap_or_default(), Durability::Restart)
        {
            self.dp.remove_port(port);
            return Err(BindError::Record { path, source });
        }
        inner.bindings.ports.insert(record.logical_port.clone(), port);
        inner.records.insert(record.host_ifname.clone(), record.clone());
        info!(pod = %record.logical_port, interface = %record.host_ifname, port, "pod port bound");
        if let Err(e) = self.update_ports(&mut inner) {
            warn!(pod = %record.logical_port, error = %e, "install after binding failed");
        }
        Ok(record)
    }

    /// Unbinds the pod port on `host_ifname`; returns its record if it was bound.
    pub fn unbind(&self, host_ifname: &str) -> Option<PortRecord> {
        let mut inner = self.lock();
        let record = self.forget(&mut inner, host_ifname)?;
        if let Err(e) = self.update_ports(&mut inner) {
            warn!(pod = %record.logical_port, error = %e, "install after unbinding failed");
        }
        Some(record)
    }

    fn forget(&self, inner: &mut Inner, host_ifname: &str) -> Option<PortRecord> {
        let record = inner.records.remove(host_ifname)?;
        if inner.bindings.ports.get(&record.logical_port) == Some(&record.port) {
            inner.bindings.ports.remove(&record.logical_port);
        }
        self.dp.remove_port(record.port);
        let _ = fs::remove_file(self.ports_dir().join(format!("{host_ifname}.json")));
        info!(pod = %record.logical_port, interface = %host_ifname, port = record.port, "pod port unbound");
        Some(record)
    }

    /// Writes `flows.txt` now if an install has not been saved yet; waits at most
    /// `timeout`. Returns whether the file is up to date. For a clean shutdown.
    pub fn save_flows(&self, timeout: Duration) -> bool {
        self.saver.flush(timeout)
    }

    /// Translates and installs the whole view.
    fn reinstall(&self, inner: &mut Inner) -> Result<(), String> {
        let Some(view) = inner.view.clone() else {
            return Ok(());
        };
        let started = std::time::Instant::now();
        inner.pod_flows = None;
        let translation =
            translate_partial(&view, &inner.bindings).map_err(|e| format!("translating version {}: {e}", view.version));
        let result = translation.and_then(|t| {
            let mut left_out = BTreeSet::new();
            let mut objects = BTreeSet::new();
            for u in &t.untranslated {
                let key = format!("{}: {}", u.flow.owner, u.reason);
                if matches!(u.reason, Unsupported::Conflict { .. }) {
                    if !inner.left_out.contains(&key) {
                        warn!(version = view.version, object = %u.flow.owner, reason = %u.reason, "logical flow left out");
                    }
                    objects.insert(LeftOut { object: u.flow.owner.clone(), reason: u.reason.to_string() });
                } else {
                    debug!(flow = ?u, "logical flow not translated");
                }
                left_out.insert(key);
            }
            let mut skipped_ports = BTreeSet::new();
            for s in &t.skipped {
                let key = format!("{}: {}", s.object, s.reason);
                if !inner.left_out.contains(&key) {
                    warn!(version = view.version, object = %s.object, reason = %s.reason, "view item left out");
                }
                left_out.insert(key);
                objects.insert(LeftOut { object: s.object.clone(), reason: s.reason.to_string() });
                if let SkipReason::DuplicatePort { port, .. } | SkipReason::UnknownChassis { port, .. } = &s.reason {
                    skipped_ports.insert(port.clone());
                }
            }
            let report = self.dp.install(&t.file).map_err(|e| format!("installing version {}: {e}", view.version))?;
            Ok((report, (t.untranslated.len(), t.skipped.len(), objects), t.pod_port_flows, left_out, skipped_ports))
        });
        match result {
            Ok((report, counts, pod_flows, left_out, skipped_ports)) => {
                inner.pod_flows = Some(pod_flows);
                inner.left_out = left_out;
                inner.skipped_ports = skipped_ports;
                self.saver.set_view(view.clone());
                self.installed_now(&view, &inner.bindings, &inner.skipped_ports, report, Some(counts), started);
                Ok(())
            }
            Err(e) => {
                self.installed.send_modify(|s| s.error = Some(e.clone()));
                Err(e)
            }
        }
    }

    /// Installs what a changed pod binding changes: the difference between the pod-port
    /// flows installed and those of the bindings now. Falls back to [`Self::reinstall`]
    /// when the datapath does not hold the view's translation.
    fn update_ports(&self, inner: &mut Inner) -> Result<(), String> {
        let Some(view) = inner.view.clone() else {
            return Ok(());
        };
        let Some(old) = inner.pod_flows.take() else {
            return self.reinstall(inner);
        };
        let started = std::time::Instant::now();
        let new = pod_port_flows(&view, &inner.bindings);
        let (add, remove) = pod_port_delta(&old, &new);
        match self.dp.update_flows(&add, &remove) {
            Ok(report) => {
                inner.pod_flows = Some(new);
                self.installed_now(&view, &inner.bindings, &inner.skipped_ports, report, None, started);
                Ok(())
            }
            Err(e) => {
                warn!(version = view.version, error = %e, "pod port flows refused; installing the whole view");
                self.reinstall(inner)
            }
        }
    }

    /// Publishes a successful install of `view` (`counts`: the new counts of logical
    /// flows untranslated and of view items skipped and the objects left out, or `None`
    /// to keep the last ones when only pod ports changed).
    fn installed_now(
        &self,
        view: &ChassisView,
        bindings: &LocalBindings,
        skipped_ports: &BTreeSet<String>,
        report: ReloadReport,
        counts: Option<(usize, usize, BTreeSet<LeftOut>)>,
        started: std::time::Instant,
    ) {
        self.saver.mark();
        debug!(
            version = view.version,
            checked = report.megaflows_checked,
            invalidated = report.megaflows_invalidated,
            added = report.flows_added,
            removed = report.flows_removed,
            kept = report.flows_kept,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "view installed"
        );
        let mut ready = ready_ports(view, bindings);
        ready.retain(|p| !skipped_ports.contains(p));
        self.installed.send_modify(|s| {
            s.version = Some(view.version);
            s.ready_ports = ready;
            if let Some((untranslated, skipped, left_out)) = counts {
                s.untranslated = untranslated;
                s.skipped = skipped;
                s.left_out = left_out;
            }
            s.flows = report.flows_added + report.flows_kept;
            s.error = None;
        });
    }
}

impl skein_southbound::Installer for NodeNetwork {
    fn install(&self, view: &ChassisView) -> Result<(), String> {
        self.install_view(view)
    }
}

/// Writes the installed flows to `flows.txt` off the install path: an install only marks
/// the file stale, and a thread formats and writes what is installed then, so a burst of
/// installs costs one write and a CNI ADD never waits for the disk.
struct FlowSaver {
    shared: Arc<(Mutex<SaveState>, Condvar)>,
    /// Set when the thread could not be started: each install then writes the files.
    inline: Option<(DatapathHandle, PathBuf, PathBuf)>,
}

#[derive(Default)]
struct SaveState {
    /// Installs so far.
    wanted: u64,
    /// The install count the file on disk reflects.
    saved: u64,
    /// Set when the network is dropped: the thread ends.
    closed: bool,
    /// Set while [`FlowSaver::flush`] waits: write without settling.
    flushing: bool,
    /// The view the installed flows were translated from, when it changed since the
    /// last write.
    view: Option<Arc<ChassisView>>,
}

/// How long the flow-saving thread lets installs accumulate before it writes.
const SAVE_SETTLE: Duration = Duration::from_millis(100);

impl FlowSaver {
    fn start(control: DatapathHandle, path: PathBuf, view_path: PathBuf) -> FlowSaver {
        let shared = Arc::new((Mutex::new(SaveState::default()), Condvar::new()));
        let theirs = shared.clone();
        let (control2, path2, view_path2) = (control.clone(), path.clone(), view_path.clone());
        let spawned = std::thread::Builder::new().name("skein-flow-save".into()).spawn(move || {
            if let Err(e) = skein_datapath::io::sys::idle_priority() {
                debug!(error = %e, "the flow-saving thread keeps its priority");
            }
            let (lock, cv) = &*theirs;
            let mut state = lock.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                while state.wanted == state.saved && !state.closed {
                    state = cv.wait(state).unwrap_or_else(|p| p.into_inner());
                }
                if state.closed {
                    return;
                }
                // Let a burst of installs (pods starting together) settle into one write,
                // unless a shutdown is waiting for it.
                let settled = std::time::Instant::now() + SAVE_SETTLE;
                while !state.flushing && !state.closed {
                    let left = settled.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    state = cv.wait_timeout(state, left).unwrap_or_else(|p| p.into_inner()).0;
                }
                if state.closed {
                    return;
                }
                let target = state.wanted;
                let view = state.view.take();
                drop(state);
                save(&control, &path);
                if let Some(view) = view {
                    save_view(&view, &view_path);
                }
                state = lock.lock().unwrap_or_else(|p| p.into_inner());
                state.saved = target;
                cv.notify_all();
            }
        });
        let inline = match spawned {
            Ok(_) => None,
            Err(e) => {
                warn!(error = %e, "cannot start the flow-saving thread; each install writes flows.txt itself");
                Some((control2, path2, view_path2))
            }
        };
        FlowSaver { shared, inline }
    }

    fn lock(&self) -> MutexGuard<'_, SaveState> {
        self.shared.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new view was installed (before [`FlowSaver::mark`]): it is written with the flows.
    fn set_view(&self, view: Arc<ChassisView>) {
        if let Some((_, _, view_path)) = &self.inline {
            save_view(&view, view_path);
            return;
        }
        self.lock().view = Some(view);
    }

    /// Something new was installed.
    fn mark(&self) {
        if let Some((control, path, _)) = &self.inline {
            save(control, path);
            return;
        }
        self.lock().wanted += 1;
        self.shared.1.notify_all();
    }

    /// Waits until the file reflects every install marked so far, at most `timeout`.
    fn flush(&self, timeout: Duration) -> bool {
        let mut state = self.lock();
        state.flushing = true;
        self.shared.1.notify_all();
        let target = state.wanted;
        let (state, _) = self
            .shared
            .1
            .wait_timeout_while(state, timeout, |s| s.saved < target && !s.closed)
            .unwrap_or_else(|p| p.into_inner());
        let mut state = state;
        state.flushing = false;
        state.saved >= target
    }
}

/// Writes what `control` has installed to `path`, by table and priority (pod-port
/// updates append their flows to the installed file).
fn save(control: &DatapathHandle, path: &Path) {
    let mut file = match control.installed() {
        Ok(file) => file,
        Err(e) => {
            warn!(error = %e, "cannot read the installed flows to save them for a restart");
            return;
        }
    };
    file.flows.sort_by_key(|f| (f.table, std::cmp::Reverse(f.priority)));
    let text = format_flow_file(&file);
    if let Err(e) = write_atomically(path, text.as_bytes(), Durability::Restart) {
        warn!(file = %path.display(), error = %e, "cannot save the installed flows for a restart");
    }
}

/// Writes the view the installed flows come from, for the next run's start.
fn save_view(view: &ChassisView, path: &Path) {
    let result = serde_json::to_vec(view)
        .map_err(std::io::Error::other)
        .and_then(|bytes| write_atomically(path, &bytes, Durability::Restart));
    if let Err(e) = result {
        warn!(file = %path.display(), error = %e, "cannot save the installed view for a restart");
    }
}

impl Drop for FlowSaver {
    fn drop(&mut self) {
        self.lock().closed = true;
        self.shared.1.notify_all();
    }
}

/// The bound pod ports of `view` that reside on its chassis.
fn ready_ports(view: &ChassisView, bindings: &LocalBindings) -> BTreeSet<String> {
    view.items
        .ports
        .iter()
        .filter(|p| {
            matches!(p.kind, PortKind::Pod { .. })
                && p.chassis.as_deref() == Some(view.chassis.as_str())
                && bindings.ports.contains_key(&p.name)
        })
        .map(|p| p.name.clone())
        .collect()
}

/// The key of this node's load-balancer ids in `<state>/lb-id-key` (16 random bytes,
/// created on first start, kept so that ids and the flows saved with them survive a
/// restart). If it cannot be read or written, a fresh key for this run: ids then change
/// at the next restart, which only starts the affinity tables afresh.
fn lb_id_key(state_dir: &Path) -> LbIdKey {
    let path = state_dir.join("lb-id-key");
    if let Ok(bytes) = fs::read(&path)
        && let Ok(key) = <[u8; 16]>::try_from(bytes.as_slice())
    {
        return LbIdKey(key);
    }
    let mut key = [0u8; 16];
    if let Err(e) = fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut key)) {
        // Not secret then, but still collision-free (load_balancer_ids).
        warn!(error = %e, "reading /dev/urandom for the load-balancer id key failed; ids are predictable");
        let pid = std::process::id().to_be_bytes();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        key[..4].copy_from_slice(&pid);
        key[4..].copy_from_slice(&now.as_nanos().to_be_bytes()[4..]);
    }
    if let Err(e) = write_atomically(&path, &key, Durability::Restart) {
        warn!(path = %path.display(), error = %e, "the load-balancer id key is not kept; ids change at the next restart");
    }
    LbIdKey(key)
}

/// How far a written file must get before [`write_atomically`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// On disk (fsync): it must survive a reboot (the chassis id).
    Reboot,
    /// In the page cache: it must survive the agent's restart only. A port record
    /// describes an interface that a reboot removes anyway, and the restore path drops a
    /// record it cannot read; an fsync would cost a CNI ADD milliseconds for nothing.
    Restart,
}

/// Writes `bytes` to `path` through a temporary file and a rename (readers see the old
/// content or the new, never part), creating the directory.
pub fn write_atomically(path: &Path, bytes: &[u8], durability: Durability) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    if durability == Durability::Reboot {
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A datapath process answering at `path` (its service in this process, without
    /// ports); its control shows what it was given.
    fn datapath_process(path: &Path) -> Arc<skein_datapath::control::Control> {
        use skein_datapath::control::Control;
        use skein_datapath::io::{Switch, SwitchConfig, SwitchStats, now_ns};
        use skein_datapath::service::Service;
        use skein_datapath::{Datapath, DatapathConfig};
        let dp = Arc::new(Datapath::new(DatapathConfig::default()));
        let switch =
            Arc::new(Switch::start(dp.clone(), &[], SwitchConfig { workers: 1, ..Default::default() }).unwrap());
        let control = Arc::new(Control::new(dp, Box::new(SwitchStats::default), now_ns));
        let service = Arc::new(Service::new(control.clone(), switch, &[]));
        // A new process binds the path afresh; the old one's listener no longer gets
        // connections, as when it has exited.
        let _ = fs::remove_file(path);
        let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
        std::thread::spawn(move || service.serve(listener));
        control
    }

    /// The tunnel of a node at 192.0.2.11 on a 1500-byte uplink.
    fn test_tunnel() -> Tunnel {
        Tunnel {
            port: 3,
            underlay_port: 3,
            local_ip: std::net::Ipv4Addr::new(192, 0, 2, 11),
            local_mac: skein_netmodel::MacAddr([2, 0, 0, 0, 0, 1]),
            next_hop_mac: skein_netmodel::MacAddr([2, 0, 0, 0, 0, 2]),
            mtu: 1500,
        }
    }

    #[test]
    fn a_datapath_process_gets_the_conntrack_limits_and_a_new_one_gets_them_again() {
        use skein_datapath::conntrack::ZoneLimitScope;
        let dir = tempfile::tempdir().unwrap();
        let (sock, state) = (dir.path().join("dp.sock"), dir.path().join("state"));
        fs::create_dir_all(&state).unwrap();
        // The previous run's flows, the zone limits and the tunnel's remotes with them, and
        // no port records: a node where no pod was ever bound restores its flows too.
        fs::write(
            state.join("flows.txt"),
            "tunnel=3,local_ip=192.0.2.11,underlay_port=3\ntunnel_remotes=3,remotes=192.0.2.12\n\
             ct_zone_limit=default,limit=500\ntable=0,priority=0,actions=drop\n",
        )
        .unwrap();
        let first = datapath_process(&sock);
        let handle = DatapathHandle::Remote(skein_datapath::service::Client::new(&sock, Duration::from_secs(10)));
        let tunnel = test_tunnel();
        let table = CtTableLimits { max_connections: 1000, early_drop: false, nat_attempts: 32 };
        let limits = ConntrackLimits { pod_zone: 500, gateway_zone: 2000 };
        let net = NodeNetwork::new(handle, Vec::new(), &state, tunnel, None, limits, table).unwrap();
        let given = |c: &skein_datapath::control::Control| {
            let installed = c.installed();
            (c.datapath().conntrack_limits(), installed.zone_limits.len(), installed.tunnel_remotes.len())
        };
        assert_eq!(given(&first), (table, 1, 1));
        assert_eq!(first.datapath().zone_limit(7), Some(500));
        assert!(!net.resync_datapath().unwrap(), "the same process keeps what it has");

        // Another run of the datapath process: nothing until the agent gives it all again.
        let second = datapath_process(&sock);
        assert_eq!(given(&second), (CtTableLimits::default(), 0, 0));
        assert!(net.resync_datapath().unwrap(), "another run");
        assert_eq!(given(&second), (table, 1, 1));
        assert_eq!(second.installed().zone_limits[0].scope, ZoneLimitScope::Default);
        assert!(!net.resync_datapath().unwrap());
    }

    #[test]
    fn the_installed_view_again_is_neither_translated_nor_installed_again() {
        let dir = tempfile::tempdir().unwrap();
        let (sock, state) = (dir.path().join("dp.sock"), dir.path().join("state"));
        fs::create_dir_all(&state).unwrap();
        let control = datapath_process(&sock);
        let handle = DatapathHandle::Remote(skein_datapath::service::Client::new(&sock, Duration::from_secs(10)));
        let tunnel = test_tunnel();
        let (limits, table) = (ConntrackLimits::default(), CtTableLimits::default());
        let net = NodeNetwork::new(handle, Vec::new(), &state, tunnel, None, limits, table).unwrap();
        let view = ChassisView { chassis: "n1".into(), version: 3, ..Default::default() };
        net.install_view(&view).unwrap();
        let flows = control.installed().flows.len();
        assert!(flows > 0, "the view's translation has flows");
        // The datapath's flows changed behind the agent's back show whether it installs
        // the same view again: it does not (the master's snapshot after a restart).
        control.reload("").unwrap();
        net.install_view(&view).unwrap();
        assert!(control.installed().flows.is_empty(), "the same view is not installed again");
        // Another version is.
        net.install_view(&ChassisView { version: 4, ..view }).unwrap();
        assert_eq!(control.installed().flows.len(), flows);
    }

    fn record(host_ifname: &str, ifindex: Option<u32>, netns: Option<&Path>) -> PortRecord {
        PortRecord {
            logical_port: "default_p".into(),
            namespace: "default".into(),
            pod: "p".into(),
            uid: None,
            container_id: "c".into(),
            ifname: "eth0".into(),
            host_ifname: host_ifname.into(),
            port: 100,
            ifindex,
            netns: netns.map(|p| p.display().to_string()),
            netns_id: netns.and_then(|p| NetnsId::of(&p.display().to_string())),
        }
    }

    #[test]
    fn a_record_is_stale_when_its_veth_or_namespace_is_gone_or_another() {
        // `lo` stands for a live veth: every namespace has it.
        let lo = interface_index("lo").expect("lo");
        let dir = tempfile::tempdir().unwrap();
        let sandbox = dir.path().join("sandbox");
        fs::write(&sandbox, b"").unwrap();
        assert_eq!(staleness(&record("lo", Some(lo), Some(&sandbox))), None);
        assert_eq!(staleness(&record("lo", None, None)), None, "an older agent's record: by name");
        assert_eq!(staleness(&record("sk000000000000", Some(7), None)), Some(StaleReason::VethGone));
        assert_eq!(staleness(&record("lo", Some(lo + 1000), None)), Some(StaleReason::VethGone), "a newer veth");
        let judged = record("lo", Some(lo), Some(&sandbox));
        // The sandbox replaced by another file of the same name: another namespace. (The
        // other file exists before the first goes, so it cannot get the freed inode.)
        let other = dir.path().join("other");
        fs::write(&other, b"x").unwrap();
        fs::remove_file(&sandbox).unwrap();
        assert_eq!(staleness(&judged), Some(StaleReason::NetnsGone), "path gone");
        fs::rename(&other, &sandbox).unwrap();
        assert_eq!(staleness(&judged), Some(StaleReason::NetnsGone), "path names another one");
        // A namespace the agent could not see when binding: the veth alone decides.
        let unseen = PortRecord { netns_id: None, ..judged };
        assert_eq!(staleness(&unseen), None);
    }

    #[test]
    fn old_port_records_still_load() {
        let old = r#"{"logical_port":"default_p","namespace":"default","pod":"p","container_id":"c",
            "ifname":"eth0","host_ifname":"sk1","port":100}"#;
        let r: PortRecord = serde_json::from_str(old).unwrap();
        assert_eq!((r.ifindex, r.netns, r.netns_id), (None, None, None));
        let new = record("lo", Some(1), None);
        let text = serde_json::to_string(&new).unwrap();
        assert_eq!(serde_json::from_str::<PortRecord>(&text).unwrap(), new);
    }
}
