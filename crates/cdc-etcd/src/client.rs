//! [`EtcdClient`]: single-attempt etcd calls, each under a deadline, with this crate's types.
//!
//! Every unary call is bounded by [`ConnectConfig::request_timeout`] through `tokio::time::timeout`
//! rather than etcd-client's channel-wide `with_timeout`, which would also cut blocking calls and
//! streams. Streams (watch, lease keep-alive) have no deadline; they rely on HTTP/2 keep-alive and
//! `require_leader` to end when the connection or the leader is gone.

use std::future::Future;
use std::time::Duration;

use crate::classify::classify;
use crate::error::{Error, Result};
use crate::types::{
    Compare, CompareOp, Event, EventKind, GetOptions, GetResponse, KeepAliveResponse, KeyValue,
    LeaseGrant, LeaseId, LeaseTimeToLive, Revision, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse, TxnResponse, WatchOptions, WatchResponse,
};

/// How to connect to etcd.
#[derive(Clone, Debug)]
pub struct ConnectConfig {
    /// Deadline of one unary call.
    pub request_timeout: Duration,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// HTTP/2 keep-alive ping interval; etcd refuses pings more often than every 5 s.
    pub keep_alive_interval: Duration,
    /// HTTP/2 keep-alive ping timeout.
    pub keep_alive_timeout: Duration,
    /// Largest response the client decodes (range reads, watch batches).
    pub max_decoding_message_size: usize,
    /// TLS to `https://` endpoints; `None` speaks plain HTTP/2. (Shared: the config is cloned
    /// into every client and held across awaits.)
    pub tls: Option<std::sync::Arc<TlsConfig>>,
}

/// TLS to etcd: the CA that signed the servers' certificates and, for etcd's
/// `--client-cert-auth`, the client's own certificate and key (PEM).
#[derive(Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The CA certificates (PEM).
    pub ca_pem: Vec<u8>,
    /// The client certificate chain and its private key (PEM), for mutual TLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        f.debug_struct("TlsConfig")
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

impl Default for ConnectConfig {
    fn default() -> ConnectConfig {
        ConnectConfig {
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            keep_alive_interval: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(3),
            max_decoding_message_size: 256 << 20,
            tls: None,
        }
    }
}

impl TlsConfig {
    /// The credentials stored in an upstream's info (TiCDC's `ca-path`, `cert-path`,
    /// `key-path`), read from their files: `None` without a CA. A certificate needs its key and
    /// a CA; a file that cannot be read or holds no PEM block is an error naming it.
    pub fn from_files(ca_path: &str, cert_path: &str, key_path: &str) -> Result<Option<TlsConfig>> {
        let invalid = |key: &'static str, path: &str, reason: String| Error::Credentials {
            key,
            path: path.to_owned(),
            reason,
        };
        if cert_path.is_empty() != key_path.is_empty() {
            let (key, path) = if cert_path.is_empty() {
                ("key-path", key_path)
            } else {
                ("cert-path", cert_path)
            };
            return Err(invalid(
                key,
                path,
                "cert-path and key-path go together".to_owned(),
            ));
        }
        if ca_path.is_empty() {
            if !cert_path.is_empty() {
                return Err(invalid(
                    "cert-path",
                    cert_path,
                    "a client certificate needs ca-path".to_owned(),
                ));
            }
            return Ok(None);
        }
        let read = |key: &'static str, path: &str| {
            let pem = std::fs::read(path).map_err(|err| invalid(key, path, err.to_string()))?;
            if !pem.windows(11).any(|window| window == b"-----BEGIN ") {
                return Err(invalid(key, path, "no PEM block in the file".to_owned()));
            }
            Ok(pem)
        };
        let ca_pem = read("ca-path", ca_path)?;
        let identity = if cert_path.is_empty() {
            None
        } else {
            Some((read("cert-path", cert_path)?, read("key-path", key_path)?))
        };
        Ok(Some(TlsConfig { ca_pem, identity }))
    }
}

/// A connection to an etcd cluster. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct EtcdClient {
    client: etcd_client::Client,
    kv: etcd_client::KvClient,
    watch: etcd_client::WatchClient,
    endpoints: String,
    config: ConnectConfig,
}

impl std::fmt::Debug for EtcdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdClient")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl EtcdClient {
    /// Connects to `endpoints` (`host:port` or URLs). The connection is lazy: this fails only on
    /// malformed endpoints; the first call reports an unreachable cluster.
    pub async fn connect(endpoints: &[String], config: ConnectConfig) -> Result<EtcdClient> {
        let joined = endpoints.join(",");
        let options = etcd_client::ConnectOptions::new()
            .with_keep_alive(config.keep_alive_interval, config.keep_alive_timeout)
            .with_keep_alive_while_idle(true)
            .with_connect_timeout(config.connect_timeout)
            .with_require_leader(true);
        let options = match &config.tls {
            Some(tls) => {
                let mut tls_options = etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(&tls.ca_pem));
                if let Some((cert, key)) = &tls.identity {
                    tls_options = tls_options.identity(etcd_client::Identity::from_pem(cert, key));
                }
                options.with_tls(tls_options)
            }
            None => options,
        };
        let client = tokio::time::timeout(
            config.connect_timeout,
            etcd_client::Client::connect(endpoints, Some(options)),
        )
        .await
        .map_err(|_| Error::Timeout {
            op: "connect",
            endpoints: joined.clone(),
            after: config.connect_timeout,
        })?
        .map_err(|err| classify("connect", &joined, None, err))?;
        let kv = client
            .kv_client()
            .max_decoding_message_size(config.max_decoding_message_size);
        let watch = client
            .watch_client()
            .max_decoding_message_size(config.max_decoding_message_size);
        Ok(EtcdClient {
            client,
            kv,
            watch,
            endpoints: joined,
            config,
        })
    }

    /// The endpoints, comma-separated (for messages).
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// The connection settings.
    pub fn config(&self) -> &ConnectConfig {
        &self.config
    }

    async fn call<T>(
        &self,
        op: &'static str,
        lease_id: Option<LeaseId>,
        fut: impl Future<Output = std::result::Result<T, etcd_client::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.config.request_timeout, fut).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(classify(op, &self.endpoints, lease_id, err)),
            Err(_) => Err(Error::Timeout {
                op,
                endpoints: self.endpoints.clone(),
                after: self.config.request_timeout,
            }),
        }
    }

    /// Reads a key or a range.
    pub async fn get(&self, key: impl Into<Vec<u8>>, options: GetOptions) -> Result<GetResponse> {
        let mut kv = self.kv.clone();
        let response = self
            .call("get", None, kv.get(key, Some(get_options(&options))))
            .await
            .map_err(|err| match err {
                Error::Compacted { compacted, .. } => Error::Compacted {
                    requested: options.revision,
                    compacted,
                },
                other => other,
            })?;
        Ok(convert_get(response))
    }

    /// Puts a value, attached to `lease` when it is not 0. Returns the store revision.
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        lease: LeaseId,
    ) -> Result<Revision> {
        let mut kv = self.kv.clone();
        let options = (lease != 0).then(|| etcd_client::PutOptions::new().with_lease(lease));
        let response = self.call("put", None, kv.put(key, value, options)).await?;
        Ok(header_revision(response.header()))
    }

    /// Deletes a key, or every key with the prefix. Returns how many keys were deleted.
    pub async fn delete(&self, key: impl Into<Vec<u8>>, prefix: bool) -> Result<i64> {
        let mut kv = self.kv.clone();
        let options = prefix.then(|| etcd_client::DeleteOptions::new().with_prefix());
        let response = self.call("delete", None, kv.delete(key, options)).await?;
        Ok(response.deleted())
    }

    /// Runs a transaction.
    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        let mut kv = self.kv.clone();
        let response = self.call("txn", None, kv.txn(convert_txn(txn))).await?;
        Ok(TxnResponse {
            succeeded: response.succeeded(),
            revision: header_revision(response.header()),
            responses: response
                .op_responses()
                .into_iter()
                .map(convert_op_response)
                .collect(),
        })
    }

    /// Compacts the history up to `revision`, waiting for the compaction to be physical.
    pub async fn compact(&self, revision: Revision) -> Result<()> {
        let mut kv = self.kv.clone();
        let options = etcd_client::CompactionOptions::new().with_physical();
        self.call("compact", None, kv.compact(revision, Some(options)))
            .await?;
        Ok(())
    }

    /// Grants a lease of `ttl` seconds. etcd may grant a longer TTL than asked for.
    pub async fn lease_grant(&self, ttl: i64) -> Result<LeaseGrant> {
        let mut lease = self.client.lease_client();
        let response = self
            .call("lease_grant", None, lease.grant(ttl, None))
            .await?;
        Ok(LeaseGrant {
            id: response.id(),
            ttl: response.ttl(),
        })
    }

    /// Revokes a lease, deleting every key attached to it. A missing lease is
    /// [`Error::LeaseNotFound`].
    pub async fn lease_revoke(&self, id: LeaseId) -> Result<()> {
        let mut lease = self.client.lease_client();
        self.call("lease_revoke", Some(id), lease.revoke(id))
            .await?;
        Ok(())
    }

    /// Reads a lease's remaining TTL; `ttl == -1` means the lease is gone.
    pub async fn lease_time_to_live(&self, id: LeaseId) -> Result<LeaseTimeToLive> {
        let mut lease = self.client.lease_client();
        let response = self
            .call("lease_time_to_live", Some(id), lease.time_to_live(id, None))
            .await?;
        Ok(LeaseTimeToLive {
            ttl: response.ttl(),
            granted_ttl: response.granted_ttl(),
        })
    }

    /// Opens a keep-alive stream for a lease. The handshake renews the lease once; a lease that
    /// is already gone is [`Error::LeaseNotFound`].
    pub async fn lease_keep_alive(&self, id: LeaseId) -> Result<LeaseKeepAlive> {
        let mut lease = self.client.lease_client();
        let (keeper, stream) = self
            .call("lease_keep_alive", Some(id), lease.keep_alive(id))
            .await?;
        Ok(LeaseKeepAlive { id, keeper, stream })
    }

    /// Opens a watch. The stream has no deadline.
    pub async fn watch(&self, key: impl Into<Vec<u8>>, options: WatchOptions) -> Result<RawWatch> {
        let mut watch_options = etcd_client::WatchOptions::new();
        if options.prefix {
            watch_options = watch_options.with_prefix();
        }
        self.open_watch(key.into(), watch_options, options).await
    }

    /// Opens a watch on the keys in `[key, range_end)`; `options.prefix` is ignored. The stream
    /// has no deadline.
    pub async fn watch_range(
        &self,
        key: impl Into<Vec<u8>>,
        range_end: impl Into<Vec<u8>>,
        options: WatchOptions,
    ) -> Result<RawWatch> {
        let watch_options = etcd_client::WatchOptions::new().with_range(range_end.into());
        self.open_watch(key.into(), watch_options, options).await
    }

    async fn open_watch(
        &self,
        key: Vec<u8>,
        mut watch_options: etcd_client::WatchOptions,
        options: WatchOptions,
    ) -> Result<RawWatch> {
        let mut watch = self.watch.clone();
        if options.start_revision > 0 {
            watch_options = watch_options.with_start_revision(options.start_revision);
        }
        if options.progress_notify {
            watch_options = watch_options.with_progress_notify();
        }
        if options.prev_kv {
            watch_options = watch_options.with_prev_key();
        }
        let stream = self
            .call("watch", None, watch.watch(key, Some(watch_options)))
            .await?;
        Ok(RawWatch {
            stream,
            endpoints: self.endpoints.clone(),
        })
    }

    /// The id of the etcd cluster, from the member list's response header.
    pub async fn cluster_id(&self) -> Result<u64> {
        let mut cluster = self.client.cluster_client();
        let response = self
            .call("member_list", None, cluster.member_list())
            .await?;
        Ok(response
            .header()
            .map(|header| header.cluster_id())
            .unwrap_or(0))
    }
}

/// A lease keep-alive stream: send a renewal, then read its answer.
pub struct LeaseKeepAlive {
    id: LeaseId,
    keeper: etcd_client::LeaseKeeper,
    stream: etcd_client::LeaseKeepAliveStream,
}

impl LeaseKeepAlive {
    /// The lease this stream renews.
    pub fn id(&self) -> LeaseId {
        self.id
    }

    /// Sends one renewal request.
    pub async fn send(&mut self) -> Result<()> {
        self.keeper
            .keep_alive()
            .await
            .map_err(|err| classify("lease_keep_alive", "", Some(self.id), err))
    }

    /// Reads the next answer; `None` when the stream ended. A `ttl <= 0` answer means the lease
    /// is gone: etcd-client reports it as a normal answer.
    ///
    /// # Cancel safety
    /// Cancel-safe: a cancelled call loses no answer.
    pub async fn next(&mut self) -> Result<Option<KeepAliveResponse>> {
        match self.stream.message().await {
            Ok(Some(response)) => Ok(Some(KeepAliveResponse {
                id: response.id(),
                ttl: response.ttl(),
            })),
            Ok(None) => Ok(None),
            Err(err) => Err(classify("lease_keep_alive", "", Some(self.id), err)),
        }
    }
}

/// A watch stream exactly as etcd delivers it: no resume, no progress requests of its own.
pub struct RawWatch {
    stream: etcd_client::WatchStream,
    endpoints: String,
}

impl RawWatch {
    /// Reads the next response; `None` when the stream ended.
    ///
    /// # Cancel safety
    /// Cancel-safe: a cancelled call loses no response.
    pub async fn next(&mut self) -> Result<Option<WatchResponse>> {
        match self.stream.message().await {
            Ok(Some(response)) => Ok(Some(convert_watch_response(response))),
            Ok(None) => Ok(None),
            Err(err) => Err(classify("watch", &self.endpoints, None, err)),
        }
    }

    /// Asks etcd for a progress notification (answered with the current revision).
    pub async fn request_progress(&mut self) -> Result<()> {
        self.stream
            .request_progress()
            .await
            .map_err(|err| classify("watch_progress", &self.endpoints, None, err))
    }
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Revision {
    header.map(|header| header.revision()).unwrap_or(0)
}

fn convert_kv(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: kv.key().to_vec(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: kv.lease(),
    }
}

fn convert_get(response: etcd_client::GetResponse) -> GetResponse {
    GetResponse {
        revision: header_revision(response.header()),
        kvs: response.kvs().iter().map(convert_kv).collect(),
        more: response.more(),
        count: response.count(),
    }
}

fn get_options(options: &GetOptions) -> etcd_client::GetOptions {
    let mut out = etcd_client::GetOptions::new();
    if options.prefix {
        out = out.with_prefix();
    }
    if options.limit > 0 {
        out = out.with_limit(options.limit);
    }
    if options.revision > 0 {
        out = out.with_revision(options.revision);
    }
    if options.keys_only {
        out = out.with_keys_only();
    }
    if options.count_only {
        out = out.with_count_only();
    }
    if let Some((target, order)) = options.sort {
        let target = match target {
            SortTarget::Key => etcd_client::SortTarget::Key,
            SortTarget::Version => etcd_client::SortTarget::Version,
            SortTarget::Create => etcd_client::SortTarget::Create,
            SortTarget::Mod => etcd_client::SortTarget::Mod,
            SortTarget::Value => etcd_client::SortTarget::Value,
        };
        let order = match order {
            SortOrder::Ascend => etcd_client::SortOrder::Ascend,
            SortOrder::Descend => etcd_client::SortOrder::Descend,
        };
        out = out.with_sort(target, order);
    }
    if options.max_create_revision > 0 {
        out = out.with_max_create_revision(options.max_create_revision);
    }
    out
}

fn compare_op(op: CompareOp) -> etcd_client::CompareOp {
    match op {
        CompareOp::Equal => etcd_client::CompareOp::Equal,
        CompareOp::NotEqual => etcd_client::CompareOp::NotEqual,
        CompareOp::Greater => etcd_client::CompareOp::Greater,
        CompareOp::Less => etcd_client::CompareOp::Less,
    }
}

fn convert_txn(txn: Txn) -> etcd_client::Txn {
    let compares: Vec<etcd_client::Compare> = txn
        .compares
        .into_iter()
        .map(|compare| match compare {
            Compare::Value { key, op, value } => {
                etcd_client::Compare::value(key, compare_op(op), value)
            }
            Compare::CreateRevision { key, op, revision } => {
                etcd_client::Compare::create_revision(key, compare_op(op), revision)
            }
            Compare::ModRevision { key, op, revision } => {
                etcd_client::Compare::mod_revision(key, compare_op(op), revision)
            }
            Compare::Version { key, op, version } => {
                etcd_client::Compare::version(key, compare_op(op), version)
            }
        })
        .collect();
    let ops = |ops: Vec<TxnOp>| -> Vec<etcd_client::TxnOp> {
        ops.into_iter()
            .map(|op| match op {
                TxnOp::Put { key, value, lease } => {
                    let options =
                        (lease != 0).then(|| etcd_client::PutOptions::new().with_lease(lease));
                    etcd_client::TxnOp::put(key, value, options)
                }
                TxnOp::Delete { key, prefix } => etcd_client::TxnOp::delete(
                    key,
                    prefix.then(|| etcd_client::DeleteOptions::new().with_prefix()),
                ),
                TxnOp::Get { key, options } => {
                    etcd_client::TxnOp::get(key, Some(get_options(&options)))
                }
            })
            .collect()
    };
    etcd_client::Txn::new()
        .when(compares)
        .and_then(ops(txn.success))
        .or_else(ops(txn.failure))
}

fn convert_op_response(response: etcd_client::TxnOpResponse) -> TxnOpResponse {
    match response {
        etcd_client::TxnOpResponse::Put(_) => TxnOpResponse::Put,
        etcd_client::TxnOpResponse::Delete(delete) => TxnOpResponse::Delete {
            deleted: delete.deleted(),
        },
        etcd_client::TxnOpResponse::Get(get) => TxnOpResponse::Get(convert_get(get)),
        // We never send nested transactions.
        etcd_client::TxnOpResponse::Txn(_) => TxnOpResponse::Put,
    }
}

fn convert_watch_response(response: etcd_client::WatchResponse) -> WatchResponse {
    let events = response
        .events()
        .iter()
        .filter_map(|event| {
            // Read the raw type: `Event::event_type` panics on a value it does not know.
            let kind = match event.0.r#type {
                0 => EventKind::Put,
                1 => EventKind::Delete,
                other => {
                    tracing::warn!(event_type = other, "ignoring a watch event of unknown type");
                    return None;
                }
            };
            let kv = event.kv().map(convert_kv)?;
            Some(Event {
                kind,
                kv,
                prev_kv: event.prev_kv().map(convert_kv),
            })
        })
        .collect();
    WatchResponse {
        revision: header_revision(response.header()),
        watch_id: response.watch_id(),
        created: response.created(),
        canceled: response.canceled(),
        compact_revision: response.compact_revision(),
        cancel_reason: response.cancel_reason().to_owned(),
        events,
    }
}

#[cfg(test)]
mod tls_files_tests {
    use super::TlsConfig;
    use crate::Error;

    fn refusal(ca: &str, cert: &str, key: &str) -> String {
        match TlsConfig::from_files(ca, cert, key) {
            Err(err @ Error::Credentials { .. }) => err.to_string(),
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn an_upstreams_tls_files_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("ca.pem");
        std::fs::write(
            &pem,
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let pem = pem.to_str().unwrap();
        let not_pem = not_pem.to_str().unwrap();
        let missing = dir.path().join("missing.pem");
        let missing = missing.to_str().unwrap();

        assert_eq!(TlsConfig::from_files("", "", "").unwrap(), None);
        let tls = TlsConfig::from_files(pem, pem, pem).unwrap().unwrap();
        assert!(tls.identity.is_some());
        assert_eq!(
            TlsConfig::from_files(pem, "", "")
                .unwrap()
                .unwrap()
                .identity,
            None
        );
        assert!(refusal(pem, pem, "").contains("cert-path and key-path go together"));
        assert!(refusal("", pem, pem).contains("needs ca-path"));
        let message = refusal(missing, "", "");
        assert!(
            message.contains("ca-path") && message.contains(missing),
            "{message}"
        );
        let message = refusal(pem, not_pem, pem);
        assert!(
            message.contains("cert-path") && message.contains("no PEM block"),
            "{message}"
        );
    }
}
