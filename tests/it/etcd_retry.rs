//! `RetryingClient` and the error classification against a real etcd (TiCDC's `pkg/etcd/client.go`,
//! with TestRetry and TestDelegateLease of `pkg/etcd/client_test.go`).

use std::time::Duration;

use cdc_etcd::testing::EtcdServer;
use cdc_etcd::{
    ConnectConfig, Error, EtcdClient, GetOptions, RetryPolicy, RetryingClient, RpcCode, Txn,
};
use tokio_util::sync::CancellationToken;

fn short_policy() -> RetryPolicy {
    RetryPolicy {
        deadline: Duration::from_secs(3),
        ..RetryPolicy::default()
    }
}

/// Case 12: a granted lease reports its granted TTL, and -1 once revoked.
#[tokio::test]
async fn delegate_lease() {
    let server = EtcdServer::start().await.unwrap();
    let client = RetryingClient::new(server.client().await.unwrap());
    let cancel = CancellationToken::new();
    let lease = client.lease_grant(10, &cancel).await.unwrap();
    assert_eq!(lease.ttl, 10);
    let ttl = client.lease_time_to_live(lease.id, &cancel).await.unwrap();
    assert_eq!(ttl.granted_ttl, 10);
    assert!(ttl.ttl > 0 && ttl.ttl < 10, "{ttl:?}");
    client.lease_revoke(lease.id, &cancel).await.unwrap();
    let ttl = client.lease_time_to_live(lease.id, &cancel).await.unwrap();
    assert_eq!(ttl.ttl, -1);
    // A missing lease is not retried: the answer is immediate and typed.
    assert!(matches!(
        client.lease_revoke(lease.id, &cancel).await,
        Err(Error::LeaseNotFound { lease_id }) if lease_id == lease.id
    ));
}

/// Case 11 on a real server: plain calls succeed through the wrapper, an empty txn is fine, and
/// a compacted read is a typed error that is not retried.
#[tokio::test]
async fn retrying_calls_and_compaction() {
    let server = EtcdServer::start().await.unwrap();
    let client = RetryingClient::new(server.client().await.unwrap());
    let cancel = CancellationToken::new();
    let first = client.put("/r/a", "1", 0, &cancel).await.unwrap();
    let second = client.put("/r/a", "2", 0, &cancel).await.unwrap();
    let got = client
        .get("/r/a", GetOptions::default(), &cancel)
        .await
        .unwrap();
    assert_eq!(got.kvs[0].value, b"2");
    assert!(client.txn(Txn::default(), &cancel).await.is_ok());
    assert_eq!(client.delete("/r/", true, &cancel).await.unwrap(), 1);

    client.client().compact(second).await.unwrap();
    let options = GetOptions {
        revision: first,
        ..GetOptions::default()
    };
    let err = client.get("/r/a", options, &cancel).await.unwrap_err();
    assert!(
        matches!(err, Error::Compacted { requested, compacted } if requested == first && compacted == 0),
        "{err}"
    );
    assert!(err.is_compacted());
}

/// An unreachable etcd: the single-attempt error is `Unavailable`; the retried call ends with a
/// clear error at the deadline that names the endpoint; deletes and txns are tried once.
#[tokio::test]
async fn unreachable_etcd() {
    let mut server = EtcdServer::start().await.unwrap();
    let endpoint = server.endpoint();
    let raw = server.client().await.unwrap();
    raw.put("/u", "x", 0).await.unwrap();
    server.kill().unwrap();

    let err = raw.get("/u", GetOptions::default()).await.unwrap_err();
    assert!(
        matches!(&err, Error::Rpc { code: RpcCode::Unavailable, endpoints, .. } if *endpoints == endpoint),
        "{err}"
    );
    assert!(err.is_retryable());

    let client = RetryingClient::with_policy(raw, short_policy());
    let cancel = CancellationToken::new();
    let started = std::time::Instant::now();
    let err = client
        .get("/u", GetOptions::default(), &cancel)
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(err, Error::DeadlineExceeded { .. }), "{err}");
    assert!(elapsed <= Duration::from_secs(4), "{elapsed:?}");
    let message = err.to_string();
    assert!(message.contains(&endpoint), "{message}");

    for err in [
        client.delete("/u", false, &cancel).await.unwrap_err(),
        client.txn(Txn::default(), &cancel).await.unwrap_err(),
    ] {
        assert!(
            matches!(
                err,
                Error::Rpc {
                    code: RpcCode::Unavailable,
                    ..
                }
            ),
            "{err}"
        );
    }

    // After a restart the same client works again.
    server.restart().await.unwrap();
    let client = RetryingClient::new(client.client().clone());
    let got = client
        .get("/u", GetOptions::default(), &cancel)
        .await
        .unwrap();
    assert_eq!(got.kvs[0].value, b"x");
}

/// A frozen etcd (SIGSTOP): one attempt times out with `Timeout`; cancellation ends a retried
/// call at once.
#[tokio::test]
async fn frozen_etcd_times_out() {
    let mut server = EtcdServer::start().await.unwrap();
    let config = ConnectConfig {
        request_timeout: Duration::from_millis(500),
        ..ConnectConfig::default()
    };
    let raw = EtcdClient::connect(&server.endpoints(), config)
        .await
        .unwrap();
    raw.put("/f", "x", 0).await.unwrap();
    server.pause().unwrap();

    let err = raw.get("/f", GetOptions::default()).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(err.to_string().contains(&server.endpoint()));

    let client = RetryingClient::new(raw);
    let cancel = CancellationToken::new();
    let canceller = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            cancel.cancel();
        })
    };
    let started = std::time::Instant::now();
    let err = client.put("/f", "y", 0, &cancel).await.unwrap_err();
    canceller.await.unwrap();
    assert!(matches!(err, Error::Cancelled), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    server.resume().unwrap();
}
