//! Dissemination barrier: in round k every rank signals rank + 2^k and waits for rank − 2^k,
//! ⌈log2 n⌉ rounds of header-only messages, any n. The whole barrier is one engine plan.

use crate::comm::Exec;
use crate::engine::{After, Dst, Plan, Src};
use crate::error::Result;

pub(crate) fn dissemination(ex: &mut Exec<'_>) -> Result<()> {
    let (n, r) = (ex.size(), ex.rank());
    if n == 1 {
        return Ok(());
    }
    let mut plan = Plan::default();
    let mut prev = None;
    let mut d = 1;
    while d < n {
        let after = prev.map_or(After::Start, After::Complete);
        plan.send((r + d) % n, Src::Data(0..0), after);
        prev = Some(plan.recv((r + n - d) % n, Dst::Data(0..0)));
        d <<= 1;
    }
    ex.run(&plan, &mut [], &[], &mut [])
}
