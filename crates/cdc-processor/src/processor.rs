//! The processor of one capture: its scheduler agent and the pipelines of its spans, after
//! TiCDC's processor and scheduler agent (`cdc/processor/processor.go` and
//! `cdc/scheduler/internal/v3/agent/agent.go` in pingcap/tiflow).
//!
//! [`Processor`] is the runtime around the pure [`Agent`]: the owner's messages go into the
//! agent, the agent's [`PipelineCommand`]s become pipeline starts and stops through a
//! [`PipelineFactory`], and the pipelines' progress and stops go back into the agent as
//! [`PipelineEvent`]s. It performs no etcd or p2p IO itself: the caller hands it the received
//! messages and sends what it returns.
//!
//! Preparing a span starts nothing (the pipeline writes from its first moment, and nothing may
//! be written before the order to replicate), so a span is reported prepared at once; its
//! pipeline starts on the order to replicate. A stop is asked of the pipeline's monitor task,
//! which awaits the pipeline and only then hands the stop back, so the agent reports a span
//! stopped only once nothing more of it is written.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use cdc_model::{CaptureId, ErrorReport};
use cdc_scheduler::{
    Agent, AgentOutput, Checkpoint, Epoch, PipelineCommand, PipelineEvent, Span, SpanRef, ToAgent,
    ToOwner,
};
use futures::FutureExt as _;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::pipeline::{PipelineHandle, PipelineProgress, PipelineState};
use crate::span_log::{SpanEvent, SpanLog};

/// Starts the pipelines of spans: the real one picks the changefeed's upstream and sink, test
/// doubles record.
pub trait PipelineFactory: Send {
    /// Whether `span` can start now. A span that cannot (its changefeed's info has not reached
    /// this capture's view of the cluster yet) waits, and is asked about again at every tick
    /// until it can or the owner removes it.
    fn is_ready(&self, span: &Span) -> bool {
        let _ = span;
        true
    }

    /// Starts `span` from `from_revision` (changes after it are replicated). An error means
    /// nothing of the span was started.
    fn start(
        &mut self,
        span: Span,
        from_revision: u64,
    ) -> impl Future<Output = Result<PipelineHandle>> + Send;
}

/// Asks the processor's owner for a tick: called when a pipeline has stopped.
pub type Wake = Arc<dyn Fn() + Send + Sync>;

/// A span whose pipeline failed (at its start or later).
#[derive(Debug)]
pub struct SpanFailure {
    /// The span.
    pub span: SpanRef,
    /// Why.
    pub error: Error,
}

/// What one tick of the processor produced.
#[derive(Debug, Default)]
pub struct ProcessorOutput {
    /// Messages for the owner, in order.
    pub messages: Vec<ToOwner>,
    /// Pipelines that failed since the last tick.
    pub failures: Vec<SpanFailure>,
}

/// A running pipeline as the processor sees it; its handle is owned by its monitor task.
#[derive(Debug)]
struct Running {
    /// Asks the monitor to stop the pipeline; `None` once asked.
    stop_tx: Option<oneshot::Sender<()>>,
    progress_rx: watch::Receiver<PipelineProgress>,
    /// The progress last handed to the agent.
    reported: Checkpoint,
}

/// A pipeline that has stopped, as its monitor reports it.
#[derive(Debug)]
struct Finished {
    span: SpanRef,
    checkpoint: Checkpoint,
    result: Result<()>,
}

/// How many stopped pipelines may wait for the processor's next tick before their monitors wait.
const FINISHED_CAPACITY: usize = 1024;

/// The processor of one capture incarnation, for all its changefeeds.
pub struct Processor {
    agent: Agent,
    span_log: Option<Arc<SpanLog>>,
    running: BTreeMap<SpanRef, Running>,
    /// Spans told to replicate whose pipelines cannot start yet (see
    /// [`PipelineFactory::is_ready`]).
    waiting: BTreeMap<SpanRef, (Span, Checkpoint)>,
    monitors: JoinSet<()>,
    finished_tx: mpsc::Sender<Finished>,
    finished_rx: mpsc::Receiver<Finished>,
    wake: Wake,
    n_started: u64,
    n_failed: u64,
}

impl std::fmt::Debug for Processor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Processor")
            .field("agent", &self.agent)
            .field("running", &self.running.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Processor {
    /// A processor with an agent of `capture_id` at `epoch` (larger than any former
    /// incarnation's on the same capture). Pipeline starts and stops go to `span_log` when set;
    /// `wake` is called whenever a pipeline has stopped, so that its stop reaches the agent at
    /// the next tick.
    pub fn new(
        capture_id: CaptureId,
        epoch: Epoch,
        span_log: Option<Arc<SpanLog>>,
        wake: Wake,
    ) -> Processor {
        let (finished_tx, finished_rx) = mpsc::channel(FINISHED_CAPACITY);
        Processor {
            agent: Agent::new(capture_id, epoch),
            span_log,
            running: BTreeMap::new(),
            waiting: BTreeMap::new(),
            monitors: JoinSet::new(),
            finished_tx,
            finished_rx,
            wake,
            n_started: 0,
            n_failed: 0,
        }
    }

    /// The scheduler agent.
    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// Marks the capture stopping (drained or shutting down): the owner moves its spans away.
    pub fn set_stopping(&mut self) {
        self.agent.set_stopping();
    }

    /// The spans whose pipelines run (or are being stopped).
    pub fn running_spans(&self) -> impl Iterator<Item = &SpanRef> {
        self.running.keys()
    }

    /// Whether spans wait for their pipelines to become ready; the caller ticks again soon.
    pub fn has_waiting_spans(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// The changefeeds this processor has spans of (in any state).
    pub fn changefeeds(&self) -> Vec<cdc_model::ChangeFeedId> {
        let mut changefeeds: Vec<_> = self
            .agent
            .statuses()
            .into_iter()
            .map(|status| status.span.changefeed)
            .collect();
        changefeeds.dedup();
        changefeeds
    }

    /// One pass: the stops and progress of the pipelines go into the agent, the waiting spans
    /// that became ready start, then `messages` (the owner's, in the order received) go into
    /// the agent and its commands are carried out with `factory`. Returns the messages for the
    /// owner and the pipelines that failed.
    ///
    /// # Cancel safety
    /// Not cancel-safe: a tick dropped while a pipeline starts leaves that span to its
    /// dropped handle (which cancels the pipeline without awaiting it). Callers drop a tick only
    /// when the whole processor ends.
    pub async fn tick<F: PipelineFactory>(
        &mut self,
        messages: impl IntoIterator<Item = ToAgent>,
        factory: &mut F,
    ) -> ProcessorOutput {
        let mut output = ProcessorOutput::default();
        let mut agent_output = AgentOutput::default();
        self.collect_finished(&mut agent_output, &mut output.failures);
        self.collect_progress(&mut agent_output);
        let mut commands: VecDeque<PipelineCommand> = std::mem::take(&mut self.waiting)
            .into_values()
            .map(|(span, checkpoint)| PipelineCommand::Replicate { span, checkpoint })
            .collect();
        commands.extend(agent_output.commands.drain(..));
        self.run_commands(commands, factory, &mut agent_output, &mut output)
            .await;
        for message in messages {
            self.agent.handle_message(message, &mut agent_output);
        }
        let commands = agent_output.commands.drain(..).collect();
        self.run_commands(commands, factory, &mut agent_output, &mut output)
            .await;
        output
    }

    /// Carries out `commands` and those the agent gives in answer to their events.
    async fn run_commands<F: PipelineFactory>(
        &mut self,
        mut commands: VecDeque<PipelineCommand>,
        factory: &mut F,
        agent_output: &mut AgentOutput,
        output: &mut ProcessorOutput,
    ) {
        output.messages.append(&mut agent_output.messages);
        while let Some(command) = commands.pop_front() {
            let mut events = Vec::new();
            self.run_command(command, factory, &mut events, &mut output.failures)
                .await;
            for event in events {
                self.agent.handle_pipeline_event(event, agent_output);
            }
            commands.extend(agent_output.commands.drain(..));
            output.messages.append(&mut agent_output.messages);
        }
    }

    async fn run_command<F: PipelineFactory>(
        &mut self,
        command: PipelineCommand,
        factory: &mut F,
        events: &mut Vec<PipelineEvent>,
        failures: &mut Vec<SpanFailure>,
    ) {
        match command {
            PipelineCommand::Prepare { span, .. } => {
                // Nothing runs before the order to replicate: see the module's docs.
                events.push(PipelineEvent::Prepared {
                    span: span.span_ref(),
                });
            }
            PipelineCommand::Replicate { span, checkpoint } => {
                let span_ref = span.span_ref();
                if self.running.contains_key(&span_ref) {
                    // The agent replicates a span only once until its pipeline reports stopped.
                    warn!(span = %span_ref, "ignore an order to replicate a span that runs");
                    return;
                }
                if !factory.is_ready(&span) {
                    debug!(span = %span_ref, "span pipeline waits to be ready");
                    self.waiting.insert(span_ref, (span, checkpoint));
                    return;
                }
                self.log(&span_ref, SpanEvent::Start);
                match factory.start(span, checkpoint.checkpoint).await {
                    Ok(handle) => {
                        self.n_started += 1;
                        info!(span = %span_ref, from_revision = checkpoint.checkpoint, "span pipeline starting");
                        self.monitor(span_ref, handle, checkpoint);
                    }
                    Err(error) => {
                        // Nothing was started, so nothing is written.
                        self.log(&span_ref, SpanEvent::Stop);
                        self.n_failed += 1;
                        warn!(span = %span_ref, error = %ErrorReport(&error), "span pipeline failed to start");
                        events.push(PipelineEvent::Stopped {
                            span: span_ref.clone(),
                            checkpoint,
                        });
                        failures.push(SpanFailure {
                            span: span_ref,
                            error,
                        });
                    }
                }
            }
            PipelineCommand::Stop { span } => match self.running.get_mut(&span) {
                Some(running) => {
                    if let Some(stop_tx) = running.stop_tx.take() {
                        // A monitor that is gone has already stopped the pipeline.
                        let _ = stop_tx.send(());
                    }
                }
                None => {
                    // Prepared only, or waiting to start: nothing runs.
                    let checkpoint = self
                        .waiting
                        .remove(&span)
                        .map_or_else(Checkpoint::default, |(_, checkpoint)| checkpoint);
                    events.push(PipelineEvent::Stopped { span, checkpoint });
                }
            },
        }
    }

    /// Hands `handle` to a monitor task, which stops the pipeline when asked or when it ends on
    /// its own, and reports the stop.
    fn monitor(&mut self, span: SpanRef, handle: PipelineHandle, checkpoint: Checkpoint) {
        let (stop_tx, stop_rx) = oneshot::channel();
        let progress_rx = handle.progress();
        self.running.insert(
            span.clone(),
            Running {
                stop_tx: Some(stop_tx),
                progress_rx: progress_rx.clone(),
                reported: checkpoint,
            },
        );
        let finished_tx = self.finished_tx.clone();
        let wake = self.wake.clone();
        self.monitors.spawn(async move {
            let finished = run_monitor(span, handle, progress_rx, stop_rx).await;
            // The receiver is gone only when the processor is.
            let _ = finished_tx.send(finished).await;
            wake();
        });
    }

    fn collect_finished(
        &mut self,
        agent_output: &mut AgentOutput,
        failures: &mut Vec<SpanFailure>,
    ) {
        while self.monitors.try_join_next().is_some() {}
        while let Ok(finished) = self.finished_rx.try_recv() {
            self.finish(finished, agent_output, failures);
        }
    }

    fn finish(
        &mut self,
        finished: Finished,
        agent_output: &mut AgentOutput,
        failures: &mut Vec<SpanFailure>,
    ) {
        let Finished {
            span,
            checkpoint,
            result,
        } = finished;
        self.running.remove(&span);
        // The pipeline's task has ended: nothing more of the span is written.
        self.log(&span, SpanEvent::Stop);
        match result {
            Ok(()) => {
                info!(span = %span, checkpoint = checkpoint.checkpoint, "span pipeline stopped")
            }
            Err(error) => {
                self.n_failed += 1;
                warn!(span = %span, error = %ErrorReport(&error), "span pipeline failed");
                failures.push(SpanFailure {
                    span: span.clone(),
                    error,
                });
            }
        }
        self.agent
            .handle_pipeline_event(PipelineEvent::Stopped { span, checkpoint }, agent_output);
    }

    fn collect_progress(&mut self, agent_output: &mut AgentOutput) {
        for (span, running) in &mut self.running {
            let current = running.progress_rx.borrow().checkpoint;
            if current != running.reported {
                running.reported = current;
                self.agent.handle_pipeline_event(
                    PipelineEvent::Progress {
                        span: span.clone(),
                        checkpoint: current,
                    },
                    agent_output,
                );
            }
        }
    }

    /// Stops every pipeline and waits for them, at most `timeout`; the spans whose pipelines
    /// did not stop in time are left to their cancelled tasks (and get no stop line).
    pub async fn close(&mut self, timeout: Duration) {
        for running in self.running.values_mut() {
            if let Some(stop_tx) = running.stop_tx.take() {
                let _ = stop_tx.send(());
            }
        }
        let mut agent_output = AgentOutput::default();
        let mut failures = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.running.is_empty() {
            match tokio::time::timeout_at(deadline, self.finished_rx.recv()).await {
                Ok(Some(finished)) => self.finish(finished, &mut agent_output, &mut failures),
                Ok(None) => break,
                Err(_) => {
                    warn!(
                        n_spans = self.running.len(),
                        ?timeout,
                        "span pipelines did not stop in time"
                    );
                    break;
                }
            }
        }
        self.running.clear();
        self.waiting.clear();
        self.monitors.shutdown().await;
    }

    /// Appends a human-readable dump.
    pub fn write_debug_info(&self, out: &mut String) {
        let owner = self
            .agent
            .owner()
            .map(|(owner_id, revision)| format!("{owner_id}@{revision}"));
        let _ = writeln!(
            out,
            "agent of capture {} epoch {}: owner {}, stopping {}, pipelines started {}, failed {}",
            self.agent.capture_id(),
            self.agent.epoch().0,
            owner.as_deref().unwrap_or("none"),
            self.agent.is_stopping(),
            self.n_started,
            self.n_failed,
        );
        for status in self.agent.statuses() {
            let _ = writeln!(
                out,
                "  span {} {} checkpoint {} resolved {}{}",
                status.span,
                status.state,
                status.checkpoint.checkpoint,
                status.checkpoint.resolved,
                if self.running.contains_key(&status.span) {
                    " (pipeline running)"
                } else if self.waiting.contains_key(&status.span) {
                    " (pipeline waiting to start)"
                } else {
                    ""
                },
            );
        }
    }

    fn log(&self, span: &SpanRef, event: SpanEvent) {
        if let Some(span_log) = &self.span_log
            && let Err(err) = span_log.append(self.agent.capture_id(), span, event)
        {
            warn!(span = %span, error = %ErrorReport(&err), "writing the span log failed");
        }
    }
}

/// Waits until the pipeline is asked to stop or ends on its own, then stops it and awaits it.
async fn run_monitor(
    span: SpanRef,
    handle: PipelineHandle,
    mut progress_rx: watch::Receiver<PipelineProgress>,
    stop_rx: oneshot::Receiver<()>,
) -> Finished {
    tokio::select! {
        // Asked to stop, or the processor is gone.
        _ = stop_rx => {}
        // Failed or ended; a dropped sender means its task is gone.
        _ = progress_rx.wait_for(|progress| progress.state != PipelineState::Running) => {}
    }
    let stopped = AssertUnwindSafe(handle.stop()).catch_unwind().await;
    let mut checkpoint = progress_rx.borrow().checkpoint;
    let result = match stopped {
        Ok(Ok(last)) => {
            checkpoint.merge(last);
            Ok(())
        }
        Ok(Err(err)) => Err(err),
        Err(_panic) => Err(Error::TaskFailed {
            span: span.to_string(),
        }),
    };
    Finished {
        span,
        checkpoint,
        result,
    }
}

#[cfg(test)]
mod tests;
