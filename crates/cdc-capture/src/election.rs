//! The owner election of §3.2 on the capture's lease, and the trait the capture campaigns
//! through (tests inject doubles).

use std::sync::Mutex;
use std::time::Duration;

use cdc_etcd::{
    Compare, CompareOp, EtcdClient, EventKind, GetOptions, LeaseId, Revision, SortOrder,
    SortTarget, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// An election the capture campaigns in.
pub trait Election: Send + Sync {
    /// Blocks until this candidate is the leader, with `value` as the leader's value.
    fn campaign<'a>(
        &'a self,
        value: &'a str,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<()>>;
    /// Gives the leadership up; a no-op when not leader.
    fn resign(&self) -> BoxFuture<'_, Result<()>>;
}

/// The etcd election: key `<prefix>/<leaseHex>`, lowest create revision leads.
#[derive(Debug)]
pub struct EtcdElection {
    client: EtcdClient,
    prefix: String,
    key: String,
    lease_id: LeaseId,
    /// The create revision of our key while we lead.
    leader_revision: Mutex<Option<Revision>>,
}

impl EtcdElection {
    /// An election under `prefix` (without trailing slash) for the session's lease.
    pub fn new(client: EtcdClient, prefix: &str, lease_id: LeaseId) -> Self {
        EtcdElection {
            client,
            prefix: prefix.to_owned(),
            key: format!("{prefix}/{lease_id:x}"),
            lease_id,
            leader_revision: Mutex::new(None),
        }
    }

    /// Our candidate key.
    pub fn key(&self) -> &str {
        &self.key
    }

    async fn campaign_inner(&self, value: &str, cancel: &CancellationToken) -> Result<()> {
        let key = self.key.as_bytes().to_vec();
        let response = self
            .client
            .txn(Txn {
                compares: vec![Compare::CreateRevision {
                    key: key.clone(),
                    op: CompareOp::Equal,
                    revision: 0,
                }],
                success: vec![TxnOp::Put {
                    key: key.clone(),
                    value: value.as_bytes().to_vec(),
                    lease: self.lease_id,
                }],
                failure: vec![TxnOp::Get {
                    key: key.clone(),
                    options: GetOptions::default(),
                }],
            })
            .await?;
        let mut my_revision = response.revision;
        if !response.succeeded {
            let existing = response.responses.into_iter().find_map(|op| match op {
                TxnOpResponse::Get(get) => get.kvs.into_iter().next(),
                _ => None,
            });
            if let Some(existing) = existing {
                my_revision = existing.create_revision;
                if existing.value != value.as_bytes() {
                    let proclaimed = self
                        .client
                        .txn(Txn {
                            compares: vec![Compare::CreateRevision {
                                key: key.clone(),
                                op: CompareOp::Equal,
                                revision: my_revision,
                            }],
                            success: vec![TxnOp::Put {
                                key: key.clone(),
                                value: value.as_bytes().to_vec(),
                                lease: self.lease_id,
                            }],
                            failure: vec![],
                        })
                        .await?;
                    if !proclaimed.succeeded {
                        return Err(Error::NotOwner);
                    }
                }
            }
        }
        let waiting = self.wait_predecessors(my_revision);
        let waited = tokio::select! {
            () = cancel.cancelled() => Err(Error::Cancelled),
            result = waiting => result,
        };
        match waited {
            Ok(()) => {
                *self.leader_revision.lock().expect("never poisoned") = Some(my_revision);
                Ok(())
            }
            Err(Error::Cancelled) => {
                // Give our place up with the client's own deadline, as etcd's election does.
                let _ = self.delete_own_key(my_revision).await;
                Err(Error::Cancelled)
            }
            Err(err) => Err(err),
        }
    }

    async fn wait_predecessors(&self, my_revision: Revision) -> Result<()> {
        let prefix = format!("{}/", self.prefix);
        loop {
            let predecessors = self
                .client
                .get(
                    prefix.as_bytes().to_vec(),
                    GetOptions {
                        prefix: true,
                        limit: 1,
                        sort: Some((SortTarget::Create, SortOrder::Descend)),
                        max_create_revision: my_revision - 1,
                        ..GetOptions::default()
                    },
                )
                .await?;
            let Some(predecessor) = predecessors.kvs.into_iter().next() else {
                return Ok(());
            };
            let mut watch = self
                .client
                .watch(
                    predecessor.key.clone(),
                    WatchOptions {
                        start_revision: predecessors.revision + 1,
                        ..WatchOptions::default()
                    },
                )
                .await?;
            'events: loop {
                let Some(response) = watch.next().await? else {
                    return Err(cdc_etcd::Error::StreamBroken {
                        op: "election watch",
                        message: "the watch ended".to_owned(),
                    }
                    .into());
                };
                if response.canceled {
                    return Err(cdc_etcd::Error::Compacted {
                        requested: predecessors.revision + 1,
                        compacted: response.compact_revision,
                    }
                    .into());
                }
                if response
                    .events
                    .iter()
                    .any(|event| event.kind == EventKind::Delete)
                {
                    break 'events;
                }
            }
        }
    }

    async fn delete_own_key(&self, my_revision: Revision) -> Result<()> {
        let key = self.key.as_bytes().to_vec();
        self.client
            .txn(Txn {
                compares: vec![Compare::CreateRevision {
                    key: key.clone(),
                    op: CompareOp::Equal,
                    revision: my_revision,
                }],
                success: vec![TxnOp::Delete { key, prefix: false }],
                failure: vec![],
            })
            .await?;
        Ok(())
    }
}

impl Election for EtcdElection {
    fn campaign<'a>(
        &'a self,
        value: &'a str,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.campaign_inner(value, cancel))
    }

    fn resign(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let leader_revision = *self.leader_revision.lock().expect("never poisoned");
            let Some(my_revision) = leader_revision else {
                return Ok(());
            };
            self.delete_own_key(my_revision).await?;
            *self.leader_revision.lock().expect("never poisoned") = None;
            Ok(())
        })
    }
}

/// The resign deadline of §6.4.
pub(crate) const RESIGN_TIMEOUT: Duration = Duration::from_secs(5);
