//! The owner's tick over the cluster state: API requests, the changefeed state machines, the
//! coordinator, and the checkpoint writes (TiCDC's `cdc/owner/owner.go` and
//! `cdc/owner/changefeed.go` in pingcap/tiflow).
//!
//! It performs no IO itself: it reads the snapshot, queues patches on it, and hands back the
//! messages for the agents; the caller sends them. Time comes in.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cdc_model::{
    AdminJobType, CaptureId, ChangeFeedId, ChangeFeedInfo, ChangeFeedStatus, ErrorReport,
    FeedState, UpstreamInfo, key,
};
use cdc_orchestrator::{
    ChangefeedReactorState, DataPatch, GlobalReactorState, PatchGroup, PatchView,
};
use cdc_scheduler::{
    CaptureView, Checkpoint, Coordinator, Span, SpanState, SpanView, ToAgent, ToOwner,
};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::api::{self, ApiError, FeedView, UpdatePlan};
use crate::config::OwnerConfig;
use crate::error::Result;
use crate::feed::{AdminJob, AdminRefused, FeedInput, FeedMachine, FeedPatch};
use cdc_scheduler::replica::ReplicaSpec;

/// How long a created changefeed counts as existing before its info is read back.
const CREATE_GRACE: Duration = Duration::from_secs(10);

/// How often an owner with no running changefeed hears from the captures.
const IDLE_HEARTBEAT: Duration = Duration::from_secs(10);

/// An answer: the HTTP status and the JSON body.
pub(crate) type Reply = (u16, Value);

/// What an API request asks of the tick.
#[derive(Debug)]
pub(crate) enum Job {
    List {
        state: String,
        namespace: Option<String>,
    },
    Get(ChangeFeedId),
    Create {
        info: Box<ChangeFeedInfo>,
        upstream: UpstreamInfo,
    },
    Update {
        id: ChangeFeedId,
        plan: UpdatePlan,
    },
    Admin {
        id: ChangeFeedId,
        job: AdminJob,
    },
    ListProcessors,
    GetProcessor {
        changefeed: ChangeFeedId,
        capture_id: CaptureId,
    },
    Drain(CaptureId),
}

/// A request with its reply channel.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) job: Job,
    pub(crate) reply: oneshot::Sender<Reply>,
}

/// One changefeed as the owner tracks it.
#[derive(Debug)]
struct Feed {
    /// The stored info as last read.
    info: ChangeFeedInfo,
    machine: FeedMachine,
    /// The config the spans were computed from.
    config_seen: Option<Value>,
    spans: Vec<Span>,
    /// The highest checkpoint known: the stored one or the coordinator's.
    checkpoint: u64,
    /// The checkpoint in the stored status, or queued for it.
    written: u64,
    /// The checkpoint in the stored status as last read: what the API shows, so that the
    /// checkpoint an answer shows never moves back, not even across an owner failover.
    stored: u64,
    resolved: u64,
    checkpoint_time: Option<DateTime<Utc>>,
    last_write: Option<Duration>,
    /// When the state machine wants its next tick.
    wake_at: Option<Duration>,
    /// The coordinator runs the current spans (told once, not every tick).
    scheduled: bool,
}

/// The tick's result for the caller.
#[derive(Debug, Default)]
pub(crate) struct TickOutput {
    /// Messages for the agents.
    pub(crate) messages: Vec<ToAgent>,
    /// When the next tick is needed at the latest.
    pub(crate) next: Duration,
}

/// The owner's state across ticks of one term.
pub(crate) struct OwnerCore {
    config: OwnerConfig,
    default_upstream: UpstreamInfo,
    coordinator: Coordinator,
    feeds: BTreeMap<ChangeFeedId, Feed>,
    /// Created changefeeds not read back yet, with the answer to send once they are.
    creating: BTreeMap<ChangeFeedId, Creating>,
    /// Answers to send at the next tick, which comes after the commit of this tick's patches.
    deferred: Vec<(oneshot::Sender<Reply>, Reply)>,
    /// The captures of the last tick's snapshot.
    captures: BTreeSet<CaptureId>,
    /// A tick has read the snapshot: the view answers reads.
    ticked: bool,
    /// When the coordinator last ticked.
    last_coordinator_tick: Option<Duration>,
}

/// A created changefeed whose info has not been read back yet.
#[derive(Debug)]
struct Creating {
    since: Duration,
    reply: Option<(oneshot::Sender<Reply>, Reply)>,
}

/// When an answer goes out.
enum When {
    /// At once: the request changed nothing.
    Now,
    /// At the next tick: after the commit of the patches it queued.
    NextTick,
    /// Once the created changefeed is read back.
    Created(ChangeFeedId),
}

impl OwnerCore {
    pub(crate) fn new(
        capture_id: CaptureId,
        owner_revision: i64,
        config: OwnerConfig,
        default_upstream: UpstreamInfo,
    ) -> Result<OwnerCore> {
        config.validate()?;
        let coordinator = Coordinator::new(capture_id, owner_revision, config.scheduler.clone())?;
        Ok(OwnerCore {
            config,
            default_upstream,
            coordinator,
            feeds: BTreeMap::new(),
            creating: BTreeMap::new(),
            deferred: Vec::new(),
            captures: BTreeSet::new(),
            ticked: false,
            last_coordinator_tick: None,
        })
    }

    /// The coordinator, for tests.
    #[cfg(test)]
    pub(crate) fn coordinator(&self) -> &Coordinator {
        &self.coordinator
    }

    /// One tick at `now` (monotonic, from the term's start) and `wall` (for the answers).
    pub(crate) fn tick(
        &mut self,
        state: &mut GlobalReactorState,
        now: Duration,
        wall: DateTime<Utc>,
        messages: Vec<ToOwner>,
        requests: Vec<Request>,
    ) -> TickOutput {
        let mut output = TickOutput::default();
        self.ensure_default_upstream(state);
        // The worker ticks again only after it committed the last tick's patches.
        for (reply, answer) in self.deferred.drain(..) {
            // The requester may have given up.
            let _ = reply.send(answer);
        }
        let captures_changed = self.captures.len() != state.captures.len()
            || !state.captures.keys().all(|c| self.captures.contains(c));
        if captures_changed {
            self.captures = state.captures.keys().cloned().collect();
        }
        self.sync_feeds(state, now);
        self.ticked = true;
        for request in requests {
            let (answer, when) = match self.serve_job(state, wall, request.job) {
                Ok((answer, when)) => (answer, when),
                Err(err) => ((err.status, err.body()), When::Now),
            };
            match when {
                When::Now => {
                    let _ = request.reply.send(answer);
                }
                When::NextTick => self.deferred.push((request.reply, answer)),
                When::Created(id) => {
                    self.creating.insert(
                        id,
                        Creating {
                            since: now,
                            reply: Some((request.reply, answer)),
                        },
                    );
                }
            }
        }
        self.run_machines(state, now, wall);
        for message in messages {
            output
                .messages
                .extend(self.coordinator.handle_message(message));
        }
        let captures: Vec<CaptureView> = state
            .captures
            .keys()
            .map(|capture_id| CaptureView {
                capture_id: capture_id.clone(),
                stopping: false,
            })
            .collect();
        // With nothing to run, the captures are heard from once per idle heartbeat, so that
        // an idle cluster costs next to nothing; a change of the captures is handled at once.
        let idle = self.feeds.values().all(|feed| !feed.scheduled)
            && self.coordinator.is_all_replicating();
        let heartbeat = if idle {
            IDLE_HEARTBEAT.max(self.config.scheduler.heartbeat_interval)
        } else {
            self.config.scheduler.heartbeat_interval
        };
        let coordinator_due = !idle
            || captures_changed
            || self
                .last_coordinator_tick
                .is_none_or(|last| now.saturating_sub(last) >= heartbeat);
        if coordinator_due {
            self.last_coordinator_tick = Some(now);
            output
                .messages
                .extend(self.coordinator.tick(now, &captures));
        }
        self.write_checkpoints(state, now, wall);
        output.next = self
            .feeds
            .values()
            .filter_map(|feed| feed.wake_at)
            .map(|wake_at| wake_at.saturating_sub(now))
            .fold(heartbeat, Duration::min);
        output
    }

    /// Writes the default upstream's info when it is missing (fenced by the worker).
    fn ensure_default_upstream(&self, state: &mut GlobalReactorState) {
        let upstream = &self.default_upstream;
        if state.upstreams.contains_key(&upstream.id) {
            return;
        }
        let patch = match cdc_reactor::upstream_if_absent(&state.cluster_id, upstream) {
            Ok(patch) => patch,
            Err(err) => {
                warn!(error = %ErrorReport(&err), "cannot encode the default upstream");
                return;
            }
        };
        info!(
            upstream_id = upstream.id,
            "writing the default upstream info"
        );
        let group: PatchGroup = vec![Box::new(patch)];
        state.queue_patches(group);
    }

    /// Follows the changefeeds of the snapshot: new ones get a state machine, vanished ones are
    /// dropped, changed configs recompute the spans.
    fn sync_feeds(&mut self, state: &GlobalReactorState, now: Duration) {
        self.creating.retain(|id, creating| {
            let written = state
                .changefeeds
                .get(id)
                .is_some_and(|changefeed| changefeed.info.is_some());
            let late = now.saturating_sub(creating.since) >= CREATE_GRACE;
            if written || late {
                if let Some((reply, answer)) = creating.reply.take() {
                    let answer = if written {
                        answer
                    } else {
                        let err = ApiError::internal(format!(
                            "changefeed {id} was not written within {CREATE_GRACE:?}"
                        ));
                        (err.status, err.body())
                    };
                    let _ = reply.send(answer);
                }
                return false;
            }
            true
        });
        let gone: Vec<ChangeFeedId> = self
            .feeds
            .keys()
            .filter(|id| {
                state
                    .changefeeds
                    .get(*id)
                    .is_none_or(|changefeed| changefeed.info.is_none())
            })
            .cloned()
            .collect();
        for id in gone {
            info!(changefeed = %id, "changefeed gone");
            self.feeds.remove(&id);
            self.coordinator.remove_changefeed(&id);
        }
        for (id, changefeed) in &state.changefeeds {
            let Some(info) = &changefeed.info else {
                continue;
            };
            let stored = info.checkpoint_ts(changefeed.status.as_ref());
            let feed = self.feeds.entry(id.clone()).or_insert_with(|| {
                info!(changefeed = %id, state = %info.state, checkpoint = stored, "changefeed found");
                Feed {
                    info: info.clone(),
                    machine: FeedMachine::new(info.state.clone(), self.config.retry),
                    config_seen: None,
                    spans: Vec::new(),
                    checkpoint: stored,
                    written: stored,
                    stored,
                    resolved: stored,
                    checkpoint_time: None,
                    last_write: None,
                    wake_at: None,
                    scheduled: false,
                }
            });
            if feed.info != *info {
                feed.info = info.clone();
            }
            feed.written = stored;
            feed.stored = stored;
            feed.checkpoint = feed.checkpoint.max(stored);
            feed.resolved = feed.resolved.max(feed.checkpoint);
            if feed.config_seen.as_ref() != info.config.as_ref() {
                feed.config_seen = info.config.clone();
                feed.scheduled = false;
                feed.spans = match ReplicaSpec::from_config(info.config.as_ref()) {
                    Ok(spec) => spec.spans(id),
                    Err(reason) => {
                        warn!(changefeed = %id, reason, "the changefeed's config names no spans");
                        Vec::new()
                    }
                };
            }
        }
    }

    /// Ticks every state machine and tells the coordinator which changefeeds run.
    fn run_machines(&mut self, state: &mut GlobalReactorState, now: Duration, wall: DateTime<Utc>) {
        let epoch = epoch_of(wall);
        for (id, feed) in &mut self.feeds {
            let Some(changefeed) = state.changefeeds.get_mut(id) else {
                continue;
            };
            let target = changefeed.info.as_ref().map_or(0, |info| info.target_ts);
            let input = FeedInput {
                checkpoint: feed.written,
                target,
                errors: changefeed.take_processor_errors(),
                warnings: changefeed.take_processor_warnings(),
            };
            for error in &input.errors {
                warn!(changefeed = %id, code = error.code, message = error.message, addr = error.addr, "processor reported an error");
            }
            let decision = feed.machine.tick(now, input);
            feed.wake_at = decision.wake_at;
            for patch in decision.patches {
                apply_patch(changefeed, feed, patch, epoch);
            }
            if decision.running && !feed.spans.is_empty() {
                if !feed.scheduled {
                    self.coordinator.upsert_changefeed(
                        id.clone(),
                        feed.spans.clone(),
                        Checkpoint::at(feed.checkpoint),
                    );
                    feed.scheduled = true;
                }
            } else if feed.scheduled {
                self.coordinator.remove_changefeed(id);
                feed.scheduled = false;
            }
        }
    }

    /// Queues the status writes of the changefeeds whose checkpoint moved, oldest write first,
    /// at most `max_status_writes_per_tick` and each at most every `checkpoint_interval`.
    fn write_checkpoints(
        &mut self,
        state: &mut GlobalReactorState,
        now: Duration,
        wall: DateTime<Utc>,
    ) {
        let mut due: Vec<(Option<Duration>, ChangeFeedId)> = Vec::new();
        for (id, feed) in &mut self.feeds {
            if !feed.machine.is_running() {
                continue;
            }
            if let Some(progress) = self.coordinator.advance_changefeed(id) {
                feed.resolved = feed.resolved.max(progress.resolved);
                if progress.checkpoint > feed.checkpoint {
                    feed.checkpoint = progress.checkpoint;
                    feed.checkpoint_time = Some(wall);
                }
            }
            let interval_over = feed
                .last_write
                .is_none_or(|last| now.saturating_sub(last) >= self.config.checkpoint_interval);
            if feed.checkpoint > feed.written && interval_over {
                due.push((feed.last_write, id.clone()));
            }
        }
        due.sort();
        for (_, id) in due.into_iter().take(self.config.max_status_writes_per_tick) {
            let (Some(feed), Some(changefeed)) =
                (self.feeds.get_mut(&id), state.changefeeds.get_mut(&id))
            else {
                continue;
            };
            let checkpoint = feed.checkpoint;
            changefeed.patch_status(move |status| match status {
                Some(mut status) if status.checkpoint_ts < checkpoint => {
                    status.checkpoint_ts = checkpoint;
                    status.min_table_barrier_ts = checkpoint;
                    Ok((Some(status), true))
                }
                None => Ok((
                    Some(ChangeFeedStatus {
                        checkpoint_ts: checkpoint,
                        min_table_barrier_ts: checkpoint,
                        admin_job_type: AdminJobType::Noop,
                    }),
                    true,
                )),
                other => Ok((other, false)),
            });
            feed.written = checkpoint;
            feed.last_write = Some(now);
        }
    }

    /// Each running changefeed's stored checkpoint and resolved revision, for the metrics.
    pub(crate) fn progress(&self) -> Vec<cdc_reactor::ChangefeedProgress> {
        self.feeds
            .keys()
            .filter_map(|id| self.view(id))
            .filter(|view| *view.state == cdc_model::FeedState::Normal)
            .map(|view| cdc_reactor::ChangefeedProgress {
                id: view.info.id(),
                checkpoint: view.checkpoint,
                resolved: view.resolved,
            })
            .collect()
    }

    fn view<'a>(&'a self, id: &ChangeFeedId) -> Option<FeedView<'a>> {
        let feed = self.feeds.get(id)?;
        let info = &feed.info;
        let spans = self.coordinator.span_views(id).unwrap_or_else(|| {
            feed.spans
                .iter()
                .map(|span| SpanView {
                    span: span.clone(),
                    capture_id: None,
                    state: SpanState::Absent,
                    checkpoint: Checkpoint::at(feed.checkpoint),
                })
                .collect()
        });
        Some(FeedView {
            info,
            // The stored state, as the error and the checkpoint: the machine's decision is
            // ahead of what is stored until its patches are committed and read back, and an
            // answer mixing the two would show a failed changefeed without its error.
            state: &info.state,
            checkpoint: feed.stored,
            resolved: feed.resolved.max(feed.stored),
            checkpoint_time: feed.checkpoint_time,
            spans,
            task_status: self.coordinator.spans_by_capture(id).unwrap_or_default(),
        })
    }

    /// Whether the view can answer reads (a tick has read the snapshot).
    pub(crate) fn has_ticked(&self) -> bool {
        self.ticked
    }

    /// Whether a job only reads: it is answered from the last tick's view, without a tick.
    pub(crate) fn is_read(job: &Job) -> bool {
        match job {
            Job::List { .. } | Job::Get(_) | Job::ListProcessors | Job::GetProcessor { .. } => true,
            Job::Create { .. } | Job::Update { .. } | Job::Admin { .. } | Job::Drain(_) => false,
        }
    }

    /// Answers a read-only job from the last tick's view.
    pub(crate) fn read(&self, job: &Job) -> Result<Reply, ApiError> {
        match job {
            Job::List {
                state: filter,
                namespace,
            } => {
                let items: Vec<Value> = self
                    .feeds
                    .keys()
                    .filter(|id| namespace.as_ref().is_none_or(|ns| *ns == id.namespace))
                    .filter_map(|id| self.view(id))
                    .filter(|view| view.state.is_needed(filter))
                    .map(|view| api::list_item(&view))
                    .collect();
                Ok((200, json!({"total": items.len(), "items": items})))
            }
            Job::Get(id) => {
                let view = self
                    .view(id)
                    .ok_or_else(|| ApiError::changefeed_not_exists(id))?;
                Ok((200, api::detail(&view)))
            }
            Job::ListProcessors => {
                let mut items = Vec::new();
                for id in self.feeds.keys() {
                    for capture_id in self
                        .coordinator
                        .spans_by_capture(id)
                        .unwrap_or_default()
                        .keys()
                    {
                        items.push(json!({
                            "namespace": id.namespace,
                            "changefeed_id": id.id,
                            "capture_id": capture_id,
                        }));
                    }
                }
                Ok((200, json!({"total": items.len(), "items": items})))
            }
            Job::GetProcessor {
                changefeed,
                capture_id,
            } => {
                if !self.feeds.contains_key(changefeed) {
                    return Err(ApiError::changefeed_not_exists(changefeed));
                }
                if !self.captures.contains(capture_id) {
                    return Err(ApiError::capture_not_exists(capture_id));
                }
                let span_ids: Vec<u64> = self
                    .coordinator
                    .spans_by_capture(changefeed)
                    .unwrap_or_default()
                    .remove(capture_id)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|span_id| span_id.0)
                    .collect();
                Ok((200, json!({"table_ids": span_ids})))
            }
            Job::Create { .. } | Job::Update { .. } | Job::Admin { .. } | Job::Drain(_) => {
                Err(ApiError::internal("not a read-only request"))
            }
        }
    }

    fn serve_job(
        &mut self,
        state: &mut GlobalReactorState,
        wall: DateTime<Utc>,
        job: Job,
    ) -> Result<(Reply, When), ApiError> {
        match job {
            Job::List { .. } | Job::Get(_) | Job::ListProcessors | Job::GetProcessor { .. } => {
                self.read(&job).map(|answer| (answer, When::Now))
            }
            Job::Create { info, upstream } => {
                let id = info.id();
                if self.feeds.contains_key(&id)
                    || self.creating.contains_key(&id)
                    || state.changefeeds.get(&id).is_some_and(|changefeed| {
                        changefeed.info.is_some() || changefeed.status.is_some()
                    })
                {
                    return Err(ApiError::changefeed_already_exists(&id));
                }
                let status = ChangeFeedStatus {
                    checkpoint_ts: info.start_ts,
                    min_table_barrier_ts: info.start_ts,
                    admin_job_type: AdminJobType::Noop,
                };
                let patch = CreateChangefeed::new(&state.cluster_id, &info, &status, &upstream)
                    .map_err(|err| ApiError::internal(ErrorReport(&err).to_string()))?;
                state.queue_patches(vec![Box::new(patch)]);
                info!(changefeed = %id, start_ts = info.start_ts, "changefeed created");
                let spans = ReplicaSpec::from_config(info.config.as_ref())
                    .map(|spec| spec.spans(&id))
                    .unwrap_or_default();
                let view = FeedView {
                    info: &info,
                    state: &FeedState::Normal,
                    checkpoint: info.start_ts,
                    resolved: info.start_ts,
                    checkpoint_time: Some(wall),
                    spans: spans
                        .into_iter()
                        .map(|span| SpanView {
                            span,
                            capture_id: None,
                            state: SpanState::Absent,
                            checkpoint: Checkpoint::at(info.start_ts),
                        })
                        .collect(),
                    task_status: BTreeMap::new(),
                };
                Ok(((200, api::detail(&view)), When::Created(id)))
            }
            Job::Update { id, plan } => {
                let feed = self
                    .feeds
                    .get(&id)
                    .ok_or_else(|| ApiError::changefeed_not_exists(&id))?;
                match feed.machine.state() {
                    FeedState::Stopped | FeedState::Failed | FeedState::Finished => {}
                    other => {
                        return Err(ApiError::update_refused(format!(
                            "can only update changefeed config when it is stopped, failed or finished, changefeed {id} is {other}"
                        )));
                    }
                }
                let changefeed = state
                    .changefeeds
                    .get_mut(&id)
                    .ok_or_else(|| ApiError::changefeed_not_exists(&id))?;
                let Some(current) = changefeed.info.clone() else {
                    return Err(ApiError::changefeed_not_exists(&id));
                };
                let mut updated = current;
                if let Some(sink_uri) = &plan.sink_uri {
                    updated.sink_uri.clone_from(sink_uri);
                }
                if let Some(target_ts) = plan.target_ts {
                    updated.target_ts = target_ts;
                }
                if let Some(spec) = &plan.spec {
                    let config = updated.config.get_or_insert_with(|| json!({}));
                    spec.write_into(config);
                }
                let patched = updated.clone();
                changefeed.patch_info(move |info| match info {
                    Some(mut info) => {
                        info.sink_uri.clone_from(&patched.sink_uri);
                        info.target_ts = patched.target_ts;
                        info.config.clone_from(&patched.config);
                        Ok((Some(info), true))
                    }
                    None => Ok((None, false)),
                });
                info!(changefeed = %id, "changefeed updated");
                let mut view = self
                    .view(&id)
                    .ok_or_else(|| ApiError::changefeed_not_exists(&id))?;
                view.info = &updated;
                Ok(((200, api::detail(&view)), When::NextTick))
            }
            Job::Admin { id, job } => {
                if let AdminJob::Resume {
                    overwrite_checkpoint: Some(_),
                } = job
                    && self.coordinator.span_views(&id).is_some()
                    && !self
                        .feeds
                        .get(&id)
                        .is_some_and(|feed| feed.machine.is_running())
                {
                    // The scheduler keeps a stopped changefeed's checkpoint until its last span
                    // stopped, and a checkpoint never moves back there: restarting from an
                    // earlier one must wait until then.
                    return Err(ApiError::invalid_param(format!(
                        "changefeed {id} is still stopping its spans; retry the resume with overwrite_checkpoint_ts shortly"
                    )));
                }
                let feed = self
                    .feeds
                    .get_mut(&id)
                    .ok_or_else(|| ApiError::changefeed_not_exists(&id))?;
                let changefeed = state
                    .changefeeds
                    .get_mut(&id)
                    .ok_or_else(|| ApiError::changefeed_not_exists(&id))?;
                let patches = feed.machine.admin(job).map_err(|refused| match refused {
                    AdminRefused::Removed => ApiError::changefeed_not_exists(&id),
                })?;
                info!(changefeed = %id, ?job, "admin job");
                let epoch = epoch_of(wall);
                for patch in patches {
                    apply_patch(changefeed, feed, patch, epoch);
                }
                if !feed.machine.is_running() {
                    self.coordinator.remove_changefeed(&id);
                    feed.scheduled = false;
                }
                Ok(((200, json!({})), When::NextTick))
            }
            Job::Drain(capture_id) => match self.coordinator.drain(&capture_id) {
                Ok(n) => Ok(((202, json!({"current_table_count": n})), When::Now)),
                Err(err @ cdc_scheduler::Error::CaptureNotFound { .. }) => Err(ApiError {
                    // As `ApiError::capture_not_exists`.
                    status: 400,
                    code: "CDC:ErrCaptureNotExist",
                    message: ErrorReport(&err).to_string(),
                }),
                Err(
                    err @ (cdc_scheduler::Error::DrainOwner { .. }
                    | cdc_scheduler::Error::DrainOnlyCapture { .. }
                    | cdc_scheduler::Error::InvalidConfig { .. }),
                ) => Err(ApiError {
                    status: 400,
                    code: "CDC:ErrSchedulerRequestFailed",
                    message: ErrorReport(&err).to_string(),
                }),
            },
        }
    }
}

/// The changefeed epoch for a (re)start at `wall`: unix nanoseconds, as TiCDC's fallback.
fn epoch_of(wall: DateTime<Utc>) -> u64 {
    wall.timestamp_nanos_opt()
        .and_then(|nanos| u64::try_from(nanos).ok())
        .unwrap_or(0)
}

/// Queues the writes of one state machine patch.
fn apply_patch(
    changefeed: &mut ChangefeedReactorState,
    feed: &mut Feed,
    patch: FeedPatch,
    epoch: u64,
) {
    match patch {
        FeedPatch::State { state, admin } => {
            changefeed.update_changefeed_state(state, admin, epoch);
        }
        FeedPatch::SetError(error) => changefeed.set_error(error),
        FeedPatch::SetWarning(warning) => changefeed.set_warning(warning),
        FeedPatch::ClearErrors => changefeed.patch_info(|info| match info {
            Some(mut info) if info.error.is_some() || info.warning.is_some() => {
                info.error = None;
                info.warning = None;
                Ok((Some(info), true))
            }
            other => Ok((other, false)),
        }),
        FeedPatch::OverwriteCheckpoint(checkpoint) => {
            changefeed.patch_info(move |info| match info {
                Some(mut info) => {
                    info.start_ts = checkpoint;
                    Ok((Some(info), true))
                }
                None => Ok((None, false)),
            });
            changefeed.patch_status(move |_| {
                Ok((
                    Some(ChangeFeedStatus {
                        checkpoint_ts: checkpoint,
                        min_table_barrier_ts: checkpoint,
                        admin_job_type: AdminJobType::Noop,
                    }),
                    true,
                ))
            });
            feed.checkpoint = checkpoint;
            feed.written = checkpoint;
            feed.stored = checkpoint;
            feed.resolved = checkpoint;
        }
        FeedPatch::Remove => {
            changefeed.patch_info(|_| Ok((None, true)));
            changefeed.patch_status(|_| Ok((None, true)));
        }
        FeedPatch::CleanTaskPositions => changefeed.clean_up_task_positions(),
    }
}

/// Creates a changefeed: its info and status, and its upstream when missing, in one
/// transaction; nothing when the info or the status exists already.
struct CreateChangefeed {
    info_key: Vec<u8>,
    info: Vec<u8>,
    status_key: Vec<u8>,
    status: Vec<u8>,
    upstream_key: Vec<u8>,
    upstream: Vec<u8>,
}

impl CreateChangefeed {
    fn new(
        cluster_id: &str,
        info: &ChangeFeedInfo,
        status: &ChangeFeedStatus,
        upstream: &UpstreamInfo,
    ) -> cdc_model::Result<CreateChangefeed> {
        let id = info.id();
        Ok(CreateChangefeed {
            info_key: key::changefeed_info_key(cluster_id, &id).into_bytes(),
            info: cdc_model::to_go_json(info)?,
            status_key: key::changefeed_status_key(cluster_id, &id).into_bytes(),
            status: cdc_model::to_go_json(status)?,
            upstream_key: key::upstream_key(cluster_id, &id.namespace, upstream.id).into_bytes(),
            upstream: cdc_model::to_go_json(upstream)?,
        })
    }
}

impl DataPatch for CreateChangefeed {
    fn patch(&self, view: &mut PatchView<'_>) -> cdc_orchestrator::Result<()> {
        if view.get(&self.info_key).is_some() || view.get(&self.status_key).is_some() {
            return Err(cdc_orchestrator::Error::EtcdIgnore);
        }
        view.set(self.info_key.clone(), Some(self.info.clone()));
        view.set(self.status_key.clone(), Some(self.status.clone()));
        if view.get(&self.upstream_key).is_none() {
            view.set(self.upstream_key.clone(), Some(self.upstream.clone()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
