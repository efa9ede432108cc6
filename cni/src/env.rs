//! The invocation environment: `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`,
//! `CNI_ARGS`, `CNI_PATH`. Which variables are required depends on the command; a missing or
//! malformed one is an invalid-environment error (code 4) naming it.

use std::collections::BTreeMap;
use std::fmt;

use crate::args::CniArgs;
use crate::error::CniError;

/// A CNI operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// Attach a container to the network.
    Add,
    /// Detach it; idempotent.
    Del,
    /// Verify an attachment still matches its result.
    Check,
    /// Report whether the plugin is ready for ADDs.
    Status,
    /// Remove attachments not in the runtime's list of valid ones.
    Gc,
    /// Report the supported spec versions.
    Version,
}

impl Command {
    /// Parses the `CNI_COMMAND` value.
    pub fn parse(text: &str) -> Option<Command> {
        Some(match text {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }

    /// The `CNI_COMMAND` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `CNI_*` environment variables of one invocation, as given (unvalidated).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniEnv {
    vars: BTreeMap<String, String>,
}

impl CniEnv {
    /// From `(name, value)` pairs; names that do not start with `CNI_` are ignored.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> CniEnv {
        let vars =
            pairs.into_iter().map(|(k, v)| (k.into(), v.into())).filter(|(k, _)| k.starts_with("CNI_")).collect();
        CniEnv { vars }
    }

    /// The process's environment. A value that is not UTF-8 is converted lossily, so that it
    /// fails validation later with a message naming the variable.
    pub fn from_process() -> CniEnv {
        CniEnv::from_pairs(
            std::env::vars_os().map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into_owned())),
        )
    }

    /// A variable's value; an empty value counts as unset.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// A required variable, or code 4 naming it.
    pub fn require(&self, name: &str) -> Result<&str, CniError> {
        self.get(name).ok_or_else(|| CniError::invalid_env(name, "is required but not set"))
    }

    /// `CNI_COMMAND`, parsed.
    pub fn command(&self) -> Result<Command, CniError> {
        let text = self.require("CNI_COMMAND")?;
        Command::parse(text).ok_or_else(|| {
            CniError::invalid_env(
                "CNI_COMMAND",
                format!("unknown command {text:?} (want ADD, DEL, CHECK, STATUS, GC or VERSION)"),
            )
        })
    }

    /// `CNI_CONTAINERID`, required and validated: non-empty, no whitespace or control
    /// characters, at most 1024 bytes.
    pub fn container_id(&self) -> Result<&str, CniError> {
        let id = self.require("CNI_CONTAINERID")?;
        if id.len() > 1024 || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(CniError::invalid_env("CNI_CONTAINERID", format!("{id:?} is not a valid container id")));
        }
        Ok(id)
    }

    /// `CNI_IFNAME`, required and validated as a Linux interface name.
    pub fn ifname(&self) -> Result<&str, CniError> {
        let name = self.require("CNI_IFNAME")?;
        validate_ifname(name).map_err(|why| CniError::invalid_env("CNI_IFNAME", format!("{name:?} {why}")))?;
        Ok(name)
    }

    /// `CNI_NETNS` when set (it must be an absolute path).
    pub fn netns(&self) -> Result<Option<&str>, CniError> {
        match self.get("CNI_NETNS") {
            None => Ok(None),
            Some(p) if p.starts_with('/') && !p.contains('\0') => Ok(Some(p)),
            Some(p) => Err(CniError::invalid_env("CNI_NETNS", format!("{p:?} is not an absolute path"))),
        }
    }

    /// `CNI_NETNS`, required.
    pub fn require_netns(&self) -> Result<&str, CniError> {
        self.netns()?.ok_or_else(|| CniError::invalid_env("CNI_NETNS", "is required but not set"))
    }

    /// `CNI_ARGS`, parsed (empty when unset).
    pub fn args(&self) -> Result<CniArgs, CniError> {
        CniArgs::parse(self.get("CNI_ARGS").unwrap_or(""))
    }

    /// `CNI_PATH` split on `:` (empty when unset).
    pub fn path(&self) -> Vec<&str> {
        self.get("CNI_PATH").map(|p| p.split(':').filter(|s| !s.is_empty()).collect()).unwrap_or_default()
    }
}

/// Checks a Linux interface name: 1–15 bytes, not `.` or `..`, no `/`, `:`, whitespace or
/// control characters (the kernel's `dev_valid_name`, plus `:` which iproute2 rejects).
pub fn validate_ifname(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 15 {
        return Err("must be 1 to 15 bytes long");
    }
    if name == "." || name == ".." {
        return Err("is not a valid interface name");
    }
    if name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control()) {
        return Err("contains '/', ':', whitespace or a control character");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> CniEnv {
        CniEnv::from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn reads_commands_and_names_missing_variables() {
        let e = env(&[("CNI_COMMAND", "ADD"), ("PATH", "/bin")]);
        assert_eq!(e.command().unwrap(), Command::Add);
        assert_eq!(e.get("PATH"), None);
        let err = e.container_id().unwrap_err();
        assert_eq!(err.code, 4);
        assert!(err.msg.contains("CNI_CONTAINERID"));
        let err = env(&[("CNI_COMMAND", "FROB")]).command().unwrap_err();
        assert!(err.msg.contains("CNI_COMMAND") && err.msg.contains("FROB"));
        assert!(env(&[]).command().unwrap_err().msg.contains("CNI_COMMAND"));
    }

    #[test]
    fn validates_ifname_and_netns() {
        assert!(env(&[("CNI_IFNAME", "eth0")]).ifname().is_ok());
        for bad in ["a/b", "..", "0123456789abcdef", "a b", "a:1"] {
            assert!(env(&[("CNI_IFNAME", bad)]).ifname().is_err(), "{bad}");
        }
        assert_eq!(env(&[]).netns().unwrap(), None);
        assert!(env(&[("CNI_NETNS", "relative")]).netns().is_err());
        assert_eq!(env(&[("CNI_NETNS", "/var/run/netns/x")]).require_netns().unwrap(), "/var/run/netns/x");
        assert!(env(&[]).require_netns().unwrap_err().msg.contains("CNI_NETNS"));
        assert_eq!(env(&[("CNI_PATH", "/opt/cni/bin::/usr/lib/cni")]).path(), vec!["/opt/cni/bin", "/usr/lib/cni"]);
    }
}
