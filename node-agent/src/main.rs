//! `skein-agent`: the Skein node agent binary. Parses flags, sets up logging, metrics
//! and the Kubernetes client, then runs the agent's components until SIGTERM/SIGINT.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use prometheus_client::registry::Registry;
use skein_agent::deviceplugin::annotation::{KubeNodeAnnotator, NodeAnnotator};
use skein_agent::deviceplugin::dcb::NetlinkDcb;
use skein_agent::deviceplugin::metrics::DevicePluginMetrics;
use skein_agent::deviceplugin::sysfs::DiscoveryRoots;
use skein_agent::deviceplugin::{self, ConfigSource, DevicePluginDeps, DevicePluginSettings, DevicePluginStatus};
use skein_agent::metrics;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Skein node agent.
///
/// Runs the RDMA device plugin: discovers RDMA HCAs from sysfs, advertises them to
/// kubelet through the device plugin API v1beta1, gives them to containers, and reports
/// RoCE QoS readiness in logs, in metrics and in the node annotation
/// `skein.dev/rdma-readiness`. A bad device plugin configuration turns the device
/// plugin off (and says why) while the rest of the agent keeps running.
#[derive(Debug, Parser)]
#[command(name = "skein-agent", version)]
struct Args {
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

    /// Name of this node: the Node whose `skein.dev/rdma-readiness` annotation is set.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,

    /// Address to serve Prometheus metrics on (`/metrics`).
    #[arg(long, env = "SKEIN_METRICS_LISTEN", default_value = "0.0.0.0:9476")]
    metrics_listen: SocketAddr,

    /// Kubeconfig file for the Kubernetes API. Without it the in-cluster service
    /// account is used when running in a pod; otherwise the annotation is not written.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,

    /// Do not write the readiness node annotation even if an API client is available.
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

async fn kube_annotator(args: &Args) -> anyhow::Result<Option<Arc<dyn NodeAnnotator>>> {
    if args.no_annotation {
        return Ok(None);
    }
    let Some(node) = args.node_name.clone() else {
        warn!("no --node-name (NODE_NAME): the readiness annotation is not written");
        return Ok(None);
    };
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
                warn!(error = %e, "not in a cluster and no --kubeconfig: the readiness annotation is not written");
                return Ok(None);
            }
        },
    };
    let client = kube::Client::try_from(config).context("building the Kubernetes client")?;
    Ok(Some(Arc::new(KubeNodeAnnotator::new(client, node))))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log).with_context(|| format!("--log {:?}", args.log))?,
        )
        .init();

    let shutdown = CancellationToken::new();
    let mut registry = Registry::default();
    let device_plugin_metrics = DevicePluginMetrics::register(&mut registry);
    let registry = Arc::new(registry);

    let listener = metrics::bind(args.metrics_listen)
        .await
        .with_context(|| format!("binding metrics address {}", args.metrics_listen))?;
    let metrics_task = tokio::spawn(metrics::serve(listener, registry, shutdown.clone()));

    if let Err(problem) = deviceplugin::check_plugin_dir(&args.device_plugin_dir) {
        warn!(%problem, "device plugin directory not usable yet; will keep trying");
    }
    let annotator = kube_annotator(&args).await?;
    let settings = DevicePluginSettings {
        roots: DiscoveryRoots { sysfs: args.sysfs_root.clone(), dev: args.dev_root.clone() },
        config: args.rdma_config.clone().map_or(ConfigSource::Default, ConfigSource::File),
        discovery_interval: args.discovery_interval,
        readiness_interval: args.readiness_interval,
        ..DevicePluginSettings::new(&args.device_plugin_dir)
    };
    let deps = DevicePluginDeps { metrics: device_plugin_metrics, annotator, dcb: Arc::new(NetlinkDcb) };
    let device_plugin = match deviceplugin::launch(settings, deps, shutdown.clone()) {
        DevicePluginStatus::Running(running) => Some(running),
        // Already logged by `launch`; the agent's other functions carry on.
        DevicePluginStatus::Disabled(_) => None,
    };

    wait_for_signal().await?;
    info!("shutting down");
    shutdown.cancel();
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
