//! Wiring: the Kubernetes watchers, the controller, leader election, the southbound gRPC
//! server and the HTTP endpoints of one master replica. [`Master::start`] binds the ports
//! and starts everything; the binary and the tests drive the same code.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::registry::Registry;
use skein_netmodel::{Engine, NetworkConfig};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::annotate::Backoff;
use crate::auth::{AuthSettings, TokenReviewAuthenticator};
use crate::controller::{Controller, EventSink};
use crate::grpc::SouthboundService;
use crate::leader::{self, LeaderError, LeaseSettings};
use crate::metrics::MasterMetrics;
use crate::pki::{self, PkiSettings};
use crate::signing::AnnotationSigner;
use crate::state::Shared;
use crate::tls::ServerTls;
use crate::{http, watch as watchers};

/// Everything a master replica needs to start.
#[derive(Clone, Debug)]
pub struct MasterSettings {
    /// Cluster networks, join subnets, MTU.
    pub network: NetworkConfig,
    /// Southbound gRPC address.
    pub grpc_listen: SocketAddr,
    /// TLS of the southbound gRPC server from files (`--grpc-tls-*`); `None`: the
    /// certificate the master issues itself from the CA in its Secret (`pki`).
    pub grpc_tls: Option<ServerTls>,
    /// Where the master keeps its CA, server certificate and signing key.
    pub pki: PkiSettings,
    /// How agents are authenticated.
    pub auth: AuthSettings,
    /// Most southbound streams one node may hold open.
    pub max_streams_per_node: usize,
    /// `/metrics`, `/healthz`, `/readyz` address.
    pub http_listen: SocketAddr,
    /// Leader election; `None`: this replica leads unconditionally (a single replica).
    pub lease: Option<LeaseSettings>,
    /// This replica's name (Lease holder, Event reporter).
    pub identity: String,
    /// Retry policy of annotation writes.
    pub backoff: Backoff,
}

/// Why a master stopped.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// Leadership was lost: the process should exit and be restarted.
    #[error(transparent)]
    Leadership(#[from] LeaderError),
    /// A listener failed.
    #[error("southbound gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// The master's keys could not be read or created.
    #[error("southbound keys: {0}")]
    Pki(#[from] pki::PkiError),
    /// The network configuration is invalid.
    #[error("network configuration: {0}")]
    Config(#[from] skein_netmodel::config::ConfigError),
    /// A port could not be bound.
    #[error("binding {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A running master replica.
pub struct Master {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    shared: Arc<Shared>,
    leading: watch::Receiver<bool>,
    synced: watch::Receiver<bool>,
    shutdown: CancellationToken,
    leader_task: Option<JoinHandle<Result<(), LeaderError>>>,
    task: JoinHandle<Result<(), MasterError>>,
}

impl std::fmt::Debug for Master {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Master").field("grpc_addr", &self.grpc_addr).field("http_addr", &self.http_addr).finish()
    }
}

impl Master {
    /// Binds the ports and starts the replica.
    pub async fn start(settings: MasterSettings, client: kube::Client) -> Result<Master, MasterError> {
        let mut registry = Registry::default();
        let metrics = MasterMetrics::register(&mut registry);
        let registry = Arc::new(registry);
        let engine = Engine::new(settings.network.clone())?;
        let started = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
        let master_id = format!("{}-{started}", settings.identity);
        let shared = Arc::new(Shared::new(engine, metrics.clone(), master_id));
        let shutdown = CancellationToken::new();
        let keys = pki::ensure(&client, &settings.pki).await?;
        let signer = AnnotationSigner::new(&keys.signing_key, keys.created.clone());
        let grpc_tls = settings.grpc_tls.clone().unwrap_or_else(|| keys.server_tls.clone());

        let grpc_listener = SouthboundService::bind(settings.grpc_listen)
            .await
            .map_err(|source| MasterError::Bind { address: settings.grpc_listen, source })?;
        let http_listener = http::bind(settings.http_listen)
            .await
            .map_err(|source| MasterError::Bind { address: settings.http_listen, source })?;
        let grpc_addr =
            grpc_listener.local_addr().map_err(|source| MasterError::Bind { address: settings.grpc_listen, source })?;
        let http_addr =
            http_listener.local_addr().map_err(|source| MasterError::Bind { address: settings.http_listen, source })?;

        let (leading_tx, leading) = watch::channel(false);
        let (synced_tx, synced) = watch::channel(false);
        let (watch_tx, watch_rx) = mpsc::unbounded_channel();
        watchers::start(&client, &watch_tx, &shutdown);
        drop(watch_tx);

        let controller = Controller::new(
            Arc::clone(&shared),
            Some(client.clone()),
            EventSink::new(client.clone(), &settings.identity),
            settings.network.clone(),
            settings.backoff,
            leading.clone(),
            synced_tx,
            watch_rx,
            shutdown.clone(),
        )
        .with_signer(signer);
        tokio::spawn(controller.run());
        tokio::spawn(http::serve(
            http_listener,
            registry,
            http::Readiness { leading: leading.clone(), synced: synced.clone() },
            shutdown.clone(),
        ));
        let authenticator = Arc::new(TokenReviewAuthenticator::new(client.clone(), settings.auth.clone()));
        let service = SouthboundService::new(
            Arc::clone(&shared),
            authenticator,
            settings.max_streams_per_node,
            leading.clone(),
            shutdown.clone(),
        );
        let grpc_task = tokio::spawn(service.serve(grpc_listener, grpc_tls));

        let leader_task = match settings.lease.clone() {
            Some(lease) => {
                info!(identity = %settings.identity, lease = %lease.name, "standing for leader");
                let stop = shutdown.clone();
                Some(tokio::spawn(async move {
                    let result = leader::run(client, lease, leading_tx, metrics, stop.clone()).await;
                    // A leader that stops leading stops the replica (the caller exits and is
                    // restarted, as client-go's users do).
                    stop.cancel();
                    result
                }))
            }
            None => {
                metrics.is_leader.set(1);
                leading_tx.send_replace(true);
                // Keep the sender alive for the life of the replica.
                let stop = shutdown.clone();
                tokio::spawn(async move {
                    stop.cancelled().await;
                    drop(leading_tx);
                });
                None
            }
        };
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            let result = tokio::select! {
                r = grpc_task => match r {
                    Ok(Ok(())) | Err(_) => Ok(()),
                    Ok(Err(e)) => Err(MasterError::Grpc(e)),
                },
                () = stop.cancelled() => Ok(()),
            };
            stop.cancel();
            result
        });
        Ok(Master { grpc_addr, http_addr, shared, leading, synced, shutdown, leader_task, task })
    }

    /// The southbound gRPC address (with the port actually bound).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The shared engine and southbound state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// True while this replica leads.
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// True once every kind has been listed.
    pub fn synced(&self) -> watch::Receiver<bool> {
        self.synced.clone()
    }

    /// Stops gracefully: a held lease is released so that a standby takes over at once.
    pub async fn stop(mut self) -> Result<(), MasterError> {
        self.shutdown.cancel();
        let leader = match self.leader_task.take() {
            Some(t) => t.await.unwrap_or(Ok(())),
            None => Ok(()),
        };
        let result = (&mut self.task).await.unwrap_or(Ok(()));
        leader?;
        result
    }

    /// Stops at once, as a crash would: the lease is not released, so a standby takes
    /// over only when it expires.
    pub async fn kill(mut self) {
        if let Some(t) = self.leader_task.take() {
            t.abort();
            let _ = t.await;
        }
        self.shutdown.cancel();
        let _ = (&mut self.task).await;
    }

    /// Waits until the replica stops by itself (leadership lost, server failure) or
    /// `stop` is called elsewhere; returns why.
    pub async fn wait(mut self) -> Result<(), MasterError> {
        let result = (&mut self.task).await.unwrap_or(Ok(()));
        let leader = match self.leader_task.take() {
            Some(t) => t.await.unwrap_or(Ok(())),
            None => Ok(()),
        };
        if let Err(e) = &leader {
            error!(error = %e, "leadership lost");
        }
        leader?;
        result
    }

    /// Requests a graceful stop without waiting (see [`Master::wait`]).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}
