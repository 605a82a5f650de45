//! Tests of the changefeed state machine.

use super::*;

const SEC: Duration = Duration::from_secs(1);

fn policy() -> RetryPolicy {
    RetryPolicy {
        backoff_initial: SEC,
        backoff_max: 4 * SEC,
        retry_budget: 10 * SEC,
    }
}

fn error(code: &str) -> RunningError {
    RunningError {
        code: code.to_owned(),
        message: "boom".to_owned(),
        ..RunningError::default()
    }
}

fn input(checkpoint: u64, errors: Vec<RunningError>) -> FeedInput {
    FeedInput {
        checkpoint,
        errors,
        ..FeedInput::default()
    }
}

fn states(patches: &[FeedPatch]) -> Vec<FeedState> {
    patches
        .iter()
        .filter_map(|patch| match patch {
            FeedPatch::State { state, .. } => Some(state.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_normal_changefeed_runs_and_writes_nothing() {
    let mut machine = FeedMachine::new(FeedState::Normal, policy());
    let decision = machine.tick(SEC, input(5, vec![]));
    assert!(decision.running);
    assert!(decision.patches.is_empty());
}

#[test]
fn an_uninitialized_changefeed_becomes_normal() {
    let mut machine = FeedMachine::new(FeedState::Uninitialized, policy());
    let decision = machine.tick(SEC, input(5, vec![]));
    assert!(decision.running);
    assert_eq!(states(&decision.patches), vec![FeedState::Normal]);
}

#[test]
fn pause_resume_and_remove() {
    let mut machine = FeedMachine::new(FeedState::Normal, policy());
    let patches = machine.admin(AdminJob::Pause).unwrap();
    assert_eq!(
        patches,
        vec![
            FeedPatch::State {
                state: FeedState::Stopped,
                admin: AdminJobType::Stop
            },
            FeedPatch::CleanTaskPositions
        ]
    );
    assert!(!machine.tick(SEC, input(5, vec![])).running);
    // Pausing again changes nothing.
    assert_eq!(machine.admin(AdminJob::Pause).unwrap(), vec![]);

    let patches = machine
        .admin(AdminJob::Resume {
            overwrite_checkpoint: Some(3),
        })
        .unwrap();
    assert!(patches.contains(&FeedPatch::OverwriteCheckpoint(3)));
    assert!(patches.contains(&FeedPatch::ClearErrors));
    assert_eq!(states(&patches), vec![FeedState::Normal]);
    assert!(machine.tick(2 * SEC, input(5, vec![])).running);

    let patches = machine.admin(AdminJob::Remove).unwrap();
    assert!(patches.contains(&FeedPatch::Remove));
    assert_eq!(machine.state(), &FeedState::Removed);
    assert_eq!(machine.admin(AdminJob::Pause), Err(AdminRefused::Removed));
    assert!(!machine.tick(3 * SEC, input(5, vec![])).running);
}

#[test]
fn an_error_stops_the_changefeed_until_the_backoff_ends_then_retries() {
    let mut machine = FeedMachine::new(FeedState::Normal, policy());
    let decision = machine.tick(SEC, input(5, vec![error("CDC:ErrSinkFailed")]));
    assert!(!decision.running);
    assert_eq!(states(&decision.patches), vec![FeedState::Pending]);
    assert!(
        decision
            .patches
            .contains(&FeedPatch::SetError(error("CDC:ErrSinkFailed")))
    );
    assert_eq!(decision.wake_at, Some(2 * SEC));

    // Still backing off.
    let decision = machine.tick(SEC + SEC / 2, input(5, vec![]));
    assert!(!decision.running);
    assert_eq!(decision.wake_at, Some(2 * SEC));

    // Retried: warning and running.
    let decision = machine.tick(2 * SEC, input(5, vec![]));
    assert!(decision.running);
    assert_eq!(states(&decision.patches), vec![FeedState::Warning]);

    // No progress yet: stays in warning.
    let decision = machine.tick(3 * SEC, input(5, vec![]));
    assert!(decision.running);
    assert!(decision.patches.is_empty());

    // Progress: normal again, the error cleared.
    let decision = machine.tick(4 * SEC, input(6, vec![]));
    assert!(decision.running);
    assert_eq!(states(&decision.patches), vec![FeedState::Normal]);
    assert!(decision.patches.contains(&FeedPatch::ClearErrors));
}

#[test]
fn the_backoff_doubles_and_the_changefeed_fails_after_the_retry_budget() {
    let mut machine = FeedMachine::new(FeedState::Normal, policy());
    let mut now = SEC;
    let mut waits = Vec::new();
    for _ in 0..10 {
        let decision = machine.tick(now, input(5, vec![error("CDC:ErrSinkFailed")]));
        if machine.state() == &FeedState::Failed {
            break;
        }
        let wake_at = decision.wake_at.expect("a pending changefeed wakes up");
        waits.push(wake_at - now);
        now = wake_at;
        let decision = machine.tick(now, input(5, vec![]));
        if machine.state() == &FeedState::Failed {
            assert!(!decision.running);
            break;
        }
        assert!(decision.running);
    }
    assert_eq!(waits, vec![SEC, 2 * SEC, 4 * SEC, 4 * SEC]);
    assert_eq!(machine.state(), &FeedState::Failed);
    assert!(now - SEC >= policy().retry_budget);
    assert!(!machine.tick(now + 100 * SEC, input(5, vec![])).running);
}

#[test]
fn a_gc_fast_fail_error_fails_at_once() {
    let mut machine = FeedMachine::new(FeedState::Normal, policy());
    let decision = machine.tick(
        SEC,
        input(
            5,
            vec![error("CDC:ErrSinkFailed"), error("CDC:ErrSnapshotLostByGC")],
        ),
    );
    assert!(!decision.running);
    assert_eq!(states(&decision.patches), vec![FeedState::Failed]);
    assert!(
        decision
            .patches
            .contains(&FeedPatch::SetError(error("CDC:ErrSnapshotLostByGC")))
    );
    // Resume runs it again.
    machine
        .admin(AdminJob::Resume {
            overwrite_checkpoint: None,
        })
        .unwrap();
    assert!(machine.tick(2 * SEC, input(5, vec![])).running);
}

#[test]
fn reaching_the_target_finishes() {
    let mut machine = FeedMachine::new(FeedState::Normal, policy());
    let mut feed_input = input(9, vec![]);
    feed_input.target = 10;
    assert!(machine.tick(SEC, feed_input.clone()).running);
    feed_input.checkpoint = 10;
    let decision = machine.tick(2 * SEC, feed_input);
    assert!(!decision.running);
    assert_eq!(
        decision.patches,
        vec![FeedPatch::State {
            state: FeedState::Finished,
            admin: AdminJobType::Finish
        }]
    );
}

#[test]
fn a_new_owner_waits_one_pause_before_retrying_a_pending_changefeed() {
    let mut machine = FeedMachine::new(FeedState::Pending, policy());
    let decision = machine.tick(10 * SEC, input(5, vec![]));
    assert!(!decision.running);
    assert_eq!(decision.wake_at, Some(11 * SEC));
    assert!(machine.tick(11 * SEC, input(5, vec![])).running);
}
