//! The owner: the changefeeds' state machines, their spans, the scheduler coordinator over p2p,
//! the checkpoint writes and the changefeed HTTP API (TiCDC's `cdc/owner` and `cdc/api/v2` in
//! pingcap/tiflow, rewritten).
//!
//! [`OwnerReactors`] is the capture's [`cdc_reactor::OwnerFactory`]: each term's owner runs on
//! the capture's fenced etcd worker, sends the coordinator's [`cdc_scheduler::ToAgent`] messages
//! on [`TO_AGENT_TOPIC`] and handles the agents' [`cdc_scheduler::ToOwner`] messages from
//! [`TO_OWNER_TOPIC`] inside its ticks, and serves [`cdc_reactor::OwnerApi`].
//!
//! Pure parts, unit-tested without IO: [`feed`] (the changefeed state machine), [`spans`] (a
//! changefeed's key ranges), [`replica`] (what the stored info says to replicate) and [`api`]
//! (routes, bodies, validation and answers).
//!
//! Invariants: the owner writes only through its fenced worker, so a deposed owner writes
//! nothing; a changefeed's stored checkpoint is the minimum over its spans and never moves back
//! (but for a resume that overwrites it); its info and status are created in one transaction;
//! the statuses of one tick are queued together and a status whose checkpoint did not move is
//! not written.
#![warn(missing_docs)]

pub mod api;
mod config;
mod core;
mod error;
#[cfg(test)]
mod fake_agent;
pub mod feed;
mod owner;
pub mod replica;
pub mod spans;

pub use config::OwnerConfig;
pub use error::{Error, Result};
pub use owner::{OwnerReactors, TO_AGENT_TOPIC, TO_OWNER_TOPIC, to_agent_topic, to_owner_topic};
