//! cdc-etcd (under construction).
