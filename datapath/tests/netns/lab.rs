//! One test's lab: network namespaces for nodes and pods wired with veth pairs, `skein-dp`
//! switches running inside node namespaces, and a teardown that removes all of it (switches
//! killed, links and namespaces deleted) when the test ends, panicking or not.
//!
//! Every failure goes through [`Lab::fail`], whose panic message carries the switches'
//! stats, flows and logs and every namespace's addresses, so a CI failure can be read
//! without rerunning it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "command.rs"]
mod command;
pub use command::{try_exec, try_ping, try_run};

/// The switch binary under test.
const SKEIN_DP: &str = env!("CARGO_BIN_EXE_skein-dp");

/// Bound on a switch opening its ports and control socket.
const SWITCH_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Linux limit on interface names (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

/// A pod to create: its namespace gets `eth0`, the peer of a veth whose host end is in
/// the node namespace.
pub struct PodConfig<'a> {
    name: &'a str,
    mac: &'a str,
    cidr: &'a str,
    gateway: Option<&'a str>,
    mtu: u32,
}

impl<'a> PodConfig<'a> {
    /// Pod `name` (unique in the test, at most 6 characters: it names the host end too)
    /// with eth0's MAC and address with prefix length (`10.1.0.2/24`); MTU 1500, no
    /// default route.
    pub fn new(name: &'a str, mac: &'a str, cidr: &'a str) -> PodConfig<'a> {
        PodConfig { name, mac, cidr, gateway: None, mtu: 1500 }
    }

    /// A default route through `gateway`.
    pub fn gateway(self, gateway: &'a str) -> PodConfig<'a> {
        PodConfig { gateway: Some(gateway), ..self }
    }

    /// The MTU of both ends of the veth.
    pub fn mtu(self, mtu: u32) -> PodConfig<'a> {
        PodConfig { mtu, ..self }
    }
}

/// A pod that exists.
#[derive(Clone, Debug)]
pub struct Pod {
    /// Its network namespace.
    pub ns: String,
    /// The veth host end, in the node namespace (a switch port).
    pub host_if: String,
    /// MAC address of its eth0.
    pub mac: String,
    /// Its IPv4 address (no prefix length).
    pub ip: String,
}

/// A running switch, as the test talks to it.
#[derive(Clone, Debug)]
pub struct Dp {
    /// Name in messages and file names.
    pub name: String,
    control: PathBuf,
    log: PathBuf,
    dir: PathBuf,
}

struct RunningSwitch {
    dp: Dp,
    child: RefCell<Child>,
}

/// Everything one test created; dropping it tears it down.
pub struct Lab {
    test: String,
    prefix: String,
    dir: tempfile::TempDir,
    namespaces: Vec<String>,
    /// (namespace, interface) of veths created, deleted before their namespaces.
    links: Vec<(String, String)>,
    switches: Vec<RunningSwitch>,
    /// Whether the diagnostics are already in a panic message.
    reported: Cell<bool>,
}

impl Lab {
    /// A new, empty lab for `test`, whose names start with `sk<pid % 1000><tag>` so that
    /// tests running in parallel (and other processes) do not collide. `None` if the test
    /// is to be skipped: not root and SKEIN_SKIP_NETNS_TESTS=1. Not root otherwise is a
    /// failure: CI runs these tests as root and must never skip them silently.
    pub fn new(test: &str, tag: &str) -> Option<Lab> {
        if !command::root_or_skip(test, "network namespaces, veth pairs and skein-dp on them") {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("skein-{test}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("{test}: cannot create a temporary directory: {e}"));
        Some(Lab {
            test: test.to_string(),
            prefix: format!("sk{:03}{tag}", std::process::id() % 1000),
            dir,
            namespaces: Vec::new(),
            links: Vec::new(),
            switches: Vec::new(),
            reported: Cell::new(false),
        })
    }

    /// Creates network namespace `<prefix>-<name>` with its loopback up.
    pub fn namespace(&mut self, name: &str) -> String {
        let ns = format!("{}-{name}", self.prefix);
        if Path::new("/run/netns").join(&ns).exists() {
            // Left by a killed run of a process with the same pid % 1000.
            let _ = try_run(&["ip", "netns", "del", &ns]);
        }
        self.run(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        self.run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    /// Creates a pod namespace wired to `node`: a veth whose host end (IPv6 off, so it sends
    /// nothing of its own) stays in `node`, and whose other end is the pod's eth0.
    pub fn pod(&mut self, node: &str, cfg: PodConfig<'_>) -> Pod {
        let ns = self.namespace(cfg.name);
        let host_if = self.ifname(cfg.name);
        self.run(&["ip", "-n", node, "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
        self.links.push((node.to_string(), host_if.clone()));
        self.host_end_up(node, &host_if, cfg.mtu);
        let mtu = cfg.mtu.to_string();
        self.run(&["ip", "-n", &ns, "link", "set", "eth0", "address", cfg.mac, "mtu", &mtu, "up"]);
        self.run(&["ip", "-n", &ns, "addr", "add", cfg.cidr, "dev", "eth0"]);
        if let Some(gw) = cfg.gateway {
            self.run(&["ip", "-n", &ns, "route", "add", "default", "via", gw, "dev", "eth0"]);
        }
        let ip = cfg.cidr.split('/').next().unwrap_or(cfg.cidr).to_string();
        Pod { ns, host_if, mac: cfg.mac.to_string(), ip }
    }

    /// Joins two node namespaces with an underlay veth (the same name on both sides),
    /// addressed `cidr_a` and `cidr_b`, MTU 1500.
    pub fn underlay(&mut self, node_a: &str, cidr_a: &str, node_b: &str, cidr_b: &str) -> String {
        let name = self.ifname("u");
        self.run(&["ip", "-n", node_a, "link", "add", &name, "type", "veth", "peer", "name", &name, "netns", node_b]);
        self.links.push((node_a.to_string(), name.clone()));
        for (node, cidr) in [(node_a, cidr_a), (node_b, cidr_b)] {
            self.host_end_up(node, &name, 1500);
            self.run(&["ip", "-n", node, "addr", "add", cidr, "dev", &name]);
        }
        name
    }

    fn ifname(&self, suffix: &str) -> String {
        let name = format!("{}{suffix}", self.prefix);
        assert!(name.len() <= IFNAME_MAX, "interface name {name:?} is longer than {IFNAME_MAX} characters");
        name
    }

    fn host_end_up(&self, node: &str, ifname: &str, mtu: u32) {
        self.exec(node, &["sysctl", "-q", "-w", &format!("net.ipv6.conf.{ifname}.disable_ipv6=1")]);
        self.run(&["ip", "-n", node, "link", "set", ifname, "mtu", &mtu.to_string(), "up"]);
    }

    /// Starts `skein-dp run` inside `node` with `flows`, interface ports `(number, ifname)`
    /// and Geneve ports `(number, local IP)`, and waits until its control socket answers.
    pub fn start_switch(
        &mut self,
        node: &str,
        name: &str,
        flows: &str,
        ports: &[(u32, &str)],
        geneve: &[(u32, &str)],
    ) -> Dp {
        let dir = self.dir.path().to_path_buf();
        let flow_file = dir.join(format!("{name}.flows"));
        let dp = Dp {
            name: name.to_string(),
            control: dir.join(format!("{name}.sock")),
            log: dir.join(format!("{name}.log")),
            dir,
        };
        if let Err(e) = std::fs::write(&flow_file, flows) {
            self.fail(&format!("write {}: {e}", flow_file.display()));
        }
        let log = File::create(&dp.log).and_then(|f| Ok((f.try_clone()?, f)));
        let (stdout, stderr) = log.unwrap_or_else(|e| self.fail(&format!("create {}: {e}", dp.log.display())));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", node, SKEIN_DP, "run", "--flows"]).arg(&flow_file).arg("--control").arg(&dp.control);
        for (n, ifname) in ports {
            cmd.arg("--port").arg(format!("{n}={ifname}"));
        }
        for (n, ip) in geneve {
            cmd.arg("--geneve").arg(format!("{n}={ip}"));
        }
        // `ip netns exec` execs the command, so the child is skein-dp itself.
        let child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| self.fail(&format!("spawn {SKEIN_DP}: {e}")));
        self.switches.push(RunningSwitch { dp: dp.clone(), child: RefCell::new(child) });
        let what = format!("switch {name} to open its control socket");
        self.wait_for(&what, SWITCH_START_TIMEOUT, || {
            if let Ok(Some(status)) = self.switches.last().map_or(Ok(None), |s| s.child.borrow_mut().try_wait()) {
                self.fail(&format!("switch {name} exited during start-up ({status})"));
            }
            UnixStream::connect(&dp.control).is_ok()
        });
        dp
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to a switch's process.
    pub fn signal(&self, dp: &Dp, signal: &str) {
        let Some(s) = self.switches.iter().find(|s| s.dp.name == dp.name) else {
            self.fail(&format!("no switch {}", dp.name))
        };
        let pid = s.child.borrow().id().to_string();
        self.run(&["kill", &format!("-{signal}"), &pid]);
    }

    /// `skein-dp ARGS --control SOCK` of a switch: its output, or the error it printed.
    pub fn try_ctl(&self, dp: &Dp, args: &[&str]) -> Result<String, String> {
        let control = dp.control.to_string_lossy();
        let mut all = vec![SKEIN_DP];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--control", &control]);
        try_run(&all)
    }

    /// Like [`Lab::try_ctl`], failing the test on an error.
    pub fn ctl(&self, dp: &Dp, args: &[&str]) -> String {
        self.try_ctl(dp, args).unwrap_or_else(|e| self.fail(&e))
    }

    /// Writes `text` to a file named `file` and asks the switch to reload it.
    pub fn reload(&self, dp: &Dp, file: &str, text: &str) -> Result<String, String> {
        let path = dp.dir.join(file);
        std::fs::write(&path, text).unwrap_or_else(|e| self.fail(&format!("write {}: {e}", path.display())));
        self.try_ctl(dp, &["reload", &path.to_string_lossy()])
    }

    /// The switch's numeric counters (`port_1_rx` and so on).
    pub fn stats(&self, dp: &Dp) -> HashMap<String, u64> {
        let text = self.ctl(dp, &["stats"]);
        text.split_whitespace()
            .filter_map(|t| t.split_once('='))
            .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
            .collect()
    }

    /// One counter of the switch; a counter it does not report fails the test.
    pub fn stat(&self, dp: &Dp, name: &str) -> u64 {
        let stats = self.stats(dp);
        stats.get(name).copied().unwrap_or_else(|| self.fail(&format!("switch {} reports no counter {name}", dp.name)))
    }

    /// Runs a command (bounded by [`command::COMMAND_TIMEOUT`]); its stdout, or the test fails.
    pub fn run(&self, args: &[&str]) -> String {
        try_run(args).unwrap_or_else(|e| self.fail(&e))
    }

    /// Runs a command inside namespace `ns`; its stdout, or the test fails.
    pub fn exec(&self, ns: &str, args: &[&str]) -> String {
        try_exec(ns, args).unwrap_or_else(|e| self.fail(&e))
    }

    /// Pings `to` from namespace `from`: `count` echo requests, every one answered, or the
    /// test fails. Returns ping's output.
    pub fn ping(&self, from: &str, to: &str, count: u32) -> String {
        try_ping(from, to, count, 15).unwrap_or_else(|e| self.fail(&e))
    }

    /// Fails the test unless `ok`.
    pub fn ensure(&self, ok: bool, message: impl FnOnce() -> String) {
        if !ok {
            self.fail(&message());
        }
    }

    /// Polls `done` until it returns true; fails the test after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !done() {
            if Instant::now() > deadline {
                self.fail(&format!("timed out after {timeout:?} waiting for {what}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Fails the test: panics with `message` and the lab's diagnostics.
    pub fn fail(&self, message: &str) -> ! {
        self.reported.set(true);
        panic!("{}: {message}\n\n{}", self.test, self.diagnostics());
    }

    /// What a person needs to see to understand a failure: every switch's state, counters,
    /// flows and log, and every namespace's addresses and neighbours.
    pub fn diagnostics(&self) -> String {
        let mut out = format!("===== diagnostics of {} (lab {}) =====\n", self.test, self.prefix);
        for s in &self.switches {
            let dp = &s.dp;
            let state = match s.child.borrow_mut().try_wait() {
                Ok(None) => "running".to_string(),
                Ok(Some(status)) => format!("EXITED ({status})"),
                Err(e) => format!("unknown ({e})"),
            };
            let _ = writeln!(out, "--- switch {} ({state}) ---", dp.name);
            for request in ["stats", "dump-flows"] {
                let reply = self.try_ctl(dp, &[request]).unwrap_or_else(|e| format!("({e})\n"));
                let _ = write!(out, "$ skein-dp {request}\n{reply}");
            }
            let log = std::fs::read_to_string(&dp.log).unwrap_or_else(|e| format!("({e})"));
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            let _ =
                writeln!(out, "$ tail of the skein-dp log\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        for ns in &self.namespaces {
            for what in ["addr", "neigh"] {
                let reply = try_run(&["ip", "-n", ns, what]).unwrap_or_else(|e| format!("({e})\n"));
                let _ = write!(out, "$ ip -n {ns} {what}\n{reply}");
            }
        }
        out
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.reported.get() {
            eprintln!("{}", self.diagnostics());
        }
        for s in &self.switches {
            let mut child = s.child.borrow_mut();
            let _ = child.kill();
            let _ = child.wait();
        }
        for (ns, link) in self.links.iter().rev() {
            // Deleting one end of a veth deletes both; the namespace's deletion would too.
            let _ = try_run(&["ip", "-n", ns, "link", "del", link]);
        }
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = try_run(&["ip", "netns", "del", ns]) {
                eprintln!("{}: teardown: {e}", self.test);
            }
        }
    }
}
