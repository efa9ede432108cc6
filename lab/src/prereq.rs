//! What the lab needs from the host, checked before anything is built: the tools it runs
//! (iproute2, nsenter, sysctl), what the agents run (iptables), the container runtime
//! (containerd, ctr, runc), BusyBox for the pods' image, and the reference CNI plugins that
//! containerd and Skein's conflist use. On a fresh machine `up` and `demo` install the missing
//! Debian packages when run as root (saying which), or stop at once naming them.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::containerd::{REFERENCE_PLUGIN_DIRS, REQUIRED_PLUGINS, reference_plugin};

/// One thing the lab needs and the Debian package that provides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requirement {
    /// A command looked up in `PATH`, or a CNI plugin looked up in the reference plugin dirs.
    pub what: Need,
    /// The Debian package providing it.
    pub package: &'static str,
}

/// What kind of thing is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A command in `PATH`.
    Command(&'static str),
    /// A reference CNI plugin.
    CniPlugin(&'static str),
}

impl std::fmt::Display for Need {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Need::Command(c) => write!(f, "{c}"),
            Need::CniPlugin(p) => write!(f, "CNI plugin {p} (in {})", REFERENCE_PLUGIN_DIRS.join(" or ")),
        }
    }
}

/// Everything the lab needs.
pub fn requirements() -> Vec<Requirement> {
    let mut list = vec![
        Requirement { what: Need::Command("ip"), package: "iproute2" },
        Requirement { what: Need::Command("nsenter"), package: "util-linux" },
        Requirement { what: Need::Command("sysctl"), package: "procps" },
        Requirement { what: Need::Command("iptables"), package: "iptables" },
        Requirement { what: Need::Command("ldd"), package: "libc-bin" },
        Requirement { what: Need::Command("containerd"), package: "containerd" },
        Requirement { what: Need::Command("ctr"), package: "containerd" },
        Requirement { what: Need::Command("runc"), package: "runc" },
        Requirement { what: Need::Command("busybox"), package: "busybox-static" },
    ];
    list.extend(
        REQUIRED_PLUGINS
            .iter()
            .map(|p| Requirement { what: Need::CniPlugin(p), package: "containernetworking-plugins" }),
    );
    list
}

/// The first executable named `name` in `PATH` (plus the sbin directories, which a
/// non-login root shell may lack).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"].into_iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether `need` is met on this host.
pub fn present(need: Need) -> bool {
    match need {
        Need::Command(c) => which(c).is_some(),
        Need::CniPlugin(p) => reference_plugin(p).is_some(),
    }
}

/// The unmet requirements.
pub fn missing() -> Vec<Requirement> {
    requirements().into_iter().filter(|r| !present(r.what)).collect()
}

/// The packages to install for `missing`, each once, in order.
pub fn packages(missing: &[Requirement]) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for r in missing {
        if !out.contains(&r.package) {
            out.push(r.package);
        }
    }
    out
}

/// Why the host is not ready.
#[derive(Debug, thiserror::Error)]
pub enum PrereqError {
    /// Something is missing and this process may not install it.
    #[error(
        "the lab needs {} — install {}: apt-get install -y {} (or run skein-lab as root, which installs them)",
        .missing.join(", "), .packages.join(" "), .packages.join(" ")
    )]
    Missing {
        /// What is missing.
        missing: Vec<String>,
        /// The packages providing it.
        packages: Vec<String>,
    },
    /// The installation failed.
    #[error("installing {packages} with apt-get failed ({status}); the lab still needs {}", .missing.join(", "))]
    InstallFailed {
        /// The packages.
        packages: String,
        /// apt-get's status.
        status: String,
        /// What is still missing.
        missing: Vec<String>,
    },
}

/// Makes sure the host has what the lab needs: nothing to do when all is there; otherwise,
/// as root on a Debian-like host, installs the packages with apt-get (announcing them through
/// `say` first, apt-get's own output going to stderr); otherwise an error naming what is
/// missing and the packages to install.
pub fn ensure(root: bool, say: impl Fn(String)) -> Result<(), PrereqError> {
    let missing = missing();
    if missing.is_empty() {
        return Ok(());
    }
    let packages = packages(&missing);
    let names = |list: &[Requirement]| list.iter().map(|r| r.what.to_string()).collect::<Vec<_>>();
    if !root || which("apt-get").is_none() {
        return Err(PrereqError::Missing {
            missing: names(&missing),
            packages: packages.iter().map(|p| p.to_string()).collect(),
        });
    }
    say(format!(
        "the lab needs {}: installing the Debian packages {} (apt-get)",
        names(&missing).join(", "),
        packages.join(" ")
    ));
    let status = Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .arg("update")
        .arg("-qq")
        .stdout(std::process::Stdio::null())
        .status()
        .and_then(|update| {
            if !update.success() {
                say(format!("apt-get update failed ({update}); trying the install anyway"));
            }
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&packages)
                .stdout(std::process::Stdio::null())
                .status()
        });
    let still = self::missing();
    match status {
        Ok(s) if s.success() && still.is_empty() => {
            say(format!("installed {}", packages.join(" ")));
            Ok(())
        }
        Ok(s) => Err(PrereqError::InstallFailed {
            packages: packages.join(" "),
            status: s.to_string(),
            missing: names(&still),
        }),
        Err(e) => Err(PrereqError::InstallFailed {
            packages: packages.join(" "),
            status: format!("cannot run apt-get: {e}"),
            missing: names(&still),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_requirement_names_its_package_and_packages_are_listed_once() {
        let all = requirements();
        assert!(all.iter().any(|r| r.what == Need::Command("containerd") && r.package == "containerd"));
        assert!(all.iter().any(|r| r.what == Need::CniPlugin("portmap") && r.package == "containernetworking-plugins"));
        let packages = packages(&all);
        let mut unique = packages.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), packages.len(), "{packages:?}");
        assert!(packages.contains(&"busybox-static") && packages.contains(&"runc"));
    }

    #[test]
    fn which_finds_executables_only() {
        assert!(which("sh").is_some());
        assert!(which("no-such-command-skein").is_none());
        // A directory named like a command is not one.
        assert!(!is_executable(Path::new("/usr")));
    }

    #[test]
    fn a_missing_requirement_without_root_names_it_and_its_package() {
        let error = PrereqError::Missing {
            missing: vec!["containerd".into(), "CNI plugin portmap (in /usr/lib/cni or /opt/cni/bin)".into()],
            packages: vec!["containerd".into(), "containernetworking-plugins".into()],
        }
        .to_string();
        assert!(error.contains("the lab needs containerd, CNI plugin portmap"), "{error}");
        assert!(error.contains("apt-get install -y containerd containernetworking-plugins"), "{error}");
    }
}
