//! One integration-test binary: real etcd, real processes.

mod p2p;
