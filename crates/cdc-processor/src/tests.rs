//! Tests of the etcd span pipeline against a real etcd, with a recording sink.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cdc_etcd::testing::EtcdServer;
use cdc_etcd::{EtcdClient, GetOptions};
use cdc_model::{ChangeEvent, ChangeFeedId};
use cdc_scheduler::{Checkpoint, Span, SpanId};
use cdc_sink::Sink;
use cdc_source_etcd::SourceConfig;
use tokio::sync::watch;

use crate::{
    Error, EtcdPipeline, PipelineConfig, PipelineHandle, PipelineProgress, PipelineState,
    SinkFactory, SpanPipeline,
};

const DEADLINE: Duration = Duration::from_secs(30);

/// What the recording sink saw.
#[derive(Debug, Default)]
struct Recorded {
    /// Every change written, in order.
    written: Vec<ChangeEvent>,
    /// How many of them the last completed flush covered.
    flushed: usize,
}

/// A sink factory whose sinks record into one [`Recorded`] and whose writes and flushes wait
/// while their gate is closed.
#[derive(Clone)]
struct RecordingSinks {
    recorded: Arc<Mutex<Recorded>>,
    /// Writes started (including one still blocked).
    writes_started: Arc<watch::Sender<usize>>,
    write_open: watch::Receiver<bool>,
    flush_open: watch::Receiver<bool>,
}

struct Gates {
    write: watch::Sender<bool>,
    flush: watch::Sender<bool>,
}

fn recording_sinks() -> (RecordingSinks, Gates) {
    let (write, write_open) = watch::channel(true);
    let (flush, flush_open) = watch::channel(true);
    (
        RecordingSinks {
            recorded: Arc::default(),
            writes_started: Arc::new(watch::Sender::new(0)),
            write_open,
            flush_open,
        },
        Gates { write, flush },
    )
}

struct RecordingSink(RecordingSinks);

impl SinkFactory for RecordingSinks {
    type Sink = RecordingSink;

    async fn open(&self, _span: &Span) -> cdc_sink::Result<RecordingSink> {
        Ok(RecordingSink(self.clone()))
    }
}

impl Sink for RecordingSink {
    async fn write(&mut self, events: &[ChangeEvent]) -> cdc_sink::Result<()> {
        self.0.writes_started.send_modify(|started| *started += 1);
        let mut open = self.0.write_open.clone();
        open.wait_for(|open| *open).await.unwrap();
        self.0
            .recorded
            .lock()
            .unwrap()
            .written
            .extend_from_slice(events);
        Ok(())
    }

    async fn flush(&mut self) -> cdc_sink::Result<()> {
        let mut open = self.0.flush_open.clone();
        open.wait_for(|open| *open).await.unwrap();
        let mut recorded = self.0.recorded.lock().unwrap();
        recorded.flushed = recorded.written.len();
        Ok(())
    }

    async fn close(self) -> cdc_sink::Result<()> {
        Ok(())
    }
}

fn span(start: &str, end: &str) -> Span {
    Span {
        span_id: SpanId(0),
        changefeed: ChangeFeedId::new("default", "cf"),
        start_key: start.as_bytes().to_vec(),
        end_key: end.as_bytes().to_vec(),
    }
}

fn fast_config() -> PipelineConfig {
    PipelineConfig {
        source: SourceConfig {
            buffer: 2,
            progress_interval: Duration::from_millis(100),
            confirm_after: Duration::from_millis(150),
            reset_after: Duration::from_secs(10),
        },
        flush_interval: Duration::from_millis(50),
    }
}

async fn current_revision(client: &EtcdClient) -> u64 {
    let revision = client
        .get("/none", GetOptions::default())
        .await
        .unwrap()
        .revision;
    u64::try_from(revision).unwrap()
}

/// Waits (bounded) until the progress satisfies `done`, checking `invariant` on every change.
async fn wait_progress(
    handle: &PipelineHandle,
    mut invariant: impl FnMut(&PipelineProgress),
    done: impl Fn(&PipelineProgress) -> bool,
) -> PipelineProgress {
    let mut progress_rx = handle.progress();
    tokio::time::timeout(DEADLINE, async {
        loop {
            let progress = *progress_rx.borrow_and_update();
            invariant(&progress);
            if done(&progress) {
                return progress;
            }
            progress_rx.changed().await.unwrap();
        }
    })
    .await
    .expect("the pipeline made the progress in time")
}

#[tokio::test]
async fn changes_reach_the_sink_in_order_and_checkpoint_follows_flushes() {
    let etcd = EtcdServer::start().await.unwrap();
    let client = etcd.client().await.unwrap();
    let from = current_revision(&client).await;
    let (sinks, _gates) = recording_sinks();
    let recorded = sinks.recorded.clone();
    let pipeline = EtcdPipeline::new(client.clone(), Arc::new(sinks), fast_config());
    let handle = pipeline.start(span("/s/", "/s0"), from);

    let mut expected = Vec::new();
    for i in 0..30u32 {
        let key = format!("/s/{}", i % 7);
        let revision =
            u64::try_from(client.put(key.as_str(), i.to_string(), 0).await.unwrap()).unwrap();
        expected.push(ChangeEvent::put(key.as_str(), i.to_string(), revision));
        client.put(format!("/t/{i}"), "out", 0).await.unwrap();
        if i % 5 == 4 {
            client.delete(key.as_str(), false).await.unwrap();
            expected.push(ChangeEvent::delete(
                key.as_str(),
                current_revision(&client).await,
            ));
        }
    }
    let last = expected.last().unwrap().revision;
    let invariant = |progress: &PipelineProgress| {
        let checkpoint = progress.checkpoint;
        assert!(
            checkpoint.checkpoint <= checkpoint.resolved,
            "{checkpoint:?}"
        );
        // Every change at or below the checkpoint is in what the sink flushed.
        let recorded = recorded.lock().unwrap();
        let durable = &recorded.written[..recorded.flushed];
        for event in expected
            .iter()
            .filter(|e| e.revision <= checkpoint.checkpoint)
        {
            assert!(
                durable.contains(event),
                "{event:?} not flushed at {checkpoint:?}"
            );
        }
    };
    wait_progress(&handle, invariant, |progress| {
        progress.checkpoint.checkpoint >= last
    })
    .await;
    assert_eq!(recorded.lock().unwrap().written, expected);
    let final_checkpoint = handle.stop().await.unwrap();
    assert!(final_checkpoint.checkpoint >= last);
}

#[tokio::test]
async fn checkpoint_waits_for_the_flush_and_advances_when_idle() {
    let etcd = EtcdServer::start().await.unwrap();
    let client = etcd.client().await.unwrap();
    let from = current_revision(&client).await;
    let (sinks, gates) = recording_sinks();
    let recorded = sinks.recorded.clone();
    let pipeline = EtcdPipeline::new(client.clone(), Arc::new(sinks), fast_config());
    gates.flush.send_replace(false);
    let handle = pipeline.start(span("/s/", "/s0"), from);

    let written = u64::try_from(client.put("/s/a", "1", 0).await.unwrap()).unwrap();
    // The change is written and resolved, but no flush has returned: the checkpoint stays.
    let progress = wait_progress(
        &handle,
        |_| {},
        |progress| progress.checkpoint.resolved >= written,
    )
    .await;
    assert_eq!(progress.checkpoint.checkpoint, from);
    assert_eq!(recorded.lock().unwrap().written.len(), 1);
    assert_eq!(handle.current().checkpoint.checkpoint, from);

    gates.flush.send_replace(true);
    wait_progress(
        &handle,
        |_| {},
        |progress| progress.checkpoint.checkpoint >= written,
    )
    .await;

    // Idle span: changes elsewhere move the checkpoint through progress requests.
    for i in 0..3 {
        client.put(format!("/t/{i}"), "x", 0).await.unwrap();
    }
    let target = current_revision(&client).await;
    wait_progress(
        &handle,
        |_| {},
        |progress| progress.checkpoint.checkpoint >= target,
    )
    .await;
    assert_eq!(recorded.lock().unwrap().written.len(), 1);
    handle.stop().await.unwrap();
}

#[tokio::test]
async fn nothing_after_the_target_reaches_the_sink_and_progress_stops_there() {
    let etcd = EtcdServer::start().await.unwrap();
    let client = etcd.client().await.unwrap();
    let from = current_revision(&client).await;
    let (sinks, _gates) = recording_sinks();
    let recorded = sinks.recorded.clone();
    let mut expected = Vec::new();
    for i in 0..3u32 {
        let key = format!("/s/{i}");
        let revision = u64::try_from(client.put(key.as_str(), "x", 0).await.unwrap()).unwrap();
        expected.push(ChangeEvent::put(key.as_str(), "x", revision));
    }
    let target = expected[1].revision;
    let pipeline =
        EtcdPipeline::new(client.clone(), Arc::new(sinks), fast_config()).with_target(target);
    let handle = pipeline.start(span("/s/", "/s0"), from);
    for i in 0..3 {
        client.put(format!("/t/{i}"), "x", 0).await.unwrap();
    }
    let progress = wait_progress(
        &handle,
        |progress| {
            assert!(progress.checkpoint.resolved <= target, "{progress:?}");
        },
        |progress| progress.checkpoint.checkpoint >= target,
    )
    .await;
    assert_eq!(progress.checkpoint, Checkpoint::at(target));
    assert_eq!(recorded.lock().unwrap().written, expected[..2]);
    assert_eq!(handle.stop().await.unwrap(), Checkpoint::at(target));
}

#[tokio::test]
async fn a_stalled_sink_stops_the_source_and_stop_is_prompt() {
    let etcd = EtcdServer::start().await.unwrap();
    let client = etcd.client().await.unwrap();
    let from = current_revision(&client).await;
    let (sinks, gates) = recording_sinks();
    let recorded = sinks.recorded.clone();
    let sinks_started = sinks.writes_started.clone();
    let pipeline = EtcdPipeline::new(client.clone(), Arc::new(sinks), fast_config());
    gates.write.send_replace(false);
    let handle = pipeline.start(span("/s/", "/s0"), from);

    let first = u64::try_from(client.put("/s/0", "0", 0).await.unwrap()).unwrap();
    for i in 1..200 {
        client.put(format!("/s/{i}"), "x", 0).await.unwrap();
    }
    // The first write blocks; nothing more leaves the source while it does.
    let mut writes_started = sinks_started.subscribe();
    tokio::time::timeout(DEADLINE, writes_started.wait_for(|started| *started > 0))
        .await
        .unwrap()
        .unwrap();
    // Assert an absence: give the pipeline time in which it could (wrongly) read on.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(*writes_started.borrow(), 1);
    assert!(recorded.lock().unwrap().written.is_empty());
    let progress = handle.current();
    assert!(progress.checkpoint.resolved < first, "{progress:?}");

    let stopped = tokio::time::timeout(Duration::from_secs(5), handle.stop())
        .await
        .expect("stop is prompt even with the sink stalled");
    assert_eq!(stopped.unwrap().checkpoint, from);
}

#[tokio::test]
async fn a_stalled_sink_resumes_with_nothing_lost() {
    let etcd = EtcdServer::start().await.unwrap();
    let client = etcd.client().await.unwrap();
    let from = current_revision(&client).await;
    let (sinks, gates) = recording_sinks();
    let recorded = sinks.recorded.clone();
    let pipeline = EtcdPipeline::new(client.clone(), Arc::new(sinks), fast_config());
    gates.write.send_replace(false);
    let handle = pipeline.start(span("/s/", "/s0"), from);
    let mut expected = Vec::new();
    for i in 0..200u32 {
        let key = format!("/s/{i:03}");
        let revision = u64::try_from(client.put(key.as_str(), "x", 0).await.unwrap()).unwrap();
        expected.push(ChangeEvent::put(key.as_str(), "x", revision));
    }
    gates.write.send_replace(true);
    let last = expected.last().unwrap().revision;
    wait_progress(
        &handle,
        |_| {},
        |progress| progress.checkpoint.checkpoint >= last,
    )
    .await;
    assert_eq!(recorded.lock().unwrap().written, expected);
    handle.stop().await.unwrap();
}

#[tokio::test]
async fn a_compacted_start_fails_naming_the_revision() {
    let etcd = EtcdServer::start().await.unwrap();
    let client = etcd.client().await.unwrap();
    for i in 0..5 {
        client.put("/s/a", i.to_string(), 0).await.unwrap();
    }
    etcd.compact().await.unwrap();
    let (sinks, _gates) = recording_sinks();
    let pipeline = EtcdPipeline::new(client.clone(), Arc::new(sinks), fast_config());
    let handle = pipeline.start(span("/s/", "/s0"), 2);
    let progress = wait_progress(
        &handle,
        |_| {},
        |progress| progress.state != PipelineState::Running,
    )
    .await;
    assert_eq!(progress.state, PipelineState::Failed);
    let err = handle.stop().await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Source {
                source: cdc_source_etcd::Error::Compacted { revision: 3, .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        cdc_model::ErrorReport(&err)
            .to_string()
            .contains("start revision 3 "),
        "{err}"
    );
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn a_span_without_end_key_fails() {
    let etcd = EtcdServer::start().await.unwrap();
    let client = etcd.client().await.unwrap();
    let (sinks, _gates) = recording_sinks();
    let pipeline = EtcdPipeline::new(client.clone(), Arc::new(sinks), fast_config());
    let handle = pipeline.start(span("/s/", ""), 1);
    let err = tokio::time::timeout(DEADLINE, handle.stop())
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::UnboundedSpan { .. }), "{err:?}");
}

#[tokio::test]
async fn etcd_source_into_blackhole_and_file_sinks() {
    let etcd = EtcdServer::start().await.unwrap();
    let client = etcd.client().await.unwrap();
    let from = current_revision(&client).await;
    let blackhole = Arc::new(crate::UriSinks::new(
        cdc_sink::SinkUri::parse("blackhole://").unwrap(),
    ));
    let dir = tempfile::tempdir().unwrap();
    let files = Arc::new(crate::UriSinks::new(
        cdc_sink::SinkUri::parse(&format!("file://{}", dir.path().display())).unwrap(),
    ));
    let to_blackhole = EtcdPipeline::new(client.clone(), blackhole.clone(), fast_config())
        .start(span("/s/", "/s0"), from);
    let to_files =
        EtcdPipeline::new(client.clone(), files, fast_config()).start(span("/s/", "/s0"), from);
    for i in 0..10 {
        client.put(format!("/s/{i}"), "vv", 0).await.unwrap();
    }
    let last = current_revision(&client).await;
    for handle in [&to_blackhole, &to_files] {
        wait_progress(
            handle,
            |_| {},
            |progress| progress.checkpoint.checkpoint >= last,
        )
        .await;
    }
    let stats = blackhole.blackhole_stats();
    assert_eq!((stats.events(), stats.bytes()), (10, 10 * 6));
    let text =
        std::fs::read_to_string(dir.path().join("cf").join(cdc_sink::file_name("span-0", 0)))
            .unwrap();
    assert_eq!(text.lines().count(), 10);
    to_blackhole.stop().await.unwrap();
    to_files.stop().await.unwrap();
}
