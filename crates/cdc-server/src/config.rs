//! Flags and configuration loading: defaults < file < `CDC_` environment < flags.

use std::path::PathBuf;
#[cfg(test)]
use std::time::Duration;

use cdc_capture::Config;
use clap::{Parser, Subcommand};
use figment::Figment;
use figment::providers::{Env, Serialized};
use serde::Serialize;

use crate::godur;
use crate::keys::ServerFile;
use crate::logging::{LogSection, LogSettings};

/// `cdc-server`: one capture of a TiCDC-style cluster. Without a subcommand it runs the server,
/// as `cdc-server server` does (TiCDC's `cdc server`).
#[derive(Debug, Parser)]
#[command(name = "cdc-server", version, args_conflicts_with_subcommands = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
    #[command(flatten)]
    pub(crate) server: ServerArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Start a capture server (TiCDC's `cdc server`).
    Server(Box<ServerArgs>),
    /// Manage the cluster over its HTTP API (TiCDC's `cdc cli`).
    Cli(Box<crate::cli::CliArgs>),
    /// Print the version, git hash and build time (TiCDC's `cdc version`).
    Version,
    /// Print the tables of flags and configuration keys of `docs/operations.md`.
    #[command(hide = true)]
    ReferenceTables,
}

/// The flags of `cdc-server server` (TiCDC's `cdc server`, `pkg/cmd/server/server.go` in
/// pingcap/tiflow).
#[derive(Debug, Default, clap::Args)]
pub(crate) struct ServerArgs {
    /// Path of the configuration file (TOML with TiCDC's keys).
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) overrides: Overrides,
    #[command(flatten)]
    pub(crate) unused: UnusedFlags,
}

/// Flags that override the file and the environment.
#[derive(Debug, Default, clap::Args, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct Overrides {
    /// The PD (etcd) endpoints, comma-separated http:// or https:// URLs [default: http://127.0.0.1:2379].
    #[arg(long, visible_alias = "etcd")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pd: Option<String>,
    /// The address to listen on, host:port [default: 127.0.0.1:8300].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    addr: Option<String>,
    /// The address other captures and clients use [default: --addr].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    advertise_addr: Option<String>,
    /// The cluster to join [default: default].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_id: Option<String>,
    /// The log level (debug|info|warn|error, or a filter directive); wins over RUST_LOG [default: [log] level, else RUST_LOG, else info].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    log_level: Option<String>,
    /// The log file [default: [log.file] filename, else standard error].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    log_file: Option<String>,
    /// The directory for the capture's data.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<String>,
    /// TiCDC's GC safepoint TTL in seconds, not 0 [default: 86400].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    gc_ttl: Option<i64>,
    /// The time zone (System, UTC or an IANA name) [default: System].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    tz: Option<String>,
    /// The owner's etcd worker interval, a Go duration [default: 50ms].
    #[arg(long, value_parser = godur::flag)]
    #[serde(skip_serializing_if = "Option::is_none")]
    owner_flush_interval: Option<String>,
    /// The processor's etcd worker interval, a Go duration [default: 50ms].
    #[arg(long, value_parser = godur::flag)]
    #[serde(skip_serializing_if = "Option::is_none")]
    processor_flush_interval: Option<String>,
    /// `[security]` flags.
    #[command(flatten)]
    #[serde(skip_serializing_if = "SecurityOverrides::is_empty")]
    security: SecurityOverrides,
}

/// The `[security]` flags (TiCDC's `--ca`, `--cert`, `--key`, `--cert-allowed-cn`).
#[derive(Debug, Default, clap::Args, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct SecurityOverrides {
    /// The CA certificate (PEM) of the etcd servers, the peers and the clients of the port.
    #[arg(long = "ca")]
    #[serde(skip_serializing_if = "Option::is_none")]
    ca_path: Option<String>,
    /// This capture's certificate (PEM).
    #[arg(long = "cert")]
    #[serde(skip_serializing_if = "Option::is_none")]
    cert_path: Option<String>,
    /// The private key (PEM) of --cert.
    #[arg(long = "key")]
    #[serde(skip_serializing_if = "Option::is_none")]
    key_path: Option<String>,
    /// The common names a client certificate may have, comma-separated (requires one).
    #[arg(long = "cert-allowed-cn", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    cert_allowed_cn: Option<Vec<String>>,
}

impl SecurityOverrides {
    fn is_empty(&self) -> bool {
        self.ca_path.is_none()
            && self.cert_path.is_none()
            && self.key_path.is_none()
            && self.cert_allowed_cn.is_none()
    }
}

/// TiCDC's flags that are accepted and logged as unused: there is no sorter here.
#[derive(Debug, Default, clap::Args)]
pub(crate) struct UnusedFlags {
    /// Deprecated in TiCDC; accepted and unused.
    #[arg(long)]
    sort_dir: Option<String>,
    /// TiCDC's hidden sorter flag; accepted and unused.
    #[arg(long, hide = true)]
    sorter_num_workerpool_goroutine: Option<String>,
    /// TiCDC's hidden sorter flag; accepted and unused.
    #[arg(long, hide = true)]
    sorter_num_concurrent_worker: Option<String>,
    /// TiCDC's hidden sorter flag; accepted and unused.
    #[arg(long, hide = true)]
    sorter_chunk_size_limit: Option<String>,
    /// TiCDC's hidden sorter flag; accepted and unused.
    #[arg(long, hide = true)]
    sorter_max_memory_percentage: Option<String>,
    /// TiCDC's hidden sorter flag; accepted and unused.
    #[arg(long, hide = true)]
    sorter_max_memory_consumption: Option<String>,
}

impl UnusedFlags {
    /// One warning per unused flag given.
    fn warnings(&self) -> Vec<String> {
        [
            ("--sort-dir", &self.sort_dir),
            (
                "--sorter-num-workerpool-goroutine",
                &self.sorter_num_workerpool_goroutine,
            ),
            (
                "--sorter-num-concurrent-worker",
                &self.sorter_num_concurrent_worker,
            ),
            ("--sorter-chunk-size-limit", &self.sorter_chunk_size_limit),
            (
                "--sorter-max-memory-percentage",
                &self.sorter_max_memory_percentage,
            ),
            (
                "--sorter-max-memory-consumption",
                &self.sorter_max_memory_consumption,
            ),
        ]
        .into_iter()
        .filter_map(|(flag, value)| {
            value.as_ref().map(|value| {
                format!("{flag} {value:?} is unused: there is no sorter in this capture")
            })
        })
        .collect()
    }
}

/// Whether `key` (a `CDC_` variable without its prefix) names a top-level configuration key.
fn is_config_env_key(key: &str) -> bool {
    let section = key.split("__").next().unwrap_or(key).replace('_', "-");
    match serde_json::to_value(Config::default()) {
        Ok(serde_json::Value::Object(fields)) => fields
            .keys()
            .any(|field| field.eq_ignore_ascii_case(&section)),
        _ => false,
    }
}

/// The configuration, how to log, and the warnings to log once logging is up.
pub(crate) struct Loaded {
    pub(crate) config: Config,
    pub(crate) log: LogSettings,
    pub(crate) warnings: Vec<String>,
}

/// Loads and validates the configuration; the error names the bad key and where it came from.
pub(crate) fn load(args: &ServerArgs) -> Result<Loaded, String> {
    let mut warnings = args.unused.warnings();
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    let mut log = LogSection::default();
    if let Some(path) = &args.config {
        let file = ServerFile::read(path)?;
        warnings.extend(file.warnings.iter().cloned());
        log = LogSection::from_dict(file.log.clone(), path)?;
        figment = figment.merge(file);
    }
    let figment = figment
        // `CDC_CAPTURE_SESSION_TTL` is `capture-session-ttl`; `__` nests (`CDC_DEBUG__MESSAGES__...`).
        // Only variables naming a configuration section are read: other `CDC_` variables
        // (tool paths such as `CDC_ETCD_BIN` in the environment of tests) are not ours.
        .merge(
            Env::prefixed("CDC_")
                .filter(|key| is_config_env_key(key.as_str()))
                .map(|key| key.as_str().replace("__", ".").replace('_', "-").into()),
        )
        .merge(Serialized::defaults(&args.overrides));
    let mut config: Config = figment.extract().map_err(|err| {
        err.into_iter()
            .map(|error| error.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    check_pd(&config.pd)?;
    check_tz(&config.tz)?;
    warnings.extend(
        config
            .validate_and_adjust()
            .map_err(|err| format!("invalid configuration: {err}"))?,
    );
    if config.data_dir.is_empty() {
        warnings
            .push("data-dir is not set: use `cdc-server server --data-dir` if possible".to_owned());
    }
    let log = LogSettings::new(&config, &log);
    Ok(Loaded {
        config,
        log,
        warnings,
    })
}

/// Every PD endpoint is an http or https URL with a host (TiCDC's `VerifyPdEndpoint`,
/// `pkg/cmd/util/helper.go` in pingcap/tiflow).
fn check_pd(pd: &str) -> Result<(), String> {
    for endpoint in pd.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let rest = endpoint
            .strip_prefix("http://")
            .or_else(|| endpoint.strip_prefix("https://"));
        let host = rest.map(|rest| rest.split('/').next().unwrap_or_default());
        match host {
            Some(host) if !host.is_empty() => {}
            _ => {
                return Err(format!(
                    "invalid PD endpoint {endpoint:?}: PD endpoint should be a valid http or https URL"
                ));
            }
        }
    }
    Ok(())
}

/// The time zone loads (TiCDC's `GetTimezone`): `System`, `Local`, `UTC`, or a name in the
/// system's zone database.
fn check_tz(tz: &str) -> Result<(), String> {
    if tz.is_empty() || matches!(tz, "System" | "Local" | "UTC") {
        return Ok(());
    }
    let known = !tz.contains("..")
        && !tz.starts_with('/')
        && std::path::Path::new("/usr/share/zoneinfo")
            .join(tz)
            .is_file();
    if known {
        Ok(())
    } else {
        Err(format!(
            "can not load timezone {tz:?}: specify the time zone with --tz or the tz key"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server flags of a command line, with or without the `server` subcommand.
    fn server_args(args: &[&str]) -> ServerArgs {
        let cli =
            Cli::try_parse_from(std::iter::once("cdc-server").chain(args.iter().copied())).unwrap();
        match cli.command {
            None => cli.server,
            Some(Command::Server(server)) => *server,
            Some(other) => panic!("not the server: {other:?}"),
        }
    }

    fn load_cli(args: &[&str]) -> Result<(Config, Vec<String>), String> {
        load(&server_args(args)).map(|loaded| (loaded.config, loaded.warnings))
    }

    #[test]
    #[allow(
        clippy::result_large_err,
        reason = "figment's Jail returns its own error"
    )]
    fn precedence_is_defaults_file_env_flags() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "cdc.toml",
                "cluster-id = \"from-file\"\ncapture-session-ttl = 7\nowner-flush-interval = \"20ms\"\n[debug.messages]\nserver-ack-interval = \"100ms\"\n",
            )?;
            let (config, _) = load_cli(&["--config", "cdc.toml"]).unwrap();
            assert_eq!(config.cluster_id, "from-file");
            assert_eq!(config.capture_session_ttl, 7);
            assert_eq!(
                config.owner_flush_interval,
                std::time::Duration::from_millis(20)
            );
            assert_eq!(config.addr, "127.0.0.1:8300");
            jail.set_env("CDC_CLUSTER_ID", "from-env");
            jail.set_env("CDC_CAPTURE_SESSION_TTL", "6");
            jail.set_env("CDC_DEBUG__MESSAGES__SERVER_WORKER_POOL_SIZE", "4");
            // Not configuration: tool paths of the test environment.
            jail.set_env("CDC_SERVER_BIN", "/bin/true");
            jail.set_env("CDC_ETCD_BIN", "/bin/true");
            let (config, _) = load_cli(&["--config", "cdc.toml"]).unwrap();
            assert_eq!(config.cluster_id, "from-env");
            assert_eq!(config.capture_session_ttl, 6);
            assert_eq!(config.debug.messages.server_worker_pool_size, 4);
            let (config, _) = load_cli(&[
                "--config",
                "cdc.toml",
                "--cluster-id",
                "from-flag",
                "--etcd",
                "http://e:1",
            ])
            .unwrap();
            assert_eq!(config.cluster_id, "from-flag");
            assert_eq!(config.pd, "http://e:1");
            Ok(())
        });
    }

    #[test]
    #[allow(
        clippy::result_large_err,
        reason = "figment's Jail returns its own error"
    )]
    fn the_span_log_is_off_by_default_and_set_by_file_or_env() {
        figment::Jail::expect_with(|jail| {
            let (config, _) = load_cli(&[]).unwrap();
            assert_eq!(config.debug.span_log, None);
            jail.create_file("cdc.toml", "[debug]\nspan-log = \"/tmp/spans.jsonl\"\n")?;
            let (config, _) = load_cli(&["--config", "cdc.toml"]).unwrap();
            assert_eq!(
                config.debug.span_log,
                Some(PathBuf::from("/tmp/spans.jsonl"))
            );
            jail.set_env("CDC_DEBUG__SPAN_LOG", "/tmp/other.jsonl");
            let (config, _) = load_cli(&["--config", "cdc.toml"]).unwrap();
            assert_eq!(
                config.debug.span_log,
                Some(PathBuf::from("/tmp/other.jsonl"))
            );
            Ok(())
        });
    }

    #[test]
    #[allow(
        clippy::result_large_err,
        reason = "figment's Jail returns its own error"
    )]
    fn security_flags_override_the_file_and_partial_settings_name_the_key() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "cdc.toml",
                "[security]\nca-path = \"/nonexistent/ca.pem\"\nmtls = true\nclient-user-required = true\nclient-allowed-user = [\"root\"]\n",
            )?;
            let err = load_cli(&["--config", "cdc.toml"]).unwrap_err();
            assert!(err.contains("cert-path"), "{err}");
            let err =
                load_cli(&["--config", "cdc.toml", "--cert", "/nonexistent/cert.pem"]).unwrap_err();
            assert!(err.contains("key-path"), "{err}");
            let err = load_cli(&[
                "--config",
                "cdc.toml",
                "--ca",
                "/nonexistent/other-ca.pem",
                "--cert",
                "/nonexistent/cert.pem",
                "--key",
                "/nonexistent/key.pem",
                "--cert-allowed-cn",
                "a,b",
            ])
            .unwrap_err();
            // The flags won over the file, and the unreadable file is named.
            assert!(err.contains("/nonexistent/other-ca.pem"), "{err}");
            let err = load_cli(&["--pd", "https://127.0.0.1:2379"]).unwrap_err();
            assert!(err.contains("https://") && err.contains("ca-path"), "{err}");
            Ok(())
        });
    }

    #[test]
    #[allow(
        clippy::result_large_err,
        reason = "figment's Jail returns its own error"
    )]
    fn unknown_key_names_key_and_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "capture-sesion-ttl = 5\n")?;
            let err = load_cli(&["--config", "bad.toml"]).unwrap_err();
            assert!(err.contains("capture-sesion-ttl"), "{err}");
            assert!(err.contains("bad.toml"), "{err}");
            jail.create_file("bad2.toml", "[security]\nca = \"x\"\n")?;
            let err = load_cli(&["--config", "bad2.toml"]).unwrap_err();
            assert!(err.contains("ca"), "{err}");
            jail.create_file("bad3.toml", "gc-ttl = \"soon\"\n")?;
            let err = load_cli(&["--config", "bad3.toml"]).unwrap_err();
            assert!(err.contains("gc-ttl") && err.contains("bad3.toml"), "{err}");
            Ok(())
        });
    }
}

#[cfg(test)]
mod ticdc_tests {
    use super::*;

    fn load_args(args: &[&str]) -> Result<Loaded, String> {
        let cli = Cli::try_parse_from(std::iter::once("cdc-server").chain(args.iter().copied()))
            .map_err(|err| err.to_string())?;
        match cli.command {
            None => load(&cli.server),
            Some(Command::Server(server)) => load(&server),
            Some(other) => panic!("not the server: {other:?}"),
        }
    }

    #[test]
    #[allow(
        clippy::result_large_err,
        reason = "figment's Jail returns its own error"
    )]
    fn tiup_s_start_script_flags_are_accepted() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("cdc.toml", "")?;
            let loaded = load_args(&[
                "server",
                "--addr",
                "0.0.0.0:8300",
                "--advertise-addr",
                "10.0.0.1:8300",
                "--pd",
                "http://10.0.0.2:2379,http://10.0.0.3:2379",
                "--data-dir=/data/cdc",
                "--sort-dir=/data/cdc/tmp/sorter",
                "--gc-ttl",
                "3600",
                "--tz",
                "UTC",
                "--cluster-id",
                "tiup",
                "--config",
                "cdc.toml",
                "--log-file",
                "/log/cdc.log",
                "--log-level",
                "debug",
                "--owner-flush-interval",
                "1m30s",
                "--processor-flush-interval",
                "200ms",
            ])
            .unwrap();
            let config = &loaded.config;
            assert_eq!(config.gc_ttl, 3600);
            assert_eq!(config.tz, "UTC");
            assert_eq!(config.cluster_id, "tiup");
            assert_eq!(config.data_dir, "/data/cdc");
            assert_eq!(config.owner_flush_interval, Duration::from_secs(90));
            assert_eq!(config.processor_flush_interval, Duration::from_millis(200));
            assert_eq!(loaded.log.level.as_deref(), Some("debug"));
            assert_eq!(loaded.log.file, Some(PathBuf::from("/log/cdc.log")));
            assert!(
                loaded.warnings.iter().any(|w| w.contains("--sort-dir")),
                "{:?}",
                loaded.warnings
            );
            // The same flags without the subcommand.
            let loaded = load_args(&["--addr", "localhost:8300", "--gc-ttl", "60"]).unwrap();
            assert_eq!(loaded.config.addr, "localhost:8300");
            Ok(())
        });
    }

    #[test]
    fn pd_must_be_an_http_url() {
        for bad in [
            "127.0.0.1:2379",
            "unix:///etcd",
            "http://",
            "http://a:1,b:2",
        ] {
            let err = load_args(&["--pd", bad]).err().unwrap_or_default();
            assert!(err.contains("PD endpoint"), "{bad}: {err}");
        }
        // An https URL is a PD endpoint; without a CA it is refused for that alone.
        let err = load_args(&["--pd", "https://etcd:2379"])
            .err()
            .unwrap_or_default();
        assert!(
            !err.contains("PD endpoint") && err.contains("ca-path"),
            "{err}"
        );
        let err = load_args(&["--tz", "Mars/Olympus"])
            .err()
            .unwrap_or_default();
        assert!(err.contains("timezone"), "{err}");
        let err = load_args(&["--owner-flush-interval", "soon"])
            .err()
            .unwrap_or_default();
        assert!(err.contains("soon"), "{err}");
    }

    #[test]
    #[allow(
        clippy::result_large_err,
        reason = "figment's Jail returns its own error"
    )]
    fn ticdc_keys_are_accepted_and_inert_ones_warned_once() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "cdc.toml",
                r#"
owner-flush-interval = 50000000
processor-flush-interval = "1m30s"
per-table-memory-quota = 10485760
gc-tuner-memory-threshold = 0
[log]
level = "warn"
error-output = "stderr"
[log.file]
filename = "/tmp/x.log"
max-size = 1
max-days = 3
max-backups = 4
[sorter]
sort-dir = "/tmp/sorter"
num-concurrent-worker = 4
[kv-client]
region-retry-duration = "1m"
[debug]
enable-db-sorter = true
[debug.db]
count = 8
[debug.messages]
server-ack-interval = "0"
"#,
            )?;
            let loaded = load_args(&["--config", "cdc.toml"]).unwrap();
            assert_eq!(
                loaded.config.owner_flush_interval,
                Duration::from_millis(50)
            );
            assert_eq!(
                loaded.config.processor_flush_interval,
                Duration::from_secs(90)
            );
            assert_eq!(loaded.log.level.as_deref(), Some("warn"));
            assert_eq!(loaded.log.file, Some(PathBuf::from("/tmp/x.log")));
            assert_eq!(loaded.log.max_size_bytes, 1024 * 1024);
            assert_eq!((loaded.log.max_days, loaded.log.max_backups), (3, 4));
            for key in [
                "per-table-memory-quota",
                "gc-tuner-memory-threshold",
                "log.error-output",
                "sorter.sort-dir",
                "sorter.num-concurrent-worker",
                "kv-client.region-retry-duration",
                "debug.enable-db-sorter",
                "debug.db.count",
            ] {
                let count = loaded
                    .warnings
                    .iter()
                    .filter(|w| w.contains(&format!("key {key} ")))
                    .count();
                assert_eq!(count, 1, "{key}: {:?}", loaded.warnings);
            }
            // A flag wins over the file's log level and file.
            let loaded = load_args(&[
                "--config",
                "cdc.toml",
                "--log-level",
                "error",
                "--log-file",
                "f",
            ])
            .unwrap();
            assert_eq!(loaded.log.level.as_deref(), Some("error"));
            assert_eq!(loaded.log.file, Some(PathBuf::from("f")));
            // No level anywhere: RUST_LOG decides.
            assert_eq!(load_args(&[]).unwrap().log.level, None);
            // Keys TiCDC does not know either are errors naming them.
            for (text, key) in [
                ("[sorter]\nsort-dri = \"x\"\n", "sorter.sort-dri"),
                ("[log.file]\nmax-sise = 1\n", "max-sise"),
                ("[debug.db]\ncuont = 1\n", "debug.db.cuont"),
                (
                    "owner-flush-interval = \"5 parsecs\"\n",
                    "owner-flush-interval",
                ),
            ] {
                jail.create_file("bad.toml", text)?;
                let err = load_args(&["--config", "bad.toml"])
                    .err()
                    .unwrap_or_default();
                assert!(
                    err.contains(key) && err.contains("bad.toml"),
                    "{key}: {err}"
                );
            }
            Ok(())
        });
    }
}
