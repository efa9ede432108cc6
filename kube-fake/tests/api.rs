//! The fake API server driven only through kube-rs: CRUD for every kind, every patch type,
//! selectors, conflicts, error statuses, discovery, kubeconfig, injected faults.

use std::fmt::Debug;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use skein_kube_fake::{FakeApiServer, Fault, Kind, Verb};

fn typed<K: DeserializeOwned>(value: Value) -> K {
    serde_json::from_value(value).expect("test object matches its type")
}

fn api_error(result: Result<impl Debug, kube::Error>) -> Box<kube::core::Status> {
    match result {
        Err(kube::Error::Api(status)) => status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// create → get → list → replace → merge/strategic/json/apply patch → delete → 404, with the
/// metadata the server must assign at each step.
async fn crud_round_trip<K>(api: Api<K>, object: Value)
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
{
    let kind = K::kind(&());
    let created = api.create(&PostParams::default(), &typed::<K>(object.clone())).await.unwrap();
    let name = created.name_any();
    let meta = created.meta();
    assert!(meta.uid.as_deref().is_some_and(|u| u.len() == 36), "{kind}: uid {meta:?}");
    assert!(meta.creation_timestamp.is_some(), "{kind}: creationTimestamp");
    assert_eq!(meta.generation, Some(1), "{kind}: generation");
    let rv1: u64 = meta.resource_version.as_deref().unwrap().parse().unwrap();

    let again = api_error(api.create(&PostParams::default(), &typed::<K>(object.clone())).await);
    assert_eq!((again.code, again.reason.as_str()), (409, "AlreadyExists"), "{kind}");

    let fetched = api.get(&name).await.unwrap();
    assert_eq!(fetched.meta().uid, created.meta().uid);
    let listed = api.list(&ListParams::default()).await.unwrap();
    assert!(listed.items.iter().any(|o| o.name_any() == name), "{kind}: list");
    let list_rv: u64 = listed.metadata.resource_version.unwrap().parse().unwrap();
    assert!(list_rv >= rv1);

    let mut replaced = fetched.clone();
    replaced.labels_mut().insert("step".into(), "replace".into());
    let replaced = api.replace(&name, &PostParams::default(), &replaced).await.unwrap();
    let rv2: u64 = replaced.resource_version().unwrap().parse().unwrap();
    assert!(rv2 > rv1, "{kind}: replace bumps resourceVersion");
    assert_eq!(replaced.labels()["step"], "replace");
    // Stale resourceVersion: 409 Conflict.
    let stale = api_error(api.replace(&name, &PostParams::default(), &fetched).await);
    assert_eq!((stale.code, stale.reason.as_str()), (409, "Conflict"), "{kind}");

    let merged = api
        .patch(&name, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"merge": "yes"}}})))
        .await
        .unwrap();
    assert_eq!(merged.labels()["merge"], "yes");
    assert_eq!(merged.labels()["step"], "replace");
    let strategic = api
        .patch(&name, &PatchParams::default(), &Patch::Strategic(json!({"metadata": {"labels": {"strategic": "yes"}}})))
        .await
        .unwrap();
    assert_eq!(strategic.labels()["strategic"], "yes");
    let operations = json_patch(json!([
        {"op": "test", "path": "/metadata/labels/merge", "value": "yes"},
        {"op": "remove", "path": "/metadata/labels/merge"},
        {"op": "add", "path": "/metadata/annotations", "value": {"skein.dev/json": "patched"}}
    ]));
    let patched = api.patch(&name, &PatchParams::default(), &operations).await.unwrap();
    assert!(!patched.labels().contains_key("merge"));
    assert_eq!(patched.annotations()["skein.dev/json"], "patched");
    let applied = api
        .patch(
            &name,
            &PatchParams::apply("skein-test"),
            &Patch::Apply(json!({
                "apiVersion": K::api_version(&()),
                "kind": kind,
                "metadata": {"name": name, "labels": {"applied": "yes"}}
            })),
        )
        .await
        .unwrap();
    assert_eq!(applied.labels()["applied"], "yes");
    assert_eq!(applied.labels()["strategic"], "yes", "{kind}: apply merges");
    assert!(applied.meta().managed_fields.as_ref().unwrap().iter().any(|m| m.manager.as_deref() == Some("skein-test")));

    let deleted = api.delete(&name, &DeleteParams::default()).await.unwrap();
    assert!(deleted.is_left(), "{kind}: delete returns the object");
    let gone = api_error(api.get(&name).await);
    assert_eq!((gone.code, gone.reason.as_str()), (404, "NotFound"), "{kind}");
    let gone = api_error(api.delete(&name, &DeleteParams::default()).await);
    assert_eq!(gone.code, 404);
}

/// An RFC 6902 patch for kube-rs (its `json_patch::Patch` type is inferred, not named).
fn json_patch(operations: Value) -> Patch<()> {
    Patch::Json(serde_json::from_value(operations).expect("valid JSON patch document"))
}

#[tokio::test]
async fn crud_for_every_kind() {
    let server = FakeApiServer::start().await;
    let client = server.client();
    crud_round_trip(Api::<Node>::all(client.clone()), json!({"metadata": {"name": "node-1"}})).await;
    crud_round_trip(Api::<Namespace>::all(client.clone()), json!({"metadata": {"name": "team-a"}})).await;
    crud_round_trip(
        Api::<Pod>::namespaced(client.clone(), "default"),
        json!({"metadata": {"name": "web"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
    )
    .await;
    crud_round_trip(
        Api::<Service>::namespaced(client.clone(), "default"),
        json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}),
    )
    .await;
    crud_round_trip(
        Api::<Event>::namespaced(client.clone(), "default"),
        json!({"metadata": {"name": "web.1"}, "involvedObject": {"kind": "Pod", "name": "web"}, "reason": "Test"}),
    )
    .await;
    crud_round_trip(
        Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), "default"),
        json!({"metadata": {"name": "web.2"}, "eventTime": "2025-01-01T00:00:00.000000Z", "reason": "Test"}),
    )
    .await;
    crud_round_trip(
        Api::<EndpointSlice>::namespaced(client.clone(), "default"),
        json!({"metadata": {"name": "web-abc"}, "addressType": "IPv4", "endpoints": [{"addresses": ["10.244.1.5"]}]}),
    )
    .await;
    crud_round_trip(
        Api::<NetworkPolicy>::namespaced(client.clone(), "default"),
        json!({"metadata": {"name": "deny"}, "spec": {"podSelector": {}}}),
    )
    .await;
    crud_round_trip(
        Api::<Lease>::namespaced(client.clone(), "kube-system"),
        json!({"metadata": {"name": "skein-master"}, "spec": {"holderIdentity": "a"}}),
    )
    .await;
    crud_round_trip(
        Api::<Job>::namespaced(client.clone(), "default"),
        json!({"metadata": {"name": "train"}, "spec": {"completionMode": "Indexed", "completions": 2,
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}}),
    )
    .await;
}

#[tokio::test]
async fn jobs_get_a_selector_on_their_uid_and_invalid_ones_are_refused() {
    let server = FakeApiServer::start().await;
    let api = Api::<Job>::namespaced(server.client(), "default");
    let job: Job = typed(json!({"metadata": {"name": "train"}, "spec": {"completionMode": "Indexed", "completions": 2,
        "template": {"metadata": {"labels": {"app": "t"}}, "spec": {"restartPolicy": "Never", "containers": [{"name": "c"}]}}}}));
    let created = api.create(&PostParams::default(), &job).await.unwrap();
    let uid = created.uid().unwrap();
    let spec = created.spec.unwrap();
    let selector = spec.selector.unwrap().match_labels.unwrap();
    assert_eq!(selector["batch.kubernetes.io/controller-uid"], uid);
    let labels = spec.template.metadata.unwrap().labels.unwrap();
    assert_eq!((labels["batch.kubernetes.io/job-name"].as_str(), labels["app"].as_str()), ("train", "t"));
    assert_eq!((spec.parallelism, spec.backoff_limit), (Some(1), Some(6)));
    let bad: Job = typed(json!({"metadata": {"name": "bad"}, "spec": {"completionMode": "Indexed", "parallelism": 2,
        "template": {"spec": {"restartPolicy": "Always", "containers": [{"name": "c"}]}}}}));
    let error = api_error(api.create(&PostParams::default(), &bad).await);
    assert_eq!(error.code, 422, "{error:?}");
    assert!(
        error.message.contains("spec.template.spec.restartPolicy: Unsupported value: \"Always\""),
        "{}",
        error.message
    );
    assert!(error.message.contains("spec.completions: Required value"), "{}", error.message);
}

#[tokio::test]
async fn namespaced_objects_are_isolated_and_listable_across_namespaces() {
    let server = FakeApiServer::start().await;
    let client = server.client();
    for ns in ["a", "b"] {
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &typed(json!({"metadata": {"name": ns}})))
            .await
            .unwrap();
        Api::<Pod>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &typed(json!({"metadata": {"name": "p"}})))
            .await
            .unwrap();
    }
    let all = Api::<Pod>::all(client.clone()).list(&ListParams::default()).await.unwrap();
    let names: Vec<_> = all.items.iter().map(|p| (p.namespace().unwrap(), p.name_any())).collect();
    assert_eq!(names, vec![("a".into(), "p".into()), ("b".into(), "p".into())]);
    assert_eq!(Api::<Pod>::namespaced(client.clone(), "a").list(&ListParams::default()).await.unwrap().items.len(), 1);
    // Deleting a namespace deletes what is in it.
    Api::<Namespace>::all(client.clone()).delete("a", &DeleteParams::default()).await.unwrap();
    let left = Api::<Pod>::all(client.clone()).list(&ListParams::default()).await.unwrap();
    assert_eq!(left.items.len(), 1);
    // A body namespace that contradicts the URL is a 400.
    let err = api_error(
        Api::<Pod>::namespaced(client, "b")
            .create(&PostParams::default(), &typed(json!({"metadata": {"name": "q", "namespace": "c"}})))
            .await,
    );
    assert_eq!(err.code, 400);
}

#[tokio::test]
async fn label_and_field_selectors() {
    let server = FakeApiServer::start().await;
    let pods: Api<Pod> = Api::namespaced(server.client(), "default");
    for (name, app, tier, node) in
        [("a", "web", "front", "n1"), ("b", "web", "back", "n2"), ("c", "db", "back", "n1"), ("d", "cache", "", "n2")]
    {
        let mut labels = json!({"app": app});
        if !tier.is_empty() {
            labels["tier"] = json!(tier);
        }
        pods.create(
            &PostParams::default(),
            &typed(json!({"metadata": {"name": name, "labels": labels}, "spec": {"nodeName": node, "containers": []}})),
        )
        .await
        .unwrap();
    }
    let names = |list: kube::core::ObjectList<Pod>| list.items.iter().map(|p| p.name_any()).collect::<Vec<_>>();
    for (selector, want) in [
        ("app=web", vec!["a", "b"]),
        ("app!=web", vec!["c", "d"]),
        ("app in (web,db)", vec!["a", "b", "c"]),
        ("app notin (web)", vec!["c", "d"]),
        ("tier", vec!["a", "b", "c"]),
        ("!tier", vec!["d"]),
        ("app=web,tier=back", vec!["b"]),
    ] {
        let got = names(pods.list(&ListParams::default().labels(selector)).await.unwrap());
        assert_eq!(got, want, "labelSelector {selector}");
    }
    for (selector, want) in [
        ("spec.nodeName=n1", vec!["a", "c"]),
        ("spec.nodeName!=n1", vec!["b", "d"]),
        ("metadata.name=b", vec!["b"]),
        ("metadata.namespace=default,spec.nodeName=n2", vec!["b", "d"]),
    ] {
        let got = names(pods.list(&ListParams::default().fields(selector)).await.unwrap());
        assert_eq!(got, want, "fieldSelector {selector}");
    }
    let all_pods: Api<Pod> = Api::all(server.client());
    assert_eq!(names(all_pods.list(&ListParams::default().fields("spec.nodeName=n2")).await.unwrap()), vec!["b", "d"]);
    let bad = api_error(pods.list(&ListParams::default().labels("app in web")).await);
    assert_eq!((bad.code, bad.reason.as_str()), (400, "BadRequest"));
    assert!(bad.message.contains("labelSelector"), "{}", bad.message);
    let bad = api_error(pods.list(&ListParams::default().fields("spec.bogus=1")).await);
    assert_eq!(bad.code, 400);
    assert!(bad.message.contains("spec.bogus"), "{}", bad.message);
}

#[tokio::test]
async fn pagination_is_consistent_and_continue_tokens_expire() {
    let server = FakeApiServer::start().await;
    let nodes: Api<Node> = Api::all(server.client());
    for i in 0..5 {
        nodes.create(&PostParams::default(), &typed(json!({"metadata": {"name": format!("n{i}")}}))).await.unwrap();
    }
    let first = nodes.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(first.items.len(), 2);
    let token = first.metadata.continue_.clone().unwrap();
    // A change between pages does not show up in the rest of this list.
    nodes.delete("n3", &DeleteParams::default()).await.unwrap();
    let second = nodes.list(&ListParams::default().limit(10).continue_token(&token)).await.unwrap();
    let names: Vec<_> = second.items.iter().map(|n| n.name_any()).collect();
    assert_eq!(names, vec!["n2", "n3", "n4"]);
    assert_eq!(second.metadata.resource_version, first.metadata.resource_version);
    assert!(second.metadata.continue_.is_none());
    server.compact_all_history();
    let expired = api_error(nodes.list(&ListParams::default().limit(2).continue_token(&token)).await);
    assert_eq!((expired.code, expired.reason.as_str()), (410, "Expired"));
    // An exact list at a compacted resourceVersion is 410 too; a NotOlderThan one is served.
    let old_rv = first.metadata.resource_version.unwrap();
    let exact = ListParams::default().at(&old_rv).matching(kube::api::VersionMatch::Exact);
    assert_eq!(api_error(nodes.list(&exact).await).code, 410);
    let not_older = ListParams::default().at(&old_rv).matching(kube::api::VersionMatch::NotOlderThan);
    assert_eq!(nodes.list(&not_older).await.unwrap().items.len(), 4);
}

#[tokio::test]
async fn exact_list_reconstructs_past_state() {
    let server = FakeApiServer::start().await;
    let nodes: Api<Node> = Api::all(server.client());
    nodes.create(&PostParams::default(), &typed(json!({"metadata": {"name": "a"}}))).await.unwrap();
    let rv = nodes.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();
    nodes.create(&PostParams::default(), &typed(json!({"metadata": {"name": "b"}}))).await.unwrap();
    nodes
        .patch("a", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}})))
        .await
        .unwrap();
    let past = nodes.list(&ListParams::default().at(&rv).matching(kube::api::VersionMatch::Exact)).await.unwrap();
    assert_eq!(past.items.len(), 1);
    assert!(past.items[0].labels().is_empty());
    assert_eq!(past.metadata.resource_version.as_deref(), Some(rv.as_str()));
}

#[tokio::test]
async fn strategic_merge_keys_and_status_subresource() {
    let server = FakeApiServer::start().await;
    let pods: Api<Pod> = Api::namespaced(server.client(), "default");
    pods.create(
        &PostParams::default(),
        &typed(json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "image": "a:1", "ports": [{"containerPort": 80}]},
            {"name": "b", "image": "b:1"}
        ]}})),
    )
    .await
    .unwrap();
    let patched = pods
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Strategic(
                json!({"spec": {"containers": [{"name": "a", "image": "a:2", "ports": [{"containerPort": 81}]}]}}),
            ),
        )
        .await
        .unwrap();
    let containers = &patched.spec.as_ref().unwrap().containers;
    assert_eq!(containers.len(), 2, "containers merge by name");
    assert_eq!(containers[0].image.as_deref(), Some("a:2"));
    let ports: Vec<i32> = containers[0].ports.as_ref().unwrap().iter().map(|p| p.container_port).collect();
    assert_eq!(ports, vec![80, 81], "ports merge by containerPort");
    assert_eq!(containers[0].ports.as_ref().unwrap()[0].protocol.as_deref(), Some("TCP"), "protocol defaulted");
    assert_eq!(patched.metadata.generation, Some(2), "a spec change bumps generation");
    assert_eq!(patched.status.as_ref().unwrap().phase.as_deref(), Some("Pending"));

    // Status via the main resource is ignored; via /status it lands and generation stays.
    let ignored =
        pods.patch("p", &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Running"}}))).await.unwrap();
    assert_eq!(ignored.status.as_ref().unwrap().phase.as_deref(), Some("Pending"));
    let running = pods
        .patch_status(
            "p",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"phase": "Running", "podIPs": [{"ip": "10.244.1.5"}]}, "spec": {"nodeName": "x"}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(running.status.as_ref().unwrap().phase.as_deref(), Some("Running"));
    assert!(running.spec.as_ref().unwrap().node_name.is_none(), "/status changes only status");
    assert_eq!(running.metadata.generation, Some(2));
    let mut replace = running.clone();
    replace.status.as_mut().unwrap().phase = Some("Succeeded".into());
    let replaced = pods.replace_status("p", &PostParams::default(), &replace).await.unwrap();
    assert_eq!(replaced.status.unwrap().phase.as_deref(), Some("Succeeded"));
    let got = pods.get_status("p").await.unwrap();
    assert_eq!(got.status.unwrap().phase.as_deref(), Some("Succeeded"));

    let nodes: Api<Node> = Api::all(server.client());
    nodes.create(&PostParams::default(), &typed(json!({"metadata": {"name": "n1"}}))).await.unwrap();
    let node = nodes
        .patch_status(
            "n1",
            &PatchParams::default(),
            &Patch::Strategic(json!({"status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.11"}]}})),
        )
        .await
        .unwrap();
    assert_eq!(node.status.unwrap().addresses.unwrap()[0].address, "192.0.2.11");
}

#[tokio::test]
async fn no_op_writes_keep_the_resource_version() {
    let server = FakeApiServer::start().await;
    let nodes: Api<Node> = Api::all(server.client());
    let created = nodes.create(&PostParams::default(), &typed(json!({"metadata": {"name": "n"}}))).await.unwrap();
    let same =
        nodes.patch("n", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": null}}))).await.unwrap();
    assert_eq!(same.resource_version(), created.resource_version());
}

#[tokio::test]
async fn bad_input_gets_a_status_not_a_panic() {
    let server = FakeApiServer::start().await;
    let client = server.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &typed(json!({"metadata": {"name": "p"}}))).await.unwrap();
    // A failing JSON patch test: 422, object unchanged.
    let failed = json_patch(json!([{"op": "test", "path": "/metadata/name", "value": "other"}]));
    let err = api_error(pods.patch("p", &PatchParams::default(), &failed).await);
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    // A patch whose resourceVersion is stale: 409.
    let err = api_error(
        pods.patch("p", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"resourceVersion": "1"}}))).await,
    );
    assert_eq!(err.code, 409);
    // A strategic patch with an unknown directive: 400.
    let err = api_error(
        pods.patch("p", &PatchParams::default(), &Patch::Strategic(json!({"metadata": {"$patch": "explode"}}))).await,
    );
    assert_eq!(err.code, 400);
    // Patching something absent: 404.
    let err = api_error(pods.patch("nope", &PatchParams::default(), &Patch::Merge(json!({}))).await);
    assert_eq!(err.code, 404);
    // Invalid names: 422.
    let err = api_error(pods.create(&PostParams::default(), &typed(json!({"metadata": {"name": "Bad_Name"}}))).await);
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    // Raw requests: malformed JSON body, unknown path, unknown patch type.
    let raw = |method: &str, uri: &str, content_type: &str, body: &str| {
        hyper::Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", content_type)
            .body(body.as_bytes().to_vec())
            .unwrap()
    };
    for (request, code) in [
        (raw("POST", "/api/v1/namespaces/default/pods", "application/json", "{not json"), 400),
        (raw("GET", "/api/v1/frobnicators", "application/json", ""), 404),
        (raw("GET", "/apis/nothing.example/v1", "application/json", ""), 404),
        (raw("PATCH", "/api/v1/namespaces/default/pods/p", "text/plain", "{}"), 415),
        (raw("PATCH", "/api/v1/namespaces/default/pods/p", "application/merge-patch+json", "[1]"), 400),
        (raw("PATCH", "/api/v1/namespaces/default/pods/p", "application/apply-patch+yaml", "{\"kind\":\"Pod\"}"), 400),
        (raw("GET", "/api/v1/namespaces/default/pods/p/exec", "application/json", ""), 404),
        (raw("GET", "/api/v1/namespaces/default/pods?limit=abc", "application/json", ""), 400),
        (raw("GET", "/api/v1/namespaces/default/pods?continue=zz", "application/json", ""), 400),
        (
            raw(
                "GET",
                "/api/v1/namespaces/default/pods?resourceVersion=x&resourceVersionMatch=Exact",
                "application/json",
                "",
            ),
            400,
        ),
    ] {
        let uri = request.uri().to_string();
        let err = api_error(client.request::<Value>(request).await);
        assert_eq!(err.code, code, "{uri}: {err:?}");
        assert!(!err.message.is_empty());
    }
}

#[tokio::test]
async fn services_get_cluster_ips_and_node_ports() {
    let server = FakeApiServer::start().await;
    let services: Api<Service> = Api::namespaced(server.client(), "default");
    let a = services
        .create(&PostParams::default(), &typed(json!({"metadata": {"name": "a"}, "spec": {"ports": [{"port": 80}]}})))
        .await
        .unwrap();
    let spec = a.spec.unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.2"));
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    let port = &spec.ports.unwrap()[0];
    assert_eq!(port.protocol.as_deref(), Some("TCP"));
    assert!(port.node_port.is_none());
    let b = services
        .create(
            &PostParams::default(),
            &typed(json!({"metadata": {"name": "b"}, "spec": {"type": "NodePort", "ports": [{"port": 80, "targetPort": "http"}]}})),
        )
        .await
        .unwrap();
    let spec = b.spec.unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.3"));
    assert_eq!(spec.ports.as_ref().unwrap()[0].node_port, Some(30000));
    // NodePort and ClusterIP survive a replace that leaves them out.
    let mut again: Service = services.get("b").await.unwrap();
    let spec_mut = again.spec.as_mut().unwrap();
    spec_mut.cluster_ip = None;
    spec_mut.cluster_ips = None;
    spec_mut.ports.as_mut().unwrap()[0].node_port = None;
    let replaced = services.replace("b", &PostParams::default(), &again).await.unwrap().spec.unwrap();
    assert_eq!(replaced.cluster_ip.as_deref(), Some("10.96.0.3"));
    assert_eq!(replaced.ports.unwrap()[0].node_port, Some(30000));
    // A taken ClusterIP or NodePort is 422.
    let err = api_error(
        services
            .create(
                &PostParams::default(),
                &typed(json!({"metadata": {"name": "c"}, "spec": {"clusterIP": "10.96.0.2", "ports": [{"port": 1}]}})),
            )
            .await,
    );
    assert_eq!(err.code, 422);
    let err = api_error(
        services
            .create(
                &PostParams::default(),
                &typed(json!({"metadata": {"name": "c"}, "spec": {"type": "NodePort", "ports": [{"port": 1, "nodePort": 30000}]}})),
            )
            .await,
    );
    assert_eq!(err.code, 422);
    // Headless stays headless.
    let headless = services
        .create(&PostParams::default(), &typed(json!({"metadata": {"name": "h"}, "spec": {"clusterIP": "None"}})))
        .await
        .unwrap();
    assert_eq!(headless.spec.unwrap().cluster_ip.as_deref(), Some("None"));
}

#[tokio::test]
async fn apply_creates_and_generate_name_and_binding() {
    let server = FakeApiServer::start().await;
    let client = server.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let applied = pods
        .patch(
            "fresh",
            &PatchParams::apply("lab").force(),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "fresh"}, "spec": {"containers": [{"name": "c", "image": "x"}]}})),
        )
        .await
        .unwrap();
    assert_eq!(applied.name_any(), "fresh");
    let err = api_error(
        pods.patch(
            "x",
            &PatchParams { field_manager: None, ..Default::default() },
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Pod"})),
        )
        .await,
    );
    assert_eq!(err.code, 400);
    let generated =
        pods.create(&PostParams::default(), &typed(json!({"metadata": {"generateName": "job-"}}))).await.unwrap();
    assert!(generated.name_any().starts_with("job-") && generated.name_any().len() == 9, "{}", generated.name_any());
    // pods/binding sets spec.nodeName once, as a scheduler does.
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "fresh"}, "target": {"kind": "Node", "name": "n1"}});
    let status: kube::core::Status =
        pods.create_subresource("binding", "fresh", &PostParams::default(), &binding).await.unwrap();
    assert_eq!(status.code, 201);
    assert_eq!(pods.get("fresh").await.unwrap().spec.unwrap().node_name.as_deref(), Some("n1"));
    let err = api_error(
        pods.create_subresource::<Value, kube::core::Status>("binding", "fresh", &PostParams::default(), &binding)
            .await,
    );
    assert_eq!(err.code, 409);
    // dryRun writes nothing.
    let before = server.resource_version();
    pods.create(&PostParams { dry_run: true, ..Default::default() }, &typed(json!({"metadata": {"name": "dry"}})))
        .await
        .unwrap();
    assert_eq!(server.resource_version(), before);
    assert!(server.get(Kind::Pod, Some("default"), "dry").is_none());
}

#[tokio::test]
async fn delete_preconditions_and_collections() {
    let server = FakeApiServer::start().await;
    let pods: Api<Pod> = Api::namespaced(server.client(), "default");
    for (name, app) in [("a", "x"), ("b", "x"), ("c", "y")] {
        pods.create(&PostParams::default(), &typed(json!({"metadata": {"name": name, "labels": {"app": app}}})))
            .await
            .unwrap();
    }
    let err = api_error(
        pods.delete(
            "a",
            &DeleteParams::default()
                .preconditions(kube::api::Preconditions { resource_version: Some("1".into()), uid: None }),
        )
        .await,
    );
    assert_eq!(err.code, 409);
    let deleted =
        pods.delete_collection(&DeleteParams::default(), &ListParams::default().labels("app=x")).await.unwrap();
    let deleted = deleted.left().unwrap();
    assert_eq!(deleted.items.len(), 2);
    let left: Vec<_> = pods.list(&ListParams::default()).await.unwrap().items.iter().map(|p| p.name_any()).collect();
    assert_eq!(left, vec!["c"]);
}

#[tokio::test]
async fn lease_leader_election_with_resource_version_preconditions() {
    let server = FakeApiServer::start().await;
    let leases: Api<Lease> = Api::namespaced(server.client(), "kube-system");
    let lease_for = |holder: &str| -> Lease {
        typed(json!({
            "metadata": {"name": "skein-master"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": "2025-01-01T00:00:00.000000Z"}
        }))
    };
    // Both replicas try to create; exactly one wins.
    let first = leases.create(&PostParams::default(), &lease_for("replica-a")).await.unwrap();
    let lost = api_error(leases.create(&PostParams::default(), &lease_for("replica-b")).await);
    assert_eq!(lost.code, 409);
    // The holder renews with update + resourceVersion precondition.
    let mut renew = first.clone();
    renew.spec.as_mut().unwrap().renew_time = Some(typed(json!("2025-01-01T00:00:05.000000Z")));
    let renewed = leases.replace("skein-master", &PostParams::default(), &renew).await.unwrap();
    // The standby, holding a stale copy, cannot steal it.
    let mut steal = first.clone();
    steal.spec.as_mut().unwrap().holder_identity = Some("replica-b".into());
    let err = api_error(leases.replace("skein-master", &PostParams::default(), &steal).await);
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    // With a fresh copy (after expiry) it can.
    let mut take_over = leases.get("skein-master").await.unwrap();
    assert_eq!(take_over.resource_version(), renewed.resource_version());
    take_over.spec.as_mut().unwrap().holder_identity = Some("replica-b".into());
    take_over.spec.as_mut().unwrap().lease_transitions = Some(1);
    let taken = leases.replace("skein-master", &PostParams::default(), &take_over).await.unwrap();
    assert_eq!(taken.spec.unwrap().holder_identity.as_deref(), Some("replica-b"));
    // Merge patch with a resourceVersion is a precondition too.
    let err = api_error(
        leases
            .patch(
                "skein-master",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"resourceVersion": renewed.resource_version()}, "spec": {"holderIdentity": "replica-a"}})),
            )
            .await,
    );
    assert_eq!(err.code, 409);
}

#[tokio::test]
async fn injected_faults_and_request_counts() {
    let server = FakeApiServer::start().await;
    let pods: Api<Pod> = Api::namespaced(server.client(), "default");
    pods.create(&PostParams::default(), &typed(json!({"metadata": {"name": "p"}}))).await.unwrap();
    server.inject_fault(Fault::new(500).times(2).verb(Verb::Patch).kind(Kind::Pod));
    server.inject_fault(Fault::new(409).path_prefix("/api/v1/namespaces/default/pods/q"));
    let patch = Patch::Merge(json!({"metadata": {"annotations": {"skein.dev/pod-networks": "{}"}}}));
    // A retry loop like the master's: two failures, then success.
    let mut attempts = 0;
    let patched = loop {
        attempts += 1;
        match pods.patch("p", &PatchParams::default(), &patch).await {
            Ok(pod) => break pod,
            Err(kube::Error::Api(status)) if status.code == 500 => continue,
            Err(other) => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(attempts, 3);
    assert!(patched.annotations().contains_key("skein.dev/pod-networks"));
    assert_eq!(server.request_count(Verb::Patch, Kind::Pod), 3);
    assert_eq!(server.request_count(Verb::Create, Kind::Pod), 1);
    let err = api_error(pods.get("q").await);
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    assert!(server.store().pending_faults().is_empty());
    assert_eq!(api_error(pods.get("q").await).code, 404);
}

#[tokio::test]
async fn discovery_version_and_kubeconfig() {
    let server = FakeApiServer::start().await;
    let client = server.client();
    let version = client.apiserver_version().await.unwrap();
    assert_eq!((version.major.as_str(), version.minor.as_str()), ("1", "35"));
    let core = client.list_core_api_versions().await.unwrap();
    assert_eq!(core.versions, vec!["v1"]);
    let groups = client.list_api_groups().await.unwrap();
    let names: Vec<_> = groups.groups.iter().map(|g| g.name.as_str()).collect();
    for group in ["discovery.k8s.io", "networking.k8s.io", "coordination.k8s.io", "events.k8s.io"] {
        assert!(names.contains(&group), "{group} in {names:?}");
    }
    let core_resources = client.list_core_api_resources("v1").await.unwrap();
    assert!(core_resources.resources.iter().any(|r| r.name == "pods/status"));
    let slices = client.list_api_group_resources("discovery.k8s.io/v1").await.unwrap();
    assert_eq!(slices.resources[0].kind, "EndpointSlice");
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    assert!(discovery.has_group("coordination.k8s.io"));
    let aggregated = kube::Discovery::new(client.clone()).run_aggregated().await.unwrap();
    assert!(aggregated.has_group("networking.k8s.io"));

    // The written kubeconfig loads into a working client.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    server.write_kubeconfig(&path).unwrap();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default()).await.unwrap();
    assert_eq!(config.default_namespace, "default");
    let from_file = Client::try_from(config).unwrap();
    let namespaces = Api::<Namespace>::all(from_file).list(&ListParams::default()).await.unwrap();
    let names: Vec<_> = namespaces.items.iter().map(|n| n.name_any()).collect();
    assert_eq!(names, vec!["default", "kube-node-lease", "kube-public", "kube-system"]);
}

#[tokio::test]
async fn typed_store_access() {
    let server = FakeApiServer::start().await;
    let node: Node = typed(
        json!({"metadata": {"name": "n1", "labels": {"a": "b"}}, "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]}}),
    );
    let stored = server.store().insert_object(&node).unwrap();
    assert!(stored.metadata.uid.is_some());
    // Direct inserts keep status as given.
    assert_eq!(stored.status.unwrap().addresses.unwrap()[0].address, "192.0.2.1");
    let fetched: Node = Api::all(server.client()).get("n1").await.unwrap();
    assert_eq!(fetched.labels()["a"], "b");
    assert_eq!(server.store().get_object::<Node>(None, "n1").unwrap().metadata.uid, fetched.metadata.uid);
    assert_eq!(server.store().list_objects::<Node>(None).len(), 1);
    assert!(server.delete(Kind::Node, None, "n1").is_some());
    assert!(server.list(Kind::Node, None).is_empty());
}

#[tokio::test]
async fn kube_runtime_event_recorder_publishes() {
    use kube::runtime::events::{Event as RecorderEvent, EventType, Recorder, Reporter};
    let server = FakeApiServer::start().await;
    let client = server.client();
    let nodes: Api<Node> = Api::all(client.clone());
    let node = nodes.create(&PostParams::default(), &typed(json!({"metadata": {"name": "n1"}}))).await.unwrap();
    let recorder = Recorder::new(client.clone(), Reporter { controller: "skein-master".into(), instance: None });
    let event = RecorderEvent {
        type_: EventType::Warning,
        reason: "SubnetExhausted".into(),
        note: Some("no free /24 in 10.244.0.0/16".into()),
        action: "AllocateSubnet".into(),
        secondary: None,
    };
    recorder.publish(&event, &node.object_ref(&())).await.unwrap();
    // The same event again is a series update (a merge patch) of the same object.
    recorder.publish(&event, &node.object_ref(&())).await.unwrap();
    let events = server.list(Kind::EventsV1Event, Some("default"));
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["reason"], "SubnetExhausted");
    assert_eq!(events[0]["regarding"]["name"], "n1");
    assert_eq!(server.request_count(Verb::Patch, Kind::EventsV1Event), 1);
}
