//! [`AnySink`]: the sink a [`SinkUri`] names, opened per span.

use std::sync::Arc;

use cdc_model::ChangeEvent;

use crate::blackhole::{BlackholeSink, BlackholeStats};
use crate::error::{Error, Result};
use crate::file::FileSink;
use crate::sink::Sink;
use crate::uri::{SinkConfig, SinkUri};

/// One of the sinks, chosen by the URI's scheme.
#[derive(Debug)]
pub enum AnySink {
    /// `blackhole://`.
    Blackhole(BlackholeSink),
    /// `file:///dir`.
    File(Box<FileSink>),
}

impl AnySink {
    /// Opens the sink `uri` names for span `span` of changefeed `changefeed` (both file-name-safe
    /// names). Blackhole sinks add to `blackhole_stats`.
    pub async fn open(
        uri: &SinkUri,
        changefeed: &str,
        span: &str,
        blackhole_stats: &Arc<BlackholeStats>,
    ) -> Result<AnySink> {
        match &uri.config {
            SinkConfig::Blackhole => Ok(AnySink::Blackhole(BlackholeSink::with_stats(
                blackhole_stats.clone(),
            ))),
            SinkConfig::File(config) => Ok(AnySink::File(Box::new(
                FileSink::open(config, changefeed, span).await?,
            ))),
            SinkConfig::Etcd(_) => Err(Error::NotImplemented {
                scheme: uri.kind().scheme(),
            }),
        }
    }
}

impl Sink for AnySink {
    async fn write(&mut self, events: &[ChangeEvent]) -> Result<()> {
        match self {
            AnySink::Blackhole(sink) => sink.write(events).await,
            AnySink::File(sink) => sink.write(events).await,
        }
    }

    async fn flush(&mut self) -> Result<()> {
        match self {
            AnySink::Blackhole(sink) => sink.flush().await,
            AnySink::File(sink) => sink.flush().await,
        }
    }

    async fn close(self) -> Result<()> {
        match self {
            AnySink::Blackhole(sink) => sink.close().await,
            AnySink::File(sink) => sink.close().await,
        }
    }
}
