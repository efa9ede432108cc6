//! ServiceAccount tokens through kube-rs: TokenRequest with audiences, lifetime and a bound
//! Pod or Node, TokenReview answering for them (username, groups, the bound objects' names
//! and UIDs, audiences), and every way a token stops being valid.

use k8s_openapi::api::authentication::v1::{
    BoundObjectReference, TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec, TokenReviewStatus,
};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;
use skein_kube_fake::{
    DEFAULT_AUDIENCE, EXTRA_NODE_NAME, EXTRA_NODE_UID, EXTRA_POD_NAME, EXTRA_POD_UID, FakeApiServer, Kind,
};

const AUDIENCE: &str = "skein.dev/southbound";

async fn token(api: &Api<ServiceAccount>, name: &str, spec: TokenRequestSpec) -> Result<String, kube::Error> {
    let request = TokenRequest { spec, ..TokenRequest::default() };
    let answer = api.create_token_request(name, &PostParams::default(), &request).await?;
    let status = answer.status.expect("a TokenRequest answer has a status");
    assert!(status.expiration_timestamp.0 > k8s_openapi::jiff::Timestamp::now());
    Ok(status.token)
}

async fn review(client: &kube::Client, token: &str, audiences: &[&str]) -> TokenReviewStatus {
    let api: Api<TokenReview> = Api::all(client.clone());
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            audiences: Some(audiences.iter().map(|a| (*a).to_owned()).collect()),
        },
        ..TokenReview::default()
    };
    api.create(&PostParams::default(), &review).await.unwrap().status.unwrap()
}

fn bound(kind: &str, name: &str) -> Option<BoundObjectReference> {
    Some(BoundObjectReference { kind: Some(kind.into()), name: Some(name.into()), ..BoundObjectReference::default() })
}

fn extra(status: &TokenReviewStatus, key: &str) -> Option<String> {
    status.user.as_ref()?.extra.as_ref()?.get(key)?.first().cloned()
}

#[tokio::test]
async fn a_pod_bound_token_names_the_pod_and_its_node_until_the_pod_goes() {
    let server = FakeApiServer::start().await;
    let client = server.client();
    let node = server.insert(Kind::Node, json!({"metadata": {"name": "node1"}})).unwrap();
    server.insert(Kind::ServiceAccount, json!({"metadata": {"name": "agent", "namespace": "kube-system"}})).unwrap();
    let pod = server
        .insert(Kind::Pod, json!({"metadata": {"name": "agent-x", "namespace": "kube-system"}, "spec": {"nodeName": "node1", "containers": [{"name": "a", "image": "i"}]}}))
        .unwrap();
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "kube-system");
    let spec = TokenRequestSpec {
        audiences: vec![AUDIENCE.into()],
        expiration_seconds: Some(600),
        bound_object_ref: bound("Pod", "agent-x"),
    };
    let t = token(&accounts, "agent", spec).await.unwrap();

    let ok = review(&client, &t, &[AUDIENCE]).await;
    assert_eq!(ok.authenticated, Some(true), "{ok:?}");
    let user = ok.user.clone().unwrap();
    assert_eq!(user.username.as_deref(), Some("system:serviceaccount:kube-system:agent"));
    assert!(user.groups.unwrap().contains(&"system:serviceaccounts:kube-system".to_owned()));
    assert_eq!(extra(&ok, EXTRA_POD_NAME).as_deref(), Some("agent-x"));
    assert_eq!(extra(&ok, EXTRA_POD_UID).as_deref(), pod["metadata"]["uid"].as_str());
    assert_eq!(extra(&ok, EXTRA_NODE_NAME).as_deref(), Some("node1"));
    assert_eq!(extra(&ok, EXTRA_NODE_UID).as_deref(), node["metadata"]["uid"].as_str());
    assert_eq!(ok.audiences, Some(vec![AUDIENCE.to_owned()]));

    // Another audience, the default one, an unknown token: refused.
    for (token, audiences) in [(t.as_str(), &["other"][..]), (t.as_str(), &[]), ("kf.forged", &[AUDIENCE])] {
        let no = review(&client, token, audiences).await;
        assert_eq!(no.authenticated, Some(false), "{token} {audiences:?}: {no:?}");
        assert!(no.error.is_some_and(|e| e.contains("invalid bearer token")));
    }

    // The pod is deleted and recreated under the same name: the token is dead.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    pods.delete("agent-x", &DeleteParams::default()).await.unwrap();
    server
        .insert(Kind::Pod, json!({"metadata": {"name": "agent-x", "namespace": "kube-system"}, "spec": {"nodeName": "node1", "containers": [{"name": "a", "image": "i"}]}}))
        .unwrap();
    let gone = review(&client, &t, &[AUDIENCE]).await;
    assert_eq!(gone.authenticated, Some(false));
    assert!(gone.error.unwrap().contains("pod agent-x has been deleted or recreated"));
}

#[tokio::test]
async fn node_bound_tokens_expire_and_die_with_their_account() {
    let server = FakeApiServer::start().await;
    let client = server.client();
    let node = server.insert(Kind::Node, json!({"metadata": {"name": "node2"}})).unwrap();
    server.insert(Kind::ServiceAccount, json!({"metadata": {"name": "agent", "namespace": "kube-system"}})).unwrap();
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "kube-system");
    let spec = |kind: &str, name: &str| TokenRequestSpec {
        audiences: vec![AUDIENCE.into()],
        expiration_seconds: None,
        bound_object_ref: bound(kind, name),
    };
    let t = token(&accounts, "agent", spec("Node", "node2")).await.unwrap();
    let ok = review(&client, &t, &["x", AUDIENCE]).await;
    assert_eq!(ok.authenticated, Some(true));
    assert_eq!(extra(&ok, EXTRA_NODE_NAME).as_deref(), Some("node2"));
    assert_eq!(extra(&ok, EXTRA_NODE_UID).as_deref(), node["metadata"]["uid"].as_str());
    assert_eq!(extra(&ok, EXTRA_POD_NAME), None);

    // A token without audiences is for the API server's own.
    let plain = token(&accounts, "agent", TokenRequestSpec::default()).await.unwrap();
    assert_eq!(review(&client, &plain, &[]).await.audiences, Some(vec![DEFAULT_AUDIENCE.to_owned()]));

    // Bad requests name the field; a bound object that does not exist is 404.
    let short = TokenRequestSpec { expiration_seconds: Some(60), ..spec("Node", "node2") };
    let e = token(&accounts, "agent", short).await.unwrap_err().to_string();
    assert!(e.contains("spec.expirationSeconds"), "{e}");
    let e = token(&accounts, "agent", spec("Service", "x")).await.unwrap_err().to_string();
    assert!(e.contains("spec.boundObjectRef.kind"), "{e}");
    let e = token(&accounts, "agent", spec("Node", "node9")).await.unwrap_err().to_string();
    assert!(e.contains("node9"), "{e}");
    let e = token(&accounts, "nobody", spec("Node", "node2")).await.unwrap_err().to_string();
    assert!(e.contains("nobody"), "{e}");

    server.store().expire_tokens("kube-system", "agent");
    let expired = review(&client, &t, &[AUDIENCE]).await;
    assert!(expired.error.unwrap().contains("expired"));

    let t2 = token(&accounts, "agent", spec("Node", "node2")).await.unwrap();
    accounts.delete("agent", &DeleteParams::default()).await.unwrap();
    let deleted = review(&client, &t2, &[AUDIENCE]).await;
    assert_eq!(deleted.authenticated, Some(false));
    assert!(deleted.error.unwrap().contains("service account kube-system/agent has been deleted"));
}
