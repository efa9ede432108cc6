//! `skein-allreduce`: runs Skein's collectives across the ranks of a job and prints what the
//! network does — an nccl-tests-style allreduce sweep (`bench`), the α–β model beside the
//! measurement (`model`), and a correctness suite (`check`).

#![forbid(unsafe_code)]

mod bench;
mod model;

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use skein_collectives::check::{SuiteOptions, run_suite};
use skein_collectives::config::parse_size;
use skein_collectives::{AllreduceAlgorithm, Communicator, Config, DType, Element, ReduceOp};

/// Skein collectives over TCP: benchmark, α–β model and self-check.
///
/// Every rank of the job runs this binary with the same arguments. Ranks find each other
/// through rank 0: set SKEIN_RANK, SKEIN_WORLD_SIZE and SKEIN_RENDEZVOUS=host:port (rank 0
/// listens there), or, in a StatefulSet, SKEIN_SERVICE and SKEIN_WORLD_SIZE (the rank is the
/// pod's ordinal). Or pass --local-ranks N to run N ranks as threads of this process over
/// 127.0.0.1. Only rank 0 prints results; errors name the rank that saw them.
#[derive(Debug, Parser)]
#[command(name = "skein-allreduce", version)]
struct Cli {
    /// Run N ranks as threads of this one process over 127.0.0.1 instead of bootstrapping
    /// from the SKEIN_* environment (handy on one host; ranks share this process's cores).
    #[arg(long, global = true, value_name = "N")]
    local_ranks: Option<usize>,

    /// Log filter for diagnostics on stderr (tracing syntax, e.g. `debug` or
    /// `skein_collectives=debug`); RUST_LOG is used when this is absent.
    #[arg(long, global = true, value_name = "FILTER")]
    log: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Allreduce sweep, nccl-tests style: for each size, the element count, type, reduction,
    /// algorithm, time per call (µs, slowest rank), algbw = size/time and
    /// busbw = algbw × 2(n−1)/n (GB/s), and #wrong, the elements of an in-place run that
    /// differ from the reference (summed over ranks).
    Bench(BenchArgs),
    /// Fits latency α and bandwidth β from a rank 0 ↔ rank 1 ping-pong and reduction cost γ
    /// from a local loop, then prints each allreduce algorithm's α–β–γ prediction beside its
    /// measured time for a range of sizes.
    Model(ModelArgs),
    /// Runs every collective × algorithm on each length (and every type × reduction for
    /// reduce and allreduce) and compares each rank's result with a sequential reference.
    /// Exits with status 1 if any result is wrong.
    Check(CheckArgs),
}

/// Sweep options shared by `bench` and `model`.
#[derive(Debug, Args, Clone)]
struct SweepArgs {
    /// Smallest message in bytes (K, M, G suffixes are powers of 1024).
    #[arg(short = 'b', long, default_value = "8", value_parser = byte_size)]
    min_bytes: usize,
    /// Largest message in bytes.
    #[arg(short = 'e', long, default_value = "256M", value_parser = byte_size)]
    max_bytes: usize,
    /// Multiply the size by this from one row to the next.
    #[arg(short = 'f', long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(2..=1024))]
    step_factor: u64,
    /// Element type: f32, f64, i32, i64 or u8.
    #[arg(short = 't', long, default_value = "f32")]
    dtype: DType,
    /// Reduction: sum, prod, min or max.
    #[arg(short = 'o', long, default_value = "sum")]
    op: ReduceOp,
    /// Timed iterations per size (default: 512 MiB / size, clamped to 5..=1000).
    #[arg(short = 'n', long)]
    iters: Option<usize>,
    /// Untimed warm-up iterations per size (default: a quarter of the iterations, 2..=100).
    #[arg(short = 'w', long)]
    warmup: Option<usize>,
}

#[derive(Debug, Args)]
struct BenchArgs {
    #[command(flatten)]
    sweep: SweepArgs,
    /// Allreduce algorithm: auto (by size and rank count; SKEIN_ALLREDUCE_ALGORITHM also
    /// applies), ring, recursive-doubling or rabenseifner.
    #[arg(short = 'a', long, default_value = "auto", value_parser = algorithm)]
    algorithm: AlgorithmChoice,
    /// Skip the per-size correctness run.
    #[arg(long)]
    no_check: bool,
}

#[derive(Debug, Args)]
struct ModelArgs {
    #[command(flatten)]
    sweep: SweepArgs,
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// Element counts to run every collective with (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "0,1,7,1000,1048579")]
    lengths: Vec<usize>,
    /// Element count of the every-type × every-reduction sweep (0 skips it).
    #[arg(long, default_value_t = 1000)]
    sweep_length: usize,
    /// Run the whole suite this many times.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Print every case, not only failures.
    #[arg(short, long)]
    verbose: bool,
}

fn byte_size(s: &str) -> Result<usize, String> {
    let n = parse_size(s)?;
    usize::try_from(n).map_err(|_| "too large for this machine".to_string())
}

/// `auto` (None) or a forced allreduce algorithm.
#[derive(Debug, Clone, Copy)]
struct AlgorithmChoice(Option<AllreduceAlgorithm>);

fn algorithm(s: &str) -> Result<AlgorithmChoice, String> {
    if s.trim().eq_ignore_ascii_case("auto") {
        Ok(AlgorithmChoice(None))
    } else {
        s.parse().map(|a| AlgorithmChoice(Some(a)))
    }
}

fn env_help() -> String {
    let mut s = String::from("Environment (every rank):\n");
    for (k, v) in skein_collectives::bootstrap::ENV_VARS.iter().chain(skein_collectives::config::ENV_VARS) {
        s.push_str(&format!("  {k:<26} {v}\n"));
    }
    s.push_str("\nExamples:\n");
    s.push_str("  skein-allreduce --local-ranks 2 bench -e 64M\n");
    s.push_str("  SKEIN_RANK=0 SKEIN_WORLD_SIZE=2 SKEIN_RENDEZVOUS=10.0.0.1:29600 skein-allreduce bench\n");
    s
}

fn main() -> ExitCode {
    let matches = Cli::command().after_long_help(env_help()).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let filter = match &cli.log {
        Some(f) => tracing_subscriber::EnvFilter::new(f),
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
    };
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("skein-allreduce: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    let config = Config::from_env().context("reading SKEIN_* settings")?;
    match cli.local_ranks {
        Some(0) => bail!("--local-ranks must be at least 1"),
        Some(n) => {
            let comms = Communicator::local_group(n, config).context("starting local ranks")?;
            let results: Vec<anyhow::Result<ExitCode>> = std::thread::scope(|s| {
                let handles: Vec<_> =
                    comms.into_iter().map(|mut c| s.spawn(move || run_rank(&mut c, &cli.command))).collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a rank thread panicked"))))
                    .collect()
            });
            let mut code = ExitCode::SUCCESS;
            for r in results {
                if r? != ExitCode::SUCCESS {
                    code = ExitCode::FAILURE;
                }
            }
            Ok(code)
        }
        None => {
            let mut comm = Communicator::from_env().context("bootstrapping from SKEIN_* environment")?;
            run_rank(&mut comm, &cli.command)
        }
    }
}

fn run_rank(comm: &mut Communicator, command: &Command) -> anyhow::Result<ExitCode> {
    let rank = comm.rank();
    let r = match command {
        Command::Bench(a) => bench::run(comm, &a.sweep, a.algorithm.0, !a.no_check).map(|_| ExitCode::SUCCESS),
        Command::Model(a) => model::run(comm, &a.sweep).map(|_| ExitCode::SUCCESS),
        Command::Check(a) => check(comm, a),
    };
    r.with_context(|| format!("rank {rank}"))
}

fn check(comm: &mut Communicator, a: &CheckArgs) -> anyhow::Result<ExitCode> {
    let opts = SuiteOptions { lengths: a.lengths.clone(), sweep_length: a.sweep_length };
    let (rank, n) = (comm.rank(), comm.size());
    // The largest buffer the suite allocates is an allgather result of n × len f32s (the type
    // sweep uses at most 8-byte elements on one rank's share).
    for &len in a.lengths.iter().chain([&a.sweep_length]) {
        let bytes = len.checked_mul(n).and_then(|x| x.checked_mul(8));
        if bytes.is_none_or(|b| b > MAX_CHECK_BYTES) {
            bail!("--lengths/--sweep-length: {len} elements on {n} ranks needs buffers beyond {MAX_CHECK_BYTES} bytes");
        }
    }
    let mut failed = 0;
    let mut cases = 0;
    for round in 0..a.repeat {
        let t0 = std::time::Instant::now();
        let rep = run_suite(comm, &opts, |name, ok| {
            if a.verbose && rank == 0 {
                println!("{} {name}", if ok { "ok  " } else { "FAIL" });
            }
        })?;
        for f in &rep.local_failures {
            eprintln!("rank {rank}: FAIL {f}");
        }
        failed += rep.global_failures;
        cases += rep.cases;
        if rank == 0 && a.repeat > 1 {
            println!("# round {round}: {} cases in {:.2?}", rep.cases, t0.elapsed());
        }
    }
    if rank == 0 {
        println!("# data path: {}", comm.data_path());
        println!("check: {cases} cases on {n} ranks, {failed} wrong results (counted per rank)");
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Largest buffer `check` agrees to allocate.
const MAX_CHECK_BYTES: usize = 4 << 30;

/// The default iteration count for a message of `bytes`.
fn default_iters(bytes: usize) -> usize {
    ((512usize << 20) / bytes.max(1)).clamp(5, 1000)
}

/// Sizes from `min` to `max`, multiplying by `factor`.
fn sizes(s: &SweepArgs) -> anyhow::Result<Vec<usize>> {
    if s.min_bytes == 0 || s.min_bytes > s.max_bytes {
        bail!("--min-bytes ({}) must be at least 1 and not above --max-bytes ({})", s.min_bytes, s.max_bytes);
    }
    let mut v = Vec::new();
    let mut b = s.min_bytes;
    while b <= s.max_bytes {
        v.push(b);
        b = match b.checked_mul(s.step_factor as usize) {
            Some(x) => x,
            None => break,
        };
    }
    Ok(v)
}

/// A zeroed buffer of `count` elements, or an error naming the flag if memory cannot be had
/// (rather than the allocator aborting the process).
fn alloc_buffer<T: Element>(count: usize, flag: &str) -> anyhow::Result<Vec<T>> {
    let mut v: Vec<T> = Vec::new();
    v.try_reserve_exact(count).map_err(|_| {
        anyhow::anyhow!("{flag}: cannot allocate {} bytes for the buffer", count.saturating_mul(size_of::<T>()))
    })?;
    v.resize(count, T::from_u8(0));
    Ok(v)
}

fn warmup_for(s: &SweepArgs, iters: usize) -> usize {
    s.warmup.unwrap_or((iters / 4).clamp(2, 100))
}

fn spin_note(comm: &Communicator) -> String {
    let c = comm.config();
    format!(
        "timeout {:?}, spin {:?}, chunk {} KiB, socket buffer {}",
        c.timeout,
        c.spin,
        c.chunk_bytes >> 10,
        c.socket_buffer.map_or("autotuned".to_string(), |b| format!("{} KiB", b >> 10))
    )
}
