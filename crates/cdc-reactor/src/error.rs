//! The error type of reactors: what an owner, controller or processor manager tick returns.

/// A boxed error of a reactor crate.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A reactor's failure. The capture decides from [`Error::restarts_capture`] whether a new
/// incarnation may recover from it or the process must end.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An etcd call failed.
    #[error("etcd")]
    Etcd(#[from] cdc_etcd::Error),
    /// The etcd worker or the reactor state failed.
    #[error("etcd worker")]
    Orchestrator(#[from] cdc_orchestrator::Error),
    /// A p2p call failed.
    #[error("p2p")]
    P2p(#[from] cdc_p2p::Error),
    /// Data did not decode or encode.
    #[error("model")]
    Model(#[from] cdc_model::Error),
    /// The reactor's own error, classified by the reactor crate that raised it.
    #[error("{what}")]
    Reactor {
        /// What failed, for the log.
        what: &'static str,
        /// The reactor crate's error.
        #[source]
        source: BoxError,
        /// Whether a new incarnation of the capture may recover; `false` ends the process.
        restarts_capture: bool,
    },
    /// The reactor was cancelled.
    #[error("context canceled")]
    Cancelled,
}

/// The result of reactor calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps a reactor crate's error.
    pub fn reactor(
        what: &'static str,
        source: impl Into<BoxError>,
        restarts_capture: bool,
    ) -> Error {
        Error::Reactor {
            what,
            source: source.into(),
            restarts_capture,
        }
    }

    /// Whether a new incarnation of the capture may recover from this error. Errors of the
    /// layers below are classified by the capture, which knows their retry rules; this answers
    /// for the reactor's own errors and says `true` for the others, which the capture refines.
    pub fn restarts_capture(&self) -> bool {
        match self {
            Error::Reactor {
                restarts_capture, ..
            } => *restarts_capture,
            Error::Etcd(_)
            | Error::Orchestrator(_)
            | Error::P2p(_)
            | Error::Model(_)
            | Error::Cancelled => true,
        }
    }
}
