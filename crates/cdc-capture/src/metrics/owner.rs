//! The metrics whose value outlives one owner term or one incarnation: TiCDC's
//! `ticdc_owner_ownership_counter` (seconds as owner), the owner-only gauges (exported only
//! while this capture is owner: `ticdc_owner_captures` and the changefeeds'
//! `ticdc_owner_checkpoint_ts`, `ticdc_owner_checkpoint_ts_lag`, `ticdc_owner_resolved_ts`),
//! and the p2p message counters that keep counting across incarnations.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cdc_model::ChangeFeedId;
use cdc_p2p::MetricsSnapshot;
use cdc_reactor::ChangefeedProgress;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};

use super::{as_sample, family};

/// One changefeed's owner-only gauges.
#[derive(Clone, Debug, PartialEq)]
struct ChangefeedGauges {
    /// The changefeed's namespace.
    namespace: String,
    /// The changefeed's ID.
    changefeed: String,
    /// The checkpoint (an upstream revision).
    checkpoint_ts: u64,
    /// The resolved revision.
    resolved_ts: u64,
    /// Seconds since the upstream first showed a change the checkpoint has not reached yet;
    /// 0 while the checkpoint is caught up.
    checkpoint_lag_seconds: f64,
}

#[derive(Debug, Default)]
struct Ownership {
    /// The time of the ended terms.
    total: Duration,
    /// When the current term started, if this capture is owner.
    since: Option<Instant>,
}

#[derive(Debug, Default)]
struct OwnerGauges {
    n_captures: Option<usize>,
    changefeeds: Vec<ChangefeedGauges>,
    /// Per changefeed, when each resolved revision above the checkpoint was first seen.
    pending: HashMap<ChangeFeedId, VecDeque<(Instant, u64)>>,
}

/// How many resolved revisions a changefeed's lag remembers; beyond it the oldest after the
/// first are dropped, so the lag may read low after a checkpoint stalled for that many scrapes.
const MAX_PENDING: usize = 256;

impl OwnerGauges {
    /// The gauges of `progress` at `now`: the lag is the age of the oldest resolved revision
    /// seen above the checkpoint, as TiCDC's lag is the age of the checkpoint's change.
    fn observe(&mut self, progress: Vec<ChangefeedProgress>, now: Instant) {
        self.pending
            .retain(|id, _| progress.iter().any(|feed| feed.id == *id));
        self.changefeeds = progress
            .into_iter()
            .map(|feed| {
                let pending = self.pending.entry(feed.id.clone()).or_default();
                if feed.resolved > feed.checkpoint
                    && pending.back().is_none_or(|(_, seen)| feed.resolved > *seen)
                {
                    pending.push_back((now, feed.resolved));
                    if pending.len() > MAX_PENDING {
                        pending.remove(1);
                    }
                }
                while pending
                    .front()
                    .is_some_and(|(_, resolved)| *resolved <= feed.checkpoint)
                {
                    pending.pop_front();
                }
                let lag = pending.front().map_or(Duration::ZERO, |(seen, _)| {
                    now.saturating_duration_since(*seen)
                });
                ChangefeedGauges {
                    namespace: feed.id.namespace,
                    changefeed: feed.id.id,
                    checkpoint_ts: feed.checkpoint,
                    resolved_ts: feed.resolved,
                    checkpoint_lag_seconds: lag.as_secs_f64(),
                }
            })
            .collect();
    }
}

/// The p2p counters: the totals of the incarnations before the current one, and the current
/// one's last reading.
#[derive(Debug, Default)]
struct P2pTotals {
    capture_id: String,
    before: [u64; 6],
    current: [u64; 6],
}

fn p2p_values(server: &MetricsSnapshot, clients: &MetricsSnapshot) -> [u64; 6] {
    [
        server.messages_received,
        server.messages_repeated,
        clients.messages_sent,
        clients.messages_resent,
        clients.messages_acked,
        clients.reconnects,
    ]
}

/// (name, help) of the p2p counters, in the order of `p2p_values` (TiCDC's names where it has
/// them; ours are totals over the peers, without TiCDC's per-peer labels).
const P2P_COUNTERS: [(&str, &str); 6] = [
    (
        "ticdc_message_server_message_count",
        "count of messages received",
    ),
    (
        "ticdc_message_server_repeated_count",
        "count of received repeated messages",
    ),
    (
        "ticdc_message_client_message_count",
        "count of messages sent",
    ),
    (
        "ticdc_message_client_resent_count",
        "count of messages sent again after a reconnect",
    ),
    (
        "ticdc_message_client_ack_count",
        "count of messages acknowledged",
    ),
    (
        "ticdc_message_client_reconnect_count",
        "count of streams opened again",
    ),
];
const OWNERSHIP: (&str, &str) = (
    "ticdc_owner_ownership_counter",
    "seconds this capture has been owner; its rate is 1 on the owner",
);
const CAPTURES: (&str, &str) = ("ticdc_owner_captures", "captures known to the owner");
/// (name, help) of the changefeed gauges.
const CHANGEFEED_GAUGES: [(&str, &str); 3] = [
    ("ticdc_owner_checkpoint_ts", "checkpoint ts of changefeeds"),
    (
        "ticdc_owner_checkpoint_ts_lag",
        "checkpoint ts lag of changefeeds in seconds",
    ),
    ("ticdc_owner_resolved_ts", "resolved ts of changefeeds"),
];

/// What the collector renders, shared with [`super::Metrics`].
#[derive(Debug, Default)]
pub(super) struct OwnerState {
    ownership: Mutex<Ownership>,
    gauges: Mutex<OwnerGauges>,
    p2p: Mutex<P2pTotals>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl OwnerState {
    pub(super) fn term_started(&self) {
        let mut ownership = lock(&self.ownership);
        if ownership.since.is_none() {
            ownership.since = Some(Instant::now());
        }
    }

    pub(super) fn term_ended(&self) {
        {
            let mut ownership = lock(&self.ownership);
            if let Some(since) = ownership.since.take() {
                ownership.total += since.elapsed();
            }
        }
        self.clear_gauges();
    }

    pub(super) fn set_gauges(&self, n_captures: usize, progress: Vec<ChangefeedProgress>) {
        let mut gauges = lock(&self.gauges);
        gauges.n_captures = Some(n_captures);
        gauges.observe(progress, Instant::now());
    }

    pub(super) fn clear_gauges(&self) {
        *lock(&self.gauges) = OwnerGauges::default();
    }

    pub(super) fn fold_p2p(
        &self,
        capture_id: &str,
        server: &MetricsSnapshot,
        clients: &MetricsSnapshot,
    ) {
        let values = p2p_values(server, clients);
        let mut totals = lock(&self.p2p);
        if totals.capture_id != capture_id {
            // A new incarnation: the last one's final reading joins the totals.
            let current = totals.current;
            for (before, last) in totals.before.iter_mut().zip(current) {
                *before = before.saturating_add(last);
            }
            totals.capture_id = capture_id.to_owned();
        }
        totals.current = values;
    }

    fn ownership_seconds(&self) -> f64 {
        let ownership = lock(&self.ownership);
        let current = ownership
            .since
            .map_or(Duration::ZERO, |since| since.elapsed());
        (ownership.total + current).as_secs_f64()
    }
}

/// Renders [`OwnerState`].
pub(super) struct OwnerCollector {
    state: Arc<OwnerState>,
    descs: Vec<Desc>,
}

impl OwnerCollector {
    pub(super) fn new(state: Arc<OwnerState>) -> Self {
        let desc = |(name, help): (&str, &str), labels: &[&str]| {
            Desc::new(
                name.to_owned(),
                help.to_owned(),
                labels.iter().map(|label| (*label).to_owned()).collect(),
                HashMap::new(),
            )
            .expect("valid metric")
        };
        let mut descs = vec![desc(OWNERSHIP, &[]), desc(CAPTURES, &[])];
        descs.extend(
            CHANGEFEED_GAUGES
                .iter()
                .map(|metric| desc(*metric, &["namespace", "changefeed"])),
        );
        descs.extend(P2P_COUNTERS.iter().map(|metric| desc(*metric, &[])));
        OwnerCollector { state, descs }
    }
}

fn counter(value: f64) -> Metric {
    let mut counter = Counter::default();
    counter.set_value(value);
    let mut metric = Metric::default();
    metric.set_counter(counter);
    metric
}

fn gauge(value: f64, labels: &[(&str, &str)]) -> Metric {
    let mut gauge = Gauge::default();
    gauge.set_value(value);
    let mut metric = Metric::default();
    metric.set_gauge(gauge);
    metric.set_label(
        labels
            .iter()
            .map(|(name, value)| {
                let mut label = LabelPair::default();
                label.set_name((*name).to_owned());
                label.set_value((*value).to_owned());
                label
            })
            .collect(),
    );
    metric
}

impl Collector for OwnerCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let (name, help) = OWNERSHIP;
        let mut families = vec![family(
            name,
            help,
            MetricType::COUNTER,
            vec![counter(self.state.ownership_seconds())],
        )];
        {
            let gauges = lock(&self.state.gauges);
            if let Some(n_captures) = gauges.n_captures {
                let (name, help) = CAPTURES;
                let n_captures = as_sample(u64::try_from(n_captures).unwrap_or(u64::MAX));
                families.push(family(
                    name,
                    help,
                    MetricType::GAUGE,
                    vec![gauge(n_captures, &[])],
                ));
            }
            if !gauges.changefeeds.is_empty() {
                let values: [fn(&ChangefeedGauges) -> f64; 3] = [
                    |g| as_sample(g.checkpoint_ts),
                    |g| g.checkpoint_lag_seconds,
                    |g| as_sample(g.resolved_ts),
                ];
                for ((name, help), value) in CHANGEFEED_GAUGES.iter().zip(values) {
                    let metrics = gauges
                        .changefeeds
                        .iter()
                        .map(|changefeed| {
                            gauge(
                                value(changefeed),
                                &[
                                    ("namespace", &changefeed.namespace),
                                    ("changefeed", &changefeed.changefeed),
                                ],
                            )
                        })
                        .collect();
                    families.push(family(name, help, MetricType::GAUGE, metrics));
                }
            }
        }
        let totals = {
            let p2p = lock(&self.state.p2p);
            let mut totals = p2p.before;
            for (total, current) in totals.iter_mut().zip(p2p.current) {
                *total = total.saturating_add(current);
            }
            totals
        };
        for ((name, help), total) in P2P_COUNTERS.iter().zip(totals) {
            families.push(family(
                name,
                help,
                MetricType::COUNTER,
                vec![counter(as_sample(total))],
            ));
        }
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(checkpoint: u64, resolved: u64) -> Vec<ChangefeedProgress> {
        vec![ChangefeedProgress {
            id: ChangeFeedId {
                namespace: "default".to_owned(),
                id: "cf".to_owned(),
            },
            checkpoint,
            resolved,
        }]
    }

    #[test]
    fn the_lag_is_the_age_of_the_oldest_change_past_the_checkpoint() {
        let mut gauges = OwnerGauges::default();
        let start = Instant::now();
        let at = |seconds| start + Duration::from_secs(seconds);
        // Caught up: no lag, however long it stays so (an idle upstream).
        gauges.observe(progress(10, 10), at(0));
        gauges.observe(progress(10, 10), at(900));
        assert_eq!(gauges.changefeeds[0].checkpoint_lag_seconds, 0.0);
        // Revision 20 appears at 1000 s and the checkpoint does not follow.
        gauges.observe(progress(10, 20), at(1000));
        gauges.observe(progress(10, 30), at(1100));
        assert_eq!(gauges.changefeeds[0].checkpoint_lag_seconds, 100.0);
        // The checkpoint passes 20 but not 30: the lag counts from 30's first sighting.
        gauges.observe(progress(25, 30), at(1200));
        assert_eq!(gauges.changefeeds[0].checkpoint_lag_seconds, 100.0);
        gauges.observe(progress(30, 30), at(1300));
        let changefeed = &gauges.changefeeds[0];
        assert_eq!(changefeed.checkpoint_lag_seconds, 0.0);
        assert_eq!((changefeed.checkpoint_ts, changefeed.resolved_ts), (30, 30));
        // A changefeed that stopped running leaves the gauges.
        gauges.observe(Vec::new(), at(1400));
        assert!(gauges.changefeeds.is_empty() && gauges.pending.is_empty());
    }

    #[test]
    fn p2p_totals_never_go_back_across_incarnations() {
        let state = OwnerState::default();
        let sent = |n| MetricsSnapshot {
            messages_sent: n,
            ..MetricsSnapshot::default()
        };
        let total = |state: &OwnerState| {
            let p2p = lock(&state.p2p);
            p2p.before[2] + p2p.current[2]
        };
        state.fold_p2p("a", &MetricsSnapshot::default(), &sent(5));
        state.fold_p2p("a", &MetricsSnapshot::default(), &sent(7));
        assert_eq!(total(&state), 7);
        // A new incarnation starts from zero; the totals keep the last one's 7.
        state.fold_p2p("b", &MetricsSnapshot::default(), &sent(2));
        assert_eq!(total(&state), 9);
    }

    #[test]
    fn a_former_owner_exports_no_owner_gauges_and_keeps_its_seconds() {
        let state = Arc::new(OwnerState::default());
        let collector = OwnerCollector::new(Arc::clone(&state));
        let names = |collector: &OwnerCollector| -> Vec<String> {
            collector
                .collect()
                .iter()
                .map(|family| family.name().to_owned())
                .collect()
        };
        state.term_started();
        state.set_gauges(3, progress(1, 2));
        let owner = names(&collector);
        for name in [
            "ticdc_owner_ownership_counter",
            "ticdc_owner_captures",
            "ticdc_owner_checkpoint_ts",
            "ticdc_owner_checkpoint_ts_lag",
            "ticdc_owner_resolved_ts",
            "ticdc_message_server_message_count",
        ] {
            assert!(owner.iter().any(|n| n == name), "{name} in {owner:?}");
        }
        state.term_ended();
        let former = names(&collector);
        assert!(
            !former
                .iter()
                .any(|n| n.starts_with("ticdc_owner_") && n != "ticdc_owner_ownership_counter"),
            "{former:?}"
        );
        let seconds = state.ownership_seconds();
        assert!(seconds > 0.0);
        // Not owner: the counter stands still.
        assert_eq!(state.ownership_seconds(), seconds);
    }
}
