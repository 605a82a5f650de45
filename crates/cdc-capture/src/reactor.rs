//! The owner, controller and processor manager: traits built through factories (so tests can
//! inject doubles), and the minimal reactors the binary runs until changefeed scheduling lands.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use cdc_etcd::{Compare, CompareOp, EtcdClient, LeaseId, Revision, Txn, TxnOp};
use futures::future::BoxFuture;
use serde::Serialize;
use tracing::info;

use crate::error::{Error, Result};
use crate::info::{AtomicLiveness, CaptureInfo};
use crate::metrics::Metrics;
use crate::view::{ClusterView, Keys};

/// The meta version this binary writes and accepts.
pub const META_VERSION: i64 = 1;

/// What a tick asks of its worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tick {
    /// Keep ticking.
    Continue,
    /// The reactor is done; the worker returns Ok.
    Finished,
}

/// What a reactor gets from its incarnation.
#[derive(Clone, Debug)]
pub struct ReactorContext {
    /// The etcd client.
    pub client: EtcdClient,
    /// The cluster's key layout.
    pub keys: Keys,
    /// This capture.
    pub capture_id: String,
    /// The session's lease.
    pub lease_id: LeaseId,
    /// The owner key (`owner/<leaseHex>`).
    pub owner_key: String,
    /// The owner key's create revision, which fences the owner's writes (0 for processors).
    pub owner_revision: Revision,
    /// The PD endpoints, comma-separated (the default upstream's).
    pub pd_endpoints: String,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// The owner: runs while this capture is elected.
pub trait Owner: Send + Sync {
    /// One pass over the cluster.
    fn tick<'a>(&'a self, view: &'a ClusterView) -> BoxFuture<'a, Result<Tick>>;
    /// Asks the owner to finish; its next tick returns `Finished`.
    fn async_stop(&self);
}

/// Builds owners.
pub trait OwnerFactory: Send + Sync {
    /// A new owner for one term.
    fn create(&self, context: ReactorContext) -> Arc<dyn Owner>;
}

/// The controller: runs beside the owner and serves the capture list.
pub trait Controller: Send + Sync {
    /// One pass over the cluster.
    fn tick<'a>(&'a self, view: &'a ClusterView) -> BoxFuture<'a, Result<Tick>>;
    /// Asks the controller to finish.
    fn async_stop(&self);
    /// The captures as of the last tick.
    fn captures(&self) -> Vec<CaptureInfo>;
}

/// Builds controllers.
pub trait ControllerFactory: Send + Sync {
    /// A new controller for one term.
    fn create(&self, context: ReactorContext) -> Arc<dyn Controller>;
}

/// The processor manager: runs on every capture.
pub trait ProcessorManager: Send + Sync {
    /// One pass over the cluster.
    fn tick<'a>(&'a self, view: &'a ClusterView) -> BoxFuture<'a, Result<Tick>>;
    /// Stops every processor; called first on every exit of the incarnation.
    fn close(&self) -> BoxFuture<'_, ()>;
    /// Appends a human-readable dump.
    fn write_debug_info(&self, out: &mut String);
}

/// Builds processor managers.
pub trait ProcessorManagerFactory: Send + Sync {
    /// A new manager for one incarnation.
    fn create(
        &self,
        context: ReactorContext,
        liveness: Arc<AtomicLiveness>,
    ) -> Arc<dyn ProcessorManager>;
}

/// The factories the binary uses.
#[derive(Clone, Copy, Debug, Default)]
pub struct MinimalReactors;

impl OwnerFactory for MinimalReactors {
    fn create(&self, context: ReactorContext) -> Arc<dyn Owner> {
        Arc::new(MinimalOwner {
            context,
            stopped: AtomicBool::new(false),
            upstream_written: AtomicBool::new(false),
        })
    }
}

impl ControllerFactory for MinimalReactors {
    fn create(&self, context: ReactorContext) -> Arc<dyn Controller> {
        Arc::new(MinimalController {
            context,
            stopped: AtomicBool::new(false),
            captures: Mutex::new(Vec::new()),
        })
    }
}

impl ProcessorManagerFactory for MinimalReactors {
    fn create(
        &self,
        context: ReactorContext,
        liveness: Arc<AtomicLiveness>,
    ) -> Arc<dyn ProcessorManager> {
        Arc::new(MinimalProcessorManager {
            context,
            liveness,
            ticks: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        })
    }
}

/// The default upstream's value (TiCDC's UpstreamInfo JSON).
#[derive(Serialize)]
struct UpstreamInfo<'a> {
    id: u64,
    #[serde(rename = "pd-endpoints")]
    pd_endpoints: &'a str,
    #[serde(rename = "key-path")]
    key_path: &'a str,
    #[serde(rename = "cert-path")]
    cert_path: &'a str,
    #[serde(rename = "ca-path")]
    ca_path: &'a str,
    #[serde(rename = "cert-allowed-cn")]
    cert_allowed_cn: Option<Vec<String>>,
}

/// Keeps the meta version and the default upstream info, fenced by the owner key.
struct MinimalOwner {
    context: ReactorContext,
    stopped: AtomicBool,
    upstream_written: AtomicBool,
}

impl MinimalOwner {
    fn fence(&self) -> Compare {
        Compare::CreateRevision {
            key: self.context.owner_key.as_bytes().to_vec(),
            op: CompareOp::Equal,
            revision: self.context.owner_revision,
        }
    }

    /// Puts `value` at `key` if the key is absent and we still own the cluster.
    async fn put_if_absent(&self, key: String, value: Vec<u8>) -> Result<()> {
        let started = std::time::Instant::now();
        let key = key.into_bytes();
        let response = self
            .context
            .client
            .txn(Txn {
                compares: vec![
                    self.fence(),
                    Compare::CreateRevision {
                        key: key.clone(),
                        op: CompareOp::Equal,
                        revision: 0,
                    },
                ],
                success: vec![TxnOp::Put {
                    key,
                    value,
                    lease: 0,
                }],
                failure: vec![],
            })
            .await?;
        self.context
            .metrics
            .commit_duration
            .with_label_values(&["owner"])
            .observe(started.elapsed().as_secs_f64());
        if response.succeeded {
            info!("owner wrote cluster metadata");
        }
        Ok(())
    }
}

impl Owner for MinimalOwner {
    fn tick<'a>(&'a self, view: &'a ClusterView) -> BoxFuture<'a, Result<Tick>> {
        Box::pin(async move {
            if self.stopped.load(Ordering::SeqCst) {
                return Ok(Tick::Finished);
            }
            if !view.initialized {
                return Ok(Tick::Continue);
            }
            if !view.owners.contains_key(&self.context.owner_key) {
                return Err(Error::NotOwner);
            }
            match view.meta_version {
                Some(version) if version > META_VERSION => {
                    return Err(Error::MetaVersionTooNew {
                        found: version,
                        supported: META_VERSION,
                    });
                }
                Some(_) => {}
                None => {
                    self.put_if_absent(
                        self.context.keys.meta_version_key(),
                        META_VERSION.to_string().into_bytes(),
                    )
                    .await?;
                }
            }
            if !self.upstream_written.load(Ordering::SeqCst) {
                let upstream_id = self.context.client.cluster_id().await?;
                let value = serde_json::to_vec(&UpstreamInfo {
                    id: upstream_id,
                    pd_endpoints: &self.context.pd_endpoints,
                    key_path: "",
                    cert_path: "",
                    ca_path: "",
                    cert_allowed_cn: None,
                })
                .expect("a plain struct always encodes");
                self.put_if_absent(self.context.keys.upstream_key(upstream_id), value)
                    .await?;
                self.upstream_written.store(true, Ordering::SeqCst);
            }
            Ok(Tick::Continue)
        })
    }

    fn async_stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }
}

/// Keeps the capture list and reports joins and leaves.
struct MinimalController {
    context: ReactorContext,
    stopped: AtomicBool,
    captures: Mutex<Vec<CaptureInfo>>,
}

impl Controller for MinimalController {
    fn tick<'a>(&'a self, view: &'a ClusterView) -> BoxFuture<'a, Result<Tick>> {
        Box::pin(async move {
            if self.stopped.load(Ordering::SeqCst) {
                return Ok(Tick::Finished);
            }
            if !view.initialized {
                return Ok(Tick::Continue);
            }
            let current: Vec<CaptureInfo> = view.captures.values().cloned().collect();
            let mut known = self.captures.lock().expect("never poisoned");
            if *known != current {
                for capture in current.iter().filter(|c| !known.contains(c)) {
                    info!(capture_id = %capture.id, address = %capture.address, "capture joined");
                }
                for capture in known.iter().filter(|c| !current.contains(c)) {
                    info!(capture_id = %capture.id, "capture left");
                }
                let n_captures = i64::try_from(current.len()).unwrap_or(i64::MAX);
                self.context.metrics.captures.set(n_captures);
                *known = current;
            }
            Ok(Tick::Continue)
        })
    }

    fn async_stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }

    fn captures(&self) -> Vec<CaptureInfo> {
        self.captures.lock().expect("never poisoned").clone()
    }
}

/// Checks every tick that this capture's key is still there (`check_capture_alive`).
struct MinimalProcessorManager {
    context: ReactorContext,
    liveness: Arc<AtomicLiveness>,
    ticks: AtomicU64,
    closed: AtomicBool,
}

impl ProcessorManager for MinimalProcessorManager {
    fn tick<'a>(&'a self, view: &'a ClusterView) -> BoxFuture<'a, Result<Tick>> {
        Box::pin(async move {
            if self.closed.load(Ordering::SeqCst) {
                return Ok(Tick::Finished);
            }
            self.ticks.fetch_add(1, Ordering::Relaxed);
            if view.initialized && !view.capture_keys.contains(&self.context.capture_id) {
                return Err(Error::LeaseExpired);
            }
            Ok(Tick::Continue)
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.closed.store(true, Ordering::SeqCst);
        })
    }

    fn write_debug_info(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "processor manager of capture {}: ticks {}, liveness {:?}, closed {}",
            self.context.capture_id,
            self.ticks.load(Ordering::Relaxed),
            self.liveness.load(),
            self.closed.load(Ordering::SeqCst),
        );
    }
}
