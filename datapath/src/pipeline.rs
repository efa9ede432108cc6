//! The OpenFlow-style pipeline: numbered tables of prioritised flows, groups, and the
//! *translation* of a flow key through them (the slow path, or upcall).
//!
//! Translation walks the tables like Open vSwitch's `ofproto-dpif-xlate`: it runs
//! actions against a working copy of the key, accumulates the wildcard mask of every
//! key bit a decision looked at, and compiles the result into datapath actions. Header
//! writes are committed lazily, just before the packet leaves or changes shape, as
//! absolute values — so the compiled actions depend only on bits in the wildcard mask and
//! are valid for every packet the resulting megaflow matches.
//!
//! Semantics worth knowing (the property test's reference implements the same):
//! - highest priority wins; equal priorities: the flow installed first wins;
//! - a table miss ends that lookup: the caller's remaining actions continue;
//! - `drop`, TTL expiry, pushing a second VLAN tag, a missing group and the resubmit
//!   limits end the packet's processing (outputs already made stand), except inside an
//!   `all` group bucket, where they end only that bucket;
//! - `all` buckets each run on a copy of the packet and key; `select` picks one bucket by
//!   a hash of the group's fields ([`select_bucket`]) and runs it inline;
//! - `ct`/`ct_lb` with a table end the pass: conntrack runs, then the packet re-enters the
//!   pipeline at that table with the `ct_*` fields set and the metadata and registers it
//!   had (recirculation, at most [`MAX_RECIRC`] passes); reached inside an `all` bucket
//!   (through a resubmit) they end that bucket instead, and conntrack does not run;
//! - decisions only execution can make — a conntrack error, a Service without backends, a
//!   frame too big for a tunnel — drop the packet at that point; inside an `all` bucket
//!   they end only that bucket's copy;
//! - `move` reads the working key: the source bits the packet brought in (not written by
//!   an earlier action) are un-wildcarded, and a header field written only in part is
//!   committed whole with its unwritten bits un-wildcarded; `ct_clear` zeroes the `ct_*`
//!   fields for the rest of the pass.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use thiserror::Error;

use crate::classifier::Classifier;
use crate::exec::DpAction;
use crate::flow::{Action, CtZone, Flow, FlowMod, Group, GroupKind, Match, TunnelPort};
use crate::hash;
use crate::key::{Field, FlowKey, VLAN_PRESENT, eth_type};

/// Maximum nesting of resubmit / goto_table / group buckets.
pub const MAX_DEPTH: u32 = 64;
/// Maximum table lookups one packet may cause.
pub const MAX_LOOKUPS: u32 = 4096;
/// Maximum passes through the pipeline (recirculations after `ct`) for one packet.
pub const MAX_RECIRC: u32 = 8;

/// Why a packet produced no (further) output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum DropReason {
    /// A table had no matching flow and nothing was output.
    TableMiss = 0,
    /// Flows ran but none output the packet.
    NoOutput = 1,
    /// An explicit `drop` action.
    Explicit = 2,
    /// `dec_ttl` on a packet whose TTL was 0 or 1.
    TtlExpired = 3,
    /// Resubmit/goto nesting or the lookup budget was exceeded (a loop in the tables).
    ResubmitLimit = 4,
    /// `push_vlan` on a packet that already carries a tag (one tag is supported).
    VlanTagPresent = 5,
    /// A flow referred to a group that does not exist.
    GroupMissing = 6,
    /// Conntrack could not commit a new connection: the table is full.
    CtTableFull = 7,
    /// NAT found no free address/port for a new connection.
    NatExhausted = 8,
    /// A Service with no backends answered the client (reset / port unreachable).
    LbReject = 9,
    /// The packet recirculated more than [`MAX_RECIRC`] times.
    RecircLimit = 10,
    /// Too big for the tunnel MTU (an ICMP error went back if the rules allow one).
    TooBig = 11,
    /// The frame could not be encapsulated (shorter than an Ethernet header).
    EncapError = 12,
    /// Conntrack could not commit a new connection: its zone is at its limit.
    CtZoneFull = 13,
    /// A frame arrived through a tunnel from an outer source that is not one of the
    /// tunnel port's remotes.
    TunnelUnknownSource = 14,
}

impl DropReason {
    /// Every reason, indexed by its discriminant.
    pub const ALL: [DropReason; 15] = [
        DropReason::TableMiss,
        DropReason::NoOutput,
        DropReason::Explicit,
        DropReason::TtlExpired,
        DropReason::ResubmitLimit,
        DropReason::VlanTagPresent,
        DropReason::GroupMissing,
        DropReason::CtTableFull,
        DropReason::NatExhausted,
        DropReason::LbReject,
        DropReason::RecircLimit,
        DropReason::TooBig,
        DropReason::EncapError,
        DropReason::CtZoneFull,
        DropReason::TunnelUnknownSource,
    ];

    /// Name used in stats output.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::TableMiss => "table_miss",
            DropReason::NoOutput => "no_output",
            DropReason::Explicit => "explicit",
            DropReason::TtlExpired => "ttl_expired",
            DropReason::ResubmitLimit => "resubmit_limit",
            DropReason::VlanTagPresent => "vlan_tag_present",
            DropReason::GroupMissing => "group_missing",
            DropReason::CtTableFull => "ct_table_full",
            DropReason::NatExhausted => "nat_exhausted",
            DropReason::LbReject => "lb_reject",
            DropReason::RecircLimit => "recirc_limit",
            DropReason::TooBig => "too_big",
            DropReason::EncapError => "encap_error",
            DropReason::CtZoneFull => "ct_zone_full",
            DropReason::TunnelUnknownSource => "tunnel_unknown_source",
        }
    }
}

/// A flow or group the pipeline refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PipelineError {
    /// set_field on a field that flows may not write.
    #[error("table {table}: set_field on {field}: field is not writable")]
    FieldNotWritable {
        /// Table of the offending flow.
        table: u8,
        /// Field name.
        field: &'static str,
    },
    /// set_field with a value wider than the field.
    #[error("table {table}: set_field {field}={value:#x}: value does not fit in {bits} bits")]
    ValueTooWide {
        /// Table of the offending flow.
        table: u8,
        /// Field name.
        field: &'static str,
        /// The value.
        value: u128,
        /// Field width.
        bits: u32,
    },
    /// A masked set_field on a packet header field (only metadata may be set partially).
    #[error("table {table}: set_field on {field} with a mask: header fields are written whole")]
    MaskedHeaderWrite {
        /// Table of the offending flow.
        table: u8,
        /// Field name.
        field: &'static str,
    },
    /// goto_table that is not the last action or does not go forward.
    #[error("table {table}: goto_table:{target} must be the flow's last action and name a later table")]
    BadGoto {
        /// Table of the offending flow.
        table: u8,
        /// Target table.
        target: u8,
    },
    /// goto_table inside a group bucket.
    #[error("group {group}: goto_table is not allowed in a bucket (use resubmit)")]
    GotoInBucket {
        /// The group.
        group: u32,
    },
    /// A recirculating ct / ct_lb that is not the flow's last action.
    #[error("table {table}: ct(table={target}) must be the flow's last action")]
    CtNotLast {
        /// Table of the offending flow.
        table: u8,
        /// Its resume table.
        target: u8,
    },
    /// A recirculating ct / ct_lb inside a group bucket.
    #[error("group {group}: ct with table= is not allowed in a bucket")]
    CtInBucket {
        /// The group.
        group: u32,
    },
    /// A move whose bit ranges do not lie inside their fields or differ in width.
    #[error("table {table}: move:{src}->{dst}: the bit ranges must lie inside their fields and have the same width")]
    BadMove {
        /// Table of the offending flow.
        table: u8,
        /// The source subfield, as written in flow syntax.
        src: String,
        /// The destination subfield.
        dst: String,
    },
    /// A flow that matches on `recirc_id`, which the datapath owns.
    #[error("table {table}: recirc_id cannot be matched; match on ct_state instead")]
    RecircIdMatch {
        /// Table of the offending flow.
        table: u8,
    },
}

/// Per-flow counters, readable while forwarding.
#[derive(Debug, Default)]
pub struct FlowCounters {
    /// Packets (from megaflows that have been evicted or invalidated, plus upcalls).
    pub packets: AtomicU64,
    /// Bytes, likewise.
    pub bytes: AtomicU64,
    /// Last time (caller's clock, ns) the flow was used.
    pub last_used: AtomicU64,
}

/// An installed flow.
#[derive(Debug)]
pub struct Rule {
    /// Stable id (index in the pipeline's rule slab) while installed.
    pub id: u32,
    /// The flow as installed.
    pub flow: Flow,
    /// Counters settled so far (see [`crate::Datapath::flow_stats`] for live totals).
    pub counters: FlowCounters,
}

/// The result of translating one key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Translation {
    /// Datapath actions.
    pub actions: Vec<DpAction>,
    /// Every key bit the result depends on.
    pub wc: FlowKey,
    /// Ids of the rules that matched, in order.
    pub rules: Vec<u32>,
    /// Bloom bits of the tables consulted and groups used (see [`table_bloom`]).
    pub bloom: u64,
    /// Set if the packet ends without any output, or stops early.
    pub drop: Option<DropReason>,
}

/// Bloom bit of a table (low 48 bits).
pub fn table_bloom(table: u8) -> u64 {
    1 << (table as u64 % 48)
}

/// Bloom bit of a group (high 16 bits).
pub fn group_bloom(group: u32) -> u64 {
    1 << (48 + group as u64 % 16)
}

/// Header fields in the order pending writes are committed. Same-width aliases (ARP
/// addresses over IPv4 addresses) share a slot: the frame has one or the other.
const COMMIT_SLOTS: [Field; 16] = [
    Field::EthDst,
    Field::EthSrc,
    Field::VlanTci,
    Field::Ipv4Src,
    Field::Ipv4Dst,
    Field::ArpOp,
    Field::ArpSha,
    Field::ArpTha,
    Field::IpDscp,
    Field::IpEcn,
    Field::NwTtl,
    Field::Ipv6Label,
    Field::Ipv6Src,
    Field::Ipv6Dst,
    Field::TpSrc,
    Field::TpDst,
];

fn commit_slot(f: Field) -> Option<usize> {
    let f = match f {
        Field::ArpSpa => Field::Ipv4Src,
        Field::ArpTpa => Field::Ipv4Dst,
        other => other,
    };
    COMMIT_SLOTS.iter().position(|s| *s == f).or(match f {
        Field::IcmpType => Some(16),
        Field::IcmpCode => Some(17),
        _ => None,
    })
}

fn slot_field(slot: usize) -> Field {
    match slot {
        16 => Field::IcmpType,
        17 => Field::IcmpCode,
        s => COMMIT_SLOTS[s],
    }
}

/// Picks the bucket of a select group for a key: FNV-style hash of the group's field
/// values (each as two 64-bit words, high first) through [`hash::hash_words`] with basis
/// = group id, reduced modulo the total weight and walked over the bucket weights.
pub fn select_bucket(group: &Group, fields: &[Field], key: &FlowKey) -> Option<usize> {
    let total: u64 = group.buckets.iter().map(|b| b.weight as u64).sum();
    if total == 0 {
        return None;
    }
    let mut words = [0u64; 2 * Field::ALL.len()];
    for (i, f) in fields.iter().enumerate().take(Field::ALL.len()) {
        let v = key.get(*f);
        words[2 * i] = (v >> 64) as u64;
        words[2 * i + 1] = v as u64;
    }
    let n = 2 * fields.len().min(Field::ALL.len());
    let mut pick = hash::hash_words(group.id as u64, &words[..n]) % total;
    for (i, b) in group.buckets.iter().enumerate() {
        if pick < b.weight as u64 {
            return Some(i);
        }
        pick -= b.weight as u64;
    }
    None
}

/// What a packet carries across a recirculation besides its headers: the table to
/// resume in and the pipeline metadata (metadata, registers, tunnel fields) at the time of
/// the `ct` action. Interned: one id per distinct state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecircState {
    /// Table to resume in.
    pub table: u8,
    /// Key words 1..=7, the tunnel half of word 8 and word 23 (`tun_identity`, `reg8`).
    pub frozen: [u64; 9],
}

const FROZEN_W8_MASK: u64 = 0xffff_ffff;
/// The key word holding `tun_identity` and `reg8`.
const FROZEN_W23: usize = 23;

impl RecircState {
    fn freeze(table: u8, key: &FlowKey) -> Self {
        let mut frozen = [0u64; 9];
        frozen[..7].copy_from_slice(&key.w[1..8]);
        frozen[7] = key.w[8] & FROZEN_W8_MASK;
        frozen[8] = key.w[FROZEN_W23];
        RecircState { table, frozen }
    }

    fn thaw(&self, key: &mut FlowKey) {
        key.w[1..8].copy_from_slice(&self.frozen[..7]);
        key.w[8] = (key.w[8] & !FROZEN_W8_MASK) | self.frozen[7];
        key.w[FROZEN_W23] = self.frozen[8];
    }
}

/// Interned recirculation states.
#[derive(Debug, Default)]
struct RecircTable {
    ids: HashMap<RecircState, u32>,
    states: Vec<RecircState>,
}

/// The pipeline: up to 256 tables and any number of groups.
#[derive(Debug, Default)]
pub struct Pipeline {
    tables: Vec<Classifier<Arc<Rule>>>,
    recirc: parking_lot::Mutex<RecircTable>,
    groups: HashMap<u32, Arc<Group>>,
    tunnels: HashMap<u32, TunnelPort>,
    rules: Vec<Option<Arc<Rule>>>,
    free_ids: Vec<u32>,
    /// Rule ids removed since the last [`Pipeline::release_removed`].
    removed: Vec<u32>,
}

/// What one modification touched, for revalidation.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Touched {
    /// Bloom bits of touched tables and groups.
    pub bloom: u64,
}

impl Pipeline {
    /// An empty pipeline (every packet misses table 0).
    pub fn new() -> Self {
        Pipeline { tables: (0..256).map(|_| Classifier::new()).collect(), ..Default::default() }
    }

    /// Number of installed flows.
    pub fn flow_count(&self) -> usize {
        self.tables.iter().map(|t| t.len()).sum()
    }

    /// The rule with this id, if installed (or removed but not yet released).
    pub fn rule(&self, id: u32) -> Option<&Arc<Rule>> {
        self.rules.get(id as usize).and_then(|r| r.as_ref())
    }

    /// Every installed rule, table by table.
    pub fn rules(&self) -> impl Iterator<Item = &Arc<Rule>> {
        self.tables.iter().flat_map(|t| t.iter().map(|(_, _, r)| r))
    }

    /// A group by id.
    pub fn group(&self, id: u32) -> Option<&Arc<Group>> {
        self.groups.get(&id)
    }

    /// The classifier of one table (for benchmarks and tools).
    pub fn table(&self, table: u8) -> &Classifier<Arc<Rule>> {
        &self.tables[table as usize]
    }

    /// Number of distinct recirculation states handed out.
    pub fn recirc_count(&self) -> usize {
        self.recirc.lock().states.len()
    }

    fn recirc_id(&self, state: RecircState) -> u32 {
        let mut t = self.recirc.lock();
        if let Some(id) = t.ids.get(&state) {
            return *id;
        }
        t.states.push(state);
        let id = t.states.len() as u32;
        t.ids.insert(state, id);
        id
    }

    /// The state behind a recirculation id.
    pub fn recirc_state(&self, id: u32) -> Option<RecircState> {
        id.checked_sub(1).and_then(|i| self.recirc.lock().states.get(i as usize).copied())
    }

    fn validate_actions(table: u8, actions: &[Action], group: Option<u32>) -> Result<(), PipelineError> {
        for (i, a) in actions.iter().enumerate() {
            let recirc_target = match a {
                Action::Ct(spec) => spec.table,
                Action::CtLb { table, .. } => *table,
                _ => None,
            };
            if let Some(target) = recirc_target {
                if let Some(g) = group {
                    return Err(PipelineError::CtInBucket { group: g });
                }
                if i + 1 != actions.len() {
                    return Err(PipelineError::CtNotLast { table, target });
                }
            }
            match a {
                Action::SetField { field, value, mask } => {
                    let f = *field;
                    if !f.writable() {
                        return Err(PipelineError::FieldNotWritable { table, field: f.name() });
                    }
                    if value & mask & !f.max_value() != 0 {
                        return Err(PipelineError::ValueTooWide {
                            table,
                            field: f.name(),
                            value: *value,
                            bits: f.bits(),
                        });
                    }
                    if commit_slot(f).is_some() && mask & f.max_value() != f.max_value() {
                        return Err(PipelineError::MaskedHeaderWrite { table, field: f.name() });
                    }
                }
                Action::Move { src, dst } => {
                    if !dst.field.writable() {
                        return Err(PipelineError::FieldNotWritable { table, field: dst.field.name() });
                    }
                    if !src.is_valid() || !dst.is_valid() || src.bits != dst.bits {
                        return Err(PipelineError::BadMove { table, src: src.to_string(), dst: dst.to_string() });
                    }
                }
                Action::GotoTable(t) => {
                    if let Some(g) = group {
                        return Err(PipelineError::GotoInBucket { group: g });
                    }
                    if *t <= table || i + 1 != actions.len() {
                        return Err(PipelineError::BadGoto { table, target: *t });
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Applies one modification. On error nothing changed.
    pub fn apply(&mut self, m: &FlowMod) -> Result<Touched, PipelineError> {
        match m {
            FlowMod::AddFlow(flow) => {
                if flow.matches.mask.get(Field::RecircId) != 0 {
                    return Err(PipelineError::RecircIdMatch { table: flow.table });
                }
                Self::validate_actions(flow.table, &flow.actions, None)?;
                let mut flow = flow.clone();
                flow.matches = flow.matches.normalized();
                let id = self.free_ids.pop().unwrap_or(self.rules.len() as u32);
                let rule = Arc::new(Rule { id, flow, counters: FlowCounters::default() });
                if id as usize == self.rules.len() {
                    self.rules.push(Some(rule.clone()));
                } else {
                    self.rules[id as usize] = Some(rule.clone());
                }
                let t = rule.flow.table;
                if let Some(old) = self.tables[t as usize].insert(&rule.flow.matches, rule.flow.priority, rule.clone())
                {
                    self.removed.push(old.id);
                }
                Ok(Touched { bloom: table_bloom(t) })
            }
            FlowMod::DeleteFlowStrict { table, priority, matches } => {
                if let Some(old) = self.tables[*table as usize].remove(matches, *priority) {
                    self.removed.push(old.id);
                }
                Ok(Touched { bloom: table_bloom(*table) })
            }
            FlowMod::DeleteFlowsByCookie { table, cookie, cookie_mask } => {
                let mut bloom = 0;
                let tables: Vec<u8> = match table {
                    Some(t) => vec![*t],
                    None => (0..=255).collect(),
                };
                for t in tables {
                    let victims: Vec<(Match, u16)> = self.tables[t as usize]
                        .iter()
                        .filter(|(_, _, r)| r.flow.cookie & cookie_mask == cookie & cookie_mask)
                        .map(|(m, p, _)| (m, p))
                        .collect();
                    for (m, p) in victims {
                        if let Some(old) = self.tables[t as usize].remove(&m, p) {
                            self.removed.push(old.id);
                            bloom |= table_bloom(t);
                        }
                    }
                }
                Ok(Touched { bloom })
            }
            FlowMod::AddGroup(g) => {
                for b in &g.buckets {
                    Self::validate_actions(0, &b.actions, Some(g.id))?;
                }
                self.groups.insert(g.id, Arc::new(g.clone()));
                Ok(Touched { bloom: group_bloom(g.id) })
            }
            FlowMod::DeleteGroup(id) => {
                self.groups.remove(id);
                Ok(Touched { bloom: group_bloom(*id) })
            }
            // Load balancers are chosen at execution time; no cached decision names a
            // backend, so nothing needs revalidating.
            FlowMod::AddLoadBalancer(_) | FlowMod::DeleteLoadBalancer(_) => Ok(Touched::default()),
            // Any flow may output to a port: everything is rechecked.
            FlowMod::AddTunnelPort(t) => {
                self.tunnels.insert(t.port, *t);
                Ok(Touched { bloom: u64::MAX })
            }
            FlowMod::DeleteTunnelPort(p) => {
                self.tunnels.remove(p);
                Ok(Touched { bloom: u64::MAX })
            }
            // Checked before any lookup and by conntrack: no cached decision depends on
            // them.
            FlowMod::SetTunnelRemotes(_)
            | FlowMod::DeleteTunnelRemotes(_)
            | FlowMod::SetZoneLimit(_)
            | FlowMod::DeleteZoneLimit(_) => Ok(Touched::default()),
        }
    }

    /// Frees the ids of rules removed since the last call. Call after revalidation, so
    /// that no cached entry still names a freed id.
    pub fn release_removed(&mut self) -> Vec<Arc<Rule>> {
        let mut out = Vec::new();
        for id in self.removed.drain(..) {
            if let Some(r) = self.rules[id as usize].take() {
                out.push(r);
            }
            self.free_ids.push(id);
        }
        out
    }

    /// Translates a key through the pipeline: from table 0, or, for a recirculated
    /// packet (`recirc_id` ≠ 0), from the table and with the metadata its `ct` froze.
    pub fn translate(&self, key: &FlowKey) -> Translation {
        let mut x = Xlate::new(self, *key, None);
        x.start();
        x.finish()
    }

    /// Translates a key and records every step, like `ofproto/trace`.
    pub fn trace(&self, key: &FlowKey) -> (Translation, Vec<TraceStep>) {
        let mut steps = Vec::new();
        let mut x = Xlate::new(self, *key, Some(&mut steps));
        x.start();
        let t = x.finish();
        (t, steps)
    }
}

/// One step of a trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceStep {
    /// A table lookup and the flow it found (`None`: miss).
    Lookup {
        /// Nesting depth.
        depth: u32,
        /// Table.
        table: u8,
        /// Matching flow, if any.
        flow: Option<Box<Flow>>,
    },
    /// An action being run.
    Action {
        /// Nesting depth.
        depth: u32,
        /// The action.
        action: Action,
    },
    /// Processing stopped.
    Stop(DropReason),
}

struct Xlate<'a> {
    p: &'a Pipeline,
    key: FlowKey,
    wc: FlowKey,
    /// Key bits whose current value an action wrote. Every other bit still holds the
    /// packet's own value, so a decision that depends on it must un-wildcard it.
    written: FlowKey,
    dirty: u32,
    out: Vec<DpAction>,
    rules: Vec<u32>,
    bloom: u64,
    lookups: u32,
    outputs: u32,
    missed: bool,
    exit: Option<DropReason>,
    /// Set by a recirculating `ct`: this pass ends, the packet continues after conntrack.
    halted: bool,
    /// Nesting of `all` group buckets being translated.
    in_bucket: u32,
    trace: Option<&'a mut Vec<TraceStep>>,
}

impl<'a> Xlate<'a> {
    fn new(p: &'a Pipeline, key: FlowKey, trace: Option<&'a mut Vec<TraceStep>>) -> Self {
        Xlate {
            p,
            key,
            wc: FlowKey::ZERO,
            written: FlowKey::ZERO,
            dirty: 0,
            out: Vec::new(),
            rules: Vec::new(),
            bloom: 0,
            lookups: 0,
            outputs: 0,
            missed: false,
            exit: None,
            halted: false,
            in_bucket: 0,
            trace,
        }
    }

    fn start(&mut self) {
        // Every megaflow matches its pass exactly: packets before and after conntrack
        // must never share one.
        self.wc.unwildcard(Field::RecircId);
        let id = self.key.get(Field::RecircId) as u32;
        if id == 0 {
            self.table(0, 0);
            return;
        }
        match self.p.recirc_state(id) {
            Some(st) => {
                st.thaw(&mut self.key);
                self.table(st.table, 0);
            }
            None => self.exit = Some(DropReason::RecircLimit),
        }
    }

    fn zone(&mut self, zone: CtZone) -> u16 {
        match zone {
            CtZone::Const(z) => z,
            CtZone::Field(f) => {
                self.wc.set_masked(f, 0xffff, 0xffff);
                self.key.get(f) as u16
            }
        }
    }

    fn recirc(&mut self, table: Option<u8>) -> u32 {
        match table {
            Some(t) => {
                self.halted = true;
                // The frozen metadata decides what the next pass does: every packet
                // sharing this megaflow must carry the same.
                for w in 1..8 {
                    self.wc.w[w] = u64::MAX;
                }
                self.wc.w[8] |= FROZEN_W8_MASK;
                self.wc.w[FROZEN_W23] = u64::MAX;
                self.p.recirc_id(RecircState::freeze(t, &self.key))
            }
            None => 0,
        }
    }

    fn finish(self) -> Translation {
        let drop = self.exit.or(if self.outputs == 0 && !self.halted {
            Some(if self.missed { DropReason::TableMiss } else { DropReason::NoOutput })
        } else {
            None
        });
        if let (Some(t), Some(d)) = (self.trace, self.exit) {
            t.push(TraceStep::Stop(d));
        }
        Translation { actions: self.out, wc: self.wc, rules: self.rules, bloom: self.bloom, drop }
    }

    fn table(&mut self, table: u8, depth: u32) {
        if depth >= MAX_DEPTH || self.lookups >= MAX_LOOKUPS {
            self.exit = Some(DropReason::ResubmitLimit);
            return;
        }
        self.lookups += 1;
        self.bloom |= table_bloom(table);
        let found = self.p.tables[table as usize].lookup(&self.key, Some(&mut self.wc));
        if let Some(t) = self.trace.as_deref_mut() {
            t.push(TraceStep::Lookup { depth, table, flow: found.map(|r| Box::new(r.flow.clone())) });
        }
        match found {
            Some(rule) => {
                let rule = rule.clone();
                self.rules.push(rule.id);
                self.actions(&rule.flow.actions, depth);
            }
            None => self.missed = true,
        }
    }

    fn commit(&mut self) {
        let mut d = self.dirty;
        while d != 0 {
            let slot = d.trailing_zeros() as usize;
            d &= d - 1;
            let f = slot_field(slot);
            // A field written in part (by `move`) is committed whole: the bits no action
            // wrote are the packet's own, and the megaflow must match them.
            let unwritten = f.max_value() & !self.written.get(f);
            if unwritten != 0 {
                self.wc.set_masked(f, u128::MAX, unwritten);
            }
            self.out.push(DpAction::Set(f, self.key.get(f)));
        }
        self.dirty = 0;
    }

    /// Writes the bits of `mask` of `field` in the working key.
    fn write(&mut self, field: Field, value: u128, mask: u128) {
        self.key.set_masked(field, value, mask);
        self.written.set_masked(field, u128::MAX, mask);
        if let Some(s) = commit_slot(field) {
            self.dirty |= 1 << s;
        }
    }

    fn actions(&mut self, actions: &[Action], depth: u32) {
        for a in actions {
            if self.exit.is_some() || self.halted {
                return;
            }
            if let Some(t) = self.trace.as_deref_mut() {
                t.push(TraceStep::Action { depth, action: a.clone() });
            }
            match a {
                Action::Output(port) => {
                    self.commit();
                    match self.p.tunnels.get(port) {
                        Some(t) => {
                            for f in [
                                Field::TunId,
                                Field::TunDst,
                                Field::TunIngressPort,
                                Field::TunEgressPort,
                                Field::TunIdentity,
                            ] {
                                self.wc.unwildcard(f);
                            }
                            self.out.push(DpAction::TunnelOutput(Box::new(crate::exec::EncapSpec {
                                vni: self.key.get(Field::TunId) as u32 & crate::geneve::MAX_VNI,
                                dst: self.key.get(Field::TunDst) as u32,
                                ingress: self.key.get(Field::TunIngressPort) as u16,
                                egress: self.key.get(Field::TunEgressPort) as u16,
                                identity: self.key.get(Field::TunIdentity) as u32,
                                tunnel: *t,
                            })));
                        }
                        None => self.out.push(DpAction::Output(*port)),
                    }
                    self.outputs += 1;
                }
                Action::Respond(r) => {
                    self.commit();
                    self.out.push(DpAction::Respond(*r));
                    self.outputs += 1;
                }
                Action::Drop => self.exit = Some(DropReason::Explicit),
                Action::Log(id) => self.out.push(DpAction::Log(*id)),
                Action::SetField { field, value, mask } => self.write(*field, *value, *mask),
                Action::Move { src, dst } => {
                    // The result depends on the source bits the packet brought in (bits
                    // an action wrote are already determined by the flows that ran).
                    let unknown = src.mask() & !self.written.get(src.field);
                    self.wc.set_masked(src.field, u128::MAX, unknown);
                    let bits = src.read(&self.key);
                    self.write(dst.field, bits << dst.offset, dst.mask());
                }
                Action::CtClear => {
                    for f in [Field::CtState, Field::CtZone, Field::CtMark, Field::CtLabel] {
                        self.write(f, 0, u128::MAX);
                    }
                }
                Action::DecTtl => {
                    self.wc.unwildcard(Field::EthType);
                    let ty = self.key.get(Field::EthType) as u16;
                    if ty == eth_type::IPV4 || ty == eth_type::IPV6 {
                        self.wc.unwildcard(Field::NwTtl);
                        let ttl = self.key.get(Field::NwTtl);
                        if ttl <= 1 {
                            self.exit = Some(DropReason::TtlExpired);
                        } else {
                            self.write(Field::NwTtl, ttl - 1, u128::MAX);
                        }
                    }
                }
                Action::PushVlan(tci) => {
                    self.wc.set_masked(Field::VlanTci, VLAN_PRESENT as u128, VLAN_PRESENT as u128);
                    if self.key.get(Field::VlanTci) as u16 & VLAN_PRESENT != 0 {
                        self.exit = Some(DropReason::VlanTagPresent);
                    } else {
                        self.commit();
                        let tci = *tci | VLAN_PRESENT;
                        self.key.set(Field::VlanTci, tci as u128);
                        self.written.unwildcard(Field::VlanTci);
                        self.out.push(DpAction::PushVlan(tci));
                    }
                }
                Action::PopVlan => {
                    self.wc.set_masked(Field::VlanTci, VLAN_PRESENT as u128, VLAN_PRESENT as u128);
                    if self.key.get(Field::VlanTci) as u16 & VLAN_PRESENT != 0 {
                        self.commit();
                        self.key.set(Field::VlanTci, 0);
                        self.written.unwildcard(Field::VlanTci);
                        self.out.push(DpAction::PopVlan);
                    }
                }
                Action::Resubmit(t) => self.table(*t, depth + 1),
                Action::GotoTable(t) => self.table(*t, depth + 1),
                Action::Group(id) => self.group(*id, depth + 1),
                Action::Ct(spec) if spec.table.is_some() && self.in_bucket > 0 => {
                    // A copy made by an `all` bucket cannot re-enter the pipeline on
                    // its own: reaching a recirculating ct ends the bucket.
                    self.exit = Some(DropReason::NoOutput);
                }
                Action::CtLb { table: Some(_), .. } if self.in_bucket > 0 => self.exit = Some(DropReason::NoOutput),
                Action::Ct(spec) => {
                    let zone = self.zone(spec.zone);
                    // Conntrack sees the packet as modified so far.
                    self.commit();
                    let recirc = self.recirc(spec.table);
                    self.out.push(DpAction::Ct {
                        zone,
                        commit: spec.commit,
                        nat: spec.nat,
                        mark: spec.set_mark,
                        label: spec.set_label,
                        recirc,
                    });
                }
                Action::CtLb { lb, zone, table } => {
                    let zone = self.zone(*zone);
                    self.commit();
                    let recirc = self.recirc(*table);
                    self.out.push(DpAction::CtLb { zone, lb: *lb, recirc });
                }
            }
        }
    }

    fn group(&mut self, id: u32, depth: u32) {
        self.bloom |= group_bloom(id);
        if depth >= MAX_DEPTH {
            self.exit = Some(DropReason::ResubmitLimit);
            return;
        }
        let Some(g) = self.p.groups.get(&id).cloned() else {
            self.exit = Some(DropReason::GroupMissing);
            return;
        };
        match &g.kind {
            GroupKind::Select { fields } => {
                for f in fields {
                    self.wc.unwildcard(*f);
                }
                if let Some(b) = select_bucket(&g, fields, &self.key) {
                    self.actions(&g.buckets[b].actions, depth);
                }
            }
            GroupKind::All => {
                for b in &g.buckets {
                    if self.exit.is_some() {
                        return;
                    }
                    // Each bucket works on a copy: pending writes go to the shared
                    // packet first, the bucket's own effects stay inside a clone.
                    self.commit();
                    let (saved_key, saved_written) = (self.key, self.written);
                    let saved_out = std::mem::take(&mut self.out);
                    self.in_bucket += 1;
                    self.actions(&b.actions, depth);
                    self.in_bucket -= 1;
                    self.commit();
                    let inner = std::mem::replace(&mut self.out, saved_out);
                    if !inner.is_empty() {
                        self.out.push(DpAction::Clone(inner));
                    }
                    self.key = saved_key;
                    self.written = saved_written;
                    if self.exit != Some(DropReason::ResubmitLimit) {
                        self.exit = None;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{Bucket, Subfield};

    fn add(p: &mut Pipeline, table: u8, priority: u16, m: Match, actions: Vec<Action>) {
        p.apply(&FlowMod::AddFlow(Flow { table, priority, matches: m, cookie: 0, actions })).unwrap();
    }

    fn key_to(dst: u32) -> FlowKey {
        let mut k = FlowKey::ZERO;
        k.set(Field::EthType, 0x0800);
        k.set(Field::Ipv4Dst, dst as u128);
        k.set(Field::NwTtl, 64);
        k
    }

    #[test]
    fn resubmit_set_field_output() {
        let mut p = Pipeline::new();
        add(
            &mut p,
            0,
            10,
            Match::ANY.with(Field::Ipv4Dst, 2),
            vec![Action::SetField { field: Field::Reg0, value: 7, mask: u128::MAX }, Action::Resubmit(1)],
        );
        add(
            &mut p,
            1,
            10,
            Match::ANY.with(Field::Reg0, 7),
            vec![
                Action::SetField { field: Field::EthDst, value: 0xaa, mask: u128::MAX },
                Action::DecTtl,
                Action::Output(3),
            ],
        );
        let t = p.translate(&key_to(2));
        assert_eq!(
            t.actions,
            vec![DpAction::Set(Field::EthDst, 0xaa), DpAction::Set(Field::NwTtl, 63), DpAction::Output(3)]
        );
        assert_eq!(t.drop, None);
        let mut want = FlowKey::field_mask(Field::Ipv4Dst);
        want.or_assign(&FlowKey::field_mask(Field::RecircId));
        want.or_assign(&FlowKey::field_mask(Field::Reg0));
        want.or_assign(&FlowKey::field_mask(Field::EthType));
        want.or_assign(&FlowKey::field_mask(Field::NwTtl));
        assert_eq!(t.wc, want);
        let t = p.translate(&key_to(3));
        assert_eq!(t.drop, Some(DropReason::TableMiss));
    }

    fn mv(src: Subfield, dst: Subfield) -> Action {
        Action::Move { src, dst }
    }

    #[test]
    fn move_unwildcards_its_source_and_the_unwritten_bits_of_a_header() {
        let low32 = Subfield::range(Field::EthDst, 0, 31);
        let nw_dst = Subfield::whole(Field::Ipv4Dst);
        let mut k = key_to(0x0af4_0003);
        k.set(Field::EthDst, 0x0200_1111_2222);
        k.set(Field::Ipv4Src, 0x0a00_0009);

        // Into part of eth_dst: the other 16 bits are the packet's own, so they count.
        let mut p = Pipeline::new();
        add(&mut p, 0, 1, Match::ANY, vec![mv(nw_dst, low32), Action::Output(1)]);
        let t = p.translate(&k);
        assert_eq!(t.actions, vec![DpAction::Set(Field::EthDst, 0x0200_0af4_0003), DpAction::Output(1)]);
        let mut want = FlowKey::field_mask(Field::RecircId);
        want.or_assign(&FlowKey::field_mask(Field::Ipv4Dst));
        want.set(Field::EthDst, 0xffff_0000_0000);
        assert_eq!(t.wc, want);

        // After a set of the whole field, only the source counts: OVN's derived MAC.
        let mut p = Pipeline::new();
        let prefix = Action::SetField { field: Field::EthDst, value: 0x0a58_0000_0000, mask: u128::MAX };
        add(&mut p, 0, 1, Match::ANY, vec![prefix.clone(), mv(nw_dst, low32), Action::Output(1)]);
        let t = p.translate(&k);
        assert_eq!(t.actions, vec![DpAction::Set(Field::EthDst, 0x0a58_0af4_0003), DpAction::Output(1)]);
        let mut want = FlowKey::field_mask(Field::RecircId);
        want.or_assign(&FlowKey::field_mask(Field::Ipv4Dst));
        assert_eq!(t.wc, want);

        // A source an action wrote is known: reg1 set by a flow, then moved.
        let mut p = Pipeline::new();
        let reg1 = Action::SetField { field: Field::Reg1, value: 0x6440_0001, mask: u128::MAX };
        let from_reg1 = mv(Subfield::whole(Field::Reg1), low32);
        add(&mut p, 0, 1, Match::ANY, vec![reg1, prefix, from_reg1, Action::Output(1)]);
        let t = p.translate(&k);
        assert_eq!(t.actions, vec![DpAction::Set(Field::EthDst, 0x0a58_6440_0001), DpAction::Output(1)]);
        assert_eq!(t.wc, FlowKey::field_mask(Field::RecircId));

        // Into a register, then matched: the decision depends on the moved bits.
        let mut p = Pipeline::new();
        let src_low = Subfield::range(Field::Ipv4Src, 0, 7);
        add(&mut p, 0, 1, Match::ANY, vec![mv(src_low, Subfield::range(Field::Reg0, 8, 15)), Action::Resubmit(1)]);
        add(&mut p, 1, 1, Match::ANY.with(Field::Reg0, 0x0900), vec![Action::Output(9)]);
        add(&mut p, 1, 0, Match::ANY, vec![Action::Output(2)]);
        let t = p.translate(&k);
        assert_eq!(t.actions, vec![DpAction::Output(9)]);
        assert_eq!(t.wc.get(Field::Ipv4Src), 0xff, "only the moved bits of nw_src");
        k.set(Field::Ipv4Src, 0x0a00_0008);
        assert_eq!(p.translate(&k).actions, vec![DpAction::Output(2)]);
    }

    #[test]
    fn bad_moves_are_refused() {
        let mut p = Pipeline::new();
        let cases = [
            (mv(Subfield::whole(Field::Ipv4Dst), Subfield::range(Field::EthDst, 0, 15)), "same width"),
            (mv(Subfield::range(Field::Reg0, 0, 40), Subfield::range(Field::EthDst, 0, 40)), "inside their fields"),
            (mv(Subfield::whole(Field::Reg0), Subfield::whole(Field::CtMark)), "not writable"),
            (mv(Subfield { field: Field::Reg0, offset: 0, bits: 0 }, Subfield::range(Field::Reg1, 0, 0)), "width"),
        ];
        for (a, needle) in cases {
            let f = Flow { table: 0, priority: 1, matches: Match::ANY, cookie: 0, actions: vec![a] };
            let e = p.apply(&FlowMod::AddFlow(f)).unwrap_err();
            assert!(e.to_string().contains(needle), "{e}");
        }
        assert_eq!(p.flow_count(), 0);
    }

    #[test]
    fn ct_clear_forgets_the_conntrack_fields() {
        let mut p = Pipeline::new();
        add(&mut p, 0, 1, Match::ANY, vec![Action::CtClear, Action::Resubmit(1)]);
        let tracked = Match::ANY.with_masked(Field::CtState, 0x20, 0x20);
        add(&mut p, 1, 2, tracked, vec![Action::Output(1)]);
        add(&mut p, 1, 1, Match::ANY.with(Field::CtState, 0).with(Field::CtMark, 0), vec![Action::Output(2)]);
        let mut k = key_to(1);
        k.set(Field::CtState, 0x22);
        k.set(Field::CtZone, 7);
        k.set(Field::CtMark, 5);
        k.set(Field::CtLabel, 9);
        let (t, _) = p.trace(&k);
        assert_eq!(t.actions, vec![DpAction::Output(2)]);
    }

    #[test]
    fn ttl_expiry_drops_with_reason() {
        let mut p = Pipeline::new();
        add(&mut p, 0, 1, Match::ANY, vec![Action::DecTtl, Action::Output(1)]);
        let mut k = key_to(1);
        k.set(Field::NwTtl, 1);
        assert_eq!(p.translate(&k).drop, Some(DropReason::TtlExpired));
        assert!(p.translate(&k).actions.is_empty());
    }

    #[test]
    fn resubmit_loop_is_bounded() {
        let mut p = Pipeline::new();
        add(&mut p, 0, 1, Match::ANY, vec![Action::Resubmit(0), Action::Resubmit(0)]);
        assert_eq!(p.translate(&key_to(1)).drop, Some(DropReason::ResubmitLimit));
    }

    #[test]
    fn invalid_flows_are_rejected_and_change_nothing() {
        let mut p = Pipeline::new();
        let bad = [
            vec![Action::SetField { field: Field::EthType, value: 1, mask: u128::MAX }],
            vec![Action::SetField { field: Field::NwTtl, value: 300, mask: u128::MAX }],
            vec![Action::SetField { field: Field::Ipv4Src, value: 1, mask: 0xff }],
            vec![Action::GotoTable(0)],
            vec![Action::GotoTable(2), Action::Output(1)],
        ];
        for actions in bad {
            let r = p.apply(&FlowMod::AddFlow(Flow { table: 1, priority: 1, matches: Match::ANY, cookie: 0, actions }));
            assert!(r.is_err());
        }
        assert_eq!(p.flow_count(), 0);
        let e = p
            .apply(&FlowMod::AddFlow(Flow {
                table: 0,
                priority: 1,
                matches: Match::ANY,
                cookie: 0,
                actions: vec![Action::SetField { field: Field::NwProto, value: 1, mask: u128::MAX }],
            }))
            .unwrap_err();
        assert_eq!(e.to_string(), "table 0: set_field on nw_proto: field is not writable");
    }

    #[test]
    fn select_group_unwildcards_hash_fields_and_all_group_clones() {
        let mut p = Pipeline::new();
        p.apply(&FlowMod::AddGroup(Group {
            id: 1,
            kind: GroupKind::Select { fields: vec![Field::Ipv4Src] },
            buckets: vec![
                Bucket { weight: 1, actions: vec![Action::Output(1)] },
                Bucket { weight: 1, actions: vec![Action::Output(2)] },
            ],
        }))
        .unwrap();
        p.apply(&FlowMod::AddGroup(Group {
            id: 2,
            kind: GroupKind::All,
            buckets: vec![
                Bucket {
                    weight: 0,
                    actions: vec![
                        Action::SetField { field: Field::Ipv4Dst, value: 9, mask: u128::MAX },
                        Action::Output(5),
                    ],
                },
                Bucket { weight: 0, actions: vec![Action::Output(6)] },
            ],
        }))
        .unwrap();
        add(&mut p, 0, 1, Match::ANY.with(Field::Ipv4Dst, 1), vec![Action::Group(1)]);
        add(&mut p, 0, 1, Match::ANY.with(Field::Ipv4Dst, 2), vec![Action::Group(2), Action::Output(7)]);
        let mut seen = std::collections::HashSet::new();
        for src in 0..64u32 {
            let mut k = key_to(1);
            k.set(Field::Ipv4Src, src as u128);
            let t = p.translate(&k);
            assert!(FlowKey::field_mask(Field::Ipv4Src).is_subset_of(&t.wc));
            seen.insert(t.actions.clone());
        }
        assert_eq!(seen.len(), 2, "both buckets get traffic");
        let t = p.translate(&key_to(2));
        assert_eq!(
            t.actions,
            vec![
                DpAction::Clone(vec![DpAction::Set(Field::Ipv4Dst, 9), DpAction::Output(5)]),
                DpAction::Clone(vec![DpAction::Output(6)]),
                DpAction::Output(7),
            ]
        );
        p.apply(&FlowMod::DeleteGroup(1)).unwrap();
        assert_eq!(p.translate(&key_to(1)).drop, Some(DropReason::GroupMissing));
    }
}
