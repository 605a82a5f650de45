//! The span-log checker: reads the lines every pipeline start and stop appends to a capture's
//! span log (`[debug] span-log`), builds per (changefeed, span) the intervals during which
//! each capture ran it, and finds any two captures' intervals that overlap.
//!
//! A line is `{"capture","changefeed","span_id","event":"start"|"stop","mono_ns"}`, with
//! `mono_ns` from `CLOCK_MONOTONIC`, which every process on the machine shares. A process
//! killed with SIGKILL writes no "stop": its open intervals end at its death, which the runner
//! records once the process has been reaped (later than the real death, so the check is only
//! stricter).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::report::Finding;
use crate::run::{capture_files, deaths, read_text};

/// The monotonic clock the span log uses (`CLOCK_MONOTONIC`, system-wide), in nanoseconds.
pub fn mono_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always readable");
    let secs = u64::try_from(now.tv_sec()).expect("a monotonic clock is not negative");
    let nanos = u64::try_from(now.tv_nsec()).expect("nanoseconds are not negative");
    secs * 1_000_000_000 + nanos
}

/// One process's span log and, if it was killed, when it was certainly dead.
#[derive(Clone, Debug)]
pub struct ProcessLog {
    /// What to call the log in errors (its path).
    pub name: String,
    /// What the process's span log holds.
    pub text: String,
    /// `None` while it runs (its open intervals last to the end of the check).
    pub died_at: Option<u64>,
}

/// One span of one changefeed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SpanKey {
    /// The changefeed, `<namespace>/<id>`.
    pub changefeed: String,
    /// The span's ID in the changefeed.
    pub span_id: u64,
}

/// A stretch of time during which `capture` ran a span; `stop` is `u64::MAX` while it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interval {
    /// The capture ID.
    pub capture: String,
    /// When its pipeline started.
    pub start: u64,
    /// When its pipeline stopped (or the process died).
    pub stop: u64,
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.stop == u64::MAX {
            write!(f, "{} from {} on", self.capture, self.start)
        } else {
            write!(f, "{} from {} to {}", self.capture, self.start, self.stop)
        }
    }
}

/// Two captures running one span at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overlap {
    /// The span.
    pub span: SpanKey,
    /// The interval that started first.
    pub before: Interval,
    /// The interval that started before `before` stopped.
    pub after: Interval,
}

impl fmt::Display for Overlap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "span {} of {} ran on two captures at once: {} and {}",
            self.span.span_id, self.span.changefeed, self.before, self.after
        )
    }
}

/// What the logs hold: every span's intervals, in start order.
#[derive(Debug, Default)]
pub struct SpanHistory {
    /// Per span, its intervals in start order.
    pub intervals: BTreeMap<SpanKey, Vec<Interval>>,
}

impl SpanHistory {
    /// The number of pipeline starts.
    pub fn starts(&self) -> usize {
        self.intervals.values().map(Vec::len).sum()
    }

    /// The number of times a span started on another capture than the one it ran on before.
    pub fn moves(&self) -> usize {
        self.intervals
            .values()
            .map(|intervals| {
                intervals
                    .windows(2)
                    .filter(|pair| pair[0].capture != pair[1].capture)
                    .count()
            })
            .sum()
    }

    /// Every interval that starts while another capture's interval of its span runs, with the
    /// interval it overlaps (the one that runs longest of those started before it).
    pub fn overlaps(&self) -> Vec<Overlap> {
        let mut overlaps = Vec::new();
        for (span, intervals) in &self.intervals {
            // In start order, an interval overlaps an earlier one iff it starts before the
            // latest stop seen so far.
            let mut latest: Option<&Interval> = None;
            for interval in intervals {
                if let Some(before) = latest
                    && interval.start < before.stop
                    && interval.capture != before.capture
                {
                    overlaps.push(Overlap {
                        span: span.clone(),
                        before: before.clone(),
                        after: interval.clone(),
                    });
                }
                if latest.is_none_or(|before| interval.stop > before.stop) {
                    latest = Some(interval);
                }
            }
        }
        overlaps
    }

    /// The first overlap of two captures' intervals of one span, if any.
    pub fn check_no_overlap(&self) -> Result<(), Overlap> {
        match self.overlaps().into_iter().next() {
            Some(overlap) => Err(overlap),
            None => Ok(()),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Line {
    capture: String,
    changefeed: String,
    span_id: u64,
    event: String,
    mono_ns: u64,
}

/// Builds the history of `logs`. A malformed line, a "stop" without a "start", a second
/// "start" of a running span on the same capture, or a line after the process's death is an
/// error: the log is the evidence, so it must be exact.
pub fn parse(logs: &[ProcessLog]) -> Result<SpanHistory> {
    let mut history = SpanHistory::default();
    for log in logs {
        let path = PathBuf::from(&log.name);
        // (capture, span) -> start of the running interval.
        let mut open: BTreeMap<(String, SpanKey), u64> = BTreeMap::new();
        for (number, text) in log.text.lines().enumerate() {
            let malformed = |reason: String| Error::malformed(&path, number + 1, reason);
            if text.trim().is_empty() {
                continue;
            }
            let line: Line =
                serde_json::from_str(text).map_err(|err| malformed(format!("{err}: {text}")))?;
            if let Some(died_at) = log.died_at
                && line.mono_ns > died_at
            {
                return Err(malformed(format!(
                    "written after the process died at {died_at}: {text}"
                )));
            }
            let span = SpanKey {
                changefeed: line.changefeed,
                span_id: line.span_id,
            };
            let key = (line.capture, span);
            match line.event.as_str() {
                "start" => {
                    if let Some(start) = open.insert(key, line.mono_ns) {
                        return Err(malformed(format!(
                            "started again, running since {start}: {text}"
                        )));
                    }
                }
                "stop" => {
                    let Some(start) = open.remove(&key) else {
                        return Err(malformed(format!("a stop without a start: {text}")));
                    };
                    if line.mono_ns < start {
                        return Err(malformed(format!("stops before its start {start}: {text}")));
                    }
                    let (capture, span) = key;
                    history.intervals.entry(span).or_default().push(Interval {
                        capture,
                        start,
                        stop: line.mono_ns,
                    });
                }
                other => return Err(malformed(format!("unknown event {other:?}: {text}"))),
            }
        }
        for ((capture, span), start) in open {
            history.intervals.entry(span).or_default().push(Interval {
                capture,
                start,
                stop: log.died_at.unwrap_or(u64::MAX),
            });
        }
    }
    for intervals in history.intervals.values_mut() {
        intervals.sort_by_key(|interval| (interval.start, interval.stop));
    }
    Ok(history)
}

/// Splits the span log of one capture slot, which its successive processes appended to, into
/// one [`ProcessLog`] per process: each death (in time order) ends the process whose lines
/// precede it, and the lines after the last death are the living process's.
pub fn split_by_deaths(path: &Path, text: &str, mut deaths: Vec<u64>) -> Vec<ProcessLog> {
    deaths.sort_unstable();
    let mut logs: Vec<ProcessLog> = deaths
        .iter()
        .map(|died_at| ProcessLog {
            name: path.display().to_string(),
            text: String::new(),
            died_at: Some(*died_at),
        })
        .collect();
    logs.push(ProcessLog {
        name: path.display().to_string(),
        text: String::new(),
        died_at: None,
    });
    for line in text.lines() {
        // A line that does not parse goes to the living process, whose parse reports it.
        let mono_ns = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|value| value.get("mono_ns").and_then(serde_json::Value::as_u64));
        let index = mono_ns.map_or(deaths.len(), |mono_ns| {
            deaths.partition_point(|died_at| *died_at < mono_ns)
        });
        logs[index].text.push_str(line);
        logs[index].text.push('\n');
    }
    logs
}

/// The double-run oracle: every overlap of two captures' intervals of one span in the run's
/// span logs (`capture-<n>.span.log`, with `deaths.jsonl`).
pub fn double_run(run_dir: &Path) -> Result<Finding> {
    let deaths = deaths(run_dir)?;
    let mut logs = Vec::new();
    for (number, path) in capture_files(run_dir, ".span.log")? {
        let died: Vec<u64> = deaths
            .iter()
            .filter(|death| death.capture == number)
            .map(|death| death.died_at_mono_ns)
            .collect();
        logs.extend(split_by_deaths(&path, &read_text(&path)?, died));
    }
    let mut finding = Finding::default();
    for overlap in parse(&logs)?.overlaps() {
        finding.add(|| overlap.to_string());
    }
    Ok(finding)
}

#[cfg(test)]
mod tests;
