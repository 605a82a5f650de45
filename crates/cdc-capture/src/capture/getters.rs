//! What the HTTP API and the debug endpoints ask of a capture: its info, the owner and the
//! controller, the lookups of other captures, readiness and debug output.

use super::*;

impl Capture {
    /// A copy of the current capture info.
    pub fn info(&self) -> Result<CaptureInfo> {
        self.state().info.clone().ok_or(Error::NotInitialized)
    }

    /// The owner, if this capture is owner.
    pub fn owner(&self) -> Result<Arc<dyn Owner>> {
        self.state().owner.clone().ok_or(Error::NotOwner)
    }

    /// Whether this capture is owner.
    pub fn is_owner(&self) -> bool {
        self.state().owner.is_some()
    }

    /// The controller, if this capture is owner.
    pub fn controller(&self) -> Result<Arc<dyn Controller>> {
        self.state().controller.clone().ok_or(Error::NotOwner)
    }

    /// Whether this capture runs the controller.
    pub fn is_controller(&self) -> bool {
        self.state().controller.is_some()
    }

    /// The controller, as the source of cluster status; `None` if not owner.
    pub fn status_provider(&self) -> Option<Arc<dyn Controller>> {
        self.state().controller.clone()
    }

    /// The owner's (and controller's) capture info, read from etcd: the owner ID, then its
    /// capture key. No owner, or an owner without a capture key, is [`Error::OwnerNotFound`].
    pub async fn controller_capture_info(&self) -> Result<CaptureInfo> {
        let lookup = async {
            let cancel = CancellationToken::new();
            let owner_id = self.etcd.get_owner_id(&cancel).await.ok()?;
            self.etcd.get_capture_info(&owner_id, &cancel).await.ok()
        };
        tokio::time::timeout(OWNER_LOOKUP_TIMEOUT, lookup)
            .await
            .ok()
            .flatten()
            .ok_or(Error::OwnerNotFound)
    }

    /// Another capture's info, read from etcd.
    pub async fn capture_info(&self, capture_id: &str) -> Result<CaptureInfo> {
        let cancel = CancellationToken::new();
        let lookup = self.etcd.get_capture_info(capture_id, &cancel);
        match tokio::time::timeout(OWNER_LOOKUP_TIMEOUT, lookup).await {
            Ok(Ok(info)) => Ok(info),
            Ok(Err(cdc_etcd::CdcError::CaptureNotExist { .. })) => Err(Error::CaptureNotExist {
                capture_id: capture_id.to_owned(),
            }),
            Ok(Err(err)) => Err(err.into()),
            Err(_) => Err(Error::DeadlineExceeded {
                op: "get capture info",
            }),
        }
    }

    /// Whether the meta-version gate has passed (§6.6).
    pub fn is_ready(&self) -> bool {
        self.migrate_done.load(Ordering::SeqCst)
    }

    /// The p2p counters of the current incarnation: (message server, router clients).
    pub fn p2p_metrics(&self) -> Option<(MetricsSnapshot, MetricsSnapshot)> {
        let state = self.state();
        let server = state.message_server.as_ref()?.metrics();
        let router = state.router.as_ref()?.metrics();
        Some((server, router))
    }

    /// A human-readable dump. The capture lock is released before the components are asked.
    pub fn write_debug_info(&self, out: &mut String) {
        let (info, owner, processor_manager) = {
            let state = self.state();
            (
                state.info.clone(),
                state.owner.is_some(),
                state.processor_manager.clone(),
            )
        };
        use std::fmt::Write as _;
        let _ = writeln!(out, "capture: {info:?}");
        let _ = writeln!(
            out,
            "liveness: {}, owner: {owner}, ready: {}",
            self.liveness(),
            self.is_ready()
        );
        if let Some((server, router)) = self.p2p_metrics() {
            let _ = writeln!(out, "p2p server: {server:?}");
            let _ = writeln!(out, "p2p clients: {router:?}");
        }
        if let Some(processor_manager) = processor_manager {
            processor_manager.write_debug_info(out);
        }
    }
}
