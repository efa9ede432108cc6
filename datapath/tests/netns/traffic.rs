//! Traffic from inside pod namespaces: each endpoint is a thread that enters the pod's
//! namespace and then uses plain `std::net`. A TCP source sends a pseudo-random byte
//! stream and a TCP sink counts and digests what arrives; a name server answers each
//! connection with its name. Every wait is bounded by socket timeouts.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use skein_datapath::io::sys::enter_netns;

/// How long a connection may go without progress before its thread gives up.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a server waits for its (first) connection.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(60);

/// How often listeners look for a connection or a stop request.
const ACCEPT_POLL: Duration = Duration::from_millis(10);

/// Bytes per write of a TCP source.
const CHUNK: usize = 256 * 1024;

/// Runs `f` on a new thread inside network namespace `ns`.
pub fn spawn_in<T, F>(ns: &str, what: &str, f: F) -> JoinHandle<Result<T, String>>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, String> + Send + 'static,
{
    let path = Path::new("/run/netns").join(ns);
    let what = format!("{what} in {ns}");
    std::thread::Builder::new()
        .name(what.clone())
        .spawn(move || {
            enter_netns(&path).map_err(|e| format!("{what}: enter {}: {e}", path.display()))?;
            f().map_err(|e| format!("{what}: {e}"))
        })
        .expect("spawn a thread")
}

/// Waits at most `timeout` for a thread from [`spawn_in`]; its result, or an error if it
/// panicked or is still running (it is then left to end on its socket timeouts).
pub fn join_within<T>(handle: JoinHandle<Result<T, String>>, timeout: Duration) -> Result<T, String> {
    let name = handle.thread().name().unwrap_or("thread").to_string();
    let deadline = Instant::now() + timeout;
    while !handle.is_finished() {
        if Instant::now() > deadline {
            return Err(format!("{name} did not finish within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    handle.join().unwrap_or_else(|_| Err(format!("{name} panicked")))
}

/// What one side of a TCP stream sent or received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// Bytes.
    pub bytes: u64,
    /// FNV-1a of the bytes, in order.
    pub digest: u64,
}

/// 64-bit FNV-1a, fed in pieces of any size.
struct Digest(u64);

impl Digest {
    fn new() -> Digest {
        Digest(0xcbf2_9ce4_8422_2325)
    }

    fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Xorshift64: bytes that compress badly and differ at every offset, so a lost, repeated
/// or reordered segment changes the digest.
struct Pattern(u64);

impl Pattern {
    fn fill(&mut self, buf: &mut [u8]) {
        for word in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            word.copy_from_slice(&self.0.to_le_bytes()[..word.len()]);
        }
    }
}

/// A listener in a namespace, bound before `start` returns (so a client can connect at
/// once), that accepts one connection and reads it to the end.
pub struct TcpSink {
    received: Arc<AtomicU64>,
    handle: JoinHandle<Result<Transfer, String>>,
}

impl TcpSink {
    /// Listens on `addr` inside `ns`.
    pub fn start(ns: &str, addr: SocketAddrV4) -> Result<TcpSink, String> {
        let received = Arc::new(AtomicU64::new(0));
        let (bound_tx, bound_rx) = mpsc::channel();
        let progress = received.clone();
        let handle = spawn_in(ns, "tcp sink", move || {
            let listener = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"));
            let bound = listener.as_ref().map(|_| ()).map_err(Clone::clone);
            let _ = bound_tx.send(bound);
            let mut stream = accept_one(&listener?)?;
            let mut digest = Digest::new();
            let mut buf = vec![0u8; CHUNK];
            let mut bytes = 0u64;
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        digest.update(&buf[..n]);
                        bytes += n as u64;
                        progress.store(bytes, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(format!("read after {bytes} bytes: {e}")),
                }
            }
            Ok(Transfer { bytes, digest: digest.0 })
        });
        match bound_rx.recv_timeout(IO_TIMEOUT) {
            Ok(Ok(())) => Ok(TcpSink { received, handle }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(join_within(handle, Duration::ZERO).err().unwrap_or_else(|| "the sink did not bind".into())),
        }
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Waits for the stream's end; what arrived.
    pub fn finish(self, timeout: Duration) -> Result<Transfer, String> {
        join_within(self.handle, timeout)
    }
}

/// Accepts one connection, waiting at most [`ACCEPT_TIMEOUT`].
fn accept_one(listener: &TcpListener) -> Result<TcpStream, String> {
    listener.set_nonblocking(true).map_err(|e| format!("set the listener non-blocking: {e}"))?;
    let deadline = Instant::now() + ACCEPT_TIMEOUT;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).map_err(|e| format!("set the stream blocking: {e}"))?;
                stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| format!("set a read timeout: {e}"))?;
                stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| format!("set a write timeout: {e}"))?;
                return Ok(stream);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => std::thread::sleep(ACCEPT_POLL),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Err(format!("no connection in {ACCEPT_TIMEOUT:?}")),
            Err(e) => return Err(format!("accept: {e}")),
        }
    }
}

/// A connection from a namespace sending the pattern: `limit` bytes, or until stopped
/// (dropping it stops it too).
pub struct TcpSource {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<Transfer, String>>>,
}

impl TcpSource {
    /// Connects from inside `ns` to `dst` and starts sending.
    pub fn start(ns: &str, dst: SocketAddrV4, limit: Option<u64>) -> TcpSource {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let handle = spawn_in(ns, "tcp source", move || {
            let mut stream =
                TcpStream::connect_timeout(&dst.into(), IO_TIMEOUT).map_err(|e| format!("connect to {dst}: {e}"))?;
            stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| format!("set a write timeout: {e}"))?;
            stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| format!("set a read timeout: {e}"))?;
            let mut pattern = Pattern(0x9e37_79b9_7f4a_7c15);
            let mut digest = Digest::new();
            let mut buf = vec![0u8; CHUNK];
            let mut bytes = 0u64;
            while !stopped.load(Ordering::Relaxed) {
                let n = limit.map_or(CHUNK as u64, |l| (l - bytes).min(CHUNK as u64)) as usize;
                if n == 0 {
                    break;
                }
                pattern.fill(&mut buf[..n]);
                stream.write_all(&buf[..n]).map_err(|e| format!("write after {bytes} bytes: {e}"))?;
                digest.update(&buf[..n]);
                bytes += n as u64;
            }
            stream.shutdown(Shutdown::Write).map_err(|e| format!("shutdown: {e}"))?;
            // The sink closes once it has read everything: wait for that.
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).map_err(|e| format!("wait for the sink to close: {e}"))?;
            Ok(Transfer { bytes, digest: digest.0 })
        });
        TcpSource { stop, handle: Some(handle) }
    }

    /// Asks an unlimited source to stop sending and close.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Waits for the source to finish; what it sent.
    pub fn finish(mut self, timeout: Duration) -> Result<Transfer, String> {
        let handle = self.handle.take().ok_or("the source was already finished")?;
        join_within(handle, timeout)
    }
}

impl Drop for TcpSource {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP server in a namespace answering every connection with `<name>\n`; dropping it
/// stops it.
pub struct NameServer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<u64, String>>>,
}

impl NameServer {
    /// Listens on `addr` inside `ns` (bound before this returns).
    pub fn start(ns: &str, addr: SocketAddrV4, name: &str) -> Result<NameServer, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let (bound_tx, bound_rx) = mpsc::channel();
        let (stopped, reply) = (stop.clone(), format!("{name}\n"));
        let handle = spawn_in(ns, "name server", move || {
            let listener = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"));
            let bound = listener.as_ref().map(|_| ()).map_err(Clone::clone);
            let _ = bound_tx.send(bound);
            let listener = listener?;
            listener.set_nonblocking(true).map_err(|e| format!("set the listener non-blocking: {e}"))?;
            let mut served = 0;
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        stream.set_nonblocking(false).map_err(|e| format!("set the stream blocking: {e}"))?;
                        stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| format!("set a timeout: {e}"))?;
                        stream.write_all(reply.as_bytes()).map_err(|e| format!("answer connection {served}: {e}"))?;
                        served += 1;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(ACCEPT_POLL),
                    Err(e) => return Err(format!("accept: {e}")),
                }
            }
            Ok(served)
        });
        match bound_rx.recv_timeout(IO_TIMEOUT) {
            Ok(Ok(())) => Ok(NameServer { stop, handle: Some(handle) }),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                Err(join_within(handle, Duration::ZERO).err().unwrap_or_else(|| "the server did not bind".into()))
            }
        }
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = join_within(h, IO_TIMEOUT);
        }
    }
}

/// Opens `count` connections to `dst` one after the other from inside `ns` and returns
/// each one's answer (up to the end of the stream, trimmed).
pub fn fetch_answers(ns: &str, dst: SocketAddrV4, count: usize) -> JoinHandle<Result<Vec<String>, String>> {
    spawn_in(ns, "client", move || {
        let mut answers = Vec::with_capacity(count);
        for i in 0..count {
            let mut stream = TcpStream::connect_timeout(&dst.into(), IO_TIMEOUT)
                .map_err(|e| format!("connection {i} to {dst}: connect: {e}"))?;
            stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| format!("set a read timeout: {e}"))?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer).map_err(|e| format!("connection {i} to {dst}: read: {e}"))?;
            answers.push(answer.trim().to_string());
        }
        Ok(answers)
    })
}
