//! `[debug.messages]` (TiCDC's `pkg/config/messages.go`) and the server and client configurations derived from it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const MIB: i64 = 1024 * 1024;

/// The slowest reconnect rate accepted: one attempt per 1000 s.
pub(crate) const MIN_RETRY_RATE_PER_SECOND: f64 = 1e-3;
/// The fastest reconnect rate accepted: one attempt per microsecond.
pub(crate) const MAX_RETRY_RATE_PER_SECOND: f64 = 1e6;

/// The `[debug.messages]` section: p2p tuning knobs with TiCDC's keys and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct MessagesConfig {
    /// Longest time a client holds a batch (0 means the default; more than 10 s is an error).
    #[serde(with = "humantime_serde")]
    pub client_max_batch_interval: Duration,
    /// Largest batch in bytes (<= 0 means the default).
    pub client_max_batch_size: i64,
    /// Largest batch in entries (<= 0 means the default).
    pub client_max_batch_count: i64,
    /// Reconnects per second (<= 0 or NaN means the default; otherwise it must lie in
    /// [0.001, 1000000]).
    pub client_retry_rate_limit: f64,
    /// Capacity of the server's task queue (<= 0 means the default).
    pub server_max_pending_message_count: i64,
    /// How often the server acks (0 means the default; more than 10 s is an error).
    #[serde(with = "humantime_serde")]
    pub server_ack_interval: Duration,
    /// Handler workers (<= 0 means the default; more than 32 is an error).
    pub server_worker_pool_size: i64,
    /// Largest gRPC message accepted, both sides (0 means the default; < 0 is an error).
    pub max_recv_msg_size: i64,
    /// HTTP/2 keep-alive ping interval (0 means the default).
    #[serde(with = "humantime_serde")]
    pub keep_alive_time: Duration,
    /// HTTP/2 keep-alive ping timeout (0 means the default).
    #[serde(with = "humantime_serde")]
    pub keep_alive_timeout: Duration,
}

impl Default for MessagesConfig {
    fn default() -> Self {
        MessagesConfig {
            client_max_batch_interval: Duration::from_millis(10),
            client_max_batch_size: 64 * MIB,
            client_max_batch_count: 1024,
            client_retry_rate_limit: 1.0,
            server_max_pending_message_count: 102_400,
            server_ack_interval: Duration::from_millis(100),
            server_worker_pool_size: 8,
            max_recv_msg_size: 256 * MIB,
            keep_alive_time: Duration::from_secs(30),
            keep_alive_timeout: Duration::from_secs(10),
        }
    }
}

impl MessagesConfig {
    /// Replaces zero or negative values by the defaults and rejects out-of-range ones.
    pub fn validate_and_adjust(&mut self) -> Result<()> {
        let default = MessagesConfig::default();
        let invalid = |reason: String| Err(Error::InvalidServerOption { reason });
        if self.client_max_batch_interval.is_zero() {
            self.client_max_batch_interval = default.client_max_batch_interval;
        }
        if self.client_max_batch_interval > Duration::from_secs(10) {
            return invalid(format!(
                "client-max-batch-interval {:?} is larger than 10s",
                self.client_max_batch_interval
            ));
        }
        if self.client_max_batch_size <= 0 {
            self.client_max_batch_size = default.client_max_batch_size;
        }
        if self.client_max_batch_count <= 0 {
            self.client_max_batch_count = default.client_max_batch_count;
        }
        if self.client_retry_rate_limit.is_nan() || self.client_retry_rate_limit <= 0.0 {
            self.client_retry_rate_limit = default.client_retry_rate_limit;
        }
        if !(MIN_RETRY_RATE_PER_SECOND..=MAX_RETRY_RATE_PER_SECOND)
            .contains(&self.client_retry_rate_limit)
        {
            return invalid(format!(
                "client-retry-rate-limit {} is outside [{MIN_RETRY_RATE_PER_SECOND}, \
                 {MAX_RETRY_RATE_PER_SECOND}] reconnects per second",
                self.client_retry_rate_limit
            ));
        }
        if self.server_max_pending_message_count <= 0 {
            self.server_max_pending_message_count = default.server_max_pending_message_count;
        }
        if self.server_ack_interval.is_zero() {
            self.server_ack_interval = default.server_ack_interval;
        }
        if self.server_ack_interval > Duration::from_secs(10) {
            return invalid(format!(
                "server-ack-interval {:?} is larger than 10s",
                self.server_ack_interval
            ));
        }
        if self.server_worker_pool_size <= 0 {
            self.server_worker_pool_size = default.server_worker_pool_size;
        }
        if self.server_worker_pool_size > 32 {
            return invalid(format!(
                "server-worker-pool-size {} is larger than 32",
                self.server_worker_pool_size
            ));
        }
        if self.max_recv_msg_size == 0 {
            self.max_recv_msg_size = default.max_recv_msg_size;
        }
        if self.max_recv_msg_size < 0 {
            return invalid(format!(
                "max-recv-msg-size {} is negative",
                self.max_recv_msg_size
            ));
        }
        if self.keep_alive_time.is_zero() {
            self.keep_alive_time = default.keep_alive_time;
        }
        if self.keep_alive_timeout.is_zero() {
            self.keep_alive_timeout = default.keep_alive_timeout;
        }
        Ok(())
    }

    /// The message server's configuration. Call after `validate_and_adjust`.
    pub fn server_config(&self) -> ServerConfig {
        ServerConfig {
            max_pending_task_count: to_usize(self.server_max_pending_message_count),
            ack_interval: self.server_ack_interval,
            worker_pool_size: to_usize(self.server_worker_pool_size).max(1),
            max_recv_msg_size: to_usize(self.max_recv_msg_size),
            keep_alive_time: self.keep_alive_time,
            keep_alive_timeout: self.keep_alive_timeout,
            ..ServerConfig::default()
        }
    }

    /// The message clients' configuration. Call after `validate_and_adjust`.
    pub fn client_config(&self, advertised_addr: impl Into<String>) -> ClientConfig {
        ClientConfig {
            batch_send_interval: self.client_max_batch_interval,
            max_batch_bytes: to_usize(self.client_max_batch_size),
            max_batch_count: to_usize(self.client_max_batch_count),
            retry_rate_limit_per_second: self.client_retry_rate_limit,
            max_recv_msg_size: to_usize(self.max_recv_msg_size),
            keep_alive_time: self.keep_alive_time,
            keep_alive_timeout: self.keep_alive_timeout,
            advertised_addr: advertised_addr.into(),
            ..ClientConfig::default()
        }
    }
}

fn to_usize(value: i64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

/// Settings of a `MessageServer`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Capacity of the task queue (TiCDC `MaxPendingTaskCount`).
    pub max_pending_task_count: usize,
    /// Messages buffered per (topic, sender) while the topic has no handler.
    pub max_pending_message_count_per_topic: usize,
    /// Topics without a handler for which one sender may have messages buffered; a message
    /// on one more such topic ends the sender's stream with CONGESTED (not in TiCDC, where
    /// the number is unbounded).
    pub max_pending_topic_count_per_sender: usize,
    /// Capacity of each stream's response channel.
    pub send_channel_size: usize,
    /// How often acks are sent.
    pub ack_interval: Duration,
    /// Handler workers.
    pub worker_pool_size: usize,
    /// Largest number of peers (streams are refused beyond it).
    pub max_peer_count: usize,
    /// How long removing a handler waits for it to finish its current message.
    pub wait_unregister_handle_timeout: Duration,
    /// Responses per second per stream (burst 1).
    pub send_rate_limit_per_stream: u32,
    /// Batches queued per worker before the main loop waits.
    pub worker_queue_size: usize,
    /// Largest gRPC message accepted.
    pub max_recv_msg_size: usize,
    /// HTTP/2 keep-alive interval for the serving side.
    pub keep_alive_time: Duration,
    /// HTTP/2 keep-alive timeout for the serving side.
    pub keep_alive_timeout: Duration,
    /// Deregistered senders remembered (and refused) for the server's life; past it the
    /// oldest is forgotten. A capture ID names one incarnation, so this counts removed
    /// incarnations; each costs about 150 bytes.
    pub max_deregistered_senders: usize,
    /// How long a topic stays without handler, after its handler was removed, before its
    /// ack records are trimmed (sender by sender, once the sender has been sent the final
    /// acks). A handler added meanwhile continues from the records.
    pub removed_topic_linger: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        let messages = MessagesConfig::default();
        ServerConfig {
            max_pending_task_count: to_usize(messages.server_max_pending_message_count),
            max_pending_message_count_per_topic: 256,
            max_pending_topic_count_per_sender: 1024,
            send_channel_size: 16,
            ack_interval: messages.server_ack_interval,
            worker_pool_size: to_usize(messages.server_worker_pool_size),
            max_peer_count: 1024,
            wait_unregister_handle_timeout: Duration::from_secs(10),
            send_rate_limit_per_stream: 1024,
            worker_queue_size: 64,
            max_recv_msg_size: to_usize(messages.max_recv_msg_size),
            keep_alive_time: messages.keep_alive_time,
            keep_alive_timeout: messages.keep_alive_timeout,
            max_deregistered_senders: 16_384,
            removed_topic_linger: Duration::from_secs(10),
        }
    }
}

/// Settings of a `MessageClient`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    /// Capacity of the send queue.
    pub send_channel_size: usize,
    /// A batch is flushed at least this often.
    pub batch_send_interval: Duration,
    /// A batch is flushed once it holds this many bytes.
    pub max_batch_bytes: usize,
    /// A batch is flushed once it holds this many entries.
    pub max_batch_count: usize,
    /// Reconnects per second (burst 1). Clamped to [0.001, 1000000]; NaN or <= 0 means 1.
    pub retry_rate_limit_per_second: f64,
    /// Bytes of sent but unacked messages (payloads plus `UNACKED_ENTRY_OVERHEAD` each)
    /// above which sending waits (`try_send_message` gives `SendTryAgain`) until acks free
    /// space. The unacked queues must keep every message until it is acked, to resend it;
    /// this bounds them while a peer does not ack.
    pub max_unacked_bytes: usize,
    /// TCP connect timeout.
    pub dial_timeout: Duration,
    /// Largest gRPC message accepted.
    pub max_recv_msg_size: usize,
    /// HTTP/2 keep-alive interval.
    pub keep_alive_time: Duration,
    /// HTTP/2 keep-alive timeout.
    pub keep_alive_timeout: Duration,
    /// Sent in the stream meta; captures leave it empty.
    pub client_version: String,
    /// This capture's advertised address, sent in the stream meta.
    pub advertised_addr: String,
    /// TLS to the peers (`https://`); `None` dials plain HTTP/2.
    pub tls: Option<PeerTls>,
}

/// The credentials of a p2p client over TLS: the CA that signed the peers' certificates and
/// this capture's own certificate and key, which a peer with mutual TLS checks (PEM).
#[derive(Clone, PartialEq, Eq)]
pub struct PeerTls {
    /// The CA certificates (PEM).
    pub ca_pem: Vec<u8>,
    /// The client certificate chain (PEM).
    pub cert_pem: Vec<u8>,
    /// The client's private key (PEM).
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        f.debug_struct("PeerTls")
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("cert_pem_bytes", &self.cert_pem.len())
            .finish_non_exhaustive()
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        let messages = MessagesConfig::default();
        ClientConfig {
            send_channel_size: 1024,
            batch_send_interval: messages.client_max_batch_interval,
            max_batch_bytes: to_usize(messages.client_max_batch_size),
            max_batch_count: to_usize(messages.client_max_batch_count),
            retry_rate_limit_per_second: messages.client_retry_rate_limit,
            max_unacked_bytes: 256 * 1024 * 1024,
            dial_timeout: Duration::from_secs(5),
            max_recv_msg_size: to_usize(messages.max_recv_msg_size),
            keep_alive_time: messages.keep_alive_time,
            keep_alive_timeout: messages.keep_alive_timeout,
            client_version: String::new(),
            advertised_addr: String::new(),
            tls: None,
        }
    }
}
