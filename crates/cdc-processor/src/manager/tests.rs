//! Tests of the processor manager against a real etcd.
