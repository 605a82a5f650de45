//! One integration-test binary: real etcd, real processes.

mod cluster;
mod etcd_raw;
mod orchestrator;
