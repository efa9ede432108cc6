//! Long-lived connections for restart checks: an echo server (TCP connections that stay
//! open and answer 8-byte records, UDP datagrams) and clients that keep one connection busy
//! with small exchanges, so that a check can restart a node's agent under them and then tell
//! which connections survived, how long each paused and how many UDP requests went
//! unanswered. Threads enter the network namespaces (`/run/netns/NAME`) themselves.
//!
//! A TCP connection is lost when it is reset, closed, or answers nothing for
//! [`TCP_LOST_AFTER`]. A UDP flow is lost when its answers stop for good (none in its last
//! [`UDP_LOST_AFTER`]), which is what a NAT mapping that changed looks like: the client's
//! connected socket drops answers from any other address.
//!
//! This file uses only `std` and `rustix`: the node agent's tests include it as it is.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The connection kinds a restart must not break, each a protocol and a path: the lab's
/// restart check and the agent's restart tests and bench hold one or more of each.
pub const KINDS: [&str; 8] = [
    "tcp pod→pod same node",
    "tcp pod→pod other node",
    "tcp pod→ClusterIP",
    "tcp outside→NodePort",
    "tcp pod→outside (SNAT)",
    "udp pod→pod other node",
    "udp pod→ClusterIP",
    "udp pod→outside (SNAT)",
];

/// Time between two requests of one connection.
pub const INTERVAL: Duration = Duration::from_millis(5);

/// Pauses longer than this are recorded (twice the request interval: shorter ones are
/// scheduling noise).
pub const GAP_RECORDED: Duration = Duration::from_millis(10);

/// A TCP connection silent this long is lost.
pub const TCP_LOST_AFTER: Duration = Duration::from_secs(20);

/// A UDP flow without an answer for this long before it stops is lost.
pub const UDP_LOST_AFTER: Duration = Duration::from_secs(2);

/// Runs `f` on a new thread inside the network namespace `/run/netns/<netns>`.
pub fn spawn_in<T, F>(netns: &str, what: &str, f: F) -> JoinHandle<Result<T, String>>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, String> + Send + 'static,
{
    let path = std::path::Path::new("/run/netns").join(netns);
    let what = format!("{what} in {netns}");
    let spawned = std::thread::Builder::new().name(what.clone()).spawn(move || {
        let file = std::fs::File::open(&path).map_err(|e| format!("{what}: open {}: {e}", path.display()))?;
        // setns changes this thread only, which serves nothing else.
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&file),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(|e| format!("{what}: enter {}: {e}", path.display()))?;
        f().map_err(|e| format!("{what}: {e}"))
    });
    spawned.unwrap_or_else(|e| {
        let message = format!("cannot start a thread: {e}");
        std::thread::spawn(move || Err(message))
    })
}

/// Waits at most `timeout` for a thread of [`spawn_in`]; its result, or why not.
pub fn join_within<T>(handle: JoinHandle<Result<T, String>>, timeout: Duration) -> Result<T, String> {
    let name = handle.thread().name().unwrap_or("thread").to_owned();
    let deadline = Instant::now() + timeout;
    while !handle.is_finished() {
        if Instant::now() > deadline {
            return Err(format!("{name} did not finish within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    handle.join().unwrap_or_else(|_| Err(format!("{name} panicked")))
}

/// Echoes TCP connections (8-byte records) and UDP datagrams on one address in a
/// namespace until dropped.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<Result<(), String>>>,
}

impl EchoServer {
    /// Listens on `addr` (TCP and UDP) inside `ns`; bound when this returns.
    pub fn start(ns: &str, addr: SocketAddrV4) -> Result<EchoServer, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let (stopped, bound) = (stop.clone(), bound_tx.clone());
        let tcp = spawn_in(ns, "tcp echo", move || {
            let listener = TcpListener::bind(addr).map_err(|e| format!("bind tcp {addr}: {e}"));
            let _ = bound.send(listener.as_ref().map(|_| ()).map_err(Clone::clone));
            let listener = listener?;
            listener.set_nonblocking(true).map_err(|e| e.to_string())?;
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        stream.set_nonblocking(false).map_err(|e| e.to_string())?;
                        let _ = stream.set_nodelay(true);
                        let stop = stopped.clone();
                        std::thread::spawn(move || {
                            let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
                            let mut record = [0u8; 8];
                            while !stop.load(Ordering::Relaxed) {
                                match stream.read_exact(&mut record) {
                                    Ok(()) => {
                                        if stream.write_all(&record).is_err() {
                                            return;
                                        }
                                    }
                                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                                    Err(_) => return,
                                }
                            }
                        });
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                    Err(e) => return Err(format!("accept: {e}")),
                }
            }
            Ok(())
        });
        let stopped = stop.clone();
        let udp = spawn_in(ns, "udp echo", move || {
            let socket = UdpSocket::bind(addr).map_err(|e| format!("bind udp {addr}: {e}"));
            let _ = bound_tx.send(socket.as_ref().map(|_| ()).map_err(Clone::clone));
            let socket = socket?;
            socket.set_read_timeout(Some(Duration::from_millis(200))).map_err(|e| e.to_string())?;
            let mut buf = [0u8; 64];
            while !stopped.load(Ordering::Relaxed) {
                match socket.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        let _ = socket.send_to(&buf[..n], from);
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(e) => return Err(format!("recv: {e}")),
                }
            }
            Ok(())
        });
        let server = EchoServer { stop, handles: vec![tcp, udp] };
        for _ in 0..2 {
            match bound_rx.recv_timeout(Duration::from_secs(10)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(format!("the echo server on {addr} did not bind")),
            }
        }
        Ok(server)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles.drain(..) {
            let _ = join_within(h, Duration::from_secs(2));
        }
    }
}

/// TCP or UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// A TCP connection.
    Tcp,
    /// A connected UDP socket (one 5-tuple).
    Udp,
}

/// What a connection saw.
#[derive(Clone, Debug)]
pub struct Report {
    /// Its kind (`tcp pod→ClusterIP`).
    pub kind: String,
    /// Why it was lost, if it was.
    pub lost: Option<String>,
    /// Requests sent.
    pub sent: u64,
    /// Answers received.
    pub answered: u64,
    /// Pauses between answers longer than [`GAP_RECORDED`]: when each began, how long.
    pub gaps: Vec<(Instant, Duration)>,
}

impl Report {
    /// The longest pause that overlaps `[from, to]`.
    pub fn stall_within(&self, from: Instant, to: Instant) -> Duration {
        self.gaps
            .iter()
            .filter(|(start, len)| *start <= to && *start + *len >= from)
            .map(|g| g.1)
            .max()
            .unwrap_or_default()
    }
}

/// A running connection.
pub struct Connection {
    kind: String,
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<Report, String>>,
    answered: Arc<Mutex<u64>>,
}

impl Connection {
    /// Opens a connection from `ns` to `dst` and starts its exchanges.
    pub fn start(kind: &str, ns: &str, proto: Proto, dst: SocketAddrV4) -> Connection {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(Mutex::new(0u64));
        let (stopped, progress, name) = (stop.clone(), answered.clone(), kind.to_owned());
        let handle = spawn_in(ns, kind, move || {
            Ok(match proto {
                Proto::Tcp => tcp_exchanges(&name, dst, &stopped, &progress),
                Proto::Udp => udp_exchanges(&name, dst, &stopped, &progress),
            })
        });
        Connection { kind: kind.to_owned(), stop, handle, answered }
    }

    /// Its kind.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// Answers so far.
    pub fn answered(&self) -> u64 {
        *self.answered.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops and reports.
    pub fn finish(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        join_within(self.handle, TCP_LOST_AFTER + Duration::from_secs(10)).unwrap_or_else(|e| Report {
            kind: self.kind.clone(),
            lost: Some(e),
            sent: 0,
            answered: 0,
            gaps: Vec::new(),
        })
    }
}

fn tcp_exchanges(kind: &str, dst: SocketAddrV4, stop: &AtomicBool, progress: &Mutex<u64>) -> Report {
    let mut report = Report { kind: kind.to_owned(), lost: None, sent: 0, answered: 0, gaps: Vec::new() };
    let mut stream = match TcpStream::connect_timeout(&dst.into(), Duration::from_secs(10)) {
        Ok(s) => s,
        Err(e) => {
            report.lost = Some(format!("connect to {dst}: {e}"));
            return report;
        }
    };
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(TCP_LOST_AFTER));
    let mut last = Instant::now();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        if let Err(e) = stream.write_all(&seq.to_be_bytes()) {
            report.lost = Some(format!("write {seq}: {e}"));
            return report;
        }
        report.sent += 1;
        let mut answer = [0u8; 8];
        if let Err(e) = stream.read_exact(&mut answer) {
            report.lost = Some(format!("answer {seq}: {e}"));
            return report;
        }
        if u64::from_be_bytes(answer) != seq {
            report.lost = Some(format!("answer {seq} was {}", u64::from_be_bytes(answer)));
            return report;
        }
        report.answered += 1;
        *progress.lock().unwrap_or_else(|p| p.into_inner()) = report.answered;
        let gap = last.elapsed();
        if gap > GAP_RECORDED {
            report.gaps.push((last, gap));
        }
        last = Instant::now();
        std::thread::sleep(INTERVAL);
    }
    report
}

fn udp_exchanges(kind: &str, dst: SocketAddrV4, stop: &AtomicBool, progress: &Mutex<u64>) -> Report {
    let mut report = Report { kind: kind.to_owned(), lost: None, sent: 0, answered: 0, gaps: Vec::new() };
    let socket = match UdpSocket::bind("0.0.0.0:0").and_then(|s| s.connect(dst).map(|()| s)) {
        Ok(s) => s,
        Err(e) => {
            report.lost = Some(format!("socket to {dst}: {e}"));
            return report;
        }
    };
    let _ = socket.set_read_timeout(Some(INTERVAL));
    let mut last = Instant::now();
    let mut seq = 0u64;
    let mut buf = [0u8; 64];
    let mut receive = |report: &mut Report, last: &mut Instant| {
        // Answers from any other address (a changed NAT mapping) never reach a connected socket.
        while let Ok(n) = socket.recv(&mut buf) {
            if n == 8 {
                report.answered += 1;
                *progress.lock().unwrap_or_else(|p| p.into_inner()) = report.answered;
                let gap = last.elapsed();
                if gap > GAP_RECORDED {
                    report.gaps.push((*last, gap));
                }
                *last = Instant::now();
            }
        }
    };
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        // An unreachable destination (ICMP) shows as a send error: it counts as unanswered.
        let _ = socket.send(&seq.to_be_bytes());
        report.sent += 1;
        receive(&mut report, &mut last);
    }
    // Late answers.
    let drain = Instant::now() + Duration::from_millis(500);
    while Instant::now() < drain {
        receive(&mut report, &mut last);
    }
    if last.elapsed() > UDP_LOST_AFTER + Duration::from_millis(500) {
        report.lost = Some(format!("no answer in the last {:?} of the flow", last.elapsed()));
    }
    report
}

/// Whether `dst` echoes one record over `proto` from `ns` within a second.
pub fn answers(ns: &str, proto: Proto, dst: SocketAddrV4) -> bool {
    let probe = spawn_in(ns, "echo probe", move || {
        let record = 0x5eed_u64.to_be_bytes();
        let mut answer = [0u8; 8];
        match proto {
            Proto::Tcp => {
                let mut s =
                    TcpStream::connect_timeout(&dst.into(), Duration::from_secs(1)).map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(Duration::from_secs(1))).map_err(|e| e.to_string())?;
                s.write_all(&record).map_err(|e| e.to_string())?;
                s.read_exact(&mut answer).map_err(|e| e.to_string())?;
            }
            Proto::Udp => {
                let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
                s.connect(dst).map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(Duration::from_secs(1))).map_err(|e| e.to_string())?;
                s.send(&record).map_err(|e| e.to_string())?;
                s.recv(&mut answer).map_err(|e| e.to_string())?;
            }
        }
        if answer == record { Ok(()) } else { Err("wrong answer".into()) }
    });
    join_within(probe, Duration::from_secs(5)).is_ok()
}
