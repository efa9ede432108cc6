//! Long-lived connections of every kind a node carries — pod ↔ pod on the node and across
//! the tunnel, through a ClusterIP, to a NodePort from outside, out through egress SNAT,
//! over TCP and UDP — kept busy with small request/answer exchanges, so that a test or a
//! bench can restart things under them and then tell which connections survived, how long
//! each stalled and how many UDP datagrams went missing.
//!
//! A TCP connection is lost when it is reset, closed, or answers nothing for
//! [`TCP_LOST_AFTER`]. A UDP flow is lost when its answers stop for good (none in its last
//! [`UDP_LOST_AFTER`]), which is what a NAT mapping that changed looks like: the client's
//! connected socket drops answers from any other address.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::traffic::{join_within, spawn_in};

/// Time between two requests of one connection.
pub const INTERVAL: Duration = Duration::from_millis(5);

/// Pauses longer than this are recorded (twice the request interval: shorter ones are
/// scheduling noise).
pub const GAP_RECORDED: Duration = Duration::from_millis(10);

/// A TCP connection silent this long is lost.
pub const TCP_LOST_AFTER: Duration = Duration::from_secs(20);

/// A UDP flow without an answer for this long before it stops is lost.
pub const UDP_LOST_AFTER: Duration = Duration::from_secs(2);

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

/// The connection kinds of [`Proto`] and path.
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

/// Echo servers and the connections to them.
pub struct Workload {
    /// The connections, `per_kind` of each of [`KINDS`], in that order.
    pub connections: Vec<Connection>,
    _servers: Vec<EchoServer>,
}

impl Workload {
    /// Stops every connection; their reports.
    pub fn finish(self) -> Vec<Report> {
        let Workload { connections, _servers } = self;
        connections.into_iter().map(Connection::finish).collect()
    }
}

/// Port of the echo servers and the Service.
const ECHO_PORT: u16 = 7000;

/// Sets up, on cluster `c` (two nodes or more), a client pod and an echo pod on node 1, an
/// echo pod on node 2, an echo server outside, a NodePort Service (TCP and UDP, on
/// `cluster_ip`, TCP NodePort `node_port`) whose backends are both echo pods, and starts
/// `per_kind` connections of each of [`KINDS`] — every one of them through node 1.
pub fn every_kind(
    c: &mut super::harness::Cluster,
    tag: &str,
    cluster_ip: &str,
    node_port: u16,
    per_kind: usize,
) -> Workload {
    use serde_json::json;
    use skein_kube_fake::Kind;
    let app = format!("{tag}-echo");
    let client = c.add_pod(&format!("{tag}-client"), 0, &format!("{tag}-client"));
    let local = c.add_pod(&format!("{tag}-local"), 0, &app);
    let remote = c.add_pod(&format!("{tag}-remote"), 1, &app);
    let any = |ip: &str| SocketAddrV4::new(ip.parse().expect("address"), ECHO_PORT);
    let mut servers = Vec::new();
    for (ns, at) in
        [(&local.ns, any("0.0.0.0")), (&remote.ns, any("0.0.0.0")), (&c.outside, any(super::harness::INTERNET))]
    {
        servers.push(EchoServer::start(ns, at).unwrap_or_else(|e| c.fail(&format!("echo server in {ns}: {e}"))));
    }
    c.insert(
        Kind::Service,
        json!({"metadata": {"name": app, "namespace": "default"},
               "spec": {"type": "NodePort", "clusterIP": cluster_ip, "selector": {"app": app},
                        "ports": [{"name": "tcp", "port": ECHO_PORT, "targetPort": ECHO_PORT, "nodePort": node_port, "protocol": "TCP"},
                                  {"name": "udp", "port": ECHO_PORT, "targetPort": ECHO_PORT, "protocol": "UDP"}]}}),
    );
    c.insert(
        Kind::EndpointSlice,
        json!({"metadata": {"name": format!("{app}-1"), "namespace": "default", "labels": {"kubernetes.io/service-name": app}},
               "addressType": "IPv4",
               "ports": [{"name": "tcp", "port": ECHO_PORT, "protocol": "TCP"}, {"name": "udp", "port": ECHO_PORT, "protocol": "UDP"}],
               "endpoints": [
                   {"addresses": [local.ip], "conditions": {"ready": true}, "nodeName": c.nodes[0].name},
                   {"addresses": [remote.ip], "conditions": {"ready": true}, "nodeName": c.nodes[1].name}]}),
    );
    let vip = any(cluster_ip);
    let node_port_at = SocketAddrV4::new(c.nodes[0].ip.parse().expect("node IP"), node_port);
    let targets: [(&str, &str, Proto, SocketAddrV4); 8] = [
        (KINDS[0], &client.ns, Proto::Tcp, any(&local.ip)),
        (KINDS[1], &client.ns, Proto::Tcp, any(&remote.ip)),
        (KINDS[2], &client.ns, Proto::Tcp, vip),
        (KINDS[3], &c.outside, Proto::Tcp, node_port_at),
        (KINDS[4], &client.ns, Proto::Tcp, any(super::harness::INTERNET)),
        (KINDS[5], &client.ns, Proto::Udp, any(&remote.ip)),
        (KINDS[6], &client.ns, Proto::Udp, vip),
        (KINDS[7], &client.ns, Proto::Udp, any(super::harness::INTERNET)),
    ];
    for (kind, ns, proto, dst) in &targets {
        c.wait_for(&format!("{kind} ({dst}) to answer"), Duration::from_secs(30), || answers(ns, *proto, *dst));
    }
    let mut connections = Vec::new();
    for (kind, ns, proto, dst) in &targets {
        for _ in 0..per_kind {
            connections.push(Connection::start(kind, ns, *proto, *dst));
        }
    }
    for conn in &connections {
        c.wait_for(&format!("{} to exchange", conn.kind()), Duration::from_secs(30), || conn.answered() >= 3);
    }
    Workload { connections, _servers: servers }
}
