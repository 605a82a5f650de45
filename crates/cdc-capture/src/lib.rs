//! The capture: one TiCDC server process's membership in a cluster.
//!
//! A [`Capture`] runs incarnations: each grants a lease (a [`Session`]), registers a new
//! capture ID under it, campaigns for owner through an [`Election`], runs the processor
//! manager, and ends in suicide (then a new incarnation) when the lease is lost. The
//! [`Server`] puts the capture behind one port that serves the HTTP API and gRPC.
//!
//! Owner, controller and processor manager are traits built by factories ([`CaptureParts`]),
//! so tests inject doubles; the binary runs [`MinimalReactors`].
//!
//! Invariants: the processors are closed first on every exit of an incarnation; every etcd
//! call on the exit path has a deadline; liveness only moves from Alive to Stopping.

mod capture;
mod config;
mod election;
mod error;
mod http;
mod info;
mod metrics;
mod reactor;
mod server;
mod session;
mod view;

pub use capture::{
    CHANGEFEED_INIT_WORKERS, Capture, CaptureParts, ElectionFactory, EtcdElections, GIT_HASH,
    Incarnation, VERSION,
};
pub use config::{Config, DebugConfig, MIN_SESSION_TTL_SECS, SecurityConfig, is_valid_cluster_id};
pub use election::{Election, EtcdElection};
pub use error::{Error, Result};
pub use http::{FORWARD_HEADER, router};
pub use info::{AtomicLiveness, CaptureInfo, Liveness};
pub use metrics::Metrics;
pub use reactor::{
    Controller, ControllerFactory, META_VERSION, MinimalReactors, Owner, OwnerFactory,
    ProcessorManager, ProcessorManagerFactory, ReactorContext, Tick,
};
pub use server::Server;
pub use session::{EtcdSessionFactory, Session, SessionFactory};
pub use view::{ClusterView, Keys, OwnerCandidate};
