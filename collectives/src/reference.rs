//! Sequential reference results for every collective, and the input pattern whose reductions
//! are exact in every type (small integers), so a result can be compared bit for bit no
//! matter in which order an algorithm combined the ranks' data. The pattern is periodic in the
//! element index, which keeps checking a 1 Mi-element result cheap even in debug builds.

use crate::datatype::{Element, ReduceOp};

/// Period (in elements) of [`pattern`] for `op`.
pub fn period(op: ReduceOp) -> usize {
    match op {
        ReduceOp::Sum => 13,
        ReduceOp::Prod => 3,
        ReduceOp::Min | ReduceOp::Max => 251,
    }
}

/// Element `i` of `rank`'s input in tests and in `skein-allreduce check`/`bench`.
/// Sums of up to 19 ranks stay below 2^8 and products of up to 15 below 2^24, so float results
/// are exact whatever the order of combination.
pub fn pattern<T: Element>(rank: usize, i: usize, op: ReduceOp) -> T {
    let i = i % period(op);
    let rank = rank % 251;
    let v = match op {
        ReduceOp::Sum => (rank * 31 + i * 7) % 13,
        ReduceOp::Prod => (rank + i) % 3 + 1,
        ReduceOp::Min | ReduceOp::Max => (rank * 131 + i * 17 + 3) % 251,
    };
    T::from_u8(v as u8)
}

/// One period of `f(j)` repeated (and cut) to `len` elements, starting at phase `offset`.
fn tile<T: Element>(len: usize, p: usize, offset: usize, f: impl Fn(usize) -> T) -> Vec<T> {
    let one: Vec<T> = (0..p).map(|j| f((offset + j) % p)).collect();
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let take = (len - out.len()).min(p);
        out.extend_from_slice(&one[..take]);
    }
    out
}

/// A rank's input of `len` elements, from element index `offset` on.
pub fn input_at<T: Element>(rank: usize, offset: usize, len: usize, op: ReduceOp) -> Vec<T> {
    tile(len, period(op), offset % period(op), |j| pattern(rank, j, op))
}

/// A rank's whole input of `len` elements.
pub fn input<T: Element>(rank: usize, len: usize, op: ReduceOp) -> Vec<T> {
    input_at(rank, 0, len, op)
}

/// Overwrites `buf` with `rank`'s input (no allocation, for the benchmark's large buffers).
pub fn fill_input<T: Element>(buf: &mut [T], rank: usize, op: ReduceOp) {
    let one: Vec<T> = (0..period(op)).map(|j| pattern(rank, j, op)).collect();
    for chunk in buf.chunks_mut(one.len()) {
        chunk.copy_from_slice(&one[..chunk.len()]);
    }
}

/// How many elements of `buf` differ (bitwise) from `period_values` repeated.
pub fn count_mismatches_periodic<T: Element>(buf: &[T], period_values: &[T]) -> usize {
    let p = period_values.len();
    if p == 0 {
        return buf.len();
    }
    let want: &[u8] = bytemuck::cast_slice(period_values);
    buf.chunks(p)
        .map(|chunk| {
            let got: &[u8] = bytemuck::cast_slice(chunk);
            if got == &want[..got.len()] {
                0
            } else {
                chunk
                    .iter()
                    .zip(period_values)
                    .filter(|(a, b)| bytemuck::bytes_of(*a) != bytemuck::bytes_of(*b))
                    .count()
            }
        })
        .sum()
}

/// The allreduce (and the root's reduce) result of `n` ranks' [`input`]s, combined in rank
/// order, as one period to compare against with [`matches_periodic`].
pub fn reduced_period<T: Element>(n: usize, op: ReduceOp) -> Vec<T> {
    (0..period(op))
        .map(|j| (1..n).fold(pattern::<T>(0, j, op), |acc, r| T::combine(op, acc, pattern(r, j, op))))
        .collect()
}

/// Where `buf` first differs from `period_values` repeated from phase `offset`:
/// `None` if it matches everywhere. Compares bytes (so bit patterns, not float equality).
pub fn first_mismatch_periodic<T: Element>(buf: &[T], period_values: &[T], offset: usize) -> Option<(usize, T, T)> {
    let p = period_values.len();
    if p == 0 {
        return buf.first().map(|x| (0, *x, *x));
    }
    let rotated: Vec<T> = (0..p).map(|j| period_values[(offset + j) % p]).collect();
    let want: &[u8] = bytemuck::cast_slice(&rotated);
    for (c, chunk) in buf.chunks(p).enumerate() {
        let got: &[u8] = bytemuck::cast_slice(chunk);
        if got != &want[..got.len()] {
            let k = chunk
                .iter()
                .zip(&rotated)
                .position(|(a, b)| bytemuck::bytes_of(a) != bytemuck::bytes_of(b))
                .unwrap_or(0);
            return Some((c * p + k, chunk[k], rotated[k]));
        }
    }
    None
}

/// Allreduce (and the root's reduce result) of arbitrary inputs, in rank order.
pub fn allreduce<T: Element>(inputs: &[Vec<T>], op: ReduceOp) -> Vec<T> {
    let mut out = inputs.first().cloned().unwrap_or_default();
    for x in inputs.iter().skip(1) {
        for (o, v) in out.iter_mut().zip(x) {
            *o = T::combine(op, *o, *v);
        }
    }
    out
}

/// Allgather (and the root's gather result): the inputs concatenated in rank order.
pub fn allgather<T: Element>(inputs: &[Vec<T>]) -> Vec<T> {
    inputs.concat()
}

/// Rank `rank`'s scatter result from the root's buffer.
pub fn scatter<T: Element>(root_send: &[T], n: usize, rank: usize) -> Vec<T> {
    let b = root_send.len() / n.max(1);
    root_send[rank * b..(rank + 1) * b].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_results() {
        let inputs = vec![vec![1i32, 2, 3], vec![10, 20, 30], vec![5, 5, 5]];
        assert_eq!(allreduce(&inputs, ReduceOp::Sum), [16, 27, 38]);
        assert_eq!(allreduce(&inputs, ReduceOp::Max), [10, 20, 30]);
        assert_eq!(allgather(&inputs).len(), 9);
        assert_eq!(scatter(&[1u8, 2, 3, 4, 5, 6], 3, 1), [3, 4]);
    }

    #[test]
    fn periodic_tables_agree_with_the_plain_reference() {
        for op in ReduceOp::ALL {
            for n in [1, 2, 5, 9] {
                let len = 1000;
                let inputs: Vec<Vec<f32>> = (0..n).map(|r| input(r, len, op)).collect();
                let plain = allreduce(&inputs, op);
                let table = reduced_period::<f32>(n, op);
                assert_eq!(first_mismatch_periodic(&plain, &table, 0), None);
                let mut bad = plain.clone();
                bad[777] += 1.0;
                assert_eq!(first_mismatch_periodic(&bad, &table, 0).map(|m| m.0), Some(777));
            }
        }
        let mut filled = vec![0f64; 1000];
        fill_input(&mut filled, 4, ReduceOp::Max);
        assert_eq!(filled, input::<f64>(4, 1000, ReduceOp::Max));
        let table = input::<f64>(4, period(ReduceOp::Max), ReduceOp::Max);
        assert_eq!(count_mismatches_periodic(&filled, &table), 0);
        filled[3] = -1.0;
        filled[999] = -1.0;
        assert_eq!(count_mismatches_periodic(&filled, &table), 2);
        let tail: Vec<i64> = input_at(3, 40, 20, ReduceOp::Sum);
        let whole: Vec<i64> = input(3, 60, ReduceOp::Sum);
        assert_eq!(tail, whole[40..]);
    }

    #[test]
    fn pattern_stays_exact_for_floats() {
        let inputs: Vec<Vec<f32>> = (0..9).map(|r| input(r, 50, ReduceOp::Prod)).collect();
        let got = allreduce(&inputs, ReduceOp::Prod);
        for (i, g) in got.iter().enumerate() {
            let exact: u64 = (0..9).map(|r| ((r + i) % 3 + 1) as u64).product();
            assert_eq!(*g as u64, exact);
        }
    }
}
