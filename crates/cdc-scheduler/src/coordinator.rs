//! The owner side: one coordinator places every changefeed's spans on the captures, after TiCDC
//! v3's coordinator (`cdc/scheduler/internal/v3/coordinator.go`, `member/capture_manager.go`,
//! `replication/replication_manager.go` and the `scheduler/` directory in pingcap/tiflow).
//!
//! It is pure: the alive captures, the changefeeds' spans, the agents' messages and the time come
//! in; messages for the agents go out.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cdc_model::{CaptureId, ChangeFeedId};
use tracing::{debug, info, warn};

use crate::config::SchedulerConfig;
use crate::error::{Error, Result};
use crate::message::{
    AgentRequest, Dispatch, Epoch, Heartbeat, OwnerResponse, OwnerRevision, SpanStatus, ToAgent,
    ToOwner,
};
use crate::replication::{Order, ReplicationSet};
use crate::span::{
    AgentSpanState, Checkpoint, Span, SpanId, SpanRef, SpanState, advance_watermark,
};

/// An alive capture, as the owner's view of the cluster has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureView {
    /// The capture.
    pub capture_id: CaptureId,
    /// The capture is shutting down or draining: give it no span and move its spans away.
    pub stopping: bool,
}

/// One span as the coordinator sees it (the changefeed detail of the HTTP API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanView {
    /// The span.
    pub span: Span,
    /// The capture that replicates it (or is about to), if any.
    pub capture_id: Option<CaptureId>,
    /// Its state.
    pub state: SpanState,
    /// Its progress.
    pub checkpoint: Checkpoint,
}

#[derive(Debug, Clone, Default)]
struct CaptureStatus {
    /// Learned from the first heartbeat response; `None` until then (uninitialized).
    epoch: Option<Epoch>,
    stopping_input: bool,
    stopping_reported: bool,
    /// The spans reported before the coordinator was initialized, to rebuild from.
    initial_report: Vec<SpanStatus>,
}

#[derive(Debug, Clone, Default)]
struct Changefeed {
    /// The spans the changefeed must run.
    spans: BTreeMap<SpanId, Span>,
    /// The record of every span that runs or ran, desired or not.
    sets: BTreeMap<SpanId, ReplicationSet>,
    /// The changefeed's watermark; new spans start there.
    checkpoint: Checkpoint,
    /// Removed: forgotten once none of its spans is left on any capture.
    removed: bool,
}

/// The owner's scheduler for all changefeeds.
///
/// Call [`upsert_changefeed`](Coordinator::upsert_changefeed) for every changefeed before the
/// first [`tick`](Coordinator::tick): once initialized, spans the coordinator is not told to run
/// are stopped.
#[derive(Debug)]
pub struct Coordinator {
    owner_id: CaptureId,
    owner_revision: OwnerRevision,
    config: SchedulerConfig,
    captures: BTreeMap<CaptureId, CaptureStatus>,
    initialized: bool,
    changefeeds: BTreeMap<ChangeFeedId, Changefeed>,
    drain_targets: BTreeSet<CaptureId>,
    last_heartbeat: Option<Duration>,
    last_balance: Option<Duration>,
    /// Look for an uneven spread at the next tick: the captures changed, or the last look left
    /// moves to do (TiCDC's `forceBalance`).
    balance_soon: bool,
}

impl Coordinator {
    /// A coordinator for the owner on `owner_id` elected at `owner_revision`.
    pub fn new(
        owner_id: CaptureId,
        owner_revision: OwnerRevision,
        config: SchedulerConfig,
    ) -> Result<Coordinator> {
        config.validate()?;
        Ok(Coordinator {
            owner_id,
            owner_revision,
            config,
            captures: BTreeMap::new(),
            initialized: false,
            changefeeds: BTreeMap::new(),
            drain_targets: BTreeSet::new(),
            last_heartbeat: None,
            last_balance: None,
            balance_soon: false,
        })
    }

    /// The owner's capture.
    pub fn owner_id(&self) -> &CaptureId {
        &self.owner_id
    }

    /// The owner's revision.
    pub fn owner_revision(&self) -> OwnerRevision {
        self.owner_revision
    }

    /// Whether every capture has answered a heartbeat and the schedule was rebuilt from them.
    pub fn is_initialized(&self) -> bool {
        self.initialized
    }

    /// Sets the spans `changefeed` must run, and its checkpoint (it never moves back), where new
    /// spans start. Spans left out are removed from their captures.
    pub fn upsert_changefeed(
        &mut self,
        changefeed: ChangeFeedId,
        spans: Vec<Span>,
        checkpoint: Checkpoint,
    ) {
        let entry = self.changefeeds.entry(changefeed).or_default();
        entry.spans = spans.into_iter().map(|span| (span.span_id, span)).collect();
        entry.checkpoint.merge(checkpoint);
        entry.removed = false;
    }

    /// Stops every span of `changefeed`; the coordinator forgets it once they are all stopped.
    pub fn remove_changefeed(&mut self, changefeed: &ChangeFeedId) {
        if let Some(entry) = self.changefeeds.get_mut(changefeed) {
            entry.spans.clear();
            entry.removed = true;
        }
    }

    /// Starts moving every span away from `capture_id` and answers how many it still has (0 when
    /// done). It stays drained: it is given no span until it leaves the cluster.
    pub fn drain(&mut self, capture_id: &CaptureId) -> Result<usize> {
        if *capture_id == self.owner_id {
            return Err(Error::DrainOwner {
                capture_id: capture_id.clone(),
            });
        }
        if !self.captures.contains_key(capture_id) {
            return Err(Error::CaptureNotFound {
                capture_id: capture_id.clone(),
            });
        }
        if !self.drain_targets.contains(capture_id) {
            let others = self
                .captures
                .iter()
                .any(|(other, status)| other != capture_id && !self.is_stopping(other, status));
            if !others {
                return Err(Error::DrainOnlyCapture {
                    capture_id: capture_id.clone(),
                });
            }
            info!(capture_id, "drain capture");
            self.drain_targets.insert(capture_id.clone());
        }
        Ok(self.span_count(capture_id))
    }

    /// How many spans `capture_id` has in any role.
    pub fn span_count(&self, capture_id: &str) -> usize {
        self.changefeeds
            .values()
            .flat_map(|changefeed| changefeed.sets.values())
            .filter(|set| set.role_of(capture_id).is_some())
            .count()
    }

    /// The record of one span, if any.
    pub fn replication_set(&self, span: &SpanRef) -> Option<&ReplicationSet> {
        self.changefeeds
            .get(&span.changefeed)
            .and_then(|changefeed| changefeed.sets.get(&span.span_id))
    }

    /// The spans of `changefeed` as the coordinator sees them, or `None` for an unknown one.
    pub fn span_views(&self, changefeed: &ChangeFeedId) -> Option<Vec<SpanView>> {
        let entry = self.changefeeds.get(changefeed)?;
        Some(
            entry
                .spans
                .values()
                .map(|span| match entry.sets.get(&span.span_id) {
                    Some(set) => SpanView {
                        span: span.clone(),
                        capture_id: set.primary().cloned(),
                        state: set.state(),
                        checkpoint: set.checkpoint(),
                    },
                    None => SpanView {
                        span: span.clone(),
                        capture_id: None,
                        state: SpanState::Absent,
                        checkpoint: entry.checkpoint,
                    },
                })
                .collect(),
        )
    }

    /// The spans of `changefeed` per capture that replicates them (TiCDC's task status), or
    /// `None` for an unknown changefeed.
    pub fn spans_by_capture(
        &self,
        changefeed: &ChangeFeedId,
    ) -> Option<BTreeMap<CaptureId, Vec<SpanId>>> {
        let entry = self.changefeeds.get(changefeed)?;
        let mut by_capture: BTreeMap<CaptureId, Vec<SpanId>> = BTreeMap::new();
        for (span_id, set) in &entry.sets {
            if let Some(primary) = set.primary() {
                by_capture
                    .entry(primary.clone())
                    .or_default()
                    .push(*span_id);
            }
        }
        Some(by_capture)
    }

    /// Whether every span of every changefeed replicates and no removed span is left.
    pub fn is_all_replicating(&self) -> bool {
        self.initialized
            && self.changefeeds.values().all(|changefeed| {
                changefeed.sets.len() == changefeed.spans.len()
                    && changefeed.spans.keys().all(|span_id| {
                        changefeed.sets.get(span_id).is_some_and(|set| {
                            set.state() == SpanState::Replicating && set.captures().count() == 1
                        })
                    })
            })
    }

    /// Advances and returns the watermark of `changefeed`: the minimum over its spans, never
    /// moving back (see [`advance_watermark`]). `None` before initialization, for an unknown
    /// changefeed, or while one of its spans has no record yet.
    pub fn advance_changefeed(&mut self, changefeed: &ChangeFeedId) -> Option<Checkpoint> {
        if !self.initialized {
            return None;
        }
        let entry = self.changefeeds.get_mut(changefeed)?;
        let mut spans = Vec::with_capacity(entry.spans.len());
        for span_id in entry.spans.keys() {
            spans.push(entry.sets.get(span_id)?.checkpoint());
        }
        entry.checkpoint = Checkpoint {
            checkpoint: advance_watermark(
                entry.checkpoint.checkpoint,
                spans.iter().map(|c| c.checkpoint),
            ),
            resolved: advance_watermark(
                entry.checkpoint.resolved,
                spans.iter().map(|c| c.resolved),
            ),
        };
        Some(entry.checkpoint)
    }

    /// Handles a message from an agent and answers with messages for agents.
    pub fn handle_message(&mut self, message: ToOwner) -> Vec<ToAgent> {
        if message.to != self.owner_id || message.owner_revision != self.owner_revision {
            debug!(
                from = message.from,
                owner_revision = message.owner_revision,
                "ignore a message for another owner"
            );
            return Vec::new();
        }
        let mut orders = Vec::new();
        let Some(status) = self.captures.get_mut(&message.from) else {
            debug!(
                from = message.from,
                "ignore a message from an unknown capture"
            );
            return Vec::new();
        };
        match status.epoch {
            None => status.epoch = Some(message.epoch),
            Some(epoch) if message.epoch == epoch => {}
            Some(epoch) if message.epoch > epoch => {
                info!(
                    capture_id = message.from,
                    "agent restarted, its spans are gone"
                );
                status.epoch = Some(message.epoch);
                if self.initialized {
                    for changefeed in self.changefeeds.values_mut() {
                        for set in changefeed.sets.values_mut() {
                            set.handle_capture_gone(&message.from, &mut orders);
                        }
                    }
                }
            }
            Some(_) => {
                debug!(from = message.from, "ignore a message from a former agent");
                return Vec::new();
            }
        }
        let from = message.from;
        match message.body {
            OwnerResponse::Heartbeat(response) => {
                if let Some(status) = self.captures.get_mut(&from) {
                    status.stopping_reported = response.stopping;
                    if !self.initialized {
                        status.initial_report = response.spans;
                        return self.to_messages(orders);
                    }
                }
                let mut reported = BTreeSet::new();
                for span_status in response.spans {
                    reported.insert(span_status.span.clone());
                    self.route_status(&from, span_status, &mut orders);
                }
                // A span this capture has a role in but did not report is absent from it.
                for (changefeed_id, changefeed) in &mut self.changefeeds {
                    for (span_id, set) in &mut changefeed.sets {
                        if set.role_of(&from).is_some()
                            && !reported.contains(&SpanRef {
                                changefeed: changefeed_id.clone(),
                                span_id: *span_id,
                            })
                        {
                            set.handle_status(&from, AgentSpanState::Absent, None, &mut orders);
                        }
                    }
                }
            }
            OwnerResponse::Dispatch(response) => {
                if self.initialized {
                    let span = response.status.span.clone();
                    self.route_status(&from, response.status, &mut orders);
                    self.sweep_span(&span);
                }
                return self.to_messages(orders);
            }
        }
        self.sweep();
        self.to_messages(orders)
    }

    fn route_status(&mut self, from: &CaptureId, status: SpanStatus, orders: &mut Vec<Order>) {
        let set = self
            .changefeeds
            .get_mut(&status.span.changefeed)
            .and_then(|changefeed| changefeed.sets.get_mut(&status.span.span_id));
        match set {
            Some(set) => {
                let checkpoint =
                    (status.state != AgentSpanState::Absent).then_some(status.checkpoint);
                set.handle_status(from, status.state, checkpoint, orders);
            }
            None => {
                if status.state != AgentSpanState::Absent {
                    if status.state != AgentSpanState::Stopped {
                        warn!(capture_id = from, span = %status.span, "capture runs a span the owner does not know, stopping it");
                    }
                    orders.push(Order {
                        to: from.clone(),
                        dispatch: Dispatch::Remove { span: status.span },
                    });
                }
            }
        }
    }

    /// Forgets `span` if it is removed, and its changefeed if that is removed and empty.
    fn sweep_span(&mut self, span: &SpanRef) {
        let Some(changefeed) = self.changefeeds.get_mut(&span.changefeed) else {
            return;
        };
        if changefeed
            .sets
            .get(&span.span_id)
            .is_some_and(ReplicationSet::is_removed)
        {
            changefeed.sets.remove(&span.span_id);
        }
        if changefeed.removed && changefeed.sets.is_empty() {
            self.changefeeds.remove(&span.changefeed);
        }
    }

    /// Forgets removed spans and changefeeds.
    fn sweep(&mut self) {
        for changefeed in self.changefeeds.values_mut() {
            changefeed.sets.retain(|_, set| !set.is_removed());
        }
        self.changefeeds
            .retain(|_, changefeed| !(changefeed.removed && changefeed.sets.is_empty()));
    }

    /// Advances the schedule: takes in the alive captures, sends heartbeats, rebuilds the schedule
    /// once every capture answered, and adds, moves and removes spans.
    pub fn tick(&mut self, now: Duration, captures: &[CaptureView]) -> Vec<ToAgent> {
        let mut orders = Vec::new();
        let found = self.update_captures(captures, &mut orders);

        // Every capture gets a heartbeat each interval, a new one at once.
        let heartbeat_due = self
            .last_heartbeat
            .is_none_or(|last| now.saturating_sub(last) >= self.config.heartbeat_interval);
        let mut messages: Vec<ToAgent> = if heartbeat_due {
            self.last_heartbeat = Some(now);
            self.captures.keys().map(|c| self.heartbeat(c)).collect()
        } else {
            found.iter().map(|c| self.heartbeat(c)).collect()
        };

        let all_answered = self.captures.values().all(|status| status.epoch.is_some());
        if !self.initialized {
            if self.captures.is_empty() || !all_answered {
                return messages;
            }
            self.rebuild(&mut orders);
        }
        // A capture that has not answered yet may still run spans of a former owner: schedule
        // nothing until it has (TiCDC's `CheckAllCaptureInitialized`).
        if all_answered {
            let balance_due = self.balance_soon
                || self
                    .last_balance
                    .is_none_or(|last| now.saturating_sub(last) >= self.config.balance_interval);
            if balance_due {
                self.last_balance = Some(now);
            }
            self.balance_soon = self.schedule(balance_due, &mut orders);
        }
        self.sweep();
        messages.extend(self.to_messages(orders));
        messages
    }

    /// Takes in the alive captures; answers the new ones.
    fn update_captures(
        &mut self,
        captures: &[CaptureView],
        orders: &mut Vec<Order>,
    ) -> Vec<CaptureId> {
        let alive: BTreeMap<&CaptureId, &CaptureView> = captures
            .iter()
            .map(|view| (&view.capture_id, view))
            .collect();
        let gone: Vec<CaptureId> = self
            .captures
            .keys()
            .filter(|capture_id| !alive.contains_key(capture_id))
            .cloned()
            .collect();
        for capture_id in gone {
            info!(capture_id, "capture gone, its spans are rescheduled");
            self.balance_soon = true;
            self.captures.remove(&capture_id);
            self.drain_targets.remove(&capture_id);
            if self.initialized {
                for changefeed in self.changefeeds.values_mut() {
                    for set in changefeed.sets.values_mut() {
                        set.handle_capture_gone(&capture_id, orders);
                    }
                }
            }
        }
        let mut found = Vec::new();
        for (capture_id, view) in alive {
            let status = match self.captures.get_mut(capture_id) {
                Some(status) => status,
                None => {
                    info!(capture_id, "capture found");
                    found.push(capture_id.clone());
                    self.balance_soon = true;
                    self.captures.entry(capture_id.clone()).or_default()
                }
            };
            status.stopping_input = view.stopping;
        }
        found
    }

    fn heartbeat(&self, capture_id: &CaptureId) -> ToAgent {
        ToAgent {
            from: self.owner_id.clone(),
            to: capture_id.clone(),
            owner_revision: self.owner_revision,
            epoch: self
                .captures
                .get(capture_id)
                .and_then(|status| status.epoch),
            body: AgentRequest::Heartbeat(Heartbeat {
                is_stopping: self.drain_targets.contains(capture_id),
            }),
        }
    }

    /// Builds the record of every reported span from the first heartbeat responses.
    fn rebuild(&mut self, orders: &mut Vec<Order>) {
        let mut reports: BTreeMap<SpanRef, BTreeMap<CaptureId, SpanStatus>> = BTreeMap::new();
        for (capture_id, status) in &mut self.captures {
            for span_status in std::mem::take(&mut status.initial_report) {
                reports
                    .entry(span_status.span.clone())
                    .or_default()
                    .insert(capture_id.clone(), span_status);
            }
        }
        for (span_ref, by_capture) in reports {
            let changefeed = self
                .changefeeds
                .entry(span_ref.changefeed.clone())
                .or_insert_with(|| Changefeed {
                    removed: true,
                    ..Changefeed::default()
                });
            let span = match changefeed.spans.get(&span_ref.span_id) {
                Some(span) => span.clone(),
                // Not a span this owner runs: recorded so that it gets removed.
                None => Span {
                    span_id: span_ref.span_id,
                    changefeed: span_ref.changefeed.clone(),
                    start_key: Vec::new(),
                    end_key: Vec::new(),
                },
            };
            let set = ReplicationSet::rebuild(span, changefeed.checkpoint, &by_capture, orders);
            changefeed.sets.insert(span_ref.span_id, set);
        }
        info!(
            n_captures = self.captures.len(),
            "schedule rebuilt from heartbeats"
        );
        self.initialized = true;
    }

    fn is_stopping(&self, capture_id: &CaptureId, status: &CaptureStatus) -> bool {
        status.stopping_input || status.stopping_reported || self.drain_targets.contains(capture_id)
    }

    /// Adds, moves and removes spans; answers whether some changefeed is left unevenly spread.
    fn schedule(&mut self, balance_due: bool, orders: &mut Vec<Order>) -> bool {
        let schedulable: Vec<CaptureId> = self
            .captures
            .iter()
            .filter(|(capture_id, status)| !self.is_stopping(capture_id, status))
            .map(|(capture_id, _)| capture_id.clone())
            .collect();
        let stopping: BTreeSet<CaptureId> = self
            .captures
            .iter()
            .filter(|(capture_id, status)| self.is_stopping(capture_id, status))
            .map(|(capture_id, _)| capture_id.clone())
            .collect();
        // Spans per capture over all changefeeds, to break ties.
        let mut global_load: BTreeMap<CaptureId, usize> =
            schedulable.iter().map(|c| (c.clone(), 0)).collect();
        for changefeed in self.changefeeds.values() {
            for set in changefeed.sets.values() {
                if let Some(load) = destination(set).and_then(|c| global_load.get_mut(c)) {
                    *load += 1;
                }
            }
        }
        let config = &self.config;
        let mut uneven = false;
        for changefeed in self.changefeeds.values_mut() {
            uneven |= schedule_changefeed(
                changefeed,
                config,
                &schedulable,
                &stopping,
                &mut global_load,
                balance_due,
                orders,
            );
        }
        uneven
    }

    fn to_messages(&self, orders: Vec<Order>) -> Vec<ToAgent> {
        orders
            .into_iter()
            .filter_map(|order| {
                // An order for a capture that is gone or has not answered yet is dropped: the
                // heartbeat responses make the span's record ask again.
                let epoch = self.captures.get(&order.to)?.epoch?;
                Some(ToAgent {
                    from: self.owner_id.clone(),
                    to: order.to,
                    owner_revision: self.owner_revision,
                    epoch: Some(epoch),
                    body: AgentRequest::Dispatch(order.dispatch),
                })
            })
            .collect()
    }
}

/// The capture a span ends up on once the add or move under way completes.
fn destination(set: &ReplicationSet) -> Option<&CaptureId> {
    match set.state() {
        SpanState::Removing => None,
        SpanState::Absent | SpanState::Prepare | SpanState::Commit | SpanState::Replicating => {
            set.secondary().or(set.primary())
        }
    }
}

/// The least loaded capture of `candidates` by this changefeed's load, then the global load,
/// then the ID.
fn least_loaded<'a>(
    candidates: impl Iterator<Item = &'a CaptureId>,
    load: &BTreeMap<CaptureId, usize>,
    global_load: &BTreeMap<CaptureId, usize>,
) -> Option<CaptureId> {
    candidates
        .min_by_key(|c| {
            (
                load.get(*c).copied().unwrap_or(0),
                global_load.get(*c).copied().unwrap_or(0),
                *c,
            )
        })
        .cloned()
}

fn schedule_changefeed(
    changefeed: &mut Changefeed,
    config: &SchedulerConfig,
    schedulable: &[CaptureId],
    stopping: &BTreeSet<CaptureId>,
    global_load: &mut BTreeMap<CaptureId, usize>,
    balance_due: bool,
    orders: &mut Vec<Order>,
) -> bool {
    // Spans no longer desired are removed; desired spans get a record.
    for (span_id, set) in &mut changefeed.sets {
        if !changefeed.spans.contains_key(span_id) {
            set.handle_remove(orders);
        }
    }
    for (span_id, span) in &changefeed.spans {
        changefeed
            .sets
            .entry(*span_id)
            .or_insert_with(|| ReplicationSet::new(span.clone(), changefeed.checkpoint));
    }
    if schedulable.is_empty() {
        return false;
    }
    let mut load: BTreeMap<CaptureId, usize> = schedulable.iter().map(|c| (c.clone(), 0)).collect();
    for set in changefeed.sets.values() {
        if let Some(n) = destination(set).and_then(|c| load.get_mut(c)) {
            *n += 1;
        }
    }

    // Adds, at most `add_batch_size` per tick.
    let mut added = 0;
    for set in changefeed.sets.values_mut() {
        if added >= config.add_batch_size {
            break;
        }
        if set.state() != SpanState::Absent || set.primary().is_some() {
            continue;
        }
        let candidates = schedulable.iter().filter(|c| set.role_of(c).is_none());
        let Some(target) = least_loaded(candidates, &load, global_load) else {
            continue;
        };
        if set.handle_add(&target, orders) {
            added += 1;
            *load.entry(target.clone()).or_default() += 1;
            *global_load.entry(target).or_default() += 1;
        }
    }

    // Moves: away from stopping captures first, then to even the spread, while fewer than
    // `max_task_concurrency` spans of this changefeed are in transition.
    let mut in_flight = changefeed
        .sets
        .values()
        .filter(|set| set.is_in_transition())
        .count();
    let mut drained = false;
    for set in changefeed.sets.values_mut() {
        if in_flight >= config.max_task_concurrency {
            // No room to balance either: look again soon if it was time to.
            return balance_due;
        }
        if set.state() != SpanState::Replicating {
            continue;
        }
        let Some(primary) = set.primary().cloned() else {
            continue;
        };
        if !stopping.contains(&primary) {
            continue;
        }
        drained = true;
        let Some(target) = least_loaded(schedulable.iter(), &load, global_load) else {
            return false;
        };
        if set.handle_move(&target, orders) {
            in_flight += 1;
            *load.entry(target.clone()).or_default() += 1;
            *global_load.entry(target).or_default() += 1;
        }
    }
    if drained || !balance_due {
        return false;
    }
    // Balance: move spans from the busiest capture to the idlest until they differ by at most one.
    while in_flight < config.max_task_concurrency {
        let (Some((most, most_n)), Some((least, least_n))) = (
            load.iter()
                .max_by_key(|(c, n)| (**n, std::cmp::Reverse(*c))),
            load.iter().min_by_key(|(c, n)| (**n, *c)),
        ) else {
            return false;
        };
        if most_n - least_n <= 1 {
            return false;
        }
        let (most, least) = (most.clone(), least.clone());
        let Some(set) = changefeed.sets.values_mut().find(|set| {
            set.state() == SpanState::Replicating
                && set.primary() == Some(&most)
                && set.captures().count() == 1
        }) else {
            return true;
        };
        if !set.handle_move(&least, orders) {
            return true;
        }
        debug!(span = %set.span().span_ref(), from = most, to = least, "balance move");
        in_flight += 1;
        *load.entry(most.clone()).or_default() -= 1;
        *load.entry(least.clone()).or_default() += 1;
        if let Some(n) = global_load.get_mut(&most) {
            *n = n.saturating_sub(1);
        }
        *global_load.entry(least).or_default() += 1;
    }
    // Out of room for moves; more may be needed.
    true
}

#[cfg(test)]
mod tests;
