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
    /// Whether the agent binary has its networking (`--master`); without it pods cannot get
    /// an interface.
    pub agent_networking: bool,
    /// Running processes by role (`master`, `agent/node1`, `outside-echo`) → pid.
    pub processes: BTreeMap<String, i32>,
    /// The binaries in use.
    pub binaries: Binaries,
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
        };
        let missing: Vec<String> = [&binaries.master, &binaries.agent, &binaries.cni]
            .into_iter()
            .filter(|p| !p.is_file())
            .map(|p| p.display().to_string())
            .collect();
        if !missing.is_empty() {
            anyhow::bail!(
                "missing {} — build them first: cargo build -p skein-lab -p skein-master -p skein-agent -p skein-cni (or point --bin-dir at them)",
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
    fn missing_binaries_say_how_to_build_them() {
        let dir = tempfile::tempdir().unwrap();
        let error = Binaries::find(Some(dir.path())).unwrap_err().to_string();
        assert!(error.contains("skein-master") && error.contains("cargo build -p skein-lab"), "{error}");
    }
}
