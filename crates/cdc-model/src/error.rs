//! The error type of `cdc-model`.

use crate::ids::ChangeFeedId;

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while validating, decoding or encoding model values.
///
/// The bracketed prefixes are TiCDC's RFC error codes, kept because logs, HTTP responses
/// and tests match on them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A changefeed ID does not match `^[a-zA-Z0-9]+(-[a-zA-Z0-9]+)*$` or is too long.
    #[error(
        "[CDC:ErrInvalidChangefeedID] bad changefeed id {id:?}, please match the pattern \"^[a-zA-Z0-9]+(\\-[a-zA-Z0-9]+)*$\", the length should no more than 128, eg, \"simple-changefeed-task\""
    )]
    InvalidChangefeedId {
        /// The rejected ID.
        id: String,
    },
    /// A namespace does not match the ID pattern or is too long.
    #[error(
        "[CDC:ErrInvalidNamespaceName] bad namespace {namespace:?}, please match the pattern \"^[a-zA-Z0-9]+(\\-[a-zA-Z0-9]+)*$\", the length should no more than 128, eg, \"simple-namespace-test\""
    )]
    InvalidNamespace {
        /// The rejected namespace.
        namespace: String,
    },
    /// A cluster ID does not match the ID pattern, is too long, or is a reserved word.
    #[error("[CDC:ErrInvalidServerOption] invalid cluster id {id:?}: {reason}")]
    InvalidClusterId {
        /// The rejected cluster ID.
        id: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A JSON value could not be decoded into a model type.
    #[error("[CDC:ErrUnmarshalFailed] decode {what}")]
    Decode {
        /// The type that was being decoded.
        what: &'static str,
        /// The decoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// A model value could not be encoded as JSON.
    #[error("[CDC:ErrMarshalFailed] encode {what}")]
    Encode {
        /// The type that was being encoded.
        what: &'static str,
        /// The encoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// A time string is not an RFC 3339 time that Go accepts.
    #[error("invalid time {input:?}: {reason}")]
    InvalidTime {
        /// The rejected input.
        input: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A changefeed info has `"config": null` (Go panics here).
    #[error("changefeed {changefeed} has a null config")]
    NullConfig {
        /// The changefeed whose info is broken.
        changefeed: ChangeFeedId,
    },
    /// A changefeed info has a `config` that is not a JSON object.
    #[error("changefeed {changefeed} has a config that is not a JSON object")]
    ConfigNotObject {
        /// The changefeed whose info is broken.
        changefeed: ChangeFeedId,
    },
    /// A key is not a well-formed key of the cluster (`crate::key`).
    #[error("[CDC:ErrInvalidEtcdKey]invalid key: {key}: {reason}")]
    InvalidEtcdKey {
        /// The key (invalid UTF-8 replaced).
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl Error {
    /// Whether retrying the same operation could succeed.
    ///
    /// Every error of this crate is about the data itself, so none is retryable: the same
    /// input gives the same error.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::InvalidChangefeedId { .. }
            | Error::InvalidNamespace { .. }
            | Error::InvalidClusterId { .. }
            | Error::Decode { .. }
            | Error::Encode { .. }
            | Error::InvalidTime { .. }
            | Error::NullConfig { .. }
            | Error::ConfigNotObject { .. }
            | Error::InvalidEtcdKey { .. } => false,
        }
    }
}
