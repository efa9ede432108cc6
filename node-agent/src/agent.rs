//! The node agent's network side, put together: uplink and management port, the switch,
//! the southbound client installing every view, the CNI server, the control socket.
//! `docs/node-agent.md` describes the whole.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ListParams;
use kube::{Api, Client};
use skein_datapath::conntrack::{CtConfig, CtTableLimits};
use skein_datapath::control::Control;
use skein_datapath::datapath::{Datapath, DatapathConfig};
use skein_datapath::io::{PortSpec, Switch, SwitchConfig, UplinkFilter, now_ns};
use skein_datapath::service::{Client as DatapathClient, Hello};
use skein_netmodel::annotations::{CHASSIS, ChassisAnnotation, Encap, format_chassis};
use skein_netmodel::southbound::{ChassisView, Owner, PortKind};
use skein_netmodel::{IpNet, MacAddr};
use skein_southbound::{AgentClient, ClientEvent, ClientSettings, ClientTls, Registration, TlsIdentity};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::cniinstall::CniInstall;
use crate::cniserver::{self, CniServer};
use crate::datapath::DatapathHandle;
use crate::deviceplugin::annotation::{KubeNodeAnnotator, NodeAnnotator};
use crate::host::{self, ManagementSpec, UplinkPorts};
use crate::netmetrics::NetMetrics;
use crate::node::{GENEVE_PORT, LeftOut, MANAGEMENT_PORT, NodeNetwork, UPLINK_PORT};
use crate::pods::NodePods;
use crate::translate::{ConntrackLimits, Tunnel, Uplink};

/// Where the master is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MasterLocation {
    /// Fixed endpoints, tried in turn.
    Endpoints(Vec<String>),
    /// A Service whose ready endpoints (port `southbound`) are looked up in its EndpointSlices.
    Service {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
}

/// TLS towards the master.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MasterTls {
    /// CA to trust (PEM file); without it, the CA the master publishes in
    /// [`MasterTls::ca_config_map`].
    pub ca: Option<PathBuf>,
    /// ConfigMap (namespace, name) where the master publishes its CA (`ca.crt`) and the
    /// name in its certificate (`server-name`), read through the API server.
    pub ca_config_map: Option<(String, String)>,
    /// The projected ServiceAccount token proving this node, re-read on every connection.
    pub token: Option<PathBuf>,
    /// Client certificate (PEM file).
    pub cert: Option<PathBuf>,
    /// Its key.
    pub key: Option<PathBuf>,
    /// Name to verify in the master's certificate.
    pub server_name: Option<String>,
}

/// Everything the network side needs.
#[derive(Clone, Debug)]
pub struct NetworkSettings {
    /// Node name.
    pub node_name: String,
    /// The master.
    pub master: MasterLocation,
    /// TLS to the master.
    pub tls: MasterTls,
    /// Tunnel IP (default: the node's InternalIP).
    pub tunnel_ip: Option<Ipv4Addr>,
    /// Uplink interface (default: the one holding the node IP).
    pub uplink_interface: Option<String>,
    /// Cluster CIDRs (routed from the host through the management port).
    pub cluster_cidrs: Vec<IpNet>,
    /// Service CIDRs (routed likewise).
    pub service_cidrs: Vec<IpNet>,
    /// CNI socket.
    pub cni_socket: PathBuf,
    /// State directory.
    pub state_dir: PathBuf,
    /// CNI install, unless disabled.
    pub cni_install: Option<CniInstall>,
    /// Longest ADD wait.
    pub add_timeout: Duration,
    /// Pods' MTU on this node (`--mtu`); `None`: the uplink's less the encapsulation.
    pub pod_mtu: Option<u32>,
    /// Switch settings (for a switch inside the agent).
    pub switch: SwitchConfig,
    /// The control socket of the datapath process (`skein-dp run`) to drive; without it the
    /// switch runs inside the agent and stops with it.
    pub datapath_socket: Option<PathBuf>,
    /// Ports Skein answers on the node IP.
    pub uplink_ports: UplinkPorts,
    /// How long to wait for the gateway's MAC at start.
    pub gateway_wait: Duration,
    /// How often port records are checked for a veth or sandbox namespace that is gone.
    pub stale_port_interval: Duration,
    /// Denied connections written to the audit log per second (0: no audit log).
    pub policy_audit_rate: u32,
    /// Conntrack's limits.
    pub conntrack: ConntrackSettings,
}

/// Conntrack's limits on a node (`docs/datapath.md`, conntrack limits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConntrackSettings {
    /// Most connections tracked.
    pub max_connections: usize,
    /// A full table or zone replaces its oldest never-answered connection.
    pub early_drop: bool,
    /// Most candidates NAT examines for one new connection.
    pub nat_attempts: u32,
    /// Per-zone limits.
    pub limits: ConntrackLimits,
}

impl Default for ConntrackSettings {
    fn default() -> Self {
        let ct = CtConfig::default();
        ConntrackSettings {
            max_connections: ct.max_connections,
            early_drop: ct.early_drop,
            nat_attempts: ct.nat_attempts,
            limits: ConntrackLimits::default(),
        }
    }
}

/// The running network side.
#[derive(Debug)]
pub struct RunningNetwork {
    /// The node's datapath and bindings.
    pub net: Arc<NodeNetwork>,
}

/// Starts everything; returns once the CNI server listens and the client runs.
pub async fn start(
    settings: NetworkSettings,
    client: Client,
    metrics: NetMetrics,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningNetwork> {
    let s = settings;
    let nodes: Api<Node> = Api::all(client.clone());
    let node = nodes.get(&s.node_name).await.with_context(|| format!("reading Node {}", s.node_name))?;
    let internal_ip = node
        .status
        .as_ref()
        .and_then(|st| st.addresses.as_ref())
        .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP").and_then(|a| a.address.parse::<Ipv4Addr>().ok()));
    let node_ip = s.tunnel_ip.or(internal_ip);
    let uplink = {
        let (ip, name) = (node_ip, s.uplink_interface.clone());
        tokio::task::spawn_blocking(move || host::find_uplink(ip, name.as_deref())).await??
    };
    let node_ip = uplink.node_ip;
    // Refused here, before anything is set up: pods whose packets the uplink cannot carry
    // once encapsulated would lose every full-size packet to another node.
    let mtu = crate::cniserver::NodeMtu::of(uplink.mtu, host::GENEVE_OVERHEAD, s.pod_mtu)
        .map_err(|e| anyhow::anyhow!("pod MTU on uplink {}: {e}", uplink.name))?;
    info!(
        interface = %uplink.name,
        %node_ip,
        mac = %uplink.mac,
        mtu = uplink.mtu,
        pod_mtu = mtu.pod,
        gateway = ?uplink.gateway,
        "uplink found"
    );
    host::check_ephemeral_ports(s.uplink_ports.snat_ports);

    // The chassis: an id kept across restarts, the annotation the contract asks for.
    std::fs::create_dir_all(&s.state_dir).with_context(|| format!("creating {}", s.state_dir.display()))?;
    let chassis_id = chassis_id(&s.state_dir)?;
    let annotation = format_chassis(&ChassisAnnotation {
        id: chassis_id.clone(),
        tunnel_ip: IpAddr::V4(node_ip),
        encap: Encap::Geneve,
    });
    {
        let annotator = KubeNodeAnnotator::new(client.clone(), s.node_name.clone());
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(200);
            loop {
                match annotator.annotate(CHASSIS, &annotation).await {
                    Ok(()) => {
                        info!(annotation = CHASSIS, value = %annotation, "chassis annotation written");
                        return;
                    }
                    Err(e) => warn!(error = %e, "writing the chassis annotation failed; retrying"),
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        });
    }

    // The datapath: uplink, management port, Geneve endpoint.
    tokio::task::spawn_blocking(host::ensure_management_link).await??;
    let ct = s.conntrack;
    let ct_table =
        CtTableLimits { max_connections: ct.max_connections, early_drop: ct.early_drop, nat_attempts: ct.nat_attempts };
    let specs = vec![
        PortSpec::Uplink {
            number: UPLINK_PORT,
            name: uplink.name.clone(),
            filter: Some(UplinkFilter { node_ip, port_ranges: [s.uplink_ports.node_ports, s.uplink_ports.snat_ports] }),
        },
        PortSpec::Interface { number: MANAGEMENT_PORT, name: host::MANAGEMENT_DP_IFNAME.to_owned() },
        PortSpec::Geneve {
            number: GENEVE_PORT,
            local: SocketAddrV4::new(node_ip, skein_datapath::io::udp::GENEVE_PORT),
        },
    ];
    let handle = match &s.datapath_socket {
        Some(path) => {
            let client = DatapathClient::new(path, crate::datapath::REQUEST_TIMEOUT);
            let hello = wait_for_datapath(&client, &shutdown).await?;
            info!(socket = %path.display(), boot_id = %hello.boot_id, pid = hello.pid, version = %hello.version, "driving the datapath process");
            DatapathHandle::Remote(client)
        }
        None => {
            let dp = Arc::new(Datapath::new(DatapathConfig {
                conntrack: CtConfig {
                    max_connections: ct.max_connections,
                    early_drop: ct.early_drop,
                    nat_attempts: ct.nat_attempts,
                    ..CtConfig::default()
                },
                ..DatapathConfig::default()
            }));
            let switch = Arc::new(Switch::start(dp.clone(), &[], s.switch).context("starting the switch")?);
            let control = {
                let sw = switch.clone();
                Arc::new(Control::new(dp.clone(), Box::new(move || sw.stats()), now_ns))
            };
            // Housekeeping: expire idle cache entries and connections (a datapath process
            // does its own).
            let (maint, stop) = (dp.clone(), shutdown.clone());
            std::thread::Builder::new().name("skein-agent-maint".into()).spawn(move || {
                while !stop.is_cancelled() {
                    std::thread::sleep(Duration::from_millis(100));
                    maint.maintain(now_ns());
                }
            })?;
            DatapathHandle::InProcess { dp, switch, control }
        }
    };
    let gateway_mac = match uplink.gateway {
        Some(gw) => {
            let (name, wait) = (uplink.name.clone(), s.gateway_wait);
            match tokio::task::spawn_blocking(move || host::resolve_mac(gw, &name, wait)).await? {
                Ok(mac) => Some(mac),
                Err(e) => {
                    warn!(error = %e, "pods cannot reach beyond the node until the gateway answers");
                    None
                }
            }
        }
        None => {
            warn!("no IPv4 default route: pod egress and NodePort replies have no next hop");
            None
        }
    };
    let tunnel = Tunnel {
        port: GENEVE_PORT,
        underlay_port: GENEVE_PORT,
        local_ip: node_ip,
        local_mac: uplink.mac,
        next_hop_mac: gateway_mac.unwrap_or(MacAddr([0; 6])),
        mtu: u16::try_from(uplink.mtu).unwrap_or(u16::MAX),
    };
    let net = {
        let (handle, state_dir, limits) = (handle.clone(), s.state_dir.clone(), ct.limits);
        tokio::task::spawn_blocking(move || {
            NodeNetwork::new(handle, specs, &state_dir, tunnel, Some(MANAGEMENT_PORT), limits, ct_table)
        })
        .await?
        .map_err(anyhow::Error::msg)
        .context("starting the datapath")?
    };
    if let DatapathHandle::Remote(client) = &handle {
        watch_datapath(client.clone(), net.clone(), shutdown.clone())?;
    }
    // Before anything answers: a scrape sees this network from the first STATUS on.
    metrics.attach(net.clone());
    if let Some(gateway_mac) = gateway_mac {
        let up = Uplink {
            port: UPLINK_PORT,
            mac: uplink.mac,
            gateway_mac,
            snat_ports: s.uplink_ports.snat_ports,
            node_port_range: s.uplink_ports.node_ports,
        };
        if let Err(e) = net.set_uplink(Some(up)) {
            warn!(error = %e, "binding the uplink failed");
        }
    }
    // Serve CNI ADDs for the pods of the previous run's view before the master answers.
    net.install_saved_view(&s.node_name);
    tokio::task::spawn_blocking(move || host::ensure_uplink_rules(node_ip, s.uplink_ports)).await??;
    tokio::task::spawn_blocking(host::ensure_host_port_rules).await??;
    crate::controlsock::serve_with_policies(&s.state_dir.join("control.sock"), handle.clone(), Some(net.clone()))
        .with_context(|| format!("serving {}", s.state_dir.join("control.sock").display()))?;

    // Objects left out of the installed view: a Warning Event on each.
    tokio::spawn(report_left_out(net.clone(), client.clone(), s.node_name.clone(), shutdown.clone()));

    // The management port follows the view.
    tokio::spawn(follow_management(
        net.clone(),
        s.node_name.clone(),
        s.cluster_cidrs.clone(),
        s.service_cidrs.clone(),
        mtu.pod,
        shutdown.clone(),
    ));

    // Pods, the CNI server, the plugin install.
    let pods = NodePods::start(client.clone(), &s.node_name);
    let listener = cniserver::bind(&s.cni_socket).with_context(|| format!("binding {}", s.cni_socket.display()))?;
    let server = CniServer::new(net.clone(), pods, s.add_timeout, metrics.clone(), mtu);
    tokio::spawn(server.serve(listener, s.cni_socket.clone(), shutdown.clone()));
    tokio::spawn(reclaim_stale_ports(net.clone(), s.stale_port_interval, shutdown.clone()));
    if let Some(install) = s.cni_install.clone() {
        let plugin = install.clone();
        tokio::task::spawn_blocking(move || plugin.install_plugin()).await?.context("installing the CNI plugin")?;
        // The configuration makes the node "network ready" to the runtime (containerd 1.6
        // asks nothing else): it appears once the socket it names serves ADDs with a view
        // installed, and stays across restarts.
        tokio::spawn(write_conflist_when_ready(install, net.clone(), shutdown.clone()));
    }
    // The master.
    let registration = Registration {
        node_name: s.node_name.clone(),
        chassis_id,
        tunnel_ip: IpAddr::V4(node_ip),
        encap: Encap::Geneve,
    };
    let tls = client_tls(&s.tls)?;
    if let Some(token) = &s.tls.token
        && let Err(e) = skein_southbound::TokenSource::File(token.clone()).read()
    {
        // Kubelet may not have written it yet; every connection reads it again.
        warn!(error = %e, "the southbound token is not readable yet");
    }
    tokio::spawn(follow_master(
        client.clone(),
        s.master.clone(),
        MasterAuth { tls, ca_config_map: s.tls.ca_config_map.clone(), token: s.tls.token.clone() },
        registration,
        net.clone(),
        shutdown.clone(),
    ));

    crate::policylog::start(net.clone(), s.policy_audit_rate, shutdown.clone()).context("starting the audit log")?;
    info!(node = %s.node_name, "node network running");
    Ok(RunningNetwork { net })
}

/// Waits until the datapath process answers (the two start independently: a DaemonSet
/// each).
async fn wait_for_datapath(client: &DatapathClient, shutdown: &CancellationToken) -> anyhow::Result<Hello> {
    let started = std::time::Instant::now();
    let mut said = std::time::Instant::now();
    loop {
        let c = client.clone();
        match tokio::task::spawn_blocking(move || c.hello()).await? {
            Ok(hello) => return Ok(hello),
            Err(e) if said.elapsed() >= Duration::from_secs(5) => {
                warn!(error = %e, waited_s = started.elapsed().as_secs(), "the datapath process does not answer yet");
                said = std::time::Instant::now();
            }
            Err(_) => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => bail!("stopped while waiting for the datapath process"),
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// Holds a `watch` connection to the datapath process on a thread: when it ends (the
/// process exited: crashed, restarted, upgraded) the thread waits for a datapath to answer
/// again and, if it is a new one, gives it the node's ports, the pods' ports and the flows.
fn watch_datapath(client: DatapathClient, net: Arc<NodeNetwork>, shutdown: CancellationToken) -> std::io::Result<()> {
    std::thread::Builder::new().name("skein-dp-watch".into()).spawn(move || {
        let mut lost: Option<std::time::Instant> = None;
        while !shutdown.is_cancelled() {
            let stream = match client.watch() {
                Ok((_, stream)) => stream,
                Err(e) => {
                    if lost.is_none() {
                        error!(error = %e, "the datapath process does not answer: nothing forwards on this node until it is back");
                        lost = Some(std::time::Instant::now());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            };
            match net.resync_datapath() {
                Ok(true) => info!(
                    down_ms = lost.map(|t| t.elapsed().as_millis()).unwrap_or(0),
                    "the new datapath process has the node's ports and flows"
                ),
                Ok(false) => {}
                Err(e) => {
                    error!(error = %e, "setting up the new datapath process failed; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            }
            lost = None;
            // Blocks until the process exits (heartbeats meanwhile).
            let mut buf = [0u8; 64];
            let mut stream = stream;
            while matches!(std::io::Read::read(&mut stream, &mut buf), Ok(n) if n > 0) {}
            if !shutdown.is_cancelled() {
                warn!("the datapath process exited");
            }
        }
    })?;
    Ok(())
}

/// Writes the CNI configuration once a view is installed (from the master, or the
/// previous run's), checking the chained plugins first; retries while that fails (a
/// chained plugin missing), saying why.
async fn write_conflist_when_ready(install: CniInstall, net: Arc<NodeNetwork>, shutdown: CancellationToken) {
    let mut installed = net.installed();
    tokio::select! {
        () = shutdown.cancelled() => return,
        ready = installed.wait_for(|s| s.version.is_some()) => if ready.is_err() { return },
    }
    let mut delay = Duration::from_secs(2);
    loop {
        let attempt = install.clone();
        match tokio::task::spawn_blocking(move || attempt.prepare_chain().and_then(|v| attempt.write_conflist(&v)))
            .await
        {
            Ok(Ok(_)) => {
                info!(conf_dir = %install.conf_dir.display(), "CNI configuration in place: the node can network");
                return;
            }
            Ok(Err(e)) => error!(
                error = %e,
                retry_in = ?delay,
                "the CNI configuration cannot be written: pods cannot start on this node until it is"
            ),
            Err(e) => error!(error = %e, "writing the CNI configuration panicked"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(60));
    }
}

/// Posts a Warning Event (reason `NotInstalled`, reported by `skein-agent` instance
/// `<node>`) on each object this node leaves out of its view, when it is first left out —
/// what ovn-controller cannot do, and what tells the object's author why it does not work.
async fn report_left_out(net: Arc<NodeNetwork>, client: Client, node: String, shutdown: CancellationToken) {
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let recorder = Recorder::new(client, Reporter { controller: "skein-agent".into(), instance: Some(node.clone()) });
    let mut installed = net.installed();
    let mut reported: BTreeSet<LeftOut> = BTreeSet::new();
    loop {
        let now = installed.borrow_and_update().left_out.clone();
        for item in now.difference(&reported) {
            let Some(reference) = object_reference(&item.object) else { continue };
            let mut note = format!("node {node} does not install it: {}", item.reason);
            // The API server refuses notes over 1 kB.
            if note.len() > 1000 {
                let mut end = 1000;
                while !note.is_char_boundary(end) {
                    end -= 1;
                }
                note.truncate(end);
            }
            let event = Event {
                type_: EventType::Warning,
                reason: "NotInstalled".into(),
                note: Some(note),
                action: "Install".into(),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&event, &reference).await {
                debug!(object = %item.object, error = %e, "could not publish an Event");
            }
        }
        reported = now;
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = installed.changed() => if changed.is_err() { return },
        }
    }
}

/// The API object an owner of logical flows stands for (none for the cluster).
fn object_reference(owner: &Owner) -> Option<ObjectReference> {
    let (api_version, kind, namespace, name) = match owner {
        Owner::Cluster => return None,
        Owner::Node(n) => ("v1", "Node", None, n.to_string()),
        Owner::Pod(p) => ("v1", "Pod", Some(p.namespace.to_string()), p.name.to_string()),
        Owner::Service(s) => ("v1", "Service", Some(s.namespace.to_string()), s.name.to_string()),
        Owner::Policy(p) => {
            ("networking.k8s.io/v1", "NetworkPolicy", Some(p.namespace.to_string()), p.name.to_string())
        }
        Owner::Namespace(n) => ("v1", "Namespace", None, n.to_string()),
    };
    Some(ObjectReference {
        api_version: Some(api_version.into()),
        kind: Some(kind.into()),
        namespace,
        name: Some(name),
        ..ObjectReference::default()
    })
}

/// Reclaims, every `interval`, the port records whose veth or sandbox namespace is gone.
async fn reclaim_stale_ports(net: Arc<NodeNetwork>, interval: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let n = net.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || n.reclaim_stale(None)).await {
            warn!(error = %e, "checking for stale pod ports panicked");
        }
    }
}

/// The chassis id in `<state>/chassis-id`, created on first start.
fn chassis_id(state: &std::path::Path) -> anyhow::Result<String> {
    let path = state.join("chassis-id");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let id = text.trim().to_owned();
        if !id.is_empty() {
            return Ok(id);
        }
    }
    let id = std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .context("reading /proc/sys/kernel/random/uuid for a chassis id")?
        .trim()
        .to_owned();
    crate::node::write_atomically(&path, id.as_bytes(), crate::node::Durability::Reboot)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

/// How the agent reaches and proves itself to the master.
#[derive(Clone, Debug)]
struct MasterAuth {
    /// TLS from files (`--master-ca`), if given.
    tls: Option<ClientTls>,
    /// Otherwise the CA the master publishes here.
    ca_config_map: Option<(String, String)>,
    /// The token file.
    token: Option<PathBuf>,
}

/// The master's CA and server name from the ConfigMap it publishes.
async fn published_ca(client: &Client, namespace: &str, name: &str) -> Result<ClientTls, String> {
    let api: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), namespace);
    let map = api.get(name).await.map_err(|e| format!("reading ConfigMap {namespace}/{name}: {e}"))?;
    let data = map.data.unwrap_or_default();
    let ca = data
        .get("ca.crt")
        .ok_or_else(|| format!("ConfigMap {namespace}/{name} has no data[\"ca.crt\"] (is the master running?)"))?;
    let mut tls = ClientTls::new(ca.clone());
    tls.server_name = data.get("server-name").cloned().filter(|n| !n.is_empty());
    tls.check().map_err(|e| format!("ConfigMap {namespace}/{name}: {e}"))?;
    Ok(tls)
}

fn client_tls(tls: &MasterTls) -> anyhow::Result<Option<ClientTls>> {
    let Some(ca) = &tls.ca else {
        if tls.cert.is_some() || tls.key.is_some() {
            bail!("--tls-cert/--tls-key need --master-ca (the CA that signed the master's certificate)");
        }
        return Ok(None);
    };
    let read = |p: &PathBuf, flag: &str| std::fs::read_to_string(p).with_context(|| format!("{flag} {}", p.display()));
    let mut out = ClientTls::new(read(ca, "--master-ca")?);
    out.server_name = tls.server_name.clone();
    match (&tls.cert, &tls.key) {
        (Some(c), Some(k)) => {
            out.identity = Some(TlsIdentity {
                certificate_pem: read(c, "--tls-cert")?.into(),
                key_pem: read(k, "--tls-key")?.into(),
            })
        }
        (None, None) => {}
        _ => bail!("--tls-cert and --tls-key go together"),
    }
    Ok(Some(out))
}

/// The endpoints to try, in order.
async fn master_endpoints(client: &Client, master: &MasterLocation, tls: bool) -> Vec<String> {
    match master {
        MasterLocation::Endpoints(list) => list.clone(),
        MasterLocation::Service { namespace, name } => {
            let api: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
            let params = ListParams::default().labels(&format!("kubernetes.io/service-name={name}"));
            let slices = match api.list(&params).await {
                Ok(list) => list.items,
                Err(e) => {
                    warn!(service = %format!("{namespace}/{name}"), error = %e, "listing the master's EndpointSlices failed");
                    return Vec::new();
                }
            };
            let scheme = if tls { "https" } else { "http" };
            let mut out = Vec::new();
            for slice in slices {
                let port = slice
                    .ports
                    .as_ref()
                    .and_then(|ports| {
                        ports.iter().find(|p| p.name.as_deref() == Some("southbound")).or_else(|| ports.first())
                    })
                    .and_then(|p| p.port)
                    .unwrap_or(6643);
                for ep in &slice.endpoints {
                    if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                        continue;
                    }
                    for address in &ep.addresses {
                        let host = if address.contains(':') { format!("[{address}]") } else { address.clone() };
                        out.push(format!("{scheme}://{host}:{port}"));
                    }
                }
            }
            out
        }
    }
}

/// Follows the master: connects to an endpoint, installs every view, moves on to the next
/// endpoint (re-resolving a Service) when one keeps refusing.
async fn follow_master(
    client: Client,
    master: MasterLocation,
    auth: MasterAuth,
    registration: Registration,
    net: Arc<NodeNetwork>,
    shutdown: CancellationToken,
) {
    let mut attempt = 0usize;
    loop {
        // The CA is read again whenever the agent moves on, so a re-issued one is picked up.
        let tls = match (&auth.tls, &auth.ca_config_map) {
            (Some(tls), _) => Some(tls.clone()),
            (None, Some((namespace, name))) => match published_ca(&client, namespace, name).await {
                Ok(tls) => Some(tls),
                Err(e) => {
                    warn!(error = %e, "the master's CA is not available yet; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(2)) => continue,
                    }
                }
            },
            (None, None) => None,
        };
        let endpoints = master_endpoints(&client, &master, tls.is_some()).await;
        if endpoints.is_empty() {
            warn!(master = ?master, "no master endpoint known yet; retrying");
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(2)) => continue,
            }
        }
        let endpoint = endpoints[attempt % endpoints.len()].clone();
        attempt += 1;
        let mut settings = ClientSettings::new(endpoint.clone(), registration.clone());
        settings.tls = tls.clone();
        settings.token = auth.token.clone().map(skein_southbound::TokenSource::File);
        settings.installer = Some(net.clone());
        if let Err(e) = settings.channel_endpoint() {
            warn!(%endpoint, error = %e, "master endpoint unusable");
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        }
        info!(%endpoint, "following the master");
        let mut agent = AgentClient::start(settings);
        let mut failures = 0;
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => return,
                event = agent.events().recv() => event,
            };
            match event {
                Some(ClientEvent::Connected) => debug!(%endpoint, "connected to the master"),
                Some(ClientEvent::Applied(applied)) => {
                    failures = 0;
                    debug!(version = applied.version(), "view installed and acknowledged");
                }
                Some(ClientEvent::Resync(reason)) => warn!(%reason, "asked the master for a snapshot"),
                Some(ClientEvent::InstallFailed { version, error }) => {
                    warn!(version, %error, "view not installed")
                }
                Some(ClientEvent::Disconnected(reason)) => {
                    failures += 1;
                    warn!(%endpoint, %reason, failures, "southbound stream ended");
                    // Two failures in a row: the leader may have moved (a standby answers
                    // UNAVAILABLE; a vanished one times out), so look again.
                    if failures >= 2 && (endpoints.len() > 1 || matches!(master, MasterLocation::Service { .. })) {
                        break;
                    }
                }
                None => break,
            }
        }
    }
}

/// Configures the management interface from the view's management port, whenever it changes.
async fn follow_management(
    net: Arc<NodeNetwork>,
    node: String,
    cluster: Vec<IpNet>,
    services: Vec<IpNet>,
    mtu: u32,
    shutdown: CancellationToken,
) {
    let mut installed = net.installed();
    let mut last: Option<ManagementSpec> = None;
    loop {
        if let Some(view) = net.view()
            && let Some(spec) = management_spec(&view, &node, &cluster, &services, mtu)
            && last.as_ref() != Some(&spec)
        {
            let s = spec.clone();
            match tokio::task::spawn_blocking(move || host::configure_management(&s)).await {
                Ok(Ok(())) => {
                    info!(mac = %spec.mac, addresses = ?spec.addresses, "management port configured");
                    last = Some(spec);
                }
                Ok(Err(e)) => warn!(error = %e, "configuring the management port failed; retrying on the next view"),
                Err(e) => warn!(error = %e, "configuring the management port panicked"),
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = installed.changed() => if changed.is_err() { return },
        }
    }
}

/// The management interface's configuration from the view: its port's MAC and
/// addresses, the gateway (the router port's address on the node switch — the first
/// address of the subnet).
pub fn management_spec(
    view: &ChassisView,
    node: &str,
    cluster: &[IpNet],
    services: &[IpNet],
    mtu: u32,
) -> Option<ManagementSpec> {
    let port = view
        .items
        .ports
        .iter()
        .find(|p| matches!(p.kind, PortKind::Management) && p.chassis.as_deref().is_none_or(|c| c == node))?;
    let mac = port.mac?;
    let first = port.ips.first()?;
    let gateway = match first.network().addr() {
        IpAddr::V4(n) => IpAddr::V4(Ipv4Addr::from(u32::from(n).wrapping_add(1))),
        IpAddr::V6(n) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(n).wrapping_add(1))),
    };
    let mut routes: Vec<IpNet> = cluster.to_vec();
    routes.extend_from_slice(services);
    Some(ManagementSpec { mac, addresses: port.ips.clone(), gateway, routes, mtu })
}
