//! Prints every put and delete under a key prefix with its revision, through a
//! [`ResilientWatch`] that re-opens itself when the stream stalls or breaks.
//!
//! ```text
//! cargo run -p cdc-etcd --example watch_prefix -- 127.0.0.1:2379 /tidb/cdc/
//! ```
//!
//! A third argument sets the start revision (inclusive; default: the next change). Ctrl-C
//! stops it; a compaction past the start revision ends it with an error.
#![allow(clippy::print_stdout, reason = "an example program reports on stdout")]

use std::error::Error;

use cdc_etcd::watch::ResilientWatch;
use cdc_etcd::{ConnectConfig, EtcdClient, EventKind, Revision};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (endpoint, prefix, start_revision) = match args.as_slice() {
        [endpoint, prefix] => (endpoint, prefix, 0),
        [endpoint, prefix, revision] => (endpoint, prefix, revision.parse::<Revision>()?),
        _ => {
            return Err("usage: watch_prefix <etcd endpoint> <key prefix> [start revision]".into());
        }
    };
    let client =
        EtcdClient::connect(std::slice::from_ref(endpoint), ConnectConfig::default()).await?;
    let cancel = CancellationToken::new();
    let mut watch = ResilientWatch::start(
        client,
        prefix.as_bytes().to_vec(),
        true,
        start_revision,
        cancel.clone(),
    );
    println!("watching {prefix} on {endpoint}");
    loop {
        let response = tokio::select! {
            response = watch.recv() => response,
            interrupted = tokio::signal::ctrl_c() => {
                interrupted?;
                break;
            }
        };
        let Some(response) = response else { break };
        let response = response?;
        if response.is_progress_notify() {
            // Nothing changed up to this revision; nothing to print.
            continue;
        }
        for event in response.events {
            let kind = match event.kind {
                EventKind::Put => "put",
                EventKind::Delete => "delete",
            };
            println!(
                "{kind} {} = {:?} at revision {}",
                event.kv.key_lossy(),
                String::from_utf8_lossy(&event.kv.value),
                event.kv.mod_revision
            );
        }
    }
    cancel.cancel();
    watch.close().await;
    Ok(())
}
