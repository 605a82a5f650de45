//! The capture's etcd session: a granted lease kept alive by a watchdog task.

use std::time::Duration;

use cdc_etcd::{EtcdClient, LeaseId};
use futures::future::BoxFuture;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{info, warn};

use crate::error::{Error, Result};

/// How long a whole grant may take, retries included.
const GRANT_DEADLINE: Duration = Duration::from_secs(30);
/// How long closing (revoking) may take.
const CLOSE_DEADLINE: Duration = Duration::from_secs(3);

/// A granted lease and the task that keeps it alive.
pub struct Session {
    client: EtcdClient,
    lease_id: LeaseId,
    ttl: i64,
    done: CancellationToken,
    keeper: Option<AbortOnDropHandle<()>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("lease_id", &format_args!("{:x}", self.lease_id))
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Grants sessions; tests inject one that fails.
pub trait SessionFactory: Send + Sync {
    /// Grants a lease of `ttl` seconds and starts keeping it alive.
    fn grant<'a>(
        &'a self,
        ttl: i64,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Session>>;
}

/// The production factory: grants through etcd, retrying transient errors for up to 30 s.
#[derive(Clone, Debug)]
pub struct EtcdSessionFactory {
    client: EtcdClient,
}

impl EtcdSessionFactory {
    /// A factory granting on `client`.
    pub fn new(client: EtcdClient) -> Self {
        EtcdSessionFactory { client }
    }
}

impl SessionFactory for EtcdSessionFactory {
    fn grant<'a>(
        &'a self,
        ttl: i64,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Session>> {
        Box::pin(Session::grant(self.client.clone(), ttl, cancel))
    }
}

impl Session {
    /// Grants a lease and starts the keep-alive task. Transient errors are retried with backoff
    /// until 30 s have passed, which gives `DeadlineExceeded`.
    pub async fn grant(
        client: EtcdClient,
        ttl: i64,
        cancel: &CancellationToken,
    ) -> Result<Session> {
        let deadline = Instant::now() + GRANT_DEADLINE;
        let mut backoff = Duration::from_millis(100);
        let grant = loop {
            let attempt = tokio::select! {
                () = cancel.cancelled() => return Err(Error::Cancelled),
                result = client.lease_grant(ttl) => result,
            };
            match attempt {
                Ok(grant) => break grant,
                Err(err) if err.is_retryable() && Instant::now() + backoff < deadline => {
                    warn!(error = %err, "lease grant failed, retrying");
                    tokio::select! {
                        () = cancel.cancelled() => return Err(Error::Cancelled),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(err) if err.is_retryable() => {
                    warn!(error = %err, "lease grant failed until its deadline");
                    return Err(Error::DeadlineExceeded { op: "lease grant" });
                }
                Err(err) => return Err(err.into()),
            }
        };
        let done = CancellationToken::new();
        let keeper = AbortOnDropHandle::new(tokio::spawn(keep_alive(
            client.clone(),
            grant.id,
            grant.ttl,
            done.clone(),
        )));
        info!(lease_id = %format_args!("{:x}", grant.id), ttl = grant.ttl, "session granted");
        Ok(Session {
            client,
            lease_id: grant.id,
            ttl: grant.ttl,
            done,
            keeper: Some(keeper),
        })
    }

    /// The lease.
    pub fn lease_id(&self) -> LeaseId {
        self.lease_id
    }

    /// The granted TTL in seconds.
    pub fn ttl(&self) -> i64 {
        self.ttl
    }

    /// Cancelled when the lease is lost (expired, revoked, or not renewable in time).
    pub fn done(&self) -> CancellationToken {
        self.done.clone()
    }

    /// Stops the keep-alives and revokes the lease, deleting every key attached to it. Bounded
    /// to a few seconds; a lease that is already gone is fine.
    pub async fn close(mut self) {
        if let Some(keeper) = self.keeper.take() {
            keeper.abort();
            let _ = keeper.await;
        }
        self.done.cancel();
        match tokio::time::timeout(CLOSE_DEADLINE, self.client.lease_revoke(self.lease_id)).await {
            Ok(Ok(())) | Ok(Err(cdc_etcd::Error::LeaseNotFound { .. })) => {
                info!(lease_id = %format_args!("{:x}", self.lease_id), "session closed");
            }
            Ok(Err(err)) => warn!(error = %err, "revoking the session's lease failed"),
            Err(_) => warn!("revoking the session's lease timed out"),
        }
    }
}

/// Renews `lease_id` every TTL/3. Reopens a broken stream until the lease would have expired;
/// cancels `done` when the lease is gone or could not be renewed in time.
async fn keep_alive(client: EtcdClient, lease_id: LeaseId, ttl: i64, done: CancellationToken) {
    let ttl = Duration::from_secs(u64::try_from(ttl.max(1)).unwrap_or(1));
    let period = ttl / 3;
    let mut expires = Instant::now() + ttl;
    'reopen: while Instant::now() < expires {
        let mut stream = match client.lease_keep_alive(lease_id).await {
            Ok(stream) => stream,
            Err(cdc_etcd::Error::LeaseNotFound { .. }) => break,
            Err(err) => {
                warn!(error = %err, "opening the lease keep-alive failed");
                tokio::time::sleep(Duration::from_millis(500).min(period)).await;
                continue;
            }
        };
        // Opening the stream renewed the lease once.
        expires = Instant::now() + ttl;
        loop {
            tokio::time::sleep(period).await;
            if let Err(err) = stream.send().await {
                warn!(error = %err, "lease keep-alive send failed");
                continue 'reopen;
            }
            let sent_at = Instant::now();
            match tokio::time::timeout(period, stream.next()).await {
                Ok(Ok(Some(response))) if response.ttl > 0 => expires = sent_at + ttl,
                Ok(Ok(Some(_))) => break 'reopen,
                Ok(Ok(None)) => continue 'reopen,
                Ok(Err(err)) => {
                    warn!(error = %err, "lease keep-alive failed");
                    continue 'reopen;
                }
                Err(_) => {
                    warn!("lease keep-alive answer timed out");
                    continue 'reopen;
                }
            }
        }
    }
    warn!(lease_id = %format_args!("{lease_id:x}"), "session done: the lease is gone");
    done.cancel();
}
