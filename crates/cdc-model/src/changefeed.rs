//! [`ChangeFeedInfo`] and [`ChangeFeedStatus`], the values of a changefeed's info and
//! status keys, with their enums and [`RunningError`].

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::go_time::GoTime;
use crate::ids::{ChangeFeedId, UpstreamId};
use crate::json::{null_as_default, serde_object_only};
use crate::tso::compose_ts;

/// The RFC codes of errors that mean the data a changefeed needs has been (or will be)
/// garbage-collected upstream, so resuming is pointless and the changefeed fails at once.
const GC_FAST_FAIL_CODES: [&str; 3] = [
    "CDC:ErrGCTTLExceeded",
    "CDC:ErrSnapshotLostByGC",
    "CDC:ErrStartTsBeforeGC",
];

/// Whether `code` is one of the "GC fast-fail" error codes.
pub fn is_gc_fast_fail_code(code: &str) -> bool {
    GC_FAST_FAIL_CODES.contains(&code)
}

/// An error or warning reported by a processor or the owner:
/// `{"time", "addr", "code", "message"}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, remote = "Self")]
pub struct RunningError {
    /// When it happened; the zero time if missing.
    pub time: GoTime,
    /// The address of the capture that reported it.
    #[serde(deserialize_with = "null_as_default")]
    pub addr: String,
    /// The RFC error code, such as `CDC:ErrSinkURIInvalid`.
    #[serde(deserialize_with = "null_as_default")]
    pub code: String,
    /// The error message.
    #[serde(deserialize_with = "null_as_default")]
    pub message: String,
}

serde_object_only!(RunningError);

impl RunningError {
    /// Whether the code is a "GC fast-fail" code (see [`is_gc_fast_fail_code`]).
    pub fn is_gc_fast_fail(&self) -> bool {
        is_gc_fast_fail_code(&self.code)
    }
}

/// An administrative job on a changefeed, stored as a JSON integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AdminJobType {
    /// No job (`AdminNone`, displayed `noop`), 0.
    #[default]
    Noop = 0,
    /// Stop the changefeed, 1.
    Stop = 1,
    /// Resume the changefeed, 2.
    Resume = 2,
    /// Remove the changefeed, 3.
    Remove = 3,
    /// The changefeed reached its target, 4.
    Finish = 4,
}

impl AdminJobType {
    /// The JSON integer.
    pub fn as_i64(self) -> i64 {
        self as i64
    }

    /// The job for a JSON integer; `None` for integers TiCDC does not define.
    pub fn from_i64(value: i64) -> Option<Self> {
        Some(match value {
            0 => AdminJobType::Noop,
            1 => AdminJobType::Stop,
            2 => AdminJobType::Resume,
            3 => AdminJobType::Remove,
            4 => AdminJobType::Finish,
            _ => return None,
        })
    }

    /// Whether the changefeed does not run in this state: stop, remove or finish.
    pub fn is_stop_state(self) -> bool {
        match self {
            AdminJobType::Stop | AdminJobType::Remove | AdminJobType::Finish => true,
            AdminJobType::Noop | AdminJobType::Resume => false,
        }
    }
}

impl fmt::Display for AdminJobType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AdminJobType::Noop => "noop",
            AdminJobType::Stop => "stop",
            AdminJobType::Resume => "resume",
            AdminJobType::Remove => "remove",
            AdminJobType::Finish => "finish",
        })
    }
}

impl Serialize for AdminJobType {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_i64(self.as_i64())
    }
}

impl<'de> Deserialize<'de> for AdminJobType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct AdminJobTypeVisitor;
        impl de::Visitor<'_> for AdminJobTypeVisitor {
            type Value = AdminJobType;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an admin job type integer 0..=4")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<AdminJobType, E> {
                AdminJobType::from_i64(v)
                    .ok_or_else(|| E::custom(format!("unknown admin job type {v}")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<AdminJobType, E> {
                i64::try_from(v)
                    .ok()
                    .and_then(AdminJobType::from_i64)
                    .ok_or_else(|| E::custom(format!("unknown admin job type {v}")))
            }
        }
        deserializer.deserialize_i64(AdminJobTypeVisitor)
    }
}

/// The state of a changefeed, stored as a JSON string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum FeedState {
    /// `""`: not initialised yet; exists only in memory.
    #[default]
    Uninitialized,
    /// `normal`: replicating.
    Normal,
    /// `pending`: waiting to be retried.
    Pending,
    /// `failed`: stopped by an error that retrying cannot fix.
    Failed,
    /// `stopped`: stopped by the user.
    Stopped,
    /// `removed`: removed by the user.
    Removed,
    /// `finished`: reached its target-ts.
    Finished,
    /// `warning`: replicating, but an error is being retried.
    Warning,
    /// A string this version does not know, kept as written so a rewrite loses nothing.
    Unknown(String),
}

impl FeedState {
    /// The JSON string.
    pub fn as_str(&self) -> &str {
        match self {
            FeedState::Uninitialized => "",
            FeedState::Normal => "normal",
            FeedState::Pending => "pending",
            FeedState::Failed => "failed",
            FeedState::Stopped => "stopped",
            FeedState::Removed => "removed",
            FeedState::Finished => "finished",
            FeedState::Warning => "warning",
            FeedState::Unknown(state) => state,
        }
    }

    /// The state for a JSON string.
    pub fn parse(state: &str) -> Self {
        match state {
            "" => FeedState::Uninitialized,
            "normal" => FeedState::Normal,
            "pending" => FeedState::Pending,
            "failed" => FeedState::Failed,
            "stopped" => FeedState::Stopped,
            "removed" => FeedState::Removed,
            "finished" => FeedState::Finished,
            "warning" => FeedState::Warning,
            other => FeedState::Unknown(other.to_owned()),
        }
    }

    /// The integer exported as a metric: normal 0, pending 1, failed 2, stopped 3,
    /// finished 4, removed 5, warning 6, uninitialised 7, anything else -1.
    pub fn metric_value(&self) -> i64 {
        match self {
            FeedState::Normal => 0,
            FeedState::Pending => 1,
            FeedState::Failed => 2,
            FeedState::Stopped => 3,
            FeedState::Finished => 4,
            FeedState::Removed => 5,
            FeedState::Warning => 6,
            FeedState::Uninitialized => 7,
            FeedState::Unknown(_) => -1,
        }
    }

    /// The list filter of the HTTP API: `"all"` matches every state; `""` matches normal,
    /// stopped, failed, warning and pending; any other value matches that exact state.
    pub fn is_needed(&self, filter: &str) -> bool {
        match filter {
            "all" => true,
            "" => matches!(
                self,
                FeedState::Normal
                    | FeedState::Stopped
                    | FeedState::Failed
                    | FeedState::Warning
                    | FeedState::Pending
            ),
            exact => self.as_str() == exact,
        }
    }
}

impl fmt::Display for FeedState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for FeedState {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for FeedState {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct FeedStateVisitor;
        impl de::Visitor<'_> for FeedStateVisitor {
            type Value = FeedState;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a changefeed state string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<FeedState, E> {
                Ok(FeedState::parse(v))
            }
        }
        deserializer.deserialize_str(FeedStateVisitor)
    }
}

/// The value of `.../changefeed/status/<id>`, written by the owner.
///
/// The legacy `resolved-ts` field of old values is ignored.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, remote = "Self")]
pub struct ChangeFeedStatus {
    /// Everything up to this TSO is durable in the sink.
    #[serde(rename = "checkpoint-ts", deserialize_with = "null_as_default")]
    pub checkpoint_ts: u64,
    /// The smallest barrier TSO over the changefeed's tables.
    #[serde(rename = "min-table-barrier-ts", deserialize_with = "null_as_default")]
    pub min_table_barrier_ts: u64,
    /// The pending administrative job.
    #[serde(rename = "admin-job-type", deserialize_with = "null_as_default")]
    pub admin_job_type: AdminJobType,
}

serde_object_only!(ChangeFeedStatus);

/// The value of `.../changefeed/info/<id>`: what the user asked for, plus the state.
///
/// `config` (TiCDC's ReplicaConfig) is kept as opaque JSON, and top-level fields this
/// version does not know are kept in `extra` and written back after the known ones, so a
/// read-modify-write loses nothing. Do not put known keys into `extra`: they would be
/// written twice.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ChangeFeedInfo {
    /// The PD cluster ID of the upstream.
    #[serde(rename = "upstream-id", deserialize_with = "null_as_default")]
    pub upstream_id: UpstreamId,
    /// The namespace of the changefeed.
    #[serde(deserialize_with = "null_as_default")]
    pub namespace: String,
    /// The ID of the changefeed within its namespace.
    #[serde(rename = "changefeed-id", deserialize_with = "null_as_default")]
    pub changefeed_id: String,
    /// Where changes go. May contain credentials: mask it in logs.
    #[serde(rename = "sink-uri", deserialize_with = "null_as_default")]
    pub sink_uri: String,
    /// When the changefeed was created.
    #[serde(rename = "create-time")]
    pub create_time: GoTime,
    /// The TSO to start from; 0 means "use create-time".
    #[serde(rename = "start-ts", deserialize_with = "null_as_default")]
    pub start_ts: u64,
    /// The TSO to stop at; 0 means unbounded.
    #[serde(rename = "target-ts", deserialize_with = "null_as_default")]
    pub target_ts: u64,
    /// The pending administrative job.
    #[serde(rename = "admin-job-type", deserialize_with = "null_as_default")]
    pub admin_job_type: AdminJobType,
    /// The sort engine: `memory`, `file` or `unified`.
    #[serde(rename = "sort-engine", deserialize_with = "null_as_default")]
    pub sort_engine: String,
    /// Deprecated; kept for compatibility.
    #[serde(rename = "sort-dir", deserialize_with = "null_as_default")]
    pub sort_dir: String,
    /// TiCDC's ReplicaConfig, opaque. `None` is JSON `null`.
    pub config: Option<Value>,
    /// The changefeed's state.
    #[serde(deserialize_with = "null_as_default")]
    pub state: FeedState,
    /// The error that stopped or is delaying the changefeed.
    pub error: Option<RunningError>,
    /// A warning about the changefeed.
    pub warning: Option<RunningError>,
    /// The version of the TiCDC that created the changefeed.
    #[serde(rename = "creator-version", deserialize_with = "null_as_default")]
    pub creator_version: String,
    /// Changes on every (re)start of the changefeed.
    #[serde(deserialize_with = "null_as_default")]
    pub epoch: u64,
    /// Top-level fields this version does not know, in their original order.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The sort engine `verify_and_complete` fills in when none is set.
const SORT_ENGINE_UNIFIED: &str = "unified";

impl ChangeFeedInfo {
    /// The changefeed's ID, from its `namespace` and `changefeed-id` fields.
    pub fn id(&self) -> ChangeFeedId {
        ChangeFeedId::new(self.namespace.clone(), self.changefeed_id.clone())
    }

    /// `start-ts` if set, otherwise the create-time as a TSO (`unix_ms << 18`).
    ///
    /// A create-time before 1970 (such as the zero time) counts as 0 ms; Go's result is
    /// undefined there (an overflowing `UnixNano`).
    pub fn start_ts(&self) -> u64 {
        if self.start_ts > 0 {
            return self.start_ts;
        }
        let unix_ms = u64::try_from(self.create_time.unix_millis()).unwrap_or(0);
        compose_ts(unix_ms, 0)
    }

    /// `target-ts` if set, otherwise `u64::MAX` (unbounded).
    pub fn target_ts(&self) -> u64 {
        if self.target_ts > 0 {
            self.target_ts
        } else {
            u64::MAX
        }
    }

    /// The status checkpoint if there is a status, otherwise [`Self::start_ts`].
    pub fn checkpoint_ts(&self, status: Option<&ChangeFeedStatus>) -> u64 {
        match status {
            Some(status) => status.checkpoint_ts,
            None => self.start_ts(),
        }
    }

    /// Whether the changefeed must hold back upstream GC: true for normal, stopped, pending
    /// and warning; for failed, true unless the error is a GC fast-fail one; false
    /// otherwise.
    ///
    /// A failed changefeed without an error (Go panics here) keeps blocking GC, which is
    /// the side that cannot lose data.
    pub fn need_block_gc(&self) -> bool {
        match &self.state {
            FeedState::Normal | FeedState::Stopped | FeedState::Pending | FeedState::Warning => {
                true
            }
            FeedState::Failed => !self
                .error
                .as_ref()
                .is_some_and(RunningError::is_gc_fast_fail),
            FeedState::Finished
            | FeedState::Removed
            | FeedState::Uninitialized
            | FeedState::Unknown(_) => false,
        }
    }

    /// Whether the changefeed is replicating: normal or warning.
    pub fn is_running(&self) -> bool {
        matches!(self.state, FeedState::Normal | FeedState::Warning)
    }

    /// Derives the state from the admin job for metadata written by old versions; changes
    /// nothing unless the state is normal.
    ///
    /// Admin none or resume with an error becomes failed (GC fast-fail error) or warning;
    /// stop becomes stopped, finish finished, remove removed. Gating on `creator-version`
    /// is the caller's decision.
    pub fn fix_state(&mut self) {
        if self.state != FeedState::Normal {
            return;
        }
        let fixed = match self.admin_job_type {
            AdminJobType::Noop | AdminJobType::Resume => match &self.error {
                Some(error) if error.is_gc_fast_fail() => FeedState::Failed,
                Some(_) => FeedState::Warning,
                None => return,
            },
            AdminJobType::Stop => FeedState::Stopped,
            AdminJobType::Finish => FeedState::Finished,
            AdminJobType::Remove => FeedState::Removed,
        };
        self.state = fixed;
    }

    /// Completes an info read from etcd: an empty sort engine becomes `unified`, and
    /// config sub-sections that are missing or `null` (filter, mounter, sink, consistent,
    /// scheduler, integrity, changefeed-error-stuck-duration, synced-status) get default
    /// values.
    ///
    /// The defaults follow TiCDC's ReplicaConfig defaults; nothing in this port reads
    /// them, they only keep the value readable by TiCDC tools. Unlike Go, this does not
    /// remove fields that the sink-URI scheme does not use. A `null` config (Go panics) is
    /// [`Error::NullConfig`]; a config that is not an object is [`Error::ConfigNotObject`].
    pub fn verify_and_complete(&mut self) -> Result<()> {
        let config = match self.config.as_mut() {
            None | Some(Value::Null) => {
                return Err(Error::NullConfig {
                    changefeed: self.id(),
                });
            }
            Some(Value::Object(config)) => config,
            Some(_) => {
                return Err(Error::ConfigNotObject {
                    changefeed: self.id(),
                });
            }
        };
        if self.sort_engine.is_empty() {
            SORT_ENGINE_UNIFIED.clone_into(&mut self.sort_engine);
        }
        for (section, default) in default_config_sections() {
            match config.get_mut(section) {
                Some(value) if !value.is_null() => {}
                Some(value) => *value = default,
                None => {
                    config.insert(section.to_owned(), default);
                }
            }
        }
        Ok(())
    }
}

/// The ReplicaConfig sub-sections `verify_and_complete` fills, with their defaults.
fn default_config_sections() -> [(&'static str, Value); 8] {
    use serde_json::json;
    [
        ("filter", json!({"rules": ["*.*"]})),
        ("mounter", json!({"worker-num": 16})),
        (
            "sink",
            json!({
                "csv": {
                    "delimiter": ",",
                    "quote": "\"",
                    "null": "\\N",
                    "include-commit-ts": false,
                    "binary-encoding-method": "base64"
                },
                "encoder-concurrency": 32,
                "terminator": "\r\n",
                "date-separator": "day",
                "enable-partition-separator": true,
                "enable-kafka-sink-v2": false,
                "only-output-updated-columns": false,
                "delete-only-output-handle-key-columns": false,
                "tidb-source-id": 1,
                "advance-timeout": 150
            }),
        ),
        (
            "consistent",
            json!({
                "level": "none",
                "max-log-size": 64,
                "flush-interval": 2000,
                "meta-flush-interval": 200,
                "encoding-worker-num": 16,
                "flush-worker-num": 8,
                "storage": "",
                "use-file-backend": false
            }),
        ),
        (
            "scheduler",
            json!({"enable-table-across-nodes": false, "region-threshold": 100_000, "write-key-threshold": 0}),
        ),
        (
            "integrity",
            json!({"integrity-check-level": "none", "corruption-handle-level": "warn"}),
        ),
        // 30 minutes, as integer nanoseconds (a Go `time.Duration`).
        (
            "changefeed-error-stuck-duration",
            json!(1_800_000_000_000_u64),
        ),
        (
            "synced-status",
            json!({"synced-check-interval": 300, "checkpoint-interval": 15}),
        ),
    ]
}

#[cfg(test)]
mod tests;
