//! What NetworkPolicy did on this node, read back from the installed view: which
//! datapath flows are which policy's rules and denials. The per-policy counters of
//! `/metrics`, the policy lines of `skein-agent trace` and the audit log of denied
//! connections are built on it. Everything is derived from the view the agent installed
//! (cookies name the owning object, `reg5` the rule), so nothing is kept on the side.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use skein_datapath::Flow;
use skein_datapath::audit::AuditRecord;
use skein_datapath::datapath::FlowStats;
use skein_netmodel::cluster::{ObjectKey, PolicyType};
use skein_netmodel::policy::decode_rule_id;
use skein_netmodel::southbound::{Action, ChassisView, Owner, Stage};

use crate::translate::{datapath_table, deny_log_id, owner_cookie, regs};

/// A denial: its direction and the policies that isolate the port or source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// Ingress (the destination is isolated) or egress (the source is).
    pub direction: PolicyType,
    /// The isolating policies.
    pub policies: Vec<ObjectKey>,
}

/// Packets a policy's rules allowed and packets dropped while it isolated the endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyCounts {
    /// Packets its rules allowed (every packet of an allowed connection in the original
    /// direction is judged again, so this counts packets, not connections).
    pub allowed: u64,
    /// Packets dropped because no rule of the policies isolating the endpoint allowed them
    /// (counted against each of those policies).
    pub denied: u64,
}

/// The policy side of an installed view.
#[derive(Clone, Debug, Default)]
pub struct PolicyView {
    /// Rule flows' cookie → their policy.
    policies: HashMap<u64, ObjectKey>,
    /// Denial flows by (datapath table, priority, cookie).
    denials: HashMap<(u8, u16, u64), Denial>,
    /// Audit log ids → denial.
    log_ids: HashMap<u32, Denial>,
}

fn direction_name(d: PolicyType) -> &'static str {
    match d {
        PolicyType::Ingress => "ingress",
        PolicyType::Egress => "egress",
    }
}

impl PolicyView {
    /// The policy side of `view`.
    pub fn new(view: &ChassisView) -> PolicyView {
        let mut out = PolicyView::default();
        for f in &view.items.flows {
            if let Owner::Policy(p) = &f.owner {
                out.policies.insert(owner_cookie(&f.owner), p.clone());
            }
            for a in &f.actions {
                if let Action::Deny { direction, policies } = a {
                    let d = Denial { direction: *direction, policies: policies.clone() };
                    out.log_ids.insert(deny_log_id(*direction, policies), d.clone());
                    out.denials.insert((datapath_table(f.stage), f.priority, owner_cookie(&f.owner)), d);
                }
            }
        }
        out
    }

    /// True if the view programs no NetworkPolicy.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty() && self.denials.is_empty()
    }

    /// The policy, direction and rule index of a rule flow.
    pub fn rule_of(&self, flow: &Flow) -> Option<(&ObjectKey, PolicyType, usize)> {
        if flow.table != datapath_table(Stage::AclEval) {
            return None;
        }
        let policy = self.policies.get(&flow.cookie)?;
        if flow.matches.mask.get(regs::ACL_ID) == 0 {
            return None;
        }
        let id = flow.matches.value.get(regs::ACL_ID) as u32;
        let (_, direction, index) = decode_rule_id(id)?;
        Some((policy, direction, index))
    }

    /// The denial a flow carries out, if it is one.
    pub fn denial_of(&self, flow: &Flow) -> Option<&Denial> {
        self.denials.get(&(flow.table, flow.priority, flow.cookie))
    }

    /// The denial an audit record was logged for.
    pub fn denial_logged(&self, record: &AuditRecord) -> Option<&Denial> {
        self.log_ids.get(&record.id)
    }

    /// Per policy and direction, from the datapath's flow counters.
    pub fn counts(&self, stats: &[FlowStats]) -> BTreeMap<(ObjectKey, PolicyType), PolicyCounts> {
        let mut out: BTreeMap<(ObjectKey, PolicyType), PolicyCounts> = BTreeMap::new();
        for s in stats {
            if let Some((policy, direction, _)) = self.rule_of(&s.flow) {
                out.entry((policy.clone(), direction)).or_default().allowed += s.packets;
            } else if let Some(d) = self.denial_of(&s.flow) {
                for p in &d.policies {
                    out.entry((p.clone(), d.direction)).or_default().denied += s.packets;
                }
            }
        }
        out
    }

    /// A `skein-dp trace` text with a line under every flow that is a policy's rule or
    /// a denial, naming the policy and rule, and a closing verdict.
    pub fn annotate_trace(&self, trace: &str) -> String {
        let mut out = String::new();
        let mut allowed: Vec<String> = Vec::new();
        let mut denied: Option<String> = None;
        for line in trace.lines() {
            out.push_str(line);
            out.push('\n');
            let Some(l) = TraceLine::parse(line) else { continue };
            let pad: String = line.chars().take_while(|c| c.is_whitespace()).collect();
            let rule = (l.table == datapath_table(Stage::AclEval))
                .then(|| self.policies.get(&l.cookie))
                .flatten()
                .zip(l.acl_id.and_then(decode_rule_id));
            if let Some((policy, (_, direction, index))) = rule {
                let text = format!("networkpolicy {policy}: spec.{}[{index}] allows", direction_name(direction));
                let _ = writeln!(out, "{pad}    -> {text}");
                allowed.push(text);
            } else if let Some(d) = self.denials.get(&(l.table, l.priority, l.cookie)) {
                let names: Vec<String> = d.policies.iter().map(ToString::to_string).collect();
                let text = format!(
                    "networkpolicy: {} denied: isolated by {}, and none of their rules allows it",
                    direction_name(d.direction),
                    names.join(", ")
                );
                let _ = writeln!(out, "{pad}    -> {text}");
                denied = Some(text);
            }
        }
        match (denied, allowed.is_empty()) {
            (Some(d), _) => {
                let _ = writeln!(out, "\nNetworkPolicy: {d}");
            }
            (None, false) => {
                let _ = writeln!(out, "\nNetworkPolicy: {}", allowed.join("; "));
            }
            (None, true) => {}
        }
        out
    }
}

/// A trace line `  N. priority=P,MATCH, cookie=0x..`: the flow it names.
#[derive(Debug, PartialEq, Eq)]
struct TraceLine {
    table: u8,
    priority: u16,
    cookie: u64,
    /// The `reg5` (ACL id) the flow matches, if any.
    acl_id: Option<u32>,
}

impl TraceLine {
    fn parse(line: &str) -> Option<TraceLine> {
        let t = line.trim_start();
        let (table, rest) = t.split_once(". priority=")?;
        let table: u8 = table.parse().ok()?;
        let priority: u16 = rest.split([',', ' ']).next()?.parse().ok()?;
        let (matches, cookie) = rest.rsplit_once(", cookie=0x")?;
        let cookie = u64::from_str_radix(cookie.trim(), 16).ok()?;
        let acl_id = matches.split(',').find_map(|term| {
            let v = term.strip_prefix(&format!("{}=", regs::ACL_ID.name()))?;
            let v = v.split('/').next()?;
            u32::from_str_radix(v.trim_start_matches("0x"), 16).ok()
        });
        Some(TraceLine { table, priority, cookie, acl_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_lines_parse() {
        assert_eq!(
            TraceLine::parse("        23. priority=100,metadata=0x10,reg5=0x1201, cookie=0xabc"),
            Some(TraceLine { table: 23, priority: 100, cookie: 0xabc, acl_id: Some(0x1201) })
        );
        assert_eq!(
            TraceLine::parse("42. priority=91,ip,reg7=0x3, cookie=0x7"),
            Some(TraceLine { table: 42, priority: 91, cookie: 7, acl_id: None })
        );
        assert_eq!(TraceLine::parse("    set_field:0x1->reg5"), None);
        assert_eq!(TraceLine::parse("Stopped: explicit"), None);
    }
}
