//! Any environment, stdin and agent answer: the plugin never panics, and prints either
//! nothing or one JSON document — a result on success, a CNI error (code + msg) on failure.
//! Input layout: `K=V` lines of environment, a NUL byte, stdin, a NUL byte, the agent's
//! answer (empty: agent unreachable). The agent and the host network are in-memory fakes,
//! so no syscall is made.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use skein_cni::agent_client::TransportError;
use skein_cni::agent_protocol::AgentResponse;
use skein_cni::env::CniEnv;
use skein_cni::testing::{FakeAgent, FakeHost};

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == 0);
    let env_text = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let stdin = parts.next().unwrap_or_default().to_vec();
    let answer = parts.next().unwrap_or_default().to_vec();

    let env = CniEnv::from_pairs(env_text.lines().filter_map(|line| {
        let (k, v) = line.split_once('=')?;
        Some((k.to_string(), v.to_string()))
    }));
    let agent = FakeAgent::new(move |_| {
        if answer.is_empty() {
            return Err(TransportError::Unreachable {
                socket: PathBuf::from("/fuzz/agent.sock"),
                source: std::io::ErrorKind::ConnectionRefused.into(),
            });
        }
        serde_json::from_slice::<AgentResponse>(&answer)
            .map_err(|source| TransportError::Invalid { socket: PathBuf::from("/fuzz/agent.sock"), source })
    });
    let host = FakeHost::permissive();
    // A second invocation sees the first's state, like ADD then DEL on one node.
    for _ in 0..2 {
        let outcome = skein_cni::run(&env, &stdin, &agent, &host);
        assert!(outcome.exit_code == 0 || outcome.exit_code == 1);
        if outcome.stdout.is_empty() {
            assert_eq!(outcome.exit_code, 0, "a failure must say why");
            continue;
        }
        let value: serde_json::Value = serde_json::from_slice(&outcome.stdout).expect("stdout is JSON");
        assert!(value["cniVersion"].is_string(), "{value}");
        if outcome.exit_code == 1 {
            assert!(value["code"].as_u64().is_some_and(|c| c > 0), "{value}");
            assert!(value["msg"].as_str().is_some_and(|m| !m.is_empty()), "{value}");
        }
    }
});
