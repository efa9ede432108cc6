//! Arbitrary frames through a datapath whose flows rewrite every header field, push and
//! pop tags, decrement the TTL and fan out through groups: no panic, and a frame whose
//! checksums were valid on the way in has valid checksums on every way out.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use skein_datapath::datapath::{Datapath, Packet};
use skein_datapath::exec::CollectSink;
use skein_datapath::flow::{Action, Bucket, Flow, FlowMod, Group, GroupKind, Match};
use skein_datapath::key::Field;
use skein_datapath::packet;

fn set(field: Field, value: u128) -> Action {
    Action::SetField { field, value, mask: u128::MAX }
}

fn datapath() -> &'static Datapath {
    static DP: OnceLock<Datapath> = OnceLock::new();
    DP.get_or_init(|| {
        let dp = Datapath::default();
        let flow =
            |table, priority, matches, actions| FlowMod::AddFlow(Flow { table, priority, matches, cookie: 0, actions });
        dp.apply(&[
            FlowMod::AddGroup(Group {
                id: 1,
                kind: GroupKind::All,
                buckets: vec![
                    Bucket {
                        weight: 0,
                        actions: vec![set(Field::TpDst, 8080), set(Field::IcmpType, 0), Action::Output(3)],
                    },
                    Bucket { weight: 0, actions: vec![Action::PushVlan(7), Action::Output(4)] },
                ],
            }),
            flow(
                0,
                10,
                Match::ANY.with(Field::InPort, 1),
                vec![
                    set(Field::EthSrc, 0x0a58_0a00_0001),
                    set(Field::Ipv4Src, 0x6440_0001),
                    set(Field::Ipv6Dst, 0xfd00_0000_0000_0000_0000_0000_0000_0001),
                    set(Field::TpSrc, 40000),
                    set(Field::IpDscp, 10),
                    set(Field::IpEcn, 3),
                    set(Field::ArpTha, 0x0a58_0a00_0002),
                    set(Field::IcmpCode, 1),
                    Action::DecTtl,
                    Action::Output(2),
                    Action::Group(1),
                    Action::PopVlan,
                    Action::GotoTable(1),
                ],
            ),
            flow(
                0,
                5,
                Match::ANY,
                vec![set(Field::VlanTci, 0x1005), set(Field::Ipv6Label, 0xfffff), Action::Resubmit(1)],
            ),
            flow(1, 1, Match::ANY, vec![Action::Output(5)]),
        ])
        .expect("valid flows");
        dp
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&port, frame)) = data.split_first() else { return };
    let mut frame = frame.to_vec();
    if port & 0x80 != 0 {
        packet::fill_checksums(&mut frame);
    }
    // A second (inner) tag hides the headers behind it until pop_vlan exposes them: only
    // frames whose headers the parser saw on the way in are held to the checksum oracle.
    let mut key = skein_datapath::key::FlowKey::ZERO;
    skein_datapath::parse::parse_frame(&frame, &mut key);
    let nested_tag = matches!(key.get(Field::EthType) as u16, 0x8100 | 0x88a8);
    let valid_in = !nested_tag && packet::checksums_valid(&frame);
    let dp = datapath();
    thread_local! {
        static WORKER: std::cell::RefCell<skein_datapath::Worker> = std::cell::RefCell::new(datapath().worker());
    }
    let mut batch = [Packet::new(frame, (port & 1) as u32)];
    let mut sink = CollectSink::default();
    WORKER.with(|w| dp.process_batch(&mut w.borrow_mut(), &mut batch, 1, &mut sink));
    if valid_in {
        for (_, port, out) in &sink.outputs {
            assert!(packet::checksums_valid(out), "port {port}: checksum broken by rewrite: {out:02x?}");
        }
    }
});
