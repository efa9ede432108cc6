//! The agent side of the southbound stream over gRPC: connect, register, follow the view,
//! acknowledge every installed version, ask for a resync when a delta does not apply, and
//! reconnect (with backoff) when the stream ends — e.g. when the master restarts or the
//! leader changes. The node agent uses it; so do the master's tests and its bench, as
//! in-process agents.
//!
//! `http://` endpoints are plaintext; `https://` endpoints use TLS with
//! [`ClientSettings::tls`] (the CA to trust, optionally a client certificate). The agent
//! proves its node with [`ClientSettings::token`], a bearer token sent as
//! `authorization` metadata and re-read (from its file) on every connection, since kubelet
//! rotates projected tokens.
//!
//! Liveness: connecting (TCP, TLS, the master's answer to the subscription) is bounded by
//! [`ClientSettings::connect_timeout`], and HTTP/2 keepalive pings every
//! [`ClientSettings::keepalive_interval`] end a stream whose master stopped answering
//! without closing the connection (a dead node, a partition), so the agent reconnects —
//! to the new leader — instead of waiting forever.
//!
//! "Installing" is holding the view, plus — when [`ClientSettings::installer`] is set — the
//! installer's work (the node agent translates the view into datapath flows) between
//! [`Follower::apply`] and the ack: a version is acknowledged only once installed. Each
//! applied message is also reported on [`AgentClient::events`].

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skein_netmodel::annotations::Encap;
use skein_netmodel::southbound::ChassisView;
use skein_proto::southbound::v1 as pb;
use skein_proto::southbound::v1::southbound_client::SouthboundClient;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use tracing::{debug, info, warn};

use crate::convert::{encap_to_proto, ip_to_proto};
use crate::follower::{Applied, Follower};
use crate::tls::{ClientTls, append_sources, error_chain};

/// What an agent registers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// The node the agent runs on.
    pub node_name: String,
    /// The chassis id (kept across agent restarts).
    pub chassis_id: String,
    /// Tunnel endpoint address.
    pub tunnel_ip: IpAddr,
    /// Encapsulation.
    pub encap: Encap,
}

impl Registration {
    /// The `Register` message in `schema_version`.
    pub fn to_proto(&self, schema_version: u32) -> pb::Register {
        pb::Register {
            schema_version,
            node_name: self.node_name.clone(),
            chassis_id: self.chassis_id.clone(),
            tunnel_ip: ip_to_proto(self.tunnel_ip),
            encap: encap_to_proto(self.encap).into(),
        }
    }
}

/// Installs a chassis view between its application and its ack (see [`ClientSettings::installer`]).
pub trait Installer: Send + Sync + std::fmt::Debug + 'static {
    /// Installs `view` (whole: the installer diffs against what it installed before).
    /// An error withholds the ack; the view stays applied, so the next message installs
    /// the whole view again.
    fn install(&self, view: &ChassisView) -> Result<(), String>;
}

/// Something the client did, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// A stream to the master was opened and the registration sent.
    Connected,
    /// A message was applied and its version acknowledged.
    Applied(Applied),
    /// A message did not apply; a resync was requested.
    Resync(String),
    /// The stream ended (it is reopened after a backoff).
    Disconnected(String),
    /// A message applied but the installer failed: the version is not acknowledged.
    InstallFailed {
        /// The version not installed.
        version: u64,
        /// The installer's error.
        error: String,
    },
}

/// Where the bearer token comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// A file re-read on every connection (a projected ServiceAccount token that kubelet
    /// rotates).
    File(PathBuf),
    /// A fixed token (tests).
    Value(String),
}

impl std::fmt::Debug for TokenSource {
    // The token stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::File(path) => f.debug_tuple("File").field(path).finish(),
            TokenSource::Value(_) => f.write_str("Value(<redacted>)"),
        }
    }
}

impl TokenSource {
    /// The current token; an error names the file.
    pub fn read(&self) -> Result<String, String> {
        let token = match self {
            TokenSource::File(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("reading the token file {}: {e}", path.display()))?
                .trim()
                .to_owned(),
            TokenSource::Value(token) => token.clone(),
        };
        if token.is_empty() || token.contains(|c: char| c.is_control() || c == ' ') {
            return Err(match self {
                TokenSource::File(path) => format!("the token file {} holds no usable token", path.display()),
                TokenSource::Value(_) => "the token is empty or has spaces or control characters".to_owned(),
            });
        }
        Ok(token)
    }
}

/// Settings of [`AgentClient::start`].
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// The master's southbound endpoint: `http://127.0.0.1:6643` (plaintext) or
    /// `https://skein-master.kube-system.svc:6643` (TLS, with [`ClientSettings::tls`]).
    pub endpoint: String,
    /// TLS for an `https://` endpoint (required there, refused with `http://`).
    pub tls: Option<ClientTls>,
    /// What to register.
    pub registration: Registration,
    /// Schema version to offer.
    pub schema_version: u32,
    /// First reconnect delay (doubles up to `max_backoff`).
    pub min_backoff: Duration,
    /// Longest reconnect delay.
    pub max_backoff: Duration,
    /// Installs each applied view before its ack (none: the view is only held).
    pub installer: Option<Arc<dyn Installer>>,
    /// The bearer token proving the agent's node (the master refuses streams without one).
    pub token: Option<TokenSource>,
    /// Longest time to connect and have the subscription answered.
    pub connect_timeout: Duration,
    /// Interval of HTTP/2 keepalive pings (also sent while no stream is open).
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is given up.
    pub keepalive_timeout: Duration,
}

impl ClientSettings {
    /// Defaults: no TLS, no token, this build's schema, backoff 100 ms → 5 s, connect
    /// timeout 5 s, keepalive every 5 s with 5 s to answer (a silent master is noticed
    /// within 10 s).
    pub fn new(endpoint: impl Into<String>, registration: Registration) -> ClientSettings {
        ClientSettings {
            endpoint: endpoint.into(),
            tls: None,
            registration,
            schema_version: pb::SCHEMA_VERSION,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            installer: None,
            token: None,
            connect_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(5),
            keepalive_timeout: Duration::from_secs(5),
        }
    }
}

impl ClientSettings {
    /// The tonic endpoint, with TLS configured for `https://`. Fails when the endpoint does
    /// not parse, when its scheme and [`ClientSettings::tls`] disagree, or when the TLS
    /// material is unusable; the error names the setting. [`AgentClient`] calls it on each
    /// connection attempt (and reports the error as [`ClientEvent::Disconnected`]); an agent
    /// calls it at start to refuse a bad configuration at once.
    pub fn channel_endpoint(&self) -> Result<Endpoint, String> {
        let endpoint = Endpoint::from_shared(self.endpoint.clone())
            .map_err(|e| format!("endpoint {:?}: {}", self.endpoint, error_chain(&e)))?;
        let endpoint = endpoint
            .connect_timeout(self.connect_timeout)
            .tcp_keepalive(Some(self.keepalive_interval))
            .http2_keep_alive_interval(self.keepalive_interval)
            .keep_alive_timeout(self.keepalive_timeout)
            .keep_alive_while_idle(true);
        let https = match endpoint.uri().scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("endpoint {:?}: the scheme must be http:// or https://", self.endpoint)),
        };
        match (&self.tls, https) {
            (None, false) => Ok(endpoint),
            (None, true) => {
                Err(format!("endpoint {:?} is https:// but no TLS settings (the CA to trust) are given", self.endpoint))
            }
            (Some(_), false) => Err(format!(
                "endpoint {:?} is plaintext http:// but TLS settings are given; use https://",
                self.endpoint
            )),
            (Some(tls), true) => {
                tls.check()?;
                endpoint.tls_config(tls.to_tonic()).map_err(|e| format!("TLS settings: {}", error_chain(&e)))
            }
        }
    }
}

/// A running agent client. Dropping it stops the client.
#[derive(Debug)]
pub struct AgentClient {
    follower: Arc<Mutex<Follower>>,
    version: watch::Receiver<Option<u64>>,
    events: mpsc::UnboundedReceiver<ClientEvent>,
    task: JoinHandle<()>,
}

impl Drop for AgentClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl AgentClient {
    /// Starts following the master at `settings.endpoint` (retrying until it answers).
    pub fn start(settings: ClientSettings) -> AgentClient {
        let (version_tx, version) = watch::channel(None);
        let (events_tx, events) = mpsc::unbounded_channel();
        let follower = Arc::new(Mutex::new(Follower::new(settings.registration.node_name.clone())));
        let task = tokio::spawn(run(settings, Arc::clone(&follower), version_tx, events_tx));
        AgentClient { follower, version, events, task }
    }

    /// A copy of the view as last installed (`None` before the first snapshot).
    pub fn view(&self) -> Option<ChassisView> {
        self.follower.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).view().cloned()
    }

    /// The installed version, updated after each applied message (`None` before the
    /// first snapshot).
    pub fn version(&self) -> watch::Receiver<Option<u64>> {
        self.version.clone()
    }

    /// What the client did, in order.
    pub fn events(&mut self) -> &mut mpsc::UnboundedReceiver<ClientEvent> {
        &mut self.events
    }
}

async fn run(
    settings: ClientSettings,
    follower: Arc<Mutex<Follower>>,
    version: watch::Sender<Option<u64>>,
    events: mpsc::UnboundedSender<ClientEvent>,
) {
    let node = settings.registration.node_name.clone();
    let mut backoff = settings.min_backoff;
    loop {
        let reason = match session(&settings, &follower, &version, &events, &mut backoff).await {
            Ok(()) => "stream closed by the master".to_owned(),
            Err(e) => e,
        };
        debug!(node = %node, %reason, "southbound stream ended");
        if events.send(ClientEvent::Disconnected(reason)).is_err() && version.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(settings.max_backoff);
    }
}

async fn session(
    settings: &ClientSettings,
    follower: &Mutex<Follower>,
    version: &watch::Sender<Option<u64>>,
    events: &mpsc::UnboundedSender<ClientEvent>,
    backoff: &mut Duration,
) -> Result<(), String> {
    let endpoint = settings.channel_endpoint()?;
    let token = settings.token.as_ref().map(TokenSource::read).transpose()?;
    let (tx, rx) = mpsc::channel::<pb::AgentMessage>(16);
    let register = pb::AgentMessage {
        message: Some(pb::agent_message::Message::Register(settings.registration.to_proto(settings.schema_version))),
    };
    tx.send(register).await.map_err(|_| "stream closed before registering".to_owned())?;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(token) = token {
        let value = tonic::metadata::MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| "the token is not valid in a gRPC header".to_owned())?;
        request.metadata_mut().insert("authorization", value);
    }
    // A master that accepts the connection but never answers (a half-dead node, a
    // blackholed route) must not hold the agent: bound the whole handshake.
    let subscribe = async {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("connecting to {}: {}", settings.endpoint, error_chain(&e)))?;
        let mut client = SouthboundClient::new(channel).max_decoding_message_size(usize::MAX);
        client.subscribe(request).await.map_err(status_text)
    };
    let mut inbound = tokio::time::timeout(settings.connect_timeout * 2, subscribe)
        .await
        .map_err(|_| {
            format!("connecting to {}: no answer within {:?}", settings.endpoint, settings.connect_timeout * 2)
        })??
        .into_inner();
    let _ = events.send(ClientEvent::Connected);
    info!(node = %settings.registration.node_name, endpoint = %settings.endpoint, "subscribed to the southbound stream");
    while let Some(message) = inbound.next().await {
        let message = message.map_err(status_text)?;
        let (result, view) = {
            let mut follower = follower.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let result = follower.apply(&message);
            let view = match (&result, &settings.installer) {
                (Ok(_), Some(_)) => follower.view().cloned(),
                _ => None,
            };
            (result, view)
        };
        let reply = match result {
            Ok(applied) => {
                *backoff = settings.min_backoff;
                let applied_version = applied.version();
                if let (Some(installer), Some(view)) = (settings.installer.clone(), view) {
                    let outcome = tokio::task::spawn_blocking(move || installer.install(&view))
                        .await
                        .unwrap_or_else(|e| Err(format!("the installer panicked: {e}")));
                    if let Err(error) = outcome {
                        warn!(version = applied_version, %error, "view not installed; not acknowledged");
                        let _ = events.send(ClientEvent::InstallFailed { version: applied_version, error });
                        continue;
                    }
                }
                version.send_replace(Some(applied_version));
                let _ = events.send(ClientEvent::Applied(applied));
                pb::agent_message::Message::Ack(pb::Ack {
                    schema_version: settings.schema_version,
                    version: applied_version,
                })
            }
            Err(e) => {
                warn!(error = %e, "southbound message not applied; asking for a snapshot");
                let _ = events.send(ClientEvent::Resync(e.to_string()));
                pb::agent_message::Message::Resync(pb::Resync {
                    schema_version: settings.schema_version,
                    reason: e.to_string(),
                })
            }
        };
        tx.send(pb::AgentMessage { message: Some(reply) }).await.map_err(|_| "stream closed".to_owned())?;
    }
    Ok(())
}

/// A status as `code: message[: source chain]` (a TLS refusal arrives as a transport error
/// whose reason is in the sources).
fn status_text(status: tonic::Status) -> String {
    use std::error::Error as _;
    let mut text = format!("{}: {}", status.code(), status.message());
    append_sources(&mut text, status.source());
    text
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::tls::TlsIdentity;

    fn settings(endpoint: &str) -> ClientSettings {
        ClientSettings::new(
            endpoint,
            Registration {
                node_name: "n1".to_owned(),
                chassis_id: "c1".to_owned(),
                tunnel_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                encap: Encap::Geneve,
            },
        )
    }

    fn pems() -> (String, String, String) {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap().pem();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["n1".to_owned()]).unwrap().signed_by(&key, &issuer).unwrap();
        (ca, cert.pem(), key.serialize_pem())
    }

    #[test]
    fn the_token_is_read_from_its_file_on_each_call_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let source = TokenSource::File(path.clone());
        let e = source.read().unwrap_err();
        assert!(e.contains(&path.display().to_string()), "{e}");
        std::fs::write(&path, "first.token\n").unwrap();
        assert_eq!(source.read().unwrap(), "first.token");
        // Kubelet rotated it: the next connection sends the new one.
        std::fs::write(&path, "second.token").unwrap();
        assert_eq!(source.read().unwrap(), "second.token");
        for bad in ["", "  \n", "two words"] {
            std::fs::write(&path, bad).unwrap();
            assert!(source.read().unwrap_err().contains("no usable token"), "{bad:?}");
        }
        assert!(TokenSource::Value("a\u{7}b".into()).read().is_err());
        assert_eq!(format!("{:?}", TokenSource::Value("secret".into())), "Value(<redacted>)");
    }

    #[test]
    fn the_scheme_and_the_tls_settings_must_agree() {
        let (ca, cert, key) = pems();
        settings("http://127.0.0.1:6643").channel_endpoint().unwrap();
        let e = settings("https://127.0.0.1:6643").channel_endpoint().unwrap_err();
        assert!(e.contains("no TLS settings"), "{e}");
        let e = settings("ftp://127.0.0.1:6643").channel_endpoint().unwrap_err();
        assert!(e.contains("http:// or https://"), "{e}");

        let mut tls = ClientTls::new(ca.clone());
        let mut s = settings("http://127.0.0.1:6643");
        s.tls = Some(tls.clone());
        assert!(s.channel_endpoint().unwrap_err().contains("use https://"));
        s.endpoint = "https://127.0.0.1:6643".to_owned();
        s.channel_endpoint().unwrap();

        tls.server_name = Some("skein-master.kube-system.svc".to_owned());
        tls.identity = Some(TlsIdentity { certificate_pem: cert.clone().into(), key_pem: key.into() });
        s.tls = Some(tls.clone());
        s.channel_endpoint().unwrap();

        // A key that is not the certificate's.
        let other_key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        tls.identity = Some(TlsIdentity { certificate_pem: cert.into(), key_pem: other_key.into() });
        s.tls = Some(tls.clone());
        let e = s.channel_endpoint().unwrap_err();
        assert!(e.starts_with("TLS settings: "), "{e}");

        s.tls = Some(ClientTls::new("not PEM"));
        let e = s.channel_endpoint().unwrap_err();
        assert!(e.starts_with("tls.ca_certificate_pem: "), "{e}");
    }
}
