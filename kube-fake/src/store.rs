//! The object store: every object as `serde_json::Value` under (kind, namespace, name), one
//! global resourceVersion counter, a bounded history of changes (what watches replay and
//! what too-old resourceVersions are judged against), and a broadcast of live changes.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use crate::error::ApiError;
use crate::fault::{Fault, RequestInfo, take_fault};
use crate::meta;
use crate::patch::{self, PatchError};
use crate::resource::{Kind, Verb};
use crate::schema::{self, Duplicates, FieldValidation, ParsedBody, Schema};
use crate::selector::{FieldSelector, LabelSelector};
use crate::tokens;

/// (namespace — empty for cluster-scoped kinds —, name).
pub(crate) type Key = (String, String);

/// What happened to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChangeType {
    Added,
    Modified,
    Deleted,
}

/// One change, as kept in the history and broadcast to watches.
#[derive(Debug)]
pub(crate) struct Change {
    pub(crate) rv: u64,
    pub(crate) kind: Kind,
    pub(crate) change: ChangeType,
    /// The object before the change (`Modified`, `Deleted`).
    pub(crate) old: Option<Arc<Value>>,
    /// The object after the change; for `Deleted`, its last state stamped with the
    /// deletion's resourceVersion.
    pub(crate) object: Arc<Value>,
}

/// Tuning for a [`Store`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// How many changes the history keeps; a watch or exact list from before the oldest one
    /// answers 410 Expired.
    pub history_limit: usize,
    /// Service ClusterIP range, IPv4 (`10.96.0.0/12` by default). The first address after the
    /// network address is reserved (the `kubernetes` Service's in a real cluster).
    pub service_cidr: (Ipv4Addr, u8),
    /// NodePort range (`30000..=32767` by default).
    pub node_port_range: (u16, u16),
    /// Create `default`, `kube-system`, `kube-public` and `kube-node-lease` at start, as a
    /// real cluster has them.
    pub seed_namespaces: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            history_limit: 10_000,
            service_cidr: (Ipv4Addr::new(10, 96, 0, 0), 12),
            node_port_range: (30000, 32767),
            seed_namespaces: true,
        }
    }
}

struct State {
    rv: u64,
    objects: BTreeMap<Kind, BTreeMap<Key, Arc<Value>>>,
    history: VecDeque<Arc<Change>>,
    /// Every change with `rv > floor` is still in `history`.
    floor: u64,
    faults: Vec<Fault>,
    counts: BTreeMap<(Verb, Kind), u64>,
    options: StoreOptions,
}

struct Inner {
    state: Mutex<State>,
    changes: broadcast::Sender<Arc<Change>>,
    /// Issued ServiceAccount tokens, by token.
    tokens: Mutex<std::collections::HashMap<String, tokens::IssuedToken>>,
}

/// The fake API server's objects, history, injected faults and request counters. Cheap to
/// clone (a shared handle); a new [`crate::FakeApiServer`] can serve an existing store, which
/// is how a test restarts the "API server" without losing the cluster.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.inner.state.lock();
        f.debug_struct("Store")
            .field("resource_version", &state.rv)
            .field("objects", &state.objects.values().map(BTreeMap::len).sum::<usize>())
            .field("history", &state.history.len())
            .finish()
    }
}

impl Default for Store {
    fn default() -> Self {
        Store::new(StoreOptions::default())
    }
}

/// How a write treats `status` and server-managed fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WriteMode {
    /// The main resource: `status` is kept from the stored object on kinds with a `/status`
    /// subresource.
    Main,
    /// The `/status` subresource: only `status` changes.
    Status,
    /// A test's direct write: every field as given.
    Raw,
}

/// The content type of a PATCH.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PatchType {
    Merge,
    Strategic,
    Json,
    Apply,
}

/// Query parameters of a list.
#[derive(Clone, Debug, Default)]
pub(crate) struct ListRequest {
    pub(crate) label: LabelSelector,
    pub(crate) field: FieldSelector,
    pub(crate) resource_version: Option<String>,
    pub(crate) version_match: Option<String>,
    pub(crate) limit: Option<usize>,
    pub(crate) continue_token: Option<String>,
}

/// One page of a list.
pub(crate) struct ListPage {
    pub(crate) items: Vec<Arc<Value>>,
    pub(crate) resource_version: u64,
    pub(crate) continue_token: Option<String>,
    pub(crate) remaining: Option<usize>,
}

/// Where a watch starts.
pub(crate) struct WatchStart {
    /// Synthetic ADDED events (current objects), for a watch without a resourceVersion, from
    /// "0", or with `sendInitialEvents`.
    pub(crate) initial: Vec<Arc<Value>>,
    /// Recorded changes after the requested resourceVersion.
    pub(crate) replay: Vec<Arc<Change>>,
    /// Live changes from here on.
    pub(crate) receiver: broadcast::Receiver<Arc<Change>>,
    /// The resourceVersion up to which this watch has seen everything once `initial` and
    /// `replay` are sent.
    pub(crate) progress: u64,
}

fn object_name(value: &Value) -> &str {
    value.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("")
}

fn meta_str<'a>(value: &'a Value, field: &str) -> Option<&'a str> {
    value.get("metadata").and_then(|m| m.get(field)).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn metadata_mut(value: &mut Value) -> &mut Map<String, Value> {
    if !value.get("metadata").is_some_and(Value::is_object) {
        value["metadata"] = Value::Object(Map::new());
    }
    match value.get_mut("metadata") {
        Some(Value::Object(map)) => map,
        // Just made an object above.
        _ => unreachable!("metadata was set to an object"),
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// The object without metadata and status: what `metadata.generation` counts changes of.
fn spec_part(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| *k != "metadata" && *k != "status")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The object without the fields every write changes, to detect no-op writes.
fn without_volatile(value: &Value) -> Value {
    let mut copy = value.clone();
    if let Some(Value::Object(meta)) = copy.get_mut("metadata") {
        meta.remove("resourceVersion");
        meta.remove("managedFields");
    }
    copy
}

fn hex_encode(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(text: &str) -> Option<String> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..text.len()).step_by(2).map(|i| text.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect();
    String::from_utf8(bytes?).ok()
}

fn parse_rv(raw: &str) -> Result<u64, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {raw:?}: must be an unsigned integer")))
}

impl State {
    fn kind_map(&self, kind: Kind) -> Option<&BTreeMap<Key, Arc<Value>>> {
        self.objects.get(&kind)
    }

    fn lookup(&self, kind: Kind, key: &Key) -> Option<Arc<Value>> {
        self.kind_map(kind).and_then(|m| m.get(key)).cloned()
    }

    fn too_old(&self, rv: u64) -> ApiError {
        ApiError::expired(format!("too old resource version: {rv} ({})", self.floor + 1))
    }

    /// Records a change: stamps the resourceVersion, stores, appends to the history, broadcasts.
    /// Admission of a write made by a request (ValidatingAdmissionPolicies stored here);
    /// writes that are not requests (the store's own methods) are not admitted.
    fn admit(
        &self,
        kind: Kind,
        operation: &'static str,
        subresource: Option<&str>,
        key: &Key,
        object: &Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        let Some(user) = crate::admission::current_user() else { return Ok(()) };
        let values = |kind: Kind| -> Vec<Value> {
            self.kind_map(kind).map(|m| m.values().map(|v| (**v).clone()).collect()).unwrap_or_default()
        };
        let bindings = values(Kind::ValidatingAdmissionPolicyBinding);
        if bindings.is_empty() {
            return Ok(());
        }
        let request = crate::admission::Request {
            operation,
            kind,
            subresource,
            namespace: Some(key.0.as_str()).filter(|n| !n.is_empty()),
            name: &key.1,
            object,
            old_object: old,
            user: &user,
        };
        crate::admission::admit(&values(Kind::ValidatingAdmissionPolicy), &bindings, &request)
    }

    fn commit(
        &mut self,
        changes: &broadcast::Sender<Arc<Change>>,
        kind: Kind,
        key: Key,
        change: ChangeType,
        old: Option<Arc<Value>>,
        mut object: Value,
    ) -> Arc<Value> {
        self.rv += 1;
        metadata_mut(&mut object).insert("resourceVersion".into(), Value::String(self.rv.to_string()));
        let object = Arc::new(object);
        let map = self.objects.entry(kind).or_default();
        if change == ChangeType::Deleted {
            map.remove(&key);
        } else {
            map.insert(key, object.clone());
        }
        let record = Arc::new(Change { rv: self.rv, kind, change, old, object: object.clone() });
        self.history.push_back(record.clone());
        while self.history.len() > self.options.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.floor = dropped.rv;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = changes.send(record);
        object
    }

    /// The objects of `kind` as they were at `rv` (which must be ≥ `floor`).
    fn snapshot_at(&self, kind: Kind, rv: u64) -> BTreeMap<Key, Arc<Value>> {
        let mut objects = self.kind_map(kind).cloned().unwrap_or_default();
        for change in self.history.iter().rev().take_while(|c| c.rv > rv) {
            if change.kind != kind {
                continue;
            }
            let key = key_of(kind, &change.object);
            match (&change.change, &change.old) {
                (ChangeType::Added, _) => {
                    objects.remove(&key);
                }
                (_, Some(old)) => {
                    objects.insert(key, old.clone());
                }
                (_, None) => {}
            }
        }
        objects
    }

    fn used_cluster_ips(&self, except: &Key) -> HashSet<String> {
        self.kind_map(Kind::Service)
            .into_iter()
            .flatten()
            .filter(|(k, _)| *k != except)
            .flat_map(|(_, svc)| {
                svc.pointer("/spec/clusterIPs")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .chain(svc.pointer("/spec/clusterIP"))
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn used_node_ports(&self, except: &Key) -> HashSet<u64> {
        self.kind_map(Kind::Service)
            .into_iter()
            .flatten()
            .filter(|(k, _)| *k != except)
            .flat_map(|(_, svc)| {
                svc.pointer("/spec/ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p.get("nodePort").and_then(Value::as_u64))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Service defaults and the allocations a real API server makes: ClusterIP from the
    /// service CIDR, NodePorts from the NodePort range.
    fn prepare_service(&self, key: &Key, obj: &mut Value, old: Option<&Value>) -> Result<(), ApiError> {
        let name = key.1.clone();
        let invalid = |msg: String| ApiError::invalid(Kind::Service, &name, msg);
        if !obj.get("spec").is_some_and(Value::is_object) {
            obj["spec"] = json!({});
        }
        let used_ips = self.used_cluster_ips(key);
        let used_ports = self.used_node_ports(key);
        let (cidr_base, cidr_len) = self.options.service_cidr;
        let (port_min, port_max) = self.options.node_port_range;
        let spec = &mut obj["spec"];
        let service_type = spec.get("type").and_then(Value::as_str).unwrap_or("ClusterIP").to_owned();
        spec["type"] = Value::String(service_type.clone());
        if !matches!(service_type.as_str(), "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName") {
            return Err(invalid(format!(
                "spec.type: Unsupported value: {service_type:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""
            )));
        }
        let with_node_ports = service_type == "NodePort" || service_type == "LoadBalancer";
        if service_type != "ExternalName" {
            let mut ip = spec
                .get("clusterIP")
                .and_then(Value::as_str)
                .or_else(|| spec.pointer("/clusterIPs/0").and_then(Value::as_str))
                .unwrap_or("")
                .to_owned();
            let old_ip = old.and_then(|o| o.pointer("/spec/clusterIP")).and_then(Value::as_str).unwrap_or("");
            if ip.is_empty() {
                ip = old_ip.to_owned();
            } else if !old_ip.is_empty() && ip != old_ip {
                return Err(invalid(format!("spec.clusterIP: Invalid value: {ip:?}: field is immutable")));
            }
            if ip.is_empty() {
                let base = u32::from(cidr_base);
                let size = 1u64 << (32 - u32::from(cidr_len.min(32)));
                let found = (2..size.saturating_sub(1))
                    .map(|offset| Ipv4Addr::from(base.wrapping_add(offset as u32)).to_string())
                    .find(|candidate| !used_ips.contains(candidate));
                ip = found.ok_or_else(|| {
                    invalid(format!("spec.clusterIPs: Internal error: range {cidr_base}/{cidr_len} is full"))
                })?;
            } else if ip != "None" {
                let parsed: IpAddr = ip.parse().map_err(|_| {
                    invalid(format!("spec.clusterIP: Invalid value: {ip:?}: must be a valid IP address"))
                })?;
                if ip != old_ip && used_ips.contains(&ip) {
                    return Err(invalid(format!(
                        "spec.clusterIPs: Invalid value: [{ip:?}]: failed to allocate IP {ip}: provided IP is already allocated"
                    )));
                }
                if spec.get("ipFamilies").is_none() {
                    spec["ipFamilies"] = json!([if parsed.is_ipv4() { "IPv4" } else { "IPv6" }]);
                }
            }
            spec["clusterIP"] = Value::String(ip.clone());
            spec["clusterIPs"] = json!([ip]);
            if spec.get("ipFamilies").is_none() {
                spec["ipFamilies"] = json!(["IPv4"]);
            }
            if spec.get("ipFamilyPolicy").is_none() {
                spec["ipFamilyPolicy"] = json!("SingleStack");
            }
            if spec.get("sessionAffinity").is_none() {
                spec["sessionAffinity"] = json!("None");
            }
            if spec.get("internalTrafficPolicy").is_none() {
                spec["internalTrafficPolicy"] = json!("Cluster");
            }
            if with_node_ports && spec.get("externalTrafficPolicy").is_none() {
                spec["externalTrafficPolicy"] = json!("Cluster");
            }
        }
        let old_ports: Vec<Value> =
            old.and_then(|o| o.pointer("/spec/ports")).and_then(Value::as_array).cloned().unwrap_or_default();
        let mut taken: HashSet<u64> = HashSet::new();
        if let Some(Value::Array(ports)) = spec.get_mut("ports") {
            for (index, port) in ports.iter_mut().enumerate() {
                let Value::Object(port) = port else {
                    return Err(invalid(format!("spec.ports[{index}]: Invalid value: must be an object")));
                };
                let Some(number) = port.get("port").and_then(Value::as_u64).filter(|p| (1..=65535).contains(p)) else {
                    return Err(invalid(format!(
                        "spec.ports[{index}].port: Invalid value: {}: must be between 1 and 65535, inclusive",
                        port.get("port").cloned().unwrap_or(Value::Null)
                    )));
                };
                port.entry("protocol").or_insert_with(|| json!("TCP"));
                port.entry("targetPort").or_insert_with(|| json!(number));
                let protocol = port.get("protocol").cloned();
                if !with_node_ports {
                    if port.get("nodePort").is_some_and(|p| p.as_u64() != Some(0)) {
                        return Err(invalid(format!(
                            "spec.ports[{index}].nodePort: Forbidden: may not be used when `type` is '{service_type}'"
                        )));
                    }
                    port.remove("nodePort");
                    continue;
                }
                let requested = port.get("nodePort").and_then(Value::as_u64).filter(|p| *p != 0);
                let node_port = match requested {
                    Some(p) => {
                        if p < u64::from(port_min) || p > u64::from(port_max) {
                            return Err(invalid(format!(
                                "spec.ports[{index}].nodePort: Invalid value: {p}: provided port is not in the valid range. The range of valid ports is {port_min}-{port_max}"
                            )));
                        }
                        if used_ports.contains(&p) || taken.contains(&p) {
                            return Err(invalid(format!(
                                "spec.ports[{index}].nodePort: Invalid value: {p}: provided port is already allocated"
                            )));
                        }
                        p
                    }
                    None => {
                        let previous = old_ports
                            .iter()
                            .find(|o| {
                                o.get("port").and_then(Value::as_u64) == Some(number)
                                    && o.get("protocol") == protocol.as_ref()
                            })
                            .and_then(|o| o.get("nodePort").and_then(Value::as_u64))
                            .filter(|p| !taken.contains(p));
                        match previous {
                            Some(p) => p,
                            None => (u64::from(port_min)..=u64::from(port_max))
                                .find(|p| !used_ports.contains(p) && !taken.contains(p))
                                .ok_or_else(|| invalid("spec.ports: Internal error: NodePort range is full".into()))?,
                        }
                    }
                };
                taken.insert(node_port);
                port.insert("nodePort".into(), json!(node_port));
            }
        }
        Ok(())
    }

    /// Kind-specific defaults and validation, applied on every write of the main resource:
    /// Service allocations here, the rest from the kind table.
    fn apply_defaults(&self, kind: Kind, key: &Key, obj: &mut Value, old: Option<&Value>) -> Result<(), ApiError> {
        if kind == Kind::Service {
            self.prepare_service(key, obj, old)?;
        }
        let spec = kind.spec();
        if let Some(defaults) = spec.defaults {
            defaults(obj);
        }
        if let Some(validate) = spec.validate {
            let errors = validate(obj, old);
            if !errors.is_empty() {
                let message = if errors.len() == 1 { errors[0].clone() } else { format!("[{}]", errors.join(", ")) };
                return Err(ApiError::invalid(kind, &key.1, message));
            }
        }
        Ok(())
    }
}

/// The store key of an object of `kind`.
pub(crate) fn key_of(kind: Kind, object: &Value) -> Key {
    let namespace =
        if kind.namespaced() { meta_str(object, "namespace").unwrap_or("").to_owned() } else { String::new() };
    (namespace, object_name(object).to_owned())
}

impl Store {
    /// An empty store (plus the standard namespaces when `options.seed_namespaces`).
    pub fn new(options: StoreOptions) -> Store {
        let seed = options.seed_namespaces;
        let (changes, _) = broadcast::channel(16_384);
        let store = Store {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    rv: 0,
                    objects: BTreeMap::new(),
                    history: VecDeque::new(),
                    floor: 0,
                    faults: Vec::new(),
                    counts: BTreeMap::new(),
                    options,
                }),
                changes,
                tokens: Mutex::new(std::collections::HashMap::new()),
            }),
        };
        if seed {
            for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                // Fresh store: these names cannot collide and are valid.
                let _ = store.insert(Kind::Namespace, json!({"metadata": {"name": name}}));
            }
        }
        store
    }

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.inner.state.lock().rv
    }

    /// The resourceVersion below which history is gone: a watch or exact list from a version
    /// older than this answers 410.
    pub fn history_floor(&self) -> u64 {
        self.inner.state.lock().floor
    }

    /// Creates or replaces an object as given (status included), assigning uid,
    /// creationTimestamp, generation and a new resourceVersion, and notifying watches
    /// (ADDED or MODIFIED). The namespace defaults to `default` for namespaced kinds.
    pub fn insert(&self, kind: Kind, object: Value) -> Result<Value, ApiError> {
        let mut object = object;
        if let Some(Value::Object(meta)) = object.get_mut("metadata") {
            meta.remove("resourceVersion");
        }
        let namespace = meta_str(&object, "namespace").map(str::to_owned);
        let existing = self.get(kind, namespace.as_deref(), object_name(&object));
        match existing {
            Some(_) => {
                if let Some(Value::Object(meta)) = object.get_mut("metadata") {
                    meta.remove("uid");
                }
                let name = object_name(&object).to_owned();
                self.update(kind, namespace.as_deref(), &name, object, WriteMode::Raw, false)
            }
            None => self.create(kind, namespace.as_deref(), object, WriteMode::Raw, false),
        }
    }

    /// One object, or `None`. `namespace` is ignored for cluster-scoped kinds and defaults
    /// to `default` for namespaced ones.
    pub fn get(&self, kind: Kind, namespace: Option<&str>, name: &str) -> Option<Value> {
        let key = store_key(kind, namespace, name);
        self.inner.state.lock().lookup(kind, &key).map(|v| (*v).clone())
    }

    /// All objects of a kind, in one namespace or (with `None`) all of them, sorted by
    /// namespace and name.
    pub fn list(&self, kind: Kind, namespace: Option<&str>) -> Vec<Value> {
        let state = self.inner.state.lock();
        state
            .kind_map(kind)
            .into_iter()
            .flatten()
            .filter(|((ns, _), _)| namespace.is_none_or(|n| !kind.namespaced() || n == ns))
            .map(|(_, v)| (**v).clone())
            .collect()
    }

    /// Deletes an object (notifying watches) and returns its last state, or `None` if absent.
    pub fn delete(&self, kind: Kind, namespace: Option<&str>, name: &str) -> Option<Value> {
        self.delete_object(kind, namespace, name, None, None, false).ok()
    }

    /// Forgets every recorded change with a resourceVersion below `rv`, as etcd compaction
    /// does: afterwards a watch from a resourceVersion older than `rv - 1` answers an ERROR
    /// event with 410 Expired, and so does a list with `resourceVersionMatch=Exact`.
    pub fn compact_history_before(&self, rv: u64) {
        let mut state = self.inner.state.lock();
        while state.history.front().is_some_and(|c| c.rv < rv) {
            if let Some(dropped) = state.history.pop_front() {
                state.floor = dropped.rv;
            }
        }
        state.floor = state.floor.max(rv.saturating_sub(1).min(state.rv));
    }

    /// Forgets all recorded changes: any watch from a resourceVersion older than the current
    /// one answers 410.
    pub fn compact_all_history(&self) {
        let rv = self.resource_version();
        self.compact_history_before(rv + 1);
    }

    /// Injects a failure (see [`Fault`]).
    pub fn inject_fault(&self, fault: Fault) {
        self.inner.state.lock().faults.push(fault);
    }

    /// Removes every injected failure not yet used up.
    pub fn clear_faults(&self) {
        self.inner.state.lock().faults.clear();
    }

    /// The injected failures not yet used up.
    pub fn pending_faults(&self) -> Vec<Fault> {
        self.inner.state.lock().faults.clone()
    }

    /// How many requests with this verb for this kind were received (failed ones included).
    pub fn request_count(&self, verb: Verb, kind: Kind) -> u64 {
        self.inner.state.lock().counts.get(&(verb, kind)).copied().unwrap_or(0)
    }

    /// Every request count, by verb and kind.
    pub fn request_counts(&self) -> BTreeMap<(Verb, Kind), u64> {
        self.inner.state.lock().counts.clone()
    }

    /// Sets every request count back to zero.
    pub fn reset_request_counts(&self) {
        self.inner.state.lock().counts.clear();
    }

    /// Typed [`Store::insert`] for a kube-rs resource type (e.g. `k8s_openapi` `Pod`).
    pub fn insert_object<K>(&self, object: &K) -> Result<K, ApiError>
    where
        K: kube::Resource<DynamicType = ()> + serde::Serialize + serde::de::DeserializeOwned,
    {
        let kind = typed_kind::<K>()?;
        let value = serde_json::to_value(object)
            .map_err(|e| ApiError::bad_request(format!("cannot serialize {}: {e}", kind.kind_name())))?;
        let stored = self.insert(kind, value)?;
        serde_json::from_value(stored)
            .map_err(|e| ApiError::new(500, "InternalError", format!("cannot read back {}: {e}", kind.kind_name())))
    }

    /// Typed [`Store::get`]; `None` if absent, not of a served kind, or not deserializable.
    pub fn get_object<K>(&self, namespace: Option<&str>, name: &str) -> Option<K>
    where
        K: kube::Resource<DynamicType = ()> + serde::de::DeserializeOwned,
    {
        let kind = typed_kind::<K>().ok()?;
        self.get(kind, namespace, name).and_then(|v| serde_json::from_value(v).ok())
    }

    /// Typed [`Store::list`]; objects that do not deserialize into `K` are left out.
    pub fn list_objects<K>(&self, namespace: Option<&str>) -> Vec<K>
    where
        K: kube::Resource<DynamicType = ()> + serde::de::DeserializeOwned,
    {
        let Ok(kind) = typed_kind::<K>() else { return Vec::new() };
        self.list(kind, namespace).into_iter().filter_map(|v| serde_json::from_value(v).ok()).collect()
    }

    // ---- what the HTTP layer calls ----

    /// Counts a request and returns the injected failure to answer with, if any.
    pub(crate) fn admit(&self, request: &RequestInfo<'_>) -> Option<(ApiError, Option<std::time::Duration>)> {
        let mut state = self.inner.state.lock();
        *state.counts.entry((request.verb, request.kind)).or_insert(0) += 1;
        take_fault(&mut state.faults, request)
    }

    /// POST: creates a new object; 409 AlreadyExists if the name is taken.
    pub(crate) fn create(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        mut object: Value,
        mode: WriteMode,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        check_type_meta(kind, &mut object)?;
        let path_namespace = namespace.filter(|n| !n.is_empty());
        let meta = metadata_mut(&mut object);
        if kind.namespaced() {
            let body_namespace = meta.get("namespace").and_then(Value::as_str).filter(|n| !n.is_empty());
            let namespace = match (path_namespace, body_namespace) {
                (Some(p), Some(b)) if p != b => {
                    return Err(ApiError::bad_request(format!(
                        "the namespace of the provided object ({b}) does not match the namespace sent on the request ({p})"
                    )));
                }
                (Some(p), _) => p.to_owned(),
                (None, Some(b)) => b.to_owned(),
                (None, None) => "default".to_owned(),
            };
            meta.insert("namespace".into(), Value::String(namespace));
        } else {
            meta.remove("namespace");
        }
        if mode != WriteMode::Raw && meta.get("resourceVersion").and_then(Value::as_str).is_some_and(|s| !s.is_empty())
        {
            return Err(ApiError::bad_request("resourceVersion should not be set on objects to be created"));
        }
        meta.remove("resourceVersion");
        let mut state = self.inner.state.lock();
        let meta = metadata_mut(&mut object);
        let name = match meta.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()) {
            Some(name) => name.to_owned(),
            None => {
                let Some(prefix) = meta.get("generateName").and_then(Value::as_str).filter(|n| !n.is_empty()) else {
                    return Err(ApiError::invalid(
                        kind,
                        "",
                        "metadata.name: Required value: name or generateName is required",
                    ));
                };
                let namespace = meta.get("namespace").and_then(Value::as_str).unwrap_or("").to_owned();
                let prefix = prefix.to_owned();
                let mut name = format!("{prefix}{}", meta::name_suffix());
                while state.lookup(kind, &(namespace.clone(), name.clone())).is_some() {
                    name = format!("{prefix}{}", meta::name_suffix());
                }
                name
            }
        };
        if !valid_name(&name) {
            return Err(ApiError::invalid(
                kind,
                &name,
                format!(
                    "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
                ),
            ));
        }
        meta.insert("name".into(), Value::String(name.clone()));
        if mode != WriteMode::Raw || meta.get("uid").and_then(Value::as_str).is_none_or(str::is_empty) {
            meta.insert("uid".into(), Value::String(meta::new_uid()));
        }
        if mode != WriteMode::Raw || meta.get("creationTimestamp").and_then(Value::as_str).is_none_or(str::is_empty) {
            meta.insert("creationTimestamp".into(), Value::String(meta::now_rfc3339()));
        }
        meta.insert("generation".into(), json!(1));
        meta.remove("deletionTimestamp");
        let key = key_of(kind, &object);
        if state.lookup(kind, &key).is_some() {
            return Err(ApiError::already_exists(kind, &name));
        }
        if mode != WriteMode::Raw {
            if let Some(initial) = kind.spec().initial_status {
                object["status"] = initial();
            }
        } else if kind == Kind::Namespace && object.pointer("/status/phase").is_none() {
            object["status"] = json!({"phase": "Active"});
        }
        state.apply_defaults(kind, &key, &mut object, None)?;
        state.admit(kind, "CREATE", None, &key, &object, None)?;
        if dry_run {
            return Ok(object);
        }
        let changes = self.inner.changes.clone();
        let stored = state.commit(&changes, kind, key, ChangeType::Added, None, object);
        Ok((*stored).clone())
    }

    /// PUT (main resource or `/status`).
    pub(crate) fn update(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        mut object: Value,
        mode: WriteMode,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        check_type_meta(kind, &mut object)?;
        let body_name = meta_str(&object, "name").unwrap_or("");
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if kind.namespaced()
            && let (Some(path_ns), Some(body_ns)) =
                (namespace.filter(|n| !n.is_empty()), meta_str(&object, "namespace"))
            && path_ns != body_ns
        {
            return Err(ApiError::bad_request(format!(
                "the namespace of the provided object ({body_ns}) does not match the namespace sent on the request ({path_ns})"
            )));
        }
        let key = store_key(kind, namespace, name);
        let mut state = self.inner.state.lock();
        let old = state.lookup(kind, &key).ok_or_else(|| ApiError::not_found(kind, name))?;
        check_preconditions(kind, name, &old, &object)?;
        self.finish_update(&mut state, kind, key, old, object, mode, dry_run)
    }

    /// PATCH (main resource or `/status`); server-side apply creates a missing object. With
    /// `validation` (`fieldValidation` and the patch's duplicate fields) the patched object is
    /// checked against the kind's schema; the warnings to answer with are returned.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn patch(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        patch_type: PatchType,
        patch: &Value,
        field_manager: Option<&str>,
        mode: WriteMode,
        dry_run: bool,
        validation: Option<(FieldValidation, Duplicates)>,
    ) -> Result<(Value, Vec<String>), ApiError> {
        let key = store_key(kind, namespace, name);
        let mut applied_config = None;
        if patch_type == PatchType::Apply {
            let Some(manager) = field_manager.filter(|m| !m.is_empty()) else {
                return Err(ApiError::bad_request(
                    "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                ));
            };
            let Value::Object(_) = patch else {
                return Err(ApiError::bad_request("an apply patch must be an object"));
            };
            let mut config = patch.clone();
            for (field, want) in [("apiVersion", kind.api_version()), ("kind", kind.kind_name())] {
                match config.get(field).and_then(Value::as_str) {
                    Some(got) if got == want => {}
                    Some(got) => {
                        return Err(ApiError::bad_request(format!(
                            "{field} {got:?} in the apply patch does not match the endpoint's {want:?}"
                        )));
                    }
                    None => return Err(ApiError::bad_request(format!("{field} must be set in an apply patch"))),
                }
            }
            if let Some(Value::Object(meta)) = config.get_mut("metadata") {
                meta.remove("managedFields");
            }
            applied_config = Some((manager.to_owned(), config));
        }
        let mut state = self.inner.state.lock();
        let Some(old) = state.lookup(kind, &key) else {
            let Some((manager, config)) = applied_config.filter(|_| mode != WriteMode::Status) else {
                return Err(ApiError::not_found(kind, name));
            };
            drop(state);
            let body_name = meta_str(&config, "name").unwrap_or(name);
            if body_name != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({name})"
                )));
            }
            let mut object = config;
            metadata_mut(&mut object).insert("name".into(), Value::String(name.to_owned()));
            if meta_str(&object, "resourceVersion").is_some() {
                return Err(ApiError::not_found(kind, name));
            }
            record_manager(&mut object, kind, &manager);
            let (object, warnings) = match validation {
                Some((directive, duplicates)) => {
                    let checked =
                        schema::check(Schema::of(kind), ParsedBody::from_parts(object, duplicates), directive, None)?;
                    (checked.object, checked.warnings)
                }
                None => (object, Vec::new()),
            };
            return Ok((self.create(kind, namespace, object, WriteMode::Main, dry_run)?, warnings));
        };
        let mut object = (*old).clone();
        let result = match patch_type {
            PatchType::Merge => {
                if !patch.is_object() {
                    return Err(ApiError::bad_request("a merge patch must be a JSON object"));
                }
                patch::merge_patch(&mut object, patch);
                Ok(())
            }
            PatchType::Strategic => patch::strategic_merge_patch(kind, &mut object, patch),
            PatchType::Json => patch::json_patch(&mut object, patch),
            PatchType::Apply => match &applied_config {
                Some((manager, config)) => {
                    let result = patch::strategic_merge_patch(kind, &mut object, config);
                    record_manager(&mut object, kind, manager);
                    result
                }
                None => Ok(()),
            },
        };
        result.map_err(|e| match e {
            PatchError::Malformed(msg) => ApiError::bad_request(format!("invalid patch for {kind} {name:?}: {msg}")),
            PatchError::Failed(msg) => ApiError::invalid(kind, name, msg),
        })?;
        if !object.is_object() {
            return Err(ApiError::invalid(kind, name, "the patch replaced the object with a non-object"));
        }
        let patched_name = meta_str(&object, "name").unwrap_or("");
        if patched_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({patched_name}) does not match the name on the URL ({name})"
            )));
        }
        if kind.namespaced() && meta_str(&object, "namespace") != meta_str(&old, "namespace") {
            return Err(ApiError::bad_request("metadata.namespace cannot be changed by a patch"));
        }
        check_preconditions(kind, name, &old, &object)?;
        // The patched object must still deserialize with the right type meta.
        object["apiVersion"] = Value::String(kind.api_version().into());
        object["kind"] = Value::String(kind.kind_name().into());
        let mut warnings = Vec::new();
        if let Some((directive, duplicates)) = validation {
            let checked =
                schema::check(Schema::of(kind), ParsedBody::from_parts(object, duplicates), directive, Some(&old))?;
            object = checked.object;
            warnings = checked.warnings;
        }
        Ok((self.finish_update(&mut state, kind, key, old, object, mode, dry_run)?, warnings))
    }

    /// The `autoscaling/v1` Scale of an object of a kind with a `/scale` subresource.
    fn scale_of(kind: Kind, object: &Value) -> Result<Value, ApiError> {
        let Some(scale) = kind.spec().scale else {
            return Err(ApiError::new(404, "NotFound", format!("{} have no scale subresource", kind.plural())));
        };
        let mut metadata = Map::new();
        for field in ["name", "namespace", "uid", "resourceVersion", "creationTimestamp"] {
            if let Some(value) = object.get("metadata").and_then(|m| m.get(field)) {
                metadata.insert(field.into(), value.clone());
            }
        }
        let selector = crate::table::selector_string(object.pointer(scale.selector)).unwrap_or_default();
        Ok(json!({
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": metadata,
            "spec": {"replicas": object.pointer(scale.replicas).and_then(Value::as_i64).unwrap_or(0)},
            "status": {
                "replicas": object.pointer(scale.status_replicas).and_then(Value::as_i64).unwrap_or(0),
                "selector": selector,
            },
        }))
    }

    /// GET `/scale`.
    pub(crate) fn get_scale(&self, kind: Kind, namespace: Option<&str>, name: &str) -> Result<Value, ApiError> {
        let object = self.get(kind, namespace, name).ok_or_else(|| ApiError::not_found(kind, name))?;
        Store::scale_of(kind, &object)
    }

    /// Writes a Scale's `spec.replicas` into the object (under the state lock).
    fn write_scale(
        &self,
        state: &mut State,
        kind: Kind,
        key: Key,
        old: Arc<Value>,
        scale: &Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let name = key.1.clone();
        let Some(pointer) = kind.spec().scale.map(|s| s.replicas) else {
            return Err(ApiError::not_found(kind, &name));
        };
        if let Some(rv) = meta_str(scale, "resourceVersion")
            && Some(rv) != meta_str(&old, "resourceVersion")
        {
            return Err(ApiError::conflict(
                kind,
                &name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        let replicas = match scale.pointer("/spec/replicas") {
            None | Some(Value::Null) => 0,
            Some(value) => value.as_i64().filter(|r| (0..=i64::from(i32::MAX)).contains(r)).ok_or_else(|| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("Scale.autoscaling \"{name}\" is invalid: spec.replicas: Invalid value: {value}: must be greater than or equal to 0"),
                )
            })?,
        };
        let mut new = (*old).clone();
        set_pointer(&mut new, pointer, json!(replicas));
        let updated = self.finish_update(state, kind, key, old, new, WriteMode::Main, dry_run)?;
        Store::scale_of(kind, &updated)
    }

    /// PUT `/scale`: sets the desired replicas (a non-empty `metadata.resourceVersion` must be
    /// the object's).
    pub(crate) fn update_scale(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        scale: &Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let key = store_key(kind, namespace, name);
        let mut state = self.inner.state.lock();
        let old = state.lookup(kind, &key).ok_or_else(|| ApiError::not_found(kind, name))?;
        self.write_scale(&mut state, kind, key, old, scale, dry_run)
    }

    /// PATCH `/scale`: the patch applies to the current Scale, whose replicas are then written.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn patch_scale(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        patch_type: PatchType,
        patch: &Value,
        dry_run: bool,
        validation: Option<(FieldValidation, Duplicates)>,
    ) -> Result<(Value, Vec<String>), ApiError> {
        let key = store_key(kind, namespace, name);
        let mut state = self.inner.state.lock();
        let old = state.lookup(kind, &key).ok_or_else(|| ApiError::not_found(kind, name))?;
        let mut scale = Store::scale_of(kind, &old)?;
        let current = scale.clone();
        let result = match patch_type {
            PatchType::Merge if patch.is_object() => {
                patch::merge_patch(&mut scale, patch);
                Ok(())
            }
            PatchType::Merge => return Err(ApiError::bad_request("a merge patch must be a JSON object")),
            // A Scale has no lists: strategic merge and apply are merges of the given fields.
            PatchType::Strategic | PatchType::Apply => patch::strategic_merge_patch(kind, &mut scale, patch),
            PatchType::Json => patch::json_patch(&mut scale, patch),
        };
        result.map_err(|e| match e {
            PatchError::Malformed(msg) => {
                ApiError::bad_request(format!("invalid patch for {kind} {name:?} scale: {msg}"))
            }
            PatchError::Failed(msg) => ApiError::invalid(kind, name, msg),
        })?;
        let mut warnings = Vec::new();
        if let Some((directive, duplicates)) = validation {
            let checked =
                schema::check(Schema::SCALE, ParsedBody::from_parts(scale, duplicates), directive, Some(&current))?;
            scale = checked.object;
            warnings = checked.warnings;
        }
        Ok((self.write_scale(&mut state, kind, key, old, &scale, dry_run)?, warnings))
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_update(
        &self,
        state: &mut State,
        kind: Kind,
        key: Key,
        old: Arc<Value>,
        new: Value,
        mode: WriteMode,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let mut result = match mode {
            WriteMode::Status => {
                let mut result = (*old).clone();
                match new.get("status") {
                    Some(status) => result["status"] = status.clone(),
                    None => {
                        if let Value::Object(map) = &mut result {
                            map.remove("status");
                        }
                    }
                }
                result
            }
            WriteMode::Main | WriteMode::Raw => {
                let mut result = new;
                if mode == WriteMode::Main && kind.has_status_subresource() {
                    match old.get("status") {
                        Some(status) => result["status"] = status.clone(),
                        None => {
                            if let Value::Object(map) = &mut result {
                                map.remove("status");
                            }
                        }
                    }
                }
                result
            }
        };
        let meta = metadata_mut(&mut result);
        for field in ["name", "namespace", "uid", "creationTimestamp"] {
            match old.get("metadata").and_then(|m| m.get(field)) {
                Some(value) => meta.insert(field.into(), value.clone()),
                None => meta.remove(field),
            };
        }
        if mode != WriteMode::Status {
            state.apply_defaults(kind, &key, &mut result, Some(&old))?;
        }
        let old_generation = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
        let generation = if spec_part(&result) != spec_part(&old) { old_generation + 1 } else { old_generation };
        metadata_mut(&mut result).insert("generation".into(), json!(generation));
        if let Some(rv) = old.pointer("/metadata/resourceVersion") {
            metadata_mut(&mut result).insert("resourceVersion".into(), rv.clone());
        }
        let subresource = (mode == WriteMode::Status).then_some("status");
        state.admit(kind, "UPDATE", subresource, &key, &result, Some(&old))?;
        // A write that changes nothing is not a change: no new resourceVersion, no event.
        if without_volatile(&result) == without_volatile(&old) || dry_run {
            return Ok(if dry_run { result } else { (*old).clone() });
        }
        let changes = self.inner.changes.clone();
        let stored = state.commit(&changes, kind, key, ChangeType::Modified, Some(old), result);
        Ok((*stored).clone())
    }

    /// DELETE of one object, with optional uid / resourceVersion preconditions. Deleting a
    /// Namespace deletes every object in it first.
    pub(crate) fn delete_object(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        uid: Option<&str>,
        resource_version: Option<&str>,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let key = store_key(kind, namespace, name);
        let mut state = self.inner.state.lock();
        let old = state.lookup(kind, &key).ok_or_else(|| ApiError::not_found(kind, name))?;
        if let Some(uid) = uid.filter(|u| !u.is_empty()) {
            let actual = meta_str(&old, "uid").unwrap_or("");
            if uid != actual {
                return Err(ApiError::conflict(
                    kind,
                    name,
                    &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"),
                ));
            }
        }
        if let Some(rv) = resource_version.filter(|r| !r.is_empty()) {
            let actual = meta_str(&old, "resourceVersion").unwrap_or("");
            if rv != actual {
                return Err(ApiError::conflict(
                    kind,
                    name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {actual}"
                    ),
                ));
            }
        }
        if dry_run {
            return Ok((*old).clone());
        }
        let changes = self.inner.changes.clone();
        if kind == Kind::Namespace {
            let doomed: Vec<(Kind, Key, Arc<Value>)> = state
                .objects
                .iter()
                .filter(|(k, _)| k.namespaced())
                .flat_map(|(k, objects)| {
                    objects.iter().filter(|((ns, _), _)| ns == name).map(|(key, v)| (*k, key.clone(), v.clone()))
                })
                .collect();
            for (k, key, object) in doomed {
                state.commit(&changes, k, key, ChangeType::Deleted, Some(object.clone()), (*object).clone());
            }
        }
        let deleted = state.commit(&changes, kind, key, ChangeType::Deleted, Some(old.clone()), (*old).clone());
        Ok((*deleted).clone())
    }

    /// `POST pods/{name}/binding`: sets `spec.nodeName` once.
    /// TokenRequest: issues a token for service account `namespace/name` as the API server
    /// does (`spec.audiences`, `spec.expirationSeconds` ≥ 600, `spec.boundObjectRef` to a Pod,
    /// Node or Secret that must exist, with the UID if one is given) and answers the
    /// TokenRequest with `status.token`. The token is valid for [`Store::review_token`] until it
    /// expires or the service account or bound object is deleted or replaced.
    pub fn request_token(&self, namespace: &str, name: &str, request: &Value) -> Result<Value, ApiError> {
        let spec = tokens::parse_request(name, request)?;
        let account = self
            .get(Kind::ServiceAccount, Some(namespace), name)
            .ok_or_else(|| ApiError::not_found(Kind::ServiceAccount, name))?;
        let uid_of = |object: &Value| object.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("").to_owned();
        let bound = match &spec.bound {
            None => None,
            Some((kind, object_name, want_uid)) => {
                let object_namespace = kind.namespaced().then_some(namespace);
                let object = self
                    .get(*kind, object_namespace, object_name)
                    .ok_or_else(|| ApiError::not_found(*kind, object_name))?;
                let uid = uid_of(&object);
                if let Some(want) = want_uid
                    && *want != uid
                {
                    return Err(ApiError::conflict(
                        *kind,
                        object_name,
                        &format!(
                            "the UID in the bound object reference ({want}) does not match the UID in record ({uid}); the object might have been deleted and then recreated"
                        ),
                    ));
                }
                let node = match kind {
                    Kind::Pod => object
                        .pointer("/spec/nodeName")
                        .and_then(Value::as_str)
                        .filter(|n| !n.is_empty())
                        .and_then(|n| self.get(Kind::Node, None, n).map(|node| (n.to_owned(), uid_of(&node)))),
                    _ => None,
                };
                Some(tokens::BoundObject { kind: *kind, name: object_name.clone(), uid, node })
            }
        };
        let (token, id) = tokens::new_token();
        let expires = std::time::SystemTime::now() + spec.expiration;
        let issued = tokens::IssuedToken {
            id,
            namespace: namespace.to_owned(),
            service_account: name.to_owned(),
            service_account_uid: uid_of(&account),
            audiences: spec.audiences.clone(),
            expires,
            bound,
        };
        self.inner.tokens.lock().insert(token.clone(), issued);
        Ok(tokens::request_response(namespace, name, &spec, &token, expires))
    }

    /// TokenReview: whether `review.spec.token` is a valid token for one of
    /// `review.spec.audiences` (the default audience when none), answered as the API server
    /// does (`status.authenticated`, `status.user` with the bound objects in `extra`,
    /// `status.audiences`, or `status.error`).
    pub fn review_token(&self, review: &Value) -> Result<Value, ApiError> {
        let Some(token) = review.pointer("/spec/token").and_then(Value::as_str).filter(|t| !t.is_empty()) else {
            return Err(ApiError::new(
                422,
                "Invalid",
                "TokenReview.authentication.k8s.io \"\" is invalid: spec.token: Required value",
            ));
        };
        match self.check_token(token, &tokens::review_audiences(review)) {
            Ok((issued, matched)) => Ok(tokens::authenticated(review, &issued, matched)),
            Err(error) => Ok(tokens::unauthenticated(review, &error)),
        }
    }

    /// Checks a bearer token as the API server's token authenticator does: issued here,
    /// not expired, its ServiceAccount and bound object still the ones it was issued for,
    /// and meant for one of `audiences`. Returns the token and the audiences it matched,
    /// or why it does not authenticate.
    pub(crate) fn check_token(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<(tokens::IssuedToken, Vec<String>), String> {
        let Some(issued) = self.inner.tokens.lock().get(token).cloned() else {
            return Err("invalid bearer token".to_owned());
        };
        if std::time::SystemTime::now() >= issued.expires {
            return Err("invalid bearer token, token has expired".to_owned());
        }
        let uid_of = |object: Option<Value>| {
            object.and_then(|o| o.pointer("/metadata/uid").and_then(Value::as_str).map(str::to_owned))
        };
        if uid_of(self.get(Kind::ServiceAccount, Some(&issued.namespace), &issued.service_account)).as_deref()
            != Some(issued.service_account_uid.as_str())
        {
            return Err(format!(
                "invalid bearer token, service account {}/{} has been deleted",
                issued.namespace, issued.service_account
            ));
        }
        if let Some(bound) = &issued.bound {
            let namespace = bound.kind.namespaced().then_some(issued.namespace.as_str());
            if uid_of(self.get(bound.kind, namespace, &bound.name)).as_deref() != Some(bound.uid.as_str()) {
                return Err(format!(
                    "invalid bearer token, {} {} has been deleted or recreated",
                    bound.kind.singular(),
                    bound.name
                ));
            }
        }
        let matched: Vec<String> = audiences.iter().filter(|a| issued.audiences.contains(a)).cloned().collect();
        if matched.is_empty() {
            return Err(format!(
                "invalid bearer token, token audiences {:?} is invalid for the target audiences {audiences:?}",
                issued.audiences
            ));
        }
        Ok((issued, matched))
    }

    /// Makes every issued token of service account `namespace/name` expire now (tests of
    /// expiry, which the API server never issues shorter than 10 minutes).
    pub fn expire_tokens(&self, namespace: &str, name: &str) {
        let now = std::time::SystemTime::now();
        for issued in self.inner.tokens.lock().values_mut() {
            if issued.namespace == namespace && issued.service_account == name {
                issued.expires = now;
            }
        }
    }

    pub(crate) fn bind_pod(&self, namespace: Option<&str>, name: &str, node: &str) -> Result<(), ApiError> {
        let key = store_key(Kind::Pod, namespace, name);
        let mut state = self.inner.state.lock();
        let old = state.lookup(Kind::Pod, &key).ok_or_else(|| ApiError::not_found(Kind::Pod, name))?;
        if let Some(current) = old.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty()) {
            return Err(ApiError::conflict(
                Kind::Pod,
                name,
                &format!("pod {name} is already assigned to node {current:?}"),
            ));
        }
        let mut new = (*old).clone();
        if !new.get("spec").is_some_and(Value::is_object) {
            new["spec"] = json!({});
        }
        new["spec"]["nodeName"] = Value::String(node.to_owned());
        self.finish_update(&mut state, Kind::Pod, key, old, new, WriteMode::Main, false)?;
        Ok(())
    }

    /// LIST with selectors, resourceVersion semantics and pagination.
    pub(crate) fn list_page(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        request: &ListRequest,
    ) -> Result<ListPage, ApiError> {
        let state = self.inner.state.lock();
        let (snapshot_rv, after) = match &request.continue_token {
            Some(token) => {
                let invalid = || ApiError::bad_request(format!("invalid continue token {token:?}"));
                let decoded = hex_decode(token).ok_or_else(invalid)?;
                let mut parts = decoded.splitn(3, '/');
                let rv: u64 = parts.next().and_then(|r| r.parse().ok()).ok_or_else(invalid)?;
                let ns = parts.next().ok_or_else(invalid)?.to_owned();
                let name = parts.next().ok_or_else(invalid)?.to_owned();
                if rv < state.floor {
                    return Err(ApiError::expired(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                    ));
                }
                (rv, Some((ns, name)))
            }
            None => {
                let requested = request.resource_version.as_deref().filter(|r| !r.is_empty());
                match (requested, request.version_match.as_deref().filter(|m| !m.is_empty())) {
                    (None, Some(_)) => {
                        return Err(ApiError::bad_request(
                            "resourceVersionMatch is forbidden unless resourceVersion is provided",
                        ));
                    }
                    (None, None) => (state.rv, None),
                    (Some(raw), Some("Exact")) => {
                        let rv = parse_rv(raw)?;
                        if rv > state.rv {
                            return Err(too_large(rv, state.rv));
                        }
                        if rv < state.floor {
                            return Err(state.too_old(rv));
                        }
                        (rv, None)
                    }
                    (Some(raw), None | Some("NotOlderThan")) => {
                        let rv = parse_rv(raw)?;
                        if rv > state.rv {
                            return Err(too_large(rv, state.rv));
                        }
                        (state.rv, None)
                    }
                    (Some(_), Some(other)) => {
                        return Err(ApiError::bad_request(format!(
                            "invalid resourceVersionMatch {other:?}: supported values: \"Exact\", \"NotOlderThan\""
                        )));
                    }
                }
            }
        };
        let objects = if snapshot_rv == state.rv {
            state.kind_map(kind).cloned().unwrap_or_default()
        } else {
            state.snapshot_at(kind, snapshot_rv)
        };
        drop(state);
        let mut matching = objects.into_iter().filter(|((ns, name), object)| {
            namespace.is_none_or(|n| !kind.namespaced() || n == ns)
                && after.as_ref().is_none_or(|(after_ns, after_name)| (ns, name) > (after_ns, after_name))
                && request.label.matches(object)
                && request.field.matches(object)
        });
        let limit = request.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let items: Vec<Arc<Value>> = matching.by_ref().take(limit).map(|(_, v)| v).collect();
        let remaining = matching.count();
        let continue_token = if remaining > 0 {
            items.last().map(|last| {
                let (ns, name) = key_of(kind, last);
                hex_encode(&format!("{snapshot_rv}/{ns}/{name}"))
            })
        } else {
            None
        };
        Ok(ListPage {
            items,
            resource_version: snapshot_rv,
            remaining: (remaining > 0).then_some(remaining),
            continue_token,
        })
    }

    /// Starts a watch: what to send first, and the live receiver (subscribed under the same
    /// lock, so no change is missed or sent twice).
    pub(crate) fn watch_start(
        &self,
        kind: Kind,
        resource_version: Option<&str>,
        send_initial_events: bool,
    ) -> Result<WatchStart, ApiError> {
        let state = self.inner.state.lock();
        let receiver = self.inner.changes.subscribe();
        let current = || state.kind_map(kind).map(|m| m.values().cloned().collect()).unwrap_or_default();
        match resource_version.filter(|r| !r.is_empty()) {
            _ if send_initial_events => {
                if let Some(raw) = resource_version.filter(|r| !r.is_empty() && *r != "0") {
                    let rv = parse_rv(raw)?;
                    if rv > state.rv {
                        return Err(too_large(rv, state.rv));
                    }
                }
                Ok(WatchStart { initial: current(), replay: Vec::new(), receiver, progress: state.rv })
            }
            None | Some("0") => Ok(WatchStart { initial: current(), replay: Vec::new(), receiver, progress: state.rv }),
            Some(raw) => {
                let rv = parse_rv(raw)?;
                if rv < state.floor {
                    return Err(state.too_old(rv));
                }
                if rv > state.rv {
                    return Err(too_large(rv, state.rv));
                }
                let replay = state.history.iter().filter(|c| c.rv > rv && c.kind == kind).cloned().collect();
                Ok(WatchStart { initial: Vec::new(), replay, receiver, progress: state.rv })
            }
        }
    }
}

fn too_large(requested: u64, current: u64) -> ApiError {
    ApiError::new(504, "Timeout", format!("Too large resource version: {requested}, current: {current}"))
}

fn store_key(kind: Kind, namespace: Option<&str>, name: &str) -> Key {
    let namespace = if kind.namespaced() { namespace.filter(|n| !n.is_empty()).unwrap_or("default") } else { "" };
    (namespace.to_owned(), name.to_owned())
}

fn typed_kind<K: kube::Resource<DynamicType = ()>>() -> Result<Kind, ApiError> {
    Kind::of::<K>().ok_or_else(|| {
        ApiError::new(404, "NotFound", format!("the fake API server does not serve {}", K::api_version(&())))
    })
}

/// `apiVersion` and `kind` must match the endpoint when given, and are filled in otherwise.
fn check_type_meta(kind: Kind, object: &mut Value) -> Result<(), ApiError> {
    let Value::Object(map) = object else {
        return Err(ApiError::bad_request(format!("the request body for {kind} must be a JSON object")));
    };
    for (field, want) in [("apiVersion", kind.api_version()), ("kind", kind.kind_name())] {
        match map.get(field) {
            None | Some(Value::Null) => {
                map.insert(field.into(), Value::String(want.into()));
            }
            Some(Value::String(got)) if got == want => {}
            Some(got) => {
                return Err(ApiError::bad_request(format!(
                    "the {field} of the provided object ({got}) does not match the expected {field} ({want})"
                )));
            }
        }
    }
    if map.get("metadata").is_some_and(|m| !m.is_object() && !m.is_null()) {
        return Err(ApiError::bad_request("metadata must be an object"));
    }
    Ok(())
}

/// A non-empty `metadata.resourceVersion` / `metadata.uid` in the written object must match
/// the stored one (optimistic concurrency), else 409 Conflict.
fn check_preconditions(kind: Kind, name: &str, old: &Value, new: &Value) -> Result<(), ApiError> {
    if let Some(rv) = meta_str(new, "resourceVersion")
        && Some(rv) != meta_str(old, "resourceVersion")
    {
        return Err(ApiError::conflict(
            kind,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ));
    }
    if let Some(uid) = meta_str(new, "uid")
        && Some(uid) != meta_str(old, "uid")
    {
        return Err(ApiError::conflict(
            kind,
            name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                meta_str(old, "uid").unwrap_or("")
            ),
        ));
    }
    Ok(())
}

/// Sets the value at a JSON pointer, creating the objects on the way.
fn set_pointer(root: &mut Value, pointer: &str, value: Value) {
    if !root.is_object() {
        return;
    }
    let mut current = root;
    let parts: Vec<&str> = pointer.split('/').skip(1).collect();
    let Some((last, parents)) = parts.split_last() else { return };
    for part in parents {
        if !current.get(*part).is_some_and(Value::is_object) {
            current[*part] = json!({});
        }
        current = &mut current[*part];
    }
    current[*last] = value;
}

/// Records (or refreshes) the apply manager's `metadata.managedFields` entry. Field ownership
/// itself (`fieldsV1`) is not tracked.
fn record_manager(object: &mut Value, kind: Kind, manager: &str) {
    let entry = json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": kind.api_version(),
        "time": meta::now_rfc3339(),
        "fieldsType": "FieldsV1",
        "fieldsV1": {},
    });
    let meta = metadata_mut(object);
    let mut entries: Vec<Value> = meta.get("managedFields").and_then(Value::as_array).cloned().unwrap_or_default();
    match entries.iter_mut().find(|e| {
        e.get("manager").and_then(Value::as_str) == Some(manager)
            && e.get("operation").and_then(Value::as_str) == Some("Apply")
    }) {
        Some(existing) => *existing = entry,
        None => entries.push(entry),
    }
    meta.insert("managedFields".into(), Value::Array(entries));
}
