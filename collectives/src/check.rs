//! The correctness suite: every collective × every algorithm × a list of lengths (and every
//! type × op for the reductions), each result compared bit for bit with the sequential
//! reference. `skein-allreduce check` runs it across processes; the tests run it with ranks
//! as threads.

use crate::algorithms::{AllgatherAlgorithm, AllreduceAlgorithm, BroadcastAlgorithm, ReduceAlgorithm};
use crate::comm::Communicator;
use crate::datatype::{DType, Element, ReduceOp};
use crate::error::Result;
use crate::reference::{first_mismatch_periodic, input, input_at, reduced_period};

/// What the suite covers.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    /// Element counts every collective × algorithm runs with (per rank block for
    /// scatter/gather/allgather).
    pub lengths: Vec<usize>,
    /// Element count for the every-type × every-op sweep of reduce and allreduce (0: skip).
    pub sweep_length: usize,
}

impl Default for SuiteOptions {
    fn default() -> Self {
        SuiteOptions { lengths: vec![0, 1, 7, 1000, (1 << 20) + 3], sweep_length: 1000 }
    }
}

/// The suite's outcome on this rank.
#[derive(Debug, Clone, Default)]
pub struct SuiteReport {
    /// Cases run.
    pub cases: usize,
    /// Cases whose result on this rank differed from the reference, with the first bad
    /// element of each.
    pub local_failures: Vec<String>,
    /// Failed (case, rank) pairs summed over all ranks (the same on every rank).
    pub global_failures: u64,
}

/// Runs the suite on every rank of `comm` (a collective call: all ranks must run it with the
/// same options). `on_case(name, ok)` is called after each case on this rank. Errors are
/// communication failures; wrong results are counted in the report.
pub fn run_suite(
    comm: &mut Communicator,
    opts: &SuiteOptions,
    mut on_case: impl FnMut(&str, bool),
) -> Result<SuiteReport> {
    let mut rep = SuiteReport::default();
    let mut record = |rep: &mut SuiteReport, name: String, failure: Option<String>| {
        rep.cases += 1;
        on_case(&name, failure.is_none());
        if let Some(f) = failure {
            rep.local_failures.push(format!("{name}: {f}"));
        }
    };
    comm.barrier()?;
    record(&mut rep, "barrier".into(), None);
    for &len in &opts.lengths {
        let root = len % comm.size();
        for &a in BroadcastAlgorithm::ALL {
            let f = broadcast::<f32>(comm, len, root, a)?;
            record(&mut rep, format!("broadcast/{a} len={len} root={root}"), f);
        }
        let f = scatter::<f32>(comm, len, root)?;
        record(&mut rep, format!("scatter len={len} root={root}"), f);
        let f = gather::<f32>(comm, len, root)?;
        record(&mut rep, format!("gather len={len} root={root}"), f);
        for &a in AllgatherAlgorithm::ALL {
            let f = allgather::<f32>(comm, len, a)?;
            record(&mut rep, format!("allgather/{a} len={len}"), f);
        }
        for &a in ReduceAlgorithm::ALL {
            let f = reduce::<f32>(comm, len, ReduceOp::Sum, root, a)?;
            record(&mut rep, format!("reduce/{a} f32 sum len={len} root={root}"), f);
        }
        for &a in AllreduceAlgorithm::ALL {
            let f = allreduce::<f32>(comm, len, ReduceOp::Sum, a)?;
            record(&mut rep, format!("allreduce/{a} f32 sum len={len}"), f);
        }
    }
    if opts.sweep_length > 0 {
        let len = opts.sweep_length;
        for dtype in DType::ALL {
            for op in ReduceOp::ALL {
                for &a in AllreduceAlgorithm::ALL {
                    let f = match dtype {
                        DType::F32 => allreduce::<f32>(comm, len, op, a)?,
                        DType::F64 => allreduce::<f64>(comm, len, op, a)?,
                        DType::I32 => allreduce::<i32>(comm, len, op, a)?,
                        DType::I64 => allreduce::<i64>(comm, len, op, a)?,
                        DType::U8 => allreduce::<u8>(comm, len, op, a)?,
                    };
                    record(&mut rep, format!("allreduce/{a} {dtype} {op} len={len}"), f);
                }
                for &a in ReduceAlgorithm::ALL {
                    let root = comm.size() - 1;
                    let f = match dtype {
                        DType::F32 => reduce::<f32>(comm, len, op, root, a)?,
                        DType::F64 => reduce::<f64>(comm, len, op, root, a)?,
                        DType::I32 => reduce::<i32>(comm, len, op, root, a)?,
                        DType::I64 => reduce::<i64>(comm, len, op, root, a)?,
                        DType::U8 => reduce::<u8>(comm, len, op, root, a)?,
                    };
                    record(&mut rep, format!("reduce/{a} {dtype} {op} len={len} root={root}"), f);
                }
            }
        }
    }
    let mut failed = [rep.local_failures.len() as i64];
    comm.allreduce(&mut failed, ReduceOp::Sum)?;
    rep.global_failures = failed[0] as u64;
    Ok(rep)
}

fn describe<T: Element>(m: Option<(usize, T, T)>, what: &str) -> Option<String> {
    m.map(|(i, got, want)| format!("{what}: element {i} is {got:?}, expected {want:?}"))
}

/// Broadcast: every rank ends with the root's input; the root's buffer is unchanged.
pub fn broadcast<T: Element>(
    comm: &mut Communicator,
    len: usize,
    root: usize,
    algo: BroadcastAlgorithm,
) -> Result<Option<String>> {
    let op = ReduceOp::Sum;
    let mut buf: Vec<T> = input(comm.rank(), len, op);
    comm.broadcast_with(&mut buf, root, Some(algo))?;
    let want: Vec<T> = input(root, crate::reference::period(op), op);
    Ok(describe(first_mismatch_periodic(&buf, &want, 0), "result"))
}

/// Scatter: rank r receives elements r·len.. of the root's buffer.
pub fn scatter<T: Element>(comm: &mut Communicator, len: usize, root: usize) -> Result<Option<String>> {
    let (n, r) = (comm.size(), comm.rank());
    let op = ReduceOp::Sum;
    let send: Vec<T> = if r == root { input(root, n * len, op) } else { Vec::new() };
    let mut recv = vec![T::from_u8(99); len];
    comm.scatter(&send, &mut recv, root)?;
    let p = crate::reference::period(op);
    let want: Vec<T> = input_at(root, 0, p, op);
    Ok(describe(first_mismatch_periodic(&recv, &want, (r * len) % p), "result"))
}

/// Gather: the root's buffer holds every rank's input in rank order.
pub fn gather<T: Element>(comm: &mut Communicator, len: usize, root: usize) -> Result<Option<String>> {
    let (n, r) = (comm.size(), comm.rank());
    let op = ReduceOp::Sum;
    let send: Vec<T> = input(r, len, op);
    let mut recv = if r == root { vec![T::from_u8(99); n * len] } else { Vec::new() };
    comm.gather(&send, &mut recv, root)?;
    if r != root {
        return Ok(None);
    }
    Ok(check_blocks(&recv, n, len, op))
}

fn check_blocks<T: Element>(recv: &[T], n: usize, len: usize, op: ReduceOp) -> Option<String> {
    let p = crate::reference::period(op);
    for q in 0..n {
        let want: Vec<T> = input(q, p, op);
        let block = &recv[q * len..(q + 1) * len];
        if let Some(m) = describe(first_mismatch_periodic(block, &want, 0), &format!("block of rank {q}")) {
            return Some(m);
        }
    }
    None
}

/// Allgather: every rank's buffer holds every rank's input in rank order.
pub fn allgather<T: Element>(comm: &mut Communicator, len: usize, algo: AllgatherAlgorithm) -> Result<Option<String>> {
    let (n, r) = (comm.size(), comm.rank());
    let op = ReduceOp::Sum;
    let send: Vec<T> = input(r, len, op);
    let mut recv = vec![T::from_u8(99); n * len];
    comm.allgather_with(&send, &mut recv, Some(algo))?;
    Ok(check_blocks(&recv, n, len, op))
}

/// Reduce: the root holds the reduction; other ranks' buffers are unchanged.
pub fn reduce<T: Element>(
    comm: &mut Communicator,
    len: usize,
    op: ReduceOp,
    root: usize,
    algo: ReduceAlgorithm,
) -> Result<Option<String>> {
    let (n, r) = (comm.size(), comm.rank());
    let mut buf: Vec<T> = input(r, len, op);
    comm.reduce_with(&mut buf, op, root, Some(algo))?;
    let want: Vec<T> = if r == root { reduced_period(n, op) } else { input(r, crate::reference::period(op), op) };
    Ok(describe(first_mismatch_periodic(&buf, &want, 0), if r == root { "result" } else { "non-root buffer" }))
}

/// Allreduce: every rank holds the reduction.
pub fn allreduce<T: Element>(
    comm: &mut Communicator,
    len: usize,
    op: ReduceOp,
    algo: AllreduceAlgorithm,
) -> Result<Option<String>> {
    let n = comm.size();
    let mut buf: Vec<T> = input(comm.rank(), len, op);
    comm.allreduce_with(&mut buf, op, Some(algo))?;
    let want: Vec<T> = reduced_period(n, op);
    Ok(describe(first_mismatch_periodic(&buf, &want, 0), "result"))
}
