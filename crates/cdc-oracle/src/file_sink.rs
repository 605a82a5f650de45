//! Reading a file sink's directory: every `<span>.<sequence>.jsonl` file under it, each line
//! with the byte offset where it ends (a sample's size then says which lines existed).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::run::{Op, read_text};

/// One change as the file sink wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkLine {
    /// The key (`base64:<...>` when the sink wrote `key_base64`).
    pub key: String,
    /// The change's revision.
    pub revision: u64,
    /// Put or delete.
    pub op: Op,
    /// The offset just past the line's newline.
    pub end: u64,
}

/// One file of a span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkFile {
    /// The path relative to the sink's directory, with `/` separators.
    pub path: String,
    /// The span's name (the file name up to `.<sequence>.jsonl`).
    pub span: String,
    /// The sequence number.
    pub sequence: u64,
    /// The complete lines, in file order (a last line without newline was not finished).
    pub lines: Vec<SinkLine>,
}

#[derive(Deserialize)]
struct Line {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    key_base64: Option<String>,
    revision: u64,
    op: Op,
}

/// Every file of the sink under `dir` (recursively), sorted by span, then sequence. A missing
/// directory is an empty sink.
pub fn read_sink(dir: &Path) -> Result<Vec<SinkFile>> {
    let mut files = Vec::new();
    let mut pending: Vec<PathBuf> = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        let entries = match std::fs::read_dir(&current) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && current == dir => {
                return Ok(Vec::new());
            }
            Err(source) => {
                return Err(Error::Io {
                    path: current,
                    source,
                });
            }
        };
        for entry in entries {
            let entry = entry.map_err(|source| Error::Io {
                path: current.clone(),
                source,
            })?;
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((span, sequence)) = parse_name(&name) else {
                continue;
            };
            let relative = path
                .strip_prefix(dir)
                .unwrap_or(&path)
                .components()
                .map(|part| part.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            files.push(SinkFile {
                lines: read_file(&path)?,
                path: relative,
                span: span.to_owned(),
                sequence,
            });
        }
    }
    files.sort_by(|a, b| (&a.span, a.sequence, &a.path).cmp(&(&b.span, b.sequence, &b.path)));
    Ok(files)
}

/// `<span>.<sequence>.jsonl` into its span and sequence.
fn parse_name(name: &str) -> Option<(&str, u64)> {
    let stem = name.strip_suffix(".jsonl")?;
    let (span, sequence) = stem.rsplit_once('.')?;
    Some((span, sequence.parse().ok()?))
}

fn read_file(path: &Path) -> Result<Vec<SinkLine>> {
    let text = read_text(path)?;
    let mut lines = Vec::new();
    let mut end = 0_u64;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        if !line.ends_with('\n') {
            // A write the process did not finish: never flushed, so never covered.
            break;
        }
        end += line.len() as u64;
        let parsed: Line = serde_json::from_str(line)
            .map_err(|err| Error::malformed(path, index + 1, err.to_string()))?;
        let key = match (parsed.key, parsed.key_base64) {
            (Some(key), _) => key,
            (None, Some(encoded)) => {
                base64::engine::general_purpose::STANDARD
                    .decode(&encoded)
                    .map_err(|err| Error::malformed(path, index + 1, err.to_string()))?;
                format!("base64:{encoded}")
            }
            (None, None) => return Err(Error::malformed(path, index + 1, "no key")),
        };
        lines.push(SinkLine {
            key,
            revision: parsed.revision,
            op: parsed.op,
            end,
        });
    }
    Ok(lines)
}
