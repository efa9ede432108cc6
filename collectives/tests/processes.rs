//! Ranks as separate `skein-allreduce` processes (the binary cargo built) over 127.0.0.1:
//! the correctness suite across processes, pod-ordinal bootstrap, a rank killed with SIGKILL
//! mid-collective, and bad settings reported as errors rather than panics.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_skein-allreduce");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `n` ranks of `skein-allreduce <args>` in explicit mode.
fn spawn_ranks(n: usize, args: &[&str], extra_env: &[(&str, &str)]) -> Vec<Child> {
    let rdv = format!("127.0.0.1:{}", free_port());
    (0..n)
        .map(|r| {
            Command::new(BIN)
                .args(args)
                .env("SKEIN_RANK", r.to_string())
                .env("SKEIN_WORLD_SIZE", n.to_string())
                .env("SKEIN_RENDEZVOUS", &rdv)
                .env("SKEIN_SPIN", "0")
                .env("SKEIN_BOOTSTRAP_TIMEOUT", "30s")
                .envs(extra_env.iter().copied())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn skein-allreduce")
        })
        .collect()
}

fn wait_all(children: Vec<Child>) -> Vec<Output> {
    children.into_iter().map(|c| c.wait_with_output().unwrap()).collect()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn assert_all_succeeded(outs: &[Output]) {
    for (r, o) in outs.iter().enumerate() {
        assert!(
            o.status.success(),
            "rank {r} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            o.status,
            text(&o.stdout),
            text(&o.stderr)
        );
    }
}

#[test]
fn check_suite_passes_across_three_processes() {
    let outs = wait_all(spawn_ranks(3, &["check", "--lengths", "0,1,7,1000,1048579", "--sweep-length", "1000"], &[]));
    assert_all_succeeded(&outs);
    let summary = text(&outs[0].stdout);
    assert!(summary.contains("check: 156 cases on 3 ranks, 0 wrong results"), "{summary}");
    // Only rank 0 prints results.
    assert!(text(&outs[1].stdout).is_empty());
}

#[test]
fn check_suite_passes_across_five_processes_with_a_full_mesh() {
    let outs = wait_all(spawn_ranks(
        5,
        &["check", "--lengths", "0,7,1000", "--sweep-length", "13"],
        &[("SKEIN_CONNECT", "eager"), ("SKEIN_CHUNK", "4KiB")],
    ));
    assert_all_succeeded(&outs);
    assert!(text(&outs[0].stdout).contains("on 5 ranks, 0 wrong results"));
}

#[test]
fn ranks_bind_the_interface_they_are_told_and_say_which() {
    // The device plugin's netdevs are not in this namespace: the route's interface, said so.
    let outs = wait_all(spawn_ranks(
        2,
        &["bench", "-b", "8", "-e", "64", "-n", "5"],
        &[("SKEIN_RDMA_NETDEVS", "ens2f0,ib0"), ("SKEIN_TRANSPORT", "tcp")],
    ));
    assert_all_succeeded(&outs);
    let out = text(&outs[0].stdout);
    assert!(
        out.contains("# data path: tcp over lo 127.0.0.1 (SKEIN_RDMA_NETDEVS=ens2f0,ib0: not in this network namespace; the pod's own interface towards rank 0)"),
        "{out}"
    );
    // A netdev that is there (lo) is bound to.
    let outs = wait_all(spawn_ranks(
        2,
        &["check", "--lengths", "7", "--sweep-length", "0"],
        &[("SKEIN_RDMA_NETDEVS", "ib0,lo")],
    ));
    assert_all_succeeded(&outs);
    let out = text(&outs[0].stdout);
    assert!(out.contains("# data path: tcp over lo 127.0.0.1 (SKEIN_RDMA_NETDEVS=ib0,lo)"), "{out}");
    // An interface that is not there, or a transport this build lacks, fails every rank early.
    for (k, v, expect) in [
        ("SKEIN_SOCKET_IFNAME", "nosuch0", "no such interface up with an address"),
        ("SKEIN_TRANSPORT", "verbs", "RDMA verbs transport"),
    ] {
        let outs = wait_all(spawn_ranks(2, &["check", "--lengths", "1"], &[(k, v), ("SKEIN_BOOTSTRAP_TIMEOUT", "3s")]));
        for o in &outs {
            assert!(!o.status.success());
            let err = text(&o.stderr);
            assert!(err.contains(k) && err.contains(expect), "{err}");
        }
    }
}

#[test]
fn pod_ordinal_processes_find_each_other() {
    let rdv = format!("127.0.0.1:{}", free_port());
    let children: Vec<Child> = (0..3)
        .map(|i| {
            Command::new(BIN)
                .args(["check", "--lengths", "7", "--sweep-length", "0"])
                .env("SKEIN_WORLD_SIZE", "3")
                .env("SKEIN_SERVICE", "allreduce")
                .env("SKEIN_HOSTNAME", format!("job-{i}"))
                .env("SKEIN_RENDEZVOUS", &rdv)
                .env("SKEIN_SPIN", "0")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs = wait_all(children);
    assert_all_succeeded(&outs);
    assert!(text(&outs[0].stdout).contains("on 3 ranks, 0 wrong results"));
}

/// SIGKILL one of four ranks while all of them loop over 4 MiB allreduces: every survivor
/// must exit with an error well within its 20 s timeout, naming a peer.
#[test]
fn killed_rank_fails_every_other_rank_within_the_timeout() {
    let timeout = Duration::from_secs(20);
    let mut children = spawn_ranks(
        4,
        &["bench", "-b", "4M", "-e", "4M", "-n", "1000000", "-w", "1", "--no-check"],
        &[("SKEIN_TIMEOUT", "20s")],
    );
    // Wait until rank 0 is past bootstrap (it prints its header then), then let the loop run.
    let mut rank0_out = BufReader::new(children[0].stdout.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("# skein-allreduce bench") {
        line.clear();
        assert!(rank0_out.read_line(&mut line).unwrap() > 0, "rank 0 exited before benchmarking");
    }
    std::thread::sleep(Duration::from_millis(1000));
    for (r, c) in children.iter_mut().enumerate() {
        assert!(c.try_wait().unwrap().is_none(), "rank {r} ended before the kill");
    }
    let killed_at = Instant::now();
    children[2].kill().unwrap();
    let mut outs = Vec::new();
    for (r, c) in children.into_iter().enumerate() {
        let o = c.wait_with_output().unwrap();
        if r != 2 {
            outs.push((r, o, killed_at.elapsed()));
        }
    }
    for (r, o, after) in outs {
        let err = text(&o.stderr);
        assert!(!o.status.success(), "rank {r} exited cleanly after a peer was killed");
        assert!(after < timeout, "rank {r} needed {after:?}");
        assert!(err.contains(&format!("rank {r}:")) && err.contains("peer rank"), "rank {r}: {err}");
        assert!(!err.contains("panicked"), "rank {r}: {err}");
    }
}

#[test]
fn bad_settings_are_errors_that_name_the_variable() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("SKEIN_RANK", "abc"), ("SKEIN_WORLD_SIZE", "2"), ("SKEIN_RENDEZVOUS", "127.0.0.1:1")], "SKEIN_RANK"),
        (&[("SKEIN_RANK", "0"), ("SKEIN_WORLD_SIZE", "2")], "SKEIN_RENDEZVOUS"),
        (&[("SKEIN_TIMEOUT", "soon")], "SKEIN_TIMEOUT"),
        (&[("SKEIN_ALLREDUCE_ALGORITHM", "magic")], "SKEIN_ALLREDUCE_ALGORITHM"),
        (&[("SKEIN_WORLD_SIZE", "2"), ("SKEIN_SERVICE", "w"), ("SKEIN_HOSTNAME", "notapod")], "SKEIN_HOSTNAME"),
    ];
    for (env, name) in cases {
        let o = Command::new(BIN)
            .args(["bench", "-e", "8"])
            .env_remove("SKEIN_RANK")
            .env_remove("SKEIN_SERVICE")
            .env_remove("SKEIN_RENDEZVOUS")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{env:?}: {err}");
        assert!(err.contains(name), "{env:?}: {err}");
        assert!(!err.contains("panicked"), "{env:?}: {err}");
    }
    let o = Command::new(BIN).args(["bench", "-b", "1M", "-e", "8", "--local-ranks", "1"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("--min-bytes"), "{}", text(&o.stderr));
}

#[test]
fn help_explains_subcommands_flags_and_environment() {
    let o = Command::new(BIN).arg("--help").output().unwrap();
    assert!(o.status.success());
    let h = text(&o.stdout);
    for w in [
        "bench",
        "model",
        "check",
        "--local-ranks",
        "SKEIN_RENDEZVOUS",
        "SKEIN_SERVICE",
        "SKEIN_TIMEOUT",
        "SKEIN_ALLREDUCE_ALGORITHM",
    ] {
        assert!(h.contains(w), "--help lacks {w}:\n{h}");
    }
    let o = Command::new(BIN).args(["bench", "--help"]).output().unwrap();
    let h = text(&o.stdout);
    for w in ["--min-bytes", "--max-bytes", "--algorithm", "--no-check", "busbw"] {
        assert!(h.contains(w), "bench --help lacks {w}:\n{h}");
    }
}

#[test]
fn local_ranks_bench_and_model_print_their_tables() {
    let o = Command::new(BIN)
        .args(["--local-ranks", "3", "bench", "-b", "8", "-e", "64K", "-f", "8", "-n", "3"])
        .env("SKEIN_SPIN", "0")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let rows: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(rows.len(), 5, "{out}");
    for row in &rows {
        let f: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(f.len(), 9, "{row}");
        assert_eq!(f[8], "0", "wrong elements in {row}");
        let algbw: f64 = f[6].parse().unwrap();
        let busbw: f64 = f[7].parse().unwrap();
        // busbw = algbw × 2(n−1)/n on 3 ranks, to the printed precision.
        assert!((busbw - algbw * 4.0 / 3.0).abs() <= 0.002, "{row}");
    }
    let o = Command::new(BIN)
        .args(["--local-ranks", "2", "model", "-b", "8", "-e", "4K", "-f", "8", "-n", "3"])
        .env("SKEIN_SPIN", "0")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("# fit: alpha ="), "{out}");
    for a in ["ring", "recursive-doubling", "rabenseifner"] {
        assert_eq!(out.lines().filter(|l| !l.starts_with('#') && l.contains(a)).count(), 4, "{out}");
    }
}
