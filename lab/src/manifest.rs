//! `skein-lab apply -f FILE.yaml`: standard Kubernetes YAML (one or more documents) holding
//! Namespaces, Pods, Deployments, Jobs, Services and NetworkPolicies. Every document is parsed and checked
//! before anything is applied, so one bad object changes nothing; errors name the document,
//! the object and the field.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod, PodSpec, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// One object of a manifest.
#[derive(Debug, Clone)]
pub enum Manifest {
    /// `v1` Namespace.
    Namespace(Namespace),
    /// `v1` Pod.
    Pod(Box<Pod>),
    /// `apps/v1` Deployment.
    Deployment(Box<Deployment>),
    /// `batch/v1` Job.
    Job(Box<Job>),
    /// `v1` Service.
    Service(Box<Service>),
    /// `networking.k8s.io/v1` NetworkPolicy.
    NetworkPolicy(NetworkPolicy),
}

/// A manifest that cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not YAML.
    #[error("not valid YAML: {0}")]
    Yaml(String),
    /// A document that is not a supported object.
    #[error("document {index}: {message}")]
    Document {
        /// 1-based document number.
        index: usize,
        /// What is wrong.
        message: String,
    },
}

impl Manifest {
    /// `pod/web-1`, `service/web`, … as kubectl prints them.
    pub fn describe(&self) -> String {
        match self {
            Manifest::Namespace(o) => format!("namespace/{}", o.name_any()),
            Manifest::Pod(o) => format!("pod/{}", o.name_any()),
            Manifest::Deployment(o) => format!("deployment.apps/{}", o.name_any()),
            Manifest::Job(o) => format!("job.batch/{}", o.name_any()),
            Manifest::Service(o) => format!("service/{}", o.name_any()),
            Manifest::NetworkPolicy(o) => format!("networkpolicy.networking.k8s.io/{}", o.name_any()),
        }
    }

    fn namespace(&self) -> Option<String> {
        match self {
            Manifest::Namespace(_) => None,
            Manifest::Pod(o) => o.namespace(),
            Manifest::Deployment(o) => o.namespace(),
            Manifest::Job(o) => o.namespace(),
            Manifest::Service(o) => o.namespace(),
            Manifest::NetworkPolicy(o) => o.namespace(),
        }
    }

    fn set_namespace(&mut self, namespace: &str) {
        let meta = match self {
            Manifest::Namespace(_) => return,
            Manifest::Pod(o) => &mut o.metadata,
            Manifest::Deployment(o) => &mut o.metadata,
            Manifest::Job(o) => &mut o.metadata,
            Manifest::Service(o) => &mut o.metadata,
            Manifest::NetworkPolicy(o) => &mut o.metadata,
        };
        meta.namespace = Some(namespace.to_string());
    }
}

fn typed<K: DeserializeOwned>(value: Value, what: &str) -> Result<K, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." { format!("{what}: {}", e.inner()) } else { format!("{what}: {path}: {}", e.inner()) }
    })
}

/// Parses a multi-document YAML text. Empty documents are skipped; a document whose
/// namespace is unset gets `default_namespace`.
pub fn parse(text: &str, default_namespace: &str) -> Result<Vec<Manifest>, Vec<ManifestError>> {
    let documents: Vec<Value> = match serde_saphyr::from_multiple(text) {
        Ok(documents) => documents,
        Err(e) => return Err(vec![ManifestError::Yaml(e.to_string())]),
    };
    let mut manifests = Vec::new();
    let mut errors = Vec::new();
    for (i, document) in documents.into_iter().enumerate() {
        let index = i + 1;
        if document.is_null() {
            continue;
        }
        match parse_document(document) {
            Ok(mut manifest) => {
                if manifest.namespace().is_none() {
                    manifest.set_namespace(default_namespace);
                }
                manifests.push(manifest);
            }
            Err(message) => errors.push(ManifestError::Document { index, message }),
        }
    }
    if errors.is_empty() { Ok(manifests) } else { Err(errors) }
}

/// Checks the API server makes of a pod spec that the lab relies on: extended resources
/// (device plugins' `skein.dev/rdma`) are whole numbers, and a request equals its limit.
fn check_pod_spec(what: &str, field: &str, spec: &PodSpec) -> Result<(), String> {
    let containers = spec.init_containers.iter().flatten().map(|c| ("initContainers", c));
    for (i, (list, container)) in containers.chain(spec.containers.iter().map(|c| ("containers", c))).enumerate() {
        let Some(resources) = container.resources.as_ref() else { continue };
        let index = if list == "containers" { i - spec.init_containers.as_ref().map_or(0, Vec::len) } else { i };
        for (kind, map) in [("requests", &resources.requests), ("limits", &resources.limits)] {
            for (name, quantity) in map.iter().flatten() {
                if crate::devices::is_extended_resource(name) && crate::devices::device_count(&quantity.0).is_none() {
                    return Err(format!(
                        "{what}: {field}.{list}[{index}].resources.{kind}[{name}]: {:?} must be a whole number",
                        quantity.0
                    ));
                }
            }
        }
        if let (Some(requests), Some(limits)) = (&resources.requests, &resources.limits) {
            for (name, request) in requests {
                if crate::devices::is_extended_resource(name)
                    && let Some(limit) = limits.get(name)
                    && request != limit
                {
                    return Err(format!(
                        "{what}: {field}.{list}[{index}].resources.requests[{name}]: {:?} must be equal to the limit {:?}",
                        request.0, limit.0
                    ));
                }
            }
        }
    }
    Ok(())
}

fn parse_document(document: Value) -> Result<Manifest, String> {
    let Value::Object(map) = &document else {
        return Err(format!("expected a Kubernetes object (a mapping), got {document}"));
    };
    let api_version = map.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = map.get("kind").and_then(Value::as_str).unwrap_or("");
    let name = map.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or("");
    if api_version.is_empty() || kind.is_empty() {
        return Err("apiVersion and kind are required".into());
    }
    if name.is_empty() {
        return Err(format!("{kind}: metadata.name is required"));
    }
    let what = format!("{kind} {name:?}");
    let manifest = match (api_version, kind) {
        ("v1", "Namespace") => Manifest::Namespace(typed(document, &what)?),
        ("v1", "Pod") => {
            let pod: Pod = typed(document, &what)?;
            let Some(spec) = pod.spec.as_ref().filter(|s| !s.containers.is_empty()) else {
                return Err(format!("{what}: spec.containers must list at least one container"));
            };
            check_pod_spec(&what, "spec", spec)?;
            Manifest::Pod(Box::new(pod))
        }
        ("apps/v1", "Deployment") => {
            let deployment: Deployment = typed(document.clone(), &what)?;
            let spec = deployment.spec.as_ref().ok_or_else(|| format!("{what}: spec is required"))?;
            if spec.template.spec.as_ref().is_none_or(|s| s.containers.is_empty()) {
                return Err(format!("{what}: spec.template.spec.containers must list at least one container"));
            }
            let labels = spec.template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
            let selector = document.pointer("/spec/selector").cloned().unwrap_or(Value::Null);
            let selects_something = ["matchLabels", "matchExpressions"].iter().any(|k| {
                selector.get(*k).is_some_and(|v| {
                    v.as_object().is_some_and(|m| !m.is_empty()) || v.as_array().is_some_and(|a| !a.is_empty())
                })
            });
            if !selects_something {
                return Err(format!(
                    "{what}: spec.selector must select the template's pods (matchLabels or matchExpressions)"
                ));
            }
            if !skein_kube_fake::selector_matches(&selector, &labels) {
                return Err(format!("{what}: spec.selector does not match spec.template.metadata.labels"));
            }
            if let Some(pod_spec) = spec.template.spec.as_ref() {
                check_pod_spec(&what, "spec.template.spec", pod_spec)?;
            }
            Manifest::Deployment(Box::new(deployment))
        }
        ("batch/v1", "Job") => {
            let job: Job = typed(document, &what)?;
            let spec = job.spec.as_ref().ok_or_else(|| format!("{what}: spec is required"))?;
            let Some(pod_spec) = spec.template.spec.as_ref().filter(|s| !s.containers.is_empty()) else {
                return Err(format!("{what}: spec.template.spec.containers must list at least one container"));
            };
            match pod_spec.restart_policy.as_deref() {
                Some("OnFailure" | "Never") => {}
                other => {
                    return Err(format!(
                        "{what}: spec.template.spec.restartPolicy: {other:?}: a Job's pods need OnFailure or Never"
                    ));
                }
            }
            if spec.completion_mode.as_deref() == Some("Indexed")
                && spec.completions.is_none()
                && spec.parallelism.is_some()
            {
                return Err(format!("{what}: spec.completions is required when completionMode is Indexed"));
            }
            check_pod_spec(&what, "spec.template.spec", pod_spec)?;
            Manifest::Job(Box::new(job))
        }
        ("v1", "Service") => {
            let service: Service = typed(document, &what)?;
            for (i, port) in service.spec.iter().flat_map(|s| s.ports.iter().flatten()).enumerate() {
                if let Some(protocol) = &port.protocol
                    && !matches!(protocol.as_str(), "TCP" | "UDP" | "SCTP")
                {
                    return Err(format!("{what}: spec.ports[{i}].protocol: {protocol:?} is not TCP, UDP or SCTP"));
                }
            }
            Manifest::Service(Box::new(service))
        }
        ("networking.k8s.io/v1", "NetworkPolicy") => Manifest::NetworkPolicy(typed(document, &what)?),
        _ => {
            return Err(format!(
                "{what}: {api_version} {kind} is not served by the lab (it applies v1 Namespace, Pod, Service, apps/v1 Deployment, batch/v1 Job and networking.k8s.io/v1 NetworkPolicy)"
            ));
        }
    };
    Ok(manifest)
}

/// What applying one object did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It did not exist.
    Created,
    /// It existed and changed.
    Configured,
    /// It existed and nothing changed.
    Unchanged,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
        })
    }
}

async fn apply_one<K>(api: Api<K>, object: &K) -> Result<Outcome, kube::Error>
where
    K: kube::Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    let before = api.get_opt(&name).await?.and_then(|o| o.meta().resource_version.clone());
    let params = PatchParams::apply("skein-lab").force();
    let after = api.patch(&name, &params, &Patch::Apply(object)).await?;
    Ok(match before {
        None => Outcome::Created,
        Some(rv) if Some(&rv) == after.meta().resource_version.as_ref() => Outcome::Unchanged,
        Some(_) => Outcome::Configured,
    })
}

/// Applies the manifests with server-side apply (Namespaces first, then the rest in order),
/// returning one line per object as kubectl prints it; stops at the first API error.
pub async fn apply(client: &Client, manifests: &[Manifest]) -> anyhow::Result<Vec<String>> {
    let mut ordered: Vec<&Manifest> = manifests.iter().filter(|m| matches!(m, Manifest::Namespace(_))).collect();
    ordered.extend(manifests.iter().filter(|m| !matches!(m, Manifest::Namespace(_))));
    let mut lines = Vec::new();
    for manifest in ordered {
        let namespace = manifest.namespace().unwrap_or_default();
        let outcome = match manifest {
            Manifest::Namespace(o) => apply_one(Api::<Namespace>::all(client.clone()), o).await,
            Manifest::Pod(o) => apply_one(Api::<Pod>::namespaced(client.clone(), &namespace), o.as_ref()).await,
            Manifest::Deployment(o) => {
                apply_one(Api::<Deployment>::namespaced(client.clone(), &namespace), o.as_ref()).await
            }
            Manifest::Job(o) => apply_one(Api::<Job>::namespaced(client.clone(), &namespace), o.as_ref()).await,
            Manifest::Service(o) => apply_one(Api::<Service>::namespaced(client.clone(), &namespace), o.as_ref()).await,
            Manifest::NetworkPolicy(o) => {
                apply_one(Api::<NetworkPolicy>::namespaced(client.clone(), &namespace), o).await
            }
        }
        .map_err(|e| anyhow::anyhow!("{}: {e}", manifest.describe()))?;
        lines.push(format!("{} {outcome}", manifest.describe()));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: shop
  labels: {app: web}
spec:
  nodeName: node1
  containers:
  - name: web
    image: skein-lab/echo
    ports:
    - {name: http, containerPort: 8080}
    - {name: dns, containerPort: 5353, protocol: UDP}
---
# an empty document is skipped
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  sessionAffinity: ClientIP
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: dns, port: 53, targetPort: 5353, protocol: UDP}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny
  namespace: shop
spec:
  podSelector: {}
  policyTypes: [Ingress]
"#;

    #[test]
    fn multi_document_yaml_becomes_typed_objects() {
        let manifests = parse(GOOD, "default").unwrap();
        let described: Vec<String> = manifests.iter().map(Manifest::describe).collect();
        assert_eq!(described, ["namespace/shop", "pod/web-1", "service/web", "networkpolicy.networking.k8s.io/deny"]);
        let Manifest::Pod(pod) = &manifests[1] else { panic!() };
        assert_eq!(pod.namespace().as_deref(), Some("shop"));
        let ports = pod.spec.as_ref().unwrap().containers[0].ports.as_ref().unwrap();
        assert_eq!(ports[1].protocol.as_deref(), Some("UDP"));
        let Manifest::Service(service) = &manifests[2] else { panic!() };
        // No namespace in the document: the default one.
        assert_eq!(service.namespace().as_deref(), Some("default"));
        let spec = service.spec.as_ref().unwrap();
        assert_eq!(spec.session_affinity.as_deref(), Some("ClientIP"));
        assert_eq!(
            spec.ports.as_ref().unwrap()[0].target_port,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("http".into()))
        );
    }

    #[test]
    fn every_bad_document_is_reported_with_its_field() {
        let text = r#"
apiVersion: v1
kind: Pod
metadata: {name: a}
spec:
  containers:
  - name: c
    ports: [{containerPort: "eighty"}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: j}
---
kind: Pod
metadata: {name: b}
---
apiVersion: v1
kind: Service
metadata: {name: s}
spec:
  ports: [{port: 80, protocol: ICMP}]
---
apiVersion: v1
kind: Pod
metadata: {name: empty}
spec: {containers: []}
---
- just
- a list
"#;
        let errors = parse(text, "default").unwrap_err();
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(messages.len(), 6, "{messages:#?}");
        assert!(
            messages[0].starts_with("document 1: Pod \"a\": spec.containers[0].ports[0].containerPort"),
            "{}",
            messages[0]
        );
        assert!(messages[1].contains("apps/v1 DaemonSet is not served"), "{}", messages[1]);
        assert!(messages[2].contains("apiVersion and kind are required"), "{}", messages[2]);
        assert!(messages[3].contains("spec.ports[0].protocol: \"ICMP\""), "{}", messages[3]);
        assert!(messages[4].contains("at least one container"), "{}", messages[4]);
        assert!(messages[5].starts_with("document 6: expected a Kubernetes object"), "{}", messages[5]);
        assert!(parse("a: [unclosed", "default").unwrap_err()[0].to_string().starts_with("not valid YAML"));
    }

    #[tokio::test]
    async fn apply_creates_then_reports_unchanged_and_configured() {
        let server = skein_kube_fake::FakeApiServer::start().await;
        let client = server.client();
        let manifests = parse(GOOD, "default").unwrap();
        let lines = apply(&client, &manifests).await.unwrap();
        assert_eq!(
            lines,
            [
                "namespace/shop created",
                "pod/web-1 created",
                "service/web created",
                "networkpolicy.networking.k8s.io/deny created"
            ]
        );
        let lines = apply(&client, &manifests).await.unwrap();
        assert!(lines.iter().all(|l| l.ends_with("unchanged")), "{lines:?}");
        let changed = GOOD.replace("labels: {app: web}", "labels: {app: web, tier: front}");
        let lines = apply(&client, &parse(&changed, "default").unwrap()).await.unwrap();
        assert_eq!(lines[1], "pod/web-1 configured");
        let pod = server.get(skein_kube_fake::Kind::Pod, Some("shop"), "web-1").unwrap();
        assert_eq!(pod["metadata"]["labels"]["tier"], "front");
        let service = server.get(skein_kube_fake::Kind::Service, Some("default"), "web").unwrap();
        assert!(service["spec"]["clusterIP"].as_str().unwrap().starts_with("10.9"));
    }

    const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web, tier: front}}
    spec:
      containers: [{name: web, image: skein-lab/echo, ports: [{name: http, containerPort: 8080}]}]
"#;

    #[test]
    fn deployments_are_parsed_and_their_selector_checked() {
        let manifests = parse(DEPLOYMENT, "default").unwrap();
        assert_eq!(manifests.iter().map(Manifest::describe).collect::<Vec<_>>(), ["deployment.apps/web"]);
        let mismatched = DEPLOYMENT.replace("matchLabels: {app: web}", "matchLabels: {app: api}");
        let errors = parse(&mismatched, "default").unwrap_err();
        assert!(errors[0].to_string().contains("spec.selector does not match"), "{}", errors[0]);
        let unselective = DEPLOYMENT.replace("selector: {matchLabels: {app: web}}", "selector: {}");
        assert!(parse(&unselective, "default").unwrap_err()[0].to_string().contains("spec.selector must select"));
        let empty = DEPLOYMENT.replace(
            "containers: [{name: web, image: skein-lab/echo, ports: [{name: http, containerPort: 8080}]}]",
            "containers: []",
        );
        assert!(parse(&empty, "default").unwrap_err()[0].to_string().contains("at least one container"));
    }

    #[test]
    fn the_example_allreduce_job_parses_and_bad_jobs_are_refused() {
        let text = include_str!("../../manifests/examples/allreduce-job.yaml");
        let manifests = parse(text, "default").unwrap();
        let described: Vec<String> = manifests.iter().map(Manifest::describe).collect();
        assert_eq!(described, ["service/skein-allreduce", "job.batch/skein-allreduce"]);
        let always = text.replace("restartPolicy: Never", "restartPolicy: Always");
        let errors = parse(&always, "default").unwrap_err();
        assert!(errors[0].to_string().contains("restartPolicy: Some(\"Always\")"), "{}", errors[0]);
        let fractional = text.replace("skein.dev/rdma: 1", "skein.dev/rdma: 500m");
        let errors = parse(&fractional, "default").unwrap_err();
        assert!(
            errors[0].to_string().contains(
                "spec.template.spec.containers[0].resources.limits[skein.dev/rdma]: \"500m\" must be a whole number"
            ),
            "{}",
            errors[0]
        );
    }

    #[tokio::test]
    async fn deployments_apply_created_unchanged_configured() {
        let server = skein_kube_fake::FakeApiServer::start().await;
        let client = server.client();
        let text = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop}}\n---{DEPLOYMENT}");
        assert_eq!(apply(&client, &parse(&text, "default").unwrap()).await.unwrap()[1], "deployment.apps/web created");
        assert_eq!(
            apply(&client, &parse(&text, "default").unwrap()).await.unwrap()[1],
            "deployment.apps/web unchanged"
        );
        let scaled = text.replace("replicas: 2", "replicas: 4");
        assert_eq!(
            apply(&client, &parse(&scaled, "default").unwrap()).await.unwrap()[1],
            "deployment.apps/web configured"
        );
        let stored = server.get(skein_kube_fake::Kind::Deployment, Some("shop"), "web").unwrap();
        assert_eq!(stored["spec"]["replicas"], 4);
        assert_eq!(stored["spec"]["strategy"]["type"], "RollingUpdate", "the API server's defaults");
    }
}
