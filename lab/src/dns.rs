//! The cluster DNS stand-in: what CoreDNS's `kubernetes` plugin answers, from the API's
//! Services and EndpointSlices, for `cluster.local` — a Service's name to its ClusterIP(s)
//! (a headless Service's: its endpoints' addresses), a headless Service's endpoint with a
//! `hostname` (a pod with `hostname` and `subdomain`, as an Indexed Job's pods) to its address
//! (`<hostname>.<service>.<namespace>.svc.cluster.local`), and `a-b-c-d.<ns>.pod.cluster.local`
//! to `a.b.c.d`. Names under the cluster domain that do not exist are NXDOMAIN; names that
//! exist without a record of the type asked (AAAA of an IPv4 Service, or a namespace) get an
//! empty answer; names outside it are REFUSED (there is no upstream in the lab). UDP and TCP.
//!
//! The lab's kubelets give pods this server through the sandbox's DNS configuration (kubelet's
//! `--cluster-dns`), with the namespace's search path and `ndots:5`, as on a cluster. It
//! listens on the host's underlay address rather than behind a ClusterIP Service, like
//! NodeLocal DNSCache's link-local address: pods reach it through their node's egress, and
//! name resolution does not depend on the Service path the lab is there to check.
//!
//! The message code is pure and takes untrusted bytes: a query that does not parse gets
//! FORMERR (or nothing, when even its header is short), never a panic (`lab/fuzz`,
//! target `dns_query`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::endpointslices::SERVICE_NAME_LABEL;
use crate::podspec::CLUSTER_DOMAIN;
use crate::watch::reflect;

/// Record type A.
pub const TYPE_A: u16 = 1;
/// Record type AAAA.
pub const TYPE_AAAA: u16 = 28;
/// Query type ANY.
pub const TYPE_ANY: u16 = 255;
/// Class IN.
pub const CLASS_IN: u16 = 1;
/// TTL of every answer: short, pods come and go.
pub const TTL_SECONDS: u32 = 5;
/// Largest UDP answer without EDNS (RFC 1035).
pub const MAX_UDP_ANSWER: usize = 512;

/// Response codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    /// Answered (possibly with no records).
    NoError = 0,
    /// The query could not be parsed.
    FormErr = 1,
    /// The name does not exist.
    NxDomain = 3,
    /// Not an opcode this server implements.
    NotImp = 4,
    /// Not a zone this server answers for.
    Refused = 5,
}

/// A parsed query: the parts an answer needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Transaction ID.
    pub id: u16,
    /// Opcode (0: standard query).
    pub opcode: u8,
    /// Recursion desired (echoed).
    pub recursion_desired: bool,
    /// The name, lower-cased, without the final dot.
    pub name: String,
    /// The question's wire bytes (name, type, class), echoed in the answer.
    pub question: Vec<u8>,
    /// QTYPE.
    pub qtype: u16,
    /// QCLASS.
    pub qclass: u16,
}

/// Why a query could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than a header: no answer is possible (no ID to answer to).
    #[error("shorter than a DNS header ({0} bytes)")]
    Short(usize),
    /// The header parsed but the rest is malformed: answer FORMERR to this ID.
    #[error("malformed query {id:#06x}: {reason}")]
    Malformed {
        /// Its ID.
        id: u16,
        /// Its opcode.
        opcode: u8,
        /// What is wrong.
        reason: String,
    },
}

/// Parses a query: a header with QR clear and exactly one question of an uncompressed name.
pub fn parse_query(bytes: &[u8]) -> Result<Query, ParseError> {
    if bytes.len() < 12 {
        return Err(ParseError::Short(bytes.len()));
    }
    let id = u16::from_be_bytes([bytes[0], bytes[1]]);
    let flags = u16::from_be_bytes([bytes[2], bytes[3]]);
    let opcode = ((flags >> 11) & 0xf) as u8;
    let bad = |reason: String| ParseError::Malformed { id, opcode, reason };
    if flags & 0x8000 != 0 {
        return Err(bad("a response, not a query".into()));
    }
    let questions = u16::from_be_bytes([bytes[4], bytes[5]]);
    if questions != 1 {
        return Err(bad(format!("{questions} questions (exactly one is answered)")));
    }
    let mut at = 12;
    let mut labels: Vec<String> = Vec::new();
    let mut length = 0usize;
    loop {
        let Some(&size) = bytes.get(at) else { return Err(bad("the name runs past the message".into())) };
        at += 1;
        if size == 0 {
            break;
        }
        if size & 0xc0 != 0 {
            return Err(bad(format!("label length byte {size:#04x} (compression is not used in questions)")));
        }
        let label = bytes.get(at..at + usize::from(size)).ok_or_else(|| bad("a label runs past the message".into()))?;
        length += usize::from(size) + 1;
        if length > 255 {
            return Err(bad("the name is longer than 255 bytes".into()));
        }
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        at += usize::from(size);
    }
    let fixed = bytes.get(at..at + 4).ok_or_else(|| bad("no type and class after the name".into()))?;
    let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    let qclass = u16::from_be_bytes([fixed[2], fixed[3]]);
    Ok(Query {
        id,
        opcode,
        recursion_desired: flags & 0x0100 != 0,
        name: labels.join("."),
        question: bytes[12..at + 4].to_vec(),
        qtype,
        qclass,
    })
}

/// The names the stand-in knows: name (lower-case, no final dot) → addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Zone {
    records: BTreeMap<String, Vec<IpAddr>>,
}

impl Zone {
    /// Adds an address to a name.
    pub fn add(&mut self, name: &str, ip: IpAddr) {
        let list = self.records.entry(name.to_ascii_lowercase()).or_default();
        if !list.contains(&ip) {
            list.push(ip);
        }
    }

    /// The zone of a cluster's Services and EndpointSlices.
    pub fn from_cluster(services: &[Arc<Service>], slices: &[Arc<EndpointSlice>]) -> Zone {
        let mut zone = Zone::default();
        for service in services {
            let namespace = service.namespace().unwrap_or_default();
            let name = format!("{}.{namespace}.svc.{CLUSTER_DOMAIN}", service.name_any());
            let Some(spec) = service.spec.as_ref() else { continue };
            let ips: Vec<IpAddr> = spec
                .cluster_ips
                .iter()
                .flatten()
                .chain(spec.cluster_ip.iter())
                .filter_map(|ip| ip.parse().ok())
                .collect();
            let headless = spec.cluster_ip.as_deref() == Some("None");
            if !headless {
                for ip in ips {
                    zone.add(&name, ip);
                }
                continue;
            }
            let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
            let owned = slices.iter().filter(|s| {
                s.namespace().as_deref() == Some(namespace.as_str())
                    && s.labels().get(SERVICE_NAME_LABEL) == Some(&service.name_any())
            });
            for slice in owned {
                for endpoint in &slice.endpoints {
                    let ready = endpoint.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                    if !ready && !publish_not_ready {
                        continue;
                    }
                    for ip in endpoint.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                        zone.add(&name, ip);
                        if let Some(hostname) = endpoint.hostname.as_deref().filter(|h| !h.is_empty()) {
                            zone.add(&format!("{hostname}.{name}"), ip);
                        }
                    }
                }
            }
        }
        zone
    }

    /// What the zone answers for `name`: the addresses (none for a name that exists without
    /// records), or why there are none.
    pub fn lookup(&self, name: &str) -> Result<Vec<IpAddr>, Rcode> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let in_zone = name == CLUSTER_DOMAIN || name.ends_with(&format!(".{CLUSTER_DOMAIN}"));
        if !in_zone {
            return Err(Rcode::Refused);
        }
        if let Some(ips) = self.records.get(&name) {
            return Ok(ips.clone());
        }
        if let Some(ip) = pod_name_address(&name) {
            return Ok(vec![ip]);
        }
        // An existing name's ancestor (`svc.cluster.local`, a namespace) exists without records.
        let suffix = format!(".{name}");
        let structural = [CLUSTER_DOMAIN.to_string(), format!("svc.{CLUSTER_DOMAIN}"), format!("pod.{CLUSTER_DOMAIN}")];
        if structural.contains(&name) || self.records.keys().any(|k| k.ends_with(&suffix)) {
            return Ok(Vec::new());
        }
        Err(Rcode::NxDomain)
    }
}

/// `a-b-c-d.<namespace>.pod.cluster.local` → `a.b.c.d` (CoreDNS's `pods insecure`).
pub fn pod_name_address(name: &str) -> Option<IpAddr> {
    let rest = name.strip_suffix(&format!(".pod.{CLUSTER_DOMAIN}"))?;
    let (dashed, namespace) = rest.split_once('.')?;
    if namespace.is_empty() || namespace.contains('.') {
        return None;
    }
    dashed.replace('-', ".").parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// The answer to one query (UDP: at most `limit` bytes, truncated with TC set).
pub fn answer(zone: &Zone, query: &Query, limit: usize) -> Vec<u8> {
    if query.opcode != 0 {
        return header_only(query.id, query.opcode, query.recursion_desired, Rcode::NotImp, Some(&query.question));
    }
    if query.qclass != CLASS_IN {
        return header_only(query.id, 0, query.recursion_desired, Rcode::Refused, Some(&query.question));
    }
    let ips = match zone.lookup(&query.name) {
        Ok(ips) => ips,
        Err(rcode) => return header_only(query.id, 0, query.recursion_desired, rcode, Some(&query.question)),
    };
    let wanted: Vec<IpAddr> = ips
        .into_iter()
        .filter(|ip| match query.qtype {
            TYPE_A => ip.is_ipv4(),
            TYPE_AAAA => ip.is_ipv6(),
            TYPE_ANY => true,
            _ => false,
        })
        .collect();
    let mut records = Vec::new();
    for ip in &wanted {
        let mut record = vec![0xc0, 0x0c]; // the name: a pointer to the question's
        let (kind, data): (u16, Vec<u8>) = match ip {
            IpAddr::V4(v4) => (TYPE_A, v4.octets().to_vec()),
            IpAddr::V6(v6) => (TYPE_AAAA, v6.octets().to_vec()),
        };
        record.extend(kind.to_be_bytes());
        record.extend(CLASS_IN.to_be_bytes());
        record.extend(TTL_SECONDS.to_be_bytes());
        record.extend(u16::try_from(data.len()).unwrap_or(0).to_be_bytes());
        record.extend(data);
        records.push(record);
    }
    let mut out = header_only(query.id, 0, query.recursion_desired, Rcode::NoError, Some(&query.question));
    let mut count = 0u16;
    let mut truncated = false;
    for record in records {
        if out.len() + record.len() > limit {
            truncated = true;
            break;
        }
        out.extend(record);
        count += 1;
    }
    out[6..8].copy_from_slice(&count.to_be_bytes());
    if truncated {
        out[2] |= 0x02;
    }
    out
}

/// A header (QR, AA, the opcode, RD echoed, the rcode) and, when given, the question.
fn header_only(id: u16, opcode: u8, recursion_desired: bool, rcode: Rcode, question: Option<&[u8]>) -> Vec<u8> {
    let mut flags: u16 = 0x8000 | 0x0400 | (u16::from(opcode & 0xf) << 11) | rcode as u16;
    if recursion_desired {
        flags |= 0x0100;
    }
    let mut out = Vec::with_capacity(64);
    out.extend(id.to_be_bytes());
    out.extend(flags.to_be_bytes());
    out.extend(u16::from(question.is_some()).to_be_bytes());
    out.extend([0, 0, 0, 0, 0, 0]);
    if let Some(question) = question {
        out.extend(question);
    }
    out
}

/// The answer to raw query bytes: FORMERR for a malformed query, nothing when not even a
/// header arrived.
pub fn respond(zone: &Zone, bytes: &[u8], limit: usize) -> Option<Vec<u8>> {
    match parse_query(bytes) {
        Ok(query) => Some(answer(zone, &query, limit)),
        Err(ParseError::Short(_)) => None,
        Err(ParseError::Malformed { id, opcode, .. }) => Some(header_only(id, opcode, false, Rcode::FormErr, None)),
    }
}

/// The stand-in's view of the cluster.
#[derive(Clone)]
struct Cluster {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
}

impl Cluster {
    fn zone(&self) -> Zone {
        Zone::from_cluster(&self.services.state(), &self.slices.state())
    }
}

/// Serves DNS on `addr` (UDP and TCP) until `stop`.
pub async fn serve(client: Client, addr: SocketAddr, stop: CancellationToken) -> anyhow::Result<()> {
    let udp = tokio::net::UdpSocket::bind(addr).await?;
    let tcp = tokio::net::TcpListener::bind(addr).await?;
    let changed = Arc::new(Notify::new());
    let cluster = Cluster {
        services: reflect(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
            changed.clone(),
            stop.clone(),
        ),
        slices: reflect(Api::<EndpointSlice>::all(client), watcher::Config::default(), changed, stop.clone()),
    };
    tracing::info!(%addr, domain = CLUSTER_DOMAIN, "cluster DNS serving");
    let tcp_task = tokio::spawn(serve_tcp(tcp, cluster.clone(), stop.clone()));
    let mut buffer = vec![0u8; 4096];
    loop {
        let (size, from) = tokio::select! {
            () = stop.cancelled() => break,
            received = udp.recv_from(&mut buffer) => match received {
                Ok(received) => received,
                Err(error) => {
                    tracing::debug!(%error, "DNS receive");
                    continue;
                }
            },
        };
        let Some(reply) = respond(&cluster.zone(), &buffer[..size], MAX_UDP_ANSWER) else { continue };
        if let Err(error) = udp.send_to(&reply, from).await {
            tracing::debug!(%error, %from, "DNS reply");
        }
    }
    let _ = tcp_task.await;
    Ok(())
}

async fn serve_tcp(listener: tokio::net::TcpListener, cluster: Cluster, stop: CancellationToken) {
    loop {
        let (mut stream, _) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
        };
        let cluster = cluster.clone();
        tokio::spawn(async move {
            // One or more length-prefixed queries; an idle client is dropped after 10 s.
            loop {
                let read = async {
                    let length = usize::from(stream.read_u16().await?);
                    let mut query = vec![0u8; length];
                    stream.read_exact(&mut query).await?;
                    Ok::<_, std::io::Error>(query)
                };
                let Ok(Ok(query)) = tokio::time::timeout(std::time::Duration::from_secs(10), read).await else {
                    return;
                };
                let Some(reply) = respond(&cluster.zone(), &query, usize::from(u16::MAX)) else { return };
                let Ok(length) = u16::try_from(reply.len()) else { return };
                if stream.write_u16(length).await.is_err() || stream.write_all(&reply).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut out = id.to_be_bytes().to_vec();
        out.extend([0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.split('.') {
            out.push(label.len() as u8);
            out.extend(label.as_bytes());
        }
        out.push(0);
        out.extend(qtype.to_be_bytes());
        out.extend(CLASS_IN.to_be_bytes());
        out
    }

    fn rcode(reply: &[u8]) -> u8 {
        reply[3] & 0x0f
    }

    fn addresses(reply: &[u8], question_end: usize) -> Vec<IpAddr> {
        let count = u16::from_be_bytes([reply[6], reply[7]]);
        let mut at = question_end;
        let mut out = Vec::new();
        for _ in 0..count {
            let kind = u16::from_be_bytes([reply[at + 2], reply[at + 3]]);
            let length = usize::from(u16::from_be_bytes([reply[at + 10], reply[at + 11]]));
            let data = &reply[at + 12..at + 12 + length];
            out.push(match kind {
                TYPE_A => IpAddr::from(<[u8; 4]>::try_from(data).unwrap()),
                _ => IpAddr::from(<[u8; 16]>::try_from(data).unwrap()),
            });
            at += 12 + length;
        }
        out
    }

    fn cluster() -> Zone {
        let services: Vec<Arc<Service>> = [
            json!({"metadata": {"name": "web", "namespace": "demo"}, "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"]}}),
            json!({"metadata": {"name": "train", "namespace": "ml"}, "spec": {"clusterIP": "None", "publishNotReadyAddresses": true}}),
            json!({"metadata": {"name": "ready-only", "namespace": "ml"}, "spec": {"clusterIP": "None"}}),
        ]
        .into_iter()
        .map(|v| Arc::new(serde_json::from_value(v).unwrap()))
        .collect();
        let slices: Vec<Arc<EndpointSlice>> = [
            json!({"metadata": {"name": "train-1", "namespace": "ml", "labels": {SERVICE_NAME_LABEL: "train"}}, "addressType": "IPv4",
                   "endpoints": [{"addresses": ["10.244.1.5"], "hostname": "train-0", "conditions": {"ready": false}},
                                 {"addresses": ["10.244.2.6"], "hostname": "train-1", "conditions": {"ready": true}}]}),
            json!({"metadata": {"name": "ready-1", "namespace": "ml", "labels": {SERVICE_NAME_LABEL: "ready-only"}}, "addressType": "IPv4",
                   "endpoints": [{"addresses": ["10.244.1.7"], "conditions": {"ready": false}},
                                 {"addresses": ["10.244.1.8"], "conditions": {"ready": true}}]}),
        ]
        .into_iter()
        .map(|v| Arc::new(serde_json::from_value(v).unwrap()))
        .collect();
        Zone::from_cluster(&services, &slices)
    }

    #[test]
    fn services_headless_endpoints_and_pod_names_resolve() {
        let zone = cluster();
        let ask = |name: &str, qtype: u16| {
            let q = query(0x1234, name, qtype);
            let reply = respond(&zone, &q, MAX_UDP_ANSWER).unwrap();
            assert_eq!(&reply[..2], &[0x12, 0x34]);
            assert_eq!(reply[2] & 0x80, 0x80, "a response");
            (rcode(&reply), addresses(&reply, q.len()))
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(ask("web.demo.svc.cluster.local", TYPE_A), (0, vec![ip("10.96.0.10")]));
        assert_eq!(ask("WEB.Demo.svc.cluster.local", TYPE_A).1, [ip("10.96.0.10")], "case-insensitive");
        assert_eq!(
            ask("train-0.train.ml.svc.cluster.local", TYPE_A),
            (0, vec![ip("10.244.1.5")]),
            "published while not ready"
        );
        assert_eq!(ask("train.ml.svc.cluster.local", TYPE_A).1, [ip("10.244.1.5"), ip("10.244.2.6")]);
        assert_eq!(ask("ready-only.ml.svc.cluster.local", TYPE_A).1, [ip("10.244.1.8")], "not-ready endpoints hidden");
        assert_eq!(ask("10-244-3-9.ml.pod.cluster.local", TYPE_A), (0, vec![ip("10.244.3.9")]));
        assert_eq!(ask("web.demo.svc.cluster.local", TYPE_AAAA), (0, vec![]), "NODATA, not NXDOMAIN");
        assert_eq!(ask("demo.svc.cluster.local", TYPE_A), (0, vec![]), "a namespace exists");
        assert_eq!(ask("train-0.train.ml.svc.ml.svc.cluster.local", TYPE_A).0, Rcode::NxDomain as u8);
        assert_eq!(ask("example.com", TYPE_A).0, Rcode::Refused as u8);
    }

    #[test]
    fn malformed_queries_get_formerr_or_nothing() {
        let zone = cluster();
        assert_eq!(respond(&zone, &[1, 2, 3], 512), None);
        let mut compressed = query(7, "web.demo.svc.cluster.local", TYPE_A);
        compressed[12] = 0xc0;
        let reply = respond(&zone, &compressed, 512).unwrap();
        assert_eq!((reply[1], rcode(&reply)), (7, Rcode::FormErr as u8));
        let mut truncated = query(8, "web.demo.svc.cluster.local", TYPE_A);
        truncated.truncate(20);
        assert_eq!(rcode(&respond(&zone, &truncated, 512).unwrap()), Rcode::FormErr as u8);
        let mut two = query(9, "a.cluster.local", TYPE_A);
        two[5] = 2;
        assert_eq!(rcode(&respond(&zone, &two, 512).unwrap()), Rcode::FormErr as u8);
        let mut status = query(10, "web.demo.svc.cluster.local", TYPE_A);
        status[2] = 0x10; // opcode 2 (STATUS)
        assert_eq!(rcode(&respond(&zone, &status, 512).unwrap()), Rcode::NotImp as u8);
    }

    #[tokio::test]
    async fn the_server_answers_from_the_api_over_udp_and_tcp() {
        let server = skein_kube_fake::FakeApiServer::start().await;
        let client = server.client();
        let service: Service = serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}))
        .unwrap();
        let created =
            Api::<Service>::namespaced(client.clone(), "default").create(&Default::default(), &service).await.unwrap();
        let cluster_ip: IpAddr = created.spec.unwrap().cluster_ip.unwrap().parse().unwrap();
        let addr = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(client, addr, stop.clone()));
        let q = query(0x4242, "web.default.svc.cluster.local", TYPE_A);
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut answer = Vec::new();
        for _ in 0..100 {
            udp.send_to(&q, addr).await.unwrap();
            let mut buffer = [0u8; 512];
            if let Ok(Ok((n, _))) =
                tokio::time::timeout(std::time::Duration::from_millis(100), udp.recv_from(&mut buffer)).await
            {
                answer = addresses(&buffer[..n], q.len());
                if !answer.is_empty() {
                    break;
                }
            }
        }
        assert_eq!(answer, [cluster_ip], "the Service's ClusterIP over UDP");
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_u16(q.len() as u16).await.unwrap();
        tcp.write_all(&q).await.unwrap();
        let length = usize::from(tcp.read_u16().await.unwrap());
        let mut reply = vec![0u8; length];
        tcp.read_exact(&mut reply).await.unwrap();
        assert_eq!(addresses(&reply, q.len()), [cluster_ip], "and over TCP");
        stop.cancel();
        task.await.unwrap().unwrap();
    }

    #[test]
    fn long_answers_are_truncated_for_udp() {
        let mut zone = Zone::default();
        for i in 0..100u8 {
            zone.add("many.ns.svc.cluster.local", IpAddr::from([10, 0, 0, i]));
        }
        let q = query(1, "many.ns.svc.cluster.local", TYPE_A);
        let reply = respond(&zone, &q, MAX_UDP_ANSWER).unwrap();
        assert!(reply.len() <= MAX_UDP_ANSWER);
        assert_eq!(reply[2] & 0x02, 0x02, "TC set");
        let full = respond(&zone, &q, usize::from(u16::MAX)).unwrap();
        assert_eq!(addresses(&full, q.len()).len(), 100);
    }
}
