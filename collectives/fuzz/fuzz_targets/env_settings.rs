//! Environment variables and hostnames are operator input: every parser behind
//! `Config::from_lookup` and `Rendezvous::from_lookup` must return a value or an error, never
//! panic. Input: lines `K=V`, where K's first byte picks one of the variables read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skein_collectives::bootstrap::{parse_host_port, parse_pod_ordinal};
use skein_collectives::config::{parse_duration, parse_size};
use skein_collectives::interface::{Transport, parse_interface_list};
use skein_collectives::{Config, Rendezvous};

const VARS: &[&str] = &[
    "SKEIN_RANK",
    "SKEIN_WORLD_SIZE",
    "SKEIN_RENDEZVOUS",
    "SKEIN_SERVICE",
    "SKEIN_NAMESPACE",
    "SKEIN_PORT",
    "SKEIN_HOSTNAME",
    "HOSTNAME",
    "SKEIN_TIMEOUT",
    "SKEIN_BOOTSTRAP_TIMEOUT",
    "SKEIN_SPIN",
    "SKEIN_SOCKET_BUFFER",
    "SKEIN_CHUNK",
    "SKEIN_CONNECT",
    "SKEIN_ALLREDUCE_ALGORITHM",
    "SKEIN_ALLGATHER_ALGORITHM",
    "SKEIN_BROADCAST_ALGORITHM",
    "SKEIN_REDUCE_ALGORITHM",
    "SKEIN_TRANSPORT",
    "SKEIN_SOCKET_IFNAME",
    "SKEIN_RDMA_NETDEVS",
];

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut vars: Vec<(&str, String)> = Vec::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else { continue };
        let name = VARS[k.bytes().next().map_or(0, |b| b as usize) % VARS.len()];
        vars.push((name, v.to_string()));
        let _ = parse_duration(v);
        let _ = parse_size(v);
        let _ = parse_host_port(v);
        let _ = parse_pod_ordinal(v);
        let _ = parse_interface_list(v);
        let _ = v.parse::<Transport>();
    }
    let lookup = |k: &str| Ok(vars.iter().rev().find(|(n, _)| *n == k).map(|(_, v)| v.clone()));
    let _ = Config::from_lookup(&lookup);
    let host = vars.first().map(|(_, v)| v.clone());
    if let Ok(r) = Rendezvous::from_lookup(&lookup, &|| host.clone()) {
        assert!(r.rank < r.world_size);
        parse_host_port(&r.address).expect("a derived rendezvous address parses");
    }
});
