//! Tests of the owner on a capture: a real etcd worker, the p2p server and router of one
//! capture, and an in-process agent behind the agent topic.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use cdc_etcd::testing::EtcdServer;
use cdc_etcd::{CdcEtcdClient, EtcdClient};
use cdc_model::{ChangeFeedId, key};
use cdc_orchestrator::{EtcdWorker, NextTick, Reactor, TickPoke};
use cdc_p2p::{BoxError, ClientConfig, MessageRouter, MessageServer, ServerConfig};
use cdc_reactor::{InitPool, OwnerFactory};
use serde_json::{Value, json};

use super::*;
use crate::fake_agent::{FakeAgent, get_kv, put_capture};

const CLUSTER: &str = "default";
const CAPTURE: &str = "c1";
const DEADLINE: Duration = Duration::from_secs(60);

/// Runs an [`Owner`] on an etcd worker, as the capture does; a failed tick ends the worker and
/// is kept.
struct OwnerReactor {
    owner: Arc<dyn Owner>,
    failure: Arc<std::sync::Mutex<Option<cdc_reactor::Error>>>,
}

impl OwnerReactor {
    fn new(owner: Arc<dyn Owner>) -> OwnerReactor {
        OwnerReactor {
            owner,
            failure: Arc::default(),
        }
    }
}

impl Reactor<GlobalReactorState> for OwnerReactor {
    async fn tick(&mut self, state: &mut GlobalReactorState) -> cdc_orchestrator::Result<NextTick> {
        match self.owner.tick(state).await {
            Ok(Tick::Continue) => Ok(NextTick::After(Duration::ZERO)),
            Ok(Tick::Idle) => Ok(NextTick::Idle),
            Ok(Tick::After(delay)) => Ok(NextTick::After(delay)),
            Ok(Tick::Finished) => Err(cdc_orchestrator::Error::ReactorFinished),
            Err(err) => {
                *self.failure.lock().unwrap() = Some(err);
                Err(cdc_orchestrator::Error::Cancelled)
            }
        }
    }

    fn set_tick_poke(&mut self, poke: TickPoke) {
        self.owner.set_tick_poke(poke);
    }
}

/// The context of an owner on capture [`CAPTURE`], the only capture of [`CLUSTER`].
async fn reactor_context(
    client: &EtcdClient,
    etcd: &EtcdServer,
    router: &Arc<MessageRouter>,
    server: &Arc<MessageServer>,
) -> ReactorContext {
    ReactorContext {
        etcd: CdcEtcdClient::new(client.clone(), CLUSTER).await.unwrap(),
        capture_id: CAPTURE.to_owned(),
        lease_id: 0,
        owner_revision: 1,
        pd_endpoints: etcd.endpoint(),
        router: router.clone(),
        message_server: server.clone(),
        init_pool: Arc::new(InitPool::new(1)),
    }
}

/// `POST /changefeeds` with `body`.
async fn create(api: &Arc<dyn OwnerApi>, body: Value) -> (u16, Value) {
    serve(api, "POST", "/changefeeds", body).await
}

async fn serve(api: &Arc<dyn OwnerApi>, method: &str, path: &str, body: Value) -> (u16, Value) {
    let body = if body.is_null() {
        Bytes::new()
    } else {
        Bytes::from(body.to_string())
    };
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let response = api
        .serve(ApiRequest {
            method: method.to_owned(),
            path: path.to_owned(),
            query: query.to_owned(),
            body,
        })
        .await;
    (response.status, response.body)
}

/// Polls `GET path` until `check` holds on the answer (bounded).
async fn wait_get(api: &Arc<dyn OwnerApi>, path: &str, check: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let (status, body) = serve(api, "GET", path, Value::Null).await;
        if status == 200 && check(&body) {
            return body;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "GET {path} stuck at {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_creates_runs_pauses_resumes_and_removes_a_changefeed() {
    let mut etcd = EtcdServer::start().await.expect("start etcd");
    let client = etcd.client().await.unwrap();
    put_capture(&client, CLUSTER, CAPTURE, "127.0.0.1:1").await;
    for i in 0..8 {
        client.put(format!("/demo/{i}"), "v", 0).await.unwrap();
    }
    let cancel = CancellationToken::new();
    let server = Arc::new(MessageServer::new(CAPTURE, ServerConfig::default()));
    let router = Arc::new(MessageRouter::new(CAPTURE, ClientConfig::default()));
    let server_task = {
        let (server, local, cancel) = (server.clone(), router.local_channel(), cancel.clone());
        tokio::spawn(async move { server.run(cancel, local).await })
    };
    // The agent of this capture, answering over the owner topic.
    let agent_router = router.clone();
    let mut agent = FakeAgent::new(CAPTURE, Arc::new(AtomicU64::new(0)));
    let _errors = server
        .add_handler(
            &to_agent_topic(),
            move |_sender, message: ToAgent| {
                let client = agent_router.client(CAPTURE).expect("the local client");
                for answer in agent.handle(message) {
                    let _ = client.try_send_message(&to_owner_topic(), answer);
                }
                std::future::ready(Ok::<(), BoxError>(()))
            },
            &cancel,
        )
        .await
        .unwrap();

    let context = reactor_context(&client, &etcd, &router, &server).await;
    let owner = OwnerReactors::new(OwnerConfig::default())
        .unwrap()
        .create(context);
    let api = owner.api().expect("the owner serves the API");
    let worker = {
        let (client, cancel, owner) = (client.clone(), cancel.clone(), owner.clone());
        tokio::spawn(async move {
            EtcdWorker::new(client, key::base_key(CLUSTER))
                .run(
                    &mut OwnerReactor::new(owner),
                    GlobalReactorState::new(CLUSTER, 10),
                    Duration::from_millis(10),
                    &cancel,
                )
                .await
        })
    };

    // Bad requests name the field.
    let (status, body) = create(
        &api,
        json!({"changefeed_id": "cf1", "sink_uri": "blackhole://", "start_ts": 1_000_000,
               "replica_config": {"filter": {"rules": ["/demo/"]}}}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error_msg"].as_str().unwrap().contains("start_ts"),
        "{body}"
    );
    let (status, body) = create(&api, json!({"changefeed_id": "cf1", "sinkuri": "x"})).await;
    assert_eq!(
        (status, body["error_code"].clone()),
        (400, json!("CDC:ErrAPIInvalidParam"))
    );

    // An info too large for one transaction is refused.
    let rules: Vec<String> = (0..40_000).map(|i| format!("/big/{i:06}/")).collect();
    let (status, body) = create(
        &api,
        json!({"changefeed_id": "big", "sink_uri": "blackhole://",
               "replica_config": {"filter": {"rules": rules}}}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error_msg"].as_str().unwrap().contains("bytes"),
        "{body}"
    );

    // Create: 4 spans split at the keys present.
    let (status, body) = create(
        &api,
        json!({"changefeed_id": "cf1", "sink_uri": "blackhole://",
               "replica_config": {"filter": {"rules": ["/demo/"]}, "scheduler": {"spans_per_prefix": 4}}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let start_ts = body["start_ts"].as_u64().unwrap();
    assert!(start_ts >= 9, "{body}");
    let starts: Vec<&str> = body["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|span| span["start_key"].as_str().unwrap())
        .collect();
    assert_eq!(starts, vec!["/demo/", "/demo/2", "/demo/4", "/demo/6"]);
    let id = ChangeFeedId::default_namespace("cf1");
    let get = |key: String| get_kv(&client, key);
    let info_kv = get(key::changefeed_info_key(CLUSTER, &id)).await.unwrap();
    let status_kv = get(key::changefeed_status_key(CLUSTER, &id)).await.unwrap();
    assert_eq!(
        info_kv.mod_revision, status_kv.mod_revision,
        "one transaction"
    );
    let stored: ChangeFeedInfo = cdc_model::from_json(&info_kv.value).unwrap();
    assert_eq!(
        stored.config.as_ref().unwrap()["scheduler"]["split_keys_base64"],
        json!([["L2RlbW8vMg==", "L2RlbW8vNA==", "L2RlbW8vNg=="]])
    );
    let (status, _) = create(
        &api,
        json!({"changefeed_id": "cf1", "sink_uri": "blackhole://",
               "replica_config": {"filter": {"rules": ["/demo/"]}}}),
    )
    .await;
    assert_eq!(status, 409);

    // The spans replicate on the one capture.
    wait_get(&api, "/changefeeds/cf1", |body| {
        body["spans"]
            .as_array()
            .is_some_and(|spans| spans.iter().all(|s| s["state"] == "replicating"))
    })
    .await;
    let (status, body) = serve(&api, "GET", "/changefeeds", Value::Null).await;
    assert_eq!((status, body["total"].clone()), (200, json!(1)), "{body}");
    assert_eq!(body["items"][0]["state"], json!("normal"));
    let (status, body) = serve(&api, "GET", "/processors", Value::Null).await;
    assert_eq!((status, body["total"].clone()), (200, json!(1)), "{body}");
    let (status, body) = serve(&api, "GET", "/processors/cf1/c1", Value::Null).await;
    assert_eq!((status, body), (200, json!({"table_ids": [0, 1, 2, 3]})));
    let (status, body) = serve(&api, "POST", "/captures/c1/drain", Value::Null).await;
    assert_eq!(status, 400, "the owner cannot be drained: {body}");

    // Pause, update while stopped, resume.
    let (status, _) = serve(&api, "POST", "/changefeeds/cf1/pause", Value::Null).await;
    assert_eq!(status, 200);
    wait_get(&api, "/changefeeds/cf1", |body| {
        body["state"] == "stopped" && body["task_status"] == json!([])
    })
    .await;
    let (status, body) = serve(
        &api,
        "PUT",
        "/changefeeds/cf1",
        json!({"target_ts": start_ts + 1000,
               "replica_config": {"scheduler": {"spans_per_prefix": 2}}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = serve(&api, "POST", "/changefeeds/cf1/resume", json!({})).await;
    assert_eq!(status, 200);
    let body = wait_get(&api, "/changefeeds/cf1", |body| {
        body["state"] == "normal"
            && body["spans"].as_array().is_some_and(|spans| {
                spans.len() == 2 && spans.iter().all(|s| s["state"] == "replicating")
            })
    })
    .await;
    assert_eq!(body["target_ts"], json!(start_ts + 1000));
    // The split keys were chosen again from the keys present.
    assert_eq!(body["spans"][1]["start_key"], json!("/demo/4"), "{body}");
    assert_eq!(body["config"]["scheduler"]["spans_per_prefix"], json!(2));
    let (status, body) = serve(&api, "PUT", "/changefeeds/cf1", json!({"target_ts": 0})).await;
    assert_eq!(
        (status, body["error_code"].clone()),
        (400, json!("CDC:ErrChangefeedUpdateRefused"))
    );

    // Remove.
    let (status, _) = serve(&api, "DELETE", "/changefeeds/cf1", Value::Null).await;
    assert_eq!(status, 200);
    let started = Instant::now();
    loop {
        let (status, _) = serve(&api, "GET", "/changefeeds/cf1", Value::Null).await;
        if status == 404 {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "the changefeed stays");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        get(key::changefeed_status_key(CLUSTER, &id))
            .await
            .is_none()
    );

    // A compacted start revision is refused.
    etcd.compact().await.unwrap();
    let (status, body) = create(
        &api,
        json!({"changefeed_id": "cf2", "sink_uri": "blackhole://", "start_ts": 2,
               "replica_config": {"filter": {"rules": ["/demo/"]}}}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error_code"], json!("CDC:ErrStartTsBeforeGC"));

    // The term ends: the worker finishes and the API answers 503.
    owner.async_stop();
    let _ = tokio::time::timeout(DEADLINE, worker)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let (status, _) = serve(&api, "GET", "/changefeeds", Value::Null).await;
    assert_eq!(status, 503);
    drop(owner);
    let (status, _) = serve(&api, "GET", "/changefeeds", Value::Null).await;
    assert_eq!(status, 503);
    cancel.cancel();
    let _ = server_task.await;
    let _ = &mut etcd;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_whose_message_handler_fails_ends_its_term() {
    let etcd = EtcdServer::start().await.expect("start etcd");
    let client = etcd.client().await.unwrap();
    let cancel = CancellationToken::new();
    let server = Arc::new(MessageServer::new(CAPTURE, ServerConfig::default()));
    let router = Arc::new(MessageRouter::new(CAPTURE, ClientConfig::default()));
    let server_task = {
        let (server, local, cancel) = (server.clone(), router.local_channel(), cancel.clone());
        tokio::spawn(async move { server.run(cancel, local).await })
    };
    let context = reactor_context(&client, &etcd, &router, &server).await;
    let owner = OwnerReactors::default().create(context);
    let api = owner.api().expect("the owner serves the API");
    let mut reactor = OwnerReactor::new(owner);
    let failure = reactor.failure.clone();
    let worker = {
        let (client, cancel) = (client.clone(), cancel.clone());
        tokio::spawn(async move {
            EtcdWorker::new(client, key::base_key(CLUSTER))
                .run(
                    &mut reactor,
                    GlobalReactorState::new(CLUSTER, 10),
                    Duration::from_millis(10),
                    &cancel,
                )
                .await
        })
    };
    // The owner serves once its first tick registered the handler.
    wait_get(&api, "/changefeeds", |body| body["total"] == json!(0)).await;
    // A message on the owner's topic that is no scheduler message fails the handler.
    let topic: cdc_p2p::NamedTopic<String> = cdc_p2p::NamedTopic::new(TO_OWNER_TOPIC);
    router
        .client(CAPTURE)
        .expect("the local client")
        .send_message(&topic, "garbage".to_owned(), &cancel)
        .await
        .unwrap();
    let ended = tokio::time::timeout(DEADLINE, worker)
        .await
        .unwrap()
        .unwrap();
    assert!(ended.is_err());
    let failure = failure.lock().unwrap().take().expect("the tick failed");
    assert!(
        matches!(
            failure,
            cdc_reactor::Error::Reactor {
                restarts_capture: true,
                ..
            }
        ),
        "{failure:?}"
    );
    cancel.cancel();
    let _ = server_task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_revision_read_is_never_older_than_the_request() {
    let etcd = EtcdServer::start().await.expect("start etcd");
    let client = etcd.client().await.unwrap();
    let shared = SharedRevision::default();
    for i in 0..3 {
        client.put(format!("/rev/{i}"), "v", 0).await.unwrap();
        let before = current_revision(&client).await.unwrap();
        let reads = futures::future::join_all((0..16).map(|_| shared.current(&client))).await;
        for read in reads {
            let read = read.unwrap();
            assert!(read >= before, "read {read} older than {before}");
        }
    }
}
