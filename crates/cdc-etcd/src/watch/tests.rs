//! The forwarding loop under paused time with scripted streams: TiCDC's `pkg/etcd` watch tests.
//!
//! TestRevisionFromWatchOpts has no counterpart: Go has to dig the start revision out of
//! opaque option closures, while `WatchOptions::start_revision` is a plain field.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::*;
use crate::types::{Event, EventKind, KeyValue};

type Item = Result<Option<WatchResponse>>;

/// Streams that all read one shared script, counting opens and progress requests.
#[derive(Clone)]
struct ScriptedSource {
    script_rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Item>>>,
    calls: Arc<Mutex<Calls>>,
}

#[derive(Default, Debug)]
struct Calls {
    opens: Vec<Revision>,
    progress_requests: usize,
}

struct ScriptedStream {
    script_rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Item>>>,
    calls: Arc<Mutex<Calls>>,
}

impl ScriptedSource {
    fn new(capacity: usize) -> (ScriptedSource, mpsc::Sender<Item>) {
        let (script_tx, script_rx) = mpsc::channel(capacity);
        let source = ScriptedSource {
            script_rx: Arc::new(tokio::sync::Mutex::new(script_rx)),
            calls: Arc::default(),
        };
        (source, script_tx)
    }

    fn opens(&self) -> Vec<Revision> {
        self.calls.lock().unwrap().opens.clone()
    }

    fn progress_requests(&self) -> usize {
        self.calls.lock().unwrap().progress_requests
    }
}

impl WatchSource for ScriptedSource {
    type Stream = ScriptedStream;

    async fn open(&mut self, start_revision: Revision) -> Result<ScriptedStream> {
        self.calls.lock().unwrap().opens.push(start_revision);
        Ok(ScriptedStream {
            script_rx: self.script_rx.clone(),
            calls: self.calls.clone(),
        })
    }
}

impl WatchStream for ScriptedStream {
    async fn next(&mut self) -> Result<Option<WatchResponse>> {
        let mut script_rx = self.script_rx.lock().await;
        // A finished script looks like a stream that never answers again.
        match script_rx.recv().await {
            Some(item) => item,
            None => std::future::pending().await,
        }
    }

    async fn request_progress(&mut self) -> Result<()> {
        self.calls.lock().unwrap().progress_requests += 1;
        Ok(())
    }
}

fn put_response(revision: Revision) -> WatchResponse {
    WatchResponse {
        revision,
        watch_id: 0,
        created: false,
        canceled: false,
        compact_revision: 0,
        cancel_reason: String::new(),
        events: vec![Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: format!("/k/{revision}").into_bytes(),
                value: b"v".to_vec(),
                create_revision: revision,
                mod_revision: revision,
                version: 1,
                lease: 0,
            },
            prev_kv: None,
        }],
    }
}

fn config(buffer: usize) -> WatchConfig {
    WatchConfig {
        buffer,
        ..WatchConfig::default()
    }
}

async fn recv_revision(watch: &mut ResilientWatch) -> Revision {
    let response = tokio::time::timeout(Duration::from_secs(60), watch.recv())
        .await
        .expect("a response within 60 s")
        .expect("the watch is open")
        .expect("not an error");
    response.revision
}

/// Case 13: the underlying stream delivers slowly, through a one-slot channel, with a long
/// silence in the middle: every response is forwarded in order, progress is requested while
/// idle, and the silent watch is re-opened after the last forwarded event.
#[tokio::test(start_paused = true)]
async fn watch_channel_blocked() {
    let (source, script_tx) = ScriptedSource::new(1);
    let cancel = CancellationToken::new();
    let config = config(16);
    assert!(config.progress_interval < config.reset_after);
    let mut watch = ResilientWatch::with_source(source.clone(), 1, config, cancel.clone());
    let producer = tokio::spawn(async move {
        for revision in 1..=6 {
            if revision == 4 {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            script_tx
                .send(Ok(Some(put_response(revision))))
                .await
                .unwrap();
        }
    });
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(recv_revision(&mut watch).await);
    }
    producer.await.unwrap();
    assert_eq!(seen, vec![1, 2, 3, 4, 5, 6]);
    let opens = source.opens();
    assert!(opens.len() > 1, "the silent watch was re-opened: {opens:?}");
    assert_eq!(opens[0], 1);
    assert!(
        opens[1..].iter().all(|&revision| revision == 4),
        "{opens:?}"
    );
    assert!(source.progress_requests() > 1);
    watch.close().await;
}

/// Case 14: the consumer stalls for 30 s behind a one-slot buffer: nothing is lost, order is
/// kept, and the watch is not reset while the forwarder waits on the consumer.
#[tokio::test(start_paused = true)]
async fn output_channel_blocked() {
    let (source, script_tx) = ScriptedSource::new(8);
    let cancel = CancellationToken::new();
    let mut watch = ResilientWatch::with_source(source.clone(), 1, config(1), cancel.clone());
    for revision in 1..=3 {
        script_tx
            .send(Ok(Some(put_response(revision))))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        source.opens(),
        vec![1],
        "no reset while blocked on the consumer"
    );
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(recv_revision(&mut watch).await);
    }
    assert_eq!(seen, vec![1, 2, 3]);
    cancel.cancel();
    assert!(watch.recv().await.is_none());
}

/// Case 15: watching from revision 2, the first answer is an error; the watch is re-opened from
/// revision 2, not from anything later or earlier.
#[tokio::test(start_paused = true)]
async fn revision_not_fall_back() {
    let (source, script_tx) = ScriptedSource::new(8);
    let cancel = CancellationToken::new();
    let mut watch = ResilientWatch::with_source(source.clone(), 2, config(16), cancel.clone());
    script_tx
        .send(Err(Error::StreamBroken {
            op: "watch",
            message: "injected".to_owned(),
        }))
        .await
        .unwrap();
    script_tx.send(Ok(Some(put_response(2)))).await.unwrap();
    assert_eq!(recv_revision(&mut watch).await, 2);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let opens = source.opens();
    assert!(
        opens.len() >= 3,
        "re-opened after the error and after the silence: {opens:?}"
    );
    assert_eq!(&opens[..2], &[2, 2]);
    assert!(
        opens[2..].iter().all(|&revision| revision == 3),
        "{opens:?}"
    );
    watch.close().await;
}

/// A late response with older events (a re-delivery) does not move the resume revision back.
#[tokio::test(start_paused = true)]
async fn resume_revision_only_moves_forward() {
    let (source, script_tx) = ScriptedSource::new(8);
    let cancel = CancellationToken::new();
    let mut watch = ResilientWatch::with_source(source.clone(), 1, config(16), cancel.clone());
    for revision in [5, 3] {
        script_tx
            .send(Ok(Some(put_response(revision))))
            .await
            .unwrap();
    }
    assert_eq!(recv_revision(&mut watch).await, 5);
    assert_eq!(recv_revision(&mut watch).await, 3);
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(source.opens(), vec![1, 6]);
    watch.close().await;
}

/// Progress notifications are forwarded but do not move the resume revision; `created`
/// responses are consumed.
#[tokio::test(start_paused = true)]
async fn progress_is_forwarded_without_advancing() {
    let (source, script_tx) = ScriptedSource::new(8);
    let cancel = CancellationToken::new();
    let mut watch = ResilientWatch::with_source(source.clone(), 7, config(16), cancel.clone());
    let mut created = put_response(9);
    created.created = true;
    created.events.clear();
    let mut progress = put_response(9);
    progress.watch_id = -1;
    progress.events.clear();
    script_tx.send(Ok(Some(created))).await.unwrap();
    script_tx.send(Ok(Some(progress))).await.unwrap();
    let response = watch.recv().await.unwrap().unwrap();
    assert!(response.is_progress_notify());
    assert_eq!(response.revision, 9);
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(source.opens(), vec![7, 7]);
    watch.close().await;
}

/// A compaction answer ends the watch with a typed error naming both revisions.
#[tokio::test(start_paused = true)]
async fn compaction_is_a_typed_error() {
    let (source, script_tx) = ScriptedSource::new(8);
    let cancel = CancellationToken::new();
    let mut watch = ResilientWatch::with_source(source.clone(), 2, config(16), cancel.clone());
    let mut compacted = put_response(9);
    compacted.events.clear();
    compacted.canceled = true;
    compacted.compact_revision = 8;
    script_tx.send(Ok(Some(compacted))).await.unwrap();
    match watch.recv().await {
        Some(Err(Error::Compacted {
            requested: 2,
            compacted: 8,
        })) => {}
        other => panic!("expected a compaction error, got {other:?}"),
    }
    assert!(watch.recv().await.is_none());
}

/// A broken stream is re-opened with growing, bounded backoff until it works again.
#[tokio::test(start_paused = true)]
async fn broken_stream_is_reopened() {
    let (source, script_tx) = ScriptedSource::new(8);
    let cancel = CancellationToken::new();
    let mut watch = ResilientWatch::with_source(source.clone(), 1, config(16), cancel.clone());
    script_tx.send(Ok(Some(put_response(1)))).await.unwrap();
    script_tx.send(Ok(None)).await.unwrap();
    script_tx.send(Ok(Some(put_response(2)))).await.unwrap();
    assert_eq!(recv_revision(&mut watch).await, 1);
    assert_eq!(recv_revision(&mut watch).await, 2);
    assert_eq!(source.opens(), vec![1, 2]);
    cancel.cancel();
    assert!(watch.recv().await.is_none());
    watch.close().await;
}

/// A server-side cancel for a permanent reason (permission denied) ends the watch with a typed
/// error instead of re-opening it for ever.
#[tokio::test(start_paused = true)]
async fn permanent_cancel_ends_the_watch() {
    let (source, script_tx) = ScriptedSource::new(8);
    let cancel = CancellationToken::new();
    let mut watch = ResilientWatch::with_source(source.clone(), 4, config(16), cancel.clone());
    let mut refused = put_response(5);
    refused.events.clear();
    refused.created = true;
    refused.canceled = true;
    refused.cancel_reason = "etcdserver: permission denied".to_owned();
    script_tx.send(Ok(Some(refused))).await.unwrap();
    match watch.recv().await {
        Some(Err(Error::WatchRefused {
            revision: 4,
            source,
        })) => assert!(
            matches!(
                *source,
                Error::WatchCancelled {
                    code: crate::error::RpcCode::PermissionDenied,
                    ..
                }
            ),
            "{source:?}"
        ),
        other => panic!("expected a refused watch, got {other:?}"),
    }
    assert!(watch.recv().await.is_none());
    assert_eq!(source.opens(), vec![4], "never re-opened");
}

/// Opens fail with `error` for ever.
#[derive(Clone)]
struct FailingSource {
    error: fn() -> Error,
    opens: Arc<Mutex<usize>>,
}

impl WatchSource for FailingSource {
    type Stream = ScriptedStream;

    async fn open(&mut self, _start_revision: Revision) -> Result<ScriptedStream> {
        *self.opens.lock().unwrap() += 1;
        Err((self.error)())
    }
}

/// An open refused for a permanent reason ends the watch at once.
#[tokio::test(start_paused = true)]
async fn permanent_open_error_ends_the_watch() {
    let source = FailingSource {
        error: || Error::Rpc {
            op: "watch",
            code: crate::error::RpcCode::PermissionDenied,
            message: "etcdserver: permission denied".to_owned(),
            endpoints: String::new(),
        },
        opens: Arc::default(),
    };
    let cancel = CancellationToken::new();
    let mut watch = ResilientWatch::with_source(source.clone(), 3, config(16), cancel.clone());
    assert!(matches!(
        watch.recv().await,
        Some(Err(Error::WatchRefused { revision: 3, .. }))
    ));
    assert!(watch.recv().await.is_none());
    assert_eq!(*source.opens.lock().unwrap(), 1);
}

/// Opens that fail transiently are retried until the stall limit, then the watch ends with
/// the silence and the last error.
#[tokio::test(start_paused = true)]
async fn transient_failures_end_the_watch_past_the_stall_limit() {
    let source = FailingSource {
        error: || Error::StreamBroken {
            op: "watch",
            message: "injected".to_owned(),
        },
        opens: Arc::default(),
    };
    let cancel = CancellationToken::new();
    let config = config(16);
    let stall_limit = config.stall_limit;
    let started = Instant::now();
    let mut watch = ResilientWatch::with_source(source.clone(), 3, config, cancel.clone());
    match watch.recv().await {
        Some(Err(Error::WatchStalled {
            revision: 3,
            silence,
            last: Some(last),
        })) => {
            assert!(silence >= stall_limit, "{silence:?}");
            assert!(matches!(*last, Error::StreamBroken { .. }), "{last:?}");
        }
        other => panic!("expected a stalled watch, got {other:?}"),
    }
    assert!(started.elapsed() >= stall_limit);
    assert!(*source.opens.lock().unwrap() > 10);
    assert!(watch.recv().await.is_none());
}

/// A stream that never answers, not even progress requests, ends the watch past the stall
/// limit although every re-open succeeds.
#[tokio::test(start_paused = true)]
async fn silent_stream_ends_the_watch_past_the_stall_limit() {
    let (source, _script_tx) = ScriptedSource::new(8);
    let cancel = CancellationToken::new();
    let mut watch = ResilientWatch::with_source(source.clone(), 2, config(16), cancel.clone());
    assert!(matches!(
        watch.recv().await,
        Some(Err(Error::WatchStalled {
            revision: 2,
            last: None,
            ..
        }))
    ));
    assert!(source.opens().len() >= 5, "{:?}", source.opens());
}

/// A stream that never answers, not even a progress request, and says when it is dropped.
struct HungStream {
    dropped: Arc<tokio::sync::Notify>,
}

impl Drop for HungStream {
    fn drop(&mut self) {
        self.dropped.notify_one();
    }
}

impl WatchStream for HungStream {
    async fn next(&mut self) -> Result<Option<WatchResponse>> {
        std::future::pending().await
    }

    async fn request_progress(&mut self) -> Result<()> {
        std::future::pending().await
    }
}

#[derive(Clone)]
struct HungSource {
    dropped: Arc<tokio::sync::Notify>,
}

impl WatchSource for HungSource {
    type Stream = HungStream;

    async fn open(&mut self, _start_revision: Revision) -> Result<HungStream> {
        Ok(HungStream {
            dropped: self.dropped.clone(),
        })
    }
}

/// Dropping the watch ends its task even while the task waits on a call that ignores the
/// cancellation (a progress request that never returns): the stream is dropped with it.
#[tokio::test(start_paused = true)]
async fn dropping_the_watch_aborts_its_task() {
    let dropped = Arc::new(tokio::sync::Notify::new());
    let source = HungSource {
        dropped: dropped.clone(),
    };
    let watch = ResilientWatch::with_source(source, 1, config(16), CancellationToken::new());
    // Past the progress interval: the task is stuck in its progress request.
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(watch);
    tokio::time::timeout(Duration::from_secs(10), dropped.notified())
        .await
        .expect("the watch's stream is dropped with its task");
}
