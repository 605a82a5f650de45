//! A read-only view of the cluster's keys in etcd, kept current by one watch per incarnation.
//!
//! It holds what the capture's minimal reactors need: the capture list, the owner candidates
//! and the meta version. Values that do not decode are logged and skipped, never fatal.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use cdc_etcd::{EtcdClient, EventKind, GetOptions, KeyValue, Revision, WatchOptions};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::info::CaptureInfo;

/// The key layout this view reads.
#[derive(Clone, Debug)]
pub struct Keys {
    /// `/tidb/cdc/<C>`.
    pub base: String,
}

impl Keys {
    /// The keys of cluster `cluster_id`.
    pub fn new(cluster_id: &str) -> Self {
        Keys {
            base: format!("/tidb/cdc/{cluster_id}"),
        }
    }
    /// The owner election prefix, without trailing slash.
    pub fn owner_prefix(&self) -> String {
        format!("{}/__cdc_meta__/owner", self.base)
    }
    /// The capture key of `capture_id`.
    pub fn capture_key(&self, capture_id: &str) -> String {
        format!("{}/__cdc_meta__/capture/{capture_id}", self.base)
    }
    /// The meta-version key.
    pub fn meta_version_key(&self) -> String {
        format!("{}/__cdc_meta__/meta/meta-version", self.base)
    }
    /// The upstream key of the default namespace.
    pub fn upstream_key(&self, upstream_id: u64) -> String {
        format!("{}/default/upstream/{upstream_id}", self.base)
    }
    /// The task-position prefix of a capture in the default namespace.
    pub fn task_position_prefix(&self, capture_id: &str) -> String {
        format!("{}/default/task/position/{capture_id}/", self.base)
    }
}

/// An owner candidate: a key under the owner prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerCandidate {
    /// The full key.
    pub key: String,
    /// The capture ID (the value).
    pub capture_id: String,
    /// The key's create revision; the lowest one is the owner.
    pub create_revision: Revision,
}

/// The cluster as of `revision`.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    /// The etcd revision this view reflects.
    pub revision: Revision,
    /// Whether the first full read is done.
    pub initialized: bool,
    /// Captures whose key decoded, by ID.
    pub captures: BTreeMap<String, CaptureInfo>,
    /// Every capture key present, decodable or not.
    pub capture_keys: BTreeSet<String>,
    /// Owner candidates, by key.
    pub owners: BTreeMap<String, OwnerCandidate>,
    /// The meta version, if the key exists and decodes.
    pub meta_version: Option<i64>,
}

impl ClusterView {
    /// The owner: the candidate with the lowest create revision.
    pub fn owner(&self) -> Option<&OwnerCandidate> {
        self.owners
            .values()
            .min_by_key(|candidate| candidate.create_revision)
    }

    /// The owner's capture info, when the owner's capture key is known.
    pub fn owner_capture(&self) -> Option<&CaptureInfo> {
        self.owner()
            .and_then(|owner| self.captures.get(&owner.capture_id))
    }

    fn apply(&mut self, keys: &Keys, key: &str, value: Option<&[u8]>, create_revision: Revision) {
        let Some(rest) = key.strip_prefix(&keys.base) else {
            return;
        };
        if let Some(capture_id) = rest.strip_prefix("/__cdc_meta__/capture/") {
            match value {
                None => {
                    self.capture_keys.remove(capture_id);
                    self.captures.remove(capture_id);
                }
                Some(value) => {
                    self.capture_keys.insert(capture_id.to_owned());
                    match serde_json::from_slice::<CaptureInfo>(value) {
                        Ok(info) => {
                            self.captures.insert(capture_id.to_owned(), info);
                        }
                        Err(err) => {
                            warn!(key, error = %err, "capture key holds undecodable JSON, ignoring it");
                            self.captures.remove(capture_id);
                        }
                    }
                }
            }
        } else if rest.starts_with("/__cdc_meta__/owner/") {
            match value {
                None => {
                    self.owners.remove(key);
                }
                Some(value) => {
                    self.owners.insert(
                        key.to_owned(),
                        OwnerCandidate {
                            key: key.to_owned(),
                            capture_id: String::from_utf8_lossy(value).into_owned(),
                            create_revision,
                        },
                    );
                }
            }
        } else if rest == "/__cdc_meta__/meta/meta-version" {
            self.meta_version = value.and_then(|value| {
                let parsed = std::str::from_utf8(value)
                    .ok()
                    .and_then(|text| text.trim().parse::<i64>().ok());
                if parsed.is_none() {
                    warn!(key, "meta version is not a decimal number, ignoring it");
                }
                parsed
            });
        } else if (rest.contains("/changefeed/info/") || rest.contains("/changefeed/status/"))
            && let Some(value) = value
            && serde_json::from_slice::<serde_json::Value>(value)
                .map(|json| !json.is_object())
                .unwrap_or(true)
        {
            warn!(key, "changefeed key holds undecodable JSON, ignoring it");
        }
    }
}

/// Keeps `view_tx` current until `cancel`: reads the cluster prefix, then follows it with a
/// watch, re-watching from the last revision after a broken stream and re-reading after a
/// compaction. Transient etcd errors are retried; the session watchdog decides when the
/// capture gives up.
pub(crate) async fn run_view(
    client: EtcdClient,
    keys: Keys,
    view_tx: watch::Sender<Arc<ClusterView>>,
    cancel: CancellationToken,
) {
    let prefix = format!("{}/", keys.base);
    let mut backoff = Duration::from_millis(100);
    'resync: while !cancel.is_cancelled() {
        let snapshot = tokio::select! {
            () = cancel.cancelled() => return,
            result = client.get(prefix.as_bytes().to_vec(), GetOptions::prefix()) => result,
        };
        let snapshot = match snapshot {
            Ok(snapshot) => snapshot,
            Err(err) => {
                warn!(error = %err, "reading the cluster keys failed, retrying");
                sleep_or_cancel(&mut backoff, &cancel).await;
                continue;
            }
        };
        let mut view = ClusterView {
            revision: snapshot.revision,
            initialized: true,
            ..ClusterView::default()
        };
        for kv in &snapshot.kvs {
            apply_kv(&mut view, &keys, kv, true);
        }
        view_tx.send_replace(Arc::new(view.clone()));
        loop {
            let watch = tokio::select! {
                () = cancel.cancelled() => return,
                result = client.watch(prefix.as_bytes().to_vec(), WatchOptions {
                    prefix: true,
                    start_revision: view.revision + 1,
                    progress_notify: true,
                    prev_kv: false,
                }) => result,
            };
            let mut watch = match watch {
                Ok(watch) => watch,
                Err(err) => {
                    warn!(error = %err, "watching the cluster keys failed, retrying");
                    sleep_or_cancel(&mut backoff, &cancel).await;
                    continue;
                }
            };
            loop {
                let response = tokio::select! {
                    () = cancel.cancelled() => return,
                    response = watch.next() => response,
                };
                let response = match response {
                    Ok(Some(response)) => response,
                    Ok(None) => {
                        warn!("the cluster watch ended, re-watching");
                        break;
                    }
                    Err(err) => {
                        warn!(error = %err, "the cluster watch broke, re-watching");
                        sleep_or_cancel(&mut backoff, &cancel).await;
                        break;
                    }
                };
                if response.canceled {
                    warn!(
                        compact_revision = response.compact_revision,
                        "the cluster watch was cancelled (compaction), re-reading"
                    );
                    continue 'resync;
                }
                backoff = Duration::from_millis(100);
                if response.events.is_empty() || response.revision <= view.revision {
                    continue;
                }
                for event in &response.events {
                    debug!(key = %event.kv.key_lossy(), kind = ?event.kind, "cluster key changed");
                    apply_kv(&mut view, &keys, &event.kv, event.kind == EventKind::Put);
                }
                view.revision = response.revision;
                view_tx.send_replace(Arc::new(view.clone()));
            }
        }
    }
}

fn apply_kv(view: &mut ClusterView, keys: &Keys, kv: &KeyValue, present: bool) {
    let key = String::from_utf8_lossy(&kv.key);
    let value = present.then_some(kv.value.as_slice());
    view.apply(keys, &key, value, kv.create_revision);
}

async fn sleep_or_cancel(backoff: &mut Duration, cancel: &CancellationToken) {
    tokio::select! {
        () = cancel.cancelled() => {}
        () = tokio::time::sleep(*backoff) => {}
    }
    *backoff = (*backoff * 2).min(Duration::from_secs(1));
}
