//! Cases 87–92 of capture-spec §8: the capture with doubles for the session, the election and
//! the owner, on a real etcd.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use cdc_election::OwnerFence;
use cdc_etcd::testing::EtcdServer;
use cdc_etcd::{CdcEtcdClient, EtcdClient, GetOptions, Revision};
use cdc_model::Liveness;
use cdc_orchestrator::GlobalReactorState;
use cdc_p2p::{MessageRouter, MessageServer, ServerConfig, ServerWrapper};
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::reactor::Tick;

const CLUSTER: &str = "capture-test";

async fn etcd() -> (EtcdServer, CdcEtcdClient) {
    let server = EtcdServer::start().await.unwrap();
    let client = server.client().await.unwrap();
    let etcd = CdcEtcdClient::new(client, CLUSTER).await.unwrap();
    (server, etcd)
}

fn config(server: &EtcdServer) -> Config {
    let mut config = Config {
        pd: server.endpoint(),
        cluster_id: CLUSTER.to_owned(),
        capture_session_ttl: 5,
        ..Config::default()
    };
    config.validate_and_adjust().unwrap();
    config
}

fn capture(server: &EtcdServer, etcd: &CdcEtcdClient, parts: CaptureParts) -> Arc<Capture> {
    Capture::new(
        config(server),
        etcd.clone(),
        parts,
        Arc::new(Metrics::new()),
        ServerWrapper::new(&ServerConfig::default()),
    )
}

/// Grants that always miss their deadline.
#[derive(Default)]
struct DeadlineSessions {
    grants: AtomicUsize,
}

impl SessionFactory for DeadlineSessions {
    fn grant<'a>(
        &'a self,
        _ttl: i64,
        _cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Session>> {
        self.grants.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Err(Error::DeadlineExceeded { op: "lease grant" }) })
    }
}

/// An election that wins at once (writing a real owner key without lease, so the fenced
/// worker sees it), or never wins when `never_wins`; it can drain the capture while
/// campaigning.
#[derive(Default)]
struct ElectionDouble {
    client: OnceLock<EtcdClient>,
    never_wins: bool,
    drain_while_campaigning: OnceLock<Weak<Capture>>,
    campaigned: AtomicBool,
    resigned: AtomicBool,
    revision: OnceLock<Revision>,
    resign: ResignDouble,
    resign_gate: tokio::sync::Notify,
    owner_revision: OwnerRevisionDouble,
}

/// What the election double's `owner_revision` does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum OwnerRevisionDouble {
    /// Answers the revision of the won campaign.
    #[default]
    Answers,
    /// Fails with an etcd error.
    Fails,
    /// Never returns.
    Hangs,
}

/// What the election double's resign does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum ResignDouble {
    /// Deletes the owner key.
    #[default]
    Deletes,
    /// Fails with an etcd error.
    Fails,
    /// Never returns.
    Hangs,
    /// Waits for `resign_gate`, then deletes the owner key.
    Gated,
}

impl ElectionDouble {
    fn key() -> Vec<u8> {
        format!("{}/1", cdc_etcd::key::owner_prefix(CLUSTER)).into_bytes()
    }
}

impl Election for ElectionDouble {
    fn campaign<'a>(
        &'a self,
        value: &'a str,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<OwnerFence>> {
        Box::pin(async move {
            self.campaigned.store(true, Ordering::SeqCst);
            if self.never_wins {
                cancel.cancelled().await;
                return Err(Error::Cancelled);
            }
            if let Some(capture) = self.drain_while_campaigning.get().and_then(Weak::upgrade) {
                capture.drain().await;
            }
            let client = self.client.get().expect("the test sets the client");
            let revision = client.put(Self::key(), value, 0).await?;
            let _ = self.revision.set(revision);
            Ok(OwnerFence {
                key: Self::key(),
                create_revision: revision,
            })
        })
    }

    fn resign(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.resigned.store(true, Ordering::SeqCst);
            match self.resign {
                ResignDouble::Deletes => {}
                ResignDouble::Fails => {
                    return Err(Error::Etcd(cdc_etcd::Error::LeaseNotFound { lease_id: 1 }));
                }
                ResignDouble::Hangs => futures::future::pending::<()>().await,
                ResignDouble::Gated => self.resign_gate.notified().await,
            }
            if let Some(client) = self.client.get() {
                client.delete(Self::key(), false).await?;
            }
            Ok(())
        })
    }

    fn owner_revision<'a>(&'a self, _capture_id: &'a str) -> BoxFuture<'a, Result<Revision>> {
        Box::pin(async move {
            match self.owner_revision {
                OwnerRevisionDouble::Answers => {}
                OwnerRevisionDouble::Fails => return Err(Error::Etcd(unavailable())),
                OwnerRevisionDouble::Hangs => futures::future::pending::<()>().await,
            }
            self.revision.get().copied().ok_or(Error::OwnerNotFound)
        })
    }
}

struct Elections(Arc<ElectionDouble>);

impl ElectionFactory for Elections {
    fn create(&self, session: &Session, _prefix: &str) -> Arc<dyn Election> {
        let _ = self.0.client.set(session.client().clone());
        Arc::clone(&self.0) as Arc<dyn Election>
    }
}

/// An owner that runs until asked to stop.
#[derive(Default)]
struct OwnerDouble {
    stopped: AtomicBool,
}

impl Owner for OwnerDouble {
    fn tick<'a>(&'a self, _state: &'a mut GlobalReactorState) -> BoxFuture<'a, Result<Tick>> {
        Box::pin(async move {
            Ok(if self.stopped.load(Ordering::SeqCst) {
                Tick::Finished
            } else {
                Tick::Continue
            })
        })
    }

    fn async_stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }
}

struct Owners(Arc<OwnerDouble>);

impl OwnerFactory for Owners {
    fn create(&self, _context: ReactorContext) -> Arc<dyn Owner> {
        Arc::clone(&self.0) as Arc<dyn Owner>
    }
}

fn parts(etcd: &CdcEtcdClient, election: &Arc<ElectionDouble>) -> CaptureParts {
    CaptureParts {
        elections: Arc::new(Elections(Arc::clone(election))),
        ..CaptureParts::production(etcd)
    }
}

fn incarnation(election: &Arc<ElectionDouble>, client: &EtcdClient) -> Incarnation {
    let _ = election.client.set(client.clone());
    Incarnation {
        capture_id: "double".to_owned(),
        lease_id: 1,
        session_done: CancellationToken::new(),
        election: Arc::clone(election) as Arc<dyn Election>,
        message_server: Arc::new(MessageServer::new("double", ServerConfig::default())),
        router: Arc::new(MessageRouter::new("double", Default::default())),
        init_pool: Arc::new(InitPool::new(CHANGEFEED_INIT_WORKERS)),
    }
}

/// Runs `capture` on its own task, under a token that [`stop_run`] cancels.
fn spawn_run(capture: &Arc<Capture>) -> (CancellationToken, tokio::task::JoinHandle<Result<()>>) {
    let cancel = CancellationToken::new();
    let run = tokio::spawn({
        let capture = Arc::clone(capture);
        let cancel = cancel.clone();
        async move { capture.run(cancel).await }
    });
    (cancel, run)
}

/// Cancels a run and checks that it returns `Ok` within `within`.
async fn stop_run(
    cancel: &CancellationToken,
    run: tokio::task::JoinHandle<Result<()>>,
    within: Duration,
) {
    cancel.cancel();
    let result = tokio::time::timeout(within, run)
        .await
        .unwrap_or_else(|_| panic!("run returns within {within:?}"))
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
}

/// Runs a capture whose owner is an [`OwnerDouble`] and waits until it is the owner.
async fn run_owner(
    server: &EtcdServer,
    etcd: &CdcEtcdClient,
    election: &Arc<ElectionDouble>,
) -> (
    Arc<OwnerDouble>,
    Arc<Capture>,
    CancellationToken,
    tokio::task::JoinHandle<Result<()>>,
) {
    let owner = Arc::new(OwnerDouble::default());
    let parts = CaptureParts {
        owners: Arc::new(Owners(Arc::clone(&owner))),
        ..parts(etcd, election)
    };
    let capture = capture(server, etcd, parts);
    let (cancel, run) = spawn_run(&capture);
    wait_until(Duration::from_secs(10), || capture.is_owner()).await;
    (owner, capture, cancel, run)
}

/// Whether the owner key of [`ElectionDouble`] exists.
async fn owner_key_exists(client: &EtcdClient) -> bool {
    !client
        .get(ElectionDouble::key(), GetOptions::default())
        .await
        .unwrap()
        .kvs
        .is_empty()
}

async fn wait_until(within: Duration, mut check: impl FnMut() -> bool) {
    tokio::time::timeout(within, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("condition met in time");
}

// Case 87: with etcd stopped, a reset in the background leaves `info()` answering; cancelling
// it fails the reset with "context canceled".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_keeps_info_and_fails_on_cancel() {
    let (mut server, etcd) = etcd().await;
    let capture = capture(&server, &etcd, CaptureParts::production(&etcd));
    let first = capture.reset(&CancellationToken::new()).await.unwrap().2;
    assert_eq!(capture.info().unwrap(), first);
    server.kill().unwrap();
    let cancel = CancellationToken::new();
    let mut reset = Box::pin(capture.reset(&cancel));
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut reset)
            .await
            .is_err(),
        "the reset waits for etcd"
    );
    assert_eq!(capture.info().unwrap(), first);
    cancel.cancel();
    let err = match tokio::time::timeout(Duration::from_secs(5), reset).await {
        Ok(Err(err)) => err,
        Ok(Ok(_)) => panic!("the reset succeeded without etcd"),
        Err(_) => panic!("the reset ignored the cancellation"),
    };
    assert_eq!(err.to_string(), "context canceled");
    assert_eq!(capture.info().unwrap(), first);
}

// Case 88: grants that miss their deadline make `run` retry; cancelling the parent returns Ok.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_retries_internal_deadline_exceeded() {
    let (server, etcd) = etcd().await;
    let sessions = Arc::new(DeadlineSessions::default());
    let parts = CaptureParts {
        sessions: Arc::clone(&sessions) as Arc<dyn SessionFactory>,
        ..CaptureParts::production(&etcd)
    };
    let capture = capture(&server, &etcd, parts);
    let (cancel, run) = spawn_run(&capture);
    wait_until(Duration::from_secs(5), || {
        sessions.grants.load(Ordering::SeqCst) >= 2
    })
    .await;
    stop_run(&cancel, run, Duration::from_secs(5)).await;
}

// Case 89: `info()` before any incarnation is an error, not a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_before_initialisation() {
    let (server, etcd) = etcd().await;
    let capture = capture(&server, &etcd, CaptureParts::production(&etcd));
    assert!(matches!(capture.info(), Err(Error::NotInitialized)));
}

// Case 90: a capture that is not owner drains at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_when_not_owner() {
    let (server, etcd) = etcd().await;
    let election = Arc::new(ElectionDouble {
        never_wins: true,
        ..ElectionDouble::default()
    });
    let capture = capture(&server, &etcd, parts(&etcd, &election));
    let (cancel, run) = spawn_run(&capture);
    wait_until(Duration::from_secs(10), || {
        election.campaigned.load(Ordering::SeqCst)
    })
    .await;
    tokio::time::timeout(Duration::from_secs(1), capture.drain())
        .await
        .expect("drain completes within 1 s");
    assert_eq!(capture.liveness(), Liveness::Stopping);
    stop_run(&cancel, run, Duration::from_secs(15)).await;
}

// Case 91: an owner is stopped by the drain, which completes once it resigned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_the_owner_to_resign() {
    let (server, etcd) = etcd().await;
    let election = Arc::new(ElectionDouble::default());
    let (owner, capture, cancel, run) = run_owner(&server, &etcd, &election).await;
    tokio::time::timeout(Duration::from_secs(3), capture.drain())
        .await
        .expect("drain completes within 3 s");
    assert!(owner.stopped.load(Ordering::SeqCst));
    assert!(election.resigned.load(Ordering::SeqCst));
    assert!(!capture.is_owner());
    assert_eq!(capture.liveness(), Liveness::Stopping);
    stop_run(&cancel, run, Duration::from_secs(15)).await;
}

// Case 92: no campaign while Stopping; Stopping set during the campaign resigns after winning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_respects_liveness() {
    let (server, etcd) = etcd().await;
    let client = etcd.client().clone();

    let election = Arc::new(ElectionDouble::default());
    let capture_a = capture(&server, &etcd, parts(&etcd, &election));
    capture_a.drain().await;
    let cancel = CancellationToken::new();
    capture_a
        .campaign_owner(&incarnation(&election, &client), &cancel)
        .await
        .unwrap();
    assert!(!election.campaigned.load(Ordering::SeqCst));
    assert!(!election.resigned.load(Ordering::SeqCst));

    let election = Arc::new(ElectionDouble::default());
    let capture_b = capture(&server, &etcd, parts(&etcd, &election));
    let _ = election
        .drain_while_campaigning
        .set(Arc::downgrade(&capture_b));
    assert_eq!(capture_b.liveness(), Liveness::Alive);
    tokio::time::timeout(
        Duration::from_secs(5),
        capture_b.campaign_owner(&incarnation(&election, &client), &cancel),
    )
    .await
    .expect("the campaign loop returns")
    .unwrap();
    assert!(election.campaigned.load(Ordering::SeqCst));
    assert!(election.resigned.load(Ordering::SeqCst));
    assert!(!capture_b.is_owner());
    assert!(
        !owner_key_exists(&client).await,
        "the resign deleted the owner key"
    );
}

// Case 92 with a resign that fails, then one that hangs: elected while Stopping, the campaign
// loop reports `ErrCaptureResignOwner` (the hang after the 5 s resign deadline) and counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_or_timed_out_resign_is_reported() {
    let (server, etcd) = etcd().await;
    let client = etcd.client().clone();
    for (resign, within) in [
        (ResignDouble::Fails, Duration::from_secs(5)),
        (ResignDouble::Hangs, RESIGN_TIMEOUT + Duration::from_secs(5)),
    ] {
        let election = Arc::new(ElectionDouble {
            resign,
            ..ElectionDouble::default()
        });
        let capture = capture(&server, &etcd, parts(&etcd, &election));
        let _ = election
            .drain_while_campaigning
            .set(Arc::downgrade(&capture));
        let cancel = CancellationToken::new();
        let err = tokio::time::timeout(
            within,
            capture.campaign_owner(&incarnation(&election, &client), &cancel),
        )
        .await
        .expect("the campaign loop returns")
        .unwrap_err();
        assert!(matches!(err, Error::ResignOwner(_)), "{resign:?}: {err:?}");
        assert!(
            err.to_string().starts_with("[CDC:ErrCaptureResignOwner]"),
            "{err}"
        );
        assert!(election.resigned.load(Ordering::SeqCst));
        assert_eq!(capture.metrics().resign_failures.get(), 1, "{resign:?}");
        assert!(!capture.is_owner());
    }
}

/// A processor manager whose first tick waits for the test's go, then fails with etcd's
/// "unavailable" (what a leaderless or unreachable etcd gives).
#[derive(Default)]
struct UnavailableProcessor {
    ticked: tokio::sync::Notify,
    go: tokio::sync::Notify,
}

fn unavailable() -> cdc_etcd::Error {
    cdc_etcd::Error::Rpc {
        op: "txn",
        code: cdc_etcd::RpcCode::Unavailable,
        message: "etcdserver: no leader".to_owned(),
        endpoints: String::new(),
    }
}

impl ProcessorManager for UnavailableProcessor {
    fn tick<'a>(&'a self, _state: &'a mut GlobalReactorState) -> BoxFuture<'a, Result<Tick>> {
        Box::pin(async move {
            self.ticked.notify_one();
            self.go.notified().await;
            Err(Error::Etcd(unavailable()))
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn write_debug_info(&self, _out: &mut String) {}
}

// §6.3/§6.8: a worker error while etcd is unreachable restarts the capture instead of exiting
// the server. With the lease alive the error comes back as is and restarts; when the lease
// check itself cannot reach etcd it gives up within its 5 s deadline, as a suicide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_error_during_an_etcd_outage_restarts_the_capture() {
    let (mut server, etcd) = etcd().await;
    let client = etcd.client().clone();
    let election = Arc::new(ElectionDouble::default());
    let capture = capture(&server, &etcd, parts(&etcd, &election));
    for etcd_down in [false, true] {
        let lease = client.lease_grant(30).await.unwrap();
        let incarnation = Incarnation {
            lease_id: lease.id,
            ..incarnation(&election, &client)
        };
        let processor = Arc::new(UnavailableProcessor::default());
        let cancel = CancellationToken::new();
        // Boxed: a worker's future is large.
        let worker = Box::pin(capture.run_etcd_worker(
            Role::Processor(Arc::clone(&processor) as Arc<dyn ProcessorManager>),
            capture.hooked_state(&incarnation, false),
            Duration::from_millis(50),
            &incarnation,
            None,
            &cancel,
        ));
        let test = async {
            processor.ticked.notified().await;
            if etcd_down {
                server.kill().unwrap();
            }
            processor.go.notify_one();
        };
        let started = tokio::time::Instant::now();
        let (result, ()) = tokio::time::timeout(Duration::from_secs(15), async {
            tokio::join!(worker, test)
        })
        .await
        .expect("the worker returns");
        let err = result.unwrap_err();
        if etcd_down {
            assert!(matches!(err, Error::Suicide), "{err:?}");
            assert!(started.elapsed() < LEASE_CHECK_DEADLINE + Duration::from_secs(3));
        } else {
            assert!(
                matches!(err, Error::Etcd(cdc_etcd::Error::Rpc { .. })),
                "{err:?}"
            );
        }
        assert!(err.restarts_capture(), "{err:?}");
    }
}

// §6.8 as this port classifies it: transient etcd trouble, wrapped or not, restarts the
// capture; only what a restart cannot fix exits the server.
#[test]
fn restart_or_exit_classification() {
    let exhausted = || cdc_etcd::Error::ReachMaxTry {
        tries: 12,
        last: Box::new(unavailable()),
    };
    let restarts = [
        Error::Suicide,
        Error::Cancelled,
        Error::Etcd(unavailable()),
        Error::Etcd(exhausted()),
        Error::Etcd(cdc_etcd::Error::LeaseNotFound { lease_id: 1 }),
        Error::Register(Box::new(Error::Etcd(unavailable()))),
        Error::Orchestrator(cdc_orchestrator::Error::Etcd(unavailable())),
        Error::Orchestrator(cdc_orchestrator::Error::SessionDone),
        Error::Election(cdc_election::Error::Etcd(exhausted())),
        Error::Election(cdc_election::Error::LeaseExpired { lease_id: 1 }),
        Error::CampaignOwner(Box::new(Error::Election(cdc_election::Error::NotLeader))),
        Error::ResignOwner(Box::new(Error::DeadlineExceeded { op: "resign owner" })),
    ];
    for err in restarts {
        assert!(err.restarts_capture(), "{err:?}");
    }
    let exits = [
        Error::MetaVersionTooNew {
            found: 2,
            supported: 1,
        },
        Error::InvalidConfig {
            message: "bad".to_owned(),
        },
        Error::Etcd(cdc_etcd::Error::MultipleCdcClustersExist {
            key: "/tidb/cdc/x".to_owned(),
        }),
        Error::Orchestrator(cdc_orchestrator::Error::TxnSizeExceed { size: 2, max: 1 }),
        Error::Orchestrator(cdc_orchestrator::Error::Etcd(cdc_etcd::Error::Rpc {
            op: "txn",
            code: cdc_etcd::RpcCode::InvalidArgument,
            message: "etcdserver: request is too large".to_owned(),
            endpoints: String::new(),
        })),
        Error::P2p(cdc_p2p::Error::AlreadyRunning),
    ];
    for err in exits {
        assert!(!err.restarts_capture(), "{err:?}");
    }
}

// §6.4 step 6: when reading the owner revision fails or is cancelled after the campaign was
// won, the capture resigns before leaving the campaign loop, so the owner key does not stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_owner_revision_after_winning_resigns() {
    let (server, etcd) = etcd().await;
    let client = etcd.client().clone();
    for owner_revision in [OwnerRevisionDouble::Fails, OwnerRevisionDouble::Hangs] {
        let election = Arc::new(ElectionDouble {
            owner_revision,
            ..ElectionDouble::default()
        });
        let capture = capture(&server, &etcd, parts(&etcd, &election));
        let cancel = CancellationToken::new();
        let incarnation = incarnation(&election, &client);
        let campaign = capture.campaign_owner(&incarnation, &cancel);
        let cancel_when_elected = async {
            if owner_revision == OwnerRevisionDouble::Hangs {
                wait_until(Duration::from_secs(5), || election.revision.get().is_some()).await;
                cancel.cancel();
            }
        };
        let (result, ()) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(campaign, cancel_when_elected)
        })
        .await
        .expect("the campaign loop returns");
        match owner_revision {
            OwnerRevisionDouble::Fails => {
                assert!(matches!(result, Err(Error::Etcd(_))), "{result:?}");
            }
            _ => assert!(result.is_ok(), "{result:?}"),
        }
        assert!(
            election.resigned.load(Ordering::SeqCst),
            "{owner_revision:?}"
        );
        assert!(!capture.is_owner());
        assert!(
            !owner_key_exists(&client).await,
            "{owner_revision:?}: the owner key is gone"
        );
    }
}

// Case 91 while the owner steps down: its owner is no longer published but its resign is still
// under way, and a drain then waits for the resign instead of returning at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_a_resign_under_way() {
    let (server, etcd) = etcd().await;
    let election = Arc::new(ElectionDouble {
        resign: ResignDouble::Gated,
        ..ElectionDouble::default()
    });
    let (owner, capture, cancel, run) = run_owner(&server, &etcd, &election).await;
    // The owner finishes on its own and the capture starts resigning.
    owner.async_stop();
    wait_until(Duration::from_secs(5), || {
        election.resigned.load(Ordering::SeqCst)
    })
    .await;
    assert!(!capture.is_owner());
    let mut drain = Box::pin(capture.drain());
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut drain)
            .await
            .is_err(),
        "the drain waits for the resign"
    );
    election.resign_gate.notify_one();
    tokio::time::timeout(Duration::from_secs(3), drain)
        .await
        .expect("drain completes once resigned");
    assert_eq!(capture.liveness(), Liveness::Stopping);
    stop_run(&cancel, run, Duration::from_secs(15)).await;
}
