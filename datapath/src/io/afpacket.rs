//! An interface (a veth's host end) as a datapath port, through an AF_PACKET socket with
//! a memory-mapped receive ring and `PACKET_VNET_HDR`: TSO/GSO super-frames and partial
//! checksums arrive whole with their [`Offload`] state and leave the same way, so a TCP
//! stream crosses the switch in 64 KiB pieces instead of 1,500-byte ones.
//!
//! Two ring layouts are offered. `TPACKET_V3` packs frames of any size into large blocks
//! and hands a block over when it is full or its retire timer (≥ 1 ms) fires: few wake-ups
//! under load, but a lone packet waits for the timer. `TPACKET_V2` hands over each frame
//! as it lands: a wake-up per burst, no added latency. The switch defaults to V2 (see
//! `docs/port-io.md` for the measurements behind that choice).
//!
//! V2's slots are small ([`V2_SLOT`]), so that a ring holds hundreds of ordinary frames (a
//! pod opening 200 connections at once sends 200 SYNs in a burst); a frame larger than a
//! slot — a TSO super-frame — is queued whole on the socket by the kernel
//! (`PACKET_COPY_THRESH`), its slot marked `TP_STATUS_COPY`, and read with `recvmsg`.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use super::sys::{self, RingMap, RingRequest};
use crate::datapath::Packet;
use crate::offload::{Offload, VNET_HDR_LEN};

const TP_STATUS_USER: u32 = 1;
const TP_STATUS_KERNEL: u32 = 0;
const TP_STATUS_COPY: u32 = 2;
const TP_STATUS_VLAN_VALID: u32 = 0x10;
const TP_STATUS_VLAN_TPID_VALID: u32 = 0x40;

/// Largest frame a port takes: a 64 KiB super-frame, a VLAN tag, the ring headers.
const MAX_FRAME: u32 = 65_536 + 4 + 4096;

/// A `TPACKET_V2` slot: the ring headers and a frame of up to ≈ 4,000 bytes (a 1,500-byte
/// MTU frame, any small one). Larger frames take the socket's queue instead.
const V2_SLOT: u32 = 4096;

/// Slots per V2 block (64 KiB blocks).
const V2_SLOTS_PER_BLOCK: u32 = 16;

/// The socket queue for frames larger than a slot (super-frames, jumbo frames): room for
/// ≈ 100 super-frames waiting at once, memory used only while they wait. A frame that
/// finds it full is dropped and counted like a frame that found the ring full.
const COPY_QUEUE_BYTES: i32 = 8 << 20;

/// What a ring slot's header says about its frame.
#[derive(Clone, Copy, Debug)]
struct Slot {
    /// The frame's length on the wire.
    len: u32,
    /// Bytes of it in the slot.
    snaplen: u32,
    /// Offset of the frame from the slot's start.
    mac: usize,
    /// `TP_STATUS_*` flags.
    status: u32,
    /// The 802.1Q tag the kernel took out of the frame (with `TP_STATUS_VLAN_VALID`).
    tci: u16,
    /// Its TPID (with `TP_STATUS_VLAN_TPID_VALID`).
    tpid: u16,
}

impl Slot {
    /// The 802.1Q tag to put back after the MAC addresses, if the kernel took one out.
    fn vlan_tag(&self) -> Option<[u8; 4]> {
        if self.status & TP_STATUS_VLAN_VALID == 0 {
            return None;
        }
        let tpid = if self.status & TP_STATUS_VLAN_TPID_VALID != 0 && self.tpid != 0 { self.tpid } else { 0x8100 };
        let [a, b] = tpid.to_be_bytes();
        let [c, d] = self.tci.to_be_bytes();
        Some([a, b, c, d])
    }
}

/// Which receive ring layout a port uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingKind {
    /// `TPACKET_V2`: one fixed-size slot per frame, handed over frame by frame.
    V2,
    /// `TPACKET_V3`: variable-size frames packed into blocks, handed over block by block;
    /// a partly filled block after `retire_ms` milliseconds.
    V3 {
        /// Block retire timeout (ms, ≥ 1).
        retire_ms: u32,
    },
}

/// How to open a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortConfig {
    /// Receive ring layout.
    pub ring: RingKind,
    /// Receive ring size in bytes (rounded to whole blocks).
    pub ring_bytes: u32,
    /// Receive frames for any destination MAC (a veth's host end carries a pod's traffic
    /// to every address). Off for a node's NIC used as an uplink: only its own unicast,
    /// broadcast and multicast frames are the switch's.
    pub promiscuous: bool,
    /// Accept only what this filter passes (attached as a socket filter before the
    /// socket is bound, so nothing else ever reaches the ring).
    pub filter: Option<super::UplinkFilter>,
}

impl Default for PortConfig {
    fn default() -> Self {
        PortConfig { ring: RingKind::V2, ring_bytes: 32 << 20, promiscuous: true, filter: None }
    }
}

/// Why a port could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// interface {name:?}: {op}: {source}
    #[error("interface {name:?}: {op}: {source}")]
    Sys {
        /// Interface name.
        name: String,
        /// What was being done.
        op: &'static str,
        /// The system error.
        source: io::Error,
    },
    /// port number {0} is given to two ports
    #[error("port number {0} is given to two ports")]
    DuplicateNumber(u32),
}

/// Receive counters of a port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxCounters {
    /// Frames received.
    pub frames: u64,
    /// Frames dropped because they did not fit a ring slot.
    pub truncated: u64,
}

/// An interface opened as a datapath port.
#[derive(Debug)]
pub struct AfPacketPort {
    name: String,
    fd: Arc<OwnedFd>,
    ring: RingMap,
    kind: RingKind,
    block_size: usize,
    block_nr: usize,
    frame_size: usize,
    /// V2: next frame slot. V3: current block.
    cursor: usize,
    /// V3: packets left in the current block and the offset of the next one.
    in_block: Option<(u32, usize)>,
    counters: RxCounters,
}

/// A packet socket with its virtio-net header and receive ring set up, not yet bound to
/// an interface. Setting up a ring makes the kernel wait for an RCU grace period (tens
/// of milliseconds in a VM); preparing sockets ahead of time takes that off the path of
/// adding a port (a pod's CNI ADD).
#[derive(Debug)]
pub struct PreparedSocket {
    fd: OwnedFd,
    ring: RingMap,
    req: RingRequest,
    kind: RingKind,
}

impl PreparedSocket {
    /// A socket with `cfg`'s ring; the error names the step that failed.
    pub fn new(cfg: &PortConfig) -> Result<PreparedSocket, (&'static str, io::Error)> {
        let fd = sys::packet_socket().map_err(|e| ("open AF_PACKET socket", e))?;
        sys::set_int_option(&fd, libc::SOL_PACKET, libc::PACKET_VNET_HDR, 1)
            .map_err(|e| ("enable PACKET_VNET_HDR", e))?;
        let page = 4096u32;
        let req = match cfg.ring {
            RingKind::V2 => {
                // Frames larger than a slot go to the socket queue, whole.
                sys::set_int_option(&fd, libc::SOL_PACKET, libc::PACKET_COPY_THRESH, 1)
                    .map_err(|e| ("set PACKET_COPY_THRESH", e))?;
                let _ = sys::set_int_option(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, COPY_QUEUE_BYTES);
                let block_size = V2_SLOT * V2_SLOTS_PER_BLOCK;
                let block_nr = (cfg.ring_bytes / block_size).max(2);
                RingRequest { block_size, block_nr, frame_size: V2_SLOT, retire_tov_ms: 0 }
            }
            RingKind::V3 { retire_ms } => {
                let block_size = (MAX_FRAME * 4).div_ceil(page) * page;
                let block_nr = (cfg.ring_bytes / block_size).max(2);
                let frame_size = 2048;
                RingRequest { block_size, block_nr, frame_size, retire_tov_ms: retire_ms.max(1) }
            }
        };
        sys::set_rx_ring(&fd, matches!(cfg.ring, RingKind::V3 { .. }), &req).map_err(|e| ("set PACKET_RX_RING", e))?;
        let ring = RingMap::map(&fd, (req.block_size as usize) * (req.block_nr as usize))
            .map_err(|e| ("map the receive ring", e))?;
        Ok(PreparedSocket { fd, ring, req, kind: cfg.ring })
    }

    /// Whether it was prepared with `cfg`'s ring settings.
    pub fn fits(&self, cfg: &PortConfig) -> bool {
        self.kind == cfg.ring && PreparedSocket::block_nr_for(cfg, self.req.block_size) == self.req.block_nr
    }

    fn block_nr_for(cfg: &PortConfig, block_size: u32) -> u32 {
        (cfg.ring_bytes / block_size.max(1)).max(2)
    }
}

impl AfPacketPort {
    /// Opens interface `name`: a packet socket with a virtio-net header on every frame,
    /// a receive ring, outgoing frames not looped back, the qdisc bypassed, the interface
    /// promiscuous if `cfg.promiscuous`.
    pub fn open(name: &str, cfg: &PortConfig) -> Result<AfPacketPort, PortError> {
        let prepared =
            PreparedSocket::new(cfg).map_err(|(op, source)| PortError::Sys { name: name.to_string(), op, source })?;
        AfPacketPort::open_prepared(name, cfg, prepared)
    }

    /// Opens interface `name` with a socket prepared earlier by [`PreparedSocket::new`]
    /// with the same `cfg` ring settings: only the binding is left, which is fast.
    pub fn open_prepared(name: &str, cfg: &PortConfig, prepared: PreparedSocket) -> Result<AfPacketPort, PortError> {
        let err = |op: &'static str| move |source: io::Error| PortError::Sys { name: name.to_string(), op, source };
        let ifindex = sys::if_index(name).map_err(err("look up interface"))?;
        let PreparedSocket { fd, ring, req, kind } = prepared;
        if let Some(filter) = &cfg.filter {
            sys::attach_filter(&fd, &filter.program()).map_err(err("attach the socket filter"))?;
        }
        sys::set_int_option(&fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1)
            .map_err(err("set PACKET_IGNORE_OUTGOING"))?;
        sys::set_int_option(&fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, 1)
            .map_err(err("set PACKET_QDISC_BYPASS"))?;
        // Room for a few super-frames in flight; failing to raise it only costs speed.
        let _ = sys::set_int_option(&fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 4 << 20);
        sys::bind_packet(&fd, ifindex).map_err(err("bind"))?;
        if cfg.promiscuous {
            sys::set_promiscuous(&fd, ifindex).map_err(err("set promiscuous"))?;
        }
        Ok(AfPacketPort {
            name: name.to_string(),
            fd: Arc::new(fd),
            ring,
            kind,
            block_size: req.block_size as usize,
            block_nr: req.block_nr as usize,
            frame_size: req.frame_size as usize,
            cursor: 0,
            in_block: None,
            counters: RxCounters::default(),
        })
    }

    /// Interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The socket (readable when the ring has frames).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Frames the kernel dropped since the last call because the receive ring was full
    /// (the forwarding thread did not empty it in time).
    pub fn take_ring_drops(&self) -> u64 {
        sys::packet_ring_drops(&self.fd).unwrap_or(0)
    }

    /// Receive counters.
    pub fn counters(&self) -> RxCounters {
        self.counters
    }

    /// Moves up to `max` received frames into `out` as packets of `in_port`, reusing the
    /// buffers of `pool`. Returns how many were added.
    pub fn recv(&mut self, out: &mut Vec<Packet>, pool: &mut Vec<Vec<u8>>, max: usize, in_port: u32) -> usize {
        match self.kind {
            RingKind::V2 => self.recv_v2(out, pool, max, in_port),
            RingKind::V3 { .. } => self.recv_v3(out, pool, max, in_port),
        }
    }

    fn recv_v2(&mut self, out: &mut Vec<Packet>, pool: &mut Vec<Vec<u8>>, max: usize, in_port: u32) -> usize {
        let per_block = self.block_size / self.frame_size;
        let mut n = 0;
        while n < max {
            let off = (self.cursor / per_block) * self.block_size + (self.cursor % per_block) * self.frame_size;
            let Some(status) = self.ring.load_status(off) else { break };
            if status & TP_STATUS_USER == 0 {
                break;
            }
            // tpacket2_hdr: status, len, snaplen, mac, net, sec, nsec, vlan_tci, vlan_tpid.
            let slot = Slot {
                len: self.ring.read_u32(off + 4).unwrap_or(0),
                snaplen: self.ring.read_u32(off + 8).unwrap_or(0),
                mac: self.ring.read_u16(off + 12).unwrap_or(0) as usize,
                status,
                tci: self.ring.read_u16(off + 24).unwrap_or(0),
                tpid: self.ring.read_u16(off + 26).unwrap_or(0),
            };
            if self.take(off, slot, out, pool, in_port) {
                n += 1;
            }
            self.ring.store_status(off, TP_STATUS_KERNEL);
            self.cursor = (self.cursor + 1) % (per_block * self.block_nr);
        }
        n
    }

    fn recv_v3(&mut self, out: &mut Vec<Packet>, pool: &mut Vec<Vec<u8>>, max: usize, in_port: u32) -> usize {
        let mut n = 0;
        while n < max {
            let block = self.cursor * self.block_size;
            // tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1: block_status,
            // num_pkts, offset_to_first_pkt, blk_len, ...
            let (mut left, mut off) = match self.in_block {
                Some(s) => s,
                None => {
                    let Some(status) = self.ring.load_status(block + 8) else { break };
                    if status & TP_STATUS_USER == 0 {
                        break;
                    }
                    let pkts = self.ring.read_u32(block + 12).unwrap_or(0);
                    let first = self.ring.read_u32(block + 16).unwrap_or(0) as usize;
                    (pkts, block + first)
                }
            };
            while left > 0 && n < max {
                // tpacket3_hdr: next_offset, sec, nsec, snaplen, len, status, mac, net,
                // rxhash, vlan_tci (u32), vlan_tpid.
                let Some(next) = self.ring.read_u32(off) else {
                    left = 0;
                    break;
                };
                let slot = Slot {
                    snaplen: self.ring.read_u32(off + 12).unwrap_or(0),
                    len: self.ring.read_u32(off + 16).unwrap_or(0),
                    status: self.ring.read_u32(off + 20).unwrap_or(0),
                    mac: self.ring.read_u16(off + 24).unwrap_or(0) as usize,
                    tci: self.ring.read_u32(off + 32).unwrap_or(0) as u16,
                    tpid: self.ring.read_u16(off + 36).unwrap_or(0),
                };
                if self.take(off, slot, out, pool, in_port) {
                    n += 1;
                }
                left -= 1;
                // A corrupt offset ends the block rather than wandering off.
                if next == 0 || off + next as usize >= block + self.block_size {
                    left = 0;
                } else {
                    off += next as usize;
                }
            }
            if left > 0 {
                self.in_block = Some((left, off));
                break;
            }
            self.in_block = None;
            self.ring.store_status(block + 8, TP_STATUS_KERNEL);
            self.cursor = (self.cursor + 1) % self.block_nr;
        }
        n
    }

    /// Copies one ring frame into a packet (or reads it from the socket queue, for a
    /// `TP_STATUS_COPY` slot). False if it was dropped.
    fn take(&mut self, off: usize, slot: Slot, out: &mut Vec<Packet>, pool: &mut Vec<Vec<u8>>, in_port: u32) -> bool {
        let mut data = pool.pop().unwrap_or_default();
        data.clear();
        let offload = if slot.status & TP_STATUS_COPY != 0 {
            // The kernel queued the frame (larger than a slot) in slot order.
            let mut vnet = [0u8; VNET_HDR_LEN];
            match sys::recv_frame(self.fd.as_raw_fd(), &mut vnet, &mut data, MAX_FRAME as usize) {
                Ok(got) if got == slot.len as usize => Some(Offload::from_vnet(&vnet)),
                _ => None,
            }
        } else if slot.snaplen < slot.len || slot.mac < VNET_HDR_LEN {
            None
        } else {
            match (
                self.ring.bytes(off + slot.mac - VNET_HDR_LEN, VNET_HDR_LEN),
                self.ring.bytes(off + slot.mac, slot.snaplen as usize),
            ) {
                (Some(vnet), Some(frame)) => {
                    data.extend_from_slice(frame);
                    Some(Offload::from_vnet(vnet.try_into().unwrap_or(&[0; VNET_HDR_LEN])))
                }
                _ => None,
            }
        };
        let Some(mut offload) = offload else {
            pool.push(data);
            self.counters.truncated += 1;
            return false;
        };
        if let Some(tag) = slot.vlan_tag()
            && data.len() >= 12
        {
            // The kernel took the 802.1Q tag out of the frame into metadata: put it back.
            data.splice(12..12, tag);
            offload = offload.shifted(4).unwrap_or(offload);
        }
        self.counters.frames += 1;
        out.push(Packet { data, in_port, tunnel: None, offload });
        true
    }

    /// The sending half, which any thread may use.
    pub fn sender(&self) -> AfPacketSender {
        AfPacketSender { fd: self.fd.clone() }
    }
}

/// The sending half of an [`AfPacketPort`].
#[derive(Clone, Debug)]
pub struct AfPacketSender {
    fd: Arc<OwnedFd>,
}

impl AfPacketSender {
    /// Sends frames with their offload state, in batches. Returns how many left; a full
    /// socket buffer or a down interface drops the rest.
    pub fn send(&self, frames: &[(Offload, &[u8])]) -> usize {
        let mut sent = 0;
        for chunk in frames.chunks(sys::MAX_MSGS) {
            let mut heads = [[0u8; VNET_HDR_LEN]; sys::MAX_MSGS];
            for (i, (o, _)) in chunk.iter().enumerate() {
                heads[i] = o.to_vnet();
            }
            let msgs: Vec<(&[u8], &[u8])> = chunk.iter().zip(heads.iter()).map(|((_, f), h)| (&h[..], *f)).collect();
            let mut lost = 0;
            super::drive_send(msgs.len(), |from| sys::send_frames(self.fd.as_raw_fd(), &msgs[from..]), |_| lost += 1);
            sent += msgs.len() - lost;
        }
        sent
    }
}
