//! The southbound view: what one chassis (node agent) receives. Datapath and port
//! bindings with their tunnel keys, logical flows with typed matches and actions, load
//! balancer tables and the chassis list — and the versioned deltas between two views.
//!
//! Flows are OVN-style *logical* flows: they name logical ports by key and logical fields
//! (`inport`, `outport`, flags, next hop), not OpenFlow registers; the agent translates
//! them to datapath flows (see `docs/netmodel.md` for the semantics it must implement).

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::addr::{IpFamily, IpNet, MacAddr};
use crate::annotations::Encap;
use crate::cluster::{ObjectKey, PolicyType, Protocol};

/// A logical datapath's 24-bit tunnel key (the Geneve VNI). Never 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DatapathKey(u32);

impl DatapathKey {
    /// Largest key.
    pub const MAX: u32 = (1 << 24) - 1;
    /// `cluster-router`.
    pub const CLUSTER_ROUTER: DatapathKey = DatapathKey(1);
    /// `join`.
    pub const JOIN: DatapathKey = DatapathKey(2);
    /// First key of per-node datapaths; 3–15 are reserved for future cluster-wide ones.
    pub const FIRST_NODE: u32 = 16;

    /// A key, if `value` is in `1..=MAX`.
    pub fn new(value: u32) -> Option<DatapathKey> {
        (1..=Self::MAX).contains(&value).then_some(DatapathKey(value))
    }

    /// The value.
    pub fn get(self) -> u32 {
        self.0
    }

    /// The `node-<node>` switch of node subnet `index` (`16 + 2·index`).
    pub fn node_switch(index: u32) -> DatapathKey {
        DatapathKey(Self::FIRST_NODE.saturating_add(index.saturating_mul(2)).min(Self::MAX))
    }

    /// The `gw-<node>` router of node subnet `index` (`17 + 2·index`).
    pub fn gateway_router(index: u32) -> DatapathKey {
        DatapathKey((Self::FIRST_NODE + 1).saturating_add(index.saturating_mul(2)).min(Self::MAX))
    }
}

impl fmt::Display for DatapathKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A logical port's 15-bit tunnel key, unique within its datapath (the Geneve option's
/// ingress/egress port). 0 means "no port" and is never bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortKey(u16);

impl PortKey {
    /// Largest key (egress keys above it name multicast groups on the wire).
    pub const MAX: u16 = (1 << 15) - 1;
    /// "No port".
    pub const NONE: PortKey = PortKey(0);
    /// Egress key meaning "flood": every port of the datapath (OVN's `_MC_flood`).
    pub const FLOOD: u16 = 32768;

    /// A key, if `value` is in `1..=MAX`.
    pub fn new(value: u16) -> Option<PortKey> {
        (1..=Self::MAX).contains(&value).then_some(PortKey(value))
    }

    /// The value.
    pub fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for PortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Fixed port keys of the cluster-wide datapaths and of each node's switch and gateway.
pub mod port_keys {
    use super::PortKey;

    /// `rtoj-cluster-router` on `cluster-router`, `jtor-cluster-router` on `join`.
    pub const CLUSTER_ROUTER_JOIN: PortKey = PortKey(1);
    /// `stor-<node>`: the router port on a node switch.
    pub const SWITCH_ROUTER: PortKey = PortKey(1);
    /// `mgmt-<node>` on a node switch.
    pub const MANAGEMENT: PortKey = PortKey(2);
    /// `rtoj-gw-<node>`: a gateway router's join port.
    pub const GATEWAY_JOIN: PortKey = PortKey(1);
    /// `rtoe-gw-<node>`: a gateway router's external (uplink) port.
    pub const GATEWAY_EXTERNAL: PortKey = PortKey(2);
}

/// Switch or router.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DatapathKind {
    /// A logical switch.
    Switch,
    /// A logical router.
    Router,
}

/// A logical datapath present on the chassis.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DatapathBinding {
    /// Tunnel key.
    pub key: DatapathKey,
    /// Name (`cluster-router`, `join`, `node-<node>`, `gw-<node>`).
    pub name: String,
    /// Switch or router.
    pub kind: DatapathKind,
}

/// What a logical port is attached to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PortKind {
    /// A pod's interface (the agent binds it when the CNI ADD for this pod arrives).
    Pod {
        /// The pod.
        pod: ObjectKey,
        /// Its UID (CNI passes `K8S_POD_UID`).
        uid: String,
    },
    /// The node's management interface (host ↔ pod traffic).
    Management,
    /// One end of a link between two datapaths: output to it continues in the peer
    /// datapath's ingress pipeline with `inport` = the peer.
    Patch {
        /// The peer's datapath.
        peer_datapath: DatapathKey,
        /// The peer port.
        peer_port: PortKey,
    },
    /// A gateway router's uplink: traffic to and from the node's own network. Its MAC and
    /// next hop are the agent's (learned from the node), not the master's.
    External,
}

/// A logical port present on the chassis.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortBinding {
    /// The port's datapath.
    pub datapath: DatapathKey,
    /// The port's key within it.
    pub key: PortKey,
    /// Name.
    pub name: String,
    /// What it is.
    pub kind: PortKind,
    /// MAC (derived from the first address; `None` for [`PortKind::External`]).
    pub mac: Option<MacAddr>,
    /// Addresses with prefix lengths.
    pub ips: Vec<IpNet>,
    /// The chassis (node name) where the port resides. Output to a port on another
    /// chassis is tunnelled there (VNI = datapath key, egress = port key), and that
    /// chassis runs the egress pipeline. `None`: present on every chassis.
    pub chassis: Option<String>,
}

/// A chassis of the cluster (every node whose agent registered).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Chassis {
    /// Node name (what port bindings name).
    pub name: String,
    /// Chassis id from the agent's annotation.
    pub id: String,
    /// Tunnel endpoint address.
    pub tunnel_ip: IpAddr,
    /// Encapsulation.
    pub encap: Encap,
}

/// Which endpoints of a Service a load balancer uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LbScope {
    /// Every usable endpoint in the cluster (traffic policy `Cluster`, and pods reaching
    /// external or load balancer IPs, as kube-proxy does).
    Cluster,
    /// Only endpoints on the chassis's own node (traffic policy `Local`): each chassis
    /// gets its own backend list, empty (reject) where the node has none.
    NodeLocal,
}

/// Identity of a load balancer: one per Service port, family and scope. Stable across
/// restarts (derived from names, not allocated).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LbId {
    /// The Service.
    pub service: ObjectKey,
    /// Protocol.
    pub protocol: Protocol,
    /// The Service port (`spec.ports[].port`).
    pub port: u16,
    /// Address family of the VIPs and backends.
    pub family: IpFamily,
    /// Which traffic policy applies.
    pub scope: LbScope,
}

impl fmt::Display for LbId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scope = match self.scope {
            LbScope::Cluster => "cluster",
            LbScope::NodeLocal => "local",
        };
        let family = match self.family {
            IpFamily::V4 => "ipv4",
            IpFamily::V6 => "ipv6",
        };
        write!(f, "{}:{}/{}/{family}/{scope}", self.service, self.port, self.protocol)
    }
}

/// A load balancer backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Backend {
    /// Address.
    pub ip: IpAddr,
    /// Port.
    pub port: u16,
}

/// A load balancer as this chassis uses it. Flows that match its VIPs name it in
/// [`Action::CtLb`]; with no backends the client gets a TCP reset or ICMP unreachable.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LoadBalancerEntry {
    /// Identity.
    pub id: LbId,
    /// Backends, sorted (for a `Local` policy, only those on this chassis's node).
    pub backends: Vec<Backend>,
    /// `sessionAffinity: ClientIP` timeout.
    pub affinity_timeout_seconds: Option<u32>,
}

/// Ingress or egress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Pipeline {
    /// Runs where the packet enters the datapath.
    Ingress,
    /// Runs where the output port resides.
    Egress,
}

/// A pipeline stage: its datapath kind, pipeline and table number are fixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Stage {
    /// Switch ingress 0: admit known ports with their own MAC.
    LsInPortSecL2,
    /// Switch ingress 1: admit only a port's own IP/ARP source addresses.
    LsInPortSecIp,
    /// Switch ingress 2: NetworkPolicy: the source's security identity (`acl_meta`).
    LsInPreAcl,
    /// Switch ingress 3: Service load balancing (DNAT on the client's chassis).
    LsInLb,
    /// Switch ingress 4: hairpin (a pod reaching itself through its Service).
    LsInHairpin,
    /// Switch ingress 5: NetworkPolicy: conntrack, in the input port's zone, of traffic
    /// the load balancer did not track.
    LsInAclCt,
    /// Switch ingress 6: NetworkPolicy: replies vouched for, destinations deferred,
    /// egress rules evaluated (after DNAT, OVN's `ls_in_acl_after_lb`).
    LsInAcl,
    /// Switch ingress 7: NetworkPolicy: the egress verdict (commit, or drop).
    LsInAclAction,
    /// Switch ingress 8: ARP answered for known addresses.
    LsInArpResponder,
    /// Switch ingress 9: destination MAC lookup.
    LsInL2Lookup,
    /// Switch ingress 15: NetworkPolicy rule evaluation, a table reached only through
    /// [`Action::AclEval`] (OVN would use conjunctive matches here).
    AclEval,
    /// Switch egress 0: un-NAT of Service replies in the destination port's zone.
    LsOutLb,
    /// Switch egress 1: NetworkPolicy: the ingress rules of the destination port and the
    /// egress rules of the source identity evaluated.
    LsOutPreAcl,
    /// Switch egress 2: NetworkPolicy: the verdict (commit, or drop).
    LsOutAcl,
    /// Switch egress 3: deliver to the output port.
    LsOutDeliver,
    /// Router ingress 0: admit frames addressed to the router port.
    LrInAdmission,
    /// Router ingress 1: the router's own addresses (ARP, ping), TTL expiry.
    LrInIpInput,
    /// Router ingress 2: undo SNAT of replies (gateway routers).
    LrInUnsnat,
    /// Router ingress 3: DNAT of NodePort / external Service traffic (gateway routers).
    LrInDnat,
    /// Router ingress 4: routing (static and connected routes).
    LrInRouting,
    /// Router ingress 5: next-hop MAC (derived from the next-hop IP), output.
    LrInArpResolve,
    /// Router egress 0: SNAT (pod egress to the node IP, forced SNAT to the join IP).
    LrOutSnat,
    /// Router egress 1: deliver to the output port.
    LrOutDeliver,
}

impl Stage {
    /// Every stage, in pipeline order.
    pub const ALL: [Stage; 23] = [
        Stage::LsInPortSecL2,
        Stage::LsInPortSecIp,
        Stage::LsInPreAcl,
        Stage::LsInLb,
        Stage::LsInHairpin,
        Stage::LsInAclCt,
        Stage::LsInAcl,
        Stage::LsInAclAction,
        Stage::LsInArpResponder,
        Stage::LsInL2Lookup,
        Stage::AclEval,
        Stage::LsOutLb,
        Stage::LsOutPreAcl,
        Stage::LsOutAcl,
        Stage::LsOutDeliver,
        Stage::LrInAdmission,
        Stage::LrInIpInput,
        Stage::LrInUnsnat,
        Stage::LrInDnat,
        Stage::LrInRouting,
        Stage::LrInArpResolve,
        Stage::LrOutSnat,
        Stage::LrOutDeliver,
    ];

    /// Switch or router stage.
    pub fn datapath_kind(self) -> DatapathKind {
        match self {
            Stage::LsInPortSecL2
            | Stage::LsInPortSecIp
            | Stage::LsInPreAcl
            | Stage::LsInLb
            | Stage::LsInHairpin
            | Stage::LsInAclCt
            | Stage::LsInAcl
            | Stage::LsInAclAction
            | Stage::LsInArpResponder
            | Stage::LsInL2Lookup
            | Stage::AclEval
            | Stage::LsOutLb
            | Stage::LsOutPreAcl
            | Stage::LsOutAcl
            | Stage::LsOutDeliver => DatapathKind::Switch,
            _ => DatapathKind::Router,
        }
    }

    /// Ingress or egress.
    pub fn pipeline(self) -> Pipeline {
        match self {
            Stage::LsOutLb
            | Stage::LsOutPreAcl
            | Stage::LsOutAcl
            | Stage::LsOutDeliver
            | Stage::LrOutSnat
            | Stage::LrOutDeliver => Pipeline::Egress,
            _ => Pipeline::Ingress,
        }
    }

    /// Table number within its pipeline.
    pub fn table(self) -> u8 {
        match self {
            Stage::LsInPortSecL2 | Stage::LsOutLb | Stage::LrInAdmission | Stage::LrOutSnat => 0,
            Stage::LsInPortSecIp | Stage::LsOutPreAcl | Stage::LrInIpInput | Stage::LrOutDeliver => 1,
            Stage::LsInPreAcl | Stage::LsOutAcl | Stage::LrInUnsnat => 2,
            Stage::LsInLb | Stage::LsOutDeliver | Stage::LrInDnat => 3,
            Stage::LsInHairpin | Stage::LrInRouting => 4,
            Stage::LsInAclCt | Stage::LrInArpResolve => 5,
            Stage::LsInAcl => 6,
            Stage::LsInAclAction => 7,
            Stage::LsInArpResponder => 8,
            Stage::LsInL2Lookup => 9,
            Stage::AclEval => 15,
        }
    }

    /// OVN-style name (`ls_in_lb`).
    pub fn name(self) -> &'static str {
        match self {
            Stage::LsInPortSecL2 => "ls_in_port_sec_l2",
            Stage::LsInPortSecIp => "ls_in_port_sec_ip",
            Stage::LsInPreAcl => "ls_in_pre_acl",
            Stage::LsInLb => "ls_in_lb",
            Stage::LsInHairpin => "ls_in_hairpin",
            Stage::LsInAclCt => "ls_in_acl_ct",
            Stage::LsInAcl => "ls_in_acl",
            Stage::LsInAclAction => "ls_in_acl_action",
            Stage::AclEval => "acl_eval",
            Stage::LsInArpResponder => "ls_in_arp_rsp",
            Stage::LsInL2Lookup => "ls_in_l2_lkup",
            Stage::LsOutLb => "ls_out_lb",
            Stage::LsOutPreAcl => "ls_out_pre_acl",
            Stage::LsOutAcl => "ls_out_acl",
            Stage::LsOutDeliver => "ls_out_deliver",
            Stage::LrInAdmission => "lr_in_admission",
            Stage::LrInIpInput => "lr_in_ip_input",
            Stage::LrInUnsnat => "lr_in_unsnat",
            Stage::LrInDnat => "lr_in_dnat",
            Stage::LrInRouting => "lr_in_ip_routing",
            Stage::LrInArpResolve => "lr_in_arp_resolve",
            Stage::LrOutSnat => "lr_out_snat",
            Stage::LrOutDeliver => "lr_out_deliver",
        }
    }

    /// True for the stages that NetworkPolicy fills (they hold only `next` while the
    /// cluster has no NetworkPolicy).
    pub fn is_acl(self) -> bool {
        matches!(
            self,
            Stage::LsInPreAcl
                | Stage::LsInAclCt
                | Stage::LsInAcl
                | Stage::LsInAclAction
                | Stage::AclEval
                | Stage::LsOutPreAcl
                | Stage::LsOutAcl
        )
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which L3 protocol a flow requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum L3 {
    /// ARP.
    Arp,
    /// IPv4.
    Ip4,
    /// IPv6.
    Ip6,
    /// IPv4 or IPv6.
    Ip,
}

/// ARP operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ArpOp {
    /// 1.
    Request,
    /// 2.
    Reply,
}

/// IP protocol a flow requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum IpProto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
    /// ICMP (ICMPv6 for IPv6 flows).
    Icmp,
}

impl From<Protocol> for IpProto {
    fn from(p: Protocol) -> IpProto {
        match p {
            Protocol::Tcp => IpProto::Tcp,
            Protocol::Udp => IpProto::Udp,
            Protocol::Sctp => IpProto::Sctp,
        }
    }
}

/// Packet-metadata flags that stages pass to later stages (registers, in the agent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct Flags(pub u16);

impl Flags {
    /// Gateway router: SNAT this packet to the router's join address on its way to the
    /// cluster (NodePort traffic with `externalTrafficPolicy: Cluster`, so that the reply
    /// comes back through the same gateway).
    pub const FORCE_SNAT: Flags = Flags(1 << 0);
    /// Switch: this is a reply to a hairpinned connection (undo both NATs).
    pub const HAIRPIN_REPLY: Flags = Flags(1 << 1);
    /// Switch: the destination port is isolated for ingress by some NetworkPolicy.
    pub const ACL_IN_ISOLATED: Flags = Flags(1 << 2);
    /// Switch: an ingress rule of a policy isolating the destination allows the packet.
    pub const ACL_IN_ALLOWED: Flags = Flags(1 << 3);
    /// Switch: the source identity is isolated for egress by some NetworkPolicy.
    pub const ACL_EG_ISOLATED: Flags = Flags(1 << 4);
    /// Switch: an egress rule of a policy isolating the source allows the packet.
    pub const ACL_EG_ALLOWED: Flags = Flags(1 << 5);
    /// Switch ingress: the destination is a pod address; the verdict is the destination
    /// port's (on whichever chassis it resides).
    pub const ACL_DEFERRED: Flags = Flags(1 << 6);
    /// Switch: no verdict needed (a reply of an allowed connection, or router-port
    /// traffic).
    pub const ACL_PASS: Flags = Flags(1 << 7);
    /// Switch egress: always allowed and committed (the node's own traffic to its pods,
    /// hairpin).
    pub const ACL_BYPASS: Flags = Flags(1 << 8);

    /// True if no flag is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// A pod's security identity: its namespace's number and the number of its label class
/// within the namespace (the pods of one namespace whose labels agree on every key some
/// NetworkPolicy selector reads share a class). 24 bits: `namespace (12) | class (12)`.
/// It travels with the packet (the `acl_meta` register, and the Geneve identity option
/// between chassis), so that a chassis judges traffic from remote pods without knowing
/// them (Cilium's numeric identities).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct Identity(pub u32);

impl Identity {
    /// Not a pod: outside the cluster, or a node's host through another path.
    pub const WORLD: Identity = Identity(0);
    /// A node's host through its management port.
    pub const HOST: Identity = Identity(1);
    /// Largest namespace number (0 is for non-pod identities).
    pub const MAX_NAMESPACE: u16 = (1 << 12) - 1;
    /// Largest class number.
    pub const MAX_CLASS: u16 = (1 << 12) - 1;
    /// Mask of the namespace bits.
    pub const NAMESPACE_MASK: u32 = 0xfff << 12;
    /// Mask of every identity bit.
    pub const MASK: u32 = 0x00ff_ffff;

    /// The identity of class `class` in namespace `namespace` (both masked to 12 bits).
    pub fn new(namespace: u16, class: u16) -> Identity {
        Identity((u32::from(namespace & 0xfff) << 12) | u32::from(class & 0xfff))
    }

    /// The namespace number.
    pub fn namespace(self) -> u16 {
        ((self.0 >> 12) & 0xfff) as u16
    }

    /// The class number.
    pub fn class(self) -> u16 {
        (self.0 & 0xfff) as u16
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.namespace(), self.class())
    }
}

/// The `acl_meta` register: the source's [`Identity`] in the low 24 bits, and bits that
/// travel with it (through patch ports and, as the Geneve identity option, through
/// tunnels).
pub mod acl_meta {
    /// This packet is a reply (or related) of a connection that the sending port's
    /// conntrack zone committed as allowed: the receiving port accepts it.
    pub const VOUCHED: u32 = 1 << 24;
    /// The connection was DNATed in the client's zone: the reply must be un-NATed there.
    pub const CLIENT_NAT: u32 = 1 << 25;
    /// Every bit.
    pub const ALL: u32 = u32::MAX;
}

/// `ct_mark` bits of the connections NetworkPolicy commits.
pub mod ct_mark {
    /// The connection was allowed (its replies are vouched for).
    pub const ALLOWED: u32 = 1 << 0;
    /// The client's zone DNATed the connection (a Service): replies need un-NAT there.
    pub const CLIENT_NAT: u32 = 1 << 1;
    /// A policy change denied the established connection: both directions drop (OVN's
    /// `ct_mark.blocked`).
    pub const BLOCKED: u32 = 1 << 2;
}

/// Conntrack state bits (as in OVS `ct_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct CtState(pub u8);

impl CtState {
    /// The packet went through conntrack.
    pub const TRACKED: CtState = CtState(1 << 0);
    /// First packet of a connection.
    pub const NEW: CtState = CtState(1 << 1);
    /// Part of an established connection.
    pub const ESTABLISHED: CtState = CtState(1 << 2);
    /// Related to a connection (ICMP error, ...).
    pub const RELATED: CtState = CtState(1 << 3);
    /// Reply direction.
    pub const REPLY: CtState = CtState(1 << 4);
    /// Invalid.
    pub const INVALID: CtState = CtState(1 << 5);
    /// Destination NAT was applied.
    pub const DNAT: CtState = CtState(1 << 6);
    /// Source NAT was applied.
    pub const SNAT: CtState = CtState(1 << 7);
}

/// A masked match on bit sets such as [`Flags`] or [`CtState`]: `field & mask == value`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct BitsMatch<T> {
    /// Bits that must be set (a subset of `mask`).
    pub value: T,
    /// Bits looked at.
    pub mask: T,
}

/// A logical flow's match: a conjunction; `None` / empty fields match anything.
///
/// A field implies its prerequisites, as in OVN: `ip_src`/`ip_dst` the family's
/// ethertype, `arp_*` ARP, `l4_dst` and `icmp_type` their `ip_proto`. Flows built by the
/// compiler always set the prerequisite fields explicitly too.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct Match {
    /// Logical input port.
    pub inport: Option<PortKey>,
    /// Logical output port (set by an earlier stage or by the sender chassis).
    pub outport: Option<PortKey>,
    /// Ethernet source.
    pub eth_src: Option<MacAddr>,
    /// Ethernet destination ([`MacAddr::BROADCAST`] for broadcast).
    pub eth_dst: Option<MacAddr>,
    /// L3 protocol.
    pub l3: Option<L3>,
    /// ARP operation.
    pub arp_op: Option<ArpOp>,
    /// ARP sender hardware address.
    pub arp_sha: Option<MacAddr>,
    /// ARP sender protocol address.
    pub arp_spa: Option<Ipv4Addr>,
    /// ARP target protocol address.
    pub arp_tpa: Option<Ipv4Addr>,
    /// IP source prefix.
    pub ip_src: Option<IpNet>,
    /// IP destination prefix.
    pub ip_dst: Option<IpNet>,
    /// IP TTL / hop limit is 0 or 1 (a router would expire the packet).
    pub ttl_expiring: bool,
    /// IP protocol.
    pub ip_proto: Option<IpProto>,
    /// ICMP type (with `ip_proto: Icmp`).
    pub icmp_type: Option<u8>,
    /// L4 destination port (with `ip_proto` TCP, UDP or SCTP).
    pub l4_dst: Option<u16>,
    /// Conntrack state.
    pub ct_state: BitsMatch<CtState>,
    /// Metadata flags.
    pub flags: BitsMatch<Flags>,
    /// Last port of an L4 destination range `l4_dst..=l4_dst_end` (NetworkPolicy
    /// `endPort`).
    pub l4_dst_end: Option<u16>,
    /// The `acl_meta` register (source [`Identity`] and [`acl_meta`] bits).
    pub acl_meta: BitsMatch<u32>,
    /// The ACL id being evaluated (in [`Stage::AclEval`]).
    pub acl_id: Option<u32>,
    /// The destination's [`Identity`] (set in switch egress for local pods; matched by
    /// egress rules).
    pub dst_identity: BitsMatch<u32>,
    /// Conntrack mark ([`ct_mark`] bits).
    pub ct_mark: BitsMatch<u32>,
}

impl Match {
    /// Matches every packet.
    pub fn any() -> Match {
        Match::default()
    }

    /// Adds `inport == port`.
    pub fn inport(mut self, port: PortKey) -> Match {
        self.inport = Some(port);
        self
    }

    /// Adds `outport == port`.
    pub fn outport(mut self, port: PortKey) -> Match {
        self.outport = Some(port);
        self
    }

    /// Adds `eth.src == mac`.
    pub fn eth_src(mut self, mac: MacAddr) -> Match {
        self.eth_src = Some(mac);
        self
    }

    /// Adds `eth.dst == mac`.
    pub fn eth_dst(mut self, mac: MacAddr) -> Match {
        self.eth_dst = Some(mac);
        self
    }

    /// Adds an L3 protocol.
    pub fn l3(mut self, l3: L3) -> Match {
        self.l3 = Some(l3);
        self
    }

    /// Adds `ip.src ∈ net` (and the family).
    pub fn ip_src(mut self, net: IpNet) -> Match {
        self.l3 = Some(l3_of(net.family()));
        self.ip_src = Some(net);
        self
    }

    /// Adds `ip.dst ∈ net` (and the family).
    pub fn ip_dst(mut self, net: IpNet) -> Match {
        self.l3 = Some(l3_of(net.family()));
        self.ip_dst = Some(net);
        self
    }

    /// Adds `ip.proto == proto && l4.dst == port`.
    pub fn l4_dst(mut self, proto: IpProto, port: u16) -> Match {
        self.ip_proto = Some(proto);
        self.l4_dst = Some(port);
        self
    }

    /// Adds `arp && arp.op == request && arp.tpa == ip`.
    pub fn arp_request_for(mut self, ip: Ipv4Addr) -> Match {
        self.l3 = Some(L3::Arp);
        self.arp_op = Some(ArpOp::Request);
        self.arp_tpa = Some(ip);
        self
    }

    /// Adds the flag bits `flags` that must be set.
    pub fn flags_set(mut self, flags: Flags) -> Match {
        self.flags.value.0 |= flags.0;
        self.flags.mask.0 |= flags.0;
        self
    }

    /// Adds flag bits that must be clear.
    pub fn flags_clear(mut self, flags: Flags) -> Match {
        self.flags.value.0 &= !flags.0;
        self.flags.mask.0 |= flags.0;
        self
    }

    /// Adds conntrack state bits that must be set.
    pub fn ct_set(mut self, state: CtState) -> Match {
        self.ct_state.value.0 |= state.0;
        self.ct_state.mask.0 |= state.0;
        self
    }

    /// Adds conntrack state bits that must be clear.
    pub fn ct_clear(mut self, state: CtState) -> Match {
        self.ct_state.value.0 &= !state.0;
        self.ct_state.mask.0 |= state.0;
        self
    }

    /// Adds `ip.proto == proto && l4.dst ∈ lo..=hi`.
    pub fn l4_dst_range(mut self, proto: IpProto, lo: u16, hi: u16) -> Match {
        self.ip_proto = Some(proto);
        self.l4_dst = Some(lo);
        self.l4_dst_end = (hi != lo).then_some(hi);
        self
    }

    /// Adds `acl_meta & mask == value`.
    pub fn acl_meta(mut self, value: u32, mask: u32) -> Match {
        self.acl_meta.value = (self.acl_meta.value & !mask) | (value & mask);
        self.acl_meta.mask |= mask;
        self
    }

    /// Adds `ct_mark & mask == value`.
    pub fn ct_mark(mut self, value: u32, mask: u32) -> Match {
        self.ct_mark.value = (self.ct_mark.value & !mask) | (value & mask);
        self.ct_mark.mask |= mask;
        self
    }

    /// Adds `acl_id == id`.
    pub fn acl_id(mut self, id: u32) -> Match {
        self.acl_id = Some(id);
        self
    }
}

/// The `l3` value for a family.
pub fn l3_of(family: IpFamily) -> L3 {
    match family {
        IpFamily::V4 => L3::Ip4,
        IpFamily::V6 => L3::Ip6,
    }
}

/// Whose conntrack zone a `ct` action uses. Zones are chosen by the agent (they are
/// local): one per local logical port on switches — plus a second one per pod port for
/// hairpin SNAT — and one DNAT and one SNAT zone per gateway router.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ZoneScope {
    /// The input port's zone.
    InPort,
    /// The input port's hairpin-SNAT zone.
    InPortHairpin,
    /// The output port's zone.
    OutPort,
    /// The router's DNAT zone.
    RouterDnat,
    /// The router's SNAT zone.
    RouterSnat,
}

/// Where the router sends a packet next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum NextHop {
    /// The destination itself (a connected route).
    Destination,
    /// A router address.
    Ip(IpAddr),
    /// The node's own default gateway, known to the agent only.
    Uplink,
}

/// A logical flow action. `ct` actions end the flow's action list: conntrack runs and the
/// packet continues at the next table of the same pipeline (OVN's `ct_next`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Action {
    /// Continue at the next table.
    Next,
    /// Ingress: run the egress pipeline for `outport` (on the chassis where it resides:
    /// tunnel there if it is remote). Egress: deliver to `outport` (a patch port continues
    /// in the peer datapath's ingress).
    Output,
    /// Drop.
    Drop,
    /// `outport = port`.
    SetOutport(PortKey),
    /// Output a copy to every port of the datapath on this chassis except `inport`.
    Flood,
    /// `eth.src = mac`.
    SetEthSrc(MacAddr),
    /// `eth.dst = mac`.
    SetEthDst(MacAddr),
    /// Record the next hop for [`Action::SetEthDstForNextHop`].
    SetNextHop(NextHop),
    /// `eth.dst` = the next hop's MAC: derived from its IPv4 address (`0a:58:` + address;
    /// for [`NextHop::Destination`], from `ip.dst`), or the uplink gateway's MAC.
    SetEthDstForNextHop,
    /// Decrement the TTL (the `ttl_expiring` match catches the expiring ones first).
    DecTtl,
    /// Set metadata flags.
    SetFlags(Flags),
    /// Answer an ARP request: "`arp.tpa` is at `mac`", out of the input port.
    ArpReply {
        /// The answer.
        mac: MacAddr,
    },
    /// Answer an ICMP echo request.
    IcmpEchoReply,
    /// Send ICMP time exceeded from `source` back to the sender.
    IcmpTimeExceeded {
        /// The router port address the error comes from.
        source: IpAddr,
    },
    /// Reject: TCP reset, or ICMP port unreachable.
    Reject,
    /// Conntrack in `zone`, applying the NAT of known connections (un-NAT of replies).
    CtNat {
        /// Zone.
        zone: ZoneScope,
    },
    /// Load-balance through conntrack: known connections keep their backend; a new one
    /// gets a backend of `lb` and is committed with DNAT to it; with no backends, reject.
    CtLb {
        /// The load balancer.
        lb: LbId,
        /// Zone.
        zone: ZoneScope,
    },
    /// Commit with SNAT to `ip`.
    CtSnat {
        /// New source address.
        ip: IpAddr,
        /// Zone.
        zone: ZoneScope,
    },
    /// Conntrack in `zone` without NAT (OVN's `ct_next`): the next table sees `ct_state`
    /// and `ct_mark`.
    CtNext {
        /// Zone.
        zone: ZoneScope,
    },
    /// Commit the connection in `zone`, setting the `ct_mark` bits in `mask` to
    /// `mark`; processing goes on with the next action (no recirculation).
    CtCommit {
        /// Zone.
        zone: ZoneScope,
        /// Mark value.
        mark: u32,
        /// Mark bits written.
        mask: u32,
    },
    /// The destination identity register = the identity.
    SetDstIdentity(Identity),
    /// `acl_meta = (acl_meta & !mask) | value`.
    SetAclMeta {
        /// Value.
        value: u32,
        /// Bits written.
        mask: u32,
    },
    /// Evaluates each ACL id in turn in [`Stage::AclEval`] (`acl_id = id`, then that
    /// table's best flow), then goes on with the next action.
    AclEval(Vec<u32>),
    /// Drop: NetworkPolicy denies the packet. `policies` isolate the port (or the source
    /// identity) in `direction` and none of their rules allows it; counters and the
    /// audit log blame them.
    Deny {
        /// Ingress (the destination is isolated) or egress (the source is).
        direction: PolicyType,
        /// The isolating policies.
        policies: Vec<ObjectKey>,
    },
}

/// Which cluster object a flow (or any item) comes from: the unit of recompilation, and
/// the flow's cookie for dumps.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Owner {
    /// The cluster-wide datapaths (configuration only).
    Cluster,
    /// A node.
    Node(Arc<str>),
    /// A pod.
    Pod(ObjectKey),
    /// A Service with its EndpointSlices.
    Service(ObjectKey),
    /// A NetworkPolicy (its rule evaluation flows).
    Policy(ObjectKey),
    /// A namespace (the egress policies that may isolate its pods).
    Namespace(Arc<str>),
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Cluster => f.write_str("cluster"),
            Owner::Node(n) => write!(f, "node/{n}"),
            Owner::Pod(p) => write!(f, "pod/{p}"),
            Owner::Service(s) => write!(f, "service/{s}"),
            Owner::Policy(p) => write!(f, "networkpolicy/{p}"),
            Owner::Namespace(n) => write!(f, "namespace/{n}"),
        }
    }
}

/// A logical flow.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LogicalFlow {
    /// The datapath.
    pub datapath: DatapathKey,
    /// Stage (pipeline and table).
    pub stage: Stage,
    /// Priority: higher wins. Flows of one stage and priority never overlap.
    pub priority: u16,
    /// Match.
    pub matches: Match,
    /// Actions, in order.
    pub actions: Vec<Action>,
    /// The object it was compiled from.
    pub owner: Owner,
}

/// A set of southbound items: a chassis's whole view, or one side of a delta.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ItemSet {
    /// Chassis.
    pub chassis: BTreeSet<Chassis>,
    /// Datapaths.
    pub datapaths: BTreeSet<DatapathBinding>,
    /// Ports.
    pub ports: BTreeSet<PortBinding>,
    /// Flows.
    pub flows: BTreeSet<LogicalFlow>,
    /// Load balancers.
    pub load_balancers: BTreeSet<LoadBalancerEntry>,
}

impl ItemSet {
    /// True if there is nothing in it.
    pub fn is_empty(&self) -> bool {
        self.chassis.is_empty()
            && self.datapaths.is_empty()
            && self.ports.is_empty()
            && self.flows.is_empty()
            && self.load_balancers.is_empty()
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.chassis.len() + self.datapaths.len() + self.ports.len() + self.flows.len() + self.load_balancers.len()
    }
}

/// Everything one chassis needs, at a version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ChassisView {
    /// The chassis (node name).
    pub chassis: String,
    /// Version: 0 is the empty view; each delta adds one.
    pub version: u64,
    /// The items.
    pub items: ItemSet,
}

/// The change from one version of a chassis's view to the next: remove `removed`, then
/// add `added`. A changed item (a port whose addresses changed, a load balancer whose
/// backends changed) appears in both, old in `removed`, new in `added`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ChassisDelta {
    /// The chassis.
    pub chassis: String,
    /// The version this applies to.
    pub from_version: u64,
    /// The version it produces (`from_version + 1`).
    pub to_version: u64,
    /// Items to remove (each present in the `from_version` view).
    pub removed: ItemSet,
    /// Items to add (none present after the removal).
    pub added: ItemSet,
}

/// Why a delta does not apply to a view.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum DeltaError {
    /// For another chassis.
    #[error("delta for chassis {delta} applied to the view of {view}")]
    WrongChassis {
        /// The view's chassis.
        view: String,
        /// The delta's chassis.
        delta: String,
    },
    /// Version gap: the agent must ask for a snapshot.
    #[error("delta from version {delta} applied to view at version {view}")]
    VersionMismatch {
        /// The view's version.
        view: u64,
        /// The delta's `from_version`.
        delta: u64,
    },
    /// The delta removes something the view does not hold, or adds something it holds.
    #[error("delta {from}→{to} does not match the view's contents ({kind})")]
    ContentMismatch {
        /// `from_version`.
        from: u64,
        /// `to_version`.
        to: u64,
        /// Which kind of item.
        kind: &'static str,
    },
}

fn apply_set<T: Ord + Clone>(set: &mut BTreeSet<T>, removed: &BTreeSet<T>, added: &BTreeSet<T>) -> Result<(), ()> {
    if !removed.iter().all(|r| set.contains(r)) {
        return Err(());
    }
    if added.iter().any(|a| set.contains(a) && !removed.contains(a)) {
        return Err(());
    }
    for r in removed {
        set.remove(r);
    }
    set.extend(added.iter().cloned());
    Ok(())
}

impl ChassisView {
    /// Applies `delta`; on error the view is unchanged.
    pub fn apply(&mut self, delta: &ChassisDelta) -> Result<(), DeltaError> {
        if delta.chassis != self.chassis {
            return Err(DeltaError::WrongChassis { view: self.chassis.clone(), delta: delta.chassis.clone() });
        }
        if delta.from_version != self.version {
            return Err(DeltaError::VersionMismatch { view: self.version, delta: delta.from_version });
        }
        let mut items = self.items.clone();
        let mismatch = |kind| DeltaError::ContentMismatch { from: delta.from_version, to: delta.to_version, kind };
        let (r, a) = (&delta.removed, &delta.added);
        apply_set(&mut items.chassis, &r.chassis, &a.chassis).map_err(|_| mismatch("chassis"))?;
        apply_set(&mut items.datapaths, &r.datapaths, &a.datapaths).map_err(|_| mismatch("datapaths"))?;
        apply_set(&mut items.ports, &r.ports, &a.ports).map_err(|_| mismatch("ports"))?;
        apply_set(&mut items.flows, &r.flows, &a.flows).map_err(|_| mismatch("flows"))?;
        apply_set(&mut items.load_balancers, &r.load_balancers, &a.load_balancers)
            .map_err(|_| mismatch("load balancers"))?;
        self.items = items;
        self.version = delta.to_version;
        Ok(())
    }
}

// ---- Display: OVN's notation, for dumps and test failures ----

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut terms: Vec<String> = Vec::new();
        if let Some(p) = self.inport {
            terms.push(format!("inport == {p}"));
        }
        if let Some(p) = self.outport {
            terms.push(format!("outport == {p}"));
        }
        if let Some(m) = self.eth_src {
            terms.push(format!("eth.src == {m}"));
        }
        if let Some(m) = self.eth_dst {
            terms.push(if m == MacAddr::BROADCAST { "eth.bcast".into() } else { format!("eth.dst == {m}") });
        }
        let v6 = self.l3 == Some(L3::Ip6);
        if let Some(l3) = self.l3 {
            terms.push(
                match l3 {
                    L3::Arp => "arp",
                    L3::Ip4 => "ip4",
                    L3::Ip6 => "ip6",
                    L3::Ip => "ip",
                }
                .into(),
            );
        }
        if let Some(op) = self.arp_op {
            terms.push(format!("arp.op == {}", if op == ArpOp::Request { 1 } else { 2 }));
        }
        if let Some(m) = self.arp_sha {
            terms.push(format!("arp.sha == {m}"));
        }
        if let Some(ip) = self.arp_spa {
            terms.push(format!("arp.spa == {ip}"));
        }
        if let Some(ip) = self.arp_tpa {
            terms.push(format!("arp.tpa == {ip}"));
        }
        let ip = if v6 { "ip6" } else { "ip4" };
        let net = |n: &IpNet| if n.prefix_len() == n.family().bits() { n.addr().to_string() } else { n.to_string() };
        if let Some(n) = &self.ip_src {
            terms.push(format!("{ip}.src == {}", net(n)));
        }
        if let Some(n) = &self.ip_dst {
            terms.push(format!("{ip}.dst == {}", net(n)));
        }
        if self.ttl_expiring {
            terms.push(format!("{ip}.ttl <= 1"));
        }
        let l4 = self.ip_proto.map(|p| match p {
            IpProto::Tcp => "tcp",
            IpProto::Udp => "udp",
            IpProto::Sctp => "sctp",
            IpProto::Icmp if v6 => "icmp6",
            IpProto::Icmp => "icmp4",
        });
        if let Some(l4) = l4 {
            terms.push(l4.into());
            match (self.l4_dst, self.l4_dst_end) {
                (Some(lo), Some(hi)) => terms.push(format!("{l4}.dst >= {lo} && {l4}.dst <= {hi}")),
                (Some(port), None) => terms.push(format!("{l4}.dst == {port}")),
                _ => {}
            }
            if let Some(t) = self.icmp_type {
                terms.push(format!("{l4}.type == {t}"));
            }
        }
        const CT: [(u8, &str); 8] =
            [(1, "trk"), (2, "new"), (4, "est"), (8, "rel"), (16, "rpl"), (32, "inv"), (64, "dnat"), (128, "snat")];
        for (bit, name) in CT {
            if self.ct_state.mask.0 & bit != 0 {
                let neg = if self.ct_state.value.0 & bit == 0 { "!" } else { "" };
                terms.push(format!("{neg}ct.{name}"));
            }
        }
        const FLAGS: [(u16, &str); 9] = [
            (1, "flags.force_snat"),
            (2, "flags.hairpin_reply"),
            (4, "flags.acl_in_isolated"),
            (8, "flags.acl_in_allowed"),
            (16, "flags.acl_eg_isolated"),
            (32, "flags.acl_eg_allowed"),
            (64, "flags.acl_deferred"),
            (128, "flags.acl_pass"),
            (256, "flags.acl_bypass"),
        ];
        for (bit, name) in FLAGS {
            if self.flags.mask.0 & bit != 0 {
                let neg = if self.flags.value.0 & bit == 0 { "!" } else { "" };
                terms.push(format!("{neg}{name}"));
            }
        }
        let meta = self.acl_meta;
        match meta.mask & Identity::MASK {
            0 => {}
            Identity::MASK => terms.push(format!("identity == {}", Identity(meta.value & Identity::MASK))),
            Identity::NAMESPACE_MASK => {
                terms.push(format!("identity.namespace == {}", Identity(meta.value).namespace()))
            }
            m => terms.push(format!("identity & {m:#x} == {:#x}", meta.value & m)),
        }
        for (bit, name) in [(acl_meta::VOUCHED, "vouched"), (acl_meta::CLIENT_NAT, "client_nat")] {
            if meta.mask & bit != 0 {
                let neg = if meta.value & bit == 0 { "!" } else { "" };
                terms.push(format!("{neg}acl_meta.{name}"));
            }
        }
        if let Some(id) = self.acl_id {
            terms.push(format!("acl_id == {id:#x}"));
        }
        let dst = self.dst_identity;
        match dst.mask {
            0 => {}
            Identity::MASK => terms.push(format!("dst_identity == {}", Identity(dst.value))),
            Identity::NAMESPACE_MASK => {
                terms.push(format!("dst_identity.namespace == {}", Identity(dst.value).namespace()))
            }
            m => terms.push(format!("dst_identity & {m:#x} == {:#x}", dst.value & m)),
        }
        for (bit, name) in
            [(ct_mark::ALLOWED, "allowed"), (ct_mark::CLIENT_NAT, "client_nat"), (ct_mark::BLOCKED, "blocked")]
        {
            if self.ct_mark.mask & bit != 0 {
                let neg = if self.ct_mark.value & bit == 0 { "!" } else { "" };
                terms.push(format!("{neg}ct_mark.{name}"));
            }
        }
        if terms.is_empty() { f.write_str("1") } else { f.write_str(&terms.join(" && ")) }
    }
}

impl fmt::Display for ZoneScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ZoneScope::InPort => "inport",
            ZoneScope::InPortHairpin => "inport.hairpin",
            ZoneScope::OutPort => "outport",
            ZoneScope::RouterDnat => "dnat",
            ZoneScope::RouterSnat => "snat",
        })
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Next => f.write_str("next;"),
            Action::Output => f.write_str("output;"),
            Action::Drop => f.write_str("drop;"),
            Action::SetOutport(p) => write!(f, "outport = {p};"),
            Action::Flood => f.write_str("outport = _MC_flood; output;"),
            Action::SetEthSrc(m) => write!(f, "eth.src = {m};"),
            Action::SetEthDst(m) => write!(f, "eth.dst = {m};"),
            Action::SetNextHop(NextHop::Destination) => f.write_str("nexthop = ip.dst;"),
            Action::SetNextHop(NextHop::Ip(ip)) => write!(f, "nexthop = {ip};"),
            Action::SetNextHop(NextHop::Uplink) => f.write_str("nexthop = uplink;"),
            Action::SetEthDstForNextHop => f.write_str("eth.dst = mac(nexthop);"),
            Action::DecTtl => f.write_str("ip.ttl--;"),
            Action::SetFlags(fl) => write!(f, "flags |= {:#x};", fl.0),
            Action::ArpReply { mac } => write!(f, "arp_reply(eth.src = {mac});"),
            Action::IcmpEchoReply => f.write_str("icmp_echo_reply;"),
            Action::IcmpTimeExceeded { source } => write!(f, "icmp_time_exceeded(ip.src = {source});"),
            Action::Reject => f.write_str("reject;"),
            Action::CtNat { zone } => write!(f, "ct_nat(zone = {zone});"),
            Action::CtLb { lb, zone } => write!(f, "ct_lb(lb = {lb}, zone = {zone});"),
            Action::CtSnat { ip, zone } => write!(f, "ct_snat({ip}, zone = {zone});"),
            Action::CtNext { zone } => write!(f, "ct_next(zone = {zone});"),
            Action::CtCommit { zone, mark, mask } => {
                write!(f, "ct_commit(zone = {zone}, ct_mark = {mark:#x}/{mask:#x});")
            }
            Action::SetDstIdentity(i) => write!(f, "dst_identity = {i};"),
            Action::SetAclMeta { value, mask } if *mask == acl_meta::ALL => {
                write!(f, "identity = {};", Identity(*value & Identity::MASK))
            }
            Action::SetAclMeta { value, mask } => write!(f, "acl_meta = {value:#x}/{mask:#x};"),
            Action::AclEval(ids) => {
                let ids: Vec<String> = ids.iter().map(|i| format!("{i:#x}")).collect();
                write!(f, "acl_eval({});", ids.join(", "))
            }
            Action::Deny { direction, policies } => {
                let dir = match direction {
                    PolicyType::Ingress => "ingress",
                    PolicyType::Egress => "egress",
                };
                let names: Vec<String> = policies.iter().map(ToString::to_string).collect();
                write!(f, "deny({dir}, isolated by {});", names.join(", "))
            }
        }
    }
}

impl fmt::Display for LogicalFlow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pipeline = match self.stage.pipeline() {
            Pipeline::Ingress => "ingress",
            Pipeline::Egress => "egress",
        };
        write!(
            f,
            "dp={} {pipeline}(table={} {}) priority={} match=({}) action=(",
            self.datapath,
            self.stage.table(),
            self.stage,
            self.priority,
            self.matches
        )?;
        for (i, a) in self.actions.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{a}")?;
        }
        write!(f, ") owner={}", self.owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_range_checked() {
        assert!(DatapathKey::new(0).is_none());
        assert!(DatapathKey::new(1 << 24).is_none());
        assert_eq!(DatapathKey::new(DatapathKey::MAX).unwrap().get(), DatapathKey::MAX);
        assert!(PortKey::new(0).is_none());
        assert!(PortKey::new(32768).is_none());
        assert_eq!(DatapathKey::node_switch(0).get(), 16);
        assert_eq!(DatapathKey::gateway_router(0).get(), 17);
        assert_eq!(DatapathKey::node_switch(u32::MAX).get(), DatapathKey::MAX);
    }

    #[test]
    fn stages_have_distinct_tables_per_pipeline() {
        let mut seen = BTreeSet::new();
        for s in Stage::ALL {
            assert!(seen.insert((s.datapath_kind(), s.pipeline(), s.table())), "{s}");
        }
    }

    #[test]
    fn match_display() {
        let m = Match::any()
            .inport(PortKey::new(3).unwrap())
            .ip_dst("10.96.0.1/32".parse().unwrap())
            .l4_dst(IpProto::Tcp, 80)
            .ct_set(CtState::DNAT);
        assert_eq!(m.to_string(), "inport == 3 && ip4 && ip4.dst == 10.96.0.1 && tcp && tcp.dst == 80 && ct.dnat");
        assert_eq!(Match::any().to_string(), "1");
    }

    #[test]
    fn delta_application_checks_versions_and_contents() {
        let dp = DatapathBinding { key: DatapathKey::JOIN, name: "join".into(), kind: DatapathKind::Switch };
        let mut view = ChassisView { chassis: "a".into(), version: 0, items: ItemSet::default() };
        let mut delta = ChassisDelta { chassis: "a".into(), from_version: 0, to_version: 1, ..Default::default() };
        delta.added.datapaths.insert(dp.clone());
        view.apply(&delta).unwrap();
        assert_eq!(view.version, 1);
        assert!(matches!(view.apply(&delta), Err(DeltaError::VersionMismatch { view: 1, delta: 0 })));
        let mut again = delta.clone();
        again.from_version = 1;
        again.to_version = 2;
        assert!(matches!(view.apply(&again), Err(DeltaError::ContentMismatch { .. })));
        let mut remove = ChassisDelta { chassis: "a".into(), from_version: 1, to_version: 2, ..Default::default() };
        remove.removed.datapaths.insert(dp);
        view.apply(&remove).unwrap();
        assert!(view.items.is_empty());
        assert!(view.apply(&ChassisDelta { chassis: "b".into(), ..Default::default() }).is_err());
    }
}
