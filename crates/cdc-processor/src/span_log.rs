//! The span log: one JSON line per pipeline start and stop, stamped with the system-wide
//! monotonic clock, so that a checker can prove from the logs of several processes that no
//! span ran on two captures at once.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use cdc_model::ChangeFeedId;
use cdc_scheduler::SpanRef;
use nix::time::{ClockId, clock_gettime};
use serde::Serialize;

use crate::error::{Error, Result};

/// What a span log line records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanEvent {
    /// The pipeline is about to start: nothing of the span has been written yet.
    Start,
    /// The pipeline has stopped: nothing more of the span is written.
    Stop,
}

impl SpanEvent {
    /// The name written in the line.
    pub fn as_str(self) -> &'static str {
        match self {
            SpanEvent::Start => "start",
            SpanEvent::Stop => "stop",
        }
    }
}

#[derive(Serialize)]
struct Line<'a> {
    capture: &'a str,
    changefeed: String,
    span_id: u64,
    event: &'static str,
    mono_ns: u64,
}

/// An append-only file of span starts and stops:
/// `{"capture","changefeed":"<ns>/<id>","span_id","event":"start"|"stop","mono_ns"}` per line.
///
/// The file is opened with `O_APPEND` and every line is one `write(2)`, so the lines of several
/// processes sharing the file never interleave. `mono_ns` is `CLOCK_MONOTONIC`, which is the
/// same clock for every process of the machine, so lines of different processes compare.
#[derive(Debug)]
pub struct SpanLog {
    path: PathBuf,
    file: File,
}

impl SpanLog {
    /// Opens (creating it if needed) the log at `path` for appending.
    pub fn open(path: &Path) -> Result<SpanLog> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| Error::SpanLog {
                path: path.to_owned(),
                source,
            })?;
        Ok(SpanLog {
            path: path.to_owned(),
            file,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends the line of `event` for `span` on `capture_id`, in one write.
    pub fn append(&self, capture_id: &str, span: &SpanRef, event: SpanEvent) -> Result<()> {
        let line = Line {
            capture: capture_id,
            changefeed: changefeed_name(&span.changefeed),
            span_id: span.span_id.0,
            event: event.as_str(),
            mono_ns: monotonic_ns().map_err(|source| self.error(source))?,
        };
        let mut bytes = serde_json::to_vec(&line)
            .map_err(|source| self.error(io::Error::new(io::ErrorKind::InvalidData, source)))?;
        bytes.push(b'\n');
        // One write: `write_all` could split the line over several writes, which other
        // processes' lines might then separate.
        let written = (&self.file)
            .write(&bytes)
            .map_err(|source| self.error(source))?;
        if written != bytes.len() {
            return Err(self.error(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("wrote {written} of {} bytes", bytes.len()),
            )));
        }
        Ok(())
    }

    fn error(&self, source: io::Error) -> Error {
        Error::SpanLog {
            path: self.path.clone(),
            source,
        }
    }
}

fn changefeed_name(changefeed: &ChangeFeedId) -> String {
    format!("{}/{}", changefeed.namespace, changefeed.id)
}

/// `clock_gettime(CLOCK_MONOTONIC)` in nanoseconds.
pub fn monotonic_ns() -> io::Result<u64> {
    let now = clock_gettime(ClockId::CLOCK_MONOTONIC).map_err(io::Error::from)?;
    let seconds = u64::try_from(now.tv_sec()).map_err(|_| negative_clock())?;
    let nanos = u64::try_from(now.tv_nsec()).map_err(|_| negative_clock())?;
    Ok(seconds.saturating_mul(1_000_000_000).saturating_add(nanos))
}

fn negative_clock() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "negative monotonic clock")
}

#[cfg(test)]
mod tests;
