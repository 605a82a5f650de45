//! Spans, their identities, progress and states, and the changefeed checkpoint rule.

use std::fmt;

use cdc_model::ChangeFeedId;
use serde::{Deserialize, Serialize};

/// The ID of a span within its changefeed, fixed for the changefeed's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SpanId(pub u64);

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A key range of the upstream that one capture replicates: TiCDC's table span.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    /// The span's ID within its changefeed.
    pub span_id: SpanId,
    /// The changefeed the span belongs to.
    #[serde(with = "changefeed_id_serde")]
    pub changefeed: ChangeFeedId,
    /// The first key of the range (inclusive).
    pub start_key: Vec<u8>,
    /// The end of the range (exclusive); empty means the end of the prefix the span was cut from.
    pub end_key: Vec<u8>,
}

impl Span {
    /// The identity of this span.
    pub fn span_ref(&self) -> SpanRef {
        SpanRef {
            changefeed: self.changefeed.clone(),
            span_id: self.span_id,
        }
    }
}

/// The identity of a span: its changefeed and its ID there.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SpanRef {
    /// The changefeed.
    #[serde(with = "changefeed_id_serde")]
    pub changefeed: ChangeFeedId,
    /// The span's ID within the changefeed.
    pub span_id: SpanId,
}

impl fmt::Display for SpanRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.changefeed, self.span_id)
    }
}

/// The progress of a span, as revisions of the upstream.
///
/// `checkpoint`: every event at or below it is durable in the sink. `resolved`: every event at or
/// below it has been received from the source. Both only move forward.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct Checkpoint {
    /// The checkpoint revision.
    pub checkpoint: u64,
    /// The resolved revision.
    pub resolved: u64,
}

impl Checkpoint {
    /// A progress whose checkpoint and resolved revisions are both `revision`.
    pub fn at(revision: u64) -> Checkpoint {
        Checkpoint {
            checkpoint: revision,
            resolved: revision,
        }
    }

    /// Merges `other` into `self`, keeping the larger of each revision, so progress never moves
    /// back.
    pub fn merge(&mut self, other: Checkpoint) {
        self.checkpoint = self.checkpoint.max(other.checkpoint);
        self.resolved = self.resolved.max(other.resolved);
    }
}

/// The owner's view of a span: TiCDC's replication set state
/// (`cdc/scheduler/internal/v3/replication/replication_set.go` in pingcap/tiflow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpanState {
    /// No capture runs or prepares the span.
    Absent,
    /// A capture (the secondary) is preparing the span; another may still replicate it.
    Prepare,
    /// The secondary is prepared; the former primary is being stopped or the secondary promoted.
    Commit,
    /// Exactly one capture (the primary) replicates the span.
    Replicating,
    /// Every capture that has the span is being told to stop it.
    Removing,
}

impl SpanState {
    /// The lowercase name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            SpanState::Absent => "absent",
            SpanState::Prepare => "prepare",
            SpanState::Commit => "commit",
            SpanState::Replicating => "replicating",
            SpanState::Removing => "removing",
        }
    }
}

impl fmt::Display for SpanState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An agent's view of one of its spans: TiCDC's `tablepb.TableState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentSpanState {
    /// The agent does not have the span.
    Absent,
    /// The pipeline is being prepared (source opened, nothing written to the sink).
    Preparing,
    /// The pipeline is prepared and waits for the order to replicate.
    Prepared,
    /// The pipeline writes the span's events to the sink.
    Replicating,
    /// The pipeline is being stopped; it may still write to the sink.
    Stopping,
    /// The pipeline has stopped; nothing more is written.
    Stopped,
}

impl AgentSpanState {
    /// The lowercase name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentSpanState::Absent => "absent",
            AgentSpanState::Preparing => "preparing",
            AgentSpanState::Prepared => "prepared",
            AgentSpanState::Replicating => "replicating",
            AgentSpanState::Stopping => "stopping",
            AgentSpanState::Stopped => "stopped",
        }
    }

    /// Whether a pipeline in this state is certainly not running.
    pub fn is_gone(self) -> bool {
        match self {
            AgentSpanState::Absent | AgentSpanState::Stopped => true,
            AgentSpanState::Preparing
            | AgentSpanState::Prepared
            | AgentSpanState::Replicating
            | AgentSpanState::Stopping => false,
        }
    }
}

impl fmt::Display for AgentSpanState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The next changefeed watermark (checkpoint or resolved revision) from the previous one and its
/// spans' current ones: the minimum over the spans, but never below `previous`.
///
/// The result never passes any span's value as long as no span is behind `previous`, which the
/// coordinator ensures by starting every span at or above the changefeed's checkpoint and by
/// never moving a span's progress back. With no spans the watermark stays where it is.
pub fn advance_watermark(previous: u64, spans: impl IntoIterator<Item = u64>) -> u64 {
    match spans.into_iter().min() {
        Some(min) => min.max(previous),
        None => previous,
    }
}

/// Serde for [`ChangeFeedId`] as `{"namespace", "id"}`; the model type itself is not serializable.
pub(crate) mod changefeed_id_serde {
    use cdc_model::ChangeFeedId;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Wire<'a> {
        #[serde(borrow)]
        namespace: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        id: std::borrow::Cow<'a, str>,
    }

    pub(crate) fn serialize<S: Serializer>(
        changefeed: &ChangeFeedId,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        Wire {
            namespace: changefeed.namespace.as_str().into(),
            id: changefeed.id.as_str().into(),
        }
        .serialize(serializer)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<ChangeFeedId, D::Error> {
        let wire = Wire::deserialize(deserializer)?;
        Ok(ChangeFeedId::new(wire.namespace, wire.id))
    }
}
