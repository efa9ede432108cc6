//! Arbitrary frames through connection tracking with arbitrary options (zone, commit,
//! source/destination NAT, stored NAT, marks, a tiny table, a zone limit, early drop on
//! or off, a small NAT search, advancing time): no panic, neither the table nor the
//! limited zone ever exceeds its limit, and NAT never breaks a checksum that was valid.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skein_datapath::conntrack::{Conntrack, CtConfig, CtRequest, CtTimeouts, NatAction, NatRange, ZoneLimitScope, v4};
use skein_datapath::key::FlowKey;
use skein_datapath::packet;
use skein_datapath::parse::parse_frame;

fuzz_target!(|data: &[u8]| {
    let timeouts = CtTimeouts {
        tcp_syn_sent: 5,
        tcp_syn_recv: 5,
        tcp_established: 50,
        tcp_fin_wait: 5,
        tcp_time_wait: 5,
        tcp_close: 3,
        udp_first: 4,
        udp_multiple: 8,
        icmp_first: 4,
        icmp_reply: 4,
        other_first: 4,
        other_multiple: 4,
    };
    let first = data.first().copied().unwrap_or(0);
    let config = CtConfig {
        max_connections: 8,
        timeouts,
        tcp_loose: first & 1 != 0,
        sweep_budget: 2,
        early_drop: first & 2 != 0,
        nat_attempts: if first & 4 != 0 { 2 } else { CtConfig::DEFAULT_NAT_ATTEMPTS },
    };
    let mut ct = Conntrack::new(config);
    // Zone 1 holds at most 3 connections.
    ct.set_zone_limit(ZoneLimitScope::Zone(1), 3);
    // Frames are length-prefixed; each is preceded by an options byte.
    let mut rest = data;
    let mut now = 0u64;
    while rest.len() >= 2 {
        let opts = rest[0];
        let len = (rest[1] as usize).min(rest.len() - 2);
        let mut frame = rest[2..2 + len].to_vec();
        rest = &rest[2 + len..];
        if opts & 0x80 != 0 {
            packet::fill_checksums(&mut frame);
        }
        let valid = packet::checksums_valid(&frame);
        let mut key = FlowKey::ZERO;
        let offs = parse_frame(&frame, &mut key);
        let nat = match (opts >> 2) & 3 {
            0 => None,
            1 => Some(NatAction::Stored),
            2 => Some(NatAction::Src(NatRange {
                addr_min: v4(0xc000_0201),
                addr_max: v4(0xc000_0202),
                port_min: 1024,
                port_max: 1027,
            })),
            _ => Some(NatAction::Dst(NatRange::v4_port(0x0af4_0009, 8080))),
        };
        let mark = (opts & 0x20 != 0).then_some((opts as u32, 0xff));
        let req = CtRequest {
            zone: (opts & 1) as u16,
            commit: opts & 2 != 0,
            nat: nat.as_ref(),
            set_mark: mark,
            set_label: None,
        };
        ct.track(&mut frame, &offs, &key, &req, now);
        assert!(ct.len() <= 8, "table over its limit: {}", ct.len());
        assert!(ct.zone_len(1) <= 3, "zone over its limit: {}", ct.zone_len(1));
        if valid {
            assert!(packet::checksums_valid(&frame), "NAT broke a checksum: {frame:02x?}");
        }
        now += (opts >> 4) as u64 & 3;
        if opts & 0x40 != 0 {
            ct.sweep(now, 3);
        }
    }
});
