//! TLS of the southbound gRPC server: the server's certificate and key and, for mutual TLS,
//! the CA that client certificates must chain to. Everything is read and checked when the
//! master starts, so a bad file stops it at once with an error naming the file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use skein_southbound::tls::{PemError, PemKind, check_pem, error_chain};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

/// Longest TLS handshake the server waits for (a client that stalls holds no connection).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the TLS material cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {what} {}: {source}", path.display())]
    Read {
        /// The flag that named the file, e.g. `--grpc-tls-cert`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A PEM text does not hold what it should.
    #[error("{what} {source_name}: {source}")]
    Pem {
        /// The flag (or field) that named it.
        what: &'static str,
        /// The file, or `(in memory)`.
        source_name: String,
        /// What is wrong.
        source: PemError,
    },
    /// rustls refused the material (a certificate that does not parse, a key that does not
    /// match the certificate, a client CA file without a usable certificate).
    #[error("{what}: {message}")]
    Rejected {
        /// The files (or fields) involved.
        what: String,
        /// rustls's reason.
        message: String,
    },
}

/// The southbound server's TLS material, PEM, checked on construction.
#[derive(Clone)]
pub struct ServerTls {
    certificate_pem: Vec<u8>,
    key_pem: Vec<u8>,
    client_ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for ServerTls {
    // The key stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("certificate_pem", &format_args!("{} bytes", self.certificate_pem.len()))
            .field("key_pem", &"<redacted>")
            .field("client_ca_pem", &self.client_ca_pem.as_ref().map(|c| format!("{} bytes", c.len())))
            .finish()
    }
}

impl ServerTls {
    /// Reads `--grpc-tls-cert`, `--grpc-tls-key` and the optional `--grpc-tls-client-ca`,
    /// and checks them; errors name the file.
    pub fn from_files(certificate: &Path, key: &Path, client_ca: Option<&Path>) -> Result<ServerTls, TlsError> {
        let read = |what: &'static str, path: &Path, kind: PemKind| -> Result<Vec<u8>, TlsError> {
            let pem = std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.to_owned(), source })?;
            check_pem(&pem, kind).map_err(|source| TlsError::Pem {
                what,
                source_name: path.display().to_string(),
                source,
            })?;
            Ok(pem)
        };
        let certificate_pem = read("--grpc-tls-cert", certificate, PemKind::Certificates)?;
        let key_pem = read("--grpc-tls-key", key, PemKind::PrivateKey)?;
        let client_ca_pem =
            client_ca.map(|path| read("--grpc-tls-client-ca", path, PemKind::Certificates)).transpose()?;
        let tls = ServerTls { certificate_pem, key_pem, client_ca_pem };
        tls.validate(
            &format!("--grpc-tls-cert {} with --grpc-tls-key {}", certificate.display(), key.display()),
            &client_ca.map(|p| format!("--grpc-tls-client-ca {}", p.display())).unwrap_or_default(),
        )?;
        Ok(tls)
    }

    /// The same from PEM text (tests, or material from elsewhere than files).
    pub fn from_pem(
        certificate_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
        client_ca_pem: Option<Vec<u8>>,
    ) -> Result<ServerTls, TlsError> {
        let tls = ServerTls { certificate_pem: certificate_pem.into(), key_pem: key_pem.into(), client_ca_pem };
        let in_memory = |what: &'static str, pem: &[u8], kind| {
            check_pem(pem, kind).map_err(|source| TlsError::Pem { what, source_name: "(in memory)".into(), source })
        };
        in_memory("certificate", &tls.certificate_pem, PemKind::Certificates)?;
        in_memory("key", &tls.key_pem, PemKind::PrivateKey)?;
        if let Some(ca) = &tls.client_ca_pem {
            in_memory("client CA", ca, PemKind::Certificates)?;
        }
        tls.validate("certificate with key", "client CA")?;
        Ok(tls)
    }

    /// Whether client certificates are required (mutual TLS).
    pub fn requires_client_certificates(&self) -> bool {
        self.client_ca_pem.is_some()
    }

    /// tonic's configuration.
    pub fn to_tonic(&self) -> ServerTlsConfig {
        let config = ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.certificate_pem, &self.key_pem))
            .timeout(HANDSHAKE_TIMEOUT);
        match &self.client_ca_pem {
            Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
            None => config,
        }
    }

    /// Builds rustls's configuration once, first without the client CA, so that an error
    /// names the material at fault.
    fn validate(&self, identity_name: &str, client_ca_name: &str) -> Result<(), TlsError> {
        let without_ca = ServerTls { client_ca_pem: None, ..self.clone() };
        Server::builder()
            .tls_config(without_ca.to_tonic())
            .map_err(|e| TlsError::Rejected { what: identity_name.to_owned(), message: error_chain(&e) })?;
        if self.client_ca_pem.is_some() {
            Server::builder()
                .tls_config(self.to_tonic())
                .map_err(|e| TlsError::Rejected { what: client_ca_name.to_owned(), message: error_chain(&e) })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Material {
        ca: String,
        cert: String,
        key: String,
        other_key: String,
    }

    fn material() -> Material {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap().pem();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["master.test".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap()
            .pem();
        let other_key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        Material { ca, cert, key: key.serialize_pem(), other_key }
    }

    #[test]
    fn good_files_load_and_every_bad_file_is_named() {
        let m = material();
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let cert = file("tls.crt", &m.cert);
        let key = file("tls.key", &m.key);
        let ca = file("ca.crt", &m.ca);
        let other_key = file("other.key", &m.other_key);
        let missing = dir.path().join("missing.crt");
        let garbled = file("garbled.crt", "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n");

        let tls = ServerTls::from_files(&cert, &key, None).unwrap();
        assert!(!tls.requires_client_certificates());
        assert!(!format!("{tls:?}").contains("PRIVATE"), "the key stays out of Debug");
        assert!(ServerTls::from_files(&cert, &key, Some(&ca)).unwrap().requires_client_certificates());

        let error = |r: Result<ServerTls, TlsError>| r.unwrap_err().to_string();
        let e = error(ServerTls::from_files(&missing, &key, None));
        assert!(e.starts_with("reading --grpc-tls-cert ") && e.contains("missing.crt"), "{e}");
        let e = error(ServerTls::from_files(&key, &key, None));
        assert!(e.starts_with("--grpc-tls-cert ") && e.contains("tls.key") && e.contains("CERTIFICATE"), "{e}");
        let e = error(ServerTls::from_files(&cert, &cert, None));
        assert!(e.starts_with("--grpc-tls-key ") && e.contains("tls.crt") && e.contains("PRIVATE KEY"), "{e}");
        let e = error(ServerTls::from_files(&garbled, &key, None));
        assert!(e.contains("garbled.crt"), "{e}");
        let e = error(ServerTls::from_files(&cert, &other_key, None));
        assert!(e.contains("tls.crt") && e.contains("other.key"), "a key of another certificate: {e}");
        let e = error(ServerTls::from_files(&cert, &key, Some(&missing)));
        assert!(e.starts_with("reading --grpc-tls-client-ca ") && e.contains("missing.crt"), "{e}");
        let e = error(ServerTls::from_files(&cert, &key, Some(&key)));
        assert!(e.starts_with("--grpc-tls-client-ca ") && e.contains("tls.key"), "{e}");
        let e = error(ServerTls::from_files(&cert, &key, Some(&garbled)));
        assert!(e.starts_with("--grpc-tls-client-ca ") && e.contains("garbled.crt"), "{e}");
    }

    #[test]
    fn pem_text_is_checked_too() {
        let m = material();
        ServerTls::from_pem(m.cert.clone(), m.key.clone(), Some(m.ca.clone().into())).unwrap();
        let e = ServerTls::from_pem(m.cert.clone(), m.other_key, None).unwrap_err().to_string();
        assert!(e.starts_with("certificate with key: "), "{e}");
        let e = ServerTls::from_pem(m.key.clone(), m.key, None).unwrap_err().to_string();
        assert!(e.starts_with("certificate (in memory): "), "{e}");
    }
}
