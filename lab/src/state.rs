//! What a running lab records in `/run/skein-lab/<prefix>/`: the state file (phase, API
//! address, processes), and the daemon's control socket protocol (one JSON request line,
//! one JSON answer line).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::layout::Layout;

/// The state file's content.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LabState {
    /// The prefix.
    pub prefix: String,
    /// The number of nodes.
    pub nodes: usize,
    /// `starting`, `topology`, `api`, `controllers`, `master`, `agents`, `running`, `stopping`,
    /// `failed`.
    pub phase: String,
    /// A line on the phase (the error when failed).
    pub message: String,
    /// The daemon's pid.
    pub daemon_pid: i32,
    /// The API server's URL.
    pub api_url: String,
    /// The kubeconfig.
    pub kubeconfig: PathBuf,
    /// The master's southbound URL.
    pub master_url: String,
    /// Running processes by role (`master`, `agent/node1`, `outside-echo`) → pid.
    pub processes: BTreeMap<String, i32>,
    /// The binaries in use.
    pub binaries: Binaries,
    /// The latest unexpected exits of supervised processes (the last [`MAX_EXITS`]), so that
    /// `up` and `check` report a crash at once, with its log.
    #[serde(default)]
    pub exits: Vec<ProcessExit>,
}

/// How many exits the state file keeps.
pub const MAX_EXITS: usize = 20;

/// A supervised process that exited on its own (it is started again with backoff).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessExit {
    /// `master`, `agent/node1`, `containerd/node2`, `outside-echo`.
    pub role: String,
    /// Its pid.
    pub pid: i32,
    /// How it ended (`exit status: 1`, `signal: 9 (SIGKILL)`).
    pub status: String,
    /// Seconds it ran.
    pub after_seconds: f64,
    /// Its log.
    pub log: PathBuf,
    /// The log's last lines when it exited.
    pub last_lines: String,
}

impl std::fmt::Display for ProcessExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (pid {}) exited ({}) {:.1} s after it started; last lines of {}:\n{}",
            self.role,
            self.pid,
            self.status,
            self.after_seconds,
            self.log.display(),
            self.last_lines
        )
    }
}

/// The binaries a lab runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binaries {
    /// `skein-lab` itself (workloads, probes).
    pub lab: PathBuf,
    /// `skein-master`.
    pub master: PathBuf,
    /// `skein-agent`.
    pub agent: PathBuf,
    /// `skein-cni`.
    pub cni: PathBuf,
    /// `skein-dp` (each node's datapath process; the agent drives it).
    #[serde(default)]
    pub datapath: PathBuf,
    /// `containerd` (each node runs one).
    #[serde(default)]
    pub containerd: PathBuf,
    /// `busybox` (the pods' image holds it).
    #[serde(default)]
    pub busybox: PathBuf,
    /// `skein-allreduce` (the lab's `ghcr.io/skein-net/skein-allreduce` image holds it; it may
    /// be absent, then pods of that image fail saying so).
    #[serde(default)]
    pub allreduce: PathBuf,
}

impl Binaries {
    /// The directory of the workspace binaries (the images the lab assembles take theirs
    /// from there).
    pub fn bin_dir(&self) -> PathBuf {
        self.master.parent().map(Path::to_path_buf).unwrap_or_default()
    }
}

impl Binaries {
    /// The binaries next to `skein-lab` (the same cargo target directory), or in `dir`.
    pub fn find(dir: Option<&Path>) -> anyhow::Result<Binaries> {
        let lab = std::env::current_exe()?;
        let dir = match dir {
            Some(dir) => dir.to_path_buf(),
            None => lab.parent().map(Path::to_path_buf).unwrap_or_default(),
        };
        let binaries = Binaries {
            lab: lab.clone(),
            master: dir.join("skein-master"),
            agent: dir.join("skein-agent"),
            cni: dir.join("skein-cni"),
            datapath: dir.join("skein-dp"),
            allreduce: dir.join("skein-allreduce"),
            containerd: crate::prereq::which("containerd").unwrap_or_else(|| PathBuf::from("containerd")),
            busybox: crate::prereq::which("busybox").unwrap_or_else(|| PathBuf::from("/bin/busybox")),
        };
        let missing: Vec<String> = [&binaries.master, &binaries.agent, &binaries.cni, &binaries.datapath]
            .into_iter()
            .filter(|p| !p.is_file())
            .map(|p| p.display().to_string())
            .collect();
        if !missing.is_empty() {
            anyhow::bail!(
                "missing {} — build them first: cargo build -p skein-lab -p skein-master -p skein-agent -p skein-cni -p skein-datapath (or point --bin-dir at them)",
                missing.join(", ")
            );
        }
        Ok(binaries)
    }
}

impl LabState {
    /// Reads the state file of `layout`, `None` when there is none.
    pub fn read(layout: &Layout) -> Option<LabState> {
        let text = std::fs::read_to_string(layout.state_file()).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Records an exit, keeping the last [`MAX_EXITS`].
    pub fn record_exit(&mut self, exit: ProcessExit) {
        self.exits.push(exit);
        let excess = self.exits.len().saturating_sub(MAX_EXITS);
        self.exits.drain(..excess);
    }

    /// Writes the state file atomically.
    pub fn write(&self, layout: &Layout) -> std::io::Result<()> {
        let path = layout.state_file();
        let temporary = path.with_extension("json.tmp");
        std::fs::write(&temporary, serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
        std::fs::rename(temporary, path)
    }
}

/// A request to the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum ControlRequest {
    /// Is it alive?
    Status,
    /// Restart the node agent of `node`; answered once the new process runs.
    RestartAgent {
        /// The node.
        node: String,
    },
    /// Stop a supervised process (`agent/node2`, `containerd/node1`, `master`) and keep it
    /// stopped; answered once it is gone.
    StopProcess {
        /// The process's role.
        role: String,
    },
    /// Start a process stopped with `stop-process` again; answered once it runs.
    StartProcess {
        /// The process's role.
        role: String,
    },
    /// Stop everything (answered first).
    Shutdown,
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlResponse {
    /// Whether it worked.
    pub ok: bool,
    /// What happened.
    pub message: String,
    /// A pid, when the request started a process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
}

/// Sends one request to the daemon of `layout` and waits (at most `timeout`) for the answer.
pub async fn control(layout: &Layout, request: &ControlRequest, timeout: Duration) -> anyhow::Result<ControlResponse> {
    let socket = layout.control_socket();
    let exchange = async {
        let mut stream = tokio::net::UnixStream::connect(&socket).await?;
        let mut line = serde_json::to_vec(request)?;
        line.push(b'\n');
        stream.write_all(&line).await?;
        let mut reader = tokio::io::BufReader::new(stream);
        let mut answer = String::new();
        reader.read_line(&mut answer).await?;
        Ok::<_, anyhow::Error>(serde_json::from_str::<ControlResponse>(&answer)?)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(error)) => Err(anyhow::anyhow!("lab daemon at {}: {error}", socket.display())),
        Err(_) => Err(anyhow::anyhow!("lab daemon at {} did not answer within {timeout:?}", socket.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_are_one_json_object_each() {
        let request = ControlRequest::RestartAgent { node: "node2".into() };
        let text = serde_json::to_string(&request).unwrap();
        assert_eq!(text, r#"{"op":"restart-agent","node":"node2"}"#);
        assert_eq!(serde_json::from_str::<ControlRequest>(r#"{"op":"shutdown"}"#).unwrap(), ControlRequest::Shutdown);
        let response = ControlResponse { ok: true, message: "x".into(), pid: None };
        assert_eq!(serde_json::to_string(&response).unwrap(), r#"{"ok":true,"message":"x"}"#);
    }

    #[test]
    fn exits_are_kept_to_the_last_few_and_say_what_happened() {
        let mut state = LabState::default();
        for pid in 0..(MAX_EXITS as i32 + 5) {
            state.record_exit(ProcessExit { role: "agent/node1".into(), pid, ..Default::default() });
        }
        assert_eq!(state.exits.len(), MAX_EXITS);
        assert_eq!(state.exits[0].pid, 5);
        let exit = ProcessExit {
            role: "agent/node2".into(),
            pid: 7,
            status: "exit status: 1".into(),
            after_seconds: 0.4,
            log: "/run/x/agent.log".into(),
            last_lines: "Error: cannot run iptables".into(),
        };
        let text = exit.to_string();
        assert!(
            text.contains("agent/node2 (pid 7) exited (exit status: 1) 0.4 s") && text.contains("cannot run iptables"),
            "{text}"
        );
    }

    #[test]
    fn missing_binaries_say_how_to_build_them() {
        let dir = tempfile::tempdir().unwrap();
        let error = Binaries::find(Some(dir.path())).unwrap_err().to_string();
        assert!(error.contains("skein-master") && error.contains("cargo build -p skein-lab"), "{error}");
    }
}
