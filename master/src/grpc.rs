//! The southbound gRPC service (`skein.southbound.v1.Southbound/Subscribe`): one
//! bidirectional stream per agent. The stream is authenticated first (`auth`: the agent's
//! bound ServiceAccount token names its node) and may register only for that node; the
//! registration is informational — the node's `skein.dev/chassis` annotation, which the
//! agent writes itself, is what the view is built from, and the master never rewrites it on
//! the stream's word. Then the master waits until the chassis has a view, sends the
//! snapshot, then the deltas, and records the agent's acks. Only the leader serves; a
//! standby answers `UNAVAILABLE`. Streams per node are limited, and HTTP/2 keepalives drop
//! the streams of agents that vanished without closing them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

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

use crate::auth::{self, NodeAuthenticator};
use crate::state::Shared;
use crate::tls::ServerTls;

/// Interval of the server's HTTP/2 keepalive pings.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a ping may go unanswered before the connection (and its streams) is dropped.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Open streams per node, shared by the service's clones.
#[derive(Clone, Default)]
struct StreamCounts(Arc<parking_lot::Mutex<HashMap<String, usize>>>);

/// One open stream of a node; dropping it frees the slot.
struct StreamSlot {
    counts: StreamCounts,
    node: String,
}

impl StreamCounts {
    fn take(&self, node: &str, max: usize) -> Option<StreamSlot> {
        let mut counts = self.0.lock();
        let open = counts.entry(node.to_owned()).or_insert(0);
        if *open >= max {
            return None;
        }
        *open += 1;
        Some(StreamSlot { counts: self.clone(), node: node.to_owned() })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock();
        if let Some(open) = counts.get_mut(&self.node) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                counts.remove(&self.node);
            }
        }
    }
}

/// The southbound service.
#[derive(Clone)]
pub struct SouthboundService {
    shared: Arc<Shared>,
    authenticator: Arc<dyn NodeAuthenticator>,
    max_streams_per_node: usize,
    streams: StreamCounts,
    leading: watch::Receiver<bool>,
    shutdown: CancellationToken,
}

impl SouthboundService {
    /// A service over `shared`; it serves while `leading` is true, only to streams that
    /// `authenticator` binds to a node, at most `max_streams_per_node` per node.
    pub fn new(
        shared: Arc<Shared>,
        authenticator: Arc<dyn NodeAuthenticator>,
        max_streams_per_node: usize,
        leading: watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) -> SouthboundService {
        SouthboundService {
            shared,
            authenticator,
            max_streams_per_node: max_streams_per_node.max(1),
            streams: StreamCounts::default(),
            leading,
            shutdown,
        }
    }

    /// Serves on `listener` over TLS with `tls` until `shutdown` is cancelled. There is no
    /// plaintext mode: the bearer tokens agents send must not cross the network in clear.
    pub async fn serve(self, listener: TcpListener, tls: ServerTls) -> Result<(), tonic::transport::Error> {
        let shutdown = self.shutdown.clone();
        let transport = if tls.requires_client_certificates() {
            "TLS, client certificates required, bearer tokens"
        } else {
            "TLS, bearer tokens"
        };
        if let Ok(address) = listener.local_addr() {
            info!(%address, transport, "serving the southbound gRPC stream");
        }
        // Keepalives find agents that vanished without closing their connection (a dead
        // node, a partition), so their streams and stream slots are freed.
        let mut server = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .tcp_keepalive(Some(KEEPALIVE_INTERVAL));
        // Name the crypto provider rather than rely on rustls guessing it from the crate
        // features compiled in (it refuses to guess when there are two).
        let _ = rustls::crypto::ring::default_provider().install_default();
        server = server.tls_config(tls.to_tonic())?;
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
        // Authenticate before reading anything from the stream.
        let token = auth::bearer_token(request.metadata()).map(str::to_owned);
        let authenticated = match token {
            None => Err(auth::AuthError::Missing { audience: auth::DEFAULT_AUDIENCE.to_owned() }),
            Some(token) => self.authenticator.node_of(&token).await,
        };
        let authenticated = match authenticated {
            Ok(node) => node,
            Err(e) => {
                warn!(?peer, error = %e, "southbound stream refused: not authenticated");
                self.shared.metrics().southbound_refused("unauthenticated");
                return Err(e.to_status());
            }
        };
        let mut inbound = request.into_inner();
        let first =
            inbound.message().await?.ok_or_else(|| Status::invalid_argument("stream closed before Register"))?;
        let Some(pb::agent_message::Message::Register(register)) = first.message else {
            return Err(Status::invalid_argument("the first message must be register"));
        };
        let (node, chassis, schema) = registration(&register)?;
        if node != authenticated {
            warn!(?peer, token_node = %authenticated, registered = %node, "southbound stream refused: registration for another node");
            self.shared.metrics().southbound_refused("wrong_node");
            return Err(Status::permission_denied(format!(
                "register.node_name: {node:?}, but the token is bound to node {authenticated:?}; an agent registers only for its own node"
            )));
        }
        let known = self.shared.with_engine(|e| e.state().nodes().get(&node).map(|n| n.chassis.clone()));
        match known {
            None => return Err(Status::not_found(format!("node {node} does not exist"))),
            Some(Some(current)) if current == chassis => {}
            // The annotation is the agent's to write (through the API server, which checks
            // who writes it); the stream's word never changes it.
            Some(current) => info!(
                node = %node,
                registered = %skein_netmodel::annotations::format_chassis(&chassis),
                annotated = ?current.map(|c| skein_netmodel::annotations::format_chassis(&c)),
                "registration differs from the node's chassis annotation; serving what the annotation says"
            ),
        }
        let Some(slot) = self.streams.take(&node, self.max_streams_per_node) else {
            warn!(node = %node, ?peer, max = self.max_streams_per_node, "southbound stream refused: too many streams for this node");
            self.shared.metrics().southbound_refused("too_many_streams");
            return Err(Status::resource_exhausted(format!(
                "node {node} already has {} open southbound streams",
                self.max_streams_per_node
            )));
        };
        let (tx, rx) = mpsc::channel(64);
        let service = self.clone();
        tokio::spawn(async move {
            let _slot = slot;
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
