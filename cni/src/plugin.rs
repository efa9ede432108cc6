//! The plugin's commands, independent of how the process was started: [`run`] takes the
//! environment, stdin, an agent transport and a [`HostNetwork`], and returns what to print
//! and the exit status. `main` wires the real ones; tests and the fuzz target wire fakes.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::{Map, Value};
use tracing::{info, warn};

use crate::addr::{IpNet, MacAddr};
use crate::agent_client::{AgentEndpoint, AgentTransport, TransportError};
use crate::agent_protocol::{
    AgentCommand, AgentError, AgentRequest, AgentResponse, InterfaceConfig, PROTOCOL_VERSION, PodRef,
};
use crate::args::CniArgs;
use crate::config::NetConf;
use crate::env::{CniEnv, Command};
use crate::error::{
    CODE_AGENT_PROTOCOL, CODE_CHECK_FAILED, CODE_INCOMPATIBLE_VERSION, CODE_INTERFACE_EXISTS,
    CODE_LIMITED_CONNECTIVITY, CODE_PLUGIN_NOT_AVAILABLE, CODE_SYSTEM_FAILURE, CODE_TRY_AGAIN_LATER,
    CODE_UNKNOWN_CONTAINER, CniError,
};
use crate::host::{HostNetwork, NetError, PodInterfaceSpec, RouteSpec, host_ifname, is_skein_host_ifname};
use crate::result::{CniResult, Interface, IpConfig, Route};
use crate::version::CniVersion;

/// STATUS should answer quickly whatever `timeoutSeconds` says: the runtime polls it.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

/// What the process prints on stdout and its exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Bytes for stdout: a result, an error, or nothing.
    pub stdout: Vec<u8>,
    /// 0 on success, 1 on error.
    pub exit_code: i32,
}

impl Outcome {
    fn success(value: Option<Value>) -> Outcome {
        let stdout = value.map(|v| json_line(&v)).unwrap_or_default();
        Outcome { stdout, exit_code: 0 }
    }

    fn failure(error: &CniError, version: &str) -> Outcome {
        Outcome { stdout: json_line(&error.to_json(version)), exit_code: 1 }
    }
}

fn json_line(value: &Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(value).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// The version to write into an error found before the config could be parsed: the
/// requested one when this plugin speaks it, else the latest.
fn version_hint(stdin: &[u8]) -> CniVersion {
    serde_json::from_slice::<Map<String, Value>>(stdin)
        .ok()
        .and_then(|m| m.get("cniVersion").and_then(Value::as_str).and_then(CniVersion::parse))
        .unwrap_or(CniVersion::LATEST)
}

/// Runs one invocation.
pub fn run(env: &CniEnv, stdin: &[u8], agent: &dyn AgentTransport, host: &dyn HostNetwork) -> Outcome {
    let command = match env.command() {
        Ok(c) => c,
        Err(e) => return Outcome::failure(&e, version_hint(stdin).as_str()),
    };
    if command == Command::Version {
        return Outcome::success(Some(version_answer(stdin)));
    }
    let conf = match NetConf::parse(stdin) {
        Ok(c) => c,
        Err(e) => {
            warn!(command = %command, error = %e, "invalid network config");
            return Outcome::failure(&e, version_hint(stdin).as_str());
        }
    };
    let ctx = Context { env, conf: &conf, agent, host };
    let result = match command {
        Command::Add => ctx.add().map(Some),
        Command::Del => ctx.del().map(|()| None),
        Command::Check => ctx.check().map(|()| None),
        Command::Status => ctx.status().map(|()| None),
        Command::Gc => ctx.gc().map(|()| None),
        Command::Version => Ok(Some(version_answer(stdin))),
    };
    match result {
        Ok(value) => {
            info!(command = %command, container = env.get("CNI_CONTAINERID").unwrap_or(""), "succeeded");
            Outcome::success(value)
        }
        Err(e) => {
            warn!(command = %command, container = env.get("CNI_CONTAINERID").unwrap_or(""), code = e.code,
                msg = %e.msg, details = %e.details, "failed");
            Outcome::failure(&e, conf.cni_version.as_str())
        }
    }
}

/// VERSION's answer. Never fails: the runtime uses it to find out what to send.
fn version_answer(stdin: &[u8]) -> Value {
    serde_json::json!({
        "cniVersion": version_hint(stdin).as_str(),
        "supportedVersions": CniVersion::ALL.map(CniVersion::as_str),
    })
}

struct Context<'a> {
    env: &'a CniEnv,
    conf: &'a NetConf,
    agent: &'a dyn AgentTransport,
    host: &'a dyn HostNetwork,
}

fn system_error(e: NetError) -> CniError {
    CniError::new(CODE_SYSTEM_FAILURE, e.to_string())
}

fn pod_ref(args: &CniArgs) -> Result<PodRef, CniError> {
    let namespace =
        args.pod_namespace().ok_or_else(|| CniError::invalid_env("CNI_ARGS", "K8S_POD_NAMESPACE is required"))?;
    let name = args.pod_name().ok_or_else(|| CniError::invalid_env("CNI_ARGS", "K8S_POD_NAME is required"))?;
    Ok(PodRef { namespace: namespace.into(), name: name.into(), uid: args.pod_uid().map(String::from) })
}

fn agent_error(e: AgentError) -> CniError {
    let code = if e.code == 0 { CODE_AGENT_PROTOCOL } else { e.code };
    CniError::new(code, format!("skein agent: {}", e.msg)).with_details(e.details)
}

fn unexpected_answer(command: AgentCommand, answer: &AgentResponse) -> CniError {
    let kind = match answer {
        AgentResponse::Ok(_) => "ok",
        AgentResponse::Done => "done",
        AgentResponse::Status(_) => "status",
        AgentResponse::Error(_) => "error",
    };
    CniError::new(CODE_AGENT_PROTOCOL, format!("skein agent answered {kind:?} to {command:?}"))
}

/// The pod interface configuration from the agent's answer, validated.
struct PodConfig {
    spec: PodInterfaceSpec,
    gateways: Vec<IpAddr>,
}

fn validate_interface(config: &InterfaceConfig) -> Result<PodConfig, CniError> {
    let bad = |what: String| CniError::new(CODE_AGENT_PROTOCOL, format!("skein agent sent an invalid {what}"));
    let mac: MacAddr = config.mac.parse().map_err(|e| bad(format!("mac: {e}")))?;
    if config.ips.is_empty() {
        return Err(bad("interface: no IP addresses".into()));
    }
    let addresses = config
        .ips
        .iter()
        .map(|ip| ip.parse::<IpNet>().map_err(|e| bad(format!("address: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let gateways = config
        .gateways
        .iter()
        .map(|g| g.parse::<IpAddr>().map_err(|_| bad(format!("gateway: {g:?}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let routes = config
        .routes
        .iter()
        .map(|r| {
            let dst = r.dst.parse::<IpNet>().map_err(|e| bad(format!("route destination: {e}")))?;
            let gw = match &r.gw {
                Some(g) => {
                    let gw = g.parse::<IpAddr>().map_err(|_| bad(format!("route gateway: {g:?}")))?;
                    if gw.is_ipv4() != dst.is_ipv4() {
                        return Err(bad(format!("route: {} via {gw} mixes address families", r.dst)));
                    }
                    Some(gw)
                }
                None => None,
            };
            Ok(RouteSpec { dst, gw })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if !(68..=65535).contains(&config.mtu) {
        return Err(bad(format!("mtu: {}", config.mtu)));
    }
    Ok(PodConfig { spec: PodInterfaceSpec { mac, addresses, routes, mtu: config.mtu }, gateways })
}

impl Context<'_> {
    fn endpoint(&self, timeout: Duration) -> AgentEndpoint {
        AgentEndpoint::new(&self.conf.agent_socket, timeout)
    }

    fn full_timeout(&self) -> Duration {
        Duration::from_secs(self.conf.timeout_seconds)
    }

    fn request(&self, command: AgentCommand) -> AgentRequest {
        AgentRequest {
            version: PROTOCOL_VERSION,
            command,
            container_id: None,
            netns: None,
            ifname: None,
            host_ifname: None,
            pod: None,
            cni_version: self.conf.cni_version.as_str().to_string(),
            valid_attachments: None,
        }
    }

    fn add(&self) -> Result<Value, CniError> {
        let container_id = self.env.container_id()?;
        let netns = self.env.require_netns()?;
        let ifname = self.env.ifname()?;
        let pod = pod_ref(&self.env.args()?)?;
        let prev = match &self.conf.prev_result {
            Some(v) => Some(CniResult::from_json(v).map_err(|e| CniError::invalid_config("prevResult", e))?),
            None => None,
        };
        let netns_path = Path::new(netns);
        if !self.host.netns_exists(netns_path) {
            return Err(CniError::invalid_env("CNI_NETNS", format!("{netns} does not exist")));
        }
        let host_if = host_ifname(container_id, ifname);
        if self.host.link_exists(&host_if).map_err(system_error)? {
            return Err(CniError::new(
                CODE_INTERFACE_EXISTS,
                format!("interface {host_if} for container {container_id} ({ifname}) already exists: ADD without DEL?"),
            ));
        }
        let host_mac = self.host.create_veth(&host_if, netns_path, ifname).map_err(|e| match e {
            NetError::Exists(what) => CniError::new(CODE_INTERFACE_EXISTS, format!("interface {what} already exists")),
            other => system_error(other),
        })?;
        info!(container = container_id, host_ifname = %host_if, ifname, netns, pod = %format!("{}/{}", pod.namespace, pod.name), "veth created");

        let attached = self.attach(container_id, netns, ifname, &host_if, pod);
        let config = match attached {
            Ok(ok) => ok,
            Err((e, bound)) => {
                if let Some(request) = bound {
                    // The agent bound the host end before the pod end failed: unbind it now
                    // rather than leave a datapath port on a veth about to be deleted (the
                    // runtime's DEL would too, but not every runtime gets that far).
                    self.undo_binding(request);
                }
                // Undo: deleting the host end removes the pod end with it.
                match self.host.delete_host_link(&host_if) {
                    Ok(_) => info!(host_ifname = %host_if, "veth removed after failed ADD"),
                    Err(cleanup) => {
                        warn!(host_ifname = %host_if, error = %cleanup, "could not remove veth after failed ADD")
                    }
                }
                return Err(e);
            }
        };
        let mut result = self.build_result(&config, host_mac, &host_if, netns, ifname);
        if let Some(mut prev) = prev {
            prev.append(result);
            result = prev;
        }
        Ok(result.to_json(self.conf.cni_version))
    }

    /// ADD after the veth exists: ask the agent, then configure the pod end. A failure
    /// after the agent answered `ok` comes with the request, so that the binding the agent
    /// made can be undone.
    fn attach(
        &self,
        container_id: &str,
        netns: &str,
        ifname: &str,
        host_if: &str,
        pod: PodRef,
    ) -> Result<PodConfig, (CniError, Option<Box<AgentRequest>>)> {
        let mut request = self.request(AgentCommand::Add);
        request.container_id = Some(container_id.into());
        request.netns = Some(netns.into());
        request.ifname = Some(ifname.into());
        request.host_ifname = Some(host_if.into());
        request.pod = Some(pod);
        let answer =
            self.agent.call(&self.endpoint(self.full_timeout()), &request).map_err(|e| (transport_error(&e), None))?;
        let bound = |e: CniError| (e, Some(Box::new(request.clone())));
        let config = match answer {
            AgentResponse::Ok(add) => validate_interface(&add.interface).map_err(bound)?,
            AgentResponse::Error(e) => return Err((agent_error(e), None)),
            other => return Err((unexpected_answer(AgentCommand::Add, &other), None)),
        };
        self.host.set_host_mtu(host_if, config.spec.mtu).map_err(|e| bound(system_error(e)))?;
        self.host
            .configure_pod_interface(Path::new(netns), ifname, &config.spec)
            .map_err(|e| bound(system_error(e)))?;
        Ok(config)
    }

    /// Tells the agent to forget the binding an ADD that then failed made (best effort:
    /// the runtime's DEL and the agent's stale-port reclaim catch what this misses).
    fn undo_binding(&self, request: Box<AgentRequest>) {
        let mut request = *request;
        request.command = AgentCommand::Del;
        let container = request.container_id.clone().unwrap_or_default();
        match self.agent.call(&self.endpoint(self.full_timeout().min(STATUS_TIMEOUT)), &request) {
            Ok(AgentResponse::Done | AgentResponse::Ok(_)) => {
                info!(container = %container, "agent told to unbind after the failed ADD")
            }
            Ok(other) => warn!(container = %container, answer = ?other, "agent did not unbind after the failed ADD"),
            Err(e) => warn!(container = %container, error = %e, "agent not told to unbind after the failed ADD"),
        }
    }

    fn build_result(
        &self,
        config: &PodConfig,
        host_mac: MacAddr,
        host_if: &str,
        netns: &str,
        ifname: &str,
    ) -> CniResult {
        let mtu = Some(config.spec.mtu);
        let interfaces = vec![
            Interface { name: host_if.into(), mac: Some(host_mac.to_string()), mtu, sandbox: None, extra: Map::new() },
            Interface {
                name: ifname.into(),
                mac: Some(config.spec.mac.to_string()),
                mtu,
                sandbox: Some(netns.into()),
                extra: Map::new(),
            },
        ];
        let ips = config
            .spec
            .addresses
            .iter()
            .map(|address| IpConfig {
                address: *address,
                gateway: config
                    .gateways
                    .iter()
                    .find(|g| address.contains(**g))
                    .or_else(|| config.gateways.iter().find(|g| g.is_ipv4() == address.is_ipv4()))
                    .copied(),
                interface: Some(1),
                extra: Map::new(),
            })
            .collect();
        let routes = config.spec.routes.iter().map(|r| Route { dst: r.dst, gw: r.gw, extra: Map::new() }).collect();
        CniResult { interfaces, ips, routes, dns: Map::new(), extra: Map::new() }
    }

    fn del(&self) -> Result<(), CniError> {
        let container_id = self.env.container_id()?;
        let ifname = self.env.ifname()?;
        // DEL must succeed without a netns and with whatever the runtime still knows.
        let netns = self.env.netns().ok().flatten();
        let pod = self.env.args().ok().and_then(|a| pod_ref(&a).ok());
        let host_if = host_ifname(container_id, ifname);
        let mut request = self.request(AgentCommand::Del);
        request.container_id = Some(container_id.into());
        request.netns = netns.map(String::from);
        request.ifname = Some(ifname.into());
        request.host_ifname = Some(host_if.clone());
        request.pod = pod;
        match self.agent.call(&self.endpoint(self.full_timeout()), &request) {
            Ok(AgentResponse::Done | AgentResponse::Ok(_)) => {}
            Ok(AgentResponse::Error(e)) => return Err(agent_error(e)),
            Ok(other) => return Err(unexpected_answer(AgentCommand::Del, &other)),
            // The agent forgets pods whose ports disappear and GC catches the rest; a pod
            // must not stay undeletable because the agent is down.
            Err(e) => {
                warn!(container = container_id, error = %e, "agent not told of DEL; removing the interface anyway")
            }
        }
        match self.host.delete_host_link(&host_if) {
            Ok(true) => info!(host_ifname = %host_if, "veth removed"),
            Ok(false) => info!(host_ifname = %host_if, "veth already gone"),
            Err(e) => return Err(system_error(e)),
        }
        Ok(())
    }

    fn check(&self) -> Result<(), CniError> {
        let container_id = self.env.container_id()?;
        let netns = self.env.require_netns()?;
        let ifname = self.env.ifname()?;
        let prev = self
            .conf
            .prev_result
            .as_ref()
            .ok_or_else(|| CniError::invalid_config("prevResult", "is required for CHECK"))?;
        let prev = CniResult::from_json(prev).map_err(|e| CniError::invalid_config("prevResult", e))?;
        let index =
            prev.interfaces.iter().position(|i| i.name == ifname && i.sandbox.is_some()).ok_or_else(|| {
                CniError::invalid_config("prevResult", format!("has no sandbox interface {ifname:?}"))
            })?;
        let expected = &prev.interfaces[index];
        let failed = |what: String| CniError::new(CODE_CHECK_FAILED, what);

        let host_if = host_ifname(container_id, ifname);
        if !self.host.link_exists(&host_if).map_err(system_error)? {
            return Err(failed(format!("host interface {host_if} is missing")));
        }
        let state = match self.host.inspect_pod_interface(Path::new(netns), ifname) {
            Ok(Some(state)) => state,
            Ok(None) => return Err(failed(format!("interface {ifname} is missing in {netns}"))),
            Err(NetError::NetnsNotFound { path, source }) => {
                return Err(CniError::new(
                    CODE_UNKNOWN_CONTAINER,
                    format!("network namespace {} is gone", path.display()),
                )
                .with_details(source.to_string()));
            }
            Err(e) => return Err(system_error(e)),
        };
        if let Some(mac) = &expected.mac {
            let want: MacAddr =
                mac.parse().map_err(|e| CniError::invalid_config(&format!("prevResult.interfaces[{index}].mac"), e))?;
            if state.mac != Some(want) {
                return Err(failed(format!(
                    "{ifname} has MAC {:?}, expected {want}",
                    state.mac.map(|m| m.to_string())
                )));
            }
        }
        if let Some(mtu) = expected.mtu
            && state.mtu != Some(mtu)
        {
            return Err(failed(format!("{ifname} has MTU {:?}, expected {mtu}", state.mtu)));
        }
        if !state.up {
            return Err(failed(format!("{ifname} is down")));
        }
        for ip in prev.ips.iter().filter(|ip| ip.interface == Some(index)) {
            if !state.addresses.contains(&ip.address) {
                return Err(failed(format!("{ifname} lacks address {}", ip.address)));
            }
        }
        for route in &prev.routes {
            let found = state
                .routes
                .iter()
                .any(|r| r.dst.network() == route.dst.network() && (route.gw.is_none() || r.gw == route.gw));
            if !found {
                return Err(failed(format!("route {} via {:?} is missing in {netns}", route.dst, route.gw)));
            }
        }
        let mut request = self.request(AgentCommand::Check);
        request.container_id = Some(container_id.into());
        request.netns = Some(netns.into());
        request.ifname = Some(ifname.into());
        request.host_ifname = Some(host_if);
        request.pod = self.env.args().ok().and_then(|a| pod_ref(&a).ok());
        match self.agent.call(&self.endpoint(self.full_timeout()), &request).map_err(|e| transport_error(&e))? {
            AgentResponse::Done | AgentResponse::Ok(_) => Ok(()),
            AgentResponse::Error(e) => Err(agent_error(e)),
            other => Err(unexpected_answer(AgentCommand::Check, &other)),
        }
    }

    fn require_status_and_gc(&self, command: Command) -> Result<(), CniError> {
        if self.conf.cni_version.has_status_and_gc() {
            return Ok(());
        }
        Err(CniError::new(
            CODE_INCOMPATIBLE_VERSION,
            format!("{command} needs cniVersion 1.1.0, the config has {}", self.conf.cni_version),
        ))
    }

    fn status(&self) -> Result<(), CniError> {
        self.require_status_and_gc(Command::Status)?;
        let timeout = self.full_timeout().min(STATUS_TIMEOUT);
        match self.agent.call(&self.endpoint(timeout), &self.request(AgentCommand::Status)) {
            Ok(AgentResponse::Status(s)) if s.ready => Ok(()),
            Ok(AgentResponse::Status(s)) => {
                Err(CniError::new(CODE_PLUGIN_NOT_AVAILABLE, format!("skein agent is not ready: {}", s.message)))
            }
            Ok(AgentResponse::Error(e)) => {
                let mut err = agent_error(e);
                if err.code != CODE_LIMITED_CONNECTIVITY {
                    err.code = CODE_PLUGIN_NOT_AVAILABLE;
                }
                Err(err)
            }
            Ok(other) => Err(unexpected_answer(AgentCommand::Status, &other)),
            Err(e) => {
                Err(CniError::new(CODE_PLUGIN_NOT_AVAILABLE, "skein agent is unreachable").with_details(e.to_string()))
            }
        }
    }

    fn gc(&self) -> Result<(), CniError> {
        self.require_status_and_gc(Command::Gc)?;
        let valid = self
            .conf
            .valid_attachments
            .as_ref()
            .ok_or_else(|| CniError::invalid_config("cni.dev/valid-attachments", "is required for GC"))?;
        let keep: HashSet<String> = valid.iter().map(|a| host_ifname(&a.container_id, &a.ifname)).collect();
        let mut failures = Vec::new();
        for link in self.host.list_host_links().map_err(system_error)? {
            if !link.is_veth || !is_skein_host_ifname(&link.name) || keep.contains(&link.name) {
                continue;
            }
            match self.host.delete_host_link(&link.name) {
                Ok(_) => info!(host_ifname = %link.name, "GC removed stale veth"),
                Err(e) => failures.push(format!("{}: {e}", link.name)),
            }
        }
        let mut request = self.request(AgentCommand::Gc);
        request.valid_attachments = Some(valid.clone());
        match self.agent.call(&self.endpoint(self.full_timeout()), &request) {
            Ok(AgentResponse::Done | AgentResponse::Ok(_)) => {}
            Ok(AgentResponse::Error(e)) => return Err(agent_error(e)),
            Ok(other) => return Err(unexpected_answer(AgentCommand::Gc, &other)),
            // The next GC tells it; stale agent state only holds ports that no longer exist.
            Err(e) => warn!(error = %e, "agent not told of GC"),
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(CniError::new(CODE_SYSTEM_FAILURE, format!("GC could not remove {} interfaces", failures.len()))
                .with_details(failures.join("; ")))
        }
    }
}

fn transport_error(e: &TransportError) -> CniError {
    if e.is_transient() {
        CniError::new(CODE_TRY_AGAIN_LATER, "skein agent is not reachable or not ready; try again later")
            .with_details(e.to_string())
    } else {
        CniError::new(CODE_AGENT_PROTOCOL, "skein agent sent an invalid answer").with_details(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent_protocol::{AddResult, RouteConfig, StatusResult};
    use crate::testing::{FakeAgent, FakeHost};
    use serde_json::json;

    const NETNS: &str = "/var/run/netns/pod1";

    fn env(command: &str, extra: &[(&str, &str)]) -> CniEnv {
        let mut pairs = vec![
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", "c0ffee"),
            ("CNI_NETNS", NETNS),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "K8S_POD_UID=u1;IgnoreUnknown=1;K8S_POD_NAME=web;K8S_POD_NAMESPACE=default"),
            ("CNI_PATH", "/opt/cni/bin"),
        ];
        for (k, v) in extra {
            pairs.retain(|(key, _)| key != k);
            if !v.is_empty() {
                pairs.push((k, v));
            }
        }
        CniEnv::from_pairs(pairs.into_iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    fn conf(version: &str) -> Vec<u8> {
        json!({"cniVersion": version, "name": "skein", "type": "skein-cni"}).to_string().into_bytes()
    }

    fn ok_agent() -> FakeAgent {
        FakeAgent::new(|req| {
            Ok(match req.command {
                AgentCommand::Add => AgentResponse::Ok(AddResult {
                    interface: InterfaceConfig {
                        mac: "0a:58:0a:f4:01:05".into(),
                        ips: vec!["10.244.1.5/24".into(), "fd00:10:244:1::5/64".into()],
                        gateways: vec!["10.244.1.1".into(), "fd00:10:244:1::1".into()],
                        routes: vec![RouteConfig { dst: "0.0.0.0/0".into(), gw: Some("10.244.1.1".into()) }],
                        mtu: 1400,
                    },
                }),
                AgentCommand::Status => AgentResponse::Status(StatusResult { ready: true, message: String::new() }),
                _ => AgentResponse::Done,
            })
        })
    }

    fn host() -> FakeHost {
        let host = FakeHost::new();
        host.add_netns(NETNS);
        host
    }

    fn json_out(outcome: &Outcome) -> Value {
        serde_json::from_slice(&outcome.stdout).unwrap()
    }

    #[test]
    fn add_configures_and_answers_in_kind() {
        for version in ["0.4.0", "1.0.0", "1.1.0"] {
            let host = host();
            let agent = ok_agent();
            let out = run(&env("ADD", &[]), &conf(version), &agent, &host);
            assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stdout));
            let v = json_out(&out);
            assert_eq!(v["cniVersion"], version);
            assert_eq!(v["interfaces"][1]["name"], "eth0");
            assert_eq!(v["interfaces"][1]["sandbox"], NETNS);
            assert_eq!(v["interfaces"][1]["mac"], "0a:58:0a:f4:01:05");
            assert_eq!(v["ips"][0]["interface"], 1);
            assert_eq!(v["ips"][0]["gateway"], "10.244.1.1");
            assert_eq!(v["ips"][1]["gateway"], "fd00:10:244:1::1");
            assert_eq!(v["ips"][0].get("version").is_some(), version == "0.4.0");
            assert_eq!(v["interfaces"][1].get("mtu").is_some(), version == "1.1.0");
            let state = host.pod_link(NETNS, "eth0").unwrap();
            assert!(state.up);
            assert_eq!(state.mtu, Some(1400));
            let req = &agent.requests()[0];
            assert_eq!(req.pod.as_ref().unwrap().name, "web");
            assert_eq!(req.pod.as_ref().unwrap().uid.as_deref(), Some("u1"));
            assert_eq!(req.host_ifname.as_deref(), Some(host_ifname("c0ffee", "eth0").as_str()));
        }
    }

    #[test]
    fn add_twice_fails_and_keeps_the_first() {
        let host = host();
        let agent = ok_agent();
        assert_eq!(run(&env("ADD", &[]), &conf("1.1.0"), &agent, &host).exit_code, 0);
        let out = run(&env("ADD", &[]), &conf("1.1.0"), &agent, &host);
        assert_eq!(json_out(&out)["code"], CODE_INTERFACE_EXISTS);
        assert!(host.pod_link(NETNS, "eth0").is_some());
    }

    #[test]
    fn add_failures_clean_up_and_use_the_right_code() {
        let host = host();
        let out = run(&env("ADD", &[]), &conf("1.0.0"), &FakeAgent::unreachable(), &host);
        assert_eq!(json_out(&out)["code"], CODE_TRY_AGAIN_LATER);
        assert_eq!(json_out(&out)["cniVersion"], "1.0.0");
        assert!(host.host_link_names().is_empty());
        assert!(host.pod_link(NETNS, "eth0").is_none());

        let agent = FakeAgent::new(|_| {
            Ok(AgentResponse::Error(AgentError { code: 11, msg: "no annotation yet".into(), details: String::new() }))
        });
        let out = run(&env("ADD", &[]), &conf("1.0.0"), &agent, &host);
        assert_eq!(json_out(&out)["code"], 11);
        assert!(json_out(&out)["msg"].as_str().unwrap().contains("no annotation yet"));
        assert!(host.host_link_names().is_empty());

        let agent = FakeAgent::new(|_| {
            Ok(AgentResponse::Ok(AddResult {
                interface: InterfaceConfig {
                    mac: "zz".into(),
                    ips: vec![],
                    gateways: vec![],
                    routes: vec![],
                    mtu: 1400,
                },
            }))
        });
        let out = run(&env("ADD", &[]), &conf("1.0.0"), &agent, &host);
        assert_eq!(json_out(&out)["code"], CODE_AGENT_PROTOCOL);
        assert!(host.host_link_names().is_empty());
    }

    #[test]
    fn a_pod_end_failing_after_the_agent_bound_it_unbinds_and_removes_the_veth() {
        let host = FakeHost::failing_pod_configuration();
        host.add_netns(NETNS);
        let agent = ok_agent();
        let out = run(&env("ADD", &[]), &conf("1.0.0"), &agent, &host);
        assert_eq!(json_out(&out)["code"], CODE_SYSTEM_FAILURE);
        assert!(host.host_link_names().is_empty(), "veth removed");
        let commands: Vec<AgentCommand> = agent.requests().iter().map(|r| r.command).collect();
        assert_eq!(commands, [AgentCommand::Add, AgentCommand::Del], "the agent's binding is undone");
        let del = &agent.requests()[1];
        assert_eq!(del.host_ifname.as_deref(), Some(host_ifname("c0ffee", "eth0").as_str()));
        assert_eq!(del.container_id.as_deref(), Some("c0ffee"));

        // An agent that answered an error has bound nothing: no DEL.
        let host = self::host();
        let agent = FakeAgent::new(|_| {
            Ok(AgentResponse::Error(AgentError { code: 105, msg: "bind failed".into(), details: String::new() }))
        });
        run(&env("ADD", &[]), &conf("1.0.0"), &agent, &host);
        assert_eq!(agent.requests().len(), 1);
        assert!(host.host_link_names().is_empty());
    }

    #[test]
    fn environment_and_config_errors_name_the_problem() {
        let host = host();
        let agent = ok_agent();
        let cases: Vec<(CniEnv, Vec<u8>, u32, &str)> = vec![
            (env("ADD", &[("CNI_NETNS", "")]), conf("1.0.0"), 4, "CNI_NETNS"),
            (env("ADD", &[("CNI_NETNS", "/var/run/netns/missing")]), conf("1.0.0"), 4, "CNI_NETNS"),
            (env("ADD", &[("CNI_IFNAME", "")]), conf("1.0.0"), 4, "CNI_IFNAME"),
            (env("ADD", &[("CNI_CONTAINERID", "")]), conf("1.0.0"), 4, "CNI_CONTAINERID"),
            (env("ADD", &[("CNI_ARGS", "IgnoreUnknown=1")]), conf("1.0.0"), 4, "K8S_POD_NAMESPACE"),
            (env("ADD", &[("CNI_ARGS", "nonsense")]), conf("1.0.0"), 4, "CNI_ARGS"),
            (env("BOGUS", &[]), conf("1.0.0"), 4, "CNI_COMMAND"),
            (env("ADD", &[]), b"not json".to_vec(), 6, "JSON"),
            (env("ADD", &[]), conf("0.1.0"), 1, "0.1.0"),
            (env("ADD", &[]), br#"{"cniVersion":"1.0.0","name":"n"}"#.to_vec(), 7, "type"),
            (env("STATUS", &[]), conf("1.0.0"), 1, "1.1.0"),
            (env("GC", &[]), conf("1.1.0"), 7, "cni.dev/valid-attachments"),
            (env("CHECK", &[]), conf("1.0.0"), 7, "prevResult"),
        ];
        for (env, stdin, code, needle) in cases {
            let out = run(&env, &stdin, &agent, &host);
            assert_eq!(out.exit_code, 1);
            let v = json_out(&out);
            assert_eq!(v["code"], code, "{v}");
            assert!(v["msg"].as_str().unwrap().contains(needle), "{v} does not mention {needle}");
            assert!(v["cniVersion"].is_string());
        }
        assert!(host.host_link_names().is_empty());
    }

    #[test]
    fn del_is_idempotent_and_survives_a_missing_agent_and_netns() {
        let host = host();
        assert_eq!(run(&env("ADD", &[]), &conf("1.1.0"), &ok_agent(), &host).exit_code, 0);
        let out = run(&env("DEL", &[]), &conf("1.1.0"), &FakeAgent::unreachable(), &host);
        assert_eq!(out, Outcome { stdout: vec![], exit_code: 0 });
        assert!(host.host_link_names().is_empty());
        assert_eq!(run(&env("DEL", &[]), &conf("1.1.0"), &ok_agent(), &host).exit_code, 0);
        assert_eq!(
            run(&env("DEL", &[("CNI_NETNS", ""), ("CNI_ARGS", "")]), &conf("1.1.0"), &ok_agent(), &host).exit_code,
            0
        );
    }

    #[test]
    fn check_compares_with_prev_result() {
        let host = host();
        let agent = ok_agent();
        let added = json_out(&run(&env("ADD", &[]), &conf("1.1.0"), &agent, &host));
        let with_prev = |prev: &Value| {
            json!({"cniVersion":"1.1.0","name":"skein","type":"skein-cni","prevResult":prev}).to_string().into_bytes()
        };
        assert_eq!(run(&env("CHECK", &[]), &with_prev(&added), &agent, &host).exit_code, 0);
        let mut wrong = added.clone();
        wrong["ips"][0]["address"] = "10.244.1.99/24".into();
        let out = run(&env("CHECK", &[]), &with_prev(&wrong), &agent, &host);
        assert_eq!(json_out(&out)["code"], CODE_CHECK_FAILED);
        run(&env("DEL", &[]), &conf("1.1.0"), &agent, &host);
        let out = run(&env("CHECK", &[]), &with_prev(&added), &agent, &host);
        assert_eq!(json_out(&out)["code"], CODE_CHECK_FAILED);
    }

    #[test]
    fn status_reports_the_agent() {
        let host = host();
        assert_eq!(
            run(&env("STATUS", &[]), &conf("1.1.0"), &ok_agent(), &host),
            Outcome { stdout: vec![], exit_code: 0 }
        );
        let out = run(&env("STATUS", &[]), &conf("1.1.0"), &FakeAgent::unreachable(), &host);
        assert_eq!(json_out(&out)["code"], CODE_PLUGIN_NOT_AVAILABLE);
        let not_ready =
            FakeAgent::new(|_| Ok(AgentResponse::Status(StatusResult { ready: false, message: "no master".into() })));
        let out = run(&env("STATUS", &[]), &conf("1.1.0"), &not_ready, &host);
        assert_eq!(json_out(&out)["code"], CODE_PLUGIN_NOT_AVAILABLE);
        assert!(json_out(&out)["msg"].as_str().unwrap().contains("no master"));
    }

    #[test]
    fn gc_removes_only_stale_skein_veths() {
        let host = host();
        let agent = ok_agent();
        assert_eq!(run(&env("ADD", &[]), &conf("1.1.0"), &agent, &host).exit_code, 0);
        let stale = host_ifname("gone", "eth0");
        host.add_host_link(&stale, true);
        host.add_host_link("eth0", false);
        host.add_host_link("sk0123456789ab", false);
        let gc = json!({"cniVersion":"1.1.0","name":"skein","type":"skein-cni",
            "cni.dev/valid-attachments":[{"containerID":"c0ffee","ifname":"eth0"}]});
        let out = run(&env("GC", &[]), gc.to_string().as_bytes(), &agent, &host);
        assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stdout));
        let mut names = host.host_link_names();
        names.sort();
        let mut want = vec![host_ifname("c0ffee", "eth0"), "eth0".into(), "sk0123456789ab".into()];
        want.sort();
        assert_eq!(names, want);
        let gc_req = agent.requests().into_iter().find(|r| r.command == AgentCommand::Gc).unwrap();
        assert_eq!(gc_req.valid_attachments.unwrap().len(), 1);
    }

    #[test]
    fn version_never_fails() {
        let host = host();
        for stdin in [&b""[..], b"garbage", br#"{"cniVersion":"0.4.0"}"#] {
            let out = run(&env("VERSION", &[]), stdin, &FakeAgent::unreachable(), &host);
            assert_eq!(out.exit_code, 0);
            let v = json_out(&out);
            assert_eq!(v["supportedVersions"], json!(["0.4.0", "1.0.0", "1.1.0"]));
        }
        let v = json_out(&run(&env("VERSION", &[]), br#"{"cniVersion":"0.4.0"}"#, &FakeAgent::unreachable(), &host));
        assert_eq!(v["cniVersion"], "0.4.0");
    }

    #[test]
    fn add_with_prev_result_appends() {
        let host = host();
        let stdin = json!({"cniVersion":"1.0.0","name":"skein","type":"skein-cni",
            "prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"lo0"}],"ips":[{"address":"192.0.2.1/32","interface":0}]}});
        let v = json_out(&run(&env("ADD", &[]), stdin.to_string().as_bytes(), &ok_agent(), &host));
        assert_eq!(v["interfaces"][0]["name"], "lo0");
        assert_eq!(v["interfaces"][2]["name"], "eth0");
        assert_eq!(v["ips"][1]["interface"], 2);
    }
}
