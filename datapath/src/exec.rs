//! Datapath actions: what a translated (cached) decision does to a frame. The upcall
//! compiles OpenFlow actions into this short list — header writes with absolute values,
//! VLAN push/pop, outputs, and `clone` for actions that must not affect the rest — and
//! both the first packet and every cached hit run it through the same executor.
//!
//! A megaflow stores its actions encoded as 64-bit words (see [`encode`]) inside the
//! same allocation as its key, which keeps cache entries small.

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::audit::AuditLog;
use crate::conntrack::{Conntrack, CtError, CtRequest, CtResult, NatAction, NatRange};
use crate::flow::{Responder, TunnelPort};
use crate::geneve;
use crate::key::{Field, FlowKey};
use crate::lb::LbState;
use crate::offload::Offload;
use crate::packet;
use crate::parse::{ABSENT, HeaderOffsets, L3, parse_frame};
use crate::pipeline::DropReason;

/// Receives the frames a datapath outputs.
pub trait OutputSink {
    /// `frame` (as modified so far) leaves through `port`. `packet` is the index of the
    /// frame in the batch being processed.
    fn output(&mut self, packet: usize, port: u32, frame: &[u8]);

    /// A frame the datapath generated on behalf of packet `packet` — a responder's
    /// answer, a reject, an ICMP error, an encapsulated copy — leaves through `port`.
    /// Unlike [`OutputSink::output`], it carries none of the packet's offload state
    /// (its checksums are complete). By default the same as `output`.
    fn emit(&mut self, packet: usize, port: u32, frame: &[u8]) {
        self.output(packet, port, frame);
    }

    /// Like [`OutputSink::output`], for the packet's last action: `frame` is the packet's
    /// final content (nothing changes it afterwards), so a sink that still holds the
    /// batch may send it from there instead of copying it. By default the same as
    /// `output`.
    fn output_last(&mut self, packet: usize, port: u32, frame: &[u8]) {
        self.output(packet, port, frame);
    }
}

/// A sink that collects `(packet, port, frame)` copies; for tests and tools.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CollectSink {
    /// Every output, in order.
    pub outputs: Vec<(usize, u32, Vec<u8>)>,
}

impl OutputSink for CollectSink {
    fn output(&mut self, packet: usize, port: u32, frame: &[u8]) {
        self.outputs.push((packet, port, frame.to_vec()));
    }
}

/// One datapath action.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DpAction {
    /// Write a header field (absolute value).
    Set(Field, u128),
    /// Push an 802.1Q tag with this TCI.
    PushVlan(u16),
    /// Pop the 802.1Q tag.
    PopVlan,
    /// Output to a port.
    Output(u32),
    /// Run the nested actions on a copy of the frame.
    Clone(Vec<DpAction>),
    /// Connection tracking; `recirc` ≠ 0: then re-enter the pipeline under that id.
    Ct {
        /// Zone.
        zone: u16,
        /// Commit new connections.
        commit: bool,
        /// NAT.
        nat: Option<NatAction>,
        /// Mark to set on commit (value, mask).
        mark: Option<(u32, u32)>,
        /// Label to set on commit (value, mask).
        label: Option<(u128, u128)>,
        /// Recirculation id (0: none).
        recirc: u32,
    },
    /// Encapsulate a copy of the frame in Geneve and send it out of the tunnel's
    /// underlay port (the frame itself is unchanged).
    TunnelOutput(Box<EncapSpec>),
    /// Answer the frame; the answer leaves through the input port.
    Respond(Responder),
    /// Record the packet in the audit log under this id.
    Log(u32),
    /// Load balancing through conntrack, then recirculation (`recirc` ≠ 0).
    CtLb {
        /// Zone.
        zone: u16,
        /// Load balancer id.
        lb: u32,
        /// Recirculation id (0: none).
        recirc: u32,
    },
}

/// A tunnel output: the tunnel and the Geneve fields taken from the key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EncapSpec {
    /// VNI.
    pub vni: u32,
    /// Remote chassis tunnel IP.
    pub dst: u32,
    /// Logical ingress port key.
    pub ingress: u16,
    /// Logical egress port key.
    pub egress: u16,
    /// The identity option's data (0: none).
    pub identity: u32,
    /// The tunnel port.
    pub tunnel: TunnelPort,
}

/// What actions may need besides the frame: conntrack, load balancers, the clock.
#[derive(Debug)]
pub struct ExecCtx<'a> {
    /// The connection table.
    pub conntrack: &'a Mutex<Conntrack>,
    /// Load balancers by id.
    pub lbs: &'a Mutex<HashMap<u32, LbState>>,
    /// The caller's clock (ns).
    pub now: u64,
    /// Port the packet came in on (where rejects go back out).
    pub in_port: u32,
    /// The frame's Ethernet destination and source as it arrived, for ICMP errors
    /// about it (sent from the MAC it was addressed to, back to the one that sent it).
    pub arrived_eth: [u8; 12],
    /// The frame's offload state (partial checksum, super-frame), resolved in software
    /// where the frame cannot keep it (into a tunnel).
    pub offload: Offload,
    /// The audit log `log` actions record into (`None`: they record nothing).
    pub audit: Option<&'a Mutex<AuditLog>>,
}

/// A packet that must go through the pipeline again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recirc {
    /// Recirculation id.
    pub id: u32,
    /// Zone it was tracked in.
    pub zone: u16,
    /// What conntrack said.
    pub ct: CtResult,
}

/// The result of executing actions on one packet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Set if the packet must be looked up again.
    pub recirc: Option<Recirc>,
    /// Set if execution dropped the packet.
    pub drop: Option<DropReason>,
}

const TAG_OUTPUT: u64 = 1;
const TAG_SET: u64 = 2;
const TAG_SET_WIDE: u64 = 3;
const TAG_PUSH_VLAN: u64 = 4;
const TAG_POP_VLAN: u64 = 5;
const TAG_CLONE: u64 = 6;
const TAG_CT: u64 = 7;
const TAG_CT_LB: u64 = 8;
const TAG_TUNNEL: u64 = 9;
const TAG_RESPOND: u64 = 10;
const TAG_LOG: u64 = 11;

const RESPOND_ARP: u64 = 1;
const RESPOND_ECHO: u64 = 2;
const RESPOND_TIME_EXCEEDED: u64 = 3;

fn encode_tunnel(e: &EncapSpec, out: &mut Vec<u64>) {
    let t = &e.tunnel;
    out.push(TAG_TUNNEL << 56 | (t.mtu as u64) << 32 | t.underlay_port as u64);
    out.push((e.vni as u64) << 32 | (e.ingress as u64) << 16 | e.egress as u64);
    out.push((t.local_ip as u64) << 32 | e.dst as u64);
    out.push((t.ttl as u64) << 48 | (t.local_mac & 0xffff_ffff_ffff));
    out.push(t.next_hop_mac & 0xffff_ffff_ffff);
    out.push((t.port as u64) << 32 | t.icmp_src as u64);
    out.push((t.icmp_src6 >> 64) as u64);
    out.push(t.icmp_src6 as u64);
    out.push(e.identity as u64);
}

const TUNNEL_WORDS: usize = 9;

fn decode_tunnel(w: &[u64]) -> EncapSpec {
    EncapSpec {
        vni: (w[1] >> 32) as u32,
        dst: w[2] as u32,
        ingress: (w[1] >> 16) as u16,
        egress: w[1] as u16,
        identity: w[8] as u32,
        tunnel: TunnelPort {
            port: (w[5] >> 32) as u32,
            local_ip: (w[2] >> 32) as u32,
            local_mac: w[3] & 0xffff_ffff_ffff,
            next_hop_mac: w[4],
            underlay_port: w[0] as u32,
            mtu: (w[0] >> 32) as u16,
            ttl: (w[3] >> 48) as u8,
            icmp_src: w[5] as u32,
            icmp_src6: ((w[6] as u128) << 64) | w[7] as u128,
        },
    }
}

fn encode_respond(r: &Responder, out: &mut Vec<u64>) {
    match r {
        Responder::Arp { mac } => out.push(TAG_RESPOND << 56 | RESPOND_ARP << 48 | (mac & 0xffff_ffff_ffff)),
        Responder::IcmpEcho => out.push(TAG_RESPOND << 56 | RESPOND_ECHO << 48),
        Responder::TimeExceeded { mac, ip, ip6 } => {
            out.push(TAG_RESPOND << 56 | RESPOND_TIME_EXCEEDED << 48 | (mac & 0xffff_ffff_ffff));
            out.extend([*ip as u64, (*ip6 >> 64) as u64, *ip6 as u64]);
        }
    }
}

/// Decodes a responder at `w[0]`; returns it and the words used.
fn decode_respond(w: &[u64]) -> (Responder, usize) {
    let mac = w[0] & 0xffff_ffff_ffff;
    match (w[0] >> 48) & 0xff {
        RESPOND_ARP => (Responder::Arp { mac }, 1),
        RESPOND_ECHO => (Responder::IcmpEcho, 1),
        _ => (Responder::TimeExceeded { mac, ip: w[1] as u32, ip6: ((w[2] as u128) << 64) | w[3] as u128 }, 4),
    }
}

const CT_COMMIT: u64 = 1;
const CT_NAT_STORED: u64 = 2;
const CT_NAT_SRC: u64 = 4;
const CT_NAT_DST: u64 = 8;
const CT_MARK: u64 = 16;
const CT_LABEL: u64 = 32;

fn encode_range(r: &NatRange, out: &mut Vec<u64>) {
    let a = u128::from_be_bytes(r.addr_min);
    let b = u128::from_be_bytes(r.addr_max);
    out.extend([(a >> 64) as u64, a as u64, (b >> 64) as u64, b as u64, (r.port_min as u64) << 16 | r.port_max as u64]);
}

fn decode_range(w: &[u64]) -> NatRange {
    NatRange {
        addr_min: (((w[0] as u128) << 64) | w[1] as u128).to_be_bytes(),
        addr_max: (((w[2] as u128) << 64) | w[3] as u128).to_be_bytes(),
        port_min: (w[4] >> 16) as u16,
        port_max: w[4] as u16,
    }
}

/// Decodes a `set` starting at `words[0]`: the field, the value and the words used.
#[inline(always)]
fn decode_set(words: &[u64]) -> (Field, u128, usize) {
    let w = words[0];
    let f = Field::ALL[((w >> 48) & 0xff) as usize];
    if w >> 56 == TAG_SET {
        (f, (w & 0xffff_ffff_ffff) as u128, 1)
    } else {
        (f, ((words[1] as u128) << 64) | words[2] as u128, 3)
    }
}

/// Decodes a `ct` action starting at `words[0]`; returns it and the words it used.
fn decode_ct(words: &[u64]) -> (DpAction, usize) {
    let w = words[0];
    let flags = (w >> 48) & 0xff;
    let zone = (w >> 32) as u16;
    let recirc = w as u32;
    let mut i = 1;
    let nat = if flags & CT_NAT_SRC != 0 {
        i += 5;
        Some(NatAction::Src(decode_range(&words[1..6])))
    } else if flags & CT_NAT_DST != 0 {
        i += 5;
        Some(NatAction::Dst(decode_range(&words[1..6])))
    } else if flags & CT_NAT_STORED != 0 {
        Some(NatAction::Stored)
    } else {
        None
    };
    let mark = if flags & CT_MARK != 0 {
        i += 1;
        Some(((words[i - 1] >> 32) as u32, words[i - 1] as u32))
    } else {
        None
    };
    let label = if flags & CT_LABEL != 0 {
        let l = &words[i..i + 4];
        i += 4;
        Some((((l[0] as u128) << 64) | l[1] as u128, ((l[2] as u128) << 64) | l[3] as u128))
    } else {
        None
    };
    (DpAction::Ct { zone, commit: flags & CT_COMMIT != 0, nat, mark, label, recirc }, i)
}

fn field_index(f: Field) -> u64 {
    Field::ALL.iter().position(|x| *x == f).unwrap_or(0) as u64
}

/// Encodes actions as words: the tag in the top byte; `Set` puts the field index in the
/// next byte and a value of up to 48 bits below (wider values follow in two words);
/// `Clone` gives the length in words of the nested block that follows.
pub fn encode(actions: &[DpAction], out: &mut Vec<u64>) {
    for a in actions {
        match a {
            DpAction::Output(p) => out.push(TAG_OUTPUT << 56 | *p as u64),
            DpAction::Set(f, v) => {
                if *v < (1 << 48) {
                    out.push(TAG_SET << 56 | field_index(*f) << 48 | *v as u64);
                } else {
                    out.push(TAG_SET_WIDE << 56 | field_index(*f) << 48);
                    out.push((*v >> 64) as u64);
                    out.push(*v as u64);
                }
            }
            DpAction::PushVlan(tci) => out.push(TAG_PUSH_VLAN << 56 | *tci as u64),
            DpAction::PopVlan => out.push(TAG_POP_VLAN << 56),
            DpAction::Clone(inner) => {
                let at = out.len();
                out.push(0);
                encode(inner, out);
                let len = (out.len() - at - 1) as u64;
                out[at] = TAG_CLONE << 56 | len;
            }
            DpAction::Ct { zone, commit, nat, mark, label, recirc } => {
                let mut flags = if *commit { CT_COMMIT } else { 0 };
                flags |= match nat {
                    None => 0,
                    Some(NatAction::Stored) => CT_NAT_STORED,
                    Some(NatAction::Src(_)) => CT_NAT_SRC,
                    Some(NatAction::Dst(_)) => CT_NAT_DST,
                };
                flags |= if mark.is_some() { CT_MARK } else { 0 } | if label.is_some() { CT_LABEL } else { 0 };
                out.push(TAG_CT << 56 | flags << 48 | (*zone as u64) << 32 | *recirc as u64);
                if let Some(NatAction::Src(r) | NatAction::Dst(r)) = nat {
                    encode_range(r, out);
                }
                if let Some((v, m)) = mark {
                    out.push((*v as u64) << 32 | *m as u64);
                }
                if let Some((v, m)) = label {
                    out.extend([(*v >> 64) as u64, *v as u64, (*m >> 64) as u64, *m as u64]);
                }
            }
            DpAction::CtLb { zone, lb, recirc } => {
                out.push(TAG_CT_LB << 56 | (*zone as u64) << 32 | *recirc as u64);
                out.push(*lb as u64);
            }
            DpAction::TunnelOutput(e) => encode_tunnel(e, out),
            DpAction::Respond(r) => encode_respond(r, out),
            DpAction::Log(id) => out.push(TAG_LOG << 56 | *id as u64),
        }
    }
}

/// Decodes words produced by [`encode`] (for dumps and tests).
pub fn decode(words: &[u64]) -> Vec<DpAction> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        i += 1;
        match w >> 56 {
            TAG_OUTPUT => out.push(DpAction::Output(w as u32)),
            TAG_SET | TAG_SET_WIDE => {
                let (f, v, used) = decode_set(&words[i - 1..]);
                out.push(DpAction::Set(f, v));
                i += used - 1;
            }
            TAG_PUSH_VLAN => out.push(DpAction::PushVlan(w as u16)),
            TAG_POP_VLAN => out.push(DpAction::PopVlan),
            TAG_CT => {
                let (a, used) = decode_ct(&words[i - 1..]);
                out.push(a);
                i += used - 1;
            }
            TAG_CT_LB => {
                out.push(DpAction::CtLb { zone: (w >> 32) as u16, lb: words[i] as u32, recirc: w as u32 });
                i += 1;
            }
            TAG_TUNNEL => {
                out.push(DpAction::TunnelOutput(Box::new(decode_tunnel(&words[i - 1..]))));
                i += TUNNEL_WORDS - 1;
            }
            TAG_RESPOND => {
                let (r, used) = decode_respond(&words[i - 1..]);
                out.push(DpAction::Respond(r));
                i += used - 1;
            }
            TAG_LOG => out.push(DpAction::Log(w as u32)),
            _ => {
                let n = (w & 0xffff_ffff) as usize;
                out.push(DpAction::Clone(decode(&words[i..i + n])));
                i += n;
            }
        }
    }
    out
}

/// Runs encoded actions on a frame. `key` is the frame's parsed key as it was looked up
/// (conntrack re-parses the frame only if earlier actions changed it).
#[inline]
pub fn execute(
    words: &[u64],
    frame: &mut Vec<u8>,
    offs: &mut HeaderOffsets,
    key: &FlowKey,
    pkt: usize,
    sink: &mut impl OutputSink,
    ctx: &ExecCtx<'_>,
) -> Outcome {
    execute_in(words, frame, offs, key, pkt, sink, ctx, true)
}

/// `top`: the actions run on the packet itself (not on a clone's copy), so an output
/// that ends them sends the packet's final bytes.
#[allow(clippy::too_many_arguments)]
fn execute_in(
    words: &[u64],
    frame: &mut Vec<u8>,
    offs: &mut HeaderOffsets,
    key: &FlowKey,
    pkt: usize,
    sink: &mut impl OutputSink,
    ctx: &ExecCtx<'_>,
    top: bool,
) -> Outcome {
    let mut modified = false;
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        i += 1;
        match w >> 56 {
            TAG_OUTPUT if top && i == words.len() => sink.output_last(pkt, w as u32, frame),
            TAG_OUTPUT => sink.output(pkt, w as u32, frame),
            TAG_SET | TAG_SET_WIDE => {
                let (f, v, used) = decode_set(&words[i - 1..]);
                i += used - 1;
                packet::write_field(frame, offs, f, v);
                modified = true;
            }
            TAG_PUSH_VLAN => {
                packet::push_vlan(frame, offs, w as u16);
                modified = true;
            }
            TAG_POP_VLAN => {
                packet::pop_vlan(frame, offs);
                modified = true;
            }
            TAG_LOG => {
                if let Some(audit) = ctx.audit {
                    audit.lock().record(w as u32, key, ctx.now);
                }
            }
            TAG_TUNNEL => {
                let e = decode_tunnel(&words[i - 1..]);
                i += TUNNEL_WORDS - 1;
                let (eth, port, offload) = (ctx.arrived_eth, ctx.in_port, ctx.offload);
                if let Err(d) = tunnel_output(frame, offs, &e, pkt, sink, eth, port, offload) {
                    return Outcome { recirc: None, drop: Some(d) };
                }
            }
            TAG_RESPOND => {
                let (r, used) = decode_respond(&words[i - 1..]);
                i += used - 1;
                let answer = match r {
                    Responder::Arp { mac } => crate::responder::arp_reply(frame, mac_bytes(mac)),
                    Responder::IcmpEcho => crate::responder::icmp_echo_reply(frame),
                    Responder::TimeExceeded { mac, ip, ip6 } => {
                        crate::responder::time_exceeded(frame, mac_bytes(mac), ip, ip6)
                    }
                };
                if let Some(a) = answer {
                    sink.emit(pkt, ctx.in_port, &a);
                }
            }
            TAG_CT | TAG_CT_LB => {
                let (action, used) = if w >> 56 == TAG_CT {
                    decode_ct(&words[i - 1..])
                } else {
                    (DpAction::CtLb { zone: (w >> 32) as u16, lb: words[i] as u32, recirc: w as u32 }, 2)
                };
                i += used - 1;
                let mut fresh = FlowKey::ZERO;
                let k = if modified {
                    // Re-parsed after a rewrite: the frame's checksum state stays what it was.
                    // What the last recirculating `ct` said stays the packet's.
                    let partial = offs.csum_partial;
                    fresh.set(Field::CtZone, key.get(Field::CtZone));
                    fresh.set(Field::CtState, key.get(Field::CtState));
                    *offs = parse_frame(frame, &mut fresh);
                    offs.csum_partial = partial;
                    &fresh
                } else {
                    key
                };
                let (zone, recirc, result) = match action {
                    DpAction::Ct { zone, commit, nat, mark, label, recirc } => {
                        let req = CtRequest { zone, commit, nat: nat.as_ref(), set_mark: mark, set_label: label };
                        let r = ctx.conntrack.lock().track(frame, offs, k, &req, ctx.now);
                        (zone, recirc, r)
                    }
                    DpAction::CtLb { zone, lb, recirc } => match ct_lb(frame, offs, k, zone, lb, pkt, sink, ctx) {
                        Ok(r) => (zone, recirc, r),
                        Err(d) => return Outcome { recirc: None, drop: Some(d) },
                    },
                    _ => unreachable!("decoded from a ct tag"),
                };
                modified = true;
                if let Some(e) = result.error {
                    let d = match e {
                        CtError::TableFull => DropReason::CtTableFull,
                        CtError::ZoneFull => DropReason::CtZoneFull,
                        CtError::NatExhausted => DropReason::NatExhausted,
                    };
                    return Outcome { recirc: None, drop: Some(d) };
                }
                if recirc != 0 {
                    return Outcome { recirc: Some(Recirc { id: recirc, zone, ct: result }), drop: None };
                }
            }
            _ => {
                let n = (w & 0xffff_ffff) as usize;
                let mut copy = frame.clone();
                let mut o = *offs;
                let mut k = FlowKey::ZERO;
                if modified {
                    o = parse_frame(&copy, &mut k);
                    o.csum_partial = offs.csum_partial;
                }
                let inner_key = if modified { &k } else { key };
                execute_in(&words[i..i + n], &mut copy, &mut o, inner_key, pkt, sink, ctx, false);
                i += n;
            }
        }
    }
    Outcome::default()
}

fn mac_bytes(m: u64) -> [u8; 6] {
    let b = m.to_be_bytes();
    [b[2], b[3], b[4], b[5], b[6], b[7]]
}

/// Encapsulates a copy of the frame and outputs it; a frame too big for the tunnel is
/// answered (out of `in_port`) with ICMP "fragmentation needed" / ICMPv6 "packet too big"
/// instead, addressed with the Ethernet header the frame arrived with (`arrived_eth`).
/// A super-frame is segmented first and each segment is sized against the tunnel MTU; a
/// partial checksum is completed (the far end gets plain frames).
#[allow(clippy::too_many_arguments)]
pub fn tunnel_output(
    frame: &[u8],
    offs: &HeaderOffsets,
    e: &EncapSpec,
    pkt: usize,
    sink: &mut impl OutputSink,
    arrived_eth: [u8; 12],
    in_port: u32,
    offload: Offload,
) -> Result<(), DropReason> {
    let t = &e.tunnel;
    let overhead = geneve::encap_overhead_v4(e.identity);
    let max_l3 = (t.mtu as usize).saturating_sub(overhead);
    let offload = if offs.l4 != ABSENT && offload.csum_partial() {
        Offload { csum_start: offs.l4, ..offload }
    } else {
        Offload { flags: 0, ..offload }
    };
    let l3_len = if offload.is_gso() && offs.l4 != ABSENT && offs.l3 != ABSENT {
        // Each segment: the headers up to the payload plus one segment of payload.
        let hdr = match offs.l4_proto {
            crate::key::ip_proto::TCP => frame.get(offs.l4 as usize + 12).map_or(20, |b| ((b >> 4) as usize) * 4),
            _ => 8,
        };
        (offs.l4 - offs.l3) as usize + hdr + offload.gso_size as usize
    } else if offs.l3 != ABSENT {
        frame.len() - offs.l3 as usize
    } else {
        0
    };
    if offs.l3 != ABSENT && l3_len > max_l3 {
        // Addressed as the frame arrived: from the MAC it was sent to, back to its sender.
        let mut as_arrived = frame.to_vec();
        as_arrived[..12].copy_from_slice(&arrived_eth);
        let mut router_mac = [0u8; 6];
        router_mac.copy_from_slice(&arrived_eth[..6]);
        let answer = match offs.l3_kind {
            L3::Ipv4 => geneve::frag_needed(&as_arrived, max_l3.min(u16::MAX as usize) as u16, router_mac, t.icmp_src),
            L3::Ipv6 => geneve::packet_too_big_v6(&as_arrived, max_l3 as u32, router_mac, t.icmp_src6),
            _ => None,
        };
        if let Some(a) = answer {
            sink.emit(pkt, in_port, &a);
        }
        return Err(DropReason::TooBig);
    }
    let params = geneve::EncapParams {
        outer_eth_src: mac_bytes(t.local_mac),
        outer_eth_dst: mac_bytes(t.next_hop_mac),
        src: t.local_ip,
        dst: e.dst,
        ttl: t.ttl,
        vni: e.vni,
        ingress: e.ingress,
        egress: e.egress,
        identity: e.identity,
    };
    let mut out = Vec::with_capacity(frame.len().min(max_l3 + 14) + overhead);
    if !offload.csum_partial() && !offload.is_gso() {
        geneve::encap(frame, &params, geneve::inner_flow_entropy(frame), &mut out)
            .map_err(|_| DropReason::EncapError)?;
        sink.emit(pkt, t.underlay_port, &out);
        return Ok(());
    }
    let entropy = geneve::inner_flow_entropy(frame);
    let mut failed = false;
    let mut scratch = Vec::new();
    crate::offload::segment(frame, offs, &offload, &mut scratch, |seg| {
        out.clear();
        if geneve::encap(seg, &params, entropy, &mut out).is_ok() {
            sink.emit(pkt, t.underlay_port, &out);
        } else {
            failed = true;
        }
    })
    .map_err(|_| DropReason::EncapError)?;
    if failed { Err(DropReason::EncapError) } else { Ok(()) }
}

/// `ct_lb`: known connections keep their translation; new ones get a backend and are
/// committed with destination NAT; with no backend, the client is answered with a reset
/// or an ICMP port unreachable and the packet is dropped.
#[allow(clippy::too_many_arguments)]
fn ct_lb(
    frame: &mut [u8],
    offs: &HeaderOffsets,
    key: &FlowKey,
    zone: u16,
    lb: u32,
    pkt: usize,
    sink: &mut impl OutputSink,
    ctx: &ExecCtx<'_>,
) -> Result<CtResult, DropReason> {
    let mut ct = ctx.conntrack.lock();
    let r = ct.track(frame, offs, key, &CtRequest::zone(zone).nat(&NatAction::Stored), ctx.now);
    if r.existing || r.state & crate::key::ct_state::NEW == 0 {
        return Ok(r);
    }
    let Some(tuple) = crate::conntrack::packet_tuple_of(key, frame, offs, zone) else { return Ok(r) };
    let backend = ctx.lbs.lock().get_mut(&lb).and_then(|l| l.select(&tuple, ctx.now));
    match backend {
        Some(b) => {
            let range = NatRange { addr_min: b.addr, addr_max: b.addr, port_min: b.port, port_max: b.port };
            Ok(ct.track(frame, offs, key, &CtRequest::zone(zone).commit().nat(&NatAction::Dst(range)), ctx.now))
        }
        None => {
            drop(ct);
            if let Some(reply) = crate::lb::reject(frame, offs, key) {
                sink.emit(pkt, ctx.in_port, &reply);
            }
            Err(DropReason::LbReject)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let acts = vec![
            DpAction::Set(Field::EthDst, 0x0a58_0a00_0001),
            DpAction::Set(Field::Ipv6Src, 0x2001_0db8_0000_0000_0000_0000_0000_0001),
            DpAction::PushVlan(0x1064),
            DpAction::Clone(vec![DpAction::PopVlan, DpAction::Output(7)]),
            DpAction::Ct {
                zone: 7,
                commit: true,
                nat: Some(NatAction::Src(NatRange::v4(0x0102_0304))),
                mark: Some((1, 3)),
                label: Some((5, u128::MAX)),
                recirc: 9,
            },
            DpAction::Ct { zone: 1, commit: false, nat: Some(NatAction::Stored), mark: None, label: None, recirc: 0 },
            DpAction::CtLb { zone: 2, lb: 77, recirc: 3 },
            DpAction::TunnelOutput(Box::new(EncapSpec {
                vni: 0xabcdef,
                dst: 0xc000_020c,
                ingress: 0x7fff,
                egress: 0x8001,
                identity: 0x0100_0001,
                tunnel: TunnelPort {
                    port: 9,
                    local_ip: 0xc000_020b,
                    local_mac: 0x0200_0000_0001,
                    next_hop_mac: 0x0200_0000_0002,
                    underlay_port: 10,
                    mtu: 1500,
                    ttl: 64,
                    icmp_src: 0x0af4_0101,
                    icmp_src6: 0xfd00_0000_0000_0000_0000_0000_0000_0001,
                },
            })),
            DpAction::Respond(Responder::Arp { mac: 0x0a58_0af4_0101 }),
            DpAction::Respond(Responder::TimeExceeded { mac: 1, ip: 2, ip6: 3 }),
            DpAction::Respond(Responder::IcmpEcho),
            DpAction::Output(3),
        ];
        let mut w = Vec::new();
        encode(&acts, &mut w);
        assert_eq!(decode(&w), acts);
    }

    #[test]
    fn clone_does_not_affect_the_rest() {
        let mut f = crate::parse::tests::ipv4_frame(6, 1, 2, 3, 4, b"");
        let mut key = crate::key::FlowKey::ZERO;
        let mut o = crate::parse::parse_frame(&f, &mut key);
        let acts =
            vec![DpAction::Clone(vec![DpAction::Set(Field::Ipv4Dst, 9), DpAction::Output(1)]), DpAction::Output(2)];
        let mut w = Vec::new();
        encode(&acts, &mut w);
        let orig = f.clone();
        let mut sink = CollectSink::default();
        let ct = Mutex::new(Conntrack::new(Default::default()));
        let lbs = Mutex::new(HashMap::new());
        let ctx = ExecCtx {
            conntrack: &ct,
            lbs: &lbs,
            now: 0,
            in_port: 1,
            arrived_eth: [0; 12],
            offload: Offload::NONE,
            audit: None,
        };
        execute(&w, &mut f, &mut o, &key, 0, &mut sink, &ctx);
        assert_eq!(sink.outputs.len(), 2);
        assert_ne!(sink.outputs[0].2, orig);
        assert_eq!(sink.outputs[1].2, orig);
    }

    /// Records which outputs were announced as the packet's final bytes.
    #[derive(Default)]
    struct LastSink(Vec<(u32, bool)>);

    impl OutputSink for LastSink {
        fn output(&mut self, _packet: usize, port: u32, _frame: &[u8]) {
            self.0.push((port, false));
        }
        fn output_last(&mut self, _packet: usize, port: u32, _frame: &[u8]) {
            self.0.push((port, true));
        }
    }

    #[test]
    fn only_the_packets_own_last_output_is_final() {
        let f = crate::parse::tests::ipv4_frame(6, 1, 2, 3, 4, b"");
        let mut key = crate::key::FlowKey::ZERO;
        let o = crate::parse::parse_frame(&f, &mut key);
        let ct = Mutex::new(Conntrack::new(Default::default()));
        let lbs = Mutex::new(HashMap::new());
        let ctx = ExecCtx {
            conntrack: &ct,
            lbs: &lbs,
            now: 0,
            in_port: 1,
            arrived_eth: [0; 12],
            offload: Offload::NONE,
            audit: None,
        };
        type Outputs = Vec<(u32, bool)>;
        let cases: Vec<(Vec<DpAction>, Outputs)> = vec![
            (vec![DpAction::Output(1), DpAction::Output(2)], vec![(1, false), (2, true)]),
            // A clone's last output is of a copy; the packet goes on to be changed.
            (vec![DpAction::Clone(vec![DpAction::Output(1)]), DpAction::Set(Field::Ipv4Dst, 9)], vec![(1, false)]),
            (vec![DpAction::Output(3), DpAction::Set(Field::Ipv4Dst, 9)], vec![(3, false)]),
        ];
        for (acts, want) in cases {
            let mut w = Vec::new();
            encode(&acts, &mut w);
            let (mut frame, mut offs) = (f.clone(), o);
            let mut sink = LastSink::default();
            execute(&w, &mut frame, &mut offs, &key, 0, &mut sink, &ctx);
            assert_eq!(sink.0, want, "{acts:?}");
        }
    }

    #[test]
    fn a_partial_checksum_survives_a_rewrite_before_a_nat() {
        // Conntrack without recirculation (here a DNAT lookup) and then an SNAT in the
        // same pass, as a gateway router does: the re-parse before the second `ct` must
        // keep the frame's checksum partial, or the source change is applied to the seed
        // as if it were a complete checksum.
        let mut full = crate::offload::tests::tcp_frame(120, false);
        full[34 + 13] = 0x02; // a SYN: the connection is new and gets its SNAT
        crate::packet::fill_checksums(&mut full);
        let mut partial = full.clone();
        let offload = crate::offload::tests::make_partial(&mut partial, false);
        let acts = vec![
            DpAction::Set(Field::EthDst, 0x0a58_0a00_0001),
            DpAction::Set(Field::NwTtl, 63),
            DpAction::Ct { zone: 1, commit: false, nat: Some(NatAction::Stored), mark: None, label: None, recirc: 0 },
            DpAction::Ct {
                zone: 0,
                commit: true,
                nat: Some(NatAction::Src(NatRange::v4(0x6440_0003))),
                mark: None,
                label: None,
                recirc: 0,
            },
            DpAction::Output(1),
        ];
        let mut w = Vec::new();
        encode(&acts, &mut w);
        let run = |frame: &mut Vec<u8>, csum_partial: bool| -> Vec<u8> {
            let mut key = crate::key::FlowKey::ZERO;
            let mut offs = crate::parse::parse_frame(frame, &mut key);
            offs.csum_partial = csum_partial;
            let ct = Mutex::new(Conntrack::new(Default::default()));
            let lbs = Mutex::new(HashMap::new());
            let ctx =
                ExecCtx { conntrack: &ct, lbs: &lbs, now: 0, in_port: 1, arrived_eth: [0; 12], offload, audit: None };
            let mut sink = CollectSink::default();
            execute(&w, frame, &mut offs, &key, 0, &mut sink, &ctx);
            sink.outputs.pop().map(|o| o.2).unwrap_or_default()
        };
        let want = run(&mut full.clone(), false);
        assert!(crate::packet::checksums_valid(&want));
        assert_eq!(want[26..30], [100, 64, 0, 3], "SNAT applied");
        let mut got = run(&mut partial, true);
        crate::offload::complete_checksum(&mut got, &offload).unwrap();
        assert_eq!(got, want);
    }
}
