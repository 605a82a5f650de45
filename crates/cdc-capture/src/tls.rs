//! TLS on every connection a capture makes or accepts (`docs/security.md`): the one port's
//! acceptor with TiCDC's `cert-allowed-cn` check, and the credentials of its clients (etcd,
//! p2p peers, the owner-forwarding HTTP client), all from `[security]`.
//!
//! The check of a client certificate happens in the handshake (a rustls client-certificate
//! verifier), so HTTP and p2p are refused alike, with a TLS alert, before any request is read;
//! the accept loop logs the refused client's address with the verifier's reason and CN.
//! Certificates are read at start and then watched ([`watch`]): when the files change, the
//! set is loaded again and, if it loads, replaces the one in use ([`CurrentTls`]) for the
//! port's next handshakes, the forwarding client's next connections and the p2p clients of the
//! next incarnation; a set that does not load is logged and the previous one stays. The etcd
//! client keeps the credentials it started with.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus::IntCounterVec;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::client::ResolvesClientCert;
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{
    self, CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    SignatureScheme,
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::config::{Config, SecurityConfig, is_https};
use crate::error::{Error, Result};

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them.
const ACCEPTED_BACKLOG: usize = 64;
/// The pause after a failed `accept` (out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// How often the certificate files are read to see whether they changed.
pub(crate) const RELOAD_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// A connection to the port after its handshake.
pub(crate) type TlsConnection = tokio_rustls::server::TlsStream<TcpStream>;

/// The loaded `[security]` credentials and the configurations built from them.
#[derive(Clone)]
pub(crate) struct Tls {
    server: Arc<rustls::ServerConfig>,
    /// The certificate and key the clients present (the forwarding client's resolver).
    identity: Arc<CertifiedKey>,
    /// The check of the peers' certificates against the CA (the forwarding client's).
    server_verifier: Arc<WebPkiServerVerifier>,
    files: Files,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

fn invalid(message: String) -> Error {
    Error::InvalidConfig { message }
}

/// One file's bytes, or why it could not be read.
type FileRead = std::result::Result<Vec<u8>, String>;

/// What the three files of `[security]` held when read: the watcher compares two readings to
/// see a change, and builds the new set from the very bytes it compared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Files {
    ca: FileRead,
    cert: FileRead,
    key: FileRead,
}

impl Files {
    /// Reads the files `security` names.
    pub(crate) fn read(security: &SecurityConfig) -> Files {
        let read = |path: &str| std::fs::read(path).map_err(|err| err.to_string());
        Files {
            ca: read(&security.ca_path),
            cert: read(&security.cert_path),
            key: read(&security.key_path),
        }
    }
}

fn read<'a>(key: &str, path: &str, read: &'a FileRead) -> Result<&'a [u8]> {
    read.as_deref()
        .map_err(|err| invalid(format!("[security] {key} {path}: {err}")))
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
        Tls::from_files(security, Files::read(security))
    }

    /// As [`Tls::load`], from files already read.
    pub(crate) fn from_files(security: &SecurityConfig, files: Files) -> Result<Tls> {
        let ca_pem = read("ca-path", &security.ca_path, &files.ca)?;
        let cert_pem = read("cert-path", &security.cert_path, &files.cert)?;
        let key_pem = read("key-path", &security.key_path, &files.key)?;
        let mut roots = RootCertStore::empty();
        for ca in certificates("ca-path", &security.ca_path, ca_pem)? {
            roots.add(ca).map_err(|err| {
                invalid(format!(
                    "[security] ca-path {}: not a CA certificate: {err}",
                    security.ca_path
                ))
            })?;
        }
        let roots = Arc::new(roots);
        let chain = certificates("cert-path", &security.cert_path, cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|err| {
            invalid(format!(
                "[security] key-path {}: invalid private key: {err}",
                security.key_path
            ))
        })?;
        let mismatch = |err: rustls::Error| {
            invalid(format!(
                "[security] key-path {} does not fit cert-path {}: {err}",
                security.key_path, security.cert_path
            ))
        };
        let provider = provider();
        // A key in PEM whose content the provider cannot use is named as such, not as a
        // mismatch with the certificate.
        let signing_key = provider
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|err| {
                invalid(format!(
                    "[security] key-path {}: invalid private key: {err}",
                    security.key_path
                ))
            })?;
        let identity = CertifiedKey::new(chain.clone(), signing_key);
        match identity.keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(err) => return Err(mismatch(err)),
        }
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
            .with_single_cert(chain, key)
            .map_err(mismatch)?;
        // gRPC (p2p) needs HTTP/2; curl and browsers may speak HTTP/1.1.
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|err| {
                invalid(format!(
                    "[security] ca-path {}: unusable to verify servers: {err}",
                    security.ca_path
                ))
            })?;
        Ok(Tls {
            server: Arc::new(server),
            identity: Arc::new(identity),
            server_verifier,
            files,
        })
    }

    /// The bytes of a file read successfully (every file of a loaded set was).
    fn pem(read: &FileRead) -> Vec<u8> {
        read.clone().unwrap_or_default()
    }

    /// The credentials of the etcd client.
    pub(crate) fn etcd(&self) -> cdc_etcd::TlsConfig {
        cdc_etcd::TlsConfig {
            ca_pem: Tls::pem(&self.files.ca),
            identity: Some((Tls::pem(&self.files.cert), Tls::pem(&self.files.key))),
        }
    }

    /// The credentials of the p2p clients.
    pub(crate) fn peer(&self) -> cdc_p2p::PeerTls {
        cdc_p2p::PeerTls {
            ca_pem: Tls::pem(&self.files.ca),
            cert_pem: Tls::pem(&self.files.cert),
            key_pem: Tls::pem(&self.files.key),
        }
    }

    /// The acceptor of the port.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.server))
    }

    /// The served certificate's subject, serial number and expiry, for the log.
    fn describe(&self) -> (String, String, String) {
        let unknown = || ("?".to_owned(), "?".to_owned(), "?".to_owned());
        let Some(cert) = self.identity.cert.first() else {
            return unknown();
        };
        match x509_parser::parse_x509_certificate(cert.as_ref()) {
            Ok((_, parsed)) => (
                parsed.subject().to_string(),
                parsed.raw_serial_as_string(),
                parsed.validity().not_after.to_string(),
            ),
            Err(_) => unknown(),
        }
    }
}

/// The credentials in use, shared by the port, the forwarding client and the capture (which
/// hands them to each incarnation's p2p clients); [`Reloader`] replaces them.
#[derive(Clone, Debug)]
pub(crate) struct CurrentTls(Arc<RwLock<Arc<Tls>>>);

impl CurrentTls {
    pub(crate) fn new(tls: Tls) -> CurrentTls {
        CurrentTls(Arc::new(RwLock::new(Arc::new(tls))))
    }

    /// Loads the files of `config` if TLS is on; a failure is logged (the configuration was
    /// validated, so the files were good moments ago) and leaves no credentials.
    pub(crate) fn from_config(config: &Config) -> Option<CurrentTls> {
        if !config.security.is_tls_enabled() {
            return None;
        }
        match Tls::load(&config.security) {
            Ok(tls) => Some(CurrentTls::new(tls)),
            Err(err) => {
                error!(error = %cdc_model::ErrorReport(&err), "reading the certificates failed");
                None
            }
        }
    }

    /// The set in use.
    pub(crate) fn get(&self) -> Arc<Tls> {
        let current = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(&current)
    }

    fn set(&self, tls: Tls) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(tls);
    }

    /// The p2p clients' credentials: the set in use (a new incarnation sees renewed files).
    pub(crate) fn peer(&self) -> cdc_p2p::PeerTls {
        self.get().peer()
    }
}

/// What one look at the files found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reload {
    /// The files are as last read.
    Unchanged,
    /// They changed and the new set is in use.
    Reloaded,
    /// They changed and the new set does not load; the previous one stays in use.
    Failed,
}

/// Watches the files of `[security]` and replaces the set in use when they change.
#[derive(Debug)]
pub(crate) struct Reloader {
    security: SecurityConfig,
    current: CurrentTls,
    /// The files as last read; a set that failed to load is tried again once they change
    /// again (a half-written file is complete at a later look).
    seen: Files,
}

impl Reloader {
    /// A reloader of `current`, which was loaded from `security`'s files.
    pub(crate) fn new(security: SecurityConfig, current: CurrentTls) -> Reloader {
        let seen = current.get().files.clone();
        Reloader {
            security,
            current,
            seen,
        }
    }

    /// Reads the files and, if they changed since the last look, loads them and puts the new
    /// set in use; a set that does not load is logged with its error and the previous set
    /// stays in use.
    pub(crate) fn poll(&mut self) -> Reload {
        let files = Files::read(&self.security);
        if files == self.seen {
            return Reload::Unchanged;
        }
        self.seen = files.clone();
        match Tls::from_files(&self.security, files) {
            Ok(tls) => {
                let (subject, serial, not_after) = tls.describe();
                self.current.set(tls);
                info!(%subject, %serial, %not_after, "reloaded the changed certificate files");
                Reload::Reloaded
            }
            Err(err) => {
                // A warning: the capture goes on with the previous set, and a replacement
                // written in steps fails here until it is complete.
                warn!(
                    error = %cdc_model::ErrorReport(&err),
                    "reloading the changed certificate files failed; the previous certificates stay in use"
                );
                Reload::Failed
            }
        }
    }
}

/// Looks at the certificate files every [`RELOAD_POLL_INTERVAL`] until `cancel`, counting the
/// reloads in `reloads` (`ticdc_server_tls_reload_total`, by `result`).
pub(crate) async fn watch(
    mut reloader: Reloader,
    reloads: IntCounterVec,
    cancel: CancellationToken,
) {
    let mut ticks = tokio::time::interval(RELOAD_POLL_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let result = match reloader.poll() {
            Reload::Unchanged => continue,
            Reload::Reloaded => "ok",
            Reload::Failed => "error",
        };
        reloads.with_label_values(&[result]).inc();
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

/// The URL scheme of the peers' ports.
pub(crate) fn scheme(config: &Config) -> &'static str {
    if config.security.is_tls_enabled() {
        "https"
    } else {
        "http"
    }
}

/// The HTTP client that forwards owner-only requests: over TLS with the set in use when TLS
/// is on, so each new connection presents the current certificate and checks the owner's
/// against the current CA.
pub(crate) fn forwarding_client(
    tls: Option<&CurrentTls>,
    timeout: Duration,
) -> std::result::Result<reqwest::Client, String> {
    install_crypto_provider();
    let builder = reqwest::Client::builder()
        .timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(5));
    let builder = match tls {
        Some(tls) => {
            let current = Arc::new(Current(tls.clone()));
            let client = rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|err| format!("TLS versions: {err}"))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::clone(&current) as _)
                .with_client_cert_resolver(current);
            builder.tls_backend_preconfigured(client)
        }
        None => builder,
    };
    builder
        .build()
        .map_err(|err| cdc_model::ErrorReport(&err).to_string())
}

/// A client of the cluster's HTTP API with the credentials of `security` (`cdc-server cli`'s
/// `--ca`, `--cert`, `--key`, as TiCDC's): over TLS, presenting the certificate, when the three
/// are set; plain otherwise. Partial settings and unusable files are errors naming them.
pub fn api_client(
    security: &SecurityConfig,
    timeout: Duration,
) -> std::result::Result<reqwest::Client, String> {
    security
        .validate(&[])
        .map_err(|err| cdc_model::ErrorReport(&err).to_string())?;
    let tls = if security.is_tls_enabled() {
        let tls = Tls::load(security).map_err(|err| cdc_model::ErrorReport(&err).to_string())?;
        Some(CurrentTls::new(tls))
    } else {
        None
    };
    forwarding_client(tls.as_ref(), timeout)
}

/// The forwarding client's certificate and check of the owner's, from the set in use at each
/// handshake.
#[derive(Debug)]
struct Current(CurrentTls);

impl ResolvesClientCert for Current {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.get().identity))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ServerCertVerifier for Current {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        self.0.get().server_verifier.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .get()
            .server_verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .get()
            .server_verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.get().server_verifier.supported_verify_schemes()
    }
}

/// Accepts TCP connections on `listener` and hands those whose handshake succeeded to the
/// returned stream, until `cancel`. Each handshake uses the set in use when the connection
/// came (`tls`). Handshakes run concurrently (one slow client holds up no
/// other), each under [`HANDSHAKE_TIMEOUT`], on tasks of `tracker`; a refused client is logged
/// with its address and the reason (with the certificate's CN).
pub(crate) fn incoming(
    listener: TcpListener,
    tls: CurrentTls,
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
                tls.get().acceptor(),
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
