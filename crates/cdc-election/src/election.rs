//! [`Election`]: the client-side recipe of Go's `concurrency.Election`, key for key.
//!
//! A candidate puts `<prefix>/<lease hex>` with its lease if the key is absent; its place in
//! the queue is that key's create revision. The candidate with the lowest create revision leads;
//! a waiting one watches the key just ahead of it for deletion and then looks again. Go
//! programs and `etcdctl elect <prefix>` can join and observe the same election.
//!
//! Differences from Go, on purpose:
//! - after the wait, a confirming read checks that our key still exists with our create
//!   revision: a win over a dead key (lease gone while queued) is [`Error::LeaseExpired`];
//! - a cancelled campaign resigns, as Go's does, but within [`CANCEL_CLEANUP_TIMEOUT`] rather
//!   than on an unbounded context, so cancellation stays prompt with etcd hung (the lease's revoke
//!   or expiry removes a key the cleanup could not); every etcd call of a campaign, its create
//!   included, is raced against the cancellation;
//! - a watch that stays silent for [`RECHECK_INTERVAL`] or breaks is replaced by a fresh read;
//! - a transient etcd failure (restart, leader change: [`cdc_etcd::Error::is_retryable`]) while
//!   creating the key, reading the queue, watching or confirming is retried with a capped,
//!   jittered backoff until the campaign is cancelled, so a queued candidate keeps its place
//!   (Go's client retries reads and resumes watches itself). A campaign ends with
//!   [`Error::LeaseExpired`] as soon as its session ends, and a key found gone fails it too.
//!
//! As in Go (`Campaign` in `client/v3/concurrency/election.go` of etcd-io/etcd), a campaign whose
//! wait fails for a reason other than cancellation (a compaction, a watch or read that cannot
//! succeed) keeps its key: campaigning again on the same lease finds that key and keeps its
//! create revision, so the candidate keeps its place in the queue.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cdc_etcd::retry::{self, BackoffPolicy, Jitter};
use cdc_etcd::{
    Compare, CompareOp, EtcdClient, EventKind, GetOptions, KeyValue, LeaseId, OwnerFence, Revision,
    RpcCode, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, WatchOptions, WatchResponse,
};
use cdc_model::ErrorReport;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::hooks::{self, ElectionHooks};
use crate::session::{Session, SessionDone};

/// A waiting candidate re-reads the queue this often even if its watch says nothing.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(10);
/// The bound on a resign.
const RESIGN_TIMEOUT: Duration = Duration::from_secs(5);
/// The bound on the cleanup of a cancelled campaign (its resign, or the removal of a key whose
/// create was cut short). Cancellation is the teardown path: it must not wait out etcd's
/// deadlines when etcd hangs, and the lease's revoke or expiry removes a key left behind.
pub const CANCEL_CLEANUP_TIMEOUT: Duration = Duration::from_secs(2);
/// The first pause after a transient etcd failure; it doubles up to [`RETRY_BACKOFF_MAX`].
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest pause between retries of a transient etcd failure.
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct State {
    /// Our key's create revision while we hold a key (queued or leading).
    revision: Option<Revision>,
    /// The value we campaigned with.
    value: Option<String>,
    leading: bool,
}

/// One candidate of the election on a prefix, attached to a session's lease.
#[derive(Debug)]
pub struct Election {
    client: EtcdClient,
    lease_id: LeaseId,
    /// The end of the session whose lease our key is attached to.
    session_done: SessionDone,
    /// The election's key prefix with its trailing `/`.
    queue_prefix: String,
    key: Vec<u8>,
    state: Mutex<State>,
    /// Observes the campaign's steps ([`hooks::NoHooks`] but in tests).
    hooks: Arc<dyn ElectionHooks>,
}

/// What a watch response means to a waiting candidate.
#[derive(Debug, PartialEq, Eq)]
enum WatchOutcome {
    /// The key ahead of us was deleted.
    Deleted,
    /// The watch start revision was compacted.
    Compacted(Revision),
    /// The server cancelled the watch for another reason.
    Cancelled,
    /// Nothing for us (creation, progress, a put).
    Nothing,
}

fn watch_outcome(response: &WatchResponse, key: &[u8]) -> WatchOutcome {
    if response.compact_revision > 0 {
        return WatchOutcome::Compacted(response.compact_revision);
    }
    if response
        .events
        .iter()
        .any(|event| event.kind == EventKind::Delete && event.kv.key == key)
    {
        return WatchOutcome::Deleted;
    }
    if response.canceled {
        return WatchOutcome::Cancelled;
    }
    WatchOutcome::Nothing
}

/// Runs `call` unless `cancel` fires first.
async fn unless_cancelled<T>(
    cancel: &CancellationToken,
    call: impl Future<Output = cdc_etcd::Result<T>>,
) -> Result<T> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(Error::Cancelled),
        result = call => result.map_err(Error::from),
    }
}

async fn sleep_unless_cancelled(cancel: &CancellationToken, duration: Duration) -> Result<()> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(Error::Cancelled),
        _ = tokio::time::sleep(duration) => Ok(()),
    }
}

/// Whether a campaign step that failed with `err` may simply be tried again: a transient etcd
/// failure, not a lost lease, a lost key, a compaction or a cancellation.
fn is_transient(err: &Error) -> bool {
    matches!(err, Error::Etcd(err) if err.is_retryable())
}

/// The pauses between retries of a transient failure: [`cdc_etcd::retry::Backoff`] from
/// [`RETRY_BACKOFF_MIN`], doubling up to [`RETRY_BACKOFF_MAX`], each drawn from the upper half
/// of its step, with a wait that ends early when the campaign is cancelled.
#[derive(Debug)]
struct Backoff(retry::Backoff);

impl Backoff {
    fn new() -> Backoff {
        Backoff(retry::Backoff::new(BackoffPolicy {
            base: RETRY_BACKOFF_MIN,
            max: RETRY_BACKOFF_MAX,
            jitter: Jitter::Shorten,
        }))
    }

    fn reset(&mut self) {
        self.0.reset();
    }

    /// The next pause, in `[step / 2, step]`.
    fn next_delay(&mut self) -> Duration {
        self.0.next_delay()
    }

    /// Sleeps the next pause unless `cancel` fires first.
    async fn wait(&mut self, cancel: &CancellationToken) -> Result<()> {
        let delay = self.next_delay();
        sleep_unless_cancelled(cancel, delay).await
    }
}

/// How a wait on the key ahead of us ended.
#[derive(Debug, PartialEq, Eq)]
enum WaitEnd {
    /// The key was deleted, or the watch stayed silent for [`RECHECK_INTERVAL`].
    ReadAgain,
    /// The watch could not be opened or broke: read again after a backoff.
    Broken,
}

impl Election {
    /// A candidate on `prefix` (TiCDC: `/tidb/cdc/<cluster>/__cdc_meta__/owner`, no trailing
    /// slash) whose key is attached to `session`'s lease, on the session's connection.
    pub fn new(session: &Session, prefix: &str) -> Election {
        let prefix = prefix.trim_end_matches('/');
        let lease_id = session.lease_id();
        Election {
            client: session.client().clone(),
            lease_id,
            session_done: session.done(),
            queue_prefix: format!("{prefix}/"),
            key: format!("{prefix}/{lease_id:x}").into_bytes(),
            state: Mutex::new(State::default()),
            hooks: hooks::none(),
        }
    }

    /// Our election key, `<prefix>/<lease hex>`.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// Whether our last campaign won and we have not resigned since.
    pub fn is_leader(&self) -> bool {
        self.lock_state().leading
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Waits until this candidate leads with `value`, and returns the fence of its term.
    ///
    /// Transient etcd failures are retried (capped backoff) for as long as the campaign runs;
    /// it fails on a non-retryable error, a compaction ([`Error::Compacted`], retryable by
    /// campaigning again), a lost lease or key ([`Error::LeaseExpired`], [`Error::NotLeader`]).
    /// A campaign that fails after its key was created keeps the key, as Go's does: campaigning
    /// again on this election reuses it and keeps the candidate's place in the queue, and
    /// [`Election::resign`] removes it. When the session ends (lost or closed), the campaign
    /// ends with [`Error::LeaseExpired`]; the key goes with the lease.
    ///
    /// # Cancel safety
    /// Cancel through `cancel`: the campaign then resigns, within [`CANCEL_CLEANUP_TIMEOUT`]
    /// however etcd behaves, and returns [`Error::Cancelled`] (a key the cleanup could not
    /// remove goes with the lease). If the future is dropped instead, our key stays until
    /// [`Election::resign`] or the end of the lease.
    pub async fn campaign(&self, value: &str, cancel: &CancellationToken) -> Result<OwnerFence> {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let outcome = tokio::select! {
            biased;
            () = self.session_done.wait() => Err(Error::LeaseExpired {
                lease_id: self.lease_id,
            }),
            outcome = self.try_campaign(value, cancel) => outcome,
        };
        match outcome {
            Ok(fence) => {
                tracing::info!(
                    key = %String::from_utf8_lossy(&fence.key),
                    revision = fence.create_revision,
                    "campaign won"
                );
                Ok(fence)
            }
            Err(Error::Cancelled) => {
                self.clean_up_cancelled().await;
                Err(Error::Cancelled)
            }
            // Go's `Campaign` forgets its leadership but leaves the key in place when the wait
            // fails for any other reason (a compaction, a broken watch).
            Err(err) => Err(err),
        }
    }

    /// After a cancelled campaign, bounded by [`CANCEL_CLEANUP_TIMEOUT`]: resigns the key the
    /// campaign queued with, or, if it was cancelled before it knew its key (a create of unknown
    /// outcome), removes a key of our lease.
    async fn clean_up_cancelled(&self) {
        let revision = self.lock_state().revision;
        let cleanup = async {
            match revision {
                Some(_) => self.resign_within(CANCEL_CLEANUP_TIMEOUT).await,
                None => self.remove_key_of_our_lease().await,
            }
        };
        match tokio::time::timeout(CANCEL_CLEANUP_TIMEOUT, cleanup).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(
                error = %ErrorReport(&err),
                "resign after a cancelled campaign; the key goes with the lease"
            ),
            Err(_) => tracing::warn!(
                timeout = ?CANCEL_CLEANUP_TIMEOUT,
                "resign after a cancelled campaign timed out; the key goes with the lease"
            ),
        }
    }

    async fn try_campaign(&self, value: &str, cancel: &CancellationToken) -> Result<OwnerFence> {
        let revision = self.create_key(value, cancel).await?;
        {
            let mut state = self.lock_state();
            state.revision = Some(revision);
            state.value = Some(value.to_owned());
            state.leading = false;
        }
        self.wait_for_turn(revision, cancel).await?;
        self.confirm(revision, cancel).await?;
        self.lock_state().leading = true;
        Ok(OwnerFence {
            key: self.key.clone(),
            create_revision: revision,
        })
    }

    /// Creates our key if absent (or takes over our lease's existing key), returning its
    /// create revision. A transient failure is retried until `cancel` fires: the transaction
    /// is create-if-absent-else-read on our own lease's key, so a retry after an attempt of
    /// unknown outcome finds the key that attempt made and keeps its place. An attempt is raced
    /// against `cancel` (the campaign then removes a key of our lease, bounded); if the campaign
    /// gives up on a non-retryable error, a key of our lease is removed before returning it.
    async fn create_key(&self, value: &str, cancel: &CancellationToken) -> Result<Revision> {
        let mut backoff = Backoff::new();
        loop {
            let attempt = tokio::select! {
                biased;
                _ = cancel.cancelled() => Err(Error::Cancelled),
                result = self.try_create_key(value) => result,
            };
            match attempt {
                Ok(revision) => return Ok(revision),
                Err(err @ (Error::Cancelled | Error::LeaseExpired { .. } | Error::NotLeader)) => {
                    return Err(err);
                }
                Err(err) if is_transient(&err) => {
                    tracing::info!(
                        error = %ErrorReport(&err),
                        "creating the election key failed; retrying"
                    );
                    backoff.wait(cancel).await?;
                }
                Err(err) => {
                    // A failed removal is logged; the key then goes with the lease.
                    let _ = self.remove_key_of_our_lease().await;
                    return Err(err);
                }
            }
        }
    }

    /// One attempt of [`Election::create_key`].
    async fn try_create_key(&self, value: &str) -> Result<Revision> {
        let txn = Txn {
            compares: vec![Compare::CreateRevision {
                key: self.key.clone(),
                op: CompareOp::Equal,
                revision: 0,
            }],
            success: vec![TxnOp::Put {
                key: self.key.clone(),
                value: value.as_bytes().to_vec(),
                lease: self.lease_id,
            }],
            failure: vec![TxnOp::Get {
                key: self.key.clone(),
                options: GetOptions::default(),
            }],
        };
        let response = match self.client.txn(txn).await {
            Ok(response) => response,
            Err(cdc_etcd::Error::Rpc {
                code: RpcCode::NotFound,
                ..
            }) => {
                return Err(Error::LeaseExpired {
                    lease_id: self.lease_id,
                });
            }
            Err(err) => return Err(err.into()),
        };
        if response.succeeded {
            return Ok(response.revision);
        }
        // The key exists: a former campaign on this lease left it. Keep its place in the queue.
        let existing = response.responses.into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs.into_iter().next(),
            TxnOpResponse::Put | TxnOpResponse::Delete { .. } => None,
        });
        let Some(existing) = existing else {
            return Err(Error::NotLeader);
        };
        if existing.value != value.as_bytes() {
            self.proclaim(&existing, value).await?;
        }
        Ok(existing.create_revision)
    }

    /// Replaces the value of our existing key, if it is still the same incarnation.
    async fn proclaim(&self, existing: &KeyValue, value: &str) -> Result<()> {
        let txn = Txn {
            compares: vec![Compare::CreateRevision {
                key: self.key.clone(),
                op: CompareOp::Equal,
                revision: existing.create_revision,
            }],
            success: vec![TxnOp::Put {
                key: self.key.clone(),
                value: value.as_bytes().to_vec(),
                lease: self.lease_id,
            }],
            failure: vec![],
        };
        if self.client.txn(txn).await?.succeeded {
            Ok(())
        } else {
            Err(Error::NotLeader)
        }
    }

    /// After a create of unknown outcome: deletes our key if it is on our lease. A failure is
    /// logged (the key then goes with the lease) and returned.
    async fn remove_key_of_our_lease(&self) -> Result<()> {
        let removed = async {
            let get = self
                .client
                .get(self.key.clone(), GetOptions::default())
                .await?;
            match get.kvs.first() {
                Some(kv) if kv.lease == self.lease_id => {
                    self.delete_if_created_at(kv.create_revision).await
                }
                Some(_) | None => Ok(()),
            }
        }
        .await;
        if let Err(err) = &removed {
            tracing::warn!(
                error = %ErrorReport(err),
                "remove an election key of unknown outcome"
            );
        }
        removed
    }

    /// Waits until no key in the queue was created before `revision`.
    async fn wait_for_turn(&self, revision: Revision, cancel: &CancellationToken) -> Result<()> {
        let mut backoff = Backoff::new();
        loop {
            let read = unless_cancelled(
                cancel,
                self.client.get(
                    self.queue_prefix.clone(),
                    GetOptions {
                        prefix: true,
                        limit: 1,
                        sort: Some((SortTarget::Create, SortOrder::Descend)),
                        max_create_revision: revision - 1,
                        ..GetOptions::default()
                    },
                ),
            )
            .await;
            let ahead = match read {
                Ok(ahead) => ahead,
                Err(err) if is_transient(&err) => {
                    tracing::info!(error = %ErrorReport(&err), "reading the election queue failed; retrying");
                    backoff.wait(cancel).await?;
                    continue;
                }
                Err(err) => return Err(err),
            };
            let Some(ahead_kv) = ahead.kvs.first() else {
                return Ok(());
            };
            tracing::debug!(
                ahead = %ahead_kv.key_lossy(),
                "waiting for the candidate ahead"
            );
            if let Some(pause) = self.hooks.before_watch(ahead.revision) {
                pause.await;
            }
            match self
                .wait_delete(&ahead_kv.key, ahead.revision + 1, cancel)
                .await?
            {
                WaitEnd::ReadAgain => backoff.reset(),
                WaitEnd::Broken => backoff.wait(cancel).await?,
            }
            // Stop waiting as soon as our own key is gone (our lease ended while queued).
            self.confirm(revision, cancel).await?;
        }
    }

    /// Returns when `key` is deleted after `start_revision`, or when it is time to read the
    /// queue again (a silent or broken watch). Fails on a compaction, a cancellation, or a
    /// watch that cannot be opened for a reason other than a transient one.
    async fn wait_delete(
        &self,
        key: &[u8],
        start_revision: Revision,
        cancel: &CancellationToken,
    ) -> Result<WaitEnd> {
        let opened = unless_cancelled(
            cancel,
            self.client.watch(
                key.to_vec(),
                WatchOptions {
                    start_revision,
                    ..WatchOptions::default()
                },
            ),
        )
        .await;
        let mut watch = match opened {
            Ok(watch) => watch,
            Err(err) if is_transient(&err) => {
                tracing::info!(error = %ErrorReport(&err), "watching the candidate ahead failed; reading the queue again");
                return Ok(WaitEnd::Broken);
            }
            Err(err) => return Err(err),
        };
        let recheck_at = tokio::time::Instant::now() + RECHECK_INTERVAL;
        loop {
            let next = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(Error::Cancelled),
                _ = tokio::time::sleep_until(recheck_at) => return Ok(WaitEnd::ReadAgain),
                next = watch.next() => next,
            };
            match next {
                Ok(Some(response)) => match watch_outcome(&response, key) {
                    WatchOutcome::Deleted => return Ok(WaitEnd::ReadAgain),
                    WatchOutcome::Compacted(compacted) => {
                        return Err(Error::Compacted {
                            requested: start_revision,
                            compacted,
                        });
                    }
                    WatchOutcome::Cancelled => {
                        tracing::info!(reason = %response.cancel_reason, "watch cancelled; reading the queue again");
                        return Ok(WaitEnd::Broken);
                    }
                    WatchOutcome::Nothing => {}
                },
                Err(cdc_etcd::Error::Compacted { compacted, .. }) => {
                    return Err(Error::Compacted {
                        requested: start_revision,
                        compacted,
                    });
                }
                Ok(None) | Err(_) => {
                    // A broken watch is not a lost election: read the queue again, paced.
                    tracing::info!("watch on the candidate ahead ended; reading the queue again");
                    return Ok(WaitEnd::Broken);
                }
            }
        }
    }

    /// Checks that our key still exists with our create revision: the wait ends when the keys
    /// ahead are gone, whether or not ours survived. A transient failure is retried until
    /// `cancel` fires.
    async fn confirm(&self, revision: Revision, cancel: &CancellationToken) -> Result<()> {
        let mut backoff = Backoff::new();
        loop {
            match unless_cancelled(
                cancel,
                self.client.get(self.key.clone(), GetOptions::default()),
            )
            .await
            {
                Ok(get) => {
                    return match get.kvs.first() {
                        Some(kv) if kv.create_revision == revision => Ok(()),
                        _ => Err(Error::LeaseExpired {
                            lease_id: self.lease_id,
                        }),
                    };
                }
                Err(err) if is_transient(&err) => {
                    tracing::info!(error = %ErrorReport(&err), "confirming read failed; retrying");
                    backoff.wait(cancel).await?;
                }
                Err(err) => return Err(err),
            }
        }
    }

    async fn delete_if_created_at(&self, revision: Revision) -> Result<()> {
        self.delete_if_created_at_within(revision, RESIGN_TIMEOUT)
            .await
    }

    async fn delete_if_created_at_within(&self, revision: Revision, limit: Duration) -> Result<()> {
        let txn = Txn {
            compares: vec![Compare::CreateRevision {
                key: self.key.clone(),
                op: CompareOp::Equal,
                revision,
            }],
            success: vec![TxnOp::Delete {
                key: self.key.clone(),
                prefix: false,
            }],
            failure: vec![],
        };
        match tokio::time::timeout(limit, self.client.txn(txn)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(err.into()),
            Err(_) => Err(Error::Etcd(cdc_etcd::Error::Timeout {
                op: "resign",
                endpoints: self.client.endpoints().to_owned(),
                after: limit,
            })),
        }
    }

    /// Deletes our key if its create revision is still ours (bounded by 5 s). Resigning
    /// without a key is Ok. On error the key is remembered, so resigning again may succeed.
    pub async fn resign(&self) -> Result<()> {
        self.resign_within(RESIGN_TIMEOUT).await
    }

    /// [`Election::resign`] bounded by `limit`.
    async fn resign_within(&self, limit: Duration) -> Result<()> {
        let Some(revision) = self.lock_state().revision else {
            return Ok(());
        };
        self.delete_if_created_at_within(revision, limit).await?;
        let mut state = self.lock_state();
        if state.revision == Some(revision) {
            *state = State::default();
        }
        tracing::info!(key = %String::from_utf8_lossy(&self.key), "resigned");
        Ok(())
    }

    /// The current leader's value, or `None` when nobody campaigns.
    pub async fn leader(&self) -> Result<Option<String>> {
        Ok(self
            .first_in_queue()
            .await?
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
    }

    async fn first_in_queue(&self) -> Result<Option<KeyValue>> {
        let get = self
            .client
            .get(
                self.queue_prefix.clone(),
                GetOptions {
                    prefix: true,
                    limit: 1,
                    sort: Some((SortTarget::Create, SortOrder::Ascend)),
                    ..GetOptions::default()
                },
            )
            .await?;
        Ok(get.kvs.into_iter().next())
    }

    /// TiCDC's `GetOwnerRevision` for the value we campaigned with (see
    /// [`Election::owner_revision_of`]); [`Error::NotLeader`] if we never campaigned.
    pub async fn owner_revision(&self) -> Result<Revision> {
        let ours = self.lock_state().value.clone();
        match ours {
            Some(value) => self.owner_revision_of(&value).await,
            None => match self.first_in_queue().await? {
                Some(_) => Err(Error::NotLeader),
                None => Err(Error::OwnerNotFound),
            },
        }
    }

    /// TiCDC's `GetOwnerRevision(capture_id)`: the leader key's mod revision (its create
    /// revision unless proclaimed) if `capture_id` leads; [`Error::OwnerNotFound`] when nobody
    /// leads, [`Error::NotLeader`] when another value leads. Successive owners get strictly
    /// increasing revisions.
    pub async fn owner_revision_of(&self, capture_id: &str) -> Result<Revision> {
        let Some(leader) = self.first_in_queue().await? else {
            return Err(Error::OwnerNotFound);
        };
        if leader.value == capture_id.as_bytes() {
            Ok(leader.mod_revision)
        } else {
            Err(Error::NotLeader)
        }
    }
}

#[cfg(test)]
mod tests;
