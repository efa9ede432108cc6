//! NetworkPolicy → ACLs: validation of the policies, security identities of the pods,
//! and the logical flows of the ACL stages (`docs/network-policy.md` has the design).
//!
//! Scale: a chassis never learns a remote pod. Every pod carries its [`Identity`] — its
//! namespace's number and its label class's number — in the packet (the `acl_meta`
//! register, the Geneve identity option between chassis). A policy peer becomes a few
//! identity terms (a whole namespace, or the label classes that match), so a chassis
//! holds O(policies + label classes) rule flows, whatever the number of pods; only its
//! local pods cost it flows of their own. Every pod-to-pod verdict is taken where the
//! destination port resides, which knows the destination (local) and gets the source's
//! identity with the packet: its egress policies are then judged there too.
//!
//! Determinism: every number (namespaces, classes, policies) is a function of the
//! current cluster state only — hash slots, probed in sorted order — so a restarted
//! master, or an engine fed the same state in another order, numbers them the same.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use thiserror::Error;

use crate::addr::IpNet;
use crate::cluster::{
    ClusterState, LabelSelector, Labels, NetworkPolicy, ObjectKey, Pod, PolicyPeer, PolicyPort, PolicyRule, PolicyType,
    PortRef, Protocol, SelectorOperator,
};
use crate::config::NetworkConfig;
use crate::southbound::{
    Action, CtState, DatapathKey, Flags, Identity, IpProto, L3, LogicalFlow, Match, Owner, PortKey, Stage, ZoneScope,
    acl_meta, ct_mark, port_keys,
};

/// The label the API server puts on every namespace, holding its name (namespace
/// selectors often use it).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// ACL id that evaluates the egress policies of the source identity's namespace.
pub const EGRESS_OF_SOURCE: u32 = 0xffff_ff00;

/// Most rules per direction of one policy (the ACL id keeps 7 bits for the index).
pub const MAX_RULES: usize = 127;

/// Largest policy number (the ACL id keeps 24 bits for it; the last value is
/// [`EGRESS_OF_SOURCE`]'s).
const MAX_POLICY_NUMBER: u32 = 0x00ff_fffe;

/// ACL id of a policy's egress selection (which identities it isolates).
pub fn select_id(policy_number: u32) -> u32 {
    policy_number << 8
}

/// ACL id of a policy's ingress rule `index`.
pub fn ingress_rule_id(policy_number: u32, index: usize) -> u32 {
    (policy_number << 8) | (1 + index as u32)
}

/// ACL id of a policy's egress rule `index`.
pub fn egress_rule_id(policy_number: u32, index: usize) -> u32 {
    (policy_number << 8) | (128 + index as u32)
}

/// What an ACL id names: `(policy number, direction, rule index)`, or `None` for a
/// selection or [`EGRESS_OF_SOURCE`].
pub fn decode_rule_id(id: u32) -> Option<(u32, PolicyType, usize)> {
    let slot = id & 0xff;
    match slot {
        1..=127 => Some((id >> 8, PolicyType::Ingress, slot as usize - 1)),
        128..=254 => Some((id >> 8, PolicyType::Egress, slot as usize - 128)),
        _ => None,
    }
}

/// Something wrong with a NetworkPolicy. A rule with a problem is left out — which can
/// only take allowed traffic away, never add any — and the policy keeps isolating the
/// pods it selects.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum PolicyIssue {
    /// `endPort` without a numeric `port`.
    #[error("{field}: endPort {end_port} needs a numeric port; the rule is left out")]
    EndPortWithoutNumber {
        /// The port's field path.
        field: String,
        /// `endPort`.
        end_port: u16,
    },
    /// `endPort` below `port`.
    #[error("{field}: endPort {end_port} is below port {port}; the rule is left out")]
    EndPortBelowPort {
        /// The port's field path.
        field: String,
        /// `port`.
        port: u16,
        /// `endPort`.
        end_port: u16,
    },
    /// Port 0.
    #[error("{field}: port 0 is not a port; the rule is left out")]
    ZeroPort {
        /// The port's field path.
        field: String,
    },
    /// An empty named port.
    #[error("{field}: a named port needs a name; the rule is left out")]
    EmptyPortName {
        /// The port's field path.
        field: String,
    },
    /// A peer with no field set, or `ipBlock` together with a selector.
    #[error("{field}: a peer needs exactly an ipBlock, or selectors; the rule is left out")]
    BadPeer {
        /// The peer's field path.
        field: String,
    },
    /// An `except` outside the `cidr`, or of the other family.
    #[error("{field}: {except} is not inside the block's cidr {cidr}; the rule is left out")]
    ExceptOutsideCidr {
        /// The except's field path.
        field: String,
        /// The except.
        except: IpNet,
        /// The cidr.
        cidr: IpNet,
    },
    /// `In`/`NotIn` without values, or `Exists`/`DoesNotExist` with values.
    #[error("{field}: operator {operator:?} on key {key:?} with {count} values is not a valid requirement")]
    BadRequirement {
        /// The requirement's field path.
        field: String,
        /// The key.
        key: String,
        /// The operator.
        operator: SelectorOperator,
        /// How many values it has.
        count: usize,
    },
    /// More rules than an ACL id can number.
    #[error("{field}: more than {MAX_RULES} rules; the ones after the {MAX_RULES}th are left out")]
    TooManyRules {
        /// `spec.ingress` or `spec.egress`.
        field: &'static str,
    },
    /// No policy number left.
    #[error("more NetworkPolicies than policy numbers; this one is not programmed")]
    NoNumber,
    /// The policy's `spec.podSelector` is not valid: whom it isolates is unknown.
    #[error("spec.podSelector: {0}; the policy is not programmed")]
    BadPodSelector(String),
    /// The pod's namespace, or its label class, got no number (more than 4,095
    /// namespaces, or label classes in its namespace): it has the "world" identity, so
    /// no pod selector matches it as a peer.
    #[error(
        "no security identity left for this pod's namespace or label class; policies see it as outside the cluster"
    )]
    NoIdentity,
}

/// A port of a rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum PortSpec {
    /// Every port of the protocol.
    Any(Protocol),
    /// `lo..=hi`.
    Range(Protocol, u16, u16),
    /// A container port name, resolved on the destination pod.
    Named(Protocol, String),
}

/// A peer of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Peer {
    /// Pods: in the policy's namespace (`namespaces: None`) or in the namespaces the
    /// selector matches; every pod there (`pods: None`) or those the selector matches.
    Pods { namespaces: Option<LabelSelector>, pods: Option<LabelSelector> },
    /// Addresses: the `cidr` minus the `except`s, as disjoint prefixes.
    Block(Vec<IpNet>),
}

/// A validated rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rule {
    /// Index in the policy's `ingress` / `egress` list.
    pub index: usize,
    /// `None`: every peer.
    pub peers: Option<Vec<Peer>>,
    /// `None`: every port and protocol.
    pub ports: Option<Vec<PortSpec>>,
}

/// A validated policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Compiled {
    /// `spec.podSelector`.
    pub selector: LabelSelector,
    /// Ingress rules if the policy is of type Ingress (an empty list isolates and allows
    /// nothing).
    pub ingress: Option<Vec<Rule>>,
    /// Egress rules if the policy is of type Egress.
    pub egress: Option<Vec<Rule>>,
}

fn check_selector(field: &str, s: &LabelSelector, issues: &mut Vec<PolicyIssue>) -> bool {
    let mut ok = true;
    for (i, r) in s.match_expressions.iter().enumerate() {
        let valid = match r.operator {
            SelectorOperator::In | SelectorOperator::NotIn => !r.values.is_empty(),
            SelectorOperator::Exists | SelectorOperator::DoesNotExist => r.values.is_empty(),
        };
        if !valid {
            issues.push(PolicyIssue::BadRequirement {
                field: format!("{field}.matchExpressions[{i}]"),
                key: r.key.clone(),
                operator: r.operator,
                count: r.values.len(),
            });
            ok = false;
        }
    }
    ok
}

/// `cidr` minus `except`, as disjoint prefixes (each except splits the prefixes it
/// overlaps into halves down to its own length).
pub(crate) fn subtract(cidr: IpNet, except: &[IpNet]) -> Vec<IpNet> {
    let mut out = vec![cidr.network()];
    for e in except.iter().map(IpNet::network) {
        let mut next = Vec::new();
        for p in out {
            if e.contains_net(&p) {
                continue;
            }
            if !p.contains_net(&e) {
                next.push(p);
                continue;
            }
            // Split `p` down to `e`'s length, keeping every half that misses `e`.
            let mut cur = p;
            while cur.prefix_len() < e.prefix_len() {
                let len = cur.prefix_len() + 1;
                let (Some(lo), Some(hi)) = (cur.subnet(len, 0), cur.subnet(len, 1)) else { break };
                if lo.contains_net(&e) {
                    next.push(hi);
                    cur = lo;
                } else {
                    next.push(lo);
                    cur = hi;
                }
            }
        }
        out = next;
    }
    out.sort();
    out
}

fn compile_rule(field: &str, index: usize, r: &PolicyRule, issues: &mut Vec<PolicyIssue>) -> Option<Rule> {
    let before = issues.len();
    let peers = if r.peers.is_empty() {
        None
    } else {
        let mut peers = Vec::new();
        for (j, p) in r.peers.iter().enumerate() {
            let f = format!("{field}.peers[{j}]");
            match p {
                PolicyPeer { ip_block: Some(b), pod_selector: None, namespace_selector: None } => {
                    let mut except = Vec::new();
                    for (k, e) in b.except.iter().enumerate() {
                        if !b.cidr.network().contains_net(e) {
                            issues.push(PolicyIssue::ExceptOutsideCidr {
                                field: format!("{f}.ipBlock.except[{k}]"),
                                except: *e,
                                cidr: b.cidr,
                            });
                        }
                        except.push(*e);
                    }
                    peers.push(Peer::Block(subtract(b.cidr, &except)));
                }
                PolicyPeer { ip_block: None, pod_selector, namespace_selector }
                    if pod_selector.is_some() || namespace_selector.is_some() =>
                {
                    let mut ok = true;
                    if let Some(s) = pod_selector {
                        ok &= check_selector(&format!("{f}.podSelector"), s, issues);
                    }
                    if let Some(s) = namespace_selector {
                        ok &= check_selector(&format!("{f}.namespaceSelector"), s, issues);
                    }
                    if ok {
                        peers.push(Peer::Pods { namespaces: namespace_selector.clone(), pods: pod_selector.clone() });
                    }
                }
                _ => issues.push(PolicyIssue::BadPeer { field: f }),
            }
        }
        Some(peers)
    };
    let ports = if r.ports.is_empty() {
        None
    } else {
        let mut ports = Vec::new();
        for (j, p) in r.ports.iter().enumerate() {
            let f = format!("{field}.ports[{j}]");
            match compile_port(&f, p) {
                Ok(spec) => ports.push(spec),
                Err(issue) => issues.push(issue),
            }
        }
        ports.sort();
        ports.dedup();
        Some(ports)
    };
    (issues.len() == before).then_some(Rule { index, peers, ports })
}

fn compile_port(field: &str, p: &PolicyPort) -> Result<PortSpec, PolicyIssue> {
    match (&p.port, p.end_port) {
        (None, None) => Ok(PortSpec::Any(p.protocol)),
        (None, Some(end_port)) | (Some(PortRef::Name(_)), Some(end_port)) => {
            Err(PolicyIssue::EndPortWithoutNumber { field: field.to_owned(), end_port })
        }
        (Some(PortRef::Number(0)), _) => Err(PolicyIssue::ZeroPort { field: field.to_owned() }),
        (Some(PortRef::Number(port)), Some(end_port)) if end_port < *port => {
            Err(PolicyIssue::EndPortBelowPort { field: field.to_owned(), port: *port, end_port })
        }
        (Some(PortRef::Number(port)), end) => Ok(PortSpec::Range(p.protocol, *port, end.unwrap_or(*port))),
        (Some(PortRef::Name(n)), None) if n.is_empty() => Err(PolicyIssue::EmptyPortName { field: field.to_owned() }),
        (Some(PortRef::Name(n)), None) => Ok(PortSpec::Named(p.protocol, n.clone())),
    }
}

/// Validates a policy: `None` if it cannot be programmed at all (its pod selector is
/// invalid), else the policy without its bad rules. Either way with the problems found.
pub(crate) fn compile(np: &NetworkPolicy) -> (Option<Compiled>, Vec<PolicyIssue>) {
    let mut issues = Vec::new();
    if !check_selector("spec.podSelector", &np.pod_selector, &mut issues) {
        let message = issues.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
        return (None, vec![PolicyIssue::BadPodSelector(message)]);
    }
    // Kubernetes: without policyTypes, Ingress always, Egress if there are egress rules.
    let (ingress_type, egress_type) = if np.policy_types.is_empty() {
        (true, !np.egress.is_empty())
    } else {
        (np.policy_types.contains(&PolicyType::Ingress), np.policy_types.contains(&PolicyType::Egress))
    };
    let rules = |field: &'static str, list: &[PolicyRule], issues: &mut Vec<PolicyIssue>| {
        if list.len() > MAX_RULES {
            issues.push(PolicyIssue::TooManyRules { field });
        }
        list.iter()
            .take(MAX_RULES)
            .enumerate()
            .filter_map(|(i, r)| compile_rule(&format!("{field}[{i}]"), i, r, issues))
            .collect::<Vec<_>>()
    };
    let ingress = ingress_type.then(|| rules("spec.ingress", &np.ingress, &mut issues));
    let egress = egress_type.then(|| rules("spec.egress", &np.egress, &mut issues));
    (Some(Compiled { selector: np.pod_selector.clone(), ingress, egress }), issues)
}

/// The label keys `s` reads.
fn selector_keys(s: &LabelSelector, out: &mut BTreeSet<String>) {
    out.extend(s.match_labels.keys().cloned());
    out.extend(s.match_expressions.iter().map(|r| r.key.clone()));
}

/// Every pod-label key some policy reads: a pod's class keeps only these labels.
fn pod_label_keys(state: &ClusterState) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for np in state.network_policies().values() {
        selector_keys(&np.pod_selector, &mut keys);
        for rule in np.ingress.iter().chain(&np.egress) {
            for p in &rule.peers {
                if let Some(s) = &p.pod_selector {
                    selector_keys(s, &mut keys);
                }
            }
        }
    }
    keys
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// Numbers in `first..=last` for `keys` (sorted): each key's hash slot, or the next free
/// one, in key order. `None` for keys beyond the space.
fn assign_numbers<'a, K: Ord + Clone + 'a>(
    keys: impl Iterator<Item = (&'a K, u64)>,
    first: u32,
    last: u32,
) -> BTreeMap<K, Option<u32>> {
    let space = u64::from(last - first) + 1;
    let mut taken: BTreeSet<u32> = BTreeSet::new();
    let mut out = BTreeMap::new();
    for (k, hash) in keys {
        let number = if taken.len() as u64 >= space {
            None
        } else {
            let mut slot = (hash % space) as u32;
            while taken.contains(&(first + slot)) {
                slot = if u64::from(slot) + 1 == space { 0 } else { slot + 1 };
            }
            taken.insert(first + slot);
            Some(first + slot)
        };
        out.insert(k.clone(), number);
    }
    out
}

fn labels_text(labels: &Labels) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// A pod's label class: the labels some policy reads.
fn class_of(pod: &Pod, keys: &BTreeSet<String>) -> Labels {
    pod.labels.iter().filter(|(k, _)| keys.contains(*k)).map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// The classes of one namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct NamespaceClasses {
    /// Class labels → number (`None`: no number left) and member pods.
    classes: BTreeMap<Labels, (Option<u16>, BTreeSet<ObjectKey>)>,
}

impl NamespaceClasses {
    fn renumber(&mut self) {
        let hashes: Vec<(Labels, u64)> =
            self.classes.keys().map(|l| (l.clone(), fnv1a(labels_text(l).as_bytes()))).collect();
        let numbers = assign_numbers(hashes.iter().map(|(l, h)| (l, *h)), 0, u32::from(Identity::MAX_CLASS));
        for (labels, (number, _)) in self.classes.iter_mut() {
            *number = numbers.get(labels).copied().flatten().map(|n| n as u16);
        }
    }
}

/// A match on an identity: a whole namespace or one class of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct IdentityTerm {
    namespace: u16,
    class: Option<u16>,
}

impl IdentityTerm {
    fn value_mask(self) -> (u32, u32) {
        match self.class {
            Some(c) => (Identity::new(self.namespace, c).0, Identity::MASK),
            None => (Identity::new(self.namespace, 0).0, Identity::NAMESPACE_MASK),
        }
    }
}

/// One peer of a rule as matches: identity terms and address blocks (on the source for
/// ingress rules, on the destination for egress rules), or anything.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
struct PeerTerms {
    any: bool,
    identities: BTreeSet<IdentityTerm>,
    blocks: BTreeSet<IpNet>,
}

/// A rule with named ports, resolved per chassis on its pods: (rule id, peer terms, the
/// named ports).
type NamedPortRule = (u32, PeerTerms, Vec<(Protocol, String)>);

/// The chassis-independent part of a policy: its flows with identity and address terms,
/// and the named ports still to resolve on each chassis's pods.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
struct PolicyFlows {
    /// Flows the same on every chassis (selection, rules without named ports), on
    /// datapath key 0 (set per chassis).
    common: Vec<LogicalFlow>,
    /// Ingress rules with named ports, with their source terms.
    ingress_named: Vec<NamedPortRule>,
    /// Egress rules with named ports, with their destination terms.
    egress_named: Vec<NamedPortRule>,
    /// True if the policy has ingress rules (its flows matter only where it selects
    /// a pod).
    ingress: bool,
    /// True if the policy is of type Egress (its flows matter on every chassis).
    egress: bool,
}

#[derive(Clone, Debug)]
struct PolicyEntry {
    compiled: Option<Compiled>,
    issues: Vec<PolicyIssue>,
    number: Option<u32>,
    flows: PolicyFlows,
    /// Pods it selects, by node (only those with a node).
    selected: BTreeMap<String, BTreeSet<ObjectKey>>,
    /// The node each selected pod is filed under in `selected`.
    selected_at: HashMap<ObjectKey, String>,
}

/// A pod's NetworkPolicy state, as its own chassis needs it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub(crate) struct PodAcl {
    /// The pod's identity.
    pub identity: Identity,
    /// Ingress: the isolating policies and the rule ids to evaluate.
    pub ingress: Option<(Vec<ObjectKey>, Vec<u32>)>,
    /// Egress: the isolating policies and the rule ids to evaluate.
    pub egress: Option<(Vec<ObjectKey>, Vec<u32>)>,
}

/// What a change made stale, for the engine to recompile.
#[derive(Clone, Debug, Default)]
pub(crate) struct Dirt {
    /// Everything, everywhere (policies appeared or all went).
    pub everything: bool,
    /// Pods whose ACL state changed (recompiled on their node).
    pub pods: BTreeSet<ObjectKey>,
    /// Policies changed everywhere.
    pub policies: BTreeSet<ObjectKey>,
    /// Policies changed on some chassis only.
    pub policies_on: BTreeMap<ObjectKey, BTreeSet<String>>,
    /// Namespaces whose egress flows changed everywhere.
    pub namespaces: BTreeSet<String>,
}

/// What changed in a batch, as the engine saw it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Touched {
    /// Pods upserted or deleted, with the node they were on before.
    pub pods: BTreeMap<ObjectKey, Option<String>>,
    /// Namespaces upserted or deleted.
    pub namespaces: BTreeSet<String>,
    /// Policies upserted or deleted.
    pub policies: BTreeSet<ObjectKey>,
}

/// The NetworkPolicy side of the engine: identities and compiled policies, kept up to
/// date change by change.
#[derive(Clone, Debug, Default)]
pub(crate) struct PolicyIndex {
    stateful: bool,
    keys: BTreeSet<String>,
    namespace_numbers: BTreeMap<String, Option<u16>>,
    classes: BTreeMap<String, NamespaceClasses>,
    pod_class: HashMap<ObjectKey, (String, Labels)>,
    policies: BTreeMap<ObjectKey, PolicyEntry>,
    /// Policies by namespace.
    by_namespace: BTreeMap<String, BTreeSet<ObjectKey>>,
    pod_acl: HashMap<ObjectKey, PodAcl>,
}

/// The labels of namespace `name` as selectors see them (with
/// [`NAMESPACE_NAME_LABEL`], which the API server always sets).
pub(crate) fn namespace_labels(state: &ClusterState, name: &str) -> Labels {
    let mut labels = state.namespaces().get(name).map(|n| n.labels.clone()).unwrap_or_default();
    labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name.to_owned());
    labels
}

fn pods_in_namespace<'a>(state: &'a ClusterState, ns: &str) -> impl Iterator<Item = &'a Pod> {
    let start = ObjectKey::new(ns, "");
    state.pods().range(start..).take_while(move |(k, _)| &*k.namespace == ns).map(|(_, p)| p)
}

impl PolicyIndex {
    /// True while the cluster has a NetworkPolicy: the ACL stages are programmed.
    pub fn stateful(&self) -> bool {
        self.stateful
    }

    /// Policies by key, with their problems.
    pub fn issues(&self, key: &ObjectKey) -> Vec<PolicyIssue> {
        self.policies.get(key).map(|e| e.issues.clone()).unwrap_or_default()
    }

    /// The pod's problem, if it got no identity while policies are in force.
    pub fn pod_issue(&self, key: &ObjectKey) -> Option<PolicyIssue> {
        let acl = self.pod_acl.get(key)?;
        (self.stateful && self.pod_class.contains_key(key) && acl.identity == Identity::WORLD)
            .then_some(PolicyIssue::NoIdentity)
    }

    /// The pod's ACL state (`None` for pods the index does not hold).
    pub fn pod_acl(&self, key: &ObjectKey) -> Option<&PodAcl> {
        self.pod_acl.get(key)
    }

    /// Policies with an egress part, in namespace `ns`, in key order.
    fn egress_policies(&self, ns: &str) -> Vec<(&ObjectKey, u32)> {
        self.by_namespace
            .get(ns)
            .into_iter()
            .flatten()
            .filter_map(|k| {
                let e = self.policies.get(k)?;
                let n = e.number?;
                e.compiled.as_ref()?.egress.as_ref()?;
                Some((k, n))
            })
            .collect()
    }

    /// Namespaces that have egress policies.
    pub fn egress_namespaces(&self) -> impl Iterator<Item = &str> {
        self.by_namespace.keys().filter(|ns| !self.egress_policies(ns).is_empty()).map(String::as_str)
    }

    /// Every policy key.
    pub fn policy_keys(&self) -> impl Iterator<Item = &ObjectKey> {
        self.policies.keys()
    }

    fn identity_of(&self, pod: &ObjectKey) -> Identity {
        let Some((ns, labels)) = self.pod_class.get(pod) else { return Identity::WORLD };
        let (Some(Some(n)), Some(Some(c))) =
            (self.namespace_numbers.get(ns), self.classes.get(ns).and_then(|c| c.classes.get(labels)).map(|(n, _)| *n))
        else {
            return Identity::WORLD;
        };
        Identity::new(*n, c)
    }

    /// Identity terms for pods in the namespaces `namespaces` matches (`None`: `own`),
    /// narrowed to the classes `pods` matches.
    fn identity_terms(
        &self,
        state: &ClusterState,
        own: &str,
        namespaces: Option<&LabelSelector>,
        pods: Option<&LabelSelector>,
    ) -> BTreeSet<IdentityTerm> {
        let mut out = BTreeSet::new();
        let candidates: Vec<&String> = match namespaces {
            None => self.namespace_numbers.keys().filter(|n| *n == own).collect(),
            Some(sel) => self.namespace_numbers.keys().filter(|n| sel.matches(&namespace_labels(state, n))).collect(),
        };
        for ns in candidates {
            let Some(Some(number)) = self.namespace_numbers.get(ns) else { continue };
            match pods {
                Some(sel) if *sel != LabelSelector::default() => {
                    for (labels, (class, _)) in self.classes.get(ns).map(|c| &c.classes).into_iter().flatten() {
                        if let Some(class) = class
                            && sel.matches(labels)
                        {
                            out.insert(IdentityTerm { namespace: *number, class: Some(*class) });
                        }
                    }
                }
                _ => {
                    out.insert(IdentityTerm { namespace: *number, class: None });
                }
            }
        }
        out
    }

    fn peer_terms(&self, state: &ClusterState, own: &str, peers: &Option<Vec<Peer>>) -> PeerTerms {
        let mut t = PeerTerms::default();
        match peers {
            None => t.any = true,
            Some(peers) => {
                for p in peers {
                    match p {
                        Peer::Block(nets) => t.blocks.extend(nets.iter().copied()),
                        Peer::Pods { namespaces, pods } => {
                            t.identities.extend(self.identity_terms(state, own, namespaces.as_ref(), pods.as_ref()))
                        }
                    }
                }
            }
        }
        t
    }

    /// The chassis-independent flows of a policy.
    fn policy_flows(&self, state: &ClusterState, key: &ObjectKey, entry: &PolicyEntry) -> PolicyFlows {
        let mut out = PolicyFlows::default();
        let (Some(c), Some(number)) = (&entry.compiled, entry.number) else { return out };
        let owner = Owner::Policy(key.clone());
        let ns = &*key.namespace;
        let dp = DatapathKey::JOIN; // placeholder, replaced per chassis
        if let Some(rules) = &c.ingress {
            out.ingress = true;
            for r in rules {
                let id = ingress_rule_id(number, r.index);
                let src = self.peer_terms(state, ns, &r.peers);
                let named = rule_flows(&mut out.common, dp, &owner, id, &src, Side::Source, r.ports.as_ref());
                if !named.is_empty() {
                    out.ingress_named.push((id, src, named));
                }
            }
        }
        if let Some(rules) = &c.egress {
            out.egress = true;
            let ids: Vec<u32> = rules.iter().map(|r| egress_rule_id(number, r.index)).collect();
            let mut actions = vec![Action::SetFlags(Flags::ACL_EG_ISOLATED)];
            if !ids.is_empty() {
                actions.push(Action::AclEval(ids));
            }
            for term in self.identity_terms(state, ns, None, Some(&c.selector)) {
                let (value, mask) = term.value_mask();
                out.common.push(LogicalFlow {
                    datapath: dp,
                    stage: Stage::AclEval,
                    priority: 100,
                    matches: Match::any().acl_id(select_id(number)).acl_meta(value, mask),
                    actions: actions.clone(),
                    owner: owner.clone(),
                });
            }
            for r in rules {
                let id = egress_rule_id(number, r.index);
                let dst = self.peer_terms(state, ns, &r.peers);
                let named = rule_flows(&mut out.common, dp, &owner, id, &dst, Side::Destination, r.ports.as_ref());
                if !named.is_empty() {
                    out.egress_named.push((id, dst, named));
                }
            }
        }
        out
    }

    /// Brings the index up to date with `state` after the changes in `touched`, and says
    /// what must be recompiled. Without `per_chassis` (no chassis exists yet), what is
    /// stale on some chassis only is not worked out.
    pub fn refresh(&mut self, state: &ClusterState, touched: &Touched, per_chassis: bool) -> Dirt {
        let mut dirt = Dirt::default();
        let stateful = !state.network_policies().is_empty();
        if stateful != self.stateful {
            self.stateful = stateful;
            dirt.everything = true;
        }
        let keys = pod_label_keys(state);
        let mut pods: BTreeSet<ObjectKey> = touched.pods.keys().cloned().collect();
        if keys != self.keys {
            self.keys = keys;
            pods.extend(state.pods().keys().cloned());
            pods.extend(self.pod_class.keys().cloned());
        }

        // Classes and namespaces.
        let mut class_namespaces: BTreeSet<String> = BTreeSet::new();
        for key in &pods {
            let old = self.pod_class.remove(key);
            let new = state.pods().get(key).map(|p| (p.namespace.clone(), class_of(p, &self.keys)));
            if old == new {
                if let Some(v) = new {
                    self.pod_class.insert(key.clone(), v);
                }
                continue;
            }
            if let Some((ns, labels)) = &old
                && let Some(classes) = self.classes.get_mut(ns)
                && let Some((_, members)) = classes.classes.get_mut(labels)
            {
                members.remove(key);
                if members.is_empty() {
                    classes.classes.remove(labels);
                    class_namespaces.insert(ns.clone());
                }
            }
            if let Some((ns, labels)) = &new {
                let classes = self.classes.entry(ns.clone()).or_default();
                let entry = classes.classes.entry(labels.clone()).or_insert_with(|| {
                    class_namespaces.insert(ns.clone());
                    (None, BTreeSet::new())
                });
                entry.1.insert(key.clone());
                self.pod_class.insert(key.clone(), new.clone().unwrap_or_default());
            }
        }
        // Renumber the namespaces whose class set changed; their moved classes' pods get
        // a new identity.
        for ns in &class_namespaces {
            let Some(classes) = self.classes.get_mut(ns) else { continue };
            let before: BTreeMap<Labels, Option<u16>> =
                classes.classes.iter().map(|(l, (n, _))| (l.clone(), *n)).collect();
            classes.renumber();
            for (l, (n, members)) in &classes.classes {
                if before.get(l) != Some(n) {
                    dirt.pods.extend(members.iter().cloned());
                }
            }
            if classes.classes.is_empty() {
                self.classes.remove(ns);
            }
        }
        // Namespace numbers: the namespaces that have pods.
        let namespaces: BTreeSet<String> = self.classes.keys().cloned().collect();
        let mut moved_namespaces: BTreeSet<String> = BTreeSet::new();
        if namespaces.iter().ne(self.namespace_numbers.keys()) {
            let hashes: Vec<(String, u64)> = namespaces.iter().map(|n| (n.clone(), fnv1a(n.as_bytes()))).collect();
            let numbers = assign_numbers(hashes.iter().map(|(n, h)| (n, *h)), 1, u32::from(Identity::MAX_NAMESPACE));
            let numbers: BTreeMap<String, Option<u16>> =
                numbers.into_iter().map(|(k, v)| (k, v.map(|n| n as u16))).collect();
            for ns in numbers.keys().chain(self.namespace_numbers.keys()) {
                if numbers.get(ns) != self.namespace_numbers.get(ns) {
                    moved_namespaces.insert(ns.clone());
                }
            }
            self.namespace_numbers = numbers;
            dirt.namespaces.extend(moved_namespaces.iter().cloned());
            for ns in &moved_namespaces {
                if let Some(c) = self.classes.get(ns) {
                    for (_, members) in c.classes.values() {
                        dirt.pods.extend(members.iter().cloned());
                    }
                }
            }
        }

        // Policies: compile the touched ones, renumber if the set changed.
        let mut recompute: BTreeSet<ObjectKey> = BTreeSet::new();
        for key in &touched.policies {
            recompute.insert(key.clone());
            let old_selected = self.policies.remove(key).map(|e| e.selected).unwrap_or_default();
            for pods in old_selected.into_values() {
                dirt.pods.extend(pods);
            }
            if let Some(set) = self.by_namespace.get_mut(&*key.namespace) {
                set.remove(key);
                if set.is_empty() {
                    self.by_namespace.remove(&*key.namespace);
                }
            }
            if let Some(np) = state.network_policies().get(key) {
                let (compiled, issues) = compile(np);
                self.policies.insert(
                    key.clone(),
                    PolicyEntry {
                        compiled,
                        issues,
                        number: None,
                        flows: PolicyFlows::default(),
                        selected: BTreeMap::new(),
                        selected_at: HashMap::new(),
                    },
                );
                self.by_namespace.entry(key.namespace.to_string()).or_default().insert(key.clone());
            }
            dirt.namespaces.insert(key.namespace.to_string());
        }
        if !touched.policies.is_empty() {
            let hashes: Vec<(ObjectKey, u64)> =
                self.policies.keys().map(|k| (k.clone(), fnv1a(k.to_string().as_bytes()))).collect();
            let numbers = assign_numbers(hashes.iter().map(|(k, h)| (k, *h)), 1, MAX_POLICY_NUMBER);
            for (key, entry) in self.policies.iter_mut() {
                let number = numbers.get(key).copied().flatten();
                if number != entry.number {
                    entry.number = number;
                    recompute.insert(key.clone());
                    dirt.namespaces.insert(key.namespace.to_string());
                    for pods in entry.selected.values() {
                        dirt.pods.extend(pods.iter().cloned());
                    }
                    if number.is_none() {
                        entry.issues.push(PolicyIssue::NoNumber);
                    } else {
                        entry.issues.retain(|i| *i != PolicyIssue::NoNumber);
                    }
                }
            }
        }
        // Policies whose identity terms may have moved.
        // (A namespace whose class set changed: a class came or went, others may have
        // moved.)
        let relevant_ns: BTreeSet<&String> =
            class_namespaces.iter().chain(moved_namespaces.iter()).chain(touched.namespaces.iter()).collect();
        if !relevant_ns.is_empty() {
            let labels: Vec<(&String, Labels)> =
                relevant_ns.iter().map(|ns| (*ns, namespace_labels(state, ns))).collect();
            for (key, entry) in &self.policies {
                let Some(c) = &entry.compiled else { continue };
                let own = &*key.namespace;
                let selectors: Vec<&LabelSelector> = c
                    .ingress
                    .iter()
                    .chain(&c.egress)
                    .flatten()
                    .flat_map(|r| r.peers.iter().flatten())
                    .filter_map(|p| match p {
                        Peer::Pods { namespaces: Some(sel), .. } => Some(sel),
                        _ => None,
                    })
                    .collect();
                // Namespace label changes can also unmatch: be generous with those.
                let reads = |ns: &String, l: &Labels| {
                    **ns == *own
                        || (!selectors.is_empty() && touched.namespaces.contains(ns))
                        || selectors.iter().any(|sel| sel.matches(l))
                };
                if labels.iter().any(|(ns, l)| reads(ns, l)) {
                    recompute.insert(key.clone());
                }
            }
        }
        for key in &recompute {
            let Some(entry) = self.policies.get(key) else { continue };
            let flows = self.policy_flows(state, key, entry);
            let entry = self.policies.get_mut(key).expect("present");
            if flows != entry.flows {
                entry.flows = flows;
                dirt.policies.insert(key.clone());
            }
        }
        for key in &touched.policies {
            dirt.policies.insert(key.clone());
        }

        // Which pods each policy selects (touched pods, touched policies' namespaces).
        let policy_namespaces: BTreeSet<&str> = touched.policies.iter().map(|k| &*k.namespace).collect();
        let mut selection_pods: BTreeSet<ObjectKey> = pods.clone();
        for ns in &policy_namespaces {
            selection_pods.extend(pods_in_namespace(state, ns).map(Pod::key));
        }
        let mut on: HashMap<&ObjectKey, BTreeSet<&str>> = HashMap::new();
        for pod_key in &selection_pods {
            let pod = state.pods().get(pod_key);
            let old = touched.pods.get(pod_key);
            let old_node = old.and_then(Option::as_deref);
            let touched_pod = old.is_some();
            let ns = &*pod_key.namespace;
            let Some(candidates) = self.by_namespace.get(ns) else { continue };
            for pk in candidates {
                let Some(entry) = self.policies.get_mut(pk) else { continue };
                let before = entry.selected_at.remove(pod_key);
                if let Some(node) = &before
                    && let Some(set) = entry.selected.get_mut(node)
                {
                    set.remove(pod_key);
                    if set.is_empty() {
                        entry.selected.remove(node);
                    }
                }
                let mut after = None;
                if let (Some(c), Some(pod)) = (&entry.compiled, pod)
                    && let Some(node) = &pod.node
                    && c.selector.matches(&pod.labels)
                {
                    entry.selected.entry(node.clone()).or_default().insert(pod_key.clone());
                    entry.selected_at.insert(pod_key.clone(), node.clone());
                    after = Some(node.clone());
                }
                let changed = before != after;
                if per_chassis && (changed || touched_pod) {
                    let nodes = on.entry(pk).or_default();
                    nodes.extend(old_node);
                    nodes.extend(pod.and_then(|p| p.node.as_deref()));
                }
            }
        }
        for (pk, nodes) in on {
            dirt.policies_on.entry(pk.clone()).or_default().extend(nodes.into_iter().map(str::to_owned));
        }
        // Named ports resolve on local pods: a pod change on a node recompiles the
        // policies with named ports there.
        let nodes: BTreeSet<String> = touched
            .pods
            .iter()
            .flat_map(|(key, old)| old.iter().cloned().chain(state.pods().get(key).and_then(|p| p.node.clone())))
            .collect();
        if per_chassis && !nodes.is_empty() {
            for (pk, entry) in &self.policies {
                if !entry.flows.ingress_named.is_empty() || !entry.flows.egress_named.is_empty() {
                    dirt.policies_on.entry(pk.clone()).or_default().extend(nodes.iter().cloned());
                }
            }
        }

        // Pods' own ACL state.
        let mut acl_pods: BTreeSet<ObjectKey> = selection_pods;
        acl_pods.extend(dirt.pods.iter().cloned());
        // Pods with one namespace and one set of labels share their policies: work them
        // out once per such group.
        let mut by_labels: HashMap<(&str, &Labels), PodAcl> = HashMap::new();
        for key in acl_pods {
            let new = state.pods().get(&key).map(|p| {
                let mut acl = by_labels
                    .entry((p.namespace.as_str(), &p.labels))
                    .or_insert_with(|| self.compute_pod_acl(p))
                    .clone();
                acl.identity = self.identity_of(&key);
                acl
            });
            let old = match &new {
                Some(acl) => self.pod_acl.insert(key.clone(), acl.clone()),
                None => self.pod_acl.remove(&key),
            };
            if old != new {
                dirt.pods.insert(key);
            }
        }
        dirt
    }

    fn compute_pod_acl(&self, pod: &Pod) -> PodAcl {
        let key = pod.key();
        let mut acl = PodAcl { identity: self.identity_of(&key), ..PodAcl::default() };
        let mut ingress: (Vec<ObjectKey>, Vec<u32>) = Default::default();
        let mut egress: (Vec<ObjectKey>, Vec<u32>) = Default::default();
        let (mut in_isolated, mut eg_isolated) = (false, false);
        for pk in self.by_namespace.get(&pod.namespace).into_iter().flatten() {
            let Some(entry) = self.policies.get(pk) else { continue };
            let (Some(c), Some(number)) = (&entry.compiled, entry.number) else { continue };
            if !c.selector.matches(&pod.labels) {
                continue;
            }
            if let Some(rules) = &c.ingress {
                in_isolated = true;
                ingress.0.push(pk.clone());
                ingress.1.extend(rules.iter().map(|r| ingress_rule_id(number, r.index)));
            }
            if let Some(rules) = &c.egress {
                eg_isolated = true;
                egress.0.push(pk.clone());
                egress.1.extend(rules.iter().map(|r| egress_rule_id(number, r.index)));
            }
        }
        acl.ingress = in_isolated.then_some(ingress);
        acl.egress = eg_isolated.then_some(egress);
        acl
    }

    /// The policy's flows on chassis `chassis` (node switch `switch`), given the pods
    /// there. Ingress-only policies have flows only where they select a pod.
    pub fn policy_flows_on(
        &self,
        state: &ClusterState,
        key: &ObjectKey,
        chassis: &str,
        switch: DatapathKey,
        local_port: &dyn Fn(&ObjectKey) -> Option<PortKey>,
        out: &mut Vec<LogicalFlow>,
    ) {
        let Some(entry) = self.policies.get(key) else { return };
        let flows = &entry.flows;
        let selected = entry.selected.get(chassis);
        let wanted = flows.egress || (flows.ingress && selected.is_some_and(|s| !s.is_empty()));
        if !wanted {
            return;
        }
        let owner = Owner::Policy(key.clone());
        for f in &flows.common {
            // Ingress rule flows only where the policy selects a pod.
            let ingress_rule =
                f.matches.acl_id.and_then(decode_rule_id).is_some_and(|(_, dir, _)| dir == PolicyType::Ingress);
            if ingress_rule && selected.is_none_or(BTreeSet::is_empty) {
                continue;
            }
            out.push(LogicalFlow { datapath: switch, ..f.clone() });
        }
        if let Some(selected) = selected {
            for (id, src, named) in &flows.ingress_named {
                for pod_key in selected {
                    let (Some(pod), Some(port)) = (state.pods().get(pod_key), local_port(pod_key)) else { continue };
                    for (proto, name) in named {
                        if let Some(number) = pod.named_port(name, *proto) {
                            let m = Match::any().acl_id(*id).outport(port).l4_dst(IpProto::from(*proto), number);
                            peer_flows(out, switch, &owner, m, src, Side::Source, Flags::ACL_IN_ALLOWED);
                        }
                    }
                }
            }
        }
        if !flows.egress_named.is_empty() {
            for pod_key in state.pods_on_node(chassis) {
                let (Some(pod), Some(port)) = (state.pods().get(pod_key), local_port(pod_key)) else { continue };
                let identity = self.identity_of(pod_key);
                let ip = pod.network.as_ref().and_then(|n| n.ip_addresses.first()).map(IpNet::addr);
                for (id, dst, named) in &flows.egress_named {
                    if !(dst.any || dst.matches_pod(identity, ip)) {
                        continue;
                    }
                    for (proto, name) in named {
                        if let Some(number) = pod.named_port(name, *proto) {
                            out.push(LogicalFlow {
                                datapath: switch,
                                stage: Stage::AclEval,
                                priority: 100,
                                matches: Match::any().acl_id(*id).outport(port).l4_dst(IpProto::from(*proto), number),
                                actions: vec![Action::SetFlags(Flags::ACL_EG_ALLOWED)],
                                owner: owner.clone(),
                            });
                        }
                    }
                }
            }
        }
    }

    /// Namespace `ns`'s flows: the egress policies that may isolate its pods' traffic,
    /// and the drop of what none of them allows.
    pub fn namespace_flows(&self, ns: &str, switch: DatapathKey, out: &mut Vec<LogicalFlow>) {
        let policies = self.egress_policies(ns);
        let Some(Some(number)) = self.namespace_numbers.get(ns) else { return };
        if policies.is_empty() {
            return;
        }
        let owner = Owner::Namespace(Arc::from(ns));
        let term = IdentityTerm { namespace: *number, class: None }.value_mask();
        out.push(LogicalFlow {
            datapath: switch,
            stage: Stage::AclEval,
            priority: 100,
            matches: Match::any().acl_id(EGRESS_OF_SOURCE).acl_meta(term.0, term.1),
            actions: vec![Action::AclEval(policies.iter().map(|(_, n)| select_id(*n)).collect())],
            owner: owner.clone(),
        });
        let names: Vec<ObjectKey> = policies.iter().map(|(k, _)| (*k).clone()).collect();
        deny_flows(
            out,
            switch,
            &owner,
            Stage::LsOutAcl,
            80,
            Match::any().l3(L3::Ip).acl_meta(term.0, term.1),
            Flags::ACL_EG_ISOLATED,
            Flags::ACL_EG_ALLOWED,
            PolicyType::Egress,
            &names,
            ZoneScope::OutPort,
        );
    }
}

impl PeerTerms {
    fn matches_pod(&self, identity: Identity, ip: Option<IpAddr>) -> bool {
        self.identities.iter().any(|t| {
            let (value, mask) = t.value_mask();
            identity != Identity::WORLD && identity.0 & mask == value
        }) || ip.is_some_and(|ip| self.blocks.iter().any(|b| b.contains(ip)))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Ingress rules: the peer is the packet's source (identity in `acl_meta`).
    Source,
    /// Egress rules: the peer is the destination (the destination identity register).
    Destination,
}

/// The flows of one rule with its numeric and protocol ports; returns its named ports
/// (resolved per chassis).
fn rule_flows(
    out: &mut Vec<LogicalFlow>,
    dp: DatapathKey,
    owner: &Owner,
    id: u32,
    peers: &PeerTerms,
    side: Side,
    ports: Option<&Vec<PortSpec>>,
) -> Vec<(Protocol, String)> {
    let allowed = match side {
        Side::Source => Flags::ACL_IN_ALLOWED,
        Side::Destination => Flags::ACL_EG_ALLOWED,
    };
    let base = Match::any().acl_id(id);
    let mut named = Vec::new();
    match ports {
        None => peer_flows(out, dp, owner, base, peers, side, allowed),
        Some(ports) => {
            for p in ports {
                match p {
                    PortSpec::Any(proto) => {
                        let mut m = base.clone();
                        m.ip_proto = Some(IpProto::from(*proto));
                        peer_flows(out, dp, owner, m, peers, side, allowed);
                    }
                    PortSpec::Range(proto, lo, hi) => {
                        let m = base.clone().l4_dst_range(IpProto::from(*proto), *lo, *hi);
                        peer_flows(out, dp, owner, m, peers, side, allowed);
                    }
                    PortSpec::Named(proto, name) => named.push((*proto, name.clone())),
                }
            }
        }
    }
    named
}

/// One flow per peer term (identity or block) with `base`'s other conditions.
fn peer_flows(
    out: &mut Vec<LogicalFlow>,
    dp: DatapathKey,
    owner: &Owner,
    base: Match,
    peers: &PeerTerms,
    side: Side,
    allowed: Flags,
) {
    let flow = |matches: Match| LogicalFlow {
        datapath: dp,
        stage: Stage::AclEval,
        priority: 100,
        matches,
        actions: vec![Action::SetFlags(allowed)],
        owner: owner.clone(),
    };
    if peers.any {
        out.push(flow(base));
        return;
    }
    for t in &peers.identities {
        let (value, mask) = t.value_mask();
        let mut m = base.clone();
        match side {
            Side::Source => m = m.acl_meta(value, mask),
            Side::Destination => {
                m.dst_identity.value = value;
                m.dst_identity.mask = mask;
            }
        }
        out.push(flow(m));
    }
    for b in &peers.blocks {
        let m = match side {
            Side::Source => base.clone().ip_src(*b),
            Side::Destination => base.clone().ip_dst(*b),
        };
        out.push(flow(m));
    }
}

/// The drop flows of `isolated && !allowed` traffic matching `base`: an established
/// connection is marked blocked first (OVN), so its replies drop too.
#[allow(clippy::too_many_arguments)]
fn deny_flows(
    out: &mut Vec<LogicalFlow>,
    dp: DatapathKey,
    owner: &Owner,
    stage: Stage,
    priority: u16,
    base: Match,
    isolated: Flags,
    allowed: Flags,
    direction: PolicyType,
    policies: &[ObjectKey],
    zone: ZoneScope,
) {
    let m = base.flags_set(isolated).flags_clear(allowed);
    let deny = Action::Deny { direction, policies: policies.to_vec() };
    out.push(LogicalFlow {
        datapath: dp,
        stage,
        priority: priority + 1,
        matches: m.clone().ct_set(CtState::ESTABLISHED),
        actions: vec![
            Action::CtCommit { zone, mark: ct_mark::BLOCKED, mask: ct_mark::ALLOWED | ct_mark::BLOCKED },
            deny.clone(),
        ],
        owner: owner.clone(),
    });
    out.push(LogicalFlow { datapath: dp, stage, priority, matches: m, actions: vec![deny], owner: owner.clone() });
}

/// A local pod's ACL flows: its identity, its egress evaluation and verdict (for traffic
/// judged at the source), its ingress evaluation and verdict.
pub(crate) fn pod_flows(acl: &PodAcl, dp: DatapathKey, port: PortKey, owner: &Owner, out: &mut Vec<LogicalFlow>) {
    let mut add = |stage, priority, matches, actions| {
        out.push(LogicalFlow { datapath: dp, stage, priority, matches, actions, owner: owner.clone() })
    };
    add(
        Stage::LsInPreAcl,
        100,
        Match::any().inport(port),
        vec![Action::SetAclMeta { value: acl.identity.0, mask: acl_meta::ALL }, Action::Next],
    );
    if let Some((policies, ids)) = &acl.egress {
        let mut actions = vec![Action::SetFlags(Flags::ACL_EG_ISOLATED)];
        if !ids.is_empty() {
            actions.push(Action::AclEval(ids.clone()));
        }
        actions.push(Action::Next);
        add(Stage::LsInAcl, 80, Match::any().inport(port).l3(L3::Ip), actions);
        deny_flows(
            out,
            dp,
            owner,
            Stage::LsInAclAction,
            80,
            Match::any().inport(port).l3(L3::Ip),
            Flags::ACL_EG_ISOLATED,
            Flags::ACL_EG_ALLOWED,
            PolicyType::Egress,
            policies,
            ZoneScope::InPort,
        );
    }
    // Traffic to the pod: its ingress rules (if isolated) and the source's egress
    // policies, with the pod's identity as the destination's.
    let mut actions = vec![Action::SetDstIdentity(acl.identity)];
    match &acl.ingress {
        Some((_, ids)) => {
            let mut ids = ids.clone();
            ids.push(EGRESS_OF_SOURCE);
            actions.extend([Action::SetFlags(Flags::ACL_IN_ISOLATED), Action::AclEval(ids)]);
        }
        None => actions.push(Action::AclEval(vec![EGRESS_OF_SOURCE])),
    }
    actions.push(Action::Next);
    out.push(LogicalFlow {
        datapath: dp,
        stage: Stage::LsOutPreAcl,
        priority: 100,
        matches: Match::any().outport(port).l3(L3::Ip),
        actions,
        owner: owner.clone(),
    });
    if let Some((policies, _)) = &acl.ingress {
        deny_flows(
            out,
            dp,
            owner,
            Stage::LsOutAcl,
            90,
            Match::any().outport(port).l3(L3::Ip),
            Flags::ACL_IN_ISOLATED,
            Flags::ACL_IN_ALLOWED,
            PolicyType::Ingress,
            policies,
            ZoneScope::OutPort,
        );
    }
}

/// The ACL flows every node switch has while the cluster has NetworkPolicies: conntrack,
/// vouching for replies, deferral of pod destinations, the commit of allowed
/// connections, and what is always allowed (the node's own traffic to its pods,
/// hairpin, ARP).
pub(crate) fn switch_flows(
    config: &NetworkConfig,
    dp: DatapathKey,
    management_ips: &[IpNet],
    owner: &Owner,
    out: &mut Vec<LogicalFlow>,
) {
    let mut add = |stage, priority, matches, actions| {
        out.push(LogicalFlow { datapath: dp, stage, priority, matches, actions, owner: owner.clone() })
    };
    let next = || vec![Action::Next];
    let stor = port_keys::SWITCH_ROUTER;
    let ip = || Match::any().l3(L3::Ip);
    let commit = |zone, mark| Action::CtCommit { zone, mark, mask: ct_mark::ALLOWED | ct_mark::BLOCKED | mark };
    let allowed = ct_mark::ALLOWED;

    // ls_in_pre_acl: the node's host is an identity of its own.
    add(
        Stage::LsInPreAcl,
        100,
        Match::any().inport(port_keys::MANAGEMENT),
        vec![Action::SetAclMeta { value: Identity::HOST.0, mask: acl_meta::ALL }, Action::Next],
    );

    // ls_in_acl_ct: the source port's zone (the load balancer tracked VIP traffic).
    add(Stage::LsInAclCt, 110, Match::any().inport(stor), next());
    add(Stage::LsInAclCt, 100, ip().ct_clear(CtState::TRACKED), vec![Action::CtNext { zone: ZoneScope::InPort }]);

    // ls_in_acl: vouch for replies, defer pod destinations.
    add(Stage::LsInAcl, 120, Match::any().inport(stor), next());
    add(
        Stage::LsInAcl,
        110,
        ip().flags_set(Flags::HAIRPIN_REPLY).ct_set(CtState::REPLY),
        vec![Action::SetAclMeta { value: acl_meta::VOUCHED, mask: acl_meta::VOUCHED }, Action::Next],
    );
    for (state, priority) in [(CtState(CtState::ESTABLISHED.0 | CtState::REPLY.0), 100), (CtState::RELATED, 101)] {
        let base = ip().ct_set(state).ct_mark(allowed, allowed | ct_mark::CLIENT_NAT);
        add(
            Stage::LsInAcl,
            priority,
            base,
            vec![Action::SetAclMeta { value: acl_meta::VOUCHED, mask: acl_meta::VOUCHED }, Action::Next],
        );
        let base = ip().ct_set(state).ct_mark(allowed | ct_mark::CLIENT_NAT, allowed | ct_mark::CLIENT_NAT);
        add(
            Stage::LsInAcl,
            priority,
            base,
            vec![
                Action::SetAclMeta {
                    value: acl_meta::VOUCHED | acl_meta::CLIENT_NAT,
                    mask: acl_meta::VOUCHED | acl_meta::CLIENT_NAT,
                },
                Action::Next,
            ],
        );
    }
    add(
        Stage::LsInAcl,
        95,
        ip().ct_set(CtState(CtState::ESTABLISHED.0 | CtState::REPLY.0)).ct_mark(ct_mark::BLOCKED, ct_mark::BLOCKED),
        vec![Action::Drop],
    );
    for net in &config.cluster_networks {
        // Traffic the client's load balancer DNATed tells the destination, which stores
        // it with the connection, so that the reply is un-NATed on the way back.
        add(
            Stage::LsInAcl,
            91,
            Match::any().ip_dst(net.cidr.network()).ct_set(CtState::DNAT),
            vec![
                Action::SetFlags(Flags::ACL_DEFERRED),
                Action::SetAclMeta { value: acl_meta::CLIENT_NAT, mask: acl_meta::CLIENT_NAT },
                Action::Next,
            ],
        );
        add(
            Stage::LsInAcl,
            90,
            Match::any().ip_dst(net.cidr.network()),
            vec![Action::SetFlags(Flags::ACL_DEFERRED), Action::Next],
        );
    }

    // ls_in_acl_action: commit what traffic judged here allowed.
    add(Stage::LsInAclAction, 112, Match::any().inport(stor), next());
    add(Stage::LsInAclAction, 111, Match::any().acl_meta(acl_meta::VOUCHED, acl_meta::VOUCHED), next());
    add(Stage::LsInAclAction, 110, Match::any().flags_set(Flags::ACL_DEFERRED), next());
    add(
        Stage::LsInAclAction,
        70,
        ip().ct_clear(CtState::INVALID).ct_mark(0, allowed),
        vec![commit(ZoneScope::InPort, allowed), Action::Next],
    );

    // ls_out_lb: vouched replies that need no un-NAT skip conntrack altogether.
    add(
        Stage::LsOutLb,
        105,
        Match::any().acl_meta(acl_meta::VOUCHED, acl_meta::VOUCHED | acl_meta::CLIENT_NAT),
        next(),
    );

    // ls_out_pre_acl: what needs no verdict, and the source's egress policies.
    let pass = || vec![Action::SetFlags(Flags::ACL_PASS), Action::Next];
    add(Stage::LsOutPreAcl, 120, Match::any().outport(stor), pass());
    add(Stage::LsOutPreAcl, 110, Match::any().acl_meta(acl_meta::VOUCHED, acl_meta::VOUCHED), pass());
    add(
        Stage::LsOutPreAcl,
        109,
        ip().ct_set(CtState(CtState::ESTABLISHED.0 | CtState::REPLY.0)).ct_mark(allowed, allowed),
        pass(),
    );
    add(Stage::LsOutPreAcl, 108, ip().ct_set(CtState::RELATED).ct_mark(allowed, allowed), pass());
    add(
        Stage::LsOutPreAcl,
        107,
        ip().ct_set(CtState(CtState::ESTABLISHED.0 | CtState::REPLY.0)).ct_mark(ct_mark::BLOCKED, ct_mark::BLOCKED),
        vec![Action::Drop],
    );
    for family in config.cluster_networks.iter().map(|n| n.cidr.family()) {
        if let Some(hairpin) = config.hairpin_snat_ip(family) {
            add(
                Stage::LsOutPreAcl,
                106,
                Match::any().ip_src(IpNet::host(hairpin)),
                vec![Action::SetFlags(Flags::ACL_BYPASS), Action::Next],
            );
        }
    }
    // The node's own host (kubelet probes), directly or through a Service: its address
    // with the host identity, which only its management port gives.
    for mgmt in management_ips {
        add(
            Stage::LsOutPreAcl,
            105,
            Match::any().ip_src(IpNet::host(mgmt.addr())).acl_meta(Identity::HOST.0, Identity::MASK),
            vec![Action::SetFlags(Flags::ACL_BYPASS), Action::Next],
        );
    }
    add(Stage::LsOutPreAcl, 90, ip(), vec![Action::AclEval(vec![EGRESS_OF_SOURCE]), Action::Next]);

    // ls_out_acl: the verdict. Denials are the pods' and namespaces' flows above 80;
    // what reaches 70 is allowed and committed once.
    add(Stage::LsOutAcl, 110, Match::any().flags_set(Flags::ACL_PASS), next());
    for nat in [false, true] {
        let (meta, mark) = if nat { (acl_meta::CLIENT_NAT, allowed | ct_mark::CLIENT_NAT) } else { (0, allowed) };
        add(
            Stage::LsOutAcl,
            70,
            ip().ct_clear(CtState::INVALID).ct_mark(0, allowed).acl_meta(meta, acl_meta::CLIENT_NAT),
            vec![commit(ZoneScope::OutPort, mark), Action::Next],
        );
    }
}

/// A `u128`-range helper for the reference of [`subtract`] in tests.
#[cfg(test)]
fn contains_any(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn subtract_leaves_exactly_the_addresses_outside_the_excepts() {
        let cidr = net("10.0.0.0/24");
        let except = [net("10.0.0.16/28"), net("10.0.0.200/32"), net("10.0.0.0/30")];
        let parts = subtract(cidr, &except);
        for i in 0..=255u8 {
            let ip: IpAddr = format!("10.0.0.{i}").parse().unwrap();
            let expected = !except.iter().any(|e| e.contains(ip));
            assert_eq!(contains_any(&parts, ip), expected, "{ip}");
        }
        // Disjoint.
        for (i, a) in parts.iter().enumerate() {
            for b in &parts[i + 1..] {
                assert!(!a.contains_net(b) && !b.contains_net(a), "{a} {b}");
            }
        }
        assert!(subtract(cidr, &[net("10.0.0.0/16")]).is_empty());
        assert_eq!(subtract(cidr, &[net("10.1.0.0/16")]), vec![cidr]);
        let v6 = subtract(net("fd00::/64"), &[net("fd00::1/128")]);
        assert_eq!(v6.len(), 64);
    }

    #[test]
    fn rule_ids_decode() {
        assert_eq!(decode_rule_id(ingress_rule_id(7, 0)), Some((7, PolicyType::Ingress, 0)));
        assert_eq!(decode_rule_id(egress_rule_id(7, 126)), Some((7, PolicyType::Egress, 126)));
        assert_eq!(decode_rule_id(select_id(7)), None);
        assert_eq!(decode_rule_id(EGRESS_OF_SOURCE), None);
    }

    #[test]
    fn numbers_are_hash_slots_probed_in_key_order() {
        let keys = [("a".to_owned(), 5u64), ("b".to_owned(), 5), ("c".to_owned(), 9)];
        let n = assign_numbers(keys.iter().map(|(k, h)| (k, *h)), 1, 4);
        // Space 4: slots 5%4=1 → 2; b probes to 3; c 9%4=1 → 2 taken, 3 taken → 4.
        assert_eq!(n["a"], Some(2));
        assert_eq!(n["b"], Some(3));
        assert_eq!(n["c"], Some(4));
        let full = assign_numbers((0..5).map(|i| (&keys[0].0, i)).collect::<Vec<_>>().into_iter(), 1, 2);
        assert_eq!(full.len(), 1);
    }
}
