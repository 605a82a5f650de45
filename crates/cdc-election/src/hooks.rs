//! Points where the election's and the session's work can be observed and paused: no-ops in
//! production ([`NoHooks`]); the crate's tests install their own to act on etcd at an exact step.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use cdc_etcd::{LeaseId, Revision};

/// A pause asked for by a hook: the work goes on once it completes.
pub(crate) type Pause<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// The steps of an [`Election`](crate::Election)'s campaign.
pub(crate) trait ElectionHooks: Debug + Send + Sync {
    /// A waiting candidate read the queue at `revision` and is about to watch the key ahead of
    /// it from `revision + 1`.
    fn before_watch(&self, _revision: Revision) -> Option<Pause<'_>> {
        None
    }
}

/// The steps of a session's keep-alive thread.
pub(crate) trait KeeperHooks: Debug + Send + Sync {
    /// The keeper of `lease_id` has opened its keep-alive stream (or failed to) and is about to
    /// answer the grant.
    fn before_answer(&self, _lease_id: LeaseId) -> Option<Pause<'_>> {
        None
    }

    /// The keeper answered the grant, whether or not anyone received the answer.
    fn answered(&self) {}
}

/// Nothing to observe, no pause.
#[derive(Debug)]
pub(crate) struct NoHooks;

impl ElectionHooks for NoHooks {}

impl KeeperHooks for NoHooks {}

/// The hooks of production.
pub(crate) fn none() -> Arc<NoHooks> {
    Arc::new(NoHooks)
}
