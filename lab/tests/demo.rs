//! End to end, as root: `skein-lab demo` builds a 3-node lab running the real skein-master,
//! skein-agent and skein-cni, deploys the demo scenario, runs every check, prints the table
//! and tears the lab down; it must exit 0 and end with `checks passed: N/N`. Needs root,
//! iproute2 and the reference CNI plugins (containernetworking-plugins); without root the test
//! fails saying so, unless `SKEIN_SKIP_NETNS_TESTS=1`.

use std::path::{Path, PathBuf};
use std::process::Command;

const LAB: &str = env!("CARGO_BIN_EXE_skein-lab");

#[path = "../../datapath/tests/netns/command.rs"]
mod command;

/// The binaries the lab runs sit next to skein-lab. `cargo test --workspace` builds them (their
/// packages have integration tests); a lone `cargo test -p skein-lab` may not, so build them.
fn ensure_binaries(dir: &Path) {
    let missing: Vec<&str> =
        ["skein-master", "skein-agent", "skein-cni"].into_iter().filter(|b| !dir.join(b).is_file()).collect();
    if missing.is_empty() {
        return;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command.args(["build", "-p", "skein-master", "-p", "skein-agent", "-p", "skein-cni"]);
    if dir.ends_with("release") {
        command.arg("--release");
    }
    let status = command.status().expect("running cargo build for the lab's binaries");
    assert!(status.success(), "building {missing:?} failed");
}

#[test]
fn netns_demo_passes_every_check() {
    if !command::root_or_skip("the lab demo", "network namespaces") {
        return;
    }
    let dir: PathBuf = Path::new(LAB).parent().expect("skein-lab has a directory").to_path_buf();
    ensure_binaries(&dir);
    // Its own prefix, so that a lab someone left running under the default one is untouched.
    let output = Command::new(LAB)
        .args(["--prefix", "sklabt", "demo", "--nodes", "3"])
        .output()
        .expect("running skein-lab demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    let last = stdout.lines().last().unwrap_or("");
    let (passed, total) = last
        .strip_prefix("checks passed: ")
        .and_then(|r| r.split_once('/'))
        .unwrap_or_else(|| panic!("the last line is not `checks passed: N/M`: {last:?}"));
    assert_eq!(passed, total, "not every check passed:\n{stdout}");
    assert!(total.parse::<usize>().unwrap() >= 20, "too few checks: {last}");
    assert!(output.status.success(), "skein-lab demo exited with {}", output.status);
    // Nothing is left behind.
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&netns.stdout).contains("sklabt-"), "namespaces left behind");
    assert!(!Path::new("/run/skein-lab/sklabt").exists(), "state directory left behind");
}
