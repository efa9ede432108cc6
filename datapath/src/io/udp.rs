//! The Geneve tunnel endpoint as a datapath port: a UDP socket on the chassis's tunnel IP
//! (port 6081), read and written in batches with `recvmmsg`/`sendmmsg`. The kernel routes
//! and resolves the underlay next hop, so the switch needs no underlay MAC addresses.
//!
//! Received datagrams are decapsulated into packets of this port carrying their tunnel
//! metadata. Frames a tunnel port encapsulated towards this port (full outer
//! Ethernet/IPv4/UDP/Geneve frames from [`crate::exec::tunnel_output`]) are sent as UDP
//! payloads to their outer destination address.

use std::cell::Cell;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use super::sys::{self, Received, Train};
use crate::datapath::Packet;
use crate::geneve::{self, TunnelMeta};
use crate::offload::{self, Offload};

/// Geneve's UDP port.
pub const GENEVE_PORT: u16 = 6081;

/// Largest datagram taken (larger ones are counted and dropped).
const MAX_DATAGRAM: usize = 65_536;

/// Receive counters of a Geneve port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GeneveCounters {
    /// Datagrams decapsulated into packets.
    pub frames: u64,
    /// Datagrams that were not valid Geneve (or were truncated).
    pub invalid: u64,
}

/// A Geneve tunnel endpoint.
#[derive(Debug)]
pub struct GenevePort {
    socket: Arc<UdpSocket>,
    local: Ipv4Addr,
    bufs: Vec<Vec<u8>>,
    received: Vec<Received>,
    /// Buffers of the last receive not yet taken: `received[next..got]`, the first from
    /// byte `offset` (a GRO buffer holds many datagrams; a batch may end inside one).
    next: usize,
    got: usize,
    offset: usize,
    counters: GeneveCounters,
}

impl GenevePort {
    /// Binds the endpoint to `local` (the chassis's tunnel IP and, normally, port 6081).
    pub fn open(local: SocketAddrV4) -> io::Result<GenevePort> {
        let socket = UdpSocket::bind(local)
            .map_err(|e| io::Error::new(e.kind(), format!("bind Geneve socket to {local}: {e}")))?;
        socket.set_nonblocking(true)?;
        // Deep socket buffers: a TCP window's worth of segments arrives in bursts.
        // (Raising them past the sysctl limits needs CAP_NET_ADMIN; without it the
        // defaults stay, which only costs speed.)
        let fd = socket.as_raw_fd();
        let _ = sys::set_int_option_raw(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 16 << 20);
        let _ = sys::set_int_option_raw(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 8 << 20);
        // Runs of datagrams (a TCP super-frame the far end sent as one UDP GSO train)
        // arrive as one buffer; a kernel without UDP GRO hands them one by one.
        let _ = sys::enable_udp_gro(fd);
        Ok(GenevePort {
            socket: Arc::new(socket),
            local: *local.ip(),
            bufs: (0..sys::MAX_MSGS).map(|_| vec![0u8; MAX_DATAGRAM]).collect(),
            received: vec![Received::default(); sys::MAX_MSGS],
            next: 0,
            got: 0,
            offset: 0,
            counters: GeneveCounters::default(),
        })
    }

    /// The socket's descriptor (readable when datagrams are queued).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.socket.as_raw_fd()
    }

    /// Receive counters.
    pub fn counters(&self) -> GeneveCounters {
        self.counters
    }

    /// Receives up to `max` datagrams and appends their inner frames to `out` as packets
    /// of `in_port`, with tunnel metadata, each run of segments of one TCP connection
    /// merged into one super-frame (see [`merge_tcp_runs`]). Returns how many datagrams it
    /// took (`max` means more may be waiting), which is at least the number of packets
    /// added. Datagrams received but not taken (a merged run longer than the batch) are
    /// taken first next time.
    pub fn recv(&mut self, out: &mut Vec<Packet>, pool: &mut Vec<Vec<u8>>, max: usize, in_port: u32) -> usize {
        let mut added = 0;
        while added < max {
            if self.next >= self.got {
                self.next = 0;
                self.offset = 0;
                // Nothing queued (or an error): the batch ends here.
                self.got = sys::recv_datagrams(self.socket.as_raw_fd(), &mut self.bufs, &mut self.received)
                    .unwrap_or_default();
                if self.got == 0 {
                    break;
                }
            }
            let buf = self.next;
            let r = self.received[buf];
            // One datagram, or the next of a merged run.
            let size = if r.seg == 0 { r.len } else { r.seg as usize };
            let start = self.offset;
            let end = (start + size).min(r.len);
            if r.truncated || end <= start || end >= r.len {
                self.next += 1;
                self.offset = 0;
            } else {
                self.offset = end;
            }
            if r.truncated || end <= start {
                self.counters.invalid += 1;
                continue;
            }
            let dgram = &self.bufs[buf][start..end];
            let Ok((h, inner)) = geneve::decap_payload(dgram) else {
                self.counters.invalid += 1;
                continue;
            };
            let mut data = pool.pop().unwrap_or_default();
            data.clear();
            data.extend_from_slice(&dgram[inner..]);
            let meta = TunnelMeta {
                vni: h.vni,
                src: r.from.0,
                dst: u32::from(self.local),
                ingress: h.ingress,
                egress: h.egress,
                identity: h.identity,
            };
            out.push(Packet { data, in_port, tunnel: Some(meta), offload: Offload::NONE });
            added += 1;
        }
        self.counters.frames += added as u64;
        let start = out.len() - added;
        merge_tcp_runs(out, start, pool);
        added
    }

    /// The sending half, which any thread may use.
    pub fn sender(&self) -> GeneveSender {
        GeneveSender { socket: self.socket.clone() }
    }
}

/// Merges each run of consecutive segments of one TCP connection among `out[from..]` that
/// came through one tunnel (same [`TunnelMeta`]; see [`offload::TcpSegment::continued_by`])
/// into one TSO super-frame — the GRO a kernel applies as packets come in. A TCP
/// super-frame the far end cut into segments for the tunnel then crosses this side's
/// pipeline (lookups, conntrack, ACLs) once instead of once per segment, and reaches the
/// pod whole. The members' buffers go back to `pool`. Returns how many packets fewer
/// `out` holds.
fn merge_tcp_runs(out: &mut Vec<Packet>, from: usize, pool: &mut Vec<Vec<u8>>) -> usize {
    // Compacted in place: `out[from..write]` holds the result so far; the slots between
    // `write` and `i` hold only packets whose buffers went to the pool or were moved.
    let before = out.len();
    let mut write = from;
    let mut i = from;
    while i < before {
        let mut end = i + 1;
        if let Some(first) = offload::tcp_coalescable(&out[i].data, &out[i].offload) {
            let tunnel = out[i].tunnel;
            end = i + offload::tcp_run(&first, |k| {
                out[..before]
                    .get(i + k)
                    .filter(|p| p.tunnel == tunnel)
                    .and_then(|p| offload::tcp_coalescable(&p.data, &p.offload))
            });
            if end - i >= 2 {
                let mut data = pool.pop().unwrap_or_default();
                if let Some(offload) = offload::coalesce_tcp(&out[i..end], first.hdr_len, first.len, &mut data) {
                    let merged = Packet { data, in_port: out[i].in_port, tunnel: out[i].tunnel, offload };
                    for p in &mut out[i..end] {
                        pool.push(std::mem::take(&mut p.data));
                    }
                    out[write] = merged;
                    write += 1;
                    i = end;
                    continue;
                }
                pool.push(data);
                end = i + 1;
            }
        }
        for k in i..end {
            out.swap(write, k);
            write += 1;
        }
        i = end;
    }
    out.truncate(write);
    before - write
}

/// The sending half of a [`GenevePort`].
#[derive(Clone, Debug)]
pub struct GeneveSender {
    socket: Arc<UdpSocket>,
}

/// Most payload bytes in one UDP GSO send (an IPv4 datagram's limit, less headers).
const MAX_TRAIN_BYTES: usize = 65_000;

/// Outer Ethernet (14) + IPv4 without options (20) + UDP (8), as `geneve::encap` builds.
const OUTER_HEADERS: usize = 42;

impl GeneveSender {
    /// Sends encapsulated frames (outer Ethernet/IPv4/UDP/Geneve) as UDP payloads to
    /// their outer destination. Runs of equal-sized datagrams to one chassis (the
    /// segments of a TCP super-frame) go as one UDP GSO send. Returns how many datagrams
    /// were sent; frames that are not such frames are dropped.
    pub fn send(&self, frames: &[&[u8]]) -> usize {
        let mut trains: Vec<Train<'_>> = Vec::new();
        for f in frames {
            if f.len() < OUTER_HEADERS || f[12..14] != [0x08, 0x00] || f[14] != 0x45 || f[23] != 17 {
                continue;
            }
            let to = SocketAddrV4::new(Ipv4Addr::new(f[30], f[31], f[32], f[33]), GENEVE_PORT);
            let payload = &f[OUTER_HEADERS..];
            let joins = trains.last().is_some_and(|t| {
                t.to == Some(to)
                    && t.segs.len() < sys::MAX_TRAIN
                    && payload.len() <= t.seg as usize
                    // A shorter datagram may only end a train.
                    && t.segs.last().is_some_and(|l| l.len() == t.seg as usize)
                    && (t.segs.len() + 1) * t.seg as usize <= MAX_TRAIN_BYTES
            });
            match trains.last_mut() {
                Some(t) if joins => t.segs.push(payload),
                _ => trains.push(Train { to: Some(to), segs: vec![payload], seg: payload.len() as u16 }),
            }
        }
        let fd = self.socket.as_raw_fd();
        let sent = Cell::new(0);
        super::drive_send(
            trains.len(),
            |from| {
                let k = sys::send_trains(fd, &trains[from..])?;
                sent.set(sent.get() + trains[from..from + k].iter().map(|t| t.segs.len()).sum::<usize>());
                Ok(k)
            },
            // The kernel refused the train as a whole (e.g. a path that cannot offload UDP
            // segmentation): send its datagrams one by one.
            |i| sent.set(sent.get() + self.send_each(&trains[i])),
        );
        sent.get()
    }

    fn send_each(&self, t: &Train<'_>) -> usize {
        let Some(to) = t.to else { return 0 };
        let msgs: Vec<(SocketAddrV4, &[u8])> = t.segs.iter().map(|s| (to, *s)).collect();
        let mut lost = 0;
        // A datagram refused (e.g. no route to that chassis) is dropped; the rest go.
        super::drive_send(
            msgs.len(),
            |from| sys::send_datagrams(self.socket.as_raw_fd(), &msgs[from..]),
            |_| lost += 1,
        );
        msgs.len() - lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geneve::EncapParams;

    /// Inner frame `i` of a run: an Ethernet frame of `len` bytes whose bytes say which it is.
    fn inner(i: usize, len: usize) -> Vec<u8> {
        let mut f: Vec<u8> = (0..len).map(|b| (b * 7 + i) as u8).collect();
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f
    }

    #[test]
    fn segments_of_one_connection_from_one_tunnel_merge_into_a_super_frame() {
        use crate::offload::tests::tcp_segment;
        let meta = TunnelMeta { vni: 5, src: 1, dst: 2, ingress: 1, egress: 2, identity: 0 };
        let other = TunnelMeta { vni: 6, ..meta };
        let packet = |data: Vec<u8>, tunnel: TunnelMeta| Packet {
            data,
            in_port: 3,
            tunnel: Some(tunnel),
            offload: Offload::NONE,
        };
        let payload = |i: usize| -> Vec<u8> { (0..1000).map(|b| (b + i) as u8).collect() };
        let mut out = vec![packet(vec![1, 2, 3], meta)]; // already in the batch: left alone
        // Three segments in sequence, then one from another tunnel, then a lone segment.
        for i in 0..3 {
            out.push(packet(tcp_segment(1000 + 1000 * i as u32, &payload(i), 0x10, i as u16), meta));
        }
        out.push(packet(tcp_segment(4000, &payload(3), 0x10, 3), other));
        out.push(packet(tcp_segment(9000, &payload(4), 0x10, 4), meta));
        // A second run, merged into a slot behind the packets that moved up.
        for i in 0..2 {
            out.push(packet(tcp_segment(20000 + 1000 * i as u32, &payload(5 + i), 0x10, 5 + i as u16), other));
        }
        let mut pool = Vec::new();
        assert_eq!(merge_tcp_runs(&mut out, 1, &mut pool), 3);
        assert_eq!(out.len(), 5);
        assert_eq!(out[0].data, vec![1, 2, 3]);
        let merged = &out[1];
        assert_eq!((merged.offload.gso_type, merged.offload.gso_size), (crate::offload::gso_type::TCPV4, 1000));
        assert_eq!(merged.data.len(), 66 + 3000);
        assert_eq!(merged.tunnel, Some(meta));
        assert_eq!(merged.data[66..1066], payload(0)[..]);
        assert_eq!(merged.data[2066..], payload(2)[..]);
        assert_eq!(out[2].tunnel, Some(other), "another tunnel's segment stays apart");
        assert!(!out[3].offload.is_gso(), "a lone segment stays as it came");
        assert_eq!(out[4].data.len(), 66 + 2000, "the second run merged");
        assert_eq!(out[4].data[66..1066], payload(5)[..]);
        assert_eq!(out[4].tunnel, Some(other));
        // Five members' buffers went back; the second merge took one of them.
        assert_eq!(pool.len(), 4, "the merged segments' buffers are reused");
    }

    #[test]
    fn a_run_sent_as_one_train_is_received_datagram_by_datagram_across_batches() {
        // Two endpoints on loopback (no namespace needed): the sender's run of equal-sized
        // datagrams leaves as one UDP GSO train, the receiver (with UDP GRO) may take it
        // as one buffer; either way every datagram must come out, in order, even when the
        // batch ends inside the buffer.
        let receiver_ip = Ipv4Addr::new(127, 0, 0, 2);
        let Ok(mut rx) = GenevePort::open(SocketAddrV4::new(receiver_ip, GENEVE_PORT)) else {
            eprintln!("port {GENEVE_PORT} on {receiver_ip} is taken: skipped");
            return;
        };
        let tx = GenevePort::open(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).unwrap();
        let params = EncapParams {
            outer_eth_src: [2, 0, 0, 0, 0, 1],
            outer_eth_dst: [2, 0, 0, 0, 0, 2],
            src: u32::from(Ipv4Addr::LOCALHOST),
            dst: u32::from(receiver_ip),
            ttl: 64,
            vni: 7,
            ingress: 1,
            egress: 2,
            identity: 0,
        };
        let sizes = [1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 400];
        let frames: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let mut out = Vec::new();
                geneve::encap(&inner(i, len), &params, 1, &mut out).unwrap();
                out
            })
            .collect();
        let refs: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
        assert_eq!(tx.sender().send(&refs), sizes.len());
        let mut got: Vec<Packet> = Vec::new();
        let mut pool = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while got.len() < sizes.len() && std::time::Instant::now() < deadline {
            let mut batch = Vec::new();
            let n = rx.recv(&mut batch, &mut pool, 3, 9);
            assert!(n <= 3 && batch.len() == n, "a batch of at most 3");
            got.extend(batch);
            if n == 0 {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        assert_eq!(got.len(), sizes.len());
        for (i, p) in got.iter().enumerate() {
            assert_eq!(p.data, inner(i, sizes[i]), "datagram {i}");
            assert_eq!(p.in_port, 9);
            let meta = p.tunnel.unwrap();
            assert_eq!((meta.vni, meta.ingress, meta.egress), (7, 1, 2));
            assert_eq!(meta.src, u32::from(Ipv4Addr::LOCALHOST));
        }
        assert_eq!(rx.counters(), GeneveCounters { frames: sizes.len() as u64, invalid: 0 });
    }
}
