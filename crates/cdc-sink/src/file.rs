//! [`FileSink`]: the changes of one span as JSON Lines files under `<dir>/<changefeed>/`.
//!
//! Files are named `<span>.<sequence>.jsonl` with a 20-digit sequence, so the files of a span
//! sort by name in the order they were written; a sink opened again (after a restart or a move)
//! continues after the largest sequence present, first cutting off the end of the previous file
//! a line that a failed write or a killed process left unfinished. One line per change:
//! `{"key": str, "value": str | null, "revision": u64, "op": "put" | "delete"}`, with
//! `key_base64` / `value_base64` (standard alphabet, padded) in place of `key` / `value` where the
//! bytes are not UTF-8. A file is rolled before a line would take it past `max-file-size`.
//! [`Sink::flush`] fsyncs the files written since the last flush, and the directory when a file
//! was created, before it returns.
//!
//! To rebuild the final state, read each span's files in name order and apply each line whose
//! revision is above the key's last applied revision (lines may repeat after a restart).

use std::path::{Path, PathBuf};

use cdc_model::ChangeEvent;
use serde_json::{Map, Value};
use tokio::fs::{File, OpenOptions};
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};
use crate::sink::Sink;
use crate::uri::FileSinkConfig;

/// The name of a span's file with sequence number `sequence`.
pub fn file_name(span: &str, sequence: u64) -> String {
    format!("{span}.{sequence:020}.jsonl")
}

/// The JSON line (without its newline) of one change.
pub fn json_line(event: &ChangeEvent) -> String {
    let mut object = Map::new();
    match std::str::from_utf8(&event.key) {
        Ok(key) => object.insert("key".to_owned(), Value::from(key)),
        Err(_) => object.insert("key_base64".to_owned(), Value::from(base64(&event.key))),
    };
    match &event.value {
        None => object.insert("value".to_owned(), Value::Null),
        Some(value) => match std::str::from_utf8(value) {
            Ok(value) => object.insert("value".to_owned(), Value::from(value)),
            Err(_) => object.insert("value_base64".to_owned(), Value::from(base64(value))),
        },
    };
    object.insert("revision".to_owned(), Value::from(event.revision));
    object.insert("op".to_owned(), Value::from(event.op.as_str()));
    Value::Object(object).to_string()
}

/// The `file://` sink of one span.
#[derive(Debug)]
pub struct FileSink {
    dir: PathBuf,
    span: String,
    max_file_size: u64,
    next_sequence: u64,
    /// The file being written, its path and size.
    current: Option<(File, PathBuf, u64)>,
    /// Files rolled since the last flush, synced at the next one.
    rolled: Vec<(File, PathBuf)>,
    /// A file was created since the last flush: the directory must be synced.
    dir_dirty: bool,
}

impl FileSink {
    /// Opens the sink of span `span` (a file-name-safe name, unique in its changefeed) of
    /// changefeed `changefeed` (its ID, a file-name-safe string).
    pub async fn open(config: &FileSinkConfig, changefeed: &str, span: &str) -> Result<FileSink> {
        let dir = config.dir.join(changefeed);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|source| io_error("create directory", &dir, source))?;
        let next_sequence = next_sequence(&dir, span).await?;
        if let Some(last) = next_sequence.checked_sub(1) {
            drop_torn_line(&dir.join(file_name(span, last))).await?;
        }
        Ok(FileSink {
            dir,
            span: span.to_owned(),
            max_file_size: config.max_file_size,
            next_sequence,
            current: None,
            rolled: Vec::new(),
            dir_dirty: false,
        })
    }

    /// Starts a new file.
    async fn roll(&mut self) -> Result<()> {
        if let Some((file, path, _)) = self.current.take() {
            self.rolled.push((file, path));
        }
        let path = self.dir.join(file_name(&self.span, self.next_sequence));
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .await
            .map_err(|source| io_error("create file", &path, source))?;
        self.next_sequence += 1;
        self.dir_dirty = true;
        self.current = Some((file, path, 0));
        Ok(())
    }
}

impl Sink for FileSink {
    async fn write(&mut self, events: &[ChangeEvent]) -> Result<()> {
        let mut buffer = Vec::new();
        for event in events {
            let mut line = json_line(event).into_bytes();
            line.push(b'\n');
            let size = self.current.as_ref().map(|(_, _, size)| *size);
            let must_roll = match size {
                None => true,
                Some(size) => {
                    size + (buffer.len() + line.len()) as u64 > self.max_file_size
                        && size + buffer.len() as u64 > 0
                }
            };
            if must_roll {
                if let Some((file, path, size)) = self.current.as_mut() {
                    file.write_all(&buffer)
                        .await
                        .map_err(|source| io_error("write", path, source))?;
                    *size += buffer.len() as u64;
                }
                buffer.clear();
                self.roll().await?;
            }
            buffer.extend_from_slice(&line);
        }
        if let Some((file, path, size)) = self.current.as_mut() {
            file.write_all(&buffer)
                .await
                .map_err(|source| io_error("write", path, source))?;
            *size += buffer.len() as u64;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        for (mut file, path) in self.rolled.drain(..) {
            file.flush()
                .await
                .map_err(|source| io_error("write", &path, source))?;
            file.sync_all()
                .await
                .map_err(|source| io_error("fsync", &path, source))?;
        }
        if let Some((file, path, _)) = self.current.as_mut() {
            file.flush()
                .await
                .map_err(|source| io_error("write", path, source))?;
            file.sync_all()
                .await
                .map_err(|source| io_error("fsync", path, source))?;
        }
        if self.dir_dirty {
            let dir = File::open(&self.dir)
                .await
                .map_err(|source| io_error("open directory", &self.dir, source))?;
            dir.sync_all()
                .await
                .map_err(|source| io_error("fsync directory", &self.dir, source))?;
            self.dir_dirty = false;
        }
        Ok(())
    }

    async fn close(mut self) -> Result<()> {
        if let Some((mut file, path, _)) = self.current.take() {
            file.flush()
                .await
                .map_err(|source| io_error("write", &path, source))?;
        }
        Ok(())
    }
}

/// Cuts a line the span's previous sink did not finish off the end of its last file, so that
/// every file holds whole lines only. A write that failed (a full disk) or a process killed in
/// the middle of a `write(2)` leaves the start of a line without its newline; nothing flushed
/// is ever cut, because a flush returns only after every line it covers was written whole.
async fn drop_torn_line(path: &Path) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = match OpenOptions::new().read(true).write(true).open(path).await {
        Ok(file) => file,
        Err(source) if source.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(io_error("open file", path, source)),
    };
    let len = file
        .metadata()
        .await
        .map_err(|source| io_error("stat file", path, source))?
        .len();
    // Backwards in chunks from the end to the last newline: the whole lines end there.
    const CHUNK: u64 = 64 << 10;
    let mut end = len;
    let mut keep = 0;
    let mut buffer = vec![0_u8; CHUNK as usize];
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let chunk = &mut buffer[..(end - start) as usize];
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(|source| io_error("seek file", path, source))?;
        file.read_exact(chunk)
            .await
            .map_err(|source| io_error("read file", path, source))?;
        if let Some(newline) = chunk.iter().rposition(|byte| *byte == b'\n') {
            keep = start + newline as u64 + 1;
            break;
        }
        end = start;
    }
    if keep < len {
        file.set_len(keep)
            .await
            .map_err(|source| io_error("truncate file", path, source))?;
        file.sync_all()
            .await
            .map_err(|source| io_error("fsync", path, source))?;
    }
    Ok(())
}

/// One past the largest sequence of the span's files in `dir` (0 when there are none).
async fn next_sequence(dir: &Path, span: &str) -> Result<u64> {
    let mut entries = tokio::fs::read_dir(dir)
        .await
        .map_err(|source| io_error("list directory", dir, source))?;
    let prefix = format!("{span}.");
    let mut next = 0;
    while let Some(entry) = entries
        .next_entry()
        .await
        .map_err(|source| io_error("list directory", dir, source))?
    {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let sequence = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".jsonl"))
            .filter(|digits| digits.len() == 20)
            .and_then(|digits| digits.parse::<u64>().ok());
        if let Some(sequence) = sequence {
            next = next.max(sequence + 1);
        }
    }
    Ok(next)
}

fn io_error(op: &'static str, path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod torn_line_tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_reopened_sink_cuts_the_line_a_failed_write_left_unfinished() {
        let dir = tempfile::tempdir().unwrap();
        let config = FileSinkConfig {
            dir: dir.path().to_owned(),
            max_file_size: 1 << 20,
            flush_interval: Duration::from_secs(1),
        };
        let mut sink = FileSink::open(&config, "cf", "span-0").await.unwrap();
        sink.write(&[
            ChangeEvent::put("/k1", "v", 1),
            ChangeEvent::put("/k2", "v", 2),
        ])
        .await
        .unwrap();
        sink.flush().await.unwrap();
        sink.close().await.unwrap();
        // The disk filled up in the middle of the next line: its start is in the file.
        let path = dir.path().join("cf").join(file_name("span-0", 0));
        let whole = std::fs::read(&path).unwrap();
        let torn = json_line(&ChangeEvent::put("/k3", "v", 3));
        let mut bytes = whole.clone();
        bytes.extend_from_slice(&torn.as_bytes()[..torn.len() / 2]);
        std::fs::write(&path, &bytes).unwrap();

        // The span restarts and re-delivers from its checkpoint into a new file.
        let mut sink = FileSink::open(&config, "cf", "span-0").await.unwrap();
        sink.write(&[ChangeEvent::put("/k3", "v", 3)])
            .await
            .unwrap();
        sink.flush().await.unwrap();
        sink.close().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), whole, "the torn line is cut");
        for sequence in 0..2 {
            let path = dir.path().join("cf").join(file_name("span-0", sequence));
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(text.ends_with('\n'), "{text:?}");
            for line in text.lines() {
                serde_json::from_str::<Value>(line).unwrap();
            }
        }

        // A file that ends with a whole line, or an empty one, is left alone.
        let sink = FileSink::open(&config, "cf", "span-0").await.unwrap();
        sink.close().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), whole);
        let only_torn = dir.path().join("cf").join(file_name("span-1", 0));
        std::fs::write(&only_torn, &torn.as_bytes()[..5]).unwrap();
        let sink = FileSink::open(&config, "cf", "span-1").await.unwrap();
        sink.close().await.unwrap();
        assert_eq!(std::fs::read(&only_torn).unwrap(), b"");
    }
}
