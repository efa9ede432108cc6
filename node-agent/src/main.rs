//! `skein-agent`: the Skein node agent binary. Parses flags, sets up logging, metrics
//! and the Kubernetes client, then runs the agent's components until SIGTERM/SIGINT;
//! its subcommands install the CNI plugin or ask a running agent (trace, dumps, stats).
#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use prometheus_client::registry::Registry;
use skein_agent::agent::{self, ConntrackSettings, MasterLocation, MasterTls, NetworkSettings};
use skein_agent::cniinstall::{self, CniInstall};
use skein_agent::controlsock;
use skein_agent::deviceplugin::annotation::{KubeNodeAnnotator, NodeAnnotator};
use skein_agent::deviceplugin::dcb::NetlinkDcb;
use skein_agent::deviceplugin::metrics::DevicePluginMetrics;
use skein_agent::deviceplugin::sysfs::DiscoveryRoots;
use skein_agent::deviceplugin::{self, ConfigSource, DevicePluginDeps, DevicePluginSettings, DevicePluginStatus};
use skein_agent::host::UplinkPorts;
use skein_agent::metrics;
use skein_agent::netmetrics::NetMetrics;
use skein_agent::translate::ConntrackLimits;
use skein_datapath::io::{PortConfig, SwitchConfig};
use skein_netmodel::IpNet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Skein node agent.
///
/// Runs the node's network: a userspace datapath forwarding between the pods' veths, the
/// management port (host ↔ pods), the node's uplink (pod egress SNAT'ed to the node IP,
/// NodePorts) and a Geneve tunnel to the other nodes; follows the master's southbound
/// stream and installs each version of this node's logical flows atomically; answers the
/// CNI plugin on a root-only Unix socket; installs `skein-cni` and `10-skein.conflist` on
/// start. Also runs the RDMA device plugin (HCAs advertised to kubelet as
/// `skein.dev/rdma`, RoCE readiness in the node annotation `skein.dev/rdma-readiness`).
/// A bad device plugin configuration turns the device plugin off (and says why) while
/// the rest of the agent keeps running.
#[derive(Debug, Parser)]
#[command(name = "skein-agent", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(flatten)]
    run: Args,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Copy `skein-cni` (and the chained reference plugins the bin dir lacks) into the CNI
    /// bin dir and write `10-skein.conflist`, with the CNI versions every plugin of the
    /// chain speaks, into the CNI conf dir, then exit (for an init container: with
    /// --plugins-only, the conflist is left to the agent).
    InstallCni(InstallCniArgs),
    /// Show a packet's walk through this node's flow tables, like `ovs-appctl
    /// ofproto/trace`: `skein-agent trace 'in_port=100,ip,nw_src=10.244.0.5,nw_dst=10.96.0.10,tcp,tp_dst=80'`.
    Trace {
        /// The packet, in the flow syntax (`docs/flow-syntax.md`, "packets for trace").
        packet: String,
        /// `ct_state` flags for each conntrack recirculation, in order (e.g. `+trk+new`).
        #[arg(long = "ct-next")]
        ct_next: Vec<String>,
        /// The agent's state directory (its control socket is `control.sock` there).
        #[arg(long, env = "SKEIN_STATE_DIR", default_value = "/var/run/skein")]
        state_dir: PathBuf,
    },
    /// Print the installed datapath flows with their counters.
    DumpFlows {
        /// The agent's state directory.
        #[arg(long, env = "SKEIN_STATE_DIR", default_value = "/var/run/skein")]
        state_dir: PathBuf,
    },
    /// Print the datapath's cached megaflows.
    DumpCache {
        /// The agent's state directory.
        #[arg(long, env = "SKEIN_STATE_DIR", default_value = "/var/run/skein")]
        state_dir: PathBuf,
    },
    /// Print the tracked connections.
    DumpConntrack {
        /// The agent's state directory.
        #[arg(long, env = "SKEIN_STATE_DIR", default_value = "/var/run/skein")]
        state_dir: PathBuf,
    },
    /// Print the datapath's and ports' counters as `name=value` lines.
    Stats {
        /// The agent's state directory.
        #[arg(long, env = "SKEIN_STATE_DIR", default_value = "/var/run/skein")]
        state_dir: PathBuf,
    },
}

/// Where the CNI plugin and its configuration go (shared by the agent and `install-cni`).
#[derive(Debug, clap::Args)]
struct CniPaths {
    /// Directory the container runtime finds CNI plugins in.
    #[arg(long, env = "SKEIN_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    cni_bin_dir: PathBuf,
    /// Directory the container runtime reads CNI configurations from.
    #[arg(long, env = "SKEIN_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// The `skein-cni` binary to install (default: `skein-cni` next to this executable).
    #[arg(long, env = "SKEIN_CNI_PLUGIN")]
    cni_plugin: Option<PathBuf>,
    /// The agent's CNI socket (mode 0600), written into the conflist.
    #[arg(long, env = "SKEIN_CNI_SOCKET", default_value = "/var/run/skein/cni.sock")]
    cni_socket: PathBuf,
    /// Plugins chained after skein-cni in the conflist, in order (comma-separated; empty
    /// for none). Each must be in the CNI bin dir (or a reference plugin directory, from
    /// which it is copied); the conflist's CNI versions are those every one of them speaks.
    #[arg(long, env = "SKEIN_CNI_CHAIN", value_delimiter = ',', default_value = "portmap,bandwidth")]
    cni_chain: Vec<String>,
    /// Where a chained plugin missing from the CNI bin dir is copied from (comma-separated,
    /// in order): the distribution's reference plugins.
    #[arg(
        long,
        env = "SKEIN_CNI_REFERENCE_DIRS",
        value_delimiter = ',',
        default_value = "/usr/lib/cni,/usr/libexec/cni"
    )]
    cni_reference_dirs: Vec<PathBuf>,
}

/// `install-cni`'s arguments.
#[derive(Debug, clap::Args)]
struct InstallCniArgs {
    #[command(flatten)]
    paths: CniPaths,
    /// Install the plugins and check the chain's versions, but leave the conflist to the
    /// agent, which writes it once it can network (the node is then network-ready).
    #[arg(long)]
    plugins_only: bool,
}

#[derive(Debug, clap::Args)]
struct Args {
    /// Name of this node: its Node object, its chassis, the pods it serves.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,

    /// Kubeconfig file for the Kubernetes API. Without it the in-cluster service
    /// account is used.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,

    /// The master's southbound endpoint(s), comma-separated, tried in turn:
    /// `https://10.0.0.5:6643`.
    #[arg(long, env = "SKEIN_MASTER", value_delimiter = ',', conflicts_with = "master_service")]
    master: Vec<String>,

    /// Find the master through a Service: NAMESPACE/NAME. The agent reads its
    /// EndpointSlices and connects to the ready endpoint's port named `southbound` (the
    /// leader: a standby master is not ready).
    #[arg(long, env = "SKEIN_MASTER_SERVICE")]
    master_service: Option<String>,

    /// CA certificate (PEM) that signed the master's certificate. Without it the agent
    /// trusts the CA the master publishes in --master-ca-configmap.
    #[arg(long, env = "SKEIN_MASTER_CA")]
    master_ca: Option<PathBuf>,

    /// ConfigMap (NAMESPACE/NAME) in which the master publishes its CA (`ca.crt`) and the
    /// name its certificate carries (`server-name`); read through the API server. Used
    /// unless --master-ca is given.
    #[arg(long, env = "SKEIN_MASTER_CA_CONFIGMAP", default_value = "kube-system/skein-southbound-ca")]
    master_ca_configmap: String,

    /// The projected ServiceAccount token (audience `skein.dev/southbound`, bound to this
    /// agent's pod) the agent proves its node with; re-read on every connection, as
    /// kubelet rotates it.
    #[arg(long, env = "SKEIN_TOKEN_FILE", default_value = "/var/run/secrets/skein.dev/southbound/token")]
    token_file: PathBuf,

    /// Client certificate (PEM) for a master that requires mutual TLS. Needs --tls-key.
    #[arg(long, env = "SKEIN_TLS_CERT")]
    tls_cert: Option<PathBuf>,

    /// Private key of --tls-cert (PEM).
    #[arg(long, env = "SKEIN_TLS_KEY")]
    tls_key: Option<PathBuf>,

    /// Name to verify in the master's certificate (default: the endpoint's host).
    #[arg(long, env = "SKEIN_MASTER_SERVER_NAME")]
    master_server_name: Option<String>,

    /// Tunnel endpoint address (and node IP for SNAT). Default: the Node's InternalIP.
    #[arg(long, env = "SKEIN_TUNNEL_IP")]
    tunnel_ip: Option<Ipv4Addr>,

    /// The node's uplink interface. Default: the interface holding the node IP.
    #[arg(long, env = "SKEIN_UPLINK_INTERFACE")]
    uplink_interface: Option<String>,

    /// Cluster CIDRs (comma-separated), routed from the host through the management port.
    #[arg(long, env = "SKEIN_CLUSTER_CIDR", value_delimiter = ',', default_value = "10.244.0.0/16")]
    cluster_cidr: Vec<IpNet>,

    /// Service CIDRs (comma-separated), routed from the host through the management port.
    #[arg(long, env = "SKEIN_SERVICE_CIDR", value_delimiter = ',', default_value = "10.96.0.0/12")]
    service_cidr: Vec<IpNet>,

    #[command(flatten)]
    cni: CniPaths,

    /// State kept across restarts (pod port records, the last flows, the chassis id) and
    /// the control socket `control.sock`.
    #[arg(long, env = "SKEIN_STATE_DIR", default_value = "/var/run/skein")]
    state_dir: PathBuf,

    /// Do not install the CNI plugin and configuration on start.
    #[arg(long)]
    no_cni_install: bool,

    /// Longest time a CNI ADD waits for the pod's annotation and then its flows.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    add_timeout: Duration,

    /// MTU of the pods' interfaces on this node. Default: the uplink's MTU less the
    /// Geneve encapsulation (66 bytes over IPv4 with Skein's option), so a jumbo uplink
    /// gives jumbo pods. A value the uplink cannot carry is refused at start. A pod whose
    /// annotation names an MTU (the master's --mtu) gets that one.
    #[arg(long, env = "SKEIN_POD_MTU", value_parser = clap::value_parser!(u32).range(576..=65_535))]
    mtu: Option<u32>,

    /// Drive the datapath process (`skein-dp run --control PATH`, its own container or
    /// DaemonSet) at this control socket: forwarding, pods' ports and conntrack then outlive
    /// the agent's restarts and upgrades. Without it the switch runs inside the agent (and
    /// the switch flags below apply), so forwarding stops while the agent restarts.
    #[arg(long, env = "SKEIN_DATAPATH_SOCKET", value_name = "PATH")]
    datapath_socket: Option<PathBuf>,

    /// Forwarding threads (default: one per two CPUs, at least one).
    #[arg(long, env = "SKEIN_WORKERS")]
    workers: Option<usize>,

    /// How long a forwarding thread keeps polling after its last packet before sleeping,
    /// in microseconds (0: sleep at once; more trades CPU for latency).
    #[arg(long, env = "SKEIN_BUSY_POLL_US", default_value_t = 0)]
    busy_poll_us: u64,

    /// Receive ring of each datapath port, in MiB. The kernel allocates and zeroes it for
    /// every pod port (ahead of the CNI ADD, on a background thread, but on the node's
    /// CPUs) and keeps it per pod: larger rings absorb longer bursts of small packets,
    /// smaller ones cost less CPU per pod start and less memory per pod. TCP throughput
    /// between pods was the same from 1 to 4 MiB here; see docs/node-agent.md.
    #[arg(long, env = "SKEIN_RING_MIB", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256))]
    ring_mib: u32,

    /// NodePort range (the kernel is told to leave it to Skein on the node IP).
    #[arg(long, default_value = "30000-32767", value_parser = parse_port_range)]
    node_port_range: (u16, u16),

    /// Source ports of pods' SNAT'ed connections (must not overlap the host's
    /// net.ipv4.ip_local_port_range).
    #[arg(long, default_value = "61000-65535", value_parser = parse_port_range)]
    snat_port_range: (u16, u16),

    /// Most connections conntrack tracks on this node; beyond it a new connection takes
    /// the place of the oldest never-answered one (early drop) or is dropped
    /// (`ct_table_full`).
    #[arg(long, env = "SKEIN_CT_MAX_CONNECTIONS", default_value_t = 3_000_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    ct_max_connections: u32,

    /// Do not early-drop: when the table or a zone is full, drop the new connection
    /// instead of the oldest never-answered one (a SYN flood then blocks new connections).
    #[arg(long, env = "SKEIN_CT_NO_EARLY_DROP")]
    ct_no_early_drop: bool,

    /// Most (address, port) pairs NAT tries for one new connection before it drops it
    /// (`nat_exhausted`); bounds the cost of a new connection when a range runs out.
    #[arg(long, env = "SKEIN_CT_NAT_ATTEMPTS", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    ct_nat_attempts: u32,

    /// Most connections in each of a pod's conntrack zones (0: no limit): one pod cannot
    /// fill the node's table.
    #[arg(long, env = "SKEIN_CT_POD_ZONE_LIMIT", default_value_t = 0)]
    ct_pod_zone_limit: u32,

    /// Most connections in each of the gateway's conntrack zones, which all north–south
    /// traffic (NodePorts, external IPs, pod egress) shares (0: no limit): a flood from
    /// outside cannot fill the node's table.
    #[arg(long, env = "SKEIN_CT_GATEWAY_ZONE_LIMIT", default_value_t = 0)]
    ct_gateway_zone_limit: u32,

    /// How often pod port records are checked for a veth or sandbox namespace that is
    /// gone (they are also checked at start and when an ADD for the same pod arrives).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    stale_port_interval: Duration,

    /// Do not run the node's network (only the device plugin).
    #[arg(long)]
    no_network: bool,

    /// Do not run the RDMA device plugin.
    #[arg(long)]
    no_device_plugin: bool,

    /// Kubelet's device plugin directory: the plugin's sockets are created here and
    /// kubelet's registration socket `kubelet.sock` is expected here.
    #[arg(long, env = "SKEIN_DEVICE_PLUGIN_DIR", default_value = "/var/lib/kubelet/device-plugins")]
    device_plugin_dir: PathBuf,

    /// Root of the sysfs tree to discover RDMA devices in (`<root>/class/infiniband`,
    /// `<root>/class/net`). Point it at the host's /sys when running in a container
    /// that mounts it elsewhere.
    #[arg(long, env = "SKEIN_SYSFS_ROOT", default_value = "/sys")]
    sysfs_root: PathBuf,

    /// Root of the device tree in which `infiniband/uverbsN`, `umadN` and `rdma_cm` are
    /// looked up. Containers are always given the host paths under /dev/infiniband.
    #[arg(long, env = "SKEIN_DEV_ROOT", default_value = "/dev")]
    dev_root: PathBuf,

    /// RDMA device plugin configuration (JSON if it ends in .json, else YAML). Without
    /// it, every HCA is advertised as one exclusive `skein.dev/rdma` device.
    #[arg(long, env = "SKEIN_RDMA_CONFIG")]
    rdma_config: Option<PathBuf>,

    /// Address to serve Prometheus metrics (`/metrics`) and liveness (`/healthz`) on.
    #[arg(long, env = "SKEIN_METRICS_LISTEN", default_value = "0.0.0.0:9476")]
    metrics_listen: SocketAddr,

    /// Do not write the RDMA readiness node annotation even if an API client is available.
    #[arg(long)]
    no_annotation: bool,

    /// How often sysfs is re-read for port state changes and hot-plugged HCAs.
    #[arg(long, default_value = "250ms", value_parser = parse_duration)]
    discovery_interval: Duration,

    /// How often RoCE readiness is re-evaluated (it is also re-evaluated whenever the
    /// set of RoCE interfaces changes).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    readiness_interval: Duration,

    /// Log filter in `RUST_LOG` syntax, e.g. `info` or `skein_agent=debug`.
    #[arg(long, env = "SKEIN_LOG", default_value = "info")]
    log: String,

    /// Audit log of connections NetworkPolicy denied: at most this many lines per second
    /// (target `skein::policy_audit`; 0, the default, writes none).
    #[arg(long, env = "SKEIN_POLICY_AUDIT_LOG_RATE", default_value_t = 0)]
    policy_audit_log_rate: u32,
}

impl CniPaths {
    fn install(&self) -> CniInstall {
        CniInstall {
            plugin: self.cni_plugin.clone().unwrap_or_else(cniinstall::default_plugin),
            bin_dir: self.cni_bin_dir.clone(),
            conf_dir: self.cni_conf_dir.clone(),
            socket: self.cni_socket.clone(),
            chain: self.cni_chain.iter().filter(|name| !name.is_empty()).cloned().collect(),
            reference_dirs: self.cni_reference_dirs.clone(),
        }
    }
}

fn parse_port_range(text: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = text.split_once('-').ok_or_else(|| format!("{text:?} is not a range such as 30000-32767"))?;
    let lo: u16 = lo.trim().parse().map_err(|_| format!("{text:?}: {lo:?} is not a port"))?;
    let hi: u16 = hi.trim().parse().map_err(|_| format!("{text:?}: {hi:?} is not a port"))?;
    if lo == 0 || lo > hi {
        return Err(format!("{text:?}: the range must be 1-65535 with the first port not above the last"));
    }
    Ok((lo, hi))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.find(|c: char| !c.is_ascii_digit()).map_or((text, ""), |at| text.split_at(at));
    let value: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration such as 250ms or 30s"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(value)),
        "s" => Ok(Duration::from_secs(value)),
        "m" => Ok(Duration::from_secs(value.saturating_mul(60))),
        _ => Err(format!("{text:?}: unit must be ms, s or m")),
    }
    .and_then(|d| if d.is_zero() { Err(format!("{text:?} must be more than zero")) } else { Ok(d) })
}

/// The Kubernetes client: from --kubeconfig, else in-cluster; `None` when neither works.
async fn kube_client(args: &Args) -> anyhow::Result<Option<kube::Client>> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None => match kube::Config::incluster() {
            Ok(config) => config,
            Err(e) => {
                warn!(error = %e, "not in a cluster and no --kubeconfig: no Kubernetes API");
                return Ok(None);
            }
        },
    };
    Ok(Some(kube::Client::try_from(config).context("building the Kubernetes client")?))
}

fn network_settings(args: &Args, node_name: String) -> anyhow::Result<NetworkSettings> {
    let master = match (&args.master_service, args.master.is_empty()) {
        (Some(service), _) => {
            let (namespace, name) = service
                .split_once('/')
                .filter(|(ns, n)| !ns.is_empty() && !n.is_empty() && !n.contains('/'))
                .with_context(|| format!("--master-service {service:?}: expected NAMESPACE/NAME"))?;
            MasterLocation::Service { namespace: namespace.to_owned(), name: name.to_owned() }
        }
        (None, false) => MasterLocation::Endpoints(args.master.clone()),
        (None, true) => {
            bail!("the node network needs the master: give --master URL or --master-service NAMESPACE/NAME")
        }
    };
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let workers = args.workers.unwrap_or(cpus / 2).max(1);
    Ok(NetworkSettings {
        node_name,
        master,
        tls: MasterTls {
            ca: args.master_ca.clone(),
            ca_config_map: Some(
                args.master_ca_configmap
                    .split_once('/')
                    .filter(|(ns, n)| !ns.is_empty() && !n.is_empty() && !n.contains('/'))
                    .map(|(ns, n)| (ns.to_owned(), n.to_owned()))
                    .with_context(|| {
                        format!("--master-ca-configmap {:?}: expected NAMESPACE/NAME", args.master_ca_configmap)
                    })?,
            ),
            token: Some(args.token_file.clone()),
            cert: args.tls_cert.clone(),
            key: args.tls_key.clone(),
            server_name: args.master_server_name.clone(),
        },
        tunnel_ip: args.tunnel_ip,
        uplink_interface: args.uplink_interface.clone(),
        cluster_cidrs: args.cluster_cidr.clone(),
        service_cidrs: args.service_cidr.clone(),
        cni_socket: args.cni.cni_socket.clone(),
        state_dir: args.state_dir.clone(),
        cni_install: (!args.no_cni_install).then(|| args.cni.install()),
        add_timeout: args.add_timeout,
        pod_mtu: args.mtu,
        switch: SwitchConfig {
            workers,
            busy_poll: Duration::from_micros(args.busy_poll_us),
            port: PortConfig { ring_bytes: args.ring_mib.saturating_mul(1 << 20), ..PortConfig::default() },
            ..SwitchConfig::default()
        },
        datapath_socket: args.datapath_socket.clone(),
        uplink_ports: UplinkPorts { node_ports: args.node_port_range, snat_ports: args.snat_port_range },
        gateway_wait: Duration::from_secs(10),
        stale_port_interval: args.stale_port_interval,
        policy_audit_rate: args.policy_audit_log_rate,
        conntrack: ConntrackSettings {
            max_connections: args.ct_max_connections as usize,
            early_drop: !args.ct_no_early_drop,
            nat_attempts: args.ct_nat_attempts,
            limits: ConntrackLimits { pod_zone: args.ct_pod_zone_limit, gateway_zone: args.ct_gateway_zone_limit },
        },
    })
}

fn control_request(state_dir: &Path, request: &str) -> anyhow::Result<()> {
    let body = controlsock::request(&state_dir.join("control.sock"), request).map_err(anyhow::Error::msg)?;
    print!("{body}");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = cli.run;
    match cli.command {
        None => {}
        Some(Command::InstallCni(i)) => {
            tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new("info")).init();
            let install = i.paths.install();
            if i.plugins_only {
                install.install_plugin().context("installing the CNI plugin")?;
                let versions = install.prepare_chain().context("checking the CNI plugin chain")?;
                info!(
                    cni_version = %versions.cni_version,
                    cni_versions = ?versions.cni_versions.iter().map(|v| v.as_str()).collect::<Vec<_>>(),
                    "CNI plugins installed; the agent writes the conflist once it can network"
                );
                return Ok(());
            }
            return install.run().context("installing the CNI plugin");
        }
        Some(Command::Trace { packet, ct_next, state_dir }) => {
            return control_request(&state_dir, &format!("trace {packet}\n{}", ct_next.join("\n")));
        }
        Some(Command::DumpFlows { state_dir }) => return control_request(&state_dir, "dump-flows"),
        Some(Command::DumpCache { state_dir }) => return control_request(&state_dir, "dump-cache"),
        Some(Command::DumpConntrack { state_dir }) => return control_request(&state_dir, "dump-conntrack"),
        Some(Command::Stats { state_dir }) => return control_request(&state_dir, "stats"),
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log).with_context(|| format!("--log {:?}", args.log))?,
        )
        .init();

    // The build id tells two builds of one version apart (a rolling upgrade's log shows
    // which binary runs): `SKEIN_BUILD_ID` at build time, "dev" without it.
    info!(
        version = env!("CARGO_PKG_VERSION"),
        build = option_env!("SKEIN_BUILD_ID").unwrap_or("dev"),
        "skein-agent starting"
    );
    let shutdown = CancellationToken::new();
    let mut registry = Registry::default();
    let device_plugin_metrics = DevicePluginMetrics::register(&mut registry);
    let net_metrics = NetMetrics::register(&mut registry);
    let registry = Arc::new(registry);

    let listener = metrics::bind(args.metrics_listen)
        .await
        .with_context(|| format!("binding metrics address {}", args.metrics_listen))?;
    let metrics_task = tokio::spawn(metrics::serve(listener, registry, shutdown.clone()));

    let client = kube_client(&args).await?;
    let _network = if args.no_network {
        info!("--no-network: the node network is not run");
        None
    } else {
        let node = args.node_name.clone().context("the node network needs --node-name (NODE_NAME)")?;
        let settings = network_settings(&args, node)?;
        let client =
            client.clone().context("the node network needs the Kubernetes API: give --kubeconfig or run in a pod")?;
        Some(agent::start(settings, client, net_metrics, shutdown.clone()).await?)
    };

    let device_plugin = if args.no_device_plugin {
        None
    } else {
        if let Err(problem) = deviceplugin::check_plugin_dir(&args.device_plugin_dir) {
            warn!(%problem, "device plugin directory not usable yet; will keep trying");
        }
        let annotator: Option<Arc<dyn NodeAnnotator>> = match (&client, &args.node_name, args.no_annotation) {
            (Some(client), Some(node), false) => Some(Arc::new(KubeNodeAnnotator::new(client.clone(), node.clone()))),
            (_, None, false) => {
                warn!("no --node-name (NODE_NAME): the readiness annotation is not written");
                None
            }
            _ => None,
        };
        let settings = DevicePluginSettings {
            roots: DiscoveryRoots { sysfs: args.sysfs_root.clone(), dev: args.dev_root.clone() },
            config: args.rdma_config.clone().map_or(ConfigSource::Default, ConfigSource::File),
            discovery_interval: args.discovery_interval,
            readiness_interval: args.readiness_interval,
            ..DevicePluginSettings::new(&args.device_plugin_dir)
        };
        let deps = DevicePluginDeps { metrics: device_plugin_metrics, annotator, dcb: Arc::new(NetlinkDcb) };
        match deviceplugin::launch(settings, deps, shutdown.clone()) {
            DevicePluginStatus::Running(running) => Some(running),
            // Already logged by `launch`; the agent's other functions carry on.
            DevicePluginStatus::Disabled(_) => None,
        }
    };

    wait_for_signal().await?;
    info!("shutting down; pods' interfaces and the records that rebuild them stay");
    shutdown.cancel();
    if let Some(network) = &_network
        && !network.net.save_flows(std::time::Duration::from_secs(5))
    {
        warn!("the installed flows were not saved within 5 s; a restart restores older ones until the master answers");
    }
    if let Some(device_plugin) = device_plugin {
        device_plugin.wait().await;
    }
    let _ = metrics_task.await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    tokio::select! {
        _ = terminate.recv() => {}
        result = tokio::signal::ctrl_c() => result.context("waiting for SIGINT")?,
    }
    Ok(())
}
