//! cdc-p2p: peer-to-peer messaging between captures over one gRPC stream per peer.
//!
//! Captures send each other scheduling messages on named topics. Per (sender, topic), a
//! handler sees every message exactly once and in order across any number of reconnects;
//! a gap surfaces as `Error::DataLost`, never silently.
//!
//! Key types:
//! - `MessageServer`: receives streams, arbitrates epochs, checks sequences, acks, and runs
//!   handlers on a fixed worker pool (one topic, one worker).
//! - `MessageClient`: one per remote peer; sequences, batching, resend after reconnect.
//! - `MessageRouter`: peers by capture ID, a lazily started client each, plus the local client.
//! - `ServerWrapper`: the process-wide gRPC service whose server can be swapped.
//! - `Topic`: a typed topic (message type + codec), so callers never assemble bytes.
//!
//! This crate is the only one that names tonic or prost. It never depends on etcd: peers and
//! addresses come in as data. The wire protocol is `proto/p2p.proto`, compiled by `build.rs`.
#![warn(missing_docs)]

mod ack;
mod client;
mod config;
mod error;
mod local;
mod metrics;
mod router;
mod server;
mod stream_handle;
mod topic;
mod transport;
mod wrapper;

#[cfg(test)]
mod tests;

/// Generated wire types, client and server of `p2p.CDCPeerToPeer`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("p2p");
}

pub use client::MessageClient;
pub use config::{ClientConfig, MessagesConfig, ServerConfig};
pub use error::{BoxError, Error, Result};
pub use local::{LocalClient, LocalReceiver};
pub use metrics::{Metrics, MetricsSnapshot};
pub use router::{MessageRouter, PeerClient};
pub use server::{HandlerErrors, MessageServer, SenderId};
pub use topic::{Codec, Custom, CustomEncoding, Json, NamedTopic, Raw, Topic};
pub use transport::{CONNECTION_WINDOW_SIZE, STREAM_WINDOW_SIZE, configure_server, connect, serve};
pub use wrapper::ServerWrapper;

/// Renders an error and its chain of sources on one line.
pub(crate) fn report(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
