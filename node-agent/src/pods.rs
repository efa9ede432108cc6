//! The pods of this node, as the API server has them: a watch on Pods with
//! `spec.nodeName=<node>`, kept in a store, so that a CNI ADD can wait for the master's
//! `skein.dev/pod-networks` annotation without polling the API.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client};
use skein_netmodel::annotations::{POD_NETWORKS, PodNetwork, parse_pod_networks};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tracing::{debug, warn};

/// Why a pod's network is not known.
#[derive(Debug, thiserror::Error)]
pub enum PodWaitError {
    /// The deadline passed.
    #[error("{what} after {waited:?}")]
    Timeout {
        /// What was still missing.
        what: String,
        /// How long we waited.
        waited: Duration,
    },
    /// The annotation is there but malformed.
    #[error("pod {namespace}/{name}: annotation {annotation}: {problem}")]
    Malformed {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The annotation.
        annotation: &'static str,
        /// What is wrong.
        problem: String,
    },
}

/// This node's pods.
#[derive(Clone)]
pub struct NodePods {
    store: Store<Pod>,
    changed: Arc<Notify>,
}

impl std::fmt::Debug for NodePods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodePods").field("pods", &self.store.state().len()).finish()
    }
}

impl NodePods {
    /// Starts watching the pods bound to `node`.
    pub fn start(client: Client, node: &str) -> NodePods {
        let api: Api<Pod> = Api::all(client);
        let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let (store, writer) = reflector::store();
        let changed = Arc::new(Notify::new());
        let notify = Arc::clone(&changed);
        let stream = reflector::reflector(writer, watcher(api, config));
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(_) => notify.notify_waiters(),
                    Err(e) => {
                        warn!(error = %e, "pod watch failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
        NodePods { store, changed }
    }

    /// Waits until the pod `namespace/name` (with `uid`, when given) has its
    /// `skein.dev/pod-networks` annotation, at most until `deadline`.
    pub async fn wait_network(
        &self,
        namespace: &str,
        name: &str,
        uid: Option<&str>,
        deadline: Instant,
    ) -> Result<PodNetwork, PodWaitError> {
        let start = Instant::now();
        let key = ObjectRef::<Pod>::new(name).within(namespace);
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let missing = match self.store.get(&key) {
                None => format!("pod {namespace}/{name} is not known on this node"),
                Some(pod) => {
                    let pod_uid = pod.metadata.uid.as_deref();
                    match (uid, pod_uid) {
                        (Some(want), Some(have)) if want != have => {
                            format!("pod {namespace}/{name} has UID {have}, not the runtime's {want}")
                        }
                        _ => match pod.metadata.annotations.as_ref().and_then(|a| a.get(POD_NETWORKS)) {
                            None => format!("pod {namespace}/{name} has no {POD_NETWORKS} annotation from the master"),
                            Some(text) => {
                                return parse_pod_networks(text).map_err(|e| PodWaitError::Malformed {
                                    namespace: namespace.to_owned(),
                                    name: name.to_owned(),
                                    annotation: POD_NETWORKS,
                                    problem: e.to_string(),
                                });
                            }
                        },
                    }
                }
            };
            debug!(%missing, "waiting for the pod's network");
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline) => {
                    return Err(PodWaitError::Timeout { what: missing, waited: start.elapsed() });
                }
            }
        }
    }
}
