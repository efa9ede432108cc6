//! `bench`: the nccl-tests-style allreduce sweep. Times `iters` in-place calls per size after
//! a warm-up, reports the slowest rank's mean, then checks one fresh in-place call against
//! the reference.

use std::time::Instant;

use skein_collectives::reference::{count_mismatches_periodic, fill_input, reduced_period};
use skein_collectives::{AllreduceAlgorithm, Communicator, DType, Element, ReduceOp, algorithms};

use crate::{SweepArgs, alloc_buffer, default_iters, sizes, spin_note, warmup_for};

pub(crate) fn run(
    comm: &mut Communicator,
    s: &SweepArgs,
    algo: Option<AllreduceAlgorithm>,
    check: bool,
) -> anyhow::Result<()> {
    match s.dtype {
        DType::F32 => sweep::<f32>(comm, s, algo, check),
        DType::F64 => sweep::<f64>(comm, s, algo, check),
        DType::I32 => sweep::<i32>(comm, s, algo, check),
        DType::I64 => sweep::<i64>(comm, s, algo, check),
        DType::U8 => sweep::<u8>(comm, s, algo, check),
    }
}

/// Mean seconds per allreduce over `iters` calls, the slowest rank's (all ranks get it).
pub(crate) fn time_allreduce<T: Element>(
    comm: &mut Communicator,
    buf: &mut [T],
    op: ReduceOp,
    algo: Option<AllreduceAlgorithm>,
    iters: usize,
    warmup: usize,
) -> anyhow::Result<f64> {
    for _ in 0..warmup {
        comm.allreduce_with(buf, op, algo)?;
    }
    comm.barrier()?;
    let t0 = Instant::now();
    for _ in 0..iters {
        comm.allreduce_with(buf, op, algo)?;
    }
    let mut t = [t0.elapsed().as_secs_f64() / iters.max(1) as f64];
    comm.allreduce(&mut t, ReduceOp::Max)?;
    Ok(t[0])
}

fn sweep<T: Element>(
    comm: &mut Communicator,
    s: &SweepArgs,
    algo: Option<AllreduceAlgorithm>,
    check: bool,
) -> anyhow::Result<()> {
    let (n, rank) = (comm.size(), comm.rank());
    let op = s.op;
    let elem = std::mem::size_of::<T>();
    let sizes = sizes(s)?;
    let max_count = sizes.last().copied().unwrap_or(0) / elem;
    let mut buf: Vec<T> = alloc_buffer(max_count, "--max-bytes")?;
    let expected: Vec<T> = reduced_period(n, op);
    let print = rank == 0;
    if print {
        println!(
            "# skein-allreduce bench: {n} ranks, {} {op}, algorithm {}, in-place",
            T::DTYPE,
            algo.map_or("auto".to_string(), |a| a.to_string())
        );
        println!("# {}", spin_note(comm));
        println!("# data path: {}", comm.data_path());
        println!("#");
        println!(
            "# {:>10} {:>12} {:>5} {:>5} {:>20} {:>10} {:>8} {:>8} {:>7}",
            "size", "count", "type", "redop", "algorithm", "time", "algbw", "busbw", "#wrong"
        );
        println!(
            "# {:>10} {:>12} {:>5} {:>5} {:>20} {:>10} {:>8} {:>8} {:>7}",
            "(B)", "(elements)", "", "", "", "(us)", "(GB/s)", "(GB/s)", ""
        );
    }
    let mut busbw_sum = 0.0;
    let mut rows = 0usize;
    for size in sizes {
        let count = size / elem;
        if count == 0 {
            continue;
        }
        let bytes = count * elem;
        let b = &mut buf[..count];
        fill_input(b, rank, op);
        let iters = s.iters.unwrap_or_else(|| default_iters(bytes));
        let warmup = warmup_for(s, iters);
        let used = algo.or(comm.config().allreduce).unwrap_or_else(|| algorithms::choose_allreduce(bytes, n));
        let t = time_allreduce(comm, b, op, algo, iters, warmup)?;
        let wrong = if check {
            fill_input(b, rank, op);
            comm.allreduce_with(b, op, algo)?;
            let mut w = [count_mismatches_periodic(b, &expected) as i64];
            comm.allreduce(&mut w, ReduceOp::Sum)?;
            w[0].to_string()
        } else {
            "N/A".to_string()
        };
        let algbw = bytes as f64 / t / 1e9;
        let busbw = algbw * 2.0 * (n as f64 - 1.0) / n as f64;
        busbw_sum += busbw;
        rows += 1;
        if print {
            println!(
                "  {:>10} {:>12} {:>5} {:>5} {:>20} {:>10.2} {:>8.3} {:>8.3} {:>7}",
                bytes,
                count,
                T::DTYPE.name(),
                op.name(),
                used.name(),
                t * 1e6,
                algbw,
                busbw,
                wrong
            );
        }
    }
    if print && rows > 0 {
        println!("# Avg bus bandwidth    : {:.3}", busbw_sum / rows as f64);
    }
    Ok(())
}
