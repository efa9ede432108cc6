//! The scheduler stand-in: binds every pending pod to a Ready node that matches its
//! `nodeSelector`, the one running the fewest pods (ties by name), through `pods/binding`
//! as kube-scheduler does. A pod no node fits gets `PodScheduled=False, Unschedulable`.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

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

/// Decides where every unbound pod goes, given all pods and nodes. Pure.
pub fn schedule(pods: &[Arc<Pod>], nodes: &[Arc<Node>]) -> Vec<Decision> {
    let mut load: BTreeMap<String, usize> = nodes.iter().map(|n| (n.name_any(), 0)).collect();
    for pod in pods.iter().filter(|p| !pod_finished(p)) {
        if let Some(node) = bound_node(pod)
            && let Some(count) = load.get_mut(node)
        {
            *count += 1;
        }
    }
    let mut pending: Vec<&Arc<Pod>> =
        pods.iter().filter(|p| bound_node(p).is_none() && !pod_finished(p) && wants_default_scheduler(p)).collect();
    // Oldest first, then by name: a stable order, like the scheduler's queue.
    pending.sort_by_key(|p| (p.metadata.creation_timestamp.clone().map(|t| t.0), p.namespace(), p.name_any()));
    let mut decisions = Vec::new();
    for pod in pending {
        let selector = pod.spec.as_ref().and_then(|s| s.node_selector.clone()).unwrap_or_default();
        let ready: Vec<&Arc<Node>> = nodes.iter().filter(|n| node_schedulable(n)).collect();
        let fits = |node: &Arc<Node>| selector.iter().all(|(k, v)| node.labels().get(k) == Some(v));
        let best = ready
            .iter()
            .filter(|n| fits(n))
            .min_by_key(|n| (load.get(&n.name_any()).copied().unwrap_or(0), n.name_any()));
        let namespace = pod.namespace().unwrap_or_default();
        match best {
            Some(node) => {
                let node = node.name_any();
                *load.entry(node.clone()).or_default() += 1;
                decisions.push(Decision::Bind { namespace, pod: pod.name_any(), node });
            }
            None => {
                let unready = nodes.len() - ready.len();
                let mismatched = ready.len() - ready.iter().filter(|n| fits(n)).count();
                let mut reasons = Vec::new();
                if unready > 0 {
                    reasons.push(format!("{unready} node(s) were not ready"));
                }
                if mismatched > 0 {
                    reasons.push(format!("{mismatched} node(s) didn't match Pod's node affinity/selector"));
                }
                let message = format!("0/{} nodes are available: {}.", nodes.len(), reasons.join(", "));
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
