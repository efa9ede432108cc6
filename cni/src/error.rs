//! CNI error results: the spec's codes, Skein's own (≥ 100), and the JSON the runtime reads
//! from stdout.

use serde::{Deserialize, Serialize};

use crate::version::CniVersion;

/// Incompatible CNI version.
pub const CODE_INCOMPATIBLE_VERSION: u32 = 1;
/// Unsupported field in the network configuration (the message names key and value).
pub const CODE_UNSUPPORTED_FIELD: u32 = 2;
/// Container unknown or does not exist.
pub const CODE_UNKNOWN_CONTAINER: u32 = 3;
/// Invalid necessary environment variables (the message names them).
pub const CODE_INVALID_ENVIRONMENT: u32 = 4;
/// I/O failure (for example reading stdin).
pub const CODE_IO_FAILURE: u32 = 5;
/// Failed to decode content (stdin is not JSON).
pub const CODE_DECODING_FAILURE: u32 = 6;
/// Invalid network configuration (the message names the field).
pub const CODE_INVALID_NETWORK_CONFIG: u32 = 7;
/// Try again later: a transient condition such as the node agent not being ready.
pub const CODE_TRY_AGAIN_LATER: u32 = 11;
/// STATUS: the plugin is not available (the node agent is unreachable or not ready).
pub const CODE_PLUGIN_NOT_AVAILABLE: u32 = 50;
/// STATUS: the plugin is available but with limited connectivity.
pub const CODE_LIMITED_CONNECTIVITY: u32 = 51;
/// Skein: a netlink or namespace operation failed.
pub const CODE_SYSTEM_FAILURE: u32 = 100;
/// Skein: the interface to be created already exists (ADD repeated without DEL).
pub const CODE_INTERFACE_EXISTS: u32 = 101;
/// Skein: the node agent answered something that is not a valid protocol message.
pub const CODE_AGENT_PROTOCOL: u32 = 102;
/// Skein: CHECK found the interface different from what `prevResult` says.
pub const CODE_CHECK_FAILED: u32 = 103;

/// A CNI error result: printed as JSON on stdout with a non-zero exit status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("CNI error {code}: {msg}")]
pub struct CniError {
    /// One of the `CODE_*` constants (or an agent's code passed through).
    pub code: u32,
    /// A short message naming the problem.
    pub msg: String,
    /// Longer detail (the underlying error), may be empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    /// An error with a code and message and no details.
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError { code, msg: msg.into(), details: String::new() }
    }

    /// Adds details (usually the `Display` of the underlying error).
    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    /// Code 4, naming the variable.
    pub fn invalid_env(variable: &str, problem: impl std::fmt::Display) -> CniError {
        CniError::new(CODE_INVALID_ENVIRONMENT, format!("{variable}: {problem}"))
    }

    /// Code 7, naming the field.
    pub fn invalid_config(field: &str, problem: impl std::fmt::Display) -> CniError {
        CniError::new(CODE_INVALID_NETWORK_CONFIG, format!("network config field {field:?}: {problem}"))
    }

    /// The error JSON the runtime reads, in the given version (`cniVersion` is the first key).
    pub fn to_json(&self, version: &str) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        map.insert("cniVersion".into(), version.into());
        map.insert("code".into(), self.code.into());
        map.insert("msg".into(), self.msg.clone().into());
        if !self.details.is_empty() {
            map.insert("details".into(), self.details.clone().into());
        }
        serde_json::Value::Object(map)
    }

    /// The error JSON for a known version.
    pub fn to_json_for(&self, version: CniVersion) -> serde_json::Value {
        self.to_json(version.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_spec_keys() {
        let e = CniError::invalid_env("CNI_NETNS", "is not set");
        let v = e.to_json_for(CniVersion::V1_0_0);
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["code"], 4);
        assert_eq!(v["msg"], "CNI_NETNS: is not set");
        assert!(v.get("details").is_none());
        let v = CniError::new(11, "agent not ready").with_details("connection refused").to_json("0.4.0");
        assert_eq!(v["details"], "connection refused");
        assert_eq!(v["cniVersion"], "0.4.0");
    }

    #[test]
    fn invalid_config_names_the_field() {
        let e = CniError::invalid_config("timeoutSeconds", "must be a positive integer");
        assert_eq!(e.code, CODE_INVALID_NETWORK_CONFIG);
        assert!(e.msg.contains("\"timeoutSeconds\""));
    }
}
