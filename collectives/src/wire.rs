//! Wire format: the bootstrap messages (register, address table, reject, peer connect) and the
//! 24-byte header in front of every collective payload. Pure encode/decode over byte slices;
//! every decoder takes untrusted bytes and returns an error, never panics (see `fuzz/`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::datatype::{DType, ReduceOp};

/// First bytes of every bootstrap message body.
pub const BOOTSTRAP_MAGIC: [u8; 4] = *b"SKNC";
/// Bootstrap protocol version; bump on any incompatible change.
pub const PROTOCOL_VERSION: u8 = 1;
/// Largest world size the wire format accepts (bounds what a peer can make us allocate).
pub const MAX_WORLD_SIZE: usize = 1 << 16;
/// Largest bootstrap message body (an address table of `MAX_WORLD_SIZE` IPv6 entries fits).
pub const MAX_BOOTSTRAP_BODY: usize = 24 + MAX_WORLD_SIZE * 19;
/// Longest reason text in a reject message.
pub const MAX_REASON_LEN: usize = 1024;
/// Size of the header in front of every collective payload.
pub const FRAME_HEADER_LEN: usize = 24;
/// First two bytes of every frame header.
pub const FRAME_MAGIC: [u8; 2] = *b"SK";

/// What was wrong with bytes received from a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The input ended before the named field.
    #[error("truncated {what}: need {need} bytes, have {have}")]
    Truncated {
        /// The structure or field being read.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// The magic bytes are wrong: not a Skein peer, or the stream lost its framing.
    #[error("bad magic {got:02x?}, expected {expected:02x?}")]
    BadMagic {
        /// What arrived.
        got: Vec<u8>,
        /// What was expected.
        expected: Vec<u8>,
    },
    /// The peer speaks another protocol version.
    #[error("unsupported protocol version {got} (this build speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion {
        /// The peer's version.
        got: u8,
    },
    /// Unknown message kind.
    #[error("unknown bootstrap message kind {got}")]
    UnknownKind {
        /// The kind byte.
        got: u8,
    },
    /// A field holds a value outside its range.
    #[error("field {field} out of range: {value}")]
    FieldOutOfRange {
        /// The field's name.
        field: &'static str,
        /// The value, as received.
        value: u64,
    },
    /// A length prefix exceeds the limit.
    #[error("{what} length {len} exceeds the limit of {max}")]
    TooLong {
        /// What carried the length.
        what: &'static str,
        /// The length received.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// Bytes left over after a complete message.
    #[error("{n} unexpected trailing bytes after {what}")]
    TrailingBytes {
        /// The message kind.
        what: &'static str,
        /// How many bytes were left.
        n: usize,
    },
    /// The reject reason is not UTF-8.
    #[error("reject reason is not UTF-8")]
    BadUtf8,
}

/// A bootstrap message, exchanged length-prefixed (`u32` little-endian body length, then body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootstrapMessage {
    /// Rank → rendezvous: "I am `rank` of `world_size`, my data listener is on `listen_port`".
    Register {
        /// Sender's rank.
        rank: u32,
        /// World size the sender was configured with.
        world_size: u32,
        /// Port of the sender's data listener (its address is the connection's source).
        listen_port: u16,
        /// Whether the sender's native byte order is little-endian (payloads are native).
        little_endian: bool,
    },
    /// Rendezvous → rank: every rank's data listener, and the job's nonce.
    Table {
        /// Random per-job value; peer connections must present it.
        job: u64,
        /// `addrs[r]` is rank `r`'s data listener.
        addrs: Vec<SocketAddr>,
    },
    /// Rendezvous → rank: registration refused, with the reason.
    Reject {
        /// Human-readable reason.
        reason: String,
    },
    /// Rank → rank: opens a data connection (higher rank connects to lower).
    Connect {
        /// Sender's rank.
        rank: u32,
        /// Sender's world size.
        world_size: u32,
        /// The job nonce from the table.
        job: u64,
    },
}

const KIND_REGISTER: u8 = 1;
const KIND_TABLE: u8 = 2;
const KIND_REJECT: u8 = 3;
const KIND_CONNECT: u8 = 4;

struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated { what: self.what, need: n, have: self.buf.len() });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn finish(self) -> Result<(), WireError> {
        if self.buf.is_empty() { Ok(()) } else { Err(WireError::TrailingBytes { what: self.what, n: self.buf.len() }) }
    }
}

fn check_world_size(world_size: u32) -> Result<(), WireError> {
    if world_size == 0 || world_size as usize > MAX_WORLD_SIZE {
        return Err(WireError::FieldOutOfRange { field: "world_size", value: world_size.into() });
    }
    Ok(())
}

fn check_rank(rank: u32, world_size: u32) -> Result<(), WireError> {
    if rank >= world_size {
        return Err(WireError::FieldOutOfRange { field: "rank", value: rank.into() });
    }
    Ok(())
}

impl BootstrapMessage {
    /// Encodes the body (without the length prefix).
    pub fn encode_body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        out.extend_from_slice(&BOOTSTRAP_MAGIC);
        out.push(PROTOCOL_VERSION);
        match self {
            BootstrapMessage::Register { rank, world_size, listen_port, little_endian } => {
                out.push(KIND_REGISTER);
                out.extend_from_slice(&world_size.to_le_bytes());
                out.extend_from_slice(&rank.to_le_bytes());
                out.extend_from_slice(&listen_port.to_le_bytes());
                out.push(u8::from(*little_endian));
            }
            BootstrapMessage::Table { job, addrs } => {
                out.push(KIND_TABLE);
                out.extend_from_slice(&job.to_le_bytes());
                out.extend_from_slice(&(addrs.len() as u32).to_le_bytes());
                for a in addrs {
                    match a.ip() {
                        IpAddr::V4(ip) => {
                            out.push(4);
                            out.extend_from_slice(&ip.octets());
                        }
                        IpAddr::V6(ip) => {
                            out.push(6);
                            out.extend_from_slice(&ip.octets());
                        }
                    }
                    out.extend_from_slice(&a.port().to_le_bytes());
                }
            }
            BootstrapMessage::Reject { reason } => {
                out.push(KIND_REJECT);
                let mut end = reason.len().min(MAX_REASON_LEN);
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                out.extend_from_slice(&reason.as_bytes()[..end]);
            }
            BootstrapMessage::Connect { rank, world_size, job } => {
                out.push(KIND_CONNECT);
                out.extend_from_slice(&world_size.to_le_bytes());
                out.extend_from_slice(&rank.to_le_bytes());
                out.extend_from_slice(&job.to_le_bytes());
            }
        }
        out
    }

    /// Encodes the message with its length prefix, ready to write.
    pub fn encode_frame(&self) -> Vec<u8> {
        let body = self.encode_body();
        let mut out = Vec::with_capacity(4 + body.len());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Checks a length prefix before the body is read, so a peer cannot make us allocate more
    /// than `MAX_BOOTSTRAP_BODY`.
    pub fn check_length_prefix(prefix: [u8; 4]) -> Result<usize, WireError> {
        let len = u32::from_le_bytes(prefix) as usize;
        if len > MAX_BOOTSTRAP_BODY {
            return Err(WireError::TooLong {
                what: "bootstrap message",
                len: len as u64,
                max: MAX_BOOTSTRAP_BODY as u64,
            });
        }
        Ok(len)
    }

    /// Decodes a body (without the length prefix).
    pub fn decode_body(body: &[u8]) -> Result<BootstrapMessage, WireError> {
        if body.len() > MAX_BOOTSTRAP_BODY {
            return Err(WireError::TooLong {
                what: "bootstrap message",
                len: body.len() as u64,
                max: MAX_BOOTSTRAP_BODY as u64,
            });
        }
        let mut r = Reader { buf: body, what: "bootstrap message header" };
        let magic: [u8; 4] = r.array()?;
        if magic != BOOTSTRAP_MAGIC {
            return Err(WireError::BadMagic { got: magic.to_vec(), expected: BOOTSTRAP_MAGIC.to_vec() });
        }
        let version = r.u8()?;
        if version != PROTOCOL_VERSION {
            return Err(WireError::UnsupportedVersion { got: version });
        }
        let kind = r.u8()?;
        match kind {
            KIND_REGISTER => {
                r.what = "register message";
                let world_size = r.u32()?;
                let rank = r.u32()?;
                let listen_port = r.u16()?;
                let le = r.u8()?;
                r.finish()?;
                check_world_size(world_size)?;
                check_rank(rank, world_size)?;
                if listen_port == 0 {
                    return Err(WireError::FieldOutOfRange { field: "listen_port", value: 0 });
                }
                if le > 1 {
                    return Err(WireError::FieldOutOfRange { field: "little_endian", value: le.into() });
                }
                Ok(BootstrapMessage::Register { rank, world_size, listen_port, little_endian: le == 1 })
            }
            KIND_TABLE => {
                r.what = "address table";
                let job = r.u64()?;
                let n = r.u32()?;
                check_world_size(n)?;
                // The smallest entry is 7 bytes: refuse counts the body cannot hold before
                // allocating for them.
                if (n as usize).saturating_mul(7) > r.buf.len() {
                    return Err(WireError::Truncated {
                        what: "address table",
                        need: n as usize * 7,
                        have: r.buf.len(),
                    });
                }
                let mut addrs = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    let family = r.u8()?;
                    let ip = match family {
                        4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>()?)),
                        6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>()?)),
                        other => {
                            return Err(WireError::FieldOutOfRange { field: "address family", value: other.into() });
                        }
                    };
                    let port = r.u16()?;
                    addrs.push(SocketAddr::new(ip, port));
                }
                r.finish()?;
                Ok(BootstrapMessage::Table { job, addrs })
            }
            KIND_REJECT => {
                let rest = r.buf;
                if rest.len() > MAX_REASON_LEN {
                    return Err(WireError::TooLong {
                        what: "reject reason",
                        len: rest.len() as u64,
                        max: MAX_REASON_LEN as u64,
                    });
                }
                let reason = std::str::from_utf8(rest).map_err(|_| WireError::BadUtf8)?;
                Ok(BootstrapMessage::Reject { reason: reason.to_string() })
            }
            KIND_CONNECT => {
                r.what = "connect message";
                let world_size = r.u32()?;
                let rank = r.u32()?;
                let job = r.u64()?;
                r.finish()?;
                check_world_size(world_size)?;
                check_rank(rank, world_size)?;
                Ok(BootstrapMessage::Connect { rank, world_size, job })
            }
            other => Err(WireError::UnknownKind { got: other }),
        }
    }
}

/// Which collective a frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Collective {
    /// Barrier.
    Barrier,
    /// Broadcast.
    Broadcast,
    /// Scatter.
    Scatter,
    /// Gather.
    Gather,
    /// Allgather.
    Allgather,
    /// Reduce.
    Reduce,
    /// Allreduce.
    Allreduce,
    /// Point-to-point ping-pong used by `skein-allreduce model`.
    PingPong,
}

impl Collective {
    const ALL: [Collective; 8] = [
        Collective::Barrier,
        Collective::Broadcast,
        Collective::Scatter,
        Collective::Gather,
        Collective::Allgather,
        Collective::Reduce,
        Collective::Allreduce,
        Collective::PingPong,
    ];

    /// Lower-case name, as in logs and errors.
    pub fn name(self) -> &'static str {
        match self {
            Collective::Barrier => "barrier",
            Collective::Broadcast => "broadcast",
            Collective::Scatter => "scatter",
            Collective::Gather => "gather",
            Collective::Allgather => "allgather",
            Collective::Reduce => "reduce",
            Collective::Allreduce => "allreduce",
            Collective::PingPong => "ping-pong",
        }
    }

    fn code(self) -> u8 {
        Collective::ALL.iter().position(|c| *c == self).unwrap_or(0) as u8 + 1
    }

    fn from_code(code: u8) -> Option<Collective> {
        Collective::ALL.get(usize::from(code).checked_sub(1)?).copied()
    }
}

impl fmt::Display for Collective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The header in front of every collective payload. All of it except `len` is the same for
/// every message of one collective call, so a receiver can tell a peer that is running a
/// different call (other length, type, op, root or algorithm) from one that is merely slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The collective.
    pub collective: Collective,
    /// The algorithm's code within that collective (see `algorithms`).
    pub algorithm: u8,
    /// Element type, if the collective carries typed data.
    pub dtype: Option<DType>,
    /// Reduction, if the collective reduces.
    pub op: Option<ReduceOp>,
    /// Per-communicator call counter (wraps).
    pub seq: u32,
    /// Root rank for rooted collectives, 0 otherwise.
    pub root: u32,
    /// Payload bytes that follow.
    pub len: u64,
}

impl FrameHeader {
    /// Encodes to the fixed 24 bytes.
    pub fn encode(&self) -> [u8; FRAME_HEADER_LEN] {
        let mut b = [0u8; FRAME_HEADER_LEN];
        b[0..2].copy_from_slice(&FRAME_MAGIC);
        b[2] = self.collective.code();
        b[3] = self.algorithm;
        b[4] = self.dtype.map_or(0, DType::wire_code);
        b[5] = self.op.map_or(0, ReduceOp::wire_code);
        // b[6..8] reserved, zero.
        b[8..12].copy_from_slice(&self.seq.to_le_bytes());
        b[12..16].copy_from_slice(&self.root.to_le_bytes());
        b[16..24].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Decodes and validates every field.
    pub fn decode(b: &[u8]) -> Result<FrameHeader, WireError> {
        let mut r = Reader { buf: b, what: "frame header" };
        let magic: [u8; 2] = r.array()?;
        if magic != FRAME_MAGIC {
            return Err(WireError::BadMagic { got: magic.to_vec(), expected: FRAME_MAGIC.to_vec() });
        }
        let collective_code = r.u8()?;
        let collective = Collective::from_code(collective_code)
            .ok_or(WireError::FieldOutOfRange { field: "collective", value: collective_code.into() })?;
        let algorithm = r.u8()?;
        if algorithm > 15 {
            return Err(WireError::FieldOutOfRange { field: "algorithm", value: algorithm.into() });
        }
        let dtype_code = r.u8()?;
        let dtype = match dtype_code {
            0 => None,
            c => Some(DType::from_wire_code(c).ok_or(WireError::FieldOutOfRange { field: "dtype", value: c.into() })?),
        };
        let op_code = r.u8()?;
        let op = match op_code {
            0 => None,
            c => Some(ReduceOp::from_wire_code(c).ok_or(WireError::FieldOutOfRange { field: "op", value: c.into() })?),
        };
        let reserved = r.u16()?;
        if reserved != 0 {
            return Err(WireError::FieldOutOfRange { field: "reserved", value: reserved.into() });
        }
        let seq = r.u32()?;
        let root = r.u32()?;
        if root as usize >= MAX_WORLD_SIZE {
            return Err(WireError::FieldOutOfRange { field: "root", value: root.into() });
        }
        let len = r.u64()?;
        r.finish()?;
        Ok(FrameHeader { collective, algorithm, dtype, op, seq, root, len })
    }
}

impl fmt::Display for FrameHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (call #{}, algorithm {}", self.collective, self.seq, self.algorithm)?;
        if let Some(d) = self.dtype {
            write!(f, ", {d}")?;
        }
        if let Some(o) = self.op {
            write!(f, ", {o}")?;
        }
        if matches!(
            self.collective,
            Collective::Broadcast | Collective::Scatter | Collective::Gather | Collective::Reduce
        ) {
            write!(f, ", root {}", self.root)?;
        }
        write!(f, ", {} payload bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(m: BootstrapMessage) {
        let frame = m.encode_frame();
        let len = BootstrapMessage::check_length_prefix(frame[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, frame.len() - 4);
        assert_eq!(BootstrapMessage::decode_body(&frame[4..]).unwrap(), m);
    }

    #[test]
    fn bootstrap_messages_round_trip() {
        round_trip(BootstrapMessage::Register { rank: 3, world_size: 9, listen_port: 40000, little_endian: true });
        round_trip(BootstrapMessage::Table {
            job: 0xdead_beef_0102_0304,
            addrs: vec!["127.0.0.1:1".parse().unwrap(), "[::1]:65535".parse().unwrap()],
        });
        round_trip(BootstrapMessage::Reject { reason: "rank 3 already registered".into() });
        round_trip(BootstrapMessage::Connect { rank: 2, world_size: 4, job: 7 });
    }

    #[test]
    fn bootstrap_decoder_names_what_is_wrong() {
        let mut body =
            BootstrapMessage::Register { rank: 1, world_size: 2, listen_port: 5, little_endian: true }.encode_body();
        let good = body.clone();
        body[0] = b'X';
        assert!(matches!(BootstrapMessage::decode_body(&body), Err(WireError::BadMagic { .. })));
        let mut body = good.clone();
        body[4] = 9;
        assert_eq!(BootstrapMessage::decode_body(&body), Err(WireError::UnsupportedVersion { got: 9 }));
        // rank >= world size
        let mut body = good.clone();
        body[10..14].copy_from_slice(&5u32.to_le_bytes());
        assert_eq!(BootstrapMessage::decode_body(&body), Err(WireError::FieldOutOfRange { field: "rank", value: 5 }));
        assert!(matches!(BootstrapMessage::decode_body(&good[..good.len() - 1]), Err(WireError::Truncated { .. })));
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(BootstrapMessage::decode_body(&long), Err(WireError::TrailingBytes { n: 1, .. })));
        assert!(BootstrapMessage::check_length_prefix(u32::MAX.to_le_bytes()).is_err());
    }

    #[test]
    fn table_count_larger_than_body_is_refused_without_allocating() {
        let mut body = BOOTSTRAP_MAGIC.to_vec();
        body.extend_from_slice(&[PROTOCOL_VERSION, KIND_TABLE]);
        body.extend_from_slice(&0u64.to_le_bytes());
        body.extend_from_slice(&60000u32.to_le_bytes());
        assert!(matches!(BootstrapMessage::decode_body(&body), Err(WireError::Truncated { .. })));
    }

    #[test]
    fn frame_header_round_trips_and_rejects_garbage() {
        let h = FrameHeader {
            collective: Collective::Allreduce,
            algorithm: 2,
            dtype: Some(DType::F64),
            op: Some(ReduceOp::Max),
            seq: 77,
            root: 0,
            len: 1 << 40,
        };
        let b = h.encode();
        assert_eq!(FrameHeader::decode(&b).unwrap(), h);
        let mut bad = b;
        bad[2] = 0;
        assert!(FrameHeader::decode(&bad).is_err());
        let mut bad = b;
        bad[4] = 99;
        assert_eq!(FrameHeader::decode(&bad), Err(WireError::FieldOutOfRange { field: "dtype", value: 99 }));
        let mut bad = b;
        bad[6] = 1;
        assert!(FrameHeader::decode(&bad).is_err());
        assert!(FrameHeader::decode(&b[..23]).is_err());
        assert!(h.to_string().contains("allreduce"));
    }
}
