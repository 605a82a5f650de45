//! The capture's Prometheus metrics, in a registry per server (served at `/metrics`).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
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
    /// Latency of etcd commits, by role.
    pub commit_duration: HistogramVec,
    /// Incarnations started after the first.
    pub restarts: IntCounter,
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
        let commit_duration = HistogramVec::new(
            HistogramOpts::new(
                "ticdc_etcd_worker_etcd_txn_exec_duration_seconds",
                "etcd commit latency",
            )
            .buckets(prometheus::exponential_buckets(0.002, 2.0, 12).expect("valid buckets")),
            &["role"],
        )
        .expect("valid metric");
        let restarts = IntCounter::new("ticdc_capture_restarts_total", "capture restarts")
            .expect("valid metric");
        for collector in [
            Box::new(captures.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(owner_changes.clone()),
            Box::new(worker_ticks.clone()),
            Box::new(commit_duration.clone()),
            Box::new(restarts.clone()),
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
            commit_duration,
            restarts,
        }
    }

    /// The registry, for other components' metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
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
