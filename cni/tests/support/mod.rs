//! Test support for driving the real `skein-cni` binary: network namespaces that clean up
//! after themselves, a fake node agent on a Unix socket, and a small libcni-like chain runner.

#![allow(dead_code)]

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::{Map, Value, json};
use skein_cni::agent_protocol::{
    AddResult, AgentCommand, AgentRequest, AgentResponse, InterfaceConfig, RouteConfig, StatusResult, read_message,
    write_message,
};
use skein_cni::config::ConfList;

/// The plugin under test.
pub const PLUGIN: &str = env!("CARGO_BIN_EXE_skein-cni");
/// Where Debian's containernetworking-plugins live.
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

#[path = "../../../datapath/tests/netns/command.rs"]
mod command;

/// Whether namespace tests can run: true as root; otherwise false when
/// `SKEIN_SKIP_NETNS_TESTS=1`, else the test fails saying why.
pub fn netns_tests_enabled() -> bool {
    command::root_or_skip("the CNI plugin's namespace tests", "network namespaces")
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name unique to this process and call: `<tag><pid>x<n>`, short enough for interfaces.
pub fn unique(tag: &str) -> String {
    format!("{tag}{}x{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip").args(args).output().expect("running ip (iproute2 must be installed)")
}

/// Runs `ip` and returns its stdout, failing the test on a non-zero exit.
pub fn ip_ok(args: &[&str]) -> String {
    let out = ip(args);
    assert!(out.status.success(), "ip {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace, deleted (with every link in it) on drop.
pub struct Netns {
    /// Its name under /var/run/netns.
    pub name: String,
}

impl Netns {
    /// Creates a namespace with a unique name starting with `tag`, loopback up.
    pub fn new(tag: &str) -> Netns {
        let name = unique(tag);
        ip_ok(&["netns", "add", &name]);
        let ns = Netns { name };
        ip_ok(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// Its path, as `CNI_NETNS`.
    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// `ip -j` output inside the namespace, parsed.
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["-n", &self.name, "-j"];
        full.extend_from_slice(args);
        let text = ip_ok(&full);
        serde_json::from_str(if text.trim().is_empty() { "[]" } else { &text }).expect("ip -j output is JSON")
    }

    /// Whether a link of that name exists in the namespace.
    pub fn has_link(&self, name: &str) -> bool {
        ip(&["-n", &self.name, "link", "show", "dev", name]).status.success()
    }

    /// Names of the links in the namespace.
    pub fn link_names(&self) -> Vec<String> {
        self.ip_json(&["link", "show"])
            .as_array()
            .map(|a| a.iter().filter_map(|l| l["ifname"].as_str().map(String::from)).collect())
            .unwrap_or_default()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

type Responder = dyn Fn(&AgentRequest) -> AgentResponse + Send + Sync;

/// A fake node agent: a Unix socket speaking the agent protocol with a scripted answer.
pub struct FakeAgent {
    /// The socket path (for `agentSocket`).
    pub socket: PathBuf,
    /// Every request received.
    pub requests: Arc<Mutex<Vec<AgentRequest>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl FakeAgent {
    /// Starts an agent answering with `respond`.
    pub fn start(respond: impl Fn(&AgentRequest) -> AgentResponse + Send + Sync + 'static) -> FakeAgent {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("cni.sock");
        let listener = UnixListener::bind(&socket).expect("bind fake agent socket");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let respond: Arc<Responder> = Arc::new(respond);
        let thread = {
            let (requests, stop) = (requests.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(mut conn) = conn else { continue };
                    let Ok(request) = read_message::<AgentRequest>(&mut conn) else { continue };
                    let answer = respond(&request);
                    requests.lock().unwrap().push(request);
                    let _ = write_message(&mut conn, &answer);
                }
            })
        };
        FakeAgent { socket, requests, stop, thread: Some(thread), _dir: dir }
    }

    /// An agent that answers ADD with `ip` (a /24 with gateway .1), STATUS ready, the rest done.
    pub fn with_address(ip: &str) -> FakeAgent {
        let ip = ip.to_string();
        FakeAgent::start(move |req| match req.command {
            AgentCommand::Add => AgentResponse::Ok(add_result(&ip)),
            AgentCommand::Status => AgentResponse::Status(StatusResult { ready: true, message: String::new() }),
            _ => AgentResponse::Done,
        })
    }

    /// The commands received so far.
    pub fn commands(&self) -> Vec<AgentCommand> {
        self.requests.lock().unwrap().iter().map(|r| r.command).collect()
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = std::os::unix::net::UnixStream::connect(&self.socket);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The MAC Skein derives from an IPv4 address: `0a:58:` + the four bytes.
pub fn mac_for(ip: &str) -> String {
    let octets: Vec<u8> = ip.split('.').map(|o| o.parse().unwrap()).collect();
    format!("0a:58:{:02x}:{:02x}:{:02x}:{:02x}", octets[0], octets[1], octets[2], octets[3])
}

/// An ADD answer for `ip`/24: gateway .1, a default route and a service-CIDR route, MTU 1400.
pub fn add_result(ip: &str) -> AddResult {
    let gw = format!("{}.1", ip.rsplit_once('.').unwrap().0);
    AddResult {
        interface: InterfaceConfig {
            mac: mac_for(ip),
            ips: vec![format!("{ip}/24")],
            gateways: vec![gw.clone()],
            routes: vec![
                RouteConfig { dst: "0.0.0.0/0".into(), gw: Some(gw.clone()) },
                RouteConfig { dst: "10.96.0.0/12".into(), gw: Some(gw) },
            ],
            mtu: 1400,
        },
    }
}

/// What one plugin run produced.
#[derive(Debug)]
pub struct Run {
    /// Exit status code.
    pub code: i32,
    /// Stdout.
    pub stdout: String,
    /// Stderr.
    pub stderr: String,
}

impl Run {
    /// Stdout as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// Asserts success and returns the JSON result.
    pub fn ok_json(&self) -> Value {
        assert_eq!(self.code, 0, "plugin failed: {self:?}");
        self.json()
    }

    /// Asserts failure with `code` and returns the error JSON.
    pub fn err(&self, code: u64) -> Value {
        assert_ne!(self.code, 0, "plugin succeeded unexpectedly: {self:?}");
        let v = self.json();
        assert_eq!(v["code"].as_u64(), Some(code), "wrong error code: {self:?}");
        assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "error without msg: {self:?}");
        v
    }
}

/// Runs a plugin binary inside `node`'s namespace (the node's network, as a runtime on that
/// node would) with the CNI environment and stdin.
pub fn run_binary(binary: &str, node: &Netns, env: &[(&str, String)], stdin: &[u8]) -> Run {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &node.name, binary]);
    for key in ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH"] {
        cmd.env_remove(key);
    }
    cmd.env("CNI_PATH", REFERENCE_PLUGINS);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn plugin");
    child.stdin.take().unwrap().write_all(stdin).expect("write stdin");
    let out = child.wait_with_output().expect("wait for plugin");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// One pod attachment as a runtime sees it.
pub struct Attachment<'a> {
    /// The node namespace the plugin runs in.
    pub node: &'a Netns,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS` (None for a DEL without one).
    pub netns: Option<String>,
    /// `CNI_IFNAME`.
    pub ifname: String,
}

impl Attachment<'_> {
    /// The CNI environment for `command`, with containerd's `CNI_ARGS` (in its map order).
    pub fn env(&self, command: &str) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("CNI_COMMAND", command.to_string()),
            ("CNI_CONTAINERID", self.container_id.clone()),
            ("CNI_IFNAME", self.ifname.clone()),
            (
                "CNI_ARGS",
                format!(
                    "K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID=uid-{};IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-{}",
                    self.container_id, self.container_id, self.container_id
                ),
            ),
        ];
        if let Some(ns) = &self.netns {
            env.push(("CNI_NETNS", ns.clone()));
        }
        env
    }

    /// Runs skein-cni alone with `conf` as stdin.
    pub fn run(&self, command: &str, conf: &Value) -> Run {
        run_binary(PLUGIN, self.node, &self.env(command), conf.to_string().as_bytes())
    }
}

/// A plain skein-cni config for `agent`.
pub fn skein_conf(version: &str, agent: &FakeAgent) -> Value {
    json!({"cniVersion": version, "name": "skein", "type": "skein-cni",
        "agentSocket": agent.socket.to_str().unwrap(), "timeoutSeconds": 20})
}

/// The binary for a plugin `type`.
fn binary_for(plugin_type: &str) -> String {
    if plugin_type == "skein-cni" { PLUGIN.to_string() } else { format!("{REFERENCE_PLUGINS}/{plugin_type}") }
}

/// Runs a conflist the way libcni does. ADD: each plugin in order, with `name`,
/// `cniVersion`, the declared `runtimeConfig` entries and the previous plugin's result as
/// `prevResult`; returns the last result. DEL/CHECK: `prev_result` (the cached ADD result)
/// given to every plugin, DEL in reverse order. Stops at the first failure and returns it.
pub fn run_chain(
    list: &ConfList,
    version: &str,
    command: &str,
    attachment: &Attachment<'_>,
    runtime_config: &Map<String, Value>,
    prev_result: Option<&Value>,
) -> Result<Option<Value>, Run> {
    let env = attachment.env(command);
    let order: Vec<usize> =
        if command == "DEL" { (0..list.plugins.len()).rev().collect() } else { (0..list.plugins.len()).collect() };
    let mut prev = prev_result.cloned();
    for index in order {
        let conf = list.plugin_config(index, version, Some(runtime_config), prev.as_ref()).expect("plugin index");
        let plugin_type = conf["type"].as_str().unwrap().to_string();
        let run = run_binary(&binary_for(&plugin_type), attachment.node, &env, conf.to_string().as_bytes());
        if run.code != 0 {
            return Err(run);
        }
        if command == "ADD" {
            prev = Some(run.json());
        }
    }
    Ok(if command == "ADD" { prev } else { None })
}

/// Runs one plugin of a conflist (as [`run_chain`] would at that position).
pub fn run_chain_plugin(
    list: &ConfList,
    index: usize,
    version: &str,
    command: &str,
    attachment: &Attachment<'_>,
    runtime_config: &Map<String, Value>,
    prev_result: Option<&Value>,
) -> Run {
    let conf = list.plugin_config(index, version, Some(runtime_config), prev_result).expect("plugin index");
    let binary = binary_for(conf["type"].as_str().unwrap());
    run_binary(&binary, attachment.node, &attachment.env(command), conf.to_string().as_bytes())
}

/// Whether a reference plugin is installed.
pub fn reference_plugin_available(name: &str) -> bool {
    Path::new(REFERENCE_PLUGINS).join(name).exists()
}
