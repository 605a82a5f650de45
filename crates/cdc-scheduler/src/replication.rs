//! The owner's state machine for one span: TiCDC v3's replication set
//! (`cdc/scheduler/internal/v3/replication/replication_set.go` in pingcap/tiflow).
//!
//! ```text
//!   add             prepared           former primary stopped
//! Absent ──> Prepare ────────> Commit ─────────────────> (promote) ──> Replicating
//!               ^                                                        │  │
//!               └──────────────────────── move ──────────────────────────┘  │ remove
//!                                                                 Removing <─┘
//! ```
//!
//! Roles: at most one primary (replicates, or is about to), at most one secondary (prepares, to
//! become the primary), and any number of undetermined captures (they may still run the span and
//! are being told to stop). The safety rule: a secondary is promoted, and told to replicate, only
//! when there is no primary and no undetermined capture, and a role is cleared only when its
//! capture reports the span stopped or absent, or the capture is gone from the cluster.

use std::collections::{BTreeMap, BTreeSet};

use cdc_model::CaptureId;
use tracing::{debug, warn};

use crate::message::{Dispatch, SpanStatus};
use crate::span::{AgentSpanState, Checkpoint, Span, SpanState};

/// The role of a capture in a [`ReplicationSet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// It replicates the span (or has been told to).
    Primary,
    /// It prepares the span, to take it over.
    Secondary,
    /// It may run the span and is being told to stop.
    Undetermined,
}

/// An order for one capture, produced by a [`ReplicationSet`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// The capture to send it to.
    pub to: CaptureId,
    /// What to tell it.
    pub dispatch: Dispatch,
}

/// The owner's record of one span: who has it, in which role, and how far it got.
#[derive(Debug, Clone)]
pub struct ReplicationSet {
    span: Span,
    state: SpanState,
    primary: Option<CaptureId>,
    secondary: Option<CaptureId>,
    undetermined: BTreeSet<CaptureId>,
    checkpoint: Checkpoint,
}

impl ReplicationSet {
    /// A span nobody has yet, to start from `checkpoint`.
    pub fn new(span: Span, checkpoint: Checkpoint) -> ReplicationSet {
        ReplicationSet {
            span,
            state: SpanState::Absent,
            primary: None,
            secondary: None,
            undetermined: BTreeSet::new(),
            checkpoint,
        }
    }

    /// Rebuilds the record of a span from what the agents report after an owner change, so that
    /// no span that runs is restarted. `reports` maps each capture to its status of this span.
    ///
    /// A span replicating on several captures keeps the most advanced one as the primary; the
    /// others become undetermined and are told to stop. A prepared secondary next to a primary
    /// resumes the move the former owner committed.
    pub fn rebuild(
        span: Span,
        checkpoint: Checkpoint,
        reports: &BTreeMap<CaptureId, SpanStatus>,
        orders: &mut Vec<Order>,
    ) -> ReplicationSet {
        let mut set = ReplicationSet::new(span, checkpoint);
        let mut primary: Option<(&CaptureId, Checkpoint)> = None;
        let mut secondary: Option<(&CaptureId, AgentSpanState)> = None;
        let mut extra = Vec::new();
        for (capture_id, status) in reports {
            set.checkpoint.merge(status.checkpoint);
            match status.state {
                AgentSpanState::Replicating => match primary {
                    Some((_, best)) if best.checkpoint >= status.checkpoint.checkpoint => {
                        extra.push(capture_id)
                    }
                    Some((former, _)) => {
                        extra.push(former);
                        primary = Some((capture_id, status.checkpoint));
                    }
                    None => primary = Some((capture_id, status.checkpoint)),
                },
                AgentSpanState::Prepared => match secondary {
                    Some((former, AgentSpanState::Preparing)) => {
                        extra.push(former);
                        secondary = Some((capture_id, status.state));
                    }
                    Some(_) => extra.push(capture_id),
                    None => secondary = Some((capture_id, status.state)),
                },
                AgentSpanState::Preparing => match secondary {
                    Some(_) => extra.push(capture_id),
                    None => secondary = Some((capture_id, status.state)),
                },
                AgentSpanState::Stopping => {
                    set.undetermined.insert(capture_id.clone());
                }
                AgentSpanState::Stopped => orders.push(set.remove_order(capture_id)),
                AgentSpanState::Absent => {}
            }
        }
        for capture_id in extra {
            warn!(span = %set.span.span_ref(), capture_id, "span found on more than one capture, stopping this one");
            set.undetermined.insert(capture_id.clone());
            orders.push(set.remove_order(capture_id));
        }
        set.primary = primary.map(|(capture_id, _)| capture_id.clone());
        set.secondary = secondary.map(|(capture_id, _)| capture_id.clone());
        set.state = match (&set.primary, secondary) {
            (_, Some((_, AgentSpanState::Prepared))) => SpanState::Commit,
            (_, Some(_)) => SpanState::Prepare,
            (Some(_), None) => SpanState::Replicating,
            (None, None) => SpanState::Absent,
        };
        if set.state == SpanState::Commit {
            set.evaluate_commit(orders);
        }
        debug!(span = %set.span.span_ref(), state = %set.state, primary = ?set.primary, secondary = ?set.secondary, "span rebuilt from heartbeats");
        set
    }

    /// The span.
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// The state.
    pub fn state(&self) -> SpanState {
        self.state
    }

    /// The capture that replicates the span (or has been told to).
    pub fn primary(&self) -> Option<&CaptureId> {
        self.primary.as_ref()
    }

    /// The capture that prepares the span.
    pub fn secondary(&self) -> Option<&CaptureId> {
        self.secondary.as_ref()
    }

    /// The span's progress: the most advanced any capture reported, never moving back.
    pub fn checkpoint(&self) -> Checkpoint {
        self.checkpoint
    }

    /// Every capture with a role, and the role.
    pub fn captures(&self) -> impl Iterator<Item = (&CaptureId, Role)> {
        self.primary
            .iter()
            .map(|capture_id| (capture_id, Role::Primary))
            .chain(
                self.secondary
                    .iter()
                    .map(|capture_id| (capture_id, Role::Secondary)),
            )
            .chain(
                self.undetermined
                    .iter()
                    .map(|capture_id| (capture_id, Role::Undetermined)),
            )
    }

    /// The role of `capture_id`, if it has one.
    pub fn role_of(&self, capture_id: &str) -> Option<Role> {
        if self.primary.as_deref() == Some(capture_id) {
            Some(Role::Primary)
        } else if self.secondary.as_deref() == Some(capture_id) {
            Some(Role::Secondary)
        } else if self.undetermined.contains(capture_id) {
            Some(Role::Undetermined)
        } else {
            None
        }
    }

    /// Whether the span has been removed from every capture and can be forgotten.
    pub fn is_removed(&self) -> bool {
        self.state == SpanState::Removing && self.captures().next().is_none()
    }

    /// Whether an add or a move of this span is under way.
    pub fn is_in_transition(&self) -> bool {
        match self.state {
            SpanState::Prepare | SpanState::Commit => true,
            SpanState::Absent | SpanState::Replicating | SpanState::Removing => false,
        }
    }

    /// Adds the span to `target` (first phase: prepare). Refused unless the span is absent and
    /// `target` has no role.
    pub fn handle_add(&mut self, target: &CaptureId, orders: &mut Vec<Order>) -> bool {
        if self.state != SpanState::Absent
            || self.primary.is_some()
            || self.secondary.is_some()
            || self.undetermined.contains(target)
        {
            return false;
        }
        self.secondary = Some(target.clone());
        self.transition(SpanState::Prepare, "add");
        orders.push(self.add_order(target, true));
        true
    }

    /// Moves the span to `target`: prepare there, then stop the primary, then promote. Refused
    /// unless the span replicates on exactly one other capture.
    pub fn handle_move(&mut self, target: &CaptureId, orders: &mut Vec<Order>) -> bool {
        if self.state != SpanState::Replicating
            || self.primary.is_none()
            || self.primary.as_ref() == Some(target)
            || self.secondary.is_some()
            || !self.undetermined.is_empty()
        {
            return false;
        }
        self.secondary = Some(target.clone());
        self.transition(SpanState::Prepare, "move");
        orders.push(self.add_order(target, true));
        true
    }

    /// Removes the span from every capture that has it, whatever its state.
    pub fn handle_remove(&mut self, orders: &mut Vec<Order>) {
        if self.state == SpanState::Removing {
            return;
        }
        self.transition(SpanState::Removing, "remove");
        let captures: Vec<CaptureId> = self.captures().map(|(c, _)| c.clone()).collect();
        for capture_id in &captures {
            orders.push(self.remove_order(capture_id));
        }
    }

    /// The capture is gone from the cluster (or its agent restarted): it runs nothing any more.
    pub fn handle_capture_gone(&mut self, capture_id: &CaptureId, orders: &mut Vec<Order>) {
        // As if it reported the span absent, which for every role means the same as stopped
        // (a secondary in `prepare` is not asked again: it is no longer in the role).
        if self.role_of(capture_id) == Some(Role::Secondary) {
            self.secondary = None;
            self.after_secondary_lost();
        } else {
            self.handle_status(capture_id, AgentSpanState::Absent, None, orders);
        }
    }

    /// Takes in what `capture_id` reports about the span (`checkpoint` is `None` when the report
    /// carries no progress, as for a span missing from a heartbeat response).
    pub fn handle_status(
        &mut self,
        capture_id: &CaptureId,
        state: AgentSpanState,
        checkpoint: Option<Checkpoint>,
        orders: &mut Vec<Order>,
    ) {
        if let Some(checkpoint) = checkpoint {
            self.checkpoint.merge(checkpoint);
        }
        match self.role_of(capture_id) {
            None => {
                if !state.is_gone() {
                    warn!(span = %self.span.span_ref(), capture_id, %state, "span runs on a capture the owner did not place it on, stopping it");
                    self.undetermined.insert(capture_id.clone());
                    orders.push(self.remove_order(capture_id));
                }
            }
            Some(Role::Undetermined) => {
                if state.is_gone() {
                    self.undetermined.remove(capture_id);
                    if self.state == SpanState::Commit {
                        self.evaluate_commit(orders);
                    }
                } else if state != AgentSpanState::Stopping {
                    orders.push(self.remove_order(capture_id));
                }
            }
            Some(Role::Primary) => self.on_primary(capture_id, state, orders),
            Some(Role::Secondary) => self.on_secondary(capture_id, state, orders),
        }
        if state == AgentSpanState::Stopped {
            // Acknowledge the stop, so that the agent forgets the span. The agent receives every
            // order sent before this one first, and they find the span stopped.
            orders.push(self.remove_order(capture_id));
        }
    }

    fn on_primary(
        &mut self,
        capture_id: &CaptureId,
        state: AgentSpanState,
        orders: &mut Vec<Order>,
    ) {
        match state {
            AgentSpanState::Replicating => match self.state {
                SpanState::Commit if self.secondary.is_some() => {
                    orders.push(self.remove_order(capture_id));
                }
                SpanState::Commit | SpanState::Absent => {
                    self.transition(SpanState::Replicating, "primary replicates");
                }
                SpanState::Removing => orders.push(self.remove_order(capture_id)),
                SpanState::Prepare | SpanState::Replicating => {}
            },
            AgentSpanState::Preparing | AgentSpanState::Prepared => match self.state {
                SpanState::Commit if self.secondary.is_some() => {
                    orders.push(self.remove_order(capture_id));
                }
                SpanState::Removing => orders.push(self.remove_order(capture_id)),
                SpanState::Commit
                | SpanState::Prepare
                | SpanState::Replicating
                | SpanState::Absent => orders.push(self.add_order(capture_id, false)),
            },
            AgentSpanState::Stopping => match self.state {
                SpanState::Commit if self.secondary.is_some() => {}
                SpanState::Removing => {}
                SpanState::Commit
                | SpanState::Prepare
                | SpanState::Replicating
                | SpanState::Absent => {
                    warn!(span = %self.span.span_ref(), capture_id, state = %self.state, "primary stops unasked");
                    self.primary = None;
                    self.undetermined.insert(capture_id.clone());
                    if self.state != SpanState::Prepare {
                        self.transition(SpanState::Absent, "primary stopping");
                    }
                }
            },
            AgentSpanState::Stopped | AgentSpanState::Absent => {
                self.primary = None;
                match self.state {
                    SpanState::Commit if self.secondary.is_some() => self.evaluate_commit(orders),
                    SpanState::Commit | SpanState::Replicating | SpanState::Absent => {
                        self.transition(SpanState::Absent, "primary stopped");
                    }
                    SpanState::Prepare | SpanState::Removing => {}
                }
            }
        }
    }

    fn on_secondary(
        &mut self,
        capture_id: &CaptureId,
        state: AgentSpanState,
        orders: &mut Vec<Order>,
    ) {
        match state {
            AgentSpanState::Absent if self.state == SpanState::Prepare => {
                // The add was lost, or has not arrived yet: ask again.
                orders.push(self.add_order(capture_id, true));
            }
            AgentSpanState::Absent | AgentSpanState::Stopped => {
                self.secondary = None;
                self.after_secondary_lost();
            }
            AgentSpanState::Preparing => {
                if self.state == SpanState::Removing {
                    orders.push(self.remove_order(capture_id));
                }
            }
            AgentSpanState::Prepared => match self.state {
                SpanState::Prepare => {
                    self.transition(SpanState::Commit, "secondary prepared");
                    self.evaluate_commit(orders);
                }
                SpanState::Commit => self.evaluate_commit(orders),
                SpanState::Removing => orders.push(self.remove_order(capture_id)),
                SpanState::Absent | SpanState::Replicating => {}
            },
            AgentSpanState::Replicating => {
                if self.state == SpanState::Removing {
                    orders.push(self.remove_order(capture_id));
                } else if self.primary.is_none() && self.undetermined.is_empty() {
                    warn!(span = %self.span.span_ref(), capture_id, "secondary replicates unasked, keeping it as the primary");
                    self.secondary = None;
                    self.primary = Some(capture_id.clone());
                    self.transition(SpanState::Replicating, "secondary replicates");
                } else {
                    warn!(span = %self.span.span_ref(), capture_id, "secondary replicates unasked, stopping it");
                    self.secondary = None;
                    self.undetermined.insert(capture_id.clone());
                    orders.push(self.remove_order(capture_id));
                    self.after_secondary_lost();
                }
            }
            AgentSpanState::Stopping => {
                if self.state != SpanState::Removing {
                    warn!(span = %self.span.span_ref(), capture_id, "secondary stops unasked");
                    self.secondary = None;
                    self.undetermined.insert(capture_id.clone());
                    self.after_secondary_lost();
                }
            }
        }
    }

    /// The secondary is gone: an add or a move under way falls back.
    fn after_secondary_lost(&mut self) {
        match self.state {
            SpanState::Prepare => {
                let next = if self.primary.is_some() {
                    SpanState::Replicating
                } else {
                    SpanState::Absent
                };
                self.transition(next, "secondary lost");
            }
            // With a primary, wait for it to report: it replicates on (the remove was lost) or
            // stops, and the state follows.
            SpanState::Commit if self.primary.is_none() => {
                self.transition(SpanState::Absent, "secondary lost");
            }
            SpanState::Commit
            | SpanState::Absent
            | SpanState::Replicating
            | SpanState::Removing => {}
        }
    }

    /// The second phase: stop the former primary, then promote the prepared secondary, but only
    /// when nobody else may still run the span.
    fn evaluate_commit(&mut self, orders: &mut Vec<Order>) {
        match (self.secondary.clone(), self.primary.clone()) {
            (Some(_), Some(primary)) => orders.push(self.remove_order(&primary)),
            (Some(secondary), None) => {
                if self.undetermined.is_empty() {
                    debug!(span = %self.span.span_ref(), capture_id = secondary, "promote secondary");
                    self.secondary = None;
                    self.primary = Some(secondary.clone());
                    orders.push(self.add_order(&secondary, false));
                }
            }
            (None, Some(_)) => {}
            (None, None) => self.transition(SpanState::Absent, "nobody left"),
        }
    }

    fn transition(&mut self, next: SpanState, why: &'static str) {
        if self.state != next {
            debug!(span = %self.span.span_ref(), from = %self.state, to = %next, why, "span state");
            self.state = next;
        }
    }

    fn add_order(&self, to: &CaptureId, prepare: bool) -> Order {
        Order {
            to: to.clone(),
            dispatch: Dispatch::Add {
                span: self.span.clone(),
                checkpoint: self.checkpoint,
                prepare,
            },
        }
    }

    fn remove_order(&self, to: &CaptureId) -> Order {
        Order {
            to: to.clone(),
            dispatch: Dispatch::Remove {
                span: self.span.span_ref(),
            },
        }
    }
}

#[cfg(test)]
mod tests;
