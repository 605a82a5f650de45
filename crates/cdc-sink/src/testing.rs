//! Real downstream servers for tests and benchmarks (feature `testing`).
//!
//! [`MariaDb::start`] initialises a data directory with `mariadb-install-db` and runs `mariadbd`
//! on a free loopback port (no system service, no socket shared with one), with a user
//! [`MariaDb::USER`] that may do everything and a database [`MariaDb::DATABASE`]; it waits until
//! the server answers and kills it on drop. For fault tests it kills and restarts the same server
//! on the same data directory and port. The binaries come from `CDC_MARIADBD_BIN` and
//! `CDC_MARIADB_INSTALL_DB_BIN`, or the `PATH` (Debian puts `mariadbd` in `/usr/sbin`, which is
//! searched too).
//!
//! [`NatsServer::start`] runs `nats-server -js` (from `CDC_NATS_SERVER_BIN` or the `PATH`) on a
//! free loopback port with its own store directory, and can kill and restart it on that store.
//!
//! [`MariaDb::start_tls`] and [`NatsServer::start_tls`] serve TLS only, with certificates the test
//! made ([`TlsFiles`]): MariaDB with `require_secure_transport`, NATS with `--tls`; with a client
//! certificate, MariaDB's user requires one (`REQUIRE X509`) and NATS verifies clients
//! (`--tlsverify`), and the harness's own clients present it.

use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlSslMode};

/// TLS files for a test server, all PEM: its certificate (naming 127.0.0.1) and key, the CA that
/// signed it and the clients' certificates, and, to require client certificates, the one the
/// harness's own clients present.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The CA.
    pub ca_file: PathBuf,
    /// The server's certificate.
    pub cert_file: PathBuf,
    /// The server's private key.
    pub key_file: PathBuf,
    /// A client certificate and its key: the server then requires client certificates.
    pub client: Option<(PathBuf, PathBuf)>,
}

const INSTALL_HINT: &str = "MariaDB is required for this test: run `cargo xtask install` (apt-get install mariadb-server) or set CDC_MARIADBD_BIN and CDC_MARIADB_INSTALL_DB_BIN";

/// How long to wait for the server to answer after a start.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A binary named by `env`, or `name` on the `PATH` or in `/usr/sbin`.
fn binary(env: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return PathBuf::from(path);
    }
    let search = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&search)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Whether this process runs as root (`mariadbd` then needs `--user=root`).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .map(|uids| uids.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn not_found(err: io::Error, path: &Path) -> io::Error {
    if err.kind() == io::ErrorKind::NotFound {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{INSTALL_HINT} ({}: {err})", path.display()),
        )
    } else {
        err
    }
}

/// A running `mariadbd` owned by a test.
pub struct MariaDb {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    tls: Option<TlsFiles>,
}

impl MariaDb {
    /// The user the tests connect as; it holds every privilege.
    pub const USER: &'static str = "cdc";
    /// Its password.
    pub const PASSWORD: &'static str = "cdc";
    /// The database made at start.
    pub const DATABASE: &'static str = "cdc";

    /// Initialises a fresh data directory, starts the server and waits until it answers.
    pub async fn start() -> io::Result<MariaDb> {
        Self::start_with(None).await
    }

    /// As [`Self::start`], serving TLS only (`require_secure_transport`); with a client
    /// certificate in `tls`, [`Self::USER`] requires one (`REQUIRE X509`).
    pub async fn start_tls(tls: TlsFiles) -> io::Result<MariaDb> {
        Self::start_with(Some(tls)).await
    }

    async fn start_with(tls: Option<TlsFiles>) -> io::Result<MariaDb> {
        let require = match &tls {
            Some(TlsFiles {
                client: Some(_), ..
            }) => " REQUIRE X509",
            Some(_) | None => "",
        };
        let mut last_error = None;
        // A free port can be taken by someone else between our probe and the server's bind.
        for _ in 0..5 {
            let dir = tempfile::Builder::new().prefix("cdc-mariadb-").tempdir()?;
            install_db(dir.path())?;
            std::fs::write(
                dir.path().join("init.sql"),
                format!(
                    "CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED BY '{password}'{require};\n\
                     GRANT ALL PRIVILEGES ON *.* TO '{user}'@'%' WITH GRANT OPTION;\n\
                     CREATE DATABASE IF NOT EXISTS `{database}`;\n",
                    user = Self::USER,
                    password = Self::PASSWORD,
                    database = Self::DATABASE,
                ),
            )?;
            let mut server = MariaDb {
                child: None,
                dir,
                port: free_port()?,
                tls: tls.clone(),
            };
            match server.spawn_and_wait().await {
                Ok(()) => return Ok(server),
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("mariadbd did not start")))
    }

    fn spawn(&mut self) -> io::Result<()> {
        let dir = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mariadbd = binary("CDC_MARIADBD_BIN", "mariadbd");
        let mut command = Command::new(&mariadbd);
        command
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg(format!("--port={}", self.port))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={}", dir.join("mariadbd.sock").display()))
            .arg(format!("--pid-file={}", dir.join("mariadbd.pid").display()))
            .arg(format!("--init-file={}", dir.join("init.sql").display()))
            .arg(format!("--tmpdir={}", dir.join("tmp").display()))
            .arg("--skip-name-resolve")
            .arg("--innodb-log-file-size=8M")
            .arg("--innodb-buffer-pool-size=32M")
            .arg("--performance-schema=OFF")
            .arg("--max-connections=200");
        if let Some(tls) = &self.tls {
            command
                .arg(format!("--ssl-ca={}", tls.ca_file.display()))
                .arg(format!("--ssl-cert={}", tls.cert_file.display()))
                .arg(format!("--ssl-key={}", tls.key_file.display()))
                .arg("--require-secure-transport=ON");
        }
        if is_root() {
            command.arg("--user=root");
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|err| not_found(err, &mariadbd))?;
        self.child = Some(child);
        Ok(())
    }

    async fn spawn_and_wait(&mut self) -> io::Result<()> {
        self.spawn()?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                return Err(io::Error::other(format!(
                    "mariadbd exited with {status} before serving; log: {}",
                    self.log_path().display()
                )));
            }
            let answered = match self.pool().await {
                Ok(pool) => {
                    let answer = tokio::time::timeout(
                        Duration::from_secs(5),
                        sqlx::query("SELECT 1").execute(&pool),
                    )
                    .await;
                    pool.close().await;
                    matches!(answer, Ok(Ok(_)))
                }
                Err(_) => false,
            };
            if answered {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "mariadbd did not serve within {READY_TIMEOUT:?}; log: {}",
                    self.log_path().display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The port, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The sink URI of table `table` in [`Self::DATABASE`], as [`Self::USER`], with `extra`
    /// query parameters (`&flush-interval=200ms`, or empty).
    pub fn sink_uri(&self, table: &str, extra: &str) -> String {
        format!(
            "mysql://{}:{}@{}/{}?table={table}{extra}",
            Self::USER,
            Self::PASSWORD,
            self.address(),
            Self::DATABASE
        )
    }

    /// A small pool connected as [`Self::USER`] to [`Self::DATABASE`] (over TLS, verified, for
    /// a server started with [`Self::start_tls`]).
    pub async fn pool(&self) -> sqlx::Result<MySqlPool> {
        let options = MySqlConnectOptions::new()
            .host("127.0.0.1")
            .port(self.port)
            .username(Self::USER)
            .password(Self::PASSWORD)
            .database(Self::DATABASE);
        let options = match &self.tls {
            None => options.ssl_mode(MySqlSslMode::Disabled),
            Some(tls) => {
                let options = options
                    .ssl_mode(MySqlSslMode::VerifyIdentity)
                    .ssl_ca(&tls.ca_file);
                match &tls.client {
                    None => options,
                    Some((cert, key)) => options.ssl_client_cert(cert).ssl_client_key(key),
                }
            }
        };
        MySqlPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
    }

    /// The file the server logs to.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("mariadbd.log")
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL) and reaps it; the data directory is kept for
    /// [`Self::restart`].
    pub fn kill(&mut self) -> io::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts the same server again on the same data directory and port (recovering InnoDB from
    /// its log after a kill) and waits until it answers.
    pub async fn restart(&mut self) -> io::Result<()> {
        self.kill()?;
        self.spawn_and_wait().await
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

impl std::fmt::Debug for MariaDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MariaDb")
            .field("dir", &self.dir.path())
            .field("port", &self.port)
            .field("pid", &self.pid())
            .finish()
    }
}

/// Initialises the data directory `<dir>/data` with small InnoDB files.
fn install_db(dir: &Path) -> io::Result<()> {
    // Servers bootstrapping at once must not share temporary files.
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    let install = binary("CDC_MARIADB_INSTALL_DB_BIN", "mariadb-install-db");
    let mut command = Command::new(&install);
    command
        .arg("--no-defaults")
        .arg(format!("--datadir={}", dir.join("data").display()))
        .arg("--auth-root-authentication-method=normal")
        .arg("--skip-test-db")
        .arg("--skip-name-resolve")
        .arg(format!("--tmpdir={}", tmp.display()))
        .arg("--innodb-log-file-size=8M");
    if is_root() {
        command.arg("--user=root");
    }
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|err| not_found(err, &install))?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "{} failed with {}: {}",
            install.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(())
}

const NATS_INSTALL_HINT: &str = "nats-server is required for this test: run `cargo xtask install` (apt-get install nats-server) or set CDC_NATS_SERVER_BIN";

/// A running `nats-server -js` owned by a test: its own store directory, a free loopback port,
/// killed on drop; [`NatsServer::kill`] and [`NatsServer::restart`] keep the store, so the
/// stream and its messages survive a restart.
pub struct NatsServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    tls: Option<TlsFiles>,
}

impl NatsServer {
    /// Starts a fresh server with JetStream and waits until JetStream answers.
    pub async fn start() -> io::Result<NatsServer> {
        Self::start_with(None).await
    }

    /// As [`Self::start`], serving TLS only (`--tls`); with a client certificate in `tls`, the
    /// server requires client certificates signed by the CA (`--tlsverify`).
    pub async fn start_tls(tls: TlsFiles) -> io::Result<NatsServer> {
        Self::start_with(Some(tls)).await
    }

    async fn start_with(tls: Option<TlsFiles>) -> io::Result<NatsServer> {
        let mut last_error = None;
        for _ in 0..5 {
            let mut server = NatsServer {
                child: None,
                dir: tempfile::Builder::new().prefix("cdc-nats-").tempdir()?,
                port: free_port()?,
                tls: tls.clone(),
            };
            match server.spawn_and_wait().await {
                Ok(()) => return Ok(server),
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("nats-server did not start")))
    }

    fn spawn(&mut self) -> io::Result<()> {
        let dir = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let binary = binary("CDC_NATS_SERVER_BIN", "nats-server");
        let mut command = Command::new(&binary);
        command
            .arg("-js")
            .args(["-a", "127.0.0.1"])
            .args(["-p", &self.port.to_string()])
            .arg("-sd")
            .arg(dir.join("store"));
        if let Some(tls) = &self.tls {
            command
                .arg("--tls")
                .arg("--tlscert")
                .arg(&tls.cert_file)
                .arg("--tlskey")
                .arg(&tls.key_file)
                .arg("--tlscacert")
                .arg(&tls.ca_file);
            if tls.client.is_some() {
                command.arg("--tlsverify");
            }
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|err| {
                if err.kind() == io::ErrorKind::NotFound {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("{NATS_INSTALL_HINT} ({}: {err})", binary.display()),
                    )
                } else {
                    err
                }
            })?;
        self.child = Some(child);
        Ok(())
    }

    async fn spawn_and_wait(&mut self) -> io::Result<()> {
        self.spawn()?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                return Err(io::Error::other(format!(
                    "nats-server exited with {status} before serving; log: {}",
                    self.log_path().display()
                )));
            }
            let ready = tokio::time::timeout(Duration::from_secs(5), async {
                let client = self.client().await.ok()?;
                // Any answer of JetStream's API (here: no such stream) means it is up; the
                // account query's answer of nats-server 2.9 does not parse in this client.
                match async_nats::jetstream::new(client).get_stream("READY").await {
                    Ok(_) => Some(()),
                    Err(err) => matches!(
                        err.kind(),
                        async_nats::jetstream::context::GetStreamErrorKind::JetStream(_)
                    )
                    .then_some(()),
                }
            })
            .await;
            if matches!(ready, Ok(Some(_))) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "nats-server did not serve within {READY_TIMEOUT:?}; log: {}",
                    self.log_path().display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The sink URI of subject `subject` in stream `stream`, with `extra` query parameters
    /// (`&create-stream=true`, or empty).
    pub fn sink_uri(&self, subject: &str, stream: &str, extra: &str) -> String {
        format!("nats://{}/{subject}?stream={stream}{extra}", self.address())
    }

    /// A new client (over TLS, with the client certificate if any, for a server started with
    /// [`Self::start_tls`]).
    pub async fn client(&self) -> Result<async_nats::Client, async_nats::ConnectError> {
        let mut options = async_nats::ConnectOptions::new();
        if let Some(tls) = &self.tls {
            options = options
                .require_tls(true)
                .add_root_certificates(tls.ca_file.clone());
            if let Some((cert, key)) = &tls.client {
                options = options.add_client_certificate(cert.clone(), key.clone());
            }
        }
        options.connect(self.address()).await
    }

    /// The file the server logs to.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL) and reaps it; the store is kept for [`Self::restart`].
    pub fn kill(&mut self) -> io::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts the same server again on the same store and port and waits until JetStream
    /// answers.
    pub async fn restart(&mut self) -> io::Result<()> {
        self.kill()?;
        self.spawn_and_wait().await
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

impl std::fmt::Debug for NatsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsServer")
            .field("dir", &self.dir.path())
            .field("port", &self.port)
            .field("pid", &self.pid())
            .finish()
    }
}
