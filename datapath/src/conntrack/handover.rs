//! Conntrack's hand-over from one datapath process to the next.
//!
//! A datapath process told to stop (SIGTERM: a restart, a rolling update of its DaemonSet)
//! writes every live connection — tuples, NAT binding, state, mark, label, remaining
//! lifetime — to a file next to its control socket; the next process reads it before it
//! forwards a packet. Connections then keep their NAT bindings exactly (a reply that comes
//! first after the restart is un-NATed as before, which the rebuild from the next packet
//! could not do) and their state (an established connection stays established).
//!
//! Format (all integers big-endian): the magic `SKEINCT1`, the kernel's boot id (36 ASCII
//! bytes, `/proc/sys/kernel/random/boot_id`), the wall-clock time of writing (u64 ns since
//! the Unix epoch), the number of records (u32), then that many fixed-size records:
//! original tuple, reply tuple (each: source and destination address 16 bytes, source and
//! destination port u16, protocol u8, zone u16), remaining lifetime (u64 ns), label
//! (2 × u64), mark (u32), state (u8), flags (u8). A file from another boot is refused
//! (conntrack does not outlive the machine's network), a record's remaining lifetime is
//! reduced by the time the file spent on disk, and a record that would duplicate a held
//! connection's tuple is skipped.

use super::{Conn, Conntrack, F_DNAT, F_FIN_ORIG, F_FIN_REPLY, F_SEEN_REPLY, F_SNAT, F_UNASSURED, NIL, State, Tuple};

/// The file's first bytes.
pub const MAGIC: &[u8; 8] = b"SKEINCT1";
const BOOT_ID_LEN: usize = 36;
const HEADER_LEN: usize = MAGIC.len() + BOOT_ID_LEN + 8 + 4;
const TUPLE_LEN: usize = 16 + 16 + 2 + 2 + 1 + 2;
/// Bytes per connection.
const RECORD_LEN: usize = 2 * TUPLE_LEN + 8 + 16 + 4 + 1 + 1;
/// The longest lifetime a record may claim (TCP established's default is 5 days).
const MAX_REMAINING_NS: u64 = 30 * 24 * 3600 * super::SEC;
const KNOWN_FLAGS: u8 = F_SEEN_REPLY | F_SNAT | F_DNAT | F_FIN_ORIG | F_FIN_REPLY | F_UNASSURED;

/// Where and when a hand-over file is written or read: the kernel's boot and the wall
/// clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`, 36 ASCII characters).
    pub boot_id: [u8; BOOT_ID_LEN],
    /// Wall-clock time, ns since the Unix epoch.
    pub unix_ns: u64,
}

impl Origin {
    /// This machine's boot and the time now (a boot id that cannot be read is all zeros:
    /// such a file is taken only by a process that cannot read it either).
    pub fn now() -> Origin {
        let mut boot_id = [0u8; BOOT_ID_LEN];
        if let Ok(s) = std::fs::read_to_string("/proc/sys/kernel/random/boot_id") {
            let s = s.trim().as_bytes();
            if s.len() == BOOT_ID_LEN {
                boot_id.copy_from_slice(s);
            }
        }
        let unix_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos().min(u64::MAX as u128) as u64);
        Origin { boot_id, unix_ns }
    }
}

/// What an import took in and what it left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Connections now held.
    pub imported: usize,
    /// Records whose lifetime ran out while the file waited.
    pub expired: usize,
    /// Records naming a tuple the table already holds (or the same tuple both ways).
    pub duplicates: usize,
    /// Records the table had no room for.
    pub no_room: usize,
}

/// Why a hand-over file was not taken in (nothing was imported).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandoverError {
    /// Not a conntrack hand-over file (or another version of the format).
    #[error("not a conntrack hand-over file (expected it to start with {:?})", String::from_utf8_lossy(MAGIC))]
    Magic,
    /// Shorter than its header or its record count says.
    #[error("truncated: {len} bytes, {expected} expected")]
    Truncated {
        /// Bytes read.
        len: usize,
        /// Bytes the header announces.
        expected: usize,
    },
    /// Longer than its record count says.
    #[error("{extra} bytes after the last record")]
    TrailingBytes {
        /// Bytes beyond the records.
        extra: usize,
    },
    /// Written during another boot of the kernel.
    #[error("written during another boot (boot id {found:?}, this boot {current:?})")]
    OtherBoot {
        /// The file's boot id.
        found: String,
        /// This boot's.
        current: String,
    },
    /// A record that is not a connection.
    #[error("record {index}: {what}")]
    Record {
        /// The record's position, from 0.
        index: usize,
        /// What is wrong with it.
        what: String,
    },
}

fn put_tuple(out: &mut Vec<u8>, t: &Tuple) {
    out.extend_from_slice(&t.src);
    out.extend_from_slice(&t.dst);
    out.extend_from_slice(&t.sport.to_be_bytes());
    out.extend_from_slice(&t.dport.to_be_bytes());
    out.push(t.proto);
    out.extend_from_slice(&t.zone.to_be_bytes());
}

/// A cursor over one record's bytes (its length is checked before it is made).
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        let mut a = [0u8; N];
        a.copy_from_slice(head);
        a
    }

    fn tuple(&mut self) -> Tuple {
        Tuple {
            src: self.take(),
            dst: self.take(),
            sport: u16::from_be_bytes(self.take()),
            dport: u16::from_be_bytes(self.take()),
            proto: self.take::<1>()[0],
            zone: u16::from_be_bytes(self.take()),
        }
    }
}

fn state_of(b: u8) -> Option<State> {
    Some(match b {
        0 => State::TcpSynSent,
        1 => State::TcpSynRecv,
        2 => State::TcpEstablished,
        3 => State::TcpFinWait,
        4 => State::TcpTimeWait,
        5 => State::TcpClosed,
        6 => State::UdpFirst,
        7 => State::UdpMultiple,
        8 => State::IcmpFirst,
        9 => State::IcmpReply,
        10 => State::OtherFirst,
        11 => State::OtherMultiple,
        _ => return None,
    })
}

impl Conntrack {
    /// Every live connection at `now` in the hand-over format, stamped with `origin`, and
    /// how many connections that is.
    pub fn export(&self, now: u64, origin: &Origin) -> (Vec<u8>, usize) {
        let live: Vec<&Conn> = self.connections(now).collect();
        let mut out = Vec::with_capacity(HEADER_LEN + live.len() * RECORD_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&origin.boot_id);
        out.extend_from_slice(&origin.unix_ns.to_be_bytes());
        out.extend_from_slice(&(live.len() as u32).to_be_bytes());
        for c in live {
            put_tuple(&mut out, &c.orig);
            put_tuple(&mut out, &c.reply);
            out.extend_from_slice(&(c.expires - now).to_be_bytes());
            out.extend_from_slice(&c.label[0].to_be_bytes());
            out.extend_from_slice(&c.label[1].to_be_bytes());
            out.extend_from_slice(&c.mark.to_be_bytes());
            out.push(c.state as u8);
            out.push(c.flags);
        }
        let connections = (out.len() - HEADER_LEN) / RECORD_LEN;
        (out, connections)
    }

    /// Takes in the connections of a hand-over file written by [`Conntrack::export`] on
    /// this boot. The whole file is checked before anything is imported: a malformed file
    /// changes nothing. Records are imported within the table's limit; zone limits are
    /// not applied (the connections existed under the previous process's).
    pub fn import(&mut self, data: &[u8], now: u64, current: &Origin) -> Result<ImportReport, HandoverError> {
        if data.len() < MAGIC.len() || &data[..MAGIC.len()] != MAGIC {
            return Err(HandoverError::Magic);
        }
        if data.len() < HEADER_LEN {
            return Err(HandoverError::Truncated { len: data.len(), expected: HEADER_LEN });
        }
        let mut header = Fields(&data[MAGIC.len()..HEADER_LEN]);
        let boot_id: [u8; BOOT_ID_LEN] = header.take();
        let written = u64::from_be_bytes(header.take());
        let count = u32::from_be_bytes(header.take()) as usize;
        if boot_id != current.boot_id {
            return Err(HandoverError::OtherBoot {
                found: String::from_utf8_lossy(&boot_id).into_owned(),
                current: String::from_utf8_lossy(&current.boot_id).into_owned(),
            });
        }
        let expected = count.saturating_mul(RECORD_LEN).saturating_add(HEADER_LEN);
        if data.len() < expected {
            return Err(HandoverError::Truncated { len: data.len(), expected });
        }
        if data.len() > expected {
            return Err(HandoverError::TrailingBytes { extra: data.len() - expected });
        }
        // Time the file waited (a clock stepped backwards counts as none).
        let waited = current.unix_ns.saturating_sub(written);
        let mut conns = Vec::with_capacity(count);
        for (index, record) in data[HEADER_LEN..].chunks_exact(RECORD_LEN).enumerate() {
            let bad = |what: String| HandoverError::Record { index, what };
            let mut f = Fields(record);
            let orig = f.tuple();
            let reply = f.tuple();
            let remaining = u64::from_be_bytes(f.take());
            let label = [u64::from_be_bytes(f.take()), u64::from_be_bytes(f.take())];
            let mark = u32::from_be_bytes(f.take());
            let [state] = f.take::<1>();
            let [flags] = f.take::<1>();
            let state = state_of(state).ok_or_else(|| bad(format!("unknown state {state}")))?;
            if flags & !KNOWN_FLAGS != 0 {
                return Err(bad(format!("unknown flags {:#04x}", flags & !KNOWN_FLAGS)));
            }
            if remaining > MAX_REMAINING_NS {
                return Err(bad(format!("lifetime of {} s is beyond any timeout", remaining / super::SEC)));
            }
            if orig.proto != reply.proto || orig.zone != reply.zone {
                return Err(bad("original and reply tuples differ in protocol or zone".into()));
            }
            conns.push((Conn { orig, reply, expires: 0, label, mark, state, flags, links: [[NIL; 2]; 2] }, remaining));
        }
        let mut report = ImportReport::default();
        for (mut c, remaining) in conns {
            let Some(left) = remaining.checked_sub(waited).filter(|&l| l > 0) else {
                report.expired += 1;
                continue;
            };
            if c.orig == c.reply || self.find(&c.orig, now).is_some() || self.find(&c.reply, now).is_some() {
                report.duplicates += 1;
                continue;
            }
            c.expires = now.saturating_add(left);
            let assured = c.flags & F_UNASSURED == 0;
            match self.insert(c, now) {
                Some(idx) => {
                    if assured {
                        self.unlink(idx);
                    }
                    report.imported += 1;
                }
                None => report.no_room += 1,
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{VIP, dnat_established};
    use super::*;
    use crate::conntrack::{CtConfig, v4};

    const BOOT: Origin =
        Origin { boot_id: *b"0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", unix_ns: 1_000 * super::super::SEC };

    fn later(s: u64) -> Origin {
        Origin { unix_ns: BOOT.unix_ns + s * super::super::SEC, ..BOOT }
    }

    #[test]
    fn a_dnat_connection_keeps_its_binding_state_and_lifetime_in_the_next_table() {
        let (old, client) = dnat_established(100);
        let file = old.export(100, &BOOT).0;
        let mut new = Conntrack::new(CtConfig::default());
        // Two seconds on disk; the new process's clock starts from 5.
        let report = new.import(&file, 5, &later(2)).expect("import");
        assert_eq!(report, ImportReport { imported: 1, ..Default::default() });
        let before = old.connections(100).next().expect("held").clone();
        let (idx, dir) = new.find(&client, 5).expect("the client's tuple is found");
        assert_eq!(dir, crate::conntrack::Dir::Orig);
        let after = new.conn(idx).expect("live").clone();
        assert_eq!((after.orig, after.reply), (before.orig, before.reply));
        assert_eq!(after.reply.src, v4(crate::conntrack::tests::B), "the reply comes from the backend");
        assert_ne!(after.orig.dst, after.reply.src, "DNAT'ed: the client talks to {VIP:#x}");
        assert_eq!(after.state_name(), "ESTABLISHED");
        assert!(after.assured());
        assert_eq!(after.expires() - 5, before.expires() - 100 - 2 * super::super::SEC);
        // The backend's tuple (the reply direction) finds it too: a reply that comes first
        // after the hand-over is un-DNATed.
        assert_eq!(new.find(&after.reply, 5).map(|(_, d)| d), Some(crate::conntrack::Dir::Reply));
    }

    #[test]
    fn expired_duplicate_and_refused_records_are_counted_not_imported() {
        let (old, _) = dnat_established(100);
        let file = old.export(100, &BOOT).0;
        let mut new = Conntrack::new(CtConfig::default());
        assert_eq!(new.import(&file, 0, &BOOT).expect("first").imported, 1);
        assert_eq!(new.import(&file, 0, &BOOT).expect("again").duplicates, 1);
        assert_eq!(new.len(), 1);
        let mut fresh = Conntrack::new(CtConfig::default());
        assert_eq!(fresh.import(&file, 0, &later(6 * 24 * 3600)).expect("late").expired, 1);
        assert!(fresh.is_empty());
        let mut full = Conntrack::new(CtConfig { max_connections: 0, ..CtConfig::default() });
        assert_eq!(full.import(&file, 0, &BOOT).expect("full").no_room, 1);
    }

    #[test]
    fn a_malformed_file_changes_nothing_and_says_what_is_wrong() {
        let (old, _) = dnat_established(100);
        let file = old.export(100, &BOOT).0;
        let mut new = Conntrack::new(CtConfig::default());
        let other = Origin { boot_id: *b"ffffffff-4b5a-6978-8796-a5b4c3d2e1f0", ..BOOT };
        let err = |data: &[u8], at: &Origin, new: &mut Conntrack| new.import(data, 0, at).unwrap_err().to_string();
        assert!(err(b"SKEINCT0", &BOOT, &mut new).contains("not a conntrack hand-over file"));
        assert!(err(&file[..20], &BOOT, &mut new).contains("truncated"));
        assert!(err(&file[..file.len() - 1], &BOOT, &mut new).contains("truncated"));
        assert!(err(&[&file[..], &[0]].concat(), &BOOT, &mut new).contains("1 bytes after the last record"));
        assert!(err(&file, &other, &mut new).contains("another boot"));
        let mut bad_state = file.clone();
        bad_state[HEADER_LEN + RECORD_LEN - 2] = 99;
        assert_eq!(err(&bad_state, &BOOT, &mut new), "record 0: unknown state 99");
        let mut bad_flags = file.clone();
        bad_flags[HEADER_LEN + RECORD_LEN - 1] = 0x80;
        assert_eq!(err(&bad_flags, &BOOT, &mut new), "record 0: unknown flags 0x80");
        let mut bad_zone = file.clone();
        bad_zone[HEADER_LEN + TUPLE_LEN - 1] ^= 1;
        assert!(err(&bad_zone, &BOOT, &mut new).contains("differ in protocol or zone"));
        assert!(new.is_empty(), "nothing of a refused file was imported");
    }

    #[test]
    fn the_imported_table_keeps_its_eviction_lists_consistent() {
        // Unassured connections (a SYN only) go back on the eviction lists: a full table
        // evicts them first, never the imported established one.
        let (mut old, _) = dnat_established(100);
        for sport in 2000..2004 {
            crate::conntrack::tests::syn(&mut old, sport, 1, 100);
        }
        let file = old.export(100, &BOOT).0;
        let mut new = Conntrack::new(CtConfig { max_connections: 5, ..CtConfig::default() });
        assert_eq!(new.import(&file, 0, &BOOT).expect("import").imported, 5);
        let unassured = new.connections(0).filter(|c| !c.assured()).count();
        assert_eq!(unassured, 4);
        crate::conntrack::tests::syn(&mut new, 3000, 1, 1);
        assert_eq!(new.len(), 5);
        assert_eq!(new.counters().early_drops, 1, "the oldest unassured import made room");
        assert_eq!(new.connections(1).filter(|c| c.assured()).count(), 1, "the established one stays");
    }
}
