//! `model`: fits α and β from a rank 0 ↔ rank 1 ping-pong (one-way time = half the round
//! trip) and γ from a local reduction loop, then prints every allreduce algorithm's α–β–γ
//! prediction beside its measured time.

use std::time::Instant;

use anyhow::bail;
use skein_collectives::datatype::reduce_slice;
use skein_collectives::model::{CostModel, fit_alpha_beta};
use skein_collectives::reference::fill_input;
use skein_collectives::{AllreduceAlgorithm, Communicator, DType, Element, ReduceOp, algorithms};

use crate::bench::time_allreduce;
use crate::{SweepArgs, alloc_buffer, default_iters, sizes, spin_note, warmup_for};

pub(crate) fn run(comm: &mut Communicator, s: &SweepArgs) -> anyhow::Result<()> {
    match s.dtype {
        DType::F32 => model::<f32>(comm, s),
        DType::F64 => model::<f64>(comm, s),
        DType::I32 => model::<i32>(comm, s),
        DType::I64 => model::<i64>(comm, s),
        DType::U8 => model::<u8>(comm, s),
    }
}

const PING_SIZES: [usize; 8] = [8, 64, 512, 4 << 10, 32 << 10, 256 << 10, 1 << 20, 4 << 20];

fn ping_pong(comm: &mut Communicator) -> anyhow::Result<Vec<(f64, f64)>> {
    let rank = comm.rank();
    let mut buf = vec![0u8; PING_SIZES[PING_SIZES.len() - 1]];
    let mut samples = Vec::new();
    for m in PING_SIZES {
        let iters = ((64usize << 20) / m).clamp(20, 2000);
        if rank < 2 {
            let (peer, first) = (1 - rank, rank == 0);
            for _ in 0..iters / 10 + 2 {
                comm.ping_pong(peer, &mut buf[..m], first)?;
            }
            let t0 = Instant::now();
            for _ in 0..iters {
                comm.ping_pong(peer, &mut buf[..m], first)?;
            }
            samples.push((m as f64, t0.elapsed().as_secs_f64() / iters as f64 / 2.0));
        }
    }
    comm.barrier()?;
    Ok(samples)
}

/// Seconds per byte of `dst = op(dst, src)` on buffers too big for the caches, as in a large
/// allreduce.
fn gamma<T: Element>(op: ReduceOp) -> f64 {
    let count = (8 << 20) / std::mem::size_of::<T>();
    let mut a = vec![T::from_u8(1); count];
    let b = vec![T::from_u8(1); count];
    reduce_slice(op, &mut a, &b);
    let reps = 10;
    let t0 = Instant::now();
    for _ in 0..reps {
        reduce_slice(op, &mut a, &b);
    }
    t0.elapsed().as_secs_f64() / (reps * count * std::mem::size_of::<T>()) as f64
}

fn model<T: Element>(comm: &mut Communicator, s: &SweepArgs) -> anyhow::Result<()> {
    let (n, rank) = (comm.size(), comm.rank());
    if n < 2 {
        bail!("model needs at least 2 ranks (it fits α and β from a ping-pong between ranks 0 and 1)");
    }
    let samples = ping_pong(comm)?;
    let (alpha, beta) = if rank == 0 { fit_alpha_beta(&samples).unwrap_or((0.0, 0.0)) } else { (0.0, 0.0) };
    let mut params = [alpha, beta, gamma::<T>(s.op)];
    comm.broadcast(&mut params, 0)?;
    let m = CostModel { alpha: params[0], beta: params[1], gamma: params[2] };
    let print = rank == 0;
    if print {
        println!("# skein-allreduce model: {n} ranks, {} {}", T::DTYPE, s.op);
        println!("# {}", spin_note(comm));
        println!("# data path: {}", comm.data_path());
        println!("# ping-pong rank 0 <-> rank 1 (one-way time):");
        for (b, t) in &samples {
            println!("#   {:>10} B  {:>10.2} us  predicted {:>10.2} us", b, t * 1e6, (m.alpha + m.beta * b) * 1e6);
        }
        println!(
            "# fit: alpha = {:.2} us, beta = {:.4} ns/B ({:.3} GB/s), gamma = {:.4} ns/B ({:.3} GB/s reduce)",
            m.alpha * 1e6,
            m.beta * 1e9,
            if m.beta > 0.0 { 1e-9 / m.beta } else { f64::INFINITY },
            m.gamma * 1e9,
            if m.gamma > 0.0 { 1e-9 / m.gamma } else { f64::INFINITY },
        );
        println!("#");
        println!(
            "# {:>10} {:>20} {:>14} {:>14} {:>9}  notes",
            "size(B)", "algorithm", "predicted(us)", "measured(us)", "meas/pred"
        );
    }
    let elem = std::mem::size_of::<T>();
    let sizes = sizes(s)?;
    let max_count = sizes.last().copied().unwrap_or(0) / elem;
    let mut buf: Vec<T> = alloc_buffer(max_count, "--max-bytes")?;
    for size in sizes {
        let count = size / elem;
        if count == 0 {
            continue;
        }
        let bytes = count * elem;
        let b = &mut buf[..count];
        let iters = s.iters.unwrap_or_else(|| default_iters(bytes));
        let warmup = warmup_for(s, iters);
        let mut rows = Vec::new();
        for &algo in AllreduceAlgorithm::ALL {
            fill_input(b, rank, s.op);
            let t = time_allreduce(comm, b, s.op, Some(algo), iters, warmup)?;
            rows.push((algo, m.allreduce(algo, n, bytes), t));
        }
        if print {
            let best_measured = rows.iter().map(|r| r.2).fold(f64::INFINITY, f64::min);
            let best_predicted = rows.iter().map(|r| r.1).fold(f64::INFINITY, f64::min);
            let auto = algorithms::choose_allreduce(bytes, n);
            for (algo, pred, meas) in rows {
                let mut notes = Vec::new();
                if meas == best_measured {
                    notes.push("fastest");
                }
                if pred == best_predicted {
                    notes.push("model's pick");
                }
                if algo == auto {
                    notes.push("auto");
                }
                println!(
                    "  {:>10} {:>20} {:>14.2} {:>14.2} {:>9.2}  {}",
                    bytes,
                    algo.name(),
                    pred * 1e6,
                    meas * 1e6,
                    if pred > 0.0 { meas / pred } else { f64::NAN },
                    notes.join(", ")
                );
            }
        }
    }
    Ok(())
}
