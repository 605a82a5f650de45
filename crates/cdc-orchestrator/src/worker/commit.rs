//! The worker's transactions: commits of patch groups under the delete counter and the owner
//! fence, the repair of an invalid counter, and the backoff after failed transactions.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use cdc_etcd::retry::{Backoff, BackoffPolicy, Jitter};
use cdc_etcd::{Compare, CompareOp, GetOptions, Revision, Txn, TxnOp, TxnOpResponse};
use cdc_model::ErrorReport;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::{Run, SLOW_WARN};
use crate::batch::next_batch;
use crate::error::{Error, Result};
use crate::patch::{Key, PatchGroup, Value};

/// The first pause after a transaction failed with an etcd error; it doubles with every
/// consecutive failure up to [`COMMIT_BACKOFF_MAX`].
pub(super) const COMMIT_BACKOFF_BASE: Duration = Duration::from_millis(50);

/// The longest pause between transactions that fail with an etcd error.
pub(super) const COMMIT_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The delete counter as read from etcd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CounterRead {
    /// The key does not exist.
    Absent,
    /// A positive decimal that can be incremented (below `i64::MAX`).
    Valid(i64),
    /// Anything else, written at this revision.
    Invalid(Revision),
}

impl Run {
    /// Reads a counter value written at `mod_revision`; anything but a positive decimal that
    /// can be incremented is logged and marked for repair.
    pub(super) fn parse_counter(&self, value: &[u8], mod_revision: Revision) -> CounterRead {
        match counter_value(value) {
            Some(counter) => CounterRead::Valid(counter),
            None => {
                error!(
                    key = %String::from_utf8_lossy(&self.counter_key),
                    value = %String::from_utf8_lossy(value),
                    mod_revision,
                    "etcd worker delete counter is not a positive number below i64::MAX, repairing it"
                );
                CounterRead::Invalid(mod_revision)
            }
        }
    }

    pub(super) fn observe_counter(&mut self, counter: CounterRead) {
        match counter {
            CounterRead::Absent => {
                self.delete_counter = 0;
                self.invalid_counter = None;
            }
            CounterRead::Valid(counter) => {
                self.delete_counter = counter;
                self.invalid_counter = None;
            }
            // The last valid value stays: the repair counts on from it.
            CounterRead::Invalid(mod_revision) => self.invalid_counter = Some(mod_revision),
        }
    }

    /// Replaces an invalid delete counter by a positive one, unless it changed since it was
    /// read (then another worker repaired it first, or a writer replaced it, and its event is
    /// on the way: [`Error::EtcdTryAgain`]). No-op while the counter is valid.
    ///
    /// The new value, the larger of the last valid value + 1 and the revision of the invalid
    /// write, is one an incrementing writer has not reached: every increment takes a revision
    /// of its own. A transaction in flight elsewhere compared the old value and is refused.
    /// When no such value can itself be incremented the worker ends: a smaller one could
    /// repeat a value some worker has seen.
    pub(super) async fn repair_counter(&mut self) -> Result<()> {
        let Some(mod_revision) = self.invalid_counter else {
            return Ok(());
        };
        let counter = repaired_counter(self.delete_counter, mod_revision)
            .ok_or_else(|| self.counter_exhausted())?;
        let mut txn = Txn {
            compares: vec![Compare::ModRevision {
                key: self.counter_key.clone(),
                op: CompareOp::Equal,
                revision: mod_revision,
            }],
            success: vec![TxnOp::Put {
                key: self.counter_key.clone(),
                value: counter.to_string().into_bytes(),
                lease: 0,
            }],
            failure: Vec::new(),
        };
        self.add_fence(&mut txn);
        self.log_owner_txn("sending", None, 1);
        let response = self.client.txn(txn).await?;
        self.log_owner_txn_outcome(&response, 1);
        self.backoff.reset();
        self.check_fence_response(&response)?;
        if response.succeeded {
            info!(counter, "etcd worker delete counter repaired");
            self.observe_counter(CounterRead::Valid(counter));
            Ok(())
        } else {
            debug!(
                mod_revision,
                "etcd worker delete counter changed before its repair"
            );
            Err(Error::EtcdTryAgain)
        }
    }

    /// Decides on a failed commit or delete-counter repair. A retryable etcd error (no answer
    /// in time, no space, too many requests, ...) is counted, logged and backs the next
    /// transaction off; another retryable error (a refused compare, a patch asking to try
    /// again) is retried at the next wake-up; any other error ends the worker.
    pub(super) fn commit_failed(&mut self, err: Error, op: &'static str) -> Result<()> {
        match err {
            Error::Etcd(err) if err.is_retryable() => {
                self.metrics.record_commit_error();
                let delay = self.backoff.fail(Instant::now());
                warn!(
                    op,
                    error = %ErrorReport(&err),
                    failures = self.backoff.failures,
                    retry_in = ?delay,
                    "etcd worker transaction failed, backing off"
                );
                Ok(())
            }
            err if err.is_retryable() => {
                debug!(op, error = %ErrorReport(&err), "etcd worker transaction will be retried");
                Ok(())
            }
            err => Err(err),
        }
    }

    /// Commits the leading groups that fit in one transaction. Returns the number of keys
    /// committed; the committed groups leave `groups`.
    pub(super) async fn try_commit(&mut self, groups: &mut VecDeque<PatchGroup>) -> Result<usize> {
        // Every transaction compares the counter: an invalid one is repaired first.
        self.repair_counter().await?;
        let batch = next_batch(&self.raw_state, groups.make_contiguous(), self.limits)?;
        if batch.changes.is_empty() {
            groups.drain(..batch.n_groups);
            return Ok(0);
        }
        let txn = self.build_txn(&batch.changes)?;
        self.metrics.record_txn_size(batch.size);
        let started = Instant::now();
        self.log_owner_txn("sending", None, batch.changes.len());
        let response = self.client.txn(txn).await?;
        self.log_owner_txn_outcome(&response, batch.changes.len());
        self.backoff.reset();
        let latency = started.elapsed();
        self.metrics.record_txn(response.succeeded, latency);
        if latency > SLOW_WARN {
            warn!(duration = ?latency, n_keys = batch.changes.len(), "etcd worker txn took too long");
        }
        if response.succeeded {
            self.barrier_revision = response.revision;
            groups.drain(..batch.n_groups);
            return Ok(batch.changes.len());
        }
        self.check_fence_response(&response)?;
        debug!(
            n_keys = batch.changes.len(),
            revision = self.revision,
            "etcd worker txn refused"
        );
        Err(Error::EtcdTryAgain)
    }

    /// The error of a delete counter that cannot grow any more.
    pub(super) fn counter_exhausted(&self) -> Error {
        Error::Etcd(cdc_etcd::Error::InvalidValue {
            key: String::from_utf8_lossy(&self.counter_key).into_owned(),
            reason: format!(
                "the delete counter cannot grow past {} without overflowing",
                self.delete_counter
            ),
        })
    }

    pub(super) fn build_txn(&self, changes: &BTreeMap<Key, Option<Value>>) -> Result<Txn> {
        let mut txn = Txn::default();
        let mut has_delete = false;
        for (key, value) in changes {
            let revision = self
                .raw_state
                .get(key)
                .map_or(0, |entry| entry.mod_revision);
            txn.compares.push(Compare::ModRevision {
                key: key.clone(),
                op: CompareOp::Equal,
                revision,
            });
            match value {
                Some(value) => txn.success.push(TxnOp::Put {
                    key: key.clone(),
                    value: value.clone(),
                    lease: 0,
                }),
                None => {
                    has_delete = true;
                    txn.success.push(TxnOp::Delete {
                        key: key.clone(),
                        prefix: false,
                    });
                }
            }
        }
        if has_delete {
            // Never write a value that every worker would then read as invalid (one that cannot
            // be incremented again): only this worker fails, not the cluster.
            let next = self
                .delete_counter
                .checked_add(1)
                .filter(|next| next.checked_add(1).is_some())
                .ok_or_else(|| self.counter_exhausted())?;
            txn.success.push(TxnOp::Put {
                key: self.counter_key.clone(),
                value: next.to_string().into_bytes(),
                lease: 0,
            });
        }
        txn.compares.push(if self.delete_counter > 0 {
            Compare::Value {
                key: self.counter_key.clone(),
                op: CompareOp::Equal,
                value: self.delete_counter.to_string().into_bytes(),
            }
        } else {
            Compare::CreateRevision {
                key: self.counter_key.clone(),
                op: CompareOp::Equal,
                revision: 0,
            }
        });
        self.add_fence(&mut txn);
        Ok(txn)
    }

    /// Logs a transaction of a fenced worker at info level on target `cdc::owner_commit`, for
    /// the fencing oracle of `cdc-oracle` (`docs/guarantees.md`, "The chaos oracles"): once
    /// before it is sent (`outcome = "sending"`), then with its header revision once answered
    /// (`committed` or `refused`). A transaction sent without an answer may have committed.
    /// Owner transactions are a few per second at most, so the cost is small.
    fn log_owner_txn(&self, outcome: &'static str, revision: Option<Revision>, n_keys: usize) {
        let Some(fence) = &self.fence else {
            return;
        };
        let owner_key = String::from_utf8_lossy(&fence.key);
        match revision {
            Some(revision) => info!(
                target: "cdc::owner_commit",
                outcome,
                %owner_key,
                owner_revision = fence.create_revision,
                revision,
                keys = n_keys,
                "owner transaction"
            ),
            None => info!(
                target: "cdc::owner_commit",
                outcome,
                %owner_key,
                owner_revision = fence.create_revision,
                keys = n_keys,
                "owner transaction"
            ),
        }
    }

    fn log_owner_txn_outcome(&self, response: &cdc_etcd::TxnResponse, n_keys: usize) {
        let outcome = if response.succeeded {
            "committed"
        } else {
            "refused"
        };
        self.log_owner_txn(outcome, Some(response.revision), n_keys);
    }

    /// Adds the owner fence to a transaction of a fenced worker: the owner key's create
    /// revision must be the campaign's, and a refused transaction reads the key back.
    pub(super) fn add_fence(&self, txn: &mut Txn) {
        if let Some(fence) = &self.fence {
            txn.compares.push(fence.compare());
            txn.failure.push(TxnOp::Get {
                key: fence.key.clone(),
                options: GetOptions::default(),
            });
        }
    }

    /// A refused transaction of a fenced worker whose owner key no longer has the campaign's
    /// create revision ends the worker with [`Error::NotOwner`].
    pub(super) fn check_fence_response(&self, response: &cdc_etcd::TxnResponse) -> Result<()> {
        let Some(fence) = &self.fence else {
            return Ok(());
        };
        if response.succeeded {
            return Ok(());
        }
        let holds = response.responses.iter().any(|op| match op {
            TxnOpResponse::Get(get) => get
                .kvs
                .first()
                .is_some_and(|kv| kv.create_revision == fence.create_revision),
            TxnOpResponse::Put | TxnOpResponse::Delete { .. } => false,
        });
        if holds {
            Ok(())
        } else {
            info!("owner fence refused, this capture is not the owner any more");
            Err(Error::NotOwner)
        }
    }
}

/// A delete counter value a writer can increment: a positive decimal below `i64::MAX`.
pub(super) fn counter_value(value: &[u8]) -> Option<i64> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.parse::<i64>().ok())
        .filter(|counter| *counter > 0 && counter.checked_add(1).is_some())
}

/// The value that repairs a delete counter whose last valid value was `last_valid` (0: none)
/// and that was overwritten at `bad_revision`: the larger of `last_valid + 1` and
/// `bad_revision`, if it can be incremented in turn.
pub(super) fn repaired_counter(last_valid: i64, bad_revision: Revision) -> Option<i64> {
    let counter = last_valid.checked_add(1)?.max(bad_revision);
    counter.checked_add(1).map(|_| counter)
}

/// The pauses of [`CommitBackoff`]: from [`COMMIT_BACKOFF_BASE`], doubling up to
/// [`COMMIT_BACKOFF_MAX`], each drawn from the upper half of its step so that workers that
/// failed together do not retry together.
pub(super) const COMMIT_BACKOFF: BackoffPolicy = BackoffPolicy {
    base: COMMIT_BACKOFF_BASE,
    max: COMMIT_BACKOFF_MAX,
    jitter: Jitter::Shorten,
};

/// The pause of a worker after consecutive transactions that failed with an etcd error
/// (etcd out of space, overloaded or unreachable): a worker does not retry a struggling etcd
/// at its tick rate. Reset as soon as etcd answers a transaction.
#[derive(Debug)]
pub(super) struct CommitBackoff {
    /// Consecutive failures.
    pub(super) failures: u32,
    /// No transaction before this instant.
    pub(super) until: Option<Instant>,
    /// The pauses.
    backoff: Backoff,
}

impl Default for CommitBackoff {
    fn default() -> CommitBackoff {
        CommitBackoff {
            failures: 0,
            until: None,
            backoff: Backoff::new(COMMIT_BACKOFF),
        }
    }
}

impl CommitBackoff {
    /// Whether a transaction may be sent at `now`.
    pub(super) fn is_over(&self, now: Instant) -> bool {
        self.until.is_none_or(|until| now >= until)
    }

    /// Counts a failure at `now` and returns the pause before the next transaction.
    pub(super) fn fail(&mut self, now: Instant) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let delay = self.backoff.next_delay();
        self.until = Some(now + delay);
        delay
    }

    pub(super) fn reset(&mut self) {
        *self = CommitBackoff::default();
    }
}
