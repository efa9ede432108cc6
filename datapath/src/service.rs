//! The datapath process's control service: what a node agent asks the long-lived switch
//! process (`skein-dp run`) over its control socket, so that forwarding, ports and
//! conntrack outlive the agent (as `ovs-vswitchd` outlives `ovn-controller`).
//!
//! On top of [`Control`]'s requests (`reload`, the dumps, `stats`, `trace`) it answers:
//!
//! | request | answer |
//! |---|---|
//! | `hello` | `boot_id=.. pid=.. version=..`: which run of the process this is |
//! | `watch` | the same, then the connection stays open until the process exits: a peer learns of the exit by end-of-file at once |
//! | `add-port SPEC` | `added`, or `kept` when the same port is there already (a restarted agent re-adds what it had) |
//! | `remove-port N` | `removed` or `absent` |
//! | `ports` | one `SPEC` per line |
//! | `installed` | the installed flow file (what `reload` and `update-flows` made) |
//! | `update-flows` + body | the body's `+FLOW` lines added, `-table=T,priority=P,MATCH` lines removed, in one step |
//! | `set-audit PER_SECOND BURST CAPACITY` | `ok`: the rate of the `log` actions' audit records |
//! | `set-conntrack max_connections=N early_drop=on\|off nat_attempts=N` | `ok`: conntrack's table-wide limits (the connections it holds stay) |
//! | `take-audit` | `suppressed=N`, then one record a line: `ID TIME IN_PORT SRC DST PROTO SPORT DPORT` (`-` for an address of a frame that is not IP) |
//!
//! `SPEC` is `interface N IFNAME`, `uplink N IFNAME [filter=NODE_IP,LO-HI,LO-HI]` or
//! `geneve N IP:PORT`. Requests are parsed by [`parse_request`] (untrusted input: an error
//! names what is wrong; fuzzed) and carried one per connection, as [`Control`]'s are.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::audit::{AuditBatch, AuditConfig, AuditRecord};
use crate::conntrack::CtTableLimits;
use crate::control::{Control, ControlError, ReloadReport};
use crate::flow::{Flow, Match};
use crate::flowtext::{self, FlowFile};
use crate::io::{PortSpec, Switch, UplinkFilter};

/// A request of the service's own (the rest goes to [`Control::handle`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `hello`.
    Hello,
    /// `watch`.
    Watch,
    /// `add-port SPEC`.
    AddPort(PortSpec),
    /// `remove-port N`.
    RemovePort(u32),
    /// `ports`.
    Ports,
    /// `installed`.
    Installed,
    /// `update-flows`: flows to add (or replace), (table, priority, match) to remove.
    UpdateFlows {
        /// Flows to add or replace.
        add: Vec<Flow>,
        /// Flows to remove.
        remove: Vec<(u8, u16, Match)>,
    },
    /// `set-audit PER_SECOND BURST CAPACITY`.
    SetAudit(AuditConfig),
    /// `take-audit`.
    TakeAudit,
    /// `set-conntrack max_connections=N early_drop=on|off nat_attempts=N`.
    SetConntrack(CtTableLimits),
    /// Anything else: a [`Control`] request (`reload`, dumps, `stats`, `trace`).
    Control(String),
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request did not parse; the message names the part.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A port could not be opened or is another port's number.
    #[error("{0}")]
    Port(#[from] crate::io::PortError),
    /// The flow request was refused (syntax or pipeline).
    #[error("{0}")]
    Control(#[from] ControlError),
}

/// The text form of a port: `interface N IFNAME`, `uplink N IFNAME [filter=..]`,
/// `geneve N IP:PORT`.
pub fn format_port_spec(spec: &PortSpec) -> String {
    match spec {
        PortSpec::Interface { number, name } => format!("interface {number} {name}"),
        PortSpec::Uplink { number, name, filter: None } => format!("uplink {number} {name}"),
        PortSpec::Uplink { number, name, filter: Some(f) } => {
            let [(a, b), (c, d)] = f.port_ranges;
            format!("uplink {number} {name} filter={},{a}-{b},{c}-{d}", f.node_ip)
        }
        PortSpec::Geneve { number, local } => format!("geneve {number} {local}"),
    }
}

/// Reads a port in the form [`format_port_spec`] writes.
pub fn parse_port_spec(text: &str) -> Result<PortSpec, String> {
    let words: Vec<&str> = text.split_ascii_whitespace().collect();
    let (kind, number, rest) = match words.as_slice() {
        [kind, number, rest @ ..] => (*kind, *number, rest),
        _ => return Err(format!("port {text:?}: expected KIND NUMBER ...")),
    };
    let number: u32 = number.parse().map_err(|_| format!("port {text:?}: {number:?} is not a port number"))?;
    let ifname = |name: &str| -> Result<String, String> {
        // The kernel's rule (dev_valid_name): 1–15 bytes, no '/', no whitespace, not . or ..
        if name.is_empty() || name.len() > 15 || name.contains('/') || name == "." || name == ".." {
            return Err(format!("port {text:?}: {name:?} is not an interface name"));
        }
        Ok(name.to_owned())
    };
    match (kind, rest) {
        ("interface", [name]) => Ok(PortSpec::Interface { number, name: ifname(name)? }),
        ("uplink", [name]) => Ok(PortSpec::Uplink { number, name: ifname(name)?, filter: None }),
        ("uplink", [name, filter]) => {
            let filter = filter
                .strip_prefix("filter=")
                .ok_or_else(|| format!("port {text:?}: expected filter=NODE_IP,LO-HI,LO-HI, got {filter:?}"))?;
            Ok(PortSpec::Uplink { number, name: ifname(name)?, filter: Some(parse_filter(filter)?) })
        }
        ("geneve", [local]) => {
            let local: SocketAddrV4 =
                local.parse().map_err(|_| format!("port {text:?}: {local:?} is not an IPv4 address:port"))?;
            Ok(PortSpec::Geneve { number, local })
        }
        ("interface" | "uplink" | "geneve", _) => Err(format!("port {text:?}: wrong number of words for {kind}")),
        _ => Err(format!("port {text:?}: unknown kind {kind:?} (interface, uplink, geneve)")),
    }
}

fn parse_filter(text: &str) -> Result<UplinkFilter, String> {
    let parts: Vec<&str> = text.split(',').collect();
    let [ip, a, b] = parts.as_slice() else {
        return Err(format!("filter {text:?}: expected NODE_IP,LO-HI,LO-HI"));
    };
    let node_ip: Ipv4Addr = ip.parse().map_err(|_| format!("filter {text:?}: {ip:?} is not an IPv4 address"))?;
    let range = |r: &str| -> Result<(u16, u16), String> {
        let (lo, hi) = r.split_once('-').ok_or_else(|| format!("filter {text:?}: {r:?} is not LO-HI"))?;
        let lo: u16 = lo.parse().map_err(|_| format!("filter {text:?}: {lo:?} is not a port"))?;
        let hi: u16 = hi.parse().map_err(|_| format!("filter {text:?}: {hi:?} is not a port"))?;
        if lo > hi {
            return Err(format!("filter {text:?}: range {r:?} is empty"));
        }
        Ok((lo, hi))
    };
    Ok(UplinkFilter { node_ip, port_ranges: [range(a)?, range(b)?] })
}

/// The body of an `update-flows` request.
pub fn format_update(add: &[Flow], remove: &[(u8, u16, Match)]) -> String {
    let mut out = String::new();
    for f in add {
        let _ = writeln!(out, "+{}", flowtext::format_flow(f));
    }
    for (table, priority, m) in remove {
        let m = flowtext::format_match(m);
        let sep = if m.is_empty() { "" } else { "," };
        let _ = writeln!(out, "-table={table},priority={priority}{sep}{m}");
    }
    out
}

fn parse_update(body: &str) -> Result<Request, String> {
    let (mut adds, mut removes) = (String::new(), String::new());
    for (i, line) in body.lines().enumerate() {
        if let Some(flow) = line.strip_prefix('+') {
            adds.push_str(flow);
        } else if let Some(key) = line.strip_prefix('-') {
            // A removal names a flow by table, priority and match: parsed as a flow.
            removes.push_str(key);
            removes.push_str(if key.is_empty() || key.ends_with(',') { "actions=drop" } else { ",actions=drop" });
        } else if line.trim().is_empty() {
            continue;
        } else {
            return Err(format!("update-flows line {}: expected +FLOW or -table=T,priority=P,MATCH", i + 1));
        }
        adds.push('\n');
        removes.push('\n');
    }
    // One line per body line in each, so that an error's line number is the body's.
    let add = flowtext::parse_flow_file(&adds).map_err(|e| format!("update-flows: {e}"))?;
    let remove = flowtext::parse_flow_file(&removes).map_err(|e| format!("update-flows: {e}"))?;
    if !add.groups.is_empty() || !add.load_balancers.is_empty() || !add.tunnels.is_empty() {
        return Err(
            "update-flows: only flows may be added (groups, load balancers and tunnels come with reload)".into()
        );
    }
    if !remove.groups.is_empty() || !remove.load_balancers.is_empty() || !remove.tunnels.is_empty() {
        return Err("update-flows: only flows may be removed".into());
    }
    Ok(Request::UpdateFlows {
        add: add.flows,
        remove: remove.flows.iter().map(|f| (f.table, f.priority, f.matches)).collect(),
    })
}

/// Reads a request: the command on the first line, a body after it.
pub fn parse_request(text: &str) -> Result<Request, String> {
    let (line, body) = text.split_once('\n').unwrap_or((text, ""));
    let line = line.trim();
    let (cmd, arg) = line.split_once(' ').unwrap_or((line, ""));
    let no_arg = |r: Request| if arg.trim().is_empty() { Ok(r) } else { Err(format!("{cmd} takes no argument")) };
    match cmd {
        "hello" => no_arg(Request::Hello),
        "watch" => no_arg(Request::Watch),
        "ports" => no_arg(Request::Ports),
        "installed" => no_arg(Request::Installed),
        "add-port" => parse_port_spec(arg).map(Request::AddPort),
        "remove-port" => {
            arg.trim().parse().map(Request::RemovePort).map_err(|_| format!("remove-port {arg:?}: not a port number"))
        }
        "take-audit" => no_arg(Request::TakeAudit),
        "set-audit" => {
            let n: Vec<&str> = arg.split_ascii_whitespace().collect();
            let number = |i: usize| -> Result<u64, String> {
                n.get(i)
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| format!("set-audit {arg:?}: expected PER_SECOND BURST CAPACITY"))
            };
            if n.len() != 3 {
                return Err(format!("set-audit {arg:?}: expected PER_SECOND BURST CAPACITY"));
            }
            let small = |v: u64| u32::try_from(v).map_err(|_| format!("set-audit {arg:?}: {v} is too large"));
            let capacity = number(2)?;
            if capacity > 1 << 20 {
                return Err(format!("set-audit {arg:?}: capacity {capacity} is over 1048576"));
            }
            Ok(Request::SetAudit(AuditConfig {
                per_second: small(number(0)?)?,
                burst: small(number(1)?)?,
                capacity: capacity as usize,
            }))
        }
        "set-conntrack" => parse_set_conntrack(arg).map(Request::SetConntrack),
        "update-flows" => {
            if !arg.trim().is_empty() {
                return Err("update-flows takes its flows in the body".into());
            }
            parse_update(body)
        }
        _ => Ok(Request::Control(text.to_owned())),
    }
}

/// The most NAT attempts `set-conntrack` takes (every port of an address).
pub const MAX_NAT_ATTEMPTS: u32 = 65_536;

/// The `set-conntrack` request of `limits`, as [`parse_request`] reads it back.
pub fn format_set_conntrack(limits: &CtTableLimits) -> String {
    format!(
        "set-conntrack max_connections={} early_drop={} nat_attempts={}",
        limits.max_connections,
        if limits.early_drop { "on" } else { "off" },
        limits.nat_attempts
    )
}

/// `max_connections=N early_drop=on|off nat_attempts=N`, each once, in any order.
fn parse_set_conntrack(arg: &str) -> Result<CtTableLimits, String> {
    let usage = "expected max_connections=N early_drop=on|off nat_attempts=N";
    let (mut max, mut early, mut attempts) = (None, None, None);
    for word in arg.split_ascii_whitespace() {
        let Some((name, value)) = word.split_once('=') else {
            return Err(format!("set-conntrack {word:?}: not name=value ({usage})"));
        };
        let bad = |why: &str| format!("set-conntrack {name}={value:?}: {why}");
        let slot_taken = match name {
            "max_connections" => {
                let n: usize = value.parse().map_err(|_| bad("not a number"))?;
                if n == 0 {
                    return Err(bad("must be at least 1"));
                }
                max.replace(n).is_some()
            }
            "early_drop" => {
                let on = match value {
                    "on" => true,
                    "off" => false,
                    _ => return Err(bad("expected on or off")),
                };
                early.replace(on).is_some()
            }
            "nat_attempts" => {
                let n: u32 = value.parse().map_err(|_| bad("not a number"))?;
                if !(1..=MAX_NAT_ATTEMPTS).contains(&n) {
                    return Err(bad(&format!("must be 1 to {MAX_NAT_ATTEMPTS}")));
                }
                attempts.replace(n).is_some()
            }
            _ => return Err(format!("set-conntrack: unknown parameter {name:?} ({usage})")),
        };
        if slot_taken {
            return Err(format!("set-conntrack: {name} given twice"));
        }
    }
    match (max, early, attempts) {
        (Some(max_connections), Some(early_drop), Some(nat_attempts)) => {
            Ok(CtTableLimits { max_connections, early_drop, nat_attempts })
        }
        _ => Err(format!("set-conntrack {arg:?}: {usage}")),
    }
}

/// The text of an audit batch (the answer to `take-audit`).
pub fn format_audit_batch(batch: &AuditBatch) -> String {
    let mut out = format!("suppressed={}\n", batch.suppressed);
    let addr = |a: Option<std::net::IpAddr>| a.map_or("-".to_owned(), |a| a.to_string());
    for r in &batch.records {
        let _ = writeln!(
            out,
            "{} {} {} {} {} {} {} {}",
            r.id,
            r.time,
            r.in_port,
            addr(r.src),
            addr(r.dst),
            r.proto,
            r.sport,
            r.dport
        );
    }
    out
}

/// Reads what [`format_audit_batch`] writes.
pub fn parse_audit_batch(text: &str) -> Result<AuditBatch, String> {
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    let suppressed = first
        .strip_prefix("suppressed=")
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| format!("audit batch: expected suppressed=N, got {first:?}"))?;
    let mut records = Vec::new();
    for (i, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad = || format!("audit record {}: {line:?}", i + 1);
        let w: Vec<&str> = line.split_ascii_whitespace().collect();
        let [id, time, in_port, src, dst, proto, sport, dport] = w.as_slice() else { return Err(bad()) };
        let addr = |a: &str| -> Result<Option<std::net::IpAddr>, String> {
            if a == "-" { Ok(None) } else { a.parse().map(Some).map_err(|_| bad()) }
        };
        records.push(AuditRecord {
            id: id.parse().map_err(|_| bad())?,
            time: time.parse().map_err(|_| bad())?,
            in_port: in_port.parse().map_err(|_| bad())?,
            src: addr(src)?,
            dst: addr(dst)?,
            proto: proto.parse().map_err(|_| bad())?,
            sport: sport.parse().map_err(|_| bad())?,
            dport: dport.parse().map_err(|_| bad())?,
        });
    }
    Ok(AuditBatch { records, suppressed })
}

/// Which run of the datapath process answers: a restarted process has another boot id
/// (and, having lost its ports and flows, must be given them again).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Random per process start.
    pub boot_id: String,
    /// The process id.
    pub pid: u32,
    /// The binary's version.
    pub version: String,
}

impl Hello {
    fn format(&self) -> String {
        format!("boot_id={} pid={} version={}\n", self.boot_id, self.pid, self.version)
    }

    /// Reads the answer to `hello`.
    pub fn parse(text: &str) -> Result<Hello, String> {
        let field = |name: &str| {
            text.split_ascii_whitespace()
                .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
                .ok_or_else(|| format!("hello answer {text:?} has no {name}"))
        };
        Ok(Hello {
            boot_id: field("boot_id")?.to_owned(),
            pid: field("pid")?.parse().map_err(|_| format!("hello answer {text:?}: bad pid"))?,
            version: field("version")?.to_owned(),
        })
    }
}

/// The service: a running switch, its control and the ports it was given.
pub struct Service {
    control: Arc<Control>,
    switch: Arc<Switch>,
    ports: Mutex<BTreeMap<u32, PortSpec>>,
    hello: Hello,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("hello", &self.hello).finish_non_exhaustive()
    }
}

impl Service {
    /// The service of `switch`, which was started with the ports `initial`.
    pub fn new(control: Arc<Control>, switch: Arc<Switch>, initial: &[PortSpec]) -> Service {
        let ports = initial.iter().map(|p| (p.number(), p.clone())).collect();
        let hello =
            Hello { boot_id: boot_id(), pid: std::process::id(), version: env!("CARGO_PKG_VERSION").to_owned() };
        Service { control, switch, ports: Mutex::new(ports), hello }
    }

    /// Who answers.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// Answers one request (a `watch` is answered like `hello`; [`Service::serve`] keeps
    /// its connection open).
    pub fn handle(&self, text: &str) -> Result<String, ServiceError> {
        let request = parse_request(text).map_err(ServiceError::BadRequest)?;
        match request {
            Request::Hello | Request::Watch => Ok(self.hello.format()),
            Request::AddPort(spec) => {
                // The lock orders concurrent adds of one number (two agents at once).
                let mut ports = self.ports.lock();
                if ports.get(&spec.number()) == Some(&spec) {
                    return Ok("kept\n".into());
                }
                self.switch.add_port(&spec)?;
                ports.insert(spec.number(), spec);
                Ok("added\n".into())
            }
            Request::RemovePort(number) => {
                let mut ports = self.ports.lock();
                ports.remove(&number);
                Ok(if self.switch.remove_port(number) { "removed\n" } else { "absent\n" }.into())
            }
            Request::Ports => {
                let mut out = String::new();
                for spec in self.ports.lock().values() {
                    let _ = writeln!(out, "{}", format_port_spec(spec));
                }
                Ok(out)
            }
            Request::Installed => Ok(flowtext::format_flow_file(&self.control.installed())),
            Request::SetAudit(config) => {
                self.control.datapath().set_audit(config);
                Ok(String::new())
            }
            Request::TakeAudit => Ok(format_audit_batch(&self.control.datapath().take_audit())),
            Request::SetConntrack(limits) => {
                let dp = self.control.datapath();
                if dp.conntrack_limits() != limits {
                    tracing::info!(
                        max_connections = limits.max_connections,
                        early_drop = limits.early_drop,
                        nat_attempts = limits.nat_attempts,
                        "conntrack limits set"
                    );
                }
                dp.set_conntrack_limits(limits);
                Ok(String::new())
            }
            Request::UpdateFlows { add, remove } => {
                let report = self.control.update_flows(&add, &remove)?;
                self.switch.wake();
                Ok(report.to_string())
            }
            Request::Control(text) => {
                let reload = text.starts_with("reload");
                match self.control.handle(&text) {
                    Ok(body) => {
                        if reload {
                            tracing::info!(result = %body.trim(), "flows reloaded");
                            self.switch.wake();
                        }
                        Ok(body)
                    }
                    Err(e) => {
                        if reload {
                            tracing::warn!(error = %e, "reload refused; the installed flows stay");
                        }
                        Err(e.into())
                    }
                }
            }
        }
    }

    /// Serves `listener` until the process ends, a thread per connection (a slow or
    /// watching peer holds only its own).
    pub fn serve(self: Arc<Self>, listener: UnixListener) {
        for conn in listener.incoming() {
            match conn {
                Ok(stream) => {
                    let me = self.clone();
                    let spawned =
                        std::thread::Builder::new().name("skein-dp-conn".into()).spawn(move || me.answer(stream));
                    if let Err(e) = spawned {
                        tracing::warn!(error = %e, "cannot start a thread for a control connection");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "control socket accept failed"),
            }
        }
    }

    fn answer(&self, mut stream: UnixStream) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let mut text = String::new();
        if let Err(e) = stream.read_to_string(&mut text) {
            let _ = write!(stream, "error\nreading the request: {e}\n");
            return;
        }
        let reply = match self.handle(&text) {
            Ok(body) => format!("ok\n{body}"),
            Err(e) => format!("error\n{e}\n"),
        };
        if stream.write_all(reply.as_bytes()).is_err() {
            return;
        }
        if text.trim() == "watch" {
            // Held while the peer lives (a newline a second finds out when it is gone); the
            // peer sees end-of-file when this process exits.
            loop {
                std::thread::sleep(WATCH_HEARTBEAT);
                if stream.write_all(b"\n").is_err() {
                    return;
                }
            }
        }
    }
}

/// How often a held `watch` connection checks that its peer is still there.
const WATCH_HEARTBEAT: Duration = Duration::from_secs(1);

/// 16 random hex digits.
fn boot_id() -> String {
    let mut bytes = [0u8; 8];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if read.is_err() {
        // Unique enough to tell two runs apart: the pid and the start time.
        let t = crate::io::now_ns();
        bytes = (t ^ (u64::from(std::process::id()) << 40)).to_be_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl std::fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "flows_added={} flows_removed={} flows_kept={} megaflows_checked={} megaflows_invalidated={}",
            self.flows_added, self.flows_removed, self.flows_kept, self.megaflows_checked, self.megaflows_invalidated
        )
    }
}

impl ReloadReport {
    /// Reads what [`ReloadReport`]'s `Display` writes.
    pub fn parse(text: &str) -> Result<ReloadReport, String> {
        let mut r = ReloadReport::default();
        for kv in text.split_ascii_whitespace() {
            let (k, v) = kv.split_once('=').ok_or_else(|| format!("report {text:?}: {kv:?} is not name=value"))?;
            let v: usize = v.parse().map_err(|_| format!("report {text:?}: {kv:?} is not a count"))?;
            match k {
                "flows_added" => r.flows_added = v,
                "flows_removed" => r.flows_removed = v,
                "flows_kept" => r.flows_kept = v,
                "megaflows_checked" => r.megaflows_checked = v,
                "megaflows_invalidated" => r.megaflows_invalidated = v,
                _ => {}
            }
        }
        Ok(r)
    }
}

/// Why a request to a datapath process failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers at the socket (the datapath process is not running).
    #[error("connecting to the datapath at {path}: {source}")]
    Connect {
        /// The socket.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The connection broke.
    #[error("talking to the datapath: {0}")]
    Io(#[from] std::io::Error),
    /// The datapath refused the request; its reason.
    #[error("{0}")]
    Refused(String),
    /// The answer is not what the protocol says.
    #[error("unexpected answer from the datapath: {0}")]
    Reply(String),
}

/// A client of a datapath process's control socket (one connection per request).
#[derive(Clone, Debug)]
pub struct Client {
    path: std::path::PathBuf,
    timeout: Duration,
}

impl Client {
    /// A client of the socket at `path`; a request waits at most `timeout` for its answer.
    pub fn new(path: impl Into<std::path::PathBuf>, timeout: Duration) -> Client {
        Client { path: path.into(), timeout }
    }

    /// The socket.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    fn connect(&self) -> Result<UnixStream, ClientError> {
        UnixStream::connect(&self.path)
            .map_err(|source| ClientError::Connect { path: self.path.display().to_string(), source })
    }

    /// Sends `text`; returns the answer's body, or the datapath's refusal.
    pub fn request(&self, text: &str) -> Result<String, ClientError> {
        let mut s = self.connect()?;
        s.set_read_timeout(Some(self.timeout))?;
        s.set_write_timeout(Some(self.timeout))?;
        s.write_all(text.as_bytes())?;
        s.shutdown(std::net::Shutdown::Write)?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        match reply.split_once('\n') {
            Some(("ok", body)) => Ok(body.to_owned()),
            Some(("error", body)) => Err(ClientError::Refused(body.trim_end().to_owned())),
            _ => Err(ClientError::Reply(format!("{reply:?}"))),
        }
    }

    /// Which run of the datapath answers.
    pub fn hello(&self) -> Result<Hello, ClientError> {
        Hello::parse(&self.request("hello")?).map_err(ClientError::Reply)
    }

    /// Who answers, and a connection that ends (read returns 0) when that process exits;
    /// meanwhile it carries a newline a second.
    pub fn watch(&self) -> Result<(Hello, UnixStream), ClientError> {
        let mut s = self.connect()?;
        s.set_read_timeout(Some(self.timeout))?;
        s.write_all(b"watch\n")?;
        s.shutdown(std::net::Shutdown::Write)?;
        // "ok", then the hello line; heartbeats follow.
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while reply.iter().filter(|b| **b == b'\n').count() < 2 {
            match s.read(&mut byte)? {
                0 => return Err(ClientError::Reply("the datapath closed the watch".into())),
                _ => reply.push(byte[0]),
            }
            if reply.len() > 4096 {
                return Err(ClientError::Reply("watch answer too long".into()));
            }
        }
        let reply = String::from_utf8_lossy(&reply).into_owned();
        let body = reply.strip_prefix("ok\n").ok_or_else(|| ClientError::Refused(reply.trim_end().to_owned()))?;
        let hello = Hello::parse(body).map_err(ClientError::Reply)?;
        s.set_read_timeout(None)?;
        Ok((hello, s))
    }

    /// Adds a port; true if it was added, false if the same port was there already.
    pub fn add_port(&self, spec: &PortSpec) -> Result<bool, ClientError> {
        match self.request(&format!("add-port {}", format_port_spec(spec)))?.trim() {
            "added" => Ok(true),
            "kept" => Ok(false),
            other => Err(ClientError::Reply(other.to_owned())),
        }
    }

    /// Removes port `number`; whether it existed.
    pub fn remove_port(&self, number: u32) -> Result<bool, ClientError> {
        match self.request(&format!("remove-port {number}"))?.trim() {
            "removed" => Ok(true),
            "absent" => Ok(false),
            other => Err(ClientError::Reply(other.to_owned())),
        }
    }

    /// The ports the datapath was given.
    pub fn ports(&self) -> Result<Vec<PortSpec>, ClientError> {
        self.request("ports")?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| parse_port_spec(l).map_err(ClientError::Reply))
            .collect()
    }

    /// Replaces what is installed with `file` ([`Control::install`] in the datapath).
    pub fn install(&self, file: &FlowFile) -> Result<ReloadReport, ClientError> {
        let body = self.request(&format!("reload\n{}", flowtext::format_flow_file(file)))?;
        ReloadReport::parse(&body).map_err(ClientError::Reply)
    }

    /// Changes some flows ([`Control::update_flows`] in the datapath).
    pub fn update_flows(&self, add: &[Flow], remove: &[(u8, u16, Match)]) -> Result<ReloadReport, ClientError> {
        let body = self.request(&format!("update-flows\n{}", format_update(add, remove)))?;
        ReloadReport::parse(&body).map_err(ClientError::Reply)
    }

    /// Sets the rate of the audit records of `log` actions.
    pub fn set_audit(&self, config: AuditConfig) -> Result<(), ClientError> {
        self.request(&format!("set-audit {} {} {}", config.per_second, config.burst, config.capacity)).map(|_| ())
    }

    /// Sets conntrack's table-wide limits (what it tracks is kept).
    pub fn set_conntrack(&self, limits: &CtTableLimits) -> Result<(), ClientError> {
        self.request(&format_set_conntrack(limits)).map(|_| ())
    }

    /// The audit records since the last call.
    pub fn take_audit(&self) -> Result<AuditBatch, ClientError> {
        parse_audit_batch(&self.request("take-audit")?).map_err(ClientError::Reply)
    }

    /// Every flow with its counters (`last_used` is not carried: 0).
    pub fn flow_stats(&self) -> Result<Vec<crate::datapath::FlowStats>, ClientError> {
        let mut out = Vec::new();
        for line in self.request("dump-flows")?.lines() {
            // `n_packets=P, n_bytes=B, FLOW`; groups, load balancers and tunnels follow.
            let Some(rest) = line.strip_prefix("n_packets=") else { continue };
            let bad = || ClientError::Reply(format!("dump-flows line {line:?}"));
            let (packets, rest) = rest.split_once(", n_bytes=").ok_or_else(bad)?;
            let (bytes, flow) = rest.split_once(", ").ok_or_else(bad)?;
            let file = flowtext::parse_flow_file(flow).map_err(|e| ClientError::Reply(format!("{line:?}: {e}")))?;
            for flow in file.flows {
                out.push(crate::datapath::FlowStats {
                    flow,
                    packets: packets.parse().map_err(|_| bad())?,
                    bytes: bytes.parse().map_err(|_| bad())?,
                    last_used: 0,
                });
            }
        }
        Ok(out)
    }

    /// What is installed.
    pub fn installed(&self) -> Result<FlowFile, ClientError> {
        flowtext::parse_flow_file(&self.request("installed")?).map_err(|e| ClientError::Reply(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs_read_back_what_is_written() {
        let specs = [
            PortSpec::Interface { number: 100, name: "sk0123456789ab".into() },
            PortSpec::Uplink { number: 1, name: "eth0".into(), filter: None },
            PortSpec::Uplink {
                number: 1,
                name: "eth0".into(),
                filter: Some(UplinkFilter {
                    node_ip: "192.0.2.11".parse().unwrap(),
                    port_ranges: [(30000, 32767), (61000, 65535)],
                }),
            },
            PortSpec::Geneve { number: 3, local: "192.0.2.11:6081".parse().unwrap() },
        ];
        for spec in specs {
            let text = format_port_spec(&spec);
            assert_eq!(parse_port_spec(&text), Ok(spec), "{text}");
        }
    }

    #[test]
    fn bad_port_specs_name_what_is_wrong() {
        for (text, needle) in [
            ("", "expected KIND NUMBER"),
            ("interface x eth0", "\"x\" is not a port number"),
            ("interface 1 a/b", "not an interface name"),
            ("interface 1 abcdefghijklmnop", "not an interface name"),
            ("interface 1", "wrong number of words"),
            ("tap 1 eth0", "unknown kind \"tap\""),
            ("geneve 3 192.0.2.1", "not an IPv4 address:port"),
            ("uplink 1 eth0 filter=1.2.3.4,2-1,3-4", "is empty"),
            ("uplink 1 eth0 filter=1.2.3.4,1-2", "expected NODE_IP"),
            ("uplink 1 eth0 nofilter", "expected filter="),
        ] {
            let e = parse_port_spec(text).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn update_bodies_read_back_and_bad_lines_are_named() {
        let file = flowtext::parse_flow_file(
            "table=0,priority=100,in_port=100,actions=resubmit(,8)\ntable=64,priority=100,ip,nw_dst=10.0.0.2,actions=output:100\n",
        )
        .unwrap();
        let remove = vec![(64u8, 100u16, file.flows[1].matches), (9u8, 5u16, Match::ANY)];
        let body = format_update(&file.flows[..1], &remove);
        let Ok(Request::UpdateFlows { add, remove: removed }) = parse_request(&format!("update-flows\n{body}")) else {
            panic!("{body}")
        };
        assert_eq!(add, file.flows[..1].to_vec());
        assert_eq!(removed, remove);
        let e = parse_request("update-flows\n+table=0,priority=1,actions=drop\nbogus\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        let e = parse_request("update-flows\n+table=0,priority=1,nw_dst=1.2.3.999,actions=drop\n").unwrap_err();
        assert!(e.contains("nw_dst"), "{e}");
        let e = parse_request("update-flows\n+group_id=1,type=select,bucket=actions=drop\n").unwrap_err();
        assert!(e.contains("only flows"), "{e}");
    }

    #[test]
    fn requests_parse_and_the_rest_goes_to_control() {
        assert_eq!(parse_request("hello"), Ok(Request::Hello));
        assert_eq!(parse_request("watch\n"), Ok(Request::Watch));
        assert_eq!(parse_request("remove-port 7"), Ok(Request::RemovePort(7)));
        assert!(parse_request("remove-port seven").unwrap_err().contains("not a port number"));
        assert!(parse_request("hello there").unwrap_err().contains("takes no argument"));
        assert_eq!(parse_request("dump-flows"), Ok(Request::Control("dump-flows".into())));
        let report = ReloadReport { flows_added: 1, flows_removed: 2, flows_kept: 3, ..Default::default() };
        assert_eq!(ReloadReport::parse(&report.to_string()), Ok(report));
        let hello = Hello { boot_id: "00ff".into(), pid: 7, version: "0.1.0".into() };
        assert_eq!(Hello::parse(&hello.format()), Ok(hello));
        assert!(Hello::parse("boot_id=1").is_err());
        assert_eq!(
            parse_request("set-audit 5 25 100"),
            Ok(Request::SetAudit(AuditConfig { per_second: 5, burst: 25, capacity: 100 }))
        );
        assert!(parse_request("set-audit 5 25").unwrap_err().contains("PER_SECOND BURST CAPACITY"));
        assert!(parse_request("set-audit 5 25 99999999").unwrap_err().contains("over"));
        let limits = CtTableLimits { max_connections: 3_000_000, early_drop: true, nat_attempts: 256 };
        assert_eq!(parse_request(&format_set_conntrack(&limits)), Ok(Request::SetConntrack(limits)));
        assert_eq!(
            parse_request("set-conntrack nat_attempts=65536 early_drop=off max_connections=1"),
            Ok(Request::SetConntrack(CtTableLimits { max_connections: 1, early_drop: false, nat_attempts: 65_536 }))
        );
        for (bad, says) in [
            ("set-conntrack", "expected max_connections=N"),
            ("set-conntrack max_connections=5 early_drop=on", "expected max_connections=N"),
            ("set-conntrack max_connections=x early_drop=on nat_attempts=1", "max_connections=\"x\": not a number"),
            ("set-conntrack max_connections=0 early_drop=on nat_attempts=1", "at least 1"),
            ("set-conntrack max_connections=5 early_drop=yes nat_attempts=1", "on or off"),
            ("set-conntrack max_connections=5 early_drop=on nat_attempts=0", "1 to 65536"),
            ("set-conntrack max_connections=5 early_drop=on nat_attempts=65537", "1 to 65536"),
            ("set-conntrack max_connections=5 max_connections=6", "given twice"),
            ("set-conntrack max_connections=5 zone=1", "unknown parameter \"zone\""),
            ("set-conntrack max_connections", "not name=value"),
        ] {
            let e = parse_request(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let batch = AuditBatch {
            records: vec![
                AuditRecord {
                    id: 7,
                    time: 9,
                    in_port: 100,
                    src: Some("10.0.0.1".parse().unwrap()),
                    dst: Some("10.0.0.2".parse().unwrap()),
                    proto: 6,
                    sport: 1,
                    dport: 80,
                },
                AuditRecord { id: 1, time: 2, in_port: 3, src: None, dst: None, proto: 0, sport: 0, dport: 0 },
            ],
            suppressed: 4,
        };
        assert_eq!(parse_audit_batch(&format_audit_batch(&batch)), Ok(batch));
        assert!(parse_audit_batch("suppressed=1\n1 2 3\n").unwrap_err().contains("audit record 1"));
    }

    #[test]
    fn a_client_drives_a_running_switch_through_the_socket() {
        use crate::io::{SwitchConfig, SwitchStats, now_ns};
        use crate::{Datapath, DatapathConfig};
        let free = || {
            let s = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            match s.local_addr().unwrap() {
                std::net::SocketAddr::V4(a) => a,
                other => panic!("{other}"),
            }
        };
        let dp = Arc::new(Datapath::new(DatapathConfig::default()));
        let switch =
            Arc::new(Switch::start(dp.clone(), &[], SwitchConfig { workers: 1, ..Default::default() }).unwrap());
        let control = Arc::new(Control::new(dp, Box::new(SwitchStats::default), now_ns));
        let service = Arc::new(Service::new(control, switch.clone(), &[]));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn({
            let service = service.clone();
            move || service.serve(listener)
        });
        let client = Client::new(&path, Duration::from_secs(10));
        let hello = client.hello().unwrap();
        assert_eq!(&hello, service.hello());
        let (watched, _watch) = client.watch().unwrap();
        assert_eq!(watched, hello);
        assert_eq!(client.hello().unwrap(), hello, "a watch holds its own connection only");

        let port = PortSpec::Geneve { number: 100, local: free() };
        assert!(client.add_port(&port).unwrap(), "added");
        assert!(!client.add_port(&port).unwrap(), "the same port again is kept");
        let other = PortSpec::Geneve { number: 100, local: free() };
        let e = client.add_port(&other).unwrap_err().to_string();
        assert!(e.contains("100"), "{e}");
        assert_eq!(client.ports().unwrap(), vec![port]);

        // Zone limits and tunnel remotes cross the socket with the flows.
        let file = flowtext::parse_flow_file(
            "tunnel=100,local_ip=127.0.0.1,underlay_port=100\ntunnel_remotes=100,remotes=192.0.2.12\n\
             ct_zone_limit=default,limit=5\ntable=0,priority=1,in_port=100,actions=output:101\n",
        )
        .unwrap();
        let r = client.install(&file).unwrap();
        assert_eq!(r.flows_added, 1);
        assert_eq!(service.control.datapath().zone_limit(7), Some(5));
        let installed = client.installed().unwrap();
        assert_eq!(
            (installed.tunnel_remotes, installed.zone_limits),
            (file.tunnel_remotes.clone(), file.zone_limits.clone())
        );
        let add = flowtext::parse_flow_file("table=0,priority=2,in_port=100,actions=drop\n").unwrap().flows;
        let remove = [(0u8, 1u16, file.flows[0].matches)];
        let r = client.update_flows(&add, &remove).unwrap();
        assert_eq!((r.flows_added, r.flows_removed, r.flows_kept), (1, 1, 0));
        assert_eq!(client.installed().unwrap().flows, add);
        let e = client.request("reload\ntable=0,priority=1,nw_dst=1.2.3.999,actions=drop\n").unwrap_err();
        assert!(e.to_string().contains("nw_dst"), "{e}");
        assert_eq!(client.installed().unwrap().flows, add, "a refused reload changes nothing");
        assert!(client.request("stats").unwrap().lines().any(|l| l == "flows=1"));
        let stats = client.flow_stats().unwrap();
        assert_eq!(stats.iter().map(|s| s.flow.clone()).collect::<Vec<_>>(), add);
        client.set_audit(AuditConfig { per_second: 1, burst: 1, capacity: 8 }).unwrap();
        assert_eq!(client.take_audit().unwrap(), AuditBatch::default());
        let limits = CtTableLimits { max_connections: 1000, early_drop: false, nat_attempts: 32 };
        client.set_conntrack(&limits).unwrap();
        assert_eq!(service.control.datapath().conntrack_limits(), limits);
        let e = client.request("set-conntrack max_connections=0 early_drop=on nat_attempts=1").unwrap_err();
        assert!(e.to_string().contains("at least 1"), "{e}");
        assert_eq!(service.control.datapath().conntrack_limits(), limits, "a refused request changes nothing");

        assert!(client.remove_port(100).unwrap());
        assert!(!client.remove_port(100).unwrap());
        assert!(client.ports().unwrap().is_empty());
        let gone = Client::new(dir.path().join("none.sock"), Duration::from_secs(1));
        assert!(matches!(gone.hello(), Err(ClientError::Connect { .. })));
    }
}
