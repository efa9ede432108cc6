//! Logical flows → datapath flows: what ovn-controller does for OVN. A chassis's southbound
//! view plus its local bindings (which logical ports are which datapath ports, the tunnel)
//! become one [`FlowFile`]: tables, groups, load balancers and the Geneve tunnel port.
//!
//! Pure and deterministic: the same input gives the same (sorted) file, so reloading it
//! keeps unchanged flows. The table layout and register use are in
//! `docs/agent-translation.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use skein_datapath::conntrack::{NatAction, NatRange, ZoneLimitScope};
use skein_datapath::flow::{CtSpec, CtZone, Responder, Subfield, TunnelPort, TunnelRemotes, ZoneLimit};
use skein_datapath::flowtext::{FlowFile, format_flow};
use skein_datapath::lb::{Backend as DpBackend, LoadBalancer};
use skein_datapath::{Action as DpAction, Bucket, Field, Flow, Group, GroupKind, Match as DpMatch};
use skein_netmodel::cluster::{ObjectKey, PolicyType};
use skein_netmodel::southbound::{
    Action, ArpOp, ChassisView, DatapathKey, DatapathKind, IpProto, L3, LbId, LogicalFlow, Match, NextHop, Owner,
    Pipeline, PortBinding, PortKey, PortKind, Stage, ZoneScope,
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
    /// NetworkPolicy: the source's security identity and the bits that travel with it
    /// (`acl_meta`; the Geneve identity option between chassis).
    pub const ACL_META: Field = Field::Reg4;
    /// NetworkPolicy: the ACL id being evaluated.
    pub const ACL_ID: Field = Field::Reg5;
    /// NetworkPolicy: the destination's security identity (switch egress).
    pub const DST_IDENTITY: Field = Field::Reg8;
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

/// The node's uplink (a gateway router's `External` port): the node's NIC, opened so that
/// the datapath receives a copy of everything the NIC receives. Only Skein's own traffic
/// enters the gateway router from it (see `docs/agent-translation.md`); the host kernel
/// handles the rest, and is told to drop what Skein takes (TCP and UDP to the node IP on
/// `node_port_range` and `snat_ports`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Uplink {
    /// Datapath port number.
    pub port: u32,
    /// The node NIC's MAC (source of frames sent through the uplink).
    pub mac: MacAddr,
    /// The MAC of the node's default gateway (`nexthop = uplink`).
    pub gateway_mac: MacAddr,
    /// Source ports (inclusive) that pod egress SNATed to the node IP is given; replies to
    /// them enter the datapath. Must not overlap the host's ephemeral ports
    /// (`net.ipv4.ip_local_port_range`). Default [`Uplink::DEFAULT_SNAT_PORTS`].
    pub snat_ports: (u16, u16),
    /// NodePort range (inclusive): TCP and UDP to the node IP on these ports enter the
    /// datapath. Default [`Uplink::DEFAULT_NODE_PORT_RANGE`] (Kubernetes' default).
    pub node_port_range: (u16, u16),
}

impl Uplink {
    /// 61000–65535: above Linux's default ephemeral range (32768–60999).
    pub const DEFAULT_SNAT_PORTS: (u16, u16) = (61000, 65535);
    /// 30000–32767, Kubernetes' default `--service-node-port-range`.
    pub const DEFAULT_NODE_PORT_RANGE: (u16, u16) = (30000, 32767);

    /// An uplink with the default port ranges.
    pub fn new(port: u32, mac: MacAddr, gateway_mac: MacAddr) -> Uplink {
        Uplink {
            port,
            mac,
            gateway_mac,
            snat_ports: Self::DEFAULT_SNAT_PORTS,
            node_port_range: Self::DEFAULT_NODE_PORT_RANGE,
        }
    }
}

/// ICMP types that may reach the node IP from the uplink: answers and errors about
/// traffic the gateway router sent (echo reply, destination unreachable, time exceeded).
const UPLINK_ICMP_TYPES: [u8; 3] = [0, 3, 11];

/// Priority of the uplink's own drop flow in table 0: below every admitting flow.
const UPLINK_DROP_PRIORITY: u16 = 1;

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

/// The gateway router's DNAT conntrack zone (NodePorts, external and LoadBalancer IPs).
pub const GATEWAY_DNAT_ZONE: u16 = 0x8000;
/// The gateway router's SNAT conntrack zone (pod egress, forced SNAT of external traffic).
pub const GATEWAY_SNAT_ZONE: u16 = 0;

/// Connection limits per conntrack zone, installed with the flows (`ct_zone_limit=`): a
/// new connection beyond its zone's limit takes the place of the zone's oldest unassured
/// one, or is dropped. 0: no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConntrackLimits {
    /// Each of a pod's zones (its port's and its hairpin zone), and every zone without a
    /// limit of its own.
    pub pod_zone: u32,
    /// Each of the gateway router's zones ([`GATEWAY_DNAT_ZONE`], [`GATEWAY_SNAT_ZONE`]):
    /// all of the node's north–south connections share them.
    pub gateway_zone: u32,
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
    /// Conntrack zone limits.
    pub conntrack: ConntrackLimits,
    /// The key of the load-balancer ids.
    pub lb_id_key: LbIdKey,
}

/// Why one logical flow cannot be translated yet.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum Unsupported {
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
    /// An L4 range without a protocol, or whose end is below its start.
    #[error("an l4 destination range needs IP, a protocol and start <= end")]
    BadPortRange,
    /// A logical table beyond the pipeline's table range.
    #[error("logical table {0} is beyond the {len} tables of a pipeline", len = tables::PIPELINE_LEN)]
    TableOutOfRange(u8),
    /// One of its datapath flows has the table, priority and match of another logical
    /// flow's (of the object named, which sorts first), with other actions: only one can
    /// be installed.
    #[error("a flow with the same table, priority and match, from {kept}, is installed instead")]
    Conflict {
        /// The object whose flow is installed.
        kept: String,
    },
}

/// A logical flow that was not translated, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UntranslatedFlow {
    /// The flow.
    pub flow: LogicalFlow,
    /// Why.
    pub reason: Unsupported,
}

/// An item of the view left out of the translation, and why; everything else is
/// installed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedItem {
    /// The object it belongs to (a node for its chassis and ports, a pod for its port).
    pub object: Owner,
    /// Why.
    pub reason: SkipReason,
}

/// Why an item of the view was left out.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SkipReason {
    /// A chassis with an IPv6 tunnel address (the tunnel port is IPv4): its ports are
    /// unreachable from here, and its frames are not accepted.
    #[error("chassis {chassis} has IPv6 tunnel address {ip}; tunnels are IPv4, so its ports are unreachable from here")]
    Ipv6Tunnel {
        /// The chassis.
        chassis: String,
        /// Its address.
        ip: IpAddr,
    },
    /// A chassis listed twice with different details: the first is used.
    #[error("chassis {chassis} is listed twice; tunnel address {kept} is used")]
    DuplicateChassis {
        /// The chassis.
        chassis: String,
        /// The address used.
        kept: IpAddr,
    },
    /// A port on a chassis the view does not list (or that was left out).
    #[error("port {port} resides on chassis {chassis}, which the view does not list or has no usable tunnel address")]
    UnknownChassis {
        /// The port.
        port: String,
        /// Its chassis.
        chassis: String,
    },
    /// A port with the name, or the datapath and key, of another port (which sorts first).
    #[error("port {port} has the name or the datapath and key of port {kept}, which is used instead")]
    DuplicatePort {
        /// The port left out.
        port: String,
        /// The port used.
        kept: String,
    },
}

/// Why a view cannot be translated (whole).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum TranslateError {
    /// Some logical flows cannot be translated (each listed with its reason).
    #[error("{} logical flows cannot be translated: {}", .0.len(), list(.0))]
    Untranslatable(Vec<UntranslatedFlow>),
    /// Some items of the view were left out (each listed with its reason).
    #[error("{} items of the view were left out: {}", .0.len(), .0.iter().map(|s| format!("[{}: {}]", s.object, s.reason)).collect::<Vec<_>>().join(" "))]
    Skipped(Vec<SkippedItem>),
    /// A port range of the uplink is empty or starts at port 0.
    #[error("uplink {name} {lo}-{hi}: a range must be 1-65535 with the first port not above the last")]
    BadPortRange {
        /// Which range (`snat_ports`, `node_port_range`).
        name: &'static str,
        /// First port.
        lo: u16,
        /// Last port.
        hi: u16,
    },
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
    /// The chassis and ports left out, each with its reason.
    pub skipped: Vec<SkippedItem>,
    /// The pod ports' own flows (also in `file`): what [`pod_port_flows`] gives for the
    /// same view and bindings, kept so that a later binding change installs only the
    /// difference ([`pod_port_delta`]).
    pub pod_port_flows: Vec<Flow>,
}

/// Translates `view` for this chassis; fails if any logical flow cannot be translated or
/// any item of the view has to be left out.
pub fn translate(view: &ChassisView, local: &LocalBindings) -> Result<FlowFile, TranslateError> {
    let t = translate_partial(view, local)?;
    if !t.untranslated.is_empty() {
        return Err(TranslateError::Untranslatable(t.untranslated));
    }
    if !t.skipped.is_empty() {
        return Err(TranslateError::Skipped(t.skipped));
    }
    Ok(t.file)
}

/// Translates what can be translated of `view` and lists what cannot — never dropping
/// anything silently, and never letting one bad object stop the others, as
/// ovn-controller does per logical flow: a logical flow that cannot be translated, or
/// whose datapath flow would replace another object's, is left out; a chassis without a
/// usable tunnel address, or a port on such a chassis or duplicating another, is left
/// out; everything else is installed. Only the agent's own settings (an uplink port range)
/// fail it.
pub fn translate_partial(view: &ChassisView, local: &LocalBindings) -> Result<Translation, TranslateError> {
    if let Some(u) = &local.uplink {
        for (name, (lo, hi)) in [("snat_ports", u.snat_ports), ("node_port_range", u.node_port_range)] {
            if lo == 0 || lo > hi {
                return Err(TranslateError::BadPortRange { name, lo, hi });
            }
        }
    }
    let cx = Context::new(view, local);
    // Every datapath flow with where it came from: a logical flow (its index in the
    // view), or the infrastructure (classification, output, delivery, next hops).
    let mut flows: Vec<(Origin, Flow)> = Vec::new();
    let mut untranslated = Vec::new();
    for (i, lf) in view.items.flows.iter().enumerate() {
        match cx.logical_flow(lf) {
            Ok(fs) => flows.extend(fs.into_iter().map(|f| (Origin::Logical(i), f))),
            Err(reason) => untranslated.push(UntranslatedFlow { flow: lf.clone(), reason }),
        }
    }
    let infra = |fs: Vec<Flow>| fs.into_iter().map(|f| (Origin::Infra, f));
    flows.extend(infra(cx.classify_flows(Part::View)));
    let (out, groups) = cx.output_flows();
    flows.extend(infra(out));
    flows.extend(infra(cx.deliver_flows(Part::View)));
    flows.extend(infra(cx.next_hop_flows()));
    let pod_port_flows = cx.pod_port_flows();
    flows.extend(infra(pod_port_flows.clone()));

    // One datapath flow per (table, priority, match): the infrastructure's first, then
    // by owner. A logical flow that loses one of its flows to another object's is left
    // out whole (and reported); an identical copy is simply dropped.
    let logical: Vec<&LogicalFlow> = view.items.flows.iter().collect();
    let rank = |o: &Origin| match o {
        Origin::Infra => (0, None, 0),
        Origin::Logical(i) => (1, Some(&logical[*i].owner), *i),
    };
    let mut order: Vec<usize> = (0..flows.len()).collect();
    order.sort_by(|a, b| rank(&flows[*a].0).cmp(&rank(&flows[*b].0)));
    let mut holder: hashbrown::HashMap<(u8, u16, DpMatch), usize> = hashbrown::HashMap::with_capacity(flows.len());
    let mut keep = vec![true; flows.len()];
    let mut conflicted: BTreeMap<usize, String> = BTreeMap::new();
    let mut skipped = cx.skipped.clone();
    for &i in &order {
        let f = &flows[i].1;
        let key = (f.table, f.priority, f.matches.normalized());
        let Some(&first) = holder.get(&key) else {
            holder.insert(key, i);
            continue;
        };
        keep[i] = false;
        if flows[first].1.actions == f.actions {
            continue;
        }
        let kept = match flows[first].0 {
            Origin::Infra => "the node's own flows".to_owned(),
            Origin::Logical(j) => logical[j].owner.to_string(),
        };
        match flows[i].0 {
            Origin::Logical(j) => {
                conflicted.entry(j).or_insert(kept);
            }
            Origin::Infra => skipped.push(SkippedItem {
                object: Owner::Cluster,
                reason: SkipReason::DuplicatePort { port: format_flow(f), kept },
            }),
        }
    }
    for (j, kept) in &conflicted {
        untranslated
            .push(UntranslatedFlow { flow: logical[*j].clone(), reason: Unsupported::Conflict { kept: kept.clone() } });
    }
    untranslated.sort_by(|a, b| a.flow.cmp(&b.flow));
    let mut keyed: Vec<(u8, std::cmp::Reverse<u16>, String, Flow)> = flows
        .into_iter()
        .zip(keep)
        .filter(|((origin, _), keep)| *keep && !matches!(origin, Origin::Logical(j) if conflicted.contains_key(j)))
        .map(|((_, f), _)| (f.table, std::cmp::Reverse(f.priority), format_flow(&f), f))
        .collect();
    keyed.sort_unstable_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));
    let file = FlowFile {
        flows: keyed.into_iter().map(|k| k.3).collect(),
        groups,
        load_balancers: cx.load_balancers.values().cloned().collect(),
        tunnels: vec![cx.tunnel_port()],
        tunnel_remotes: vec![cx.tunnel_remotes()],
        zone_limits: cx.zone_limits(),
    };
    Ok(Translation { file, untranslated, skipped, pod_port_flows })
}

/// Where a datapath flow came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// The logical flow at this index of the view.
    Logical(usize),
    /// Classification, output, delivery or next-hop flows.
    Infra,
}

/// The flows of `local`'s pod ports alone — classification from each bound pod port and
/// delivery to it — as [`translate_partial`] emits them: the only flows that binding or
/// unbinding a pod changes (no logical flow, group or load balancer names a datapath
/// port). The agent installs the difference between two of these on the CNI ADD and DEL
/// paths instead of translating the whole view.
pub fn pod_port_flows(view: &ChassisView, local: &LocalBindings) -> Vec<Flow> {
    Context::for_ports(view, local).pod_port_flows()
}

/// What turns the pod-port flows `old` into `new` (both from [`pod_port_flows`]): the
/// flows to add or replace, and the (table, priority, match) of those to remove.
pub fn pod_port_delta(old: &[Flow], new: &[Flow]) -> (Vec<Flow>, Vec<(u8, u16, DpMatch)>) {
    let key = |f: &Flow| (f.table, f.priority, f.matches.normalized());
    let before: hashbrown::HashMap<_, &Flow> = old.iter().map(|f| (key(f), f)).collect();
    let after: hashbrown::HashSet<_> = new.iter().map(key).collect();
    let add = new.iter().filter(|f| before.get(&key(f)).is_none_or(|o| *o != *f)).cloned().collect();
    let remove = old.iter().map(key).filter(|k| !after.contains(k)).collect();
    (add, remove)
}

/// Which flows a pass over the ports emits: those of pod ports, which depend on the pod
/// bindings, or the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    /// Default flows and the flows of non-pod ports.
    View,
    /// The flows of pod ports.
    Pods,
}

impl Part {
    fn has(self, p: &PortBinding) -> bool {
        matches!(p.kind, PortKind::Pod { .. }) == (self == Part::Pods)
    }
}

/// The datapath table of a logical stage.
pub fn datapath_table(stage: Stage) -> u8 {
    match stage.pipeline() {
        Pipeline::Ingress => tables::INGRESS + stage.table(),
        Pipeline::Egress => tables::EGRESS + stage.table(),
    }
}

/// A flow's cookie: a hash of the cluster object it was compiled from (flows of one
/// owner share it; `dump-flows` and the policy counters use it).
pub fn owner_cookie(owner: &Owner) -> u64 {
    fnv1a(owner.to_string().as_bytes())
}

/// The audit log id of a NetworkPolicy denial: a hash of its direction and policies,
/// stable across reloads (the agent maps it back through the view).
pub fn deny_log_id(direction: PolicyType, policies: &[ObjectKey]) -> u32 {
    let mut text = match direction {
        PolicyType::Ingress => String::from("ingress"),
        PolicyType::Egress => String::from("egress"),
    };
    for p in policies {
        text.push(' ');
        text.push_str(&p.to_string());
    }
    let h = fnv1a(text.as_bytes());
    ((h ^ (h >> 32)) as u32).max(1)
}

/// True if the view programs NetworkPolicy (then identities travel through tunnels).
pub fn view_has_acls(view: &ChassisView) -> bool {
    view.items.flows.iter().any(|f| f.actions.iter().any(|a| matches!(a, Action::SetAclMeta { .. })))
}

/// A node's secret that keys its load-balancer ids ([`load_balancer_id`]): a Service
/// author who does not know it cannot search for names whose ids collide.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct LbIdKey(pub [u8; 16]);

impl std::fmt::Debug for LbIdKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A secret: never in a log.
        f.write_str("LbIdKey(..)")
    }
}

/// The preferred datapath id of a load balancer: the first 32 bits of SHA-256 of the
/// node's key and its identity, stable across restarts (the key is kept in the state
/// directory) and deltas. The id it gets is this one unless another load balancer of the
/// view took it ([`load_balancer_ids`]).
pub fn load_balancer_id(key: &LbIdKey, id: &LbId) -> u32 {
    id_candidate(key, &id.to_string(), 0)
}

/// Candidate `attempt` for the load balancer named `name`.
fn id_candidate(key: &LbIdKey, name: &str, attempt: u32) -> u32 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(key.0);
    h.update(attempt.to_be_bytes());
    h.update(name.as_bytes());
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// The datapath ids of load balancers (by identity text), collision-free by construction:
/// in the order of their identities, each takes its preferred id ([`load_balancer_id`])
/// or, if that is taken, the first free of its next candidates. So ids are stable across
/// restarts and deltas, and two load balancers never share one; with the ids keyed by a
/// secret, nobody can pick a Service name that moves another Service's id (which would
/// start its affinity table afresh), and a chance collision only does that.
pub fn load_balancer_ids<'a>(key: &LbIdKey, ids: impl IntoIterator<Item = &'a LbId>) -> BTreeMap<String, u32> {
    let names: BTreeSet<String> = ids.into_iter().map(ToString::to_string).collect();
    let mut taken: hashbrown::HashSet<u32> = hashbrown::HashSet::with_capacity(names.len());
    let mut out = BTreeMap::new();
    for name in names {
        let mut candidate = id_candidate(key, &name, 0);
        let mut attempt = 1;
        while !taken.insert(candidate) {
            // A few hashed candidates, then the next free id after the last: terminates
            // while any id is free.
            candidate = if attempt < 8 { id_candidate(key, &name, attempt) } else { candidate.wrapping_add(1) };
            attempt += 1;
        }
        out.insert(name, candidate);
    }
    out
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
    /// The ports translated: the view's, but those on a chassis without a usable tunnel
    /// address and those duplicating another's name or key.
    ports: Vec<&'a PortBinding>,
    /// Remote chassis with a usable (IPv4) tunnel address.
    chassis: BTreeMap<&'a str, Ipv4Addr>,
    /// What was left out of the view, and why.
    skipped: Vec<SkippedItem>,
    kinds: BTreeMap<DatapathKey, DatapathKind>,
    /// Load balancers by identity string.
    load_balancers: BTreeMap<String, LoadBalancer>,
    /// The switch whose port keys are conntrack zones.
    zoned_switch: Option<DatapathKey>,
    /// The router with the DNAT and SNAT zones.
    zoned_router: Option<DatapathKey>,
    /// The view programs NetworkPolicy: identities cross tunnels.
    acl: bool,
}

impl<'a> Context<'a> {
    fn new(view: &'a ChassisView, local: &'a LocalBindings) -> Self {
        let kinds = view.items.datapaths.iter().map(|d| (d.key, d.kind)).collect();
        let ids = load_balancer_ids(&local.lb_id_key, view.items.load_balancers.iter().map(|e| &e.id));
        let mut load_balancers = BTreeMap::new();
        for entry in &view.items.load_balancers {
            let name = entry.id.to_string();
            let Some(&id) = ids.get(&name) else { continue };
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
                    Action::CtNat { zone }
                    | Action::CtLb { zone, .. }
                    | Action::CtSnat { zone, .. }
                    | Action::CtNext { zone }
                    | Action::CtCommit { zone, .. } => *zone,
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
        let (ports, chassis, skipped) = usable(view);
        Context {
            view,
            local,
            ports,
            chassis,
            skipped,
            kinds,
            load_balancers,
            zoned_switch,
            zoned_router,
            acl: view_has_acls(view),
        }
    }

    /// A context for the pod ports' flows only ([`Part::Pods`]): they use neither load
    /// balancers nor conntrack zones, so those are left empty; the ports are those the
    /// full translation uses.
    fn for_ports(view: &'a ChassisView, local: &'a LocalBindings) -> Self {
        let (ports, chassis, skipped) = usable(view);
        Context {
            view,
            local,
            ports,
            chassis,
            skipped,
            kinds: BTreeMap::new(),
            load_balancers: BTreeMap::new(),
            zoned_switch: None,
            zoned_router: None,
            acl: false,
        }
    }

    /// Classification from and delivery to the bound pod ports.
    fn pod_port_flows(&self) -> Vec<Flow> {
        let mut flows = self.classify_flows(Part::Pods);
        flows.extend(self.deliver_flows(Part::Pods));
        flows
    }

    fn is_remote(&self, p: &PortBinding) -> bool {
        p.chassis.as_ref().is_some_and(|c| *c != self.view.chassis)
    }

    /// The tunnel address of a remote port's chassis (every port kept has one).
    fn chassis_ip(&self, p: &PortBinding) -> Option<Ipv4Addr> {
        self.chassis.get(p.chassis.as_deref()?).copied()
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

    /// The SNAT source ports for `ip` on `datapath`, if `ip` is an address of that
    /// router's `External` port here (the node IP): the uplink's range, or the default
    /// one while the uplink is not bound.
    fn snat_ports(&self, datapath: DatapathKey, ip: IpAddr) -> Option<(u16, u16)> {
        let is_node_ip = self.ports.iter().any(|p| {
            p.datapath == datapath
                && matches!(p.kind, PortKind::External)
                && !self.is_remote(p)
                && p.ips.iter().any(|n| n.addr() == ip)
        });
        is_node_ip.then(|| self.local.uplink.map_or(Uplink::DEFAULT_SNAT_PORTS, |u| u.snat_ports))
    }

    /// Frames are accepted through the tunnel from the other chassis of the view only.
    fn tunnel_remotes(&self) -> TunnelRemotes {
        TunnelRemotes::new(self.local.tunnel.port, self.chassis.values().map(|ip| u32::from(*ip)))
    }

    /// The zone limits of [`LocalBindings::conntrack`] (none when both are 0).
    fn zone_limits(&self) -> Vec<ZoneLimit> {
        let c = self.local.conntrack;
        if c.pod_zone == 0 && c.gateway_zone == 0 {
            return Vec::new();
        }
        vec![
            ZoneLimit { scope: ZoneLimitScope::Default, limit: c.pod_zone },
            ZoneLimit { scope: ZoneLimitScope::Zone(GATEWAY_SNAT_ZONE), limit: c.gateway_zone },
            ZoneLimit { scope: ZoneLimitScope::Zone(GATEWAY_DNAT_ZONE), limit: c.gateway_zone },
        ]
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
        let cookie = owner_cookie(&lf.owner);
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
            ZoneScope::RouterDnat => CtZone::Const(GATEWAY_DNAT_ZONE),
            ZoneScope::RouterSnat => CtZone::Const(GATEWAY_SNAT_ZONE),
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
                Action::CtNext { zone } => out.push(DpAction::Ct(Box::new(CtSpec {
                    zone: self.zone(lf, *zone)?,
                    commit: false,
                    nat: None,
                    table: ct_table()?,
                    set_mark: None,
                    set_label: None,
                }))),
                Action::CtCommit { zone, mark, mask } => out.push(DpAction::Ct(Box::new(CtSpec {
                    zone: self.zone(lf, *zone)?,
                    commit: true,
                    nat: None,
                    table: None,
                    set_mark: Some((*mark, *mask)),
                    set_label: None,
                }))),
                Action::SetAclMeta { value, mask } => out.push(DpAction::SetField {
                    field: regs::ACL_META,
                    value: u128::from(*value),
                    mask: u128::from(*mask),
                }),
                Action::SetDstIdentity(identity) => out.push(set(regs::DST_IDENTITY, u128::from(identity.0))),
                Action::AclEval(ids) => {
                    let eval = tables::INGRESS + Stage::AclEval.table();
                    for id in ids {
                        out.push(set(regs::ACL_ID, u128::from(*id)));
                        out.push(DpAction::Resubmit(eval));
                    }
                }
                Action::Deny { direction, policies } => {
                    // Every denied packet is offered to the audit log (rate-limited in
                    // the datapath), then dropped.
                    out.push(DpAction::Log(deny_log_id(*direction, policies)));
                    out.push(DpAction::Drop);
                }
                Action::CtSnat { ip, zone } => {
                    let addr = match ip {
                        IpAddr::V4(a) => skein_datapath::conntrack::v4(u32::from(*a)),
                        IpAddr::V6(a) => a.octets(),
                    };
                    // SNAT to the node IP: source ports from the uplink's range only, so
                    // that the host kernel can leave their replies to the datapath.
                    let (port_min, port_max) = self.snat_ports(lf.datapath, *ip).unwrap_or((0, 0));
                    let range = NatRange { addr_min: addr, addr_max: addr, port_min, port_max };
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

    fn classify_flows(&self, part: Part) -> Vec<Flow> {
        let mut flows = Vec::new();
        if part == Part::View {
            flows.push(Self::infra(tables::CLASSIFY, 0, DpMatch::ANY, vec![DpAction::Drop]));
        }
        for p in self.ports.iter().copied().filter(|p| part.has(p)) {
            if let Some(n) = self.local_port(p) {
                let mut actions = Self::enter_ingress(p.datapath, p.key);
                actions.push(DpAction::GotoTable(tables::INGRESS));
                let from_port = DpMatch::ANY.with(Field::InPort, u128::from(n));
                match (&p.kind, self.local.uplink) {
                    (PortKind::External, Some(u)) => flows.extend(self.uplink_flows(p, &u, &actions)),
                    _ => flows.push(Self::infra(tables::CLASSIFY, 100, from_port, actions)),
                }
            }
            // OVN's remote output: a port that resides here receives its datapath's
            // egress pipeline from other chassis.
            if p.chassis.as_deref() == Some(self.view.chassis.as_str()) {
                let m = DpMatch::ANY
                    .with(Field::InPort, u128::from(self.local.tunnel.port))
                    .with(Field::TunId, u128::from(p.datapath.get()))
                    .with(Field::TunEgressPort, u128::from(p.key.get()));
                let mut actions = vec![
                    set(regs::DATAPATH, u128::from(p.datapath.get())),
                    set(regs::INPORT, 0),
                    set(regs::OUTPORT, u128::from(p.key.get())),
                ];
                if self.acl {
                    // The sender's identity (and whether it vouches for a reply).
                    actions.push(DpAction::Move {
                        src: Subfield::whole(Field::TunIdentity),
                        dst: Subfield::whole(regs::ACL_META),
                    });
                }
                actions.push(DpAction::GotoTable(tables::EGRESS));
                flows.push(Self::infra(tables::CLASSIFY, 100, m, actions));
            }
        }
        flows
    }

    /// Table 0 for the uplink: the NIC hands the datapath a copy of everything it
    /// receives, and only Skein's own traffic may enter the gateway router — ARP for the
    /// node IP and ARP replies from the gateway; TCP and UDP to the node IP on the NodePort
    /// and SNAT ranges; ICMP replies and errors to the node IP; anything to an external or
    /// LoadBalancer VIP of the router. One flow drops the rest (the host kernel has it).
    fn uplink_flows(&self, external: &PortBinding, uplink: &Uplink, enter: &[DpAction]) -> Vec<Flow> {
        let from_uplink = DpMatch::ANY.with(Field::InPort, u128::from(uplink.port));
        let node_ips: Vec<Ipv4Addr> = external
            .ips
            .iter()
            .filter_map(|n| match n.addr() {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            })
            .collect();
        let mut admit: Vec<DpMatch> = Vec::new();
        let mut push = |m: DpMatch| {
            let m = m.normalized();
            if !admit.contains(&m) {
                admit.push(m);
            }
        };
        for ip in &node_ips {
            let arp = from_uplink.with(Field::EthType, 0x0806).with(Field::ArpTpa, v4(*ip));
            push(arp.with(Field::ArpOp, 1));
            push(arp.with(Field::ArpOp, 2).with(Field::ArpSha, mac(uplink.gateway_mac)));
            let to_node = |proto: u8| {
                from_uplink
                    .with(Field::EthType, 0x0800)
                    .with(Field::NwProto, u128::from(proto))
                    .with(Field::Ipv4Dst, v4(*ip))
            };
            for proto in [6, 17] {
                for (lo, hi) in [uplink.node_port_range, uplink.snat_ports] {
                    for (value, mask) in port_masks(lo, hi) {
                        push(to_node(proto).with_masked(Field::TpDst, u128::from(value), u128::from(mask)));
                    }
                }
            }
            for ty in UPLINK_ICMP_TYPES {
                push(to_node(1).with(Field::IcmpType, u128::from(ty)));
            }
        }
        for vip in self.external_vips(external.datapath, &node_ips) {
            push(from_uplink.with(Field::EthType, 0x0800).with(Field::Ipv4Dst, v4(vip)));
        }
        let mut flows: Vec<Flow> =
            admit.into_iter().map(|m| Self::infra(tables::CLASSIFY, 100, m, enter.to_vec())).collect();
        flows.push(Self::infra(tables::CLASSIFY, UPLINK_DROP_PRIORITY, from_uplink, vec![DpAction::Drop]));
        flows
    }

    /// IPv4 VIPs load-balanced on `router` (external IPs, LoadBalancer ingress), other
    /// than the node's own addresses (whose NodePorts are admitted by port range).
    fn external_vips(&self, router: DatapathKey, node_ips: &[Ipv4Addr]) -> BTreeSet<Ipv4Addr> {
        self.view
            .items
            .flows
            .iter()
            .filter(|f| f.datapath == router && f.actions.iter().any(|a| matches!(a, Action::CtLb { .. })))
            .filter_map(|f| f.matches.ip_dst)
            .filter_map(|n| match n.addr() {
                IpAddr::V4(a) if n.prefix_len() == 32 && !node_ips.contains(&a) => Some(a),
                _ => None,
            })
            .collect()
    }

    fn output_flows(&self) -> (Vec<Flow>, Vec<Group>) {
        let mut flows = vec![Self::infra(tables::OUTPUT, 0, DpMatch::ANY, vec![DpAction::Drop])];
        let mut groups = Vec::new();
        for p in self.ports.iter().copied() {
            let m = DpMatch::ANY
                .with(regs::DATAPATH, u128::from(p.datapath.get()))
                .with(regs::OUTPORT, u128::from(p.key.get()));
            let actions = if self.is_remote(p) {
                // Every remote port kept has a chassis with an address.
                let Some(ip) = self.chassis_ip(p) else { continue };
                let mut a = vec![
                    set(Field::TunId, u128::from(p.datapath.get())),
                    set(Field::TunDst, v4(ip)),
                    set(Field::TunEgressPort, u128::from(p.key.get())),
                ];
                if self.acl {
                    a.push(DpAction::Move {
                        src: Subfield::whole(regs::ACL_META),
                        dst: Subfield::whole(Field::TunIdentity),
                    });
                }
                a.push(DpAction::Output(self.local.tunnel.port));
                a
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
        (flows, groups)
    }

    fn deliver_flows(&self, part: Part) -> Vec<Flow> {
        let mut flows = Vec::new();
        if part == Part::View {
            flows.push(Self::infra(tables::DELIVER, 0, DpMatch::ANY, vec![DpAction::Drop]));
        }
        for p in self.ports.iter().copied().filter(|p| part.has(p) && !self.is_remote(p)) {
            let k = u128::from(p.key.get());
            let m = DpMatch::ANY.with(regs::DATAPATH, u128::from(p.datapath.get())).with(regs::OUTPORT, k);
            // A flood does not go back out of its input port.
            let back = m.with(regs::INPORT, k).with_masked(regs::FLAGS, regs::FLOOD_COPY, regs::FLOOD_COPY);
            flows.push(Self::infra(tables::DELIVER, 110, back, vec![DpAction::Drop]));
            let actions = match &p.kind {
                PortKind::Patch { peer_datapath, peer_port } => {
                    // The peer's pipeline starts afresh: no registers, and an untracked
                    // packet (OVN's ct_clear), so that its ct_state matches see only its
                    // own conntrack.
                    let mut a = Self::enter_ingress(*peer_datapath, *peer_port);
                    a.extend([
                        set(regs::OUTPORT, 0),
                        set(regs::FLAGS, 0),
                        set(regs::NEXT_HOP, 0),
                        set(regs::NEXT_HOP_KIND, 0),
                        DpAction::CtClear,
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

    /// `eth.dst = mac(nexthop)`: per router, at most one flow per kind of next hop. Every
    /// logical port's MAC is derived from its address (`0a:58` + the IPv4 address, or the
    /// last four bytes of an IPv6 one), so the MAC is written as that prefix with the
    /// address moved into its low 32 bits — from `reg1` for an explicit next hop, from the
    /// destination for `nexthop = ip.dst` — and no flow names a host.
    fn next_hop_flows(&self) -> Vec<Flow> {
        let mut by_address: BTreeSet<DatapathKey> = BTreeSet::new();
        let mut by_destination: BTreeSet<(DatapathKey, IpFamily)> = BTreeSet::new();
        let mut uplink: BTreeSet<DatapathKey> = BTreeSet::new();
        for f in &self.view.items.flows {
            for a in &f.actions {
                match a {
                    Action::SetNextHop(NextHop::Ip(IpAddr::V4(_))) => {
                        by_address.insert(f.datapath);
                    }
                    Action::SetNextHop(NextHop::Uplink) => {
                        uplink.insert(f.datapath);
                    }
                    Action::SetNextHop(NextHop::Destination) => match f.matches.ip_dst.map(|n| n.family()) {
                        Some(family) => {
                            by_destination.insert((f.datapath, family));
                        }
                        None => by_destination.extend([(f.datapath, IpFamily::V4), (f.datapath, IpFamily::V6)]),
                    },
                    _ => {}
                }
            }
        }
        let prefix = mac(MacAddr::derived(IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
        let derive = |src: Subfield| {
            vec![set(Field::EthDst, prefix), DpAction::Move { src, dst: Subfield::range(Field::EthDst, 0, 31) }]
        };
        let mut flows = Vec::new();
        for d in by_address {
            let m = DpMatch::ANY.with(regs::DATAPATH, u128::from(d.get())).with(regs::NEXT_HOP_KIND, regs::NEXT_HOP_IP);
            flows.push(Self::infra(tables::NEXT_HOP_MAC, 100, m, derive(Subfield::whole(regs::NEXT_HOP))));
        }
        for (d, family) in by_destination {
            let (eth_type, src) = match family {
                IpFamily::V4 => (0x0800, Subfield::whole(Field::Ipv4Dst)),
                IpFamily::V6 => (0x86dd, Subfield::range(Field::Ipv6Dst, 0, 31)),
            };
            let m = DpMatch::ANY
                .with(regs::DATAPATH, u128::from(d.get()))
                .with(regs::NEXT_HOP_KIND, regs::NEXT_HOP_DESTINATION)
                .with(Field::EthType, eth_type);
            flows.push(Self::infra(tables::NEXT_HOP_MAC, 100, m, derive(src)));
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
}

/// The ports of `view` that can be translated, the remote chassis with a usable tunnel
/// address, and what was left out: chassis with an IPv6 tunnel address or listed twice,
/// ports on a chassis not listed (or left out), ports with the name or the datapath and
/// key of another port (the one that sorts first is kept).
fn usable(view: &ChassisView) -> (Vec<&PortBinding>, BTreeMap<&str, Ipv4Addr>, Vec<SkippedItem>) {
    let mut skipped = Vec::new();
    let mut chassis: BTreeMap<&str, Ipv4Addr> = BTreeMap::new();
    let mut listed: BTreeMap<&str, IpAddr> = BTreeMap::new();
    for c in &view.items.chassis {
        let node = || Owner::Node(c.name.as_str().into());
        if let Some(kept) = listed.get(c.name.as_str()) {
            let reason = SkipReason::DuplicateChassis { chassis: c.name.clone(), kept: *kept };
            skipped.push(SkippedItem { object: node(), reason });
            continue;
        }
        listed.insert(&c.name, c.tunnel_ip);
        match c.tunnel_ip {
            IpAddr::V4(ip) if c.name != view.chassis => {
                chassis.insert(&c.name, ip);
            }
            IpAddr::V4(_) => {}
            ip @ IpAddr::V6(_) if c.name != view.chassis => skipped
                .push(SkippedItem { object: node(), reason: SkipReason::Ipv6Tunnel { chassis: c.name.clone(), ip } }),
            // This chassis's own entry: its tunnel is the agent's (`Tunnel::local_ip`).
            IpAddr::V6(_) => {}
        }
    }
    let mut ports = Vec::with_capacity(view.items.ports.len());
    let mut names: BTreeMap<&str, &str> = BTreeMap::new();
    let mut keys: BTreeMap<(DatapathKey, PortKey), &str> = BTreeMap::new();
    for p in &view.items.ports {
        let object = match (&p.kind, &p.chassis) {
            (PortKind::Pod { pod, .. }, _) => Owner::Pod(pod.clone()),
            (_, Some(c)) => Owner::Node(c.as_str().into()),
            (_, None) => Owner::Cluster,
        };
        if let Some(c) = p.chassis.as_deref()
            && c != view.chassis
            && !chassis.contains_key(c)
        {
            // A chassis left out above is reported once, for itself.
            if !listed.contains_key(c) {
                let reason = SkipReason::UnknownChassis { port: p.name.clone(), chassis: c.to_owned() };
                skipped.push(SkippedItem { object, reason });
            }
            continue;
        }
        let kept = names.get(p.name.as_str()).or_else(|| keys.get(&(p.datapath, p.key))).copied();
        if let Some(kept) = kept {
            let reason = SkipReason::DuplicatePort { port: p.name.clone(), kept: kept.to_owned() };
            skipped.push(SkippedItem { object, reason });
            continue;
        }
        names.insert(&p.name, &p.name);
        keys.insert((p.datapath, p.key), &p.name);
        ports.push(p);
    }
    (ports, chassis, skipped)
}

/// The masked values that cover the ports `lo..=hi` exactly (largest aligned blocks
/// first): what a port range costs in flows.
fn port_masks(lo: u16, hi: u16) -> Vec<(u16, u16)> {
    let (mut lo, hi) = (u32::from(lo), u32::from(hi));
    let mut out = Vec::new();
    while lo <= hi {
        let mut bits = lo.trailing_zeros().min(16);
        while lo + (1 << bits) - 1 > hi {
            bits -= 1;
        }
        out.push((lo as u16, (0xffff_u32 << bits) as u16));
        lo += 1 << bits;
    }
    out
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
    let ct_state = ct_state(m.ct_state.value.0, m.ct_state.mask.0);
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
                if let (Some(port), None) = (m.l4_dst, m.l4_dst_end) {
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
        if m.acl_meta.mask != 0 {
            d = d.with_masked(regs::ACL_META, u128::from(m.acl_meta.value), u128::from(m.acl_meta.mask));
        }
        if let Some(id) = m.acl_id {
            d = d.with(regs::ACL_ID, u128::from(id));
        }
        if m.ct_mark.mask != 0 {
            d = d.with_masked(Field::CtMark, u128::from(m.ct_mark.value), u128::from(m.ct_mark.mask));
        }
        if m.dst_identity.mask != 0 {
            d = d.with_masked(regs::DST_IDENTITY, u128::from(m.dst_identity.value), u128::from(m.dst_identity.mask));
        }
        // A port range (NetworkPolicy endPort) costs one match per aligned block.
        match (alt, m.l4_dst, m.l4_dst_end) {
            (Some(Some(_)), Some(lo), Some(hi)) if hi >= lo => {
                for (value, mask) in port_masks(lo, hi) {
                    out.push(d.with_masked(Field::TpDst, u128::from(value), u128::from(mask)));
                }
            }
            (_, _, Some(_)) => return Err(Unsupported::BadPortRange),
            _ => out.push(d),
        }
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

/// Logical `ct_state` bits → the datapath's (the same flags, numbered as in Open vSwitch).
fn ct_state(value: u8, mask: u8) -> Option<(u128, u128)> {
    use skein_datapath::key::ct_state as dp;
    use skein_netmodel::southbound::CtState as L;
    const MAP: [(L, u8); 8] = [
        (L::TRACKED, dp::TRK),
        (L::NEW, dp::NEW),
        (L::ESTABLISHED, dp::EST),
        (L::RELATED, dp::REL),
        (L::REPLY, dp::RPL),
        (L::INVALID, dp::INV),
        (L::DNAT, dp::DNAT),
        (L::SNAT, dp::SNAT),
    ];
    if mask == 0 {
        return None;
    }
    let (mut v, mut m) = (0u8, 0u8);
    for (logical, physical) in MAP {
        if mask & logical.0 != 0 {
            m |= physical;
            if value & logical.0 != 0 {
                v |= physical;
            }
        }
    }
    Some((u128::from(v), u128::from(m)))
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
    const NIC_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x11]);
    const GATEWAY_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xfe]);
    const NODE_A: &str = "192.0.2.10";

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
            uplink: Some(Uplink::new(UPLINK, NIC_MAC, GATEWAY_MAC)),
            tunnel: Tunnel {
                port: TUN,
                underlay_port: UNDERLAY,
                local_ip: local_ip.parse().unwrap(),
                local_mac: MacAddr([0x02, 0, 0, 0, 0, 0x01]),
                next_hop_mac: MacAddr([0x02, 0, 0, 0, 0, 0x02]),
                mtu: 1500,
            },
            conntrack: ConntrackLimits::default(),
            lb_id_key: LbIdKey([7; 16]),
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
        run_at(dp, packets, 1_000_000)
    }

    /// The datapath of `chassis` for `local`.
    fn datapath_with(view: &ChassisView, local: &LocalBindings) -> Datapath {
        let file = translate(view, local).unwrap();
        let dp = Datapath::new(DatapathConfig::default());
        if let Err((i, err, _)) = dp.apply(&file.to_mods()) {
            panic!("modification {i} refused: {err}");
        }
        dp
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

    /// An IPv4 frame around `l4` (TTL 64), checksums filled.
    fn ipv4(eth_src: MacAddr, eth_dst: MacAddr, proto: u8, src: &str, dst: &str, l4: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&eth_dst.0);
        f.extend_from_slice(&eth_src.0);
        f.extend_from_slice(&[0x08, 0x00]);
        let mut ipv4 = [0u8; 20];
        ipv4[0] = 0x45;
        ipv4[2..4].copy_from_slice(&(20 + l4.len() as u16).to_be_bytes());
        ipv4[8] = 64;
        ipv4[9] = proto;
        ipv4[12..16].copy_from_slice(&src.parse::<Ipv4Addr>().unwrap().octets());
        ipv4[16..20].copy_from_slice(&dst.parse::<Ipv4Addr>().unwrap().octets());
        f.extend_from_slice(&ipv4);
        f.extend_from_slice(l4);
        fill_checksums(&mut f);
        f
    }

    fn udp(eth_src: MacAddr, eth_dst: MacAddr, src: &str, dst: &str, sport: u16, dport: u16) -> Vec<u8> {
        let mut l4 = [0u8; 12];
        l4[0..2].copy_from_slice(&sport.to_be_bytes());
        l4[2..4].copy_from_slice(&dport.to_be_bytes());
        l4[4..6].copy_from_slice(&12u16.to_be_bytes());
        ipv4(eth_src, eth_dst, 17, src, dst, &l4)
    }

    /// ICMP echo request (`ty` 8) or reply (0) with this id.
    fn echo(eth_src: MacAddr, eth_dst: MacAddr, src: &str, dst: &str, ty: u8, id: u16) -> Vec<u8> {
        let mut l4 = [0u8; 16];
        l4[0] = ty;
        l4[4..6].copy_from_slice(&id.to_be_bytes());
        l4[6..8].copy_from_slice(&1u16.to_be_bytes());
        ipv4(eth_src, eth_dst, 1, src, dst, &l4)
    }

    fn ports(f: &[u8]) -> (u16, u16) {
        (u16::from_be_bytes([f[34], f[35]]), u16::from_be_bytes([f[36], f[37]]))
    }

    fn run_at(dp: &Datapath, packets: Vec<Packet>, now: u64) -> Vec<(usize, u32, Vec<u8>)> {
        let mut worker = dp.worker();
        let mut packets = packets;
        let mut sink = CollectSink::default();
        dp.process_batch(&mut worker, &mut packets, now, &mut sink);
        sink.outputs
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
    fn binding_a_pod_changes_only_its_port_flows_and_the_delta_reaches_the_full_translation() {
        let e = engine();
        let view = e.snapshot("a").unwrap();
        let full = bindings("a");
        let mut fewer = full.clone();
        fewer.ports.remove("default_p2");
        let before = translate(&view, &fewer).unwrap();
        let after = translate(&view, &full).unwrap();
        // The whole difference between the two translations is the pod-port flows'.
        let changed: Vec<&Flow> = after.flows.iter().filter(|f| !before.flows.contains(f)).collect();
        let gone: Vec<&Flow> = before.flows.iter().filter(|f| !after.flows.contains(f)).collect();
        assert!(gone.is_empty(), "{gone:#?}");
        assert_eq!(
            (before.groups.clone(), before.load_balancers.clone()),
            (after.groups.clone(), after.load_balancers.clone())
        );
        assert_eq!(translate_partial(&view, &full).unwrap().pod_port_flows, pod_port_flows(&view, &full));
        let (add, remove) = pod_port_delta(&pod_port_flows(&view, &fewer), &pod_port_flows(&view, &full));
        assert!(remove.is_empty());
        assert_eq!(add.iter().collect::<Vec<_>>(), changed, "the delta adds exactly what the full translation adds");
        let added: Vec<String> = add.iter().map(format_flow).collect();
        assert_eq!(added.len(), 2, "{added:#?}");
        assert!(added.iter().any(|f| f.starts_with("table=0,") && f.contains("in_port=2")), "{added:#?}");
        assert!(added.iter().any(|f| f.starts_with("table=64,") && f.ends_with("actions=output:2")), "{added:#?}");
        // Applied to a datapath that holds the translation without the pod, and back.
        let control = skein_datapath::control::Control::new(
            std::sync::Arc::new(Datapath::new(DatapathConfig::default())),
            Box::new(Default::default),
            || 1,
        );
        let sorted = |file: FlowFile| {
            let mut flows: Vec<String> = file.flows.iter().map(format_flow).collect();
            flows.sort();
            flows
        };
        control.install(&before).unwrap();
        control.update_flows(&add, &remove).unwrap();
        assert_eq!(sorted(control.installed()), sorted(after.clone()));
        let (add, remove) = pod_port_delta(&pod_port_flows(&view, &full), &pod_port_flows(&view, &fewer));
        assert!(add.is_empty());
        assert_eq!(remove.len(), 2);
        control.update_flows(&add, &remove).unwrap();
        assert_eq!(sorted(control.installed()), sorted(before));
    }

    #[test]
    fn every_logical_flow_translates() {
        let e = engine();
        for chassis in ["a", "b"] {
            let view = e.snapshot(chassis).unwrap();
            // Including the hairpin SNAT flows, which match ct.dnat.
            let file = translate(&view, &bindings(chassis)).unwrap();
            assert_eq!(translate_partial(&view, &bindings(chassis)).unwrap().untranslated, vec![]);
            let cookies: BTreeSet<u64> = file.flows.iter().map(|f| f.cookie).collect();
            for f in &view.items.flows {
                assert!(cookies.contains(&fnv1a(f.owner.to_string().as_bytes())), "{f}");
            }
        }
        // What cannot be translated is listed, not dropped: `nexthop = uplink` without one.
        let view = e.snapshot("a").unwrap();
        let t = translate_partial(&view, &LocalBindings { uplink: None, ..bindings("a") }).unwrap();
        assert!(!t.untranslated.is_empty());
        assert!(
            t.untranslated
                .iter()
                .all(|u| matches!(u.reason, Unsupported::UplinkNotBound | Unsupported::NoRouterMac(_))),
            "{:?}",
            t.untranslated
        );
        match translate(&view, &LocalBindings { uplink: None, ..bindings("a") }) {
            Err(TranslateError::Untranslatable(list)) => assert_eq!(list, t.untranslated),
            other => panic!("{other:?}"),
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
                assert_eq!(t.untranslated, vec![]);
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
        // The NAT bits, numbered as the datapath (Open vSwitch) numbers them.
        use skein_datapath::key::ct_state as dp;
        let mut m = Match::any().ct_set(CtState::DNAT);
        m.ct_state.mask.0 |= CtState::SNAT.0;
        let d = &expand_match(&m).unwrap()[0];
        assert_eq!((d.value.get(Field::CtState), d.mask.get(Field::CtState)), (0x80, 0xc0));
        assert_eq!((dp::DNAT, dp::SNAT), (0x80, 0x40));
    }

    #[test]
    fn load_balancer_ids_are_stable_and_bound_to_ct_lb() {
        let e = engine();
        let view = e.snapshot("a").unwrap();
        let t = translate_partial(&view, &bindings("a")).unwrap();
        let entry = view.items.load_balancers.iter().next().unwrap();
        let id = load_balancer_id(&bindings("a").lb_id_key, &entry.id);
        assert_eq!(t.file.load_balancers.len(), 1);
        assert_eq!(t.file.load_balancers[0].id, id);
        assert!(
            t.file.flows.iter().any(|f| f.actions.iter().any(|a| matches!(a, DpAction::CtLb { lb, .. } if *lb == id)))
        );
    }

    // ---- NAT bits, hairpin, ct_clear ----

    #[test]
    fn a_pod_reaching_itself_through_its_service_is_hairpinned() {
        let (dp, _) = datapath_of(&engine(), "a");
        let (p2, gateway) = (mac_of("10.244.0.4"), mac_of("10.244.0.1"));
        let syn = tcp(p2, gateway, "10.244.0.4", "10.96.0.10", 40000, 80, SYN);
        let out = run(&dp, vec![Packet::new(syn, 2)]);
        assert_eq!(out.len(), 1, "{out:?}");
        let (_, port, f) = &out[0];
        assert_eq!(*port, 2, "back to p2, the only backend");
        assert_eq!(ip_src(f), "169.254.169.5".parse::<Ipv4Addr>().unwrap(), "SNATed to the hairpin address");
        assert_eq!(ip_dst(f), "10.244.0.4".parse::<Ipv4Addr>().unwrap());
        assert_eq!(ports(f).1, 8080);
        assert_eq!(eth_dst(f), p2);
        assert!(skein_datapath::packet::checksums_valid(f));

        // p2 answers the hairpin address; it gets the answer as the VIP's.
        let sport = ports(f).0;
        let synack = tcp(p2, gateway, "10.244.0.4", "169.254.169.5", 8080, sport, SYN_ACK);
        let out = run(&dp, vec![Packet::new(synack, 2)]);
        assert_eq!(out.len(), 1, "{out:?}");
        let (_, port, f) = &out[0];
        assert_eq!(*port, 2);
        assert_eq!(ip_src(f), "10.96.0.10".parse::<Ipv4Addr>().unwrap());
        assert_eq!(ip_dst(f), "10.244.0.4".parse::<Ipv4Addr>().unwrap());
        assert_eq!(ports(f), (80, 40000));
        assert!(skein_datapath::packet::checksums_valid(f));
    }

    #[test]
    fn service_backend_on_another_node_round_trip() {
        let mut e = engine();
        e.apply([
            UpsertService(service("far", "10.96.0.11", 80, None, false)),
            UpsertEndpointSlice(slice("far-1", "far", &[("10.244.1.3", "b")])),
        ]);
        assert_eq!(e.issues().count(), 0);
        let (dp_a, _) = datapath_of(&e, "a");
        let (dp_b, _) = datapath_of(&e, "b");
        let p1 = mac_of("10.244.0.3");
        let syn = tcp(p1, mac_of("10.244.0.1"), "10.244.0.3", "10.96.0.11", 40000, 80, SYN);
        let out = run(&dp_a, vec![Packet::new(syn, 1)]);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].1, UNDERLAY, "DNATed on the client's chassis, tunnelled to the backend's");
        let out = run(&dp_b, vec![Packet::from_geneve(&out[0].2, TUN).unwrap()]);
        assert_eq!(out.len(), 1, "{out:?}");
        let (_, port, f) = &out[0];
        assert_eq!(*port, 1, "q1");
        assert_eq!((ip_src(f), ip_dst(f)), ("10.244.0.3".parse().unwrap(), "10.244.1.3".parse().unwrap()));
        assert_eq!(ports(f), (40000, 8080));

        let q1 = mac_of("10.244.1.3");
        let synack = tcp(q1, mac_of("10.244.1.1"), "10.244.1.3", "10.244.0.3", 8080, 40000, SYN_ACK);
        let out = run(&dp_b, vec![Packet::new(synack, 1)]);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].1, UNDERLAY);
        let out = run(&dp_a, vec![Packet::from_geneve(&out[0].2, TUN).unwrap()]);
        assert_eq!(out.len(), 1, "{out:?}");
        let (_, port, f) = &out[0];
        assert_eq!(*port, 1, "p1");
        assert_eq!(ip_src(f), "10.96.0.11".parse::<Ipv4Addr>().unwrap(), "un-DNATed on the client's chassis");
        assert_eq!(ports(f), (80, 40000));
        assert_eq!(eth_dst(f), p1);
        assert!(skein_datapath::packet::checksums_valid(f));
    }

    #[test]
    fn crossing_a_patch_port_clears_the_conntrack_state() {
        let file = translate(&engine().snapshot("a").unwrap(), &bindings("a")).unwrap();
        let patches: Vec<&Flow> = file
            .flows
            .iter()
            .filter(|f| f.table == tables::DELIVER && f.actions.contains(&DpAction::Resubmit(tables::INGRESS)))
            .collect();
        assert!(!patches.is_empty());
        for f in patches {
            let n = f.actions.len();
            assert_eq!(f.actions[n - 2], DpAction::CtClear, "{}", format_flow(f));
        }
    }

    // ---- next-hop MACs ----

    #[test]
    fn next_hop_macs_take_one_flow_per_router_and_kind() {
        let e = engine();
        let nh = |e: &Engine| -> Vec<String> {
            let file = translate(&e.snapshot("a").unwrap(), &bindings("a")).unwrap();
            file.flows.iter().filter(|f| f.table == tables::NEXT_HOP_MAC).map(format_flow).collect()
        };
        let flows = nh(&e);
        // The cluster router: address in reg1 (to the gateways), destination; the
        // gateway router: address in reg1 (to the cluster router), destination (the join
        // subnet), uplink.
        assert_eq!(flows.len(), 5, "{flows:#?}");
        let derive_from_dst = "set_field:0a:58:00:00:00:00->eth_dst,move:nw_dst[]->eth_dst[0..31]";
        let derive_from_reg1 = "set_field:0a:58:00:00:00:00->eth_dst,move:reg1[]->eth_dst[0..31]";
        assert_eq!(flows.iter().filter(|f| f.contains("reg2=0x2") && f.ends_with(derive_from_dst)).count(), 2);
        assert_eq!(flows.iter().filter(|f| f.contains("reg2=0x1") && f.ends_with(derive_from_reg1)).count(), 2);

        // More nodes and pods add no next-hop flow.
        let mut bigger = engine();
        let mut changes = vec![UpsertNode(node("c", 2, "198.51.100.3"))];
        for host in 10..60 {
            changes.push(UpsertPod(pod(&format!("x{host}"), "b", 1, host)));
            changes.push(UpsertPod(pod(&format!("y{host}"), "c", 2, host)));
            changes.push(UpsertPod(pod(&format!("z{host}"), "a", 0, host)));
        }
        bigger.apply(changes);
        assert_eq!(bigger.issues().count(), 0);
        assert_eq!(nh(&bigger), flows);
    }

    // ---- the uplink ----

    const EXTERNAL_IP: &str = "203.0.113.50";
    const OUTSIDE: &str = "198.51.100.77";

    /// `engine()` plus Service np: NodePort 30080 and external IP 203.0.113.50, port 80 →
    /// p2:8080.
    fn engine_with_gateway_services() -> Engine {
        let mut e = engine();
        let np = Service { external_ips: vec![ip(EXTERNAL_IP)], ..service("np", "10.96.0.20", 80, Some(30080), false) };
        e.apply([UpsertService(np), UpsertEndpointSlice(slice("np-1", "np", &[("10.244.0.4", "a")]))]);
        assert_eq!(e.issues().count(), 0);
        e
    }

    #[test]
    fn nodeport_and_external_ip_traffic_from_outside_reaches_the_backend() {
        let (dp, _) = datapath_of(&engine_with_gateway_services(), "a");
        let syn = tcp(GATEWAY_MAC, NIC_MAC, OUTSIDE, NODE_A, 5555, 30080, SYN);
        let out = run(&dp, vec![Packet::new(syn, UPLINK)]);
        assert_eq!(out.len(), 1, "{out:?}");
        let (_, port, f) = &out[0];
        assert_eq!(*port, 2, "p2");
        assert_eq!(ip_dst(f), "10.244.0.4".parse::<Ipv4Addr>().unwrap(), "DNATed to the backend");
        assert_eq!(ports(f).1, 8080);
        assert!(skein_datapath::packet::checksums_valid(f));

        // The backend's answer leaves through the uplink, from the NodePort.
        let (src, sport) = (ip_src(f).to_string(), ports(f).0);
        let p2 = mac_of("10.244.0.4");
        let synack = tcp(p2, mac_of("10.244.0.1"), "10.244.0.4", &src, 8080, sport, SYN_ACK);
        let out = run(&dp, vec![Packet::new(synack, 2)]);
        assert_eq!(out.len(), 1, "{out:?}");
        let (_, port, f) = &out[0];
        assert_eq!(*port, UPLINK);
        assert_eq!((ip_src(f), ip_dst(f)), (NODE_A.parse().unwrap(), OUTSIDE.parse().unwrap()));
        assert_eq!(ports(f), (30080, 5555));
        assert_eq!((eth_src(f), eth_dst(f)), (NIC_MAC, GATEWAY_MAC));

        // The external IP.
        let syn = tcp(GATEWAY_MAC, NIC_MAC, OUTSIDE, EXTERNAL_IP, 5556, 80, SYN);
        let out = run(&dp, vec![Packet::new(syn, UPLINK)]);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].1, 2);
        assert_eq!(ip_dst(&out[0].2), "10.244.0.4".parse::<Ipv4Addr>().unwrap());
    }

    #[test]
    fn the_hosts_own_traffic_on_the_uplink_is_left_to_the_kernel() {
        let e = engine_with_gateway_services();
        let (dp, t) = datapath_of(&e, "a");
        let host_traffic = [
            ("ssh", tcp(GATEWAY_MAC, NIC_MAC, OUTSIDE, NODE_A, 5557, 22, SYN)),
            ("kubelet", tcp(GATEWAY_MAC, NIC_MAC, OUTSIDE, NODE_A, 5558, 10250, SYN)),
            ("a reply to the host's own connection", tcp(GATEWAY_MAC, NIC_MAC, OUTSIDE, NODE_A, 443, 45000, SYN_ACK)),
            ("Geneve to the node IP", udp(GATEWAY_MAC, NIC_MAC, TUNNEL_B, NODE_A, 40000, 6081)),
            ("Geneve to the tunnel IP", udp(GATEWAY_MAC, NIC_MAC, TUNNEL_B, TUNNEL_A, 40000, 6081)),
            ("a ping of the node", echo(GATEWAY_MAC, NIC_MAC, OUTSIDE, NODE_A, 8, 7)),
            ("a ping of a VIP-less address", echo(GATEWAY_MAC, NIC_MAC, OUTSIDE, "192.0.2.99", 8, 7)),
            (
                "SCTP to a NodePort",
                ipv4(GATEWAY_MAC, NIC_MAC, 132, OUTSIDE, NODE_A, &[0x15, 0xb3, 0x75, 0x60, 0, 0, 0, 0]),
            ),
        ];
        for (what, frame) in &host_traffic {
            assert_eq!(run(&dp, vec![Packet::new(frame.clone(), UPLINK)]), vec![], "{what}");
        }
        // All by the uplink's one drop flow (its counters show the host's share).
        let stats = dp.flow_stats();
        let drop = stats
            .iter()
            .find(|s| s.flow.table == tables::CLASSIFY && s.flow.priority == UPLINK_DROP_PRIORITY)
            .expect("the uplink drop flow");
        assert_eq!(drop.packets, host_traffic.len() as u64);
        assert_eq!(
            format_flow(&drop.flow),
            format!("table=0,priority=1,cookie={INFRA_COOKIE:#x},in_port={UPLINK},actions=drop")
        );

        // ARP for the node IP enters, but nothing answers it: the host kernel does.
        let arp = arp_request(GATEWAY_MAC, "192.0.2.1", NODE_A);
        assert_eq!(run(&dp, vec![Packet::new(arp, UPLINK)]), vec![]);
        assert_eq!(dp.flow_stats().iter().find(|s| s.flow == drop.flow).unwrap().packets, host_traffic.len() as u64);
        // No datapath flow answers ARP or ping for the node IP at all.
        let node_ip = v4(NODE_A.parse().unwrap());
        for f in &t.file.flows {
            let answers =
                f.actions.iter().any(|a| matches!(a, DpAction::Respond(Responder::Arp { .. } | Responder::IcmpEcho)));
            let for_node = f.matches.mask.get(Field::Ipv4Dst) != 0 && f.matches.value.get(Field::Ipv4Dst) == node_ip;
            assert!(!(answers && for_node), "{}", format_flow(f));
        }
    }

    #[test]
    fn replies_to_snatted_pod_traffic_come_back_through_the_uplink() {
        let (dp, _) = datapath_of(&engine(), "a");
        let (p1, gateway) = (mac_of("10.244.0.3"), mac_of("10.244.0.1"));
        let syn = tcp(p1, gateway, "10.244.0.3", "8.8.8.8", 40000, 443, SYN);
        let out = run(&dp, vec![Packet::new(syn, 1)]);
        assert_eq!(out.len(), 1, "{out:?}");
        let (_, port, f) = &out[0];
        assert_eq!(*port, UPLINK);
        let (sport, _) = ports(f);
        assert!((61000..=65535).contains(&sport), "source port {sport} outside the SNAT range");

        let synack = tcp(GATEWAY_MAC, NIC_MAC, "8.8.8.8", NODE_A, 443, sport, SYN_ACK);
        let out = run(&dp, vec![Packet::new(synack, UPLINK)]);
        assert_eq!(out.len(), 1, "{out:?}");
        let (_, port, f) = &out[0];
        assert_eq!(*port, 1, "p1");
        assert_eq!((ip_src(f), ip_dst(f)), ("8.8.8.8".parse().unwrap(), "10.244.0.3".parse().unwrap()));
        assert_eq!(ports(f), (443, 40000));
        assert_eq!(eth_dst(f), p1);
        assert!(skein_datapath::packet::checksums_valid(f));

        // A ping: its echo id is the SNAT "port", and the reply finds its way back.
        let ping = echo(p1, gateway, "10.244.0.3", "8.8.8.8", 8, 7);
        let out = run(&dp, vec![Packet::new(ping, 1)]);
        assert_eq!(out.len(), 1, "{out:?}");
        let id = u16::from_be_bytes([out[0].2[38], out[0].2[39]]);
        assert!((61000..=65535).contains(&id));
        let pong = echo(GATEWAY_MAC, NIC_MAC, "8.8.8.8", NODE_A, 0, id);
        let out = run(&dp, vec![Packet::new(pong, UPLINK)]);
        assert_eq!(out.len(), 1, "{out:?}");
        let (_, port, f) = &out[0];
        assert_eq!((*port, ip_dst(f), u16::from_be_bytes([f[38], f[39]])), (1, "10.244.0.3".parse().unwrap(), 7));
    }

    /// Node a with `n` pods s0.. (10.244.0.10..) on ports 1..=n.
    fn node_with_pods(n: u8) -> (Engine, LocalBindings) {
        let mut e = Engine::new(NetworkConfig::default()).unwrap();
        let mut changes = vec![UpsertNode(node("a", 0, TUNNEL_A)), UpsertNode(node("b", 1, TUNNEL_B))];
        changes.extend((0..n).map(|i| UpsertPod(pod(&format!("s{i}"), "a", 0, 10 + i))));
        e.apply(changes);
        assert_eq!(e.issues().count(), 0);
        let ports = (0..n).map(|i| (format!("default_s{i}"), u32::from(i) + 1)).collect();
        (e, LocalBindings { ports, ..bindings("a") })
    }

    fn syn_from_pod(i: u8) -> Packet {
        let src = format!("10.244.0.{}", 10 + i);
        Packet::new(tcp(mac_of(&src), mac_of("10.244.0.1"), &src, "8.8.8.8", 40000, 443, SYN), u32::from(i) + 1)
    }

    #[test]
    fn pod_egress_snat_uses_only_the_snat_range_and_a_full_range_drops_new_connections() {
        let n = 40;
        let (e, local) = node_with_pods(n);
        let view = e.snapshot("a").unwrap();
        let dp = datapath_with(&view, &local);
        let mut seen = BTreeSet::new();
        for i in 0..n {
            // Every pod uses source port 40000 towards the same server.
            let out = run(&dp, vec![syn_from_pod(i)]);
            assert_eq!(out.len(), 1, "pod {i}: {out:?}");
            assert_eq!((out[0].1, ip_src(&out[0].2)), (UPLINK, NODE_A.parse().unwrap()));
            let sport = ports(&out[0].2).0;
            assert!((61000..=65535).contains(&sport), "pod {i}: port {sport}");
            assert!(seen.insert(sport), "pod {i}: port {sport} given twice");
        }

        // A range of four ports: the fifth connection to the same server is dropped
        // (nat_exhausted) until an earlier one ends.
        let small = Uplink { snat_ports: (61000, 61003), ..Uplink::new(UPLINK, NIC_MAC, GATEWAY_MAC) };
        let local = LocalBindings { uplink: Some(small), ..local };
        let file = translate(&view, &local).unwrap();
        assert!(format_flow_file(&file).contains("nat(src=192.0.2.10:61000-61003)"));
        let dp = datapath_with(&view, &local);
        let t0 = 1_000_000;
        let mut seen = BTreeSet::new();
        for i in 0..4 {
            let out = run_at(&dp, vec![syn_from_pod(i)], t0);
            assert_eq!(out.len(), 1, "pod {i}: {out:?}");
            seen.insert(ports(&out[0].2).0);
        }
        assert_eq!(seen, (61000..=61003).collect());
        assert_eq!(run_at(&dp, vec![syn_from_pod(4)], t0), vec![]);
        assert!(dp.stats().drops.contains(&(skein_datapath::DropReason::NatExhausted, 1)), "{:?}", dp.stats().drops);
        // The unanswered SYNs expire after 30 s; their ports are free again.
        let later = t0 + 31_000_000_000;
        let out = run_at(&dp, vec![syn_from_pod(4)], later);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!((61000..=61003).contains(&ports(&out[0].2).0));
    }

    #[test]
    fn uplink_port_ranges_are_checked() {
        let view = engine().snapshot("a").unwrap();
        for (snat, node_ports) in [((0, 10), (30000, 32767)), ((61000, 65535), (32767, 30000))] {
            let uplink =
                Uplink { snat_ports: snat, node_port_range: node_ports, ..Uplink::new(UPLINK, NIC_MAC, GATEWAY_MAC) };
            let err = translate(&view, &LocalBindings { uplink: Some(uplink), ..bindings("a") }).unwrap_err();
            assert!(matches!(err, TranslateError::BadPortRange { .. }), "{err}");
        }
    }

    #[test]
    fn port_ranges_become_few_masked_matches() {
        let cover = |lo: u16, hi: u16| {
            let masks = port_masks(lo, hi);
            let ports: Vec<u16> = (0..=u16::MAX).filter(|p| masks.iter().any(|(v, m)| p & m == *v)).collect();
            assert_eq!(ports, (lo..=hi).collect::<Vec<_>>(), "{lo}-{hi}");
            masks.len()
        };
        assert_eq!(cover(30000, 32767), 5);
        assert_eq!(cover(61000, 65535), 6);
        assert_eq!(cover(1, 65535), 16);
        assert_eq!(cover(80, 80), 1);
        assert_eq!(cover(65535, 65535), 1);
        assert_eq!(port_masks(0, 65535), vec![(0, 0)]);
    }

    // ---- failure isolation: one bad object leaves out only itself ----

    /// Whether some flow of `t` tunnels to `ip`.
    fn tunnels_to(t: &Translation, ip: Ipv4Addr) -> bool {
        t.file.flows.iter().any(|f| {
            f.actions.iter().any(|a| matches!(a, DpAction::SetField { field: Field::TunDst, value, .. } if *value == u128::from(u32::from(ip))))
        })
    }

    #[test]
    fn two_services_sharing_an_external_ip_and_port_leave_out_only_the_second() {
        let mut e = engine();
        let shared = |name: &str, vip: &str| Service {
            external_ips: vec![ip("203.0.113.50")],
            ..service(name, vip, 80, None, false)
        };
        e.apply([
            UpsertService(shared("first", "10.96.0.20")),
            UpsertEndpointSlice(slice("first-1", "first", &[("10.244.0.3", "a")])),
            UpsertService(shared("second", "10.96.0.21")),
            UpsertEndpointSlice(slice("second-1", "second", &[("10.244.0.4", "a")])),
        ]);
        let view = e.snapshot("a").unwrap();
        let t = translate_partial(&view, &bindings("a")).expect("the view translates");
        let conflicts: Vec<_> =
            t.untranslated.iter().filter(|u| matches!(u.reason, Unsupported::Conflict { .. })).collect();
        assert!(!conflicts.is_empty(), "the shared externalIP:port is reported: {:?}", t.untranslated);
        for u in &conflicts {
            assert!(u.flow.owner.to_string().contains("second"), "only the second Service loses: {u:?}");
            assert!(matches!(&u.reason, Unsupported::Conflict { kept } if kept.contains("first")), "{u:?}");
        }
        // The strict translation names the problem instead of installing a partial view.
        assert!(matches!(translate(&view, &bindings("a")), Err(TranslateError::Untranslatable(_))));

        // Everything else is installed and works: web, the second Service's cluster IP,
        // pod to pod on another node.
        let dp = Datapath::new(DatapathConfig::default());
        if let Err((i, err, _)) = dp.apply(&t.file.to_mods()) {
            panic!("modification {i} refused: {err}");
        }
        let gateway = mac_of("10.244.0.1");
        for (vip, backend, port) in [("10.96.0.10", "10.244.0.4", 2), ("10.96.0.21", "10.244.0.4", 2)] {
            let syn = tcp(mac_of("10.244.0.3"), gateway, "10.244.0.3", vip, 40000, 80, SYN);
            let out = run(&dp, vec![Packet::new(syn, 1)]);
            assert_eq!(out.len(), 1, "{vip}: {out:?}");
            assert_eq!(out[0].1, port, "{vip}");
            assert_eq!(ip_dst(&out[0].2), backend.parse::<Ipv4Addr>().unwrap(), "{vip}");
        }
        assert!(tunnels_to(&t, TUNNEL_B.parse().unwrap()), "pods on b stay reachable");
        // The first Service keeps its external address: DNAT to its backend, p1.
        let syn = tcp(mac_of("10.244.0.4"), gateway, "10.244.0.4", "203.0.113.50", 40001, 80, SYN);
        let out = run(&dp, vec![Packet::new(syn, 2)]);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(ip_dst(&out[0].2), "10.244.0.3".parse::<Ipv4Addr>().unwrap(), "the first Service answers");
    }

    #[test]
    fn a_chassis_with_an_ipv6_tunnel_address_is_left_out_and_the_rest_installed() {
        let mut e = engine();
        e.apply([UpsertNode(node("c", 2, "2001:db8::3")), UpsertPod(pod("r1", "c", 2, 3))]);
        let view = e.snapshot("a").unwrap();
        assert!(view.items.chassis.iter().any(|c| c.name == "c"), "the view lists c");
        let t = translate_partial(&view, &bindings("a")).expect("the view translates");
        assert!(
            t.skipped.iter().any(|s| matches!(&s.reason, SkipReason::Ipv6Tunnel { chassis, .. } if chassis == "c")),
            "{:?}",
            t.skipped
        );
        assert!(
            t.skipped.iter().all(|s| s.object.to_string().contains('c')),
            "only c and its ports are left out: {:?}",
            t.skipped
        );
        assert!(matches!(translate(&view, &bindings("a")), Err(TranslateError::Skipped(_))));
        // b is still a tunnel remote and reachable; c is neither.
        let b: Ipv4Addr = TUNNEL_B.parse().unwrap();
        assert_eq!(t.file.tunnel_remotes[0].remotes, vec![u32::from(b)]);
        assert!(tunnels_to(&t, b));
        let dp = Datapath::new(DatapathConfig::default());
        if let Err((i, err, _)) = dp.apply(&t.file.to_mods()) {
            panic!("modification {i} refused: {err}");
        }
        let syn = tcp(mac_of("10.244.0.3"), mac_of("10.244.0.1"), "10.244.0.3", "10.96.0.10", 40000, 80, SYN);
        assert_eq!(run(&dp, vec![Packet::new(syn, 1)]).len(), 1, "the Service still answers");
        // c itself translates its own view: its own tunnel address is the agent's.
        let on_c = e.snapshot("c").unwrap();
        let t = translate_partial(&on_c, &bindings("b")).expect("c's view translates");
        assert!(t.skipped.iter().all(|s| !matches!(s.reason, SkipReason::Ipv6Tunnel { .. })), "{:?}", t.skipped);
    }

    #[test]
    fn colliding_load_balancer_names_get_distinct_ids() {
        let view = engine().snapshot("a").unwrap();
        let template = view.items.load_balancers.iter().next().unwrap().id.clone();
        let named = |name: String| LbId {
            service: skein_netmodel::cluster::ObjectKey { namespace: "default".into(), name: name.into() },
            ..template.clone()
        };
        // Search for two Service names whose preferred ids collide, as an author who knew
        // the node's key could.
        let key = bindings("a").lb_id_key;
        let mut seen: hashbrown::HashMap<u32, LbId> = hashbrown::HashMap::new();
        let (a, b) = (0..2_000_000u32)
            .find_map(|i| {
                let id = named(format!("svc-{i}"));
                let h = load_balancer_id(&key, &id);
                match seen.get(&h) {
                    Some(other) => Some((other.clone(), id)),
                    None => {
                        seen.insert(h, id);
                        None
                    }
                }
            })
            .expect("a 32-bit collision among 2 million names");
        assert_eq!(load_balancer_id(&key, &a), load_balancer_id(&key, &b));
        let ids = load_balancer_ids(&key, [&a, &b, &template]);
        assert_eq!(ids.len(), 3);
        let distinct: BTreeSet<u32> = ids.values().copied().collect();
        assert_eq!(distinct.len(), 3, "{ids:?}");
        // The first by name keeps its preferred id; the assignment does not depend on order.
        let first = a.to_string().min(b.to_string());
        assert_eq!(ids[&first], load_balancer_id(&key, &a));
        assert_eq!(load_balancer_ids(&key, [&template, &b, &a]), ids);
        // Under another node's key the two names do not collide (the search is per key).
        let other = LbIdKey([9; 16]);
        assert_ne!(load_balancer_id(&other, &a), load_balancer_id(&other, &b));
    }

    #[test]
    fn conntrack_zone_limits_are_installed_with_the_flows() {
        let view = engine().snapshot("a").unwrap();
        let t = translate_partial(&view, &bindings("a")).unwrap();
        assert!(t.file.zone_limits.is_empty(), "no limits by default");
        let local =
            LocalBindings { conntrack: ConntrackLimits { pod_zone: 500, gateway_zone: 20_000 }, ..bindings("a") };
        let file = translate(&view, &local).unwrap();
        let limits: BTreeMap<ZoneLimitScope, u32> = file.zone_limits.iter().map(|z| (z.scope, z.limit)).collect();
        assert_eq!(limits.get(&ZoneLimitScope::Default), Some(&500));
        assert_eq!(limits.get(&ZoneLimitScope::Zone(GATEWAY_DNAT_ZONE)), Some(&20_000));
        assert_eq!(limits.get(&ZoneLimitScope::Zone(GATEWAY_SNAT_ZONE)), Some(&20_000));
        // They survive the flow file (flows.txt) and the datapath takes them.
        assert_eq!(parse_flow_file(&format_flow_file(&file)).unwrap().zone_limits, file.zone_limits);
        let dp = Datapath::new(DatapathConfig::default());
        if let Err((i, err, _)) = dp.apply(&file.to_mods()) {
            panic!("modification {i} refused: {err}");
        }
        // The tunnel accepts b only.
        assert_eq!(file.tunnel_remotes.len(), 1);
        assert_eq!(file.tunnel_remotes[0].port, TUN);
        assert_eq!(file.tunnel_remotes[0].remotes, vec![u32::from(TUNNEL_B.parse::<Ipv4Addr>().unwrap())]);
    }
}
