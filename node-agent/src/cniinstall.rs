//! Installs Skein's CNI plugin on the node: copies `skein-cni` into the CNI bin dir and
//! writes `10-skein.conflist` into the CNI conf dir. Both writes go through a temporary
//! file and a rename, so a container runtime never runs a half-copied plugin or reads a
//! half-written configuration.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

/// The configuration file's name: `10-` so that it sorts before most others.
pub const CONFLIST_NAME: &str = "10-skein.conflist";
/// The plugin's file name in the CNI bin dir.
pub const PLUGIN_NAME: &str = "skein-cni";

/// What to install where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniInstall {
    /// The `skein-cni` binary to copy.
    pub plugin: PathBuf,
    /// CNI bin dir.
    pub bin_dir: PathBuf,
    /// CNI conf dir.
    pub conf_dir: PathBuf,
    /// The agent's socket, written into the conflist.
    pub socket: PathBuf,
}

/// Why the install failed.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {source}")]
pub struct InstallError {
    /// The step.
    pub what: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// The cause.
    pub source: std::io::Error,
}

/// The conflist the agent writes: Skein first, then the reference `portmap` (hostPort)
/// and `bandwidth` (traffic shaping annotations) plugins.
pub fn conflist(socket: &Path) -> String {
    let value = serde_json::json!({
        "cniVersion": "1.1.0",
        "cniVersions": ["0.4.0", "1.0.0", "1.1.0"],
        "name": "skein",
        "plugins": [
            {"type": PLUGIN_NAME, "agentSocket": socket, "timeoutSeconds": 150},
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "bandwidth", "capabilities": {"bandwidth": true}}
        ]
    });
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
    text.push('\n');
    text
}

/// The plugin next to the running executable.
pub fn default_plugin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(PLUGIN_NAME)))
        .unwrap_or_else(|| PathBuf::from(PLUGIN_NAME))
}

fn write_via_rename(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|source| InstallError { what: "creating", path: dir.to_path_buf(), source })?;
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("skein")));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|source| {
        let _ = fs::remove_file(&tmp);
        InstallError { what: "writing", path: path.to_path_buf(), source }
    })
}

impl CniInstall {
    /// Copies the plugin and writes the conflist (rewriting both only when they differ).
    pub fn run(&self) -> Result<(), InstallError> {
        let plugin = fs::read(&self.plugin).map_err(|source| InstallError {
            what: "reading the plugin",
            path: self.plugin.clone(),
            source,
        })?;
        let target = self.bin_dir.join(PLUGIN_NAME);
        if fs::read(&target).ok().as_deref() != Some(&plugin[..]) {
            write_via_rename(&target, &plugin, 0o755)?;
            info!(plugin = %target.display(), bytes = plugin.len(), "CNI plugin installed");
        }
        let conf = self.conf_dir.join(CONFLIST_NAME);
        let text = conflist(&self.socket);
        if fs::read_to_string(&conf).ok().as_deref() != Some(text.as_str()) {
            write_via_rename(&conf, text.as_bytes(), 0o644)?;
            info!(conflist = %conf.display(), "CNI configuration written");
        }
        if let Ok(entries) = fs::read_dir(&self.conf_dir) {
            let mut earlier: Vec<String> = entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| {
                    (n.ends_with(".conf") || n.ends_with(".conflist") || n.ends_with(".json"))
                        && n.as_str() < CONFLIST_NAME
                })
                .collect();
            earlier.sort();
            if !earlier.is_empty() {
                warn!(
                    dir = %self.conf_dir.display(),
                    files = ?earlier,
                    "CNI configurations sort before {CONFLIST_NAME}: the container runtime uses the first, not Skein"
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_plugin_and_a_conflist_that_skein_cni_parses() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = dir.path().join("src-plugin");
        fs::write(&plugin, b"#!/bin/sh\n").unwrap();
        let install = CniInstall {
            plugin: plugin.clone(),
            bin_dir: dir.path().join("bin"),
            conf_dir: dir.path().join("net.d"),
            socket: PathBuf::from("/run/x/cni.sock"),
        };
        install.run().unwrap();
        let copied = dir.path().join("bin").join(PLUGIN_NAME);
        assert_eq!(fs::read(&copied).unwrap(), b"#!/bin/sh\n");
        assert_eq!(fs::metadata(&copied).unwrap().permissions().mode() & 0o777, 0o755);
        let text = fs::read_to_string(dir.path().join("net.d").join(CONFLIST_NAME)).unwrap();
        let parsed = skein_cni::ConfList::parse(text.as_bytes()).unwrap();
        assert_eq!(parsed.name, "skein");
        assert!(text.contains("/run/x/cni.sock"));
        // A second run with a changed plugin replaces it.
        fs::write(&plugin, b"v2").unwrap();
        install.run().unwrap();
        assert_eq!(fs::read(&copied).unwrap(), b"v2");
        // A missing plugin is an error naming it.
        let e = CniInstall { plugin: dir.path().join("nope"), ..install }.run().unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }
}
