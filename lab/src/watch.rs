//! The controllers' common loop: reflect some kinds into local caches through kube-runtime
//! watchers, and run a reconcile function whenever any of them changes (coalesced), and at
//! least every few seconds so that a failed write is retried.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

/// How often a controller reconciles even when nothing changed.
pub const RESYNC: Duration = Duration::from_secs(5);

/// Starts a reflector for `api` filtered by `config`; every change pokes `changed`.
/// Returns the cache (ready once the first list arrived).
pub fn reflect<K>(api: Api<K>, config: watcher::Config, changed: Arc<Notify>, stop: CancellationToken) -> Store<K>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config).default_backoff().reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                event = stream.next() => match event {
                    Some(Ok(_)) => changed.notify_one(),
                    Some(Err(error)) => tracing::debug!(%error, "watch error (retried)"),
                    None => break,
                },
            }
        }
    });
    reader
}

/// Waits for every cache's first list, then calls `reconcile` on each change (coalesced) and
/// every [`RESYNC`], until `stop`.
pub async fn run_loop<F, Fut>(
    name: &str,
    ready: Vec<Box<dyn ReadyWait>>,
    changed: Arc<Notify>,
    stop: CancellationToken,
    mut reconcile: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    for cache in ready {
        tokio::select! {
            () = stop.cancelled() => return,
            () = cache.wait() => {}
        }
    }
    tracing::info!(controller = name, "caches synced");
    loop {
        if let Err(error) = reconcile().await {
            tracing::warn!(controller = name, "{error:#}");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = changed.notified() => {
                // Let a burst of events land before reconciling once.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            () = tokio::time::sleep(RESYNC) => {}
        }
    }
}

/// A cache whose first list can be awaited.
pub trait ReadyWait: Send {
    /// Resolves once the cache has been filled by its first list.
    fn wait(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

impl<K> ReadyWait for Store<K>
where
    K: kube::Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    fn wait(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let _ = self.wait_until_ready().await;
        })
    }
}
