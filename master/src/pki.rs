//! The master's own key material, so that a fresh install needs no manual PKI step: a CA,
//! the southbound server certificate it signs, and the key that signs the master's pod
//! annotations. All of it lives in one Secret, created by whichever replica starts first
//! (the API server's create-if-absent decides between two), and is read by every replica
//! and every restart. The CA certificate and the name the server certificate carries are
//! published in a ConfigMap, which agents read through the API server they already trust.
//!
//! `--grpc-tls-cert`/`--grpc-tls-key` still override the generated server certificate; the
//! signing key is always the Secret's.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::tz::TimeZone;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use ring::rand::SecureRandom;
use tracing::info;

use crate::tls::ServerTls;

/// Secret keys.
pub const CA_CERT_KEY: &str = "ca.crt";
/// The CA's private key.
pub const CA_KEY_KEY: &str = "ca.key";
/// The server certificate (PEM).
pub const SERVER_CERT_KEY: &str = "tls.crt";
/// Its key.
pub const SERVER_KEY_KEY: &str = "tls.key";
/// The annotation signing key (32 random bytes).
pub const SIGNING_KEY_KEY: &str = "annotation-signing.key";
/// ConfigMap key holding the name agents check in the server certificate.
pub const SERVER_NAME_KEY: &str = "server-name";

/// Where the material lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PkiSettings {
    /// Namespace of the Secret and the ConfigMap.
    pub namespace: String,
    /// The Secret (CA, server certificate, signing key).
    pub secret: String,
    /// The ConfigMap with the CA certificate for agents.
    pub config_map: String,
    /// DNS names (and IP addresses) in the server certificate; the first is the one agents
    /// check (published in the ConfigMap).
    pub server_names: Vec<String>,
}

impl PkiSettings {
    /// The defaults for `namespace`: Secret `skein-master-keys`, ConfigMap
    /// `skein-southbound-ca`, names of the `skein-master` Service.
    pub fn new(namespace: &str) -> PkiSettings {
        PkiSettings {
            namespace: namespace.to_owned(),
            secret: "skein-master-keys".to_owned(),
            config_map: "skein-southbound-ca".to_owned(),
            server_names: vec![
                format!("skein-master.{namespace}.svc"),
                format!("skein-master.{namespace}.svc.cluster.local"),
                "skein-master".to_owned(),
            ],
        }
    }
}

/// Why the material could not be had.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// The API server refused or failed.
    #[error("{what} {namespace}/{name}: {source}")]
    Api {
        /// `Secret` or `ConfigMap`.
        what: &'static str,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Why (boxed: a kube error is large).
        source: Box<kube::Error>,
    },
    /// The Secret exists but lacks a key or holds something unusable.
    #[error("Secret {namespace}/{name}: {problem} (delete it to have the master create new material)")]
    Broken {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// Generating certificates failed.
    #[error("generating the southbound certificates: {0}")]
    Generate(String),
    /// No server name is configured.
    #[error("--southbound-server-name: at least one name is needed")]
    NoServerName,
}

/// The master's keys, read from (or created in) the Secret.
#[derive(Clone)]
pub struct MasterKeys {
    /// The CA certificate, PEM (what agents trust).
    pub ca_pem: String,
    /// The server's TLS material (certificate signed by the CA).
    pub server_tls: ServerTls,
    /// The key that signs pod annotations.
    pub signing_key: Vec<u8>,
    /// When the Secret was created: pods created before it carry annotations written
    /// before signatures existed.
    pub created: Option<Time>,
}

impl std::fmt::Debug for MasterKeys {
    // Keys stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKeys").field("created", &self.created).finish_non_exhaustive()
    }
}

fn api_error(what: &'static str, namespace: &str, name: &str) -> impl FnOnce(kube::Error) -> PkiError {
    let (namespace, name) = (namespace.to_owned(), name.to_owned());
    move |source| PkiError::Api { what, namespace, name, source: Box::new(source) }
}

/// Reads the Secret, creating it first if it does not exist, and makes the ConfigMap
/// publish its CA.
pub async fn ensure(client: &kube::Client, settings: &PkiSettings) -> Result<MasterKeys, PkiError> {
    let (ns, name) = (settings.namespace.as_str(), settings.secret.as_str());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = match secrets.get_opt(name).await.map_err(api_error("Secret", ns, name))? {
        Some(secret) => secret,
        None => {
            let data = generate(settings)?;
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    namespace: Some(ns.to_owned()),
                    labels: Some(BTreeMap::from([("app.kubernetes.io/name".to_owned(), "skein".to_owned())])),
                    ..ObjectMeta::default()
                },
                type_: Some("Opaque".to_owned()),
                data: Some(data.into_iter().map(|(k, v)| (k.to_owned(), ByteString(v))).collect()),
                ..Secret::default()
            };
            match secrets.create(&PostParams::default(), &secret).await {
                Ok(created) => {
                    info!(secret = %format!("{ns}/{name}"), "created the southbound CA, certificate and signing key");
                    created
                }
                // Another replica created it first: use theirs.
                Err(kube::Error::Api(s)) if s.is_already_exists() => {
                    secrets.get(name).await.map_err(api_error("Secret", ns, name))?
                }
                Err(e) => return Err(api_error("Secret", ns, name)(e)),
            }
        }
    };
    let keys = keys_from(&secret, settings)?;
    publish_ca(client, settings, &keys.ca_pem).await?;
    Ok(keys)
}

fn keys_from(secret: &Secret, settings: &PkiSettings) -> Result<MasterKeys, PkiError> {
    let broken = |problem: String| PkiError::Broken {
        namespace: settings.namespace.clone(),
        name: settings.secret.clone(),
        problem,
    };
    let data = secret.data.clone().unwrap_or_default();
    let get = |key: &str| data.get(key).map(|b| b.0.clone()).ok_or_else(|| broken(format!("no data[{key:?}]")));
    let text =
        |key: &str| String::from_utf8(get(key)?).map_err(|_| broken(format!("data[{key:?}] is not UTF-8 PEM text")));
    let ca_pem = text(CA_CERT_KEY)?;
    let server_tls = ServerTls::from_pem(get(SERVER_CERT_KEY)?, get(SERVER_KEY_KEY)?, None)
        .map_err(|e| broken(format!("data[{SERVER_CERT_KEY:?}] and data[{SERVER_KEY_KEY:?}]: {e}")))?;
    let signing_key = get(SIGNING_KEY_KEY)?;
    if signing_key.len() < 32 {
        return Err(broken(format!(
            "data[{SIGNING_KEY_KEY:?}] holds {} bytes, at least 32 are needed",
            signing_key.len()
        )));
    }
    Ok(MasterKeys { ca_pem, server_tls, signing_key, created: secret.metadata.creation_timestamp.clone() })
}

/// Creates or updates the ConfigMap with the CA and the server name.
async fn publish_ca(client: &kube::Client, settings: &PkiSettings, ca_pem: &str) -> Result<(), PkiError> {
    let (ns, name) = (settings.namespace.as_str(), settings.config_map.as_str());
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let server_name = settings.server_names.first().ok_or(PkiError::NoServerName)?;
    let data = BTreeMap::from([
        (CA_CERT_KEY.to_owned(), ca_pem.to_owned()),
        (SERVER_NAME_KEY.to_owned(), server_name.clone()),
    ]);
    match api.get_opt(name).await.map_err(api_error("ConfigMap", ns, name))? {
        Some(current) if current.data.as_ref() == Some(&data) => Ok(()),
        Some(mut current) => {
            current.data = Some(data);
            match api.replace(name, &PostParams::default(), &current).await {
                Ok(_) => Ok(()),
                // Another replica wrote it meanwhile (with the same Secret, the same content).
                Err(kube::Error::Api(s)) if s.is_conflict() => Ok(()),
                Err(e) => Err(api_error("ConfigMap", ns, name)(e)),
            }
        }
        None => {
            let map = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    namespace: Some(ns.to_owned()),
                    ..ObjectMeta::default()
                },
                data: Some(data),
                ..ConfigMap::default()
            };
            match api.create(&PostParams::default(), &map).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(()),
                Err(e) => Err(api_error("ConfigMap", ns, name)(e)),
            }
        }
    }
}

/// An ephemeral CA and a server certificate for `server_names` it signed, kept nowhere:
/// the CA certificate (PEM, for agents to trust) and the server's TLS. For benches and
/// tools that run a master without an API server.
pub fn ephemeral(server_names: &[String]) -> Result<(String, ServerTls), PkiError> {
    let settings = PkiSettings { server_names: server_names.to_vec(), ..PkiSettings::new("none") };
    let data: BTreeMap<&str, Vec<u8>> = generate(&settings)?.into_iter().collect();
    let field = |key: &str| data.get(key).cloned().unwrap_or_default();
    let tls = ServerTls::from_pem(field(SERVER_CERT_KEY), field(SERVER_KEY_KEY), None)
        .map_err(|e| PkiError::Generate(e.to_string()))?;
    Ok((String::from_utf8_lossy(&field(CA_CERT_KEY)).into_owned(), tls))
}

/// A new CA (ten years), a server certificate for `settings.server_names` signed by it, and
/// a random signing key.
fn generate(settings: &PkiSettings) -> Result<Vec<(&'static str, Vec<u8>)>, PkiError> {
    let fail = |e: rcgen::Error| PkiError::Generate(e.to_string());
    if settings.server_names.is_empty() {
        return Err(PkiError::NoServerName);
    }
    let today = k8s_openapi::jiff::Timestamp::now().to_zoned(TimeZone::UTC).date();
    let (year, month, day) = (i32::from(today.year()), today.month().unsigned_abs(), today.day().unsigned_abs());
    let validity = |params: &mut rcgen::CertificateParams| {
        // From yesterday, so that a clock slightly behind still accepts it.
        params.not_before = rcgen::date_time_ymd(year, month, day) - std::time::Duration::from_secs(86_400);
        params.not_after = rcgen::date_time_ymd(year + 10, month, day.min(28));
    };
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "skein southbound CA");
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    validity(&mut ca_params);
    let ca_key = rcgen::KeyPair::generate().map_err(fail)?;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(fail)?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let mut server_params = rcgen::CertificateParams::new(settings.server_names.clone()).map_err(fail)?;
    server_params.distinguished_name.push(rcgen::DnType::CommonName, settings.server_names[0].as_str());
    server_params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    server_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    server_params.use_authority_key_identifier_extension = true;
    validity(&mut server_params);
    let server_key = rcgen::KeyPair::generate().map_err(fail)?;
    let server_cert = server_params.signed_by(&server_key, &issuer).map_err(fail)?;

    let mut signing_key = vec![0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut signing_key)
        .map_err(|_| PkiError::Generate("the system random generator failed".to_owned()))?;
    Ok(vec![
        (CA_CERT_KEY, ca_cert.pem().into_bytes()),
        (CA_KEY_KEY, ca_key_pem.into_bytes()),
        (SERVER_CERT_KEY, server_cert.pem().into_bytes()),
        (SERVER_KEY_KEY, server_key.serialize_pem().into_bytes()),
        (SIGNING_KEY_KEY, signing_key),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_material_is_usable_and_checked_on_read() {
        let settings = PkiSettings::new("kube-system");
        let data = generate(&settings).unwrap();
        let mut secret = Secret {
            data: Some(data.into_iter().map(|(k, v)| (k.to_owned(), ByteString(v))).collect()),
            ..Secret::default()
        };
        let keys = keys_from(&secret, &settings).unwrap();
        assert!(keys.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(keys.signing_key.len(), 32);
        // Each missing or bad key is named.
        for key in [CA_CERT_KEY, SERVER_CERT_KEY, SIGNING_KEY_KEY] {
            let mut broken = secret.clone();
            broken.data.as_mut().unwrap().remove(key);
            let e = keys_from(&broken, &settings).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("skein-master-keys"), "{e}");
        }
        secret.data.as_mut().unwrap().insert(SIGNING_KEY_KEY.to_owned(), ByteString(vec![1; 8]));
        assert!(keys_from(&secret, &settings).unwrap_err().to_string().contains("8 bytes"));
        assert!(matches!(generate(&PkiSettings { server_names: vec![], ..settings }), Err(PkiError::NoServerName)));
    }
}
