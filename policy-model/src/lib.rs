//! A reference model of Kubernetes `networking.k8s.io/v1` NetworkPolicy: given the pods,
//! namespaces and policies of a cluster, the verdict for one connection — allowed or not,
//! and which policy and rule decided.
//!
//! It is written from the specification, apart from Skein's compiler
//! (`skein_netmodel::policy`), and shares only the input types with it: no selector
//! matching, validation or port resolution is borrowed. Tests pit the compiled flows
//! against it (`node-agent/tests/policy_model.rs`), and the lab's checks derive the
//! expected outcome of every probe from it (`docs/network-policy.md`, "Reference model").
//!
//! The verdict is for a connection as the destination sees it: Service traffic is judged
//! after DNAT, so the caller names the backend pod and its port, not the Service.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use skein_netmodel::cluster::{
    ClusterState, IpBlock, LabelSelector, Labels, Namespace, NetworkPolicy, ObjectKey, Pod, PolicyPeer, PolicyPort,
    PolicyRule, PolicyType, PortRef, Protocol, SelectorOperator,
};

/// The label the API server sets on every namespace (its name).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// One end of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A pod (by key; its address is its first pod address).
    Pod(ObjectKey),
    /// A node's host network (kubelet probes, host-network pods), at this address.
    Host {
        /// The node.
        node: String,
        /// The address the traffic carries.
        ip: IpAddr,
    },
    /// Anything outside the cluster, at this address.
    External(IpAddr),
}

/// The transport of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// TCP, UDP or SCTP to this destination port.
    Port(Protocol, u16),
    /// ICMP echo (ping) and anything else without ports.
    Icmp,
}

/// A connection attempt, as the destination sees it (after any Service DNAT).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    /// Who opens it.
    pub src: Endpoint,
    /// Who is connected to.
    pub dst: Endpoint,
    /// How.
    pub transport: Transport,
}

/// One direction's part of a verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No policy of this direction applies (not a pod, or a pod no policy isolates).
    NotIsolated,
    /// Always allowed whatever the policies: the node's own traffic to its pods, or a
    /// pod reaching itself through its Service.
    Always(&'static str),
    /// Allowed by this rule (`spec.ingress[rule]` or `spec.egress[rule]` of `policy`).
    Allowed {
        /// The policy.
        policy: ObjectKey,
        /// The rule's index in its list.
        rule: usize,
    },
    /// Isolated by these policies, and none of their rules allows the connection.
    Denied {
        /// The isolating policies, sorted.
        isolated_by: Vec<ObjectKey>,
    },
}

impl Decision {
    /// True unless denied.
    pub fn allows(&self) -> bool {
        !matches!(self, Decision::Denied { .. })
    }
}

/// The verdict for a connection: the source's egress and the destination's ingress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The source's egress policies.
    pub egress: Decision,
    /// The destination's ingress policies.
    pub ingress: Decision,
}

impl Verdict {
    /// True if both directions allow the connection (then its replies pass too).
    pub fn allowed(&self) -> bool {
        self.egress.allows() && self.ingress.allows()
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::NotIsolated => f.write_str("not isolated"),
            Decision::Always(why) => write!(f, "always allowed ({why})"),
            Decision::Allowed { policy, rule } => write!(f, "allowed by {policy} rule {rule}"),
            Decision::Denied { isolated_by } => {
                let names: Vec<String> = isolated_by.iter().map(ToString::to_string).collect();
                write!(f, "denied (isolated by {})", names.join(", "))
            }
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = if self.allowed() { "allow" } else { "deny" };
        write!(f, "{word}: egress {}; ingress {}", self.egress, self.ingress)
    }
}

/// The cluster as the model sees it.
#[derive(Clone, Debug, Default)]
pub struct Model {
    namespaces: BTreeMap<String, Labels>,
    pods: BTreeMap<ObjectKey, Pod>,
    policies: Vec<NetworkPolicy>,
}

impl Model {
    /// A model of these objects (pods without an address cannot be reached, but may be
    /// named as sources).
    pub fn new<'a>(
        namespaces: impl IntoIterator<Item = &'a Namespace>,
        pods: impl IntoIterator<Item = &'a Pod>,
        policies: impl IntoIterator<Item = &'a NetworkPolicy>,
    ) -> Model {
        Model {
            namespaces: namespaces.into_iter().map(|n| (n.name.clone(), n.labels.clone())).collect(),
            pods: pods
                .into_iter()
                .map(|p| (ObjectKey::new(p.namespace.as_str(), p.name.as_str()), p.clone()))
                .collect(),
            policies: policies.into_iter().cloned().collect(),
        }
    }

    /// A model of a cluster state's namespaces, pods and policies.
    pub fn from_state(state: &ClusterState) -> Model {
        Model::new(state.namespaces().values(), state.pods().values(), state.network_policies().values())
    }

    /// The verdict for `c`.
    pub fn verdict(&self, c: &Connection) -> Verdict {
        // A pod reaching itself (through its own Service) is hairpin traffic.
        if let (Endpoint::Pod(a), Endpoint::Pod(b)) = (&c.src, &c.dst)
            && a == b
        {
            return Verdict { egress: Decision::Always("hairpin"), ingress: Decision::Always("hairpin") };
        }
        let egress = match &c.src {
            Endpoint::Pod(key) => match self.pods.get(key) {
                Some(pod) => self.decide(pod, PolicyType::Egress, &c.dst, c.transport),
                None => Decision::NotIsolated,
            },
            _ => Decision::NotIsolated,
        };
        let ingress = match &c.dst {
            Endpoint::Pod(key) => match self.pods.get(key) {
                Some(pod) => match &c.src {
                    Endpoint::Host { node, .. } if pod.node.as_deref() == Some(node.as_str()) => {
                        Decision::Always("the pod's own node")
                    }
                    _ => self.decide(pod, PolicyType::Ingress, &c.src, c.transport),
                },
                None => Decision::NotIsolated,
            },
            _ => Decision::NotIsolated,
        };
        Verdict { egress, ingress }
    }

    /// `pod`'s policies of `direction` on a connection with `peer` (the source for
    /// ingress, the destination for egress).
    fn decide(&self, pod: &Pod, direction: PolicyType, peer: &Endpoint, transport: Transport) -> Decision {
        let mut isolated_by = Vec::new();
        let mut allowed: Option<(ObjectKey, usize)> = None;
        for np in &self.policies {
            if np.namespace != pod.namespace || !valid_selector(&np.pod_selector) {
                continue;
            }
            if !selector_matches(&np.pod_selector, &pod.labels) || !has_type(np, direction) {
                continue;
            }
            let key = ObjectKey::new(np.namespace.as_str(), np.name.as_str());
            isolated_by.push(key.clone());
            let rules = match direction {
                PolicyType::Ingress => &np.ingress,
                PolicyType::Egress => &np.egress,
            };
            for (i, rule) in rules.iter().enumerate() {
                if !rule_valid(rule) {
                    continue;
                }
                // For ingress the ports are the pod's own; for egress the destination's.
                let port_pod = match direction {
                    PolicyType::Ingress => Some(pod),
                    PolicyType::Egress => match peer {
                        Endpoint::Pod(k) => self.pods.get(k),
                        _ => None,
                    },
                };
                if self.peer_matches(np, rule, peer) && ports_match(rule, port_pod, transport) {
                    let candidate = (key.clone(), i);
                    if allowed.as_ref().is_none_or(|a| candidate < *a) {
                        allowed = Some(candidate);
                    }
                }
            }
        }
        match allowed {
            Some((policy, rule)) => Decision::Allowed { policy, rule },
            None if isolated_by.is_empty() => Decision::NotIsolated,
            None => {
                isolated_by.sort();
                Decision::Denied { isolated_by }
            }
        }
    }

    fn namespace_labels(&self, name: &str) -> Labels {
        let mut labels = self.namespaces.get(name).cloned().unwrap_or_default();
        labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name.to_owned());
        labels
    }

    fn address(&self, e: &Endpoint) -> Option<IpAddr> {
        match e {
            Endpoint::Pod(k) => self.pods.get(k)?.network.as_ref()?.ip_addresses.first().map(|n| n.addr()),
            Endpoint::Host { ip, .. } | Endpoint::External(ip) => Some(*ip),
        }
    }

    fn peer_matches(&self, np: &NetworkPolicy, rule: &PolicyRule, peer: &Endpoint) -> bool {
        if rule.peers.is_empty() {
            return true;
        }
        rule.peers.iter().any(|p| match p {
            PolicyPeer { ip_block: Some(block), .. } => self.address(peer).is_some_and(|ip| in_block(block, ip)),
            PolicyPeer { pod_selector, namespace_selector, .. } => {
                let Endpoint::Pod(k) = peer else { return false };
                let Some(pod) = self.pods.get(k) else { return false };
                let ns_ok = match namespace_selector {
                    None => pod.namespace == np.namespace,
                    Some(sel) => selector_matches(sel, &self.namespace_labels(&pod.namespace)),
                };
                let pod_ok = pod_selector.as_ref().is_none_or(|sel| selector_matches(sel, &pod.labels));
                ns_ok && pod_ok
            }
        })
    }
}

fn has_type(np: &NetworkPolicy, t: PolicyType) -> bool {
    if np.policy_types.is_empty() {
        // Unspecified: Ingress always, Egress when there are egress rules.
        match t {
            PolicyType::Ingress => true,
            PolicyType::Egress => !np.egress.is_empty(),
        }
    } else {
        np.policy_types.contains(&t)
    }
}

/// `matchLabels` and `matchExpressions`, all of them.
fn selector_matches(s: &LabelSelector, labels: &Labels) -> bool {
    for (k, v) in &s.match_labels {
        if labels.get(k) != Some(v) {
            return false;
        }
    }
    for r in &s.match_expressions {
        let have = labels.get(&r.key);
        let ok = match r.operator {
            SelectorOperator::In => matches!(have, Some(v) if r.values.iter().any(|x| x == v)),
            SelectorOperator::NotIn => !matches!(have, Some(v) if r.values.iter().any(|x| x == v)),
            SelectorOperator::Exists => have.is_some(),
            SelectorOperator::DoesNotExist => have.is_none(),
        };
        if !ok {
            return false;
        }
    }
    true
}

/// The API's validation of a selector: `In`/`NotIn` need values, `Exists` and
/// `DoesNotExist` take none.
fn valid_selector(s: &LabelSelector) -> bool {
    s.match_expressions.iter().all(|r| match r.operator {
        SelectorOperator::In | SelectorOperator::NotIn => !r.values.is_empty(),
        SelectorOperator::Exists | SelectorOperator::DoesNotExist => r.values.is_empty(),
    })
}

/// A rule the API would accept; Skein leaves out the others (so they allow nothing).
fn rule_valid(rule: &PolicyRule) -> bool {
    let peer_ok = |p: &PolicyPeer| match p {
        PolicyPeer { ip_block: Some(b), pod_selector: None, namespace_selector: None } => {
            b.except.iter().all(|e| contains_net(&b.cidr, e))
        }
        PolicyPeer { ip_block: None, pod_selector, namespace_selector } => {
            (pod_selector.is_some() || namespace_selector.is_some())
                && pod_selector.as_ref().is_none_or(valid_selector)
                && namespace_selector.as_ref().is_none_or(valid_selector)
        }
        _ => false,
    };
    let port_ok = |p: &PolicyPort| match (&p.port, p.end_port) {
        (None, None) => true,
        (Some(PortRef::Number(n)), end) => *n != 0 && end.is_none_or(|e| e >= *n),
        (Some(PortRef::Name(s)), None) => !s.is_empty(),
        _ => false,
    };
    rule.peers.iter().all(peer_ok) && rule.ports.iter().all(port_ok)
}

fn ports_match(rule: &PolicyRule, pod: Option<&Pod>, t: Transport) -> bool {
    if rule.ports.is_empty() {
        return true;
    }
    let Transport::Port(proto, port) = t else { return false };
    rule.ports.iter().any(|p| {
        p.protocol == proto
            && match (&p.port, p.end_port) {
                (None, _) => true,
                (Some(PortRef::Number(n)), None) => *n == port,
                (Some(PortRef::Number(n)), Some(end)) => (*n..=end).contains(&port),
                (Some(PortRef::Name(name)), _) => pod.is_some_and(|pod| {
                    pod.ports.iter().any(|c| c.protocol == proto && c.name.as_deref() == Some(name) && c.port == port)
                }),
            }
    })
}

fn bits(ip: IpAddr) -> (u128, u32) {
    match ip {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    }
}

fn prefix_contains(net: &skein_netmodel::IpNet, ip: IpAddr) -> bool {
    let (a, width) = bits(net.addr());
    let (b, width_b) = bits(ip);
    if width != width_b {
        return false;
    }
    let len = u32::from(net.prefix_len());
    if len == 0 {
        return true;
    }
    let shift = width - len;
    (a >> shift) == (b >> shift)
}

fn contains_net(outer: &skein_netmodel::IpNet, inner: &skein_netmodel::IpNet) -> bool {
    inner.prefix_len() >= outer.prefix_len() && prefix_contains(outer, inner.addr())
}

fn in_block(b: &IpBlock, ip: IpAddr) -> bool {
    prefix_contains(&b.cidr, ip) && !b.except.iter().any(|e| prefix_contains(e, ip))
}

#[cfg(test)]
mod tests {
    use skein_netmodel::annotations::PodNetwork;
    use skein_netmodel::cluster::{ContainerPort, SelectorRequirement};
    use skein_netmodel::{IpNet, MacAddr};

    use super::*;

    fn pod(ns: &str, name: &str, node: &str, ip: &str, app: &str, ports: &[(&str, u16)]) -> Pod {
        let addr: IpAddr = ip.parse().unwrap();
        Pod {
            namespace: ns.into(),
            name: name.into(),
            uid: name.into(),
            node: Some(node.into()),
            labels: [("app".to_owned(), app.to_owned())].into_iter().collect(),
            host_network: false,
            terminal: false,
            ports: ports
                .iter()
                .map(|(n, p)| ContainerPort { name: Some((*n).into()), port: *p, protocol: Protocol::Tcp })
                .collect(),
            network: Some(PodNetwork {
                ip_addresses: vec![IpNet::new(addr, 24).unwrap()],
                mac_address: MacAddr::derived(addr),
                gateway_ips: vec![],
                routes: vec![],
                mtu: 1400,
            }),
        }
    }

    fn app(a: &str) -> LabelSelector {
        LabelSelector { match_labels: [("app".to_owned(), a.to_owned())].into_iter().collect(), ..Default::default() }
    }

    fn tcp(src: Endpoint, dst: &str, port: u16) -> Connection {
        Connection {
            src,
            dst: Endpoint::Pod(ObjectKey::new("shop", dst)),
            transport: Transport::Port(Protocol::Tcp, port),
        }
    }

    fn key(name: &str) -> Endpoint {
        Endpoint::Pod(ObjectKey::new("shop", name))
    }

    #[test]
    fn the_issues_scenario_allow_from_app_on_a_named_port() {
        let pods = [
            pod("shop", "cart1", "n1", "10.244.1.5", "cart", &[("http", 8080)]),
            pod("shop", "cart2", "n2", "10.244.2.5", "cart", &[("http", 9090)]),
            pod("shop", "client", "n2", "10.244.2.6", "client", &[]),
            pod("shop", "other", "n3", "10.244.3.6", "other", &[]),
        ];
        let np = NetworkPolicy {
            namespace: "shop".into(),
            name: "cart".into(),
            pod_selector: app("cart"),
            policy_types: vec![],
            ingress: vec![PolicyRule {
                peers: vec![PolicyPeer { pod_selector: Some(app("client")), ..Default::default() }],
                ports: vec![PolicyPort {
                    protocol: Protocol::Tcp,
                    port: Some(PortRef::Name("http".into())),
                    end_port: None,
                }],
            }],
            egress: vec![],
        };
        let m = Model::new([], &pods, [&np]);
        // The named port resolves per destination pod.
        assert!(m.verdict(&tcp(key("client"), "cart1", 8080)).allowed());
        assert!(!m.verdict(&tcp(key("client"), "cart1", 9090)).allowed());
        assert!(m.verdict(&tcp(key("client"), "cart2", 9090)).allowed());
        assert!(!m.verdict(&tcp(key("other"), "cart1", 8080)).allowed());
        let ping = Connection { src: key("client"), dst: key("cart1"), transport: Transport::Icmp };
        let v = m.verdict(&ping);
        assert_eq!(v.ingress, Decision::Denied { isolated_by: vec![ObjectKey::new("shop", "cart")] });
        assert_eq!(v.to_string(), "deny: egress not isolated; ingress denied (isolated by shop/cart)");
        // Kubelet probes from the pod's node pass; another node's host does not.
        let host = |node: &str| Endpoint::Host { node: node.into(), ip: "10.244.1.2".parse().unwrap() };
        assert_eq!(m.verdict(&tcp(host("n1"), "cart1", 8080)).ingress, Decision::Always("the pod's own node"));
        assert!(!m.verdict(&tcp(host("n3"), "cart1", 8080)).allowed());
        // Not isolated: anything goes.
        assert!(m.verdict(&tcp(key("cart1"), "other", 1)).allowed());
    }

    #[test]
    fn egress_ip_blocks_with_except_namespace_selectors_and_invalid_rules() {
        let pods = [pod("shop", "a", "n1", "10.244.1.5", "a", &[]), pod("db", "d", "n2", "10.244.2.5", "d", &[])];
        let ns =
            [Namespace { name: "db".into(), labels: [("team".to_owned(), "data".to_owned())].into_iter().collect() }];
        let np = NetworkPolicy {
            namespace: "shop".into(),
            name: "out".into(),
            pod_selector: LabelSelector::default(),
            policy_types: vec![PolicyType::Egress],
            ingress: vec![],
            egress: vec![
                PolicyRule {
                    peers: vec![PolicyPeer {
                        ip_block: Some(IpBlock {
                            cidr: "198.51.100.0/24".parse().unwrap(),
                            except: vec!["198.51.100.7/32".parse().unwrap()],
                        }),
                        ..Default::default()
                    }],
                    ports: vec![],
                },
                PolicyRule {
                    peers: vec![PolicyPeer {
                        namespace_selector: Some(LabelSelector {
                            match_expressions: vec![SelectorRequirement {
                                key: "team".into(),
                                operator: SelectorOperator::In,
                                values: vec!["data".into()],
                            }],
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ports: vec![PolicyPort {
                        protocol: Protocol::Udp,
                        port: Some(PortRef::Number(5000)),
                        end_port: Some(5010),
                    }],
                },
                // Invalid (endPort without a port): allows nothing.
                PolicyRule {
                    peers: vec![],
                    ports: vec![PolicyPort { protocol: Protocol::Tcp, port: None, end_port: Some(9) }],
                },
            ],
        };
        let m = Model::new(&ns, &pods, [&np]);
        let to = |ip: &str| Connection {
            src: key("a"),
            dst: Endpoint::External(ip.parse().unwrap()),
            transport: Transport::Port(Protocol::Tcp, 443),
        };
        assert!(m.verdict(&to("198.51.100.8")).allowed());
        assert!(!m.verdict(&to("198.51.100.7")).allowed());
        assert!(!m.verdict(&to("203.0.113.1")).allowed());
        let db = |port| Connection {
            src: key("a"),
            dst: Endpoint::Pod(ObjectKey::new("db", "d")),
            transport: Transport::Port(Protocol::Udp, port),
        };
        assert_eq!(m.verdict(&db(5005)).egress, Decision::Allowed { policy: ObjectKey::new("shop", "out"), rule: 1 });
        assert!(!m.verdict(&db(5011)).allowed());
        // A pod reaching itself is always allowed.
        let hairpin = Connection { src: key("a"), dst: key("a"), transport: Transport::Icmp };
        assert!(m.verdict(&hairpin).allowed());
    }
}
