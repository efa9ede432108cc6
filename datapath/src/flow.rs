//! What the control plane installs: flows (table, priority, masked match, cookie,
//! actions), groups (select and all), and the modifications that add and remove them.

use crate::conntrack::NatAction;
use crate::key::{Field, FlowKey};
use crate::lb::LoadBalancer;

/// A masked match on a [`FlowKey`]. Invariant: `value & !mask == 0`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Match {
    /// The values of the matched bits.
    pub value: FlowKey,
    /// Which bits are matched.
    pub mask: FlowKey,
}

impl std::fmt::Debug for Match {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_map();
        for field in Field::ALL {
            let m = self.mask.get(*field);
            if m != 0 {
                let v = self.value.get(*field);
                if m == field.max_value() {
                    d.entry(&field.name(), &format_args!("{v:#x}"));
                } else {
                    d.entry(&field.name(), &format_args!("{v:#x}/{m:#x}"));
                }
            }
        }
        d.finish()
    }
}

impl Match {
    /// Matches every packet.
    pub const ANY: Match = Match { value: FlowKey::ZERO, mask: FlowKey::ZERO };

    /// Adds an exact match on `field`.
    pub fn with(self, field: Field, value: u128) -> Match {
        self.with_masked(field, value, u128::MAX)
    }

    /// Adds a masked match on `field` (bits outside `mask` are ignored).
    pub fn with_masked(mut self, field: Field, value: u128, mask: u128) -> Match {
        let mask = mask & field.max_value();
        let old_mask = self.mask.get(field);
        let old_value = self.value.get(field);
        self.mask.set(field, old_mask | mask);
        self.value.set(field, (old_value & !mask) | (value & mask));
        self
    }

    /// True if `key` has the matched values in every matched bit.
    #[inline]
    pub fn matches(&self, key: &FlowKey) -> bool {
        (0..key.w.len()).all(|i| key.w[i] & self.mask.w[i] == self.value.w[i])
    }

    /// Re-establishes the invariant `value & !mask == 0`.
    pub fn normalized(mut self) -> Match {
        self.value = self.value.and(&self.mask);
        self
    }
}

/// An OpenFlow-style action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send the packet, as modified so far, to a port.
    Output(u32),
    /// Stop processing the packet; outputs already made stand.
    Drop,
    /// Set the bits of `field` selected by `mask` to `value`.
    SetField {
        /// The field to write.
        field: Field,
        /// The new value.
        value: u128,
        /// Which bits of the field to write (`u128::MAX` for the whole field).
        mask: u128,
    },
    /// Decrement the IPv4 TTL / IPv6 hop limit; a packet whose TTL would reach 0 is
    /// dropped with [`DropReason::TtlExpired`](crate::DropReason::TtlExpired). Not IP: no-op.
    DecTtl,
    /// Push an 802.1Q tag with this TCI (VID and PCP; the present bit is implied).
    PushVlan(u16),
    /// Remove the 802.1Q tag, if any.
    PopVlan,
    /// Look the packet up in another table, run the winning flow's actions, come back.
    Resubmit(u8),
    /// Continue in a later table after this flow's actions (must be the last action and
    /// name a table greater than the flow's own).
    GotoTable(u8),
    /// Run a group.
    Group(u32),
    /// Send the packet through connection tracking (see [`CtSpec`]).
    Ct(Box<CtSpec>),
    /// Answer the packet from the datapath: the answer (if the packet is one the
    /// responder answers) leaves through the port the packet came in on.
    Respond(Responder),
    /// Copy bits from one field to another, as Open vSwitch's `move`: the destination
    /// bits get the source bits as the packet has them at this point. A header field may
    /// be written in part (the rest of it keeps its value). The megaflow then matches the
    /// source bits, so a cached decision is never reused for a packet whose source bits
    /// differ.
    Move {
        /// Bits read.
        src: Subfield,
        /// Bits written (a [writable](Field::writable) field; same width as `src`).
        dst: Subfield,
    },
    /// Forget the packet's conntrack state, as Open vSwitch's `ct_clear`: `ct_state`,
    /// `ct_zone`, `ct_mark` and `ct_label` read as 0 until the next recirculating `ct`.
    /// (A packet carries no other conntrack association: each `ct` looks its connection
    /// up from the headers.)
    CtClear,
    /// Record the packet (addresses, protocol, ports) under `id` in the datapath's audit
    /// log, within its rate limit ([`crate::audit`]); processing goes on. Runs for every
    /// packet, cached or not.
    Log(u32),
    /// Load-balance through conntrack: a packet of a known connection keeps its
    /// translation; a new one is given a backend of load balancer `lb` and committed with
    /// destination NAT to it; with no backends the client gets a TCP reset or an ICMP
    /// port unreachable. Then, like `ct(table=T)`, processing resumes at `table`.
    CtLb {
        /// Load balancer id.
        lb: u32,
        /// Conntrack zone.
        zone: CtZone,
        /// Table to resume in (must then be the flow's last action).
        table: Option<u8>,
    },
}

/// A range of bits of a field, as Open vSwitch's `NXM` subfields: `bits` bits starting
/// at bit `offset` (bit 0 is the least significant bit of the field's value).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Subfield {
    /// The field.
    pub field: Field,
    /// Lowest bit.
    pub offset: u8,
    /// Number of bits (at least 1).
    pub bits: u8,
}

impl Subfield {
    /// The whole field.
    pub const fn whole(field: Field) -> Subfield {
        Subfield { field, offset: 0, bits: field.bits() as u8 }
    }

    /// Bits `first..=last` of `field` (OVS's `field[first..last]`).
    pub const fn range(field: Field, first: u8, last: u8) -> Subfield {
        Subfield { field, offset: first, bits: last.wrapping_sub(first).wrapping_add(1) }
    }

    /// True if the bits lie inside the field and there is at least one.
    pub const fn is_valid(&self) -> bool {
        self.bits >= 1 && self.offset as u32 + self.bits as u32 <= self.field.bits()
    }

    /// The subfield's bits as a mask of the field's value (0 if invalid).
    pub const fn mask(&self) -> u128 {
        if !self.is_valid() {
            return 0;
        }
        let ones = if self.bits >= 128 { u128::MAX } else { (1u128 << self.bits) - 1 };
        ones << self.offset
    }

    /// The subfield's bits of `key`, shifted down to bit 0.
    pub fn read(&self, key: &FlowKey) -> u128 {
        (key.get(self.field) & self.mask()) >> self.offset
    }

    /// Writes the low bits of `value` into the subfield of `key`.
    pub fn write(&self, key: &mut FlowKey, value: u128) {
        key.set_masked(self.field, value << self.offset, self.mask());
    }
}

impl std::fmt::Display for Subfield {
    /// `name[]` for the whole field, `name[N]` for one bit, `name[FIRST..LAST]`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.field.name();
        if self.offset == 0 && self.bits as u32 == self.field.bits() {
            write!(f, "{name}[]")
        } else if self.bits == 1 {
            write!(f, "{name}[{}]", self.offset)
        } else {
            // An empty (invalid) range prints as `[N..N-1]`.
            write!(f, "{name}[{}..{}]", self.offset, i32::from(self.offset) + i32::from(self.bits) - 1)
        }
    }
}

/// The datapath's responders.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Responder {
    /// An ARP request for a bound address gets "it is at `mac`" (the flow matches
    /// `arp_op=1, arp_tpa=IP`).
    Arp {
        /// MAC of the binding (48 bits).
        mac: u64,
    },
    /// An ICMP / ICMPv6 echo request gets its echo reply (for router IPs).
    IcmpEcho,
    /// ICMP time exceeded / ICMPv6 hop limit exceeded, from a router port (flows match
    /// `nw_ttl` 0 or 1 where a router would decrement it).
    TimeExceeded {
        /// Router port MAC.
        mac: u64,
        /// Router port IPv4 address.
        ip: u32,
        /// Router port IPv6 address.
        ip6: u128,
    },
}

/// A Geneve tunnel port: `output` to it encapsulates the packet with the tunnel fields
/// of the key (`tun_id` = VNI, `tun_dst`, `tun_ingress_port`, `tun_egress_port`) and
/// sends the result out of `underlay_port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TunnelPort {
    /// The port number flows output to.
    pub port: u32,
    /// This chassis's tunnel IP (outer source).
    pub local_ip: u32,
    /// Outer Ethernet source.
    pub local_mac: u64,
    /// Outer Ethernet destination (the underlay next hop).
    pub next_hop_mac: u64,
    /// Where encapsulated frames go.
    pub underlay_port: u32,
    /// Underlay MTU: an inner IP packet larger than `mtu - 58` gets ICMP "fragmentation
    /// needed" / "packet too big" instead.
    pub mtu: u16,
    /// Outer TTL.
    pub ttl: u8,
    /// Address ICMP errors about oversized packets come from (IPv4 and IPv6).
    pub icmp_src: u32,
    /// IPv6 address ICMPv6 errors come from.
    pub icmp_src6: u128,
}

/// The outer sources a tunnel port accepts frames from. A frame that arrives through
/// tunnel port `port` from an outer IPv4 source not listed is dropped
/// (`tunnel_unknown_source`) before any lookup; a tunnel port without remotes accepts
/// every source.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TunnelRemotes {
    /// The tunnel port (frames decapsulated by it arrive with this `in_port`).
    pub port: u32,
    /// Outer IPv4 source addresses (host order), sorted, each once.
    pub remotes: Vec<u32>,
}

impl TunnelRemotes {
    /// The remotes of `port`, sorted and deduplicated.
    pub fn new(port: u32, remotes: impl IntoIterator<Item = u32>) -> TunnelRemotes {
        let mut remotes: Vec<u32> = remotes.into_iter().collect();
        remotes.sort_unstable();
        remotes.dedup();
        TunnelRemotes { port, remotes }
    }
}

/// A limit on the connections a conntrack zone (or every zone without its own) holds:
/// a new connection beyond it replaces the zone's oldest unassured one, or is dropped
/// (`ct_zone_full`). Limit 0: none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ZoneLimit {
    /// Which zones.
    pub scope: crate::conntrack::ZoneLimitScope,
    /// Most connections (0: no limit).
    pub limit: u32,
}

/// Where a `ct` action takes its zone from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CtZone {
    /// A fixed zone.
    Const(u16),
    /// The low 16 bits of a metadata field (e.g. a register), read at translation time.
    Field(Field),
}

/// The `ct` action, as in Open vSwitch: `ct(zone=Z, commit, nat(...), table=T)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CtSpec {
    /// Zone.
    pub zone: CtZone,
    /// Create the connection if it is new (and store mark, label and NAT).
    pub commit: bool,
    /// NAT to apply.
    pub nat: Option<NatAction>,
    /// Re-enter the pipeline at this table with the `ct_*` fields set (recirculation);
    /// then this must be the flow's last action. Without it the packet continues with
    /// the next action, untouched `ct_*` fields (as in Open vSwitch).
    pub table: Option<u8>,
    /// On commit: set the mark bits selected by the mask.
    pub set_mark: Option<(u32, u32)>,
    /// On commit: set the label bits selected by the mask.
    pub set_label: Option<(u128, u128)>,
}

impl CtSpec {
    /// `ct(zone=zone, table=table)`: track only.
    pub fn track(zone: u16, table: u8) -> CtSpec {
        CtSpec {
            zone: CtZone::Const(zone),
            commit: false,
            nat: None,
            table: Some(table),
            set_mark: None,
            set_label: None,
        }
    }
}

/// A flow in a pipeline table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    /// Table number.
    pub table: u8,
    /// Priority: higher wins. Among equal priorities the flow installed first wins.
    pub priority: u16,
    /// What the flow matches.
    pub matches: Match,
    /// Opaque controller cookie (for deleting and dumping by owner).
    pub cookie: u64,
    /// What the flow does.
    pub actions: Vec<Action>,
}

/// How a group picks buckets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupKind {
    /// Pick one bucket by a hash of these fields, weighted by bucket weight.
    Select {
        /// Fields whose values are hashed.
        fields: Vec<Field>,
    },
    /// Run every bucket, each on its own copy of the packet.
    All,
}

/// One bucket of a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bucket {
    /// Relative weight (select groups); 0 means never chosen.
    pub weight: u16,
    /// The bucket's actions.
    pub actions: Vec<Action>,
}

/// A group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// Group id.
    pub id: u32,
    /// Select or all.
    pub kind: GroupKind,
    /// The buckets.
    pub buckets: Vec<Bucket>,
}

/// A change to the pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlowMod {
    /// Add a flow; an existing flow with the same table, priority and match is replaced
    /// (its counters restart).
    AddFlow(Flow),
    /// Delete the flow with exactly this table, priority and match, if any.
    DeleteFlowStrict {
        /// Table.
        table: u8,
        /// Priority.
        priority: u16,
        /// Match.
        matches: Match,
    },
    /// Delete every flow whose cookie equals `cookie` under `cookie_mask`, in `table` or
    /// in all tables.
    DeleteFlowsByCookie {
        /// Table to delete from, or all tables.
        table: Option<u8>,
        /// Cookie value.
        cookie: u64,
        /// Cookie mask.
        cookie_mask: u64,
    },
    /// Add or replace a group.
    AddGroup(Group),
    /// Delete a group (flows that use it then drop with `GroupMissing`).
    DeleteGroup(u32),
    /// Add or replace a load balancer. Backends that disappear take their UDP
    /// connections with them (so that, e.g., DNS clients do not keep talking to a
    /// backend that is gone); TCP connections end by themselves.
    AddLoadBalancer(LoadBalancer),
    /// Delete a load balancer (its connections stay until they end or expire).
    DeleteLoadBalancer(u32),
    /// Add or replace a Geneve tunnel port.
    AddTunnelPort(TunnelPort),
    /// Delete a tunnel port (outputs to it then go nowhere).
    DeleteTunnelPort(u32),
    /// Set the outer sources a tunnel port accepts frames from.
    SetTunnelRemotes(TunnelRemotes),
    /// Accept frames through this tunnel port from every source again.
    DeleteTunnelRemotes(u32),
    /// Set a conntrack zone limit (or the default one).
    SetZoneLimit(ZoneLimit),
    /// Remove a zone's own limit (the default applies again), or the default.
    DeleteZoneLimit(crate::conntrack::ZoneLimitScope),
}
