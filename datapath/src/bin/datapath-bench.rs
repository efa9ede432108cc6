//! Prints the datapath's figures, one `name=value` per line, measured on one thread with
//! 64-byte packets in batches of 32:
//!
//! - `microflow_hit_ns`: parse + exact-match hit + execute, per packet;
//! - `megaflow_hit_ns_{1mask,8masks,32masks}`: the same with the microflow cache off and
//!   traffic spread over that many megaflow masks;
//! - `upcalls_per_sec`: flow setups through a 10-table pipeline of 10,000 flows;
//! - `megaflow_entry_bytes`: heap bytes per megaflow installed by that run (entry, key,
//!   actions, hash table and index share);
//! - `classifier_lookups_per_sec` / `classifier_wc_lookups_per_sec`: the Open vSwitch
//!   `test-classifier benchmark 10000 100 10 1 1000000` workload as Open vSwitch 3.1 runs
//!   it, without and with wildcard tracking; `classifier_10masks_*`: the same rules with
//!   10 random wildcard patterns (10 masks).
//!
//! - `ct_nat_established_ns`: a packet of an established connection to a Service
//!   (ct_lb, DNAT, recirculation, forwarding), microflow cache off: two megaflow hits,
//!   a conntrack lookup and the NAT rewrite — the whole per-packet cost;
//! - `ct_new_conns_per_sec`: new connections through `ct(commit, nat(src=...))`;
//! - `lb_select_ns`: choosing a backend among 10 (`lb_select_ns_100backends`: 100);
//! - `ct_lookup_ns`: conntrack alone on one established connection (what Open vSwitch's
//!   `ovstest test-conntrack benchmark 1 N 32` measures of its own);
//! - `ct_entry_bytes`: heap bytes per tracked connection;
//! - `ct_1m_lookup_ns` / `ct_1m_memory_mb`: tracking a packet of one of 1,000,000
//!   connections, in random order, and the table's memory.
//!
//! - `acl_established_ns` / `acl_established_reply_ns`: a packet of an established
//!   pod-to-pod connection (the client's direction / the server's) through the agent's
//!   pipeline with the ACL stages of 1,000 NetworkPolicies; `..._baseline`: the same
//!   connection without NetworkPolicy; `..._ratio`: the quotient;
//! - `acl_new_conn_ns`: a new connection's first packet (megaflows warm, conntrack commit)
//!   through the same pipelines; `acl_new_conn_ns_baseline`, `acl_new_conn_ratio`.
//!
//! - `tunnel_rx_ns`: a frame arriving through the Geneve tunnel (from one of 16 chassis,
//!   microflow hit) when the tunnel accepts only the cluster's chassis (1,000 of them);
//!   `tunnel_rx_ns_unchecked`: the same without the source check; `tunnel_rx_ratio`;
//!   `tunnel_rx_ns_megaflow`, `tunnel_rx_ns_megaflow_unchecked`: with the microflow cache
//!   off; `tunnel_spoofed_drop_ns`: a frame from a source that is no chassis (dropped
//!   before any lookup).
//!
//! `--quick` runs each measurement briefly (for smoke tests); the default takes about a
//! minute.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use skein_datapath::benchkit::{self, ClassifierWorkload, CountSink};
use skein_datapath::datapath::{DatapathConfig, Packet};
use skein_datapath::key::FlowKey;

/// Counts live heap bytes, to measure what cache entries cost.
struct CountingAlloc;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the counter is only
// bookkeeping and never affects the returned memory.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from this allocator with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn report(name: &str, value: impl std::fmt::Display) {
    println!("{name}={value}");
}

/// Runs `batch` through `dp` for about `secs` and returns ns per packet (best of 3 runs).
fn per_packet_ns(dp: &skein_datapath::Datapath, batch: &mut [Packet], secs: f64) -> f64 {
    let mut worker = dp.worker();
    let mut sink = CountSink::default();
    // Warm up: fill the caches and rank megaflow subtables.
    for i in 0..2000 {
        dp.process_batch(&mut worker, batch, i, &mut sink);
    }
    dp.maintain(2000);
    let mut best = f64::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed().as_secs_f64() < secs / 3.0 {
            for _ in 0..256 {
                dp.process_batch(&mut worker, batch, 3000, &mut sink);
            }
            n += 256 * batch.len() as u64;
        }
        best = best.min(start.elapsed().as_nanos() as f64 / n as f64);
    }
    black_box(sink);
    best
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        println!(
            "datapath-bench [--quick]\n\nMeasures Skein's datapath on one thread and prints name=value lines:\n\
             microflow_hit_ns, megaflow_hit_ns_1mask, megaflow_hit_ns_8masks, megaflow_hit_ns_32masks,\n\
             upcalls_per_sec, megaflow_entry_bytes, classifier_lookups_per_sec, classifier_wc_lookups_per_sec.\n\
             --quick          short runs, for smoke tests (figures are noisy)\n\
             --only SECTION   run one of: microflow, megaflow, upcall, conntrack (or one of its\n\
                              parts: ct_established, ct_new, lb, ct_lookup, ct_1m), acl, tunnel,\n\
                              classifier"
        );
        return;
    }
    let secs = if quick { 0.05 } else { 3.0 };
    // `--only SECTION` (microflow, megaflow, upcall, classifier) runs one section, for profiling.
    let only = std::env::args().skip_while(|a| a != "--only").nth(1);
    let run = |section: &str| only.as_deref().is_none_or(|o| o == section);

    // (a) microflow hit.
    if run("microflow") {
        let (dp, mut batch) = benchkit::forwarding_scenario(DatapathConfig::default());
        let ns = per_packet_ns(&dp, &mut batch, secs);
        report("microflow_hit_ns", format!("{ns:.1}"));
        report("microflow_hit_mpps", format!("{:.2}", 1e3 / ns));
    }

    // (b) megaflow hit, microflow cache off.
    if run("megaflow") {
        let no_micro = DatapathConfig { microflow_entries: 0, ..DatapathConfig::default() };
        for (masks, name) in [(1, "1mask"), (8, "8masks"), (32, "32masks")] {
            let (dp, mut batch) = benchkit::megaflow_masks_scenario(masks, no_micro);
            let ns = per_packet_ns(&dp, &mut batch, secs);
            let s = dp.stats();
            assert_eq!(s.megaflow_masks, masks, "scenario must produce {masks} masks");
            report(&format!("megaflow_hit_ns_{name}"), format!("{ns:.1}"));
            report(&format!("megaflow_hit_mpps_{name}"), format!("{:.2}", 1e3 / ns));
            report(&format!("megaflow_avg_subtables_probed_{name}"), format!("{:.2}", s.avg_subtables_per_hit));
        }
    }

    // (c) upcalls through the 10-table pipeline, (d) bytes per megaflow.
    if run("upcall") {
        let n_packets: usize = if quick { 5_000 } else { 100_000 };
        let (dp, mut next_packet) =
            benchkit::ten_table_scenario(DatapathConfig { microflow_entries: 0, ..DatapathConfig::default() });
        let mut batches: Vec<Vec<Packet>> =
            (0..n_packets / 32).map(|_| (0..32).map(|_| next_packet()).collect()).collect();
        let mut worker = dp.worker();
        let mut sink = CountSink::default();
        let before = LIVE_BYTES.load(Ordering::Relaxed);
        let start = Instant::now();
        for (i, b) in batches.iter_mut().enumerate() {
            dp.process_batch(&mut worker, b, i as u64, &mut sink);
        }
        let elapsed = start.elapsed().as_secs_f64();
        let after = LIVE_BYTES.load(Ordering::Relaxed);
        let s = dp.stats();
        report("upcalls_per_sec", format!("{:.0}", s.upcalls as f64 / elapsed));
        report("upcall_ns", format!("{:.0}", elapsed * 1e9 / s.upcalls.max(1) as f64));
        report("upcall_pipeline_flows", s.flows);
        report("upcall_megaflows", s.megaflows);
        report("megaflow_entry_bytes", (after.saturating_sub(before)) / s.megaflows.max(1));
        drop(batches);
    }

    // (f) an established, DNATed connection: megaflow hits + conntrack + NAT, per packet.
    conntrack_figures(quick, secs, &|part: &str| run("conntrack") || run(part));

    // (g) NetworkPolicy: established and new connections with 1,000 policies and without.
    if run("acl") {
        acl_figures(quick, secs);
    }

    // (h) The tunnel's source check: frames from chassis with and without it, and spoofed
    // frames.
    if run("tunnel") {
        let mut figures = std::collections::BTreeMap::new();
        for (micro, suffix) in [(8192, ""), (0, "_megaflow")] {
            for (chassis, check) in [(Some(1000), ""), (None, "_unchecked")] {
                let config = DatapathConfig { microflow_entries: micro, ..DatapathConfig::default() };
                let (dp, mut batch) = benchkit::tunnel_scenario(config, chassis);
                let mut check_sink = CountSink::default();
                dp.process_batch(&mut dp.worker(), &mut batch.clone(), 1, &mut check_sink);
                assert_eq!(check_sink.packets, 32, "every frame from a chassis delivered");
                figures.insert(format!("tunnel_rx_ns{suffix}{check}"), per_packet_ns(&dp, &mut batch, secs));
            }
        }
        let (dp, _) = benchkit::tunnel_scenario(DatapathConfig::default(), Some(1000));
        let mut spoofed: Vec<Packet> = (0..32).map(|i| benchkit::tunnel_packet(0xcb00_7100 | i, i)).collect();
        figures.insert("tunnel_spoofed_drop_ns".into(), per_packet_ns(&dp, &mut spoofed, secs));
        assert_eq!(dp.stats().upcalls, 0, "spoofed frames never reach a lookup");
        for (name, ns) in &figures {
            report(name, format!("{ns:.1}"));
        }
        report("tunnel_rx_ratio", format!("{:.2}", figures["tunnel_rx_ns"] / figures["tunnel_rx_ns_unchecked"]));
    }

    // (e) the Open vSwitch classifier workload, as Open vSwitch 3.1 runs it (one exact
    // subtable), then with 10 wildcard patterns (10 masks).
    if run("classifier") {
        let n_lookups = if quick { 100_000 } else { 1_000_000 };
        for (patterns, prefix) in [(None, "classifier"), (Some(10), "classifier_10masks")] {
            let w = ClassifierWorkload::new(10_000, 100, patterns, n_lookups, 42);
            let cls = w.classifier();
            report(&format!("{prefix}_rules"), cls.len());
            report(&format!("{prefix}_subtables"), cls.subtable_count());
            let rounds = if quick { 1 } else { 5 };
            let mut best_plain = f64::MAX;
            let mut best_wc = f64::MAX;
            let mut found = 0usize;
            for _ in 0..rounds {
                let start = Instant::now();
                for k in &w.lookups {
                    found += cls.lookup(black_box(k), None).is_some() as usize;
                }
                best_plain = best_plain.min(start.elapsed().as_secs_f64());
                let start = Instant::now();
                for k in &w.lookups {
                    let mut wc = FlowKey::ZERO;
                    found += cls.lookup(black_box(k), Some(&mut wc)).is_some() as usize;
                    black_box(&wc);
                }
                best_wc = best_wc.min(start.elapsed().as_secs_f64());
            }
            report(&format!("{prefix}_lookups_per_sec"), format!("{:.0}", n_lookups as f64 / best_plain));
            report(&format!("{prefix}_wc_lookups_per_sec"), format!("{:.0}", n_lookups as f64 / best_wc));
            report(&format!("{prefix}_hit_ratio"), format!("{:.3}", found as f64 / (2 * rounds * n_lookups) as f64));
        }
    }
}

/// Established packets and new connections through the agent's pipeline, with the ACL
/// stages of 1,000 policies and without (`benchkit::acl_scenario`).
fn acl_figures(quick: bool, secs: f64) {
    const SYN: u8 = 0x02;
    const SYN_ACK: u8 = 0x12;
    const ACK: u8 = 0x10;
    let mut figures = std::collections::BTreeMap::new();
    for (suffix, policies) in [("_baseline", None), ("", Some(1000))] {
        let dp = benchkit::acl_scenario(DatapathConfig::default(), policies);
        let mut worker = dp.worker();
        let mut sink = CountSink::default();
        // 32 established connections.
        let sports: Vec<u16> = (0..32).map(|i| 40000 + i).collect();
        for (i, &p) in sports.iter().enumerate() {
            let now = i as u64 + 1;
            for (flags, reply) in [(SYN, false), (SYN_ACK, true), (ACK, false)] {
                dp.process_batch(&mut worker, &mut [benchkit::acl_packets(p, flags, reply)], now, &mut sink);
            }
        }
        assert_eq!(sink.packets, 3 * 32, "every handshake packet delivered{suffix}");
        for (reply, name) in [(false, "acl_established_ns"), (true, "acl_established_reply_ns")] {
            let mut batch: Vec<Packet> = sports.iter().map(|p| benchkit::acl_packets(*p, ACK, reply)).collect();
            // Every measured packet must be delivered, or the figure measures drops.
            let mut check = CountSink::default();
            dp.process_batch(&mut worker, &mut batch.clone(), 50, &mut check);
            assert_eq!(check.packets, 32, "established packets delivered ({name}{suffix})");
            let ns = per_packet_ns(&dp, &mut batch, secs);
            figures.insert(format!("{name}{suffix}"), ns);
        }
        // New connections: distinct source ports (and so 5-tuples); the megaflows are warm.
        let n: u16 = if quick { 3_000 } else { 20_000 };
        let mut syns: Vec<Vec<Packet>> = (0..n / 32)
            .map(|b| (0..32).map(|i| benchkit::acl_packets(1024 + b * 32 + i, SYN, false)).collect())
            .collect();
        let mut sink = CountSink::default();
        // Warm the megaflows with a few connections first.
        for p in 0..64u16 {
            dp.process_batch(&mut worker, &mut [benchkit::acl_packets(30000 + p, SYN, false)], 100, &mut sink);
        }
        let (upcalls, megaflow_hits) = (dp.stats().upcalls, dp.stats().megaflow_hits);
        let start = Instant::now();
        for (i, b) in syns.iter_mut().enumerate() {
            dp.process_batch(&mut worker, b, 200 + i as u64, &mut sink);
        }
        let elapsed = start.elapsed().as_nanos() as f64;
        // How the new connections' passes were served: a pass that misses the megaflow
        // cache is an upcall (a classifier walk of the pipeline).
        let conns = f64::from(n / 32 * 32);
        report(
            &format!("acl_new_conn_upcalls_per_conn{suffix}"),
            format!("{:.2}", (dp.stats().upcalls - upcalls) as f64 / conns),
        );
        report(
            &format!("acl_new_conn_megaflow_hits_per_conn{suffix}"),
            format!("{:.2}", (dp.stats().megaflow_hits - megaflow_hits) as f64 / conns),
        );
        assert_eq!(sink.packets, 64 + u64::from(n / 32 * 32), "every SYN delivered{suffix}");
        figures.insert(format!("acl_new_conn_ns{suffix}"), elapsed / f64::from(n / 32 * 32));
        if policies.is_some() {
            report("acl_pipeline_flows", dp.stats().flows);
        }
    }
    for (name, ns) in &figures {
        report(name, format!("{ns:.1}"));
    }
    for name in ["acl_established_ns", "acl_established_reply_ns", "acl_new_conn_ns"] {
        let ratio = figures[name] / figures[&format!("{name}_baseline")];
        report(&format!("{}_ratio", name.trim_end_matches("_ns")), format!("{ratio:.2}"));
    }
}

/// Conntrack figures; `run(part)` says which of `ct_established`, `ct_new`, `lb`,
/// `ct_lookup` and `ct_1m` to measure.
fn conntrack_figures(quick: bool, secs: f64, run: &dyn Fn(&str) -> bool) {
    use skein_datapath::conntrack::{Conntrack, CtConfig, CtRequest, Tuple, v4};
    use skein_datapath::key::{Field, ip_proto};
    use skein_datapath::lb::{Backend, LbState, LoadBalancer};

    // Established DNAT: restore the client packets (the NAT rewrites them) and run them.
    let established: &[(usize, &str)] = if run("ct_established") {
        &[(0, "ct_nat_established_ns"), (8192, "ct_nat_established_ns_microflow")]
    } else {
        &[]
    };
    for &(micro, name) in established {
        let config = DatapathConfig { microflow_entries: micro, ..DatapathConfig::default() };
        let (dp, templates, now) = benchkit::service_scenario(config, 10);
        let mut batch = templates.clone();
        let mut worker = dp.worker();
        let mut sink = CountSink::default();
        let mut best = f64::MAX;
        for round in 0..4 {
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed().as_secs_f64() < secs / 4.0 {
                for _ in 0..64 {
                    for (p, t) in batch.iter_mut().zip(&templates) {
                        p.data.copy_from_slice(&t.data);
                    }
                    dp.process_batch(&mut worker, &mut batch, now + round, &mut sink);
                }
                n += 64 * batch.len() as u64;
            }
            if round > 0 {
                best = best.min(start.elapsed().as_nanos() as f64 / n as f64);
            }
        }
        assert_eq!(sink.packets as usize % batch.len(), 0, "every packet forwarded");
        report(name, format!("{best:.1}"));
    }

    // New connections with SNAT.
    if run("ct_new") {
        let n_conns: usize = if quick { 20_000 } else { 500_000 };
        let (dp, mut next) = benchkit::snat_scenario(DatapathConfig::default());
        let mut batches: Vec<Vec<Packet>> = (0..n_conns / 32).map(|_| (0..32).map(|_| next()).collect()).collect();
        let mut worker = dp.worker();
        let mut sink = CountSink::default();
        let start = Instant::now();
        for (i, b) in batches.iter_mut().enumerate() {
            dp.process_batch(&mut worker, b, i as u64, &mut sink);
        }
        let elapsed = start.elapsed().as_secs_f64();
        let made = dp.stats().connections;
        assert_eq!(made, n_conns / 32 * 32, "every packet opened a connection");
        report("ct_new_conns_per_sec", format!("{:.0}", made as f64 / elapsed));
        drop(batches);
        drop(dp);
    }

    // Backend selection.
    let sizes: &[(u32, &str)] =
        if run("lb") { &[(10, "lb_select_ns"), (100, "lb_select_ns_100backends")] } else { &[] };
    for &(n, name) in sizes {
        let mut lb = LbState::new(LoadBalancer {
            id: 1,
            backends: (0..n).map(|i| Backend::v4(0x0af4_0200 + i, 8080)).collect(),
            affinity_timeout_ns: None,
        });
        let iters = if quick { 100_000 } else { 5_000_000 };
        let mut t = Tuple { src: v4(0x0af4_0105), dst: v4(benchkit::VIP), sport: 0, dport: 80, proto: 6, zone: 0 };
        let start = Instant::now();
        let mut acc = 0u64;
        for i in 0..iters {
            t.sport = i as u16;
            t.src[15] = (i >> 16) as u8;
            acc += black_box(lb.select(black_box(&t), 0)).map_or(0, |b| b.port as u64);
        }
        black_box(acc);
        report(name, format!("{:.1}", start.elapsed().as_nanos() as f64 / iters as f64));
    }

    // Conntrack alone, one established UDP connection (Open vSwitch's
    // `ovstest test-conntrack benchmark 1 N 32` does the same with its conntrack).
    if run("ct_lookup") {
        let mut ct = Conntrack::new(CtConfig::default());
        let template = benchkit::udp64(0x0a01_0101, 0x0a01_0102, 1, 2);
        let mut frame = template.clone();
        let mut key = FlowKey::ZERO;
        let offs = skein_datapath::parse_frame(&frame, &mut key);
        let req = CtRequest::zone(0).commit();
        ct.track(&mut frame, &offs, &key, &req, 1);
        let n = if quick { 100_000u64 } else { 10_000_000 };
        let start = Instant::now();
        let mut acc = 0u64;
        for _ in 0..n {
            acc += black_box(ct.track(black_box(&mut frame), &offs, black_box(&key), &req, 2)).state as u64;
        }
        black_box(acc);
        report("ct_lookup_ns", format!("{:.1}", start.elapsed().as_nanos() as f64 / n as f64));
    }

    // A million connections: bytes each, then random-order tracking.
    if !run("ct_1m") {
        return;
    }
    let n: u32 = if quick { 50_000 } else { 1_000_000 };
    let mut frame = benchkit::tcp64(0x0a00_0000, 0x0b00_0001, 1000, 80, 0x02);
    let mut key = FlowKey::ZERO;
    let offs = skein_datapath::parse_frame(&frame, &mut key);
    let conn = |i: u32, key: &mut FlowKey| {
        key.set(Field::Ipv4Src, (0x0a00_0000 | (i >> 8)) as u128);
        key.set(Field::TpSrc, (1024 + (i & 0xff)) as u128);
    };
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let mut ct = Conntrack::new(CtConfig::default());
    key.set(Field::TcpFlags, 0x02);
    for i in 0..n {
        conn(i, &mut key);
        ct.track(&mut frame, &offs, &key, &CtRequest::zone(1).commit(), 1);
    }
    let after = LIVE_BYTES.load(Ordering::Relaxed);
    assert_eq!(ct.len(), n as usize);
    assert_eq!(key.get(Field::NwProto), ip_proto::TCP as u128);
    report("ct_entry_bytes", (after - before) / n as usize);
    // Random order (a multiplicative permutation), ACKs of the original direction.
    key.set(Field::TcpFlags, 0x10);
    let lookups = if quick { 100_000u64 } else { 3_000_000 };
    let start = Instant::now();
    let mut est = 0u64;
    for j in 0..lookups {
        let i = ((j.wrapping_mul(2_654_435_761)) % n as u64) as u32;
        conn(i, &mut key);
        est += black_box(ct.track(&mut frame, &offs, &key, &CtRequest::zone(1), 2)).state as u64 & 1;
    }
    black_box(est);
    report("ct_1m_lookup_ns", format!("{:.1}", start.elapsed().as_nanos() as f64 / lookups as f64));
    report("ct_1m_memory_mb", format!("{:.1}", (after - before) as f64 / 1e6));
    report("ct_1m_connections", n);
}
