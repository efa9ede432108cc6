//! What kubectl relies on, over HTTP: the OpenAPI v3 documents that make it validate through
//! the server, `fieldValidation` on create, update, patch and `/scale`, server-side Tables for
//! list, get and watch (and the media-type negotiation choosing them), and `apps/v1`
//! Deployments with their defaults, validation and `/scale` subresource.

use std::time::Duration;

use http_body_util::BodyExt;
use hyper::{HeaderMap, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use skein_kube_fake::{FakeApiServer, Kind};

const TABLE_ACCEPT: &str =
    "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

async fn call(
    client: &Client,
    method: &str,
    uri: &str,
    accept: &str,
    content_type: &str,
    body: Option<Value>,
) -> Reply {
    let bytes = body.map(|b| serde_json::to_vec(&b).unwrap()).unwrap_or_default();
    let request = hyper::Request::builder()
        .method(method)
        .uri(uri)
        .header("accept", accept)
        .header("content-type", content_type)
        .body(Body::from(bytes))
        .unwrap();
    let response = client.send(request).await.expect("the request is answered");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect_bytes().await.expect("a body");
    let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("a JSON body") };
    Reply { status, headers, body }
}

async fn get(client: &Client, uri: &str, accept: &str) -> Reply {
    call(client, "GET", uri, accept, "application/json", None).await
}

fn deployment(name: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
        }
    })
}

fn warnings(headers: &HeaderMap) -> Vec<String> {
    headers.get_all("warning").iter().map(|v| v.to_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn openapi_v3_leads_kubectl_to_server_side_field_validation() {
    let server = FakeApiServer::start().await;
    let client = server.client();
    let root = get(&client, "/openapi/v3", "application/json").await;
    assert_eq!(root.status, StatusCode::OK);
    let url = root.body["paths"]["apis/apps/v1"]["serverRelativeURL"].as_str().expect("apps/v1 is listed").to_owned();
    assert!(url.starts_with("/openapi/v3/apis/apps/v1?hash="), "{url}");
    assert!(root.body["paths"]["api/v1"].is_object());
    let document = get(&client, &url, "application/json").await;
    assert_eq!(document.status, StatusCode::OK);
    assert_eq!(document.body["openapi"], "3.0.0");
    let patch = &document.body["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
    assert_eq!(
        patch["x-kubernetes-group-version-kind"],
        json!({"group": "apps", "version": "v1", "kind": "Deployment"})
    );
    assert!(
        patch["parameters"].as_array().unwrap().iter().any(|p| p["name"] == "fieldValidation" && p["in"] == "query")
    );
    assert_eq!(get(&client, "/openapi/v3/apis/nothing/v1", "application/json").await.status, StatusCode::NOT_FOUND);
    assert_eq!(get(&client, "/openapi/v2", "application/json").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn field_validation_strict_warn_ignore_on_every_write() {
    let server = FakeApiServer::start().await;
    let client = server.client();
    let collection = "/apis/apps/v1/namespaces/default/deployments";
    let mut unknown = deployment("strict");
    unknown["spec"]["foo"] = json!(1);
    unknown["spec"]["template"]["spec"]["containers"][0]["bogus"] = json!(true);

    let strict = call(
        &client,
        "POST",
        &format!("{collection}?fieldValidation=Strict"),
        "application/json",
        "application/json",
        Some(unknown.clone()),
    )
    .await;
    assert_eq!(strict.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        strict.body["message"],
        "Deployment in version \"v1\" cannot be handled as a Deployment: strict decoding error: unknown field \"spec.foo\", unknown field \"spec.template.spec.containers[0].bogus\""
    );
    assert!(server.get(Kind::Deployment, Some("default"), "strict").is_none());

    let warn = call(
        &client,
        "POST",
        &format!("{collection}?fieldValidation=Warn"),
        "application/json",
        "application/json",
        Some(unknown.clone()),
    )
    .await;
    assert_eq!(warn.status, StatusCode::CREATED);
    assert_eq!(
        warnings(&warn.headers),
        [
            "299 - \"unknown field \\\"spec.foo\\\"\"",
            "299 - \"unknown field \\\"spec.template.spec.containers[0].bogus\\\"\""
        ]
    );
    let stored = server.get(Kind::Deployment, Some("default"), "strict").unwrap();
    assert!(stored["spec"].get("foo").is_none(), "unknown fields are dropped");

    let mut ignored = unknown.clone();
    ignored["metadata"]["name"] = json!("ignored");
    let reply = call(
        &client,
        "POST",
        &format!("{collection}?fieldValidation=Ignore"),
        "application/json",
        "application/json",
        Some(ignored),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert!(warnings(&reply.headers).is_empty());
    assert!(server.get(Kind::Deployment, Some("default"), "ignored").unwrap()["spec"].get("foo").is_none());

    // Without the parameter the write is kept as given (kube-rs clients send none).
    let mut lenient = unknown.clone();
    lenient["metadata"]["name"] = json!("lenient");
    let reply = call(&client, "POST", collection, "application/json", "application/json", Some(lenient)).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(server.get(Kind::Deployment, Some("default"), "lenient").unwrap()["spec"]["foo"], 1);

    // Duplicate fields in the raw body, and a bad directive.
    let raw = br#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"a","name":"b"}}"#.to_vec();
    let request = hyper::Request::builder()
        .method("POST")
        .uri("/api/v1/namespaces?fieldValidation=Strict")
        .header("content-type", "application/json")
        .body(Body::from(raw))
        .unwrap();
    let response = client.send(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let message: Value = serde_json::from_slice(&response.into_body().collect_bytes().await.unwrap()).unwrap();
    assert!(message["message"].as_str().unwrap().contains("duplicate field \"metadata.name\""), "{message}");
    let bad = call(
        &client,
        "POST",
        &format!("{collection}?fieldValidation=Loose"),
        "application/json",
        "application/json",
        Some(deployment("x")),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    // Patch: the patched object is checked; update: the body.
    let item = format!("{collection}/strict");
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "imagePullPolicyy": "Always"}]}}}});
    let reply = call(
        &client,
        "PATCH",
        &format!("{item}?fieldValidation=Strict"),
        "application/json",
        "application/strategic-merge-patch+json",
        Some(patch.clone()),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        reply.body["message"]
            .as_str()
            .unwrap()
            .contains("unknown field \"spec.template.spec.containers[0].imagePullPolicyy\""),
        "{}",
        reply.body
    );
    let reply = call(
        &client,
        "PATCH",
        &format!("{item}?fieldValidation=Warn"),
        "application/json",
        "application/strategic-merge-patch+json",
        Some(patch),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(warnings(&reply.headers).len(), 1);
    assert_eq!(reply.body["spec"]["template"]["spec"]["containers"][0]["image"], "x", "merged by container name");
    let mut update = server.get(Kind::Deployment, Some("default"), "strict").unwrap();
    update["spec"]["paused"] = json!("yes");
    let reply = call(
        &client,
        "PUT",
        &format!("{item}?fieldValidation=Ignore"),
        "application/json",
        "application/json",
        Some(update),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "a type error fails whatever the directive");
    assert!(reply.body["message"].as_str().unwrap().contains("spec.paused"), "{}", reply.body);
    let scale = call(&client, "PUT", &format!("{item}/scale?fieldValidation=Strict"), "application/json", "application/json",
        Some(json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "strict"}, "spec": {"replicas": 1, "extra": 1}}))).await;
    assert_eq!(scale.status, StatusCode::BAD_REQUEST);
    assert!(scale.body["message"].as_str().unwrap().contains("unknown field \"spec.extra\""), "{}", scale.body);
}

#[tokio::test]
async fn tables_are_negotiated_for_list_get_and_watch() {
    let server = FakeApiServer::start().await;
    let client = server.client();
    server
        .insert(Kind::Pod, json!({"metadata": {"name": "p1", "namespace": "default"}, "spec": {"nodeName": "node1", "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIPs": [{"ip": "10.244.1.5"}], "conditions": [{"type": "Ready", "status": "True"}],
                       "containerStatuses": [{"name": "c", "ready": true, "restartCount": 0, "state": {"running": {}}}]}}))
        .unwrap();
    let pods = "/api/v1/namespaces/default/pods";
    let list = get(&client, pods, TABLE_ACCEPT).await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.headers["content-type"], "application/json;as=Table;v=v1;g=meta.k8s.io");
    assert_eq!((list.body["kind"].as_str(), list.body["apiVersion"].as_str()), (Some("Table"), Some("meta.k8s.io/v1")));
    let columns: Vec<&str> =
        list.body["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        columns,
        ["Name", "Ready", "Status", "Restarts", "Age", "IP", "Node", "Nominated Node", "Readiness Gates"]
    );
    let cells = list.body["rows"][0]["cells"].as_array().unwrap();
    assert_eq!(cells[0..4], [json!("p1"), json!("1/1"), json!("Running"), json!("0")]);
    assert_eq!(cells[5..7], [json!("10.244.1.5"), json!("node1")]);
    assert_eq!(list.body["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    assert!(list.body["metadata"]["resourceVersion"].is_string());

    let beta = get(&client, pods, "application/json;as=Table;v=v1beta1;g=meta.k8s.io").await;
    assert_eq!(beta.body["apiVersion"], "meta.k8s.io/v1beta1");
    let full = get(&client, &format!("{pods}?includeObject=Object"), TABLE_ACCEPT).await;
    assert_eq!(full.body["rows"][0]["object"]["kind"], "Pod");
    assert_eq!(
        get(&client, &format!("{pods}?includeObject=Everything"), TABLE_ACCEPT).await.status,
        StatusCode::BAD_REQUEST
    );
    let one = get(&client, &format!("{pods}/p1"), TABLE_ACCEPT).await;
    assert_eq!(one.body["rows"].as_array().unwrap().len(), 1);
    // Media ranges the server cannot produce are passed over; plain JSON is the fallback.
    let plain = get(&client, pods, "application/vnd.kubernetes.protobuf,application/json").await;
    assert_eq!(plain.body["kind"], "PodList");
    let unknown = get(&client, pods, "application/json;as=Other;v=v1;g=example.com").await;
    assert_eq!(unknown.body["kind"], "PodList");
    let nodes = get(&client, "/api/v1/nodes", TABLE_ACCEPT).await;
    assert_eq!(nodes.body["columnDefinitions"][5]["name"], "Internal-IP");

    // A watch of Tables: the first event carries the columns, later ones rows only.
    let request = hyper::Request::builder()
        .uri(format!("{pods}?watch=true"))
        .header("accept", TABLE_ACCEPT)
        .body(Body::from(Vec::new()))
        .unwrap();
    let mut body = client.send(request).await.unwrap().into_body();
    server
        .insert(Kind::Pod, json!({"metadata": {"name": "p2", "namespace": "default"}, "spec": {"containers": []}}))
        .unwrap();
    let mut buffer = Vec::new();
    let events: Vec<Value> = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let lines: Vec<Value> = buffer
                .split(|b| *b == b'\n')
                .filter(|l: &&[u8]| !l.is_empty())
                .map(|l| serde_json::from_slice(l).unwrap())
                .collect();
            if lines.len() >= 2 && buffer.ends_with(b"\n") {
                return lines;
            }
            let frame = body.frame().await.expect("the watch stays open").expect("a frame");
            buffer.extend_from_slice(&frame.into_data().unwrap_or_default());
        }
    })
    .await
    .expect("two watch events");
    assert_eq!((events[0]["type"].as_str(), events[1]["type"].as_str()), (Some("ADDED"), Some("ADDED")));
    assert_eq!(events[0]["object"]["kind"], "Table");
    assert_eq!(events[0]["object"]["columnDefinitions"].as_array().unwrap().len(), 9);
    assert_eq!(events[1]["object"]["columnDefinitions"], json!([]));
    assert_eq!(events[1]["object"]["rows"][0]["cells"][0], "p2");
}

#[tokio::test]
async fn deployments_have_defaults_validation_status_and_scale() {
    let server = FakeApiServer::start().await;
    let client = server.client();
    let collection = "/apis/apps/v1/namespaces/default/deployments";
    let mut given = deployment("web");
    given["spec"].as_object_mut().unwrap().remove("replicas");
    given["status"] = json!({"replicas": 9});
    let created = call(&client, "POST", collection, "application/json", "application/json", Some(given)).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let spec = &created.body["spec"];
    assert_eq!(spec["replicas"], 1);
    assert_eq!(
        spec["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
    );
    assert_eq!(
        (spec["revisionHistoryLimit"].as_i64(), spec["progressDeadlineSeconds"].as_i64()),
        (Some(10), Some(600))
    );
    assert_eq!(created.body["status"], json!({}), "the status a create starts from");

    let mut mismatched = deployment("bad");
    mismatched["spec"]["template"]["metadata"]["labels"] = json!({"app": "other"});
    let reply = call(&client, "POST", collection, "application/json", "application/json", Some(mismatched)).await;
    assert_eq!((reply.status, reply.body["reason"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("Invalid")));
    assert!(reply.body["message"].as_str().unwrap().contains("`selector` does not match template `labels`"));
    let change_selector = json!({"spec": {"selector": {"matchLabels": {"app": "web", "x": "y"}}, "template": {"metadata": {"labels": {"x": "y"}}}}});
    let reply = call(
        &client,
        "PATCH",
        &format!("{collection}/web"),
        "application/json",
        "application/merge-patch+json",
        Some(change_selector),
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(reply.body["message"].as_str().unwrap().contains("field is immutable"), "{}", reply.body);

    // /scale reads and writes spec.replicas; a stale resourceVersion is a conflict.
    let scale = get(&client, &format!("{collection}/web/scale"), "application/json").await;
    assert_eq!(
        (scale.body["kind"].as_str(), scale.body["apiVersion"].as_str()),
        (Some("Scale"), Some("autoscaling/v1"))
    );
    assert_eq!(
        (scale.body["spec"]["replicas"].as_i64(), scale.body["status"]["selector"].as_str()),
        (Some(1), Some("app=web"))
    );
    let mut put = scale.body.clone();
    put["spec"]["replicas"] = json!(4);
    let updated = call(
        &client,
        "PUT",
        &format!("{collection}/web/scale"),
        "application/json",
        "application/json",
        Some(put.clone()),
    )
    .await;
    assert_eq!(updated.status, StatusCode::OK);
    assert_eq!(updated.body["spec"]["replicas"], 4);
    let stale =
        call(&client, "PUT", &format!("{collection}/web/scale"), "application/json", "application/json", Some(put))
            .await;
    assert_eq!(stale.status, StatusCode::CONFLICT);
    let patched = call(
        &client,
        "PATCH",
        &format!("{collection}/web/scale"),
        "application/json",
        "application/merge-patch+json",
        Some(json!({"spec": {"replicas": 5}})),
    )
    .await;
    assert_eq!(patched.body["spec"]["replicas"], 5);
    let negative = call(
        &client,
        "PATCH",
        &format!("{collection}/web/scale"),
        "application/json",
        "application/merge-patch+json",
        Some(json!({"spec": {"replicas": -1}})),
    )
    .await;
    assert_eq!(negative.status, StatusCode::UNPROCESSABLE_ENTITY);
    let stored = server.get(Kind::Deployment, Some("default"), "web").unwrap();
    assert_eq!((stored["spec"]["replicas"].as_i64(), stored["metadata"]["generation"].as_i64()), (Some(5), Some(3)));

    // /status changes only status; the main resource keeps it.
    let status = call(
        &client,
        "PATCH",
        &format!("{collection}/web/status"),
        "application/json",
        "application/merge-patch+json",
        Some(json!({"spec": {"replicas": 1}, "status": {"replicas": 5, "readyReplicas": 5}})),
    )
    .await;
    assert_eq!(status.status, StatusCode::OK);
    assert_eq!(
        (status.body["spec"]["replicas"].as_i64(), status.body["status"]["readyReplicas"].as_i64()),
        (Some(5), Some(5))
    );
    let table = get(&client, collection, TABLE_ACCEPT).await;
    assert_eq!(table.body["rows"][0]["cells"][1], "5/5");

    // Discovery lists the scale subresource as kubectl scale looks it up.
    let resources = get(&client, "/apis/apps/v1", "application/json").await;
    let scale_resource = resources.body["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "deployments/scale")
        .cloned()
        .unwrap();
    assert_eq!(
        (scale_resource["group"].as_str(), scale_resource["kind"].as_str()),
        (Some("autoscaling"), Some("Scale"))
    );
}
