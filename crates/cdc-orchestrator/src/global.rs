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

/// Called on every PUT of a capture key with the capture ID and its address.
pub type CaptureAddedHook = Box<dyn FnMut(&CaptureId, &str) + Send>;
/// Called when a vanished capture is removed after the delay.
pub type CaptureRemovedHook = Box<dyn FnMut(&CaptureId) + Send>;

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
    on_capture_added: Option<CaptureAddedHook>,
    on_capture_removed: Option<CaptureRemovedHook>,
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
            on_capture_added: None,
            on_capture_removed: None,
            capture_remove_ttl: Duration::from_secs((capture_session_ttl / 2).max(5)),
            to_remove: HashMap::new(),
        }
    }

    /// Installs the capture hooks.
    pub fn set_hooks(&mut self, on_added: CaptureAddedHook, on_removed: CaptureRemovedHook) {
        self.on_capture_added = Some(on_added);
        self.on_capture_removed = Some(on_removed);
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
                    if let Some(hook) = self.on_capture_added.as_mut() {
                        hook(capture_id, &capture.address);
                    }
                    self.captures.insert(capture_id.clone(), capture);
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
            info!(%capture_id, "capture removed");
            if let Some(hook) = self.on_capture_removed.as_mut() {
                hook(&capture_id);
            }
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
