//! TLS for the listeners, with rustls: the server's certificate pair is
//! re-read whenever its files change (a cert-manager renewal, or a Secret
//! volume swapping its `..data` symlink, needs no restart), and with
//! `--client-cert-auth` every client must present a certificate signed by
//! `--trusted-ca-file` (etcd's flags).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

/// The TLS flags.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// CA of client certificates.
    pub trusted_ca_file: Option<PathBuf>,
    /// Require a client certificate signed by `trusted_ca_file`.
    pub client_cert_auth: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("the key in {path} is not one TLS can use")]
    Key {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("the CA in {path}")]
    Ca {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("--client-cert-auth needs --trusted-ca-file")]
    NoCa,
    #[error("client certificate verification")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    #[error("TLS settings")]
    Config(#[source] rustls::Error),
}

/// What a listener asks of its clients' certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientCerts {
    /// Nothing: no certificate is asked for.
    Ignore,
    /// Every client must present one that `trusted_ca_file` signed.
    Require,
    /// A client may present one, which must then verify against
    /// `trusted_ca_file`; a client without one is let in too, and the
    /// service decides (see `crate::http::Peer`).
    Allow,
}

/// A TLS acceptor for `config`: the certificate pair is loaded now (so a
/// bad one fails at start), and again when its files change.
pub fn acceptor(config: &TlsConfig) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let clients = if config.client_cert_auth {
        ClientCerts::Require
    } else {
        ClientCerts::Ignore
    };
    acceptor_with(config, clients)
}

/// [`acceptor`], with what is asked of clients' certificates given
/// (`config.client_cert_auth` is not consulted).
pub fn acceptor_with(config: &TlsConfig, clients: ClientCerts) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let resolver = Arc::new(ReloadingCert::new(config.cert_file.clone(), config.key_file.clone())?);
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?;
    let builder = if clients != ClientCerts::Ignore {
        let ca = config.trusted_ca_file.as_ref().ok_or(TlsError::NoCa)?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs(ca)? {
            roots.add(cert).map_err(|source| TlsError::Ca {
                path: ca.clone(),
                source,
            })?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let verifier = if clients == ClientCerts::Allow {
            verifier.allow_unauthenticated()
        } else {
            verifier
        };
        let verifier = verifier.build().map_err(TlsError::Verifier)?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut server = builder.with_cert_resolver(resolver);
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_owned() });
    }
    Ok(certs)
}

/// What identifies a file's content cheaply: size, time, inode (through
/// symlinks, which Secret volumes use).
fn stamp(path: &Path) -> Option<(u64, std::time::SystemTime, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?, m.ino()))
}

/// The server's certificate pair, re-read when its files change.
#[derive(Debug)]
struct ReloadingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    #[allow(clippy::type_complexity)]
    current: Mutex<(
        Arc<CertifiedKey>,
        Option<(u64, std::time::SystemTime, u64)>,
        Option<(u64, std::time::SystemTime, u64)>,
    )>,
}

impl ReloadingCert {
    fn new(cert_file: PathBuf, key_file: PathBuf) -> Result<Self, TlsError> {
        let stamps = (stamp(&cert_file), stamp(&key_file));
        let key = load(&cert_file, &key_file)?;
        Ok(Self {
            cert_file,
            key_file,
            current: Mutex::new((key, stamps.0, stamps.1)),
        })
    }
}

fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = read_certs(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|source| TlsError::Read {
        path: key_file.to_owned(),
        source,
    })?;
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key).map_err(|source| TlsError::Key {
        path: key_file.to_owned(),
        source,
    })?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut current = self.current.lock().expect("certificate lock is never poisoned");
        let stamps = (stamp(&self.cert_file), stamp(&self.key_file));
        if stamps != (current.1, current.2) {
            match load(&self.cert_file, &self.key_file) {
                Ok(key) => {
                    tracing::info!(cert = %self.cert_file.display(), "certificate files changed: reloaded");
                    *current = (key, stamps.0, stamps.1);
                }
                // A half-written rotation: keep serving the old pair, and
                // try again at the next handshake.
                Err(e) => {
                    tracing::warn!(error = %crate::error::chain(&e), "cannot reload the certificate; keeping the current one")
                }
            }
        }
        Some(current.0.clone())
    }
}

/// The common name of the client certificate a connection presented and
/// `--client-cert-auth` verified: carried in each request's extensions, it
/// names the user when the request has no auth token (etcd's rule).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCommonName(pub String);

/// The subject common name of a DER certificate (the last one, as Go's
/// `pkix.Name` keeps), or `None` if it has none or cannot be read.
pub fn common_name(cert: &[u8]) -> Option<String> {
    /// Splits one DER element off `input`: its tag, its content, the rest.
    fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n].iter().fold(0usize, |l, b| (l << 8) | usize::from(*b));
            (len, &rest[n..])
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
    let (SEQUENCE, cert, _) = element(cert)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = element(cert)? else {
        return None;
    };
    let mut fields = tbs;
    // The optional explicit version ([0]), then serial, signature, issuer,
    // validity: the subject is the next.
    let (tag, _, rest) = element(fields)?;
    if tag == 0xa0 {
        fields = rest;
    }
    for _ in 0..4 {
        fields = element(fields)?.2;
    }
    let (SEQUENCE, mut rdns, _) = element(fields)? else {
        return None;
    };
    let mut found = None;
    while !rdns.is_empty() {
        let (SET, mut set, rest) = element(rdns)? else {
            return None;
        };
        rdns = rest;
        while !set.is_empty() {
            let (SEQUENCE, attribute, rest) = element(set)? else {
                return None;
            };
            set = rest;
            let (0x06, oid, value) = element(attribute)? else {
                return None;
            };
            if oid == COMMON_NAME {
                let (_, text, _) = element(value)?;
                found = Some(String::from_utf8_lossy(text).into_owned());
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    /// A certificate made by `openssl req -x509 … -subj "/O=trishanku/CN=alice"`.
    const CERT: &str = "MIIBnTCCAUOgAwIBAgIUDYSIDKmecuEpebY1Yi/xtRu30p4wCgYIKoZIzj0EAwIwJDESMBAGA1UECgwJdHJpc2hhbmt1MQ4wDAYDVQQDDAVhbGljZTAeFw0yNjEyMDExMTE2NTdaFw0zNjExMjgxMTE2NTdaMCQxEjAQBgNVBAoMCXRyaXNoYW5rdTEOMAwGA1UEAwwFYWxpY2UwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQ7bWqBafx6Ct8vXFD/H80GMnX61fILemVL+NxkoyN7yLKj+ckZYOiHxNrfpgU+xCMj5bJZ3W9e2hRKM2oNlGVbo1MwUTAdBgNVHQ4EFgQUFLdKmnWkvejaKwyUSl6LoF+zE5wwHwYDVR0jBBgwFoAUFLdKmnWkvejaKwyUSl6LoF+zE5wwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiBMnWZEavORE0pmByGUWZ7JzgFH91BxWFZc290SJEk/bQIhAPM0eZI5C0frGwpBfp2Cgm5x65dpNHQoEmcddl6fC8sY";

    #[test]
    fn subject_common_name() -> Result<(), base64::DecodeError> {
        let der = base64::engine::general_purpose::STANDARD.decode(CERT)?;
        assert_eq!(super::common_name(&der).as_deref(), Some("alice"));
        assert_eq!(super::common_name(&der[..40]), None);
        assert_eq!(super::common_name(b""), None);
        Ok(())
    }
}
