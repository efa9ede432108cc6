//! Installs Skein's CNI plugin on the node: copies `skein-cni` into the CNI bin dir, makes
//! sure the reference plugins the conflist chains after it (`portmap`, `bandwidth`) are
//! there too, asks each of them which CNI versions it speaks (`CNI_COMMAND=VERSION`), and
//! writes `10-skein.conflist` with the versions the whole chain speaks.
//!
//! Why ask: a runtime on libcni 1.1 (containerd 1.6) hands the list's `cniVersion` to every
//! plugin of the chain and ignores `cniVersions`; runtimes on libcni ≥ 1.2 (containerd
//! 1.7/2.x, CRI-O) pick the highest of `cniVersions` they know. So `cniVersions` lists
//! exactly what every plugin of the chain speaks, and `cniVersion` is the highest of
//! those libcni 1.1 knows (1.0.0). Debian's reference plugins (1.1.1) stop at 1.0.0;
//! plugins ≥ 1.5 speak 1.1.0 too, and a node that has them gets 1.1.0.
//!
//! A chained plugin missing from the bin dir is copied from the distribution's plugin
//! directory (`/usr/lib/cni`, `/usr/libexec/cni`) when it is there, and is an error naming
//! it and how to install it when it is nowhere: a chain with a missing plugin fails every
//! pod. Writes go through a temporary file and a rename, so a container runtime never runs
//! a half-copied plugin or reads a half-written configuration (and containerd's conf-dir
//! watcher, which reacts to renames, sees the new file at once).

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skein_cni::CniVersion;
use skein_cni::version::parse_version_answer;
use tracing::{info, warn};

/// The configuration file's name: `10-` so that it sorts before most others.
pub const CONFLIST_NAME: &str = "10-skein.conflist";
/// The plugin's file name in the CNI bin dir.
pub const PLUGIN_NAME: &str = "skein-cni";
/// The reference plugins chained after Skein unless configured otherwise: `portmap`
/// (hostPort) and `bandwidth` (the traffic-shaping annotations).
pub const DEFAULT_CHAIN: [&str; 2] = ["portmap", "bandwidth"];
/// Where distributions install the reference plugins (Debian and Ubuntu; Fedora and RHEL).
pub const DEFAULT_REFERENCE_DIRS: [&str; 2] = ["/usr/lib/cni", "/usr/libexec/cni"];
/// The highest CNI version libcni 1.1 (containerd 1.6) knows: the list's `cniVersion`,
/// which such a runtime hands to every plugin, must not be above it.
pub const LIBCNI_1_1_HIGHEST: CniVersion = CniVersion::V1_0_0;
/// How long a chained plugin may take to answer `VERSION`.
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);

/// What to install where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniInstall {
    /// The `skein-cni` binary to copy.
    pub plugin: PathBuf,
    /// CNI bin dir: where the runtime finds `skein-cni` and the chained plugins.
    pub bin_dir: PathBuf,
    /// CNI conf dir.
    pub conf_dir: PathBuf,
    /// The agent's socket, written into the conflist.
    pub socket: PathBuf,
    /// The plugins chained after `skein-cni`, in order.
    pub chain: Vec<String>,
    /// Where a chained plugin the bin dir lacks is copied from, in order.
    pub reference_dirs: Vec<PathBuf>,
}

/// Why the install failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A file could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// The step.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A chained plugin is neither in the bin dir nor in a reference directory.
    #[error(
        "the chained CNI plugin {plugin:?} is not in {bin_dir} (nor in {searched}): install the reference CNI plugins \
         there (Debian/Ubuntu: `apt install containernetworking-plugins`, then copy or link them from /usr/lib/cni; \
         or the release archive of github.com/containernetworking/plugins), or drop it from --cni-chain"
    )]
    MissingPlugin {
        /// The plugin.
        plugin: String,
        /// The bin dir.
        bin_dir: PathBuf,
        /// The reference directories looked in.
        searched: String,
    },
    /// A chained plugin did not answer `VERSION` usably.
    #[error("the chained CNI plugin {path} does not tell its CNI versions (CNI_COMMAND=VERSION): {problem}")]
    PluginVersion {
        /// The plugin.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
    /// No CNI version is spoken by every plugin of the chain.
    #[error("no CNI version is spoken by skein-cni and every chained plugin ({versions}): upgrade the chained plugins")]
    NoCommonVersion {
        /// Each plugin's versions.
        versions: String,
    },
    /// A `--cni-chain` entry is not a plugin file name.
    #[error("--cni-chain entry {name:?} is not a plugin name (a file name in the CNI bin dir)")]
    BadChainEntry {
        /// The entry.
        name: String,
    },
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> InstallError {
    let path = path.to_path_buf();
    move |source| InstallError::Io { what, path, source }
}

/// The CNI versions of a chain: what goes into the conflist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainVersions {
    /// `cniVersion`: the highest common version libcni 1.1 knows.
    pub cni_version: CniVersion,
    /// `cniVersions`: every version each plugin of the chain speaks, oldest first.
    pub cni_versions: Vec<CniVersion>,
}

impl ChainVersions {
    /// The versions of the default chain with the reference plugins as Debian 12 and
    /// Ubuntu ship them (containernetworking-plugins 1.1.x: up to 1.0.0).
    pub fn reference_plugins_1_1() -> ChainVersions {
        ChainVersions { cni_version: CniVersion::V1_0_0, cni_versions: vec![CniVersion::V0_4_0, CniVersion::V1_0_0] }
    }
}

/// The versions `skein-cni` and every plugin of `chain` (name, `supportedVersions`) speak.
pub fn chain_versions(chain: &[(String, Vec<String>)]) -> Result<ChainVersions, InstallError> {
    let common: Vec<CniVersion> = CniVersion::ALL
        .into_iter()
        .filter(|v| chain.iter().all(|(_, supported)| supported.iter().any(|s| s == v.as_str())))
        .collect();
    let Some(&highest) = common.last() else {
        let mut versions = vec![format!("{PLUGIN_NAME}: {}", CniVersion::ALL.map(CniVersion::as_str).join(", "))];
        versions.extend(chain.iter().map(|(name, supported)| format!("{name}: {}", supported.join(", "))));
        return Err(InstallError::NoCommonVersion { versions: versions.join("; ") });
    };
    let cni_version = common.iter().copied().filter(|v| *v <= LIBCNI_1_1_HIGHEST).max().unwrap_or_else(|| {
        warn!(
            versions = ?common.iter().map(|v| v.as_str()).collect::<Vec<_>>(),
            "the chain speaks no CNI version libcni 1.1 knows: runtimes on it (containerd 1.6) cannot use it"
        );
        highest
    });
    Ok(ChainVersions { cni_version, cni_versions: common })
}

/// The conflist: Skein first, then each plugin of `chain` (`portmap` and `bandwidth` with
/// the capabilities that make the runtime pass them hostPorts and bandwidth limits).
pub fn conflist_for(socket: &Path, chain: &[String], versions: &ChainVersions) -> String {
    let mut plugins = vec![serde_json::json!({"type": PLUGIN_NAME, "agentSocket": socket, "timeoutSeconds": 150})];
    for name in chain {
        plugins.push(match name.as_str() {
            "portmap" => serde_json::json!({"type": "portmap", "capabilities": {"portMappings": true}}),
            "bandwidth" => serde_json::json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}),
            other => serde_json::json!({ "type": other }),
        });
    }
    let value = serde_json::json!({
        "cniVersion": versions.cni_version.as_str(),
        "cniVersions": versions.cni_versions.iter().map(|v| v.as_str()).collect::<Vec<_>>(),
        "name": "skein",
        "plugins": plugins,
    });
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
    text.push('\n');
    text
}

/// The conflist of the default chain on a node with the reference plugins of Debian 12
/// or Ubuntu (what the install manifests show; a node with plugins ≥ 1.5 also gets 1.1.0
/// in `cniVersions`).
pub fn conflist(socket: &Path) -> String {
    let chain: Vec<String> = DEFAULT_CHAIN.iter().map(|s| (*s).to_owned()).collect();
    conflist_for(socket, &chain, &ChainVersions::reference_plugins_1_1())
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
    fs::create_dir_all(dir).map_err(io_error("creating", dir))?;
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
        InstallError::Io { what: "writing", path: path.to_path_buf(), source }
    })
}

fn is_executable_file(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `plugin` with `CNI_COMMAND=VERSION` and returns its `supportedVersions`.
pub fn plugin_versions(plugin: &Path) -> Result<Vec<String>, InstallError> {
    let failed = |problem: String| InstallError::PluginVersion { path: plugin.to_path_buf(), problem };
    let mut command = Command::new(plugin);
    command
        .env_clear()
        .env("CNI_COMMAND", "VERSION")
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut attempts = 0;
    let mut child = loop {
        match command.spawn() {
            Ok(child) => break child,
            // A plugin just copied can be "busy" for a moment: a process another thread
            // forked meanwhile holds the copy's descriptor until it execs.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::TXTBSY.raw_os_error()) && attempts < 50 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(failed(format!("cannot run it: {e}"))),
        }
    };
    // libcni asks with the version it speaks; 1.0.0 is what libcni 1.1 sends.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(br#"{"cniVersion":"1.0.0"}"#);
    }
    let deadline = Instant::now() + VERSION_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed(format!("no answer within {VERSION_TIMEOUT:?}")));
            }
            Err(e) => return Err(failed(format!("waiting for it: {e}"))),
        }
    };
    let mut stdout = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_end(&mut stdout);
    }
    match parse_version_answer(&stdout) {
        Ok(versions) => Ok(versions),
        Err(problem) if status.success() => Err(failed(problem)),
        Err(problem) => Err(failed(format!("it exited with {status}: {problem}"))),
    }
}

impl CniInstall {
    /// Copies `skein-cni` into the bin dir (rewriting it only when it differs).
    pub fn install_plugin(&self) -> Result<(), InstallError> {
        let plugin = fs::read(&self.plugin).map_err(io_error("reading the plugin", &self.plugin))?;
        let target = self.bin_dir.join(PLUGIN_NAME);
        if fs::read(&target).ok().as_deref() != Some(&plugin[..]) {
            write_via_rename(&target, &plugin, 0o755)?;
            info!(plugin = %target.display(), bytes = plugin.len(), "CNI plugin installed");
        }
        Ok(())
    }

    /// Makes sure every chained plugin is in the bin dir (copying one it lacks from a
    /// reference directory) and asks each which CNI versions it speaks.
    pub fn prepare_chain(&self) -> Result<ChainVersions, InstallError> {
        let mut answers = Vec::new();
        for name in &self.chain {
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                return Err(InstallError::BadChainEntry { name: name.clone() });
            }
            let path = self.bin_dir.join(name);
            if !is_executable_file(&path) {
                let Some(source) = self.reference_dirs.iter().map(|d| d.join(name)).find(|p| is_executable_file(p))
                else {
                    return Err(InstallError::MissingPlugin {
                        plugin: name.clone(),
                        bin_dir: self.bin_dir.clone(),
                        searched: self
                            .reference_dirs
                            .iter()
                            .map(|d| d.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                };
                // A copy, not a link: the agent may see the reference directory inside its
                // container only, while the runtime reads the bin dir on the host.
                let bytes = fs::read(&source).map_err(io_error("reading the reference plugin", &source))?;
                write_via_rename(&path, &bytes, 0o755)?;
                warn!(
                    plugin = %name,
                    from = %source.display(),
                    to = %path.display(),
                    "chained CNI plugin missing from the bin dir: copied from the reference plugins"
                );
            }
            let versions = plugin_versions(&path)?;
            info!(plugin = %path.display(), versions = ?versions, "chained CNI plugin");
            answers.push((name.clone(), versions));
        }
        chain_versions(&answers)
    }

    /// Writes the conflist for `versions` unless it is there already; returns whether it
    /// was written.
    pub fn write_conflist(&self, versions: &ChainVersions) -> Result<bool, InstallError> {
        let conf = self.conf_dir.join(CONFLIST_NAME);
        let text = conflist_for(&self.socket, &self.chain, versions);
        let written = if fs::read_to_string(&conf).ok().as_deref() != Some(text.as_str()) {
            write_via_rename(&conf, text.as_bytes(), 0o644)?;
            info!(
                conflist = %conf.display(),
                cni_version = %versions.cni_version,
                cni_versions = ?versions.cni_versions.iter().map(|v| v.as_str()).collect::<Vec<_>>(),
                "CNI configuration written"
            );
            true
        } else {
            false
        };
        self.warn_about_earlier_configurations();
        Ok(written)
    }

    fn warn_about_earlier_configurations(&self) {
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
    }

    /// Copies the plugin, prepares the chain and writes the conflist.
    pub fn run(&self) -> Result<(), InstallError> {
        self.install_plugin()?;
        let versions = self.prepare_chain()?;
        self.write_conflist(&versions)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake chained plugin: a script answering VERSION with `supported`.
    fn fake_plugin(dir: &Path, name: &str, answer: &str) -> PathBuf {
        fs::create_dir_all(dir).unwrap();
        let path = dir.join(name);
        fs::write(&path, format!("#!/bin/sh\ncat >/dev/null\nprintf '%s' '{answer}'\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn versions(list: &[&str]) -> String {
        serde_json::json!({"cniVersion": "1.0.0", "supportedVersions": list}).to_string()
    }

    const DEBIAN: [&str; 6] = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"];
    const PLUGINS_1_5: [&str; 7] = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

    fn install(dir: &Path) -> CniInstall {
        let plugin = dir.join("src-plugin");
        fs::write(&plugin, b"#!/bin/sh\n").unwrap();
        CniInstall {
            plugin,
            bin_dir: dir.join("bin"),
            conf_dir: dir.join("net.d"),
            socket: PathBuf::from("/run/x/cni.sock"),
            chain: DEFAULT_CHAIN.iter().map(|s| (*s).to_owned()).collect(),
            reference_dirs: vec![dir.join("ref")],
        }
    }

    fn written(install: &CniInstall) -> serde_json::Value {
        let text = fs::read_to_string(install.conf_dir.join(CONFLIST_NAME)).unwrap();
        skein_cni::ConfList::parse(text.as_bytes()).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn installs_plugin_and_a_conflist_that_skein_cni_parses() {
        let dir = tempfile::tempdir().unwrap();
        let install = install(dir.path());
        for name in DEFAULT_CHAIN {
            fake_plugin(&install.bin_dir, name, &versions(&DEBIAN));
        }
        install.run().unwrap();
        let copied = install.bin_dir.join(PLUGIN_NAME);
        assert_eq!(fs::read(&copied).unwrap(), b"#!/bin/sh\n");
        assert_eq!(fs::metadata(&copied).unwrap().permissions().mode() & 0o777, 0o755);
        let text = fs::read_to_string(install.conf_dir.join(CONFLIST_NAME)).unwrap();
        let parsed = skein_cni::ConfList::parse(text.as_bytes()).unwrap();
        assert_eq!(parsed.name, "skein");
        assert!(text.contains("/run/x/cni.sock"));
        // A second run with a changed plugin replaces it.
        fs::write(&install.plugin, b"v2").unwrap();
        install.run().unwrap();
        assert_eq!(fs::read(&copied).unwrap(), b"v2");
        // A missing plugin is an error naming it.
        let e = CniInstall { plugin: dir.path().join("nope"), ..install }.run().unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn the_versions_are_those_every_chained_plugin_speaks() {
        let dir = tempfile::tempdir().unwrap();
        let install = install(dir.path());
        // Debian 12's reference plugins: 1.0.0 for every runtime.
        for name in DEFAULT_CHAIN {
            fake_plugin(&install.bin_dir, name, &versions(&DEBIAN));
        }
        install.run().unwrap();
        let list = written(&install);
        assert_eq!(list["cniVersion"], "1.0.0");
        assert_eq!(list["cniVersions"], serde_json::json!(["0.4.0", "1.0.0"]));
        let parsed = skein_cni::ConfList::parse(list.to_string().as_bytes()).unwrap();
        let libcni_1_2 = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
        assert_eq!(parsed.negotiate_version(&libcni_1_2).as_deref(), Some("1.0.0"));
        assert_eq!(list.to_string(), written_default(&install), "the manifests show this case");
        let types: Vec<&str> =
            list["plugins"].as_array().unwrap().iter().map(|p| p["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["skein-cni", "portmap", "bandwidth"]);
        assert_eq!(list["plugins"][1]["capabilities"]["portMappings"], true);
        assert_eq!(list["plugins"][2]["capabilities"]["bandwidth"], true);

        // Plugins ≥ 1.5: libcni ≥ 1.2 runtimes get 1.1.0, containerd 1.6 still 1.0.0.
        for name in DEFAULT_CHAIN {
            fake_plugin(&install.bin_dir, name, &versions(&PLUGINS_1_5));
        }
        install.run().unwrap();
        let list = written(&install);
        assert_eq!(list["cniVersion"], "1.0.0");
        assert_eq!(list["cniVersions"], serde_json::json!(["0.4.0", "1.0.0", "1.1.0"]));
        let parsed = skein_cni::ConfList::parse(list.to_string().as_bytes()).unwrap();
        assert_eq!(parsed.negotiate_version(&libcni_1_2).as_deref(), Some("1.1.0"));

        // One old plugin holds the whole chain back.
        fake_plugin(&install.bin_dir, "bandwidth", &versions(&["0.3.0", "0.3.1", "0.4.0"]));
        install.run().unwrap();
        assert_eq!(written(&install)["cniVersion"], "0.4.0");
        assert_eq!(written(&install)["cniVersions"], serde_json::json!(["0.4.0"]));

        // None in common: an error naming each plugin's versions; the last good list stays.
        fake_plugin(&install.bin_dir, "bandwidth", &versions(&["0.3.1"]));
        let e = install.run().unwrap_err();
        assert!(matches!(e, InstallError::NoCommonVersion { .. }), "{e}");
        assert!(e.to_string().contains("bandwidth: 0.3.1"), "{e}");
        assert_eq!(written(&install)["cniVersion"], "0.4.0");
    }

    fn written_default(install: &CniInstall) -> String {
        serde_json::from_str::<serde_json::Value>(&conflist(&install.socket)).unwrap().to_string()
    }

    #[test]
    fn a_missing_chained_plugin_is_copied_from_the_reference_plugins_or_named() {
        let dir = tempfile::tempdir().unwrap();
        let install = install(dir.path());
        fake_plugin(&install.bin_dir, "portmap", &versions(&DEBIAN));
        // bandwidth is nowhere: the error names it, the bin dir and how to install it, and
        // no conflist is written.
        let e = install.run().unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, InstallError::MissingPlugin { .. }), "{text}");
        for needle in ["\"bandwidth\"", "bin", "containernetworking-plugins", "--cni-chain"] {
            assert!(text.contains(needle), "{text} does not mention {needle}");
        }
        assert!(!install.conf_dir.join(CONFLIST_NAME).exists());
        // In a reference directory: copied (not linked) into the bin dir.
        let reference = fake_plugin(&dir.path().join("ref"), "bandwidth", &versions(&DEBIAN));
        install.run().unwrap();
        let copied = install.bin_dir.join("bandwidth");
        assert!(!fs::symlink_metadata(&copied).unwrap().file_type().is_symlink());
        assert_eq!(fs::read(&copied).unwrap(), fs::read(&reference).unwrap());
        assert_eq!(written(&install)["cniVersion"], "1.0.0");
        // An explicit chain without the reference plugins needs none.
        let alone = CniInstall { chain: vec![], conf_dir: dir.path().join("alone"), ..install.clone() };
        alone.run().unwrap();
        let list = written(&alone);
        assert_eq!(list["plugins"].as_array().unwrap().len(), 1);
        assert_eq!(list["cniVersions"], serde_json::json!(["0.4.0", "1.0.0", "1.1.0"]));
        let bad = CniInstall { chain: vec!["../portmap".into()], ..install };
        assert!(matches!(bad.run().unwrap_err(), InstallError::BadChainEntry { .. }));
    }

    #[test]
    fn a_plugin_that_does_not_answer_version_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let install = install(dir.path());
        fake_plugin(&install.bin_dir, "portmap", &versions(&DEBIAN));
        fake_plugin(&install.bin_dir, "bandwidth", "CNI bandwidth plugin v1.1.1");
        let e = install.run().unwrap_err();
        assert!(matches!(&e, InstallError::PluginVersion { path, .. } if path.ends_with("bandwidth")), "{e}");
        assert!(e.to_string().contains("not JSON"), "{e}");
    }

    #[test]
    fn chain_versions_prefer_what_libcni_1_1_knows() {
        let chain = |v: &[&str]| vec![("p".to_owned(), v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())];
        let v = chain_versions(&chain(&["1.1.0"])).unwrap();
        assert_eq!((v.cni_version, v.cni_versions), (CniVersion::V1_1_0, vec![CniVersion::V1_1_0]));
        let v = chain_versions(&chain(&PLUGINS_1_5)).unwrap();
        assert_eq!(v.cni_version, CniVersion::V1_0_0);
        assert_eq!(chain_versions(&[]).unwrap().cni_versions, CniVersion::ALL.to_vec());
    }
}
