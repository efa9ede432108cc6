//! The communicator: bootstrap through rank 0, the per-peer TCP connections (opened lazily or
//! as a full mesh), the typed collective calls, and failure handling — the first error poisons
//! the communicator and shuts every connection down so that all peers fail fast, not hang.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::algorithms::{self, AllgatherAlgorithm, AllreduceAlgorithm, BroadcastAlgorithm, ReduceAlgorithm};
use crate::bootstrap::{Rendezvous, parse_host_port};
use crate::config::{Config, ConnectMode};
use crate::datatype::{Element, ReduceOp, byte_reducer};
use crate::engine::{self, Bufs, Ctx, Plan, Reduction};
use crate::error::{Error, Result};
use crate::interface::{self, Selection};
use crate::transport::{self, ReadError};
use crate::wire::{BootstrapMessage, Collective, FrameHeader, MAX_WORLD_SIZE};

/// A group of ranks that run collectives together over TCP.
///
/// Calls are collective: every rank must make the same calls in the same order with matching
/// arguments (lengths, types, ops, roots, algorithm overrides). A rank that gets something else
/// from a peer fails with [`Error::Mismatch`] naming both sides' view.
pub struct Communicator {
    rank: usize,
    size: usize,
    conns: Vec<Option<TcpStream>>,
    listener: Option<TcpListener>,
    addrs: Vec<SocketAddr>,
    job: u64,
    config: Config,
    seq: u32,
    scratch: Vec<Vec<u64>>,
    tmp: Vec<u64>,
    failure: Option<String>,
    shared: Arc<AbortShared>,
    busy_wait: Duration,
    /// The address this rank's connections are made from (the chosen interface's).
    bind: Option<IpAddr>,
    /// Why this interface (`interface::select`).
    interface_reason: String,
}

struct AbortShared {
    flag: AtomicBool,
    /// Duplicates of every data socket, so another thread can shut them down.
    sockets: Mutex<Vec<TcpStream>>,
}

/// Aborts a communicator from another thread (say, a signal handler thread or a watchdog):
/// its connections are shut down, its current and future calls fail with [`Error::Aborted`]
/// or a connection error, and every peer's calls fail promptly too.
#[derive(Clone)]
pub struct AbortHandle(Arc<AbortShared>);

impl AbortHandle {
    /// Aborts. Idempotent.
    pub fn abort(&self) {
        self.0.flag.store(true, Ordering::SeqCst);
        if let Ok(socks) = self.0.sockets.lock() {
            for s in socks.iter() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

impl std::fmt::Debug for Communicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Communicator")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

impl Drop for Communicator {
    fn drop(&mut self) {
        // The duplicates would otherwise keep the connections open after this rank is gone,
        // and peers would wait for the timeout instead of seeing the close at once.
        if let Ok(mut socks) = self.shared.sockets.lock() {
            socks.clear();
        }
    }
}

fn job_nonce() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.write_u32(std::process::id());
    h.finish()
}

fn reject(s: &mut TcpStream, reason: String, deadline: Instant) {
    tracing::warn!(%reason, "rejecting a rank at the rendezvous");
    let _ = transport::write_message(s, &BootstrapMessage::Reject { reason }, deadline);
}

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

impl Communicator {
    /// Bootstraps from the environment: `Config::from_env` and `Rendezvous::from_env`.
    pub fn from_env() -> Result<Communicator> {
        let config = Config::from_env()?;
        let rdv = Rendezvous::from_env()?;
        Communicator::init(&rdv, config)
    }

    /// Bootstraps as `rdv.rank`: rank 0 listens on the rendezvous address, the others
    /// register with it, from the interface `SKEIN_SOCKET_IFNAME` or `SKEIN_RDMA_NETDEVS`
    /// choose (`interface::select`).
    pub fn init(rdv: &Rendezvous, config: Config) -> Result<Communicator> {
        let interfaces = match interface::local_interfaces() {
            Ok(list) => list,
            Err(e) if config.socket_ifname.is_empty() && config.rdma_netdevs.is_empty() => {
                tracing::debug!(error = %e, "cannot list the network interfaces; using the route's");
                Vec::new()
            }
            Err(e) => return Err(Error::local("listing the network interfaces (rtnetlink)", e)),
        };
        let selection = interface::select(&config.socket_ifname, &config.rdma_netdevs, &interfaces)?;
        tracing::info!(rank = rdv.rank, transport = %config.transport, bind = ?selection.bind, reason = %selection.reason,
            "data interface");
        let mut comm = Communicator::init_with(rdv, config, &selection)?;
        comm.interface_reason = selection.reason;
        Ok(comm)
    }

    fn init_with(rdv: &Rendezvous, config: Config, selection: &Selection) -> Result<Communicator> {
        if rdv.rank == 0 {
            let (host, port) =
                parse_host_port(&rdv.address).map_err(|r| Error::config("SKEIN_RENDEZVOUS", &rdv.address, r))?;
            // A host name is not bound (rank 0's own DNS record may not exist yet); an address
            // literal is, so a test on 127.0.0.1 stays on loopback.
            let ip: IpAddr = match host.parse::<IpAddr>() {
                Ok(ip) if !rdv.bind_any => ip,
                Ok(IpAddr::V6(_)) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            };
            let listener = TcpListener::bind((ip, port))
                .map_err(|e| Error::local(format!("rank 0 binding the rendezvous {ip}:{port}"), e))?;
            Communicator::host(listener, rdv.world_size, config)
        } else {
            Communicator::join_from(
                rdv.rank,
                rdv.world_size,
                &rdv.address,
                config,
                selection.bind.as_ref().map(|b| b.1),
            )
        }
    }

    fn empty(rank: usize, size: usize, config: Config) -> Communicator {
        Communicator {
            rank,
            size,
            conns: (0..size).map(|_| None).collect(),
            listener: None,
            addrs: Vec::new(),
            job: 0,
            config,
            seq: 0,
            scratch: vec![Vec::new(); size],
            tmp: Vec::new(),
            failure: None,
            busy_wait: engine::MAX_BUSY_WAIT,
            bind: None,
            interface_reason: String::new(),
            shared: Arc::new(AbortShared { flag: AtomicBool::new(false), sockets: Mutex::new(Vec::new()) }),
        }
    }

    fn check_world(world_size: usize) -> Result<()> {
        if world_size == 0 || world_size > MAX_WORLD_SIZE {
            return Err(Error::InvalidArgument(format!("world size {world_size} outside 1..={MAX_WORLD_SIZE}")));
        }
        Ok(())
    }

    /// Rank 0: serves the rendezvous on `listener` until all `world_size - 1` other ranks have
    /// registered, then sends everyone the address table.
    pub fn host(listener: TcpListener, world_size: usize, config: Config) -> Result<Communicator> {
        Communicator::check_world(world_size)?;
        let mut comm = Communicator::empty(0, world_size, config);
        let deadline = Instant::now() + comm.config.bootstrap_timeout;
        let local = listener.local_addr().map_err(|e| Error::local("reading the rendezvous address", e))?;
        listener.set_nonblocking(true).map_err(|e| Error::local("configuring the rendezvous listener", e))?;
        let mut regs: Vec<Option<(TcpStream, SocketAddr)>> = (0..world_size).map(|_| None).collect();
        let mut missing = world_size - 1;
        while missing > 0 {
            let Some((mut s, from)) = transport::accept_by(&listener, deadline, &comm.shared.flag, &[])? else {
                let absent: Vec<String> =
                    (1..world_size).filter(|r| regs[*r].is_none()).map(|r| r.to_string()).collect();
                return Err(Error::Bootstrap(format!(
                    "ranks {} did not register at {local} within {:?}",
                    absent.join(", "),
                    comm.config.bootstrap_timeout
                )));
            };
            let hello_deadline = deadline.min(Instant::now() + HELLO_TIMEOUT);
            match transport::read_message(&mut s, hello_deadline) {
                Ok(BootstrapMessage::Register { rank, world_size: ws, listen_port, little_endian }) => {
                    let rank = rank as usize;
                    if ws as usize != world_size {
                        reject(
                            &mut s,
                            format!("rank {rank} has SKEIN_WORLD_SIZE={ws}, rank 0 has {world_size}"),
                            hello_deadline,
                        );
                    } else if little_endian != cfg!(target_endian = "little") {
                        reject(&mut s, "byte order differs from rank 0's".into(), hello_deadline);
                    } else if rank == 0 {
                        reject(&mut s, "a second process claims rank 0 (check SKEIN_RANK)".into(), hello_deadline);
                    } else if let Some((_, prev)) = &regs[rank] {
                        let reason = format!("rank {rank} already registered from {prev}");
                        reject(&mut s, reason, hello_deadline);
                    } else {
                        tracing::debug!(rank, %from, "rank registered");
                        regs[rank] = Some((s, SocketAddr::new(from.ip(), listen_port)));
                        missing -= 1;
                    }
                }
                Ok(other) => {
                    tracing::warn!(%from, ?other, "ignoring unexpected message at the rendezvous");
                }
                Err(e) => {
                    tracing::warn!(%from, error = %e, "ignoring a connection that did not register");
                }
            }
        }
        comm.job = job_nonce();
        let mut addrs = vec![local; world_size];
        for (r, reg) in regs.iter().enumerate() {
            if let Some((_, a)) = reg {
                addrs[r] = *a;
            }
        }
        let table = BootstrapMessage::Table { job: comm.job, addrs: addrs.clone() };
        for (r, reg) in regs.into_iter().enumerate() {
            let Some((mut s, _)) = reg else { continue };
            transport::write_message(&mut s, &table, deadline)
                .map_err(|e| Error::io(r, "sending the address table", e))?;
            comm.adopt(r, s)?;
        }
        comm.addrs = addrs;
        comm.after_bootstrap()?;
        Ok(comm)
    }

    /// Rank `rank` > 0: registers with the rendezvous at `rendezvous` (`host:port`, retried
    /// until the bootstrap timeout while rank 0 starts) and waits for the address table.
    pub fn join(rank: usize, world_size: usize, rendezvous: &str, config: Config) -> Result<Communicator> {
        Communicator::join_from(rank, world_size, rendezvous, config, None)
    }

    /// [`Communicator::join`] with every connection made from `bind` (an interface's address).
    pub fn join_from(
        rank: usize,
        world_size: usize,
        rendezvous: &str,
        config: Config,
        bind: Option<IpAddr>,
    ) -> Result<Communicator> {
        Communicator::check_world(world_size)?;
        if rank == 0 || rank >= world_size {
            return Err(Error::InvalidArgument(format!(
                "join needs a rank in 1..{world_size}, got {rank} (rank 0 hosts)"
            )));
        }
        let mut comm = Communicator::empty(rank, world_size, config);
        comm.bind = bind;
        let deadline = Instant::now() + comm.config.bootstrap_timeout;
        let mut s = transport::connect_retry(rendezvous, bind, deadline, &comm.shared.flag)?;
        // Listen on the address rank 0 sees us from: that interface reaches the other ranks.
        let local_ip = s.local_addr().map_err(|e| Error::local("reading the local address", e))?.ip();
        let listener = TcpListener::bind((local_ip, 0))
            .map_err(|e| Error::local(format!("binding a data listener on {local_ip}"), e))?;
        listener.set_nonblocking(true).map_err(|e| Error::local("configuring the data listener", e))?;
        let listen_port =
            listener.local_addr().map_err(|e| Error::local("reading the data listener's port", e))?.port();
        let hello = BootstrapMessage::Register {
            rank: rank as u32,
            world_size: world_size as u32,
            listen_port,
            little_endian: cfg!(target_endian = "little"),
        };
        transport::write_message(&mut s, &hello, deadline)
            .map_err(|e| Error::io(0, format!("registering with the rendezvous {rendezvous}"), e))?;
        match transport::read_message(&mut s, deadline) {
            Ok(BootstrapMessage::Table { job, addrs }) => {
                if addrs.len() != world_size {
                    return Err(Error::Bootstrap(format!(
                        "address table from {rendezvous} lists {} ranks, expected {world_size}",
                        addrs.len()
                    )));
                }
                comm.job = job;
                comm.addrs = addrs;
            }
            Ok(BootstrapMessage::Reject { reason }) => return Err(Error::Rejected(reason)),
            Ok(other) => {
                return Err(Error::Bootstrap(format!(
                    "rendezvous {rendezvous} sent {other:?} instead of the address table"
                )));
            }
            Err(ReadError::Closed) => {
                return Err(Error::Bootstrap(format!(
                    "rendezvous {rendezvous} closed the connection before sending the address table"
                )));
            }
            Err(ReadError::Deadline) => {
                return Err(Error::Bootstrap(format!(
                    "no address table from {rendezvous} within {:?}: are all {world_size} ranks started?",
                    comm.config.bootstrap_timeout
                )));
            }
            Err(e) => {
                return Err(Error::Bootstrap(format!("reading the address table from {rendezvous}: {e}")));
            }
        }
        comm.adopt(0, s)?;
        comm.listener = Some(listener);
        comm.after_bootstrap()?;
        Ok(comm)
    }

    /// Creates `n` communicators in this process, ranked 0..n, over 127.0.0.1 (bootstrapped
    /// concurrently on helper threads). For tests, and for trying collectives on one host.
    pub fn local_group(n: usize, config: Config) -> Result<Vec<Communicator>> {
        Communicator::check_world(n)?;
        let listener =
            TcpListener::bind("127.0.0.1:0").map_err(|e| Error::local("binding a loopback rendezvous", e))?;
        let addr =
            listener.local_addr().map_err(|e| Error::local("reading the loopback rendezvous address", e))?.to_string();
        let results: Vec<Result<Communicator>> = std::thread::scope(|s| {
            let joins: Vec<_> = (1..n)
                .map(|r| {
                    let (addr, config) = (addr.clone(), config.clone());
                    s.spawn(move || Communicator::join(r, n, &addr, config))
                })
                .collect();
            let mut out = vec![Communicator::host(listener, n, config.clone())];
            for j in joins {
                out.push(j.join().unwrap_or_else(|_| Err(Error::Bootstrap("a bootstrap thread panicked".into()))));
            }
            out
        });
        results.into_iter().collect()
    }

    fn after_bootstrap(&mut self) -> Result<()> {
        if self.config.connect == ConnectMode::Eager {
            let all: Vec<usize> = (0..self.size).filter(|p| *p != self.rank).collect();
            self.ensure_connected(&all).inspect_err(|e| self.poison(e))?;
        }
        if self.rank == 0 || (self.config.connect == ConnectMode::Eager) {
            // Nobody will connect to us any more.
            self.listener = None;
        }
        Ok(())
    }

    fn adopt(&mut self, peer: usize, s: TcpStream) -> Result<()> {
        transport::tune_data_socket(&s, &self.config, peer)?;
        let dup = s.try_clone().map_err(|e| Error::io(peer, "duplicating the socket for aborts", e))?;
        if let Ok(mut socks) = self.shared.sockets.lock() {
            socks.push(dup);
        }
        self.conns[peer] = Some(s);
        Ok(())
    }

    /// Opens connections to `peers` that are not yet open: this rank dials lower ranks and
    /// accepts higher ones. Dialling never waits for the other side's program (the kernel
    /// completes the handshake from its backlog), so two ranks cannot wait on each other.
    fn ensure_connected(&mut self, peers: &[usize]) -> Result<()> {
        if peers.iter().all(|p| self.conns[*p].is_some()) {
            return Ok(());
        }
        let deadline = Instant::now() + self.config.timeout;
        let me = self.rank;
        for &p in peers.iter().filter(|p| **p < me) {
            if self.conns[p].is_some() {
                continue;
            }
            let addr = self.addrs[p];
            let mut s = transport::connect_addr(addr, self.bind, deadline)
                .map_err(|e| Error::io(p, format!("connecting to {addr}"), e))?;
            let hello =
                BootstrapMessage::Connect { rank: self.rank as u32, world_size: self.size as u32, job: self.job };
            transport::write_message(&mut s, &hello, deadline)
                .map_err(|e| Error::io(p, "sending the connection hello", e))?;
            tracing::debug!(peer = p, %addr, "connected");
            self.adopt(p, s)?;
        }
        for &p in peers.iter().filter(|p| **p > me) {
            while self.conns[p].is_none() {
                let listener = self
                    .listener
                    .as_ref()
                    .ok_or_else(|| Error::InvalidArgument(format!("internal: no listener to accept rank {p}")))?;
                let watch: Vec<(usize, &TcpStream)> =
                    self.conns.iter().enumerate().filter_map(|(r, c)| c.as_ref().map(|c| (r, c))).collect();
                let accepted = transport::accept_by(listener, deadline, &self.shared.flag, &watch)?;
                let Some((mut s, from)) = accepted else {
                    return Err(Error::Timeout {
                        peer: p,
                        during: "connection set-up".into(),
                        timeout: self.config.timeout,
                    });
                };
                let hello_deadline = deadline.min(Instant::now() + HELLO_TIMEOUT);
                match transport::read_message(&mut s, hello_deadline) {
                    Ok(BootstrapMessage::Connect { rank, world_size, job })
                        if job == self.job
                            && world_size as usize == self.size
                            && (rank as usize) > self.rank
                            && self.conns[rank as usize].is_none() =>
                    {
                        tracing::debug!(peer = rank, %from, "accepted");
                        self.adopt(rank as usize, s)?;
                    }
                    Ok(other) => {
                        tracing::warn!(%from, ?other, "refusing a connection from another job or a duplicate rank");
                    }
                    Err(e) => {
                        tracing::warn!(%from, error = %e, "refusing a connection without a valid hello");
                    }
                }
            }
        }
        Ok(())
    }

    fn poison(&mut self, e: &Error) {
        if self.failure.is_none() {
            tracing::error!(rank = self.rank, error = %e, "collective failed; shutting connections down");
            self.failure = Some(e.to_string());
        }
        for s in self.conns.iter().flatten() {
            let _ = s.shutdown(Shutdown::Both);
        }
        self.listener = None;
    }

    /// This rank, 0..size.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The data path, for a report: transport, the interface and address of this rank's first
    /// connection, and why that interface (`tcp over eth0 10.244.1.5 (the interface towards
    /// rank 0)`).
    pub fn data_path(&self) -> String {
        let local = self.conns.iter().flatten().find_map(|s| s.local_addr().ok()).map(|a| a.ip());
        let interfaces = interface::local_interfaces().unwrap_or_default();
        let reason = if self.interface_reason.is_empty() { "set up in-process" } else { &self.interface_reason };
        match local {
            Some(ip) => format!(
                "{} over {} {ip} ({reason})",
                self.config.transport,
                interface::interface_of(ip, &interfaces).unwrap_or("an unnamed interface")
            ),
            None => format!("{} (one rank: no connections)", self.config.transport),
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A handle that aborts this communicator from another thread.
    pub fn abort_handle(&self) -> AbortHandle {
        AbortHandle(self.shared.clone())
    }

    /// Runs one collective call: numbers it, hands the algorithm an executor, and poisons the
    /// communicator if anything fails.
    fn call<R>(
        &mut self,
        collective: Collective,
        algorithm: u8,
        root: usize,
        typed: Option<(crate::DType, Option<ReduceOp>, Option<Reduction>)>,
        f: impl FnOnce(&mut Exec<'_>, &mut Vec<u64>) -> Result<R>,
    ) -> Result<R> {
        if let Some(why) = &self.failure {
            return Err(Error::Poisoned(why.clone()));
        }
        if self.shared.flag.load(Ordering::Relaxed) {
            let e = Error::Aborted;
            self.poison(&e);
            return Err(e);
        }
        self.seq = self.seq.wrapping_add(1);
        let header = FrameHeader {
            collective,
            algorithm,
            dtype: typed.map(|t| t.0),
            op: typed.and_then(|t| t.1),
            seq: self.seq,
            root: root as u32,
            len: 0,
        };
        let reduction = typed.and_then(|t| t.2);
        let mut tmp = std::mem::take(&mut self.tmp);
        let r = f(&mut Exec { comm: self, header, reduction }, &mut tmp);
        self.tmp = tmp;
        if let Err(e) = &r {
            self.poison(e);
        }
        r
    }

    fn check_root(&self, root: usize) -> Result<()> {
        if root >= self.size {
            return Err(Error::InvalidArgument(format!(
                "root {root} is not a rank of this {}-rank communicator",
                self.size
            )));
        }
        Ok(())
    }

    /// Blocks until every rank has entered the barrier (dissemination: ⌈log2 n⌉ rounds).
    pub fn barrier(&mut self) -> Result<()> {
        self.call(Collective::Barrier, 1, 0, None, |ex, _| algorithms::barrier::dissemination(ex))
    }

    /// Copies `buf` from `root` to every rank.
    pub fn broadcast<T: Element>(&mut self, buf: &mut [T], root: usize) -> Result<()> {
        self.broadcast_with(buf, root, None).map(|_| ())
    }

    /// [`broadcast`](Self::broadcast) with an algorithm override (`None`: the config's, else
    /// chosen by size). Returns the algorithm used.
    pub fn broadcast_with<T: Element>(
        &mut self,
        buf: &mut [T],
        root: usize,
        algorithm: Option<BroadcastAlgorithm>,
    ) -> Result<BroadcastAlgorithm> {
        self.check_root(root)?;
        let bytes = std::mem::size_of_val(buf);
        let algo =
            algorithm.or(self.config.broadcast).unwrap_or_else(|| algorithms::choose_broadcast(bytes, self.size));
        let data: &mut [u8] = bytemuck::cast_slice_mut(buf);
        self.call(Collective::Broadcast, algo.code(), root, Some((T::DTYPE, None, None)), |ex, _| {
            algorithms::broadcast::run(ex, algo, data, root)
        })?;
        Ok(algo)
    }

    /// Root's `send` (`size × recv.len()` elements, rank `i`'s block at `i × recv.len()`) is
    /// split so that rank `i` receives block `i` into `recv`. `send` is read only on the root.
    pub fn scatter<T: Element>(&mut self, send: &[T], recv: &mut [T], root: usize) -> Result<()> {
        self.check_root(root)?;
        if self.rank == root && send.len() != recv.len() * self.size {
            return Err(Error::InvalidArgument(format!(
                "scatter root's send buffer has {} elements, expected {} ({} ranks × {})",
                send.len(),
                recv.len() * self.size,
                self.size,
                recv.len()
            )));
        }
        let input: &[u8] = bytemuck::cast_slice(send);
        let data: &mut [u8] = bytemuck::cast_slice_mut(recv);
        self.call(Collective::Scatter, 1, root, Some((T::DTYPE, None, None)), |ex, _| {
            algorithms::scatter_gather::scatter(ex, input, data, root)
        })
    }

    /// Every rank's `send` lands on `root` in `recv` (`size × send.len()` elements, rank
    /// `i`'s at `i × send.len()`). `recv` is written only on the root.
    pub fn gather<T: Element>(&mut self, send: &[T], recv: &mut [T], root: usize) -> Result<()> {
        self.check_root(root)?;
        if self.rank == root && recv.len() != send.len() * self.size {
            return Err(Error::InvalidArgument(format!(
                "gather root's receive buffer has {} elements, expected {} ({} ranks × {})",
                recv.len(),
                send.len() * self.size,
                self.size,
                send.len()
            )));
        }
        let input: &[u8] = bytemuck::cast_slice(send);
        let data: &mut [u8] = bytemuck::cast_slice_mut(recv);
        self.call(Collective::Gather, 1, root, Some((T::DTYPE, None, None)), |ex, _| {
            algorithms::scatter_gather::gather(ex, input, data, root)
        })
    }

    /// Every rank's `send` lands on every rank in `recv` (`size × send.len()` elements).
    pub fn allgather<T: Element>(&mut self, send: &[T], recv: &mut [T]) -> Result<()> {
        self.allgather_with(send, recv, None).map(|_| ())
    }

    /// [`allgather`](Self::allgather) with an algorithm override. Returns the algorithm used.
    pub fn allgather_with<T: Element>(
        &mut self,
        send: &[T],
        recv: &mut [T],
        algorithm: Option<AllgatherAlgorithm>,
    ) -> Result<AllgatherAlgorithm> {
        if recv.len() != send.len() * self.size {
            return Err(Error::InvalidArgument(format!(
                "allgather receive buffer has {} elements, expected {} ({} ranks × {})",
                recv.len(),
                send.len() * self.size,
                self.size,
                send.len()
            )));
        }
        let algo = algorithm
            .or(self.config.allgather)
            .unwrap_or_else(|| algorithms::choose_allgather(std::mem::size_of_val(recv), self.size));
        let input: &[u8] = bytemuck::cast_slice(send);
        let data: &mut [u8] = bytemuck::cast_slice_mut(recv);
        self.call(Collective::Allgather, algo.code(), 0, Some((T::DTYPE, None, None)), |ex, tmp| {
            algorithms::allgather::run(ex, algo, input, data, tmp)
        })?;
        Ok(algo)
    }

    /// Reduces every rank's `buf` element-wise with `op` into the root's `buf`. Other ranks'
    /// buffers are left unchanged.
    pub fn reduce<T: Element>(&mut self, buf: &mut [T], op: ReduceOp, root: usize) -> Result<()> {
        self.reduce_with(buf, op, root, None).map(|_| ())
    }

    /// [`reduce`](Self::reduce) with an algorithm override. Returns the algorithm used.
    pub fn reduce_with<T: Element>(
        &mut self,
        buf: &mut [T],
        op: ReduceOp,
        root: usize,
        algorithm: Option<ReduceAlgorithm>,
    ) -> Result<ReduceAlgorithm> {
        self.check_root(root)?;
        let algo = algorithm
            .or(self.config.reduce)
            .unwrap_or_else(|| algorithms::choose_reduce(std::mem::size_of_val(buf), self.size));
        let data: &mut [u8] = bytemuck::cast_slice_mut(buf);
        let red = Reduction { reducer: byte_reducer::<T>(), op, elem: std::mem::size_of::<T>() };
        self.call(Collective::Reduce, algo.code(), root, Some((T::DTYPE, Some(op), Some(red))), |ex, tmp| {
            algorithms::reduce::run(ex, algo, data, root, tmp)
        })?;
        Ok(algo)
    }

    /// Reduces every rank's `buf` element-wise with `op`, in place, on every rank. All ranks
    /// end with bit-identical results (NaN payloads aside).
    pub fn allreduce<T: Element>(&mut self, buf: &mut [T], op: ReduceOp) -> Result<()> {
        self.allreduce_with(buf, op, None).map(|_| ())
    }

    /// [`allreduce`](Self::allreduce) with an algorithm override (`None`: the config's, else
    /// chosen by size and rank count). Returns the algorithm used.
    pub fn allreduce_with<T: Element>(
        &mut self,
        buf: &mut [T],
        op: ReduceOp,
        algorithm: Option<AllreduceAlgorithm>,
    ) -> Result<AllreduceAlgorithm> {
        let algo = algorithm
            .or(self.config.allreduce)
            .unwrap_or_else(|| algorithms::choose_allreduce(std::mem::size_of_val(buf), self.size));
        let data: &mut [u8] = bytemuck::cast_slice_mut(buf);
        let red = Reduction { reducer: byte_reducer::<T>(), op, elem: std::mem::size_of::<T>() };
        self.call(Collective::Allreduce, algo.code(), 0, Some((T::DTYPE, Some(op), Some(red))), |ex, tmp| {
            algorithms::allreduce::run(ex, algo, data, tmp)
        })?;
        Ok(algo)
    }

    /// Point-to-point round trip with `peer` for latency/bandwidth measurement: the initiator
    /// sends `buf` and receives the reply into it; the other side receives then sends back.
    /// Not collective: ranks other than the two do not call it, and it does not advance the
    /// collective call counter.
    pub fn ping_pong(&mut self, peer: usize, buf: &mut [u8], initiator: bool) -> Result<()> {
        if peer >= self.size || peer == self.rank {
            return Err(Error::InvalidArgument(format!(
                "ping-pong peer {peer} must be another rank of this {}-rank communicator",
                self.size
            )));
        }
        let seq = self.seq;
        let r = self.call(Collective::PingPong, 0, 0, None, |ex, _| {
            ex.header.seq = 0;
            let len = buf.len();
            let mut first = Plan::default();
            let mut second = Plan::default();
            if initiator {
                first.send(peer, engine::Src::Data(0..len), engine::After::Start);
                second.recv(peer, engine::Dst::Data(0..len));
            } else {
                first.recv(peer, engine::Dst::Data(0..len));
                second.send(peer, engine::Src::Data(0..len), engine::After::Start);
            }
            ex.run(&first, buf, &[], &mut [])?;
            ex.run(&second, buf, &[], &mut [])
        });
        self.seq = seq;
        r
    }
}

/// What an algorithm gets: the rank's view of the group and a way to run plans.
pub(crate) struct Exec<'a> {
    comm: &'a mut Communicator,
    pub header: FrameHeader,
    pub reduction: Option<Reduction>,
}

impl Exec<'_> {
    pub fn rank(&self) -> usize {
        self.comm.rank
    }

    pub fn size(&self) -> usize {
        self.comm.size
    }

    /// Bytes per ring segment (`Config::ring_segment_bytes`).
    pub fn ring_segment(&self) -> usize {
        self.comm.config.ring_segment_bytes
    }

    /// Element size of the call's type (1 for untyped calls).
    pub fn elem(&self) -> usize {
        self.header.dtype.map_or(1, |d| d.size())
    }

    /// Runs a plan over these buffers, opening any connection it needs first.
    pub fn run(&mut self, plan: &Plan, data: &mut [u8], input: &[u8], tmp: &mut [u8]) -> Result<()> {
        if plan.is_empty() {
            return Ok(());
        }
        self.comm.ensure_connected(&plan.peers())?;
        let c = &mut *self.comm;
        let mut ctx = Ctx {
            conns: &mut c.conns,
            scratch: &mut c.scratch,
            chunk: c.config.chunk_bytes,
            timeout: c.config.timeout,
            spin: c.config.spin,
            abort: &c.shared.flag,
            busy_wait: &mut c.busy_wait,
            header: self.header,
            reduction: self.reduction,
        };
        engine::run(&mut ctx, plan, &mut Bufs { data, input, tmp })
    }

    /// `dst = op(dst, src)` locally, with the call's reduction.
    pub fn reduce_local(&self, dst: &mut [u8], src: &[u8]) -> Result<()> {
        let red = self
            .reduction
            .ok_or_else(|| Error::InvalidArgument("internal: local reduction in a call without one".into()))?;
        (red.reducer)(red.op, dst, src)
    }
}

/// Sizes the communicator's temporary buffer to at least `bytes` and returns it as bytes
/// (backed by u64 words, so any element type is aligned).
pub(crate) fn tmp_bytes(tmp: &mut Vec<u64>, bytes: usize) -> &mut [u8] {
    let words = bytes.div_ceil(8);
    if tmp.len() < words {
        tmp.resize(words, 0);
    }
    &mut bytemuck::cast_slice_mut(tmp.as_mut_slice())[..bytes]
}
