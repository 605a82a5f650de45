//! The capture: one TiCDC server process's membership in a cluster.
//!
//! A [`Capture`] runs incarnations: each grants a lease (a [`cdc_election::Session`]),
//! registers a new capture ID under it, installs a fresh p2p message server in the process's
//! [`cdc_p2p::ServerWrapper`], campaigns for owner through an [`Election`], runs the processor
//! manager on a [`cdc_orchestrator::EtcdWorker`], and ends in suicide (then a new incarnation)
//! when the lease is lost. The [`Server`] puts the capture behind one port that serves the
//! HTTP API and gRPC.
//!
//! Owner, controller and processor manager are the traits of [`cdc_reactor`], built by
//! factories ([`CaptureParts`]): the binary runs the owner and processor crates' reactors and
//! the [`MinimalReactors`] controller; tests inject doubles.
//!
//! Not here: the etcd key layout and client (cdc-etcd), the session and election recipes
//! (cdc-election), the etcd worker (cdc-orchestrator), the p2p protocol (cdc-p2p), and flag
//! parsing, config loading and logging setup (cdc-server).
//!
//! Invariants: the processors are closed first on every exit of an incarnation; every etcd
//! call on the exit path has a deadline; liveness only moves from Alive to Stopping.

mod capture;
mod config;
mod election;
mod error;
mod http;
mod metrics;
mod reactor;
mod server;
mod session;
mod tls;
mod version;

pub use capture::{CHANGEFEED_INIT_WORKERS, Capture, CaptureParts, Incarnation, STOP_BUDGET};
pub use config::{Config, DebugConfig, SecurityConfig, is_valid_cluster_id};
pub use election::{Election, ElectionFactory, EtcdElections};
pub use error::{Error, Result};
pub use http::log::{LogLevelHandler, set_log_level_handler};
pub use http::{FORWARD_HEADER, FORWARD_TIMES_HEADER, MAX_FORWARD_TIMES, router};
pub use metrics::{Metrics, WORKER_ROLES};
pub use reactor::MinimalReactors;
pub use server::Server;
pub use session::{EtcdSessionFactory, SessionFactory};
pub use tls::{api_client, install_crypto_provider};
pub use version::{BUILD_TS, GIT_BRANCH, GIT_HASH, VERSION, version_info};
