//! The capture's Prometheus metrics, in a registry per server (served at `/metrics`).

use cdc_p2p::MetricsSnapshot;
use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The metrics of one capture server.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Captures known to the controller.
    pub captures: IntGauge,
    /// Owner changes seen by this capture.
    pub owner_changes: IntCounter,
    /// Ticks of the etcd workers, by role.
    pub worker_ticks: IntCounterVec,
    /// The p2p counters of the current incarnation, by side (`server`, `client`) and counter;
    /// they start again from zero with each incarnation.
    pub p2p: IntGaugeVec,
    /// Incarnations started after the first.
    pub restarts: IntCounter,
    /// Resigns that failed or timed out.
    pub resign_failures: IntCounter,
    /// p2p clients that stopped with an error (read from the router's error channel).
    pub p2p_client_errors: IntCounter,
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let registry = Registry::new();
        let captures = IntGauge::new("ticdc_owner_captures", "captures known to the owner")
            .expect("valid metric");
        let owner_changes = IntCounter::new("ticdc_capture_owner_changes_total", "owner changes")
            .expect("valid metric");
        let worker_ticks = IntCounterVec::new(
            Opts::new("ticdc_etcd_worker_ticks_total", "etcd worker ticks"),
            &["role"],
        )
        .expect("valid metric");
        let p2p = IntGaugeVec::new(
            Opts::new(
                "ticdc_p2p_incarnation_messages",
                "p2p counters of the current incarnation",
            ),
            &["side", "counter"],
        )
        .expect("valid metric");
        let restarts = IntCounter::new("ticdc_capture_restarts_total", "capture restarts")
            .expect("valid metric");
        let resign_failures = IntCounter::new(
            "ticdc_capture_resign_failures_total",
            "owner resigns that failed or timed out",
        )
        .expect("valid metric");
        let p2p_client_errors = IntCounter::new(
            "ticdc_p2p_client_errors_total",
            "p2p clients that stopped with an error",
        )
        .expect("valid metric");
        for collector in [
            Box::new(captures.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(owner_changes.clone()),
            Box::new(worker_ticks.clone()),
            Box::new(p2p.clone()),
            Box::new(restarts.clone()),
            Box::new(resign_failures.clone()),
            Box::new(p2p_client_errors.clone()),
        ] {
            registry
                .register(collector)
                .expect("each metric is registered once");
        }
        Metrics {
            registry,
            captures,
            owner_changes,
            worker_ticks,
            p2p,
            restarts,
            resign_failures,
            p2p_client_errors,
        }
    }

    /// The registry, for other components' metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Sets the p2p gauges from the current incarnation's (server, clients) counters.
    pub fn set_p2p(&self, server: &MetricsSnapshot, clients: &MetricsSnapshot) {
        for (side, snapshot) in [("server", server), ("client", clients)] {
            for (counter, value) in [
                ("sent", snapshot.messages_sent),
                ("resent", snapshot.messages_resent),
                ("received", snapshot.messages_received),
                ("repeated", snapshot.messages_repeated),
                ("acked", snapshot.messages_acked),
                ("reconnects", snapshot.reconnects),
            ] {
                self.p2p
                    .with_label_values(&[side, counter])
                    .set(i64::try_from(value).unwrap_or(i64::MAX));
            }
        }
    }

    /// Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("encoding to memory cannot fail");
        String::from_utf8_lossy(&buffer).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
