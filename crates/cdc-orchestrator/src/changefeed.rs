//! [`ChangefeedReactorState`]: one changefeed's info, status and task positions, with the
//! helper patches the owner and the processors queue on it (TiCDC's `reactor_state.go`). Pure.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cdc_model::key::{CdcKey, CdcKeyKind};
use cdc_model::{
    AdminJobType, CaptureId, ChangeFeedId, ChangeFeedInfo, ChangeFeedStatus, FeedState,
    RunningError, TaskPosition, from_json, to_go_json,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::patch::{DataPatch, PatchGroup, PatchOutcome, SingleDataPatch};

/// One changefeed as the owner and the processors see it.
pub struct ChangefeedReactorState {
    cluster_id: String,
    /// The changefeed.
    pub id: ChangeFeedId,
    /// Its info, `None` when absent.
    pub info: Option<ChangeFeedInfo>,
    /// Its status, `None` when absent.
    pub status: Option<ChangeFeedStatus>,
    /// The processors' positions, by capture.
    pub task_positions: BTreeMap<CaptureId, TaskPosition>,
    pending: Vec<Box<dyn DataPatch>>,
    /// Set by a failed [`ChangefeedReactorState::check_changefeed_normal`]: every patch of this
    /// changefeed queued in the same tick is then ignored. Shared with the queued patches.
    skip_patches_in_this_tick: Arc<AtomicBool>,
}

impl std::fmt::Debug for ChangefeedReactorState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangefeedReactorState")
            .field("id", &self.id)
            .field("info", &self.info)
            .field("status", &self.status)
            .field("task_positions", &self.task_positions)
            .field("n_pending", &self.pending.len())
            .finish()
    }
}

/// Decodes a JSON value of `key`; an absent or empty value is `None`.
fn decode<T: DeserializeOwned>(key: &str, value: Option<&[u8]>) -> Result<Option<T>> {
    match value {
        None => Ok(None),
        Some([]) => Ok(None),
        Some(bytes) => from_json(bytes)
            .map(Some)
            .map_err(|source| Error::Unmarshal {
                key: key.to_owned(),
                source,
            }),
    }
}

impl ChangefeedReactorState {
    /// An empty state of changefeed `id` of cluster `cluster_id`.
    pub fn new(cluster_id: impl Into<String>, id: ChangeFeedId) -> Self {
        ChangefeedReactorState {
            cluster_id: cluster_id.into(),
            id,
            info: None,
            status: None,
            task_positions: BTreeMap::new(),
            pending: Vec::new(),
            skip_patches_in_this_tick: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The cluster.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    fn key(&self, kind: CdcKeyKind) -> String {
        CdcKey {
            cluster_id: self.cluster_id.clone(),
            kind,
        }
        .to_string()
    }

    fn info_key(&self) -> String {
        self.key(CdcKeyKind::ChangefeedInfo {
            namespace: self.id.namespace.clone(),
            changefeed_id: self.id.id.clone(),
        })
    }

    fn status_key(&self) -> String {
        self.key(CdcKeyKind::ChangefeedStatus {
            namespace: self.id.namespace.clone(),
            changefeed_id: self.id.id.clone(),
        })
    }

    fn task_position_key(&self, capture_id: &str) -> String {
        self.key(CdcKeyKind::TaskPosition {
            namespace: self.id.namespace.clone(),
            capture_id: capture_id.to_owned(),
            changefeed_id: self.id.id.clone(),
        })
    }

    /// Applies a parsed key; keys of other changefeeds are ignored. Info values are completed
    /// with `verify_and_complete` (a null config is an error).
    pub fn update_cdc_key(&mut self, kind: &CdcKeyKind, value: Option<&[u8]>) -> Result<()> {
        let same = |namespace: &str, changefeed_id: &str| {
            namespace == self.id.namespace && changefeed_id == self.id.id
        };
        match kind {
            CdcKeyKind::ChangefeedInfo {
                namespace,
                changefeed_id,
            } if same(namespace, changefeed_id) => {
                let mut info: Option<ChangeFeedInfo> = decode(&self.info_key(), value)?;
                if let Some(info) = info.as_mut() {
                    info.verify_and_complete()?;
                }
                self.info = info;
            }
            CdcKeyKind::ChangefeedStatus {
                namespace,
                changefeed_id,
            } if same(namespace, changefeed_id) => {
                self.status = decode(&self.status_key(), value)?;
            }
            CdcKeyKind::TaskPosition {
                namespace,
                capture_id,
                changefeed_id,
            } if same(namespace, changefeed_id) => {
                match decode(&self.task_position_key(capture_id), value)? {
                    Some(position) => {
                        self.task_positions.insert(capture_id.clone(), position);
                    }
                    None => {
                        self.task_positions.remove(capture_id);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Info and status exist and the status has no admin job.
    pub fn active(&self) -> bool {
        self.info.is_some()
            && self
                .status
                .as_ref()
                .is_some_and(|status| status.admin_job_type == AdminJobType::Noop)
    }

    /// Info, status or a position exists.
    pub fn exist(&self) -> bool {
        self.info.is_some() || self.status.is_some() || !self.task_positions.is_empty()
    }

    /// Drains the queued patches as at most one group.
    pub fn take_patches(&mut self) -> Vec<PatchGroup> {
        if self.pending.is_empty() {
            Vec::new()
        } else {
            vec![std::mem::take(&mut self.pending)]
        }
    }

    fn queue_json_patch<T>(
        &mut self,
        key: String,
        func: impl Fn(Option<T>) -> Result<(Option<T>, bool)> + Send + Sync + 'static,
    ) where
        T: DeserializeOwned + Serialize,
    {
        let skip = self.skip_patches_in_this_tick.clone();
        let patch_key = key.clone();
        self.pending.push(Box::new(SingleDataPatch::new(
            key.into_bytes(),
            move |old| {
                if skip.load(Ordering::SeqCst) {
                    return Err(Error::EtcdIgnore);
                }
                let old_value = decode(&patch_key, old)?;
                let (new_value, changed) = func(old_value)?;
                if !changed {
                    return Ok(PatchOutcome::Unchanged);
                }
                match new_value {
                    None => Ok(PatchOutcome::Set(None)),
                    Some(value) => Ok(PatchOutcome::Set(Some(to_go_json(&value)?))),
                }
            },
        )));
    }

    /// Queues a patch of the info: `func(old)` gives `(new, changed)`; `None` deletes.
    pub fn patch_info(
        &mut self,
        func: impl Fn(Option<ChangeFeedInfo>) -> Result<(Option<ChangeFeedInfo>, bool)>
        + Send
        + Sync
        + 'static,
    ) {
        let key = self.info_key();
        self.queue_json_patch(key, func);
    }

    /// Queues a patch of the status.
    pub fn patch_status(
        &mut self,
        func: impl Fn(Option<ChangeFeedStatus>) -> Result<(Option<ChangeFeedStatus>, bool)>
        + Send
        + Sync
        + 'static,
    ) {
        let key = self.status_key();
        self.queue_json_patch(key, func);
    }

    /// Queues a patch of the position of `capture_id`.
    pub fn patch_task_position(
        &mut self,
        capture_id: &str,
        func: impl Fn(Option<TaskPosition>) -> Result<(Option<TaskPosition>, bool)>
        + Send
        + Sync
        + 'static,
    ) {
        let key = self.task_position_key(capture_id);
        self.queue_json_patch(key, func);
    }

    /// Sets `info.error` if the info exists.
    pub fn set_error(&mut self, error: RunningError) {
        self.patch_info(move |info| match info {
            Some(mut info) => {
                info.error = Some(error.clone());
                Ok((Some(info), true))
            }
            None => Ok((None, false)),
        });
    }

    /// Sets `info.warning` if the info exists.
    pub fn set_warning(&mut self, warning: RunningError) {
        self.patch_info(move |info| match info {
            Some(mut info) => {
                info.warning = Some(warning.clone());
                Ok((Some(info), true))
            }
            None => Ok((None, false)),
        });
    }

    /// Deletes the info and the status.
    pub fn remove_changefeed(&mut self) {
        self.patch_info(|_| Ok((None, true)));
        self.patch_status(|_| Ok((None, true)));
    }

    /// Resumes the changefeed: clears the info's error and, when `checkpoint_ts > 0`, restarts
    /// both from it. A missing status with `checkpoint_ts > 0` is [`Error::MissingStatus`].
    pub fn resume_changefeed(&mut self, checkpoint_ts: u64) {
        self.patch_info(move |info| match info {
            Some(mut info) => {
                if checkpoint_ts > 0 {
                    info.start_ts = checkpoint_ts;
                }
                info.error = None;
                Ok((Some(info), true))
            }
            None => Ok((None, false)),
        });
        if checkpoint_ts > 0 {
            let changefeed = self.id.to_string();
            self.patch_status(move |status| match status {
                Some(_) => Ok((
                    Some(ChangeFeedStatus {
                        checkpoint_ts,
                        min_table_barrier_ts: checkpoint_ts,
                        admin_job_type: AdminJobType::Noop,
                    }),
                    true,
                )),
                None => Err(Error::MissingStatus {
                    changefeed: changefeed.clone(),
                }),
            });
        }
    }

    fn take_position_reports(
        &mut self,
        field: fn(&mut TaskPosition) -> &mut Option<RunningError>,
    ) -> Vec<RunningError> {
        let mut reports: Vec<RunningError> = Vec::new();
        let mut captures = Vec::new();
        for (capture_id, position) in &self.task_positions {
            let mut position = position.clone();
            if let Some(report) = field(&mut position).take() {
                if !reports.iter().any(|seen| seen.code == report.code) {
                    reports.push(report);
                }
                captures.push(capture_id.clone());
            }
        }
        for capture_id in captures {
            self.patch_task_position(&capture_id, move |position| match position {
                Some(mut position) => {
                    *field(&mut position) = None;
                    Ok((Some(position), true))
                }
                None => Ok((None, false)),
            });
        }
        reports
    }

    /// The processors' errors, deduplicated by code; queues patches that clear them.
    pub fn take_processor_errors(&mut self) -> Vec<RunningError> {
        self.take_position_reports(|position| &mut position.error)
    }

    /// The processors' warnings, deduplicated by code; queues patches that clear them.
    pub fn take_processor_warnings(&mut self) -> Vec<RunningError> {
        self.take_position_reports(|position| &mut position.warning)
    }

    /// Deletes every position of the changefeed.
    pub fn clean_up_task_positions(&mut self) {
        let captures: Vec<CaptureId> = self.task_positions.keys().cloned().collect();
        for capture_id in captures {
            self.patch_task_position(&capture_id, |_| Ok((None, true)));
        }
    }

    /// Sets the admin job of the status (if any) and the state and admin job of the info;
    /// `epoch` is set with a changed admin job when it is positive.
    pub fn update_changefeed_state(&mut self, state: FeedState, admin: AdminJobType, epoch: u64) {
        self.patch_status(move |status| match status {
            Some(mut status) if status.admin_job_type != admin => {
                status.admin_job_type = admin;
                Ok((Some(status), true))
            }
            other => Ok((other, false)),
        });
        self.patch_info(move |info| {
            let Some(mut info) = info else {
                return Ok((None, false));
            };
            let mut changed = false;
            if info.state != state {
                info.state = state.clone();
                changed = true;
            }
            if info.admin_job_type != admin {
                info.admin_job_type = admin;
                changed = true;
                if epoch > 0 {
                    info.epoch = epoch;
                }
            }
            Ok((Some(info), changed))
        });
    }

    /// Queues a read-only patch on the capture key: the commit fails with
    /// [`Error::LeaseExpired`] when the capture key is gone.
    pub fn check_capture_alive(&mut self, capture_id: &str) {
        let key = self.key(CdcKeyKind::Capture {
            capture_id: capture_id.to_owned(),
        });
        let capture_id = capture_id.to_owned();
        self.pending.push(Box::new(SingleDataPatch::new(
            key.into_bytes(),
            move |old| match old {
                None | Some([]) => Err(Error::LeaseExpired {
                    capture_id: capture_id.clone(),
                }),
                Some(_) => Ok(PatchOutcome::Unchanged),
            },
        )));
    }

    /// Resets the skip flag and queues checks that, when the info is gone or the changefeed is
    /// stopped, make every patch of this changefeed queued in this tick ignored.
    pub fn check_changefeed_normal(&mut self) {
        self.skip_patches_in_this_tick
            .store(false, Ordering::SeqCst);
        let skip = self.skip_patches_in_this_tick.clone();
        self.patch_info(move |info| {
            if info
                .as_ref()
                .is_none_or(|info| info.admin_job_type.is_stop_state())
            {
                skip.store(true, Ordering::SeqCst);
                return Err(Error::EtcdTryAgain);
            }
            Ok((info, false))
        });
        let skip = self.skip_patches_in_this_tick.clone();
        self.patch_status(move |status| {
            if status
                .as_ref()
                .is_some_and(|status| status.admin_job_type.is_stop_state())
            {
                skip.store(true, Ordering::SeqCst);
                return Err(Error::EtcdTryAgain);
            }
            Ok((status, false))
        });
    }
}
