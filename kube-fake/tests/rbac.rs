//! RBAC through kube-rs: ServiceAccount tokens authenticate, Roles, ClusterRoles and their
//! bindings authorize, and what they do not grant is Forbidden with the API server's
//! wording — also the chart's own RBAC (`manifests/`) for the agent's ServiceAccount.

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use skein_kube_fake::access::Access;
use skein_kube_fake::{FakeApiServer, ServerOptions};

const ADMIN: &str = "admin-token-for-tests";

async fn rbac_server() -> FakeApiServer {
    let options = ServerOptions {
        access: Access::Rbac { admin_token: ADMIN.into(), anonymous_is_admin: false },
        ..ServerOptions::default()
    };
    FakeApiServer::start_with(options).await.expect("listen on loopback")
}

/// A token of `namespace/name` (created if missing) for `audiences` (none: the API's).
async fn token(admin: &kube::Client, namespace: &str, name: &str, audiences: &[&str]) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
    if accounts.get_opt(name).await.unwrap().is_none() {
        let account: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        accounts.create(&PostParams::default(), &account).await.unwrap();
    }
    let spec =
        TokenRequestSpec { audiences: audiences.iter().map(|a| (*a).to_owned()).collect(), ..Default::default() };
    let request = TokenRequest { spec, ..TokenRequest::default() };
    accounts.create_token_request(name, &PostParams::default(), &request).await.unwrap().status.unwrap().token
}

/// The API's answer to a refused request: its HTTP code and message.
fn refusal<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.message),
        other => panic!("expected a refusal from the API, got {other:?}"),
    }
}

async fn apply<K>(api: &Api<K>, object: serde_json::Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let name = object["metadata"]["name"].as_str().unwrap().to_owned();
    api.patch(&name, &PatchParams::apply("rbac-test").force(), &Patch::Apply(object)).await.unwrap();
}

#[tokio::test]
async fn bindings_grant_exactly_their_rules_to_their_subjects() {
    let server = rbac_server().await;
    let admin = server.client();
    let agent_token = token(&admin, "kube-system", "agent", &[]).await;
    let agent = server.client_with_token(Some(&agent_token));
    let nodes: Api<Node> = Api::all(agent.clone());

    // Nothing granted yet: a ServiceAccount may not even list nodes.
    let (code, message) = refusal(nodes.list(&ListParams::default()).await);
    assert_eq!(code, 403);
    assert_eq!(
        message,
        "nodes is forbidden: User \"system:serviceaccount:kube-system:agent\" cannot list resource \"nodes\" in API group \"\" at the cluster scope"
    );

    // A ClusterRole bound cluster-wide: nodes get/list/watch, pods/status patch.
    apply(
        &Api::<ClusterRole>::all(admin.clone()),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "agent"},
               "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
                         {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch"]}]}),
    )
    .await;
    apply(
        &Api::<ClusterRoleBinding>::all(admin.clone()),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "agent"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "agent"},
               "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": "kube-system"}]}),
    )
    .await;
    assert!(nodes.list(&ListParams::default()).await.unwrap().items.is_empty());
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1"}})).unwrap();
    let (code, message) = refusal(nodes.create(&PostParams::default(), &node).await);
    assert_eq!(code, 403);
    assert!(message.contains("cannot create resource \"nodes\""), "{message}");

    // pods/status is not pods.
    let admin_pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let pod: Pod = serde_json::from_value(
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}),
    )
    .unwrap();
    admin_pods.create(&PostParams::default(), &pod).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(agent.clone(), "default");
    let status = Patch::Merge(json!({"status": {"phase": "Running"}}));
    pods.patch_status("p", &PatchParams::default(), &status).await.unwrap();
    let (code, message) = refusal(
        pods.patch("p", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}}))).await,
    );
    assert_eq!(code, 403);
    assert_eq!(
        message,
        "pods \"p\" is forbidden: User \"system:serviceaccount:kube-system:agent\" cannot patch resource \"pods\" in API group \"\" in the namespace \"default\""
    );

    // A Role and RoleBinding grant in their namespace only, to the names listed.
    apply(
        &Api::<Role>::namespaced(admin.clone(), "kube-system"),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "config", "namespace": "kube-system"},
               "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"], "resourceNames": ["skein-config"]}]}),
    )
    .await;
    apply(
        &Api::<RoleBinding>::namespaced(admin.clone(), "kube-system"),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "config", "namespace": "kube-system"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "config"},
               "subjects": [{"kind": "ServiceAccount", "name": "agent"}]}),
    )
    .await;
    for namespace in ["kube-system", "default"] {
        let config: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "skein-config"}})).unwrap();
        Api::<ConfigMap>::namespaced(admin.clone(), namespace).create(&PostParams::default(), &config).await.unwrap();
    }
    let configs: Api<ConfigMap> = Api::namespaced(agent.clone(), "kube-system");
    assert!(configs.get("skein-config").await.is_ok());
    assert_eq!(refusal(configs.get("other").await).0, 403, "a name the rule does not list");
    assert_eq!(refusal(configs.list(&ListParams::default()).await).0, 403, "a list names nothing");
    let elsewhere: Api<ConfigMap> = Api::namespaced(agent.clone(), "default");
    assert_eq!(refusal(elsewhere.get("skein-config").await).0, 403, "a RoleBinding grants in its namespace only");

    // Discovery and the version are every authenticated user's.
    agent.apiserver_version().await.unwrap();
    // Removing the binding takes the grant away at once.
    Api::<ClusterRoleBinding>::all(admin.clone()).delete("agent", &Default::default()).await.unwrap();
    assert_eq!(refusal(nodes.list(&ListParams::default()).await).0, 403);
}

#[tokio::test]
async fn only_tokens_this_api_issued_for_itself_authenticate() {
    let server = rbac_server().await;
    let admin = server.client();
    let anonymous = server.client_with_token(None);
    let (code, message) = refusal(Api::<Node>::all(anonymous.clone()).list(&ListParams::default()).await);
    assert_eq!((code, message.contains("User \"system:anonymous\"")), (403, true), "{message}");
    anonymous.apiserver_version().await.expect("the version is public");

    let forged = server.client_with_token(Some("not-a-token"));
    assert_eq!(refusal(Api::<Node>::all(forged).list(&ListParams::default()).await).0, 401);
    // A token for another audience (the southbound's) is not an API credential.
    let southbound = token(&admin, "kube-system", "agent", &["skein.dev/southbound"]).await;
    let client = server.client_with_token(Some(&southbound));
    assert_eq!(refusal(Api::<Node>::all(client).list(&ListParams::default()).await).0, 401);
    // A token whose ServiceAccount is gone no longer authenticates.
    let api_token = token(&admin, "kube-system", "agent", &[]).await;
    let client = server.client_with_token(Some(&api_token));
    assert_eq!(refusal(Api::<Node>::all(client.clone()).list(&ListParams::default()).await).0, 403);
    Api::<ServiceAccount>::namespaced(admin.clone(), "kube-system").delete("agent", &Default::default()).await.unwrap();
    assert_eq!(refusal(Api::<Node>::all(client).list(&ListParams::default()).await).0, 401);
    // The administrator may do anything.
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1"}})).unwrap();
    Api::<Node>::all(admin).create(&PostParams::default(), &node).await.unwrap();
}
