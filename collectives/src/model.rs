//! The α–β(–γ) cost model: fitting latency α and inverse bandwidth β from ping-pong samples,
//! and each allreduce algorithm's textbook prediction, which `skein-allreduce model` prints
//! beside the measured time.

use crate::algorithms::{AllreduceAlgorithm, pow2_floor};

/// Link and compute costs, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CostModel {
    /// Per-message latency α (seconds).
    pub alpha: f64,
    /// Per-byte transfer time β (seconds per byte).
    pub beta: f64,
    /// Per-byte reduction time γ (seconds per byte).
    pub gamma: f64,
}

/// Least-squares fit of `t = α + β·m` to `(m bytes, t seconds)` samples. `None` with fewer
/// than two distinct sizes. α and β are clamped at zero (noise can tilt a fit negative).
pub fn fit_alpha_beta(samples: &[(f64, f64)]) -> Option<(f64, f64)> {
    let n = samples.len() as f64;
    if samples.len() < 2 {
        return None;
    }
    let mx = samples.iter().map(|s| s.0).sum::<f64>() / n;
    let my = samples.iter().map(|s| s.1).sum::<f64>() / n;
    let sxx: f64 = samples.iter().map(|s| (s.0 - mx).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let sxy: f64 = samples.iter().map(|s| (s.0 - mx) * (s.1 - my)).sum();
    let beta = (sxy / sxx).max(0.0);
    let alpha = (my - beta * mx).max(0.0);
    Some((alpha, beta))
}

impl CostModel {
    /// Predicted time (seconds) of an allreduce of `bytes` on `n` ranks.
    pub fn allreduce(&self, algo: AllreduceAlgorithm, n: usize, bytes: usize) -> f64 {
        if n <= 1 {
            return 0.0;
        }
        let m = bytes as f64;
        let p = pow2_floor(n);
        let log_p = p.trailing_zeros() as f64;
        // Folding the ranks beyond p costs one full-buffer message in, one out, one reduction.
        let fold = if n == p { 0.0 } else { 2.0 * (self.alpha + m * self.beta) + m * self.gamma };
        match algo {
            AllreduceAlgorithm::Ring => {
                let nf = n as f64;
                let share = (nf - 1.0) / nf;
                2.0 * (nf - 1.0) * self.alpha + 2.0 * share * m * self.beta + share * m * self.gamma
            }
            AllreduceAlgorithm::RecursiveDoubling => log_p * (self.alpha + m * self.beta + m * self.gamma) + fold,
            AllreduceAlgorithm::Rabenseifner => {
                let pf = p as f64;
                let share = (pf - 1.0) / pf;
                2.0 * log_p * self.alpha + 2.0 * share * m * self.beta + share * m * self.gamma + fold
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_recovers_a_line() {
        let s: Vec<(f64, f64)> = [8.0, 1e3, 1e5, 1e6].iter().map(|m| (*m, 20e-6 + m * 1e-9)).collect();
        let (a, b) = fit_alpha_beta(&s).unwrap();
        assert!((a - 20e-6).abs() < 1e-9, "{a}");
        assert!((b - 1e-9).abs() < 1e-15, "{b}");
        assert!(fit_alpha_beta(&[(1.0, 1.0)]).is_none());
        assert!(fit_alpha_beta(&[(1.0, 1.0), (1.0, 2.0)]).is_none());
    }

    #[test]
    fn predictions_order_algorithms_as_theory_says() {
        let m = CostModel { alpha: 10e-6, beta: 1e-9, gamma: 0.2e-9 };
        let rd = AllreduceAlgorithm::RecursiveDoubling;
        let ring = AllreduceAlgorithm::Ring;
        let rab = AllreduceAlgorithm::Rabenseifner;
        // Small messages on 8 ranks: latency terms decide.
        assert!(m.allreduce(rd, 8, 8) < m.allreduce(rab, 8, 8));
        assert!(m.allreduce(rab, 8, 8) < m.allreduce(ring, 8, 8));
        // Large messages: bandwidth terms decide.
        assert!(m.allreduce(ring, 8, 64 << 20) < m.allreduce(rd, 8, 64 << 20));
        assert!(m.allreduce(rab, 8, 64 << 20) < m.allreduce(rd, 8, 64 << 20));
        // Two ranks: ring and Rabenseifner send the same bytes.
        let two = m.allreduce(ring, 2, 1 << 20) - m.allreduce(rab, 2, 1 << 20);
        assert!(two.abs() < 1e-12);
        assert_eq!(m.allreduce(ring, 1, 100), 0.0);
    }
}
