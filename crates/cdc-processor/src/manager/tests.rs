//! Tests of the processor manager against a real etcd: a hand-made owner drives the agent over
//! p2p (the owner is the capture itself, so messages take the local channel), the etcd worker
//! ticks the manager, and spans run the etcd pipeline into a blackhole sink.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cdc_etcd::testing::EtcdServer;
use cdc_etcd::{CdcEtcdClient, EtcdClient, GetOptions};
use cdc_model::key;
use cdc_model::{
    AtomicLiveness, CaptureInfo, ChangeFeedId, ChangeFeedInfo, TaskPosition, UpstreamInfo,
    to_go_json,
};
use cdc_orchestrator::{EtcdWorker, GlobalReactorState, NextTick, Reactor, TickPoke};
use cdc_p2p::{BoxError, ClientConfig, MessageRouter, MessageServer, NamedTopic, ServerConfig};
use cdc_reactor::{InitPool, ProcessorManager, ProcessorManagerFactory, ReactorContext, Tick};
use cdc_scheduler::{
    AgentRequest, AgentSpanState, Checkpoint, Dispatch, Epoch, Heartbeat, HeartbeatResponse,
    OwnerResponse, Span, SpanId, SpanStatus, ToAgent, ToOwner,
};
use cdc_source_etcd::SourceConfig;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{PipelineConfig, ProcessorConfig, ProcessorReactors};
use cdc_scheduler::{TO_AGENT_TOPIC, TO_OWNER_TOPIC};

const DEADLINE: Duration = Duration::from_secs(30);
const CLUSTER: &str = "default";
const CAPTURE: &str = "capture-1";

/// Task positions by changefeed and capture, as of the last tick.
type Positions = BTreeMap<(ChangeFeedId, String), TaskPosition>;

/// Runs the manager as the capture does, and publishes the task positions after every tick.
struct TestReactor {
    manager: Arc<dyn ProcessorManager>,
    positions_tx: watch::Sender<Positions>,
}

impl Reactor<GlobalReactorState> for TestReactor {
    fn set_tick_poke(&mut self, poke: TickPoke) {
        self.manager.set_tick_poke(poke);
    }

    async fn tick(&mut self, state: &mut GlobalReactorState) -> cdc_orchestrator::Result<NextTick> {
        let tick = self.manager.tick(state).await;
        let positions: Positions = state
            .changefeeds
            .iter()
            .flat_map(|(id, changefeed)| {
                changefeed
                    .task_positions
                    .iter()
                    .map(|(capture, position)| ((id.clone(), capture.clone()), position.clone()))
            })
            .collect();
        self.positions_tx.send_replace(positions);
        match tick.expect("the processor manager ticks") {
            Tick::Continue => Ok(NextTick::After(Duration::ZERO)),
            Tick::Idle => Ok(NextTick::Idle),
            Tick::After(delay) => Ok(NextTick::After(delay)),
            Tick::Finished => Err(cdc_orchestrator::Error::ReactorFinished),
        }
    }
}

/// One capture with its processor manager on a worker, and a hand-made owner on the same
/// capture.
struct Harness {
    etcd: EtcdServer,
    client: EtcdClient,
    router: Arc<MessageRouter>,
    manager: Arc<dyn ProcessorManager>,
    liveness: Arc<AtomicLiveness>,
    to_owner_rx: mpsc::Receiver<ToOwner>,
    positions_rx: watch::Receiver<Positions>,
    owner_revision: i64,
    epoch: Option<Epoch>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

fn fast_config(span_log: Option<&Path>) -> ProcessorConfig {
    ProcessorConfig {
        span_log: span_log.map(Path::to_path_buf),
        pipeline: PipelineConfig {
            source: SourceConfig {
                buffer: 16,
                progress_interval: Duration::from_millis(100),
                confirm_after: Duration::from_millis(150),
                reset_after: Duration::from_secs(10),
            },
            flush_interval: Duration::from_millis(50),
            max_unflushed_bytes: crate::DEFAULT_MAX_UNFLUSHED_BYTES,
        },
        progress_interval: Duration::from_millis(100),
        ..ProcessorConfig::default()
    }
}

impl Harness {
    async fn start(config: ProcessorConfig) -> Harness {
        Box::pin(Harness::start_with(ProcessorReactors::new(config))).await
    }

    async fn start_with(reactors: ProcessorReactors) -> Harness {
        let etcd = EtcdServer::start().await.unwrap();
        let client = etcd.client().await.unwrap();
        let cdc_client = CdcEtcdClient::new(client.clone(), CLUSTER).await.unwrap();
        let capture = CaptureInfo {
            id: CAPTURE.to_owned(),
            address: "127.0.0.1:8300".to_owned(),
            ..CaptureInfo::default()
        };
        client
            .put(
                key::capture_key(CLUSTER, CAPTURE),
                to_go_json(&capture).unwrap(),
                0,
            )
            .await
            .unwrap();

        let cancel = CancellationToken::new();
        let mut tasks = Vec::new();
        let server = Arc::new(MessageServer::new(CAPTURE, ServerConfig::default()));
        let router = Arc::new(MessageRouter::new(CAPTURE, ClientConfig::default()));
        {
            let (server, local, cancel) = (server.clone(), router.local_channel(), cancel.clone());
            tasks.push(tokio::spawn(async move {
                server.run(cancel, local).await.unwrap();
            }));
        }
        // The owner's end: what the agent answers.
        let (to_owner_tx, to_owner_rx) = mpsc::channel(1024);
        let topic: NamedTopic<ToOwner> = NamedTopic::new(TO_OWNER_TOPIC);
        server
            .add_handler(
                &topic,
                move |_sender, message: ToOwner| {
                    let to_owner_tx = to_owner_tx.clone();
                    async move { to_owner_tx.send(message).await.map_err(BoxError::from) }
                },
                &cancel,
            )
            .await
            .unwrap();

        let context = ReactorContext {
            etcd: cdc_client,
            capture_id: CAPTURE.to_owned(),
            lease_id: 0,
            owner_revision: 0,
            pd_endpoints: etcd.endpoint(),
            router: router.clone(),
            message_server: server,
            init_pool: Arc::new(InitPool::new(1)),
        };
        let liveness = Arc::new(AtomicLiveness::default());
        let manager = reactors.create(context, liveness.clone());
        let (positions_tx, positions_rx) = watch::channel(Positions::new());
        {
            let mut reactor = TestReactor {
                manager: manager.clone(),
                positions_tx,
            };
            let worker = EtcdWorker::new(client.clone(), key::base_key(CLUSTER));
            let cancel = cancel.clone();
            tasks.push(tokio::spawn(async move {
                let state = GlobalReactorState::new(CLUSTER, 10);
                let result = worker
                    .run(&mut reactor, state, Duration::from_millis(20), &cancel)
                    .await;
                // Cancelled by the test's end, or finished after the manager closed.
                match result {
                    Ok(_) | Err(cdc_orchestrator::Error::Cancelled) => {}
                    Err(err) => panic!("the worker failed: {err:?}"),
                }
            }));
        }
        Harness {
            etcd,
            client,
            router,
            manager,
            liveness,
            to_owner_rx,
            positions_rx,
            owner_revision: 1,
            epoch: None,
            cancel,
            tasks,
        }
    }

    /// The error of this capture's task position of `changefeed`, once one is written.
    async fn position_error(&mut self, changefeed: &ChangeFeedId) -> cdc_model::RunningError {
        let position_key = (changefeed.clone(), CAPTURE.to_owned());
        let positions = tokio::time::timeout(
            DEADLINE,
            self.positions_rx
                .wait_for(|positions| positions.contains_key(&position_key)),
        )
        .await
        .expect("the task position was written in time")
        .unwrap()
        .clone();
        positions[&position_key]
            .error
            .clone()
            .expect("the task position has an error")
    }

    /// A changefeed of the default upstream (the cluster's etcd) into the blackhole sink.
    async fn create_changefeed(&self, id: &str) -> ChangeFeedId {
        let cdc_client = CdcEtcdClient::new(self.client.clone(), CLUSTER)
            .await
            .unwrap();
        self.create_changefeed_on(id, cdc_client.etcd_cluster_id())
            .await
    }

    /// A changefeed of `upstream_id` into the blackhole sink.
    async fn create_changefeed_on(&self, id: &str, upstream_id: u64) -> ChangeFeedId {
        self.put_info(id, upstream_id, serde_json::json!({})).await
    }

    /// Writes a changefeed's info with this `config`.
    async fn put_info(
        &self,
        id: &str,
        upstream_id: u64,
        config: serde_json::Value,
    ) -> ChangeFeedId {
        let changefeed = ChangeFeedId::new("default", id);
        let info = ChangeFeedInfo {
            upstream_id,
            namespace: changefeed.namespace.clone(),
            changefeed_id: changefeed.id.clone(),
            sink_uri: "blackhole://".to_owned(),
            config: Some(config),
            ..ChangeFeedInfo::default()
        };
        self.client
            .put(
                key::changefeed_info_key(CLUSTER, &changefeed),
                to_go_json(&info).unwrap(),
                0,
            )
            .await
            .unwrap();
        changefeed
    }

    async fn send(&self, body: AgentRequest) {
        let message = ToAgent {
            from: CAPTURE.to_owned(),
            to: CAPTURE.to_owned(),
            owner_revision: self.owner_revision,
            epoch: self.epoch,
            body,
        };
        let topic: NamedTopic<ToAgent> = NamedTopic::new(TO_AGENT_TOPIC);
        self.router
            .client(CAPTURE)
            .unwrap()
            .send_message(&topic, message, &self.cancel)
            .await
            .unwrap();
    }

    /// The next answer of the agent.
    async fn receive(&mut self) -> ToOwner {
        let message = tokio::time::timeout(DEADLINE, self.to_owner_rx.recv())
            .await
            .expect("the agent answered in time")
            .unwrap();
        assert_eq!(
            (message.from.as_str(), message.to.as_str()),
            (CAPTURE, CAPTURE)
        );
        assert_eq!(message.owner_revision, self.owner_revision);
        message
    }

    /// Heartbeats until the agent answers (its handler may not be registered yet); learns its
    /// epoch.
    async fn handshake(&mut self) {
        let epoch = tokio::time::timeout(DEADLINE, async {
            loop {
                self.send(AgentRequest::Heartbeat(Heartbeat::default()))
                    .await;
                match tokio::time::timeout(Duration::from_secs(1), self.to_owner_rx.recv()).await {
                    Ok(Some(message)) => return message.epoch,
                    Ok(None) => panic!("the owner's handler is gone"),
                    // Sent before the handler was registered: that message is lost.
                    Err(_) => {}
                }
            }
        })
        .await
        .expect("the agent answered a heartbeat");
        self.epoch = Some(epoch);
    }

    /// The next dispatch answer about a span.
    async fn dispatch_status(&mut self) -> SpanStatus {
        loop {
            if let OwnerResponse::Dispatch(response) = self.receive().await.body {
                return response.status;
            }
        }
    }

    /// Heartbeats until the answer satisfies `done`.
    /// Prepares then replicates `span` from revision `start` and waits until a heartbeat
    /// reports a span replicating.
    async fn replicate(&mut self, span: &Span, start: u64) {
        self.send(add(span, start, true)).await;
        self.send(add(span, start, false)).await;
        self.heartbeat_until(|spans| {
            spans
                .iter()
                .any(|status| status.state == AgentSpanState::Replicating)
        })
        .await;
    }

    /// The spans of the first heartbeat in which some span's checkpoint is `written` or later.
    async fn heartbeat_past(&mut self, written: u64) -> Vec<SpanStatus> {
        self.heartbeat_until(|spans| {
            spans
                .iter()
                .any(|status| status.checkpoint.checkpoint >= written)
        })
        .await
    }

    async fn heartbeat_until(&mut self, done: impl Fn(&[SpanStatus]) -> bool) -> Vec<SpanStatus> {
        self.heartbeat_response_until(|response| done(&response.spans))
            .await
            .spans
    }

    /// Heartbeats until the answer satisfies `done`.
    async fn heartbeat_response_until(
        &mut self,
        done: impl Fn(&HeartbeatResponse) -> bool,
    ) -> HeartbeatResponse {
        tokio::time::timeout(DEADLINE, async {
            loop {
                self.send(AgentRequest::Heartbeat(Heartbeat::default()))
                    .await;
                loop {
                    if let OwnerResponse::Heartbeat(response) = self.receive().await.body {
                        if done(&response) {
                            return response;
                        }
                        break;
                    }
                }
            }
        })
        .await
        .expect("the heartbeats showed it in time")
    }

    async fn close(mut self) {
        tokio::time::timeout(DEADLINE, self.manager.close())
            .await
            .expect("the manager closed in time");
        self.cancel.cancel();
        for task in self.tasks.drain(..) {
            task.await.unwrap();
        }
        drop(self.etcd);
    }
}

async fn current_revision(client: &EtcdClient) -> u64 {
    let response = client.get("/none", GetOptions::default()).await.unwrap();
    u64::try_from(response.revision).unwrap()
}

fn span(changefeed: &ChangeFeedId, id: u64, prefix: &str) -> Span {
    let mut end_key = prefix.as_bytes().to_vec();
    *end_key.last_mut().unwrap() += 1;
    Span {
        span_id: SpanId(id),
        changefeed: changefeed.clone(),
        start_key: prefix.as_bytes().to_vec(),
        end_key,
    }
}

fn add(span: &Span, checkpoint: u64, prepare: bool) -> AgentRequest {
    AgentRequest::Dispatch(Dispatch::Add {
        span: span.clone(),
        checkpoint: Checkpoint::at(checkpoint),
        prepare,
    })
}

fn remove(span: &Span) -> AgentRequest {
    AgentRequest::Dispatch(Dispatch::Remove {
        span: span.span_ref(),
    })
}

/// Waits (bounded) until the span log holds exactly `expected`.
async fn wait_log_events(path: &Path, expected: &[(String, String, u64, String)]) {
    let waited = tokio::time::timeout(DEADLINE, async {
        loop {
            if log_events(path) == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "span log {:?}, expected {expected:?}",
        log_events(path)
    );
}

fn log_events(path: &Path) -> Vec<(String, String, u64, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(value["mono_ns"].as_u64().unwrap() > 0);
            (
                value["capture"].as_str().unwrap().to_owned(),
                value["changefeed"].as_str().unwrap().to_owned(),
                value["span_id"].as_u64().unwrap(),
                value["event"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn agent_runs_an_etcd_span_from_prepare_to_remove() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("spans.jsonl");
    let mut harness = Box::pin(Harness::start(fast_config(Some(&log_path)))).await;
    let changefeed = harness.create_changefeed("cf1").await;
    harness.handshake().await;
    let span = span(&changefeed, 0, "/data/");
    let start = current_revision(&harness.client).await;

    harness.send(add(&span, start, true)).await;
    let status = harness.dispatch_status().await;
    assert_eq!(
        (status.span.clone(), status.state),
        (span.span_ref(), AgentSpanState::Prepared)
    );
    assert!(
        log_events(&log_path).is_empty(),
        "prepared spans do not run"
    );

    harness.send(add(&span, start, false)).await;
    let status = harness.dispatch_status().await;
    assert_eq!(status.state, AgentSpanState::Replicating);
    let start_line = (
        CAPTURE.to_owned(),
        "default/cf1".to_owned(),
        0,
        "start".to_owned(),
    );
    // The agent reports the span replicating at the order; its pipeline (and so its start line)
    // may wait for this capture's worker to read the changefeed's info.
    wait_log_events(&log_path, std::slice::from_ref(&start_line)).await;

    // Changes in the span move its checkpoint, which the heartbeats report.
    let written = u64::try_from(harness.client.put("/data/a", "1", 0).await.unwrap()).unwrap();
    harness.client.put("/other", "x", 0).await.unwrap();
    let spans = harness.heartbeat_past(written).await;
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].state, AgentSpanState::Replicating);

    // Remove: stopping, then stopped once the pipeline has ended, after its stop line.
    harness.send(remove(&span)).await;
    let status = harness.dispatch_status().await;
    assert_eq!(status.state, AgentSpanState::Stopping);
    let status = harness.dispatch_status().await;
    assert_eq!(status.state, AgentSpanState::Stopped);
    assert!(status.checkpoint.checkpoint >= written);
    let stop_line = (
        CAPTURE.to_owned(),
        "default/cf1".to_owned(),
        0,
        "stop".to_owned(),
    );
    assert_eq!(log_events(&log_path), [start_line, stop_line]);

    // The owner acknowledges the stop: the span is gone.
    harness.send(remove(&span)).await;
    let status = harness.dispatch_status().await;
    assert_eq!(status.state, AgentSpanState::Absent);
    harness.close().await;
}

#[tokio::test]
async fn compacted_start_revision_lands_in_the_task_position() {
    let mut harness = Box::pin(Harness::start(fast_config(None))).await;
    let changefeed = harness.create_changefeed("cf2").await;
    harness.handshake().await;
    let span = span(&changefeed, 1, "/gone/");
    let start = current_revision(&harness.client).await;
    for i in 0..3 {
        harness
            .client
            .put(format!("/gone/{i}"), "x", 0)
            .await
            .unwrap();
    }
    let compacted = harness.etcd.compact().await.unwrap();

    harness.send(add(&span, start, true)).await;
    harness.send(add(&span, start, false)).await;
    // Both orders may arrive in one tick, then the prepared answer is skipped.
    let mut states = Vec::new();
    while states.last() != Some(&AgentSpanState::Stopped) {
        let status = harness.dispatch_status().await;
        assert_eq!(status.checkpoint.checkpoint, start, "{status:?}");
        states.push(status.state);
    }
    states.retain(|state| *state != AgentSpanState::Prepared);
    assert_eq!(
        states,
        [AgentSpanState::Replicating, AgentSpanState::Stopped]
    );

    let error = harness.position_error(&changefeed).await;
    assert_eq!(error.code, "CDC:ErrSnapshotLostByGC");
    assert_eq!(error.addr, "127.0.0.1:8300");
    assert!(
        error
            .message
            .contains(&format!("start revision {}", start + 1))
            || error.message.contains(&start.to_string()),
        "{error:?}"
    );
    assert!(error.message.contains(&compacted.to_string()), "{error:?}");
    harness.close().await;
}

#[tokio::test]
async fn spans_of_a_named_upstream_run_until_close_and_report_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("spans.jsonl");
    let mut harness = Box::pin(Harness::start(fast_config(Some(&log_path)))).await;
    // Another upstream (here the same etcd under another ID), as a changefeed created with
    // `pd_addrs` names it.
    let upstream = UpstreamInfo {
        id: 42,
        pd_endpoints: harness.etcd.endpoint(),
        ..UpstreamInfo::default()
    };
    harness
        .client
        .put(
            key::upstream_key(CLUSTER, "default", 42),
            to_go_json(&upstream).unwrap(),
            0,
        )
        .await
        .unwrap();
    let changefeed = harness.create_changefeed_on("cf3", 42).await;
    harness.handshake().await;
    let start = current_revision(&harness.client).await;
    let spans = [span(&changefeed, 0, "/a/"), span(&changefeed, 1, "/b/")];
    for span in &spans {
        harness.send(add(span, start, true)).await;
        harness.send(add(span, start, false)).await;
    }
    let written = u64::try_from(harness.client.put("/b/x", "1", 0).await.unwrap()).unwrap();
    let statuses = harness
        .heartbeat_until(|statuses| {
            statuses.len() == 2
                && statuses.iter().all(|status| {
                    status.state == AgentSpanState::Replicating
                        && status.checkpoint.checkpoint >= written
                })
        })
        .await;
    assert_eq!(statuses.len(), 2);
    let mut debug_info = String::new();
    harness.manager.write_debug_info(&mut debug_info);
    assert!(debug_info.contains("upstream clients [42]"), "{debug_info}");

    // A draining capture says so in its heartbeat answers.
    harness.liveness.store_stopping();
    let response = harness
        .heartbeat_response_until(|response| response.stopping)
        .await;
    assert_eq!(response.spans.len(), 2);

    // Closing stops both pipelines and logs their stops.
    let manager = harness.manager.clone();
    harness.close().await;
    let events = log_events(&log_path);
    let n_starts = events.iter().filter(|line| line.3 == "start").count();
    let n_stops = events.iter().filter(|line| line.3 == "stop").count();
    assert_eq!((n_starts, n_stops), (2, 2), "{events:?}");
    let mut debug_info = String::new();
    manager.write_debug_info(&mut debug_info);
    assert!(debug_info.contains("closed true"), "{debug_info}");
}

#[tokio::test]
async fn a_span_dispatched_before_its_changefeed_is_seen_starts_once_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("spans.jsonl");
    let mut harness = Box::pin(Harness::start(fast_config(Some(&log_path)))).await;
    harness.handshake().await;
    // The owner may dispatch spans of a changefeed it has just created before this capture's
    // worker has seen the info.
    let changefeed = ChangeFeedId::new("default", "late");
    let span = span(&changefeed, 0, "/late/");
    let start = current_revision(&harness.client).await;
    harness.replicate(&span, start).await;
    let mut debug_info = String::new();
    harness.manager.write_debug_info(&mut debug_info);
    assert!(debug_info.contains("waiting to start"), "{debug_info}");
    assert!(log_events(&log_path).is_empty());

    harness.create_changefeed("late").await;
    let written = u64::try_from(harness.client.put("/late/a", "1", 0).await.unwrap()).unwrap();
    let spans = harness.heartbeat_past(written).await;
    assert_eq!(spans[0].state, AgentSpanState::Replicating);
    let events: Vec<String> = log_events(&log_path)
        .into_iter()
        .map(|line| line.3)
        .collect();
    assert_eq!(events, ["start"]);
    harness.close().await;
}

#[tokio::test]
async fn malformed_rules_land_in_the_task_position() {
    let mut harness = Box::pin(Harness::start(fast_config(None))).await;
    let upstream_id = CdcEtcdClient::new(harness.client.clone(), CLUSTER)
        .await
        .unwrap()
        .etcd_cluster_id();
    let config = serde_json::json!({"filter": {"rules_base64": ["not base64!"]}});
    let changefeed = harness.put_info("bad", upstream_id, config).await;
    harness.handshake().await;
    let span = span(&changefeed, 0, "/bad/");
    let start = current_revision(&harness.client).await;
    harness.send(add(&span, start, true)).await;
    harness.send(add(&span, start, false)).await;
    while harness.dispatch_status().await.state != AgentSpanState::Stopped {}
    let error = harness.position_error(&changefeed).await;
    assert_eq!(error.code, "CDC:ErrInvalidReplicaConfig");
    assert!(error.message.contains("rules_base64"), "{error:?}");
    harness.close().await;
}

/// A pipeline that records its starts and runs until stopped.
#[derive(Default)]
struct RecordingPipeline {
    starts: std::sync::Mutex<Vec<(cdc_scheduler::SpanRef, u64)>>,
}

impl crate::SpanPipeline for RecordingPipeline {
    fn start(&self, span: Span, from_revision: u64) -> crate::PipelineHandle {
        self.starts
            .lock()
            .unwrap()
            .push((span.span_ref(), from_revision));
        crate::PipelineHandle::spawn(
            span.span_ref().to_string(),
            from_revision,
            |_reporter, cancel| async move {
                cancel.cancelled().await;
                Ok(())
            },
        )
    }
}

#[tokio::test]
async fn a_fixed_pipeline_runs_every_span() {
    let pipeline = Arc::new(RecordingPipeline::default());
    let reactors = ProcessorReactors::with_pipeline(fast_config(None), pipeline.clone());
    let mut harness = Box::pin(Harness::start_with(reactors)).await;
    harness.handshake().await;
    // No changefeed info is needed: the fixed pipeline ignores upstream and sink.
    let span = span(&ChangeFeedId::new("default", "any"), 7, "/x/");
    harness.replicate(&span, 11).await;
    assert_eq!(*pipeline.starts.lock().unwrap(), [(span.span_ref(), 11)]);
    harness.send(remove(&span)).await;
    harness
        .heartbeat_until(|spans| {
            spans
                .iter()
                .any(|status| status.state == AgentSpanState::Stopped)
        })
        .await;
    harness.close().await;
}

#[test]
fn running_error_takes_the_innermost_code_and_the_whole_chain() {
    let error = crate::Error::Source {
        span: "default/cf#0".to_owned(),
        source: cdc_source_etcd::Error::Compacted {
            revision: 5,
            compacted: 9,
        },
    };
    let running = super::running_error(&error, "127.0.0.1:8300");
    assert_eq!(running.code, "CDC:ErrSnapshotLostByGC");
    assert_eq!(running.addr, "127.0.0.1:8300");
    assert_eq!(
        running.message,
        "[CDC:ErrProcessorSource]source of span default/cf#0 failed: \
         [CDC:ErrSnapshotLostByGC]start revision 5 of the span is compacted (compact revision 9)"
    );
    assert!(!running.time.is_zero());

    let uncoded = crate::Error::ChangefeedNotFound {
        changefeed: "default/cf".to_owned(),
    };
    assert_eq!(
        super::running_error(&uncoded, "").code,
        "CDC:ErrChangeFeedNotExists"
    );
}
