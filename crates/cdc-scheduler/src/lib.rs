//! The pure scheduling core: which capture runs which span of which changefeed, moved two-phase
//! so that a span never runs on two captures at once.
//!
//! This crate is the engine, not the runtime: it has no async runtime, performs no IO and never
//! reads a clock. Time, revisions, the alive captures and the messages come in as data; messages
//! and pipeline commands go out as data. The owner and processor crates carry the messages over
//! p2p and run the pipelines. The protocol is TiCDC's scheduler v3
//! (`cdc/scheduler/internal/v3` in pingcap/tiflow), rewritten.
//!
//! Key types: [`Coordinator`] (owner side, all changefeeds), [`Agent`] (one per capture),
//! [`ReplicationSet`] (the owner's state machine for one span), [`Span`], the messages
//! [`ToAgent`] and [`ToOwner`], and [`advance_watermark`] for the changefeed checkpoint.
//!
//! # The protocol
//!
//! * **Heartbeats.** Every heartbeat interval the coordinator sends each alive capture a
//!   [`Heartbeat`]; the agent answers with every span it has, its state and progress, and whether
//!   the capture is stopping. A span the owner placed on a capture that the answer leaves out is
//!   absent there. Lost dispatches are repaired by these answers: each answer is fed to the
//!   span's record, which repeats the order the span is waiting for.
//! * **Add** (two-phase): the span's record turns `prepare` and the target is told
//!   [`Dispatch::Add`] with `prepare`; once it reports prepared the record turns `commit`, the
//!   target is promoted to primary and told to replicate; when it reports replicating the record
//!   turns `replicating`.
//! * **Move**: the target prepares as the secondary while the primary replicates on; once it is
//!   prepared the primary is told [`Dispatch::Remove`], and only when the primary reports the span
//!   stopped (or absent, or the primary's capture is gone) is the secondary promoted and told to
//!   replicate.
//! * **Remove**: every capture with the span is told to remove it; the record is forgotten once
//!   all report it stopped or absent.
//! * **Captures that disappear**: a capture gone from the cluster runs nothing any more; each of
//!   its roles is cleared as if it had reported the span stopped, so an add falls back to absent,
//!   a move either promotes its prepared secondary (the primary is gone) or falls back to
//!   replicating (the secondary is gone), and a replicating span becomes absent and is added
//!   elsewhere.
//! * **Safety.** A capture is told to replicate only when the span's record has no other primary
//!   and no undetermined capture (one that may still run it: it stopped unasked, or it runs the
//!   span without the owner having placed it there, and is being told to stop). An agent counts a
//!   span as running from the order to replicate until its pipeline reports it stopped, and
//!   reports it stopped only then. Only a prepared span is told to replicate. A stopped span
//!   (asked to, or its pipeline failed) stays on the agent, stopped, until the owner acknowledges
//!   the stop with a [`Dispatch::Remove`]: orders the owner sent before it learned of the stop
//!   reach the agent before the acknowledgment and find the span stopped, so none of them starts
//!   it again after the owner has placed it elsewhere.
//! * **Owner changes.** Every message carries the owner revision; an agent adopts a newer owner
//!   and ignores messages from older ones. Every dispatch also carries the agent's epoch, learned
//!   from its heartbeat answers, and an agent ignores dispatches for another epoch (a former
//!   incarnation of itself). A new coordinator schedules nothing until every alive capture has
//!   answered a heartbeat; it then rebuilds each span's record from the answers, so nothing that
//!   runs is restarted. A span reported replicating on several captures keeps the most advanced
//!   one and the others are told to stop.
//! * **Balance.** Spans of each changefeed are spread evenly over the alive captures that are not
//!   stopping (ties go to the capture with fewer spans overall). A stopping or drained capture is
//!   given none and its spans are moved away; at most `max_task_concurrency` spans of one
//!   changefeed are in an add or a move when a move starts. The spread is checked when captures
//!   join or leave, at every tick while moves remain to be made, and every `balance_interval`.
//! * **Checkpoint.** A span's progress is the most advanced any capture reported and never moves
//!   back; a span starts at the changefeed's checkpoint or later. The changefeed's checkpoint is
//!   the minimum over its spans and never moves back ([`advance_watermark`]).
//!
//! Assumptions the safety rests on, and their hazards:
//! * Messages from one capture to another arrive in the order they were sent, or not at all (p2p
//!   streams are ordered). A transport that reordered them could deliver an old order to
//!   replicate after a later remove.
//! * A capture gone from the cluster has stopped its pipelines (a capture that loses its session
//!   restarts as a new capture, see ARCHITECTURE.md). A process that keeps writing after its
//!   capture key expired would run a span next to its new capture.
//! * A former owner stops sending once a new one is elected; agents that have heard from the new
//!   owner ignore it, but an agent that has not could still follow it.
//! * A new agent incarnation on the same capture has a larger epoch than the former one, and the
//!   processor stops the former one's pipelines before starting it.
//!
//! Liveness: while an alive capture has not answered its first heartbeat, the coordinator starts
//! no add or move (TiCDC does the same), so a capture that is registered but unreachable over p2p
//! holds the schedule until it answers or leaves the cluster.
#![warn(missing_docs)]

mod agent;
mod config;
mod coordinator;
mod error;
mod message;
pub mod replica;
mod replication;
mod span;
pub mod split;

pub use agent::{Agent, AgentOutput, PipelineCommand, PipelineEvent};
pub use config::SchedulerConfig;
pub use coordinator::{CaptureView, Coordinator, SpanView};
pub use error::{Error, Result};
pub use message::{
    AgentRequest, Dispatch, DispatchResponse, Epoch, Heartbeat, HeartbeatResponse, OwnerResponse,
    OwnerRevision, SpanStatus, TO_AGENT_TOPIC, TO_OWNER_TOPIC, ToAgent, ToOwner,
};
pub use replication::{Order, ReplicationSet, Role};
pub use span::{AgentSpanState, Checkpoint, Span, SpanId, SpanRef, SpanState, advance_watermark};

#[cfg(test)]
mod tests;
