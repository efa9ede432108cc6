//! Algorithm names, the automatic choice by message size and rank count, and the helpers every
//! algorithm shares (block partitions, power-of-two folding). The algorithms themselves live
//! in one file per collective and only build transfer plans for the engine.

use std::fmt;
use std::str::FromStr;

pub(crate) mod allgather;
pub(crate) mod allreduce;
pub(crate) mod barrier;
pub(crate) mod broadcast;
pub(crate) mod reduce;
pub(crate) mod scatter_gather;

macro_rules! algorithm_enum {
    (
        $(#[$meta:meta])*
        $name:ident { $( $(#[$vmeta:meta])* $variant:ident = ($code:expr, $text:expr) ),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every algorithm of this collective.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The name used in flags, environment variables and output.
            pub fn name(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// The code carried in frame headers.
            pub(crate) fn code(self) -> u8 {
                match self { $($name::$variant => $code),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                let t = s.trim();
                $name::ALL
                    .iter()
                    .copied()
                    .find(|a| a.name().eq_ignore_ascii_case(t))
                    .ok_or_else(|| {
                        let names: Vec<&str> = $name::ALL.iter().map(|a| a.name()).collect();
                        format!("unknown algorithm {t:?}; expected auto or one of {}", names.join(", "))
                    })
            }
        }
    };
}

algorithm_enum! {
    /// Allreduce algorithms.
    AllreduceAlgorithm {
        /// Ring reduce-scatter then ring allgather, streamed: 2(n−1) steps, each rank sends
        /// 2(n−1)/n of the buffer. Bandwidth-optimal; for large messages.
        Ring = (1, "ring"),
        /// Butterfly exchange of the whole buffer: ⌈log2 n⌉ steps. Latency-optimal; for small.
        RecursiveDoubling = (2, "recursive-doubling"),
        /// Recursive-halving reduce-scatter then recursive-doubling allgather: 2·log2 n steps
        /// and ring's bandwidth term. For medium messages.
        Rabenseifner = (3, "rabenseifner"),
    }
}

algorithm_enum! {
    /// Allgather algorithms.
    AllgatherAlgorithm {
        /// n−1 steps around a ring, streamed. For large blocks.
        Ring = (1, "ring"),
        /// log2 n exchanges of doubling size. For small blocks.
        RecursiveDoubling = (2, "recursive-doubling"),
    }
}

algorithm_enum! {
    /// Broadcast algorithms.
    BroadcastAlgorithm {
        /// Binomial tree from the root; inner ranks forward bytes as they arrive.
        Binomial = (1, "binomial"),
        /// A chain from the root through every rank, forwarded chunk by chunk: each rank
        /// sends the buffer once. For large messages.
        Pipeline = (2, "pipeline"),
    }
}

algorithm_enum! {
    /// Reduce algorithms.
    ReduceAlgorithm {
        /// Binomial tree towards the root, children reduced in a fixed order.
        Binomial = (1, "binomial"),
        /// Ring reduce-scatter, then every rank sends its reduced block to the root. For large.
        ReduceScatterGather = (2, "reduce-scatter-gather"),
    }
}

/// Allreduce on more than 2 ranks: below this many bytes the butterfly's ⌈log2 n⌉ latency
/// terms beat the others' bandwidth savings.
pub const ALLREDUCE_SMALL_BYTES: usize = 32 << 10;
/// Allreduce on 2 ranks: every algorithm sends the same bytes, so the butterfly's single
/// round wins until reducing the whole buffer (instead of half) costs more than the ring's
/// second round trip.
pub const ALLREDUCE_SMALL_BYTES_TWO_RANKS: usize = 128 << 10;
/// Allreduce: from this many bytes the ring's streaming (no per-round pipeline drain) wins
/// over Rabenseifner's 2·log2 n rounds.
pub const ALLREDUCE_LARGE_BYTES: usize = 512 << 10;
/// Allgather: total result bytes below which recursive doubling is used.
pub const ALLGATHER_SMALL_BYTES: usize = 64 << 10;
/// Broadcast: bytes from which the pipelined chain replaces the binomial tree.
pub const BROADCAST_LARGE_BYTES: usize = 256 << 10;
/// Reduce: bytes from which reduce-scatter + gather replaces the binomial tree.
pub const REDUCE_LARGE_BYTES: usize = 256 << 10;

/// The automatic allreduce choice for `bytes` on `n` ranks (the same on every rank).
pub fn choose_allreduce(bytes: usize, n: usize) -> AllreduceAlgorithm {
    let small = if n == 2 { ALLREDUCE_SMALL_BYTES_TWO_RANKS } else { ALLREDUCE_SMALL_BYTES };
    if n <= 1 || bytes < small {
        AllreduceAlgorithm::RecursiveDoubling
    } else if bytes < ALLREDUCE_LARGE_BYTES && n > 2 {
        AllreduceAlgorithm::Rabenseifner
    } else {
        AllreduceAlgorithm::Ring
    }
}

/// The automatic allgather choice for a result of `total_bytes` on `n` ranks.
pub fn choose_allgather(total_bytes: usize, n: usize) -> AllgatherAlgorithm {
    if n <= 2 || total_bytes < ALLGATHER_SMALL_BYTES {
        AllgatherAlgorithm::RecursiveDoubling
    } else {
        AllgatherAlgorithm::Ring
    }
}

/// The automatic broadcast choice.
pub fn choose_broadcast(bytes: usize, n: usize) -> BroadcastAlgorithm {
    if n <= 2 || bytes < BROADCAST_LARGE_BYTES { BroadcastAlgorithm::Binomial } else { BroadcastAlgorithm::Pipeline }
}

/// The automatic reduce choice.
pub fn choose_reduce(bytes: usize, n: usize) -> ReduceAlgorithm {
    if n <= 2 || bytes < REDUCE_LARGE_BYTES { ReduceAlgorithm::Binomial } else { ReduceAlgorithm::ReduceScatterGather }
}

/// Splits `count` elements into `parts` contiguous blocks whose sizes differ by at most one
/// (the first `count % parts` blocks get the extra element). Returns element offsets,
/// `parts + 1` long.
pub(crate) fn block_offsets(count: usize, parts: usize) -> Vec<usize> {
    let parts = parts.max(1);
    let base = count / parts;
    let extra = count % parts;
    let mut offs = Vec::with_capacity(parts + 1);
    let mut at = 0;
    offs.push(0);
    for i in 0..parts {
        at += base + usize::from(i < extra);
        offs.push(at);
    }
    offs
}

/// The largest power of two not above `n` (n ≥ 1).
pub(crate) fn pow2_floor(n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    1usize << (usize::BITS - 1 - n.leading_zeros())
}

/// Where a rank stands when `n` ranks are folded onto the largest power of two `p ≤ n`:
/// ranks `p..n` ("extras") hand their data to rank `r − p` and sit out the power-of-two
/// phase, then get the result back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fold {
    /// Takes part in the power-of-two phase as virtual rank `vrank`; `extra` is the rank it
    /// stands in for as well, if any.
    Core {
        /// Virtual rank in 0..p.
        vrank: usize,
        /// The extra rank folded into this one.
        extra: Option<usize>,
    },
    /// An extra rank; `partner` stands in for it.
    Extra {
        /// The core rank that carries this rank's data.
        partner: usize,
    },
}

pub(crate) fn fold(rank: usize, n: usize) -> (usize, Fold) {
    let p = pow2_floor(n);
    if rank >= p {
        (p, Fold::Extra { partner: rank - p })
    } else {
        let extra = (rank + p < n).then_some(rank + p);
        (p, Fold::Core { vrank: rank, extra })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_count_evenly() {
        for count in [0, 1, 7, 1000, (1 << 20) + 3] {
            for parts in 1..=9 {
                let o = block_offsets(count, parts);
                assert_eq!(o.len(), parts + 1);
                assert_eq!(o[parts], count);
                let sizes: Vec<usize> = o.windows(2).map(|w| w[1] - w[0]).collect();
                let (mn, mx) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                assert!(mx - mn <= 1, "count {count} parts {parts}: {sizes:?}");
            }
        }
    }

    #[test]
    fn pow2_and_fold() {
        assert_eq!(pow2_floor(1), 1);
        assert_eq!(pow2_floor(7), 4);
        assert_eq!(pow2_floor(8), 8);
        assert_eq!(pow2_floor(9), 8);
        assert_eq!(fold(1, 6), (4, Fold::Core { vrank: 1, extra: Some(5) }));
        assert_eq!(fold(3, 6), (4, Fold::Core { vrank: 3, extra: None }));
        assert_eq!(fold(5, 6), (4, Fold::Extra { partner: 1 }));
    }

    #[test]
    fn automatic_choice_follows_thresholds() {
        assert_eq!(choose_allreduce(8, 2), AllreduceAlgorithm::RecursiveDoubling);
        assert_eq!(choose_allreduce(100 << 10, 4), AllreduceAlgorithm::Rabenseifner);
        assert_eq!(choose_allreduce(100 << 10, 2), AllreduceAlgorithm::RecursiveDoubling);
        assert_eq!(choose_allreduce(200 << 10, 2), AllreduceAlgorithm::Ring);
        assert_eq!(choose_allreduce(40 << 10, 3), AllreduceAlgorithm::Rabenseifner);
        assert_eq!(choose_allreduce(64 << 20, 8), AllreduceAlgorithm::Ring);
        assert_eq!(choose_allgather(1 << 20, 4), AllgatherAlgorithm::Ring);
        assert_eq!(choose_broadcast(1 << 20, 4), BroadcastAlgorithm::Pipeline);
        assert_eq!(choose_reduce(8, 4), ReduceAlgorithm::Binomial);
        assert_eq!("Ring".parse::<AllreduceAlgorithm>().unwrap(), AllreduceAlgorithm::Ring);
        assert!("fast".parse::<BroadcastAlgorithm>().unwrap_err().contains("binomial"));
    }
}
