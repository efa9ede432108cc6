//! Watches through kube-rs: raw watch events, bookmarks and 410s, and kube-runtime's
//! watcher and reflector resuming after a closed watch, re-listing after 410 Expired, and
//! surviving an API server restart.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store as ReflectorStore};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use skein_kube_fake::{FakeApiServer, Kind, ServerOptions, Verb};
use tokio_stream::StreamExt;

fn typed<K: DeserializeOwned>(value: Value) -> K {
    serde_json::from_value(value).expect("test object matches its type")
}

fn pod(name: &str, labels: Value) -> Pod {
    typed(json!({"metadata": {"name": name, "labels": labels}, "spec": {"containers": []}}))
}

/// Waits (bounded) until `check` holds.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..500 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

async fn next_event<S, K>(stream: &mut S) -> WatchEvent<K>
where
    S: tokio_stream::Stream<Item = kube::Result<WatchEvent<K>>> + Unpin,
{
    match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
        Ok(Some(Ok(event))) => event,
        other => panic!("expected a watch event, got {:?}", other.map(|o| o.map(|r| r.map(|_| ()))),),
    }
}

fn describe<K: kube::Resource>(event: &WatchEvent<K>) -> String {
    match event {
        WatchEvent::Added(o) => format!("ADDED {}", o.meta().name.clone().unwrap_or_default()),
        WatchEvent::Modified(o) => format!("MODIFIED {}", o.meta().name.clone().unwrap_or_default()),
        WatchEvent::Deleted(o) => format!("DELETED {}", o.meta().name.clone().unwrap_or_default()),
        WatchEvent::Bookmark(_) => "BOOKMARK".into(),
        WatchEvent::Error(e) => format!("ERROR {}", e.code),
    }
}

#[tokio::test]
async fn raw_watch_events_replay_and_410() {
    let server = FakeApiServer::start().await;
    let pods: Api<Pod> = Api::namespaced(server.client(), "default");
    let start_rv = server.resource_version().to_string();
    let mut stream = pin!(pods.watch(&WatchParams::default().disable_bookmarks(), &start_rv).await.unwrap());
    pods.create(&PostParams::default(), &pod("a", json!({"app": "web"}))).await.unwrap();
    pods.patch("a", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"v": "2"}}}))).await.unwrap();
    pods.delete("a", &DeleteParams::default()).await.unwrap();
    let mut seen = Vec::new();
    let mut versions = Vec::new();
    for _ in 0..3 {
        let event = next_event(&mut stream).await;
        if let WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) = &event {
            versions.push(o.resource_version().unwrap().parse::<u64>().unwrap());
        }
        seen.push(describe(&event));
    }
    assert_eq!(seen, vec!["ADDED a", "MODIFIED a", "DELETED a"]);
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");

    // A new watch from the old resourceVersion replays the same history.
    let mut replay = pin!(pods.watch(&WatchParams::default().disable_bookmarks(), &start_rv).await.unwrap());
    let mut replayed = Vec::new();
    for _ in 0..3 {
        replayed.push(describe(&next_event(&mut replay).await));
    }
    assert_eq!(replayed, seen);

    // After compaction, the same watch is an ERROR event with 410.
    server.compact_all_history();
    let mut expired = pin!(pods.watch(&WatchParams::default().disable_bookmarks(), &start_rv).await.unwrap());
    match next_event(&mut expired).await {
        WatchEvent::Error(status) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
        }
        other => panic!("expected ERROR 410, got {}", describe(&other)),
    }
    assert!(tokio::time::timeout(Duration::from_secs(5), expired.next()).await.unwrap().is_none(), "stream ends");
}

#[tokio::test]
async fn watch_from_zero_sends_current_state_then_bookmarks() {
    let server = FakeApiServer::start_with(ServerOptions {
        bookmark_interval: Duration::from_millis(50),
        ..ServerOptions::default()
    })
    .await
    .unwrap();
    let nodes: Api<Node> = Api::all(server.client());
    nodes.create(&PostParams::default(), &typed(json!({"metadata": {"name": "n1"}}))).await.unwrap();
    let mut stream = pin!(nodes.watch(&WatchParams::default(), "0").await.unwrap());
    assert_eq!(describe(&next_event(&mut stream).await), "ADDED n1");
    match next_event(&mut stream).await {
        WatchEvent::Bookmark(bookmark) => {
            assert_eq!(bookmark.metadata.resource_version, server.resource_version().to_string());
            assert_eq!(bookmark.types.kind, "Node");
        }
        other => panic!("expected a bookmark, got {}", describe(&other)),
    }
    // timeoutSeconds ends the stream.
    let mut short = pin!(nodes.watch(&WatchParams::default().disable_bookmarks().timeout(1), "0").await.unwrap());
    assert_eq!(describe(&next_event(&mut short).await), "ADDED n1");
    assert!(tokio::time::timeout(Duration::from_secs(5), short.next()).await.unwrap().is_none());
}

#[tokio::test]
async fn selectors_on_watch_turn_moves_into_added_and_deleted() {
    let server = FakeApiServer::start().await;
    let pods: Api<Pod> = Api::all(server.client());
    let default_pods: Api<Pod> = Api::namespaced(server.client(), "default");
    let rv = server.resource_version().to_string();
    let mut web = pin!(pods.watch(&WatchParams::default().disable_bookmarks().labels("app=web"), &rv).await.unwrap());
    let mut on_n1 =
        pin!(pods.watch(&WatchParams::default().disable_bookmarks().fields("spec.nodeName=n1"), &rv).await.unwrap());
    default_pods.create(&PostParams::default(), &pod("a", json!({"app": "db"}))).await.unwrap();
    default_pods
        .patch("a", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"app": "web"}}})))
        .await
        .unwrap();
    default_pods
        .patch("a", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"v": "1"}}})))
        .await
        .unwrap();
    default_pods
        .patch("a", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"app": "db"}}})))
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(describe(&next_event(&mut web).await));
    }
    assert_eq!(seen, vec!["ADDED a", "MODIFIED a", "DELETED a"]);
    // Binding the pod to n1 makes it appear in the node's watch (what an agent watches).
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "a"}, "target": {"name": "n1"}});
    let _: kube::core::Status =
        default_pods.create_subresource("binding", "a", &PostParams::default(), &binding).await.unwrap();
    assert_eq!(describe(&next_event(&mut on_n1).await), "ADDED a");
}

fn names(store: &ReflectorStore<Pod>) -> Vec<String> {
    let mut names: Vec<String> = store.state().iter().map(|p| p.name_any()).collect();
    names.sort();
    names
}

fn spawn_reflector(client: Client, config: watcher::Config) -> ReflectorStore<Pod> {
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(Api::<Pod>::namespaced(client, "default"), config))
        .default_backoff()
        .applied_objects();
    tokio::spawn(async move {
        let mut stream = pin!(stream);
        // Errors (the 410 among them) are the watcher's to recover from; keep polling.
        while stream.next().await.is_some() {}
    });
    reader
}

#[tokio::test]
async fn watcher_resumes_after_closed_watch_and_relists_after_410() {
    let server = FakeApiServer::start().await;
    let client = server.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for name in ["a", "b"] {
        pods.create(&PostParams::default(), &pod(name, json!({}))).await.unwrap();
    }
    let store = spawn_reflector(client.clone(), watcher::Config::default());
    eventually("initial list", || async { names(&store) == ["a", "b"] }).await;
    assert_eq!(server.request_count(Verb::List, Kind::Pod), 1);

    // The API server closes the watch: the watcher resumes from its last resourceVersion
    // without listing again, and sees what happened in between.
    server.end_watches();
    pods.create(&PostParams::default(), &pod("c", json!({}))).await.unwrap();
    pods.delete("a", &DeleteParams::default()).await.unwrap();
    eventually("resume after a closed watch", || async { names(&store) == ["b", "c"] }).await;
    assert_eq!(server.request_count(Verb::List, Kind::Pod), 1, "resumed without re-listing");
    assert!(server.request_count(Verb::Watch, Kind::Pod) >= 2);

    // Now the watch is closed and its history compacted away while changes happen: the
    // resumed watch gets 410, the watcher re-lists, and the store ends up right — including
    // the deletion it never saw as an event.
    // Watches fail (503) until the compaction below is done, so the watcher can only come
    // back after it.
    let pause = server.resource_version();
    server.inject_fault(skein_kube_fake::Fault::new(503).verb(Verb::Watch).kind(Kind::Pod).times(usize::MAX));
    server.end_watches();
    pods.delete("b", &DeleteParams::default()).await.unwrap();
    pods.create(&PostParams::default(), &pod("d", json!({}))).await.unwrap();
    server.compact_history_before(server.resource_version() + 1);
    assert!(server.store().history_floor() > pause);
    server.store().clear_faults();
    eventually("re-list after 410", || async { names(&store) == ["c", "d"] }).await;
    assert!(server.request_count(Verb::List, Kind::Pod) >= 2, "re-listed after 410");

    // And it keeps watching afterwards.
    pods.patch("d", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}}))).await.unwrap();
    eventually("watch after re-list", || async {
        store.get(&reflector::ObjectRef::new("d").within("default")).is_some_and(|p| p.labels().get("x").is_some())
    })
    .await;
}

#[tokio::test]
async fn reflector_converges_with_label_selector_and_pagination() {
    let server = FakeApiServer::start().await;
    let client = server.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for i in 0..12 {
        let app = if i % 3 == 0 { "db" } else { "web" };
        pods.create(&PostParams::default(), &pod(&format!("p{i:02}"), json!({"app": app}))).await.unwrap();
    }
    let store = spawn_reflector(client.clone(), watcher::Config::default().labels("app=web").page_size(3));
    eventually("paged initial list", || async { names(&store).len() == 8 }).await;
    assert!(server.request_count(Verb::List, Kind::Pod) >= 3, "listed in pages");
    // Churn: relabel, delete, create; the store must end equal to a fresh list.
    pods.patch("p00", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"app": "web"}}})))
        .await
        .unwrap();
    pods.patch("p01", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"app": "db"}}})))
        .await
        .unwrap();
    pods.delete("p02", &DeleteParams::default()).await.unwrap();
    pods.create(&PostParams::default(), &pod("p99", json!({"app": "web"}))).await.unwrap();
    let expected = || async {
        let mut want: Vec<String> = pods
            .list(&kube::api::ListParams::default().labels("app=web"))
            .await
            .unwrap()
            .items
            .iter()
            .map(|p| p.name_any())
            .collect();
        want.sort();
        want
    };
    let want = expected().await;
    assert_eq!(want.len(), 8);
    eventually("reflector converges", || async { names(&store) == want }).await;
}

#[tokio::test]
async fn streaming_list_and_metadata_watcher() {
    let server = FakeApiServer::start().await;
    let client = server.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod("a", json!({"app": "web"}))).await.unwrap();
    let store = spawn_reflector(client.clone(), watcher::Config::default().streaming_lists());
    eventually("streaming list", || async { names(&store) == ["a"] }).await;
    assert_eq!(server.request_count(Verb::List, Kind::Pod), 0, "no list with streaming lists");
    pods.create(&PostParams::default(), &pod("b", json!({}))).await.unwrap();
    eventually("streaming list then watch", || async { names(&store) == ["a", "b"] }).await;

    // Metadata-only watches get PartialObjectMetadata.
    let metadata_only: Api<PartialObjectMeta<Pod>> = Api::namespaced(client.clone(), "default");
    let mut meta = pin!(watcher(metadata_only, watcher::Config::default()).applied_objects());
    let first = tokio::time::timeout(Duration::from_secs(5), meta.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.metadata.name.as_deref(), Some("a"));
    assert_eq!(first.labels()["app"], "web");
}

#[tokio::test]
async fn watchers_survive_an_api_server_restart() {
    let server = FakeApiServer::start().await;
    let addr = server.addr();
    let client = server.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod("a", json!({}))).await.unwrap();
    let store = spawn_reflector(client.clone(), watcher::Config::default());
    eventually("initial list", || async { names(&store) == ["a"] }).await;

    let kept = server.shutdown().await;
    // While the server is down, the cluster changes (the store is the "etcd").
    kept.insert(Kind::Pod, json!({"metadata": {"name": "b", "namespace": "default"}})).unwrap();
    let restarted =
        FakeApiServer::start_with(ServerOptions { addr, store: Some(kept), ..ServerOptions::default() }).await.unwrap();
    eventually("resume after restart", || async { names(&store) == ["a", "b"] }).await;
    restarted.delete(Kind::Pod, Some("default"), "a").unwrap();
    eventually("watch after restart", || async { names(&store) == ["b"] }).await;
}

#[tokio::test]
async fn many_watchers_see_every_change_in_order() {
    let server = FakeApiServer::start().await;
    let nodes: Api<Node> = Api::all(server.client());
    let rv = server.resource_version().to_string();
    let mut streams = Vec::new();
    for _ in 0..4 {
        streams.push(Box::pin(nodes.watch(&WatchParams::default().disable_bookmarks(), &rv).await.unwrap()));
    }
    for i in 0..50 {
        server
            .insert(Kind::Node, json!({"metadata": {"name": format!("n{}", i % 5), "labels": {"i": i.to_string()}}}))
            .unwrap();
    }
    for stream in &mut streams {
        let mut last: BTreeMap<String, String> = BTreeMap::new();
        for _ in 0..50 {
            match next_event(stream).await {
                WatchEvent::Added(n) | WatchEvent::Modified(n) => {
                    last.insert(n.name_any(), n.labels()["i"].clone());
                }
                other => panic!("unexpected {}", describe(&other)),
            }
        }
        let want: BTreeMap<String, String> = (45..50).map(|i: usize| (format!("n{}", i % 5), i.to_string())).collect();
        assert_eq!(last, want);
    }
}
