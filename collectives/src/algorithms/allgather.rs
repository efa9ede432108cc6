//! Allgather: a streamed ring (n−1 steps; each block is forwarded chunk by chunk as it
//! arrives), or recursive doubling (log2 p exchanges) with ranks beyond the largest power of
//! two p folded onto partners, for small blocks.

use super::{AllgatherAlgorithm, Fold, fold};
use crate::comm::{Exec, tmp_bytes};
use crate::engine::{After, Dst, Plan, Src};
use crate::error::Result;

pub(crate) fn run(
    ex: &mut Exec<'_>,
    algo: AllgatherAlgorithm,
    input: &[u8],
    data: &mut [u8],
    tmp: &mut Vec<u64>,
) -> Result<()> {
    let (n, r) = (ex.size(), ex.rank());
    let b = input.len();
    if n == 1 {
        data.copy_from_slice(input);
        return Ok(());
    }
    match algo {
        AllgatherAlgorithm::Ring => {
            data[r * b..(r + 1) * b].copy_from_slice(input);
            let (right, left) = ((r + 1) % n, (r + n - 1) % n);
            let mut plan = Plan::default();
            let mut prev = None;
            for k in 0..n - 1 {
                let sb = (r + n - k) % n;
                let rb = (r + 2 * n - k - 1) % n;
                plan.send(right, Src::Data(sb * b..(sb + 1) * b), prev.map_or(After::Start, After::Streaming));
                prev = Some(plan.recv(left, Dst::Data(rb * b..(rb + 1) * b)));
            }
            ex.run(&plan, data, &[], &mut [])
        }
        AllgatherAlgorithm::RecursiveDoubling => recursive_doubling(ex, input, data, tmp),
    }
}

fn recursive_doubling(ex: &mut Exec<'_>, input: &[u8], data: &mut [u8], tmp: &mut Vec<u64>) -> Result<()> {
    let (n, r) = (ex.size(), ex.rank());
    let b = input.len();
    let (p, place) = fold(r, n);
    let extras = n - p;
    match place {
        Fold::Extra { partner } => {
            let mut plan = Plan::default();
            plan.send(partner, Src::Input(0..b), After::Start);
            plan.recv(partner, Dst::Data(0..n * b));
            ex.run(&plan, data, input, &mut [])
        }
        Fold::Core { vrank: v, extra } => {
            // In `tmp`, virtual rank u's slot holds block u then block u + p (if that rank
            // exists), so any aligned group of virtual ranks is one contiguous range.
            let slot = |u: usize| (u + u.min(extras)) * b;
            let slot_end = |u: usize| slot(u) + b * (1 + usize::from(u < extras));
            let t = tmp_bytes(tmp, n * b);
            t[slot(v)..slot(v) + b].copy_from_slice(input);
            if let Some(e) = extra {
                let mut plan = Plan::default();
                plan.recv(e, Dst::Tmp(slot(v) + b..slot(v) + 2 * b));
                ex.run(&plan, &mut [], &[], t)?;
            }
            let mut d = 1;
            while d < p {
                let partner = v ^ d;
                let mine = v & !(d - 1);
                let theirs = partner & !(d - 1);
                let mut plan = Plan::default();
                plan.send(partner, Src::Tmp(slot(mine)..slot_end(mine + d - 1)), After::Start);
                plan.recv(partner, Dst::Tmp(slot(theirs)..slot_end(theirs + d - 1)));
                ex.run(&plan, &mut [], &[], t)?;
                d <<= 1;
            }
            for u in 0..p {
                data[u * b..(u + 1) * b].copy_from_slice(&t[slot(u)..slot(u) + b]);
                if u < extras {
                    data[(u + p) * b..(u + p + 1) * b].copy_from_slice(&t[slot(u) + b..slot(u) + 2 * b]);
                }
            }
            if let Some(e) = extra {
                let mut plan = Plan::default();
                plan.send(e, Src::Data(0..n * b), After::Start);
                ex.run(&plan, data, &[], &mut [])?;
            }
            Ok(())
        }
    }
}
