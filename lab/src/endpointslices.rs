//! The EndpointSlice controller stand-in: for every Service with a selector, the pods of its
//! namespace that match it and have an address become endpoints (ready when the pod is
//! Ready, or always with `publishNotReadyAddresses`; serving when Ready; a `hostname` when
//! the pod has one and its `subdomain` is the Service), with each Service port's `targetPort`
//! resolved per pod — a named port by the pod's `containerPort` of that name and protocol. Pods whose ports resolve differently
//! land in different slices, one per address family and port set, as in Kubernetes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::layout::fnv1a64;
use crate::scheduler::pod_finished;
use crate::watch::{ReadyWait, reflect, run_loop};

/// The label naming a slice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label naming a slice's manager.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// The manager value Kubernetes' own controller writes (the lab plays that controller).
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

/// Whether a pod's Ready condition is True.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The pod's addresses (`status.podIPs`, else `status.podIP`).
pub fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = pod.status.as_ref() else { return Vec::new() };
    let mut ips: Vec<IpAddr> = status.pod_ips.iter().flatten().filter_map(|ip| ip.ip.parse().ok()).collect();
    if ips.is_empty()
        && let Some(ip) = status.pod_ip.as_ref().and_then(|ip| ip.parse().ok())
    {
        ips.push(ip);
    }
    ips
}

/// Whether `labels` match a Service's equality selector.
pub fn selector_matches(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The pod port a Service port reaches on this pod: a number as given, a name looked up
/// among the pod's container ports of the same protocol; `None` when the name is not there.
pub fn resolve_target_port(service_port: &ServicePort, pod: &Pod) -> Option<i32> {
    let protocol = service_port.protocol.as_deref().unwrap_or("TCP");
    match &service_port.target_port {
        None => Some(service_port.port),
        Some(IntOrString::Int(port)) => Some(*port),
        Some(IntOrString::String(name)) => {
            if let Ok(port) = name.parse::<i32>() {
                return Some(port);
            }
            pod.spec.as_ref()?.containers.iter().flat_map(|c| c.ports.iter().flatten()).find_map(|p| {
                (p.name.as_deref() == Some(name.as_str()) && p.protocol.as_deref().unwrap_or("TCP") == protocol)
                    .then_some(p.container_port)
            })
        }
    }
}

/// The slices a Service should have, given every pod (of any namespace). Empty for a Service
/// without a selector (its endpoints are someone else's).
pub fn desired_slices(service: &Service, pods: &[Arc<Pod>]) -> Vec<EndpointSlice> {
    let Some(spec) = service.spec.as_ref() else { return Vec::new() };
    let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else { return Vec::new() };
    let namespace = service.namespace().unwrap_or_default();
    let service_name = service.name_any();
    let service_ports = spec.ports.clone().unwrap_or_default();
    // (address type, port set) → endpoints.
    type PortSet = Vec<(Option<String>, String, i32)>;
    let mut groups: BTreeMap<(&'static str, PortSet), Vec<Endpoint>> = BTreeMap::new();
    let mut matching: Vec<&Arc<Pod>> = pods
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()))
        .filter(|p| selector_matches(selector, p.labels()))
        .filter(|p| !pod_finished(p) && p.metadata.deletion_timestamp.is_none())
        .collect();
    matching.sort_by_key(|p| p.name_any());
    for pod in matching {
        let ports: PortSet = service_ports
            .iter()
            .filter_map(|sp| {
                resolve_target_port(sp, pod)
                    .map(|port| (sp.name.clone(), sp.protocol.clone().unwrap_or_else(|| "TCP".into()), port))
            })
            .collect();
        // `publishNotReadyAddresses` makes every endpoint ready, so that DNS publishes it (a
        // headless Service's pods meet each other before any is ready); serving stays honest.
        let serving = pod_ready(pod);
        let ready = serving || spec.publish_not_ready_addresses.unwrap_or(false);
        // A pod with a hostname whose subdomain is this Service gets a DNS name under it.
        let pod_spec = pod.spec.as_ref();
        let hostname = pod_spec
            .and_then(|s| s.hostname.clone())
            .filter(|h| !h.is_empty() && pod_spec.and_then(|s| s.subdomain.as_deref()) == Some(service_name.as_str()));
        for ip in pod_ips(pod) {
            let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
            groups.entry((family, ports.clone())).or_default().push(Endpoint {
                addresses: vec![ip.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(ready),
                    serving: Some(serving),
                    terminating: Some(false),
                }),
                hostname: hostname.clone(),
                node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".into()),
                    namespace: Some(namespace.clone()),
                    name: Some(pod.name_any()),
                    uid: pod.uid(),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
    }
    let owner = OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: service_name.clone(),
        uid: service.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    groups
        .into_iter()
        .map(|((family, ports), endpoints)| {
            let key = format!("{family}/{ports:?}");
            let stem: String = service_name.chars().take(52).collect();
            let name = format!("{stem}-{:08x}", fnv1a64(key.as_bytes()) as u32);
            EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(name),
                    namespace: Some(namespace.clone()),
                    labels: Some(BTreeMap::from([
                        (SERVICE_NAME_LABEL.to_string(), service_name.clone()),
                        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
                    ])),
                    owner_references: Some(vec![owner.clone()]),
                    ..Default::default()
                },
                address_type: family.into(),
                endpoints,
                ports: Some(
                    ports
                        .into_iter()
                        .map(|(name, protocol, port)| EndpointPort {
                            name: Some(name.unwrap_or_default()),
                            protocol: Some(protocol),
                            port: Some(port),
                            app_protocol: None,
                        })
                        .collect(),
                ),
            }
        })
        .collect()
}

fn same_content(a: &EndpointSlice, b: &EndpointSlice) -> bool {
    a.address_type == b.address_type
        && a.endpoints == b.endpoints
        && a.ports == b.ports
        && a.metadata.labels == b.metadata.labels
        && a.metadata.owner_references == b.metadata.owner_references
}

/// Brings the cluster's managed slices to what the Services and pods ask for.
pub async fn reconcile(
    client: &Client,
    services: &[Arc<Service>],
    pods: &[Arc<Pod>],
    slices: &[Arc<EndpointSlice>],
) -> anyhow::Result<()> {
    let mut desired: BTreeMap<(String, String), EndpointSlice> = BTreeMap::new();
    for service in services {
        for slice in desired_slices(service, pods) {
            desired.insert((slice.namespace().unwrap_or_default(), slice.name_any()), slice);
        }
    }
    let managed: BTreeMap<(String, String), &Arc<EndpointSlice>> = slices
        .iter()
        .filter(|s| s.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY))
        .map(|s| ((s.namespace().unwrap_or_default(), s.name_any()), s))
        .collect();
    let mut first_error = None;
    for ((namespace, name), slice) in &desired {
        let api = Api::<EndpointSlice>::namespaced(client.clone(), namespace);
        let outcome = match managed.get(&(namespace.clone(), name.clone())) {
            None => api.create(&PostParams::default(), slice).await.map(|_| "created"),
            Some(existing) if same_content(existing, slice) => continue,
            Some(existing) => {
                let mut replacement = slice.clone();
                replacement.metadata.resource_version = existing.resource_version();
                api.replace(name, &PostParams::default(), &replacement).await.map(|_| "updated")
            }
        };
        match outcome {
            Ok(verb) => {
                tracing::info!(slice = %format!("{namespace}/{name}"), endpoints = slice.endpoints.len(), "endpoint slice {verb}")
            }
            Err(error) => {
                first_error.get_or_insert(anyhow::anyhow!("endpoint slice {namespace}/{name}: {error}"));
            }
        }
    }
    let stale: BTreeSet<&(String, String)> = managed.keys().filter(|k| !desired.contains_key(*k)).collect();
    for (namespace, name) in stale {
        let api = Api::<EndpointSlice>::namespaced(client.clone(), namespace);
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => tracing::info!(slice = %format!("{namespace}/{name}"), "endpoint slice deleted"),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => {
                first_error.get_or_insert(anyhow::anyhow!("endpoint slice {namespace}/{name}: {error}"));
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Runs the controller until `stop`.
pub async fn run(client: Client, stop: CancellationToken) {
    let changed = Arc::new(Notify::new());
    let services =
        reflect(Api::<Service>::all(client.clone()), watcher::Config::default(), changed.clone(), stop.clone());
    let pods = reflect(Api::<Pod>::all(client.clone()), watcher::Config::default(), changed.clone(), stop.clone());
    let slices = reflect(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}")),
        changed.clone(),
        stop.clone(),
    );
    let ready: Vec<Box<dyn ReadyWait>> =
        vec![Box::new(services.clone()), Box::new(pods.clone()), Box::new(slices.clone())];
    run_loop("endpointslices", ready, changed, stop, || {
        let (services, pods, slices, client) = (services.state(), pods.state(), slices.state(), client.clone());
        async move { reconcile(&client, &services, &pods, &slices).await }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn pod(name: &str, labels: Value, ip: Option<&str>, ready: bool, ports: Value) -> Arc<Pod> {
        let mut status =
            json!({"phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]});
        if let Some(ip) = ip {
            status["podIP"] = ip.into();
            status["podIPs"] = json!([{"ip": ip}]);
        }
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "demo", "uid": format!("uid-{name}"), "labels": labels},
                "spec": {"nodeName": "node1", "containers": [{"name": "c", "ports": ports}]},
                "status": status,
            }))
            .unwrap(),
        )
    }

    fn service(ports: Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "demo", "uid": "svc-uid"},
            "spec": {"selector": {"app": "web"}, "ports": ports},
        }))
        .unwrap()
    }

    #[test]
    fn named_ports_resolve_per_pod_into_separate_slices() {
        let pods = [
            pod("a", json!({"app": "web"}), Some("10.244.1.5"), true, json!([{"name": "http", "containerPort": 8080}])),
            pod(
                "b",
                json!({"app": "web"}),
                Some("10.244.2.5"),
                false,
                json!([{"name": "http", "containerPort": 9090}]),
            ),
            pod(
                "c",
                json!({"app": "web"}),
                Some("10.244.3.5"),
                true,
                json!([{"name": "http", "containerPort": 8080, "protocol": "UDP"}]),
            ),
            pod("other", json!({"app": "db"}), Some("10.244.1.6"), true, json!([])),
            pod("no-ip", json!({"app": "web"}), None, false, json!([{"name": "http", "containerPort": 8080}])),
            pod("other-ns", json!({"app": "web"}), Some("10.244.1.7"), true, json!([])),
        ];
        let mut pods = pods.to_vec();
        Arc::make_mut(&mut pods[5]).metadata.namespace = Some("elsewhere".into());
        let svc = service(json!([
            {"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"},
            {"name": "metrics", "port": 9100, "protocol": "TCP", "targetPort": 9100},
        ]));
        let slices = desired_slices(&svc, &pods);
        assert_eq!(slices.len(), 3, "{slices:#?}");
        let by_ports: BTreeMap<Vec<i32>, Vec<(String, bool)>> = slices
            .iter()
            .map(|s| {
                assert_eq!(s.labels()[SERVICE_NAME_LABEL], "web");
                assert_eq!(s.address_type, "IPv4");
                (
                    s.ports.iter().flatten().filter_map(|p| p.port).collect(),
                    s.endpoints
                        .iter()
                        .map(|e| (e.addresses[0].clone(), e.conditions.as_ref().unwrap().ready.unwrap()))
                        .collect(),
                )
            })
            .collect();
        assert_eq!(by_ports[&vec![8080, 9100]], [("10.244.1.5".to_string(), true)]);
        assert_eq!(by_ports[&vec![9090, 9100]], [("10.244.2.5".to_string(), false)]);
        // "http" on c is UDP: the TCP port does not resolve there.
        assert_eq!(by_ports[&vec![9100]], [("10.244.3.5".to_string(), true)]);
        let names: BTreeSet<String> = slices.iter().map(|s| s.name_any()).collect();
        assert_eq!(names.len(), 3);
        assert!(names.iter().all(|n| n.starts_with("web-")));
    }

    #[test]
    fn headless_services_publish_hostnames_and_not_ready_pods_when_asked() {
        let mut a = pod("train-0-x", json!({"app": "web"}), Some("10.244.1.5"), false, json!([]));
        let spec = Arc::make_mut(&mut a).spec.as_mut().unwrap();
        (spec.hostname, spec.subdomain) = (Some("train-0".into()), Some("web".into()));
        let mut b = pod("other-sub", json!({"app": "web"}), Some("10.244.2.5"), true, json!([]));
        let spec = Arc::make_mut(&mut b).spec.as_mut().unwrap();
        (spec.hostname, spec.subdomain) = (Some("b".into()), Some("elsewhere".into()));
        let mut svc = service(json!([{"port": 29600}]));
        let spec = svc.spec.as_mut().unwrap();
        (spec.cluster_ip, spec.publish_not_ready_addresses) = (Some("None".into()), Some(true));
        let slices = desired_slices(&svc, &[a.clone(), b.clone()]);
        let endpoints: Vec<(String, Option<String>, bool, bool)> = slices[0]
            .endpoints
            .iter()
            .map(|e| {
                let c = e.conditions.as_ref().unwrap();
                (e.addresses[0].clone(), e.hostname.clone(), c.ready.unwrap(), c.serving.unwrap())
            })
            .collect();
        assert_eq!(
            endpoints,
            [
                ("10.244.2.5".to_string(), None, true, true),
                ("10.244.1.5".to_string(), Some("train-0".to_string()), true, false),
            ]
        );
        svc.spec.as_mut().unwrap().publish_not_ready_addresses = None;
        let slices = desired_slices(&svc, &[a, b]);
        let ready: Vec<bool> =
            slices[0].endpoints.iter().map(|e| e.conditions.as_ref().unwrap().ready.unwrap()).collect();
        assert_eq!(ready, [true, false]);
    }

    #[test]
    fn services_without_selector_get_no_slices() {
        let mut svc = service(json!([{"port": 80}]));
        svc.spec.as_mut().unwrap().selector = None;
        let pods = [pod("a", json!({"app": "web"}), Some("10.244.1.5"), true, json!([]))];
        assert!(desired_slices(&svc, &pods).is_empty());
    }

    #[tokio::test]
    async fn keeps_slices_in_step_with_pods_and_services() {
        let server = skein_kube_fake::FakeApiServer::start().await;
        let store = server.store();
        let add_web_pod = |name: &str, ip: &str| {
            let ports = json!([{"name": "http", "containerPort": 8080}]);
            store.insert_object(&*pod(name, json!({"app": "web"}), Some(ip), true, ports)).unwrap();
        };
        add_web_pod("a", "10.244.1.5");
        let api = Api::<Service>::namespaced(server.client(), "demo");
        api.create(&PostParams::default(), &service(json!([{"name": "http", "port": 80, "targetPort": "http"}])))
            .await
            .unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(server.client(), stop.clone()));
        let wait_for = |want: usize| {
            let server = &server;
            async move {
                for _ in 0..200 {
                    let slices = server.list(skein_kube_fake::Kind::EndpointSlice, Some("demo"));
                    let endpoints: usize = slices.iter().map(|s| s["endpoints"].as_array().map_or(0, Vec::len)).sum();
                    if endpoints == want {
                        return slices;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(25)).await;
                }
                panic!(
                    "never {want} endpoints: {:#?}",
                    server.list(skein_kube_fake::Kind::EndpointSlice, Some("demo"))
                );
            }
        };
        let slices = wait_for(1).await;
        assert_eq!(slices[0]["ports"][0]["port"], 8080);
        assert_eq!(slices[0]["endpoints"][0]["targetRef"]["name"], "a");
        add_web_pod("b", "10.244.2.5");
        wait_for(2).await;
        store.delete(skein_kube_fake::Kind::Pod, Some("demo"), "a");
        wait_for(1).await;
        api.delete("web", &DeleteParams::default()).await.unwrap();
        for _ in 0..200 {
            if server.list(skein_kube_fake::Kind::EndpointSlice, Some("demo")).is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        assert!(server.list(skein_kube_fake::Kind::EndpointSlice, Some("demo")).is_empty());
        stop.cancel();
        task.await.unwrap();
    }
}
