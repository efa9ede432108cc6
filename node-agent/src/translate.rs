//! Logical flows → datapath flows: what ovn-controller does for OVN. A chassis's southbound
//! view plus its local bindings (which logical ports are which datapath ports, the tunnel)
//! become one [`FlowFile`]: tables, groups, load balancers and the Geneve tunnel port.
//!
//! Pure and deterministic: the same input gives the same (sorted) file, so reloading it
//! keeps unchanged flows. The table layout and register use are in
//! `docs/agent-translation.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use skein_datapath::conntrack::{NatAction, NatRange};
use skein_datapath::flow::{CtSpec, CtZone, Responder, TunnelPort};
use skein_datapath::flowtext::{FlowFile, format_flow};
use skein_datapath::lb::{Backend as DpBackend, LoadBalancer};
use skein_datapath::{Action as DpAction, Bucket, Field, Flow, Group, GroupKind, Match as DpMatch};
use skein_netmodel::southbound::{
    Action, ArpOp, ChassisView, DatapathKey, DatapathKind, IpProto, L3, LbId, LogicalFlow, Match, NextHop, Pipeline,
    PortBinding, PortKey, PortKind, ZoneScope,
};
use skein_netmodel::{IpFamily, IpNet, MacAddr};
use thiserror::Error;

/// Datapath table numbers.
pub mod tables {
    /// Physical → logical: a local port or the tunnel sets the datapath and ports.
    pub const CLASSIFY: u8 = 0;
    /// Logical ingress table `t` is `INGRESS + t`.
    pub const INGRESS: u8 = 8;
    /// Next-hop MAC (`eth.dst = mac(nexthop)`), resubmitted to from the router. Table
    /// `INGRESS + PIPELINE_LEN` (24) stays empty: `next` from the last ingress table ends
    /// there.
    pub const NEXT_HOP_MAC: u8 = 28;
    /// Ingress `output`: to the egress pipeline here, to the tunnel, or flood.
    pub const OUTPUT: u8 = 32;
    /// Logical egress table `t` is `EGRESS + t`.
    pub const EGRESS: u8 = 40;
    /// Egress `output`: to the local port, or through a patch into the peer's ingress.
    pub const DELIVER: u8 = 64;
    /// Number of logical tables a pipeline may use.
    pub const PIPELINE_LEN: u8 = 16;
}

/// Registers (and other key fields) the translation uses for logical metadata.
pub mod regs {
    use skein_datapath::Field;

    /// Logical datapath key.
    pub const DATAPATH: Field = Field::Metadata;
    /// Logical flags (`southbound::Flags`, low 16 bits) and [`FLOOD_COPY`].
    pub const FLAGS: Field = Field::Reg0;
    /// Next-hop IPv4 address (with [`NEXT_HOP_KIND`] = [`NEXT_HOP_IP`]).
    pub const NEXT_HOP: Field = Field::Reg1;
    /// What [`NEXT_HOP`] means: one of the `NEXT_HOP_*` values.
    pub const NEXT_HOP_KIND: Field = Field::Reg2;
    /// Hairpin conntrack zone of the input port (`inport | 0x8000`).
    pub const HAIRPIN_ZONE: Field = Field::Reg3;
    /// Logical input port key (also its conntrack zone).
    pub const INPORT: Field = Field::Reg6;
    /// Logical output port key (also its conntrack zone).
    pub const OUTPORT: Field = Field::Reg7;

    /// Flag bit in [`FLAGS`]: this copy is one of a flood's.
    pub const FLOOD_COPY: u128 = 1 << 16;
    /// `nexthop = <IPv4 address in NEXT_HOP>`.
    pub const NEXT_HOP_IP: u128 = 1;
    /// `nexthop = ip.dst`.
    pub const NEXT_HOP_DESTINATION: u128 = 2;
    /// `nexthop = uplink` (the node's gateway).
    pub const NEXT_HOP_UPLINK: u128 = 3;
}

/// Cookie of the flows that do not come from a logical flow (classification, output,
/// delivery, next-hop MACs).
pub const INFRA_COOKIE: u64 = 0x736b_6e00_0000_0000;

/// `nexthop = ip.dst` routes to prefixes of at most this many host bits get one MAC flow
/// per host; larger prefixes only for the port addresses the view holds.
const HOST_ENUM_MAX_BITS: u8 = 10;

/// The node's uplink (a gateway router's `External` port).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Uplink {
    /// Datapath port number.
    pub port: u32,
    /// The node NIC's MAC (source of frames sent through the uplink).
    pub mac: MacAddr,
    /// The MAC of the node's default gateway (`nexthop = uplink`).
    pub gateway_mac: MacAddr,
}

/// The Geneve tunnel of this chassis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tunnel {
    /// The tunnel port number flows output to and packets arrive on.
    pub port: u32,
    /// Where encapsulated frames leave.
    pub underlay_port: u32,
    /// This chassis's tunnel IP (outer source).
    pub local_ip: Ipv4Addr,
    /// Outer Ethernet source.
    pub local_mac: MacAddr,
    /// Outer Ethernet destination (the underlay next hop).
    pub next_hop_mac: MacAddr,
    /// Underlay MTU.
    pub mtu: u16,
}

/// What only the agent knows: which logical ports are which datapath ports here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalBindings {
    /// Pod ports: logical port name (`<namespace>_<pod>`) → datapath port number. A pod
    /// port without an entry is not bound yet: its packets go nowhere.
    pub ports: BTreeMap<String, u32>,
    /// The management port (`mgmt-<node>`), if bound.
    pub management_port: Option<u32>,
    /// The uplink, if bound.
    pub uplink: Option<Uplink>,
    /// The tunnel.
    pub tunnel: Tunnel,
}

/// Why one logical flow cannot be translated yet.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum Unsupported {
    /// The datapath's `ct_state` has no DNAT/SNAT bits.
    #[error("ct_state bits {0:#x} (ct.dnat/ct.snat) have no datapath equivalent")]
    CtStateBits(u8),
    /// No reject action in the datapath.
    #[error("reject has no datapath action")]
    Reject,
    /// Only IPv4 next hops get a MAC.
    #[error("IPv6 next hop {0}")]
    Ipv6NextHop(IpAddr),
    /// `nexthop = uplink` without an uplink binding.
    #[error("nexthop = uplink, but the uplink is not bound")]
    UplinkNotBound,
    /// Conntrack zones are derived from port keys for one switch and one router only.
    #[error("conntrack zone {scope} on datapath {datapath}: the zone space belongs to datapath {owner}")]
    ZoneSpaceTaken {
        /// The scope asked for.
        scope: ZoneScope,
        /// The flow's datapath.
        datapath: DatapathKey,
        /// The datapath that holds that zone space.
        owner: DatapathKey,
    },
    /// A zone scope used on the wrong kind of datapath.
    #[error("conntrack zone {0} on a datapath of the wrong kind")]
    ZoneKind(ZoneScope),
    /// A `ct_*` action not at the end of the action list.
    #[error("ct action is not the last action")]
    CtNotLast,
    /// `ct_lb` names a load balancer the view does not hold.
    #[error("load balancer {0} is not in the view")]
    UnknownLoadBalancer(String),
    /// No router port of the datapath has the source address (or it has no MAC).
    #[error("no MAC for router address {0}")]
    NoRouterMac(IpAddr),
    /// The match's address family contradicts its L3 protocol.
    #[error("address family contradicts the L3 protocol")]
    FamilyMismatch,
    /// A logical table beyond the pipeline's table range.
    #[error("logical table {0} is beyond the {len} tables of a pipeline", len = tables::PIPELINE_LEN)]
    TableOutOfRange(u8),
}

/// A logical flow that was not translated, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UntranslatedFlow {
    /// The flow.
    pub flow: LogicalFlow,
    /// Why.
    pub reason: Unsupported,
}

/// Why a view cannot be translated.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum TranslateError {
    /// Some logical flows cannot be translated (each listed with its reason).
    #[error("{} logical flows cannot be translated: {}", .0.len(), list(.0))]
    Untranslatable(Vec<UntranslatedFlow>),
    /// A port resides on a chassis the view does not list.
    #[error("port {port} resides on chassis {chassis}, which the view does not list")]
    UnknownChassis {
        /// The port.
        port: String,
        /// Its chassis.
        chassis: String,
    },
    /// A remote chassis has an IPv6 tunnel address (the tunnel port is IPv4).
    #[error("chassis {chassis} has IPv6 tunnel address {ip}")]
    Ipv6Tunnel {
        /// The chassis.
        chassis: String,
        /// Its address.
        ip: IpAddr,
    },
    /// Two load balancers hash to one datapath id.
    #[error("load balancers {a} and {b} share datapath id {id}")]
    LoadBalancerIdCollision {
        /// One.
        a: String,
        /// The other.
        b: String,
        /// The id.
        id: u32,
    },
    /// Two datapath flows with one table, priority and match.
    #[error("two flows with one table, priority and match: {0}")]
    DuplicateFlow(String),
}

fn list(flows: &[UntranslatedFlow]) -> String {
    flows.iter().map(|u| format!("[{}: {}]", u.flow, u.reason)).collect::<Vec<_>>().join(" ")
}

/// A translation that lists what it left out instead of failing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Translation {
    /// Everything that translated.
    pub file: FlowFile,
    /// The logical flows left out, sorted, each with its reason.
    pub untranslated: Vec<UntranslatedFlow>,
}

/// Translates `view` for this chassis; fails if any logical flow cannot be translated.
pub fn translate(view: &ChassisView, local: &LocalBindings) -> Result<FlowFile, TranslateError> {
    let t = translate_partial(view, local)?;
    if t.untranslated.is_empty() { Ok(t.file) } else { Err(TranslateError::Untranslatable(t.untranslated)) }
}

/// Translates what can be translated of `view` and lists the logical flows that cannot
/// (never dropping one silently). Structural problems (a port on an unknown chassis, a
/// load balancer id collision) still fail the whole translation.
pub fn translate_partial(view: &ChassisView, local: &LocalBindings) -> Result<Translation, TranslateError> {
    let cx = Context::new(view, local)?;
    let mut flows = Vec::new();
    let mut untranslated = Vec::new();
    for lf in &view.items.flows {
        match cx.logical_flow(lf) {
            Ok(mut fs) => flows.append(&mut fs),
            Err(reason) => untranslated.push(UntranslatedFlow { flow: lf.clone(), reason }),
        }
    }
    flows.extend(cx.classify_flows());
    let (mut out, groups) = cx.output_flows()?;
    flows.append(&mut out);
    flows.extend(cx.deliver_flows());
    flows.extend(cx.next_hop_flows());

    let mut keyed: Vec<(u8, std::cmp::Reverse<u16>, String, Flow)> =
        flows.into_iter().map(|f| (f.table, std::cmp::Reverse(f.priority), format_flow(&f), f)).collect();
    keyed.sort_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));
    let mut seen = BTreeSet::new();
    for (_, _, _, f) in &keyed {
        let m = format!("{:?}", f.matches.normalized());
        if !seen.insert((f.table, f.priority, m)) {
            return Err(TranslateError::DuplicateFlow(format_flow(f)));
        }
    }
    let file = FlowFile {
        flows: keyed.into_iter().map(|k| k.3).collect(),
        groups,
        load_balancers: cx.load_balancers.values().cloned().collect(),
        tunnels: vec![cx.tunnel_port()],
    };
    Ok(Translation { file, untranslated })
}

/// The datapath id of a load balancer: a hash of its identity, stable across restarts
/// and deltas (a collision is reported by the translation).
pub fn load_balancer_id(id: &LbId) -> u32 {
    let h = fnv1a(id.to_string().as_bytes());
    (h ^ (h >> 32)) as u32
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

fn v4(ip: Ipv4Addr) -> u128 {
    u128::from(u32::from(ip))
}

fn set(field: Field, value: u128) -> DpAction {
    DpAction::SetField { field, value, mask: u128::MAX }
}

fn mac(m: MacAddr) -> u128 {
    u128::from(m.to_u64())
}

/// Everything derived from the view before the flows.
struct Context<'a> {
    view: &'a ChassisView,
    local: &'a LocalBindings,
    kinds: BTreeMap<DatapathKey, DatapathKind>,
    /// Load balancers by identity string.
    load_balancers: BTreeMap<String, LoadBalancer>,
    /// The switch whose port keys are conntrack zones.
    zoned_switch: Option<DatapathKey>,
    /// The router with the DNAT and SNAT zones.
    zoned_router: Option<DatapathKey>,
}

impl<'a> Context<'a> {
    fn new(view: &'a ChassisView, local: &'a LocalBindings) -> Result<Self, TranslateError> {
        let kinds = view.items.datapaths.iter().map(|d| (d.key, d.kind)).collect();
        let mut load_balancers = BTreeMap::new();
        let mut ids: BTreeMap<u32, String> = BTreeMap::new();
        for entry in &view.items.load_balancers {
            let name = entry.id.to_string();
            let id = load_balancer_id(&entry.id);
            if let Some(other) = ids.insert(id, name.clone()) {
                return Err(TranslateError::LoadBalancerIdCollision { a: other, b: name, id });
            }
            let backends = entry
                .backends
                .iter()
                .map(|b| match b.ip {
                    IpAddr::V4(a) => DpBackend::v4(u32::from(a), b.port),
                    IpAddr::V6(a) => DpBackend { addr: a.octets(), port: b.port },
                })
                .collect();
            let affinity_timeout_ns = entry.affinity_timeout_seconds.map(|s| u64::from(s) * 1_000_000_000);
            load_balancers.insert(name, LoadBalancer { id, backends, affinity_timeout_ns });
        }
        // Zone owners: the smallest datapath key that asks for each kind of zone.
        let mut zoned_switch = None;
        let mut zoned_router = None;
        for f in &view.items.flows {
            for a in &f.actions {
                let zone = match a {
                    Action::CtNat { zone } | Action::CtLb { zone, .. } | Action::CtSnat { zone, .. } => *zone,
                    _ => continue,
                };
                let slot = match zone {
                    ZoneScope::InPort | ZoneScope::InPortHairpin | ZoneScope::OutPort => &mut zoned_switch,
                    ZoneScope::RouterDnat | ZoneScope::RouterSnat => &mut zoned_router,
                };
                if slot.is_none_or(|k: DatapathKey| f.datapath < k) {
                    *slot = Some(f.datapath);
                }
            }
        }
        let cx = Context { view, local, kinds, load_balancers, zoned_switch, zoned_router };
        // Check every remote port's chassis up front.
        for p in &view.items.ports {
            if cx.is_remote(p) {
                cx.chassis_ip(p)?;
            }
        }
        Ok(cx)
    }

    fn is_remote(&self, p: &PortBinding) -> bool {
        p.chassis.as_ref().is_some_and(|c| *c != self.view.chassis)
    }

    fn chassis_ip(&self, p: &PortBinding) -> Result<Ipv4Addr, TranslateError> {
        let name = p.chassis.clone().unwrap_or_default();
        let chassis = self
            .view
            .items
            .chassis
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| TranslateError::UnknownChassis { port: p.name.clone(), chassis: name.clone() })?;
        match chassis.tunnel_ip {
            IpAddr::V4(ip) => Ok(ip),
            ip @ IpAddr::V6(_) => Err(TranslateError::Ipv6Tunnel { chassis: name, ip }),
        }
    }

    /// The datapath port number of a local port, if bound.
    fn local_port(&self, p: &PortBinding) -> Option<u32> {
        match &p.kind {
            PortKind::Pod { .. } => self.local.ports.get(&p.name).copied(),
            PortKind::Management => self.local.management_port,
            PortKind::External => self.local.uplink.map(|u| u.port),
            PortKind::Patch { .. } => None,
        }
    }

    fn tunnel_port(&self) -> TunnelPort {
        let t = &self.local.tunnel;
        TunnelPort {
            port: t.port,
            local_ip: u32::from(t.local_ip),
            local_mac: t.local_mac.to_u64(),
            next_hop_mac: t.next_hop_mac.to_u64(),
            underlay_port: t.underlay_port,
            mtu: t.mtu,
            ttl: 64,
            icmp_src: u32::from(t.local_ip),
            icmp_src6: 0,
        }
    }

    // ---- logical flows ----

    fn logical_flow(&self, lf: &LogicalFlow) -> Result<Vec<Flow>, Unsupported> {
        let logical_table = lf.stage.table();
        if logical_table >= tables::PIPELINE_LEN {
            return Err(Unsupported::TableOutOfRange(logical_table));
        }
        let base = match lf.stage.pipeline() {
            Pipeline::Ingress => tables::INGRESS,
            Pipeline::Egress => tables::EGRESS,
        };
        let table = base + logical_table;
        let actions = self.actions(lf, table)?;
        let cookie = fnv1a(lf.owner.to_string().as_bytes());
        let matches = expand_match(&lf.matches)?;
        Ok(matches
            .into_iter()
            .map(|m| Flow {
                table,
                priority: lf.priority,
                matches: m.with(regs::DATAPATH, u128::from(lf.datapath.get())).normalized(),
                cookie,
                actions: actions.clone(),
            })
            .collect())
    }

    fn zone(&self, lf: &LogicalFlow, scope: ZoneScope) -> Result<CtZone, Unsupported> {
        let kind = self.kinds.get(&lf.datapath).copied();
        let (owner, want) = match scope {
            ZoneScope::InPort | ZoneScope::InPortHairpin | ZoneScope::OutPort => {
                (self.zoned_switch, DatapathKind::Switch)
            }
            ZoneScope::RouterDnat | ZoneScope::RouterSnat => (self.zoned_router, DatapathKind::Router),
        };
        if kind.is_some_and(|k| k != want) {
            return Err(Unsupported::ZoneKind(scope));
        }
        if let Some(owner) = owner
            && owner != lf.datapath
        {
            return Err(Unsupported::ZoneSpaceTaken { scope, datapath: lf.datapath, owner });
        }
        Ok(match scope {
            ZoneScope::InPort => CtZone::Field(regs::INPORT),
            ZoneScope::InPortHairpin => CtZone::Field(regs::HAIRPIN_ZONE),
            ZoneScope::OutPort => CtZone::Field(regs::OUTPORT),
            ZoneScope::RouterDnat => CtZone::Const(0x8000),
            ZoneScope::RouterSnat => CtZone::Const(0),
        })
    }

    fn actions(&self, lf: &LogicalFlow, table: u8) -> Result<Vec<DpAction>, Unsupported> {
        let egress = lf.stage.pipeline() == Pipeline::Egress;
        let n = lf.actions.len();
        let mut out = Vec::new();
        // `goto_table` when last (cheaper, and it must go forward), else `resubmit`.
        let jump = |last: bool, t: u8| if last { DpAction::GotoTable(t) } else { DpAction::Resubmit(t) };
        for (i, a) in lf.actions.iter().enumerate() {
            let last = i + 1 == n;
            let ct_table = || if last { Ok(Some(table + 1)) } else { Err(Unsupported::CtNotLast) };
            match a {
                Action::Next => out.push(jump(last, table + 1)),
                Action::Output if egress => out.push(jump(last, tables::DELIVER)),
                Action::Output => out.push(jump(last, tables::OUTPUT)),
                Action::Drop => out.push(DpAction::Drop),
                Action::SetOutport(p) => out.push(set(regs::OUTPORT, u128::from(p.get()))),
                Action::Flood => {
                    out.push(set(regs::OUTPORT, u128::from(PortKey::FLOOD)));
                    out.push(jump(last, tables::OUTPUT));
                }
                Action::SetEthSrc(m) => out.push(set(Field::EthSrc, mac(*m))),
                Action::SetEthDst(m) => out.push(set(Field::EthDst, mac(*m))),
                Action::SetNextHop(NextHop::Ip(IpAddr::V4(ip))) => {
                    out.push(set(regs::NEXT_HOP_KIND, regs::NEXT_HOP_IP));
                    out.push(set(regs::NEXT_HOP, v4(*ip)));
                }
                Action::SetNextHop(NextHop::Ip(ip)) => return Err(Unsupported::Ipv6NextHop(*ip)),
                Action::SetNextHop(NextHop::Destination) => {
                    out.push(set(regs::NEXT_HOP_KIND, regs::NEXT_HOP_DESTINATION))
                }
                Action::SetNextHop(NextHop::Uplink) => {
                    if self.local.uplink.is_none() {
                        return Err(Unsupported::UplinkNotBound);
                    }
                    out.push(set(regs::NEXT_HOP_KIND, regs::NEXT_HOP_UPLINK));
                }
                Action::SetEthDstForNextHop => out.push(DpAction::Resubmit(tables::NEXT_HOP_MAC)),
                Action::DecTtl => out.push(DpAction::DecTtl),
                Action::SetFlags(f) => {
                    out.push(DpAction::SetField { field: regs::FLAGS, value: u128::from(f.0), mask: u128::from(f.0) })
                }
                Action::ArpReply { mac } => out.push(DpAction::Respond(Responder::Arp { mac: mac.to_u64() })),
                Action::IcmpEchoReply => out.push(DpAction::Respond(Responder::IcmpEcho)),
                Action::IcmpTimeExceeded { source } => {
                    let port_mac = self
                        .view
                        .items
                        .ports
                        .iter()
                        .find(|p| p.datapath == lf.datapath && p.ips.iter().any(|n| n.addr() == *source))
                        .and_then(|p| match p.kind {
                            PortKind::External => self.local.uplink.map(|u| u.mac),
                            _ => p.mac,
                        })
                        .ok_or(Unsupported::NoRouterMac(*source))?;
                    let (ip, ip6) = match source {
                        IpAddr::V4(a) => (u32::from(*a), 0),
                        IpAddr::V6(a) => (0, u128::from(*a)),
                    };
                    out.push(DpAction::Respond(Responder::TimeExceeded { mac: port_mac.to_u64(), ip, ip6 }));
                }
                Action::Reject => return Err(Unsupported::Reject),
                Action::CtNat { zone } => out.push(DpAction::Ct(Box::new(CtSpec {
                    zone: self.zone(lf, *zone)?,
                    commit: false,
                    nat: Some(NatAction::Stored),
                    table: ct_table()?,
                    set_mark: None,
                    set_label: None,
                }))),
                Action::CtLb { lb, zone } => {
                    let name = lb.to_string();
                    let id = self.load_balancers.get(&name).ok_or(Unsupported::UnknownLoadBalancer(name.clone()))?.id;
                    out.push(DpAction::CtLb { lb: id, zone: self.zone(lf, *zone)?, table: ct_table()? });
                }
                Action::CtSnat { ip, zone } => {
                    let range = match ip {
                        IpAddr::V4(a) => NatRange::v4(u32::from(*a)),
                        IpAddr::V6(a) => {
                            NatRange { addr_min: a.octets(), addr_max: a.octets(), port_min: 0, port_max: 0 }
                        }
                    };
                    out.push(DpAction::Ct(Box::new(CtSpec {
                        zone: self.zone(lf, *zone)?,
                        commit: true,
                        nat: Some(NatAction::Src(range)),
                        table: ct_table()?,
                        set_mark: None,
                        set_label: None,
                    })));
                }
            }
        }
        Ok(out)
    }

    // ---- infrastructure ----

    fn infra(table: u8, priority: u16, matches: DpMatch, actions: Vec<DpAction>) -> Flow {
        Flow { table, priority, matches: matches.normalized(), cookie: INFRA_COOKIE, actions }
    }

    /// Entering a datapath's ingress with `inport = key`.
    fn enter_ingress(datapath: DatapathKey, key: PortKey) -> Vec<DpAction> {
        let k = u128::from(key.get());
        vec![
            set(regs::DATAPATH, u128::from(datapath.get())),
            set(regs::INPORT, k),
            set(regs::HAIRPIN_ZONE, k | 0x8000),
            set(Field::TunIngressPort, k),
        ]
    }

    fn classify_flows(&self) -> Vec<Flow> {
        let mut flows = vec![Self::infra(tables::CLASSIFY, 0, DpMatch::ANY, vec![DpAction::Drop])];
        for p in &self.view.items.ports {
            if let Some(n) = self.local_port(p) {
                let mut actions = Self::enter_ingress(p.datapath, p.key);
                actions.push(DpAction::GotoTable(tables::INGRESS));
                flows.push(Self::infra(
                    tables::CLASSIFY,
                    100,
                    DpMatch::ANY.with(Field::InPort, u128::from(n)),
                    actions,
                ));
            }
            // OVN's remote output: a port that resides here receives its datapath's
            // egress pipeline from other chassis.
            if p.chassis.as_deref() == Some(self.view.chassis.as_str()) {
                let m = DpMatch::ANY
                    .with(Field::InPort, u128::from(self.local.tunnel.port))
                    .with(Field::TunId, u128::from(p.datapath.get()))
                    .with(Field::TunEgressPort, u128::from(p.key.get()));
                let actions = vec![
                    set(regs::DATAPATH, u128::from(p.datapath.get())),
                    set(regs::INPORT, 0),
                    set(regs::OUTPORT, u128::from(p.key.get())),
                    DpAction::GotoTable(tables::EGRESS),
                ];
                flows.push(Self::infra(tables::CLASSIFY, 100, m, actions));
            }
        }
        flows
    }

    fn output_flows(&self) -> Result<(Vec<Flow>, Vec<Group>), TranslateError> {
        let mut flows = vec![Self::infra(tables::OUTPUT, 0, DpMatch::ANY, vec![DpAction::Drop])];
        let mut groups = Vec::new();
        for p in &self.view.items.ports {
            let m = DpMatch::ANY
                .with(regs::DATAPATH, u128::from(p.datapath.get()))
                .with(regs::OUTPORT, u128::from(p.key.get()));
            let actions = if self.is_remote(p) {
                vec![
                    set(Field::TunId, u128::from(p.datapath.get())),
                    set(Field::TunDst, v4(self.chassis_ip(p)?)),
                    set(Field::TunEgressPort, u128::from(p.key.get())),
                    DpAction::Output(self.local.tunnel.port),
                ]
            } else {
                vec![DpAction::GotoTable(tables::EGRESS)]
            };
            flows.push(Self::infra(tables::OUTPUT, 100, m, actions));
        }
        // Flood: one `all` group per switch, a bucket per port present here.
        for d in &self.view.items.datapaths {
            if d.kind != DatapathKind::Switch {
                continue;
            }
            let buckets = self
                .view
                .items
                .ports
                .iter()
                .filter(|p| p.datapath == d.key && !self.is_remote(p))
                .map(|p| Bucket {
                    weight: 1,
                    actions: vec![
                        set(regs::OUTPORT, u128::from(p.key.get())),
                        DpAction::SetField { field: regs::FLAGS, value: regs::FLOOD_COPY, mask: regs::FLOOD_COPY },
                        DpAction::Resubmit(tables::EGRESS),
                    ],
                })
                .collect();
            groups.push(Group { id: d.key.get(), kind: GroupKind::All, buckets });
            let m = DpMatch::ANY
                .with(regs::DATAPATH, u128::from(d.key.get()))
                .with(regs::OUTPORT, u128::from(PortKey::FLOOD));
            flows.push(Self::infra(tables::OUTPUT, 100, m, vec![DpAction::Group(d.key.get())]));
        }
        Ok((flows, groups))
    }

    fn deliver_flows(&self) -> Vec<Flow> {
        let mut flows = vec![Self::infra(tables::DELIVER, 0, DpMatch::ANY, vec![DpAction::Drop])];
        for p in self.view.items.ports.iter().filter(|p| !self.is_remote(p)) {
            let k = u128::from(p.key.get());
            let m = DpMatch::ANY.with(regs::DATAPATH, u128::from(p.datapath.get())).with(regs::OUTPORT, k);
            // A flood does not go back out of its input port.
            let back = m.with(regs::INPORT, k).with_masked(regs::FLAGS, regs::FLOOD_COPY, regs::FLOOD_COPY);
            flows.push(Self::infra(tables::DELIVER, 110, back, vec![DpAction::Drop]));
            let actions = match &p.kind {
                PortKind::Patch { peer_datapath, peer_port } => {
                    let mut a = Self::enter_ingress(*peer_datapath, *peer_port);
                    a.extend([
                        set(regs::OUTPORT, 0),
                        set(regs::FLAGS, 0),
                        set(regs::NEXT_HOP, 0),
                        set(regs::NEXT_HOP_KIND, 0),
                        DpAction::Resubmit(tables::INGRESS),
                    ]);
                    a
                }
                PortKind::External => match self.local.uplink {
                    Some(u) => vec![set(Field::EthSrc, mac(u.mac)), DpAction::Output(u.port)],
                    None => continue,
                },
                PortKind::Pod { .. } | PortKind::Management => match self.local_port(p) {
                    Some(n) => vec![DpAction::Output(n)],
                    None => continue,
                },
            };
            flows.push(Self::infra(tables::DELIVER, 100, m, actions));
        }
        flows
    }

    /// `eth.dst = mac(nexthop)` per router: explicit next hops, the uplink gateway, and
    /// for `nexthop = ip.dst` every host of small connected prefixes (at most
    /// 2^HOST_ENUM_MAX_BITS) or else the port addresses of the view inside the prefix.
    fn next_hop_flows(&self) -> Vec<Flow> {
        let mut explicit: BTreeSet<(DatapathKey, Ipv4Addr)> = BTreeSet::new();
        let mut hosts: BTreeSet<(DatapathKey, Ipv4Addr)> = BTreeSet::new();
        let mut uplink: BTreeSet<DatapathKey> = BTreeSet::new();
        for f in &self.view.items.flows {
            for a in &f.actions {
                match a {
                    Action::SetNextHop(NextHop::Ip(IpAddr::V4(ip))) => {
                        explicit.insert((f.datapath, *ip));
                    }
                    Action::SetNextHop(NextHop::Uplink) => {
                        uplink.insert(f.datapath);
                    }
                    Action::SetNextHop(NextHop::Destination) => {
                        if let Some(net) = f.matches.ip_dst
                            && net.family() == IpFamily::V4
                        {
                            self.hosts_of(f.datapath, &net, &mut hosts);
                        }
                    }
                    _ => {}
                }
            }
        }
        let mut flows = Vec::new();
        for (d, ip) in explicit {
            let m = DpMatch::ANY
                .with(regs::DATAPATH, u128::from(d.get()))
                .with(regs::NEXT_HOP_KIND, regs::NEXT_HOP_IP)
                .with(regs::NEXT_HOP, v4(ip));
            flows.push(Self::infra(
                tables::NEXT_HOP_MAC,
                100,
                m,
                vec![set(Field::EthDst, mac(MacAddr::derived(ip.into())))],
            ));
        }
        for (d, ip) in hosts {
            let m = DpMatch::ANY
                .with(regs::DATAPATH, u128::from(d.get()))
                .with(regs::NEXT_HOP_KIND, regs::NEXT_HOP_DESTINATION)
                .with(Field::EthType, 0x0800)
                .with(Field::Ipv4Dst, v4(ip));
            flows.push(Self::infra(
                tables::NEXT_HOP_MAC,
                100,
                m,
                vec![set(Field::EthDst, mac(MacAddr::derived(ip.into())))],
            ));
        }
        if let Some(u) = self.local.uplink {
            for d in uplink {
                let m = DpMatch::ANY
                    .with(regs::DATAPATH, u128::from(d.get()))
                    .with(regs::NEXT_HOP_KIND, regs::NEXT_HOP_UPLINK);
                flows.push(Self::infra(tables::NEXT_HOP_MAC, 100, m, vec![set(Field::EthDst, mac(u.gateway_mac))]));
            }
        }
        flows
    }

    fn hosts_of(&self, d: DatapathKey, net: &IpNet, out: &mut BTreeSet<(DatapathKey, Ipv4Addr)>) {
        if net.host_bits() <= HOST_ENUM_MAX_BITS {
            for i in 0..net.size() {
                if let Some(IpAddr::V4(ip)) = net.nth(i) {
                    out.insert((d, ip));
                }
            }
        } else {
            for p in &self.view.items.ports {
                for n in &p.ips {
                    if let IpAddr::V4(ip) = n.addr()
                        && net.contains(n.addr())
                    {
                        out.insert((d, ip));
                    }
                }
            }
        }
    }
}

/// A logical match as one or more datapath matches (without the datapath): `ip` (either
/// family) becomes one match per family.
fn expand_match(m: &Match) -> Result<Vec<DpMatch>, Unsupported> {
    let addr_family = m.ip_src.or(m.ip_dst).map(|n| n.family());
    if let (Some(a), Some(b)) = (m.ip_src, m.ip_dst)
        && a.family() != b.family()
    {
        return Err(Unsupported::FamilyMismatch);
    }
    // Fields imply their prerequisites, as in OVN.
    let wants_arp = m.arp_op.is_some() || m.arp_sha.is_some() || m.arp_spa.is_some() || m.arp_tpa.is_some();
    let wants_ip =
        addr_family.is_some() || m.ttl_expiring || m.ip_proto.is_some() || m.icmp_type.is_some() || m.l4_dst.is_some();
    let l3 = match m.l3 {
        None if wants_arp => Some(L3::Arp),
        None if wants_ip => Some(L3::Ip),
        l3 => l3,
    };
    let both = vec![Some(Some(IpFamily::V4)), Some(Some(IpFamily::V6))];
    // L3 alternatives: None = no eth_type, Some(None) = ARP, Some(Some(family)).
    let l3: Vec<Option<Option<IpFamily>>> = match (l3, addr_family) {
        (Some(L3::Arp), _) if wants_ip => return Err(Unsupported::FamilyMismatch),
        (Some(L3::Ip4 | L3::Ip6 | L3::Ip), _) if wants_arp => return Err(Unsupported::FamilyMismatch),
        (Some(L3::Arp), _) => vec![Some(None)],
        (Some(L3::Ip4), Some(IpFamily::V6)) | (Some(L3::Ip6), Some(IpFamily::V4)) => {
            return Err(Unsupported::FamilyMismatch);
        }
        (Some(L3::Ip4), _) => vec![Some(Some(IpFamily::V4))],
        (Some(L3::Ip6), _) => vec![Some(Some(IpFamily::V6))],
        (Some(L3::Ip), Some(f)) => vec![Some(Some(f))],
        (Some(L3::Ip), None) => both,
        (None, _) => vec![None],
    };
    let ct_state = ct_state(m.ct_state.value.0, m.ct_state.mask.0)?;
    let mut out = Vec::new();
    for alt in l3 {
        let mut d = DpMatch::ANY;
        if let Some(p) = m.inport {
            d = d.with(regs::INPORT, u128::from(p.get()));
        }
        if let Some(p) = m.outport {
            d = d.with(regs::OUTPORT, u128::from(p.get()));
        }
        if let Some(a) = m.eth_src {
            d = d.with(Field::EthSrc, mac(a));
        }
        if let Some(a) = m.eth_dst {
            d = d.with(Field::EthDst, mac(a));
        }
        match alt {
            None => {}
            Some(None) => {
                d = d.with(Field::EthType, 0x0806);
                if let Some(op) = m.arp_op {
                    d = d.with(Field::ArpOp, if op == ArpOp::Request { 1 } else { 2 });
                }
                if let Some(a) = m.arp_sha {
                    d = d.with(Field::ArpSha, mac(a));
                }
                if let Some(a) = m.arp_spa {
                    d = d.with(Field::ArpSpa, v4(a));
                }
                if let Some(a) = m.arp_tpa {
                    d = d.with(Field::ArpTpa, v4(a));
                }
            }
            Some(Some(family)) => {
                let v6 = family == IpFamily::V6;
                d = d.with(Field::EthType, if v6 { 0x86dd } else { 0x0800 });
                let (src, dst) = if v6 { (Field::Ipv6Src, Field::Ipv6Dst) } else { (Field::Ipv4Src, Field::Ipv4Dst) };
                if let Some(n) = m.ip_src {
                    d = prefix(d, src, &n);
                }
                if let Some(n) = m.ip_dst {
                    d = prefix(d, dst, &n);
                }
                if m.ttl_expiring {
                    d = d.with_masked(Field::NwTtl, 0, 0xfe);
                }
                if let Some(p) = m.ip_proto {
                    let proto = match p {
                        IpProto::Tcp => 6,
                        IpProto::Udp => 17,
                        IpProto::Sctp => 132,
                        IpProto::Icmp if v6 => 58,
                        IpProto::Icmp => 1,
                    };
                    d = d.with(Field::NwProto, proto);
                }
                if let Some(t) = m.icmp_type {
                    d = d.with(Field::IcmpType, u128::from(t));
                }
                if let Some(port) = m.l4_dst {
                    d = d.with(Field::TpDst, u128::from(port));
                }
            }
        }
        if let Some((value, mask)) = ct_state {
            d = d.with_masked(Field::CtState, value, mask);
        }
        if m.flags.mask.0 != 0 {
            d = d.with_masked(regs::FLAGS, u128::from(m.flags.value.0), u128::from(m.flags.mask.0));
        }
        out.push(d);
    }
    Ok(out)
}

fn prefix(d: DpMatch, field: Field, net: &IpNet) -> DpMatch {
    let bits = u32::from(net.family().bits());
    let len = u32::from(net.prefix_len());
    let mask = if len == 0 { 0 } else { (u128::MAX << (128 - len)) >> (128 - bits) };
    let value = match net.addr() {
        IpAddr::V4(a) => v4(a),
        IpAddr::V6(a) => u128::from(a),
    };
    d.with_masked(field, value, mask)
}

/// Logical `ct_state` bits → the datapath's, or the bits that have no equivalent.
fn ct_state(value: u8, mask: u8) -> Result<Option<(u128, u128)>, Unsupported> {
    use skein_datapath::key::ct_state as dp;
    const MAP: [(u8, u8); 6] = [(1, dp::TRK), (2, dp::NEW), (4, dp::EST), (8, dp::REL), (16, dp::RPL), (32, dp::INV)];
    let unknown = mask & !0x3f;
    if unknown != 0 {
        return Err(Unsupported::CtStateBits(unknown));
    }
    if mask == 0 {
        return Ok(None);
    }
    let (mut v, mut m) = (0u8, 0u8);
    for (logical, physical) in MAP {
        if mask & logical != 0 {
            m |= physical;
            if value & logical != 0 {
                v |= physical;
            }
        }
    }
    Ok(Some((u128::from(v), u128::from(m))))
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use skein_datapath::exec::CollectSink;
    use skein_datapath::flowtext::{format_flow_file, parse_flow_file};
    use skein_datapath::packet::fill_checksums;
    use skein_datapath::{Datapath, DatapathConfig, FlowMod, datapath::Packet};
    use skein_netmodel::ClusterChange::*;
    use skein_netmodel::annotations::{ChassisAnnotation, Encap, PodNetwork};
    use skein_netmodel::cluster::{
        AddressType, ContainerPort, Endpoint, EndpointConditions, EndpointPort, EndpointSlice, Labels, Node, Pod,
        PortRef, Protocol, Service, ServicePort, ServiceType, SessionAffinity, TrafficPolicy,
    };
    use skein_netmodel::{Engine, NetworkConfig};

    use super::*;

    // ---- the cluster: nodes a (10.244.0.0/24) and b (10.244.1.0/24) ----

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn node(name: &str, index: u8, tunnel: &str) -> Node {
        Node {
            name: name.into(),
            internal_ips: vec![ip(&format!("192.0.2.{}", 10 + index))],
            subnets: vec![format!("10.244.{index}.0/24").parse().unwrap()],
            chassis: Some(ChassisAnnotation {
                id: format!("uuid-{name}"),
                tunnel_ip: ip(tunnel),
                encap: Encap::Geneve,
            }),
            zone: None,
        }
    }

    fn pod(name: &str, node: &str, subnet: u8, host: u8) -> Pod {
        let addr = ip(&format!("10.244.{subnet}.{host}"));
        Pod {
            namespace: "default".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            node: Some(node.into()),
            labels: Labels::new(),
            host_network: false,
            terminal: false,
            ports: vec![ContainerPort { name: Some("http".into()), port: 8080, protocol: Protocol::Tcp }],
            network: Some(PodNetwork {
                ip_addresses: vec![IpNet::new(addr, 24).unwrap()],
                mac_address: MacAddr::derived(addr),
                gateway_ips: vec![ip(&format!("10.244.{subnet}.1"))],
                routes: vec![],
                mtu: 1400,
            }),
        }
    }

    fn service(name: &str, vip: &str, port: u16, node_port: Option<u16>, affinity: bool) -> Service {
        Service {
            namespace: "default".into(),
            name: name.into(),
            service_type: if node_port.is_some() { ServiceType::NodePort } else { ServiceType::ClusterIp },
            cluster_ips: vec![ip(vip)],
            ports: vec![ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port,
                target_port: PortRef::Name("http".into()),
                node_port,
            }],
            selector: Some(Labels::new()),
            external_ips: vec![],
            load_balancer_ips: vec![],
            external_traffic_policy: TrafficPolicy::Cluster,
            internal_traffic_policy: TrafficPolicy::Cluster,
            session_affinity: if affinity {
                SessionAffinity::ClientIp { timeout_seconds: 600 }
            } else {
                SessionAffinity::None
            },
        }
    }

    fn slice(name: &str, service: &str, endpoints: &[(&str, &str)]) -> EndpointSlice {
        EndpointSlice {
            namespace: "default".into(),
            name: name.into(),
            service_name: Some(service.into()),
            address_type: AddressType::Ipv4,
            ports: vec![EndpointPort { name: "http".into(), port: Some(8080), protocol: Protocol::Tcp }],
            endpoints: endpoints
                .iter()
                .map(|(a, n)| Endpoint {
                    addresses: vec![ip(a)],
                    conditions: EndpointConditions { ready: Some(true), serving: Some(true), terminating: Some(false) },
                    node: Some((*n).into()),
                    zone: None,
                })
                .collect(),
        }
    }

    const TUNNEL_A: &str = "198.51.100.1";
    const TUNNEL_B: &str = "198.51.100.2";

    /// Two nodes, pods p1 (10.244.0.3) and p2 (10.244.0.4) on a, q1 (10.244.1.3) on b;
    /// Service web 10.96.0.10:80 → p2:8080.
    fn engine() -> Engine {
        let mut e = Engine::new(NetworkConfig::default()).unwrap();
        e.apply([
            UpsertNode(node("a", 0, TUNNEL_A)),
            UpsertNode(node("b", 1, TUNNEL_B)),
            UpsertPod(pod("p1", "a", 0, 3)),
            UpsertPod(pod("p2", "a", 0, 4)),
            UpsertPod(pod("q1", "b", 1, 3)),
            UpsertService(service("web", "10.96.0.10", 80, None, false)),
            UpsertEndpointSlice(slice("web-1", "web", &[("10.244.0.4", "a")])),
        ]);
        assert_eq!(e.issues().count(), 0);
        e
    }

    const TUN: u32 = 100;
    const UNDERLAY: u32 = 101;
    const MGMT: u32 = 50;
    const UPLINK: u32 = 51;

    fn mac_of(s: &str) -> MacAddr {
        MacAddr::derived(ip(s))
    }

    /// Chassis a: p1 on port 1, p2 on port 2. Chassis b: q1 on port 1.
    fn bindings(chassis: &str) -> LocalBindings {
        let (ports, local_ip): (&[(&str, u32)], &str) = match chassis {
            "a" => (&[("default_p1", 1), ("default_p2", 2)], TUNNEL_A),
            _ => (&[("default_q1", 1)], TUNNEL_B),
        };
        LocalBindings {
            ports: ports.iter().map(|(n, p)| (n.to_string(), *p)).collect(),
            management_port: Some(MGMT),
            uplink: Some(Uplink {
                port: UPLINK,
                mac: MacAddr([0x02, 0, 0, 0, 0, 0x11]),
                gateway_mac: MacAddr([0x02, 0, 0, 0, 0, 0xfe]),
            }),
            tunnel: Tunnel {
                port: TUN,
                underlay_port: UNDERLAY,
                local_ip: local_ip.parse().unwrap(),
                local_mac: MacAddr([0x02, 0, 0, 0, 0, 0x01]),
                next_hop_mac: MacAddr([0x02, 0, 0, 0, 0, 0x02]),
                mtu: 1500,
            },
        }
    }

    /// The datapath of `chassis` with its translated view installed.
    fn datapath_of(e: &Engine, chassis: &str) -> (Datapath, Translation) {
        let view = e.snapshot(chassis).unwrap();
        let t = translate_partial(&view, &bindings(chassis)).unwrap();
        let dp = Datapath::new(DatapathConfig::default());
        if let Err((i, err, _)) = dp.apply(&t.file.to_mods()) {
            panic!("modification {i} refused: {err}");
        }
        (dp, t)
    }

    fn run(dp: &Datapath, packets: Vec<Packet>) -> Vec<(usize, u32, Vec<u8>)> {
        let mut worker = dp.worker();
        let mut packets = packets;
        let mut sink = CollectSink::default();
        dp.process_batch(&mut worker, &mut packets, 1_000_000, &mut sink);
        sink.outputs
    }

    fn tcp(eth_src: MacAddr, eth_dst: MacAddr, src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&eth_dst.0);
        f.extend_from_slice(&eth_src.0);
        f.extend_from_slice(&[0x08, 0x00]);
        let mut ipv4 = [0u8; 20];
        ipv4[0] = 0x45;
        ipv4[2..4].copy_from_slice(&40u16.to_be_bytes());
        ipv4[8] = 64;
        ipv4[9] = 6;
        ipv4[12..16].copy_from_slice(&src.parse::<Ipv4Addr>().unwrap().octets());
        ipv4[16..20].copy_from_slice(&dst.parse::<Ipv4Addr>().unwrap().octets());
        f.extend_from_slice(&ipv4);
        let mut t = [0u8; 20];
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        t[4..8].copy_from_slice(&1000u32.to_be_bytes());
        t[12] = 0x50;
        t[13] = flags;
        t[14..16].copy_from_slice(&1024u16.to_be_bytes());
        f.extend_from_slice(&t);
        fill_checksums(&mut f);
        f
    }

    fn arp_request(sha: MacAddr, spa: &str, tpa: &str) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&[0xff; 6]);
        f.extend_from_slice(&sha.0);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
        f.extend_from_slice(&sha.0);
        f.extend_from_slice(&spa.parse::<Ipv4Addr>().unwrap().octets());
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&tpa.parse::<Ipv4Addr>().unwrap().octets());
        f
    }

    fn eth_dst(f: &[u8]) -> MacAddr {
        MacAddr(f[0..6].try_into().unwrap())
    }

    fn eth_src(f: &[u8]) -> MacAddr {
        MacAddr(f[6..12].try_into().unwrap())
    }

    fn ip_dst(f: &[u8]) -> Ipv4Addr {
        Ipv4Addr::from(<[u8; 4]>::try_from(&f[30..34]).unwrap())
    }

    fn ip_src(f: &[u8]) -> Ipv4Addr {
        Ipv4Addr::from(<[u8; 4]>::try_from(&f[26..30]).unwrap())
    }

    const SYN: u8 = 0x02;
    const SYN_ACK: u8 = 0x12;

    #[test]
    fn pod_to_pod_on_the_same_node_is_delivered_to_the_local_port() {
        let (dp, _) = datapath_of(&engine(), "a");
        let frame = tcp(mac_of("10.244.0.3"), mac_of("10.244.0.4"), "10.244.0.3", "10.244.0.4", 40000, 8080, SYN);
        let out = run(&dp, vec![Packet::new(frame.clone(), 1)]);
        assert_eq!(out, vec![(0, 2, frame)], "switched unchanged to p2's port");
    }

    #[test]
    fn pod_to_pod_on_another_node_is_routed_and_tunnelled_then_delivered_there() {
        let e = engine();
        let (dp_a, _) = datapath_of(&e, "a");
        let gateway = mac_of("10.244.0.1");
        let frame = tcp(mac_of("10.244.0.3"), gateway, "10.244.0.3", "10.244.1.3", 40000, 8080, SYN);
        let out = run(&dp_a, vec![Packet::new(frame, 1)]);
        assert_eq!(out.len(), 1, "{out:?}");
        let (_, port, wire) = &out[0];
        assert_eq!(*port, UNDERLAY);
        let (meta, inner_at) = skein_datapath::geneve::decap(wire).unwrap();
        // VNI = cluster-router (1); ingress = rtos-a (2), egress = rtos-b (3).
        assert_eq!((meta.vni, meta.ingress, meta.egress), (1, 2, 3));
        assert_eq!(Ipv4Addr::from(meta.dst), TUNNEL_B.parse::<Ipv4Addr>().unwrap());
        assert_eq!(Ipv4Addr::from(meta.src), TUNNEL_A.parse::<Ipv4Addr>().unwrap());
        let inner = &wire[inner_at..];
        assert_eq!(eth_src(inner), mac_of("10.244.1.1"), "routed: source is rtos-b");
        assert_eq!(eth_dst(inner), mac_of("10.244.1.3"), "destination MAC derived from the IP");
        assert_eq!(inner[22], 63, "TTL decremented once");

        // Chassis b runs the router's egress and node-b's switch, and delivers to q1.
        let (dp_b, _) = datapath_of(&e, "b");
        let arrived = Packet::from_geneve(wire, TUN).unwrap();
        let expected = arrived.data.clone();
        let out = run(&dp_b, vec![arrived]);
        assert_eq!(out, vec![(0, 1, expected)]);
    }

    #[test]
    fn service_cluster_ip_is_load_balanced_and_the_reply_un_nated() {
        let (dp, _) = datapath_of(&engine(), "a");
        let gateway = mac_of("10.244.0.1");
        let syn = tcp(mac_of("10.244.0.3"), gateway, "10.244.0.3", "10.96.0.10", 40000, 80, SYN);
        let out = run(&dp, vec![Packet::new(syn, 1)]);
        assert_eq!(out.len(), 1, "{out:?}");
        let (_, port, f) = &out[0];
        assert_eq!(*port, 2, "to p2, the only backend");
        assert_eq!(ip_dst(f), "10.244.0.4".parse::<Ipv4Addr>().unwrap());
        assert_eq!(u16::from_be_bytes([f[36], f[37]]), 8080);
        assert_eq!(eth_dst(f), mac_of("10.244.0.4"));
        assert_eq!(eth_src(f), gateway, "routed through the cluster router");
        assert!(skein_datapath::packet::checksums_valid(f));

        // p2 answers p1 directly; p1 sees the VIP.
        let reply = tcp(mac_of("10.244.0.4"), mac_of("10.244.0.3"), "10.244.0.4", "10.244.0.3", 8080, 40000, SYN_ACK);
        let out = run(&dp, vec![Packet::new(reply, 2)]);
        assert_eq!(out.len(), 1, "{out:?}");
        let (_, port, f) = &out[0];
        assert_eq!(*port, 1);
        assert_eq!(ip_src(f), "10.96.0.10".parse::<Ipv4Addr>().unwrap());
        assert_eq!(u16::from_be_bytes([f[34], f[35]]), 80);
    }

    #[test]
    fn arp_for_the_gateway_is_answered() {
        let (dp, _) = datapath_of(&engine(), "a");
        let p1 = mac_of("10.244.0.3");
        let out = run(&dp, vec![Packet::new(arp_request(p1, "10.244.0.3", "10.244.0.1"), 1)]);
        assert_eq!(out.len(), 1, "{out:?}");
        let (_, port, f) = &out[0];
        assert_eq!(*port, 1, "answered out of the asking port");
        assert_eq!(eth_dst(f), p1);
        assert_eq!(u16::from_be_bytes([f[20], f[21]]), 2, "ARP reply");
        assert_eq!(MacAddr(f[22..28].try_into().unwrap()), mac_of("10.244.0.1"));
        assert_eq!(&f[28..32], &[10, 244, 0, 1]);
    }

    #[test]
    fn a_broadcast_floods_the_local_ports_of_the_switch_except_its_source() {
        let (dp, _) = datapath_of(&engine(), "a");
        let out = run(&dp, vec![Packet::new(arp_request(mac_of("10.244.0.3"), "10.244.0.3", "10.244.0.9"), 1)]);
        let ports: Vec<u32> = out.iter().map(|(_, p, _)| *p).collect();
        // In port key order: the management port (key 2), p2 (key 4); not back to p1, and
        // the copy to the router goes nowhere (not IP, not for a router address).
        assert_eq!(ports, [MGMT, 2], "{out:?}");
    }

    #[test]
    fn pod_egress_leaves_through_the_gateway_router_snatted_to_the_node_ip() {
        let (dp, _) = datapath_of(&engine(), "a");
        let frame = tcp(mac_of("10.244.0.3"), mac_of("10.244.0.1"), "10.244.0.3", "8.8.8.8", 40000, 443, SYN);
        let out = run(&dp, vec![Packet::new(frame, 1)]);
        assert_eq!(out.len(), 1, "{out:?}");
        let (_, port, f) = &out[0];
        let uplink = bindings("a").uplink.unwrap();
        assert_eq!(*port, UPLINK);
        assert_eq!(ip_src(f), "192.0.2.10".parse::<Ipv4Addr>().unwrap(), "SNAT to the node IP");
        assert_eq!(ip_dst(f), "8.8.8.8".parse::<Ipv4Addr>().unwrap());
        assert_eq!((eth_src(f), eth_dst(f)), (uplink.mac, uplink.gateway_mac));
        assert_eq!(f[22], 62, "two routers");
    }

    #[test]
    fn a_spoofed_source_is_dropped() {
        let (dp, _) = datapath_of(&engine(), "a");
        let frame = tcp(mac_of("10.244.0.3"), mac_of("10.244.0.4"), "10.244.0.9", "10.244.0.4", 40000, 8080, SYN);
        assert!(run(&dp, vec![Packet::new(frame, 1)]).is_empty());
    }

    #[test]
    fn translation_is_deterministic_and_round_trips_through_the_flow_syntax() {
        let e = engine();
        for chassis in ["a", "b"] {
            let view = e.snapshot(chassis).unwrap();
            let one = translate_partial(&view, &bindings(chassis)).unwrap();
            let two = translate_partial(&view, &bindings(chassis)).unwrap();
            assert_eq!(one, two);
            let text = format_flow_file(&one.file);
            assert_eq!(text, format_flow_file(&two.file));
            // What `Control::reload` would read back is the same file.
            assert_eq!(parse_flow_file(&text).unwrap(), one.file);
            // Sorted: by table, then priority (highest first).
            let order: Vec<(u8, std::cmp::Reverse<u16>)> =
                one.file.flows.iter().map(|f| (f.table, std::cmp::Reverse(f.priority))).collect();
            assert!(order.windows(2).all(|w| w[0] <= w[1]));
        }
    }

    #[test]
    fn what_cannot_be_translated_is_listed_not_dropped() {
        let e = engine();
        let view = e.snapshot("a").unwrap();
        let t = translate_partial(&view, &bindings("a")).unwrap();
        // The hairpin SNAT flows match ct.dnat, which the datapath's ct_state lacks.
        assert_eq!(t.untranslated.len(), 2, "{:?}", t.untranslated);
        assert!(t.untranslated.iter().all(|u| u.reason == Unsupported::CtStateBits(0x40)));
        match translate(&view, &bindings("a")) {
            Err(TranslateError::Untranslatable(list)) => assert_eq!(list, t.untranslated),
            other => panic!("{other:?}"),
        }
        // Every other logical flow produced at least one datapath flow.
        let cookies: BTreeSet<u64> = t.file.flows.iter().map(|f| f.cookie).collect();
        for f in &view.items.flows {
            if !t.untranslated.iter().any(|u| &u.flow == f) {
                assert!(cookies.contains(&fnv1a(f.owner.to_string().as_bytes())), "{f}");
            }
        }
    }

    /// Richer clusters (NodePort, session affinity, more nodes and pods): every flow,
    /// group, load balancer and tunnel the translation emits is accepted by the pipeline,
    /// as a whole and one flow at a time.
    #[test]
    fn every_emitted_flow_is_accepted_by_the_pipeline() {
        for nodes in 1..=4u8 {
            let mut e = Engine::new(NetworkConfig::default()).unwrap();
            let names: Vec<String> = (0..nodes).map(|i| format!("n{i}")).collect();
            let mut changes = Vec::new();
            for (i, n) in names.iter().enumerate() {
                changes.push(UpsertNode(node(n, i as u8, &format!("198.51.100.{}", 10 + i))));
                for host in 3..3 + i as u8 + 1 {
                    changes.push(UpsertPod(pod(&format!("{n}-p{host}"), n, i as u8, host)));
                }
            }
            changes.push(UpsertService(service("web", "10.96.0.10", 80, Some(30080), true)));
            changes.push(UpsertEndpointSlice(slice("web-1", "web", &[("10.244.0.3", "n0")])));
            changes.push(UpsertService(service("empty", "10.96.0.11", 81, None, false)));
            e.apply(changes);
            for n in &names {
                let view = e.snapshot(n).unwrap();
                let mut local = bindings("a");
                local.ports = view
                    .items
                    .ports
                    .iter()
                    .filter(|p| matches!(p.kind, PortKind::Pod { .. }))
                    .zip(1..)
                    .map(|(p, i)| (p.name.clone(), i))
                    .collect();
                let t = translate_partial(&view, &local).unwrap();
                assert!(
                    t.untranslated.iter().all(|u| u.reason == Unsupported::CtStateBits(0x40)),
                    "{:?}",
                    t.untranslated
                );
                let dp = Datapath::new(DatapathConfig::default());
                if let Err((i, err, _)) = dp.apply(&t.file.to_mods()) {
                    panic!("{n}: modification {i} refused: {err}");
                }
                let mut prerequisites: Vec<FlowMod> = Vec::new();
                prerequisites.extend(t.file.tunnels.iter().copied().map(FlowMod::AddTunnelPort));
                prerequisites.extend(t.file.load_balancers.iter().cloned().map(FlowMod::AddLoadBalancer));
                prerequisites.extend(t.file.groups.iter().cloned().map(FlowMod::AddGroup));
                for f in &t.file.flows {
                    let alone = Datapath::new(DatapathConfig::default());
                    let mut mods = prerequisites.clone();
                    mods.push(FlowMod::AddFlow(f.clone()));
                    assert!(alone.apply(&mods).is_ok(), "{n}: refused {}", format_flow(f));
                }
            }
        }
    }

    #[test]
    fn matches_imply_their_prerequisites() {
        use skein_netmodel::southbound::{CtState, Flags, IpProto};
        let tpa = Match { arp_tpa: Some("10.0.0.1".parse().unwrap()), ..Match::any() };
        let m = expand_match(&tpa).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].value.get(Field::EthType), 0x0806);
        assert_eq!(m[0].value.get(Field::ArpTpa), 0x0a00_0001);
        // A port without a family: both families, with the protocol of each.
        let icmp = Match { ip_proto: Some(IpProto::Icmp), icmp_type: Some(8), ..Match::any() };
        let m = expand_match(&icmp).unwrap();
        let types: Vec<(u128, u128)> =
            m.iter().map(|d| (d.value.get(Field::EthType), d.value.get(Field::NwProto))).collect();
        assert_eq!(types, [(0x0800, 1), (0x86dd, 58)]);
        // Prefixes, TTL, ct_state and flags.
        let m = Match::any()
            .ip_dst("10.244.0.0/16".parse().unwrap())
            .ct_set(CtState::TRACKED)
            .ct_set(CtState::ESTABLISHED)
            .flags_set(Flags::FORCE_SNAT);
        let m = Match { ttl_expiring: true, ..m };
        let d = &expand_match(&m).unwrap()[0];
        assert_eq!((d.value.get(Field::Ipv4Dst), d.mask.get(Field::Ipv4Dst)), (0x0af4_0000, 0xffff_0000));
        assert_eq!((d.value.get(Field::NwTtl), d.mask.get(Field::NwTtl)), (0, 0xfe));
        assert_eq!(d.value.get(Field::CtState), 0x22);
        assert_eq!(d.mask.get(Field::CtState), 0x22);
        assert_eq!((d.value.get(regs::FLAGS), d.mask.get(regs::FLAGS)), (1, 1));
        // Contradictions are errors, not guesses.
        let bad = Match { arp_tpa: Some("10.0.0.1".parse().unwrap()), ..Match::any().l4_dst(IpProto::Tcp, 80) };
        assert_eq!(expand_match(&bad), Err(Unsupported::FamilyMismatch));
        let bad = Match::any().l3(L3::Ip6).ip_dst("10.0.0.0/8".parse().unwrap());
        let bad = Match { l3: Some(L3::Ip6), ..bad };
        assert_eq!(expand_match(&bad), Err(Unsupported::FamilyMismatch));
        assert_eq!(expand_match(&Match::any().ct_set(CtState::DNAT)).map(|_| ()), Err(Unsupported::CtStateBits(0x40)));
    }

    #[test]
    fn load_balancer_ids_are_stable_and_bound_to_ct_lb() {
        let e = engine();
        let view = e.snapshot("a").unwrap();
        let t = translate_partial(&view, &bindings("a")).unwrap();
        let entry = view.items.load_balancers.iter().next().unwrap();
        let id = load_balancer_id(&entry.id);
        assert_eq!(t.file.load_balancers.len(), 1);
        assert_eq!(t.file.load_balancers[0].id, id);
        assert!(
            t.file.flows.iter().any(|f| f.actions.iter().any(|a| matches!(a, DpAction::CtLb { lb, .. } if *lb == id)))
        );
    }
}
