//! The etcd layer: the only crate that names `etcd_client`.
//!
//! - [`EtcdClient`]: single-attempt calls under a deadline, with this crate's own request and
//!   response types ([`Txn`], [`Compare`], [`KeyValue`], [`WatchResponse`], ...), so that no
//!   etcd-client type crosses the crate boundary.
//! - [`Error`]: the generic client's errors, which name no TiCDC concept; every etcd-client
//!   error is classified in one module. [`CdcError`] is [`CdcEtcdClient`]'s: missing,
//!   malformed or refused metadata, or the failed call under it ([`CdcError::Etcd`]).
//! - [`RetryingClient`]: the same calls retried under one deadline with TiCDC's backoff and
//!   per-operation retry rules (deletes are never retried).
//! - [`watch::ResilientWatch`]: a watch that requests progress, re-opens itself when stuck or
//!   broken, never drops a response and surfaces compaction as [`Error::Compacted`].
//! - [`CdcEtcdClient`]: TiCDC's metadata operations (captures, owner, changefeeds, upstreams).
//! - The key layout of a TiCDC cluster is `cdc_model::key` (`CdcKey` parse and format): it
//!   does no IO, so the pure crates read it without linking a gRPC stack.
//!
//! Not here: sessions and the owner election (cdc-election), the etcd worker and its reactor
//! states (cdc-orchestrator).
//!
//! Invariant: no other crate of the workspace depends on `etcd-client`.
//!
//! # Example
//!
//! Write a key with retries, read the prefix back, then follow the changes under it from the
//! next revision (`examples/watch_prefix.rs` prints every change under a prefix):
//!
//! ```no_run
//! use cdc_etcd::watch::ResilientWatch;
//! use cdc_etcd::{ConnectConfig, EtcdClient, EventKind, GetOptions, RetryingClient};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let client =
//!     EtcdClient::connect(&["127.0.0.1:2379".to_owned()], ConnectConfig::default()).await?;
//! let cancel = CancellationToken::new();
//! // Each attempt runs under the client's deadline; transient errors are retried with backoff.
//! let retrying = RetryingClient::new(client.clone());
//! retrying.put("/demo/a", "1", 0, &cancel).await?;
//! let read = retrying.get("/demo/", GetOptions::prefix(), &cancel).await?;
//! println!("{} keys at revision {}", read.kvs.len(), read.revision);
//! // Resume right after the read: no change is missed or seen twice.
//! let mut watch =
//!     ResilientWatch::start(client, b"/demo/".to_vec(), true, read.revision + 1, cancel);
//! while let Some(response) = watch.recv().await {
//!     // Compaction and refusal end the watch with an error; stalls and breaks are re-opened.
//!     for event in response?.events {
//!         let kind = match event.kind {
//!             EventKind::Put => "put",
//!             EventKind::Delete => "delete",
//!         };
//!         println!("{kind} {} at {}", event.kv.key_lossy(), event.kv.mod_revision);
//!     }
//! }
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod cdc_client;
mod classify;
mod client;
mod error;
mod fence;
pub mod retry;
mod types;
pub mod watch;

#[cfg(feature = "testing")]
pub mod testing;

pub use cdc_client::{CdcEtcdClient, META_VERSION};
pub use client::{ConnectConfig, EtcdClient, LeaseKeepAlive, RawWatch, TlsConfig};
pub use error::{CdcError, CdcResult, Error, Result, RpcCode};
pub use fence::OwnerFence;
pub use retry::{RetryPolicy, RetryingClient};
pub use types::{
    Compare, CompareOp, Event, EventKind, GetOptions, GetResponse, KeepAliveResponse, KeyValue,
    LeaseGrant, LeaseId, LeaseTimeToLive, Revision, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse, TxnResponse, WatchOptions, WatchResponse,
};
