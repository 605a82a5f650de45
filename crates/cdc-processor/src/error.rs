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
    /// The changefeed of a span to start is not in the cluster state (removed meanwhile).
    #[error("[CDC:ErrChangeFeedNotExists]changefeed {changefeed} does not exist")]
    ChangefeedNotFound {
        /// The changefeed.
        changefeed: String,
    },
    /// The changefeed's sink URI does not parse.
    #[error("[CDC:ErrSinkURIInvalid]sink uri of changefeed {changefeed} is invalid")]
    SinkUri {
        /// The changefeed.
        changefeed: String,
        /// The cause.
        #[source]
        source: cdc_sink::Error,
    },
    /// The changefeed's rules (key prefixes) do not decode.
    #[error("[CDC:ErrInvalidReplicaConfig]rules of changefeed {changefeed} are invalid: {reason}")]
    InvalidRules {
        /// The changefeed.
        changefeed: String,
        /// What is wrong with them.
        reason: String,
    },
    /// The changefeed names an upstream that is not in the cluster state.
    #[error(
        "[CDC:ErrUpstreamNotFound]upstream {upstream_id} of changefeed {changefeed} does not exist"
    )]
    UpstreamNotFound {
        /// The changefeed.
        changefeed: String,
        /// The upstream.
        upstream_id: u64,
    },
    /// Connecting to an upstream failed.
    #[error("[CDC:ErrEtcdConnect]connecting to upstream {upstream_id} at {endpoints} failed")]
    UpstreamConnect {
        /// The upstream.
        upstream_id: u64,
        /// Its endpoints.
        endpoints: String,
        /// The cause.
        #[source]
        source: cdc_etcd::Error,
    },
    /// The span log could not be opened or written.
    #[error("[CDC:ErrProcessorUnknown]span log {path} failed", path = path.display())]
    SpanLog {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A setting is out of range.
    #[error("[CDC:ErrInvalidServerOption]processor {field} {reason}")]
    InvalidConfig {
        /// The setting.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
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
            // The changefeed may be created again, the URI or the upstream fixed by an update.
            Error::ChangefeedNotFound { .. } => false,
            Error::SinkUri { .. } => false,
            Error::InvalidRules { .. } => false,
            Error::UpstreamNotFound { .. } => true,
            Error::UpstreamConnect { source, .. } => source.is_retryable(),
            Error::SpanLog { .. } => false,
            Error::InvalidConfig { .. } => false,
        }
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
