//! The text form of flows, groups, load balancers and tunnel ports — the
//! `ovs-ofctl add-flows` dialect that `skein-dp` reads from files — and of packets and
//! cached datapath actions, for `trace` and `dump-cache`.
//!
//! Parsers take untrusted text: they never panic, and every error names the line, the key
//! or action and the offending value. Every `format_*` function writes text that the
//! matching parser reads back to the same value. The operator's reference, with an
//! example file, is `docs/flow-syntax.md`.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::net::{Ipv4Addr, Ipv6Addr};

use thiserror::Error;

use crate::conntrack::ZoneLimitScope;
use crate::conntrack::{self, NatAction, NatRange};
use crate::exec::DpAction;
use crate::flow::{
    Action, Bucket, CtSpec, CtZone, Flow, FlowMod, Group, GroupKind, Match, Responder, Subfield, TunnelPort,
    TunnelRemotes, ZoneLimit,
};
use crate::key::{Field, FlowKey, ct_state, eth_type, ip_proto};
use crate::lb::{Backend, LoadBalancer};

/// Priority of a flow line without `priority=` (Open vSwitch's default).
pub const DEFAULT_PRIORITY: u16 = 32768;

/// TTL (IPv6: hop limit) of an IP packet described without `nw_ttl=`.
pub const DEFAULT_PACKET_TTL: u8 = 64;

/// A flow file or packet description that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {line}: {field}: {message}")]
pub struct FlowTextError {
    /// The line the entry starts on (1-based; lines continued with `\` count as the line
    /// they continue).
    pub line: usize,
    /// The key or action being parsed: `nw_dst`, `actions/ct`, `bucket 2/actions/output`.
    pub field: String,
    /// What is wrong, quoting the offending value.
    pub message: String,
}

/// Everything a flow file defines, each kind in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowFile {
    /// Flow lines.
    pub flows: Vec<Flow>,
    /// `group_id=` lines.
    pub groups: Vec<Group>,
    /// `lb=` lines.
    pub load_balancers: Vec<LoadBalancer>,
    /// `tunnel=` lines.
    pub tunnels: Vec<TunnelPort>,
    /// `tunnel_remotes=` lines.
    pub tunnel_remotes: Vec<TunnelRemotes>,
    /// `ct_zone_limit=` lines.
    pub zone_limits: Vec<ZoneLimit>,
}

impl FlowFile {
    /// The modifications that install the file: tunnel ports (with their remotes), zone
    /// limits, load balancers and groups before the flows that refer to them, each kind
    /// in file order.
    pub fn to_mods(&self) -> Vec<FlowMod> {
        let tunnels = self.tunnels.iter().copied().map(FlowMod::AddTunnelPort);
        let remotes = self.tunnel_remotes.iter().cloned().map(FlowMod::SetTunnelRemotes);
        let limits = self.zone_limits.iter().copied().map(FlowMod::SetZoneLimit);
        let lbs = self.load_balancers.iter().cloned().map(FlowMod::AddLoadBalancer);
        let groups = self.groups.iter().cloned().map(FlowMod::AddGroup);
        let flows = self.flows.iter().cloned().map(FlowMod::AddFlow);
        tunnels.chain(remotes).chain(limits).chain(lbs).chain(groups).chain(flows).collect()
    }
}

/// Reads a flow file: one flow, group (`group_id=`), load balancer (`lb=`), tunnel port
/// (`tunnel=`), tunnel port's remotes (`tunnel_remotes=`) or conntrack zone limit
/// (`ct_zone_limit=`) per line; `#` starts a comment line; a line ending in `\` continues
/// on the next. Defining the same group, load balancer, tunnel port, remotes, zone limit
/// or (table, priority, match) twice is an error that names both lines.
pub fn parse_flow_file(text: &str) -> Result<FlowFile, FlowTextError> {
    let mut file = FlowFile::default();
    let mut flow_lines = HashMap::new();
    let mut group_lines = HashMap::new();
    let mut lb_lines = HashMap::new();
    let mut tunnel_lines = HashMap::new();
    let mut remotes_lines = HashMap::new();
    let mut limit_lines = HashMap::new();
    for Entry { line, text } in entries(text) {
        let at = |b: Bad| b.at(line);
        match first_key(&text) {
            "group_id" => {
                let group = parse_group(&text).map_err(at)?;
                first_definition(&mut group_lines, group.id, line, "group_id", &format!("group {}", group.id))?;
                file.groups.push(group);
            }
            "lb" => {
                let lb = parse_load_balancer(&text).map_err(at)?;
                first_definition(&mut lb_lines, lb.id, line, "lb", &format!("load balancer {}", lb.id))?;
                file.load_balancers.push(lb);
            }
            "tunnel" => {
                let tunnel = parse_tunnel(&text).map_err(at)?;
                first_definition(&mut tunnel_lines, tunnel.port, line, "tunnel", &format!("tunnel {}", tunnel.port))?;
                file.tunnels.push(tunnel);
            }
            "tunnel_remotes" => {
                let r = parse_tunnel_remotes(&text).map_err(at)?;
                let what = format!("the remotes of tunnel {}", r.port);
                first_definition(&mut remotes_lines, r.port, line, "tunnel_remotes", &what)?;
                file.tunnel_remotes.push(r);
            }
            "ct_zone_limit" => {
                let z = parse_zone_limit(&text).map_err(at)?;
                let what = match z.scope {
                    ZoneLimitScope::Default => "the default zone limit".to_owned(),
                    ZoneLimitScope::Zone(n) => format!("the limit of zone {n}"),
                };
                first_definition(&mut limit_lines, z.scope, line, "ct_zone_limit", &what)?;
                file.zone_limits.push(z);
            }
            _ => {
                let flow = parse_flow(&text).map_err(at)?;
                let key = (flow.table, flow.priority, flow.matches);
                first_definition(&mut flow_lines, key, line, "flow", "a flow with this table, priority and match")?;
                file.flows.push(flow);
            }
        }
    }
    Ok(file)
}

/// Reads a packet for `trace`, described in match syntax with exact values
/// (`in_port=1,tcp,nw_src=10.0.0.1,nw_dst=10.0.0.2,tp_dst=80,tcp_flags=0x2`); a mask is
/// an error. An IPv4 or IPv6 packet without `nw_ttl=` gets TTL (hop limit)
/// [`DEFAULT_PACKET_TTL`]; every other field not given is 0, and so is an empty text.
pub fn parse_packet(text: &str) -> Result<FlowKey, FlowTextError> {
    let mut entries = entries(text).into_iter();
    let Some(Entry { line, text }) = entries.next() else {
        return Ok(FlowKey::ZERO);
    };
    if let Some(extra) = entries.next() {
        return Err(FlowTextError {
            line: extra.line,
            field: "packet".into(),
            message: "a packet is described on a single line (end a line with \\ to continue it)".into(),
        });
    }
    let mut builder = MatchBuilder::default();
    for (_, token) in split_top(&text, "").map_err(|b| b.at(line))? {
        let token = token.trim();
        if !token.is_empty() {
            builder.token(token, true).map_err(|b| b.at(line))?;
        }
    }
    let mut key = builder.m.value;
    let is_ip = matches!(key.get(Field::EthType) as u16, eth_type::IPV4 | eth_type::IPV6);
    if is_ip && builder.m.mask.get(Field::NwTtl) == 0 {
        key.set(Field::NwTtl, DEFAULT_PACKET_TTL.into());
    }
    Ok(key)
}

/// A flow as a line [`parse_flow_file`] reads back to the same flow:
/// `table=T,priority=P[,cookie=0xC][,MATCH],actions=ACTIONS`.
pub fn format_flow(flow: &Flow) -> String {
    let mut out = format!("table={},priority={}", flow.table, flow.priority);
    if flow.cookie != 0 {
        out.push_str(&format!(",cookie={:#x}", flow.cookie));
    }
    let matches = format_match(&flow.matches);
    if !matches.is_empty() {
        out.push(',');
        out.push_str(&matches);
    }
    out.push_str(",actions=");
    out.push_str(&format_actions(&flow.actions));
    out
}

/// A match in flow syntax: a shorthand (`tcp`, `ipv6`, `arp`, ...) when `eth_type` and
/// `nw_proto` allow one, then `FIELD=VALUE[/MASK]` for every field with mask bits, with
/// addresses as addresses (IPv4 and IPv6 masks as `/N` prefixes where they are prefixes)
/// and `ct_state` as flags. Empty for a match-everything.
pub fn format_match(m: &Match) -> String {
    let mut rest = Match { value: m.value.and(&m.mask), mask: m.mask };
    let mut parts = Vec::new();
    let is_arp = exact(&rest, Field::EthType) == Some(eth_type::ARP.into());
    if let Some(shorthand) = take_shorthand(&mut rest) {
        parts.push(shorthand.to_string());
    }
    for &field in DISPLAY_ORDER {
        let mask = rest.mask.get(field);
        if mask == 0 {
            continue;
        }
        let name = if is_arp { arp_name(field) } else { field.name() };
        parts.push(format!("{name}={}", format_masked(field, rest.value.get(field), mask)));
    }
    parts.join(",")
}

/// A packet's key as [`parse_packet`] reads it back: a shorthand, every non-zero field,
/// and `nw_ttl` of IP packets even when 0.
pub fn format_packet(key: &FlowKey) -> String {
    let mut mask = FlowKey::ZERO;
    for &field in DISPLAY_ORDER {
        if key.get(field) != 0 {
            mask.set(field, u128::MAX);
        }
    }
    if matches!(key.get(Field::EthType) as u16, eth_type::IPV4 | eth_type::IPV6) {
        mask.set(Field::NwTtl, u128::MAX);
    }
    // Only the flags that are set, `ct_state=+trk+est`, when they are all known flags.
    let state = key.get(Field::CtState);
    if state & !u128::from(CT_FLAG_BITS) == 0 {
        mask.set(Field::CtState, state);
    }
    format_match(&Match { value: *key, mask })
}

/// Actions in flow syntax, comma-separated; empty for no actions.
pub fn format_actions(actions: &[Action]) -> String {
    actions.iter().map(format_action).collect::<Vec<_>>().join(",")
}

/// A group as a line [`parse_flow_file`] reads back:
/// `group_id=G,type=select,fields(...),bucket=weight:W,actions=...`.
pub fn format_group(group: &Group) -> String {
    let mut out = format!("group_id={}", group.id);
    match &group.kind {
        GroupKind::Select { fields } => {
            let names: Vec<&str> = fields.iter().map(|f| f.name()).collect();
            out.push_str(&format!(",type=select,fields({})", names.join(",")));
        }
        GroupKind::All => out.push_str(",type=all"),
    }
    for bucket in &group.buckets {
        out.push_str(&format!(",bucket=weight:{},actions={}", bucket.weight, format_actions(&bucket.actions)));
    }
    out
}

/// A load balancer as a line [`parse_flow_file`] reads back:
/// `lb=ID,backends=ADDR:PORT;...[,affinity_timeout=SECONDS]`.
pub fn format_load_balancer(lb: &LoadBalancer) -> String {
    let backends: Vec<String> = lb.backends.iter().map(|b| format_addr_port(&b.addr, b.port)).collect();
    let mut out = format!("lb={},backends={}", lb.id, backends.join(";"));
    if let Some(ns) = lb.affinity_timeout_ns {
        out.push_str(&format!(",affinity_timeout={}", format_seconds(ns)));
    }
    out
}

/// A tunnel port as a line [`parse_flow_file`] reads back, every parameter spelled out.
pub fn format_tunnel(t: &TunnelPort) -> String {
    format!(
        "tunnel={},local_ip={},underlay_port={},local_mac={},next_hop_mac={},mtu={},ttl={},icmp_src={},icmp_src6={}",
        t.port,
        Ipv4Addr::from(t.local_ip),
        t.underlay_port,
        format_mac(t.local_mac.into()),
        format_mac(t.next_hop_mac.into()),
        t.mtu,
        t.ttl,
        Ipv4Addr::from(t.icmp_src),
        Ipv6Addr::from(t.icmp_src6),
    )
}

/// A tunnel port's remotes as a line [`parse_flow_file`] reads back:
/// `tunnel_remotes=PORT,remotes=IP;IP;...` (an empty list accepts no source).
pub fn format_tunnel_remotes(r: &TunnelRemotes) -> String {
    let remotes: Vec<String> = r.remotes.iter().map(|a| Ipv4Addr::from(*a).to_string()).collect();
    format!("tunnel_remotes={},remotes={}", r.port, remotes.join(";"))
}

/// A zone limit as a line [`parse_flow_file`] reads back:
/// `ct_zone_limit=ZONE|default,limit=N`.
pub fn format_zone_limit(z: &ZoneLimit) -> String {
    match z.scope {
        ZoneLimitScope::Default => format!("ct_zone_limit=default,limit={}", z.limit),
        ZoneLimitScope::Zone(n) => format!("ct_zone_limit={n},limit={}", z.limit),
    }
}

/// A whole file as [`parse_flow_file`] reads it back: tunnels and their remotes, zone
/// limits, load balancers, groups, flows, one per line.
pub fn format_flow_file(file: &FlowFile) -> String {
    let lines = file.tunnels.iter().map(format_tunnel);
    let lines = lines.chain(file.tunnel_remotes.iter().map(format_tunnel_remotes));
    let lines = lines.chain(file.zone_limits.iter().map(format_zone_limit));
    let lines = lines.chain(file.load_balancers.iter().map(format_load_balancer));
    let lines = lines.chain(file.groups.iter().map(format_group));
    let lines = lines.chain(file.flows.iter().map(format_flow));
    lines.map(|l| l + "\n").collect()
}

/// Cached datapath actions for `dump-cache` and `trace` (display only; there is no
/// parser): `set(FIELD=VALUE)`, `push_vlan:TCI`, `pop_vlan`, `output:PORT`, `clone(...)`,
/// `ct(...)`, `tunnel(...)`, responders, `ct_lb(...)`, and `recirc(ID)` after a
/// recirculating `ct`/`ct_lb`; `drop` for none.
pub fn format_dp_actions(actions: &[DpAction]) -> String {
    if actions.is_empty() {
        return "drop".into();
    }
    actions.iter().map(format_dp_action).collect::<Vec<_>>().join(",")
}

// ---------------------------------------------------------------------------------------
// Errors.

/// An error before the line number is known.
#[derive(Debug)]
struct Bad {
    field: String,
    message: String,
}

impl Bad {
    fn at(self, line: usize) -> FlowTextError {
        FlowTextError { line, field: self.field, message: self.message }
    }
}

type Res<T> = Result<T, Bad>;

fn bad<T>(field: impl Into<String>, message: impl Into<String>) -> Res<T> {
    Err(Bad { field: field.into(), message: message.into() })
}

/// Attaches the field to a value parser's message.
trait InField<T> {
    fn in_field(self, field: &str) -> Res<T>;
}

impl<T> InField<T> for Result<T, String> {
    fn in_field(self, field: &str) -> Res<T> {
        self.map_err(|message| Bad { field: field.to_string(), message })
    }
}

/// `s` in quotes, cut short if long.
fn quoted(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{:?}...", s.get(..i).unwrap_or_default()),
        None => format!("{s:?}"),
    }
}

/// A key as written, cut short if long, for the `field` of an error.
fn label(s: &str) -> String {
    match s.char_indices().nth(40) {
        Some((i, _)) => format!("{}...", s.get(..i).unwrap_or_default()),
        None => s.to_string(),
    }
}

/// `ctx/key`, or whichever of the two is not empty.
fn join_field(ctx: &str, key: &str) -> String {
    match (ctx.is_empty(), key.is_empty()) {
        (true, true) => "entry".into(),
        (true, false) => label(key),
        (false, true) => ctx.to_string(),
        (false, false) => format!("{ctx}/{}", label(key)),
    }
}

fn first_definition<K: Eq + Hash>(
    seen: &mut HashMap<K, usize>,
    key: K,
    line: usize,
    field: &str,
    what: &str,
) -> Result<(), FlowTextError> {
    match seen.entry(key) {
        MapEntry::Occupied(first) => Err(FlowTextError {
            line,
            field: field.into(),
            message: format!("{what} is already defined on line {}", first.get()),
        }),
        MapEntry::Vacant(slot) => {
            slot.insert(line);
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------
// Lines and tokens.

/// One logical line: continuation lines joined, comments and blank lines gone.
struct Entry {
    line: usize,
    text: String,
}

fn entries(text: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (index, raw) in text.lines().enumerate() {
        let (line, mut buf) = match pending.take() {
            Some(p) => p,
            None => {
                let t = raw.trim();
                if t.is_empty() || t.starts_with('#') {
                    continue;
                }
                (index + 1, String::new())
            }
        };
        let body = raw.trim_end();
        match body.strip_suffix('\\') {
            Some(head) => {
                buf.push_str(head);
                pending = Some((line, buf));
            }
            None => {
                buf.push_str(body);
                out.push(Entry { line, text: buf });
            }
        }
    }
    if let Some((line, text)) = pending
        && !text.trim().is_empty()
    {
        out.push(Entry { line, text });
    }
    out
}

/// The key of an entry's first item, which says what the entry defines.
fn first_key(text: &str) -> &str {
    let first = text.split(',').next().unwrap_or_default();
    first.split('=').next().unwrap_or_default().trim()
}

/// The key of a token: the text before its first `=`, `:` or `(`.
fn token_key(token: &str) -> &str {
    token.split(['=', ':', '(']).next().unwrap_or_default().trim()
}

/// Splits `s` at the commas outside parentheses: each piece (untrimmed, possibly empty)
/// with its byte offset in `s`. Unbalanced parentheses are an error in the field of the
/// token they occur in, under `ctx`.
fn split_top<'a>(s: &'a str, ctx: &str) -> Res<Vec<(usize, &'a str)>> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    let mut open_token = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => {
                if depth == 0 {
                    open_token = start;
                }
                depth += 1;
            }
            ')' => {
                if depth == 0 {
                    let token = s.get(start..i).unwrap_or_default();
                    return bad(join_field(ctx, token_key(token)), "')' without a matching '('");
                }
                depth -= 1;
            }
            ',' if depth == 0 => {
                out.push((start, s.get(start..i).unwrap_or_default()));
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth > 0 {
        let token = s.get(open_token..).unwrap_or_default();
        return bad(join_field(ctx, token_key(token)), "'(' without a matching ')'");
    }
    out.push((start, s.get(start..).unwrap_or_default()));
    Ok(out)
}

/// The text after the first `=` of the token at `start`, to the end of `s`.
fn rest_after_eq(s: &str, start: usize) -> &str {
    s.get(start..).and_then(|rest| rest.split_once('=')).map(|(_, after)| after).unwrap_or_default()
}

/// How an action or parameter carries its argument.
enum Arg<'a> {
    None,
    Colon(&'a str),
    Eq(&'a str),
    Parens(&'a str),
}

/// Splits `name`, `name:arg`, `name=arg` or `name(arg)` (parentheses already balanced).
fn split_arg(t: &str) -> Result<(&str, Arg<'_>), String> {
    let Some(i) = t.find([':', '=', '(']) else {
        return Ok((t.trim(), Arg::None));
    };
    let (name, rest) = t.split_at_checked(i).unwrap_or((t, ""));
    let arg = if let Some(a) = rest.strip_prefix(':') {
        Arg::Colon(a)
    } else if let Some(a) = rest.strip_prefix('=') {
        Arg::Eq(a)
    } else {
        match rest.strip_prefix('(').and_then(|r| r.strip_suffix(')')) {
            Some(a) => Arg::Parens(a),
            None => return Err(format!("{} has text after its closing ')'", quoted(t))),
        }
    };
    Ok((name.trim(), arg))
}

/// `key=value` parameters, each known and given at most once.
struct Args<'a> {
    ctx: String,
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Args<'a> {
    fn parse(text: &'a str, ctx: &str, known: &[&str]) -> Res<Args<'a>> {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for (_, token) in split_top(text, ctx)? {
            let token = token.trim();
            if token.is_empty() {
                continue;
            }
            let (key, value) = token.split_once('=').unwrap_or((token, ""));
            let key = key.trim();
            if !known.contains(&key) {
                return bad(join_field(ctx, key), format!("unknown parameter (expected {})", known.join("=, ") + "="));
            }
            if !token.contains('=') {
                return bad(join_field(ctx, key), format!("expected {key}=VALUE"));
            }
            if pairs.iter().any(|(k, _)| *k == key) {
                return bad(join_field(ctx, key), "given twice");
            }
            pairs.push((key, value.trim()));
        }
        Ok(Args { ctx: ctx.to_string(), pairs })
    }

    fn get<T>(&self, key: &str, parse: impl FnOnce(&str) -> Result<T, String>) -> Res<Option<T>> {
        match self.pairs.iter().find(|(k, _)| *k == key) {
            Some((_, value)) => parse(value).map(Some).in_field(&join_field(&self.ctx, key)),
            None => Ok(None),
        }
    }

    fn need<T>(&self, key: &str, parse: impl FnOnce(&str) -> Result<T, String>) -> Res<T> {
        match self.get(key, parse)? {
            Some(v) => Ok(v),
            None => bad(join_field(&self.ctx, key), "is required"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Numbers, addresses and field values.

/// A decimal or `0x` hexadecimal number.
fn number(s: &str) -> Result<u128, String> {
    let (digits, radix) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None => (s, 10),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(format!("{} is not a number", quoted(s)));
    }
    u128::from_str_radix(digits, radix).map_err(|_| format!("{} is too large", quoted(s)))
}

/// A number of at most `max`.
fn int<T: TryFrom<u128> + Into<u128> + Copy>(s: &str, max: T) -> Result<T, String> {
    let v = number(s.trim())?;
    T::try_from(v).map_err(|_| format!("{} is larger than {}", quoted(s.trim()), max.into()))
}

fn parse_mac(s: &str) -> Option<u128> {
    let mut v = 0u128;
    let mut n = 0;
    for part in s.split(':') {
        n += 1;
        if n > 6 || part.is_empty() || part.len() > 2 || !part.chars().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        v = v << 8 | u128::from(u8::from_str_radix(part, 16).ok()?);
    }
    (n == 6).then_some(v)
}

fn format_mac(v: u128) -> String {
    let b = (v as u64).to_be_bytes();
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[2], b[3], b[4], b[5], b[6], b[7])
}

/// How a field's values are written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Syntax {
    Mac,
    Ipv4,
    Ipv6,
    CtState,
    Decimal,
    Hex,
}

fn syntax(f: Field) -> Syntax {
    match f {
        Field::EthSrc | Field::EthDst | Field::ArpSha | Field::ArpTha => Syntax::Mac,
        Field::Ipv4Src | Field::Ipv4Dst | Field::ArpSpa | Field::ArpTpa | Field::TunSrc | Field::TunDst => Syntax::Ipv4,
        Field::Ipv6Src | Field::Ipv6Dst => Syntax::Ipv6,
        Field::CtState => Syntax::CtState,
        Field::InPort
        | Field::CtZone
        | Field::TunIngressPort
        | Field::TunEgressPort
        | Field::NwProto
        | Field::ArpOp
        | Field::IpDscp
        | Field::IpEcn
        | Field::NwTtl
        | Field::TpSrc
        | Field::TpDst
        | Field::IcmpType
        | Field::IcmpCode => Syntax::Decimal,
        _ => Syntax::Hex,
    }
}

/// A value of `f`: a number, or an address in the field's own syntax.
fn field_value(f: Field, s: &str) -> Result<u128, String> {
    let s = s.trim();
    let v = match syntax(f) {
        Syntax::Mac if s.contains(':') => parse_mac(s).ok_or_else(|| format!("{} is not a MAC address", quoted(s)))?,
        Syntax::Mac => number(s).map_err(|_| format!("{} is not a MAC address", quoted(s)))?,
        Syntax::Ipv4 if s.contains('.') => s
            .parse::<Ipv4Addr>()
            .map(|a| u32::from(a).into())
            .map_err(|_| format!("{} is not an IPv4 address", quoted(s)))?,
        Syntax::Ipv4 => number(s).map_err(|_| format!("{} is not an IPv4 address", quoted(s)))?,
        Syntax::Ipv6 if s.contains(':') => {
            s.parse::<Ipv6Addr>().map(u128::from).map_err(|_| format!("{} is not an IPv6 address", quoted(s)))?
        }
        Syntax::Ipv6 => number(s).map_err(|_| format!("{} is not an IPv6 address", quoted(s)))?,
        Syntax::CtState | Syntax::Decimal | Syntax::Hex => number(s)?,
    };
    if v > f.max_value() {
        return Err(format!("{} does not fit in {} ({} bits)", quoted(s), f.name(), f.bits()));
    }
    Ok(v)
}

/// A mask of `f`: like a value, and for addresses also a prefix length `N`.
fn field_mask(f: Field, s: &str) -> Result<u128, String> {
    let s = s.trim();
    let is_prefix = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if matches!(syntax(f), Syntax::Ipv4 | Syntax::Ipv6) && is_prefix {
        let len = number(s)?;
        if len > f.bits().into() {
            return Err(format!("{} is not a prefix length (0 to {})", quoted(s), f.bits()));
        }
        let full = f.max_value();
        return Ok(full ^ full.checked_shr(len as u32).unwrap_or(0));
    }
    field_value(f, s)
}

/// The prefix length of `mask`, if it is a prefix of `f`.
fn prefix_len(f: Field, mask: u128) -> Option<u32> {
    let full = f.max_value();
    let host = !mask & full;
    (mask & !full == 0 && host & host.wrapping_add(1) == 0).then(|| f.bits() - host.count_ones())
}

fn format_value(f: Field, v: u128) -> String {
    if v > f.max_value() {
        return format!("{v:#x}");
    }
    match syntax(f) {
        Syntax::Mac => format_mac(v),
        Syntax::Ipv4 => Ipv4Addr::from(v as u32).to_string(),
        Syntax::Ipv6 => Ipv6Addr::from(v).to_string(),
        Syntax::Decimal => v.to_string(),
        Syntax::CtState | Syntax::Hex => format!("{v:#x}"),
    }
}

fn format_mask(f: Field, m: u128) -> String {
    match syntax(f) {
        Syntax::Ipv4 | Syntax::Ipv6 => match prefix_len(f, m) {
            Some(len) => len.to_string(),
            None => format_value(f, m),
        },
        Syntax::Mac if m <= f.max_value() => format_mac(m),
        _ => format!("{m:#x}"),
    }
}

fn format_masked(f: Field, v: u128, m: u128) -> String {
    if m == f.max_value() {
        return format_value(f, v);
    }
    if f == Field::CtState && m & !u128::from(CT_FLAG_BITS) == 0 {
        return format_ct_flags(v as u8, m as u8);
    }
    let value = match syntax(f) {
        Syntax::Mac | Syntax::Ipv4 | Syntax::Ipv6 => format_value(f, v),
        Syntax::CtState | Syntax::Decimal | Syntax::Hex => format!("{v:#x}"),
    };
    format!("{value}/{}", format_mask(f, m))
}

const CT_FLAGS: [(&str, u8); 8] = [
    ("new", ct_state::NEW),
    ("est", ct_state::EST),
    ("rel", ct_state::REL),
    ("rpl", ct_state::RPL),
    ("inv", ct_state::INV),
    ("trk", ct_state::TRK),
    ("snat", ct_state::SNAT),
    ("dnat", ct_state::DNAT),
];

const CT_FLAG_BITS: u8 = 0xff;

fn not_a_ct_flag(name: &str) -> String {
    let names: Vec<&str> = CT_FLAGS.iter().map(|(n, _)| *n).collect();
    format!("{} is not a ct_state flag ({})", quoted(name), names.join(", "))
}

/// A `ct_state` value as flag names joined by `|` (`trk|new`), `0` for none — how
/// `trace` shows the state of a recirculated packet.
pub fn format_ct_state(state: u8) -> String {
    let names: Vec<&str> = CT_FLAGS.iter().filter(|(_, b)| state & b != 0).map(|(n, _)| *n).collect();
    if names.is_empty() { "0".to_string() } else { names.join("|") }
}

/// A set of `ct_state` flags named for `trace --ct-next`: names separated by `,`, `|` or
/// `+` (`trk,est`, `+trk+est`).
pub fn parse_ct_state_flags(text: &str) -> Result<u8, FlowTextError> {
    let mut state = 0u8;
    for name in text.split([',', '|', '+']).map(str::trim).filter(|n| !n.is_empty()) {
        let Some(&(_, bit)) = CT_FLAGS.iter().find(|(n, _)| *n == name) else {
            return Err(FlowTextError { line: 1, field: "ct_state".to_string(), message: not_a_ct_flag(name) });
        };
        state |= bit;
    }
    Ok(state)
}

/// `+trk+new-est`: `+` matches the flag set, `-` matches it clear. (value, mask).
fn parse_ct_flags(s: &str) -> Result<(u128, u128), String> {
    let (mut value, mut mask) = (0u8, 0u8);
    let mut rest = s;
    while !rest.is_empty() {
        let (set, after) = match (rest.strip_prefix('+'), rest.strip_prefix('-')) {
            (Some(after), _) => (true, after),
            (None, Some(after)) => (false, after),
            (None, None) => return Err(format!("{} must start with + or -", quoted(rest))),
        };
        let end = after.find(['+', '-']).unwrap_or(after.len());
        let (name, next) = after.split_at_checked(end).unwrap_or((after, ""));
        let Some(&(_, bit)) = CT_FLAGS.iter().find(|(n, _)| *n == name) else {
            return Err(not_a_ct_flag(name));
        };
        if mask & bit != 0 {
            return Err(format!("flag {name} is given twice"));
        }
        mask |= bit;
        if set {
            value |= bit;
        }
        rest = next;
    }
    Ok((value.into(), mask.into()))
}

fn format_ct_flags(value: u8, mask: u8) -> String {
    let mut out = String::new();
    for (name, bit) in CT_FLAGS {
        if mask & bit != 0 {
            out.push(if value & bit != 0 { '+' } else { '-' });
            out.push_str(name);
        }
    }
    out
}

fn ipv4(s: &str) -> Result<u32, String> {
    field_value(Field::Ipv4Src, s).map(|v| v as u32)
}

fn ipv6(s: &str) -> Result<u128, String> {
    field_value(Field::Ipv6Src, s)
}

fn mac(s: &str) -> Result<u64, String> {
    field_value(Field::EthSrc, s).map(|v| v as u64)
}

/// An address in a conntrack/load-balancer 16-byte form: `A.B.C.D` or, in brackets,
/// IPv6.
fn format_addr(addr: &[u8; 16]) -> String {
    let a = Ipv6Addr::from(*addr);
    match a.to_ipv4_mapped() {
        Some(v4) => v4.to_string(),
        None => format!("[{a}]"),
    }
}

fn format_addr_port(addr: &[u8; 16], port: u16) -> String {
    format!("{}:{port}", format_addr(addr))
}

fn is_v4(addr: &[u8; 16]) -> bool {
    Ipv6Addr::from(*addr).to_ipv4_mapped().is_some()
}

/// `A.B.C.D` or `[IPv6]` at the start of `s`, and the rest.
fn split_addr(s: &str) -> Result<([u8; 16], &str), String> {
    if let Some(inner) = s.strip_prefix('[') {
        let (addr, rest) = inner.split_once(']').ok_or_else(|| format!("{} lacks its closing ']'", quoted(s)))?;
        let addr = addr.parse::<Ipv6Addr>().map_err(|_| format!("{} is not an IPv6 address", quoted(addr)))?;
        return Ok((addr.octets(), rest));
    }
    let end = s.find([':', '-']).unwrap_or(s.len());
    let (addr, rest) = s.split_at_checked(end).unwrap_or((s, ""));
    let addr = addr.parse::<Ipv4Addr>().map_err(|_| {
        format!("{} is not an IPv4 address (IPv6 addresses go in brackets: [2001:db8::1])", quoted(addr))
    })?;
    Ok((conntrack::v4(addr.into()), rest))
}

fn backend(s: &str) -> Result<Backend, String> {
    let (addr, rest) = split_addr(s)?;
    let port = rest.strip_prefix(':').ok_or_else(|| format!("{} needs a port: ADDR:PORT", quoted(s)))?;
    Ok(Backend { addr, port: int(port, u16::MAX)? })
}

fn backends(s: &str) -> Result<Vec<Backend>, String> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for item in s.split(';').map(str::trim).filter(|i| !i.is_empty()) {
        let b = backend(item)?;
        if !seen.insert(b) {
            return Err(format!("{} is listed twice", quoted(item)));
        }
        out.push(b);
    }
    Ok(out)
}

const NS_PER_SEC: u64 = 1_000_000_000;

/// Seconds with up to 9 decimals, in nanoseconds.
fn seconds(s: &str) -> Result<u64, String> {
    let err = || format!("{} is not a number of seconds (like 10800 or 0.5)", quoted(s));
    let (whole, frac) = match s.split_once('.') {
        Some((w, f)) if !f.is_empty() && f.len() <= 9 => (w, f),
        Some(_) => return Err(err()),
        None => (s, ""),
    };
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(frac) {
        return Err(err());
    }
    let whole: u64 = whole.parse().map_err(|_| err())?;
    let frac: u64 = if frac.is_empty() { 0 } else { format!("{frac:0<9}").parse().map_err(|_| err())? };
    whole
        .checked_mul(NS_PER_SEC)
        .and_then(|ns| ns.checked_add(frac))
        .ok_or_else(|| format!("{} is too long", quoted(s)))
}

fn format_seconds(ns: u64) -> String {
    let (whole, frac) = (ns / NS_PER_SEC, ns % NS_PER_SEC);
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:09}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

// ---------------------------------------------------------------------------------------
// Matches.

/// Field names Open vSwitch also accepts.
fn field_named(name: &str) -> Option<Field> {
    Field::from_name(name).or(match name {
        "dl_src" => Some(Field::EthSrc),
        "dl_dst" => Some(Field::EthDst),
        "dl_type" => Some(Field::EthType),
        "ip_src" => Some(Field::Ipv4Src),
        "ip_dst" => Some(Field::Ipv4Dst),
        "tcp_src" | "udp_src" | "sctp_src" => Some(Field::TpSrc),
        "tcp_dst" | "udp_dst" | "sctp_dst" => Some(Field::TpDst),
        "icmpv6_type" => Some(Field::IcmpType),
        "icmpv6_code" => Some(Field::IcmpCode),
        _ => None,
    })
}

/// Shorthands: name, `eth_type`, `nw_proto`. Formatting takes the first that fits.
const SHORTHANDS: [(&str, u16, Option<u8>); 11] = [
    ("tcp", eth_type::IPV4, Some(ip_proto::TCP)),
    ("udp", eth_type::IPV4, Some(ip_proto::UDP)),
    ("icmp", eth_type::IPV4, Some(ip_proto::ICMP)),
    ("sctp", eth_type::IPV4, Some(ip_proto::SCTP)),
    ("tcp6", eth_type::IPV6, Some(ip_proto::TCP)),
    ("udp6", eth_type::IPV6, Some(ip_proto::UDP)),
    ("icmp6", eth_type::IPV6, Some(ip_proto::ICMPV6)),
    ("sctp6", eth_type::IPV6, Some(ip_proto::SCTP)),
    ("ip", eth_type::IPV4, None),
    ("ipv6", eth_type::IPV6, None),
    ("arp", eth_type::ARP, None),
];

/// Fields in the order matches are written. The ARP aliases (`arp_spa`, `arp_tpa`,
/// `arp_op`) share bits with `nw_src`, `nw_dst` and `nw_proto` and are written under
/// those names' places.
const DISPLAY_ORDER: &[Field] = &[
    Field::RecircId,
    Field::InPort,
    Field::Metadata,
    Field::Reg0,
    Field::Reg1,
    Field::Reg2,
    Field::Reg3,
    Field::Reg4,
    Field::Reg5,
    Field::Reg6,
    Field::Reg7,
    Field::Reg8,
    Field::TunId,
    Field::TunSrc,
    Field::TunDst,
    Field::TunIngressPort,
    Field::TunEgressPort,
    Field::TunIdentity,
    Field::CtState,
    Field::CtZone,
    Field::CtMark,
    Field::CtLabel,
    Field::EthSrc,
    Field::EthDst,
    Field::EthType,
    Field::VlanTci,
    Field::Ipv4Src,
    Field::Ipv4Dst,
    Field::NwProto,
    Field::IpDscp,
    Field::IpEcn,
    Field::NwTtl,
    Field::NwFrag,
    Field::Ipv6Src,
    Field::Ipv6Dst,
    Field::Ipv6Label,
    Field::TpSrc,
    Field::TpDst,
    Field::TcpFlags,
    Field::IcmpType,
    Field::IcmpCode,
    Field::ArpSha,
    Field::ArpTha,
];

/// The name a field's bits go by in an ARP match.
fn arp_name(f: Field) -> &'static str {
    match f {
        Field::Ipv4Src => Field::ArpSpa.name(),
        Field::Ipv4Dst => Field::ArpTpa.name(),
        Field::NwProto => Field::ArpOp.name(),
        other => other.name(),
    }
}

/// The field whose bits `f` uses (the ARP aliases share IPv4's).
fn bits_owner(f: Field) -> Field {
    match f {
        Field::ArpSpa => Field::Ipv4Src,
        Field::ArpTpa => Field::Ipv4Dst,
        Field::ArpOp => Field::NwProto,
        other => other,
    }
}

fn exact(m: &Match, f: Field) -> Option<u128> {
    (m.mask.get(f) == f.max_value()).then(|| m.value.get(f))
}

/// Removes the bits a shorthand stands for from `m` and names it.
fn take_shorthand(m: &mut Match) -> Option<&'static str> {
    let ether = exact(m, Field::EthType)?;
    let proto = exact(m, Field::NwProto);
    let (name, _, with_proto) =
        SHORTHANDS.iter().find(|(_, et, p)| u128::from(*et) == ether && (p.is_none() || p.map(u128::from) == proto))?;
    m.mask.set(Field::EthType, 0);
    m.value.set(Field::EthType, 0);
    if with_proto.is_some() {
        m.mask.set(Field::NwProto, 0);
        m.value.set(Field::NwProto, 0);
    }
    Some(name)
}

/// Accumulates a match (or a packet) token by token, refusing a token that contradicts
/// an earlier one on the same bits.
#[derive(Default)]
struct MatchBuilder {
    m: Match,
    /// (field, token) of every token so far, to name the earlier one in a conflict.
    given: Vec<(Field, String)>,
}

impl MatchBuilder {
    /// A shorthand or `FIELD=VALUE[/MASK]` (masks only when `packet` is false).
    fn token(&mut self, token: &str, packet: bool) -> Res<()> {
        let Some((key, value)) = token.split_once('=') else {
            let Some(&(name, ether, proto)) = SHORTHANDS.iter().find(|(n, _, _)| *n == token) else {
                let names: Vec<&str> = SHORTHANDS.iter().map(|s| s.0).collect();
                return bad(
                    label(token),
                    format!("not FIELD=VALUE nor a shorthand ({}); is a ',' missing?", names.join(", ")),
                );
            };
            self.add(name, token, Field::EthType, ether.into(), u128::MAX)?;
            if let Some(p) = proto {
                self.add(name, token, Field::NwProto, p.into(), u128::MAX)?;
            }
            return Ok(());
        };
        let (key, value) = (key.trim(), value.trim());
        let Some(field) = field_named(key) else {
            return bad(label(key), "unknown field");
        };
        if field == Field::CtState && value.starts_with(['+', '-']) {
            let (v, m) = parse_ct_flags(value).in_field(key)?;
            let m = if packet { field.max_value() } else { m };
            return self.add(key, token, field, v, m);
        }
        let (v, m) = match value.split_once('/') {
            Some(_) if packet => return bad(label(key), "a packet has exact values, not masks"),
            Some((v, m)) => (field_value(field, v).in_field(key)?, field_mask(field, m).in_field(key)?),
            None => (field_value(field, value).in_field(key)?, field.max_value()),
        };
        self.add(key, token, field, v & m, m)
    }

    fn add(&mut self, key: &str, token: &str, field: Field, value: u128, mask: u128) -> Res<()> {
        let both = self.m.mask.get(field) & mask;
        if (self.m.value.get(field) ^ value) & both != 0 {
            let owner = bits_owner(field);
            let earlier = self.given.iter().find(|(f, _)| bits_owner(*f) == owner).map(|(_, t)| t.as_str());
            return bad(
                label(key),
                format!("{} contradicts the earlier {}", quoted(token), quoted(earlier.unwrap_or_default())),
            );
        }
        self.m = self.m.with_masked(field, value, mask);
        self.given.push((field, token.to_string()));
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Flows.

fn parse_flow(text: &str) -> Res<Flow> {
    let mut table = None;
    let mut priority = None;
    let mut cookie = None;
    let mut builder = MatchBuilder::default();
    for (start, token) in split_top(text, "")? {
        let token = token.trim();
        if token.is_empty() {
            continue;
        }
        let key = token.split_once('=').map(|(k, _)| k.trim());
        let value = token.split_once('=').map(|(_, v)| v.trim()).unwrap_or_default();
        match key {
            Some("actions") => {
                let actions = parse_actions(rest_after_eq(text, start), "actions")?;
                let priority = priority.unwrap_or(DEFAULT_PRIORITY);
                let (table, cookie) = (table.unwrap_or(0), cookie.unwrap_or(0));
                return Ok(Flow { table, priority, matches: builder.m, cookie, actions });
            }
            Some("table") => set_once(&mut table, "table", int(value, u8::MAX))?,
            Some("priority") => set_once(&mut priority, "priority", int(value, u16::MAX))?,
            Some("cookie") => set_once(&mut cookie, "cookie", int(value, u64::MAX))?,
            _ => builder.token(token, false)?,
        }
    }
    bad("actions", "the flow has no actions= (which comes last; actions= alone means no actions)")
}

fn set_once<T>(slot: &mut Option<T>, field: &str, value: Result<T, String>) -> Res<()> {
    if slot.is_some() {
        return bad(field, "given twice");
    }
    *slot = Some(value.in_field(field)?);
    Ok(())
}

/// Usage of each action, for errors.
const ACTION_USAGE: &[(&str, &str)] = &[
    ("output", "output:PORT"),
    ("drop", "drop"),
    ("set_field", "set_field:VALUE[/MASK]->FIELD"),
    ("mod_dl_src", "mod_dl_src:MAC"),
    ("mod_dl_dst", "mod_dl_dst:MAC"),
    ("mod_nw_src", "mod_nw_src:IPv4"),
    ("mod_nw_dst", "mod_nw_dst:IPv4"),
    ("mod_tp_src", "mod_tp_src:PORT"),
    ("mod_tp_dst", "mod_tp_dst:PORT"),
    ("dec_ttl", "dec_ttl"),
    ("push_vlan", "push_vlan:TCI"),
    ("pop_vlan", "pop_vlan"),
    ("strip_vlan", "strip_vlan"),
    ("resubmit", "resubmit(,TABLE) or resubmit:TABLE"),
    ("goto_table", "goto_table:TABLE"),
    ("group", "group:GROUP"),
    ("ct", "ct(zone=Z,commit,nat(...),exec(...),table=T)"),
    ("ct_lb", "ct_lb(lb=ID,zone=Z,table=T)"),
    ("ct_clear", "ct_clear"),
    ("log", "log:ID"),
    ("move", "move:FIELD[A..B]->FIELD[C..D]"),
    ("arp_responder", "arp_responder(mac=MAC)"),
    ("icmp_echo_responder", "icmp_echo_responder"),
    ("time_exceeded", "time_exceeded(mac=MAC,ip=IPv4[,ip6=IPv6])"),
];

/// Comma-separated actions; errors are named `ctx/ACTION`.
fn parse_actions(text: &str, ctx: &str) -> Res<Vec<Action>> {
    let mut out = Vec::new();
    for (_, token) in split_top(text, ctx)? {
        let token = token.trim();
        if !token.is_empty() {
            out.push(parse_action(token, ctx)?);
        }
    }
    Ok(out)
}

fn parse_action(token: &str, ctx: &str) -> Res<Action> {
    let (name, arg) = split_arg(token).in_field(&join_field(ctx, token_key(token)))?;
    let field = join_field(ctx, name);
    let f = field.as_str();
    let set_whole = |target: Field, a: &str| -> Res<Action> {
        let value = field_value(target, a).in_field(f)?;
        Ok(Action::SetField { field: target, value, mask: u128::MAX })
    };
    let action = match (name, arg) {
        ("output", Arg::Colon(a)) => Action::Output(int(a, u32::MAX).in_field(f)?),
        ("drop", Arg::None) => Action::Drop,
        ("set_field", Arg::Colon(a)) => parse_set_field(a).in_field(f)?,
        ("mod_dl_src", Arg::Colon(a)) => set_whole(Field::EthSrc, a)?,
        ("mod_dl_dst", Arg::Colon(a)) => set_whole(Field::EthDst, a)?,
        ("mod_nw_src", Arg::Colon(a)) => set_whole(Field::Ipv4Src, a)?,
        ("mod_nw_dst", Arg::Colon(a)) => set_whole(Field::Ipv4Dst, a)?,
        ("mod_tp_src", Arg::Colon(a)) => set_whole(Field::TpSrc, a)?,
        ("mod_tp_dst", Arg::Colon(a)) => set_whole(Field::TpDst, a)?,
        ("dec_ttl", Arg::None) => Action::DecTtl,
        ("push_vlan", Arg::Colon(a)) => Action::PushVlan(int(a, u16::MAX).in_field(f)?),
        ("pop_vlan" | "strip_vlan", Arg::None) => Action::PopVlan,
        ("resubmit", Arg::Colon(a)) => Action::Resubmit(int(a, u8::MAX).in_field(f)?),
        ("resubmit", Arg::Parens(a)) => Action::Resubmit(resubmit_table(a).in_field(f)?),
        ("goto_table", Arg::Colon(a)) => Action::GotoTable(int(a, u8::MAX).in_field(f)?),
        ("group", Arg::Colon(a)) => Action::Group(int(a, u32::MAX).in_field(f)?),
        ("ct", Arg::None) => Action::Ct(Box::new(ct_defaults())),
        ("ct", Arg::Parens(a)) => Action::Ct(Box::new(parse_ct(a, f)?)),
        ("ct_lb", Arg::Parens(a)) => {
            let args = Args::parse(a, f, &["lb", "zone", "table"])?;
            Action::CtLb {
                lb: args.need("lb", |s| int(s, u32::MAX))?,
                zone: args.get("zone", ct_zone)?.unwrap_or(CtZone::Const(0)),
                table: args.get("table", |s| int(s, u8::MAX))?,
            }
        }
        ("ct_clear", Arg::None) => Action::CtClear,
        ("log", Arg::Colon(a)) => Action::Log(int(a, u32::MAX).in_field(f)?),
        ("move", Arg::Colon(a)) => parse_move(a).in_field(f)?,
        ("arp_responder", Arg::Parens(a)) => {
            let args = Args::parse(a, f, &["mac"])?;
            Action::Respond(Responder::Arp { mac: args.need("mac", mac)? })
        }
        ("icmp_echo_responder", Arg::None) => Action::Respond(Responder::IcmpEcho),
        ("time_exceeded", Arg::Parens(a)) => {
            let args = Args::parse(a, f, &["mac", "ip", "ip6"])?;
            Action::Respond(Responder::TimeExceeded {
                mac: args.need("mac", mac)?,
                ip: args.need("ip", ipv4)?,
                ip6: args.get("ip6", ipv6)?.unwrap_or(0),
            })
        }
        (name, _) => {
            return match ACTION_USAGE.iter().find(|(n, _)| *n == name) {
                Some((_, usage)) => bad(f, format!("{} is not {usage}", quoted(token))),
                None => bad(f, "unknown action"),
            };
        }
    };
    Ok(action)
}

fn parse_set_field(a: &str) -> Result<Action, String> {
    let (lhs, target) =
        a.split_once("->").ok_or_else(|| format!("{} is not set_field:VALUE[/MASK]->FIELD", quoted(a)))?;
    let target = target.trim();
    let field = field_named(target).ok_or_else(|| format!("{} is not a field", quoted(target)))?;
    if !field.writable() {
        return Err(format!("{} is not writable", field.name()));
    }
    let (value, mask) = match lhs.split_once('/') {
        Some((v, m)) => (field_value(field, v)?, field_mask(field, m)?),
        None => (field_value(field, lhs)?, u128::MAX),
    };
    Ok(Action::SetField { field, value, mask })
}

/// `SRC->DST`, each a subfield ([`subfield`]) of the same width; DST writable.
fn parse_move(a: &str) -> Result<Action, String> {
    let (src, dst) = a.split_once("->").ok_or_else(|| format!("{} is not move:FIELD[A..B]->FIELD[C..D]", quoted(a)))?;
    let (src, dst) = (subfield(src)?, subfield(dst)?);
    if !dst.field.writable() {
        return Err(format!("{} is not writable", dst.field.name()));
    }
    if src.bits != dst.bits {
        return Err(format!("{src} is {} bits but {dst} is {}: the widths must be equal", src.bits, dst.bits));
    }
    Ok(Action::Move { src, dst })
}

/// `FIELD`, `FIELD[]` (the whole field), `FIELD[N]` (one bit) or `FIELD[A..B]` (bits A to
/// B, bit 0 the least significant), as Open vSwitch writes subfields.
fn subfield(s: &str) -> Result<Subfield, String> {
    let s = s.trim();
    let (name, bits) = match s.split_once('[') {
        Some((name, rest)) => {
            let inner = rest.strip_suffix(']').ok_or_else(|| format!("{} does not end with ']'", quoted(s)))?;
            (name.trim(), Some(inner.trim()))
        }
        None => (s, None),
    };
    let field = field_named(name).ok_or_else(|| format!("{} is not a field", quoted(name)))?;
    let sub = match bits {
        None | Some("") => Subfield::whole(field),
        Some(range) => {
            let (first, last) = range.split_once("..").unwrap_or((range, range));
            let bit = |b: &str| int(b.trim(), u8::MAX).map_err(|_| format!("{} is not a bit range", quoted(s)));
            let (first, last) = (bit(first)?, bit(last)?);
            if first > last || u32::from(last) >= field.bits() {
                return Err(format!("{}: {} has bits 0..{}", quoted(s), field.name(), field.bits() - 1));
            }
            Subfield::range(field, first, last)
        }
    };
    Ok(sub)
}

fn resubmit_table(a: &str) -> Result<u8, String> {
    match a.split_once(',') {
        Some((port, table)) if port.trim().is_empty() => int(table, u8::MAX),
        _ => Err(format!("{} is not (,TABLE): resubmitting to a port is not supported", quoted(a))),
    }
}

fn ct_defaults() -> CtSpec {
    CtSpec { zone: CtZone::Const(0), commit: false, nat: None, table: None, set_mark: None, set_label: None }
}

/// `N` or a field name (whose low 16 bits are the zone).
fn ct_zone(s: &str) -> Result<CtZone, String> {
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        return int(s, u16::MAX).map(CtZone::Const);
    }
    field_named(s).map(CtZone::Field).ok_or_else(|| format!("{} is neither a zone number nor a field", quoted(s)))
}

fn parse_ct(text: &str, f: &str) -> Res<CtSpec> {
    let mut spec = ct_defaults();
    let mut given: Vec<&str> = Vec::new();
    for (_, token) in split_top(text, f)? {
        let token = token.trim();
        if token.is_empty() {
            continue;
        }
        let (name, arg) = split_arg(token).in_field(f)?;
        let sub = join_field(f, name);
        if given.contains(&name) {
            return bad(sub, "given twice");
        }
        given.push(name);
        match (name, arg) {
            ("commit", Arg::None) => spec.commit = true,
            ("zone", Arg::Eq(z)) => spec.zone = ct_zone(z.trim()).in_field(&sub)?,
            ("table", Arg::Eq(t)) => spec.table = Some(int(t, u8::MAX).in_field(&sub)?),
            ("nat", Arg::None) => spec.nat = Some(NatAction::Stored),
            ("nat", Arg::Parens(n)) => spec.nat = Some(parse_nat(n).in_field(&sub)?),
            ("exec", Arg::Parens(e)) => parse_exec(e, &sub, &mut spec)?,
            _ => {
                return bad(
                    sub,
                    "not one of commit, zone=ZONE, table=TABLE, nat, nat(src=...), nat(dst=...), exec(...)",
                );
            }
        }
    }
    Ok(spec)
}

/// `src=RANGE` or `dst=RANGE`.
fn parse_nat(text: &str) -> Result<NatAction, String> {
    match text.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
        Some(("src", range)) => Ok(NatAction::Src(nat_range(range)?)),
        Some(("dst", range)) => Ok(NatAction::Dst(nat_range(range)?)),
        _ => Err(format!("{} is not src=ADDR[-ADDR][:PORT[-PORT]] or dst=...", quoted(text))),
    }
}

/// `ADDR[-ADDR][:PORT[-PORT]]`, IPv6 addresses in brackets.
fn nat_range(s: &str) -> Result<NatRange, String> {
    let (addr_min, rest) = split_addr(s)?;
    let (addr_max, rest) = match rest.strip_prefix('-') {
        Some(after) => split_addr(after)?,
        None => (addr_min, rest),
    };
    let (port_min, port_max) = match rest.strip_prefix(':') {
        Some(ports) => {
            let (lo, hi) = ports.split_once('-').unwrap_or((ports, ports));
            (int(lo, u16::MAX)?, int(hi, u16::MAX)?)
        }
        None if rest.is_empty() => (0, 0),
        None => return Err(format!("{} is not ADDR[-ADDR][:PORT[-PORT]]", quoted(s))),
    };
    if is_v4(&addr_min) != is_v4(&addr_max) {
        return Err(format!("{}: the range mixes IPv4 and IPv6", quoted(s)));
    }
    if u128::from_be_bytes(addr_min) > u128::from_be_bytes(addr_max) || port_min > port_max {
        return Err(format!("{}: the range is empty (first is above last)", quoted(s)));
    }
    Ok(NatRange { addr_min, addr_max, port_min, port_max })
}

fn parse_exec(text: &str, f: &str, spec: &mut CtSpec) -> Res<()> {
    for (_, token) in split_top(text, f)? {
        let token = token.trim();
        if token.is_empty() {
            continue;
        }
        let usage = || format!("{} is not set_field:VALUE[/MASK]->ct_mark (or ->ct_label)", quoted(token));
        let Some((lhs, target)) = token.strip_prefix("set_field:").and_then(|a| a.split_once("->")) else {
            return bad(f, usage());
        };
        let (value, mask) = lhs.split_once('/').map_or((lhs, None), |(v, m)| (v, Some(m)));
        match target.trim() {
            "ct_mark" if spec.set_mark.is_some() => return bad(f, "ct_mark is set twice"),
            "ct_label" if spec.set_label.is_some() => return bad(f, "ct_label is set twice"),
            "ct_mark" => {
                let mask = mask.map_or(Ok(u32::MAX), |m| int(m, u32::MAX)).in_field(f)?;
                spec.set_mark = Some((int(value, u32::MAX).in_field(f)?, mask));
            }
            "ct_label" => {
                let mask = mask.map_or(Ok(u128::MAX), |m| int(m, u128::MAX)).in_field(f)?;
                spec.set_label = Some((int(value, u128::MAX).in_field(f)?, mask));
            }
            _ => return bad(f, usage()),
        }
    }
    Ok(())
}

fn format_action(a: &Action) -> String {
    match a {
        Action::Output(port) => format!("output:{port}"),
        Action::Drop => "drop".into(),
        Action::SetField { field, value, mask } => {
            let mask = if *mask == u128::MAX { String::new() } else { format!("/{}", format_mask(*field, *mask)) };
            format!("set_field:{}{mask}->{}", format_value(*field, *value), field.name())
        }
        Action::DecTtl => "dec_ttl".into(),
        Action::PushVlan(tci) => format!("push_vlan:{tci:#x}"),
        Action::PopVlan => "pop_vlan".into(),
        Action::Resubmit(table) => format!("resubmit(,{table})"),
        Action::GotoTable(table) => format!("goto_table:{table}"),
        Action::Group(id) => format!("group:{id}"),
        Action::Ct(spec) => {
            let mut parts = Vec::new();
            if spec.commit {
                parts.push("commit".to_string());
            }
            parts.push(format!("zone={}", format_zone(spec.zone)));
            if let Some(nat) = &spec.nat {
                parts.push(format_nat(nat));
            }
            let mut exec = Vec::new();
            if let Some((value, mask)) = spec.set_mark {
                let mask = if mask == u32::MAX { String::new() } else { format!("/{mask:#x}") };
                exec.push(format!("set_field:{value:#x}{mask}->ct_mark"));
            }
            if let Some((value, mask)) = spec.set_label {
                let mask = if mask == u128::MAX { String::new() } else { format!("/{mask:#x}") };
                exec.push(format!("set_field:{value:#x}{mask}->ct_label"));
            }
            if !exec.is_empty() {
                parts.push(format!("exec({})", exec.join(",")));
            }
            if let Some(table) = spec.table {
                parts.push(format!("table={table}"));
            }
            format!("ct({})", parts.join(","))
        }
        Action::Respond(r) => format_responder(r),
        Action::Move { src, dst } => format!("move:{src}->{dst}"),
        Action::CtClear => "ct_clear".into(),
        Action::Log(id) => format!("log:{id}"),
        Action::CtLb { lb, zone, table } => {
            let table = table.map(|t| format!(",table={t}")).unwrap_or_default();
            format!("ct_lb(lb={lb},zone={}{table})", format_zone(*zone))
        }
    }
}

fn format_zone(zone: CtZone) -> String {
    match zone {
        CtZone::Const(z) => z.to_string(),
        CtZone::Field(f) => f.name().to_string(),
    }
}

fn format_nat(nat: &NatAction) -> String {
    let range = |r: &NatRange| {
        let mut out = format_addr(&r.addr_min);
        if r.addr_max != r.addr_min {
            out.push('-');
            out.push_str(&format_addr(&r.addr_max));
        }
        match (r.port_min, r.port_max) {
            (0, 0) => {}
            (lo, hi) if lo == hi => out.push_str(&format!(":{lo}")),
            (lo, hi) => out.push_str(&format!(":{lo}-{hi}")),
        }
        out
    };
    match nat {
        NatAction::Stored => "nat".into(),
        NatAction::Src(r) => format!("nat(src={})", range(r)),
        NatAction::Dst(r) => format!("nat(dst={})", range(r)),
    }
}

fn format_responder(r: &Responder) -> String {
    match r {
        Responder::Arp { mac } => format!("arp_responder(mac={})", format_mac((*mac).into())),
        Responder::IcmpEcho => "icmp_echo_responder".into(),
        Responder::TimeExceeded { mac, ip, ip6 } => {
            let ip6 = if *ip6 == 0 { String::new() } else { format!(",ip6={}", Ipv6Addr::from(*ip6)) };
            format!("time_exceeded(mac={},ip={}{ip6})", format_mac((*mac).into()), Ipv4Addr::from(*ip))
        }
    }
}

fn format_dp_action(a: &DpAction) -> String {
    let recirc = |id: u32| if id == 0 { String::new() } else { format!(",recirc({id})") };
    match a {
        DpAction::Set(field, value) => format!("set({}={})", field.name(), format_value(*field, *value)),
        DpAction::PushVlan(tci) => format!("push_vlan:{tci:#x}"),
        DpAction::PopVlan => "pop_vlan".into(),
        DpAction::Output(port) => format!("output:{port}"),
        DpAction::Clone(inner) => format!("clone({})", format_dp_actions(inner)),
        DpAction::Ct { zone, commit, nat, mark, label, recirc: id } => {
            let spec = CtSpec {
                zone: CtZone::Const(*zone),
                commit: *commit,
                nat: *nat,
                table: None,
                set_mark: *mark,
                set_label: *label,
            };
            format!("{}{}", format_action(&Action::Ct(Box::new(spec))), recirc(*id))
        }
        DpAction::TunnelOutput(spec) => {
            let identity = if spec.identity == 0 { String::new() } else { format!(",identity={:#x}", spec.identity) };
            format!(
                "tunnel(port={},vni={},dst={},ingress={},egress={}{identity})",
                spec.tunnel.port,
                spec.vni,
                Ipv4Addr::from(spec.dst),
                spec.ingress,
                spec.egress
            )
        }
        DpAction::Respond(r) => format_responder(r),
        DpAction::Log(id) => format!("log({id})"),
        DpAction::CtLb { zone, lb, recirc: id } => format!("ct_lb(lb={lb},zone={zone}){}", recirc(*id)),
    }
}

// ---------------------------------------------------------------------------------------
// Groups, load balancers, tunnels.

fn parse_group(text: &str) -> Res<Group> {
    let tokens = split_top(text, "")?;
    let is_bucket = |t: &str| t.trim_start().starts_with("bucket=");
    let first_bucket = tokens.iter().position(|(_, t)| is_bucket(t)).unwrap_or(tokens.len());
    let (header, bucket_tokens) = tokens.split_at(first_bucket);
    let mut id = None;
    let mut select = None;
    let mut fields: Option<Vec<Field>> = None;
    for (_, token) in header {
        let token = token.trim();
        if token.is_empty() {
            continue;
        }
        if let Some(list) = token.strip_prefix("fields(") {
            if fields.is_some() {
                return bad("fields", "given twice");
            }
            fields = Some(group_fields(list.strip_suffix(')').unwrap_or(list)).in_field("fields")?);
            continue;
        }
        let (key, value) = token.split_once('=').map(|(k, v)| (k.trim(), v.trim())).unwrap_or((token, ""));
        match key {
            "group_id" => set_once(&mut id, "group_id", int(value, u32::MAX))?,
            "type" => {
                let kind = match value {
                    "select" => Ok(true),
                    "all" => Ok(false),
                    other => Err(format!("{} is not select or all", quoted(other))),
                };
                set_once(&mut select, "type", kind)?;
            }
            other => {
                return bad(label(other), "unknown group parameter (expected group_id=, type=, fields(...), bucket=)");
            }
        }
    }
    let Some(id) = id else {
        return bad("group_id", "is required");
    };
    let kind = match (select, fields) {
        (Some(true), fields) => GroupKind::Select { fields: fields.unwrap_or_default() },
        (Some(false), None) => GroupKind::All,
        (Some(false), Some(_)) => return bad("fields", "only select groups hash fields"),
        (None, _) => return bad("type", "is required (type=select or type=all)"),
    };
    let starts: Vec<usize> = bucket_tokens.iter().filter(|(_, t)| is_bucket(t)).map(|(start, _)| *start).collect();
    let mut buckets = Vec::new();
    for (n, &start) in starts.iter().enumerate() {
        // A bucket runs to the comma before the next `bucket=`.
        let end = starts.get(n + 1).map_or(text.len(), |next| next.saturating_sub(1));
        let segment = text.get(start..end).unwrap_or_default().trim_start();
        let body = segment.strip_prefix("bucket=").unwrap_or(segment);
        buckets.push(parse_bucket(body, n + 1)?);
    }
    Ok(Group { id, kind, buckets })
}

fn group_fields(list: &str) -> Result<Vec<Field>, String> {
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let field = field_named(name).ok_or_else(|| format!("{} is not a field", quoted(name)))?;
        if out.contains(&field) {
            return Err(format!("{} is listed twice", quoted(name)));
        }
        out.push(field);
    }
    Ok(out)
}

/// `weight:W,actions=...` (both optional: weight 1, no actions).
fn parse_bucket(text: &str, n: usize) -> Res<Bucket> {
    let ctx = format!("bucket {n}");
    let mut weight = None;
    for (start, token) in split_top(text, &ctx)? {
        let token = token.trim();
        if token.is_empty() {
            continue;
        }
        if let Some(w) = token.strip_prefix("weight:") {
            set_once(&mut weight, &format!("{ctx}/weight"), int(w, u16::MAX))?;
        } else if token.split_once('=').is_some_and(|(k, _)| k.trim() == "actions") {
            let actions = parse_actions(rest_after_eq(text, start), &format!("{ctx}/actions"))?;
            return Ok(Bucket { weight: weight.unwrap_or(1), actions });
        } else {
            return bad(ctx, format!("{} is neither weight:W nor actions=...", quoted(token)));
        }
    }
    Ok(Bucket { weight: weight.unwrap_or(1), actions: Vec::new() })
}

fn parse_load_balancer(text: &str) -> Res<LoadBalancer> {
    let args = Args::parse(text, "", &["lb", "backends", "affinity_timeout"])?;
    Ok(LoadBalancer {
        id: args.need("lb", |s| int(s, u32::MAX))?,
        backends: args.need("backends", backends)?,
        affinity_timeout_ns: args.get("affinity_timeout", seconds)?,
    })
}

fn parse_tunnel(text: &str) -> Res<TunnelPort> {
    let known =
        ["tunnel", "local_ip", "underlay_port", "local_mac", "next_hop_mac", "mtu", "ttl", "icmp_src", "icmp_src6"];
    let args = Args::parse(text, "", &known)?;
    let local_ip = args.need("local_ip", ipv4)?;
    Ok(TunnelPort {
        port: args.need("tunnel", |s| int(s, u32::MAX))?,
        local_ip,
        local_mac: args.get("local_mac", mac)?.unwrap_or(0),
        next_hop_mac: args.get("next_hop_mac", mac)?.unwrap_or(0),
        underlay_port: args.need("underlay_port", |s| int(s, u32::MAX))?,
        mtu: args.get("mtu", |s| int(s, u16::MAX))?.unwrap_or(1500),
        ttl: args.get("ttl", |s| int(s, u8::MAX))?.unwrap_or(64),
        icmp_src: args.get("icmp_src", ipv4)?.unwrap_or(local_ip),
        icmp_src6: args.get("icmp_src6", ipv6)?.unwrap_or(0),
    })
}

fn parse_tunnel_remotes(text: &str) -> Res<TunnelRemotes> {
    let args = Args::parse(text, "", &["tunnel_remotes", "remotes"])?;
    let port = args.need("tunnel_remotes", |s| int(s, u32::MAX))?;
    let remotes = args.need("remotes", |s| {
        let mut out = Vec::new();
        for item in s.split(';').map(str::trim).filter(|i| !i.is_empty()) {
            let a = item.parse::<Ipv4Addr>().map_err(|_| format!("{} is not an IPv4 address", quoted(item)))?;
            if out.contains(&u32::from(a)) {
                return Err(format!("{} is listed twice", quoted(item)));
            }
            out.push(u32::from(a));
        }
        Ok(out)
    })?;
    Ok(TunnelRemotes::new(port, remotes))
}

fn parse_zone_limit(text: &str) -> Res<ZoneLimit> {
    let args = Args::parse(text, "", &["ct_zone_limit", "limit"])?;
    let scope = args.need("ct_zone_limit", |s| match s {
        "default" => Ok(ZoneLimitScope::Default),
        zone => int(zone, u16::MAX).map(ZoneLimitScope::Zone).map_err(|e| format!("{e} (a zone, or default)")),
    })?;
    Ok(ZoneLimit { scope, limit: args.need("limit", |s| int(s, u32::MAX))? })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::exec::EncapSpec;

    fn file(text: &str) -> FlowFile {
        parse_flow_file(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    fn one_flow(text: &str) -> Flow {
        let mut flows = file(text).flows;
        assert_eq!(flows.len(), 1, "{text}");
        flows.remove(0)
    }

    fn actions(text: &str) -> Vec<Action> {
        one_flow(&format!("actions={text}")).actions
    }

    fn action(text: &str) -> Action {
        let mut all = actions(text);
        assert_eq!(all.len(), 1, "{text}");
        all.remove(0)
    }

    fn matches(text: &str) -> Match {
        one_flow(&format!("{text},actions=drop")).matches
    }

    /// Asserts that `text` fails on `line`, in `field`, with a message containing `needle`.
    fn assert_error(text: &str, line: usize, field: &str, needle: &str) {
        let e = parse_flow_file(text).expect_err(text);
        assert_eq!((e.line, e.field.as_str()), (line, field), "{e}");
        assert!(e.message.contains(needle), "{e:?} lacks {needle:?}");
    }

    fn ip(s: &str) -> u128 {
        u32::from(s.parse::<Ipv4Addr>().expect("test address")).into()
    }

    fn ip6(s: &str) -> u128 {
        s.parse::<Ipv6Addr>().expect("test address").into()
    }

    fn set(field: Field, value: u128) -> Action {
        Action::SetField { field, value, mask: u128::MAX }
    }

    #[test]
    fn comments_blank_lines_and_continuations() {
        let text = "# two pods\n\n  # indented comment\ntable=0,priority=10,in_port=1,\\\n  actions=output:2\r\n\
                    table=0,priority=10,in_port=2,actions=output:1\n";
        let f = file(text);
        assert_eq!(f.flows.len(), 2);
        assert_eq!(f.flows[0].matches, Match::ANY.with(Field::InPort, 1));
        assert_eq!(f.flows[0].actions, vec![Action::Output(2)]);
        // Errors count lines from 1, comments and continuations included, and name the
        // line the entry starts on.
        assert_error("# c\n\npriority=1,\\\nnw_dst=10.0.0.300,actions=drop", 3, "nw_dst", "\"10.0.0.300\"");
        assert_error("actions=drop\n# c\nnw_src=1.2.3.4,actions=bogus", 3, "actions/bogus", "unknown action");
        // A file ending in a continued line keeps what it has.
        assert_eq!(file("in_port=1,actions=drop\\").flows.len(), 1);
        assert_eq!(file("").flows.len(), 0);
    }

    #[test]
    fn flow_keys_in_any_order_with_defaults() {
        let f = one_flow("in_port=3,actions=output:1");
        assert_eq!((f.table, f.priority, f.cookie), (0, DEFAULT_PRIORITY, 0));
        let f = one_flow(" cookie=0x1f , in_port=3, priority=7 ,table=4, actions = output:1 , drop ");
        assert_eq!((f.table, f.priority, f.cookie), (4, 7, 0x1f));
        assert_eq!(f.actions, vec![Action::Output(1), Action::Drop]);
        assert_eq!(one_flow("priority=1,actions=").actions, vec![]);
    }

    #[test]
    fn shorthands_set_eth_type_and_nw_proto() {
        for (name, ether, proto) in SHORTHANDS {
            let m = matches(name);
            assert_eq!(m.value.get(Field::EthType), u128::from(ether), "{name}");
            assert_eq!(m.mask.get(Field::EthType), 0xffff, "{name}");
            match proto {
                Some(p) => assert_eq!(exact(&m, Field::NwProto), Some(p.into()), "{name}"),
                None => assert_eq!(m.mask.get(Field::NwProto), 0, "{name}"),
            }
            assert_eq!(format_match(&m), name);
        }
    }

    #[test]
    fn every_field_parses_by_name() {
        for f in Field::ALL {
            let m = matches(&format!("{}=1", f.name()));
            assert_eq!(exact(&m, *f), Some(1), "{f:?}");
            let mut masked = Match::ANY.with_masked(*f, 1, 1);
            // (A decimal mask on an address field is a prefix length: `/0x1` is bit 0.)
            assert_eq!(matches(&format!("{}=1/0x1", f.name())), masked, "{f:?}");
            masked.mask.set(*f, f.max_value());
            assert_eq!(matches(&format!("{}={}", f.name(), f.max_value())).mask, masked.mask, "{f:?}");
        }
    }

    #[test]
    fn open_vswitch_aliases() {
        let pairs = [
            ("dl_src=02:00:00:00:00:01", "eth_src=02:00:00:00:00:01"),
            ("dl_dst=02:00:00:00:00:01", "eth_dst=02:00:00:00:00:01"),
            ("dl_type=0x0800", "eth_type=0x800"),
            ("ip_src=10.0.0.1", "nw_src=10.0.0.1"),
            ("ip_dst=10.0.0.1", "nw_dst=10.0.0.1"),
            ("tcp_src=1", "tp_src=1"),
            ("udp_src=1", "tp_src=1"),
            ("tcp_dst=80", "tp_dst=80"),
            ("udp_dst=53", "tp_dst=53"),
            ("icmpv6_type=135", "icmp_type=135"),
            ("arp_spa=10.0.0.1", "nw_src=10.0.0.1"),
        ];
        for (alias, name) in pairs {
            assert_eq!(matches(alias), matches(name), "{alias}");
        }
    }

    #[test]
    fn address_values_and_masks() {
        let prefix = Match::ANY.with_masked(Field::Ipv4Dst, ip("10.1.0.0"), 0xffff_0000);
        assert_eq!(matches("nw_dst=10.1.0.0/16"), prefix);
        assert_eq!(matches("nw_dst=10.1.0.0/255.255.0.0"), prefix);
        assert_eq!(matches("nw_dst=10.1.0.0/0xffff0000"), prefix);
        // Host bits outside the mask are dropped, as Open vSwitch does.
        assert_eq!(matches("nw_dst=10.1.2.3/16"), prefix);
        assert_eq!(format_match(&prefix), "nw_dst=10.1.0.0/16");
        let odd = Match::ANY.with_masked(Field::Ipv4Src, ip("10.0.0.1"), 0xff00_00ff);
        assert_eq!(format_match(&odd), "nw_src=10.0.0.1/255.0.0.255");
        assert_eq!(matches("nw_src=0x0a000001"), Match::ANY.with(Field::Ipv4Src, ip("10.0.0.1")));
        assert_eq!(matches("tun_dst=192.0.2.1"), Match::ANY.with(Field::TunDst, ip("192.0.2.1")));

        let net6 = Match::ANY.with_masked(Field::Ipv6Dst, ip6("fd00::"), !0u128 << 64);
        assert_eq!(matches("ipv6_dst=fd00::/64"), net6);
        assert_eq!(matches("ipv6_dst=fd00::/ffff:ffff:ffff:ffff::"), net6);
        assert_eq!(format_match(&net6), "ipv6_dst=fd00::/64");

        let mac = Match::ANY.with_masked(Field::EthDst, 0x0100_5e00_0000, 0xffff_ff80_0000);
        assert_eq!(matches("eth_dst=01:00:5e:00:00:00/ff:ff:ff:80:00:00"), mac);
        assert_eq!(format_match(&mac), "eth_dst=01:00:5e:00:00:00/ff:ff:ff:80:00:00");
        assert_eq!(matches("eth_src=2:0:0:0:0:A").value.get(Field::EthSrc), 0x0200_0000_000a);
    }

    #[test]
    fn ct_state_flags_and_numbers() {
        let m = matches("ct_state=+trk+new-est");
        let bits = ct_state::TRK | ct_state::NEW;
        assert_eq!(m.value.get(Field::CtState), u128::from(bits));
        assert_eq!(m.mask.get(Field::CtState), u128::from(bits | ct_state::EST));
        assert_eq!(matches("ct_state=0x21/0x23"), m);
        assert_eq!(format_match(&m), "ct_state=+new-est+trk");
        // Two tokens on the same field combine when they agree.
        assert_eq!(matches("ct_state=+trk,ct_state=+new-est"), m);
        assert_eq!(format_match(&matches("ct_state=0x21")), "ct_state=0x21");
        // The NAT bits, as Open vSwitch names them.
        let m = matches("ct_state=+trk+dnat-snat");
        assert_eq!(m.value.get(Field::CtState), u128::from(ct_state::TRK | ct_state::DNAT));
        assert_eq!(m.mask.get(Field::CtState), u128::from(ct_state::TRK | ct_state::DNAT | ct_state::SNAT));
        assert_eq!(format_match(&m), "ct_state=+trk-snat+dnat");
        assert_eq!(matches("ct_state=0xa0/0xe0"), m);
        assert_eq!(format_ct_state(0xe2), "est|trk|snat|dnat");
        assert_eq!(parse_ct_state_flags("trk,est,snat").unwrap(), 0x62);
    }

    #[test]
    fn format_match_names_and_shorthands() {
        let m = matches("tcp,in_port=1,nw_src=10.0.0.1,tp_dst=80");
        assert_eq!(format_match(&m), "tcp,in_port=1,nw_src=10.0.0.1,tp_dst=80");
        // ARP matches use the ARP names of the shared bits.
        let m = matches("arp,arp_op=1,arp_tpa=10.0.0.1");
        assert_eq!(format_match(&m), "arp,arp_tpa=10.0.0.1,arp_op=1");
        // A protocol without a shorthand stays explicit.
        assert_eq!(format_match(&matches("ipv6,nw_proto=1")), "ipv6,nw_proto=1");
        assert_eq!(format_match(&matches("eth_type=0x88cc")), "eth_type=0x88cc");
        assert_eq!(format_match(&matches("ip,tp_dst=0x50/0xfff0")), "ip,tp_dst=0x50/0xfff0");
        assert_eq!(format_match(&Match::ANY), "");
    }

    #[test]
    fn every_action_kind() {
        let cases = [
            ("output:7", Action::Output(7)),
            ("drop", Action::Drop),
            ("set_field:10.0.0.1->nw_dst", set(Field::Ipv4Dst, ip("10.0.0.1"))),
            ("set_field:0x5/0xf->reg3", Action::SetField { field: Field::Reg3, value: 5, mask: 0xf }),
            ("set_field:fd00::1->ipv6_src", set(Field::Ipv6Src, ip6("fd00::1"))),
            ("set_field:1->arp_op", set(Field::ArpOp, 1)),
            ("mod_dl_src:02:00:00:00:00:01", set(Field::EthSrc, 0x0200_0000_0001)),
            ("mod_dl_dst:02:00:00:00:00:02", set(Field::EthDst, 0x0200_0000_0002)),
            ("mod_nw_src:10.0.0.1", set(Field::Ipv4Src, ip("10.0.0.1"))),
            ("mod_nw_dst:10.0.0.2", set(Field::Ipv4Dst, ip("10.0.0.2"))),
            ("mod_tp_src:1024", set(Field::TpSrc, 1024)),
            ("mod_tp_dst:80", set(Field::TpDst, 80)),
            ("dec_ttl", Action::DecTtl),
            ("push_vlan:0x64", Action::PushVlan(0x64)),
            ("pop_vlan", Action::PopVlan),
            ("strip_vlan", Action::PopVlan),
            ("resubmit(,3)", Action::Resubmit(3)),
            ("resubmit:3", Action::Resubmit(3)),
            ("goto_table:9", Action::GotoTable(9)),
            ("group:12", Action::Group(12)),
            ("ct", Action::Ct(Box::new(ct_defaults()))),
            ("ct(zone=5,table=2)", Action::Ct(Box::new(CtSpec::track(5, 2)))),
            ("ct_lb(lb=4,zone=reg6,table=3)", Action::CtLb { lb: 4, zone: CtZone::Field(Field::Reg6), table: Some(3) }),
            ("ct_lb(lb=4)", Action::CtLb { lb: 4, zone: CtZone::Const(0), table: None }),
            ("arp_responder(mac=02:00:00:00:00:01)", Action::Respond(Responder::Arp { mac: 0x0200_0000_0001 })),
            ("icmp_echo_responder", Action::Respond(Responder::IcmpEcho)),
            ("ct_clear", Action::CtClear),
            ("log:7", Action::Log(7)),
            (
                "move:nw_dst->eth_dst[0..31]",
                Action::Move { src: Subfield::whole(Field::Ipv4Dst), dst: Subfield::range(Field::EthDst, 0, 31) },
            ),
            (
                "move:reg1[]->eth_dst[0..31]",
                Action::Move { src: Subfield::whole(Field::Reg1), dst: Subfield::range(Field::EthDst, 0, 31) },
            ),
            (
                "move: ip_src [ 0..15 ] -> reg0[16..31]",
                Action::Move { src: Subfield::range(Field::Ipv4Src, 0, 15), dst: Subfield::range(Field::Reg0, 16, 31) },
            ),
            (
                "move:tp_dst[3]->metadata[63]",
                Action::Move {
                    src: Subfield::range(Field::TpDst, 3, 3),
                    dst: Subfield::range(Field::Metadata, 63, 63),
                },
            ),
            (
                "move:ipv6_dst[]->ipv6_src[]",
                Action::Move { src: Subfield::whole(Field::Ipv6Dst), dst: Subfield::whole(Field::Ipv6Src) },
            ),
            (
                "time_exceeded(mac=02:00:00:00:00:01,ip=10.0.0.1)",
                Action::Respond(Responder::TimeExceeded { mac: 0x0200_0000_0001, ip: ip("10.0.0.1") as u32, ip6: 0 }),
            ),
            (
                "time_exceeded(ip6=fd00::1, ip=10.0.0.1, mac=02:00:00:00:00:01)",
                Action::Respond(Responder::TimeExceeded {
                    mac: 0x0200_0000_0001,
                    ip: ip("10.0.0.1") as u32,
                    ip6: ip6("fd00::1"),
                }),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(action(text), expected, "{text}");
            // And back: the formatted action parses to the same action.
            assert_eq!(action(&format_action(&expected)), expected, "{text}");
        }
        // Subfields print as ovs-ofctl prints them: `[]` for a whole field.
        assert_eq!(format_action(&action("move:nw_dst->eth_dst[0..31]")), "move:nw_dst[]->eth_dst[0..31]");
        assert_eq!(format_action(&action("move:reg0[0..31]->metadata[5..36]")), "move:reg0[]->metadata[5..36]");
        assert_eq!(format_action(&action("move:tp_dst[3..3]->reg2[0]")), "move:tp_dst[3]->reg2[0]");
    }

    #[test]
    fn ct_arguments() {
        let Action::Ct(spec) = action(
            "ct(commit,zone=reg6,nat(src=10.0.0.1-10.0.0.9:1024-2047),\
             exec(set_field:0x1/0x3->ct_mark,set_field:0xab->ct_label),table=4)",
        ) else {
            panic!("not ct");
        };
        let expected = CtSpec {
            zone: CtZone::Field(Field::Reg6),
            commit: true,
            nat: Some(NatAction::Src(NatRange {
                addr_min: conntrack::v4(ip("10.0.0.1") as u32),
                addr_max: conntrack::v4(ip("10.0.0.9") as u32),
                port_min: 1024,
                port_max: 2047,
            })),
            table: Some(4),
            set_mark: Some((1, 3)),
            set_label: Some((0xab, u128::MAX)),
        };
        assert_eq!(*spec, expected);
        assert_eq!(
            format_action(&Action::Ct(spec)),
            "ct(commit,zone=reg6,nat(src=10.0.0.1-10.0.0.9:1024-2047),\
             exec(set_field:0x1/0x3->ct_mark,set_field:0xab->ct_label),table=4)"
        );

        let nat = |text: &str| match action(text) {
            Action::Ct(spec) => spec.nat,
            other => panic!("{other:?}"),
        };
        assert_eq!(nat("ct(nat)"), Some(NatAction::Stored));
        assert_eq!(nat("ct(commit,nat(dst=10.96.0.1:80))"), Some(NatAction::Dst(NatRange::v4_port(0x0a60_0001, 80))));
        assert_eq!(nat("ct(commit,nat(src=10.0.0.1))"), Some(NatAction::Src(NatRange::v4(0x0a00_0001))));
        let v6 = NatRange {
            addr_min: ip6("fd00::1").to_be_bytes(),
            addr_max: ip6("fd00::2").to_be_bytes(),
            port_min: 80,
            port_max: 80,
        };
        assert_eq!(nat("ct(commit,nat(dst=[fd00::1]-[fd00::2]:80))"), Some(NatAction::Dst(v6)));
        assert_eq!(format_nat(&NatAction::Dst(v6)), "nat(dst=[fd00::1]-[fd00::2]:80)");
    }

    #[test]
    fn group_lines() {
        let f = file(
            "group_id=1,type=select,fields(ip_src,tp_src),bucket=weight:3,actions=ct(commit,zone=1,\
             nat(dst=10.0.0.2:80)),output:2,bucket=actions=output:3\n\
             group_id=2,type=all,bucket=actions=output:1,bucket=weight:0,actions=resubmit(,4),output:2\n\
             group_id=3,type=select",
        );
        let nat = NatAction::Dst(NatRange::v4_port(0x0a00_0002, 80));
        let ct = CtSpec { zone: CtZone::Const(1), commit: true, nat: Some(nat), ..ct_defaults() };
        assert_eq!(
            f.groups[0],
            Group {
                id: 1,
                kind: GroupKind::Select { fields: vec![Field::Ipv4Src, Field::TpSrc] },
                buckets: vec![
                    Bucket { weight: 3, actions: vec![Action::Ct(Box::new(ct)), Action::Output(2)] },
                    Bucket { weight: 1, actions: vec![Action::Output(3)] },
                ],
            }
        );
        assert_eq!(
            f.groups[1],
            Group {
                id: 2,
                kind: GroupKind::All,
                buckets: vec![
                    Bucket { weight: 1, actions: vec![Action::Output(1)] },
                    Bucket { weight: 0, actions: vec![Action::Resubmit(4), Action::Output(2)] },
                ],
            }
        );
        assert_eq!(f.groups[2], Group { id: 3, kind: GroupKind::Select { fields: vec![] }, buckets: vec![] });
        assert_eq!(
            format_group(&f.groups[1]),
            "group_id=2,type=all,bucket=weight:1,actions=output:1,bucket=weight:0,actions=resubmit(,4),output:2"
        );
        for g in &f.groups {
            assert_eq!(file(&format_group(g)).groups, vec![g.clone()]);
        }
    }

    #[test]
    fn load_balancer_lines() {
        let f = file(
            "lb=1,backends=10.0.0.2:8080;10.0.0.3:8080\n\
             lb=2,backends=[fd00::2]:53; 10.0.0.4:53,affinity_timeout=10800\n\
             lb=3,backends=,affinity_timeout=0.25",
        );
        assert_eq!(
            f.load_balancers[0],
            LoadBalancer {
                id: 1,
                backends: vec![Backend::v4(0x0a00_0002, 8080), Backend::v4(0x0a00_0003, 8080)],
                affinity_timeout_ns: None
            }
        );
        let v6 = Backend { addr: ip6("fd00::2").to_be_bytes(), port: 53 };
        assert_eq!(f.load_balancers[1].backends, vec![v6, Backend::v4(0x0a00_0004, 53)]);
        assert_eq!(f.load_balancers[1].affinity_timeout_ns, Some(10_800 * NS_PER_SEC));
        assert_eq!(f.load_balancers[2].backends, vec![]);
        assert_eq!(f.load_balancers[2].affinity_timeout_ns, Some(250_000_000));
        assert_eq!(
            format_load_balancer(&f.load_balancers[1]),
            "lb=2,backends=[fd00::2]:53;10.0.0.4:53,affinity_timeout=10800"
        );
        assert_eq!(format_load_balancer(&f.load_balancers[2]), "lb=3,backends=,affinity_timeout=0.25");
    }

    #[test]
    fn tunnel_lines() {
        let t = file("tunnel=9,local_ip=192.0.2.11,underlay_port=10").tunnels[0];
        assert_eq!(
            t,
            TunnelPort {
                port: 9,
                local_ip: 0xc000_020b,
                local_mac: 0,
                next_hop_mac: 0,
                underlay_port: 10,
                mtu: 1500,
                ttl: 64,
                icmp_src: 0xc000_020b,
                icmp_src6: 0,
            }
        );
        let full = "tunnel=9,local_ip=192.0.2.11,underlay_port=10,local_mac=02:00:00:00:00:0b,\
                    next_hop_mac=02:00:00:00:00:01,mtu=9000,ttl=32,icmp_src=10.244.0.1,icmp_src6=fd00::1";
        let t = file(full).tunnels[0];
        assert_eq!((t.local_mac, t.next_hop_mac, t.mtu, t.ttl), (0x0200_0000_000b, 0x0200_0000_0001, 9000, 32));
        assert_eq!((t.icmp_src, t.icmp_src6), (0x0af4_0001, ip6("fd00::1")));
        assert_eq!(format_tunnel(&t), full);
    }

    #[test]
    fn tunnel_remotes_and_zone_limit_lines() {
        let f = file(
            "tunnel_remotes=3,remotes=192.0.2.12;192.0.2.11\ntunnel_remotes=4,remotes=\n\
             ct_zone_limit=default,limit=1000\nct_zone_limit=32768,limit=0",
        );
        assert_eq!(f.tunnel_remotes, [TunnelRemotes::new(3, [0xc000_020b, 0xc000_020c]), TunnelRemotes::new(4, [])]);
        assert_eq!(
            f.zone_limits,
            [
                ZoneLimit { scope: ZoneLimitScope::Default, limit: 1000 },
                ZoneLimit { scope: ZoneLimitScope::Zone(32768), limit: 0 }
            ]
        );
        // Sorted when read; written back as read.
        assert_eq!(format_tunnel_remotes(&f.tunnel_remotes[0]), "tunnel_remotes=3,remotes=192.0.2.11;192.0.2.12");
        assert_eq!(format_tunnel_remotes(&f.tunnel_remotes[1]), "tunnel_remotes=4,remotes=");
        assert_eq!(file(&format_flow_file(&f)), f);
        let kinds: Vec<&str> = f
            .to_mods()
            .iter()
            .map(|m| match m {
                FlowMod::SetTunnelRemotes(_) => "remotes",
                FlowMod::SetZoneLimit(_) => "limit",
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(kinds, ["remotes", "remotes", "limit", "limit"]);
        assert_error("tunnel_remotes=3", 1, "remotes", "required");
        assert_error("tunnel_remotes=3,remotes=192.0.2.1;x", 1, "remotes", "\"x\" is not an IPv4 address");
        assert_error("tunnel_remotes=3,remotes=192.0.2.1;192.0.2.1", 1, "remotes", "listed twice");
        assert_error("tunnel_remotes=3,remotes=\ntunnel_remotes=3,remotes=", 2, "tunnel_remotes", "line 1");
        assert_error("ct_zone_limit=65536,limit=1", 1, "ct_zone_limit", "a zone, or default");
        assert_error("ct_zone_limit=all,limit=1", 1, "ct_zone_limit", "not a number");
        assert_error("ct_zone_limit=7", 1, "limit", "required");
        assert_error("ct_zone_limit=default,limit=1\nct_zone_limit=default,limit=2", 2, "ct_zone_limit", "line 1");
        assert_error("ct_zone_limit=7,limit=1,remotes=", 1, "remotes", "unknown parameter");
    }

    #[test]
    fn to_mods_puts_dependencies_first() {
        let f = file(
            "priority=1,actions=group:1\ngroup_id=1,type=all\nlb=1,backends=\n\
             tunnel=9,local_ip=192.0.2.1,underlay_port=1\npriority=2,actions=drop",
        );
        let kinds: Vec<&str> = f
            .to_mods()
            .iter()
            .map(|m| match m {
                FlowMod::AddTunnelPort(_) => "tunnel",
                FlowMod::AddLoadBalancer(_) => "lb",
                FlowMod::AddGroup(_) => "group",
                FlowMod::AddFlow(f) if f.priority == 1 => "flow1",
                FlowMod::AddFlow(_) => "flow2",
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(kinds, ["tunnel", "lb", "group", "flow1", "flow2"]);
        assert_eq!(file(&format_flow_file(&f)), f);
    }

    #[test]
    fn packets() {
        let key = parse_packet("in_port=1,tcp,nw_src=10.0.0.1,nw_dst=10.0.0.2,tp_src=1234,tp_dst=80,tcp_flags=0x2")
            .expect("packet");
        let expected = [
            (Field::InPort, 1),
            (Field::EthType, 0x0800),
            (Field::NwProto, 6),
            (Field::Ipv4Src, ip("10.0.0.1")),
            (Field::Ipv4Dst, ip("10.0.0.2")),
            (Field::TpSrc, 1234),
            (Field::TpDst, 80),
            (Field::TcpFlags, 2),
            (Field::NwTtl, u128::from(DEFAULT_PACKET_TTL)),
        ];
        let mut want = FlowKey::ZERO;
        for (f, v) in expected {
            want.set(f, v);
        }
        assert_eq!(key, want);
        assert_eq!(
            format_packet(&key),
            "tcp,in_port=1,nw_src=10.0.0.1,nw_dst=10.0.0.2,nw_ttl=64,tp_src=1234,tp_dst=80,tcp_flags=0x2"
        );
        assert_eq!(parse_packet("ipv6,nw_ttl=1").expect("packet").get(Field::NwTtl), 1);
        assert_eq!(parse_packet("arp").expect("packet").get(Field::NwTtl), 0);
        assert_eq!(parse_packet("ct_state=+trk+est").expect("packet").get(Field::CtState), 0x22);
        let natted = parse_packet("ct_state=+trk+est+rpl+dnat").expect("packet");
        assert_eq!(format_packet(&natted), "ct_state=+est+rpl+trk+dnat");
        assert_eq!(parse_packet(&format_packet(&natted)), Ok(natted));
        assert_eq!(parse_packet("  \n# nothing\n"), Ok(FlowKey::ZERO));

        let e = parse_packet("ip,nw_src=10.0.0.0/8").expect_err("mask");
        assert_eq!((e.line, e.field.as_str()), (1, "nw_src"));
        let e = parse_packet("ip,\\\nnw_src=10.0.0.1,nw_src=10.0.0.2").expect_err("conflict");
        assert_eq!((e.line, e.field.as_str()), (1, "nw_src"));
        let e = parse_packet("ip\nudp").expect_err("two lines");
        assert_eq!((e.line, e.field.as_str()), (2, "packet"));
        let e = parse_packet("priority=1").expect_err("flow key");
        assert_eq!(e.field, "priority");
    }

    #[test]
    fn dp_actions() {
        let tunnel = file("tunnel=9,local_ip=192.0.2.1,underlay_port=1").tunnels[0];
        let actions = vec![
            DpAction::Set(Field::Ipv4Dst, ip("10.0.0.2")),
            DpAction::PushVlan(0x64),
            DpAction::PopVlan,
            DpAction::Clone(vec![DpAction::Output(1)]),
            DpAction::Ct { zone: 5, commit: true, nat: Some(NatAction::Stored), mark: None, label: None, recirc: 3 },
            DpAction::TunnelOutput(Box::new(EncapSpec {
                vni: 7,
                dst: 0xc000_0202,
                ingress: 1,
                egress: 2,
                identity: 0,
                tunnel,
            })),
            DpAction::Respond(Responder::IcmpEcho),
            DpAction::CtLb { zone: 5, lb: 2, recirc: 4 },
            DpAction::Output(2),
        ];
        assert_eq!(
            format_dp_actions(&actions),
            "set(nw_dst=10.0.0.2),push_vlan:0x64,pop_vlan,clone(output:1),ct(commit,zone=5,nat),recirc(3),\
             tunnel(port=9,vni=7,dst=192.0.2.2,ingress=1,egress=2),icmp_echo_responder,\
             ct_lb(lb=2,zone=5),recirc(4),output:2"
        );
        assert_eq!(format_dp_actions(&[]), "drop");
    }

    #[test]
    fn errors_name_line_field_and_value() {
        let e = parse_flow_file("\n\nnw_dst=10.0.0.300,actions=drop").expect_err("bad address");
        assert_eq!(e.to_string(), "line 3: nw_dst: \"10.0.0.300\" is not an IPv4 address");

        // Values and masks wider than the field.
        assert_error("nw_proto=256,actions=drop", 1, "nw_proto", "does not fit in nw_proto (8 bits)");
        assert_error("reg0=1/0x1ffffffff,actions=drop", 1, "reg0", "does not fit");
        assert_error("nw_src=10.0.0.0/33,actions=drop", 1, "nw_src", "prefix length");
        assert_error("table=256,actions=drop", 1, "table", "larger than 255");
        assert_error("actions=set_field:256->nw_ttl", 1, "actions/set_field", "nw_ttl (8 bits)");
        // Unknown names.
        assert_error("nw_scr=10.0.0.1,actions=drop", 1, "nw_scr", "unknown field");
        assert_error("tpc,actions=drop", 1, "tpc", "shorthand");
        assert_error("actions=outptu:1", 1, "actions/outptu", "unknown action");
        assert_error("actions=output", 1, "actions/output", "output:PORT");
        assert_error("actions=ct(zone=1,foo)", 1, "actions/ct/foo", "not one of");
        assert_error("actions=ct(zone=1,zone=2)", 1, "actions/ct/zone", "twice");
        assert_error("actions=ct(zone=nosuch)", 1, "actions/ct/zone", "neither");
        assert_error("actions=ct_lb(zone=1)", 1, "actions/ct_lb/lb", "required");
        assert_error("actions=time_exceeded(mac=1)", 1, "actions/time_exceeded/ip", "required");
        // Values in the wrong syntax.
        assert_error("eth_src=02:00:00:00:00,actions=drop", 1, "eth_src", "not a MAC address");
        assert_error("ipv6_src=fd00:::1,actions=drop", 1, "ipv6_src", "not an IPv6 address");
        assert_error("ct_state=+trk+bogus,actions=drop", 1, "ct_state", "not a ct_state flag");
        assert_error("ct_state=+trk-trk,actions=drop", 1, "ct_state", "twice");
        assert_error("tp_dst=http,actions=drop", 1, "tp_dst", "not a number");
        // Actions.
        assert_error("actions=set_field:1->ct_state", 1, "actions/set_field", "ct_state is not writable");
        assert_error("actions=set_field:1->nope", 1, "actions/set_field", "not a field");
        assert_error("actions=move:nw_dst->eth_dst", 1, "actions/move", "32 bits but eth_dst[] is 48");
        assert_error("actions=move:reg0->ct_mark", 1, "actions/move", "ct_mark is not writable");
        assert_error("actions=move:reg0[0..32]->reg1[]", 1, "actions/move", "reg0 has bits 0..31");
        assert_error("actions=move:reg0[9..2]->reg1[0..7]", 1, "actions/move", "bits 0..31");
        assert_error("actions=move:reg0[x]->reg1[0]", 1, "actions/move", "not a bit range");
        assert_error("actions=move:reg0[0->reg1[0]", 1, "actions/move", "']'");
        assert_error("actions=move:nope[]->reg1[]", 1, "actions/move", "\"nope\" is not a field");
        assert_error("actions=move:reg0", 1, "actions/move", "FIELD[A..B]->FIELD[C..D]");
        assert_error("actions=ct_clear(1)", 1, "actions/ct_clear", "is not ct_clear");
        assert_error("actions=resubmit(1,2)", 1, "actions/resubmit", "port");
        assert_error("actions=ct(commit,nat(src=10.0.0.9-10.0.0.1))", 1, "actions/ct/nat", "empty");
        assert_error("actions=ct(commit,nat(src=10.0.0.1:90-80))", 1, "actions/ct/nat", "empty");
        assert_error("actions=ct(commit,nat(dst=fd00::1))", 1, "actions/ct/nat", "brackets");
        assert_error("actions=ct(commit,nat(dst=[fd00::1]-10.0.0.1))", 1, "actions/ct/nat", "mixes");
        assert_error("actions=ct(exec(set_field:1->reg0))", 1, "actions/ct/exec", "ct_mark");
        assert_error("actions=ct(exec(set_field:1->ct_mark,set_field:2->ct_mark))", 1, "actions/ct/exec", "twice");
        // Structure.
        assert_error("in_port=1", 1, "actions", "no actions=");
        assert_error("in_port=1,in_port=1,actions=ct(zone=1", 1, "actions", "'('");
        assert_error("in_port=1),actions=drop", 1, "in_port", "')'");
        assert_error("actions=ct(zone=1)x", 1, "actions/ct", "after its closing");
        assert_error("priority=1,priority=2,actions=drop", 1, "priority", "twice");
        assert_error("tcp,nw_proto=17,actions=drop", 1, "nw_proto", "contradicts the earlier \"tcp\"");
        assert_error("arp_spa=10.0.0.1,nw_src=10.0.0.2,actions=drop", 1, "nw_src", "arp_spa=10.0.0.1");
        // Groups, load balancers, tunnels.
        assert_error("group_id=1,bucket=actions=drop", 1, "type", "required");
        assert_error("group_id=1,type=any", 1, "type", "select or all");
        assert_error("group_id=1,type=all,fields(nw_src)", 1, "fields", "select");
        assert_error("group_id=1,type=select,fields(nw_src,nw_src)", 1, "fields", "twice");
        assert_error("group_id=1,type=all,bucket=weight:70000", 1, "bucket 1/weight", "larger");
        assert_error("group_id=1,type=all,bucket=output:1", 1, "bucket 1", "neither");
        assert_error(
            "group_id=1,type=all,bucket=actions=drop,bucket=actions=bad",
            1,
            "bucket 2/actions/bad",
            "unknown",
        );
        assert_error("lb=1", 1, "backends", "required");
        assert_error("lb=1,backends=10.0.0.1", 1, "backends", "needs a port");
        assert_error("lb=1,backends=10.0.0.1:80;10.0.0.1:80", 1, "backends", "twice");
        assert_error("lb=1,backends=,affinity_timeout=1.5s", 1, "affinity_timeout", "seconds");
        assert_error("lb=1,backends=,weight=1", 1, "weight", "unknown parameter");
        assert_error("tunnel=1,local_ip=10.0.0.1", 1, "underlay_port", "required");
        assert_error("tunnel=1,local_ip=10.0.0.1,underlay_port=2,mtu=99999", 1, "mtu", "larger");
    }

    #[test]
    fn duplicate_definitions_name_both_lines() {
        assert_error(
            "group_id=1,type=all\n\ngroup_id=1,type=all",
            3,
            "group_id",
            "group 1 is already defined on line 1",
        );
        assert_error("lb=4,backends=\nlb=4,backends=", 2, "lb", "load balancer 4 is already defined on line 1");
        let tunnel = "tunnel=9,local_ip=10.0.0.1,underlay_port=1";
        assert_error(&format!("{tunnel}\n{tunnel}"), 2, "tunnel", "tunnel 9 is already defined on line 1");
        assert_error(
            "table=1,priority=5,tcp,actions=drop\n#\ntable=1,tcp,priority=5,actions=output:1",
            3,
            "flow",
            "already defined on line 1",
        );
        // Same match in another table or at another priority is a different flow.
        assert_eq!(
            file("table=1,tcp,actions=drop\ntable=2,tcp,actions=drop\ntable=1,priority=1,tcp,actions=drop").flows.len(),
            3
        );
    }

    #[test]
    fn display_order_covers_every_field_once() {
        for f in Field::ALL {
            let n = DISPLAY_ORDER.iter().filter(|d| *d == f).count();
            let alias = bits_owner(*f) != *f;
            assert_eq!(n, usize::from(!alias), "{f:?}");
        }
    }

    #[test]
    fn odd_input_is_an_error_not_a_panic() {
        let inputs = [
            "\\",
            "(",
            ")",
            ",,,",
            "=",
            "actions=(",
            "actions=)",
            "é=ü,actions=ü:ü",
            "nw_src=1.2.3.4/é,actions=drop",
            "actions=set_field:->",
            "actions=set_field:é->eth_src",
            "actions=ct(nat(src=[))",
            "actions=ct(nat(src=[]:))",
            "group_id=1,type=select,fields(",
            "group_id=1,type=all,bucket=",
            "group_id=1,type=all,bucket=weight:",
            "lb=1,backends=[::1]",
            "lb=1,backends=[",
            "lb=1,backends=;;",
            "tunnel=",
            "ct_state=+",
            "ct_state=-é",
            "actions=time_exceeded(",
            "actions=ct(exec(set_field:1/->ct_mark))",
            "affinity_timeout=.",
            "lb=1,backends=,affinity_timeout=99999999999999999999",
            "reg0=0x,actions=drop",
            "in_port=999999999999999999999999999999999999999999,actions=drop",
            "actions=output:-1",
            "actions=move:",
            "actions=move:->",
            "actions=move:[]->[]",
            "actions=move:reg0[é]->reg1[]",
            "actions=move:reg0[..]->reg1[..]",
            "actions=move:reg0[0..]->reg1[..0]",
            "actions=move:reg0[255..255]->reg1[0]",
            "actions=move:reg0[0..255]->reg1[0..255]",
            "actions=move:ipv6_src[0..127]->ct_label[0..127]",
            "actions=move:reg0]->reg1[",
        ];
        for input in inputs {
            let _ = parse_flow_file(input);
            let _ = parse_packet(input);
        }
    }

    /// The example file of `docs/flow-syntax.md`.
    fn documented_example() -> String {
        let doc = include_str!("../../docs/flow-syntax.md");
        let start = doc.find("<!-- example-start").expect("example start marker");
        let end = doc.find("<!-- example-end -->").expect("example end marker");
        let block = &doc[start..end];
        block.lines().skip(1).filter(|l| !l.starts_with("```")).map(|l| format!("{l}\n")).collect()
    }

    /// Runs `key` through the pipeline, following one recirculation as a new connection.
    fn run(p: &crate::pipeline::Pipeline, key: FlowKey) -> Vec<DpAction> {
        let first = p.translate(&key).actions;
        let recirc = match first.last() {
            Some(DpAction::Ct { recirc, .. }) if *recirc != 0 => *recirc,
            _ => return first,
        };
        let mut again = key;
        again.set(Field::RecircId, recirc.into());
        again.set(Field::CtState, (ct_state::TRK | ct_state::NEW).into());
        p.translate(&again).actions
    }

    #[test]
    fn documented_example_parses_and_runs() {
        let example = file(&documented_example());
        assert_eq!((example.flows.len(), example.groups.len(), example.load_balancers.len()), (26, 1, 1));
        let mut p = crate::pipeline::Pipeline::new();
        for m in example.to_mods() {
            p.apply(&m).unwrap_or_else(|e| panic!("{m:?}: {e}"));
        }
        let packet = |text: &str| parse_packet(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let pod_a = "in_port=1,eth_src=02:00:0a:00:01:02,nw_src=10.0.1.2,tp_src=40000,tcp_flags=0x2";

        let arp = packet("in_port=1,arp,arp_op=1,arp_spa=10.0.1.2,arp_tpa=10.0.1.1");
        assert_eq!(run(&p, arp), vec![DpAction::Respond(Responder::Arp { mac: 0x0200_0000_0101 })]);

        let to_b = packet(&format!("{pod_a},tcp,eth_dst=02:00:0a:00:01:03,nw_dst=10.0.1.3,tp_dst=8080"));
        let switched = run(&p, to_b);
        assert_eq!(switched.last(), Some(&DpAction::Output(2)));
        assert!(!switched.iter().any(|a| matches!(a, DpAction::Set(Field::NwTtl | Field::EthSrc, _))), "{switched:?}");

        let to_c = format!("{pod_a},tcp,eth_dst=02:00:00:00:01:01,nw_dst=10.0.2.2,tp_dst=8080");
        let routed = run(&p, packet(&to_c));
        assert!(routed.contains(&DpAction::Set(Field::NwTtl, 63)), "{routed:?}");
        assert!(routed.contains(&DpAction::Set(Field::EthSrc, 0x0200_0000_0201)), "{routed:?}");
        assert!(routed.contains(&DpAction::Set(Field::EthDst, 0x0200_0a00_0202)), "{routed:?}");
        assert_eq!(routed.last(), Some(&DpAction::Output(3)));
        let expired = run(&p, packet(&format!("{to_c},nw_ttl=1")));
        let answer = Responder::TimeExceeded { mac: 0x0200_0000_0101, ip: 0x0a00_0101, ip6: 0 };
        assert_eq!(expired, vec![DpAction::Respond(answer)]);

        let to_vip = run(&p, packet(&format!("{pod_a},tcp,nw_dst=10.96.0.10,tp_dst=80")));
        assert!(matches!(to_vip.as_slice(), [DpAction::CtLb { lb: 1, zone: 1, recirc }] if *recirc != 0), "{to_vip:?}");

        let out = run(&p, packet(&format!("{pod_a},udp,nw_dst=192.0.2.1,tp_dst=53")));
        assert!(matches!(out.last(), Some(DpAction::Output(10 | 11))), "{out:?}");

        let spoofed = packet("in_port=1,tcp,eth_src=02:00:0a:00:01:02,nw_src=10.0.1.3,nw_dst=10.0.1.2");
        assert_eq!(run(&p, spoofed), vec![]);
    }

    // ---- Round trips on random values. ----

    fn any_field() -> impl Strategy<Value = Field> {
        prop::sample::select(Field::ALL.to_vec())
    }

    fn writable_field() -> impl Strategy<Value = Field> {
        prop::sample::select(Field::ALL.iter().copied().filter(|f| f.writable()).collect::<Vec<_>>())
    }

    /// A mask of `f`: whole, a prefix, or random bits.
    fn mask_of(f: Field, bits: u128, shape: u8) -> u128 {
        let full = f.max_value();
        match shape % 3 {
            0 => full,
            1 => full ^ full.checked_shr((bits % (u128::from(f.bits()) + 1)) as u32).unwrap_or(0),
            _ => bits & full,
        }
    }

    fn match_strategy() -> impl Strategy<Value = Match> {
        let clause = (any_field(), any::<u128>(), any::<u128>(), any::<u8>());
        let ether = prop_oneof![Just(0x0800u128), Just(0x86dd), Just(0x0806), any::<u128>()];
        let proto = prop_oneof![Just(6u128), Just(17), Just(1), Just(58), Just(132), any::<u128>()];
        (prop::collection::vec(clause, 0..8), prop::option::of(ether), prop::option::of(proto)).prop_map(
            |(clauses, ether, proto)| {
                let mut m = Match::ANY;
                for (f, v, bits, shape) in clauses {
                    m = m.with_masked(f, v, mask_of(f, bits, shape));
                }
                if let Some(e) = ether {
                    m = m.with(Field::EthType, e & 0xffff);
                }
                if let Some(p) = proto {
                    m = m.with(Field::NwProto, p & 0xff);
                }
                m
            },
        )
    }

    fn zone_strategy() -> impl Strategy<Value = CtZone> {
        prop_oneof![any::<u16>().prop_map(CtZone::Const), any_field().prop_map(CtZone::Field)]
    }

    fn nat_range_strategy() -> impl Strategy<Value = NatRange> {
        let v4 = (any::<u32>(), any::<u32>()).prop_map(|(a, b)| (conntrack::v4(a.min(b)), conntrack::v4(a.max(b))));
        let one = any::<u32>().prop_map(|a| (conntrack::v4(a), conntrack::v4(a)));
        let v6 = (any::<u128>(), any::<u128>())
            .prop_filter("one family", |(a, b)| !is_v4(&a.to_be_bytes()) && !is_v4(&b.to_be_bytes()))
            .prop_map(|(a, b)| (a.min(b).to_be_bytes(), a.max(b).to_be_bytes()));
        let ports = prop_oneof![Just((0u16, 0u16)), any::<u16>().prop_map(|p| (p, p)), any::<(u16, u16)>()];
        (prop_oneof![v4, one, v6], ports).prop_map(|((addr_min, addr_max), (a, b))| NatRange {
            addr_min,
            addr_max,
            port_min: a.min(b),
            port_max: a.max(b),
        })
    }

    fn ct_strategy() -> impl Strategy<Value = Action> {
        let nat = prop_oneof![
            Just(NatAction::Stored),
            nat_range_strategy().prop_map(NatAction::Src),
            nat_range_strategy().prop_map(NatAction::Dst),
        ];
        let mark = prop_oneof![any::<u32>().prop_map(|v| (v, u32::MAX)), any::<(u32, u32)>()];
        let label = prop_oneof![any::<u128>().prop_map(|v| (v, u128::MAX)), any::<(u128, u128)>()];
        (
            zone_strategy(),
            any::<bool>(),
            prop::option::of(nat),
            prop::option::of(any::<u8>()),
            prop::option::of(mark),
            prop::option::of(label),
        )
            .prop_map(|(zone, commit, nat, table, set_mark, set_label)| {
                Action::Ct(Box::new(CtSpec { zone, commit, nat, table, set_mark, set_label }))
            })
    }

    fn action_strategy() -> impl Strategy<Value = Action> {
        let set_field =
            (writable_field(), any::<u128>(), any::<u128>(), any::<u8>()).prop_map(|(f, v, bits, shape)| {
                let mask = if shape % 4 == 3 { u128::MAX } else { mask_of(f, bits, shape) };
                Action::SetField { field: f, value: v & f.max_value(), mask }
            });
        let mac = any::<u64>().prop_map(|m| m & 0xffff_ffff_ffff);
        let respond = prop_oneof![
            mac.clone().prop_map(|mac| Responder::Arp { mac }),
            Just(Responder::IcmpEcho),
            (mac, any::<u32>(), prop_oneof![Just(0u128), any::<u128>()])
                .prop_map(|(mac, ip, ip6)| Responder::TimeExceeded { mac, ip, ip6 }),
        ];
        prop_oneof![
            any::<u32>().prop_map(Action::Output),
            Just(Action::Drop),
            set_field,
            Just(Action::DecTtl),
            any::<u16>().prop_map(Action::PushVlan),
            Just(Action::PopVlan),
            any::<u8>().prop_map(Action::Resubmit),
            any::<u8>().prop_map(Action::GotoTable),
            any::<u32>().prop_map(Action::Group),
            ct_strategy(),
            respond.prop_map(Action::Respond),
            (any::<u32>(), zone_strategy(), prop::option::of(any::<u8>())).prop_map(|(lb, zone, table)| Action::CtLb {
                lb,
                zone,
                table
            }),
        ]
    }

    fn flow_strategy() -> impl Strategy<Value = Flow> {
        (any::<u8>(), any::<u16>(), match_strategy(), any::<u64>(), prop::collection::vec(action_strategy(), 0..6))
            .prop_map(|(table, priority, matches, cookie, actions)| Flow { table, priority, matches, cookie, actions })
    }

    fn group_strategy() -> impl Strategy<Value = Group> {
        let kind = prop_oneof![
            Just(GroupKind::All),
            prop::collection::vec(any_field(), 0..5).prop_map(|mut fields| {
                let mut seen = Vec::new();
                fields.retain(|f| {
                    if seen.contains(f) {
                        false
                    } else {
                        seen.push(*f);
                        true
                    }
                });
                GroupKind::Select { fields }
            }),
        ];
        let bucket = (any::<u16>(), prop::collection::vec(action_strategy(), 0..4))
            .prop_map(|(weight, actions)| Bucket { weight, actions });
        (any::<u32>(), kind, prop::collection::vec(bucket, 0..4)).prop_map(|(id, kind, buckets)| Group {
            id,
            kind,
            buckets,
        })
    }

    fn lb_strategy() -> impl Strategy<Value = LoadBalancer> {
        let backend = prop_oneof![
            (any::<u32>(), any::<u16>()).prop_map(|(a, port)| Backend::v4(a, port)),
            (any::<u128>(), any::<u16>()).prop_map(|(a, port)| Backend { addr: a.to_be_bytes(), port }),
        ];
        (any::<u32>(), prop::collection::vec(backend, 0..5), prop::option::of(any::<u64>())).prop_map(
            |(id, mut backends, affinity_timeout_ns)| {
                let mut seen = Vec::new();
                backends.retain(|b| {
                    if seen.contains(b) {
                        false
                    } else {
                        seen.push(*b);
                        true
                    }
                });
                LoadBalancer { id, backends, affinity_timeout_ns }
            },
        )
    }

    fn tunnel_strategy() -> impl Strategy<Value = TunnelPort> {
        (any::<(u32, u32, u64, u64, u32)>(), any::<(u16, u8, u32, u128)>()).prop_map(
            |((port, local_ip, local_mac, next_hop_mac, underlay_port), (mtu, ttl, icmp_src, icmp_src6))| TunnelPort {
                port,
                local_ip,
                local_mac: local_mac & 0xffff_ffff_ffff,
                next_hop_mac: next_hop_mac & 0xffff_ffff_ffff,
                underlay_port,
                mtu,
                ttl,
                icmp_src,
                icmp_src6,
            },
        )
    }

    fn packet_strategy() -> impl Strategy<Value = FlowKey> {
        let ether = prop_oneof![Just(0x0800u128), Just(0x86dd), Just(0x0806), any::<u128>()];
        let proto = prop_oneof![Just(6u128), Just(17), Just(1), Just(58), any::<u128>()];
        (prop::collection::vec((any_field(), any::<u128>(), any::<bool>()), 0..12), ether, proto).prop_map(
            |(fields, ether, proto)| {
                let mut key = FlowKey::ZERO;
                key.set(Field::EthType, ether & 0xffff);
                key.set(Field::NwProto, proto & 0xff);
                for (f, v, small) in fields {
                    // Small values too, so that 0 and ct_state flags come up.
                    key.set(f, if small { v % 4 } else { v } & f.max_value());
                }
                key
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn flows_round_trip(flow in flow_strategy()) {
            let line = format_flow(&flow);
            let parsed = parse_flow_file(&line).map_err(|e| TestCaseError::fail(format!("{line}: {e}")))?;
            prop_assert_eq!(parsed.flows, vec![flow], "{}", line);
        }

        #[test]
        fn groups_load_balancers_and_tunnels_round_trip(
            group in group_strategy(),
            lb in lb_strategy(),
            tunnel in tunnel_strategy(),
        ) {
            let file = FlowFile {
                flows: vec![],
                groups: vec![group],
                load_balancers: vec![lb],
                tunnels: vec![tunnel],
                ..FlowFile::default()
            };
            let text = format_flow_file(&file);
            let parsed = parse_flow_file(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
            prop_assert_eq!(parsed, file, "{}", text);
        }

        #[test]
        fn packets_round_trip(key in packet_strategy()) {
            let text = format_packet(&key);
            let parsed = parse_packet(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
            prop_assert_eq!(parsed, key, "{}", text);
        }

        #[test]
        fn arbitrary_text_never_panics(text in "[a-z_0-9=,:;()\\[\\]/+.\\->\\\\ \n#]{0,80}") {
            if let Ok(file) = parse_flow_file(&text) {
                for flow in &file.flows {
                    let line = format_flow(flow);
                    prop_assert_eq!(&parse_flow_file(&line).map(|f| f.flows), &Ok(vec![flow.clone()]), "{}", line);
                }
            }
            let _ = parse_packet(&text);
        }
    }
}
