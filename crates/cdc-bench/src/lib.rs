//! The workspace's benchmarks: each is a binary under `src/bin/`, run by
//! `cargo xtask bench NAME`, that prints its figures.
//!
//! Not a test suite: speed and memory targets are measured here, never asserted by timed tests.
//! The library itself is empty; the binaries share no code.
