//! `skein-netmodel`'s southbound types ↔ the `skein.southbound.v1` messages, both ways.
//!
//! Model → wire cannot fail. Wire → model takes untrusted input: every field is checked
//! (address lengths, key ranges, enum values, required messages), and an error names the
//! field by its path in the message (`items.flows[12].match.ip_src.address`) and the
//! value. Nothing panics.

use std::collections::BTreeSet;
use std::fmt::Display;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use skein_netmodel::addr::{IpFamily, IpNet, MacAddr};
use skein_netmodel::annotations::Encap;
use skein_netmodel::cluster::{ObjectKey, PolicyType, Protocol};
use skein_netmodel::southbound::{
    Action, ArpOp, Backend, BitsMatch, Chassis, ChassisDelta, ChassisView, CtState, DatapathBinding, DatapathKey,
    DatapathKind, Flags, Identity, IpProto, ItemSet, L3, LbId, LbScope, LoadBalancerEntry, LogicalFlow, Match, NextHop,
    Owner, PortBinding, PortKey, PortKind, Stage, ZoneScope,
};
use skein_proto::southbound::v1 as pb;
use thiserror::Error;

/// A wire message that does not describe a valid model item.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("southbound message: field `{path}`: {message}")]
pub struct ConvertError {
    /// Path of the offending field.
    pub path: String,
    /// What is wrong, with the value.
    pub message: String,
}

fn err<T>(path: &str, message: impl Display) -> Result<T, ConvertError> {
    Err(ConvertError { path: path.to_owned(), message: message.to_string() })
}

// ---- model → wire ----

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn prefix(net: &IpNet) -> pb::IpPrefix {
    pb::IpPrefix { address: ip_bytes(net.addr()), prefix_len: net.prefix_len().into() }
}

fn object_key(key: &ObjectKey) -> pb::ObjectKey {
    pb::ObjectKey { namespace: key.namespace.to_string(), name: key.name.to_string() }
}

fn encap(e: Encap) -> pb::Encap {
    match e {
        Encap::Geneve => pb::Encap::Geneve,
    }
}

fn protocol(p: Protocol) -> pb::Protocol {
    match p {
        Protocol::Tcp => pb::Protocol::Tcp,
        Protocol::Udp => pb::Protocol::Udp,
        Protocol::Sctp => pb::Protocol::Sctp,
    }
}

fn family(f: IpFamily) -> pb::IpFamily {
    match f {
        IpFamily::V4 => pb::IpFamily::V4,
        IpFamily::V6 => pb::IpFamily::V6,
    }
}

fn lb_id(id: &LbId) -> pb::LbId {
    pb::LbId {
        service: Some(object_key(&id.service)),
        protocol: protocol(id.protocol).into(),
        port: id.port.into(),
        family: family(id.family).into(),
        scope: match id.scope {
            LbScope::Cluster => pb::LbScope::Cluster,
            LbScope::NodeLocal => pb::LbScope::NodeLocal,
        }
        .into(),
    }
}

fn stage(s: Stage) -> pb::Stage {
    match s {
        Stage::LsInPortSecL2 => pb::Stage::LsInPortSecL2,
        Stage::LsInPortSecIp => pb::Stage::LsInPortSecIp,
        Stage::LsInPreAcl => pb::Stage::LsInPreAcl,
        Stage::LsInAcl => pb::Stage::LsInAcl,
        Stage::LsInLb => pb::Stage::LsInLb,
        Stage::LsInHairpin => pb::Stage::LsInHairpin,
        Stage::LsInAclCt => pb::Stage::LsInAclCt,
        Stage::LsInAclAction => pb::Stage::LsInAclAction,
        Stage::AclEval => pb::Stage::AclEval,
        Stage::LsInArpResponder => pb::Stage::LsInArpRsp,
        Stage::LsInL2Lookup => pb::Stage::LsInL2Lkup,
        Stage::LsOutLb => pb::Stage::LsOutLb,
        Stage::LsOutPreAcl => pb::Stage::LsOutPreAcl,
        Stage::LsOutAcl => pb::Stage::LsOutAcl,
        Stage::LsOutDeliver => pb::Stage::LsOutDeliver,
        Stage::LrInAdmission => pb::Stage::LrInAdmission,
        Stage::LrInIpInput => pb::Stage::LrInIpInput,
        Stage::LrInUnsnat => pb::Stage::LrInUnsnat,
        Stage::LrInDnat => pb::Stage::LrInDnat,
        Stage::LrInRouting => pb::Stage::LrInIpRouting,
        Stage::LrInArpResolve => pb::Stage::LrInArpResolve,
        Stage::LrOutSnat => pb::Stage::LrOutSnat,
        Stage::LrOutDeliver => pb::Stage::LrOutDeliver,
    }
}

fn zone(z: ZoneScope) -> i32 {
    match z {
        ZoneScope::InPort => pb::ZoneScope::InPort,
        ZoneScope::InPortHairpin => pb::ZoneScope::InPortHairpin,
        ZoneScope::OutPort => pb::ZoneScope::OutPort,
        ZoneScope::RouterDnat => pb::ZoneScope::RouterDnat,
        ZoneScope::RouterSnat => pb::ZoneScope::RouterSnat,
    }
    .into()
}

fn match_to_proto(m: &Match) -> pb::Match {
    pb::Match {
        inport: m.inport.map(|p| p.get().into()),
        outport: m.outport.map(|p| p.get().into()),
        eth_src: m.eth_src.map(MacAddr::to_u64),
        eth_dst: m.eth_dst.map(MacAddr::to_u64),
        l3: match m.l3 {
            None => pb::L3::Any,
            Some(L3::Arp) => pb::L3::Arp,
            Some(L3::Ip4) => pb::L3::Ip4,
            Some(L3::Ip6) => pb::L3::Ip6,
            Some(L3::Ip) => pb::L3::Ip,
        }
        .into(),
        arp_op: match m.arp_op {
            None => pb::ArpOp::Any,
            Some(ArpOp::Request) => pb::ArpOp::Request,
            Some(ArpOp::Reply) => pb::ArpOp::Reply,
        }
        .into(),
        arp_sha: m.arp_sha.map(MacAddr::to_u64),
        arp_spa: m.arp_spa.map(u32::from),
        arp_tpa: m.arp_tpa.map(u32::from),
        ip_src: m.ip_src.as_ref().map(prefix),
        ip_dst: m.ip_dst.as_ref().map(prefix),
        ttl_expiring: m.ttl_expiring,
        ip_proto: match m.ip_proto {
            None => pb::IpProto::Any,
            Some(IpProto::Tcp) => pb::IpProto::Tcp,
            Some(IpProto::Udp) => pb::IpProto::Udp,
            Some(IpProto::Sctp) => pb::IpProto::Sctp,
            Some(IpProto::Icmp) => pb::IpProto::Icmp,
        }
        .into(),
        icmp_type: m.icmp_type.map(u32::from),
        l4_dst: m.l4_dst.map(u32::from),
        ct_state_value: m.ct_state.value.0.into(),
        ct_state_mask: m.ct_state.mask.0.into(),
        flags_value: m.flags.value.0.into(),
        flags_mask: m.flags.mask.0.into(),
        l4_dst_end: m.l4_dst_end.map(u32::from),
        acl_meta_value: m.acl_meta.value,
        acl_meta_mask: m.acl_meta.mask,
        acl_id: m.acl_id,
        ct_mark_value: m.ct_mark.value,
        ct_mark_mask: m.ct_mark.mask,
        dst_identity_value: m.dst_identity.value,
        dst_identity_mask: m.dst_identity.mask,
    }
}

fn direction(d: PolicyType) -> i32 {
    match d {
        PolicyType::Ingress => pb::PolicyDirection::Ingress,
        PolicyType::Egress => pb::PolicyDirection::Egress,
    }
    .into()
}

fn action_to_proto(a: &Action) -> pb::Action {
    use pb::action::Action as A;
    let e = pb::Empty {};
    let action = match a {
        Action::Next => A::Next(e),
        Action::Output => A::Output(e),
        Action::Drop => A::Drop(e),
        Action::SetOutport(p) => A::SetOutport(p.get().into()),
        Action::Flood => A::Flood(e),
        Action::SetEthSrc(m) => A::SetEthSrc(m.to_u64()),
        Action::SetEthDst(m) => A::SetEthDst(m.to_u64()),
        Action::SetNextHop(h) => A::SetNextHop(pb::NextHop {
            next_hop: Some(match h {
                NextHop::Destination => pb::next_hop::NextHop::Destination(e),
                NextHop::Ip(ip) => pb::next_hop::NextHop::Ip(ip_bytes(*ip)),
                NextHop::Uplink => pb::next_hop::NextHop::Uplink(e),
            }),
        }),
        Action::SetEthDstForNextHop => A::SetEthDstForNextHop(e),
        Action::DecTtl => A::DecTtl(e),
        Action::SetFlags(f) => A::SetFlags(f.0.into()),
        Action::ArpReply { mac } => A::ArpReply(pb::ArpReply { mac: mac.to_u64() }),
        Action::IcmpEchoReply => A::IcmpEchoReply(e),
        Action::IcmpTimeExceeded { source } => A::IcmpTimeExceeded(pb::IcmpTimeExceeded { source: ip_bytes(*source) }),
        Action::Reject => A::Reject(e),
        Action::CtNat { zone: z } => A::CtNat(pb::CtNat { zone: zone(*z) }),
        Action::CtLb { lb, zone: z } => A::CtLb(pb::CtLb { lb: Some(lb_id(lb)), zone: zone(*z) }),
        Action::CtSnat { ip, zone: z } => A::CtSnat(pb::CtSnat { ip: ip_bytes(*ip), zone: zone(*z) }),
        Action::CtNext { zone: z } => A::CtNext(pb::CtNext { zone: zone(*z) }),
        Action::CtCommit { zone: z, mark, mask } => {
            A::CtCommit(pb::CtCommit { zone: zone(*z), mark: *mark, mask: *mask })
        }
        Action::SetAclMeta { value, mask } => A::SetAclMeta(pb::SetAclMeta { value: *value, mask: *mask }),
        Action::AclEval(ids) => A::AclEval(pb::AclEval { ids: ids.clone() }),
        Action::Deny { direction: d, policies } => {
            A::Deny(pb::Deny { direction: direction(*d), policies: policies.iter().map(object_key).collect() })
        }
        Action::SetDstIdentity(i) => A::SetDstIdentity(i.0),
    };
    pb::Action { action: Some(action) }
}

fn owner_to_proto(o: &Owner) -> pb::Owner {
    use pb::owner::Owner as O;
    pb::Owner {
        owner: Some(match o {
            Owner::Cluster => O::Cluster(pb::Empty {}),
            Owner::Node(n) => O::Node(n.to_string()),
            Owner::Pod(p) => O::Pod(object_key(p)),
            Owner::Service(s) => O::Service(object_key(s)),
            Owner::Policy(p) => O::Policy(object_key(p)),
            Owner::Namespace(n) => O::Namespace(n.to_string()),
        }),
    }
}

/// A logical flow on the wire.
pub fn flow_to_proto(f: &LogicalFlow) -> pb::LogicalFlow {
    pb::LogicalFlow {
        datapath: f.datapath.get(),
        stage: stage(f.stage).into(),
        priority: f.priority.into(),
        r#match: Some(match_to_proto(&f.matches)),
        actions: f.actions.iter().map(action_to_proto).collect(),
        owner: Some(owner_to_proto(&f.owner)),
    }
}

fn port_to_proto(p: &PortBinding) -> pb::PortBinding {
    use pb::port_binding::Kind as K;
    pb::PortBinding {
        datapath: p.datapath.get(),
        key: p.key.get().into(),
        name: p.name.clone(),
        kind: Some(match &p.kind {
            PortKind::Pod { pod, uid } => K::Pod(pb::PodPort { pod: Some(object_key(pod)), uid: uid.clone() }),
            PortKind::Management => K::Management(pb::Empty {}),
            PortKind::Patch { peer_datapath, peer_port } => {
                K::Patch(pb::PatchPort { peer_datapath: peer_datapath.get(), peer_port: peer_port.get().into() })
            }
            PortKind::External => K::External(pb::Empty {}),
        }),
        mac: p.mac.map(MacAddr::to_u64),
        ips: p.ips.iter().map(prefix).collect(),
        chassis: p.chassis.clone(),
    }
}

fn lb_to_proto(lb: &LoadBalancerEntry) -> pb::LoadBalancer {
    pb::LoadBalancer {
        id: Some(lb_id(&lb.id)),
        backends: lb.backends.iter().map(|b| pb::Backend { ip: ip_bytes(b.ip), port: b.port.into() }).collect(),
        affinity_timeout_seconds: lb.affinity_timeout_seconds,
    }
}

/// An item set on the wire.
pub fn item_set_to_proto(items: &ItemSet) -> pb::ItemSet {
    pb::ItemSet {
        chassis: items
            .chassis
            .iter()
            .map(|c| pb::Chassis {
                name: c.name.clone(),
                id: c.id.clone(),
                tunnel_ip: ip_bytes(c.tunnel_ip),
                encap: encap(c.encap).into(),
            })
            .collect(),
        datapaths: items
            .datapaths
            .iter()
            .map(|d| pb::DatapathBinding {
                key: d.key.get(),
                name: d.name.clone(),
                kind: match d.kind {
                    DatapathKind::Switch => pb::DatapathKind::Switch,
                    DatapathKind::Router => pb::DatapathKind::Router,
                }
                .into(),
            })
            .collect(),
        ports: items.ports.iter().map(port_to_proto).collect(),
        flows: items.flows.iter().map(flow_to_proto).collect(),
        load_balancers: items.load_balancers.iter().map(lb_to_proto).collect(),
    }
}

/// A chassis's view as a `Snapshot` in `schema_version`, numbered by master `master_id`.
pub fn snapshot_to_proto(view: &ChassisView, master_id: &str, schema_version: u32) -> pb::Snapshot {
    pb::Snapshot {
        schema_version,
        chassis: view.chassis.clone(),
        version: view.version,
        master_id: master_id.to_owned(),
        items: Some(item_set_to_proto(&view.items)),
    }
}

/// A delta as a `Delta` in `schema_version`.
pub fn delta_to_proto(delta: &ChassisDelta, schema_version: u32) -> pb::Delta {
    pb::Delta {
        schema_version,
        chassis: delta.chassis.clone(),
        from_version: delta.from_version,
        to_version: delta.to_version,
        removed: Some(item_set_to_proto(&delta.removed)),
        added: Some(item_set_to_proto(&delta.added)),
    }
}

/// The encapsulation of a registration on the wire.
pub fn encap_to_proto(e: Encap) -> pb::Encap {
    encap(e)
}

/// An address on the wire (4 or 16 octets).
pub fn ip_to_proto(ip: IpAddr) -> Vec<u8> {
    ip_bytes(ip)
}

// ---- wire → model ----

/// An address from 4 or 16 octets.
pub fn ip_from_proto(path: &str, bytes: &[u8]) -> Result<IpAddr, ConvertError> {
    match bytes.len() {
        4 => Ok(IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))),
        16 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(bytes);
            Ok(IpAddr::V6(Ipv6Addr::from(octets)))
        }
        n => err(path, format!("{n} octets, expected 4 (IPv4) or 16 (IPv6)")),
    }
}

fn prefix_from(path: &str, p: &pb::IpPrefix) -> Result<IpNet, ConvertError> {
    let addr = ip_from_proto(&format!("{path}.address"), &p.address)?;
    let len = u8::try_from(p.prefix_len).ok().filter(|l| *l <= IpFamily::of(addr).bits());
    match len {
        Some(len) => Ok(IpNet::clamped(addr, len)),
        None => err(&format!("{path}.prefix_len"), format!("{} is longer than a {} address", p.prefix_len, addr)),
    }
}

fn required<'a, T>(path: &str, field: &'a Option<T>) -> Result<&'a T, ConvertError> {
    field.as_ref().ok_or_else(|| ConvertError { path: path.to_owned(), message: "missing".into() })
}

fn key_from(path: &str, k: &Option<pb::ObjectKey>) -> Result<ObjectKey, ConvertError> {
    let k = required(path, k)?;
    if k.namespace.is_empty() || k.name.is_empty() {
        return err(path, format!("empty namespace or name in {:?}/{:?}", k.namespace, k.name));
    }
    Ok(ObjectKey::new(k.namespace.as_str(), k.name.as_str()))
}

fn mac_from(path: &str, value: u64) -> Result<MacAddr, ConvertError> {
    if value >> 48 != 0 {
        return err(path, format!("{value:#x} does not fit 48 bits"));
    }
    let b = value.to_be_bytes();
    Ok(MacAddr([b[2], b[3], b[4], b[5], b[6], b[7]]))
}

fn datapath_key_from(path: &str, value: u32) -> Result<DatapathKey, ConvertError> {
    DatapathKey::new(value).ok_or_else(|| ConvertError {
        path: path.to_owned(),
        message: format!("datapath key {value} is outside 1..={}", DatapathKey::MAX),
    })
}

fn port_key_from(path: &str, value: u32) -> Result<PortKey, ConvertError> {
    u16::try_from(value).ok().and_then(PortKey::new).ok_or_else(|| ConvertError {
        path: path.to_owned(),
        message: format!("port key {value} is outside 1..={}", PortKey::MAX),
    })
}

fn u16_from(path: &str, value: u32) -> Result<u16, ConvertError> {
    u16::try_from(value).or_else(|_| err(path, format!("{value} does not fit 16 bits")))
}

fn u8_from(path: &str, value: u32) -> Result<u8, ConvertError> {
    u8::try_from(value).or_else(|_| err(path, format!("{value} does not fit 8 bits")))
}

fn enum_from<E: TryFrom<i32>>(path: &str, value: i32) -> Result<E, ConvertError> {
    E::try_from(value).or_else(|_| err(path, format!("unknown enum value {value}")))
}

fn unspecified<T>(path: &str) -> Result<T, ConvertError> {
    err(path, "unspecified (0) is not allowed here")
}

fn encap_from(path: &str, value: i32) -> Result<Encap, ConvertError> {
    match enum_from(path, value)? {
        pb::Encap::Geneve => Ok(Encap::Geneve),
        pb::Encap::Unspecified => unspecified(path),
    }
}

/// The encapsulation of a registration.
pub fn encap_from_proto(path: &str, value: i32) -> Result<Encap, ConvertError> {
    encap_from(path, value)
}

fn protocol_from(path: &str, value: i32) -> Result<Protocol, ConvertError> {
    match enum_from(path, value)? {
        pb::Protocol::Tcp => Ok(Protocol::Tcp),
        pb::Protocol::Udp => Ok(Protocol::Udp),
        pb::Protocol::Sctp => Ok(Protocol::Sctp),
        pb::Protocol::Unspecified => unspecified(path),
    }
}

fn lb_id_from(path: &str, id: &Option<pb::LbId>) -> Result<LbId, ConvertError> {
    let id = required(path, id)?;
    Ok(LbId {
        service: key_from(&format!("{path}.service"), &id.service)?,
        protocol: protocol_from(&format!("{path}.protocol"), id.protocol)?,
        port: u16_from(&format!("{path}.port"), id.port)?,
        family: match enum_from(&format!("{path}.family"), id.family)? {
            pb::IpFamily::V4 => IpFamily::V4,
            pb::IpFamily::V6 => IpFamily::V6,
            pb::IpFamily::Unspecified => return unspecified(&format!("{path}.family")),
        },
        scope: match enum_from(&format!("{path}.scope"), id.scope)? {
            pb::LbScope::Cluster => LbScope::Cluster,
            pb::LbScope::NodeLocal => LbScope::NodeLocal,
            pb::LbScope::Unspecified => return unspecified(&format!("{path}.scope")),
        },
    })
}

fn stage_from(path: &str, value: i32) -> Result<Stage, ConvertError> {
    Ok(match enum_from(path, value)? {
        pb::Stage::LsInPortSecL2 => Stage::LsInPortSecL2,
        pb::Stage::LsInPortSecIp => Stage::LsInPortSecIp,
        pb::Stage::LsInPreAcl => Stage::LsInPreAcl,
        pb::Stage::LsInAcl => Stage::LsInAcl,
        pb::Stage::LsInLb => Stage::LsInLb,
        pb::Stage::LsInHairpin => Stage::LsInHairpin,
        pb::Stage::LsInAclCt => Stage::LsInAclCt,
        pb::Stage::LsInAclAction => Stage::LsInAclAction,
        pb::Stage::AclEval => Stage::AclEval,
        pb::Stage::LsInArpRsp => Stage::LsInArpResponder,
        pb::Stage::LsInL2Lkup => Stage::LsInL2Lookup,
        pb::Stage::LsOutLb => Stage::LsOutLb,
        pb::Stage::LsOutPreAcl => Stage::LsOutPreAcl,
        pb::Stage::LsOutAcl => Stage::LsOutAcl,
        pb::Stage::LsOutDeliver => Stage::LsOutDeliver,
        pb::Stage::LrInAdmission => Stage::LrInAdmission,
        pb::Stage::LrInIpInput => Stage::LrInIpInput,
        pb::Stage::LrInUnsnat => Stage::LrInUnsnat,
        pb::Stage::LrInDnat => Stage::LrInDnat,
        pb::Stage::LrInIpRouting => Stage::LrInRouting,
        pb::Stage::LrInArpResolve => Stage::LrInArpResolve,
        pb::Stage::LrOutSnat => Stage::LrOutSnat,
        pb::Stage::LrOutDeliver => Stage::LrOutDeliver,
        pb::Stage::Unspecified => return unspecified(path),
    })
}

fn zone_from(path: &str, value: i32) -> Result<ZoneScope, ConvertError> {
    Ok(match enum_from(path, value)? {
        pb::ZoneScope::InPort => ZoneScope::InPort,
        pb::ZoneScope::InPortHairpin => ZoneScope::InPortHairpin,
        pb::ZoneScope::OutPort => ZoneScope::OutPort,
        pb::ZoneScope::RouterDnat => ZoneScope::RouterDnat,
        pb::ZoneScope::RouterSnat => ZoneScope::RouterSnat,
        pb::ZoneScope::Unspecified => return unspecified(path),
    })
}

fn match_from(path: &str, m: &pb::Match) -> Result<Match, ConvertError> {
    let sub = |f: &str| format!("{path}.{f}");
    Ok(Match {
        inport: m.inport.map(|p| port_key_from(&sub("inport"), p)).transpose()?,
        outport: m.outport.map(|p| port_key_from(&sub("outport"), p)).transpose()?,
        eth_src: m.eth_src.map(|v| mac_from(&sub("eth_src"), v)).transpose()?,
        eth_dst: m.eth_dst.map(|v| mac_from(&sub("eth_dst"), v)).transpose()?,
        l3: match enum_from(&sub("l3"), m.l3)? {
            pb::L3::Any => None,
            pb::L3::Arp => Some(L3::Arp),
            pb::L3::Ip4 => Some(L3::Ip4),
            pb::L3::Ip6 => Some(L3::Ip6),
            pb::L3::Ip => Some(L3::Ip),
        },
        arp_op: match enum_from(&sub("arp_op"), m.arp_op)? {
            pb::ArpOp::Any => None,
            pb::ArpOp::Request => Some(ArpOp::Request),
            pb::ArpOp::Reply => Some(ArpOp::Reply),
        },
        arp_sha: m.arp_sha.map(|v| mac_from(&sub("arp_sha"), v)).transpose()?,
        arp_spa: m.arp_spa.map(Ipv4Addr::from),
        arp_tpa: m.arp_tpa.map(Ipv4Addr::from),
        ip_src: m.ip_src.as_ref().map(|p| prefix_from(&sub("ip_src"), p)).transpose()?,
        ip_dst: m.ip_dst.as_ref().map(|p| prefix_from(&sub("ip_dst"), p)).transpose()?,
        ttl_expiring: m.ttl_expiring,
        ip_proto: match enum_from(&sub("ip_proto"), m.ip_proto)? {
            pb::IpProto::Any => None,
            pb::IpProto::Tcp => Some(IpProto::Tcp),
            pb::IpProto::Udp => Some(IpProto::Udp),
            pb::IpProto::Sctp => Some(IpProto::Sctp),
            pb::IpProto::Icmp => Some(IpProto::Icmp),
        },
        icmp_type: m.icmp_type.map(|v| u8_from(&sub("icmp_type"), v)).transpose()?,
        l4_dst: m.l4_dst.map(|v| u16_from(&sub("l4_dst"), v)).transpose()?,
        ct_state: BitsMatch {
            value: CtState(u8_from(&sub("ct_state_value"), m.ct_state_value)?),
            mask: CtState(u8_from(&sub("ct_state_mask"), m.ct_state_mask)?),
        },
        flags: BitsMatch {
            value: Flags(u16_from(&sub("flags_value"), m.flags_value)?),
            mask: Flags(u16_from(&sub("flags_mask"), m.flags_mask)?),
        },
        l4_dst_end: m.l4_dst_end.map(|v| u16_from(&sub("l4_dst_end"), v)).transpose()?,
        acl_meta: BitsMatch { value: m.acl_meta_value & m.acl_meta_mask, mask: m.acl_meta_mask },
        acl_id: m.acl_id,
        ct_mark: BitsMatch { value: m.ct_mark_value & m.ct_mark_mask, mask: m.ct_mark_mask },
        dst_identity: identity_match(&sub("dst_identity_mask"), m.dst_identity_value, m.dst_identity_mask)?,
    })
}

fn identity_match(path: &str, value: u32, mask: u32) -> Result<BitsMatch<u32>, ConvertError> {
    if mask & !Identity::MASK != 0 {
        return err(path, format!("{mask:#x} has bits outside an identity's 24"));
    }
    Ok(BitsMatch { value: value & mask, mask })
}

fn action_from(path: &str, a: &pb::Action) -> Result<Action, ConvertError> {
    use pb::action::Action as A;
    let sub = |f: &str| format!("{path}.{f}");
    Ok(match required(path, &a.action)? {
        A::Next(_) => Action::Next,
        A::Output(_) => Action::Output,
        A::Drop(_) => Action::Drop,
        A::SetOutport(p) => Action::SetOutport(port_key_from(&sub("set_outport"), *p)?),
        A::Flood(_) => Action::Flood,
        A::SetEthSrc(m) => Action::SetEthSrc(mac_from(&sub("set_eth_src"), *m)?),
        A::SetEthDst(m) => Action::SetEthDst(mac_from(&sub("set_eth_dst"), *m)?),
        A::SetNextHop(h) => Action::SetNextHop(match required(&sub("set_next_hop"), &h.next_hop)? {
            pb::next_hop::NextHop::Destination(_) => NextHop::Destination,
            pb::next_hop::NextHop::Ip(ip) => NextHop::Ip(ip_from_proto(&sub("set_next_hop.ip"), ip)?),
            pb::next_hop::NextHop::Uplink(_) => NextHop::Uplink,
        }),
        A::SetEthDstForNextHop(_) => Action::SetEthDstForNextHop,
        A::DecTtl(_) => Action::DecTtl,
        A::SetFlags(f) => Action::SetFlags(Flags(u16_from(&sub("set_flags"), *f)?)),
        A::ArpReply(r) => Action::ArpReply { mac: mac_from(&sub("arp_reply.mac"), r.mac)? },
        A::IcmpEchoReply(_) => Action::IcmpEchoReply,
        A::IcmpTimeExceeded(t) => {
            Action::IcmpTimeExceeded { source: ip_from_proto(&sub("icmp_time_exceeded.source"), &t.source)? }
        }
        A::Reject(_) => Action::Reject,
        A::CtNat(c) => Action::CtNat { zone: zone_from(&sub("ct_nat.zone"), c.zone)? },
        A::CtLb(c) => {
            Action::CtLb { lb: lb_id_from(&sub("ct_lb.lb"), &c.lb)?, zone: zone_from(&sub("ct_lb.zone"), c.zone)? }
        }
        A::CtSnat(c) => Action::CtSnat {
            ip: ip_from_proto(&sub("ct_snat.ip"), &c.ip)?,
            zone: zone_from(&sub("ct_snat.zone"), c.zone)?,
        },
        A::CtNext(c) => Action::CtNext { zone: zone_from(&sub("ct_next.zone"), c.zone)? },
        A::CtCommit(c) => {
            Action::CtCommit { zone: zone_from(&sub("ct_commit.zone"), c.zone)?, mark: c.mark & c.mask, mask: c.mask }
        }
        A::SetAclMeta(m) => Action::SetAclMeta { value: m.value & m.mask, mask: m.mask },
        A::AclEval(e) => Action::AclEval(e.ids.clone()),
        A::Deny(d) => Action::Deny {
            direction: match enum_from(&sub("deny.direction"), d.direction)? {
                pb::PolicyDirection::Ingress => PolicyType::Ingress,
                pb::PolicyDirection::Egress => PolicyType::Egress,
                pb::PolicyDirection::Unspecified => return unspecified(&sub("deny.direction")),
            },
            policies: d
                .policies
                .iter()
                .enumerate()
                .map(|(i, k)| key_from(&format!("{path}.deny.policies[{i}]"), &Some(k.clone())))
                .collect::<Result<_, _>>()?,
        },
        A::SetDstIdentity(v) => {
            if v & !Identity::MASK != 0 {
                return err(&sub("set_dst_identity"), format!("{v:#x} has bits outside an identity's 24"));
            }
            Action::SetDstIdentity(Identity(*v))
        }
    })
}

fn owner_from(path: &str, o: &Option<pb::Owner>) -> Result<Owner, ConvertError> {
    use pb::owner::Owner as O;
    let o = required(path, o)?;
    Ok(match required(path, &o.owner)? {
        O::Cluster(_) => Owner::Cluster,
        O::Node(n) if n.is_empty() => return err(&format!("{path}.node"), "empty node name"),
        O::Node(n) => Owner::Node(Arc::from(n.as_str())),
        O::Pod(p) => Owner::Pod(key_from(&format!("{path}.pod"), &Some(p.clone()))?),
        O::Service(s) => Owner::Service(key_from(&format!("{path}.service"), &Some(s.clone()))?),
        O::Policy(p) => Owner::Policy(key_from(&format!("{path}.policy"), &Some(p.clone()))?),
        O::Namespace(n) if n.is_empty() => return err(&format!("{path}.namespace"), "empty namespace name"),
        O::Namespace(n) => Owner::Namespace(Arc::from(n.as_str())),
    })
}

/// A logical flow from the wire.
pub fn flow_from_proto(path: &str, f: &pb::LogicalFlow) -> Result<LogicalFlow, ConvertError> {
    let sub = |s: &str| format!("{path}.{s}");
    Ok(LogicalFlow {
        datapath: datapath_key_from(&sub("datapath"), f.datapath)?,
        stage: stage_from(&sub("stage"), f.stage)?,
        priority: u16_from(&sub("priority"), f.priority)?,
        matches: match_from(&sub("match"), required(&sub("match"), &f.r#match)?)?,
        actions: f
            .actions
            .iter()
            .enumerate()
            .map(|(i, a)| action_from(&format!("{path}.actions[{i}]"), a))
            .collect::<Result<_, _>>()?,
        owner: owner_from(&sub("owner"), &f.owner)?,
    })
}

fn port_from(path: &str, p: &pb::PortBinding) -> Result<PortBinding, ConvertError> {
    use pb::port_binding::Kind as K;
    let sub = |s: &str| format!("{path}.{s}");
    Ok(PortBinding {
        datapath: datapath_key_from(&sub("datapath"), p.datapath)?,
        key: port_key_from(&sub("key"), p.key)?,
        name: p.name.clone(),
        kind: match required(&sub("kind"), &p.kind)? {
            K::Pod(pod) => PortKind::Pod { pod: key_from(&sub("pod.pod"), &pod.pod)?, uid: pod.uid.clone() },
            K::Management(_) => PortKind::Management,
            K::Patch(patch) => PortKind::Patch {
                peer_datapath: datapath_key_from(&sub("patch.peer_datapath"), patch.peer_datapath)?,
                peer_port: port_key_from(&sub("patch.peer_port"), patch.peer_port)?,
            },
            K::External(_) => PortKind::External,
        },
        mac: p.mac.map(|m| mac_from(&sub("mac"), m)).transpose()?,
        ips: p
            .ips
            .iter()
            .enumerate()
            .map(|(i, n)| prefix_from(&format!("{path}.ips[{i}]"), n))
            .collect::<Result<_, _>>()?,
        chassis: p.chassis.clone(),
    })
}

fn lb_from(path: &str, lb: &pb::LoadBalancer) -> Result<LoadBalancerEntry, ConvertError> {
    Ok(LoadBalancerEntry {
        id: lb_id_from(&format!("{path}.id"), &lb.id)?,
        backends: lb
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                Ok(Backend {
                    ip: ip_from_proto(&format!("{path}.backends[{i}].ip"), &b.ip)?,
                    port: u16_from(&format!("{path}.backends[{i}].port"), b.port)?,
                })
            })
            .collect::<Result<_, ConvertError>>()?,
        affinity_timeout_seconds: lb.affinity_timeout_seconds,
    })
}

fn collect<P, T: Ord>(
    path: &str,
    field: &str,
    items: &[P],
    f: impl Fn(&str, &P) -> Result<T, ConvertError>,
) -> Result<BTreeSet<T>, ConvertError> {
    let mut out = BTreeSet::new();
    for (i, item) in items.iter().enumerate() {
        let item_path = format!("{path}.{field}[{i}]");
        if !out.insert(f(&item_path, item)?) {
            return err(&item_path, "duplicate item");
        }
    }
    Ok(out)
}

/// An item set from the wire; duplicates are an error.
pub fn item_set_from_proto(path: &str, items: &pb::ItemSet) -> Result<ItemSet, ConvertError> {
    Ok(ItemSet {
        chassis: collect(path, "chassis", &items.chassis, |p, c| {
            if c.name.is_empty() {
                return err(&format!("{p}.name"), "empty chassis name");
            }
            Ok(Chassis {
                name: c.name.clone(),
                id: c.id.clone(),
                tunnel_ip: ip_from_proto(&format!("{p}.tunnel_ip"), &c.tunnel_ip)?,
                encap: encap_from(&format!("{p}.encap"), c.encap)?,
            })
        })?,
        datapaths: collect(path, "datapaths", &items.datapaths, |p, d| {
            Ok(DatapathBinding {
                key: datapath_key_from(&format!("{p}.key"), d.key)?,
                name: d.name.clone(),
                kind: match enum_from(&format!("{p}.kind"), d.kind)? {
                    pb::DatapathKind::Switch => DatapathKind::Switch,
                    pb::DatapathKind::Router => DatapathKind::Router,
                    pb::DatapathKind::Unspecified => return unspecified(&format!("{p}.kind")),
                },
            })
        })?,
        ports: collect(path, "ports", &items.ports, port_from)?,
        flows: collect(path, "flows", &items.flows, flow_from_proto)?,
        load_balancers: collect(path, "load_balancers", &items.load_balancers, lb_from)?,
    })
}

/// A chassis's view from a `Snapshot`.
pub fn snapshot_from_proto(s: &pb::Snapshot) -> Result<ChassisView, ConvertError> {
    Ok(ChassisView {
        chassis: s.chassis.clone(),
        version: s.version,
        items: item_set_from_proto("snapshot.items", required("snapshot.items", &s.items)?)?,
    })
}

/// A delta from a `Delta`.
pub fn delta_from_proto(d: &pb::Delta) -> Result<ChassisDelta, ConvertError> {
    if d.to_version != d.from_version.wrapping_add(1) {
        return err("delta.to_version", format!("{} does not follow from_version {}", d.to_version, d.from_version));
    }
    let empty = pb::ItemSet::default();
    Ok(ChassisDelta {
        chassis: d.chassis.clone(),
        from_version: d.from_version,
        to_version: d.to_version,
        removed: item_set_from_proto("delta.removed", d.removed.as_ref().unwrap_or(&empty))?,
        added: item_set_from_proto("delta.added", d.added.as_ref().unwrap_or(&empty))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    /// One of every item kind, every port kind, every action and match field.
    pub(crate) fn every_item() -> ItemSet {
        let svc = ObjectKey::new("default", "web");
        let lb = LbId {
            service: svc.clone(),
            protocol: Protocol::Udp,
            port: 53,
            family: IpFamily::V6,
            scope: LbScope::NodeLocal,
        };
        let mut items = ItemSet::default();
        items.chassis.insert(Chassis {
            name: "a".into(),
            id: "uuid".into(),
            tunnel_ip: ip("192.0.2.1"),
            encap: Encap::Geneve,
        });
        items.chassis.insert(Chassis {
            name: "b".into(),
            id: "uuid2".into(),
            tunnel_ip: ip("2001:db8::1"),
            encap: Encap::Geneve,
        });
        items.datapaths.insert(DatapathBinding {
            key: DatapathKey::JOIN,
            name: "join".into(),
            kind: DatapathKind::Switch,
        });
        items.datapaths.insert(DatapathBinding {
            key: DatapathKey::CLUSTER_ROUTER,
            name: "cluster-router".into(),
            kind: DatapathKind::Router,
        });
        let k = |v| PortKey::new(v).unwrap();
        for (i, kind) in [
            PortKind::Pod { pod: ObjectKey::new("ns", "p"), uid: "u".into() },
            PortKind::Management,
            PortKind::Patch { peer_datapath: DatapathKey::JOIN, peer_port: k(9) },
            PortKind::External,
        ]
        .into_iter()
        .enumerate()
        {
            items.ports.insert(PortBinding {
                datapath: DatapathKey::node_switch(3),
                key: k(u16::try_from(i).unwrap() + 1),
                name: format!("port{i}"),
                mac: (i != 3).then(|| MacAddr::derived(ip("10.244.3.5"))),
                ips: vec![net("10.244.3.5/24"), net("fd00::5/64")],
                chassis: (i == 0).then(|| "a".into()),
                kind,
            });
        }
        let actions = vec![
            Action::Next,
            Action::Output,
            Action::Drop,
            Action::SetOutport(k(7)),
            Action::Flood,
            Action::SetEthSrc(MacAddr([1, 2, 3, 4, 5, 6])),
            Action::SetEthDst(MacAddr::BROADCAST),
            Action::SetNextHop(NextHop::Destination),
            Action::SetNextHop(NextHop::Ip(ip("100.64.0.3"))),
            Action::SetNextHop(NextHop::Uplink),
            Action::SetEthDstForNextHop,
            Action::DecTtl,
            Action::SetFlags(Flags::FORCE_SNAT),
            Action::ArpReply { mac: MacAddr([0x0a, 0x58, 1, 2, 3, 4]) },
            Action::IcmpEchoReply,
            Action::IcmpTimeExceeded { source: ip("10.244.0.1") },
            Action::Reject,
            Action::CtNat { zone: ZoneScope::RouterSnat },
            Action::CtLb { lb: lb.clone(), zone: ZoneScope::InPort },
            Action::CtSnat { ip: ip("169.254.169.5"), zone: ZoneScope::InPortHairpin },
            Action::CtNext { zone: ZoneScope::InPort },
            Action::CtCommit { zone: ZoneScope::OutPort, mark: 1, mask: 5 },
            Action::SetAclMeta { value: 0x0100_2003, mask: u32::MAX },
            Action::AclEval(vec![0x1200, 0x1201, 0xffff_ff00]),
            Action::Deny { direction: PolicyType::Egress, policies: vec![ObjectKey::new("ns", "deny-all")] },
            Action::SetDstIdentity(Identity::new(2, 3)),
        ];
        let full = Match {
            inport: Some(k(1)),
            outport: Some(k(2)),
            eth_src: Some(MacAddr([0, 1, 2, 3, 4, 5])),
            eth_dst: Some(MacAddr::BROADCAST),
            l3: Some(L3::Arp),
            arp_op: Some(ArpOp::Reply),
            arp_sha: Some(MacAddr([9, 9, 9, 9, 9, 9])),
            arp_spa: Some(Ipv4Addr::new(10, 0, 0, 1)),
            arp_tpa: Some(Ipv4Addr::new(10, 0, 0, 2)),
            ip_src: Some(net("10.244.0.0/16")),
            ip_dst: Some(net("fd00::/8")),
            ttl_expiring: true,
            ip_proto: Some(IpProto::Icmp),
            icmp_type: Some(8),
            l4_dst: Some(443),
            ct_state: BitsMatch { value: CtState::DNAT, mask: CtState(0xff) },
            flags: BitsMatch { value: Flags::HAIRPIN_REPLY, mask: Flags(3) },
            l4_dst_end: Some(8443),
            acl_meta: BitsMatch { value: 0x0100_2000, mask: 0x0100_f000 },
            acl_id: Some(0x1201),
            ct_mark: BitsMatch { value: 1, mask: 5 },
            dst_identity: BitsMatch { value: Identity::new(2, 3).0, mask: Identity::MASK },
        };
        let owners = [
            Owner::Cluster,
            Owner::Node(Arc::from("a")),
            Owner::Pod(ObjectKey::new("ns", "p")),
            Owner::Service(svc),
            Owner::Policy(ObjectKey::new("ns", "deny-all")),
            Owner::Namespace(Arc::from("ns")),
        ];
        for (i, stage) in Stage::ALL.into_iter().enumerate() {
            items.flows.insert(LogicalFlow {
                datapath: DatapathKey::node_switch(3),
                stage,
                priority: u16::try_from(i).unwrap() * 10,
                matches: if i % 2 == 0 { full.clone() } else { Match::any() },
                actions: actions.clone(),
                owner: owners[i % owners.len()].clone(),
            });
        }
        items.load_balancers.insert(LoadBalancerEntry {
            id: lb,
            backends: vec![Backend { ip: ip("fd00::9"), port: 5353 }, Backend { ip: ip("fd00::a"), port: 53 }],
            affinity_timeout_seconds: Some(10800),
        });
        items
    }

    #[test]
    fn every_item_round_trips() {
        let items = every_item();
        let view = ChassisView { chassis: "a".into(), version: 7, items: items.clone() };
        let back = snapshot_from_proto(&snapshot_to_proto(&view, "m", 1)).unwrap();
        assert_eq!(back, view);
        let delta = ChassisDelta {
            chassis: "a".into(),
            from_version: 7,
            to_version: 8,
            removed: items,
            added: ItemSet::default(),
        };
        assert_eq!(delta_from_proto(&delta_to_proto(&delta, 1)).unwrap(), delta);
    }

    #[test]
    fn bad_wire_input_names_the_field() {
        let view = ChassisView { chassis: "a".into(), version: 1, items: every_item() };
        let good = snapshot_to_proto(&view, "m", 1);

        let mut bad = good.clone();
        bad.items.as_mut().unwrap().flows[3].r#match.as_mut().unwrap().ip_src =
            Some(pb::IpPrefix { address: vec![1, 2, 3], prefix_len: 8 });
        let e = snapshot_from_proto(&bad).unwrap_err();
        assert_eq!(e.path, "snapshot.items.flows[3].match.ip_src.address", "{e}");
        assert!(e.to_string().contains("3 octets"), "{e}");

        let mut bad = good.clone();
        bad.items.as_mut().unwrap().ports[0].key = 40000;
        let e = snapshot_from_proto(&bad).unwrap_err();
        assert_eq!(e.path, "snapshot.items.ports[0].key");

        let mut bad = good.clone();
        bad.items.as_mut().unwrap().flows[0].stage = 99;
        assert!(snapshot_from_proto(&bad).unwrap_err().to_string().contains("unknown enum value 99"));

        let mut bad = good.clone();
        bad.items.as_mut().unwrap().flows[1].actions[0].action = None;
        assert_eq!(snapshot_from_proto(&bad).unwrap_err().path, "snapshot.items.flows[1].actions[0]");

        let mut bad = good.clone();
        bad.items.as_mut().unwrap().datapaths[0].key = 0;
        assert!(snapshot_from_proto(&bad).is_err());

        let mut bad = good.clone();
        let dup = bad.items.as_ref().unwrap().chassis[0].clone();
        bad.items.as_mut().unwrap().chassis.push(dup);
        assert!(snapshot_from_proto(&bad).unwrap_err().to_string().contains("duplicate"));

        let mut bad = good;
        bad.items.as_mut().unwrap().flows[0].r#match.as_mut().unwrap().eth_src = Some(1 << 50);
        assert!(snapshot_from_proto(&bad).is_err());

        let d = pb::Delta { from_version: 3, to_version: 5, ..Default::default() };
        assert_eq!(delta_from_proto(&d).unwrap_err().path, "delta.to_version");
    }
}
