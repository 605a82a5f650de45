//! Tests of the coordinator: drains, initialization, task bounds and watermarks.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use cdc_model::{CaptureId, ChangeFeedId};

use super::{CaptureView, Coordinator};
use crate::agent::{Agent, AgentOutput, PipelineCommand, PipelineEvent};
use crate::config::SchedulerConfig;
use crate::error::Error;
use crate::message::{AgentRequest, Epoch, ToAgent, ToOwner};
use crate::span::{Checkpoint, Span, SpanId, SpanState, advance_watermark};

fn changefeed() -> ChangeFeedId {
    ChangeFeedId::default_namespace("cf")
}

fn spans(n: u64) -> Vec<Span> {
    (0..n)
        .map(|i| Span {
            span_id: SpanId(i),
            changefeed: changefeed(),
            start_key: vec![i as u8],
            end_key: vec![i as u8 + 1],
        })
        .collect()
}

fn config(max_task_concurrency: usize) -> SchedulerConfig {
    SchedulerConfig {
        heartbeat_interval: Duration::from_millis(100),
        max_task_concurrency,
        add_batch_size: 50,
        balance_interval: Duration::from_millis(100),
    }
}

/// A coordinator and agents whose messages arrive at once and whose pipelines complete at once.
struct Net {
    coordinator: Coordinator,
    agents: BTreeMap<CaptureId, Agent>,
    stopping: BTreeMap<CaptureId, bool>,
    now: Duration,
}

impl Net {
    fn new(captures: &[&str], config: SchedulerConfig) -> Net {
        let mut net = Net {
            coordinator: Coordinator::new(captures[0].to_owned(), 9, config).expect("config"),
            agents: BTreeMap::new(),
            stopping: BTreeMap::new(),
            now: Duration::ZERO,
        };
        for capture_id in captures {
            net.join(capture_id);
        }
        net
    }

    fn join(&mut self, capture_id: &str) {
        let epoch = Epoch(self.agents.len() as u64 + 1);
        self.agents.insert(
            capture_id.to_owned(),
            Agent::new(capture_id.to_owned(), epoch),
        );
        self.stopping.insert(capture_id.to_owned(), false);
    }

    fn views(&self) -> Vec<CaptureView> {
        self.stopping
            .iter()
            .map(|(capture_id, stopping)| CaptureView {
                capture_id: capture_id.clone(),
                stopping: *stopping,
            })
            .collect()
    }

    /// One tick; returns the messages it sent without delivering them.
    fn tick_only(&mut self) -> Vec<ToAgent> {
        self.now += Duration::from_millis(100);
        let views = self.views();
        self.coordinator.tick(self.now, &views)
    }

    fn tick(&mut self) {
        let messages = self.tick_only();
        self.deliver(messages);
    }

    fn deliver(&mut self, messages: Vec<ToAgent>) {
        let mut to_agents: VecDeque<ToAgent> = messages.into();
        let mut to_owner: VecDeque<ToOwner> = VecDeque::new();
        for _ in 0..100_000 {
            if let Some(message) = to_agents.pop_front() {
                let Some(agent) = self.agents.get_mut(&message.to) else {
                    continue;
                };
                let mut output = AgentOutput::default();
                agent.handle_message(message, &mut output);
                let mut commands: VecDeque<PipelineCommand> = output.commands.drain(..).collect();
                while let Some(command) = commands.pop_front() {
                    let event = match command {
                        PipelineCommand::Prepare { span, .. } => PipelineEvent::Prepared {
                            span: span.span_ref(),
                        },
                        PipelineCommand::Replicate { .. } => continue,
                        PipelineCommand::Stop { span } => PipelineEvent::Stopped {
                            span,
                            checkpoint: Checkpoint::default(),
                        },
                    };
                    agent.handle_pipeline_event(event, &mut output);
                    commands.extend(output.commands.drain(..));
                }
                to_owner.extend(output.messages);
            } else if let Some(message) = to_owner.pop_front() {
                to_agents.extend(self.coordinator.handle_message(message));
            } else {
                return;
            }
        }
        panic!("messages did not settle");
    }

    fn run(&mut self, ticks: usize) {
        for _ in 0..ticks {
            self.tick();
        }
    }

    fn spread(&self) -> Vec<usize> {
        self.agents
            .values()
            .map(|agent| agent.sinking_spans().count())
            .collect()
    }

    fn in_transition(&self) -> usize {
        spans(100)
            .iter()
            .filter_map(|span| self.coordinator.replication_set(&span.span_ref()))
            .filter(|set| set.is_in_transition())
            .count()
    }
}

#[test]
fn drain_refuses_the_owner_an_unknown_capture_and_the_only_capture() {
    let mut net = Net::new(&["a", "b"], config(10));
    net.coordinator
        .upsert_changefeed(changefeed(), spans(4), Checkpoint::at(1));
    net.run(3);
    assert!(matches!(
        net.coordinator.drain(&"a".to_owned()),
        Err(Error::DrainOwner { .. })
    ));
    assert!(matches!(
        net.coordinator.drain(&"zz".to_owned()),
        Err(Error::CaptureNotFound { .. })
    ));
    net.stopping.insert("a".to_owned(), true);
    net.tick();
    assert!(matches!(
        net.coordinator.drain(&"b".to_owned()),
        Err(Error::DrainOnlyCapture { .. })
    ));
    let errors = [
        Error::DrainOwner {
            capture_id: "a".to_owned(),
        },
        Error::CaptureNotFound {
            capture_id: "a".to_owned(),
        },
        Error::DrainOnlyCapture {
            capture_id: "a".to_owned(),
        },
        Error::InvalidConfig {
            field: "x",
            reason: "y",
        },
    ];
    let retryable: Vec<bool> = errors.iter().map(Error::is_retryable).collect();
    assert_eq!(retryable, [false, true, true, false]);
}

#[test]
fn drain_answers_the_count_left_until_zero() {
    let mut net = Net::new(&["a", "b", "c"], config(10));
    net.coordinator
        .upsert_changefeed(changefeed(), spans(9), Checkpoint::at(1));
    net.run(5);
    assert_eq!(net.spread(), [3, 3, 3]);
    assert_eq!(net.coordinator.drain(&"c".to_owned()).expect("drain"), 3);
    net.run(5);
    assert_eq!(net.coordinator.drain(&"c".to_owned()).expect("drain"), 0);
    assert_eq!(net.spread(), [5, 4, 0]);
    assert!(net.agents["c"].is_stopping());
}

#[test]
fn nothing_is_scheduled_until_every_capture_answered() {
    let mut net = Net::new(&["a", "b"], config(10));
    net.coordinator
        .upsert_changefeed(changefeed(), spans(4), Checkpoint::at(1));
    let messages = net.tick_only();
    // New captures get a heartbeat at once (and the periodic one), nothing else.
    assert!(
        messages
            .iter()
            .all(|m| matches!(m.body, AgentRequest::Heartbeat(_)))
    );
    // Only "a" answers.
    net.deliver(messages.into_iter().filter(|m| m.to == "a").collect());
    assert!(!net.coordinator.is_initialized());
    let messages = net.tick_only();
    assert!(
        messages
            .iter()
            .all(|m| matches!(m.body, AgentRequest::Heartbeat(_)))
    );
    net.deliver(messages);
    let messages = net.tick_only();
    assert!(net.coordinator.is_initialized());
    assert!(
        messages
            .iter()
            .any(|m| matches!(m.body, AgentRequest::Dispatch(_)))
    );
    net.deliver(messages);
    net.run(2);
    assert!(net.coordinator.is_all_replicating());
    assert_eq!(net.spread(), [2, 2]);
}

#[test]
fn moves_are_bounded_by_max_task_concurrency() {
    let mut net = Net::new(&["a"], config(2));
    net.coordinator
        .upsert_changefeed(changefeed(), spans(12), Checkpoint::at(1));
    net.run(3);
    assert_eq!(net.spread(), [12]);
    for capture_id in ["b", "c", "d"] {
        net.join(capture_id);
    }
    // Let the new captures answer their first heartbeat, then watch each tick's moves.
    let mut max_in_transition = 0;
    for _ in 0..100 {
        let messages = net.tick_only();
        max_in_transition = max_in_transition.max(net.in_transition());
        net.deliver(messages);
    }
    assert_eq!(max_in_transition, 2);
    assert_eq!(net.spread(), [3, 3, 3, 3]);
}

#[test]
fn messages_for_another_owner_are_ignored() {
    let mut net = Net::new(&["a"], config(10));
    let messages = net.tick_only();
    let mut output = AgentOutput::default();
    let agent = net.agents.get_mut("a").expect("agent");
    for message in messages {
        agent.handle_message(message, &mut output);
    }
    let mut response = output.messages.remove(0);
    response.owner_revision = 8;
    assert!(net.coordinator.handle_message(response.clone()).is_empty());
    net.tick();
    assert!(!net.coordinator.is_initialized());
    response.owner_revision = 9;
    net.coordinator.handle_message(response);
    net.tick();
    assert!(net.coordinator.is_initialized());
}

#[test]
fn spans_left_out_of_an_upsert_are_removed() {
    let mut net = Net::new(&["a", "b"], config(10));
    net.coordinator
        .upsert_changefeed(changefeed(), spans(4), Checkpoint::at(1));
    net.run(3);
    assert_eq!(net.spread(), [2, 2]);
    net.coordinator
        .upsert_changefeed(changefeed(), spans(2), Checkpoint::at(1));
    net.run(3);
    assert_eq!(net.spread().iter().sum::<usize>(), 2);
    let views = net.coordinator.span_views(&changefeed()).expect("known");
    assert_eq!(views.len(), 2);
    assert!(views.iter().all(|v| v.state == SpanState::Replicating));
}

#[test]
fn an_agent_restart_reschedules_its_spans() {
    let mut net = Net::new(&["a", "b"], config(10));
    net.coordinator
        .upsert_changefeed(changefeed(), spans(4), Checkpoint::at(1));
    net.run(3);
    assert_eq!(net.spread(), [2, 2]);
    net.agents
        .insert("b".to_owned(), Agent::new("b".to_owned(), Epoch(50)));
    net.run(3);
    assert!(net.coordinator.is_all_replicating());
    assert_eq!(net.spread(), [2, 2]);
}

#[test]
fn the_changefeed_watermark_is_the_minimum_and_never_moves_back() {
    let mut net = Net::new(&["a"], config(10));
    net.coordinator
        .upsert_changefeed(changefeed(), spans(2), Checkpoint::at(5));
    assert_eq!(net.coordinator.advance_changefeed(&changefeed()), None);
    net.run(3);
    assert_eq!(
        net.coordinator.advance_changefeed(&changefeed()),
        Some(Checkpoint::at(5))
    );
    let progress = |net: &mut Net, span_id: u64, checkpoint: Checkpoint| {
        let mut output = AgentOutput::default();
        let agent = net.agents.get_mut("a").expect("agent");
        agent.handle_pipeline_event(
            PipelineEvent::Progress {
                span: spans(2)[span_id as usize].span_ref(),
                checkpoint,
            },
            &mut output,
        );
    };
    progress(
        &mut net,
        0,
        Checkpoint {
            checkpoint: 20,
            resolved: 30,
        },
    );
    progress(
        &mut net,
        1,
        Checkpoint {
            checkpoint: 15,
            resolved: 40,
        },
    );
    net.run(2);
    assert_eq!(
        net.coordinator.advance_changefeed(&changefeed()),
        Some(Checkpoint {
            checkpoint: 15,
            resolved: 30
        })
    );
    // A new owner told an older checkpoint keeps the one it learns, and never goes back.
    net.coordinator
        .upsert_changefeed(changefeed(), spans(2), Checkpoint::at(3));
    assert_eq!(
        net.coordinator.advance_changefeed(&changefeed()),
        Some(Checkpoint {
            checkpoint: 15,
            resolved: 30
        })
    );
    assert_eq!(
        net.coordinator
            .advance_changefeed(&ChangeFeedId::default_namespace("x")),
        None
    );
}

#[test]
fn advance_watermark_takes_the_minimum_and_never_moves_back() {
    assert_eq!(advance_watermark(10, [30, 20, 25]), 20);
    assert_eq!(advance_watermark(10, []), 10);
    assert_eq!(advance_watermark(10, [5, 30]), 10);
}

#[test]
fn invalid_config_is_refused() {
    let mut bad = config(0);
    assert!(matches!(
        Coordinator::new("a".to_owned(), 1, bad.clone()),
        Err(Error::InvalidConfig {
            field: "max_task_concurrency",
            ..
        })
    ));
    bad.max_task_concurrency = 1;
    bad.heartbeat_interval = Duration::ZERO;
    assert!(bad.validate().is_err());
    assert!(SchedulerConfig::default().validate().is_ok());
}

#[test]
fn a_thousand_changefeeds_of_ten_spans_spread_evenly_in_a_few_ticks() {
    let mut net = Net::new(&["a", "b", "c"], SchedulerConfig::default());
    for i in 0..1000 {
        let changefeed = ChangeFeedId::default_namespace(format!("cf-{i}"));
        let spans = (0..10)
            .map(|j| Span {
                span_id: SpanId(j),
                changefeed: changefeed.clone(),
                start_key: vec![j as u8],
                end_key: vec![j as u8 + 1],
            })
            .collect();
        net.coordinator
            .upsert_changefeed(changefeed, spans, Checkpoint::at(1));
    }
    let mut ticks = 0;
    while !net.coordinator.is_all_replicating() {
        assert!(ticks < 10, "not all replicating after {ticks} ticks");
        net.tick();
        ticks += 1;
    }
    let spread = net.spread();
    assert_eq!(spread.iter().sum::<usize>(), 10_000);
    assert!(
        spread.iter().max().expect("captures") - spread.iter().min().expect("captures") <= 1,
        "{spread:?}"
    );
}

#[test]
fn a_new_owner_stops_one_of_two_captures_that_run_the_same_span() {
    let mut net = Net::new(&["a", "b"], config(10));
    // A former owner (revision 5) had both run span 0.
    for capture_id in ["a", "b"] {
        let agent = net.agents.get_mut(capture_id).expect("agent");
        let epoch = agent.epoch();
        let mut output = AgentOutput::default();
        for prepare in [true, false] {
            agent.handle_message(
                ToAgent {
                    from: "former".to_owned(),
                    to: capture_id.to_owned(),
                    owner_revision: 5,
                    epoch: Some(epoch),
                    body: AgentRequest::Dispatch(crate::message::Dispatch::Add {
                        span: spans(1).remove(0),
                        checkpoint: Checkpoint::at(1),
                        prepare,
                    }),
                },
                &mut output,
            );
            agent.handle_pipeline_event(
                PipelineEvent::Prepared {
                    span: spans(1)[0].span_ref(),
                },
                &mut output,
            );
        }
        agent.handle_pipeline_event(
            PipelineEvent::Progress {
                span: spans(1)[0].span_ref(),
                checkpoint: Checkpoint::at(if capture_id == "a" { 7 } else { 9 }),
            },
            &mut output,
        );
    }
    assert_eq!(net.spread(), [1, 1]);
    net.coordinator
        .upsert_changefeed(changefeed(), spans(1), Checkpoint::at(1));
    net.run(3);
    // The most advanced one keeps it; nothing was restarted.
    assert_eq!(net.spread(), [0, 1]);
    assert!(net.coordinator.is_all_replicating());
    let by_capture = net
        .coordinator
        .spans_by_capture(&changefeed())
        .expect("known");
    assert_eq!(
        by_capture,
        BTreeMap::from([("b".to_owned(), vec![SpanId(0)])])
    );
    assert_eq!(
        net.coordinator.advance_changefeed(&changefeed()),
        Some(Checkpoint::at(9))
    );
}

#[test]
fn captures_that_join_are_balanced_at_once_not_at_the_next_interval() {
    // The default interval is a minute; 50 ticks of 100 ms are five seconds.
    let mut net = Net::new(&["a"], SchedulerConfig::default());
    net.coordinator
        .upsert_changefeed(changefeed(), spans(30), Checkpoint::at(1));
    net.run(3);
    assert_eq!(net.spread(), [30]);
    net.join("b");
    net.join("c");
    net.run(50);
    assert_eq!(net.spread(), [10, 10, 10]);
}
