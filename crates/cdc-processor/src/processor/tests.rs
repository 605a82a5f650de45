//! Tests of the processor with a double pipeline: the agent's commands become pipeline starts
//! and stops, progress and stops go back to the owner, and the span log is written in order.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cdc_model::ChangeFeedId;
use cdc_scheduler::{
    AgentRequest, AgentSpanState, Checkpoint, Dispatch, Epoch, Heartbeat, OwnerResponse, Span,
    SpanId, SpanRef, SpanStatus, ToAgent, ToOwner,
};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::{
    Error, PipelineFactory, PipelineHandle, Processor, ProcessorOutput, SpanLog, monotonic_ns,
};

const DEADLINE: Duration = Duration::from_secs(30);
const CAPTURE: &str = "capture-1";
const OWNER: &str = "owner-1";
const EPOCH: Epoch = Epoch(7);

/// What a double pipeline is told by its test.
enum Control {
    /// Report this progress, then answer.
    Progress(Checkpoint, oneshot::Sender<()>),
    Fail,
}

#[derive(Default)]
struct Recorded {
    /// Every start: the span and its start revision.
    starts: Vec<(SpanRef, u64)>,
    /// Every end of a pipeline's task, with `CLOCK_MONOTONIC` when it returned.
    ends: Vec<(SpanRef, u64)>,
    controls: BTreeMap<SpanRef, mpsc::Sender<Control>>,
    /// The next start fails.
    fail_start: bool,
    /// Spans cannot start while set.
    not_ready: bool,
}

/// A pipeline factory whose pipelines only report what their test tells them.
#[derive(Clone, Default)]
struct DoubleFactory(Arc<Mutex<Recorded>>);

impl DoubleFactory {
    fn starts(&self) -> Vec<(SpanRef, u64)> {
        self.0.lock().unwrap().starts.clone()
    }

    fn ends(&self) -> Vec<(SpanRef, u64)> {
        self.0.lock().unwrap().ends.clone()
    }

    async fn control(&self, span: &SpanRef, control: Control) {
        let control_tx = self.0.lock().unwrap().controls[span].clone();
        control_tx.send(control).await.unwrap();
    }
}

impl PipelineFactory for DoubleFactory {
    fn is_ready(&self, _span: &Span) -> bool {
        !self.0.lock().unwrap().not_ready
    }

    async fn start(&mut self, span: Span, from_revision: u64) -> crate::Result<PipelineHandle> {
        let span_ref = span.span_ref();
        let mut recorded = self.0.lock().unwrap();
        if std::mem::take(&mut recorded.fail_start) {
            return Err(Error::ChangefeedNotFound {
                changefeed: span_ref.changefeed.to_string(),
            });
        }
        recorded.starts.push((span_ref.clone(), from_revision));
        let (control_tx, mut control_rx) = mpsc::channel(8);
        recorded.controls.insert(span_ref.clone(), control_tx);
        let shared = self.0.clone();
        Ok(PipelineHandle::spawn(
            span_ref.to_string(),
            from_revision,
            move |reporter, cancel| async move {
                let result = loop {
                    tokio::select! {
                        () = cancel.cancelled() => break Ok(()),
                        control = control_rx.recv() => match control {
                            Some(Control::Progress(checkpoint, reported_tx)) => {
                                reporter.report(checkpoint);
                                let _ = reported_tx.send(());
                            }
                            Some(Control::Fail) => break Err(Error::TaskFailed { span: span_ref.to_string() }),
                            None => break Ok(()),
                        },
                    }
                };
                shared
                    .lock()
                    .unwrap()
                    .ends
                    .push((span_ref, monotonic_ns().unwrap()));
                result
            },
        ))
    }
}

fn span(id: u64) -> Span {
    Span {
        span_id: SpanId(id),
        changefeed: ChangeFeedId::new("default", "cf"),
        start_key: format!("/p{id}/").into_bytes(),
        end_key: format!("/p{id}0").into_bytes(),
    }
}

fn message(body: AgentRequest) -> ToAgent {
    ToAgent {
        from: OWNER.to_owned(),
        to: CAPTURE.to_owned(),
        owner_revision: 1,
        epoch: Some(EPOCH),
        body,
    }
}

fn add(span: &Span, checkpoint: u64, prepare: bool) -> ToAgent {
    message(AgentRequest::Dispatch(Dispatch::Add {
        span: span.clone(),
        checkpoint: Checkpoint::at(checkpoint),
        prepare,
    }))
}

fn remove(span: &Span) -> ToAgent {
    message(AgentRequest::Dispatch(Dispatch::Remove {
        span: span.span_ref(),
    }))
}

fn heartbeat() -> ToAgent {
    message(AgentRequest::Heartbeat(Heartbeat::default()))
}

/// The span statuses the messages tell the owner, in order.
fn statuses(messages: &[ToOwner]) -> Vec<SpanStatus> {
    messages
        .iter()
        .flat_map(|message| {
            assert_eq!(
                (message.from.as_str(), message.to.as_str()),
                (CAPTURE, OWNER)
            );
            assert_eq!(message.epoch, EPOCH);
            match &message.body {
                OwnerResponse::Dispatch(response) => vec![response.status.clone()],
                OwnerResponse::Heartbeat(response) => response.spans.clone(),
            }
        })
        .collect()
}

fn states(output: &ProcessorOutput) -> Vec<(SpanId, AgentSpanState)> {
    statuses(&output.messages)
        .into_iter()
        .map(|status| (status.span.span_id, status.state))
        .collect()
}

fn processor(span_log: Option<Arc<SpanLog>>) -> (Processor, Arc<Notify>) {
    let woken = Arc::new(Notify::new());
    let wake = {
        let woken = woken.clone();
        Arc::new(move || woken.notify_one())
    };
    let processor = Processor::new(CAPTURE.to_owned(), EPOCH, span_log, wake);
    (processor, woken)
}

/// Ticks (bounded, on every wake) until a tick's output satisfies `done`.
async fn tick_until(
    processor: &mut Processor,
    woken: &Notify,
    factory: &mut DoubleFactory,
    done: impl Fn(&ProcessorOutput) -> bool,
) -> ProcessorOutput {
    tokio::time::timeout(DEADLINE, async {
        loop {
            let output = processor.tick([], factory).await;
            if done(&output) {
                return output;
            }
            woken.notified().await;
        }
    })
    .await
    .expect("the processor got there in time")
}

#[derive(Debug, serde::Deserialize)]
struct LogLine {
    capture: String,
    changefeed: String,
    span_id: u64,
    event: String,
    mono_ns: u64,
}

fn read_log(path: &std::path::Path) -> Vec<LogLine> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[tokio::test]
async fn add_then_remove_runs_the_pipeline_between_log_lines() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("spans.jsonl");
    let span_log = Arc::new(SpanLog::open(&log_path).unwrap());
    let (mut processor, woken) = processor(Some(span_log));
    let mut factory = DoubleFactory::default();
    let span = span(3);

    // Prepare: nothing starts, the span is prepared at once.
    let output = processor.tick([add(&span, 10, true)], &mut factory).await;
    assert_eq!(states(&output), [(SpanId(3), AgentSpanState::Prepared)]);
    assert!(factory.starts().is_empty());
    assert!(read_log(&log_path).is_empty());

    // Replicate: the pipeline starts at the checkpoint, after its start line.
    let before_start = monotonic_ns().unwrap();
    let output = processor.tick([add(&span, 10, false)], &mut factory).await;
    assert_eq!(states(&output), [(SpanId(3), AgentSpanState::Replicating)]);
    assert_eq!(factory.starts(), [(span.span_ref(), 10)]);
    let lines = read_log(&log_path);
    assert_eq!(lines.len(), 1);
    assert_eq!(
        (
            lines[0].capture.as_str(),
            lines[0].changefeed.as_str(),
            lines[0].span_id,
            lines[0].event.as_str()
        ),
        (CAPTURE, "default/cf", 3, "start")
    );
    assert!(lines[0].mono_ns >= before_start);

    // Progress reaches the owner in the heartbeat answer.
    let progress = Checkpoint {
        checkpoint: 15,
        resolved: 20,
    };
    let (reported_tx, reported_rx) = oneshot::channel();
    factory
        .control(&span.span_ref(), Control::Progress(progress, reported_tx))
        .await;
    reported_rx.await.unwrap();
    let output = processor.tick([heartbeat()], &mut factory).await;
    let reported = statuses(&output.messages);
    assert_eq!(reported.len(), 1);
    assert_eq!(
        (reported[0].state, reported[0].checkpoint),
        (AgentSpanState::Replicating, progress)
    );

    // Remove: stopping until the pipeline's task has ended, then stopped.
    let output = processor.tick([remove(&span)], &mut factory).await;
    assert_eq!(states(&output), [(SpanId(3), AgentSpanState::Stopping)]);
    let output = tick_until(&mut processor, &woken, &mut factory, |output| {
        !output.messages.is_empty()
    })
    .await;
    assert!(output.failures.is_empty());
    let stopped = statuses(&output.messages);
    assert_eq!(stopped.len(), 1);
    assert_eq!(stopped[0].state, AgentSpanState::Stopped);
    assert_eq!(stopped[0].checkpoint, progress);
    let ends = factory.ends();
    assert_eq!(ends.len(), 1);
    let lines = read_log(&log_path);
    assert_eq!(
        lines
            .iter()
            .map(|line| line.event.as_str())
            .collect::<Vec<_>>(),
        ["start", "stop"]
    );
    assert!(
        lines[1].mono_ns >= ends[0].1,
        "the stop line is written after the pipeline ended"
    );

    // The owner acknowledges: the span is gone.
    let output = processor
        .tick([remove(&span), heartbeat()], &mut factory)
        .await;
    assert_eq!(states(&output), [(SpanId(3), AgentSpanState::Absent)]);
    assert_eq!(processor.running_spans().count(), 0);
}

#[tokio::test]
async fn failing_pipeline_is_reported_stopped_with_its_error() {
    let (mut processor, woken) = processor(None);
    let mut factory = DoubleFactory::default();
    let span = span(1);
    processor
        .tick([add(&span, 5, true), add(&span, 5, false)], &mut factory)
        .await;
    assert_eq!(factory.starts(), [(span.span_ref(), 5)]);

    factory.control(&span.span_ref(), Control::Fail).await;
    let output = tick_until(&mut processor, &woken, &mut factory, |output| {
        !output.failures.is_empty()
    })
    .await;
    assert_eq!(output.failures.len(), 1);
    assert_eq!(output.failures[0].span, span.span_ref());
    assert!(matches!(output.failures[0].error, Error::TaskFailed { .. }));
    assert_eq!(states(&output), [(SpanId(1), AgentSpanState::Stopped)]);

    // A late order to replicate (sent before the owner learned of the stop) starts nothing.
    let output = processor.tick([add(&span, 5, false)], &mut factory).await;
    assert_eq!(states(&output), [(SpanId(1), AgentSpanState::Stopped)]);
    assert_eq!(factory.starts().len(), 1);
}

#[tokio::test]
async fn failed_start_logs_start_and_stop_and_reports_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("spans.jsonl");
    let span_log = Arc::new(SpanLog::open(&log_path).unwrap());
    let (mut processor, _woken) = processor(Some(span_log));
    let mut factory = DoubleFactory::default();
    factory.0.lock().unwrap().fail_start = true;
    let span = span(2);
    let output = processor
        .tick([add(&span, 5, true), add(&span, 5, false)], &mut factory)
        .await;
    assert_eq!(output.failures.len(), 1);
    assert!(matches!(
        output.failures[0].error,
        Error::ChangefeedNotFound { .. }
    ));
    assert_eq!(
        states(&output),
        [
            (SpanId(2), AgentSpanState::Replicating),
            (SpanId(2), AgentSpanState::Stopped)
        ]
    );
    let events: Vec<String> = read_log(&log_path)
        .into_iter()
        .map(|line| line.event)
        .collect();
    assert_eq!(events, ["start", "stop"]);
}

#[tokio::test]
async fn prepared_span_is_removed_without_a_pipeline() {
    let (mut processor, _woken) = processor(None);
    let mut factory = DoubleFactory::default();
    let span = span(4);
    processor.tick([add(&span, 5, true)], &mut factory).await;
    let output = processor.tick([remove(&span)], &mut factory).await;
    assert_eq!(
        states(&output),
        [
            (SpanId(4), AgentSpanState::Stopping),
            (SpanId(4), AgentSpanState::Stopped)
        ]
    );
    assert!(factory.starts().is_empty());
}

#[tokio::test]
async fn close_stops_every_pipeline_and_logs_the_stops() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("spans.jsonl");
    let span_log = Arc::new(SpanLog::open(&log_path).unwrap());
    let (mut processor, _woken) = processor(Some(span_log));
    let mut factory = DoubleFactory::default();
    let spans: Vec<Span> = (0..3).map(span).collect();
    let messages: Vec<ToAgent> = spans
        .iter()
        .flat_map(|span| [add(span, 1, true), add(span, 1, false)])
        .collect();
    processor.tick(messages, &mut factory).await;
    assert_eq!(processor.running_spans().count(), 3);

    processor.close(DEADLINE).await;
    assert_eq!(processor.running_spans().count(), 0);
    assert_eq!(factory.ends().len(), 3);
    let lines = read_log(&log_path);
    let n_stops = lines.iter().filter(|line| line.event == "stop").count();
    assert_eq!((lines.len(), n_stops), (6, 3));
}

#[tokio::test]
async fn a_span_not_ready_waits_and_starts_once_ready() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("spans.jsonl");
    let span_log = Arc::new(SpanLog::open(&log_path).unwrap());
    let (mut processor, _woken) = processor(Some(span_log));
    let mut factory = DoubleFactory::default();
    factory.0.lock().unwrap().not_ready = true;
    let (first, second) = (span(5), span(6));
    let output = processor
        .tick(
            [
                add(&first, 3, true),
                add(&first, 3, false),
                add(&second, 4, true),
                add(&second, 4, false),
            ],
            &mut factory,
        )
        .await;
    assert_eq!(
        states(&output),
        [
            (SpanId(5), AgentSpanState::Replicating),
            (SpanId(6), AgentSpanState::Replicating)
        ]
    );
    assert!(processor.has_waiting_spans());
    assert!(factory.starts().is_empty());
    assert!(read_log(&log_path).is_empty());

    // Removed while waiting: stopped at once, nothing ran.
    let output = processor.tick([remove(&second)], &mut factory).await;
    assert_eq!(
        states(&output),
        [
            (SpanId(6), AgentSpanState::Stopping),
            (SpanId(6), AgentSpanState::Stopped)
        ]
    );
    assert_eq!(statuses(&output.messages)[1].checkpoint, Checkpoint::at(4));

    // Ready: the waiting span starts at the next tick, from its checkpoint.
    processor.tick([], &mut factory).await;
    assert!(factory.starts().is_empty());
    factory.0.lock().unwrap().not_ready = false;
    let output = processor.tick([], &mut factory).await;
    assert!(output.messages.is_empty());
    assert!(!processor.has_waiting_spans());
    assert_eq!(factory.starts(), [(first.span_ref(), 3)]);
    let events: Vec<String> = read_log(&log_path)
        .into_iter()
        .map(|line| line.event)
        .collect();
    assert_eq!(events, ["start"]);
    processor.close(DEADLINE).await;
}
