//! Tests of the replication set state machine, transition by transition.

use std::collections::BTreeMap;

use cdc_model::{CaptureId, ChangeFeedId};

use super::{Order, ReplicationSet, Role};
use crate::message::{Dispatch, SpanStatus};
use crate::span::{AgentSpanState, Checkpoint, Span, SpanId, SpanState};

fn span() -> Span {
    Span {
        span_id: SpanId(7),
        changefeed: ChangeFeedId::default_namespace("cf"),
        start_key: b"/a".to_vec(),
        end_key: b"/b".to_vec(),
    }
}

fn id(name: &str) -> CaptureId {
    name.to_owned()
}

/// Renders orders as `to:add-prepare`, `to:add-replicate` or `to:remove`.
fn render(orders: &[Order]) -> Vec<String> {
    orders
        .iter()
        .map(|order| match &order.dispatch {
            Dispatch::Add { prepare: true, .. } => format!("{}:add-prepare", order.to),
            Dispatch::Add { prepare: false, .. } => format!("{}:add-replicate", order.to),
            Dispatch::Remove { .. } => format!("{}:remove", order.to),
        })
        .collect()
}

fn report(
    set: &mut ReplicationSet,
    capture_id: &str,
    state: AgentSpanState,
    checkpoint: u64,
) -> Vec<String> {
    let mut orders = Vec::new();
    set.handle_status(
        &id(capture_id),
        state,
        Some(Checkpoint::at(checkpoint)),
        &mut orders,
    );
    render(&orders)
}

/// A span replicating on `primary`.
fn replicating_on(primary: &str) -> ReplicationSet {
    let mut set = ReplicationSet::new(span(), Checkpoint::at(10));
    let mut orders = Vec::new();
    assert!(set.handle_add(&id(primary), &mut orders));
    report(&mut set, primary, AgentSpanState::Prepared, 10);
    report(&mut set, primary, AgentSpanState::Replicating, 10);
    assert_eq!(set.state(), SpanState::Replicating);
    set
}

#[test]
fn add_prepares_then_replicates() {
    let mut set = ReplicationSet::new(span(), Checkpoint::at(10));
    let mut orders = Vec::new();
    assert!(set.handle_add(&id("a"), &mut orders));
    assert_eq!(render(&orders), ["a:add-prepare"]);
    assert_eq!(set.state(), SpanState::Prepare);
    assert_eq!(set.secondary(), Some(&id("a")));

    // A heartbeat answer sent before the add arrived: ask again.
    assert_eq!(
        report(&mut set, "a", AgentSpanState::Absent, 0),
        ["a:add-prepare"]
    );
    assert!(report(&mut set, "a", AgentSpanState::Preparing, 10).is_empty());
    assert_eq!(
        report(&mut set, "a", AgentSpanState::Prepared, 10),
        ["a:add-replicate"]
    );
    assert_eq!(set.state(), SpanState::Commit);
    assert_eq!(set.primary(), Some(&id("a")));
    // The order to replicate was lost: a prepared primary is asked again.
    assert_eq!(
        report(&mut set, "a", AgentSpanState::Prepared, 10),
        ["a:add-replicate"]
    );
    assert!(report(&mut set, "a", AgentSpanState::Replicating, 12).is_empty());
    assert_eq!(set.state(), SpanState::Replicating);
    assert_eq!(set.checkpoint(), Checkpoint::at(12));
}

#[test]
fn add_is_refused_unless_absent() {
    let mut set = replicating_on("a");
    let mut orders = Vec::new();
    assert!(!set.handle_add(&id("b"), &mut orders));
    assert!(orders.is_empty());
}

#[test]
fn move_stops_the_primary_before_promoting_the_secondary() {
    let mut set = replicating_on("a");
    let mut orders = Vec::new();
    assert!(set.handle_move(&id("b"), &mut orders));
    assert_eq!(render(&orders), ["b:add-prepare"]);
    assert_eq!(set.state(), SpanState::Prepare);
    assert!(report(&mut set, "a", AgentSpanState::Replicating, 20).is_empty());
    assert_eq!(
        report(&mut set, "b", AgentSpanState::Prepared, 10),
        ["a:remove"]
    );
    assert_eq!(set.state(), SpanState::Commit);
    // The primary has not stopped yet: the secondary waits, the remove is repeated.
    assert_eq!(
        report(&mut set, "a", AgentSpanState::Replicating, 21),
        ["a:remove"]
    );
    assert!(report(&mut set, "a", AgentSpanState::Stopping, 22).is_empty());
    assert_eq!(set.primary(), Some(&id("a")));
    // Stopped: promote, and acknowledge the stop.
    assert_eq!(
        report(&mut set, "a", AgentSpanState::Stopped, 23),
        ["b:add-replicate", "a:remove"]
    );
    assert_eq!(set.primary(), Some(&id("b")));
    assert_eq!(set.checkpoint(), Checkpoint::at(23));
    assert!(report(&mut set, "b", AgentSpanState::Replicating, 23).is_empty());
    assert_eq!(set.state(), SpanState::Replicating);
    assert_eq!(
        set.captures().collect::<Vec<_>>(),
        [(&id("b"), Role::Primary)]
    );
}

#[test]
fn move_is_refused_to_the_primary_or_during_a_move() {
    let mut set = replicating_on("a");
    let mut orders = Vec::new();
    assert!(!set.handle_move(&id("a"), &mut orders));
    assert!(set.handle_move(&id("b"), &mut orders));
    assert!(!set.handle_move(&id("c"), &mut orders));
}

#[test]
fn the_source_of_a_move_disappears() {
    let mut set = replicating_on("a");
    let mut orders = Vec::new();
    set.handle_move(&id("b"), &mut orders);
    orders.clear();
    set.handle_capture_gone(&id("a"), &mut orders);
    assert!(render(&orders).is_empty());
    assert_eq!(set.state(), SpanState::Prepare);
    assert_eq!(set.primary(), None);
    assert_eq!(
        report(&mut set, "b", AgentSpanState::Prepared, 10),
        ["b:add-replicate"]
    );
}

#[test]
fn the_target_of_a_move_disappears() {
    let mut set = replicating_on("a");
    let mut orders = Vec::new();
    set.handle_move(&id("b"), &mut orders);
    orders.clear();
    set.handle_capture_gone(&id("b"), &mut orders);
    assert!(orders.is_empty());
    assert_eq!(set.state(), SpanState::Replicating);
    assert_eq!(set.primary(), Some(&id("a")));
}

#[test]
fn the_primary_disappears_during_commit() {
    let mut set = replicating_on("a");
    let mut orders = Vec::new();
    set.handle_move(&id("b"), &mut orders);
    report(&mut set, "b", AgentSpanState::Prepared, 10);
    orders.clear();
    set.handle_capture_gone(&id("a"), &mut orders);
    assert_eq!(render(&orders), ["b:add-replicate"]);
    assert_eq!(set.primary(), Some(&id("b")));
}

#[test]
fn the_secondary_disappears_during_commit() {
    let mut set = replicating_on("a");
    let mut orders = Vec::new();
    set.handle_move(&id("b"), &mut orders);
    report(&mut set, "b", AgentSpanState::Prepared, 10);
    orders.clear();
    set.handle_capture_gone(&id("b"), &mut orders);
    assert!(orders.is_empty());
    // The primary was told to stop; whether it did decides the state.
    assert_eq!(set.state(), SpanState::Commit);
    assert!(report(&mut set, "a", AgentSpanState::Replicating, 10).is_empty());
    assert_eq!(set.state(), SpanState::Replicating);
}

#[test]
fn a_replicating_span_whose_capture_disappears_becomes_absent() {
    let mut set = replicating_on("a");
    let mut orders = Vec::new();
    set.handle_capture_gone(&id("a"), &mut orders);
    assert!(orders.is_empty());
    assert_eq!(set.state(), SpanState::Absent);
    assert_eq!(set.captures().count(), 0);
    assert_eq!(set.checkpoint(), Checkpoint::at(10));
}

#[test]
fn a_failed_pipeline_makes_the_span_absent_and_is_acknowledged() {
    let mut set = replicating_on("a");
    assert_eq!(
        report(&mut set, "a", AgentSpanState::Stopped, 15),
        ["a:remove"]
    );
    assert_eq!(set.state(), SpanState::Absent);
    assert_eq!(set.checkpoint(), Checkpoint::at(15));
}

#[test]
fn a_primary_that_stops_unasked_blocks_promotion_until_stopped() {
    let mut set = replicating_on("a");
    assert!(report(&mut set, "a", AgentSpanState::Stopping, 10).is_empty());
    assert_eq!(set.state(), SpanState::Absent);
    assert_eq!(set.role_of("a"), Some(Role::Undetermined));
    let mut orders = Vec::new();
    assert!(set.handle_add(&id("b"), &mut orders));
    assert!(report(&mut set, "b", AgentSpanState::Prepared, 10).is_empty());
    assert_eq!(set.state(), SpanState::Commit);
    assert_eq!(
        report(&mut set, "a", AgentSpanState::Stopped, 11),
        ["b:add-replicate", "a:remove"]
    );
}

#[test]
fn a_capture_that_runs_the_span_unasked_is_stopped() {
    let mut set = replicating_on("a");
    assert_eq!(
        report(&mut set, "x", AgentSpanState::Replicating, 10),
        ["x:remove"]
    );
    assert_eq!(set.role_of("x"), Some(Role::Undetermined));
    // Not movable while someone else may run it.
    let mut orders = Vec::new();
    assert!(!set.handle_move(&id("b"), &mut orders));
    assert_eq!(
        report(&mut set, "x", AgentSpanState::Stopped, 10),
        ["x:remove"]
    );
    assert_eq!(set.role_of("x"), None);
    assert!(set.handle_move(&id("b"), &mut orders));
}

#[test]
fn remove_stops_every_capture_then_forgets_the_span() {
    let mut set = replicating_on("a");
    let mut orders = Vec::new();
    set.handle_move(&id("b"), &mut orders);
    orders.clear();
    set.handle_remove(&mut orders);
    assert_eq!(render(&orders), ["a:remove", "b:remove"]);
    assert_eq!(set.state(), SpanState::Removing);
    assert_eq!(
        report(&mut set, "a", AgentSpanState::Replicating, 10),
        ["a:remove"]
    );
    assert_eq!(
        report(&mut set, "a", AgentSpanState::Stopped, 10),
        ["a:remove"]
    );
    assert!(!set.is_removed());
    assert!(report(&mut set, "b", AgentSpanState::Absent, 0).is_empty());
    assert!(set.is_removed());
}

#[test]
fn progress_never_moves_back() {
    let mut set = replicating_on("a");
    report(&mut set, "a", AgentSpanState::Replicating, 30);
    report(&mut set, "a", AgentSpanState::Replicating, 20);
    assert_eq!(set.checkpoint(), Checkpoint::at(30));
}

fn statuses(reports: &[(&str, AgentSpanState, u64)]) -> BTreeMap<CaptureId, SpanStatus> {
    reports
        .iter()
        .map(|(capture_id, state, checkpoint)| {
            (
                id(capture_id),
                SpanStatus {
                    span: span().span_ref(),
                    state: *state,
                    checkpoint: Checkpoint::at(*checkpoint),
                },
            )
        })
        .collect()
}

#[test]
fn rebuild_keeps_a_running_span_where_it_runs() {
    let mut orders = Vec::new();
    let set = ReplicationSet::rebuild(
        span(),
        Checkpoint::at(10),
        &statuses(&[("a", AgentSpanState::Replicating, 40)]),
        &mut orders,
    );
    assert!(orders.is_empty());
    assert_eq!(set.state(), SpanState::Replicating);
    assert_eq!(set.primary(), Some(&id("a")));
    assert_eq!(set.checkpoint(), Checkpoint::at(40));
}

#[test]
fn rebuild_stops_all_but_the_most_advanced_of_two_runners() {
    let mut orders = Vec::new();
    let set = ReplicationSet::rebuild(
        span(),
        Checkpoint::at(10),
        &statuses(&[
            ("a", AgentSpanState::Replicating, 40),
            ("b", AgentSpanState::Replicating, 50),
            ("c", AgentSpanState::Replicating, 45),
        ]),
        &mut orders,
    );
    assert_eq!(render(&orders), ["a:remove", "c:remove"]);
    assert_eq!(set.state(), SpanState::Replicating);
    assert_eq!(set.primary(), Some(&id("b")));
    assert_eq!(set.role_of("a"), Some(Role::Undetermined));
    assert_eq!(set.checkpoint(), Checkpoint::at(50));
}

#[test]
fn rebuild_resumes_a_committed_move() {
    let mut orders = Vec::new();
    let set = ReplicationSet::rebuild(
        span(),
        Checkpoint::at(10),
        &statuses(&[
            ("a", AgentSpanState::Replicating, 40),
            ("b", AgentSpanState::Prepared, 10),
        ]),
        &mut orders,
    );
    assert_eq!(render(&orders), ["a:remove"]);
    assert_eq!(set.state(), SpanState::Commit);
    assert_eq!(set.secondary(), Some(&id("b")));
}

#[test]
fn rebuild_promotes_a_lone_prepared_secondary_only_when_nobody_may_run_the_span() {
    let mut orders = Vec::new();
    let set = ReplicationSet::rebuild(
        span(),
        Checkpoint::at(10),
        &statuses(&[
            ("a", AgentSpanState::Stopping, 40),
            ("b", AgentSpanState::Prepared, 10),
            ("c", AgentSpanState::Stopped, 41),
        ]),
        &mut orders,
    );
    assert_eq!(render(&orders), ["c:remove"]);
    assert_eq!(set.state(), SpanState::Commit);
    assert_eq!(set.primary(), None);

    let mut orders = Vec::new();
    let set = ReplicationSet::rebuild(
        span(),
        Checkpoint::at(10),
        &statuses(&[("b", AgentSpanState::Prepared, 10)]),
        &mut orders,
    );
    assert_eq!(render(&orders), ["b:add-replicate"]);
    assert_eq!(set.primary(), Some(&id("b")));
}
