//! As root, in a 2-node lab: pods that run as their spec says, through the real containerd —
//! `restartPolicy` (`Never` ends `Succeeded`; `OnFailure` restarts a failed container, whose
//! previous run's log stays), env from `fieldRef`s with `$(VAR)` expansion, the pod's hosts
//! file, a name looked up through the cluster DNS from inside a pod —, the device plugins'
//! resources in the Nodes' capacity, a pod asking for more `skein.dev/rdma` than any node has
//! left unscheduled with kube-scheduler's message, and a Job whose pod fails ending `Failed`
//! (`BackoffLimitExceeded`). The lab's underlay has jumbo frames (MTU 9000): each agent gives
//! its pods the uplink's MTU less Geneve's 66 bytes, and a full-size packet crosses from a
//! pod on one node to a pod on the other with DF set. Needs root (like `demo.rs`); `SKEIN_SKIP_NETNS_TESTS=1` skips it
//! without root. Wrap in `flock /tmp/skein-lab.lock` (one lab per host).

use std::process::Command;
use std::time::{Duration, Instant};

#[path = "../../datapath/tests/netns/command.rs"]
mod command;
mod support;

use support::{LAB, Lab};

const PREFIX: &str = "sklabj";

fn lab(args: &[&str]) -> (bool, String) {
    let output = Command::new(LAB).args(["--prefix", PREFIX]).args(args).output().expect("running skein-lab");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// The row of `get pods -o wide` for the pod whose name starts with `name`, as columns.
fn pod_row(name: &str) -> Option<Vec<String>> {
    let (_, text) = lab(&["get", "pods", "-n", "default", "-o", "wide"]);
    text.lines()
        .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
        .find(|cols| cols.get(1).is_some_and(|n| n.starts_with(name)))
}

fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            started.elapsed() < limit,
            "not seen within {limit:?}: {what}\n{}",
            lab(&["get", "pods", "-o", "wide"]).1
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn phase_of(name: &str, phase: &str) -> Option<Vec<String>> {
    pod_row(name).filter(|cols| cols.get(3).map(String::as_str) == Some(phase))
}

const MANIFEST: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: once, labels: {app: once}}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: localhost/skein-lab/node:1
    command: ["/bin/sh", "-c"]
    args: ["echo \"$(GREETING) from $POD on $NODE\"; grep -c once.lookup /etc/hosts; nslookup web.default.svc.cluster.local"]
    env:
    - {name: POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
    - {name: WHO, value: lab}
    - {name: GREETING, value: "hello $(WHO)"}
  hostname: once
  subdomain: lookup
---
apiVersion: v1
kind: Pod
metadata: {name: retry}
spec:
  restartPolicy: OnFailure
  volumes: [{name: state, emptyDir: {}}]
  containers:
  - name: main
    image: localhost/skein-lab/node:1
    command: ["/bin/sh", "-c", "if [ -f /state/ran ]; then echo second run; exit 0; fi; touch /state/ran; echo first run; exit 3"]
    volumeMounts: [{name: state, mountPath: /state}]
---
apiVersion: v1
kind: Pod
metadata: {name: greedy}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: localhost/skein-lab/node:1
    command: ["/bin/true"]
    resources: {limits: {skein.dev/rdma: 3}}
---
apiVersion: batch/v1
kind: Job
metadata: {name: flaky}
spec:
  completionMode: Indexed
  completions: 1
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
      - {name: main, image: localhost/skein-lab/node:1, command: ["/bin/sh", "-c", "echo index $JOB_COMPLETION_INDEX; exit 1"]}
---
apiVersion: v1
kind: Pod
metadata: {name: jumbo-a}
spec:
  nodeName: node1
  containers: [{name: main, image: localhost/skein-lab/node:1, command: ["/bin/sleep", "3600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: jumbo-b}
spec:
  nodeName: node2
  containers: [{name: main, image: localhost/skein-lab/node:1, command: ["/bin/sleep", "3600"]}]
"#;

#[test]
fn netns_pods_run_as_their_spec_says_and_jobs_fail_as_told() {
    if !command::root_or_skip("the lab's pods and jobs", "network namespaces") {
        return;
    }
    let _lab = Lab::up(PREFIX, &["--nodes", "2", "--underlay-mtu", "9000"]);
    // Each node's device plugin reports both HCAs.
    let nodes = wait_for("both nodes with 2 RDMA devices", Duration::from_secs(60), || {
        let (_, text) = lab(&["get", "nodes", "-o", "wide"]);
        (text.matches("skein.dev/rdma=2/2").count() == 2).then_some(text)
    });
    assert!(nodes.contains("node1") && nodes.contains("node2"), "{nodes}");

    let file = std::env::temp_dir().join(format!("{PREFIX}-manifest.yaml"));
    std::fs::write(&file, MANIFEST).unwrap();
    let (ok, text) = lab(&["apply", "-f", file.to_str().unwrap()]);
    assert!(ok, "{text}");

    // Jumbo frames: the pods' MTU is the uplink's (9000) less Geneve's 66, and a packet of
    // exactly that size crosses the tunnel whole (DF: a hop that cannot carry it fails
    // the ping).
    let a = wait_for("jumbo-a Running", Duration::from_secs(90), || phase_of("jumbo-a", "Running"));
    wait_for("jumbo-b Running", Duration::from_secs(90), || phase_of("jumbo-b", "Running"));
    let (ok, mtu) = lab(&["exec", "jumbo-b", "--", "cat", "/sys/class/net/eth0/mtu"]);
    assert!(ok && mtu.trim() == "8934", "jumbo-b's eth0 MTU: {mtu}");
    let payload = (8934 - 28).to_string();
    let (ok, ping) = lab(&["exec", "jumbo-b", "--", "ping", "-c", "2", "-W", "5", "-M", "do", "-s", &payload, &a[4]]);
    assert!(ok, "an 8934-byte packet from node2 to jumbo-a ({}) on node1: {ping}", a[4]);

    // Never: runs once, Succeeded; env expanded, the hosts file names it, DNS answers.
    let once = wait_for("once Succeeded", Duration::from_secs(90), || phase_of("once", "Succeeded"));
    let (_, log) = lab(&["logs", "once"]);
    assert!(log.contains(&format!("hello lab from once on {}", once[5])), "{log}");
    assert!(log.lines().any(|l| l.trim() == "1"), "the hosts file names once.lookup: {log}");
    let (_, services) = lab(&["get", "services", "-n", "default"]);
    let cluster_ip = services.lines().find(|l| l.contains(" web ")).and_then(|l| l.split_whitespace().nth(3)).unwrap();
    assert!(log.contains(cluster_ip), "nslookup through the cluster DNS gives {cluster_ip}: {log}");

    // OnFailure: the failed first run is restarted, the second succeeds; both logs kept.
    wait_for("retry Succeeded", Duration::from_secs(90), || phase_of("retry", "Succeeded"));
    assert!(lab(&["logs", "retry"]).1.contains("second run"));
    assert!(lab(&["logs", "retry", "--previous"]).1.contains("first run"));

    // More devices than a node has: unscheduled, with the scheduler's reason.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let message = wait_for("greedy unschedulable", Duration::from_secs(30), || {
        runtime.block_on(async {
            let layout = skein_lab::layout::Layout::new(PREFIX).unwrap();
            let client = skein_lab::cli::lab_client(&layout).await.ok()?;
            let pod =
                kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client, "default").get("greedy").await.ok()?;
            let conditions = pod.status?.conditions?;
            let scheduled = conditions.into_iter().find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
            scheduled.message
        })
    });
    assert_eq!(message, "0/2 nodes are available: 2 Insufficient skein.dev/rdma.");
    assert_eq!(pod_row("greedy").unwrap()[5], "<none>");

    // A Job whose only pod fails, with no retries: Failed, the pod's log says its index.
    wait_for("flaky Failed", Duration::from_secs(90), || {
        let (_, jobs) = lab(&["get", "jobs", "-n", "default"]);
        jobs.lines().any(|l| l.contains(" flaky ") && l.contains(" Failed ")).then_some(())
    });
    let flaky = pod_row("flaky-0-").expect("the Job's pod stays");
    assert_eq!(flaky[3], "Failed");
    assert!(lab(&["logs", &flaky[1]]).1.contains("index 0"));
    let (ok, check) = lab(&["check"]);
    assert!(!ok, "the failed Job fails the checks");
    assert!(
        check.contains("job default/flaky (Indexed, 1 completions) runs to completion")
            && check.contains("Failed (BackoffLimitExceeded: Job has reached the specified backoff limit)"),
        "{check}"
    );
}
