//! A small Skein cluster for the agent's tests: the in-process Kubernetes API fake and
//! master in this process (root namespace, on an underlay bridge), one network namespace
//! per node running the real `skein-agent` binary, an "outside" namespace that is the
//! nodes' default gateway (and holds 198.51.100.1, the address pods reach), and pods
//! whose sandboxes are namespaces set up by invoking the real `skein-cni` the way
//! containerd does. Everything is removed when the cluster is dropped.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use skein_kube_fake::{FakeApiServer, Kind, ServerOptions};
use skein_master::annotate::Backoff;
use skein_master::{Master, MasterSettings};
use skein_netmodel::NetworkConfig;

#[path = "../../../datapath/tests/netns/command.rs"]
mod command;
pub use command::{try_exec as exec, try_ping as ping, try_run};

/// The agent under test.
pub const AGENT: &str = env!("CARGO_BIN_EXE_skein-agent");

/// The address pods reach "on the internet" (on the outside namespace's loopback).
pub const INTERNET: &str = "198.51.100.1";

/// Where Debian's `containernetworking-plugins` puts the reference plugins.
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// The reference plugins a node's CNI bin dir holds, as on a real node's /opt/cni/bin.
pub const NODE_PLUGINS: [&str; 3] = ["portmap", "bandwidth", "loopback"];

/// Every CNI version libcni ≥ 1.2 (containerd 1.7/2.x, CRI-O) knows.
pub const LIBCNI_1_2_VERSIONS: [&str; 7] = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// How a runtime picks the CNI version from the conflist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Libcni {
    /// libcni 1.1 (containerd 1.6): the list's `cniVersion`, `cniVersions` ignored.
    V1_1,
    /// libcni ≥ 1.2 (containerd 1.7/2.x, CRI-O): the highest of `cniVersions` it knows.
    V1_2,
}

/// `text` (a log line or a whole log) without its terminal colour codes (`ESC [ ... m`).
pub fn without_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

/// Stops `child` with SIGTERM and waits for it (10 s at most, then SIGKILL).
fn terminate(mut child: Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs a command and panics with its output if it fails.
pub fn run(args: &[&str]) -> String {
    try_run(args).unwrap_or_else(|e| panic!("{e}"))
}

/// The receive ring size of every datapath port, MiB: `SKEIN_TEST_RING_MIB`, or 2 (the
/// chart's default).
fn ring_mib() -> String {
    std::env::var("SKEIN_TEST_RING_MIB")
        .ok()
        .filter(|v| v.parse::<u32>().is_ok_and(|n| n > 0))
        .unwrap_or_else(|| "2".into())
}

/// Finds a binary of another package of the workspace beside this test's executable,
/// building it if it is not there (`cargo test --workspace` has built it already).
pub fn workspace_binary(name: &str, package: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe.parent().and_then(Path::parent).expect("target dir").to_path_buf();
    let path = dir.join(name);
    if !path.exists() {
        let release = dir.ends_with("release").then_some("--release");
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", package, "--bin", name])
            .args(release)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building {name} failed");
    }
    path
}

/// One node: its namespace, underlay address, agent directories and process.
pub struct Node {
    /// Node name.
    pub name: String,
    /// Namespace.
    pub ns: String,
    /// Underlay address (the node IP).
    pub ip: String,
    /// Agent's state directory.
    pub state: PathBuf,
    /// CNI bin dir.
    pub cni_bin: PathBuf,
    /// CNI conf dir.
    pub cni_conf: PathBuf,
    /// Agent log file.
    pub log: PathBuf,
    agent: Option<Child>,
    /// The datapath process's control socket.
    pub dp_socket: PathBuf,
    /// The datapath process's log file.
    pub dp_log: PathBuf,
    datapath: Option<Child>,
    /// The agent binary this node runs (an upgrade changes it).
    pub agent_binary: PathBuf,
}

impl Node {
    /// The CNI socket.
    pub fn socket(&self) -> PathBuf {
        self.state.join("cni.sock")
    }
}

/// A pod sandbox.
#[derive(Clone, Debug)]
pub struct Pod {
    /// Pod name (namespace `default`).
    pub name: String,
    /// Its node's index.
    pub node: usize,
    /// Sandbox namespace.
    pub ns: String,
    /// Container id.
    pub container: String,
    /// ADD's result (stdout).
    pub result: Value,
    /// The pod's IPv4 address.
    pub ip: String,
}

/// What a `skein-cni` invocation printed and returned.
#[derive(Debug)]
pub struct CniOutput {
    /// Exit status code.
    pub code: i32,
    /// Stdout.
    pub stdout: String,
    /// Stderr.
    pub stderr: String,
}

impl CniOutput {
    /// Stdout as JSON (Null if empty).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or(Value::Null)
    }
    /// The CNI error code of a failure.
    pub fn error_code(&self) -> Option<u64> {
        self.json().get("code").and_then(Value::as_u64)
    }
}

/// The cluster.
pub struct Cluster {
    /// Name prefix.
    pub prefix: String,
    /// Temporary directory.
    pub dir: tempfile::TempDir,
    /// The runtime the API and master run on.
    pub rt: tokio::runtime::Runtime,
    /// The API.
    pub api: FakeApiServer,
    master: Option<Master>,
    /// Master's southbound endpoint.
    pub master_url: String,
    /// Nodes.
    pub nodes: Vec<Node>,
    /// The outside namespace.
    pub outside: String,
    /// The underlay bridge in the root namespace.
    pub bridge: String,
    /// The underlay subnet's first three octets.
    pub net: String,
    /// Namespaces to delete.
    namespaces: Vec<String>,
    /// The CNI plugin.
    pub cni: PathBuf,
}

impl Cluster {
    /// Builds `nodes` nodes, or `None` when skipped (not root and SKEIN_SKIP_NETNS_TESTS=1).
    pub fn new(test: &str, tag: &str, nodes: usize) -> Option<Cluster> {
        if !command::root_or_skip(test, "network namespaces, veths and a bridge") {
            return None;
        }
        let pid = std::process::id();
        let prefix = format!("sa{:03}{tag}", pid % 1000);
        // One underlay subnet per cluster of this process (tests run in parallel), and
        // per process: the tag's letter picks one of sixteen. Tags must differ within a
        // test binary (the prefix and the subnet come from them: a second cluster with the
        // same tag would delete the first one's bridge).
        let slot = u32::from(tag.bytes().next().unwrap_or(b'a').wrapping_sub(b'a')) % 16;
        let net = format!("172.31.{}", 10 + (pid % 15) * 16 + slot);
        let dir = tempfile::Builder::new().prefix(&format!("skein-{test}-")).tempdir().expect("tempdir");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(3).enable_all().build().expect("runtime");
        let bridge = format!("{prefix}br");
        let _ = try_run(&["ip", "link", "del", &bridge]);
        run(&["ip", "link", "add", &bridge, "type", "bridge"]);
        run(&["ip", "addr", "add", &format!("{net}.1/24"), "dev", &bridge]);
        run(&["ip", "link", "set", &bridge, "up"]);
        let api = rt
            .block_on(FakeApiServer::start_with(ServerOptions {
                addr: format!("{net}.1:0").parse().expect("api address"),
                ..ServerOptions::default()
            }))
            .expect("the API fake starts");
        let cni = workspace_binary("skein-cni", "skein-cni");
        let mut cluster = Cluster {
            prefix,
            dir,
            rt,
            api,
            master: None,
            master_url: String::new(),
            nodes: Vec::new(),
            outside: String::new(),
            bridge,
            net,
            namespaces: Vec::new(),
            cni,
        };
        cluster.api.write_kubeconfig(&cluster.dir.path().join("kubeconfig")).expect("kubeconfig");
        // The outside: the nodes' gateway, with the internet address on its loopback.
        let outside = cluster.namespace("out");
        cluster.attach(&outside, 254);
        run(&["ip", "-n", &outside, "addr", "add", &format!("{INTERNET}/32"), "dev", "lo"]);
        run(&["ip", "netns", "exec", &outside, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        cluster.outside = outside;
        for i in 1..=nodes {
            let name = format!("node{i}");
            let ns = cluster.namespace(&name);
            let ip = cluster.attach(&ns, 10 + i as u8);
            run(&["ip", "-n", &ns, "route", "add", "default", "via", &format!("{}.254", cluster.net)]);
            cluster
                .api
                .insert(
                    Kind::Node,
                    json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
                           "status": {"addresses": [{"type": "InternalIP", "address": ip}],
                                      "conditions": [{"type": "Ready", "status": "True"}]}}),
                )
                .expect("node created");
            let base = cluster.dir.path().join(&name);
            // The node's CNI bin dir holds the reference plugins, as /opt/cni/bin does.
            let bin = base.join("bin");
            std::fs::create_dir_all(&bin).expect("CNI bin dir");
            for plugin in NODE_PLUGINS {
                let source = Path::new(REFERENCE_PLUGINS).join(plugin);
                assert!(
                    source.exists(),
                    "{} is missing: install Debian's containernetworking-plugins",
                    source.display()
                );
                std::os::unix::fs::symlink(&source, bin.join(plugin)).expect("link a reference plugin");
            }
            cluster.nodes.push(Node {
                name,
                ns,
                ip,
                state: base.join("state"),
                cni_bin: base.join("bin"),
                cni_conf: base.join("net.d"),
                log: base.join("agent.log"),
                agent: None,
                dp_socket: base.join("dp.sock"),
                dp_log: base.join("datapath.log"),
                datapath: None,
                agent_binary: PathBuf::from(AGENT),
            });
        }
        let mut settings = MasterSettings {
            network: NetworkConfig::default(),
            grpc_listen: format!("{}.1:0", cluster.net).parse().expect("grpc address"),
            grpc_tls: None,
            pki: skein_master::pki::PkiSettings::new("kube-system"),
            auth: skein_master::auth::AuthSettings::new("kube-system", "skein-agent"),
            max_streams_per_node: 2,
            http_listen: "127.0.0.1:0".parse().expect("http address"),
            lease: None,
            identity: "test-master".to_owned(),
            backoff: Backoff {
                initial: Duration::from_millis(20),
                max: Duration::from_millis(500),
                rejected_retry: Duration::from_secs(1),
            },
        };
        settings.network = NetworkConfig::default();
        let master = {
            let _in_runtime = cluster.rt.enter();
            let client = cluster.api.client();
            cluster.rt.block_on(Master::start(settings, client)).expect("master starts")
        };
        cluster.master_url = format!("https://{}", master.grpc_addr());
        cluster
            .api
            .insert(Kind::ServiceAccount, json!({"metadata": {"name": "skein-agent", "namespace": "kube-system"}}))
            .expect("agent service account");
        cluster.master = Some(master);
        for i in 0..nodes {
            cluster.start_datapath(i);
            cluster.start_agent(i);
        }
        for i in 0..nodes {
            cluster.wait_ready(i);
        }
        Some(cluster)
    }

    pub fn namespace(&mut self, name: &str) -> String {
        let ns = format!("{}-{name}", self.prefix);
        let _ = try_run(&["ip", "netns", "del", &ns]);
        run(&["ip", "netns", "add", &ns]);
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        self.namespaces.push(ns.clone());
        ns
    }

    /// Wires `ns` to the bridge as `eth0` with `<net>.<host>/24`; returns the address.
    fn attach(&mut self, ns: &str, host: u8) -> String {
        let outer = format!("{}v{host}", self.prefix);
        run(&["ip", "link", "add", &outer, "type", "veth", "peer", "name", "eth0", "netns", ns]);
        run(&["ip", "link", "set", &outer, "master", &self.bridge, "up"]);
        let ip = format!("{}.{host}", self.net);
        run(&["ip", "-n", ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        run(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
        ip
    }

    /// Starts (or restarts) node `i`'s agent.
    pub fn start_agent(&mut self, i: usize) {
        let master = self.master_url.clone();
        self.start_agent_with(i, &master, &[]);
    }

    /// Starts (or restarts) node `i`'s datapath process, `skein-dp run` without ports: the
    /// agent gives it the node's and pods' ports and the flows.
    pub fn start_datapath(&mut self, i: usize) {
        let dp = workspace_binary("skein-dp", "skein-datapath");
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.dp_log).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &node.ns])
            .arg(&dp)
            .args(["run", "--ring-mib", &ring_mib(), "--control"])
            .arg(&node.dp_socket)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start skein-dp");
        node.datapath = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&node.dp_socket).is_err() {
            assert!(Instant::now() < deadline, "skein-dp on {} does not listen", node.name);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops node `i`'s datapath process (SIGTERM, then waits): forwarding stops.
    pub fn stop_datapath(&mut self, i: usize) {
        if let Some(child) = self.nodes[i].datapath.take() {
            terminate(child);
        }
    }

    /// Kills node `i`'s agent (SIGKILL: a crash; nothing is saved on the way out).
    pub fn kill_agent(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the master (the agents keep what they installed).
    pub fn stop_master(&mut self) {
        if let Some(master) = self.master.take() {
            self.rt.block_on(master.kill());
        }
    }

    /// Starts (or restarts) node `i`'s agent following the master at `master`, with
    /// `extra` flags.
    pub fn start_agent_with(&mut self, i: usize, master: &str, extra: &[&str]) {
        let kubeconfig = self.dir.path().join("kubeconfig");
        // The agent's projected token: audience skein.dev/southbound, bound to its node.
        let request = json!({"spec": {"audiences": ["skein.dev/southbound"],
                                      "boundObjectRef": {"kind": "Node", "name": self.nodes[i].name}}});
        let answer = self.api.store().request_token("kube-system", "skein-agent", &request).expect("agent token");
        let token_file = self.dir.path().join(format!("{}.token", self.nodes[i].name));
        std::fs::write(&token_file, answer["status"]["token"].as_str().expect("token")).expect("token file");
        let node = &mut self.nodes[i];
        std::fs::create_dir_all(&node.state).expect("state dir");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &node.ns])
            .arg(&node.agent_binary)
            .args(["--node-name", &node.name])
            .arg("--datapath-socket")
            .arg(&node.dp_socket)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--master", master])
            .arg("--token-file")
            .arg(&token_file)
            .arg("--state-dir")
            .arg(&node.state)
            .arg("--cni-socket")
            .arg(node.socket())
            .arg("--cni-bin-dir")
            .arg(&node.cni_bin)
            .arg("--cni-conf-dir")
            .arg(&node.cni_conf)
            .arg("--cni-plugin")
            .arg(&self.cni)
            .args(["--metrics-listen", "127.0.0.1:9476", "--no-device-plugin"])
            .args(["--log", "info,skein_agent=debug"])
            .args(if extra.contains(&"--add-timeout") { &[][..] } else { &["--add-timeout", "30s"][..] })
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start skein-agent");
        node.agent = Some(child);
    }

    /// Stops node `i`'s agent (SIGTERM, then waits).
    pub fn stop_agent(&mut self, i: usize) {
        if let Some(child) = self.nodes[i].agent.take() {
            // `ip netns exec` execs the agent: the child is the agent itself.
            terminate(child);
        }
    }

    /// Waits until node `i`'s agent says it is ready (STATUS through the plugin) and its
    /// conflist is in place (what makes a runtime call the node network-ready).
    pub fn wait_ready(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let conflist = self.nodes[i].cni_conf.join("10-skein.conflist");
        loop {
            let out = self.cni_raw(i, "STATUS", "", "", "", "", None);
            if out.code == 0 && conflist.exists() {
                return;
            }
            if Instant::now() > deadline {
                self.fail(&format!("agent of {} not ready: {out:?}", self.nodes[i].name));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The single-plugin configuration for `skein-cni` on node `i`, in `version`.
    pub fn plugin_conf(&self, i: usize, version: &str) -> Value {
        json!({"cniVersion": version, "name": "skein", "type": "skein-cni",
               "agentSocket": self.nodes[i].socket(), "timeoutSeconds": 60})
    }

    /// Invokes `skein-cni` in node `i`'s namespace as containerd does.
    #[allow(clippy::too_many_arguments)]
    pub fn cni_raw(
        &self,
        i: usize,
        command: &str,
        container: &str,
        netns: &str,
        ifname: &str,
        args: &str,
        stdin: Option<&str>,
    ) -> CniOutput {
        let conf = self.plugin_conf(i, "1.1.0").to_string();
        self.exec_plugin(i, &self.cni, command, container, netns, ifname, args, stdin.unwrap_or(&conf))
    }

    /// Runs any CNI plugin binary in node `i`'s namespace.
    #[allow(clippy::too_many_arguments)]
    pub fn exec_plugin(
        &self,
        i: usize,
        plugin: &Path,
        command: &str,
        container: &str,
        netns: &str,
        ifname: &str,
        args: &str,
        stdin: &str,
    ) -> CniOutput {
        let child = self.spawn_plugin(i, plugin, command, container, netns, ifname, args, stdin);
        let out = child.wait_with_output().expect("plugin output");
        CniOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Starts a CNI plugin binary in node `i`'s namespace (its stdin written and closed)
    /// without waiting for it. `ip netns exec` execs the plugin: the child is the plugin.
    #[allow(clippy::too_many_arguments)]
    pub fn spawn_plugin(
        &self,
        i: usize,
        plugin: &Path,
        command: &str,
        container: &str,
        netns: &str,
        ifname: &str,
        args: &str,
        stdin: &str,
    ) -> Child {
        self.spawn_plugin_with_path(i, plugin, command, container, netns, ifname, args, stdin, None)
    }

    /// [`Cluster::spawn_plugin`] with the plugin's `PATH` (default: the test's).
    #[allow(clippy::too_many_arguments)]
    pub fn spawn_plugin_with_path(
        &self,
        i: usize,
        plugin: &Path,
        command: &str,
        container: &str,
        netns: &str,
        ifname: &str,
        args: &str,
        stdin: &str,
        path: Option<&str>,
    ) -> Child {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.nodes[i].ns]);
        // `env` (exec'ing the plugin in turn) gives the plugin its own PATH; `ip` and `env`
        // are found with the test's.
        if let Some(path) = path {
            cmd.arg("env").arg(format!("PATH={path}"));
        }
        cmd.arg(plugin);
        let cni_path = format!("{}:{REFERENCE_PLUGINS}", self.nodes[i].cni_bin.display());
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_COMMAND", command)
            .env("CNI_PATH", cni_path);
        for (k, v) in [("CNI_CONTAINERID", container), ("CNI_NETNS", netns), ("CNI_IFNAME", ifname), ("CNI_ARGS", args)]
        {
            if !v.is_empty() {
                cmd.env(k, v);
            }
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the CNI plugin");
        child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
        child
    }

    /// `CNI_ARGS` for pod `name` in any-order style, as containerd writes it.
    pub fn cni_args(name: &str, container: &str, uid: &str) -> String {
        format!(
            "K8S_POD_INFRA_CONTAINER_ID={container};K8S_POD_UID={uid};IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}"
        )
    }

    /// Creates pod `name` on node `i` in the API with `containers` (labels `app=<app>`);
    /// returns its UID.
    pub fn insert_pod(&self, name: &str, i: usize, app: &str, spec: Value) -> String {
        let mut spec = spec;
        spec["nodeName"] = json!(self.nodes[i].name);
        let created = self
            .api
            .insert(
                Kind::Pod,
                json!({"metadata": {"name": name, "namespace": "default", "labels": {"app": app}}, "spec": spec}),
            )
            .expect("pod created");
        created["metadata"]["uid"].as_str().unwrap_or_default().to_owned()
    }

    /// A sandbox namespace for pod `name`; returns (namespace, container id).
    pub fn sandbox(&mut self, name: &str) -> (String, String) {
        let ns = self.namespace(&format!("p-{name}"));
        (ns, format!("ctr-{name}-{}", self.prefix))
    }

    /// The conflist the agent of node `i` wrote.
    pub fn conflist(&self, i: usize) -> skein_cni::ConfList {
        let path = self.nodes[i].cni_conf.join("10-skein.conflist");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| self.fail(&format!("the conflist {} is not there: {e}", path.display())));
        skein_cni::ConfList::parse(text.as_bytes()).unwrap_or_else(|e| self.fail(&format!("the conflist: {e:?}")))
    }

    /// Runs the conflist of node `i` as a runtime on `libcni` does: `command` (ADD: each
    /// plugin in order, each given the previous one's result, stopping at the first
    /// failure; DEL: each in reverse, given `cached` — the ADD's result —, going on after
    /// failures) with the plugins from the node's CNI bin dir. Returns the version used
    /// and each plugin's output.
    #[allow(clippy::too_many_arguments)]
    pub fn run_chain(
        &self,
        i: usize,
        libcni: Libcni,
        command: &str,
        container: &str,
        netns: &str,
        args: &str,
        runtime_config: &Value,
        cached: Option<&Value>,
    ) -> (String, Vec<(String, CniOutput)>) {
        let list = self.conflist(i);
        let version = match libcni {
            Libcni::V1_1 => list.cni_version.clone(),
            Libcni::V1_2 => list.negotiate_version(&LIBCNI_1_2_VERSIONS).unwrap_or_default(),
        };
        let mut order: Vec<usize> = (0..list.plugins.len()).collect();
        if command == "DEL" {
            order.reverse();
        }
        let mut prev = cached.cloned();
        let mut outputs = Vec::new();
        for index in order {
            let plugin_type = list.plugins[index]["type"].as_str().unwrap_or_default().to_owned();
            let stdin = list
                .plugin_config(index, &version, runtime_config.as_object(), prev.as_ref())
                .expect("plugin index in range");
            let binary = self.nodes[i].cni_bin.join(&plugin_type);
            let out = self.exec_plugin(i, &binary, command, container, netns, "eth0", args, &stdin.to_string());
            let failed = out.code != 0;
            if command == "ADD" && !failed {
                prev = Some(out.json());
            }
            outputs.push((plugin_type, out));
            if command == "ADD" && failed {
                break;
            }
        }
        (version, outputs)
    }

    /// Creates pod `name` on node `i` in the API (labels `app=<app>`), its sandbox, and
    /// runs ADD; panics (with diagnostics) if ADD fails.
    pub fn add_pod(&mut self, name: &str, i: usize, app: &str) -> Pod {
        self.add_pod_in_version(name, i, app, "1.1.0")
    }

    /// [`Cluster::add_pod`] with the plugin configuration in CNI `version`.
    pub fn add_pod_in_version(&mut self, name: &str, i: usize, app: &str, version: &str) -> Pod {
        let created = self
            .api
            .insert(
                Kind::Pod,
                json!({"metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
                       "spec": {"nodeName": self.nodes[i].name,
                                "containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 8080}]}]}}),
            )
            .expect("pod created");
        let uid = created["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
        let ns = self.namespace(&format!("p-{name}"));
        let container = format!("ctr-{name}-{}", self.prefix);
        let out = self.cni_raw(
            i,
            "ADD",
            &container,
            &format!("/run/netns/{ns}"),
            "eth0",
            &Self::cni_args(name, &container, &uid),
            Some(&self.plugin_conf(i, version).to_string()),
        );
        if out.code != 0 {
            self.fail(&format!("ADD of {name} failed: {out:?}"));
        }
        let result = out.json();
        let ip =
            result["ips"][0]["address"].as_str().unwrap_or_default().split('/').next().unwrap_or_default().to_owned();
        Pod { name: name.to_owned(), node: i, ns, container, result, ip }
    }

    /// Creates pod `name` on node `i` in the API with `labels` and container `ports`
    /// (`[{"name": "http", "containerPort": 8080}]`), its sandbox, and runs ADD; panics
    /// (with diagnostics) if ADD fails.
    pub fn add_pod_with(&mut self, name: &str, i: usize, labels: Value, ports: Value) -> Pod {
        let created = self
            .api
            .insert(
                Kind::Pod,
                json!({"metadata": {"name": name, "namespace": "default", "labels": labels},
                       "spec": {"nodeName": self.nodes[i].name,
                                "containers": [{"name": "c", "image": "x", "ports": ports}]}}),
            )
            .expect("pod created");
        let uid = created["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
        let ns = self.namespace(&format!("p-{name}"));
        let container = format!("ctr-{name}-{}", self.prefix);
        let args = Self::cni_args(name, &container, &uid);
        let out = self.cni_raw(i, "ADD", &container, &format!("/run/netns/{ns}"), "eth0", &args, None);
        if out.code != 0 {
            self.fail(&format!("ADD of {name} failed: {out:?}"));
        }
        let result = out.json();
        let ip =
            result["ips"][0]["address"].as_str().unwrap_or_default().split('/').next().unwrap_or_default().to_owned();
        Pod { name: name.to_owned(), node: i, ns, container, result, ip }
    }

    /// Replaces pod `name`'s labels in the API (the pod and its sandbox stay).
    pub fn relabel_pod(&self, name: &str, labels: Value) {
        let mut pod = self.api.get(Kind::Pod, Some("default"), name).expect("pod exists");
        pod["metadata"]["labels"] = labels;
        self.api.insert(Kind::Pod, pod).expect("pod updated");
    }

    /// Deletes an object.
    pub fn delete(&self, kind: Kind, namespace: Option<&str>, name: &str) {
        self.api.delete(kind, namespace, name).expect("object deleted");
    }

    /// The pod's `skein.dev/pod-networks` annotation.
    pub fn pod_annotation(&self, name: &str) -> Value {
        let pod = self.api.get(Kind::Pod, Some("default"), name).expect("pod exists");
        let text = pod["metadata"]["annotations"]["skein.dev/pod-networks"].as_str().expect("annotated").to_owned();
        serde_json::from_str::<Value>(&text).expect("annotation JSON")["default"].clone()
    }

    /// Inserts an object.
    pub fn insert(&self, kind: Kind, object: Value) {
        self.api.insert(kind, object).expect("object created");
    }

    /// The agent's log of node `i`.
    pub fn agent_log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    /// The process id of node `i`'s datapath process, while one runs.
    pub fn datapath_pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].datapath.as_ref().map(Child::id)
    }

    /// Node `i`'s datapath processes' log (every process started, in order).
    pub fn datapath_log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].dp_log).unwrap_or_default()
    }

    /// Panics with `message` and the agents' logs and flows.
    pub fn fail(&self, message: &str) -> ! {
        let mut out = format!("{message}\n");
        for (i, n) in self.nodes.iter().enumerate() {
            let log = self.agent_log(i);
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            let stats =
                try_run(&[AGENT, "stats", "--state-dir", n.state.to_str().unwrap_or_default()]).unwrap_or_else(|e| e);
            out.push_str(&format!("--- agent {} stats ---\n{stats}\n", n.name));
            if std::env::var("SKEIN_TEST_DUMP_FLOWS").is_ok() {
                let flows = try_run(&[AGENT, "dump-flows", "--state-dir", n.state.to_str().unwrap_or_default()])
                    .unwrap_or_else(|e| e);
                let _ = std::fs::write(format!("/tmp/skein-flows-{}.txt", n.name), flows);
            }
            out.push_str(&format!("--- agent {} log (last 60 lines) ---\n", n.name));
            for l in tail.iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
            let dp_log = std::fs::read_to_string(&n.dp_log).unwrap_or_default();
            let dp_tail: Vec<&str> = dp_log.lines().rev().take(20).collect();
            out.push_str(&format!("--- datapath {} log (last 20 lines) ---\n", n.name));
            for l in dp_tail.iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        if let Some(secs) = std::env::var("SKEIN_TEST_PAUSE").ok().and_then(|v| v.parse::<u64>().ok()) {
            eprintln!("{out}\npaused for {secs} s (SKEIN_TEST_PAUSE) before tearing down");
            std::thread::sleep(Duration::from_secs(secs));
        }
        panic!("{out}");
    }

    /// Polls `done` every 50 ms for at most `timeout`; fails with `what` otherwise.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !done() {
            if Instant::now() > deadline {
                self.fail(&format!("timed out after {timeout:?} waiting for {what}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `name=value` lines of the agent's `stats` subcommand.
    pub fn stats(&self, i: usize) -> HashMap<String, String> {
        let out = try_run(&[AGENT, "stats", "--state-dir", self.nodes[i].state.to_str().unwrap_or_default()])
            .unwrap_or_default();
        out.split_whitespace().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Ok(dir) = std::env::var("SKEIN_TEST_KEEP_LOGS") {
            let _ = std::fs::create_dir_all(&dir);
            for n in &self.nodes {
                let _ = std::fs::copy(&n.log, Path::new(&dir).join(format!("{}-{}.log", self.prefix, n.name)));
                let _ = std::fs::copy(&n.dp_log, Path::new(&dir).join(format!("{}-{}-dp.log", self.prefix, n.name)));
            }
        }
        for i in 0..self.nodes.len() {
            if let Some(mut child) = self.nodes[i].agent.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            if let Some(mut child) = self.nodes[i].datapath.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.stop_master();
        for ns in self.namespaces.iter().rev() {
            let _ = try_run(&["ip", "netns", "del", ns]);
        }
        let _ = try_run(&["ip", "link", "del", &self.bridge]);
        for n in &self.nodes {
            // The agent's uplink rules live in the node namespace, which is gone.
            let _ = std::fs::remove_dir_all(&n.state);
        }
    }
}
