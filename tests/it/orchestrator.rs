//! The etcd worker against a real etcd: TiCDC's `etcd_worker_test.go` cases, the delete-counter
//! protocol with an external writer and its repair (also of a counter at `i64::MAX`), the
//! owner fence, the compaction resync, progress notifications at a commit's revision, the
//! worker's metrics, a prompt stop while etcd does not answer, and the backoff of failing
//! commits.
#![allow(
    clippy::unwrap_used,
    clippy::large_futures,
    reason = "test helpers panic on failure; test futures are awaited once"
)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cdc_etcd::testing::EtcdServer;
use cdc_etcd::watch::{EtcdWatchSource, WatchConfig, WatchSource, WatchStream};
use cdc_etcd::{
    Compare, CompareOp, EtcdClient, Event, EventKind, GetOptions, KeyValue, RawWatch, Revision,
    Txn, TxnOp, WatchOptions, WatchResponse,
};
use cdc_orchestrator::{
    DataPatch, Error, EtcdWorker, NextTick, OwnerFence, PatchGroup, PatchOutcome, Reactor,
    ReactorState, Result, SingleDataPatch, TXN_MAX_OPS, TickPoke, WorkerMetrics,
};
use rand::Rng;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::support::{etcd, wait_for};

const INTERVAL: Duration = Duration::from_millis(10);

/// What the test reactors answer: tick again at the next interval, as a reactor that polls.
const POLL: NextTick = NextTick::After(Duration::ZERO);

/// A state that mirrors every key of the prefix.
#[derive(Default)]
struct KvState {
    values: BTreeMap<Vec<u8>, Vec<u8>>,
    patches: Vec<PatchGroup>,
    n_updates: usize,
}

impl ReactorState for KvState {
    fn update(&mut self, key: &[u8], value: Option<&[u8]>, _is_init: bool) -> Result<()> {
        self.n_updates += 1;
        match value {
            Some(value) => self.values.insert(key.to_vec(), value.to_vec()),
            None => self.values.remove(key),
        };
        Ok(())
    }

    fn update_pending_change(&mut self, _now: std::time::Instant) {}

    fn get_patches(&mut self) -> Vec<PatchGroup> {
        std::mem::take(&mut self.patches)
    }
}

impl KvState {
    fn get(&self, key: &str) -> Option<&[u8]> {
        self.values.get(key.as_bytes()).map(Vec::as_slice)
    }

    fn queue(&mut self, group: Vec<SingleDataPatch>) {
        self.patches.push(
            group
                .into_iter()
                .map(|patch| Box::new(patch) as Box<dyn DataPatch>)
                .collect(),
        );
    }
}

/// A reactor whose tick is a closure receiving the tick number.
struct FnReactor<F> {
    n_ticks: usize,
    tick: F,
}

impl<F> FnReactor<F> {
    fn new(tick: F) -> Self {
        FnReactor { n_ticks: 0, tick }
    }
}

impl<F> Reactor<KvState> for FnReactor<F>
where
    F: FnMut(&mut KvState, usize) -> Result<()> + Send,
{
    async fn tick(&mut self, state: &mut KvState) -> Result<NextTick> {
        let n = self.n_ticks;
        self.n_ticks += 1;
        (self.tick)(state, n).map(|()| POLL)
    }
}

fn append(key: &str, suffix: &'static str) -> SingleDataPatch {
    SingleDataPatch::new(key.as_bytes().to_vec(), move |old| {
        let mut value = old.map(<[u8]>::to_vec).unwrap_or_default();
        value.extend_from_slice(suffix.as_bytes());
        Ok(PatchOutcome::Set(Some(value)))
    })
}

fn set(key: &str, value: Option<&'static str>) -> SingleDataPatch {
    SingleDataPatch::new(key.as_bytes().to_vec(), move |_| {
        Ok(PatchOutcome::Set(value.map(|v| v.as_bytes().to_vec())))
    })
}

/// Adds one to a decimal value (absent: 0).
fn increment(key: String) -> SingleDataPatch {
    SingleDataPatch::new(key.into_bytes(), |old| {
        let old: i64 = std::str::from_utf8(old.unwrap_or(b"0"))
            .map_err(|_| Error::EtcdTryAgain)?
            .parse()
            .map_err(|_| Error::EtcdTryAgain)?;
        Ok(PatchOutcome::Set(Some((old + 1).to_string().into_bytes())))
    })
}

/// A reactor that awaits `first` at the start of its first tick, then ticks like
/// [`FnReactor`].
struct FirstReactor<Fut, F> {
    first: Option<Fut>,
    inner: FnReactor<F>,
}

impl<Fut, F> FirstReactor<Fut, F> {
    fn new(first: Fut, tick: F) -> Self {
        FirstReactor {
            first: Some(first),
            inner: FnReactor::new(tick),
        }
    }
}

impl<Fut, F> Reactor<KvState> for FirstReactor<Fut, F>
where
    Fut: Future<Output = ()> + Send,
    F: FnMut(&mut KvState, usize) -> Result<()> + Send,
{
    async fn tick(&mut self, state: &mut KvState) -> Result<NextTick> {
        if let Some(first) = self.first.take() {
            first.await;
        }
        self.inner.tick(state).await
    }
}

async fn value_of(client: &EtcdClient, key: &str) -> Option<Vec<u8>> {
    let response = client.get(key, GetOptions::default()).await.unwrap();
    response.kvs.into_iter().next().map(|kv| kv.value)
}

async fn run_worker<F>(client: &EtcdClient, prefix: &str, tick: F) -> Result<KvState>
where
    F: FnMut(&mut KvState, usize) -> Result<()> + Send,
{
    run_worker_with(EtcdWorker::new(client.clone(), prefix), tick).await
}

async fn run_worker_with<F>(worker: EtcdWorker, tick: F) -> Result<KvState>
where
    F: FnMut(&mut KvState, usize) -> Result<()> + Send,
{
    let cancel = CancellationToken::new();
    let mut reactor = FnReactor::new(tick);
    tokio::time::timeout(
        Duration::from_secs(30),
        worker.run(&mut reactor, KvState::default(), INTERVAL, &cancel),
    )
    .await
    .expect("the worker finishes within 30 s")
}

// Case 28 (Finished); the worker's metrics count its ticks and commits.
#[tokio::test]
async fn finished_commits_final_patches() {
    let (_server, client) = etcd().await;
    let metrics = Arc::new(WorkerMetrics::new());
    let worker = EtcdWorker::new(client.clone(), "/finished").with_metrics(metrics.clone());
    run_worker_with(worker, |state, n| match n {
        0 | 1 => {
            state.queue(vec![
                append("/finished/key1", "abc"),
                append("/finished/key2", "123"),
            ]);
            Ok(())
        }
        _ => {
            state.queue(vec![
                append("/finished/key1", "fin"),
                set("/finished/key2", None),
            ]);
            Err(Error::ReactorFinished)
        }
    })
    .await
    .unwrap();
    assert_eq!(
        value_of(&client, "/finished/key1").await.unwrap(),
        b"abcabcfin"
    );
    assert_eq!(value_of(&client, "/finished/key2").await, None);
    let snapshot = metrics.snapshot();
    assert_eq!(snapshot.ticks, 3);
    assert_eq!(snapshot.commits, 3);
    assert_eq!(snapshot.commit_conflicts, 0);
    assert_eq!(snapshot.resyncs, 0);
    assert_eq!(snapshot.commit_latency.count, 3);
    assert_eq!(snapshot.commit_latency.buckets[11], 3);
    assert!(snapshot.commit_latency.sum > Duration::ZERO);
}

// Case 29 (Cover).
#[tokio::test]
async fn patches_on_one_key_cover_each_other() {
    let (_server, client) = etcd().await;
    run_worker(&client, "/cover", |state, n| match n {
        0 | 1 => {
            state.queue(vec![
                append("/cover/key1", "abc"),
                append("/cover/key1", "cba"),
                append("/cover/key2", "abc"),
            ]);
            Ok(())
        }
        _ => {
            state.queue(vec![
                append("/cover/key1", "fin"),
                append("/cover/key1", "fin"),
                set("/cover/key2", None),
                append("/cover/key2", "fin"),
            ]);
            Err(Error::ReactorFinished)
        }
    })
    .await
    .unwrap();
    assert_eq!(
        value_of(&client, "/cover/key1").await.unwrap(),
        b"abccbaabccbafinfin"
    );
    assert_eq!(value_of(&client, "/cover/key2").await.unwrap(), b"fin");
}

// Case 30 (EmptyTxn); a write next to the prefix (`/empty-other`) never reaches the state.
#[tokio::test]
async fn empty_transactions_finish() {
    let (_server, client) = etcd().await;
    client.put("/empty/key2", "123", 0).await.unwrap();
    // Written after the worker's snapshot: next to the prefix, then inside it. Once the
    // worker sees the marker, its watch has delivered everything up to the other write.
    let writes = async {
        client.put("/empty-other/key", "x", 0).await.unwrap();
        client.put("/empty/marker", "m", 0).await.unwrap();
    };
    let mut reactor = FirstReactor::new(writes, |state: &mut KvState, n| {
        if n == 0 {
            state.queue(vec![
                set("/empty/key1", None),
                set("/empty/key2", Some("123")),
            ]);
            return Ok(());
        }
        if state.get("/empty/marker").is_none() {
            return Ok(());
        }
        state.queue(vec![set("/empty/key1", None)]);
        Err(Error::ReactorFinished)
    });
    let cancel = CancellationToken::new();
    let state = tokio::time::timeout(
        Duration::from_secs(30),
        EtcdWorker::new(client.clone(), "/empty").run(
            &mut reactor,
            KvState::default(),
            INTERVAL,
            &cancel,
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(state.get("/empty/marker"), Some(b"m".as_slice()));
    assert_eq!(state.get("/empty-other/key"), None);
    assert_eq!(value_of(&client, "/empty/key1").await, None);
    assert_eq!(value_of(&client, "/empty/key2").await.unwrap(), b"123");
}

// A group of the most keys one transaction may touch, with a delete among them, commits in
// one transaction on etcd's default --max-txn-ops (128): with the delete-counter compare and
// put (and, when fenced, the owner compare), the compares and the puts each reach 128 at most.
#[tokio::test]
async fn largest_group_fits_default_txn_ops() {
    let (_server, client) = etcd().await;
    // This etcd enforces the default: one operation more is refused.
    let too_many = Txn {
        compares: Vec::new(),
        success: (0..=TXN_MAX_OPS)
            .map(|i| TxnOp::Put {
                key: format!("/limit/{i}").into_bytes(),
                value: b"v".to_vec(),
                lease: 0,
            })
            .collect(),
        failure: Vec::new(),
    };
    assert!(client.txn(too_many).await.is_err());

    for (prefix, fenced) in [("/max", false), ("/maxf", true)] {
        let n_keys = TXN_MAX_OPS - 1 - usize::from(fenced);
        let deleted = format!("{prefix}/k0");
        client.put(deleted.as_str(), "x", 0).await.unwrap();
        let mut worker = EtcdWorker::new(client.clone(), prefix);
        if fenced {
            let key = format!("{prefix}/__cdc_meta__/owner/1");
            let create_revision = client.put(key.as_str(), "capture-1", 0).await.unwrap();
            worker = worker.with_owner_fence(OwnerFence {
                key: key.into_bytes(),
                create_revision,
            });
        }
        let metrics = worker.metrics().clone();
        let counter_key = worker.delete_counter_key();
        run_worker_with(worker, |state, _| {
            let mut group = vec![set(&format!("{prefix}/k0"), None)];
            group.extend((1..n_keys).map(|i| set(&format!("{prefix}/k{i}"), Some("v"))));
            state.queue(group);
            Err(Error::ReactorFinished)
        })
        .await
        .unwrap();
        assert_eq!(metrics.commits(), 1, "{prefix}: one transaction");
        assert_eq!(value_of(&client, &deleted).await, None);
        let written = client
            .get(format!("{prefix}/k"), GetOptions::prefix())
            .await
            .unwrap();
        assert_eq!(written.kvs.len(), n_keys - 1);
        assert!(written.kvs.iter().all(|kv| kv.value == b"v"));
        assert_eq!(value_of(&client, &counter_key).await.unwrap(), b"1");
    }
}

// Case 31 (EmptyOrNil): an empty value is a value, not a delete.
#[tokio::test]
async fn empty_value_is_not_a_delete() {
    let (_server, client) = etcd().await;
    let state = run_worker(&client, "/eon", |state, n| {
        let (key1, key2) = if n % 2 == 0 {
            (Some(""), None)
        } else {
            (None, Some(""))
        };
        state.queue(vec![set("/eon/key1", key1), set("/eon/key2", key2)]);
        if n == 2 {
            Err(Error::ReactorFinished)
        } else {
            Ok(())
        }
    })
    .await
    .unwrap();
    assert_eq!(value_of(&client, "/eon/key1").await.unwrap(), b"");
    assert_eq!(value_of(&client, "/eon/key2").await, None);
    assert!(state.n_updates > 0);
}

// Case 27 (Linearizability).
#[tokio::test]
async fn linearizability() {
    let (_server, client) = etcd().await;
    for i in 0..1000 {
        client.put("/lin/key", i.to_string(), 0).await.unwrap();
    }
    let writer = client.clone();
    let writes = tokio::spawn(async move {
        for i in 999..2000 {
            writer.put("/lin/key", i.to_string(), 0).await.unwrap();
        }
    });
    let mut last = -1i64;
    let mut last_updates = 0;
    let mut n_updated_ticks = 0;
    run_worker(&client, "/lin", move |state, _| {
        let value: i64 = std::str::from_utf8(state.get("/lin/key").unwrap_or(b"-1"))
            .unwrap()
            .parse()
            .unwrap();
        assert!(value >= last, "the value went back from {last} to {value}");
        if state.n_updates > last_updates {
            assert!(value >= n_updated_ticks, "{value} < {n_updated_ticks}");
            n_updated_ticks += 1;
            last_updates = state.n_updates;
        }
        last = value;
        if value == 1999 {
            Err(Error::ReactorFinished)
        } else {
            Ok(())
        }
    })
    .await
    .unwrap();
    writes.await.unwrap();
}

// Case 26 (EtcdSum): concurrent incrementers never let the summing reactor see a torn state.
#[tokio::test]
async fn sum_stays_consistent() {
    const N_GROUPS: usize = 10;
    const N_INTS: usize = 5;
    const N_TICKS: usize = 150;
    let (_server, client) = etcd().await;
    for group in 0..N_GROUPS {
        for i in 0..N_INTS {
            client
                .put(format!("/sum/{group}/{i}"), "0", 0)
                .await
                .unwrap();
        }
        client
            .put(format!("/sum/{group}/sum"), "0", 0)
            .await
            .unwrap();
    }
    fn read(state: &KvState, key: &str) -> i64 {
        std::str::from_utf8(state.get(key).unwrap())
            .unwrap()
            .parse()
            .unwrap()
    }
    let mut workers = tokio::task::JoinSet::new();
    for id in 0..6 {
        let client = client.clone();
        workers.spawn(async move {
            run_worker(&client, "/sum", move |state, n| {
                if n >= N_TICKS {
                    return Err(Error::ReactorFinished);
                }
                if id == 0 {
                    for group in 0..N_GROUPS {
                        let total: i64 = (0..N_INTS)
                            .map(|i| read(state, &format!("/sum/{group}/{i}")))
                            .sum();
                        assert_eq!(total, read(state, &format!("/sum/{group}/sum")));
                    }
                } else {
                    let group = rand::rng().random_range(0..N_GROUPS);
                    let i = rand::rng().random_range(0..N_INTS);
                    state.queue(vec![
                        increment(format!("/sum/{group}/{i}")),
                        increment(format!("/sum/{group}/sum")),
                    ]);
                }
                Ok(())
            })
            .await
        });
    }
    while let Some(result) = workers.join_next().await {
        result.unwrap().unwrap();
    }
}

/// Watches through etcd and asks etcd for a progress notification right after every response
/// with events, so that real progress notifications (at the revision of the commit just
/// delivered, or of one not delivered yet) are interleaved with the commits.
#[derive(Clone)]
struct ProgressSource {
    inner: EtcdWatchSource,
    n_progress: Arc<AtomicUsize>,
}

struct ProgressStream {
    inner: RawWatch,
    request_pending: bool,
    n_progress: Arc<AtomicUsize>,
}

impl WatchSource for ProgressSource {
    type Stream = ProgressStream;

    async fn open(&mut self, start_revision: Revision) -> cdc_etcd::Result<ProgressStream> {
        Ok(ProgressStream {
            inner: self.inner.open(start_revision).await?,
            request_pending: false,
            n_progress: self.n_progress.clone(),
        })
    }
}

impl WatchStream for ProgressStream {
    async fn next(&mut self) -> cdc_etcd::Result<Option<WatchResponse>> {
        // Cancel-safe: the flag is cleared only once the request went out.
        if self.request_pending {
            self.inner.request_progress().await?;
            self.request_pending = false;
        }
        let response = self.inner.next().await?;
        if let Some(response) = &response {
            if response.is_progress_notify() {
                self.n_progress.fetch_add(1, Ordering::Relaxed);
            } else if !response.events.is_empty() {
                self.request_pending = true;
            }
        }
        Ok(response)
    }

    async fn request_progress(&mut self) -> cdc_etcd::Result<()> {
        self.inner.request_progress().await
    }
}

// Case 34 (EtcdBank): random transfers, random worker restarts, progress notifications
// interleaved with the commits (requested after every delivered commit, denser than the
// case's single request after 10 % of the commits); every tick sees sum == 0.
#[tokio::test]
async fn bank() {
    const N_ACCOUNTS: usize = 25;
    let (_server, client) = etcd().await;
    for account in 0..N_ACCOUNTS {
        client
            .put(format!("/bank/{account}"), "0", 0)
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let n_commits = Arc::new(AtomicUsize::new(0));
    fn add(key: String, delta: i64, n_commits: Arc<AtomicUsize>) -> SingleDataPatch {
        SingleDataPatch::new(key.into_bytes(), move |old| {
            let old: i64 = std::str::from_utf8(old.unwrap_or(b"0"))
                .map_err(|_| Error::EtcdTryAgain)?
                .parse()
                .map_err(|_| Error::EtcdTryAgain)?;
            n_commits.fetch_add(1, Ordering::Relaxed);
            Ok(PatchOutcome::Set(Some(
                (old + delta).to_string().into_bytes(),
            )))
        })
    }
    let n_progress = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let client = client.clone();
        let n_commits = n_commits.clone();
        let source = ProgressSource {
            inner: EtcdWatchSource::new(client.clone(), b"/bank/".to_vec(), true),
            n_progress: n_progress.clone(),
        };
        workers.spawn(async move {
            let mut n_runs = 0;
            while Instant::now() < deadline {
                n_runs += 1;
                let n_commits = n_commits.clone();
                let worker =
                    EtcdWorker::new(client.clone(), "/bank").with_watch_source(source.clone());
                run_worker_with(worker, move |state, _| {
                    let total: i64 = (0..N_ACCOUNTS)
                        .map(|a| {
                            let value = state.get(&format!("/bank/{a}")).unwrap();
                            std::str::from_utf8(value).unwrap().parse::<i64>().unwrap()
                        })
                        .sum();
                    assert_eq!(total, 0);
                    let mut rng = rand::rng();
                    let from = rng.random_range(0..N_ACCOUNTS);
                    let to = rng.random_range(0..N_ACCOUNTS);
                    let amount = rng.random_range(1..100);
                    state.queue(vec![
                        add(format!("/bank/{from}"), -amount, n_commits.clone()),
                        add(format!("/bank/{to}"), amount, n_commits.clone()),
                    ]);
                    if Instant::now() >= deadline || rng.random_bool(0.2) {
                        Err(Error::ReactorFinished)
                    } else {
                        Ok(())
                    }
                })
                .await?;
            }
            Ok::<_, Error>(n_runs)
        });
    }
    let mut n_runs = 0;
    while let Some(result) = workers.join_next().await {
        n_runs += result.unwrap().unwrap();
    }
    assert!(n_runs > 10, "workers were restarted");
    assert!(n_commits.load(Ordering::Relaxed) > 0);
    assert!(
        n_progress.load(Ordering::Relaxed) > 0,
        "progress notifications reached the workers"
    );
    let response = client.get("/bank/", GetOptions::prefix()).await.unwrap();
    let total: i64 = response
        .kvs
        .iter()
        .map(|kv| {
            std::str::from_utf8(&kv.value)
                .unwrap()
                .parse::<i64>()
                .unwrap()
        })
        .sum();
    assert_eq!(total, 0);
}

/// A reactor that waits for `go` in its first tick, then queues `patch` and finishes.
struct GatedReactor {
    entered: Arc<Notify>,
    go: Arc<Notify>,
    patch: Option<SingleDataPatch>,
}

impl Reactor<KvState> for GatedReactor {
    async fn tick(&mut self, state: &mut KvState) -> Result<NextTick> {
        if let Some(patch) = self.patch.take() {
            self.entered.notify_one();
            self.go.notified().await;
            state.queue(vec![patch]);
            return Ok(POLL);
        }
        Err(Error::ReactorFinished)
    }
}

/// TiCDC's delete: compare the counter, delete the key, bump the counter.
async fn external_delete(client: &EtcdClient, counter_key: &str, key: &str) {
    let counter = value_of(client, counter_key).await;
    let compare = match &counter {
        Some(value) => Compare::Value {
            key: counter_key.as_bytes().to_vec(),
            op: CompareOp::Equal,
            value: value.clone(),
        },
        None => Compare::CreateRevision {
            key: counter_key.as_bytes().to_vec(),
            op: CompareOp::Equal,
            revision: 0,
        },
    };
    let next = counter
        .map(|value| std::str::from_utf8(&value).unwrap().parse::<i64>().unwrap())
        .unwrap_or(0)
        + 1;
    let txn = Txn {
        compares: vec![compare],
        success: vec![
            TxnOp::Delete {
                key: key.as_bytes().to_vec(),
                prefix: false,
            },
            TxnOp::Put {
                key: counter_key.as_bytes().to_vec(),
                value: next.to_string().into_bytes(),
                lease: 0,
            },
        ],
        failure: vec![],
    };
    assert!(client.txn(txn).await.unwrap().succeeded);
}

// Case 32 (ModifyAfterDelete).
#[tokio::test]
async fn modify_after_delete() {
    let (_server, client) = etcd().await;
    client.put("/mad/key1", "value", 0).await.unwrap();
    let worker = EtcdWorker::new(client.clone(), "/mad");
    let counter_key = worker.delete_counter_key();
    let entered = Arc::new(Notify::new());
    let go = Arc::new(Notify::new());
    let mut reactor = GatedReactor {
        entered: entered.clone(),
        go: go.clone(),
        patch: Some(SingleDataPatch::new(b"/mad/key1".to_vec(), |old| {
            Ok(match old {
                Some(_) => PatchOutcome::Set(Some(b"modified".to_vec())),
                None => PatchOutcome::Unchanged,
            })
        })),
    };
    let cancel = CancellationToken::new();
    let run = worker.run(&mut reactor, KvState::default(), INTERVAL, &cancel);
    let deleter = async {
        entered.notified().await;
        // Worker 2 deletes the key with the counter protocol.
        let mut reactor2 = FnReactor::new(|state: &mut KvState, _| {
            state.queue(vec![set("/mad/key1", None)]);
            Err(Error::ReactorFinished)
        });
        EtcdWorker::new(client.clone(), "/mad")
            .run(&mut reactor2, KvState::default(), INTERVAL, &cancel)
            .await
            .unwrap();
        go.notify_one();
    };
    let (result, ()) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(run, deleter)
    })
    .await
    .unwrap();
    result.unwrap();
    assert_eq!(value_of(&client, "/mad/key1").await, None);
    assert_eq!(value_of(&client, &counter_key).await.unwrap(), b"1");
}

// An external writer deletes a key of the shared prefix with TiCDC's counter protocol while
// our transaction on another key is in flight: the counter refuses our transaction, the patch
// is re-evaluated and committed once.
#[tokio::test]
async fn external_delete_forces_retry() {
    let (_server, client) = etcd().await;
    client.put("/ext/a", "a", 0).await.unwrap();
    client.put("/ext/b", "", 0).await.unwrap();
    let worker = EtcdWorker::new(client.clone(), "/ext");
    let metrics = worker.metrics().clone();
    let counter_key = worker.delete_counter_key();
    let n_evaluations = Arc::new(AtomicUsize::new(0));
    let entered = Arc::new(Notify::new());
    let go = Arc::new(Notify::new());
    let evaluations = n_evaluations.clone();
    let mut reactor = GatedReactor {
        entered: entered.clone(),
        go: go.clone(),
        patch: Some(SingleDataPatch::new(b"/ext/b".to_vec(), move |old| {
            evaluations.fetch_add(1, Ordering::SeqCst);
            let mut value = old.map(<[u8]>::to_vec).unwrap_or_default();
            value.push(b'w');
            Ok(PatchOutcome::Set(Some(value)))
        })),
    };
    let cancel = CancellationToken::new();
    let run = worker.run(&mut reactor, KvState::default(), INTERVAL, &cancel);
    let writer = async {
        entered.notified().await;
        external_delete(&client, &counter_key, "/ext/a").await;
        go.notify_one();
    };
    let (result, ()) = join_within(Duration::from_secs(30), run, writer).await;
    result.unwrap();
    assert!(
        n_evaluations.load(Ordering::SeqCst) >= 2,
        "the counter forced a retry"
    );
    assert_eq!(value_of(&client, "/ext/b").await.unwrap(), b"w");
    assert_eq!(value_of(&client, "/ext/a").await, None);
    assert_eq!(metrics.commits(), 1);
    assert!(metrics.commit_conflicts() >= 1);
    assert_eq!(
        metrics.snapshot().commit_latency.count,
        metrics.commits() + metrics.commit_conflicts()
    );
}

/// Queues, on tick `n`, an increment of `/rep/n` and a write (even `n`) or delete (odd `n`)
/// of `/rep/tmp<id>`; finishes after `N_REPAIR_TICKS` ticks.
fn repair_tick(state: &mut KvState, n: usize, id: usize) -> Result<()> {
    let tmp = format!("/rep/tmp{id}");
    let value = if n.is_multiple_of(2) { Some("x") } else { None };
    state.queue(vec![increment("/rep/n".to_owned()), set(&tmp, value)]);
    if n + 1 == N_REPAIR_TICKS {
        Err(Error::ReactorFinished)
    } else {
        Ok(())
    }
}

const N_REPAIR_TICKS: usize = 20;

fn counter_of(value: &[u8]) -> i64 {
    std::str::from_utf8(value).unwrap().parse().unwrap()
}

// A delete counter holding something other than a positive number is repaired, not fatal:
// found in the snapshot, or written while two workers increment one key and delete others,
// neither of which loses an update.
#[tokio::test]
async fn invalid_delete_counter_is_repaired() {
    let (_server, client) = etcd().await;
    let counter_key = EtcdWorker::new(client.clone(), "/rep").delete_counter_key();

    // In the snapshot: the first commit, a delete, goes through.
    client.put("/rep/tmp9", "x", 0).await.unwrap();
    let garbage = client.put(counter_key.as_str(), "-3", 0).await.unwrap();
    run_worker(&client, "/rep", |state, _| {
        state.queue(vec![set("/rep/tmp9", None)]);
        Err(Error::ReactorFinished)
    })
    .await
    .unwrap();
    assert_eq!(value_of(&client, "/rep/tmp9").await, None);
    let counter = counter_of(&value_of(&client, &counter_key).await.unwrap());
    assert!(counter > garbage, "{counter} <= {garbage}");

    // Written while the workers run, by worker 0 in its sixth tick.
    let mut reactor0 = RepairReactor {
        id: 0,
        n_ticks: 0,
        garbage: Some((client.clone(), counter_key.clone())),
        garbage_revision: None,
    };
    let mut reactor1 = RepairReactor {
        id: 1,
        n_ticks: 0,
        garbage: None,
        garbage_revision: None,
    };
    let cancel = CancellationToken::new();
    let run0 = EtcdWorker::new(client.clone(), "/rep").run(
        &mut reactor0,
        KvState::default(),
        INTERVAL,
        &cancel,
    );
    let run1 = EtcdWorker::new(client.clone(), "/rep").run(
        &mut reactor1,
        KvState::default(),
        INTERVAL,
        &cancel,
    );
    let (result0, result1) = join_within(Duration::from_secs(30), run0, run1).await;
    result0.unwrap();
    result1.unwrap();
    let garbage = reactor0.garbage_revision.unwrap();
    let n = counter_of(&value_of(&client, "/rep/n").await.unwrap());
    assert_eq!(n, 2 * i64::try_from(N_REPAIR_TICKS).unwrap());
    assert_eq!(value_of(&client, "/rep/tmp0").await, None);
    assert_eq!(value_of(&client, "/rep/tmp1").await, None);
    // Only the repair writes a counter over the garbage; deletes then count on from it.
    let counter = counter_of(&value_of(&client, &counter_key).await.unwrap());
    assert!(counter >= garbage, "{counter} < {garbage}");
}

/// Ticks like [`repair_tick`]; with `garbage`, its sixth tick first writes a non-number to the
/// delete counter.
struct RepairReactor {
    id: usize,
    n_ticks: usize,
    garbage: Option<(EtcdClient, String)>,
    garbage_revision: Option<Revision>,
}

impl Reactor<KvState> for RepairReactor {
    async fn tick(&mut self, state: &mut KvState) -> Result<NextTick> {
        let n = self.n_ticks;
        self.n_ticks += 1;
        if n == 5
            && let Some((client, counter_key)) = &self.garbage
        {
            let revision = client
                .put(counter_key.as_str(), "garbage", 0)
                .await
                .unwrap();
            self.garbage_revision = Some(revision);
        }
        repair_tick(state, n, self.id).map(|()| POLL)
    }
}

// A former owner whose key was deleted and whose successor was elected: its transactions are
// refused by the fence and the worker ends with NotOwner, even before it sees the deletion.
#[tokio::test]
async fn stale_fence_is_refused() {
    let (_server, client) = etcd().await;
    let owner_key = "/fence/__cdc_meta__/owner/22";
    let revision = client.put(owner_key, "capture-1", 0).await.unwrap();
    let fence = OwnerFence {
        key: owner_key.as_bytes().to_vec(),
        create_revision: revision,
    };

    // The key is deleted and re-created by the successor's campaign while the old owner ticks.
    let entered = Arc::new(Notify::new());
    let go = Arc::new(Notify::new());
    let mut reactor = GatedReactor {
        entered: entered.clone(),
        go: go.clone(),
        patch: Some(set("/fence/data", Some("stale"))),
    };
    let cancel = CancellationToken::new();
    let run = EtcdWorker::new(client.clone(), "/fence")
        .with_owner_fence(fence.clone())
        .run(&mut reactor, KvState::default(), INTERVAL, &cancel);
    let successor = async {
        entered.notified().await;
        client.delete(owner_key, false).await.unwrap();
        client
            .put("/fence/__cdc_meta__/owner/33", "capture-2", 0)
            .await
            .unwrap();
        client.put(owner_key, "capture-2", 0).await.unwrap();
        go.notify_one();
    };
    let (result, ()) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(run, successor)
    })
    .await
    .unwrap();
    assert!(matches!(result, Err(Error::NotOwner)), "{:?}", result.err());
    assert_eq!(value_of(&client, "/fence/data").await, None);

    // A worker started with the stale fence never commits either.
    let result = run_fenced(&client, fence).await;
    assert!(matches!(result, Err(Error::NotOwner)), "{:?}", result.err());
    assert_eq!(value_of(&client, "/fence/data").await, None);
}

async fn run_fenced(client: &EtcdClient, fence: OwnerFence) -> Result<KvState> {
    let cancel = CancellationToken::new();
    let mut reactor = FnReactor::new(|state: &mut KvState, _| {
        state.queue(vec![set("/fence/data", Some("stale"))]);
        Ok(())
    });
    tokio::time::timeout(
        Duration::from_secs(30),
        EtcdWorker::new(client.clone(), "/fence")
            .with_owner_fence(fence)
            .run(&mut reactor, KvState::default(), INTERVAL, &cancel),
    )
    .await
    .unwrap()
}

// The deletion of the owner's own key ends the worker with NotOwner.
#[tokio::test]
async fn owner_key_deleted_ends_worker() {
    let (_server, client) = etcd().await;
    let owner_key = "/own/__cdc_meta__/owner/7";
    let revision = client.put(owner_key, "capture-1", 0).await.unwrap();
    let cancel = CancellationToken::new();
    let delete = async {
        client.delete(owner_key, false).await.unwrap();
    };
    let mut reactor = FirstReactor::new(delete, |_state: &mut KvState, _| Ok(()));
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        EtcdWorker::new(client.clone(), "/own")
            .with_owner_fence(OwnerFence {
                key: owner_key.as_bytes().to_vec(),
                create_revision: revision,
            })
            .run(&mut reactor, KvState::default(), INTERVAL, &cancel),
    )
    .await
    .unwrap();
    assert!(matches!(result, Err(Error::NotOwner)), "{:?}", result.err());
}

// Session done ends the worker; cancellation ends it with Cancelled.
#[tokio::test]
async fn session_done_and_cancel() {
    let (_server, client) = etcd().await;
    let session_done = CancellationToken::new();
    let cancel = CancellationToken::new();
    let done = session_done.clone();
    let mut reactor = FnReactor::new(move |_state: &mut KvState, _| {
        done.cancel();
        Ok(())
    });
    let result = EtcdWorker::new(client.clone(), "/sd")
        .with_session_done(session_done)
        .run(&mut reactor, KvState::default(), INTERVAL, &cancel)
        .await;
    assert!(
        matches!(result, Err(Error::SessionDone)),
        "{:?}",
        result.err()
    );

    let cancel2 = cancel.clone();
    let mut reactor = FnReactor::new(move |_state: &mut KvState, _| {
        cancel2.cancel();
        Ok(())
    });
    let result = EtcdWorker::new(client.clone(), "/sd")
        .run(&mut reactor, KvState::default(), INTERVAL, &cancel)
        .await;
    assert!(
        matches!(result, Err(Error::Cancelled)),
        "{:?}",
        result.err()
    );
}

// A compacted watch resyncs the worker: it sees the writes made while it was cut off. The
// watch is cut before the writes and re-opened only after the compaction, so etcd itself
// reports the compaction.
#[tokio::test]
async fn compaction_resyncs() {
    let (_server, client) = etcd().await;
    client.put("/cmp/gone", "1", 0).await.unwrap();
    client.put("/cmp/key", "0", 0).await.unwrap();
    let entered = Arc::new(Notify::new());
    let go = Arc::new(Notify::new());
    let mut reactor = ResyncReactor {
        entered: entered.clone(),
        go: go.clone(),
        n_ticks: 0,
    };
    let (phase_tx, phase) = tokio::sync::watch::channel(CutPhase::Serving);
    let source = CutSource {
        inner: EtcdWatchSource::new(client.clone(), b"/cmp/".to_vec(), true),
        phase,
    };
    let cancel = CancellationToken::new();
    let worker = EtcdWorker::new(client.clone(), "/cmp").with_watch_source(source);
    let metrics = worker.metrics().clone();
    let run = worker.run(&mut reactor, KvState::default(), INTERVAL, &cancel);
    let disturb = async {
        entered.notified().await;
        phase_tx.send_replace(CutPhase::Cut);
        client.delete("/cmp/gone", false).await.unwrap();
        client.put("/cmp/key", "1", 0).await.unwrap();
        let revision = client.put("/cmp/key", "2", 0).await.unwrap();
        client.compact(revision).await.unwrap();
        phase_tx.send_replace(CutPhase::Reopen);
        go.notify_one();
    };
    let (result, ()) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(run, disturb)
    })
    .await
    .unwrap();
    let state = result.unwrap();
    assert_eq!(state.get("/cmp/key"), Some(b"2".as_slice()));
    assert_eq!(state.get("/cmp/gone"), None);
    assert_eq!(metrics.resyncs(), 1);
}

/// Where a [`CutSource`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CutPhase {
    /// Streams deliver etcd's responses.
    Serving,
    /// The streams opened while serving have ended; no stream opens.
    Cut,
    /// Streams open again and deliver etcd's responses.
    Reopen,
}

/// Watches through etcd; once cut, its streams end and none opens until it is reopened.
#[derive(Clone)]
struct CutSource {
    inner: EtcdWatchSource,
    phase: tokio::sync::watch::Receiver<CutPhase>,
}

struct CutStream {
    inner: RawWatch,
    phase: tokio::sync::watch::Receiver<CutPhase>,
    /// The phase the stream was opened in; it ends when the phase moves on.
    opened_in: CutPhase,
}

impl WatchSource for CutSource {
    type Stream = CutStream;

    async fn open(&mut self, start_revision: Revision) -> cdc_etcd::Result<CutStream> {
        let opened_in = *self
            .phase
            .wait_for(|phase| *phase != CutPhase::Cut)
            .await
            .map_err(|_| cdc_etcd::Error::Cancelled)?;
        Ok(CutStream {
            inner: self.inner.open(start_revision).await?,
            phase: self.phase.clone(),
            opened_in,
        })
    }
}

impl WatchStream for CutStream {
    async fn next(&mut self) -> cdc_etcd::Result<Option<WatchResponse>> {
        let opened_in = self.opened_in;
        // Biased: once the phase moved on, nothing more is delivered, not even a response
        // that arrived meanwhile.
        tokio::select! {
            biased;
            moved = self.phase.wait_for(|phase| *phase != opened_in) => {
                moved.map_err(|_| cdc_etcd::Error::Cancelled)?;
                Ok(None)
            }
            response = self.inner.next() => response,
        }
    }

    async fn request_progress(&mut self) -> cdc_etcd::Result<()> {
        self.inner.request_progress().await
    }
}

/// Blocks in its first tick, then finishes once it sees `/cmp/key == 2`.
struct ResyncReactor {
    entered: Arc<Notify>,
    go: Arc<Notify>,
    n_ticks: usize,
}

impl Reactor<KvState> for ResyncReactor {
    async fn tick(&mut self, state: &mut KvState) -> Result<NextTick> {
        self.n_ticks += 1;
        if self.n_ticks == 1 {
            self.entered.notify_one();
            self.go.notified().await;
            return Ok(POLL);
        }
        if state.get("/cmp/key") == Some(b"2".as_slice()) {
            return Err(Error::ReactorFinished);
        }
        Ok(POLL)
    }
}

/// A watch source whose streams deliver the responses a test scripts; every stream opened
/// shares the one script, and the start revision of every open is recorded.
#[derive(Clone)]
struct ScriptedSource {
    responses: Arc<tokio::sync::Mutex<mpsc::Receiver<WatchResponse>>>,
    opened_at: Arc<std::sync::Mutex<Vec<Revision>>>,
}

impl ScriptedSource {
    fn new() -> (ScriptedSource, mpsc::Sender<WatchResponse>) {
        let (script, responses) = mpsc::channel(8);
        let source = ScriptedSource {
            responses: Arc::new(tokio::sync::Mutex::new(responses)),
            opened_at: Arc::default(),
        };
        (source, script)
    }
}

struct ScriptedStream {
    responses: Arc<tokio::sync::Mutex<mpsc::Receiver<WatchResponse>>>,
}

impl WatchSource for ScriptedSource {
    type Stream = ScriptedStream;

    async fn open(&mut self, start_revision: Revision) -> cdc_etcd::Result<ScriptedStream> {
        self.opened_at.lock().unwrap().push(start_revision);
        Ok(ScriptedStream {
            responses: self.responses.clone(),
        })
    }
}

impl WatchStream for ScriptedStream {
    async fn next(&mut self) -> cdc_etcd::Result<Option<WatchResponse>> {
        Ok(self.responses.lock().await.recv().await)
    }

    /// The script supplies the progress notifications.
    async fn request_progress(&mut self) -> cdc_etcd::Result<()> {
        Ok(())
    }
}

fn watch_response(revision: Revision, events: Vec<Event>) -> WatchResponse {
    WatchResponse {
        revision,
        watch_id: if events.is_empty() { -1 } else { 0 },
        created: false,
        canceled: false,
        compact_revision: 0,
        cancel_reason: String::new(),
        events,
    }
}

fn put_event(key: &str, value: &str, revision: Revision) -> Event {
    Event {
        kind: EventKind::Put,
        kv: KeyValue {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            create_revision: revision,
            mod_revision: revision,
            version: 1,
            lease: 0,
        },
        prev_kv: None,
    }
}

// A progress notification at the revision of the worker's own commit, arriving before the
// commit's event, neither moves the worker past that event nor lets it tick without it; a
// stale response is dropped; the watch starts at the snapshot revision + 1.
#[tokio::test]
async fn progress_at_commit_revision_keeps_the_event() {
    let (_server, client) = etcd().await;
    let snapshot_revision = client.put("/pn/a", "0", 0).await.unwrap();
    let mut commits = client
        .watch(
            "/pn/a",
            WatchOptions {
                prefix: false,
                start_revision: snapshot_revision + 1,
                progress_notify: false,
                prev_kv: false,
            },
        )
        .await
        .unwrap();
    let (source, script) = ScriptedSource::new();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let cancel = CancellationToken::new();
    let mut reactor = FnReactor::new({
        let seen = seen.clone();
        move |state: &mut KvState, n| {
            if n == 0 {
                state.queue(vec![set("/pn/a", Some("1"))]);
                return Ok(());
            }
            seen.lock()
                .unwrap()
                .push(state.get("/pn/a").map(<[u8]>::to_vec));
            Err(Error::ReactorFinished)
        }
    });
    let run = EtcdWorker::new(client.clone(), "/pn")
        .with_watch_source(source.clone())
        .run(&mut reactor, KvState::default(), INTERVAL, &cancel);
    let feed = async {
        // The worker's commit, as etcd delivers it.
        let commit = loop {
            let response = commits.next().await.unwrap().unwrap();
            if !response.events.is_empty() {
                break response;
            }
        };
        let revision = commit.events[0].kv.mod_revision;
        assert_eq!(commit.events[0].kv.value, b"1");
        script
            .send(watch_response(revision, Vec::new()))
            .await
            .unwrap();
        let stale = put_event("/pn/stale", "stale", snapshot_revision);
        script
            .send(watch_response(snapshot_revision, vec![stale]))
            .await
            .unwrap();
        script.send(commit).await.unwrap();
    };
    let (result, ()) = join_within(Duration::from_secs(30), run, feed).await;
    let state = result.unwrap();
    assert_eq!(*seen.lock().unwrap(), [Some(b"1".to_vec())]);
    assert_eq!(state.get("/pn/a"), Some(b"1".as_slice()));
    assert_eq!(state.get("/pn/stale"), None);
    assert_eq!(
        source.opened_at.lock().unwrap().first(),
        Some(&(snapshot_revision + 1))
    );
}

// A catch-up batch that etcd splits carries the store's current revision in the header of
// every part: the later parts are applied, not dropped as stale.
#[tokio::test]
async fn split_catch_up_batch_is_applied() {
    let (_server, client) = etcd().await;
    client.put("/sp/a", "0", 0).await.unwrap();
    let (source, script) = ScriptedSource::new();
    let synced = Arc::new(Notify::new());
    let cancel = CancellationToken::new();
    let mut reactor = FnReactor::new({
        let synced = synced.clone();
        move |state: &mut KvState, n| {
            if n == 0 {
                assert_eq!(state.get("/sp/b"), None);
                synced.notify_one();
            }
            if state.get("/sp/b").is_some() {
                return Err(Error::ReactorFinished);
            }
            Ok(())
        }
    });
    let run = EtcdWorker::new(client.clone(), "/sp")
        .with_watch_source(source.clone())
        .run(&mut reactor, KvState::default(), INTERVAL, &cancel);
    let feed = async {
        // Written after the worker's snapshot, delivered in two parts.
        synced.notified().await;
        let first = client.put("/sp/a", "1", 0).await.unwrap();
        let current = client.put("/sp/b", "1", 0).await.unwrap();
        let parts = [
            put_event("/sp/a", "1", first),
            put_event("/sp/b", "1", current),
        ];
        for part in parts {
            script
                .send(watch_response(current, vec![part]))
                .await
                .unwrap();
        }
    };
    let (result, ()) = join_within(Duration::from_secs(30), run, feed).await;
    let state = result.unwrap();
    assert_eq!(state.get("/sp/a"), Some(b"1".as_slice()));
    assert_eq!(state.get("/sp/b"), Some(b"1".as_slice()));
}

/// Runs `a` and `b` together, failing if they take longer than `limit`.
async fn join_within<A, B>(
    limit: Duration,
    a: impl Future<Output = A>,
    b: impl Future<Output = B>,
) -> (A, B) {
    tokio::time::timeout(limit, async { tokio::join!(a, b) })
        .await
        .unwrap()
}

/// How soon a stopped worker must return, whatever it was waiting on.
const PROMPT: Duration = Duration::from_secs(1);

/// A reactor whose first tick waits for `go`, queues a write, then announces `ticked`; every
/// later tick does nothing.
struct CommitReactor {
    entered: Arc<Notify>,
    go: Arc<Notify>,
    ticked: Arc<Notify>,
    patch: Option<SingleDataPatch>,
}

impl CommitReactor {
    fn new(patch: SingleDataPatch) -> Self {
        CommitReactor {
            entered: Arc::new(Notify::new()),
            go: Arc::new(Notify::new()),
            ticked: Arc::new(Notify::new()),
            patch: Some(patch),
        }
    }
}

impl Reactor<KvState> for CommitReactor {
    async fn tick(&mut self, state: &mut KvState) -> Result<NextTick> {
        if let Some(patch) = self.patch.take() {
            self.entered.notify_one();
            self.go.notified().await;
            state.queue(vec![patch]);
            self.ticked.notify_one();
        }
        Ok(POLL)
    }
}

/// Runs `reactor` in a worker on `prefix` (stopped by `cancel` or `session_done`) alongside
/// `driver`, which stops it and returns when it did. Returns the worker's result and how long
/// it took to return after the stop.
async fn run_until_stopped<R: Reactor<KvState>>(
    client: &EtcdClient,
    prefix: &str,
    reactor: &mut R,
    cancel: &CancellationToken,
    session_done: &CancellationToken,
    driver: impl Future<Output = Instant>,
) -> (Result<KvState>, Duration) {
    let run = async {
        let result = EtcdWorker::new(client.clone(), prefix)
            .with_session_done(session_done.clone())
            .run(reactor, KvState::default(), INTERVAL, cancel)
            .await;
        (result, Instant::now())
    };
    let ((result, returned), stopped) = join_within(Duration::from_secs(30), run, driver).await;
    (result, returned.saturating_duration_since(stopped))
}

/// Asserts that a worker whose session ended returned `SessionDone` within [`PROMPT`].
fn assert_prompt_session_done(result: &Result<KvState>, took: Duration) {
    assert!(
        matches!(result, Err(Error::SessionDone)),
        "{:?}",
        result.as_ref().err()
    );
    assert!(
        took < PROMPT,
        "worker returned {took:?} after its session ended"
    );
}

/// Runs a worker whose first commit meets a frozen etcd, then fires `stop` (the worker's
/// cancel token, or its session-done token with `session`). Returns the worker's result and
/// how long it took to return after `stop` fired.
async fn stop_during_commit(
    server: &mut EtcdServer,
    client: &EtcdClient,
    prefix: &str,
    session: bool,
) -> (Result<KvState>, Duration) {
    let cancel = CancellationToken::new();
    let session_done = CancellationToken::new();
    let stop = if session {
        session_done.clone()
    } else {
        cancel.clone()
    };
    let mut reactor = CommitReactor::new(set(&format!("{prefix}/k"), Some("v")));
    let (entered, go, ticked) = (
        reactor.entered.clone(),
        reactor.go.clone(),
        reactor.ticked.clone(),
    );
    let driver = async {
        entered.notified().await;
        server.pause().unwrap();
        go.notify_one();
        // One task: the worker is polled on until it waits, inside the transaction.
        ticked.notified().await;
        stop.cancel();
        Instant::now()
    };
    let stopped =
        run_until_stopped(client, prefix, &mut reactor, &cancel, &session_done, driver).await;
    server.resume().unwrap();
    stopped
}

// A worker waiting on a transaction that etcd does not answer still returns at once when it
// is cancelled or its session ends.
#[tokio::test]
async fn stop_during_commit_is_prompt() {
    let (mut server, client) = etcd().await;
    let (result, took) = stop_during_commit(&mut server, &client, "/sc1", false).await;
    assert!(
        matches!(result, Err(Error::Cancelled)),
        "{:?}",
        result.err()
    );
    assert!(took < PROMPT, "cancelled worker returned after {took:?}");
    let (result, took) = stop_during_commit(&mut server, &client, "/sc2", true).await;
    assert_prompt_session_done(&result, took);
}

// A tick that never returns does not keep a stopped worker alive.
#[tokio::test]
async fn stop_during_tick_is_prompt() {
    let (_server, client) = etcd().await;
    let session_done = CancellationToken::new();
    let cancel = CancellationToken::new();
    let entered = Arc::new(Notify::new());
    let entered2 = entered.clone();
    let mut reactor = FirstReactor::new(
        async move {
            entered2.notify_one();
            std::future::pending::<()>().await;
        },
        |_state: &mut KvState, _| Ok(()),
    );
    let driver = async {
        entered.notified().await;
        session_done.cancel();
        Instant::now()
    };
    let (result, took) =
        run_until_stopped(&client, "/st", &mut reactor, &cancel, &session_done, driver).await;
    assert_prompt_session_done(&result, took);
}

/// Notifies `entered`, then waits for `go`.
async fn gate(entered: Arc<Notify>, go: Arc<Notify>) {
    entered.notify_one();
    go.notified().await;
}

// Transactions that fail because etcd is down are counted and retried after a pause that
// grows with each failure; once etcd is back, the final patches of a finished reactor are
// committed.
#[tokio::test]
async fn failing_commits_back_off() {
    let (mut server, client) = etcd().await;
    let metrics = Arc::new(WorkerMetrics::new());
    let entered = Arc::new(Notify::new());
    let go = Arc::new(Notify::new());
    let mut reactor = FirstReactor::new(
        gate(entered.clone(), go.clone()),
        |state: &mut KvState, _| {
            state.queue(vec![set("/bo/k", Some("v"))]);
            Err(Error::ReactorFinished)
        },
    );
    let cancel = CancellationToken::new();
    let run = EtcdWorker::new(client.clone(), "/bo")
        .with_metrics(metrics.clone())
        .run(&mut reactor, KvState::default(), INTERVAL, &cancel);
    let driver = async {
        entered.notified().await;
        server.kill().unwrap();
        go.notify_one();
        let metrics = &metrics;
        let n_errors = |n: u64| {
            wait_for(Duration::from_secs(20), move || async move {
                (metrics.commit_errors() >= n).then(Instant::now)
            })
        };
        let first = n_errors(1).await.unwrap();
        let fourth = n_errors(4).await.unwrap();
        server.restart().await.unwrap();
        fourth - first
    };
    let (result, spread) = join_within(Duration::from_secs(60), run, driver).await;
    result.unwrap();
    assert_eq!(value_of(&client, "/bo/k").await, Some(b"v".to_vec()));
    assert_eq!(metrics.commits(), 1);
    assert!(metrics.commit_errors() >= 4);
    // At least half of 50 + 100 + 200 ms between the first failure and the fourth (less
    // one polling period of `wait_for`).
    assert!(spread >= Duration::from_millis(150), "{spread:?}");
}

// A worker still reading its first snapshot from an etcd that does not answer returns at once
// when its session ends.
#[tokio::test]
async fn session_done_during_snapshot_read_is_prompt() {
    let (mut server, client) = etcd().await;
    server.pause().unwrap();
    let session_done = CancellationToken::new();
    let cancel = CancellationToken::new();
    let mut reactor = FnReactor::new(|_state: &mut KvState, _| Ok(()));
    let worker = EtcdWorker::new(client.clone(), "/ss").with_session_done(session_done.clone());
    let metrics = worker.metrics().clone();
    let run = async {
        let result = worker
            .run(&mut reactor, KvState::default(), INTERVAL, &cancel)
            .await;
        (result, Instant::now())
    };
    let driver = async {
        // The session ends only once the read is in flight, past the worker's first look at
        // its tokens: the read itself must be raced against the session.
        let metrics = &metrics;
        wait_for(Duration::from_secs(20), move || async move {
            (metrics.snapshot_reads() >= 1).then_some(())
        })
        .await
        .unwrap();
        session_done.cancel();
        Instant::now()
    };
    let ((result, returned), stopped) = join_within(Duration::from_secs(30), run, driver).await;
    server.resume().unwrap();
    assert_prompt_session_done(&result, returned.saturating_duration_since(stopped));
    assert_eq!(reactor.n_ticks, 0);
}

// A delete counter at i64::MAX cannot be incremented: it is repaired like garbage, to the
// revision of that write, and the delete counts on from there.
#[tokio::test]
async fn delete_counter_at_i64_max_is_repaired() {
    let (_server, client) = etcd().await;
    let counter_key = EtcdWorker::new(client.clone(), "/max").delete_counter_key();
    client.put("/max/tmp", "x", 0).await.unwrap();
    let bad = client
        .put(counter_key.as_str(), i64::MAX.to_string(), 0)
        .await
        .unwrap();
    run_worker(&client, "/max", |state, _| {
        state.queue(vec![set("/max/tmp", None)]);
        Err(Error::ReactorFinished)
    })
    .await
    .unwrap();
    assert_eq!(value_of(&client, "/max/tmp").await, None);
    let counter = counter_of(&value_of(&client, &counter_key).await.unwrap());
    assert_eq!(counter, bad + 1);
}

// A watch that etcd cancels for good (permission denied) ends the worker with the typed cause
// instead of re-opening it for ever while the reactor ticks on a frozen snapshot.
#[tokio::test]
async fn permanent_watch_refusal_ends_the_worker() {
    let (_server, client) = etcd().await;
    let (source, script) = ScriptedSource::new();
    let mut refused = watch_response(0, Vec::new());
    refused.watch_id = 0;
    refused.created = true;
    refused.canceled = true;
    refused.cancel_reason = "etcdserver: permission denied".to_owned();
    script.send(refused).await.unwrap();
    let worker = EtcdWorker::new(client.clone(), "/pd").with_watch_source(source);
    match run_worker_with(worker, |_state, _| Ok(())).await {
        Err(Error::Etcd(cdc_etcd::Error::WatchRefused { source, .. })) => assert!(
            matches!(
                *source,
                cdc_etcd::Error::WatchCancelled {
                    code: cdc_etcd::RpcCode::PermissionDenied,
                    ..
                }
            ),
            "{source:?}"
        ),
        other => panic!("expected a refused watch, got {:?}", other.err()),
    }
}

// A watch that hears nothing (not even progress) after the worker's first commit: the stall
// shows in the worker's metric, and past the watch's stall limit the worker ends with it
// instead of waiting for its read-your-writes barrier for ever.
#[tokio::test]
async fn stalled_watch_is_visible_and_ends_the_worker() {
    let (_server, client) = etcd().await;
    let (source, _script) = ScriptedSource::new();
    let stall_limit = Duration::from_secs(8);
    let worker = EtcdWorker::new(client.clone(), "/stall")
        .with_watch_source(source)
        .with_watch_config(WatchConfig {
            stall_limit,
            ..WatchConfig::default()
        });
    let metrics = worker.metrics().clone();
    let cancel = CancellationToken::new();
    let mut reactor = FnReactor::new(|state: &mut KvState, n| {
        if n == 0 {
            state.queue(vec![set("/stall/k", Some("v"))]);
        }
        Ok(())
    });
    let run = worker.run(&mut reactor, KvState::default(), INTERVAL, &cancel);
    let stalled = async {
        let metrics = &metrics;
        wait_for(Duration::from_secs(30), move || async move {
            let stalled = metrics.watch_stalled();
            (stalled > Duration::ZERO).then_some(stalled)
        })
        .await
        .unwrap()
    };
    let (result, stalled) = join_within(Duration::from_secs(60), run, stalled).await;
    assert!(stalled < stall_limit, "{stalled:?}");
    match result {
        Err(Error::Etcd(cdc_etcd::Error::WatchStalled { silence, .. })) => {
            assert!(silence >= stall_limit, "{silence:?}");
        }
        other => panic!("expected a stalled watch, got {:?}", other.err()),
    }
    assert_eq!(value_of(&client, "/stall/k").await, Some(b"v".to_vec()));
    assert_eq!(reactor.n_ticks, 1, "no tick before the commit is seen");
}

// A fence whose owner key was deleted and re-created (same key, another create revision) does
// not hold in the first snapshot: the worker ends at once, without ticking.
#[tokio::test]
async fn stale_fence_in_snapshot_is_not_owner() {
    let (_server, client) = etcd().await;
    let owner_key = "/sf/__cdc_meta__/owner/5";
    let stale = client.put(owner_key, "capture-1", 0).await.unwrap();
    client.delete(owner_key, false).await.unwrap();
    client.put(owner_key, "capture-1", 0).await.unwrap();
    let worker = EtcdWorker::new(client.clone(), "/sf").with_owner_fence(OwnerFence {
        key: owner_key.as_bytes().to_vec(),
        create_revision: stale,
    });
    let result = run_worker_with(worker, |_state, n| {
        assert_eq!(n, usize::MAX, "a stale owner never ticks");
        Ok(())
    })
    .await;
    assert!(matches!(result, Err(Error::NotOwner)), "{:?}", result.err());
}

// The repair of an invalid delete counter carries the owner fence: an owner whose key was
// re-created by a successor (and who has not seen it yet) writes nothing and ends as not owner.
#[tokio::test]
async fn counter_repair_is_fenced() {
    let (_server, client) = etcd().await;
    let counter_key = EtcdWorker::new(client.clone(), "/rf").delete_counter_key();
    let owner_key = "/rf/__cdc_meta__/owner/7";
    let created = client.put(owner_key, "capture-1", 0).await.unwrap();
    // The watch tells the worker only what the test scripts: not the owner key's new life.
    let (source, script) = ScriptedSource::new();
    let entered = Arc::new(Notify::new());
    let go = Arc::new(Notify::new());
    let mut reactor = FirstReactor::new(
        gate(entered.clone(), go.clone()),
        |_state: &mut KvState, _| Ok(()),
    );
    let cancel = CancellationToken::new();
    let run = EtcdWorker::new(client.clone(), "/rf")
        .with_watch_source(source)
        .with_owner_fence(OwnerFence {
            key: owner_key.as_bytes().to_vec(),
            create_revision: created,
        })
        .run(&mut reactor, KvState::default(), INTERVAL, &cancel);
    let driver = async {
        entered.notified().await;
        client.delete(owner_key, false).await.unwrap();
        client.put(owner_key, "capture-2", 0).await.unwrap();
        let garbage = client
            .put(counter_key.as_str(), "garbage", 0)
            .await
            .unwrap();
        script
            .send(watch_response(
                garbage,
                vec![put_event(&counter_key, "garbage", garbage)],
            ))
            .await
            .unwrap();
        go.notify_one();
    };
    let (result, ()) = join_within(Duration::from_secs(30), run, driver).await;
    assert!(matches!(result, Err(Error::NotOwner)), "{:?}", result.err());
    assert_eq!(
        value_of(&client, &counter_key).await,
        Some(b"garbage".to_vec()),
        "a stale owner repaired the counter"
    );
}

/// The ticks of a [`RecordingReactor`]: when, and what it saw of `/wk/a`.
type TickLog = std::sync::Mutex<Vec<(Instant, Option<Vec<u8>>)>>;

/// A reactor that records when it ticks and what it saw of `/wk/a`, answers what `next` holds
/// and keeps the poke its worker hands it.
struct RecordingReactor {
    ticks: Arc<TickLog>,
    next: Arc<std::sync::Mutex<NextTick>>,
    poke: Arc<std::sync::Mutex<Option<TickPoke>>>,
}

impl Reactor<KvState> for RecordingReactor {
    fn set_tick_poke(&mut self, poke: TickPoke) {
        *self.poke.lock().unwrap() = Some(poke);
    }

    async fn tick(&mut self, state: &mut KvState) -> Result<NextTick> {
        let next = *self.next.lock().unwrap();
        let seen = state.get("/wk/a").map(<[u8]>::to_vec);
        self.ticks.lock().unwrap().push((Instant::now(), seen));
        Ok(next)
    }
}

impl RecordingReactor {
    fn new() -> RecordingReactor {
        RecordingReactor {
            ticks: Arc::default(),
            next: Arc::new(std::sync::Mutex::new(NextTick::Idle)),
            poke: Arc::default(),
        }
    }
}

/// Waits until `ticks` holds `n` ticks; returns the last one.
async fn wait_ticks(ticks: &TickLog, n: usize) -> (Instant, Option<Vec<u8>>) {
    wait_for(Duration::from_secs(20), || async {
        let ticks = ticks.lock().unwrap();
        (ticks.len() >= n).then(|| ticks[n - 1].clone())
    })
    .await
    .unwrap_or_else(|err| panic!("tick {n}: {err}"))
}

// An idle reactor on an unchanged prefix is ticked by the heartbeat only, not at every
// interval.
#[tokio::test]
async fn idle_reactor_ticks_only_on_the_heartbeat() {
    let (_server, client) = etcd().await;
    let heartbeat = Duration::from_millis(500);
    let worker = EtcdWorker::new(client.clone(), "/idle").with_heartbeat(heartbeat);
    let metrics = worker.metrics().clone();
    let cancel = CancellationToken::new();
    let mut reactor = RecordingReactor::new();
    let ticks = reactor.ticks.clone();
    let run = worker.run(&mut reactor, KvState::default(), INTERVAL, &cancel);
    let window = Duration::from_secs(3);
    let measure = async {
        wait_ticks(&ticks, 1).await;
        let before = metrics.ticks();
        // A measurement window, not a synchronisation: nothing happens during it.
        tokio::time::sleep(window).await;
        let n_ticks = metrics.ticks() - before;
        cancel.cancel();
        n_ticks
    };
    let (result, n_ticks) = join_within(Duration::from_secs(30), run, measure).await;
    assert!(matches!(result, Err(Error::Cancelled)));
    // At most one tick per heartbeat, plus one for the edges of the window.
    let bound = u64::try_from(window.as_millis() / heartbeat.as_millis()).unwrap() + 1;
    assert!(
        n_ticks <= bound,
        "{n_ticks} ticks in {window:?}, bound {bound}"
    );
}

// With a heartbeat too long to matter, a change of the prefix, a poke, and a deadline the
// reactor asked for each cause a tick, and the deadline is not run early.
#[tokio::test]
async fn change_poke_and_deadline_each_cause_a_tick() {
    let (_server, client) = etcd().await;
    let worker = EtcdWorker::new(client.clone(), "/wk").with_heartbeat(Duration::from_secs(3600));
    let cancel = CancellationToken::new();
    let mut reactor = RecordingReactor::new();
    let (ticks, next, poke) = (
        reactor.ticks.clone(),
        reactor.next.clone(),
        reactor.poke.clone(),
    );
    let run = worker.run(&mut reactor, KvState::default(), INTERVAL, &cancel);
    let driver = async {
        let (_, seen) = wait_ticks(&ticks, 1).await;
        assert_eq!(seen, None);
        // A change of the snapshot.
        client.put("/wk/a", "1", 0).await.unwrap();
        let (_, seen) = wait_ticks(&ticks, 2).await;
        assert_eq!(seen, Some(b"1".to_vec()));
        // A poke through the handle the reactor got.
        let poke = poke
            .lock()
            .unwrap()
            .clone()
            .expect("the worker hands over its poke");
        poke.poke();
        wait_ticks(&ticks, 3).await;
        // A deadline: the poked tick asks for another one 300 ms later.
        let delay = Duration::from_millis(300);
        *next.lock().unwrap() = NextTick::After(delay);
        poke.poke();
        let (asked_at, _) = wait_ticks(&ticks, 4).await;
        *next.lock().unwrap() = NextTick::Idle;
        let (ran_at, _) = wait_ticks(&ticks, 5).await;
        // Less a little: the reactor stamps its tick a moment after the worker's clock read.
        let early = Duration::from_millis(10);
        assert!(
            ran_at - asked_at >= delay - early,
            "{:?}",
            ran_at - asked_at
        );
        cancel.cancel();
    };
    let (result, ()) = join_within(Duration::from_secs(60), run, driver).await;
    assert!(matches!(result, Err(Error::Cancelled)));
}
