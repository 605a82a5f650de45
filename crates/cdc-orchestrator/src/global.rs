//! [`GlobalReactorState`]: the whole cluster as the owner and the processors see it: owners,
//! captures, upstreams and changefeeds (TiCDC's `reactor_state.go`). Pure: time comes in through
//! [`ReactorState::update_pending_change`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use cdc_model::key::{CdcKey, CdcKeyKind};
use cdc_model::{CaptureId, CaptureInfo, ChangeFeedId, UpstreamId, UpstreamInfo, from_json};
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use crate::changefeed::ChangefeedReactorState;
use crate::error::{Error, Result};
use crate::patch::PatchGroup;
use crate::reactor::ReactorState;

/// A change to the set of live captures, returned by
/// [`GlobalReactorState::take_capture_events`] for its user to act on (TiCDC's
/// `onCaptureAdded`/`onCaptureRemoved` hooks of `pkg/orchestrator/reactor_state.go`, as data).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaptureEvent {
    /// A capture key was put: a capture appeared, or its address changed.
    Added {
        /// The capture.
        id: CaptureId,
        /// Its p2p address.
        address: String,
    },
    /// A vanished capture was removed after the delay.
    Removed {
        /// The capture.
        id: CaptureId,
    },
}

/// The cluster's shared state.
pub struct GlobalReactorState {
    /// The cluster.
    pub cluster_id: String,
    /// The lease parts of the owner keys (the campaigners).
    pub owner: BTreeSet<String>,
    /// The live captures.
    pub captures: BTreeMap<CaptureId, CaptureInfo>,
    /// The upstreams.
    pub upstreams: BTreeMap<UpstreamId, UpstreamInfo>,
    /// The changefeeds.
    pub changefeeds: BTreeMap<ChangeFeedId, ChangefeedReactorState>,
    pending: Vec<PatchGroup>,
    /// The captures (and addresses) as of the last `take_capture_events`.
    announced: BTreeMap<CaptureId, String>,
    /// Whether `captures` may differ from `announced`.
    captures_changed: bool,
    capture_remove_ttl: Duration,
    /// Vanished captures; the time is stamped by the first `update_pending_change` after the
    /// delete. A capture that comes back is taken off this map.
    to_remove: HashMap<CaptureId, Option<Instant>>,
}

/// Decodes the JSON value of `key`.
fn decode<T: DeserializeOwned>(key: &CdcKey, bytes: &[u8]) -> Result<T> {
    from_json(bytes).map_err(|source| Error::Unmarshal {
        key: key.to_string(),
        source,
    })
}

impl GlobalReactorState {
    /// An empty state of `cluster_id`; a vanished capture is removed after
    /// `max(capture_session_ttl / 2, 5)` seconds (integer division).
    pub fn new(cluster_id: impl Into<String>, capture_session_ttl: u64) -> Self {
        GlobalReactorState {
            cluster_id: cluster_id.into(),
            owner: BTreeSet::new(),
            captures: BTreeMap::new(),
            upstreams: BTreeMap::new(),
            changefeeds: BTreeMap::new(),
            pending: Vec::new(),
            announced: BTreeMap::new(),
            captures_changed: false,
            capture_remove_ttl: Duration::from_secs((capture_session_ttl / 2).max(5)),
            to_remove: HashMap::new(),
        }
    }

    /// The changes to the live captures since the last call, in capture order: `Added` for a
    /// capture that appeared or whose address changed, `Removed` for one removed after the
    /// delay. A user that keeps peers in step (the p2p router) drains this after every
    /// [`ReactorState::update`] and [`ReactorState::update_pending_change`]. The state keeps no
    /// queue: the events are the difference between [`GlobalReactorState::captures`] and what
    /// the last call returned, so a user that never drains holds nothing more.
    pub fn take_capture_events(&mut self) -> Vec<CaptureEvent> {
        if !std::mem::take(&mut self.captures_changed) {
            return Vec::new();
        }
        let mut events = Vec::new();
        self.announced.retain(|id, _| {
            let live = self.captures.contains_key(id);
            if !live {
                events.push(CaptureEvent::Removed { id: id.clone() });
            }
            live
        });
        for (id, capture) in &self.captures {
            if self.announced.get(id) != Some(&capture.address) {
                self.announced.insert(id.clone(), capture.address.clone());
                events.push(CaptureEvent::Added {
                    id: id.clone(),
                    address: capture.address.clone(),
                });
            }
        }
        events
    }

    /// The delay before a vanished capture is removed.
    pub fn capture_remove_ttl(&self) -> Duration {
        self.capture_remove_ttl
    }

    /// Queues a patch group of its own (committed atomically).
    pub fn queue_patches(&mut self, group: PatchGroup) {
        if !group.is_empty() {
            self.pending.push(group);
        }
    }

    fn update_changefeed(
        &mut self,
        id: ChangeFeedId,
        kind: &CdcKeyKind,
        value: Option<&[u8]>,
    ) -> Result<()> {
        if value.is_none() && !self.changefeeds.contains_key(&id) {
            return Ok(());
        }
        let changefeed = self
            .changefeeds
            .entry(id.clone())
            .or_insert_with(|| ChangefeedReactorState::new(self.cluster_id.clone(), id.clone()));
        changefeed.update_cdc_key(kind, value)?;
        if value.is_none() && !changefeed.exist() {
            let mut changefeed = self
                .changefeeds
                .remove(&id)
                .expect("the changefeed was just looked up");
            self.pending.extend(changefeed.take_patches());
        }
        Ok(())
    }
}

impl ReactorState for GlobalReactorState {
    fn update(&mut self, key: &[u8], value: Option<&[u8]>, _is_init: bool) -> Result<()> {
        let key = CdcKey::parse_bytes(&self.cluster_id, key)?;
        match &key.kind {
            CdcKeyKind::Owner { lease } => {
                if let Some(lease) = lease {
                    match value {
                        Some(_) => self.owner.insert(lease.clone()),
                        None => self.owner.remove(lease),
                    };
                }
            }
            CdcKeyKind::Capture { capture_id } => match value {
                None => {
                    info!(%capture_id, "capture key deleted, removal scheduled");
                    self.to_remove.entry(capture_id.clone()).or_insert(None);
                }
                Some(bytes) => {
                    let capture: CaptureInfo = decode(&key, bytes)?;
                    self.to_remove.remove(capture_id);
                    self.captures.insert(capture_id.clone(), capture);
                    self.captures_changed = true;
                }
            },
            CdcKeyKind::ChangefeedInfo { .. }
            | CdcKeyKind::ChangefeedStatus { .. }
            | CdcKeyKind::TaskPosition { .. } => {
                let id = key
                    .changefeed()
                    .expect("changefeed info, status and task position keys name a changefeed");
                self.update_changefeed(id, &key.kind, value)?;
            }
            CdcKeyKind::Upstream { upstream_id, .. } => match value {
                None => {
                    self.upstreams.remove(upstream_id);
                }
                Some(bytes) => {
                    let upstream: UpstreamInfo = decode(&key, bytes)?;
                    self.upstreams.insert(*upstream_id, upstream);
                }
            },
            CdcKeyKind::MetaVersion => {}
            CdcKeyKind::DeleteCounter => warn!(%key, "unexpected delete counter update"),
        }
        Ok(())
    }

    fn update_pending_change(&mut self, now: Instant) {
        let ttl = self.capture_remove_ttl;
        let mut removed = Vec::new();
        for (capture_id, since) in &mut self.to_remove {
            let since = *since.get_or_insert(now);
            if now.saturating_duration_since(since) >= ttl {
                removed.push(capture_id.clone());
            }
        }
        for capture_id in removed {
            self.to_remove.remove(&capture_id);
            self.captures.remove(&capture_id);
            self.captures_changed = true;
            info!(%capture_id, "capture removed");
        }
    }

    fn next_pending_change(&self) -> Option<Instant> {
        self.to_remove
            .values()
            .flatten()
            .map(|since| *since + self.capture_remove_ttl)
            .min()
    }

    fn get_patches(&mut self) -> Vec<PatchGroup> {
        let mut groups = std::mem::take(&mut self.pending);
        for changefeed in self.changefeeds.values_mut() {
            groups.extend(changefeed.take_patches());
        }
        groups
    }
}

impl ReactorState for ChangefeedReactorState {
    fn update(&mut self, key: &[u8], value: Option<&[u8]>, _is_init: bool) -> Result<()> {
        let text = String::from_utf8_lossy(key);
        // Keys of other clusters or of other kinds are not this state's business.
        let cluster_id = self.cluster_id().to_owned();
        match CdcKey::parse(&cluster_id, &text) {
            Ok(key) => self.update_cdc_key(&key.kind, value),
            Err(_) => Ok(()),
        }
    }

    fn update_pending_change(&mut self, _now: Instant) {}

    fn get_patches(&mut self) -> Vec<PatchGroup> {
        self.take_patches()
    }
}

#[cfg(test)]
mod tests;
