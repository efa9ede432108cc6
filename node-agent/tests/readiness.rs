//! RoCE readiness end to end (synthetic sysfs, a DCB table, a recording annotator), and
//! the Kubernetes annotator against an in-process mock API server.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use skein_agent::deviceplugin::annotation::{AnnotateError, AnnotateFuture, KubeNodeAnnotator, NodeAnnotator};
use skein_agent::deviceplugin::config::TrustMode;
use skein_agent::deviceplugin::dcb::DcbState;
use skein_agent::deviceplugin::{DevicePluginStatus, launch};
use skein_agent::metrics;
use tokio_util::sync::CancellationToken;

/// Records every annotation written.
#[derive(Default)]
struct RecordingAnnotator(Mutex<Vec<(String, String)>>);

impl RecordingAnnotator {
    fn last(&self) -> Option<serde_json::Value> {
        self.0.lock().unwrap().last().map(|(_, value)| serde_json::from_str(value).unwrap())
    }
}

impl NodeAnnotator for RecordingAnnotator {
    fn annotate<'a>(&'a self, key: &'a str, value: &'a str) -> AnnotateFuture<'a> {
        self.0.lock().unwrap().push((key.to_owned(), value.to_owned()));
        Box::pin(async { Ok::<(), AnnotateError>(()) })
    }
}

#[tokio::test]
async fn roce_readiness_goes_to_annotation_and_metrics() {
    let node = SyntheticNode::standard();
    node.set_ecn("ens2f0", "roce_np", 3, true);
    node.set_ecn("ens2f0", "roce_rp", 3, true);
    let dcb = Arc::new(FakeDcb::default());
    dcb.0.lock().unwrap().insert("ens2f0".into(), DcbState { pfc_enabled: Some(1 << 3), trust: Some(TrustMode::Dscp) });
    let plugin_dir = tempfile::tempdir().unwrap();
    let (registry, mut deps) = deps(dcb.clone());
    let annotator = Arc::new(RecordingAnnotator::default());
    deps.annotator = Some(annotator.clone());
    let shutdown = CancellationToken::new();
    let DevicePluginStatus::Running(plugin) = launch(settings(&node, plugin_dir.path(), None), deps, shutdown.clone())
    else {
        panic!("plugin did not start");
    };

    wait_until("a ready annotation", || async { annotator.last().is_some_and(|a| a["status"] == "ready") }).await;
    let annotation = annotator.last().unwrap();
    assert_eq!(
        annotation,
        serde_json::json!({
            "status": "ready",
            "devices": [{
                "device": "mlx5_1",
                "netdev": "ens2f0",
                "status": "ready",
                "settings": {"trust": "ok", "pfc/3": "ok", "ecn_np/3": "ok", "ecn_rp/3": "ok"}
            }]
        }),
        "only the RoCE device is reported"
    );
    assert_eq!(annotator.0.lock().unwrap()[0].0, "skein.dev/rdma-readiness");

    // ECN reaction point switched off and PFC moved to priority 4: not ready.
    node.set_ecn("ens2f0", "roce_rp", 3, false);
    dcb.0.lock().unwrap().get_mut("ens2f0").unwrap().pfc_enabled = Some(1 << 4);
    wait_until("a not-ready annotation", || async { annotator.last().is_some_and(|a| a["status"] == "not-ready") })
        .await;
    let annotation = annotator.last().unwrap();
    assert_eq!(annotation["devices"][0]["settings"]["ecn_rp/3"], "mismatch");
    assert_eq!(annotation["devices"][0]["settings"]["pfc/3"], "mismatch");
    assert_eq!(annotation["devices"][0]["settings"]["ecn_np/3"], "ok");
    let text = metrics::render(&registry);
    for line in [
        r#"skein_rdma_roce_setting{device="mlx5_1",netdev="ens2f0",setting="ecn_rp",priority="3"} 0"#,
        r#"skein_rdma_roce_setting{device="mlx5_1",netdev="ens2f0",setting="ecn_np",priority="3"} 1"#,
        r#"skein_rdma_roce_setting{device="mlx5_1",netdev="ens2f0",setting="trust",priority=""} 1"#,
        r#"skein_rdma_roce_ready{device="mlx5_1",netdev="ens2f0"} 0"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }

    // DCB gone (driver without DCB) and ECN files gone: unknown, not failure.
    dcb.0.lock().unwrap().clear();
    std::fs::remove_dir_all(node.roots.sysfs.join("class/net/ens2f0/ecn")).unwrap();
    wait_until("an unknown annotation", || async { annotator.last().is_some_and(|a| a["status"] == "unknown") }).await;
    let text = metrics::render(&registry);
    assert!(
        text.contains(r#"skein_rdma_roce_setting{device="mlx5_1",netdev="ens2f0",setting="pfc",priority="3"} -1"#),
        "{text}"
    );

    // Unchanged reports are not patched again.
    let patches = annotator.0.lock().unwrap().len();
    tokio::time::sleep(std::time::Duration::from_millis(350)).await;
    assert_eq!(annotator.0.lock().unwrap().len(), patches);

    shutdown.cancel();
    plugin.wait().await;
}

#[tokio::test]
async fn node_without_roce_is_not_applicable() {
    let node = SyntheticNode::empty();
    node.add_hca(&ib_hca());
    let plugin_dir = tempfile::tempdir().unwrap();
    let (_registry, mut deps) = deps(Arc::new(FakeDcb::default()));
    let annotator = Arc::new(RecordingAnnotator::default());
    deps.annotator = Some(annotator.clone());
    let shutdown = CancellationToken::new();
    let DevicePluginStatus::Running(plugin) = launch(settings(&node, plugin_dir.path(), None), deps, shutdown.clone())
    else {
        panic!("plugin did not start");
    };
    wait_until("an annotation", || async { annotator.last().is_some() }).await;
    assert_eq!(annotator.last().unwrap(), serde_json::json!({"status": "not-applicable", "devices": []}));
    shutdown.cancel();
    plugin.wait().await;
}

type Captured = Arc<Mutex<Vec<(String, String, HashMap<String, String>, serde_json::Value)>>>;

fn mock_client(captured: Captured, status: u16) -> kube::Client {
    let service = tower::service_fn(move |request: hyper::Request<kube::client::Body>| {
        let captured = Arc::clone(&captured);
        async move {
            let (parts, body) = request.into_parts();
            let bytes = body.collect().await.unwrap().to_bytes();
            let headers =
                parts.headers.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned())).collect();
            captured.lock().unwrap().push((
                parts.method.to_string(),
                parts.uri.to_string(),
                headers,
                serde_json::from_slice(&bytes).unwrap(),
            ));
            let body = if status == 200 {
                serde_json::json!({
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {"name": "node-a", "annotations": {"skein.dev/rdma-readiness": "{}"}}
                })
            } else {
                serde_json::json!({
                    "apiVersion": "v1", "kind": "Status", "status": "Failure",
                    "message": "nodes \"node-a\" not found", "reason": "NotFound", "code": 404
                })
            };
            let response = hyper::Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap();
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    kube::Client::new(service, "default")
}

#[tokio::test]
async fn kube_annotator_merge_patches_the_node() {
    let captured: Captured = Arc::default();
    let annotator = KubeNodeAnnotator::new(mock_client(Arc::clone(&captured), 200), "node-a");
    let value = r#"{"status":"ready","devices":[]}"#;
    annotator.annotate("skein.dev/rdma-readiness", value).await.unwrap();
    let requests = captured.lock().unwrap();
    assert_eq!(requests.len(), 1);
    let (method, uri, headers, body) = &requests[0];
    assert_eq!(method, "PATCH");
    assert_eq!(uri, "/api/v1/nodes/node-a?&fieldManager=skein-agent");
    assert_eq!(headers["content-type"], "application/merge-patch+json");
    assert_eq!(body, &serde_json::json!({"metadata": {"annotations": {"skein.dev/rdma-readiness": value}}}));
}

#[tokio::test]
async fn kube_annotator_reports_api_errors() {
    let captured: Captured = Arc::default();
    let annotator = KubeNodeAnnotator::new(mock_client(Arc::clone(&captured), 404), "node-a");
    let error = annotator.annotate("skein.dev/rdma-readiness", "{}").await.unwrap_err();
    assert_eq!(error.node, "node-a");
    assert!(error.to_string().contains("not found"), "{error}");
}
