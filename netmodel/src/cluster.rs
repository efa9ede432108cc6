//! The cluster state the compiler reads: the parts of Kubernetes objects that shape the
//! network, already parsed (the master's watchers convert API objects into these), and the
//! [`ClusterState`] store with the indices the incremental compiler needs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::addr::IpNet;
use crate::annotations::{ChassisAnnotation, PodNetwork};

/// Namespace and name of a namespaced object. The strings are shared (`Arc`), because keys
/// are copied into every flow and load balancer an object produces.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectKey {
    /// Namespace.
    pub namespace: Arc<str>,
    /// Name.
    pub name: Arc<str>,
}

impl ObjectKey {
    /// `namespace/name`.
    pub fn new(namespace: impl Into<Arc<str>>, name: impl Into<Arc<str>>) -> ObjectKey {
        ObjectKey { namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Label map (`metadata.labels`).
pub type Labels = BTreeMap<String, String>;

/// A node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// `metadata.name`.
    pub name: String,
    /// `status.addresses` of type `InternalIP`, in order (one per family on dual-stack).
    pub internal_ips: Vec<IpAddr>,
    /// The node's pod subnets from the `skein.dev/node-subnets` annotation, one per
    /// family; empty until the master has assigned them.
    pub subnets: Vec<IpNet>,
    /// The `skein.dev/chassis` annotation, written by the node's agent; `None` until the
    /// agent has registered. A node without one receives no southbound view and is not
    /// reachable through tunnels.
    pub chassis: Option<ChassisAnnotation>,
    /// The `topology.kubernetes.io/zone` label, if any.
    pub zone: Option<String>,
}

/// A namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels` (NetworkPolicy namespace selectors match these).
    pub labels: Labels,
}

/// L4 protocol of a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Protocol {
    /// TCP (the Kubernetes default).
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// Lower-case name, as in load balancer names (`svc-ns-name-tcp`) and flow matches.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A container port (`spec.containers[].ports[]`); named ones are what named target ports
/// and NetworkPolicy named ports refer to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPort {
    /// `name`, if any.
    pub name: Option<String>,
    /// `containerPort`.
    pub port: u16,
    /// `protocol`.
    pub protocol: Protocol,
}

/// A pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`.
    pub uid: String,
    /// `spec.nodeName`; `None` while unscheduled.
    pub node: Option<String>,
    /// `metadata.labels`.
    pub labels: Labels,
    /// `spec.hostNetwork`: such pods use the node's network and get no logical port.
    pub host_network: bool,
    /// `status.phase` is `Succeeded` or `Failed`: the pod's address may be reused.
    pub terminal: bool,
    /// Every container's ports.
    pub ports: Vec<ContainerPort>,
    /// The parsed `skein.dev/pod-networks` annotation; `None` until the master assigned it.
    pub network: Option<PodNetwork>,
}

impl Pod {
    /// The pod's key.
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(self.namespace.as_str(), self.name.as_str())
    }

    /// True if the pod should have a logical port: scheduled, not host-network, not
    /// finished.
    pub fn wants_port(&self) -> bool {
        self.node.is_some() && !self.host_network && !self.terminal
    }

    /// The number of the container port called `name` with `protocol`, if any.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports.iter().find(|p| p.protocol == protocol && p.name.as_deref() == Some(name)).map(|p| p.port)
    }
}

/// `spec.type` of a Service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ServiceType {
    /// `ClusterIP`.
    ClusterIp,
    /// `NodePort`.
    NodePort,
    /// `LoadBalancer`.
    LoadBalancer,
    /// `ExternalName`: DNS only, nothing to program.
    ExternalName,
}

/// A port number or a container port name (`targetPort`, NetworkPolicy ports).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PortRef {
    /// A number.
    Number(u16),
    /// A named container port.
    Name(String),
}

/// One entry of a Service's `spec.ports`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    /// `name` (`""` when the Service has a single unnamed port; EndpointSlice ports use the
    /// same name).
    pub name: String,
    /// `protocol`.
    pub protocol: Protocol,
    /// `port`: the port of the cluster IPs, external IPs and load balancer IPs.
    pub port: u16,
    /// `targetPort` (informational: EndpointSlices carry the resolved backend ports).
    pub target_port: PortRef,
    /// `nodePort`, for NodePort and LoadBalancer Services.
    pub node_port: Option<u16>,
}

/// `externalTrafficPolicy` / `internalTrafficPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub enum TrafficPolicy {
    /// Any endpoint in the cluster.
    #[default]
    Cluster,
    /// Only endpoints on the node the traffic entered (or, for internal traffic, the
    /// client's node); none there means the traffic is rejected.
    Local,
}

/// `sessionAffinity`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub enum SessionAffinity {
    /// No affinity.
    #[default]
    None,
    /// `ClientIP`: a client keeps its backend while it keeps connecting within the timeout.
    ClientIp {
        /// `sessionAffinityConfig.clientIP.timeoutSeconds` (Kubernetes default 10800).
        timeout_seconds: u32,
    },
}

/// A Service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `spec.type`.
    pub service_type: ServiceType,
    /// `spec.clusterIPs` (empty for headless Services, `None` in the API).
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.ports`.
    pub ports: Vec<ServicePort>,
    /// `spec.selector` (`None`: endpoints are managed by someone else).
    pub selector: Option<Labels>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip`.
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.externalTrafficPolicy`.
    pub external_traffic_policy: TrafficPolicy,
    /// `spec.internalTrafficPolicy`.
    pub internal_traffic_policy: TrafficPolicy,
    /// `spec.sessionAffinity` with its timeout.
    pub session_affinity: SessionAffinity,
}

impl Service {
    /// The Service's key.
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(self.namespace.as_str(), self.name.as_str())
    }
}

/// `addressType` of an EndpointSlice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AddressType {
    /// `IPv4`.
    Ipv4,
    /// `IPv6`.
    Ipv6,
    /// `FQDN`: not programmable, ignored.
    Fqdn,
}

/// One entry of an EndpointSlice's `ports`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointPort {
    /// `name` (matches the Service port's name; `""` for an unnamed port).
    pub name: String,
    /// `port`: the backend port. `None` (allowed by the API) means "all ports", which a
    /// load balancer cannot use: such a port gives no backends.
    pub port: Option<u16>,
    /// `protocol`.
    pub protocol: Protocol,
}

/// `conditions` of an endpoint (`None` = not set, which the API says to read as ready /
/// serving for `ready` and `serving`, and not terminating).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct EndpointConditions {
    /// `ready`.
    pub ready: Option<bool>,
    /// `serving`.
    pub serving: Option<bool>,
    /// `terminating`.
    pub terminating: Option<bool>,
}

impl EndpointConditions {
    /// Ready (unset counts as ready).
    pub fn is_ready(&self) -> bool {
        self.ready.unwrap_or(true)
    }

    /// Serving (unset falls back to `ready`).
    pub fn is_serving(&self) -> bool {
        self.serving.unwrap_or_else(|| self.is_ready())
    }

    /// Terminating (unset counts as not terminating).
    pub fn is_terminating(&self) -> bool {
        self.terminating.unwrap_or(false)
    }
}

/// One endpoint of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// `addresses` (the API allows one per endpoint today; more are kept).
    pub addresses: Vec<IpAddr>,
    /// `conditions`.
    pub conditions: EndpointConditions,
    /// `nodeName`.
    pub node: Option<String>,
    /// `zone`.
    pub zone: Option<String>,
}

/// An EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSlice {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// The `kubernetes.io/service-name` label: the Service this slice belongs to.
    pub service_name: Option<String>,
    /// `addressType`.
    pub address_type: AddressType,
    /// `ports`.
    pub ports: Vec<EndpointPort>,
    /// `endpoints`.
    pub endpoints: Vec<Endpoint>,
}

impl EndpointSlice {
    /// The slice's key.
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(self.namespace.as_str(), self.name.as_str())
    }

    /// The key of the Service the slice belongs to, if labelled.
    pub fn service_key(&self) -> Option<ObjectKey> {
        self.service_name.as_ref().map(|s| ObjectKey::new(self.namespace.as_str(), s.as_str()))
    }
}

/// Operator of a label selector requirement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SelectorOperator {
    /// `In`.
    In,
    /// `NotIn`.
    NotIn,
    /// `Exists`.
    Exists,
    /// `DoesNotExist`.
    DoesNotExist,
}

/// One `matchExpressions` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelectorRequirement {
    /// `key`.
    pub key: String,
    /// `operator`.
    pub operator: SelectorOperator,
    /// `values`.
    pub values: Vec<String>,
}

/// A label selector (`matchLabels` AND `matchExpressions`); the empty selector selects all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LabelSelector {
    /// `matchLabels`.
    pub match_labels: Labels,
    /// `matchExpressions`.
    pub match_expressions: Vec<SelectorRequirement>,
}

impl LabelSelector {
    /// True if `labels` satisfy every requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let value = labels.get(&r.key);
                match r.operator {
                    SelectorOperator::In => value.is_some_and(|v| r.values.contains(v)),
                    SelectorOperator::NotIn => value.is_none_or(|v| !r.values.contains(v)),
                    SelectorOperator::Exists => value.is_some(),
                    SelectorOperator::DoesNotExist => value.is_none(),
                }
            })
    }
}

/// `policyTypes` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PolicyType {
    /// `Ingress`.
    Ingress,
    /// `Egress`.
    Egress,
}

/// `ipBlock` of a NetworkPolicy peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpBlock {
    /// `cidr`.
    pub cidr: IpNet,
    /// `except`.
    pub except: Vec<IpNet>,
}

/// A NetworkPolicy peer (`from[]` / `to[]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PolicyPeer {
    /// `podSelector`.
    pub pod_selector: Option<LabelSelector>,
    /// `namespaceSelector`.
    pub namespace_selector: Option<LabelSelector>,
    /// `ipBlock`.
    pub ip_block: Option<IpBlock>,
}

/// A NetworkPolicy port (`ports[]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyPort {
    /// `protocol`.
    pub protocol: Protocol,
    /// `port` (number or named port); `None` = all ports.
    pub port: Option<PortRef>,
    /// `endPort`.
    pub end_port: Option<u16>,
}

/// One ingress or egress rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PolicyRule {
    /// `from` / `to` (empty = everyone).
    pub peers: Vec<PolicyPeer>,
    /// `ports` (empty = all ports).
    pub ports: Vec<PolicyPort>,
}

/// A NetworkPolicy. Stored and validated only: its compilation to ACLs is a later stage
/// (the pipelines keep the ACL tables for it, see `docs/netmodel.md`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPolicy {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `spec.podSelector`.
    pub pod_selector: LabelSelector,
    /// `spec.policyTypes`.
    pub policy_types: Vec<PolicyType>,
    /// `spec.ingress`.
    pub ingress: Vec<PolicyRule>,
    /// `spec.egress`.
    pub egress: Vec<PolicyRule>,
}

impl NetworkPolicy {
    /// The policy's key.
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(self.namespace.as_str(), self.name.as_str())
    }
}

/// One change to the cluster state, as a watcher reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterChange {
    /// A node was added or changed.
    UpsertNode(Node),
    /// A node was deleted (by name).
    DeleteNode(String),
    /// A namespace was added or changed.
    UpsertNamespace(Namespace),
    /// A namespace was deleted (by name).
    DeleteNamespace(String),
    /// A pod was added or changed.
    UpsertPod(Pod),
    /// A pod was deleted.
    DeletePod(ObjectKey),
    /// A Service was added or changed.
    UpsertService(Service),
    /// A Service was deleted.
    DeleteService(ObjectKey),
    /// An EndpointSlice was added or changed.
    UpsertEndpointSlice(EndpointSlice),
    /// An EndpointSlice was deleted.
    DeleteEndpointSlice(ObjectKey),
    /// A NetworkPolicy was added or changed.
    UpsertNetworkPolicy(NetworkPolicy),
    /// A NetworkPolicy was deleted.
    DeleteNetworkPolicy(ObjectKey),
}

/// The cluster objects the network depends on, with lookup indices kept consistent by
/// [`ClusterState::apply`].
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    nodes: BTreeMap<String, Node>,
    namespaces: BTreeMap<String, Namespace>,
    pods: BTreeMap<ObjectKey, Pod>,
    services: BTreeMap<ObjectKey, Service>,
    endpoint_slices: BTreeMap<ObjectKey, EndpointSlice>,
    network_policies: BTreeMap<ObjectKey, NetworkPolicy>,
    pods_by_node: HashMap<String, BTreeSet<ObjectKey>>,
    slices_by_service: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
}

impl ClusterState {
    /// An empty cluster.
    pub fn new() -> ClusterState {
        ClusterState::default()
    }

    /// A cluster holding `objects` (applied in order; later ones replace earlier ones).
    pub fn from_changes(objects: impl IntoIterator<Item = ClusterChange>) -> ClusterState {
        let mut state = ClusterState::new();
        for change in objects {
            state.apply(change);
        }
        state
    }

    /// Applies one change.
    pub fn apply(&mut self, change: ClusterChange) {
        match change {
            ClusterChange::UpsertNode(node) => {
                self.nodes.insert(node.name.clone(), node);
            }
            ClusterChange::DeleteNode(name) => {
                self.nodes.remove(&name);
            }
            ClusterChange::UpsertNamespace(ns) => {
                self.namespaces.insert(ns.name.clone(), ns);
            }
            ClusterChange::DeleteNamespace(name) => {
                self.namespaces.remove(&name);
            }
            ClusterChange::UpsertPod(pod) => {
                let key = pod.key();
                self.unindex_pod(&key);
                if let Some(node) = &pod.node {
                    self.pods_by_node.entry(node.clone()).or_default().insert(key.clone());
                }
                self.pods.insert(key, pod);
            }
            ClusterChange::DeletePod(key) => {
                self.unindex_pod(&key);
                self.pods.remove(&key);
            }
            ClusterChange::UpsertService(svc) => {
                self.services.insert(svc.key(), svc);
            }
            ClusterChange::DeleteService(key) => {
                self.services.remove(&key);
            }
            ClusterChange::UpsertEndpointSlice(slice) => {
                let key = slice.key();
                self.unindex_slice(&key);
                if let Some(svc) = slice.service_key() {
                    self.slices_by_service.entry(svc).or_default().insert(key.clone());
                }
                self.endpoint_slices.insert(key, slice);
            }
            ClusterChange::DeleteEndpointSlice(key) => {
                self.unindex_slice(&key);
                self.endpoint_slices.remove(&key);
            }
            ClusterChange::UpsertNetworkPolicy(np) => {
                self.network_policies.insert(np.key(), np);
            }
            ClusterChange::DeleteNetworkPolicy(key) => {
                self.network_policies.remove(&key);
            }
        }
    }

    fn unindex_pod(&mut self, key: &ObjectKey) {
        if let Some(node) = self.pods.get(key).and_then(|p| p.node.clone())
            && let Some(set) = self.pods_by_node.get_mut(&node)
        {
            set.remove(key);
            if set.is_empty() {
                self.pods_by_node.remove(&node);
            }
        }
    }

    fn unindex_slice(&mut self, key: &ObjectKey) {
        if let Some(svc) = self.endpoint_slices.get(key).and_then(|s| s.service_key())
            && let Some(set) = self.slices_by_service.get_mut(&svc)
        {
            set.remove(key);
            if set.is_empty() {
                self.slices_by_service.remove(&svc);
            }
        }
    }

    /// Nodes by name.
    pub fn nodes(&self) -> &BTreeMap<String, Node> {
        &self.nodes
    }

    /// Namespaces by name.
    pub fn namespaces(&self) -> &BTreeMap<String, Namespace> {
        &self.namespaces
    }

    /// Pods by key.
    pub fn pods(&self) -> &BTreeMap<ObjectKey, Pod> {
        &self.pods
    }

    /// Services by key.
    pub fn services(&self) -> &BTreeMap<ObjectKey, Service> {
        &self.services
    }

    /// EndpointSlices by key.
    pub fn endpoint_slices(&self) -> &BTreeMap<ObjectKey, EndpointSlice> {
        &self.endpoint_slices
    }

    /// NetworkPolicies by key.
    pub fn network_policies(&self) -> &BTreeMap<ObjectKey, NetworkPolicy> {
        &self.network_policies
    }

    /// Keys of the pods scheduled on `node`, sorted.
    pub fn pods_on_node(&self, node: &str) -> impl Iterator<Item = &ObjectKey> {
        self.pods_by_node.get(node).into_iter().flatten()
    }

    /// The EndpointSlices labelled for `service`, sorted by key.
    pub fn slices_of_service(&self, service: &ObjectKey) -> impl Iterator<Item = &EndpointSlice> {
        self.slices_by_service.get(service).into_iter().flatten().filter_map(|k| self.endpoint_slices.get(k))
    }

    /// Every object as an upsert, in a fixed order: what a fresh start would replay.
    pub fn to_changes(&self) -> Vec<ClusterChange> {
        let mut out = Vec::new();
        out.extend(self.namespaces.values().cloned().map(ClusterChange::UpsertNamespace));
        out.extend(self.nodes.values().cloned().map(ClusterChange::UpsertNode));
        out.extend(self.pods.values().cloned().map(ClusterChange::UpsertPod));
        out.extend(self.services.values().cloned().map(ClusterChange::UpsertService));
        out.extend(self.endpoint_slices.values().cloned().map(ClusterChange::UpsertEndpointSlice));
        out.extend(self.network_policies.values().cloned().map(ClusterChange::UpsertNetworkPolicy));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, node: &str) -> Pod {
        Pod {
            namespace: "default".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            node: Some(node.into()),
            labels: Labels::new(),
            host_network: false,
            terminal: false,
            ports: vec![ContainerPort { name: Some("http".into()), port: 8080, protocol: Protocol::Tcp }],
            network: None,
        }
    }

    #[test]
    fn indices_follow_moves_and_deletes() {
        let mut state = ClusterState::new();
        state.apply(ClusterChange::UpsertPod(pod("a", "n1")));
        state.apply(ClusterChange::UpsertPod(pod("b", "n1")));
        assert_eq!(state.pods_on_node("n1").count(), 2);
        state.apply(ClusterChange::UpsertPod(pod("a", "n2")));
        assert_eq!(state.pods_on_node("n1").count(), 1);
        assert_eq!(state.pods_on_node("n2").count(), 1);
        state.apply(ClusterChange::DeletePod(ObjectKey::new("default", "b")));
        assert_eq!(state.pods_on_node("n1").count(), 0);
        assert_eq!(state.pods[&ObjectKey::new("default", "a")].uid, "uid-a");
    }

    #[test]
    fn named_ports_and_selectors() {
        let p = pod("a", "n1");
        assert_eq!(p.named_port("http", Protocol::Tcp), Some(8080));
        assert_eq!(p.named_port("http", Protocol::Udp), None);
        let mut labels = Labels::new();
        labels.insert("app".into(), "web".into());
        let sel = LabelSelector {
            match_labels: labels.clone(),
            match_expressions: vec![SelectorRequirement {
                key: "tier".into(),
                operator: SelectorOperator::DoesNotExist,
                values: vec![],
            }],
        };
        assert!(sel.matches(&labels));
        labels.insert("tier".into(), "x".into());
        assert!(!sel.matches(&labels));
        assert!(LabelSelector::default().matches(&labels));
    }
}
