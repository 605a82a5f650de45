//! How a capture gets its [`Session`]: through a factory, so tests can inject failing grants.

use std::time::Duration;

use cdc_election::{Session, SessionConfig};
use cdc_etcd::EtcdClient;
use cdc_etcd::retry::{Backoff, BackoffPolicy, Jitter};
use futures::future::BoxFuture;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::error::{Error, Result};

/// How long a whole grant may take, retries included (the retrying client's budget).
const GRANT_DEADLINE: Duration = Duration::from_secs(30);
/// The pauses between grant attempts: from 100 ms, doubling up to 2 s.
const GRANT_BACKOFF: BackoffPolicy = BackoffPolicy {
    base: Duration::from_millis(100),
    max: Duration::from_secs(2),
    jitter: Jitter::None,
};
/// How long closing a session may take: joining its keep-alive and revoking its lease. The
/// sessions this factory grants bound each by half of it, so the close that the capture bounds
/// by the whole never loses the revoke to the join.
pub(crate) const SESSION_CLOSE_BUDGET: Duration = Duration::from_secs(10);

/// Grants sessions; tests inject one that fails.
pub trait SessionFactory: Send + Sync {
    /// Grants a lease of `ttl` seconds and starts keeping it alive.
    fn grant<'a>(
        &'a self,
        ttl: i64,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Session>>;
}

/// The production factory: [`Session::grant`], retrying transient errors with backoff until
/// 30 s have passed, which gives [`Error::DeadlineExceeded`].
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
        Box::pin(grant_retrying(self.client.clone(), ttl, cancel))
    }
}

/// The settings of the sessions this factory grants: TiCDC's TTL rules, and a close within
/// [`SESSION_CLOSE_BUDGET`].
fn session_config(ttl: i64) -> SessionConfig {
    let mut config = SessionConfig::new(ttl);
    config.revoke_timeout = SESSION_CLOSE_BUDGET / 2;
    config
}

async fn grant_retrying(
    client: EtcdClient,
    ttl: i64,
    cancel: &CancellationToken,
) -> Result<Session> {
    let deadline = Instant::now() + GRANT_DEADLINE;
    let mut backoff = Backoff::new(GRANT_BACKOFF);
    loop {
        // A grant dropped here at most leaves a lease that expires on its own.
        let attempt = tokio::select! {
            () = cancel.cancelled() => return Err(Error::Cancelled),
            result = Session::grant_with(client.clone(), session_config(ttl)) => result,
        };
        let err = match attempt {
            Ok(session) => return Ok(session),
            Err(err) => err,
        };
        if !err.is_retryable() {
            return Err(err.into());
        }
        let delay = backoff.next_delay();
        if Instant::now() + delay >= deadline {
            warn!(error = %cdc_model::ErrorReport(&err), "lease grant failed until its deadline");
            return Err(Error::DeadlineExceeded { op: "lease grant" });
        }
        warn!(error = %cdc_model::ErrorReport(&err), "lease grant failed, retrying");
        tokio::select! {
            () = cancel.cancelled() => return Err(Error::Cancelled),
            () = tokio::time::sleep(delay) => {}
        }
    }
}
