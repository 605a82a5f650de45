//! A reactor that counts the keys under a prefix of a real etcd, printed whenever the count
//! changes: the smallest complete use of an [`EtcdWorker`].
//!
//! Usage: `cargo run -p cdc-orchestrator --example count_keys -- <endpoint> [prefix]`, for
//! example `127.0.0.1:2379 /tidb/cdc` (the default prefix); Ctrl-C stops it. The worker ticks
//! the reactor once at the start and then only when a key under the prefix changed, plus a
//! slow heartbeat: the reactor asks for no other tick ([`NextTick::Idle`]).
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "an example reports on the terminal"
)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cdc_etcd::{ConnectConfig, EtcdClient};
use cdc_orchestrator::{EtcdWorker, NextTick, PatchGroup, Reactor, ReactorState};
use tokio_util::sync::CancellationToken;

/// The keys under the prefix.
#[derive(Default)]
struct Keys(BTreeSet<Vec<u8>>);

impl ReactorState for Keys {
    fn update(
        &mut self,
        key: &[u8],
        value: Option<&[u8]>,
        _is_init: bool,
    ) -> cdc_orchestrator::Result<()> {
        match value {
            Some(_) => self.0.insert(key.to_vec()),
            None => self.0.remove(key),
        };
        Ok(())
    }

    fn update_pending_change(&mut self, _now: Instant) {}

    fn get_patches(&mut self) -> Vec<PatchGroup> {
        Vec::new()
    }
}

/// Prints the number of keys when it changed since the last tick.
#[derive(Default)]
struct CountKeys {
    last: Option<usize>,
}

impl Reactor<Keys> for CountKeys {
    async fn tick(&mut self, state: &mut Keys) -> cdc_orchestrator::Result<NextTick> {
        let n_keys = state.0.len();
        if self.last != Some(n_keys) {
            println!("{n_keys} keys");
            self.last = Some(n_keys);
        }
        Ok(NextTick::Idle)
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let endpoint = args
        .next()
        .context("usage: count_keys <endpoint> [prefix]")?;
    let prefix = args.next().unwrap_or_else(|| "/tidb/cdc".to_owned());
    let client = EtcdClient::connect(&[endpoint], ConnectConfig::default())
        .await
        .context("connect to etcd")?;
    let cancel = CancellationToken::new();
    let worker = EtcdWorker::new(client, &prefix);
    let mut reactor = CountKeys::default();
    let run = worker.run(
        &mut reactor,
        Keys::default(),
        Duration::from_millis(50),
        &cancel,
    );
    tokio::pin!(run);
    let result = tokio::select! {
        result = &mut run => result,
        _ = tokio::signal::ctrl_c() => {
            cancel.cancel();
            run.await
        }
    };
    match result {
        Ok(_) | Err(cdc_orchestrator::Error::Cancelled) => Ok(()),
        Err(err) => {
            eprintln!("{}", cdc_model::ErrorReport(&err));
            Err(err.into())
        }
    }
}
