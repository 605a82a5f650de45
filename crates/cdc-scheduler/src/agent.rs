//! The processor side: one agent per capture answers the owner's heartbeats and dispatches and
//! drives the span pipelines, after TiCDC v3's agent (`cdc/scheduler/internal/v3/agent/agent.go`
//! and `agent/table.go` in pingcap/tiflow).
//!
//! The agent is pure: dispatches and pipeline events come in, pipeline commands and messages for
//! the owner go out. It only ever starts writing a span to the sink on the owner's order to
//! replicate, and it counts a span as running from that order until its pipeline reports it
//! stopped.

use std::collections::BTreeMap;

use cdc_model::CaptureId;
use tracing::{debug, info};

use crate::message::{
    AgentRequest, Dispatch, DispatchResponse, Epoch, HeartbeatResponse, OwnerResponse,
    OwnerRevision, SpanStatus, ToAgent, ToOwner,
};
use crate::span::{AgentSpanState, Checkpoint, Span, SpanRef};

/// What the agent asks of the span pipelines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PipelineCommand {
    /// Prepare the span from `checkpoint` without writing to the sink; report
    /// [`PipelineEvent::Prepared`] when ready.
    Prepare {
        /// The span.
        span: Span,
        /// Where to start.
        checkpoint: Checkpoint,
    },
    /// Write the prepared span to the sink.
    Replicate {
        /// The span.
        span: Span,
        /// Where the owner knows the span got to.
        checkpoint: Checkpoint,
    },
    /// Stop the span's pipeline; report [`PipelineEvent::Stopped`] once nothing more is written.
    /// The agent keeps the span, stopped, until the owner acknowledges the stop.
    Stop {
        /// The span.
        span: SpanRef,
    },
}

/// What the span pipelines tell the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PipelineEvent {
    /// The span is prepared.
    Prepared {
        /// The span.
        span: SpanRef,
    },
    /// The span made progress.
    Progress {
        /// The span.
        span: SpanRef,
        /// Its progress. The checkpoint counts only events written to the sink, so a prepared
        /// pipeline that does not write keeps the checkpoint it was started at.
        checkpoint: Checkpoint,
    },
    /// The span's pipeline stopped, asked to or not (an error); nothing more is written.
    Stopped {
        /// The span.
        span: SpanRef,
        /// Its final progress.
        checkpoint: Checkpoint,
    },
}

/// What one call into the agent produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentOutput {
    /// Commands for the span pipelines, in order.
    pub commands: Vec<PipelineCommand>,
    /// Messages for the owner, in order.
    pub messages: Vec<ToOwner>,
}

#[derive(Debug, Clone)]
struct AgentSpan {
    span: Span,
    state: AgentSpanState,
    checkpoint: Checkpoint,
    /// The owner asked to replicate while the span was still preparing.
    replicate_requested: bool,
    /// The pipeline may write to the sink: told to replicate and not yet reported stopped.
    sinking: bool,
}

/// The scheduler agent of one capture, for all its changefeeds.
#[derive(Debug, Clone)]
pub struct Agent {
    capture_id: CaptureId,
    epoch: Epoch,
    owner: Option<(CaptureId, OwnerRevision)>,
    stopping: bool,
    spans: BTreeMap<SpanRef, AgentSpan>,
}

impl Agent {
    /// An agent with no spans. `epoch` must be larger than the epoch of any earlier agent of the
    /// same capture: the agent ignores dispatches meant for an earlier one, and the owner takes a
    /// larger epoch as the sign that the agent restarted and its spans are gone.
    pub fn new(capture_id: CaptureId, epoch: Epoch) -> Agent {
        Agent {
            capture_id,
            epoch,
            owner: None,
            stopping: false,
            spans: BTreeMap::new(),
        }
    }

    /// The agent's capture.
    pub fn capture_id(&self) -> &CaptureId {
        &self.capture_id
    }

    /// The agent's epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The newest owner the agent has heard from, with its revision.
    pub fn owner(&self) -> Option<(&CaptureId, OwnerRevision)> {
        self.owner
            .as_ref()
            .map(|(capture_id, revision)| (capture_id, *revision))
    }

    /// Marks the capture stopping (it drains or shuts down); the owner learns it from the next
    /// heartbeat response and moves the spans away. It is never unmarked.
    pub fn set_stopping(&mut self) {
        if !self.stopping {
            info!(capture_id = self.capture_id, "agent stopping");
            self.stopping = true;
        }
    }

    /// Whether the capture is stopping.
    pub fn is_stopping(&self) -> bool {
        self.stopping
    }

    /// The state of `span` here.
    pub fn span_state(&self, span: &SpanRef) -> AgentSpanState {
        self.spans
            .get(span)
            .map_or(AgentSpanState::Absent, |entry| entry.state)
    }

    /// Every span here with its state and progress.
    pub fn statuses(&self) -> Vec<SpanStatus> {
        self.spans
            .iter()
            .map(|(span_ref, entry)| SpanStatus {
                span: span_ref.clone(),
                state: entry.state,
                checkpoint: entry.checkpoint,
            })
            .collect()
    }

    /// The spans whose pipelines may write to the sink: told to replicate and not yet stopped.
    pub fn sinking_spans(&self) -> impl Iterator<Item = &SpanRef> {
        self.spans
            .iter()
            .filter(|(_, entry)| entry.sinking)
            .map(|(span_ref, _)| span_ref)
    }

    /// Handles a message from an owner.
    ///
    /// Messages from an owner older than the newest one heard from are ignored, and so are
    /// dispatches that carry another epoch than this agent's.
    pub fn handle_message(&mut self, message: ToAgent, output: &mut AgentOutput) {
        if message.to != self.capture_id {
            debug!(
                capture_id = self.capture_id,
                to = message.to,
                "ignore a message for another capture"
            );
            return;
        }
        match &self.owner {
            Some((_, revision)) if message.owner_revision < *revision => {
                debug!(
                    capture_id = self.capture_id,
                    owner_revision = message.owner_revision,
                    newest = *revision,
                    "ignore a message from a former owner"
                );
                return;
            }
            Some((owner_id, revision))
                if message.owner_revision == *revision && *owner_id != message.from =>
            {
                debug!(
                    capture_id = self.capture_id,
                    owner_revision = message.owner_revision,
                    from = message.from,
                    "ignore a message that claims another owner's revision"
                );
                return;
            }
            Some((_, revision)) if message.owner_revision == *revision => {}
            Some(_) | None => {
                info!(
                    capture_id = self.capture_id,
                    owner_id = message.from,
                    owner_revision = message.owner_revision,
                    "new owner"
                );
                self.owner = Some((message.from.clone(), message.owner_revision));
            }
        }
        match message.body {
            AgentRequest::Heartbeat(heartbeat) => {
                if heartbeat.is_stopping {
                    self.set_stopping();
                }
                let response = OwnerResponse::Heartbeat(HeartbeatResponse {
                    spans: self.statuses(),
                    stopping: self.stopping,
                });
                self.send(response, output);
            }
            AgentRequest::Dispatch(dispatch) => {
                if message.epoch != Some(self.epoch) {
                    debug!(capture_id = self.capture_id, epoch = ?message.epoch, own = ?self.epoch, "ignore a dispatch for another epoch");
                    return;
                }
                self.handle_dispatch(dispatch, output);
            }
        }
    }

    fn handle_dispatch(&mut self, dispatch: Dispatch, output: &mut AgentOutput) {
        match dispatch {
            Dispatch::Add {
                span,
                checkpoint,
                prepare,
            } => {
                let span_ref = span.span_ref();
                let Some(entry) = self.spans.get_mut(&span_ref) else {
                    if prepare {
                        output.commands.push(PipelineCommand::Prepare {
                            span: span.clone(),
                            checkpoint,
                        });
                        self.spans.insert(
                            span_ref,
                            AgentSpan {
                                span,
                                state: AgentSpanState::Preparing,
                                checkpoint,
                                replicate_requested: false,
                                sinking: false,
                            },
                        );
                    } else {
                        // Only a prepared span is replicated. An order to replicate a span this
                        // agent does not have was sent before the owner learned that the span
                        // stopped here (its pipeline failed); by now the owner may have placed
                        // it elsewhere, so starting it would run it twice.
                        debug!(capture_id = self.capture_id, span = %span_ref, "ignore an order to replicate a span that is not prepared here");
                        self.respond(&span_ref, output);
                    }
                    return;
                };
                match entry.state {
                    AgentSpanState::Preparing => {
                        if !prepare {
                            entry.replicate_requested = true;
                        }
                        return;
                    }
                    AgentSpanState::Prepared if !prepare => {
                        entry.checkpoint.merge(checkpoint);
                        entry.state = AgentSpanState::Replicating;
                        entry.sinking = true;
                        output.commands.push(PipelineCommand::Replicate {
                            span: entry.span.clone(),
                            checkpoint: entry.checkpoint,
                        });
                    }
                    AgentSpanState::Prepared
                    | AgentSpanState::Replicating
                    | AgentSpanState::Stopping
                    | AgentSpanState::Stopped
                    | AgentSpanState::Absent => {}
                }
                self.respond(&span_ref, output);
            }
            Dispatch::Remove { span } => {
                if let Some(entry) = self.spans.get_mut(&span) {
                    match entry.state {
                        AgentSpanState::Preparing
                        | AgentSpanState::Prepared
                        | AgentSpanState::Replicating => {
                            entry.state = AgentSpanState::Stopping;
                            output
                                .commands
                                .push(PipelineCommand::Stop { span: span.clone() });
                        }
                        AgentSpanState::Stopped => {
                            // The owner acknowledges the stop: forget the span.
                            self.spans.remove(&span);
                        }
                        AgentSpanState::Stopping | AgentSpanState::Absent => {}
                    }
                }
                self.respond(&span, output);
            }
        }
    }

    /// Handles an event from a span pipeline.
    pub fn handle_pipeline_event(&mut self, event: PipelineEvent, output: &mut AgentOutput) {
        match event {
            PipelineEvent::Prepared { span } => {
                let Some(entry) = self.spans.get_mut(&span) else {
                    return;
                };
                if entry.state != AgentSpanState::Preparing {
                    return;
                }
                entry.state = AgentSpanState::Prepared;
                if entry.replicate_requested {
                    entry.state = AgentSpanState::Replicating;
                    entry.sinking = true;
                    output.commands.push(PipelineCommand::Replicate {
                        span: entry.span.clone(),
                        checkpoint: entry.checkpoint,
                    });
                }
                self.respond(&span, output);
            }
            PipelineEvent::Progress { span, checkpoint } => {
                if let Some(entry) = self.spans.get_mut(&span) {
                    entry.checkpoint.merge(checkpoint);
                }
            }
            PipelineEvent::Stopped { span, checkpoint } => {
                let Some(entry) = self.spans.get_mut(&span) else {
                    return;
                };
                if entry.state == AgentSpanState::Stopped {
                    return;
                }
                // The span stays, stopped, until the owner acknowledges with a remove. Orders the
                // owner sent before it learned of the stop arrive before that acknowledgment and
                // find the span stopped rather than absent, so none of them starts it again.
                entry.checkpoint.merge(checkpoint);
                entry.state = AgentSpanState::Stopped;
                entry.sinking = false;
                entry.replicate_requested = false;
                self.respond(&span, output);
            }
        }
    }

    fn respond(&self, span: &SpanRef, output: &mut AgentOutput) {
        let status = match self.spans.get(span) {
            Some(entry) => SpanStatus {
                span: span.clone(),
                state: entry.state,
                checkpoint: entry.checkpoint,
            },
            None => SpanStatus {
                span: span.clone(),
                state: AgentSpanState::Absent,
                checkpoint: Checkpoint::default(),
            },
        };
        self.send(OwnerResponse::Dispatch(DispatchResponse { status }), output);
    }

    fn send(&self, body: OwnerResponse, output: &mut AgentOutput) {
        let Some((owner_id, owner_revision)) = &self.owner else {
            return;
        };
        output.messages.push(ToOwner {
            from: self.capture_id.clone(),
            to: owner_id.clone(),
            owner_revision: *owner_revision,
            epoch: self.epoch,
            body,
        });
    }
}

#[cfg(test)]
mod tests;
