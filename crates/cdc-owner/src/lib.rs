//! The owner: the changefeeds' state machines, their spans, the scheduler coordinator over p2p,
//! the checkpoint writes and the changefeed HTTP API (TiCDC's `cdc/owner` and `cdc/api/v2` in
//! pingcap/tiflow, rewritten).
//!
//! Pure parts, unit-tested without IO: [`feed`] (the changefeed state machine), [`spans`] (a
//! changefeed's key ranges), [`replica`] (what the stored info says to replicate) and [`api`]
//! (routes, bodies, validation and answers).
#![warn(missing_docs)]

pub mod api;
mod config;
mod core;
mod error;
pub mod feed;
pub mod replica;
pub mod spans;

pub use config::OwnerConfig;
pub use error::{Error, Result};
