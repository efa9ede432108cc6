//! TCP plumbing below the engine: data-socket options, deadline-bounded bootstrap message
//! I/O, connecting with retries while a peer starts, and accepting with a deadline.
//! Everything blocks with a bound; nothing here waits forever.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::wire::{BootstrapMessage, WireError};

/// Sets the options every data connection gets: no Nagle (headers and small payloads must not
/// wait for an ACK), the configured congestion control and buffer sizes, and non-blocking
/// mode for the engine.
pub(crate) fn tune_data_socket(s: &TcpStream, cfg: &Config, peer: usize) -> Result<()> {
    s.set_nodelay(true).map_err(|e| Error::io(peer, "setting TCP_NODELAY", e))?;
    if let Some(cc) = &cfg.tcp_congestion {
        rustix::net::sockopt::set_tcp_congestion(s, cc).map_err(|e| {
            Error::io(peer, format!("setting TCP congestion control {cc:?} (SKEIN_TCP_CONGESTION)"), e.into())
        })?;
    }
    if let Some(size) = cfg.socket_buffer {
        // Ask for the size; the kernel caps it at net.core.{w,r}mem_max without complaint.
        rustix::net::sockopt::set_socket_send_buffer_size(s, size)
            .map_err(|e| Error::io(peer, "setting SO_SNDBUF", e.into()))?;
        rustix::net::sockopt::set_socket_recv_buffer_size(s, size)
            .map_err(|e| Error::io(peer, "setting SO_RCVBUF", e.into()))?;
    }
    s.set_nonblocking(true).map_err(|e| Error::io(peer, "making the socket non-blocking", e))?;
    Ok(())
}

/// Why reading a bootstrap message failed.
#[derive(Debug)]
pub(crate) enum ReadError {
    Io(io::Error),
    Wire(WireError),
    Closed,
    Deadline,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::Wire(e) => write!(f, "{e}"),
            ReadError::Closed => f.write_str("connection closed"),
            ReadError::Deadline => f.write_str("timed out"),
        }
    }
}

fn remaining(deadline: Instant) -> Option<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    (!left.is_zero()).then_some(left)
}

/// Reads one length-prefixed bootstrap message from a blocking socket before `deadline`.
pub(crate) fn read_message(s: &mut TcpStream, deadline: Instant) -> Result<BootstrapMessage, ReadError> {
    let mut prefix = [0u8; 4];
    read_exact_by(s, &mut prefix, deadline)?;
    let len = BootstrapMessage::check_length_prefix(prefix).map_err(ReadError::Wire)?;
    let mut body = vec![0u8; len];
    read_exact_by(s, &mut body, deadline)?;
    BootstrapMessage::decode_body(&body).map_err(ReadError::Wire)
}

fn read_exact_by(s: &mut TcpStream, mut buf: &mut [u8], deadline: Instant) -> Result<(), ReadError> {
    while !buf.is_empty() {
        let left = remaining(deadline).ok_or(ReadError::Deadline)?;
        s.set_read_timeout(Some(left)).map_err(ReadError::Io)?;
        match s.read(buf) {
            Ok(0) => return Err(ReadError::Closed),
            Ok(n) => buf = &mut buf[n..],
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(ReadError::Deadline);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
    Ok(())
}

/// Writes one bootstrap message to a blocking socket before `deadline`.
pub(crate) fn write_message(s: &mut TcpStream, m: &BootstrapMessage, deadline: Instant) -> io::Result<()> {
    let frame = m.encode_frame();
    let left = remaining(deadline).ok_or_else(|| io::Error::from(io::ErrorKind::TimedOut))?;
    s.set_write_timeout(Some(left))?;
    s.write_all(&frame)
}

/// Connects to `addr` within `timeout`, from `local` (port chosen by the kernel) when given:
/// the interface the rank was told to use.
pub(crate) fn connect_from(local: Option<IpAddr>, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let Some(local) = local else { return TcpStream::connect_timeout(&addr, timeout) };
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    if local.is_ipv4() != addr.is_ipv4() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{addr} is not of the address family of the interface address {local}"),
        ));
    }
    let family = if addr.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
    let fd = rustix::net::socket_with(family, SocketType::STREAM, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC, None)?;
    rustix::net::bind(&fd, &SocketAddr::new(local, 0))?;
    match rustix::net::connect(&fd, &addr) {
        Ok(()) => {}
        Err(rustix::io::Errno::INPROGRESS) => {
            let deadline = Instant::now() + timeout;
            loop {
                let left = remaining(deadline).ok_or_else(|| io::Error::from(io::ErrorKind::TimedOut))?;
                let ts = Timespec { tv_sec: left.as_secs() as _, tv_nsec: left.subsec_nanos() as _ };
                let mut fds = [PollFd::new(&fd, PollFlags::OUT)];
                match rustix::event::poll(&mut fds, Some(&ts)) {
                    Ok(0) => return Err(io::Error::from(io::ErrorKind::TimedOut)),
                    Ok(_) => break,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            rustix::net::sockopt::socket_error(&fd)??;
        }
        Err(e) => return Err(e.into()),
    }
    let stream = TcpStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// Connects to `target` (`host:port`), resolving it afresh on every attempt (a StatefulSet
/// peer's DNS record appears only once its pod exists), retrying with backoff until
/// `deadline`; from `local` when given.
pub(crate) fn connect_retry(
    target: &str,
    local: Option<IpAddr>,
    deadline: Instant,
    abort: &AtomicBool,
) -> Result<TcpStream> {
    let mut backoff = Duration::from_millis(10);
    let mut last_err = String::from("no attempt made");
    loop {
        if abort.load(Ordering::Relaxed) {
            return Err(Error::Aborted);
        }
        match target.to_socket_addrs() {
            Ok(addrs) => {
                for addr in addrs.filter(|a| local.is_none_or(|l| l.is_ipv4() == a.is_ipv4())) {
                    let Some(left) = remaining(deadline) else { break };
                    match connect_from(local, addr, left.min(Duration::from_secs(5))) {
                        Ok(s) => return Ok(s),
                        Err(e) => {
                            last_err = match local {
                                Some(l) => format!("{addr} from {l}: {e}"),
                                None => format!("{addr}: {e}"),
                            }
                        }
                    }
                }
            }
            Err(e) => last_err = format!("resolving {target}: {e}"),
        }
        let Some(left) = remaining(deadline) else {
            return Err(Error::Bootstrap(format!("could not connect to {target} before the deadline: {last_err}")));
        };
        std::thread::sleep(backoff.min(left));
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Connects once to a known address (a peer's data listener, which is already listening),
/// from `local` when given.
pub(crate) fn connect_addr(addr: SocketAddr, local: Option<IpAddr>, deadline: Instant) -> io::Result<TcpStream> {
    let left = remaining(deadline).ok_or_else(|| io::Error::from(io::ErrorKind::TimedOut))?;
    connect_from(local, addr, left)
}

/// Accepts one connection on a non-blocking listener before `deadline`; `Ok(None)` on
/// deadline. The returned stream is blocking.
///
/// `watch` are established connections (peer rank, socket): if one of them is closed by its
/// peer meanwhile, the wait ends with `PeerClosed` — a job that is failing elsewhere must
/// not leave this rank waiting for a connection until the timeout.
pub(crate) fn accept_by(
    listener: &TcpListener,
    deadline: Instant,
    abort: &AtomicBool,
    watch: &[(usize, &TcpStream)],
) -> Result<Option<(TcpStream, SocketAddr)>> {
    loop {
        if abort.load(Ordering::Relaxed) {
            return Err(Error::Aborted);
        }
        match listener.accept() {
            Ok((s, a)) => {
                s.set_nonblocking(false).map_err(|e| Error::local("configuring an accepted socket", e))?;
                return Ok(Some((s, a)));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A connection reset before we accepted it is the peer's problem, not ours.
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
            Err(e) => return Err(Error::local("accepting a connection", e)),
        }
        let Some(left) = remaining(deadline) else {
            return Ok(None);
        };
        let slice = left.min(Duration::from_millis(100));
        let ts = Timespec { tv_sec: slice.as_secs() as _, tv_nsec: slice.subsec_nanos() as _ };
        let mut fds = Vec::with_capacity(1 + watch.len());
        fds.push(PollFd::new(listener, PollFlags::IN));
        for (_, s) in watch {
            fds.push(PollFd::new(*s, PollFlags::RDHUP));
        }
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(Error::local("waiting for connections", e.into())),
        }
        for (fd, (peer, _)) in fds[1..].iter().zip(watch) {
            if fd.revents().intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR) {
                return Err(Error::PeerClosed { peer: *peer, during: "connection set-up".into() });
            }
        }
    }
}
