//! What root tests share: whether they may run here, and commands bounded by `timeout(1)`
//! returning their stdout or an error carrying everything they printed. Included with
//! `#[path]` by the datapath's namespace tests, the node agent's cluster tests and bench,
//! the CNI plugin's tests and the lab's test; each uses part of it.
#![allow(dead_code)]

use std::process::{Command, Stdio};
use std::time::Duration;

/// Bound on any one command (`ip`, `ethtool`, a control request, a ping).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Set to 1 to skip root tests where they cannot run (not root).
pub const SKIP_ENV: &str = "SKEIN_SKIP_NETNS_TESTS";

/// Whether this process runs as root (the effective uid, second field of `Uid:` in
/// /proc/self/status).
pub fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .is_some_and(|euid| euid == "0")
}

/// Whether `test`, which needs root for `needs`, runs: true as root; false (saying so)
/// when [`SKIP_ENV`] is 1; otherwise the test fails saying why — a root test is never
/// skipped silently.
pub fn root_or_skip(test: &str, needs: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") {
        eprintln!("{test}: SKIPPED: needs root for {needs} ({SKIP_ENV}=1)");
        return false;
    }
    panic!("{test} needs root for {needs}: run the tests as root, or set {SKIP_ENV}=1 to skip them");
}

/// Runs a command under `timeout(1)`; its stdout, or an error with all it printed.
pub fn try_run(args: &[&str]) -> Result<String, String> {
    let secs = COMMAND_TIMEOUT.as_secs().to_string();
    let shown = args.join(" ");
    let out = Command::new("timeout")
        .args(["--kill-after=5", &secs])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("`{shown}`: cannot run: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        return Ok(stdout);
    }
    let why = match out.status.code() {
        Some(124) => format!("timed out after {secs}s"),
        _ => out.status.to_string(),
    };
    Err(format!("`{shown}` failed ({why})\nstdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr)))
}

/// Runs a command inside namespace `ns`.
pub fn try_exec(ns: &str, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["ip", "netns", "exec", ns];
    all.extend_from_slice(args);
    try_run(&all)
}

/// Pings `to` from namespace `from`, giving up after `deadline_secs`; Ok only if all
/// `count` requests were answered.
pub fn try_ping(from: &str, to: &str, count: u32, deadline_secs: u32) -> Result<String, String> {
    // With both a count and a deadline, ping succeeds only if every request is answered.
    try_exec(from, &["ping", "-n", "-c", &count.to_string(), "-i", "0.2", "-w", &deadline_secs.to_string(), to])
}
