//! After TiCDC's `capture_test.go`: the capture with doubles for the session, the election and
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
use cdc_reactor::Tick;

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
    owner_revision_gate: tokio::sync::Notify,
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
    /// Waits for `owner_revision_gate`, then answers.
    Gated,
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
                OwnerRevisionDouble::Gated => self.owner_revision_gate.notified().await,
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

/// An owner that runs until asked to stop, or whose ticks fail with `fails_with`.
#[derive(Default)]
struct OwnerDouble {
    created: AtomicBool,
    stopped: AtomicBool,
    fails_with: Option<fn() -> cdc_reactor::Error>,
}

impl Owner for OwnerDouble {
    fn tick<'a>(
        &'a self,
        _state: &'a mut GlobalReactorState,
    ) -> BoxFuture<'a, cdc_reactor::Result<Tick>> {
        Box::pin(async move {
            if let Some(error) = self.fails_with {
                return Err(error());
            }
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
        self.0.created.store(true, Ordering::SeqCst);
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
    fn tick<'a>(
        &'a self,
        _state: &'a mut GlobalReactorState,
    ) -> BoxFuture<'a, cdc_reactor::Result<Tick>> {
        Box::pin(async move {
            self.ticked.notify_one();
            self.go.notified().await;
            Err(cdc_reactor::Error::Etcd(unavailable()))
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

/// Errors no restart can cure, as a reactor's tick may return them.
fn fatal_errors() -> [fn() -> cdc_reactor::Error; 2] {
    [
        || {
            cdc_reactor::Error::Orchestrator(cdc_orchestrator::Error::TxnSizeExceed {
                size: 2,
                max: 1,
            })
        },
        || cdc_reactor::Error::reactor("changefeed state", std::io::Error::other("bad"), false),
    ]
}

/// Waits for `run` to end by itself (no cancellation) and returns its result.
async fn run_result(run: tokio::task::JoinHandle<Result<()>>) -> Result<()> {
    // Generous: the capture starts a real session and workers on a loaded machine; a capture
    // that restarts instead never ends.
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("run ends by itself instead of restarting")
        .unwrap()
}

// ARCHITECTURE.md (restart or exit): an owner whose tick fails with an error no restart can
// cure ends `run` with that error, instead of a suicide and a restart every 20 s that moves the
// ownership around forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_owner_error_ends_the_capture() {
    let (server, etcd) = etcd().await;
    for fails_with in fatal_errors() {
        let election = Arc::new(ElectionDouble::default());
        let owner = Arc::new(OwnerDouble {
            fails_with: Some(fails_with),
            ..OwnerDouble::default()
        });
        let parts = CaptureParts {
            owners: Arc::new(Owners(Arc::clone(&owner))),
            ..parts(&etcd, &election)
        };
        let capture = capture(&server, &etcd, parts);
        let (_cancel, run) = spawn_run(&capture);
        let err = run_result(run).await.unwrap_err();
        let expected = Error::from(fails_with());
        assert_eq!(err.to_string(), expected.to_string(), "{err:?}");
        assert!(!err.restarts_capture(), "{err:?}");
        assert_eq!(capture.metrics().restarts.get(), 0);
        assert!(
            !owner_key_exists(etcd.client()).await,
            "the owner resigned on its way out"
        );
    }
}

/// A processor manager whose ticks fail with `fails_with`.
struct FailingProcessor {
    fails_with: fn() -> cdc_reactor::Error,
}

impl ProcessorManager for FailingProcessor {
    fn tick<'a>(
        &'a self,
        _state: &'a mut GlobalReactorState,
    ) -> BoxFuture<'a, cdc_reactor::Result<Tick>> {
        Box::pin(async move { Err((self.fails_with)()) })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn write_debug_info(&self, _out: &mut String) {}
}

impl ProcessorManagerFactory for FailingProcessor {
    fn create(
        &self,
        _context: ReactorContext,
        _liveness: Arc<AtomicLiveness>,
    ) -> Arc<dyn ProcessorManager> {
        Arc::new(FailingProcessor {
            fails_with: self.fails_with,
        })
    }
}

// The same from the processor side, while this capture is also the owner: the processor's
// fatal error wins over the cancellation it causes in the owner's task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_processor_error_ends_the_capture() {
    let (server, etcd) = etcd().await;
    for fails_with in fatal_errors() {
        let election = Arc::new(ElectionDouble::default());
        let parts = CaptureParts {
            processors: Arc::new(FailingProcessor { fails_with }),
            ..parts(&etcd, &election)
        };
        let capture = capture(&server, &etcd, parts);
        let (_cancel, run) = spawn_run(&capture);
        let err = run_result(run).await.unwrap_err();
        assert_eq!(err.to_string(), fails_with().to_string(), "{err:?}");
        assert_eq!(capture.metrics().restarts.get(), 0);
    }
}

/// A capture of `cluster` on `server` whose owner key is written, with the fence of that key.
async fn migrating_capture(
    server: &EtcdServer,
    cluster: &str,
) -> (Arc<Capture>, cdc_orchestrator::OwnerFence, EtcdClient) {
    let client = server.client().await.unwrap();
    let etcd = CdcEtcdClient::new(client.clone(), cluster).await.unwrap();
    let mut config = config(server);
    config.cluster_id = cluster.to_owned();
    let capture = Capture::new(
        config,
        etcd.clone(),
        CaptureParts::production(&etcd),
        Arc::new(Metrics::new()),
        ServerWrapper::new(&ServerConfig::default()),
    );
    let key = format!("{}/1", cdc_etcd::key::owner_prefix(cluster)).into_bytes();
    let create_revision = client.put(key.clone(), "owner", 0).await.unwrap();
    let fence = cdc_orchestrator::OwnerFence {
        key,
        create_revision,
    };
    (capture, fence, client)
}

/// The raw value under `key`, if any.
async fn raw_value(client: &EtcdClient, key: &str) -> Option<Vec<u8>> {
    client
        .get(key, GetOptions::default())
        .await
        .unwrap()
        .kvs
        .into_iter()
        .next()
        .map(|kv| kv.value)
}

/// The default upstream key of `capture`'s cluster.
fn default_upstream_key(capture: &Capture, cluster: &str) -> String {
    cdc_etcd::key::upstream_key(cluster, DEFAULT_NAMESPACE, capture.etcd().etcd_cluster_id())
}

// The meta-version gate (docs/etcd-keys.md): a meta version this binary does not know is
// refused with a typed error and left as it is (no upstream written either), and the owner's
// migration and a processor's wait refuse exactly the same values (`"1\n"` passed the owner and
// blocked every processor).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_meta_version_is_refused_by_owner_and_processor_alike() {
    let server = EtcdServer::start().await.unwrap();
    for (n, value) in [
        "0",
        "abc",
        "1\n",
        " 1",
        "-1",
        "",
        "2",
        "18446744073709551616",
    ]
    .into_iter()
    .enumerate()
    {
        let cluster = format!("unknown-version-{n}");
        let (capture, fence, client) = migrating_capture(&server, &cluster).await;
        let version_key = cdc_etcd::key::meta_version_key(&cluster);
        client.put(version_key.clone(), value, 0).await.unwrap();
        let cancel = CancellationToken::new();
        let owner_err = capture.migrate(&fence, &cancel).await.unwrap_err();
        if value == "2" {
            assert!(
                matches!(owner_err, Error::MetaVersionTooNew { found: 2, .. }),
                "{owner_err:?}"
            );
        } else {
            assert!(
                matches!(&owner_err, Error::MetaVersionUnknown { found, .. } if found == value),
                "{value:?}: {owner_err:?}"
            );
        }
        assert!(!owner_err.restarts_capture(), "{owner_err:?}");
        assert!(!capture.is_ready());
        assert_eq!(
            raw_value(&client, &version_key).await.as_deref(),
            Some(value.as_bytes()),
            "{value:?} is left as it is"
        );
        assert_eq!(
            raw_value(&client, &default_upstream_key(&capture, &cluster)).await,
            None,
            "{value:?}: no upstream written"
        );
        let election = Arc::new(ElectionDouble::default());
        let processor_err = tokio::time::timeout(
            Duration::from_secs(10),
            capture.wait_meta_version(&incarnation(&election, &client), &cancel),
        )
        .await
        .unwrap_or_else(|_| panic!("{value:?}: the processor refuses instead of waiting"))
        .unwrap_err();
        assert_eq!(
            processor_err.to_string(),
            owner_err.to_string(),
            "{value:?}"
        );
        assert!(!capture.is_ready());
    }
}

// An absent meta version is written (with the default upstream) on a cluster without
// changefeed data, and an upstream already there is kept; with changefeed data in the
// cluster's prefix, or legacy (pre-v6.2) changefeed data for the default cluster, the owner
// refuses with an error naming the key and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absent_meta_version_is_written_only_without_changefeed_data() {
    let server = EtcdServer::start().await.unwrap();
    let cancel = CancellationToken::new();
    let election = Arc::new(ElectionDouble::default());

    // Empty: written, and the processors pass.
    let (capture, fence, client) = migrating_capture(&server, "empty").await;
    capture.migrate(&fence, &cancel).await.unwrap();
    let version_key = cdc_etcd::key::meta_version_key("empty");
    assert_eq!(
        raw_value(&client, &version_key).await.as_deref(),
        Some(&b"1"[..])
    );
    let upstream = raw_value(&client, &default_upstream_key(&capture, "empty"))
        .await
        .expect("the default upstream is written");
    let upstream: cdc_model::UpstreamInfo = cdc_model::from_json(&upstream).unwrap();
    assert_eq!(upstream.pd_endpoints, server.endpoint());
    assert!(capture.is_ready());
    capture
        .wait_meta_version(&incarnation(&election, &client), &cancel)
        .await
        .unwrap();

    // An upstream written before the version (by an operator, say) is kept.
    let (capture, fence, client) = migrating_capture(&server, "upstream").await;
    let upstream_key = default_upstream_key(&capture, "upstream");
    let custom = br#"{"id":1,"pd-endpoints":"http://elsewhere:2379"}"#;
    client
        .put(upstream_key.clone(), &custom[..], 0)
        .await
        .unwrap();
    capture.migrate(&fence, &cancel).await.unwrap();
    assert_eq!(
        raw_value(&client, &cdc_etcd::key::meta_version_key("upstream"))
            .await
            .as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(
        raw_value(&client, &upstream_key).await.as_deref(),
        Some(&custom[..])
    );

    // Changefeed data of this cluster without a version: refused, nothing written.
    let (capture, fence, client) = migrating_capture(&server, "data").await;
    let status_key = "/tidb/cdc/data/default/changefeed/status/cf-1";
    client.put(status_key, "{}", 0).await.unwrap();
    let err = capture.migrate(&fence, &cancel).await.unwrap_err();
    assert!(
        matches!(&err, Error::UnversionedMetadata { key } if key == status_key),
        "{err:?}"
    );
    assert!(err.to_string().contains(status_key), "{err}");
    assert!(!err.restarts_capture());
    assert_eq!(
        raw_value(&client, &cdc_etcd::key::meta_version_key("data")).await,
        None
    );
    assert_eq!(
        raw_value(&client, &default_upstream_key(&capture, "data")).await,
        None
    );
    assert!(!capture.is_ready());

    // Legacy changefeed data and the default cluster: refused, naming the legacy key.
    let (capture, fence, client) = migrating_capture(&server, "default").await;
    let legacy_key = "/tidb/cdc/changefeed/info/old-feed";
    client.put(legacy_key, "{}", 0).await.unwrap();
    let err = capture.migrate(&fence, &cancel).await.unwrap_err();
    assert!(
        matches!(&err, Error::LegacyMetadata { key } if key == legacy_key),
        "{err:?}"
    );
    assert!(err.to_string().contains("pre-v6.2"), "{err}");
    assert!(!err.restarts_capture());
    assert_eq!(
        raw_value(&client, &cdc_etcd::key::meta_version_key("default")).await,
        None
    );
    assert!(!capture.is_ready());
}

// A processor waiting for the meta version while etcd hangs sees its session end at once: the
// read (which the retrying client would keep up for 30 s) is raced against the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_meta_version_wait_ends_with_the_session_while_etcd_hangs() {
    let (mut server, etcd) = etcd().await;
    let client = etcd.client().clone();
    let election = Arc::new(ElectionDouble::default());
    let capture = capture(&server, &etcd, parts(&etcd, &election));
    let incarnation = incarnation(&election, &client);
    server.pause().unwrap();
    let cancel = CancellationToken::new();
    let wait = capture.wait_meta_version(&incarnation, &cancel);
    let lose_the_session = async {
        // Let the wait reach its read first.
        tokio::task::yield_now().await;
        incarnation.session_done.cancel();
    };
    // Generous for a loaded machine, and far below the read's own 30 s.
    let (result, ()) = tokio::time::timeout(Duration::from_secs(5), async {
        tokio::join!(wait, lose_the_session)
    })
    .await
    .expect("the wait ends with the session");
    assert!(matches!(result, Err(Error::Suicide)), "{result:?}");
    server.resume().unwrap();
}

/// Sends `request` to the capture's HTTP routes and returns the status and the JSON body.
async fn http_call(
    capture: &Arc<Capture>,
    request: http::Request<axum::body::Body>,
) -> (http::StatusCode, serde_json::Value) {
    use tower::ServiceExt as _;
    let response = crate::http::router(Arc::clone(capture))
        .oneshot(request)
        .await
        .unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap())
}

// A capture that won the campaign is not published as owner (`is_owner`, `/status`,
// owner-only requests) until its owner is confirmed: migration done and the fenced worker's
// first snapshot taken. Here etcd hangs right after the win, so neither can happen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfirmed_owner_is_not_published() {
    let (mut server, etcd) = etcd().await;
    let election = Arc::new(ElectionDouble {
        owner_revision: OwnerRevisionDouble::Gated,
        ..ElectionDouble::default()
    });
    let owner = Arc::new(OwnerDouble::default());
    let parts = CaptureParts {
        owners: Arc::new(Owners(Arc::clone(&owner))),
        ..parts(&etcd, &election)
    };
    let capture = capture(&server, &etcd, parts);
    let (cancel, run) = spawn_run(&capture);
    wait_until(Duration::from_secs(10), || {
        election.revision.get().is_some()
    })
    .await;
    server.pause().unwrap();
    election.owner_revision_gate.notify_one();
    wait_until(Duration::from_secs(5), || {
        owner.created.load(Ordering::SeqCst)
    })
    .await;
    // The owner exists now; an early publish would follow at once, without any await.
    let published = tokio::time::timeout(Duration::from_millis(500), async {
        while !capture.is_owner() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(published.is_err(), "published before confirmation");
    assert!(matches!(capture.owner(), Err(Error::NotOwner)));
    assert!(capture.status_provider().is_none());
    let (status, body) = http_call(
        &capture,
        http::Request::get("/status")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, http::StatusCode::OK);
    assert_eq!(body["is_owner"], false, "{body}");
    // An owner-only request (forwarded here, so not forwarded again) does not act.
    let (status, body) = http_call(
        &capture,
        http::Request::post("/api/v2/owner/resign")
            .header(crate::http::FORWARD_HEADER, "another-capture")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, http::StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        !owner.stopped.load(Ordering::SeqCst),
        "the resign did not act"
    );
    // Once etcd answers, the migration and the first snapshot confirm the owner.
    server.resume().unwrap();
    wait_until(Duration::from_secs(20), || capture.is_owner()).await;
    let (_, body) = http_call(
        &capture,
        http::Request::get("/status")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(body["is_owner"], true, "{body}");
    stop_run(&cancel, run, Duration::from_secs(15)).await;
}

// The close of a session has one budget for its join and its revoke, honoured by the capture:
// with etcd frozen for a while as the capture closes its session, the revoke still happens
// once etcd answers within the budget, and the lease (with every key on it, the owner key
// included) goes then, not one TTL later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_session_is_revoked_after_an_etcd_freeze() {
    let (mut server, etcd) = etcd().await;
    let client = etcd.client().clone();
    let capture = capture(&server, &etcd, CaptureParts::production(&etcd));
    let ttl = 60;
    let session = capture
        .parts
        .sessions
        .grant(ttl, &CancellationToken::new())
        .await
        .unwrap();
    let lease_id = session.lease_id();
    let owner_key = format!("{}/{lease_id:x}", cdc_etcd::key::owner_prefix(CLUSTER));
    client.put(owner_key.clone(), "me", lease_id).await.unwrap();
    server.pause().unwrap();
    // Boxed: the close's future is large.
    let close = Box::pin(capture.close_bounded(&session));
    let freeze = async {
        // The fault: etcd answers nothing for 6 s once the close has begun, longer than the
        // half of the budget that a revoke attempt gets, shorter than the whole.
        tokio::time::sleep(Duration::from_secs(6)).await;
        server.resume().unwrap();
    };
    tokio::time::timeout(SESSION_CLOSE_BUDGET + Duration::from_secs(10), async {
        tokio::join!(close, freeze)
    })
    .await
    .expect("the close keeps to its budget");
    assert_eq!(
        client.lease_time_to_live(lease_id).await.unwrap().ttl,
        -1,
        "the lease is revoked, not left to expire in {ttl} s"
    );
    assert_eq!(raw_value(&client, &owner_key).await, None);
}

// Compaction is recognised by type, through the etcd error's own classification, wrapped or
// not.
#[test]
fn compaction_is_recognised_by_type() {
    let compacted = || cdc_etcd::Error::Rpc {
        op: "get",
        code: cdc_etcd::RpcCode::OutOfRange,
        message: "etcdserver: mvcc: required revision has been compacted".to_owned(),
        endpoints: String::new(),
    };
    let compacted_errors = [
        Error::Etcd(compacted()),
        Error::Etcd(cdc_etcd::Error::Compacted {
            requested: 1,
            compacted: 2,
        }),
        Error::Election(cdc_election::Error::Etcd(compacted())),
        Error::CampaignOwner(Box::new(Error::Election(cdc_election::Error::Etcd(
            compacted(),
        )))),
    ];
    for err in compacted_errors {
        assert!(err.is_compacted(), "{err:?}");
    }
    assert!(!Error::Etcd(unavailable()).is_compacted());
    assert!(!Error::Suicide.is_compacted());
}
