//! The Deployment controller stand-in: runs each `apps/v1` Deployment's pods from its template
//! and reports its `status` the way `kubectl rollout status` reads it. There are no
//! ReplicaSets in the lab's API, so the controller owns the pods directly (ownerReference to
//! the Deployment) and plays both controllers' parts: pods are named
//! `<deployment>-<pod-template-hash>-<5 chars>` and labelled `pod-template-hash` as a
//! ReplicaSet's would be; a template change rolls the pods over within `maxSurge` /
//! `maxUnavailable` (or `Recreate`s them); scaling adds or removes pods; deleting the
//! Deployment deletes its pods (the garbage collector's part).
//!
//! Planning is pure ([`plan`]); the loop around it remembers the pods it created or deleted
//! until its cache sees them (the real controllers' "expectations"), so a reconcile that runs
//! before the watch catches up does not create or delete twice.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::endpointslices::pod_ready;
use crate::scheduler::pod_finished;
use crate::watch::{ReadyWait, reflect, run_loop};

/// The label telling a Deployment's pod templates apart.
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";
/// The revision annotation, on the Deployment and on its pods (in Kubernetes: on the
/// ReplicaSet).
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
/// How long a create or delete is waited for in the cache before it is planned again.
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(30);

/// `rand.SafeEncodeString`: every byte mapped into an alphabet without vowels (so hashes
/// spell no words) or confusable characters.
pub fn safe_encode(text: &str) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    text.bytes().map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char).collect()
}

/// The `pod-template-hash` of a template: FNV-32a of its JSON, safe-encoded as Kubernetes
/// encodes it (the exact value differs from Kubernetes', which hashes Go's printing of it).
pub fn template_hash(template: &PodTemplateSpec) -> String {
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    let hash = bytes.iter().fold(0x811c_9dc5u32, |hash, byte| (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193));
    safe_encode(&hash.to_string())
}

/// `intstr.GetScaledValueFromIntOrPercent`: a count, or a percentage of `total` rounded up or
/// down.
pub fn scaled_value(value: Option<&IntOrString>, default_percent: &str, total: i32, round_up: bool) -> i32 {
    let text = match value {
        Some(IntOrString::Int(n)) => return (*n).max(0),
        Some(IntOrString::String(s)) => s.as_str(),
        None => default_percent,
    };
    let percent: i64 = text.trim_end_matches('%').parse().unwrap_or(0).max(0);
    let scaled = i64::from(total) * percent;
    let value = if round_up { (scaled + 99) / 100 } else { scaled / 100 };
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// Whether the pod is controlled by the object with this uid.
fn controlled_by(pod: &Pod, uid: &str) -> bool {
    pod.metadata.owner_references.iter().flatten().any(|o| o.controller == Some(true) && o.uid == uid)
}

fn deployment_controller_uid(pod: &Pod) -> Option<&str> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true) && o.kind == "Deployment" && o.api_version == "apps/v1")
        .map(|o| o.uid.as_str())
}

fn ready_since(pod: &Pod) -> Option<Timestamp> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0)
}

/// Ready for at least `min_ready_seconds`.
fn available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    if !pod_ready(pod) {
        return false;
    }
    if min_ready_seconds <= 0 {
        return true;
    }
    ready_since(pod).is_some_and(|since| now.as_second() - since.as_second() >= i64::from(min_ready_seconds))
}

fn revision_of(pod: &Pod) -> Option<u64> {
    pod.annotations().get(REVISION_ANNOTATION).and_then(|r| r.parse().ok())
}

/// What to do about one Deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The current template's hash.
    pub hash: String,
    /// The current template's revision.
    pub revision: String,
    /// How many pods of the current template to create.
    pub create: usize,
    /// The pods to delete, by name.
    pub delete: Vec<String>,
    /// The status to report.
    pub status: DeploymentStatus,
}

/// The order pods are given up in: not ready first, then unscheduled, then the newest.
fn deletion_order(a: &&Pod, b: &&Pod) -> std::cmp::Ordering {
    let key = |p: &Pod| {
        (
            pod_ready(p),
            p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some(),
            std::cmp::Reverse(p.metadata.creation_timestamp.as_ref().map(|t| t.0)),
            p.name_any(),
        )
    };
    key(a).cmp(&key(b))
}

fn condition(kind: &str, status: &str, reason: &str, message: String, now: Timestamp) -> DeploymentCondition {
    DeploymentCondition {
        type_: kind.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: Some(Time(now)),
        last_update_time: Some(Time(now)),
    }
}

/// Keeps an existing condition's times when it says the same thing; `touch` refreshes its
/// update time (progress was made).
fn merge_condition(
    old: Option<&DeploymentCondition>,
    mut new: DeploymentCondition,
    touch: bool,
) -> DeploymentCondition {
    if let Some(old) = old
        && old.status == new.status
        && old.reason == new.reason
        && old.message == new.message
    {
        new.last_transition_time = old.last_transition_time.clone();
        if !touch {
            new.last_update_time = old.last_update_time.clone();
        }
    }
    new
}

/// Plans one reconcile of `deployment`, given the active pods it controls (created ones the
/// cache has not seen yet included, deleted ones excluded) at `now`.
pub fn plan(deployment: &Deployment, pods: &[&Pod], now: Timestamp) -> Plan {
    let spec = deployment.spec.clone().unwrap_or_default();
    let desired = spec.replicas.unwrap_or(1).max(0);
    let desired_count = usize::try_from(desired).unwrap_or(0);
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let hash = template_hash(&spec.template);
    let name = deployment.name_any();
    let replica_set = format!("{name}-{hash}");

    let mut delete: Vec<String> = pods.iter().filter(|p| pod_finished(p)).map(|p| p.name_any()).collect();
    let active: Vec<&Pod> = pods.iter().copied().filter(|p| !pod_finished(p)).collect();
    let is_new = |p: &Pod| p.labels().get(POD_TEMPLATE_HASH_LABEL) == Some(&hash);
    let mut new: Vec<&Pod> = active.iter().copied().filter(|p| is_new(p)).collect();
    let mut old: Vec<&Pod> = active.iter().copied().filter(|p| !is_new(p)).collect();
    new.sort_by(deletion_order);
    old.sort_by(deletion_order);
    let is_available = |p: &Pod| available(p, min_ready, now);
    let new_available = new.iter().filter(|p| is_available(p)).count();
    let old_available = old.iter().filter(|p| is_available(p)).count();
    let available_count = new_available + old_available;
    let ready_count = active.iter().filter(|p| pod_ready(p)).count();

    let old_revision = old.iter().filter_map(|p| revision_of(p)).max();
    let revision = match new.iter().find_map(|p| revision_of(p)) {
        Some(revision) => revision,
        None if old.is_empty() => {
            deployment.annotations().get(REVISION_ANNOTATION).and_then(|r| r.parse().ok()).unwrap_or(1)
        }
        None => old_revision.unwrap_or(0) + 1,
    };

    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let rolling = spec.strategy.as_ref().and_then(|s| s.rolling_update.as_ref());
    let mut surge = scaled_value(rolling.and_then(|r| r.max_surge.as_ref()), "25%", desired, true);
    let mut unavailable = scaled_value(rolling.and_then(|r| r.max_unavailable.as_ref()), "25%", desired, false);
    if recreate {
        (surge, unavailable) = (0, desired);
    } else if surge == 0 && unavailable == 0 {
        // Both zero would never make progress; Kubernetes allows one unavailable pod then.
        unavailable = 1;
    }
    let surge = usize::try_from(surge).unwrap_or(0);
    let min_available = usize::try_from((desired - unavailable).max(0)).unwrap_or(0);

    let mut create = 0;
    if !spec.paused.unwrap_or(false) {
        if old.is_empty() {
            create = desired_count.saturating_sub(new.len());
            delete.extend(new.iter().take(new.len().saturating_sub(desired_count)).map(|p| p.name_any()));
        } else if recreate {
            // Every old pod goes before any new one starts.
            delete.extend(old.iter().map(|p| p.name_any()));
        } else {
            let total = new.len() + old.len();
            create = desired_count.saturating_sub(new.len()).min((desired_count + surge).saturating_sub(total));
            delete.extend(new.iter().take(new.len().saturating_sub(desired_count)).map(|p| p.name_any()));
            // `cleanupUnhealthyReplicas`, then `scaleDownOldReplicaSetsForRollingUpdate`.
            let new_unavailable = new.len() - new_available;
            let max_cleanup = total.saturating_sub(min_available).saturating_sub(new_unavailable);
            let unhealthy: Vec<&&Pod> = old.iter().filter(|p| !is_available(p)).collect();
            let cleaned = unhealthy.len().min(max_cleanup);
            delete.extend(unhealthy.iter().take(cleaned).map(|p| p.name_any()));
            let scale_down = available_count.saturating_sub(min_available);
            delete.extend(old.iter().filter(|p| is_available(p)).take(scale_down).map(|p| p.name_any()));
        }
    }

    let replicas = active.len();
    let updated = new.len();
    let old_status = deployment.status.clone().unwrap_or_default();
    let old_conditions = old_status.conditions.clone().unwrap_or_default();
    let find = |kind: &str| old_conditions.iter().find(|c| c.type_ == kind);
    let to_i32 = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let observed = deployment.metadata.generation;
    // Zero counts are left out, as the API server's `omitempty` leaves them out.
    let count = |n: usize| Some(to_i32(n)).filter(|n| *n > 0);
    let complete = updated == desired_count && replicas == desired_count && available_count == desired_count;
    let progressed = old_status.replicas != count(replicas)
        || old_status.updated_replicas != count(updated)
        || old_status.ready_replicas != count(ready_count)
        || old_status.available_replicas != count(available_count)
        || old_status.observed_generation != observed;

    let available_condition = if available_count >= min_available {
        condition("Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability.".into(), now)
    } else {
        condition(
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
            now,
        )
    };
    let available_condition = merge_condition(find("Available"), available_condition, false);
    let deadline = i64::from(spec.progress_deadline_seconds.unwrap_or(600));
    let previous = find("Progressing");
    let progressing = if spec.paused.unwrap_or(false) {
        merge_condition(
            previous,
            condition("Progressing", "Unknown", "DeploymentPaused", "Deployment is paused".into(), now),
            false,
        )
    } else if complete {
        let done = condition(
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{replica_set}\" has successfully progressed."),
            now,
        );
        merge_condition(previous, done, false)
    } else if progressed || previous.is_none_or(|c| c.reason.as_deref() == Some("NewReplicaSetAvailable")) {
        let moving = condition(
            "Progressing",
            "True",
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{replica_set}\" is progressing."),
            now,
        );
        merge_condition(previous, moving, true)
    } else {
        let since = previous.and_then(|c| c.last_update_time.as_ref()).map_or(now.as_second(), |t| t.0.as_second());
        if now.as_second() - since > deadline {
            let timed_out = condition(
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                format!("ReplicaSet \"{replica_set}\" has timed out progressing."),
                now,
            );
            merge_condition(previous, timed_out, false)
        } else {
            previous.cloned().unwrap_or_else(|| {
                condition(
                    "Progressing",
                    "True",
                    "ReplicaSetUpdated",
                    format!("ReplicaSet \"{replica_set}\" is progressing."),
                    now,
                )
            })
        }
    };
    let status = DeploymentStatus {
        observed_generation: observed,
        replicas: count(replicas),
        updated_replicas: count(updated),
        ready_replicas: count(ready_count),
        available_replicas: count(available_count),
        unavailable_replicas: count(replicas.max(desired_count).saturating_sub(available_count)),
        terminating_replicas: None,
        collision_count: old_status.collision_count,
        conditions: Some(vec![available_condition, progressing]),
    };
    delete.sort();
    delete.dedup();
    Plan { hash, revision: revision.to_string(), create, delete, status }
}

/// A new pod of `deployment`'s current template.
pub fn new_pod(deployment: &Deployment, hash: &str, revision: &str) -> Pod {
    let spec = deployment.spec.clone().unwrap_or_default();
    let template = spec.template;
    let mut labels = template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
    labels.insert(POD_TEMPLATE_HASH_LABEL.into(), hash.into());
    let mut annotations = template.metadata.as_ref().and_then(|m| m.annotations.clone()).unwrap_or_default();
    annotations.insert(REVISION_ANNOTATION.into(), revision.into());
    // A ReplicaSet's name, then its pods' generateName: at most 58 characters before the
    // 5-character suffix, as the API server allows.
    let prefix: String = format!("{}-{hash}-", deployment.name_any()).chars().take(58).collect();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(prefix),
            namespace: deployment.namespace(),
            labels: Some(labels),
            annotations: Some(annotations),
            // The controller reference kubectl and the garbage collector follow.
            owner_references: deployment.controller_owner_ref(&()).map(|owner| vec![owner]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// A merge patch from `old` to `new` status: fields `new` leaves out are removed (a merge
/// patch of the serialized status alone would leave stale counts behind).
fn status_patch(old: Option<&DeploymentStatus>, new: &DeploymentStatus) -> Value {
    let mut patch = serde_json::to_value(new).unwrap_or_else(|_| json!({}));
    if let (Some(Value::Object(old)), Value::Object(fields)) =
        (old.and_then(|o| serde_json::to_value(o).ok()), &mut patch)
    {
        for key in old.keys() {
            fields.entry(key.clone()).or_insert(Value::Null);
        }
    }
    json!({"status": patch})
}

/// Pods created or deleted that the cache has not caught up with yet.
#[derive(Debug, Default)]
pub struct Expectations {
    pub(crate) created: BTreeMap<(String, String), (Pod, Instant)>,
    pub(crate) deleted: BTreeMap<(String, String), Instant>,
}

impl Expectations {
    /// Forgets what the cache now shows (or what was waited for too long).
    pub(crate) fn settle(&mut self, seen: &BTreeSet<(String, String)>) {
        self.created.retain(|key, (_, at)| !seen.contains(key) && at.elapsed() < EXPECTATION_TIMEOUT);
        self.deleted.retain(|key, at| seen.contains(key) && at.elapsed() < EXPECTATION_TIMEOUT);
    }
}

/// A delete that found the object already gone succeeded too.
pub(crate) fn gone<T>(result: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error),
    }
}

pub(crate) fn key_of(pod: &Pod) -> (String, String) {
    (pod.namespace().unwrap_or_default(), pod.name_any())
}

/// What the cache does not show yet: pods created and pods deleted by the controller.
pub(crate) struct Pending {
    created: Vec<Pod>,
    deleted: BTreeSet<(String, String)>,
}

impl Pending {
    /// The pods as the controller must count them: the cache's, less those it deleted, plus
    /// those it created.
    pub(crate) fn live<'a>(&'a self, pods: &'a [Arc<Pod>]) -> Vec<&'a Pod> {
        pods.iter()
            .map(|p| p.as_ref())
            .filter(|p| !self.deleted.contains(&key_of(p)))
            .chain(self.created.iter())
            .collect()
    }
}

impl Expectations {
    /// Settles the expectations against the cache's `pods` and returns what is still pending.
    pub(crate) fn pending(expectations: &Mutex<Expectations>, pods: &[Arc<Pod>]) -> Pending {
        let seen: BTreeSet<(String, String)> = pods.iter().map(|p| key_of(p)).collect();
        let mut expectations = expectations.lock().unwrap_or_else(|e| e.into_inner());
        expectations.settle(&seen);
        Pending {
            created: expectations.created.values().map(|(pod, _)| pod.clone()).collect(),
            deleted: expectations.deleted.keys().cloned().collect(),
        }
    }
}

/// Brings every Deployment's pods and status to what it asks for, and deletes the pods of
/// Deployments that are gone.
pub async fn reconcile(
    client: &Client,
    deployments: &[Arc<Deployment>],
    pods: &[Arc<Pod>],
    expectations: &Mutex<Expectations>,
) -> anyhow::Result<()> {
    let now = Timestamp::now();
    let pending = Expectations::pending(expectations, pods);
    let live = pending.live(pods);
    let mut first_error: Option<anyhow::Error> = None;
    let mut record = |error: anyhow::Error| {
        first_error.get_or_insert(error);
    };

    let uids: BTreeSet<String> = deployments.iter().filter_map(|d| d.uid()).collect();
    for orphan in live.iter().filter(|p| deployment_controller_uid(p).is_some_and(|uid| !uids.contains(uid))) {
        let (namespace, name) = key_of(orphan);
        match gone(Api::<Pod>::namespaced(client.clone(), &namespace).delete(&name, &DeleteParams::default()).await) {
            Ok(()) => {
                tracing::info!(pod = %format!("{namespace}/{name}"), "deleted: its Deployment is gone");
                expectations
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .deleted
                    .insert((namespace, name), Instant::now());
            }
            Err(error) => record(anyhow::anyhow!("pod {namespace}/{name}: {error}")),
        }
    }

    for deployment in deployments {
        let namespace = deployment.namespace().unwrap_or_default();
        let name = deployment.name_any();
        let Some(uid) = deployment.uid() else { continue };
        let owned: Vec<&Pod> = live
            .iter()
            .copied()
            .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()) && controlled_by(p, &uid))
            .collect();
        let plan = plan(deployment, &owned, now);
        let pods_api = Api::<Pod>::namespaced(client.clone(), &namespace);
        for _ in 0..plan.create {
            match pods_api.create(&PostParams::default(), &new_pod(deployment, &plan.hash, &plan.revision)).await {
                Ok(pod) => {
                    tracing::info!(deployment = %format!("{namespace}/{name}"), pod = %pod.name_any(), "pod created");
                    expectations
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .created
                        .insert(key_of(&pod), (pod, Instant::now()));
                }
                Err(error) => {
                    record(anyhow::anyhow!("deployment {namespace}/{name}: creating a pod: {error}"));
                    break;
                }
            }
        }
        for pod in &plan.delete {
            match gone(pods_api.delete(pod, &DeleteParams::default()).await) {
                Ok(()) => {
                    tracing::info!(deployment = %format!("{namespace}/{name}"), %pod, "pod deleted");
                    let mut expectations = expectations.lock().unwrap_or_else(|e| e.into_inner());
                    expectations.created.remove(&(namespace.clone(), pod.clone()));
                    expectations.deleted.insert((namespace.clone(), pod.clone()), Instant::now());
                }
                Err(error) => record(anyhow::anyhow!("deployment {namespace}/{name}: deleting pod {pod}: {error}")),
            }
        }
        let deployments_api = Api::<Deployment>::namespaced(client.clone(), &namespace);
        if deployment.annotations().get(REVISION_ANNOTATION) != Some(&plan.revision) {
            let patch = json!({"metadata": {"annotations": {REVISION_ANNOTATION: plan.revision}}});
            if let Err(error) = deployments_api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await {
                record(anyhow::anyhow!("deployment {namespace}/{name}: revision annotation: {error}"));
            }
        }
        if deployment.status.as_ref() != Some(&plan.status) {
            let patch = status_patch(deployment.status.as_ref(), &plan.status);
            match deployments_api.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch)).await {
                Ok(_) => tracing::debug!(deployment = %format!("{namespace}/{name}"), "status updated"),
                Err(error) => record(anyhow::anyhow!("deployment {namespace}/{name}: status: {error}")),
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Runs the controller until `stop`.
pub async fn run(client: Client, stop: CancellationToken) {
    let changed = Arc::new(Notify::new());
    let deployments =
        reflect(Api::<Deployment>::all(client.clone()), watcher::Config::default(), changed.clone(), stop.clone());
    // Only pods a Deployment could own: they carry the template hash label.
    let pods = reflect(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().labels(POD_TEMPLATE_HASH_LABEL),
        changed.clone(),
        stop.clone(),
    );
    let expectations = Arc::new(Mutex::new(Expectations::default()));
    let ready: Vec<Box<dyn ReadyWait>> = vec![Box::new(deployments.clone()), Box::new(pods.clone())];
    run_loop("deployments", ready, changed, stop, || {
        let (deployments, pods, client, expectations) =
            (deployments.state(), pods.state(), client.clone(), expectations.clone());
        async move { reconcile(&client, &deployments, &pods, &expectations).await }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_kube_fake::{FakeApiServer, Kind};

    fn deployment(replicas: i32, image: &str, strategy: Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "demo", "uid": "dep-uid", "generation": 1},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": strategy,
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": image}]}}
            }
        }))
        .unwrap()
    }

    fn rolling() -> Value {
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
    }

    fn pod(name: &str, hash: &str, ready: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "demo", "labels": {"app": "web", POD_TEMPLATE_HASH_LABEL: hash},
                         "annotations": {REVISION_ANNOTATION: if hash == "old" {"1"} else {"2"}},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "dep-uid", "controller": true}]},
            "spec": {"nodeName": "node1", "containers": [{"name": "web"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
        }))
        .unwrap()
    }

    fn now() -> Timestamp {
        "2025-06-01T12:00:00Z".parse().unwrap()
    }

    fn condition_reason(status: &DeploymentStatus, kind: &str) -> String {
        status.conditions.iter().flatten().find(|c| c.type_ == kind).and_then(|c| c.reason.clone()).unwrap_or_default()
    }

    #[test]
    fn hashes_and_scaled_values_follow_kubernetes() {
        // Every digit of the decimal hash maps to one character, as rand.SafeEncodeString does.
        assert_eq!(safe_encode("0123456789"), "456789bcdf");
        let a = deployment(3, "agnhost:1", rolling());
        let b = deployment(3, "agnhost:2", rolling());
        let hash = template_hash(&a.spec.as_ref().unwrap().template);
        assert_eq!(hash, template_hash(&a.spec.as_ref().unwrap().template), "stable");
        assert_ne!(hash, template_hash(&b.spec.as_ref().unwrap().template), "changes with the template");
        assert!(hash.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)), "{hash}");
        assert_eq!(scaled_value(None, "25%", 3, true), 1);
        assert_eq!(scaled_value(None, "25%", 3, false), 0);
        assert_eq!(scaled_value(Some(&IntOrString::String("50%".into())), "25%", 5, false), 2);
        assert_eq!(scaled_value(Some(&IntOrString::Int(2)), "25%", 5, true), 2);
    }

    #[test]
    fn a_new_deployment_gets_its_pods_and_a_progressing_status() {
        let d = deployment(3, "agnhost:1", rolling());
        let first = plan(&d, &[], now());
        assert_eq!((first.create, first.delete.len()), (3, 0));
        assert_eq!(first.revision, "1");
        assert_eq!(first.status.observed_generation, Some(1));
        assert_eq!(first.status.replicas, None);
        assert_eq!(condition_reason(&first.status, "Available"), "MinimumReplicasUnavailable");
        assert_eq!(condition_reason(&first.status, "Progressing"), "ReplicaSetUpdated");
        let pod = new_pod(&d, &first.hash, &first.revision);
        assert_eq!(pod.metadata.generate_name.as_deref(), Some(format!("web-{}-", first.hash).as_str()));
        assert_eq!(pod.labels()[POD_TEMPLATE_HASH_LABEL], first.hash);
        assert_eq!(pod.labels()["app"], "web");
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("Deployment", "dep-uid", Some(true)));
    }

    #[test]
    fn ready_pods_complete_the_rollout_and_extra_ones_go_unready_first() {
        let d = deployment(2, "agnhost:1", rolling());
        let hash = template_hash(&d.spec.as_ref().unwrap().template);
        let pods = [pod("a", &hash, true), pod("b", &hash, true), pod("c", &hash, false)];
        let refs: Vec<&Pod> = pods.iter().collect();
        let extra = plan(&d, &refs, now());
        assert_eq!(extra.create, 0);
        assert_eq!(extra.delete, ["c"], "the unready one goes first");
        let pods = [pod("a", &hash, true), pod("b", &hash, true)];
        let refs: Vec<&Pod> = pods.iter().collect();
        let done = plan(&d, &refs, now());
        assert!(done.create == 0 && done.delete.is_empty());
        assert_eq!(
            (done.status.replicas, done.status.updated_replicas, done.status.available_replicas),
            (Some(2), Some(2), Some(2))
        );
        assert_eq!(condition_reason(&done.status, "Available"), "MinimumReplicasAvailable");
        assert_eq!(condition_reason(&done.status, "Progressing"), "NewReplicaSetAvailable");
        // A status that says the same keeps its times: nothing to write.
        let mut settled = d.clone();
        settled.status = Some(done.status.clone());
        assert_eq!(plan(&settled, &refs, "2025-06-01T13:00:00Z".parse().unwrap()).status, done.status);
    }

    #[test]
    fn a_template_change_rolls_within_surge_and_unavailability() {
        let d = deployment(3, "agnhost:2", rolling());
        let hash = template_hash(&d.spec.as_ref().unwrap().template);
        let old = [pod("o1", "old", true), pod("o2", "old", true), pod("o3", "old", true)];
        let refs: Vec<&Pod> = old.iter().collect();
        let step = plan(&d, &refs, now());
        assert_eq!((step.create, step.delete.len()), (1, 0), "surge one, keep every old pod (0 unavailable)");
        assert_eq!(step.revision, "2");
        let new_unready = pod("n1", &hash, false);
        let mut refs: Vec<&Pod> = old.iter().collect();
        refs.push(&new_unready);
        let step = plan(&d, &refs, now());
        assert_eq!((step.create, step.delete.len()), (0, 0), "wait for the new pod");
        let new_ready = pod("n1", &hash, true);
        let mut refs: Vec<&Pod> = old.iter().collect();
        refs.push(&new_ready);
        let step = plan(&d, &refs, now());
        assert_eq!((step.create, step.delete.len()), (0, 1), "one old pod may go now");
        assert_eq!(step.status.updated_replicas, Some(1));
        assert_eq!(condition_reason(&step.status, "Progressing"), "ReplicaSetUpdated");
    }

    #[test]
    fn recreate_removes_every_old_pod_before_starting_new_ones() {
        let d = deployment(2, "agnhost:2", json!({"type": "Recreate"}));
        let old = [pod("o1", "old", true), pod("o2", "old", false)];
        let refs: Vec<&Pod> = old.iter().collect();
        let step = plan(&d, &refs, now());
        assert_eq!((step.create, step.delete.clone()), (0, vec!["o1".to_string(), "o2".to_string()]));
        assert_eq!(plan(&d, &[], now()).create, 2);
    }

    #[test]
    fn finished_pods_are_replaced() {
        let d = deployment(1, "agnhost:1", rolling());
        let hash = template_hash(&d.spec.as_ref().unwrap().template);
        let mut failed = pod("f", &hash, false);
        failed.status.as_mut().unwrap().phase = Some("Failed".into());
        let step = plan(&d, &[&failed], now());
        assert_eq!((step.create, step.delete.clone()), (1, vec!["f".to_string()]));
    }

    /// Plays the kubelet for the test: every bound-or-not pod of `namespace` becomes Running and
    /// Ready with an address, through the API.
    async fn kubelet(client: Client, stop: CancellationToken) {
        let api = Api::<Pod>::namespaced(client, "demo");
        while !stop.is_cancelled() {
            for pod in api.list(&Default::default()).await.map(|l| l.items).unwrap_or_default() {
                if pod_ready(&pod) {
                    continue;
                }
                let status = json!({"status": {"phase": "Running", "podIP": "10.244.1.9", "podIPs": [{"ip": "10.244.1.9"}],
                    "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": Timestamp::now()}]}});
                let _ = api.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(status)).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        for _ in 0..500 {
            if let Some(value) = check() {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("never: {what}");
    }

    #[tokio::test]
    async fn runs_scales_rolls_and_deletes_deployment_pods_through_the_api() {
        let server = FakeApiServer::start().await;
        server.insert(Kind::Namespace, json!({"metadata": {"name": "demo"}})).unwrap();
        let api = Api::<Deployment>::namespaced(server.client(), "demo");
        let mut d = deployment(3, "agnhost:1", rolling());
        d.metadata.uid = None;
        d.metadata.generation = None;
        api.create(&PostParams::default(), &d).await.unwrap();
        let stop = CancellationToken::new();
        let controller = tokio::spawn(run(server.client(), stop.clone()));
        let kubelet = tokio::spawn(kubelet(server.client(), stop.clone()));
        let pods = |server: &FakeApiServer| server.list(Kind::Pod, Some("demo"));
        let status = |server: &FakeApiServer| server.get(Kind::Deployment, Some("demo"), "web").unwrap();

        let first = eventually("3 ready replicas", || {
            let s = status(&server);
            (s["status"]["readyReplicas"] == 3 && s["status"]["availableReplicas"] == 3 && pods(&server).len() == 3)
                .then_some(s)
        })
        .await;
        assert_eq!(first["status"]["observedGeneration"], first["metadata"]["generation"]);
        assert_eq!(first["metadata"]["annotations"][REVISION_ANNOTATION], "1");
        let conditions = first["status"]["conditions"].as_array().unwrap();
        assert!(conditions.iter().any(|c| c["type"] == "Progressing" && c["reason"] == "NewReplicaSetAvailable"));
        let hash = pods(&server)[0]["metadata"]["labels"][POD_TEMPLATE_HASH_LABEL].as_str().unwrap().to_owned();
        for pod in pods(&server) {
            let name = pod["metadata"]["name"].as_str().unwrap();
            let suffix = name.strip_prefix(&format!("web-{hash}-")).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(suffix.len(), 5, "{name}");
            assert_eq!(pod["metadata"]["ownerReferences"][0]["uid"], first["metadata"]["uid"]);
        }

        // Scale down through /scale, as `kubectl scale` does.
        api.patch_scale("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 1}}))).await.unwrap();
        eventually("one pod", || {
            (pods(&server).len() == 1 && status(&server)["status"]["replicas"] == 1).then_some(())
        })
        .await;

        // A new image rolls the pods over to a new template hash and revision.
        api.patch(
            "web",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "web", "image": "agnhost:2"}]}}}})),
        )
        .await
        .unwrap();
        let rolled = eventually("rolled over", || {
            let s = status(&server);
            let all_new =
                pods(&server).iter().all(|p| p["metadata"]["labels"][POD_TEMPLATE_HASH_LABEL] != hash.as_str());
            (all_new
                && pods(&server).len() == 2
                && s["status"]["updatedReplicas"] == 2
                && s["status"]["availableReplicas"] == 2
                && s["status"]["replicas"] == 2)
                .then_some(s)
        })
        .await;
        assert_eq!(rolled["metadata"]["annotations"][REVISION_ANNOTATION], "2");
        assert_eq!(rolled["status"]["observedGeneration"], rolled["metadata"]["generation"]);

        // Deleting the Deployment deletes its pods.
        api.delete("web", &DeleteParams::default()).await.unwrap();
        eventually("no pods", || pods(&server).is_empty().then_some(())).await;
        stop.cancel();
        controller.await.unwrap();
        kubelet.await.unwrap();
    }
}
