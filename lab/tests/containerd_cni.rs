//! `skein-cni` under the real containerd (Debian's 1.6, its CRI plugin and libcni), with the
//! conflist exactly as `skein-agent` writes it — Skein, then the reference `portmap` and
//! `bandwidth` — driven over CRI as kubelet drives it: ADD (RunPodSandbox), DEL
//! (StopPodSandbox), the sandbox re-created, and injected failures (the agent down, a chained
//! plugin failing) — after each, no port record, veth or sandbox namespace is left behind.
//!
//! A 2-node lab whose node2 kubelet leaves pods alone (`--manual-pods node2`): this test is
//! node2's kubelet. Needs root (`SKEIN_SKIP_NETNS_TESTS=1` skips it elsewhere).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use skein_lab::containerd::NodeRuntime;
use skein_lab::cri::Cri;
use skein_lab::kubelet::sandbox_config;
use skein_lab::layout::Layout;
use skein_lab::state::{ControlRequest, control};

#[path = "../../datapath/tests/netns/command.rs"]
mod command;
mod support;

use support::{Lab, netns_with_prefix};

const PREFIX: &str = "sklabc";
const NODE: &str = "node2";

/// The agent's port records on the node (`<state>/ports/*.json`).
fn port_records(layout: &Layout) -> Vec<Value> {
    let dir = layout.agent_state_dir(NODE).join("ports");
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|bytes| serde_json::from_slice(&bytes).ok())
        .collect()
}

/// The pod veths' host ends in the node's namespace (`sk` + 12 hex digits).
fn pod_veths(layout: &Layout) -> Vec<String> {
    let out = command::try_run(&["ip", "-n", &layout.node_netns(NODE), "-o", "link", "show"]).expect("ip link");
    out.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.len() == 14 && n.starts_with("sk") && n[2..].chars().all(|c| c.is_ascii_hexdigit()))
        .collect()
}

async fn create_pod(client: &Client, name: &str) -> Pod {
    let pods = Api::<Pod>::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "cri-test"}},
        "spec": {"nodeName": NODE, "containers": [{"name": "main", "image": "skein-lab/echo",
                 "ports": [{"containerPort": 8080, "hostPort": 18080}]}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.expect("creating the pod");
    let started = Instant::now();
    loop {
        let pod = pods.get(name).await.expect("reading the pod");
        if pod.annotations().contains_key("skein.dev/pod-networks") {
            return pod;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the master never annotated {name}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn annotated_ip(pod: &Pod) -> String {
    let text = &pod.annotations()["skein.dev/pod-networks"];
    let value: Value = serde_json::from_str(text).unwrap();
    let cidr = value["default"]["ip_addresses"][0].as_str().unwrap();
    cidr.split('/').next().unwrap().to_string()
}

fn gateway(pod: &Pod) -> String {
    let value: Value = serde_json::from_str(&pod.annotations()["skein.dev/pod-networks"]).unwrap();
    value["default"]["gateway_ips"][0].as_str().unwrap().to_string()
}

/// Stops and removes every sandbox of `pod` (what kubelet's garbage collection does).
async fn remove_sandboxes(cri: &Cri, pod: &Pod) {
    let labels = HashMap::from([("io.kubernetes.pod.uid".to_string(), pod.uid().unwrap())]);
    for sandbox in cri.list_pod_sandboxes(labels).await.unwrap() {
        cri.stop_pod_sandbox(&sandbox.id).await.expect("StopPodSandbox of a leftover");
        cri.remove_pod_sandbox(&sandbox.id).await.expect("RemovePodSandbox of a leftover");
    }
}

/// Nothing of a pod is left on the node: no port record, no veth, no sandbox namespace.
fn assert_nothing_left(layout: &Layout, runtime_netns_before: &[String], when: &str) {
    assert_eq!(port_records(layout), Vec::<Value>::new(), "{when}: port records left");
    assert_eq!(pod_veths(layout), Vec::<String>::new(), "{when}: veths left");
    let mut now = netns_with_prefix("cni-");
    now.retain(|n| !runtime_netns_before.contains(n));
    assert_eq!(now, Vec::<String>::new(), "{when}: sandbox namespaces left");
}

async fn run_and_check(cri: &Cri, runtime: &NodeRuntime, layout: &Layout, pod: &Pod, attempt: u32) -> String {
    let id = cri.run_pod_sandbox(sandbox_config(pod, runtime, attempt)).await.expect("RunPodSandbox");
    let status = cri.sandbox_status(&id).await.expect("PodSandboxStatus");
    assert_eq!(status.ips, [annotated_ip(pod)], "the sandbox has the address the master allocated");
    let records = port_records(layout);
    assert_eq!(records.len(), 1, "one port record: {records:?}");
    assert_eq!(records[0]["pod"], pod.name_any());
    assert_eq!(pod_veths(layout), [records[0]["host_ifname"].as_str().unwrap().to_string()]);
    // The pod's first packet passes: its gateway answers.
    let netns = Path::new(&status.netns).file_name().unwrap().to_string_lossy().to_string();
    command::try_run(&["ip", "netns", "exec", &netns, "ping", "-c", "1", "-W", "2", &gateway(pod)])
        .expect("the pod reaches its gateway");
    id
}

async fn control_ok(layout: &Layout, request: ControlRequest) {
    let response = control(layout, &request, Duration::from_secs(30)).await.expect("lab control");
    assert!(response.ok, "{request:?}: {}", response.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_skein_cni_under_containerd_leaves_nothing_behind() {
    if !command::root_or_skip("skein-cni under containerd", "network namespaces and containerd") {
        return;
    }
    let runtime_netns_before = netns_with_prefix("cni-");
    let lab = Lab::up(PREFIX, &["--nodes", "2", "--manual-pods", NODE]);
    let layout = Layout::new(PREFIX).unwrap();
    let client = skein_lab::cli::lab_client(&layout).await.unwrap();
    let runtime = NodeRuntime::new(&layout, NODE);
    let cri = Cri::connect(&runtime.socket()).await.expect("node2's containerd");

    // The conflist is the agent's own: Skein first, portmap and bandwidth chained.
    let conflist: Value =
        serde_json::from_slice(&std::fs::read(layout.cni_conf_dir(NODE).join("10-skein.conflist")).unwrap()).unwrap();
    let chain: Vec<&str> =
        conflist["plugins"].as_array().unwrap().iter().map(|p| p["type"].as_str().unwrap()).collect();
    assert_eq!(chain, ["skein-cni", "portmap", "bandwidth"], "{conflist}");

    // ADD, DEL (twice: DEL is idempotent), re-creation of the sandbox.
    let pod = create_pod(&client, "cri-a").await;
    let first = run_and_check(&cri, &runtime, &layout, &pod, 0).await;
    cri.stop_pod_sandbox(&first).await.expect("StopPodSandbox");
    cri.stop_pod_sandbox(&first).await.expect("StopPodSandbox again");
    cri.remove_pod_sandbox(&first).await.expect("RemovePodSandbox");
    assert_nothing_left(&layout, &runtime_netns_before, "after DEL");
    let second = run_and_check(&cri, &runtime, &layout, &pod, 1).await;
    assert_ne!(first, second);
    cri.stop_pod_sandbox(&second).await.unwrap();
    cri.remove_pod_sandbox(&second).await.unwrap();
    assert_nothing_left(&layout, &runtime_netns_before, "after the re-created sandbox's DEL");

    // The agent down: ADD fails (try again later), and nothing is left.
    control_ok(&layout, ControlRequest::StopProcess { role: format!("agent/{NODE}") }).await;
    let error = cri.run_pod_sandbox(sandbox_config(&pod, &runtime, 2)).await.expect_err("ADD with the agent down");
    assert!(error.to_string().contains("skein-cni"), "{error}");
    remove_sandboxes(&cri, &pod).await;
    assert_nothing_left(&layout, &runtime_netns_before, "after ADD with the agent down");
    control_ok(&layout, ControlRequest::StartProcess { role: format!("agent/{NODE}") }).await;

    // A chained plugin failing after Skein's ADD succeeded: the runtime runs DEL, and the
    // agent's binding goes with it.
    let bandwidth = layout.cni_bin_dir(NODE).join("bandwidth");
    let real = std::fs::read_link(&bandwidth).expect("bandwidth is the reference plugin's symlink");
    let failing = PathBuf::from(format!("/run/skein-lab/{PREFIX}/failing-bandwidth"));
    std::fs::write(
        &failing,
        format!(
            "#!/bin/sh\nif [ \"$CNI_COMMAND\" = ADD ]; then\n  cat >/dev/null\n  \
             echo '{{\"cniVersion\":\"1.0.0\",\"code\":999,\"msg\":\"injected failure\"}}'\n  exit 1\nfi\nexec {} \"$@\"\n",
            real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&failing, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::remove_file(&bandwidth).unwrap();
    std::os::unix::fs::symlink(&failing, &bandwidth).unwrap();
    // The restarted agent may take a moment to serve ADD again: retry while it says so.
    let started = Instant::now();
    let error = loop {
        let error =
            cri.run_pod_sandbox(sandbox_config(&pod, &runtime, 3)).await.expect_err("ADD with bandwidth failing");
        remove_sandboxes(&cri, &pod).await;
        if error.to_string().contains("injected failure") || started.elapsed() > Duration::from_secs(60) {
            break error;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(error.to_string().contains("injected failure"), "{error}");
    assert_nothing_left(&layout, &runtime_netns_before, "after a chained plugin failed");
    std::fs::remove_file(&bandwidth).unwrap();
    std::os::unix::fs::symlink(&real, &bandwidth).unwrap();

    // And the node still works.
    let last = run_and_check(&cri, &runtime, &layout, &pod, 4).await;
    cri.stop_pod_sandbox(&last).await.unwrap();
    cri.remove_pod_sandbox(&last).await.unwrap();
    assert_nothing_left(&layout, &runtime_netns_before, "at the end");
    drop(lab);
}
