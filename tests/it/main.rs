//! One integration-test binary: real etcd, real processes.

mod changefeed;
mod cluster;
mod cluster_faults;
mod cluster_run;
mod election;
mod etcd_cdc_client;
mod etcd_raw;
mod etcd_retry;
mod etcd_watch;
mod operator;
mod operator_api;
mod oracle;
mod orchestrator;
mod p2p;
mod support;
mod tls;
