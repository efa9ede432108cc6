//! RBAC through kube-rs: ServiceAccount tokens authenticate, Roles, ClusterRoles and their
//! bindings authorize, and what they do not grant is Forbidden with the API server's
//! wording — and the chart's admission policies (`manifests/04-admission-policy.yaml`)
//! evaluated on the requests of the agent's ServiceAccount.

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

#[tokio::test]
async fn the_charts_admission_policies_hold_an_agent_to_its_own_node() {
    let server = rbac_server().await;
    let manifests = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    for file in ["00-namespace.yaml", "01-serviceaccounts.yaml", "03-rbac-agent.yaml", "04-admission-policy.yaml"] {
        let text = std::fs::read_to_string(manifests.join(file)).expect("the install manifests");
        server.insert_yaml(&text).unwrap_or_else(|e| panic!("{file}: {}", e.message));
    }
    let admin = server.client();
    for name in ["n1", "n2"] {
        let node: Node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        Api::<Node>::all(admin.clone()).create(&PostParams::default(), &node).await.unwrap();
    }
    // The agent's token as kubelet projects it: bound to its pod's node, n1.
    let request = json!({"spec": {"boundObjectRef": {"kind": "Node", "apiVersion": "v1", "name": "n1"}}});
    let answer = server.store().request_token("skein-system", "skein-agent", &request).expect("token issued");
    let agent = server.client_with_token(Some(answer["status"]["token"].as_str().unwrap()));
    let nodes: Api<Node> = Api::all(agent);
    let chassis = Patch::Merge(json!({"metadata": {"annotations": {"skein.dev/chassis": "{\"id\":\"c1\"}"}}}));
    nodes.patch("n1", &PatchParams::default(), &chassis).await.expect("its own node's chassis annotation");
    let (code, message) = refusal(nodes.patch("n2", &PatchParams::default(), &chassis).await);
    assert_eq!(code, 403);
    assert_eq!(
        message,
        "nodes \"n2\" is forbidden: ValidatingAdmissionPolicy 'skein-agent-own-node' with binding 'skein-agent-own-node' denied request: skein-agent may change only the Node it runs on, not n2"
    );
    let label = Patch::Merge(json!({"metadata": {"labels": {"role": "gpu"}}}));
    let (code, message) = refusal(nodes.patch("n1", &PatchParams::default(), &label).await);
    assert_eq!(code, 403);
    assert!(message.ends_with("skein-agent may not change the labels or spec of Node n1"), "{message}");
    // The administrator is not the agent: the policy does not apply.
    Api::<Node>::all(admin).patch("n2", &PatchParams::default(), &label).await.expect("the admin labels nodes");
}
