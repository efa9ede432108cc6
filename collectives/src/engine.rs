//! The progress engine: runs one plan of sends and receives over non-blocking sockets on the
//! calling thread, streaming each payload and reducing received bytes chunk by chunk while the
//! kernel keeps filling the socket buffers (that is where compute overlaps communication).
//! Algorithms never touch sockets; they only build `Plan`s.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::TcpStream;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::{SendAncillaryBuffer, SendFlags};

use crate::datatype::{ByteReducer, ReduceOp};
use crate::error::{Error, Result};
use crate::wire::{FRAME_HEADER_LEN, FrameHeader};

/// Where a send's payload comes from.
#[derive(Debug, Clone)]
pub(crate) enum Src {
    /// The collective's main (in/out) buffer.
    Data(Range<usize>),
    /// The caller's read-only input buffer (gather/allgather/scatter send side).
    Input(Range<usize>),
    /// The communicator's temporary buffer.
    Tmp(Range<usize>),
}

/// Where a receive's payload goes.
#[derive(Debug, Clone)]
pub(crate) enum Dst {
    /// The collective's main buffer.
    Data(Range<usize>),
    /// The communicator's temporary buffer.
    Tmp(Range<usize>),
}

impl Src {
    fn len(&self) -> usize {
        match self {
            Src::Data(r) | Src::Input(r) | Src::Tmp(r) => r.len(),
        }
    }
}

impl Dst {
    fn len(&self) -> usize {
        match self {
            Dst::Data(r) | Dst::Tmp(r) => r.len(),
        }
    }
}

/// What a send waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum After {
    /// Nothing: it may start at once.
    Start,
    /// Byte `i` may go once byte `i` of receive `r` has landed (and been reduced): the
    /// pipelining dependency of ring steps and forwarding trees.
    Streaming(usize),
    /// Nothing, not even the header, goes before receive `r` is complete (barrier rounds).
    Complete(usize),
}

/// One message to a peer.
#[derive(Debug, Clone)]
pub(crate) struct SendOp {
    pub peer: usize,
    pub src: Src,
    pub after: After,
}

/// One message from a peer.
#[derive(Debug, Clone)]
pub(crate) struct RecvOp {
    pub peer: usize,
    pub dst: Dst,
    /// Reduce into `dst` (through the peer's scratch) instead of overwriting it.
    pub reduce: bool,
    /// Apply byte `i` only after byte `i` of this other receive was applied: fixes the order
    /// in which several peers' data is reduced into one region, so results are reproducible.
    pub after: Option<usize>,
}

/// The sends and receives of one collective step (or a whole streamed collective). Messages
/// to one peer go in plan order, as do messages from one peer.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub sends: Vec<SendOp>,
    pub recvs: Vec<RecvOp>,
}

impl Plan {
    pub fn send(&mut self, peer: usize, src: Src, after: After) -> usize {
        self.sends.push(SendOp { peer, src, after });
        self.sends.len() - 1
    }

    pub fn recv(&mut self, peer: usize, dst: Dst) -> usize {
        self.recvs.push(RecvOp { peer, dst, reduce: false, after: None });
        self.recvs.len() - 1
    }

    pub fn recv_reduce(&mut self, peer: usize, dst: Dst, after: Option<usize>) -> usize {
        self.recvs.push(RecvOp { peer, dst, reduce: true, after });
        self.recvs.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.sends.is_empty() && self.recvs.is_empty()
    }

    /// Every peer the plan talks to.
    pub fn peers(&self) -> Vec<usize> {
        let mut p: Vec<usize> = self.sends.iter().map(|s| s.peer).chain(self.recvs.iter().map(|r| r.peer)).collect();
        p.sort_unstable();
        p.dedup();
        p
    }
}

/// The buffers a plan's ranges index into.
pub(crate) struct Bufs<'a> {
    pub data: &'a mut [u8],
    pub input: &'a [u8],
    pub tmp: &'a mut [u8],
}

/// How received bytes are reduced.
#[derive(Clone, Copy)]
pub(crate) struct Reduction {
    pub reducer: ByteReducer,
    pub op: ReduceOp,
    pub elem: usize,
}

/// What the engine borrows from the communicator for one run.
pub(crate) struct Ctx<'a> {
    pub conns: &'a mut [Option<TcpStream>],
    /// Per-peer reduce scratch (u64 words so that any element type is aligned).
    pub scratch: &'a mut [Vec<u64>],
    pub chunk: usize,
    pub timeout: Duration,
    pub spin: Duration,
    pub abort: &'a AtomicBool,
    /// Busy-wait budget before yielding, adapted across calls (see `adapt_busy_wait`).
    pub busy_wait: &'a mut Duration,
    pub header: FrameHeader,
    pub reduction: Option<Reduction>,
}

struct SendState {
    hdr: [u8; FRAME_HEADER_LEN],
    hdr_done: usize,
    done: usize,
    len: usize,
}

struct RecvState {
    hdr: [u8; FRAME_HEADER_LEN],
    hdr_got: usize,
    /// Payload bytes read from the socket.
    got: usize,
    /// Payload bytes final in the destination (copied or reduced).
    applied: usize,
    len: usize,
}

impl RecvState {
    fn complete(&self) -> bool {
        self.hdr_got == FRAME_HEADER_LEN && self.applied == self.len
    }
}

enum Step {
    Done,
    Moved,
    WaitSocket,
    WaitDependency,
}

/// Most of the spin budget that is a pure busy-wait before yielding starts.
pub(crate) const MAX_BUSY_WAIT: Duration = Duration::from_micros(30);

/// Adapts the busy-wait budget to how long waits turn out to be. A wait that ends within
/// `MAX_BUSY_WAIT` (the peer answered at once, as on idle cores) restores the full budget; a
/// longer one halves it. Under CPU contention waits are long, the budget falls to nothing and
/// this rank yields at once instead of holding a core its peer may need.
fn adapt_busy_wait(budget: &mut Duration, waited: Duration) {
    *budget = if waited <= MAX_BUSY_WAIT { MAX_BUSY_WAIT } else { *budget / 2 };
}

/// Longest a single `poll(2)` sleeps, so an abort from another thread is noticed promptly.
const POLL_SLICE: Duration = Duration::from_millis(100);

fn src_slice<'b>(bufs: &'b Bufs<'_>, src: &Src) -> &'b [u8] {
    match src {
        Src::Data(r) => &bufs.data[r.clone()],
        Src::Input(r) => &bufs.input[r.clone()],
        Src::Tmp(r) => &bufs.tmp[r.clone()],
    }
}

fn dst_slice<'b>(bufs: &'b mut Bufs<'_>, dst: &Dst) -> &'b mut [u8] {
    match dst {
        Dst::Data(r) => &mut bufs.data[r.clone()],
        Dst::Tmp(r) => &mut bufs.tmp[r.clone()],
    }
}

/// Runs `plan` to completion, or fails with the first error (the caller poisons the
/// communicator so that peers fail fast too).
pub(crate) fn run(ctx: &mut Ctx<'_>, plan: &Plan, bufs: &mut Bufs<'_>) -> Result<()> {
    if plan.is_empty() {
        return Ok(());
    }
    check_ranges(plan, bufs)?;
    let n = ctx.conns.len();
    let mut sends: Vec<SendState> = plan
        .sends
        .iter()
        .map(|s| {
            let len = s.src.len();
            SendState { hdr: FrameHeader { len: len as u64, ..ctx.header }.encode(), hdr_done: 0, done: 0, len }
        })
        .collect();
    let mut recvs: Vec<RecvState> = plan
        .recvs
        .iter()
        .map(|r| RecvState { hdr: [0; FRAME_HEADER_LEN], hdr_got: 0, got: 0, applied: 0, len: r.dst.len() })
        .collect();
    let mut send_q: Vec<(usize, VecDeque<usize>)> = Vec::new();
    let mut recv_q: Vec<(usize, VecDeque<usize>)> = Vec::new();
    for (i, s) in plan.sends.iter().enumerate() {
        queue_for(&mut send_q, s.peer).push_back(i);
    }
    for (i, r) in plan.recvs.iter().enumerate() {
        queue_for(&mut recv_q, r.peer).push_back(i);
        if r.reduce {
            if ctx.reduction.is_none() {
                return Err(Error::InvalidArgument("internal: reducing receive in a plan without a reduction".into()));
            }
            let words = ctx.chunk.div_ceil(8);
            if ctx.scratch[r.peer].len() < words {
                ctx.scratch[r.peer].resize(words, 0);
            }
        }
    }
    for &(peer, _) in send_q.iter().chain(recv_q.iter()) {
        if peer >= n || ctx.conns[peer].is_none() {
            return Err(Error::InvalidArgument(format!("internal: no connection to peer rank {peer}")));
        }
    }

    let mut remaining = plan.sends.len() + plan.recvs.len();
    let mut want_out = vec![false; n];
    let mut want_in = vec![false; n];
    let mut idle_since: Option<Instant> = None;
    loop {
        let mut progressed = false;
        for (peer, q) in send_q.iter_mut() {
            want_out[*peer] = false;
            while let Some(&i) = q.front() {
                match try_send(ctx, plan, bufs, &mut sends, &recvs, i)? {
                    Step::Done => {
                        q.pop_front();
                        remaining -= 1;
                        progressed = true;
                    }
                    Step::Moved => {
                        progressed = true;
                        break;
                    }
                    Step::WaitSocket => {
                        want_out[*peer] = true;
                        break;
                    }
                    Step::WaitDependency => break,
                }
            }
        }
        for (peer, q) in recv_q.iter_mut() {
            want_in[*peer] = false;
            while let Some(&i) = q.front() {
                match try_recv(ctx, plan, bufs, &mut recvs, i)? {
                    Step::Done => {
                        q.pop_front();
                        remaining -= 1;
                        progressed = true;
                    }
                    Step::Moved => {
                        progressed = true;
                        break;
                    }
                    Step::WaitSocket => {
                        want_in[*peer] = true;
                        break;
                    }
                    Step::WaitDependency => break,
                }
            }
        }
        if remaining == 0 {
            if let Some(since) = idle_since {
                adapt_busy_wait(ctx.busy_wait, since.elapsed());
            }
            return Ok(());
        }
        if progressed {
            if let Some(since) = idle_since.take() {
                adapt_busy_wait(ctx.busy_wait, since.elapsed());
            }
            continue;
        }
        let now = Instant::now();
        let since = *idle_since.get_or_insert(now);
        if ctx.abort.load(Ordering::Relaxed) {
            return Err(Error::Aborted);
        }
        let idle = now.saturating_duration_since(since);
        if idle >= ctx.timeout {
            let peer = first_waiting(&recv_q).or_else(|| first_waiting(&send_q)).unwrap_or(0);
            return Err(Error::Timeout { peer, during: describe(&ctx.header), timeout: ctx.timeout });
        }
        if idle < ctx.spin {
            if idle < *ctx.busy_wait {
                // A reply to a small message usually lands within a few microseconds; a
                // system call here would only delay noticing it.
                std::hint::spin_loop();
            } else {
                // Then yield rather than burn the slice: when ranks share a core with each
                // other (or with anything else), the peer we wait for may need this very CPU.
                std::thread::yield_now();
            }
            continue;
        }
        wait(ctx, &want_in, &want_out, (ctx.timeout - idle).min(POLL_SLICE))?;
    }
}

fn queue_for(qs: &mut Vec<(usize, VecDeque<usize>)>, peer: usize) -> &mut VecDeque<usize> {
    let at = match qs.iter().position(|(p, _)| *p == peer) {
        Some(at) => at,
        None => {
            qs.push((peer, VecDeque::new()));
            qs.len() - 1
        }
    };
    &mut qs[at].1
}

fn first_waiting(qs: &[(usize, VecDeque<usize>)]) -> Option<usize> {
    qs.iter().find(|(_, q)| !q.is_empty()).map(|(p, _)| *p)
}

fn describe(h: &FrameHeader) -> String {
    format!("{} (call #{})", h.collective, h.seq)
}

fn check_ranges(plan: &Plan, bufs: &Bufs<'_>) -> Result<()> {
    let fits = |r: &Range<usize>, len: usize| r.start <= r.end && r.end <= len;
    for s in &plan.sends {
        let ok = match &s.src {
            Src::Data(r) => fits(r, bufs.data.len()),
            Src::Input(r) => fits(r, bufs.input.len()),
            Src::Tmp(r) => fits(r, bufs.tmp.len()),
        };
        let dep_ok = match s.after {
            After::Start => true,
            After::Streaming(r) | After::Complete(r) => r < plan.recvs.len(),
        };
        if !ok || !dep_ok {
            return Err(Error::InvalidArgument(format!("internal: bad send {s:?}")));
        }
    }
    for r in &plan.recvs {
        let ok = match &r.dst {
            Dst::Data(x) => fits(x, bufs.data.len()),
            Dst::Tmp(x) => fits(x, bufs.tmp.len()),
        };
        if !ok || r.after.is_some_and(|a| a >= plan.recvs.len()) {
            return Err(Error::InvalidArgument(format!("internal: bad receive {r:?}")));
        }
    }
    Ok(())
}

fn try_send(
    ctx: &mut Ctx<'_>,
    plan: &Plan,
    bufs: &Bufs<'_>,
    sends: &mut [SendState],
    recvs: &[RecvState],
    i: usize,
) -> Result<Step> {
    let op = &plan.sends[i];
    let st = &mut sends[i];
    if st.hdr_done == FRAME_HEADER_LEN && st.done == st.len {
        return Ok(Step::Done);
    }
    let avail = match op.after {
        After::Start => st.len,
        After::Streaming(r) => recvs[r].applied.min(st.len),
        After::Complete(r) => {
            if recvs[r].complete() {
                st.len
            } else {
                return Ok(Step::WaitDependency);
            }
        }
    };
    // Forward whole chunks (or the whole tail): tiny writes would cost a syscall and a
    // segment each.
    if avail - st.done < ctx.chunk.min(st.len - st.done) {
        return Ok(Step::WaitDependency);
    }
    let payload = &src_slice(bufs, &op.src)[st.done..avail];
    let hdr = &st.hdr[st.hdr_done..];
    let conn = ctx.conns[op.peer]
        .as_mut()
        .ok_or_else(|| Error::InvalidArgument(format!("internal: no connection to peer rank {}", op.peer)))?;
    let res = if hdr.is_empty() {
        // std's `write` on a TcpStream passes MSG_NOSIGNAL: a dead peer is an EPIPE, not a
        // SIGPIPE.
        conn.write(payload)
    } else {
        // `write_vectored` would be a plain writev(2), which raises SIGPIPE.
        rustix::net::sendmsg(
            &*conn,
            &[IoSlice::new(hdr), IoSlice::new(payload)],
            &mut SendAncillaryBuffer::default(),
            SendFlags::NOSIGNAL,
        )
        .map_err(io::Error::from)
    };
    match res {
        Ok(0) => Err(Error::PeerClosed { peer: op.peer, during: describe(&ctx.header) }),
        Ok(mut k) => {
            let h = k.min(FRAME_HEADER_LEN - st.hdr_done);
            st.hdr_done += h;
            k -= h;
            st.done += k;
            if st.hdr_done == FRAME_HEADER_LEN && st.done == st.len { Ok(Step::Done) } else { Ok(Step::Moved) }
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Step::WaitSocket),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Step::Moved),
        Err(e) => Err(peer_error(op.peer, &ctx.header, "send", e)),
    }
}

fn peer_error(peer: usize, h: &FrameHeader, what: &str, e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::UnexpectedEof => Error::PeerClosed { peer, during: describe(h) },
        _ => Error::io(peer, format!("{what} during {}", describe(h)), e),
    }
}

fn try_recv(ctx: &mut Ctx<'_>, plan: &Plan, bufs: &mut Bufs<'_>, recvs: &mut [RecvState], i: usize) -> Result<Step> {
    let op = &plan.recvs[i];
    if recvs[i].complete() {
        return Ok(Step::Done);
    }
    let dep_limit = match op.after {
        Some(a) => recvs[a].applied,
        None => usize::MAX,
    };
    let st = &mut recvs[i];
    let mut moved = false;

    // Reduce whatever arrived and may be applied, before reading more into the scratch.
    if op.reduce && st.got > st.applied {
        moved |= apply_reduce(ctx, op, bufs, st, dep_limit)?;
        if st.complete() {
            return Ok(Step::Done);
        }
    }

    let peer = op.peer;
    let want_payload = st.len - st.got;
    let hdr_missing = FRAME_HEADER_LEN - st.hdr_got;
    if hdr_missing == 0 && want_payload == 0 {
        // Everything read; only applying is left, and that waits on `after`.
        return Ok(if moved { Step::Moved } else { Step::WaitDependency });
    }
    let conn = ctx.conns[peer]
        .as_mut()
        .ok_or_else(|| Error::InvalidArgument(format!("internal: no connection to peer rank {peer}")))?;
    let res = if op.reduce {
        let scratch: &mut [u8] = bytemuck::cast_slice_mut(ctx.scratch[peer].as_mut_slice());
        let cap = ctx.chunk.min(scratch.len());
        let held = st.got - st.applied;
        let room = (cap - held).min(want_payload);
        if room == 0 && hdr_missing == 0 {
            return Ok(if moved { Step::Moved } else { Step::WaitDependency });
        }
        let target = &mut scratch[held..held + room];
        read_into(conn, &mut st.hdr[st.hdr_got..], target)
    } else {
        let dst = dst_slice(bufs, &op.dst);
        read_into(conn, &mut st.hdr[st.hdr_got..], &mut dst[st.got..])
    };
    match res {
        Ok(0) => Err(Error::PeerClosed { peer, during: describe(&ctx.header) }),
        Ok(mut k) => {
            let h = k.min(hdr_missing);
            st.hdr_got += h;
            k -= h;
            if h > 0 && st.hdr_got == FRAME_HEADER_LEN {
                check_header(&ctx.header, peer, &st.hdr, st.len)?;
            }
            st.got += k;
            if op.reduce {
                apply_reduce(ctx, op, bufs, st, dep_limit)?;
            } else {
                st.applied = st.got;
            }
            Ok(if st.complete() { Step::Done } else { Step::Moved })
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(if moved { Step::Moved } else { Step::WaitSocket }),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Step::Moved),
        Err(e) => Err(peer_error(peer, &ctx.header, "receive", e)),
    }
}

fn read_into(conn: &mut TcpStream, hdr: &mut [u8], payload: &mut [u8]) -> io::Result<usize> {
    if hdr.is_empty() {
        conn.read(payload)
    } else {
        conn.read_vectored(&mut [IoSliceMut::new(hdr), IoSliceMut::new(payload)])
    }
}

fn check_header(expected: &FrameHeader, peer: usize, raw: &[u8; FRAME_HEADER_LEN], len: usize) -> Result<()> {
    let got = FrameHeader::decode(raw).map_err(|source| Error::Wire { peer, during: describe(expected), source })?;
    let want = FrameHeader { len: len as u64, ..*expected };
    if got != want {
        return Err(Error::Mismatch { peer, expected: want.to_string(), got: got.to_string() });
    }
    Ok(())
}

/// Reduces the scratch bytes that may be applied (whole elements, not past `dep_limit`) into
/// the destination and keeps any remainder at the front of the scratch.
fn apply_reduce(
    ctx: &mut Ctx<'_>,
    op: &RecvOp,
    bufs: &mut Bufs<'_>,
    st: &mut RecvState,
    dep_limit: usize,
) -> Result<bool> {
    let Some(red) = ctx.reduction else {
        return Err(Error::InvalidArgument("internal: reducing receive without a reduction".into()));
    };
    let limit = st.got.min(dep_limit);
    let end = if limit == st.len { limit } else { limit - limit % red.elem };
    if end <= st.applied {
        return Ok(false);
    }
    let n = end - st.applied;
    let held = st.got - st.applied;
    let scratch: &mut [u8] = bytemuck::cast_slice_mut(ctx.scratch[op.peer].as_mut_slice());
    let dst = dst_slice(bufs, &op.dst);
    (red.reducer)(red.op, &mut dst[st.applied..end], &scratch[..n])?;
    if held > n {
        scratch.copy_within(n..held, 0);
    }
    st.applied = end;
    Ok(true)
}

fn wait(ctx: &Ctx<'_>, want_in: &[bool], want_out: &[bool], timeout: Duration) -> Result<()> {
    let mut fds: Vec<PollFd<'_>> = Vec::new();
    for (peer, conn) in ctx.conns.iter().enumerate() {
        let Some(conn) = conn else { continue };
        let mut flags = PollFlags::empty();
        if want_in[peer] {
            flags |= PollFlags::IN;
        }
        if want_out[peer] {
            flags |= PollFlags::OUT;
        }
        if !flags.is_empty() {
            fds.push(PollFd::new(conn, flags));
        }
    }
    if fds.is_empty() {
        // Everything pending waits on a dependency that is itself waiting: only possible if a
        // plan is inconsistent. Fail rather than spin forever.
        return Err(Error::InvalidArgument(format!("internal: plan for {} cannot progress", describe(&ctx.header))));
    }
    let ts = Timespec { tv_sec: timeout.as_secs() as _, tv_nsec: timeout.subsec_nanos() as _ };
    match rustix::event::poll(&mut fds, Some(&ts)) {
        Ok(_) => Ok(()),
        Err(rustix::io::Errno::INTR) => Ok(()),
        Err(e) => Err(Error::local("poll on peer sockets", e.into())),
    }
}
