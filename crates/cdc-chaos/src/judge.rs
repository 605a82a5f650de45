//! The verdict of a run: the oracles of `cdc-oracle` over the run directory and the etcds.
//!
//! One adjustment is the runner's own, because only the runner knows it froze a process: a
//! capture frozen with SIGSTOP writes nothing while frozen, so when a process lost its lease
//! while frozen (frozen past its TTL, or its lease revoked or its capture key deleted during the
//! freeze), the span-log intervals it stopped within [`RESUME_GRACE`] of its SIGCONT are cut at
//! the freeze. That is the fail-stop hazard `docs/guarantees.md` documents ("a process frozen
//! past its TTL runs its pipelines again on SIGCONT until it notices the lost lease"); a span it
//! kept running longer after the SIGCONT, or one moved away from a capture frozen without losing
//! its lease, still counts as a double run.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use cdc_oracle::span_log::{self, SpanHistory};
use cdc_oracle::{Finding, run as files};

use crate::cluster::TTL_SECS;
use crate::run::Outcome;

/// How soon after its SIGCONT a capture frozen past its TTL must have stopped its spans.
pub(crate) const RESUME_GRACE: Duration = Duration::from_secs(1);

fn add(outcome: &mut Outcome, oracle: &str, found: &Finding) -> u64 {
    outcome.details.extend(
        found
            .details
            .iter()
            .map(|detail| format!("{oracle}: {detail}")),
    );
    if found.count > found.details.len() as u64 {
        outcome.details.push(format!(
            "{oracle}: and {} more",
            found.count - found.details.len() as u64
        ));
    }
    found.count
}

/// Runs every oracle (`cdc_oracle::check`: the mirror against the upstream at `upstream`) and
/// adds its counts and details to `outcome`, the double run with the freezes cut (see the
/// module's comment); an oracle that cannot read the run fails the run.
pub(crate) async fn judge(dir: &Path, upstream: &[String], outcome: &mut Outcome) {
    match cdc_oracle::check(dir, upstream).await {
        Ok(report) => {
            outcome.lost += report.lost;
            outcome.reordered += report.reordered;
            outcome.checkpoint_regressions += report.checkpoint_regressions;
            outcome.stale_owner_writes += report.stale_owner_writes;
            outcome.details.extend(
                report
                    .details
                    .into_iter()
                    .filter(|detail| !detail.starts_with("double_run:")),
            );
        }
        Err(err) => unreadable(outcome, "check", &err),
    }
    match double_run(dir) {
        Ok(found) => outcome.double_run += add(outcome, "double_run", &found),
        Err(err) => unreadable(outcome, "double_run", &err),
    }
}

fn unreadable(outcome: &mut Outcome, oracle: &str, err: &cdc_oracle::Error) {
    outcome.converged = false;
    outcome.details.push(format!("{oracle} oracle: {err}"));
}

/// Every freeze of each process (`capture-<n>`): (SIGSTOP, SIGCONT) in `CLOCK_MONOTONIC`, and
/// the capture IDs whose lease was taken away by the runner (revoked, key deleted) with when.
type Freezes = BTreeMap<String, Vec<(u64, u64)>>;

fn freezes(dir: &Path) -> cdc_oracle::Result<(Freezes, Vec<(String, u64)>)> {
    let mut freezes: Freezes = BTreeMap::new();
    let mut lease_losses = Vec::new();
    for fault in files::faults(dir)? {
        match fault.fault.as_str() {
            "sigstop-capture-long" | "sigstop-capture-short" | "compact-while-lagging" => {
                let Some(number) = fault
                    .target
                    .strip_prefix("capture-")
                    .and_then(|rest| rest.split(' ').next())
                else {
                    continue;
                };
                freezes
                    .entry(number.to_owned())
                    .or_default()
                    .push((fault.start_mono_ns, fault.end_mono_ns));
            }
            "revoke-lease" | "delete-capture-key" => {
                if let Some((_, id)) = fault.target.rsplit_once('/') {
                    lease_losses.push((id.to_owned(), fault.start_mono_ns));
                }
            }
            _ => {}
        }
    }
    Ok((freezes, lease_losses))
}

/// The double-run oracle of `cdc-oracle` over the span logs split at the deaths, with the
/// intervals of long-frozen processes cut at the freeze (see the module's comment).
fn double_run(dir: &Path) -> cdc_oracle::Result<Finding> {
    let deaths = files::deaths(dir)?;
    let (freezes, lease_losses) = freezes(dir)?;
    let ttl = TTL_SECS * 1_000_000_000;
    let grace = u64::try_from(RESUME_GRACE.as_nanos()).unwrap_or(u64::MAX);
    let mut history = SpanHistory::default();
    for (number, path) in files::capture_files(dir, ".span.log")? {
        let died: Vec<u64> = deaths
            .iter()
            .filter(|death| death.capture == number)
            .map(|death| death.died_at_mono_ns)
            .collect();
        let text = std::fs::read_to_string(&path).map_err(|source| cdc_oracle::Error::Io {
            path: path.clone(),
            source,
        })?;
        let logs = span_log::split_by_deaths(&path, &text, died);
        let own = span_log::parse(&logs)?;
        let frozen = freezes.get(&number).map(Vec::as_slice).unwrap_or_default();
        for (span, intervals) in own.intervals {
            for mut interval in intervals {
                for (stopped, resumed) in frozen {
                    let lost_lease = resumed.saturating_sub(*stopped) > ttl
                        || lease_losses.iter().any(|(id, at)| {
                            *id == interval.capture && (*stopped..=*resumed).contains(at)
                        });
                    if lost_lease
                        && interval.start < *stopped
                        && interval.stop >= *stopped
                        && interval.stop <= resumed.saturating_add(grace)
                    {
                        interval.stop = *stopped;
                    }
                }
                history
                    .intervals
                    .entry(span.clone())
                    .or_default()
                    .push(interval);
            }
        }
    }
    for intervals in history.intervals.values_mut() {
        intervals.sort_by_key(|interval| (interval.start, interval.stop));
    }
    let mut found = Finding::default();
    for overlap in history.overlaps() {
        found.add(|| overlap.to_string());
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn line(capture: &str, event: &str, at: u64) -> String {
        format!(
            "{{\"capture\":\"{capture}\",\"changefeed\":\"default/cf\",\"span_id\":0,\"event\":\"{event}\",\"mono_ns\":{at}}}\n"
        )
    }

    /// Capture 1 (process 1) runs the span from 1 s, is frozen from 10 s to `resumed` s and
    /// stops the span at `stopped` s; capture 2 (process 2) runs it from 17 s on.
    fn run_dir(resumed: u64, stopped: u64, fault: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("capture-1.span.log"),
            line("c1", "start", S) + &line("c1", "stop", stopped * S),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("capture-2.span.log"),
            line("c2", "start", 17 * S),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("faults.jsonl"),
            format!(
                "{{\"fault\":\"{fault}\",\"target\":\"capture-1\",\"start_mono_ns\":{},\"end_mono_ns\":{}}}\n",
                10 * S,
                resumed * S
            ),
        )
        .unwrap();
        dir
    }

    #[test]
    fn a_capture_frozen_past_its_ttl_that_stops_at_once_is_no_double_run() {
        let dir = run_dir(20, 20, "sigstop-capture-long");
        assert_eq!(double_run(dir.path()).unwrap().count, 0);
    }

    #[test]
    fn a_capture_that_runs_on_after_its_sigcont_is_a_double_run() {
        let dir = run_dir(20, 23, "sigstop-capture-long");
        assert_eq!(double_run(dir.path()).unwrap().count, 1);
    }

    #[test]
    fn a_capture_frozen_without_losing_its_lease_is_not_excused() {
        // 3 s, below the TTL, and no lease revoked: its span should not have moved.
        let dir = run_dir(13, 13, "sigstop-capture-short");
        std::fs::write(
            dir.path().join("capture-2.span.log"),
            line("c2", "start", 12 * S),
        )
        .unwrap();
        assert_eq!(double_run(dir.path()).unwrap().count, 1);
        // The same freeze with the capture's lease revoked during it is the hazard.
        std::fs::write(
            dir.path().join("faults.jsonl"),
            format!(
                "{{\"fault\":\"sigstop-capture-short\",\"target\":\"capture-1\",\"start_mono_ns\":{},\"end_mono_ns\":{}}}\n{{\"fault\":\"revoke-lease\",\"target\":\"/tidb/cdc/chaos/__cdc_meta__/capture/c1\",\"start_mono_ns\":{},\"end_mono_ns\":{}}}\n",
                10 * S,
                13 * S,
                11 * S,
                11 * S
            ),
        )
        .unwrap();
        assert_eq!(double_run(dir.path()).unwrap().count, 0);
    }
}
