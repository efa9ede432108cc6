//! The megaflow cache: tuple space search over wildcarded cache entries.
//!
//! One hash table ("subtable") per distinct mask; a lookup probes subtables in order of
//! recent hits, so the hottest mask is tried first. Entries never overlap in a way that
//! matters: any entry matching a packet carries the same actions the pipeline would
//! compute for it, so the first hit wins.
//!
//! An entry keeps its masked key words, the ids of the rules that produced it and its
//! encoded actions in one allocation, next to its counters. Entries are shared with the
//! per-thread microflow caches through `Arc`; removing an entry marks it dead so that a
//! microflow hit on it becomes a miss.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use hashbrown::HashTable;

use crate::hash;
use crate::key::{FlowKey, KEY_WORDS};
use crate::pipeline::{DropReason, Translation};

/// A cached, wildcarded forwarding decision.
#[derive(Debug)]
pub struct Megaflow {
    /// `[masked key words | rule ids, two per word | encoded actions]`.
    data: Box<[u64]>,
    hash: u64,
    /// Packets that hit this entry (including the upcall that made it).
    pub packets: AtomicU64,
    /// Bytes, likewise.
    pub bytes: AtomicU64,
    /// Last hit, caller's clock (ns).
    pub last_used: AtomicU64,
    /// Bloom bits of the tables and groups the translation used.
    pub bloom: u64,
    dead: AtomicBool,
    /// Position in the cache's list of all entries (changes as others are removed).
    slot: AtomicU32,
    subtable: u16,
    n_key: u8,
    n_rules: u8,
    drop: u8,
}

const NO_DROP: u8 = u8::MAX;

impl Megaflow {
    fn rules_start(&self) -> usize {
        self.n_key as usize
    }

    fn actions_start(&self) -> usize {
        self.n_key as usize + (self.n_rules as usize).div_ceil(2)
    }

    /// The encoded datapath actions.
    #[inline]
    pub fn actions(&self) -> &[u64] {
        &self.data[self.actions_start()..]
    }

    /// Ids of the rules whose decisions this entry caches.
    pub fn rule_ids(&self) -> impl Iterator<Item = u32> + '_ {
        let words = &self.data[self.rules_start()..self.actions_start()];
        (0..self.n_rules as usize).map(move |i| (words[i / 2] >> (32 * (i % 2))) as u32)
    }

    /// Why packets hitting this entry are dropped, if they are.
    #[inline]
    pub fn drop_reason(&self) -> Option<DropReason> {
        DropReason::ALL.get(self.drop as usize).copied()
    }

    /// True once the entry has been removed from the cache.
    #[inline]
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// Counts one packet of `len` bytes at time `now`.
    #[inline]
    pub fn hit(&self, len: usize, now: u64) {
        self.packets.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(len as u64, Ordering::Relaxed);
        self.last_used.store(now, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct Subtable {
    mask: FlowKey,
    idx: Box<[u8]>,
    table: HashTable<Arc<Megaflow>>,
    hits: AtomicU64,
}

impl Subtable {
    fn new(mask: FlowKey) -> Self {
        let idx = (0..KEY_WORDS).filter(|&i| mask.w[i] != 0).map(|i| i as u8).collect();
        Subtable { mask, idx, table: HashTable::new(), hits: AtomicU64::new(0) }
    }

    #[inline(always)]
    fn hash(&self, key: &FlowKey) -> u64 {
        let mut h = 0u64;
        for &i in self.idx.iter() {
            let i = i as usize;
            h = hash::mix(h, key.w[i] & self.mask.w[i]);
        }
        hash::finish(h)
    }

    #[inline(always)]
    fn matches(&self, mf: &Megaflow, key: &FlowKey) -> bool {
        let words = &mf.data[..self.idx.len()];
        self.idx.iter().zip(words).all(|(&i, &w)| key.w[i as usize] & self.mask.w[i as usize] == w)
    }
}

/// Counters of the megaflow cache itself.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MegaflowCounters {
    /// Entries evicted to make room (limit reached) or for idleness.
    pub evicted: u64,
}

/// The shared megaflow cache.
#[derive(Debug)]
pub struct MegaflowCache {
    subtables: Vec<Option<Subtable>>,
    /// Probe order: subtable ids, most hits first.
    order: Vec<u16>,
    /// Every live entry, for bounded sweeps; each entry knows its position (`slot`), so
    /// removal is O(1) with `swap_remove`.
    all: Vec<Arc<Megaflow>>,
    limit: usize,
    cursor: usize,
    /// Counters.
    pub counters: MegaflowCounters,
}

/// Result of a megaflow lookup.
pub struct Hit<'a> {
    /// The entry.
    pub megaflow: &'a Arc<Megaflow>,
    /// How many subtables were probed to find it.
    pub probed: u32,
}

impl MegaflowCache {
    /// An empty cache holding at most `limit` entries.
    pub fn new(limit: usize) -> Self {
        MegaflowCache {
            subtables: Vec::new(),
            order: Vec::new(),
            all: Vec::new(),
            limit: limit.max(1),
            cursor: 0,
            counters: MegaflowCounters::default(),
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.all.len()
    }

    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// Number of distinct masks.
    pub fn subtable_count(&self) -> usize {
        self.order.len()
    }

    /// Every entry.
    pub fn entries(&self) -> &[Arc<Megaflow>] {
        &self.all
    }

    /// The mask of an entry.
    pub fn mask_of(&self, mf: &Megaflow) -> FlowKey {
        self.subtables[mf.subtable as usize].as_ref().map(|s| s.mask).unwrap_or(FlowKey::ZERO)
    }

    /// The masked key of an entry, as a full key with wildcarded bits zero.
    pub fn key_of(&self, mf: &Megaflow) -> FlowKey {
        let mut k = FlowKey::ZERO;
        if let Some(st) = self.subtables[mf.subtable as usize].as_ref() {
            for (j, &i) in st.idx.iter().enumerate() {
                k.w[i as usize] = mf.data[j];
            }
        }
        k
    }

    /// Finds the entry matching `key`.
    #[inline]
    pub fn lookup(&self, key: &FlowKey) -> Option<Hit<'_>> {
        let mut probed = 0;
        for &sid in &self.order {
            // Every id in `order` names a live subtable.
            let Some(st) = self.subtables[sid as usize].as_ref() else { continue };
            probed += 1;
            let h = st.hash(key);
            if let Some(mf) = st.table.find(h, |m| m.hash == h && st.matches(m, key)) {
                st.hits.fetch_add(1, Ordering::Relaxed);
                return Some(Hit { megaflow: mf, probed });
            }
        }
        None
    }

    /// Installs the translation of `key` as an entry (or returns the equal entry already
    /// there), evicting the least recently used of a sample if the cache is full.
    /// Returns the entry and the entries evicted to make room.
    pub fn install(&mut self, key: &FlowKey, t: &Translation, now: u64) -> (Arc<Megaflow>, Vec<Arc<Megaflow>>) {
        let mask = t.wc;
        let sid = match self.subtables.iter().position(|s| s.as_ref().is_some_and(|s| s.mask == mask)) {
            Some(i) => i,
            None => {
                let st = Subtable::new(mask);
                let i = match self.subtables.iter().position(|s| s.is_none()) {
                    Some(free) => {
                        self.subtables[free] = Some(st);
                        free
                    }
                    None => {
                        self.subtables.push(Some(st));
                        self.subtables.len() - 1
                    }
                };
                self.order.push(i as u16);
                i
            }
        };
        let (h, mut data) = {
            let st = self.subtables[sid].as_ref().expect("subtable just found or created");
            let h = st.hash(key);
            if let Some(existing) = st.table.find(h, |m| m.hash == h && st.matches(m, key)) {
                return (existing.clone(), Vec::new());
            }
            let mut data = Vec::with_capacity(st.idx.len() + t.rules.len().div_ceil(2) + t.actions.len() + 2);
            data.extend(st.idx.iter().map(|&i| key.w[i as usize] & mask.w[i as usize]));
            (h, data)
        };
        let n_key = data.len();
        let n_rules = t.rules.len().min(u8::MAX as usize);
        for pair in t.rules[..n_rules].chunks(2) {
            data.push(pair[0] as u64 | pair.get(1).map_or(0, |&r| (r as u64) << 32));
        }
        crate::exec::encode(&t.actions, &mut data);
        let mut evicted = Vec::new();
        while self.all.len() >= self.limit {
            match self.evict_one() {
                Some(v) => evicted.push(v),
                None => break,
            }
        }
        let mf = Arc::new(Megaflow {
            data: data.into_boxed_slice(),
            hash: h,
            packets: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            last_used: AtomicU64::new(now),
            bloom: t.bloom,
            dead: AtomicBool::new(false),
            slot: AtomicU32::new(self.all.len() as u32),
            subtable: sid as u16,
            n_key: n_key as u8,
            n_rules: n_rules as u8,
            drop: t.drop.map_or(NO_DROP, |d| d as u8),
        });
        // Eviction above may have emptied and dropped the subtable.
        let sid = self.ensure_subtable(sid, mask);
        let st = self.subtables[sid].as_mut().expect("subtable ensured");
        st.table.insert_unique(h, mf.clone(), |m| m.hash);
        self.all.push(mf.clone());
        (mf, evicted)
    }

    fn ensure_subtable(&mut self, sid: usize, mask: FlowKey) -> usize {
        if self.subtables[sid].as_ref().is_some_and(|s| s.mask == mask) {
            return sid;
        }
        // Eviction only ever empties subtables, so the slot is free again.
        debug_assert!(self.subtables[sid].is_none());
        self.subtables[sid] = Some(Subtable::new(mask));
        self.order.push(sid as u16);
        sid
    }

    /// Removes one entry (marks it dead). Returns false if it was not in the cache.
    pub fn remove(&mut self, mf: &Arc<Megaflow>) -> bool {
        let sid = mf.subtable as usize;
        let Some(st) = self.subtables.get_mut(sid).and_then(|s| s.as_mut()) else { return false };
        let Ok(e) = st.table.find_entry(mf.hash, |m| Arc::ptr_eq(m, mf)) else { return false };
        e.remove();
        mf.dead.store(true, Ordering::Release);
        if st.table.is_empty() {
            self.subtables[sid] = None;
            self.order.retain(|&s| s as usize != sid);
        }
        let pos = mf.slot.load(Ordering::Relaxed) as usize;
        if pos < self.all.len() && Arc::ptr_eq(&self.all[pos], mf) {
            self.all.swap_remove(pos);
            if let Some(moved) = self.all.get(pos) {
                moved.slot.store(pos as u32, Ordering::Relaxed);
            }
        }
        true
    }

    /// Evicts the least recently used of up to 32 entries from a rotating cursor.
    fn evict_one(&mut self) -> Option<Arc<Megaflow>> {
        if self.all.is_empty() {
            return None;
        }
        let n = self.all.len();
        let mut victim = self.cursor % n;
        for k in 0..32.min(n) {
            let i = (self.cursor + k) % n;
            if self.all[i].last_used.load(Ordering::Relaxed) < self.all[victim].last_used.load(Ordering::Relaxed) {
                victim = i;
            }
        }
        self.cursor = (self.cursor + 32) % n.max(1);
        let mf = self.all[victim].clone();
        self.remove(&mf);
        self.counters.evicted += 1;
        Some(mf)
    }

    /// Removes entries idle for longer than `idle_ns`, examining at most `budget`
    /// entries (bounded work per call). Returns the removed entries.
    pub fn expire(&mut self, now: u64, idle_ns: u64, budget: usize) -> Vec<Arc<Megaflow>> {
        let mut out = Vec::new();
        let mut examined = 0;
        while examined < budget && !self.all.is_empty() {
            let i = self.cursor % self.all.len();
            let mf = self.all[i].clone();
            examined += 1;
            if now.saturating_sub(mf.last_used.load(Ordering::Relaxed)) > idle_ns {
                self.remove(&mf);
                self.counters.evicted += 1;
                out.push(mf);
            } else {
                self.cursor = i + 1;
            }
        }
        out
    }

    /// Re-ranks subtables by hits since the last call (most hits probed first).
    pub fn rerank(&mut self) {
        let subtables = &self.subtables;
        let hits = |sid: u16| subtables[sid as usize].as_ref().map_or(0, |s| s.hits.load(Ordering::Relaxed));
        self.order.sort_by_key(|&s| std::cmp::Reverse(hits(s)));
        for st in self.subtables.iter().flatten() {
            st.hits.store(st.hits.load(Ordering::Relaxed) / 2, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::DpAction;
    use crate::key::Field;

    fn translation(mask: FlowKey, port: u32) -> Translation {
        Translation { actions: vec![DpAction::Output(port)], wc: mask, rules: vec![1, 2, 3], bloom: 1, drop: None }
    }

    fn key(dst: u32, port: u16) -> FlowKey {
        let mut k = FlowKey::ZERO;
        k.set(Field::Ipv4Dst, dst as u128);
        k.set(Field::TpDst, port as u128);
        k
    }

    #[test]
    fn install_lookup_remove() {
        let mut c = MegaflowCache::new(100);
        let m = FlowKey::field_mask(Field::Ipv4Dst);
        let (mf, _) = c.install(&key(5, 80), &translation(m, 1), 0);
        assert_eq!(mf.rule_ids().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(crate::exec::decode(mf.actions()), vec![DpAction::Output(1)]);
        let hit = c.lookup(&key(5, 443)).expect("wildcarded port");
        assert!(Arc::ptr_eq(hit.megaflow, &mf));
        assert!(c.lookup(&key(6, 80)).is_none());
        assert_eq!(c.key_of(&mf), key(5, 0));
        assert!(c.remove(&mf));
        assert!(mf.is_dead());
        assert!(c.lookup(&key(5, 80)).is_none());
        assert_eq!(c.subtable_count(), 0);
    }

    #[test]
    fn limit_evicts_least_recently_used() {
        let mut c = MegaflowCache::new(4);
        let m = FlowKey::field_mask(Field::Ipv4Dst);
        for d in 0..4 {
            c.install(&key(d, 0), &translation(m, d), 10 + d as u64);
        }
        let (_, evicted) = c.install(&key(9, 0), &translation(m, 9), 100);
        assert_eq!(evicted.len(), 1);
        assert_eq!(c.len(), 4);
        assert!(c.lookup(&key(0, 0)).is_none(), "oldest entry went");
        assert_eq!(c.counters.evicted, 1);
    }

    #[test]
    fn expire_removes_idle_only() {
        let mut c = MegaflowCache::new(100);
        let m = FlowKey::field_mask(Field::Ipv4Dst);
        c.install(&key(1, 0), &translation(m, 1), 0);
        c.install(&key(2, 0), &translation(m, 2), 900);
        let gone = c.expire(1000, 500, 10);
        assert_eq!(gone.len(), 1);
        assert!(c.lookup(&key(1, 0)).is_none());
        assert!(c.lookup(&key(2, 0)).is_some());
    }

    #[test]
    fn rerank_puts_hot_mask_first() {
        let mut c = MegaflowCache::new(100);
        let m1 = FlowKey::field_mask(Field::Ipv4Dst);
        let m2 = FlowKey::field_mask(Field::TpDst);
        c.install(&key(1, 0), &translation(m1, 1), 0);
        c.install(&key(0, 80), &translation(m2, 2), 0);
        for _ in 0..10 {
            assert_eq!(c.lookup(&key(7, 80)).unwrap().probed, 2);
        }
        c.rerank();
        assert_eq!(c.lookup(&key(7, 80)).unwrap().probed, 1);
    }
}
