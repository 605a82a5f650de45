//! One integration-test binary: real etcd, real processes.
