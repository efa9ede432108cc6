//! Running the host's tools (`ip`, `sysctl`) and entering namespaces with `ip netns exec`:
//! the lab changes the host only through these commands, so it needs no `unsafe` and every
//! failure names the command that failed.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// A host command that failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The command could not be started.
    #[error("cannot run `{command}`: {source} (is it installed?)")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// The command exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// The host already uses the lab's underlay subnet on another link.
    #[error(
        "{address} on {link} already holds the lab's underlay {subnet}: another lab is up (or was left behind); \
         `skein-lab down --prefix <its prefix>` removes it (a lab's links are named <prefix>-br, <prefix>-n1, ...)"
    )]
    UnderlayInUse {
        /// The link carrying the address.
        link: String,
        /// The address in the underlay subnet.
        address: String,
        /// The lab's underlay subnet.
        subnet: String,
    },
}

fn command_line<I, S>(program: &str, args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut line = program.to_string();
    for arg in args {
        line.push(' ');
        line.push_str(&arg.as_ref().to_string_lossy());
    }
    line
}

/// Runs `program args...`, returning its stdout; a non-zero exit is an error with stderr.
pub fn run<I, S>(program: &str, args: I) -> Result<String, CommandError>
where
    I: IntoIterator<Item = S> + Clone,
    S: AsRef<OsStr>,
{
    let output = output(program, args.clone())?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(CommandError::Failed {
            command: command_line(program, args),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// Runs `program args...` and returns whatever it produced, whatever its exit status.
pub fn output<I, S>(program: &str, args: I) -> Result<Output, CommandError>
where
    I: IntoIterator<Item = S> + Clone,
    S: AsRef<OsStr>,
{
    Command::new(program)
        .args(args.clone())
        .stdin(Stdio::null())
        .output()
        .map_err(|source| CommandError::Spawn { command: command_line(program, args), source })
}

/// `ip ARGS...`.
pub fn ip(args: &[&str]) -> Result<String, CommandError> {
    run("ip", args)
}

/// `ip -n NETNS ARGS...`.
pub fn ip_in(netns: &str, args: &[&str]) -> Result<String, CommandError> {
    let mut full = vec!["-n", netns];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// A command that runs `program args...` inside network namespace `netns`
/// (`ip netns exec`, which also gives it that namespace's view of /sys).
pub fn command_in_netns(netns: &str, program: &Path) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", netns]).arg(program);
    command
}

/// The same as [`command_in_netns`] for tokio.
pub fn async_command_in_netns(netns: &str, program: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("ip");
    command.args(["netns", "exec", netns]).arg(program);
    command
}

/// The named network namespaces (`ip netns list`), without their ids.
pub fn netns_list() -> Result<Vec<String>, CommandError> {
    Ok(ip(&["netns", "list"])?.lines().filter_map(|line| line.split_whitespace().next()).map(str::to_string).collect())
}

/// The pids of the processes inside a named network namespace.
pub fn netns_pids(netns: &str) -> Vec<i32> {
    ip(&["netns", "pids", netns])
        .map(|text| text.split_whitespace().filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default()
}

/// The names of the links in the root namespace.
pub fn root_links() -> Result<Vec<String>, CommandError> {
    let text = ip(&["-o", "link", "show"])?;
    // "3: sklab-n1@if2: <...>": the name ends at '@' (veths) or ':'.
    Ok(text
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_string())
        .collect())
}

/// Sends `signal` to `pid`; a process already gone is not an error.
pub fn signal(pid: i32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The command line of a process, arguments joined by spaces.
pub fn cmdline(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(raw.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect::<Vec<_>>().join(" "))
}

/// Whether the effective user is root (the lab needs it).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The last `lines` lines of a log file, for error messages. Backtrace frames (`  12: f`,
/// `      at src/x.rs:1:2`) are left out: the error they follow is what a reader needs.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    tail_of(&text, lines)
}

fn is_backtrace_frame(line: &str) -> bool {
    let trimmed = line.trim_start();
    if trimmed.len() == line.len() {
        return false;
    }
    trimmed.starts_with("at ")
        || trimmed.split_once(": ").is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn tail_of(text: &str, lines: usize) -> String {
    let kept: Vec<&str> = text.lines().filter(|line| !is_backtrace_frame(line)).collect();
    kept[kept.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_name_the_command_and_its_error() {
        let error = run("sh", ["-c", "echo oops >&2; exit 3"]).unwrap_err().to_string();
        assert!(error.contains("`sh -c echo oops >&2; exit 3` failed") && error.contains("oops"), "{error}");
        let error = run("/nonexistent/tool", ["x"]).unwrap_err().to_string();
        assert!(error.contains("cannot run `/nonexistent/tool x`"), "{error}");
        assert_eq!(run("echo", ["hi"]).unwrap(), "hi\n");
    }

    #[test]
    fn tails_leave_backtraces_out() {
        let log = "start\nError: reading Node node2\n\nCaused by:\n    client error (Connect)\n\nStack backtrace:\n   0: anyhow::error\n             at /src/x.rs:1:2\n  31: _start\nlast\n";
        assert_eq!(tail_of(log, 5), "Caused by:\n    client error (Connect)\n\nStack backtrace:\nlast");
        assert_eq!(tail_of("a\nb\n", 10), "a\nb");
    }

    #[test]
    fn processes_are_seen() {
        let me = std::process::id() as i32;
        assert!(alive(me));
        assert!(cmdline(me).is_some());
        assert!(!alive(i32::MAX));
    }
}
