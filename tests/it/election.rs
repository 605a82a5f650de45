//! Lease sessions and owner election against a real etcd (and real `etcdctl` processes).

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cdc_election::{Election, Error, OwnerFence, Session, SessionConfig, SessionEnd};
use cdc_etcd::testing::{EtcdServer, etcdctl_binary};
use cdc_etcd::{Compare, CompareOp, EtcdClient, GetOptions, Txn, TxnOp};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

use crate::support::{etcd, key_exists};

/// A unique election prefix shaped like TiCDC's owner prefix.
fn owner_prefix(cluster: &str) -> String {
    format!("/tidb/cdc/{cluster}/__cdc_meta__/owner")
}

/// A session that may use TTLs below TiCDC's 5 s minimum (etcd's own floor still applies).
async fn short_session(client: &EtcdClient, ttl_secs: i64) -> Session {
    let config = SessionConfig {
        min_ttl_secs: 1,
        ..SessionConfig::new(ttl_secs)
    };
    Session::grant_with(client.clone(), config)
        .await
        .expect("grant a short session")
}

/// Polls `check` until it holds, failing after `limit`.
async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn queue_len(client: &EtcdClient, prefix: &str) -> usize {
    client
        .get(format!("{prefix}/"), GetOptions::prefix())
        .await
        .expect("read the election queue")
        .kvs
        .len()
}

/// Whether etcd still gives `session`'s lease time to live.
async fn lease_alive(client: &EtcdClient, session: &Session) -> bool {
    client
        .lease_time_to_live(session.lease_id())
        .await
        .expect("read the lease's time to live")
        .ttl
        > 0
}

/// Starts a campaign on its own task.
fn spawn_campaign(
    election: &Arc<Election>,
    value: &str,
    cancel: &CancellationToken,
) -> tokio::task::JoinHandle<Result<OwnerFence, Error>> {
    let election = Arc::clone(election);
    let value = value.to_owned();
    let cancel = cancel.clone();
    tokio::spawn(async move { election.campaign(&value, &cancel).await })
}

/// Two candidates of one election: `a` has won, `b`'s campaign waits in the queue.
struct Contest {
    a: Election,
    fence_a: OwnerFence,
    b: Arc<Election>,
    campaign_b: tokio::task::JoinHandle<Result<OwnerFence, Error>>,
}

/// Lets `a` (on `session_a`) win the election of `prefix`, then starts `b`'s campaign (on
/// `session_b`, under `cancel_b`) and waits until its key is queued.
async fn contest(
    client: &EtcdClient,
    prefix: &str,
    session_a: &Session,
    session_b: &Session,
    cancel_b: &CancellationToken,
) -> Contest {
    let a = Election::new(session_a, prefix);
    let b = Arc::new(Election::new(session_b, prefix));
    let fence_a = Box::pin(a.campaign("a", &CancellationToken::new()))
        .await
        .expect("the first candidate wins at once");
    let campaign_b = spawn_campaign(&b, "b", cancel_b);
    wait_for("b's key", Duration::from_secs(5), || {
        key_exists(client, b.key())
    })
    .await;
    Contest {
        a,
        fence_a,
        b,
        campaign_b,
    }
}

fn etcdctl(server: &EtcdServer) -> Command {
    let mut command = Command::new(etcdctl_binary());
    command
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", server.endpoint()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Forwards each stdout line of `child` with the time it was read, through a bounded channel.
fn stdout_lines(child: &mut Child) -> tokio::sync::mpsc::Receiver<(Instant, String)> {
    let stdout = child.stdout.take().expect("stdout is piped");
    let (lines_tx, lines_rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if lines_tx.send((Instant::now(), line)).await.is_err() {
                break;
            }
        }
    });
    lines_rx
}

async fn next_line_matching(
    lines: &mut tokio::sync::mpsc::Receiver<(Instant, String)>,
    limit: Duration,
    wanted: impl Fn(&str) -> bool,
) -> Instant {
    let deadline = Instant::now() + limit;
    loop {
        let (at, line) = tokio::time::timeout_at(deadline, lines.recv())
            .await
            .expect("timed out waiting for etcdctl output")
            .expect("etcdctl closed its output");
        if wanted(&line) {
            return at;
        }
    }
}

/// Whether this process runs the keep-alive thread of `lease_id` (named `lease-` and the low 32
/// bits of the id, as Linux keeps 15 bytes of a thread name).
fn keeper_thread_running(lease_id: i64) -> bool {
    let name = format!("lease-{:08x}", lease_id as u32);
    std::fs::read_dir("/proc/self/task")
        .expect("list this process's threads")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .any(|comm| comm.trim_end() == name)
}

/// TiCDC's `TestDelegateLease` (`pkg/etcd/client_test.go` in pingcap/tiflow).
#[tokio::test]
async fn session_grants_keeps_and_revokes_its_lease() {
    let (_server, client) = etcd().await;
    let session = Session::grant(client.clone(), 10).await.unwrap();
    assert_eq!(session.ttl(), 10);

    let ttl = client.lease_time_to_live(session.lease_id()).await.unwrap();
    assert_eq!(ttl.granted_ttl, 10);
    assert!(0 < ttl.ttl && ttl.ttl < 10, "{ttl:?}");
    assert!(keeper_thread_running(session.lease_id()));

    session.close().await.unwrap();
    // `close` joined the keep-alive thread.
    assert!(!keeper_thread_running(session.lease_id()));
    assert_eq!(
        client
            .lease_time_to_live(session.lease_id())
            .await
            .unwrap()
            .ttl,
        -1
    );
    assert!(session.done().is_done());
    assert_eq!(session.end(), Some(SessionEnd::Closed));
    // Closing again, with the lease gone, is fine.
    session.close().await.unwrap();
}

#[test]
fn a_capture_session_ttl_below_five_seconds_becomes_ten() {
    assert_eq!(SessionConfig::new(3).effective_ttl_secs(), 10);
    assert_eq!(SessionConfig::new(0).effective_ttl_secs(), 10);
    assert_eq!(SessionConfig::new(5).effective_ttl_secs(), 5);
    assert_eq!(SessionConfig::new(30).effective_ttl_secs(), 30);
}

#[tokio::test]
async fn the_granted_ttl_is_used_when_etcd_raises_a_short_one() {
    let (_server, client) = etcd().await;
    let session = short_session(&client, 1).await;
    assert_eq!(session.ttl(), 2, "etcd's minimum TTL is 2 s");
    assert_eq!(
        client
            .lease_time_to_live(session.lease_id())
            .await
            .unwrap()
            .granted_ttl,
        2
    );
    // Three granted TTLs later the lease is still held, renewed about every 2/3 s.
    let done = session.done();
    assert!(
        timeout(Duration::from_secs(6), done.wait()).await.is_err(),
        "session ended: {:?}",
        session.end()
    );
    assert!(session.renewals() >= 6, "renewals: {}", session.renewals());
    assert!(lease_alive(&client, &session).await);
    session.close().await.unwrap();
}

#[tokio::test]
async fn an_uncontested_campaign_wins_at_once() {
    let (_server, client) = etcd().await;
    let prefix = owner_prefix("uncontested");
    let session = Session::grant(client.clone(), 5).await.unwrap();
    let election = Election::new(&session, &prefix);

    assert!(matches!(
        election.owner_revision().await,
        Err(Error::OwnerNotFound)
    ));
    assert_eq!(election.leader().await.unwrap(), None);

    let fence = timeout(
        Duration::from_secs(5),
        election.campaign("capture-a", &CancellationToken::new()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        fence.key,
        format!("{prefix}/{:x}", session.lease_id()).into_bytes()
    );
    let kv = client
        .get(fence.key.clone(), GetOptions::default())
        .await
        .unwrap()
        .kvs
        .remove(0);
    assert_eq!(kv.create_revision, fence.create_revision);
    assert_eq!(kv.lease, session.lease_id());
    assert_eq!(kv.value, b"capture-a");
    assert!(election.is_leader());
    assert_eq!(
        election.leader().await.unwrap().as_deref(),
        Some("capture-a")
    );
    assert_eq!(
        election.owner_revision().await.unwrap(),
        fence.create_revision
    );
    assert!(matches!(
        election.owner_revision_of("capture-b").await,
        Err(Error::NotLeader)
    ));

    election.resign().await.unwrap();
    assert!(!election.is_leader());
    assert_eq!(election.leader().await.unwrap(), None);
    // Resigning without a key is Ok.
    election.resign().await.unwrap();
    session.close().await.unwrap();
}

/// The create revision of `key`, if it exists.
async fn create_revision(client: &EtcdClient, key: &[u8]) -> Option<i64> {
    client
        .get(key.to_vec(), GetOptions::default())
        .await
        .expect("read a key")
        .kvs
        .first()
        .map(|kv| kv.create_revision)
}

/// How the two sessions of a contest are granted.
#[derive(Clone, Copy, Debug)]
enum Sessions {
    /// [`short_session`]s of this TTL in seconds.
    Short(i64),
    /// Sessions under TiCDC's rules, of this TTL in seconds.
    Standard(i64),
}

impl Sessions {
    async fn grant(self, client: &EtcdClient) -> Session {
        match self {
            Sessions::Short(ttl_secs) => short_session(client, ttl_secs).await,
            Sessions::Standard(ttl_secs) => Session::grant(client.clone(), ttl_secs)
                .await
                .expect("grant a session"),
        }
    }
}

/// What happens while `a` leads and `b` waits in the queue.
#[derive(Clone, Copy, Debug)]
enum WhileQueued {
    /// Three of `b`'s TTLs pass.
    ThreeTtls,
    /// etcd is killed, stays down for half a second and comes back; then 3 s pass. The restart
    /// breaks `b`'s watch and fails its reads for a while, as a leader change would.
    EtcdRestart,
    /// `b`'s lease is revoked behind its back.
    LeaseRevoked,
    /// `b`'s campaign is cancelled.
    CampaignCancelled,
}

/// How a contest ends.
#[derive(Clone, Copy, Debug)]
enum Outcome {
    /// `b` waited without winning or losing its lease, its key or its place; `a` resigns and
    /// `b` wins within the bound with the key it queued.
    WinsAfterResign { within: Duration },
    /// `a` resigns; `b`'s campaign fails with `LeaseExpired`, its session reports the lease
    /// gone, and a new campaign on the lease is refused at once.
    LeaseExpired,
    /// `b`'s campaign ends `Cancelled` and takes its key away; `a` still leads.
    Cancelled,
}

/// A contest between two candidates of one election: `a` wins, `b` queues behind it,
/// something happens while `b` waits, and the contest ends in the expected way.
#[derive(Clone, Copy, Debug)]
struct ContestCase {
    /// The cluster whose owner prefix the election uses.
    cluster: &'static str,
    sessions: Sessions,
    while_queued: WhileQueued,
    outcome: Outcome,
}

/// Runs `case` against an etcd of its own.
async fn run_contest(case: ContestCase) {
    let (mut server, client) = etcd().await;
    let prefix = owner_prefix(case.cluster);
    let session_a = case.sessions.grant(&client).await;
    let session_b = case.sessions.grant(&client).await;
    let cancel_b = CancellationToken::new();
    let Contest {
        a,
        fence_a,
        b,
        mut campaign_b,
    } = contest(&client, &prefix, &session_a, &session_b, &cancel_b).await;
    let queued_at = create_revision(&client, b.key())
        .await
        .expect("b is queued");

    match case.while_queued {
        WhileQueued::ThreeTtls => {
            let ttl = Duration::from_secs(u64::try_from(session_b.ttl()).expect("a positive TTL"));
            assert!(timeout(ttl * 3, &mut campaign_b).await.is_err());
        }
        WhileQueued::EtcdRestart => {
            server.kill().expect("kill etcd");
            let killed = Instant::now();
            // The fault itself, not a synchronisation: etcd stays down for half a second,
            // longer than the candidate's retries took before they were unbounded.
            tokio::time::sleep(Duration::from_millis(500)).await;
            server.restart().await.expect("restart etcd");
            let outage = killed.elapsed();
            // Longer than the longest retry pause: the candidate has read the queue again since.
            if let Ok(ended) = timeout(Duration::from_secs(3), &mut campaign_b).await {
                panic!("the queued campaign ended after an outage of {outage:?}: {ended:?}");
            }
        }
        WhileQueued::LeaseRevoked => {
            client
                .lease_revoke(session_b.lease_id())
                .await
                .expect("revoke b's lease");
        }
        WhileQueued::CampaignCancelled => cancel_b.cancel(),
    }

    let b_session_open = match case.outcome {
        Outcome::WinsAfterResign { within } => {
            // b retried instead of failing: it neither won nor lost its lease, its key or
            // its place.
            assert!(!session_b.done().is_done(), "{:?}", session_b.end());
            assert!(key_exists(&client, b.key()).await);
            assert_eq!(create_revision(&client, b.key()).await, Some(queued_at));
            assert_eq!(
                b.leader().await.expect("read the leader").as_deref(),
                Some("a")
            );

            a.resign().await.expect("a resigns");
            let fence_b = timeout(within, campaign_b)
                .await
                .expect("b wins after the resign")
                .expect("the campaign task")
                .expect("b's campaign");
            assert_eq!(fence_b.create_revision, queued_at);
            assert!(fence_b.create_revision > fence_a.create_revision);
            assert!(b.is_leader());
            assert_eq!(
                b.leader().await.expect("read the leader").as_deref(),
                Some("b")
            );
            true
        }
        Outcome::LeaseExpired => {
            a.resign().await.expect("a resigns");
            let result = timeout(Duration::from_secs(5), campaign_b)
                .await
                .expect("b's campaign ends")
                .expect("the campaign task");
            assert!(
                matches!(result, Err(Error::LeaseExpired { lease_id }) if lease_id == session_b.lease_id()),
                "{result:?}"
            );
            assert!(!b.is_leader());
            assert_eq!(b.leader().await.expect("read the leader"), None);
            // The session noticed as well.
            timeout(Duration::from_secs(6), session_b.done().wait())
                .await
                .expect("b's session ends");
            assert_eq!(session_b.end(), Some(SessionEnd::LeaseNotFound));

            // A campaign started on the revoked lease is refused at once.
            let result = b.campaign("b", &cancel_b).await;
            assert!(
                matches!(result, Err(Error::LeaseExpired { .. })),
                "{result:?}"
            );
            assert_eq!(queue_len(&client, &prefix).await, 0);
            false
        }
        Outcome::Cancelled => {
            let result = timeout(Duration::from_secs(5), campaign_b)
                .await
                .expect("b's campaign ends")
                .expect("the campaign task");
            assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
            assert!(!key_exists(&client, b.key()).await);
            assert_eq!(queue_len(&client, &prefix).await, 1);

            // An already-cancelled campaign does nothing.
            assert!(matches!(
                b.campaign("b", &cancel_b).await,
                Err(Error::Cancelled)
            ));
            assert_eq!(queue_len(&client, &prefix).await, 1);
            assert_eq!(
                a.leader().await.expect("read the leader").as_deref(),
                Some("a")
            );
            true
        }
    };
    session_a.close().await.expect("close a's session");
    if b_session_open {
        session_b.close().await.expect("close b's session");
    }
}

/// One test per row of the contest table, each running [`run_contest`].
macro_rules! contests {
    ($($(#[doc = $doc:literal])* $name:ident: $case:expr;)*) => {$(
        $(#[doc = $doc])*
        #[tokio::test]
        async fn $name() {
            run_contest($case).await;
        }
    )*};
}

contests! {
    /// How long the hand-over takes is measured by the failover benchmark (`cargo xtask bench
    /// failover`, graceful case), not asserted here: a loaded machine stretches it.
    a_queued_candidate_survives_three_ttls_and_takes_over_at_a_resign: ContestCase {
        cluster: "queued",
        sessions: Sessions::Short(2),
        while_queued: WhileQueued::ThreeTtls,
        outcome: Outcome::WinsAfterResign { within: Duration::from_secs(10) },
    };
    /// The candidate retries instead of failing, keeps its key and its place, and wins when
    /// the leader resigns.
    a_queued_candidate_keeps_its_place_across_an_etcd_restart: ContestCase {
        cluster: "restart-queued",
        sessions: Sessions::Standard(10),
        while_queued: WhileQueued::EtcdRestart,
        outcome: Outcome::WinsAfterResign { within: Duration::from_secs(5) },
    };
    a_win_on_an_already_revoked_lease_is_rejected: ContestCase {
        cluster: "revoked",
        sessions: Sessions::Standard(5),
        while_queued: WhileQueued::LeaseRevoked,
        outcome: Outcome::LeaseExpired,
    };
    a_cancelled_campaign_leaves_no_key: ContestCase {
        cluster: "cancelled",
        sessions: Sessions::Standard(5),
        while_queued: WhileQueued::CampaignCancelled,
        outcome: Outcome::Cancelled,
    };
}

/// A campaign that starts while etcd is down retries its create until etcd is back.
#[tokio::test]
async fn a_campaign_started_while_etcd_is_down_wins_once_it_is_back() {
    const TTL_SECS: i64 = 10;
    let (mut server, client) = etcd().await;
    let prefix = owner_prefix("restart-create");
    let session = Session::grant(client.clone(), TTL_SECS).await.unwrap();
    let election = Arc::new(Election::new(&session, &prefix));

    server.kill().unwrap();
    let mut campaign = spawn_campaign(&election, "c", &CancellationToken::new());
    if let Ok(ended) = timeout(Duration::from_millis(500), &mut campaign).await {
        panic!("the campaign ended while etcd was down: {ended:?}");
    }
    server.restart().await.unwrap();
    let fence = timeout(Duration::from_secs(10), campaign)
        .await
        .expect("the campaign wins once etcd is back")
        .unwrap()
        .unwrap();
    assert_eq!(fence.key, election.key());
    assert_eq!(
        create_revision(&client, election.key()).await,
        Some(fence.create_revision)
    );
    assert_eq!(queue_len(&client, &prefix).await, 1);
    assert_eq!(election.leader().await.unwrap().as_deref(), Some("c"));
    session.close().await.unwrap();
}

/// The leader is a real process: `etcdctl lease keep-alive` holds the leader's lease and is
/// killed with SIGKILL, so the lease ends exactly as a crashed capture's would.
#[tokio::test]
async fn after_the_leader_process_is_killed_the_next_candidate_wins_once_the_lease_expires() {
    const TTL_SECS: i64 = 5;
    let (server, client) = etcd().await;
    let prefix = owner_prefix("killed");

    let leader_lease = client.lease_grant(TTL_SECS).await.unwrap();
    let mut keeper = etcdctl(&server)
        .args(["lease", "keep-alive", &format!("{:x}", leader_lease.id)])
        .spawn()
        .unwrap();
    let mut renewals = stdout_lines(&mut keeper);
    next_line_matching(&mut renewals, Duration::from_secs(5), |line| {
        line.contains("keepalived")
    })
    .await;
    // The leader's candidate key, as Go's `Campaign` writes it on that lease.
    let leader_key = format!("{prefix}/{:x}", leader_lease.id);
    client
        .put(leader_key.as_str(), "crashed", leader_lease.id)
        .await
        .unwrap();
    let never = CancellationToken::new();

    let session = Session::grant(client.clone(), TTL_SECS).await.unwrap();
    let next = Arc::new(Election::new(&session, &prefix));
    let campaign = spawn_campaign(&next, "next", &never);
    wait_for("the next candidate's key", Duration::from_secs(5), || {
        key_exists(&client, next.key())
    })
    .await;

    // Kill right after a fresh renewal, and ask etcd first how long the lease has left: whole
    // seconds, rounded down, so the lease lives at least that long after the read.
    while renewals.try_recv().is_ok() {}
    next_line_matching(&mut renewals, Duration::from_secs(10), |line| {
        line.contains("keepalived")
    })
    .await;
    let read_at = Instant::now();
    let left = client
        .lease_time_to_live(leader_lease.id)
        .await
        .unwrap()
        .ttl;
    assert!(
        left > 0,
        "the leader's lease is alive before the kill: {left}"
    );
    keeper.start_kill().unwrap();
    keeper.wait().await.unwrap();

    // The bound is generous for a loaded machine: the failover benchmark (`cargo xtask bench
    // failover`, crash case) measures how soon after the expiry the next candidate wins.
    let ttl = Duration::from_secs(TTL_SECS.unsigned_abs());
    timeout(ttl + Duration::from_secs(10), campaign)
        .await
        .expect("the next candidate wins once the lease expires")
        .unwrap()
        .unwrap();
    let since_read = read_at.elapsed();
    // Not before the lease could expire: by etcd's own count, and gone by the win.
    let left = Duration::from_secs(left.unsigned_abs());
    assert!(
        since_read >= left,
        "won {since_read:?} after etcd gave the lease {left:?} more"
    );
    assert!(
        client
            .lease_time_to_live(leader_lease.id)
            .await
            .unwrap()
            .ttl
            < 0,
        "won while the leader's lease was alive"
    );
    assert_eq!(next.leader().await.unwrap().as_deref(), Some("next"));
    session.close().await.unwrap();
}

#[tokio::test]
async fn a_stale_leaders_fenced_write_is_refused_even_at_the_current_data_revision() {
    let (_server, client) = etcd().await;
    let prefix = owner_prefix("fenced");
    let data_key = b"/tidb/cdc/fenced/default/changefeed/info/cf".to_vec();
    let never = CancellationToken::new();

    let session_a = Session::grant(client.clone(), 5).await.unwrap();
    let a = Election::new(&session_a, &prefix);
    let fence_a = a.campaign("a", &never).await.unwrap();
    let data_revision = client.put(data_key.clone(), "v1", 0).await.unwrap();

    // a is deposed (its lease ends) without noticing; b wins.
    client.lease_revoke(session_a.lease_id()).await.unwrap();
    let session_b = Session::grant(client.clone(), 5).await.unwrap();
    let b = Election::new(&session_b, &prefix);
    let fence_b = b.campaign("b", &never).await.unwrap();

    let fenced_put = |fence: &OwnerFence, value: &str| Txn {
        compares: vec![
            fence.compare(),
            Compare::ModRevision {
                key: data_key.clone(),
                op: CompareOp::Equal,
                revision: data_revision,
            },
        ],
        success: vec![TxnOp::Put {
            key: data_key.clone(),
            value: value.as_bytes().to_vec(),
            lease: 0,
        }],
        failure: vec![],
    };
    assert!(
        !client
            .txn(fenced_put(&fence_a, "stale"))
            .await
            .unwrap()
            .succeeded
    );
    assert!(
        client
            .txn(fenced_put(&fence_b, "fresh"))
            .await
            .unwrap()
            .succeeded
    );
    let value = client
        .get(data_key.clone(), GetOptions::default())
        .await
        .unwrap()
        .kvs
        .remove(0)
        .value;
    assert_eq!(value, b"fresh");
    session_b.close().await.unwrap();
}

/// Dropping a session is a crash: nothing is revoked, renewals stop, the lease runs out.
#[tokio::test]
async fn a_dropped_session_revokes_nothing_and_its_lease_expires_by_ttl() {
    const TTL_SECS: i64 = 3;
    let (_server, client) = etcd().await;
    let session = short_session(&client, TTL_SECS).await;
    let lease_id = session.lease_id();
    let key = "/tidb/cdc/dropped/__cdc_meta__/capture/c";
    client.put(key, "{}", lease_id).await.unwrap();

    drop(session);
    let dropped = Instant::now();
    let left = client.lease_time_to_live(lease_id).await.unwrap().ttl;
    assert!(
        left > 0,
        "the lease is still alive right after the drop: ttl {left}"
    );
    assert!(key_exists(&client, key.as_bytes()).await);
    // The detached keep-alive thread ends on its own.
    wait_for(
        "the keep-alive thread's end",
        Duration::from_secs(2),
        || {
            let running = keeper_thread_running(lease_id);
            async move { !running }
        },
    )
    .await;

    let ttl = Duration::from_secs(TTL_SECS.unsigned_abs());
    wait_for(
        "the lease's expiry",
        ttl + Duration::from_secs(2),
        || async { client.lease_time_to_live(lease_id).await.unwrap().ttl < 0 },
    )
    .await;
    let expired_after = dropped.elapsed();
    // etcd reports whole seconds (rounded down): the lease ran for at least `left` of them.
    let left = Duration::from_secs(left.unsigned_abs());
    assert!(
        expired_after >= left,
        "gone {expired_after:?} after the drop, sooner than its remaining {left:?}"
    );
    assert!(!key_exists(&client, key.as_bytes()).await);
}

/// A lease revoked out of band is reported by the next renewal's TTL-0 answer, long before the
/// TTL could run out.
#[tokio::test]
async fn a_lease_revoked_out_of_band_ends_the_session_at_the_next_renewal() {
    const TTL_SECS: i64 = 10;
    let (server, client) = etcd().await;
    let session = Session::grant(client.clone(), TTL_SECS).await.unwrap();
    server.revoke_lease(session.lease_id()).await.unwrap();
    let revoked = Instant::now();
    let ttl = Duration::from_secs(TTL_SECS.unsigned_abs());
    // The next renewal is at most TTL/3 away.
    timeout(ttl / 3 + Duration::from_secs(1), session.done().wait())
        .await
        .unwrap_or_else(|_| panic!("no loss {:?} after the revoke", revoked.elapsed()));
    assert_eq!(session.end(), Some(SessionEnd::LeaseNotFound));
    assert!(session.end().is_some_and(|end| end.is_loss()));
    // Closing a lost session is fine: the lease is already gone.
    session.close().await.unwrap();
    assert!(!keeper_thread_running(session.lease_id()));
}

#[tokio::test]
async fn the_session_reports_loss_within_its_ttl_when_etcd_is_paused() {
    const TTL_SECS: i64 = 5;
    let (mut server, client) = etcd().await;
    let session = Session::grant(client.clone(), TTL_SECS).await.unwrap();
    wait_for("a renewal", Duration::from_secs(5), || {
        let renewals = session.renewals();
        async move { renewals >= 2 }
    })
    .await;

    // The deadline is one TTL after the send of the last acknowledged renewal, which came
    // before the pause: two TTLs leave a loaded machine room, while a session without its
    // watchdog would wait for HTTP/2 keep-alive to notice (10 s + 3 s), or forever. When within
    // the TTL loss is reported is checked exactly, on paused time, by the unit tests of the
    // keep-alive loop (`crates/cdc-election/src/session/tests.rs`).
    server.pause().unwrap();
    let paused = Instant::now();
    let ttl = Duration::from_secs(TTL_SECS.unsigned_abs());
    let reported = timeout(ttl * 2, session.done().wait()).await;
    let after = paused.elapsed();
    server.resume().unwrap();
    assert!(
        reported.is_ok(),
        "no loss reported {after:?} after the pause"
    );
    assert_eq!(session.end(), Some(SessionEnd::DeadlineExceeded));
}

#[tokio::test]
async fn the_session_survives_an_etcd_restart_within_its_ttl() {
    const TTL_SECS: i64 = 10;
    let (mut server, client) = etcd().await;
    let session = Session::grant(client.clone(), TTL_SECS).await.unwrap();
    client
        .put(
            "/tidb/cdc/restart/__cdc_meta__/capture/c",
            "{}",
            session.lease_id(),
        )
        .await
        .unwrap();

    server.kill().unwrap();
    let killed = Instant::now();
    server.restart().await.unwrap();
    let restarted_at = session.renewals();
    wait_for(
        "renewals on a reopened stream",
        Duration::from_secs(10),
        || {
            let renewals = session.renewals();
            async move { renewals >= restarted_at + 2 }
        },
    )
    .await;
    // Past the deadline the kill would have caused without a reconnect, the session holds.
    let ttl = Duration::from_secs(TTL_SECS.unsigned_abs());
    assert!(
        tokio::time::timeout_at(killed + ttl + Duration::from_secs(1), session.done().wait())
            .await
            .is_err(),
        "session ended: {:?}",
        session.end()
    );
    assert!(lease_alive(&client, &session).await);
    assert!(key_exists(&client, b"/tidb/cdc/restart/__cdc_meta__/capture/c").await);
    session.close().await.unwrap();
}

/// TiCDC's `TestGetOwnerRevision` (`pkg/etcd/etcd_test.go` in pingcap/tiflow): three candidates,
/// 16 terms.
#[tokio::test]
async fn owner_revisions_strictly_increase_over_sixteen_terms_of_three_candidates() {
    const TERMS: usize = 16;
    let (_server, client) = etcd().await;
    let prefix = owner_prefix("terms");
    let observer_session = Session::grant(client.clone(), 5).await.unwrap();
    let observer = Election::new(&observer_session, &prefix);
    assert!(matches!(
        observer.owner_revision_of("capture-0").await,
        Err(Error::OwnerNotFound)
    ));

    let terms = Arc::new(AtomicUsize::new(0));
    let revisions = Arc::new(Mutex::new(Vec::new()));
    let stop = CancellationToken::new();
    let mut candidates = tokio::task::JoinSet::new();
    for n in 0..3 {
        let session = Session::grant(client.clone(), 5).await.unwrap();
        let election = Election::new(&session, &prefix);
        let (terms, revisions, stop) = (terms.clone(), revisions.clone(), stop.clone());
        let capture_id = format!("capture-{n}");
        let other_id = format!("capture-{}", (n + 1) % 3);
        candidates.spawn(async move {
            loop {
                let fence = match election.campaign(&capture_id, &stop).await {
                    Ok(fence) => fence,
                    Err(Error::Cancelled) => break,
                    Err(err) => panic!("campaign of {capture_id}: {err}"),
                };
                let revision = election.owner_revision_of(&capture_id).await.unwrap();
                assert_eq!(revision, fence.create_revision);
                assert!(matches!(
                    election.owner_revision_of(&other_id).await,
                    Err(Error::NotLeader)
                ));
                revisions
                    .lock()
                    .unwrap()
                    .push((revision, capture_id.clone()));
                election.resign().await.unwrap();
                if terms.fetch_add(1, Ordering::SeqCst) + 1 >= TERMS {
                    stop.cancel();
                    break;
                }
            }
            session.close().await.unwrap();
        });
    }
    timeout(Duration::from_secs(30), async {
        while let Some(joined) = candidates.join_next().await {
            joined.unwrap();
        }
    })
    .await
    .unwrap();

    let revisions = revisions.lock().unwrap().clone();
    assert!(revisions.len() >= TERMS, "{revisions:?}");
    assert!(
        revisions.windows(2).all(|pair| pair[0].0 < pair[1].0),
        "{revisions:?}"
    );
    for n in 0..3 {
        let id = format!("capture-{n}");
        assert!(
            revisions.iter().any(|(_, owner)| *owner == id),
            "{revisions:?}"
        );
    }
    assert_eq!(queue_len(&client, &prefix).await, 0);
    observer_session.close().await.unwrap();
}

/// Go's `concurrency.Election` (here `etcdctl elect`) and ours share one election.
#[tokio::test]
async fn etcdctl_elect_and_our_candidate_share_the_election() {
    let (server, client) = etcd().await;
    let prefix = owner_prefix("interop");

    let mut go_candidate = etcdctl(&server)
        .args(["elect", &prefix, "go-capture"])
        .spawn()
        .unwrap();
    let mut go_output = stdout_lines(&mut go_candidate);
    next_line_matching(&mut go_output, Duration::from_secs(10), |line| {
        line == "go-capture"
    })
    .await;

    let session = Session::grant(client.clone(), 5).await.unwrap();
    let ours = Arc::new(Election::new(&session, &prefix));
    let campaign = spawn_campaign(&ours, "rust-capture", &CancellationToken::new());
    wait_for("our key", Duration::from_secs(5), || {
        key_exists(&client, ours.key())
    })
    .await;
    assert_eq!(ours.leader().await.unwrap().as_deref(), Some("go-capture"));
    assert!(!campaign.is_finished());
    assert!(matches!(ours.owner_revision().await, Err(Error::NotLeader)));

    // SIGINT makes etcdctl resign; ours takes over.
    let pid = go_candidate.id().unwrap().to_string();
    let status = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    timeout(Duration::from_secs(5), campaign)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    go_candidate.wait().await.unwrap();

    let mut observer = etcdctl(&server)
        .args(["elect", "-l", &prefix])
        .spawn()
        .unwrap();
    let mut observed = stdout_lines(&mut observer);
    next_line_matching(&mut observed, Duration::from_secs(10), |line| {
        line == "rust-capture"
    })
    .await;
    observer.start_kill().unwrap();
    observer.wait().await.unwrap();
    session.close().await.unwrap();
}

/// The keep-alive has its own thread and runtime: an application runtime that is blocked for
/// longer than the TTL does not lose the lease.
#[tokio::test(flavor = "current_thread")]
async fn a_blocked_application_runtime_does_not_starve_the_keep_alive() {
    const RENEWALS: u64 = 3;
    let (_server, client) = etcd().await;
    let session = short_session(&client, 2).await;
    let ttl = Duration::from_secs(u64::try_from(session.ttl()).unwrap());
    let before = session.renewals();
    // Deliberately block the only thread of the test's runtime for two TTLs at least, and
    // until the keep-alive has renewed a few times meanwhile (bounded: a keep-alive that ran
    // on this runtime would never renew).
    let blocked = std::time::Instant::now();
    loop {
        let elapsed = blocked.elapsed();
        if elapsed >= ttl * 2 && session.renewals() >= before + RENEWALS {
            break;
        }
        assert!(
            elapsed < Duration::from_secs(60),
            "renewals went from {before} to {} in {elapsed:?}",
            session.renewals()
        );
        #[allow(
            clippy::disallowed_methods,
            reason = "the test simulates a starved application runtime"
        )]
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!session.done().is_done(), "{:?}", session.end());
    assert!(lease_alive(&client, &session).await);
    session.close().await.unwrap();
}
