//! The audit log: packets a `log:ID` action records (the agent puts one in front of every
//! NetworkPolicy drop), kept for the control plane to collect, under a token-bucket rate
//! limit so that a flood of denied packets costs a bounded amount of work and memory.
//!
//! Recording happens on the packet's own path (the action runs on cached hits too), so it
//! is cheap: a lock, a token check, a copy of the addresses into a bounded queue.

use std::collections::VecDeque;
use std::net::IpAddr;

use crate::key::{Field, FlowKey, eth_type};

/// Rate limit of the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditConfig {
    /// Records per second, sustained (0: record nothing).
    pub per_second: u32,
    /// Records allowed in a burst.
    pub burst: u32,
    /// Records kept until collected; beyond, the oldest go (and are counted).
    pub capacity: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig { per_second: 20, burst: 100, capacity: 1024 }
    }
}

/// One recorded packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditRecord {
    /// The id of the `log` action (the control plane's meaning).
    pub id: u32,
    /// When (caller's clock, ns).
    pub time: u64,
    /// Input port.
    pub in_port: u32,
    /// Source address (`None` for a frame that is not IP).
    pub src: Option<IpAddr>,
    /// Destination address.
    pub dst: Option<IpAddr>,
    /// IP protocol.
    pub proto: u8,
    /// Source port (ICMP: type).
    pub sport: u16,
    /// Destination port (ICMP: code).
    pub dport: u16,
}

impl AuditRecord {
    fn from_key(id: u32, key: &FlowKey, time: u64) -> AuditRecord {
        let ty = key.get(Field::EthType) as u16;
        let (src, dst) = match ty {
            eth_type::IPV4 => (
                Some(IpAddr::from((key.get(Field::Ipv4Src) as u32).to_be_bytes())),
                Some(IpAddr::from((key.get(Field::Ipv4Dst) as u32).to_be_bytes())),
            ),
            eth_type::IPV6 => (
                Some(IpAddr::from(key.get(Field::Ipv6Src).to_be_bytes())),
                Some(IpAddr::from(key.get(Field::Ipv6Dst).to_be_bytes())),
            ),
            _ => (None, None),
        };
        let proto = if src.is_some() { key.get(Field::NwProto) as u8 } else { 0 };
        let (sport, dport) = match proto {
            1 | 58 => (key.get(Field::IcmpType) as u16, key.get(Field::IcmpCode) as u16),
            _ => (key.get(Field::TpSrc) as u16, key.get(Field::TpDst) as u16),
        };
        AuditRecord { id, time, in_port: key.get(Field::InPort) as u32, src, dst, proto, sport, dport }
    }
}

/// What [`AuditLog::take`] hands over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditBatch {
    /// Records, oldest first.
    pub records: Vec<AuditRecord>,
    /// Packets not recorded since the last collection (over the rate, or pushed out of a
    /// full queue).
    pub suppressed: u64,
}

/// The audit log of one datapath.
#[derive(Debug)]
pub struct AuditLog {
    config: AuditConfig,
    /// Tokens, in millionths of a record.
    tokens: u64,
    last: Option<u64>,
    records: VecDeque<AuditRecord>,
    suppressed: u64,
}

const MICRO: u64 = 1_000_000;

impl AuditLog {
    /// An empty log with a full bucket.
    pub fn new(config: AuditConfig) -> AuditLog {
        AuditLog {
            config,
            tokens: u64::from(config.burst) * MICRO,
            last: None,
            records: VecDeque::new(),
            suppressed: 0,
        }
    }

    /// A new rate limit; the bucket starts full again.
    pub fn set_config(&mut self, config: AuditConfig) {
        self.config = config;
        self.tokens = u64::from(config.burst) * MICRO;
        self.last = None;
    }

    /// Records the packet with key `key` under `id` at `now` (ns), if the rate allows.
    pub fn record(&mut self, id: u32, key: &FlowKey, now: u64) {
        if self.config.per_second == 0 {
            self.suppressed += 1;
            return;
        }
        let elapsed = self.last.map_or(0, |l| now.saturating_sub(l));
        self.last = Some(now);
        // Tokens per ns = per_second / 1e9; in millionths: per_second * elapsed / 1000.
        let refill = u64::from(self.config.per_second).saturating_mul(elapsed) / 1000;
        self.tokens = self.tokens.saturating_add(refill).min(u64::from(self.config.burst.max(1)) * MICRO);
        if self.tokens < MICRO {
            self.suppressed += 1;
            return;
        }
        self.tokens -= MICRO;
        if self.records.len() >= self.config.capacity.max(1) {
            self.records.pop_front();
            self.suppressed += 1;
        }
        self.records.push_back(AuditRecord::from_key(id, key, now));
    }

    /// Hands over what was recorded since the last call.
    pub fn take(&mut self) -> AuditBatch {
        AuditBatch { records: self.records.drain(..).collect(), suppressed: std::mem::take(&mut self.suppressed) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sport: u16) -> FlowKey {
        let mut k = FlowKey::ZERO;
        k.set(Field::EthType, u128::from(eth_type::IPV4));
        k.set(Field::Ipv4Src, 0x0af4_0003);
        k.set(Field::Ipv4Dst, 0x0af4_0104);
        k.set(Field::NwProto, 6);
        k.set(Field::TpSrc, u128::from(sport));
        k.set(Field::TpDst, 8080);
        k.set(Field::InPort, 7);
        k
    }

    #[test]
    fn bursts_then_the_rate_and_counts_the_rest() {
        let mut log = AuditLog::new(AuditConfig { per_second: 10, burst: 3, capacity: 100 });
        for i in 0..5 {
            log.record(1, &key(i), 1_000);
        }
        let b = log.take();
        assert_eq!((b.records.len(), b.suppressed), (3, 2));
        let r = b.records[0];
        assert_eq!(
            (r.id, r.in_port, r.src, r.dst, r.proto, r.sport, r.dport),
            (1, 7, Some("10.244.0.3".parse().unwrap()), Some("10.244.1.4".parse().unwrap()), 6, 0, 8080)
        );
        // 10/s: one more after 100 ms, not before.
        log.record(2, &key(9), 1_000 + 50_000_000);
        log.record(2, &key(9), 1_000 + 100_000_000);
        let b = log.take();
        assert_eq!((b.records.len(), b.suppressed), (1, 1));
        assert_eq!(log.take(), AuditBatch::default());
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_zero_rate_records_nothing() {
        let mut log = AuditLog::new(AuditConfig { per_second: 1000, burst: 10, capacity: 2 });
        for i in 0..3 {
            log.record(1, &key(i), 0);
        }
        let b = log.take();
        assert_eq!(b.records.iter().map(|r| r.sport).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(b.suppressed, 1);
        let mut off = AuditLog::new(AuditConfig { per_second: 0, ..AuditConfig::default() });
        off.record(1, &key(1), 0);
        assert_eq!(off.take(), AuditBatch { records: vec![], suppressed: 1 });
    }
}
