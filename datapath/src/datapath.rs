//! The datapath: the pipeline plus the caches in front of it, the per-batch fast path,
//! flow modifications with revalidation, and counters.
//!
//! Locking: the pipeline and the megaflow cache each sit behind a reader-writer lock.
//! Workers hold the megaflow read lock for a batch; an upcall releases it, takes the
//! pipeline read lock, translates, then takes the megaflow write lock to install. Flow
//! modifications take the pipeline write lock, then the megaflow write lock. The
//! pipeline lock is never requested while a megaflow lock is held, so there is no cycle.
//!
//! Revalidation: every megaflow records (as Bloom bits) the tables and groups its
//! translation consulted. After a modification, each megaflow whose bits intersect the
//! touched ones is re-translated from its masked key; it survives only if the new
//! translation has the same actions, rules and drop reason and needs no key bit the
//! entry does not match on. Every other entry is removed (and, being marked dead, stops
//! being used by the microflow caches at once).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock, RwLockReadGuard};

use crate::audit::{AuditBatch, AuditConfig, AuditLog};
use crate::conntrack::{Conntrack, CtConfig, CtCounters, CtTableLimits};
pub use crate::exec::OutputSink;
use crate::exec::{self, ExecCtx, Outcome};
use crate::flow::{Flow, FlowMod};
use crate::key::{Field, FlowKey};
use crate::lb::LbState;
use crate::megaflow::{Megaflow, MegaflowCache};
use crate::microflow::{self, MicroflowCache};
use crate::parse::parse_frame;
use crate::pipeline::{DropReason, MAX_RECIRC, Pipeline, PipelineError, Rule, TraceStep, Translation};

/// Tunables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatapathConfig {
    /// Microflow slots per worker (0 disables the microflow cache).
    pub microflow_entries: usize,
    /// Maximum megaflows; installing beyond evicts the least recently used of a sample.
    pub max_megaflows: usize,
    /// Megaflows idle this long are removed by [`Datapath::maintain`].
    pub idle_timeout_ns: u64,
    /// Entries examined per [`Datapath::maintain`] call.
    pub expire_budget: usize,
    /// Connection tracking.
    pub conntrack: CtConfig,
    /// The audit log's rate limit (`log` actions).
    pub audit: AuditConfig,
}

impl Default for DatapathConfig {
    fn default() -> Self {
        DatapathConfig {
            microflow_entries: microflow::DEFAULT_ENTRIES,
            max_megaflows: 200_000,
            idle_timeout_ns: 10_000_000_000,
            expire_budget: 4096,
            conntrack: CtConfig::default(),
            audit: AuditConfig::default(),
        }
    }
}

/// A frame in a batch, with the metadata it arrived with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Packet {
    /// The frame, starting at the Ethernet header. Actions rewrite it in place.
    pub data: Vec<u8>,
    /// Port it arrived on.
    pub in_port: u32,
    /// Tunnel metadata, for a frame that arrived through a Geneve tunnel (decapsulated
    /// by [`Packet::from_geneve`] or by the tunnel port's socket).
    pub tunnel: Option<crate::geneve::TunnelMeta>,
    /// Offload state the frame arrived with (partial checksum, TSO/GSO super-frame).
    pub offload: crate::offload::Offload,
}

impl AsRef<[u8]> for Packet {
    /// The frame's bytes.
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Packet {
    /// A frame that arrived on `in_port`.
    pub fn new(data: Vec<u8>, in_port: u32) -> Packet {
        Packet { data, in_port, tunnel: None, offload: crate::offload::Offload::NONE }
    }

    /// Decapsulates a Geneve frame (outer Ethernet/IPv4/UDP/Geneve) that arrived on the
    /// underlay into the inner frame plus tunnel metadata, as input on `tunnel_port`.
    pub fn from_geneve(frame: &[u8], tunnel_port: u32) -> Result<Packet, crate::geneve::GeneveError> {
        let (meta, inner) = crate::geneve::decap(frame)?;
        Ok(Packet {
            data: frame[inner..].to_vec(),
            in_port: tunnel_port,
            tunnel: Some(meta),
            offload: crate::offload::Offload::NONE,
        })
    }
}

/// Counters of the whole datapath, readable while forwarding.
#[derive(Debug, Default)]
pub struct DatapathCounters {
    /// Packets processed.
    pub packets: AtomicU64,
    /// Microflow cache hits.
    pub microflow_hits: AtomicU64,
    /// Megaflow cache hits (after a microflow miss).
    pub megaflow_hits: AtomicU64,
    /// Subtables probed over all megaflow hits.
    pub megaflow_probes: AtomicU64,
    /// Upcalls (pipeline translations for cache misses).
    pub upcalls: AtomicU64,
    /// Recirculations.
    pub recirculations: AtomicU64,
    /// Megaflows evicted (cache full or idle).
    pub evictions: AtomicU64,
    /// Megaflows invalidated by flow/group modifications.
    pub invalidations: AtomicU64,
    /// Megaflows re-checked and kept after modifications.
    pub revalidated: AtomicU64,
    /// Drops by [`DropReason`] (indexed by discriminant).
    pub drops: [AtomicU64; DropReason::ALL.len()],
}

/// A snapshot of [`DatapathCounters`] plus cache sizes.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DatapathStats {
    /// Packets processed.
    pub packets: u64,
    /// Microflow hits.
    pub microflow_hits: u64,
    /// Megaflow hits.
    pub megaflow_hits: u64,
    /// Average subtables probed per megaflow hit.
    pub avg_subtables_per_hit: f64,
    /// Upcalls.
    pub upcalls: u64,
    /// Evictions.
    pub evictions: u64,
    /// Invalidations.
    pub invalidations: u64,
    /// Entries kept by revalidation.
    pub revalidated: u64,
    /// Megaflows installed now.
    pub megaflows: usize,
    /// Distinct megaflow masks now.
    pub megaflow_masks: usize,
    /// Tracked connections now (including expired ones not yet swept).
    pub connections: usize,
    /// What conntrack's limits did (early drops, refusals).
    pub conntrack: CtCounters,
    /// Packets that went through the pipeline again after conntrack.
    pub recirculations: u64,
    /// Flows installed.
    pub flows: usize,
    /// Drops by reason.
    pub drops: Vec<(DropReason, u64)>,
}

/// What a batch of flow modifications did to the caches.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FlowModReport {
    /// Megaflows re-translated.
    pub checked: usize,
    /// Megaflows removed as stale.
    pub invalidated: usize,
    /// Megaflows kept.
    pub kept: usize,
    /// UDP connections removed because their load-balancer backend went away.
    pub conntrack_flushed: usize,
}

/// Live counters of one flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowStats {
    /// The flow.
    pub flow: Flow,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
    /// Last use (caller's clock, ns; 0 = never).
    pub last_used: u64,
}

/// Per-thread state: the microflow cache and batch-local counters.
#[derive(Debug)]
pub struct Worker {
    microflow: MicroflowCache,
    local: LocalCounters,
}

#[derive(Debug, Default)]
struct LocalCounters {
    packets: u64,
    microflow_hits: u64,
    megaflow_hits: u64,
    megaflow_probes: u64,
    upcalls: u64,
    recirculations: u64,
    drops: [u64; DropReason::ALL.len()],
}

impl Worker {
    /// Forgets every cached decision of this worker.
    pub fn clear(&mut self) {
        self.microflow.clear();
    }
}

/// The datapath.
#[derive(Debug)]
pub struct Datapath {
    config: DatapathConfig,
    pipeline: RwLock<Pipeline>,
    megaflows: RwLock<MegaflowCache>,
    conntrack: Mutex<Conntrack>,
    lbs: Mutex<HashMap<u32, LbState>>,
    /// The outer sources each tunnel port with remotes accepts, replaced whole on change
    /// so that a batch reads one snapshot without holding a lock across upcalls.
    tunnel_remotes: RwLock<Arc<TunnelRemoteSets>>,
    counters: DatapathCounters,
    audit: Mutex<AuditLog>,
}

/// Tunnel port → the outer IPv4 sources it accepts (a node has one or two tunnel ports).
type TunnelRemoteSets = Vec<(u32, RemoteSet)>;

/// A tunnel port's remotes, checked for every tunnelled frame: open addressing on the
/// address with a multiplicative hash and linear probing, at most half full, so a check
/// is one or two probes of one array.
#[derive(Debug, Clone)]
struct RemoteSet {
    /// Addresses; 0 marks an empty slot (0.0.0.0 is kept in `has_zero`).
    slots: Box<[u32]>,
    /// 32 − log2(slots).
    shift: u32,
    has_zero: bool,
}

impl RemoteSet {
    fn new(addresses: &[u32]) -> RemoteSet {
        let len = (addresses.len() * 2).next_power_of_two().max(8);
        let mut set =
            RemoteSet { slots: vec![0; len].into_boxed_slice(), shift: 32 - len.trailing_zeros(), has_zero: false };
        for &a in addresses {
            if a == 0 {
                set.has_zero = true;
                continue;
            }
            let mut i = set.slot(a);
            while set.slots[i] != 0 && set.slots[i] != a {
                i = (i + 1) & (len - 1);
            }
            set.slots[i] = a;
        }
        set
    }

    #[inline]
    fn slot(&self, a: u32) -> usize {
        (a.wrapping_mul(0x9e37_79b1) >> self.shift) as usize
    }

    #[inline]
    fn contains(&self, a: u32) -> bool {
        if a == 0 {
            return self.has_zero;
        }
        let mask = self.slots.len() - 1;
        let mut i = self.slot(a);
        loop {
            match self.slots[i] {
                s if s == a => return true,
                0 => return false,
                _ => i = (i + 1) & mask,
            }
        }
    }
}

impl Default for Datapath {
    fn default() -> Self {
        Datapath::new(DatapathConfig::default())
    }
}

impl Datapath {
    /// A datapath with an empty pipeline.
    pub fn new(config: DatapathConfig) -> Self {
        Datapath {
            config,
            pipeline: RwLock::new(Pipeline::new()),
            megaflows: RwLock::new(MegaflowCache::new(config.max_megaflows)),
            conntrack: Mutex::new(Conntrack::new(config.conntrack)),
            lbs: Mutex::new(HashMap::new()),
            tunnel_remotes: RwLock::new(Arc::new(Vec::new())),
            counters: DatapathCounters::default(),
            audit: Mutex::new(AuditLog::new(config.audit)),
        }
    }

    /// Replaces conntrack's table-wide limits (the connections it holds are kept).
    pub fn set_conntrack_limits(&self, limits: CtTableLimits) {
        self.conntrack.lock().set_table_limits(limits);
    }

    /// Conntrack's table-wide limits now.
    pub fn conntrack_limits(&self) -> CtTableLimits {
        CtTableLimits::of(self.conntrack.lock().config())
    }

    /// Replaces the audit log's rate limit (what it holds is kept).
    pub fn set_audit(&self, config: AuditConfig) {
        self.audit.lock().set_config(config);
    }

    /// What `log` actions recorded since the last call (oldest first), and how many
    /// packets the rate limit left out.
    pub fn take_audit(&self) -> AuditBatch {
        self.audit.lock().take()
    }

    /// The configuration.
    pub fn config(&self) -> &DatapathConfig {
        &self.config
    }

    /// A new worker (one per forwarding thread).
    pub fn worker(&self) -> Worker {
        Worker { microflow: MicroflowCache::new(self.config.microflow_entries), local: LocalCounters::default() }
    }

    /// Read access to the pipeline (for dumps and traces).
    pub fn pipeline(&self) -> parking_lot::RwLockReadGuard<'_, Pipeline> {
        self.pipeline.read()
    }

    /// Applies modifications in order, then revalidates the caches once. Stops at the
    /// first invalid modification: those before it stay applied (and revalidated), it
    /// and those after it are not applied.
    pub fn apply(&self, mods: &[FlowMod]) -> Result<FlowModReport, (usize, PipelineError, FlowModReport)> {
        let mut pipeline = self.pipeline.write();
        let mut bloom = 0;
        let mut failed = None;
        let mut flushed = 0;
        for (i, m) in mods.iter().enumerate() {
            match m {
                FlowMod::AddLoadBalancer(lb) => {
                    flushed += self.set_load_balancer(lb.clone());
                    continue;
                }
                FlowMod::DeleteLoadBalancer(id) => {
                    self.lbs.lock().remove(id);
                    continue;
                }
                FlowMod::SetTunnelRemotes(r) => {
                    self.set_tunnel_remotes(r.port, Some(&r.remotes));
                    continue;
                }
                FlowMod::DeleteTunnelRemotes(port) => {
                    self.set_tunnel_remotes(*port, None);
                    continue;
                }
                FlowMod::SetZoneLimit(z) => {
                    self.conntrack.lock().set_zone_limit(z.scope, z.limit);
                    continue;
                }
                FlowMod::DeleteZoneLimit(scope) => {
                    self.conntrack.lock().clear_zone_limit(*scope);
                    continue;
                }
                _ => {}
            }
            match pipeline.apply(m) {
                Ok(t) => bloom |= t.bloom,
                Err(e) => {
                    failed = Some((i, e));
                    break;
                }
            }
        }
        let mut report = self.revalidate(&pipeline, bloom);
        report.conntrack_flushed = flushed;
        pipeline.release_removed();
        match failed {
            None => Ok(report),
            Some((i, e)) => Err((i, e, report)),
        }
    }

    /// Replaces the remotes of tunnel port `port` (`None`: every source is accepted).
    fn set_tunnel_remotes(&self, port: u32, remotes: Option<&[u32]>) {
        let mut guard = self.tunnel_remotes.write();
        let mut sets = (**guard).clone();
        sets.retain(|(p, _)| *p != port);
        if let Some(list) = remotes {
            sets.push((port, RemoteSet::new(list)));
        }
        *guard = Arc::new(sets);
    }

    /// Installs or updates a load balancer; returns how many UDP connections to removed
    /// backends were deleted.
    fn set_load_balancer(&self, lb: crate::lb::LoadBalancer) -> usize {
        let removed = {
            let mut lbs = self.lbs.lock();
            match lbs.get_mut(&lb.id) {
                Some(state) => state.update(lb),
                None => {
                    lbs.insert(lb.id, LbState::new(lb));
                    Vec::new()
                }
            }
        };
        if removed.is_empty() {
            return 0;
        }
        self.conntrack.lock().remove_where(|c| {
            c.orig.proto == crate::key::ip_proto::UDP
                && c.orig.dst != c.reply.src
                && removed.iter().any(|b| b.addr == c.reply.src && b.port == c.reply.sport)
        })
    }

    fn revalidate(&self, pipeline: &Pipeline, bloom: u64) -> FlowModReport {
        let mut report = FlowModReport::default();
        if bloom == 0 {
            return report;
        }
        let mut cache = self.megaflows.write();
        let candidates: Vec<Arc<Megaflow>> = cache.entries().iter().filter(|m| m.bloom & bloom != 0).cloned().collect();
        for mf in candidates {
            report.checked += 1;
            let key = cache.key_of(&mf);
            let mask = cache.mask_of(&mf);
            let t = pipeline.translate(&key);
            if still_valid(&mf, &mask, &t) {
                report.kept += 1;
            } else {
                settle(pipeline, &mf);
                cache.remove(&mf);
                report.invalidated += 1;
            }
        }
        self.counters.invalidations.fetch_add(report.invalidated as u64, Ordering::Relaxed);
        self.counters.revalidated.fetch_add(report.kept as u64, Ordering::Relaxed);
        report
    }

    /// Periodic housekeeping: re-ranks megaflow subtables by hits and removes idle
    /// megaflows (bounded by `expire_budget`). Returns how many were removed.
    pub fn maintain(&self, now: u64) -> usize {
        let pipeline = self.pipeline.read();
        self.conntrack.lock().sweep(now, self.config.conntrack.sweep_budget);
        let mut cache = self.megaflows.write();
        cache.rerank();
        let gone = cache.expire(now, self.config.idle_timeout_ns, self.config.expire_budget);
        for mf in &gone {
            settle(&pipeline, mf);
        }
        self.counters.evictions.fetch_add(gone.len() as u64, Ordering::Relaxed);
        gone.len()
    }

    /// Processes a batch: every packet is parsed, looked up (microflow, megaflow, then
    /// upcall) and its actions executed, in order. `now` is the caller's clock in ns.
    pub fn process_batch(&self, worker: &mut Worker, packets: &mut [Packet], now: u64, sink: &mut impl OutputSink) {
        let mut cache = self.megaflows.read();
        // The tunnel ports' remotes, read at the batch's first tunnelled frame; the last
        // (port, source) accepted skips the set for the frames of the same chassis that
        // follow it.
        let mut remotes: Option<Arc<TunnelRemoteSets>> = None;
        let mut accepted: Option<(u32, u32)> = None;
        for (i, p) in packets.iter_mut().enumerate() {
            if let Some(t) = &p.tunnel
                && accepted != Some((p.in_port, t.src))
            {
                let sets = remotes.get_or_insert_with(|| self.tunnel_remotes.read().clone());
                let set = sets.iter().find(|(port, _)| *port == p.in_port).map(|(_, set)| set);
                if set.is_some_and(|set| !set.contains(t.src)) {
                    worker.local.packets += 1;
                    worker.local.drops[DropReason::TunnelUnknownSource as usize] += 1;
                    continue;
                }
                accepted = Some((p.in_port, t.src));
            }
            let mut arrived_eth = [0u8; 12];
            if let Some(eth) = p.data.get(..12) {
                arrived_eth.copy_from_slice(eth);
            }
            let ctx = ExecCtx {
                conntrack: &self.conntrack,
                lbs: &self.lbs,
                now,
                in_port: p.in_port,
                arrived_eth,
                offload: p.offload,
                audit: Some(&self.audit),
            };
            let mut key = FlowKey::ZERO;
            key.set(Field::InPort, p.in_port as u128);
            if let Some(t) = &p.tunnel {
                t.write_key(&mut key);
            }
            let mut offs = parse_frame(&p.data, &mut key);
            offs.csum_partial = p.offload.csum_partial();
            let local = &mut worker.local;
            local.packets += 1;
            let mut pass = 0;
            loop {
                let h = if worker.microflow.is_disabled() { 0 } else { microflow::flow_hash(&key) };
                let outcome = if let Some(mf) = worker.microflow.lookup(h, &key) {
                    local.microflow_hits += 1;
                    run_megaflow(mf, p, &mut offs, &key, i, local, sink, &ctx)
                } else if let Some(hit) = cache.lookup(&key) {
                    local.megaflow_hits += 1;
                    local.megaflow_probes += hit.probed as u64;
                    worker.microflow.insert(h, &key, hit.megaflow);
                    run_megaflow(hit.megaflow, p, &mut offs, &key, i, local, sink, &ctx)
                } else {
                    local.upcalls += 1;
                    let mf = RwLockReadGuard::unlocked(&mut cache, || self.upcall(&key, now));
                    worker.microflow.insert(h, &key, &mf);
                    run_megaflow(&mf, p, &mut offs, &key, i, local, sink, &ctx)
                };
                let Some(r) = outcome.recirc else { break };
                pass += 1;
                if pass >= MAX_RECIRC {
                    local.drops[DropReason::RecircLimit as usize] += 1;
                    break;
                }
                local.recirculations += 1;
                key = FlowKey::ZERO;
                key.set(Field::InPort, p.in_port as u128);
                key.set(Field::RecircId, r.id as u128);
                key.set(Field::CtState, r.ct.state as u128);
                key.set(Field::CtZone, r.zone as u128);
                key.set(Field::CtMark, r.ct.mark as u128);
                key.set(Field::CtLabel, r.ct.label);
                offs = parse_frame(&p.data, &mut key);
                offs.csum_partial = p.offload.csum_partial();
            }
        }
        drop(cache);
        self.flush_local(worker);
    }

    fn upcall(&self, key: &FlowKey, now: u64) -> Arc<Megaflow> {
        let pipeline = self.pipeline.read();
        let t = pipeline.translate(key);
        let mut cache = self.megaflows.write();
        let (mf, evicted) = cache.install(key, &t, now);
        for e in &evicted {
            settle(&pipeline, e);
        }
        if !evicted.is_empty() {
            self.counters.evictions.fetch_add(evicted.len() as u64, Ordering::Relaxed);
        }
        mf
    }

    fn flush_local(&self, worker: &mut Worker) {
        let l = std::mem::take(&mut worker.local);
        let c = &self.counters;
        c.packets.fetch_add(l.packets, Ordering::Relaxed);
        c.microflow_hits.fetch_add(l.microflow_hits, Ordering::Relaxed);
        c.megaflow_hits.fetch_add(l.megaflow_hits, Ordering::Relaxed);
        c.megaflow_probes.fetch_add(l.megaflow_probes, Ordering::Relaxed);
        c.upcalls.fetch_add(l.upcalls, Ordering::Relaxed);
        c.recirculations.fetch_add(l.recirculations, Ordering::Relaxed);
        for (i, n) in l.drops.iter().enumerate() {
            if *n != 0 {
                c.drops[i].fetch_add(*n, Ordering::Relaxed);
            }
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> DatapathStats {
        let c = &self.counters;
        let (megaflows, megaflow_masks) = {
            let cache = self.megaflows.read();
            (cache.len(), cache.subtable_count())
        };
        let hits = c.megaflow_hits.load(Ordering::Relaxed);
        let (connections, conntrack) = {
            let ct = self.conntrack.lock();
            (ct.len(), ct.counters())
        };
        DatapathStats {
            packets: c.packets.load(Ordering::Relaxed),
            microflow_hits: c.microflow_hits.load(Ordering::Relaxed),
            megaflow_hits: hits,
            avg_subtables_per_hit: if hits == 0 {
                0.0
            } else {
                c.megaflow_probes.load(Ordering::Relaxed) as f64 / hits as f64
            },
            upcalls: c.upcalls.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
            invalidations: c.invalidations.load(Ordering::Relaxed),
            revalidated: c.revalidated.load(Ordering::Relaxed),
            megaflows,
            megaflow_masks,
            connections,
            conntrack,
            recirculations: c.recirculations.load(Ordering::Relaxed),
            flows: self.pipeline.read().flow_count(),
            drops: DropReason::ALL
                .iter()
                .map(|d| (*d, c.drops[*d as usize].load(Ordering::Relaxed)))
                .filter(|(_, n)| *n != 0)
                .collect(),
        }
    }

    /// Live counters of every flow: what has been settled into the flow plus what its
    /// current megaflows have counted.
    pub fn flow_stats(&self) -> Vec<FlowStats> {
        let pipeline = self.pipeline.read();
        let cache = self.megaflows.read();
        let mut live: HashMap<u32, (u64, u64, u64)> = HashMap::new();
        for mf in cache.entries() {
            let (p, b, t) = (
                mf.packets.load(Ordering::Relaxed),
                mf.bytes.load(Ordering::Relaxed),
                mf.last_used.load(Ordering::Relaxed),
            );
            if p == 0 {
                continue;
            }
            for id in mf.rule_ids() {
                let e = live.entry(id).or_default();
                e.0 += p;
                e.1 += b;
                e.2 = e.2.max(t);
            }
        }
        pipeline
            .rules()
            .map(|r| {
                let (p, b, t) = live.get(&r.id).copied().unwrap_or_default();
                FlowStats {
                    flow: r.flow.clone(),
                    packets: r.counters.packets.load(Ordering::Relaxed) + p,
                    bytes: r.counters.bytes.load(Ordering::Relaxed) + b,
                    last_used: r.counters.last_used.load(Ordering::Relaxed).max(t),
                }
            })
            .collect()
    }

    /// Translates a key without caching anything, recording every step.
    pub fn trace(&self, key: &FlowKey) -> (Translation, Vec<TraceStep>) {
        self.pipeline.read().trace(key)
    }

    /// The connection limit that applies to conntrack zone `zone`, if any.
    pub fn zone_limit(&self, zone: u16) -> Option<u32> {
        self.conntrack.lock().zone_limit(zone)
    }

    /// Every live connection.
    pub fn dump_conntrack(&self, now: u64) -> Vec<crate::conntrack::Conn> {
        self.conntrack.lock().connections(now).cloned().collect()
    }

    /// Every live connection in conntrack's hand-over format, for the next datapath
    /// process, and how many connections that is ([`Conntrack::export`]).
    pub fn export_conntrack(&self, now: u64, origin: &crate::conntrack::HandoverOrigin) -> (Vec<u8>, usize) {
        self.conntrack.lock().export(now, origin)
    }

    /// Takes in the connections a previous datapath process handed over
    /// ([`Conntrack::import`]).
    pub fn import_conntrack(
        &self,
        data: &[u8],
        now: u64,
        current: &crate::conntrack::HandoverOrigin,
    ) -> Result<crate::conntrack::ImportReport, crate::conntrack::HandoverError> {
        self.conntrack.lock().import(data, now, current)
    }

    /// Number of megaflows.
    pub fn megaflow_count(&self) -> usize {
        self.megaflows.read().len()
    }

    /// Every megaflow as (masked key, mask, decoded actions, packets, bytes).
    pub fn dump_megaflows(&self) -> Vec<(FlowKey, FlowKey, Vec<exec::DpAction>, u64, u64)> {
        let cache = self.megaflows.read();
        cache
            .entries()
            .iter()
            .map(|m| {
                (
                    cache.key_of(m),
                    cache.mask_of(m),
                    exec::decode(m.actions()),
                    m.packets.load(Ordering::Relaxed),
                    m.bytes.load(Ordering::Relaxed),
                )
            })
            .collect()
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn run_megaflow(
    mf: &Megaflow,
    p: &mut Packet,
    offs: &mut crate::parse::HeaderOffsets,
    key: &FlowKey,
    i: usize,
    local: &mut LocalCounters,
    sink: &mut impl OutputSink,
    ctx: &ExecCtx<'_>,
) -> Outcome {
    mf.hit(p.data.len(), ctx.now);
    let out = exec::execute(mf.actions(), &mut p.data, offs, key, i, sink, ctx);
    // A drop decided while executing (conntrack, a rejecting Service) is the reason;
    // otherwise the one the translation found.
    if let Some(d) = out.drop.or(mf.drop_reason()) {
        local.drops[d as usize] += 1;
    }
    out
}

/// True if a fresh translation of a megaflow's key still yields what it caches.
fn still_valid(mf: &Megaflow, mask: &FlowKey, t: &Translation) -> bool {
    if !t.wc.is_subset_of(mask) || t.drop != mf.drop_reason() || t.rules.len() != mf.rule_ids().count() {
        return false;
    }
    if !t.rules.iter().copied().eq(mf.rule_ids()) {
        return false;
    }
    let mut words = Vec::with_capacity(mf.actions().len());
    exec::encode(&t.actions, &mut words);
    words == mf.actions()
}

/// Moves a megaflow's counters into the rules it used, before it goes away.
fn settle(pipeline: &Pipeline, mf: &Megaflow) {
    let p = mf.packets.swap(0, Ordering::Relaxed);
    let b = mf.bytes.swap(0, Ordering::Relaxed);
    if p == 0 {
        return;
    }
    let t = mf.last_used.load(Ordering::Relaxed);
    for id in mf.rule_ids() {
        if let Some(r) = pipeline.rule(id) {
            settle_rule(r, p, b, t);
        }
    }
}

fn settle_rule(r: &Rule, packets: u64, bytes: u64, t: u64) {
    r.counters.packets.fetch_add(packets, Ordering::Relaxed);
    r.counters.bytes.fetch_add(bytes, Ordering::Relaxed);
    r.counters.last_used.fetch_max(t, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::CollectSink;
    use crate::flow::{Action, Match};
    use crate::key::ip_proto;
    use crate::parse::tests::ipv4_frame;

    fn flow(table: u8, priority: u16, matches: Match, actions: Vec<Action>) -> FlowMod {
        FlowMod::AddFlow(Flow { table, priority, matches, cookie: table as u64, actions })
    }

    fn packet(dst: u32, dport: u16) -> Packet {
        Packet::new(ipv4_frame(ip_proto::UDP, 0x0a00_0001, dst, 999, dport, b"x"), 1)
    }

    fn setup() -> Datapath {
        let dp = Datapath::default();
        dp.apply(&[
            flow(0, 10, Match::ANY.with(Field::Ipv4Dst, 2), vec![Action::Resubmit(1)]),
            flow(0, 10, Match::ANY.with(Field::Ipv4Dst, 3), vec![Action::Output(9)]),
            flow(1, 10, Match::ANY.with(Field::TpDst, 53), vec![Action::Output(5)]),
            flow(1, 5, Match::ANY, vec![Action::Output(6)]),
        ])
        .unwrap();
        dp
    }

    #[test]
    fn caches_fill_then_hit() {
        let dp = setup();
        let mut w = dp.worker();
        let mut sink = CollectSink::default();
        let mut batch = vec![packet(2, 53), packet(2, 53), packet(2, 54), packet(3, 1)];
        dp.process_batch(&mut w, &mut batch, 1, &mut sink);
        let ports: Vec<u32> = sink.outputs.iter().map(|o| o.1).collect();
        assert_eq!(ports, vec![5, 5, 6, 9]);
        let s = dp.stats();
        assert_eq!((s.upcalls, s.microflow_hits, s.megaflow_hits), (3, 1, 0));
        // Packet 3 differs from packet 1 only in a field no flow for it looks at.
        let mut batch = vec![packet(3, 2)];
        dp.process_batch(&mut w, &mut batch, 2, &mut sink);
        let s = dp.stats();
        assert_eq!((s.upcalls, s.megaflow_hits), (3, 1));
        assert_eq!(s.megaflows, 3);
    }

    #[test]
    fn modification_invalidates_only_what_it_must() {
        let dp = setup();
        let mut w = dp.worker();
        let mut sink = CollectSink::default();
        let mut batch = vec![packet(2, 53), packet(2, 54), packet(3, 1)];
        dp.process_batch(&mut w, &mut batch, 1, &mut sink);
        assert_eq!(dp.megaflow_count(), 3);
        // A new port-80 flow in table 1 changes nothing any cached packet saw...
        let r = dp.apply(&[flow(1, 10, Match::ANY.with(Field::TpDst, 80), vec![Action::Output(7)])]).unwrap();
        assert_eq!((r.checked, r.invalidated, r.kept), (2, 0, 2));
        // ...while one for port 54 takes over the catch-all's megaflow for that port.
        let r = dp.apply(&[flow(1, 10, Match::ANY.with(Field::TpDst, 54), vec![Action::Output(8)])]).unwrap();
        assert_eq!((r.checked, r.invalidated, r.kept), (2, 1, 1));
        sink.outputs.clear();
        let mut batch = vec![packet(2, 54)];
        dp.process_batch(&mut w, &mut batch, 2, &mut sink);
        assert_eq!(sink.outputs[0].1, 8, "the microflow entry went stale with its megaflow");
        assert_eq!(dp.stats().invalidations, 1);
    }

    #[test]
    fn flow_counters_survive_megaflow_removal() {
        let dp = setup();
        let mut w = dp.worker();
        let mut sink = CollectSink::default();
        let mut batch = vec![packet(2, 53), packet(2, 53), packet(2, 53)];
        let len = batch[0].data.len() as u64;
        dp.process_batch(&mut w, &mut batch, 7, &mut sink);
        let count = |dp: &Datapath| {
            dp.flow_stats()
                .into_iter()
                .find(|s| s.flow.table == 1 && s.flow.priority == 10)
                .map(|s| (s.packets, s.bytes, s.last_used))
                .unwrap()
        };
        assert_eq!(count(&dp), (3, 3 * len, 7));
        // Removing the table-0 flow invalidates the megaflow; the table-1 flow keeps its count.
        dp.apply(&[FlowMod::DeleteFlowStrict { table: 0, priority: 10, matches: Match::ANY.with(Field::Ipv4Dst, 2) }])
            .unwrap();
        assert_eq!(dp.megaflow_count(), 0);
        assert_eq!(count(&dp), (3, 3 * len, 7));
    }

    #[test]
    fn invalid_modification_keeps_earlier_ones_and_reports_index() {
        let dp = Datapath::default();
        let bad = flow(0, 1, Match::ANY, vec![Action::SetField { field: Field::CtState, value: 1, mask: u128::MAX }]);
        let good = flow(0, 1, Match::ANY, vec![Action::Output(1)]);
        let (i, e, _) = dp.apply(&[good, bad]).unwrap_err();
        assert_eq!(i, 1);
        assert!(e.to_string().contains("ct_state"));
        assert_eq!(dp.stats().flows, 1);
    }

    #[test]
    fn idle_megaflows_expire() {
        let dp = Datapath::new(DatapathConfig { idle_timeout_ns: 100, ..DatapathConfig::default() });
        dp.apply(&[flow(0, 1, Match::ANY, vec![Action::Output(1)])]).unwrap();
        let mut w = dp.worker();
        dp.process_batch(&mut w, &mut [packet(2, 53)], 0, &mut CollectSink::default());
        assert_eq!(dp.maintain(50), 0);
        assert_eq!(dp.maintain(500), 1);
        assert_eq!(dp.stats().evictions, 1);
        assert_eq!(dp.flow_stats()[0].packets, 1);
    }
}

#[cfg(test)]
mod stateful_tests {
    //! Services end to end through the datapath: ct_lb on the way in, un-NAT on the way
    //! back, rejects, and the UDP flush when a backend goes away.
    use super::*;
    use crate::conntrack::{NatAction, v4};
    use crate::exec::CollectSink;
    use crate::flow::{Action, CtSpec, CtZone, Match};
    use crate::key::{ct_state, ip_proto};
    use crate::lb::{Backend, LoadBalancer};
    use crate::parse::tests::ipv4_frame;

    const CLIENT: u32 = 0x0af4_0105;
    const VIP: u32 = 0x0a60_000a;
    const B1: u32 = 0x0af4_0207;
    const B2: u32 = 0x0af4_0208;

    fn flow(table: u8, priority: u16, matches: Match, actions: Vec<Action>) -> FlowMod {
        FlowMod::AddFlow(Flow { table, priority, matches, cookie: 0, actions })
    }

    /// Port 1: clients. Port 2: backends. Table 0 sends everything through conntrack
    /// (ct_lb for the VIP, plain ct(nat) otherwise); table 1 forwards tracked packets.
    fn service(backends: &[u32], proto: u8) -> Datapath {
        let dp = Datapath::default();
        let lb = LoadBalancer {
            id: 7,
            backends: backends.iter().map(|b| Backend::v4(*b, 8080)).collect(),
            affinity_timeout_ns: None,
        };
        dp.apply(&[
            FlowMod::AddLoadBalancer(lb),
            flow(
                0,
                20,
                Match::ANY
                    .with(Field::EthType, 0x0800)
                    .with(Field::Ipv4Dst, VIP as u128)
                    .with(Field::NwProto, proto as u128),
                vec![Action::CtLb { lb: 7, zone: CtZone::Const(3), table: Some(1) }],
            ),
            flow(
                0,
                10,
                Match::ANY.with(Field::EthType, 0x0800),
                vec![Action::Ct(Box::new(CtSpec {
                    zone: CtZone::Const(3),
                    commit: false,
                    nat: Some(NatAction::Stored),
                    table: Some(1),
                    set_mark: None,
                    set_label: None,
                }))],
            ),
            flow(
                1,
                10,
                Match::ANY.with(Field::InPort, 1).with_masked(
                    Field::CtState,
                    ct_state::TRK as u128,
                    ct_state::TRK as u128,
                ),
                vec![Action::Output(2)],
            ),
            flow(
                1,
                10,
                Match::ANY.with(Field::InPort, 2).with_masked(
                    Field::CtState,
                    (ct_state::TRK | ct_state::EST) as u128,
                    (ct_state::TRK | ct_state::EST) as u128,
                ),
                vec![Action::Output(1)],
            ),
        ])
        .unwrap();
        dp
    }

    fn send(dp: &Datapath, w: &mut Worker, frame: Vec<u8>, in_port: u32, now: u64) -> Vec<(u32, Vec<u8>)> {
        let mut sink = CollectSink::default();
        dp.process_batch(w, &mut [Packet::new(frame, in_port)], now, &mut sink);
        sink.outputs.into_iter().map(|(_, p, f)| (p, f)).collect()
    }

    use crate::parse::tests::l4_addrs as addrs;

    #[test]
    fn service_round_trip_and_stickiness() {
        let dp = service(&[B1, B2], ip_proto::TCP);
        let mut w = dp.worker();
        let mut syn = ipv4_frame(ip_proto::TCP, CLIENT, VIP, 40000, 80, b"");
        syn[34 + 13] = 0x02;
        crate::packet::fill_checksums(&mut syn);
        let out = send(&dp, &mut w, syn.clone(), 1, 1);
        assert_eq!(out.len(), 1);
        let (src, backend, sport, dport) = addrs(&out[0].1);
        assert_eq!((src, sport, dport), (CLIENT, 40000, 8080));
        assert!(backend == B1 || backend == B2);
        assert!(crate::packet::checksums_valid(&out[0].1));
        // The backend answers; the client sees the VIP.
        let mut synack = ipv4_frame(ip_proto::TCP, backend, CLIENT, 8080, 40000, b"");
        synack[34 + 13] = 0x12;
        crate::packet::fill_checksums(&mut synack);
        let back = send(&dp, &mut w, synack, 2, 2);
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].0, 1);
        assert_eq!(addrs(&back[0].1), (VIP, CLIENT, 80, 40000));
        // Later packets of the connection stay on the same backend, through the caches.
        for t in 3..10 {
            let mut ack = ipv4_frame(ip_proto::TCP, CLIENT, VIP, 40000, 80, b"data");
            ack[34 + 13] = 0x10;
            crate::packet::fill_checksums(&mut ack);
            let out = send(&dp, &mut w, ack, 1, t);
            assert_eq!(addrs(&out[0].1).1, backend);
        }
        let s = dp.stats();
        assert!(s.recirculations >= 9);
        assert_eq!(s.connections, 1);
        assert!(s.microflow_hits > 0, "established packets hit the caches");
    }

    #[test]
    fn service_without_backends_rejects() {
        let dp = service(&[], ip_proto::TCP);
        let mut w = dp.worker();
        let mut syn = ipv4_frame(ip_proto::TCP, CLIENT, VIP, 40000, 80, b"");
        syn[34 + 13] = 0x02;
        crate::packet::fill_checksums(&mut syn);
        let out = send(&dp, &mut w, syn, 1, 1);
        assert_eq!(out.len(), 1, "a reset goes back to the client");
        let (port, rst) = &out[0];
        assert_eq!(*port, 1);
        assert_eq!(addrs(rst), (VIP, CLIENT, 80, 40000));
        assert_eq!(rst[34 + 13] & 0x04, 0x04, "RST set");
        assert!(crate::packet::checksums_valid(rst));
        assert_eq!(dp.stats().drops, vec![(DropReason::LbReject, 1)]);
    }

    #[test]
    fn removing_a_backend_flushes_its_udp_connections() {
        let dp = service(&[B1], ip_proto::UDP);
        let mut w = dp.worker();
        for port in 0..5 {
            let out = send(&dp, &mut w, ipv4_frame(ip_proto::UDP, CLIENT, VIP, 5000 + port, 80, b"dns?"), 1, 1);
            assert_eq!(addrs(&out[0].1).1, B1);
        }
        assert_eq!(dp.stats().connections, 5);
        let lb = LoadBalancer { id: 7, backends: vec![Backend::v4(B2, 8080)], affinity_timeout_ns: None };
        let r = dp.apply(&[FlowMod::AddLoadBalancer(lb)]).unwrap();
        assert_eq!(r.conntrack_flushed, 5);
        // The next query of a flushed connection reaches the new backend at once.
        let out = send(&dp, &mut w, ipv4_frame(ip_proto::UDP, CLIENT, VIP, 5000, 80, b"dns?"), 1, 2);
        assert_eq!(addrs(&out[0].1).1, B2);
        let conns = dp.dump_conntrack(2);
        assert_eq!(conns.len(), 1);
        assert_eq!(conns[0].reply.src, v4(B2));
    }
}

#[cfg(test)]
mod move_tests {
    //! `move` through the caches: a cached decision that copied header bits must never be
    //! reused for a packet whose bits differ. Checked directly (derived MACs, OVN's use)
    //! and against an uncached translation of every packet on random tables.
    use super::*;
    use crate::exec::{CollectSink, ExecCtx};
    use crate::flow::{Action, Match, Subfield};
    use crate::key::ip_proto;
    use crate::offload::Offload;
    use crate::parse::tests::ipv4_frame;

    fn flow(table: u8, priority: u16, matches: Match, actions: Vec<Action>) -> FlowMod {
        FlowMod::AddFlow(Flow { table, priority, matches, cookie: 0, actions })
    }

    fn eth_dst(frame: &[u8]) -> u64 {
        let mut b = [0u8; 8];
        b[2..].copy_from_slice(&frame[..6]);
        u64::from_be_bytes(b)
    }

    #[test]
    fn derived_mac_differs_per_destination_through_the_caches() {
        for microflow_entries in [0, 64] {
            let dp = Datapath::new(DatapathConfig { microflow_entries, ..DatapathConfig::default() });
            dp.apply(&[flow(
                0,
                1,
                Match::ANY.with(Field::EthType, 0x0800),
                vec![
                    Action::SetField { field: Field::EthDst, value: 0x0a58_0000_0000, mask: u128::MAX },
                    Action::Move { src: Subfield::whole(Field::Ipv4Dst), dst: Subfield::range(Field::EthDst, 0, 31) },
                    Action::Output(2),
                ],
            )])
            .unwrap();
            let mut w = dp.worker();
            let dsts = [0x0af4_0003u32, 0x0af4_0104, 0x0af4_0003, 0x0af4_0104, 0x0af4_0105];
            for (i, dst) in dsts.iter().enumerate() {
                let mut sink = CollectSink::default();
                let frame = ipv4_frame(ip_proto::UDP, 0x0af4_0002, *dst, 1000, 53, b"q");
                dp.process_batch(&mut w, &mut [Packet::new(frame, 1)], i as u64, &mut sink);
                assert_eq!(sink.outputs.len(), 1);
                assert_eq!(eth_dst(&sink.outputs[0].2), 0x0a58_0000_0000 | u64::from(*dst), "packet {i}");
            }
            let s = dp.stats();
            assert_eq!(s.upcalls, 3, "one megaflow per destination");
            assert_eq!(s.megaflow_hits + s.microflow_hits, 2);
        }
    }

    /// A small deterministic generator (no dependency needed for this one test).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    const SOURCES: [Field; 6] =
        [Field::Ipv4Src, Field::Ipv4Dst, Field::TpSrc, Field::TpDst, Field::Reg0, Field::EthSrc];
    const TARGETS: [Field; 5] = [Field::EthDst, Field::EthSrc, Field::Reg0, Field::Reg1, Field::TpDst];

    fn random_subfield(rng: &mut Rng, field: Field, bits: u32) -> Subfield {
        let offset = rng.below(u64::from(field.bits() - bits + 1)) as u8;
        Subfield { field, offset, bits: bits as u8 }
    }

    fn random_move(rng: &mut Rng) -> Action {
        let src = SOURCES[rng.below(SOURCES.len() as u64) as usize];
        let dst = TARGETS[rng.below(TARGETS.len() as u64) as usize];
        let bits = 1 + rng.below(u64::from(src.bits().min(dst.bits()))) as u32;
        Action::Move { src: random_subfield(rng, src, bits), dst: random_subfield(rng, dst, bits) }
    }

    fn random_actions(rng: &mut Rng, table: u8) -> Vec<Action> {
        let mut out = Vec::new();
        for _ in 0..1 + rng.below(4) {
            out.push(match rng.below(6) {
                0 | 1 => random_move(rng),
                2 => Action::SetField {
                    field: Field::EthDst,
                    value: rng.next() as u128 & 0xffff_ffff_ffff,
                    mask: u128::MAX,
                },
                3 => Action::SetField { field: Field::Reg0, value: rng.below(4) as u128, mask: 0xff },
                4 if table < 2 => Action::Resubmit(table + 1),
                _ => Action::Output(1 + rng.below(3) as u32),
            });
        }
        out.push(Action::Output(1 + rng.below(3) as u32));
        out
    }

    fn random_match(rng: &mut Rng) -> Match {
        let mut m = Match::ANY;
        for _ in 0..rng.below(3) {
            let f = [Field::Ipv4Dst, Field::Ipv4Src, Field::Reg0, Field::Reg1, Field::TpDst][rng.below(5) as usize];
            m = m.with_masked(f, rng.below(4) as u128, 0x3);
        }
        m
    }

    /// What an uncached datapath would do: translate this very key, run the result.
    fn uncached(dp: &Datapath, frame: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let mut key = FlowKey::ZERO;
        key.set(Field::InPort, 1);
        let mut offs = parse_frame(frame, &mut key);
        let t = dp.pipeline().translate(&key);
        let mut words = Vec::new();
        exec::encode(&t.actions, &mut words);
        let (ct, lbs) = (Mutex::new(Conntrack::new(CtConfig::default())), Mutex::new(HashMap::new()));
        let ctx = ExecCtx {
            conntrack: &ct,
            lbs: &lbs,
            now: 0,
            in_port: 1,
            arrived_eth: [0; 12],
            offload: Offload::NONE,
            audit: None,
        };
        let mut sink = CollectSink::default();
        let mut data = frame.to_vec();
        exec::execute(&words, &mut data, &mut offs, &key, 0, &mut sink, &ctx);
        sink.outputs.into_iter().map(|(_, p, f)| (p, f)).collect()
    }

    #[test]
    fn log_records_every_packet_cached_or_not_within_the_rate() {
        use crate::audit::AuditConfig;
        let dp = Datapath::new(DatapathConfig {
            audit: AuditConfig { per_second: 1000, burst: 3, capacity: 10 },
            ..DatapathConfig::default()
        });
        dp.apply(&[FlowMod::AddFlow(Flow {
            table: 0,
            priority: 1,
            matches: Match::ANY,
            cookie: 0,
            actions: vec![Action::Log(42), Action::Drop],
        })])
        .unwrap();
        let frame = crate::parse::tests::ipv4_frame(crate::key::ip_proto::UDP, 0x0a00_0001, 0x0a00_0002, 5, 53, b"x");
        let mut w = dp.worker();
        for _ in 0..5 {
            let mut batch = vec![Packet::new(frame.clone(), 3)];
            dp.process_batch(&mut w, &mut batch, 1_000, &mut crate::exec::CollectSink::default());
        }
        assert_eq!(dp.stats().upcalls, 1, "later packets hit the caches");
        let b = dp.take_audit();
        assert_eq!((b.records.len(), b.suppressed), (3, 2), "burst of 3, then the rate");
        let r = b.records[0];
        assert_eq!((r.id, r.in_port, r.proto, r.dport), (42, 3, 17, 53));
        assert_eq!(r.src, Some("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn moves_through_the_caches_match_uncached_translation_on_random_tables() {
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        for case in 0..200 {
            let dp = Datapath::new(DatapathConfig {
                microflow_entries: if case % 2 == 0 { 0 } else { 256 },
                ..DatapathConfig::default()
            });
            let mut mods = Vec::new();
            for table in 0..3u8 {
                for _ in 0..1 + rng.below(4) {
                    mods.push(flow(
                        table,
                        rng.below(4) as u16,
                        random_match(&mut rng),
                        random_actions(&mut rng, table),
                    ));
                }
            }
            dp.apply(&mods).unwrap();
            let mut w = dp.worker();
            // Few distinct values per field, so that packets share megaflows when they may.
            let frames: Vec<Vec<u8>> = (0..12)
                .map(|_| {
                    let (src, dst) = (0x0a00_0000 | rng.below(8) as u32, 0x0a00_0100 | rng.below(8) as u32);
                    ipv4_frame(ip_proto::UDP, src, dst, 1000 + rng.below(4) as u16, 50 + rng.below(4) as u16, b"x")
                })
                .collect();
            for round in 0..3 {
                for (i, frame) in frames.iter().enumerate() {
                    let mut sink = CollectSink::default();
                    dp.process_batch(&mut w, &mut [Packet::new(frame.clone(), 1)], round, &mut sink);
                    let got: Vec<(u32, Vec<u8>)> = sink.outputs.into_iter().map(|(_, p, f)| (p, f)).collect();
                    assert_eq!(got, uncached(&dp, frame), "case {case}, round {round}, packet {i}: {mods:?}");
                }
            }
            assert!(dp.stats().upcalls <= frames.len() as u64);
        }
    }
}
