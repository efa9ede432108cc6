//! `skein-master`: parses flags, sets up logging, and runs the master (or `dump`).
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::Parser;
use skein_master::Master;
use skein_master::cli::{Cli, Command, Options};
use tracing::info;

async fn client(options: &Options) -> anyhow::Result<kube::Client> {
    let config = match &options.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context("no --kubeconfig, and no in-cluster or default configuration")?,
    };
    kube::Client::try_from(config).context("building the Kubernetes client")
}

fn init_logging(options: &Options) -> anyhow::Result<()> {
    let filter =
        tracing_subscriber::EnvFilter::try_new(&options.log).with_context(|| format!("--log {:?}", options.log))?;
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(&cli.options)?;
    match cli.command.unwrap_or(Command::Run) {
        Command::Dump { chassis } => {
            let client = client(&cli.options).await?;
            let engine = skein_master::dump::load(&client, cli.options.network()).await?;
            let text = skein_master::dump::format(&engine, chassis.as_deref()).map_err(anyhow::Error::msg)?;
            print!("{text}");
            Ok(())
        }
        Command::Run => {
            let settings = cli.options.settings().map_err(anyhow::Error::msg)?;
            let client = client(&cli.options).await?;
            let master = Master::start(settings, client).await?;
            let stop = master.shutdown_token();
            tokio::spawn(async move {
                wait_for_signal().await;
                info!("shutting down");
                stop.cancel();
            });
            master.wait().await?;
            Ok(())
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
