//! The controller: watch events → `ClusterChange`s → the engine (and from there the
//! southbound streams), and — on the leader only — address allocation and the
//! annotations that carry it.
//!
//! Allocation waits for the first full list of Nodes and Pods, then rebuilds the
//! allocator from the annotations already in the cluster ([`Ipam::from_existing`]) before
//! it allocates anything, so a live pod's address is never changed or handed out twice.
//! Writes run concurrently (bounded) and report back here. Every problem with an object
//! — a field that does not parse, an address conflict, IPAM exhaustion — becomes a log
//! line, a metric and a Kubernetes Event on that object; the other objects keep being
//! served.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use skein_netmodel::annotations::{self, NODE_SUBNETS, POD_NETWORKS};
use skein_netmodel::southbound::Owner;
use skein_netmodel::{ClusterChange, IpNet, Ipam, IpamError, NetworkConfig, ObjectKey};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::annotate::{self, AnnotationWrite, Backoff, WriteOutcome};
use crate::objects::{self, Problem};
use crate::signing::{AnnotationSigner, POD_NETWORKS_SIGNATURE, Verdict};
use crate::state::Shared;
use crate::watch::{Kind, Object, WatchEvent};

/// Most annotation writes in flight at once.
const MAX_CONCURRENT_WRITES: usize = 32;
/// Most watch events applied in one batch.
const MAX_BATCH: usize = 10_000;
/// Longest Event note.
const NOTE_MAX: usize = 1000;

/// What a write was for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Target {
    Node(String),
    Pod(ObjectKey),
}

#[derive(Debug)]
struct WriteDone {
    target: Target,
    outcome: WriteOutcome,
}

/// What the engine knows about a pod, for allocation.
struct PodInfo {
    node: Option<String>,
    uid: String,
    wants_port: bool,
    network: Option<Vec<IpNet>>,
}

/// Annotated nodes, annotated pods (key, node, addresses), every node, every pod.
type Existing = (Vec<(String, Vec<IpNet>)>, Vec<(ObjectKey, String, Vec<IpNet>)>, Vec<String>, Vec<ObjectKey>);
/// What the engine holds for the dirty nodes and pods (`None`: gone).
type DirtyInfo = (BTreeMap<String, Option<Vec<IpNet>>>, BTreeMap<ObjectKey, Option<PodInfo>>);

/// Publishes Kubernetes Events (only while leading, so replicas do not duplicate them).
#[derive(Clone)]
pub struct EventSink {
    recorder: Option<Recorder>,
}

impl EventSink {
    /// Events through `client`, reported as `skein-master` instance `identity`.
    pub fn new(client: kube::Client, identity: &str) -> EventSink {
        let reporter = Reporter { controller: "skein-master".into(), instance: Some(identity.to_owned()) };
        EventSink { recorder: Some(Recorder::new(client, reporter)) }
    }

    /// No Events (tools and tests without an API server).
    pub fn disabled() -> EventSink {
        EventSink { recorder: None }
    }

    fn warn(&self, reference: ObjectReference, reason: &str, note: String) {
        let Some(recorder) = self.recorder.clone() else { return };
        let mut note = note;
        if note.len() > NOTE_MAX {
            let mut end = NOTE_MAX;
            while !note.is_char_boundary(end) {
                end -= 1;
            }
            note.truncate(end);
        }
        let event = Event {
            type_: EventType::Warning,
            reason: reason.to_owned(),
            note: Some(note),
            action: "Program".into(),
            secondary: None,
        };
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                debug!(error = %e, "could not publish an Event");
            }
        });
    }
}

fn reference(kind: Kind, namespace: Option<&str>, name: &str) -> ObjectReference {
    let api_version = match kind {
        Kind::EndpointSlice => "discovery.k8s.io/v1",
        Kind::NetworkPolicy => "networking.k8s.io/v1",
        _ => "v1",
    };
    ObjectReference {
        api_version: Some(api_version.into()),
        kind: Some(kind.name().into()),
        namespace: namespace.map(str::to_owned),
        name: Some(name.to_owned()),
        ..ObjectReference::default()
    }
}

fn owner_reference(owner: &Owner) -> Option<ObjectReference> {
    match owner {
        Owner::Cluster => None,
        Owner::Node(n) => Some(reference(Kind::Node, None, n)),
        Owner::Pod(p) => Some(reference(Kind::Pod, Some(&p.namespace), &p.name)),
        Owner::Service(s) => Some(reference(Kind::Service, Some(&s.namespace), &s.name)),
        Owner::Policy(p) => Some(reference(Kind::NetworkPolicy, Some(&p.namespace), &p.name)),
        Owner::Namespace(n) => Some(reference(Kind::Namespace, None, n)),
    }
}

/// The controller's inputs and state. Run it with [`Controller::run`].
pub struct Controller {
    shared: Arc<Shared>,
    client: Option<kube::Client>,
    events: EventSink,
    config: NetworkConfig,
    backoff: Backoff,
    leading: watch::Receiver<bool>,
    synced_tx: watch::Sender<bool>,
    watch_rx: mpsc::UnboundedReceiver<WatchEvent>,
    done_tx: mpsc::UnboundedSender<WriteDone>,
    done_rx: mpsc::UnboundedReceiver<WriteDone>,
    writes: Arc<Semaphore>,
    write_stop: CancellationToken,
    shutdown: CancellationToken,
    synced: BTreeSet<Kind>,
    ipam: Option<Ipam>,
    broken: HashSet<Target>,
    pending: HashSet<Target>,
    await_watch: HashSet<Target>,
    first_seen: HashMap<ObjectKey, Instant>,
    waiting_pods: BTreeSet<ObjectKey>,
    /// Pods whose allocation failure (e.g. exhaustion) has been reported, so that a pod
    /// retried after every change is reported once, not on every retry.
    reported_pods: BTreeSet<ObjectKey>,
    dirty_nodes: BTreeSet<String>,
    dirty_pods: BTreeSet<ObjectKey>,
    reported: HashMap<(Kind, Option<String>, String), String>,
    reported_issues: BTreeSet<String>,
    /// Signs the pod annotations this master writes and tells them from others' (`None`:
    /// every value is taken as it is, as in `dump`).
    signer: Option<AnnotationSigner>,
    /// Pods whose pod-networks value is not the master's, reported for that UID.
    forged: HashMap<ObjectKey, String>,
    /// Writes the API server refused for good; retried when the object changes, and all
    /// together every `backoff.rejected_retry`.
    rejected: HashSet<Target>,
    /// When the last refusal happened (a refusal is not tried again sooner than a period).
    last_rejected: Instant,
    /// The UID of the pod each IPAM allocation was made for: a pod re-created under the
    /// same name (another UID) is another pod, and its predecessor's address is released.
    holder_uids: HashMap<ObjectKey, String>,
}

impl Controller {
    /// A controller fed by `watch_rx`, writing through `client` (`None`: never writes,
    /// as in `dump`). `synced_tx` turns true once every kind has been listed.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shared: Arc<Shared>,
        client: Option<kube::Client>,
        events: EventSink,
        config: NetworkConfig,
        backoff: Backoff,
        leading: watch::Receiver<bool>,
        synced_tx: watch::Sender<bool>,
        watch_rx: mpsc::UnboundedReceiver<WatchEvent>,
        shutdown: CancellationToken,
    ) -> Controller {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Controller {
            shared,
            client,
            events,
            config,
            backoff,
            leading,
            synced_tx,
            watch_rx,
            done_tx,
            done_rx,
            writes: Arc::new(Semaphore::new(MAX_CONCURRENT_WRITES)),
            write_stop: CancellationToken::new(),
            shutdown,
            synced: BTreeSet::new(),
            ipam: None,
            broken: HashSet::new(),
            pending: HashSet::new(),
            await_watch: HashSet::new(),
            first_seen: HashMap::new(),
            waiting_pods: BTreeSet::new(),
            reported_pods: BTreeSet::new(),
            dirty_nodes: BTreeSet::new(),
            dirty_pods: BTreeSet::new(),
            reported: HashMap::new(),
            reported_issues: BTreeSet::new(),
            signer: None,
            forged: HashMap::new(),
            rejected: HashSet::new(),
            last_rejected: Instant::now(),
            holder_uids: HashMap::new(),
        }
    }

    /// Signs the pod annotations written and ignores (and reports) values it did not sign.
    pub fn with_signer(mut self, signer: AnnotationSigner) -> Controller {
        self.signer = Some(signer);
        self
    }

    /// Strips a pod-networks value the master did not write (reported once per pod UID);
    /// true if it did.
    fn drop_forged(&mut self, pod: &mut k8s_openapi::api::core::v1::Pod) -> bool {
        let Some(signer) = &self.signer else { return false };
        let (ns, name) =
            (pod.metadata.namespace.clone().unwrap_or_default(), pod.metadata.name.clone().unwrap_or_default());
        let key = ObjectKey::new(ns.as_str(), name.as_str());
        // A value that does not parse is reported as invalid by the conversion and never
        // used; only usable values need the signature check.
        let parses = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(POD_NETWORKS))
            .is_some_and(|text| annotations::parse_pod_networks(text).is_ok());
        let reason = match signer.check(pod) {
            Verdict::Forged(reason) if parses => reason,
            _ => {
                self.forged.remove(&key);
                return false;
            }
        };
        if let Some(a) = pod.metadata.annotations.as_mut() {
            a.remove(POD_NETWORKS);
            a.remove(POD_NETWORKS_SIGNATURE);
        }
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if self.forged.get(&key) != Some(&uid) {
            warn!(pod = %key, %reason, "pod annotation not written by the master: ignored");
            self.shared.metrics().object_error(Kind::Pod.name(), "ForgedAnnotation");
            if self.is_leading() {
                self.events.warn(reference(Kind::Pod, Some(&ns), &name), "ForgedAnnotation", reason);
            }
            self.forged.insert(key, uid);
        }
        true
    }

    fn is_leading(&self) -> bool {
        *self.leading.borrow()
    }

    /// Runs until shutdown or until the watchers stop.
    pub async fn run(mut self) {
        let mut retry_rejected = tokio::time::interval(self.backoff.rejected_retry.max(Duration::from_millis(10)));
        retry_rejected.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                _ = retry_rejected.tick(), if !self.rejected.is_empty() => {
                    if self.is_leading() && self.last_rejected.elapsed() >= self.backoff.rejected_retry {
                        debug!(objects = self.rejected.len(), "trying refused annotation writes again");
                        for target in std::mem::take(&mut self.rejected) {
                            match target {
                                Target::Node(name) => self.dirty_nodes.insert(name),
                                Target::Pod(key) => self.dirty_pods.insert(key),
                            };
                        }
                        self.reconcile();
                    }
                }
                event = self.watch_rx.recv() => {
                    let Some(first) = event else { break };
                    let seen = Instant::now();
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match self.watch_rx.try_recv() {
                            Ok(e) => batch.push(e),
                            Err(_) => break,
                        }
                    }
                    self.handle_batch(batch, seen);
                }
                done = self.done_rx.recv() => {
                    if let Some(done) = done {
                        self.handle_write(done);
                        self.reconcile();
                    }
                }
                changed = self.leading.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.on_leadership();
                }
            }
        }
        self.write_stop.cancel();
    }

    fn on_leadership(&mut self) {
        if self.is_leading() {
            info!("leading: allocating addresses and writing annotations");
            self.write_stop = self.shutdown.child_token();
            self.ipam = None;
            self.reconcile();
        } else {
            info!("not leading: stopping annotation writes");
            self.write_stop.cancel();
            self.ipam = None;
            self.pending.clear();
        }
    }

    fn handle_batch(&mut self, batch: Vec<WatchEvent>, seen: Instant) {
        let mut changes = Vec::with_capacity(batch.len());
        for event in batch {
            self.handle_watch(event, &mut changes);
        }
        if !changes.is_empty() {
            let update = self.shared.apply(changes, seen);
            debug!(deltas = update.deltas.len(), recompiled = update.recompiled, "compiled");
            self.report_issues();
        }
        self.reconcile();
    }

    /// Reports a namespaced object's problems and turns it into an upsert, or — if it
    /// cannot be programmed at all — into a delete of whatever it was before.
    fn namespaced<T>(
        &mut self,
        kind: Kind,
        meta: &ObjectMeta,
        c: objects::Converted<T>,
        upsert: fn(T) -> ClusterChange,
        delete: fn(ObjectKey) -> ClusterChange,
    ) -> ClusterChange {
        let (ns, name) = (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default());
        self.report(kind, Some(&ns), &name, &c.problems);
        match c.object {
            Some(object) => upsert(object),
            None => delete(ObjectKey::new(ns, name)),
        }
    }

    fn report(&mut self, kind: Kind, namespace: Option<&str>, name: &str, problems: &[Problem]) {
        let id = (kind, namespace.map(str::to_owned), name.to_owned());
        if problems.is_empty() {
            self.reported.remove(&id);
            return;
        }
        let message = problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
        if self.reported.get(&id) == Some(&message) {
            return;
        }
        let object = match namespace {
            Some(ns) => format!("{}/{ns}/{name}", kind.name()),
            None => format!("{}/{name}", kind.name()),
        };
        warn!(%object, problems = %message, "invalid object: the rest of it, and every other object, is still served");
        self.shared.metrics().object_error(kind.name(), "InvalidObject");
        if self.is_leading() {
            self.events.warn(reference(kind, namespace, name), "InvalidObject", message.clone());
        }
        self.reported.insert(id, message);
    }

    fn handle_watch(&mut self, event: WatchEvent, changes: &mut Vec<ClusterChange>) {
        match event {
            WatchEvent::Synced(kind) => {
                info!(kind = kind.name(), "initial list done");
                self.synced.insert(kind);
                if self.synced.len() == Kind::ALL.len() {
                    self.synced_tx.send_replace(true);
                }
            }
            WatchEvent::Apply(Object::Node(n)) => {
                let c = objects::node(&n);
                let name = n.metadata.name.clone().unwrap_or_default();
                self.report(Kind::Node, None, &name, &c.problems);
                let target = Target::Node(name.clone());
                self.rejected.remove(&target);
                if c.annotation_broken {
                    self.broken.insert(target.clone());
                } else {
                    self.broken.remove(&target);
                }
                if let Some(node) = c.object {
                    if !node.subnets.is_empty() {
                        self.await_watch.remove(&target);
                    }
                    self.dirty_nodes.insert(name);
                    changes.push(ClusterChange::UpsertNode(node));
                }
            }
            WatchEvent::Apply(Object::Pod(mut p)) => {
                let forged = self.drop_forged(&mut p);
                let c = objects::pod(&p);
                let (ns, name) =
                    (p.metadata.namespace.clone().unwrap_or_default(), p.metadata.name.clone().unwrap_or_default());
                self.report(Kind::Pod, Some(&ns), &name, &c.problems);
                let key = ObjectKey::new(ns.as_str(), name.as_str());
                let target = Target::Pod(key.clone());
                self.rejected.remove(&target);
                // A pod whose value is not the master's keeps no address and gets none
                // (its annotation is written once and stays; the Event says why).
                if c.annotation_broken || forged {
                    self.broken.insert(target.clone());
                } else {
                    self.broken.remove(&target);
                }
                if let Some(pod) = c.object {
                    if pod.network.is_some() {
                        self.await_watch.remove(&target);
                    }
                    self.dirty_pods.insert(key);
                    changes.push(ClusterChange::UpsertPod(pod));
                }
            }
            WatchEvent::Apply(Object::Namespace(n)) => {
                let c = objects::namespace(&n);
                self.report(Kind::Namespace, None, n.metadata.name.as_deref().unwrap_or_default(), &c.problems);
                changes.extend(c.object.map(ClusterChange::UpsertNamespace));
            }
            // Unprogrammable objects are treated as absent (e.g. a Service's old load
            // balancers go).
            WatchEvent::Apply(Object::Service(s)) => changes.push(self.namespaced(
                Kind::Service,
                &s.metadata,
                objects::service(&s),
                ClusterChange::UpsertService,
                ClusterChange::DeleteService,
            )),
            WatchEvent::Apply(Object::EndpointSlice(s)) => changes.push(self.namespaced(
                Kind::EndpointSlice,
                &s.metadata,
                objects::endpoint_slice(&s),
                ClusterChange::UpsertEndpointSlice,
                ClusterChange::DeleteEndpointSlice,
            )),
            WatchEvent::Apply(Object::NetworkPolicy(p)) => changes.push(self.namespaced(
                Kind::NetworkPolicy,
                &p.metadata,
                objects::network_policy(&p),
                ClusterChange::UpsertNetworkPolicy,
                ClusterChange::DeleteNetworkPolicy,
            )),
            WatchEvent::Delete(kind, (ns, name)) => {
                self.reported.remove(&(kind, ns.clone(), name.clone()));
                let key = || ObjectKey::new(ns.clone().unwrap_or_default(), name.clone());
                changes.push(match kind {
                    Kind::Node => {
                        self.dirty_nodes.insert(name.clone());
                        self.broken.remove(&Target::Node(name.clone()));
                        ClusterChange::DeleteNode(name)
                    }
                    Kind::Namespace => ClusterChange::DeleteNamespace(name),
                    Kind::Pod => {
                        self.dirty_pods.insert(key());
                        self.broken.remove(&Target::Pod(key()));
                        self.rejected.remove(&Target::Pod(key()));
                        self.forged.remove(&key());
                        ClusterChange::DeletePod(key())
                    }
                    Kind::Service => ClusterChange::DeleteService(key()),
                    Kind::EndpointSlice => ClusterChange::DeleteEndpointSlice(key()),
                    Kind::NetworkPolicy => ClusterChange::DeleteNetworkPolicy(key()),
                });
            }
        }
    }

    /// Reports the compiler's issues that are new since the last batch.
    fn report_issues(&mut self) {
        let issues: Vec<(Owner, String)> =
            self.shared.with_engine(|e| e.issues().map(|i| (i.object.clone(), i.error.to_string())).collect());
        let mut now = BTreeSet::new();
        for (owner, error) in issues {
            let id = format!("{owner}: {error}");
            if !self.reported_issues.contains(&id) {
                warn!(object = %owner, %error, "not programmed");
                self.shared.metrics().object_error(
                    match &owner {
                        Owner::Cluster => "Cluster",
                        Owner::Node(_) => "Node",
                        Owner::Pod(_) => "Pod",
                        Owner::Service(_) => "Service",
                        Owner::Policy(_) => "NetworkPolicy",
                        Owner::Namespace(_) => "Namespace",
                    },
                    "NotProgrammed",
                );
                if self.is_leading()
                    && let Some(r) = owner_reference(&owner)
                {
                    self.events.warn(r, "NotProgrammed", error.clone());
                }
            }
            now.insert(id);
        }
        self.reported_issues = now;
    }

    fn ipam_error(&self, target: &Target, error: &IpamError) {
        let (reason, kind, ns, name) = match target {
            Target::Node(n) => ("IpamFailed", Kind::Node, None, n.as_str()),
            Target::Pod(p) => ("IpamFailed", Kind::Pod, Some(&*p.namespace), &*p.name),
        };
        let exhausted =
            matches!(error, IpamError::NodeSubnetsExhausted { .. } | IpamError::PodAddressesExhausted { .. });
        warn!(object = ?target, %error, "address allocation failed");
        self.shared.metrics().object_error(kind.name(), if exhausted { "IpamExhausted" } else { "IpamConflict" });
        if self.is_leading() {
            self.events.warn(
                reference(kind, ns, name),
                if exhausted { "IpamExhausted" } else { reason },
                error.to_string(),
            );
        }
    }

    /// Leader only, after the first list of nodes and pods: restores the allocator from
    /// the annotations, then allocates for every node and pod that needs it.
    fn reconcile(&mut self) {
        if !self.is_leading() || !self.synced.contains(&Kind::Node) || !self.synced.contains(&Kind::Pod) {
            return;
        }
        if self.client.is_none() {
            return;
        }
        if self.ipam.is_none() {
            self.build_ipam();
        }
        for _pass in 0..2 {
            let retry = self.allocate_dirty();
            if !retry || self.waiting_pods.is_empty() {
                break;
            }
            self.dirty_pods.extend(self.waiting_pods.iter().cloned());
        }
        if let Some(ipam) = &self.ipam {
            self.shared.metrics().set_ipam(&ipam.usage());
        }
    }

    fn build_ipam(&mut self) {
        let (nodes, pods, all_nodes, all_pods): Existing = self.shared.with_engine(|e| {
            let s = e.state();
            let nodes = s
                .nodes()
                .values()
                .filter(|n| !n.subnets.is_empty())
                .map(|n| (n.name.clone(), n.subnets.clone()))
                .collect();
            let pods = s
                .pods()
                .values()
                .filter(|p| p.wants_port())
                .filter_map(|p| Some((p.key(), p.node.clone()?, p.network.as_ref()?.ip_addresses.clone())))
                .collect();
            (nodes, pods, s.nodes().keys().cloned().collect(), s.pods().keys().cloned().collect())
        });
        self.holder_uids = self.shared.with_engine(|e| {
            e.state().pods().values().filter(|p| p.network.is_some()).map(|p| (p.key(), p.uid.clone())).collect()
        });
        let restored = Ipam::from_existing(
            self.config.clone(),
            nodes.iter().map(|(n, s)| (n.as_str(), s.as_slice())),
            pods.iter().map(|(k, n, ips)| (k, n.as_str(), ips.as_slice())),
        );
        match restored {
            Ok((ipam, errors)) => {
                info!(
                    nodes = nodes.len(),
                    pods = pods.len(),
                    conflicts = errors.len(),
                    "address allocator restored from annotations"
                );
                for e in &errors {
                    let target = match e {
                        IpamError::SubnetInUse { node, .. } | IpamError::NodeHasOtherSubnet { node, .. } => {
                            Target::Node(node.clone())
                        }
                        IpamError::AddressInUse { pod, .. } | IpamError::PodHasOtherAddress { pod, .. } => {
                            Target::Pod(pod.clone())
                        }
                        other => {
                            warn!(error = %other, "restoring an annotation failed");
                            continue;
                        }
                    };
                    self.ipam_error(&target, e);
                }
                self.ipam = Some(ipam);
            }
            Err(e) => {
                // Validated at start-up; cannot happen with the same configuration.
                warn!(error = %e, "invalid network configuration");
                return;
            }
        }
        self.dirty_nodes.extend(all_nodes);
        self.dirty_pods.extend(all_pods);
    }

    /// Processes the dirty nodes and pods; true if waiting pods should be retried.
    fn allocate_dirty(&mut self) -> bool {
        let dirty_nodes = std::mem::take(&mut self.dirty_nodes);
        let dirty_pods = std::mem::take(&mut self.dirty_pods);
        let (node_info, pod_info): DirtyInfo = self.shared.with_engine(|e| {
            let s = e.state();
            let nodes = dirty_nodes.iter().map(|n| (n.clone(), s.nodes().get(n).map(|n| n.subnets.clone()))).collect();
            let pods = dirty_pods
                .iter()
                .map(|k| {
                    let info = s.pods().get(k).map(|p| PodInfo {
                        node: p.node.clone(),
                        uid: p.uid.clone(),
                        wants_port: p.wants_port(),
                        network: p.network.as_ref().map(|n| n.ip_addresses.clone()),
                    });
                    (k.clone(), info)
                })
                .collect();
            (nodes, pods)
        });
        let Some(mut ipam) = self.ipam.take() else { return false };
        let mut retry = false;
        for (name, subnets) in node_info {
            let target = Target::Node(name.clone());
            match subnets {
                None => {
                    ipam.release_node(&name);
                    retry = true;
                }
                Some(subnets) if !subnets.is_empty() => {
                    let restored = match ipam.restore_node(&name, &subnets) {
                        Err(IpamError::NodeHasOtherSubnet { .. }) => {
                            ipam.release_node(&name);
                            ipam.restore_node(&name, &subnets)
                        }
                        other => other,
                    };
                    if let Err(e) = restored {
                        self.ipam_error(&target, &e);
                    }
                    retry = true;
                }
                Some(_) => {
                    if self.broken.contains(&target)
                        || self.pending.contains(&target)
                        || self.await_watch.contains(&target)
                    {
                        continue;
                    }
                    match ipam.allocate_node(&name) {
                        Ok(subnets) => {
                            info!(node = %name, subnets = ?subnets, "node subnets allocated");
                            retry = true;
                            self.spawn_write(
                                target,
                                AnnotationWrite {
                                    namespace: None,
                                    name: name.clone(),
                                    uid: None,
                                    key: NODE_SUBNETS,
                                    value: annotations::format_node_subnets(&subnets),
                                    overwrite: false,
                                    companion: None,
                                },
                            );
                        }
                        Err(e) => self.ipam_error(&target, &e),
                    }
                }
            }
        }
        for (key, info) in pod_info {
            let target = Target::Pod(key.clone());
            let release = |ipam: &mut Ipam, this: &mut Controller| {
                ipam.release_pod(&key);
                this.holder_uids.remove(&key);
                this.first_seen.remove(&key);
                this.waiting_pods.remove(&key);
                this.reported_pods.remove(&key);
            };
            let Some(info) = info.filter(|i| i.wants_port) else {
                if ipam.pod_addresses(&key).is_some() {
                    retry = true;
                }
                release(&mut ipam, self);
                continue;
            };
            // Allocations belong to a pod UID: the same name with another UID (a
            // StatefulSet pod re-created, perhaps on another node, while the watch was
            // down) is a new pod, and the old one's address goes.
            if let Some(old) = self.holder_uids.get(&key)
                && *old != info.uid
                && ipam.pod_addresses(&key).is_some()
            {
                info!(pod = %key, old_uid = %old, uid = %info.uid, "pod re-created under the same name: releasing the old pod's address");
                ipam.release_pod(&key);
                self.holder_uids.remove(&key);
                retry = true;
            }
            let Some(node) = info.node.clone() else { continue };
            if let Some(ips) = &info.network {
                self.first_seen.remove(&key);
                self.waiting_pods.remove(&key);
                self.reported_pods.remove(&key);
                let restored = match ipam.restore_pod(&key, &node, ips) {
                    Err(IpamError::PodHasOtherAddress { .. }) => {
                        ipam.release_pod(&key);
                        ipam.restore_pod(&key, &node, ips)
                    }
                    other => other,
                };
                match restored {
                    Ok(_) => {
                        self.holder_uids.insert(key.clone(), info.uid.clone());
                    }
                    Err(e) if !matches!(e, IpamError::NodeWithoutSubnet { .. }) => self.ipam_error(&target, &e),
                    Err(_) => {}
                }
                continue;
            }
            if self.broken.contains(&target)
                || self.pending.contains(&target)
                || self.await_watch.contains(&target)
                || self.rejected.contains(&target)
            {
                continue;
            }
            self.first_seen.entry(key.clone()).or_insert_with(Instant::now);
            match ipam.allocate_pod(&key, &node) {
                Ok(network) => {
                    self.waiting_pods.remove(&key);
                    self.reported_pods.remove(&key);
                    debug!(pod = %key, ips = ?network.ip_addresses, "pod address allocated");
                    self.holder_uids.insert(key.clone(), info.uid.clone());
                    let value = annotations::format_pod_networks(&network);
                    let companion = self.signer.as_ref().map(|s| (POD_NETWORKS_SIGNATURE, s.sign(&info.uid, &value)));
                    self.spawn_write(
                        target,
                        AnnotationWrite {
                            namespace: Some(key.namespace.to_string()),
                            name: key.name.to_string(),
                            uid: Some(info.uid.clone()).filter(|u| !u.is_empty()),
                            key: POD_NETWORKS,
                            value,
                            overwrite: false,
                            companion,
                        },
                    );
                }
                Err(IpamError::NodeWithoutSubnet { .. }) => {
                    self.waiting_pods.insert(key);
                }
                Err(e) => {
                    // A pod that first waited for its node's subnet is already waiting:
                    // whether to report is decided by what has been reported.
                    self.waiting_pods.insert(key.clone());
                    if self.reported_pods.insert(key) {
                        self.ipam_error(&target, &e);
                    }
                }
            }
        }
        self.ipam = Some(ipam);
        retry
    }

    fn spawn_write(&mut self, target: Target, write: AnnotationWrite) {
        let Some(client) = self.client.clone() else { return };
        self.pending.insert(target.clone());
        let (tx, stop, writes, backoff) =
            (self.done_tx.clone(), self.write_stop.clone(), Arc::clone(&self.writes), self.backoff);
        let metrics = self.shared.metrics().clone();
        tokio::spawn(async move {
            let Ok(_permit) = writes.acquire_owned().await else { return };
            let outcome = annotate::write(&client, &write, backoff, &metrics, &stop).await;
            let _ = tx.send(WriteDone { target, outcome });
        });
    }

    fn handle_write(&mut self, done: WriteDone) {
        self.pending.remove(&done.target);
        let Some(ipam) = self.ipam.as_mut() else { return };
        match (&done.target, done.outcome) {
            (Target::Pod(key), WriteOutcome::Written) => {
                self.shared.metrics().pods_annotated.inc();
                if let Some(seen) = self.first_seen.remove(key) {
                    self.shared.metrics().annotation_latency.observe(seen.elapsed().as_secs_f64());
                }
                info!(pod = %key, addresses = ?ipam.pod_addresses(key), "pod annotated");
            }
            (Target::Node(name), WriteOutcome::Written) => {
                self.shared.metrics().nodes_annotated.inc();
                info!(node = %name, subnets = ?ipam.node_subnets(name), "node annotated");
            }
            (target @ Target::Pod(key), WriteOutcome::AlreadyAnnotated(text)) => {
                // Someone else annotated it: theirs stands; the watch brings it.
                ipam.release_pod(key);
                debug!(pod = %key, existing = %text, "pod already annotated; keeping its address");
                self.await_watch.insert(target.clone());
                self.dirty_pods.insert(key.clone());
            }
            (target @ Target::Node(name), WriteOutcome::AlreadyAnnotated(text)) => {
                ipam.release_node(name);
                debug!(node = %name, existing = %text, "node already annotated; keeping its subnets");
                self.await_watch.insert(target.clone());
                self.dirty_nodes.insert(name.clone());
            }
            (Target::Pod(key), WriteOutcome::Gone) => {
                ipam.release_pod(key);
                self.first_seen.remove(key);
                self.dirty_pods.insert(key.clone());
            }
            (Target::Node(name), WriteOutcome::Gone) => {
                ipam.release_node(name);
                self.dirty_nodes.insert(name.clone());
            }
            (target, WriteOutcome::Rejected(reason)) => {
                // The API server will not take it (admission, RBAC, validation): give the
                // address back and say so, instead of retrying forever in a write slot.
                let (kind, ns, name) = match target {
                    Target::Pod(key) => {
                        ipam.release_pod(key);
                        self.holder_uids.remove(key);
                        self.first_seen.remove(key);
                        (Kind::Pod, Some(key.namespace.to_string()), key.name.to_string())
                    }
                    Target::Node(name) => {
                        ipam.release_node(name);
                        (Kind::Node, None, name.clone())
                    }
                };
                warn!(object = ?target, %reason, "annotation write refused by the API server; address released, retried when the object changes and periodically");
                self.shared.metrics().object_error(kind.name(), "AnnotationRejected");
                if self.is_leading() {
                    self.events.warn(
                        reference(kind, ns.as_deref(), &name),
                        "AnnotationRejected",
                        format!("writing the Skein annotation failed: {reason}"),
                    );
                }
                self.rejected.insert(target.clone());
                self.last_rejected = Instant::now();
            }
            (_, WriteOutcome::Abandoned) => {}
        }
    }
}
