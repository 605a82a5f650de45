//! Flags and configuration loading: defaults < file < `CDC_` environment < flags.

use std::path::PathBuf;

use cdc_capture::Config;
use clap::Parser;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::Serialize;

/// `cdc-server`: one capture of a TiCDC-style cluster.
#[derive(Debug, Parser)]
#[command(name = "cdc-server", version)]
pub(crate) struct Cli {
    /// The configuration file (TOML with TiCDC's keys).
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) overrides: Overrides,
}

/// Flags that override the file and the environment.
#[derive(Debug, Default, clap::Args, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct Overrides {
    /// The etcd (PD) endpoints, comma-separated.
    #[arg(long, visible_alias = "etcd")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pd: Option<String>,
    /// The address to listen on (default 127.0.0.1:8300).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    addr: Option<String>,
    /// The address other captures and clients use (default: --addr).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    advertise_addr: Option<String>,
    /// The cluster to join (default "default").
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_id: Option<String>,
    /// The log level.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    log_level: Option<String>,
    /// The log file (default: standard error).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    log_file: Option<String>,
    /// The data directory.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<String>,
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

/// Loads and validates the configuration; the error names the bad key and where it came from.
pub(crate) fn load(cli: &Cli) -> Result<(Config, Vec<String>), String> {
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = &cli.config {
        figment = figment.merge(Toml::file_exact(path));
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
        .merge(Serialized::defaults(&cli.overrides));
    let mut config: Config = figment.extract().map_err(|err| {
        err.into_iter()
            .map(|error| error.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    let warnings = config
        .validate_and_adjust()
        .map_err(|err| format!("invalid configuration: {err}"))?;
    Ok((config, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::parse_from(std::iter::once("cdc-server").chain(args.iter().copied()))
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
            let (config, _) = load(&cli(&["--config", "cdc.toml"])).unwrap();
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
            let (config, _) = load(&cli(&["--config", "cdc.toml"])).unwrap();
            assert_eq!(config.cluster_id, "from-env");
            assert_eq!(config.capture_session_ttl, 6);
            assert_eq!(config.debug.messages.server_worker_pool_size, 4);
            let (config, _) = load(&cli(&[
                "--config",
                "cdc.toml",
                "--cluster-id",
                "from-flag",
                "--etcd",
                "http://e:1",
            ]))
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
            let (config, _) = load(&cli(&[])).unwrap();
            assert_eq!(config.debug.span_log, None);
            jail.create_file("cdc.toml", "[debug]\nspan-log = \"/tmp/spans.jsonl\"\n")?;
            let (config, _) = load(&cli(&["--config", "cdc.toml"])).unwrap();
            assert_eq!(
                config.debug.span_log,
                Some(PathBuf::from("/tmp/spans.jsonl"))
            );
            jail.set_env("CDC_DEBUG__SPAN_LOG", "/tmp/other.jsonl");
            let (config, _) = load(&cli(&["--config", "cdc.toml"])).unwrap();
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
            let err = load(&cli(&["--config", "cdc.toml"])).unwrap_err();
            assert!(err.contains("cert-path"), "{err}");
            let err = load(&cli(&[
                "--config",
                "cdc.toml",
                "--cert",
                "/nonexistent/cert.pem",
            ]))
            .unwrap_err();
            assert!(err.contains("key-path"), "{err}");
            let err = load(&cli(&[
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
            ]))
            .unwrap_err();
            // The flags won over the file, and the unreadable file is named.
            assert!(err.contains("/nonexistent/other-ca.pem"), "{err}");
            let err = load(&cli(&["--pd", "https://127.0.0.1:2379"])).unwrap_err();
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
            let err = load(&cli(&["--config", "bad.toml"])).unwrap_err();
            assert!(err.contains("capture-sesion-ttl"), "{err}");
            assert!(err.contains("bad.toml"), "{err}");
            jail.create_file("bad2.toml", "[security]\nca = \"x\"\n")?;
            let err = load(&cli(&["--config", "bad2.toml"])).unwrap_err();
            assert!(err.contains("ca"), "{err}");
            jail.create_file("bad3.toml", "gc-ttl = \"soon\"\n")?;
            let err = load(&cli(&["--config", "bad3.toml"])).unwrap_err();
            assert!(err.contains("gc-ttl") && err.contains("bad3.toml"), "{err}");
            Ok(())
        });
    }
}
