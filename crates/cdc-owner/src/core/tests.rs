//! Tests of the owner tick on a real etcd worker, with in-process agents.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use cdc_etcd::EtcdClient;
use cdc_etcd::testing::EtcdServer;
use cdc_model::{CaptureInfo, GoTime};
use cdc_orchestrator::{EtcdWorker, NextTick, Reactor, ReactorState};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::fake_agent::{FakeAgent, get_kv, put_capture};
use crate::feed::RetryPolicy;

const CLUSTER: &str = "default";
const OWNER: &str = "c1";
const OTHER: &str = "c2";
const DEADLINE: Duration = Duration::from_secs(60);

/// What the test watches.
#[derive(Debug, Clone, Default)]
struct Observed {
    ticks: u64,
    all_replicating: bool,
    /// Spans running per capture.
    running: BTreeMap<CaptureId, usize>,
    /// Replicate orders the agents followed, over all owners.
    starts: usize,
    /// Heartbeats the owner sent, over all captures.
    heartbeats: usize,
}

struct TestReactor {
    core: OwnerCore,
    agents: BTreeMap<CaptureId, FakeAgent>,
    inbox: Vec<ToOwner>,
    requests: mpsc::Receiver<Request>,
    started: Instant,
    observed: watch::Sender<Observed>,
}

impl Reactor<GlobalReactorState> for TestReactor {
    async fn tick(&mut self, state: &mut GlobalReactorState) -> cdc_orchestrator::Result<NextTick> {
        let mut requests = Vec::new();
        while let Ok(request) = self.requests.try_recv() {
            requests.push(request);
        }
        let output = self.core.tick(
            state,
            self.started.elapsed(),
            Utc::now(),
            std::mem::take(&mut self.inbox),
            requests,
        );
        let heartbeats = output
            .messages
            .iter()
            .filter(|message| matches!(message.body, cdc_scheduler::AgentRequest::Heartbeat(_)))
            .count();
        for message in output.messages {
            if let Some(agent) = self.agents.get_mut(&message.to) {
                self.inbox.extend(agent.handle(message));
            }
        }
        let all_replicating = self.core.coordinator().is_all_replicating();
        let running = self
            .agents
            .iter()
            .map(|(capture_id, agent)| (capture_id.clone(), agent.running.len()))
            .collect();
        let starts = self.agents.values().map(|agent| agent.starts).sum();
        self.observed.send_modify(|observed| {
            observed.heartbeats += heartbeats;
            observed.starts = starts;
            observed.ticks += 1;
            observed.all_replicating = all_replicating;
            observed.running = running;
        });
        Ok(NextTick::After(Duration::from_millis(20)))
    }
}

type WorkerTask =
    tokio::task::JoinHandle<(TestReactor, cdc_orchestrator::Result<GlobalReactorState>)>;

struct Harness {
    etcd: EtcdServer,
    client: EtcdClient,
    requests: mpsc::Sender<Request>,
    observed: watch::Receiver<Observed>,
    progress: Arc<AtomicU64>,
    cancel: CancellationToken,
    worker: WorkerTask,
}

fn test_config() -> OwnerConfig {
    OwnerConfig {
        checkpoint_interval: Duration::ZERO,
        retry: RetryPolicy {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(200),
            retry_budget: Duration::from_secs(60),
        },
        ..OwnerConfig::default()
    }
}

/// Starts an owner term of `revision` with `agents` on a worker.
fn start_term(
    etcd: &EtcdServer,
    client: &EtcdClient,
    revision: i64,
    agents: BTreeMap<CaptureId, FakeAgent>,
) -> (
    mpsc::Sender<Request>,
    watch::Receiver<Observed>,
    CancellationToken,
    WorkerTask,
) {
    let upstream = UpstreamInfo {
        id: 7,
        pd_endpoints: etcd.endpoint(),
        ..UpstreamInfo::default()
    };
    let core = OwnerCore::new(OWNER.to_owned(), revision, test_config(), upstream).unwrap();
    let (requests_tx, requests_rx) = mpsc::channel(16);
    let (observed_tx, observed_rx) = watch::channel(Observed::default());
    let mut reactor = TestReactor {
        core,
        agents,
        inbox: Vec::new(),
        requests: requests_rx,
        started: Instant::now(),
        observed: observed_tx,
    };
    let cancel = CancellationToken::new();
    let worker = {
        let client = client.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let result = EtcdWorker::new(client, key::base_key(CLUSTER))
                .run(
                    &mut reactor,
                    GlobalReactorState::new(CLUSTER, 10),
                    Duration::from_millis(10),
                    &cancel,
                )
                .await;
            (reactor, result)
        })
    };
    (requests_tx, observed_rx, cancel, worker)
}

impl Harness {
    async fn start() -> Harness {
        let etcd = EtcdServer::start().await.expect("start etcd");
        let client = etcd.client().await.unwrap();
        for capture_id in [OWNER, OTHER] {
            put_capture(&client, CLUSTER, capture_id, &format!("{capture_id}:8300")).await;
        }
        let progress = Arc::new(AtomicU64::new(0));
        let agents = [OWNER, OTHER]
            .into_iter()
            .map(|c| (c.to_owned(), FakeAgent::new(c, progress.clone())))
            .collect();
        let (requests, observed, cancel, worker) = start_term(&etcd, &client, 1, agents);
        Harness {
            etcd,
            client,
            requests,
            observed,
            progress,
            cancel,
            worker,
        }
    }

    /// Ends the owner's term and starts a new owner of `revision` with the same agents, which
    /// keep running their spans.
    async fn new_owner(&mut self, revision: i64) {
        self.cancel.cancel();
        let (tx, rx, cancel, worker) = {
            let worker = std::mem::replace(&mut self.worker, tokio::spawn(std::future::pending()));
            let (reactor, _) = worker.await.unwrap();
            start_term(&self.etcd, &self.client, revision, reactor.agents)
        };
        self.requests = tx;
        self.observed = rx;
        self.cancel = cancel;
        self.worker = worker;
    }

    /// Creates changefeed `id` (spans of [`new_info`], starting at `start_ts`).
    async fn create(&self, id: &ChangeFeedId, start_ts: u64) -> Reply {
        self.ask(Job::Create {
            info: Box::new(new_info(id, start_ts)),
            upstream: upstream(),
        })
        .await
    }

    /// Sends admin job `job` for changefeed `id`.
    async fn admin(&self, id: &ChangeFeedId, job: AdminJob) -> Reply {
        self.ask(Job::Admin {
            id: id.clone(),
            job,
        })
        .await
    }

    async fn ask(&self, job: Job) -> Reply {
        let (reply, answer) = oneshot::channel();
        self.requests.send(Request { job, reply }).await.unwrap();
        tokio::time::timeout(DEADLINE, answer)
            .await
            .unwrap()
            .unwrap()
    }

    async fn wait_for(&mut self, what: &str, mut check: impl FnMut(&Observed) -> bool) {
        let waited = tokio::time::timeout(DEADLINE, self.observed.wait_for(|o| check(o)))
            .await
            .map(|result| result.map(drop));
        match waited {
            Ok(result) => result.unwrap(),
            Err(_) => panic!(
                "timed out waiting for {what}: {:?}",
                *self.observed.borrow()
            ),
        }
    }

    async fn get(&self, key: String) -> Option<cdc_etcd::KeyValue> {
        get_kv(&self.client, key).await
    }

    async fn status(&self, id: &ChangeFeedId) -> (ChangeFeedStatus, i64) {
        let kv = self
            .get(key::changefeed_status_key(CLUSTER, id))
            .await
            .expect("the status exists");
        (cdc_model::from_json(&kv.value).unwrap(), kv.version)
    }

    async fn info(&self, id: &ChangeFeedId) -> Option<ChangeFeedInfo> {
        self.get(key::changefeed_info_key(CLUSTER, id))
            .await
            .map(|kv| cdc_model::from_json(&kv.value).unwrap())
    }

    /// Waits until `check` holds for the stored status, polling etcd (bounded).
    async fn wait_status(&self, id: &ChangeFeedId, check: impl Fn(&ChangeFeedStatus) -> bool) {
        let started = Instant::now();
        loop {
            let (status, _) = self.status(id).await;
            if check(&status) {
                return;
            }
            assert!(started.elapsed() < DEADLINE, "status stuck at {status:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `check` holds for the stored info, polling etcd (bounded).
    async fn wait_info(&self, id: &ChangeFeedId, check: impl Fn(&ChangeFeedInfo) -> bool) {
        let started = Instant::now();
        loop {
            let info = self.info(id).await.expect("the info exists");
            if check(&info) {
                return;
            }
            assert!(started.elapsed() < DEADLINE, "info stuck at {info:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        let _ = self.worker.await.unwrap();
    }

    /// How many times the agents were told to replicate a span.
    fn starts(&self) -> usize {
        self.observed.borrow().starts
    }
}

/// The upstream of the test changefeeds.
fn upstream() -> UpstreamInfo {
    UpstreamInfo {
        id: 7,
        ..UpstreamInfo::default()
    }
}

fn new_info(id: &ChangeFeedId, start_ts: u64) -> ChangeFeedInfo {
    let spec = ReplicaSpec {
        rules: vec!["/a/".to_owned(), "/b/".to_owned()],
        spans_per_prefix: 2,
        split_keys: vec![vec![b"/a/m".to_vec()], vec![b"/b/m".to_vec()]],
        ..ReplicaSpec::default()
    };
    ChangeFeedInfo {
        upstream_id: 7,
        namespace: id.namespace.clone(),
        changefeed_id: id.id.clone(),
        sink_uri: "blackhole://".to_owned(),
        create_time: GoTime::from_datetime(Utc::now().fixed_offset()),
        start_ts,
        sort_engine: "unified".to_owned(),
        config: Some(spec.new_config()),
        state: FeedState::Normal,
        ..ChangeFeedInfo::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_schedule_checkpoint_pause_and_drain_on_a_real_etcd() {
    let mut harness = Harness::start().await;
    let id = ChangeFeedId::default_namespace("cf1");
    harness.progress.store(100, Ordering::SeqCst);

    // Create: info and status in one transaction (the same mod revision).
    let (status, body) = harness.create(&id, 100).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], json!("cf1"));
    assert_eq!(body["spans"].as_array().map(Vec::len), Some(4));
    harness
        .wait_for("the changefeed to replicate", |o| o.all_replicating)
        .await;
    let info_kv = harness
        .get(key::changefeed_info_key(CLUSTER, &id))
        .await
        .unwrap();
    let status_kv = harness
        .get(key::changefeed_status_key(CLUSTER, &id))
        .await
        .unwrap();
    assert_eq!(info_kv.mod_revision, status_kv.mod_revision);
    // A second create of the same ID is refused.
    let (status, body) = harness.create(&id, 100).await;
    assert_eq!(status, 409, "{body}");

    // Spread evenly over the two captures.
    harness
        .wait_for("a 2/2 spread", |o| {
            o.running.get(OWNER) == Some(&2) && o.running.get(OTHER) == Some(&2)
        })
        .await;
    let (status, body) = harness.ask(Job::Get(id.clone())).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["task_status"].as_array().map(Vec::len),
        Some(2),
        "{body}"
    );

    // The checkpoint follows the spans, and an unchanged one is not written again.
    harness.progress.store(150, Ordering::SeqCst);
    harness.wait_status(&id, |s| s.checkpoint_ts == 150).await;
    let (_, version) = harness.status(&id).await;
    let ticks = harness.observed.borrow().ticks;
    harness
        .wait_for("twenty more ticks", |o| o.ticks >= ticks + 20)
        .await;
    assert_eq!(harness.status(&id).await.1, version);

    // Drain the other capture: its spans move to the owner's.
    let (status, body) = harness.ask(Job::Drain(OTHER.to_owned())).await;
    assert_eq!(status, 202, "{body}");
    harness
        .wait_for("the drained capture to be empty", |o| {
            o.running.get(OTHER) == Some(&0) && o.running.get(OWNER) == Some(&4)
        })
        .await;
    let (status, body) = harness.ask(Job::Drain(OTHER.to_owned())).await;
    assert_eq!((status, body), (202, json!({"current_table_count": 0})));
    let (status, _) = harness.ask(Job::Drain(OWNER.to_owned())).await;
    assert_eq!(status, 400);
    let (status, body) = harness.ask(Job::Drain("no-such".to_owned())).await;
    assert_eq!(
        (status, body["error_code"].clone()),
        (400, json!("CDC:ErrCaptureNotExist"))
    );

    // Pause stops every span and stores the state.
    let (status, _) = harness.admin(&id, AdminJob::Pause).await;
    assert_eq!(status, 200);
    harness
        .wait_for("the spans to stop", |o| o.running.values().all(|n| *n == 0))
        .await;
    harness
        .wait_info(&id, |info| {
            info.state == FeedState::Stopped && info.admin_job_type == AdminJobType::Stop
        })
        .await;
    assert_eq!(
        harness.status(&id).await.0.admin_job_type,
        AdminJobType::Stop
    );

    // Remove deletes info and status.
    let (status, _) = harness.admin(&id, AdminJob::Remove).await;
    assert_eq!(status, 200);
    let started = Instant::now();
    while harness.info(&id).await.is_some() {
        assert!(started.elapsed() < DEADLINE, "the info stays");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        harness
            .get(key::changefeed_status_key(CLUSTER, &id))
            .await
            .is_none()
    );
    let (status, _) = harness.ask(Job::Get(id.clone())).await;
    assert_eq!(status, 404);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_error_pauses_the_changefeed_then_it_retries() {
    let mut harness = Harness::start().await;
    let id = ChangeFeedId::default_namespace("cf2");
    let (status, _) = harness.create(&id, 10).await;
    assert_eq!(status, 200);
    harness
        .wait_for("the changefeed to replicate", |o| o.all_replicating)
        .await;
    // A processor reports an error in its task position.
    let position = cdc_model::TaskPosition {
        error: Some(cdc_model::RunningError {
            code: "CDC:ErrSinkFailed".to_owned(),
            message: "boom".to_owned(),
            ..cdc_model::RunningError::default()
        }),
        ..cdc_model::TaskPosition::default()
    };
    let position_key = key::CdcKey {
        cluster_id: CLUSTER.to_owned(),
        kind: key::CdcKeyKind::TaskPosition {
            namespace: id.namespace.clone(),
            capture_id: OTHER.to_owned(),
            changefeed_id: id.id.clone(),
        },
    }
    .to_string();
    harness
        .client
        .put(
            position_key.clone(),
            cdc_model::to_go_json(&position).unwrap(),
            0,
        )
        .await
        .unwrap();
    harness
        .wait_for("the spans to stop", |o| o.running.values().all(|n| *n == 0))
        .await;
    // The error was taken from the position and stored in the info.
    harness
        .wait_info(&id, |info| {
            info.error.as_ref().map(|e| e.code.as_str()) == Some("CDC:ErrSinkFailed")
        })
        .await;
    // After the backoff, it runs again.
    harness
        .wait_for("the retry", |o| {
            o.all_replicating && o.running.values().sum::<usize>() == 4
        })
        .await;
    let position: cdc_model::TaskPosition =
        cdc_model::from_json(&harness.get(position_key).await.unwrap().value).unwrap();
    assert_eq!(position.error, None);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_owner_keeps_the_running_spans_and_the_stored_states() {
    let mut harness = Harness::start().await;
    let running = ChangeFeedId::default_namespace("running");
    let paused = ChangeFeedId::default_namespace("paused");
    for id in [&running, &paused] {
        let (status, body) = harness.create(id, 10).await;
        assert_eq!(status, 200, "{body}");
    }
    harness
        .wait_for("both changefeeds to replicate", |o| {
            o.all_replicating && o.running.values().sum::<usize>() == 8
        })
        .await;
    let (status, _) = harness.admin(&paused, AdminJob::Pause).await;
    assert_eq!(status, 200);
    harness
        .wait_for("the paused spans to stop", |o| {
            o.all_replicating && o.running.values().sum::<usize>() == 4
        })
        .await;
    let starts = harness.starts();
    assert_eq!(starts, 8);

    harness.new_owner(2).await;
    harness
        .wait_for("the new owner to rebuild the schedule", |o| {
            o.all_replicating
        })
        .await;
    let ticks = harness.observed.borrow().ticks;
    harness
        .wait_for("twenty more ticks", |o| o.ticks >= ticks + 20)
        .await;
    // Nothing was restarted, and the paused changefeed stays paused.
    assert_eq!(harness.starts(), starts);
    assert_eq!(harness.observed.borrow().running.values().sum::<usize>(), 4);
    let (status, body) = harness.ask(Job::Get(paused.clone())).await;
    assert_eq!((status, body["state"].clone()), (200, json!("stopped")));
    let (status, body) = harness.ask(Job::Get(running.clone())).await;
    assert_eq!((status, body["state"].clone()), (200, json!("normal")));

    // The new owner resumes it.
    let (status, _) = harness
        .ask(Job::Admin {
            id: paused.clone(),
            job: AdminJob::Resume {
                overwrite_checkpoint: None,
            },
        })
        .await;
    assert_eq!(status, 200);
    harness
        .wait_for("the resumed spans to run", |o| {
            o.all_replicating && o.running.values().sum::<usize>() == 8
        })
        .await;
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_without_changefeeds_hears_from_the_captures_once_a_second() {
    let mut harness = Harness::start().await;
    harness
        .wait_for("the first heartbeats", |o| o.heartbeats >= 2)
        .await;
    let started = Instant::now();
    let (ticks, heartbeats) = {
        let observed = harness.observed.borrow();
        (observed.ticks, observed.heartbeats)
    };
    // The test reactor ticks every 20 ms: 100 ticks take two seconds at least.
    harness
        .wait_for("a hundred more ticks", |o| o.ticks >= ticks + 100)
        .await;
    let elapsed = started.elapsed().as_secs() as usize;
    let sent = harness.observed.borrow().heartbeats - heartbeats;
    assert!(
        sent <= 2 * (elapsed + 2),
        "{sent} heartbeats to two captures in {elapsed} s"
    );
    harness.stop().await;
}

#[test]
fn answers_show_the_stored_checkpoint_not_one_still_to_commit() {
    let mut state = GlobalReactorState::new(CLUSTER, 10);
    let mut put = |key: String, value: Vec<u8>| {
        state.update(key.as_bytes(), Some(&value), false).unwrap();
    };
    let progress = Arc::new(AtomicU64::new(50));
    let mut agents: BTreeMap<CaptureId, FakeAgent> = BTreeMap::new();
    for capture_id in [OWNER, OTHER] {
        let info = CaptureInfo {
            id: capture_id.to_owned(),
            ..CaptureInfo::default()
        };
        put(
            key::capture_key(CLUSTER, capture_id),
            cdc_model::to_go_json(&info).unwrap(),
        );
        agents.insert(
            capture_id.to_owned(),
            FakeAgent::new(capture_id, progress.clone()),
        );
    }
    let id = ChangeFeedId::default_namespace("cf");
    put(
        key::changefeed_info_key(CLUSTER, &id),
        cdc_model::to_go_json(&new_info(&id, 10)).unwrap(),
    );
    let status = ChangeFeedStatus {
        checkpoint_ts: 10,
        min_table_barrier_ts: 10,
        admin_job_type: AdminJobType::Noop,
    };
    put(
        key::changefeed_status_key(CLUSTER, &id),
        cdc_model::to_go_json(&status).unwrap(),
    );
    let mut core = OwnerCore::new(OWNER.to_owned(), 1, test_config(), upstream()).unwrap();
    let mut inbox = Vec::new();
    let mut now = Duration::ZERO;
    // The patches are never committed: the stored checkpoint stays at 10 while the spans move.
    for _ in 0..200 {
        let output = core.tick(
            &mut state,
            now,
            Utc::now(),
            std::mem::take(&mut inbox),
            Vec::new(),
        );
        drop(state.get_patches());
        for message in output.messages {
            if let Some(agent) = agents.get_mut(&message.to) {
                inbox.extend(agent.handle(message));
            }
        }
        now += Duration::from_millis(50);
        let detail = core.read(&Job::Get(id.clone())).unwrap().1;
        let spans = detail["spans"].as_array().unwrap();
        if spans.iter().all(|span| span["checkpoint_ts"] == json!(50)) {
            assert_eq!(detail["checkpoint_ts"], json!(10), "{detail}");
            // The metrics read the same stored checkpoint, and the resolved revision ahead of it.
            let progress = core.progress();
            assert_eq!(progress.len(), 1, "{progress:?}");
            assert_eq!((&progress[0].id, progress[0].checkpoint), (&id, 10));
            assert_eq!(json!(progress[0].resolved), detail["resolved_ts"]);
            return;
        }
    }
    panic!("the spans never reached 50");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_statuses_of_one_tick_are_written_in_one_transaction() {
    let mut harness = Harness::start().await;
    harness.progress.store(100, Ordering::SeqCst);
    let ids: Vec<ChangeFeedId> = (0..5)
        .map(|i| ChangeFeedId::default_namespace(format!("cf{i}")))
        .collect();
    for id in &ids {
        let (status, body) = harness.create(id, 100).await;
        assert_eq!(status, 200, "{body}");
    }
    harness
        .wait_for("every changefeed to replicate", |o| {
            o.all_replicating && o.running.values().sum::<usize>() == 20
        })
        .await;
    // Every changefeed has spans on both captures, so all their checkpoints move in the tick
    // that hears the last agent's progress.
    harness.progress.store(150, Ordering::SeqCst);
    for id in &ids {
        harness.wait_status(id, |s| s.checkpoint_ts == 150).await;
    }
    let mut revisions = BTreeSet::new();
    for id in &ids {
        let kv = harness
            .get(key::changefeed_status_key(CLUSTER, id))
            .await
            .unwrap();
        revisions.insert(kv.mod_revision);
    }
    assert_eq!(revisions.len(), 1, "{revisions:?}");
    harness.stop().await;
}

#[test]
fn a_resume_from_another_checkpoint_waits_until_the_spans_stopped() {
    let mut state = GlobalReactorState::new(CLUSTER, 10);
    let progress = Arc::new(AtomicU64::new(50));
    let mut agents: BTreeMap<CaptureId, FakeAgent> = BTreeMap::new();
    for capture_id in [OWNER, OTHER] {
        let info = CaptureInfo {
            id: capture_id.to_owned(),
            ..CaptureInfo::default()
        };
        let value = cdc_model::to_go_json(&info).unwrap();
        state
            .update(
                key::capture_key(CLUSTER, capture_id).as_bytes(),
                Some(&value),
                false,
            )
            .unwrap();
        agents.insert(
            capture_id.to_owned(),
            FakeAgent::new(capture_id, progress.clone()),
        );
    }
    let id = ChangeFeedId::default_namespace("cf");
    let info = cdc_model::to_go_json(&new_info(&id, 10)).unwrap();
    state
        .update(
            key::changefeed_info_key(CLUSTER, &id).as_bytes(),
            Some(&info),
            false,
        )
        .unwrap();
    let status = cdc_model::to_go_json(&ChangeFeedStatus {
        checkpoint_ts: 10,
        min_table_barrier_ts: 10,
        admin_job_type: AdminJobType::Noop,
    })
    .unwrap();
    state
        .update(
            key::changefeed_status_key(CLUSTER, &id).as_bytes(),
            Some(&status),
            false,
        )
        .unwrap();
    let mut core = OwnerCore::new(OWNER.to_owned(), 1, test_config(), upstream()).unwrap();
    let mut inbox = Vec::new();
    let mut now = Duration::ZERO;
    let mut tick = |core: &mut OwnerCore,
                    state: &mut GlobalReactorState,
                    inbox: &mut Vec<ToOwner>,
                    requests: Vec<Request>| {
        let output = core.tick(state, now, Utc::now(), std::mem::take(inbox), requests);
        drop(state.get_patches());
        for message in output.messages {
            if let Some(agent) = agents.get_mut(&message.to) {
                inbox.extend(agent.handle(message));
            }
        }
        now += Duration::from_millis(50);
    };
    for _ in 0..100 {
        tick(&mut core, &mut state, &mut inbox, Vec::new());
        if core.coordinator().is_all_replicating() {
            break;
        }
    }
    assert!(core.coordinator().is_all_replicating());
    let request = |job: Job| {
        let (reply, answer) = oneshot::channel();
        (Request { job, reply }, answer)
    };
    let (pause, _) = request(Job::Admin {
        id: id.clone(),
        job: AdminJob::Pause,
    });
    tick(&mut core, &mut state, &mut inbox, vec![pause]);
    // The spans are still stopping: a resume from another checkpoint is refused.
    let (resume, mut answer) = request(Job::Admin {
        id: id.clone(),
        job: AdminJob::Resume {
            overwrite_checkpoint: Some(5),
        },
    });
    tick(&mut core, &mut state, &mut inbox, vec![resume]);
    let (status, body) = answer.try_recv().expect("answered at once");
    assert_eq!(status, 400, "{body}");
    // Once they stopped, it is accepted.
    for _ in 0..100 {
        tick(&mut core, &mut state, &mut inbox, Vec::new());
        if core.coordinator().span_views(&id).is_none() {
            break;
        }
    }
    assert!(core.coordinator().span_views(&id).is_none());
    let (resume, mut answer) = request(Job::Admin {
        id: id.clone(),
        job: AdminJob::Resume {
            overwrite_checkpoint: Some(5),
        },
    });
    tick(&mut core, &mut state, &mut inbox, vec![resume]);
    tick(&mut core, &mut state, &mut inbox, Vec::new());
    assert_eq!(answer.try_recv().expect("answered").0, 200);
}

#[test]
fn an_answer_never_shows_a_failed_changefeed_without_its_error() {
    let mut state = GlobalReactorState::new(CLUSTER, 10);
    let put = |state: &mut GlobalReactorState, key: String, value: Vec<u8>| {
        state.update(key.as_bytes(), Some(&value), false).unwrap();
    };
    let info = CaptureInfo {
        id: OWNER.to_owned(),
        ..CaptureInfo::default()
    };
    put(
        &mut state,
        key::capture_key(CLUSTER, OWNER),
        cdc_model::to_go_json(&info).unwrap(),
    );
    let id = ChangeFeedId::default_namespace("cf");
    put(
        &mut state,
        key::changefeed_info_key(CLUSTER, &id),
        cdc_model::to_go_json(&new_info(&id, 10)).unwrap(),
    );
    let status = ChangeFeedStatus {
        checkpoint_ts: 10,
        min_table_barrier_ts: 10,
        admin_job_type: AdminJobType::Noop,
    };
    put(
        &mut state,
        key::changefeed_status_key(CLUSTER, &id),
        cdc_model::to_go_json(&status).unwrap(),
    );
    let upstream = UpstreamInfo {
        id: 7,
        ..UpstreamInfo::default()
    };
    let mut core = OwnerCore::new(OWNER.to_owned(), 1, test_config(), upstream).unwrap();
    let mut now = Duration::ZERO;
    let mut tick = |core: &mut OwnerCore, state: &mut GlobalReactorState| {
        core.tick(state, now, Utc::now(), Vec::new(), Vec::new());
        // Not committed: the answers below come before the commit is read back.
        drop(state.get_patches());
        now += Duration::from_millis(50);
    };
    tick(&mut core, &mut state);
    let detail = core.read(&Job::Get(id.clone())).unwrap().1;
    assert_eq!(detail["state"], json!("normal"), "{detail}");
    // A processor reports an error that fails the changefeed at once.
    let error = cdc_model::RunningError {
        addr: "127.0.0.1:8300".to_owned(),
        code: "CDC:ErrSnapshotLostByGC".to_owned(),
        message: "revision 10 has been compacted".to_owned(),
        ..cdc_model::RunningError::default()
    };
    let position = cdc_model::TaskPosition {
        error: Some(error.clone()),
        ..cdc_model::TaskPosition::default()
    };
    put(
        &mut state,
        key::task_position_key(CLUSTER, &OWNER.to_owned(), &id),
        cdc_model::to_go_json(&position).unwrap(),
    );
    tick(&mut core, &mut state);
    let consistent = |detail: &Value| {
        let failed = detail["state"] == json!("failed");
        let has_error = !detail["error"].is_null();
        assert_eq!(failed, has_error, "state and error disagree: {detail}");
    };
    let detail = core.read(&Job::Get(id.clone())).unwrap().1;
    consistent(&detail);
    let list = core
        .read(&Job::List {
            state: "all".to_owned(),
            namespace: None,
        })
        .unwrap()
        .1;
    consistent(&list["items"][0]);
    // Once the failed state and its error are read back, both show.
    let mut failed = new_info(&id, 10);
    failed.state = FeedState::Failed;
    failed.admin_job_type = AdminJobType::Stop;
    failed.error = Some(error);
    put(
        &mut state,
        key::changefeed_info_key(CLUSTER, &id),
        cdc_model::to_go_json(&failed).unwrap(),
    );
    tick(&mut core, &mut state);
    let detail = core.read(&Job::Get(id.clone())).unwrap().1;
    assert_eq!(detail["state"], json!("failed"), "{detail}");
    consistent(&detail);
}
