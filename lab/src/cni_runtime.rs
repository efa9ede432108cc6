//! Invoking CNI plugins exactly as a container runtime does (containerd through libcni):
//! the first network configuration file of the node's conf dir, the chain's plugins found in
//! `CNI_PATH`, the environment, each plugin's stdin built like libcni (`name`, `cniVersion`,
//! the `runtimeConfig` its capabilities ask for, `prevResult`), ADD in order chaining the
//! results, DEL in reverse with the cached ADD result. Plugins run inside the node's network
//! namespace, where a runtime on that node would run them.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Map, Value, json};
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

/// One attachment: the sandbox and interface a runtime asks the chain to set up.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// `CNI_CONTAINERID`: the sandbox's container id.
    pub container_id: String,
    /// `CNI_NETNS`: the sandbox's namespace path.
    pub netns: PathBuf,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// Pod namespace, name, UID (for `CNI_ARGS`).
    pub pod_namespace: String,
    /// Pod name.
    pub pod_name: String,
    /// Pod UID.
    pub pod_uid: String,
    /// `runtimeConfig` offered to plugins that declare the capability (`portMappings`, …).
    pub runtime_config: Map<String, Value>,
}

impl Attachment {
    /// `CNI_ARGS` as containerd builds it.
    pub fn cni_args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            self.pod_namespace, self.pod_name, self.container_id, self.pod_uid
        )
    }
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

    async fn invoke(
        &self,
        plugin: &str,
        command: &str,
        attachment: Option<&Attachment>,
        stdin: &Value,
    ) -> Result<Option<Value>, CniCallError> {
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
        if let Some(a) = attachment {
            process
                .env("CNI_CONTAINERID", &a.container_id)
                .env("CNI_NETNS", &a.netns)
                .env("CNI_IFNAME", &a.ifname)
                .env("CNI_ARGS", a.cni_args());
        }
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

    /// ADD through the whole chain; returns the final result (what the runtime caches).
    pub async fn add(&self, conf: &LoadedConf, attachment: &Attachment) -> Result<Value, CniCallError> {
        let mut prev: Option<Value> = None;
        for (index, plugin) in conf.list.plugins.iter().enumerate() {
            let plugin_type = plugin.get("type").and_then(Value::as_str).unwrap_or_default().to_string();
            let stdin = conf
                .list
                .plugin_config(index, &conf.version, Some(&attachment.runtime_config), prev.as_ref())
                .unwrap_or(Value::Null);
            let result = self.invoke(&plugin_type, "ADD", Some(attachment), &stdin).await?;
            prev = Some(result.ok_or_else(|| CniCallError::Plugin {
                plugin: plugin_type,
                command: "ADD".into(),
                code: 0,
                msg: "no result on stdout".into(),
                details: String::new(),
            })?);
        }
        prev.ok_or_else(|| CniCallError::NotReady("the configuration lists no plugins".into()))
    }

    /// DEL through the chain in reverse, each plugin given the cached ADD result (from 0.4.0
    /// on). Goes on after a failing plugin and reports the first failure.
    pub async fn del(
        &self,
        conf: &LoadedConf,
        attachment: &Attachment,
        cached: Option<&Value>,
    ) -> Result<(), CniCallError> {
        let with_prev = !matches!(conf.version.as_str(), "0.1.0" | "0.2.0" | "0.3.0" | "0.3.1");
        let mut first_error = None;
        for (index, plugin) in conf.list.plugins.iter().enumerate().rev() {
            let plugin_type = plugin.get("type").and_then(Value::as_str).unwrap_or_default().to_string();
            let prev = if with_prev { cached } else { None };
            let stdin = conf
                .list
                .plugin_config(index, &conf.version, Some(&attachment.runtime_config), prev)
                .unwrap_or(Value::Null);
            if let Err(e) = self.invoke(&plugin_type, "DEL", Some(attachment), &stdin).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
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
        match self.invoke(&plugin_type, "STATUS", None, &stdin).await {
            Ok(_) => Ok(conf),
            Err(CniCallError::Plugin { code: 1, .. }) => Ok(conf),
            Err(e) => Err(e),
        }
    }
}

/// The pod's addresses in a CNI result: the `ips[]` entries of the interface named `ifname`
/// that has a `sandbox` (or, when the result names no interfaces, every entry).
pub fn pod_ips(result: &Value, ifname: &str) -> Vec<String> {
    let interfaces = result.get("interfaces").and_then(Value::as_array);
    let pod_index = interfaces.and_then(|list| {
        list.iter().position(|i| {
            i.get("name").and_then(Value::as_str) == Some(ifname)
                && i.get("sandbox").and_then(Value::as_str).is_some_and(|s| !s.is_empty())
        })
    });
    result
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|ip| match (pod_index, ip.get("interface").and_then(Value::as_u64)) {
            (Some(want), Some(got)) => got as usize == want,
            (Some(_), None) => false,
            (None, _) => true,
        })
        .filter_map(|ip| ip.get("address").and_then(Value::as_str))
        .map(|cidr| cidr.split('/').next().unwrap_or(cidr).to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_args_are_containerds() {
        let a = Attachment {
            container_id: "abc".into(),
            netns: "/run/netns/x".into(),
            ifname: "eth0".into(),
            pod_namespace: "demo".into(),
            pod_name: "web-1".into(),
            pod_uid: "u-1".into(),
            runtime_config: Map::new(),
        };
        assert_eq!(
            a.cni_args(),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web-1;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1"
        );
    }

    #[test]
    fn pod_ips_come_from_the_sandbox_interface() {
        let result = json!({
            "interfaces": [{"name": "sk0123"}, {"name": "eth0", "sandbox": "/run/netns/x"}],
            "ips": [{"address": "10.244.1.5/24", "interface": 1}, {"address": "192.0.2.9/32", "interface": 0},
                    {"address": "fd00::5/64", "interface": 1}]
        });
        assert_eq!(pod_ips(&result, "eth0"), ["10.244.1.5", "fd00::5"]);
        assert_eq!(pod_ips(&json!({"ips": [{"address": "10.0.0.2/8"}]}), "eth0"), ["10.0.0.2"]);
        assert!(pod_ips(&json!({}), "eth0").is_empty());
    }

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
