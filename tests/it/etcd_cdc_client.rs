//! `CdcEtcdClient` against a real etcd: TiCDC's `pkg/etcd/etcd_test.go` cases and bad data.

use std::collections::BTreeMap;

use cdc_etcd::testing::EtcdServer;
use cdc_etcd::{CdcError, CdcEtcdClient, Compare, CompareOp, EtcdClient, GetOptions, Txn, TxnOp};
use cdc_model::key::{self, CdcKey};
use cdc_model::{CaptureInfo, ChangeFeedId, ChangeFeedInfo, UpstreamInfo};
use tokio_util::sync::CancellationToken;

use crate::support::{etcd, key_exists};

async fn setup(cluster_id: &str) -> (EtcdServer, CdcEtcdClient) {
    let (server, raw) = etcd().await;
    let client = CdcEtcdClient::new(raw, cluster_id)
        .await
        .expect("create the CDC client");
    (server, client)
}

fn info(id: &ChangeFeedId, upstream_id: u64) -> ChangeFeedInfo {
    ChangeFeedInfo {
        upstream_id,
        namespace: id.namespace.clone(),
        changefeed_id: id.id.clone(),
        sink_uri: format!("blackhole://{}", id.id),
        sort_dir: "/old-dir".to_owned(),
        start_ts: 42,
        ..ChangeFeedInfo::default()
    }
}

/// Upstream 1.
fn upstream_1() -> UpstreamInfo {
    UpstreamInfo {
        id: 1,
        pd_endpoints: "http://127.0.0.1:2385".to_owned(),
        ..UpstreamInfo::default()
    }
}

/// Case 16: the default namespace's info keys, raw, and nothing after a clear.
#[tokio::test]
async fn get_changefeeds() {
    let (_server, client) = setup("default").await;
    let cancel = CancellationToken::new();
    let raw = client.client();
    for n_changefeeds in [0usize, 1, 3] {
        client.clear_all_cdc_info(&cancel).await.unwrap();
        let mut expected = BTreeMap::new();
        for n in 0..n_changefeeds {
            let id = ChangeFeedId::default_namespace(format!("cf-{n}"));
            let value = format!("value-{n}");
            raw.put(key::changefeed_info_key("default", &id), value.clone(), 0)
                .await
                .unwrap();
            expected.insert(id, value.into_bytes());
        }
        // Another namespace and another cluster are not listed.
        raw.put("/tidb/cdc/default/other/changefeed/info/x", "v", 0)
            .await
            .unwrap();
        raw.put("/tidb/cdc/default-2/default/changefeed/info/y", "v", 0)
            .await
            .unwrap();
        let (revision, changefeeds) = client.get_changefeeds(&cancel).await.unwrap();
        assert!(revision > 0);
        let got: BTreeMap<_, _> = changefeeds
            .into_iter()
            .map(|(id, kv)| (id, kv.value))
            .collect();
        assert_eq!(got, expected);
    }
    client.clear_all_cdc_info(&cancel).await.unwrap();
    assert!(client.get_changefeeds(&cancel).await.unwrap().1.is_empty());
    assert!(client.get_all_cdc_info(&cancel).await.unwrap().is_empty());
    // The clear stops at the cluster boundary.
    let other = raw
        .get("/tidb/cdc/default-2/", GetOptions::prefix())
        .await
        .unwrap();
    assert_eq!(other.kvs.len(), 1);
}

/// Cases 17 and 18: save, get, list, delete.
#[tokio::test]
async fn changefeed_info_operations() {
    let (_server, client) = setup("default").await;
    let cancel = CancellationToken::new();
    let first = ChangeFeedId::default_namespace("first");
    let second = ChangeFeedId::default_namespace("second");
    client
        .save_changefeed_info(&info(&first, 1), &first, &cancel)
        .await
        .unwrap();
    client
        .save_changefeed_info(&info(&second, 1), &second, &cancel)
        .await
        .unwrap();

    let got = client.get_changefeed_info(&first, &cancel).await.unwrap();
    assert_eq!(got, info(&first, 1));
    let all = client.get_all_changefeed_info(&cancel).await.unwrap();
    assert_eq!(all.len(), 2);
    for id in [&first, &second] {
        assert_eq!(all[id].sink_uri, format!("blackhole://{}", id.id));
        assert_eq!(all[id].sort_dir, "/old-dir");
    }

    client
        .delete_changefeed_info(&first, &cancel)
        .await
        .unwrap();
    let err = client
        .get_changefeed_info(&first, &cancel)
        .await
        .unwrap_err();
    assert!(matches!(err, CdcError::ChangeFeedNotExists { .. }), "{err}");
    assert!(err.to_string().contains("[CDC:ErrChangeFeedNotExists]"));
    let err = client
        .get_changefeed_status(&first, &cancel)
        .await
        .unwrap_err();
    assert!(matches!(err, CdcError::ChangeFeedNotExists { .. }), "{err}");
}

/// Case 19.
#[tokio::test]
async fn check_multiple_cdc_cluster_exist() {
    let (_server, client) = setup("default").await;
    let cancel = CancellationToken::new();
    let raw = client.client();
    raw.put("/tidb/cdc/default/default/changefeed/info/a", "v", 0)
        .await
        .unwrap();
    raw.put("/tidb/cdc/__backup__/1/tidb/cdc/job/a", "v", 0)
        .await
        .unwrap();
    for reserved in cdc_model::RESERVED_CLUSTER_IDS {
        raw.put(format!("/tidb/cdc/{reserved}/test-key"), "v", 0)
            .await
            .unwrap();
    }
    client
        .check_multiple_cdc_cluster_exist(&cancel)
        .await
        .unwrap();

    raw.put("/tidb/cdc/new-cluster/new-namespace/test-key", "v", 0)
        .await
        .unwrap();
    let err = client
        .check_multiple_cdc_cluster_exist(&cancel)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("ErrMultipleCDCClustersExist"),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("/tidb/cdc/new-cluster/new-namespace/test-key")
    );
}

/// Case 20, plus the upstream mismatch.
#[tokio::test]
async fn create_changefeed() {
    let (_server, client) = setup("default").await;
    let cancel = CancellationToken::new();
    let id = ChangeFeedId::new("test", "create-changefeed");
    let upstream = upstream_1();
    client
        .create_changefeed_info(&upstream, &info(&id, 1), &id, &cancel)
        .await
        .unwrap();
    let err = client
        .create_changefeed_info(&upstream, &info(&id, 1), &id, &cancel)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "[DFLOW:ErrMetaOpFailed]unexpected meta operation failure: Create changefeed test/create-changefeed"
    );
    assert_eq!(
        client.get_upstream_info(1, "test", &cancel).await.unwrap(),
        upstream
    );

    let other = ChangeFeedId::new("test", "other");
    let err = client
        .create_changefeed_info(&upstream, &info(&other, 2), &other, &cancel)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        CdcError::UpstreamMissMatch {
            changefeed_upstream: 2,
            upstream: 1
        }
    ));
    let err = client
        .get_upstream_info(2, "test", &cancel)
        .await
        .unwrap_err();
    assert!(
        matches!(err, CdcError::UpstreamNotFound { upstream_id: 2, .. }),
        "{err}"
    );
}

/// Case 21: an update writes the upstream and keeps the info; a missing info is reported.
#[tokio::test]
async fn update_changefeed_and_upstream() {
    let (_server, client) = setup("default").await;
    let cancel = CancellationToken::new();
    let id = ChangeFeedId::default_namespace("update-changefeed");
    let upstream = upstream_1();
    let saved = info(&id, 1);
    client
        .save_changefeed_info(&saved, &id, &cancel)
        .await
        .unwrap();
    client
        .update_changefeed_and_upstream(&upstream, &saved, &id, &cancel)
        .await
        .unwrap();
    assert_eq!(
        client
            .get_upstream_info(1, "default", &cancel)
            .await
            .unwrap(),
        upstream
    );
    assert_eq!(
        client.get_changefeed_info(&id, &cancel).await.unwrap(),
        saved
    );
    // Same upstream again: the upstream key is compared but not rewritten.
    let upstream_mod_revision = || async {
        client
            .client()
            .get(
                key::upstream_key("default", "default", 1),
                GetOptions::default(),
            )
            .await
            .unwrap()
            .kvs[0]
            .mod_revision
    };
    let before = upstream_mod_revision().await;
    client
        .update_changefeed_and_upstream(&upstream, &saved, &id, &cancel)
        .await
        .unwrap();
    assert_eq!(before, upstream_mod_revision().await);

    let missing = ChangeFeedId::default_namespace("missing");
    let err = client
        .update_changefeed_and_upstream(&upstream, &info(&missing, 1), &missing, &cancel)
        .await
        .unwrap_err();
    assert!(matches!(err, CdcError::ChangeFeedNotExists { .. }), "{err}");
}

fn capture(n: usize) -> CaptureInfo {
    CaptureInfo {
        id: format!("capture-{n}"),
        address: format!("127.0.0.1:830{n}"),
        version: "v6.5.0".to_owned(),
        ..CaptureInfo::default()
    }
}

/// Case 22: captures on three leases, their lease map, and revoking them all (plus a fake one).
#[tokio::test]
async fn capture_leases() {
    let (server, client) = setup("default").await;
    let cancel = CancellationToken::new();
    let mut captures = Vec::new();
    let mut leases = BTreeMap::new();
    for n in [2, 0, 1] {
        let lease = client.retrying().lease_grant(10, &cancel).await.unwrap();
        client
            .put_capture_info(&capture(n), lease.id, &cancel)
            .await
            .unwrap();
        captures.push(capture(n));
        leases.insert(capture(n).id, lease.id);
    }
    captures.sort_by(|a, b| a.id.cmp(&b.id));
    let (revision, got) = client.get_captures(&cancel).await.unwrap();
    assert!(revision > 0);
    assert_eq!(got, captures);
    assert_eq!(
        client.get_capture_info("capture-1", &cancel).await.unwrap(),
        capture(1)
    );
    assert_eq!(client.get_capture_leases(&cancel).await.unwrap(), leases);

    // One lease is already gone (revoked out of band): revoking it again is fine.
    server.revoke_lease(leases["capture-0"]).await.unwrap();
    let mut with_fake = leases.clone();
    with_fake.insert("fake".to_owned(), 200);
    client.revoke_all_leases(&with_fake, &cancel).await.unwrap();
    assert!(client.get_capture_leases(&cancel).await.unwrap().is_empty());
    let err = client
        .get_capture_info("capture-1", &cancel)
        .await
        .unwrap_err();
    assert!(matches!(err, CdcError::CaptureNotExist { .. }), "{err}");
    assert!(err.to_string().starts_with("[CDC:ErrCaptureNotExist]"));
}

/// Puts `P/<leaseHex>` = `capture_id` if absent (the first step of TiCDC's campaign, §3.2) and
/// returns the key's create revision.
async fn enqueue(client: &EtcdClient, lease: i64, capture_id: &str) -> i64 {
    let key = key::owner_key("default", lease);
    let txn = Txn {
        compares: vec![Compare::CreateRevision {
            key: key.clone().into_bytes(),
            op: CompareOp::Equal,
            revision: 0,
        }],
        success: vec![TxnOp::Put {
            key: key.clone().into_bytes(),
            value: capture_id.as_bytes().to_vec(),
            lease,
        }],
        failure: vec![],
    };
    let response = client.txn(txn).await.expect("enqueue txn");
    assert!(response.succeeded, "{key} was free");
    response.revision
}

/// Case 23: no owner, then 16 epochs of three concurrent candidates. Each epoch's owner (the
/// oldest candidate key) gets its revision, the others get `NotOwner`, and the owner revision
/// strictly increases as owners resign and re-queue.
#[tokio::test]
async fn get_owner_revision() {
    let (_server, client) = setup("default").await;
    let cancel = CancellationToken::new();
    let err = client
        .get_owner_revision("capture-0", &cancel)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ErrOwnerNotFound"), "{err}");
    assert!(matches!(
        client.get_owner_id(&cancel).await,
        Err(CdcError::ElectionNoLeader)
    ));

    let raw = client.client().clone();
    let mut leases = Vec::new();
    for _ in 0..3 {
        leases.push(raw.lease_grant(30).await.unwrap().id);
    }
    let ids: Vec<String> = (0..3).map(|n| format!("capture-{n}")).collect();
    // Every candidate queues concurrently.
    let queued = futures::future::join_all(
        leases
            .iter()
            .zip(&ids)
            .map(|(&lease, id)| enqueue(&raw, lease, id)),
    )
    .await;
    let mut create_revisions: BTreeMap<String, i64> = ids.iter().cloned().zip(queued).collect();

    let mut last_revision = 0;
    for _epoch in 0..16 {
        let owner = client.get_owner_id(&cancel).await.unwrap();
        let expected_owner = create_revisions
            .iter()
            .min_by_key(|(_, revision)| **revision)
            .map(|(id, _)| id.clone())
            .unwrap();
        assert_eq!(owner, expected_owner);
        let revision = client.get_owner_revision(&owner, &cancel).await.unwrap();
        assert_eq!(revision, create_revisions[&owner]);
        assert!(revision > last_revision, "{revision} after {last_revision}");
        last_revision = revision;
        for other in ids.iter().filter(|id| **id != owner) {
            let err = client.get_owner_revision(other, &cancel).await.unwrap_err();
            assert!(matches!(err, CdcError::NotOwner), "{err}");
            assert!(err.to_string().contains("ErrNotOwner"));
        }
        // The owner resigns (deletes its key) and queues again at the back.
        let index = ids.iter().position(|id| *id == owner).unwrap();
        let owner_key = key::owner_key("default", leases[index]);
        assert_eq!(raw.delete(owner_key.clone(), false).await.unwrap(), 1);
        let parsed = CdcKey::parse("default", &owner_key).unwrap();
        assert_eq!(parsed.owner_lease_id(), Some(leases[index]));
        let requeued = enqueue(&raw, leases[index], &owner).await;
        create_revisions.insert(owner, requeued);
    }
}

/// Case 24: deleting a capture removes its key and its task positions, not another capture's
/// whose ID starts with the same text, nor the changefeed status.
#[tokio::test]
async fn delete_capture_info() {
    let (_server, client) = setup("default").await;
    let cancel = CancellationToken::new();
    let raw = client.client();
    let changefeed = ChangeFeedId::default_namespace("test-changefeed");
    let capture_id = "capture-1".to_owned();
    let neighbour = "capture-1x".to_owned();
    let lease = raw.lease_grant(10).await.unwrap().id;
    client
        .put_capture_info(&capture(1), lease, &cancel)
        .await
        .unwrap();
    let status_key = key::changefeed_status_key("default", &changefeed);
    raw.put(status_key.clone(), r#"{"checkpoint-ts":1}"#, 0)
        .await
        .unwrap();
    let position = key::task_position_key("default", &capture_id, &changefeed);
    let neighbour_position = key::task_position_key("default", &neighbour, &changefeed);
    raw.put(position.clone(), r#"{"checkpoint-ts":1}"#, 0)
        .await
        .unwrap();
    raw.put(neighbour_position.clone(), r#"{"checkpoint-ts":1}"#, 0)
        .await
        .unwrap();

    client
        .delete_capture_info(&capture_id, &cancel)
        .await
        .unwrap();
    assert!(!key_exists(raw, position).await);
    assert!(!key_exists(raw, key::capture_key("default", &capture_id)).await);
    assert!(key_exists(raw, neighbour_position).await);
    assert!(key_exists(raw, status_key).await);
}

/// Bad data never panics: garbage JSON under a capture key, a key that is not UTF-8 under the
/// changefeed prefix, and a non-numeric meta version are typed errors naming the key.
#[tokio::test]
async fn bad_data_is_an_error() {
    let (_server, client) = setup("default").await;
    let cancel = CancellationToken::new();
    let raw = client.client();
    let capture_key = key::capture_key("default", "garbage");
    raw.put(capture_key.clone(), "{not json", 0).await.unwrap();
    for err in [
        client.get_captures(&cancel).await.unwrap_err(),
        client
            .get_capture_info("garbage", &cancel)
            .await
            .unwrap_err(),
    ] {
        assert!(
            matches!(&err, CdcError::Decode { key, .. } if *key == capture_key),
            "{err}"
        );
    }

    let mut bad_key = key::changefeed_info_prefix("default", "default").into_bytes();
    bad_key.extend_from_slice(b"/\xff");
    raw.put(bad_key, "{}", 0).await.unwrap();
    let err = client.get_changefeeds(&cancel).await.unwrap_err();
    assert!(matches!(err, CdcError::InvalidEtcdKey { .. }), "{err}");

    assert_eq!(client.get_meta_version(&cancel).await.unwrap(), None);
    client
        .put_meta_version(cdc_etcd::META_VERSION, &cancel)
        .await
        .unwrap();
    assert_eq!(client.get_meta_version(&cancel).await.unwrap(), Some(1));
    raw.put(key::meta_version_key("default"), "one", 0)
        .await
        .unwrap();
    let err = client.get_meta_version(&cancel).await.unwrap_err();
    assert!(
        matches!(err, CdcError::Etcd(cdc_etcd::Error::InvalidValue { .. })),
        "{err}"
    );
    assert!(client.gc_service_id().starts_with("ticdc-default-"));
}
