//! A running switch: ports opened, worker threads forwarding between them, ports added
//! and removed while it runs.
//!
//! Each worker owns the receive side of some ports, receives from them in batches, runs
//! each batch through the shared [`Datapath`] with its own microflow cache, and sends what
//! comes out in batches per output port (any worker may send on any port). When its ports
//! are quiet it keeps polling for `busy_poll` — the next packet of a conversation usually
//! arrives within microseconds — and then sleeps in epoll, so an idle switch uses no CPU.
//!
//! The ports workers send to are one immutable [`PortTable`], replaced whole when a port
//! comes or goes. A worker keeps its own reference to the table and compares the switch's
//! generation counter once per round (one atomic load, no lock); only when it changed does
//! it take the new table and the receive ports handed to it, and acknowledge. Adding or
//! removing a port returns once every worker has acknowledged: no worker sends through a
//! stale table after that.

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};

use super::afpacket::{AfPacketPort, AfPacketSender, PortConfig, PortError, PreparedSocket};
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
    /// A node's NIC used as an uplink, through AF_PACKET without promiscuous mode: the
    /// switch receives what is addressed to the NIC (and broadcasts), not every frame on
    /// the wire.
    Uplink {
        /// Port number flows use.
        number: u32,
        /// Interface name.
        name: String,
        /// Receive only what this filter accepts (see [`super::uplinkfilter`]).
        filter: Option<super::UplinkFilter>,
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
            PortSpec::Interface { number, .. } | PortSpec::Uplink { number, .. } | PortSpec::Geneve { number, .. } => {
                *number
            }
        }
    }
}

/// How the switch runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwitchConfig {
    /// Forwarding threads (at least 1; 0 counts as 1). Ports, those added later too, are
    /// spread over them; a worker with no port sleeps until it is given one.
    pub workers: usize,
    /// How long a worker keeps polling after its last packet before it sleeps.
    pub busy_poll: Duration,
    /// Interrupt moderation: while packets arrive steadily (several wake-ups in a row
    /// less than four times this apart), a worker naps this long between batches instead
    /// of being woken per packet, so each wake-up takes a batch. Zero disables it. Lone
    /// packets (a ping) are never delayed: they arrive when no stream runs. Naps that
    /// gather less than a batch of two three times in a row (a request/response
    /// conversation, where each side waits for the other's answer) stop the napping for
    /// [`NAP_BACKOFF`]; a port
    /// that filled a whole batch (a backlog) is served again at once.
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
    /// Frames dropped on receive, for any reason (the ring full, too big for the ring,
    /// invalid Geneve).
    pub rx_dropped: AtomicU64,
    /// Of those, frames the kernel dropped because the receive ring was full: the
    /// forwarding thread did not empty it in time (counted every 100 ms or so).
    pub rx_ring_full: AtomicU64,
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
    /// Of those, drops because the receive ring was full.
    pub rx_ring_full: u64,
    /// Frames sent.
    pub tx: u64,
    /// Transmit drops.
    pub tx_dropped: u64,
}

enum Sender {
    Interface(AfPacketSender),
    Geneve(GeneveSender),
}

/// What every worker shares of one port: its sending half and its counters (which thus
/// outlive any one port table).
struct TxPort {
    number: u32,
    name: String,
    sender: Sender,
    /// The socket, to watch or unwatch in its worker's epoll. Open as long as `sender`
    /// lives (the sender holds it).
    fd: RawFd,
    counters: PortCounters,
}

/// The ports workers send to. Never changed in place: a port coming or going makes a new
/// table.
#[derive(Default)]
struct PortTable {
    ports: Vec<Arc<TxPort>>,
    by_number: HashMap<u32, usize>,
}

impl PortTable {
    fn new(ports: Vec<Arc<TxPort>>) -> PortTable {
        let by_number = ports.iter().enumerate().map(|(i, p)| (p.number, i)).collect();
        PortTable { ports, by_number }
    }

    fn get(&self, number: u32) -> Option<&Arc<TxPort>> {
        self.by_number.get(&number).map(|&i| &self.ports[i])
    }

    /// This table plus `port`.
    fn with(&self, port: Arc<TxPort>) -> PortTable {
        PortTable::new(self.ports.iter().cloned().chain(std::iter::once(port)).collect())
    }

    /// This table less port `number`.
    fn without(&self, number: u32) -> PortTable {
        PortTable::new(self.ports.iter().filter(|p| p.number != number).cloned().collect())
    }
}

enum RxPort {
    Interface(AfPacketPort),
    Geneve(GenevePort),
}

/// A port's receive side, owned by one worker.
struct OwnedPort {
    port: Arc<TxPort>,
    rx: RxPort,
    seen_dropped: u64,
}

/// A change to a worker's receive ports, sent before the generation that announces it.
enum Handover {
    /// Receive from this port too (already in the worker's epoll).
    Add(OwnedPort),
    /// Stop receiving from port `number` and drop its receive side.
    Remove(u32),
}

/// A snapshot of the switch's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwitchStats {
    /// Per port.
    pub ports: Vec<PortStats>,
    /// Frames the flows sent to a port number the switch does not have.
    pub unknown_port_drops: u64,
    /// Batches whose forwarding (pipeline and sends) took longer than 1 ms, and of those,
    /// longer than 10 ms: a worker held up inside a batch (a lock, preemption) while its
    /// rings fill.
    pub slow_batches: [u64; 2],
}

/// Nanoseconds on the monotonic clock since the first call (the datapath's `now`).
pub fn now_ns() -> u64 {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The epoll token of a worker's eventfd; ports are watched with their number.
const WAKER_TOKEN: u64 = u64::MAX;

/// Bound on waiting for the workers to take in a port change. A worker answers within a
/// batch (or a `coalesce` nap); only a worker stuck in a system call for this long could
/// miss it.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// What the switch and its workers share.
struct Shared {
    table: RwLock<Arc<PortTable>>,
    /// Bumped (release) after every change of `table` or of a worker's receive ports.
    generation: AtomicU64,
    unknown_port: AtomicU64,
    /// Batches over 1 ms and over 10 ms.
    slow_batches: [AtomicU64; 2],
    stop: AtomicBool,
    /// Notified by a worker that has taken in a new generation.
    acked: Condvar,
    acked_lock: Mutex<()>,
}

/// One worker, as the switch and the worker thread share it.
struct WorkerState {
    epoll: Epoll,
    waker: EventFd,
    /// The last generation the worker has taken in.
    generation: AtomicU64,
}

struct WorkerLink {
    state: Arc<WorkerState>,
    thread: Option<JoinHandle<()>>,
}

impl WorkerLink {
    fn running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

/// Who receives from which port; its lock serializes port changes.
struct Registry {
    /// Port number → the worker that receives from it.
    owner: HashMap<u32, usize>,
    /// Per worker: where its receive ports are handed over.
    handovers: Vec<mpsc::Sender<Handover>>,
}

/// A running switch. Ports may be added and removed while it forwards; dropping it stops
/// the workers.
pub struct Switch {
    shared: Arc<Shared>,
    workers: Vec<WorkerLink>,
    registry: Mutex<Registry>,
    port_config: PortConfig,
    pool: Arc<SocketPool>,
}

/// Interface sockets prepared ahead of time (see [`PreparedSocket`]), so that adding an
/// interface port only binds one. Each is tagged with the network namespace it was made
/// in: a port is opened in the caller's namespace.
///
/// Preparing one costs milliseconds of CPU in the kernel (it allocates and zeroes the
/// ring, which a VM's first touch of fresh memory makes slower still). The pool is
/// topped up at idle priority as soon as a socket is taken: waiting for a quiet moment
/// instead was measured to drain the pool when pods arrive steadily, and a port opened
/// without a prepared socket waits for the whole set-up plus an RCU grace period.
struct SocketPool {
    cfg: PortConfig,
    ready: Mutex<Vec<(u64, PreparedSocket)>>,
    filling: AtomicBool,
}

/// Prepared sockets kept ready: enough for a burst of pods starting together.
const POOL_TARGET: usize = 4;

/// The calling thread's network namespace (its inode), 0 if unknown.
fn netns_id() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net").map(|m| m.ino()).unwrap_or(0)
}

impl SocketPool {
    fn take(&self, cfg: &PortConfig) -> Option<PreparedSocket> {
        if !self.cfg.ring.eq(&cfg.ring) || self.cfg.ring_bytes != cfg.ring_bytes {
            return None;
        }
        let ns = netns_id();
        let mut ready = self.ready.lock();
        let i = ready.iter().position(|(n, _)| *n == ns)?;
        Some(ready.swap_remove(i).1)
    }

    /// Tops the pool up for the calling thread's namespace, on a thread of its own
    /// (threads start in their creator's namespace).
    fn refill(self: &Arc<Self>) {
        if self.filling.swap(true, Ordering::AcqRel) {
            return;
        }
        let pool = Arc::clone(self);
        let spawned = std::thread::Builder::new().name("skein-dp-pool".into()).spawn(move || {
            // Setting up a ring zeroes megabytes: on a busy node that waits for idle CPU
            // rather than delaying the ADD that is binding the previous socket.
            if let Err(e) = super::sys::idle_priority() {
                tracing::debug!(error = %e, "the socket pool thread keeps its priority");
            }
            let ns = netns_id();
            loop {
                if pool.ready.lock().iter().filter(|(n, _)| *n == ns).count() >= POOL_TARGET {
                    break;
                }
                match PreparedSocket::new(&pool.cfg) {
                    Ok(p) => pool.ready.lock().push((ns, p)),
                    Err((op, e)) => {
                        tracing::debug!(op, error = %e, "preparing a packet socket failed");
                        break;
                    }
                }
            }
            pool.filling.store(false, Ordering::Release);
        });
        if spawned.is_err() {
            self.filling.store(false, Ordering::Release);
        }
    }
}

impl std::fmt::Debug for Switch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Switch")
            .field("ports", &self.shared.table.read().ports.len())
            .field("workers", &self.workers.len())
            .finish()
    }
}

impl Switch {
    /// Opens every port of `specs` (there may be none) and starts `cfg.workers` workers,
    /// dealing the ports round-robin. Fails (opening nothing) if any port cannot be
    /// opened or two ports share a number.
    pub fn start(dp: Arc<Datapath>, specs: &[PortSpec], cfg: SwitchConfig) -> Result<Switch, PortError> {
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = specs.iter().map(PortSpec::number).find(|n| !seen.insert(*n)) {
            return Err(PortError::DuplicateNumber(dup));
        }
        let mut opened = Vec::new();
        for spec in specs {
            opened.push(open_port(spec, &cfg.port)?);
        }
        let table = Arc::new(PortTable::new(opened.iter().map(|o| o.port.clone()).collect()));
        let workers = cfg.workers.max(1);
        let mut owned: Vec<Vec<OwnedPort>> = (0..workers).map(|_| Vec::new()).collect();
        let mut owner = HashMap::new();
        for (i, p) in opened.into_iter().enumerate() {
            owner.insert(p.port.number, i % workers);
            owned[i % workers].push(p);
        }
        let mut switch = Switch {
            shared: Arc::new(Shared {
                table: RwLock::new(table.clone()),
                generation: AtomicU64::new(0),
                unknown_port: AtomicU64::new(0),
                slow_batches: [AtomicU64::new(0), AtomicU64::new(0)],
                stop: AtomicBool::new(false),
                acked: Condvar::new(),
                acked_lock: Mutex::new(()),
            }),
            workers: Vec::new(),
            registry: Mutex::new(Registry { owner, handovers: Vec::new() }),
            port_config: cfg.port,
            pool: Arc::new(SocketPool {
                cfg: PortConfig { filter: None, ..cfg.port },
                ready: Mutex::new(Vec::new()),
                filling: AtomicBool::new(false),
            }),
        };
        switch.pool.refill();
        // On an error below, dropping `switch` stops the workers already started.
        for (w, mine) in owned.into_iter().enumerate() {
            let sys = |op: &'static str| move |source| PortError::Sys { name: format!("worker {w}"), op, source };
            let state = Arc::new(WorkerState {
                epoll: Epoll::new().map_err(sys("create epoll"))?,
                waker: EventFd::new().map_err(sys("create eventfd"))?,
                generation: AtomicU64::new(0),
            });
            for p in &mine {
                state.epoll.add(p.port.fd, u64::from(p.port.number)).map_err(|source| PortError::Sys {
                    name: p.port.name.clone(),
                    op: "watch with epoll",
                    source,
                })?;
            }
            state.epoll.add(state.waker.raw(), WAKER_TOKEN).map_err(sys("watch eventfd"))?;
            let (tx, rx) = mpsc::channel();
            let worker = Worker {
                dp: dp.clone(),
                shared: switch.shared.clone(),
                state: state.clone(),
                handovers: rx,
                // What this worker is started with is generation 0.
                generation: 0,
                table: table.clone(),
                mine,
                cfg,
            };
            let thread = std::thread::Builder::new()
                .name(format!("skein-dp-w{w}"))
                .spawn(move || worker.run())
                .map_err(sys("spawn thread"))?;
            switch.registry.get_mut().handovers.push(tx);
            switch.workers.push(WorkerLink { state, thread: Some(thread) });
        }
        Ok(switch)
    }

    /// Opens a port and starts forwarding through it: every worker can send to it when
    /// this returns (flows that output to it may be installed right after), and the worker
    /// with the fewest ports receives from it. Fails with [`PortError::DuplicateNumber`]
    /// if its number is in use, or with the error of opening it; either way nothing
    /// changes.
    ///
    /// Waits until every worker has taken the port in — within a batch; a worker stuck
    /// for more than a few seconds takes it in before its next batch instead, and that is
    /// logged.
    pub fn add_port(&self, spec: &PortSpec) -> Result<(), PortError> {
        let mut registry = self.registry.lock();
        let number = spec.number();
        if registry.owner.contains_key(&number) {
            return Err(PortError::DuplicateNumber(number));
        }
        let t0 = Instant::now();
        let prepared = match spec {
            PortSpec::Interface { .. } => self.pool.take(&self.port_config),
            _ => None,
        };
        let opened = open_port_with(spec, &self.port_config, prepared);
        if matches!(spec, PortSpec::Interface { .. }) {
            self.pool.refill();
        }
        let opened = opened?;
        let open_time = t0.elapsed();
        let port = opened.port.clone();
        let stopped = |name: &str| PortError::Sys {
            name: name.to_string(),
            op: "hand the port to a worker",
            source: std::io::Error::other("no worker thread is running"),
        };
        let mut load = vec![0usize; self.workers.len()];
        for &w in registry.owner.values() {
            load[w] += 1;
        }
        let w = (0..self.workers.len())
            .filter(|&w| self.workers[w].running())
            .min_by_key(|&w| (load[w], w))
            .ok_or_else(|| stopped(&port.name))?;
        let state = &self.workers[w].state;
        // Watched here, not by the worker, so that a failure is this call's error.
        state.epoll.add(port.fd, u64::from(number)).map_err(|source| PortError::Sys {
            name: port.name.clone(),
            op: "watch with epoll",
            source,
        })?;
        if registry.handovers[w].send(Handover::Add(opened)).is_err() {
            let _ = state.epoll.delete(port.fd);
            return Err(stopped(&port.name));
        }
        registry.owner.insert(number, w);
        self.publish(|t| t.with(port.clone()));
        tracing::info!(
            port = number,
            name = %port.name,
            worker = w,
            open_ms = open_time.as_secs_f64() * 1e3,
            ms = t0.elapsed().as_secs_f64() * 1e3,
            "port added"
        );
        Ok(())
    }

    /// Removes port `number`: outputs to it count as `unknown_port_drops` from then on.
    /// Returns whether it existed.
    ///
    /// Waits (at most a few seconds) until every worker has let go of the port, so that
    /// when this returns its socket is closed and the caller may delete the interface. A
    /// worker that does not answer in time (only one stuck in a system call could) keeps
    /// the socket open until it does; that is logged.
    pub fn remove_port(&self, number: u32) -> bool {
        let mut registry = self.registry.lock();
        let Some(w) = registry.owner.remove(&number) else { return false };
        // Every port of the registry is in the table; holding it keeps its fd open (and
        // its number unused by another socket) until the worker has dropped it.
        let port = self.shared.table.read().get(number).cloned();
        if let Some(p) = &port {
            let _ = self.workers[w].state.epoll.delete(p.fd);
        }
        // A worker that has stopped has dropped its ports already.
        let _ = registry.handovers[w].send(Handover::Remove(number));
        let all_let_go = self.publish(|t| t.without(number));
        if let Some(port) = port {
            let name = port.name.clone();
            // The last reference closes the socket (the worker dropped the receive side).
            if Arc::try_unwrap(port).is_err() {
                tracing::warn!(
                    port = number,
                    name = %name,
                    all_let_go,
                    "port removed, but its socket stays open until a worker lets go of it"
                );
            }
            tracing::info!(port = number, name = %name, "port removed");
        }
        true
    }

    /// Publishes the table `change` makes of the current one, wakes every worker and waits
    /// until each has taken it in (and the receive-port changes sent before it). False if
    /// some worker did not within [`ACK_TIMEOUT`]. Called with the registry locked.
    fn publish(&self, change: impl FnOnce(&PortTable) -> PortTable) -> bool {
        {
            let mut table = self.shared.table.write();
            *table = Arc::new(change(&table));
        }
        let generation = self.shared.generation.fetch_add(1, Ordering::Release) + 1;
        self.wake();
        let deadline = Instant::now() + ACK_TIMEOUT;
        let mut guard = self.shared.acked_lock.lock();
        loop {
            let behind = self
                .workers
                .iter()
                .filter(|w| w.running() && w.state.generation.load(Ordering::Acquire) < generation)
                .count();
            if behind == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                tracing::warn!(generation, workers = behind, "workers did not take in a port change in time");
                return false;
            }
            // Woken by each acknowledgement; the timeout notices a worker that died.
            self.shared.acked.wait_for(&mut guard, Duration::from_millis(10));
        }
    }

    /// Counters of the switch and every port.
    pub fn stats(&self) -> SwitchStats {
        SwitchStats {
            ports: self.port_stats(),
            unknown_port_drops: self.shared.unknown_port.load(Ordering::Relaxed),
            slow_batches: [0, 1].map(|i| self.shared.slow_batches[i].load(Ordering::Relaxed)),
        }
    }

    /// Counters of every port the switch has now, in the order they were added.
    pub fn port_stats(&self) -> Vec<PortStats> {
        // Read under the lock, not from a clone of the table, so that only workers ever
        // hold a table the switch has replaced (see `remove_port`).
        let table = self.shared.table.read();
        table
            .ports
            .iter()
            .map(|p| PortStats {
                number: p.number,
                name: p.name.clone(),
                rx: p.counters.rx.load(Ordering::Relaxed),
                rx_gso: p.counters.rx_gso.load(Ordering::Relaxed),
                rx_dropped: p.counters.rx_dropped.load(Ordering::Relaxed),
                rx_ring_full: p.counters.rx_ring_full.load(Ordering::Relaxed),
                tx: p.counters.tx.load(Ordering::Relaxed),
                tx_dropped: p.counters.tx_dropped.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Wakes every worker (e.g. after a flow change, so nothing waits on a stale sleep).
    pub fn wake(&self) {
        for w in &self.workers {
            w.state.waker.signal();
        }
    }

    /// Stops the workers and waits for them.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.wake();
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Opens the port `spec` describes: its shared half and its receive side.
fn open_port(spec: &PortSpec, cfg: &PortConfig) -> Result<OwnedPort, PortError> {
    open_port_with(spec, cfg, None)
}

/// [`open_port`], with a prepared socket for an interface when there is one.
fn open_port_with(spec: &PortSpec, cfg: &PortConfig, prepared: Option<PreparedSocket>) -> Result<OwnedPort, PortError> {
    let (port, rx) = match spec {
        PortSpec::Interface { number, name } | PortSpec::Uplink { number, name, .. } => {
            let cfg = match spec {
                PortSpec::Uplink { filter, .. } => PortConfig { promiscuous: false, filter: *filter, ..*cfg },
                _ => PortConfig { filter: None, ..*cfg },
            };
            let p = match prepared {
                Some(prepared) => AfPacketPort::open_prepared(name, &cfg, prepared)?,
                None => AfPacketPort::open(name, &cfg)?,
            };
            let port = TxPort {
                number: *number,
                name: name.clone(),
                sender: Sender::Interface(p.sender()),
                fd: p.raw_fd(),
                counters: PortCounters::default(),
            };
            (port, RxPort::Interface(p))
        }
        PortSpec::Geneve { number, local } => {
            let name = format!("geneve {local}");
            let p = GenevePort::open(*local).map_err(|source| PortError::Sys {
                name: name.clone(),
                op: "open the Geneve socket",
                source,
            })?;
            let port = TxPort {
                number: *number,
                name,
                sender: Sender::Geneve(p.sender()),
                fd: p.raw_fd(),
                counters: PortCounters::default(),
            };
            (port, RxPort::Geneve(p))
        }
    };
    Ok(OwnedPort { port: Arc::new(port), rx, seen_dropped: 0 })
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
struct BatchSink {
    /// The worker's port table: the indices in `queued` are into it.
    table: Arc<PortTable>,
    /// (port index, offload, where): the bytes are in `arena` or are a batch packet's.
    queued: Vec<(usize, Offload, Bytes)>,
    arena: Vec<u8>,
    /// Per packet of the batch: its offload and its length as received.
    meta: Vec<(Offload, usize)>,
    unknown_port: u64,
    /// Buffers for UDP super-frames built while sending.
    supers: Vec<Vec<u8>>,
}

impl BatchSink {
    /// The index of port `port`, counting an output to a port the switch does not have.
    fn port_index(&mut self, port: u32) -> Option<usize> {
        let i = self.table.by_number.get(&port).copied();
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
            let p = &self.table.ports[port];
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

/// How a run of frames merges into one super-frame.
#[derive(Clone, Copy, Debug)]
enum Merge {
    /// UDP datagrams of `seg` payload bytes (the last may be shorter).
    Udp { seg: usize },
    /// TCP segments with `hdr_len` header bytes and `seg` payload bytes (the last may be shorter).
    Tcp { hdr_len: usize, seg: usize },
}

/// Sends frames to an interface, merging each run of two or more consecutive UDP
/// datagrams of one flow into a UDP super-frame (see [`offload::coalesce_udp`]) and each
/// run of consecutive segments of one TCP connection into a TSO super-frame (see
/// [`offload::coalesce_tcp`]: segments that arrived one by one from a tunnel reach the pod
/// as the sender's stack sent them). Returns how many of `frames` were sent.
fn send_coalesced(s: &AfPacketSender, frames: &[(Offload, &[u8])], supers: &mut Vec<Vec<u8>>) -> usize {
    // Runs: (start, end, what merges them) of frames that merge.
    let mut runs: Vec<(usize, usize, Merge)> = Vec::new();
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
                runs.push((i, end, Merge::Udp { seg }));
            }
        } else if let Some(first) = offload::tcp_coalescable(frames[i].1, &frames[i].0) {
            end = i + offload::tcp_run(&first, |k| frames.get(i + k).and_then(|(o, f)| offload::tcp_coalescable(f, o)));
            if end - i >= 2 {
                runs.push((i, end, Merge::Tcp { hdr_len: first.hdr_len, seg: first.len }));
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
    for (k, &(a, z, merge)) in runs.iter().enumerate() {
        let members: Vec<&[u8]> = frames[a..z].iter().map(|f| f.1).collect();
        offloads.push(match merge {
            Merge::Udp { seg } => offload::coalesce_udp(&members, seg, &mut supers[k]),
            Merge::Tcp { hdr_len, seg } => offload::coalesce_tcp(&members, hdr_len, seg, &mut supers[k]),
        });
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

impl BatchSink {
    /// The offload state packet `packet` leaves with as `frame`: header pushes and pops
    /// move the checksum start with them.
    fn offload_of(&self, packet: usize, frame: &[u8]) -> Offload {
        let (offload, len) = self.meta.get(packet).copied().unwrap_or((Offload::NONE, frame.len()));
        offload.shifted(frame.len() as isize - len as isize).unwrap_or(Offload::NONE)
    }
}

impl OutputSink for BatchSink {
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

/// A worker thread: the receive side of its ports, its view of the port table.
struct Worker {
    dp: Arc<Datapath>,
    shared: Arc<Shared>,
    state: Arc<WorkerState>,
    handovers: mpsc::Receiver<Handover>,
    /// The generation `table` and `mine` are of.
    generation: u64,
    table: Arc<PortTable>,
    mine: Vec<OwnedPort>,
    cfg: SwitchConfig,
}

impl Worker {
    fn run(self) {
        let Worker { dp, shared, state, handovers, mut generation, table, mut mine, cfg } = self;
        let mut worker = dp.worker();
        let mut batch: Vec<Packet> = Vec::with_capacity(cfg.batch);
        let mut pool: Vec<Vec<u8>> = Vec::new();
        let mut sink = BatchSink {
            table,
            queued: Vec::new(),
            arena: Vec::new(),
            meta: Vec::new(),
            unknown_port: 0,
            supers: Vec::new(),
        };
        let mut tokens = [0u64; 32];
        let mut last_packet = Instant::now();
        let mut last_ring_check = last_packet;
        // Consecutive packet-bearing rounds that came soon after the previous one.
        let mut steady = 0u32;
        const STEADY_ROUNDS: u32 = 3;
        // Whether the last round ended in a nap, and when napping may start again.
        let mut napped = false;
        let mut no_nap_until = last_packet;
        // Naps in a row that gathered less than two packets.
        let mut useless_naps = 0u32;
        const USELESS_NAPS: u32 = 3;
        while !shared.stop.load(Ordering::Acquire) {
            let now_generation = shared.generation.load(Ordering::Acquire);
            if now_generation != generation {
                generation = now_generation;
                take_port_changes(&handovers, &mut mine, &shared, &mut sink);
                state.generation.store(generation, Ordering::Release);
                // Taking the lock orders this notification after the switch's check.
                let _guard = shared.acked_lock.lock();
                shared.acked.notify_all();
            }
            let mut got = 0;
            // A port gave a whole batch: more is waiting, so a nap would only idle.
            let mut backlog = false;
            for p in mine.iter_mut() {
                batch.clear();
                let in_port = p.port.number;
                let n = match &mut p.rx {
                    RxPort::Interface(a) => a.recv(&mut batch, &mut pool, cfg.batch, in_port),
                    RxPort::Geneve(g) => g.recv(&mut batch, &mut pool, cfg.batch, in_port),
                };
                let dropped = match &p.rx {
                    RxPort::Interface(a) => a.counters().truncated,
                    RxPort::Geneve(g) => g.counters().invalid,
                };
                let counters = &p.port.counters;
                if dropped != p.seen_dropped {
                    counters.rx_dropped.fetch_add(dropped - p.seen_dropped, Ordering::Relaxed);
                    p.seen_dropped = dropped;
                }
                if n == 0 {
                    continue;
                }
                // Frames taken (datagrams for a tunnel port, whose TCP runs merge into fewer packets).
                got += n;
                backlog |= n >= cfg.batch;
                counters.rx.fetch_add(n as u64, Ordering::Relaxed);
                let gso = batch.iter().filter(|p| p.offload.is_gso()).count();
                if gso > 0 {
                    counters.rx_gso.fetch_add(gso as u64, Ordering::Relaxed);
                }
                sink.meta.clear();
                sink.meta.extend(batch.iter().map(|p| (p.offload, p.data.len())));
                let started = Instant::now();
                dp.process_batch(&mut worker, &mut batch, now_ns(), &mut sink);
                sink.flush(&batch);
                let took = started.elapsed();
                if took >= SLOW_BATCH[0] {
                    for (i, bound) in SLOW_BATCH.iter().enumerate() {
                        if took >= *bound {
                            shared.slow_batches[i].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                if sink.unknown_port != 0 {
                    shared.unknown_port.fetch_add(std::mem::take(&mut sink.unknown_port), Ordering::Relaxed);
                }
                pool.extend(batch.drain(..).map(|p| p.data));
            }
            if napped {
                napped = false;
                if got < 2 {
                    useless_naps += 1;
                    if useless_naps >= USELESS_NAPS {
                        // Nothing built up meanwhile, again: the traffic waits on this switch.
                        no_nap_until = Instant::now() + NAP_BACKOFF;
                        useless_naps = 0;
                    }
                } else {
                    useless_naps = 0;
                }
            }
            if got > 0 {
                let now = Instant::now();
                if now.duration_since(last_ring_check) >= RING_CHECK_EVERY {
                    last_ring_check = now;
                    count_ring_drops(&mine);
                }
                if !cfg.coalesce.is_zero() && now.duration_since(last_packet) < cfg.coalesce * 4 {
                    steady = steady.saturating_add(1);
                } else {
                    steady = 0;
                }
                last_packet = now;
                if steady >= STEADY_ROUNDS && !backlog && now >= no_nap_until {
                    // A stream is running: let a batch build up rather than wake per packet.
                    std::thread::sleep(cfg.coalesce);
                    napped = true;
                }
                continue;
            }
            if last_packet.elapsed() < cfg.busy_poll {
                std::hint::spin_loop();
                continue;
            }
            if last_ring_check.elapsed() >= RING_CHECK_EVERY {
                last_ring_check = Instant::now();
                count_ring_drops(&mine);
            }
            // Sleep until a port is readable (or a wake-up); the timeout only bounds how
            // long a stop request can go unnoticed if a wake-up were ever lost.
            if let Ok(n) = state.epoll.wait(&mut tokens, 1000)
                && tokens[..n].contains(&WAKER_TOKEN)
            {
                state.waker.drain();
            }
        }
    }
}

/// How long a worker does not nap after three naps in a row that each gathered less than
/// two packets.
pub const NAP_BACKOFF: Duration = Duration::from_millis(20);

/// A batch taking this long is counted as slow (`SwitchStats::slow_batches`).
const SLOW_BATCH: [Duration; 2] = [Duration::from_millis(1), Duration::from_millis(10)];

/// How often a worker asks the kernel for its rings' drops (a system call per port).
const RING_CHECK_EVERY: Duration = Duration::from_millis(100);

/// Adds what the kernel dropped at the receive rings of `ports` since the last check to
/// their counters.
fn count_ring_drops(ports: &[OwnedPort]) {
    for p in ports {
        if let RxPort::Interface(a) = &p.rx {
            let n = a.take_ring_drops();
            if n > 0 {
                p.port.counters.rx_ring_full.fetch_add(n, Ordering::Relaxed);
                p.port.counters.rx_dropped.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

/// Takes in what changed since the worker's last generation: receive ports handed over
/// or taken away, and the current port table (replacing, and so releasing, the old one).
/// Called between batches, when nothing is queued on the old table.
fn take_port_changes(
    handovers: &mpsc::Receiver<Handover>,
    mine: &mut Vec<OwnedPort>,
    shared: &Shared,
    sink: &mut BatchSink,
) {
    while let Ok(h) = handovers.try_recv() {
        match h {
            Handover::Add(p) => mine.push(p),
            Handover::Remove(number) => mine.retain(|p| p.port.number != number),
        }
    }
    sink.table = shared.table.read().clone();
}

#[cfg(test)]
mod tests {
    //! Port changes on a running switch, with Geneve ports on the loopback (no root
    //! needed); interface ports are exercised in `tests/netns.rs`.

    use std::net::{Ipv4Addr, UdpSocket};

    use super::*;
    use crate::DatapathConfig;
    use crate::control::Control;
    use crate::geneve::{self, EncapParams};
    use crate::key::ip_proto;
    use crate::parse::tests::ipv4_frame;

    /// Bound on the switch forwarding a datagram sent to it.
    const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

    /// A loopback address with a UDP port nobody uses (the port is free when this returns).
    fn free_loopback() -> SocketAddrV4 {
        let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a loopback UDP socket");
        match s.local_addr().expect("local address") {
            std::net::SocketAddr::V4(a) => a,
            other => panic!("IPv4 bind gave {other}"),
        }
    }

    fn geneve(number: u32, local: SocketAddrV4) -> PortSpec {
        PortSpec::Geneve { number, local }
    }

    fn numbers(sw: &Switch) -> Vec<u32> {
        sw.port_stats().iter().map(|p| p.number).collect()
    }

    fn stat(sw: &Switch, number: u32) -> PortStats {
        sw.port_stats().into_iter().find(|p| p.number == number).unwrap_or_else(|| panic!("no port {number}"))
    }

    /// Sends one Geneve datagram carrying a TCP frame (which a Geneve port cannot send
    /// on, so outputs to one count as its `tx_dropped`) to `to`.
    fn send_geneve(to: SocketAddrV4) {
        let inner = ipv4_frame(ip_proto::TCP, 0x0a00_0001, 0x0a00_0002, 1000, 80, b"hello");
        let params = EncapParams {
            outer_eth_src: [2, 0, 0, 0, 0, 1],
            outer_eth_dst: [2, 0, 0, 0, 0, 2],
            src: u32::from(Ipv4Addr::LOCALHOST),
            dst: u32::from(*to.ip()),
            ttl: 64,
            vni: 5,
            ingress: 1,
            egress: 2,
            identity: 0,
        };
        let mut frame = Vec::new();
        geneve::encap(&inner, &params, 0, &mut frame).expect("encapsulate");
        // The UDP payload: after outer Ethernet, IPv4 and UDP headers.
        let client = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a client socket");
        client.send_to(&frame[42..], to).expect("send a Geneve datagram");
    }

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + FORWARD_TIMEOUT;
        while !done() {
            assert!(Instant::now() < deadline, "timed out after {FORWARD_TIMEOUT:?} waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn switch(workers: usize) -> (Arc<Datapath>, Switch) {
        let dp = Arc::new(Datapath::new(DatapathConfig::default()));
        let sw = Switch::start(dp.clone(), &[], SwitchConfig { workers, ..SwitchConfig::default() })
            .expect("start a switch without ports");
        (dp, sw)
    }

    #[test]
    fn ports_come_and_go_while_the_switch_forwards() {
        let (dp, sw) = switch(2);
        assert!(numbers(&sw).is_empty());
        let (a, b) = (free_loopback(), free_loopback());
        sw.add_port(&geneve(100, a)).unwrap();
        sw.add_port(&geneve(101, b)).unwrap();
        assert_eq!(numbers(&sw), vec![100, 101]);
        let control = Control::new(dp, Box::new(SwitchStats::default), now_ns);
        control.reload("table=0,priority=1,in_port=100,actions=output:101\n").unwrap();

        // Received on 100 by whichever worker got it, sent to 101 (which drops the frame).
        send_geneve(a);
        wait_until("port 101 to be given the frame", || stat(&sw, 101).tx_dropped == 1);
        assert_eq!(stat(&sw, 100).rx, 1);
        assert_eq!(sw.stats().unknown_port_drops, 0);

        // Removed: outputs to 101 are unknown, and its socket is closed already.
        assert!(sw.remove_port(101));
        assert_eq!(numbers(&sw), vec![100]);
        UdpSocket::bind(b).expect("the removed port's socket is closed when remove_port returns");
        assert!(!sw.remove_port(101), "a port is removed once");
        send_geneve(a);
        wait_until("the output to removed port 101 to count", || sw.stats().unknown_port_drops == 1);
        assert_eq!(stat(&sw, 100).rx, 2, "the other port's counters survive the table change");

        // Back under the same number: forwarded to it again, with fresh counters.
        sw.add_port(&geneve(101, b)).unwrap();
        send_geneve(a);
        wait_until("port 101 to be given the frame again", || stat(&sw, 101).tx_dropped == 1);
        assert_eq!(sw.stats().unknown_port_drops, 1);

        // Removing the receiving port closes its socket too (its worker let go of it).
        assert!(sw.remove_port(100));
        UdpSocket::bind(a).expect("the removed receiving port's socket is closed");
        assert_eq!(numbers(&sw), vec![101]);
        sw.stop();
    }

    #[test]
    fn ports_change_safely_under_traffic() {
        let (dp, sw) = switch(2);
        let (a, b) = (free_loopback(), free_loopback());
        sw.add_port(&geneve(100, a)).unwrap();
        let control = Control::new(dp, Box::new(SwitchStats::default), now_ns);
        control.reload("table=0,priority=1,in_port=100,actions=output:101\n").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let sender = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    send_geneve(a);
                    std::thread::sleep(Duration::from_micros(50));
                }
            })
        };
        let mut given_to_101 = 0;
        for round in 0..40 {
            sw.add_port(&geneve(101, b)).unwrap_or_else(|e| panic!("round {round}: add: {e}"));
            std::thread::sleep(Duration::from_millis(2));
            given_to_101 += stat(&sw, 101).tx_dropped;
            assert!(sw.remove_port(101), "round {round}");
            UdpSocket::bind(b).unwrap_or_else(|e| panic!("round {round}: the removed socket is still open: {e}"));
        }
        stop.store(true, Ordering::Relaxed);
        sender.join().unwrap();
        // Let the switch drain what is still queued on port 100.
        let mut last = u64::MAX;
        wait_until("port 100 to go quiet", || {
            std::thread::sleep(Duration::from_millis(50));
            std::mem::replace(&mut last, stat(&sw, 100).rx) == last
        });
        let s = sw.stats();
        assert!(last > 0 && given_to_101 > 0 && s.unknown_port_drops > 0, "{s:?}, {given_to_101} given to 101");
        // Each frame went to a port 101 or was counted unknown (some given to 101 just
        // before a removal are in neither figure).
        assert!(given_to_101 + s.unknown_port_drops <= last, "{s:?}, {given_to_101} given to 101");
        assert_eq!(numbers(&sw), vec![100]);
    }

    #[test]
    fn a_port_that_cannot_be_added_changes_nothing() {
        let (_dp, sw) = switch(1);
        let a = free_loopback();
        sw.add_port(&geneve(100, a)).unwrap();
        let before = sw.stats();

        let taken = free_loopback();
        match sw.add_port(&geneve(100, taken)) {
            Err(PortError::DuplicateNumber(100)) => {}
            other => panic!("a second port 100 should be refused as a duplicate, got {other:?}"),
        }
        UdpSocket::bind(taken).expect("a refused port is not opened");

        let e = sw.add_port(&PortSpec::Interface { number: 7, name: "sk-no-such-if".into() }).unwrap_err();
        assert!(e.to_string().contains("\"sk-no-such-if\""), "the error should name the interface: {e}");

        let e = sw.add_port(&geneve(8, a)).unwrap_err().to_string();
        assert!(e.contains(&a.to_string()), "the error should name the address in use: {e}");

        assert_eq!(sw.stats(), before);
        send_geneve(a);
        wait_until("the first port 100 to still receive", || stat(&sw, 100).rx == 1);
    }

    #[test]
    fn zero_workers_means_one_and_start_refuses_duplicates() {
        let (_dp, sw) = switch(0);
        assert_eq!(sw.workers.len(), 1);
        let a = free_loopback();
        sw.add_port(&geneve(1, a)).unwrap();
        send_geneve(a);
        wait_until("the only worker to receive", || stat(&sw, 1).rx == 1);

        let dp = Arc::new(Datapath::new(DatapathConfig::default()));
        let (x, y) = (free_loopback(), free_loopback());
        match Switch::start(dp, &[geneve(3, x), geneve(3, y)], SwitchConfig::default()) {
            Err(PortError::DuplicateNumber(3)) => {}
            other => panic!("two ports 3 should be refused, got {other:?}"),
        }
    }
}
