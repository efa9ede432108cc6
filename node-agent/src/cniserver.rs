//! The CNI server: `skein-cni` asks the agent here, one request and one response per
//! connection on a root-only Unix socket (protocol: `skein_cni::agent_protocol`).
//!
//! ADD waits (at most `add_timeout`) for the master's `skein.dev/pod-networks`
//! annotation, binds the veth's host end as a datapath port, and answers only when the
//! pod's flows are installed — the first packet the pod sends passes. Calls for one
//! container are serialised; calls for different containers run concurrently.
//!
//! A failed ADD leaves nothing behind: when the agent gives up (error answer) it unbinds
//! what it bound; when the plugin goes away first (its own timeout, or killed: the
//! connection closes), the ADD stops there, unbinds, and deletes the veth it was about —
//! by interface index, so that a veth the runtime's retry made under the same name stays.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use skein_cni::agent_protocol::{
    AddResult, AgentCommand, AgentError, AgentRequest, AgentResponse, InterfaceConfig, MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION, RouteConfig, StatusResult,
};
use skein_netmodel::annotations::PodNetwork;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::netmetrics::NetMetrics;
use crate::node::{InstallState, NetnsId, NodeNetwork, PortRecord, interface_index, logical_port_name};
use crate::pods::{NodePods, PodWaitError};

/// CNI error code: try again later.
pub const CODE_TRY_AGAIN: u32 = 11;
/// Skein's code: the request is incomplete.
pub const CODE_BAD_REQUEST: u32 = 7;
/// Skein's code: the pod's annotation is malformed.
pub const CODE_BAD_ANNOTATION: u32 = 104;
/// Skein's code: the datapath could not bind the interface.
pub const CODE_BIND_FAILED: u32 = 105;
/// Skein's code: CHECK found the pod not bound or its flows not installed.
pub const CODE_NOT_BOUND: u32 = 106;
/// How often a waiting ADD looks whether its plugin is still connected.
const HANGUP_CHECK: Duration = Duration::from_millis(50);

/// The MTU of pods on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeMtu {
    /// What a pod gets when its annotation leaves the MTU to the node (0): the agent's
    /// `--mtu`, or the uplink's MTU less the Geneve encapsulation.
    pub pod: u32,
    /// The most the uplink carries once encapsulated: a larger annotated MTU is refused.
    pub max: u32,
}

impl NodeMtu {
    /// The pods' MTU on a node whose uplink has MTU `uplink`, encapsulation adding
    /// `overhead` bytes: `configured` (the agent's `--mtu`) if the uplink carries it, or
    /// all the uplink carries. An error names what does not fit.
    pub fn of(uplink: u32, overhead: u32, configured: Option<u32>) -> Result<NodeMtu, String> {
        let max = uplink.saturating_sub(overhead);
        match configured {
            Some(m) if m > max => Err(format!(
                "--mtu {m}: the uplink's MTU is {uplink}, which carries pod packets of at most {max} bytes \
                 (Geneve over IPv4 with Skein's option adds {overhead}); lower --mtu or raise the uplink's MTU"
            )),
            Some(m) if m < MIN_POD_MTU => Err(format!("--mtu {m}: pods need at least {MIN_POD_MTU} (IPv4's minimum)")),
            Some(m) => Ok(NodeMtu { pod: m, max }),
            None if max < MIN_POD_MTU => Err(format!(
                "the uplink's MTU is {uplink}: less the encapsulation ({overhead}) that leaves {max} for pods, \
                 below IPv4's minimum of {MIN_POD_MTU}"
            )),
            None => Ok(NodeMtu { pod: max, max }),
        }
    }
}

/// The smallest MTU a pod interface gets (IPv4's minimum datagram a host must accept).
pub const MIN_POD_MTU: u32 = 576;

/// What the server needs.
#[derive(Clone, Debug)]
pub struct CniServer {
    /// The node's network.
    pub net: Arc<NodeNetwork>,
    /// This node's pods.
    pub pods: NodePods,
    /// Longest ADD wait.
    pub add_timeout: Duration,
    /// Metrics.
    pub metrics: NetMetrics,
    /// The MTU pods get on this node.
    pub mtu: NodeMtu,
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

/// Binds the socket at `path` (mode 0600; a stale file is replaced, a live one refused).
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    let listener = skein_datapath::io::bind_private_socket(path, "another agent serves it")?;
    listener.set_nonblocking(true)?;
    UnixListener::from_std(listener)
}

impl CniServer {
    /// A server for `net` and `pods`.
    pub fn new(
        net: Arc<NodeNetwork>,
        pods: NodePods,
        add_timeout: Duration,
        metrics: NetMetrics,
        mtu: NodeMtu,
    ) -> CniServer {
        CniServer { net, pods, add_timeout, metrics, mtu, locks: Arc::default() }
    }

    /// Serves `listener` until `shutdown`.
    pub async fn serve(self, listener: UnixListener, path: PathBuf, shutdown: CancellationToken) {
        info!(socket = %path.display(), "CNI server listening");
        loop {
            let stream = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        warn!(error = %e, "CNI socket accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let server = self.clone();
            tokio::spawn(async move { server.connection(stream).await });
        }
        let _ = std::fs::remove_file(&path);
    }

    async fn connection(&self, mut stream: UnixStream) {
        let response = match read_request(&mut stream).await {
            Ok(request) => self.handle_while(request, hung_up(&stream)).await,
            Err(msg) => error(CODE_BAD_REQUEST, msg, String::new()),
        };
        let mut bytes = serde_json::to_vec(&response).unwrap_or_default();
        bytes.push(b'\n');
        if let Err(e) = stream.write_all(&bytes).await {
            warn!(error = %e, "the CNI plugin left before the answer");
        }
        let _ = stream.shutdown().await;
    }

    /// Answers one request.
    pub async fn handle(&self, request: AgentRequest) -> AgentResponse {
        self.handle_while(request, std::future::pending()).await
    }

    /// Answers one request; an ADD still waiting when `gone` completes (the plugin left)
    /// is rolled back instead.
    pub async fn handle_while(&self, request: AgentRequest, gone: impl Future<Output = ()>) -> AgentResponse {
        let started = std::time::Instant::now();
        let command = request.command;
        let name = format!("{command:?}").to_uppercase();
        let response = if request.version != PROTOCOL_VERSION {
            error(
                1,
                format!(
                    "protocol version {} is not spoken here (this agent speaks {PROTOCOL_VERSION})",
                    request.version
                ),
                "update skein-cni and skein-agent together".to_owned(),
            )
        } else {
            let lock = request.container_id.as_ref().map(|id| self.lock_for(id));
            let _guard = match &lock {
                Some(l) => Some(l.lock().await),
                None => None,
            };
            let response = match command {
                AgentCommand::Add => self.add(&request, gone).await,
                AgentCommand::Del => self.del(&request),
                AgentCommand::Check => self.check(&request),
                AgentCommand::Status => self.status(),
                AgentCommand::Gc => self.gc(&request),
            };
            drop(_guard);
            if let Some(id) = &request.container_id {
                self.release_lock(id);
            }
            response
        };
        let ok = !matches!(response, AgentResponse::Error(_));
        let seconds = started.elapsed().as_secs_f64();
        self.metrics.observe_cni(&name, ok, seconds);
        match &response {
            AgentResponse::Error(e) => warn!(
                command = %name,
                container = request.container_id.as_deref().unwrap_or("-"),
                code = e.code,
                error = %e.msg,
                "CNI request failed"
            ),
            _ => info!(
                command = %name,
                container = request.container_id.as_deref().unwrap_or("-"),
                ms = seconds * 1000.0,
                "CNI request served"
            ),
        }
        response
    }

    fn lock_for(&self, container: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(locks.entry(container.to_owned()).or_default())
    }

    fn release_lock(&self, container: &str) {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        if locks.get(container).is_some_and(|l| Arc::strong_count(l) == 1) {
            locks.remove(container);
        }
    }

    async fn add(&self, request: &AgentRequest, gone: impl Future<Output = ()>) -> AgentResponse {
        let (Some(container_id), Some(ifname), Some(host_ifname), Some(pod)) =
            (&request.container_id, &request.ifname, &request.host_ifname, &request.pod)
        else {
            return error(
                CODE_BAD_REQUEST,
                "ADD needs container_id, ifname, host_ifname and pod".to_owned(),
                String::new(),
            );
        };
        let mut gone = std::pin::pin!(gone);
        let started = Instant::now();
        let deadline = started + self.add_timeout;
        let logical_port = logical_port_name(&pod.namespace, &pod.name);
        // The veth exists when the request arrives: its index identifies it from now on.
        let ifindex = interface_index(host_ifname);
        // Whatever an earlier ADD of this pod left bound to a veth or sandbox that is gone.
        self.net.reclaim_stale(Some(&logical_port));
        let waited = tokio::select! {
            waited = self.pods.wait_network(&pod.namespace, &pod.name, pod.uid.as_deref(), deadline) => waited,
            () = &mut gone => return self.plugin_gone(container_id, host_ifname, ifindex, None),
        };
        let network = match waited {
            Ok(network) => network,
            Err(e @ PodWaitError::Timeout { .. }) => {
                return error(CODE_TRY_AGAIN, format!("the pod's network is not assigned yet: {e}"), String::new());
            }
            Err(e @ PodWaitError::Malformed { .. }) => return error(CODE_BAD_ANNOTATION, e.to_string(), String::new()),
        };
        let interface = match interface_config(&network, self.mtu) {
            Ok(interface) => interface,
            Err(why) => {
                return error(CODE_BAD_ANNOTATION, format!("pod {}/{}: {why}", pod.namespace, pod.name), String::new());
            }
        };
        let annotated = Instant::now();
        let record = PortRecord {
            logical_port: logical_port.clone(),
            namespace: pod.namespace.clone(),
            pod: pod.name.clone(),
            uid: pod.uid.clone(),
            container_id: container_id.clone(),
            ifname: ifname.clone(),
            host_ifname: host_ifname.clone(),
            port: 0,
            ifindex,
            netns: request.netns.clone(),
            netns_id: request.netns.as_deref().and_then(NetnsId::of),
        };
        let record = match self.net.bind_pod(record) {
            Ok(record) => record,
            Err(e) => return error(CODE_BIND_FAILED, e.to_string(), String::new()),
        };
        let bound = Instant::now();
        let mut installed = self.net.installed();
        // The borrow `wait_for` returns holds the channel's read lock: drop it at once. Kept
        // while `view()` below takes the node's lock, it deadlocked with an install holding
        // that lock and waiting to publish (`send_modify`) — every later ADD hung.
        let wait = async { installed.wait_for(|s| s.ready_ports.contains(&logical_port)).await.map(|_| ()) };
        let outcome = tokio::select! {
            // Only whether: the value is a read guard of the watch, and an install publishing
            // while holding the network's lock would wait for it while this task waits for
            // that lock (view(), unbind() below).
            outcome = tokio::time::timeout_at(deadline, wait) => outcome.map(|ready| ready.is_ok()),
            () = &mut gone => return self.plugin_gone(container_id, host_ifname, ifindex, Some(&record)),
        };
        match outcome {
            Ok(true) => {
                // Only the master's address: the view must agree with the annotation.
                let view = self.net.view();
                let agreed = view
                    .as_ref()
                    .map_or(Err("no view".to_owned()), |v| crate::pods::check_against_view(v, &logical_port, &network));
                if let Err(why) = agreed {
                    self.net.unbind(&record.host_ifname);
                    return error(
                        CODE_BAD_ANNOTATION,
                        format!("pod {}/{}: {why}", pod.namespace, pod.name),
                        String::new(),
                    );
                }
            }
            _ => {
                let state = self.net.installed().borrow().clone();
                self.net.unbind(&record.host_ifname);
                let why = match (state.version, state.error) {
                    (_, Some(e)) => format!("installing flows fails: {e}"),
                    (None, None) => "no view from the master yet".to_owned(),
                    (Some(v), None) => {
                        format!("the master's view (version {v}) does not place the pod on this node yet")
                    }
                };
                return error(
                    CODE_TRY_AGAIN,
                    format!(
                        "the flows of pod {}/{} are not installed after {:?}: {why}",
                        pod.namespace, pod.name, self.add_timeout
                    ),
                    String::new(),
                );
            }
        }
        let done = Instant::now();
        debug!(
            pod = %logical_port,
            annotation_ms = (annotated - started).as_secs_f64() * 1e3,
            bind_ms = (bound - annotated).as_secs_f64() * 1e3,
            flows_ms = (done - bound).as_secs_f64() * 1e3,
            "ADD: where the time went"
        );
        AgentResponse::Ok(AddResult { interface })
    }

    /// The plugin left before the ADD's answer (it timed out, or was killed): undoes the
    /// binding, if one was made, and deletes the veth the ADD was about. Nobody reads the
    /// answer.
    fn plugin_gone(
        &self,
        container: &str,
        host_ifname: &str,
        ifindex: Option<u32>,
        bound: Option<&PortRecord>,
    ) -> AgentResponse {
        // Only the binding this ADD made (GC may have undone it meanwhile).
        let unbound = bound.is_some_and(|record| {
            self.net.record(host_ifname).as_ref() == Some(record) && self.net.unbind(host_ifname).is_some()
        });
        let deleted = match ifindex {
            Some(index) => match skein_cni::netlink::delete_link_by_index(index, host_ifname) {
                Ok(deleted) => deleted,
                Err(e) => {
                    warn!(container, interface = host_ifname, error = %e, "deleting the abandoned veth failed");
                    false
                }
            },
            None => false,
        };
        warn!(
            container,
            interface = host_ifname,
            unbound,
            veth_deleted = deleted,
            "the CNI plugin left before the ADD's answer (timed out or killed): rolled back"
        );
        error(CODE_TRY_AGAIN, "the CNI plugin left before the answer; ADD rolled back".to_owned(), String::new())
    }

    fn del(&self, request: &AgentRequest) -> AgentResponse {
        if let Some(host) = &request.host_ifname {
            self.net.unbind(host);
        }
        AgentResponse::Done
    }

    fn check(&self, request: &AgentRequest) -> AgentResponse {
        let Some(host) = &request.host_ifname else {
            return error(CODE_BAD_REQUEST, "CHECK needs host_ifname".to_owned(), String::new());
        };
        let Some(record) = self.net.record(host) else {
            return error(CODE_NOT_BOUND, format!("interface {host} is not bound to the datapath"), String::new());
        };
        if !self.net.installed().borrow().ready_ports.contains(&record.logical_port) {
            return error(
                CODE_NOT_BOUND,
                format!("the flows of {} are not installed", record.logical_port),
                String::new(),
            );
        }
        AgentResponse::Done
    }

    fn status(&self) -> AgentResponse {
        let state = self.net.installed().borrow().clone();
        let (ready, message) = readiness(&state);
        AgentResponse::Status(StatusResult { ready, message })
    }

    fn gc(&self, request: &AgentRequest) -> AgentResponse {
        let Some(valid) = &request.valid_attachments else {
            return error(CODE_BAD_REQUEST, "GC needs valid_attachments".to_owned(), String::new());
        };
        for record in self.net.records() {
            if !valid.iter().any(|a| a.container_id == record.container_id && a.ifname == record.ifname) {
                info!(pod = %record.logical_port, container = %record.container_id, "GC: attachment no longer valid");
                self.net.unbind(&record.host_ifname);
            }
        }
        AgentResponse::Done
    }
}

/// STATUS's answer for `state`: ready while a view is installed — the last good one keeps
/// forwarding even if a newer one cannot be installed (the error is in the message, the
/// log and ADD's answers), so one bad view does not make the node NotReady.
fn readiness(state: &InstallState) -> (bool, String) {
    match (state.version, &state.error) {
        (Some(_), None) => (true, String::new()),
        (Some(v), Some(e)) => (true, format!("version {v} installed; a newer view fails: {e}")),
        (None, Some(e)) => (false, format!("installing flows fails: {e}")),
        (None, None) => (false, "no view from the master yet".to_owned()),
    }
}

/// The pod interface configuration of an annotation: addresses, MAC, MTU (the
/// annotation's, or the node's when it says 0), a default route through each family's
/// gateway, then the annotation's routes. An annotated MTU the node's uplink cannot carry
/// is an error.
pub fn interface_config(network: &PodNetwork, node: NodeMtu) -> Result<InterfaceConfig, String> {
    let mtu = match u32::from(network.mtu) {
        0 => node.pod,
        m if m > node.max => {
            return Err(format!(
                "its MTU {m} (the master's --mtu) is more than this node's uplink carries once encapsulated ({})",
                node.max
            ));
        }
        m => m,
    };
    let mut routes = Vec::new();
    for gw in &network.gateway_ips {
        let dst = match gw {
            IpAddr::V4(_) => "0.0.0.0/0",
            IpAddr::V6(_) => "::/0",
        };
        routes.push(RouteConfig { dst: dst.to_owned(), gw: Some(gw.to_string()) });
    }
    for r in &network.routes {
        routes.push(RouteConfig { dst: r.dest.to_string(), gw: Some(r.next_hop.to_string()) });
    }
    Ok(InterfaceConfig {
        mac: network.mac_address.to_string(),
        ips: network.ip_addresses.iter().map(ToString::to_string).collect(),
        gateways: network.gateway_ips.iter().map(ToString::to_string).collect(),
        routes,
        mtu,
    })
}

fn error(code: u32, msg: String, details: String) -> AgentResponse {
    AgentResponse::Error(AgentError { code, msg, details })
}

/// Completes when the plugin has closed its end of `stream` entirely (after its request it
/// shuts down only its write half, which is not this): a Unix socket whose peer is gone
/// polls as hung up. Looked at every 50 ms with a zero-timeout `poll`, which leaves the
/// stream's readiness to the answer's write; an ADD usually ends before the second look.
async fn hung_up(stream: &UnixStream) {
    let mut tick = tokio::time::interval(HANGUP_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut fds = [PollFd::new(stream, PollFlags::empty())];
        match poll(&mut fds, Some(&Timespec { tv_sec: 0, tv_nsec: 0 })) {
            Ok(_) if fds[0].revents().intersects(PollFlags::HUP | PollFlags::ERR) => return,
            Ok(_) => {}
            Err(e) => {
                // Cannot tell: keep serving the ADD rather than roll back a live plugin's.
                debug!(error = %e, "polling the CNI connection failed");
                std::future::pending::<()>().await;
            }
        }
    }
}

async fn read_request(stream: &mut UnixStream) -> Result<AgentRequest, String> {
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.map_err(|e| format!("reading the request: {e}"))?;
            if n == 0 {
                return Ok::<(), String>(());
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > MAX_MESSAGE_BYTES {
                return Err(format!("the request exceeds {MAX_MESSAGE_BYTES} bytes"));
            }
            if buf.contains(&b'\n') {
                return Ok(());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .map_err(|_| "the request did not arrive within 10 s".to_owned())??;
    let end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    serde_json::from_slice(&buf[..end]).map_err(|e| format!("the request is not valid: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_stays_ready_while_the_last_good_view_is_installed() {
        let none = InstallState::default();
        assert_eq!(readiness(&none), (false, "no view from the master yet".to_owned()));
        let failed_first = InstallState { error: Some("refused".into()), ..InstallState::default() };
        assert!(!readiness(&failed_first).0);
        let good = InstallState { version: Some(6), ..InstallState::default() };
        assert_eq!(readiness(&good), (true, String::new()));
        let newer_fails = InstallState { error: Some("installing version 7: refused".into()), ..good };
        let (ready, message) = readiness(&newer_fails);
        assert!(ready, "version 6 still forwards");
        assert!(message.contains("version 6 installed") && message.contains("version 7"), "{message}");
    }

    #[tokio::test]
    async fn a_plugin_closing_its_write_half_is_there_and_one_closing_the_socket_is_gone() {
        let (agent, plugin) = UnixStream::pair().unwrap();
        let mut plugin = plugin;
        plugin.write_all(b"{}\n").await.unwrap();
        plugin.shutdown().await.unwrap();
        let mut agent = agent;
        let mut buf = Vec::new();
        agent.read_to_end(&mut buf).await.unwrap();
        assert_eq!(buf, b"{}\n");
        // Half-closed: still waiting for the answer.
        let waited = tokio::time::timeout(Duration::from_millis(200), hung_up(&agent)).await;
        assert!(waited.is_err(), "a plugin that only shut down its write half is still there");
        // Looking did not take the answer's way out.
        tokio::time::timeout(Duration::from_secs(10), agent.write_all(b"answer\n")).await.expect("write").unwrap();
        let mut answer = [0u8; 7];
        plugin.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"answer\n");
        drop(plugin);
        tokio::time::timeout(Duration::from_secs(10), hung_up(&agent)).await.expect("a closed plugin is seen gone");
    }

    #[test]
    fn interface_config_has_a_default_route_per_gateway_then_the_annotation_routes() {
        let network = skein_netmodel::annotations::parse_pod_networks(
            r#"{"default":{"ip_addresses":["10.244.1.5/24"],"mac_address":"0a:58:0a:f4:01:05","gateway_ips":["10.244.1.1"],"routes":[{"dest":"10.96.0.0/12","nextHop":"10.244.1.1"}],"mtu":1400}}"#,
        )
        .unwrap();
        let c = interface_config(&network, NodeMtu { pod: 8934, max: 8934 }).unwrap();
        assert_eq!(c.mac, "0a:58:0a:f4:01:05");
        assert_eq!(c.ips, vec!["10.244.1.5/24"]);
        assert_eq!(c.gateways, vec!["10.244.1.1"]);
        assert_eq!(c.mtu, 1400);
        assert_eq!(
            c.routes,
            vec![
                RouteConfig { dst: "0.0.0.0/0".into(), gw: Some("10.244.1.1".into()) },
                RouteConfig { dst: "10.96.0.0/12".into(), gw: Some("10.244.1.1".into()) },
            ]
        );
    }

    #[test]
    fn the_pod_mtu_is_the_nodes_unless_annotated_and_never_more_than_the_uplink_carries() {
        let annotated = |mtu: u16| {
            skein_netmodel::annotations::parse_pod_networks(&format!(
                r#"{{"default":{{"ip_addresses":["10.244.1.5/24"],"mac_address":"0a:58:0a:f4:01:05","gateway_ips":["10.244.1.1"],"mtu":{mtu}}}}}"#
            ))
            .unwrap()
        };
        // A jumbo uplink: pods get all it carries, unless the master set an MTU.
        let jumbo = NodeMtu::of(9000, 66, None).unwrap();
        assert_eq!(jumbo, NodeMtu { pod: 8934, max: 8934 });
        assert_eq!(interface_config(&annotated(0), jumbo).unwrap().mtu, 8934);
        assert_eq!(interface_config(&annotated(1400), jumbo).unwrap().mtu, 1400);
        // The agent's --mtu below what the uplink carries.
        let set = NodeMtu::of(9000, 66, Some(1500)).unwrap();
        assert_eq!(interface_config(&annotated(0), set).unwrap().mtu, 1500);
        // A 1500-byte uplink cannot carry a 1450-byte pod packet once encapsulated.
        let plain = NodeMtu::of(1500, 66, None).unwrap();
        assert_eq!(plain.pod, 1434);
        let err = interface_config(&annotated(1450), plain).unwrap_err();
        assert!(err.contains("MTU 1450") && err.contains("(1434)"), "{err}");
        let err = NodeMtu::of(1500, 66, Some(1450)).unwrap_err();
        assert!(err.contains("--mtu 1450") && err.contains("at most 1434"), "{err}");
        assert!(NodeMtu::of(1500, 66, Some(500)).unwrap_err().contains("at least 576"));
        assert!(NodeMtu::of(600, 66, None).unwrap_err().contains("below IPv4's minimum"));
    }
}
