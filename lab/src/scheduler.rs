//! The scheduler stand-in: binds every pending pod to a Ready node that matches its
//! `nodeSelector`, has room for its extended-resource requests (a device plugin's
//! `skein.dev/rdma`: the node's allocatable minus what its pods request) and satisfies its
//! required pod anti-affinity; among those, the one its preferred pod anti-affinity likes
//! best, then the one running the fewest pods (ties by name), bound through `pods/binding` as
//! kube-scheduler does. A pod no node fits gets `PodScheduled=False, Unschedulable` with
//! kube-scheduler's wording (`0/3 nodes are available: 3 Insufficient skein.dev/rdma.`).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, PodAffinityTerm};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::devices::{container_requests, device_count, is_extended_resource};
use crate::watch::{ReadyWait, reflect, run_loop};

/// Whether a node takes new pods: Ready condition True and not cordoned.
pub fn node_schedulable(node: &Node) -> bool {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    ready && !node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false)
}

/// Whether a pod is done (its sandbox is or will be gone).
pub fn pod_finished(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

fn bound_node(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).filter(|n| !n.is_empty())
}

fn wants_default_scheduler(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.scheduler_name.as_deref()).is_none_or(|s| s == "default-scheduler")
}

/// A scheduling decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Bind the pod (namespace, name) to the node.
    Bind {
        /// Pod namespace.
        namespace: String,
        /// Pod name.
        pod: String,
        /// The chosen node.
        node: String,
    },
    /// No node fits the pod.
    Unschedulable {
        /// Pod namespace.
        namespace: String,
        /// Pod name.
        pod: String,
        /// Why, as kube-scheduler words it.
        message: String,
    },
}

/// A pod's extended-resource requests: the sum over its containers, or the largest init
/// container's if that is more (kube-scheduler's effective request). `Err` names a quantity
/// that is not a whole number.
pub fn extended_requests(pod: &Pod) -> Result<BTreeMap<String, usize>, String> {
    let mut sum: BTreeMap<String, usize> = BTreeMap::new();
    let mut init_max: BTreeMap<String, usize> = BTreeMap::new();
    let spec = pod.spec.as_ref();
    for (containers, init) in [
        (spec.map(|s| s.containers.as_slice()).unwrap_or_default(), false),
        (spec.and_then(|s| s.init_containers.as_deref()).unwrap_or_default(), true),
    ] {
        for container in containers {
            for (name, quantity) in container_requests(container) {
                let count = device_count(&quantity).ok_or_else(|| {
                    format!("container {:?}: {name}: {quantity:?} is not a whole number", container.name)
                })?;
                if init {
                    let slot = init_max.entry(name).or_default();
                    *slot = (*slot).max(count);
                } else {
                    *sum.entry(name).or_default() += count;
                }
            }
        }
    }
    for (name, count) in init_max {
        let slot = sum.entry(name).or_default();
        *slot = (*slot).max(count);
    }
    Ok(sum)
}

/// A node's allocatable extended resources.
fn allocatable(node: &Node) -> BTreeMap<String, usize> {
    node.status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref())
        .into_iter()
        .flatten()
        .filter(|(name, _)| is_extended_resource(name))
        .filter_map(|(name, q)| Some((name.clone(), device_count(&q.0)?)))
        .collect()
}

/// Whether `term` selects `other` (same namespace unless the term names namespaces).
fn term_selects(term: &PodAffinityTerm, pod: &Pod, other: &Pod) -> bool {
    let namespaces = term.namespaces.clone().unwrap_or_default();
    let namespace = other.namespace().unwrap_or_default();
    let in_scope = if namespaces.is_empty() {
        pod.namespace().unwrap_or_default() == namespace
    } else {
        namespaces.contains(&namespace)
    };
    let selector =
        term.label_selector.as_ref().and_then(|s| serde_json::to_value(s).ok()).unwrap_or(serde_json::Value::Null);
    in_scope && !selector.is_null() && skein_kube_fake::selector_matches(&selector, other.labels())
}

/// The topology value of `node` for `key`.
fn topology(node: &Node, key: &str) -> Option<String> {
    node.labels().get(key).cloned()
}

/// Pods already on each node (bound before this round, or placed earlier in it).
type Placed<'a> = BTreeMap<String, Vec<&'a Pod>>;

/// Whether placing `pod` on `node` breaks a required anti-affinity term, and the weight of
/// preferred terms it breaks.
fn anti_affinity(pod: &Pod, node: &Node, nodes: &[Arc<Node>], placed: &Placed<'_>) -> (bool, i64) {
    let Some(anti) = pod.spec.as_ref().and_then(|s| s.affinity.as_ref()).and_then(|a| a.pod_anti_affinity.as_ref())
    else {
        return (false, 0);
    };
    let clash = |term: &PodAffinityTerm| {
        let Some(value) = topology(node, &term.topology_key) else { return false };
        nodes
            .iter()
            .filter(|n| topology(n, &term.topology_key).as_deref() == Some(value.as_str()))
            .flat_map(|n| placed.get(&n.name_any()).into_iter().flatten())
            .any(|other| term_selects(term, pod, other))
    };
    let required = anti.required_during_scheduling_ignored_during_execution.iter().flatten().any(clash);
    let penalty = anti
        .preferred_during_scheduling_ignored_during_execution
        .iter()
        .flatten()
        .filter(|w| clash(&w.pod_affinity_term))
        .map(|w| i64::from(w.weight))
        .sum();
    (required, penalty)
}

/// Decides where every unbound pod goes, given all pods and nodes. Pure.
pub fn schedule(pods: &[Arc<Pod>], nodes: &[Arc<Node>]) -> Vec<Decision> {
    let mut load: BTreeMap<String, usize> = nodes.iter().map(|n| (n.name_any(), 0)).collect();
    let mut used: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut placed: Placed<'_> = BTreeMap::new();
    for pod in pods.iter().filter(|p| !pod_finished(p)) {
        if let Some(node) = bound_node(pod)
            && let Some(count) = load.get_mut(node)
        {
            *count += 1;
            placed.entry(node.to_string()).or_default().push(pod);
            for (name, n) in extended_requests(pod).unwrap_or_default() {
                *used.entry(node.to_string()).or_default().entry(name).or_default() += n;
            }
        }
    }
    let mut pending: Vec<&Arc<Pod>> =
        pods.iter().filter(|p| bound_node(p).is_none() && !pod_finished(p) && wants_default_scheduler(p)).collect();
    // Oldest first, then by name: a stable order, like the scheduler's queue.
    pending.sort_by_key(|p| (p.metadata.creation_timestamp.clone().map(|t| t.0), p.namespace(), p.name_any()));
    let mut decisions = Vec::new();
    for pod in pending {
        let namespace = pod.namespace().unwrap_or_default();
        let requests = match extended_requests(pod) {
            Ok(requests) => requests,
            Err(message) => {
                decisions.push(Decision::Unschedulable { namespace, pod: pod.name_any(), message });
                continue;
            }
        };
        let selector = pod.spec.as_ref().and_then(|s| s.node_selector.clone()).unwrap_or_default();
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut fitting: Vec<(i64, usize, String)> = Vec::new();
        for node in nodes {
            let name = node.name_any();
            if !node_schedulable(node) {
                *reasons.entry("node(s) were not ready".into()).or_default() += 1;
                continue;
            }
            if !selector.iter().all(|(k, v)| node.labels().get(k) == Some(v)) {
                *reasons.entry("node(s) didn't match Pod's node affinity/selector".into()).or_default() += 1;
                continue;
            }
            let free = allocatable(node);
            let node_used = used.get(&name);
            let short: Vec<&String> = requests
                .iter()
                .filter(|(r, n)| {
                    **n > 0
                        && free.get(*r).copied().unwrap_or(0)
                            < node_used.and_then(|u| u.get(*r)).copied().unwrap_or(0) + **n
                })
                .map(|(r, _)| r)
                .collect();
            if !short.is_empty() {
                for resource in short {
                    *reasons.entry(format!("Insufficient {resource}")).or_default() += 1;
                }
                continue;
            }
            let (required, penalty) = anti_affinity(pod, node, nodes, &placed);
            if required {
                *reasons.entry("node(s) didn't match pod anti-affinity rules".into()).or_default() += 1;
                continue;
            }
            fitting.push((penalty, load.get(&name).copied().unwrap_or(0), name));
        }
        match fitting.into_iter().min() {
            Some((_, _, node)) => {
                *load.entry(node.clone()).or_default() += 1;
                placed.entry(node.clone()).or_default().push(pod);
                for (name, n) in &requests {
                    *used.entry(node.clone()).or_default().entry(name.clone()).or_default() += n;
                }
                decisions.push(Decision::Bind { namespace, pod: pod.name_any(), node });
            }
            None => {
                // kube-scheduler's wording: "N reason" strings, sorted.
                let mut text: Vec<String> = reasons.iter().map(|(reason, n)| format!("{n} {reason}")).collect();
                text.sort();
                let message = format!("0/{} nodes are available: {}.", nodes.len(), text.join(", "));
                decisions.push(Decision::Unschedulable { namespace, pod: pod.name_any(), message });
            }
        }
    }
    decisions
}

fn unschedulable_already(pod: &Pod, message: &str) -> bool {
    pod.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| {
        c.iter().any(|c| c.type_ == "PodScheduled" && c.status == "False" && c.message.as_deref() == Some(message))
    })
}

/// Runs the scheduler until `stop`.
pub async fn run(client: Client, stop: CancellationToken) {
    let changed = Arc::new(Notify::new());
    let pods = reflect(Api::<Pod>::all(client.clone()), watcher::Config::default(), changed.clone(), stop.clone());
    let nodes = reflect(Api::<Node>::all(client.clone()), watcher::Config::default(), changed.clone(), stop.clone());
    let ready: Vec<Box<dyn ReadyWait>> = vec![Box::new(pods.clone()), Box::new(nodes.clone())];
    run_loop("scheduler", ready, changed, stop, || {
        let (pods, nodes, client) = (pods.state(), nodes.state(), client.clone());
        async move {
            for decision in schedule(&pods, &nodes) {
                match decision {
                    Decision::Bind { namespace, pod, node } => {
                        let api = Api::<Pod>::namespaced(client.clone(), &namespace);
                        let binding = json!({
                            "apiVersion": "v1", "kind": "Binding",
                            "metadata": {"name": pod, "namespace": namespace},
                            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
                        });
                        match api
                            .create_subresource::<_, serde_json::Value>(
                                "binding",
                                &pod,
                                &PostParams::default(),
                                &binding,
                            )
                            .await
                        {
                            Ok(_) => tracing::info!(pod = %format!("{namespace}/{pod}"), %node, "scheduled"),
                            Err(error) => {
                                tracing::warn!(pod = %format!("{namespace}/{pod}"), %node, %error, "binding failed")
                            }
                        }
                    }
                    Decision::Unschedulable { namespace, pod, message } => {
                        let current =
                            pods.iter().find(|p| p.namespace().as_deref() == Some(&namespace) && p.name_any() == pod);
                        if current.is_some_and(|p| unschedulable_already(p, &message)) {
                            continue;
                        }
                        let patch = json!({"status": {"conditions": [{
                            "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
                            "lastTransitionTime": k8s_openapi::jiff::Timestamp::now(),
                        }]}});
                        let api = Api::<Pod>::namespaced(client.clone(), &namespace);
                        if let Err(error) =
                            api.patch_status(&pod, &PatchParams::default(), &Patch::Strategic(patch)).await
                        {
                            tracing::debug!(%error, "cannot mark pod unschedulable");
                        }
                    }
                }
            }
            Ok(())
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn node(name: &str, ready: bool, labels: Value) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "labels": labels},
                "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
            }))
            .unwrap(),
        )
    }

    fn pod(name: &str, node: Option<&str>, selector: Value) -> Arc<Pod> {
        let mut spec = json!({"containers": [{"name": "c"}], "nodeSelector": selector});
        if let Some(node) = node {
            spec["nodeName"] = node.into();
        }
        Arc::new(serde_json::from_value(json!({"metadata": {"name": name, "namespace": "d"}, "spec": spec})).unwrap())
    }

    fn binds(decisions: &[Decision]) -> Vec<(String, String)> {
        decisions
            .iter()
            .filter_map(|d| match d {
                Decision::Bind { pod, node, .. } => Some((pod.clone(), node.clone())),
                Decision::Unschedulable { .. } => None,
            })
            .collect()
    }

    #[test]
    fn spreads_pods_over_ready_nodes_by_load() {
        let nodes = [node("node1", true, json!({})), node("node2", true, json!({})), node("node3", false, json!({}))];
        let pods = [
            pod("bound", Some("node1"), json!({})),
            pod("a", None, json!({})),
            pod("b", None, json!({})),
            pod("c", None, json!({})),
        ];
        let decisions = schedule(&pods, &nodes);
        assert_eq!(
            binds(&decisions),
            [("a".into(), "node2".into()), ("b".into(), "node1".into()), ("c".into(), "node2".into())]
        );
    }

    #[test]
    fn node_selectors_are_honoured_and_misfits_explained() {
        let nodes = [
            node("node1", true, json!({"kubernetes.io/hostname": "node1"})),
            node("node2", true, json!({"kubernetes.io/hostname": "node2"})),
            node("node3", false, json!({"kubernetes.io/hostname": "node3"})),
        ];
        let pods = [
            pod("pinned", None, json!({"kubernetes.io/hostname": "node2"})),
            pod("nowhere", None, json!({"kubernetes.io/hostname": "node3"})),
        ];
        let decisions = schedule(&pods, &nodes);
        assert_eq!(binds(&decisions), [("pinned".into(), "node2".into())]);
        let Decision::Unschedulable { pod, message, .. } = &decisions[0] else { panic!("{decisions:?}") };
        assert_eq!(pod, "nowhere");
        assert_eq!(
            message,
            "0/3 nodes are available: 1 node(s) were not ready, 2 node(s) didn't match Pod's node affinity/selector."
        );
    }

    fn rdma_node(name: &str, devices: &str) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
                "status": {"conditions": [{"type": "Ready", "status": "True"}],
                           "allocatable": {"cpu": "2", "skein.dev/rdma": devices}}
            }))
            .unwrap(),
        )
    }

    fn rank(name: &str, node: Option<&str>, rdma: &str, anti: Value) -> Arc<Pod> {
        let mut spec = json!({"containers": [{"name": "c", "resources": {"limits": {"skein.dev/rdma": rdma}}}],
                              "affinity": {"podAntiAffinity": anti}});
        if let Some(node) = node {
            spec["nodeName"] = node.into();
        }
        Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": name, "namespace": "d", "labels": {"app": "rank"}}, "spec": spec}),
            )
            .unwrap(),
        )
    }

    #[test]
    fn extended_resources_limit_where_pods_go() {
        let nodes = [rdma_node("node1", "2"), rdma_node("node2", "1"), node("node3", true, json!({}))];
        let pods = [
            rank("bound", Some("node1"), "1", json!({})),
            rank("a", None, "1", json!({})),
            rank("b", None, "1", json!({})),
            rank("c", None, "1", json!({})),
            rank("big", None, "3", json!({})),
            rank("half", None, "500m", json!({})),
        ];
        let decisions = schedule(&pods, &nodes);
        // node1 has one of two left, node2 one: a and b take them (least loaded first), c finds none.
        assert_eq!(binds(&decisions), [("a".into(), "node2".into()), ("b".into(), "node1".into())]);
        let unschedulable: Vec<(&str, &str)> = decisions
            .iter()
            .filter_map(|d| match d {
                Decision::Unschedulable { pod, message, .. } => Some((pod.as_str(), message.as_str())),
                Decision::Bind { .. } => None,
            })
            .collect();
        assert_eq!(unschedulable[0], ("big", "0/3 nodes are available: 3 Insufficient skein.dev/rdma."));
        assert_eq!(unschedulable[1], ("c", "0/3 nodes are available: 3 Insufficient skein.dev/rdma."));
        assert!(unschedulable[2].1.contains("\"500m\" is not a whole number"), "{}", unschedulable[2].1);
        // A finished pod's devices count no more.
        let mut done = (*pods[0]).clone();
        done.status = Some(serde_json::from_value(json!({"phase": "Succeeded"})).unwrap());
        let decisions = schedule(&[Arc::new(done), pods[1].clone(), pods[2].clone(), pods[3].clone()], &nodes);
        assert_eq!(binds(&decisions).len(), 3);
    }

    #[test]
    fn pod_anti_affinity_spreads_ranks_over_nodes() {
        let nodes = [rdma_node("node1", "2"), rdma_node("node2", "2")];
        let preferred = json!({"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": {
            "topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "rank"}}}}]});
        // Without the preference the load would put both on the emptier node1... here node1
        // holds an unrelated pod, so the second rank would follow the load to node1 too.
        let other = Arc::new(
            serde_json::from_value::<Pod>(json!({"metadata": {"name": "x", "namespace": "d"},
                "spec": {"nodeName": "node2", "containers": [{"name": "c"}]}}))
            .unwrap(),
        );
        let pods = [other.clone(), rank("r0", None, "1", preferred.clone()), rank("r1", None, "1", preferred.clone())];
        assert_eq!(binds(&schedule(&pods, &nodes)), [("r0".into(), "node1".into()), ("r1".into(), "node2".into())]);
        let required = json!({"requiredDuringSchedulingIgnoredDuringExecution": [{
            "topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "rank"}}}]});
        let pods = [
            rank("r0", None, "1", required.clone()),
            rank("r1", None, "1", required.clone()),
            rank("r2", None, "1", required),
        ];
        let decisions = schedule(&pods, &nodes);
        assert_eq!(binds(&decisions).len(), 2);
        let Decision::Unschedulable { message, .. } = &decisions[2] else { panic!("{decisions:?}") };
        assert_eq!(message, "0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules.");
    }

    #[tokio::test]
    async fn binds_pods_through_the_api() {
        let server = skein_kube_fake::FakeApiServer::start().await;
        for (name, ready) in [("node1", true), ("node2", true)] {
            server.store().insert_object(&*node(name, ready, json!({}))).unwrap();
        }
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(server.client(), stop.clone()));
        let api = Api::<Pod>::namespaced(server.client(), "default");
        for name in ["p1", "p2"] {
            let p: Pod =
                serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "c"}]}}))
                    .unwrap();
            api.create(&PostParams::default(), &p).await.unwrap();
        }
        let mut nodes = Vec::new();
        for _ in 0..200 {
            nodes = ["p1", "p2"]
                .iter()
                .filter_map(|n| server.get(skein_kube_fake::Kind::Pod, Some("default"), n))
                .filter_map(|p| p["spec"]["nodeName"].as_str().map(String::from))
                .collect();
            if nodes.len() == 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        nodes.sort();
        assert_eq!(nodes, ["node1", "node2"]);
        stop.cancel();
        task.await.unwrap();
    }
}
