//! Commands run by root tests: bounded by `timeout(1)`, their stdout or an error carrying
//! everything they printed. Shared by the datapath's namespace tests and the node agent's
//! cluster tests, each including it with `#[path]`.

use std::process::{Command, Stdio};
use std::time::Duration;

/// Bound on any one command (`ip`, `ethtool`, a control request, a ping).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

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
