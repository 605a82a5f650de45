//! Tests of the etcd span source against a real etcd.

use std::time::Duration;

use cdc_etcd::testing::EtcdServer;
use cdc_etcd::{EtcdClient, GetOptions, Txn, TxnOp};
use cdc_model::ChangeEvent;
use tokio_util::sync::CancellationToken;

use crate::{Error, EtcdSource, KeyRange, SourceConfig, SourceOutput};

const DEADLINE: Duration = Duration::from_secs(30);

fn fast_config() -> SourceConfig {
    SourceConfig {
        buffer: 4,
        progress_interval: Duration::from_millis(100),
        confirm_after: Duration::from_millis(150),
        reset_after: Duration::from_secs(10),
    }
}

fn span_range() -> KeyRange {
    KeyRange {
        start: b"/s/b".to_vec(),
        end: b"/s/d".to_vec(),
    }
}

async fn current_revision(client: &EtcdClient) -> u64 {
    let revision = client
        .get("/none", GetOptions::default())
        .await
        .unwrap()
        .revision;
    u64::try_from(revision).unwrap()
}

/// Reads the source until its resolved revision reaches `target`; the events, in order.
async fn read_until(source: &mut EtcdSource, target: u64) -> Vec<ChangeEvent> {
    let mut events = Vec::new();
    let mut resolved = source.resolved();
    tokio::time::timeout(DEADLINE, async {
        while resolved < target {
            let output = source.next().await.unwrap().expect("source ended");
            let next = match output {
                SourceOutput::Events {
                    events: batch,
                    resolved: after,
                } => {
                    assert!(!batch.is_empty());
                    // Nothing at or below a resolved revision already handed out.
                    assert!(batch.iter().all(|event| event.revision > resolved));
                    events.extend(batch);
                    after
                }
                SourceOutput::Resolved(after) => after,
            };
            assert!(next > resolved, "resolved moved from {resolved} to {next}");
            // Never past an event not yet handed out.
            assert!(events.iter().all(|event| event.revision <= next));
            resolved = next;
        }
    })
    .await
    .expect("the source reached the revision in time");
    events
}

#[tokio::test]
async fn events_in_range_arrive_in_revision_order() {
    let etcd = EtcdServer::start().await.unwrap();
    let client = etcd.client().await.unwrap();
    client.put("/s/b0", "before", 0).await.unwrap();
    let checkpoint = current_revision(&client).await;

    let mut expected = Vec::new();
    for (key, value) in [
        ("/s/b1", "1"),
        ("/s/a", "out"),
        ("/s/c", "2"),
        ("/s/d", "out"),
    ] {
        let revision = u64::try_from(client.put(key, value, 0).await.unwrap()).unwrap();
        if span_range().contains(key.as_bytes()) {
            expected.push(ChangeEvent::put(key, value, revision));
        }
    }
    client.delete("/s/b1", false).await.unwrap();
    expected.push(ChangeEvent::delete(
        "/s/b1",
        current_revision(&client).await,
    ));
    client.delete("/s/d", false).await.unwrap();
    // One transaction: two changes at one revision, one outside the span.
    let txn = client
        .txn(Txn {
            compares: Vec::new(),
            success: vec![
                TxnOp::Put {
                    key: b"/s/c".to_vec(),
                    value: b"3".to_vec(),
                    lease: 0,
                },
                TxnOp::Put {
                    key: b"/s/bz".to_vec(),
                    value: b"4".to_vec(),
                    lease: 0,
                },
                TxnOp::Put {
                    key: b"/t".to_vec(),
                    value: b"out".to_vec(),
                    lease: 0,
                },
            ],
            failure: Vec::new(),
        })
        .await
        .unwrap();
    let txn_revision = u64::try_from(txn.revision).unwrap();
    expected.push(ChangeEvent::put("/s/c", "3", txn_revision));
    expected.push(ChangeEvent::put("/s/bz", "4", txn_revision));
    let last = current_revision(&client).await;

    let cancel = CancellationToken::new();
    let mut source = EtcdSource::start(
        client.clone(),
        span_range(),
        checkpoint,
        &fast_config(),
        &cancel,
    )
    .unwrap();
    assert_eq!(source.resolved(), checkpoint);
    let events = read_until(&mut source, txn_revision).await;
    assert_eq!(events, expected);
    assert!(last >= txn_revision);

    // Live changes after the catch-up arrive too.
    let revision = u64::try_from(client.put("/s/c", "5", 0).await.unwrap()).unwrap();
    let events = read_until(&mut source, revision).await;
    assert_eq!(events, vec![ChangeEvent::put("/s/c", "5", revision)]);
    source.close().await;
}

#[tokio::test]
async fn idle_span_resolves_through_progress() {
    let etcd = EtcdServer::start().await.unwrap();
    let client = etcd.client().await.unwrap();
    let checkpoint = current_revision(&client).await;
    let cancel = CancellationToken::new();
    let mut source = EtcdSource::start(
        client.clone(),
        span_range(),
        checkpoint,
        &fast_config(),
        &cancel,
    )
    .unwrap();
    // Changes outside the span move the upstream's revision only.
    for i in 0..3 {
        client.put(format!("/other/{i}"), "x", 0).await.unwrap();
    }
    let target = current_revision(&client).await;
    let events = read_until(&mut source, target).await;
    assert!(events.is_empty(), "{events:?}");
    cancel.cancel();
    assert!(
        tokio::time::timeout(DEADLINE, source.next())
            .await
            .unwrap()
            .unwrap()
            .is_none()
    );
    source.close().await;
}

#[tokio::test]
async fn compacted_start_revision_is_named() {
    let etcd = EtcdServer::start().await.unwrap();
    let client = etcd.client().await.unwrap();
    for i in 0..5 {
        client.put("/s/c", i.to_string(), 0).await.unwrap();
    }
    let compacted = u64::try_from(etcd.compact().await.unwrap()).unwrap();
    let cancel = CancellationToken::new();
    let mut source =
        EtcdSource::start(client.clone(), span_range(), 2, &fast_config(), &cancel).unwrap();
    let err = tokio::time::timeout(DEADLINE, source.next())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, Error::Compacted { revision: 3, compacted: c } if c == compacted),
        "{err:?}"
    );
    assert!(err.to_string().contains("start revision 3 "), "{err}");
    assert!(!err.is_retryable());
    source.close().await;
}

#[tokio::test]
async fn invalid_ranges_are_refused() {
    let etcd = EtcdServer::start().await.unwrap();
    let client = etcd.client().await.unwrap();
    let cancel = CancellationToken::new();
    for range in [
        KeyRange {
            start: b"/a".to_vec(),
            end: Vec::new(),
        },
        KeyRange {
            start: b"/b".to_vec(),
            end: b"/a".to_vec(),
        },
    ] {
        let err = EtcdSource::start(client.clone(), range, 0, &fast_config(), &cancel).unwrap_err();
        assert!(matches!(err, Error::InvalidRange { .. }), "{err:?}");
    }
    assert_eq!(
        KeyRange::prefix(b"/p/"),
        Some(KeyRange {
            start: b"/p/".to_vec(),
            end: b"/p0".to_vec(),
        })
    );
    assert_eq!(KeyRange::prefix(&[0xff]), None);
}

mod tracker {
    //! The resolved-revision rule, with time passed in.

    use std::time::Duration;

    use tokio::time::Instant;

    use crate::source::ResolvedTracker;

    const CONFIRM: Duration = Duration::from_millis(500);

    #[test]
    fn events_resolve_to_their_last_revision() {
        let mut tracker = ResolvedTracker::new(10, CONFIRM);
        assert!(tracker.on_events(11, 13));
        assert_eq!(tracker.resolved(), 13);
    }

    #[test]
    fn a_progress_answer_counts_only_once_confirmed() {
        let start = Instant::now();
        let mut tracker = ResolvedTracker::new(10, CONFIRM);
        assert!(!tracker.on_progress(20, start));
        assert_eq!(tracker.resolved(), 10);
        // A second answer too soon confirms nothing.
        assert!(!tracker.on_progress(21, start + CONFIRM / 2));
        assert_eq!(tracker.resolved(), 10);
        // Once the first answer is old enough, the next answer confirms it (not itself).
        assert!(tracker.on_progress(22, start + CONFIRM));
        assert_eq!(tracker.resolved(), 20);
        assert!(tracker.on_progress(23, start + CONFIRM * 2));
        assert_eq!(tracker.resolved(), 22);
    }

    #[test]
    fn an_event_at_or_below_the_candidate_drops_it() {
        let start = Instant::now();
        let mut tracker = ResolvedTracker::new(10, CONFIRM);
        tracker.on_progress(20, start);
        // etcd 3.4 answered before handing out revision 15: the answer was early.
        assert!(tracker.on_events(15, 15));
        assert_eq!(tracker.resolved(), 15);
        // The next answer does not confirm the dropped one; it becomes the candidate.
        assert!(!tracker.on_progress(20, start + CONFIRM));
        assert_eq!(tracker.resolved(), 15);
        assert!(tracker.on_progress(20, start + CONFIRM * 2));
        assert_eq!(tracker.resolved(), 20);
    }

    #[test]
    fn events_above_the_candidate_pass_it() {
        let start = Instant::now();
        let mut tracker = ResolvedTracker::new(10, CONFIRM);
        tracker.on_progress(20, start);
        assert!(tracker.on_events(21, 22));
        assert_eq!(tracker.resolved(), 22);
        // The candidate is behind: nothing to confirm, nothing moves back.
        assert!(!tracker.on_progress(22, start + CONFIRM));
        assert_eq!(tracker.resolved(), 22);
    }
}

#[tokio::test]
async fn range_watches_deliver_only_the_range() {
    let etcd = EtcdServer::start().await.unwrap();
    let client = etcd.client().await.unwrap();
    let from = current_revision(&client).await + 1;
    for key in ["/s/a", "/s/b", "/s/c", "/s/d", "/s/e"] {
        client.put(key, "x", 0).await.unwrap();
    }
    let last = current_revision(&client).await;
    let mut watch = client
        .watch_range(
            "/s/b",
            "/s/d",
            cdc_etcd::WatchOptions {
                start_revision: i64::try_from(from).unwrap(),
                ..cdc_etcd::WatchOptions::default()
            },
        )
        .await
        .unwrap();
    let mut keys = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        // A last put inside the range marks the end.
        client.put("/s/c", "end", 0).await.unwrap();
        loop {
            let response = watch.next().await.unwrap().unwrap();
            for event in response.events {
                keys.push(String::from_utf8(event.kv.key).unwrap());
                if u64::try_from(event.kv.mod_revision).unwrap() > last {
                    return;
                }
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(keys, ["/s/b", "/s/c", "/s/c"]);
}
