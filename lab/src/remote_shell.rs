//! A remote shell between lab pods, for MPI launchers: `mpirun` (Open MPI's `plm_rsh_agent`)
//! and `mpiexec` (MPICH's hydra `-launcher rsh -launcher-exec`) start their per-host daemons
//! through an rsh-like program (`AGENT HOST COMMAND...`), as they use ssh on a cluster (the
//! MPI Operator's workers run sshd). The lab's pods have no sshd, so a worker pod runs
//! `skein-lab remote-shell-server` and the launcher's agent is `skein-lab remote-shell`: the
//! command line runs under `/bin/sh -c` in the worker's container, its output comes back, and
//! its exit status is the agent's; a dropped connection kills the command (as a closed ssh
//! session does). A shared token (`SKEIN_LAB_REMOTE_SHELL_TOKEN` on both sides) keeps other
//! pods out. Test harness only, like the rest of the lab.
//!
//! Protocol over TCP: one request line of JSON (`{"token":..,"op":"run","command":".."}` or
//! `"op":"stop"`), then frames from the server: a kind byte (1 stdout, 2 stderr, 3 exit), a
//! `u32` big-endian length, the payload (the exit frame's is an `i32` status). Frames are
//! parsed by [`read_frame`], which takes untrusted bytes (`lab/fuzz`, `remote_shell_frame`).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The port the server listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 2222;
/// The variable holding the shared token.
pub const TOKEN_ENV: &str = "SKEIN_LAB_REMOTE_SHELL_TOKEN";
/// The largest frame accepted (output is forwarded in pieces far smaller).
pub const MAX_FRAME: u32 = 1 << 20;
/// The longest request line accepted.
const MAX_REQUEST: u64 = 1 << 20;

/// A request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// Run `command` under `/bin/sh -c`.
    Run {
        /// The shared token.
        token: String,
        /// The command line.
        command: String,
    },
    /// Stop the server (it exits 0 after answering).
    Stop {
        /// The shared token.
        token: String,
    },
}

/// A frame from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Output on the command's stdout.
    Stdout(Vec<u8>),
    /// Output on its stderr.
    Stderr(Vec<u8>),
    /// It ended with this status (128 + signal when killed).
    Exit(i32),
}

/// A frame that does not parse.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The connection failed or ended inside a frame.
    #[error("reading a frame: {0}")]
    Io(#[from] io::Error),
    /// An unknown kind byte.
    #[error("unknown frame kind {0}")]
    Kind(u8),
    /// A length beyond [`MAX_FRAME`].
    #[error("frame of {0} bytes is larger than {MAX_FRAME}")]
    TooLong(u32),
    /// An exit frame whose payload is not 4 bytes.
    #[error("exit frame of {0} bytes (4 expected)")]
    Exit(usize),
}

impl Frame {
    /// The frame's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload): (u8, Vec<u8>) = match self {
            Frame::Stdout(data) => (1, data.clone()),
            Frame::Stderr(data) => (2, data.clone()),
            Frame::Exit(code) => (3, code.to_be_bytes().to_vec()),
        };
        let mut out = vec![kind];
        out.extend(u32::try_from(payload.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend(payload);
        out
    }
}

/// Reads one frame; `Ok(None)` when the stream ends cleanly between frames.
pub fn read_frame(reader: &mut impl Read) -> Result<Option<Frame>, FrameError> {
    let mut kind = [0u8; 1];
    if reader.read(&mut kind)? == 0 {
        return Ok(None);
    }
    let mut length = [0u8; 4];
    reader.read_exact(&mut length)?;
    let length = u32::from_be_bytes(length);
    if length > MAX_FRAME {
        return Err(FrameError::TooLong(length));
    }
    let mut payload = vec![0u8; length as usize];
    reader.read_exact(&mut payload)?;
    match kind[0] {
        1 => Ok(Some(Frame::Stdout(payload))),
        2 => Ok(Some(Frame::Stderr(payload))),
        3 => {
            let bytes: [u8; 4] = payload.as_slice().try_into().map_err(|_| FrameError::Exit(payload.len()))?;
            Ok(Some(Frame::Exit(i32::from_be_bytes(bytes))))
        }
        other => Err(FrameError::Kind(other)),
    }
}

/// The shared token from the environment (empty: none required).
pub fn token_from_env() -> String {
    std::env::var(TOKEN_ENV).unwrap_or_default()
}

/// Serves until a `stop` request with the right token (the process then exits 0).
pub fn serve(address: SocketAddr, token: &str) -> io::Result<()> {
    let listener = TcpListener::bind(address)?;
    println!("remote shell listening on {}", listener.local_addr()?);
    io::stdout().flush()?;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let token = token.to_string();
        std::thread::spawn(move || {
            let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            match session(stream, &token) {
                Ok(true) => {
                    println!("remote shell stopped by {peer}");
                    let _ = io::stdout().flush();
                    std::process::exit(0);
                }
                Ok(false) => {}
                Err(error) => eprintln!("remote shell session from {peer}: {error}"),
            }
        });
    }
    Ok(())
}

/// One connection: returns whether it asked the server to stop.
fn session(stream: TcpStream, token: &str) -> io::Result<bool> {
    let mut line = String::new();
    BufReader::new((&stream).take(MAX_REQUEST)).read_line(&mut line)?;
    let request: Request = serde_json::from_str(&line)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad request: {e}")))?;
    let given = match &request {
        Request::Run { token, .. } | Request::Stop { token } => token,
    };
    let writer = Arc::new(Mutex::new(stream.try_clone()?));
    let send = |frame: Frame| -> io::Result<()> {
        writer.lock().unwrap_or_else(|e| e.into_inner()).write_all(&frame.encode())
    };
    if given != token {
        send(Frame::Stderr(b"remote shell: wrong token\n".to_vec()))?;
        send(Frame::Exit(255))?;
        return Ok(false);
    }
    let command = match request {
        Request::Stop { .. } => {
            send(Frame::Exit(0))?;
            return Ok(true);
        }
        Request::Run { command, .. } => command,
    };
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(&command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()?;
    let pid = child.id();
    let mut pumps = Vec::new();
    for (reader, is_err) in [
        (child.stdout.take().map(|r| Box::new(r) as Box<dyn Read + Send>), false),
        (child.stderr.take().map(|r| Box::new(r) as Box<dyn Read + Send>), true),
    ] {
        let Some(mut reader) = reader else { continue };
        let writer = writer.clone();
        pumps.push(std::thread::spawn(move || {
            let mut buffer = vec![0u8; 64 << 10];
            while let Ok(n) = reader.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                let data = buffer[..n].to_vec();
                let frame = if is_err { Frame::Stderr(data) } else { Frame::Stdout(data) };
                if writer.lock().unwrap_or_else(|e| e.into_inner()).write_all(&frame.encode()).is_err() {
                    break;
                }
            }
        }));
    }
    // The client going away ends the command, as a closed ssh session does.
    let watcher = stream.try_clone()?;
    std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        let _ = (&watcher).read(&mut byte);
        if let Ok(pid) = i32::try_from(pid) {
            crate::sys::signal(-pid, rustix::process::Signal::KILL);
        }
    });
    let status = child.wait()?;
    for pump in pumps {
        let _ = pump.join();
    }
    use std::os::unix::process::ExitStatusExt;
    let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    send(Frame::Exit(code))?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    Ok(false)
}

/// The command line an rsh-style agent was given: flags before the host (`-x`, `-n`, ...) are
/// ignored, then the host, then the command words joined by spaces (as ssh joins them).
pub fn parse_agent_args(args: &[String]) -> Result<(String, String), String> {
    let mut rest = args.iter().skip_while(|a| a.starts_with('-') && a.len() > 1 && *a != "--");
    let host = rest.next().ok_or("no host given")?;
    let words: Vec<&str> = rest.map(String::as_str).skip_while(|w| *w == "--").collect();
    if words.is_empty() {
        return Err(format!("no command for {host}"));
    }
    Ok((host.clone(), words.join(" ")))
}

/// Connects to `host` (a name resolved afresh until `wait` passes: a worker pod may still be
/// starting), sends `request`, copies the output to ours; returns the command's status.
pub fn run(host: &str, port: u16, request: &Request, wait: Duration) -> Result<i32, String> {
    let started = Instant::now();
    let stream = loop {
        let attempt = (host, port).to_socket_addrs().map_err(|e| format!("resolving {host}: {e}")).and_then(|addrs| {
            let mut last = format!("{host} has no address");
            for addr in addrs {
                match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                    Ok(stream) => return Ok(stream),
                    Err(e) => last = format!("connecting to {addr}: {e}"),
                }
            }
            Err(last)
        });
        match attempt {
            Ok(stream) => break stream,
            Err(error) if started.elapsed() >= wait => return Err(error),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    let mut line = serde_json::to_vec(request).map_err(|e| e.to_string())?;
    line.push(b'\n');
    (&stream).write_all(&line).map_err(|e| format!("sending the request to {host}: {e}"))?;
    let mut reader = BufReader::new(&stream);
    loop {
        match read_frame(&mut reader) {
            Ok(Some(Frame::Stdout(data))) => {
                let _ = io::stdout().write_all(&data);
                let _ = io::stdout().flush();
            }
            Ok(Some(Frame::Stderr(data))) => {
                let _ = io::stderr().write_all(&data);
            }
            Ok(Some(Frame::Exit(code))) => return Ok(code),
            Ok(None) => return Err(format!("{host} closed the session without an exit status")),
            Err(error) => return Err(format!("{host}: {error}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_ones_are_errors() {
        for frame in [Frame::Stdout(b"out".to_vec()), Frame::Stderr(Vec::new()), Frame::Exit(-3)] {
            let bytes = frame.encode();
            assert_eq!(read_frame(&mut bytes.as_slice()).unwrap(), Some(frame));
        }
        assert!(read_frame(&mut [].as_slice()).unwrap().is_none());
        assert!(matches!(read_frame(&mut [9u8, 0, 0, 0, 0].as_slice()), Err(FrameError::Kind(9))));
        assert!(matches!(read_frame(&mut [1u8, 0xff, 0xff, 0xff, 0xff].as_slice()), Err(FrameError::TooLong(_))));
        assert!(matches!(read_frame(&mut [3u8, 0, 0, 0, 1, 7].as_slice()), Err(FrameError::Exit(1))));
        assert!(matches!(read_frame(&mut [1u8, 0, 0, 0, 5, 1].as_slice()), Err(FrameError::Io(_))));
    }

    #[test]
    fn agent_arguments_are_read_as_rsh_reads_them() {
        let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_agent_args(&args(&["-x", "mpi-1.mpi", "orted", "-mca", "ess", "env"])).unwrap(),
            ("mpi-1.mpi".to_string(), "orted -mca ess env".to_string())
        );
        assert_eq!(parse_agent_args(&args(&["h", "--", "true"])).unwrap(), ("h".to_string(), "true".to_string()));
        assert!(parse_agent_args(&args(&["-x"])).is_err());
        assert!(parse_agent_args(&args(&["host"])).unwrap_err().contains("no command"));
    }

    #[test]
    fn a_command_runs_remotely_with_its_output_and_status() {
        // (`stop` exits the process: the lab's root test and the bench exercise it.)
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        std::thread::spawn(move || serve(SocketAddr::from(([127, 0, 0, 1], port)), "t0k"));
        let run_cmd = |command: &str, token: &str| {
            run(
                "127.0.0.1",
                port,
                &Request::Run { token: token.into(), command: command.into() },
                Duration::from_secs(5),
            )
        };
        assert_eq!(run_cmd("echo hi; echo oops >&2; exit 3", "t0k"), Ok(3));
        assert_eq!(run_cmd("kill -9 $$", "t0k"), Ok(128 + 9));
        assert_eq!(run_cmd("true", "wrong"), Ok(255));
    }
}
