//! The scheduling messages between the owner's coordinator and the captures' agents, as data.
//!
//! They mirror TiCDC's `schedulepb/table_schedule.proto` (pingcap/tiflow): a header with the
//! owner revision and the agent's epoch, heartbeats and dispatches one way, heartbeat and dispatch
//! responses the other.

use cdc_model::CaptureId;
use serde::{Deserialize, Serialize};

use crate::span::{AgentSpanState, Checkpoint, Span, SpanRef};

/// The p2p topic of [`ToAgent`] messages, owner to capture.
pub const TO_AGENT_TOPIC: &str = "scheduler/to-agent";
/// The p2p topic of [`ToOwner`] messages, capture to owner.
pub const TO_OWNER_TOPIC: &str = "scheduler/to-owner";

/// The owner revision: the create revision of the owner's election key. A later owner has a larger
/// one, so agents can tell a former owner's messages apart.
pub type OwnerRevision = i64;

/// The epoch of one agent incarnation. The owner learns it from heartbeat responses and puts it in
/// every dispatch; an agent ignores dispatches that carry another epoch, so a dispatch meant for a
/// former incarnation of the agent never reaches the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Epoch(pub u64);

/// A message from the owner to an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToAgent {
    /// The owner's capture.
    pub from: CaptureId,
    /// The agent's capture.
    pub to: CaptureId,
    /// The sending owner's revision.
    pub owner_revision: OwnerRevision,
    /// The agent's epoch as the owner knows it (`None` before the first heartbeat response;
    /// heartbeats need none).
    pub epoch: Option<Epoch>,
    /// What the owner asks.
    pub body: AgentRequest,
}

/// What the owner asks an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentRequest {
    /// Report every span you have.
    Heartbeat(Heartbeat),
    /// Add or remove one span.
    Dispatch(Dispatch),
}

/// A heartbeat: the agent answers with a [`HeartbeatResponse`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The capture is being drained: it should report itself stopping and expect its spans to
    /// move away.
    pub is_stopping: bool,
}

/// An order about one span.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dispatch {
    /// Add the span: prepare it (`prepare`, the first phase) or replicate it (the second phase).
    Add {
        /// The span.
        span: Span,
        /// Where the pipeline starts: the span's checkpoint as the owner knows it.
        checkpoint: Checkpoint,
        /// Prepare only (the capture is the secondary); otherwise replicate.
        prepare: bool,
    },
    /// Stop and drop the span.
    Remove {
        /// The span.
        span: SpanRef,
    },
}

impl Dispatch {
    /// The span this order is about.
    pub fn span_ref(&self) -> SpanRef {
        match self {
            Dispatch::Add { span, .. } => span.span_ref(),
            Dispatch::Remove { span } => span.clone(),
        }
    }
}

/// A message from an agent to the owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToOwner {
    /// The agent's capture.
    pub from: CaptureId,
    /// The owner's capture.
    pub to: CaptureId,
    /// The revision of the owner this answers.
    pub owner_revision: OwnerRevision,
    /// The agent's epoch.
    pub epoch: Epoch,
    /// The answer.
    pub body: OwnerResponse,
}

/// What an agent tells the owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerResponse {
    /// The answer to a heartbeat.
    Heartbeat(HeartbeatResponse),
    /// The outcome of a dispatch, or a change the agent reports on its own (a pipeline stopped).
    Dispatch(DispatchResponse),
}

/// The answer to a heartbeat: every span the agent has.
///
/// A span the owner placed on this capture that is missing here is absent from it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// The agent's spans, each with its state and progress.
    pub spans: Vec<SpanStatus>,
    /// The capture is stopping (shutting down or drained): it must be given no span.
    pub stopping: bool,
}

/// The state of one span after a dispatch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatchResponse {
    /// The span's status.
    pub status: SpanStatus,
}

/// One span as an agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpanStatus {
    /// The span.
    pub span: SpanRef,
    /// Its state on the agent.
    pub state: AgentSpanState,
    /// Its progress on the agent.
    pub checkpoint: Checkpoint,
}
