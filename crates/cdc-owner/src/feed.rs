//! The changefeed state machine, pure: admin jobs, processor errors retried with backoff and
//! failed after the retry budget, and finished at the target (TiCDC's
//! `cdc/owner/feed_state_manager.go` in pingcap/tiflow).
//!
//! The machine keeps the changefeed's state itself once it has seen the stored one, so that a
//! decision made in one tick is not made again before its patches are read back; it says what to
//! write as [`FeedPatch`]es and whether the changefeed's spans should run.

use std::time::Duration;

use cdc_model::{AdminJobType, FeedState, RunningError};

/// The error retry policy of changefeeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first pause after an error (TiCDC: 10 s).
    pub backoff_initial: Duration,
    /// The longest pause; each retry doubles the pause up to it (TiCDC: 10 min).
    pub backoff_max: Duration,
    /// How long a changefeed may keep failing before it is failed for good (TiCDC's
    /// `changefeed-error-stuck-duration`, 30 min).
    pub retry_budget: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            backoff_initial: Duration::from_secs(10),
            backoff_max: Duration::from_secs(600),
            retry_budget: Duration::from_secs(1800),
        }
    }
}

/// A user's request about a changefeed (TiCDC's admin jobs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminJob {
    /// Stop it.
    Pause,
    /// Run it again, optionally from another checkpoint.
    Resume {
        /// Restart from this checkpoint instead of the stored one.
        overwrite_checkpoint: Option<u64>,
    },
    /// Delete it.
    Remove,
}

/// A write the machine asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedPatch {
    /// Set the info's state and admin job, and the status's admin job.
    State {
        /// The new state.
        state: FeedState,
        /// Its admin job.
        admin: AdminJobType,
    },
    /// Set the info's error.
    SetError(RunningError),
    /// Set the info's warning.
    SetWarning(RunningError),
    /// Clear the info's error and warning.
    ClearErrors,
    /// Restart from `checkpoint`: the info's start and the status are reset to it.
    OverwriteCheckpoint(u64),
    /// Delete the info and the status.
    Remove,
    /// Delete every task position of the changefeed.
    CleanTaskPositions,
}

/// The admin job TiCDC stores with each state (`patchState` in `feed_state_manager.go`).
pub fn admin_job_of(state: &FeedState) -> AdminJobType {
    match state {
        FeedState::Normal | FeedState::Warning | FeedState::Uninitialized => AdminJobType::Noop,
        FeedState::Finished => AdminJobType::Finish,
        FeedState::Failed | FeedState::Stopped | FeedState::Pending => AdminJobType::Stop,
        FeedState::Removed => AdminJobType::Remove,
        FeedState::Unknown(_) => AdminJobType::Stop,
    }
}

/// Whether an error stops the changefeed for good instead of being retried: the GC fast-fail
/// codes (the data it needs is gone upstream, as for a compacted start revision).
pub fn is_fatal_error(error: &RunningError) -> bool {
    error.is_gc_fast_fail()
}

/// What one tick decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedDecision {
    /// The writes to queue.
    pub patches: Vec<FeedPatch>,
    /// Whether the changefeed's spans should run.
    pub running: bool,
    /// When the machine needs its next tick at the latest (a backoff that ends).
    pub wake_at: Option<Duration>,
}

/// The retry state of a failing changefeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Retrying {
    /// When the first error of this run of errors was seen.
    first_error_at: Duration,
    /// When the last error was seen or the last retry started.
    last_at: Duration,
    /// The pause before the next retry.
    interval: Duration,
    /// The checkpoint when the last retry started; moving past it ends the warning.
    checkpoint_at_retry: u64,
}

/// One changefeed's state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedMachine {
    state: FeedState,
    retrying: Option<Retrying>,
    policy: RetryPolicy,
}

/// The tick's inputs from the snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedInput {
    /// The changefeed's checkpoint.
    pub checkpoint: u64,
    /// The target revision; 0 for none.
    pub target: u64,
    /// Errors the processors reported since the last tick.
    pub errors: Vec<RunningError>,
    /// Warnings the processors reported since the last tick.
    pub warnings: Vec<RunningError>,
}

/// Why an admin job was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRefused {
    /// The changefeed is removed.
    Removed,
}

impl FeedMachine {
    /// The machine of a changefeed whose stored state is `state`.
    pub fn new(state: FeedState, policy: RetryPolicy) -> FeedMachine {
        FeedMachine {
            state,
            retrying: None,
            policy,
        }
    }

    /// The state as the machine decided it (ahead of the store by at most one commit).
    pub fn state(&self) -> &FeedState {
        &self.state
    }

    /// Whether the changefeed's spans should run in its current state.
    pub fn is_running(&self) -> bool {
        matches!(
            self.state,
            FeedState::Normal | FeedState::Warning | FeedState::Uninitialized
        )
    }

    fn set_state(&mut self, state: FeedState, patches: &mut Vec<FeedPatch>) {
        patches.push(FeedPatch::State {
            admin: admin_job_of(&state),
            state: state.clone(),
        });
        self.state = state;
    }

    /// Applies a user's admin job and answers the writes it needs.
    pub fn admin(&mut self, job: AdminJob) -> Result<Vec<FeedPatch>, AdminRefused> {
        let mut patches = Vec::new();
        if self.state == FeedState::Removed {
            return Err(AdminRefused::Removed);
        }
        match job {
            AdminJob::Pause => match self.state {
                FeedState::Normal
                | FeedState::Warning
                | FeedState::Pending
                | FeedState::Uninitialized => {
                    self.retrying = None;
                    self.set_state(FeedState::Stopped, &mut patches);
                    patches.push(FeedPatch::CleanTaskPositions);
                }
                // Already not running: nothing to stop.
                FeedState::Stopped
                | FeedState::Failed
                | FeedState::Finished
                | FeedState::Removed
                | FeedState::Unknown(_) => {}
            },
            AdminJob::Resume {
                overwrite_checkpoint,
            } => match self.state {
                FeedState::Stopped
                | FeedState::Failed
                | FeedState::Finished
                | FeedState::Unknown(_) => {
                    self.retrying = None;
                    patches.push(FeedPatch::ClearErrors);
                    if let Some(checkpoint) = overwrite_checkpoint {
                        patches.push(FeedPatch::OverwriteCheckpoint(checkpoint));
                    }
                    patches.push(FeedPatch::CleanTaskPositions);
                    self.set_state(FeedState::Normal, &mut patches);
                }
                // Running or about to retry: resuming changes nothing.
                FeedState::Normal
                | FeedState::Warning
                | FeedState::Pending
                | FeedState::Uninitialized
                | FeedState::Removed => {}
            },
            AdminJob::Remove => {
                self.retrying = None;
                self.state = FeedState::Removed;
                patches.push(FeedPatch::CleanTaskPositions);
                patches.push(FeedPatch::Remove);
            }
        }
        Ok(patches)
    }

    /// One tick at `now` (a monotonic time of the caller's choosing).
    pub fn tick(&mut self, now: Duration, input: FeedInput) -> FeedDecision {
        let mut decision = FeedDecision::default();
        let patches = &mut decision.patches;
        if self.state == FeedState::Uninitialized {
            self.set_state(FeedState::Normal, patches);
        }
        match self.state.clone() {
            FeedState::Normal | FeedState::Warning => {
                if let Some(error) = input.errors.last() {
                    if input.errors.iter().any(is_fatal_error) {
                        let fatal = input
                            .errors
                            .iter()
                            .find(|error| is_fatal_error(error))
                            .unwrap_or(error);
                        patches.push(FeedPatch::SetError(fatal.clone()));
                        self.retrying = None;
                        self.set_state(FeedState::Failed, patches);
                        return decision;
                    }
                    patches.push(FeedPatch::SetError(error.clone()));
                    let retrying = self.retrying.get_or_insert(Retrying {
                        first_error_at: now,
                        last_at: now,
                        interval: self.policy.backoff_initial,
                        checkpoint_at_retry: input.checkpoint,
                    });
                    retrying.last_at = now;
                    decision.wake_at = Some(now + retrying.interval);
                    self.set_state(FeedState::Pending, patches);
                    return decision;
                }
                if input.target > 0 && input.checkpoint >= input.target {
                    self.retrying = None;
                    self.set_state(FeedState::Finished, patches);
                    return decision;
                }
                if let Some(warning) = input.warnings.last() {
                    patches.push(FeedPatch::SetWarning(warning.clone()));
                    if self.state == FeedState::Normal {
                        self.set_state(FeedState::Warning, patches);
                    }
                }
                if self.state == FeedState::Warning
                    && input.warnings.is_empty()
                    && self
                        .retrying
                        .is_none_or(|retrying| input.checkpoint > retrying.checkpoint_at_retry)
                {
                    // The retry made progress: the changefeed is healthy again.
                    self.retrying = None;
                    patches.push(FeedPatch::ClearErrors);
                    self.set_state(FeedState::Normal, patches);
                }
                decision.running = true;
            }
            FeedState::Pending => {
                // A new owner does not know when the last error was: it waits one pause.
                let retrying = *self.retrying.get_or_insert(Retrying {
                    first_error_at: now,
                    last_at: now,
                    interval: self.policy.backoff_initial,
                    checkpoint_at_retry: input.checkpoint,
                });
                let due = retrying.last_at + retrying.interval;
                if now < due {
                    decision.wake_at = Some(due);
                    return decision;
                }
                if now.saturating_sub(retrying.first_error_at) >= self.policy.retry_budget {
                    self.retrying = None;
                    self.set_state(FeedState::Failed, patches);
                    return decision;
                }
                self.retrying = Some(Retrying {
                    first_error_at: retrying.first_error_at,
                    last_at: now,
                    interval: (retrying.interval * 2).min(self.policy.backoff_max),
                    checkpoint_at_retry: input.checkpoint,
                });
                self.set_state(FeedState::Warning, patches);
                decision.running = true;
            }
            FeedState::Stopped
            | FeedState::Failed
            | FeedState::Finished
            | FeedState::Removed
            | FeedState::Uninitialized
            | FeedState::Unknown(_) => {}
        }
        decision
    }
}

#[cfg(test)]
mod tests;
