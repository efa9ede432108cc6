//! Reduce: a binomial tree towards the root (children reduced in a fixed order so results
//! are reproducible), or for large buffers a streamed ring reduce-scatter followed by every
//! rank sending its finished block to the root.

use super::{ReduceAlgorithm, block_offsets};
use crate::comm::{Exec, tmp_bytes};
use crate::engine::{After, Dst, Plan, Src};
use crate::error::Result;

pub(crate) fn run(
    ex: &mut Exec<'_>,
    algo: ReduceAlgorithm,
    data: &mut [u8],
    root: usize,
    tmp: &mut Vec<u64>,
) -> Result<()> {
    if ex.size() == 1 {
        return Ok(());
    }
    match algo {
        ReduceAlgorithm::Binomial => binomial(ex, data, root, tmp),
        ReduceAlgorithm::ReduceScatterGather => reduce_scatter_gather(ex, data, root, tmp),
    }
}

fn binomial(ex: &mut Exec<'_>, data: &mut [u8], root: usize, tmp: &mut Vec<u64>) -> Result<()> {
    let (n, r) = (ex.size(), ex.rank());
    let len = data.len();
    let v = (r + n - root) % n;
    let abs = |x: usize| (x + root) % n;
    // v's children are v + m for each power of two m below v's lowest set bit.
    let limit = if v == 0 { n.next_power_of_two() } else { v & v.wrapping_neg() };
    let children: Vec<usize> = std::iter::successors(Some(1usize), |m| Some(m << 1))
        .take_while(|m| *m < limit)
        .filter(|m| v + m < n)
        .map(|m| abs(v + m))
        .collect();
    let mut plan = Plan::default();
    if v == 0 {
        let mut prev = None;
        for c in children {
            prev = Some(plan.recv_reduce(c, Dst::Data(0..len), prev));
        }
        return ex.run(&plan, data, &[], &mut []);
    }
    let parent = abs(v - (v & v.wrapping_neg()));
    if children.is_empty() {
        plan.send(parent, Src::Data(0..len), After::Start);
        return ex.run(&plan, data, &[], &mut []);
    }
    // Inner ranks accumulate in scratch space: their own buffer must come back unchanged.
    let acc = tmp_bytes(tmp, len);
    acc.copy_from_slice(data);
    let mut prev = None;
    for c in children {
        prev = Some(plan.recv_reduce(c, Dst::Tmp(0..len), prev));
    }
    plan.send(parent, Src::Tmp(0..len), prev.map_or(After::Start, After::Streaming));
    ex.run(&plan, &mut [], &[], acc)
}

fn reduce_scatter_gather(ex: &mut Exec<'_>, data: &mut [u8], root: usize, tmp: &mut Vec<u64>) -> Result<()> {
    let (n, r, elem) = (ex.size(), ex.rank(), ex.elem());
    let len = data.len();
    let offs = block_offsets(len / elem, n);
    let blk = |i: usize| offs[i] * elem..offs[i + 1] * elem;
    let (right, left) = ((r + 1) % n, (r + n - 1) % n);
    let on_tmp = r != root;
    let src = |range| if on_tmp { Src::Tmp(range) } else { Src::Data(range) };
    let dst = |range| if on_tmp { Dst::Tmp(range) } else { Dst::Data(range) };
    let mut plan = Plan::default();
    let mut prev = None;
    for k in 0..n - 1 {
        let sb = (r + n - k) % n;
        let rb = (r + 2 * n - k - 1) % n;
        plan.send(right, src(blk(sb)), prev.map_or(After::Start, After::Streaming));
        prev = Some(plan.recv_reduce(left, dst(blk(rb)), None));
    }
    // After n−1 steps rank p holds the finished block p + 1. Causality keeps the root's
    // copies safe: a finished block can only arrive after the root forwarded its own partial
    // sum of it.
    if r == root {
        for i in 1..n {
            let p = (root + i) % n;
            plan.recv(p, Dst::Data(blk((p + 1) % n)));
        }
        ex.run(&plan, data, &[], &mut [])
    } else {
        plan.send(root, Src::Tmp(blk((r + 1) % n)), prev.map_or(After::Start, After::Streaming));
        let work = tmp_bytes(tmp, len);
        work.copy_from_slice(data);
        ex.run(&plan, &mut [], &[], work)
    }
}
