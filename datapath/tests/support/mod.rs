//! Test support: a plain linear-scan implementation of the pipeline's semantics (no
//! caches, no translation, eager writes to the frame) and a frame builder. The cached
//! datapath must give exactly the same outputs as this reference.

use std::collections::HashMap;

use skein_datapath::conntrack::{Conntrack, CtConfig, CtError, CtRequest, CtResult, NatAction, NatRange};
use skein_datapath::exec::{EncapSpec, OutputSink};
use skein_datapath::flow::{Action, CtZone, Flow, FlowMod, Group, GroupKind, Responder, TunnelPort};
use skein_datapath::hash;
use skein_datapath::key::{Field, FlowKey, VLAN_PRESENT, ct_state, eth_type, ip_proto};
use skein_datapath::lb::LbState;
use skein_datapath::packet;
use skein_datapath::parse::{HeaderOffsets, parse_frame};
use skein_datapath::pipeline::{DropReason, MAX_DEPTH, MAX_LOOKUPS, MAX_RECIRC};

/// The reference pipeline: flows in a list, scanned linearly; its own conntrack and
/// load balancers (the same modules the datapath uses — what is under test here is the
/// caching, translation and recirculation around them).
#[derive(Debug)]
pub struct Reference {
    /// (sequence number, flow).
    flows: Vec<(u64, Flow)>,
    groups: HashMap<u32, Group>,
    seq: u64,
    ct: Conntrack,
    lbs: HashMap<u32, LbState>,
    tunnels: HashMap<u32, TunnelPort>,
    /// Tunnel port → the outer sources it accepts (a port absent: every source).
    remotes: HashMap<u32, Vec<u32>>,
}

impl Default for Reference {
    fn default() -> Self {
        Reference::new(CtConfig::default())
    }
}

/// What the reference did with one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefResult {
    /// (port, frame) per output.
    pub outputs: Vec<(u32, Vec<u8>)>,
    /// Drop reason, as the datapath reports it.
    pub drop: Option<DropReason>,
}

fn header_field(f: Field) -> bool {
    matches!(
        f,
        Field::EthDst
            | Field::EthSrc
            | Field::VlanTci
            | Field::Ipv4Src
            | Field::Ipv4Dst
            | Field::ArpSpa
            | Field::ArpTpa
            | Field::ArpOp
            | Field::ArpSha
            | Field::ArpTha
            | Field::IpDscp
            | Field::IpEcn
            | Field::NwTtl
            | Field::Ipv6Label
            | Field::Ipv6Src
            | Field::Ipv6Dst
            | Field::TpSrc
            | Field::TpDst
            | Field::IcmpType
            | Field::IcmpCode
    )
}

impl Reference {
    /// An empty reference with this conntrack configuration.
    pub fn new(ct: CtConfig) -> Self {
        Reference {
            flows: Vec::new(),
            groups: HashMap::new(),
            seq: 0,
            ct: Conntrack::new(ct),
            lbs: HashMap::new(),
            tunnels: HashMap::new(),
            remotes: HashMap::new(),
        }
    }

    /// Applies a modification with the documented semantics.
    pub fn apply(&mut self, m: &FlowMod) {
        match m {
            FlowMod::AddLoadBalancer(lb) => {
                let removed = match self.lbs.get_mut(&lb.id) {
                    Some(s) => s.update(lb.clone()),
                    None => {
                        self.lbs.insert(lb.id, LbState::new(lb.clone()));
                        Vec::new()
                    }
                };
                self.ct.remove_where(|c| {
                    c.orig.proto == ip_proto::UDP
                        && c.orig.dst != c.reply.src
                        && removed.iter().any(|b| b.addr == c.reply.src && b.port == c.reply.sport)
                });
            }
            FlowMod::DeleteLoadBalancer(id) => {
                self.lbs.remove(id);
            }
            FlowMod::AddTunnelPort(t) => {
                self.tunnels.insert(t.port, *t);
            }
            FlowMod::DeleteTunnelPort(p) => {
                self.tunnels.remove(p);
            }
            FlowMod::AddFlow(f) => {
                let mut f = f.clone();
                f.matches = f.matches.normalized();
                self.flows.retain(|(_, g)| !(g.table == f.table && g.priority == f.priority && g.matches == f.matches));
                self.seq += 1;
                self.flows.push((self.seq, f));
            }
            FlowMod::DeleteFlowStrict { table, priority, matches } => {
                let m = matches.normalized();
                self.flows.retain(|(_, g)| !(g.table == *table && g.priority == *priority && g.matches == m));
            }
            FlowMod::DeleteFlowsByCookie { table, cookie, cookie_mask } => {
                self.flows.retain(|(_, g)| {
                    !(table.is_none_or(|t| t == g.table) && g.cookie & cookie_mask == cookie & cookie_mask)
                });
            }
            FlowMod::AddGroup(g) => {
                self.groups.insert(g.id, g.clone());
            }
            FlowMod::DeleteGroup(id) => {
                self.groups.remove(id);
            }
            FlowMod::SetTunnelRemotes(r) => {
                self.remotes.insert(r.port, r.remotes.clone());
            }
            FlowMod::DeleteTunnelRemotes(port) => {
                self.remotes.remove(port);
            }
            FlowMod::SetZoneLimit(z) => self.ct.set_zone_limit(z.scope, z.limit),
            FlowMod::DeleteZoneLimit(scope) => self.ct.clear_zone_limit(*scope),
        }
    }

    /// What the datapath's periodic maintenance does to conntrack (the one piece of
    /// housekeeping with visible effect: whether a full table has room).
    pub fn maintain(&mut self, now: u64) {
        let budget = self.ct.config().sweep_budget;
        self.ct.sweep(now, budget);
    }

    /// Runs one frame through the tables at time `now`.
    pub fn process(
        &mut self,
        frame: &[u8],
        in_port: u32,
        tunnel: Option<skein_datapath::geneve::TunnelMeta>,
        now: u64,
    ) -> RefResult {
        let mut key = FlowKey::ZERO;
        key.set(Field::InPort, in_port as u128);
        if let Some(t) = tunnel {
            // A tunnel port with remotes takes frames from those outer sources only.
            if self.remotes.get(&in_port).is_some_and(|r| !r.contains(&t.src)) {
                return RefResult { outputs: Vec::new(), drop: Some(DropReason::TunnelUnknownSource) };
            }
            t.write_key(&mut key);
        }
        let offs = parse_frame(frame, &mut key);
        let Reference { flows, groups, ct, lbs, tunnels, .. } = self;
        let mut arrived_eth = [0u8; 12];
        if let Some(e) = frame.get(..12) {
            arrived_eth.copy_from_slice(e);
        }
        let mut st = State {
            flows,
            groups,
            ct,
            lbs,
            tunnels,
            arrived_eth,
            now,
            in_port,
            pkt: Pkt { key, frame: frame.to_vec(), offs },
            outputs: Vec::new(),
            exit: None,
            lookups: 0,
            missed: false,
            halt: None,
            in_bucket: 0,
            responded: false,
            suppressed: false,
        };
        let mut table = 0;
        let mut pass = 0;
        loop {
            st.lookups = 0;
            st.missed = false;
            st.responded = false;
            st.table(table, 0);
            let Some((t, zone, r)) = st.halt.take() else {
                let drop = st.exit.or(if !st.responded {
                    Some(if st.missed { DropReason::TableMiss } else { DropReason::NoOutput })
                } else {
                    None
                });
                return RefResult { outputs: st.outputs, drop };
            };
            pass += 1;
            if pass >= MAX_RECIRC {
                return RefResult { outputs: st.outputs, drop: Some(DropReason::RecircLimit) };
            }
            // The packet re-enters with fresh headers, the frozen metadata and ct fields.
            let mut k = FlowKey::ZERO;
            k.set(Field::InPort, in_port as u128);
            k.set(Field::CtState, r.state as u128);
            k.set(Field::CtZone, zone as u128);
            k.set(Field::CtMark, r.mark as u128);
            k.set(Field::CtLabel, r.label);
            let offs = parse_frame(&st.pkt.frame, &mut k);
            for f in [
                Field::Metadata,
                Field::Reg0,
                Field::Reg1,
                Field::Reg2,
                Field::Reg3,
                Field::Reg4,
                Field::Reg5,
                Field::Reg6,
                Field::Reg7,
                Field::Reg8,
                Field::TunId,
                Field::TunSrc,
                Field::TunDst,
                Field::TunIngressPort,
                Field::TunEgressPort,
                Field::TunIdentity,
            ] {
                k.set(f, st.pkt.key.get(f));
            }
            st.pkt.key = k;
            st.pkt.offs = offs;
            table = t;
        }
    }
}

#[derive(Clone)]
struct Pkt {
    key: FlowKey,
    frame: Vec<u8>,
    offs: HeaderOffsets,
}

struct State<'a> {
    flows: &'a [(u64, Flow)],
    groups: &'a HashMap<u32, Group>,
    ct: &'a mut Conntrack,
    lbs: &'a mut HashMap<u32, LbState>,
    tunnels: &'a HashMap<u32, TunnelPort>,
    arrived_eth: [u8; 12],
    now: u64,
    in_port: u32,
    pkt: Pkt,
    outputs: Vec<(u32, Vec<u8>)>,
    exit: Option<DropReason>,
    lookups: u32,
    missed: bool,
    /// Set by a recirculating ct: (table, zone, conntrack's answer).
    halt: Option<(u8, u16, CtResult)>,
    /// Nesting of `all` buckets.
    in_bucket: u32,
    /// An output or responder action ran in this pass (drop accounting counts actions,
    /// as the translation does, not frames that left).
    responded: bool,
    /// Inside an `all` bucket, a decision made only when the datapath executes (a ct
    /// error, a rejecting Service, a too-big tunnel packet) ends that bucket's effects —
    /// the datapath stops executing the bucket's copy — while its translation (lookups,
    /// limits) goes on as the upcall's did.
    suppressed: bool,
}

/// Collects tunnel outputs into the reference's output list.
struct Collect<'a>(&'a mut Vec<(u32, Vec<u8>)>);

impl OutputSink for Collect<'_> {
    fn output(&mut self, _packet: usize, port: u32, frame: &[u8]) {
        self.0.push((port, frame.to_vec()));
    }
}

impl State<'_> {
    fn table(&mut self, table: u8, depth: u32) {
        if depth >= MAX_DEPTH || self.lookups >= MAX_LOOKUPS {
            self.exit = Some(DropReason::ResubmitLimit);
            return;
        }
        self.lookups += 1;
        let best = self
            .flows
            .iter()
            .filter(|(_, f)| f.table == table && f.matches.matches(&self.pkt.key))
            .max_by(|(sa, a), (sb, b)| a.priority.cmp(&b.priority).then(sb.cmp(sa)));
        match best {
            Some((_, f)) => {
                let actions = f.actions.clone();
                self.actions(&actions, depth);
            }
            None => self.missed = true,
        }
    }

    fn set(&mut self, field: Field, value: u128, mask: u128) {
        self.pkt.key.set_masked(field, value, mask);
        if header_field(field) {
            let v = self.pkt.key.get(field);
            packet::write_field(&mut self.pkt.frame, &self.pkt.offs, field, v);
        }
    }

    fn actions(&mut self, actions: &[Action], depth: u32) {
        for a in actions {
            if self.exit.is_some() || self.halt.is_some() {
                return;
            }
            let recirculating =
                matches!(a, Action::Ct(s) if s.table.is_some()) || matches!(a, Action::CtLb { table: Some(_), .. });
            if recirculating && self.in_bucket > 0 {
                // A bucket's copy cannot recirculate: the bucket ends here.
                self.exit = Some(DropReason::NoOutput);
                return;
            }
            match a {
                Action::Ct(spec) => {
                    let zone = self.zone(spec.zone);
                    if self.suppressed {
                        continue;
                    }
                    let r = self.track(zone, spec.commit, spec.nat.as_ref(), spec.set_mark, spec.set_label);
                    if let Some(e) = r.error {
                        self.runtime_drop(ct_drop(e));
                    } else if let Some(t) = spec.table {
                        self.halt = Some((t, zone, r));
                    }
                }
                Action::CtLb { lb, zone, table } => {
                    let zone = self.zone(*zone);
                    if self.suppressed {
                        continue;
                    }
                    let mut r = self.track(zone, false, Some(&NatAction::Stored), None, None);
                    if !r.existing && r.state & ct_state::NEW != 0 {
                        let mut k = FlowKey::ZERO;
                        let o = parse_frame(&self.pkt.frame, &mut k);
                        if let Some(tuple) = skein_datapath::conntrack::packet_tuple_of(&k, &self.pkt.frame, &o, zone) {
                            match self.lbs.get_mut(lb).and_then(|l| l.select(&tuple, self.now)) {
                                Some(b) => {
                                    let range = NatRange {
                                        addr_min: b.addr,
                                        addr_max: b.addr,
                                        port_min: b.port,
                                        port_max: b.port,
                                    };
                                    r = self.track(zone, true, Some(&NatAction::Dst(range)), None, None);
                                }
                                None => {
                                    if let Some(reply) = skein_datapath::lb::reject(&self.pkt.frame, &o, &k) {
                                        self.outputs.push((self.in_port, reply));
                                    }
                                    self.runtime_drop(DropReason::LbReject);
                                    continue;
                                }
                            }
                        }
                    }
                    if let Some(e) = r.error {
                        self.runtime_drop(ct_drop(e));
                    } else if let Some(t) = table {
                        self.halt = Some((*t, zone, r));
                    }
                }
                Action::Output(p) => {
                    // An output action counts for drop accounting even when nothing
                    // leaves (a too-big tunnel packet that gets no ICMP answer).
                    self.responded = true;
                    if !self.suppressed {
                        self.output(*p);
                    }
                }
                Action::Respond(r) => {
                    let f = &self.pkt.frame;
                    let mac = |m: u64| {
                        let b = m.to_be_bytes();
                        [b[2], b[3], b[4], b[5], b[6], b[7]]
                    };
                    let answer = match r {
                        Responder::Arp { mac: m } => skein_datapath::responder::arp_reply(f, mac(*m)),
                        Responder::IcmpEcho => skein_datapath::responder::icmp_echo_reply(f),
                        Responder::TimeExceeded { mac: m, ip, ip6 } => {
                            skein_datapath::responder::time_exceeded(f, mac(*m), *ip, *ip6)
                        }
                    };
                    // The datapath counts a responder as an output even when the packet
                    // was not one to answer.
                    self.responded = true;
                    if let Some(a) = answer.filter(|_| !self.suppressed) {
                        self.outputs.push((self.in_port, a));
                    }
                }
                Action::Drop => self.exit = Some(DropReason::Explicit),
                // The audit log is not an output.
                Action::Log(_) => {}
                Action::SetField { field, value, mask } => self.set(*field, *value, *mask),
                Action::Move { src, dst } => self.set(dst.field, src.read(&self.pkt.key) << dst.offset, dst.mask()),
                Action::CtClear => {
                    for f in [Field::CtState, Field::CtZone, Field::CtMark, Field::CtLabel] {
                        self.pkt.key.set(f, 0);
                    }
                }
                Action::DecTtl => {
                    let ty = self.pkt.key.get(Field::EthType) as u16;
                    if ty == eth_type::IPV4 || ty == eth_type::IPV6 {
                        let ttl = self.pkt.key.get(Field::NwTtl);
                        if ttl <= 1 {
                            self.exit = Some(DropReason::TtlExpired);
                        } else {
                            self.set(Field::NwTtl, ttl - 1, u128::MAX);
                        }
                    }
                }
                Action::PushVlan(tci) => {
                    if self.pkt.key.get(Field::VlanTci) as u16 & VLAN_PRESENT != 0 {
                        self.exit = Some(DropReason::VlanTagPresent);
                    } else {
                        let tci = *tci | VLAN_PRESENT;
                        self.pkt.key.set(Field::VlanTci, tci as u128);
                        packet::push_vlan(&mut self.pkt.frame, &mut self.pkt.offs, tci);
                    }
                }
                Action::PopVlan => {
                    if self.pkt.key.get(Field::VlanTci) as u16 & VLAN_PRESENT != 0 {
                        self.pkt.key.set(Field::VlanTci, 0);
                        packet::pop_vlan(&mut self.pkt.frame, &mut self.pkt.offs);
                    }
                }
                Action::Resubmit(t) | Action::GotoTable(t) => self.table(*t, depth + 1),
                Action::Group(id) => self.group(*id, depth + 1),
            }
        }
    }

    fn output(&mut self, p: u32) {
        match self.tunnels.get(&p) {
            None => self.outputs.push((p, self.pkt.frame.clone())),
            Some(t) => {
                let k = &self.pkt.key;
                let e = EncapSpec {
                    vni: k.get(Field::TunId) as u32 & 0xff_ffff,
                    dst: k.get(Field::TunDst) as u32,
                    ingress: k.get(Field::TunIngressPort) as u16,
                    egress: k.get(Field::TunEgressPort) as u16,
                    identity: k.get(Field::TunIdentity) as u32,
                    tunnel: *t,
                };
                let mut sink = Collect(&mut self.outputs);
                let r = skein_datapath::exec::tunnel_output(
                    &self.pkt.frame,
                    &self.pkt.offs,
                    &e,
                    0,
                    &mut sink,
                    self.arrived_eth,
                    self.in_port,
                    skein_datapath::offload::Offload::NONE,
                );
                if let Err(d) = r {
                    self.runtime_drop(d);
                }
            }
        }
    }

    /// A drop decided at execution time: terminal at top level, the end of the bucket's
    /// effects inside one.
    fn runtime_drop(&mut self, d: DropReason) {
        if self.in_bucket > 0 {
            self.suppressed = true;
        } else {
            self.exit = Some(d);
        }
    }

    fn zone(&self, z: CtZone) -> u16 {
        match z {
            CtZone::Const(z) => z,
            CtZone::Field(f) => self.pkt.key.get(f) as u16,
        }
    }

    fn track(
        &mut self,
        zone: u16,
        commit: bool,
        nat: Option<&NatAction>,
        mark: Option<(u32, u32)>,
        label: Option<(u128, u128)>,
    ) -> CtResult {
        // Headers as the frame has them now; the ct fields the last recirculation gave.
        let mut k = FlowKey::ZERO;
        k.set(Field::CtZone, self.pkt.key.get(Field::CtZone));
        k.set(Field::CtState, self.pkt.key.get(Field::CtState));
        let o = parse_frame(&self.pkt.frame, &mut k);
        let req = CtRequest { zone, commit, nat, set_mark: mark, set_label: label };
        self.ct.track(&mut self.pkt.frame, &o, &k, &req, self.now)
    }

    fn group(&mut self, id: u32, depth: u32) {
        if depth >= MAX_DEPTH {
            self.exit = Some(DropReason::ResubmitLimit);
            return;
        }
        let Some(g) = self.groups.get(&id).cloned() else {
            self.exit = Some(DropReason::GroupMissing);
            return;
        };
        match &g.kind {
            GroupKind::Select { fields } => {
                // Hash of the field values, each as (high, low) 64-bit words.
                let words: Vec<u64> = fields
                    .iter()
                    .flat_map(|f| {
                        let v = self.pkt.key.get(*f);
                        [(v >> 64) as u64, v as u64]
                    })
                    .collect();
                let total: u64 = g.buckets.iter().map(|b| b.weight as u64).sum();
                if total == 0 {
                    return;
                }
                let mut pick = hash::hash_words(g.id as u64, &words) % total;
                for b in &g.buckets {
                    if pick < b.weight as u64 {
                        let actions = b.actions.clone();
                        self.actions(&actions, depth);
                        return;
                    }
                    pick -= b.weight as u64;
                }
            }
            GroupKind::All => {
                for b in &g.buckets {
                    if self.exit.is_some() {
                        return;
                    }
                    let saved = self.pkt.clone();
                    let suppressed = self.suppressed;
                    self.in_bucket += 1;
                    self.actions(&b.actions, depth);
                    self.in_bucket -= 1;
                    self.suppressed = suppressed;
                    self.pkt = saved;
                    if self.exit != Some(DropReason::ResubmitLimit) {
                        self.exit = None;
                    }
                }
            }
        }
    }
}

fn ct_drop(e: CtError) -> DropReason {
    match e {
        CtError::TableFull => DropReason::CtTableFull,
        CtError::ZoneFull => DropReason::CtZoneFull,
        CtError::NatExhausted => DropReason::NatExhausted,
    }
}

/// Describes a frame to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameSpec {
    /// 0 TCP/IPv4, 1 UDP/IPv4, 2 ICMP/IPv4, 3 ARP, 4 TCP/IPv6, 5 ICMPv6, 6 raw (unknown type).
    pub kind: u8,
    /// VLAN TCI to tag with (none if 0).
    pub vlan: u16,
    /// Source address selector.
    pub src: u32,
    /// Destination address selector.
    pub dst: u32,
    /// L4 source port / ICMP type.
    pub sport: u16,
    /// L4 destination port / ICMP code.
    pub dport: u16,
    /// IP TTL.
    pub ttl: u8,
    /// Payload length.
    pub payload: u16,
}

/// Builds the frame a [`FrameSpec`] describes, with valid checksums.
pub fn build_frame(s: &FrameSpec) -> Vec<u8> {
    let mut f = Vec::with_capacity(128);
    f.extend_from_slice(&[0x0a, 0x58, 0x0a, 0xf4, 0, (s.dst & 0xff) as u8]);
    f.extend_from_slice(&[0x0a, 0x58, 0x0a, 0xf4, 0, (s.src & 0xff) as u8]);
    if s.vlan != 0 {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&(s.vlan & 0xefff).to_be_bytes());
    }
    let payload: Vec<u8> = (0..s.payload).map(|i| (i as u8).wrapping_mul(31)).collect();
    let src4 = 0x0af4_0000 | (s.src & 0xffff);
    let dst4 = 0x0af4_0000 | (s.dst & 0xffff);
    match s.kind {
        0..=2 => {
            f.extend_from_slice(&eth_type::IPV4.to_be_bytes());
            let proto = [ip_proto::TCP, ip_proto::UDP, ip_proto::ICMP][s.kind as usize];
            let l4len = if proto == ip_proto::TCP { 20 } else { 8 };
            let total = 20 + l4len + payload.len();
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[1] = 0x10;
            ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            ip[8] = s.ttl;
            ip[9] = proto;
            ip[12..16].copy_from_slice(&src4.to_be_bytes());
            ip[16..20].copy_from_slice(&dst4.to_be_bytes());
            f.extend_from_slice(&ip);
            push_l4(&mut f, proto, s, &payload);
        }
        3 => {
            f.extend_from_slice(&eth_type::ARP.to_be_bytes());
            f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1 + (s.sport & 1) as u8]);
            f.extend_from_slice(&[0x0a, 0x58, 0x0a, 0xf4, 0, (s.src & 0xff) as u8]);
            f.extend_from_slice(&src4.to_be_bytes());
            f.extend_from_slice(&[0; 6]);
            f.extend_from_slice(&dst4.to_be_bytes());
        }
        4 | 5 => {
            f.extend_from_slice(&eth_type::IPV6.to_be_bytes());
            let proto = if s.kind == 4 { ip_proto::TCP } else { ip_proto::ICMPV6 };
            let l4len = if proto == ip_proto::TCP { 20 } else { 8 };
            let mut ip = [0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&((l4len + payload.len()) as u16).to_be_bytes());
            ip[6] = proto;
            ip[7] = s.ttl;
            ip[8..12].copy_from_slice(&[0xfd, 0, 0x10, 0xf4]);
            ip[20..24].copy_from_slice(&s.src.to_be_bytes());
            ip[24..28].copy_from_slice(&[0xfd, 0, 0x10, 0xf4]);
            ip[36..40].copy_from_slice(&s.dst.to_be_bytes());
            f.extend_from_slice(&ip);
            push_l4(&mut f, proto, s, &payload);
        }
        _ => {
            f.extend_from_slice(&0x88b5u16.to_be_bytes());
            f.extend_from_slice(&payload);
        }
    }
    packet::fill_checksums(&mut f);
    f
}

fn push_l4(f: &mut Vec<u8>, proto: u8, s: &FrameSpec, payload: &[u8]) {
    match proto {
        ip_proto::TCP => {
            let mut h = [0u8; 20];
            h[0..2].copy_from_slice(&s.sport.to_be_bytes());
            h[2..4].copy_from_slice(&s.dport.to_be_bytes());
            h[12] = 0x50;
            h[13] = 0x02;
            f.extend_from_slice(&h);
        }
        ip_proto::UDP => {
            let mut h = [0u8; 8];
            h[0..2].copy_from_slice(&s.sport.to_be_bytes());
            h[2..4].copy_from_slice(&s.dport.to_be_bytes());
            h[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            f.extend_from_slice(&h);
        }
        _ => {
            f.extend_from_slice(&[s.sport as u8, s.dport as u8, 0, 0, 0, 1, 0, 1]);
        }
    }
    f.extend_from_slice(payload);
}
