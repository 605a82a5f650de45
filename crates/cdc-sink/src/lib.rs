//! The sinks of the data plane: where a span's changes go, chosen by the sink URI's scheme.
//!
//! - [`Sink`]: the trait every sink implements. One sink value serves one span: its batches
//!   arrive in revision order, [`Sink::flush`] makes everything written so far durable, and only
//!   then may the span's checkpoint cover those changes.
//! - [`SinkUri`]: the parsed sink URI (`blackhole://`, `file:///dir`, `etcd://h:p[,h:p]/prefix`,
//!   `mysql://user:password@h:p/database?table=name`, `nats://h:p/subject?stream=name`), its query
//!   parameters validated per scheme; an unknown scheme or parameter is an [`Error`]
//!   naming it. The network sinks take TLS files ([`SinkTls`], read and checked when the sink
//!   opens).
//! - [`BlackholeSink`]: counts changes and bytes and drops them.
//! - [`FileSink`]: JSON Lines files per span, rolled by size, fsynced on flush.
//! - [`EtcdSink`]: a mirror in another etcd under a prefix, batched and pipelined per flush.
//! - [`MysqlSink`]: a table in MySQL or MariaDB, one row per key, applied per flush in one
//!   transaction whose rows change only for a newer revision.
//! - [`NatsSink`]: messages of a NATS JetStream stream, deduplicated by `Nats-Msg-Id`, a flush
//!   waiting for every acknowledgement.
//! - [`AnySink`]: the sink a URI names, opened per span ([`SpanTarget`]), sharing what the spans
//!   of one changefeed share ([`SharedSinks`]).
//!
//! Not here: the source of the changes (`cdc-source-etcd`) and the pipeline that moves them and
//! keeps the checkpoint (`cdc-processor`).
#![warn(missing_docs)]

mod any;
mod blackhole;
mod error;
mod etcd;
mod file;
mod mysql;
mod nats;
mod sink;
mod tls;
mod uri;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use any::{AnySink, SharedSinks, SpanTarget};
pub use blackhole::{BlackholeSink, BlackholeStats};
pub use error::{Error, Result};
pub use etcd::{EtcdSink, MAX_IN_FLIGHT, MAX_TXN_BYTES};
pub use file::{FileSink, file_name, json_line};
pub use mysql::{MAX_LOCK_RETRIES, MAX_STATEMENT_BYTES, MysqlSink, create_table_sql};
pub use nats::{DUPLICATE_WINDOW, NatsSink, msg_id, subject_matches};
pub use sink::Sink;
pub use tls::LoadedTls;
pub use uri::{
    DEFAULT_BATCH_SIZE, DEFAULT_FLUSH_INTERVAL, DEFAULT_MAX_FILE_SIZE, DEFAULT_MYSQL_BATCH_SIZE,
    EtcdSinkConfig, FileSinkConfig, MYSQL_TLS_PARAMETERS, MysqlSinkConfig, NatsSinkConfig,
    SinkConfig, SinkKind, SinkTls, SinkUri, TLS_PARAMETERS, TlsParameters, Tombstones,
};

#[cfg(test)]
mod tests;
