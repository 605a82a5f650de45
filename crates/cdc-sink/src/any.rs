//! [`AnySink`]: the sink a [`SinkUri`] names, opened per span.

use std::sync::Arc;

use cdc_etcd::EtcdClient;
use cdc_model::ChangeEvent;
use tokio::sync::Mutex;

use crate::blackhole::{BlackholeSink, BlackholeStats};
use crate::error::Result;
use crate::etcd::EtcdSink;
use crate::file::FileSink;
use crate::mysql::MysqlSink;
use crate::nats::NatsSink;
use crate::sink::Sink;
use crate::uri::{SinkConfig, SinkUri};

/// The span a sink is opened for.
#[derive(Debug, Clone, Copy)]
pub struct SpanTarget<'a> {
    /// The changefeed, as a file-name-safe name.
    pub changefeed: &'a str,
    /// The span, as a file-name-safe name.
    pub span: &'a str,
    /// The changefeed rule (key prefix) the span was cut from; the etcd sink replaces it by its
    /// own prefix.
    pub source_prefix: &'a [u8],
    /// The span's first key.
    pub start_key: &'a [u8],
    /// The key after the span's last (empty: unbounded).
    pub end_key: &'a [u8],
}

/// What the sinks of one changefeed on one capture share: the blackhole counters and the
/// connection to a downstream etcd or NATS server, made by the first span that needs it.
#[derive(Debug, Default)]
pub struct SharedSinks {
    blackhole_stats: Arc<BlackholeStats>,
    etcd: Mutex<Option<EtcdClient>>,
    nats: Mutex<Option<async_nats::Client>>,
}

impl SharedSinks {
    /// The counters of the blackhole sinks.
    pub fn blackhole_stats(&self) -> &Arc<BlackholeStats> {
        &self.blackhole_stats
    }
}

/// One of the sinks, chosen by the URI's scheme.
#[derive(Debug)]
pub enum AnySink {
    /// `blackhole://`.
    Blackhole(BlackholeSink),
    /// `file:///dir`.
    File(Box<FileSink>),
    /// `etcd://host:port/prefix`.
    Etcd(Box<EtcdSink>),
    /// `mysql://user:password@host:port/database?table=name`.
    Mysql(Box<MysqlSink>),
    /// `nats://host:port/subject?stream=name`.
    Nats(Box<NatsSink>),
}

impl AnySink {
    /// Opens the sink `uri` names for `target`, sharing what `shared` holds.
    pub async fn open(
        uri: &SinkUri,
        target: SpanTarget<'_>,
        shared: &SharedSinks,
    ) -> Result<AnySink> {
        match &uri.config {
            SinkConfig::Blackhole => Ok(AnySink::Blackhole(BlackholeSink::with_stats(
                shared.blackhole_stats.clone(),
            ))),
            SinkConfig::File(config) => Ok(AnySink::File(Box::new(
                FileSink::open(config, target.changefeed, target.span).await?,
            ))),
            SinkConfig::Etcd(config) => {
                let client = {
                    let mut etcd = shared.etcd.lock().await;
                    match &*etcd {
                        Some(client) => client.clone(),
                        None => {
                            let client = EtcdSink::connect(config).await?;
                            *etcd = Some(client.clone());
                            client
                        }
                    }
                };
                Ok(AnySink::Etcd(Box::new(EtcdSink::new(
                    client,
                    config.clone(),
                    target.source_prefix.to_vec(),
                ))))
            }
            SinkConfig::Mysql(config) => Ok(AnySink::Mysql(Box::new(
                MysqlSink::open(config, target.changefeed, target.start_key, target.end_key)
                    .await?,
            ))),
            SinkConfig::Nats(config) => {
                let client = {
                    let mut nats = shared.nats.lock().await;
                    match &*nats {
                        Some(client) => client.clone(),
                        None => {
                            let client = NatsSink::connect(config).await?;
                            *nats = Some(client.clone());
                            client
                        }
                    }
                };
                Ok(AnySink::Nats(Box::new(
                    NatsSink::open(client, config, target.changefeed).await?,
                )))
            }
        }
    }
}

impl Sink for AnySink {
    async fn write(&mut self, events: &[ChangeEvent]) -> Result<()> {
        match self {
            AnySink::Blackhole(sink) => sink.write(events).await,
            AnySink::File(sink) => sink.write(events).await,
            AnySink::Etcd(sink) => sink.write(events).await,
            AnySink::Mysql(sink) => sink.write(events).await,
            AnySink::Nats(sink) => sink.write(events).await,
        }
    }

    async fn flush(&mut self) -> Result<()> {
        match self {
            AnySink::Blackhole(sink) => sink.flush().await,
            AnySink::File(sink) => sink.flush().await,
            AnySink::Etcd(sink) => sink.flush().await,
            AnySink::Mysql(sink) => sink.flush().await,
            AnySink::Nats(sink) => sink.flush().await,
        }
    }

    async fn close(self) -> Result<()> {
        match self {
            AnySink::Blackhole(sink) => sink.close().await,
            AnySink::File(sink) => sink.close().await,
            AnySink::Etcd(sink) => sink.close().await,
            AnySink::Mysql(sink) => sink.close().await,
            AnySink::Nats(sink) => sink.close().await,
        }
    }
}
