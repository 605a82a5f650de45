//! What a run records for the oracles: the writer's log, the metadata watch, the sink samples,
//! the deaths and the faults, each a JSON Lines file of the run directory.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine as _;
use cdc_etcd::{ConnectConfig, EtcdClient, EventKind, TxnOp, TxnOpResponse, WatchOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of the span logs, shared by every process.
pub(crate) fn mono_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .ok()
        .and_then(|now| {
            let secs = u64::try_from(now.tv_sec()).ok()?;
            let nanos = u64::try_from(now.tv_nsec()).ok()?;
            Some(secs * 1_000_000_000 + nanos)
        })
        .unwrap_or(0)
}

/// A JSON Lines file shared by tasks; each line is written whole.
#[derive(Clone)]
pub(crate) struct Jsonl {
    file: Arc<Mutex<BufWriter<File>>>,
}

impl Jsonl {
    pub(crate) fn create(path: &Path) -> Result<Jsonl> {
        let file = File::create(path).with_context(|| format!("create {}", path.display()))?;
        Ok(Jsonl {
            file: Arc::new(Mutex::new(BufWriter::new(file))),
        })
    }

    pub(crate) fn write(&self, value: &Value) -> Result<()> {
        let mut line = value.to_string();
        line.push('\n');
        let mut file = self
            .file
            .lock()
            .map_err(|_| anyhow::anyhow!("a writer of the log panicked"))?;
        file.write_all(line.as_bytes())?;
        Ok(())
    }

    /// Writes a line and flushes it: for the rare lines that must be on disk at once.
    pub(crate) fn write_now(&self, value: &Value) -> Result<()> {
        self.write(value)?;
        self.flush()
    }

    pub(crate) fn flush(&self) -> Result<()> {
        let mut file = self
            .file
            .lock()
            .map_err(|_| anyhow::anyhow!("a writer of the log panicked"))?;
        file.flush()?;
        Ok(())
    }
}

/// The writer's key prefixes; the keys of each carry a distinct stem, so that the etcd mirror
/// (which replaces a span's prefix by its own) keeps them apart.
pub(crate) const PREFIXES: [&str; 2] = ["/chaos/a/", "/chaos/b/"];
/// Keys per prefix.
pub(crate) const KEYS: usize = 60;
/// Writer tasks, each with its own client and its own share of the keys (so each key's changes
/// come from one sequential writer).
pub(crate) const WRITERS: usize = 6;

pub(crate) fn key(prefix: usize, i: usize) -> String {
    let stem = if prefix == 0 { 'a' } else { 'b' };
    format!("{}{stem}{i:03}", PREFIXES[prefix])
}

/// Where the writer stands: the highest acknowledged revision.
#[derive(Clone, Default)]
pub(crate) struct WriterProgress {
    last: Arc<std::sync::atomic::AtomicU64>,
    acked: Arc<std::sync::atomic::AtomicU64>,
}

impl WriterProgress {
    pub(crate) fn last_revision(&self) -> u64 {
        self.last.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(crate) fn acked(&self) -> u64 {
        self.acked.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn record(&self, revision: u64) {
        self.last
            .fetch_max(revision, std::sync::atomic::Ordering::SeqCst);
        self.acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// One writer task: puts and deletes on its keys until `stop`, each acknowledged op logged with
/// its revision, each op of unknown outcome logged as ambiguous.
pub(crate) async fn writer(
    id: usize,
    endpoints: Vec<String>,
    seed: u64,
    log: Jsonl,
    progress: WriterProgress,
    stop: CancellationToken,
) -> Result<()> {
    let config = ConnectConfig {
        request_timeout: Duration::from_secs(3),
        connect_timeout: Duration::from_secs(3),
        ..ConnectConfig::default()
    };
    let client = EtcdClient::connect(&endpoints, config).await?;
    let mut rng = StdRng::seed_from_u64(seed ^ (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mine: Vec<(usize, usize)> = (0..PREFIXES.len())
        .flat_map(|p| (0..KEYS).map(move |i| (p, i)))
        .filter(|(p, i)| (p * KEYS + i) % WRITERS == id)
        .collect();
    let mut n: u64 = 0;
    while !stop.is_cancelled() {
        let (p, i) = mine[rng.random_range(0..mine.len())];
        let key = key(p, i);
        n += 1;
        if rng.random_ratio(1, 5) {
            let txn = cdc_etcd::Txn {
                compares: Vec::new(),
                success: vec![TxnOp::Delete {
                    key: key.clone().into_bytes(),
                    prefix: false,
                }],
                failure: Vec::new(),
            };
            match client.txn(txn).await {
                Ok(response) => {
                    let deleted = matches!(
                        response.responses.first(),
                        Some(TxnOpResponse::Delete { deleted }) if *deleted > 0
                    );
                    // A delete of an absent key makes no revision and no change.
                    if deleted {
                        let revision = u64::try_from(response.revision).unwrap_or(0);
                        log.write(&json!({"op": "delete", "key": key, "revision": revision}))?;
                        progress.record(revision);
                    }
                }
                Err(_) => log.write(&json!({"op": "delete", "key": key, "ambiguous": true}))?,
            }
        } else {
            let value = format!("w{id}-n{n}");
            match client.put(key.clone(), value.clone(), 0).await {
                Ok(revision) => {
                    let revision = u64::try_from(revision).unwrap_or(0);
                    log.write(
                        &json!({"op": "put", "key": key, "value": value, "revision": revision}),
                    )?;
                    progress.record(revision);
                }
                Err(_) => log.write(&json!({"op": "put", "key": key, "ambiguous": true}))?,
            }
        }
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(Duration::from_millis(rng.random_range(10..40))) => {}
        }
    }
    Ok(())
}

/// The latest checkpoint per changefeed seen by the metadata recorder.
pub(crate) type Checkpoints = Arc<Mutex<BTreeMap<String, u64>>>;

/// Watches the cluster's metadata prefix directly on the etcd members for the whole run and logs
/// every event; re-opens from the next revision after an error. Feeds `checkpoints`.
pub(crate) async fn metadata_recorder(
    endpoints: Vec<String>,
    from: i64,
    log: Jsonl,
    checkpoints: Checkpoints,
    cancel: CancellationToken,
) -> Result<()> {
    let prefix = format!("/tidb/cdc/{}/", crate::cluster::CLUSTER_ID);
    let status_prefix = format!("{prefix}default/changefeed/status/");
    let mut next = from;
    while !cancel.is_cancelled() {
        let opened = async {
            let client = EtcdClient::connect(&endpoints, ConnectConfig::default()).await?;
            let watch = client
                .watch(
                    prefix.clone(),
                    WatchOptions {
                        prefix: true,
                        start_revision: next,
                        progress_notify: true,
                        ..WatchOptions::default()
                    },
                )
                .await?;
            Ok::<_, cdc_etcd::Error>((client, watch))
        };
        let opened = tokio::select! {
            () = cancel.cancelled() => break,
            opened = tokio::time::timeout(Duration::from_secs(10), opened) => opened,
        };
        let Ok(Ok((_client, mut watch))) = opened else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        loop {
            let response = tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                // A member that is stopped or cut off answers nothing: re-open elsewhere.
                response = tokio::time::timeout(Duration::from_secs(15), watch.next()) => response,
            };
            let Ok(Ok(Some(response))) = response else {
                break;
            };
            if response.canceled {
                break;
            }
            let now = mono_ns();
            for event in response.events {
                let kv = &event.kv;
                let (value_field, value) = match std::str::from_utf8(&kv.value) {
                    Ok(text) => ("value", text.to_owned()),
                    Err(_) => (
                        "value_base64",
                        base64::engine::general_purpose::STANDARD.encode(&kv.value),
                    ),
                };
                let key = String::from_utf8_lossy(&kv.key).into_owned();
                let kind = match event.kind {
                    EventKind::Put => "put",
                    EventKind::Delete => "delete",
                };
                if kind == "put"
                    && let Some(id) = key.strip_prefix(&status_prefix)
                    && let Ok(status) = serde_json::from_str::<Value>(&value)
                    && let Some(checkpoint) = status["checkpoint-ts"].as_u64()
                    && let Ok(mut map) = checkpoints.lock()
                {
                    map.insert(id.to_owned(), checkpoint);
                }
                let mut line = json!({
                    "type": kind,
                    "key": key,
                    "mod_revision": kv.mod_revision,
                    "create_revision": kv.create_revision,
                    "mono_ns": now,
                });
                line[value_field] = Value::from(value.clone());
                log.write(&line)?;
                next = next.max(kv.mod_revision + 1);
            }
        }
    }
    Ok(())
}

/// Every file under `dir` (recursively) with its size, keyed by the path relative to `root`.
fn file_sizes(root: &Path, dir: &Path, out: &mut BTreeMap<String, u64>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            file_sizes(root, &path, out);
        } else if let Ok(relative) = path.strip_prefix(root) {
            out.insert(relative.display().to_string(), meta.len());
        }
    }
}

/// Samples the file sink after each checkpoint advance of `changefeed` (at most every 500 ms):
/// the sizes read after seeing the checkpoint, so the check built on them is lenient, never
/// wrong.
pub(crate) async fn sink_sampler(
    changefeed: String,
    root: PathBuf,
    log: Jsonl,
    checkpoints: Checkpoints,
    cancel: CancellationToken,
) -> Result<()> {
    let mut last = 0;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let seen = checkpoints
            .lock()
            .ok()
            .and_then(|map| map.get(&changefeed).copied());
        let Some(checkpoint) = seen.filter(|checkpoint| *checkpoint > last) else {
            continue;
        };
        last = checkpoint;
        let mut files = BTreeMap::new();
        file_sizes(&root, &root, &mut files);
        log.write(&json!({
            "changefeed": changefeed,
            "checkpoint": checkpoint,
            "mono_ns": mono_ns(),
            "files": files,
        }))?;
    }
}
