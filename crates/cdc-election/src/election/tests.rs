//! The watch interpretation, and a compaction while waiting against a real etcd.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use cdc_etcd::testing::EtcdServer;
use cdc_etcd::{Event, EventKind, GetOptions, KeyValue, WatchResponse};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use super::{
    Backoff, Election, RETRY_BACKOFF_MAX, RETRY_BACKOFF_MIN, WatchHook, WatchOutcome, watch_outcome,
};
use crate::{Error, Session};

fn response(events: Vec<Event>) -> WatchResponse {
    WatchResponse {
        revision: 10,
        watch_id: 0,
        created: false,
        canceled: false,
        compact_revision: 0,
        cancel_reason: String::new(),
        events,
    }
}

fn event(kind: EventKind, key: &[u8]) -> Event {
    Event {
        kind,
        kv: KeyValue {
            key: key.to_vec(),
            value: Vec::new(),
            create_revision: 0,
            mod_revision: 10,
            version: 0,
            lease: 0,
        },
        prev_kv: None,
    }
}

#[test]
fn compaction_is_reported_even_without_a_reason() {
    let mut compacted = response(vec![]);
    compacted.canceled = true;
    compacted.compact_revision = 4;
    assert_eq!(
        watch_outcome(&compacted, b"/p/1"),
        WatchOutcome::Compacted(4)
    );
}

#[test]
fn only_a_delete_of_the_watched_key_ends_the_wait() {
    let key = b"/p/1";
    assert_eq!(
        watch_outcome(&response(vec![event(EventKind::Put, key)]), key),
        WatchOutcome::Nothing
    );
    assert_eq!(
        watch_outcome(&response(vec![event(EventKind::Delete, b"/p/2")]), key),
        WatchOutcome::Nothing
    );
    assert_eq!(
        watch_outcome(
            &response(vec![
                event(EventKind::Put, key),
                event(EventKind::Delete, key)
            ]),
            key
        ),
        WatchOutcome::Deleted
    );
    let mut progress = response(vec![]);
    progress.watch_id = -1;
    assert_eq!(watch_outcome(&progress, key), WatchOutcome::Nothing);
    let mut cancelled = response(vec![]);
    cancelled.canceled = true;
    assert_eq!(watch_outcome(&cancelled, key), WatchOutcome::Cancelled);
}

#[test]
fn retry_pauses_double_from_100ms_to_a_2s_cap_with_jitter() {
    let mut backoff = Backoff::new();
    let mut step = RETRY_BACKOFF_MIN;
    for _ in 0..10 {
        let delay = backoff.next_delay();
        assert!(
            delay >= step / 2 && delay <= step,
            "{delay:?} for a step of {step:?}"
        );
        step = (step * 2).min(RETRY_BACKOFF_MAX);
    }
    assert_eq!(step, RETRY_BACKOFF_MAX);
    backoff.reset();
    assert!(backoff.next_delay() <= RETRY_BACKOFF_MIN);
}

/// The compaction cannot be timed from outside (the window is between the candidate's read and
/// its watch: a re-watch after a broken stream starts from a fresh read), so the candidate stops
/// at a hook there while the test writes and compacts on the real etcd.
#[tokio::test]
async fn a_compaction_past_the_wait_start_is_a_retryable_error_and_the_retry_wins() {
    let server = EtcdServer::start().await.unwrap();
    let client = server.client().await.unwrap();
    let prefix = "/tidb/cdc/compacted/__cdc_meta__/owner";
    let session_a = Session::grant(client.clone(), 10).await.unwrap();
    let session_b = Session::grant(client.clone(), 10).await.unwrap();
    let never = CancellationToken::new();
    let a = Election::new(client.clone(), session_a.lease_id(), prefix);
    a.campaign("a", &never).await.unwrap();

    let hook = Arc::new(WatchHook {
        armed: AtomicBool::new(true),
        revision: AtomicI64::new(0),
        reached: tokio::sync::Notify::new(),
        release: tokio::sync::Notify::new(),
    });
    let mut b = Election::new(client.clone(), session_b.lease_id(), prefix);
    b.watch_hook = Some(Arc::clone(&hook));
    let b = Arc::new(b);
    let campaign = {
        let (b, never) = (Arc::clone(&b), never.clone());
        tokio::spawn(async move { b.campaign("b", &never).await })
    };
    timeout(Duration::from_secs(5), hook.reached.notified())
        .await
        .expect("the candidate reads the queue");
    let read_at = hook.revision.load(Ordering::SeqCst);
    client.put("/unrelated", "1", 0).await.unwrap();
    client.put("/unrelated", "2", 0).await.unwrap();
    let compacted = server.compact().await.unwrap();
    assert!(
        compacted > read_at + 1,
        "{compacted} must pass the watch start {}",
        read_at + 1
    );
    hook.release.notify_one();

    let err = timeout(Duration::from_secs(5), campaign)
        .await
        .expect("the campaign ends")
        .unwrap()
        .expect_err("a compacted wait fails");
    assert!(
        matches!(err, Error::Compacted { requested, compacted: at } if requested == read_at + 1 && at == compacted),
        "{err:?}"
    );
    assert!(err.is_retryable());
    // The failed campaign resigned: no key of ours is left in the queue.
    let ours = client
        .get(b.key().to_vec(), GetOptions::default())
        .await
        .unwrap();
    assert!(ours.kvs.is_empty());

    // Campaign again: the retry queues behind the leader and wins when it resigns.
    let retry = {
        let (b, never) = (Arc::clone(&b), never.clone());
        tokio::spawn(async move { b.campaign("b", &never).await })
    };
    let queued = async {
        loop {
            let get = client
                .get(b.key().to_vec(), GetOptions::default())
                .await
                .unwrap();
            if !get.kvs.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    timeout(Duration::from_secs(5), queued)
        .await
        .expect("the retry queues");
    a.resign().await.unwrap();
    let fence = timeout(Duration::from_secs(5), retry)
        .await
        .expect("the retry wins")
        .unwrap()
        .unwrap();
    assert_eq!(fence.key, b.key());
    assert!(b.is_leader());
    assert_eq!(a.leader().await.unwrap().as_deref(), Some("b"));
    session_a.close().await.unwrap();
    session_b.close().await.unwrap();
}
