//! The southbound gRPC service (`skein.southbound.v1.Southbound/Subscribe`): one
//! bidirectional stream per agent. The agent registers; the master records the
//! registration (the node's `skein.dev/chassis` annotation, if it differs), waits until
//! the chassis has a view, sends the snapshot, then the deltas, and records the agent's
//! acks. Only the leader serves; a standby answers `UNAVAILABLE`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use skein_netmodel::annotations::ChassisAnnotation;
use skein_proto::southbound::v1 as pb;
use skein_proto::southbound::v1::southbound_server::{Southbound, SouthboundServer};
use skein_southbound::convert::{encap_from_proto, ip_from_proto};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::state::Shared;
use crate::tls::ServerTls;

/// Records an agent's registration in the node's `skein.dev/chassis` annotation.
#[tonic::async_trait]
pub trait ChassisRegistrar: Send + Sync + 'static {
    /// Makes `node`'s chassis annotation equal `chassis` (an error says why not).
    async fn register(&self, node: &str, chassis: &ChassisAnnotation) -> Result<(), String>;
}

/// The southbound service.
#[derive(Clone)]
pub struct SouthboundService {
    shared: Arc<Shared>,
    registrar: Arc<dyn ChassisRegistrar>,
    leading: watch::Receiver<bool>,
    shutdown: CancellationToken,
}

impl SouthboundService {
    /// A service over `shared`; it serves while `leading` is true.
    pub fn new(
        shared: Arc<Shared>,
        registrar: Arc<dyn ChassisRegistrar>,
        leading: watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) -> SouthboundService {
        SouthboundService { shared, registrar, leading, shutdown }
    }

    /// Serves on `listener` until `shutdown` is cancelled: over TLS with `tls`, else
    /// plaintext.
    pub async fn serve(self, listener: TcpListener, tls: Option<ServerTls>) -> Result<(), tonic::transport::Error> {
        let shutdown = self.shutdown.clone();
        let transport = match &tls {
            None => "plaintext",
            Some(t) if t.requires_client_certificates() => "TLS, client certificates required",
            Some(_) => "TLS",
        };
        if let Ok(address) = listener.local_addr() {
            info!(%address, transport, "serving the southbound gRPC stream");
        }
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            // Name the crypto provider rather than rely on rustls guessing it from the
            // crate features compiled in (it refuses to guess when there are two).
            let _ = rustls::crypto::ring::default_provider().install_default();
            server = server.tls_config(tls.to_tonic())?;
        }
        server
            .add_service(SouthboundServer::new(self).max_decoding_message_size(16 << 20))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown.cancelled_owned())
            .await
    }

    /// Binds `address` for [`SouthboundService::serve`].
    pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
        TcpListener::bind(address).await
    }
}

fn registration(register: &pb::Register) -> Result<(String, ChassisAnnotation, u32), Status> {
    if register.schema_version == 0 {
        return Err(Status::invalid_argument("register.schema_version: missing (0)"));
    }
    if register.schema_version < pb::MIN_SCHEMA_VERSION {
        return Err(Status::failed_precondition(format!(
            "register.schema_version: {} is older than {}, the oldest this master serves; upgrade the agent",
            register.schema_version,
            pb::MIN_SCHEMA_VERSION
        )));
    }
    if register.node_name.is_empty() {
        return Err(Status::invalid_argument("register.node_name: empty"));
    }
    if register.chassis_id.is_empty() {
        return Err(Status::invalid_argument("register.chassis_id: empty"));
    }
    let tunnel_ip = ip_from_proto("register.tunnel_ip", &register.tunnel_ip)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let encap =
        encap_from_proto("register.encap", register.encap).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let schema = register.schema_version.min(pb::SCHEMA_VERSION);
    Ok((register.node_name.clone(), ChassisAnnotation { id: register.chassis_id.clone(), tunnel_ip, encap }, schema))
}

type MasterStream = Pin<Box<dyn Stream<Item = Result<pb::MasterMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Southbound for SouthboundService {
    type SubscribeStream = MasterStream;

    async fn subscribe(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        if !*self.leading.borrow() {
            return Err(Status::unavailable("this master is a standby; connect to the leader"));
        }
        let peer = request.remote_addr();
        let mut inbound = request.into_inner();
        let first =
            inbound.message().await?.ok_or_else(|| Status::invalid_argument("stream closed before Register"))?;
        let Some(pb::agent_message::Message::Register(register)) = first.message else {
            return Err(Status::invalid_argument("the first message must be register"));
        };
        let (node, chassis, schema) = registration(&register)?;
        let known = self.shared.with_engine(|e| e.state().nodes().get(&node).map(|n| n.chassis.clone()));
        match known {
            None => return Err(Status::not_found(format!("node {node} does not exist"))),
            Some(Some(current)) if current == chassis => {}
            Some(_) => self
                .registrar
                .register(&node, &chassis)
                .await
                .map_err(|e| Status::unavailable(format!("recording the registration of {node}: {e}")))?,
        }
        info!(node = %node, chassis_id = %chassis.id, tunnel_ip = %chassis.tunnel_ip, ?peer, schema, "agent registered");
        let (tx, rx) = mpsc::channel(64);
        let service = self.clone();
        tokio::spawn(async move {
            service.shared.metrics().southbound_streams.inc();
            let end = service.stream(&node, schema, inbound, &tx).await;
            service.shared.metrics().southbound_streams.dec();
            if let Err(status) = end {
                info!(node = %node, reason = %status.message(), "southbound stream ends");
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

impl SouthboundService {
    async fn stream(
        &self,
        node: &str,
        schema: u32,
        mut inbound: Streaming<pb::AgentMessage>,
        tx: &mpsc::Sender<Result<pb::MasterMessage, Status>>,
    ) -> Result<(), Status> {
        let mut leading = self.leading.clone();
        let mut generation = self.shared.generation();
        loop {
            // Wait for the chassis's view (the registration may still be on its way back
            // through the watch).
            let mut sub = loop {
                if let Some(sub) = self.shared.subscribe(node, schema) {
                    break sub;
                }
                tokio::select! {
                    changed = generation.changed() => if changed.is_err() { return Ok(()) },
                    message = inbound.message() => match message? {
                        None => return Ok(()),
                        Some(_) => continue,
                    },
                    () = self.shutdown.cancelled() => return Err(Status::unavailable("master shutting down")),
                }
            };
            let snapshot = pb::MasterMessage { message: Some(pb::master_message::Message::Snapshot(sub.snapshot)) };
            info!(node = %node, bytes = sub.snapshot_bytes, "snapshot sent");
            if tx.send(Ok(snapshot)).await.is_err() {
                self.shared.unsubscribe(node, sub.id);
                return Ok(());
            }
            let resubscribe = loop {
                tokio::select! {
                    delta = sub.deltas.recv() => match delta {
                        Some(d) => {
                            let m = pb::MasterMessage { message: Some(pb::master_message::Message::Delta(d)) };
                            if tx.send(Ok(m)).await.is_err() {
                                break false;
                            }
                        }
                        // The chassis went away, or this stream lagged.
                        None => break true,
                    },
                    message = inbound.message() => match message {
                        Ok(Some(pb::AgentMessage { message: Some(pb::agent_message::Message::Ack(ack)) })) => {
                            self.shared.ack(node, ack.version);
                        }
                        Ok(Some(pb::AgentMessage { message: Some(pb::agent_message::Message::Resync(r)) })) => {
                            warn!(node = %node, reason = %r.reason, "agent asks for a resync");
                            break true;
                        }
                        Ok(Some(_)) => {
                            self.shared.unsubscribe(node, sub.id);
                            return Err(Status::invalid_argument("only ack and resync may follow register"));
                        }
                        Ok(None) | Err(_) => break false,
                    },
                    changed = leading.changed() => if changed.is_err() || !*leading.borrow() {
                        self.shared.unsubscribe(node, sub.id);
                        return Err(Status::unavailable("this master lost the leadership"));
                    },
                    () = self.shutdown.cancelled() => {
                        self.shared.unsubscribe(node, sub.id);
                        return Err(Status::unavailable("master shutting down"));
                    }
                }
            };
            self.shared.unsubscribe(node, sub.id);
            if !resubscribe {
                return Ok(());
            }
            if !self.shared.has_chassis(node) {
                return Err(Status::not_found(format!("chassis {node} was removed; register again")));
            }
        }
    }
}
