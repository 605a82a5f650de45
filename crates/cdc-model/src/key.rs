//! The etcd key layout of a TiCDC cluster (`docs/etcd-keys.md`; TiCDC's `pkg/etcd/etcdkey.go`).
//!
//! [`CdcKey::parse`] and [`CdcKey`]'s `Display` are exact inverses for every key TiCDC writes.
//! Unlike the reference, parsing requires a `/` boundary after every fixed segment, so cluster
//! `default` never claims the keys of cluster `default-2`, and malformed keys (including the bare
//! keys on which the reference panics) are [`Error::InvalidEtcdKey`] errors.
//!
//! The layout is pure string work, so it lives here rather than in `cdc-etcd`: the pure
//! orchestrator states parse keys without linking an etcd client (`ARCHITECTURE.md`).

use std::fmt;

use crate::error::{Error, Result};
use crate::ids::{CaptureId, ChangeFeedId};

/// An etcd lease ID as the owner keys carry it: etcd's plain `i64` (the same type as the etcd
/// client's lease IDs).
pub type LeaseId = i64;

/// The root of every TiCDC key.
pub const ROOT: &str = "/tidb/cdc";
/// The segment that separates cluster metadata from namespaces.
pub const META_SEGMENT: &str = "__cdc_meta__";
/// The segment under [`ROOT`] that holds migration backups.
pub const BACKUP_SEGMENT: &str = "__backup__";
/// The root of migration backups: `/tidb/cdc/__backup__/<version>/<old key>`.
pub const BACKUP_PREFIX: &str = "/tidb/cdc/__backup__";
/// The prefixes of the pre-v6.2 layout that a migration backs up and then deletes.
pub const LEGACY_PREFIXES: [&str; 8] = [
    "/tidb/cdc/changefeed/info",
    "/tidb/cdc/job",
    "/tidb/cdc/meta/ticdc-delete-etcd-key-count",
    "/tidb/cdc/owner",
    "/tidb/cdc/capture",
    "/tidb/cdc/task/workload",
    "/tidb/cdc/task/position",
    "/tidb/cdc/task/status",
];

const OWNER: &str = "owner";
const CAPTURE: &str = "capture";
const META_VERSION: &str = "meta/meta-version";
const DELETE_COUNTER: &str = "meta/ticdc-delete-etcd-key-count";
const CHANGEFEED_INFO: &str = "changefeed/info";
const CHANGEFEED_STATUS: &str = "changefeed/status";
const TASK_POSITION: &str = "task/position";
const UPSTREAM: &str = "upstream";

/// What a key of a cluster holds, with the IDs its path carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CdcKeyKind {
    /// `__cdc_meta__/owner[/<leaseHex>]`: an owner candidate; the value is a capture ID. The bare
    /// key (no lease) is the election prefix itself.
    Owner {
        /// The lease part as written (lowercase hex in keys TiCDC writes); `None` for the bare key.
        lease: Option<String>,
    },
    /// `__cdc_meta__/capture/<captureID>`: a `CaptureInfo`.
    Capture {
        /// The capture ID (everything after `capture/`).
        capture_id: String,
    },
    /// `__cdc_meta__/meta/meta-version`: the metadata layout version.
    MetaVersion,
    /// `__cdc_meta__/meta/ticdc-delete-etcd-key-count`: the etcd worker's delete counter.
    DeleteCounter,
    /// `<NS>/changefeed/info/<cfID>`: a `ChangeFeedInfo`.
    ChangefeedInfo {
        /// The namespace.
        namespace: String,
        /// The changefeed ID (may contain `/`).
        changefeed_id: String,
    },
    /// `<NS>/changefeed/status/<cfID>`: a `ChangeFeedStatus`.
    ChangefeedStatus {
        /// The namespace.
        namespace: String,
        /// The changefeed ID (may contain `/`).
        changefeed_id: String,
    },
    /// `<NS>/task/position/<captureID>/<cfID>`: a `TaskPosition`.
    TaskPosition {
        /// The namespace.
        namespace: String,
        /// The capture ID (up to the first `/`).
        capture_id: String,
        /// The changefeed ID (the rest, may contain `/` or be empty).
        changefeed_id: String,
    },
    /// `<NS>/upstream/<id>`: an `UpstreamInfo`.
    Upstream {
        /// The namespace.
        namespace: String,
        /// The upstream (PD cluster) ID.
        upstream_id: u64,
    },
}

/// A parsed key of cluster `cluster_id`. `Display` formats it back to the exact etcd key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CdcKey {
    /// The cluster the key belongs to.
    pub cluster_id: String,
    /// What the key holds.
    pub kind: CdcKeyKind,
}

fn invalid(key: &str, reason: &'static str) -> Error {
    Error::InvalidEtcdKey {
        key: key.to_owned(),
        reason,
    }
}

/// Strips `segment` followed by a `/` boundary and returns the rest (possibly empty); `None`
/// when `path` does not start with `segment/`.
fn after_segment<'a>(path: &'a str, segment: &str) -> Option<&'a str> {
    path.strip_prefix(segment)?.strip_prefix('/')
}

impl CdcKey {
    /// Parses a key of cluster `cluster_id`.
    pub fn parse(cluster_id: &str, key: &str) -> Result<CdcKey> {
        let rest = after_segment(key, ROOT).ok_or_else(|| invalid(key, "not under /tidb/cdc/"))?;
        let rest = after_segment(rest, cluster_id)
            .ok_or_else(|| invalid(key, "not under /tidb/cdc/<cluster>/ of this cluster"))?;
        let kind = if let Some(meta) = after_segment(rest, META_SEGMENT) {
            Self::parse_meta(key, meta)?
        } else {
            let (namespace, path) = rest
                .split_once('/')
                .ok_or_else(|| invalid(key, "no namespace path"))?;
            if namespace.is_empty() {
                return Err(invalid(key, "empty namespace"));
            }
            Self::parse_namespaced(key, namespace, path)?
        };
        Ok(CdcKey {
            cluster_id: cluster_id.to_owned(),
            kind,
        })
    }

    /// Parses a raw etcd key; a key that is not UTF-8 is invalid.
    pub fn parse_bytes(cluster_id: &str, key: &[u8]) -> Result<CdcKey> {
        match std::str::from_utf8(key) {
            Ok(key) => CdcKey::parse(cluster_id, key),
            Err(_) => Err(invalid(&String::from_utf8_lossy(key), "not UTF-8")),
        }
    }

    fn parse_meta(key: &str, meta: &str) -> Result<CdcKeyKind> {
        if meta == OWNER {
            return Ok(CdcKeyKind::Owner { lease: None });
        }
        if let Some(lease) = after_segment(meta, OWNER) {
            if lease.is_empty() {
                return Err(invalid(key, "empty owner lease"));
            }
            return Ok(CdcKeyKind::Owner {
                lease: Some(lease.to_owned()),
            });
        }
        if let Some(capture_id) = after_segment(meta, CAPTURE) {
            return Ok(CdcKeyKind::Capture {
                capture_id: capture_id.to_owned(),
            });
        }
        match meta {
            META_VERSION => Ok(CdcKeyKind::MetaVersion),
            DELETE_COUNTER => Ok(CdcKeyKind::DeleteCounter),
            _ => Err(invalid(key, "unknown meta key")),
        }
    }

    fn parse_namespaced(key: &str, namespace: &str, path: &str) -> Result<CdcKeyKind> {
        let namespace = namespace.to_owned();
        if let Some(changefeed_id) = after_segment(path, CHANGEFEED_INFO) {
            return Ok(CdcKeyKind::ChangefeedInfo {
                namespace,
                changefeed_id: changefeed_id.to_owned(),
            });
        }
        if let Some(id) = after_segment(path, UPSTREAM) {
            let upstream_id: u64 = id
                .parse()
                .map_err(|_| invalid(key, "upstream ID is not a decimal u64"))?;
            // "+1" and "01" parse but would not format back to the same key.
            if upstream_id.to_string() != id {
                return Err(invalid(key, "upstream ID is not in canonical decimal form"));
            }
            return Ok(CdcKeyKind::Upstream {
                namespace,
                upstream_id,
            });
        }
        if let Some(changefeed_id) = after_segment(path, CHANGEFEED_STATUS) {
            return Ok(CdcKeyKind::ChangefeedStatus {
                namespace,
                changefeed_id: changefeed_id.to_owned(),
            });
        }
        if let Some(rest) = after_segment(path, TASK_POSITION) {
            let (capture_id, changefeed_id) = rest
                .split_once('/')
                .ok_or_else(|| invalid(key, "task position without changefeed part"))?;
            return Ok(CdcKeyKind::TaskPosition {
                namespace,
                capture_id: capture_id.to_owned(),
                changefeed_id: changefeed_id.to_owned(),
            });
        }
        Err(invalid(key, "unknown namespaced key"))
    }

    /// The changefeed of a changefeed info, changefeed status or task position key.
    pub fn changefeed(&self) -> Option<ChangeFeedId> {
        match &self.kind {
            CdcKeyKind::ChangefeedInfo {
                namespace,
                changefeed_id,
            }
            | CdcKeyKind::ChangefeedStatus {
                namespace,
                changefeed_id,
            }
            | CdcKeyKind::TaskPosition {
                namespace,
                changefeed_id,
                ..
            } => Some(ChangeFeedId::new(namespace.clone(), changefeed_id.clone())),
            CdcKeyKind::Owner { .. }
            | CdcKeyKind::Capture { .. }
            | CdcKeyKind::MetaVersion
            | CdcKeyKind::DeleteCounter
            | CdcKeyKind::Upstream { .. } => None,
        }
    }

    /// The lease ID of an owner key, when its lease part is hex.
    pub fn owner_lease_id(&self) -> Option<LeaseId> {
        match &self.kind {
            CdcKeyKind::Owner { lease: Some(lease) } => LeaseId::from_str_radix(lease, 16).ok(),
            _ => None,
        }
    }
}

impl fmt::Display for CdcKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cluster = &self.cluster_id;
        match &self.kind {
            CdcKeyKind::Owner { lease: None } => {
                write!(f, "{ROOT}/{cluster}/{META_SEGMENT}/{OWNER}")
            }
            CdcKeyKind::Owner { lease: Some(lease) } => {
                write!(f, "{ROOT}/{cluster}/{META_SEGMENT}/{OWNER}/{lease}")
            }
            CdcKeyKind::Capture { capture_id } => {
                write!(f, "{ROOT}/{cluster}/{META_SEGMENT}/{CAPTURE}/{capture_id}")
            }
            CdcKeyKind::MetaVersion => write!(f, "{ROOT}/{cluster}/{META_SEGMENT}/{META_VERSION}"),
            CdcKeyKind::DeleteCounter => {
                write!(f, "{ROOT}/{cluster}/{META_SEGMENT}/{DELETE_COUNTER}")
            }
            CdcKeyKind::ChangefeedInfo {
                namespace,
                changefeed_id,
            } => write!(
                f,
                "{ROOT}/{cluster}/{namespace}/{CHANGEFEED_INFO}/{changefeed_id}"
            ),
            CdcKeyKind::ChangefeedStatus {
                namespace,
                changefeed_id,
            } => write!(
                f,
                "{ROOT}/{cluster}/{namespace}/{CHANGEFEED_STATUS}/{changefeed_id}"
            ),
            CdcKeyKind::TaskPosition {
                namespace,
                capture_id,
                changefeed_id,
            } => write!(
                f,
                "{ROOT}/{cluster}/{namespace}/{TASK_POSITION}/{capture_id}/{changefeed_id}"
            ),
            CdcKeyKind::Upstream {
                namespace,
                upstream_id,
            } => write!(f, "{ROOT}/{cluster}/{namespace}/{UPSTREAM}/{upstream_id}"),
        }
    }
}

/// `/tidb/cdc/<C>`: every key of the cluster starts with this plus `/`.
pub fn base_key(cluster_id: &str) -> String {
    format!("{ROOT}/{cluster_id}")
}

/// Adds the trailing `/` that makes a prefix match whole segments only, so that the prefix of
/// cluster `default` does not match `default-2`.
pub fn prefix_with_boundary(prefix: &str) -> String {
    if prefix.ends_with('/') {
        prefix.to_owned()
    } else {
        format!("{prefix}/")
    }
}

/// `/tidb/cdc/<C>/__cdc_meta__`.
pub fn meta_prefix(cluster_id: &str) -> String {
    format!("{ROOT}/{cluster_id}/{META_SEGMENT}")
}

/// `/tidb/cdc/<C>/<NS>`.
pub fn namespaced_prefix(cluster_id: &str, namespace: &str) -> String {
    format!("{ROOT}/{cluster_id}/{namespace}")
}

/// The election prefix `/tidb/cdc/<C>/__cdc_meta__/owner` (candidates live under it plus `/`).
pub fn owner_prefix(cluster_id: &str) -> String {
    format!("{}/{OWNER}", meta_prefix(cluster_id))
}

/// `/tidb/cdc/<C>/__cdc_meta__/owner/<leaseHex>`, the lease in lowercase hex without padding.
pub fn owner_key(cluster_id: &str, lease_id: LeaseId) -> String {
    format!("{}/{lease_id:x}", owner_prefix(cluster_id))
}

/// `/tidb/cdc/<C>/__cdc_meta__/capture` (captures live under it plus `/`).
pub fn capture_prefix(cluster_id: &str) -> String {
    format!("{}/{CAPTURE}", meta_prefix(cluster_id))
}

/// `/tidb/cdc/<C>/__cdc_meta__/capture/<captureID>`.
pub fn capture_key(cluster_id: &str, capture_id: &str) -> String {
    format!("{}/{capture_id}", capture_prefix(cluster_id))
}

/// `/tidb/cdc/<C>/__cdc_meta__/meta/meta-version`.
pub fn meta_version_key(cluster_id: &str) -> String {
    format!("{}/{META_VERSION}", meta_prefix(cluster_id))
}

/// `<workerPrefix>/__cdc_meta__/meta/ticdc-delete-etcd-key-count`; in production the worker
/// prefix is [`base_key`].
pub fn delete_counter_key(worker_prefix: &str) -> String {
    format!("{worker_prefix}/{META_SEGMENT}/{DELETE_COUNTER}")
}

/// `/tidb/cdc/<C>/<NS>/changefeed/info` (infos live under it plus `/`).
pub fn changefeed_info_prefix(cluster_id: &str, namespace: &str) -> String {
    format!(
        "{}/{CHANGEFEED_INFO}",
        namespaced_prefix(cluster_id, namespace)
    )
}

/// `/tidb/cdc/<C>/<NS>/changefeed/info/<cfID>`.
pub fn changefeed_info_key(cluster_id: &str, changefeed: &ChangeFeedId) -> String {
    format!(
        "{}/{}",
        changefeed_info_prefix(cluster_id, &changefeed.namespace),
        changefeed.id
    )
}

/// `/tidb/cdc/<C>/<NS>/changefeed/status/<cfID>`.
pub fn changefeed_status_key(cluster_id: &str, changefeed: &ChangeFeedId) -> String {
    format!(
        "{}/{}",
        changefeed_status_prefix(cluster_id, &changefeed.namespace),
        changefeed.id
    )
}

/// `/tidb/cdc/<C>/<NS>/task/position/<captureID>/<cfID>`.
pub fn task_position_key(
    cluster_id: &str,
    capture_id: &CaptureId,
    changefeed: &ChangeFeedId,
) -> String {
    format!(
        "{}/{}",
        task_position_prefix(cluster_id, &changefeed.namespace, capture_id),
        changefeed.id
    )
}

/// `/tidb/cdc/<C>/<NS>/changefeed/status` (statuses live under it plus `/`).
pub fn changefeed_status_prefix(cluster_id: &str, namespace: &str) -> String {
    format!(
        "{}/{CHANGEFEED_STATUS}",
        namespaced_prefix(cluster_id, namespace)
    )
}

/// `/tidb/cdc/<C>/<NS>/task/position/<captureID>`, without a trailing slash as in the reference;
/// use [`prefix_with_boundary`] before a prefix read or delete.
pub fn task_position_prefix(cluster_id: &str, namespace: &str, capture_id: &str) -> String {
    format!(
        "{}/{TASK_POSITION}/{capture_id}",
        namespaced_prefix(cluster_id, namespace)
    )
}

/// `/tidb/cdc/<C>/<NS>/upstream/<id>`.
pub fn upstream_key(cluster_id: &str, namespace: &str, upstream_id: u64) -> String {
    format!(
        "{}/{UPSTREAM}/{upstream_id}",
        namespaced_prefix(cluster_id, namespace)
    )
}

/// `/tidb/cdc/<C>/<NS>/upstream` (upstreams live under it plus `/`).
pub fn upstream_prefix(cluster_id: &str, namespace: &str) -> String {
    format!("{}/{UPSTREAM}", namespaced_prefix(cluster_id, namespace))
}

/// The backup key of a migrated legacy key: `/tidb/cdc/__backup__/<version>` + `old_key`, with a
/// `/` inserted when `old_key` lacks a leading one.
pub fn migrate_backup_key(version: u64, old_key: &str) -> String {
    if old_key.starts_with('/') {
        format!("{BACKUP_PREFIX}/{version}{old_key}")
    } else {
        format!("{BACKUP_PREFIX}/{version}/{old_key}")
    }
}

/// The last `/`-separated segment of `key` (empty after a trailing `/`); a key with fewer than
/// two segments is invalid.
pub fn extract_key_suffix(key: &str) -> Result<&str> {
    match key.rsplit_once('/') {
        Some((_, suffix)) => Ok(suffix),
        None => Err(invalid(key, "fewer than two segments")),
    }
}

#[cfg(test)]
mod tests;
