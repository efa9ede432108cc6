//! The resource kinds the fake serves: where each lives in the URL space, whether it is
//! namespaced, and which subresources it has. One table, so routing, discovery and the
//! store agree.

use std::fmt;

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
}

impl Kind {
    /// Every kind, in discovery order.
    pub const ALL: [Kind; 9] = [
        Kind::Node,
        Kind::Namespace,
        Kind::Pod,
        Kind::Service,
        Kind::Event,
        Kind::EventsV1Event,
        Kind::EndpointSlice,
        Kind::NetworkPolicy,
        Kind::Lease,
    ];

    /// API group (`""` for the core group).
    pub fn group(self) -> &'static str {
        match self {
            Kind::Node | Kind::Namespace | Kind::Pod | Kind::Service | Kind::Event => "",
            Kind::EventsV1Event => "events.k8s.io",
            Kind::EndpointSlice => "discovery.k8s.io",
            Kind::NetworkPolicy => "networking.k8s.io",
            Kind::Lease => "coordination.k8s.io",
        }
    }

    /// API version within the group (always `v1` here).
    pub fn version(self) -> &'static str {
        "v1"
    }

    /// The `apiVersion` field value: `v1` or `group/v1`.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Node | Kind::Namespace | Kind::Pod | Kind::Service | Kind::Event => "v1",
            Kind::EventsV1Event => "events.k8s.io/v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::NetworkPolicy => "networking.k8s.io/v1",
            Kind::Lease => "coordination.k8s.io/v1",
        }
    }

    /// The `kind` field value.
    pub fn kind_name(self) -> &'static str {
        match self {
            Kind::Node => "Node",
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::Event | Kind::EventsV1Event => "Event",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::Lease => "Lease",
        }
    }

    /// The plural resource name used in URLs.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Node => "nodes",
            Kind::Namespace => "namespaces",
            Kind::Pod => "pods",
            Kind::Service => "services",
            Kind::Event | Kind::EventsV1Event => "events",
            Kind::EndpointSlice => "endpointslices",
            Kind::NetworkPolicy => "networkpolicies",
            Kind::Lease => "leases",
        }
    }

    /// The singular resource name (discovery).
    pub fn singular(self) -> &'static str {
        match self {
            Kind::Node => "node",
            Kind::Namespace => "namespace",
            Kind::Pod => "pod",
            Kind::Service => "service",
            Kind::Event | Kind::EventsV1Event => "event",
            Kind::EndpointSlice => "endpointslice",
            Kind::NetworkPolicy => "networkpolicy",
            Kind::Lease => "lease",
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Node | Kind::Namespace)
    }

    /// Whether the kind has a `/status` subresource. For these kinds an update or patch of the
    /// main resource leaves `status` unchanged and `/status` changes only `status`, as the real
    /// API server does.
    pub fn has_status_subresource(self) -> bool {
        matches!(self, Kind::Node | Kind::Namespace | Kind::Pod | Kind::Service)
    }

    /// Short names advertised in discovery.
    pub(crate) fn short_names(self) -> &'static [&'static str] {
        match self {
            Kind::Node => &["no"],
            Kind::Namespace => &["ns"],
            Kind::Pod => &["po"],
            Kind::Service => &["svc"],
            Kind::Event | Kind::EventsV1Event => &["ev"],
            Kind::EndpointSlice => &[],
            Kind::NetworkPolicy => &["netpol"],
            Kind::Lease => &[],
        }
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
        match self {
            Kind::Pod => &[
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "spec.hostNetwork",
                "status.phase",
                "status.podIP",
                "status.nominatedNodeName",
            ],
            Kind::Node => &["spec.unschedulable"],
            Kind::Namespace => &["status.phase"],
            Kind::Service => &["spec.clusterIP", "spec.type"],
            Kind::Event => &[
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
            ],
            Kind::EventsV1Event => &[
                "regarding.kind",
                "regarding.namespace",
                "regarding.name",
                "regarding.uid",
                "reason",
                "reportingController",
                "type",
            ],
            Kind::EndpointSlice | Kind::NetworkPolicy | Kind::Lease => &[],
        }
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
