//! Scatter and gather, linear: the root talks to every other rank at once over non-blocking
//! sockets, so the per-message latencies overlap and the root's link carries exactly the
//! (n−1)/n of the data it must.

use crate::comm::Exec;
use crate::engine::{After, Dst, Plan, Src};
use crate::error::Result;

pub(crate) fn scatter(ex: &mut Exec<'_>, input: &[u8], data: &mut [u8], root: usize) -> Result<()> {
    let (n, r) = (ex.size(), ex.rank());
    let b = data.len();
    let mut plan = Plan::default();
    if r == root {
        data.copy_from_slice(&input[root * b..(root + 1) * b]);
        for i in 1..n {
            let p = (root + i) % n;
            plan.send(p, Src::Input(p * b..(p + 1) * b), After::Start);
        }
        ex.run(&plan, &mut [], input, &mut [])
    } else {
        plan.recv(root, Dst::Data(0..b));
        ex.run(&plan, data, &[], &mut [])
    }
}

pub(crate) fn gather(ex: &mut Exec<'_>, input: &[u8], data: &mut [u8], root: usize) -> Result<()> {
    let (n, r) = (ex.size(), ex.rank());
    let b = input.len();
    let mut plan = Plan::default();
    if r == root {
        data[root * b..(root + 1) * b].copy_from_slice(input);
        for i in 1..n {
            let p = (root + i) % n;
            plan.recv(p, Dst::Data(p * b..(p + 1) * b));
        }
        ex.run(&plan, data, &[], &mut [])
    } else {
        plan.send(root, Src::Input(0..b), After::Start);
        ex.run(&plan, &mut [], input, &mut [])
    }
}
