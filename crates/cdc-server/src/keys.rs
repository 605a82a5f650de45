//! TiCDC's server configuration keys (`pkg/config/server_config.go`, `sorter.go`, `kvclient.go`,
//! `debug.go`, `db.go` in pingcap/tiflow) that this capture accepts without acting on them, the
//! keys whose values are Go durations, and the reading of a configuration file into what the
//! capture's `Config` deserializes: inert keys removed (one warning each), `[log]` taken out,
//! durations in Go's forms made canonical.

use std::path::{Path, PathBuf};

use figment::value::{Dict, Value};
use figment::{Figment, Metadata, Profile, Provider};

use crate::godur;

/// A key TiCDC's server reads that this capture accepts and ignores, with TiCDC's default.
pub(crate) struct InertKey {
    /// The dotted path (`sorter.sort-dir`).
    pub(crate) path: &'static str,
    /// TiCDC's default, as its documentation writes it.
    pub(crate) default: &'static str,
    /// Why it does nothing here.
    pub(crate) why: &'static str,
}

const SORTER: &str = "no sorter: changes go from the etcd watch to the sink";
const KV: &str = "no TiKV: the source is an etcd watch";
const DB: &str = "no on-disk sorter database";
const GO: &str = "a Go runtime setting";
const TIDB: &str = "no TiDB upstream";

/// Every key of TiCDC's server configuration that this capture accepts and ignores.
pub(crate) const INERT_KEYS: &[InertKey] = &[
    InertKey {
        path: "per-table-memory-quota",
        default: "0",
        why: "deprecated in TiCDC; a changefeed's memory-quota bounds memory here",
    },
    InertKey {
        path: "max-memory-percentage",
        default: "0",
        why: "deprecated in TiCDC",
    },
    InertKey {
        path: "gc-tuner-memory-threshold",
        default: "0",
        why: GO,
    },
    InertKey {
        path: "log.error-output",
        default: "\"stderr\"",
        why: "a zap setting; errors of the logger itself go to standard error",
    },
    InertKey {
        path: "sorter.sort-dir",
        default: "\"/tmp/sorter\"",
        why: SORTER,
    },
    InertKey {
        path: "sorter.cache-size-in-mb",
        default: "128",
        why: SORTER,
    },
    InertKey {
        path: "sorter.num-concurrent-worker",
        default: "4",
        why: SORTER,
    },
    InertKey {
        path: "sorter.chunk-size-limit",
        default: "134217728",
        why: SORTER,
    },
    InertKey {
        path: "sorter.max-memory-percentage",
        default: "10",
        why: SORTER,
    },
    InertKey {
        path: "sorter.max-memory-consumption",
        default: "17179869184",
        why: SORTER,
    },
    InertKey {
        path: "sorter.num-workerpool-goroutine",
        default: "16",
        why: SORTER,
    },
    InertKey {
        path: "kv-client.enable-multiplexing",
        default: "true",
        why: KV,
    },
    InertKey {
        path: "kv-client.worker-concurrent",
        default: "8",
        why: KV,
    },
    InertKey {
        path: "kv-client.grpc-stream-concurrent",
        default: "1",
        why: KV,
    },
    InertKey {
        path: "kv-client.frontier-concurrent",
        default: "8",
        why: KV,
    },
    InertKey {
        path: "kv-client.worker-pool-size",
        default: "0",
        why: KV,
    },
    InertKey {
        path: "kv-client.region-scan-limit",
        default: "40",
        why: KV,
    },
    InertKey {
        path: "kv-client.region-retry-duration",
        default: "\"1m\"",
        why: KV,
    },
    InertKey {
        path: "kv-client.advance-interval-in-ms",
        default: "300",
        why: KV,
    },
    InertKey {
        path: "debug.enable-pull-based-sink",
        default: "true",
        why: SORTER,
    },
    InertKey {
        path: "debug.enable-db-sorter",
        default: "true",
        why: DB,
    },
    InertKey {
        path: "debug.enable-new-scheduler",
        default: "true",
        why: "the two-phase scheduler is the only one",
    },
    InertKey {
        path: "debug.enable-new-sink",
        default: "true",
        why: "one sink implementation",
    },
    InertKey {
        path: "debug.enable-kv-connect-backoff",
        default: "false",
        why: KV,
    },
    InertKey {
        path: "debug.table-actor.event-batch-size",
        default: "32",
        why: TIDB,
    },
    InertKey {
        path: "debug.db.count",
        default: "8",
        why: DB,
    },
    InertKey {
        path: "debug.db.concurrency",
        default: "128",
        why: DB,
    },
    InertKey {
        path: "debug.db.max-open-files",
        default: "10000",
        why: DB,
    },
    InertKey {
        path: "debug.db.block-size",
        default: "65536",
        why: DB,
    },
    InertKey {
        path: "debug.db.block-cache-size",
        default: "0",
        why: DB,
    },
    InertKey {
        path: "debug.db.writer-buffer-size",
        default: "8388608",
        why: DB,
    },
    InertKey {
        path: "debug.db.compression",
        default: "\"snappy\"",
        why: DB,
    },
    InertKey {
        path: "debug.db.target-file-size-base",
        default: "8388608",
        why: DB,
    },
    InertKey {
        path: "debug.db.write-l0-slowdown-trigger",
        default: "2147483647",
        why: DB,
    },
    InertKey {
        path: "debug.db.write-l0-pause-trigger",
        default: "2147483647",
        why: DB,
    },
    InertKey {
        path: "debug.db.compaction-l0-trigger",
        default: "160",
        why: DB,
    },
    InertKey {
        path: "debug.db.compaction-deletion-threshold",
        default: "10485760",
        why: DB,
    },
    InertKey {
        path: "debug.db.compaction-period",
        default: "1800",
        why: DB,
    },
    InertKey {
        path: "debug.db.iterator-max-alive-duration",
        default: "10000",
        why: DB,
    },
    InertKey {
        path: "debug.db.iterator-slow-read-duration",
        default: "256",
        why: DB,
    },
    InertKey {
        path: "debug.scheduler.heartbeat-tick",
        default: "2",
        why: "the scheduler's own defaults apply",
    },
    InertKey {
        path: "debug.scheduler.max-task-concurrency",
        default: "10",
        why: "the scheduler's own defaults apply",
    },
    InertKey {
        path: "debug.scheduler.check-balance-interval",
        default: "\"1m\"",
        why: "the scheduler's own defaults apply",
    },
    InertKey {
        path: "debug.scheduler.add-table-batch-size",
        default: "50",
        why: "the scheduler's own defaults apply",
    },
    InertKey {
        path: "debug.scheduler.enable-table-across-nodes",
        default: "false",
        why: "spans are always split by the changefeed's configuration",
    },
    InertKey {
        path: "debug.scheduler.region-threshold",
        default: "100000",
        why: TIDB,
    },
    InertKey {
        path: "debug.scheduler.region-per-span",
        default: "50000",
        why: TIDB,
    },
    InertKey {
        path: "debug.scheduler.write-key-threshold",
        default: "0",
        why: TIDB,
    },
    InertKey {
        path: "debug.puller.enable-resolved-ts-stuck-detection",
        default: "false",
        why: KV,
    },
    InertKey {
        path: "debug.puller.resolved-ts-stuck-interval",
        default: "\"5m\"",
        why: KV,
    },
];

/// The keys of the capture's `Config` whose values are durations, in Go's forms in TiCDC's
/// files (strings such as `"50ms"`, or integers of nanoseconds).
pub(crate) const DURATION_KEYS: &[&str] = &[
    "owner-flush-interval",
    "processor-flush-interval",
    "debug.messages.client-max-batch-interval",
    "debug.messages.server-ack-interval",
    "debug.messages.keep-alive-time",
    "debug.messages.keep-alive-timeout",
];

/// The `[log]` section's keys that act, with their defaults (TiCDC's `LogConfig` and the
/// `level` and `file.filename` of `pingcap/log`'s own configuration).
pub(crate) const LOG_KEYS: &[(&str, &str, &str)] = &[
    (
        "log.level",
        "\"\"",
        "the log level when neither --log-level nor log-level is given",
    ),
    (
        "log.file.filename",
        "\"\"",
        "the log file when neither --log-file nor log-file is given",
    ),
    (
        "log.file.max-size",
        "300",
        "rotate the log file when it passes this many MiB",
    ),
    (
        "log.file.max-days",
        "0",
        "delete rotated files older than this many days (0: keep)",
    ),
    (
        "log.file.max-backups",
        "0",
        "keep at most this many rotated files (0: keep all)",
    ),
];

/// A configuration file as read: what the capture's `Config` deserializes, the `[log]` table,
/// and one warning per inert key found.
pub(crate) struct ServerFile {
    pub(crate) path: PathBuf,
    pub(crate) dict: Dict,
    pub(crate) log: Dict,
    pub(crate) warnings: Vec<String>,
}

impl ServerFile {
    /// Reads `path` (TOML); the error names the file.
    pub(crate) fn read(path: &Path) -> Result<ServerFile, String> {
        let dict: Dict = Figment::from(
            <figment::providers::Toml as figment::providers::Format>::file_exact(path),
        )
        .extract()
        .map_err(|err| {
            err.into_iter()
                .map(|error| error.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        // Fresh tags, so that errors of the merged figment name this file as the source.
        let mut dict = match Value::serialize(&dict) {
            Ok(Value::Dict(_, dict)) => dict,
            _ => return Err(format!("{} is not a TOML table", path.display())),
        };
        let mut warnings = Vec::new();
        for key in INERT_KEYS {
            if remove_path(&mut dict, key.path).is_some() {
                warnings.push(format!(
                    "configuration key {} in {} has no effect: {}",
                    key.path,
                    path.display(),
                    key.why
                ));
            }
        }
        let log = match dict.remove("log") {
            None => Dict::new(),
            Some(Value::Dict(_, log)) => log,
            Some(_) => return Err(format!("log in {} must be a table", path.display())),
        };
        for key in DURATION_KEYS {
            if let Some(value) = get_path_mut(&mut dict, key) {
                *value = go_duration_value(value)
                    .map_err(|message| format!("{key} in {}: {message}", path.display()))?;
            }
        }
        drop_inert_tables(&mut dict, "", &["sorter", "kv-client"], path)?;
        if let Some(Value::Dict(_, debug)) = dict.get_mut("debug") {
            drop_inert_tables(
                debug,
                "debug.",
                &["db", "scheduler", "puller", "table-actor"],
                path,
            )?;
        }
        Ok(ServerFile {
            path: path.to_owned(),
            dict,
            log,
            warnings,
        })
    }
}

impl Provider for ServerFile {
    fn metadata(&self) -> Metadata {
        Metadata::from("TOML file", self.path.as_path())
    }

    fn data(&self) -> Result<figment::value::Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

/// A Go duration (a string, or an integer of nanoseconds) as a canonical duration string.
fn go_duration_value(value: &Value) -> Result<Value, String> {
    let duration = match value {
        Value::String(_, text) => godur::parse(text)?,
        Value::Num(_, number) => {
            let nanos = number
                .to_i128()
                .and_then(|nanos| u64::try_from(nanos).ok())
                .or_else(|| number.to_u128().and_then(|nanos| u64::try_from(nanos).ok()))
                .ok_or_else(|| {
                    "a duration in nanoseconds must be a non-negative integer".to_owned()
                })?;
            std::time::Duration::from_nanos(nanos)
        }
        _ => return Err("a duration must be a string such as \"50ms\" or nanoseconds".to_owned()),
    };
    Ok(Value::from(godur::canonical(duration)))
}

fn get_path_mut<'a>(dict: &'a mut Dict, path: &str) -> Option<&'a mut Value> {
    let (head, tail) = match path.split_once('.') {
        Some((head, tail)) => (head, Some(tail)),
        None => (path, None),
    };
    let value = dict.get_mut(head)?;
    match (tail, value) {
        (None, value) => Some(value),
        (Some(tail), Value::Dict(_, inner)) => get_path_mut(inner, tail),
        (Some(_), _) => None,
    }
}

fn remove_path(dict: &mut Dict, path: &str) -> Option<Value> {
    match path.split_once('.') {
        None => dict.remove(path),
        Some((head, tail)) => match dict.get_mut(head)? {
            Value::Dict(_, inner) => remove_path(inner, tail),
            _ => None,
        },
    }
}

/// Removes the tables named `names`, whose keys are all inert: a key left in one once the
/// inert keys are gone is one TiCDC does not know either, an error naming it.
fn drop_inert_tables(
    dict: &mut Dict,
    prefix: &str,
    names: &[&str],
    file: &Path,
) -> Result<(), String> {
    for name in names {
        match dict.remove(*name) {
            None => {}
            Some(Value::Dict(_, inner)) => {
                if let Some(key) = inner.keys().next() {
                    return Err(format!(
                        "unknown configuration key {prefix}{name}.{key} in {}",
                        file.display()
                    ));
                }
            }
            Some(_) => {
                return Err(format!(
                    "{prefix}{name} in {} must be a table",
                    file.display()
                ));
            }
        }
    }
    Ok(())
}
