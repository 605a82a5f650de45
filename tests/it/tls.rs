//! TLS end to end: certificates made at run time (rcgen), a real etcd with TLS and
//! `--client-cert-auth`, three `cdc-server` processes with mutual TLS and a CN allowlist; the
//! refusals are checked from outside with curl and a tonic client (`docs/security.md`).
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failure is a test failure"
)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use cdc_etcd::TlsConfig;
use cdc_etcd::testing::{EtcdServer, ServerTls};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde_json::Value;

use crate::support::node::{ServerNode, free_port};
use crate::support::{server_binary, wait_for};

/// The CN of the captures' certificate.
const CAPTURE_CN: &str = "cdc-capture";
/// The CN of an operator's client certificate, allowed.
const CLIENT_CN: &str = "cdc-client";

/// A certificate and its key, as files.
struct Pair {
    cert: PathBuf,
    key: PathBuf,
}

/// The certificates of one test, in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
    etcd: Pair,
    capture: Pair,
    client: Pair,
    stranger: Pair,
    foreign: Pair,
    expired: Pair,
}

fn ca(name: &str) -> Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}

fn leaf(
    dir: &Path,
    name: &str,
    cn: &str,
    issuer: &CertifiedIssuer<'static, KeyPair>,
    expired: bool,
) -> Result<Pair> {
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    if expired {
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    }
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    let pair = Pair {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}-key.pem")),
    };
    std::fs::write(&pair.cert, cert.pem())?;
    std::fs::write(&pair.key, key.serialize_pem())?;
    Ok(pair)
}

impl Pki {
    fn new() -> Result<Pki> {
        Ok(renewable_pki()?.0)
    }

    fn etcd_tls(&self) -> Result<ServerTls> {
        Ok(ServerTls {
            cert_file: self.etcd.cert.clone(),
            key_file: self.etcd.key.clone(),
            trusted_ca_file: self.ca.clone(),
            client: TlsConfig {
                ca_pem: std::fs::read(&self.ca)?,
                identity: Some((
                    std::fs::read(&self.capture.cert)?,
                    std::fs::read(&self.capture.key)?,
                )),
            },
        })
    }

    /// The captures' `[security]` section, trusting `ca`.
    fn security(&self, ca: &Path) -> String {
        format!(
            "capture-session-ttl = 5\n[security]\nca-path = {:?}\ncert-path = {:?}\nkey-path = {:?}\ncert-allowed-cn = [{CAPTURE_CN:?}, {CLIENT_CN:?}]\n",
            ca.display().to_string(),
            self.capture.cert.display().to_string(),
            self.capture.key.display().to_string(),
        )
    }
}

/// What curl got: its exit status, the HTTP status (0 without an answer), the body.
struct Curl {
    ok: bool,
    code: u16,
    body: String,
    stderr: String,
}

async fn curl(url: &str, ca: Option<&Path>, cert: Option<&Pair>) -> Result<Curl> {
    let mut command = tokio::process::Command::new("curl");
    command.args(["-sS", "--max-time", "5", "-w", "\n%{http_code}"]);
    if let Some(ca) = ca {
        command.arg("--cacert").arg(ca);
    }
    if let Some(pair) = cert {
        command
            .arg("--cert")
            .arg(&pair.cert)
            .arg("--key")
            .arg(&pair.key);
    }
    let output = command
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .await
        .context("run curl (is it installed?)")?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    Ok(Curl {
        ok: output.status.success(),
        code: code.trim().parse().unwrap_or(0),
        body: body.to_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// A `POST` of a JSON body over HTTPS with the allowed client certificate.
async fn post_json(pki: &Pki, node: &ServerNode, path: &str, body: &str) -> Result<Curl> {
    let output = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
        ])
        .args(["-H", "content-type: application/json", "-d", body])
        .arg("--cacert")
        .arg(&pki.ca)
        .arg("--cert")
        .arg(&pki.client.cert)
        .arg("--key")
        .arg(&pki.client.key)
        .arg(format!("https://{}{path}", node.address))
        .stdin(Stdio::null())
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let (answer, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    Ok(Curl {
        ok: output.status.success(),
        code: code.trim().parse().unwrap_or(0),
        body: answer.to_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// A `GET` over HTTPS with the allowed client certificate, as JSON.
async fn get(pki: &Pki, node: &ServerNode, path: &str) -> Result<Value> {
    let answer = curl(
        &format!("https://{}{path}", node.address),
        Some(&pki.ca),
        Some(&pki.client),
    )
    .await?;
    ensure!(
        answer.ok && answer.code == 200,
        "GET {path}: {} {} {}",
        answer.code,
        answer.body,
        answer.stderr
    );
    Ok(serde_json::from_str(&answer.body)?)
}

/// Whether the cluster is whole: every node answers over HTTPS, three captures, one owner.
async fn healthy(pki: &Pki, nodes: &[ServerNode]) -> Option<()> {
    let mut owners = 0;
    for node in nodes {
        // A non-owner forwards this to the owner, over TLS.
        let captures = get(pki, node, "/api/v2/captures").await.ok()?;
        if captures["total"] != nodes.len() {
            return None;
        }
        let status = get(pki, node, "/status").await.ok()?;
        if status["is_owner"].as_bool()? {
            owners += 1;
        }
    }
    (owners == 1).then_some(())
}

/// The messages the node's p2p server received in this incarnation.
async fn p2p_received(pki: &Pki, node: &ServerNode) -> Option<i64> {
    let answer = curl(
        &format!("https://{}/metrics", node.address),
        Some(&pki.ca),
        Some(&pki.client),
    )
    .await
    .ok()?;
    answer
        .body
        .lines()
        .find(|line| {
            line.starts_with("ticdc_p2p_incarnation_messages")
                && line.contains("counter=\"received\"")
                && line.contains("side=\"server\"")
        })?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

/// A p2p call through a tonic client: whether the server answered the opening of a stream.
async fn grpc_call(address: &str, tls: Option<cdc_p2p::PeerTls>) -> Result<()> {
    let config = cdc_p2p::ClientConfig {
        tls,
        ..cdc_p2p::ClientConfig::default()
    };
    let mut client = cdc_p2p::connect(address, &config).await?;
    let request = futures::stream::empty::<cdc_p2p::proto::MessagePacket>();
    let call = tokio::time::timeout(Duration::from_secs(5), client.send_message(request))
        .await
        .context("the call did not finish")?;
    // The server answers the stream's headers only over an accepted connection.
    match call {
        Ok(_) => Ok(()),
        Err(status) => bail!("{:?}: {status}", status.code()),
    }
}

fn peer_tls(ca: &Path, pair: &Pair) -> Result<cdc_p2p::PeerTls> {
    Ok(cdc_p2p::PeerTls {
        ca_pem: std::fs::read(ca)?,
        cert_pem: std::fs::read(&pair.cert)?,
        key_pem: std::fs::read(&pair.key)?,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutual_tls_cluster_works_and_refuses_strangers() -> Result<()> {
    let pki = Pki::new()?;
    let etcd = EtcdServer::start_tls(pki.etcd_tls()?).await?;
    assert!(etcd.endpoint().starts_with("https://"));
    let config = pki.security(&pki.ca);
    let nodes: Vec<ServerNode> = (0..3)
        .map(|_| ServerNode::start(&etcd.endpoint(), "tls", &config))
        .collect();
    let tails = |nodes: &[ServerNode]| {
        nodes
            .iter()
            .map(|node| node.log_tail(20))
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    wait_for(Duration::from_secs(90), || healthy(&pki, &nodes))
        .await
        .with_context(|| format!("the TLS cluster did not form:\n{}", tails(&nodes)))?;
    // The captures talk p2p over TLS: the owner's scheduler and the agents exchange messages.
    wait_for(Duration::from_secs(90), || async {
        for node in &nodes {
            if p2p_received(&pki, node).await? > 0 {
                return Some(());
            }
        }
        None
    })
    .await
    .with_context(|| format!("no p2p message arrived:\n{}", tails(&nodes)))?;
    // A non-owner forwards the owner's API over TLS.
    let mut forwarded = false;
    for node in &nodes {
        if !get(&pki, node, "/status").await?["is_owner"]
            .as_bool()
            .unwrap_or(true)
        {
            let feeds = get(&pki, node, "/api/v2/changefeeds").await?;
            ensure!(feeds.is_object() || feeds.is_array(), "{feeds}");
            forwarded = true;
            break;
        }
    }
    ensure!(forwarded, "no non-owner found");
    // The data plane reads the cluster's etcd over TLS: a changefeed on the default upstream
    // replicates a change into a file sink.
    let sink_dir = pki.dir.path().join("sink");
    std::fs::create_dir_all(sink_dir.join("tls-feed"))?;
    let body = serde_json::json!({
        "changefeed_id": "tls-feed",
        "sink_uri": format!("file://{}?flush-interval=200ms", sink_dir.display()),
        "replica_config": {"filter": {"rules": ["/tls-demo/"]}},
    })
    .to_string();
    let created = post_json(&pki, &nodes[0], "/api/v2/changefeeds", &body).await?;
    ensure!(
        created.ok && created.code == 200,
        "create: {} {} {}",
        created.code,
        created.body,
        created.stderr
    );
    let etcd_client = etcd.client().await?;
    wait_for(Duration::from_secs(60), || async {
        etcd_client.put("/tls-demo/key", "over-tls", 0).await.ok()?;
        let files = std::fs::read_dir(sink_dir.join("tls-feed")).ok()?;
        for file in files.flatten() {
            let text = std::fs::read_to_string(file.path()).unwrap_or_default();
            if text.contains("/tls-demo/key") {
                return Some(());
            }
        }
        None
    })
    .await
    .with_context(|| format!("the change was not replicated:\n{}", tails(&nodes)))?;
    // The allowed client reaches gRPC too.
    let target = &nodes[0];
    grpc_call(&target.address, Some(peer_tls(&pki.ca, &pki.client)?))
        .await
        .context("the allowed gRPC client")?;

    // Refusals, each from outside; the cluster stays whole after each.
    let https = format!("https://{}/status", target.address);
    let http = format!("http://{}/status", target.address);
    let plain = curl(&http, None, None).await?;
    ensure!(plain.code != 200, "plain HTTP answered: {}", plain.body);
    let plain_grpc = grpc_call(&target.address, None).await;
    ensure!(plain_grpc.is_err(), "plain gRPC was served");
    for (what, pair) in [
        ("a certificate from another CA", &pki.foreign),
        ("a CN not allowed", &pki.stranger),
        ("an expired certificate", &pki.expired),
    ] {
        let answer = curl(&https, Some(&pki.ca), Some(pair)).await?;
        ensure!(
            !answer.ok && answer.code != 200,
            "{what}: served {} {}",
            answer.code,
            answer.body
        );
        ensure!(
            grpc_call(&target.address, Some(peer_tls(&pki.ca, pair)?))
                .await
                .is_err(),
            "{what}: gRPC was served"
        );
    }
    let anonymous = curl(&https, Some(&pki.ca), None).await?;
    ensure!(
        !anonymous.ok && anonymous.code != 200,
        "no client certificate: served {}",
        anonymous.body
    );
    // The refusals are logged with the address and the CN.
    wait_for(Duration::from_secs(10), || async {
        let log = target.log_text();
        (log.contains("refused a TLS client's certificate peer=127.0.0.1:")
            && log.contains("cn=\"stranger\" reason=not in cert-allowed-cn")
            && log.contains("refused a TLS client peer=127.0.0.1:"))
        .then_some(())
    })
    .await
    .with_context(|| format!("no refusal logged:\n{}", target.log_tail(20)))?;
    // TiCDC's `cli --ca --cert --key` talks to the TLS cluster; without them it is refused.
    let path = |path: &Path| path.display().to_string();
    let server = format!("https://{}", target.address);
    let output = tokio::process::Command::new(server_binary())
        .args(["cli", "--server", &server, "--ca", &path(&pki.ca)])
        .args([
            "--cert",
            &path(&pki.client.cert),
            "--key",
            &path(&pki.client.key),
        ])
        .args(["capture", "list"])
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success() && stdout.contains(&target.address),
        "cli over TLS: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = tokio::process::Command::new(server_binary())
        .args(["cli", "--server", &server, "capture", "list"])
        .output()
        .await?;
    ensure!(
        !output.status.success(),
        "cli without a certificate was served"
    );
    wait_for(Duration::from_secs(30), || healthy(&pki, &nodes))
        .await
        .with_context(|| format!("the cluster broke:\n{}", tails(&nodes)))?;
    for node in &nodes {
        ensure!(
            !node.log_text().contains("panicked"),
            "{}",
            node.log_tail(20)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_that_distrusts_etcd_exits_with_status_1() -> Result<()> {
    let pki = Pki::new()?;
    let etcd = EtcdServer::start_tls(pki.etcd_tls()?).await?;
    let config_path = pki.dir.path().join("wrong-ca.toml");
    std::fs::write(&config_path, pki.security(&pki.other_ca))?;
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(server_binary())
            .args(["--pd", &etcd.endpoint(), "--addr"])
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .context("cdc-server did not exit")??;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.code() == Some(1),
        "{:?}: {stderr}",
        output.status
    );
    ensure!(stderr.contains("TLS to etcd"), "{stderr}");
    // An https:// endpoint without a CA is a configuration error.
    let output = tokio::process::Command::new(server_binary())
        .args(["--pd", &etcd.endpoint(), "--addr"])
        .arg(format!("127.0.0.1:{}", free_port()))
        .stdin(Stdio::null())
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.code() == Some(2),
        "{:?}: {stderr}",
        output.status
    );
    ensure!(stderr.contains("ca-path"), "{stderr}");
    Ok(())
}

/// Every file under `dir`, read as text (the file sink's output).
fn sink_text(dir: &Path) -> String {
    let mut text = String::new();
    let mut pending = vec![dir.to_owned()];
    // The sink's tree is a few levels deep; the bound only guards against a loop.
    for _ in 0..1_000 {
        let Some(path) = pending.pop() else { break };
        if path.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                pending.extend(entries.flatten().map(|entry| entry.path()));
            }
        } else if let Ok(content) = std::fs::read_to_string(&path) {
            text.push_str(&content);
        }
    }
    text
}

/// `POST /api/v2/changefeeds` on a plain-HTTP capture: the status and the JSON answer.
async fn create_changefeed(node: &ServerNode, body: &Value) -> Result<(u16, Value)> {
    let url = format!("http://{}/api/v2/changefeeds", node.address);
    let (status, text) = crate::support::node::send_when_ready(|| {
        crate::support::http_client()
            .post(&url)
            .json(body)
            .timeout(Duration::from_secs(30))
    })
    .await?;
    Ok((
        status.as_u16(),
        serde_json::from_str(&text).unwrap_or(Value::Null),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changefeed_reads_another_upstream_over_tls_with_its_own_files() -> Result<()> {
    // The cluster's own etcd and capture speak plain HTTP; the other upstream only mutual TLS,
    // with a CA the capture's configuration does not know.
    let (cluster_etcd, cluster_client) = crate::support::etcd().await;
    let pki = Pki::new()?;
    let upstream = EtcdServer::start_tls(pki.etcd_tls()?).await?;
    let upstream_client =
        cdc_etcd::EtcdClient::connect(&upstream.endpoints(), upstream.connect_config()).await?;
    let node = ServerNode::start(
        &cluster_etcd.endpoint(),
        "default",
        "capture-session-ttl = 5\n",
    );
    wait_for(Duration::from_secs(60), || async {
        node.status().await.ok()
    })
    .await
    .with_context(|| node.log_tail(20))?;
    let out = tempfile::tempdir()?;
    let changefeed = |id: &str, ca: &Path| {
        serde_json::json!({
            "changefeed_id": id,
            "sink_uri": format!("file://{}?flush-interval=100ms", out.path().join(id).display()),
            "replica_config": {"filter": {"rules": ["/tls/"]}},
            "pd_addrs": [upstream.endpoint()],
            "ca_path": ca,
            "cert_path": pki.capture.cert,
            "key_path": pki.capture.key,
        })
    };

    // Refusals, each with the reason: no CA for an https:// upstream, and a CA that does not
    // trust the upstream's certificate.
    let mut no_ca = changefeed("no-ca", &pki.ca);
    no_ca["ca_path"] = Value::Null;
    let (status, answer) = create_changefeed(&node, &no_ca).await?;
    ensure!(status == 400, "{status} {answer}");
    ensure!(
        answer["error_msg"]
            .as_str()
            .is_some_and(|msg| msg.contains("ca_path is empty")),
        "{answer}"
    );
    let (status, answer) = create_changefeed(&node, &changefeed("wrong-ca", &pki.other_ca)).await?;
    ensure!(status == 400, "{status} {answer}");
    ensure!(
        answer["error_msg"]
            .as_str()
            .is_some_and(|msg| msg.contains("pd_addrs")),
        "{answer}"
    );

    // With its own files (TiCDC's `cli changefeed create --upstream-*` flags) the changefeed
    // reads the upstream and the sink gets its changes.
    upstream_client.put("/tls/a", "before", 0).await?;
    let rules = pki.dir.path().join("changefeed.toml");
    std::fs::write(&rules, "[filter]\nrules = [\"/tls/\"]\n")?;
    let path = |path: &Path| path.display().to_string();
    let sink_uri = format!(
        "file://{}?flush-interval=100ms",
        out.path().join("tls-feed").display()
    );
    let (ok, stdout, stderr) = crate::operator::cli(
        &node.address,
        &[
            "changefeed",
            "create",
            "-c",
            "tls-feed",
            "--sink-uri",
            &sink_uri,
            "--config",
            &path(&rules),
            "--upstream-pd",
            &upstream.endpoint(),
            "--upstream-ca",
            &path(&pki.ca),
            "--upstream-cert",
            &path(&pki.capture.cert),
            "--upstream-key",
            &path(&pki.capture.key),
        ],
    )
    .await?;
    ensure!(ok, "{stderr}{stdout}\n{}", node.log_tail(20));
    let answer: Value = serde_json::from_str(
        stdout
            .split_once("Info: ")
            .with_context(|| format!("no Info in {stdout}"))?
            .1,
    )?;
    // The upstream info keeps the files, under TiCDC's keys, for every capture to use.
    let upstream_id = answer["upstream_id"]
        .as_u64()
        .context("the answer's upstream_id")?;
    let key = format!("/tidb/cdc/default/default/upstream/{upstream_id}");
    let stored = cluster_client
        .get(key.as_bytes(), Default::default())
        .await?;
    let info: Value = serde_json::from_slice(
        &stored
            .kvs
            .first()
            .with_context(|| format!("no {key}"))?
            .value,
    )?;
    ensure!(
        info["ca-path"] == pki.ca.display().to_string()
            && info["cert-path"] == pki.capture.cert.display().to_string()
            && info["key-path"] == pki.capture.key.display().to_string()
            && info["pd-endpoints"] == upstream.endpoint(),
        "{info}"
    );
    upstream_client.put("/tls/b", "after", 0).await?;
    let sink = out.path().join("tls-feed");
    wait_for(Duration::from_secs(60), || async {
        let text = sink_text(&sink);
        (text.contains("/tls/b") && text.contains("after")).then_some(())
    })
    .await
    .with_context(|| node.log_tail(30))?;
    Ok(())
}

/// The certificates of one test ([`Pki`]), with the CA that signed them kept to sign renewals.
fn renewable_pki() -> Result<(Pki, CertifiedIssuer<'static, KeyPair>)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().to_owned();
    let main = ca("cdc test CA")?;
    let other = ca("another CA")?;
    let ca_path = path.join("ca.pem");
    std::fs::write(&ca_path, main.pem())?;
    let other_ca = path.join("other-ca.pem");
    std::fs::write(&other_ca, other.pem())?;
    let pki = Pki {
        ca: ca_path,
        other_ca,
        etcd: leaf(&path, "etcd", "etcd", &main, false)?,
        capture: leaf(&path, "capture", CAPTURE_CN, &main, false)?,
        client: leaf(&path, "client", CLIENT_CN, &main, false)?,
        stranger: leaf(&path, "stranger", "stranger", &main, false)?,
        foreign: leaf(&path, "foreign", CLIENT_CN, &other, false)?,
        expired: leaf(&path, "expired", CLIENT_CN, &main, true)?,
        dir,
    };
    Ok((pki, main))
}

/// A server-certificate check that records the end-entity certificate it is shown, then
/// checks it against the CA as any client would.
#[derive(Debug)]
struct RecordServed {
    inner: std::sync::Arc<tokio_rustls::rustls::client::WebPkiServerVerifier>,
    served: std::sync::Mutex<Option<Vec<u8>>>,
}

impl tokio_rustls::rustls::client::danger::ServerCertVerifier for RecordServed {
    fn verify_server_cert(
        &self,
        end_entity: &tokio_rustls::rustls::pki_types::CertificateDer<'_>,
        intermediates: &[tokio_rustls::rustls::pki_types::CertificateDer<'_>],
        server_name: &tokio_rustls::rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: tokio_rustls::rustls::pki_types::UnixTime,
    ) -> std::result::Result<
        tokio_rustls::rustls::client::danger::ServerCertVerified,
        tokio_rustls::rustls::Error,
    > {
        *self.served.lock().unwrap() = Some(end_entity.as_ref().to_vec());
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &tokio_rustls::rustls::pki_types::CertificateDer<'_>,
        dss: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> std::result::Result<
        tokio_rustls::rustls::client::danger::HandshakeSignatureValid,
        tokio_rustls::rustls::Error,
    > {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &tokio_rustls::rustls::pki_types::CertificateDer<'_>,
        dss: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> std::result::Result<
        tokio_rustls::rustls::client::danger::HandshakeSignatureValid,
        tokio_rustls::rustls::Error,
    > {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<tokio_rustls::rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The DER of the (first) certificate in a PEM file.
fn certificate_der(path: &Path) -> Result<Vec<u8>> {
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    Ok(CertificateDer::from_pem_file(path)?.as_ref().to_vec())
}

/// The certificate `address` serves, seen by a rustls client that presents the allowed client
/// certificate and completes the handshake.
async fn served_certificate(pki: &Pki, address: &str) -> Result<Vec<u8>> {
    use std::sync::Arc;
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(&pki.ca)?)?;
    let recorder = Arc::new(RecordServed {
        inner: rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&provider),
        )
        .build()?,
        served: std::sync::Mutex::new(None),
    });
    let chain = CertificateDer::pem_file_iter(&pki.client.cert)?
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&pki.client.key)?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::clone(&recorder) as _)
        .with_client_auth_cert(chain, key)?;
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect(address).await?;
        let name = ServerName::try_from("127.0.0.1")?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(5), handshake)
        .await
        .context("the handshake did not finish")??;
    let served = recorder.served.lock().unwrap().take();
    served.context("no certificate served")
}

/// The node's `ticdc_server_tls_reload_total` for `result`.
async fn tls_reloads(pki: &Pki, node: &ServerNode, result: &str) -> Option<f64> {
    let answer = curl(
        &format!("https://{}/metrics", node.address),
        Some(&pki.ca),
        Some(&pki.client),
    )
    .await
    .ok()?;
    let series = format!("ticdc_server_tls_reload_total{{result=\"{result}\"}} ");
    answer
        .body
        .lines()
        .find_map(|line| line.strip_prefix(series.as_str()))?
        .trim()
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificate_files_are_served_without_a_restart_and_a_broken_key_keeps_the_last_good_ones()
-> Result<()> {
    let (pki, issuer) = renewable_pki()?;
    let etcd = EtcdServer::start_tls(pki.etcd_tls()?).await?;
    let config = pki.security(&pki.ca);
    let nodes: Vec<ServerNode> = (0..2)
        .map(|_| ServerNode::start(&etcd.endpoint(), "tls-reload", &config))
        .collect();
    let tails = |nodes: &[ServerNode]| {
        nodes
            .iter()
            .map(|node| node.log_tail(20))
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    wait_for(Duration::from_secs(90), || healthy(&pki, &nodes))
        .await
        .with_context(|| format!("the TLS cluster did not form:\n{}", tails(&nodes)))?;
    let original = certificate_der(&pki.capture.cert)?;
    for node in &nodes {
        ensure!(served_certificate(&pki, &node.address).await? == original);
    }

    // A renewed pair (a new key, a new serial) is written beside the files and renamed into
    // place, as docs/security.md advises.
    let renewed = leaf(pki.dir.path(), "renewed", CAPTURE_CN, &issuer, false)?;
    let renewed_der = certificate_der(&renewed.cert)?;
    ensure!(renewed_der != original);
    std::fs::rename(&renewed.key, &pki.capture.key)?;
    std::fs::rename(&renewed.cert, &pki.capture.cert)?;
    for node in &nodes {
        wait_for(Duration::from_secs(60), || async {
            let served = served_certificate(&pki, &node.address).await.ok()?;
            (served == renewed_der).then_some(())
        })
        .await
        .with_context(|| format!("the renewed certificate is not served:\n{}", tails(&nodes)))?;
        ensure!(
            node.log_text()
                .contains("reloaded the changed certificate files"),
            "{}",
            node.log_tail(20)
        );
        wait_for(Duration::from_secs(10), || async {
            (tls_reloads(&pki, node, "ok").await? >= 1.0).then_some(())
        })
        .await
        .context("no reload counted")?;
    }
    // The cluster stays whole: the captures forward to the owner and talk p2p with the
    // renewed certificate.
    wait_for(Duration::from_secs(60), || healthy(&pki, &nodes))
        .await
        .with_context(|| format!("the cluster broke after the renewal:\n{}", tails(&nodes)))?;

    // A broken key: the captures keep serving the last good pair and log the error. (The
    // renames above may have been seen half done, a failure of its own: count from here.)
    let mut errors_before = Vec::new();
    for node in &nodes {
        errors_before.push(
            tls_reloads(&pki, node, "error")
                .await
                .context("no ticdc_server_tls_reload_total")?,
        );
    }
    std::fs::write(
        &pki.capture.key,
        "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n",
    )?;
    for (node, before) in nodes.iter().zip(errors_before) {
        wait_for(Duration::from_secs(60), || async {
            node.log_text()
                .lines()
                .any(|line| {
                    line.contains("reloading the changed certificate files failed")
                        && line.contains("invalid private key")
                })
                .then_some(())
        })
        .await
        .with_context(|| format!("the broken key was not reported:\n{}", node.log_tail(20)))?;
        wait_for(Duration::from_secs(10), || async {
            (tls_reloads(&pki, node, "error").await? > before).then_some(())
        })
        .await
        .context("no failed reload counted")?;
        ensure!(
            served_certificate(&pki, &node.address).await? == renewed_der,
            "the last good certificate is not served"
        );
    }
    wait_for(Duration::from_secs(60), || healthy(&pki, &nodes))
        .await
        .with_context(|| format!("the cluster broke after the broken key:\n{}", tails(&nodes)))?;
    for node in &nodes {
        ensure!(
            !node.log_text().contains("panicked"),
            "{}",
            node.log_tail(20)
        );
    }
    Ok(())
}
