//! The owner election as the capture uses it: a trait over [`cdc_election::Election`], so tests
//! can inject doubles.

use std::sync::Arc;
use std::time::Duration;

use cdc_election::Session;
use cdc_etcd::{OwnerFence, Revision};
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::error::Result;

/// The resign deadline (§6.7).
pub(crate) const RESIGN_TIMEOUT: Duration = Duration::from_secs(5);

/// One candidate's election.
pub trait Election: Send + Sync {
    /// Blocks until elected with `value`; returns the fence of the term. A cancelled campaign
    /// gives [`crate::Error::Cancelled`] (through the election's error).
    fn campaign<'a>(
        &'a self,
        value: &'a str,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<OwnerFence>>;
    /// Gives the ownership up (deletes our key if it is still ours).
    fn resign(&self) -> BoxFuture<'_, Result<()>>;
    /// TiCDC's `GetOwnerRevision(capture_id)`.
    fn owner_revision<'a>(&'a self, capture_id: &'a str) -> BoxFuture<'a, Result<Revision>>;
}

/// Builds elections; tests inject doubles.
pub trait ElectionFactory: Send + Sync {
    /// The election under `prefix` for `session`'s lease.
    fn create(&self, session: &Session, prefix: &str) -> Arc<dyn Election>;
}

/// The etcd election factory ([`cdc_election::Election`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct EtcdElections;

impl ElectionFactory for EtcdElections {
    fn create(&self, session: &Session, prefix: &str) -> Arc<dyn Election> {
        Arc::new(cdc_election::Election::new(session, prefix))
    }
}

impl Election for cdc_election::Election {
    fn campaign<'a>(
        &'a self,
        value: &'a str,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<OwnerFence>> {
        Box::pin(async move { Ok(cdc_election::Election::campaign(self, value, cancel).await?) })
    }

    fn resign(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { Ok(cdc_election::Election::resign(self).await?) })
    }

    fn owner_revision<'a>(&'a self, capture_id: &'a str) -> BoxFuture<'a, Result<Revision>> {
        Box::pin(async move { Ok(self.owner_revision_of(capture_id).await?) })
    }
}
