//! The owner campaign loop (TiCDC's `campaignOwner` in `cdc/capture/capture.go` of
//! pingcap/tiflow): campaign, confirm and publish the owner, run its fenced workers, resign.

use super::*;

impl Capture {
    /// The campaign loop of §6.4.
    pub async fn campaign_owner(
        &self,
        incarnation: &Incarnation,
        cancel: &CancellationToken,
    ) -> Result<()> {
        loop {
            if cancel.is_cancelled() {
                return Ok(());
            }
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = self.campaign_limiter.until_ready() => {}
            }
            if self.liveness.load() == Liveness::Stopping {
                return Ok(());
            }
            let fence = match incarnation
                .election
                .campaign(&incarnation.capture_id, cancel)
                .await
            {
                Ok(fence) => fence,
                Err(err) if is_cancelled(&err) => return Ok(()),
                Err(err) if err.is_compacted() => {
                    warn!(error = %ErrorReport(&err), "campaign hit a compaction, campaigning again");
                    continue;
                }
                // A transient etcd failure is no lost lease (the session reports that): retry,
                // paced by the campaign limiter.
                Err(Error::Election(err)) if err.is_retryable() => {
                    warn!(error = %ErrorReport(&err), "campaign failed transiently, campaigning again");
                    continue;
                }
                Err(err) => {
                    warn!(error = %ErrorReport(&err), "campaign failed");
                    return Err(Error::CampaignOwner(Box::new(err)));
                }
            };
            if self.liveness.load() == Liveness::Stopping {
                info!("elected while stopping, resigning");
                return self.resign(incarnation).await;
            }
            let owner_revision = tokio::select! {
                () = cancel.cancelled() => Err(Error::Cancelled),
                revision = incarnation.election.owner_revision(&incarnation.capture_id) => revision,
            };
            let owner_revision = match owner_revision {
                Ok(revision) => revision,
                Err(err) => {
                    // We won: give the key up (bounded) before leaving, or no other capture can
                    // win until this incarnation's lease is revoked. A failed resign is logged;
                    // the session's close at the end of the incarnation removes the key then.
                    let _ = self.resign(incarnation).await;
                    if is_cancelled(&err) {
                        return Ok(());
                    }
                    warn!(error = %ErrorReport(&err), "reading the owner revision failed after the campaign was won");
                    return Err(err);
                }
            };
            info!(owner_revision, "campaign won, this capture is the owner");
            self.metrics.owner_changes.inc();
            let context = self.reactor_context(incarnation, owner_revision);
            let owner = self.parts.owners.create(context.clone());
            let controller = self.parts.controllers.create(context);
            // The term starts now, for the drain (which waits for the resign); the owner and
            // the controller are published only once confirmed: after the migration, on their
            // fenced worker's first tick, which comes after a first snapshot that holds our
            // owner key.
            self.owner_term_tx.send_replace(true);
            // A drain that raced with the election must still stop this owner.
            if self.liveness.load() == Liveness::Stopping {
                owner.async_stop();
            }
            let (owner_confirmed_tx, owner_confirmed_rx) = watch::channel(false);
            let (controller_confirmed_tx, controller_confirmed_rx) = watch::channel(false);
            let confirming_owner: Arc<dyn Owner> = Arc::new(ConfirmingOwner {
                owner: Arc::clone(&owner),
                confirmed: owner_confirmed_tx,
            });
            let confirming_controller: Arc<dyn Controller> = Arc::new(ConfirmingController {
                controller: Arc::clone(&controller),
                confirmed: controller_confirmed_tx,
            });
            let term_over = CancellationToken::new();
            let workers = async {
                // Boxed: the worker's future is large and the campaign loop's callers hold it.
                let result = Box::pin(async {
                    self.migrate(&fence, cancel).await?;
                    self.run_owner_workers(
                        &confirming_owner,
                        &confirming_controller,
                        incarnation,
                        &fence,
                        cancel,
                    )
                    .await
                })
                .await;
                term_over.cancel();
                result
            };
            let publish = self.publish_when_confirmed(
                &owner,
                &controller,
                owner_confirmed_rx,
                controller_confirmed_rx,
                &term_over,
            );
            let (result, ()) = tokio::join!(workers, publish);
            owner.async_stop();
            controller.async_stop();
            {
                let mut state = self.state();
                state.owner = None;
                state.controller = None;
            }
            self.metrics.owner_term_ended();
            // The term ends only after the resign: a drain meanwhile waits for it.
            let resigned = if matches!(result, Err(Error::NotOwner)) {
                Ok(())
            } else {
                self.resign(incarnation).await
            };
            self.owner_term_tx.send_replace(false);
            info!(result = ?result.as_ref().err(), "owner stopped");
            result?;
            resigned?;
        }
    }

    /// Publishes the owner (and with it `is_owner`), then the controller, each once its worker
    /// confirmed it, unless the term is over first. A drain that did not find the owner
    /// published finds Stopping set here, and the owner stops.
    async fn publish_when_confirmed(
        &self,
        owner: &Arc<dyn Owner>,
        controller: &Arc<dyn Controller>,
        mut owner_confirmed: watch::Receiver<bool>,
        mut controller_confirmed: watch::Receiver<bool>,
        term_over: &CancellationToken,
    ) {
        tokio::select! {
            biased;
            () = term_over.cancelled() => return,
            confirmed = owner_confirmed.wait_for(|confirmed| *confirmed) => {
                if confirmed.is_err() {
                    return;
                }
            }
        }
        self.state().owner = Some(Arc::clone(owner));
        self.metrics.owner_term_started();
        info!("the owner is confirmed by its first snapshot");
        if self.liveness.load() == Liveness::Stopping {
            owner.async_stop();
        }
        tokio::select! {
            biased;
            () = term_over.cancelled() => {}
            confirmed = controller_confirmed.wait_for(|confirmed| *confirmed) => {
                if confirmed.is_ok() {
                    self.state().controller = Some(Arc::clone(controller));
                }
            }
        }
    }

    /// The owner and the controller, each on its own etcd worker fenced by the owner key, in
    /// one group: the first error cancels both, and when one finishes the other is asked to
    /// finish too. Returns the root error (a sibling's cancellation is a consequence), the
    /// owner's first when both failed.
    async fn run_owner_workers(
        &self,
        owner: &Arc<dyn Owner>,
        controller: &Arc<dyn Controller>,
        incarnation: &Incarnation,
        fence: &OwnerFence,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let term = cancel.child_token();
        let interval = self.config.owner_flush_interval;
        let owner_worker = async {
            // Boxed: a worker's future is large.
            let result = Box::pin(self.run_etcd_worker(
                Role::Owner(Arc::clone(owner)),
                self.peer_sync_state(incarnation, true),
                interval,
                incarnation,
                Some(fence.clone()),
                &term,
            ))
            .await;
            controller.async_stop();
            if result.is_err() {
                term.cancel();
            }
            result
        };
        let controller_worker = async {
            // Boxed: a worker's future is large.
            let result = Box::pin(self.run_etcd_worker(
                Role::Controller(Arc::clone(controller)),
                self.peer_sync_state(incarnation, false),
                interval,
                incarnation,
                Some(fence.clone()),
                &term,
            ))
            .await;
            owner.async_stop();
            if result.is_err() {
                term.cancel();
            }
            result
        };
        let (owner_result, controller_result) = tokio::join!(owner_worker, controller_worker);
        match (owner_result, controller_result) {
            (Err(Error::Cancelled), Err(err)) | (Err(err), _) | (Ok(()), Err(err)) => Err(err),
            (Ok(()), Ok(())) => Ok(()),
        }
    }

    /// Resigns the ownership on a fresh 5 s deadline. A failure or a timeout is reported
    /// (`ErrCaptureResignOwner`), logged and counted.
    async fn resign(&self, incarnation: &Incarnation) -> Result<()> {
        let err = match tokio::time::timeout(RESIGN_TIMEOUT, incarnation.election.resign()).await {
            Ok(Ok(())) => {
                info!("resigned the ownership");
                return Ok(());
            }
            Ok(Err(err)) => Error::ResignOwner(Box::new(err)),
            Err(_) => Error::ResignOwner(Box::new(Error::DeadlineExceeded { op: "resign owner" })),
        };
        self.metrics.resign_failures.inc();
        warn!(error = %ErrorReport(&err), "resigning the ownership failed");
        Err(err)
    }
}

/// An owner that reports its first tick: its fenced worker has loaded a snapshot holding our
/// owner key, after the migration.
struct ConfirmingOwner {
    owner: Arc<dyn Owner>,
    confirmed: watch::Sender<bool>,
}

impl Owner for ConfirmingOwner {
    fn tick<'a>(
        &'a self,
        state: &'a mut GlobalReactorState,
    ) -> BoxFuture<'a, cdc_reactor::Result<Tick>> {
        self.confirmed
            .send_if_modified(|confirmed| !std::mem::replace(confirmed, true));
        self.owner.tick(state)
    }

    fn async_stop(&self) {
        self.owner.async_stop();
    }

    fn set_tick_poke(&self, poke: cdc_orchestrator::TickPoke) {
        self.owner.set_tick_poke(poke);
    }

    fn api(&self) -> Option<Arc<dyn OwnerApi>> {
        self.owner.api()
    }
}

/// A controller that reports its first tick, as [`ConfirmingOwner`] does.
struct ConfirmingController {
    controller: Arc<dyn Controller>,
    confirmed: watch::Sender<bool>,
}

impl Controller for ConfirmingController {
    fn tick<'a>(
        &'a self,
        state: &'a mut GlobalReactorState,
    ) -> BoxFuture<'a, cdc_reactor::Result<Tick>> {
        self.confirmed
            .send_if_modified(|confirmed| !std::mem::replace(confirmed, true));
        self.controller.tick(state)
    }

    fn async_stop(&self) {
        self.controller.async_stop();
    }

    fn set_tick_poke(&self, poke: cdc_orchestrator::TickPoke) {
        self.controller.set_tick_poke(poke);
    }

    fn captures(&self) -> Vec<CaptureInfo> {
        self.controller.captures()
    }
}

fn is_cancelled(err: &Error) -> bool {
    matches!(
        err.root_cause(),
        Error::Cancelled | Error::Election(cdc_election::Error::Cancelled)
    )
}
