//! The etcd span source: the changes of one key range of an upstream etcd, in revision order,
//! from a start revision, with a resolved revision.
//!
//! - [`EtcdSource`]: watches `[start, end)` from checkpoint + 1 through `cdc-etcd`'s resilient
//!   watch on a shared [`cdc_etcd::EtcdClient`] (the spans of one upstream share its connection)
//!   and yields [`SourceOutput`]s: batches of [`cdc_model::ChangeEvent`]s and resolved revisions.
//! - [`KeyRange`]: a span's key range.
//! - [`SourceConfig`]: buffer bound and progress timing.
//!
//! Invariants: events come out in revision order, each revision whole; the resolved revision
//! only moves forward and never passes an event not yet handed out; a compacted start or resume
//! revision ends the source with [`Error::Compacted`] naming it, never skipping data; memory is
//! bounded by [`SourceConfig::buffer`] watch responses, so a consumer that stops calling
//! [`EtcdSource::next`] stops the reading of the watch.
//!
//! Not here: sinks (`cdc-sink`) and the pipeline that keeps the checkpoint (`cdc-processor`).
#![warn(missing_docs)]

mod error;
mod source;

pub use error::{Error, Result};
pub use source::{EtcdSource, KeyRange, SourceConfig, SourceOutput};

#[cfg(test)]
mod tests;
