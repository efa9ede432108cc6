//! Server-side printing: the `meta.k8s.io` `Table` a client gets when it asks for
//! `Accept: application/json;as=Table;v=v1;g=meta.k8s.io` (what `kubectl get` sends). Columns
//! and cells follow the API server's printers (`k8s.io/kubernetes/pkg/printers/internalversion`)
//! for the kinds served: a pod's READY is ready/total containers and its STATUS the reason its
//! phase, conditions and container states give; AGE is `HumanDuration`; absent values print
//! `<none>`. The server always fills every column, `-o wide` ones (priority 1) included; the
//! client chooses which to show.
//!
//! Printers read the stored JSON, not typed objects, so that an object a test wrote with odd
//! fields still prints instead of failing the whole list.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use serde_json::{Map, Value, json};

use crate::resource::Kind;

/// One column of a printer.
pub(crate) struct Column {
    pub(crate) name: &'static str,
    /// `string`, `integer`, `date`, ...
    pub(crate) type_: &'static str,
    /// `name` for the column holding the object's name.
    pub(crate) format: &'static str,
    /// 0: always shown; 1: shown with `-o wide`.
    pub(crate) priority: u8,
    pub(crate) description: &'static str,
}

/// One printed row: the cells in column order and the row's conditions (a completed pod).
pub(crate) struct Row {
    pub(crate) cells: Vec<Value>,
    pub(crate) conditions: Option<Value>,
}

impl Row {
    fn plain(cells: Vec<Value>) -> Row {
        Row { cells, conditions: None }
    }
}

/// A kind's printer: its columns and how one object becomes a row at `now`.
pub(crate) struct Printer {
    pub(crate) columns: &'static [Column],
    pub(crate) row: fn(&Value, Timestamp) -> Row,
}

const NAME_DOC: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const AGE_DOC: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.";

const fn col(name: &'static str, priority: u8, description: &'static str) -> Column {
    Column { name, type_: "string", format: "", priority, description }
}

const NAME: Column = Column { name: "Name", type_: "string", format: "name", priority: 0, description: NAME_DOC };
const AGE: Column = col("Age", 0, AGE_DOC);

/// NAME and AGE, for kinds without a printer of their own.
pub(crate) static DEFAULT: Printer = Printer { columns: &[NAME, AGE], row: default_row };

pub(crate) static POD: Printer = Printer {
    columns: &[
        NAME,
        col("Ready", 0, "The aggregate readiness state of this pod for accepting traffic."),
        col("Status", 0, "The aggregate status of the containers in this pod."),
        col(
            "Restarts",
            0,
            "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
        ),
        AGE,
        col(
            "IP",
            1,
            "podIP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.",
        ),
        col("Node", 1, "NodeName indicates in which node this pod is scheduled."),
        col("Nominated Node", 1, "nominatedNodeName is set only when this pod preempts other pods on the node."),
        col("Readiness Gates", 1, "If specified, all readiness gates will be evaluated for pod readiness."),
    ],
    row: pod_row,
};

pub(crate) static NODE: Printer = Printer {
    columns: &[
        NAME,
        col("Status", 0, "The status of the node"),
        col("Roles", 0, "The roles of the node"),
        AGE,
        col("Version", 0, "Kubelet Version reported by the node."),
        col("Internal-IP", 1, "List of addresses reachable to the node."),
        col("External-IP", 1, "List of addresses reachable to the node."),
        col("OS-Image", 1, "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy))."),
        col("Kernel-Version", 1, "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64)."),
        col(
            "Container-Runtime",
            1,
            "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).",
        ),
    ],
    row: node_row,
};

pub(crate) static SERVICE: Printer = Printer {
    columns: &[
        NAME,
        col("Type", 0, "type determines how the Service is exposed."),
        col("Cluster-IP", 0, "clusterIP is the IP address of the service and is usually assigned randomly."),
        col(
            "External-IP",
            0,
            "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.",
        ),
        col("Port(s)", 0, "The list of ports that are exposed by this service."),
        AGE,
        col("Selector", 1, "Route service traffic to pods with label keys and values matching this selector."),
    ],
    row: service_row,
};

pub(crate) static NAMESPACE: Printer =
    Printer { columns: &[NAME, col("Status", 0, "The status of the namespace"), AGE], row: namespace_row };

pub(crate) static DEPLOYMENT: Printer = Printer {
    columns: &[
        NAME,
        col("Ready", 0, "Number of the pod with ready state"),
        col(
            "Up-to-date",
            0,
            "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
        ),
        col(
            "Available",
            0,
            "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
        ),
        AGE,
        col("Containers", 1, "Names of each container in the template."),
        col("Images", 1, "Images referenced by each container in the template."),
        col(
            "Selector",
            1,
            "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.",
        ),
    ],
    row: deployment_row,
};

pub(crate) static JOB: Printer = Printer {
    columns: &[
        NAME,
        col("Status", 0, "Status of the job."),
        col("Completions", 0, "The completion status of the job."),
        col("Duration", 0, "Time required to complete the job."),
        AGE,
        col("Containers", 1, "Names of each container in the template."),
        col("Images", 1, "Images referenced by each container in the template."),
        col("Selector", 1, "Label selector for pods."),
    ],
    row: job_row,
};

pub(crate) static ENDPOINT_SLICE: Printer = Printer {
    columns: &[
        NAME,
        col("AddressType", 0, "addressType specifies the type of address carried by this EndpointSlice."),
        col("Ports", 0, "ports specifies the list of network ports exposed by each endpoint in this slice."),
        col("Endpoints", 0, "endpoints is a list of unique endpoints in this slice."),
        AGE,
    ],
    row: endpoint_slice_row,
};

pub(crate) static NETWORK_POLICY: Printer = Printer {
    columns: &[NAME, col("Pod-Selector", 0, "Selects the pods to which this NetworkPolicy object applies."), AGE],
    row: network_policy_row,
};

pub(crate) static LEASE: Printer = Printer {
    columns: &[NAME, col("Holder", 0, "holderIdentity contains the identity of the holder of a current lease."), AGE],
    row: lease_row,
};

const EVENT_COLUMNS: &[Column] = &[
    col("Last Seen", 0, "The time at which the most recent occurrence of this event was recorded."),
    col("Type", 0, "Type of this event (Normal, Warning), new types could be added in the future"),
    col(
        "Reason",
        0,
        "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
    ),
    col("Object", 0, "The object that this event is about."),
    col(
        "Subobject",
        1,
        "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement.",
    ),
    col("Source", 1, "The component reporting this event. Should be a short machine understandable string."),
    col("Message", 0, "A human-readable description of the status of this operation."),
    col("First Seen", 1, "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)"),
    col("Count", 1, "The number of times this event has occurred."),
    Column { name: "Name", type_: "string", format: "name", priority: 1, description: NAME_DOC },
];

pub(crate) static EVENT: Printer = Printer { columns: EVENT_COLUMNS, row: event_row };
pub(crate) static EVENTS_V1_EVENT: Printer = Printer { columns: EVENT_COLUMNS, row: events_v1_row };

// ---- reading the stored JSON ----

fn text<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn int(object: &Value, pointer: &str) -> i64 {
    object.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn list<'a>(object: &'a Value, pointer: &str) -> &'a [Value] {
    object.pointer(pointer).and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

fn or_none(value: &str) -> String {
    if value.is_empty() { "<none>".into() } else { value.to_owned() }
}

fn name(object: &Value) -> Value {
    json!(text(object, "/metadata/name"))
}

/// The zero `metav1.Time` (what an unset timestamp decodes to in Go).
const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

fn parse_time(raw: &str) -> Option<Timestamp> {
    if raw.is_empty() || raw == GO_ZERO_TIME {
        return None;
    }
    raw.parse().ok()
}

/// `duration.HumanDuration` (`k8s.io/apimachinery/pkg/util/duration`), from milliseconds.
pub(crate) fn human_duration(millis: i64) -> String {
    let seconds = millis / 1000;
    if seconds < -1 {
        return "<invalid>".into();
    } else if seconds < 0 {
        return "0s".into();
    } else if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = millis / 60_000;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 { format!("{minutes}m") } else { format!("{minutes}m{s}s") };
    } else if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = millis / 3_600_000;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 { format!("{hours}h") } else { format!("{hours}h{m}m") };
    } else if hours < 48 {
        return format!("{hours}h");
    } else if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 { format!("{}d", hours / 24) } else { format!("{}d{h}h", hours / 24) };
    } else if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    } else if hours < 24 * 365 * 8 {
        let days = (hours / 24) % 365;
        return if days == 0 { format!("{}y", hours / 24 / 365) } else { format!("{}y{days}d", hours / 24 / 365) };
    }
    format!("{}y", hours / 24 / 365)
}

/// `translateTimestampSince`: the age of a timestamp, `<unknown>` when unset.
fn since(raw: &str, now: Timestamp) -> String {
    match parse_time(raw) {
        Some(then) => {
            let millis = now.as_millisecond().saturating_sub(then.as_millisecond());
            human_duration(millis)
        }
        None => "<unknown>".into(),
    }
}

fn age(object: &Value, now: Timestamp) -> Value {
    json!(since(text(object, "/metadata/creationTimestamp"), now))
}

/// `labels.FormatLabels`: `k=v,k2=v2` sorted by key, `<none>` when empty.
fn format_labels(map: Option<&Value>) -> String {
    let labels: BTreeMap<&str, &str> = map
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or("")))
        .collect();
    let joined: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    or_none(&joined.join(","))
}

/// `metav1.LabelSelectorAsSelector(..).String()`: requirements sorted by key, `k=v`,
/// `k in (a,b)`, `k notin (a)`, `k`, `!k`; `Err` for a selector the API server would reject.
pub(crate) fn selector_string(selector: Option<&Value>) -> Result<String, ()> {
    let Some(selector) = selector.filter(|s| !s.is_null()) else { return Ok(String::new()) };
    let mut requirements: Vec<(String, String)> = Vec::new();
    for (key, value) in selector.get("matchLabels").and_then(Value::as_object).into_iter().flatten() {
        let value = value.as_str().ok_or(())?;
        requirements.push((key.clone(), format!("{key}={value}")));
    }
    for expression in selector.get("matchExpressions").and_then(Value::as_array).into_iter().flatten() {
        let key = expression.get("key").and_then(Value::as_str).filter(|k| !k.is_empty()).ok_or(())?;
        let mut values: Vec<&str> = Vec::new();
        for value in expression.get("values").and_then(Value::as_array).into_iter().flatten() {
            values.push(value.as_str().ok_or(())?);
        }
        values.sort_unstable();
        let text = match expression.get("operator").and_then(Value::as_str) {
            Some("In") if !values.is_empty() => format!("{key} in ({})", values.join(",")),
            Some("NotIn") if !values.is_empty() => format!("{key} notin ({})", values.join(",")),
            Some("Exists") if values.is_empty() => key.to_owned(),
            Some("DoesNotExist") if values.is_empty() => format!("!{key}"),
            _ => return Err(()),
        };
        requirements.push((key.to_owned(), text));
    }
    requirements.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(requirements.into_iter().map(|(_, text)| text).collect::<Vec<_>>().join(","))
}

/// `metav1.FormatLabelSelector`: `<none>` when empty, `<error>` when invalid.
fn format_label_selector(selector: Option<&Value>) -> String {
    match selector_string(selector) {
        Ok(text) => or_none(&text),
        Err(()) => "<error>".into(),
    }
}

fn condition_true(conditions: &[Value], kind: &str) -> bool {
    conditions.iter().any(|c| {
        c.get("type").and_then(Value::as_str) == Some(kind) && c.get("status").and_then(Value::as_str) == Some("True")
    })
}

// ---- rows ----

fn default_row(object: &Value, now: Timestamp) -> Row {
    Row::plain(vec![name(object), age(object, now)])
}

fn restartable_init(container: Option<&Value>) -> bool {
    container.and_then(|c| c.get("restartPolicy")).and_then(Value::as_str) == Some("Always")
}

/// `printPod`.
fn pod_row(pod: &Value, now: Timestamp) -> Row {
    let mut restarts = 0i64;
    let mut sidecar_restarts = 0i64;
    let mut total = list(pod, "/spec/containers").len();
    let mut ready = 0usize;
    let mut last_restart: Option<Timestamp> = None;
    let mut last_sidecar_restart: Option<Timestamp> = None;
    let phase = text(pod, "/status/phase");
    let mut reason = match text(pod, "/status/reason") {
        "" => phase.to_owned(),
        given => given.to_owned(),
    };
    let conditions = list(pod, "/status/conditions");
    if conditions.iter().any(|c| {
        c.get("type").and_then(Value::as_str) == Some("PodScheduled")
            && c.get("reason").and_then(Value::as_str) == Some("SchedulingGated")
    }) {
        reason = "SchedulingGated".into();
    }
    let row_conditions = match phase {
        "Succeeded" => Some(
            json!([{"type": "Completed", "status": "True", "reason": "Succeeded", "message": "The pod has completed successfully."}]),
        ),
        "Failed" => {
            Some(json!([{"type": "Completed", "status": "True", "reason": "Failed", "message": "The pod failed."}]))
        }
        _ => None,
    };
    let init_specs: BTreeMap<&str, &Value> = list(pod, "/spec/initContainers")
        .iter()
        .map(|c| (c.get("name").and_then(Value::as_str).unwrap_or(""), c))
        .collect();
    total += init_specs.values().filter(|c| restartable_init(Some(c))).count();
    let later = |current: Option<Timestamp>, status: &Value| {
        let finished = status.pointer("/lastState/terminated/finishedAt").and_then(Value::as_str).and_then(parse_time);
        match (current, finished) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    };
    let init_statuses = list(pod, "/status/initContainerStatuses");
    let mut initializing = false;
    for (index, status) in init_statuses.iter().enumerate() {
        let count = status.get("restartCount").and_then(Value::as_i64).unwrap_or(0);
        restarts += count;
        last_restart = later(last_restart, status);
        let spec = init_specs.get(status.get("name").and_then(Value::as_str).unwrap_or("")).copied();
        if restartable_init(spec) {
            sidecar_restarts += count;
            last_sidecar_restart = later(last_sidecar_restart, status);
        }
        let terminated = status.pointer("/state/terminated");
        let exit_code = terminated.and_then(|t| t.get("exitCode")).and_then(Value::as_i64).unwrap_or(0);
        let waiting_reason = text(status, "/state/waiting/reason");
        if terminated.is_some() && exit_code == 0 {
            continue;
        }
        if restartable_init(spec) && status.get("started").and_then(Value::as_bool) == Some(true) {
            if status.get("ready").and_then(Value::as_bool) == Some(true) {
                ready += 1;
            }
            continue;
        }
        if let Some(terminated) = terminated {
            let why = terminated.get("reason").and_then(Value::as_str).unwrap_or("");
            let signal = terminated.get("signal").and_then(Value::as_i64).unwrap_or(0);
            reason = if !why.is_empty() {
                format!("Init:{why}")
            } else if signal != 0 {
                format!("Init:Signal:{signal}")
            } else {
                format!("Init:ExitCode:{exit_code}")
            };
        } else if !waiting_reason.is_empty() && waiting_reason != "PodInitializing" {
            reason = format!("Init:{waiting_reason}");
        } else {
            reason = format!("Init:{index}/{}", init_specs.len());
        }
        initializing = true;
        break;
    }
    if !initializing || condition_true(conditions, "Initialized") {
        restarts = sidecar_restarts;
        last_restart = last_sidecar_restart;
        let mut has_running = false;
        for status in list(pod, "/status/containerStatuses").iter().rev() {
            restarts += status.get("restartCount").and_then(Value::as_i64).unwrap_or(0);
            last_restart = later(last_restart, status);
            let waiting = text(status, "/state/waiting/reason");
            let terminated = status.pointer("/state/terminated");
            let terminated_reason = terminated.and_then(|t| t.get("reason")).and_then(Value::as_str).unwrap_or("");
            if !waiting.is_empty() {
                reason = waiting.to_owned();
            } else if !terminated_reason.is_empty() {
                reason = terminated_reason.to_owned();
            } else if let Some(terminated) = terminated {
                let signal = terminated.get("signal").and_then(Value::as_i64).unwrap_or(0);
                let code = terminated.get("exitCode").and_then(Value::as_i64).unwrap_or(0);
                reason = if signal != 0 { format!("Signal:{signal}") } else { format!("ExitCode:{code}") };
            } else if status.get("ready").and_then(Value::as_bool) == Some(true)
                && status.pointer("/state/running").is_some()
            {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            reason = if condition_true(conditions, "Ready") { "Running".into() } else { "NotReady".into() };
        }
    }
    let deleting = pod.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null());
    if deleting && text(pod, "/status/reason") == "NodeLost" {
        reason = "Unknown".into();
    } else if deleting && !matches!(phase, "Succeeded" | "Failed") {
        reason = "Terminating".into();
    }
    let restarts_text = match last_restart {
        Some(when) if restarts != 0 => {
            format!("{restarts} ({} ago)", human_duration(now.as_millisecond().saturating_sub(when.as_millisecond())))
        }
        _ => restarts.to_string(),
    };
    let ip = list(pod, "/status/podIPs").first().and_then(|ip| ip.get("ip")).and_then(Value::as_str).unwrap_or("");
    let gates = list(pod, "/spec/readinessGates");
    let readiness_gates = if gates.is_empty() {
        "<none>".to_owned()
    } else {
        let passed = gates
            .iter()
            .filter(|gate| {
                let wanted = gate.get("conditionType").and_then(Value::as_str).unwrap_or("");
                conditions
                    .iter()
                    .find(|c| c.get("type").and_then(Value::as_str) == Some(wanted))
                    .is_some_and(|c| c.get("status").and_then(Value::as_str) == Some("True"))
            })
            .count();
        format!("{passed}/{}", gates.len())
    };
    Row {
        cells: vec![
            name(pod),
            json!(format!("{ready}/{total}")),
            json!(reason),
            json!(restarts_text),
            age(pod, now),
            json!(or_none(ip)),
            json!(or_none(text(pod, "/spec/nodeName"))),
            json!(or_none(text(pod, "/status/nominatedNodeName"))),
            json!(readiness_gates),
        ],
        conditions: row_conditions,
    }
}

/// `printNode`.
fn node_row(node: &Value, now: Timestamp) -> Row {
    let ready =
        list(node, "/status/conditions").iter().rev().find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"));
    let mut status = vec![match ready {
        Some(c) if c.get("status").and_then(Value::as_str) == Some("True") => "Ready".to_owned(),
        Some(_) => "NotReady".to_owned(),
        None => "Unknown".to_owned(),
    }];
    if node.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push("SchedulingDisabled".into());
    }
    let mut roles: Vec<&str> = node
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(key, value)| match key.strip_prefix("node-role.kubernetes.io/") {
            Some(role) if !role.is_empty() => Some(role),
            Some(_) => None,
            None if key == "kubernetes.io/role" => value.as_str().filter(|v| !v.is_empty()),
            None => None,
        })
        .collect();
    roles.sort_unstable();
    roles.dedup();
    let address = |kind: &str| {
        list(node, "/status/addresses")
            .iter()
            .find(|a| a.get("type").and_then(Value::as_str) == Some(kind))
            .and_then(|a| a.get("address").and_then(Value::as_str))
            .unwrap_or("<none>")
            .to_owned()
    };
    let info = |field: &str| match text(node, &format!("/status/nodeInfo/{field}")) {
        "" => "<unknown>".to_owned(),
        value => value.to_owned(),
    };
    Row::plain(vec![
        name(node),
        json!(status.join(",")),
        json!(or_none(&roles.join(","))),
        age(node, now),
        json!(text(node, "/status/nodeInfo/kubeletVersion")),
        json!(address("InternalIP")),
        json!(address("ExternalIP")),
        json!(info("osImage")),
        json!(info("kernelVersion")),
        json!(info("containerRuntimeVersion")),
    ])
}

/// `getServiceExternalIP` (wide: the server prints for `-o wide`, unclipped).
fn service_external_ip(service: &Value) -> String {
    let external: Vec<&str> = list(service, "/spec/externalIPs").iter().filter_map(Value::as_str).collect();
    match text(service, "/spec/type") {
        "ClusterIP" | "NodePort" | "" => or_none(&external.join(",")),
        "LoadBalancer" => {
            let mut ingress: Vec<&str> = list(service, "/status/loadBalancer/ingress")
                .iter()
                .filter_map(|i| {
                    i.get("ip")
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                        .or_else(|| i.get("hostname").and_then(Value::as_str).filter(|s| !s.is_empty()))
                })
                .collect();
            ingress.sort_unstable();
            ingress.dedup();
            let mut all: Vec<&str> = ingress;
            all.extend(external);
            if all.is_empty() { "<pending>".into() } else { all.join(",") }
        }
        "ExternalName" => text(service, "/spec/externalName").to_owned(),
        _ => "<unknown>".into(),
    }
}

/// `printService`.
fn service_row(service: &Value, now: Timestamp) -> Row {
    let cluster_ip = list(service, "/spec/clusterIPs").first().and_then(Value::as_str).unwrap_or("<none>");
    let ports: Vec<String> = list(service, "/spec/ports")
        .iter()
        .map(|port| {
            let number = port.get("port").and_then(Value::as_i64).unwrap_or(0);
            let protocol = port.get("protocol").and_then(Value::as_str).unwrap_or("");
            match port.get("nodePort").and_then(Value::as_i64).filter(|n| *n > 0) {
                Some(node_port) => format!("{number}:{node_port}/{protocol}"),
                None => format!("{number}/{protocol}"),
            }
        })
        .collect();
    Row::plain(vec![
        name(service),
        json!(text(service, "/spec/type")),
        json!(cluster_ip),
        json!(service_external_ip(service)),
        json!(or_none(&ports.join(","))),
        age(service, now),
        json!(format_labels(service.pointer("/spec/selector"))),
    ])
}

fn namespace_row(namespace: &Value, now: Timestamp) -> Row {
    Row::plain(vec![name(namespace), json!(text(namespace, "/status/phase")), age(namespace, now)])
}

/// `layoutContainerCells`: names and images, comma-separated.
fn container_cells(containers: &[Value]) -> (String, String) {
    let names: Vec<&str> = containers.iter().map(|c| c.get("name").and_then(Value::as_str).unwrap_or("")).collect();
    let images: Vec<&str> = containers.iter().map(|c| c.get("image").and_then(Value::as_str).unwrap_or("")).collect();
    (names.join(","), images.join(","))
}

/// `printDeployment`.
fn deployment_row(deployment: &Value, now: Timestamp) -> Row {
    let (names, images) = container_cells(list(deployment, "/spec/template/spec/containers"));
    let selector = selector_string(deployment.pointer("/spec/selector")).unwrap_or_else(|()| "<invalid>".into());
    Row::plain(vec![
        name(deployment),
        json!(format!("{}/{}", int(deployment, "/status/readyReplicas"), int(deployment, "/spec/replicas"))),
        json!(int(deployment, "/status/updatedReplicas")),
        json!(int(deployment, "/status/availableReplicas")),
        age(deployment, now),
        json!(names),
        json!(images),
        json!(selector),
    ])
}

fn has_true_condition(object: &Value, kind: &str) -> bool {
    list(object, "/status/conditions").iter().any(|c| {
        c.get("type").and_then(Value::as_str) == Some(kind) && c.get("status").and_then(Value::as_str) == Some("True")
    })
}

/// `printJob`.
fn job_row(job: &Value, now: Timestamp) -> Row {
    let succeeded = int(job, "/status/succeeded");
    let completions = match job.pointer("/spec/completions").and_then(Value::as_i64) {
        Some(completions) => format!("{succeeded}/{completions}"),
        None => match int(job, "/spec/parallelism") {
            parallelism if parallelism > 1 => format!("{succeeded}/1 of {parallelism}"),
            _ => format!("{succeeded}/1"),
        },
    };
    let start = parse_time(text(job, "/status/startTime"));
    let duration = match (start, parse_time(text(job, "/status/completionTime"))) {
        (None, _) => String::new(),
        (Some(start), None) => human_duration(now.as_millisecond() - start.as_millisecond()),
        (Some(start), Some(end)) => human_duration(end.as_millisecond() - start.as_millisecond()),
    };
    let status = if has_true_condition(job, "Complete") {
        "Complete"
    } else if has_true_condition(job, "Failed") {
        "Failed"
    } else if job.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null()) {
        "Terminating"
    } else if has_true_condition(job, "Suspended") {
        "Suspended"
    } else if has_true_condition(job, "FailureTarget") {
        "FailureTarget"
    } else if has_true_condition(job, "SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    };
    let (names, images) = container_cells(list(job, "/spec/template/spec/containers"));
    Row::plain(vec![
        name(job),
        json!(status),
        json!(completions),
        json!(duration),
        age(job, now),
        json!(names),
        json!(images),
        json!(format_label_selector(job.pointer("/spec/selector"))),
    ])
}

/// `listWithMoreString`: at most three, then `+ N more...`; `<unset>` when empty.
fn at_most_three(items: Vec<String>) -> String {
    let count = items.len();
    let shown: Vec<String> = items.into_iter().take(3).collect();
    let joined = shown.join(",");
    if count > 3 {
        format!("{joined} + {} more...", count - 3)
    } else if joined.is_empty() {
        "<unset>".into()
    } else {
        joined
    }
}

/// `printEndpointSlice`.
fn endpoint_slice_row(slice: &Value, now: Timestamp) -> Row {
    let ports: Vec<String> = list(slice, "/ports")
        .iter()
        .map(|port| match (port.get("port").and_then(Value::as_i64), port.get("name").and_then(Value::as_str)) {
            (Some(number), _) => number.to_string(),
            (None, Some(name)) => name.to_owned(),
            (None, None) => "*".into(),
        })
        .collect();
    let addresses: Vec<String> = list(slice, "/endpoints")
        .iter()
        .flat_map(|endpoint| list(endpoint, "/addresses").iter().filter_map(Value::as_str).map(str::to_owned))
        .collect();
    Row::plain(vec![
        name(slice),
        json!(text(slice, "/addressType")),
        json!(at_most_three(ports)),
        json!(at_most_three(addresses)),
        age(slice, now),
    ])
}

fn network_policy_row(policy: &Value, now: Timestamp) -> Row {
    // An absent podSelector is an empty one (select all pods).
    let selector = policy.pointer("/spec/podSelector").cloned().unwrap_or_else(|| json!({}));
    Row::plain(vec![name(policy), json!(format_label_selector(Some(&selector))), age(policy, now)])
}

fn lease_row(lease: &Value, now: Timestamp) -> Row {
    Row::plain(vec![name(lease), json!(text(lease, "/spec/holderIdentity")), age(lease, now)])
}

/// The fields `printEvent` reads, from either Event API.
struct EventView<'a> {
    first: &'a str,
    last: &'a str,
    event_time: &'a str,
    count: i64,
    series: Option<(i64, &'a str)>,
    regarding: Option<&'a Value>,
    event_type: &'a str,
    reason: &'a str,
    message: &'a str,
    component: &'a str,
    host: &'a str,
    reporting_controller: &'a str,
    reporting_instance: &'a str,
}

fn event_cells(event: &Value, view: EventView<'_>, now: Timestamp) -> Row {
    let first = match parse_time(view.first) {
        Some(_) => since(view.first, now),
        None => since(view.event_time, now),
    };
    let mut last = match parse_time(view.last) {
        Some(_) => since(view.last, now),
        None => first.clone(),
    };
    let mut count = view.count;
    if let Some((series_count, observed)) = view.series {
        last = since(observed, now);
        count = series_count;
    } else if count == 0 {
        count = 1;
    }
    let kind = view.regarding.and_then(|r| r.get("kind")).and_then(Value::as_str).unwrap_or("").to_lowercase();
    let target = match view.regarding.and_then(|r| r.get("name")).and_then(Value::as_str).filter(|n| !n.is_empty()) {
        Some(name) => format!("{kind}/{name}"),
        None => kind,
    };
    let field_path = view.regarding.and_then(|r| r.get("fieldPath")).and_then(Value::as_str).unwrap_or("");
    let component = if view.component.is_empty() { view.reporting_controller } else { view.component };
    let instance = if view.host.is_empty() { view.reporting_instance } else { view.host };
    let source = if instance.is_empty() { component.to_owned() } else { format!("{component}, {instance}") };
    Row::plain(vec![
        json!(last),
        json!(view.event_type),
        json!(view.reason),
        json!(target),
        json!(field_path),
        json!(source),
        json!(view.message.trim()),
        json!(first),
        json!(count),
        name(event),
    ])
}

/// `printEvent` for core `v1` Events.
fn event_row(event: &Value, now: Timestamp) -> Row {
    let series = event.get("series").filter(|s| s.is_object()).map(|s| {
        (
            s.get("count").and_then(Value::as_i64).unwrap_or(0),
            s.get("lastObservedTime").and_then(Value::as_str).unwrap_or(""),
        )
    });
    let view = EventView {
        first: text(event, "/firstTimestamp"),
        last: text(event, "/lastTimestamp"),
        event_time: text(event, "/eventTime"),
        count: int(event, "/count"),
        series,
        regarding: event.get("involvedObject"),
        event_type: text(event, "/type"),
        reason: text(event, "/reason"),
        message: text(event, "/message"),
        component: text(event, "/source/component"),
        host: text(event, "/source/host"),
        reporting_controller: text(event, "/reportingComponent"),
        reporting_instance: text(event, "/reportingInstance"),
    };
    event_cells(event, view, now)
}

/// `printEvent` for `events.k8s.io/v1` Events, through the API server's conversion
/// (`regarding` → involvedObject, `note` → message, `deprecated*` → the old fields).
fn events_v1_row(event: &Value, now: Timestamp) -> Row {
    let series = event.get("series").filter(|s| s.is_object()).map(|s| {
        (
            s.get("count").and_then(Value::as_i64).unwrap_or(0),
            s.get("lastObservedTime").and_then(Value::as_str).unwrap_or(""),
        )
    });
    let view = EventView {
        first: text(event, "/deprecatedFirstTimestamp"),
        last: text(event, "/deprecatedLastTimestamp"),
        event_time: text(event, "/eventTime"),
        count: int(event, "/deprecatedCount"),
        series,
        regarding: event.get("regarding"),
        event_type: text(event, "/type"),
        reason: text(event, "/reason"),
        message: text(event, "/note"),
        component: text(event, "/deprecatedSource/component"),
        host: text(event, "/deprecatedSource/host"),
        reporting_controller: text(event, "/reportingController"),
        reporting_instance: text(event, "/reportingInstance"),
    };
    event_cells(event, view, now)
}

// ---- tables ----

/// Which `meta.k8s.io` version the client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TableVersion {
    V1,
    V1beta1,
}

impl TableVersion {
    pub(crate) fn api_version(self) -> &'static str {
        match self {
            TableVersion::V1 => "meta.k8s.io/v1",
            TableVersion::V1beta1 => "meta.k8s.io/v1beta1",
        }
    }

    /// The response's content type.
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            TableVersion::V1 => "application/json;as=Table;v=v1;g=meta.k8s.io",
            TableVersion::V1beta1 => "application/json;as=Table;v=v1beta1;g=meta.k8s.io",
        }
    }
}

/// What each row carries of its object (`includeObject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    /// The query parameter (default `Metadata`).
    pub(crate) fn parse(raw: Option<&str>) -> Result<IncludeObject, String> {
        match raw.unwrap_or("") {
            "" | "Metadata" => Ok(IncludeObject::Metadata),
            "None" => Ok(IncludeObject::None),
            "Object" => Ok(IncludeObject::Object),
            other => Err(format!("unrecognized includeObject value: {other:?}")),
        }
    }
}

/// How a table is built.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TableOptions {
    pub(crate) version: TableVersion,
    pub(crate) include: IncludeObject,
    /// Whether `columnDefinitions` are sent (a watch sends them with its first event only).
    pub(crate) headers: bool,
}

fn printer(kind: Kind) -> &'static Printer {
    kind.spec().printer.unwrap_or(&DEFAULT)
}

/// The cells of one object's row at `now` (every column, wide ones included).
pub(crate) fn cells_at(kind: Kind, object: &Value, now: Timestamp) -> Vec<Value> {
    (printer(kind).row)(object, now).cells
}

/// A `Table` of `objects`; `metadata` is the list's (or the object's) metadata.
pub(crate) fn table(kind: Kind, objects: &[&Value], metadata: Map<String, Value>, options: TableOptions) -> Value {
    let now = Timestamp::now();
    let printer = printer(kind);
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            let row = (printer.row)(object, now);
            let embedded = match options.include {
                IncludeObject::None => Value::Null,
                IncludeObject::Object => (*object).clone(),
                IncludeObject::Metadata => json!({
                    "kind": "PartialObjectMetadata",
                    "apiVersion": options.version.api_version(),
                    "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
                }),
            };
            let mut value = json!({"cells": row.cells, "object": embedded});
            if let Some(conditions) = row.conditions {
                value["conditions"] = conditions;
            }
            value
        })
        .collect();
    let columns: Vec<Value> = if options.headers {
        printer
            .columns
            .iter()
            .map(|c| {
                json!({"name": c.name, "type": c.type_, "format": c.format, "description": c.description, "priority": c.priority})
            })
            .collect()
    } else {
        Vec::new()
    };
    json!({
        "kind": "Table",
        "apiVersion": options.version.api_version(),
        "metadata": metadata,
        "columnDefinitions": columns,
        "rows": rows,
    })
}

/// The cells `kubectl get` would show for `object` of `kind` now, every column included:
/// the public face of the printers (the fuzz target and tests use it).
pub fn table_cells(kind: Kind, object: &Value) -> Vec<Value> {
    cells_at(kind, object, Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    const NOW: &str = "2025-06-01T12:00:00Z";

    fn cells(kind: Kind, object: Value) -> Vec<Value> {
        cells_at(kind, &object, at(NOW))
    }

    #[test]
    fn human_duration_matches_apimachinery() {
        for (millis, text) in [
            (-3_000, "<invalid>"),
            (-1_500, "0s"),
            (0, "0s"),
            (119_000, "119s"),
            (120_000, "2m"),
            (125_000, "2m5s"),
            (600_000, "10m"),
            (179 * 60_000, "179m"),
            (3 * 3_600_000, "3h"),
            (3 * 3_600_000 + 60_000, "3h1m"),
            (8 * 3_600_000, "8h"),
            (47 * 3_600_000, "47h"),
            (48 * 3_600_000, "2d"),
            (50 * 3_600_000, "2d2h"),
            (8 * 24 * 3_600_000, "8d"),
            (2 * 365 * 24 * 3_600_000, "2y"),
            ((2 * 365 + 3) * 24 * 3_600_000, "2y3d"),
            (9 * 365 * 24 * 3_600_000, "9y"),
        ] {
            assert_eq!(human_duration(millis), text, "{millis}");
        }
    }

    #[test]
    fn running_pod_prints_like_the_api_server() {
        let pod = json!({
            "metadata": {"name": "web-1", "creationTimestamp": "2025-06-01T11:55:00Z"},
            "spec": {"nodeName": "node2", "containers": [{"name": "a"}, {"name": "b"}]},
            "status": {
                "phase": "Running",
                "podIPs": [{"ip": "10.244.2.5"}], "podIP": "10.244.2.5",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [
                    {"name": "a", "ready": true, "restartCount": 2, "state": {"running": {}},
                     "lastState": {"terminated": {"finishedAt": "2025-06-01T11:58:00Z", "exitCode": 1}}},
                    {"name": "b", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
                ]
            }
        });
        assert_eq!(
            cells(Kind::Pod, pod),
            [
                json!("web-1"),
                json!("1/2"),
                json!("CrashLoopBackOff"),
                json!("2 (2m ago)"),
                json!("5m"),
                json!("10.244.2.5"),
                json!("node2"),
                json!("<none>"),
                json!("<none>")
            ]
        );
    }

    #[test]
    fn pending_and_initializing_and_finished_pods() {
        let pending =
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}, "status": {"phase": "Pending"}});
        let row = cells(Kind::Pod, pending);
        assert_eq!(row[1..4], [json!("0/1"), json!("Pending"), json!("0")]);
        assert_eq!(row[4], "<unknown>");
        assert_eq!(row[5..7], [json!("<none>"), json!("<none>")]);
        let init = json!({
            "metadata": {"name": "i"},
            "spec": {"initContainers": [{"name": "x"}, {"name": "y"}], "containers": [{"name": "c"}],
                     "readinessGates": [{"conditionType": "example.com/gate"}]},
            "status": {"phase": "Pending", "initContainerStatuses": [
                {"name": "x", "state": {"terminated": {"exitCode": 0}}},
                {"name": "y", "state": {"running": {}}}
            ]}
        });
        let row = cells(Kind::Pod, init);
        assert_eq!(row[2], "Init:1/2");
        assert_eq!(row[8], "0/1");
        let done = json!({"metadata": {"name": "d"}, "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": "Succeeded", "containerStatuses": [{"name": "c", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}});
        let printed = (POD.row)(&done, at(NOW));
        assert_eq!(printed.cells[2], "Completed");
        assert_eq!(printed.conditions.unwrap()[0]["reason"], "Succeeded");
    }

    #[test]
    fn jobs_print_status_completions_and_duration() {
        let running = json!({
            "metadata": {"name": "train", "creationTimestamp": "2025-06-01T11:59:00Z"},
            "spec": {"completions": 2, "parallelism": 2, "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "u"}},
                     "template": {"spec": {"containers": [{"name": "rank", "image": "img"}]}}},
            "status": {"startTime": "2025-06-01T11:59:30Z", "succeeded": 1, "active": 1}
        });
        assert_eq!(
            cells(Kind::Job, running),
            ["train", "Running", "1/2", "30s", "60s", "rank", "img", "batch.kubernetes.io/controller-uid=u"]
        );
        let done = json!({
            "metadata": {"name": "d"},
            "spec": {"parallelism": 3},
            "status": {"startTime": "2025-06-01T11:00:00Z", "completionTime": "2025-06-01T11:02:05Z", "succeeded": 1,
                       "conditions": [{"type": "SuccessCriteriaMet", "status": "True"}, {"type": "Complete", "status": "True"}]}
        });
        let row = cells(Kind::Job, done);
        assert_eq!(row[1..4], [json!("Complete"), json!("1/1 of 3"), json!("2m5s")]);
        let failed = json!({"metadata": {"name": "f"}, "spec": {"completions": 1},
            "status": {"conditions": [{"type": "Complete", "status": "False"}, {"type": "Failed", "status": "True"}]}});
        let row = cells(Kind::Job, failed);
        assert_eq!(row[1..4], [json!("Failed"), json!("0/1"), json!("")]);
    }

    #[test]
    fn nodes_services_deployments_slices_policies_events_leases() {
        let node = json!({
            "metadata": {"name": "node1", "creationTimestamp": "2025-05-30T12:00:00Z",
                         "labels": {"node-role.kubernetes.io/control-plane": "", "kubernetes.io/role": "edge"}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "False"}],
                       "addresses": [{"type": "Hostname", "address": "node1"}, {"type": "InternalIP", "address": "172.18.0.11"}],
                       "nodeInfo": {"kubeletVersion": "v1.35.0", "osImage": "Debian"}}
        });
        assert_eq!(
            cells(Kind::Node, node),
            [
                "node1",
                "NotReady,SchedulingDisabled",
                "control-plane,edge",
                "2d",
                "v1.35.0",
                "172.18.0.11",
                "<none>",
                "Debian",
                "<unknown>",
                "<unknown>"
            ]
            .map(|s| json!(s))
        );
        let service = json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort", "clusterIPs": ["10.96.0.5"],
            "selector": {"b": "2", "a": "1"}, "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}, {"port": 53, "protocol": "UDP"}]}});
        let row = cells(Kind::Service, service);
        assert_eq!(row[1..5], [json!("NodePort"), json!("10.96.0.5"), json!("<none>"), json!("80:30080/TCP,53/UDP")]);
        assert_eq!(row[6], "a=1,b=2");
        let lb = json!({"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer", "externalIPs": ["192.0.2.9"]}, "status": {"loadBalancer": {}}});
        assert_eq!(cells(Kind::Service, lb)[3], "192.0.2.9");
        let pending = json!({"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer"}});
        let row = cells(Kind::Service, pending);
        assert_eq!(
            (&row[2], &row[3], &row[4], &row[6]),
            (&json!("<none>"), &json!("<pending>"), &json!("<none>"), &json!("<none>"))
        );
        let deployment = json!({"metadata": {"name": "web"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["b", "a"]}]},
                     "template": {"spec": {"containers": [{"name": "web", "image": "agnhost"}, {"name": "side", "image": "busybox"}]}}},
            "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}});
        let row = cells(Kind::Deployment, deployment);
        assert_eq!(row[1..4], [json!("2/3"), json!(3), json!(2)]);
        assert_eq!(row[5..8], [json!("web,side"), json!("agnhost,busybox"), json!("app=web,tier in (a,b)")]);
        let slice = json!({"metadata": {"name": "web-abc"}, "addressType": "IPv4", "ports": [{"port": 8080}, {"name": "x"}, {}],
            "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2", "10.0.0.3"]}, {"addresses": ["10.0.0.4"]}]});
        let row = cells(Kind::EndpointSlice, slice);
        assert_eq!(row[1..4], [json!("IPv4"), json!("8080,x,*"), json!("10.0.0.1,10.0.0.2,10.0.0.3 + 1 more...")]);
        assert_eq!(cells(Kind::EndpointSlice, json!({"metadata": {"name": "e"}}))[2], "<unset>");
        let policy = json!({"metadata": {"name": "deny"}, "spec": {"podSelector": {}}});
        assert_eq!(cells(Kind::NetworkPolicy, policy)[1], "<none>");
        let policy = json!({"metadata": {"name": "p"}, "spec": {"podSelector": {"matchExpressions": [{"key": "x", "operator": "DoesNotExist"}]}}});
        assert_eq!(cells(Kind::NetworkPolicy, policy)[1], "!x");
        let event = json!({"metadata": {"name": "web.1"}, "type": "Warning", "reason": "FailedCreatePodSandBox",
            "involvedObject": {"kind": "Pod", "name": "web-1"}, "message": " no network \n", "source": {"component": "kubelet", "host": "node1"},
            "firstTimestamp": "2025-06-01T11:00:00Z", "lastTimestamp": "2025-06-01T11:59:00Z", "count": 4});
        assert_eq!(
            cells(Kind::Event, event),
            ["60s", "Warning", "FailedCreatePodSandBox", "pod/web-1", "", "kubelet, node1", "no network", "60m"]
                .map(|s| json!(s))
                .into_iter()
                .chain([json!(4), json!("web.1")])
                .collect::<Vec<_>>()
        );
        let v1 = json!({"metadata": {"name": "e"}, "type": "Normal", "reason": "Scheduled", "regarding": {"kind": "Pod", "name": "p"},
            "note": "bound", "eventTime": "2025-06-01T11:59:30.000000Z", "reportingController": "skein-lab", "reportingInstance": "x"});
        let row = cells(Kind::EventsV1Event, v1);
        assert_eq!(
            row[0..8],
            ["30s", "Normal", "Scheduled", "pod/p", "", "skein-lab, x", "bound", "30s"].map(|s| json!(s))
        );
        assert_eq!(row[8], 1);
        let lease = json!({"metadata": {"name": "skein-master"}, "spec": {"holderIdentity": "m-1"}});
        assert_eq!(cells(Kind::Lease, lease)[1], "m-1");
        assert_eq!(
            cells(Kind::Namespace, json!({"metadata": {"name": "n"}, "status": {"phase": "Active"}}))[1],
            "Active"
        );
    }

    #[test]
    fn selectors_print_sorted_and_invalid_ones_are_flagged() {
        let selector = json!({"matchLabels": {"z": "1"}, "matchExpressions": [{"key": "a", "operator": "Exists"}]});
        assert_eq!(selector_string(Some(&selector)), Ok("a,z=1".into()));
        assert_eq!(selector_string(None), Ok(String::new()));
        for bad in [
            json!({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}),
            json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}),
            json!({"matchExpressions": [{"key": "a", "operator": "Near"}]}),
        ] {
            assert_eq!(selector_string(Some(&bad)), Err(()), "{bad}");
        }
        assert_eq!(format_label_selector(Some(&json!({"matchLabels": {"a": 1}}))), "<error>");
    }

    #[test]
    fn tables_carry_columns_rows_and_the_requested_object() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "d"}, "spec": {"containers": []}});
        let options = TableOptions { version: TableVersion::V1, include: IncludeObject::Metadata, headers: true };
        let metadata: Map<String, Value> = [("resourceVersion".to_owned(), json!("7"))].into_iter().collect();
        let table_v1 = table(Kind::Pod, &[&pod], metadata.clone(), options);
        assert_eq!(table_v1["kind"], "Table");
        assert_eq!(table_v1["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(table_v1["metadata"]["resourceVersion"], "7");
        assert_eq!(table_v1["columnDefinitions"].as_array().unwrap().len(), 9);
        assert_eq!(table_v1["columnDefinitions"][0]["format"], "name");
        assert_eq!(table_v1["columnDefinitions"][5]["priority"], 1);
        assert_eq!(table_v1["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(table_v1["rows"][0]["object"]["metadata"]["namespace"], "d");
        let options = TableOptions { version: TableVersion::V1beta1, include: IncludeObject::Object, headers: false };
        let beta = table(Kind::Pod, &[&pod], metadata.clone(), options);
        assert_eq!(beta["apiVersion"], "meta.k8s.io/v1beta1");
        assert_eq!(beta["columnDefinitions"], json!([]));
        assert_eq!(beta["rows"][0]["object"], pod);
        let options = TableOptions { version: TableVersion::V1, include: IncludeObject::None, headers: true };
        assert!(table(Kind::Pod, &[&pod], metadata, options)["rows"][0]["object"].is_null());
        assert_eq!(IncludeObject::parse(Some("All")).unwrap_err(), "unrecognized includeObject value: \"All\"");
        assert_eq!(DEFAULT.columns.iter().map(|c| c.name).collect::<Vec<_>>(), ["Name", "Age"]);
    }
}
