//! [`CdcEtcdClient`]: the TiCDC metadata operations of `pkg/etcd/etcd.go` on one cluster.
//!
//! Every operation goes through the [`RetryingClient`] (deletes are tried once), takes a
//! cancellation token, and decodes values with `cdc-model`; a value that does not decode is an
//! [`Error::Decode`] naming its key. Prefix reads and deletes use a `/` boundary, so cluster
//! `default` never touches the keys of `default-2`.

use std::collections::BTreeMap;

use cdc_model::{
    CaptureId, CaptureInfo, ChangeFeedId, ChangeFeedInfo, ChangeFeedStatus, DEFAULT_NAMESPACE,
    ErrorReport, RESERVED_CLUSTER_IDS, UpstreamId, UpstreamInfo,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::client::EtcdClient;
use crate::error::{CdcError as Error, CdcResult as Result};
use crate::retry::RetryingClient;
use crate::types::{
    Compare, CompareOp, GetOptions, GetResponse, KeyValue, LeaseId, Revision, SortOrder,
    SortTarget, Txn, TxnOp,
};
use cdc_model::key::{self, CdcKey};

/// The cluster whose keys [`CdcEtcdClient::check_multiple_cdc_cluster_exist`] accepts.
const DEFAULT_CLUSTER_ID: &str = "default";

/// The metadata layout version this port writes.
pub const META_VERSION: u64 = 1;

/// The TiCDC metadata of one cluster in etcd.
#[derive(Clone, Debug)]
pub struct CdcEtcdClient {
    retrying: RetryingClient,
    cluster_id: String,
    etcd_cluster_id: u64,
}

fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Result<T> {
    cdc_model::from_json(&kv.value).map_err(|source| Error::Decode {
        key: kv.key_lossy(),
        source,
    })
}

fn encode<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<Vec<u8>> {
    cdc_model::to_go_json(value).map_err(|source| Error::Encode {
        key: key.to_owned(),
        source,
    })
}

fn changefeed_not_exists(changefeed: &ChangeFeedId) -> Error {
    Error::ChangeFeedNotExists {
        changefeed: changefeed.to_string(),
    }
}

fn first_created() -> GetOptions {
    GetOptions {
        prefix: true,
        limit: 1,
        sort: Some((SortTarget::Create, SortOrder::Ascend)),
        ..GetOptions::default()
    }
}

fn mod_revision_is(key: &str, revision: Revision) -> Compare {
    Compare::ModRevision {
        key: key.as_bytes().to_vec(),
        op: CompareOp::Equal,
        revision,
    }
}

fn put(key: &str, value: Vec<u8>) -> TxnOp {
    TxnOp::Put {
        key: key.as_bytes().to_vec(),
        value,
        lease: 0,
    }
}

impl CdcEtcdClient {
    /// Wraps `client` for cluster `cluster_id`, reading the etcd cluster ID (MemberList) under
    /// the retry deadline.
    pub async fn new(client: EtcdClient, cluster_id: &str) -> Result<CdcEtcdClient> {
        Box::pin(CdcEtcdClient::with_retrying(
            RetryingClient::new(client),
            cluster_id,
        ))
        .await
    }

    /// Like [`CdcEtcdClient::new`] with a given retry policy.
    pub async fn with_retrying(
        retrying: RetryingClient,
        cluster_id: &str,
    ) -> Result<CdcEtcdClient> {
        let client = retrying.client().clone();
        let never = CancellationToken::new();
        let etcd_cluster_id = crate::retry::retry(
            "member_list",
            client.endpoints(),
            retrying.policy(),
            crate::retry::is_retryable_read_or_put,
            &never,
            || client.cluster_id(),
        )
        .await?;
        Ok(CdcEtcdClient {
            retrying,
            cluster_id: cluster_id.to_owned(),
            etcd_cluster_id,
        })
    }

    /// The single-attempt client.
    pub fn client(&self) -> &EtcdClient {
        self.retrying.client()
    }

    /// The retrying client.
    pub fn retrying(&self) -> &RetryingClient {
        &self.retrying
    }

    /// The TiCDC cluster ID.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// The etcd cluster ID (from the MemberList response header).
    pub fn etcd_cluster_id(&self) -> u64 {
        self.etcd_cluster_id
    }

    /// The GC service ID, `ticdc-<C>-<etcdClusterID>`.
    pub fn gc_service_id(&self) -> String {
        format!("ticdc-{}-{}", self.cluster_id, self.etcd_cluster_id)
    }

    async fn get_one(&self, key: &str, cancel: &CancellationToken) -> Result<Option<KeyValue>> {
        let response = self
            .retrying
            .get(key, GetOptions::default(), cancel)
            .await?;
        Ok(response.kvs.into_iter().next())
    }

    /// Reads and decodes `key`, with its mod revision; `missing()` when the key is absent.
    async fn get_decoded<T: DeserializeOwned>(
        &self,
        key: &str,
        missing: impl FnOnce() -> Error,
        cancel: &CancellationToken,
    ) -> Result<(T, Revision)> {
        let kv = self.get_one(key, cancel).await?.ok_or_else(missing)?;
        Ok((decode(&kv)?, kv.mod_revision))
    }

    async fn get_prefix(&self, prefix: &str, cancel: &CancellationToken) -> Result<GetResponse> {
        self.retrying
            .get(
                key::prefix_with_boundary(prefix),
                GetOptions::prefix(),
                cancel,
            )
            .await
            .map_err(Error::from)
    }

    /// Every key of the cluster.
    pub async fn get_all_cdc_info(&self, cancel: &CancellationToken) -> Result<Vec<KeyValue>> {
        Ok(self
            .get_prefix(&key::base_key(&self.cluster_id), cancel)
            .await?
            .kvs)
    }

    /// Deletes every key of the cluster (one attempt).
    pub async fn clear_all_cdc_info(&self, cancel: &CancellationToken) -> Result<()> {
        let prefix = key::prefix_with_boundary(&key::base_key(&self.cluster_id));
        self.retrying.delete(prefix, true, cancel).await?;
        Ok(())
    }

    /// Every capture, with the revision of the read. Any undecodable capture fails the call.
    pub async fn get_captures(
        &self,
        cancel: &CancellationToken,
    ) -> Result<(Revision, Vec<CaptureInfo>)> {
        let response = self
            .get_prefix(&key::capture_prefix(&self.cluster_id), cancel)
            .await?;
        let captures = response
            .kvs
            .iter()
            .map(decode)
            .collect::<Result<Vec<CaptureInfo>>>()?;
        Ok((response.revision, captures))
    }

    /// One capture; [`Error::CaptureNotExist`] when its key is missing.
    pub async fn get_capture_info(
        &self,
        capture_id: &str,
        cancel: &CancellationToken,
    ) -> Result<CaptureInfo> {
        let key = key::capture_key(&self.cluster_id, capture_id);
        let missing = || Error::CaptureNotExist {
            capture_id: capture_id.to_owned(),
        };
        let (info, _) = self.get_decoded(&key, missing, cancel).await?;
        Ok(info)
    }

    /// The lease of every capture key, by capture ID.
    pub async fn get_capture_leases(
        &self,
        cancel: &CancellationToken,
    ) -> Result<BTreeMap<CaptureId, LeaseId>> {
        let prefix = key::prefix_with_boundary(&key::capture_prefix(&self.cluster_id));
        let options = GetOptions {
            keys_only: true,
            ..GetOptions::prefix()
        };
        let response = self.retrying.get(prefix.clone(), options, cancel).await?;
        let mut leases = BTreeMap::new();
        for kv in response.kvs {
            let key = kv.key_lossy();
            let capture_id = key.strip_prefix(&prefix).unwrap_or(&key);
            leases.insert(capture_id.to_owned(), kv.lease);
        }
        Ok(leases)
    }

    /// Revokes every lease of `leases`; a lease that is already gone is fine.
    pub async fn revoke_all_leases(
        &self,
        leases: &BTreeMap<CaptureId, LeaseId>,
        cancel: &CancellationToken,
    ) -> Result<()> {
        for (capture_id, &lease_id) in leases {
            match self.retrying.lease_revoke(lease_id, cancel).await {
                Ok(()) | Err(crate::Error::LeaseNotFound { .. }) => {}
                Err(err) => {
                    tracing::warn!(%capture_id, lease_id, error = %ErrorReport(&err), "cannot revoke a capture lease");
                    return Err(err.into());
                }
            }
        }
        Ok(())
    }

    /// Writes a capture's info, attached to its lease.
    pub async fn put_capture_info(
        &self,
        info: &CaptureInfo,
        lease: LeaseId,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let key = key::capture_key(&self.cluster_id, &info.id);
        let value = encode(&key, info)?;
        self.retrying.put(key, value, lease, cancel).await?;
        Ok(())
    }

    /// Deletes a capture's key (one attempt), then its task positions in the default namespace.
    pub async fn delete_capture_info(
        &self,
        capture_id: &str,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let key = key::capture_key(&self.cluster_id, capture_id);
        self.retrying.delete(key, false, cancel).await?;
        let positions = key::prefix_with_boundary(&key::task_position_prefix(
            &self.cluster_id,
            DEFAULT_NAMESPACE,
            capture_id,
        ));
        if let Err(err) = self.retrying.delete(positions, true, cancel).await {
            tracing::warn!(%capture_id, error = %ErrorReport(&err), "cannot delete the task positions of a capture");
            return Err(err.into());
        }
        Ok(())
    }

    async fn first_owner(&self, cancel: &CancellationToken) -> Result<Option<KeyValue>> {
        let prefix = key::prefix_with_boundary(&key::owner_prefix(&self.cluster_id));
        let response = self.retrying.get(prefix, first_created(), cancel).await?;
        Ok(response.kvs.into_iter().next())
    }

    /// The owner's capture ID: the value of the oldest owner key; [`Error::ElectionNoLeader`]
    /// when there is none.
    pub async fn get_owner_id(&self, cancel: &CancellationToken) -> Result<CaptureId> {
        match self.first_owner(cancel).await? {
            Some(kv) => Ok(String::from_utf8_lossy(&kv.value).into_owned()),
            None => Err(Error::ElectionNoLeader),
        }
    }

    /// The owner revision (the owner key's mod revision) when `capture_id` is the owner;
    /// [`Error::OwnerNotFound`] without an owner and [`Error::NotOwner`] for another capture.
    pub async fn get_owner_revision(
        &self,
        capture_id: &str,
        cancel: &CancellationToken,
    ) -> Result<Revision> {
        match self.first_owner(cancel).await? {
            None => Err(Error::OwnerNotFound),
            Some(kv) if kv.value != capture_id.as_bytes() => Err(Error::NotOwner),
            Some(kv) => Ok(kv.mod_revision),
        }
    }

    /// The raw info key-values of the default namespace's changefeeds, with the read revision.
    pub async fn get_changefeeds(
        &self,
        cancel: &CancellationToken,
    ) -> Result<(Revision, BTreeMap<ChangeFeedId, KeyValue>)> {
        let prefix = key::changefeed_info_prefix(&self.cluster_id, DEFAULT_NAMESPACE);
        let response = self.get_prefix(&prefix, cancel).await?;
        let mut changefeeds = BTreeMap::new();
        for kv in response.kvs {
            let parsed = CdcKey::parse_bytes(&self.cluster_id, &kv.key)?;
            let changefeed = parsed.changefeed().ok_or_else(|| Error::InvalidEtcdKey {
                key: kv.key_lossy(),
                reason: "not a changefeed info key",
            })?;
            changefeeds.insert(changefeed, kv);
        }
        Ok((response.revision, changefeeds))
    }

    /// The decoded infos of the default namespace's changefeeds.
    pub async fn get_all_changefeed_info(
        &self,
        cancel: &CancellationToken,
    ) -> Result<BTreeMap<ChangeFeedId, ChangeFeedInfo>> {
        let (_, changefeeds) = self.get_changefeeds(cancel).await?;
        changefeeds
            .into_iter()
            .map(|(changefeed, kv)| Ok((changefeed, decode(&kv)?)))
            .collect()
    }

    /// A changefeed's info; [`Error::ChangeFeedNotExists`] when missing.
    pub async fn get_changefeed_info(
        &self,
        changefeed: &ChangeFeedId,
        cancel: &CancellationToken,
    ) -> Result<ChangeFeedInfo> {
        let key = key::changefeed_info_key(&self.cluster_id, changefeed);
        let (info, _) = self
            .get_decoded(&key, || changefeed_not_exists(changefeed), cancel)
            .await?;
        Ok(info)
    }

    /// A changefeed's status and its mod revision; [`Error::ChangeFeedNotExists`] when missing.
    pub async fn get_changefeed_status(
        &self,
        changefeed: &ChangeFeedId,
        cancel: &CancellationToken,
    ) -> Result<(ChangeFeedStatus, Revision)> {
        let key = key::changefeed_status_key(&self.cluster_id, changefeed);
        self.get_decoded(&key, || changefeed_not_exists(changefeed), cancel)
            .await
    }

    /// Writes a changefeed's info unconditionally.
    pub async fn save_changefeed_info(
        &self,
        info: &ChangeFeedInfo,
        changefeed: &ChangeFeedId,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let key = key::changefeed_info_key(&self.cluster_id, changefeed);
        let value = encode(&key, info)?;
        self.retrying.put(key, value, 0, cancel).await?;
        Ok(())
    }

    /// Deletes a changefeed's info (one attempt).
    pub async fn delete_changefeed_info(
        &self,
        changefeed: &ChangeFeedId,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let key = key::changefeed_info_key(&self.cluster_id, changefeed);
        self.retrying.delete(key, false, cancel).await?;
        Ok(())
    }

    /// An upstream's info; [`Error::UpstreamNotFound`] when missing.
    pub async fn get_upstream_info(
        &self,
        upstream_id: UpstreamId,
        namespace: &str,
        cancel: &CancellationToken,
    ) -> Result<UpstreamInfo> {
        let key = key::upstream_key(&self.cluster_id, namespace, upstream_id);
        let missing = || Error::UpstreamNotFound {
            namespace: namespace.to_owned(),
            upstream_id,
        };
        let (info, _) = self.get_decoded(&key, missing, cancel).await?;
        Ok(info)
    }

    /// Creates a changefeed and saves its upstream in one transaction that requires the info
    /// and status keys to be absent; [`Error::MetaOpFailed`] when it does not apply.
    pub async fn create_changefeed_info(
        &self,
        upstream: &UpstreamInfo,
        info: &ChangeFeedInfo,
        changefeed: &ChangeFeedId,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let info_key = key::changefeed_info_key(&self.cluster_id, changefeed);
        let status_key = key::changefeed_status_key(&self.cluster_id, changefeed);
        let compares = vec![
            mod_revision_is(&info_key, 0),
            mod_revision_is(&status_key, 0),
        ];
        self.save_changefeed_and_upstream("Create", upstream, info, changefeed, compares, cancel)
            .await
    }

    /// Updates a changefeed's info and its upstream in one transaction that requires the info
    /// and status keys to be unchanged since read; [`Error::ChangeFeedNotExists`] when the info
    /// is missing, [`Error::MetaOpFailed`] when the transaction does not apply.
    pub async fn update_changefeed_and_upstream(
        &self,
        upstream: &UpstreamInfo,
        info: &ChangeFeedInfo,
        changefeed: &ChangeFeedId,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let info_key = key::changefeed_info_key(&self.cluster_id, changefeed);
        let status_key = key::changefeed_status_key(&self.cluster_id, changefeed);
        let info_revision = self
            .get_one(&info_key, cancel)
            .await?
            .ok_or_else(|| changefeed_not_exists(changefeed))?
            .mod_revision;
        let status_revision = self
            .get_one(&status_key, cancel)
            .await?
            .map_or(0, |kv| kv.mod_revision);
        let compares = vec![
            mod_revision_is(&info_key, info_revision),
            mod_revision_is(&status_key, status_revision),
        ];
        self.save_changefeed_and_upstream("Update", upstream, info, changefeed, compares, cancel)
            .await
    }

    async fn save_changefeed_and_upstream(
        &self,
        op: &'static str,
        upstream: &UpstreamInfo,
        info: &ChangeFeedInfo,
        changefeed: &ChangeFeedId,
        mut compares: Vec<Compare>,
        cancel: &CancellationToken,
    ) -> Result<()> {
        if info.upstream_id != upstream.id {
            return Err(Error::UpstreamMissMatch {
                changefeed_upstream: info.upstream_id,
                upstream: upstream.id,
            });
        }
        let upstream_key = key::upstream_key(&self.cluster_id, &changefeed.namespace, upstream.id);
        let upstream_value = encode(&upstream_key, upstream)?;
        let mut success = Vec::new();
        match self.get_one(&upstream_key, cancel).await? {
            None => {
                compares.push(mod_revision_is(&upstream_key, 0));
                success.push(put(&upstream_key, upstream_value));
            }
            Some(kv) => {
                compares.push(mod_revision_is(&upstream_key, kv.mod_revision));
                if kv.value != upstream_value {
                    success.push(put(&upstream_key, upstream_value));
                }
            }
        }
        let info_key = key::changefeed_info_key(&self.cluster_id, changefeed);
        success.push(put(&info_key, encode(&info_key, info)?));
        let txn = Txn {
            compares,
            success,
            failure: Vec::new(),
        };
        let response = self.retrying.txn(txn, cancel).await?;
        if !response.succeeded {
            return Err(Error::MetaOpFailed {
                op,
                changefeed: changefeed.to_string(),
            });
        }
        Ok(())
    }

    /// Fails with [`Error::MultipleCdcClustersExist`] when etcd holds keys of a TiCDC cluster
    /// other than `default` (migration backups and the pre-v6.2 layout are not clusters).
    pub async fn check_multiple_cdc_cluster_exist(&self, cancel: &CancellationToken) -> Result<()> {
        let options = GetOptions {
            keys_only: true,
            ..GetOptions::prefix()
        };
        let root = key::prefix_with_boundary(key::ROOT);
        let response = self.retrying.get(root.clone(), options, cancel).await?;
        for kv in response.kvs {
            let key = kv.key_lossy();
            let rest = key.strip_prefix(&root).unwrap_or(&key);
            // A bare `/tidb/cdc/<x>` key belongs to `<x>` as much as `/tidb/cdc/<x>/...` does.
            let first_segment = rest.split('/').next().unwrap_or(rest);
            if first_segment == DEFAULT_CLUSTER_ID
                || first_segment == key::BACKUP_SEGMENT
                || RESERVED_CLUSTER_IDS.contains(&first_segment)
            {
                continue;
            }
            return Err(Error::MultipleCdcClustersExist { key });
        }
        Ok(())
    }

    /// The metadata layout version; `None` when the key is missing (a cluster from before
    /// version 1, or a new one).
    pub async fn get_meta_version(&self, cancel: &CancellationToken) -> Result<Option<u64>> {
        let key = key::meta_version_key(&self.cluster_id);
        let Some(kv) = self.get_one(&key, cancel).await? else {
            return Ok(None);
        };
        CdcEtcdClient::parse_meta_version(&key, &kv.value).map(Some)
    }

    /// Parses the value of the meta version `key`: ASCII decimal digits only, as TiCDC writes
    /// it, so `"1\n"` or `" 1"` is no version (TiCDC's `strconv.ParseInt` in `pkg/etcd/etcd.go`
    /// of pingcap/tiflow refuses whitespace too). The one parser of the owner's migration and
    /// the processors' wait, so that both accept and refuse the same values.
    /// [`crate::Error::InvalidValue`] when it does not parse.
    pub fn parse_meta_version(key: &str, value: &[u8]) -> Result<u64> {
        std::str::from_utf8(value)
            .ok()
            .filter(|text| !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()))
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| {
                Error::Etcd(crate::Error::InvalidValue {
                    key: key.to_owned(),
                    reason: format!(
                        "meta version {:?} is not a decimal number",
                        String::from_utf8_lossy(value)
                    ),
                })
            })
    }

    /// Writes the metadata layout version.
    pub async fn put_meta_version(&self, version: u64, cancel: &CancellationToken) -> Result<()> {
        let key = key::meta_version_key(&self.cluster_id);
        self.retrying
            .put(key, version.to_string(), 0, cancel)
            .await?;
        Ok(())
    }
}
