//! What the oracles found: a count per oracle, and the evidence as sentences.

use std::fmt;

/// At most this many details are kept per oracle; the rest are counted.
pub const MAX_DETAILS: usize = 20;

/// One oracle's verdict: how many violations, and the first few described.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Finding {
    /// The number of violations.
    pub count: u64,
    /// The first [`MAX_DETAILS`] violations, one sentence each.
    pub details: Vec<String>,
}

impl Finding {
    /// Counts one violation, described by `detail` (kept among the first [`MAX_DETAILS`]).
    pub fn add(&mut self, detail: impl FnOnce() -> String) {
        self.count += 1;
        if self.details.len() < MAX_DETAILS {
            self.details.push(detail());
        }
    }

    /// Adds `other`'s violations to these.
    pub fn merge(&mut self, other: Finding) {
        self.count += other.count;
        let room = MAX_DETAILS.saturating_sub(self.details.len());
        self.details.extend(other.details.into_iter().take(room));
    }

    /// The details, and a line for those not kept.
    fn described(&self, oracle: &str) -> Vec<String> {
        let mut lines: Vec<String> = self
            .details
            .iter()
            .map(|detail| format!("{oracle}: {detail}"))
            .collect();
        let kept = self.details.len() as u64;
        if self.count > kept {
            lines.push(format!("{oracle}: and {} more", self.count - kept));
        }
        lines
    }
}

/// Every oracle's verdict on one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Changes the writer got that a sink lacks, plus keys whose mirror differs.
    pub lost: u64,
    /// Changes of a key first written to a file sink after a later change of the key.
    pub reordered: u64,
    /// Intervals of a span on one capture that overlap another capture's.
    pub double_run: u64,
    /// Checkpoints that moved back, or passed a change the sink did not have yet.
    pub checkpoint_regressions: u64,
    /// Owner writes outside their term, or owner-only writes no owner of the term logged.
    pub stale_owner_writes: u64,
    /// The evidence, one line per violation (the first few per oracle), each line prefixed
    /// with its oracle's name.
    pub details: Vec<String>,
}

impl Report {
    /// The report of the five oracles' findings.
    pub fn from_findings(
        lost: Finding,
        reordered: Finding,
        double_run: Finding,
        checkpoint_regressions: Finding,
        stale_owner_writes: Finding,
    ) -> Report {
        let mut details = Vec::new();
        details.extend(lost.described("lost"));
        details.extend(reordered.described("reordered"));
        details.extend(double_run.described("double_run"));
        details.extend(checkpoint_regressions.described("checkpoint_regressions"));
        details.extend(stale_owner_writes.described("stale_owner_writes"));
        Report {
            lost: lost.count,
            reordered: reordered.count,
            double_run: double_run.count,
            checkpoint_regressions: checkpoint_regressions.count,
            stale_owner_writes: stale_owner_writes.count,
            details,
        }
    }

    /// Whether every oracle found nothing.
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.reordered == 0
            && self.double_run == 0
            && self.checkpoint_regressions == 0
            && self.stale_owner_writes == 0
    }
}

impl fmt::Display for Report {
    /// The counts as the run's summary line spells them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "lost={} reordered={} double_run={} checkpoint_regressions={} stale_owner_writes={}",
            self.lost,
            self.reordered,
            self.double_run,
            self.checkpoint_regressions,
            self.stale_owner_writes
        )
    }
}
