//! Talking to the node agent: the [`AgentTransport`] seam (a Unix socket in production, a
//! fake in tests and fuzzing) and its Unix-socket implementation.

use std::io;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::agent_protocol::{AgentRequest, AgentResponse, FrameError, read_message, write_message};

/// Why an exchange with the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Could not connect (no socket, nobody listening, permission denied).
    #[error("cannot reach the skein agent at {socket}: {source}")]
    Unreachable {
        /// The socket path.
        socket: PathBuf,
        /// The connect error.
        source: io::Error,
    },
    /// Connected, but the answer did not come in time.
    #[error("the skein agent at {socket} did not answer within {seconds} s")]
    Timeout {
        /// The socket path.
        socket: PathBuf,
        /// The configured timeout.
        seconds: u64,
    },
    /// Connected, but the exchange failed (connection reset, agent restarting).
    #[error("the exchange with the skein agent at {socket} failed: {source}")]
    Broken {
        /// The socket path.
        socket: PathBuf,
        /// What failed.
        source: FrameError,
    },
    /// The agent answered something that is not a protocol message.
    #[error("the skein agent at {socket} sent an invalid answer: {source}")]
    Invalid {
        /// The socket path.
        socket: PathBuf,
        /// The decode error.
        source: serde_json::Error,
    },
}

impl TransportError {
    /// Whether retrying later may succeed (everything but a malformed answer).
    pub fn is_transient(&self) -> bool {
        !matches!(self, TransportError::Invalid { .. })
    }
}

/// Where the agent listens and how long to wait for its answer (from the network config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentEndpoint {
    /// The agent's Unix socket.
    pub socket: PathBuf,
    /// The longest wait for an answer.
    pub timeout: Duration,
}

impl AgentEndpoint {
    /// An endpoint at `socket` with an answer timeout.
    pub fn new(socket: impl AsRef<Path>, timeout: Duration) -> AgentEndpoint {
        AgentEndpoint { socket: socket.as_ref().to_path_buf(), timeout }
    }
}

/// One request, one response.
pub trait AgentTransport {
    /// Sends `request` to the agent at `endpoint` and waits (bounded) for the answer.
    fn call(&self, endpoint: &AgentEndpoint, request: &AgentRequest) -> Result<AgentResponse, TransportError>;
}

/// The real transport: one Unix-socket connection per call.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnixAgent;

impl AgentTransport for UnixAgent {
    fn call(&self, endpoint: &AgentEndpoint, request: &AgentRequest) -> Result<AgentResponse, TransportError> {
        let socket = endpoint.socket.clone();
        let timeout = endpoint.timeout;
        // Connecting to a Unix socket does not wait for the peer to accept (the backlog
        // takes it), so only the exchange itself needs the timeout.
        let mut stream = UnixStream::connect(&socket)
            .map_err(|source| TransportError::Unreachable { socket: socket.clone(), source })?;
        let broken = |source: FrameError| {
            if let FrameError::Io(e) = &source
                && matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
            {
                return TransportError::Timeout { socket: socket.clone(), seconds: timeout.as_secs() };
            }
            match source {
                FrameError::Invalid(source) => TransportError::Invalid { socket: socket.clone(), source },
                source => TransportError::Broken { socket: socket.clone(), source },
            }
        };
        stream.set_read_timeout(Some(timeout)).map_err(|e| broken(e.into()))?;
        stream.set_write_timeout(Some(timeout)).map_err(|e| broken(e.into()))?;
        write_message(&mut stream, request).map_err(|e| broken(e.into()))?;
        // Ignore failure: an agent that already closed its read half has the request.
        let _ = stream.shutdown(Shutdown::Write);
        read_message(&mut stream).map_err(broken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent_protocol::{AgentCommand, PROTOCOL_VERSION};
    use std::os::unix::net::UnixListener;

    fn status_request() -> AgentRequest {
        AgentRequest {
            version: PROTOCOL_VERSION,
            command: AgentCommand::Status,
            container_id: None,
            netns: None,
            ifname: None,
            host_ifname: None,
            pod: None,
            cni_version: "1.1.0".into(),
            valid_attachments: None,
        }
    }

    #[test]
    fn unreachable_when_no_socket() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = AgentEndpoint::new(dir.path().join("none.sock"), Duration::from_secs(1));
        assert!(matches!(UnixAgent.call(&endpoint, &status_request()), Err(TransportError::Unreachable { .. })));
    }

    #[test]
    fn one_exchange_per_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let req: AgentRequest = read_message(&mut conn).unwrap();
            assert_eq!(req.command, AgentCommand::Status);
            write_message(&mut conn, &AgentResponse::Done).unwrap();
        });
        let endpoint = AgentEndpoint::new(&path, Duration::from_secs(10));
        assert_eq!(UnixAgent.call(&endpoint, &status_request()).unwrap(), AgentResponse::Done);
        server.join().unwrap();
    }

    #[test]
    fn silent_agent_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let endpoint = AgentEndpoint::new(&path, Duration::from_millis(50));
        // The connection sits in the backlog, never answered.
        assert!(matches!(UnixAgent.call(&endpoint, &status_request()), Err(TransportError::Timeout { .. })));
        drop(listener);
    }
}
