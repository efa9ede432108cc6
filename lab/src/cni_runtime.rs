//! The network plugin's own readiness, asked as a runtime on libcni ≥ 1.2 asks it: CNI
//! `STATUS` to the first plugin of the node's first configuration file (lexical order), run
//! inside the node's network namespace. Pods are set up by the node's real runtime
//! (containerd, `crate::containerd`), which never calls STATUS; the lab asks it itself to
//! know when a restarted agent serves the plugin again.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use skein_cni::config::ConfList;
use tokio::io::AsyncWriteExt;

use crate::sys;

/// The CNI versions the lab's runtime speaks: those of Debian's containerd 1.6 (libcni 1.1),
/// whose reference plugins (portmap, bandwidth) speak at most 1.0.0.
pub const RUNTIME_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
/// How long one plugin invocation may take (the Skein plugin itself gives up after 150 s).
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(180);

/// A failed CNI operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CniCallError {
    /// No usable network configuration yet.
    #[error("network plugin not ready: {0}")]
    NotReady(String),
    /// A plugin of the chain is not in `CNI_PATH`.
    #[error("plugin {plugin:?} not found in {path}")]
    PluginNotFound {
        /// The plugin type.
        plugin: String,
        /// The search path.
        path: String,
    },
    /// A plugin answered with an error (or crashed).
    #[error("plugin {plugin} {command} failed: code {code}: {msg}{}", if details.is_empty() { String::new() } else { format!(" ({details})") })]
    Plugin {
        /// The plugin type.
        plugin: String,
        /// ADD, DEL, STATUS.
        command: String,
        /// CNI error code (0 when the plugin gave none).
        code: u64,
        /// Message.
        msg: String,
        /// Details.
        details: String,
    },
}

/// The CNI side of one node's runtime.
#[derive(Debug, Clone)]
pub struct NodeCni {
    /// The node's network namespace (plugins run there).
    pub node_netns: String,
    /// The node's CNI configuration directory.
    pub conf_dir: PathBuf,
    /// `CNI_PATH`, in search order.
    pub bin_dirs: Vec<PathBuf>,
}

/// A loaded network configuration.
#[derive(Debug, Clone)]
pub struct LoadedConf {
    /// The file it came from.
    pub file: PathBuf,
    /// The list.
    pub list: ConfList,
    /// The version negotiated with [`RUNTIME_VERSIONS`].
    pub version: String,
}

impl NodeCni {
    /// Loads the first configuration file of the conf dir in lexical order (containerd loads
    /// only that one): `*.conflist`, or a single-plugin `*.conf`/`*.json` wrapped in a list.
    pub fn load(&self) -> Result<LoadedConf, CniCallError> {
        let entries = std::fs::read_dir(&self.conf_dir)
            .map_err(|e| CniCallError::NotReady(format!("cannot read {}: {e}", self.conf_dir.display())))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e, "conflist" | "conf" | "json"))
            })
            .collect();
        files.sort();
        let Some(file) = files.into_iter().next() else {
            return Err(CniCallError::NotReady(format!("no CNI configuration file in {}", self.conf_dir.display())));
        };
        let bytes =
            std::fs::read(&file).map_err(|e| CniCallError::NotReady(format!("cannot read {}: {e}", file.display())))?;
        let list = if file.extension().is_some_and(|e| e == "conflist") {
            ConfList::parse(&bytes)
        } else {
            // A single plugin's config: libcni's ConfListFromConf.
            serde_json::from_slice::<Value>(&bytes)
                .map_err(|e| skein_cni::error::CniError::new(6, e.to_string()))
                .and_then(|conf| {
                    let list = json!({
                        "cniVersion": conf.get("cniVersion").cloned().unwrap_or(Value::Null),
                        "name": conf.get("name").cloned().unwrap_or(Value::Null),
                        "plugins": [conf],
                    });
                    ConfList::parse(list.to_string().as_bytes())
                })
        }
        .map_err(|e| CniCallError::NotReady(format!("{}: {}", file.display(), e.msg)))?;
        let version = list
            .negotiate_version(RUNTIME_VERSIONS)
            .ok_or_else(|| CniCallError::NotReady(format!("{}: no cniVersion this runtime speaks", file.display())))?;
        Ok(LoadedConf { file, list, version })
    }

    fn cni_path(&self) -> String {
        self.bin_dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":")
    }

    fn find_plugin(&self, plugin: &str) -> Result<PathBuf, CniCallError> {
        self.bin_dirs
            .iter()
            .map(|dir| dir.join(plugin))
            .find(|path| path.is_file())
            .ok_or_else(|| CniCallError::PluginNotFound { plugin: plugin.to_string(), path: self.cni_path() })
    }

    async fn invoke(&self, plugin: &str, command: &str, stdin: &Value) -> Result<Option<Value>, CniCallError> {
        let binary = self.find_plugin(plugin)?;
        let mut process = sys::async_command_in_netns(&self.node_netns, &binary);
        process
            .env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_PATH", self.cni_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let failed = |code: u64, msg: String| CniCallError::Plugin {
            plugin: plugin.to_string(),
            command: command.to_string(),
            code,
            msg,
            details: String::new(),
        };
        let mut child = process.spawn().map_err(|e| failed(0, format!("cannot start {}: {e}", binary.display())))?;
        if let Some(mut input) = child.stdin.take() {
            let bytes = stdin.to_string().into_bytes();
            // A plugin that exits without reading its stdin is reported by its exit status.
            let _ = input.write_all(&bytes).await;
        }
        let output = match tokio::time::timeout(PLUGIN_TIMEOUT, child.wait_with_output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => return Err(failed(0, format!("waiting for it: {e}"))),
            Err(_) => return Err(failed(0, format!("no answer within {} s", PLUGIN_TIMEOUT.as_secs()))),
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        let parsed: Option<Value> =
            if stdout.trim().is_empty() { None } else { serde_json::from_str(stdout.trim()).ok() };
        if output.status.success() {
            return match (parsed, stdout.trim().is_empty()) {
                (Some(v), _) => Ok(Some(v)),
                (None, true) => Ok(None),
                (None, false) => Err(failed(0, format!("output is not JSON: {}", stdout.trim()))),
            };
        }
        // libcni reads the error from stdout, stderr only when stdout is empty.
        match parsed {
            Some(error) if error.get("code").is_some() => Err(CniCallError::Plugin {
                plugin: plugin.to_string(),
                command: command.to_string(),
                code: error["code"].as_u64().unwrap_or(0),
                msg: error["msg"].as_str().unwrap_or("").to_string(),
                details: error["details"].as_str().unwrap_or("").to_string(),
            }),
            _ => {
                let stderr = String::from_utf8_lossy(&output.stderr);
                let text = if stdout.trim().is_empty() { stderr.trim() } else { stdout.trim() };
                Err(failed(0, format!("{}: {text}", output.status)))
            }
        }
    }

    /// The network's readiness: the configuration loads, and the first plugin answers STATUS
    /// (CNI 1.1.0, as libcni ≥ 1.2 runtimes ask; older plugins answer "unsupported version",
    /// which counts as ready).
    pub async fn status(&self) -> Result<LoadedConf, CniCallError> {
        let conf = self.load()?;
        let Some(first) = conf.list.plugins.first() else {
            return Err(CniCallError::NotReady("the configuration lists no plugins".into()));
        };
        let plugin_type = first.get("type").and_then(Value::as_str).unwrap_or_default().to_string();
        let stdin = conf.list.plugin_config(0, "1.1.0", None, None).unwrap_or(Value::Null);
        match self.invoke(&plugin_type, "STATUS", &stdin).await {
            Ok(_) => Ok(conf),
            Err(CniCallError::Plugin { code: 1, .. }) => Ok(conf),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_the_first_file_and_negotiates_a_version_the_reference_plugins_speak() {
        let dir = tempfile::tempdir().unwrap();
        let node = NodeCni { node_netns: "x".into(), conf_dir: dir.path().into(), bin_dirs: vec![] };
        assert!(matches!(node.load(), Err(CniCallError::NotReady(m)) if m.contains("no CNI configuration")));
        std::fs::write(
            dir.path().join("10-skein.conflist"),
            r#"{"cniVersion":"1.1.0","cniVersions":["0.4.0","1.0.0","1.1.0"],"name":"skein",
                "plugins":[{"type":"skein-cni"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("99-other.conf"), r#"{"cniVersion":"0.4.0","name":"o","type":"bridge"}"#)
            .unwrap();
        let conf = node.load().unwrap();
        assert!(conf.file.ends_with("10-skein.conflist"));
        assert_eq!(conf.version, "1.0.0");
        assert_eq!(conf.list.plugins.len(), 2);
        std::fs::remove_file(dir.path().join("10-skein.conflist")).unwrap();
        let conf = node.load().unwrap();
        assert_eq!((conf.list.name.as_str(), conf.version.as_str()), ("o", "0.4.0"));
        std::fs::write(dir.path().join("00-bad.conflist"), "{").unwrap();
        assert!(matches!(node.load(), Err(CniCallError::NotReady(m)) if m.contains("00-bad.conflist")));
    }
}
