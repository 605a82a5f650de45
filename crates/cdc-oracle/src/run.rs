//! The run directory's files, as the runner writes them (the format is in the crate's docs).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// The writer's log.
pub const WRITER_FILE: &str = "writer.jsonl";
/// The changefeeds of the run.
pub const CHANGEFEEDS_FILE: &str = "changefeeds.json";
/// Every watch event under the cluster's metadata prefix.
pub const METADATA_FILE: &str = "metadata.jsonl";
/// The file sinks' sizes, sampled after each checkpoint advance.
pub const SINK_SAMPLES_FILE: &str = "sink_samples.jsonl";
/// The processes the runner killed, once reaped.
pub const DEATHS_FILE: &str = "deaths.jsonl";
/// The faults the runner injected.
pub const FAULTS_FILE: &str = "faults.jsonl";

/// What an upstream write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// A put.
    Put,
    /// A delete.
    Delete,
}

/// One line of `writer.jsonl`: an upstream write and what etcd answered.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct WriterOp {
    /// Put or delete.
    pub op: Op,
    /// The key (ASCII).
    pub key: String,
    /// The value of a put.
    #[serde(default)]
    pub value: Option<String>,
    /// The revision of the answer's header (absent when the outcome is unknown).
    #[serde(default)]
    pub revision: Option<u64>,
    /// The outcome is unknown (a timeout, a cut connection): the change is not required.
    #[serde(default)]
    pub ambiguous: bool,
    /// For a delete, the number of keys it deleted: a delete of an absent key makes no change
    /// (and its header revision is another write's), so it is required only when this is
    /// absent or positive.
    #[serde(default)]
    pub deleted: Option<u64>,
}

impl WriterOp {
    /// The revision at which this write certainly changed its key, if it did.
    pub fn certain_revision(&self) -> Option<u64> {
        if self.ambiguous || (self.op == Op::Delete && self.deleted == Some(0)) {
            return None;
        }
        self.revision
    }
}

/// Where a changefeed writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// `file://`: JSON Lines files under `dir`.
    File,
    /// `etcd://`: a mirror in another etcd under `sink_prefix`.
    Etcd,
}

/// One entry of `changefeeds.json`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Changefeed {
    /// The changefeed ID (without namespace: the default one).
    pub id: String,
    /// The upstream key prefixes it replicates.
    pub prefixes: Vec<String>,
    /// The sink's kind.
    pub sink: SinkKind,
    /// The file sink's directory (the sink URI's path; the files may be in subdirectories),
    /// relative to the run directory unless absolute.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// The mirror etcd's endpoints.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// The mirror's prefix, which replaces each of `prefixes` (the sink URI's path).
    #[serde(default)]
    pub sink_prefix: Option<String>,
    /// The revision the changefeed started at: it replicates the changes after it.
    pub start_revision: u64,
}

impl Changefeed {
    /// Whether `key` is one of this changefeed's.
    pub fn covers(&self, key: &str) -> bool {
        self.prefixes.iter().any(|prefix| key.starts_with(prefix))
    }

    /// Whether the changefeed must deliver a change of `key` at `revision`.
    pub fn requires(&self, key: &str, revision: u64) -> bool {
        revision > self.start_revision && self.covers(key)
    }

    /// Whether `name` (a changefeed in a span log or a sample: `<namespace>/<id>` or `<id>`)
    /// names this changefeed.
    pub fn is_named(&self, name: &str) -> bool {
        name == self.id || name.strip_prefix("default/") == Some(self.id.as_str())
    }
}

/// The kind of a watch event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// A put.
    Put,
    /// A delete.
    Delete,
}

/// One line of `metadata.jsonl`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetadataEvent {
    /// Put or delete.
    pub kind: EventType,
    /// The key.
    pub key: String,
    /// The value of a put (empty for a delete).
    pub value: Vec<u8>,
    /// The revision of the write.
    pub mod_revision: u64,
    /// The key's create revision (0 for a delete).
    pub create_revision: u64,
    /// When the runner received the event (`CLOCK_MONOTONIC`).
    pub mono_ns: u64,
}

#[derive(Deserialize)]
struct MetadataLine {
    #[serde(rename = "type")]
    kind: EventType,
    key: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    value_base64: Option<String>,
    mod_revision: u64,
    #[serde(default)]
    create_revision: u64,
    #[serde(default)]
    mono_ns: u64,
}

/// One line of `sink_samples.jsonl`: a file sink's files and sizes, read after the runner saw
/// the changefeed's checkpoint reach `checkpoint`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct SinkSample {
    /// The changefeed.
    pub changefeed: String,
    /// The checkpoint seen.
    pub checkpoint: u64,
    /// When the checkpoint was seen.
    pub mono_ns: u64,
    /// Each file's path relative to the changefeed's `dir`, and its size then.
    pub files: BTreeMap<String, u64>,
}

/// One line of `deaths.jsonl`: a process killed with SIGKILL and reaped.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Death {
    /// The capture's number `<n>` (its files are `capture-<n>.*`).
    pub capture: String,
    /// The process ID.
    pub pid: u64,
    /// When the runner had reaped it (`CLOCK_MONOTONIC`): it was dead by then.
    pub died_at_mono_ns: u64,
}

/// One line of `faults.jsonl`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Fault {
    /// What was done.
    pub fault: String,
    /// To what.
    pub target: String,
    /// When it started (`CLOCK_MONOTONIC`).
    pub start_mono_ns: u64,
    /// When it ended.
    pub end_mono_ns: u64,
}

/// Reads a file of JSON lines; `None` when the file does not exist. A last line without its
/// newline is ignored (a write the process did not finish); any other line that does not parse
/// is an error.
fn read_lines<T: DeserializeOwned>(path: &Path) -> Result<Option<Vec<T>>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let mut items = Vec::new();
    for (index, line) in complete_lines(&text).enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let item = serde_json::from_str(line)
            .map_err(|err| Error::malformed(path, index + 1, err.to_string()))?;
        items.push(item);
    }
    Ok(Some(items))
}

/// The lines of `text` that end with a newline.
pub(crate) fn complete_lines(text: &str) -> impl Iterator<Item = &str> {
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete.split('\n')
}

fn required<T>(path: &Path, items: Option<Vec<T>>) -> Result<Vec<T>> {
    items.ok_or_else(|| Error::Io {
        path: path.to_owned(),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })
}

/// The writer's log (required).
pub fn writer_ops(run_dir: &Path) -> Result<Vec<WriterOp>> {
    let path = run_dir.join(WRITER_FILE);
    required(&path, read_lines(&path)?)
}

/// The changefeeds (required), with their directories made absolute.
pub fn changefeeds(run_dir: &Path) -> Result<Vec<Changefeed>> {
    let path = run_dir.join(CHANGEFEEDS_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
        path: path.clone(),
        source,
    })?;
    let mut changefeeds: Vec<Changefeed> =
        serde_json::from_str(&text).map_err(|err| Error::malformed(&path, 0, err.to_string()))?;
    for changefeed in &mut changefeeds {
        if let Some(dir) = &changefeed.dir {
            changefeed.dir = Some(run_dir.join(dir));
        }
        let valid = match changefeed.sink {
            SinkKind::File => changefeed.dir.is_some(),
            SinkKind::Etcd => changefeed.sink_prefix.is_some() && !changefeed.endpoints.is_empty(),
        };
        if !valid {
            return Err(Error::malformed(
                &path,
                0,
                format!(
                    "changefeed {} lacks its sink's `dir` or `endpoints` and `sink_prefix`",
                    changefeed.id
                ),
            ));
        }
    }
    Ok(changefeeds)
}

/// The metadata watch events (required), in the order recorded.
pub fn metadata_events(run_dir: &Path) -> Result<Vec<MetadataEvent>> {
    let path = run_dir.join(METADATA_FILE);
    let lines: Vec<MetadataLine> = required(&path, read_lines(&path)?)?;
    lines
        .into_iter()
        .enumerate()
        .map(|(index, line)| {
            let value = match (line.value, line.value_base64) {
                (_, Some(encoded)) => base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .map_err(|err| Error::malformed(&path, index + 1, err.to_string()))?,
                (Some(value), None) => value.into_bytes(),
                (None, None) => Vec::new(),
            };
            Ok(MetadataEvent {
                kind: line.kind,
                key: line.key,
                value,
                mod_revision: line.mod_revision,
                create_revision: line.create_revision,
                mono_ns: line.mono_ns,
            })
        })
        .collect()
}

/// The sink samples (none when the file is absent).
pub fn sink_samples(run_dir: &Path) -> Result<Vec<SinkSample>> {
    Ok(read_lines(&run_dir.join(SINK_SAMPLES_FILE))?.unwrap_or_default())
}

/// The deaths (none when the file is absent).
pub fn deaths(run_dir: &Path) -> Result<Vec<Death>> {
    Ok(read_lines(&run_dir.join(DEATHS_FILE))?.unwrap_or_default())
}

/// The faults (none when the file is absent).
pub fn faults(run_dir: &Path) -> Result<Vec<Fault>> {
    Ok(read_lines(&run_dir.join(FAULTS_FILE))?.unwrap_or_default())
}

/// The captures' files: `<n>` to the path of `capture-<n><suffix>`, for `suffix` `.log` (the
/// JSON log) or `.span.log` (the span log).
pub fn capture_files(run_dir: &Path, suffix: &str) -> Result<BTreeMap<String, PathBuf>> {
    let entries = std::fs::read_dir(run_dir).map_err(|source| Error::Io {
        path: run_dir.to_owned(),
        source,
    })?;
    let mut files = BTreeMap::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::Io {
            path: run_dir.to_owned(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(number) = name
            .strip_prefix("capture-")
            .and_then(|rest| rest.strip_suffix(suffix))
        else {
            continue;
        };
        // `capture-1.span.log` also ends with `.log`.
        if number.contains('.') {
            continue;
        }
        files.insert(number.to_owned(), entry.path());
    }
    Ok(files)
}

/// Reads a whole file.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}
