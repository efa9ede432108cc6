//! What the lab's root tests share: the binaries, and a lab that is taken down however the
//! test ends.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The `skein-lab` binary under test.
pub const LAB: &str = env!("CARGO_BIN_EXE_skein-lab");

/// The binaries the lab runs (and mounts into the Skein images it assembles) sit next to
/// skein-lab. `cargo test --workspace` builds them (their
/// packages have integration tests); a lone `cargo test -p skein-lab` may not, so build them.
pub fn ensure_binaries() -> PathBuf {
    let dir: PathBuf = Path::new(LAB).parent().expect("skein-lab has a directory").to_path_buf();
    let missing: Vec<&str> = ["skein-master", "skein-agent", "skein-cni", "skein-dp", "skein-allreduce"]
        .into_iter()
        .filter(|b| !dir.join(b).is_file())
        .collect();
    if missing.is_empty() {
        return dir;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command.args(["build", "-p", "skein-master", "-p", "skein-agent", "-p", "skein-cni", "-p", "skein-datapath"]);
    // The lab's `ghcr.io/skein-net/skein-allreduce` image runs this one (the demo's job).
    command.args(["-p", "skein-collectives"]);
    // Named, as a `--bin` builds only the targets named.
    for bin in ["skein-master", "skein-agent", "skein-cni", "skein-dp", "skein-allreduce"] {
        command.args(["--bin", bin]);
    }
    if dir.ends_with("release") {
        command.arg("--release");
    }
    let status = command.status().expect("running cargo build for the lab's binaries");
    assert!(status.success(), "building {missing:?} failed");
    dir
}

/// A lab under its own prefix, taken down when dropped.
pub struct Lab {
    /// Its prefix.
    pub prefix: String,
}

impl Lab {
    /// `skein-lab --prefix PREFIX up ARGS...`; panics with its output when it fails.
    pub fn up(prefix: &str, args: &[&str]) -> Lab {
        ensure_binaries();
        let lab = Lab { prefix: prefix.to_string() };
        let output =
            Command::new(LAB).args(["--prefix", prefix, "up"]).args(args).output().expect("running skein-lab up");
        assert!(
            output.status.success(),
            "skein-lab up failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        lab
    }

    /// The lab's state directory.
    pub fn dir(&self) -> PathBuf {
        PathBuf::from("/run/skein-lab").join(&self.prefix)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let keep = PathBuf::from(format!("/tmp/skein-lab-{}-logs", self.prefix));
            let _ = std::fs::remove_dir_all(&keep);
            let _ = Command::new("cp").arg("-r").arg(self.dir()).arg(&keep).status();
            eprintln!("logs kept in {}", keep.display());
        }
        let _ = Command::new(LAB).args(["--prefix", &self.prefix, "down"]).status();
    }
}

/// The network namespaces whose names start with `prefix`.
pub fn netns_with_prefix(prefix: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}
