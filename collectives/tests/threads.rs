//! Collectives with ranks as threads of the test process over 127.0.0.1: the full
//! correctness matrix for 1–9 ranks, reproducibility, argument and protocol mismatches,
//! bootstrap errors, and failure behaviour (aborted, silent and vanished ranks).

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use skein_collectives::check::{SuiteOptions, run_suite};
use skein_collectives::{
    AllgatherAlgorithm, AllreduceAlgorithm, BroadcastAlgorithm, Communicator, Config, ConnectMode, Error,
    ReduceAlgorithm, ReduceOp, Rendezvous,
};

/// Ranks outnumber cores here, so nobody spins; failures surface within seconds.
fn config() -> Config {
    Config {
        spin: Duration::ZERO,
        timeout: Duration::from_secs(20),
        bootstrap_timeout: Duration::from_secs(20),
        ..Config::default()
    }
}

/// Runs `f(comm)` on every rank of a fresh `n`-rank group, one thread each; results in rank
/// order.
fn on_ranks<R: Send>(n: usize, cfg: Config, f: impl Fn(&mut Communicator) -> R + Sync) -> Vec<R> {
    let comms = Communicator::local_group(n, cfg).expect("bootstrap");
    std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|mut c| {
                let f = &f;
                s.spawn(move || f(&mut c))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("rank thread panicked")).collect()
    })
}

/// Cases per suite run: a barrier; per length 2 broadcast + scatter + gather + 2 allgather +
/// 2 reduce + 3 allreduce; and 5 types × 4 ops × (3 allreduce + 2 reduce) at the sweep length.
fn expected_cases(opts: &SuiteOptions) -> usize {
    let per_length = BroadcastAlgorithm::ALL.len()
        + 2
        + AllgatherAlgorithm::ALL.len()
        + ReduceAlgorithm::ALL.len()
        + AllreduceAlgorithm::ALL.len();
    1 + opts.lengths.len() * per_length + 5 * 4 * (AllreduceAlgorithm::ALL.len() + ReduceAlgorithm::ALL.len())
}

fn full_matrix(n: usize) {
    let opts = SuiteOptions::default();
    assert_eq!(opts.lengths, [0, 1, 7, 1000, (1 << 20) + 3]);
    let reports = on_ranks(n, config(), |c| run_suite(c, &opts, |_, _| {}).expect("suite"));
    let failures: Vec<String> = reports
        .iter()
        .enumerate()
        .flat_map(|(r, rep)| rep.local_failures.iter().map(move |f| format!("rank {r}: {f}")))
        .collect();
    assert!(failures.is_empty(), "{n} ranks:\n{}", failures.join("\n"));
    for rep in &reports {
        assert_eq!(rep.cases, expected_cases(&opts));
        assert_eq!(rep.global_failures, 0);
    }
}

#[test]
fn matrix_1_rank() {
    full_matrix(1);
}
#[test]
fn matrix_2_ranks() {
    full_matrix(2);
}
#[test]
fn matrix_3_ranks() {
    full_matrix(3);
}
#[test]
fn matrix_4_ranks() {
    full_matrix(4);
}
#[test]
fn matrix_5_ranks() {
    full_matrix(5);
}
#[test]
fn matrix_6_ranks() {
    full_matrix(6);
}
#[test]
fn matrix_7_ranks() {
    full_matrix(7);
}
#[test]
fn matrix_8_ranks() {
    full_matrix(8);
}
#[test]
fn matrix_9_ranks() {
    full_matrix(9);
}

/// Non-integer data: results differ from a sequential sum in the last bits, but every rank
/// must hold the very same bits, run after run.
#[test]
fn float_results_are_bitwise_identical_on_every_rank_and_reproducible() {
    for n in [3, 6] {
        let runs = on_ranks(n, config(), |c| {
            let mut out = Vec::new();
            for &algo in AllreduceAlgorithm::ALL {
                for _ in 0..2 {
                    let mut x: Vec<f32> =
                        (0..10_007).map(|i| ((i * 7919 + c.rank() * 104_729) % 1000) as f32 * 0.001_37 + 0.1).collect();
                    c.allreduce_with(&mut x, ReduceOp::Sum, Some(algo)).unwrap();
                    out.push(x.iter().map(|v| v.to_bits()).collect::<Vec<u32>>());
                }
            }
            out
        });
        for (r, run) in runs.iter().enumerate() {
            assert_eq!(run, &runs[0], "rank {r} of {n} differs from rank 0");
            for pair in run.chunks(2) {
                assert_eq!(pair[0], pair[1], "a repeated call gave different bits");
            }
        }
    }
}

#[test]
fn barrier_releases_nobody_before_everyone_arrived() {
    let arrived = Arc::new(AtomicUsize::new(0));
    let n = 5;
    let seen = on_ranks(n, config(), |c| {
        std::thread::sleep(Duration::from_millis(30 * c.rank() as u64));
        arrived.fetch_add(1, Ordering::SeqCst);
        c.barrier().unwrap();
        arrived.load(Ordering::SeqCst)
    });
    assert!(seen.iter().all(|s| *s == n), "{seen:?}");
}

#[test]
fn ping_pong_returns_the_peers_echo() {
    let out = on_ranks(2, config(), |c| {
        let mut buf: Vec<u8> = (0..100_000).map(|i| (i % 251) as u8).collect();
        let first = c.rank() == 0;
        c.ping_pong(1 - c.rank(), &mut buf, first).unwrap();
        // The counter did not move: collectives still line up afterwards.
        let mut x = [c.rank() as i32 + 1];
        c.allreduce(&mut x, ReduceOp::Sum).unwrap();
        (buf, x[0])
    });
    let want: Vec<u8> = (0..100_000).map(|i| (i % 251) as u8).collect();
    assert_eq!(out[0].0, want);
    assert_eq!(out[0].1, 3);
}

#[test]
fn eager_mode_opens_a_full_mesh_and_works() {
    let cfg = Config { connect: ConnectMode::Eager, ..config() };
    let sums = on_ranks(4, cfg, |c| {
        let mut x = vec![c.rank() as i64; 100];
        c.allreduce_with(&mut x, ReduceOp::Sum, Some(AllreduceAlgorithm::Rabenseifner)).unwrap();
        x[99]
    });
    assert_eq!(sums, [6, 6, 6, 6]);
}

#[test]
fn mismatched_lengths_are_reported_on_both_sides_and_poison() {
    let errs = on_ranks(2, config(), |c| {
        let mut x = vec![1.0f32; 10 + c.rank()];
        let first = c.allreduce_with(&mut x, ReduceOp::Sum, Some(AllreduceAlgorithm::RecursiveDoubling)).unwrap_err();
        let again = c.barrier().unwrap_err();
        (first, again)
    });
    for (r, (first, again)) in errs.iter().enumerate() {
        match first {
            Error::Mismatch { expected, got, .. } => {
                assert!(expected.contains("payload bytes") && got.contains("payload bytes"), "{first}");
                assert_ne!(expected, got);
            }
            // The side that failed second sees the first close its connections.
            Error::PeerClosed { .. } => {}
            other => panic!("rank {r}: unexpected {other}"),
        }
        assert!(matches!(again, Error::Poisoned(_)), "rank {r}: {again}");
    }
    assert!(errs.iter().any(|(e, _)| matches!(e, Error::Mismatch { .. })));
}

#[test]
fn mismatched_algorithm_overrides_are_named() {
    let errs = on_ranks(2, config(), |c| {
        let algo = if c.rank() == 0 { AllreduceAlgorithm::Ring } else { AllreduceAlgorithm::Rabenseifner };
        let mut x = vec![1i32; 64];
        c.allreduce_with(&mut x, ReduceOp::Sum, Some(algo)).unwrap_err().to_string()
    });
    assert!(errs.iter().any(|e| e.contains("out of step") && e.contains("algorithm")), "{errs:?}");
}

#[test]
fn bad_arguments_fail_locally_without_communicating() {
    // Arguments every rank gets wrong: nobody sends, so the group still works afterwards.
    let out = on_ranks(2, config(), |c| {
        let d = c.allgather(&[1.0f64; 4], &mut [0.0; 7]);
        let e = c.broadcast(&mut [0f64; 4], 2);
        let f = c.reduce(&mut [0i32; 4], ReduceOp::Sum, 5);
        let mut x = [1u8];
        c.allreduce(&mut x, ReduceOp::Sum).unwrap();
        (d.is_err(), e.is_err(), f.is_err(), x[0])
    });
    assert_eq!(out, [(true, true, true, 2), (true, true, true, 2)]);
    // Buffer sizes that matter only at the root (scatter's send, gather's receive).
    let out = on_ranks(1, config(), |c| {
        let a = c.scatter(&[1.0f32; 7], &mut [0.0; 4], 0).unwrap_err();
        let b = c.gather(&[1.0f32; 4], &mut [0.0; 7], 0).unwrap_err();
        (a.to_string(), b.to_string())
    });
    assert!(out[0].0.contains("scatter root's send buffer has 7 elements, expected 4"), "{}", out[0].0);
    assert!(out[0].1.contains("gather root's receive buffer has 7 elements, expected 4"), "{}", out[0].1);
}

/// A rank aborted from another thread while every rank is inside a stream of collectives:
/// every rank's call must fail, and quickly — long before the 20 s timeout.
#[test]
fn aborted_rank_mid_collective_fails_every_rank_within_the_timeout() {
    let n = 4;
    let cfg = config();
    let timeout = cfg.timeout;
    let comms = Communicator::local_group(n, cfg).unwrap();
    let victim = comms[2].abort_handle();
    let started = Arc::new(AtomicUsize::new(0));
    let results: Vec<(Error, Duration)> = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|mut c| {
                let started = started.clone();
                s.spawn(move || {
                    let mut x = vec![1.0f32; 1 << 20];
                    started.fetch_add(1, Ordering::SeqCst);
                    loop {
                        if let Err(e) = c.allreduce_with(&mut x, ReduceOp::Sum, Some(AllreduceAlgorithm::Ring)) {
                            return (e, Instant::now());
                        }
                    }
                })
            })
            .collect();
        while started.load(Ordering::SeqCst) < n {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(200));
        let t0 = Instant::now();
        victim.abort();
        handles
            .into_iter()
            .map(|h| {
                let (e, at) = h.join().unwrap();
                (e, at.saturating_duration_since(t0))
            })
            .collect()
    });
    for (r, (e, after)) in results.iter().enumerate() {
        assert!(*after < timeout, "rank {r} took {after:?} to fail: {e}");
        if r == 2 {
            assert!(matches!(e, Error::Aborted | Error::PeerClosed { .. } | Error::Io { .. }), "{e}");
        } else {
            assert!(matches!(e, Error::PeerClosed { .. } | Error::Io { .. }), "rank {r}: {e}");
        }
    }
}

/// A rank that stays alive but never joins the collective: the others time out (the first
/// to notice shuts its connections, which fails the rest at once).
#[test]
fn silent_rank_makes_every_other_rank_time_out() {
    let cfg = Config { timeout: Duration::from_millis(700), ..config() };
    let out = on_ranks(3, cfg, |c| {
        if c.rank() == 1 {
            std::thread::sleep(Duration::from_secs(3));
            return None;
        }
        let t0 = Instant::now();
        let mut x = vec![1i64; 1000];
        let e = c.allreduce(&mut x, ReduceOp::Max).unwrap_err();
        Some((e, t0.elapsed()))
    });
    for (r, o) in out.iter().enumerate() {
        let Some((e, took)) = o else { continue };
        assert!(matches!(e, Error::Timeout { .. } | Error::PeerClosed { .. }), "rank {r}: {e}");
        assert!(*took < Duration::from_millis(2500), "rank {r} took {took:?}");
    }
    assert!(
        out.iter()
            .flatten()
            .any(|(e, _)| { matches!(e, Error::Timeout { peer: 1, .. }) && e.to_string().contains("peer rank 1") })
    );
}

/// A rank whose communicator is dropped (its thread ended or panicked): peers see the
/// connection close at once instead of waiting for the timeout.
#[test]
fn vanished_rank_is_reported_as_closed_not_timed_out() {
    let cfg = Config { timeout: Duration::from_secs(60), ..config() };
    let out = on_ranks(3, cfg, |c| {
        // Everyone talks once so the ring connections exist, then rank 0 leaves.
        let mut x = vec![1u8; 3];
        c.allreduce_with(&mut x, ReduceOp::Sum, Some(AllreduceAlgorithm::Ring)).unwrap();
        if c.rank() == 0 {
            return None;
        }
        let t0 = Instant::now();
        let e = c.allreduce_with(&mut x, ReduceOp::Sum, Some(AllreduceAlgorithm::Ring)).unwrap_err();
        Some((e, t0.elapsed()))
    });
    // Rank 0's thread ended and dropped its communicator; nothing waited for the 60 s timeout.
    for (e, took) in out.iter().flatten() {
        assert!(matches!(e, Error::PeerClosed { .. }), "{e}");
        assert!(*took < Duration::from_secs(10), "{took:?}");
    }
}

#[test]
fn rendezvous_rejects_a_duplicate_rank_and_a_wrong_world_size() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let cfg = Config { bootstrap_timeout: Duration::from_secs(10), ..config() };
    std::thread::scope(|s| {
        let host = s.spawn(|| Communicator::host(listener, 3, cfg.clone()));
        let one = s.spawn(|| Communicator::join(1, 3, &addr, cfg.clone()));
        // Give rank 1 time to register before the impostors arrive.
        std::thread::sleep(Duration::from_millis(300));
        let dup = Communicator::join(1, 3, &addr, cfg.clone()).unwrap_err();
        assert!(matches!(&dup, Error::Rejected(r) if r.contains("rank 1 already registered")), "{dup}");
        let wrong = Communicator::join(2, 4, &addr, cfg.clone()).unwrap_err();
        assert!(matches!(&wrong, Error::Rejected(r) if r.contains("SKEIN_WORLD_SIZE=4")), "{wrong}");
        // A stray client that sends garbage is ignored too.
        let mut stray = TcpStream::connect(&addr).unwrap();
        stray.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let two = Communicator::join(2, 3, &addr, cfg.clone()).unwrap();
        let mut comms = [host.join().unwrap().unwrap(), one.join().unwrap().unwrap(), two];
        let sums: Vec<i32> = std::thread::scope(|s2| {
            let hs: Vec<_> = comms
                .iter_mut()
                .map(|c| {
                    s2.spawn(move || {
                        let mut x = [c.rank() as i32];
                        c.allreduce(&mut x, ReduceOp::Sum).unwrap();
                        x[0]
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(sums, [3, 3, 3]);
    });
}

#[test]
fn unreachable_rendezvous_fails_within_the_bootstrap_timeout() {
    // Bind then drop: nothing listens on this port any more.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = Config { bootstrap_timeout: Duration::from_millis(500), ..config() };
    let t0 = Instant::now();
    let e = Communicator::join(1, 2, &format!("127.0.0.1:{port}"), cfg).unwrap_err();
    assert!(matches!(e, Error::Bootstrap(_)), "{e}");
    assert!(e.to_string().contains(&port.to_string()), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5));
}

#[test]
fn missing_ranks_are_named_when_the_rendezvous_gives_up() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let cfg = Config { bootstrap_timeout: Duration::from_millis(800), ..config() };
    std::thread::scope(|s| {
        let host = s.spawn(|| Communicator::host(listener, 4, cfg.clone()));
        let two = s.spawn(|| Communicator::join(2, 4, &addr, cfg.clone()));
        let e = host.join().unwrap().unwrap_err();
        assert!(e.to_string().contains("ranks 1, 3 did not register"), "{e}");
        assert!(two.join().unwrap().is_err());
    });
}

/// The pod-ordinal path end to end: ranks from `name-<ordinal>` hostnames, the rendezvous
/// given explicitly (no cluster DNS here).
#[test]
fn pod_ordinal_bootstrap_forms_a_group() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let n = 3;
    let sums: Vec<i32> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|i| {
                let addr = addr.clone();
                s.spawn(move || {
                    let host = format!("trainer-{i}");
                    let vars = [
                        ("SKEIN_WORLD_SIZE", "3".to_string()),
                        ("SKEIN_SERVICE", "workers".to_string()),
                        ("SKEIN_HOSTNAME", host),
                        ("SKEIN_RENDEZVOUS", addr),
                    ];
                    let rdv = Rendezvous::from_lookup(
                        &|k| Ok(vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())),
                        &|| None,
                    )
                    .unwrap();
                    assert_eq!(rdv.rank, i);
                    let mut c = Communicator::init(&rdv, config()).unwrap();
                    let mut x = [c.rank() as i32 * 10];
                    c.allreduce(&mut x, ReduceOp::Sum).unwrap();
                    x[0]
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(sums, [30, 30, 30]);
}

/// Rank 2 vanishes before the first collective, so rank 1 is still waiting for rank 2 to open
/// their (lazy) connection. It must learn of the failure from rank 0 closing its connection,
/// not sit in `accept` until the 60 s timeout.
#[test]
fn failure_reaches_a_rank_waiting_for_a_lazy_connection() {
    let cfg = Config { timeout: Duration::from_secs(60), ..config() };
    let out = on_ranks(3, cfg, |c| {
        if c.rank() == 2 {
            return None;
        }
        let t0 = Instant::now();
        let mut x = vec![1.0f64; 3000];
        let e = c.allreduce_with(&mut x, ReduceOp::Sum, Some(AllreduceAlgorithm::Ring)).unwrap_err();
        Some((e, t0.elapsed()))
    });
    for (r, o) in out.iter().enumerate() {
        let Some((e, took)) = o else { continue };
        assert!(matches!(e, Error::PeerClosed { .. }), "rank {r}: {e}");
        assert!(*took < Duration::from_secs(10), "rank {r} took {took:?}");
    }
}

/// The ring allreduce in many small segments (segment boundaries that split blocks unevenly,
/// a tail segment smaller than the rank count) gives the reference result for every type.
#[test]
fn segmented_ring_allreduce_matches_reference() {
    use skein_collectives::check::allreduce;
    for n in [2, 3, 5] {
        let cfg = Config { ring_segment_bytes: 4096, chunk_bytes: 4096, ..config() };
        let failures = on_ranks(n, cfg, |c| {
            let mut f = Vec::new();
            for len in [0, 1, 7, 1000, 1025, 5003, 100_003] {
                for op in ReduceOp::ALL {
                    let r = [
                        allreduce::<f32>(c, len, op, AllreduceAlgorithm::Ring).unwrap(),
                        allreduce::<f64>(c, len, op, AllreduceAlgorithm::Ring).unwrap(),
                        allreduce::<u8>(c, len, op, AllreduceAlgorithm::Ring).unwrap(),
                    ];
                    f.extend(r.into_iter().flatten().map(|e| format!("len {len} {op}: {e}")));
                }
            }
            f
        });
        let all: Vec<String> = failures.into_iter().flatten().collect();
        assert!(all.is_empty(), "{n} ranks: {all:?}");
    }
}

#[test]
fn unknown_congestion_control_is_reported_by_name() {
    let cfg = Config { tcp_congestion: Some("nosuchcc".into()), ..config() };
    let e = Communicator::local_group(2, cfg).unwrap_err().to_string();
    assert!(e.contains("SKEIN_TCP_CONGESTION") && e.contains("nosuchcc"), "{e}");
}
