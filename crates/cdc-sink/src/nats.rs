//! [`NatsSink`]: a span's changes as messages of a NATS JetStream stream.
//!
//! Each change is published to `<subject>.<changefeed>` with the file sink's JSON line as its
//! payload ([`crate::json_line`]) and a `Nats-Msg-Id` header made of the changefeed, the
//! revision and the key ([`msg_id`]), so that JetStream drops the copies a replay publishes
//! again inside the stream's duplicate window. Writes are buffered until [`Sink::flush`], which
//! publishes them on the changefeed's connection, in waves of at most one change per key
//! ([`waves`]), each key's changes in order, and returns once JetStream has acknowledged every
//! one, so the checkpoint never covers a change the stream has not stored.
//!
//! The stream must exist and take the subject; with `create-stream=true` a missing stream is
//! created with the subjects `<subject>.>` and a duplicate window of [`DUPLICATE_WINDOW`].

use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::context::GetStreamErrorKind;
use cdc_model::ChangeEvent;

use crate::error::{Error, Result};
use crate::file::json_line;
use crate::sink::Sink;
use crate::uri::NatsSinkConfig;

/// The duplicate window of a stream the sink creates (JetStream's default).
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Publishes in flight before their acknowledgements are awaited.
const MAX_IN_FLIGHT: usize = 1024;

/// The deadline of a connection and of the stream's lookup or creation.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The deadline of one acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// The deadline of a whole flush.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(120);

/// The `Nats-Msg-Id` of a change: `<changefeed>:<revision>:<key>`, the key's bytes outside
/// printable ASCII (and `%`) escaped as `%XX`.
pub fn msg_id(changefeed: &str, event: &ChangeEvent) -> String {
    let mut id = format!("{changefeed}:{}:", event.revision);
    for &byte in &event.key {
        if byte.is_ascii_graphic() && byte != b'%' {
            id.push(char::from(byte));
        } else {
            id.push_str(&format!("%{byte:02X}"));
        }
    }
    id
}

/// Whether the NATS subject pattern `pattern` (with `*` and `>` wildcards) matches `subject`.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for token in pattern.split('.') {
        match (token, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (token, Some(subject_token)) if token == subject_token => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

/// The `nats://` sink of one span.
#[derive(Debug)]
pub struct NatsSink {
    jetstream: jetstream::Context,
    config: NatsSinkConfig,
    changefeed: String,
    subject: String,
    buffer: Vec<ChangeEvent>,
}

impl NatsSink {
    /// Connects to the sink's server. Spans of one changefeed on one capture share the client.
    /// With `ca` TLS is required and the server's certificate must be signed by that CA (only
    /// it: not the system's roots) and name the URI's host; with `cert` and `key` the sink
    /// presents its certificate, as the server's `--tlsverify` requires. The client reads the
    /// files again when it reconnects, so renewed files reach new connections.
    pub async fn connect(config: &NatsSinkConfig) -> Result<async_nats::Client> {
        let mut options = async_nats::ConnectOptions::new().connection_timeout(CONNECT_TIMEOUT);
        if let Some(tls) = &config.tls {
            // Checked here so that a bad file is an error naming its parameter; async-nats
            // reads them itself.
            tls.load().await?;
            options = options
                .require_tls(true)
                .add_root_certificates(tls.ca.clone());
            if let Some((cert, key)) = &tls.identity {
                options = options.add_client_certificate(cert.clone(), key.clone());
            }
        }
        let connected =
            tokio::time::timeout(CONNECT_TIMEOUT, options.connect(config.address.as_str())).await;
        match connected {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(source)) => Err(Error::Nats {
                op: "connect",
                address: config.address.clone(),
                source: Box::new(source),
            }),
            Err(_) => Err(Error::NatsTimeout {
                op: "connect",
                address: config.address.clone(),
                timeout: CONNECT_TIMEOUT,
            }),
        }
    }

    /// The sink of a span of changefeed `changefeed` on `client`: checks that the stream exists
    /// and takes `<subject>.<changefeed>`, or creates it when asked to.
    pub async fn open(
        client: async_nats::Client,
        config: &NatsSinkConfig,
        changefeed: &str,
    ) -> Result<NatsSink> {
        let mut context = jetstream::new(client);
        context.set_timeout(ACK_TIMEOUT);
        let sink = NatsSink {
            jetstream: context,
            config: config.clone(),
            changefeed: changefeed.to_owned(),
            subject: format!("{}.{changefeed}", config.subject),
            buffer: Vec::new(),
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, sink.check_stream()).await {
            Ok(checked) => checked.map(|()| sink),
            Err(_) => Err(Error::NatsTimeout {
                op: "stream info",
                address: config.address.clone(),
                timeout: CONNECT_TIMEOUT,
            }),
        }
    }

    /// The subject this sink publishes to.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    fn error(&self, op: &'static str, source: async_nats::Error) -> Error {
        Error::Nats {
            op,
            address: self.config.address.clone(),
            source,
        }
    }

    async fn check_stream(&self) -> Result<()> {
        let config = &self.config;
        match self.jetstream.get_stream(&config.stream).await {
            Ok(stream) => {
                let subjects = &stream.cached_info().config.subjects;
                if subjects
                    .iter()
                    .any(|pattern| subject_matches(pattern, &self.subject))
                {
                    Ok(())
                } else {
                    Err(Error::NatsStreamMismatch {
                        address: config.address.clone(),
                        stream: config.stream.clone(),
                        subject: self.subject.clone(),
                        subjects: subjects.clone(),
                    })
                }
            }
            Err(err)
                if matches!(
                    err.kind(),
                    GetStreamErrorKind::JetStream(jetstream_error)
                        if jetstream_error.error_code() == ErrorCode::STREAM_NOT_FOUND
                ) =>
            {
                if !config.create_stream {
                    return Err(Error::NatsStreamMissing {
                        address: config.address.clone(),
                        stream: config.stream.clone(),
                        subject: config.subject.clone(),
                    });
                }
                // Spans opening at once create the same configuration, which JetStream accepts.
                self.jetstream
                    .create_stream(jetstream::stream::Config {
                        name: config.stream.clone(),
                        subjects: vec![format!("{}.>", config.subject)],
                        duplicate_window: DUPLICATE_WINDOW,
                        ..Default::default()
                    })
                    .await
                    .map(|_| ())
                    .map_err(|err| self.error("create stream", Box::new(err)))
            }
            Err(err) => Err(self.error("stream info", Box::new(err))),
        }
    }

    async fn publish_all(&self, events: &[ChangeEvent]) -> Result<()> {
        for wave in waves(events) {
            for chunk in wave.chunks(MAX_IN_FLIGHT) {
                let mut acks = Vec::with_capacity(chunk.len());
                for event in chunk {
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert("Nats-Msg-Id", msg_id(&self.changefeed, event).as_str());
                    let ack = self
                        .jetstream
                        .publish_with_headers(
                            self.subject.clone(),
                            headers,
                            bytes::Bytes::from(json_line(event)),
                        )
                        .await
                        .map_err(|err| self.error("publish", Box::new(err)))?;
                    acks.push(ack);
                }
                for ack in acks {
                    ack.await
                        .map_err(|err| self.error("publish acknowledgement", Box::new(err)))?;
                }
            }
        }
        Ok(())
    }
}

/// `events` in waves that hold at most one change of each key, each key's changes in order
/// across the waves: wave `n` holds every key's `n`-th change of the flush.
///
/// A wave is published and acknowledged before the next is sent, so no key ever has two
/// changes in flight. With two in flight, a server that crashed after storing the newer one
/// but not the older one (the client sends what it still holds once it reconnects) would leave
/// the older one to a replay, stored after the newer: out of order for that key.
fn waves(events: &[ChangeEvent]) -> Vec<Vec<&ChangeEvent>> {
    let mut seen: std::collections::HashMap<&[u8], usize> =
        std::collections::HashMap::with_capacity(events.len());
    let mut waves: Vec<Vec<&ChangeEvent>> = Vec::new();
    for event in events {
        let count = seen.entry(event.key.as_slice()).or_insert(0);
        if *count == waves.len() {
            waves.push(Vec::new());
        }
        waves[*count].push(event);
        *count += 1;
    }
    waves
}

impl Sink for NatsSink {
    async fn write(&mut self, events: &[ChangeEvent]) -> Result<()> {
        self.buffer.extend_from_slice(events);
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let events = std::mem::take(&mut self.buffer);
        match tokio::time::timeout(FLUSH_TIMEOUT, self.publish_all(&events)).await {
            Ok(published) => published,
            Err(_) => Err(Error::NatsTimeout {
                op: "publish",
                address: self.config.address.clone(),
                timeout: FLUSH_TIMEOUT,
            }),
        }
    }

    async fn close(self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
