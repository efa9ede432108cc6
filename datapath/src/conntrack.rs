//! Connection tracking: zones, IPv4 and IPv6, a TCP state machine, UDP / ICMP echo /
//! other-protocol pseudo-connections, ICMP errors related to tracked connections, marks
//! and labels, per-state timeouts, a size limit, and NAT (source and destination, address
//! and port ranges, collision-free port allocation, automatic reversal for replies,
//! translation of the header embedded in ICMP errors).
//!
//! Connections live in a slab; a hash table indexes each by both its original and its
//! reply tuple. Expired entries are invisible to lookups at once and reclaimed by a
//! sweep that examines a bounded number of entries per call.
//!
//! Limits: the whole table and, optionally, each zone. A new connection that finds its
//! zone or the table full takes the place of the oldest connection that was never
//! assured (early drop, as Linux does): every connection starts on two lists, its zone's
//! and the table's, in commit order, and leaves them for good once it is assured (a TCP
//! handshake completed, a UDP or other reply seen), so a flood of half-open connections
//! evicts itself and never an established one. NAT examines a bounded number of
//! candidate ports per new connection.

use hashbrown::HashTable;

mod handover;
pub use handover::{HandoverError, ImportReport, Origin as HandoverOrigin};

use crate::hash;
use crate::key::{Field, FlowKey, ct_state, eth_type, ip_proto};
use crate::packet;
use crate::parse::{ABSENT, HeaderOffsets, L3};

const SEC: u64 = 1_000_000_000;

/// Timeouts by connection state, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtTimeouts {
    /// TCP: SYN seen, no reply yet.
    pub tcp_syn_sent: u64,
    /// TCP: SYN-ACK seen.
    pub tcp_syn_recv: u64,
    /// TCP: established.
    pub tcp_established: u64,
    /// TCP: a FIN seen.
    pub tcp_fin_wait: u64,
    /// TCP: both FINs acknowledged.
    pub tcp_time_wait: u64,
    /// TCP: reset.
    pub tcp_close: u64,
    /// UDP: only one direction seen.
    pub udp_first: u64,
    /// UDP: both directions seen.
    pub udp_multiple: u64,
    /// ICMP echo: request only.
    pub icmp_first: u64,
    /// ICMP echo: reply seen.
    pub icmp_reply: u64,
    /// Other protocols: one direction.
    pub other_first: u64,
    /// Other protocols: both directions.
    pub other_multiple: u64,
}

impl Default for CtTimeouts {
    /// Open vSwitch's defaults.
    fn default() -> Self {
        CtTimeouts {
            tcp_syn_sent: 30 * SEC,
            tcp_syn_recv: 30 * SEC,
            tcp_established: 24 * 3600 * SEC,
            tcp_fin_wait: 15 * SEC,
            tcp_time_wait: 45 * SEC,
            tcp_close: 30 * SEC,
            udp_first: 60 * SEC,
            udp_multiple: 30 * SEC,
            icmp_first: 60 * SEC,
            icmp_reply: 30 * SEC,
            other_first: 60 * SEC,
            other_multiple: 30 * SEC,
        }
    }
}

/// Conntrack tunables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtConfig {
    /// Maximum tracked connections; a commit beyond it evicts a connection that was never
    /// assured (with `early_drop`) or fails (`ct_table_full`).
    pub max_connections: usize,
    /// Timeouts.
    pub timeouts: CtTimeouts,
    /// Accept a TCP connection first seen mid-stream (an ACK without SYN), as Linux's
    /// `nf_conntrack_tcp_loose` does, so connections survive a restart of the tracker.
    pub tcp_loose: bool,
    /// Entries examined per [`Conntrack::sweep`] call.
    pub sweep_budget: usize,
    /// When the table or a zone is full, a new connection replaces the oldest one of it
    /// that was never assured (half-open TCP, unanswered UDP, ICMP) instead of failing.
    pub early_drop: bool,
    /// Most candidate (address, port) pairs NAT examines for one new connection before
    /// it gives up (`nat_exhausted`). A range that fits is searched whole; a larger one
    /// in runs from hashed starts (half the budget, then a quarter, ...), as Linux does.
    pub nat_attempts: u32,
}

impl CtConfig {
    /// The default [`CtConfig::nat_attempts`].
    pub const DEFAULT_NAT_ATTEMPTS: u32 = 256;
}

impl Default for CtConfig {
    fn default() -> Self {
        CtConfig {
            max_connections: 3_000_000,
            timeouts: CtTimeouts::default(),
            tcp_loose: true,
            sweep_budget: 1024,
            early_drop: true,
            nat_attempts: Self::DEFAULT_NAT_ATTEMPTS,
        }
    }
}

/// The table-wide limits of [`CtConfig`] that may change while conntrack runs (a
/// datapath process keeps its table through an agent restart; the restarted agent gives it
/// its limits again, possibly new ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtTableLimits {
    /// [`CtConfig::max_connections`] (at least 1).
    pub max_connections: usize,
    /// [`CtConfig::early_drop`].
    pub early_drop: bool,
    /// [`CtConfig::nat_attempts`] (at least 1).
    pub nat_attempts: u32,
}

impl CtTableLimits {
    /// The limits of `config`.
    pub fn of(config: &CtConfig) -> CtTableLimits {
        CtTableLimits {
            max_connections: config.max_connections,
            early_drop: config.early_drop,
            nat_attempts: config.nat_attempts,
        }
    }
}

impl Default for CtTableLimits {
    fn default() -> Self {
        CtTableLimits::of(&CtConfig::default())
    }
}

/// A zone's connection limit (`0`: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ZoneLimitScope {
    /// Every zone without a limit of its own.
    Default,
    /// One zone.
    Zone(u16),
}

/// A connection's addresses, ports, protocol and zone. IPv4 addresses are stored as
/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`). For ICMP echo both ports hold the echo id.
#[derive(Debug, Clone, Copy, Eq, Default)]
pub struct Tuple {
    /// Source address.
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// Source port / echo id.
    pub sport: u16,
    /// Destination port / echo id.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// Conntrack zone.
    pub zone: u16,
}

const V4_PREFIX: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

/// An IPv4 address as the 16-byte form tuples use.
pub fn v4(addr: u32) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..12].copy_from_slice(&V4_PREFIX);
    a[12..].copy_from_slice(&addr.to_be_bytes());
    a
}

fn is_v4(a: &[u8; 16]) -> bool {
    a[..12] == V4_PREFIX
}

fn addr_u128(a: &[u8; 16]) -> u128 {
    u128::from_be_bytes(*a)
}

/// The 64-bit table hash of a stored 32-bit tuple hash (high and low bits both mixed, as
/// the hash table uses both).
#[inline]
fn spread(h: u32) -> u64 {
    (h as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (h as u64)
}

impl PartialEq for Tuple {
    /// Word-wise: this comparison sits on the lookup path of every tracked packet.
    #[inline]
    fn eq(&self, o: &Tuple) -> bool {
        u128::from_ne_bytes(self.src) == u128::from_ne_bytes(o.src)
            && u128::from_ne_bytes(self.dst) == u128::from_ne_bytes(o.dst)
            && self.sport == o.sport
            && self.dport == o.dport
            && self.proto == o.proto
            && self.zone == o.zone
    }
}

impl Tuple {
    /// The tuple of the other direction.
    pub fn reverse(&self) -> Tuple {
        Tuple { src: self.dst, dst: self.src, sport: self.dport, dport: self.sport, proto: self.proto, zone: self.zone }
    }

    #[inline]
    fn hash32(&self) -> u32 {
        let h = self.hash();
        (h ^ (h >> 32)) as u32
    }

    #[inline]
    fn hash(&self) -> u64 {
        let s = u128::from_ne_bytes(self.src);
        let d = u128::from_ne_bytes(self.dst);
        let h = hash::mix(0, (s >> 64) as u64 ^ ((d >> 64) as u64).rotate_left(17));
        let h = hash::mix(h, s as u64);
        let h = hash::mix(h, d as u64);
        let h = hash::mix(
            h,
            (self.sport as u64) | (self.dport as u64) << 16 | (self.proto as u64) << 32 | (self.zone as u64) << 40,
        );
        hash::finish(h)
    }
}

/// An address and port range for NAT (inclusive; ports 0..0 = keep the port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NatRange {
    /// Lowest address.
    pub addr_min: [u8; 16],
    /// Highest address.
    pub addr_max: [u8; 16],
    /// Lowest port (0 with `port_max` 0: keep the original port when possible).
    pub port_min: u16,
    /// Highest port.
    pub port_max: u16,
}

impl NatRange {
    /// One IPv4 address, any port allocation that avoids collisions.
    pub fn v4(addr: u32) -> NatRange {
        NatRange { addr_min: v4(addr), addr_max: v4(addr), port_min: 0, port_max: 0 }
    }

    /// One IPv4 address and port.
    pub fn v4_port(addr: u32, port: u16) -> NatRange {
        NatRange { addr_min: v4(addr), addr_max: v4(addr), port_min: port, port_max: port }
    }
}

/// What NAT a `ct` action asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatAction {
    /// Apply the translation the connection already has (un-NAT replies, keep NATing
    /// the original direction); new connections are not translated.
    Stored,
    /// Source NAT for new connections (committed), stored translation otherwise.
    Src(NatRange),
    /// Destination NAT for new connections (committed), stored translation otherwise.
    Dst(NatRange),
}

/// What a `ct` action asks of conntrack for one packet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CtRequest<'a> {
    /// Zone.
    pub zone: u16,
    /// Create the connection if it is new (and store mark, label and NAT).
    pub commit: bool,
    /// NAT to apply, if any.
    pub nat: Option<&'a NatAction>,
    /// On commit: mark bits to set (value, mask).
    pub set_mark: Option<(u32, u32)>,
    /// On commit: label bits to set (value, mask).
    pub set_label: Option<(u128, u128)>,
}

impl<'a> CtRequest<'a> {
    /// Track only, in `zone`.
    pub fn zone(zone: u16) -> Self {
        CtRequest { zone, ..Default::default() }
    }

    /// Also commit new connections.
    pub fn commit(mut self) -> Self {
        self.commit = true;
        self
    }

    /// Also apply NAT.
    pub fn nat(mut self, nat: &'a NatAction) -> Self {
        self.nat = Some(nat);
        self
    }
}

/// Why conntrack made a packet drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtError {
    /// The table is at `max_connections` and nothing could be evicted.
    TableFull,
    /// The connection's zone is at its limit and nothing of it could be evicted.
    ZoneFull,
    /// NAT found no free address/port in the range.
    NatExhausted,
}

/// The outcome of tracking one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CtResult {
    /// `ct_state` bits.
    pub state: u8,
    /// The connection's mark (0 if none).
    pub mark: u32,
    /// The connection's label (0 if none).
    pub label: u128,
    /// Set if conntrack refused the packet.
    pub error: Option<CtError>,
    /// True if the packet belongs to (or relates to) a connection in the table.
    pub existing: bool,
}

const F_SEEN_REPLY: u8 = 1;
const F_SNAT: u8 = 2;
const F_DNAT: u8 = 4;
const F_FIN_ORIG: u8 = 8;
const F_FIN_REPLY: u8 = 16;
/// On the eviction lists: never assured yet.
const F_UNASSURED: u8 = 32;

/// No slab index (list ends).
const NIL: u32 = u32::MAX;
/// Links of the table's eviction list.
const TABLE: usize = 0;
/// Links of the zone's eviction list.
const ZONE: usize = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum State {
    TcpSynSent,
    TcpSynRecv,
    TcpEstablished,
    TcpFinWait,
    TcpTimeWait,
    TcpClosed,
    UdpFirst,
    UdpMultiple,
    IcmpFirst,
    IcmpReply,
    OtherFirst,
    OtherMultiple,
}

/// One tracked connection.
#[derive(Debug, Clone)]
pub struct Conn {
    /// The original direction as first seen (before NAT).
    pub orig: Tuple,
    /// The reply direction as it will be seen (after NAT).
    pub reply: Tuple,
    expires: u64,
    label: [u64; 2],
    /// Connection mark.
    pub mark: u32,
    state: State,
    flags: u8,
    /// (previous, next) on the table's and the zone's eviction lists, while unassured.
    links: [[u32; 2]; 2],
}

impl Conn {
    /// The connection's label.
    pub fn label(&self) -> u128 {
        ((self.label[0] as u128) << 64) | self.label[1] as u128
    }

    /// True once a packet has been seen in the reply direction.
    pub fn seen_reply(&self) -> bool {
        self.flags & F_SEEN_REPLY != 0
    }

    /// Absolute expiry time (ns).
    pub fn expires(&self) -> u64 {
        self.expires
    }

    /// True once the connection is assured (a TCP handshake completed, a UDP or other
    /// reply seen): early drop never evicts it.
    pub fn assured(&self) -> bool {
        self.flags & F_UNASSURED == 0
    }

    /// The tracking state, as `conntrack -L` names it (`SYN_SENT`, `ESTABLISHED`, ...).
    pub fn state_name(&self) -> &'static str {
        match self.state {
            State::TcpSynSent => "SYN_SENT",
            State::TcpSynRecv => "SYN_RECV",
            State::TcpEstablished => "ESTABLISHED",
            State::TcpFinWait => "FIN_WAIT",
            State::TcpTimeWait => "TIME_WAIT",
            State::TcpClosed => "CLOSE",
            State::UdpFirst | State::IcmpFirst | State::OtherFirst => "UNREPLIED",
            State::UdpMultiple | State::IcmpReply | State::OtherMultiple => "REPLIED",
        }
    }
}

/// Direction of a packet relative to its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Original direction.
    Orig,
    /// Reply direction.
    Reply,
}

/// A zone's share of the table.
#[derive(Debug, Clone, Copy)]
struct ZoneState {
    /// Connections held (including expired ones not yet swept).
    count: u32,
    /// Its eviction list: oldest unassured connection first.
    head: u32,
    tail: u32,
}

/// The connection table.
#[derive(Debug)]
pub struct Conntrack {
    config: CtConfig,
    slab: Vec<Option<Conn>>,
    free: Vec<u32>,
    /// Entries are `(32-bit tuple hash, slab index << 1 | direction)`: keeping the hash
    /// makes growing the table a sequential pass and lets lookups skip slab entries whose
    /// hash differs; the table hashes by [`spread`] of it.
    index: HashTable<(u32, u32)>,
    live: usize,
    cursor: usize,
    /// Zones holding connections.
    zones: hashbrown::HashMap<u16, ZoneState>,
    /// The table's eviction list: oldest unassured connection first.
    head: u32,
    tail: u32,
    /// Limit of every zone without its own (0: none).
    default_zone_limit: u32,
    /// Zones with a limit of their own (0: none, whatever the default).
    zone_limits: hashbrown::HashMap<u16, u32>,
    counters: CtCounters,
}

/// What the limits did, for `stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CtCounters {
    /// Connections evicted to make room for new ones (early drop).
    pub early_drops: u64,
    /// New connections refused because their zone was full.
    pub zone_full: u64,
    /// New connections refused because the table was full.
    pub table_full: u64,
    /// New connections whose NAT found no free address and port.
    pub nat_exhausted: u64,
}

/// How a packet's L4 header looks to conntrack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum L4 {
    Tcp(u16),
    Udp,
    Echo { request: bool },
    IcmpError,
    Other,
}

const TCP_FIN: u16 = 0x01;
const TCP_SYN: u16 = 0x02;
const TCP_RST: u16 = 0x04;
const TCP_ACK: u16 = 0x10;

/// A packet's tuple in `zone`, if conntrack can track it (see [`Conntrack::track`]).
pub fn packet_tuple_of(key: &FlowKey, frame: &[u8], offs: &HeaderOffsets, zone: u16) -> Option<Tuple> {
    packet_tuple(key, frame, offs, zone).map(|(t, _)| t)
}

/// Extracts a packet's tuple in `zone`. `None`: not trackable (not IP, a fragment, a
/// truncated L4 header, or an ICMP type that is neither echo nor error).
fn packet_tuple(key: &FlowKey, frame: &[u8], offs: &HeaderOffsets, zone: u16) -> Option<(Tuple, L4)> {
    let (src, dst) = match offs.l3_kind {
        L3::Ipv4 => (v4(key.get(Field::Ipv4Src) as u32), v4(key.get(Field::Ipv4Dst) as u32)),
        L3::Ipv6 => ((key.get(Field::Ipv6Src)).to_be_bytes(), (key.get(Field::Ipv6Dst)).to_be_bytes()),
        _ => return None,
    };
    let proto = key.get(Field::NwProto) as u8;
    let mut t = Tuple { src, dst, sport: 0, dport: 0, proto, zone };
    let l4 = match proto {
        ip_proto::TCP | ip_proto::UDP | ip_proto::SCTP | ip_proto::ICMP | ip_proto::ICMPV6 if offs.l4 == ABSENT => {
            return None;
        }
        ip_proto::TCP => {
            t.sport = key.get(Field::TpSrc) as u16;
            t.dport = key.get(Field::TpDst) as u16;
            L4::Tcp(key.get(Field::TcpFlags) as u16)
        }
        ip_proto::UDP | ip_proto::SCTP => {
            t.sport = key.get(Field::TpSrc) as u16;
            t.dport = key.get(Field::TpDst) as u16;
            L4::Udp
        }
        ip_proto::ICMP | ip_proto::ICMPV6 => {
            let ty = key.get(Field::IcmpType) as u8;
            let v6 = proto == ip_proto::ICMPV6;
            match (v6, ty) {
                (false, 8) | (true, 128) | (false, 0) | (true, 129) => {
                    let at = offs.l4 as usize + 4;
                    let id = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
                    t.sport = id;
                    t.dport = id;
                    L4::Echo { request: ty == 8 || ty == 128 }
                }
                (false, 3 | 4 | 5 | 11 | 12) | (true, 1..=4) => L4::IcmpError,
                _ => return None,
            }
        }
        _ => L4::Other,
    };
    Some((t, l4))
}

impl Conntrack {
    /// An empty table.
    pub fn new(config: CtConfig) -> Self {
        Conntrack {
            config,
            slab: Vec::new(),
            free: Vec::new(),
            index: HashTable::new(),
            live: 0,
            cursor: 0,
            zones: hashbrown::HashMap::new(),
            head: NIL,
            tail: NIL,
            default_zone_limit: 0,
            zone_limits: hashbrown::HashMap::new(),
            counters: CtCounters::default(),
        }
    }

    /// Sets a zone's limit, or the default of every zone without its own (0: none); the
    /// connections a zone holds beyond a lowered limit stay until they end.
    pub fn set_zone_limit(&mut self, scope: ZoneLimitScope, limit: u32) {
        match scope {
            ZoneLimitScope::Default => self.default_zone_limit = limit,
            ZoneLimitScope::Zone(z) => {
                self.zone_limits.insert(z, limit);
            }
        }
    }

    /// Forgets a zone's own limit (the default applies again), or the default.
    pub fn clear_zone_limit(&mut self, scope: ZoneLimitScope) {
        match scope {
            ZoneLimitScope::Default => self.default_zone_limit = 0,
            ZoneLimitScope::Zone(z) => {
                self.zone_limits.remove(&z);
            }
        }
    }

    /// The limit that applies to `zone`, if any.
    pub fn zone_limit(&self, zone: u16) -> Option<u32> {
        let limit = self.zone_limits.get(&zone).copied().unwrap_or(self.default_zone_limit);
        (limit != 0).then_some(limit)
    }

    /// Connections `zone` holds (including expired ones not yet swept).
    pub fn zone_len(&self, zone: u16) -> usize {
        self.zones.get(&zone).map_or(0, |z| z.count as usize)
    }

    /// What the limits did so far.
    pub fn counters(&self) -> CtCounters {
        self.counters
    }

    /// Replaces the table-wide limits. The connections held beyond a lowered
    /// `max_connections` stay until they end; new ones wait for room (early drop) or are
    /// refused, as in a full table.
    pub fn set_table_limits(&mut self, limits: CtTableLimits) {
        self.config.max_connections = limits.max_connections.max(1);
        self.config.early_drop = limits.early_drop;
        self.config.nat_attempts = limits.nat_attempts.max(1);
    }

    /// The configuration.
    pub fn config(&self) -> &CtConfig {
        &self.config
    }

    /// Connections held (including expired ones not yet swept).
    pub fn len(&self) -> usize {
        self.live
    }

    /// True if no connection is held.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Every live connection.
    pub fn connections(&self, now: u64) -> impl Iterator<Item = &Conn> {
        self.slab.iter().flatten().filter(move |c| c.expires > now)
    }

    /// Finds the live connection with `t` as its original or reply tuple.
    pub fn find(&mut self, t: &Tuple, now: u64) -> Option<(u32, Dir)> {
        let h = t.hash32();
        let slab = &self.slab;
        let &(_, found) = self.index.find(spread(h), |&(eh, e)| {
            eh == h && {
                let c = slab[(e >> 1) as usize].as_ref().expect("indexed entries are live");
                (if e & 1 == 0 { &c.orig } else { &c.reply }) == t
            }
        })?;
        let (idx, dir) = (found >> 1, if found & 1 == 0 { Dir::Orig } else { Dir::Reply });
        if self.slab[idx as usize].as_ref().is_some_and(|c| c.expires <= now) {
            self.remove(idx);
            return None;
        }
        Some((idx, dir))
    }

    /// The connection in slot `idx`.
    pub fn conn(&self, idx: u32) -> Option<&Conn> {
        self.slab.get(idx as usize).and_then(|c| c.as_ref())
    }

    fn remove(&mut self, idx: u32) {
        if self.slab[idx as usize].as_ref().is_some_and(|c| !c.assured()) {
            self.unlink(idx);
        }
        let Some(c) = self.slab[idx as usize].take() else { return };
        let zone = c.orig.zone;
        if let hashbrown::hash_map::Entry::Occupied(mut z) = self.zones.entry(zone) {
            z.get_mut().count -= 1;
            if z.get().count == 0 {
                z.remove();
            }
        }
        for (dir, t) in [(0u32, &c.orig), (1, &c.reply)] {
            let e = idx << 1 | dir;
            if let Ok(o) = self.index.find_entry(spread(t.hash32()), |&(_, x)| x == e) {
                o.remove();
            }
        }
        self.free.push(idx);
        self.live -= 1;
    }

    /// Makes room for a new connection in `zone`: within the zone's limit, then within
    /// the table's (expired entries first), evicting the oldest unassured connection of
    /// the zone, then of the table, when early drop is on.
    fn make_room(&mut self, zone: u16, now: u64) -> Result<(), CtError> {
        if let Some(limit) = self.zone_limit(zone)
            && self.zone_len(zone) >= limit as usize
        {
            let head = self.zones.get(&zone).map_or(NIL, |z| z.head);
            if !(self.config.early_drop && self.evict(head, now)) {
                self.counters.zone_full += 1;
                return Err(CtError::ZoneFull);
            }
        }
        if self.live >= self.config.max_connections {
            // Make room from expired entries first.
            self.sweep(now, self.config.sweep_budget);
            if self.live >= self.config.max_connections && !(self.config.early_drop && self.evict(self.head, now)) {
                self.counters.table_full += 1;
                return Err(CtError::TableFull);
            }
        }
        Ok(())
    }

    /// Removes the connection at `idx` (the head of an eviction list) to make room;
    /// false if there is none.
    fn evict(&mut self, idx: u32, now: u64) -> bool {
        let Some(c) = self.slab.get(idx as usize).and_then(Option::as_ref) else { return false };
        if c.expires > now {
            self.counters.early_drops += 1;
        }
        self.remove(idx);
        true
    }

    /// Appends the new connection at `idx` to the tail of the table's and its zone's
    /// eviction lists.
    fn link(&mut self, idx: u32, zone: u16) {
        let z = self.zones.entry(zone).or_insert(ZoneState { count: 0, head: NIL, tail: NIL });
        z.count += 1;
        let zone_tail = std::mem::replace(&mut z.tail, idx);
        if zone_tail == NIL {
            z.head = idx;
        }
        let table_tail = std::mem::replace(&mut self.tail, idx);
        if table_tail == NIL {
            self.head = idx;
        }
        if let Some(c) = self.slab[idx as usize].as_mut() {
            c.links = [[table_tail, NIL], [zone_tail, NIL]];
        }
        if zone_tail != NIL
            && let Some(c) = self.slab[zone_tail as usize].as_mut()
        {
            c.links[ZONE][1] = idx;
        }
        if table_tail != NIL
            && let Some(c) = self.slab[table_tail as usize].as_mut()
        {
            c.links[TABLE][1] = idx;
        }
    }

    /// Takes the connection at `idx` off both eviction lists (it is assured, or going).
    fn unlink(&mut self, idx: u32) {
        let Some(c) = self.slab[idx as usize].as_mut() else { return };
        c.flags &= !F_UNASSURED;
        let (links, zone) = (c.links, c.orig.zone);
        for (list, [prev, next]) in links.into_iter().enumerate() {
            match prev {
                NIL if list == TABLE => self.head = next,
                NIL => {
                    if let Some(z) = self.zones.get_mut(&zone) {
                        z.head = next;
                    }
                }
                p => {
                    if let Some(pc) = self.slab[p as usize].as_mut() {
                        pc.links[list][1] = next;
                    }
                }
            }
            match next {
                NIL if list == TABLE => self.tail = prev,
                NIL => {
                    if let Some(z) = self.zones.get_mut(&zone) {
                        z.tail = prev;
                    }
                }
                n => {
                    if let Some(nc) = self.slab[n as usize].as_mut() {
                        nc.links[list][0] = prev;
                    }
                }
            }
        }
    }

    fn insert(&mut self, mut c: Conn, now: u64) -> Option<u32> {
        if self.live >= self.config.max_connections {
            // `make_room` ran first; only a table without early drop gets here full.
            self.sweep(now, self.config.sweep_budget);
            if self.live >= self.config.max_connections {
                return None;
            }
        }
        c.flags |= F_UNASSURED;
        let zone = c.orig.zone;
        let (h_orig, h_reply) = (c.orig.hash32(), c.reply.hash32());
        let idx = match self.free.pop() {
            Some(i) => {
                self.slab[i as usize] = Some(c);
                i
            }
            None => {
                self.slab.push(Some(c));
                (self.slab.len() - 1) as u32
            }
        };
        self.index.insert_unique(spread(h_orig), (h_orig, idx << 1), |&(h, _)| spread(h));
        self.index.insert_unique(spread(h_reply), (h_reply, idx << 1 | 1), |&(h, _)| spread(h));
        self.live += 1;
        self.link(idx, zone);
        Some(idx)
    }

    /// Removes expired connections, examining at most `budget` slots. Returns how many
    /// were removed.
    pub fn sweep(&mut self, now: u64, budget: usize) -> usize {
        let mut removed = 0;
        let n = self.slab.len();
        if n == 0 {
            return 0;
        }
        for _ in 0..budget.min(n) {
            let i = self.cursor % n;
            self.cursor = i + 1;
            if self.slab[i].as_ref().is_some_and(|c| c.expires <= now) {
                self.remove(i as u32);
                removed += 1;
            }
        }
        removed
    }

    /// Removes every connection for which `f` holds; returns how many.
    pub fn remove_where(&mut self, mut f: impl FnMut(&Conn) -> bool) -> usize {
        let victims: Vec<u32> = self
            .slab
            .iter()
            .enumerate()
            .filter(|(_, c)| c.as_ref().is_some_and(&mut f))
            .map(|(i, _)| i as u32)
            .collect();
        for &i in &victims {
            self.remove(i);
        }
        victims.len()
    }

    fn timeout(&self, s: State) -> u64 {
        let t = &self.config.timeouts;
        match s {
            State::TcpSynSent => t.tcp_syn_sent,
            State::TcpSynRecv => t.tcp_syn_recv,
            State::TcpEstablished => t.tcp_established,
            State::TcpFinWait => t.tcp_fin_wait,
            State::TcpTimeWait => t.tcp_time_wait,
            State::TcpClosed => t.tcp_close,
            State::UdpFirst => t.udp_first,
            State::UdpMultiple => t.udp_multiple,
            State::IcmpFirst => t.icmp_first,
            State::IcmpReply => t.icmp_reply,
            State::OtherFirst => t.other_first,
            State::OtherMultiple => t.other_multiple,
        }
    }

    /// Tracks one packet as `req` asks: finds its connection (or relates an ICMP error to
    /// one), advances the state machine, commits a new connection if asked, applies NAT
    /// if asked, and sets mark/label on commit. Rewrites `frame` for NAT; `key` must be
    /// the packet's parsed key and is not modified.
    pub fn track(
        &mut self,
        frame: &mut [u8],
        offs: &HeaderOffsets,
        key: &FlowKey,
        req: &CtRequest<'_>,
        now: u64,
    ) -> CtResult {
        let (zone, commit, nat) = (req.zone, req.commit, req.nat);
        let Some((tuple, l4)) = packet_tuple(key, frame, offs, zone) else {
            return CtResult { state: ct_state::TRK | ct_state::INV, ..Default::default() };
        };
        if l4 == L4::IcmpError {
            return self.track_related(frame, offs, zone, nat.is_some(), now);
        }
        // A packet a NAT of this zone already translated, committed again (a NetworkPolicy
        // verdict committing a load-balanced connection after `ct_lb`), is its
        // connection's original direction under the translated tuple: the reverse of the
        // reply tuple. Open vSwitch keeps that association on the packet; here the lookup
        // finds it.
        // Only a commit after a NAT in this zone needs it (the key says what the last `ct`
        // did), so other lookups that miss cost no second probe.
        let nat_here = key.get(crate::key::Field::CtZone) == u128::from(zone)
            && key.get(crate::key::Field::CtState) as u8 & (ct_state::SNAT | ct_state::DNAT) != 0;
        let mut translated = false;
        let found = self.find(&tuple, now).or_else(|| {
            if !(commit && nat_here) {
                return None;
            }
            let (idx, dir) = self.find(&tuple.reverse(), now)?;
            let c = self.slab[idx as usize].as_ref()?;
            (dir == Dir::Reply && c.flags & (F_SNAT | F_DNAT) != 0).then(|| {
                translated = true;
                (idx, Dir::Orig)
            })
        });
        let (idx, dir) = match found {
            Some((idx, dir)) => {
                let reopen = {
                    let c = self.slab[idx as usize].as_ref().expect("found entries are live");
                    dir == Dir::Orig
                        && matches!(l4, L4::Tcp(f) if f & (TCP_SYN | TCP_ACK) == TCP_SYN)
                        && matches!(c.state, State::TcpTimeWait | State::TcpClosed)
                };
                if reopen {
                    // A new SYN on a finished connection starts a new connection.
                    self.remove(idx);
                    return self.track_new(frame, offs, tuple, l4, req, now);
                }
                (idx, dir)
            }
            None => return self.track_new(frame, offs, tuple, l4, req, now),
        };
        let timeouts_state;
        let mut state_bits = ct_state::TRK;
        {
            let c = self.slab[idx as usize].as_mut().expect("found entries are live");
            let valid = advance(c, dir, l4);
            if !valid {
                return CtResult {
                    state: ct_state::TRK | ct_state::INV,
                    mark: c.mark,
                    label: c.label(),
                    error: None,
                    existing: true,
                };
            }
            if dir == Dir::Reply {
                c.flags |= F_SEEN_REPLY;
                state_bits |= ct_state::RPL;
            }
            state_bits |= if c.seen_reply() { ct_state::EST } else { ct_state::NEW };
            if commit {
                apply_mark_label(c, req.set_mark, req.set_label);
            }
            timeouts_state = c.state;
        }
        if !self.slab[idx as usize].as_ref().is_some_and(Conn::assured) && assured_state(timeouts_state) {
            self.unlink(idx);
        }
        let to = self.timeout(timeouts_state);
        let c = self.slab[idx as usize].as_mut().expect("found entries are live");
        c.expires = now + to;
        if nat.is_some() && !translated {
            apply_nat(frame, offs, c, dir);
        }
        if nat.is_some() || translated {
            state_bits |= nat_state(c.flags, dir);
        }
        CtResult { state: state_bits, mark: c.mark, label: c.label(), error: None, existing: true }
    }

    fn track_new(
        &mut self,
        frame: &mut [u8],
        offs: &HeaderOffsets,
        tuple: Tuple,
        l4: L4,
        req: &CtRequest<'_>,
        now: u64,
    ) -> CtResult {
        let (commit, nat) = (req.commit, req.nat);
        let state = match l4 {
            L4::Tcp(f) => {
                if !tcp_flags_sane(f) {
                    return CtResult { state: ct_state::TRK | ct_state::INV, ..Default::default() };
                }
                if f & (TCP_SYN | TCP_ACK) == TCP_SYN {
                    State::TcpSynSent
                } else if self.config.tcp_loose && f & (TCP_SYN | TCP_RST | TCP_FIN) == 0 && f & TCP_ACK != 0 {
                    State::TcpEstablished
                } else {
                    return CtResult { state: ct_state::TRK | ct_state::INV, ..Default::default() };
                }
            }
            L4::Udp => State::UdpFirst,
            L4::Echo { request: true } => State::IcmpFirst,
            // An echo reply with no request on record.
            L4::Echo { request: false } | L4::IcmpError => {
                return CtResult { state: ct_state::TRK | ct_state::INV, ..Default::default() };
            }
            L4::Other => State::OtherFirst,
        };
        let mut bits = ct_state::TRK | ct_state::NEW;
        if !commit {
            return CtResult { state: bits, ..Default::default() };
        }
        if let Err(e) = self.make_room(tuple.zone, now) {
            return CtResult { state: bits, error: Some(e), ..Default::default() };
        }
        let mut c = Conn {
            orig: tuple,
            reply: tuple.reverse(),
            expires: now + self.timeout(state),
            label: [0, 0],
            mark: 0,
            state,
            flags: 0,
            links: [[NIL; 2]; 2],
        };
        if let Some(n) = nat {
            let allocated = match n {
                NatAction::Stored => true,
                NatAction::Src(r) => self.allocate(&mut c, r, true, now),
                NatAction::Dst(r) => self.allocate(&mut c, r, false, now),
            };
            if !allocated {
                self.counters.nat_exhausted += 1;
                return CtResult { state: bits, error: Some(CtError::NatExhausted), ..Default::default() };
            }
        }
        apply_mark_label(&mut c, req.set_mark, req.set_label);
        let (mark, label) = (c.mark, c.label());
        let snapshot = c.clone();
        if self.insert(c, now).is_none() {
            return CtResult { state: bits, error: Some(CtError::TableFull), ..Default::default() };
        }
        if nat.is_some() {
            apply_nat(frame, offs, &snapshot, Dir::Orig);
            bits |= nat_state(snapshot.flags, Dir::Orig);
        }
        CtResult { state: bits, mark, label, error: None, existing: true }
    }

    /// Picks a translated address/port in `r` whose reply tuple is free, and records it.
    ///
    /// The address is chosen by a hash of the original tuple. Ports: with a port range,
    /// the range from a hashed start; without one, the original port first. If those
    /// clash (or a destination NAT's port clashes) and the NAT was not given an explicit
    /// source port range, the source port moves into the ephemeral range instead — the
    /// implicit source NAT Linux also does. At most `nat_attempts` candidates are
    /// examined in all ([`probe_offsets`]), so a full range costs a bounded search.
    fn allocate(&mut self, c: &mut Conn, r: &NatRange, src: bool, now: u64) -> bool {
        let (amin, amax) = (addr_u128(&r.addr_min), addr_u128(&r.addr_max));
        if amin > amax || is_v4(&r.addr_min) != is_v4(&c.orig.src) || is_v4(&r.addr_max) != is_v4(&c.orig.src) {
            return false;
        }
        let h = c.orig.hash();
        let n_addr = (amax - amin).min(u64::MAX as u128 - 1) as u64 + 1;
        let addr = (amin + (h % n_addr) as u128).to_be_bytes();
        let icmp = matches!(c.orig.proto, ip_proto::ICMP | ip_proto::ICMPV6);
        let has_ports = icmp || matches!(c.orig.proto, ip_proto::TCP | ip_proto::UDP | ip_proto::SCTP);
        let mut base = c.orig;
        if src {
            base.src = addr;
        } else {
            base.dst = addr;
        }
        let set_port = |t: &mut Tuple, port: u16, source: bool| {
            if icmp {
                t.sport = port;
                t.dport = port;
            } else if source {
                t.sport = port;
            } else {
                t.dport = port;
            }
        };
        let ports_given = !(r.port_min == 0 && r.port_max == 0);
        let (lo, hi) = if ports_given {
            (r.port_min.min(r.port_max), r.port_max.max(r.port_min))
        } else {
            let p = if src || icmp { c.orig.sport } else { c.orig.dport };
            (p, p)
        };
        let mut candidate = |t: Tuple, this: &mut Self| -> bool {
            let reply = t.reverse();
            if this.find(&reply, now).is_none() {
                c.reply = reply;
                c.flags |= if src { F_SNAT } else { F_DNAT };
                if !src && t.sport != c.orig.sport {
                    c.flags |= F_SNAT;
                }
                true
            } else {
                false
            }
        };
        if !has_ports {
            return candidate(base, self);
        }
        // Candidates, lazily: the range (or the original port) from a hashed start, then,
        // unless the NAT is a source NAT with its own port range, source ports from the
        // ephemeral range — within one budget.
        let budget = u64::from(self.config.nat_attempts.max(1));
        let span = (hi - lo) as u64 + 1;
        let first = if ports_given { h.rotate_left(20) % span } else { 0 };
        let mut tried = 0;
        for offset in probe_offsets(span, first, h, budget) {
            tried += 1;
            let mut t = base;
            set_port(&mut t, lo + offset as u16, src);
            if candidate(t, self) {
                return true;
            }
        }
        if src && ports_given {
            return false;
        }
        const EPHEMERAL: u64 = 64512;
        for offset in probe_offsets(EPHEMERAL, h.rotate_left(40) % EPHEMERAL, h.rotate_left(7), budget - tried) {
            let mut t = base;
            // Keep the NATed destination port, move the source port.
            if ports_given && !src {
                set_port(&mut t, lo, false);
            }
            set_port(&mut t, 1024 + offset as u16, true);
            if candidate(t, self) {
                return true;
            }
        }
        false
    }

    /// Tracks an ICMP error: relates it to the connection of the packet it quotes and,
    /// with NAT, translates both the outer header and the quoted one.
    fn track_related(&mut self, frame: &mut [u8], offs: &HeaderOffsets, zone: u16, nat: bool, now: u64) -> CtResult {
        let inv = CtResult { state: ct_state::TRK | ct_state::INV, ..Default::default() };
        let l4 = offs.l4 as usize;
        let inner_at = l4 + 8;
        let Some(inner) = frame.get(inner_at..) else { return inv };
        let v6 = offs.l3_kind == L3::Ipv6;
        let Some(q) = quoted_tuple(inner, v6, zone) else { return inv };
        // The quoted packet travelled towards the error's sender, as the other side saw
        // it (translated); the error travels the opposite way, so the reverse of the
        // quoted tuple is a tuple of the connection in the error's own direction.
        let Some((idx, dir)) = self.find(&q.reverse(), now) else { return inv };
        let c = self.slab[idx as usize].as_ref().expect("found entries are live").clone();
        let mut bits = ct_state::TRK | ct_state::REL;
        if dir == Dir::Reply {
            bits |= ct_state::RPL;
        }
        if nat && c.flags & (F_SNAT | F_DNAT) != 0 {
            translate_icmp_error(frame, offs, &c, dir, v6);
            bits |= nat_state(c.flags, dir);
        }
        CtResult { state: bits, mark: c.mark, label: c.label(), error: None, existing: true }
    }
}

/// The `ct_state` NAT bits of a packet of `c` travelling in `dir` whose translation was
/// applied: what was rewritten in this packet, as Open vSwitch reports it — the original
/// direction carries the connection's own NAT kinds, the reply direction their reverse
/// (un-doing a source NAT rewrites the reply's destination).
fn nat_state(flags: u8, dir: Dir) -> u8 {
    let (snat, dnat) = (flags & F_SNAT != 0, flags & F_DNAT != 0);
    let (src_rewritten, dst_rewritten) = match dir {
        Dir::Orig => (snat, dnat),
        Dir::Reply => (dnat, snat),
    };
    (if src_rewritten { ct_state::SNAT } else { 0 }) | (if dst_rewritten { ct_state::DNAT } else { 0 })
}

/// True for states that assure a connection: a completed TCP handshake (and what
/// follows it), a reply to UDP or another protocol. ICMP echo never is.
fn assured_state(s: State) -> bool {
    matches!(
        s,
        State::TcpEstablished | State::TcpFinWait | State::TcpTimeWait | State::UdpMultiple | State::OtherMultiple
    )
}

/// The offsets into a span of `span` candidates to examine, at most `budget` of them:
/// all of them from `first` when the span fits in the budget; otherwise runs of
/// consecutive offsets, the first from `first` and each later one from a start hashed
/// from `h`, half the budget long, then a quarter, ... (at least 8), until the budget is
/// spent — a nearly full range is sampled in several places rather than scanned whole,
/// as Linux's `nf_nat_l4proto_unique_tuple` does.
fn probe_offsets(span: u64, first: u64, h: u64, budget: u64) -> impl Iterator<Item = u64> {
    let whole = span <= budget;
    let mut left = if whole { span } else { budget };
    let mut run_len = if whole { span } else { (budget / 2).max(8) };
    let (mut start, mut at, mut round) = (first % span.max(1), 0u64, 0u32);
    std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        if at == run_len {
            round += 1;
            start = hash::finish(hash::mix(h, u64::from(round))) % span;
            at = 0;
            run_len = (run_len / 2).max(8);
        }
        let offset = (start + at) % span;
        at += 1;
        left -= 1;
        Some(offset)
    })
}

fn apply_mark_label(c: &mut Conn, set_mark: Option<(u32, u32)>, set_label: Option<(u128, u128)>) {
    if let Some((v, m)) = set_mark {
        c.mark = (c.mark & !m) | (v & m);
    }
    if let Some((v, m)) = set_label {
        let l = (c.label() & !m) | (v & m);
        c.label = [(l >> 64) as u64, l as u64];
    }
}

fn tcp_flags_sane(f: u16) -> bool {
    let syn = f & TCP_SYN != 0;
    !(f & (TCP_SYN | TCP_FIN | TCP_RST | TCP_ACK) == 0
        || syn && f & TCP_FIN != 0
        || syn && f & TCP_RST != 0
        || f & TCP_FIN != 0 && f & TCP_ACK == 0)
}

/// Advances a connection's state for a packet; false if the packet does not fit.
fn advance(c: &mut Conn, dir: Dir, l4: L4) -> bool {
    match l4 {
        L4::Tcp(f) => {
            if !tcp_flags_sane(f) {
                return false;
            }
            let syn = f & TCP_SYN != 0;
            let ack = f & TCP_ACK != 0;
            if f & TCP_RST != 0 {
                c.state = State::TcpClosed;
                return true;
            }
            match (c.state, dir) {
                (State::TcpSynSent, Dir::Orig) => syn && !ack,
                (State::TcpSynSent, Dir::Reply) if syn && ack => {
                    c.state = State::TcpSynRecv;
                    true
                }
                (State::TcpSynSent, Dir::Reply) => false,
                (State::TcpSynRecv, Dir::Orig) => {
                    if syn {
                        return !ack;
                    }
                    c.state = if f & TCP_FIN != 0 { State::TcpFinWait } else { State::TcpEstablished };
                    if f & TCP_FIN != 0 {
                        c.flags |= F_FIN_ORIG;
                    }
                    true
                }
                // A retransmitted SYN-ACK, or anything without SYN.
                (State::TcpSynRecv, Dir::Reply) => ack || !syn,
                (State::TcpEstablished | State::TcpFinWait, _) => {
                    if syn {
                        return false;
                    }
                    if f & TCP_FIN != 0 {
                        c.flags |= if dir == Dir::Orig { F_FIN_ORIG } else { F_FIN_REPLY };
                        c.state = State::TcpFinWait;
                    } else if c.state == State::TcpFinWait && c.flags & F_FIN_ORIG != 0 && c.flags & F_FIN_REPLY != 0 {
                        c.state = State::TcpTimeWait;
                    }
                    true
                }
                (State::TcpTimeWait | State::TcpClosed, _) => !syn,
                _ => false,
            }
        }
        L4::Udp => {
            if dir == Dir::Reply || c.seen_reply() {
                c.state = State::UdpMultiple;
            }
            true
        }
        L4::Echo { request } => {
            // Requests go in the original direction, replies in the reply direction.
            if request != (dir == Dir::Orig) {
                return false;
            }
            if dir == Dir::Reply {
                c.state = State::IcmpReply;
            }
            true
        }
        L4::Other => {
            if dir == Dir::Reply || c.seen_reply() {
                c.state = State::OtherMultiple;
            }
            true
        }
        L4::IcmpError => false,
    }
}

/// Rewrites a packet of `c` travelling in `dir` so that the original direction carries
/// the translated addresses and the reply direction the original ones.
fn apply_nat(frame: &mut [u8], offs: &HeaderOffsets, c: &Conn, dir: Dir) {
    if c.flags & (F_SNAT | F_DNAT) == 0 {
        return;
    }
    let v6 = offs.l3_kind == L3::Ipv6;
    // What the packet should carry after translation, in its own direction.
    let want = match dir {
        Dir::Orig => c.reply.reverse(),
        Dir::Reply => c.orig.reverse(),
    };
    let (fsrc, fdst) = if v6 { (Field::Ipv6Src, Field::Ipv6Dst) } else { (Field::Ipv4Src, Field::Ipv4Dst) };
    let addr = |a: &[u8; 16]| if v6 { addr_u128(a) } else { u32::from_be_bytes([a[12], a[13], a[14], a[15]]) as u128 };
    packet::write_field(frame, offs, fsrc, addr(&want.src));
    packet::write_field(frame, offs, fdst, addr(&want.dst));
    match want.proto {
        ip_proto::TCP | ip_proto::UDP | ip_proto::SCTP => {
            packet::write_field(frame, offs, Field::TpSrc, want.sport as u128);
            packet::write_field(frame, offs, Field::TpDst, want.dport as u128);
        }
        ip_proto::ICMP | ip_proto::ICMPV6 if offs.l4 != ABSENT => {
            packet::set_icmp_echo_id(frame, offs, want.sport);
        }
        _ => {}
    }
}

/// The tuple of the packet quoted in an ICMP error (its own direction), if complete
/// enough: IP header plus the first 8 bytes of L4.
fn quoted_tuple(inner: &[u8], v6: bool, zone: u16) -> Option<Tuple> {
    let (src, dst, proto, l4) = if !v6 {
        let h = inner.get(..20)?;
        if h[0] >> 4 != 4 {
            return None;
        }
        let ihl = ((h[0] & 0xf) as usize) * 4;
        (
            v4(u32::from_be_bytes([h[12], h[13], h[14], h[15]])),
            v4(u32::from_be_bytes([h[16], h[17], h[18], h[19]])),
            h[9],
            ihl,
        )
    } else {
        let h = inner.get(..40)?;
        if h[0] >> 4 != 6 {
            return None;
        }
        (h[8..24].try_into().ok()?, h[24..40].try_into().ok()?, h[6], 40)
    };
    let p = inner.get(l4..l4 + 8)?;
    let mut t = Tuple { src, dst, sport: 0, dport: 0, proto, zone };
    match proto {
        ip_proto::TCP | ip_proto::UDP | ip_proto::SCTP => {
            t.sport = u16::from_be_bytes([p[0], p[1]]);
            t.dport = u16::from_be_bytes([p[2], p[3]]);
        }
        ip_proto::ICMP | ip_proto::ICMPV6 => {
            let id = u16::from_be_bytes([p[4], p[5]]);
            t.sport = id;
            t.dport = id;
        }
        _ => {}
    }
    Some(t)
}

/// Translates an ICMP error travelling in `dir` for NATed connection `c`: the outer
/// destination (or source) and the quoted packet, then recomputes the ICMP checksum.
fn translate_icmp_error(frame: &mut [u8], offs: &HeaderOffsets, c: &Conn, dir: Dir, v6: bool) {
    // The quoted packet travelled opposite to the error: it carries, as its own
    // addresses, what a packet in the other direction carries after translation.
    let (want_outer, want_quoted) = match dir {
        Dir::Reply => (c.orig.reverse(), c.orig),
        Dir::Orig => (c.reply.reverse(), c.reply),
    };
    let addr = |a: &[u8; 16]| if v6 { addr_u128(a) } else { u32::from_be_bytes([a[12], a[13], a[14], a[15]]) as u128 };
    // Outer header: only the endpoint that is ours changes (the error's sender, a router
    // on the path, keeps its address).
    let (fsrc, fdst) = if v6 { (Field::Ipv6Src, Field::Ipv6Dst) } else { (Field::Ipv4Src, Field::Ipv4Dst) };
    packet::write_field(frame, offs, fdst, addr(&want_outer.dst));
    // Quoted packet: rewrite its addresses and ports in place, fixing its IP checksum.
    let inner_at = offs.l4 as usize + 8;
    let end = frame.len();
    let inner = &mut frame[inner_at..end];
    let mut ikey = FlowKey::ZERO;
    let mut pseudo = [0u8; 14];
    pseudo[12..14].copy_from_slice(&(if v6 { eth_type::IPV6 } else { eth_type::IPV4 }).to_be_bytes());
    let mut buf = pseudo.to_vec();
    buf.extend_from_slice(inner);
    let mut ioffs = crate::parse::parse_frame(&buf, &mut ikey);
    if ioffs.l4 == ABSENT {
        // The quoted L4 header is only 8 bytes: locate it by hand for ports.
        let ihl = if v6 { 40 } else { ((buf[14] & 0xf) as usize) * 4 };
        ioffs.l4 = (14 + ihl) as u16;
        ioffs.l4_proto = want_quoted.proto;
    }
    if buf.len() >= ioffs.l3 as usize + if v6 { 40 } else { 20 } {
        let o = HeaderOffsets { l4: ABSENT, ..ioffs };
        packet::write_field(&mut buf, &o, fsrc, addr(&want_quoted.src));
        packet::write_field(&mut buf, &o, fdst, addr(&want_quoted.dst));
        let p = ioffs.l4 as usize;
        if buf.len() >= p + 8 {
            match want_quoted.proto {
                ip_proto::TCP | ip_proto::UDP | ip_proto::SCTP => {
                    buf[p..p + 2].copy_from_slice(&want_quoted.sport.to_be_bytes());
                    buf[p + 2..p + 4].copy_from_slice(&want_quoted.dport.to_be_bytes());
                }
                ip_proto::ICMP | ip_proto::ICMPV6 => {
                    buf[p + 4..p + 6].copy_from_slice(&want_quoted.sport.to_be_bytes())
                }
                _ => {}
            }
        }
    }
    inner.copy_from_slice(&buf[14..]);
    packet::recompute_icmp_checksum(frame, offs);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_frame;
    use crate::parse::tests::ipv4_frame;

    const A: u32 = 0x0af4_0105;
    pub(super) const B: u32 = 0x0af4_0206;
    pub(super) const VIP: u32 = 0x0a60_0001;
    const NODE: u32 = 0xc000_020b;

    fn tcp(src: u32, dst: u32, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let mut f = ipv4_frame(ip_proto::TCP, src, dst, sport, dport, b"");
        f[34 + 13] = flags;
        packet::fill_checksums(&mut f);
        f
    }

    fn track(ct: &mut Conntrack, f: &mut [u8], commit: bool, nat: Option<NatAction>, now: u64) -> CtResult {
        let mut key = FlowKey::ZERO;
        let offs = parse_frame(f, &mut key);
        let mut req = CtRequest::zone(1);
        req.commit = commit;
        req.nat = nat.as_ref();
        ct.track(f, &offs, &key, &req, now)
    }

    use crate::parse::tests::l4_addrs as fields;

    #[test]
    fn tcp_handshake_states() {
        let mut ct = Conntrack::new(CtConfig::default());
        let s = track(&mut ct, &mut tcp(A, B, 1000, 80, 0x02), false, None, 0);
        assert_eq!(s.state, ct_state::TRK | ct_state::NEW);
        assert!(ct.is_empty(), "no commit, no entry");
        let s = track(&mut ct, &mut tcp(A, B, 1000, 80, 0x02), true, None, 0);
        assert_eq!(s.state, ct_state::TRK | ct_state::NEW);
        let s = track(&mut ct, &mut tcp(B, A, 80, 1000, 0x12), false, None, 1);
        assert_eq!(s.state, ct_state::TRK | ct_state::EST | ct_state::RPL);
        let s = track(&mut ct, &mut tcp(A, B, 1000, 80, 0x10), false, None, 2);
        assert_eq!(s.state, ct_state::TRK | ct_state::EST);
        // A SYN in an established connection does not fit.
        let s = track(&mut ct, &mut tcp(A, B, 1000, 80, 0x02), false, None, 3);
        assert_eq!(s.state, ct_state::TRK | ct_state::INV);
        // SYN+FIN never fits.
        let s = track(&mut ct, &mut tcp(A, B, 1001, 80, 0x03), true, None, 3);
        assert_eq!(s.state, ct_state::TRK | ct_state::INV);
        assert_eq!(ct.len(), 1);
    }

    #[test]
    fn reply_before_syn_ack_is_invalid_and_expiry_hides_entries() {
        let mut ct = Conntrack::new(CtConfig::default());
        track(&mut ct, &mut tcp(A, B, 1000, 80, 0x02), true, None, 0);
        let s = track(&mut ct, &mut tcp(B, A, 80, 1000, 0x10), false, None, 1);
        assert_eq!(s.state, ct_state::TRK | ct_state::INV);
        let later = CtTimeouts::default().tcp_syn_sent + 1;
        let s = track(&mut ct, &mut tcp(B, A, 80, 1000, 0x12), false, None, later);
        assert_eq!(s.state, ct_state::TRK | ct_state::INV, "expired: no connection to reply to");
        assert!(ct.is_empty());
    }

    /// A table holding one established connection from A:1000 to VIP:80, DNAT'ed to
    /// B:8080 in zone 1 (its last packet at `now`), and the client's tuple.
    pub(super) fn dnat_established(now: u64) -> (Conntrack, Tuple) {
        let mut ct = Conntrack::new(CtConfig::default());
        let dnat = Some(NatAction::Dst(NatRange::v4_port(B, 8080)));
        track(&mut ct, &mut tcp(A, VIP, 1000, 80, 0x02), true, dnat, now);
        track(&mut ct, &mut tcp(B, A, 8080, 1000, 0x12), false, Some(NatAction::Stored), now);
        track(&mut ct, &mut tcp(A, VIP, 1000, 80, 0x10), false, Some(NatAction::Stored), now);
        let client = Tuple { src: v4(A), dst: v4(VIP), sport: 1000, dport: 80, proto: ip_proto::TCP, zone: 1 };
        (ct, client)
    }

    #[test]
    fn dnat_and_reverse() {
        let mut ct = Conntrack::new(CtConfig::default());
        let mut f = tcp(A, VIP, 1000, 80, 0x02);
        track(&mut ct, &mut f, true, Some(NatAction::Dst(NatRange::v4_port(B, 8080))), 0);
        assert_eq!(fields(&f), (A, B, 1000, 8080));
        assert!(packet::checksums_valid(&f));
        let mut r = tcp(B, A, 8080, 1000, 0x12);
        let s = track(&mut ct, &mut r, false, Some(NatAction::Stored), 1);
        // Un-DNATing the reply rewrote its source.
        assert_eq!(s.state, ct_state::TRK | ct_state::EST | ct_state::RPL | ct_state::SNAT);
        assert_eq!(fields(&r), (VIP, A, 80, 1000));
        assert!(packet::checksums_valid(&r));
        let mut f2 = tcp(A, VIP, 1000, 80, 0x10);
        let s = track(&mut ct, &mut f2, false, Some(NatAction::Stored), 2);
        assert_eq!(s.state, ct_state::TRK | ct_state::EST | ct_state::DNAT);
        assert_eq!(fields(&f2), (A, B, 1000, 8080));
        // Without nat, nothing is translated and no NAT bit is set.
        let mut f3 = tcp(A, VIP, 1000, 80, 0x10);
        let s = track(&mut ct, &mut f3, false, None, 3);
        assert_eq!(s.state, ct_state::TRK | ct_state::EST);
        assert_eq!(fields(&f3), (A, VIP, 1000, 80));
    }

    #[test]
    fn nat_bits_say_what_was_rewritten_in_this_packet() {
        let mut ct = Conntrack::new(CtConfig::default());
        let nat = |r| Some(NatAction::Src(r));
        // A new connection committed with SNAT: the first packet is +snat.
        let mut f = tcp(A, B, 1000, 80, 0x02);
        let s = track(&mut ct, &mut f, true, nat(NatRange::v4(NODE)), 0);
        assert_eq!(s.state, ct_state::TRK | ct_state::NEW | ct_state::SNAT);
        // Its reply is un-SNATed: the destination changes, +dnat.
        let mut r = tcp(B, NODE, 80, 1000, 0x12);
        let s = track(&mut ct, &mut r, false, Some(NatAction::Stored), 1);
        assert_eq!(s.state, ct_state::TRK | ct_state::EST | ct_state::RPL | ct_state::DNAT);
        // A committed connection without NAT has no NAT bits, with or without nat.
        let mut g = tcp(A, B, 2000, 80, 0x02);
        let s = track(&mut ct, &mut g, true, Some(NatAction::Stored), 2);
        assert_eq!(s.state, ct_state::TRK | ct_state::NEW);
        // A DNAT that had to move the source port rewrote both.
        let mut h = tcp(A, VIP, 3000, 80, 0x02);
        let s = track(&mut ct, &mut h, true, Some(NatAction::Dst(NatRange::v4_port(B, 80))), 3);
        assert_eq!(s.state & (ct_state::SNAT | ct_state::DNAT), ct_state::DNAT);
        let mut clash = tcp(A, VIP + 1, 3000, 80, 0x02);
        let s = track(&mut ct, &mut clash, true, Some(NatAction::Dst(NatRange::v4_port(B, 80))), 3);
        assert_eq!(s.state, ct_state::TRK | ct_state::NEW | ct_state::SNAT | ct_state::DNAT);
        assert_ne!(fields(&clash).2, 3000);
    }

    /// The agent's SNAT range for pod egress: every allocation stays inside it, and a
    /// full range refuses new connections (`nat_exhausted`) until one ends. (Searched
    /// whole here, so that every last port is found; the default search is bounded.)
    #[test]
    fn snat_port_range_is_never_left_and_exhaustion_is_a_drop() {
        let (lo, hi) = (61000u16, 65535u16);
        let range = NatRange { addr_min: v4(NODE), addr_max: v4(NODE), port_min: lo, port_max: hi };
        let mut ct = Conntrack::new(CtConfig { nat_attempts: u32::MAX, ..CtConfig::default() });
        let mut seen = std::collections::HashSet::new();
        let n = u32::from(hi - lo) + 1;
        for client in 0..n {
            // Every pod uses source port 40000 towards one server.
            let mut f = tcp(0x0a00_0000 + client, B, 40000, 443, 0x02);
            let s = track(&mut ct, &mut f, true, Some(NatAction::Src(range)), 0);
            assert_eq!(s.error, None, "client {client}");
            let (src, _, sport, _) = fields(&f);
            assert_eq!(src, NODE);
            assert!((lo..=hi).contains(&sport), "port {sport} outside the range");
            assert!(seen.insert(sport), "port {sport} given twice");
        }
        // Full: a new connection is refused and nothing is created.
        let mut f = tcp(0x0b00_0001, B, 40000, 443, 0x02);
        let s = track(&mut ct, &mut f, true, Some(NatAction::Src(range)), 1);
        assert_eq!(s.error, Some(CtError::NatExhausted));
        assert_eq!(ct.len(), n as usize);
        assert_eq!(fields(&f), (0x0b00_0001, B, 40000, 443), "a refused packet is not rewritten");
        // Another destination has a range of its own.
        let mut g = tcp(0x0b00_0001, B + 1, 40000, 443, 0x02);
        assert_eq!(track(&mut ct, &mut g, true, Some(NatAction::Src(range)), 1).error, None);
        assert!((lo..=hi).contains(&fields(&g).2));
        // Once connections expire, their ports are free again.
        let later = CtTimeouts::default().tcp_syn_sent + 1;
        let mut h = tcp(0x0b00_0002, B, 40000, 443, 0x02);
        assert_eq!(track(&mut ct, &mut h, true, Some(NatAction::Src(range)), later).error, None);
        assert!((lo..=hi).contains(&fields(&h).2));
    }

    #[test]
    fn snat_ports_never_collide() {
        let mut ct = Conntrack::new(CtConfig::default());
        let range = NatRange { addr_min: v4(NODE), addr_max: v4(NODE), port_min: 30000, port_max: 30009 };
        let mut seen = std::collections::HashSet::new();
        for client in 0..10u32 {
            // Same source port from ten pods to one destination.
            let mut f = tcp(A + client, B, 5555, 443, 0x02);
            let s = track(&mut ct, &mut f, true, Some(NatAction::Src(range)), 0);
            assert_eq!(s.error, None);
            let (src, _, sport, _) = fields(&f);
            assert_eq!(src, NODE);
            assert!((30000..=30009).contains(&sport));
            assert!(seen.insert(sport), "port {sport} reused");
        }
        let mut f = tcp(A + 99, B, 5555, 443, 0x02);
        let s = track(&mut ct, &mut f, true, Some(NatAction::Src(range)), 0);
        assert_eq!(s.error, Some(CtError::NatExhausted));
    }

    #[test]
    fn snat_keeps_original_port_when_free() {
        let mut ct = Conntrack::new(CtConfig::default());
        let mut f = ipv4_frame(ip_proto::UDP, A, B, 5353, 53, b"q");
        track(&mut ct, &mut f, true, Some(NatAction::Src(NatRange::v4(NODE))), 0);
        assert_eq!(fields(&f), (NODE, B, 5353, 53));
        let mut g = ipv4_frame(ip_proto::UDP, A + 1, B, 5353, 53, b"q");
        track(&mut ct, &mut g, true, Some(NatAction::Src(NatRange::v4(NODE))), 0);
        let (_, _, sport, _) = fields(&g);
        assert_ne!(sport, 5353);
        let mut r = ipv4_frame(ip_proto::UDP, B, NODE, 53, sport, b"a");
        let s = track(&mut ct, &mut r, false, Some(NatAction::Stored), 1);
        assert_eq!(s.state & ct_state::RPL, ct_state::RPL);
        assert_eq!(fields(&r), (B, A + 1, 53, 5353));
    }

    /// The hard limit, without early drop.
    #[test]
    fn table_limit() {
        let mut ct = Conntrack::new(CtConfig { max_connections: 2, early_drop: false, ..CtConfig::default() });
        for p in 0..2 {
            assert_eq!(track(&mut ct, &mut tcp(A, B, 1000 + p, 80, 0x02), true, None, 0).error, None);
        }
        assert_eq!(track(&mut ct, &mut tcp(A, B, 2000, 80, 0x02), true, None, 0).error, Some(CtError::TableFull));
        // Once the first two expire, there is room again.
        let later = CtTimeouts::default().tcp_syn_sent + 1;
        assert_eq!(track(&mut ct, &mut tcp(A, B, 2000, 80, 0x02), true, None, later).error, None);
    }

    #[test]
    fn icmp_echo_and_related_error_through_snat() {
        let mut ct = Conntrack::new(CtConfig::default());
        // Pod A sends UDP to B through SNAT to NODE.
        let mut f = ipv4_frame(ip_proto::UDP, A, B, 4000, 53, b"query");
        track(&mut ct, &mut f, true, Some(NatAction::Src(NatRange::v4(NODE))), 0);
        let (_, _, sport, _) = fields(&f);
        // B answers "port unreachable" quoting the translated packet.
        let quoted = &f[14..14 + 28];
        assert_eq!(u16::from_be_bytes([quoted[20], quoted[21]]), sport, "the quote carries the SNAT port");
        let mut err = ipv4_frame(ip_proto::ICMP, B, NODE, 0, 0, quoted);
        err[34] = 3;
        err[35] = 3;
        packet::fill_checksums(&mut err);
        let s = track(&mut ct, &mut err, false, Some(NatAction::Stored), 1);
        assert_eq!(s.state, ct_state::TRK | ct_state::REL | ct_state::RPL | ct_state::DNAT);
        let (src, dst, _, _) = fields(&err);
        assert_eq!((src, dst), (B, A), "outer destination un-NATed");
        let q = &err[34 + 8..];
        assert_eq!(u32::from_be_bytes([q[12], q[13], q[14], q[15]]), A, "quoted source un-NATed");
        assert_eq!(u16::from_be_bytes([q[20], q[21]]), 4000);
        assert_eq!(packet::checksum(&q[..20], 0), 0, "quoted IP header checksum fixed");
        assert!(packet::checksums_valid(&err));
        // Echo: request creates, reply is est+rpl.
        let mut req = ipv4_frame(ip_proto::ICMP, A, B, 0, 0, b"ping");
        req[38] = 0x12;
        req[39] = 0x34;
        packet::fill_checksums(&mut req);
        assert_eq!(track(&mut ct, &mut req, true, None, 2).state, ct_state::TRK | ct_state::NEW);
        let mut rep = req.clone();
        rep[26..30].copy_from_slice(&B.to_be_bytes());
        rep[30..34].copy_from_slice(&A.to_be_bytes());
        rep[34] = 0;
        packet::fill_checksums(&mut rep);
        assert_eq!(track(&mut ct, &mut rep, false, None, 3).state, ct_state::TRK | ct_state::EST | ct_state::RPL);
    }

    #[test]
    fn ipv6_tcp_with_dnat_and_zones() {
        use crate::responder::tests::ipv6_frame;
        let (a6, vip6, b6) = (
            0xfd00_0000_0000_0000_0000_0000_0000_00aau128,
            0xfd00_0000_0000_0000_0000_0000_0060_000au128,
            0xfd00_0000_0000_0000_0000_0000_0000_00bbu128,
        );
        let tcp = |sport: u16, dport: u16, flags: u8| {
            let mut l4 = [0u8; 20];
            l4[0..2].copy_from_slice(&sport.to_be_bytes());
            l4[2..4].copy_from_slice(&dport.to_be_bytes());
            l4[12] = 0x50;
            l4[13] = flags;
            l4
        };
        let mut ct = Conntrack::new(CtConfig::default());
        let dnat = NatAction::Dst(NatRange {
            addr_min: b6.to_be_bytes(),
            addr_max: b6.to_be_bytes(),
            port_min: 8080,
            port_max: 8080,
        });
        let mut syn = ipv6_frame(a6, vip6, 0, &[], ip_proto::TCP, &tcp(5000, 80, 0x02));
        let mut key = FlowKey::ZERO;
        let offs = parse_frame(&syn, &mut key);
        let r = ct.track(&mut syn, &offs, &key, &CtRequest::zone(9).commit().nat(&dnat), 0);
        assert_eq!(r.state, ct_state::TRK | ct_state::NEW | ct_state::DNAT);
        let mut k = FlowKey::ZERO;
        parse_frame(&syn, &mut k);
        assert_eq!(k.get(Field::Ipv6Dst), b6);
        assert_eq!(k.get(Field::TpDst), 8080);
        assert!(packet::checksums_valid(&syn), "TCP checksum follows the IPv6 rewrite");
        // The same tuple in another zone is another connection.
        let mut other = ipv6_frame(b6, a6, 0, &[], ip_proto::TCP, &tcp(8080, 5000, 0x12));
        let mut key = FlowKey::ZERO;
        let offs = parse_frame(&other, &mut key);
        assert_eq!(ct.track(&mut other, &offs, &key, &CtRequest::zone(1), 1).state, ct_state::TRK | ct_state::INV);
        let r = ct.track(&mut other, &offs, &key, &CtRequest::zone(9).nat(&NatAction::Stored), 1);
        assert_eq!(r.state, ct_state::TRK | ct_state::EST | ct_state::RPL | ct_state::SNAT);
        let mut k = FlowKey::ZERO;
        parse_frame(&other, &mut k);
        assert_eq!((k.get(Field::Ipv6Src), k.get(Field::TpSrc)), (vip6, 80));
        assert!(packet::checksums_valid(&other));
    }

    #[test]
    fn a_translated_packet_finds_its_connection_in_the_same_zone() {
        let mut ct = Conntrack::new(CtConfig::default());
        let mut f = tcp(A, VIP, 1000, 80, 0x02);
        track(&mut ct, &mut f, true, Some(NatAction::Dst(NatRange::v4_port(B, 8080))), 0);
        assert_eq!(fields(&f), (A, B, 1000, 8080));
        // A second commit of the translated packet (a verdict's mark) updates the same
        // connection instead of creating a clashing one.
        let mut key = FlowKey::ZERO;
        let offs = parse_frame(&f, &mut key);
        // As the packet recirculates from the `ct_lb`: zone 1, +dnat.
        key.set(crate::key::Field::CtZone, 1);
        key.set(crate::key::Field::CtState, u128::from(ct_state::TRK | ct_state::NEW | ct_state::DNAT));
        let req = CtRequest { set_mark: Some((1, 1)), ..CtRequest::zone(1).commit() };
        let r = ct.track(&mut f, &offs, &key, &req, 1);
        assert_eq!(r.state, ct_state::TRK | ct_state::NEW | ct_state::DNAT);
        assert_eq!(ct.len(), 1);
        assert_eq!(fields(&f), (A, B, 1000, 8080), "not translated twice");
        let mut reply = tcp(B, A, 8080, 1000, 0x12);
        let s = track(&mut ct, &mut reply, false, Some(NatAction::Stored), 2);
        assert_eq!(s.state, ct_state::TRK | ct_state::EST | ct_state::RPL | ct_state::SNAT);
        assert_eq!(s.mark, 1, "the reply sees the mark");
        assert_eq!(fields(&reply), (VIP, A, 80, 1000));
    }

    #[test]
    fn marks_and_labels_are_set_on_commit() {
        let mut ct = Conntrack::new(CtConfig::default());
        let mut f = tcp(A, B, 1000, 80, 0x02);
        let mut key = FlowKey::ZERO;
        let offs = parse_frame(&f, &mut key);
        let req = CtRequest {
            set_mark: Some((0xab, 0xff)),
            set_label: Some((1 << 100, 1 << 100)),
            ..CtRequest::zone(1).commit()
        };
        let r = ct.track(&mut f, &offs, &key, &req, 0);
        assert_eq!((r.mark, r.label), (0xab, 1 << 100));
        let mut g = tcp(B, A, 80, 1000, 0x12);
        let mut key = FlowKey::ZERO;
        let offs = parse_frame(&g, &mut key);
        let r = ct.track(&mut g, &offs, &key, &CtRequest::zone(1), 1);
        assert_eq!((r.mark, r.label), (0xab, 1 << 100), "replies see the connection's mark and label");
    }

    /// Opens a TCP connection from A:`sport` to B:80 through the whole handshake (assured).
    fn established(ct: &mut Conntrack, sport: u16, zone: u16, now: u64) -> CtResult {
        let step = |ct: &mut Conntrack, f: &mut Vec<u8>, commit: bool| {
            let mut key = FlowKey::ZERO;
            let offs = parse_frame(f, &mut key);
            let req = CtRequest { commit, ..CtRequest::zone(zone) };
            ct.track(f, &offs, &key, &req, now)
        };
        let r = step(ct, &mut tcp(A, B, sport, 80, 0x02), true);
        if r.error.is_some() {
            return r;
        }
        step(ct, &mut tcp(B, A, 80, sport, 0x12), false);
        step(ct, &mut tcp(A, B, sport, 80, 0x10), false)
    }

    pub(super) fn syn(ct: &mut Conntrack, sport: u16, zone: u16, now: u64) -> CtResult {
        let mut f = tcp(A, B, sport, 80, 0x02);
        let mut key = FlowKey::ZERO;
        let offs = parse_frame(&f, &mut key);
        ct.track(&mut f, &offs, &key, &CtRequest::zone(zone).commit(), now)
    }

    fn has(ct: &mut Conntrack, sport: u16, zone: u16, now: u64) -> bool {
        let t = Tuple { src: v4(A), dst: v4(B), sport, dport: 80, proto: ip_proto::TCP, zone };
        ct.find(&t, now).is_some()
    }

    #[test]
    fn a_full_table_evicts_the_oldest_unassured_connection_never_an_established_one() {
        let mut ct = Conntrack::new(CtConfig { max_connections: 4, ..CtConfig::default() });
        assert!(established(&mut ct, 1, 0, 0).state & ct_state::EST != 0);
        assert!(established(&mut ct, 2, 0, 0).state & ct_state::EST != 0);
        // A flood of half-open connections: each new one takes the place of the oldest.
        for p in 100..110 {
            assert_eq!(syn(&mut ct, p, 0, 1).error, None, "SYN {p}");
        }
        assert_eq!(ct.len(), 4);
        assert_eq!(ct.counters().early_drops, 8);
        assert!(has(&mut ct, 1, 0, 2) && has(&mut ct, 2, 0, 2), "established connections stay");
        assert!(has(&mut ct, 108, 0, 2) && has(&mut ct, 109, 0, 2), "the newest half-open ones stay");
        assert!(!has(&mut ct, 100, 0, 2));
        // A new connection completes its handshake while the flood goes on: once assured
        // it is out of reach.
        assert_eq!(syn(&mut ct, 50, 0, 3).error, None);
        assert!(established(&mut ct, 50, 0, 3).state & ct_state::EST != 0);
        for p in 200..210 {
            assert_eq!(syn(&mut ct, p, 0, 4).error, None, "SYN {p}");
        }
        assert!(has(&mut ct, 1, 0, 5) && has(&mut ct, 2, 0, 5) && has(&mut ct, 50, 0, 5));
        // Nothing left to evict: the table refuses.
        assert!(established(&mut ct, 51, 0, 6).state & ct_state::EST != 0);
        assert_eq!(syn(&mut ct, 300, 0, 7).error, Some(CtError::TableFull));
        assert_eq!(ct.counters().table_full, 1);
        // UDP: unassured until answered.
        let mut q = ipv4_frame(ip_proto::UDP, A, B, 5353, 53, b"q");
        assert_eq!(track(&mut ct, &mut q, true, None, 8).error, Some(CtError::TableFull));
    }

    #[test]
    fn table_limits_change_while_connections_stay() {
        let mut ct = Conntrack::new(CtConfig::default());
        for p in 1..=3 {
            assert!(established(&mut ct, p, 0, 0).state & ct_state::EST != 0);
        }
        assert_eq!(syn(&mut ct, 10, 0, 0).error, None);
        // Lowered below what the table holds: everything held stays, the half-open one
        // makes room for the next, and with early drop off a new one is refused.
        ct.set_table_limits(CtTableLimits { max_connections: 4, early_drop: true, nat_attempts: 16 });
        assert_eq!(
            CtTableLimits::of(ct.config()),
            CtTableLimits { max_connections: 4, early_drop: true, nat_attempts: 16 }
        );
        assert_eq!(syn(&mut ct, 11, 0, 1).error, None);
        assert_eq!(ct.counters().early_drops, 1);
        assert!(!has(&mut ct, 10, 0, 1) && has(&mut ct, 11, 0, 1));
        ct.set_table_limits(CtTableLimits { max_connections: 2, early_drop: false, nat_attempts: 16 });
        assert_eq!(ct.len(), 4);
        assert!((1..=3).all(|p| has(&mut ct, p, 0, 2)), "established connections stay");
        assert_eq!(syn(&mut ct, 12, 0, 2).error, Some(CtError::TableFull));
        // Raised again: room at once. Zero is no limit anyone asked for: one at least.
        ct.set_table_limits(CtTableLimits { max_connections: 8, ..CtTableLimits::default() });
        assert_eq!(syn(&mut ct, 12, 0, 3).error, None);
        ct.set_table_limits(CtTableLimits { max_connections: 0, early_drop: true, nat_attempts: 0 });
        assert_eq!((ct.config().max_connections, ct.config().nat_attempts), (1, 1));
    }

    #[test]
    fn zone_limits_confine_a_zone_and_evict_within_it() {
        let mut ct = Conntrack::new(CtConfig::default());
        ct.set_zone_limit(ZoneLimitScope::Default, 3);
        ct.set_zone_limit(ZoneLimitScope::Zone(9), 0);
        assert_eq!((ct.zone_limit(1), ct.zone_limit(9), ct.zone_limit(2)), (Some(3), None, Some(3)));
        // Zone 1: one established connection, then a flood.
        assert!(established(&mut ct, 1, 1, 0).state & ct_state::EST != 0);
        for p in 100..120 {
            assert_eq!(syn(&mut ct, p, 1, 1).error, None);
        }
        assert_eq!(ct.zone_len(1), 3);
        assert!(has(&mut ct, 1, 1, 2), "the established connection of the zone stays");
        // Zone 2 is not touched by zone 1's flood, and evicts its own.
        assert!(established(&mut ct, 7, 2, 2).state & ct_state::EST != 0);
        assert_eq!(syn(&mut ct, 8, 2, 2).error, None);
        assert_eq!(syn(&mut ct, 9, 2, 2).error, None);
        assert_eq!(syn(&mut ct, 10, 2, 2).error, None);
        assert!(has(&mut ct, 7, 2, 3) && !has(&mut ct, 8, 2, 3) && has(&mut ct, 10, 2, 3));
        assert!(has(&mut ct, 119, 1, 3), "zone 1's newest is untouched by zone 2");
        // A zone of established connections refuses.
        assert!(established(&mut ct, 2, 3, 4).state & ct_state::EST != 0);
        assert!(established(&mut ct, 3, 3, 4).state & ct_state::EST != 0);
        assert!(established(&mut ct, 4, 3, 4).state & ct_state::EST != 0);
        assert_eq!(syn(&mut ct, 5, 3, 5).error, Some(CtError::ZoneFull));
        assert_eq!(ct.counters().zone_full, 1);
        // Zone 9 has no limit.
        for p in 0..10 {
            assert_eq!(syn(&mut ct, p, 9, 6).error, None);
        }
        assert_eq!(ct.zone_len(9), 10);
        // Without early drop, a full zone refuses at once.
        let mut strict = Conntrack::new(CtConfig { early_drop: false, ..CtConfig::default() });
        strict.set_zone_limit(ZoneLimitScope::Zone(4), 1);
        assert_eq!(syn(&mut strict, 1, 4, 0).error, None);
        assert_eq!(syn(&mut strict, 2, 4, 0).error, Some(CtError::ZoneFull));
        strict.clear_zone_limit(ZoneLimitScope::Zone(4));
        assert_eq!(syn(&mut strict, 2, 4, 0).error, None);
        // Expired and removed connections leave their zone's count.
        let later = CtTimeouts::default().tcp_syn_sent + 10;
        strict.sweep(later, 100);
        assert_eq!((strict.zone_len(4), strict.len()), (0, 0));
    }

    #[test]
    fn eviction_lists_stay_consistent_under_removals() {
        // Connections of two zones, some assured, removed in every way; the lists must
        // hold exactly the live unassured connections, oldest first.
        let mut ct = Conntrack::new(CtConfig::default());
        for p in 0..40u16 {
            let zone = p % 2;
            if p % 3 == 0 {
                established(&mut ct, p, zone, u64::from(p));
            } else {
                syn(&mut ct, p, zone, u64::from(p));
            }
        }
        ct.remove_where(|c| c.orig.sport % 5 == 0);
        let (mut expect_table, mut expect_zone) = (Vec::new(), [Vec::new(), Vec::new()]);
        for p in 0..40u16 {
            if p % 3 != 0 && p % 5 != 0 {
                expect_table.push(p);
                expect_zone[usize::from(p % 2)].push(p);
            }
        }
        let walk = |ct: &Conntrack, mut at: u32, list: usize| {
            let mut out = Vec::new();
            while at != NIL {
                let c = ct.conn(at).expect("listed connections are live");
                assert!(!c.assured());
                out.push(c.orig.sport);
                at = c.links[list][1];
            }
            out
        };
        assert_eq!(walk(&ct, ct.head, TABLE), expect_table);
        for z in 0..2u16 {
            assert_eq!(walk(&ct, ct.zones[&z].head, ZONE), expect_zone[usize::from(z)], "zone {z}");
        }
        assert_eq!(ct.zone_len(0) + ct.zone_len(1), ct.len());
    }

    #[test]
    fn the_nat_search_is_bounded() {
        // Offsets: the whole span when it fits, else exactly the budget, all in range.
        let all: Vec<u64> = probe_offsets(10, 7, 1, 256).collect();
        assert_eq!(all.len(), 10);
        assert_eq!(all.iter().copied().collect::<std::collections::BTreeSet<_>>().len(), 10);
        assert_eq!(all[0], 7);
        let some: Vec<u64> = probe_offsets(64512, 100, 42, 256).collect();
        assert_eq!(some.len(), 256);
        assert!(some.iter().all(|o| *o < 64512));
        assert_eq!(&some[..3], &[100, 101, 102], "the first run starts at the hashed offset");
        assert!(some.iter().copied().collect::<std::collections::BTreeSet<_>>().len() > 200, "runs in several places");
        // A full SNAT range: a new connection is refused after the budget, as before.
        let (lo, hi) = (61000u16, 65535u16);
        let range = NatRange { addr_min: v4(NODE), addr_max: v4(NODE), port_min: lo, port_max: hi };
        let mut ct = Conntrack::new(CtConfig { nat_attempts: u32::MAX, ..CtConfig::default() });
        for client in 0..u32::from(hi - lo) + 1 {
            let mut f = tcp(0x0a00_0000 + client, B, 40000, 443, 0x02);
            assert_eq!(track(&mut ct, &mut f, true, Some(NatAction::Src(range)), 0).error, None);
        }
        ct.config.nat_attempts = CtConfig::DEFAULT_NAT_ATTEMPTS;
        let mut f = tcp(0x0b00_0001, B, 40000, 443, 0x02);
        assert_eq!(track(&mut ct, &mut f, true, Some(NatAction::Src(range)), 1).error, Some(CtError::NatExhausted));
        assert_eq!(ct.counters().nat_exhausted, 1);
        // Half full, the bounded search still gives every connection a port of the range.
        let mut ct = Conntrack::new(CtConfig::default());
        let mut seen = std::collections::HashSet::new();
        for client in 0..u32::from(hi - lo).div_ceil(2) {
            let mut f = tcp(0x0a00_0000 + client, B, 40000, 443, 0x02);
            assert_eq!(track(&mut ct, &mut f, true, Some(NatAction::Src(range)), 0).error, None, "client {client}");
            assert!(seen.insert(fields(&f).2));
        }
        // Without a range (forced SNAT keeping the port), the ephemeral fallback is
        // bounded too: the budget covers the original port and 255 ephemeral ones.
        let mut ct = Conntrack::new(CtConfig { nat_attempts: 3, ..CtConfig::default() });
        for client in 0..3 {
            let mut f = tcp(A + client, B, 5555, 443, 0x02);
            assert_eq!(track(&mut ct, &mut f, true, Some(NatAction::Src(NatRange::v4(NODE))), 0).error, None);
        }
    }

    #[test]
    fn sweep_is_bounded() {
        let mut ct = Conntrack::new(CtConfig::default());
        for p in 0..100 {
            track(&mut ct, &mut tcp(A, B, 1000 + p, 80, 0x02), true, None, 0);
        }
        let later = CtTimeouts::default().tcp_syn_sent + 1;
        assert_eq!(ct.sweep(later, 10), 10);
        assert_eq!(ct.len(), 90);
        assert_eq!(ct.sweep(later, 1000), 90);
    }
}
