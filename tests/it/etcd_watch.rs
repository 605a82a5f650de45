//! `ResilientWatch` against a real etcd: compaction, resumption across a broken stream, and a
//! watch refused for good.

use std::time::Duration;

use cdc_etcd::watch::ResilientWatch;
use cdc_etcd::{Error, RetryingClient, WatchResponse};
use tokio_util::sync::CancellationToken;

use crate::support::etcd;

async fn recv(watch: &mut ResilientWatch) -> Option<cdc_etcd::Result<WatchResponse>> {
    tokio::time::timeout(Duration::from_secs(30), watch.recv())
        .await
        .expect("a watch response within 30 s")
}

/// A watch from a compacted revision ends with `Error::Compacted` naming both revisions.
#[tokio::test]
async fn compaction_surfaces_as_typed_error() {
    let (server, client) = etcd().await;
    let first = client.put("/w/a", "1", 0).await.unwrap();
    for value in 2..=5 {
        client.put("/w/a", value.to_string(), 0).await.unwrap();
    }
    client.put("/w/b", "x", 0).await.unwrap();
    let last = server.compact().await.unwrap();

    let cancel = CancellationToken::new();
    let mut watch = ResilientWatch::start(client, b"/w/".to_vec(), true, first, cancel.clone());
    match recv(&mut watch).await {
        Some(Err(Error::Compacted {
            requested,
            compacted,
        })) => {
            assert_eq!(requested, first);
            assert_eq!(compacted, last);
        }
        other => panic!("expected a compaction error, got {other:?}"),
    }
    assert!(
        recv(&mut watch).await.is_none(),
        "the watch ends after a compaction"
    );
}

/// Events written before and after etcd is killed and restarted all arrive, once each, in
/// revision order: the wrapper re-opens the broken stream from the last forwarded event.
#[tokio::test]
async fn no_event_lost_across_rewatch() {
    let (mut server, client) = etcd().await;
    let start = client.put("/other", "x", 0).await.unwrap() + 1;
    let cancel = CancellationToken::new();
    let mut watch =
        ResilientWatch::start(client.clone(), b"/w/".to_vec(), true, start, cancel.clone());

    let mut written = Vec::new();
    for n in 0..5 {
        written.push(client.put(format!("/w/{n}"), "v", 0).await.unwrap());
    }
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let response = recv(&mut watch).await.unwrap().unwrap();
        seen.extend(response.events.iter().map(|event| event.kv.mod_revision));
    }

    server.restart().await.unwrap();
    // The client reconnects on its own; the retrying client covers the first calls after the
    // restart that may still fail.
    let retrying = RetryingClient::new(client.clone());
    for n in 5..10 {
        let revision = retrying
            .put(format!("/w/{n}"), "v", 0, &cancel)
            .await
            .unwrap();
        written.push(revision);
    }
    while seen.len() < written.len() {
        let response = recv(&mut watch).await.unwrap().unwrap();
        seen.extend(response.events.iter().map(|event| event.kv.mod_revision));
    }
    assert_eq!(seen, written);
    cancel.cancel();
    assert!(watch.recv().await.is_none());
    watch.close().await;
}

/// Runs etcdctl against `server`.
fn etcdctl(server: &cdc_etcd::testing::EtcdServer, args: &[&str]) {
    let output = std::process::Command::new(cdc_etcd::testing::etcdctl_binary())
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(server.endpoint())
        .args(args)
        .output()
        .expect("run etcdctl");
    assert!(output.status.success(), "etcdctl {args:?}: {output:?}");
}

/// A watch etcd refuses for good (authentication enabled, a client without credentials) ends
/// with a typed error naming the refusal instead of being re-opened for ever.
#[tokio::test]
async fn refused_watch_ends_with_typed_error() {
    let (server, client) = etcd().await;
    etcdctl(&server, &["user", "add", "root:root"]);
    etcdctl(&server, &["auth", "enable"]);
    let cancel = CancellationToken::new();
    let mut watch = ResilientWatch::start(client, b"/w/".to_vec(), true, 1, cancel.clone());
    match recv(&mut watch).await {
        Some(Err(Error::WatchRefused { revision, source })) => {
            assert_eq!(revision, 1);
            assert!(!source.is_retryable(), "{source:?}");
        }
        other => panic!("expected a refused watch, got {other:?}"),
    }
    assert!(recv(&mut watch).await.is_none(), "the watch ends");
}
