//! The keep-alive loop against scripted etcd answers (paused time), and cancelled grants against
//! a real etcd.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cdc_etcd::testing::EtcdServer;
use cdc_etcd::{ConnectConfig, EtcdClient, KeepAliveResponse, LeaseId};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Keeper, LeaseStream, LeaseTransport, Session, SessionConfig, SessionEnd, Shared};
use crate::hooks::{KeeperHooks, Pause};

/// Lets a test stop the keeper between the open keep-alive stream and its answer to the grant.
#[derive(Debug, Default)]
struct HandshakeHook {
    /// The lease, set when the keeper reaches the hook.
    lease_id: std::sync::atomic::AtomicI64,
    /// Notified when the keeper reaches the hook.
    reached: tokio::sync::Notify,
    /// The keeper waits for it.
    release: tokio::sync::Notify,
    /// Notified after the keeper answered the grant (whether or not anyone received it).
    answered: tokio::sync::Notify,
}

impl KeeperHooks for HandshakeHook {
    fn before_answer(&self, lease_id: LeaseId) -> Option<Pause<'_>> {
        self.lease_id.store(lease_id, Ordering::SeqCst);
        self.reached.notify_one();
        Some(Box::pin(self.release.notified()))
    }

    fn answered(&self) {
        self.answered.notify_one();
    }
}

const LEASE: LeaseId = 0x694d_7f3a_0000_0001;
const TTL: Duration = Duration::from_secs(9);
/// `TTL / 3`.
const RENEW_EVERY: Duration = Duration::from_secs(3);

type Answer = cdc_etcd::Result<Option<KeepAliveResponse>>;

/// A keep-alive stream that answers each renewal with the next scripted answer, `delay` after
/// the renewal's send, and is silent once the script is used up.
struct ScriptedStream {
    answers: VecDeque<Answer>,
    /// Send times of the renewals not answered yet.
    sent: VecDeque<Instant>,
    delay: Duration,
}

impl ScriptedStream {
    fn new(answers: impl IntoIterator<Item = Answer>) -> ScriptedStream {
        ScriptedStream::delayed(Duration::ZERO, answers)
    }

    /// Answers each renewal `delay` after its send.
    fn delayed(delay: Duration, answers: impl IntoIterator<Item = Answer>) -> ScriptedStream {
        ScriptedStream {
            answers: answers.into_iter().collect(),
            sent: VecDeque::new(),
            delay,
        }
    }
}

impl LeaseStream for ScriptedStream {
    async fn send(&mut self) -> cdc_etcd::Result<()> {
        self.sent.push_back(Instant::now());
        Ok(())
    }

    /// Cancel-safe: nothing changes before the answer's time has come.
    async fn next(&mut self) -> Answer {
        if let Some(&sent) = self.sent.front()
            && !self.answers.is_empty()
        {
            tokio::time::sleep_until(sent + self.delay).await;
            self.sent.pop_front();
            if let Some(answer) = self.answers.pop_front() {
                return answer;
            }
        }
        std::future::pending().await
    }
}

/// Reopens streams from a script; an unreachable etcd once the script is used up.
#[derive(Default)]
struct ScriptedEtcd {
    opens: Mutex<VecDeque<cdc_etcd::Result<ScriptedStream>>>,
}

impl LeaseTransport for ScriptedEtcd {
    type Stream = ScriptedStream;

    async fn open(&self, _lease_id: LeaseId) -> cdc_etcd::Result<ScriptedStream> {
        let next = self
            .opens
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .pop_front();
        match next {
            Some(opened) => opened,
            None => std::future::pending().await,
        }
    }
}

fn alive(id: LeaseId) -> Answer {
    Ok(Some(KeepAliveResponse {
        id,
        ttl: TTL.as_secs() as i64,
    }))
}

/// A keeper whose stream was just opened (its deadline one TTL from now).
fn keeper() -> Keeper {
    Keeper {
        endpoints: Vec::new(),
        connect: ConnectConfig::default(),
        lease_id: LEASE,
        ttl: TTL,
        deadline: Instant::now() + TTL,
        revoke_timeout: Duration::from_secs(1),
        stop: CancellationToken::new(),
        done: CancellationToken::new(),
        shared: Arc::new(Shared::default()),
        hooks: crate::hooks::none(),
    }
}

#[tokio::test(start_paused = true)]
async fn an_answer_about_another_lease_is_loss_at_the_first_renewal() {
    let mut keeper = keeper();
    let start = Instant::now();
    let stream = ScriptedStream::new([alive(LEASE + 1)]);
    let end = keeper.keep_alive(&ScriptedEtcd::default(), stream).await;
    assert_eq!(end, Some(SessionEnd::ForeignLease { id: LEASE + 1 }));
    assert_eq!(
        start.elapsed(),
        RENEW_EVERY,
        "reported at its answer, not later"
    );
    assert!(end.is_some_and(|end| end.is_loss()));
}

#[tokio::test(start_paused = true)]
async fn a_ttl_0_answer_is_loss_at_once() {
    let mut keeper = keeper();
    let start = Instant::now();
    let stream = ScriptedStream::new([
        alive(LEASE),
        Ok(Some(KeepAliveResponse { id: LEASE, ttl: 0 })),
    ]);
    let end = keeper.keep_alive(&ScriptedEtcd::default(), stream).await;
    assert_eq!(end, Some(SessionEnd::LeaseNotFound));
    // The second renewal's answer, long before the deadline the first one set.
    assert_eq!(start.elapsed(), RENEW_EVERY * 2);
    assert_eq!(keeper.shared.renewals.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn lease_not_found_when_reopening_is_loss_at_once() {
    let mut keeper = keeper();
    let start = Instant::now();
    let etcd = ScriptedEtcd::default();
    etcd.opens
        .lock()
        .unwrap()
        .push_back(Err(cdc_etcd::Error::LeaseNotFound { lease_id: LEASE }));
    // The stream ends at the first renewal; the reopen hears "lease not found".
    let stream = ScriptedStream::new([Ok(None)]);
    let end = keeper.keep_alive(&etcd, stream).await;
    assert_eq!(end, Some(SessionEnd::LeaseNotFound));
    let elapsed = start.elapsed();
    // One renewal period plus one reconnect backoff (100 ms + up to 50 % jitter).
    assert!(
        elapsed >= RENEW_EVERY && elapsed <= RENEW_EVERY + Duration::from_millis(150),
        "reported after {elapsed:?}"
    );
}

/// The answer arrives a while after the send, so a deadline dated from the answer's read would
/// come that much later than the one dated from the send.
#[tokio::test(start_paused = true)]
async fn silence_is_loss_one_ttl_after_the_last_acknowledged_send() {
    const ANSWER_DELAY: Duration = Duration::from_secs(2);
    let mut keeper = keeper();
    let start = Instant::now();
    // The first renewal (sent after one period) is acknowledged 2 s after its send, then etcd
    // goes silent (and cannot be reached again).
    let stream = ScriptedStream::delayed(ANSWER_DELAY, [alive(LEASE)]);
    let end = keeper.keep_alive(&ScriptedEtcd::default(), stream).await;
    assert_eq!(end, Some(SessionEnd::DeadlineExceeded));
    assert_eq!(keeper.shared.renewals.load(Ordering::Relaxed), 1);
    // From the send: not `RENEW_EVERY + ANSWER_DELAY + TTL`, the read's date.
    assert_eq!(start.elapsed(), RENEW_EVERY + TTL);
}

/// A reconnect's handshake is an acknowledged renewal: it moves the deadline to one TTL after
/// the reopen's send, past the deadline the first stream had set.
#[tokio::test(start_paused = true)]
async fn a_reconnect_re_arms_the_deadline() {
    let mut keeper = keeper();
    let start = Instant::now();
    let etcd = ScriptedEtcd::default();
    // The reopened stream answers nothing.
    etcd.opens
        .lock()
        .unwrap()
        .push_back(Ok(ScriptedStream::new([])));
    // The first stream ends at the first renewal (after one period); the reopen follows after
    // one reconnect backoff (100 ms + up to 50 % jitter).
    let stream = ScriptedStream::new([Ok(None)]);
    let end = keeper.keep_alive(&etcd, stream).await;
    assert_eq!(end, Some(SessionEnd::DeadlineExceeded));
    assert_eq!(keeper.shared.renewals.load(Ordering::Relaxed), 1);
    // Not at the grant's deadline (one TTL): one TTL after the reopen.
    let elapsed = start.elapsed();
    let reopened_earliest = RENEW_EVERY + Duration::from_millis(100);
    assert!(
        elapsed >= reopened_earliest + TTL
            && elapsed <= reopened_earliest + Duration::from_millis(50) + TTL,
        "reported after {elapsed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stopped_keeper_reports_nothing() {
    let mut keeper = keeper();
    let stop = keeper.stop.clone();
    let stream = ScriptedStream::new([alive(LEASE), alive(LEASE), alive(LEASE)]);
    let etcd = ScriptedEtcd::default();
    let run = keeper.keep_alive(&etcd, stream);
    let stopper = async {
        tokio::time::sleep(RENEW_EVERY * 2 + Duration::from_millis(1)).await;
        stop.cancel();
    };
    let (end, ()) = tokio::join!(run, stopper);
    assert_eq!(end, None);
    assert_eq!(keeper.shared.renewals.load(Ordering::Relaxed), 2);
}

/// Whether this process runs the keep-alive thread of `lease_id` (named after its low 32 bits).
fn keeper_thread_running(lease_id: LeaseId) -> bool {
    let name = format!("lease-{:08x}", lease_id as u32);
    std::fs::read_dir("/proc/self/task")
        .expect("list this process's threads")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .any(|comm| comm.trim_end() == name)
}

/// Polls `check` every 20 ms until it holds, failing after `limit`.
async fn wait_for(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn lease_gone(client: &EtcdClient, lease_id: LeaseId) -> bool {
    client
        .lease_time_to_live(lease_id)
        .await
        .expect("read the lease")
        .ttl
        < 0
}

/// Waits until `lease_id` is revoked (not left to its TTL) and its keep-alive thread is gone.
async fn wait_for_revoke_and_keeper_end(client: &EtcdClient, lease_id: LeaseId) {
    wait_for("the lease's revoke", Duration::from_secs(3), async || {
        lease_gone(client, lease_id).await
    })
    .await;
    wait_for("the keeper's end", Duration::from_secs(3), async || {
        !keeper_thread_running(lease_id)
    })
    .await;
}

/// Starts a grant that stops at the keeper's handshake, and returns it with its lease.
async fn grant_stopped_at_the_handshake(
    client: &EtcdClient,
    hook: &Arc<HandshakeHook>,
) -> (
    std::pin::Pin<Box<impl Future<Output = crate::Result<Session>>>>,
    LeaseId,
) {
    let mut grant = Box::pin(Session::grant_observed(
        client.clone(),
        SessionConfig::new(10),
        Arc::clone(hook) as Arc<dyn KeeperHooks>,
    ));
    tokio::select! {
        () = hook.reached.notified() => {}
        result = &mut grant => panic!("the grant completed past its hook: {result:?}"),
    }
    let lease_id = hook.lease_id.load(Ordering::SeqCst);
    let ttl = client.lease_time_to_live(lease_id).await.unwrap();
    assert!(ttl.ttl > 0, "the lease is granted and kept: {ttl:?}");
    assert!(keeper_thread_running(lease_id));
    (grant, lease_id)
}

#[tokio::test]
async fn a_grant_cancelled_during_the_handshake_revokes_its_lease_and_ends_its_thread() {
    let server = EtcdServer::start().await.unwrap();
    let client = server.client().await.unwrap();
    let hook = Arc::new(HandshakeHook::default());
    let (grant, lease_id) = grant_stopped_at_the_handshake(&client, &hook).await;

    // The caller gives up while the keeper is between its open stream and its answer.
    drop(grant);
    hook.release.notify_one();

    // Revoked, not left to its 10 s TTL, and the thread is gone.
    wait_for_revoke_and_keeper_end(&client, lease_id).await;
}

#[tokio::test]
async fn a_grant_dropped_after_the_keeper_answered_revokes_its_lease_and_ends_its_thread() {
    let server = EtcdServer::start().await.unwrap();
    let client = server.client().await.unwrap();
    let hook = Arc::new(HandshakeHook::default());
    let (grant, lease_id) = grant_stopped_at_the_handshake(&client, &hook).await;

    // The keeper answers and goes on renewing, but the grant is never polled again.
    hook.release.notify_one();
    hook.answered.notified().await;
    drop(grant);

    wait_for_revoke_and_keeper_end(&client, lease_id).await;
}

#[tokio::test]
async fn a_released_handshake_completes_the_grant() {
    let server = EtcdServer::start().await.unwrap();
    let client = server.client().await.unwrap();
    let hook = Arc::new(HandshakeHook::default());
    let (grant, lease_id) = grant_stopped_at_the_handshake(&client, &hook).await;
    hook.release.notify_one();
    let session = grant.await.unwrap();
    assert_eq!(session.lease_id(), lease_id);
    session.close().await.unwrap();
    // `close` joined the thread.
    assert!(!keeper_thread_running(lease_id));
    assert!(lease_gone(&client, lease_id).await);
}
