//! `cargo xtask run-cluster`: a local etcd and N captures on free loopback ports, logs streamed
//! with a prefix, a demo changefeed (prefix `/demo/` into a file sink under the cluster's
//! directory, or with `--sink mysql` into a table of a `mariadbd` started for it, or with
//! `--sink nats` into a JetStream stream of a `nats-server -js` started for it), everything
//! stopped and cleaned up on Ctrl-C. With `--tls`, a throwaway CA and certificates (rcgen)
//! under the cluster's directory, etcd on `https://` with `--client-cert-auth`, and captures
//! with mutual TLS (`docs/security.md`); requests go through curl with the client certificate.
#![allow(
    clippy::print_stderr,
    clippy::disallowed_methods,
    reason = "a foreground command: it reports on stderr and polls children from plain threads"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::unistd::Pid;

use crate::{cargo, install, project_root, run_checked};

/// Options of `run-cluster`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Number of captures to start.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Use this etcd instead of starting one.
    #[arg(long)]
    etcd: Option<String>,
    /// The capture-session-ttl of every capture, in seconds (at least 5).
    #[arg(long, default_value_t = 10)]
    session_ttl: u32,
    /// Run this cdc-server binary instead of building the workspace's.
    #[arg(long)]
    server_binary: Option<PathBuf>,
    /// Where etcd's data and the captures' files go (removed on exit); default `target/cluster`.
    #[arg(long)]
    cluster_dir: Option<PathBuf>,
    /// Where the demo changefeed writes: files under the cluster's directory, or a table of a
    /// MariaDB server started for the cluster (its own data directory and port).
    #[arg(long, value_enum, default_value_t = DemoSink::File)]
    sink: DemoSink,
    /// Generate a throwaway CA and certificates, and run etcd and the captures with mutual TLS.
    #[arg(long)]
    tls: bool,
}

/// The files of `--tls`: the CA, etcd's and the captures' certificates, and a client's.
struct TlsFiles {
    ca: PathBuf,
    etcd: (PathBuf, PathBuf),
    capture: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
}

/// The CN of the captures' certificate and of the operator's client certificate.
const CAPTURE_CN: &str = "cdc-capture";
const CLIENT_CN: &str = "cdc-client";

impl TlsFiles {
    /// Makes a CA and certificates for 127.0.0.1 and localhost under `dir`.
    fn generate(dir: &Path) -> Result<TlsFiles> {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair, KeyUsagePurpose,
        };
        std::fs::create_dir_all(dir)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "run-cluster throwaway CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, ca.pem())?;
        let leaf = |name: &str, cn: &str| -> Result<(PathBuf, PathBuf)> {
            let mut params =
                CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &ca)?;
            let paths = (
                dir.join(format!("{name}.pem")),
                dir.join(format!("{name}-key.pem")),
            );
            std::fs::write(&paths.0, cert.pem())?;
            std::fs::write(&paths.1, key.serialize_pem())?;
            Ok(paths)
        };
        Ok(TlsFiles {
            etcd: leaf("etcd", "etcd")?,
            capture: leaf("capture", CAPTURE_CN)?,
            client: leaf("client", CLIENT_CN)?,
            ca: ca_path,
        })
    }

    /// curl's options for the client certificate.
    fn curl_args(&self) -> String {
        format!(
            "--cacert {} --cert {} --key {}",
            self.ca.display(),
            self.client.0.display(),
            self.client.1.display()
        )
    }
}

/// The demo changefeed's sink.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum DemoSink {
    /// `file://<cluster dir>/sink`.
    File,
    /// `mysql://cdc:cdc@127.0.0.1:<port>/cdc?table=demo` on a `mariadbd` of the cluster's own.
    Mysql,
    /// `nats://127.0.0.1:<port>/cdc?stream=CDC&create-stream=true` on a `nats-server -js` of the
    /// cluster's own.
    Nats,
}

struct Process {
    name: String,
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub(crate) fn run(args: Args) -> Result<()> {
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    // Install and build with the default signal handling: Ctrl-C ends them and us.
    install::ensure_tools()?;
    let binary = match &args.server_binary {
        Some(binary) => binary.clone(),
        None => {
            run_checked(cargo().args(["build", "--package", "cdc-server", "--bin", "cdc-server"]))?;
            crate::target_dir().join("debug").join("cdc-server")
        }
    };
    // From here on SIGINT and SIGTERM are taken by one thread. They are blocked before any
    // other thread starts, so every thread inherits the mask (a thread that did not block
    // them would let the default action kill us without cleaning up). Children start with an
    // empty mask: see `spawn`.
    let signals = {
        let mut set = SigSet::empty();
        set.add(Signal::SIGINT);
        set.add(Signal::SIGTERM);
        set
    };
    signals.thread_block().context("block SIGINT and SIGTERM")?;
    let (signal_tx, signal_rx) = mpsc::sync_channel::<Signal>(4);
    thread::spawn(move || {
        while let Ok(signal) = signals.wait() {
            if signal_tx.send(signal).is_err() {
                break;
            }
        }
    });

    let cluster_dir = args
        .cluster_dir
        .clone()
        .unwrap_or_else(|| project_root().join("target").join("cluster"));
    let _ = std::fs::remove_dir_all(&cluster_dir);
    std::fs::create_dir_all(&cluster_dir).context("create target/cluster")?;

    let mut processes: Vec<Process> = Vec::new();
    let started = start(&args, &binary, &cluster_dir, &mut processes, &signal_rx);
    let result = match started {
        Ok(()) => match signal_rx.recv() {
            Ok(signal) => {
                eprintln!("run-cluster: {signal:?} received, stopping the cluster");
                Ok(())
            }
            Err(_) => Err(anyhow::anyhow!("the signal thread ended")),
        },
        Err(err) if err.is::<Interrupted>() => {
            eprintln!("run-cluster: {err}, stopping what was started");
            Ok(())
        }
        Err(err) => Err(err),
    };
    // Captures first (they resign and delete their keys), then etcd.
    for process in processes.iter_mut().rev() {
        if process.name == "etcd" {
            continue;
        }
        stop(process);
    }
    for process in processes.iter_mut() {
        stop(process);
    }
    drop(processes);
    if args.etcd.is_none() {
        let _ = std::fs::remove_dir_all(&cluster_dir);
    }
    eprintln!("run-cluster: stopped");
    result
}

/// A signal arrived before the cluster was up.
#[derive(Debug)]
struct Interrupted(Signal);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} received during startup", self.0)
    }
}

impl std::error::Error for Interrupted {}

/// Waits `pause` for a signal; a signal is [`Interrupted`].
fn check_signal(signals: &mpsc::Receiver<Signal>, pause: Duration) -> Result<()> {
    match signals.recv_timeout(pause) {
        Ok(signal) => Err(Interrupted(signal).into()),
        Err(mpsc::RecvTimeoutError::Timeout) => Ok(()),
        Err(mpsc::RecvTimeoutError::Disconnected) => bail!("the signal thread ended"),
    }
}

/// Starts etcd (unless `--etcd`) and the captures, waits for an owner and prints the summary.
fn start(
    args: &Args,
    binary: &Path,
    cluster_dir: &Path,
    processes: &mut Vec<Process>,
    signals: &mpsc::Receiver<Signal>,
) -> Result<()> {
    let tls = if args.tls {
        Some(TlsFiles::generate(&cluster_dir.join("tls"))?)
    } else {
        None
    };
    let tls = tls.as_ref();
    let etcd_url = match &args.etcd {
        Some(url) => url.clone(),
        None => {
            let client_port = free_port()?;
            let peer_port = free_port()?;
            let scheme = if tls.is_some() { "https" } else { "http" };
            let url = format!("{scheme}://127.0.0.1:{client_port}");
            let peer = format!("http://127.0.0.1:{peer_port}");
            let etcd = std::env::var_os("CDC_ETCD_BIN").unwrap_or_else(|| "etcd".into());
            let mut command = Command::new(etcd);
            command
                .arg("--data-dir")
                .arg(cluster_dir.join("etcd"))
                .args(["--name", "etcd", "--listen-client-urls", &url])
                .args(["--advertise-client-urls", &url, "--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &format!("etcd={peer}")]);
            if let Some(tls) = tls {
                command
                    .arg("--cert-file")
                    .arg(&tls.etcd.0)
                    .arg("--key-file")
                    .arg(&tls.etcd.1)
                    .arg("--trusted-ca-file")
                    .arg(&tls.ca)
                    .arg("--client-cert-auth");
            }
            processes.push(spawn("etcd", command)?);
            wait_tcp(client_port, Duration::from_secs(20), signals).context("wait for etcd")?;
            url
        }
    };

    // The database before the captures, so that it stops after them.
    let sink_port = match args.sink {
        DemoSink::File => None,
        DemoSink::Mysql => {
            let port = free_port()?;
            processes.push(start_mariadb(&cluster_dir.join("mariadb"), port)?);
            wait_tcp(port, Duration::from_secs(60), signals).context("wait for mariadbd")?;
            Some(port)
        }
        DemoSink::Nats => {
            let port = free_port()?;
            let mut command = Command::new(find_binary("CDC_NATS_SERVER_BIN", "nats-server"));
            command
                .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
                .arg(cluster_dir.join("nats"));
            processes.push(spawn("nats", command)?);
            wait_tcp(port, Duration::from_secs(30), signals).context("wait for nats-server")?;
            Some(port)
        }
    };
    let sink_dir = cluster_dir.join("sink");
    let sink_uri = match (args.sink, sink_port) {
        (DemoSink::Mysql, Some(port)) => format!(
            "mysql://cdc:cdc@127.0.0.1:{port}/cdc?table={DEMO_CHANGEFEED}&flush-interval=200ms"
        ),
        (DemoSink::Nats, Some(port)) => format!(
            "nats://127.0.0.1:{port}/cdc?stream=CDC&create-stream=true&flush-interval=200ms"
        ),
        _ => format!("file://{}?flush-interval=200ms", sink_dir.display()),
    };

    let mut addresses = Vec::new();
    for node in 1..=args.nodes {
        let port = free_port()?;
        let address = format!("127.0.0.1:{port}");
        let dir = cluster_dir.join(format!("node-{node}"));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("cdc.toml");
        let mut content = format!("capture-session-ttl = {}\n", args.session_ttl);
        if let Some(tls) = tls {
            content.push_str(&format!(
                "[security]\nca-path = {:?}\ncert-path = {:?}\nkey-path = {:?}\ncert-allowed-cn = [{CAPTURE_CN:?}, {CLIENT_CN:?}]\n",
                tls.ca.display().to_string(),
                tls.capture.0.display().to_string(),
                tls.capture.1.display().to_string(),
            ));
        }
        std::fs::write(&config, content)?;
        let mut command = Command::new(binary);
        command
            .args(["--pd", &etcd_url, "--addr", &address])
            .arg("--data-dir")
            .arg(&dir)
            .arg("--config")
            .arg(&config);
        processes.push(spawn(&format!("node-{node}"), command)?);
        addresses.push(address);
    }

    let owner = wait_owner(&addresses, Duration::from_secs(30), tls, signals)?;
    // The demo changefeed, created through a capture that forwards it to the owner as users'
    // requests are. A failure is reported, not fatal: the cluster stays up for inspection.
    let demo = match create_demo_changefeed(&addresses[0], &sink_dir, &sink_uri, tls, signals) {
        Err(err) if err.is::<Interrupted>() => return Err(err),
        other => other,
    };
    let mut out = std::io::stdout().lock();
    match processes.iter().find(|process| process.name == "etcd") {
        Some(etcd) => writeln!(
            out,
            "\nrun-cluster: etcd at {etcd_url} (pid {})",
            etcd.child.id()
        )?,
        None => writeln!(out, "\nrun-cluster: etcd at {etcd_url}")?,
    }
    for (index, address) in addresses.iter().enumerate() {
        let pid = processes
            .iter()
            .find(|process| process.name == format!("node-{}", index + 1))
            .map(|process| process.child.id())
            .unwrap_or(0);
        writeln!(
            out,
            "run-cluster: node-{} at {}://{address} (pid {pid})",
            index + 1,
            scheme(tls)
        )?;
    }
    writeln!(out, "run-cluster: owner is {owner}")?;
    match &demo {
        Ok(()) => writeln!(
            out,
            "run-cluster: changefeed {DEMO_CHANGEFEED} follows {DEMO_PREFIX} into {sink_uri}"
        )?,
        Err(err) => writeln!(
            out,
            "run-cluster: creating the demo changefeed failed: {err:#}"
        )?,
    }
    let (curl, etcdctl) = match tls {
        Some(tls) => (
            format!("curl -s {}", tls.curl_args()),
            format!("etcdctl {} --endpoints {etcd_url}", tls.curl_args()),
        ),
        None => (
            "curl -s".to_owned(),
            format!("etcdctl --endpoints {etcd_url}"),
        ),
    };
    let http = scheme(tls);
    writeln!(out, "run-cluster: try")?;
    writeln!(
        out,
        "  {curl} {http}://{}/api/v2/changefeeds/{DEMO_CHANGEFEED}",
        addresses[0]
    )?;
    writeln!(
        out,
        "  {etcdctl} put {DEMO_PREFIX}hello world    # a change to replicate"
    )?;
    match (args.sink, sink_port) {
        (DemoSink::Mysql, Some(port)) => writeln!(
            out,
            "  mariadb -h 127.0.0.1 -P {port} -u cdc -pcdc cdc -e 'SELECT k, v, revision FROM {DEMO_CHANGEFEED}'    # one row per key"
        )?,
        (DemoSink::Nats, Some(port)) => writeln!(
            out,
            "  nats -s nats://127.0.0.1:{port} stream view CDC    # the changes on cdc.{DEMO_CHANGEFEED}, one JSON message each (the nats CLI)"
        )?,
        _ => writeln!(
            out,
            "  tail -F {}/{DEMO_CHANGEFEED}/*.jsonl    # the changes, one JSON line each",
            sink_dir.display()
        )?,
    }
    writeln!(out, "  {curl} {http}://{}/api/v2/captures", addresses[0])?;
    writeln!(out, "  {etcdctl} get --prefix /tidb/cdc")?;
    let last = processes
        .last()
        .map(|process| process.child.id())
        .unwrap_or(0);
    writeln!(out, "  kill -TERM {last}    # stops node-{}", args.nodes)?;
    writeln!(out, "run-cluster: Ctrl-C stops everything")?;
    out.flush()?;
    Ok(())
}

/// Starts a child with an empty signal mask, whatever ours is, so that it reacts to SIGTERM
/// and SIGINT. (The standard library resets the mask in the child too; this does not rely on
/// it.)
fn spawn(name: &str, mut command: Command) -> Result<Process> {
    // SAFETY: between fork and exec only async-signal-safe calls are allowed; sigprocmask is.
    unsafe {
        command.pre_exec(|| {
            SigSet::empty()
                .thread_set_mask()
                .map_err(std::io::Error::from)
        });
    }
    // A process group of its own: Ctrl-C in the terminal reaches only us, and we stop the
    // children in order (captures first, then etcd).
    let mut child = command
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {name}"))?;
    if let Some(stdout) = child.stdout.take() {
        stream(name, stdout);
    }
    if let Some(stderr) = child.stderr.take() {
        stream(name, stderr);
    }
    Ok(Process {
        name: name.to_owned(),
        child,
    })
}

/// Copies a child's output to ours, one prefixed line at a time; ends with the pipe.
fn stream(name: &str, output: impl Read + Send + 'static) {
    let prefix = format!("[{name}] ");
    thread::spawn(move || {
        for line in BufReader::new(output).lines() {
            let Ok(line) = line else { break };
            eprintln!("{prefix}{line}");
        }
    });
}

fn stop(process: &mut Process) {
    if !matches!(process.child.try_wait(), Ok(None)) {
        return;
    }
    let pid = Pid::from_raw(i32::try_from(process.child.id()).unwrap_or(i32::MAX));
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(12);
    while Instant::now() < deadline {
        if !matches!(process.child.try_wait(), Ok(None)) {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "run-cluster: {} did not stop in time, killing it",
        process.name
    );
    let _ = process.child.kill();
    let _ = process.child.wait();
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(listener.local_addr()?.port())
}

fn wait_tcp(port: u16, within: Duration, signals: &mpsc::Receiver<Signal>) -> Result<()> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        check_signal(signals, Duration::from_millis(100))?;
    }
    bail!("nothing listens on port {port} after {within:?}")
}

/// The scheme of the captures' port.
fn scheme(tls: Option<&TlsFiles>) -> &'static str {
    if tls.is_some() { "https" } else { "http" }
}

/// A GET; returns the body.
fn http_get(address: &str, path: &str, tls: Option<&TlsFiles>) -> Result<String> {
    http_request(address, "GET", path, "", tls)
}

/// A request with a JSON body (empty: none); returns the body of a 200 answer. Plain HTTP/1.0,
/// or curl with the client certificate over TLS.
fn http_request(
    address: &str,
    method: &str,
    path: &str,
    body: &str,
    tls: Option<&TlsFiles>,
) -> Result<String> {
    if let Some(tls) = tls {
        let output = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "-w",
                "\n%{http_code}",
                "-X",
                method,
            ])
            .args(["-H", "content-type: application/json"])
            .args(if body.is_empty() {
                vec![]
            } else {
                vec!["-d", body]
            })
            .arg("--cacert")
            .arg(&tls.ca)
            .arg("--cert")
            .arg(&tls.client.0)
            .arg("--key")
            .arg(&tls.client.1)
            .arg(format!("https://{address}{path}"))
            .stdin(Stdio::null())
            .output()
            .context("run curl")?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let (answer, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        if code.trim() != "200" {
            bail!(
                "{method} {path} on {address}: {} {answer}{}",
                code.trim(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        return Ok(answer.to_owned());
    }
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "{method} {path} HTTP/1.0\r\nHost: {address}\r\n")?;
    if !body.is_empty() {
        write!(
            stream,
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        )?;
    }
    write!(stream, "\r\n{body}")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        let status = head.lines().next().unwrap_or(head);
        bail!("{method} {path} on {address}: {status}: {body}");
    }
    Ok(body.to_owned())
}

/// The demo changefeed's ID and the key prefix it follows.
const DEMO_CHANGEFEED: &str = "demo";
const DEMO_PREFIX: &str = "/demo/";

/// A binary on the `PATH` or in `/usr/sbin` (where Debian puts `mariadbd`).
fn find_binary(env: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return PathBuf::from(path);
    }
    let search = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&search)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Initialises `dir` with `mariadb-install-db` and starts `mariadbd` on `port` of 127.0.0.1,
/// with a user `cdc` (password `cdc`) and a database `cdc`; no system service is involved.
fn start_mariadb(dir: &Path, port: u16) -> Result<Process> {
    let data = dir.join("data");
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    let root = install::is_root();
    let mut install = Command::new(find_binary(
        "CDC_MARIADB_INSTALL_DB_BIN",
        "mariadb-install-db",
    ));
    install
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--tmpdir={}", tmp.display()))
        .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
        .args(["--skip-name-resolve", "--innodb-log-file-size=8M"]);
    if root {
        install.arg("--user=root");
    }
    run_checked(install.stdout(Stdio::null())).context("mariadb-install-db")?;
    let init = dir.join("init.sql");
    std::fs::write(
        &init,
        "CREATE USER IF NOT EXISTS 'cdc'@'%' IDENTIFIED BY 'cdc';\n\
         GRANT ALL PRIVILEGES ON *.* TO 'cdc'@'%';\n\
         CREATE DATABASE IF NOT EXISTS cdc;\n",
    )?;
    let mut command = Command::new(find_binary("CDC_MARIADBD_BIN", "mariadbd"));
    command
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--tmpdir={}", tmp.display()))
        .arg(format!("--port={port}"))
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--socket={}", dir.join("mariadbd.sock").display()))
        .arg(format!("--pid-file={}", dir.join("mariadbd.pid").display()))
        .arg(format!("--init-file={}", init.display()))
        .args(["--skip-name-resolve", "--innodb-log-file-size=8M"])
        .args(["--innodb-buffer-pool-size=64M", "--performance-schema=OFF"]);
    if root {
        command.arg("--user=root");
    }
    spawn("mariadb", command)
}

/// Creates the demo changefeed (the owner may need a moment after its election to serve).
fn create_demo_changefeed(
    address: &str,
    sink_dir: &Path,
    sink_uri: &str,
    tls: Option<&TlsFiles>,
    signals: &mpsc::Receiver<Signal>,
) -> Result<()> {
    std::fs::create_dir_all(sink_dir.join(DEMO_CHANGEFEED))
        .with_context(|| format!("create {}", sink_dir.display()))?;
    let body = serde_json::json!({
        "changefeed_id": DEMO_CHANGEFEED,
        "sink_uri": sink_uri,
        "replica_config": {"filter": {"rules": [DEMO_PREFIX]}},
    })
    .to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match http_request(address, "POST", "/api/v2/changefeeds", &body, tls) {
            Ok(_) => return Ok(()),
            // 503: no owner yet, or one that does not serve yet.
            Err(err) if Instant::now() < deadline && err.to_string().contains(" 503 ") => {
                check_signal(signals, Duration::from_millis(200))?;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Waits until some node reports itself owner; returns its address.
fn wait_owner(
    addresses: &[String],
    within: Duration,
    tls: Option<&TlsFiles>,
    signals: &mpsc::Receiver<Signal>,
) -> Result<String> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        for address in addresses {
            if let Ok(body) = http_get(address, "/status", tls)
                && body.contains("\"is_owner\":true")
            {
                return Ok(address.clone());
            }
        }
        check_signal(signals, Duration::from_millis(200))?;
    }
    bail!("no owner elected within {within:?}")
}
