//! The Job controller stand-in (`batch/v1`), as `pkg/controller/job` runs Jobs: pods from the
//! template up to `parallelism`, until `completions` succeed; for `Indexed` Jobs one pod per
//! completion index, named `<job>-<index>-<5 chars>`, with the index in the annotation and
//! label `batch.kubernetes.io/job-completion-index` and in `JOB_COMPLETION_INDEX`, and the
//! hostname `<job>-<index>` (with the template's `subdomain`, a headless Service gives each
//! index a DNS name). Failed pods are replaced after a back-off (10 s doubling, at most
//! 6 min) until more than `backoffLimit` have failed (container restarts of `OnFailure` pods
//! count); a Job active longer than `activeDeadlineSeconds` fails; either way its active pods
//! are deleted and it gets `FailureTarget` and `Failed` (`BackoffLimitExceeded`,
//! `DeadlineExceeded`). Enough successes give `SuccessCriteriaMet` and `Complete`
//! (`CompletionsReached`) with `completionTime`. Status carries `active`, `ready`,
//! `succeeded`, `failed`, `completedIndexes`, `startTime`. `suspend` deletes the active pods;
//! `ttlSecondsAfterFinished` deletes a finished Job; a deleted Job's pods are deleted (the
//! garbage collector's part). Finished pods stay, with their logs.
//!
//! Planning is pure ([`plan`]); the loop remembers the pods it created or deleted until its
//! cache sees them, as the Deployment controller does.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::deployments::{Expectations, gone, key_of};
use crate::endpointslices::pod_ready;
use crate::watch::{ReadyWait, reflect, run_loop};

/// The annotation and label carrying an Indexed Job pod's completion index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// The environment variable holding it.
pub const COMPLETION_INDEX_ENV: &str = "JOB_COMPLETION_INDEX";
/// The label every Job pod carries with its Job's uid.
pub const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
/// First delay before a failed pod is replaced (doubled per failure).
pub const POD_FAILURE_BACKOFF_SECONDS: i64 = 10;
/// Longest delay before a failed pod is replaced.
pub const MAX_POD_FAILURE_BACKOFF_SECONDS: i64 = 360;

fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending")
}

/// An Indexed Job pod's completion index (from the annotation, else the label).
pub fn completion_index(pod: &Pod) -> Option<usize> {
    pod.annotations().get(COMPLETION_INDEX).or_else(|| pod.labels().get(COMPLETION_INDEX)).and_then(|i| i.parse().ok())
}

/// `completedIndexes` as the API writes it: sorted ranges, `0-2,5`.
pub fn compress_indexes(indexes: &BTreeSet<usize>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut iter = indexes.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        parts.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
    }
    parts.join(",")
}

fn has_condition(status: &JobStatus, kind: &str) -> bool {
    status.conditions.iter().flatten().any(|c| c.type_ == kind && c.status == "True")
}

/// Whether the Job is finished (`Complete` or `Failed`).
pub fn finished(job: &Job) -> bool {
    job.status.as_ref().is_some_and(|s| has_condition(s, "Complete") || has_condition(s, "Failed"))
}

fn condition(kind: &str, reason: &str, message: &str, now: Timestamp) -> JobCondition {
    JobCondition {
        type_: kind.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// When a finished pod ended: its containers' latest `finishedAt`, else its creation.
fn finished_at(pod: &Pod) -> Option<Timestamp> {
    let latest = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref().map(|t| t.0))
        .max();
    latest.or_else(|| pod.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// What to do about one Job.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Pods to create: their completion index (`None` for NonIndexed Jobs).
    pub create: Vec<Option<usize>>,
    /// Pods to delete, by name.
    pub delete: Vec<String>,
    /// The status to report.
    pub status: JobStatus,
    /// Delete the Job itself (`ttlSecondsAfterFinished` passed).
    pub delete_job: bool,
    /// When the next pod may be created, if a failure back-off holds creation back.
    pub wait_until: Option<Timestamp>,
}

/// Plans one reconcile of `job`, given the pods it controls at `now`.
pub fn plan(job: &Job, pods: &[&Pod], now: Timestamp) -> Plan {
    let spec = job.spec.clone().unwrap_or_default();
    let old = job.status.clone().unwrap_or_default();
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let parallelism = usize::try_from(spec.parallelism.unwrap_or(1).max(0)).unwrap_or(0);
    let completions = spec.completions.and_then(|c| usize::try_from(c).ok());
    let backoff_limit = usize::try_from(spec.backoff_limit.unwrap_or(6).max(0)).unwrap_or(0);
    let live: Vec<&Pod> = pods.iter().copied().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
    let active: Vec<&Pod> = live.iter().copied().filter(|p| !matches!(phase(p), "Succeeded" | "Failed")).collect();
    let succeeded_pods: Vec<&Pod> = live.iter().copied().filter(|p| phase(p) == "Succeeded").collect();
    let failed_pods: Vec<&Pod> = live.iter().copied().filter(|p| phase(p) == "Failed").collect();
    let completed: BTreeSet<usize> = succeeded_pods
        .iter()
        .filter_map(|p| completion_index(p))
        .filter(|i| completions.is_none_or(|c| *i < c))
        .collect();
    let succeeded = if indexed { completed.len() } else { succeeded_pods.len() };
    let restarts: usize = active
        .iter()
        .flat_map(|p| p.status.iter().flat_map(|s| s.container_statuses.iter().flatten()))
        .map(|c| usize::try_from(c.restart_count).unwrap_or(0))
        .sum();
    let failed = failed_pods.len().max(usize::try_from(old.failed.unwrap_or(0)).unwrap_or(0));
    let count = |n: usize| Some(i32::try_from(n).unwrap_or(i32::MAX)).filter(|n| *n > 0);

    let mut status = JobStatus {
        start_time: old.start_time.clone(),
        completion_time: old.completion_time.clone(),
        active: count(active.len()),
        ready: Some(i32::try_from(active.iter().filter(|p| pod_ready(p)).count()).unwrap_or(i32::MAX)),
        succeeded: count(succeeded),
        failed: count(failed),
        terminating: Some(0),
        completed_indexes: if indexed && !completed.is_empty() { Some(compress_indexes(&completed)) } else { None },
        conditions: old.conditions.clone(),
        ..Default::default()
    };
    let mut out =
        Plan { create: Vec::new(), delete: Vec::new(), status: status.clone(), delete_job: false, wait_until: None };

    if has_condition(&old, "Complete") || has_condition(&old, "Failed") {
        // Finished: active pods of a failed Job go; the TTL may delete the Job.
        if has_condition(&old, "Failed") {
            out.delete = active.iter().map(|p| p.name_any()).collect();
        }
        if let (Some(ttl), Some(at)) = (spec.ttl_seconds_after_finished, finish_time(&old)) {
            out.delete_job = now.as_second() - at.as_second() >= i64::from(ttl);
        }
        out.status.active = count(active.len());
        return out;
    }
    let mut conditions = old.conditions.clone().unwrap_or_default();
    if spec.suspend.unwrap_or(false) {
        out.delete = active.iter().map(|p| p.name_any()).collect();
        if !has_condition(&old, "Suspended") {
            conditions.retain(|c| c.type_ != "Suspended");
            conditions.push(condition("Suspended", "JobSuspended", "Job suspended", now));
        }
        status.conditions = Some(conditions);
        status.active = None;
        out.status = status;
        return out;
    }
    conditions.retain(|c| c.type_ != "Suspended");
    let start = old.start_time.as_ref().map_or(now, |t| t.0);
    status.start_time = Some(Time(start));

    let fail = |reason: &str, message: &str, mut status: JobStatus, mut conditions: Vec<JobCondition>| {
        conditions.push(condition("FailureTarget", reason, message, now));
        conditions.push(condition("Failed", reason, message, now));
        status.conditions = Some(conditions);
        status.active = None;
        status.ready = Some(0);
        status
    };
    let deadline = spec.active_deadline_seconds.is_some_and(|d| now.as_second() - start.as_second() >= d);
    if deadline {
        out.delete = active.iter().map(|p| p.name_any()).collect();
        out.status = fail("DeadlineExceeded", "Job was active longer than specified deadline", status, conditions);
        return out;
    }
    if failed + restarts > backoff_limit {
        out.delete = active.iter().map(|p| p.name_any()).collect();
        out.status = fail("BackoffLimitExceeded", "Job has reached the specified backoff limit", status, conditions);
        return out;
    }
    let complete = match (indexed, completions) {
        (true, Some(c)) => completed.len() >= c,
        (false, Some(c)) => succeeded >= c,
        // A work queue: done once one pod succeeded and none is left running.
        (_, None) => succeeded > 0 && active.is_empty(),
    };
    if complete {
        let message = "Reached expected number of succeeded pods";
        conditions.push(condition("SuccessCriteriaMet", "CompletionsReached", message, now));
        conditions.push(condition("Complete", "CompletionsReached", message, now));
        status.conditions = Some(conditions);
        status.completion_time = Some(Time(now));
        // Pods beyond the completions (a NonIndexed Job's extra ones) are not needed.
        out.delete = active.iter().map(|p| p.name_any()).collect();
        out.status = status;
        return out;
    }
    status.conditions = if conditions.is_empty() { None } else { Some(conditions) };
    out.status = status;

    // Failed pods are replaced after a back-off from the latest failure.
    if !failed_pods.is_empty() {
        let exponent = u32::try_from(failed.saturating_sub(1).min(16)).unwrap_or(16);
        let delay = (POD_FAILURE_BACKOFF_SECONDS << exponent).min(MAX_POD_FAILURE_BACKOFF_SECONDS);
        if let Some(last) = failed_pods.iter().filter_map(|p| finished_at(p)).max() {
            let ready_at = last.as_second() + delay;
            if now.as_second() < ready_at {
                out.wait_until = Timestamp::from_second(ready_at).ok();
                return out;
            }
        }
    }
    let room = parallelism.saturating_sub(active.len());
    out.create = match (indexed, completions) {
        (true, Some(c)) => {
            let running: BTreeSet<usize> = active.iter().filter_map(|p| completion_index(p)).collect();
            (0..c).filter(|i| !completed.contains(i) && !running.contains(i)).take(room).map(Some).collect()
        }
        (_, Some(c)) => vec![None; c.saturating_sub(succeeded).min(parallelism).saturating_sub(active.len())],
        (_, None) => vec![None; if succeeded > 0 { 0 } else { room }],
    };
    out
}

fn finish_time(status: &JobStatus) -> Option<Timestamp> {
    status
        .conditions
        .iter()
        .flatten()
        .filter(|c| matches!(c.type_.as_str(), "Complete" | "Failed") && c.status == "True")
        .filter_map(|c| c.last_transition_time.as_ref().map(|t| t.0))
        .max()
}

/// A new pod of `job` (for completion `index` of an Indexed Job).
pub fn new_pod(job: &Job, index: Option<usize>) -> Pod {
    let spec = job.spec.clone().unwrap_or_default();
    let template = spec.template;
    let mut labels = template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
    let mut annotations = template.metadata.as_ref().and_then(|m| m.annotations.clone()).unwrap_or_default();
    let mut pod_spec = template.spec.unwrap_or_default();
    let mut prefix = format!("{}-", job.name_any());
    if let Some(index) = index {
        labels.insert(COMPLETION_INDEX.into(), index.to_string());
        annotations.insert(COMPLETION_INDEX.into(), index.to_string());
        prefix = format!("{}-{index}-", job.name_any());
        if pod_spec.hostname.as_deref().is_none_or(str::is_empty) {
            pod_spec.hostname = Some(format!("{}-{index}", job.name_any()));
        }
        let env = EnvVar {
            name: COMPLETION_INDEX_ENV.into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: Some("v1".into()),
                    field_path: format!("metadata.labels['{COMPLETION_INDEX}']"),
                }),
                ..Default::default()
            }),
        };
        let containers = pod_spec.init_containers.iter_mut().flatten().chain(pod_spec.containers.iter_mut());
        for container in containers {
            let list = container.env.get_or_insert_with(Vec::new);
            if !list.iter().any(|e| e.name == COMPLETION_INDEX_ENV) {
                list.push(env.clone());
            }
        }
    }
    let prefix: String = prefix.chars().take(58).collect();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(prefix),
            namespace: job.namespace(),
            labels: Some(labels),
            annotations: Some(annotations),
            // The controller reference kubectl and the garbage collector follow.
            owner_references: job.controller_owner_ref(&()).map(|owner| vec![owner]),
            ..Default::default()
        },
        spec: Some(pod_spec),
        status: None,
    }
}

fn job_controller_uid(pod: &Pod) -> Option<&str> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true) && o.kind == "Job" && o.api_version == "batch/v1")
        .map(|o| o.uid.as_str())
}

/// A merge patch from `old` to `new` status, removing fields `new` leaves out.
fn status_patch(old: Option<&JobStatus>, new: &JobStatus) -> Value {
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

/// Brings every Job's pods and status to what it asks for; deletes the pods of Jobs that
/// are gone. Returns the earliest time a back-off lets a pod be created.
pub async fn reconcile(
    client: &Client,
    jobs: &[Arc<Job>],
    pods: &[Arc<Pod>],
    expectations: &Mutex<Expectations>,
) -> anyhow::Result<Option<Timestamp>> {
    let now = Timestamp::now();
    let pending = Expectations::pending(expectations, pods);
    let live = pending.live(pods);
    let mut first_error: Option<anyhow::Error> = None;
    let mut wake: Option<Timestamp> = None;
    let uids: BTreeSet<String> = jobs.iter().filter_map(|j| j.uid()).collect();
    let mut to_delete: Vec<(String, String, &'static str)> = live
        .iter()
        .filter(|p| job_controller_uid(p).is_some_and(|uid| !uids.contains(uid)))
        .map(|p| {
            let (namespace, name) = key_of(p);
            (namespace, name, "its Job is gone")
        })
        .collect();
    for job in jobs {
        let namespace = job.namespace().unwrap_or_default();
        let name = job.name_any();
        let Some(uid) = job.uid() else { continue };
        let owned: Vec<&Pod> = live
            .iter()
            .copied()
            .filter(|p| {
                p.namespace().as_deref() == Some(namespace.as_str()) && job_controller_uid(p) == Some(uid.as_str())
            })
            .collect();
        let plan = plan(job, &owned, now);
        if let Some(at) = plan.wait_until {
            wake = Some(wake.map_or(at, |w| w.min(at)));
        }
        let pods_api = Api::<Pod>::namespaced(client.clone(), &namespace);
        for index in &plan.create {
            match pods_api.create(&PostParams::default(), &new_pod(job, *index)).await {
                Ok(pod) => {
                    tracing::info!(job = %format!("{namespace}/{name}"), pod = %pod.name_any(), index = ?index, "pod created");
                    expectations
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .created
                        .insert(key_of(&pod), (pod, Instant::now()));
                }
                Err(error) => {
                    first_error.get_or_insert(anyhow::anyhow!("job {namespace}/{name}: creating a pod: {error}"));
                    break;
                }
            }
        }
        to_delete.extend(plan.delete.iter().map(|p| (namespace.clone(), p.clone(), "the Job no longer needs it")));
        let jobs_api = Api::<Job>::namespaced(client.clone(), &namespace);
        if job.status.as_ref() != Some(&plan.status) {
            let patch = status_patch(job.status.as_ref(), &plan.status);
            if let Err(error) = jobs_api.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch)).await {
                first_error.get_or_insert(anyhow::anyhow!("job {namespace}/{name}: status: {error}"));
            } else if plan.status.conditions != job.status.as_ref().and_then(|s| s.conditions.clone()) {
                let last = plan.status.conditions.iter().flatten().last().map(|c| c.type_.clone()).unwrap_or_default();
                tracing::info!(job = %format!("{namespace}/{name}"), condition = %last,
                    succeeded = plan.status.succeeded.unwrap_or(0), failed = plan.status.failed.unwrap_or(0), "job status");
            }
        }
        if plan.delete_job {
            match gone(jobs_api.delete(&name, &DeleteParams::default()).await) {
                Ok(()) => {
                    tracing::info!(job = %format!("{namespace}/{name}"), "deleted: ttlSecondsAfterFinished passed")
                }
                Err(error) => {
                    first_error.get_or_insert(anyhow::anyhow!("job {namespace}/{name}: deleting: {error}"));
                }
            }
        }
    }
    for (namespace, pod, why) in to_delete {
        match gone(Api::<Pod>::namespaced(client.clone(), &namespace).delete(&pod, &DeleteParams::default()).await) {
            Ok(()) => {
                tracing::info!(pod = %format!("{namespace}/{pod}"), "deleted: {why}");
                let mut expectations = expectations.lock().unwrap_or_else(|e| e.into_inner());
                expectations.created.remove(&(namespace.clone(), pod.clone()));
                expectations.deleted.insert((namespace, pod), Instant::now());
            }
            Err(error) => {
                first_error.get_or_insert(anyhow::anyhow!("pod {namespace}/{pod}: {error}"));
            }
        }
    }
    first_error.map_or(Ok(wake), Err)
}

/// Runs the controller until `stop`.
pub async fn run(client: Client, stop: CancellationToken) {
    let changed = Arc::new(Notify::new());
    let jobs = reflect(Api::<Job>::all(client.clone()), watcher::Config::default(), changed.clone(), stop.clone());
    // Only pods a Job could own: they carry its uid label.
    let pods = reflect(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().labels(CONTROLLER_UID_LABEL),
        changed.clone(),
        stop.clone(),
    );
    let expectations = Arc::new(Mutex::new(Expectations::default()));
    let ready: Vec<Box<dyn ReadyWait>> = vec![Box::new(jobs.clone()), Box::new(pods.clone())];
    let waker = changed.clone();
    run_loop("jobs", ready, changed, stop, || {
        let (jobs, pods, client, expectations, waker) =
            (jobs.state(), pods.state(), client.clone(), expectations.clone(), waker.clone());
        async move {
            // A back-off ending is a reason to reconcile: wake then (the resync would be late).
            if let Some(at) = reconcile(&client, &jobs, &pods, &expectations).await? {
                let wait = at.as_second() - Timestamp::now().as_second();
                let wait = std::time::Duration::from_secs(u64::try_from(wait.max(0)).unwrap_or(0) + 1);
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    waker.notify_one();
                });
            }
            Ok(())
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_kube_fake::{FakeApiServer, Kind};

    fn job(spec: Value, status: Value) -> Job {
        serde_json::from_value(json!({
            "metadata": {"name": "train", "namespace": "ml", "uid": "job-uid"},
            "spec": spec, "status": status,
        }))
        .unwrap()
    }

    fn indexed(completions: i32, parallelism: i32, extra: Value) -> Value {
        let mut spec = json!({"completionMode": "Indexed", "completions": completions, "parallelism": parallelism,
            "backoffLimit": 0, "template": {"metadata": {"labels": {"app": "t"}},
            "spec": {"restartPolicy": "Never", "subdomain": "train", "containers": [{"name": "rank", "image": "i"}]}}});
        if let (Value::Object(spec), Value::Object(extra)) = (&mut spec, extra) {
            spec.extend(extra);
        }
        spec
    }

    fn pod(name: &str, index: usize, phase: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ml", "annotations": {COMPLETION_INDEX: index.to_string()},
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "rank"}]},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if phase == "Running" {"True"} else {"False"}}],
                       "containerStatuses": [{"name": "rank", "ready": phase == "Running", "restartCount": 0, "image": "i", "imageID": "",
                           "state": if phase == "Running" { json!({"running": {}}) } else {
                               json!({"terminated": {"exitCode": if phase == "Succeeded" {0} else {1}, "finishedAt": "2026-01-01T00:01:00Z"}}) }}]}
        }))
        .unwrap()
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn types(status: &JobStatus) -> Vec<String> {
        status
            .conditions
            .iter()
            .flatten()
            .map(|c| format!("{}:{}", c.type_, c.reason.clone().unwrap_or_default()))
            .collect()
    }

    #[test]
    fn indexes_compress_into_ranges() {
        assert_eq!(compress_indexes(&[0, 1, 2, 5, 7, 8].into_iter().collect()), "0-2,5,7-8");
        assert_eq!(compress_indexes(&BTreeSet::new()), "");
    }

    #[test]
    fn an_indexed_job_gets_one_pod_per_index_with_hostname_and_index() {
        let j = job(indexed(3, 2, json!({})), json!({}));
        let plan = plan(&j, &[], at("2026-01-01T00:00:00Z"));
        assert_eq!(plan.create, [Some(0), Some(1)], "parallelism 2");
        assert!(plan.status.start_time.is_some());
        let p = new_pod(&j, Some(1));
        assert_eq!(p.metadata.generate_name.as_deref(), Some("train-1-"));
        assert_eq!(p.labels()[COMPLETION_INDEX], "1");
        assert_eq!(p.annotations()[COMPLETION_INDEX], "1");
        let spec = p.spec.as_ref().unwrap();
        assert_eq!((spec.hostname.as_deref(), spec.subdomain.as_deref()), (Some("train-1"), Some("train")));
        let env = &spec.containers[0].env.as_ref().unwrap()[0];
        assert_eq!(env.name, COMPLETION_INDEX_ENV);
        assert_eq!(
            env.value_from.as_ref().unwrap().field_ref.as_ref().unwrap().field_path,
            "metadata.labels['batch.kubernetes.io/job-completion-index']"
        );
        let owner = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("Job", "job-uid", Some(true)));
        // Index 0 running, 1 done: 2 is next.
        let pods = [pod("a", 0, "Running"), pod("b", 1, "Succeeded")];
        let refs: Vec<&Pod> = pods.iter().collect();
        let plan = super::plan(&j, &refs, at("2026-01-01T00:02:00Z"));
        assert_eq!(plan.create, [Some(2)]);
        assert_eq!((plan.status.active, plan.status.succeeded, plan.status.ready), (Some(1), Some(1), Some(1)));
        assert_eq!(plan.status.completed_indexes.as_deref(), Some("1"));
    }

    #[test]
    fn all_indexes_succeeded_complete_the_job() {
        let j = job(indexed(2, 2, json!({})), json!({"startTime": "2026-01-01T00:00:00Z"}));
        let pods = [pod("a", 0, "Succeeded"), pod("b", 1, "Succeeded")];
        let refs: Vec<&Pod> = pods.iter().collect();
        let plan = plan(&j, &refs, at("2026-01-01T00:02:00Z"));
        assert!(plan.create.is_empty());
        assert_eq!(types(&plan.status), ["SuccessCriteriaMet:CompletionsReached", "Complete:CompletionsReached"]);
        assert_eq!(plan.status.completed_indexes.as_deref(), Some("0-1"));
        assert!(plan.status.completion_time.is_some());
    }

    #[test]
    fn failures_beyond_the_backoff_limit_fail_the_job_and_delete_its_active_pods() {
        let j = job(indexed(2, 2, json!({})), json!({"startTime": "2026-01-01T00:00:00Z"}));
        let pods = [pod("a", 0, "Running"), pod("b", 1, "Failed")];
        let refs: Vec<&Pod> = pods.iter().collect();
        let plan = plan(&j, &refs, at("2026-01-01T00:02:00Z"));
        assert_eq!(types(&plan.status), ["FailureTarget:BackoffLimitExceeded", "Failed:BackoffLimitExceeded"]);
        assert_eq!(plan.delete, ["a"]);
        assert_eq!(plan.status.failed, Some(1));
        // Within the limit the failed index is replaced after the back-off (10 s after its end).
        let lenient = job(indexed(2, 2, json!({"backoffLimit": 3})), json!({"startTime": "2026-01-01T00:00:00Z"}));
        let early = super::plan(&lenient, &refs, at("2026-01-01T00:01:05Z"));
        assert!(early.create.is_empty());
        assert_eq!(early.wait_until, Some(at("2026-01-01T00:01:10Z")));
        let later = super::plan(&lenient, &refs, at("2026-01-01T00:01:10Z"));
        assert_eq!(later.create, [Some(1)]);
    }

    #[test]
    fn the_active_deadline_fails_the_job() {
        let j = job(indexed(1, 1, json!({"activeDeadlineSeconds": 60})), json!({"startTime": "2026-01-01T00:00:00Z"}));
        let pods = [pod("a", 0, "Running")];
        let refs: Vec<&Pod> = pods.iter().collect();
        assert!(plan(&j, &refs, at("2026-01-01T00:00:59Z")).delete.is_empty());
        let late = plan(&j, &refs, at("2026-01-01T00:01:00Z"));
        assert_eq!(types(&late.status), ["FailureTarget:DeadlineExceeded", "Failed:DeadlineExceeded"]);
        assert_eq!(late.delete, ["a"]);
    }

    #[test]
    fn non_indexed_jobs_count_successes_and_suspension_stops_pods() {
        let spec = json!({"completions": 3, "parallelism": 2, "backoffLimit": 6,
            "template": {"spec": {"restartPolicy": "OnFailure", "containers": [{"name": "c"}]}}});
        let j = job(spec.clone(), json!({}));
        let pods = [pod("a", 0, "Succeeded"), pod("b", 0, "Succeeded"), pod("c", 0, "Running")];
        let refs: Vec<&Pod> = pods.iter().collect();
        let p = plan(&j, &refs, at("2026-01-01T00:02:00Z"));
        assert!(p.create.is_empty(), "3 - 2 succeeded = 1 needed, 1 running");
        assert_eq!(new_pod(&j, None).metadata.generate_name.as_deref(), Some("train-"));
        let mut suspended = spec;
        suspended["suspend"] = json!(true);
        let p = plan(&job(suspended, json!({})), &refs, at("2026-01-01T00:02:00Z"));
        assert_eq!(p.delete, ["c"]);
        assert_eq!(types(&p.status), ["Suspended:JobSuspended"]);
    }

    #[test]
    fn finished_jobs_expire_after_their_ttl() {
        let j = job(
            indexed(1, 1, json!({"ttlSecondsAfterFinished": 30})),
            json!({"conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}),
        );
        assert!(!plan(&j, &[], at("2026-01-01T00:00:29Z")).delete_job);
        assert!(plan(&j, &[], at("2026-01-01T00:00:30Z")).delete_job);
    }

    #[tokio::test]
    async fn the_controller_runs_an_indexed_job_to_completion_through_the_api() {
        let server = FakeApiServer::start().await;
        let client = server.client();
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(client.clone(), stop.clone()));
        let api = Api::<Job>::namespaced(client.clone(), "default");
        let j: Job =
            serde_json::from_value(json!({"metadata": {"name": "train"}, "spec": indexed(2, 2, json!({}))})).unwrap();
        api.create(&PostParams::default(), &j).await.unwrap();
        let pods_api = Api::<Pod>::namespaced(client.clone(), "default");
        let mut names = Vec::new();
        for _ in 0..200 {
            names = pods_api.list(&Default::default()).await.unwrap().items.iter().map(|p| p.name_any()).collect();
            if names.len() == 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        names.sort();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names[0].starts_with("train-0-") && names[1].starts_with("train-1-"), "{names:?}");
        // A kubelet's part: both succeed.
        for name in &names {
            let patch = json!({"status": {"phase": "Succeeded", "containerStatuses": [{"name": "rank", "ready": false,
                "restartCount": 0, "image": "i", "imageID": "", "state": {"terminated": {"exitCode": 0}}}]}});
            pods_api.patch_status(name, &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
        }
        let mut complete = false;
        for _ in 0..200 {
            let stored = server.get(Kind::Job, Some("default"), "train").unwrap();
            let conditions = stored["status"]["conditions"].as_array().cloned().unwrap_or_default();
            if conditions.iter().any(|c| c["type"] == "Complete" && c["status"] == "True") {
                assert_eq!(stored["status"]["succeeded"], 2);
                assert_eq!(stored["status"]["completedIndexes"], "0-1");
                complete = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        assert!(complete, "the Job completes");
        // Deleting the Job deletes its pods.
        api.delete("train", &DeleteParams::default()).await.unwrap();
        for _ in 0..200 {
            if pods_api.list(&Default::default()).await.unwrap().items.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        assert!(pods_api.list(&Default::default()).await.unwrap().items.is_empty());
        stop.cancel();
        task.await.unwrap();
    }
}
