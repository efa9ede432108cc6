//! The system calls behind Skein's port I/O, and the only `unsafe` code of the datapath:
//! packet sockets and their mapped receive rings, batched `sendmmsg`/`recvmmsg`, epoll
//! and eventfd. Everything here is a thin, checked wrapper; the ring *protocol* (who owns
//! which frame when) lives in [`super::afpacket`], which reads the shared memory only
//! through [`RingMap`]'s bounds-checked accessors.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

/// Most messages one `sendmmsg`/`recvmmsg` call carries.
pub const MAX_MSGS: usize = 64;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

/// Moves the calling thread to `SCHED_IDLE`: it runs only when a CPU has nothing else
/// to do. For background work (preparing sockets, saving state) that must not take CPU
/// time from forwarding or from a CNI ADD on a small node.
pub fn idle_priority() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid `sched_param` that outlives the call; pid 0 is the
    // calling thread.
    cvt(unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) }).map(|_| ())
}

fn signal_set(signals: &[libc::c_int]) -> io::Result<libc::sigset_t> {
    // SAFETY: an all-zero `sigset_t` is a valid value to hand to `sigemptyset`, which
    // initialises it.
    let mut set: libc::sigset_t = unsafe { zeroed() };
    // SAFETY: `set` is a valid, exclusively borrowed `sigset_t`.
    cvt(unsafe { libc::sigemptyset(&mut set) })?;
    for &s in signals {
        // SAFETY: as above; an invalid signal number is reported as EINVAL.
        cvt(unsafe { libc::sigaddset(&mut set, s) })?;
    }
    Ok(set)
}

/// Blocks `signals` in the calling thread and in every thread it starts afterwards: they
/// stay pending until [`wait_signal`] takes them, instead of ending the process. Call it
/// before starting threads.
pub fn block_signals(signals: &[libc::c_int]) -> io::Result<()> {
    let set = signal_set(signals)?;
    // SAFETY: `set` is initialised; the old mask is not asked for (null).
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 { Err(io::Error::from_raw_os_error(r)) } else { Ok(()) }
}

/// Waits up to `timeout` for one of `signals` (blocked with [`block_signals`]) and takes
/// it: `Some(signal)`, or `None` when the time ran out.
pub fn wait_signal(signals: &[libc::c_int], timeout: std::time::Duration) -> io::Result<Option<libc::c_int>> {
    let set = signal_set(signals)?;
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `set` and `ts` are initialised and outlive the call; the siginfo is not
    // asked for (null).
    match unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) } {
        -1 => match io::Error::last_os_error() {
            e if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR)) => Ok(None),
            e => Err(e),
        },
        s => Ok(Some(s)),
    }
}

/// Sets the calling thread's nice value (Linux's priority is per thread; threads started
/// afterwards inherit it). A negative value needs `CAP_SYS_NICE`.
pub fn set_nice(nice: i32) -> io::Result<()> {
    // SAFETY: plain system call on the calling thread (who 0); no memory is passed.
    cvt(unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) }).map(|_| ())
}

/// Frames the kernel dropped on packet socket `fd` since the last call because its
/// receive ring was full (`PACKET_STATISTICS`; reading resets the kernel's counts).
pub fn packet_ring_drops(fd: &OwnedFd) -> io::Result<u64> {
    // The TPACKET_V3 layout is the longer; a TPACKET_V2 socket fills its first two fields
    // (packets, drops), which both layouts share.
    // SAFETY: an all-zero `tpacket_stats_v3` is valid plain data.
    let mut stats: libc::tpacket_stats_v3 = unsafe { zeroed() };
    let mut len = size_of::<libc::tpacket_stats_v3>() as libc::socklen_t;
    // SAFETY: `stats` is writable for `len` bytes and `len` is a valid in/out length; both
    // outlive the call.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut stats as *mut libc::tpacket_stats_v3).cast(),
            &mut len,
        )
    })?;
    Ok(u64::from(stats.tp_drops))
}

/// The index of network interface `name`.
pub fn if_index(name: &str) -> io::Result<u32> {
    let c = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("interface name {name:?} contains NUL")))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 { Err(io::Error::last_os_error()) } else { Ok(i) }
}

/// Moves the calling thread into the network namespace at `path` (e.g.
/// `/run/netns/pod1`). Only this thread changes namespace: call it on a dedicated thread
/// (sockets it then creates stay in that namespace).
pub fn enter_netns(path: &std::path::Path) -> io::Result<()> {
    let f = std::fs::File::open(path)?;
    // SAFETY: setns(2) on a descriptor we own for the duration of the call; it only
    // changes the calling thread's namespace membership.
    cvt(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) })?;
    Ok(())
}

/// A non-blocking `AF_PACKET`/`SOCK_RAW` socket that receives nothing until it is bound
/// ([`bind_packet`] names the protocols and the interface). Created without a protocol,
/// it has no receive hook yet, so setting its ring and binding it do not each wait for
/// the kernel to remove one (an RCU grace period, tens of milliseconds in a VM).
pub fn packet_socket() -> io::Result<OwnedFd> {
    let proto = 0;
    // SAFETY: plain socket(2) call; the returned descriptor is owned below.
    let fd = cvt(unsafe {
        libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, proto)
    })?;
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets an integer socket option.
pub fn set_int_option(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    set_option(fd, level, name, &value)
}

/// Sets an integer socket option on a descriptor owned elsewhere (e.g. a std socket).
pub fn set_int_option_raw(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` is a live c_int of the size passed; the kernel only reads it, and
    // a stale descriptor only makes the call fail.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

fn set_option<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points at a live `T` of the size passed; the kernel only reads it.
    cvt(unsafe {
        libc::setsockopt(fd.as_raw_fd(), level, name, (value as *const T).cast(), size_of::<T>() as libc::socklen_t)
    })?;
    Ok(())
}

/// Ring geometry for `PACKET_RX_RING`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingRequest {
    /// Bytes per block (a multiple of the page size).
    pub block_size: u32,
    /// Number of blocks.
    pub block_nr: u32,
    /// Bytes per frame (TPACKET_V2: the slot size; TPACKET_V3: the largest frame).
    pub frame_size: u32,
    /// TPACKET_V3 only: a block is handed to user space after this many ms even if not
    /// full.
    pub retire_tov_ms: u32,
}

/// Selects the TPACKET version and installs a receive ring.
pub fn set_rx_ring(fd: &OwnedFd, v3: bool, r: &RingRequest) -> io::Result<()> {
    let version = if v3 { libc::tpacket_versions::TPACKET_V3 } else { libc::tpacket_versions::TPACKET_V2 };
    set_int_option(fd, libc::SOL_PACKET, libc::PACKET_VERSION, version as libc::c_int)?;
    let frame_nr = (r.block_size / r.frame_size) * r.block_nr;
    if v3 {
        let req = libc::tpacket_req3 {
            tp_block_size: r.block_size,
            tp_block_nr: r.block_nr,
            tp_frame_size: r.frame_size,
            tp_frame_nr: frame_nr,
            tp_retire_blk_tov: r.retire_tov_ms,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        set_option(fd, libc::SOL_PACKET, libc::PACKET_RX_RING, &req)
    } else {
        let req = libc::tpacket_req {
            tp_block_size: r.block_size,
            tp_block_nr: r.block_nr,
            tp_frame_size: r.frame_size,
            tp_frame_nr: frame_nr,
        };
        set_option(fd, libc::SOL_PACKET, libc::PACKET_RX_RING, &req)
    }
}

/// Binds a packet socket to one interface (all protocols).
pub fn bind_packet(fd: &OwnedFd, ifindex: u32) -> io::Result<()> {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sa: libc::sockaddr_ll = unsafe { zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    sa.sll_ifindex = ifindex as i32;
    // SAFETY: `sa` is a valid sockaddr_ll of the length passed.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// Puts the interface in promiscuous mode for as long as the socket lives.
pub fn set_promiscuous(fd: &OwnedFd, ifindex: u32) -> io::Result<()> {
    // SAFETY: packet_mreq is plain old data; all-zero is a valid value.
    let mut m: libc::packet_mreq = unsafe { zeroed() };
    m.mr_ifindex = ifindex as libc::c_int;
    m.mr_type = libc::PACKET_MR_PROMISC as u16;
    set_option(fd, libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &m)
}

/// A ring shared with the kernel (`mmap` of a packet socket). Only bounds-checked
/// accessors are offered; ownership of each part is decided by the status words.
#[derive(Debug)]
pub struct RingMap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; concurrent access is coordinated through
// the atomic status words, and each ring is driven by one thread at a time.
unsafe impl Send for RingMap {}
// SAFETY: as above; the accessors take `&self` and use atomics for the status words.
unsafe impl Sync for RingMap {}

impl RingMap {
    /// Maps `len` bytes of the socket's ring.
    pub fn map(fd: &OwnedFd, len: usize) -> io::Result<RingMap> {
        // SAFETY: a fresh shared mapping of the socket's ring; the kernel validates `len`
        // against the ring it installed. The result is checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned NULL"))?;
        Ok(RingMap { ptr, len })
    }

    /// Length of the mapping.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty mapping (never, in practice).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, off: usize, n: usize, align: usize) -> Option<()> {
        (off.is_multiple_of(align) && off.checked_add(n)? <= self.len).then_some(())
    }

    /// Reads a status word with acquire ordering (what the kernel released before it).
    pub fn load_status(&self, off: usize) -> Option<u32> {
        self.check(off, 4, 4)?;
        // SAFETY: in bounds and 4-aligned (checked); the kernel writes this word
        // concurrently, which is why it is read atomically.
        Some(unsafe { AtomicU32::from_ptr(self.ptr.as_ptr().add(off).cast::<u32>()) }.load(Ordering::Acquire))
    }

    /// Writes a status word with release ordering (hands the frame or block back).
    pub fn store_status(&self, off: usize, v: u32) -> Option<()> {
        self.check(off, 4, 4)?;
        // SAFETY: in bounds and aligned (checked); atomic store on shared memory.
        unsafe { AtomicU32::from_ptr(self.ptr.as_ptr().add(off).cast::<u32>()) }.store(v, Ordering::Release);
        Some(())
    }

    /// Reads a native-endian u32 of a frame or block user space owns.
    pub fn read_u32(&self, off: usize) -> Option<u32> {
        self.check(off, 4, 1)?;
        // SAFETY: in bounds (checked); unaligned read of memory the kernel does not
        // write while user space owns it.
        Some(unsafe { self.ptr.as_ptr().add(off).cast::<u32>().read_unaligned() })
    }

    /// Reads a native-endian u16 of a frame or block user space owns.
    pub fn read_u16(&self, off: usize) -> Option<u16> {
        self.check(off, 2, 1)?;
        // SAFETY: as for `read_u32`.
        Some(unsafe { self.ptr.as_ptr().add(off).cast::<u16>().read_unaligned() })
    }

    /// The bytes `off..off + n` of a frame user space owns.
    pub fn bytes(&self, off: usize, n: usize) -> Option<&[u8]> {
        self.check(off, n, 1)?;
        // SAFETY: in bounds (checked); the kernel does not write a frame or block while
        // its status says user space owns it, and callers copy out before handing back.
        Some(unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(off), n) })
    }
}

impl Drop for RingMap {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the region mapped in `map`; no references outlive
        // `self` because every accessor borrows it.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// Sends up to [`MAX_MSGS`] frames on a bound packet socket in one `sendmmsg`, each as
/// `head` (e.g. a virtio-net header, may be empty) followed by the frame. Returns how
/// many were sent; `WouldBlock` if none could be.
pub fn send_frames(fd: RawFd, msgs: &[(&[u8], &[u8])]) -> io::Result<usize> {
    let n = msgs.len().min(MAX_MSGS);
    // SAFETY: iovec and mmsghdr are plain old data; zero is a valid value.
    let mut iov: [[libc::iovec; 2]; MAX_MSGS] = unsafe { zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; MAX_MSGS] = unsafe { zeroed() };
    for (i, (head, frame)) in msgs[..n].iter().enumerate() {
        iov[i][0] = libc::iovec { iov_base: head.as_ptr() as *mut _, iov_len: head.len() };
        iov[i][1] = libc::iovec { iov_base: frame.as_ptr() as *mut _, iov_len: frame.len() };
        hdrs[i].msg_hdr.msg_iov = iov[i].as_mut_ptr();
        hdrs[i].msg_hdr.msg_iovlen = 2;
    }
    // SAFETY: `hdrs[..n]` point at `iov`, which point at the caller's slices; all live
    // for the duration of the call and the kernel only reads them.
    let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), n as u32, libc::MSG_DONTWAIT) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r as usize) }
}

/// Receives one frame from a packet socket's queue without blocking: its virtio-net
/// header into `vnet`, the frame appended to `data` (at most `max` bytes). Returns the
/// frame's length.
pub fn recv_frame(fd: RawFd, vnet: &mut [u8], data: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    data.reserve(max);
    let start = data.len();
    let spare = data.spare_capacity_mut();
    let mut iov = [
        libc::iovec { iov_base: vnet.as_mut_ptr().cast(), iov_len: vnet.len() },
        libc::iovec { iov_base: spare.as_mut_ptr().cast(), iov_len: spare.len().min(max) },
    ];
    // SAFETY: plain old data, zero is valid.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len();
    // SAFETY: the iovecs cover `vnet` and the spare capacity of `data` (writable,
    // exclusively borrowed, at least the lengths given); both outlive the call.
    let r = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let frame = (r as usize).saturating_sub(vnet.len()).min(spare.len().min(max));
    // SAFETY: the kernel initialised the first `frame` bytes of the spare capacity
    // (everything it wrote past the virtio-net header), and `frame` is within capacity.
    unsafe { data.set_len(start + frame) };
    Ok(frame)
}

/// Sends up to [`MAX_MSGS`] UDP datagrams (`(destination, payload)`) in one `sendmmsg`.
pub fn send_datagrams(fd: RawFd, msgs: &[(SocketAddrV4, &[u8])]) -> io::Result<usize> {
    let n = msgs.len().min(MAX_MSGS);
    // SAFETY: plain old data, zero is valid.
    let mut iov: [libc::iovec; MAX_MSGS] = unsafe { zeroed() };
    // SAFETY: as above.
    let mut addrs: [libc::sockaddr_in; MAX_MSGS] = unsafe { zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; MAX_MSGS] = unsafe { zeroed() };
    for (i, (to, payload)) in msgs[..n].iter().enumerate() {
        addrs[i].sin_family = libc::AF_INET as u16;
        addrs[i].sin_port = to.port().to_be();
        addrs[i].sin_addr = libc::in_addr { s_addr: u32::from(*to.ip()).to_be() };
        iov[i] = libc::iovec { iov_base: payload.as_ptr() as *mut _, iov_len: payload.len() };
        hdrs[i].msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_in).cast();
        hdrs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
        hdrs[i].msg_hdr.msg_iov = &mut iov[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: every pointer in `hdrs[..n]` refers to locals or the caller's slices,
    // alive for the call; the kernel only reads them.
    let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), n as u32, libc::MSG_DONTWAIT) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r as usize) }
}

/// A train of UDP datagrams to one destination, all `seg` bytes long but the last (which
/// may be shorter), sent as one UDP GSO super-datagram.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Train<'a> {
    /// Destination.
    pub to: Option<SocketAddrV4>,
    /// The datagrams' payloads, in order.
    pub segs: Vec<&'a [u8]>,
    /// Segment size.
    pub seg: u16,
}

/// Most datagrams in one UDP GSO train (the kernel's limit is 64 on older kernels).
pub const MAX_TRAIN: usize = 64;

/// Sends up to [`MAX_MSGS`] trains in one `sendmmsg`, each as one UDP GSO send
/// (`UDP_SEGMENT`) that the kernel cuts into its datagrams. Returns how many trains were
/// sent.
pub fn send_trains(fd: RawFd, trains: &[Train<'_>]) -> io::Result<usize> {
    const CMSG_LEN: usize = 32;
    let n = trains.len().min(MAX_MSGS);
    let mut iov: Vec<libc::iovec> = Vec::with_capacity(trains[..n].iter().map(|t| t.segs.len().min(MAX_TRAIN)).sum());
    // SAFETY: plain old data, zero is valid.
    let mut addrs: [libc::sockaddr_in; MAX_MSGS] = unsafe { zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; MAX_MSGS] = unsafe { zeroed() };
    let mut cmsgs = [[0u64; CMSG_LEN / 8]; MAX_MSGS];
    let mut starts = [0usize; MAX_MSGS];
    for (i, t) in trains[..n].iter().enumerate() {
        starts[i] = iov.len();
        for s in t.segs.iter().take(MAX_TRAIN) {
            iov.push(libc::iovec { iov_base: s.as_ptr() as *mut _, iov_len: s.len() });
        }
    }
    for (i, t) in trains[..n].iter().enumerate() {
        let Some(to) = t.to else { continue };
        addrs[i].sin_family = libc::AF_INET as u16;
        addrs[i].sin_port = to.port().to_be();
        addrs[i].sin_addr = libc::in_addr { s_addr: u32::from(*to.ip()).to_be() };
        let h = &mut hdrs[i].msg_hdr;
        h.msg_name = (&mut addrs[i] as *mut libc::sockaddr_in).cast();
        h.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
        // SAFETY: `starts[i]` is within `iov` (pushed above); `iov` is not resized after.
        h.msg_iov = unsafe { iov.as_mut_ptr().add(starts[i]) };
        h.msg_iovlen = t.segs.len().min(MAX_TRAIN);
        if t.segs.len() > 1 {
            h.msg_control = cmsgs[i].as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE is a pure size computation.
            h.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as usize;
            // SAFETY: `h` points at a control buffer of `msg_controllen` ≤ CMSG_LEN bytes,
            // 8-aligned; CMSG_FIRSTHDR/CMSG_DATA stay inside it.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(h);
                (*c).cmsg_level = libc::SOL_UDP;
                (*c).cmsg_type = libc::UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
                libc::CMSG_DATA(c).cast::<u16>().write_unaligned(t.seg);
            }
        }
    }
    // SAFETY: every pointer in `hdrs[..n]` refers to locals, `iov` or the caller's slices,
    // all alive and unmoved for the call; the kernel only reads them.
    let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), n as u32, libc::MSG_DONTWAIT) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r as usize) }
}

/// One datagram received by [`recv_datagrams`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Received {
    /// Bytes written into the buffer.
    pub len: usize,
    /// Sender (IPv4, host order) and port.
    pub from: (u32, u16),
    /// The datagram did not fit the buffer.
    pub truncated: bool,
    /// With [`enable_udp_gro`]: the buffer holds datagrams of this many bytes end to end
    /// (the last may be shorter), merged by the kernel's UDP GRO; 0 for one datagram.
    pub seg: u16,
}

/// `UDP_GRO` from `<linux/udp.h>` (not in the libc crate for glibc targets).
const UDP_GRO: libc::c_int = 104;

/// Asks the kernel to hand this UDP socket runs of datagrams of one flow merged into one
/// buffer (UDP GRO, Linux 5.0+), each receive reporting the datagram size (see
/// [`Received::seg`]): one copy and one socket-queue entry per run instead of per datagram.
pub fn enable_udp_gro(fd: RawFd) -> io::Result<()> {
    set_int_option_raw(fd, libc::SOL_UDP, UDP_GRO, 1)
}

/// Receives up to `bufs.len()` (at most [`MAX_MSGS`]) datagrams — or, with
/// [`enable_udp_gro`], runs of datagrams — without blocking.
pub fn recv_datagrams(fd: RawFd, bufs: &mut [Vec<u8>], out: &mut [Received]) -> io::Result<usize> {
    const CMSG_LEN: usize = 32;
    let n = bufs.len().min(out.len()).min(MAX_MSGS);
    // SAFETY: plain old data, zero is valid.
    let mut iov: [libc::iovec; MAX_MSGS] = unsafe { zeroed() };
    // SAFETY: as above.
    let mut addrs: [libc::sockaddr_in; MAX_MSGS] = unsafe { zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; MAX_MSGS] = unsafe { zeroed() };
    let mut cmsgs = [[0u64; CMSG_LEN / 8]; MAX_MSGS];
    for i in 0..n {
        iov[i] = libc::iovec { iov_base: bufs[i].as_mut_ptr().cast(), iov_len: bufs[i].len() };
        hdrs[i].msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_in).cast();
        hdrs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
        hdrs[i].msg_hdr.msg_iov = &mut iov[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
        hdrs[i].msg_hdr.msg_control = cmsgs[i].as_mut_ptr().cast();
        hdrs[i].msg_hdr.msg_controllen = CMSG_LEN;
    }
    // SAFETY: each iovec covers an initialised, exclusively borrowed buffer of the
    // length given; names and control buffers point at local storage of the sizes
    // given. All outlive the call.
    let r = unsafe { libc::recvmmsg(fd, hdrs.as_mut_ptr(), n as u32, libc::MSG_DONTWAIT, std::ptr::null_mut()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let r = r as usize;
    for i in 0..r {
        let h = &hdrs[i].msg_hdr;
        let mut seg = 0u16;
        // SAFETY: the kernel filled `msg_controllen` bytes of the control buffer `h`
        // points at; CMSG_FIRSTHDR/CMSG_NXTHDR stay within it and return null past the
        // end; the data of a UDP_GRO message is one int.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(h);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == UDP_GRO {
                    let size = libc::CMSG_DATA(c).cast::<libc::c_int>().read_unaligned();
                    seg = u16::try_from(size).unwrap_or(0);
                }
                c = libc::CMSG_NXTHDR(h, c);
            }
        }
        out[i] = Received {
            len: (hdrs[i].msg_len as usize).min(bufs[i].len()),
            from: (u32::from_be(addrs[i].sin_addr.s_addr), u16::from_be(addrs[i].sin_port)),
            truncated: h.msg_flags & libc::MSG_TRUNC != 0,
            seg,
        };
    }
    Ok(r)
}

/// An epoll instance.
#[derive(Debug)]
pub struct Epoll(OwnedFd);

impl Epoll {
    /// A new epoll instance.
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: plain epoll_create1(2); the descriptor is owned below.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: fresh descriptor owned by nobody else.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Watches `fd` for readability, reporting `token`.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: token };
        // SAFETY: `ev` is a valid epoll_event; the kernel copies it.
        cvt(unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
        Ok(())
    }

    /// Stops watching `fd`. Safe to call while another thread waits on this instance.
    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        // Ignored for EPOLL_CTL_DEL, but kernels before 2.6.9 require a non-null pointer.
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: `ev` is a valid epoll_event that outlives the call; the kernel only
        // reads it (if at all). A stale `fd` only makes the call fail.
        cvt(unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &mut ev) })?;
        Ok(())
    }

    /// Waits up to `timeout_ms` (−1: forever) and returns how many events arrived;
    /// their tokens are written to `tokens`.
    pub fn wait(&self, tokens: &mut [u64], timeout_ms: i32) -> io::Result<usize> {
        const N: usize = 32;
        // SAFETY: plain old data, zero is valid.
        let mut evs: [libc::epoll_event; N] = unsafe { zeroed() };
        let max = tokens.len().min(N) as i32;
        // SAFETY: `evs` has room for `max` events.
        let r = unsafe { libc::epoll_wait(self.0.as_raw_fd(), evs.as_mut_ptr(), max, timeout_ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted { Ok(0) } else { Err(e) };
        }
        for i in 0..r as usize {
            tokens[i] = evs[i].u64;
        }
        Ok(r as usize)
    }
}

/// An eventfd, to wake a thread blocked in epoll.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    /// A new non-blocking eventfd.
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: plain eventfd(2); the descriptor is owned below.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
        // SAFETY: fresh descriptor owned by nobody else.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// The descriptor (for [`Epoll::add`]).
    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// Wakes the waiter.
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64, as eventfd requires.
        unsafe {
            libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8);
        }
    }

    /// Clears pending wake-ups.
    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64.
        unsafe {
            libc::read(self.0.as_raw_fd(), (&mut v as *mut u64).cast(), 8);
        }
    }
}

/// Attaches a classic BPF socket filter (`SO_ATTACH_FILTER`) to `fd`.
pub fn attach_filter(fd: &OwnedFd, program: &[super::uplinkfilter::BpfInsn]) -> io::Result<()> {
    let insns: Vec<libc::sock_filter> =
        program.iter().map(|i| libc::sock_filter { code: i.code, jt: i.jt, jf: i.jf, k: i.k }).collect();
    let len = u16::try_from(insns.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let prog = libc::sock_fprog { len, filter: insns.as_ptr().cast_mut() };
    // SAFETY: `prog` points at `insns`, which outlives the call; the kernel copies the
    // program during setsockopt(2) and keeps no pointer to it.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&raw const prog).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoll_reports_a_watched_descriptor_until_it_is_deleted() {
        let epoll = Epoll::new().unwrap();
        let event = EventFd::new().unwrap();
        epoll.add(event.raw(), 7).unwrap();
        event.signal();
        let mut tokens = [0u64; 4];
        assert_eq!(epoll.wait(&mut tokens, 1000).unwrap(), 1);
        assert_eq!(tokens[0], 7);
        epoll.delete(event.raw()).unwrap();
        // Still readable, but no longer watched.
        assert_eq!(epoll.wait(&mut tokens, 0).unwrap(), 0);
        assert!(epoll.delete(event.raw()).is_err(), "deleting twice is refused");
        epoll.add(event.raw(), 8).unwrap();
        assert_eq!(epoll.wait(&mut tokens, 0).unwrap(), 1);
        assert_eq!(tokens[0], 8);
    }
}
