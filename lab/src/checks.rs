//! The checks: derived from whatever is deployed (pure), run through a [`Prober`] (the real
//! one sends requests from inside pod namespaces; tests use a model), and reported as a
//! table. The disruptive checks (a deleted pod, a restarted agent) live in `cli`, which can
//! change the cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service, ServicePort};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use skein_netmodel::annotations::{NODE_SUBNETS, parse_node_subnets};
use skein_netmodel::config::{NetworkConfig, NodeLayout};

use crate::echo::{Attempt, ProbeOptions, Proto, ServePort, Target, TargetReport};
use crate::endpointslices::{pod_ips, pod_ready, resolve_target_port, selector_matches};
use crate::kubelet::workload_ports;
use crate::layout::{GATEWAY_IP, Layout, OUTSIDE_IP, OUTSIDE_PORT};
use crate::policy::{Policies, Tally, explain};
use crate::scheduler::pod_finished;

/// A node as the checks see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Name.
    pub name: String,
    /// InternalIP.
    pub ip: IpAddr,
    /// Its gateway router's join address: the source a NodePort client is seen with by the
    /// backend (`externalTrafficPolicy: Cluster` SNATs to it).
    pub join_ip: Option<IpAddr>,
}

/// A pod as the checks see it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Node it runs on.
    pub node: String,
    /// Its sandbox.
    pub netns: String,
    /// Its address.
    pub ip: IpAddr,
    /// Ports its workload serves.
    pub ports: Vec<ServePort>,
    /// The pod object (for selectors and named ports).
    pub pod: Pod,
}

impl PodInfo {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The port pod → pod checks use: its first TCP port, else its first port.
    pub fn probe_port(&self) -> ServePort {
        self.ports
            .iter()
            .find(|p| p.proto == Proto::Tcp)
            .or(self.ports.first())
            .copied()
            .unwrap_or(crate::kubelet::DEFAULT_PORT)
    }
}

/// What is deployed: Ready nodes and pods with addresses, and Services.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// Nodes.
    pub nodes: Vec<NodeInfo>,
    /// Ready, running, pod-network pods with an address, sorted by namespace and name.
    pub pods: Vec<PodInfo>,
    /// Pods that exist but are not (yet) ready: `namespace/name` → why.
    pub not_ready: BTreeMap<String, String>,
    /// Services.
    pub services: Vec<Service>,
    /// The NetworkPolicies deployed, as the reference model sees them (`None`: none is).
    pub policies: Option<Policies>,
}

fn node_internal_ip(node: &Node) -> Option<IpAddr> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == "InternalIP")
        .and_then(|a| a.address.parse().ok())
}

/// The join address of the node's gateway router, from its subnet annotation, as the
/// master lays the node out (the lab runs it with the default network configuration).
fn node_join_ip(node: &Node, ip: IpAddr) -> Option<IpAddr> {
    let text = node.metadata.annotations.as_ref()?.get(NODE_SUBNETS)?;
    let subnets = parse_node_subnets(text).ok()?;
    let layout = NodeLayout::new(&NetworkConfig::default(), &node.name_any(), &subnets, &[ip]).ok()?;
    layout.join_ips.first().map(|n| n.addr())
}

impl ClusterView {
    /// Builds the view from the API's objects.
    pub fn new(layout: &Layout, nodes: &[Node], pods: &[Pod], services: &[Service]) -> ClusterView {
        let mut view = ClusterView {
            nodes: nodes
                .iter()
                .filter_map(|n| {
                    let ip = node_internal_ip(n)?;
                    Some(NodeInfo { name: n.name_any(), ip, join_ip: node_join_ip(n, ip) })
                })
                .collect(),
            services: services.to_vec(),
            ..Default::default()
        };
        view.nodes.sort_by(|a, b| a.name.cmp(&b.name));
        for pod in pods {
            if pod_finished(pod) || pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false) {
                continue;
            }
            let key = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
            let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
            let ip = pod_ips(pod).into_iter().next();
            match (node.is_empty(), ip, pod_ready(pod)) {
                (true, _, _) => {
                    view.not_ready.insert(key, "not scheduled".into());
                }
                (false, Some(ip), true) => view.pods.push(PodInfo {
                    namespace: pod.namespace().unwrap_or_default(),
                    name: pod.name_any(),
                    netns: layout.pod_netns(&node, &pod.uid().unwrap_or_default()),
                    node,
                    ip,
                    ports: workload_ports(pod),
                    pod: pod.clone(),
                }),
                (false, _, _) => {
                    view.not_ready.insert(key, format!("on {node}, not ready"));
                }
            }
        }
        view.pods.sort_by_key(PodInfo::key);
        view
    }

    /// Adds the NetworkPolicies deployed (with the namespaces their selectors read): the
    /// checks then expect what the reference model says of every connection. The model sees
    /// every pod given to [`ClusterView::new`], ready or not.
    pub fn with_policies(mut self, namespaces: &[Namespace], pods: &[Pod], policies: &[NetworkPolicy]) -> ClusterView {
        self.policies = Policies::new(namespaces, pods, policies);
        self
    }

    fn node_ip(&self, node: &str) -> Option<IpAddr> {
        self.nodes.iter().find(|n| n.name == node).map(|n| n.ip)
    }

    /// A pod to send probes from that no policy keeps from reaching anything (the first one
    /// not on `avoid_node`, else any), for checks that create pods the model does not know.
    pub fn open_client(&self, avoid_node: &str) -> Option<&PodInfo> {
        let open = |p: &&PodInfo| self.policies.as_ref().is_none_or(|policies| policies.egress_open(&p.pod));
        self.pods
            .iter()
            .filter(open)
            .find(|p| p.node != avoid_node)
            .or_else(|| self.pods.iter().find(open))
            .or_else(|| self.pods.iter().find(|p| p.node != avoid_node))
            .or(self.pods.first())
    }
}

/// What a check expects of its answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Each target answers with its own name (index-aligned with the probe's targets).
    Names(Vec<String>),
    /// Every request answered, by the backends in the set, and every backend at least once.
    AllBackends(BTreeSet<String>),
    /// Every request answered by one and the same backend of the set.
    OneBackend(BTreeSet<String>),
    /// Every request answered, and the server saw the client as this address.
    SeenAs(IpAddr),
    /// No answer at all.
    Silence,
}

/// How long a check waits for answers, when not the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patience {
    /// Wait per request.
    pub timeout: Duration,
    /// UDP datagrams per request.
    pub udp_tries: usize,
}

/// What checks that expect no answer wait: a connection a policy denies is dropped, so
/// every such probe lasts its whole timeout — bounded, so that the denied probes do not
/// dominate the run (an allowed connection answers within milliseconds).
pub const SILENCE_PATIENCE: Patience = Patience { timeout: Duration::from_millis(1000), udp_tries: 1 };

/// Why the reference model expects what a check expects (checks derived from the
/// NetworkPolicies deployed).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModelNote {
    /// Per target (index-aligned with the targets), the model's verdict in a few words.
    pub reasons: Vec<String>,
    /// The verdicts of the whole check, counted: the row's detail.
    pub summary: String,
}

/// One check: where the requests come from, where they go, what must come back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The row's title.
    pub title: String,
    /// The namespace the requests are sent from.
    pub from_netns: String,
    /// The targets.
    pub targets: Vec<Target>,
    /// Requests per target.
    pub count: usize,
    /// The expectation.
    pub expect: Expect,
    /// The reference model's verdicts behind the expectation, when policies are deployed.
    pub model: Option<ModelNote>,
    /// Waits other than the default (checks that expect silence).
    pub patience: Option<Patience>,
}

/// How many requests a Service check sends: enough that missing one of `backends` by chance
/// is unlikely (3 backends, 36 requests: (2/3)^36 · 3 ≈ 1e-6).
pub fn requests_for(backends: usize) -> usize {
    (12 * backends).max(12)
}

/// The Service port's backends: ready pods selected by the Service whose target port
/// resolves, with the port it resolves to on each.
fn backend_pods<'a>(view: &'a ClusterView, service: &Service, port: &ServicePort) -> Vec<(&'a PodInfo, u16)> {
    let namespace = service.namespace().unwrap_or_default();
    let Some(selector) = service.spec.as_ref().and_then(|s| s.selector.as_ref()).filter(|s| !s.is_empty()) else {
        return Vec::new();
    };
    view.pods
        .iter()
        .filter(|p| p.namespace == namespace && selector_matches(selector, p.pod.labels()))
        .filter_map(|p| Some((p, u16::try_from(resolve_target_port(port, &p.pod)?).ok()?)))
        .collect()
}

fn target_port_text(port: &ServicePort) -> String {
    match &port.target_port {
        Some(IntOrString::String(name)) => format!("→ {name}"),
        Some(IntOrString::Int(n)) => format!("→ {n}"),
        None => format!("→ {}", port.port),
    }
}

/// The model's verdicts on a set of connections, one per target.
#[derive(Default)]
struct Judged {
    targets: Vec<Target>,
    names: Vec<String>,
    reasons: Vec<String>,
    tally: Tally,
}

impl Judged {
    fn push(&mut self, target: Target, name: String, reason: String) {
        self.tally.add(&reason);
        self.targets.push(target);
        self.names.push(name);
        self.reasons.push(reason);
    }

    fn note(&self) -> ModelNote {
        ModelNote { reasons: self.reasons.clone(), summary: self.tally.to_string() }
    }

    fn pods(&self) -> usize {
        self.names.iter().collect::<BTreeSet<_>>().len()
    }
}

/// A Service check's note: each backend's verdict for this client, counted.
fn backends_note(reasons: &[String]) -> ModelNote {
    let mut tally = Tally::default();
    for reason in reasons {
        tally.add(reason);
    }
    ModelNote { reasons: Vec::new(), summary: format!("backends: {tally}") }
}

/// Every pod → every other pod, on its first TCP port (no policy deployed).
fn plan_pod_to_pod(view: &ClusterView, checks: &mut Vec<Check>) {
    for from in &view.pods {
        let others: Vec<&PodInfo> = view.pods.iter().filter(|p| p.key() != from.key()).collect();
        if others.is_empty() {
            continue;
        }
        let same = others.iter().filter(|p| p.node == from.node).count();
        checks.push(Check {
            title: format!(
                "pod {} ({}) → {} pods ({same} same node, {} other nodes)",
                from.key(),
                from.node,
                others.len(),
                others.len() - same
            ),
            from_netns: from.netns.clone(),
            targets: others
                .iter()
                .map(|p| {
                    let port = p.probe_port();
                    Target { proto: port.proto, addr: SocketAddr::new(p.ip, port.port) }
                })
                .collect(),
            count: 1,
            expect: Expect::Names(others.iter().map(|p| p.name.clone()).collect()),
            model: None,
            patience: None,
        });
    }
}

/// Every pod → every port (TCP and UDP) of every other pod, split by the model's verdict:
/// a row of what must answer (each target as itself) and a row of what must not.
fn plan_pod_to_pod_policies(view: &ClusterView, policies: &Policies, checks: &mut Vec<Check>) {
    for from in &view.pods {
        let (mut allowed, mut denied) = (Judged::default(), Judged::default());
        for to in view.pods.iter().filter(|p| p.key() != from.key()) {
            for port in &to.ports {
                let verdict = policies.pod_to_pod(&from.pod, &to.pod, port.proto, port.port);
                let target = Target { proto: port.proto, addr: SocketAddr::new(to.ip, port.port) };
                let side = if verdict.allowed() { &mut allowed } else { &mut denied };
                side.push(target, to.name.clone(), explain(&verdict));
            }
        }
        for (judged, word) in [(allowed, "allowed"), (denied, "denied")] {
            if judged.targets.is_empty() {
                continue;
            }
            let silent = word == "denied";
            checks.push(Check {
                title: format!(
                    "pod {} ({}) → {} ports of {} pods {word}",
                    from.key(),
                    from.node,
                    judged.targets.len(),
                    judged.pods()
                ),
                from_netns: from.netns.clone(),
                targets: judged.targets.clone(),
                count: 1,
                expect: if silent { Expect::Silence } else { Expect::Names(judged.names.clone()) },
                model: Some(judged.note()),
                patience: silent.then_some(SILENCE_PATIENCE),
            });
        }
    }
}

/// The non-disruptive checks for what is deployed. With NetworkPolicies deployed, every
/// expectation comes from the reference model: pod → pod on every port (TCP and UDP),
/// Services and NodePorts (from a client all backends allow, and from one they all deny),
/// hostPorts from another node's pod its egress policies allow, egress to the outside.
pub fn plan(view: &ClusterView, layout: &Layout) -> Vec<Check> {
    let mut checks = Vec::new();
    match &view.policies {
        None => plan_pod_to_pod(view, &mut checks),
        Some(policies) => plan_pod_to_pod_policies(view, policies, &mut checks),
    }
    // Services: every port from a client pod; affinity; NodePorts from outside.
    let mut services: Vec<&Service> = view.services.iter().collect();
    services.sort_by_key(|s| (s.namespace(), s.name_any()));
    for service in services {
        let Some(spec) = service.spec.as_ref() else { continue };
        let namespace = service.namespace().unwrap_or_default();
        let key = format!("{namespace}/{}", service.name_any());
        let cluster_ip = spec.cluster_ip.as_deref().and_then(|ip| ip.parse::<IpAddr>().ok());
        let affinity = spec.session_affinity.as_deref() == Some("ClientIP");
        let local = spec.external_traffic_policy.as_deref() == Some("Local");
        let spread = |expected: BTreeSet<String>| {
            if affinity { Expect::OneBackend(expected) } else { Expect::AllBackends(expected) }
        };
        for port in spec.ports.iter().flatten() {
            let Some(proto) = Proto::from_kubernetes(port.protocol.as_deref()) else { continue };
            let Ok(service_port) = u16::try_from(port.port) else { continue };
            let backends = backend_pods(view, service, port);
            let expected: BTreeSet<String> = backends.iter().map(|(p, _)| p.name.clone()).collect();
            if expected.is_empty() {
                continue;
            }
            let port_text = format!("{service_port}/{} ({})", proto.kubernetes_name(), target_port_text(port));
            let candidates = view.pods.iter().filter(|p| !expected.contains(&p.name) || p.namespace != namespace);
            if let Some(ip) = cluster_ip {
                let target = Target { proto, addr: SocketAddr::new(ip, service_port) };
                match &view.policies {
                    None => {
                        if let Some(client) = candidates.clone().next().or(view.pods.first()) {
                            checks.push(Check {
                                title: format!(
                                    "service {key} {port_text} from {}: {} backends",
                                    client.name,
                                    expected.len()
                                ),
                                from_netns: client.netns.clone(),
                                targets: vec![target],
                                count: requests_for(expected.len()),
                                expect: spread(expected.clone()),
                                model: None,
                                patience: None,
                            });
                        }
                    }
                    Some(policies) => {
                        // The first client every backend allows, and the first every backend
                        // denies (after DNAT, on the backend's port). A client only some
                        // backends allow is not probed: which backend a request reaches is
                        // the load balancer's choice.
                        let verdicts = |client: &PodInfo| -> Vec<_> {
                            backends.iter().map(|(b, p)| policies.pod_to_pod(&client.pod, &b.pod, proto, *p)).collect()
                        };
                        let judged: Vec<(&PodInfo, Vec<_>)> = candidates.clone().map(|c| (c, verdicts(c))).collect();
                        let all = judged.iter().find(|(_, v)| v.iter().all(|v| v.allowed()));
                        let none = judged.iter().find(|(_, v)| v.iter().all(|v| !v.allowed()));
                        if let Some((client, v)) = all {
                            let reasons: Vec<String> = v.iter().map(explain).collect();
                            checks.push(Check {
                                title: format!(
                                    "service {key} {port_text} from {}: {} backends",
                                    client.name,
                                    expected.len()
                                ),
                                from_netns: client.netns.clone(),
                                targets: vec![target],
                                count: requests_for(expected.len()),
                                expect: spread(expected.clone()),
                                model: Some(backends_note(&reasons)),
                                patience: None,
                            });
                        }
                        if let Some((client, v)) = none {
                            let reasons: Vec<String> = v.iter().map(explain).collect();
                            checks.push(Check {
                                title: format!(
                                    "service {key} {port_text} from {}: {} backends, all denied",
                                    client.key(),
                                    expected.len()
                                ),
                                from_netns: client.netns.clone(),
                                targets: vec![target],
                                count: 2,
                                expect: Expect::Silence,
                                model: Some(backends_note(&reasons)),
                                patience: Some(SILENCE_PATIENCE),
                            });
                        }
                    }
                }
            }
            let Some(node_port) = port.node_port.and_then(|p| u16::try_from(p).ok()) else { continue };
            for node in &view.nodes {
                let reached: Vec<&(&PodInfo, u16)> =
                    backends.iter().filter(|(p, _)| !local || p.node == node.name).collect();
                if reached.is_empty() {
                    continue;
                }
                let expected: BTreeSet<String> = reached.iter().map(|(p, _)| p.name.clone()).collect();
                let title = format!(
                    "nodeport {key} {}:{node_port}/{} from outside via {}: {} backends",
                    node.ip,
                    proto.kubernetes_name(),
                    node.name,
                    expected.len()
                );
                let target = Target { proto, addr: SocketAddr::new(node.ip, node_port) };
                let mut check = Check {
                    title,
                    from_netns: layout.outside_netns(),
                    targets: vec![target],
                    count: requests_for(expected.len()),
                    expect: spread(expected),
                    model: None,
                    patience: None,
                };
                if let Some(policies) = &view.policies {
                    // The backend sees the gateway's join address (Cluster: SNAT), or the
                    // client's own (Local).
                    let source = if local { Some(IpAddr::V4(GATEWAY_IP)) } else { node.join_ip };
                    let Some(source) = source else { continue };
                    let verdicts: Vec<_> =
                        reached.iter().map(|(b, p)| policies.address_to_pod(source, &b.pod, proto, *p)).collect();
                    let reasons: Vec<String> = verdicts.iter().map(explain).collect();
                    check.model = Some(backends_note(&reasons));
                    if verdicts.iter().all(|v| !v.allowed()) {
                        check.title.push_str(", all denied");
                        check.count = 2;
                        check.expect = Expect::Silence;
                        check.patience = Some(SILENCE_PATIENCE);
                    } else if !verdicts.iter().all(|v| v.allowed()) {
                        // Some backends allow, some do not: not probed (see above).
                        continue;
                    }
                }
                checks.push(check);
            }
        }
    }
    // hostPorts: from outside, and from a pod on another node, each to the pod's node IP.
    // The traffic reaches the pod from its own node (portmap, then the management port), so
    // only the sending pod's egress policies matter.
    for pod in &view.pods {
        let Some(node_ip) = view.node_ip(&pod.node) else { continue };
        for (proto, host_port, container_port) in host_ports(&pod.pod) {
            let target = Target { proto, addr: SocketAddr::new(node_ip, host_port) };
            let remote = view.pods.iter().find(|p| {
                p.node != pod.node
                    && view
                        .policies
                        .as_ref()
                        .is_none_or(|m| m.pod_to_address(&p.pod, node_ip, proto, host_port).allowed())
            });
            let mut sources = vec![("outside".to_owned(), layout.outside_netns())];
            if let Some(remote) = remote {
                sources.push((format!("pod {} ({})", remote.key(), remote.node), remote.netns.clone()));
            }
            for (from, netns) in sources {
                checks.push(Check {
                    title: format!(
                        "hostport {} {node_ip}:{host_port}/{} (→ {container_port}) from {from}",
                        pod.key(),
                        proto.kubernetes_name()
                    ),
                    from_netns: netns,
                    targets: vec![target],
                    count: 1,
                    expect: Expect::Names(vec![pod.name.clone()]),
                    model: None,
                    patience: None,
                });
            }
        }
    }
    // Pod → outside, seen as the node (or denied by the pod's egress policies).
    for pod in &view.pods {
        let Some(node_ip) = view.node_ip(&pod.node) else { continue };
        let target = Target { proto: Proto::Tcp, addr: SocketAddr::new(IpAddr::V4(OUTSIDE_IP), OUTSIDE_PORT) };
        let verdict = view
            .policies
            .as_ref()
            .map(|m| m.pod_to_address(&pod.pod, IpAddr::V4(OUTSIDE_IP), Proto::Tcp, OUTSIDE_PORT));
        let model = verdict.as_ref().map(|v| ModelNote { reasons: vec![explain(v)], summary: explain(v) });
        if verdict.as_ref().is_some_and(|v| !v.allowed()) {
            checks.push(Check {
                title: format!("pod {} → outside {OUTSIDE_IP}:{OUTSIDE_PORT} denied", pod.key()),
                from_netns: pod.netns.clone(),
                targets: vec![target],
                count: 1,
                expect: Expect::Silence,
                model,
                patience: Some(SILENCE_PATIENCE),
            });
            continue;
        }
        checks.push(Check {
            title: format!("pod {} → outside {OUTSIDE_IP}:{OUTSIDE_PORT} seen as {} ({node_ip})", pod.key(), pod.node),
            from_netns: pod.netns.clone(),
            targets: vec![target],
            count: 1,
            expect: Expect::SeenAs(node_ip),
            model,
            patience: None,
        });
    }
    checks
}

/// The pod's hostPorts: (protocol, hostPort, containerPort), in declaration order.
pub fn host_ports(pod: &Pod) -> Vec<(Proto, u16, u16)> {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let host = u16::try_from(p.host_port?).ok().filter(|h| *h > 0)?;
            let container = u16::try_from(p.container_port).ok()?;
            Some((Proto::from_kubernetes(p.protocol.as_deref())?, host, container))
        })
        .collect()
}

/// Sends requests from inside a namespace.
pub trait Prober: Sync {
    /// Probes `targets` from `netns`.
    fn probe(
        &self,
        netns: &str,
        targets: &[Target],
        options: ProbeOptions,
    ) -> impl Future<Output = Result<Vec<TargetReport>, String>> + Send;
}

/// A check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// The row's title.
    pub title: String,
    /// Whether it passed.
    pub passed: bool,
    /// What went wrong, or a short note.
    pub detail: String,
    /// Median latency of the answered requests.
    pub latency: Option<Duration>,
    /// How many times it ran (failures are retried until a deadline).
    pub tries: u32,
}

fn median_latency(attempts: &[&Attempt]) -> Option<Duration> {
    let mut answered: Vec<u64> = attempts.iter().filter(|a| a.reply.is_some()).map(|a| a.latency_us).collect();
    if answered.is_empty() {
        return None;
    }
    answered.sort_unstable();
    Some(Duration::from_micros(answered[answered.len() / 2]))
}

/// Judges the answers to a check. Pure. With the reference model's note, a passing row
/// says which verdicts it confirmed and a failing target says what the model expected.
pub fn judge(check: &Check, reports: &[TargetReport]) -> (bool, String, Option<Duration>) {
    let (passed, mut detail, latency) = judge_answers(check, reports);
    if let Some(note) = &check.model
        && passed
        && !note.summary.is_empty()
    {
        detail.push_str(&format!("; model: {}", note.summary));
    }
    (passed, detail, latency)
}

/// The model's verdict for target `i`, as a suffix.
fn model_reason(check: &Check, i: usize) -> String {
    match check.model.as_ref().and_then(|m| m.reasons.get(i)) {
        Some(reason) => format!(" [model: {reason}]"),
        None => String::new(),
    }
}

fn judge_answers(check: &Check, reports: &[TargetReport]) -> (bool, String, Option<Duration>) {
    let attempts: Vec<&Attempt> = reports.iter().flat_map(|r| r.attempts.iter()).collect();
    let latency = median_latency(&attempts);
    let unanswered: Vec<String> = reports
        .iter()
        .flat_map(|r| r.attempts.iter().filter(|a| a.reply.is_none()).map(move |a| (r.target, a)))
        .map(|(t, a)| format!("{t}: {}", a.error.as_deref().unwrap_or("no answer")))
        .collect();
    let names: BTreeMap<String, usize> =
        attempts.iter().filter_map(|a| a.reply.as_ref()).fold(BTreeMap::new(), |mut m, r| {
            *m.entry(r.name.clone()).or_default() += 1;
            m
        });
    let first_unanswered = |n: usize| -> String {
        let mut text = unanswered.iter().take(n).cloned().collect::<Vec<_>>().join("; ");
        if unanswered.len() > n {
            text.push_str(&format!("; … {} more", unanswered.len() - n));
        }
        text
    };
    let total = attempts.len();
    match &check.expect {
        Expect::Names(expected) => {
            let mut wrong = Vec::new();
            for (i, report) in reports.iter().enumerate() {
                let want = expected.get(i).map(String::as_str).unwrap_or("");
                for attempt in &report.attempts {
                    match &attempt.reply {
                        Some(reply) if reply.name == want => {}
                        Some(reply) => wrong.push(format!(
                            "{}: answered by {} instead of {want}{}",
                            report.target,
                            reply.name,
                            model_reason(check, i)
                        )),
                        None => wrong.push(format!(
                            "{} ({want}): {}{}",
                            report.target,
                            attempt.error.as_deref().unwrap_or("no answer"),
                            model_reason(check, i)
                        )),
                    }
                }
            }
            if wrong.is_empty() {
                (true, format!("{total}/{total} answered"), latency)
            } else {
                let shown = wrong.iter().take(3).cloned().collect::<Vec<_>>().join("; ");
                (false, format!("{}/{total} failed: {shown}", wrong.len()), latency)
            }
        }
        Expect::AllBackends(expected) => {
            let unexpected: Vec<&String> = names.keys().filter(|n| !expected.contains(*n)).collect();
            let missing: Vec<&String> = expected.iter().filter(|n| !names.contains_key(*n)).collect();
            let spread = names.iter().map(|(n, c)| format!("{n}×{c}")).collect::<Vec<_>>().join(" ");
            if unanswered.is_empty() && unexpected.is_empty() && missing.is_empty() {
                (true, format!("{total} requests: {spread}"), latency)
            } else {
                let mut problems = Vec::new();
                if !unanswered.is_empty() {
                    problems.push(format!("{}/{total} unanswered ({})", unanswered.len(), first_unanswered(2)));
                }
                if !missing.is_empty() {
                    problems.push(format!("never reached: {}", join(&missing)));
                }
                if !unexpected.is_empty() {
                    problems.push(format!("answered by non-backends: {}", join(&unexpected)));
                }
                let spread = if spread.is_empty() { String::new() } else { format!(" [{spread}]") };
                (false, format!("{}{spread}", problems.join("; ")), latency)
            }
        }
        Expect::OneBackend(expected) => {
            let spread = names.iter().map(|(n, c)| format!("{n}×{c}")).collect::<Vec<_>>().join(" ");
            let sticky = names.len() == 1 && names.keys().all(|n| expected.contains(n));
            if unanswered.is_empty() && sticky {
                (true, format!("{total} requests, all to {spread} (ClientIP affinity)"), latency)
            } else if !unanswered.is_empty() {
                (false, format!("{}/{total} unanswered ({})", unanswered.len(), first_unanswered(2)), latency)
            } else {
                (false, format!("affinity broken: answered by {spread}"), latency)
            }
        }
        Expect::SeenAs(ip) => {
            let seen: BTreeSet<IpAddr> =
                attempts.iter().filter_map(|a| a.reply.as_ref()).map(|r| r.from.ip()).collect();
            if unanswered.is_empty() && seen.iter().all(|s| s == ip) && !seen.is_empty() {
                (true, format!("seen as {ip}"), latency)
            } else if !unanswered.is_empty() {
                (false, first_unanswered(2), latency)
            } else {
                (
                    false,
                    format!(
                        "seen as {} instead of {ip}",
                        seen.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                    ),
                    latency,
                )
            }
        }
        Expect::Silence => {
            if names.is_empty() {
                let detail = if total > 1 {
                    format!("no answer to {total} requests, as expected")
                } else {
                    "no answer, as expected".into()
                };
                (true, detail, None)
            } else {
                let answered: Vec<String> = reports
                    .iter()
                    .enumerate()
                    .filter_map(|(i, r)| {
                        let reply = r.attempts.iter().find_map(|a| a.reply.as_ref())?;
                        Some(format!("{} by {}{}", r.target, reply.name, model_reason(check, i)))
                    })
                    .collect();
                let shown = answered.iter().take(3).cloned().collect::<Vec<_>>().join("; ");
                let more =
                    if answered.len() > 3 { format!("; … {} more", answered.len() - 3) } else { String::new() };
                (
                    false,
                    format!(
                        "still answered by {} ({}/{} targets: {shown}{more})",
                        names.keys().cloned().collect::<Vec<_>>().join(", "),
                        answered.len(),
                        reports.len()
                    ),
                    latency,
                )
            }
        }
    }
}

fn join(names: &[&String]) -> String {
    names.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

/// Runs one check once.
pub async fn run_once<P: Prober>(prober: &P, check: &Check, timeout: Duration) -> (bool, String, Option<Duration>) {
    let (timeout, udp_tries) = check.patience.map_or((timeout, 2), |p| (p.timeout, p.udp_tries));
    let options = ProbeOptions { count: check.count, timeout, udp_tries, give_up_after: 3 };
    match prober.probe(&check.from_netns, &check.targets, options).await {
        Ok(reports) => judge(check, &reports),
        Err(error) => (false, format!("probe failed: {error}"), None),
    }
}

/// Runs every check (in parallel, a few at a time); a failing check is tried again until
/// `retry_for` has passed since the start, so that flows still being installed are waited
/// for rather than reported.
pub async fn run_all<P: Prober>(
    prober: &P,
    checks: &[Check],
    timeout: Duration,
    retry_for: Duration,
    mut progress: impl FnMut(usize, usize),
) -> Vec<CheckResult> {
    let started = Instant::now();
    let mut results: Vec<Option<CheckResult>> = vec![None; checks.len()];
    let mut tries = vec![0u32; checks.len()];
    loop {
        let pending: Vec<usize> =
            (0..checks.len()).filter(|&i| results[i].as_ref().is_none_or(|r| !r.passed)).collect();
        let mut done = checks.len() - pending.len();
        progress(done, checks.len());
        // A window of checks in flight: a slow one (silence lasts its whole timeout) holds
        // one slot, not a whole batch.
        let futures: Vec<_> = pending.iter().map(|&i| run_once(prober, &checks[i], timeout)).collect();
        run_bounded(futures, CHECKS_IN_FLIGHT, |k, (passed, detail, latency)| {
            let i = pending[k];
            tries[i] += 1;
            results[i] = Some(CheckResult { title: checks[i].title.clone(), passed, detail, latency, tries: tries[i] });
            if passed {
                done += 1;
                progress(done, checks.len());
            }
        })
        .await;
        progress(done, checks.len());
        let all_passed = results.iter().all(|r| r.as_ref().is_some_and(|r| r.passed));
        if all_passed || started.elapsed() >= retry_for {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    results.into_iter().flatten().collect()
}

/// How many checks run at once.
const CHECKS_IN_FLIGHT: usize = 8;

/// Awaits `futures`, at most `limit` at a time, in order of start, calling `on_done` with
/// each one's index and output as it finishes (a tiny bounded `join_all`, to avoid a
/// dependency).
async fn run_bounded<F: Future>(futures: Vec<F>, limit: usize, mut on_done: impl FnMut(usize, F::Output)) {
    let mut futures: Vec<Option<std::pin::Pin<Box<F>>>> = futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut next = 0;
    let mut running: Vec<usize> = Vec::new();
    std::future::poll_fn(|cx| {
        loop {
            while running.len() < limit.max(1) && next < futures.len() {
                running.push(next);
                next += 1;
            }
            let mut finished = false;
            let mut k = 0;
            while k < running.len() {
                let i = running[k];
                let poll = match futures[i].as_mut() {
                    Some(future) => future.as_mut().poll(cx),
                    None => std::task::Poll::Pending,
                };
                match poll {
                    std::task::Poll::Ready(output) => {
                        futures[i] = None;
                        running.swap_remove(k);
                        on_done(i, output);
                        finished = true;
                    }
                    std::task::Poll::Pending => k += 1,
                }
            }
            if running.is_empty() && next >= futures.len() {
                return std::task::Poll::Ready(());
            }
            if !finished {
                return std::task::Poll::Pending;
            }
        }
    })
    .await;
}

/// Formats a latency for the table.
pub fn format_latency(latency: Option<Duration>) -> String {
    match latency {
        None => "-".into(),
        Some(d) if d < Duration::from_millis(10) => format!("{:.2} ms", d.as_secs_f64() * 1e3),
        Some(d) if d < Duration::from_secs(10) => format!("{:.0} ms", d.as_secs_f64() * 1e3),
        Some(d) => format!("{:.1} s", d.as_secs_f64()),
    }
}

/// The result table (check, result, latency), the failures' details, and the closing
/// `checks passed: N/M` line.
pub fn table(results: &[CheckResult]) -> String {
    let width = results.iter().map(|r| r.title.chars().count()).max().unwrap_or(5).max(5);
    let mut out = format!("{:<width$}  {:<6}  {:>9}  {}\n", "CHECK", "RESULT", "LATENCY", "DETAIL");
    for r in results {
        let result = if r.passed { "ok" } else { "FAIL" };
        let mut detail = r.detail.clone();
        if r.tries > 1 {
            detail.push_str(&format!(" (try {})", r.tries));
        }
        out.push_str(&format!("{:<width$}  {:<6}  {:>9}  {}\n", r.title, result, format_latency(r.latency), detail));
    }
    let passed = results.iter().filter(|r| r.passed).count();
    out.push_str(&format!("checks passed: {passed}/{}\n", results.len()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::echo::Reply;
    use serde_json::{Value, json};
    use std::net::Ipv4Addr;
    use std::sync::Mutex;

    fn node(i: u8) -> Node {
        serde_json::from_value(json!({"metadata": {"name": format!("node{i}")},
            "status": {"addresses": [{"type": "InternalIP", "address": format!("172.18.0.{}", 10 + i)}]}}))
        .unwrap()
    }

    fn pod(name: &str, node: u8, ip: &str, labels: Value, ports: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "demo", "uid": format!("uid-{name}"), "labels": labels},
            "spec": {"nodeName": format!("node{node}"), "containers": [{"name": "c", "ports": ports}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap()
    }

    fn scenario() -> ClusterView {
        let http = json!([{"name": "http", "containerPort": 8080}, {"containerPort": 5300, "protocol": "UDP"}]);
        let pods = [
            pod("web-1", 1, "10.244.1.5", json!({"app": "web"}), http.clone()),
            pod("web-2", 2, "10.244.2.5", json!({"app": "web"}), http.clone()),
            pod("client", 1, "10.244.1.6", json!({}), json!([])),
        ];
        let mut pending = pod("late", 2, "10.244.2.9", json!({}), json!([]));
        pending.status.as_mut().unwrap().conditions = None;
        let services: Vec<Service> = vec![
            serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "demo"}, "spec": {
                "type": "NodePort", "clusterIP": "10.96.0.10", "selector": {"app": "web"},
                "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http", "nodePort": 30080},
                          {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5300}]}}))
            .unwrap(),
            serde_json::from_value(json!({"metadata": {"name": "sticky", "namespace": "demo"}, "spec": {
                "clusterIP": "10.96.0.11", "selector": {"app": "web"}, "sessionAffinity": "ClientIP",
                "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}]}}))
            .unwrap(),
        ];
        let mut all = pods.to_vec();
        all.push(pending);
        ClusterView::new(&Layout::new("sklab").unwrap(), &[node(1), node(2)], &all, &services)
    }

    /// A model of a working cluster: pods answer on their ports, Services spread (or stick),
    /// NodePorts reach backends, egress is SNATed to the node. `broken` backends never answer
    /// through a Service.
    struct Model {
        view: ClusterView,
        broken: Vec<String>,
        calls: Mutex<usize>,
    }

    impl Prober for Model {
        async fn probe(
            &self,
            netns: &str,
            targets: &[Target],
            options: ProbeOptions,
        ) -> Result<Vec<TargetReport>, String> {
            let from_pod = self.view.pods.iter().find(|p| p.netns == netns);
            let from_ip = from_pod.map(|p| p.ip).unwrap_or(IpAddr::V4(Ipv4Addr::new(172, 18, 0, 254)));
            let mut reports = Vec::new();
            for target in targets {
                let mut attempts = Vec::new();
                for n in 0..options.count {
                    *self.calls.lock().unwrap() += 1;
                    let answer = |name: &str, from: IpAddr| Attempt {
                        reply: Some(Reply { name: name.into(), from: SocketAddr::new(from, 40000) }),
                        latency_us: 300,
                        error: None,
                    };
                    let silence = Attempt { reply: None, latency_us: 2_000_000, error: Some("no answer".into()) };
                    let ip = target.addr.ip();
                    let attempt = if let Some(p) = self.view.pods.iter().find(|p| p.ip == ip) {
                        answer(&p.name, from_ip)
                    } else if ip == IpAddr::V4(OUTSIDE_IP) {
                        let node = from_pod.map(|p| p.node.clone()).unwrap_or_default();
                        answer("outside", self.view.node_ip(&node).unwrap())
                    } else {
                        let sticky = ip.to_string() == "10.96.0.11";
                        let backends = ["web-1", "web-2"];
                        let name = if sticky { backends[0] } else { backends[n % 2] };
                        if self.broken.iter().any(|b| b == name) { silence } else { answer(name, from_ip) }
                    };
                    attempts.push(attempt);
                }
                reports.push(TargetReport { target: *target, attempts });
            }
            Ok(reports)
        }
    }

    #[test]
    fn checks_are_derived_from_what_is_deployed() {
        let view = scenario();
        assert_eq!(view.pods.len(), 3);
        assert_eq!(view.not_ready["demo/late"], "on node2, not ready");
        let checks = plan(&view, &Layout::new("sklab").unwrap());
        let titles: Vec<&str> = checks.iter().map(|c| c.title.as_str()).collect();
        assert_eq!(
            titles,
            [
                "pod demo/client (node1) → 2 pods (1 same node, 1 other nodes)",
                "pod demo/web-1 (node1) → 2 pods (1 same node, 1 other nodes)",
                "pod demo/web-2 (node2) → 2 pods (0 same node, 2 other nodes)",
                "service demo/sticky 80/TCP (→ 8080) from client: 2 backends",
                "service demo/web 80/TCP (→ http) from client: 2 backends",
                "nodeport demo/web 172.18.0.11:30080/TCP from outside via node1: 2 backends",
                "nodeport demo/web 172.18.0.12:30080/TCP from outside via node2: 2 backends",
                "service demo/web 53/UDP (→ 5300) from client: 2 backends",
                "pod demo/client → outside 198.51.100.1:80 seen as node1 (172.18.0.11)",
                "pod demo/web-1 → outside 198.51.100.1:80 seen as node1 (172.18.0.11)",
                "pod demo/web-2 → outside 198.51.100.1:80 seen as node2 (172.18.0.12)",
            ]
        );
        // Pod → pod goes to each pod's first TCP port; the UDP Service port to 53/UDP.
        assert_eq!(checks[0].targets[0].to_string(), "tcp:10.244.1.5:8080");
        assert_eq!(checks[7].targets[0].to_string(), "udp:10.96.0.10:53");
        assert_eq!(checks[7].count, 24);
        assert!(matches!(&checks[3].expect, Expect::OneBackend(b) if b.len() == 2));
        assert_eq!(checks[5].from_netns, "sklab-outside");
    }

    #[test]
    fn host_ports_are_probed_from_outside_and_from_another_node() {
        let mut view = scenario();
        let published = pod(
            "hp",
            1,
            "10.244.1.9",
            json!({}),
            json!([{"containerPort": 8080, "hostPort": 18080},
                   {"containerPort": 5353, "protocol": "UDP", "hostPort": 15353},
                   {"containerPort": 9000}]),
        );
        let layout = Layout::new("sklab").unwrap();
        view = ClusterView::new(
            &layout,
            &[node(1), node(2)],
            &[view.pods[0].pod.clone(), view.pods[1].pod.clone(), view.pods[2].pod.clone(), published],
            &view.services,
        );
        let checks = plan(&view, &layout);
        let host_port_checks: Vec<&Check> = checks.iter().filter(|c| c.title.starts_with("hostport")).collect();
        let titles: Vec<&str> = host_port_checks.iter().map(|c| c.title.as_str()).collect();
        assert_eq!(
            titles,
            [
                "hostport demo/hp 172.18.0.11:18080/TCP (→ 8080) from outside",
                "hostport demo/hp 172.18.0.11:18080/TCP (→ 8080) from pod demo/web-2 (node2)",
                "hostport demo/hp 172.18.0.11:15353/UDP (→ 5353) from outside",
                "hostport demo/hp 172.18.0.11:15353/UDP (→ 5353) from pod demo/web-2 (node2)",
            ]
        );
        assert_eq!(host_port_checks[0].from_netns, "sklab-outside");
        assert_eq!(host_port_checks[1].from_netns, layout.pod_netns("node2", "uid-web-2"));
        assert_eq!(host_port_checks[2].targets[0].to_string(), "udp:172.18.0.11:15353");
        assert_eq!(host_port_checks[3].expect, Expect::Names(vec!["hp".into()]));
        // Answered by another pod, or not at all: named.
        let target = host_port_checks[0].targets[0];
        let wrong = vec![TargetReport {
            target,
            attempts: vec![Attempt {
                reply: Some(Reply { name: "web-1".into(), from: "10.244.1.2:4000".parse().unwrap() }),
                latency_us: 1,
                error: None,
            }],
        }];
        let (ok, detail, _) = judge(host_port_checks[0], &wrong);
        assert!(!ok && detail.contains("answered by web-1 instead of hp"), "{detail}");
    }

    #[tokio::test]
    async fn a_working_cluster_passes_and_a_dead_backend_is_named() {
        let view = scenario();
        let checks = plan(&view, &Layout::new("sklab").unwrap());
        let model = Model { view: view.clone(), broken: vec![], calls: Mutex::new(0) };
        let results = run_all(&model, &checks, Duration::from_secs(1), Duration::ZERO, |_, _| {}).await;
        assert!(results.iter().all(|r| r.passed), "{}", table(&results));
        let text = table(&results);
        assert!(text.ends_with("checks passed: 11/11\n"), "{text}");
        assert!(text.contains("0.30 ms"), "{text}");

        let model = Model { view, broken: vec!["web-2".into()], calls: Mutex::new(0) };
        let results = run_all(&model, &checks, Duration::from_secs(1), Duration::ZERO, |_, _| {}).await;
        let failed: Vec<&CheckResult> = results.iter().filter(|r| !r.passed).collect();
        assert_eq!(failed.len(), 4, "{}", table(&results));
        assert!(failed[0].detail.contains("never reached: web-2"), "{}", failed[0].detail);
        assert!(table(&results).ends_with("checks passed: 7/11\n"));
    }

    #[test]
    fn judging_affinity_egress_and_silence() {
        let target: Target = "tcp:10.96.0.11:80".parse().unwrap();
        let reply = |name: &str, from: &str| Attempt {
            reply: Some(Reply { name: name.into(), from: from.parse().unwrap() }),
            latency_us: 1000,
            error: None,
        };
        let check = |expect| Check {
            title: "t".into(),
            from_netns: "x".into(),
            targets: vec![target],
            count: 2,
            expect,
            model: None,
            patience: None,
        };
        let both: BTreeSet<String> = ["a".to_string(), "b".to_string()].into();
        let report = |attempts| vec![TargetReport { target, attempts }];
        let (ok, detail, _) = judge(
            &check(Expect::OneBackend(both.clone())),
            &report(vec![reply("a", "1.1.1.1:1"), reply("b", "1.1.1.1:2")]),
        );
        assert!(!ok && detail.contains("affinity broken"), "{detail}");
        let (ok, _, _) =
            judge(&check(Expect::OneBackend(both)), &report(vec![reply("a", "1.1.1.1:1"), reply("a", "1.1.1.1:2")]));
        assert!(ok);
        let node: IpAddr = "172.18.0.11".parse().unwrap();
        let (ok, detail, _) = judge(&check(Expect::SeenAs(node)), &report(vec![reply("outside", "10.244.1.5:3")]));
        assert!(!ok && detail.contains("seen as 10.244.1.5 instead of 172.18.0.11"), "{detail}");
        let none = Attempt { reply: None, latency_us: 5, error: Some("connect: refused".into()) };
        let (ok, _, latency) = judge(&check(Expect::Silence), &report(vec![none.clone()]));
        assert!(ok && latency.is_none());
        let (ok, detail, _) = judge(&check(Expect::Silence), &report(vec![reply("old", "1.1.1.1:1")]));
        assert!(!ok && detail.contains("still answered by old"));
        let (ok, detail, _) = judge(&check(Expect::Names(vec!["p".into()])), &report(vec![none]));
        assert!(!ok && detail.contains("connect: refused"), "{detail}");
    }

    /// A pod with the master's address annotation (the model matches ipBlocks on it).
    fn pod_in(ns: &str, name: &str, node: u8, ip: &str, labels: Value, ports: Value) -> Pod {
        let mut p = pod(name, node, ip, labels, ports);
        p.metadata.namespace = Some(ns.into());
        let networks = json!({"default": {"ip_addresses": [format!("{ip}/24")], "mac_address": "0a:58:0a:f4:01:05",
            "gateway_ips": [], "routes": [], "mtu": 1400}});
        p.metadata.annotations = Some([("skein.dev/pod-networks".to_owned(), networks.to_string())].into());
        p
    }

    /// A shop isolated by policies next to an open namespace: a default deny, allow-from-app
    /// on a named port that two pods map to different numbers, an egress deny, a NodePort.
    fn policy_scenario() -> ClusterView {
        let http = |n: u16, other: u16| json!([{"name": "http", "containerPort": n}, {"name": "admin", "containerPort": other}]);
        let pods = vec![
            pod_in(
                "demo",
                "web-1",
                1,
                "10.244.1.5",
                json!({"app": "web"}),
                json!([{"containerPort": 8080}, {"containerPort": 5353, "protocol": "UDP"}]),
            ),
            pod_in("shop", "cart-1", 1, "10.244.1.7", json!({"app": "cart"}), http(8080, 9090)),
            pod_in("shop", "cart-2", 2, "10.244.2.7", json!({"app": "cart"}), http(9090, 8080)),
            pod_in("shop", "shopper", 2, "10.244.2.8", json!({"app": "shopper"}), json!([])),
        ];
        let services: Vec<Service> = vec![
            serde_json::from_value(json!({"metadata": {"name": "cart", "namespace": "shop"}, "spec": {
            "type": "NodePort", "clusterIP": "10.96.0.20", "selector": {"app": "cart"},
            "ports": [{"port": 80, "protocol": "TCP", "targetPort": "http", "nodePort": 30090}]}}))
            .unwrap(),
        ];
        let policies: Vec<NetworkPolicy> = [
            json!({"metadata": {"namespace": "shop", "name": "deny"}, "spec": {"podSelector": {}}}),
            json!({"metadata": {"namespace": "shop", "name": "cart"}, "spec": {
                "podSelector": {"matchLabels": {"app": "cart"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "shopper"}}}], "ports": [{"port": "http"}]}]}}),
            json!({"metadata": {"namespace": "shop", "name": "out"}, "spec": {
                "podSelector": {"matchLabels": {"app": "shopper"}}, "policyTypes": ["Egress"],
                "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "cart"}}}]}]}}),
        ]
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect();
        let mut n1 = node(1);
        n1.metadata.annotations =
            Some([(NODE_SUBNETS.to_owned(), r#"{"default":["10.244.1.0/24"]}"#.to_owned())].into());
        ClusterView::new(&Layout::new("sklab").unwrap(), &[n1, node(2)], &pods, &services).with_policies(
            &[],
            &pods,
            &policies,
        )
    }

    #[test]
    fn with_policies_every_expectation_comes_from_the_model() {
        let view = policy_scenario();
        assert_eq!(view.nodes[0].join_ip, Some("100.64.0.3".parse().unwrap()));
        let checks = plan(&view, &Layout::new("sklab").unwrap());
        let titles: Vec<&str> = checks.iter().map(|c| c.title.as_str()).collect();
        assert_eq!(
            titles,
            [
                "pod demo/web-1 (node1) → 5 ports of 3 pods denied",
                "pod shop/cart-1 (node1) → 2 ports of 1 pods allowed",
                "pod shop/cart-1 (node1) → 3 ports of 2 pods denied",
                "pod shop/cart-2 (node2) → 2 ports of 1 pods allowed",
                "pod shop/cart-2 (node2) → 3 ports of 2 pods denied",
                "pod shop/shopper (node2) → 2 ports of 2 pods allowed",
                "pod shop/shopper (node2) → 4 ports of 3 pods denied",
                "service shop/cart 80/TCP (→ http) from shopper: 2 backends",
                "service shop/cart 80/TCP (→ http) from demo/web-1: 2 backends, all denied",
                "nodeport shop/cart 172.18.0.11:30090/TCP from outside via node1: 2 backends, all denied",
                "pod demo/web-1 → outside 198.51.100.1:80 seen as node1 (172.18.0.11)",
                "pod shop/cart-1 → outside 198.51.100.1:80 seen as node1 (172.18.0.11)",
                "pod shop/cart-2 → outside 198.51.100.1:80 seen as node2 (172.18.0.12)",
                "pod shop/shopper → outside 198.51.100.1:80 denied",
            ]
        );
        // The named port: the shopper reaches http on each cart, never the other port.
        let allowed = &checks[5];
        assert_eq!(
            allowed.targets.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["tcp:10.244.1.7:8080", "tcp:10.244.2.7:9090"]
        );
        assert_eq!(allowed.expect, Expect::Names(vec!["cart-1".into(), "cart-2".into()]));
        let note = allowed.model.as_ref().unwrap();
        assert_eq!(note.summary, "egress shop/out spec.egress[0], ingress shop/cart spec.ingress[0] ×2");
        let denied = &checks[6];
        assert_eq!(denied.expect, Expect::Silence);
        assert_eq!(denied.patience, Some(SILENCE_PATIENCE));
        assert!(denied.targets.iter().any(|t| t.to_string() == "udp:10.244.1.5:5353"), "{:?}", denied.targets);
        assert_eq!(
            denied.model.as_ref().unwrap().summary,
            "egress denied (isolated by shop/out) ×2, ingress denied (isolated by shop/cart, shop/deny) ×2"
        );
        // An open pod → the shop is denied by ingress; the NodePort client (the join
        // address after SNAT) too; node2 has no subnet annotation, so no join address: its
        // NodePort row is left out rather than guessed.
        assert_eq!(
            checks[0].model.as_ref().unwrap().summary,
            "ingress denied (isolated by shop/cart, shop/deny) ×4, ingress denied (isolated by shop/deny) ×1"
        );
        assert_eq!(
            checks[9].model.as_ref().unwrap().summary,
            "backends: ingress denied (isolated by shop/cart, shop/deny) ×2"
        );
        assert!(view.open_client("node1").is_some_and(|p| p.name == "cart-2"));
    }

    /// A cluster that does (or, `enforce: false`, does not) enforce the model's verdicts.
    struct PolicyCluster {
        view: ClusterView,
        enforce: bool,
    }

    impl Prober for PolicyCluster {
        async fn probe(
            &self,
            netns: &str,
            targets: &[Target],
            options: ProbeOptions,
        ) -> Result<Vec<TargetReport>, String> {
            let policies = self.view.policies.as_ref().unwrap();
            let from = self.view.pods.iter().find(|p| p.netns == netns);
            let mut reports = Vec::new();
            for target in targets {
                let (ip, port) = (target.addr.ip(), target.addr.port());
                let attempts = (0..options.count)
                    .map(|n| {
                        // Who would answer, and is the connection allowed.
                        let (name, allowed) = if let Some(to) = self.view.pods.iter().find(|p| p.ip == ip) {
                            (
                                to.name.clone(),
                                policies.pod_to_pod(&from.unwrap().pod, &to.pod, target.proto, port).allowed(),
                            )
                        } else if ip == IpAddr::V4(OUTSIDE_IP) {
                            (
                                "outside".into(),
                                policies.pod_to_address(&from.unwrap().pod, ip, target.proto, port).allowed(),
                            )
                        } else {
                            let (backend, backend_port) = if n % 2 == 0 { ("cart-1", 8080) } else { ("cart-2", 9090) };
                            let to = &self.view.pods.iter().find(|p| p.name == backend).unwrap().pod;
                            let verdict = match from {
                                Some(from) => policies.pod_to_pod(&from.pod, to, target.proto, backend_port),
                                None => policies.address_to_pod(
                                    "100.64.0.3".parse().unwrap(),
                                    to,
                                    target.proto,
                                    backend_port,
                                ),
                            };
                            (backend.into(), verdict.allowed())
                        };
                        let seen = from.map(|p| self.view.node_ip(&p.node).unwrap()).unwrap_or(IpAddr::V4(GATEWAY_IP));
                        if allowed || !self.enforce {
                            Attempt {
                                reply: Some(Reply { name, from: SocketAddr::new(seen, 1) }),
                                latency_us: 100,
                                error: None,
                            }
                        } else {
                            Attempt { reply: None, latency_us: 1_000_000, error: Some("no answer".into()) }
                        }
                    })
                    .collect();
                reports.push(TargetReport { target: *target, attempts });
            }
            Ok(reports)
        }
    }

    #[tokio::test]
    async fn denied_rows_pass_on_silence_and_name_what_answered_when_nothing_is_enforced() {
        let view = policy_scenario();
        let checks = plan(&view, &Layout::new("sklab").unwrap());
        let enforcing = PolicyCluster { view: view.clone(), enforce: true };
        let results = run_all(&enforcing, &checks, Duration::from_secs(1), Duration::ZERO, |_, _| {}).await;
        let text = table(&results);
        assert!(results.iter().all(|r| r.passed), "{text}");
        assert!(
            text.contains(
                "no answer to 4 requests, as expected; model: egress denied (isolated by shop/out) ×2, ingress denied (isolated by shop/cart, shop/deny) ×2"
            ),
            "{text}"
        );
        assert!(
            text.contains("2/2 answered; model: egress shop/out spec.egress[0], ingress shop/cart spec.ingress[0] ×2"),
            "{text}"
        );

        let open = PolicyCluster { view, enforce: false };
        let results = run_all(&open, &checks, Duration::from_secs(1), Duration::ZERO, |_, _| {}).await;
        let failed: Vec<&CheckResult> = results.iter().filter(|r| !r.passed).collect();
        // Every row that expects silence fails, and says what the model said.
        assert_eq!(failed.len(), checks.iter().filter(|c| c.expect == Expect::Silence).count(), "{}", table(&results));
        let shopper = failed.iter().find(|r| r.title == "pod shop/shopper (node2) → 4 ports of 3 pods denied").unwrap();
        assert!(
            shopper.detail.contains("by web-1 [model: egress denied (isolated by shop/out)]"),
            "{}",
            shopper.detail
        );
    }
}

// ---- Jobs: run to completion, and what their programs say of their results ----

/// What a finished (or still running) Job's pods said: the `skein-allreduce` output of its
/// rank 0 (completion index 0), when the Job runs it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AllreduceOutput {
    /// `bench` rows: (size in bytes, algorithm, busbw GB/s text, #wrong text).
    pub bench_rows: Vec<(u64, String, String, String)>,
    /// `check`'s summary: (cases, wrong results).
    pub check: Option<(u64, u64)>,
}

/// Reads `skein-allreduce`'s output (its log lines): `bench` rows and `check`'s summary.
pub fn allreduce_output(lines: &[String]) -> AllreduceOutput {
    let mut out = AllreduceOutput::default();
    for line in lines {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() == 9
            && let Ok(size) = fields[0].parse::<u64>()
        {
            out.bench_rows.push((size, fields[4].to_string(), fields[7].to_string(), fields[8].to_string()));
        }
        if let Some(rest) = line.trim().strip_prefix("check: ") {
            // "N cases on R ranks, W wrong results (counted per rank)"
            let words: Vec<&str> = rest.split_whitespace().collect();
            let cases = words.first().and_then(|w| w.parse().ok());
            let wrong =
                words.iter().position(|w| *w == "wrong").and_then(|i| words.get(i.checked_sub(1)?)?.parse().ok());
            if let (Some(cases), Some(wrong)) = (cases, wrong) {
                out.check = Some((cases, wrong));
            }
        }
    }
    out
}

/// Whether a Job runs `skein-allreduce` (its image, or its command).
pub fn runs_allreduce(job: &k8s_openapi::api::batch::v1::Job) -> bool {
    job.spec.iter().flat_map(|s| s.template.spec.iter().flat_map(|p| p.containers.iter())).any(|c| {
        c.image.as_deref().is_some_and(|i| crate::podspec::repository(i) == "ghcr.io/skein-net/skein-allreduce")
            || c.command.iter().flatten().any(|a| a.ends_with("skein-allreduce"))
    })
}

/// The title of a Job's row.
pub fn job_title(job: &k8s_openapi::api::batch::v1::Job) -> String {
    let spec = job.spec.clone().unwrap_or_default();
    let mode = spec.completion_mode.unwrap_or_else(|| "NonIndexed".into());
    let completions = spec.completions.unwrap_or(1);
    let what = if runs_allreduce(job) { ", skein-allreduce results vs the reference" } else { "" };
    format!(
        "job {}/{} ({mode}, {completions} completions) runs to completion{what}",
        job.namespace().unwrap_or_default(),
        job.name_any()
    )
}

/// Judges a Job: complete, every pod that ran it on the nodes listed, and — for
/// `skein-allreduce` — rank 0's output shows results and none wrong. `rank0` is rank 0's
/// log. Pure.
pub fn judge_job(job: &k8s_openapi::api::batch::v1::Job, pods: &[Pod], rank0: &[String]) -> (bool, String) {
    let status = job.status.clone().unwrap_or_default();
    let condition =
        |kind: &str| status.conditions.iter().flatten().find(|c| c.type_ == kind && c.status == "True").cloned();
    let mut nodes: Vec<String> = pods
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded"))
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    nodes.sort();
    nodes.dedup();
    let ran = format!(
        "{} succeeded on {}",
        status.succeeded.unwrap_or(0),
        if nodes.is_empty() { "no node".to_string() } else { nodes.join(", ") }
    );
    if let Some(failed) = condition("Failed") {
        return (
            false,
            format!("Failed ({}: {}); {ran}", failed.reason.unwrap_or_default(), failed.message.unwrap_or_default()),
        );
    }
    if condition("Complete").is_none() {
        return (false, format!("not complete: {} active, {ran}", status.active.unwrap_or(0)));
    }
    let duration = match (status.start_time.as_ref(), status.completion_time.as_ref()) {
        (Some(start), Some(end)) => format!(" in {} s", end.0.as_second() - start.0.as_second()),
        _ => String::new(),
    };
    if !runs_allreduce(job) {
        return (true, format!("Complete{duration}; {ran}"));
    }
    let output = allreduce_output(rank0);
    if let Some((cases, wrong)) = output.check {
        return (wrong == 0, format!("Complete{duration}; {ran}; rank 0: check {cases} cases, {wrong} wrong"));
    }
    if output.bench_rows.is_empty() {
        return (false, format!("Complete{duration}; {ran}; rank 0 printed no results ({} log lines)", rank0.len()));
    }
    let wrong: Vec<String> =
        output.bench_rows.iter().filter(|r| r.3 != "0").map(|r| format!("{} B: {}", r.0, r.3)).collect();
    let (first, last) = (&output.bench_rows[0], &output.bench_rows[output.bench_rows.len() - 1]);
    let summary = format!(
        "rank 0: {} sizes {}–{} B, busbw {} GB/s at {} B ({})",
        output.bench_rows.len(),
        first.0,
        last.0,
        last.2,
        last.0,
        last.1
    );
    if wrong.is_empty() {
        (true, format!("Complete{duration}; {ran}; {summary}, 0 wrong"))
    } else {
        (false, format!("Complete{duration}; {ran}; {summary}; WRONG results at {}", wrong.join(", ")))
    }
}

#[cfg(test)]
mod job_tests {
    use super::*;
    use serde_json::json;

    fn job(status: serde_json::Value) -> k8s_openapi::api::batch::v1::Job {
        serde_json::from_value(json!({"metadata": {"name": "skein-allreduce", "namespace": "demo"},
            "spec": {"completionMode": "Indexed", "completions": 2, "template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "allreduce", "image": "ghcr.io/skein-net/skein-allreduce:latest"}]}}},
            "status": status}))
        .unwrap()
    }

    fn succeeded(node: &str) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"nodeName": node, "containers": []},
            "status": {"phase": "Succeeded"}}))
        .unwrap()
    }

    const BENCH: &str = "# skein-allreduce bench: 2 ranks, f32 sum, algorithm auto, in-place
#          size        count  type redop            algorithm       time    algbw    busbw  #wrong
           8            2   f32   sum   recursive-doubling     120.50    0.000    0.000       0
     1048576       262144   f32   sum                 ring    9000.00    0.117    0.117       0
# Avg bus bandwidth    : 0.058";

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(String::from).collect()
    }

    #[test]
    fn a_complete_allreduce_job_passes_only_with_results_and_none_wrong() {
        let complete =
            job(json!({"succeeded": 2, "startTime": "2026-01-01T00:00:00Z", "completionTime": "2026-01-01T00:00:12Z",
            "conditions": [{"type": "Complete", "status": "True"}]}));
        let pods = [succeeded("node2"), succeeded("node1")];
        assert!(job_title(&complete).contains("skein-allreduce results vs the reference"));
        let (passed, detail) = judge_job(&complete, &pods, &lines(BENCH));
        assert!(passed, "{detail}");
        assert_eq!(
            detail,
            "Complete in 12 s; 2 succeeded on node1, node2; rank 0: 2 sizes 8–1048576 B, busbw 0.117 GB/s at 1048576 B (ring), 0 wrong"
        );
        let wrong = BENCH.replace("0.117       0", "0.117       3");
        let (passed, detail) = judge_job(&complete, &pods, &lines(&wrong));
        assert!(!passed && detail.contains("WRONG results at 1048576 B: 3"), "{detail}");
        let (passed, detail) = judge_job(&complete, &pods, &[]);
        assert!(!passed && detail.contains("printed no results"), "{detail}");
        let check = lines("check: 420 cases on 2 ranks, 0 wrong results (counted per rank)");
        assert!(judge_job(&complete, &pods, &check).0);
        let check = lines("check: 420 cases on 2 ranks, 5 wrong results (counted per rank)");
        assert!(!judge_job(&complete, &pods, &check).0);
    }

    #[test]
    fn failed_and_unfinished_jobs_fail_with_the_reason() {
        let failed = job(
            json!({"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
            "message": "Job has reached the specified backoff limit"}]}),
        );
        let (passed, detail) = judge_job(&failed, &[], &[]);
        assert!(!passed);
        assert!(
            detail.starts_with("Failed (BackoffLimitExceeded: Job has reached the specified backoff limit)"),
            "{detail}"
        );
        let running = job(json!({"active": 2}));
        assert_eq!(
            judge_job(&running, &[], &[]),
            (false, "not complete: 2 active, 0 succeeded on no node".to_string())
        );
    }
}
