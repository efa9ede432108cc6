//! Command-line flags of `skein-master`. Every default matches `DESIGN.md`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use skein_netmodel::NetworkConfig;
use skein_netmodel::config::ClusterNetwork;
use skein_netmodel::{IpFamily, IpNet};

use crate::annotate::Backoff;
use crate::auth::AuthSettings;
use crate::leader::LeaseSettings;
use crate::master::MasterSettings;
use crate::pki::PkiSettings;
use crate::tls::ServerTls;

/// Skein master: watches Nodes, Namespaces, Pods, Services, EndpointSlices and
/// NetworkPolicies; allocates node subnets and pod addresses (written back as the
/// `skein.dev/node-subnets` and `skein.dev/pod-networks` annotations); compiles the
/// logical network; and streams each node agent its logical flows over gRPC
/// (`proto/southbound.proto`). Run two replicas for availability: they elect a leader
/// on a Lease; only the leader writes annotations and serves agents.
#[derive(Debug, Parser)]
#[command(name = "skein-master", version)]
pub struct Cli {
    /// What to do (default: run the master).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of the master and of `dump`.
    #[command(flatten)]
    pub options: Options,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the master (the default).
    Run,
    /// Print the logical network (routers, switches, ports, routes, SNAT, load
    /// balancers) compiled from the cluster's current state and annotations, the objects
    /// that are not programmed and why, and with --chassis a chassis's bindings, load
    /// balancers and logical flows in OVN notation.
    Dump {
        /// Also print this chassis's (node's) southbound view and logical flows.
        #[arg(long)]
        chassis: Option<String>,
    },
}

/// Options.
#[derive(Debug, Args)]
pub struct Options {
    /// Cluster CIDRs (one per IP family, comma-separated), each with the prefix length of
    /// the per-node subnets carved from it: CIDR=LEN, e.g. 10.244.0.0/16=24. The first is
    /// the primary family (keys and MACs derive from its addresses).
    #[arg(long, env = "SKEIN_CLUSTER_CIDR", value_delimiter = ',', default_value = "10.244.0.0/16=24", value_parser = parse_cluster_network)]
    pub cluster_cidr: Vec<ClusterNetwork>,

    /// Join-switch subnets (one per IP family) for the gateway routers' addresses.
    #[arg(long, env = "SKEIN_JOIN_SUBNET", value_delimiter = ',', default_value = "100.64.0.0/16,fd98::/64")]
    pub join_subnet: Vec<IpNet>,

    /// Pod interface MTU written into pod annotations, the same on every node (at most the
    /// smallest uplink MTU − 66: Geneve over IPv4 with Skein's option). 0, the default:
    /// each node's agent gives its pods what its uplink carries (its `--mtu`, or the uplink's
    /// MTU − 66), so jumbo uplinks give jumbo pods.
    #[arg(long, env = "SKEIN_MTU", default_value_t = 0)]
    pub mtu: u16,

    /// Source address of hairpin traffic (a pod reaching itself through a Service), one
    /// per family.
    #[arg(long, value_delimiter = ',', default_value = "169.254.169.5,fd69::5")]
    pub hairpin_snat_ip: Vec<IpAddr>,

    /// Address of the southbound gRPC server. Always TLS: with the certificate the master
    /// issues itself (see --pki-secret) unless --grpc-tls-cert and --grpc-tls-key are given.
    #[arg(long, env = "SKEIN_SOUTHBOUND_LISTEN", default_value = "0.0.0.0:6643")]
    pub southbound_listen: SocketAddr,

    /// Serve the southbound stream over TLS with this certificate (PEM, leaf first, then
    /// any intermediates). Requires --grpc-tls-key.
    #[arg(long, env = "SKEIN_GRPC_TLS_CERT", value_name = "PATH", requires = "grpc_tls_key")]
    pub grpc_tls_cert: Option<PathBuf>,

    /// Private key of --grpc-tls-cert (PEM: PKCS#8, RSA or EC, unencrypted). Requires
    /// --grpc-tls-cert.
    #[arg(long, env = "SKEIN_GRPC_TLS_KEY", value_name = "PATH", requires = "grpc_tls_cert")]
    pub grpc_tls_key: Option<PathBuf>,

    /// Require agents to present a client certificate signed by this CA (PEM; mutual TLS).
    /// Requires --grpc-tls-cert and --grpc-tls-key.
    #[arg(long, env = "SKEIN_GRPC_TLS_CLIENT_CA", value_name = "PATH", requires = "grpc_tls_cert")]
    pub grpc_tls_client_ca: Option<PathBuf>,

    /// Namespace of the master's key Secret and CA ConfigMap (default: its own, $POD_NAMESPACE).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    pub pki_namespace: String,

    /// Secret holding the southbound CA, the server certificate and the annotation signing
    /// key; created by the first master that starts. Delete it to issue new ones.
    #[arg(long, default_value = "skein-master-keys")]
    pub pki_secret: String,

    /// ConfigMap in which the master publishes the CA certificate (`ca.crt`) and the name
    /// agents check in its certificate (`server-name`).
    #[arg(long, default_value = "skein-southbound-ca")]
    pub ca_configmap: String,

    /// Names (DNS names or IP addresses, comma-separated) put in the generated server
    /// certificate; the first is the one agents check. Default: the `skein-master`
    /// Service's names in the --pki-namespace.
    #[arg(long, value_delimiter = ',')]
    pub southbound_server_name: Vec<String>,

    /// ServiceAccount (NAMESPACE/NAME) whose bound tokens agents authenticate with.
    #[arg(long, env = "SKEIN_AGENT_SERVICE_ACCOUNT", default_value = "kube-system/skein-agent")]
    pub agent_service_account: String,

    /// Audience the agents' tokens must be issued for.
    #[arg(long, default_value = crate::auth::DEFAULT_AUDIENCE)]
    pub southbound_audience: String,

    /// Most southbound streams one node may hold open at once (an agent needs one; a
    /// second covers a reconnect before the old stream is noticed dead).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_streams_per_node: u16,

    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "SKEIN_METRICS_LISTEN", default_value = "0.0.0.0:9477")]
    pub metrics_listen: SocketAddr,

    /// Kubeconfig for the Kubernetes API; without it the in-cluster service account
    /// (then the default kubeconfig) is used.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// This replica's identity: the Lease holder name and the Event reporter instance.
    /// Defaults to $POD_NAME, else the host name.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Do not elect a leader: this replica leads unconditionally. Only for a single
    /// replica; two replicas without election would both write.
    #[arg(long)]
    pub no_leader_election: bool,

    /// Namespace of the leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    pub lease_namespace: String,

    /// Name of the leader Lease (coordination.k8s.io/v1).
    #[arg(long, default_value = "skein-master")]
    pub lease_name: String,

    /// How long a lease stays valid without renewal: a standby takes over this long after
    /// the leader stopped renewing.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,

    /// How long the leader keeps failing to renew before it steps down (exits).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub renew_deadline: Duration,

    /// Interval between lease renewals and acquisition attempts.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub retry_period: Duration,

    /// First delay before retrying a failed annotation write (doubles each time).
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    pub write_backoff: Duration,

    /// Longest delay between annotation write retries.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub write_backoff_max: Duration,

    /// How often annotation writes the API server refused (RBAC, admission, validation) are
    /// tried again; a change of the object tries again at once.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub write_rejected_retry: Duration,

    /// Log filter in RUST_LOG syntax, e.g. `info` or `skein_master=debug`.
    #[arg(long, env = "SKEIN_LOG", default_value = "info")]
    pub log: String,
}

/// Parses `CIDR=LEN`.
pub fn parse_cluster_network(text: &str) -> Result<ClusterNetwork, String> {
    let (cidr, len) =
        text.split_once('=').ok_or_else(|| format!("{text:?}: expected CIDR=LEN, e.g. 10.244.0.0/16=24"))?;
    let cidr: IpNet = cidr.parse().map_err(|e| format!("{text:?}: {e}"))?;
    let host_prefix_len: u8 = len.parse().map_err(|_| format!("{text:?}: {len:?} is not a prefix length"))?;
    Ok(ClusterNetwork { cidr, host_prefix_len })
}

/// Parses `250ms`, `15s` or `1m` (more than zero).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.find(|c: char| !c.is_ascii_digit()).map_or((text, ""), |at| text.split_at(at));
    let value: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration such as 250ms or 15s"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(value)),
        "s" => Ok(Duration::from_secs(value)),
        "m" => Ok(Duration::from_secs(value.saturating_mul(60))),
        _ => Err(format!("{text:?}: unit must be ms, s or m")),
    }
    .and_then(|d| if d.is_zero() { Err(format!("{text:?} must be more than zero")) } else { Ok(d) })
}

impl Options {
    /// The network configuration (checked by the engine at start).
    pub fn network(&self) -> NetworkConfig {
        let families: Vec<IpFamily> = self.cluster_cidr.iter().map(|c| c.cidr.family()).collect();
        NetworkConfig {
            cluster_networks: self.cluster_cidr.clone(),
            join_subnets: self.join_subnet.iter().filter(|j| families.contains(&j.family())).copied().collect(),
            mtu: self.mtu,
            hairpin_snat_ips: self.hairpin_snat_ip.clone(),
        }
    }

    /// This replica's identity.
    pub fn identity(&self) -> String {
        self.identity.clone().filter(|i| !i.is_empty()).unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "skein-master".to_owned())
        })
    }

    /// The southbound server's TLS, read from the files the flags name (`None`:
    /// plaintext). Errors name the flag and the file.
    pub fn grpc_tls(&self) -> Result<Option<ServerTls>, String> {
        match (&self.grpc_tls_cert, &self.grpc_tls_key) {
            (None, None) if self.grpc_tls_client_ca.is_some() => {
                Err("--grpc-tls-client-ca needs --grpc-tls-cert and --grpc-tls-key".to_owned())
            }
            (None, None) => Ok(None),
            (Some(_), None) => Err("--grpc-tls-cert needs --grpc-tls-key".to_owned()),
            (None, Some(_)) => Err("--grpc-tls-key needs --grpc-tls-cert".to_owned()),
            (Some(cert), Some(key)) => ServerTls::from_files(cert, key, self.grpc_tls_client_ca.as_deref())
                .map(Some)
                .map_err(|e| e.to_string()),
        }
    }

    /// The replica's settings (reads the TLS files, if any).
    pub fn settings(&self) -> Result<MasterSettings, String> {
        if self.renew_deadline >= self.lease_duration {
            return Err(format!(
                "--renew-deadline {:?} must be shorter than --lease-duration {:?}",
                self.renew_deadline, self.lease_duration
            ));
        }
        if self.retry_period >= self.renew_deadline {
            return Err(format!(
                "--retry-period {:?} must be shorter than --renew-deadline {:?}",
                self.retry_period, self.renew_deadline
            ));
        }
        let identity = self.identity();
        let (agent_namespace, agent_account) = self
            .agent_service_account
            .split_once('/')
            .filter(|(ns, n)| !ns.is_empty() && !n.is_empty() && !n.contains('/'))
            .ok_or_else(|| {
                format!("--agent-service-account {:?}: expected NAMESPACE/NAME", self.agent_service_account)
            })?;
        let mut auth = AuthSettings::new(agent_namespace, agent_account);
        auth.audience = self.southbound_audience.clone();
        let mut pki = PkiSettings::new(&self.pki_namespace);
        pki.secret = self.pki_secret.clone();
        pki.config_map = self.ca_configmap.clone();
        if !self.southbound_server_name.is_empty() {
            pki.server_names = self.southbound_server_name.clone();
        }
        Ok(MasterSettings {
            network: self.network(),
            grpc_listen: self.southbound_listen,
            grpc_tls: self.grpc_tls()?,
            pki,
            auth,
            max_streams_per_node: usize::from(self.max_streams_per_node),
            http_listen: self.metrics_listen,
            lease: (!self.no_leader_election).then(|| LeaseSettings {
                namespace: self.lease_namespace.clone(),
                name: self.lease_name.clone(),
                identity: identity.clone(),
                lease_duration: self.lease_duration,
                renew_deadline: self.renew_deadline,
                retry_period: self.retry_period,
            }),
            identity,
            backoff: Backoff {
                initial: self.write_backoff,
                max: self.write_backoff_max,
                rejected_retry: self.write_rejected_retry,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn defaults_match_the_design() {
        let cli = Cli::try_parse_from(["skein-master"]).unwrap();
        let net = cli.options.network();
        assert_eq!(
            net,
            NetworkConfig { join_subnets: vec!["100.64.0.0/16".parse().unwrap()], ..NetworkConfig::default() }
        );
        net.validate().unwrap();
        let s = cli.options.settings().unwrap();
        assert_eq!(s.grpc_listen.port(), 6643);
        assert!(s.lease.is_some());
    }

    #[test]
    fn help_documents_every_flag() {
        let mut cmd = Cli::command();
        cmd.build();
        for arg in cmd.get_arguments() {
            if arg.get_id() == "help" || arg.get_id() == "version" {
                continue;
            }
            assert!(arg.get_help().is_some_and(|h| !h.to_string().is_empty()), "--{} has no help", arg.get_id());
        }
        assert!(Cli::try_parse_from(["skein-master", "--cluster-cidr", "10.0.0.0/8"]).is_err());
        let dual =
            Cli::try_parse_from(["skein-master", "--cluster-cidr", "10.244.0.0/16=24,fd00:10:244::/48=64"]).unwrap();
        assert_eq!(dual.options.network().join_subnets.len(), 2);
        dual.options.network().validate().unwrap();
    }

    #[test]
    fn tls_flags_come_as_a_pair_and_name_unreadable_files() {
        let plain = Cli::try_parse_from(["skein-master"]).unwrap();
        let s = plain.options.settings().unwrap();
        assert!(s.grpc_tls.is_none(), "the generated certificate by default");
        assert_eq!(s.pki.server_names[0], "skein-master.kube-system.svc");
        assert_eq!(s.auth.agent_username(), "system:serviceaccount:kube-system:skein-agent");
        assert_eq!(s.max_streams_per_node, 2);
        let bad = Cli::try_parse_from(["skein-master", "--agent-service-account", "skein-agent"]).unwrap();
        assert!(bad.options.settings().unwrap_err().contains("--agent-service-account"));
        for args in [
            &["--grpc-tls-cert", "/c"][..],
            &["--grpc-tls-key", "/k"],
            &["--grpc-tls-client-ca", "/ca"],
            &["--grpc-tls-cert", "/c", "--grpc-tls-client-ca", "/ca"],
        ] {
            let e = Cli::try_parse_from(["skein-master"].iter().chain(args)).unwrap_err().to_string();
            assert!(e.contains("--grpc-tls-"), "{args:?}: {e}");
        }
        let both = Cli::try_parse_from([
            "skein-master",
            "--grpc-tls-cert",
            "/nonexistent/tls.crt",
            "--grpc-tls-key",
            "/nonexistent/tls.key",
        ])
        .unwrap();
        let e = both.options.settings().unwrap_err();
        assert!(e.contains("--grpc-tls-cert /nonexistent/tls.crt"), "{e}");
    }
}
