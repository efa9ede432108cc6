//! The lab's workload and its client: an echo server that answers every TCP connection and
//! UDP datagram with its name and the client's address, and a prober that asks a list of
//! targets and reports who answered, as whom the client was seen, and how fast.
//!
//! Both are plain blocking sockets on threads: they run as their own processes inside a pod's
//! (or the outside) namespace, started with `ip netns exec`.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What every answer starts with.
const MAGIC: &str = "skein-lab-echo";
/// The longest answer read.
const MAX_REPLY: usize = 512;

/// A transport protocol the workload serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// From a Kubernetes protocol name (`TCP`, `UDP`); `None` for anything else (SCTP).
    pub fn from_kubernetes(name: Option<&str>) -> Option<Proto> {
        match name.unwrap_or("TCP") {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            _ => None,
        }
    }

    /// `TCP` or `UDP`.
    pub fn kubernetes_name(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        }
    }
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// A port to serve: `tcp:8080`, `udp:53`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServePort {
    /// Protocol.
    pub proto: Proto,
    /// Port number.
    pub port: u16,
}

/// A probe target: `tcp:10.244.1.5:8080`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Target {
    /// Protocol.
    pub proto: Proto,
    /// Address and port.
    pub addr: SocketAddr,
}

impl std::fmt::Display for ServePort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.proto, self.port)
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.proto, self.addr)
    }
}

fn split_proto(text: &str) -> Result<(Proto, &str), String> {
    match text.split_once(':') {
        Some(("tcp", rest)) => Ok((Proto::Tcp, rest)),
        Some(("udp", rest)) => Ok((Proto::Udp, rest)),
        _ => Err(format!("{text:?}: expected tcp:... or udp:...")),
    }
}

impl FromStr for ServePort {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (proto, port) = split_proto(text)?;
        let port = port.parse().map_err(|_| format!("{text:?}: {port:?} is not a port number"))?;
        Ok(ServePort { proto, port })
    }
}

impl FromStr for Target {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (proto, addr) = split_proto(text)?;
        let addr = addr.parse().map_err(|_| format!("{text:?}: {addr:?} is not ADDRESS:PORT"))?;
        Ok(Target { proto, addr })
    }
}

/// The answer of an echo server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The server's name (the pod's name).
    pub name: String,
    /// The client address the server saw.
    pub from: SocketAddr,
}

impl Reply {
    fn encode(&self) -> String {
        format!("{MAGIC} name={} from={}\n", self.name, self.from)
    }

    /// Parses an answer; `None` unless it is exactly what [`serve`] sends.
    pub fn decode(text: &str) -> Option<Reply> {
        let mut words = text.trim_end().split(' ');
        if words.next()? != MAGIC {
            return None;
        }
        let name = words.next()?.strip_prefix("name=")?.to_string();
        let from = words.next()?.strip_prefix("from=")?.parse().ok()?;
        if words.next().is_some() {
            return None;
        }
        Some(Reply { name, from })
    }
}

/// Binds every port (on `address`) and answers forever on threads. Returns once all are
/// bound, so the caller can announce readiness; an error names the port that failed.
pub fn serve(name: &str, address: IpAddr, ports: &[ServePort]) -> Result<(), String> {
    let name: Arc<str> = Arc::from(name);
    for port in ports {
        let bind = SocketAddr::new(address, port.port);
        match port.proto {
            Proto::Tcp => {
                let listener = TcpListener::bind(bind).map_err(|e| format!("cannot listen on tcp:{bind}: {e}"))?;
                let name = name.clone();
                std::thread::spawn(move || {
                    for stream in listener.incoming() {
                        let Ok(mut stream) = stream else { continue };
                        let Ok(from) = stream.peer_addr() else { continue };
                        let reply = Reply { name: name.to_string(), from }.encode();
                        let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
                        let _ = stream.write_all(reply.as_bytes());
                        let _ = stream.shutdown(std::net::Shutdown::Both);
                    }
                });
            }
            Proto::Udp => {
                let socket = UdpSocket::bind(bind).map_err(|e| format!("cannot listen on udp:{bind}: {e}"))?;
                let name = name.clone();
                std::thread::spawn(move || {
                    let mut buffer = [0u8; 2048];
                    loop {
                        let Ok((_, from)) = socket.recv_from(&mut buffer) else { continue };
                        let reply = Reply { name: name.to_string(), from }.encode();
                        let _ = socket.send_to(reply.as_bytes(), from);
                    }
                });
            }
        }
    }
    Ok(())
}

/// One request's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// The answer, when there was one.
    pub reply: Option<Reply>,
    /// Time from the first packet to the answer (or to giving up), in microseconds.
    pub latency_us: u64,
    /// Why there was no answer.
    pub error: Option<String>,
}

/// Every request to one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetReport {
    /// The target.
    pub target: Target,
    /// One entry per request, in order.
    pub attempts: Vec<Attempt>,
}

/// How to probe.
#[derive(Debug, Clone, Copy)]
pub struct ProbeOptions {
    /// Requests per target.
    pub count: usize,
    /// How long one request waits for its answer.
    pub timeout: Duration,
    /// UDP: datagrams sent (each from a new socket) before a request gives up.
    pub udp_tries: usize,
    /// Stop sending to a target when this many first requests all went unanswered (0: never):
    /// a dead target costs a few timeouts, not `count` of them.
    pub give_up_after: usize,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions { count: 1, timeout: Duration::from_secs(2), udp_tries: 2, give_up_after: 3 }
    }
}

fn request_tcp(target: SocketAddr, timeout: Duration) -> Result<Reply, String> {
    let mut stream = TcpStream::connect_timeout(&target, timeout).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let mut buffer = Vec::with_capacity(128);
    Read::by_ref(&mut stream).take(MAX_REPLY as u64).read_to_end(&mut buffer).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&buffer);
    Reply::decode(&text).ok_or_else(|| format!("unexpected answer {text:?}"))
}

fn request_udp(target: SocketAddr, timeout: Duration, tries: usize) -> Result<Reply, String> {
    let mut last = String::from("no answer");
    for _ in 0..tries.max(1) {
        let bind: SocketAddr = match target {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(bind).map_err(|e| format!("bind: {e}"))?;
        socket.connect(target).map_err(|e| format!("connect: {e}"))?;
        socket.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        if let Err(e) = socket.send(b"?") {
            last = format!("send: {e}");
            continue;
        }
        let mut buffer = [0u8; MAX_REPLY];
        match socket.recv(&mut buffer) {
            Ok(n) => {
                let text = String::from_utf8_lossy(&buffer[..n]);
                return Reply::decode(&text).ok_or_else(|| format!("unexpected answer {text:?}"));
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                last = format!("no answer within {} ms", timeout.as_millis());
            }
            Err(e) => last = format!("receive: {e}"),
        }
    }
    Err(last)
}

/// Sends one request to `target`.
pub fn request(target: Target, options: ProbeOptions) -> Attempt {
    let start = Instant::now();
    let outcome = match target.proto {
        Proto::Tcp => request_tcp(target.addr, options.timeout),
        Proto::Udp => request_udp(target.addr, options.timeout, options.udp_tries),
    };
    let latency_us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
    match outcome {
        Ok(reply) => Attempt { reply: Some(reply), latency_us, error: None },
        Err(error) => Attempt { reply: None, latency_us, error: Some(error) },
    }
}

/// Probes every target `options.count` times; targets in parallel, requests to one target
/// one after the other.
pub fn probe(targets: &[Target], options: ProbeOptions) -> Vec<TargetReport> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = targets
            .iter()
            .map(|&target| {
                scope.spawn(move || {
                    let mut attempts: Vec<Attempt> = Vec::with_capacity(options.count);
                    for _ in 0..options.count {
                        attempts.push(request(target, options));
                        if attempts.len() == options.give_up_after && attempts.iter().all(|a| a.reply.is_none()) {
                            break;
                        }
                    }
                    TargetReport { target, attempts }
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(targets)
            .map(|(handle, &target)| {
                handle.join().unwrap_or_else(|_| TargetReport {
                    target,
                    attempts: vec![Attempt {
                        reply: None,
                        latency_us: 0,
                        error: Some("prober thread panicked".into()),
                    }],
                })
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ports_and_targets() {
        assert_eq!("tcp:8080".parse::<ServePort>().unwrap(), ServePort { proto: Proto::Tcp, port: 8080 });
        assert_eq!("udp:53".parse::<ServePort>().unwrap(), ServePort { proto: Proto::Udp, port: 53 });
        assert!("sctp:1".parse::<ServePort>().unwrap_err().contains("sctp:1"));
        assert!("tcp:x".parse::<ServePort>().unwrap_err().contains("\"x\""));
        let t: Target = "udp:10.0.0.1:53".parse().unwrap();
        assert_eq!(t.to_string(), "udp:10.0.0.1:53");
        assert!("tcp:10.0.0.1".parse::<Target>().is_err());
    }

    #[test]
    fn replies_round_trip_and_garbage_is_rejected() {
        let reply = Reply { name: "web-1".into(), from: "10.244.1.5:40000".parse().unwrap() };
        assert_eq!(Reply::decode(&reply.encode()), Some(reply));
        for bad in [
            "",
            "hello",
            "skein-lab-echo name=a",
            "skein-lab-echo name=a from=x",
            "skein-lab-echo name=a from=1.2.3.4:5 z",
        ] {
            assert_eq!(Reply::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn serves_and_probes_tcp_and_udp_on_loopback() {
        // Addresses of their own in 127/8, so that the other tests' listeners on 127.0.0.1
        // cannot take the ports between "pick a free port" and "serve on it".
        let here = Ipv4Addr::new(127, 0, 0, 2);
        let tcp = TcpListener::bind((here, 0)).unwrap().local_addr().unwrap().port();
        let udp = UdpSocket::bind((here, 0)).unwrap().local_addr().unwrap().port();
        let ports = [ServePort { proto: Proto::Tcp, port: tcp }, ServePort { proto: Proto::Udp, port: udp }];
        serve("pod-a", IpAddr::V4(here), &ports).unwrap();
        let targets: Vec<Target> =
            vec![format!("tcp:{here}:{tcp}").parse().unwrap(), format!("udp:{here}:{udp}").parse().unwrap()];
        let reports = probe(&targets, ProbeOptions { count: 3, ..Default::default() });
        assert_eq!(reports.len(), 2);
        for report in &reports {
            assert_eq!(report.attempts.len(), 3);
            for attempt in &report.attempts {
                let reply = attempt.reply.as_ref().unwrap_or_else(|| panic!("{report:?}"));
                assert_eq!(reply.name, "pod-a");
                assert!(reply.from.ip().is_loopback(), "{reply:?}");
            }
        }
        // Nobody listens on a closed port: a TCP error, not an answer.
        let nobody = Ipv4Addr::new(127, 0, 0, 3);
        let closed = TcpListener::bind((nobody, 0)).unwrap().local_addr().unwrap().port();
        let options = ProbeOptions { count: 10, ..Default::default() };
        let report = probe(&[format!("tcp:{nobody}:{closed}").parse().unwrap()], options);
        assert!(report[0].attempts[0].error.as_deref().unwrap().contains("connect"), "{report:?}");
        // It gave up after three unanswered requests.
        assert_eq!(report[0].attempts.len(), 3);
        // A port taken twice is an error naming it.
        let error = serve("pod-b", IpAddr::V4(here), &ports[..1]).unwrap_err();
        assert!(error.contains(&format!("tcp:{here}:{tcp}")), "{error}");
    }
}
