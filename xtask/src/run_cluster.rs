//! `cargo xtask run-cluster`: a local etcd and N captures on free loopback ports.

use anyhow::{Result, bail};

/// Options of `run-cluster`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Number of captures to start.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Use this etcd instead of starting one.
    #[arg(long)]
    etcd: Option<String>,
}

pub(crate) fn run(args: Args) -> Result<()> {
    let _ = (args.nodes, args.etcd);
    bail!("run-cluster is not available yet: the capture server arrives with the capture issue")
}
