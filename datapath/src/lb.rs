//! Service load balancing: a virtual IP, port and protocol in front of backends.
//!
//! Backends are chosen by rendezvous (highest-random-weight) hashing of the connection's
//! 5-tuple — or of the client address alone with session affinity — so that removing a
//! backend moves exactly the connections that were on it and adding one moves, in
//! expectation, 1/(N+1) of new connections and nothing else. (Maglev's lookup table is
//! O(1) but moves a few connections of unaffected backends on every change; with
//! Services of tens of backends the O(N) walk costs tens of nanoseconds, once per new
//! connection.) Established connections stay on their backend through conntrack.
//!
//! With `ClientIP` affinity a client keeps the backend it was last given for as long as
//! it keeps opening connections within the timeout, even if the backend set changes.

use std::collections::HashMap;

use crate::conntrack::Tuple;
use crate::hash;

/// A backend: address (16-byte form, IPv4-mapped for IPv4) and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Backend {
    /// Address.
    pub addr: [u8; 16],
    /// Port.
    pub port: u16,
}

impl Backend {
    /// An IPv4 backend.
    pub fn v4(addr: u32, port: u16) -> Backend {
        Backend { addr: crate::conntrack::v4(addr), port }
    }

    fn seed(&self) -> u64 {
        let a = u128::from_be_bytes(self.addr);
        hash::hash_words(0x6c62, &[(a >> 64) as u64, a as u64, self.port as u64])
    }
}

/// A load balancer as installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadBalancer {
    /// Id that `ct_lb` actions name.
    pub id: u32,
    /// Backends; empty means the Service rejects (TCP RST / ICMP port unreachable).
    pub backends: Vec<Backend>,
    /// `sessionAffinity: ClientIP` timeout in ns (`None`: no affinity).
    pub affinity_timeout_ns: Option<u64>,
}

/// A load balancer with its precomputed backend seeds and affinity table.
#[derive(Debug)]
pub struct LbState {
    /// The configuration.
    pub config: LoadBalancer,
    seeds: Vec<u64>,
    /// Client address → (backend, expiry).
    affinity: HashMap<[u8; 16], (Backend, u64)>,
}

impl LbState {
    /// Prepares a load balancer.
    pub fn new(config: LoadBalancer) -> Self {
        let seeds = config.backends.iter().map(|b| b.seed()).collect();
        LbState { config, seeds, affinity: HashMap::new() }
    }

    /// Replaces the backend set, keeping affinities to backends that remain. Returns
    /// the backends that were removed.
    pub fn update(&mut self, config: LoadBalancer) -> Vec<Backend> {
        let removed: Vec<Backend> =
            self.config.backends.iter().filter(|b| !config.backends.contains(b)).copied().collect();
        self.affinity.retain(|_, (b, _)| config.backends.contains(b));
        if config.affinity_timeout_ns.is_none() {
            self.affinity.clear();
        }
        self.seeds = config.backends.iter().map(|b| b.seed()).collect();
        self.config = config;
        removed
    }

    /// The backend for a new connection with original tuple `t` at `now`.
    pub fn select(&mut self, t: &Tuple, now: u64) -> Option<Backend> {
        if self.config.backends.is_empty() {
            return None;
        }
        match self.config.affinity_timeout_ns {
            None => Some(self.config.backends[self.rendezvous(flow_hash(t))]),
            Some(timeout) => {
                if let Some((b, exp)) = self.affinity.get_mut(&t.src)
                    && *exp > now
                {
                    *exp = now + timeout;
                    return Some(*b);
                }
                let src = u128::from_be_bytes(t.src);
                let b = self.config.backends[self.rendezvous(hash::hash_words(1, &[(src >> 64) as u64, src as u64]))];
                if self.affinity.len() > 65536 {
                    self.affinity.retain(|_, (_, exp)| *exp > now);
                }
                self.affinity.insert(t.src, (b, now + timeout));
                Some(b)
            }
        }
    }

    /// Index of the backend with the highest weight for hash `h`.
    #[inline]
    pub fn rendezvous(&self, h: u64) -> usize {
        let mut best = 0;
        let mut best_w = 0u64;
        for (i, s) in self.seeds.iter().enumerate() {
            let w = hash::finish(hash::mix(*s, h));
            if i == 0 || w > best_w {
                best = i;
                best_w = w;
            }
        }
        best
    }
}

/// Hash of a connection's 5-tuple (zone excluded) for backend choice.
pub fn flow_hash(t: &Tuple) -> u64 {
    let s = u128::from_be_bytes(t.src);
    let d = u128::from_be_bytes(t.dst);
    hash::hash_words(
        2,
        &[
            (s >> 64) as u64,
            s as u64,
            (d >> 64) as u64,
            d as u64,
            (t.sport as u64) << 16 | t.dport as u64 | (t.proto as u64) << 32,
        ],
    )
}

/// The answer a Service without endpoints gives a new connection: a TCP reset for TCP,
/// an ICMP / ICMPv6 port unreachable otherwise — so that clients fail fast instead of
/// timing out. `None` for packets that must not be answered (not IP, ICMP errors,
/// broadcast or multicast).
pub fn reject(frame: &[u8], offs: &crate::parse::HeaderOffsets, key: &crate::key::FlowKey) -> Option<Vec<u8>> {
    use crate::key::{Field, ip_proto};
    use crate::parse::ABSENT;
    if offs.l3 == ABSENT || offs.l4 == ABSENT || key.get(Field::NwProto) as u8 != ip_proto::TCP {
        return crate::responder::port_unreachable(frame);
    }
    let l3 = offs.l3 as usize;
    let l4 = offs.l4 as usize;
    let v6 = offs.l3_kind == crate::parse::L3::Ipv6;
    let tcp = frame.get(l4..l4 + 20)?;
    let flags = tcp[13];
    if flags & 0x04 != 0 {
        return None; // never answer a reset
    }
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
    let doff = ((tcp[12] >> 4) as usize) * 4;
    let l3_end = if v6 {
        l3 + 40 + u16::from_be_bytes([frame[l3 + 4], frame[l3 + 5]]) as usize
    } else {
        l3 + u16::from_be_bytes([frame[l3 + 2], frame[l3 + 3]]) as usize
    }
    .min(frame.len());
    let payload = l3_end.saturating_sub(l4 + doff) as u32;
    let seg_len = payload + (flags & 0x02 != 0) as u32 + (flags & 0x01 != 0) as u32;
    let mut out = Vec::with_capacity(l3 + 60);
    // Ethernet (and tag) of the original, addresses swapped.
    out.extend_from_slice(&frame[6..12]);
    out.extend_from_slice(&frame[0..6]);
    out.extend_from_slice(&frame[12..l3]);
    if v6 {
        let mut ip = [0u8; 40];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&20u16.to_be_bytes());
        ip[6] = ip_proto::TCP;
        ip[7] = 64;
        ip[8..24].copy_from_slice(&frame[l3 + 24..l3 + 40]);
        ip[24..40].copy_from_slice(&frame[l3 + 8..l3 + 24]);
        out.extend_from_slice(&ip);
    } else {
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&40u16.to_be_bytes());
        ip[6] = 0x40;
        ip[8] = 64;
        ip[9] = ip_proto::TCP;
        ip[12..16].copy_from_slice(&frame[l3 + 16..l3 + 20]);
        ip[16..20].copy_from_slice(&frame[l3 + 12..l3 + 16]);
        out.extend_from_slice(&ip);
    }
    let mut t = [0u8; 20];
    t[0..2].copy_from_slice(&tcp[2..4]);
    t[2..4].copy_from_slice(&tcp[0..2]);
    if flags & 0x10 != 0 {
        t[4..8].copy_from_slice(&ack.to_be_bytes());
        t[13] = 0x04;
    } else {
        t[8..12].copy_from_slice(&seq.wrapping_add(seg_len).to_be_bytes());
        t[13] = 0x14;
    }
    t[12] = 0x50;
    out.extend_from_slice(&t);
    crate::packet::fill_checksums(&mut out);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::v4;

    fn tuple(i: u32) -> Tuple {
        Tuple {
            src: v4(0x0af4_0000 + i),
            dst: v4(0x0a60_0001),
            sport: (i % 50_000) as u16 + 1024,
            dport: 80,
            proto: 6,
            zone: 0,
        }
    }

    fn lb(n: u32) -> LoadBalancer {
        LoadBalancer {
            id: 1,
            backends: (0..n).map(|i| Backend::v4(0x0af4_1000 + i, 8080)).collect(),
            affinity_timeout_ns: None,
        }
    }

    #[test]
    fn removing_a_backend_moves_only_its_connections() {
        let mut a = LbState::new(lb(10));
        let before: Vec<Backend> = (0..20_000).map(|i| a.select(&tuple(i), 0).unwrap()).collect();
        let gone = a.config.backends[3];
        let mut smaller = lb(10);
        smaller.backends.remove(3);
        assert_eq!(a.update(smaller), vec![gone]);
        for (i, b) in before.iter().enumerate() {
            let now = a.select(&tuple(i as u32), 0).unwrap();
            if *b != gone {
                assert_eq!(now, *b, "connection {i} moved although its backend stayed");
            } else {
                assert_ne!(now, gone);
            }
        }
    }

    #[test]
    fn adding_a_backend_moves_about_one_in_n_plus_one() {
        let mut a = LbState::new(lb(9));
        let before: Vec<Backend> = (0..30_000).map(|i| a.select(&tuple(i), 0).unwrap()).collect();
        a.update(lb(10));
        let new = a.config.backends[9];
        let mut moved = 0;
        for (i, b) in before.iter().enumerate() {
            let now = a.select(&tuple(i as u32), 0).unwrap();
            if now != *b {
                assert_eq!(now, new, "a connection moved to an old backend");
                moved += 1;
            }
        }
        let share = moved as f64 / before.len() as f64;
        assert!((0.08..0.12).contains(&share), "moved {share:.3}, expected about 0.10");
    }

    #[test]
    fn spread_is_even() {
        let mut a = LbState::new(lb(8));
        let mut counts = HashMap::new();
        for i in 0..40_000 {
            *counts.entry(a.select(&tuple(i), 0).unwrap()).or_insert(0) += 1;
        }
        for (_, c) in counts {
            assert!((4000..6000).contains(&c), "{c} of 40000 on one of 8 backends");
        }
    }

    #[test]
    fn client_ip_affinity_sticks_and_expires() {
        let mut cfg = lb(8);
        cfg.affinity_timeout_ns = Some(100);
        let mut a = LbState::new(cfg);
        let mut t = tuple(7);
        let first = a.select(&t, 0).unwrap();
        for port in 0..50 {
            t.sport = 2000 + port;
            assert_eq!(a.select(&t, 50).unwrap(), first);
        }
        // Removing the chosen backend breaks the affinity.
        let mut cfg = lb(8);
        cfg.affinity_timeout_ns = Some(100);
        cfg.backends.retain(|b| *b != first);
        a.update(cfg);
        assert_ne!(a.select(&t, 60).unwrap(), first);
    }

    #[test]
    fn no_backends_no_choice() {
        let mut a = LbState::new(lb(0));
        assert_eq!(a.select(&tuple(1), 0), None);
    }
}
