//! Logging: the level and file from flags, keys and `[log]` (TiCDC's `pkg/logutil` settings),
//! rotation of the file by size, and the handle `/api/v2/log` changes the level through.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use cdc_capture::Config;
use figment::value::{Dict, Tag, Value};
use file_rotate::suffix::{AppendTimestamp, FileLimit, SuffixScheme, TimestampSuffix};
use file_rotate::{ContentLimit, FileRotate, compression::Compression};
use serde::Deserialize;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

/// TiCDC's default `log.file.max-size`, in MiB (`pkg/config/server_config.go` in
/// pingcap/tiflow); 0 in the file also means this.
const DEFAULT_MAX_SIZE_MIB: u64 = 300;
const MIB: u64 = 1024 * 1024;

/// The `[log]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct LogSection {
    level: String,
    file: LogFileSection,
}

/// The `[log.file]` section.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
struct LogFileSection {
    filename: String,
    max_size: u64,
    max_days: u64,
    max_backups: u64,
}

impl Default for LogFileSection {
    fn default() -> Self {
        LogFileSection {
            filename: String::new(),
            max_size: DEFAULT_MAX_SIZE_MIB,
            max_days: 0,
            max_backups: 0,
        }
    }
}

impl LogSection {
    /// Reads the `[log]` table of `file`; an unknown key is an error naming it.
    pub(crate) fn from_dict(dict: Dict, file: &Path) -> Result<LogSection, String> {
        Value::Dict(Tag::Default, dict)
            .deserialize()
            .map_err(|err| format!("log in {}: {err}", file.display()))
    }
}

/// Where and how the process logs, once flags, keys and `[log]` are merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogSettings {
    /// The level directive; `None`: `RUST_LOG`, else `info`.
    pub(crate) level: Option<String>,
    /// The file; `None`: standard error.
    pub(crate) file: Option<PathBuf>,
    pub(crate) max_size_bytes: u64,
    pub(crate) max_days: u64,
    pub(crate) max_backups: u64,
    pub(crate) json: bool,
}

impl LogSettings {
    /// `--log-level` or `log-level` win over `[log] level`; `--log-file` or `log-file` over
    /// `[log.file] filename` (both reach `config`, the flags winning there).
    pub(crate) fn new(config: &Config, log: &LogSection) -> LogSettings {
        let non_empty = |text: &str| (!text.is_empty()).then(|| text.to_owned());
        let max_size = if log.file.max_size == 0 {
            DEFAULT_MAX_SIZE_MIB
        } else {
            log.file.max_size
        };
        LogSettings {
            level: non_empty(&config.log_level).or_else(|| non_empty(&log.level)),
            file: non_empty(&config.log_file)
                .or_else(|| non_empty(&log.file.filename))
                .map(PathBuf::from),
            max_size_bytes: max_size.saturating_mul(MIB),
            max_days: log.file.max_days,
            max_backups: log.file.max_backups,
            json: config.log_json,
        }
    }
}

/// Changes the level of the running process (`/api/v2/log`).
pub(crate) type LevelSetter = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// TiCDC's level names (zap's: `fatal`, `panic` and `dpanic` log as errors here) as a
/// filter directive; anything else is taken as a directive (`info,cdc_capture=debug`).
pub(crate) fn directive(level: &str) -> String {
    match level.trim().to_ascii_lowercase().as_str() {
        "fatal" | "panic" | "dpanic" => "error".to_owned(),
        "warning" => "warn".to_owned(),
        "debug" | "info" | "warn" | "error" | "trace" | "off" => level.trim().to_ascii_lowercase(),
        _ => level.trim().to_owned(),
    }
}

/// A filter from a level or a directive; a bare word that is no level is refused (the filter
/// would take it for a target and log nothing).
fn filter(level: &str) -> Result<EnvFilter, String> {
    let directive = directive(level);
    let bare_word = !directive.contains(['=', ',', ':', '[']);
    let is_level = matches!(
        directive.as_str(),
        "trace" | "debug" | "info" | "warn" | "error" | "off"
    );
    if bare_word && !is_level {
        return Err(format!("invalid log level {level:?}"));
    }
    EnvFilter::try_new(directive).map_err(|err| format!("invalid log level {level:?}: {err}"))
}

/// Installs the process's subscriber; the setter changes its level.
pub(crate) fn init(settings: &LogSettings) -> Result<LevelSetter> {
    let initial = match &settings.level {
        Some(level) => filter(level).map_err(anyhow::Error::msg)?,
        None => EnvFilter::try_from_default_env()
            .or_else(|_| EnvFilter::try_new("info"))
            .context("parse RUST_LOG")?,
    };
    let (filter_layer, handle) = reload::Layer::<EnvFilter, Registry>::new(initial);
    let (writer, ansi) = match &settings.file {
        None => (
            BoxMakeWriter::new(io::stderr),
            io::IsTerminal::is_terminal(&io::stderr()),
        ),
        Some(path) => (
            BoxMakeWriter::new(Mutex::new(rotating_file(path, settings)?)),
            false,
        ),
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(writer);
    let fmt = if settings.json {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    tracing_subscriber::registry()
        .with(filter_layer)
        .with(fmt)
        .try_init()
        .context("install the logger")?;
    Ok(Arc::new(move |level: &str| {
        let filter = filter(level)?;
        handle
            .reload(filter)
            .map_err(|err| format!("change the log level: {err}"))
    }))
}

/// The log file, rotated when it passes `max_size_bytes`: the full file is renamed with its
/// time as a suffix (`cdc.log.20240102T030405`) and a new one started, as TiCDC's lumberjack
/// does; rotated files past `max_backups` or older than `max_days` are deleted (0: kept).
fn rotating_file(path: &Path, settings: &LogSettings) -> Result<FileRotate<Backups>> {
    let path = std::path::absolute(path)
        .with_context(|| format!("resolve log-file {}", path.display()))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("create the directory of log-file {}", path.display()))?;
    }
    // file-rotate reports no open error: open it once here so a bad path stops the start.
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("open log-file {}", path.display()))?;
    let max_size = usize::try_from(settings.max_size_bytes.max(1)).unwrap_or(usize::MAX);
    let by_age = if settings.max_days == 0 {
        FileLimit::Unlimited
    } else {
        let days = i64::try_from(settings.max_days).unwrap_or(i64::MAX / 86_400_000);
        FileLimit::Age(chrono::Duration::try_days(days).unwrap_or(chrono::Duration::MAX))
    };
    let scheme = Backups {
        by_age: AppendTimestamp::default(by_age),
        max_backups: usize::try_from(settings.max_backups).unwrap_or(usize::MAX),
    };
    Ok(FileRotate::new(
        path,
        scheme,
        ContentLimit::BytesSurpassed(max_size),
        Compression::None,
        None,
    ))
}

/// Rotated files named by time, deleted by count (`max-backups`) and by age (`max-days`).
struct Backups {
    by_age: AppendTimestamp,
    /// 0: no limit.
    max_backups: usize,
}

impl SuffixScheme for Backups {
    type Repr = TimestampSuffix;

    fn rotate_file(
        &mut self,
        basepath: &Path,
        newest_suffix: Option<&TimestampSuffix>,
        suffix: &Option<TimestampSuffix>,
    ) -> io::Result<TimestampSuffix> {
        self.by_age.rotate_file(basepath, newest_suffix, suffix)
    }

    fn parse(&self, suffix: &str) -> Option<TimestampSuffix> {
        self.by_age.parse(suffix)
    }

    fn too_old(&self, suffix: &TimestampSuffix, file_number: usize) -> bool {
        (self.max_backups > 0 && file_number >= self.max_backups)
            || self.by_age.too_old(suffix, file_number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zap_level_names_become_directives() {
        assert_eq!(directive("DEBUG"), "debug");
        assert_eq!(directive("fatal"), "error");
        assert_eq!(directive("warning"), "warn");
        assert_eq!(directive("info,h2=warn"), "info,h2=warn");
        assert!(filter("info").is_ok());
        assert!(filter("no such level!").is_err());
    }

    #[test]
    fn log_section_rejects_unknown_keys() {
        let mut dict = Dict::new();
        dict.insert("levle".to_owned(), Value::from("debug"));
        let err = LogSection::from_dict(dict, Path::new("cdc.toml")).unwrap_err();
        assert!(err.contains("levle") && err.contains("cdc.toml"), "{err}");
    }

    #[test]
    fn rotation_keeps_max_backups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cdc.log");
        let settings = LogSettings {
            level: None,
            file: Some(path.clone()),
            max_size_bytes: 100,
            max_days: 0,
            max_backups: 2,
            json: false,
        };
        let mut file = rotating_file(&path, &settings).unwrap();
        for _ in 0..5 {
            io::Write::write_all(&mut file, &[b'x'; 150]).unwrap();
        }
        io::Write::flush(&mut file).unwrap();
        let rotated: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.starts_with("cdc.log."))
            .collect();
        assert_eq!(rotated.len(), 2, "{rotated:?}");
    }
}
