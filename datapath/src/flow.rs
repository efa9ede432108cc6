//! What the control plane installs: flows (table, priority, masked match, cookie,
//! actions), groups (select and all), and the modifications that add and remove them.

use crate::key::{Field, FlowKey};

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
}
