//! The pipeline's per-table classifier: tuple space search over prioritised, masked
//! rules, with optional wildcard tracking.
//!
//! Rules are grouped into *subtables*, one per distinct mask; each subtable is a hash
//! table keyed by the masked key, whose nodes hold the rules with that masked key sorted
//! best first. Subtables are probed in decreasing order of the highest priority they
//! hold (by rank: priority, then insertion order), and probing stops as soon as no
//! remaining subtable can hold a better rule.
//!
//! Wildcard tracking records, for the megaflow being built, every key bit a lookup
//! depended on: the whole mask of every subtable probed. Subtables skipped by the
//! priority cut-off are not recorded — no packet in the resulting megaflow could match a
//! better rule there.
//!
//! Rule order: higher priority wins; among equal priorities the rule inserted first
//! wins (each insertion takes a sequence number).

use std::collections::BTreeSet;

use hashbrown::HashTable;

use crate::flow::Match;
use crate::hash;
use crate::key::{FlowKey, KEY_WORDS};

const SEQ_BITS: u32 = 40;
const SEQ_MAX: u64 = (1 << SEQ_BITS) - 1;

#[derive(Debug)]
struct Entry<T> {
    /// `priority << 40 | (SEQ_MAX - seq)`: larger is better.
    rank: u64,
    value: T,
}

impl<T> Entry<T> {
    fn priority(&self) -> u16 {
        (self.rank >> SEQ_BITS) as u16
    }
}

#[derive(Debug)]
struct Node<T> {
    hash: u64,
    /// Rank of `rules[0]`, kept here so a lookup reads one cache line less.
    best_rank: u64,
    masked: FlowKey,
    /// Sorted best (highest rank) first; never empty.
    rules: Vec<Entry<T>>,
}

/// All rules sharing one mask.
#[derive(Debug)]
struct Subtable<T> {
    mask: FlowKey,
    /// `(index, mask word)` for each non-zero mask word, ascending.
    words: Box<[(usize, u64)]>,
    /// Ranks of the rules held, to know the best after removals.
    ranks: BTreeSet<u64>,
    /// The best rank held: no rule here can beat it, so a lookup that already found a
    /// better rule skips this subtable and every later one.
    max_rank: u64,
    nodes: HashTable<Node<T>>,
    n_rules: usize,
}

impl<T> Subtable<T> {
    fn new(mask: FlowKey) -> Self {
        let words = (0..KEY_WORDS).filter(|&i| mask.w[i] != 0).map(|i| (i, mask.w[i])).collect();
        Subtable { mask, words, ranks: BTreeSet::new(), max_rank: 0, nodes: HashTable::new(), n_rules: 0 }
    }

    #[inline(always)]
    fn hash_key(&self, key: &FlowKey) -> u64 {
        let mut h = 0u64;
        for &(i, m) in self.words.iter() {
            h = hash::mix(h, key.w[i] & m);
        }
        hash::finish(h)
    }

    #[inline(always)]
    fn node_matches(&self, node: &Node<T>, key: &FlowKey) -> bool {
        node_matches(&self.words, node, key)
    }

    #[inline(always)]
    fn find(&self, key: &FlowKey) -> Option<&Node<T>> {
        let h = self.hash_key(key);
        self.nodes.find(h, |n| n.hash == h && self.node_matches(n, key))
    }

    fn note_rank(&mut self, rank: u64, add: bool) {
        if add {
            self.ranks.insert(rank);
        } else {
            self.ranks.remove(&rank);
        }
        self.max_rank = self.ranks.last().copied().unwrap_or(0);
    }
}

/// True if `key`, masked by a subtable's `words`, equals the node's masked key.
#[inline(always)]
fn node_matches<T>(words: &[(usize, u64)], node: &Node<T>, key: &FlowKey) -> bool {
    words.iter().all(|&(i, m)| key.w[i] & m == node.masked.w[i])
}

/// A classifier over rules carrying values of type `T`.
#[derive(Debug)]
pub struct Classifier<T> {
    /// Sorted by `max_priority`, highest first.
    subtables: Vec<Subtable<T>>,
    next_seq: u64,
    len: usize,
}

impl<T> Default for Classifier<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// Statistics of one lookup, for benchmarks and `trace`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LookupStats {
    /// Subtables probed.
    pub probed: u32,
}

impl<T> Classifier<T> {
    /// An empty classifier.
    pub fn new() -> Self {
        Classifier { subtables: Vec::new(), next_seq: 0, len: 0 }
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if there are no rules.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of distinct masks.
    pub fn subtable_count(&self) -> usize {
        self.subtables.len()
    }

    fn resort(&mut self) {
        self.subtables.sort_by_key(|s| std::cmp::Reverse(s.max_rank));
    }

    /// Inserts a rule. A rule with the same match and priority is replaced and returned;
    /// the new rule ranks as the most recently inserted.
    pub fn insert(&mut self, m: &Match, priority: u16, value: T) -> Option<T> {
        let replaced = self.remove(m, priority);
        let m = m.normalized();
        let seq = self.next_seq.min(SEQ_MAX);
        self.next_seq += 1;
        let rank = ((priority as u64) << SEQ_BITS) | (SEQ_MAX - seq);
        let si = match self.subtables.iter().position(|s| s.mask == m.mask) {
            Some(i) => i,
            None => {
                self.subtables.push(Subtable::new(m.mask));
                self.subtables.len() - 1
            }
        };
        let st = &mut self.subtables[si];
        let h = st.hash_key(&m.value);
        let entry = Entry { rank, value };
        match st.nodes.find_mut(h, |n| n.hash == h && node_matches(&st.words, n, &m.value)) {
            Some(node) => {
                let pos = node.rules.iter().position(|e| e.rank < rank).unwrap_or(node.rules.len());
                node.rules.insert(pos, entry);
                node.best_rank = node.rules[0].rank;
            }
            None => {
                st.nodes.insert_unique(
                    h,
                    Node { hash: h, best_rank: rank, masked: m.value, rules: vec![entry] },
                    |n| n.hash,
                );
            }
        }
        st.n_rules += 1;
        st.note_rank(rank, true);
        self.len += 1;
        self.resort();
        replaced
    }

    /// Removes the rule with exactly this match and priority.
    pub fn remove(&mut self, m: &Match, priority: u16) -> Option<T> {
        let m = m.normalized();
        let si = self.subtables.iter().position(|s| s.mask == m.mask)?;
        let st = &mut self.subtables[si];
        let h = st.hash_key(&m.value);
        let Ok(mut occ) = st.nodes.find_entry(h, |n| n.hash == h && node_matches(&st.words, n, &m.value)) else {
            return None;
        };
        let node = occ.get_mut();
        let pos = node.rules.iter().position(|e| e.priority() == priority)?;
        let e = node.rules.remove(pos);
        match node.rules.first() {
            Some(first) => node.best_rank = first.rank,
            None => {
                occ.remove();
            }
        }
        st.n_rules -= 1;
        st.note_rank(e.rank, false);
        self.len -= 1;
        if st.n_rules == 0 {
            self.subtables.remove(si);
        }
        self.resort();
        Some(e.value)
    }

    /// Finds the best rule matching `key`. With `wc`, ORs into it every key bit the
    /// result depended on.
    #[inline]
    pub fn lookup(&self, key: &FlowKey, wc: Option<&mut FlowKey>) -> Option<&T> {
        self.lookup_with_stats(key, wc, &mut LookupStats::default())
    }

    /// [`lookup`](Self::lookup), also counting subtables probed.
    #[inline]
    pub fn lookup_with_stats(
        &self,
        key: &FlowKey,
        mut wc: Option<&mut FlowKey>,
        stats: &mut LookupStats,
    ) -> Option<&T> {
        let mut best: Option<&Node<T>> = None;
        let mut best_rank = 0u64;
        for st in &self.subtables {
            if best.is_some() && st.max_rank < best_rank {
                break;
            }
            stats.probed += 1;
            if let Some(wc) = wc.as_deref_mut() {
                for &(i, m) in st.words.iter() {
                    wc.w[i] |= m;
                }
            }
            if let Some(node) = st.find(key)
                && (best.is_none() || node.best_rank > best_rank)
            {
                best_rank = node.best_rank;
                best = Some(node);
            }
        }
        best.map(|n| &n.rules[0].value)
    }

    /// Finds the rule with exactly this match and priority.
    pub fn find_exact(&self, m: &Match, priority: u16) -> Option<&T> {
        let m = m.normalized();
        let st = self.subtables.iter().find(|s| s.mask == m.mask)?;
        let h = st.hash_key(&m.value);
        let node = st.nodes.find(h, |n| n.hash == h && st.node_matches(n, &m.value))?;
        node.rules.iter().find(|e| e.priority() == priority).map(|e| &e.value)
    }

    /// Every rule as (match, priority, value), best first within a masked key.
    pub fn iter(&self) -> impl Iterator<Item = (Match, u16, &T)> {
        self.subtables.iter().flat_map(|st| {
            st.nodes.iter().flat_map(move |n| {
                n.rules.iter().map(move |e| (Match { value: n.masked, mask: st.mask }, e.priority(), &e.value))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Field;

    fn key(src: u32, dst: u32, port: u16) -> FlowKey {
        let mut k = FlowKey::ZERO;
        k.set(Field::Ipv4Src, src as u128);
        k.set(Field::Ipv4Dst, dst as u128);
        k.set(Field::TpDst, port as u128);
        k
    }

    #[test]
    fn priority_then_insertion_order() {
        let mut c = Classifier::new();
        c.insert(&Match::ANY.with(Field::Ipv4Dst, 2), 10, "dst-10");
        c.insert(&Match::ANY.with(Field::TpDst, 80), 10, "port-10");
        c.insert(&Match::ANY.with_masked(Field::Ipv4Src, 0, 0xff00_0000), 5, "prefix-5");
        assert_eq!(c.lookup(&key(1, 2, 80), None), Some(&"dst-10"));
        assert_eq!(c.lookup(&key(1, 3, 80), None), Some(&"port-10"));
        assert_eq!(c.lookup(&key(1, 3, 81), None), Some(&"prefix-5"));
        assert_eq!(c.lookup(&key(0x0100_0000, 3, 81), None), None);
        c.insert(&Match::ANY.with(Field::TpDst, 80), 11, "port-11");
        assert_eq!(c.lookup(&key(1, 2, 80), None), Some(&"port-11"));
        assert_eq!(c.remove(&Match::ANY.with(Field::TpDst, 80), 11), Some("port-11"));
        assert_eq!(c.lookup(&key(1, 2, 80), None), Some(&"dst-10"));
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn replace_same_match_and_priority() {
        let mut c = Classifier::new();
        let m = Match::ANY.with(Field::TpDst, 80);
        assert_eq!(c.insert(&m, 1, 1), None);
        assert_eq!(c.insert(&m, 1, 2), Some(1));
        assert_eq!(c.len(), 1);
        assert_eq!(c.lookup(&key(0, 0, 80), None), Some(&2));
    }

    #[test]
    fn wildcards_cover_probed_subtables_only() {
        let mut c = Classifier::new();
        c.insert(&Match::ANY.with(Field::Ipv4Dst, 2), 100, 1);
        c.insert(&Match::ANY.with(Field::TpDst, 80), 50, 2);
        let mut wc = FlowKey::ZERO;
        assert_eq!(c.lookup(&key(1, 2, 80), Some(&mut wc)), Some(&1));
        // The port subtable (max priority 50) was cut off.
        assert_eq!(wc, FlowKey::field_mask(Field::Ipv4Dst));
        let mut wc = FlowKey::ZERO;
        assert_eq!(c.lookup(&key(1, 3, 80), Some(&mut wc)), Some(&2));
        let mut both = FlowKey::field_mask(Field::Ipv4Dst);
        both.or_assign(&FlowKey::field_mask(Field::TpDst));
        assert_eq!(wc, both);
    }

    #[test]
    fn empty_subtables_are_dropped() {
        let mut c: Classifier<u32> = Classifier::new();
        let m = Match::ANY.with(Field::TpDst, 80);
        c.insert(&m, 1, 1);
        assert_eq!(c.subtable_count(), 1);
        c.remove(&m, 1);
        assert_eq!(c.subtable_count(), 0);
        assert!(c.is_empty());
    }
}
