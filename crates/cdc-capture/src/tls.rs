//! TLS on every connection a capture makes or accepts (`docs/security.md`): the one port's
//! acceptor with TiCDC's `cert-allowed-cn` check, and the credentials of its clients (etcd,
//! p2p peers, the owner-forwarding HTTP client), all from `[security]`.
//!
//! The check of a client certificate happens in the handshake (a rustls client-certificate
//! verifier), so HTTP and p2p are refused alike, with a TLS alert, before any request is read;
//! the accept loop logs the refused client's address with the verifier's reason and CN.
//! Certificates are read at start and, for the p2p clients, at each new incarnation; the port's
//! own certificate changes only with a restart.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::client::danger::HandshakeSignatureValid;
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::{
    self, CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    SignatureScheme,
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, warn};

use crate::config::{Config, SecurityConfig, is_https};
use crate::error::{Error, Result};

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them.
const ACCEPTED_BACKLOG: usize = 64;
/// The pause after a failed `accept` (out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// A connection to the port after its handshake.
pub(crate) type TlsConnection = tokio_rustls::server::TlsStream<TcpStream>;

/// The loaded `[security]` credentials and the configurations built from them.
#[derive(Clone)]
pub(crate) struct Tls {
    server: Arc<rustls::ServerConfig>,
    client: rustls::ClientConfig,
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

fn invalid(message: String) -> Error {
    Error::InvalidConfig { message }
}

fn read(key: &str, path: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|err| invalid(format!("[security] {key} {path}: {err}")))
}

fn certificates(key: &str, path: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|err| invalid(format!("[security] {key} {path}: invalid PEM: {err}")))?;
    if certs.is_empty() {
        return Err(invalid(format!(
            "[security] {key} {path}: no certificate in the file"
        )));
    }
    Ok(certs)
}

/// Installs ring as the process's default crypto provider, which reqwest's rustls (built without
/// a provider of its own) needs even for plain HTTP; one already installed stays.
pub fn install_crypto_provider() {
    let _ = ring::default_provider().install_default();
}

/// The one crypto provider: ring, as tonic's and etcd-client's TLS.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

impl Tls {
    /// Reads and checks the files of `security` (which has TLS on) and builds the server and
    /// client configurations; every error names the key and the file.
    pub(crate) fn load(security: &SecurityConfig) -> Result<Tls> {
        let ca_pem = read("ca-path", &security.ca_path)?;
        let cert_pem = read("cert-path", &security.cert_path)?;
        let key_pem = read("key-path", &security.key_path)?;
        let mut roots = RootCertStore::empty();
        for ca in certificates("ca-path", &security.ca_path, &ca_pem)? {
            roots.add(ca).map_err(|err| {
                invalid(format!(
                    "[security] ca-path {}: not a CA certificate: {err}",
                    security.ca_path
                ))
            })?;
        }
        let roots = Arc::new(roots);
        let chain = certificates("cert-path", &security.cert_path, &cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|err| {
            invalid(format!(
                "[security] key-path {}: invalid private key: {err}",
                security.key_path
            ))
        })?;
        let provider = provider();
        let mut verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider));
        if !security.requires_client_cert() {
            verifier = verifier.allow_unauthenticated();
        }
        let verifier = verifier.build().map_err(|err| {
            invalid(format!(
                "[security] ca-path {}: unusable to verify clients: {err}",
                security.ca_path
            ))
        })?;
        let verifier = Arc::new(AllowedCn {
            inner: verifier,
            allowed: security.cert_allowed_cn.clone(),
        });
        let mut server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|err| invalid(format!("[security] TLS versions: {err}")))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|err| {
                invalid(format!(
                    "[security] key-path {} does not fit cert-path {}: {err}",
                    security.key_path, security.cert_path
                ))
            })?;
        // gRPC (p2p) needs HTTP/2; curl and browsers may speak HTTP/1.1.
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| invalid(format!("[security] TLS versions: {err}")))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|err| {
                invalid(format!(
                    "[security] key-path {} does not fit cert-path {}: {err}",
                    security.key_path, security.cert_path
                ))
            })?;
        Ok(Tls {
            server: Arc::new(server),
            client,
            ca_pem,
            cert_pem,
            key_pem,
        })
    }

    /// The credentials of the etcd client.
    pub(crate) fn etcd(&self) -> cdc_etcd::TlsConfig {
        cdc_etcd::TlsConfig {
            ca_pem: self.ca_pem.clone(),
            identity: Some((self.cert_pem.clone(), self.key_pem.clone())),
        }
    }

    /// The credentials of the p2p clients.
    pub(crate) fn peer(&self) -> cdc_p2p::PeerTls {
        cdc_p2p::PeerTls {
            ca_pem: self.ca_pem.clone(),
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
        }
    }

    /// The acceptor of the port.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.server))
    }
}

/// The etcd client's TLS: the credentials when TLS is on and the endpoints are `https://`.
pub(crate) fn etcd_tls(config: &Config, tls: Option<&Tls>) -> Option<Arc<cdc_etcd::TlsConfig>> {
    let tls = tls?;
    config
        .endpoints()
        .iter()
        .any(|endpoint| is_https(endpoint))
        .then(|| Arc::new(tls.etcd()))
}

/// How a refused TLS handshake with etcd reads in the client's error (rustls through tonic).
const ETCD_TLS_FAILURES: [&str; 3] = ["certificate", "invalid peer", "tls handshake"];

/// Checks at start that etcd accepts the TLS credentials: a certificate etcd or the client
/// refuses (a wrong CA, a client certificate etcd does not trust, an expired one) is a
/// configuration error that a restart cannot cure; an etcd that is merely unreachable is not.
pub(crate) async fn check_etcd_tls(client: &cdc_etcd::EtcdClient) -> Result<()> {
    let Err(err) = client.cluster_id().await else {
        return Ok(());
    };
    let report = cdc_model::ErrorReport(&err).to_string();
    let lower = report.to_lowercase();
    if ETCD_TLS_FAILURES
        .iter()
        .any(|failure| lower.contains(failure))
    {
        return Err(invalid(format!(
            "TLS to etcd {} failed (check [security] ca-path, cert-path and key-path): {report}",
            client.endpoints()
        )));
    }
    warn!(error = %report, "etcd did not answer the first call; retrying as the capture runs");
    Ok(())
}

/// The p2p clients' TLS, read again from the files (a new incarnation sees renewed
/// certificates); `None` without TLS. Files that went bad since the start are logged, and the
/// clients then fail to connect until they are fixed.
pub(crate) fn peer_tls(config: &Config) -> Option<cdc_p2p::PeerTls> {
    if !config.security.is_tls_enabled() {
        return None;
    }
    match Tls::load(&config.security) {
        Ok(tls) => Some(tls.peer()),
        Err(err) => {
            error!(error = %cdc_model::ErrorReport(&err), "reading the certificates for the p2p clients failed");
            None
        }
    }
}

/// The URL scheme of the peers' ports.
pub(crate) fn scheme(config: &Config) -> &'static str {
    if config.security.is_tls_enabled() {
        "https"
    } else {
        "http"
    }
}

/// The HTTP client that forwards owner-only requests: over TLS with this capture's certificate
/// when TLS is on.
pub(crate) fn forwarding_client(
    config: &Config,
    timeout: Duration,
) -> std::result::Result<reqwest::Client, String> {
    install_crypto_provider();
    let builder = reqwest::Client::builder()
        .timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(5));
    let builder = if config.security.is_tls_enabled() {
        let tls = Tls::load(&config.security).map_err(|err| err.to_string())?;
        builder.tls_backend_preconfigured(tls.client)
    } else {
        builder
    };
    builder
        .build()
        .map_err(|err| cdc_model::ErrorReport(&err).to_string())
}

/// Accepts TCP connections on `listener` and hands those whose handshake succeeded to the
/// returned stream, until `cancel`. Handshakes run concurrently (one slow client holds up no
/// other), each under [`HANDSHAKE_TIMEOUT`], on tasks of `tracker`; a refused client is logged
/// with its address and the reason (with the certificate's CN).
pub(crate) fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> ReceiverStream<std::io::Result<TlsConnection>> {
    let (tx, rx) = mpsc::channel(ACCEPTED_BACKLOG);
    let handshakes = tracker.clone();
    tracker.spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = cancel.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    warn!(error = %cdc_model::ErrorReport(&err), "accepting a connection failed");
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                    }
                }
            };
            if let Err(err) = tcp.set_nodelay(true) {
                debug!(%peer, error = %cdc_model::ErrorReport(&err), "setting TCP_NODELAY failed");
            }
            handshakes.spawn(handshake(
                tcp,
                peer,
                acceptor.clone(),
                tx.clone(),
                cancel.clone(),
            ));
        }
    });
    ReceiverStream::new(rx)
}

async fn handshake(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<std::io::Result<TlsConnection>>,
    cancel: CancellationToken,
) {
    let shaken = tokio::select! {
        () = cancel.cancelled() => return,
        shaken = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => shaken,
    };
    match shaken {
        Ok(Ok(connection)) => {
            tokio::select! {
                () = cancel.cancelled() => {}
                // A closed receiver means the server stopped: the connection is dropped.
                _ = tx.send(Ok(connection)) => {}
            }
        }
        Ok(Err(err)) => match refused_certificate(&err) {
            Some(refused) => warn!(
                %peer,
                cn = refused.cn.as_deref().unwrap_or(""),
                reason = %refused.reason,
                "refused a TLS client's certificate"
            ),
            None => warn!(%peer, error = %cdc_model::ErrorReport(&err), "refused a TLS client"),
        },
        Err(_) => {
            warn!(%peer, timeout = ?HANDSHAKE_TIMEOUT, "refused a TLS client: the handshake did not finish in time");
        }
    }
}

/// The verifier's verdict inside a failed handshake's error, if a certificate was refused.
fn refused_certificate(err: &std::io::Error) -> Option<&Refused> {
    let rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) =
        err.get_ref()?.downcast_ref::<rustls::Error>()?
    else {
        return None;
    };
    inner.downcast_ref::<Refused>()
}

/// The common name of a certificate's subject, if it has one.
fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let name = parsed.subject().iter_common_name().next()?;
    name.as_str().ok().map(str::to_owned)
}

/// Why a client certificate was refused, with its CN.
#[derive(Debug)]
struct Refused {
    cn: Option<String>,
    reason: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.cn {
            Some(cn) => write!(f, "client certificate CN {cn:?} refused: {}", self.reason),
            None => write!(
                f,
                "client certificate without a CN refused: {}",
                self.reason
            ),
        }
    }
}

impl std::error::Error for Refused {}

/// The CA's verifier plus TiCDC's `cert-allowed-cn` check (`pkg/security/credential.go` in
/// pingcap/tiflow: the subject's CN must be listed when the list is not empty).
#[derive(Debug)]
struct AllowedCn {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<String>,
}

impl ClientCertVerifier for AllowedCn {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        let cn = common_name(end_entity);
        let refuse = |reason: String| {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
                Refused {
                    cn: cn.clone(),
                    reason,
                },
            ))))
        };
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(|err| refuse(err.to_string()))?;
        if self.allowed.is_empty()
            || cn
                .as_ref()
                .is_some_and(|cn| self.allowed.iter().any(|allowed| allowed == cn))
        {
            Ok(verified)
        } else {
            Err(refuse("not in cert-allowed-cn".to_owned()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests;
