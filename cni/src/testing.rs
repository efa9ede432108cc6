//! In-memory fakes of the agent and the host network, so that [`crate::plugin::run`] runs
//! without sockets, namespaces or root: used by unit tests and by the fuzz target.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::addr::MacAddr;
use crate::agent_client::{AgentEndpoint, AgentTransport, TransportError};
use crate::agent_protocol::{AgentRequest, AgentResponse};
use crate::host::{HostNetwork, LinkSummary, NetError, PodInterfaceSpec, PodInterfaceState};

type Responder = Box<dyn Fn(&AgentRequest) -> Result<AgentResponse, TransportError> + Send + Sync>;

/// An agent that answers with a function of the request and records every request.
pub struct FakeAgent {
    respond: Responder,
    requests: Mutex<Vec<AgentRequest>>,
}

impl FakeAgent {
    /// An agent answering with `respond`.
    pub fn new(
        respond: impl Fn(&AgentRequest) -> Result<AgentResponse, TransportError> + Send + Sync + 'static,
    ) -> Self {
        FakeAgent { respond: Box::new(respond), requests: Mutex::new(Vec::new()) }
    }

    /// An agent nobody can reach.
    pub fn unreachable() -> FakeAgent {
        FakeAgent::new(|_| {
            Err(TransportError::Unreachable {
                socket: PathBuf::from("/fake/agent.sock"),
                source: io::ErrorKind::NotFound.into(),
            })
        })
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<AgentRequest> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl AgentTransport for FakeAgent {
    fn call(&self, _endpoint: &AgentEndpoint, request: &AgentRequest) -> Result<AgentResponse, TransportError> {
        if let Ok(mut log) = self.requests.lock() {
            log.push(request.clone());
        }
        (self.respond)(request)
    }
}

#[derive(Debug, Default)]
struct FakeState {
    namespaces: BTreeSet<PathBuf>,
    /// Host link name → (is veth, peer (netns, ifname) when a Skein veth).
    host_links: BTreeMap<String, (bool, Option<(PathBuf, String)>)>,
    /// (netns, ifname) → state of pod-side links.
    pod_links: BTreeMap<(PathBuf, String), PodInterfaceState>,
}

/// A host network kept in memory. Deleting a veth's host end removes its peer, as in Linux.
#[derive(Debug, Default)]
pub struct FakeHost {
    every_netns_exists: bool,
    /// Set: configuring a pod interface fails (as when the netns disappears mid-ADD).
    fail_pod_configuration: bool,
    state: Mutex<FakeState>,
}

fn poisoned() -> NetError {
    NetError::Thread("fake host state poisoned".into())
}

impl FakeHost {
    /// A host with no namespaces and no links.
    pub fn new() -> FakeHost {
        FakeHost::default()
    }

    /// A host where every absolute path is an existing network namespace (for fuzzing).
    pub fn permissive() -> FakeHost {
        FakeHost { every_netns_exists: true, ..FakeHost::default() }
    }

    /// A host on which configuring the pod end of a veth fails.
    pub fn failing_pod_configuration() -> FakeHost {
        FakeHost { fail_pod_configuration: true, ..FakeHost::default() }
    }

    /// Adds a network namespace.
    pub fn add_netns(&self, path: impl AsRef<Path>) {
        if let Ok(mut s) = self.state.lock() {
            s.namespaces.insert(path.as_ref().to_path_buf());
        }
    }

    /// Adds a plain host link (or a leaked veth when `is_veth`).
    pub fn add_host_link(&self, name: &str, is_veth: bool) {
        if let Ok(mut s) = self.state.lock() {
            s.host_links.insert(name.into(), (is_veth, None));
        }
    }

    /// The names of the host's links.
    pub fn host_link_names(&self) -> Vec<String> {
        self.state.lock().map(|s| s.host_links.keys().cloned().collect()).unwrap_or_default()
    }

    /// The state of a pod-side link.
    pub fn pod_link(&self, netns: impl AsRef<Path>, ifname: &str) -> Option<PodInterfaceState> {
        let s = self.state.lock().ok()?;
        s.pod_links.get(&(netns.as_ref().to_path_buf(), ifname.to_string())).cloned()
    }

    fn has_netns(&self, s: &FakeState, netns: &Path) -> bool {
        (self.every_netns_exists && netns.is_absolute()) || s.namespaces.contains(netns)
    }
}

impl HostNetwork for FakeHost {
    fn netns_exists(&self, netns: &Path) -> bool {
        self.state.lock().map(|s| self.has_netns(&s, netns)).unwrap_or(false)
    }

    fn link_exists(&self, name: &str) -> Result<bool, NetError> {
        Ok(self.state.lock().map_err(|_| poisoned())?.host_links.contains_key(name))
    }

    fn create_veth(&self, host_ifname: &str, netns: &Path, pod_ifname: &str) -> Result<MacAddr, NetError> {
        let mut s = self.state.lock().map_err(|_| poisoned())?;
        if !self.has_netns(&s, netns) {
            return Err(NetError::NetnsNotFound { path: netns.into(), source: io::ErrorKind::NotFound.into() });
        }
        let key = (netns.to_path_buf(), pod_ifname.to_string());
        if s.host_links.contains_key(host_ifname) || s.pod_links.contains_key(&key) {
            return Err(NetError::Exists(host_ifname.into()));
        }
        s.host_links.insert(host_ifname.into(), (true, Some(key.clone())));
        s.pod_links.insert(
            key,
            PodInterfaceState {
                mac: Some(MacAddr([2, 0, 0, 0, 0, 1])),
                mtu: Some(1500),
                up: false,
                addresses: vec![],
                routes: vec![],
            },
        );
        Ok(MacAddr([2, 0, 0, 0, 0, 2]))
    }

    fn set_host_mtu(&self, name: &str, _mtu: u32) -> Result<(), NetError> {
        let s = self.state.lock().map_err(|_| poisoned())?;
        if s.host_links.contains_key(name) { Ok(()) } else { Err(NetError::NoSuchLink(name.into())) }
    }

    fn delete_host_link(&self, name: &str) -> Result<bool, NetError> {
        let mut s = self.state.lock().map_err(|_| poisoned())?;
        match s.host_links.remove(name) {
            Some((_, Some(peer))) => {
                s.pod_links.remove(&peer);
                Ok(true)
            }
            Some(_) => Ok(true),
            None => Ok(false),
        }
    }

    fn configure_pod_interface(&self, netns: &Path, ifname: &str, spec: &PodInterfaceSpec) -> Result<(), NetError> {
        if self.fail_pod_configuration {
            return Err(NetError::NetnsNotFound { path: netns.into(), source: io::ErrorKind::NotFound.into() });
        }
        let mut s = self.state.lock().map_err(|_| poisoned())?;
        let link = s
            .pod_links
            .get_mut(&(netns.to_path_buf(), ifname.to_string()))
            .ok_or_else(|| NetError::NoSuchLink(ifname.into()))?;
        link.mac = Some(spec.mac);
        link.mtu = Some(spec.mtu);
        link.up = true;
        link.addresses = spec.addresses.clone();
        link.routes = spec.routes.clone();
        Ok(())
    }

    fn inspect_pod_interface(&self, netns: &Path, ifname: &str) -> Result<Option<PodInterfaceState>, NetError> {
        let s = self.state.lock().map_err(|_| poisoned())?;
        if !self.has_netns(&s, netns) {
            return Err(NetError::NetnsNotFound { path: netns.into(), source: io::ErrorKind::NotFound.into() });
        }
        Ok(s.pod_links.get(&(netns.to_path_buf(), ifname.to_string())).cloned())
    }

    fn list_host_links(&self) -> Result<Vec<LinkSummary>, NetError> {
        let s = self.state.lock().map_err(|_| poisoned())?;
        Ok(s.host_links
            .iter()
            .map(|(name, (is_veth, _))| LinkSummary { name: name.clone(), is_veth: *is_veth })
            .collect())
    }
}
