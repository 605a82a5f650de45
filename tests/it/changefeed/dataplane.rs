//! The data plane end to end: three captures mirror 100,000 puts and deletes of 1,000 keys into
//! a file sink and an etcd sink while a capture and the owner are killed (SIGKILL) and the
//! sink's etcd restarts; both sinks reach exactly the upstream's final state, the files hold
//! every change, and each file holds each key's changes in revision order.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cdc_etcd::testing::EtcdServer;
use cdc_etcd::{EtcdClient, EventKind, GetOptions, WatchOptions};
use serde_json::{Value, json};

use super::{Cluster, Faults, SETTLE, checkpoint, store_revision};
use crate::support::wait_for;

const PREFIX: &str = "/dp/";
const DEST_PREFIX: &str = "/mirror/";
const KEYS: usize = 1_000;
const CHANGES: usize = 100_000;
/// Writers running at once, each on its own share of the keys (so each key's changes are
/// written by one writer, in order).
const WRITERS: usize = 8;

fn key(i: usize) -> String {
    format!("{PREFIX}{i:04}")
}

/// One change of the upstream: its key, its value (`None` for a delete) and its revision.
type Change = (Vec<u8>, Option<Vec<u8>>, u64);
/// Keys (without the prefix) and their values.
type State = BTreeMap<Vec<u8>, Vec<u8>>;

/// Writes `CHANGES` puts and deletes over `KEYS` keys: writer `w` owns the keys `i` with
/// `i % WRITERS == w` and changes them in a reproducible pseudo-random order, one delete for
/// every five changes.
async fn write_changes(client: &EtcdClient) -> Result<()> {
    let writers = (0..WRITERS).map(|w| {
        let client = client.clone();
        async move {
            let mut state: u64 = 0x2545_f491_4f6c_dd1d ^ (w as u64 + 1);
            for n in 0..CHANGES / WRITERS {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let i = w + WRITERS * usize::try_from(state % (KEYS / WRITERS) as u64)?;
                if n % 5 == 4 {
                    client.delete(key(i), false).await?;
                } else {
                    client.put(key(i), format!("w{w}-n{n}"), 0).await?;
                }
            }
            Ok::<_, anyhow::Error>(())
        }
    });
    futures::future::try_join_all(writers).await?;
    Ok(())
}

/// Every change of the upstream under `PREFIX` after `from`, up to `to`, read back through a
/// watch (nothing is compacted in this test).
async fn upstream_history(client: &EtcdClient, from: u64, to: u64) -> Result<Vec<Change>> {
    let mut watch = client
        .watch(
            PREFIX,
            WatchOptions {
                prefix: true,
                start_revision: i64::try_from(from + 1)?,
                ..WatchOptions::default()
            },
        )
        .await?;
    let mut changes = Vec::new();
    let mut last = from;
    while last < to {
        let response = tokio::time::timeout(SETTLE, watch.next())
            .await
            .context("the history watch answers")??
            .context("the history watch ended")?;
        for event in response.events {
            let revision = u64::try_from(event.kv.mod_revision)?;
            let value = match event.kind {
                EventKind::Put => Some(event.kv.value),
                EventKind::Delete => None,
            };
            changes.push((event.kv.key, value, revision));
            last = last.max(revision);
        }
    }
    Ok(changes)
}

/// The keys under `prefix` of `client`, with their values, keyed without the prefix.
async fn contents(client: &EtcdClient, prefix: &str) -> Result<State> {
    let response = client.get(prefix, GetOptions::prefix()).await?;
    Ok(response
        .kvs
        .into_iter()
        .map(|kv| (kv.key[prefix.len()..].to_vec(), kv.value))
        .collect())
}

/// One line of the file sink.
fn parse_line(line: &str) -> Result<Change> {
    let value: Value = serde_json::from_str(line).with_context(|| format!("line {line:?}"))?;
    let bytes =
        |field: &str| -> Option<Vec<u8>> { value[field].as_str().map(|s| s.as_bytes().to_vec()) };
    let key = bytes("key").context("a key")?;
    let revision = value["revision"].as_u64().context("a revision")?;
    let change_value = match value["op"].as_str() {
        Some("put") => Some(bytes("value").context("a put's value")?),
        Some("delete") => None,
        other => anyhow::bail!("op {other:?} in {line:?}"),
    };
    Ok((key, change_value, revision))
}

/// Reads the file sink's files of one changefeed: every change, and the final state a reader
/// gets by reading each span's files in name order and applying a change only when it is newer
/// than what it holds for the key (changes may repeat after a restart: delivery is at least
/// once). Fails when a file holds a key's changes out of revision order.
fn read_files(dir: &Path) -> Result<(Vec<Change>, State)> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<_, _>>()?;
    names.sort();
    let mut all = Vec::new();
    let mut newest: BTreeMap<Vec<u8>, (u64, Option<Vec<u8>>)> = BTreeMap::new();
    for path in &names {
        let text = std::fs::read_to_string(path)?;
        let mut in_file: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        for line in text.lines() {
            let (key, value, revision) = parse_line(line)?;
            if let Some(previous) = in_file.insert(key.clone(), revision) {
                ensure!(
                    previous <= revision,
                    "{}: key {:?} at revision {revision} after {previous}",
                    path.display(),
                    String::from_utf8_lossy(&key)
                );
            }
            match newest.get(&key) {
                Some((held, _)) if *held >= revision => {}
                _ => {
                    newest.insert(key.clone(), (revision, value.clone()));
                }
            }
            all.push((key, value, revision));
        }
    }
    let state = newest
        .into_iter()
        .filter_map(|(key, (_, value))| Some((key[PREFIX.len()..].to_vec(), value?)))
        .collect();
    Ok((all, state))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_reaches_the_file_and_etcd_sinks_through_kills_and_a_sink_restart()
-> Result<()> {
    let mut cluster = Cluster::start(3, "dataplane").await?;
    let mut sink_etcd = EtcdServer::start().await?;
    let out = tempfile::tempdir()?;
    // A sample of the keys, so that each prefix splits into three spans.
    for i in (0..KEYS).step_by(10) {
        cluster.client.put(key(i), "sample", 0).await?;
    }
    let (owner, _) = cluster.wait_owner(SETTLE).await?;
    let from = store_revision(&cluster.client).await?;
    let sink_host = sink_etcd
        .endpoint()
        .trim_start_matches("http://")
        .to_owned();
    let sinks = [
        (
            "to-files",
            format!("file://{}?flush-interval=200ms", out.path().display()),
        ),
        (
            "to-etcd",
            format!("etcd://{sink_host}{DEST_PREFIX}?flush-interval=200ms"),
        ),
    ];
    for (id, sink_uri) in &sinks {
        let body = json!({
            "changefeed_id": id,
            "start_ts": from,
            "sink_uri": sink_uri,
            "replica_config": {
                "filter": {"rules": [PREFIX]},
                "scheduler": {"spans_per_prefix": 3},
            },
        });
        cluster.create(owner, &body).await?;
    }
    for (id, _) in &sinks {
        cluster.wait_replicating(id, 3, SETTLE).await?;
    }

    // The writes run while a capture, the owner and the sink's etcd fail in turn.
    let faults = Faults::start(&cluster, from, |client| async move {
        write_changes(&client).await
    });
    faults
        .kill_a_capture_then_the_owner(&mut cluster, 20_000, 45_000)
        .await?;
    faults.reach(70_000).await?;
    sink_etcd.kill()?;
    faults.reach(80_000).await?;
    sink_etcd.restart().await?;
    let last = faults.finish().await?;

    // Both changefeeds catch up (the etcd one after retrying past the sink's restart).
    let catch_up = Duration::from_secs(180);
    for (id, _) in &sinks {
        wait_for(catch_up, || async {
            (checkpoint(&cluster, id).await? >= last).then_some(())
        })
        .await
        .with_context(|| format!("{id} reaches revision {last}{}", cluster.diagnostics()))?;
    }

    let expected = contents(&cluster.client, PREFIX).await?;
    let mirror = contents(&sink_etcd.client().await?, DEST_PREFIX).await?;
    ensure!(
        mirror == expected,
        "the etcd mirror differs from the upstream"
    );

    let history = upstream_history(&cluster.client, from, last).await?;
    // A delete of a key that is not there changes nothing, so there are fewer changes than
    // requests.
    ensure!(
        history.len() > CHANGES / 2 && history.last().map(|change| change.2) == Some(last),
        "a history of {} changes up to {last}",
        history.len()
    );
    let (written, replayed) = read_files(&out.path().join("to-files"))?;
    ensure!(
        replayed == expected,
        "replaying the files differs from the upstream"
    );
    let written: BTreeSet<(Vec<u8>, u64)> = written
        .into_iter()
        .map(|(key, _, revision)| (key, revision))
        .collect();
    let missing: Vec<_> = history
        .iter()
        .filter(|(key, _, revision)| !written.contains(&(key.clone(), *revision)))
        .take(5)
        .collect();
    ensure!(
        missing.is_empty(),
        "changes missing from the files: {missing:?}"
    );
    Ok(())
}
