//! The NATS sink end to end, against a real `nats-server -js`: three captures publish 50,000
//! puts and deletes of 1,000 keys while a capture and the owner are killed (SIGKILL) and the
//! NATS server restarts; the stream then holds every change at least once, each key's changes in
//! revision order (a replay only repeats earlier ones), and no message ID twice within the
//! duplicate window. And each error the sink meets (a missing stream without `create-stream`, a
//! stream that does not cover the subject, a server gone) shows as the changefeed's error, and
//! the changefeed resumes once its cause is gone.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cdc_etcd::{EtcdClient, EventKind, WatchOptions};
use cdc_sink::DUPLICATE_WINDOW;
use cdc_sink::testing::NatsServer;
use futures::stream::{self, StreamExt, TryStreamExt};
use serde_json::{Value, json};

use super::mysql::{wait_caught_up, wait_error};
use super::{Cluster, Faults, SETTLE, checkpoint, store_revision};
use crate::support::wait_for;

const PREFIX: &str = "/nats/";
const KEYS: usize = 1_000;
const CHANGES: usize = 50_000;
const WRITERS: usize = 8;

fn key(i: usize) -> String {
    format!("{PREFIX}{i:04}")
}

/// Writes `CHANGES` puts and deletes over `KEYS` keys, each key by one writer, one delete in
/// five changes.
async fn write_changes(client: &EtcdClient) -> Result<()> {
    let writers = (0..WRITERS).map(|w| {
        let client = client.clone();
        async move {
            let mut state: u64 = 0x2545_f491_4f6c_dd1d ^ (w as u64 + 7);
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

/// Every change (key, revision) of the upstream under `PREFIX` after `from` up to `to`.
async fn upstream_history(client: &EtcdClient, from: u64, to: u64) -> Result<Vec<(String, u64)>> {
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
            if matches!(event.kind, EventKind::Put | EventKind::Delete) {
                changes.push((String::from_utf8(event.kv.key)?, revision));
            }
            last = last.max(revision);
        }
    }
    Ok(changes)
}

/// One stored message: its ID, key, revision and the time JetStream stored it.
struct Stored {
    id: String,
    key: String,
    revision: u64,
    /// Unix nanoseconds.
    time: i128,
}

/// Every message of `stream`, in stream order.
async fn stored(server: &NatsServer, stream: &str) -> Result<Vec<Stored>> {
    let jetstream = async_nats::jetstream::new(server.client().await?);
    let mut handle = jetstream.get_stream(stream).await?;
    let n_messages = handle.info().await?.state.messages;
    let handle = &handle;
    stream::iter(1..=n_messages)
        .map(|sequence| async move {
            let message = handle.get_raw_message(sequence).await?;
            let line: Value = serde_json::from_slice(&message.payload)?;
            Ok::<_, anyhow::Error>(Stored {
                id: message
                    .headers
                    .get("Nats-Msg-Id")
                    .map(|value| value.to_string())
                    .context("a message ID")?,
                key: line["key"].as_str().context("a key")?.to_owned(),
                revision: line["revision"].as_u64().context("a revision")?,
                time: message.time.unix_timestamp_nanos(),
            })
        })
        .buffered(64)
        .try_collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_reaches_the_stream_through_kills_and_a_nats_restart() -> Result<()> {
    let mut cluster = Cluster::start(3, "nats-dataplane").await?;
    let mut nats = NatsServer::start().await?;
    for i in (0..KEYS).step_by(10) {
        cluster.client.put(key(i), "sample", 0).await?;
    }
    let (owner, _) = cluster.wait_owner(SETTLE).await?;
    let from = store_revision(&cluster.client).await?;
    let body = json!({
        "changefeed_id": "to-nats",
        "start_ts": from,
        "sink_uri": nats.sink_uri("cdc", "CDC", "&create-stream=true&flush-interval=200ms"),
        "replica_config": {
            "filter": {"rules": [PREFIX]},
            "scheduler": {"spans_per_prefix": 3},
        },
    });
    cluster.create(owner, &body).await?;
    cluster.wait_replicating("to-nats", 3, SETTLE).await?;

    let faults = Faults::start(&cluster, from, |client| async move {
        write_changes(&client).await
    });
    faults
        .kill_a_capture_then_the_owner(&mut cluster, 8_000, 18_000)
        .await?;
    faults.reach(28_000).await?;
    nats.kill()?;
    faults.reach(32_000).await?;
    nats.restart().await?;
    let last = faults.finish().await?;
    wait_for(Duration::from_secs(300), || async {
        (checkpoint(&cluster, "to-nats").await? >= last).then_some(())
    })
    .await
    .with_context(|| format!("to-nats reaches revision {last}{}", cluster.diagnostics()))?;

    let history = upstream_history(&cluster.client, from, last).await?;
    let messages = stored(&nats, "CDC").await?;
    // Every change at least once.
    let held: HashSet<(&str, u64)> = messages
        .iter()
        .map(|message| (message.key.as_str(), message.revision))
        .collect();
    let missing: Vec<_> = history
        .iter()
        .filter(|(key, revision)| !held.contains(&(key.as_str(), *revision)))
        .take(5)
        .collect();
    ensure!(
        missing.is_empty() && history.len() > CHANGES / 2,
        "{} changes upstream; missing from the stream: {missing:?}",
        history.len()
    );
    // Per key in revision order; a message older than the key's newest is a replay of an ID
    // stored before, more than the duplicate window earlier.
    let mut newest: BTreeMap<&str, u64> = BTreeMap::new();
    let mut first_stored: HashMap<&str, i128> = HashMap::new();
    let window = i128::try_from(DUPLICATE_WINDOW.as_nanos())?;
    for message in &messages {
        if let Some(first) = first_stored.get(message.id.as_str()) {
            ensure!(
                message.time - *first >= window,
                "message {} stored twice within the duplicate window",
                message.id
            );
        } else {
            first_stored.insert(&message.id, message.time);
            let previous = newest.insert(&message.key, message.revision).unwrap_or(0);
            ensure!(
                previous < message.revision,
                "key {} at revision {} after {previous}",
                message.key,
                message.revision
            );
        }
    }
    Ok(())
}

/// A changefeed from `from` over `prefix` into `sink_uri`, in one span.
fn one_span(id: &str, prefix: &str, from: u64, sink_uri: &str) -> Value {
    json!({
        "changefeed_id": id,
        "start_ts": from,
        "sink_uri": sink_uri,
        "replica_config": {
            "filter": {"rules": [prefix]},
            "scheduler": {"spans_per_prefix": 1},
        },
    })
}

/// The keys of the messages of `stream`.
async fn stored_keys(server: &NatsServer, stream: &str) -> Result<Vec<String>> {
    Ok(stored(server, stream)
        .await?
        .into_iter()
        .map(|message| message.key)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_errors_show_on_the_changefeed_which_resumes_once_they_are_fixed() -> Result<()> {
    let cluster = Cluster::start(1, "nats-errors").await?;
    let mut nats = NatsServer::start().await?;
    let address = nats.address();
    let jetstream = async_nats::jetstream::new(nats.client().await?);
    // A stream whose subjects do not cover the changefeed's.
    jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: "OTHER".to_owned(),
            subjects: vec!["other.>".to_owned()],
            ..Default::default()
        })
        .await?;
    let (owner, _) = cluster.wait_owner(SETTLE).await?;
    let from = store_revision(&cluster.client).await?;
    let cases = [
        // A stream that does not exist, and no create-stream.
        (
            "missing",
            "/missing/",
            nats.sink_uri("missing", "MISSING", "&flush-interval=200ms"),
            "does not exist",
        ),
        // A stream that exists but does not cover the subject.
        (
            "uncovered",
            "/uncovered/",
            nats.sink_uri("uncovered", "OTHER", "&flush-interval=200ms"),
            "does not cover subject",
        ),
    ];
    for (id, prefix, sink_uri, _) in &cases {
        cluster
            .create(owner, &one_span(id, prefix, from, sink_uri))
            .await?;
    }
    cluster.client.put("/missing/a", "a", 0).await?;
    cluster.client.put("/uncovered/a", "a", 0).await?;
    for (id, _, _, needle) in &cases {
        let error = wait_error(&cluster, id, needle).await?;
        ensure!(
            error["code"] == "CDC:ErrNatsSinkFailed",
            "{id}: the code of {error}"
        );
    }

    // The causes go away: the changefeeds resume and catch up.
    jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: "MISSING".to_owned(),
            subjects: vec!["missing.>".to_owned()],
            ..Default::default()
        })
        .await?;
    jetstream
        .update_stream(async_nats::jetstream::stream::Config {
            name: "OTHER".to_owned(),
            subjects: vec!["other.>".to_owned(), "uncovered.>".to_owned()],
            ..Default::default()
        })
        .await?;
    for (id, _, _, _) in &cases {
        wait_caught_up(&cluster, id).await?;
    }
    let missing = stored_keys(&nats, "MISSING").await?;
    ensure!(missing == ["/missing/a"], "MISSING holds {missing:?}");
    let other = stored_keys(&nats, "OTHER").await?;
    ensure!(other == ["/uncovered/a"], "OTHER holds {other:?}");

    // The server goes away: the error names it; it comes back and the changefeed catches up.
    wait_for(SETTLE, || async {
        let detail = cluster.changefeed("missing").await?;
        detail["error"].is_null().then_some(())
    })
    .await
    .context("the missing stream's error clears once the changefeed made progress")?;
    drop(jetstream);
    nats.kill()?;
    cluster.client.put("/missing/b", "b", 0).await?;
    let error = wait_error(&cluster, "missing", &address).await?;
    ensure!(
        error["code"] == "CDC:ErrNatsSinkFailed",
        "the code of {error}"
    );
    nats.restart().await?;
    wait_caught_up(&cluster, "missing").await?;
    let missing = stored_keys(&nats, "MISSING").await?;
    ensure!(
        missing.iter().any(|key| key == "/missing/b"),
        "MISSING holds {missing:?}"
    );
    Ok(())
}
