//! The incremental compiler. [`Engine`] holds the cluster state and, per chassis, the
//! southbound items of every *owner* (the cluster, a node, a pod, a Service with its
//! EndpointSlices). A batch of changes marks the owners it affects — and on which chassis
//! — recompiles only those, and returns per-chassis deltas. Because every owner's items
//! are a pure function of the current state, applying the deltas in order yields exactly
//! what a full compile of the final state yields; the property test in
//! `tests/incremental.rs` checks it.
//!
//! Conflicts in untrusted input (two nodes annotated with one subnet, two pods with one
//! address) are resolved deterministically — the smallest name wins — so that the result
//! does not depend on the order events arrived in; the loser is reported as an [`Issue`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use thiserror::Error;

use crate::addr::IpNet;
use crate::annotations::AnnotationError;
use crate::cluster::{ClusterChange, ClusterState, ObjectKey};
use crate::compile::{self, Items};
use crate::config::{ConfigError, LayoutError, NetworkConfig, NodeLayout};
use crate::logical::{
    self, LbAttachment, LoadBalancer, LogicalNetwork, LogicalPort, LogicalRouter, LogicalSwitch, NodeFragment,
    ServiceIssue,
};
use crate::policy::{self, PolicyIndex, PolicyIssue, Touched};
use crate::southbound::{ChassisDelta, ChassisView, DatapathKey, ItemSet, Owner, PortKey};

/// Why an object (or part of it) is not in the network.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum CompileError {
    /// A node's or pod's addresses do not fit the configuration.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// A pod's annotation breaks the contract.
    #[error(transparent)]
    Annotation(#[from] AnnotationError),
    /// Another node holds the same subnet.
    #[error("node subnets {subnets:?} are also annotated on node {holder}, which keeps them")]
    SubnetTaken {
        /// The subnets.
        subnets: Vec<IpNet>,
        /// The node that keeps them.
        holder: String,
    },
    /// Another pod on the node holds the same address.
    #[error("pod addresses {ips:?} are also annotated on pod {holder}, which keeps them")]
    AddressTaken {
        /// The addresses.
        ips: Vec<IpNet>,
        /// The pod that keeps them.
        holder: ObjectKey,
    },
    /// Part of a Service was skipped.
    #[error(transparent)]
    Service(#[from] ServiceIssue),
    /// Part of a NetworkPolicy (or all of it) was skipped.
    #[error(transparent)]
    Policy(#[from] PolicyIssue),
}

/// A problem with one object; everything else keeps being compiled.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{object}: {error}")]
pub struct Issue {
    /// The object.
    pub object: Owner,
    /// What is wrong.
    pub error: CompileError,
}

/// The result of [`Engine::apply`].
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Update {
    /// One delta per existing chassis whose view changed.
    pub deltas: Vec<ChassisDelta>,
    /// Chassis that appeared (a node got its chassis annotation): their view starts at
    /// version 1; an agent gets it with [`Engine::snapshot`], then the deltas that follow.
    pub added_chassis: Vec<String>,
    /// Chassis that disappeared (node deleted or chassis annotation removed).
    pub removed_chassis: Vec<String>,
    /// Owner recompilations done, counting each chassis separately.
    pub recompiled: usize,
}

#[derive(Clone, Debug)]
struct NodeEntry {
    layout: Result<Arc<NodeLayout>, LayoutError>,
    fragment: Option<NodeFragment>,
}

#[derive(Clone, Debug)]
struct PodEntry {
    node: String,
    port: LogicalPort,
}

#[derive(Clone, Debug, Default)]
struct ChassisOutput {
    version: u64,
    /// Items of every owner but Services.
    by_owner: HashMap<Owner, Items>,
    /// What each Service's items on this chassis were compiled from. A Service's items
    /// are a pure function of its load balancers and the chassis's node layout, and they
    /// are most of a chassis's view (10,000 Services × 1,000 chassis would hold ≈ 30
    /// million items), so a chassis keeps the two shared inputs and compiles the items
    /// again when it needs them: for a snapshot and to diff a recompilation.
    services: HashMap<ObjectKey, ServiceInputs>,
}

/// The inputs of one Service's items on one chassis, shared with the engine and with
/// every other chassis.
#[derive(Clone, Debug)]
struct ServiceInputs {
    lbs: Arc<Vec<LoadBalancer>>,
    layout: Arc<NodeLayout>,
}

impl ServiceInputs {
    fn items(&self, key: &ObjectKey) -> Items {
        let mut items = Items::default();
        compile::compile_service(&self.lbs, &self.layout, &Owner::Service(key.clone()), &mut items);
        items.normalize();
        items
    }
}

/// Where an owner must be recompiled.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Targets {
    All,
    Some(BTreeSet<String>),
}

impl Targets {
    fn merge(&mut self, other: Targets) {
        match (&mut *self, other) {
            (Targets::All, _) => {}
            (_, Targets::All) => *self = Targets::All,
            (Targets::Some(a), Targets::Some(b)) => a.extend(b),
        }
    }
}

/// The incremental compiler: cluster state in, per-chassis southbound views and deltas
/// out.
#[derive(Clone, Debug)]
pub struct Engine {
    config: NetworkConfig,
    state: ClusterState,
    cluster_router: LogicalRouter,
    join_switch: LogicalSwitch,
    nodes: BTreeMap<String, NodeEntry>,
    subnet_claims: BTreeMap<u32, BTreeSet<String>>,
    pods: HashMap<ObjectKey, Result<PodEntry, CompileError>>,
    port_claims: HashMap<(String, PortKey), BTreeSet<ObjectKey>>,
    services: HashMap<ObjectKey, (Arc<Vec<LoadBalancer>>, Vec<ServiceIssue>)>,
    chassis: BTreeMap<String, ChassisOutput>,
    issues: BTreeMap<Owner, Vec<Issue>>,
    policy: PolicyIndex,
}

impl Engine {
    /// An engine for an empty cluster.
    pub fn new(config: NetworkConfig) -> Result<Engine, ConfigError> {
        config.validate()?;
        let (cluster_router, join_switch) = logical::cluster_fragment(&config);
        Ok(Engine {
            config,
            state: ClusterState::new(),
            cluster_router,
            join_switch,
            nodes: BTreeMap::new(),
            subnet_claims: BTreeMap::new(),
            pods: HashMap::new(),
            port_claims: HashMap::new(),
            services: HashMap::new(),
            chassis: BTreeMap::new(),
            issues: BTreeMap::new(),
            policy: PolicyIndex::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// The cluster state.
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// Chassis with a view, by name.
    pub fn chassis_names(&self) -> impl Iterator<Item = &str> {
        self.chassis.keys().map(String::as_str)
    }

    /// The current version of a chassis's view.
    pub fn version(&self, chassis: &str) -> Option<u64> {
        self.chassis.get(chassis).map(|c| c.version)
    }

    /// Current problems, by object.
    pub fn issues(&self) -> impl Iterator<Item = &Issue> {
        self.issues.values().flatten()
    }

    /// The layout of a node that holds its subnet.
    pub fn node_layout(&self, node: &str) -> Option<&NodeLayout> {
        self.node_layout_shared(node).map(|l| &**l)
    }

    fn node_layout_shared(&self, node: &str) -> Option<&Arc<NodeLayout>> {
        let layout = self.nodes.get(node)?.layout.as_ref().ok()?;
        let holder = self.subnet_claims.get(&layout.index)?.first()?;
        (holder == node).then_some(layout)
    }

    /// A chassis's whole view (what a subscribing agent gets first).
    pub fn snapshot(&self, chassis: &str) -> Option<ChassisView> {
        let out = self.chassis.get(chassis)?;
        let mut items = ItemSet::default();
        let mut add = |owned: &Items| {
            items.chassis.extend(owned.chassis.iter().cloned());
            items.datapaths.extend(owned.datapaths.iter().cloned());
            items.ports.extend(owned.ports.iter().cloned());
            items.flows.extend(owned.flows.iter().cloned());
            items.load_balancers.extend(owned.load_balancers.iter().cloned());
        };
        for owned in out.by_owner.values() {
            add(owned);
        }
        for (key, inputs) in &out.services {
            add(&inputs.items(key));
        }
        Some(ChassisView { chassis: chassis.to_owned(), version: out.version, items })
    }

    /// True while the cluster has a NetworkPolicy (the ACL stages are programmed).
    pub fn policies_enforced(&self) -> bool {
        self.policy.stateful()
    }

    /// Applies a batch of changes and returns what changed for each chassis.
    pub fn apply(&mut self, changes: impl IntoIterator<Item = ClusterChange>) -> Update {
        let mut dirty: BTreeMap<Owner, Targets> = BTreeMap::new();
        let mut services_on: BTreeSet<String> = BTreeSet::new();
        let mut touched = Touched::default();
        for change in changes {
            self.note_policy_inputs(&change, &mut touched);
            self.apply_one(change, &mut dirty, &mut services_on);
        }
        let dirt = self.policy.refresh(&self.state, &touched, !self.chassis.is_empty());
        if dirt.everything {
            for out in self.chassis.values() {
                for owner in out.by_owner.keys() {
                    Self::mark(&mut dirty, owner.clone(), Targets::All);
                }
                for key in out.services.keys() {
                    Self::mark(&mut dirty, Owner::Service(key.clone()), Targets::All);
                }
            }
            let all: Vec<String> = self.chassis.keys().cloned().collect();
            for c in &all {
                for owner in self.owners_for(c) {
                    Self::mark(&mut dirty, owner, Targets::All);
                }
            }
        }
        for p in &dirt.pods {
            if let Some(node) = self.state.pods().get(p).and_then(|p| p.node.clone()) {
                Self::mark(&mut dirty, Owner::Pod(p.clone()), Self::on(&node));
            }
        }
        for p in &dirt.policies {
            Self::mark(&mut dirty, Owner::Policy(p.clone()), Targets::All);
        }
        for (p, nodes) in dirt.policies_on {
            Self::mark(&mut dirty, Owner::Policy(p), Targets::Some(nodes));
        }
        for ns in &dirt.namespaces {
            Self::mark(&mut dirty, Owner::Namespace(ns.as_str().into()), Targets::All);
        }
        for owner in dirty.keys() {
            self.refresh_issues(owner);
        }

        // Chassis set: every node with a chassis annotation.
        let wanted: BTreeSet<String> =
            self.state.nodes().values().filter(|n| n.chassis.is_some()).map(|n| n.name.clone()).collect();
        let removed: Vec<String> = self.chassis.keys().filter(|c| !wanted.contains(*c)).cloned().collect();
        for c in &removed {
            self.chassis.remove(c);
        }
        let added: Vec<String> = wanted.iter().filter(|c| !self.chassis.contains_key(*c)).cloned().collect();

        let mut update = Update { removed_chassis: removed, ..Update::default() };
        let mut deltas: BTreeMap<String, ChassisDelta> = BTreeMap::new();
        let existing: Vec<String> = self.chassis.keys().cloned().collect();
        for (owner, targets) in &dirty {
            let chassis: Vec<&String> = match targets {
                Targets::All => existing.iter().collect(),
                Targets::Some(set) => set.iter().filter(|c| self.chassis.contains_key(*c)).collect(),
            };
            for c in chassis {
                self.recompile(owner, c, &mut deltas);
                update.recompiled += 1;
            }
        }
        let mut per_chassis: Vec<Owner> = self.state.services().keys().cloned().map(Owner::Service).collect();
        per_chassis.extend(self.policy_owners());
        let services_on: Vec<String> = services_on.into_iter().filter(|c| self.chassis.contains_key(c)).collect();
        for c in &services_on {
            // Policy and namespace owners that went away are in the chassis's output only.
            let mut owners = per_chassis.clone();
            if let Some(out) = self.chassis.get(c) {
                owners.extend(
                    out.by_owner.keys().filter(|o| matches!(o, Owner::Policy(_) | Owner::Namespace(_))).cloned(),
                );
            }
            owners.sort();
            owners.dedup();
            for owner in owners {
                if !dirty.get(&owner).is_some_and(|t| *t == Targets::All) {
                    self.recompile(&owner, c, &mut deltas);
                    update.recompiled += 1;
                }
            }
        }
        // New chassis are independent of each other: compile them on every core (the
        // result does not depend on how they are split).
        let compiled = self.compile_chassis(&added);
        for (c, out, owners) in compiled {
            update.recompiled += owners;
            self.chassis.insert(c.clone(), out);
            update.added_chassis.push(c);
        }
        for (c, mut delta) in deltas {
            if delta.removed.is_empty() && delta.added.is_empty() {
                continue;
            }
            if let Some(out) = self.chassis.get_mut(&c) {
                delta.from_version = out.version;
                delta.to_version = out.version + 1;
                out.version += 1;
                update.deltas.push(delta);
            }
        }
        update
    }

    /// The whole output of each chassis in `names`, with the number of owners compiled,
    /// in the order of `names`; spread over the available cores when there are several.
    fn compile_chassis(&self, names: &[String]) -> Vec<(String, ChassisOutput, usize)> {
        let one = |c: &String| {
            let mut out = ChassisOutput { version: 1, ..ChassisOutput::default() };
            let owners = self.owners_for(c);
            let n = owners.len();
            for owner in owners {
                if let Owner::Service(key) = &owner {
                    // Compiled when a snapshot or a recompilation needs them (a Service
                    // with no items here keeps its inputs and compiles to nothing).
                    if let Some(inputs) = self.service_inputs(key, c) {
                        out.services.insert(key.clone(), inputs);
                    }
                    continue;
                }
                let items = self.compile_owner(&owner, c);
                if !items.is_empty() {
                    out.by_owner.insert(owner, items);
                }
            }
            (c.clone(), out, n)
        };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
        if threads < 2 || names.len() < 2 {
            return names.iter().map(one).collect();
        }
        let chunk = names.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let handles: Vec<_> =
                names.chunks(chunk).map(|part| scope.spawn(move || part.iter().map(one).collect::<Vec<_>>())).collect();
            // A panic in a worker is a bug in the compiler: let it surface here.
            handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
        })
    }

    /// Every owner that may have items on chassis `c`.
    fn owners_for(&self, c: &str) -> Vec<Owner> {
        let mut owners = vec![Owner::Cluster];
        owners.extend(self.state.nodes().keys().map(|n| Owner::Node(n.as_str().into())));
        owners.extend(self.state.pods_on_node(c).map(|p| Owner::Pod(p.clone())));
        owners.extend(self.state.services().keys().map(|s| Owner::Service(s.clone())));
        owners.extend(self.policy_owners());
        owners
    }

    /// The NetworkPolicy owners: every policy and every namespace with egress policies
    /// (none while the cluster has no policy).
    fn policy_owners(&self) -> Vec<Owner> {
        if !self.policy.stateful() {
            return Vec::new();
        }
        let mut owners: Vec<Owner> = self.policy.policy_keys().cloned().map(Owner::Policy).collect();
        owners.extend(self.policy.egress_namespaces().map(|n| Owner::Namespace(n.into())));
        owners
    }

    /// Records what a change touches of the NetworkPolicy inputs (before it is applied).
    fn note_policy_inputs(&self, change: &ClusterChange, touched: &mut Touched) {
        let mut pod = |key: ObjectKey| {
            let old_node = self.state.pods().get(&key).and_then(|p| p.node.clone());
            touched.pods.entry(key).or_insert(old_node);
        };
        match change {
            ClusterChange::UpsertPod(p) => pod(p.key()),
            ClusterChange::DeletePod(k) => pod(k.clone()),
            ClusterChange::UpsertNamespace(n) => {
                touched.namespaces.insert(n.name.clone());
            }
            ClusterChange::DeleteNamespace(n) => {
                touched.namespaces.insert(n.clone());
            }
            ClusterChange::UpsertNetworkPolicy(p) => {
                touched.policies.insert(p.key());
            }
            ClusterChange::DeleteNetworkPolicy(k) => {
                touched.policies.insert(k.clone());
            }
            _ => {}
        }
    }

    fn mark(dirty: &mut BTreeMap<Owner, Targets>, owner: Owner, targets: Targets) {
        match dirty.get_mut(&owner) {
            Some(t) => t.merge(targets),
            None => {
                dirty.insert(owner, targets);
            }
        }
    }

    fn on(node: &str) -> Targets {
        Targets::Some([node.to_owned()].into_iter().collect())
    }

    fn apply_one(
        &mut self,
        change: ClusterChange,
        dirty: &mut BTreeMap<Owner, Targets>,
        services_on: &mut BTreeSet<String>,
    ) {
        match change {
            ClusterChange::UpsertNode(node) => {
                let name = node.name.clone();
                self.state.apply(ClusterChange::UpsertNode(node));
                self.refresh_node(&name, dirty, services_on);
            }
            ClusterChange::DeleteNode(name) => {
                self.state.apply(ClusterChange::DeleteNode(name.clone()));
                self.refresh_node(&name, dirty, services_on);
            }
            ClusterChange::UpsertPod(pod) => {
                let key = pod.key();
                let old_node = self.state.pods().get(&key).and_then(|p| p.node.clone());
                self.state.apply(ClusterChange::UpsertPod(pod));
                if let Some(n) = old_node {
                    Self::mark(dirty, Owner::Pod(key.clone()), Self::on(&n));
                }
                self.refresh_pod(&key, dirty);
            }
            ClusterChange::DeletePod(key) => {
                let old_node = self.state.pods().get(&key).and_then(|p| p.node.clone());
                self.state.apply(ClusterChange::DeletePod(key.clone()));
                if let Some(n) = old_node {
                    Self::mark(dirty, Owner::Pod(key.clone()), Self::on(&n));
                }
                self.refresh_pod(&key, dirty);
            }
            ClusterChange::UpsertService(svc) => {
                let key = svc.key();
                self.state.apply(ClusterChange::UpsertService(svc));
                self.refresh_service(&key, dirty);
            }
            ClusterChange::DeleteService(key) => {
                self.state.apply(ClusterChange::DeleteService(key.clone()));
                self.refresh_service(&key, dirty);
            }
            ClusterChange::UpsertEndpointSlice(slice) => {
                let old = self.state.endpoint_slices().get(&slice.key()).and_then(|s| s.service_key());
                let new = slice.service_key();
                self.state.apply(ClusterChange::UpsertEndpointSlice(slice));
                for svc in old.into_iter().chain(new) {
                    self.refresh_service(&svc, dirty);
                }
            }
            ClusterChange::DeleteEndpointSlice(key) => {
                let old = self.state.endpoint_slices().get(&key).and_then(|s| s.service_key());
                self.state.apply(ClusterChange::DeleteEndpointSlice(key));
                if let Some(svc) = old {
                    self.refresh_service(&svc, dirty);
                }
            }
            // Namespaces and NetworkPolicies are compiled by the policy index after the
            // batch (`PolicyIndex::refresh`).
            change @ (ClusterChange::UpsertNamespace(_)
            | ClusterChange::DeleteNamespace(_)
            | ClusterChange::UpsertNetworkPolicy(_)
            | ClusterChange::DeleteNetworkPolicy(_)) => self.state.apply(change),
        }
    }

    /// Recomputes a node's layout and fragment, and marks everything that depends on it:
    /// itself everywhere, the nodes contending for its old and new subnet, their pods, and
    /// every Service on their chassis.
    fn refresh_node(&mut self, name: &str, dirty: &mut BTreeMap<Owner, Targets>, services_on: &mut BTreeSet<String>) {
        let old_index = self.nodes.get(name).and_then(|e| e.layout.as_ref().ok().map(|l| l.index));
        if let Some(i) = old_index
            && let Some(set) = self.subnet_claims.get_mut(&i)
        {
            set.remove(name);
            if set.is_empty() {
                self.subnet_claims.remove(&i);
            }
        }
        let mut affected: BTreeSet<String> = [name.to_owned()].into_iter().collect();
        if let Some(i) = old_index {
            affected.extend(self.subnet_claims.get(&i).into_iter().flatten().cloned());
        }
        match self.state.nodes().get(name) {
            Some(node) => {
                let layout = if node.subnets.is_empty() {
                    Err(LayoutError::MissingFamily(
                        self.config.primary().map(|n| n.cidr.family()).unwrap_or(crate::addr::IpFamily::V4),
                    ))
                } else {
                    NodeLayout::new(&self.config, name, &node.subnets, &node.internal_ips)
                };
                let layout = layout.map(Arc::new);
                let fragment = layout.as_ref().ok().map(|l| logical::node_fragment(&self.config, l));
                if let Ok(l) = &layout {
                    let claims = self.subnet_claims.entry(l.index).or_default();
                    claims.insert(name.to_owned());
                    affected.extend(claims.iter().cloned());
                }
                self.nodes.insert(name.to_owned(), NodeEntry { layout, fragment });
            }
            None => {
                self.nodes.remove(name);
            }
        }
        for n in affected {
            Self::mark(dirty, Owner::Node(n.as_str().into()), Targets::All);
            let pods: Vec<ObjectKey> = self.state.pods_on_node(&n).cloned().collect();
            for p in pods {
                self.refresh_pod(&p, dirty);
            }
            services_on.insert(n);
        }
    }

    /// Recomputes a pod's port and marks it and the pods contending for its old and new
    /// address.
    fn refresh_pod(&mut self, key: &ObjectKey, dirty: &mut BTreeMap<Owner, Targets>) {
        let old_claim = self.pods.get(key).and_then(|e| e.as_ref().ok()).map(|e| (e.node.clone(), e.port.key));
        if let Some(claim) = &old_claim {
            if let Some(set) = self.port_claims.get_mut(claim) {
                set.remove(key);
                if set.is_empty() {
                    self.port_claims.remove(claim);
                }
            }
            for other in self.port_claims.get(claim).into_iter().flatten() {
                Self::mark(dirty, Owner::Pod(other.clone()), Self::on(&claim.0));
            }
        }
        let entry = self.compute_pod(key);
        match entry {
            Some(Ok(e)) => {
                let claim = (e.node.clone(), e.port.key);
                let set = self.port_claims.entry(claim.clone()).or_default();
                set.insert(key.clone());
                for other in set.iter() {
                    Self::mark(dirty, Owner::Pod(other.clone()), Self::on(&claim.0));
                }
                self.pods.insert(key.clone(), Ok(e));
            }
            Some(Err(err)) => {
                self.pods.insert(key.clone(), Err(err));
            }
            None => {
                self.pods.remove(key);
            }
        }
        if let Some(node) = self.state.pods().get(key).and_then(|p| p.node.clone()) {
            Self::mark(dirty, Owner::Pod(key.clone()), Self::on(&node));
        } else {
            // Deleted or unscheduled: its issues must go too.
            dirty.entry(Owner::Pod(key.clone())).or_insert(Targets::Some(BTreeSet::new()));
        }
    }

    /// The pod's port, an error, or `None` while it has none to have (not scheduled yet,
    /// host network, finished, not annotated yet, node not known yet).
    fn compute_pod(&self, key: &ObjectKey) -> Option<Result<PodEntry, CompileError>> {
        let pod = self.state.pods().get(key)?;
        if !pod.wants_port() {
            return None;
        }
        let network = pod.network.as_ref()?;
        let node = pod.node.as_ref()?;
        let layout = self.nodes.get(node)?.layout.as_ref().ok()?;
        let result = network.validate().map_err(CompileError::from).and_then(|()| {
            let port_key = layout.pod_port_key(&self.config, &network.ip_addresses)?;
            let port = logical::pod_port(pod, port_key, &network.ip_addresses, network.mac_address, node);
            Ok(PodEntry { node: node.clone(), port })
        });
        Some(result)
    }

    fn refresh_service(&mut self, key: &ObjectKey, dirty: &mut BTreeMap<Owner, Targets>) {
        match self.state.services().get(key) {
            Some(svc) => {
                let slices: Vec<_> = self.state.slices_of_service(key).collect();
                let (lbs, issues) = logical::service_fragment(svc, slices.iter().copied());
                self.services.insert(key.clone(), (Arc::new(lbs), issues));
            }
            None => {
                self.services.remove(key);
            }
        }
        Self::mark(dirty, Owner::Service(key.clone()), Targets::All);
    }

    fn refresh_issues(&mut self, owner: &Owner) {
        let errors: Vec<CompileError> = match owner {
            Owner::Cluster => Vec::new(),
            Owner::Node(n) => match self.nodes.get(&**n).map(|e| &e.layout) {
                Some(Err(LayoutError::MissingFamily(_))) | None
                    if self.state.nodes().get(&**n).is_none_or(|node| node.subnets.is_empty()) =>
                {
                    Vec::new()
                }
                Some(Err(e)) => vec![e.clone().into()],
                Some(Ok(l)) => match self.subnet_claims.get(&l.index).and_then(|s| s.first()) {
                    Some(holder) if **holder != **n => {
                        vec![CompileError::SubnetTaken { subnets: l.subnets.clone(), holder: holder.clone() }]
                    }
                    _ => Vec::new(),
                },
                None => Vec::new(),
            },
            Owner::Pod(p) => {
                let mut errors = match self.pods.get(p) {
                    Some(Err(e)) => vec![e.clone()],
                    Some(Ok(e)) => match self.port_claims.get(&(e.node.clone(), e.port.key)).and_then(|s| s.first()) {
                        Some(holder) if holder != p => {
                            vec![CompileError::AddressTaken { ips: e.port.ips.clone(), holder: holder.clone() }]
                        }
                        _ => Vec::new(),
                    },
                    None => Vec::new(),
                };
                if matches!(self.pods.get(p), Some(Ok(_))) {
                    errors.extend(self.policy.pod_issue(p).map(CompileError::from));
                }
                errors
            }
            Owner::Service(s) => self
                .services
                .get(s)
                .map(|(_, issues)| issues.iter().cloned().map(Into::into).collect())
                .unwrap_or_default(),
            Owner::Policy(p) => self.policy.issues(p).into_iter().map(Into::into).collect(),
            Owner::Namespace(_) => Vec::new(),
        };
        if errors.is_empty() {
            self.issues.remove(owner);
        } else {
            let issues = errors.into_iter().map(|error| Issue { object: owner.clone(), error }).collect();
            self.issues.insert(owner.clone(), issues);
        }
    }

    /// The pod's port and its node's switch, if the pod holds its address.
    fn pod_port(&self, key: &ObjectKey) -> Option<(&LogicalPort, DatapathKey)> {
        let entry = self.pods.get(key)?.as_ref().ok()?;
        let holder = self.port_claims.get(&(entry.node.clone(), entry.port.key))?.first()?;
        if holder != key {
            return None;
        }
        let layout = self.node_layout(&entry.node)?;
        Some((&entry.port, layout.switch_key))
    }

    /// Compiles `owner` for chassis `c`: a pure function of the current state.
    fn compile_owner(&self, owner: &Owner, c: &str) -> Items {
        let mut items = Items::default();
        match owner {
            Owner::Cluster => {
                compile::compile_cluster(&self.config, &self.cluster_router, &self.join_switch, owner, &mut items)
            }
            Owner::Node(n) => {
                if let Some(annotation) = self.state.nodes().get(&**n).and_then(|node| node.chassis.as_ref()) {
                    items.chassis.push(compile::chassis_entry(n, annotation));
                    if self.node_layout(n).is_some()
                        && let Some(frag) = self.nodes.get(&**n).and_then(|e| e.fragment.as_ref())
                    {
                        let local = **n == *c;
                        compile::compile_node(&self.config, frag, owner, local, &mut items);
                        if local && self.policy.stateful() {
                            let mgmt = frag
                                .switch
                                .ports
                                .get(&crate::southbound::port_keys::MANAGEMENT)
                                .map(|p| p.ips.clone())
                                .unwrap_or_default();
                            policy::switch_flows(&self.config, frag.switch.key, &mgmt, owner, &mut items.flows);
                        }
                    }
                }
            }
            Owner::Pod(p) => {
                if let Some((port, switch)) = self.pod_port(p)
                    && port.chassis.as_deref() == Some(c)
                {
                    compile::compile_pod(&self.config, switch, port, owner, &mut items);
                    if self.policy.stateful()
                        && let Some(acl) = self.policy.pod_acl(p)
                    {
                        policy::pod_flows(acl, switch, port.key, owner, &mut items.flows);
                    }
                }
            }
            Owner::Policy(p) => {
                if self.policy.stateful()
                    && let Some(layout) = self.node_layout(c)
                {
                    let local_port = |pod: &ObjectKey| {
                        self.pod_port(pod)
                            .filter(|(port, _)| port.chassis.as_deref() == Some(c))
                            .map(|(port, _)| port.key)
                    };
                    self.policy.policy_flows_on(&self.state, p, c, layout.switch_key, &local_port, &mut items.flows);
                }
            }
            Owner::Namespace(n) => {
                if self.policy.stateful()
                    && let Some(layout) = self.node_layout(c)
                {
                    self.policy.namespace_flows(n, layout.switch_key, &mut items.flows);
                }
            }
            Owner::Service(s) => {
                if let Some(inputs) = self.service_inputs(s, c) {
                    return inputs.items(s);
                }
            }
        }
        items.normalize();
        items
    }

    /// What Service `key`'s items on chassis `c` are compiled from, if it has any there.
    fn service_inputs(&self, key: &ObjectKey, c: &str) -> Option<ServiceInputs> {
        let layout = self.node_layout_shared(c)?;
        let (lbs, _) = self.services.get(key)?;
        Some(ServiceInputs { lbs: Arc::clone(lbs), layout: Arc::clone(layout) })
    }

    fn recompile(&mut self, owner: &Owner, c: &str, deltas: &mut BTreeMap<String, ChassisDelta>) {
        let new = self.compile_owner(owner, c);
        let inputs = match owner {
            Owner::Service(key) => self.service_inputs(key, c),
            _ => None,
        };
        let Some(out) = self.chassis.get_mut(c) else { return };
        let old = match owner {
            Owner::Service(key) => out.services.remove(key).map(|i| i.items(key)).unwrap_or_default(),
            _ => out.by_owner.remove(owner).unwrap_or_default(),
        };
        if old != new {
            let delta = deltas
                .entry(c.to_owned())
                .or_insert_with(|| ChassisDelta { chassis: c.to_owned(), ..ChassisDelta::default() });
            diff_into(&old.chassis, &new.chassis, &mut delta.removed.chassis, &mut delta.added.chassis);
            diff_into(&old.datapaths, &new.datapaths, &mut delta.removed.datapaths, &mut delta.added.datapaths);
            diff_into(&old.ports, &new.ports, &mut delta.removed.ports, &mut delta.added.ports);
            diff_into(&old.flows, &new.flows, &mut delta.removed.flows, &mut delta.added.flows);
            diff_into(
                &old.load_balancers,
                &new.load_balancers,
                &mut delta.removed.load_balancers,
                &mut delta.added.load_balancers,
            );
        }
        if new.is_empty() {
            return;
        }
        match (owner, inputs) {
            (Owner::Service(key), Some(inputs)) => {
                out.services.insert(key.clone(), inputs);
            }
            _ => {
                out.by_owner.insert(owner.clone(), new);
            }
        }
    }

    /// The whole logical network (for `skein-master dump`): every node that holds its
    /// subnet, whether or not its agent has registered yet.
    pub fn logical_network(&self) -> LogicalNetwork {
        let mut net = LogicalNetwork::default();
        let mut cluster_router = self.cluster_router.clone();
        let mut join = self.join_switch.clone();
        let mut switch_lbs = Vec::new();
        let mut gateway_lbs = Vec::new();
        let mut services: Vec<(&ObjectKey, &Vec<LoadBalancer>)> =
            self.services.iter().map(|(k, (lbs, _))| (k, &**lbs)).collect();
        services.sort_by(|a, b| a.0.cmp(b.0));
        for (_, lbs) in services {
            for lb in lbs {
                if lb.vips.iter().any(|v| v.attachment == LbAttachment::NodeSwitches) {
                    switch_lbs.push(lb.name.clone());
                }
                if lb.vips.iter().any(|v| v.attachment == LbAttachment::GatewayRouters) {
                    gateway_lbs.push(lb.name.clone());
                }
                net.load_balancers.insert(lb.name.clone(), lb.clone());
            }
        }
        for (name, entry) in &self.nodes {
            let (Some(_), Some(frag)) = (self.node_layout(name), entry.fragment.as_ref()) else { continue };
            let mut switch = frag.switch.clone();
            for p in self.state.pods_on_node(name) {
                if let Some((port, _)) = self.pod_port(p) {
                    switch.ports.insert(port.key, port.clone());
                }
            }
            switch.load_balancers = switch_lbs.clone();
            let mut gateway = frag.gateway.clone();
            gateway.load_balancers = gateway_lbs.clone();
            cluster_router.ports.insert(frag.cluster_router_port.key, frag.cluster_router_port.clone());
            cluster_router.routes.extend(frag.cluster_routes.iter().cloned());
            join.ports.insert(frag.join_port.key, frag.join_port.clone());
            net.switches.insert(switch.name.clone(), switch);
            net.routers.insert(gateway.name.clone(), gateway);
        }
        cluster_router.routes.sort();
        net.routers.insert(cluster_router.name.clone(), cluster_router);
        net.switches.insert(join.name.clone(), join);
        net
    }
}

/// Adds `old \ new` to `removed` and `new \ old` to `added` (both slices sorted). An item
/// another owner already put on the other side cancels out.
fn diff_into<T: Ord + Clone>(old: &[T], new: &[T], removed: &mut BTreeSet<T>, added: &mut BTreeSet<T>) {
    for item in old.iter().filter(|o| new.binary_search(o).is_err()) {
        if !added.remove(item) {
            removed.insert(item.clone());
        }
    }
    for item in new.iter().filter(|n| old.binary_search(n).is_err()) {
        if !removed.remove(item) {
            added.insert(item.clone());
        }
    }
}
