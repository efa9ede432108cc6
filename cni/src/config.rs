//! Network configuration: the single-plugin config the runtime writes to the plugin's stdin,
//! and the `.conflist` file it is derived from (with libcni's insertion of `name`,
//! `cniVersion`, `runtimeConfig` and `prevResult` per plugin).
//!
//! Parsing is by hand over `serde_json::Value` so that every error names the field: not JSON
//! is code 6, a bad field is code 7, an unsupported `cniVersion` is code 1.

use std::path::PathBuf;

use serde_json::{Map, Value};

use crate::error::{CODE_DECODING_FAILURE, CODE_INCOMPATIBLE_VERSION, CniError};
use crate::version::{CniVersion, compare_dotted};

/// Where the node agent listens unless `agentSocket` says otherwise.
pub const DEFAULT_AGENT_SOCKET: &str = "/var/run/skein/cni.sock";
/// How long the plugin waits for the agent's answer unless `timeoutSeconds` says otherwise.
/// Longer than the agent's own ADD wait (2 min) so the agent's error, not ours, is reported.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 150;
/// The largest accepted `timeoutSeconds`.
pub const MAX_TIMEOUT_SECONDS: u64 = 3600;
/// The plugin's `type`.
pub const PLUGIN_TYPE: &str = "skein-cni";

/// An attachment the runtime still considers valid (GC's `cni.dev/valid-attachments`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Attachment {
    /// The container id of the attachment.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// The interface name inside the container.
    pub ifname: String,
}

/// The configuration of one invocation of this plugin (stdin).
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// The spec version to speak (and to answer in).
    pub cni_version: CniVersion,
    /// The network's name.
    pub name: String,
    /// The plugin type (the binary's name).
    pub plugin_type: String,
    /// The agent's Unix socket (`agentSocket`).
    pub agent_socket: PathBuf,
    /// Seconds to wait for the agent's answer (`timeoutSeconds`).
    pub timeout_seconds: u64,
    /// Where to write logs instead of stderr (`logFile`).
    pub log_file: Option<PathBuf>,
    /// `runtimeConfig`, as given.
    pub runtime_config: Option<Value>,
    /// `prevResult`, as given (decoded by [`crate::result::CniResult::from_json`]).
    pub prev_result: Option<Value>,
    /// GC's list of valid attachments (`cni.dev/valid-attachments`, or `cni.dev/attachments`).
    pub valid_attachments: Option<Vec<Attachment>>,
    /// `disableCheck`.
    pub disable_check: bool,
    /// `disableGC`.
    pub disable_gc: bool,
}

/// Parses stdin into a JSON object, or code 6.
pub fn decode_object(bytes: &[u8]) -> Result<Map<String, Value>, CniError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(CniError::new(CODE_DECODING_FAILURE, "network config on stdin is not a JSON object")),
        Err(e) => Err(CniError::new(CODE_DECODING_FAILURE, "network config on stdin is not valid JSON")
            .with_details(e.to_string())),
    }
}

fn string_field(map: &Map<String, Value>, field: &str, required: bool) -> Result<Option<String>, CniError> {
    match map.get(field) {
        None | Some(Value::Null) if required => Err(CniError::invalid_config(field, "is required")),
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if required && s.is_empty() => Err(CniError::invalid_config(field, "must not be empty")),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(CniError::invalid_config(field, format!("must be a string, got {other}"))),
    }
}

fn bool_field(map: &Map<String, Value>, field: &str) -> Result<bool, CniError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(CniError::invalid_config(field, format!("must be true or false, got {other}"))),
    }
}

fn parse_attachments(field: &str, value: &Value) -> Result<Vec<Attachment>, CniError> {
    let Value::Array(items) = value else {
        return Err(CniError::invalid_config(field, "must be a list of {\"containerID\", \"ifname\"}"));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            serde_json::from_value::<Attachment>(item.clone())
                .map_err(|e| CniError::invalid_config(&format!("{field}[{i}]"), e))
        })
        .collect()
}

impl NetConf {
    /// Parses the plugin's stdin.
    pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
        let map = decode_object(bytes)?;
        NetConf::from_map(&map)
    }

    /// Parses an already-decoded JSON object.
    pub fn from_map(map: &Map<String, Value>) -> Result<NetConf, CniError> {
        let version_text = string_field(map, "cniVersion", true)?.unwrap_or_default();
        let cni_version = CniVersion::parse(&version_text).ok_or_else(|| {
            CniError::new(
                CODE_INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion {version_text:?} is not supported (supported: {})",
                    CniVersion::ALL.map(CniVersion::as_str).join(", ")
                ),
            )
        })?;
        let name = string_field(map, "name", true)?.unwrap_or_default();
        let plugin_type = string_field(map, "type", true)?.unwrap_or_default();
        let agent_socket = match string_field(map, "agentSocket", false)? {
            Some(p) if p.starts_with('/') && !p.contains('\0') => PathBuf::from(p),
            Some(p) => return Err(CniError::invalid_config("agentSocket", format!("{p:?} is not an absolute path"))),
            None => PathBuf::from(DEFAULT_AGENT_SOCKET),
        };
        let timeout_seconds = match map.get("timeoutSeconds") {
            None | Some(Value::Null) => DEFAULT_TIMEOUT_SECONDS,
            Some(v) => match v.as_u64() {
                Some(t) if (1..=MAX_TIMEOUT_SECONDS).contains(&t) => t,
                _ => {
                    return Err(CniError::invalid_config(
                        "timeoutSeconds",
                        format!("must be an integer from 1 to {MAX_TIMEOUT_SECONDS}, got {v}"),
                    ));
                }
            },
        };
        let log_file = match string_field(map, "logFile", false)? {
            Some(p) if p.is_empty() => None,
            Some(p) if p.starts_with('/') && !p.contains('\0') => Some(PathBuf::from(p)),
            Some(p) => return Err(CniError::invalid_config("logFile", format!("{p:?} is not an absolute path"))),
            None => None,
        };
        let runtime_config = match map.get("runtimeConfig") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(other) => {
                return Err(CniError::invalid_config("runtimeConfig", format!("must be an object, got {other}")));
            }
        };
        let prev_result = match map.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(other) => {
                return Err(CniError::invalid_config("prevResult", format!("must be an object, got {other}")));
            }
        };
        let valid_attachments = match (map.get("cni.dev/valid-attachments"), map.get("cni.dev/attachments")) {
            (Some(v), _) if !v.is_null() => Some(parse_attachments("cni.dev/valid-attachments", v)?),
            (_, Some(v)) if !v.is_null() => Some(parse_attachments("cni.dev/attachments", v)?),
            _ => None,
        };
        Ok(NetConf {
            cni_version,
            name,
            plugin_type,
            agent_socket,
            timeout_seconds,
            log_file,
            runtime_config,
            prev_result,
            valid_attachments,
            disable_check: bool_field(map, "disableCheck")?,
            disable_gc: bool_field(map, "disableGC")?,
        })
    }
}

/// A network configuration list (`/etc/cni/net.d/10-skein.conflist`).
#[derive(Debug, Clone, PartialEq)]
pub struct ConfList {
    /// `cniVersion`.
    pub cni_version: String,
    /// `cniVersions` (1.1.0): every version the list is valid for.
    pub cni_versions: Vec<String>,
    /// The network name.
    pub name: String,
    /// `disableCheck`.
    pub disable_check: bool,
    /// `disableGC`.
    pub disable_gc: bool,
    /// The plugin configs in chain order, as written.
    pub plugins: Vec<Map<String, Value>>,
}

impl ConfList {
    /// Parses a `.conflist` file.
    pub fn parse(bytes: &[u8]) -> Result<ConfList, CniError> {
        let map = decode_object(bytes)?;
        let cni_version = string_field(&map, "cniVersion", false)?.unwrap_or_default();
        let cni_versions = match map.get("cniVersions") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(CniError::invalid_config("cniVersions", format!("must list strings, got {other}"))),
                })
                .collect::<Result<_, _>>()?,
            Some(other) => return Err(CniError::invalid_config("cniVersions", format!("must be a list, got {other}"))),
        };
        if cni_version.is_empty() && cni_versions.is_empty() {
            return Err(CniError::invalid_config("cniVersion", "is required (or cniVersions)"));
        }
        let name = string_field(&map, "name", true)?.unwrap_or_default();
        let plugins = match map.get("plugins") {
            Some(Value::Array(items)) if !items.is_empty() => items
                .iter()
                .enumerate()
                .map(|(i, p)| match p {
                    Value::Object(m) => match m.get("type") {
                        Some(Value::String(t)) if !t.is_empty() => Ok(m.clone()),
                        _ => Err(CniError::invalid_config(&format!("plugins[{i}].type"), "is required")),
                    },
                    other => Err(CniError::invalid_config(
                        &format!("plugins[{i}]"),
                        format!("must be an object, got {other}"),
                    )),
                })
                .collect::<Result<_, _>>()?,
            _ => return Err(CniError::invalid_config("plugins", "must be a non-empty list")),
        };
        Ok(ConfList {
            cni_version,
            cni_versions,
            name,
            disable_check: bool_field(&map, "disableCheck")?,
            disable_gc: bool_field(&map, "disableGC")?,
            plugins,
        })
    }

    /// The version a runtime supporting `runtime_supported` uses: the highest of
    /// `cniVersions` it supports, else `cniVersion` (libcni's rule).
    pub fn negotiate_version(&self, runtime_supported: &[&str]) -> Option<String> {
        let best = self
            .cni_versions
            .iter()
            .filter(|v| runtime_supported.contains(&v.as_str()))
            .max_by(|a, b| compare_dotted(a, b).unwrap_or(std::cmp::Ordering::Equal));
        match best {
            Some(v) => Some(v.clone()),
            None if !self.cni_version.is_empty() => Some(self.cni_version.clone()),
            None => None,
        }
    }

    /// The stdin of plugin `index` as libcni builds it: the plugin's own keys plus `name`,
    /// `cniVersion`, the `runtimeConfig` entries the plugin declared in `capabilities`, and
    /// `prevResult` when given. `None` when `index` is out of range.
    pub fn plugin_config(
        &self,
        index: usize,
        cni_version: &str,
        runtime_config: Option<&Map<String, Value>>,
        prev_result: Option<&Value>,
    ) -> Option<Value> {
        let mut conf = self.plugins.get(index)?.clone();
        conf.insert("name".into(), self.name.clone().into());
        conf.insert("cniVersion".into(), cni_version.into());
        if let (Some(Value::Object(caps)), Some(rc)) = (conf.get("capabilities"), runtime_config) {
            let selected: Map<String, Value> = rc
                .iter()
                .filter(|(k, _)| caps.get(k.as_str()) == Some(&Value::Bool(true)))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if !selected.is_empty() {
                conf.insert("runtimeConfig".into(), Value::Object(selected));
            }
        }
        if let Some(prev) = prev_result {
            conf.insert("prevResult".into(), prev.clone());
        }
        Some(Value::Object(conf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::CODE_INVALID_NETWORK_CONFIG;
    use serde_json::json;

    fn parse(v: Value) -> Result<NetConf, CniError> {
        NetConf::parse(v.to_string().as_bytes())
    }

    #[test]
    fn defaults_and_skein_keys() {
        let c = parse(json!({"cniVersion":"1.0.0","name":"skein","type":"skein-cni"})).unwrap();
        assert_eq!(c.cni_version, CniVersion::V1_0_0);
        assert_eq!(c.agent_socket, PathBuf::from(DEFAULT_AGENT_SOCKET));
        assert_eq!(c.timeout_seconds, 150);
        assert_eq!(c.log_file, None);
        let c = parse(json!({"cniVersion":"1.1.0","name":"skein","type":"skein-cni","agentSocket":"/tmp/a.sock",
            "timeoutSeconds":5,"logFile":"/var/log/skein-cni.log","disableCheck":true,
            "cni.dev/attachments":[{"containerID":"c1","ifname":"eth0"}]}))
        .unwrap();
        assert_eq!(c.agent_socket, PathBuf::from("/tmp/a.sock"));
        assert_eq!(c.timeout_seconds, 5);
        assert_eq!(c.log_file, Some(PathBuf::from("/var/log/skein-cni.log")));
        assert!(c.disable_check);
        assert_eq!(c.valid_attachments.unwrap()[0].container_id, "c1");
    }

    #[test]
    fn valid_attachments_preferred_over_attachments() {
        let c = parse(json!({"cniVersion":"1.1.0","name":"n","type":"t",
            "cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}],
            "cni.dev/attachments":[{"containerID":"b","ifname":"eth0"}]}))
        .unwrap();
        assert_eq!(c.valid_attachments.unwrap()[0].container_id, "a");
    }

    #[test]
    fn errors_name_the_field_and_use_the_right_code() {
        let e = NetConf::parse(b"{nope").unwrap_err();
        assert_eq!(e.code, 6);
        assert_eq!(NetConf::parse(b"[1]").unwrap_err().code, 6);
        let e = parse(json!({"cniVersion":"9.9.9","name":"n","type":"t"})).unwrap_err();
        assert_eq!(e.code, 1);
        assert!(e.msg.contains("9.9.9"));
        let cases = [
            (json!({"name":"n","type":"t"}), "cniVersion"),
            (json!({"cniVersion":"1.0.0","type":"t"}), "name"),
            (json!({"cniVersion":"1.0.0","name":"n"}), "type"),
            (json!({"cniVersion":"1.0.0","name":"n","type":"t","timeoutSeconds":0}), "timeoutSeconds"),
            (json!({"cniVersion":"1.0.0","name":"n","type":"t","timeoutSeconds":"5"}), "timeoutSeconds"),
            (json!({"cniVersion":"1.0.0","name":"n","type":"t","agentSocket":"rel"}), "agentSocket"),
            (json!({"cniVersion":"1.0.0","name":"n","type":"t","logFile":3}), "logFile"),
            (json!({"cniVersion":"1.0.0","name":"n","type":"t","prevResult":[]}), "prevResult"),
            (json!({"cniVersion":"1.0.0","name":"n","type":"t","disableCheck":"yes"}), "disableCheck"),
            (
                json!({"cniVersion":"1.1.0","name":"n","type":"t","cni.dev/valid-attachments":[{"ifname":"x"}]}),
                "cni.dev/valid-attachments[0]",
            ),
        ];
        for (conf, field) in cases {
            let e = parse(conf.clone()).unwrap_err();
            assert_eq!(e.code, CODE_INVALID_NETWORK_CONFIG, "{conf}");
            assert!(e.msg.contains(&format!("{field:?}")), "{} does not name {field}", e.msg);
        }
    }

    #[test]
    fn conflist_negotiates_and_injects_like_libcni() {
        let list = ConfList::parse(
            json!({"cniVersion":"1.0.0","cniVersions":["0.4.0","1.0.0","1.1.0"],"name":"skein",
                "plugins":[{"type":"skein-cni"},{"type":"portmap","capabilities":{"portMappings":true}}]})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(list.negotiate_version(&["0.4.0", "1.0.0", "1.1.0"]).unwrap(), "1.1.0");
        assert_eq!(list.negotiate_version(&["0.4.0", "1.0.0"]).unwrap(), "1.0.0");
        assert_eq!(list.negotiate_version(&["0.3.1"]).unwrap(), "1.0.0");
        let rc = json!({"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}],"bandwidth":{}});
        let prev = json!({"cniVersion":"1.0.0"});
        let conf = list.plugin_config(1, "1.0.0", rc.as_object(), Some(&prev)).unwrap();
        assert_eq!(conf["name"], "skein");
        assert_eq!(conf["cniVersion"], "1.0.0");
        assert_eq!(conf["prevResult"], prev);
        assert!(conf["runtimeConfig"].get("portMappings").is_some());
        assert!(conf["runtimeConfig"].get("bandwidth").is_none());
        let first = list.plugin_config(0, "1.0.0", rc.as_object(), None).unwrap();
        assert!(first.get("runtimeConfig").is_none() && first.get("prevResult").is_none());
        assert!(list.plugin_config(2, "1.0.0", None, None).is_none());
    }

    #[test]
    fn conflist_errors() {
        assert_eq!(ConfList::parse(br#"{"name":"n","plugins":[{"type":"t"}]}"#).unwrap_err().code, 7);
        assert!(
            ConfList::parse(br#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#).unwrap_err().msg.contains("plugins")
        );
        assert!(
            ConfList::parse(br#"{"cniVersion":"1.0.0","name":"n","plugins":[{}]}"#)
                .unwrap_err()
                .msg
                .contains("plugins[0].type")
        );
    }
}
