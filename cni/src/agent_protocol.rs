//! The protocol between `skein-cni` and the node agent (`skein-agent`), on the agent's Unix
//! socket (`/var/run/skein/cni.sock`, mode 0600).
//!
//! One connection carries one exchange: the plugin writes one [`AgentRequest`] as a JSON
//! object followed by `\n` and then shuts down its write half; the agent writes one
//! [`AgentResponse`] as a JSON object followed by `\n` and closes. Either side may treat the
//! newline or the end of stream as the end of the message; messages are at most
//! [`MAX_MESSAGE_BYTES`]. The request carries [`PROTOCOL_VERSION`]; an agent that does not
//! speak it answers an [`AgentResponse::Error`] with code 1.
//!
//! Both sides of the protocol live here so that the agent and the plugin share one definition.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::config::Attachment;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest request or response accepted, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// The CNI command a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AgentCommand {
    /// Bind the host end, wait for the pod's annotation and flows, answer the configuration.
    Add,
    /// Unbind; idempotent (an unknown container is success).
    Del,
    /// Confirm the pod is still bound.
    Check,
    /// Report readiness.
    Status,
    /// Forget every attachment not in `valid_attachments`.
    Gc,
}

/// The pod an ADD is for, from `CNI_ARGS`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    /// `K8S_POD_NAMESPACE`.
    pub namespace: String,
    /// `K8S_POD_NAME`.
    pub name: String,
    /// `K8S_POD_UID`, when the runtime sent it (lets the agent tell a recreated pod of the
    /// same name from the old one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// A request from the plugin. Which fields are set depends on the command:
///
/// | field | ADD | DEL | CHECK | STATUS | GC |
/// |---|---|---|---|---|---|
/// | `container_id`, `ifname`, `host_ifname` | yes | yes | yes | – | – |
/// | `netns` | yes | if known | yes | – | – |
/// | `pod` | yes | if known | if known | – | – |
/// | `valid_attachments` | – | – | – | – | yes |
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRequest {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The CNI command.
    pub command: AgentCommand,
    /// `CNI_CONTAINERID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// `CNI_NETNS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// `CNI_IFNAME`: the interface name inside the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    /// The host end of the veth pair (see [`crate::host::host_ifname`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ifname: Option<String>,
    /// The pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
    /// The CNI version of the invocation (informational: the agent's answer does not depend on it).
    pub cni_version: String,
    /// GC: the attachments the runtime still considers valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// A route for the pod interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteConfig {
    /// Destination, `10.96.0.0/12` or `0.0.0.0/0`.
    pub dst: String,
    /// Next hop; absent for an on-link route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

/// The pod interface's configuration, from the pod's `skein.dev/pod-networks` annotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceConfig {
    /// MAC address, `0a:58:0a:f4:01:05`.
    pub mac: String,
    /// Addresses with prefix length, `10.244.1.5/24`.
    pub ips: Vec<String>,
    /// Gateways, at most one per IP family; reported in the result's `ips[].gateway`.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Every route to install in the pod, default routes included: the plugin adds
    /// exactly these and no implicit default route.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// MTU of the pod interface (and of the host end).
    pub mtu: u32,
}

/// ADD's answer: sent only once the pod's flows are installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddResult {
    /// The pod interface's configuration.
    pub interface: InterfaceConfig,
}

/// STATUS's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusResult {
    /// Whether ADDs can succeed now (connected to the master, datapath running).
    pub ready: bool,
    /// Why not, when not ready.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// A failure: `code` is a CNI error code (11 while not ready, 1 for an unknown protocol
/// version, ≥ 100 Skein's own) and is passed to the runtime as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentError {
    /// CNI error code.
    pub code: u32,
    /// Message naming the problem.
    pub msg: String,
    /// Detail.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

/// The agent's answer, tagged by `"result"`: `{"result":"ok","interface":{..}}`,
/// `{"result":"done"}`, `{"result":"status","ready":true}`,
/// `{"result":"error","code":11,"msg":".."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum AgentResponse {
    /// ADD succeeded.
    Ok(AddResult),
    /// DEL, CHECK or GC succeeded.
    Done,
    /// STATUS.
    Status(StatusResult),
    /// Any command failed.
    Error(AgentError),
}

/// Why one message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed (including a read timeout).
    #[error("reading the message failed: {0}")]
    Io(#[from] io::Error),
    /// The message exceeded [`MAX_MESSAGE_BYTES`].
    #[error("the message is longer than {MAX_MESSAGE_BYTES} bytes")]
    TooLong,
    /// The stream ended before any byte.
    #[error("the peer closed the connection without a message")]
    Empty,
    /// The bytes are not the expected JSON message.
    #[error("the message is not valid: {0}")]
    Invalid(#[from] serde_json::Error),
}

/// Reads one message: up to the first `\n` or the end of stream.
pub fn read_message<T: for<'de> Deserialize<'de>>(reader: &mut impl Read) -> Result<T, FrameError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            break;
        }
        let part = &chunk[..n];
        if let Some(pos) = part.iter().position(|&b| b == b'\n') {
            buf.extend_from_slice(&part[..pos]);
            break;
        }
        buf.extend_from_slice(part);
        if buf.len() > MAX_MESSAGE_BYTES {
            return Err(FrameError::TooLong);
        }
    }
    if buf.len() > MAX_MESSAGE_BYTES {
        return Err(FrameError::TooLong);
    }
    if buf.iter().all(u8::is_ascii_whitespace) {
        return Err(FrameError::Empty);
    }
    Ok(serde_json::from_slice(&buf)?)
}

/// Writes one message and its terminating `\n`.
pub fn write_message<T: Serialize>(writer: &mut impl Write, message: &T) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(message).map_err(io::Error::other)?;
    bytes.push(b'\n');
    writer.write_all(&bytes)?;
    writer.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn request_wire_form() {
        let req = AgentRequest {
            version: PROTOCOL_VERSION,
            command: AgentCommand::Add,
            container_id: Some("c1".into()),
            netns: Some("/var/run/netns/p".into()),
            ifname: Some("eth0".into()),
            host_ifname: Some("sk0123456789ab".into()),
            pod: Some(PodRef { namespace: "default".into(), name: "web".into(), uid: None }),
            cni_version: "1.1.0".into(),
            valid_attachments: None,
        };
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(v["command"], "ADD");
        assert_eq!(v["pod"], json!({"namespace":"default","name":"web"}));
        assert!(v.get("valid_attachments").is_none());
        let back: AgentRequest = serde_json::from_value(v).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn response_wire_forms() {
        let ok: AgentResponse = serde_json::from_value(json!({"result":"ok","interface":{
            "mac":"0a:58:0a:f4:01:05","ips":["10.244.1.5/24"],"gateways":["10.244.1.1"],
            "routes":[{"dst":"0.0.0.0/0","gw":"10.244.1.1"}],"mtu":1400}}))
        .unwrap();
        let AgentResponse::Ok(add) = ok else { panic!("not ok") };
        assert_eq!(add.interface.mtu, 1400);
        assert_eq!(serde_json::from_value::<AgentResponse>(json!({"result":"done"})).unwrap(), AgentResponse::Done);
        let err: AgentResponse = serde_json::from_value(json!({"result":"error","code":11,"msg":"wait"})).unwrap();
        assert_eq!(err, AgentResponse::Error(AgentError { code: 11, msg: "wait".into(), details: String::new() }));
        let st =
            serde_json::to_value(AgentResponse::Status(StatusResult { ready: true, message: String::new() })).unwrap();
        assert_eq!(st, json!({"result":"status","ready":true}));
    }

    #[test]
    fn framing_by_newline_or_eof() {
        let mut wire = Vec::new();
        write_message(&mut wire, &AgentResponse::Done).unwrap();
        wire.extend_from_slice(b"trailing garbage");
        assert_eq!(read_message::<AgentResponse>(&mut wire.as_slice()).unwrap(), AgentResponse::Done);
        assert_eq!(read_message::<AgentResponse>(&mut &br#"{"result":"done"}"#[..]).unwrap(), AgentResponse::Done);
        assert!(matches!(read_message::<AgentResponse>(&mut &b""[..]), Err(FrameError::Empty)));
        assert!(matches!(read_message::<AgentResponse>(&mut &b"{\n"[..]), Err(FrameError::Invalid(_))));
        let huge = vec![b' '; MAX_MESSAGE_BYTES + 10];
        assert!(matches!(read_message::<AgentResponse>(&mut huge.as_slice()), Err(FrameError::TooLong)));
    }
}
