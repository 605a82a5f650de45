//! The single-attempt etcd client against a real etcd.

use cdc_etcd::{Compare, CompareOp, EventKind, GetOptions, Txn, TxnOp, WatchOptions};

use crate::support::etcd;

#[tokio::test]
async fn raw_client_round_trip() {
    let (_server, client) = etcd().await;

    let rev = client.put("/a/1", "x", 0).await.unwrap();
    let got = client.get("/a/", GetOptions::prefix()).await.unwrap();
    assert_eq!(got.kvs.len(), 1);
    assert_eq!(got.kvs[0].mod_revision, rev);

    let txn = Txn {
        compares: vec![Compare::ModRevision {
            key: b"/a/1".to_vec(),
            op: CompareOp::Equal,
            revision: rev,
        }],
        success: vec![TxnOp::Put {
            key: b"/a/1".to_vec(),
            value: b"y".to_vec(),
            lease: 0,
        }],
        failure: vec![],
    };
    assert!(client.txn(txn.clone()).await.unwrap().succeeded);
    assert!(!client.txn(txn).await.unwrap().succeeded);

    let lease = client.lease_grant(1).await.unwrap();
    assert_eq!(lease.ttl, 2, "etcd raises a 1 s TTL to its minimum");
    let mut keep_alive = client.lease_keep_alive(lease.id).await.unwrap();
    keep_alive.send().await.unwrap();
    assert!(keep_alive.next().await.unwrap().unwrap().ttl > 0);
    client.lease_revoke(lease.id).await.unwrap();
    assert!(matches!(
        client.lease_revoke(lease.id).await,
        Err(cdc_etcd::Error::LeaseNotFound { .. })
    ));
    assert_eq!(client.lease_time_to_live(lease.id).await.unwrap().ttl, -1);

    let mut watch = client
        .watch(
            "/a/",
            WatchOptions {
                prefix: true,
                start_revision: rev,
                ..WatchOptions::default()
            },
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let response = watch.next().await.unwrap().unwrap();
        seen.extend(
            response
                .events
                .into_iter()
                .map(|event| (event.kind, event.kv.value)),
        );
    }
    assert_eq!(
        seen,
        vec![
            (EventKind::Put, b"x".to_vec()),
            (EventKind::Put, b"y".to_vec())
        ]
    );
}
