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
use skein_netmodel::southbound::ChassisView;
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

/// The addressing rule: a pod gets only the address the master allocated. The annotation
/// the CNI ADD read must say exactly what the master's view says for the pod's logical
/// port (the master ignores values it did not write, so a forged annotation has no port,
/// or another address, in the view). An error says what differs.
pub fn check_against_view(view: &ChassisView, logical_port: &str, network: &PodNetwork) -> Result<(), String> {
    let port = view
        .items
        .ports
        .iter()
        .find(|p| p.name == logical_port)
        .ok_or_else(|| format!("the master's view has no port {logical_port}"))?;
    if port.ips != network.ip_addresses || port.mac != Some(network.mac_address) {
        return Err(format!(
            "{POD_NETWORKS} says {:?} {}, but the master allocated {:?} {} to {logical_port}: the annotation is not the master's",
            network.ip_addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
            network.mac_address,
            port.ips.iter().map(ToString::to_string).collect::<Vec<_>>(),
            port.mac.map(|m| m.to_string()).unwrap_or_default(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use skein_netmodel::southbound::{DatapathKey, PortBinding, PortKey, PortKind};
    use skein_netmodel::{IpNet, MacAddr, ObjectKey};

    use super::*;

    fn network(ip: &str) -> PodNetwork {
        let net: IpNet = ip.parse().unwrap();
        PodNetwork {
            ip_addresses: vec![net],
            mac_address: MacAddr::derived(net.addr()),
            gateway_ips: Vec::new(),
            routes: Vec::new(),
            mtu: 1400,
        }
    }

    #[test]
    fn a_pod_gets_only_the_address_the_master_allocated() {
        let allocated = network("10.244.1.5/24");
        let mut view = ChassisView { chassis: "n1".into(), ..ChassisView::default() };
        view.items.ports.insert(PortBinding {
            datapath: DatapathKey::new(1).unwrap(),
            key: PortKey::new(5).unwrap(),
            name: "default/p1".into(),
            kind: PortKind::Pod { pod: ObjectKey::new("default", "p1"), uid: "u".into() },
            mac: Some(allocated.mac_address),
            ips: allocated.ip_addresses.clone(),
            chassis: Some("n1".into()),
        });
        check_against_view(&view, "default/p1", &allocated).unwrap();
        // A forged annotation naming another address, or a pod the master gave no port.
        let e = check_against_view(&view, "default/p1", &network("10.244.1.9/24")).unwrap_err();
        assert!(e.contains("10.244.1.9/24") && e.contains("10.244.1.5/24"), "{e}");
        let mut other_mac = allocated.clone();
        other_mac.mac_address = MacAddr([2, 0, 0, 0, 0, 1]);
        assert!(check_against_view(&view, "default/p1", &other_mac).is_err());
        let e = check_against_view(&view, "default/thief", &allocated).unwrap_err();
        assert!(e.contains("no port default/thief"), "{e}");
    }
}
