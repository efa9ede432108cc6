//! Shared set-up of the master's integration tests: the kube-fake API server, masters on
//! loopback ports, in-process agents over real gRPC, and bounded waits.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::{Value, json};
use skein_kube_fake::{FakeApiServer, Kind};
use skein_master::annotate::Backoff;
use skein_master::auth::AuthSettings;
use skein_master::leader::LeaseSettings;
use skein_master::pki::PkiSettings;
use skein_master::{Master, MasterSettings};
use skein_netmodel::NetworkConfig;
use skein_netmodel::annotations::Encap;
use skein_netmodel::southbound::ChassisView;
use skein_southbound::{AgentClient, ClientEvent, ClientSettings, ClientTls, Registration, TlsIdentity, TokenSource};

/// The longest any wait in these tests lasts.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn settings(identity: &str, lease: Option<LeaseSettings>, grpc: SocketAddr) -> MasterSettings {
    MasterSettings {
        network: NetworkConfig::default(),
        grpc_listen: grpc,
        grpc_tls: None,
        pki: PkiSettings::new("kube-system"),
        auth: AuthSettings::new("kube-system", AGENT_ACCOUNT),
        max_streams_per_node: 2,
        http_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        lease,
        identity: identity.to_owned(),
        backoff: Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
            rejected_retry: Duration::from_millis(500),
        },
    }
}

pub fn any_port() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

pub async fn start_master(server: &FakeApiServer, identity: &str) -> Master {
    Master::start(settings(identity, None, any_port()), server.client()).await.expect("master starts")
}

/// The agents' ServiceAccount (in `kube-system`).
pub const AGENT_ACCOUNT: &str = "skein-agent";
/// The southbound audience.
pub const AUDIENCE: &str = "skein.dev/southbound";

/// A token of `account` (in `kube-system`, created if missing) for `audience`, bound to
/// Node `node`, as kubelet would request it for the agent pod on that node.
pub fn token_for(server: &FakeApiServer, account: &str, audience: &str, node: &str) -> String {
    if server.get(Kind::ServiceAccount, Some("kube-system"), account).is_none() {
        server
            .insert(Kind::ServiceAccount, json!({"metadata": {"name": account, "namespace": "kube-system"}}))
            .expect("service account created");
    }
    let request = json!({"spec": {"audiences": [audience], "expirationSeconds": 600,
                                  "boundObjectRef": {"kind": "Node", "apiVersion": "v1", "name": node}}});
    let answer =
        server.store().request_token("kube-system", account, &request).expect("token issued (does the node exist?)");
    answer["status"]["token"].as_str().expect("a token").to_owned()
}

/// The agent token of `node`.
pub fn node_token(server: &FakeApiServer, node: &str) -> String {
    token_for(server, AGENT_ACCOUNT, AUDIENCE, node)
}

/// The master's CA, from the ConfigMap it publishes (as an agent reads it).
pub fn master_ca(server: &FakeApiServer) -> ClientTls {
    let map = server.get(Kind::ConfigMap, Some("kube-system"), "skein-southbound-ca").expect("the CA ConfigMap");
    let mut tls = ClientTls::new(map["data"]["ca.crt"].as_str().expect("ca.crt").to_owned());
    tls.server_name = map["data"]["server-name"].as_str().map(str::to_owned);
    tls
}

/// The registration of the test agent of `node`.
pub fn registration(node: &str, tunnel: u8) -> Registration {
    Registration {
        node_name: node.to_owned(),
        chassis_id: format!("chassis-{node}"),
        tunnel_ip: IpAddr::V4(Ipv4Addr::new(198, 51, 100, tunnel)),
        encap: Encap::Geneve,
    }
}

/// Writes `node`'s chassis annotation as its agent does (through the API, not the stream).
pub fn write_chassis(server: &FakeApiServer, node: &str, tunnel: u8) {
    let registration = registration(node, tunnel);
    let value = skein_netmodel::annotations::format_chassis(&skein_netmodel::annotations::ChassisAnnotation {
        id: registration.chassis_id,
        tunnel_ip: registration.tunnel_ip,
        encap: Encap::Geneve,
    });
    let mut object = server.get(Kind::Node, None, node).expect("the node exists");
    object["metadata"]["annotations"]["skein.dev/chassis"] = json!(value);
    server.insert(Kind::Node, object).expect("node annotated");
}

/// Settings of an agent of `node` trusting the master's CA, with its node's token, not
/// started (the chassis annotation is not written).
pub fn agent_settings(server: &FakeApiServer, master_grpc: SocketAddr, node: &str, tunnel: u8) -> ClientSettings {
    let mut s = ClientSettings::new(format!("https://{master_grpc}"), registration(node, tunnel));
    s.tls = Some(master_ca(server));
    s.token = Some(TokenSource::Value(node_token(server, node)));
    s.min_backoff = Duration::from_millis(20);
    s.max_backoff = Duration::from_millis(200);
    s
}

/// The agent of `node`: writes its chassis annotation, then follows the master over TLS
/// with its node's token.
pub fn agent(server: &FakeApiServer, master_grpc: SocketAddr, node: &str, tunnel: u8) -> AgentClient {
    write_chassis(server, node, tunnel);
    AgentClient::start(agent_settings(server, master_grpc, node, tunnel))
}

/// Polls `check` every 20 ms until it returns `Some`, at most [`WAIT`].
pub async fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn add_node(server: &FakeApiServer, name: &str, ip: &str) {
    server
        .insert(
            Kind::Node,
            json!({"metadata": {"name": name}, "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}),
        )
        .expect("node created");
}

pub fn add_pod(server: &FakeApiServer, name: &str, node: &str) {
    server
        .insert(
            Kind::Pod,
            json!({
                "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 8080}]}]}
            }),
        )
        .expect("pod created");
}

pub fn add_service(server: &FakeApiServer, name: &str, cluster_ip: &str) {
    server
        .insert(
            Kind::Service,
            json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"clusterIP": cluster_ip, "selector": {"app": "web"},
                         "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}
            }),
        )
        .expect("service created");
}

pub fn add_slice(server: &FakeApiServer, service: &str, endpoints: &[(&str, &str)]) {
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|(ip, node)| json!({"addresses": [ip], "conditions": {"ready": true}, "nodeName": node}))
        .collect();
    server
        .insert(
            Kind::EndpointSlice,
            json!({
                "metadata": {"name": format!("{service}-1"), "namespace": "default",
                             "labels": {"kubernetes.io/service-name": service}},
                "addressType": "IPv4",
                "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
                "endpoints": eps
            }),
        )
        .expect("slice created");
}

pub fn annotation(
    server: &FakeApiServer,
    kind: Kind,
    namespace: Option<&str>,
    name: &str,
    key: &str,
) -> Option<String> {
    server.get(kind, namespace, name)?.pointer("/metadata/annotations")?.get(key)?.as_str().map(str::to_owned)
}

/// The pod's first address (without prefix), once annotated.
pub fn pod_ip(server: &FakeApiServer, name: &str) -> Option<String> {
    let text = annotation(server, Kind::Pod, Some("default"), name, "skein.dev/pod-networks")?;
    let net = skein_netmodel::annotations::parse_pod_networks(&text).ok()?;
    Some(net.ip_addresses.first()?.addr().to_string())
}

pub fn view_of(agent: &AgentClient) -> Option<ChassisView> {
    agent.view()
}

/// A throw-away certificate authority for the TLS tests (rcgen, ECDSA P-256).
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// The CA certificate, PEM.
    pub pem: String,
}

/// A certificate and its key, PEM.
pub struct TestCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("no names");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let key = rcgen::KeyPair::generate().expect("CA key");
        let pem = params.self_signed(&key).expect("CA certificate").pem();
        TestCa { issuer: rcgen::Issuer::new(params, key), pem }
    }

    fn issue(&self, name: &str, usage: rcgen::ExtendedKeyUsagePurpose) -> TestCert {
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("a DNS name");
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf certificate");
        TestCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }

    /// A server certificate for DNS name `name`.
    pub fn server(&self, name: &str) -> TestCert {
        self.issue(name, rcgen::ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate for `name`.
    pub fn client(&self, name: &str) -> TestCert {
        self.issue(name, rcgen::ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// The name in the test masters' certificates (the agents connect to 127.0.0.1 and check
/// this name instead).
pub const MASTER_NAME: &str = "skein-master.test";

/// An agent of `node` over TLS, trusting `ca`, with an optional client certificate.
pub fn tls_agent(
    server: &FakeApiServer,
    master_grpc: SocketAddr,
    node: &str,
    tunnel: u8,
    ca: &TestCa,
    identity: Option<&TestCert>,
) -> AgentClient {
    let mut s = ClientSettings::new(
        format!("https://{master_grpc}"),
        Registration {
            node_name: node.to_owned(),
            chassis_id: format!("chassis-{node}"),
            tunnel_ip: IpAddr::V4(Ipv4Addr::new(198, 51, 100, tunnel)),
            encap: Encap::Geneve,
        },
    );
    let mut tls = ClientTls::new(ca.pem.clone());
    tls.server_name = Some(MASTER_NAME.to_owned());
    tls.identity =
        identity.map(|c| TlsIdentity { certificate_pem: c.cert_pem.clone().into(), key_pem: c.key_pem.clone().into() });
    s.tls = Some(tls);
    s.token = Some(TokenSource::Value(node_token(server, node)));
    write_chassis(server, node, tunnel);
    s.min_backoff = Duration::from_millis(20);
    s.max_backoff = Duration::from_millis(200);
    s.channel_endpoint().expect("valid TLS settings");
    AgentClient::start(s)
}

/// Waits (at most [`WAIT`]) until `agent` has been refused `times` times in a row without
/// ever connecting; returns the last reason.
pub async fn refused(agent: &mut AgentClient, times: usize) -> String {
    let mut reasons = Vec::new();
    while reasons.len() < times {
        match tokio::time::timeout(WAIT, agent.events().recv()).await {
            Ok(Some(ClientEvent::Disconnected(reason))) => reasons.push(reason),
            Ok(Some(ClientEvent::Connected)) => {}
            Ok(Some(other)) => panic!("a refused agent got {other:?}"),
            Ok(None) => panic!("the agent stopped"),
            Err(_) => panic!("timed out waiting for the agent to be refused"),
        }
    }
    reasons.pop().unwrap_or_default()
}

/// A TCP relay that can go silent: [`Relay::freeze`] stops forwarding on every open
/// connection without closing it (no FIN, no RST), as a dead host or a partition does;
/// new connections go to the current target ([`Relay::set_target`]), as a Service sends
/// them to its ready endpoint.
pub struct Relay {
    pub addr: SocketAddr,
    target: std::sync::Arc<parking_lot::Mutex<SocketAddr>>,
    frozen: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind(any_port()).await.expect("relay binds");
        let addr = listener.local_addr().expect("relay address");
        let target = std::sync::Arc::new(parking_lot::Mutex::new(target));
        let (frozen, _) = tokio::sync::watch::channel(0u64);
        let (t, f) = (target.clone(), frozen.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else { continue };
                let to = *t.lock();
                // Connections opened before a freeze go silent; later ones are relayed.
                let generation = *f.borrow();
                let mut frozen = f.subscribe();
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(to).await else { return };
                    let (mut ri, mut wi) = inbound.into_split();
                    let (mut ro, mut wo) = outbound.into_split();
                    let relay = async {
                        tokio::select! {
                            _ = tokio::io::copy(&mut ri, &mut wo) => {}
                            _ = tokio::io::copy(&mut ro, &mut wi) => {}
                        }
                    };
                    tokio::select! {
                        () = relay => {}
                        () = async {
                            loop {
                                let moved = *frozen.borrow_and_update() != generation;
                                if moved || frozen.changed().await.is_err() {
                                    break;
                                }
                            }
                        } => {
                            // Silent: hold both sockets open and never read or write again.
                            std::future::pending::<()>().await;
                            drop((ri, wi, ro, wo));
                        }
                    }
                });
            }
        });
        Relay { addr, target, frozen, task }
    }

    /// Silences every connection open now.
    pub fn freeze(&self) {
        self.frozen.send_modify(|g| *g += 1);
    }

    /// Where new connections go.
    pub fn set_target(&self, target: SocketAddr) {
        *self.target.lock() = target;
    }
}

/// A kube client reaching the API server through `relay`.
pub fn client_via(server: &FakeApiServer, relay: &Relay) -> kube::Client {
    let mut config = server.client_config();
    config.cluster_url = format!("http://{}", relay.addr).parse().expect("relay URL");
    kube::Client::try_from(config).expect("client")
}

/// The Events (`events.k8s.io/v1`) on `name` in `default`, as (reason, note).
pub fn events_on(server: &FakeApiServer, name: &str) -> Vec<(String, String)> {
    server
        .list(Kind::EventsV1Event, Some("default"))
        .into_iter()
        .filter(|e| e.pointer("/regarding/name").and_then(|n| n.as_str()) == Some(name))
        .map(|e| {
            let text = |k: &str| e.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
            (text("reason"), text("note"))
        })
        .collect()
}

/// Every pod's first address; panics if two pods share one.
pub fn assert_distinct_pod_ips(server: &FakeApiServer) -> usize {
    let mut seen = std::collections::BTreeMap::new();
    for pod in server.list(Kind::Pod, Some("default")) {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        let Some(ip) = pod_ip(server, &name) else { continue };
        if let Some(other) = seen.insert(ip.clone(), name.clone()) {
            panic!("pods {other} and {name} share the address {ip}");
        }
    }
    seen.len()
}
