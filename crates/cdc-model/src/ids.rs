//! Identifiers (capture, changefeed, upstream) and their validation.

use std::fmt;

use crate::error::{Error, Result};

/// The ID of one capture incarnation: a random UUIDv4 in canonical lowercase form.
///
/// Peers treat it as opaque.
pub type CaptureId = String;

/// A fresh capture ID: a random UUIDv4, canonical lowercase.
pub fn new_capture_id() -> CaptureId {
    uuid::Uuid::new_v4().to_string()
}

/// The ID of an upstream: the PD cluster ID.
pub type UpstreamId = u64;

/// The namespace used when none is given.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The maximum length, in bytes, of a changefeed ID, a namespace or a cluster ID.
pub const MAX_ID_LEN: usize = 128;

/// Words a cluster ID must not be, because they are key-layout segments.
pub const RESERVED_CLUSTER_IDS: [&str; 6] =
    ["owner", "capture", "task", "changefeed", "job", "meta"];

/// The ID of a changefeed: a namespace and an ID within it. Displayed as `namespace/id`.
///
/// Construction does not validate; key parsing accepts any string. Validate API input
/// with [`validate_changefeed_id`] and [`validate_namespace`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChangeFeedId {
    /// The namespace, `default` unless given.
    pub namespace: String,
    /// The ID within the namespace.
    pub id: String,
}

impl ChangeFeedId {
    /// Builds an ID from a namespace and an ID.
    pub fn new(namespace: impl Into<String>, id: impl Into<String>) -> Self {
        ChangeFeedId {
            namespace: namespace.into(),
            id: id.into(),
        }
    }

    /// Builds an ID in the default namespace.
    pub fn default_namespace(id: impl Into<String>) -> Self {
        ChangeFeedId::new(DEFAULT_NAMESPACE, id)
    }
}

impl fmt::Display for ChangeFeedId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.id)
    }
}

/// Whether `s` matches `^[a-zA-Z0-9]+(-[a-zA-Z0-9]+)*$` and is at most [`MAX_ID_LEN`] bytes.
fn is_valid_id(s: &str) -> bool {
    s.len() <= MAX_ID_LEN
        && s.split('-').all(|segment| {
            !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_alphanumeric())
        })
}

/// Validates a changefeed ID given as API input.
pub fn validate_changefeed_id(id: &str) -> Result<()> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(Error::InvalidChangefeedId { id: id.to_owned() })
    }
}

/// Validates a namespace given as API input.
pub fn validate_namespace(namespace: &str) -> Result<()> {
    if is_valid_id(namespace) {
        Ok(())
    } else {
        Err(Error::InvalidNamespace {
            namespace: namespace.to_owned(),
        })
    }
}

/// Validates a cluster ID given as server configuration.
pub fn validate_cluster_id(id: &str) -> Result<()> {
    if !is_valid_id(id) {
        return Err(Error::InvalidClusterId {
            id: id.to_owned(),
            reason: "must match ^[a-zA-Z0-9]+(-[a-zA-Z0-9]+)*$ and be at most 128 bytes",
        });
    }
    if RESERVED_CLUSTER_IDS.contains(&id) {
        return Err(Error::InvalidClusterId {
            id: id.to_owned(),
            reason: "is a reserved word (owner, capture, task, changefeed, job, meta)",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
