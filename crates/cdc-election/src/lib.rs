//! Lease sessions and owner election on etcd, as TiCDC's capture uses them.
//!
//! - [`Session`]: a granted lease kept alive on a dedicated thread, with a watchdog that signals
//!   [`Session::done`] (a wait-only [`SessionDone`]) within one TTL of losing it, and
//!   [`Session::close`] that revokes it.
//! - [`Election`]: Go's `concurrency.Election` recipe on `<prefix>/<lease hex>` keys of a
//!   session's lease, with a confirming read after the wait, cancel-safe campaigns that end when
//!   the session does, and the [`OwnerFence`] that every owner transaction compares.
//!
//! Invariants: every call goes straight to [`cdc_etcd::EtcdClient`] (single attempt, under a
//! deadline), never through a retry wrapper (a campaign retries transient failures itself, until
//! cancelled); nothing is revoked or resigned when a session or a
//! campaign is dropped, so a crash looks like a crash to the rest of the cluster (a grant dropped
//! before it returned is the exception: its keeper revokes the lease nobody holds yet).
//!
//! Not here: the campaign loop, liveness and restarts (cdc-capture).
//!
//! # Example
//!
//! Campaign on TiCDC's owner key, act as the owner while the session lasts, then hand over
//! (`examples/elect.rs` runs this between two processes):
//!
//! ```no_run
//! use cdc_election::{Election, Session};
//! use cdc_etcd::{ConnectConfig, EtcdClient};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let client =
//!     EtcdClient::connect(&["127.0.0.1:2379".to_owned()], ConnectConfig::default()).await?;
//! // A lease of 10 s, renewed on its own thread until closed or lost.
//! let session = Session::grant(client, 10).await?;
//! let election = Election::new(&session, "/tidb/cdc/default/__cdc_meta__/owner");
//! let cancel = CancellationToken::new();
//! let fence = Box::pin(election.campaign("capture-1", &cancel)).await?;
//! // Every owner transaction carries `fence.compare()`, so it fails once we are deposed.
//! let _guard = fence.compare();
//! // Lead until the session ends (lost, or closed elsewhere) or it is time to step down.
//! let done = session.done();
//! tokio::select! {
//!     () = done.wait() => println!("session ended: {:?}", session.end()),
//!     () = cancel.cancelled() => {}
//! }
//! election.resign().await?;
//! session.close().await?;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod election;
mod error;
mod hooks;
mod session;

pub use cdc_etcd::OwnerFence;
pub use election::{CANCEL_CLEANUP_TIMEOUT, Election, RECHECK_INTERVAL};
pub use error::{Error, Result};
pub use session::{
    DEFAULT_SESSION_TTL_SECS, MIN_SESSION_TTL_SECS, Session, SessionConfig, SessionDone, SessionEnd,
};
