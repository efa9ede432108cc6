//! A running switch: ports opened, worker threads forwarding between them.
//!
//! Each worker owns a set of ports (round-robin), receives from them in batches, runs each
//! batch through the shared [`Datapath`] with its own microflow cache, and sends what comes
//! out in batches per output port (any worker may send on any port). When its ports are
//! quiet it keeps polling for `busy_poll` — the next packet of a conversation usually
//! arrives within microseconds — and then sleeps in epoll, so an idle switch uses no CPU.

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::afpacket::{AfPacketPort, AfPacketSender, PortConfig, PortError};
use super::sys::{Epoll, EventFd};
use super::udp::{GenevePort, GeneveSender};
use crate::datapath::{Datapath, Packet};
use crate::exec::OutputSink;
use crate::offload::{self, Offload};

/// A port to open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSpec {
    /// An interface (a veth's host end) through AF_PACKET.
    Interface {
        /// Port number flows use.
        number: u32,
        /// Interface name.
        name: String,
    },
    /// A Geneve endpoint on a UDP socket. Tunnel ports whose `underlay_port` is this
    /// number send through it; decapsulated packets arrive with this `in_port`.
    Geneve {
        /// Port number.
        number: u32,
        /// Local tunnel IP and UDP port.
        local: SocketAddrV4,
    },
}

impl PortSpec {
    /// The port number.
    pub fn number(&self) -> u32 {
        match self {
            PortSpec::Interface { number, .. } | PortSpec::Geneve { number, .. } => *number,
        }
    }
}

/// How the switch runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwitchConfig {
    /// Forwarding threads (at least 1, at most one per port).
    pub workers: usize,
    /// How long a worker keeps polling after its last packet before it sleeps.
    pub busy_poll: Duration,
    /// Interrupt moderation: while packets arrive steadily (several wake-ups in a row
    /// less than four times this apart), a worker naps this long between batches instead
    /// of being woken per packet, so each wake-up takes a batch. Zero disables it. Lone
    /// packets (a ping, a request) are never delayed: they arrive when no stream runs.
    pub coalesce: Duration,
    /// Most packets taken from one port per batch.
    pub batch: usize,
    /// Interface port settings.
    pub port: PortConfig,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig {
            workers: 2,
            busy_poll: Duration::ZERO,
            coalesce: Duration::from_micros(100),
            batch: 64,
            port: PortConfig::default(),
        }
    }
}

/// Counters of one port.
#[derive(Debug, Default)]
pub struct PortCounters {
    /// Frames received.
    pub rx: AtomicU64,
    /// Of those, TSO/GSO super-frames (received whole, not segmented).
    pub rx_gso: AtomicU64,
    /// Frames dropped on receive (too big for the ring, invalid Geneve).
    pub rx_dropped: AtomicU64,
    /// Frames sent.
    pub tx: AtomicU64,
    /// Frames that could not be sent.
    pub tx_dropped: AtomicU64,
}

/// A snapshot of one port's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortStats {
    /// Port number.
    pub number: u32,
    /// What it is (`veth0`, `geneve 192.0.2.1:6081`).
    pub name: String,
    /// Frames received.
    pub rx: u64,
    /// Of those, TSO/GSO super-frames.
    pub rx_gso: u64,
    /// Receive drops.
    pub rx_dropped: u64,
    /// Frames sent.
    pub tx: u64,
    /// Transmit drops.
    pub tx_dropped: u64,
}

enum Sender {
    Interface(AfPacketSender),
    Geneve(GeneveSender),
}

struct TxPort {
    number: u32,
    name: String,
    sender: Sender,
    counters: PortCounters,
}

enum RxPort {
    Interface(AfPacketPort),
    Geneve(GenevePort),
}

struct OwnedPort {
    number: u32,
    index: usize,
    rx: RxPort,
    seen_dropped: u64,
}

/// A snapshot of the switch's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwitchStats {
    /// Per port.
    pub ports: Vec<PortStats>,
    /// Frames the flows sent to a port number the switch does not have.
    pub unknown_port_drops: u64,
}

/// Nanoseconds on the monotonic clock since the first call (the datapath's `now`).
pub fn now_ns() -> u64 {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// A running switch. Dropping it stops the workers.
pub struct Switch {
    ports: Arc<Vec<TxPort>>,
    unknown_port: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    wakers: Vec<Arc<EventFd>>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Switch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Switch").field("ports", &self.ports.len()).field("workers", &self.threads.len()).finish()
    }
}

impl Switch {
    /// Opens every port and starts the workers. Fails (opening nothing) if any port
    /// cannot be opened or two ports share a number.
    pub fn start(dp: Arc<Datapath>, specs: &[PortSpec], cfg: SwitchConfig) -> Result<Switch, PortError> {
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = specs.iter().map(PortSpec::number).find(|n| !seen.insert(*n)) {
            return Err(PortError::DuplicateNumber(dup));
        }
        let mut tx = Vec::new();
        let mut rx = Vec::new();
        for (index, s) in specs.iter().enumerate() {
            match s {
                PortSpec::Interface { number, name } => {
                    let p = AfPacketPort::open(name, &cfg.port)?;
                    tx.push(TxPort {
                        number: *number,
                        name: name.clone(),
                        sender: Sender::Interface(p.sender()),
                        counters: PortCounters::default(),
                    });
                    rx.push(OwnedPort { number: *number, index, rx: RxPort::Interface(p), seen_dropped: 0 });
                }
                PortSpec::Geneve { number, local } => {
                    let p = GenevePort::open(*local).map_err(|source| PortError::Sys {
                        name: format!("geneve {local}"),
                        op: "open the Geneve socket",
                        source,
                    })?;
                    tx.push(TxPort {
                        number: *number,
                        name: format!("geneve {local}"),
                        sender: Sender::Geneve(p.sender()),
                        counters: PortCounters::default(),
                    });
                    rx.push(OwnedPort { number: *number, index, rx: RxPort::Geneve(p), seen_dropped: 0 });
                }
            }
        }
        let ports = Arc::new(tx);
        let unknown_port = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let workers = cfg.workers.clamp(1, rx.len().max(1));
        let mut owned: Vec<Vec<OwnedPort>> = (0..workers).map(|_| Vec::new()).collect();
        for (i, p) in rx.into_iter().enumerate() {
            owned[i % workers].push(p);
        }
        let mut wakers = Vec::new();
        let mut threads = Vec::new();
        for (w, mine) in owned.into_iter().enumerate() {
            let waker = Arc::new(EventFd::new().map_err(|source| PortError::Sys {
                name: format!("worker {w}"),
                op: "create eventfd",
                source,
            })?);
            let epoll = Epoll::new().map_err(|source| PortError::Sys {
                name: format!("worker {w}"),
                op: "create epoll",
                source,
            })?;
            for (i, p) in mine.iter().enumerate() {
                let fd = match &p.rx {
                    RxPort::Interface(a) => a.raw_fd(),
                    RxPort::Geneve(g) => g.raw_fd(),
                };
                epoll.add(fd, i as u64).map_err(|source| PortError::Sys {
                    name: tx_name(&ports, p.index),
                    op: "watch with epoll",
                    source,
                })?;
            }
            epoll.add(waker.raw(), u64::MAX).map_err(|source| PortError::Sys {
                name: format!("worker {w}"),
                op: "watch eventfd",
                source,
            })?;
            wakers.push(waker.clone());
            let (dp, ports, stop, unknown) = (dp.clone(), ports.clone(), stop.clone(), unknown_port.clone());
            let t = std::thread::Builder::new()
                .name(format!("skein-dp-w{w}"))
                .spawn(move || run_worker(dp, ports, unknown, mine, epoll, waker, stop, cfg))
                .map_err(|source| PortError::Sys { name: format!("worker {w}"), op: "spawn thread", source })?;
            threads.push(t);
        }
        Ok(Switch { ports, unknown_port, stop, wakers, threads })
    }

    /// Counters of the switch and every port.
    pub fn stats(&self) -> SwitchStats {
        SwitchStats { ports: self.port_stats(), unknown_port_drops: self.unknown_port.load(Ordering::Relaxed) }
    }

    /// Counters of every port.
    pub fn port_stats(&self) -> Vec<PortStats> {
        self.ports
            .iter()
            .map(|p| PortStats {
                number: p.number,
                name: p.name.clone(),
                rx: p.counters.rx.load(Ordering::Relaxed),
                rx_gso: p.counters.rx_gso.load(Ordering::Relaxed),
                rx_dropped: p.counters.rx_dropped.load(Ordering::Relaxed),
                tx: p.counters.tx.load(Ordering::Relaxed),
                tx_dropped: p.counters.tx_dropped.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Wakes every worker (e.g. after a flow change, so nothing waits on a stale sleep).
    pub fn wake(&self) {
        for w in &self.wakers {
            w.signal();
        }
    }

    /// Stops the workers and waits for them.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.wake();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn tx_name(ports: &[TxPort], index: usize) -> String {
    ports.get(index).map(|p| p.name.clone()).unwrap_or_default()
}

/// Where a queued frame's bytes are.
#[derive(Clone, Copy)]
enum Bytes {
    /// `arena[start..end]`.
    Arena(usize, usize),
    /// The final content of packet `i` of the batch (sent without a copy).
    Packet(usize),
}

/// Collects a batch's outputs per port, then sends each port's share in one go.
struct BatchSink<'a> {
    ports: &'a [TxPort],
    by_number: &'a HashMap<u32, usize>,
    /// (port index, offload, where): the bytes are in `arena` or are a batch packet's.
    queued: Vec<(usize, Offload, Bytes)>,
    arena: Vec<u8>,
    /// Per packet of the batch: its offload and its length as received.
    meta: Vec<(Offload, usize)>,
    unknown_port: u64,
    /// Buffers for UDP super-frames built while sending.
    supers: Vec<Vec<u8>>,
}

impl BatchSink<'_> {
    /// The index of port `port`, counting an output to a port the switch does not have.
    fn port_index(&mut self, port: u32) -> Option<usize> {
        let i = self.by_number.get(&port).copied();
        self.unknown_port += u64::from(i.is_none());
        i
    }

    fn queue(&mut self, port: u32, offload: Offload, frame: &[u8]) {
        let Some(i) = self.port_index(port) else { return };
        let start = self.arena.len();
        self.arena.extend_from_slice(frame);
        self.queued.push((i, offload, Bytes::Arena(start, self.arena.len())));
    }

    fn flush(&mut self, batch: &[Packet]) {
        if self.queued.is_empty() {
            return;
        }
        self.queued.sort_by_key(|q| q.0);
        let mut at = 0;
        while at < self.queued.len() {
            let port = self.queued[at].0;
            let end = at + self.queued[at..].iter().take_while(|q| q.0 == port).count();
            let group = &self.queued[at..end];
            let p = &self.ports[port];
            let bytes = |b: Bytes| -> &[u8] {
                match b {
                    Bytes::Arena(a, z) => &self.arena[a..z],
                    Bytes::Packet(i) => batch.get(i).map_or(&[][..], |p| &p.data[..]),
                }
            };
            let sent = match &p.sender {
                Sender::Interface(s) => {
                    let frames: Vec<(Offload, &[u8])> = group.iter().map(|&(_, o, b)| (o, bytes(b))).collect();
                    send_coalesced(s, &frames, &mut self.supers)
                }
                Sender::Geneve(s) => {
                    let frames: Vec<&[u8]> = group.iter().map(|&(_, _, b)| bytes(b)).collect();
                    s.send(&frames)
                }
            };
            p.counters.tx.fetch_add(sent as u64, Ordering::Relaxed);
            if sent < group.len() {
                p.counters.tx_dropped.fetch_add((group.len() - sent) as u64, Ordering::Relaxed);
            }
            at = end;
        }
        self.queued.clear();
        self.arena.clear();
    }
}

/// Sends frames to an interface, merging each run of two or more consecutive UDP
/// datagrams of one flow into a UDP super-frame (see [`offload::coalesce_udp`]). Returns
/// how many of `frames` were sent.
fn send_coalesced(s: &AfPacketSender, frames: &[(Offload, &[u8])], supers: &mut Vec<Vec<u8>>) -> usize {
    // Runs: (start, end, segment size) of frames that merge.
    let mut runs: Vec<(usize, usize, usize)> = Vec::new();
    let mut i = 0;
    while i < frames.len() {
        let mut end = i + 1;
        if let Some((flow, seg)) = offload::udp_coalescable(frames[i].1, &frames[i].0) {
            while end < frames.len() && end - i < offload::MAX_COALESCE {
                match offload::udp_coalescable(frames[end].1, &frames[end].0) {
                    Some((f, len)) if f == flow && len <= seg => {
                        end += 1;
                        if len < seg {
                            break; // a shorter datagram ends the run
                        }
                    }
                    _ => break,
                }
            }
            if end - i >= 2 {
                runs.push((i, end, seg));
            }
        }
        i = end;
    }
    if runs.is_empty() {
        return s.send(frames);
    }
    if supers.len() < runs.len() {
        supers.resize_with(runs.len(), Vec::new);
    }
    let mut offloads = Vec::with_capacity(runs.len());
    for (k, &(a, z, seg)) in runs.iter().enumerate() {
        let members: Vec<&[u8]> = frames[a..z].iter().map(|f| f.1).collect();
        offloads.push(offload::coalesce_udp(&members, seg, &mut supers[k]));
    }
    let mut out: Vec<(Offload, &[u8])> = Vec::with_capacity(frames.len());
    let mut counts: Vec<usize> = Vec::with_capacity(frames.len());
    let mut i = 0;
    let mut r = 0;
    while i < frames.len() {
        match (runs.get(r), offloads.get(r)) {
            (Some(&(a, z, _)), Some(Some(o))) if a == i => {
                out.push((*o, &supers[r][..]));
                counts.push(z - a);
                i = z;
                r += 1;
            }
            (Some(&(a, _, _)), Some(None)) if a == i => {
                // Could not merge (too long): send the run as it is.
                r += 1;
            }
            _ => {
                out.push(frames[i]);
                counts.push(1);
                i += 1;
            }
        }
    }
    let sent = s.send(&out);
    counts[..sent.min(counts.len())].iter().sum()
}

impl BatchSink<'_> {
    /// The offload state packet `packet` leaves with as `frame`: header pushes and pops
    /// move the checksum start with them.
    fn offload_of(&self, packet: usize, frame: &[u8]) -> Offload {
        let (offload, len) = self.meta.get(packet).copied().unwrap_or((Offload::NONE, frame.len()));
        offload.shifted(frame.len() as isize - len as isize).unwrap_or(Offload::NONE)
    }
}

impl OutputSink for BatchSink<'_> {
    fn output(&mut self, packet: usize, port: u32, frame: &[u8]) {
        let offload = self.offload_of(packet, frame);
        self.queue(port, offload, frame);
    }

    fn emit(&mut self, _packet: usize, port: u32, frame: &[u8]) {
        self.queue(port, Offload::NONE, frame);
    }

    fn output_last(&mut self, packet: usize, port: u32, frame: &[u8]) {
        let Some(i) = self.port_index(port) else { return };
        let offload = self.offload_of(packet, frame);
        self.queued.push((i, offload, Bytes::Packet(packet)));
    }
}

#[allow(clippy::too_many_arguments)]
fn run_worker(
    dp: Arc<Datapath>,
    ports: Arc<Vec<TxPort>>,
    unknown_port: Arc<AtomicU64>,
    mut mine: Vec<OwnedPort>,
    epoll: Epoll,
    waker: Arc<EventFd>,
    stop: Arc<AtomicBool>,
    cfg: SwitchConfig,
) {
    let by_number: HashMap<u32, usize> = ports.iter().enumerate().map(|(i, p)| (p.number, i)).collect();
    let mut worker = dp.worker();
    let mut batch: Vec<Packet> = Vec::with_capacity(cfg.batch);
    let mut pool: Vec<Vec<u8>> = Vec::new();
    let mut sink = BatchSink {
        ports: &ports,
        by_number: &by_number,
        queued: Vec::new(),
        arena: Vec::new(),
        meta: Vec::new(),
        unknown_port: 0,
        supers: Vec::new(),
    };
    let mut tokens = [0u64; 32];
    let mut last_packet = Instant::now();
    // Consecutive packet-bearing rounds that came soon after the previous one.
    let mut steady = 0u32;
    const STEADY_ROUNDS: u32 = 3;
    while !stop.load(Ordering::Acquire) {
        let mut got = 0;
        for p in mine.iter_mut() {
            batch.clear();
            let n = match &mut p.rx {
                RxPort::Interface(a) => a.recv(&mut batch, &mut pool, cfg.batch, p.number),
                RxPort::Geneve(g) => g.recv(&mut batch, &mut pool, cfg.batch, p.number),
            };
            let dropped = match &p.rx {
                RxPort::Interface(a) => a.counters().truncated,
                RxPort::Geneve(g) => g.counters().invalid,
            };
            let counters = &ports[p.index].counters;
            if dropped != p.seen_dropped {
                counters.rx_dropped.fetch_add(dropped - p.seen_dropped, Ordering::Relaxed);
                p.seen_dropped = dropped;
            }
            if n == 0 {
                continue;
            }
            got += n;
            counters.rx.fetch_add(n as u64, Ordering::Relaxed);
            let gso = batch.iter().filter(|p| p.offload.is_gso()).count();
            if gso > 0 {
                counters.rx_gso.fetch_add(gso as u64, Ordering::Relaxed);
            }
            sink.meta.clear();
            sink.meta.extend(batch.iter().map(|p| (p.offload, p.data.len())));
            dp.process_batch(&mut worker, &mut batch, now_ns(), &mut sink);
            sink.flush(&batch);
            if sink.unknown_port != 0 {
                unknown_port.fetch_add(std::mem::take(&mut sink.unknown_port), Ordering::Relaxed);
            }
            pool.extend(batch.drain(..).map(|p| p.data));
        }
        if got > 0 {
            let now = Instant::now();
            if !cfg.coalesce.is_zero() && now.duration_since(last_packet) < cfg.coalesce * 4 {
                steady = steady.saturating_add(1);
            } else {
                steady = 0;
            }
            last_packet = now;
            if steady >= STEADY_ROUNDS {
                // A stream is running: let a batch build up rather than wake per packet.
                std::thread::sleep(cfg.coalesce);
            }
            continue;
        }
        if last_packet.elapsed() < cfg.busy_poll {
            std::hint::spin_loop();
            continue;
        }
        // Sleep until a port is readable (or a wake-up); the timeout only bounds how
        // long a stop request can go unnoticed if a wake-up were ever lost.
        if let Ok(n) = epoll.wait(&mut tokens, 1000)
            && tokens[..n].contains(&u64::MAX)
        {
            waker.drain();
        }
    }
}
