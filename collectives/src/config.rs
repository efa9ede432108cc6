//! Tunables of a communicator (timeouts, spinning, socket buffers, pipeline chunk, connection
//! mode, per-collective algorithm overrides) and their parsing from `SKEIN_*` variables.
//! Parsing is pure over a lookup function so that tests and the fuzz target can drive it.

use std::time::Duration;

use crate::algorithms::{AllgatherAlgorithm, AllreduceAlgorithm, BroadcastAlgorithm, ReduceAlgorithm};
use crate::error::{Error, Result};
use crate::interface::{Transport, parse_interface_list};

/// When peer connections are opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConnectMode {
    /// On first use by an algorithm: a ring allreduce opens only its two neighbours.
    #[default]
    Lazy,
    /// Every pair at start-up (a full mesh), so that connectivity problems show at once.
    Eager,
}

/// Settings of a communicator. `Config::default()` is what an unset environment gives.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// A collective fails if no byte moves for this long (`SKEIN_TIMEOUT`, default 60s).
    pub timeout: Duration,
    /// Bootstrap (rendezvous, registration) must finish within this (`SKEIN_BOOTSTRAP_TIMEOUT`,
    /// default 300s: pods of a StatefulSet can start minutes apart).
    pub bootstrap_timeout: Duration,
    /// How long a rank keeps retrying its sockets (busy-waiting up to 30us while peers answer
    /// fast, then yielding the CPU between tries) before sleeping in `poll(2)` (`SKEIN_SPIN`,
    /// default 200us). It cuts small-message latency by the wake-up time; set 0 when ranks
    /// outnumber cores.
    pub spin: Duration,
    /// `SO_SNDBUF`/`SO_RCVBUF` for data connections (`SKEIN_SOCKET_BUFFER`); `None` leaves the
    /// kernel's autotuning in charge, which reaches larger windows than the setsockopt cap.
    pub socket_buffer: Option<usize>,
    /// Pipeline granularity in bytes (`SKEIN_CHUNK`, default 256KiB): the reduce scratch per
    /// peer, and the smallest forwarded piece in pipelined algorithms.
    pub chunk_bytes: usize,
    /// A ring allreduce larger than this goes round the ring in segments of this many bytes
    /// (`SKEIN_RING_SEGMENT`, default 4MiB), so each segment's data is reused while it is in
    /// cache.
    pub ring_segment_bytes: usize,
    /// TCP congestion control for data connections (`SKEIN_TCP_CONGESTION`; default
    /// `system`, the kernel's choice, as every other application on the node gets).
    /// Pacing-based BBR spends CPU on pacing that a collective on a short in-cluster path
    /// does not need (measured −21 % CPU per 64 MiB allreduce with `reno` on this kind of
    /// machine); operators who want that pick it here. It is not the default because a
    /// library should not override the node's congestion-control policy behind its back.
    pub tcp_congestion: Option<String>,
    /// When to open peer connections (`SKEIN_CONNECT`, `lazy` or `eager`).
    pub connect: ConnectMode,
    /// Forced allreduce algorithm (`SKEIN_ALLREDUCE_ALGORITHM`); `None` chooses by size.
    pub allreduce: Option<AllreduceAlgorithm>,
    /// Forced allgather algorithm (`SKEIN_ALLGATHER_ALGORITHM`).
    pub allgather: Option<AllgatherAlgorithm>,
    /// Forced broadcast algorithm (`SKEIN_BROADCAST_ALGORITHM`).
    pub broadcast: Option<BroadcastAlgorithm>,
    /// Forced reduce algorithm (`SKEIN_REDUCE_ALGORITHM`).
    pub reduce: Option<ReduceAlgorithm>,
    /// The transport (`SKEIN_TRANSPORT`, `tcp`).
    pub transport: Transport,
    /// Interfaces to bind to, first present wins (`SKEIN_SOCKET_IFNAME`, comma-separated).
    pub socket_ifname: Vec<String>,
    /// The network interfaces of the RDMA devices the device plugin gave this container
    /// (`SKEIN_RDMA_NETDEVS`): followed when present in the rank's network namespace.
    pub rdma_netdevs: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            timeout: Duration::from_secs(60),
            bootstrap_timeout: Duration::from_secs(300),
            spin: Duration::from_micros(200),
            socket_buffer: None,
            chunk_bytes: 256 << 10,
            ring_segment_bytes: 4 << 20,
            tcp_congestion: None,
            connect: ConnectMode::Lazy,
            allreduce: None,
            allgather: None,
            broadcast: None,
            reduce: None,
            transport: Transport::Tcp,
            socket_ifname: Vec::new(),
            rdma_netdevs: Vec::new(),
        }
    }
}

/// Smallest accepted `SKEIN_CHUNK`: below this the per-chunk overhead dominates.
pub const MIN_CHUNK_BYTES: usize = 4 << 10;
/// Largest accepted `SKEIN_CHUNK`.
pub const MAX_CHUNK_BYTES: usize = 64 << 20;

/// The environment variables `Config::from_env` reads, with a one-line description each
/// (printed by `skein-allreduce --help`).
pub const ENV_VARS: &[(&str, &str)] = &[
    ("SKEIN_TIMEOUT", "fail a collective after this long without progress (default 60s)"),
    ("SKEIN_BOOTSTRAP_TIMEOUT", "give up bootstrap after this long (default 300s)"),
    (
        "SKEIN_SPIN",
        "retry the sockets this long (busy-waiting up to 30us while peers answer fast, then yielding the CPU) before sleeping in poll(2) (default 200us; 0 to sleep at once)",
    ),
    ("SKEIN_SOCKET_BUFFER", "SO_SNDBUF/SO_RCVBUF for data sockets, e.g. 4MiB (default: kernel autotuning)"),
    ("SKEIN_CHUNK", "pipeline chunk, e.g. 256KiB (4KiB..64MiB)"),
    ("SKEIN_TCP_CONGESTION", "congestion control of data connections: system (default), reno, cubic, dctcp, ..."),
    ("SKEIN_RING_SEGMENT", "ring allreduce segment, e.g. 4MiB: larger buffers go round the ring in pieces this big"),
    ("SKEIN_CONNECT", "lazy (open connections on first use, default) or eager (full mesh at start)"),
    ("SKEIN_ALLREDUCE_ALGORITHM", "auto, ring, recursive-doubling or rabenseifner"),
    ("SKEIN_ALLGATHER_ALGORITHM", "auto, ring or recursive-doubling"),
    ("SKEIN_BROADCAST_ALGORITHM", "auto, binomial or pipeline"),
    ("SKEIN_REDUCE_ALGORITHM", "auto, binomial or reduce-scatter-gather"),
    ("SKEIN_TRANSPORT", "the transport the job runs on: tcp (the only one built)"),
    ("SKEIN_SOCKET_IFNAME", "interfaces to bind to, first present wins (e.g. eth0); overrides SKEIN_RDMA_NETDEVS"),
    (
        "SKEIN_RDMA_NETDEVS",
        "set by the device plugin: the RDMA devices' interfaces, bound to when present in this network namespace",
    ),
];

impl Config {
    /// Reads every `SKEIN_*` tunable from the process environment.
    pub fn from_env() -> Result<Config> {
        Config::from_lookup(&env_lookup)
    }

    /// Reads every tunable through `lookup` (variable name → value); unset ones keep defaults.
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Result<Option<String>>) -> Result<Config> {
        let mut c = Config::default();
        if let Some(v) = lookup("SKEIN_TIMEOUT")? {
            c.timeout = parse_duration(&v).map_err(|r| Error::config("SKEIN_TIMEOUT", &v, r))?;
            if c.timeout.is_zero() {
                return Err(Error::config("SKEIN_TIMEOUT", &v, "must be greater than zero"));
            }
        }
        if let Some(v) = lookup("SKEIN_BOOTSTRAP_TIMEOUT")? {
            c.bootstrap_timeout = parse_duration(&v).map_err(|r| Error::config("SKEIN_BOOTSTRAP_TIMEOUT", &v, r))?;
            if c.bootstrap_timeout.is_zero() {
                return Err(Error::config("SKEIN_BOOTSTRAP_TIMEOUT", &v, "must be greater than zero"));
            }
        }
        if let Some(v) = lookup("SKEIN_SPIN")? {
            c.spin = parse_duration(&v).map_err(|r| Error::config("SKEIN_SPIN", &v, r))?;
        }
        if let Some(v) = lookup("SKEIN_SOCKET_BUFFER")? {
            let n = parse_size(&v).map_err(|r| Error::config("SKEIN_SOCKET_BUFFER", &v, r))?;
            if !(4096..=(1 << 30)).contains(&n) {
                return Err(Error::config("SKEIN_SOCKET_BUFFER", &v, "must be between 4KiB and 1GiB"));
            }
            c.socket_buffer = Some(n as usize);
        }
        if let Some(v) = lookup("SKEIN_CHUNK")? {
            let n = parse_size(&v).map_err(|r| Error::config("SKEIN_CHUNK", &v, r))?;
            if !(MIN_CHUNK_BYTES as u64..=MAX_CHUNK_BYTES as u64).contains(&n) {
                return Err(Error::config("SKEIN_CHUNK", &v, "must be between 4KiB and 64MiB"));
            }
            c.chunk_bytes = n as usize;
        }
        if let Some(v) = lookup("SKEIN_RING_SEGMENT")? {
            let n = parse_size(&v).map_err(|r| Error::config("SKEIN_RING_SEGMENT", &v, r))?;
            if !(MIN_CHUNK_BYTES as u64..=(1u64 << 40)).contains(&n) {
                return Err(Error::config("SKEIN_RING_SEGMENT", &v, "must be at least 4KiB"));
            }
            c.ring_segment_bytes = n as usize;
        }
        if let Some(v) = lookup("SKEIN_TCP_CONGESTION")? {
            let t = v.trim();
            if t.eq_ignore_ascii_case("system") {
                c.tcp_congestion = None;
            } else if t.is_empty() || t.len() > 15 || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(Error::config(
                    "SKEIN_TCP_CONGESTION",
                    &v,
                    "expected a congestion control name such as cubic, reno or dctcp, or system",
                ));
            } else {
                c.tcp_congestion = Some(t.to_string());
            }
        }
        if let Some(v) = lookup("SKEIN_CONNECT")? {
            c.connect = match v.trim().to_ascii_lowercase().as_str() {
                "lazy" => ConnectMode::Lazy,
                "eager" => ConnectMode::Eager,
                _ => return Err(Error::config("SKEIN_CONNECT", &v, "expected lazy or eager")),
            };
        }
        c.allreduce = parse_override(lookup, "SKEIN_ALLREDUCE_ALGORITHM")?;
        c.allgather = parse_override(lookup, "SKEIN_ALLGATHER_ALGORITHM")?;
        c.broadcast = parse_override(lookup, "SKEIN_BROADCAST_ALGORITHM")?;
        c.reduce = parse_override(lookup, "SKEIN_REDUCE_ALGORITHM")?;
        if let Some(v) = lookup("SKEIN_TRANSPORT")? {
            c.transport = v.parse().map_err(|e: String| Error::config("SKEIN_TRANSPORT", &v, e))?;
        }
        if let Some(v) = lookup("SKEIN_SOCKET_IFNAME")? {
            c.socket_ifname = parse_interface_list(&v).map_err(|e| Error::config("SKEIN_SOCKET_IFNAME", &v, e))?;
        }
        if let Some(v) = lookup("SKEIN_RDMA_NETDEVS")? {
            c.rdma_netdevs = parse_interface_list(&v).map_err(|e| Error::config("SKEIN_RDMA_NETDEVS", &v, e))?;
        }
        Ok(c)
    }
}

fn parse_override<A: std::str::FromStr<Err = String>>(
    lookup: &dyn Fn(&str) -> Result<Option<String>>,
    name: &str,
) -> Result<Option<A>> {
    match lookup(name)? {
        None => Ok(None),
        Some(v) if v.trim().eq_ignore_ascii_case("auto") => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|e| Error::config(name, &v, e)),
    }
}

/// Looks a variable up in the process environment; a value that is not UTF-8 is an error
/// naming the variable, an empty value counts as unset.
pub fn env_lookup(name: &str) -> Result<Option<String>> {
    match std::env::var(name) {
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(raw)) => Err(Error::config(name, &raw.to_string_lossy(), "not valid UTF-8")),
    }
}

/// Parses `250ms`, `30s`, `2m`, `100us`, `1.5s` or a bare number of seconds.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err("expected a number followed by an optional unit (us, ms, s, m, h)".into());
    }
    let value: f64 = num.parse().map_err(|_| format!("{num:?} is not a number"))?;
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("unknown unit {other:?}; use us, ms, s, m or h")),
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 365.0 * 86400.0 {
        return Err("duration too large (limit one year)".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a byte count: `8`, `64K`, `4KiB`, `1M`, `256MiB`, `1G` (K/M/G are powers of 1024,
/// as in nccl-tests' `-b`/`-e`).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err("expected a whole number of bytes with an optional K, M or G suffix".into());
    }
    let value: u64 = num.parse().map_err(|_| format!("{num:?} is too large"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => return Err(format!("unknown size suffix {other:?}; use K, M or G")),
    };
    value.checked_mul(1u64 << shift).ok_or_else(|| "size too large".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup_in(map: HashMap<&'static str, &'static str>) -> impl Fn(&str) -> Result<Option<String>> {
        move |k| Ok(map.get(k).map(|v| v.to_string()))
    }

    #[test]
    fn durations_and_sizes_parse() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("100us").unwrap(), Duration::from_micros(100));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3 weeks").is_err());
        assert!(parse_duration("1e400").is_err());
        assert_eq!(parse_size("64K").unwrap(), 65536);
        assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_size("8").unwrap(), 8);
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999G").is_err());
        assert!(parse_size("4 parsecs").is_err());
    }

    #[test]
    fn env_overrides_apply() {
        let c = Config::from_lookup(&lookup_in(HashMap::from([
            ("SKEIN_TIMEOUT", "5s"),
            ("SKEIN_SPIN", "0"),
            ("SKEIN_CHUNK", "1MiB"),
            ("SKEIN_RING_SEGMENT", "2MiB"),
            ("SKEIN_TCP_CONGESTION", "reno"),
            ("SKEIN_CONNECT", "eager"),
            ("SKEIN_ALLREDUCE_ALGORITHM", "rabenseifner"),
            ("SKEIN_BROADCAST_ALGORITHM", "auto"),
            ("SKEIN_TRANSPORT", "tcp"),
            ("SKEIN_RDMA_NETDEVS", "ens2f0,ib0"),
        ])))
        .unwrap();
        assert_eq!(c.transport, Transport::Tcp);
        assert_eq!(c.rdma_netdevs, ["ens2f0", "ib0"]);
        assert!(c.socket_ifname.is_empty());
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert_eq!(c.spin, Duration::ZERO);
        assert_eq!(c.chunk_bytes, 1 << 20);
        assert_eq!(c.ring_segment_bytes, 2 << 20);
        assert_eq!(c.tcp_congestion.as_deref(), Some("reno"));
        assert_eq!(Config::default().tcp_congestion, None);
        assert_eq!(c.connect, ConnectMode::Eager);
        assert_eq!(c.allreduce, Some(AllreduceAlgorithm::Rabenseifner));
        assert_eq!(c.broadcast, None);
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (k, v) in [
            ("SKEIN_TIMEOUT", "0"),
            ("SKEIN_CHUNK", "1"),
            ("SKEIN_RING_SEGMENT", "1K"),
            ("SKEIN_TCP_CONGESTION", "cubic; rm -rf"),
            ("SKEIN_CONNECT", "sometimes"),
            ("SKEIN_ALLREDUCE_ALGORITHM", "telepathy"),
            ("SKEIN_SOCKET_BUFFER", "12"),
            ("SKEIN_TRANSPORT", "verbs"),
            ("SKEIN_SOCKET_IFNAME", "eth0/../x"),
            ("SKEIN_RDMA_NETDEVS", "a b"),
        ] {
            let err = Config::from_lookup(&lookup_in(HashMap::from([(k, v)]))).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(k) && msg.contains(v), "{msg}");
        }
    }
}
