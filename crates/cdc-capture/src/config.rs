//! The server configuration: TiCDC's keys, defaults and validation (§6.7, case 86).

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

use cdc_election::{DEFAULT_SESSION_TTL_SECS, MIN_SESSION_TTL_SECS};
use cdc_p2p::MessagesConfig;

mod security;
pub use security::SecurityConfig;
pub(crate) use security::is_https;

/// The configuration of one capture server. Keys are TiCDC's (`capture-session-ttl`, ...).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// The etcd (PD) endpoints, comma-separated. Set by `--pd`; not a TiCDC file key.
    pub pd: String,
    /// The address to listen on for HTTP and gRPC.
    pub addr: String,
    /// The address peers and clients use; empty means `addr`.
    pub advertise_addr: String,
    /// The log level (`error`, `warn`, `info`, `debug`, `trace`); empty: the server's `[log]`
    /// level, else `RUST_LOG`, else `info`.
    pub log_level: String,
    /// The log file; empty means standard error.
    pub log_file: String,
    /// Log as JSON lines instead of text (not a TiCDC key).
    pub log_json: bool,
    /// The data directory (unused by the capture layer; kept for TiCDC compatibility).
    pub data_dir: String,
    /// The GC safepoint TTL in seconds.
    pub gc_ttl: i64,
    /// The time zone name (kept for TiCDC compatibility).
    pub tz: String,
    /// The cluster this capture joins.
    pub cluster_id: String,
    /// The TTL of the capture's etcd lease, in seconds.
    pub capture_session_ttl: i64,
    /// The owner's etcd worker interval.
    #[serde(with = "humantime_serde")]
    pub owner_flush_interval: Duration,
    /// The processor's etcd worker interval.
    #[serde(with = "humantime_serde")]
    pub processor_flush_interval: Duration,
    /// TLS settings.
    pub security: SecurityConfig,
    /// Debug settings.
    pub debug: DebugConfig,
}

/// The `[debug]` section.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct DebugConfig {
    /// The `[debug.messages]` section (p2p settings, §5.6).
    pub messages: MessagesConfig,
    /// `span-log`: when set, every span pipeline start and stop is appended to this file as one
    /// JSON line (for the checker of `tests/it/changefeed.rs`); off by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub span_log: Option<std::path::PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            pd: "http://127.0.0.1:2379".to_owned(),
            addr: "127.0.0.1:8300".to_owned(),
            advertise_addr: String::new(),
            log_level: String::new(),
            log_file: String::new(),
            log_json: false,
            data_dir: String::new(),
            gc_ttl: 24 * 60 * 60,
            tz: "System".to_owned(),
            cluster_id: "default".to_owned(),
            capture_session_ttl: DEFAULT_SESSION_TTL_SECS,
            owner_flush_interval: Duration::from_millis(50),
            processor_flush_interval: Duration::from_millis(50),
            security: SecurityConfig::default(),
            debug: DebugConfig::default(),
        }
    }
}

/// Whether `id` is a valid cluster ID ([`cdc_model::validate_cluster_id`]).
pub fn is_valid_cluster_id(id: &str) -> bool {
    cdc_model::validate_cluster_id(id).is_ok()
}

impl Config {
    /// The etcd endpoints, split on commas.
    pub fn endpoints(&self) -> Vec<String> {
        self.pd
            .split(',')
            .map(str::trim)
            .filter(|endpoint| !endpoint.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Checks the values and fills in derived ones (TiCDC's `ValidateAndAdjust`). Returns the
    /// warnings to log (for example a session TTL below the minimum that was reset).
    pub fn validate_and_adjust(&mut self) -> Result<Vec<String>> {
        let mut warnings = Vec::new();
        if let Err(err) = cdc_model::validate_cluster_id(&self.cluster_id) {
            return Err(invalid(format!(
                "bad cluster-id: {}",
                cdc_model::ErrorReport(&err)
            )));
        }
        if self.addr.is_empty() {
            return Err(invalid("empty address".to_owned()));
        }
        if self.advertise_addr.is_empty() {
            self.advertise_addr = self.addr.clone();
        }
        check_advertise_addr(&self.advertise_addr)?;
        if self.gc_ttl == 0 {
            return Err(invalid("empty GC TTL is not allowed".to_owned()));
        }
        if self.capture_session_ttl < MIN_SESSION_TTL_SECS {
            warnings.push(format!(
                "capture-session-ttl {} is below the minimum {MIN_SESSION_TTL_SECS}, using {DEFAULT_SESSION_TTL_SECS}",
                self.capture_session_ttl
            ));
            self.capture_session_ttl = DEFAULT_SESSION_TTL_SECS;
        }
        if self.owner_flush_interval.is_zero() || self.processor_flush_interval.is_zero() {
            return Err(invalid("flush intervals must be positive".to_owned()));
        }
        if self.endpoints().is_empty() {
            return Err(invalid("empty PD endpoints".to_owned()));
        }
        self.debug
            .messages
            .validate_and_adjust()
            .map_err(|err| invalid(format!("[debug.messages]: {err}")))?;
        self.security.validate(&self.endpoints())?;
        Ok(warnings)
    }
}

fn invalid(message: String) -> Error {
    Error::InvalidConfig { message }
}

fn check_advertise_addr(addr: &str) -> Result<()> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(invalid(format!(
            "advertise address {addr} does not contain a port"
        )));
    };
    if port.parse::<u16>().is_err() {
        return Err(invalid(format!(
            "advertise address {addr} does not contain a port"
        )));
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let unspecified = host.is_empty()
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_unspecified());
    if unspecified {
        return Err(invalid(format!(
            "advertise address must be specified as a valid IP, not {addr}"
        )));
    }
    Ok(())
}

/// Parses a listen address such as `127.0.0.1:8300`, or resolves one with a host name
/// (`localhost:8300`, as TiCDC's `net.Listen` takes it) to its first address.
pub(crate) fn parse_listen_addr(addr: &str) -> Result<SocketAddr> {
    if let Ok(parsed) = addr.parse() {
        return Ok(parsed);
    }
    std::net::ToSocketAddrs::to_socket_addrs(addr)
        .map_err(|err| invalid(format!("bad address {addr}: {err}")))?
        .next()
        .ok_or_else(|| invalid(format!("bad address {addr}: it resolves to no address")))
}

#[cfg(test)]
mod tests;
