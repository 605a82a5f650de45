//! The error type of this crate.

/// Errors of the span pipelines.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The span's source failed.
    #[error("[CDC:ErrProcessorSource]source of span {span} failed")]
    Source {
        /// The span.
        span: String,
        /// The cause.
        #[source]
        source: cdc_source_etcd::Error,
    },
    /// The span's sink failed.
    #[error("[CDC:ErrProcessorSink]sink of span {span} failed")]
    Sink {
        /// The span.
        span: String,
        /// The cause.
        #[source]
        source: cdc_sink::Error,
    },
    /// The span has no explicit end key, so its range is unknown to the pipeline.
    #[error("[CDC:ErrInvalidSpan]span {span} has no end key")]
    UnboundedSpan {
        /// The span.
        span: String,
    },
    /// The pipeline's task panicked or was aborted.
    #[error("[CDC:ErrProcessorUnknown]pipeline of span {span} ended abnormally")]
    TaskFailed {
        /// The span.
        span: String,
    },
}

impl Error {
    /// Whether running the span again from its checkpoint may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Source { source, .. } => source.is_retryable(),
            Error::Sink { source, .. } => source.is_retryable(),
            Error::UnboundedSpan { .. } => false,
            Error::TaskFailed { .. } => true,
        }
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
