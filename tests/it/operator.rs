//! A TiCDC operator's tools against the real binary: TiUP's start script and TiCDC's documented
//! `cdc.toml`, every `cli` verb on a three-capture cluster, SIGHUP and SIGQUIT drains, log
//! rotation by size and `/api/v2/log`.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failure is a test failure"
)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use cdc_etcd::testing::EtcdServer;
use serde_json::{Value, json};

use crate::cluster::{capture_keys, one_owner, start_cluster, started_ids};
use crate::support::node::free_port;
use crate::support::{send_signal, server_binary, wait_for};

/// TiCDC's documented server configuration example (v7.1), its commented sections enabled
/// with their documented values. The
/// document lists `capture-session-ttl` and the flush intervals after `[security]`, where TOML
/// makes them keys of that table (which TiCDC's strict decoding refuses too): they stand before
/// it here.
const TICDC_EXAMPLE_TOML: &str = r#"
addr = "127.0.0.1:8300"
advertise-addr = ""
log-file = ""
log-level = "info"
data-dir = ""
gc-ttl = 86400 # 24 h
tz = "System"
cluster-id = "default"
gc-tuner-memory-threshold = 0

capture-session-ttl = 10 # 10s
owner-flush-interval = 50000000 # 50 ms
processor-flush-interval = 50000000 # 50 ms

[security]
  ca-path = ""
  cert-path = ""
  key-path = ""

[log]
  error-output = "stderr"
  [log.file]
    max-size = 300 # 300 MiB
    max-days = 0
    max-backups = 0

[sorter]
  cache-size-in-mb = 128
  sort-dir = "/tmp/sorter"

[kv-client]
  worker-concurrent = 8
  worker-pool-size = 16
  region-retry-duration = 60000000000
"#;

/// A `cdc-server` process started as a test asks; killed and reaped when dropped.
struct Process {
    child: Child,
}

impl Process {
    fn spawn(command: &mut Command) -> Process {
        Process {
            child: command.spawn().expect("start cdc-server"),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn wait_exit(&mut self, within: Duration) -> Result<std::process::ExitStatus> {
        wait_for(within, || {
            let status = self.child.try_wait().ok().flatten();
            async move { status }
        })
        .await
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get_json(address: &str, path: &str) -> Option<Value> {
    let response = crate::support::http_client()
        .get(format!("http://{address}{path}"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

/// The capture ID once the capture at `address` has registered.
async fn started(address: &str, what: &str) -> Result<String> {
    wait_for(Duration::from_secs(30), || async {
        let status = get_json(address, "/status").await?;
        let id = status["id"].as_str()?.to_owned();
        (!id.is_empty()).then_some(id)
    })
    .await
    .with_context(|| format!("{what} starts"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiup_s_start_script_and_ticdc_s_example_config_join_the_cluster() -> Result<()> {
    let etcd = EtcdServer::start().await?;
    let client = etcd.client().await?;
    // TiUP's `run_cdc.sh` (`embed/templates/scripts/run_cdc.sh.tpl` in pingcap/tiup), in a
    // deploy directory with `conf/cdc.toml` and `log/`: once with `--data-dir`, once as for an
    // older TiCDC with `--sort-dir`.
    let mut processes = Vec::new();
    let mut deploys = Vec::new();
    for data_dir_enabled in [true, false] {
        let deploy = tempfile::tempdir()?;
        std::fs::create_dir_all(deploy.path().join("conf"))?;
        std::fs::create_dir_all(deploy.path().join("log"))?;
        std::fs::write(deploy.path().join("conf/cdc.toml"), TICDC_EXAMPLE_TOML)?;
        let port = free_port();
        let data_dir = deploy.path().join("data");
        let mut command = Command::new(server_binary());
        command
            .current_dir(deploy.path())
            .arg("server")
            .args(["--addr", &format!("0.0.0.0:{port}")])
            .args(["--advertise-addr", &format!("127.0.0.1:{port}")])
            .args(["--pd", &etcd.endpoint()]);
        if data_dir_enabled {
            command.arg(format!("--data-dir={}", data_dir.display()));
        } else {
            command.arg(format!("--sort-dir={}/tmp/sorter", data_dir.display()));
        }
        command
            .args(["--gc-ttl", "86400"])
            .args(["--tz", "System"])
            .args(["--cluster-id", "tiup"])
            .args(["--config", "conf/cdc.toml"])
            .args(["--log-file", "log/cdc.log"])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(
                deploy.path().join("log/cdc_stderr.log"),
            )?);
        processes.push((Process::spawn(&mut command), port));
        deploys.push(deploy);
    }
    for ((_, port), deploy) in processes.iter().zip(&deploys) {
        let log = deploy.path().join("log/cdc.log");
        started(
            &format!("127.0.0.1:{port}"),
            "a capture started by TiUP's script",
        )
        .await
        .with_context(|| {
            format!(
                "{}\n{}",
                read(&log),
                read(&deploy.path().join("log/cdc_stderr.log"))
            )
        })?;
    }
    wait_for(Duration::from_secs(20), || async {
        (capture_keys(&client, "tiup").await.len() == 2).then_some(())
    })
    .await
    .context("both captures join cluster tiup")?;
    // The log goes to --log-file, at the file's level, and names each key without effect once.
    for (index, deploy) in deploys.iter().enumerate() {
        let log = read(&deploy.path().join("log/cdc.log"));
        for key in [
            "gc-tuner-memory-threshold",
            "log.error-output",
            "sorter.cache-size-in-mb",
            "sorter.sort-dir",
            "kv-client.worker-concurrent",
            "kv-client.worker-pool-size",
            "kv-client.region-retry-duration",
        ] {
            let warnings = log
                .lines()
                .filter(|line| line.contains("WARN") && line.contains(&format!("key {key} ")))
                .count();
            assert_eq!(warnings, 1, "{key} in\n{log}");
        }
        assert!(!log.contains("DEBUG"), "{log}");
        assert_eq!(
            log.contains("--sort-dir") && log.contains("unused"),
            index == 1,
            "{log}"
        );
    }
    Ok(())
}

/// Runs `cdc-server cli --server http://address ARGS`; (exit success, stdout, stderr).
pub(crate) async fn cli(address: &str, args: &[&str]) -> Result<(bool, String, String)> {
    let output = tokio::process::Command::new(server_binary())
        .arg("cli")
        .args(["--server", &format!("http://{address}")])
        .args(args)
        .output()
        .await?;
    Ok((
        output.status.success(),
        String::from_utf8(output.stdout)?,
        String::from_utf8(output.stderr)?,
    ))
}

/// `cli` that must succeed; its standard output.
async fn cli_ok(address: &str, args: &[&str]) -> Result<String> {
    let (ok, stdout, stderr) = cli(address, args).await?;
    ensure!(ok, "cli {args:?} failed: {stderr}{stdout}");
    Ok(stdout)
}

/// `cli` whose output is one JSON value.
async fn cli_json(address: &str, args: &[&str]) -> Result<Value> {
    let stdout = cli_ok(address, args).await?;
    // TiCDC prints indented JSON.
    ensure!(stdout.contains("\n  "), "not indented: {stdout}");
    serde_json::from_str(&stdout).with_context(|| format!("cli {args:?} printed {stdout}"))
}

/// The state of changefeed `id` by `cli changefeed query --simple`.
async fn state_of(address: &str, id: &str) -> Result<String> {
    let summary = cli_json(address, &["changefeed", "query", "-s", "-c", id]).await?;
    Ok(summary["state"].as_str().unwrap_or_default().to_owned())
}

async fn wait_state(address: &str, id: &str, state: &str) -> Result<()> {
    wait_for(Duration::from_secs(30), || async {
        (state_of(address, id).await.ok()? == state).then_some(())
    })
    .await
    .with_context(|| format!("changefeed {id} becomes {state}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cli_verb_against_three_captures() -> Result<()> {
    let (_etcd, mut nodes) = start_cluster(3, "default").await;
    let ids = started_ids(&nodes, Duration::from_secs(30)).await?;
    let (owner_index, owner_id) = one_owner(&mut nodes, Duration::from_secs(20)).await?;
    // Asked through a capture that is not the owner: it forwards.
    let address = nodes[(owner_index + 1) % 3].address.clone();
    let address = address.as_str();

    let captures = wait_for(Duration::from_secs(20), || async {
        let list = cli_json(address, &["capture", "list"]).await.ok()?;
        (list.as_array()?.len() == 3).then_some(list)
    })
    .await?;
    for capture in captures.as_array().unwrap() {
        let fields: Vec<&str> = capture
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(fields, ["id", "is-owner", "address", "cluster-id"]);
        assert!(ids.iter().any(|id| capture["id"] == id.as_str()));
        assert_eq!(capture["is-owner"], capture["id"] == owner_id.as_str());
        assert_eq!(capture["cluster-id"], "default");
    }

    // TiCDC's changefeed file: `[filter] rules` are the key prefixes.
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("changefeed.toml");
    std::fs::write(
        &config,
        "memory-quota = 1073741824\n[filter]\nrules = [\"/cli/a/\", \"/cli/b/\"]\n",
    )?;
    let config = config.to_str().unwrap();
    let created = cli_ok(
        address,
        &[
            "changefeed",
            "create",
            "--changefeed-id",
            "cli-feed",
            "--sink-uri",
            "blackhole://",
            "--start-ts",
            "0",
            "--target-ts",
            "0",
            "--config",
            config,
        ],
    )
    .await?;
    let info = created
        .strip_prefix("Create changefeed successfully!\nID: cli-feed\nInfo: ")
        .with_context(|| format!("create printed {created}"))?;
    let info: Value = serde_json::from_str(info)?;
    assert_eq!(info["id"], "cli-feed");
    wait_state(address, "cli-feed", "normal").await?;

    let list = cli_json(address, &["changefeed", "list"]).await?;
    let list = list.as_array().context("an array")?;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["id"], "cli-feed");
    assert_eq!(list[0]["namespace"], "default");
    assert_eq!(list[0]["summary"]["state"], "normal");

    let detail = cli_json(address, &["changefeed", "query", "-c", "cli-feed"]).await?;
    assert_eq!(detail["id"], "cli-feed");
    assert_eq!(detail["sink_uri"], "blackhole://");
    let filter = detail["config"]["filter"].to_string();
    assert!(
        filter.contains("/cli/a/") && filter.contains("/cli/b/"),
        "{detail}"
    );

    let processors = wait_for(Duration::from_secs(30), || async {
        let list = cli_json(address, &["processor", "list"]).await.ok()?;
        (!list.as_array()?.is_empty()).then_some(list)
    })
    .await?;
    for processor in processors.as_array().unwrap() {
        assert_eq!(processor["changefeed_id"], "cli-feed", "{processors}");
    }

    cli_ok(address, &["changefeed", "pause", "-c", "cli-feed"]).await?;
    wait_state(address, "cli-feed", "stopped").await?;
    std::fs::write(
        dir.path().join("changefeed.toml"),
        "[filter]\nrules = [\"/cli/c/\"]\n",
    )?;
    let updated = cli_ok(
        address,
        &[
            "changefeed",
            "update",
            "-c",
            "cli-feed",
            "--config",
            config,
            "--no-confirm",
        ],
    )
    .await?;
    assert!(
        updated.starts_with("Update changefeed config successfully! \nID: cli-feed\nInfo: "),
        "{updated}"
    );
    let detail = cli_json(address, &["changefeed", "query", "-c", "cli-feed"]).await?;
    assert!(
        detail["config"]["filter"].to_string().contains("/cli/c/"),
        "{detail}"
    );
    cli_ok(address, &["changefeed", "resume", "-c", "cli-feed"]).await?;
    wait_state(address, "cli-feed", "normal").await?;

    let removed = cli_ok(address, &["changefeed", "remove", "-c", "cli-feed"]).await?;
    assert!(
        removed.starts_with("Changefeed remove successfully.\nID: cli-feed\nCheckpointTs: "),
        "{removed}"
    );
    wait_for(Duration::from_secs(30), || async {
        // An empty list prints `[]`, which has no indentation to check.
        let list = cli_ok(address, &["changefeed", "list"]).await.ok()?;
        let list: Value = serde_json::from_str(&list).ok()?;
        list.as_array()?.is_empty().then_some(())
    })
    .await
    .with_context(|| format!("the removed changefeed leaves the list; {removed}"))?;

    // An error prints the server's error_msg and exits non-zero.
    let (ok, _, stderr) = cli(address, &["changefeed", "query", "-c", "no-such-feed"]).await?;
    assert!(!ok);
    let (status, body) = {
        let response = crate::support::http_client()
            .get(format!("http://{address}/api/v2/changefeeds/no-such-feed"))
            .timeout(Duration::from_secs(10))
            .send()
            .await?;
        (response.status(), response.json::<Value>().await?)
    };
    assert!(!status.is_success());
    let message = body["error_msg"].as_str().context("error_msg")?;
    assert_eq!(stderr.trim(), format!("Error: {message}"));
    // No server at all: an error too.
    let (ok, _, stderr) = cli(&format!("127.0.0.1:{}", free_port()), &["capture", "list"]).await?;
    assert!(!ok && stderr.starts_with("Error: "), "{stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_sigquit_drain_as_sigterm_does() -> Result<()> {
    let (etcd, mut nodes) = start_cluster(3, "default").await;
    let client = etcd.client().await?;
    started_ids(&nodes, Duration::from_secs(30)).await?;
    for (signal, name) in [("HUP", "SIGHUP"), ("QUIT", "SIGQUIT")] {
        let (owner_index, _) = one_owner(&mut nodes, Duration::from_secs(30)).await?;
        let remaining = nodes.len() - 1;
        nodes[owner_index].signal(signal);
        let status = nodes[owner_index]
            .wait_exit(Duration::from_secs(30))
            .await?;
        assert!(status.success(), "{name}: {status:?}");
        let log = nodes[owner_index].log_text();
        assert!(log.contains(&format!("received {name}")), "{log}");
        // The drain: the owner resigned, and the capture's key went with its lease.
        assert!(log.contains("resigned the ownership"), "{log}");
        wait_for(Duration::from_secs(10), || async {
            (capture_keys(&client, "default").await.len() == remaining).then_some(())
        })
        .await
        .with_context(|| format!("the key of the capture stopped by {name} goes"))?;
        nodes.remove(owner_index);
    }
    Ok(())
}

/// Posts a level to `/api/v2/log` once the capture is ready (like every `/api/v2` route, it
/// answers 503 until then).
async fn post_log_level(address: &str, body: &str) -> Result<(u16, Value)> {
    let client = crate::support::http_client();
    let (status, text) = crate::support::node::send_when_ready(|| {
        client
            .post(format!("http://{address}/api/v2/log"))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .timeout(Duration::from_secs(10))
    })
    .await?;
    Ok((status.as_u16(), serde_json::from_str(&text)?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_level_changes_at_run_time_and_the_file_rotates_by_size() -> Result<()> {
    let etcd = EtcdServer::start().await?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("logs/cdc.log");
    std::fs::write(
        dir.path().join("cdc.toml"),
        format!(
            "[log]\nlevel = \"info\"\n[log.file]\nfilename = \"{}\"\nmax-size = 1\nmax-backups = 2\n",
            log.display()
        ),
    )?;
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    // RUST_LOG says trace; the file's level wins.
    let mut process = Process::spawn(
        Command::new(server_binary())
            .args(["--pd", &etcd.endpoint(), "--addr", &address])
            .arg("--config")
            .arg(dir.path().join("cdc.toml"))
            .env("RUST_LOG", "trace")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    started(&address, "the capture").await?;
    let text = read(&log);
    assert!(text.contains("INFO") && !text.contains("DEBUG"), "{text}");

    // TiCDC's answers: 400 CDC:ErrAPIInvalidParam for a bad level or body, `{}` otherwise.
    for bad in [r#"{"log_level":"loud"}"#, "not json"] {
        let (status, body) = post_log_level(&address, bad).await?;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error_code"], "CDC:ErrAPIInvalidParam", "{body}");
    }
    let (status, body) = post_log_level(&address, r#"{"log_level":"debug"}"#).await?;
    assert_eq!((status, body), (200, json!({})));
    wait_for(Duration::from_secs(20), || async {
        let _ = get_json(&address, "/status").await;
        read(&log).contains("DEBUG").then_some(())
    })
    .await
    .context("debug lines follow the change")?;

    // At trace level the capture's requests fill 1 MiB quickly: the file is rotated, and at
    // most two rotated files are kept.
    let (status, _) = post_log_level(&address, r#"{"log_level":"trace"}"#).await?;
    assert_eq!(status, 200);
    let rotated = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                    .filter(|name| name.starts_with("cdc.log."))
                    .collect()
            })
            .unwrap_or_default()
    };
    let logs = dir.path().join("logs");
    let load = || async {
        for _ in 0..20 {
            let _ = get_json(&address, "/api/v2/captures").await;
        }
    };
    let first_two = wait_for(Duration::from_secs(120), || async {
        load().await;
        let mut names = rotated(&logs);
        names.sort();
        (names.len() >= 2).then_some(names)
    })
    .await
    .with_context(|| format!("two rotations; rotated files: {:?}", rotated(&logs)))?;
    // A third rotation deletes the oldest.
    wait_for(Duration::from_secs(120), || async {
        load().await;
        (!rotated(&logs).contains(&first_two[0])).then_some(())
    })
    .await
    .with_context(|| format!("a third rotation; rotated files: {:?}", rotated(&logs)))?;
    let names = rotated(&logs);
    assert!(names.len() <= 2, "max-backups = 2 keeps two: {names:?}");
    for name in &names {
        let size = std::fs::metadata(logs.join(name))?.len();
        // Rotated once past 1 MiB, after the write that passed it.
        assert!(
            (1024 * 1024..2 * 1024 * 1024).contains(&size),
            "{name}: {size}"
        );
    }
    send_signal(process.pid(), "TERM");
    let status = process.wait_exit(Duration::from_secs(30)).await?;
    if !status.success() {
        bail!("exit {status:?}");
    }
    Ok(())
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() -> Result<()> {
    let unit_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/cdc-server.service");
    let unit = std::fs::read_to_string(&unit_path)?;
    // The unit runs the installed binary; verify checks that it exists, so the copy checked here
    // runs the one built for the tests.
    assert_eq!(
        unit.matches("/usr/local/bin/cdc-server ").count(),
        1,
        "{unit}"
    );
    let binary = server_binary();
    let dir = tempfile::tempdir()?;
    let copy = dir.path().join("cdc-server.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/cdc-server", binary.to_str().unwrap()),
    )?;
    let systemd_analyze =
        std::env::var_os("CDC_SYSTEMD_ANALYZE_BIN").unwrap_or_else(|| "systemd-analyze".into());
    let output = Command::new(systemd_analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .context("run systemd-analyze (`cargo xtask install`, or apt-get install systemd)")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.success(), "systemd-analyze verify: {stderr}");
    ensure!(!stderr.contains("cdc-server.service"), "warnings: {stderr}");
    // What the unit starts is a command line the binary accepts.
    let exec = unit
        .lines()
        .find_map(|line| line.strip_prefix("ExecStart=/usr/local/bin/cdc-server "))
        .context("ExecStart")?;
    let status = Command::new(&binary)
        .args(exec.split_whitespace())
        .arg("--help")
        .stdout(Stdio::null())
        .status()?;
    ensure!(status.success(), "the unit's flags: {status:?}");
    Ok(())
}
