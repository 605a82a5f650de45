//! One incarnation's task group: the campaign, processor, message-server and pool tasks, the
//! etcd workers they run, and how their errors become the incarnation's (TiCDC's `run` in
//! `cdc/capture/capture.go` of pingcap/tiflow).

use super::*;

impl Capture {
    /// The task group: campaign, processor, message server and pool; the first error cancels
    /// the rest, and the first root error (not a sibling's cancellation) is returned.
    pub(super) async fn run_group(
        self: &Arc<Self>,
        incarnation: &Incarnation,
        processor_manager: &Arc<dyn ProcessorManager>,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let group = cancel.child_token();
        let mut tasks: JoinSet<Result<()>> = JoinSet::new();
        let span = tracing::Span::current();
        tasks.spawn(
            {
                let capture = Arc::clone(self);
                let incarnation = incarnation.clone();
                let group = group.clone();
                async move {
                    let result = capture.campaign_owner(&incarnation, &group).await;
                    match result {
                        // An error no restart can cure (a transaction too large, a meta version
                        // newer than this binary) ends the capture, whoever else failed too.
                        Err(err) if !err.restarts_capture() => {
                            warn!(error = %ErrorReport(&err), "campaign task failed for good");
                            Err(err)
                        }
                        _ if group.is_cancelled() => Err(Error::Cancelled),
                        Ok(()) if capture.liveness.load() == Liveness::Stopping => {
                            // Drained: stay up without campaigning until closed.
                            group.cancelled().await;
                            Err(Error::Cancelled)
                        }
                        Ok(()) => Err(Error::Suicide),
                        Err(err) => {
                            warn!(error = %ErrorReport(&err), "campaign task failed, suicide");
                            Err(Error::Suicide)
                        }
                    }
                }
            }
            .instrument(info_span!(parent: &span, "owner")),
        );
        tasks.spawn(
            {
                let capture = Arc::clone(self);
                let incarnation = incarnation.clone();
                let group = group.clone();
                let processor_manager = Arc::clone(processor_manager);
                async move {
                    let result = async {
                        capture.wait_meta_version(&incarnation, &group).await?;
                        let state = capture.hooked_state(&incarnation, false);
                        capture
                            .run_etcd_worker(
                                Role::Processor(Arc::clone(&processor_manager)),
                                state,
                                capture.config.processor_flush_interval,
                                &incarnation,
                                None,
                                &group,
                            )
                            .await
                    }
                    .await;
                    // Stop the owner too, and close the processors at once: no double writes.
                    group.cancel();
                    processor_manager.close().await;
                    result
                }
            }
            .instrument(info_span!(parent: &span, "processor")),
        );
        tasks.spawn(
            {
                let server = Arc::clone(&incarnation.message_server);
                let local = incarnation.router.local_channel();
                let group = group.clone();
                async move {
                    server.run(group.clone(), local).await?;
                    Err(Error::Cancelled)
                }
            }
            .instrument(info_span!(parent: &span, "p2p")),
        );
        if let Some(errors) = incarnation.router.errors() {
            tasks.spawn(
                Arc::clone(self)
                    .watch_router_errors(errors, group.clone())
                    .instrument(info_span!(parent: &span, "p2p")),
            );
        }
        tasks.spawn({
            let pool = Arc::clone(&incarnation.init_pool);
            let group = group.clone();
            async move { pool.run(&group).await.map_err(Error::from) }
        });
        let mut first_error: Option<Error> = None;
        while let Some(joined) = tasks.join_next().await {
            let result = match joined {
                Ok(result) => result,
                Err(join_error) if join_error.is_panic() => {
                    std::panic::resume_unwind(join_error.into_panic())
                }
                Err(_) => Err(Error::Cancelled),
            };
            if let Err(err) = result {
                group.cancel();
                // A sibling's cancellation or suicide is a consequence; keep the root error,
                // and an error that ends the capture over one that restarts it, whichever task
                // finished first.
                let replace = first_error
                    .as_ref()
                    .is_none_or(|first| group_error_rank(&err) > group_error_rank(first));
                if replace {
                    first_error = Some(err);
                }
            }
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// Logs and counts the errors of p2p clients that stopped for good until the group ends.
    /// The router has already dropped such a client; a permanent failure (the peer restarted
    /// as another capture: `CAPTURE_ID_MISMATCH`) is normal churn and ends nothing; a client that
    /// panicked ends the incarnation.
    async fn watch_router_errors(
        self: Arc<Self>,
        mut errors: tokio::sync::mpsc::Receiver<cdc_p2p::Error>,
        group: CancellationToken,
    ) -> Result<()> {
        loop {
            tokio::select! {
                () = group.cancelled() => return Err(Error::Cancelled),
                received = errors.recv() => match received {
                    Some(err @ cdc_p2p::Error::ClientPanicked { .. }) => {
                        // The router keeps a panicked client closed (a fresh one would restart
                        // its sequences against a server that acknowledged them), so this
                        // incarnation cannot reach that peer any more: start a new one.
                        self.metrics.p2p_client_errors.inc();
                        warn!(error = %ErrorReport(&err), "p2p client to a peer panicked, suicide");
                        return Err(Error::Suicide);
                    }
                    Some(err) => {
                        self.metrics.p2p_client_errors.inc();
                        warn!(error = %ErrorReport(&err), "p2p client to a peer stopped; the router dropped it");
                    }
                    None => {
                        group.cancelled().await;
                        return Err(Error::Cancelled);
                    }
                },
            }
        }
    }

    /// A reactor state whose capture hooks keep the router's peers current; the owner's also
    /// deregisters removed captures from the message server (§6.4 step 8).
    pub(super) fn hooked_state(&self, incarnation: &Incarnation, owner: bool) -> CaptureState {
        let mut state = GlobalReactorState::new(
            self.config.cluster_id.clone(),
            u64::try_from(self.config.capture_session_ttl).unwrap_or(0),
        );
        let router = Arc::clone(&incarnation.router);
        let on_added = Box::new(move |capture_id: &String, address: &str| {
            router.add_peer(capture_id.clone(), address.to_owned());
        });
        let router = Arc::clone(&incarnation.router);
        let server = owner.then(|| Arc::clone(&incarnation.message_server));
        let on_removed = Box::new(move |capture_id: &String| {
            router.remove_peer(capture_id);
            if let Some(server) = &server {
                server.deregister_peer(capture_id);
            }
        });
        state.set_hooks(on_added, on_removed);
        CaptureState(state)
    }

    /// Runs `role` on an etcd worker over the cluster's base key until it finishes or fails,
    /// and maps the error (§6.3 `run_etcd_worker`): session done or lease expired is suicide;
    /// after any other error, a lease whose TTL reads -1 is suicide too, and so is a lease that
    /// could not be checked within 5 s (TiCDC returns `ErrPDEtcdAPIError` there, which exits the
    /// server after a short etcd outage).
    pub(super) async fn run_etcd_worker(
        &self,
        role: Role,
        state: CaptureState,
        interval: Duration,
        incarnation: &Incarnation,
        fence: Option<OwnerFence>,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let name = role.name();
        let mut reactor = WorkerReactor {
            capture_id: incarnation.capture_id.clone(),
            role,
            failure: None,
        };
        let mut worker = EtcdWorker::new(
            self.etcd.client().clone(),
            key::base_key(&self.config.cluster_id),
        )
        .with_session_done(incarnation.session_done.clone())
        .with_metrics(self.metrics.worker(name));
        if let Some(fence) = fence {
            worker = worker.with_owner_fence(fence);
        }
        let err = match worker.run(&mut reactor, state, interval, cancel).await {
            Ok(_) => return Ok(()),
            Err(err) => reactor
                .failure
                .take()
                .unwrap_or_else(|| Error::from_worker(err)),
        };
        match err {
            Error::SessionDone | Error::LeaseExpired => {
                warn!(role = name, error = %ErrorReport(&err), "the session is lost, suicide");
                Err(Error::Suicide)
            }
            Error::Cancelled => Err(Error::Cancelled),
            other => match self.lease_ttl(incarnation.lease_id, cancel).await {
                Ok(-1) => {
                    warn!(role = name, error = %ErrorReport(&other), "the lease is gone, suicide");
                    Err(Error::Suicide)
                }
                Ok(_) => {
                    warn!(role = name, error = %ErrorReport(&other), "etcd worker failed");
                    Err(other)
                }
                Err(cdc_etcd::Error::Cancelled) => Err(other),
                Err(ttl_error)
                    if ttl_error.is_retryable()
                        || matches!(
                            ttl_error,
                            cdc_etcd::Error::DeadlineExceeded { .. }
                                | cdc_etcd::Error::Timeout { .. }
                        ) =>
                {
                    // Whether the lease lives is unknown: a new incarnation is the safe way on.
                    warn!(role = name, error = %ErrorReport(&other), ttl_error = %ErrorReport(&ttl_error), "worker failed and the lease could not be checked, suicide");
                    Err(Error::Suicide)
                }
                Err(ttl_error) => {
                    // etcd refused the check for good (permissions, authentication): a restart
                    // would meet the same refusal, so the worker's own error decides.
                    warn!(role = name, error = %ErrorReport(&other), ttl_error = %ErrorReport(&ttl_error), "worker failed and etcd refused the lease check");
                    Err(other)
                }
            },
        }
    }

    /// The remaining TTL of `lease_id` (-1 when gone), read through the retrying client within
    /// [`LEASE_CHECK_DEADLINE`].
    async fn lease_ttl(
        &self,
        lease_id: cdc_etcd::LeaseId,
        cancel: &CancellationToken,
    ) -> std::result::Result<i64, cdc_etcd::Error> {
        let policy = RetryPolicy {
            deadline: LEASE_CHECK_DEADLINE,
            ..self.etcd.retrying().policy().clone()
        };
        let retrying = RetryingClient::with_policy(self.etcd.client().clone(), policy);
        let ttl = retrying.lease_time_to_live(lease_id, cancel).await?;
        Ok(ttl.ttl)
    }
}

/// How strongly a task's error speaks for the whole group: an error that ends the capture beats
/// any other, a root error beats a suicide, and a suicide beats a cancellation (the echo of a
/// sibling's failure).
fn group_error_rank(err: &Error) -> u8 {
    if !err.restarts_capture() {
        3
    } else if matches!(err, Error::Cancelled) {
        0
    } else if matches!(err, Error::Suicide) {
        1
    } else {
        2
    }
}
