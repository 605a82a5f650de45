//! An in-process agent for tests: its pipelines start, stop and progress at once; and the
//! capture key that makes its capture known to the owner, and a read of one key.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cdc_scheduler::{
    Agent, AgentOutput, Checkpoint, Epoch, PipelineCommand, PipelineEvent, SpanRef, ToAgent,
    ToOwner,
};

/// An agent whose pipelines start, stop and progress at once.
pub(crate) struct FakeAgent {
    agent: Agent,
    pub(crate) running: BTreeMap<SpanRef, Checkpoint>,
    progress: Arc<AtomicU64>,
    /// How many times the agent was told to replicate a span.
    pub(crate) starts: usize,
}

impl FakeAgent {
    pub(crate) fn new(capture_id: &str, progress: Arc<AtomicU64>) -> FakeAgent {
        FakeAgent {
            agent: Agent::new(capture_id.to_owned(), Epoch(1)),
            running: BTreeMap::new(),
            progress,
            starts: 0,
        }
    }

    /// Handles one message; answers the owner's messages.
    pub(crate) fn handle(&mut self, message: ToAgent) -> Vec<ToOwner> {
        let mut output = AgentOutput::default();
        let progress = self.progress.load(Ordering::SeqCst);
        for (span, checkpoint) in &mut self.running {
            if checkpoint.checkpoint < progress {
                *checkpoint = Checkpoint::at(progress);
                self.agent.handle_pipeline_event(
                    PipelineEvent::Progress {
                        span: span.clone(),
                        checkpoint: *checkpoint,
                    },
                    &mut output,
                );
            }
        }
        self.agent.handle_message(message, &mut output);
        let mut pending: Vec<PipelineCommand> = std::mem::take(&mut output.commands);
        while !pending.is_empty() {
            for command in std::mem::take(&mut pending) {
                let mut step = AgentOutput::default();
                match command {
                    PipelineCommand::Prepare { span, .. } => self.agent.handle_pipeline_event(
                        PipelineEvent::Prepared {
                            span: span.span_ref(),
                        },
                        &mut step,
                    ),
                    PipelineCommand::Replicate { span, checkpoint } => {
                        self.starts += 1;
                        self.running.insert(span.span_ref(), checkpoint);
                    }
                    PipelineCommand::Stop { span } => {
                        let checkpoint = self.running.remove(&span).unwrap_or_default();
                        self.agent.handle_pipeline_event(
                            PipelineEvent::Stopped { span, checkpoint },
                            &mut step,
                        );
                    }
                }
                pending.extend(step.commands);
                output.messages.extend(step.messages);
            }
        }
        output.messages
    }
}

/// Writes capture `capture_id`'s key (at `address`, without a lease) into cluster `cluster`.
pub(crate) async fn put_capture(
    client: &cdc_etcd::EtcdClient,
    cluster: &str,
    capture_id: &str,
    address: &str,
) {
    let info = cdc_model::CaptureInfo {
        id: capture_id.to_owned(),
        address: address.to_owned(),
        ..cdc_model::CaptureInfo::default()
    };
    client
        .put(
            cdc_model::key::capture_key(cluster, capture_id),
            cdc_model::to_go_json(&info).expect("encode a capture info"),
            0,
        )
        .await
        .expect("write a capture key");
}

/// The key-value under `key`, if any.
pub(crate) async fn get_kv(
    client: &cdc_etcd::EtcdClient,
    key: String,
) -> Option<cdc_etcd::KeyValue> {
    client
        .get(key, cdc_etcd::GetOptions::default())
        .await
        .expect("read a key")
        .kvs
        .into_iter()
        .next()
}
