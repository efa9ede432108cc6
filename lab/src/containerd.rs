//! One containerd per lab node: Debian's containerd (1.6) with its CRI plugin, started
//! inside the node's network namespace with its own root, state and socket under the node's
//! directory, so that its CRI plugin runs the node's CNI configuration through libcni as on a
//! real node. Two facts of these machines shape it (FACTS.md): the namespace is entered with
//! `setns` (`nsenter --net=`), never `ip netns exec` — that remounts `/sys`, and runc then
//! finds no cgroup mount —, and root lacks `CAP_SYS_RESOURCE`, hence
//! `restrict_oom_score_adj`.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cri::{Cri, CriError};
use crate::image::IMAGE_REF;
use crate::layout::Layout;
use crate::sys::{self, CommandError};

/// The containerd namespace the CRI plugin keeps Kubernetes' images and containers in.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// Where the reference CNI plugins (loopback, portmap, bandwidth) come from: Debian's
/// `containernetworking-plugins`, or the upstream tarball's usual place.
pub const REFERENCE_PLUGIN_DIRS: &[&str] = &["/usr/lib/cni", "/opt/cni/bin"];
/// The reference plugins a node needs: containerd runs `loopback` for every sandbox, and
/// Skein's conflist chains `portmap` and `bandwidth`.
pub const REQUIRED_PLUGINS: &[&str] = &["loopback", "portmap", "bandwidth"];

/// One node's container runtime.
#[derive(Debug, Clone)]
pub struct NodeRuntime {
    /// The node's name.
    pub node: String,
    /// The node's network namespace.
    pub netns: String,
    /// `<node dir>/containerd`: config, socket, root and state.
    pub dir: PathBuf,
    /// The node's CNI binary directory (containerd 1.6 takes a single one).
    pub cni_bin_dir: PathBuf,
    /// The node's CNI configuration directory.
    pub cni_conf_dir: PathBuf,
    /// Where the pods' container logs go (`<dir>/<namespace>_<name>_<uid>/`).
    pub pod_log_dir: PathBuf,
    /// The cgroup parent of every sandbox of this node (cgroupfs syntax).
    pub cgroup_parent: String,
}

impl NodeRuntime {
    /// The runtime of `node` in `layout`.
    pub fn new(layout: &Layout, node: &str) -> NodeRuntime {
        let dir = layout.node_dir(node).join("containerd");
        NodeRuntime {
            node: node.to_string(),
            netns: layout.node_netns(node),
            cni_bin_dir: layout.cni_bin_dir(node),
            cni_conf_dir: layout.cni_conf_dir(node),
            pod_log_dir: layout.node_dir(node).join("pods"),
            cgroup_parent: format!("/skein-lab-{}/{node}", layout.prefix()),
            dir,
        }
    }

    /// The CRI (and containerd API) socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// The configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    /// containerd's log.
    pub fn log(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }

    /// containerd 1.6's configuration (version 2): everything under [`NodeRuntime::dir`], the
    /// CRI plugin on the node's CNI directories with the lab's image as the sandbox image.
    pub fn config_toml(&self) -> String {
        let dir = self.dir.display();
        format!(
            r#"# skein-lab: the container runtime of lab node {node} (written at every start).
version = 2
root = "{dir}/root"
state = "{dir}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{dir}/containerd.sock"

[ttrpc]
  address = "{dir}/containerd.sock.ttrpc"

[debug]
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = "{dir}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{image}"
  # Root here lacks CAP_SYS_RESOURCE: never lower an OOM score below containerd's own.
  restrict_oom_score_adj = true
  enable_selinux = false
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
    max_conf_num = 1
"#,
            node = self.node,
            image = IMAGE_REF,
            bin = self.cni_bin_dir.display(),
            conf = self.cni_conf_dir.display(),
        )
    }

    /// Creates the directories, writes the configuration, and puts the reference CNI plugins
    /// into the node's CNI bin dir (as symlinks: a node's `/opt/cni/bin` holds them beside
    /// the network plugin, and containerd 1.6 looks in that one directory only).
    pub fn prepare(&self) -> std::io::Result<()> {
        for dir in [&self.dir, &self.cni_bin_dir, &self.cni_conf_dir, &self.pod_log_dir] {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(self.config_path(), self.config_toml())?;
        for plugin in REQUIRED_PLUGINS {
            let Some(source) = reference_plugin(plugin) else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!(
                        "the CNI plugin {plugin} is in none of {} (apt-get install containernetworking-plugins)",
                        REFERENCE_PLUGIN_DIRS.join(", ")
                    ),
                ));
            };
            let target = self.cni_bin_dir.join(plugin);
            let _ = std::fs::remove_file(&target);
            std::os::unix::fs::symlink(&source, &target)?;
        }
        Ok(())
    }

    /// The command that runs containerd inside the node's namespace: `nsenter --net=…`
    /// (setns keeps the host's `/sys`, which runc needs for its cgroups).
    pub fn command(&self, containerd: &Path) -> (PathBuf, Vec<String>) {
        (
            PathBuf::from("nsenter"),
            vec![
                format!("--net=/run/netns/{}", self.netns),
                "--".into(),
                containerd.display().to_string(),
                "--config".into(),
                self.config_path().display().to_string(),
            ],
        )
    }

    /// Waits until containerd answers CRI calls on its socket.
    pub async fn wait_ready(&self, wait: Duration) -> Result<Cri, CriError> {
        let started = Instant::now();
        loop {
            let attempt = async {
                let cri = Cri::connect(&self.socket()).await?;
                cri.version().await?;
                Ok::<Cri, CriError>(cri)
            };
            match attempt.await {
                Ok(cri) => return Ok(cri),
                Err(error) if started.elapsed() > wait => return Err(error),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Imports an OCI image archive into the CRI plugin's namespace with `ctr`.
    pub fn import(&self, archive: &Path) -> Result<(), CommandError> {
        let socket = self.socket();
        sys::run(
            "ctr",
            [
                "--address".as_ref(),
                socket.as_os_str(),
                "--namespace".as_ref(),
                CRI_NAMESPACE.as_ref(),
                "images".as_ref(),
                "import".as_ref(),
                archive.as_os_str(),
            ],
        )
        .map(|_| ())
    }
}

/// The network namespaces of every sandbox a still-running containerd at `socket` holds
/// (names under `/run/netns`), including sandboxes whose set-up failed half-way. Empty when
/// it does not answer within a few seconds.
pub async fn sandbox_netns(socket: &Path) -> Vec<String> {
    let ask = async {
        let cri = Cri::connect(socket).await.ok()?;
        let mut names = Vec::new();
        for sandbox in cri.list_pod_sandboxes(Default::default()).await.ok()? {
            if let Ok(status) = cri.sandbox_status(&sandbox.id).await
                && let Some(name) = status.netns.rsplit('/').next().filter(|n| n.starts_with("cni-"))
            {
                names.push(name.to_string());
            }
        }
        Some(names)
    };
    tokio::time::timeout(Duration::from_secs(10), ask).await.ok().flatten().unwrap_or_default()
}

/// The first reference plugin directory holding `plugin`.
pub fn reference_plugin(plugin: &str) -> Option<PathBuf> {
    REFERENCE_PLUGIN_DIRS.iter().map(|dir| Path::new(dir).join(plugin)).find(|p| p.is_file())
}

/// The mount points under `dir` (from `/proc/self/mountinfo`), deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir) && p != dir)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    points
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && bytes.get(i + 1..i + 4).is_some_and(|d| d.iter().all(|c| (b'0'..=b'7').contains(c))) {
            let value = bytes[i + 1..i + 4].iter().fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            out.push(u8::try_from(value).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts every mount below `dir` (container root filesystems, sandbox `/dev/shm`s) — what
/// a killed containerd leaves behind. Returns how many were unmounted.
pub fn unmount_under(dir: &Path) -> usize {
    mounts_under(dir).iter().filter(|point| sys::run("umount", ["-l".as_ref(), point.as_os_str()]).is_ok()).count()
}

/// The network namespaces containerd created (`/run/netns/cni-…`) that are the same
/// namespace as one of `named` (the lab attaches each sandbox's namespace under its own
/// name, so these are found again by inode even after containerd is gone).
pub fn runtime_netns_of(named: &[String]) -> Vec<String> {
    let inode = |name: &str| std::fs::metadata(Path::new("/run/netns").join(name)).ok().map(|m| (m.dev(), m.ino()));
    let ours: BTreeSet<(u64, u64)> = named.iter().filter_map(|n| inode(n)).collect();
    sys::netns_list()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with("cni-"))
        .filter(|n| inode(n).is_some_and(|i| ours.contains(&i)))
        .collect()
}

/// Removes the cgroups runc made for this lab's sandboxes (empty once their processes are
/// gone), in every hierarchy.
pub fn remove_cgroups(layout: &Layout) -> usize {
    let name = format!("skein-lab-{}", layout.prefix());
    let mut removed = 0;
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else { return 0 };
    let mut roots: Vec<PathBuf> = hierarchies.filter_map(Result::ok).map(|e| e.path().join(&name)).collect();
    roots.push(Path::new("/sys/fs/cgroup").join(&name));
    for root in roots.into_iter().filter(|r| r.is_dir()) {
        let mut dirs = Vec::new();
        collect_dirs(&root, &mut dirs);
        dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for dir in dirs {
            if std::fs::remove_dir(&dir).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.filter_map(Result::ok) {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&entry.path(), out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_keeps_everything_under_the_node_and_uses_its_cni_dirs() {
        let layout = Layout::new("sklab").unwrap();
        let runtime = NodeRuntime::new(&layout, "node2");
        let text = runtime.config_toml();
        assert!(text.contains(r#"root = "/run/skein-lab/sklab/node2/containerd/root""#), "{text}");
        assert!(text.contains(r#"address = "/run/skein-lab/sklab/node2/containerd/containerd.sock""#), "{text}");
        assert!(text.contains(r#"bin_dir = "/run/skein-lab/sklab/node2/cni-bin""#), "{text}");
        assert!(text.contains(r#"conf_dir = "/run/skein-lab/sklab/node2/cni-conf""#), "{text}");
        assert!(text.contains("restrict_oom_score_adj = true"));
        assert!(text.contains(&format!(r#"sandbox_image = "{IMAGE_REF}""#)));
        assert_eq!(runtime.cgroup_parent, "/skein-lab-sklab/node2");
        let (program, args) = runtime.command(Path::new("/usr/bin/containerd"));
        assert_eq!(program, PathBuf::from("nsenter"));
        assert_eq!(args[0], "--net=/run/netns/sklab-node2");
        assert_eq!(args[2..], ["/usr/bin/containerd", "--config", "/run/skein-lab/sklab/node2/containerd/config.toml"]);
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(r"/run/a\040b/c"), "/run/a b/c");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/odd\04"), r"/odd\04");
    }

    #[test]
    fn mounts_below_a_directory_are_listed_deepest_first() {
        // The root mount is never below anything but "/", so a fresh temporary directory has none.
        let dir = tempfile::tempdir().unwrap();
        assert!(mounts_under(dir.path()).is_empty());
        let all = mounts_under(Path::new("/"));
        let depths: Vec<usize> = all.iter().map(|p| p.components().count()).collect();
        assert!(depths.windows(2).all(|w| w[0] >= w[1]), "{all:?}");
    }
}
