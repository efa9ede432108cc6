//! The resource kinds the fake serves, as one table: where each lives in the URL space, its
//! scope and subresources, the fields a `fieldSelector` may name, the k8s-openapi type that
//! field validation decodes into, its table printer, its defaults and validation, and the lists
//! strategic merge patch merges by key. Routing, discovery, OpenAPI, validation, tables, patches
//! and the store all read this table, so serving a new kind (DaemonSet, ConfigMap, RBAC, ...) is
//! one enum variant and one [`KindSpec`] entry.

use std::fmt;

use serde_json::Value;

use crate::{defaults, schema, table};

/// A Kubernetes resource kind served by the fake API endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `v1` Node (cluster-scoped, `/status` subresource).
    Node,
    /// `v1` Namespace (cluster-scoped, `/status` subresource).
    Namespace,
    /// `v1` Pod (namespaced, `/status` and `/binding` subresources).
    Pod,
    /// `v1` Service (namespaced, `/status` subresource).
    Service,
    /// `v1` Event (namespaced).
    Event,
    /// `events.k8s.io/v1` Event (namespaced; what `kube::runtime::events::Recorder` writes).
    /// Stored apart from core `v1` Events.
    EventsV1Event,
    /// `discovery.k8s.io/v1` EndpointSlice (namespaced).
    EndpointSlice,
    /// `networking.k8s.io/v1` NetworkPolicy (namespaced).
    NetworkPolicy,
    /// `coordination.k8s.io/v1` Lease (namespaced).
    Lease,
    /// `apps/v1` Deployment (namespaced, `/status` and `/scale` subresources).
    Deployment,
    /// `batch/v1` Job (namespaced, `/status` subresource).
    Job,
    /// `v1` ServiceAccount (namespaced, `/token` subresource: TokenRequest).
    ServiceAccount,
    /// `v1` Secret (namespaced).
    Secret,
    /// `v1` ConfigMap (namespaced).
    ConfigMap,
    /// `rbac.authorization.k8s.io/v1` Role (namespaced).
    Role,
    /// `rbac.authorization.k8s.io/v1` RoleBinding (namespaced).
    RoleBinding,
    /// `rbac.authorization.k8s.io/v1` ClusterRole (cluster-scoped).
    ClusterRole,
    /// `rbac.authorization.k8s.io/v1` ClusterRoleBinding (cluster-scoped).
    ClusterRoleBinding,
    /// `admissionregistration.k8s.io/v1` ValidatingAdmissionPolicy (cluster-scoped).
    ValidatingAdmissionPolicy,
    /// `admissionregistration.k8s.io/v1` ValidatingAdmissionPolicyBinding (cluster-scoped).
    ValidatingAdmissionPolicyBinding,
}

/// How strategic merge patch treats a list field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ListStrategy {
    /// Replace the whole list (the default, like RFC 7386).
    Replace,
    /// Merge object elements by this key.
    MergeByKey(&'static str),
    /// Union of scalar elements.
    MergePrimitives,
}

/// Where a kind's `/scale` subresource reads and writes (JSON pointers into the object).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ScaleSpec {
    /// The desired replicas (`spec.replicas`), written by a scale update.
    pub(crate) replicas: &'static str,
    /// The observed replicas (`status.replicas`).
    pub(crate) status_replicas: &'static str,
    /// The label selector (a `LabelSelector`), reported as a string.
    pub(crate) selector: &'static str,
}

/// A kind's validation of a write: (new object, stored object) → field errors.
pub(crate) type Validate = fn(&Value, Option<&Value>) -> Vec<String>;

/// Everything the fake knows about one kind: one row of the table.
pub(crate) struct KindSpec {
    pub(crate) group: &'static str,
    pub(crate) version: &'static str,
    /// `v1` or `group/version`.
    pub(crate) api_version: &'static str,
    pub(crate) kind: &'static str,
    pub(crate) plural: &'static str,
    pub(crate) singular: &'static str,
    pub(crate) short_names: &'static [&'static str],
    /// Discovery categories (`all`: what `kubectl get all` lists).
    pub(crate) categories: &'static [&'static str],
    pub(crate) namespaced: bool,
    /// A `/status` subresource: writes to the main resource keep `status`, writes to
    /// `/status` change only `status`.
    pub(crate) status_subresource: bool,
    pub(crate) scale: Option<ScaleSpec>,
    /// Field names a `fieldSelector` may use, besides `metadata.name` and `metadata.namespace`.
    pub(crate) selectable_fields: &'static [&'static str],
    /// The dotted path of a `PodSpec` inside the object (`spec` for a Pod,
    /// `spec.template.spec` for workloads), whose lists merge like a Pod's.
    pub(crate) pod_spec: Option<&'static str>,
    /// Other lists strategic merge patch merges (dotted path, list indices left out).
    pub(crate) merge_lists: &'static [(&'static str, ListStrategy)],
    /// Decodes the object into its k8s-openapi type and encodes it back: what field validation
    /// compares against.
    pub(crate) schema: schema::RoundTrip,
    /// The OpenAPI (k8s-openapi) definition name, e.g. `io.k8s.api.apps.v1.Deployment`.
    pub(crate) definition: &'static str,
    /// The server-side table printer; `None` prints NAME and AGE.
    pub(crate) printer: Option<&'static table::Printer>,
    /// The `status` a create starts from (the API server resets it), if the kind has one.
    pub(crate) initial_status: Option<fn() -> Value>,
    /// Stateless defaults, applied on every write of the main resource.
    pub(crate) defaults: Option<fn(&mut Value)>,
    /// Validation of a write of the main resource (new object, stored one): the field errors,
    /// worded like the API server's (`spec.selector: Required value`).
    pub(crate) validate: Option<Validate>,
}

const POD_SELECTABLE: &[&str] = &[
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
];

const EVENT_SELECTABLE: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

const EVENTS_V1_SELECTABLE: &[&str] = &[
    "regarding.kind",
    "regarding.namespace",
    "regarding.name",
    "regarding.uid",
    "reason",
    "reportingController",
    "type",
];

static NODE: KindSpec = KindSpec {
    group: "",
    version: "v1",
    api_version: "v1",
    kind: "Node",
    plural: "nodes",
    singular: "node",
    short_names: &["no"],
    categories: &[],
    namespaced: false,
    status_subresource: true,
    scale: None,
    selectable_fields: &["spec.unschedulable"],
    pod_spec: None,
    merge_lists: &[
        ("status.conditions", ListStrategy::MergeByKey("type")),
        ("status.addresses", ListStrategy::MergeByKey("type")),
        ("spec.podCIDRs", ListStrategy::MergePrimitives),
    ],
    schema: schema::round_trip::<k8s_openapi::api::core::v1::Node>,
    definition: "io.k8s.api.core.v1.Node",
    printer: Some(&table::NODE),
    initial_status: None,
    defaults: None,
    validate: None,
};

static NAMESPACE: KindSpec = KindSpec {
    group: "",
    version: "v1",
    api_version: "v1",
    kind: "Namespace",
    plural: "namespaces",
    singular: "namespace",
    short_names: &["ns"],
    categories: &[],
    namespaced: false,
    status_subresource: true,
    scale: None,
    selectable_fields: &["status.phase"],
    pod_spec: None,
    merge_lists: &[("status.conditions", ListStrategy::MergeByKey("type"))],
    schema: schema::round_trip::<k8s_openapi::api::core::v1::Namespace>,
    definition: "io.k8s.api.core.v1.Namespace",
    printer: Some(&table::NAMESPACE),
    initial_status: Some(defaults::namespace_status),
    defaults: Some(defaults::namespace),
    validate: None,
};

static POD: KindSpec = KindSpec {
    group: "",
    version: "v1",
    api_version: "v1",
    kind: "Pod",
    plural: "pods",
    singular: "pod",
    short_names: &["po"],
    categories: &["all"],
    namespaced: true,
    status_subresource: true,
    scale: None,
    selectable_fields: POD_SELECTABLE,
    pod_spec: Some("spec"),
    merge_lists: &[
        ("status.conditions", ListStrategy::MergeByKey("type")),
        ("status.podIPs", ListStrategy::MergeByKey("ip")),
        ("status.hostIPs", ListStrategy::MergeByKey("ip")),
    ],
    schema: schema::round_trip::<k8s_openapi::api::core::v1::Pod>,
    definition: "io.k8s.api.core.v1.Pod",
    printer: Some(&table::POD),
    initial_status: Some(defaults::pod_status),
    defaults: Some(defaults::pod),
    validate: None,
};

static SERVICE: KindSpec = KindSpec {
    group: "",
    version: "v1",
    api_version: "v1",
    kind: "Service",
    plural: "services",
    singular: "service",
    short_names: &["svc"],
    categories: &["all"],
    namespaced: true,
    status_subresource: true,
    scale: None,
    selectable_fields: &["spec.clusterIP", "spec.type"],
    pod_spec: None,
    merge_lists: &[
        ("spec.ports", ListStrategy::MergeByKey("port")),
        ("status.conditions", ListStrategy::MergeByKey("type")),
    ],
    schema: schema::round_trip::<k8s_openapi::api::core::v1::Service>,
    definition: "io.k8s.api.core.v1.Service",
    printer: Some(&table::SERVICE),
    initial_status: Some(defaults::service_status),
    // ClusterIP and NodePort allocation needs the store: see `Store::prepare_service`.
    defaults: None,
    validate: None,
};

static EVENT: KindSpec = KindSpec {
    group: "",
    version: "v1",
    api_version: "v1",
    kind: "Event",
    plural: "events",
    singular: "event",
    short_names: &["ev"],
    categories: &[],
    namespaced: true,
    status_subresource: false,
    scale: None,
    selectable_fields: EVENT_SELECTABLE,
    pod_spec: None,
    merge_lists: &[],
    schema: schema::round_trip::<k8s_openapi::api::core::v1::Event>,
    definition: "io.k8s.api.core.v1.Event",
    printer: Some(&table::EVENT),
    initial_status: None,
    defaults: None,
    validate: None,
};

static EVENTS_V1_EVENT: KindSpec = KindSpec {
    group: "events.k8s.io",
    version: "v1",
    api_version: "events.k8s.io/v1",
    kind: "Event",
    plural: "events",
    singular: "event",
    short_names: &["ev"],
    categories: &[],
    namespaced: true,
    status_subresource: false,
    scale: None,
    selectable_fields: EVENTS_V1_SELECTABLE,
    pod_spec: None,
    merge_lists: &[],
    schema: schema::round_trip::<k8s_openapi::api::events::v1::Event>,
    definition: "io.k8s.api.events.v1.Event",
    printer: Some(&table::EVENTS_V1_EVENT),
    initial_status: None,
    defaults: None,
    validate: None,
};

static ENDPOINT_SLICE: KindSpec = KindSpec {
    group: "discovery.k8s.io",
    version: "v1",
    api_version: "discovery.k8s.io/v1",
    kind: "EndpointSlice",
    plural: "endpointslices",
    singular: "endpointslice",
    short_names: &[],
    categories: &[],
    namespaced: true,
    status_subresource: false,
    scale: None,
    selectable_fields: &[],
    pod_spec: None,
    merge_lists: &[],
    schema: schema::round_trip::<k8s_openapi::api::discovery::v1::EndpointSlice>,
    definition: "io.k8s.api.discovery.v1.EndpointSlice",
    printer: Some(&table::ENDPOINT_SLICE),
    initial_status: None,
    defaults: None,
    validate: None,
};

static NETWORK_POLICY: KindSpec = KindSpec {
    group: "networking.k8s.io",
    version: "v1",
    api_version: "networking.k8s.io/v1",
    kind: "NetworkPolicy",
    plural: "networkpolicies",
    singular: "networkpolicy",
    short_names: &["netpol"],
    categories: &[],
    namespaced: true,
    status_subresource: false,
    scale: None,
    selectable_fields: &[],
    pod_spec: None,
    merge_lists: &[],
    schema: schema::round_trip::<k8s_openapi::api::networking::v1::NetworkPolicy>,
    definition: "io.k8s.api.networking.v1.NetworkPolicy",
    printer: Some(&table::NETWORK_POLICY),
    initial_status: None,
    defaults: None,
    validate: None,
};

static LEASE: KindSpec = KindSpec {
    group: "coordination.k8s.io",
    version: "v1",
    api_version: "coordination.k8s.io/v1",
    kind: "Lease",
    plural: "leases",
    singular: "lease",
    short_names: &[],
    categories: &[],
    namespaced: true,
    status_subresource: false,
    scale: None,
    selectable_fields: &[],
    pod_spec: None,
    merge_lists: &[],
    schema: schema::round_trip::<k8s_openapi::api::coordination::v1::Lease>,
    definition: "io.k8s.api.coordination.v1.Lease",
    printer: Some(&table::LEASE),
    initial_status: None,
    defaults: None,
    validate: None,
};

static SERVICE_ACCOUNT: KindSpec = KindSpec {
    group: "",
    version: "v1",
    api_version: "v1",
    kind: "ServiceAccount",
    plural: "serviceaccounts",
    singular: "serviceaccount",
    short_names: &["sa"],
    categories: &[],
    namespaced: true,
    status_subresource: false,
    scale: None,
    selectable_fields: &[],
    pod_spec: None,
    merge_lists: &[("secrets", ListStrategy::MergeByKey("name"))],
    schema: schema::round_trip::<k8s_openapi::api::core::v1::ServiceAccount>,
    definition: "io.k8s.api.core.v1.ServiceAccount",
    printer: None,
    initial_status: None,
    defaults: None,
    validate: None,
};

static SECRET: KindSpec = KindSpec {
    group: "",
    version: "v1",
    api_version: "v1",
    kind: "Secret",
    plural: "secrets",
    singular: "secret",
    short_names: &[],
    categories: &[],
    namespaced: true,
    status_subresource: false,
    scale: None,
    selectable_fields: &["type"],
    pod_spec: None,
    merge_lists: &[],
    schema: schema::round_trip::<k8s_openapi::api::core::v1::Secret>,
    definition: "io.k8s.api.core.v1.Secret",
    printer: None,
    initial_status: None,
    defaults: None,
    validate: None,
};

/// A `<group>/v1` kind with nothing but its names, scope and schema: no subresource,
/// selectable fields, printer, defaults or validation of its own (RBAC, admission policies).
const fn v1_kind(
    (group, api_version): (&'static str, &'static str),
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    namespaced: bool,
    schema: schema::RoundTrip,
    definition: &'static str,
) -> KindSpec {
    KindSpec {
        group,
        version: "v1",
        api_version,
        kind,
        plural,
        singular,
        short_names: &[],
        categories: &[],
        namespaced,
        status_subresource: false,
        scale: None,
        selectable_fields: &[],
        pod_spec: None,
        merge_lists: &[],
        schema,
        definition,
        printer: None,
        initial_status: None,
        defaults: None,
        validate: None,
    }
}

static ROLE: KindSpec = v1_kind(
    ("rbac.authorization.k8s.io", "rbac.authorization.k8s.io/v1"),
    "Role",
    "roles",
    "role",
    true,
    schema::round_trip::<k8s_openapi::api::rbac::v1::Role>,
    "io.k8s.api.rbac.v1.Role",
);

static ROLE_BINDING: KindSpec = v1_kind(
    ("rbac.authorization.k8s.io", "rbac.authorization.k8s.io/v1"),
    "RoleBinding",
    "rolebindings",
    "rolebinding",
    true,
    schema::round_trip::<k8s_openapi::api::rbac::v1::RoleBinding>,
    "io.k8s.api.rbac.v1.RoleBinding",
);

static CLUSTER_ROLE: KindSpec = v1_kind(
    ("rbac.authorization.k8s.io", "rbac.authorization.k8s.io/v1"),
    "ClusterRole",
    "clusterroles",
    "clusterrole",
    false,
    schema::round_trip::<k8s_openapi::api::rbac::v1::ClusterRole>,
    "io.k8s.api.rbac.v1.ClusterRole",
);

static CLUSTER_ROLE_BINDING: KindSpec = v1_kind(
    ("rbac.authorization.k8s.io", "rbac.authorization.k8s.io/v1"),
    "ClusterRoleBinding",
    "clusterrolebindings",
    "clusterrolebinding",
    false,
    schema::round_trip::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>,
    "io.k8s.api.rbac.v1.ClusterRoleBinding",
);

static VALIDATING_ADMISSION_POLICY: KindSpec = KindSpec {
    status_subresource: true,
    ..v1_kind(
        ("admissionregistration.k8s.io", "admissionregistration.k8s.io/v1"),
        "ValidatingAdmissionPolicy",
        "validatingadmissionpolicies",
        "validatingadmissionpolicy",
        false,
        schema::round_trip::<k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy>,
        "io.k8s.api.admissionregistration.v1.ValidatingAdmissionPolicy",
    )
};

static VALIDATING_ADMISSION_POLICY_BINDING: KindSpec = v1_kind(
    ("admissionregistration.k8s.io", "admissionregistration.k8s.io/v1"),
    "ValidatingAdmissionPolicyBinding",
    "validatingadmissionpolicybindings",
    "validatingadmissionpolicybinding",
    false,
    schema::round_trip::<k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicyBinding>,
    "io.k8s.api.admissionregistration.v1.ValidatingAdmissionPolicyBinding",
);

static CONFIG_MAP: KindSpec = KindSpec {
    group: "",
    version: "v1",
    api_version: "v1",
    kind: "ConfigMap",
    plural: "configmaps",
    singular: "configmap",
    short_names: &["cm"],
    categories: &[],
    namespaced: true,
    status_subresource: false,
    scale: None,
    selectable_fields: &[],
    pod_spec: None,
    merge_lists: &[],
    schema: schema::round_trip::<k8s_openapi::api::core::v1::ConfigMap>,
    definition: "io.k8s.api.core.v1.ConfigMap",
    printer: None,
    initial_status: None,
    defaults: None,
    validate: None,
};

static DEPLOYMENT: KindSpec = KindSpec {
    group: "apps",
    version: "v1",
    api_version: "apps/v1",
    kind: "Deployment",
    plural: "deployments",
    singular: "deployment",
    short_names: &["deploy"],
    categories: &["all"],
    namespaced: true,
    status_subresource: true,
    scale: Some(ScaleSpec {
        replicas: "/spec/replicas",
        status_replicas: "/status/replicas",
        selector: "/spec/selector",
    }),
    selectable_fields: &[],
    pod_spec: Some("spec.template.spec"),
    merge_lists: &[("status.conditions", ListStrategy::MergeByKey("type"))],
    schema: schema::round_trip::<k8s_openapi::api::apps::v1::Deployment>,
    definition: "io.k8s.api.apps.v1.Deployment",
    printer: Some(&table::DEPLOYMENT),
    initial_status: Some(defaults::empty_status),
    defaults: Some(defaults::deployment),
    validate: Some(defaults::validate_deployment),
};

static JOB: KindSpec = KindSpec {
    group: "batch",
    version: "v1",
    api_version: "batch/v1",
    kind: "Job",
    plural: "jobs",
    singular: "job",
    short_names: &[],
    categories: &["all"],
    namespaced: true,
    status_subresource: true,
    scale: None,
    selectable_fields: &[],
    pod_spec: Some("spec.template.spec"),
    merge_lists: &[("status.conditions", ListStrategy::MergeByKey("type"))],
    schema: schema::round_trip::<k8s_openapi::api::batch::v1::Job>,
    definition: "io.k8s.api.batch.v1.Job",
    printer: Some(&table::JOB),
    initial_status: Some(defaults::empty_status),
    defaults: Some(defaults::job),
    validate: Some(defaults::validate_job),
};

/// The lists of a `PodSpec` that strategic merge patch merges, relative to the pod spec
/// (`patchMergeKey`/`patchStrategy` in `k8s.io/api/core/v1`). `*` stands for any of the
/// container lists.
const POD_SPEC_LISTS: &[(&str, ListStrategy)] = &[
    ("containers", ListStrategy::MergeByKey("name")),
    ("initContainers", ListStrategy::MergeByKey("name")),
    ("ephemeralContainers", ListStrategy::MergeByKey("name")),
    ("volumes", ListStrategy::MergeByKey("name")),
    ("imagePullSecrets", ListStrategy::MergeByKey("name")),
    ("resourceClaims", ListStrategy::MergeByKey("name")),
    ("schedulingGates", ListStrategy::MergeByKey("name")),
    ("hostAliases", ListStrategy::MergeByKey("ip")),
    ("topologySpreadConstraints", ListStrategy::MergeByKey("topologyKey")),
    ("*.ports", ListStrategy::MergeByKey("containerPort")),
    ("*.env", ListStrategy::MergeByKey("name")),
    ("*.volumeMounts", ListStrategy::MergeByKey("mountPath")),
    ("*.volumeDevices", ListStrategy::MergeByKey("devicePath")),
];

impl Kind {
    /// Every kind, in discovery order.
    pub const ALL: [Kind; 20] = [
        Kind::Node,
        Kind::Namespace,
        Kind::Pod,
        Kind::Service,
        Kind::Event,
        Kind::EventsV1Event,
        Kind::EndpointSlice,
        Kind::NetworkPolicy,
        Kind::Lease,
        Kind::Deployment,
        Kind::Job,
        Kind::ServiceAccount,
        Kind::Secret,
        Kind::ConfigMap,
        Kind::Role,
        Kind::RoleBinding,
        Kind::ClusterRole,
        Kind::ClusterRoleBinding,
        Kind::ValidatingAdmissionPolicy,
        Kind::ValidatingAdmissionPolicyBinding,
    ];

    /// This kind's row of the table.
    pub(crate) fn spec(self) -> &'static KindSpec {
        match self {
            Kind::Node => &NODE,
            Kind::Namespace => &NAMESPACE,
            Kind::Pod => &POD,
            Kind::Service => &SERVICE,
            Kind::Event => &EVENT,
            Kind::EventsV1Event => &EVENTS_V1_EVENT,
            Kind::EndpointSlice => &ENDPOINT_SLICE,
            Kind::NetworkPolicy => &NETWORK_POLICY,
            Kind::Lease => &LEASE,
            Kind::Deployment => &DEPLOYMENT,
            Kind::Job => &JOB,
            Kind::ServiceAccount => &SERVICE_ACCOUNT,
            Kind::Secret => &SECRET,
            Kind::ConfigMap => &CONFIG_MAP,
            Kind::Role => &ROLE,
            Kind::RoleBinding => &ROLE_BINDING,
            Kind::ClusterRole => &CLUSTER_ROLE,
            Kind::ClusterRoleBinding => &CLUSTER_ROLE_BINDING,
            Kind::ValidatingAdmissionPolicy => &VALIDATING_ADMISSION_POLICY,
            Kind::ValidatingAdmissionPolicyBinding => &VALIDATING_ADMISSION_POLICY_BINDING,
        }
    }

    /// API group (`""` for the core group).
    pub fn group(self) -> &'static str {
        self.spec().group
    }

    /// API version within the group.
    pub fn version(self) -> &'static str {
        self.spec().version
    }

    /// The `apiVersion` field value: `v1` or `group/version`.
    pub fn api_version(self) -> &'static str {
        self.spec().api_version
    }

    /// The `kind` field value.
    pub fn kind_name(self) -> &'static str {
        self.spec().kind
    }

    /// The plural resource name used in URLs.
    pub fn plural(self) -> &'static str {
        self.spec().plural
    }

    /// The singular resource name (discovery).
    pub fn singular(self) -> &'static str {
        self.spec().singular
    }

    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        self.spec().namespaced
    }

    /// Whether the kind has a `/status` subresource. For these kinds an update or patch of the
    /// main resource leaves `status` unchanged and `/status` changes only `status`, as the real
    /// API server does.
    pub fn has_status_subresource(self) -> bool {
        self.spec().status_subresource
    }

    /// Whether the kind has a `/scale` subresource (`autoscaling/v1` Scale).
    pub fn has_scale_subresource(self) -> bool {
        self.spec().scale.is_some()
    }

    /// Short names advertised in discovery.
    pub(crate) fn short_names(self) -> &'static [&'static str] {
        self.spec().short_names
    }

    /// Categories advertised in discovery.
    pub(crate) fn categories(self) -> &'static [&'static str] {
        self.spec().categories
    }

    /// Finds the kind served under `group`/`version` with the plural name `plural`.
    pub fn from_plural(group: &str, version: &str, plural: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.group() == group && k.version() == version && k.plural() == plural)
    }

    /// Finds the kind for a typed kube-rs resource (`K::group(&())`, `K::version(&())`,
    /// `K::kind(&())`).
    pub fn from_gvk(group: &str, version: &str, kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.group() == group && k.version() == version && k.kind_name() == kind)
    }

    /// Finds the kind of a typed kube-rs resource such as `k8s_openapi::api::core::v1::Pod`.
    pub fn of<K: kube::Resource<DynamicType = ()>>() -> Option<Kind> {
        Kind::from_gvk(&K::group(&()), &K::version(&()), &K::kind(&()))
    }

    /// Field names a `fieldSelector` may use on this kind, besides `metadata.name` and
    /// `metadata.namespace` (which every kind accepts).
    pub(crate) fn selectable_fields(self) -> &'static [&'static str] {
        self.spec().selectable_fields
    }

    /// The strategic-merge-patch strategy of the list at `path` (dotted, indices left out).
    pub(crate) fn list_strategy(self, path: &str) -> ListStrategy {
        match path {
            "metadata.ownerReferences" => return ListStrategy::MergeByKey("uid"),
            "metadata.finalizers" => return ListStrategy::MergePrimitives,
            _ => {}
        }
        let spec = self.spec();
        if let Some((_, strategy)) = spec.merge_lists.iter().find(|(p, _)| *p == path) {
            return *strategy;
        }
        let Some(relative) = spec.pod_spec.and_then(|prefix| path.strip_prefix(prefix)?.strip_prefix('.')) else {
            return ListStrategy::Replace;
        };
        for (pattern, strategy) in POD_SPEC_LISTS {
            let matched = match pattern.strip_prefix("*.") {
                Some(field) => {
                    relative.strip_suffix(field).and_then(|c| c.strip_suffix('.')).is_some_and(|container| {
                        matches!(container, "containers" | "initContainers" | "ephemeralContainers")
                    })
                }
                None => relative == *pattern,
            };
            if matched {
                return *strategy;
            }
        }
        ListStrategy::Replace
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group().is_empty() {
            f.write_str(self.kind_name())
        } else {
            write!(f, "{}.{}", self.kind_name(), self.group())
        }
    }
}

/// The request verbs the fake counts, as Kubernetes audit logs name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verb {
    /// `GET` on a collection.
    List,
    /// `GET` on a collection with `watch=true`.
    Watch,
    /// `GET` on one object (or its `/status`).
    Get,
    /// `POST` on a collection (or `pods/{name}/binding`).
    Create,
    /// `PUT` on one object (or its `/status`).
    Update,
    /// `PATCH` on one object (or its `/status`), any patch type including apply.
    Patch,
    /// `DELETE` on one object.
    Delete,
    /// `DELETE` on a collection.
    DeleteCollection,
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Get => "get",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_consistent_row() {
        for kind in Kind::ALL {
            let spec = kind.spec();
            let expected = if spec.group.is_empty() {
                spec.version.to_owned()
            } else {
                format!("{}/{}", spec.group, spec.version)
            };
            assert_eq!(spec.api_version, expected, "{kind}");
            assert_eq!(Kind::from_plural(spec.group, spec.version, spec.plural), Some(kind));
            assert_eq!(Kind::from_gvk(spec.group, spec.version, spec.kind), Some(kind));
            assert!(spec.definition.ends_with(spec.kind), "{kind}: {}", spec.definition);
        }
    }

    #[test]
    fn pod_spec_lists_merge_wherever_the_pod_spec_is() {
        use ListStrategy::*;
        for (kind, prefix) in [(Kind::Pod, "spec"), (Kind::Deployment, "spec.template.spec")] {
            assert_eq!(kind.list_strategy(&format!("{prefix}.containers")), MergeByKey("name"));
            assert_eq!(kind.list_strategy(&format!("{prefix}.initContainers.ports")), MergeByKey("containerPort"));
            assert_eq!(kind.list_strategy(&format!("{prefix}.containers.env")), MergeByKey("name"));
            assert_eq!(kind.list_strategy(&format!("{prefix}.topologySpreadConstraints")), MergeByKey("topologyKey"));
            assert_eq!(kind.list_strategy(&format!("{prefix}.tolerations")), Replace);
            assert_eq!(kind.list_strategy(&format!("{prefix}.volumes.ports")), Replace);
        }
        assert_eq!(Kind::Service.list_strategy("spec.ports"), MergeByKey("port"));
        assert_eq!(Kind::Service.list_strategy("spec.containers"), Replace);
        assert_eq!(Kind::Deployment.list_strategy("status.conditions"), MergeByKey("type"));
        assert_eq!(Kind::Lease.list_strategy("metadata.finalizers"), MergePrimitives);
        assert_eq!(Kind::EndpointSlice.list_strategy("endpoints"), Replace);
    }
}
