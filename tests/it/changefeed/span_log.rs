//! The span-log checker: reads the lines every pipeline start and stop appends to a capture's
//! span log (`[debug] span-log`), builds per (changefeed, span) the intervals during which
//! each capture ran it, and fails on any two captures' intervals that overlap.
//!
//! A line is `{"capture","changefeed","span_id","event":"start"|"stop","mono_ns"}`, with
//! `mono_ns` from `CLOCK_MONOTONIC`, which every process on the machine shares. A process
//! killed with SIGKILL writes no "stop": its open intervals end at its death, which the test
//! records once the process has been reaped (later than the real death, so the check is only
//! stricter).

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// The monotonic clock the span log uses (`CLOCK_MONOTONIC`, system-wide), in nanoseconds.
pub(crate) fn mono_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always readable");
    let secs = u64::try_from(now.tv_sec()).expect("a monotonic clock is not negative");
    let nanos = u64::try_from(now.tv_nsec()).expect("nanoseconds are not negative");
    secs * 1_000_000_000 + nanos
}

/// One process's span log and, if it was killed, when it was certainly dead.
pub(crate) struct ProcessLog {
    /// What the process's span log holds.
    pub(crate) text: String,
    /// `None` while it runs (its open intervals last to the end of the check).
    pub(crate) died_at: Option<u64>,
}

/// One span of one changefeed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct SpanKey {
    pub(crate) changefeed: String,
    pub(crate) span_id: u64,
}

/// A stretch of time during which `capture` ran a span; `stop` is `u64::MAX` while it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Interval {
    pub(crate) capture: String,
    pub(crate) start: u64,
    pub(crate) stop: u64,
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

/// What the logs hold: every span's intervals, in start order.
#[derive(Debug, Default)]
pub(crate) struct SpanHistory {
    pub(crate) intervals: BTreeMap<SpanKey, Vec<Interval>>,
}

impl SpanHistory {
    /// The number of pipeline starts.
    pub(crate) fn starts(&self) -> usize {
        self.intervals.values().map(Vec::len).sum()
    }

    /// The number of times a span started on another capture than the one it ran on before.
    pub(crate) fn moves(&self) -> usize {
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

    /// The first overlap of two captures' intervals of one span, if any.
    pub(crate) fn check_no_overlap(&self) -> Result<()> {
        for (span, intervals) in &self.intervals {
            // In start order, an interval overlaps an earlier one iff it starts before the
            // latest stop seen so far.
            let mut latest: Option<&Interval> = None;
            for interval in intervals {
                if let Some(before) = latest
                    && interval.start < before.stop
                    && interval.capture != before.capture
                {
                    bail!(
                        "span {} of {} ran on two captures at once: {before} and {interval}",
                        span.span_id,
                        span.changefeed
                    );
                }
                if latest.is_none_or(|before| interval.stop > before.stop) {
                    latest = Some(interval);
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, serde::Deserialize)]
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
pub(crate) fn parse(logs: &[ProcessLog]) -> Result<SpanHistory> {
    let mut history = SpanHistory::default();
    for (index, log) in logs.iter().enumerate() {
        // (capture, span) -> start of the running interval.
        let mut open: BTreeMap<(String, SpanKey), u64> = BTreeMap::new();
        for (number, text) in log.text.lines().enumerate() {
            let context = || format!("span log {index}, line {}: {text}", number + 1);
            if text.trim().is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(text).with_context(context)?;
            let line: Line = serde_json::from_value(value).with_context(context)?;
            if let Some(died_at) = log.died_at
                && line.mono_ns > died_at
            {
                bail!("{}: written after the process died at {died_at}", context());
            }
            let span = SpanKey {
                changefeed: line.changefeed,
                span_id: line.span_id,
            };
            let key = (line.capture, span);
            match line.event.as_str() {
                "start" => {
                    if let Some(start) = open.insert(key, line.mono_ns) {
                        bail!("{}: started again, running since {start}", context());
                    }
                }
                "stop" => {
                    let Some(start) = open.remove(&key) else {
                        bail!("{}: a stop without a start", context());
                    };
                    if line.mono_ns < start {
                        bail!("{}: stops before its start {start}", context());
                    }
                    let (capture, span) = key;
                    history.intervals.entry(span).or_default().push(Interval {
                        capture,
                        start,
                        stop: line.mono_ns,
                    });
                }
                other => bail!("{}: unknown event {other:?}", context()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn line(capture: &str, span_id: u64, event: &str, mono_ns: u64) -> String {
        format!(
            "{{\"capture\":\"{capture}\",\"changefeed\":\"default/cf\",\"span_id\":{span_id},\"event\":\"{event}\",\"mono_ns\":{mono_ns}}}\n"
        )
    }

    fn log(lines: &[String], died_at: Option<u64>) -> ProcessLog {
        ProcessLog {
            text: lines.concat(),
            died_at,
        }
    }

    #[test]
    fn a_move_that_stops_before_it_starts_passes() {
        let a = log(&[line("a", 1, "start", 10), line("a", 1, "stop", 20)], None);
        let b = log(&[line("b", 1, "start", 21)], None);
        let history = parse(&[a, b]).unwrap();
        history.check_no_overlap().unwrap();
        assert_eq!(history.starts(), 2);
        assert_eq!(history.moves(), 1);
    }

    #[test]
    fn a_start_before_the_other_stop_is_an_overlap() {
        let a = log(&[line("a", 1, "start", 10), line("a", 1, "stop", 20)], None);
        let b = log(&[line("b", 1, "start", 19)], None);
        let err = parse(&[a, b]).unwrap().check_no_overlap().unwrap_err();
        let message = err.to_string();
        assert!(message.contains("span 1 of default/cf"), "{message}");
        assert!(message.contains("a from 10 to 20"), "{message}");
        assert!(message.contains("b from 19 on"), "{message}");
    }

    #[test]
    fn a_killed_process_runs_its_spans_until_its_death() {
        // a was killed at 30 without writing a stop: b starting at 25 overlaps, at 31 not.
        let a = || log(&[line("a", 1, "start", 10)], Some(30));
        let early = log(&[line("b", 1, "start", 25)], None);
        assert!(parse(&[a(), early]).unwrap().check_no_overlap().is_err());
        let late = log(&[line("b", 1, "start", 31)], None);
        parse(&[a(), late]).unwrap().check_no_overlap().unwrap();
    }

    #[test]
    fn a_running_span_overlaps_every_later_start() {
        // a never stopped and was not killed: it runs to the end.
        let a = log(&[line("a", 1, "start", 10)], None);
        let b = log(
            &[line("b", 1, "start", 1_000), line("b", 1, "stop", 2_000)],
            None,
        );
        assert!(parse(&[a, b]).unwrap().check_no_overlap().is_err());
    }

    #[test]
    fn an_overlap_with_an_earlier_long_interval_is_found() {
        // c overlaps a (long), not b (which a contains, itself an overlap, reported first).
        let a = log(
            &[line("a", 1, "start", 10), line("a", 1, "stop", 100)],
            None,
        );
        let c = log(&[line("c", 1, "start", 60), line("c", 1, "stop", 70)], None);
        let err = parse(&[a, c]).unwrap().check_no_overlap().unwrap_err();
        assert!(err.to_string().contains("c from 60 to 70"), "{err}");
    }

    #[test]
    fn other_spans_and_other_changefeeds_do_not_overlap() {
        let a = log(&[line("a", 1, "start", 10)], None);
        let b = log(
            &[
                line("b", 2, "start", 11),
                line("b", 1, "start", 12).replace("default/cf", "default/other"),
            ],
            None,
        );
        parse(&[a, b]).unwrap().check_no_overlap().unwrap();
    }

    #[test]
    fn the_same_capture_restarting_a_span_is_no_overlap() {
        let a = log(
            &[
                line("a", 1, "start", 10),
                line("a", 1, "stop", 20),
                line("a", 1, "start", 30),
            ],
            None,
        );
        let history = parse(&[a]).unwrap();
        history.check_no_overlap().unwrap();
        assert_eq!(history.moves(), 0);
    }

    #[test]
    fn malformed_logs_are_errors() {
        let cases = [
            log(&["{not json\n".to_owned()], None),
            log(&[line("a", 1, "stop", 10)], None),
            log(
                &[line("a", 1, "start", 10), line("a", 1, "start", 11)],
                None,
            ),
            log(&[line("a", 1, "start", 10), line("a", 1, "stop", 5)], None),
            log(&[line("a", 1, "pause", 10)], None),
            log(&[line("a", 1, "start", 40)], Some(30)),
        ];
        for case in cases {
            let text = case.text.clone();
            assert!(parse(&[case]).is_err(), "{text}");
        }
    }

    #[test]
    fn the_clock_is_monotonic_and_shared() {
        let first = mono_ns();
        let second = mono_ns();
        assert!(first > 0 && second >= first);
    }
}
