//! An owner election between processes: each grants a session, campaigns, and prints when it
//! leads; Ctrl-C makes the leader resign, and the next one takes over.
//!
//! Run two (or more) against one etcd, each with its own name:
//!
//! ```text
//! cargo run -p cdc-election --example elect -- 127.0.0.1:2379 capture-a
//! cargo run -p cdc-election --example elect -- 127.0.0.1:2379 capture-b
//! ```
//!
//! The first prints `capture-a leads`, the second `capture-b waits for capture-a`; stop the
//! first with Ctrl-C and the second prints `capture-b leads`. A third argument sets the session
//! TTL in seconds (default 10): kill a leader with SIGKILL instead and its successor leads once
//! that TTL has run out.
#![allow(clippy::print_stdout, reason = "an example program reports on stdout")]

use std::error::Error;

use cdc_election::{DEFAULT_SESSION_TTL_SECS, Election, Session};
use cdc_etcd::{ConnectConfig, EtcdClient};
use tokio_util::sync::CancellationToken;

/// The election prefix: TiCDC's owner key of the `default` cluster.
const PREFIX: &str = "/tidb/cdc/default/__cdc_meta__/owner";

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (endpoint, name, ttl_secs) = match args.as_slice() {
        [endpoint, name] => (endpoint, name, DEFAULT_SESSION_TTL_SECS),
        [endpoint, name, ttl] => (endpoint, name, ttl.parse()?),
        _ => return Err("usage: elect <etcd endpoint> <name> [ttl seconds]".into()),
    };
    let client =
        EtcdClient::connect(std::slice::from_ref(endpoint), ConnectConfig::default()).await?;
    let session = Session::grant(client, ttl_secs).await?;
    let election = Election::new(&session, PREFIX);
    let stop = CancellationToken::new();
    let result = Box::pin(lead_until_stopped(&session, &election, name, &stop)).await;
    // Resign (if we lead) and revoke the lease however the run ended.
    election.resign().await?;
    session.close().await?;
    println!("{name} stopped");
    result
}

/// Campaigns, reports the leader while waiting, and leads until Ctrl-C or the session's end.
async fn lead_until_stopped(
    session: &Session,
    election: &Election,
    name: &str,
    stop: &CancellationToken,
) -> Result<(), Box<dyn Error>> {
    if let Some(leader) = election.leader().await? {
        println!("{name} waits for {leader}");
    }
    let mut campaign = Box::pin(election.campaign(name, stop));
    let campaigned = tokio::select! {
        campaigned = &mut campaign => campaigned,
        interrupted = tokio::signal::ctrl_c() => {
            interrupted?;
            // A cancelled campaign resigns: our key leaves the queue.
            stop.cancel();
            campaign.await
        }
    };
    let fence = match campaigned {
        Ok(fence) => fence,
        Err(cdc_election::Error::Cancelled) => return Ok(()),
        Err(err) => return Err(err.into()),
    };
    println!("{name} leads (create revision {})", fence.create_revision);
    let done = session.done();
    tokio::select! {
        () = done.wait() => {
            println!("{name} lost its session: {:?}", session.end());
        }
        interrupted = tokio::signal::ctrl_c() => {
            interrupted?;
            println!("{name} steps down");
        }
    }
    Ok(())
}
