//! [`SinkUri`]: the sink URI, parsed and validated per scheme.
//!
//! `blackhole://` takes no parameters. `file:///dir` takes `max-file-size` (bytes, or with a
//! unit `KB`, `KiB`, `MB`, `MiB`, `GB`, `GiB`; default 64 MiB) and `flush-interval`.
//! `etcd://host:port[,host:port]/prefix` takes `batch-size` (1 to 128, etcd's default limit of
//! operations per transaction; default 128), `flush-interval` and the TLS files `ca`, `cert`,
//! `key`. `mysql://user:password@host:port/database?table=name` takes `table` (required),
//! `batch-size` (rows per statement, 1 to 4096; default 512), `tombstones` (`keep`, the default,
//! or `purge-after=<duration>`), `flush-interval` and the TLS files `ssl-ca`, `ssl-cert`,
//! `ssl-key`. `nats://host:port/subject?stream=name` takes `stream` (required), `create-stream`
//! (`true` or `false`, the default), `flush-interval` and the TLS files `ca`, `cert`, `key`.
//! `flush-interval` is a number with a unit `ms`, `s`, `m` or `h` (default 1 s). A parameter given
//! twice, or one the scheme does not know, is an error naming it.
//!
//! The TLS parameters are TiCDC's names (`ca`, `cert`, `key` of its Kafka sink; `ssl-ca`,
//! `ssl-cert`, `ssl-key` of its MySQL sink, `pkg/sink/mysql/config.go` in pingcap/tiflow): with
//! the CA the sink speaks TLS and verifies the server against it; the client certificate and its
//! key go together and need the CA (docs/security.md, "TLS to the sinks"). The files are read
//! when the sink opens ([`SinkTls::load`]).

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

/// The sink a URI names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKind {
    /// `blackhole://`: counts and drops.
    Blackhole,
    /// `file:///dir`: JSON Lines files.
    File,
    /// `etcd://host:port/prefix`: a mirror in another etcd.
    Etcd,
    /// `mysql://user:password@host:port/database?table=name`: a table in MySQL or MariaDB.
    Mysql,
    /// `nats://host:port/subject?stream=name`: messages in a NATS JetStream stream.
    Nats,
}

impl SinkKind {
    /// The URI scheme.
    pub fn scheme(self) -> &'static str {
        match self {
            SinkKind::Blackhole => "blackhole",
            SinkKind::File => "file",
            SinkKind::Etcd => "etcd",
            SinkKind::Mysql => "mysql",
            SinkKind::Nats => "nats",
        }
    }
}

/// The settings of a `file://` sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSinkConfig {
    /// The directory; each changefeed writes under `<dir>/<changefeed id>/`.
    pub dir: PathBuf,
    /// A file is rolled once it would grow past this many bytes (a single larger line still gets
    /// a file of its own).
    pub max_file_size: u64,
    /// How often the pipeline flushes.
    pub flush_interval: Duration,
}

/// The names a scheme gives its TLS parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsParameters {
    /// The CA that verifies the server.
    pub ca: &'static str,
    /// The client certificate.
    pub cert: &'static str,
    /// The client certificate's private key.
    pub key: &'static str,
}

/// The TLS parameters of `etcd://` and `nats://` (TiCDC's Kafka sink's names).
pub const TLS_PARAMETERS: TlsParameters = TlsParameters {
    ca: "ca",
    cert: "cert",
    key: "key",
};

/// The TLS parameters of `mysql://` (TiCDC's MySQL sink's names).
pub const MYSQL_TLS_PARAMETERS: TlsParameters = TlsParameters {
    ca: "ssl-ca",
    cert: "ssl-cert",
    key: "ssl-key",
};

/// TLS to a sink's server: the files the URI names (read when the sink opens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkTls {
    /// The CA certificates (PEM) that verify the server.
    pub ca: PathBuf,
    /// The client certificate chain and its private key (PEM), for mutual TLS.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// What the URI calls these, for errors.
    pub parameters: TlsParameters,
}

/// The settings of an `etcd://` sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSinkConfig {
    /// The endpoints, `host:port`.
    pub endpoints: Vec<String>,
    /// The prefix that replaces the source prefix.
    pub prefix: Vec<u8>,
    /// Operations per transaction (`batch-size`): each change is two, its key and its revision
    /// record, so a transaction holds half as many changes.
    pub batch_size: usize,
    /// How often the pipeline flushes.
    pub flush_interval: Duration,
    /// TLS (`https://` endpoints), with `ca`.
    pub tls: Option<SinkTls>,
}

/// What the MySQL sink does with the row of a deleted key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tombstones {
    /// `keep`: the row stays, its value NULL, with the delete's revision, so that no replay can
    /// resurrect the key; the table keeps a row per key ever written.
    Keep,
    /// `purge-after=<duration>`: a tombstone is deleted once its span has flushed changes this
    /// long after it; a replay reaching back further than that may resurrect the key until it
    /// replays the delete again.
    PurgeAfter(Duration),
}

/// The settings of a `mysql://` sink.
#[derive(Clone, PartialEq, Eq)]
pub struct MysqlSinkConfig {
    /// The server's host.
    pub host: String,
    /// The server's port.
    pub port: u16,
    /// The user.
    pub user: String,
    /// The password (empty for none).
    pub password: String,
    /// The database.
    pub database: String,
    /// The table, created when missing.
    pub table: String,
    /// Rows per statement.
    pub batch_size: usize,
    /// What happens to the rows of deleted keys.
    pub tombstones: Tombstones,
    /// How often the pipeline flushes.
    pub flush_interval: Duration,
    /// TLS, required and verified, with `ssl-ca`.
    pub tls: Option<SinkTls>,
}

impl MysqlSinkConfig {
    /// `host:port`, for messages.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl std::fmt::Debug for MysqlSinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlSinkConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("database", &self.database)
            .field("table", &self.table)
            .field("batch_size", &self.batch_size)
            .field("tombstones", &self.tombstones)
            .field("flush_interval", &self.flush_interval)
            .field("tls", &self.tls)
            .finish()
    }
}

/// The settings of a `nats://` sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsSinkConfig {
    /// The server, `host:port`.
    pub address: String,
    /// The subject prefix: changes go to `<subject>.<changefeed>`.
    pub subject: String,
    /// The JetStream stream that takes the subject.
    pub stream: String,
    /// Whether to create the stream (subjects `<subject>.>`) when it is missing.
    pub create_stream: bool,
    /// How often the pipeline flushes.
    pub flush_interval: Duration,
    /// TLS, required, with `ca`.
    pub tls: Option<SinkTls>,
}

/// A sink's settings, by scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkConfig {
    /// `blackhole://`.
    Blackhole,
    /// `file:///dir`.
    File(FileSinkConfig),
    /// `etcd://host:port/prefix`.
    Etcd(EtcdSinkConfig),
    /// `mysql://user:password@host:port/database?table=name`.
    Mysql(MysqlSinkConfig),
    /// `nats://host:port/subject?stream=name`.
    Nats(NatsSinkConfig),
}

/// A parsed and validated sink URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkUri {
    /// The URI as given.
    pub uri: String,
    /// The settings.
    pub config: SinkConfig,
}

/// The default `max-file-size`: 64 MiB.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 64 << 20;
/// The default `batch-size` of the etcd sink: etcd's default `--max-txn-ops`.
pub const DEFAULT_BATCH_SIZE: usize = 128;
/// The default `batch-size` of the MySQL sink: rows per statement.
pub const DEFAULT_MYSQL_BATCH_SIZE: usize = 512;
/// The default `flush-interval`.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

impl SinkUri {
    /// Parses `uri`.
    pub fn parse(uri: &str) -> Result<SinkUri> {
        let Some((scheme, rest)) = uri.split_once("://") else {
            return Err(Error::MissingScheme {
                uri: uri.to_owned(),
            });
        };
        let scheme_lower = scheme.to_ascii_lowercase();
        let (location, query) = match rest.split_once('?') {
            Some((location, query)) => (location, query),
            None => (rest, ""),
        };
        let parameters = parse_query(query)?;
        let config = match scheme_lower.as_str() {
            "blackhole" => {
                check_known(&scheme_lower, &parameters, &[])?;
                SinkConfig::Blackhole
            }
            "file" => {
                check_known(
                    &scheme_lower,
                    &parameters,
                    &["max-file-size", "flush-interval"],
                )?;
                let Some(path) = location.strip_prefix('/') else {
                    return Err(Error::InvalidUri {
                        uri: uri.to_owned(),
                        reason: "must name a local absolute directory (file:///dir)",
                    });
                };
                let dir = percent_decode(&format!("/{path}"), "path")?;
                if path.is_empty() {
                    return Err(Error::InvalidUri {
                        uri: uri.to_owned(),
                        reason: "names no directory",
                    });
                }
                let dir = String::from_utf8(dir).map_err(|_| Error::InvalidUri {
                    uri: uri.to_owned(),
                    reason: "has a directory that is not UTF-8",
                })?;
                SinkConfig::File(FileSinkConfig {
                    dir: PathBuf::from(dir),
                    max_file_size: match parameter(&parameters, "max-file-size") {
                        Some(value) => parse_size("max-file-size", value)?,
                        None => DEFAULT_MAX_FILE_SIZE,
                    },
                    flush_interval: flush_interval(&parameters)?,
                })
            }
            "etcd" => {
                check_known(
                    &scheme_lower,
                    &parameters,
                    &["batch-size", "flush-interval", "ca", "cert", "key"],
                )?;
                let (hosts, path) = match location.split_once('/') {
                    Some((hosts, path)) => (hosts, path),
                    None => (location, ""),
                };
                let mut endpoints = Vec::new();
                for host in hosts.split(',') {
                    if !valid_host_port(host) {
                        return Err(Error::InvalidUri {
                            uri: uri.to_owned(),
                            reason: "must list endpoints as host:port[,host:port]",
                        });
                    }
                    endpoints.push(host.to_owned());
                }
                if path.is_empty() {
                    return Err(Error::InvalidUri {
                        uri: uri.to_owned(),
                        reason: "names no prefix (etcd://host:port/prefix)",
                    });
                }
                let prefix = percent_decode(&format!("/{path}"), "prefix")?;
                let batch_size = match parameter(&parameters, "batch-size") {
                    Some(value) => parse_batch_size(value)?,
                    None => DEFAULT_BATCH_SIZE,
                };
                SinkConfig::Etcd(EtcdSinkConfig {
                    endpoints,
                    prefix,
                    batch_size,
                    flush_interval: flush_interval(&parameters)?,
                    tls: parse_tls(&parameters, TLS_PARAMETERS)?,
                })
            }
            "mysql" => {
                check_known(
                    &scheme_lower,
                    &parameters,
                    &[
                        "table",
                        "batch-size",
                        "tombstones",
                        "flush-interval",
                        "ssl-ca",
                        "ssl-cert",
                        "ssl-key",
                    ],
                )?;
                SinkConfig::Mysql(parse_mysql(uri, location, &parameters)?)
            }
            "nats" => {
                check_known(
                    &scheme_lower,
                    &parameters,
                    &[
                        "stream",
                        "create-stream",
                        "flush-interval",
                        "ca",
                        "cert",
                        "key",
                    ],
                )?;
                SinkConfig::Nats(parse_nats(uri, location, &parameters)?)
            }
            _ => {
                return Err(Error::UnknownScheme {
                    scheme: scheme.to_owned(),
                });
            }
        };
        Ok(SinkUri {
            uri: uri.to_owned(),
            config,
        })
    }

    /// The sink this URI names.
    pub fn kind(&self) -> SinkKind {
        match self.config {
            SinkConfig::Blackhole => SinkKind::Blackhole,
            SinkConfig::File(_) => SinkKind::File,
            SinkConfig::Etcd(_) => SinkKind::Etcd,
            SinkConfig::Mysql(_) => SinkKind::Mysql,
            SinkConfig::Nats(_) => SinkKind::Nats,
        }
    }

    /// How often the pipeline should flush this sink.
    pub fn flush_interval(&self) -> Duration {
        match &self.config {
            SinkConfig::Blackhole => DEFAULT_FLUSH_INTERVAL,
            SinkConfig::File(file) => file.flush_interval,
            SinkConfig::Etcd(etcd) => etcd.flush_interval,
            SinkConfig::Mysql(mysql) => mysql.flush_interval,
            SinkConfig::Nats(nats) => nats.flush_interval,
        }
    }
}

/// The settings of `nats://host:port/subject?stream=name`.
fn parse_nats(
    uri: &str,
    location: &str,
    parameters: &[(String, String)],
) -> Result<NatsSinkConfig> {
    let bad = |reason: &'static str| Error::InvalidUri {
        uri: uri.to_owned(),
        reason,
    };
    let (address, subject) = location.split_once('/').unwrap_or((location, ""));
    if !valid_host_port(address) {
        return Err(bad("must name the server as host:port"));
    }
    let subject = subject.trim_end_matches('/');
    let valid_subject = !subject.is_empty()
        && subject.split('.').all(|token| {
            !token.is_empty()
                && token != "*"
                && token != ">"
                && token
                    .bytes()
                    .all(|byte| byte.is_ascii_graphic() && byte != b'*' && byte != b'>')
        });
    if !valid_subject {
        return Err(bad(
            "must name a subject of dot-separated tokens without wildcards (nats://host:port/subject)",
        ));
    }
    let stream = match parameter(parameters, "stream") {
        Some(stream)
            if !stream.is_empty()
                && stream
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-') =>
        {
            stream.to_owned()
        }
        Some(stream) => {
            return Err(invalid(
                "stream",
                stream,
                "must be letters, digits, '_' and '-'",
            ));
        }
        None => return Err(bad("names no stream (?stream=name)")),
    };
    let create_stream = match parameter(parameters, "create-stream") {
        None | Some("false") => false,
        Some("true") => true,
        Some(value) => return Err(invalid("create-stream", value, "must be true or false")),
    };
    Ok(NatsSinkConfig {
        address: address.to_owned(),
        subject: subject.to_owned(),
        stream,
        create_stream,
        flush_interval: flush_interval(parameters)?,
        tls: parse_tls(parameters, TLS_PARAMETERS)?,
    })
}

/// The settings of `mysql://user:password@host:port/database?table=name`.
fn parse_mysql(
    uri: &str,
    location: &str,
    parameters: &[(String, String)],
) -> Result<MysqlSinkConfig> {
    let bad = |reason: &'static str| Error::InvalidUri {
        uri: uri.to_owned(),
        reason,
    };
    let (credentials, rest) = match location.rsplit_once('@') {
        Some((credentials, rest)) => (Some(credentials), rest),
        None => (None, location),
    };
    let (user, password) = match credentials {
        None => ("root".to_owned(), String::new()),
        Some(credentials) => {
            let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
            (
                String::from_utf8(percent_decode(user, "user")?)
                    .map_err(|_| bad("has a user that is not UTF-8"))?,
                String::from_utf8(percent_decode(password, "password")?)
                    .map_err(|_| bad("has a password that is not UTF-8"))?,
            )
        }
    };
    if user.is_empty() {
        return Err(bad(
            "names no user (mysql://user:password@host:port/database)",
        ));
    }
    let (host_port, database) = rest.split_once('/').unwrap_or((rest, ""));
    let database = database.trim_end_matches('/');
    if !valid_host_port(host_port) {
        return Err(bad("must name the server as host:port"));
    }
    let (host, port) = host_port.rsplit_once(':').unwrap_or((host_port, ""));
    let port = port
        .parse::<u16>()
        .map_err(|_| bad("must name the server as host:port"))?;
    if database.is_empty() || !valid_identifier(database) {
        return Err(bad(
            "must name a database of letters, digits, '_' and '$' (mysql://host:port/database)",
        ));
    }
    let table = match parameter(parameters, "table") {
        Some(table) if valid_identifier(table) => table.to_owned(),
        Some(table) => {
            return Err(invalid(
                "table",
                table,
                "must be letters, digits, '_' and '$', at most 64",
            ));
        }
        None => return Err(bad("names no table (?table=name)")),
    };
    let batch_size = match parameter(parameters, "batch-size") {
        None => DEFAULT_MYSQL_BATCH_SIZE,
        Some(value) => match value.parse::<usize>() {
            Ok(size) if (1..=4096).contains(&size) => size,
            Ok(_) => return Err(invalid("batch-size", value, "must be between 1 and 4096")),
            Err(_) => return Err(invalid("batch-size", value, "is not a number")),
        },
    };
    let tombstones = match parameter(parameters, "tombstones") {
        None | Some("keep") => Tombstones::Keep,
        Some(value) => match value.strip_prefix("purge-after=") {
            Some(after) => Tombstones::PurgeAfter(parse_duration("tombstones", after)?),
            None => {
                return Err(invalid(
                    "tombstones",
                    value,
                    "must be keep or purge-after=<duration>",
                ));
            }
        },
    };
    Ok(MysqlSinkConfig {
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port,
        user,
        password,
        database: database.to_owned(),
        table,
        batch_size,
        tombstones,
        flush_interval: flush_interval(parameters)?,
        tls: parse_tls(parameters, MYSQL_TLS_PARAMETERS)?,
    })
}

/// The TLS files of a URI, under the scheme's `names`: none, the CA alone, or the CA with a
/// client certificate and its key.
fn parse_tls(parameters: &[(String, String)], names: TlsParameters) -> Result<Option<SinkTls>> {
    let file = |name: &'static str| -> Result<Option<PathBuf>> {
        match parameter(parameters, name) {
            None => Ok(None),
            Some("") => Err(invalid(name, "", "names no file")),
            Some(path) => Ok(Some(PathBuf::from(path))),
        }
    };
    let (ca, cert, key) = (file(names.ca)?, file(names.cert)?, file(names.key)?);
    let missing = |parameter, needs, reason| Error::TlsParameterMissing {
        parameter,
        needs,
        reason,
    };
    const NEEDS_CA: &str = "TLS verifies the server against the CA";
    const PAIR: &str = "a client certificate goes with its private key";
    match (ca, cert, key) {
        (None, None, None) => Ok(None),
        (None, Some(_), _) => Err(missing(names.cert, names.ca, NEEDS_CA)),
        (None, None, Some(_)) => Err(missing(names.key, names.ca, NEEDS_CA)),
        (Some(_), Some(_), None) => Err(missing(names.cert, names.key, PAIR)),
        (Some(_), None, Some(_)) => Err(missing(names.key, names.cert, PAIR)),
        (Some(ca), None, None) => Ok(Some(SinkTls {
            ca,
            identity: None,
            parameters: names,
        })),
        (Some(ca), Some(cert), Some(key)) => Ok(Some(SinkTls {
            ca,
            identity: Some((cert, key)),
            parameters: names,
        })),
    }
}

/// A MySQL name we quote without escaping: letters, digits, `_` and `$`, at most 64 bytes.
fn valid_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'$')
}

/// Splits a query into decoded `(name, value)` pairs; a name given twice is an error.
fn parse_query(query: &str) -> Result<Vec<(String, String)>> {
    let mut parameters: Vec<(String, String)> = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode_text(name, "parameter name")?;
        let value = decode_text(value, &name)?;
        if parameters.iter().any(|(seen, _)| *seen == name) {
            return Err(Error::InvalidParameter {
                parameter: name,
                value,
                reason: "is given more than once",
            });
        }
        parameters.push((name, value));
    }
    Ok(parameters)
}

fn check_known(scheme: &str, parameters: &[(String, String)], known: &[&str]) -> Result<()> {
    match parameters
        .iter()
        .find(|(name, _)| !known.contains(&name.as_str()))
    {
        Some((name, _)) => Err(Error::UnknownParameter {
            scheme: scheme.to_owned(),
            parameter: name.clone(),
        }),
        None => Ok(()),
    }
}

fn parameter<'a>(parameters: &'a [(String, String)], name: &str) -> Option<&'a str> {
    parameters
        .iter()
        .find(|(seen, _)| seen == name)
        .map(|(_, value)| value.as_str())
}

fn flush_interval(parameters: &[(String, String)]) -> Result<Duration> {
    match parameter(parameters, "flush-interval") {
        Some(value) => parse_duration("flush-interval", value),
        None => Ok(DEFAULT_FLUSH_INTERVAL),
    }
}

fn invalid(parameter: &str, value: &str, reason: &'static str) -> Error {
    Error::InvalidParameter {
        parameter: parameter.to_owned(),
        value: value.to_owned(),
        reason,
    }
}

/// Splits `value` into its leading digits and the rest.
fn split_number<'a>(parameter: &str, value: &'a str) -> Result<(u64, &'a str)> {
    let digits = value.bytes().take_while(u8::is_ascii_digit).count();
    let number = value[..digits]
        .parse::<u64>()
        .map_err(|_| invalid(parameter, value, "is not a number"))?;
    Ok((number, value[digits..].trim()))
}

fn parse_size(parameter: &str, value: &str) -> Result<u64> {
    let (number, unit) = split_number(parameter, value)?;
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" => 1 << 10,
        "mb" => 1_000_000,
        "mib" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return Err(invalid(parameter, value, "has an unknown unit")),
    };
    let size = number
        .checked_mul(multiplier)
        .ok_or_else(|| invalid(parameter, value, "is too large"))?;
    if size == 0 {
        return Err(invalid(parameter, value, "must be positive"));
    }
    Ok(size)
}

fn parse_duration(parameter: &str, value: &str) -> Result<Duration> {
    let (number, unit) = split_number(parameter, value)?;
    let duration = match unit {
        "ms" => Duration::from_millis(number),
        "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number.saturating_mul(60)),
        "h" => Duration::from_secs(number.saturating_mul(3600)),
        _ => return Err(invalid(parameter, value, "needs a unit ms, s, m or h")),
    };
    if duration.is_zero() {
        return Err(invalid(parameter, value, "must be positive"));
    }
    Ok(duration)
}

fn parse_batch_size(value: &str) -> Result<usize> {
    match value.parse::<usize>() {
        Ok(size) if (1..=128).contains(&size) => Ok(size),
        Ok(_) => Err(invalid("batch-size", value, "must be between 1 and 128")),
        Err(_) => Err(invalid("batch-size", value, "is not a number")),
    }
}

fn valid_host_port(endpoint: &str) -> bool {
    match endpoint.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|port| port > 0),
        None => false,
    }
}

fn decode_text(text: &str, what: &str) -> Result<String> {
    String::from_utf8(percent_decode(&text.replace('+', " "), what)?)
        .map_err(|_| invalid(what, text, "is not UTF-8"))
}

/// Decodes `%XX` escapes.
fn percent_decode(text: &str, what: &str) -> Result<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| invalid(what, text, "has a bad %-escape"))?;
            decoded.push(hex);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    Ok(decoded)
}
