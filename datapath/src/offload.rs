//! Offload metadata that travels with a frame — the Linux `virtio_net_hdr` that an
//! AF_PACKET socket with `PACKET_VNET_HDR` reads and writes — and the software fallbacks
//! for where it cannot travel: completing a partial checksum and segmenting a TSO/GSO
//! super-frame (e.g. before Geneve encapsulation onto a UDP socket).
//!
//! A frame from a veth usually carries a *partial* checksum: the L4 checksum field holds
//! only the folded pseudo-header sum, and whoever finally transmits the frame sums the rest
//! from `csum_start` and stores the result at `csum_start + csum_offset`. Header rewrites
//! must then update that field differently (see [`crate::packet::write_field`]).

use crate::key::ip_proto;
use crate::packet::{checksum, ones_sum};
use crate::parse::{ABSENT, HeaderOffsets, L3};

/// `virtio_net_hdr.flags`: the checksum is partial and must be completed.
pub const F_NEEDS_CSUM: u8 = 1;
/// `virtio_net_hdr.flags`: the checksum has been verified.
pub const F_DATA_VALID: u8 = 2;

/// `virtio_net_hdr.gso_type` values.
pub mod gso_type {
    /// Not a super-frame.
    pub const NONE: u8 = 0;
    /// TCP over IPv4.
    pub const TCPV4: u8 = 1;
    /// UDP fragmentation offload (not produced by veth; treated as opaque).
    pub const UDP: u8 = 3;
    /// TCP over IPv6.
    pub const TCPV6: u8 = 4;
    /// UDP segmentation (one datagram per segment).
    pub const UDP_L4: u8 = 5;
    /// Flag: the TCP stream uses ECN (CWR only on the first segment).
    pub const ECN: u8 = 0x80;
}

/// Size of `struct virtio_net_hdr` on the wire of a packet socket.
pub const VNET_HDR_LEN: usize = 10;

/// Offload state of a frame (`struct virtio_net_hdr`, host byte order).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Offload {
    /// [`F_NEEDS_CSUM`] / [`F_DATA_VALID`].
    pub flags: u8,
    /// One of [`gso_type`], possibly with [`gso_type::ECN`].
    pub gso_type: u8,
    /// Length of the headers to replicate in each segment.
    pub hdr_len: u16,
    /// Payload bytes per segment (0: not a super-frame).
    pub gso_size: u16,
    /// Where checksumming starts (from the start of the Ethernet header).
    pub csum_start: u16,
    /// Where, from `csum_start`, the checksum goes.
    pub csum_offset: u16,
}

impl Offload {
    /// No offload: a complete frame with complete checksums.
    pub const NONE: Offload = Offload { flags: 0, gso_type: 0, hdr_len: 0, gso_size: 0, csum_start: 0, csum_offset: 0 };

    /// Reads a `virtio_net_hdr` (little-endian, as Linux's packet sockets use on every
    /// little-endian host and for the legacy header everywhere we run).
    pub fn from_vnet(b: &[u8; VNET_HDR_LEN]) -> Offload {
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Offload { flags: b[0], gso_type: b[1], hdr_len: u(2), gso_size: u(4), csum_start: u(6), csum_offset: u(8) }
    }

    /// Writes the `virtio_net_hdr`.
    pub fn to_vnet(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }

    /// True if the L4 checksum is partial.
    #[inline]
    pub fn csum_partial(&self) -> bool {
        self.flags & F_NEEDS_CSUM != 0
    }

    /// True if the frame is a super-frame to be segmented.
    #[inline]
    pub fn is_gso(&self) -> bool {
        self.gso_type & !gso_type::ECN != gso_type::NONE && self.gso_size != 0
    }

    /// The same offload for a frame whose headers grew by `delta` bytes (a pushed VLAN
    /// tag: +4; popped: −4). `None` if the checksum start would leave the frame.
    pub fn shifted(&self, delta: isize) -> Option<Offload> {
        if delta == 0 || (!self.csum_partial() && !self.is_gso()) {
            return Some(*self);
        }
        let mv = |v: u16| -> Option<u16> { u16::try_from(v as isize + delta).ok() };
        Some(Offload {
            csum_start: if self.csum_partial() { mv(self.csum_start)? } else { self.csum_start },
            hdr_len: if self.hdr_len != 0 { mv(self.hdr_len)? } else { 0 },
            ..*self
        })
    }
}

/// Why a frame's offload could not be resolved in software.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    /// checksum start {start} + offset {offset} is outside the {len}-byte frame
    #[error("checksum start {start} + offset {offset} is outside the {len}-byte frame")]
    BadChecksumOffsets {
        /// `csum_start`.
        start: u16,
        /// `csum_offset`.
        offset: u16,
        /// Frame length.
        len: usize,
    },
    /// super-frame is not TCP or UDP over IPv4/IPv6 with complete headers
    #[error("super-frame is not TCP or UDP over IPv4/IPv6 with complete headers")]
    NotSegmentable,
    /// segment size 0 or larger than an IP packet allows
    #[error("segment size 0 or larger than an IP packet allows")]
    BadSegmentSize,
}

/// Completes a partial checksum in place (what a NIC or `skb_checksum_help` does): sums
/// the frame from `csum_start` — the checksum field holds the pseudo-header seed — and
/// stores the complement at `csum_start + csum_offset`.
pub fn complete_checksum(frame: &mut [u8], o: &Offload) -> Result<(), OffloadError> {
    let start = o.csum_start as usize;
    let at = start + o.csum_offset as usize;
    if at + 2 > frame.len() {
        return Err(OffloadError::BadChecksumOffsets { start: o.csum_start, offset: o.csum_offset, len: frame.len() });
    }
    let c = checksum(&frame[start..], 0);
    // A UDP checksum that computes to 0 is sent as 0xffff (0 means "none"); TCP's 0 is
    // just 0, and so is anything the stack asked for: only a UDP field can tell.
    let c = if c == 0 && o.csum_offset == 6 { 0xffff } else { c };
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Splits a TCP or UDP super-frame into frames of at most `gso_size` payload bytes,
/// each with its own complete headers and complete checksums, handing each to `emit`.
/// `offs` are the frame's parsed header offsets. A frame that is not a super-frame is
/// handed over whole, its partial checksum (if any) completed.
pub fn segment(
    frame: &[u8],
    offs: &HeaderOffsets,
    o: &Offload,
    scratch: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]),
) -> Result<usize, OffloadError> {
    if !o.is_gso() {
        scratch.clear();
        scratch.extend_from_slice(frame);
        if o.csum_partial() {
            complete_checksum(scratch, o)?;
        }
        emit(scratch);
        return Ok(1);
    }
    if offs.l4 == ABSENT || !matches!(offs.l3_kind, L3::Ipv4 | L3::Ipv6) {
        return Err(OffloadError::NotSegmentable);
    }
    let l3 = offs.l3 as usize;
    let l4 = offs.l4 as usize;
    let hdr_end = match offs.l4_proto {
        ip_proto::TCP => l4 + (((*frame.get(l4 + 12).ok_or(OffloadError::NotSegmentable)? >> 4) as usize) * 4),
        ip_proto::UDP => l4 + 8,
        _ => return Err(OffloadError::NotSegmentable),
    };
    // A TCP header shorter than 20 bytes (data offset < 5) is not a TCP header.
    let min_hdr = if offs.l4_proto == ip_proto::TCP { 20 } else { 8 };
    if hdr_end > frame.len() || hdr_end < l4 + min_hdr {
        return Err(OffloadError::NotSegmentable);
    }
    let mss = o.gso_size as usize;
    let payload = &frame[hdr_end..];
    if mss == 0 || hdr_end + mss > 65_535 + 14 {
        return Err(OffloadError::BadSegmentSize);
    }
    let tcp = offs.l4_proto == ip_proto::TCP;
    let seq0 = if tcp { u32::from_be_bytes(frame[l4 + 4..l4 + 8].try_into().unwrap_or_default()) } else { 0 };
    let flags0 = if tcp { frame[l4 + 13] } else { 0 };
    let id0 = if offs.l3_kind == L3::Ipv4 { u16::from_be_bytes([frame[l3 + 4], frame[l3 + 5]]) } else { 0 };
    let n = payload.len().div_ceil(mss).max(1);
    for (i, chunk) in payload.chunks(mss).enumerate().chain(
        // A super-frame with no payload still goes out once.
        (payload.is_empty()).then_some((0, &payload[..0])),
    ) {
        scratch.clear();
        scratch.extend_from_slice(&frame[..hdr_end]);
        scratch.extend_from_slice(chunk);
        let l4_len = scratch.len() - l4;
        match offs.l3_kind {
            L3::Ipv4 => {
                let tot = (scratch.len() - l3) as u16;
                scratch[l3 + 2..l3 + 4].copy_from_slice(&tot.to_be_bytes());
                scratch[l3 + 4..l3 + 6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
                scratch[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
                let ihl = ((scratch[l3] & 0x0f) as usize) * 4;
                let c = checksum(&scratch[l3..l3 + ihl], 0);
                scratch[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
            }
            _ => {
                let plen = (scratch.len() - l3 - 40) as u16;
                scratch[l3 + 4..l3 + 6].copy_from_slice(&plen.to_be_bytes());
            }
        }
        let csum_at = if tcp {
            let seq = seq0.wrapping_add((i * mss) as u32);
            scratch[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
            let mut f = flags0;
            if i + 1 < n {
                f &= !(0x01 | 0x08); // FIN and PSH only on the last segment
            }
            if i > 0 {
                f &= !0x80; // CWR only on the first
            }
            scratch[l4 + 13] = f;
            l4 + 16
        } else {
            scratch[l4 + 4..l4 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            l4 + 6
        };
        scratch[csum_at..csum_at + 2].copy_from_slice(&[0, 0]);
        let c = checksum(&scratch[l4..], pseudo_header_sum(scratch, offs, l4_len));
        let c = if c == 0 && !tcp { 0xffff } else { c };
        scratch[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
        emit(scratch);
    }
    Ok(n)
}

/// Most datagrams merged into one UDP super-frame (the kernel's UDP GSO limit).
pub const MAX_COALESCE: usize = 64;

/// Ethernet + IPv4 (no options) + UDP.
const UDP4_HEADERS: usize = 42;

/// If `frame` is a UDP/IPv4 datagram that [`coalesce_udp`] can merge with others of its
/// flow — untagged Ethernet, IPv4 without options, not a fragment, complete checksums or
/// a partial one, not already a super-frame — its flow bytes (everything in the headers
/// that must be equal, with the lengths, id and checksums zeroed) and its payload length.
pub fn udp_coalescable(frame: &[u8], o: &Offload) -> Option<([u8; UDP4_HEADERS], usize)> {
    if o.is_gso() || frame.len() < UDP4_HEADERS || frame[12..14] != [0x08, 0x00] || frame[14] != 0x45 {
        return None;
    }
    let tot = u16::from_be_bytes([frame[16], frame[17]]) as usize;
    let frag = u16::from_be_bytes([frame[20], frame[21]]);
    let udp_len = u16::from_be_bytes([frame[38], frame[39]]) as usize;
    if frame[23] != 17 || frag & 0x3fff != 0 || tot != frame.len() - 14 || udp_len != tot - 20 {
        return None;
    }
    let mut flow = [0u8; UDP4_HEADERS];
    flow.copy_from_slice(&frame[..UDP4_HEADERS]);
    // Lengths, id, header checksum and UDP checksum differ between datagrams of a flow.
    for i in [16, 17, 18, 19, 24, 25, 38, 39, 40, 41] {
        flow[i] = 0;
    }
    Some((flow, frame.len() - UDP4_HEADERS))
}

/// Merges UDP datagrams of one flow (equal [`udp_coalescable`] flow bytes, every payload
/// `seg` bytes but the last, which may be shorter) into one UDP super-frame in `out`,
/// returned with its offload state: the receiving stack — or whoever transmits it —
/// cuts it back into the same datagrams (software GRO, as Linux does for forwarded UDP).
/// One send and one trip through the receiver's IP layer then carry many datagrams.
pub fn coalesce_udp(frames: &[&[u8]], seg: usize, out: &mut Vec<u8>) -> Option<Offload> {
    let first = frames.first()?;
    let payload: usize = frames.iter().map(|f| f.len().saturating_sub(UDP4_HEADERS)).sum();
    if frames.len() > MAX_COALESCE || seg == 0 || seg > u16::MAX as usize || 28 + payload > u16::MAX as usize {
        return None;
    }
    out.clear();
    out.extend_from_slice(&first[..UDP4_HEADERS]);
    for f in frames {
        out.extend_from_slice(&f[UDP4_HEADERS..]);
    }
    let tot = (20 + 8 + payload) as u16;
    out[16..18].copy_from_slice(&tot.to_be_bytes());
    out[24..26].copy_from_slice(&[0, 0]);
    let c = checksum(&out[14..34], 0);
    out[24..26].copy_from_slice(&c.to_be_bytes());
    let udp_len = (8 + payload) as u16;
    out[38..40].copy_from_slice(&udp_len.to_be_bytes());
    // The partial checksum: the pseudo-header sum over the whole super-datagram's
    // length, which segmentation adjusts to each datagram's.
    let mut acc = ones_sum(&out[26..34], 0);
    acc += 17 + udp_len as u32;
    let seed = !checksum(&[], acc);
    out[40..42].copy_from_slice(&seed.to_be_bytes());
    Some(Offload {
        flags: F_NEEDS_CSUM,
        gso_type: gso_type::UDP_L4,
        hdr_len: UDP4_HEADERS as u16,
        gso_size: seg as u16,
        csum_start: 34,
        csum_offset: 6,
    })
}

/// Ethernet + IPv4 without options + the longest TCP header (60 bytes).
const TCP4_MAX_HEADERS: usize = 14 + 20 + 60;

/// TCP flags a segment may carry to be merged: ACK, and PSH (which ends a run).
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;

/// A TCP/IPv4 segment [`coalesce_tcp`] can merge with others of its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSegment {
    /// Everything in the headers that must be equal between merged segments (addresses,
    /// ports, TOS, TTL, DF, acknowledgement, window, options), with the lengths, IP id,
    /// sequence number, PSH flag and checksums zeroed; `hdr_len` bytes of it are used.
    pub flow: [u8; TCP4_MAX_HEADERS],
    /// Ethernet + IPv4 + TCP header bytes.
    pub hdr_len: usize,
    /// The sequence number of the first payload byte.
    pub seq: u32,
    /// Payload bytes.
    pub len: usize,
    /// PSH is set: the sender flushed here, so a run ends with this segment.
    pub push: bool,
}

/// If `frame` is a TCP/IPv4 data segment that [`coalesce_tcp`] can merge with the next
/// segments of its connection — untagged Ethernet, IPv4 without options, not a
/// fragment, no flags but ACK and PSH, a payload, complete and *correct* checksums (as
/// segments arriving from a tunnel have; a corrupted one is left to the receiver, which
/// drops it), not already a super-frame — what identifies its run.
pub fn tcp_coalescable(frame: &[u8], o: &Offload) -> Option<TcpSegment> {
    if o.is_gso() || o.csum_partial() || frame.len() < 54 || frame[12..14] != [0x08, 0x00] || frame[14] != 0x45 {
        return None;
    }
    let tot = u16::from_be_bytes([frame[16], frame[17]]) as usize;
    let frag = u16::from_be_bytes([frame[20], frame[21]]);
    if frame[23] != ip_proto::TCP || frag & 0x3fff != 0 || tot != frame.len() - 14 {
        return None;
    }
    let hdr_len = 34 + (frame[46] >> 4) as usize * 4;
    let flags = frame[47];
    if hdr_len < 54 || hdr_len >= frame.len() || flags & !(TCP_ACK | TCP_PSH) != 0 || flags & TCP_ACK == 0 {
        return None;
    }
    // Both checksums must hold: merging completes them afresh, which would hide damage.
    let l4_len = frame.len() - 34;
    let pseudo = ones_sum(&frame[26..34], 0) + ip_proto::TCP as u32 + l4_len as u32;
    if checksum(&frame[14..34], 0) != 0 || checksum(&frame[34..], pseudo) != 0 {
        return None;
    }
    let mut flow = [0u8; TCP4_MAX_HEADERS];
    flow[..hdr_len].copy_from_slice(&frame[..hdr_len]);
    for i in [16, 17, 18, 19, 24, 25, 38, 39, 40, 41, 50, 51] {
        flow[i] = 0;
    }
    flow[47] &= !TCP_PSH;
    Some(TcpSegment {
        flow,
        hdr_len,
        seq: u32::from_be_bytes([frame[38], frame[39], frame[40], frame[41]]),
        len: frame.len() - hdr_len,
        push: flags & TCP_PSH != 0,
    })
}

impl TcpSegment {
    /// `next` continues this segment's run: same connection and headers, the next
    /// sequence number, and this one a full segment of `seg` bytes without PSH.
    pub fn continued_by(&self, next: &TcpSegment, seg: usize) -> bool {
        !self.push
            && self.len == seg
            && next.len <= seg
            && next.hdr_len == self.hdr_len
            && next.seq == self.seq.wrapping_add(self.len as u32)
            && next.flow[..next.hdr_len] == self.flow[..self.hdr_len]
    }
}

/// How many frames the run of TCP segments starting with `first` holds: `next(k)` is the
/// segment of the `k`-th frame after it (`None`: not one, the run ends there). A run is
/// at most [`MAX_COALESCE`] segments that [`TcpSegment::continued_by`] accepts, and
/// merged must stay an IPv4 datagram (65,535 bytes).
pub fn tcp_run(first: &TcpSegment, mut next: impl FnMut(usize) -> Option<TcpSegment>) -> usize {
    let mut last = *first;
    let mut ip_len = first.hdr_len - 14 + first.len;
    let mut n = 1;
    while n < MAX_COALESCE {
        match next(n) {
            Some(s) if last.continued_by(&s, first.len) && ip_len + s.len <= u16::MAX as usize => {
                ip_len += s.len;
                last = s;
                n += 1;
            }
            _ => break,
        }
    }
    n
}

/// Merges consecutive TCP/IPv4 segments of one connection (a run as
/// [`TcpSegment::continued_by`] accepts: contiguous sequence numbers, every payload `seg`
/// bytes but the last) into one TSO super-frame in `out`, returned with its offload state
/// — the software GRO Linux applies to forwarded TCP: the receiving pod's stack takes one
/// 64 KiB frame instead of dozens of segments, and whoever transmits it cuts it back into
/// the same segments. The merged frame keeps the first segment's headers, with PSH if the
/// last had it. `None` (nothing written) if the merge would exceed an IPv4 datagram.
pub fn coalesce_tcp<F: AsRef<[u8]>>(frames: &[F], hdr_len: usize, seg: usize, out: &mut Vec<u8>) -> Option<Offload> {
    let first = frames.first()?.as_ref();
    let last = frames.last()?.as_ref();
    let payload: usize = frames.iter().map(|f| f.as_ref().len().saturating_sub(hdr_len)).sum();
    if hdr_len < 54 || frames.iter().any(|f| f.as_ref().len() < hdr_len) {
        return None;
    }
    let l4_len = hdr_len - 34 + payload;
    if seg == 0 || seg > u16::MAX as usize || 20 + l4_len > u16::MAX as usize {
        return None;
    }
    out.clear();
    out.extend_from_slice(&first[..hdr_len]);
    for f in frames {
        out.extend_from_slice(&f.as_ref()[hdr_len..]);
    }
    out[16..18].copy_from_slice(&((20 + l4_len) as u16).to_be_bytes());
    out[24..26].copy_from_slice(&[0, 0]);
    let c = checksum(&out[14..34], 0);
    out[24..26].copy_from_slice(&c.to_be_bytes());
    out[47] |= last.get(47).copied().unwrap_or(0) & TCP_PSH;
    // The partial checksum: the pseudo-header sum over the whole super-frame's length,
    // which segmentation adjusts to each segment's.
    let acc = ones_sum(&out[26..34], 0) + ip_proto::TCP as u32 + l4_len as u32;
    let seed = !checksum(&[], acc);
    out[50..52].copy_from_slice(&seed.to_be_bytes());
    Some(Offload {
        flags: F_NEEDS_CSUM,
        gso_type: gso_type::TCPV4,
        hdr_len: hdr_len as u16,
        gso_size: seg as u16,
        csum_start: 34,
        csum_offset: 16,
    })
}

fn pseudo_header_sum(f: &[u8], offs: &HeaderOffsets, l4_len: usize) -> u32 {
    let l3 = offs.l3 as usize;
    let (src, dst) = match offs.l3_kind {
        L3::Ipv4 => (&f[l3 + 12..l3 + 16], &f[l3 + 16..l3 + 20]),
        _ => (&f[l3 + 8..l3 + 24], &f[l3 + 24..l3 + 40]),
    };
    let acc = ones_sum(src, 0);
    let acc = ones_sum(dst, acc);
    acc + offs.l4_proto as u32 + (l4_len as u32 >> 16) + (l4_len as u32 & 0xffff)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::key::FlowKey;
    use crate::packet::{checksums_valid, fill_checksums};
    use crate::parse::parse_frame;

    pub(crate) fn tcp_frame(payload: usize, v6: bool) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(if v6 { &[0x86, 0xdd] } else { &[0x08, 0x00] });
        let tcp_len = 20 + payload;
        if v6 {
            let mut ip = vec![0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
            ip[6] = 6;
            ip[7] = 64;
            ip[23] = 1;
            ip[39] = 2;
            f.extend_from_slice(&ip);
        } else {
            let mut ip = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
            ip[2..4].copy_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
            f.extend_from_slice(&ip);
        }
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&1234u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&1000u32.to_be_bytes());
        tcp[12] = 0x50;
        tcp[13] = 0x18 | 0x01 | 0x80; // PSH ACK FIN CWR
        f.extend_from_slice(&tcp);
        f.extend((0..payload).map(|i| (i * 7) as u8));
        fill_checksums(&mut f);
        f
    }

    /// Turns a frame's complete TCP checksum into the partial one a veth hands over.
    pub(crate) fn make_partial(f: &mut [u8], v6: bool) -> Offload {
        let l4 = if v6 { 54 } else { 34 };
        let l4_len = f.len() - l4;
        let mut key = FlowKey::ZERO;
        let offs = parse_frame(f, &mut key);
        let seed = !checksum(&[], pseudo_header_sum(f, &offs, l4_len));
        f[l4 + 16..l4 + 18].copy_from_slice(&seed.to_be_bytes());
        Offload { flags: F_NEEDS_CSUM, csum_start: l4 as u16, csum_offset: 16, ..Offload::NONE }
    }

    #[test]
    fn completing_a_partial_checksum_gives_the_full_one() {
        for v6 in [false, true] {
            let full = tcp_frame(333, v6);
            let mut f = full.clone();
            let o = make_partial(&mut f, v6);
            assert_ne!(f, full);
            complete_checksum(&mut f, &o).unwrap();
            assert_eq!(f, full, "v6={v6}");
        }
    }

    #[test]
    fn rewrites_of_a_partial_frame_complete_to_the_rewritten_full_frame() {
        use crate::key::Field;
        use crate::packet::write_field;
        for v6 in [false, true] {
            let fields: &[(Field, u128)] = if v6 {
                &[(Field::Ipv6Dst, 0xfd00_0000_0000_0000_0000_0000_0000_0042), (Field::TpDst, 8080)]
            } else {
                &[(Field::Ipv4Src, 0x6440_0001), (Field::Ipv4Dst, 0x0a00_0005), (Field::TpSrc, 40000)]
            };
            let mut full = tcp_frame(200, v6);
            let mut partial = full.clone();
            let o = make_partial(&mut partial, v6);
            let mut key = FlowKey::ZERO;
            let offs_full = parse_frame(&full, &mut key);
            let offs_partial = HeaderOffsets { csum_partial: true, ..offs_full };
            for (field, value) in fields {
                write_field(&mut full, &offs_full, *field, *value);
                write_field(&mut partial, &offs_partial, *field, *value);
            }
            assert!(checksums_valid(&full));
            complete_checksum(&mut partial, &o).unwrap();
            assert_eq!(partial, full, "v6={v6}");
        }
    }

    #[test]
    fn bad_checksum_offsets_are_an_error() {
        let mut f = tcp_frame(10, false);
        let o = Offload { flags: F_NEEDS_CSUM, csum_start: 60, csum_offset: 16, ..Offload::NONE };
        assert!(matches!(complete_checksum(&mut f, &o), Err(OffloadError::BadChecksumOffsets { .. })));
    }

    #[test]
    fn segmenting_a_tcp_super_frame_gives_valid_segments_with_the_same_bytes() {
        for v6 in [false, true] {
            let full = tcp_frame(4000, v6);
            let mut f = full.clone();
            let mut o = make_partial(&mut f, v6);
            o.gso_type = if v6 { gso_type::TCPV6 } else { gso_type::TCPV4 };
            o.gso_size = 1448;
            let mut key = FlowKey::ZERO;
            let offs = parse_frame(&f, &mut key);
            let mut segs = Vec::new();
            let n = segment(&f, &offs, &o, &mut Vec::new(), |s| segs.push(s.to_vec())).unwrap();
            assert_eq!(n, 3);
            assert_eq!(segs.len(), 3);
            let hdr = if v6 { 74 } else { 54 };
            let mut payload = Vec::new();
            for (i, s) in segs.iter().enumerate() {
                assert!(checksums_valid(s), "segment {i} v6={v6}");
                let seq = u32::from_be_bytes(s[hdr - 16..hdr - 12].try_into().unwrap());
                assert_eq!(seq, 1000 + (i as u32) * 1448);
                let flags = s[hdr - 7];
                assert_eq!(flags & 0x01 != 0, i == 2, "FIN only last");
                assert_eq!(flags & 0x08 != 0, i == 2, "PSH only last");
                assert_eq!(flags & 0x80 != 0, i == 0, "CWR only first");
                payload.extend_from_slice(&s[hdr..]);
            }
            assert_eq!(payload, full[hdr..]);
            assert_eq!(segs[2].len(), hdr + 4000 - 2 * 1448);
        }
    }

    fn udp_frame(payload: &[u8], id: u16) -> Vec<u8> {
        let mut f = crate::parse::tests::ipv4_frame(17, 0x0a00_0001, 0x0a00_0002, 5000, 53, payload);
        f[18..20].copy_from_slice(&id.to_be_bytes());
        fill_checksums(&mut f);
        f
    }

    #[test]
    fn coalesced_datagrams_segment_back_into_the_same_datagrams() {
        let payloads: Vec<Vec<u8>> =
            (0..5u8).map(|i| (0..if i == 4 { 30 } else { 64 }).map(|b| b ^ i).collect()).collect();
        let frames: Vec<Vec<u8>> = payloads.iter().enumerate().map(|(i, p)| udp_frame(p, 100 + i as u16)).collect();
        let refs: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
        let (flow, seg) = udp_coalescable(refs[0], &Offload::NONE).unwrap();
        for f in &refs[..4] {
            assert_eq!(udp_coalescable(f, &Offload::NONE), Some((flow, seg)));
        }
        let mut sup = Vec::new();
        let o = coalesce_udp(&refs, seg, &mut sup).unwrap();
        assert_eq!((o.gso_type, o.gso_size, o.csum_start, o.csum_offset), (gso_type::UDP_L4, 64, 34, 6));
        let mut key = FlowKey::ZERO;
        let offs = parse_frame(&sup, &mut key);
        let mut segs = Vec::new();
        segment(&sup, &offs, &o, &mut Vec::new(), |s| segs.push(s.to_vec())).unwrap();
        assert_eq!(segs.len(), 5);
        for (s, f) in segs.iter().zip(&frames) {
            assert!(checksums_valid(s));
            // Identical but for the IP id, which segmentation numbers on from the first.
            assert_eq!(s[..18], f[..18]);
            assert_eq!(s[20..24], f[20..24]);
            assert_eq!(s[26..], f[26..]);
        }
    }

    /// A TCP/IPv4 data segment of connection 10.0.0.1:1234 -> 10.0.0.2:80 with a
    /// timestamp option, sequence `seq`, flags `flags`, complete checksums.
    pub(crate) fn tcp_segment(seq: u32, payload: &[u8], flags: u8, id: u16) -> Vec<u8> {
        let mut f = tcp_frame(payload.len() + 12, false);
        // 12 bytes of options: NOP NOP timestamp(10).
        let tcp = 34;
        f[tcp + 4..tcp + 8].copy_from_slice(&seq.to_be_bytes());
        f[tcp + 8..tcp + 12].copy_from_slice(&777u32.to_be_bytes());
        f[tcp + 12] = 0x80;
        f[tcp + 13] = flags;
        f[tcp + 14..tcp + 16].copy_from_slice(&512u16.to_be_bytes());
        f[tcp + 20..tcp + 32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 7]);
        f[tcp + 32..].copy_from_slice(payload);
        f[18..20].copy_from_slice(&id.to_be_bytes());
        fill_checksums(&mut f);
        f
    }

    #[test]
    fn coalesced_tcp_segments_segment_back_into_the_same_segments() {
        let seg = 1400;
        let sizes = [seg, seg, seg, seg, 500];
        let mut seq = 4_294_960_000u32; // the run wraps the sequence space
        let mut frames = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let payload: Vec<u8> = (0..n).map(|b| (b * 13 + i) as u8).collect();
            let flags = if i == sizes.len() - 1 { 0x18 } else { 0x10 };
            frames.push(tcp_segment(seq, &payload, flags, 40 + i as u16));
            seq = seq.wrapping_add(n as u32);
        }
        let segs: Vec<TcpSegment> = frames.iter().map(|f| tcp_coalescable(f, &Offload::NONE).unwrap()).collect();
        assert_eq!(segs[0].hdr_len, 66);
        for w in segs.windows(2) {
            assert!(w[0].continued_by(&w[1], seg));
        }
        assert!(segs[4].push);
        let refs: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
        let mut sup = Vec::new();
        let o = coalesce_tcp(&refs, 66, seg, &mut sup).unwrap();
        assert_eq!(
            (o.gso_type, o.gso_size, o.hdr_len, o.csum_start, o.csum_offset),
            (gso_type::TCPV4, 1400, 66, 34, 16)
        );
        assert_eq!(sup.len(), 66 + 4 * 1400 + 500);
        let mut key = FlowKey::ZERO;
        let offs = parse_frame(&sup, &mut key);
        let mut back = Vec::new();
        segment(&sup, &offs, &o, &mut Vec::new(), |s| back.push(s.to_vec())).unwrap();
        assert_eq!(back.len(), frames.len());
        for (i, (b, f)) in back.iter().zip(&frames).enumerate() {
            assert!(checksums_valid(b), "segment {i}");
            // Identical but for the IP id (numbered on from the first) and checksums.
            assert_eq!(b[..18], f[..18], "segment {i}");
            assert_eq!(b[20..24], f[20..24], "segment {i}");
            assert_eq!(b[26..], f[26..], "segment {i}");
        }
    }

    #[test]
    fn only_intact_plain_tcp_data_segments_coalesce() {
        let payload = [7u8; 100];
        let f = tcp_segment(1, &payload, 0x10, 1);
        let a = tcp_coalescable(&f, &Offload::NONE).unwrap();
        for (what, flags) in
            [("FIN", 0x11), ("SYN", 0x12), ("RST", 0x14), ("URG", 0x30), ("CWR", 0x90), ("no ACK", 0x08)]
        {
            assert!(tcp_coalescable(&tcp_segment(1, &payload, flags, 1), &Offload::NONE).is_none(), "{what}");
        }
        let mut bad = f.clone();
        bad[80] ^= 1; // payload damaged in transit
        assert!(tcp_coalescable(&bad, &Offload::NONE).is_none(), "a bad checksum is left to the receiver");
        let mut frag = f.clone();
        frag[20] = 0x20;
        fill_checksums(&mut frag);
        assert!(tcp_coalescable(&frag, &Offload::NONE).is_none(), "fragment");
        assert!(tcp_coalescable(&f[..f.len() - 1], &Offload::NONE).is_none(), "length disagrees with the header");
        let gso = Offload { gso_type: gso_type::TCPV4, gso_size: 10, ..Offload::NONE };
        assert!(tcp_coalescable(&f, &gso).is_none(), "already a super-frame");
        let ack_only = tcp_segment(1, &[], 0x10, 1);
        assert!(tcp_coalescable(&ack_only, &Offload::NONE).is_none(), "no payload");
        // Runs: the next sequence number, the same headers but for lengths/ids/checksums.
        let next = tcp_coalescable(&tcp_segment(101, &payload, 0x10, 2), &Offload::NONE).unwrap();
        assert!(a.continued_by(&next, 100));
        assert!(!a.continued_by(&next, 200), "a short segment only ends a run");
        let gap = tcp_coalescable(&tcp_segment(102, &payload, 0x10, 2), &Offload::NONE).unwrap();
        assert!(!a.continued_by(&gap, 100), "a gap in the sequence");
        let mut other_ack = tcp_segment(101, &payload, 0x10, 2);
        other_ack[42] = 9;
        fill_checksums(&mut other_ack);
        let other_ack = tcp_coalescable(&other_ack, &Offload::NONE).unwrap();
        assert!(!a.continued_by(&other_ack, 100), "another acknowledgement");
        let pushed = tcp_coalescable(&tcp_segment(1, &payload, 0x18, 1), &Offload::NONE).unwrap();
        assert!(!pushed.continued_by(&next, 100), "PSH ends a run");
        let refs: Vec<&[u8]> = vec![&f; 700];
        assert!(coalesce_tcp(&refs, 66, 100, &mut Vec::new()).is_none(), "longer than an IPv4 datagram");
    }

    #[test]
    fn only_plain_udp_ipv4_datagrams_coalesce() {
        let f = udp_frame(&[1; 20], 1);
        assert!(udp_coalescable(&f, &Offload::NONE).is_some());
        let mut frag = f.clone();
        frag[20] = 0x20; // more fragments
        assert!(udp_coalescable(&frag, &Offload::NONE).is_none());
        let tcp = tcp_frame(20, false);
        assert!(udp_coalescable(&tcp, &Offload::NONE).is_none());
        let gso = Offload { gso_type: gso_type::UDP_L4, gso_size: 10, ..Offload::NONE };
        assert!(udp_coalescable(&f, &gso).is_none());
        assert!(udp_coalescable(&f[..f.len() - 1], &Offload::NONE).is_none(), "length disagrees with the header");
        let refs: Vec<&[u8]> = vec![&f; MAX_COALESCE + 1];
        assert!(coalesce_udp(&refs, 20, &mut Vec::new()).is_none());
    }

    #[test]
    fn a_tcp_header_shorter_than_20_bytes_is_refused() {
        let mut f = tcp_frame(100, false);
        f[34 + 12] = 0x20; // data offset 2: 8 bytes
        let mut key = FlowKey::ZERO;
        let offs = parse_frame(&f, &mut key);
        let o = Offload { gso_type: gso_type::TCPV4, gso_size: 40, ..Offload::NONE };
        assert_eq!(segment(&f, &offs, &o, &mut Vec::new(), |_| {}), Err(OffloadError::NotSegmentable));
    }

    #[test]
    fn non_tcp_super_frames_are_refused() {
        let mut f = tcp_frame(100, false);
        f[23] = 47; // GRE
        fill_checksums(&mut f);
        let mut key = FlowKey::ZERO;
        let offs = parse_frame(&f, &mut key);
        let o = Offload { gso_type: gso_type::TCPV4, gso_size: 10, ..Offload::NONE };
        assert_eq!(segment(&f, &offs, &o, &mut Vec::new(), |_| {}), Err(OffloadError::NotSegmentable));
    }

    #[test]
    fn vnet_header_round_trips_and_shifts() {
        let o = Offload {
            flags: F_NEEDS_CSUM,
            gso_type: gso_type::TCPV4,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        assert_eq!(Offload::from_vnet(&o.to_vnet()), o);
        let s = o.shifted(4).unwrap();
        assert_eq!((s.csum_start, s.hdr_len), (38, 70));
        assert_eq!(Offload { csum_start: 2, ..o }.shifted(-4), None);
        assert_eq!(Offload::NONE.shifted(-4), Some(Offload::NONE));
    }
}
