//! How a rank learns who it is and where the rendezvous is: explicit `SKEIN_RANK` /
//! `SKEIN_WORLD_SIZE` / `SKEIN_RENDEZVOUS`, or a StatefulSet pod's ordinal and its headless
//! Service. Pure parsing over a lookup function; the network side is in `comm`.

use crate::config::env_lookup;
use crate::error::{Error, Result};
use crate::wire::MAX_WORLD_SIZE;

/// Default rendezvous port in pod-ordinal mode (`SKEIN_PORT`).
pub const DEFAULT_POD_PORT: u16 = 29600;

/// The variables bootstrap reads, with a one-line description each.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("SKEIN_RANK", "this rank, 0..SKEIN_WORLD_SIZE (explicit mode)"),
    ("SKEIN_WORLD_SIZE", "number of ranks (both modes)"),
    (
        "SKEIN_RENDEZVOUS",
        "host:port of rank 0, which listens there (explicit mode; overrides the derived address in pod mode)",
    ),
    ("SKEIN_SERVICE", "headless Service of a StatefulSet: selects pod-ordinal mode when SKEIN_RANK is unset"),
    ("SKEIN_NAMESPACE", "namespace of that Service (pod mode; default: the pod's own, via DNS search)"),
    ("SKEIN_PORT", "rendezvous port in pod mode (default 29600)"),
    ("SKEIN_HOSTNAME", "pod name to take the ordinal from (pod mode; default $HOSTNAME, then the kernel's)"),
];

/// Where a rank stands and where rank 0 listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous {
    /// This rank.
    pub rank: usize,
    /// Number of ranks.
    pub world_size: usize,
    /// `host:port` of rank 0's rendezvous listener.
    pub address: String,
    /// Rank 0 binds every interface instead of the address's host (pod mode with a derived
    /// DNS name, which may not resolve yet while rank 0 starts).
    pub bind_any: bool,
}

impl Rendezvous {
    /// Reads the process environment (hostname from `SKEIN_HOSTNAME`, `HOSTNAME`, then the
    /// kernel).
    pub fn from_env() -> Result<Rendezvous> {
        Rendezvous::from_lookup(&env_lookup, &kernel_hostname)
    }

    /// Reads through `lookup`; `hostname` supplies the kernel hostname if no variable does.
    pub fn from_lookup(
        lookup: &dyn Fn(&str) -> Result<Option<String>>,
        hostname: &dyn Fn() -> Option<String>,
    ) -> Result<Rendezvous> {
        let world_size = match lookup("SKEIN_WORLD_SIZE")? {
            Some(v) => parse_world_size(&v)?,
            None => {
                return Err(Error::MissingConfig {
                    name: "SKEIN_WORLD_SIZE".into(),
                    hint: "set it to the number of ranks in the job".into(),
                });
            }
        };
        let explicit_rdv = lookup("SKEIN_RENDEZVOUS")?;
        if let Some(a) = &explicit_rdv {
            parse_host_port(a).map_err(|r| Error::config("SKEIN_RENDEZVOUS", a, r))?;
        }
        if let Some(v) = lookup("SKEIN_RANK")? {
            let rank = parse_rank(&v, world_size)?;
            let Some(address) = explicit_rdv else {
                return Err(Error::MissingConfig {
                    name: "SKEIN_RENDEZVOUS".into(),
                    hint: "set it to host:port where rank 0 listens (rank 0 binds it)".into(),
                });
            };
            return Ok(Rendezvous { rank, world_size, address, bind_any: false });
        }
        let Some(service) = lookup("SKEIN_SERVICE")? else {
            return Err(Error::MissingConfig {
                name: "SKEIN_RANK".into(),
                hint: "set SKEIN_RANK and SKEIN_RENDEZVOUS, or SKEIN_SERVICE (the headless \
                       Service of a StatefulSet) to take the rank from the pod name"
                    .into(),
            });
        };
        check_dns_label(&service).map_err(|r| Error::config("SKEIN_SERVICE", &service, r))?;
        let namespace = lookup("SKEIN_NAMESPACE")?;
        if let Some(ns) = &namespace {
            check_dns_label(ns).map_err(|r| Error::config("SKEIN_NAMESPACE", ns, r))?;
        }
        let port = match lookup("SKEIN_PORT")? {
            Some(p) => parse_port(&p).map_err(|r| Error::config("SKEIN_PORT", &p, r))?,
            None => DEFAULT_POD_PORT,
        };
        let (host_var, host) = match lookup("SKEIN_HOSTNAME")? {
            Some(h) => ("SKEIN_HOSTNAME", h),
            None => match lookup("HOSTNAME")? {
                Some(h) => ("HOSTNAME", h),
                None => match hostname() {
                    Some(h) => ("the kernel hostname", h),
                    None => {
                        return Err(Error::MissingConfig {
                            name: "SKEIN_HOSTNAME".into(),
                            hint: "no hostname available to take the pod ordinal from".into(),
                        });
                    }
                },
            },
        };
        let (base, ordinal) = parse_pod_ordinal(&host).map_err(|r| Error::config(host_var, &host, r))?;
        if ordinal >= world_size {
            return Err(Error::config(
                host_var,
                &host,
                format!("pod ordinal {ordinal} is not below SKEIN_WORLD_SIZE={world_size}"),
            ));
        }
        // Bind every interface only for a derived DNS name: rank 0's own record may not
        // resolve yet. An explicit address is bound as given.
        let bind_any = explicit_rdv.is_none();
        let address = match explicit_rdv {
            Some(a) => a,
            None => {
                let mut h = format!("{base}-0.{service}");
                if let Some(ns) = namespace {
                    h.push('.');
                    h.push_str(&ns);
                    h.push_str(".svc");
                }
                format!("{h}:{port}")
            }
        };
        Ok(Rendezvous { rank: ordinal, world_size, address, bind_any })
    }
}

fn kernel_hostname() -> Option<String> {
    let u = rustix::system::uname();
    u.nodename().to_str().ok().map(str::to_string)
}

fn parse_world_size(v: &str) -> Result<usize> {
    let n: usize = v.trim().parse().map_err(|_| Error::config("SKEIN_WORLD_SIZE", v, "not a whole number"))?;
    if n == 0 || n > MAX_WORLD_SIZE {
        return Err(Error::config("SKEIN_WORLD_SIZE", v, format!("must be between 1 and {MAX_WORLD_SIZE}")));
    }
    Ok(n)
}

fn parse_rank(v: &str, world_size: usize) -> Result<usize> {
    let r: usize = v.trim().parse().map_err(|_| Error::config("SKEIN_RANK", v, "not a whole number"))?;
    if r >= world_size {
        return Err(Error::config("SKEIN_RANK", v, format!("must be below SKEIN_WORLD_SIZE={world_size}")));
    }
    Ok(r)
}

fn parse_port(v: &str) -> std::result::Result<u16, String> {
    match v.trim().parse::<u16>() {
        Ok(0) => Err("port 0 cannot be dialled".into()),
        Ok(p) => Ok(p),
        Err(_) => Err("not a port number (1..65535)".into()),
    }
}

/// Splits `host:port` (`[v6]:port` for IPv6 literals) and checks both parts.
pub fn parse_host_port(s: &str) -> std::result::Result<(String, u16), String> {
    let s = s.trim();
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once("]:").ok_or("an IPv6 address needs the form [addr]:port")?;
        h.parse::<std::net::Ipv6Addr>().map_err(|_| format!("{h:?} is not an IPv6 address"))?;
        (h.to_string(), p)
    } else {
        let (h, p) = s.rsplit_once(':').ok_or("expected host:port")?;
        if h.contains(':') {
            return Err("write IPv6 addresses as [addr]:port".into());
        }
        (h.to_string(), p)
    };
    if host.is_empty() {
        return Err("empty host".into());
    }
    if host.len() > 253 || !host.chars().all(|c| c.is_ascii_alphanumeric() || ".-_:".contains(c)) {
        return Err(format!("{host:?} is not a host name or address"));
    }
    Ok((host, parse_port(port)?))
}

/// Splits a StatefulSet pod name (or a hostname whose first label is one) into its base name
/// and ordinal: `trainer-12` → (`trainer`, 12).
pub fn parse_pod_ordinal(hostname: &str) -> std::result::Result<(String, usize), String> {
    let label = hostname.trim().split('.').next().unwrap_or_default();
    let (base, ord) = label.rsplit_once('-').ok_or("expected a StatefulSet pod name like <name>-<ordinal>")?;
    if ord.is_empty() || !ord.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{ord:?} after the last '-' is not an ordinal"));
    }
    if ord.len() > 1 && ord.starts_with('0') {
        return Err(format!("ordinal {ord:?} has a leading zero; StatefulSets never write one"));
    }
    let ordinal: usize = ord.parse().map_err(|_| format!("ordinal {ord:?} is too large"))?;
    check_dns_label(base).map_err(|r| format!("pod base name: {r}"))?;
    Ok((base.to_string(), ordinal))
}

/// Checks an RFC 1123 DNS label: lower-case alphanumerics and '-', not starting or ending in
/// '-', at most 63 characters.
fn check_dns_label(s: &str) -> std::result::Result<(), String> {
    if s.is_empty() || s.len() > 63 {
        return Err("a DNS label must be 1 to 63 characters".into());
    }
    if !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Err("a DNS label holds only lower-case letters, digits and '-'".into());
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err("a DNS label cannot start or end with '-'".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn rdv(vars: &[(&str, &str)], host: Option<&str>) -> Result<Rendezvous> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let host = host.map(str::to_string);
        Rendezvous::from_lookup(&|k| Ok(map.get(k).cloned()), &|| host.clone())
    }

    #[test]
    fn explicit_mode() {
        let r = rdv(&[("SKEIN_RANK", "2"), ("SKEIN_WORLD_SIZE", "4"), ("SKEIN_RENDEZVOUS", "127.0.0.1:4000")], None)
            .unwrap();
        assert_eq!(r.rank, 2);
        assert_eq!(r.world_size, 4);
        assert_eq!(r.address, "127.0.0.1:4000");
        assert!(!r.bind_any);
    }

    #[test]
    fn pod_ordinal_mode_derives_rank_and_rendezvous() {
        let r =
            rdv(&[("SKEIN_WORLD_SIZE", "16"), ("SKEIN_SERVICE", "workers"), ("HOSTNAME", "trainer-12")], None).unwrap();
        assert_eq!(r.rank, 12);
        assert_eq!(r.address, "trainer-0.workers:29600");
        assert!(r.bind_any);
        let r = rdv(
            &[
                ("SKEIN_WORLD_SIZE", "2"),
                ("SKEIN_SERVICE", "workers"),
                ("SKEIN_NAMESPACE", "ml"),
                ("SKEIN_PORT", "7000"),
            ],
            Some("job-a-1.workers.ml.svc.cluster.local"),
        )
        .unwrap();
        assert_eq!(r.rank, 1);
        assert_eq!(r.address, "job-a-0.workers.ml.svc:7000");
    }

    #[test]
    fn errors_name_the_variable_and_value() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("SKEIN_RANK", "0")], "SKEIN_WORLD_SIZE"),
            (&[("SKEIN_WORLD_SIZE", "zero")], "SKEIN_WORLD_SIZE"),
            (&[("SKEIN_WORLD_SIZE", "4"), ("SKEIN_RANK", "4"), ("SKEIN_RENDEZVOUS", "h:1")], "SKEIN_RANK"),
            (&[("SKEIN_WORLD_SIZE", "4"), ("SKEIN_RANK", "1")], "SKEIN_RENDEZVOUS"),
            (&[("SKEIN_WORLD_SIZE", "4"), ("SKEIN_RANK", "1"), ("SKEIN_RENDEZVOUS", "nohostport")], "SKEIN_RENDEZVOUS"),
            (&[("SKEIN_WORLD_SIZE", "4")], "SKEIN_RANK"),
            (&[("SKEIN_WORLD_SIZE", "4"), ("SKEIN_SERVICE", "Bad_Name")], "SKEIN_SERVICE"),
            (&[("SKEIN_WORLD_SIZE", "4"), ("SKEIN_SERVICE", "w"), ("HOSTNAME", "trainer-7")], "HOSTNAME"),
            (&[("SKEIN_WORLD_SIZE", "4"), ("SKEIN_SERVICE", "w"), ("SKEIN_HOSTNAME", "trainer")], "SKEIN_HOSTNAME"),
            (
                &[("SKEIN_WORLD_SIZE", "4"), ("SKEIN_SERVICE", "w"), ("SKEIN_PORT", "0"), ("HOSTNAME", "a-1")],
                "SKEIN_PORT",
            ),
        ];
        for (vars, name) in cases {
            let e = rdv(vars, None).unwrap_err().to_string();
            assert!(e.contains(name), "{vars:?}: {e}");
        }
    }

    #[test]
    fn pod_names() {
        assert_eq!(parse_pod_ordinal("a-b-3").unwrap(), ("a-b".to_string(), 3));
        assert_eq!(parse_pod_ordinal("x-0").unwrap(), ("x".to_string(), 0));
        for bad in ["trainer", "trainer-", "-3", "t-03", "t-3a", "T-1", "t-99999999999999999999999"] {
            assert!(parse_pod_ordinal(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_ports() {
        assert_eq!(parse_host_port("h:1").unwrap(), ("h".to_string(), 1));
        assert_eq!(parse_host_port("[::1]:80").unwrap(), ("::1".to_string(), 80));
        for bad in ["h", ":80", "h:0", "h:x", "::1:80", "[zz]:1", "a b:1"] {
            assert!(parse_host_port(bad).is_err(), "{bad}");
        }
    }
}
