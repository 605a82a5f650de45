//! [`MysqlSink`]: a span's changes as rows of a MySQL or MariaDB table.
//!
//! The table (created when missing) has one row per key: `k` (the key, the primary key), `v`
//! (the value, NULL for a deleted key: a tombstone), `revision` (of the key's last change) and
//! `changefeed` (its ID). Writes are buffered until [`Sink::flush`], which collapses the buffer to
//! the last change of each key and applies it in one transaction of multi-row
//! `INSERT ... ON DUPLICATE KEY UPDATE` statements of at most `batch-size` rows and
//! [`MAX_STATEMENT_BYTES`]; `flush` returns only once that transaction committed, so the
//! checkpoint never covers an uncommitted change.
//!
//! A row changes only when the change's revision is newer than the row's, so a replay after a
//! restart or a move (delivery is at least once) never rolls a key back, and a delete keeps its
//! row as a tombstone with its revision, so a replayed older put cannot resurrect the key. With
//! `tombstones=purge-after=<duration>` the tombstones of a span's keys are deleted once the span
//! has flushed changes that much newer (see docs/guarantees.md for the trade-off).
//!
//! A deadlock or a lock wait timeout rolls the transaction back and it is tried again (up to
//! [`MAX_LOCK_RETRIES`] times); every other failure is the flush's error, carrying the server's
//! message. Each sink has its own small pool, closed with the sink, so a sink opened after an
//! error starts from fresh connections (with the server's current settings and TLS files).
//!
//! With `ssl-ca` every connection requires TLS and verifies the server's certificate and its
//! name (`VERIFY_IDENTITY`); `ssl-cert` and `ssl-key` add a client certificate.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use cdc_model::{ChangeEvent, ErrorReport, OpType};
use sqlx::mysql::{
    MySqlConnectOptions, MySqlDatabaseError, MySqlPool, MySqlPoolOptions, MySqlSslMode,
};

use crate::error::{Error, Result};
use crate::sink::Sink;
use crate::uri::{MysqlSinkConfig, Tombstones};

/// The most bytes of keys and values in one statement, well below MySQL's and MariaDB's default
/// `max_allowed_packet` (16 MiB in MariaDB 10.11); a single larger row goes alone.
pub const MAX_STATEMENT_BYTES: usize = 4 << 20;

/// How many times a transaction that lost a deadlock or a lock wait is tried again.
pub const MAX_LOCK_RETRIES: u32 = 10;

/// The deadline of a connection and of the table's creation.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The deadline of one transaction.
const TXN_TIMEOUT: Duration = Duration::from_secs(60);

/// Connections of one sink's pool: a flush uses one.
const MAX_CONNECTIONS: u32 = 2;

/// MySQL's `ER_LOCK_DEADLOCK` and `ER_LOCK_WAIT_TIMEOUT`.
const LOCK_ERRORS: [u16; 2] = [1213, 1205];

/// One row to apply: the last change of a key in a flush.
#[derive(Debug)]
struct Row {
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    revision: u64,
}

impl Row {
    fn bytes(&self) -> usize {
        self.key.len() + self.value.as_ref().map_or(0, Vec::len)
    }
}

/// The `mysql://` sink of one span.
#[derive(Debug)]
pub struct MysqlSink {
    pool: MySqlPool,
    config: MysqlSinkConfig,
    changefeed: String,
    start_key: Vec<u8>,
    end_key: Vec<u8>,
    buffer: Vec<ChangeEvent>,
    /// With `purge-after`: when each flush committed and the newest revision it held, oldest
    /// first, at most one entry a second.
    flushed: VecDeque<(Instant, u64)>,
    /// Transactions tried again after a deadlock or a lock wait timeout.
    lock_retries: u64,
}

/// The `CREATE TABLE IF NOT EXISTS` of `table`.
pub fn create_table_sql(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS `{table}` (\
         k VARBINARY(3072) NOT NULL, \
         v LONGBLOB NULL, \
         revision BIGINT UNSIGNED NOT NULL, \
         changefeed VARCHAR(255) NOT NULL, \
         PRIMARY KEY (k)) ENGINE=InnoDB"
    )
}

/// The upsert of `n_rows` rows into `table`: each row changes only when its revision is newer
/// (the assignments run left to right, so `revision` is set last).
fn upsert_sql(table: &str, n_rows: usize) -> String {
    let mut sql = format!("INSERT INTO `{table}` (k, v, revision, changefeed) VALUES ");
    for index in 0..n_rows {
        if index > 0 {
            sql.push(',');
        }
        sql.push_str("(?,?,?,?)");
    }
    sql.push_str(
        " ON DUPLICATE KEY UPDATE \
         v = IF(VALUES(revision) > revision, VALUES(v), v), \
         changefeed = IF(VALUES(revision) > revision, VALUES(changefeed), changefeed), \
         revision = GREATEST(revision, VALUES(revision))",
    );
    sql
}

impl MysqlSink {
    /// Connects to the server, creates the table when it is missing, and returns the sink of the
    /// span `[start_key, end_key)` (an empty end is unbounded) of changefeed `changefeed`.
    pub async fn open(
        config: &MysqlSinkConfig,
        changefeed: &str,
        start_key: &[u8],
        end_key: &[u8],
    ) -> Result<MysqlSink> {
        let options = MySqlConnectOptions::new()
            .host(&config.host)
            .port(config.port)
            .username(&config.user)
            .password(&config.password)
            .database(&config.database);
        // With `ssl-ca`, TLS is required and the server's certificate must be signed by that CA
        // (or a root of the system's store) and name the URI's host, as TiCDC's MySQL sink
        // through Go's MySQL driver does; without it, no TLS (docs/security.md).
        let options = match &config.tls {
            None => options.ssl_mode(MySqlSslMode::Disabled),
            Some(tls) => {
                let loaded = tls.load().await?;
                let options = options
                    .ssl_mode(MySqlSslMode::VerifyIdentity)
                    .ssl_ca_from_pem(loaded.ca_pem);
                match loaded.identity {
                    None => options,
                    Some((cert, key)) => options
                        .ssl_client_cert_from_pem(cert)
                        .ssl_client_key_from_pem(key),
                }
            }
        };
        let pool = MySqlPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .min_connections(0)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_lazy_with(options);
        let sink = MysqlSink {
            pool,
            config: config.clone(),
            changefeed: changefeed.to_owned(),
            start_key: start_key.to_vec(),
            end_key: end_key.to_vec(),
            buffer: Vec::new(),
            flushed: VecDeque::new(),
            lock_retries: 0,
        };
        let created = tokio::time::timeout(
            CONNECT_TIMEOUT,
            sqlx::query(&create_table_sql(&config.table)).execute(&sink.pool),
        )
        .await;
        match created {
            Ok(Ok(_)) => Ok(sink),
            Ok(Err(source)) => {
                sink.pool.close().await;
                Err(sink.error("create table", source))
            }
            Err(_) => {
                sink.pool.close().await;
                Err(Error::MysqlTimeout {
                    op: "create table",
                    address: config.address(),
                    timeout: CONNECT_TIMEOUT,
                })
            }
        }
    }

    /// Transactions tried again after a deadlock or a lock wait timeout so far.
    pub fn lock_retries(&self) -> u64 {
        self.lock_retries
    }

    fn error(&self, op: &'static str, source: sqlx::Error) -> Error {
        Error::Mysql {
            op,
            address: self.config.address(),
            source: Box::new(source),
        }
    }

    /// The buffer as rows: the last change of each key, in the order of those changes.
    fn take_rows(&mut self) -> Vec<Row> {
        let events = std::mem::take(&mut self.buffer);
        let mut last: HashMap<&[u8], usize> = HashMap::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            last.insert(event.key.as_slice(), index);
        }
        let keep: Vec<bool> = (0..events.len())
            .map(|index| last.get(events[index].key.as_slice()) == Some(&index))
            .collect();
        drop(last);
        events
            .into_iter()
            .zip(keep)
            .filter(|(_, keep)| *keep)
            .map(|(event, _)| Row {
                key: event.key,
                value: match event.op {
                    OpType::Put => event.value,
                    OpType::Delete => None,
                },
                revision: event.revision,
            })
            .collect()
    }

    /// Applies `rows` in one transaction.
    async fn apply(&self, rows: &[Row]) -> Result<(), (&'static str, sqlx::Error)> {
        let mut txn = self.pool.begin().await.map_err(|err| ("begin", err))?;
        let batch_size = self.config.batch_size.max(1);
        let mut start = 0;
        while start < rows.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < rows.len()
                && end - start < batch_size
                && (end == start || bytes + rows[end].bytes() <= MAX_STATEMENT_BYTES)
            {
                bytes += rows[end].bytes();
                end += 1;
            }
            let sql = upsert_sql(&self.config.table, end - start);
            let mut query = sqlx::query(&sql);
            for row in &rows[start..end] {
                query = query
                    .bind(row.key.as_slice())
                    .bind(row.value.as_deref())
                    .bind(row.revision)
                    .bind(self.changefeed.as_str());
            }
            query
                .execute(&mut *txn)
                .await
                .map_err(|err| ("upsert", err))?;
            start = end;
        }
        txn.commit().await.map_err(|err| ("commit", err))
    }

    /// With `purge-after`: records a committed flush and deletes the span's tombstones older
    /// than the newest revision flushed at least `purge-after` ago.
    async fn purge(&mut self, newest: Option<u64>) -> Result<()> {
        let Tombstones::PurgeAfter(after) = self.config.tombstones else {
            return Ok(());
        };
        let now = Instant::now();
        if let Some(revision) = newest {
            match self.flushed.back_mut() {
                Some((at, held)) if now.duration_since(*at) < Duration::from_secs(1) => {
                    *held = (*held).max(revision);
                }
                _ => self.flushed.push_back((now, revision)),
            }
        }
        let mut horizon = None;
        while let Some((at, revision)) = self.flushed.front().copied() {
            if now.duration_since(at) < after {
                break;
            }
            horizon = Some(revision);
            self.flushed.pop_front();
        }
        let Some(horizon) = horizon else {
            return Ok(());
        };
        let table = &self.config.table;
        let sql = if self.end_key.is_empty() {
            format!(
                "DELETE FROM `{table}` WHERE v IS NULL AND changefeed = ? AND revision <= ? AND k >= ?"
            )
        } else {
            format!(
                "DELETE FROM `{table}` WHERE v IS NULL AND changefeed = ? AND revision <= ? AND k >= ? AND k < ?"
            )
        };
        let mut query = sqlx::query(&sql)
            .bind(self.changefeed.as_str())
            .bind(horizon)
            .bind(self.start_key.as_slice());
        if !self.end_key.is_empty() {
            query = query.bind(self.end_key.as_slice());
        }
        match tokio::time::timeout(TXN_TIMEOUT, query.execute(&self.pool)).await {
            Ok(Ok(done)) => {
                tracing::debug!(
                    changefeed = self.changefeed,
                    horizon,
                    purged = done.rows_affected(),
                    "tombstones purged"
                );
                Ok(())
            }
            Ok(Err(source)) => Err(self.error("purge tombstones", source)),
            Err(_) => Err(Error::MysqlTimeout {
                op: "purge tombstones",
                address: self.config.address(),
                timeout: TXN_TIMEOUT,
            }),
        }
    }
}

/// Whether the server rolled the transaction back for a deadlock or a lock wait timeout.
fn is_lock_conflict(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(database) => database
            .try_downcast_ref::<MySqlDatabaseError>()
            .is_some_and(|mysql| LOCK_ERRORS.contains(&mysql.number())),
        _ => false,
    }
}

impl Sink for MysqlSink {
    async fn write(&mut self, events: &[ChangeEvent]) -> Result<()> {
        self.buffer.extend_from_slice(events);
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        if self.buffer.is_empty() {
            return self.purge(None).await;
        }
        let rows = self.take_rows();
        let newest = rows.iter().map(|row| row.revision).max();
        let mut attempt = 0;
        loop {
            match tokio::time::timeout(TXN_TIMEOUT, self.apply(&rows)).await {
                Ok(Ok(())) => break,
                Ok(Err((op, source)))
                    if is_lock_conflict(&source) && attempt < MAX_LOCK_RETRIES =>
                {
                    attempt += 1;
                    self.lock_retries += 1;
                    tracing::warn!(
                        changefeed = self.changefeed,
                        attempt,
                        error = %ErrorReport(&source),
                        "{op} lost a lock conflict on mysql, trying the transaction again"
                    );
                    tokio::time::sleep(Duration::from_millis(20 << attempt.min(6))).await;
                }
                Ok(Err((op, source))) => return Err(self.error(op, source)),
                Err(_) => {
                    return Err(Error::MysqlTimeout {
                        op: "transaction",
                        address: self.config.address(),
                        timeout: TXN_TIMEOUT,
                    });
                }
            }
        }
        self.purge(newest).await
    }

    async fn close(self) -> Result<()> {
        self.pool.close().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
