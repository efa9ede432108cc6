//! Writing the master's annotations: conflict-safe merge patches with retries and backoff.
//!
//! Every write reads the object first and patches with its `resourceVersion` as a
//! precondition, so a concurrent change (another writer, a stale leader) makes the patch
//! fail with 409 and the write starts again from a fresh read instead of clobbering it.
//! An annotation that is already there with another value is never overwritten (unless
//! the caller says so: the chassis registration): the caller gets it back instead.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::metrics::MasterMetrics;

/// Retry policy of annotation writes.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// First delay after a failed attempt.
    pub initial: Duration,
    /// Longest delay.
    pub max: Duration,
    /// How often writes the API server refused for good (admission, RBAC, validation) are
    /// tried again, in case what refused them changed (a fixed ClusterRole, a relaxed
    /// admission policy). A change of the object tries again at once.
    pub rejected_retry: Duration,
}

impl Default for Backoff {
    /// 50 ms doubling up to 10 s; refused writes again every minute.
    fn default() -> Backoff {
        Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(10),
            rejected_retry: Duration::from_secs(60),
        }
    }
}

/// How a write ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The annotation now has the value.
    Written,
    /// The annotation already had another value (returned), which was kept.
    AlreadyAnnotated(String),
    /// The object is gone (or, for a pod, was replaced by one with another UID).
    Gone,
    /// Shutting down or no longer leading: not written.
    Abandoned,
    /// The API server refused the write for good (a 4xx other than a conflict, a missing
    /// object or throttling: admission, RBAC, validation): retrying the same write would
    /// only hold a write slot forever. The reason is returned.
    Rejected(String),
}

/// What to write.
#[derive(Clone, Debug)]
pub struct AnnotationWrite {
    /// Namespace (`None` for nodes).
    pub namespace: Option<String>,
    /// Object name.
    pub name: String,
    /// Expected UID, if known (a recreated object with the same name is another object).
    pub uid: Option<String>,
    /// Annotation key.
    pub key: &'static str,
    /// Annotation value.
    pub value: String,
    /// Replace another value if present.
    pub overwrite: bool,
    /// Another annotation written in the same patch (the signature of the value).
    pub companion: Option<(&'static str, String)>,
}

/// Writes `write` on a Node or Pod (by `namespace`), retrying until done, the object is
/// gone, or `stop` is cancelled.
pub async fn write(
    client: &kube::Client,
    write: &AnnotationWrite,
    backoff: Backoff,
    metrics: &MasterMetrics,
    stop: &CancellationToken,
) -> WriteOutcome {
    match &write.namespace {
        Some(ns) => write_on(Api::<Pod>::namespaced(client.clone(), ns), write, backoff, metrics, stop).await,
        None => write_on(Api::<Node>::all(client.clone()), write, backoff, metrics, stop).await,
    }
}

async fn write_on<K>(
    api: Api<K>,
    write: &AnnotationWrite,
    backoff: Backoff,
    metrics: &MasterMetrics,
    stop: &CancellationToken,
) -> WriteOutcome
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut delay = backoff.initial;
    let object = match &write.namespace {
        Some(ns) => format!("pod {ns}/{}", write.name),
        None => format!("node {}", write.name),
    };
    loop {
        if stop.is_cancelled() {
            return WriteOutcome::Abandoned;
        }
        let attempt = async {
            let Some(current) = api.get_opt(&write.name).await? else { return Ok(Some(WriteOutcome::Gone)) };
            let meta = current.meta();
            if let (Some(want), Some(have)) = (&write.uid, &meta.uid)
                && want != have
            {
                return Ok(Some(WriteOutcome::Gone));
            }
            if let Some(existing) = meta.annotations.as_ref().and_then(|a| a.get(write.key)) {
                if *existing == write.value {
                    return Ok(Some(WriteOutcome::Written));
                }
                if !write.overwrite {
                    return Ok(Some(WriteOutcome::AlreadyAnnotated(existing.clone())));
                }
            }
            let mut annotations = serde_json::Map::new();
            annotations.insert(write.key.to_owned(), write.value.clone().into());
            if let Some((key, value)) = &write.companion {
                annotations.insert((*key).to_owned(), value.clone().into());
            }
            let patch = serde_json::json!({
                "metadata": {
                    "resourceVersion": meta.resource_version,
                    "annotations": annotations,
                }
            });
            api.patch(&write.name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
            Ok::<_, kube::Error>(None)
        };
        let result = tokio::select! {
            r = attempt => r,
            () = stop.cancelled() => return WriteOutcome::Abandoned,
        };
        match result {
            Ok(Some(outcome)) => return outcome,
            Ok(None) => {
                debug!(%object, annotation = write.key, "annotation written");
                return WriteOutcome::Written;
            }
            Err(kube::Error::Api(status)) if status.is_conflict() => {
                // Changed under us: read again at once.
                debug!(%object, "annotation write conflicted; retrying");
                continue;
            }
            Err(kube::Error::Api(status)) if status.is_not_found() => return WriteOutcome::Gone,
            Err(kube::Error::Api(status)) if (400..500).contains(&status.code) && status.code != 429 => {
                metrics.annotation_write_errors.inc();
                warn!(%object, annotation = write.key, code = status.code, reason = %status.message, "annotation write refused (tried again when the object changes, and periodically)");
                return WriteOutcome::Rejected(format!("{} {}: {}", status.code, status.reason, status.message));
            }
            Err(e) => {
                metrics.annotation_write_errors.inc();
                warn!(%object, annotation = write.key, error = %e, retry_in = ?delay, "annotation write failed");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stop.cancelled() => return WriteOutcome::Abandoned,
                }
                delay = (delay * 2).min(backoff.max);
            }
        }
    }
}
