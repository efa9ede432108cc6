//! TLS material of the southbound stream: the agent's TLS settings ([`ClientTls`]) and a
//! shape check of PEM text ([`check_pem`]) that the master and the agent run before handing
//! it to rustls, whose own parser silently skips whatever is not PEM (a certificate file
//! holding a key would otherwise become "no CA" instead of an error).

use std::fmt;

/// What a PEM text must hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PemKind {
    /// One or more `CERTIFICATE` blocks (a certificate chain or a CA bundle).
    Certificates,
    /// A private key (`PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`).
    PrivateKey,
}

impl PemKind {
    fn expected(self) -> &'static str {
        match self {
            PemKind::Certificates => "a PEM \"CERTIFICATE\" block",
            PemKind::PrivateKey => "an unencrypted PEM \"PRIVATE KEY\" block (PKCS#8, RSA or EC)",
        }
    }
}

/// PEM text that does not hold what it should.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PemError {
    /// The text has no block of the expected kind.
    #[error("expected {}, found none", .0.expected())]
    Missing(PemKind),
    /// A block starts but never ends.
    #[error("PEM block {label:?} has no \"-----END {label}-----\" line")]
    Unterminated {
        /// The block's label.
        label: String,
    },
}

/// Checks that `pem` holds at least one block of `kind` and that every block it starts is
/// closed. The contents (base64, DER) are checked by rustls when the configuration is built.
pub fn check_pem(pem: &[u8], kind: PemKind) -> Result<(), PemError> {
    let text = String::from_utf8_lossy(pem);
    let mut found = false;
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(label) = line.strip_prefix("-----BEGIN ").and_then(|l| l.strip_suffix("-----")) else {
            continue;
        };
        let end = format!("-----END {label}-----");
        if !lines.by_ref().any(|l| l == end) {
            return Err(PemError::Unterminated { label: label.to_owned() });
        }
        found |= match kind {
            PemKind::Certificates => label == "CERTIFICATE",
            PemKind::PrivateKey => label.ends_with("PRIVATE KEY") && !label.contains("ENCRYPTED"),
        };
    }
    if found { Ok(()) } else { Err(PemError::Missing(kind)) }
}

/// A certificate and its private key, PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsIdentity {
    /// The certificate chain, leaf first.
    pub certificate_pem: Vec<u8>,
    /// The leaf's private key.
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for TlsIdentity {
    // The key stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("certificate_pem", &format_args!("{} bytes", self.certificate_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// How an agent verifies the master, and optionally proves who it is (mutual TLS). Used
/// for `https://` endpoints.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// The CA certificate(s), PEM, that the master's certificate must chain to. Only these
    /// are trusted (no system roots).
    pub ca_certificate_pem: Vec<u8>,
    /// The name the master's certificate must carry; default: the endpoint's host.
    pub server_name: Option<String>,
    /// The agent's certificate and key, for a master that requires client certificates.
    pub identity: Option<TlsIdentity>,
}

impl ClientTls {
    /// Trusts the CA(s) in `ca_certificate_pem`, checks the endpoint's host name, and sends no
    /// client certificate.
    pub fn new(ca_certificate_pem: impl Into<Vec<u8>>) -> ClientTls {
        ClientTls { ca_certificate_pem: ca_certificate_pem.into(), server_name: None, identity: None }
    }

    /// Checks the PEM texts' shape (see [`check_pem`]); the error names the field.
    pub fn check(&self) -> Result<(), String> {
        check_pem(&self.ca_certificate_pem, PemKind::Certificates)
            .map_err(|e| format!("tls.ca_certificate_pem: {e}"))?;
        if let Some(identity) = &self.identity {
            check_pem(&identity.certificate_pem, PemKind::Certificates)
                .map_err(|e| format!("tls.identity.certificate_pem: {e}"))?;
            check_pem(&identity.key_pem, PemKind::PrivateKey).map_err(|e| format!("tls.identity.key_pem: {e}"))?;
        }
        if self.server_name.as_deref() == Some("") {
            return Err("tls.server_name: empty".to_owned());
        }
        Ok(())
    }

    /// tonic's configuration (the PEM is parsed when it is applied to an endpoint).
    pub fn to_tonic(&self) -> tonic::transport::ClientTlsConfig {
        let mut config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_certificate_pem));
        if let Some(name) = &self.server_name {
            config = config.domain_name(name.clone());
        }
        if let Some(identity) = &self.identity {
            config =
                config.identity(tonic::transport::Identity::from_pem(&identity.certificate_pem, &identity.key_pem));
        }
        config
    }
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca_certificate_pem", &format_args!("{} bytes", self.ca_certificate_pem.len()))
            .field("server_name", &self.server_name)
            .field("identity", &self.identity)
            .finish()
    }
}

/// `error` and its sources, `: `-separated (tonic's transport errors say little at the top:
/// the certificate problem is a few sources down).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    append_sources(&mut text, error.source());
    text
}

/// Appends `source` and its own sources to `text`, `: `-separated, leaving out those whose
/// text is already there (layers often repeat their source's: "transport error: transport
/// error").
pub fn append_sources(text: &mut String, mut source: Option<&(dyn std::error::Error + 'static)>) {
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";

    #[test]
    fn pem_shape_is_checked() {
        check_pem(CERT.as_bytes(), PemKind::Certificates).unwrap();
        check_pem(format!("comment\n{CERT}{CERT}").as_bytes(), PemKind::Certificates).unwrap();
        check_pem(KEY.as_bytes(), PemKind::PrivateKey).unwrap();
        check_pem(b"-----BEGIN EC PRIVATE KEY-----\nAA\n-----END EC PRIVATE KEY-----", PemKind::PrivateKey).unwrap();
        assert_eq!(check_pem(KEY.as_bytes(), PemKind::Certificates), Err(PemError::Missing(PemKind::Certificates)));
        assert_eq!(check_pem(CERT.as_bytes(), PemKind::PrivateKey), Err(PemError::Missing(PemKind::PrivateKey)));
        assert_eq!(check_pem(b"", PemKind::Certificates), Err(PemError::Missing(PemKind::Certificates)));
        assert_eq!(check_pem(&[0xff, 0x00, 0x80], PemKind::PrivateKey), Err(PemError::Missing(PemKind::PrivateKey)));
        assert_eq!(
            check_pem(b"-----BEGIN CERTIFICATE-----\nMIIB\n", PemKind::Certificates),
            Err(PemError::Unterminated { label: "CERTIFICATE".to_owned() })
        );
        let encrypted = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert!(check_pem(encrypted.as_bytes(), PemKind::PrivateKey).is_err());
        assert!(PemError::Missing(PemKind::Certificates).to_string().contains("CERTIFICATE"));
    }

    #[test]
    fn client_tls_errors_name_the_field_and_keys_stay_out_of_debug() {
        let mut tls = ClientTls::new(KEY);
        assert!(tls.check().unwrap_err().starts_with("tls.ca_certificate_pem: "));
        tls.ca_certificate_pem = CERT.into();
        tls.check().unwrap();
        tls.identity = Some(TlsIdentity { certificate_pem: CERT.into(), key_pem: CERT.into() });
        assert!(tls.check().unwrap_err().starts_with("tls.identity.key_pem: "));
        tls.identity = Some(TlsIdentity { certificate_pem: CERT.into(), key_pem: KEY.into() });
        tls.check().unwrap();
        assert!(!format!("{tls:?}").contains("MIIE"));
        tls.server_name = Some(String::new());
        assert!(tls.check().unwrap_err().starts_with("tls.server_name: "));
    }
}
