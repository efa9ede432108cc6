//! The master with exactly the permissions the install manifests give it: the API
//! authenticates its ServiceAccount token and enforces the manifests' ClusterRole, Role and
//! bindings (kube-fake with RBAC), and the master still takes its lease, publishes its CA,
//! gives nodes their subnets and pods their addresses. A verb taken away from the
//! ClusterRole is refused to it, as on a cluster.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{add_node, add_pod, annotation, pod_ip, wait_for};
use serde_json::{Value, json};
use skein_kube_fake::access::Access;
use skein_kube_fake::{FakeApiServer, Kind, ServerOptions};
use skein_master::auth::AuthSettings;
use skein_master::leader::LeaseSettings;
use skein_master::pki::PkiSettings;
use skein_master::{Master, MasterSettings};

/// Skein's namespace in the manifests.
const NAMESPACE: &str = "skein-system";

async fn server_with_the_manifests_rbac() -> FakeApiServer {
    let options = ServerOptions {
        access: Access::Rbac { admin_token: "admin".into(), anonymous_is_admin: false },
        ..ServerOptions::default()
    };
    let server = FakeApiServer::start_with(options).await.expect("listen on loopback");
    let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    for file in ["00-namespace.yaml", "01-serviceaccounts.yaml", "02-rbac-master.yaml", "03-rbac-agent.yaml"] {
        let text = std::fs::read_to_string(manifests.join(file)).expect("the install manifests");
        server.insert_yaml(&text).unwrap_or_else(|e| panic!("{file}: {}", e.message));
    }
    server
}

/// A token of the master's ServiceAccount for the API, as kubelet mounts it.
fn master_token(server: &FakeApiServer) -> String {
    let answer = server.store().request_token(NAMESPACE, "skein-master", &json!({"spec": {}})).expect("token issued");
    answer["status"]["token"].as_str().expect("a token").to_owned()
}

fn master_settings() -> MasterSettings {
    let mut settings = common::settings("m1", None, common::any_port());
    settings.pki = PkiSettings::new(NAMESPACE);
    settings.auth = AuthSettings::new(NAMESPACE, "skein-agent");
    settings.lease = Some(LeaseSettings {
        namespace: NAMESPACE.into(),
        name: "skein-master".into(),
        identity: "m1".into(),
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry_period: Duration::from_millis(200),
    });
    settings
}

/// Sets the verbs of the master ClusterRole's rule for `resource`.
fn set_verbs(server: &FakeApiServer, resource: &str, verbs: &[&str]) {
    let mut role = server.get(Kind::ClusterRole, None, "skein-master").expect("the master's ClusterRole");
    let rules = role["rules"].as_array_mut().expect("rules");
    let rule = rules
        .iter_mut()
        .find(|r| r["resources"].as_array().is_some_and(|l| l.iter().any(|v| v == resource)))
        .expect("a rule for the resource");
    rule["verbs"] = json!(verbs);
    server.insert(Kind::ClusterRole, role).expect("ClusterRole replaced");
}

#[tokio::test]
async fn the_master_works_with_the_manifests_permissions_and_no_more() {
    let server = server_with_the_manifests_rbac().await;
    let client = server.client_with_token(Some(&master_token(&server)));
    // The token is the master's: nothing beyond its grants.
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> = kube::Api::namespaced(client.clone(), "default");
    match secrets.list(&Default::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{}", status.message),
        other => panic!("listing Secrets should be forbidden to the master: {other:?}"),
    }

    let master = Master::start(master_settings(), client).await.expect("the master starts");
    let mut leading = master.leading();
    tokio::time::timeout(common::WAIT, leading.wait_for(|l| *l)).await.expect("leads in time").expect("leading");
    let holder = server.get(Kind::Lease, Some(NAMESPACE), "skein-master").expect("the Lease it created");
    assert_eq!(holder.pointer("/spec/holderIdentity"), Some(&Value::from("m1")));
    wait_for("the CA ConfigMap", || server.get(Kind::ConfigMap, Some(NAMESPACE), "skein-southbound-ca")).await;

    add_node(&server, "n1", "192.168.50.1");
    add_pod(&server, "web-1", "n1");
    wait_for("n1's subnets", || annotation(&server, Kind::Node, None, "n1", "skein.dev/node-subnets")).await;
    wait_for("web-1's address", || pod_ip(&server, "web-1")).await;

    // Without `patch` on pods, a new pod gets no address; the grant back, it does.
    set_verbs(&server, "pods", &["get", "list", "watch"]);
    add_pod(&server, "web-2", "n1");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(pod_ip(&server, "web-2"), None, "the master patched a pod it may not patch");
    set_verbs(&server, "pods", &["get", "list", "watch", "patch"]);
    wait_for("web-2's address once patch is granted again", || pod_ip(&server, "web-2")).await;
    master.stop().await.expect("clean stop");
}
