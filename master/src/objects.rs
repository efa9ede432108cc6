//! Kubernetes API objects → `skein-netmodel`'s cluster types. The API objects are untrusted
//! input: every problem is reported as a [`Problem`] naming the field and the value, the
//! rest of the object is kept where that is safe, and nothing panics. An object that
//! cannot be programmed at all converts to `None` (and is treated as absent).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as K8sSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use skein_netmodel::IpNet;
use skein_netmodel::annotations::{self, CHASSIS, NODE_SUBNETS, POD_NETWORKS};
use skein_netmodel::cluster as nm;

/// Label naming the Service of an EndpointSlice.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Node label holding the zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// One thing wrong with an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The field (`spec.ports[0].protocol`, `metadata.annotations[skein.dev/pod-networks]`).
    pub field: String,
    /// What is wrong, with the value.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// A converted object with the problems found.
#[derive(Clone, Debug, PartialEq)]
pub struct Converted<T> {
    /// The object, or `None` if it cannot be programmed at all.
    pub object: Option<T>,
    /// What was wrong (and left out).
    pub problems: Vec<Problem>,
    /// True if a Skein annotation is present but unreadable: the master must not write a
    /// fresh one over it (a live pod's address is never changed), only report it.
    pub annotation_broken: bool,
}

struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, field: impl Into<String>, message: impl fmt::Display) {
        self.0.push(Problem { field: field.into(), message: message.to_string() });
    }
}

fn annotation_field(key: &str) -> String {
    format!("metadata.annotations[{key}]")
}

fn parse_ip(problems: &mut Problems, field: String, text: &str) -> Option<IpAddr> {
    match text.parse() {
        Ok(ip) => Some(ip),
        Err(_) => {
            problems.push(field, format!("{text:?} is not an IP address"));
            None
        }
    }
}

fn protocol(problems: &mut Problems, field: String, value: Option<&str>) -> Option<nm::Protocol> {
    match value.unwrap_or("TCP") {
        "TCP" => Some(nm::Protocol::Tcp),
        "UDP" => Some(nm::Protocol::Udp),
        "SCTP" => Some(nm::Protocol::Sctp),
        other => {
            problems.push(field, format!("{other:?} is not TCP, UDP or SCTP"));
            None
        }
    }
}

fn port_number(problems: &mut Problems, field: String, value: i32) -> Option<u16> {
    match u16::try_from(value) {
        Ok(p) if p > 0 => Some(p),
        _ => {
            problems.push(field, format!("{value} is not a port number (1-65535)"));
            None
        }
    }
}

/// A Node.
pub fn node(node: &Node) -> Converted<nm::Node> {
    let mut problems = Problems(Vec::new());
    let mut broken = false;
    let Some(name) = node.metadata.name.clone() else {
        problems.push("metadata.name", "missing");
        return Converted { object: None, problems: problems.0, annotation_broken: false };
    };
    let annotations = node.metadata.annotations.clone().unwrap_or_default();
    let subnets = match annotations.get(NODE_SUBNETS).map(|t| annotations::parse_node_subnets(t)) {
        None => Vec::new(),
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            broken = true;
            problems.push(annotation_field(NODE_SUBNETS), e);
            Vec::new()
        }
    };
    let chassis = match annotations.get(CHASSIS).map(|t| annotations::parse_chassis(t)) {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => {
            problems.push(annotation_field(CHASSIS), e);
            None
        }
    };
    let mut internal_ips = Vec::new();
    let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
    for (i, a) in addresses.into_iter().flatten().enumerate() {
        if a.type_ == "InternalIP"
            && let Some(ip) = parse_ip(&mut problems, format!("status.addresses[{i}].address"), &a.address)
        {
            internal_ips.push(ip);
        }
    }
    let zone = node.metadata.labels.as_ref().and_then(|l| l.get(ZONE_LABEL)).cloned();
    Converted {
        object: Some(nm::Node { name, internal_ips, subnets, chassis, zone }),
        problems: problems.0,
        annotation_broken: broken,
    }
}

/// A Namespace.
pub fn namespace(ns: &Namespace) -> Converted<nm::Namespace> {
    let object = ns.metadata.name.clone().map(|name| nm::Namespace {
        name,
        labels: ns.metadata.labels.clone().unwrap_or_default().into_iter().collect(),
    });
    let problems = if object.is_none() {
        vec![Problem { field: "metadata.name".into(), message: "missing".into() }]
    } else {
        Vec::new()
    };
    Converted { object, problems, annotation_broken: false }
}

/// A Pod.
pub fn pod(pod: &Pod) -> Converted<nm::Pod> {
    let mut problems = Problems(Vec::new());
    let (Some(namespace), Some(name)) = (pod.metadata.namespace.clone(), pod.metadata.name.clone()) else {
        problems.push("metadata", "missing namespace or name");
        return Converted { object: None, problems: problems.0, annotation_broken: false };
    };
    let mut broken = false;
    let network = match pod.metadata.annotations.as_ref().and_then(|a| a.get(POD_NETWORKS)) {
        None => None,
        Some(text) => match annotations::parse_pod_networks(text) {
            Ok(n) => Some(n),
            Err(e) => {
                broken = true;
                problems.push(annotation_field(POD_NETWORKS), e);
                None
            }
        },
    };
    let spec = pod.spec.as_ref();
    let mut ports = Vec::new();
    for (c, container) in spec.map(|s| s.containers.as_slice()).unwrap_or_default().iter().enumerate() {
        for (i, p) in container.ports.iter().flatten().enumerate() {
            let field = format!("spec.containers[{c}].ports[{i}]");
            let proto = protocol(&mut problems, format!("{field}.protocol"), p.protocol.as_deref());
            let number = port_number(&mut problems, format!("{field}.containerPort"), p.container_port);
            if let (Some(protocol), Some(port)) = (proto, number) {
                ports.push(nm::ContainerPort { name: p.name.clone(), port, protocol });
            }
        }
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    Converted {
        object: Some(nm::Pod {
            namespace,
            name,
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            node: spec.and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty()),
            labels: pod.metadata.labels.clone().unwrap_or_default().into_iter().collect(),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            terminal: matches!(phase, Some("Succeeded" | "Failed")),
            ports,
            network,
        }),
        problems: problems.0,
        annotation_broken: broken,
    }
}

fn traffic_policy(problems: &mut Problems, field: &str, value: Option<&str>) -> nm::TrafficPolicy {
    match value {
        None | Some("Cluster") => nm::TrafficPolicy::Cluster,
        Some("Local") => nm::TrafficPolicy::Local,
        Some(other) => {
            problems.push(field, format!("{other:?} is not Cluster or Local; using Cluster"));
            nm::TrafficPolicy::Cluster
        }
    }
}

/// A Service. A Service with cluster IPs but no ports converts to `None` with a problem:
/// there is nothing to load-balance.
pub fn service(svc: &Service) -> Converted<nm::Service> {
    let mut problems = Problems(Vec::new());
    let none = |problems: Problems| Converted { object: None, problems: problems.0, annotation_broken: false };
    let (Some(namespace), Some(name)) = (svc.metadata.namespace.clone(), svc.metadata.name.clone()) else {
        problems.push("metadata", "missing namespace or name");
        return none(problems);
    };
    let Some(spec) = svc.spec.as_ref() else {
        problems.push("spec", "missing");
        return none(problems);
    };
    let service_type = match spec.type_.as_deref() {
        None | Some("ClusterIP") => nm::ServiceType::ClusterIp,
        Some("NodePort") => nm::ServiceType::NodePort,
        Some("LoadBalancer") => nm::ServiceType::LoadBalancer,
        Some("ExternalName") => nm::ServiceType::ExternalName,
        Some(other) => {
            problems.push("spec.type", format!("{other:?} is not ClusterIP, NodePort, LoadBalancer or ExternalName"));
            return none(problems);
        }
    };
    let raw_ips: Vec<String> = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips.clone(),
        (_, Some(ip)) => vec![ip.clone()],
        _ => Vec::new(),
    };
    let mut cluster_ips = Vec::new();
    for (i, text) in raw_ips.iter().enumerate() {
        if text == "None" || text.is_empty() {
            continue;
        }
        if let Some(ip) = parse_ip(&mut problems, format!("spec.clusterIPs[{i}]"), text) {
            cluster_ips.push(ip);
        }
    }
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let field = format!("spec.ports[{i}]");
        let proto = protocol(&mut problems, format!("{field}.protocol"), p.protocol.as_deref());
        let number = port_number(&mut problems, format!("{field}.port"), p.port);
        let node_port = match p.node_port {
            None | Some(0) => None,
            Some(n) => port_number(&mut problems, format!("{field}.nodePort"), n),
        };
        let target_port = match &p.target_port {
            None => nm::PortRef::Number(number.unwrap_or(0)),
            Some(IntOrString::Int(n)) => match port_number(&mut problems, format!("{field}.targetPort"), *n) {
                Some(n) => nm::PortRef::Number(n),
                None => continue,
            },
            Some(IntOrString::String(s)) => nm::PortRef::Name(s.clone()),
        };
        if let (Some(protocol), Some(port)) = (proto, number) {
            ports.push(nm::ServicePort {
                name: p.name.clone().unwrap_or_default(),
                protocol,
                port,
                target_port,
                node_port,
            });
        }
    }
    let programmable = service_type != nm::ServiceType::ExternalName && !cluster_ips.is_empty();
    if programmable && ports.is_empty() {
        if spec.ports.as_ref().is_none_or(Vec::is_empty) {
            problems.push("spec.ports", "empty: a Service with a cluster IP needs at least one port to load-balance");
        } else {
            problems.push("spec.ports", "no usable port left");
        }
        return none(problems);
    }
    let mut external_ips = Vec::new();
    for (i, text) in spec.external_ips.iter().flatten().enumerate() {
        if let Some(ip) = parse_ip(&mut problems, format!("spec.externalIPs[{i}]"), text) {
            external_ips.push(ip);
        }
    }
    let mut load_balancer_ips = Vec::new();
    let ingress = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|l| l.ingress.as_ref());
    for (i, entry) in ingress.into_iter().flatten().enumerate() {
        if let Some(text) = &entry.ip
            && let Some(ip) = parse_ip(&mut problems, format!("status.loadBalancer.ingress[{i}].ip"), text)
        {
            load_balancer_ips.push(ip);
        }
    }
    let session_affinity = match spec.session_affinity.as_deref() {
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(10800);
            match u32::try_from(timeout) {
                Ok(t) if t > 0 => nm::SessionAffinity::ClientIp { timeout_seconds: t },
                _ => {
                    problems.push(
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                        format!("{timeout} is not positive; using 10800"),
                    );
                    nm::SessionAffinity::ClientIp { timeout_seconds: 10800 }
                }
            }
        }
        None | Some("None") => nm::SessionAffinity::None,
        Some(other) => {
            problems.push("spec.sessionAffinity", format!("{other:?} is not None or ClientIP; using None"));
            nm::SessionAffinity::None
        }
    };
    let external_traffic_policy =
        traffic_policy(&mut problems, "spec.externalTrafficPolicy", spec.external_traffic_policy.as_deref());
    let internal_traffic_policy =
        traffic_policy(&mut problems, "spec.internalTrafficPolicy", spec.internal_traffic_policy.as_deref());
    Converted {
        object: Some(nm::Service {
            namespace,
            name,
            service_type,
            cluster_ips,
            ports,
            selector: spec.selector.clone().map(|s| s.into_iter().collect()),
            external_ips,
            load_balancer_ips,
            external_traffic_policy,
            internal_traffic_policy,
            session_affinity,
        }),
        problems: problems.0,
        annotation_broken: false,
    }
}

/// An EndpointSlice.
pub fn endpoint_slice(slice: &EndpointSlice) -> Converted<nm::EndpointSlice> {
    let mut problems = Problems(Vec::new());
    let (Some(namespace), Some(name)) = (slice.metadata.namespace.clone(), slice.metadata.name.clone()) else {
        problems.push("metadata", "missing namespace or name");
        return Converted { object: None, problems: problems.0, annotation_broken: false };
    };
    let address_type = match slice.address_type.as_str() {
        "IPv4" => nm::AddressType::Ipv4,
        "IPv6" => nm::AddressType::Ipv6,
        "FQDN" => nm::AddressType::Fqdn,
        other => {
            problems.push("addressType", format!("{other:?} is not IPv4, IPv6 or FQDN"));
            return Converted { object: None, problems: problems.0, annotation_broken: false };
        }
    };
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let field = format!("ports[{i}]");
        let Some(protocol) = protocol(&mut problems, format!("{field}.protocol"), p.protocol.as_deref()) else {
            continue;
        };
        let port = match p.port {
            None => None,
            Some(n) => match port_number(&mut problems, format!("{field}.port"), n) {
                Some(n) => Some(n),
                None => continue,
            },
        };
        ports.push(nm::EndpointPort { name: p.name.clone().unwrap_or_default(), port, protocol });
    }
    let mut endpoints = Vec::new();
    for (i, e) in slice.endpoints.iter().enumerate() {
        let mut addresses = Vec::new();
        if address_type != nm::AddressType::Fqdn {
            for (j, text) in e.addresses.iter().enumerate() {
                if let Some(ip) = parse_ip(&mut problems, format!("endpoints[{i}].addresses[{j}]"), text) {
                    addresses.push(ip);
                }
            }
        }
        let c = e.conditions.as_ref();
        endpoints.push(nm::Endpoint {
            addresses,
            conditions: nm::EndpointConditions {
                ready: c.and_then(|c| c.ready),
                serving: c.and_then(|c| c.serving),
                terminating: c.and_then(|c| c.terminating),
            },
            node: e.node_name.clone(),
            zone: e.zone.clone(),
        });
    }
    Converted {
        object: Some(nm::EndpointSlice {
            namespace,
            name,
            service_name: slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)).cloned(),
            address_type,
            ports,
            endpoints,
        }),
        problems: problems.0,
        annotation_broken: false,
    }
}

fn selector(problems: &mut Problems, field: &str, s: &K8sSelector) -> nm::LabelSelector {
    let mut match_expressions = Vec::new();
    for (i, r) in s.match_expressions.iter().flatten().enumerate() {
        let operator = match r.operator.as_str() {
            "In" => nm::SelectorOperator::In,
            "NotIn" => nm::SelectorOperator::NotIn,
            "Exists" => nm::SelectorOperator::Exists,
            "DoesNotExist" => nm::SelectorOperator::DoesNotExist,
            other => {
                problems.push(
                    format!("{field}.matchExpressions[{i}].operator"),
                    format!("{other:?} is not In, NotIn, Exists or DoesNotExist"),
                );
                continue;
            }
        };
        match_expressions.push(nm::SelectorRequirement {
            key: r.key.clone(),
            operator,
            values: r.values.clone().unwrap_or_default(),
        });
    }
    nm::LabelSelector {
        match_labels: s.match_labels.clone().unwrap_or_default().into_iter().collect::<BTreeMap<_, _>>(),
        match_expressions,
    }
}

fn policy_rule(
    problems: &mut Problems,
    field: &str,
    peers: Option<&Vec<k8s_openapi::api::networking::v1::NetworkPolicyPeer>>,
    ports: Option<&Vec<k8s_openapi::api::networking::v1::NetworkPolicyPort>>,
) -> nm::PolicyRule {
    let mut rule = nm::PolicyRule::default();
    for (i, p) in peers.into_iter().flatten().enumerate() {
        let f = format!("{field}.peers[{i}]");
        let ip_block = p.ip_block.as_ref().and_then(|b| {
            let cidr = b.cidr.parse::<IpNet>().map_err(|e| problems.push(format!("{f}.ipBlock.cidr"), e)).ok()?;
            let mut except = Vec::new();
            for (j, e) in b.except.iter().flatten().enumerate() {
                match e.parse::<IpNet>() {
                    Ok(n) => except.push(n),
                    Err(err) => problems.push(format!("{f}.ipBlock.except[{j}]"), err),
                }
            }
            Some(nm::IpBlock { cidr, except })
        });
        rule.peers.push(nm::PolicyPeer {
            pod_selector: p.pod_selector.as_ref().map(|s| selector(problems, &format!("{f}.podSelector"), s)),
            namespace_selector: p
                .namespace_selector
                .as_ref()
                .map(|s| selector(problems, &format!("{f}.namespaceSelector"), s)),
            ip_block,
        });
    }
    for (i, p) in ports.into_iter().flatten().enumerate() {
        let f = format!("{field}.ports[{i}]");
        let Some(protocol) = protocol(problems, format!("{f}.protocol"), p.protocol.as_deref()) else { continue };
        let port = match &p.port {
            None => None,
            Some(IntOrString::Int(n)) => match port_number(problems, format!("{f}.port"), *n) {
                Some(n) => Some(nm::PortRef::Number(n)),
                None => continue,
            },
            Some(IntOrString::String(s)) => Some(nm::PortRef::Name(s.clone())),
        };
        let end_port = p.end_port.and_then(|n| port_number(problems, format!("{f}.endPort"), n));
        rule.ports.push(nm::PolicyPort { protocol, port, end_port });
    }
    rule
}

/// A NetworkPolicy. A field that does not parse takes its whole rule out (leaving out
/// only the field could widen the rule: a rule whose one port is gone allows every port);
/// the policy keeps isolating its pods. A `spec.podSelector` or `policyTypes` that does
/// not parse leaves the policy out: whom, or what, it isolates is unknown.
pub fn network_policy(np: &NetworkPolicy) -> Converted<nm::NetworkPolicy> {
    let mut problems = Problems(Vec::new());
    let (Some(namespace), Some(name)) = (np.metadata.namespace.clone(), np.metadata.name.clone()) else {
        problems.push("metadata", "missing namespace or name");
        return Converted { object: None, problems: problems.0, annotation_broken: false };
    };
    let spec = np.spec.clone().unwrap_or_default();
    let pod_selector = selector(&mut problems, "spec.podSelector", &spec.pod_selector.unwrap_or_default());
    let mut policy_types = Vec::new();
    for (i, t) in spec.policy_types.iter().flatten().enumerate() {
        match t.as_str() {
            "Ingress" => policy_types.push(nm::PolicyType::Ingress),
            "Egress" => policy_types.push(nm::PolicyType::Egress),
            other => problems.push(format!("spec.policyTypes[{i}]"), format!("{other:?} is not Ingress or Egress")),
        }
    }
    if !problems.0.is_empty() {
        problems.push("spec", "not programmed: the policy's pod selector or types do not parse");
        return Converted { object: None, problems: problems.0, annotation_broken: false };
    }
    // Without policyTypes, Egress is implied by egress rules: keep it explicit, so that
    // leaving out bad egress rules cannot lift the isolation.
    if policy_types.is_empty() && spec.egress.as_ref().is_some_and(|e| !e.is_empty()) {
        policy_types = vec![nm::PolicyType::Ingress, nm::PolicyType::Egress];
    }
    let mut rules = |field: &str, list: Vec<(Option<&Vec<_>>, Option<&Vec<_>>)>| -> Vec<nm::PolicyRule> {
        let mut out = Vec::new();
        for (i, (peers, ports)) in list.into_iter().enumerate() {
            let before = problems.0.len();
            let rule = policy_rule(&mut problems, &format!("{field}[{i}]"), peers, ports);
            if problems.0.len() == before {
                out.push(rule);
            } else {
                problems.push(format!("{field}[{i}]"), "left out: it allows nothing");
            }
        }
        out
    };
    let ingress =
        rules("spec.ingress", spec.ingress.iter().flatten().map(|r| (r.from.as_ref(), r.ports.as_ref())).collect());
    let egress =
        rules("spec.egress", spec.egress.iter().flatten().map(|r| (r.to.as_ref(), r.ports.as_ref())).collect());
    Converted {
        object: Some(nm::NetworkPolicy { namespace, name, pod_selector, policy_types, ingress, egress }),
        problems: problems.0,
        annotation_broken: false,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use kube::api::ObjectMeta;

    use super::*;

    fn meta(name: &str) -> ObjectMeta {
        ObjectMeta { namespace: Some("default".into()), name: Some(name.into()), ..Default::default() }
    }

    #[test]
    fn service_without_ports_is_rejected_with_the_field() {
        let svc = Service {
            metadata: meta("web"),
            spec: Some(ServiceSpec { cluster_ip: Some("10.96.0.10".into()), ..Default::default() }),
            ..Default::default()
        };
        let c = service(&svc);
        assert!(c.object.is_none());
        assert_eq!(c.problems[0].field, "spec.ports");
        // Headless without ports is fine: nothing to program.
        let headless = Service {
            metadata: meta("h"),
            spec: Some(ServiceSpec { cluster_ip: Some("None".into()), ..Default::default() }),
            ..Default::default()
        };
        assert!(service(&headless).object.is_some());
    }

    #[test]
    fn bad_fields_are_named_and_skipped() {
        let svc = Service {
            metadata: meta("web"),
            spec: Some(ServiceSpec {
                cluster_ips: Some(vec!["10.96.0.10".into()]),
                ports: Some(vec![
                    ServicePort { port: 80, protocol: Some("QUIC".into()), ..Default::default() },
                    ServicePort { port: 70000, ..Default::default() },
                    ServicePort { port: 443, ..Default::default() },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let c = service(&svc);
        let fields: Vec<&str> = c.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["spec.ports[0].protocol", "spec.ports[1].port"]);
        assert_eq!(c.object.unwrap().ports.len(), 1);

        let mut p = Pod { metadata: meta("p"), ..Default::default() };
        p.metadata.annotations = Some([(POD_NETWORKS.to_owned(), "{not json".to_owned())].into_iter().collect());
        let c = pod(&p);
        assert!(c.annotation_broken);
        assert!(c.object.unwrap().network.is_none());
        assert!(c.problems[0].to_string().contains("skein.dev/pod-networks"));
    }

    #[test]
    fn a_bad_field_takes_its_whole_rule_out_never_just_the_field() {
        use k8s_openapi::api::networking::v1::{
            NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPort, NetworkPolicySpec,
        };
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
        let port = |protocol: &str, port: i32| NetworkPolicyPort {
            protocol: Some(protocol.into()),
            port: Some(IntOrString::Int(port)),
            ..Default::default()
        };
        let np = NetworkPolicy {
            metadata: meta("np"),
            spec: Some(NetworkPolicySpec {
                ingress: Some(vec![
                    NetworkPolicyIngressRule { ports: Some(vec![port("QUIC", 443)]), ..Default::default() },
                    NetworkPolicyIngressRule { ports: Some(vec![port("TCP", 80)]), ..Default::default() },
                ]),
                egress: Some(vec![NetworkPolicyEgressRule {
                    ports: Some(vec![port("UDP", 70000)]),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        };
        let c = network_policy(&np);
        let p = c.object.expect("programmed without the bad rules");
        // The QUIC rule would allow every port if only its port were dropped.
        assert_eq!(p.ingress.len(), 1);
        assert_eq!(p.ingress[0].ports[0].port, Some(nm::PortRef::Number(80)));
        // Egress stays a type of the policy although its only rule is gone: deny all.
        assert!(p.egress.is_empty());
        assert_eq!(p.policy_types, vec![nm::PolicyType::Ingress, nm::PolicyType::Egress]);
        let fields: Vec<&str> = c.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            ["spec.ingress[0].ports[0].protocol", "spec.ingress[0]", "spec.egress[0].ports[0].port", "spec.egress[0]"]
        );

        // A pod selector that does not parse: whom the policy isolates is unknown.
        let mut bad = np.clone();
        bad.spec.as_mut().unwrap().pod_selector = Some(K8sSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "app".into(),
                operator: "Near".into(),
                values: None,
            }]),
            ..Default::default()
        });
        let c = network_policy(&bad);
        assert!(c.object.is_none());
        assert_eq!(c.problems[0].field, "spec.podSelector.matchExpressions[0].operator");
    }
}
