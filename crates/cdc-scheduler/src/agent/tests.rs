//! Tests of the agent: owner revisions, epochs, the two phases and stops.

use cdc_model::ChangeFeedId;

use super::{Agent, AgentOutput, PipelineCommand, PipelineEvent};
use crate::message::{
    AgentRequest, Dispatch, Epoch, Heartbeat, OwnerResponse, OwnerRevision, ToAgent,
};
use crate::span::{AgentSpanState, Checkpoint, Span, SpanId};

fn span() -> Span {
    Span {
        span_id: SpanId(3),
        changefeed: ChangeFeedId::default_namespace("cf"),
        start_key: b"/a".to_vec(),
        end_key: Vec::new(),
    }
}

const EPOCH: Epoch = Epoch(5);

fn agent() -> Agent {
    Agent::new("me".to_owned(), EPOCH)
}

fn message(
    owner: &str,
    revision: OwnerRevision,
    epoch: Option<Epoch>,
    body: AgentRequest,
) -> ToAgent {
    ToAgent {
        from: owner.to_owned(),
        to: "me".to_owned(),
        owner_revision: revision,
        epoch,
        body,
    }
}

fn heartbeat(owner: &str, revision: OwnerRevision) -> ToAgent {
    message(
        owner,
        revision,
        None,
        AgentRequest::Heartbeat(Heartbeat::default()),
    )
}

fn add(revision: OwnerRevision, prepare: bool) -> ToAgent {
    message(
        "owner",
        revision,
        Some(EPOCH),
        AgentRequest::Dispatch(Dispatch::Add {
            span: span(),
            checkpoint: Checkpoint::at(10),
            prepare,
        }),
    )
}

fn remove(revision: OwnerRevision) -> ToAgent {
    message(
        "owner",
        revision,
        Some(EPOCH),
        AgentRequest::Dispatch(Dispatch::Remove {
            span: span().span_ref(),
        }),
    )
}

fn handle(agent: &mut Agent, message: ToAgent) -> AgentOutput {
    let mut output = AgentOutput::default();
    agent.handle_message(message, &mut output);
    output
}

fn event(agent: &mut Agent, event: PipelineEvent) -> AgentOutput {
    let mut output = AgentOutput::default();
    agent.handle_pipeline_event(event, &mut output);
    output
}

/// The states reported in the output's messages.
fn reported(output: &AgentOutput) -> Vec<AgentSpanState> {
    output
        .messages
        .iter()
        .flat_map(|message| match &message.body {
            OwnerResponse::Heartbeat(response) => {
                response.spans.iter().map(|s| s.state).collect::<Vec<_>>()
            }
            OwnerResponse::Dispatch(response) => vec![response.status.state],
        })
        .collect()
}

#[test]
fn prepare_then_replicate() {
    let mut agent = agent();
    let output = handle(&mut agent, add(7, true));
    assert_eq!(
        output.commands,
        [PipelineCommand::Prepare {
            span: span(),
            checkpoint: Checkpoint::at(10)
        }]
    );
    assert_eq!(
        agent.span_state(&span().span_ref()),
        AgentSpanState::Preparing
    );
    assert_eq!(agent.sinking_spans().count(), 0);

    let output = event(
        &mut agent,
        PipelineEvent::Prepared {
            span: span().span_ref(),
        },
    );
    assert_eq!(reported(&output), [AgentSpanState::Prepared]);
    assert_eq!(output.messages[0].to, "owner");
    assert_eq!(output.messages[0].owner_revision, 7);
    assert_eq!(output.messages[0].epoch, EPOCH);

    let output = handle(&mut agent, add(7, false));
    assert!(matches!(
        output.commands[..],
        [PipelineCommand::Replicate { .. }]
    ));
    assert_eq!(reported(&output), [AgentSpanState::Replicating]);
    assert_eq!(agent.sinking_spans().count(), 1);
}

#[test]
fn an_order_to_replicate_while_preparing_waits_for_the_prepare() {
    let mut agent = agent();
    handle(&mut agent, add(7, true));
    let output = handle(&mut agent, add(7, false));
    assert!(output.commands.is_empty());
    assert_eq!(agent.sinking_spans().count(), 0);
    let output = event(
        &mut agent,
        PipelineEvent::Prepared {
            span: span().span_ref(),
        },
    );
    assert!(matches!(
        output.commands[..],
        [PipelineCommand::Replicate { .. }]
    ));
    assert_eq!(reported(&output), [AgentSpanState::Replicating]);
}

#[test]
fn an_order_to_replicate_a_span_not_prepared_here_is_refused() {
    let mut agent = agent();
    handle(&mut agent, heartbeat("owner", 7));
    let output = handle(&mut agent, add(7, false));
    assert!(output.commands.is_empty());
    assert_eq!(reported(&output), [AgentSpanState::Absent]);
    assert_eq!(agent.sinking_spans().count(), 0);
}

#[test]
fn a_stopped_span_stays_until_the_owner_acknowledges() {
    let mut agent = agent();
    handle(&mut agent, add(7, true));
    event(
        &mut agent,
        PipelineEvent::Prepared {
            span: span().span_ref(),
        },
    );
    handle(&mut agent, add(7, false));
    // The pipeline fails.
    let output = event(
        &mut agent,
        PipelineEvent::Stopped {
            span: span().span_ref(),
            checkpoint: Checkpoint::at(30),
        },
    );
    assert_eq!(reported(&output), [AgentSpanState::Stopped]);
    assert_eq!(agent.sinking_spans().count(), 0);
    // Orders sent before the owner learned of the stop find it stopped and start nothing.
    for prepare in [true, false] {
        let output = handle(&mut agent, add(7, prepare));
        assert!(output.commands.is_empty());
        assert_eq!(reported(&output), [AgentSpanState::Stopped]);
    }
    let output = handle(&mut agent, heartbeat("owner", 7));
    assert_eq!(reported(&output), [AgentSpanState::Stopped]);
    // The acknowledgment forgets it; a later add starts over.
    let output = handle(&mut agent, remove(7));
    assert_eq!(reported(&output), [AgentSpanState::Absent]);
    assert_eq!(agent.span_state(&span().span_ref()), AgentSpanState::Absent);
    let output = handle(&mut agent, add(7, true));
    assert_eq!(output.commands.len(), 1);
}

#[test]
fn remove_stops_the_pipeline_and_reports_the_stop() {
    let mut agent = agent();
    handle(&mut agent, add(7, true));
    event(
        &mut agent,
        PipelineEvent::Prepared {
            span: span().span_ref(),
        },
    );
    handle(&mut agent, add(7, false));
    let output = handle(&mut agent, remove(7));
    assert_eq!(
        output.commands,
        [PipelineCommand::Stop {
            span: span().span_ref()
        }]
    );
    assert_eq!(reported(&output), [AgentSpanState::Stopping]);
    // Still possibly writing until the pipeline confirms.
    assert_eq!(agent.sinking_spans().count(), 1);
    let output = event(
        &mut agent,
        PipelineEvent::Stopped {
            span: span().span_ref(),
            checkpoint: Checkpoint::at(12),
        },
    );
    assert_eq!(reported(&output), [AgentSpanState::Stopped]);
    let OwnerResponse::Dispatch(response) = &output.messages[0].body else {
        panic!("expected a dispatch response, got {output:?}")
    };
    assert_eq!(response.status.checkpoint, Checkpoint::at(12));
    assert_eq!(agent.sinking_spans().count(), 0);
}

#[test]
fn messages_from_a_former_owner_are_ignored() {
    let mut agent = agent();
    assert_eq!(handle(&mut agent, heartbeat("old", 5)).messages.len(), 1);
    assert_eq!(handle(&mut agent, heartbeat("new", 6)).messages.len(), 1);
    assert_eq!(agent.owner(), Some((&"new".to_owned(), 6)));
    // The former owner's heartbeat and dispatch are ignored.
    assert!(handle(&mut agent, heartbeat("old", 5)).messages.is_empty());
    let mut stale = add(5, true);
    stale.from = "old".to_owned();
    let output = handle(&mut agent, stale);
    assert!(output.commands.is_empty() && output.messages.is_empty());
    // So is a message that claims the current revision from another capture.
    assert!(
        handle(&mut agent, heartbeat("impostor", 6))
            .messages
            .is_empty()
    );
    // Answers go to the newest owner.
    let output = handle(&mut agent, heartbeat("new", 6));
    assert_eq!(output.messages[0].to, "new");
}

#[test]
fn dispatches_for_another_epoch_are_ignored() {
    let mut agent = agent();
    let mut dispatch = add(7, true);
    dispatch.epoch = Some(Epoch(4));
    assert!(handle(&mut agent, dispatch.clone()).commands.is_empty());
    dispatch.epoch = None;
    assert!(handle(&mut agent, dispatch).commands.is_empty());
    assert_eq!(handle(&mut agent, add(7, true)).commands.len(), 1);
}

#[test]
fn messages_for_another_capture_are_ignored() {
    let mut agent = agent();
    let mut message = heartbeat("owner", 7);
    message.to = "someone-else".to_owned();
    assert!(handle(&mut agent, message).messages.is_empty());
    assert_eq!(agent.owner(), None);
}

#[test]
fn a_drain_heartbeat_makes_the_capture_stopping() {
    let mut agent = agent();
    let output = handle(&mut agent, heartbeat("owner", 7));
    let OwnerResponse::Heartbeat(response) = &output.messages[0].body else {
        panic!("expected a heartbeat response, got {output:?}")
    };
    assert!(!response.stopping);
    let output = handle(
        &mut agent,
        message(
            "owner",
            7,
            None,
            AgentRequest::Heartbeat(Heartbeat { is_stopping: true }),
        ),
    );
    let OwnerResponse::Heartbeat(response) = &output.messages[0].body else {
        panic!("expected a heartbeat response, got {output:?}")
    };
    assert!(response.stopping);
    assert!(agent.is_stopping());
}

#[test]
fn nothing_is_sent_before_an_owner_is_known() {
    let mut agent = agent();
    let output = event(
        &mut agent,
        PipelineEvent::Stopped {
            span: span().span_ref(),
            checkpoint: Checkpoint::at(1),
        },
    );
    assert!(output.messages.is_empty());
}
