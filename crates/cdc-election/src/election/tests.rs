//! The watch interpretation, and against a real etcd: a compaction while waiting, and
//! cancellation with etcd frozen.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use cdc_etcd::testing::EtcdServer;
use cdc_etcd::{EtcdClient, Event, EventKind, GetOptions, KeyValue, Revision, WatchResponse};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

use super::{
    Backoff, CANCEL_CLEANUP_TIMEOUT, Election, OwnerFence, RETRY_BACKOFF_MAX, RETRY_BACKOFF_MIN,
    WatchOutcome, watch_outcome,
};
use crate::hooks::{ElectionHooks, Pause};
use crate::{Error, Session};

/// Lets a test act on etcd between a waiting candidate's read and its watch, once.
#[derive(Debug)]
struct WatchHook {
    armed: AtomicBool,
    /// The revision of the read, set when the candidate reaches the hook.
    revision: AtomicI64,
    reached: tokio::sync::Notify,
    release: tokio::sync::Notify,
}

impl ElectionHooks for WatchHook {
    fn before_watch(&self, revision: Revision) -> Option<Pause<'_>> {
        if !self.armed.swap(false, Ordering::SeqCst) {
            return None;
        }
        self.revision.store(revision, Ordering::SeqCst);
        self.reached.notify_one();
        Some(Box::pin(self.release.notified()))
    }
}

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

/// Waits (bounded) until `key` exists and returns its create revision.
async fn wait_for_key(client: &EtcdClient, key: &[u8]) -> Revision {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let get = client
            .get(key.to_vec(), GetOptions::default())
            .await
            .unwrap();
        if let Some(kv) = get.kvs.first() {
            return kv.create_revision;
        }
        assert!(Instant::now() < deadline, "the key never appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The create revision of `key`, if it exists.
async fn create_revision(client: &EtcdClient, key: &[u8]) -> Option<Revision> {
    client
        .get(key.to_vec(), GetOptions::default())
        .await
        .unwrap()
        .kvs
        .first()
        .map(|kv| kv.create_revision)
}

fn spawn_campaign(
    election: &Arc<Election>,
    value: &'static str,
    cancel: &CancellationToken,
) -> tokio::task::JoinHandle<crate::Result<OwnerFence>> {
    let (election, cancel) = (Arc::clone(election), cancel.clone());
    tokio::spawn(async move { election.campaign(value, &cancel).await })
}

/// The compaction cannot be timed from outside (the window is between the candidate's read and
/// its watch: a re-watch after a broken stream starts from a fresh read), so the candidate stops
/// at a hook there while the test writes and compacts on the real etcd.
///
/// As Go's `Campaign` does, the failed campaign keeps its key: a candidate that queues after the
/// failure stays behind it, and the retry wins when the leader resigns.
#[tokio::test]
async fn a_compaction_while_waiting_keeps_the_key_and_the_retry_keeps_its_place() {
    let server = EtcdServer::start().await.unwrap();
    let client = server.client().await.unwrap();
    let prefix = "/tidb/cdc/compacted/__cdc_meta__/owner";
    let session_a = Session::grant(client.clone(), 10).await.unwrap();
    let session_b = Session::grant(client.clone(), 10).await.unwrap();
    let session_c = Session::grant(client.clone(), 10).await.unwrap();
    let never = CancellationToken::new();
    let a = Election::new(&session_a, prefix);
    a.campaign("a", &never).await.unwrap();

    let hook = Arc::new(WatchHook {
        armed: AtomicBool::new(true),
        revision: AtomicI64::new(0),
        reached: tokio::sync::Notify::new(),
        release: tokio::sync::Notify::new(),
    });
    let mut b = Election::new(&session_b, prefix);
    b.hooks = Arc::clone(&hook) as Arc<dyn ElectionHooks>;
    let b = Arc::new(b);
    let campaign = spawn_campaign(&b, "b", &never);
    timeout(Duration::from_secs(10), hook.reached.notified())
        .await
        .expect("the candidate reads the queue");
    let queued_at = create_revision(&client, b.key())
        .await
        .expect("b is queued before it reads the queue");
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

    let err = timeout(Duration::from_secs(10), campaign)
        .await
        .expect("the campaign ends")
        .unwrap()
        .expect_err("a compacted wait fails");
    assert!(
        matches!(err, Error::Compacted { requested, compacted: at } if requested == read_at + 1 && at == compacted),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert!(!b.is_leader());
    // The failed campaign kept its key, with its create revision: its place in the queue.
    assert_eq!(create_revision(&client, b.key()).await, Some(queued_at));

    // A third candidate queues now, behind b's kept key.
    let c = Arc::new(Election::new(&session_c, prefix));
    let campaign_c = spawn_campaign(&c, "c", &never);
    assert!(wait_for_key(&client, c.key()).await > queued_at);

    // Campaign again: the retry reuses the key, and wins when the leader resigns, before c.
    let retry = spawn_campaign(&b, "b", &never);
    a.resign().await.unwrap();
    let fence = timeout(Duration::from_secs(10), retry)
        .await
        .expect("the retry wins")
        .unwrap()
        .unwrap();
    assert_eq!(fence.key, b.key());
    assert_eq!(fence.create_revision, queued_at);
    assert!(b.is_leader());
    assert_eq!(a.leader().await.unwrap().as_deref(), Some("b"));
    assert!(!campaign_c.is_finished());

    // c follows once b resigns.
    b.resign().await.unwrap();
    timeout(Duration::from_secs(10), campaign_c)
        .await
        .expect("c wins after b")
        .unwrap()
        .unwrap();
    for session in [session_a, session_b, session_c] {
        session.close().await.unwrap();
    }
}

/// With etcd frozen, a campaign cancelled while its create is in flight returns within the
/// cleanup bound instead of waiting out the create's deadline, a removal's read and a resign
/// (about 25 s before). The assertion leaves a loaded machine 2 s beyond the 2 s cleanup bound;
/// anything at or above the 5 s resign deadline means the cleanup was not bounded.
#[tokio::test]
async fn a_campaign_cancelled_during_its_create_returns_promptly_with_etcd_frozen() {
    let mut server = EtcdServer::start().await.unwrap();
    let client = server.client().await.unwrap();
    let prefix = "/tidb/cdc/frozen-create/__cdc_meta__/owner";
    let session = Session::grant(client.clone(), 10).await.unwrap();
    let election = Election::new(&session, prefix);

    server.pause().unwrap();
    let cancel = CancellationToken::new();
    let mut campaign = Box::pin(election.campaign("a", &cancel));
    // One poll takes the campaign into its create, which etcd cannot answer.
    assert!(futures::poll!(&mut campaign).is_pending());
    cancel.cancel();
    let cancelled = Instant::now();
    let result = timeout(Duration::from_secs(60), campaign)
        .await
        .expect("the cancelled campaign returns");
    let took = cancelled.elapsed();
    server.resume().unwrap();
    assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
    assert!(
        took < CANCEL_CLEANUP_TIMEOUT + Duration::from_secs(2),
        "returned {took:?} after the cancel"
    );
    // A create that etcd applies on waking goes with the lease.
    session.close().await.unwrap();
    assert_eq!(create_revision(&client, election.key()).await, None);
}

/// With etcd frozen, a queued campaign that is cancelled returns within the cleanup bound
/// instead of the resign's 5 s deadline (the margin as above).
#[tokio::test]
async fn a_queued_campaign_cancelled_with_etcd_frozen_returns_promptly() {
    let mut server = EtcdServer::start().await.unwrap();
    let client = server.client().await.unwrap();
    let prefix = "/tidb/cdc/frozen-queued/__cdc_meta__/owner";
    let session_a = Session::grant(client.clone(), 10).await.unwrap();
    let session_b = Session::grant(client.clone(), 10).await.unwrap();
    let a = Election::new(&session_a, prefix);
    a.campaign("a", &CancellationToken::new()).await.unwrap();
    let b = Arc::new(Election::new(&session_b, prefix));
    let cancel = CancellationToken::new();
    let campaign = spawn_campaign(&b, "b", &cancel);
    wait_for_key(&client, b.key()).await;

    server.pause().unwrap();
    cancel.cancel();
    let cancelled = Instant::now();
    let result = timeout(Duration::from_secs(60), campaign)
        .await
        .expect("the cancelled campaign returns")
        .unwrap();
    let took = cancelled.elapsed();
    server.resume().unwrap();
    assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
    assert!(
        took < CANCEL_CLEANUP_TIMEOUT + Duration::from_secs(2),
        "returned {took:?} after the cancel"
    );
    session_b.close().await.unwrap();
    assert_eq!(create_revision(&client, b.key()).await, None);
    session_a.close().await.unwrap();
}

/// A campaign is tied to its session: when the session ends, a queued campaign ends with the
/// lease at once, without a cancellation and without waiting for its next read of the queue
/// ([`super::RECHECK_INTERVAL`], 10 s, would otherwise find its key gone).
#[tokio::test]
async fn a_queued_campaign_ends_when_its_session_ends() {
    let server = EtcdServer::start().await.unwrap();
    let client = server.client().await.unwrap();
    let prefix = "/tidb/cdc/session-ended/__cdc_meta__/owner";
    let session_a = Session::grant(client.clone(), 10).await.unwrap();
    let session_b = Session::grant(client.clone(), 10).await.unwrap();
    let a = Election::new(&session_a, prefix);
    a.campaign("a", &CancellationToken::new()).await.unwrap();
    let b = Arc::new(Election::new(&session_b, prefix));
    let campaign = spawn_campaign(&b, "b", &CancellationToken::new());
    wait_for_key(&client, b.key()).await;

    session_b.close().await.unwrap();
    let result = timeout(Duration::from_secs(5), campaign)
        .await
        .expect("the campaign ends with its session")
        .unwrap();
    assert!(
        matches!(result, Err(Error::LeaseExpired { lease_id }) if lease_id == session_b.lease_id()),
        "{result:?}"
    );
    assert_eq!(create_revision(&client, b.key()).await, None);
    assert!(a.is_leader());
    session_a.close().await.unwrap();
}
