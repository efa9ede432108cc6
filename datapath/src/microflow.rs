//! The microflow cache: per worker thread, exact match on the whole [`FlowKey`], a fixed
//! number of slots (a power of two) indexed by a hash of the 5-tuple and input port. A
//! slot points at the megaflow that handled the key; a hit on a megaflow that has since
//! been removed counts as a miss, so the cache never needs to be flushed.

use std::sync::Arc;

use crate::hash;
use crate::key::FlowKey;
use crate::megaflow::Megaflow;

/// Default number of slots.
pub const DEFAULT_ENTRIES: usize = 8192;

#[derive(Debug)]
struct Slot {
    key: FlowKey,
    megaflow: Option<Arc<Megaflow>>,
}

/// An exact-match cache in front of the megaflow cache.
#[derive(Debug)]
pub struct MicroflowCache {
    slots: Box<[Slot]>,
    mask: usize,
}

/// The microflow hash: input port, IP addresses (v4 or the low words of v6), protocol
/// and L4 ports — the fields that tell flows apart.
#[inline(always)]
pub fn flow_hash(key: &FlowKey) -> u64 {
    let mut h = hash::mix(0, key.w[0]);
    h = hash::mix(h, key.w[14]);
    h = hash::mix(h, key.w[15] & 0xff);
    h = hash::mix(h, key.w[16] & 0xffff_ffff);
    h = hash::mix(h, key.w[20] ^ key.w[22]);
    hash::finish(h)
}

impl MicroflowCache {
    /// A cache with `entries` slots, rounded up to a power of two (0 disables caching).
    pub fn new(entries: usize) -> Self {
        let n = if entries == 0 { 0 } else { entries.next_power_of_two() };
        let slots = (0..n).map(|_| Slot { key: FlowKey::ZERO, megaflow: None }).collect();
        MicroflowCache { slots, mask: n.wrapping_sub(1) }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// True if the cache has no slots (caching disabled): callers skip hashing.
    #[inline]
    pub fn is_disabled(&self) -> bool {
        self.slots.is_empty()
    }

    /// The live megaflow cached for exactly `key`, if any.
    #[inline]
    pub fn lookup(&self, hash: u64, key: &FlowKey) -> Option<&Arc<Megaflow>> {
        let slot = self.slots.get(hash as usize & self.mask)?;
        match &slot.megaflow {
            Some(mf) if slot.key == *key && !mf.is_dead() => Some(mf),
            _ => None,
        }
    }

    /// Remembers that `key` is handled by `megaflow`.
    #[inline]
    pub fn insert(&mut self, hash: u64, key: &FlowKey, megaflow: &Arc<Megaflow>) {
        let mask = self.mask;
        if let Some(slot) = self.slots.get_mut(hash as usize & mask) {
            slot.key = *key;
            slot.megaflow = Some(megaflow.clone());
        }
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        for s in self.slots.iter_mut() {
            s.megaflow = None;
        }
    }
}
