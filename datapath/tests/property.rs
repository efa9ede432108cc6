//! The caches may change speed, never answers: random tables (overlapping masks, random
//! priorities, resubmits, gotos, groups) and random packet sequences, interleaved with
//! random flow and group modifications, must give exactly the reference's outputs —
//! the same ports, the same bytes, in the same order, and the same drop reasons.
//!
//! Cases: 10,000 by default (the CI figure); `PROPTEST_CASES` overrides.

mod support;

use proptest::prelude::*;
use skein_datapath::conntrack::{CtConfig, CtTimeouts, NatAction, NatRange, ZoneLimitScope};
use skein_datapath::exec::CollectSink;
use skein_datapath::flow::{
    Action, Bucket, CtSpec, CtZone, Flow, FlowMod, Group, GroupKind, Match, Responder, TunnelPort, TunnelRemotes,
    ZoneLimit,
};
use skein_datapath::geneve::TunnelMeta;
use skein_datapath::key::{Field, VLAN_PRESENT, ct_state};
use skein_datapath::lb::{Backend, LoadBalancer};
use skein_datapath::{Datapath, DatapathConfig, DropReason, datapath::Packet};
use support::{FrameSpec, Reference, build_frame};

const TABLES: u8 = 4;
const TUNNEL_PORT: u32 = 9;

/// A tunnel with an MTU small enough that some generated frames are too big for it.
fn tunnel_port(mtu: u16) -> FlowMod {
    FlowMod::AddTunnelPort(TunnelPort {
        port: TUNNEL_PORT,
        local_ip: 0xc000_020b,
        local_mac: 0x0200_0000_000b,
        next_hop_mac: 0x0200_0000_0001,
        underlay_port: 10,
        mtu,
        ttl: 64,
        icmp_src: 0x0af4_0001,
        icmp_src6: 0xfd00_0000_0000_0000_0000_0000_0000_0001,
    })
}

fn match_strategy() -> impl Strategy<Value = Match> {
    let clause = prop_oneof![
        (1u128..4).prop_map(|v| (Field::InPort, v, u128::MAX)),
        prop_oneof![Just(0x0800u128), Just(0x86dd), Just(0x0806)].prop_map(|v| (Field::EthType, v, u128::MAX)),
        (0u128..4, prop_oneof![Just(u128::MAX), Just(0xfffffffe), Just(0xffff0000)]).prop_map(|(v, m)| (
            Field::Ipv4Src,
            0x0af4_0000 | v,
            m
        )),
        (0u128..4, prop_oneof![Just(u128::MAX), Just(0xfffffffc)]).prop_map(|(v, m)| (
            Field::Ipv4Dst,
            0x0af4_0000 | v,
            m
        )),
        prop_oneof![Just(6u128), Just(17), Just(1), Just(58)].prop_map(|v| (Field::NwProto, v, u128::MAX)),
        (
            prop_oneof![Just(80u128), Just(81), Just(53), Just(0)],
            prop_oneof![Just(u128::MAX), Just(0xfffe), Just(0xff00)]
        )
            .prop_map(|(v, m)| (Field::TpDst, v, m)),
        (0u128..3).prop_map(|v| (Field::Reg0, v, u128::MAX)),
        (0u128..3, prop_oneof![Just(u128::MAX), Just(1)]).prop_map(|(v, m)| (Field::Reg1, v, m)),
        (0u128..3).prop_map(|v| (Field::NwTtl, v, u128::MAX)),
        prop_oneof![Just(0u128), Just((VLAN_PRESENT | 5) as u128)].prop_map(|v| (Field::VlanTci, v, u128::MAX)),
        (0u128..2).prop_map(|v| (Field::IcmpType, v, u128::MAX)),
        (0u128..2).prop_map(|v| (Field::Metadata, v, u128::MAX)),
        prop_oneof![
            Just((0u128, ct_state::TRK as u128)),
            Just((ct_state::TRK as u128, ct_state::TRK as u128)),
            Just(((ct_state::TRK | ct_state::NEW) as u128, (ct_state::TRK | ct_state::NEW | ct_state::INV) as u128)),
            Just(((ct_state::TRK | ct_state::EST) as u128, (ct_state::TRK | ct_state::EST) as u128)),
            Just((ct_state::RPL as u128, ct_state::RPL as u128)),
            Just((ct_state::INV as u128, ct_state::INV as u128)),
            Just((ct_state::REL as u128, ct_state::REL as u128)),
        ]
        .prop_map(|(v, m)| (Field::CtState, v, m)),
        (0u128..2).prop_map(|v| (Field::CtMark, v, 1)),
        (0u128..3).prop_map(|v| (Field::CtZone, v, u128::MAX)),
        (0u128..2).prop_map(|v| (Field::Reg8, v, u128::MAX)),
        prop_oneof![Just(0u128), Just(0x0100_1002)].prop_map(|v| (Field::TunIdentity, v, u128::MAX)),
    ];
    prop::collection::vec(clause, 0..4)
        .prop_map(|cs| cs.into_iter().fold(Match::ANY, |m, (f, v, mask)| m.with_masked(f, v, mask)))
}

fn set_field_strategy() -> impl Strategy<Value = Action> {
    prop_oneof![
        (0u128..3).prop_map(|v| (Field::Reg0, v, u128::MAX)),
        (0u128..3).prop_map(|v| (Field::Reg1, v, 1)),
        (0u128..2).prop_map(|v| (Field::Metadata, v, u128::MAX)),
        (0u128..4).prop_map(|v| (Field::Ipv4Src, 0x0af4_0000 | v, u128::MAX)),
        (0u128..4).prop_map(|v| (Field::Ipv4Dst, 0x0af4_0000 | v, u128::MAX)),
        prop_oneof![Just(80u128), Just(8080)].prop_map(|v| (Field::TpDst, v, u128::MAX)),
        (0u128..3).prop_map(|v| (Field::TpSrc, v, u128::MAX)),
        (0u128..3).prop_map(|v| (Field::EthDst, 0x0a58_0000_0000 | v, u128::MAX)),
        (0u128..3).prop_map(|v| (Field::NwTtl, v, u128::MAX)),
        prop_oneof![Just(0u128), Just((VLAN_PRESENT | 7) as u128), Just(9)].prop_map(|v| (
            Field::VlanTci,
            v,
            u128::MAX
        )),
        (0u128..2).prop_map(|v| (Field::IcmpType, v, u128::MAX)),
        (0u128..2).prop_map(|v| (Field::IpDscp, v, u128::MAX)),
        (0u128..3).prop_map(|v| (Field::Ipv6Dst, v, u128::MAX)),
        (1u128..3).prop_map(|v| (Field::InPort, v, u128::MAX)),
        (1u128..3).prop_map(|v| (Field::TunId, v, u128::MAX)),
        (0u128..2).prop_map(|v| (Field::TunDst, 0xc000_0210 + v, u128::MAX)),
        (0u128..3).prop_map(|v| (Field::TunEgressPort, v * 20000, u128::MAX)),
        (0u128..2).prop_map(|v| (Field::Reg8, v, u128::MAX)),
        prop_oneof![Just(0u128), Just(0x0100_1002)].prop_map(|v| (Field::TunIdentity, v, u128::MAX)),
    ]
    .prop_map(|(field, value, mask)| Action::SetField { field, value, mask })
}

fn nat_strategy() -> impl Strategy<Value = Option<NatAction>> {
    prop_oneof![
        2 => Just(None),
        2 => Just(Some(NatAction::Stored)),
        1 => (0u32..2, prop_oneof![Just((0u16, 0u16)), Just((40000u16, 40001u16))]).prop_map(|(a, (lo, hi))| {
            Some(NatAction::Src(NatRange {
                addr_min: skein_datapath::conntrack::v4(0xc000_0200 + a),
                addr_max: skein_datapath::conntrack::v4(0xc000_0200 + a),
                port_min: lo,
                port_max: hi,
            }))
        }),
        1 => (0u32..3, prop_oneof![Just(80u16), Just(8080)])
            .prop_map(|(a, p)| Some(NatAction::Dst(NatRange::v4_port(0x0af4_0000 | a, p)))),
    ]
}

fn ct_strategy() -> impl Strategy<Value = Action> {
    let zone = prop_oneof![(0u16..2).prop_map(CtZone::Const), Just(CtZone::Field(Field::Reg0))];
    let ct = (
        zone.clone(),
        any::<bool>(),
        nat_strategy(),
        prop::option::weighted(0.8, 0..TABLES),
        prop::option::of((0u32..2).prop_map(|v| (v, 1u32))),
    )
        .prop_map(|(zone, commit, nat, table, set_mark)| {
            Action::Ct(Box::new(CtSpec { zone, commit, nat, table, set_mark, set_label: None }))
        });
    let ct_lb = (1u32..3, zone, prop::option::weighted(0.8, 0..TABLES)).prop_map(|(lb, zone, table)| Action::CtLb {
        lb,
        zone,
        table,
    });
    prop_oneof![3 => ct, 1 => ct_lb]
}

fn action_strategy(table: u8, in_bucket: bool) -> BoxedStrategy<Vec<Action>> {
    let a = prop_oneof![
        4 => (1u32..5).prop_map(Action::Output),
        1 => Just(Action::Output(TUNNEL_PORT)),
        1 => prop_oneof![
            Just(Responder::Arp { mac: 0x0a58_0af4_0001 }),
            Just(Responder::IcmpEcho),
            Just(Responder::TimeExceeded { mac: 0x0a58_0af4_0001, ip: 0x0af4_0001, ip6: 0xfd00_0000_0000_0000_0000_0000_0000_0001 }),
        ]
        .prop_map(Action::Respond),
        4 => set_field_strategy(),
        1 => Just(Action::DecTtl),
        1 => (1u16..4).prop_map(Action::PushVlan),
        1 => Just(Action::PopVlan),
        3 => (0..TABLES).prop_map(Action::Resubmit),
        2 => (1u32..4).prop_map(Action::Group),
        1 => Just(Action::Drop),
        1 => (0u32..3).prop_map(Action::Log),
    ];
    let body = prop::collection::vec(a, 0..5);
    if in_bucket {
        // Conntrack in a bucket only without recirculation.
        let ct_here = ct_strategy().prop_map(|a| match a {
            Action::Ct(mut s) => {
                s.table = None;
                Action::Ct(s)
            }
            Action::CtLb { lb, zone, .. } => Action::CtLb { lb, zone, table: None },
            other => other,
        });
        (body, prop::option::weighted(0.2, ct_here))
            .prop_map(|(mut v, ct)| {
                v.extend(ct);
                v
            })
            .boxed()
    } else {
        (body, prop::option::weighted(0.3, ct_strategy()))
            .prop_map(|(mut v, ct)| {
                // A recirculating ct must end the flow; one without a table may sit anywhere.
                if let Some(ct) = ct {
                    v.push(ct);
                }
                v
            })
            .prop_flat_map(move |v| finish_flow(table, v))
            .boxed()
    }
}

fn recirculates(a: &Action) -> bool {
    matches!(a, Action::Ct(s) if s.table.is_some()) || matches!(a, Action::CtLb { table: Some(_), .. })
}

fn finish_flow(table: u8, v: Vec<Action>) -> BoxedStrategy<Vec<Action>> {
    if v.last().is_some_and(recirculates) || table + 1 >= TABLES {
        Just(v).boxed()
    } else {
        prop::option::weighted(0.3, table + 1..TABLES)
            .prop_map(move |goto| {
                let mut v = v.clone();
                if let Some(t) = goto {
                    v.push(Action::GotoTable(t));
                }
                v
            })
            .boxed()
    }
}

fn lb_strategy() -> impl Strategy<Value = LoadBalancer> {
    (
        1u32..3,
        prop::collection::vec((0u32..3, prop_oneof![Just(80u16), Just(8080)]), 0..3),
        prop::option::of(prop_oneof![Just(30u64), Just(1000)]),
    )
        .prop_map(|(id, bs, affinity_timeout_ns)| {
            let mut backends: Vec<Backend> = bs.into_iter().map(|(a, p)| Backend::v4(0x0af4_0000 | a, p)).collect();
            backends.dedup();
            LoadBalancer { id, backends, affinity_timeout_ns }
        })
}

fn flow_strategy() -> impl Strategy<Value = Flow> {
    (0..TABLES, 0u16..6, match_strategy(), 0u64..4).prop_flat_map(|(table, priority, matches, cookie)| {
        action_strategy(table, false).prop_map(move |actions| Flow { table, priority, matches, cookie, actions })
    })
}

fn group_strategy() -> impl Strategy<Value = Group> {
    let fields = prop::collection::vec(
        prop_oneof![Just(Field::Ipv4Src), Just(Field::TpSrc), Just(Field::Reg0), Just(Field::InPort)],
        0..3,
    );
    let kind = prop_oneof![fields.prop_map(|fields| GroupKind::Select { fields }), Just(GroupKind::All)];
    let bucket = (0u16..3, action_strategy(0, true)).prop_map(|(weight, actions)| Bucket { weight, actions });
    (1u32..4, kind, prop::collection::vec(bucket, 0..4)).prop_map(|(id, kind, buckets)| Group { id, kind, buckets })
}

fn flow_mod_strategy() -> impl Strategy<Value = FlowMod> {
    prop_oneof![
        5 => flow_strategy().prop_map(FlowMod::AddFlow),
        2 => (0..TABLES, 0u16..6, match_strategy())
            .prop_map(|(table, priority, matches)| FlowMod::DeleteFlowStrict { table, priority, matches }),
        1 => (prop::option::of(0..TABLES), 0u64..4, prop_oneof![Just(u64::MAX), Just(1u64)])
            .prop_map(|(table, cookie, cookie_mask)| FlowMod::DeleteFlowsByCookie { table, cookie, cookie_mask }),
        2 => group_strategy().prop_map(FlowMod::AddGroup),
        1 => (1u32..4).prop_map(FlowMod::DeleteGroup),
        2 => lb_strategy().prop_map(FlowMod::AddLoadBalancer),
        1 => (1u32..3).prop_map(FlowMod::DeleteLoadBalancer),
        1 => prop_oneof![Just(130u16), Just(1500)].prop_map(tunnel_port),
        // Tunnelled frames arrive on ports 1–3 from one of two outer sources.
        1 => (1u32..4, prop::collection::vec(prop_oneof![Just(TUNNEL_SRC[0]), Just(TUNNEL_SRC[1])], 0..3))
            .prop_map(|(port, remotes)| FlowMod::SetTunnelRemotes(TunnelRemotes::new(port, remotes))),
        1 => (1u32..4).prop_map(FlowMod::DeleteTunnelRemotes),
        1 => (prop_oneof![Just(ZoneLimitScope::Default), (0u16..2).prop_map(ZoneLimitScope::Zone)], 0u32..3)
            .prop_map(|(scope, limit)| FlowMod::SetZoneLimit(ZoneLimit { scope, limit })),
        1 => prop_oneof![Just(ZoneLimitScope::Default), (0u16..2).prop_map(ZoneLimitScope::Zone)]
            .prop_map(FlowMod::DeleteZoneLimit),
    ]
}

/// The outer sources of the generated tunnelled frames.
const TUNNEL_SRC: [u32; 2] = [0xc000_0210, 0xc000_0211];

fn frame_strategy() -> impl Strategy<Value = (FrameSpec, u32, Option<TunnelMeta>)> {
    (
        0u8..7,
        prop_oneof![3 => Just(0u16), 1 => Just(5u16), 1 => Just(0x2007u16)],
        0u32..4,
        0u32..4,
        prop_oneof![Just(0u16), Just(1), Just(2), Just(1234)],
        prop_oneof![Just(80u16), Just(81), Just(53), Just(0), Just(1)],
        prop_oneof![Just(0u8), Just(1), Just(2), Just(64)],
        0u16..40,
        1u32..4,
        prop::option::weighted(
            0.2,
            (1u32..3, 0u16..3, prop_oneof![Just(0u32), Just(0x0100_1002)], 0usize..2).prop_map(
                |(vni, ing, identity, src)| TunnelMeta {
                    vni,
                    src: TUNNEL_SRC[src],
                    dst: 0xc000_020b,
                    ingress: ing,
                    egress: 1,
                    identity,
                },
            ),
        ),
    )
        .prop_map(|(kind, vlan, src, dst, sport, dport, ttl, payload, in_port, tunnel)| {
            (FrameSpec { kind, vlan, src, dst, sport, dport, ttl, payload }, in_port, tunnel)
        })
}

#[derive(Debug, Clone)]
enum Step {
    Mods(Vec<FlowMod>),
    Packets(Vec<(FrameSpec, u32, Option<TunnelMeta>)>),
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => prop::collection::vec(flow_mod_strategy(), 1..4).prop_map(Step::Mods),
        3 => prop::collection::vec(frame_strategy(), 1..12).prop_map(Step::Packets),
    ]
}

fn config_strategy() -> impl Strategy<Value = DatapathConfig> {
    (prop_oneof![Just(0usize), Just(4), Just(8192)], prop_oneof![Just(3usize), Just(100_000)]).prop_map(
        |(microflow_entries, max_megaflows)| DatapathConfig {
            microflow_entries,
            max_megaflows,
            idle_timeout_ns: 50,
            expire_budget: 2,
            conntrack: ct_config(max_megaflows, microflow_entries),
            audit: Default::default(),
        },
    )
}

/// Short timeouts so connections expire within a test; a tiny table in some configs,
/// early drop on or off, a NAT search of 4 candidates or the default.
fn ct_config(variant: usize, other: usize) -> CtConfig {
    CtConfig {
        max_connections: if variant < 10 { 4 } else { 100_000 },
        timeouts: CtTimeouts {
            tcp_syn_sent: 100,
            tcp_syn_recv: 100,
            tcp_established: 1000,
            tcp_fin_wait: 60,
            tcp_time_wait: 60,
            tcp_close: 40,
            udp_first: 70,
            udp_multiple: 200,
            icmp_first: 70,
            icmp_reply: 100,
            other_first: 70,
            other_multiple: 100,
        },
        tcp_loose: variant.is_multiple_of(2),
        sweep_budget: 3,
        early_drop: other != 4,
        nat_attempts: if other == 0 { 4 } else { CtConfig::DEFAULT_NAT_ATTEMPTS },
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn cached_datapath_equals_linear_reference(
        config in config_strategy(),
        initial in prop::collection::vec(flow_mod_strategy(), 0..16),
        steps in prop::collection::vec(step_strategy(), 1..10),
    ) {
        let dp = Datapath::new(config);
        let mut reference = Reference::new(config.conntrack);
        let mut worker = dp.worker();
        let mut now = 0u64;
        let mut ref_drops = std::collections::BTreeMap::new();
        let mut initial = initial;
        initial.insert(0, tunnel_port(130));
        let all = std::iter::once(Step::Mods(initial)).chain(steps);
        for step in all {
            match step {
                Step::Mods(mods) => {
                    for m in &mods {
                        reference.apply(m);
                    }
                    let r = dp.apply(&mods);
                    prop_assert!(r.is_ok(), "generated flow mods are valid: {:?}", r);
                }
                Step::Packets(specs) => {
                    let mut batch: Vec<Packet> = specs
                        .iter()
                        .map(|(s, port, tunnel)| Packet { tunnel: *tunnel, ..Packet::new(build_frame(s), *port) })
                        .collect();
                    now += 20;
                    let expected: Vec<_> =
                        batch.iter().map(|p| reference.process(&p.data, p.in_port, p.tunnel, now)).collect();
                    for e in &expected {
                        if let Some(d) = e.drop {
                            *ref_drops.entry(d).or_insert(0u64) += 1;
                        }
                    }
                    let mut sink = CollectSink::default();
                    dp.process_batch(&mut worker, &mut batch, now, &mut sink);
                    for (i, want) in expected.iter().enumerate() {
                        let got: Vec<(u32, Vec<u8>)> = sink
                            .outputs
                            .iter()
                            .filter(|(p, _, _)| *p == i)
                            .map(|(_, port, f)| (*port, f.clone()))
                            .collect();
                        prop_assert_eq!(&got, &want.outputs, "packet {} {:?}", i, specs[i]);
                    }
                    dp.maintain(now);
                    reference.maintain(now);
                }
            }
        }
        // Every pass of every packet went through exactly one of the three paths (but the
        // tunnelled frames refused before any lookup), and every packet was dropped for
        // the same reason the reference gives.
        let stats = dp.stats();
        let drops: std::collections::BTreeMap<_, _> = stats.drops.into_iter().collect();
        let refused = drops.get(&DropReason::TunnelUnknownSource).copied().unwrap_or(0);
        prop_assert_eq!(
            stats.packets + stats.recirculations,
            stats.microflow_hits + stats.megaflow_hits + stats.upcalls + refused
        );
        prop_assert_eq!(drops, ref_drops);
    }
}
