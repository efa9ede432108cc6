//! Broadcast: a binomial tree rooted at the root, or a chain through all ranks for large
//! buffers. Either way inner ranks forward each chunk as soon as it has arrived, so a large
//! broadcast is pipelined rather than store-and-forward.

use super::BroadcastAlgorithm;
use crate::comm::Exec;
use crate::engine::{After, Dst, Plan, Src};
use crate::error::Result;

pub(crate) fn run(ex: &mut Exec<'_>, algo: BroadcastAlgorithm, data: &mut [u8], root: usize) -> Result<()> {
    let (n, r) = (ex.size(), ex.rank());
    if n == 1 {
        return Ok(());
    }
    let len = data.len();
    let v = (r + n - root) % n;
    let abs = |x: usize| (x + root) % n;
    let mut plan = Plan::default();
    let mut from_parent = None;
    match algo {
        BroadcastAlgorithm::Binomial => {
            // The parent clears v's lowest set bit; children add each lower power of two,
            // largest subtree first so the deepest branch starts earliest.
            let mut mask = 1;
            while mask < n {
                if v & mask != 0 {
                    from_parent = Some(plan.recv(abs(v - mask), Dst::Data(0..len)));
                    break;
                }
                mask <<= 1;
            }
            let mut m = mask >> 1;
            while m > 0 {
                if v + m < n {
                    plan.send(abs(v + m), Src::Data(0..len), from_parent.map_or(After::Start, After::Streaming));
                }
                m >>= 1;
            }
        }
        BroadcastAlgorithm::Pipeline => {
            if v > 0 {
                from_parent = Some(plan.recv(abs(v - 1), Dst::Data(0..len)));
            }
            if v + 1 < n {
                plan.send(abs(v + 1), Src::Data(0..len), from_parent.map_or(After::Start, After::Streaming));
            }
        }
    }
    ex.run(&plan, data, &[], &mut [])
}
