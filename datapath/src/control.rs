//! The switch's control interface: what `skein-dp reload`, `dump-flows`, `dump-cache`,
//! `dump-conntrack`, `stats` and `trace` ask a running switch, answered as text. The
//! transport (a Unix socket in `skein-dp`) only carries a request — a command line, then a
//! body — and the reply; everything here works on a [`Datapath`] and is tested without
//! sockets.

use std::fmt::Write as _;
use std::net::Ipv6Addr;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::datapath::Datapath;
use crate::exec::DpAction;
use crate::flow::{Flow, FlowMod, Match};
use crate::flowtext::{self, FlowFile};
use crate::io::SwitchStats;
use crate::key::{Field, ct_state};
use crate::pipeline::{MAX_RECIRC, TraceStep};

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The flow file or packet description did not parse.
    #[error("{0}")]
    Syntax(#[from] flowtext::FlowTextError),
    /// The file parsed but the pipeline refused one of its entries.
    #[error("{item}: refused: {reason}")]
    Refused {
        /// The refused entry, in the flow syntax.
        item: String,
        /// The pipeline's reason.
        reason: String,
    },
    /// Unknown command.
    #[error("unknown command {0:?} (known: reload, dump-flows, dump-cache, dump-conntrack, stats, trace)")]
    UnknownCommand(String),
}

/// What a reload changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Flows added or changed.
    pub flows_added: usize,
    /// Flows removed.
    pub flows_removed: usize,
    /// Flows left as they were (keeping their counters and cached decisions).
    pub flows_kept: usize,
    /// Cached decisions re-checked / removed as stale.
    pub megaflows_checked: usize,
    /// Cached decisions removed as stale.
    pub megaflows_invalidated: usize,
}

type SwitchStatsFn = Box<dyn Fn() -> SwitchStats + Send + Sync>;

/// The control side of a running switch.
pub struct Control {
    dp: Arc<Datapath>,
    installed: Mutex<FlowFile>,
    switch: SwitchStatsFn,
    now: fn() -> u64,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").finish_non_exhaustive()
    }
}

impl Control {
    /// Control of `dp`; `switch` reports the switch's and ports' counters, `now` is the
    /// datapath's clock.
    pub fn new(dp: Arc<Datapath>, switch: SwitchStatsFn, now: fn() -> u64) -> Control {
        Control { dp, installed: Mutex::new(FlowFile::default()), switch, now }
    }

    /// The datapath it controls.
    pub fn datapath(&self) -> &Arc<Datapath> {
        &self.dp
    }

    /// Replaces everything installed with the flow file `text`, in one atomic step:
    /// the file is parsed first (nothing changes if any line is bad), then installed as
    /// [`Control::install`] does.
    pub fn reload(&self, text: &str) -> Result<ReloadReport, ControlError> {
        let new = flowtext::parse_flow_file(text)?;
        self.install(&new)
    }

    /// Replaces everything installed with `file`, in one atomic step: what differs from
    /// the installed file is computed first and checked against an empty datapath
    /// (nothing changes if the pipeline refuses any entry — every check is on one entry,
    /// so checking the new and changed entries is checking the file); unchanged flows
    /// keep their counters and cached decisions; removed ones go; new and changed ones are
    /// installed; the caches are revalidated once. For callers that build the flows in
    /// memory (the node agent) rather than as text.
    pub fn install(&self, file: &FlowFile) -> Result<ReloadReport, ControlError> {
        let mut installed = self.installed.lock();
        let (mods, mut report) = diff(&installed, file);
        let additions: Vec<FlowMod> = mods
            .iter()
            .filter(|m| {
                matches!(
                    m,
                    FlowMod::AddFlow(_)
                        | FlowMod::AddGroup(_)
                        | FlowMod::AddLoadBalancer(_)
                        | FlowMod::AddTunnelPort(_)
                        | FlowMod::SetTunnelRemotes(_)
                        | FlowMod::SetZoneLimit(_)
                )
            })
            .cloned()
            .collect();
        let scratch = Datapath::new(*self.dp.config());
        if let Err((index, e, _)) = scratch.apply(&additions) {
            return Err(ControlError::Refused { item: describe(additions.get(index)), reason: e.to_string() });
        }
        let r = self.dp.apply(&mods).map_err(|(index, e, _)| ControlError::Refused {
            item: describe(mods.get(index)),
            reason: e.to_string(),
        })?;
        report.megaflows_checked = r.checked;
        report.megaflows_invalidated = r.invalidated;
        *installed = file.clone();
        Ok(report)
    }

    /// Changes some flows of what is installed, in one atomic step: adds (or replaces)
    /// the flows `add` and removes those with the (table, priority, match) of `remove`;
    /// groups, load balancers and tunnel ports stay. The new flows are checked against an
    /// empty datapath first (nothing changes if the pipeline refuses one); every other
    /// flow keeps its counters and cached decisions. What is installed afterwards is what
    /// [`Control::install`] of the resulting file would give — without translating or
    /// comparing the whole file, which is what makes binding one pod port cheap.
    pub fn update_flows(&self, add: &[Flow], remove: &[(u8, u16, Match)]) -> Result<ReloadReport, ControlError> {
        let additions: Vec<FlowMod> = add.iter().cloned().map(FlowMod::AddFlow).collect();
        let scratch = Datapath::new(*self.dp.config());
        if let Err((index, e, _)) = scratch.apply(&additions) {
            return Err(ControlError::Refused { item: describe(additions.get(index)), reason: e.to_string() });
        }
        let mut installed = self.installed.lock();
        let key = |f: &Flow| (f.table, f.priority, f.matches.normalized());
        let replaced: hashbrown::HashSet<_> = add.iter().map(key).collect();
        let removed: hashbrown::HashSet<_> =
            remove.iter().map(|(t, p, m)| (*t, *p, m.normalized())).filter(|k| !replaced.contains(k)).collect();
        // Only flows in the tables named are looked at.
        let mut touched = [false; 256];
        for t in add.iter().map(|f| f.table).chain(remove.iter().map(|r| r.0)) {
            touched[usize::from(t)] = true;
        }
        let mut report = ReloadReport::default();
        let mut mods = Vec::with_capacity(add.len() + remove.len());
        let keep: Vec<bool> = installed
            .flows
            .iter()
            .map(|f| {
                if !touched[usize::from(f.table)] {
                    return true;
                }
                let k = key(f);
                if removed.contains(&k) {
                    mods.push(FlowMod::DeleteFlowStrict { table: f.table, priority: f.priority, matches: f.matches });
                    report.flows_removed += 1;
                    false
                } else {
                    !replaced.contains(&k)
                }
            })
            .collect();
        mods.extend(additions);
        let r = self.dp.apply(&mods).map_err(|(index, e, _)| ControlError::Refused {
            item: describe(mods.get(index)),
            reason: e.to_string(),
        })?;
        let mut keep = keep.into_iter();
        installed.flows.retain(|_| keep.next().unwrap_or(true));
        report.flows_kept = installed.flows.len();
        report.flows_added = add.len();
        installed.flows.extend(add.iter().cloned());
        report.megaflows_checked = r.checked;
        report.megaflows_invalidated = r.invalidated;
        Ok(report)
    }

    /// A copy of what is installed: the last file [`Control::reload`] or
    /// [`Control::install`] accepted (empty before the first).
    pub fn installed(&self) -> FlowFile {
        self.installed.lock().clone()
    }

    /// Answers one request: `command [argument]` on the first line, a body after it
    /// (the flow file for `reload`).
    pub fn handle(&self, request: &str) -> Result<String, ControlError> {
        let (line, body) = request.split_once('\n').unwrap_or((request, ""));
        let (cmd, arg) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        match cmd {
            "reload" => {
                let r = self.reload(body)?;
                Ok(r.to_string())
            }
            "dump-flows" => Ok(self.dump_flows()),
            "dump-cache" => Ok(self.dump_cache()),
            "dump-conntrack" => Ok(self.dump_conntrack()),
            "stats" => Ok(self.stats()),
            "trace" => {
                let mut ct_next = Vec::new();
                for line in body.lines().map(str::trim).filter(|l| !l.is_empty()) {
                    ct_next.push(flowtext::parse_ct_state_flags(line)?);
                }
                self.trace(arg.trim(), &ct_next)
            }
            other => Err(ControlError::UnknownCommand(other.to_string())),
        }
    }

    /// Every flow with its counters (then groups, load balancers and tunnel ports), in
    /// the flow file syntax.
    pub fn dump_flows(&self) -> String {
        let mut stats = self.dp.flow_stats();
        stats.sort_by(|a, b| {
            (a.flow.table, std::cmp::Reverse(a.flow.priority)).cmp(&(b.flow.table, std::cmp::Reverse(b.flow.priority)))
        });
        let mut out = String::new();
        for s in &stats {
            let _ = writeln!(out, "n_packets={}, n_bytes={}, {}", s.packets, s.bytes, flowtext::format_flow(&s.flow));
        }
        let installed = self.installed.lock();
        for g in &installed.groups {
            let _ = writeln!(out, "{}", flowtext::format_group(g));
        }
        for lb in &installed.load_balancers {
            let _ = writeln!(out, "{}", flowtext::format_load_balancer(lb));
        }
        for t in &installed.tunnels {
            let _ = writeln!(out, "{}", flowtext::format_tunnel(t));
        }
        for r in &installed.tunnel_remotes {
            let _ = writeln!(out, "{}", flowtext::format_tunnel_remotes(r));
        }
        for z in &installed.zone_limits {
            let _ = writeln!(out, "{}", flowtext::format_zone_limit(z));
        }
        out
    }

    /// Every cached decision (megaflow): its masked match, counters and datapath actions.
    pub fn dump_cache(&self) -> String {
        let mut out = String::new();
        for (key, mask, actions, packets, bytes) in self.dp.dump_megaflows() {
            let m = Match { value: key, mask };
            let _ = writeln!(
                out,
                "{}, packets:{packets}, bytes:{bytes}, actions:{}",
                flowtext::format_match(&m),
                flowtext::format_dp_actions(&actions)
            );
        }
        out
    }

    /// Every tracked connection.
    pub fn dump_conntrack(&self) -> String {
        let now = (self.now)();
        let mut out = String::new();
        for c in self.dp.dump_conntrack(now) {
            let o = &c.orig;
            let r = &c.reply;
            let _ = writeln!(
                out,
                "{},orig=(src={},dst={},sport={},dport={}),reply=(src={},dst={},sport={},dport={}),zone={},mark={:#x},state={},expires_in={}s",
                proto_name(o.proto),
                addr(&o.src),
                addr(&o.dst),
                o.sport,
                o.dport,
                addr(&r.src),
                addr(&r.dst),
                r.sport,
                r.dport,
                o.zone,
                c.mark,
                c.state_name(),
                c.expires().saturating_sub(now) / 1_000_000_000
            );
        }
        out
    }

    /// Counters as `name=value` lines: the datapath's, the switch's, then each port's.
    pub fn stats(&self) -> String {
        let s = self.dp.stats();
        let mut out = String::new();
        let lookups = s.microflow_hits + s.megaflow_hits + s.upcalls;
        let ratio = |n: u64| if lookups == 0 { 0.0 } else { n as f64 / lookups as f64 };
        let _ = writeln!(out, "packets={}", s.packets);
        let _ = writeln!(out, "microflow_hits={}", s.microflow_hits);
        let _ = writeln!(out, "megaflow_hits={}", s.megaflow_hits);
        let _ = writeln!(out, "upcalls={}", s.upcalls);
        let _ = writeln!(out, "microflow_hit_ratio={:.4}", ratio(s.microflow_hits));
        let _ = writeln!(out, "megaflow_hit_ratio={:.4}", ratio(s.megaflow_hits));
        let _ = writeln!(out, "avg_subtables_per_hit={:.2}", s.avg_subtables_per_hit);
        let _ = writeln!(out, "megaflows={}", s.megaflows);
        let _ = writeln!(out, "megaflow_masks={}", s.megaflow_masks);
        let _ = writeln!(out, "flows={}", s.flows);
        let _ = writeln!(out, "connections={}", s.connections);
        let _ = writeln!(out, "ct_early_drops={}", s.conntrack.early_drops);
        let _ = writeln!(out, "recirculations={}", s.recirculations);
        let _ = writeln!(out, "evictions={}", s.evictions);
        let _ = writeln!(out, "invalidations={}", s.invalidations);
        let _ = writeln!(out, "revalidated={}", s.revalidated);
        for (reason, n) in &s.drops {
            let _ = writeln!(out, "drops_{}={n}", reason.name());
        }
        let sw = (self.switch)();
        let _ = writeln!(out, "output_unknown_port_drops={}", sw.unknown_port_drops);
        let _ = writeln!(out, "slow_batches_1ms={} slow_batches_10ms={}", sw.slow_batches[0], sw.slow_batches[1]);
        for p in sw.ports {
            let _ = writeln!(
                out,
                "port_{n}_rx={} port_{n}_rx_gso={} port_{n}_rx_dropped={} port_{n}_rx_ring_full={} port_{n}_tx={} port_{n}_tx_dropped={} port_{n}_name={}",
                p.rx,
                p.rx_gso,
                p.rx_dropped,
                p.rx_ring_full,
                p.tx,
                p.tx_dropped,
                p.name.replace(' ', "_"),
                n = p.number
            );
        }
        out
    }

    /// The walk of a packet (described in the flow syntax) through the tables: every
    /// lookup, the flow it hit, each action, and the datapath actions that result. When
    /// a pass ends in `ct(table=T)` / `ct_lb(table=T)` the walk continues at `T`, as the
    /// packet would after conntrack, with the `ct_state` given by `ct_next` for that
    /// recirculation (`trk,new` when not given) — conntrack itself is not consulted, so
    /// a NAT it would apply is not shown in the header fields.
    pub fn trace(&self, packet: &str, ct_next: &[u8]) -> Result<String, ControlError> {
        let mut key = flowtext::parse_packet(packet)?;
        let mut out = String::new();
        let _ = writeln!(out, "Packet: {packet}");
        for pass in 0..MAX_RECIRC {
            if pass > 0 {
                let _ = writeln!(
                    out,
                    "\nRecirculation {pass}: recirc_id={:#x},ct_zone={},ct_state={} (conntrack not consulted: no NAT applied)",
                    key.get(Field::RecircId),
                    key.get(Field::CtZone),
                    flowtext::format_ct_state(key.get(Field::CtState) as u8)
                );
            }
            let (t, steps) = self.dp.trace(&key);
            for step in &steps {
                match step {
                    TraceStep::Lookup { depth, table, flow } => {
                        let pad = "    ".repeat(*depth as usize);
                        match flow {
                            Some(f) => {
                                let _ = writeln!(out, "{pad}{table}. {}", flow_summary(f));
                            }
                            None => {
                                let _ = writeln!(out, "{pad}{table}. No match: drop");
                            }
                        }
                    }
                    TraceStep::Action { depth, action } => {
                        let pad = "    ".repeat(*depth as usize);
                        let _ = writeln!(out, "{pad}    {}", flowtext::format_actions(std::slice::from_ref(action)));
                    }
                    TraceStep::Stop(reason) => {
                        let _ = writeln!(out, "Stopped: {}", reason.name());
                    }
                }
            }
            let _ = writeln!(out, "\nDatapath actions: {}", flowtext::format_dp_actions(&t.actions));
            if let Some(d) = t.drop {
                let _ = writeln!(out, "Result: drop ({})", d.name());
            }
            let wc = Match { value: key.and(&t.wc), mask: t.wc };
            let _ = writeln!(out, "Megaflow: {}", flowtext::format_match(&wc));
            // Continue where conntrack would send the packet back.
            let mut next = key;
            let mut recirc = None;
            for a in &t.actions {
                match a {
                    DpAction::Set(f, v) => next.set(*f, *v),
                    DpAction::Ct { zone, recirc: r, .. } | DpAction::CtLb { zone, recirc: r, .. } if *r != 0 => {
                        recirc = Some((*r, *zone));
                    }
                    _ => {}
                }
            }
            let Some((id, zone)) = recirc else { break };
            let state = ct_next.get(pass as usize).copied().unwrap_or(ct_state::TRK | ct_state::NEW);
            next.set(Field::RecircId, id as u128);
            next.set(Field::CtZone, zone as u128);
            next.set(Field::CtState, (state | ct_state::TRK) as u128);
            key = next;
        }
        Ok(out)
    }
}

/// A modification in the flow syntax, for error messages.
fn describe(m: Option<&FlowMod>) -> String {
    match m {
        Some(FlowMod::AddFlow(f)) => format!("flow {}", flowtext::format_flow(f)),
        Some(FlowMod::AddGroup(g)) => flowtext::format_group(g),
        Some(FlowMod::AddLoadBalancer(l)) => flowtext::format_load_balancer(l),
        Some(FlowMod::AddTunnelPort(t)) => flowtext::format_tunnel(t),
        Some(FlowMod::SetTunnelRemotes(r)) => flowtext::format_tunnel_remotes(r),
        Some(FlowMod::SetZoneLimit(z)) => flowtext::format_zone_limit(z),
        Some(other) => format!("{other:?}"),
        None => "an entry".to_string(),
    }
}

fn flow_summary(f: &Flow) -> String {
    let m = flowtext::format_match(&f.matches);
    format!("priority={}{}{}, cookie={:#x}", f.priority, if m.is_empty() { "" } else { "," }, m, f.cookie)
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmp6".into(),
        132 => "sctp".into(),
        n => format!("proto{n}"),
    }
}

fn addr(a: &[u8; 16]) -> String {
    let v6 = Ipv6Addr::from(*a);
    match v6.to_ipv4_mapped() {
        Some(v4) => v4.to_string(),
        None => v6.to_string(),
    }
}

/// The modifications that turn `old` into `new`, touching only what changed, plus the
/// flow counts of the change.
fn diff(old: &FlowFile, new: &FlowFile) -> (Vec<FlowMod>, ReloadReport) {
    use hashbrown::HashMap;
    let mut mods = Vec::new();
    let mut report = ReloadReport::default();
    // Tunnels, load balancers and groups first (flows may name them), then flows.
    let new_tunnels: HashMap<u32, _> = new.tunnels.iter().map(|t| (t.port, t)).collect();
    for t in &old.tunnels {
        if !new_tunnels.contains_key(&t.port) {
            mods.push(FlowMod::DeleteTunnelPort(t.port));
        }
    }
    for t in &new.tunnels {
        if !old.tunnels.contains(t) {
            mods.push(FlowMod::AddTunnelPort(*t));
        }
    }
    let new_remotes: HashMap<u32, _> = new.tunnel_remotes.iter().map(|r| (r.port, r)).collect();
    for r in &old.tunnel_remotes {
        if !new_remotes.contains_key(&r.port) {
            mods.push(FlowMod::DeleteTunnelRemotes(r.port));
        }
    }
    let old_remotes: HashMap<u32, _> = old.tunnel_remotes.iter().map(|r| (r.port, r)).collect();
    for r in &new.tunnel_remotes {
        if old_remotes.get(&r.port) != Some(&r) {
            mods.push(FlowMod::SetTunnelRemotes(r.clone()));
        }
    }
    let new_limits: HashMap<_, _> = new.zone_limits.iter().map(|z| (z.scope, z)).collect();
    for z in &old.zone_limits {
        if !new_limits.contains_key(&z.scope) {
            mods.push(FlowMod::DeleteZoneLimit(z.scope));
        }
    }
    for z in &new.zone_limits {
        if !old.zone_limits.contains(z) {
            mods.push(FlowMod::SetZoneLimit(*z));
        }
    }
    let new_lbs: HashMap<u32, _> = new.load_balancers.iter().map(|l| (l.id, l)).collect();
    for l in &old.load_balancers {
        if !new_lbs.contains_key(&l.id) {
            mods.push(FlowMod::DeleteLoadBalancer(l.id));
        }
    }
    for l in &new.load_balancers {
        if !old.load_balancers.contains(l) {
            mods.push(FlowMod::AddLoadBalancer(l.clone()));
        }
    }
    let new_groups: HashMap<u32, _> = new.groups.iter().map(|g| (g.id, g)).collect();
    for g in &new.groups {
        if !old.groups.contains(g) {
            mods.push(FlowMod::AddGroup(g.clone()));
        }
    }
    let key = |f: &Flow| (f.table, f.priority, f.matches);
    let old_flows: HashMap<_, &Flow> = old.flows.iter().map(|f| (key(f), f)).collect();
    let new_flows: HashMap<_, &Flow> = new.flows.iter().map(|f| (key(f), f)).collect();
    for f in &new.flows {
        match old_flows.get(&key(f)) {
            Some(o) if *o == f => report.flows_kept += 1,
            _ => {
                mods.push(FlowMod::AddFlow(f.clone()));
                report.flows_added += 1;
            }
        }
    }
    for f in &old.flows {
        if !new_flows.contains_key(&key(f)) {
            mods.push(FlowMod::DeleteFlowStrict { table: f.table, priority: f.priority, matches: f.matches });
            report.flows_removed += 1;
        }
    }
    // Groups go after the flows that used them.
    for g in &old.groups {
        if !new_groups.contains_key(&g.id) {
            mods.push(FlowMod::DeleteGroup(g.id));
        }
    }
    (mods, report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::CollectSink;
    use crate::parse::tests::ipv4_frame;
    use crate::{DatapathConfig, key::ip_proto};

    fn control() -> Control {
        Control::new(Arc::new(Datapath::new(DatapathConfig::default())), Box::new(SwitchStats::default), || 1)
    }

    fn forward(c: &Control, dst: u32) -> Vec<u32> {
        let mut w = c.dp.worker();
        let mut sink = CollectSink::default();
        let mut pkts = vec![crate::datapath::Packet::new(ipv4_frame(ip_proto::UDP, 0x0a00_0001, dst, 1, 2, b"x"), 1)];
        c.dp.process_batch(&mut w, &mut pkts, 1, &mut sink);
        sink.outputs.iter().map(|o| o.1).collect()
    }

    const FLOWS: &str = "\
table=0,priority=100,ip,nw_dst=10.0.0.2,actions=output:2
table=0,priority=100,ip,nw_dst=10.0.0.3,actions=output:3
table=0,priority=0,actions=drop
";

    #[test]
    fn reload_replaces_what_changed_and_keeps_the_rest() {
        let c = control();
        let r = c.reload(FLOWS).unwrap();
        assert_eq!((r.flows_added, r.flows_removed, r.flows_kept), (3, 0, 0));
        assert_eq!(forward(&c, 0x0a00_0002), vec![2]);
        assert_eq!(forward(&c, 0x0a00_0003), vec![3]);
        let changed = FLOWS
            .replace("output:3", "output:4")
            .replace("table=0,priority=100,ip,nw_dst=10.0.0.2,actions=output:2\n", "");
        let r = c.reload(&changed).unwrap();
        assert_eq!((r.flows_added, r.flows_removed, r.flows_kept), (1, 1, 1));
        assert_eq!(forward(&c, 0x0a00_0003), vec![4], "the changed flow is live, no stale cache entry");
        assert_eq!(forward(&c, 0x0a00_0002), Vec::<u32>::new(), "the removed flow is gone");
        assert!(c.dump_flows().contains("nw_dst=10.0.0.3"));
        assert!(!c.dump_flows().contains("nw_dst=10.0.0.2"));
    }

    #[test]
    fn a_bad_file_changes_nothing_and_names_the_line() {
        let c = control();
        c.reload(FLOWS).unwrap();
        let bad = format!("{FLOWS}table=0,priority=5,ip,nw_dst=10.0.0.999,actions=output:1\n");
        let e = c.reload(&bad).unwrap_err().to_string();
        assert!(e.contains("line 4"), "{e}");
        assert!(e.contains("nw_dst"), "{e}");
        // Refused by the pipeline (goto a lower table): nothing applied either.
        let refused =
            "table=1,priority=5,actions=goto_table:0\ntable=0,priority=100,ip,nw_dst=10.0.0.2,actions=output:9\n";
        let e = c.reload(refused).unwrap_err().to_string();
        assert!(e.starts_with("flow table=1,priority=5,actions=goto_table:0: refused: "), "{e}");
        assert_eq!(forward(&c, 0x0a00_0002), vec![2]);
    }

    #[test]
    fn install_takes_a_parsed_file_and_installed_returns_it() {
        let c = control();
        assert_eq!(c.installed(), FlowFile::default(), "nothing is installed at first");
        let file = flowtext::parse_flow_file(FLOWS).unwrap();
        let r = c.install(&file).unwrap();
        assert_eq!((r.flows_added, r.flows_removed, r.flows_kept), (3, 0, 0));
        assert_eq!(c.installed(), file);
        assert_eq!(forward(&c, 0x0a00_0002), vec![2]);
        // The same file again changes nothing; reload of its text agrees with install.
        let r = c.install(&file).unwrap();
        assert_eq!((r.flows_added, r.flows_removed, r.flows_kept), (0, 0, 3));
        let r = c.reload(FLOWS).unwrap();
        assert_eq!((r.flows_added, r.flows_removed, r.flows_kept), (0, 0, 3));
        // A file the pipeline refuses is not installed, and what was installed stays.
        let refused = flowtext::parse_flow_file("table=1,priority=5,actions=goto_table:0\n").unwrap();
        let e = c.install(&refused).unwrap_err().to_string();
        assert!(e.contains("refused"), "{e}");
        assert_eq!(c.installed(), file);
        assert_eq!(forward(&c, 0x0a00_0003), vec![3]);
    }

    #[test]
    fn update_flows_changes_only_the_flows_named_and_refuses_atomically() {
        let c = control();
        c.reload(FLOWS).unwrap();
        let parsed = |text: &str| flowtext::parse_flow_file(text).unwrap().flows;
        let add = parsed("table=0,priority=100,ip,nw_dst=10.0.0.4,actions=output:4\n");
        let gone = parsed("table=0,priority=100,ip,nw_dst=10.0.0.2,actions=output:2\n");
        let remove: Vec<(u8, u16, Match)> = gone.iter().map(|f| (f.table, f.priority, f.matches)).collect();
        let r = c.update_flows(&add, &remove).unwrap();
        assert_eq!((r.flows_added, r.flows_removed, r.flows_kept), (1, 1, 2));
        assert_eq!(forward(&c, 0x0a00_0004), vec![4], "the added flow is live");
        assert_eq!(forward(&c, 0x0a00_0002), Vec::<u32>::new(), "the removed flow is gone, no stale cache entry");
        assert_eq!(forward(&c, 0x0a00_0003), vec![3], "the others stay");
        // What is installed is what installing the resulting file would give.
        let mut expected = flowtext::parse_flow_file(
            &FLOWS.replace("nw_dst=10.0.0.2,actions=output:2", "nw_dst=10.0.0.4,actions=output:4"),
        )
        .unwrap();
        let mut installed = c.installed();
        expected.flows.sort_by_key(flowtext::format_flow);
        installed.flows.sort_by_key(flowtext::format_flow);
        assert_eq!(installed, expected);
        // A replaced flow (same table, priority and match) is replaced, not doubled.
        let changed = parsed("table=0,priority=100,ip,nw_dst=10.0.0.4,actions=output:5\n");
        let r = c.update_flows(&changed, &[]).unwrap();
        assert_eq!((r.flows_added, r.flows_removed, r.flows_kept), (1, 0, 2));
        assert_eq!(forward(&c, 0x0a00_0004), vec![5]);
        assert_eq!(c.installed().flows.len(), 3);
        // A refused flow changes nothing, removals included.
        let refused = parsed("table=1,priority=5,actions=goto_table:0\n");
        let e = c.update_flows(&refused, &remove_of(&c, 0x0a00_0003)).unwrap_err().to_string();
        assert!(e.contains("refused"), "{e}");
        assert_eq!(forward(&c, 0x0a00_0003), vec![3]);
        assert_eq!(c.installed().flows.len(), 3);
    }

    /// The key of the installed flow that matches `nw_dst=dst`.
    fn remove_of(c: &Control, dst: u32) -> Vec<(u8, u16, Match)> {
        let text = format!("nw_dst={}", std::net::Ipv4Addr::from(dst));
        c.installed()
            .flows
            .iter()
            .filter(|f| flowtext::format_flow(f).contains(&format!("{text},")))
            .map(|f| (f.table, f.priority, f.matches))
            .collect()
    }

    #[test]
    fn trace_follows_conntrack_recirculation() {
        let c = control();
        c.reload(
            "table=0,priority=100,ip,nw_dst=10.96.0.10,actions=ct(zone=3,table=1)\n\
             table=1,priority=100,ip,ct_state=+trk+new,actions=ct(commit,zone=3),output:2\n\
             table=1,priority=100,ip,ct_state=+trk+est,actions=output:3\n",
        )
        .unwrap();
        let p = "in_port=1,tcp,nw_src=10.0.0.1,nw_dst=10.96.0.10,tp_src=5,tp_dst=80";
        let new = c.handle(&format!("trace {p}")).unwrap();
        assert!(new.contains("Recirculation 1: "), "{new}");
        assert!(new.contains("ct_zone=3,ct_state=new|trk"), "{new}");
        assert!(
            new.trim_end().lines().rev().any(|l| l.starts_with("Datapath actions:") && l.contains("output:2")),
            "{new}"
        );
        let est = c.handle(&format!("trace {p}\ntrk,est")).unwrap();
        assert!(est.contains("ct_state=est|trk"), "{est}");
        let last = est.lines().rev().find(|l| l.starts_with("Datapath actions:")).unwrap();
        assert!(last.contains("output:3"), "{est}");
    }

    /// A tunnelled UDP frame from `src`, as the Geneve port hands it over.
    fn tunnelled(c: &Control, src: u32) -> (Vec<u32>, Vec<(crate::DropReason, u64)>) {
        let mut w = c.dp.worker();
        let mut sink = CollectSink::default();
        let meta = crate::geneve::TunnelMeta { vni: 1, src, dst: 0xc000_020b, ingress: 1, egress: 2, identity: 0 };
        let frame = ipv4_frame(ip_proto::UDP, 0x0a00_0001, 0x0a00_0002, 1, 2, b"x");
        let mut pkts = vec![crate::datapath::Packet { tunnel: Some(meta), ..crate::datapath::Packet::new(frame, 3) }];
        c.dp.process_batch(&mut w, &mut pkts, 1, &mut sink);
        (sink.outputs.iter().map(|o| o.1).collect(), c.dp.stats().drops)
    }

    #[test]
    fn tunnel_remotes_and_zone_limits_install_change_and_go() {
        let c = control();
        let base = "tunnel=3,local_ip=192.0.2.11,underlay_port=3\nin_port=3,actions=output:2\n";
        c.reload(base).unwrap();
        assert_eq!(tunnelled(&c, 0xc000_020c).0, [2], "no remotes: every source");
        let with = format!("{base}tunnel_remotes=3,remotes=192.0.2.12\nct_zone_limit=default,limit=5\n");
        c.reload(&with).unwrap();
        assert_eq!(tunnelled(&c, 0xc000_020c).0, [2], "a remote");
        let (out, drops) = tunnelled(&c, 0xcb00_7109);
        assert!(out.is_empty(), "203.0.113.9 is no remote");
        assert_eq!(drops, [(crate::DropReason::TunnelUnknownSource, 1)]);
        assert_eq!(c.dp.zone_limit(7), Some(5));
        let dump = c.dump_flows();
        assert!(dump.contains("tunnel_remotes=3,remotes=192.0.2.12\n"), "{dump}");
        assert!(dump.contains("ct_zone_limit=default,limit=5\n"), "{dump}");
        let stats = c.stats();
        assert!(stats.lines().any(|l| l == "drops_tunnel_unknown_source=1"), "{stats}");
        assert!(stats.lines().any(|l| l == "ct_early_drops=0"), "{stats}");
        // Another remote set, another limit; then both gone.
        c.reload(&format!("{base}tunnel_remotes=3,remotes=203.0.113.9\nct_zone_limit=7,limit=2\n")).unwrap();
        assert_eq!(tunnelled(&c, 0xcb00_7109).0, [2]);
        assert!(tunnelled(&c, 0xc000_020c).0.is_empty());
        assert_eq!((c.dp.zone_limit(7), c.dp.zone_limit(8)), (Some(2), None));
        c.reload(base).unwrap();
        assert_eq!(tunnelled(&c, 0xc000_020c).0, [2]);
        assert_eq!(c.dp.zone_limit(7), None);
        // No remote at all: nothing enters through the tunnel.
        c.reload(&format!("{base}tunnel_remotes=3,remotes=\n")).unwrap();
        assert!(tunnelled(&c, 0xc000_020c).0.is_empty());
    }

    #[test]
    fn requests_are_dispatched_and_unknown_ones_named() {
        let c = control();
        let out = c.handle(&format!("reload\n{FLOWS}")).unwrap();
        assert!(out.starts_with("flows_added=3 "), "{out}");
        forward(&c, 0x0a00_0002);
        let flows = c.handle("dump-flows").unwrap();
        assert!(flows.lines().any(|l| l.starts_with("n_packets=1, ") && l.contains("nw_dst=10.0.0.2")), "{flows}");
        let cache = c.handle("dump-cache").unwrap();
        assert_eq!(cache.lines().count(), 1, "{cache}");
        assert!(cache.contains("packets:1"), "{cache}");
        let stats = c.handle("stats").unwrap();
        assert!(stats.lines().any(|l| l == "packets=1"), "{stats}");
        assert!(stats.lines().any(|l| l == "upcalls=1"), "{stats}");
        let trace = c.handle("trace in_port=1,udp,nw_src=10.0.0.1,nw_dst=10.0.0.3,tp_src=1,tp_dst=2").unwrap();
        assert!(trace.contains("0. priority=100"), "{trace}");
        assert!(trace.contains("Datapath actions: output:3"), "{trace}");
        assert!(matches!(c.handle("frobnicate"), Err(ControlError::UnknownCommand(_))));
        assert!(c.handle("trace in_port=1,ip\ntrk,bogus").unwrap_err().to_string().contains("bogus"));
        assert!(c.handle("trace nw_dst=1.2.3.4/8").is_err());
    }
}
