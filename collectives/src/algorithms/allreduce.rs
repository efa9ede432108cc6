//! Allreduce: the streamed ring (bandwidth-optimal; every step forwards each chunk as soon as
//! it is reduced), recursive doubling (latency-optimal), and Rabenseifner (recursive-halving
//! reduce-scatter + recursive-doubling allgather). Ranks beyond the largest power of two fold
//! onto a partner for the two power-of-two algorithms.

use super::{AllreduceAlgorithm, Fold, block_offsets, fold};
use crate::comm::{Exec, tmp_bytes};
use crate::engine::{After, Dst, Plan, Src};
use crate::error::Result;

pub(crate) fn run(ex: &mut Exec<'_>, algo: AllreduceAlgorithm, data: &mut [u8], tmp: &mut Vec<u64>) -> Result<()> {
    if ex.size() == 1 {
        return Ok(());
    }
    match algo {
        AllreduceAlgorithm::Ring => ring(ex, data),
        AllreduceAlgorithm::RecursiveDoubling => recursive_doubling(ex, data, tmp),
        AllreduceAlgorithm::Rabenseifner => rabenseifner(ex, data),
    }
}

/// Step k sends block r − k to the right and receives block r − k − 1 from the left (reducing
/// during the first n − 1 steps, overwriting after): the block sent at step k + 1 is the one
/// received at step k, so the whole ring is one streamed plan.
///
/// Large buffers go round the ring one segment at a time (NCCL's slices), all segments in the
/// same plan back to back: a segment's block is sent, reduced into, forwarded and overwritten
/// while it is still in cache, instead of the whole buffer streaming through memory twice.
fn ring(ex: &mut Exec<'_>, data: &mut [u8]) -> Result<()> {
    let (n, r, elem) = (ex.size(), ex.rank(), ex.elem());
    let count = data.len() / elem;
    let seg_elems = (ex.ring_segment() / elem).max(n);
    let (right, left) = ((r + 1) % n, (r + n - 1) % n);
    let mut plan = Plan::default();
    let mut start = 0;
    loop {
        let end = count.min(start + seg_elems);
        let offs = block_offsets(end - start, n);
        let blk = |i: usize| (start + offs[i]) * elem..(start + offs[i + 1]) * elem;
        let mut prev = None;
        for k in 0..2 * (n - 1) {
            let sb = (r + 2 * n - k) % n;
            let rb = (r + 2 * n - k - 1) % n;
            plan.send(right, Src::Data(blk(sb)), prev.map_or(After::Start, After::Streaming));
            prev = Some(if k < n - 1 {
                plan.recv_reduce(left, Dst::Data(blk(rb)), None)
            } else {
                plan.recv(left, Dst::Data(blk(rb)))
            });
        }
        start = end;
        if start >= count {
            break;
        }
    }
    ex.run(&plan, data, &[], &mut [])
}

/// Extra ranks (beyond the largest power of two) hand their buffer to a partner and get the
/// result back; returns the partner role for the core phase.
fn fold_in(ex: &mut Exec<'_>, data: &mut [u8]) -> Result<Option<(usize, usize, Option<usize>)>> {
    let (n, r) = (ex.size(), ex.rank());
    let len = data.len();
    let (p, place) = fold(r, n);
    match place {
        Fold::Extra { partner } => {
            // The partner sends the result only after the core phase, which needs all of this
            // buffer: the receive can never overwrite bytes still to be sent.
            let mut plan = Plan::default();
            plan.send(partner, Src::Data(0..len), After::Start);
            plan.recv(partner, Dst::Data(0..len));
            ex.run(&plan, data, &[], &mut [])?;
            Ok(None)
        }
        Fold::Core { vrank, extra } => {
            if let Some(e) = extra {
                let mut plan = Plan::default();
                plan.recv_reduce(e, Dst::Data(0..len), None);
                ex.run(&plan, data, &[], &mut [])?;
            }
            Ok(Some((p, vrank, extra)))
        }
    }
}

fn fold_out(ex: &mut Exec<'_>, data: &mut [u8], extra: Option<usize>) -> Result<()> {
    if let Some(e) = extra {
        let mut plan = Plan::default();
        plan.send(e, Src::Data(0..data.len()), After::Start);
        ex.run(&plan, data, &[], &mut [])?;
    }
    Ok(())
}

fn recursive_doubling(ex: &mut Exec<'_>, data: &mut [u8], tmp: &mut Vec<u64>) -> Result<()> {
    let Some((p, v, extra)) = fold_in(ex, data)? else {
        return Ok(());
    };
    let len = data.len();
    let t = tmp_bytes(tmp, len);
    let mut d = 1;
    while d < p {
        // The whole buffer goes out while the partner's comes in; reducing waits for the end
        // of the exchange so that no byte is overwritten before it is sent.
        let mut plan = Plan::default();
        plan.send(v ^ d, Src::Data(0..len), After::Start);
        plan.recv(v ^ d, Dst::Tmp(0..len));
        ex.run(&plan, data, &[], t)?;
        ex.reduce_local(data, t)?;
        d <<= 1;
    }
    fold_out(ex, data, extra)
}

fn rabenseifner(ex: &mut Exec<'_>, data: &mut [u8]) -> Result<()> {
    let elem = ex.elem();
    let Some((p, v, extra)) = fold_in(ex, data)? else {
        return Ok(());
    };
    let offs = block_offsets(data.len() / elem, p);
    let span = |from: usize, to: usize| offs[from] * elem..offs[to] * elem;
    // Recursive halving: each round keeps the half of the current range that holds this
    // rank's block, sends the other half to the partner and reduces the partner's copy of the
    // kept half in.
    let mut d = p / 2;
    while d >= 1 {
        let base = v & !(2 * d - 1);
        let (keep, give) = if v & d == 0 {
            (span(base, base + d), span(base + d, base + 2 * d))
        } else {
            (span(base + d, base + 2 * d), span(base, base + d))
        };
        let mut plan = Plan::default();
        plan.send(v ^ d, Src::Data(give), After::Start);
        plan.recv_reduce(v ^ d, Dst::Data(keep), None);
        ex.run(&plan, data, &[], &mut [])?;
        d /= 2;
    }
    // Recursive doubling allgather of the finished blocks.
    let mut d = 1;
    while d < p {
        let mine = v & !(d - 1);
        let theirs = (v ^ d) & !(d - 1);
        let mut plan = Plan::default();
        plan.send(v ^ d, Src::Data(span(mine, mine + d)), After::Start);
        plan.recv(v ^ d, Dst::Data(span(theirs, theirs + d)));
        ex.run(&plan, data, &[], &mut [])?;
        d <<= 1;
    }
    fold_out(ex, data, extra)
}
