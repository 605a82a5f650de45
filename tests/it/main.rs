//! One integration-test binary: real etcd, real processes.

mod election;
mod etcd_raw;
