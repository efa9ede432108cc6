//! Benchmark scenarios shared by the `datapath-bench` binary and the criterion benches:
//! pipelines, traffic and the Open vSwitch classifier workload, built deterministically
//! from a seed so that every run measures the same thing.

use crate::datapath::{Datapath, DatapathConfig, Packet};
use crate::exec::OutputSink;
use crate::flow::{Action, Flow, FlowMod, Match};
use crate::key::{Field, FlowKey, eth_type, ip_proto};
use crate::packet;

/// A small deterministic PRNG (xorshift64*), so scenarios need no dependencies.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeds the generator (0 is replaced by a fixed non-zero seed).
    pub fn new(seed: u64) -> Self {
        Rng(if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed })
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// A sink that only counts, as a port with no cost would.
#[derive(Debug, Default, Clone, Copy)]
pub struct CountSink {
    /// Frames output.
    pub packets: u64,
    /// Bytes output.
    pub bytes: u64,
}

impl OutputSink for CountSink {
    #[inline]
    fn output(&mut self, _packet: usize, _port: u32, frame: &[u8]) {
        self.packets += 1;
        self.bytes += frame.len() as u64;
    }
}

/// A 64-byte UDP/IPv4 frame (60 bytes + 4 of FCS the wire would add).
pub fn udp64(src: u32, dst: u32, sport: u16, dport: u16) -> Vec<u8> {
    let mut f = vec![0u8; 60];
    f[0..6].copy_from_slice(&[0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02]);
    f[6..12].copy_from_slice(&[0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x03]);
    f[12..14].copy_from_slice(&eth_type::IPV4.to_be_bytes());
    f[14] = 0x45;
    f[16..18].copy_from_slice(&46u16.to_be_bytes());
    f[22] = 64;
    f[23] = ip_proto::UDP;
    f[26..30].copy_from_slice(&src.to_be_bytes());
    f[30..34].copy_from_slice(&dst.to_be_bytes());
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&dport.to_be_bytes());
    f[38..40].copy_from_slice(&26u16.to_be_bytes());
    packet::fill_checksums(&mut f);
    f
}

fn add(table: u8, priority: u16, matches: Match, actions: Vec<Action>) -> FlowMod {
    FlowMod::AddFlow(Flow { table, priority, matches, cookie: 0, actions })
}

/// One flow forwarding everything from port 1 to port 2; a batch of 32 packets of 32
/// different UDP flows.
pub fn forwarding_scenario(config: DatapathConfig) -> (Datapath, Vec<Packet>) {
    let dp = Datapath::new(config);
    dp.apply(&[add(0, 100, Match::ANY.with(Field::InPort, 1).with(Field::EthType, 0x0800), vec![Action::Output(2)])])
        .expect("valid flow");
    let batch = (0..32).map(|i| Packet::new(udp64(0x0af4_0105, 0x0af4_0206, 10_000 + i, 80), 1)).collect();
    (dp, batch)
}

/// Frames arriving through the Geneve tunnel (port 3) as the agent classifies them:
/// table 0 delivers `tun_id=1,tun_egress_port=P` to port `P` (32 local ports). The batch
/// holds 32 UDP flows, two from each of 16 sending chassis (192.0.2.x). With `chassis`
/// set, the tunnel port accepts frames only from that many chassis (the 16 senders among
/// them), as the agent installs it; without, from anyone (the datapath before the check).
pub fn tunnel_scenario(config: DatapathConfig, chassis: Option<u32>) -> (Datapath, Vec<Packet>) {
    let dp = Datapath::new(config);
    let mut mods: Vec<FlowMod> = (1..=32u32)
        .map(|p| {
            let m = Match::ANY
                .with(Field::InPort, TUNNEL_PORT.into())
                .with(Field::TunId, 1)
                .with(Field::TunEgressPort, p.into());
            add(0, 100, m, vec![Action::Output(100 + p)])
        })
        .collect();
    mods.push(add(0, 0, Match::ANY, vec![Action::Drop]));
    if let Some(n) = chassis {
        mods.push(FlowMod::SetTunnelRemotes(crate::flow::TunnelRemotes::new(TUNNEL_PORT, (0..n).map(chassis_ip))));
    }
    dp.apply(&mods).expect("valid flows");
    let batch = (0..32u32).map(|i| tunnel_packet(chassis_ip(i % 16), i)).collect();
    (dp, batch)
}

/// The tunnel port of [`tunnel_scenario`].
pub const TUNNEL_PORT: u32 = 3;

/// The tunnel address of chassis `i` in [`tunnel_scenario`].
pub fn chassis_ip(i: u32) -> u32 {
    0xc000_0000 | (i + 1)
}

/// A tunnelled UDP frame from outer source `src` for local port `i % 32 + 1`.
pub fn tunnel_packet(src: u32, i: u32) -> Packet {
    let meta = crate::geneve::TunnelMeta {
        vni: 1,
        src,
        dst: 0xc000_ff01,
        ingress: 2,
        egress: (i % 32 + 1) as u16,
        identity: 0,
    };
    Packet {
        tunnel: Some(meta),
        ..Packet::new(udp64(0x0af4_0100 | i, 0x0af4_0200 | i, 10_000 + i as u16, 80), TUNNEL_PORT)
    }
}

/// A pipeline whose traffic produces exactly `masks` distinct megaflow masks, with the
/// 32 packets of the batch spread evenly over them. Flow `j` matches one bit of the L4
/// ports and outranks flow `j + 1`, so a packet for flow `j` consults the masks of flows
/// `0..=j`: `masks` different unions.
pub fn megaflow_masks_scenario(masks: usize, config: DatapathConfig) -> (Datapath, Vec<Packet>) {
    let masks = masks.clamp(1, 32);
    let dp = Datapath::new(config);
    let bit =
        |j: usize| -> (Field, u128) { if j < 16 { (Field::TpSrc, 1 << j) } else { (Field::TpDst, 1 << (j - 16)) } };
    let mods: Vec<FlowMod> = (0..masks)
        .map(|j| {
            let (f, b) = bit(j);
            add(0, 1000 - j as u16, Match::ANY.with_masked(f, b, b), vec![Action::Output(2 + j as u32)])
        })
        .collect();
    dp.apply(&mods).expect("valid flows");
    let batch = (0..32)
        .map(|i| {
            let j = i % masks;
            let (f, b) = bit(j);
            let (sport, dport) = if f == Field::TpSrc { (b as u16, 0) } else { (0, b as u16) };
            Packet::new(udp64(0x0af4_0100 | i as u32, 0x0af4_0200, sport, dport), 1)
        })
        .collect();
    (dp, batch)
}

/// A 10-table pipeline of 10,000 flows (1,000 per table) shaped like a logical network: port security on
/// source addresses (table 0), eight tables of destination lookups with /32, /24 and /16
/// masks (routes, ACLs, load balancers), and an egress table on the destination port.
/// Returns the datapath and a generator of packets that are (almost always) new flows.
pub fn ten_table_scenario(config: DatapathConfig) -> (Datapath, impl FnMut() -> Packet) {
    let dp = Datapath::new(config);
    let mut rng = Rng::new(10);
    let mut mods = Vec::with_capacity(10_000);
    for i in 0..1000u32 {
        mods.push(add(
            0,
            100,
            Match::ANY.with(Field::InPort, 1).with(Field::Ipv4Src, (0x0a00_0000 | i) as u128),
            vec![Action::SetField { field: Field::Reg0, value: i as u128, mask: u128::MAX }, Action::GotoTable(1)],
        ));
    }
    for t in 1..9u8 {
        let mut seen = std::collections::HashSet::new();
        let mut i = 0u32;
        while i < 999 {
            let (prefix, priority) = match i % 10 {
                0..=6 => (32, 300),
                7 | 8 => (24, 200),
                _ => (16, 100),
            };
            let mask = u32::MAX << (32 - prefix);
            let dst = (0x0b00_0000 | (rng.below(1 << 24) as u32)) & mask;
            let priority = priority + (i % 7) as u16;
            if !seen.insert((dst, prefix, priority)) {
                continue;
            }
            i += 1;
            mods.push(add(
                t,
                priority,
                Match::ANY.with_masked(Field::Ipv4Dst, dst as u128, mask as u128),
                vec![
                    Action::SetField {
                        field: Field::reg(t as usize % 8).unwrap_or(Field::Reg1),
                        value: i as u128,
                        mask: u128::MAX,
                    },
                    Action::GotoTable(t + 1),
                ],
            ));
        }
        // Everything else goes on too.
        mods.push(add(t, 0, Match::ANY, vec![Action::GotoTable(t + 1)]));
    }
    for i in 0..1000u32 {
        mods.push(add(
            9,
            100,
            Match::ANY.with(Field::TpDst, (1000 + i) as u128),
            vec![Action::DecTtl, Action::Output(2 + i % 4)],
        ));
    }
    dp.apply(&mods).expect("valid flows");
    let mut rng = Rng::new(11);
    let next_packet = move || {
        let src = 0x0a00_0000 | rng.below(1000) as u32;
        let dst = 0x0b00_0000 | rng.below(1 << 24) as u32;
        let dport = 1000 + rng.below(1000) as u16;
        Packet::new(udp64(src, dst, 5000, dport), 1)
    };
    (dp, next_packet)
}

/// The Open vSwitch `test-classifier benchmark` workload (`tests/test-classifier.c` of
/// Open vSwitch 3.1): 13 fields with two values each; `n_rules` rules with random value
/// patterns and priorities drawn from `n_priorities` shuffled values `i * 129`; a rule
/// equal to an existing one in match and priority is skipped, as OVS does; lookups of
/// `n_lookups` flows drawn from a pool of 16,384 random flows.
///
/// In Open vSwitch 3.1 the benchmark's "subtables" argument only decides which rules get
/// priority 0: every rule matches all 13 fields exactly, so the classifier has one
/// subtable and about 70 % of lookups hit. [`ClassifierWorkload::new`] with
/// `wildcard_patterns: None` reproduces that; `Some(n)` gives each rule one of `n` random
/// patterns of wildcarded fields instead — n masks, a harder workload for tuple space
/// search.
pub struct ClassifierWorkload {
    /// (match, priority) of each distinct rule.
    pub rules: Vec<(Match, u16)>,
    /// Lookup keys.
    pub lookups: Vec<FlowKey>,
}

const CLS_FIELDS: [(Field, [u128; 2]); 13] = [
    (Field::TunId, [0, 0xfedc_ba98_7654_3210]),
    (Field::Metadata, [0, 0xfedc_ba98_7654_3210]),
    (Field::Ipv4Src, [0xc0a8_0001, 0xc0a0_4455]),
    (Field::Ipv4Dst, [0xc0a8_0002, 0xc0a0_4455]),
    (Field::InPort, [1, 0xffff_fffe]),
    (Field::VlanTci, [101, 0]),
    (Field::EthType, [0x0800, 0x0806]),
    (Field::TpSrc, [49362, 80]),
    (Field::TpDst, [6667, 22]),
    (Field::EthSrc, [0x0002_e30f_80a4, 0x5e33_7f5f_1e99]),
    (Field::EthDst, [0x4a27_71ae_64c1, 0xffff_ffff_ffff]),
    (Field::NwProto, [6, 1]),
    (Field::IpDscp, [48 >> 2, 0]),
];

impl ClassifierWorkload {
    /// Builds the workload (see the type's documentation for `wildcard_patterns`).
    pub fn new(
        n_rules: usize,
        n_priorities: u16,
        wildcard_patterns: Option<usize>,
        n_lookups: usize,
        seed: u64,
    ) -> Self {
        let mut rng = Rng::new(seed);
        let all = (1u32 << CLS_FIELDS.len()) - 1;
        let mut patterns: Vec<u32> = Vec::new();
        while patterns.len() < wildcard_patterns.unwrap_or(0).min(all as usize) {
            let p = rng.next_u64() as u32 & all;
            if !patterns.contains(&p) {
                patterns.push(p);
            }
        }
        let mut priorities: Vec<u16> = (0..n_priorities).map(|i| i.wrapping_mul(129)).collect();
        for i in (1..priorities.len()).rev() {
            priorities.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut seen = std::collections::HashSet::new();
        let mut rules = Vec::new();
        for _ in 0..n_rules {
            let priority = priorities[rng.below(priorities.len() as u64) as usize];
            let wildcards = if patterns.is_empty() { 0 } else { patterns[rng.below(patterns.len() as u64) as usize] };
            let values = rng.next_u64() as u32;
            let mut m = Match::ANY;
            for (i, (f, v)) in CLS_FIELDS.iter().enumerate() {
                if wildcards & (1 << i) == 0 {
                    m = m.with(*f, v[(values >> i) as usize & 1]);
                }
            }
            if seen.insert((m, priority)) {
                rules.push((m, priority));
            }
        }
        let pool: Vec<FlowKey> = (0..2 << CLS_FIELDS.len())
            .map(|_| {
                let values = rng.next_u64() as u32;
                let mut k = FlowKey::ZERO;
                for (i, (f, v)) in CLS_FIELDS.iter().enumerate() {
                    k.set(*f, v[(values >> i) as usize & 1]);
                }
                k
            })
            .collect();
        let lookups = (0..n_lookups).map(|_| pool[rng.below(pool.len() as u64) as usize]).collect();
        ClassifierWorkload { rules, lookups }
    }

    /// A classifier holding the workload's rules.
    pub fn classifier(&self) -> crate::classifier::Classifier<u32> {
        let mut c = crate::classifier::Classifier::new();
        for (i, (m, p)) in self.rules.iter().enumerate() {
            c.insert(m, *p, i as u32);
        }
        c
    }
}

/// Node address used for SNAT scenarios.
pub const NODE_IP: u32 = 0xc000_020b;
/// Service VIP of the load-balancing scenarios.
pub const VIP: u32 = 0x0a60_000a;

/// A TCP/IPv4 frame of 64 bytes with the given flags.
pub fn tcp64(src: u32, dst: u32, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut f = udp64(src, dst, sport, dport);
    // Turn the UDP frame into TCP: 20-byte header, same total length.
    f[23] = ip_proto::TCP;
    for b in &mut f[34..60] {
        *b = 0;
    }
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&dport.to_be_bytes());
    f[46] = 0x50;
    f[47] = flags;
    packet::fill_checksums(&mut f);
    f
}

/// A Service: `ct_lb` to `n_backends` backends on port 8080 in zone 1, forwarding on
/// ct_state (table 1), and `ct(nat)` for replies. Returns the datapath, 32 client→VIP
/// packet templates of 32 established connections (handshake done), and the time to
/// use next.
pub fn service_scenario(config: DatapathConfig, n_backends: u32) -> (Datapath, Vec<Packet>, u64) {
    use crate::conntrack::NatAction;
    use crate::flow::{CtSpec, CtZone};
    use crate::key::ct_state;
    use crate::lb::{Backend, LoadBalancer};
    let dp = Datapath::new(config);
    let backends = (0..n_backends).map(|i| Backend::v4(0x0af4_0200 + i, 8080)).collect();
    let trk_est = (ct_state::TRK | ct_state::EST) as u128;
    dp.apply(&[
        FlowMod::AddLoadBalancer(LoadBalancer { id: 1, backends, affinity_timeout_ns: None }),
        add(
            0,
            20,
            Match::ANY.with(Field::InPort, 1).with(Field::EthType, 0x0800).with(Field::Ipv4Dst, VIP as u128),
            vec![Action::CtLb { lb: 1, zone: CtZone::Const(1), table: Some(1) }],
        ),
        add(
            0,
            10,
            Match::ANY.with(Field::EthType, 0x0800),
            vec![Action::Ct(Box::new(CtSpec {
                zone: CtZone::Const(1),
                commit: false,
                nat: Some(NatAction::Stored),
                table: Some(1),
                set_mark: None,
                set_label: None,
            }))],
        ),
        add(
            1,
            10,
            Match::ANY.with(Field::InPort, 1).with_masked(Field::CtState, ct_state::TRK as u128, ct_state::TRK as u128),
            vec![Action::Output(2)],
        ),
        add(
            1,
            10,
            Match::ANY.with(Field::InPort, 2).with_masked(Field::CtState, trk_est, trk_est),
            vec![Action::Output(1)],
        ),
    ])
    .expect("valid flows");
    // Handshakes, so that the measured packets are established.
    let mut w = dp.worker();
    let mut sink = crate::exec::CollectSink::default();
    let mut now = 1;
    let clients: Vec<(u32, u16)> = (0..32).map(|i| (0x0af4_0100 + i, 40000 + i as u16)).collect();
    for (c, p) in &clients {
        let mut syn = [Packet::new(tcp64(*c, VIP, *p, 80, 0x02), 1)];
        sink.outputs.clear();
        dp.process_batch(&mut w, &mut syn, now, &mut sink);
        let (_, _, out) = sink.outputs.pop().expect("SYN forwarded");
        let mut k = FlowKey::ZERO;
        crate::parse::parse_frame(&out, &mut k);
        let backend = k.get(Field::Ipv4Dst) as u32;
        let mut synack = [Packet::new(tcp64(backend, *c, 8080, *p, 0x12), 2)];
        dp.process_batch(&mut w, &mut synack, now, &mut sink);
        let mut ack = [Packet::new(tcp64(*c, VIP, *p, 80, 0x10), 1)];
        dp.process_batch(&mut w, &mut ack, now, &mut sink);
        now += 1;
    }
    let batch = clients.iter().map(|(c, p)| Packet::new(tcp64(*c, VIP, *p, 80, 0x10), 1)).collect();
    (dp, batch, now)
}

/// Every packet a new connection: `ct(commit, nat(src=NODE_IP:1024-65535), table=1)`,
/// then out. Returns the datapath and a generator of SYNs with distinct 5-tuples.
pub fn snat_scenario(config: DatapathConfig) -> (Datapath, impl FnMut() -> Packet) {
    use crate::conntrack::{NatAction, NatRange};
    use crate::flow::{CtSpec, CtZone};
    let dp = Datapath::new(config);
    let range = NatRange {
        addr_min: crate::conntrack::v4(NODE_IP),
        addr_max: crate::conntrack::v4(NODE_IP),
        port_min: 1024,
        port_max: 65535,
    };
    dp.apply(&[
        add(
            0,
            10,
            Match::ANY.with(Field::EthType, 0x0800),
            vec![Action::Ct(Box::new(CtSpec {
                zone: CtZone::Const(2),
                commit: true,
                nat: Some(NatAction::Src(range)),
                table: Some(1),
                set_mark: None,
                set_label: None,
            }))],
        ),
        add(1, 10, Match::ANY, vec![Action::Output(3)]),
    ])
    .expect("valid flows");
    let mut n = 0u64;
    let next = move || {
        n += 1;
        // 4096 pods × many destinations: distinct 5-tuples.
        let src = 0x0af4_0000 | (n % 4096) as u32;
        let dst = 0x0808_0000 | ((n / 4096) % 65536) as u32;
        Packet::new(tcp64(src, dst, 33000 + (n % 7) as u16, 443, 0x02), 1)
    };
    (dp, next)
}

/// Two pods on one node switch, A (port 1, 10.244.0.10) and B (port 2, 10.244.0.11), in
/// the agent's table layout (`docs/agent-translation.md`: classification in 0, switch
/// ingress 8–17 and the rule table 23, output 32, switch egress 40–43, delivery 64).
///
/// Without `policies` this is the pipeline of a cluster with no NetworkPolicy: one
/// conntrack pass, in the receiving port's zone. With `policies` (≥ 10) the ACL stages are
/// programmed as the agent translates them: the sender's identity, conntrack in its zone
/// (which vouches for its replies), the destination's ingress rules and the source's
/// egress policies evaluated by `resubmit` into table 23 — which holds `policies` policies'
/// rule and selection flows — and the commit of allowed connections. B is isolated by five
/// policies, A's egress by one; the fifth of B's allows A.
pub fn acl_scenario(config: DatapathConfig, policies: Option<u32>) -> Datapath {
    let dp = Datapath::new(config);
    let mut t = String::new();
    let mut flow = |line: String| {
        t.push_str(&line);
        t.push('\n');
    };
    let dp_key = "metadata=0x10";
    let (a_mac, b_mac) = ("0a:58:0a:f4:00:0a", "0a:58:0a:f4:00:0b");
    let (a_ip, b_ip) = ("10.244.0.10", "10.244.0.11");
    // Identities: A is class 1 of namespace 1, B class 2 of namespace 1.
    let (id_a, id_b) = (0x0000_1001u32, 0x0000_1002u32);
    let acl = policies.is_some();
    for (port, key, mac) in [(1, 3, a_mac), (2, 4, b_mac)] {
        flow(format!(
            "table=0,priority=100,in_port={port},actions=set_field:0x10->metadata,set_field:{key:#x}->reg6,set_field:{:#x}->reg3,goto_table:8",
            key | 0x8000
        ));
        flow(format!("table=8,priority=50,{dp_key},reg6={key:#x},dl_src={mac},actions=goto_table:9"));
        let ip = if port == 1 { a_ip } else { b_ip };
        flow(format!("table=9,priority=90,{dp_key},reg6={key:#x},ip,nw_src={ip},actions=goto_table:10"));
        let id = if port == 1 { id_a } else { id_b };
        if acl {
            flow(format!("table=10,priority=100,{dp_key},reg6={key:#x},actions=set_field:{id:#x}->reg4,goto_table:11"));
        }
        flow(format!("table=17,priority=50,{dp_key},dl_dst={mac},actions=set_field:{key:#x}->reg7,goto_table:32"));
        flow(format!("table=32,priority=100,{dp_key},reg7={key:#x},actions=goto_table:40"));
        flow(format!("table=64,priority=100,{dp_key},reg7={key:#x},actions=output:{port}"));
    }
    for table in [9, 10, 11, 12, 13, 14, 15, 16, 41, 42] {
        flow(format!("table={table},priority=0,actions=goto_table:{}", table + 1));
    }
    flow("table=43,priority=50,actions=goto_table:64".into());
    // ls_out_lb: un-NAT of Service replies in the destination port's zone.
    flow(format!("table=40,priority=100,{dp_key},ip,actions=ct(zone=reg7,nat,table=41)"));
    if let Some(n) = policies {
        // ls_in_acl_ct, ls_in_acl, ls_in_acl_action.
        flow(format!("table=13,priority=100,{dp_key},ip,ct_state=-trk,actions=ct(zone=reg6,table=14)"));
        flow(format!(
            "table=14,priority=100,{dp_key},ip,ct_state=+est+rpl,ct_mark=0x1/0x3,actions=set_field:0x1000000/0x1000000->reg4,goto_table:15"
        ));
        flow(format!(
            "table=14,priority=90,{dp_key},ip,nw_dst=10.244.0.0/16,actions=set_field:0x40/0x40->reg0,goto_table:15"
        ));
        flow(format!("table=15,priority=111,{dp_key},reg4=0x1000000/0x1000000,actions=goto_table:16"));
        flow(format!("table=15,priority=110,{dp_key},reg0=0x40/0x40,actions=goto_table:16"));
        // ls_out_lb: vouched replies skip conntrack.
        flow(format!("table=40,priority=105,{dp_key},reg4=0x1000000/0x3000000,actions=goto_table:41"));
        // ls_out_pre_acl: what passes, then B's rules and the source's egress policies.
        flow(format!(
            "table=41,priority=110,{dp_key},reg4=0x1000000/0x1000000,actions=set_field:0x80/0x80->reg0,goto_table:42"
        ));
        flow(format!(
            "table=41,priority=109,{dp_key},ip,ct_state=+est+rpl,ct_mark=0x1/0x1,actions=set_field:0x80/0x80->reg0,goto_table:42"
        ));
        let rule = |p: u32, i: u32| (p << 8) | (1 + i);
        let egress_rule = |p: u32, i: u32| (p << 8) | (128 + i);
        let egsrc = 0xffff_ff00u32;
        let mut b_eval = String::new();
        for p in 1..=5u32 {
            b_eval.push_str(&format!("set_field:{:#x}->reg5,resubmit(,23),", rule(p, 0)));
        }
        b_eval.push_str(&format!("set_field:{egsrc:#x}->reg5,resubmit(,23),"));
        flow(format!(
            "table=41,priority=100,{dp_key},reg7=0x4,ip,actions=set_field:{id_b:#x}->reg8,set_field:0x4/0x4->reg0,{b_eval}goto_table:42"
        ));
        flow(format!(
            "table=41,priority=100,{dp_key},reg7=0x3,ip,actions=set_field:{id_a:#x}->reg8,set_field:{egsrc:#x}->reg5,resubmit(,23),goto_table:42"
        ));
        // ls_out_acl: B's denial, the commit of what is allowed.
        for (est, prio) in [("+est", 91), ("", 90)] {
            let commit = if est.is_empty() { "" } else { "ct(commit,zone=reg7,exec(set_field:0x4/0x5->ct_mark))," };
            let state = if est.is_empty() { String::new() } else { format!(",ct_state={est}") };
            flow(format!(
                "table=42,priority={prio},{dp_key},reg7=0x4,ip,reg0=0x4/0xc{state},actions={commit}log:7,drop"
            ));
        }
        flow(format!("table=42,priority=110,{dp_key},reg0=0x80/0x80,actions=goto_table:43"));
        flow(format!(
            "table=42,priority=70,{dp_key},ip,ct_state=-inv,ct_mark=0/0x1,actions=ct(commit,zone=reg7,exec(set_field:0x1/0x5->ct_mark)),goto_table:43"
        ));
        // Table 23: `n` policies' rules in 100 namespaces: each an ingress rule from a
        // class of its namespace on a port, and every tenth an egress selection and rule.
        for p in 1..=n {
            // The fifth allows A (class 1 of namespace 1) on 8080; the others other peers.
            let (ns, class, port) = if p == 5 { (1, 1, 8080) } else { (p % 100 + 1, p % 7 + 3, 8000 + p % 50) };
            flow(format!(
                "table=23,priority=100,{dp_key},reg5={:#x},reg4={:#x}/0xffffff,tcp,tp_dst={port},actions=set_field:0x8/0x8->reg0",
                rule(p, 0),
                (ns << 12) | class
            ));
            if p % 10 == 0 {
                // One egress policy per namespace, allowing its own namespace.
                let ns = (p / 10) % 100 + 1;
                flow(format!(
                    "table=23,priority=100,{dp_key},reg5={:#x},reg4={:#x}/0xfff000,actions=set_field:0x10/0x10->reg0,set_field:{:#x}->reg5,resubmit(,23)",
                    p << 8,
                    ns << 12,
                    egress_rule(p, 0)
                ));
                flow(format!(
                    "table=23,priority=100,{dp_key},reg5={:#x},reg8={:#x}/0xfff000,actions=set_field:0x20/0x20->reg0",
                    egress_rule(p, 0),
                    ns << 12
                ));
            }
        }
        // Namespace 1's egress policies (A's): selection through EGRESS_OF_SOURCE.
        for ns in 1..=100u32 {
            let sel: Vec<String> = (1..=n)
                .filter(|p| p % 10 == 0 && (p / 10) % 100 + 1 == ns)
                .map(|p| format!("set_field:{:#x}->reg5,resubmit(,23)", p << 8))
                .collect();
            if !sel.is_empty() {
                flow(format!(
                    "table=23,priority=100,{dp_key},reg5={egsrc:#x},reg4={:#x}/0xfff000,actions={}",
                    ns << 12,
                    sel.join(",")
                ));
                for (est, prio) in [("+est", 81), ("", 80)] {
                    let state = if est.is_empty() { String::new() } else { format!(",ct_state={est}") };
                    flow(format!(
                        "table=42,priority={prio},{dp_key},ip,reg4={:#x}/0xfff000,reg0=0x10/0x30{state},actions=log:9,drop",
                        ns << 12
                    ));
                }
            }
        }
    }
    let file = crate::flowtext::parse_flow_file(&t).unwrap_or_else(|e| panic!("the ACL scenario's flows: {e}"));
    dp.apply(&file.to_mods()).expect("valid flows");
    dp
}

/// A's packets to B (`flags`, from source port `sport`) and B's back.
pub fn acl_packets(sport: u16, flags: u8, reply: bool) -> Packet {
    let (a, b) = (0x0af4_000a, 0x0af4_000b);
    let mac = |ip: u32| 0x0a58_0000_0000u64 | u64::from(ip);
    let (src, dst, in_port, s, d) = if reply { (b, a, 2, 8080, sport) } else { (a, b, 1, sport, 8080) };
    let mut f = tcp64(src, dst, s, d, flags);
    f[0..6].copy_from_slice(&mac(dst).to_be_bytes()[2..]);
    f[6..12].copy_from_slice(&mac(src).to_be_bytes()[2..]);
    Packet::new(f, in_port)
}
