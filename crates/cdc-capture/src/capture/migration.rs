//! The meta-version gate (docs/etcd-keys.md): the owner's migration and the processors' wait.

use super::*;

impl Capture {
    /// Reads the meta version and applies the gate both roles share (one parser,
    /// [`CdcEtcdClient::parse_meta_version`], so the owner and the processors accept and refuse
    /// the same values): the key's current value, if any, and whether it is the version this
    /// binary writes. A newer version is [`Error::MetaVersionTooNew`]; a value that is not a
    /// decimal number, or a version this binary does not know (`0`), is
    /// [`Error::MetaVersionUnknown`].
    async fn read_meta_version(
        &self,
        cancel: &CancellationToken,
    ) -> Result<(Option<cdc_etcd::KeyValue>, MetaVersion)> {
        let version_key = key::meta_version_key(&self.config.cluster_id);
        let response = self
            .etcd
            .retrying()
            .get(version_key.clone(), GetOptions::default(), cancel)
            .await?;
        let Some(kv) = response.kvs.into_iter().next() else {
            return Ok((None, MetaVersion::Absent));
        };
        let unknown = || Error::MetaVersionUnknown {
            key: version_key.clone(),
            found: String::from_utf8_lossy(&kv.value).into_owned(),
            supported: cdc_etcd::META_VERSION,
        };
        let version = match CdcEtcdClient::parse_meta_version(&version_key, &kv.value) {
            Ok(version) => version,
            Err(cdc_etcd::CdcError::Etcd(cdc_etcd::Error::InvalidValue { .. })) => {
                return Err(unknown());
            }
            Err(other) => return Err(other.into()),
        };
        match version.cmp(&cdc_etcd::META_VERSION) {
            std::cmp::Ordering::Equal => Ok((Some(kv), MetaVersion::Current)),
            std::cmp::Ordering::Greater => Err(Error::MetaVersionTooNew {
                found: version,
                supported: cdc_etcd::META_VERSION,
            }),
            std::cmp::Ordering::Less => Err(unknown()),
        }
    }

    /// The first key that shows metadata written without a meta version: legacy (pre-v6.2)
    /// changefeed data under `/tidb/cdc/changefeed/info` or `/tidb/cdc/job`, which only the
    /// default cluster would have inherited, or changefeed data in this cluster's own prefix.
    async fn unversioned_data(&self, cancel: &CancellationToken) -> Result<Option<Error>> {
        let first_key = |prefix: String| async move {
            let options = GetOptions {
                limit: 1,
                keys_only: true,
                ..GetOptions::prefix()
            };
            let response = self
                .etcd
                .retrying()
                .get(key::prefix_with_boundary(&prefix), options, cancel)
                .await?;
            Ok::<_, Error>(response.kvs.into_iter().next().map(|kv| kv.key_lossy()))
        };
        if self.config.cluster_id == DEFAULT_CLUSTER_ID {
            // The changefeed prefixes of the pre-v6.2 layout (`key::LEGACY_PREFIXES`), which
            // TiCDC's migration (`pkg/migrate/migrate.go` in pingcap/tiflow) moves.
            for prefix in ["/tidb/cdc/changefeed/info", "/tidb/cdc/job"] {
                if let Some(key) = first_key(prefix.to_owned()).await? {
                    return Ok(Some(Error::LegacyMetadata { key }));
                }
            }
        }
        let options = GetOptions {
            keys_only: true,
            ..GetOptions::prefix()
        };
        let response = self
            .etcd
            .retrying()
            .get(
                key::prefix_with_boundary(&key::base_key(&self.config.cluster_id)),
                options,
                cancel,
            )
            .await?;
        let changefeed_data = response.kvs.into_iter().find(|kv| {
            let Ok(parsed) = key::CdcKey::parse_bytes(&self.config.cluster_id, &kv.key) else {
                // A key this layout does not know is no changefeed data, and not ours to judge.
                return false;
            };
            matches!(
                parsed.kind,
                key::CdcKeyKind::ChangefeedInfo { .. }
                    | key::CdcKeyKind::ChangefeedStatus { .. }
                    | key::CdcKeyKind::TaskPosition { .. }
            )
        });
        Ok(changefeed_data.map(|kv| Error::UnversionedMetadata {
            key: kv.key_lossy(),
        }))
    }

    /// The owner's side of the meta-version gate (docs/etcd-keys.md; no legacy data to move).
    /// The current version passes; a newer or unknown one is refused and left as it is. An
    /// absent version is written (version 1, and the default upstream info unless one is
    /// there) in one transaction fenced by the owner key, but only when the cluster holds no
    /// changefeed data: data without a version is legacy or foreign, and refused with an error
    /// naming its key.
    pub(super) async fn migrate(
        &self,
        fence: &OwnerFence,
        cancel: &CancellationToken,
    ) -> Result<()> {
        for _ in 0..MIGRATE_ATTEMPTS {
            let (current, version) = self.read_meta_version(cancel).await?;
            if version == MetaVersion::Current {
                self.migrate_done.store(true, Ordering::SeqCst);
                return Ok(());
            }
            if let Some(refusal) = self.unversioned_data(cancel).await? {
                return Err(refusal);
            }
            if self.write_meta_version(fence, current, cancel).await? {
                info!(
                    version = cdc_etcd::META_VERSION,
                    "meta version and default upstream written"
                );
                self.migrate_done.store(true, Ordering::SeqCst);
                return Ok(());
            }
            // Another owner migrated meanwhile, or someone wrote the upstream, or we lost the
            // ownership: look again.
            let owner_key = self
                .etcd
                .retrying()
                .get(fence.key.clone(), GetOptions::default(), cancel)
                .await?;
            let still_owner = owner_key
                .kvs
                .first()
                .is_some_and(|kv| kv.create_revision == fence.create_revision);
            if !still_owner {
                return Err(Error::NotOwner);
            }
            info!("the meta version or the upstream changed during the migration, again");
        }
        Err(Error::DeadlineExceeded {
            op: "write the meta version",
        })
    }

    /// Writes the meta version (and the default upstream info unless one is there) in one
    /// transaction fenced by the owner key, on condition that the version key is still
    /// `current` and the upstream key unchanged. Whether it committed.
    async fn write_meta_version(
        &self,
        fence: &OwnerFence,
        current: Option<cdc_etcd::KeyValue>,
        cancel: &CancellationToken,
    ) -> Result<bool> {
        let version_key = key::meta_version_key(&self.config.cluster_id);
        let upstream = default_upstream(&self.etcd, &self.config.endpoints().join(","));
        let upstream_key =
            key::upstream_key(&self.config.cluster_id, DEFAULT_NAMESPACE, upstream.id);
        let existing_upstream = self
            .etcd
            .retrying()
            .get(upstream_key.clone(), GetOptions::default(), cancel)
            .await?
            .kvs
            .into_iter()
            .next();
        let mut success = Vec::new();
        if existing_upstream.is_none() {
            success.push(TxnOp::Put {
                key: upstream_key.clone().into_bytes(),
                value: cdc_model::to_go_json(&upstream)?,
                lease: 0,
            });
        }
        success.push(TxnOp::Put {
            key: version_key.clone().into_bytes(),
            value: cdc_etcd::META_VERSION.to_string().into_bytes(),
            lease: 0,
        });
        let txn = Txn {
            compares: vec![
                fence.compare(),
                Compare::ModRevision {
                    key: version_key.into_bytes(),
                    op: CompareOp::Equal,
                    revision: current.as_ref().map_or(0, |kv| kv.mod_revision),
                },
                Compare::ModRevision {
                    key: upstream_key.into_bytes(),
                    op: CompareOp::Equal,
                    revision: existing_upstream.as_ref().map_or(0, |kv| kv.mod_revision),
                },
            ],
            success,
            failure: vec![],
        };
        // Logged like the owner worker's transactions, for the fencing oracle of `cdc-oracle`
        // (`docs/guarantees.md`, "The chaos oracles"). A refusal is not logged: an earlier
        // attempt of the retried call may have committed.
        let owner_key = String::from_utf8_lossy(&fence.key);
        let n_keys = txn.success.len();
        info!(target: "cdc::owner_commit", outcome = "sending", %owner_key,
            owner_revision = fence.create_revision, keys = n_keys, "owner transaction");
        let response = self.etcd.retrying().txn(txn, cancel).await?;
        if response.succeeded {
            info!(target: "cdc::owner_commit", outcome = "committed", %owner_key,
                owner_revision = fence.create_revision, revision = response.revision,
                keys = n_keys, "owner transaction");
        }
        Ok(response.succeeded)
    }

    /// The processor's side of the meta-version gate: polls every second until the version is
    /// the current one (warning every 5 s). A version this binary does not know ends the wait
    /// with the owner's error. Every read is raced against the session's end, so a lease lost
    /// while etcd hangs surfaces as a suicide at once, not after the read's retries.
    pub(super) async fn wait_meta_version(
        &self,
        incarnation: &Incarnation,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let mut polls = 0_u32;
        loop {
            let read = tokio::select! {
                () = cancel.cancelled() => return Err(Error::Cancelled),
                () = incarnation.session_done.cancelled() => return Err(Error::Suicide),
                read = self.read_meta_version(cancel) => read,
            };
            match read {
                Ok((_, MetaVersion::Current)) => {
                    self.migrate_done.store(true, Ordering::SeqCst);
                    return Ok(());
                }
                Ok((_, MetaVersion::Absent)) => {
                    if polls % 5 == 4 {
                        warn!("waiting for the owner to write the meta version");
                    }
                }
                Err(Error::Etcd(cdc_etcd::Error::Cancelled)) => return Err(Error::Cancelled),
                Err(err @ (Error::MetaVersionTooNew { .. } | Error::MetaVersionUnknown { .. })) => {
                    return Err(err);
                }
                Err(err) => warn!(error = %ErrorReport(&err), "reading the meta version failed"),
            }
            polls = polls.saturating_add(1);
            tokio::select! {
                () = cancel.cancelled() => return Err(Error::Cancelled),
                () = incarnation.session_done.cancelled() => return Err(Error::Suicide),
                () = tokio::time::sleep(META_VERSION_POLL) => {}
            }
        }
    }
}

/// The meta version in etcd as the gate reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MetaVersion {
    /// No meta version key.
    Absent,
    /// The version this binary writes.
    Current,
}
