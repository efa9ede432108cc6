//! Watchers for the six kinds the network depends on. Each runs kube-runtime's `watcher`
//! (list, then watch from the list's resourceVersion; on expiry — 410 Gone — it lists
//! again) and turns its events into [`WatchEvent`]s for the controller. After every
//! (re)list it reports the objects that disappeared meanwhile as deletions, so a watch gap
//! never leaves a deleted object programmed.

use std::collections::HashSet;
use std::fmt::Debug;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// The kinds watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Nodes.
    Node,
    /// Namespaces.
    Namespace,
    /// Pods.
    Pod,
    /// Services.
    Service,
    /// EndpointSlices.
    EndpointSlice,
    /// NetworkPolicies.
    NetworkPolicy,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 6] =
        [Kind::Node, Kind::Namespace, Kind::Pod, Kind::Service, Kind::EndpointSlice, Kind::NetworkPolicy];

    /// The Kubernetes kind name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Node => "Node",
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::NetworkPolicy => "NetworkPolicy",
        }
    }
}

/// A watched object.
#[derive(Clone, Debug)]
pub enum Object {
    /// A Node.
    Node(Box<Node>),
    /// A Namespace.
    Namespace(Box<Namespace>),
    /// A Pod.
    Pod(Box<Pod>),
    /// A Service.
    Service(Box<Service>),
    /// An EndpointSlice.
    EndpointSlice(Box<EndpointSlice>),
    /// A NetworkPolicy.
    NetworkPolicy(Box<NetworkPolicy>),
}

/// Namespace (if namespaced) and name.
pub type Key = (Option<String>, String);

/// What a watcher reports.
#[derive(Clone, Debug)]
pub enum WatchEvent {
    /// An object was added or changed.
    Apply(Object),
    /// An object was deleted.
    Delete(Kind, Key),
    /// The first full list of a kind has been delivered.
    Synced(Kind),
}

fn key_of<K: Resource>(o: &K) -> Key {
    (o.meta().namespace.clone(), o.meta().name.clone().unwrap_or_default())
}

async fn watch_kind<K>(
    api: Api<K>,
    kind: Kind,
    wrap: fn(K) -> Object,
    tx: mpsc::UnboundedSender<WatchEvent>,
    stop: CancellationToken,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut known: HashSet<Key> = HashSet::new();
    let mut buffer: Option<Vec<K>> = None;
    let mut synced = false;
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            e = stream.next() => e,
        };
        let send = |e: WatchEvent| tx.send(e).is_ok();
        let ok = match event {
            None => return,
            Some(Err(e)) => {
                warn!(kind = kind.name(), error = %e, "watch failed; retrying with backoff");
                true
            }
            Some(Ok(Event::Init)) => {
                buffer = Some(Vec::new());
                true
            }
            Some(Ok(Event::InitApply(o))) => match buffer.as_mut() {
                Some(b) => {
                    b.push(o);
                    true
                }
                None => {
                    known.insert(key_of(&o));
                    send(WatchEvent::Apply(wrap(o)))
                }
            },
            Some(Ok(Event::InitDone)) => {
                let listed = buffer.take().unwrap_or_default();
                let keys: HashSet<Key> = listed.iter().map(key_of).collect();
                debug!(kind = kind.name(), objects = keys.len(), "listed");
                let mut ok = true;
                for gone in known.difference(&keys) {
                    ok &= send(WatchEvent::Delete(kind, gone.clone()));
                }
                for o in listed {
                    ok &= send(WatchEvent::Apply(wrap(o)));
                }
                known = keys;
                if !synced {
                    synced = true;
                    ok &= send(WatchEvent::Synced(kind));
                }
                ok
            }
            Some(Ok(Event::Apply(o))) => {
                known.insert(key_of(&o));
                send(WatchEvent::Apply(wrap(o)))
            }
            Some(Ok(Event::Delete(o))) => {
                let key = key_of(&o);
                known.remove(&key);
                send(WatchEvent::Delete(kind, key))
            }
        };
        if !ok {
            return;
        }
    }
}

/// Starts one watcher per kind; they stop when `stop` is cancelled or `tx` closes.
pub fn start(client: &kube::Client, tx: &mpsc::UnboundedSender<WatchEvent>, stop: &CancellationToken) {
    let c = client.clone();
    tokio::spawn(watch_kind(
        Api::<Node>::all(c.clone()),
        Kind::Node,
        |o| Object::Node(Box::new(o)),
        tx.clone(),
        stop.clone(),
    ));
    tokio::spawn(watch_kind(
        Api::<Namespace>::all(c.clone()),
        Kind::Namespace,
        |o| Object::Namespace(Box::new(o)),
        tx.clone(),
        stop.clone(),
    ));
    tokio::spawn(watch_kind(
        Api::<Pod>::all(c.clone()),
        Kind::Pod,
        |o| Object::Pod(Box::new(o)),
        tx.clone(),
        stop.clone(),
    ));
    tokio::spawn(watch_kind(
        Api::<Service>::all(c.clone()),
        Kind::Service,
        |o| Object::Service(Box::new(o)),
        tx.clone(),
        stop.clone(),
    ));
    tokio::spawn(watch_kind(
        Api::<EndpointSlice>::all(c.clone()),
        Kind::EndpointSlice,
        |o| Object::EndpointSlice(Box::new(o)),
        tx.clone(),
        stop.clone(),
    ));
    tokio::spawn(watch_kind(
        Api::<NetworkPolicy>::all(c),
        Kind::NetworkPolicy,
        |o| Object::NetworkPolicy(Box::new(o)),
        tx.clone(),
        stop.clone(),
    ));
}
