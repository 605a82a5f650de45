//! TLS to the sinks against real servers with certificates made at run time (rcgen): an etcd
//! with `--client-cert-auth`, a MariaDB with `require_secure_transport` and a user that requires
//! a client certificate, a NATS server with `--tlsverify`; and the checks of the files.

use std::path::{Path, PathBuf};

use cdc_etcd::TlsConfig;
use cdc_etcd::testing::{EtcdServer, ServerTls};
use cdc_model::{ChangeEvent, ErrorReport};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::testing::{MariaDb, NatsServer, TlsFiles};
use crate::{AnySink, Error, MysqlSink, NatsSink, SharedSinks, Sink, SinkConfig, SinkUri};

/// A certificate and its key, as files.
struct Pair {
    cert: PathBuf,
    key: PathBuf,
}

/// The certificates of one test: a CA that signed a server and a client certificate (both
/// naming 127.0.0.1), and another CA.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
    server: Pair,
    client: Pair,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(dir: &Path, name: &str, issuer: &CertifiedIssuer<'static, KeyPair>) -> Pair {
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    let pair = Pair {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}-key.pem")),
    };
    std::fs::write(&pair.cert, cert.pem()).unwrap();
    std::fs::write(&pair.key, key.serialize_pem()).unwrap();
    pair
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let main = ca("cdc sink test CA");
        let other = ca("another CA");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, main.pem()).unwrap();
        let other_ca = dir.path().join("other-ca.pem");
        std::fs::write(&other_ca, other.pem()).unwrap();
        Pki {
            ca,
            other_ca,
            server: leaf(dir.path(), "server", &main),
            client: leaf(dir.path(), "client", &main),
            _dir: dir,
        }
    }

    /// The server's files, requiring the client certificate.
    fn server_files(&self) -> TlsFiles {
        TlsFiles {
            ca_file: self.ca.clone(),
            cert_file: self.server.cert.clone(),
            key_file: self.server.key.clone(),
            client: Some((self.client.cert.clone(), self.client.key.clone())),
        }
    }

    /// `&<ca>=...&<cert>=...&<key>=...` with the CA `ca` and the client certificate.
    fn query(&self, names: crate::TlsParameters, ca: &Path) -> String {
        format!(
            "&{}={}&{}={}&{}={}",
            names.ca,
            ca.display(),
            names.cert,
            self.client.cert.display(),
            names.key,
            self.client.key.display()
        )
    }
}

fn target() -> crate::SpanTarget<'static> {
    crate::SpanTarget {
        changefeed: "cf",
        span: "span-0",
        source_prefix: b"/src/",
        start_key: b"/src/",
        end_key: b"/src0",
    }
}

/// The report of `err` in lower case, for matching.
fn report(err: &Error) -> String {
    ErrorReport(err).to_string().to_lowercase()
}

#[tokio::test]
async fn bad_files_are_errors_naming_the_parameter_and_the_file() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let missing = dir.path().join("missing.pem");
    let load = |uri: String| async move {
        let SinkConfig::Etcd(config) = SinkUri::parse(&uri).unwrap().config else {
            panic!("not an etcd sink")
        };
        config.tls.unwrap().load().await
    };
    let base = "etcd://127.0.0.1:1/dst/?";
    let (ca, cert, key) = (
        pki.ca.display(),
        pki.client.cert.display(),
        pki.client.key.display(),
    );
    for (uri, parameter, path) in [
        (
            format!("{base}ca={}", missing.display()),
            "ca",
            missing.clone(),
        ),
        (
            format!("{base}ca={}", garbage.display()),
            "ca",
            garbage.clone(),
        ),
        (
            format!("{base}ca={ca}&cert={}&key={key}", garbage.display()),
            "cert",
            garbage.clone(),
        ),
        (
            format!("{base}ca={ca}&cert={cert}&key={}", garbage.display()),
            "key",
            garbage.clone(),
        ),
        (
            format!("{base}ca={ca}&cert={cert}&key={}", missing.display()),
            "key",
            missing.clone(),
        ),
        // The server's key does not fit the client's certificate.
        (
            format!("{base}ca={ca}&cert={cert}&key={}", pki.server.key.display()),
            "key",
            pki.server.key.clone(),
        ),
    ] {
        let err = load(uri.clone()).await.unwrap_err();
        assert!(
            matches!(&err, Error::TlsFile { parameter: p, path: named, .. } if *p == parameter && *named == path),
            "{uri}: {err:?}"
        );
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{uri}: {err}"
        );
        assert!(!err.is_retryable(), "{uri}: {err:?}");
    }
    let loaded = load(format!("{base}ca={ca}&cert={cert}&key={key}"))
        .await
        .unwrap();
    assert_eq!(loaded.ca_pem, std::fs::read(&pki.ca).unwrap());
    assert!(loaded.identity.is_some());
    assert!(!format!("{loaded:?}").contains("PRIVATE KEY"));

    // Each sink reads its files when it opens, and the error names its scheme's parameter.
    let shared = SharedSinks::default();
    let uri = SinkUri::parse(&format!("{base}ca={}", missing.display())).unwrap();
    let err = AnySink::open(&uri, target(), &shared).await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::TlsFile {
                parameter: "ca",
                ..
            }
        ),
        "{err:?}"
    );
    let uri = SinkUri::parse(&format!(
        "mysql://u@127.0.0.1:1/d?table=t&ssl-ca={}",
        garbage.display()
    ))
    .unwrap();
    let err = AnySink::open(&uri, target(), &shared).await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::TlsFile {
                parameter: "ssl-ca",
                ..
            }
        ),
        "{err:?}"
    );
    let uri = SinkUri::parse(&format!(
        "nats://127.0.0.1:1/cdc?stream=S&ca={ca}&cert={cert}&key={}",
        missing.display()
    ))
    .unwrap();
    let err = AnySink::open(&uri, target(), &shared).await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::TlsFile {
                parameter: "key",
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn etcd_sink_mirrors_into_an_etcd_with_client_cert_auth() {
    let pki = Pki::new();
    let server = EtcdServer::start_tls(ServerTls {
        cert_file: pki.server.cert.clone(),
        key_file: pki.server.key.clone(),
        trusted_ca_file: pki.ca.clone(),
        client: TlsConfig {
            ca_pem: std::fs::read(&pki.ca).unwrap(),
            identity: Some((
                std::fs::read(&pki.client.cert).unwrap(),
                std::fs::read(&pki.client.key).unwrap(),
            )),
        },
    })
    .await
    .unwrap();
    let host = server.endpoint().trim_start_matches("https://").to_owned();
    let open = |query: String| {
        let uri = SinkUri::parse(&format!("etcd://{host}/dst/?{query}")).unwrap();
        async move {
            let shared = SharedSinks::default();
            let mut sink = AnySink::open(&uri, target(), &shared).await?;
            sink.write(&[ChangeEvent::put("/src/k", "v", 2)]).await?;
            sink.flush().await?;
            sink.close().await
        }
    };
    open(pki.query(crate::TLS_PARAMETERS, &pki.ca))
        .await
        .unwrap();
    let client = server.client().await.unwrap();
    let mirrored = client
        .get("/dst/k", cdc_etcd::GetOptions::default())
        .await
        .unwrap();
    assert_eq!(
        mirrored.kvs.first().map(|kv| kv.value.clone()),
        Some(b"v".to_vec())
    );

    // A CA that did not sign etcd's certificate: the error says why.
    let err = open(pki.query(crate::TLS_PARAMETERS, &pki.other_ca))
        .await
        .unwrap_err();
    assert!(
        report(&err).contains("certificate"),
        "{}",
        ErrorReport(&err)
    );
    // No client certificate: etcd's --client-cert-auth refuses the handshake.
    let err = open(format!("ca={}", pki.ca.display())).await.unwrap_err();
    assert!(matches!(err, Error::Etcd { .. }), "{err:?}");
    // No TLS at all: plain HTTP/2 to a TLS port fails.
    let err = open(String::new()).await.unwrap_err();
    assert!(matches!(err, Error::Etcd { .. }), "{err:?}");
}

#[tokio::test]
async fn mysql_sink_writes_over_tls_and_a_plain_connection_is_refused() {
    let pki = Pki::new();
    let server = MariaDb::start_tls(pki.server_files()).await.unwrap();
    let open = |extra: String| {
        let uri = server.sink_uri("kv", &extra);
        mysql_write(uri)
    };
    let pool = server.pool().await.unwrap();
    // A user that needs no client certificate, to see the transport's own refusal.
    for statement in [
        "CREATE USER 'plain'@'%' IDENTIFIED BY 'plain'",
        "GRANT ALL PRIVILEGES ON cdc.* TO 'plain'@'%'",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    let plain = |extra: String| {
        let uri = server
            .sink_uri("kv", &extra)
            .replacen("cdc:cdc@", "plain:plain@", 1);
        mysql_write(uri)
    };
    open(pki.query(crate::MYSQL_TLS_PARAMETERS, &pki.ca))
        .await
        .unwrap();
    let (value,): (Vec<u8>,) = sqlx::query_as("SELECT v FROM kv WHERE k = '/src/k'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(value, b"v");
    // The harness's connection is encrypted, as the server requires.
    let (_, cipher): (String, String) = sqlx::query_as("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(!cipher.is_empty());
    pool.close().await;
    // TLS with the CA alone, as a user that needs no client certificate.
    plain(format!("&ssl-ca={}", pki.ca.display()))
        .await
        .unwrap();

    // Without TLS the server's refusal is the error: the same user and password that TLS let
    // in are refused (MariaDB 10.11 words `require_secure_transport`'s refusal as an access
    // denied).
    let err = plain(String::new()).await.unwrap_err();
    assert!(
        matches!(err, Error::Mysql { .. }) && report(&err).contains("access denied"),
        "{}",
        ErrorReport(&err)
    );
    let err = open(String::new()).await.unwrap_err();
    assert!(matches!(err, Error::Mysql { .. }), "{}", ErrorReport(&err));
    // TLS without the client certificate the user requires: refused by the server.
    let err = open(format!("&ssl-ca={}", pki.ca.display()))
        .await
        .unwrap_err();
    assert!(
        report(&err).contains("access denied"),
        "{}",
        ErrorReport(&err)
    );
    // A CA that did not sign the server's certificate: refused by the sink.
    let err = open(pki.query(crate::MYSQL_TLS_PARAMETERS, &pki.other_ca))
        .await
        .unwrap_err();
    assert!(
        report(&err).contains("certificate"),
        "{}",
        ErrorReport(&err)
    );
}

/// Opens the MySQL sink at `uri`, writes and flushes one change, and closes it.
async fn mysql_write(uri: String) -> crate::Result<()> {
    let SinkConfig::Mysql(config) = SinkUri::parse(&uri).unwrap().config else {
        panic!("not a mysql sink")
    };
    let mut sink = MysqlSink::open(&config, "cf", b"/src/", b"/src0").await?;
    sink.write(&[ChangeEvent::put("/src/k", "v", 2)]).await?;
    sink.flush().await?;
    sink.close().await
}

#[tokio::test]
async fn nats_sink_publishes_over_mutual_tls_and_refuses_a_server_it_cannot_verify() {
    let pki = Pki::new();
    let server = NatsServer::start_tls(pki.server_files()).await.unwrap();
    let open = |extra: String| {
        let uri = server.sink_uri("cdc", "CHANGES", &format!("&create-stream=true{extra}"));
        async move {
            let SinkConfig::Nats(config) = SinkUri::parse(&uri).unwrap().config else {
                panic!("not a nats sink")
            };
            let client = NatsSink::connect(&config).await?;
            let mut sink = NatsSink::open(client, &config, "cf").await?;
            sink.write(&[ChangeEvent::put("/src/k", "v", 2)]).await?;
            sink.flush().await?;
            sink.close().await
        }
    };
    open(pki.query(crate::TLS_PARAMETERS, &pki.ca))
        .await
        .unwrap();
    let jetstream = async_nats::jetstream::new(server.client().await.unwrap());
    let mut stream = jetstream.get_stream("CHANGES").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);

    // Without `ca` the server's certificate is not trusted.
    let err = open(String::new()).await.unwrap_err();
    assert!(
        matches!(err, Error::Nats { op: "connect", .. }) && report(&err).contains("certificate"),
        "{}",
        ErrorReport(&err)
    );
    // A CA that did not sign the server's certificate.
    let err = open(pki.query(crate::TLS_PARAMETERS, &pki.other_ca))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Nats { op: "connect", .. }),
        "{}",
        ErrorReport(&err)
    );
    // No client certificate: the server's --tlsverify refuses.
    let err = open(format!("&ca={}", pki.ca.display())).await.unwrap_err();
    assert!(
        matches!(err, Error::Nats { .. } | Error::NatsTimeout { .. }),
        "{}",
        ErrorReport(&err)
    );
}
