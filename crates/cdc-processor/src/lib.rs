//! The processor side of the data plane: the processor manager every capture runs, the
//! scheduler agent's runtime, and the span pipelines (etcd source to a sink).
//!
//! - [`ProcessorReactors`]: the `cdc_reactor::ProcessorManagerFactory` the server wires in. Per
//!   capture incarnation one [`Processor`], ticked on the capture's etcd worker: the owner's
//!   messages arrive on the p2p topic [`TO_AGENT_TOPIC`] (queued, bounded, and handled in
//!   ticks), answers go to the owner on [`TO_OWNER_TOPIC`]; spans of one upstream share one
//!   etcd client; pipeline errors are written into the changefeed's task position; every tick
//!   checks that the capture key still exists. Settings: [`ProcessorConfig`].
//! - [`SpanPipeline`]: `start(span, from_revision)` gives a [`PipelineHandle`], whose progress
//!   ([`PipelineProgress`]: checkpoint and resolved revision) is readable and watchable and whose
//!   [`PipelineHandle::stop`] is awaited. Test doubles implement the same trait.
//! - [`EtcdPipeline`]: runs a span from an upstream etcd ([`cdc_source_etcd::EtcdSource`]) into
//!   a sink opened per span by a [`SinkFactory`]; [`UriSinks`] opens the sink a sink URI names.
//! - [`Processor`]: the runtime around the scheduler's `Agent`: the owner's messages in, the
//!   agent's pipeline commands carried out through a [`PipelineFactory`], pipeline progress and
//!   stops back into the agent, and every start and stop in the [`SpanLog`].
//!
//! Invariants: the checkpoint never passes what the sink's last completed flush covers, and it
//! and the resolved revision only move forward; every pipeline task is owned by its handle and
//! stopped through a `CancellationToken`; a span's pipeline starts only on the owner's order to
//! replicate, and the agent reports it stopped only after its task has ended.
#![warn(missing_docs)]

mod config;
mod error;
mod manager;
mod pipeline;
mod processor;
mod rules;
mod span_log;

pub use config::ProcessorConfig;
pub use error::{Error, Result};
pub use manager::{ProcessorReactors, TO_AGENT_TOPIC, TO_OWNER_TOPIC};
pub use pipeline::{
    EtcdPipeline, PipelineConfig, PipelineHandle, PipelineProgress, PipelineState,
    ProgressReporter, SinkFactory, SpanPipeline, UriSinks,
};
pub use processor::{PipelineFactory, Processor, ProcessorOutput, SpanFailure, Wake};
pub use span_log::{SpanEvent, SpanLog, monotonic_ns};

#[cfg(test)]
mod tests;
