//! The processor side of the data plane. For now only the span pipeline: the trait every
//! pipeline implements and the etcd pipeline (etcd source to a sink).
//!
//! - [`SpanPipeline`]: `start(span, from_revision)` gives a [`PipelineHandle`], whose progress
//!   ([`PipelineProgress`]: checkpoint and resolved revision) is readable and watchable and whose
//!   [`PipelineHandle::stop`] is awaited. Test doubles implement the same trait.
//! - [`EtcdPipeline`]: runs a span from an upstream etcd ([`cdc_source_etcd::EtcdSource`]) into
//!   a sink opened per span by a [`SinkFactory`]; [`UriSinks`] opens the sink a sink URI names.
//!
//! Invariants: the checkpoint never passes what the sink's last completed flush covers, and it
//! and the resolved revision only move forward; every pipeline task is owned by its handle and
//! stopped through a `CancellationToken`.
//!
//! Not here (yet): the processor manager and the scheduler agent's runtime.
#![warn(missing_docs)]

mod error;
mod pipeline;

pub use error::{Error, Result};
pub use pipeline::{
    EtcdPipeline, PipelineConfig, PipelineHandle, PipelineProgress, PipelineState,
    ProgressReporter, SinkFactory, SpanPipeline, UriSinks,
};

#[cfg(test)]
mod tests;
