//! The retrying etcd client (TiCDC's `pkg/etcd/client.go`) and the one retry loop it is built on.
//!
//! Every call of [`RetryingClient`] runs under one deadline ([`RetryPolicy::deadline`], 30 s)
//! that covers every attempt and backoff, makes at most [`RetryPolicy::max_tries`] (12) attempts
//! with TiCDC's backoff, and stops at once when cancelled. What is retried depends on the
//! operation:
//!
//! | op | retried on |
//! |---|---|
//! | get, put, lease grant | any retryable error except a cancelled or deadline-exceeded RPC |
//! | lease revoke, time-to-live | the same; a missing lease is never retried |
//! | txn | only etcd's transient errors ([`Error::is_transient_etcd_error`]) |
//! | delete | never: a retried delete could remove a key written in between |
//!
//! Unlike the reference, whose retry loop ignores the caller's context during a backoff, the
//! deadline and cancellation interrupt the backoff sleep.

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::EtcdClient;
use crate::error::{Error, Result, RpcCode};
use crate::types::{
    GetOptions, GetResponse, LeaseGrant, LeaseId, LeaseTimeToLive, Revision, Txn, TxnResponse,
};

/// Limits of a retried call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included.
    pub max_tries: u32,
    /// Deadline of the whole call, every attempt and backoff included.
    pub deadline: Duration,
    /// Base of the backoff.
    pub base_backoff: Duration,
    /// Cap of the backoff.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_tries: 12,
            deadline: Duration::from_secs(30),
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// TiCDC's backoff before retry number `retry` (1 after the first failure), in milliseconds:
/// `t = min(cap, base * 2^retry) / 2`, `sleep = (t + rand[0, t)) * 3`,
/// `delay = min(cap, rand[0, sleep) + base)`.
pub fn backoff_delay(retry: u32, policy: &RetryPolicy, rng: &mut impl Rng) -> Duration {
    let base = u64::try_from(policy.base_backoff.as_millis()).unwrap_or(u64::MAX);
    let cap = u64::try_from(policy.max_backoff.as_millis()).unwrap_or(u64::MAX);
    let exponential = base.saturating_mul(1u64.checked_shl(retry).unwrap_or(u64::MAX));
    let t = exponential.min(cap) / 2;
    let jittered = if t == 0 {
        0
    } else {
        t + rng.random_range(0..t)
    };
    let sleep = jittered.saturating_mul(3);
    let spread = if sleep == 0 {
        0
    } else {
        rng.random_range(0..sleep)
    };
    Duration::from_millis(cap.min(spread.saturating_add(base)))
}

/// How a [`Backoff`] spreads a pause around its nominal step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Jitter {
    /// Exactly the step.
    None,
    /// Up to half shorter: half the step plus a random part of the other half, in
    /// `[step / 2, step]`, so that callers that failed together do not retry together and no
    /// pause exceeds the cap.
    Shorten,
    /// Up to half longer: the step plus a random part of its half, in `[step, 1.5 * step)`, so
    /// that no pause is shorter than its step.
    Lengthen,
}

impl Jitter {
    /// The pause for a nominal `step`.
    pub fn apply(self, step: Duration, rng: &mut impl Rng) -> Duration {
        match self {
            Jitter::None => step,
            Jitter::Shorten => {
                let half = step / 2;
                half + half.mul_f64(rng.random::<f64>())
            }
            Jitter::Lengthen => step + (step / 2).mul_f64(rng.random::<f64>()),
        }
    }
}

/// The numbers of a [`Backoff`]: the first step, the cap and the jitter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// The step of the first pause.
    pub base: Duration,
    /// The largest step.
    pub max: Duration,
    /// How each pause is drawn from its step.
    pub jitter: Jitter,
}

impl BackoffPolicy {
    /// The step of pause number `attempt` (1 for the first), before jitter: the base, doubled
    /// for every pause after the first, capped.
    pub fn step(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.base.saturating_mul(1 << doublings).min(self.max)
    }
}

/// Exponential backoff with jitter: the pauses of a loop that retries a failing call, from the
/// policy's base, doubling up to its cap, until [`Backoff::reset`] after a success.
#[derive(Clone, Debug)]
pub struct Backoff {
    policy: BackoffPolicy,
    attempts: u32,
}

impl Backoff {
    /// A backoff whose next pause is the first.
    pub const fn new(policy: BackoffPolicy) -> Backoff {
        Backoff {
            policy,
            attempts: 0,
        }
    }

    /// The next pause: the current step with jitter; the step then doubles, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        self.attempts = self.attempts.saturating_add(1);
        self.policy
            .jitter
            .apply(self.policy.step(self.attempts), &mut rand::rng())
    }

    /// Starts again from the base.
    pub fn reset(&mut self) {
        self.attempts = 0;
    }

    /// The pauses given since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The policy.
    pub fn policy(&self) -> &BackoffPolicy {
        &self.policy
    }
}

/// Runs `attempt` until it succeeds, fails with an error `is_retryable` rejects, has been tried
/// `policy.max_tries` times ([`Error::ReachMaxTry`]), or the deadline passes
/// ([`Error::DeadlineExceeded`], naming `endpoints`). Cancellation returns [`Error::Cancelled`]
/// at once, also during an attempt or a backoff.
pub async fn retry<T, F, Fut>(
    op: &'static str,
    endpoints: &str,
    policy: &RetryPolicy,
    is_retryable: impl Fn(&Error) -> bool,
    cancel: &CancellationToken,
    mut attempt: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = Instant::now() + policy.deadline;
    let deadline_exceeded = |last: Option<Error>| Error::DeadlineExceeded {
        op,
        after: policy.deadline,
        endpoints: endpoints.to_owned(),
        last: last.map(Box::new),
    };
    let mut last = None;
    let mut tries = 0;
    loop {
        tries += 1;
        let outcome = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(Error::Cancelled),
            outcome = tokio::time::timeout_at(deadline, attempt()) => outcome,
        };
        let err = match outcome {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(err)) => err,
            Err(_) => return Err(deadline_exceeded(last)),
        };
        if !is_retryable(&err) {
            return Err(err);
        }
        if tries >= policy.max_tries {
            return Err(Error::ReachMaxTry {
                tries,
                last: Box::new(err),
            });
        }
        let delay = backoff_delay(tries, policy, &mut rand::rng());
        tracing::debug!(op, tries, ?delay, error = %err, "etcd call failed, retrying");
        let wake = (Instant::now() + delay).min(deadline);
        tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(Error::Cancelled),
            () = tokio::time::sleep_until(wake) => {}
        }
        if wake >= deadline {
            return Err(deadline_exceeded(Some(err)));
        }
        last = Some(err);
    }
}

/// Whether the RPC itself reported a cancellation or an expired deadline: TiCDC never retries
/// those.
fn is_context_error(err: &Error) -> bool {
    matches!(
        err,
        Error::Cancelled
            | Error::Rpc {
                code: RpcCode::Cancelled | RpcCode::DeadlineExceeded,
                ..
            }
    )
}

/// The predicate of get, put, lease grant, lease revoke and time-to-live.
pub(crate) fn is_retryable_read_or_put(err: &Error) -> bool {
    err.is_retryable() && !is_context_error(err)
}

/// The predicate of txn.
pub(crate) fn is_retryable_txn(err: &Error) -> bool {
    err.is_transient_etcd_error()
}

/// [`EtcdClient`] with the retries of TiCDC's `pkg/etcd/client.go`. Cheap to clone.
#[derive(Clone, Debug)]
pub struct RetryingClient {
    client: EtcdClient,
    policy: RetryPolicy,
}

impl RetryingClient {
    /// Wraps `client` with the default policy (12 tries, 30 s).
    pub fn new(client: EtcdClient) -> RetryingClient {
        RetryingClient::with_policy(client, RetryPolicy::default())
    }

    /// Wraps `client` with `policy`.
    pub fn with_policy(client: EtcdClient, policy: RetryPolicy) -> RetryingClient {
        RetryingClient { client, policy }
    }

    /// The single-attempt client underneath.
    pub fn client(&self) -> &EtcdClient {
        &self.client
    }

    /// The policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    async fn run<T, F, Fut>(
        &self,
        op: &'static str,
        is_retryable: impl Fn(&Error) -> bool,
        cancel: &CancellationToken,
        attempt: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        retry(
            op,
            self.client.endpoints(),
            &self.policy,
            is_retryable,
            cancel,
            attempt,
        )
        .await
    }

    /// Reads a key or a range, retried.
    pub async fn get(
        &self,
        key: impl Into<Vec<u8>>,
        options: GetOptions,
        cancel: &CancellationToken,
    ) -> Result<GetResponse> {
        let key = key.into();
        self.run("get", is_retryable_read_or_put, cancel, || {
            self.client.get(key.clone(), options.clone())
        })
        .await
    }

    /// Puts a value (attached to `lease` when not 0), retried. Returns the store revision.
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        lease: LeaseId,
        cancel: &CancellationToken,
    ) -> Result<Revision> {
        let key = key.into();
        let value = value.into();
        self.run("put", is_retryable_read_or_put, cancel, || {
            self.client.put(key.clone(), value.clone(), lease)
        })
        .await
    }

    /// Deletes a key or a prefix: one attempt, under the deadline. Returns how many were deleted.
    pub async fn delete(
        &self,
        key: impl Into<Vec<u8>>,
        prefix: bool,
        cancel: &CancellationToken,
    ) -> Result<i64> {
        let key = key.into();
        self.run(
            "delete",
            |_| false,
            cancel,
            || self.client.delete(key.clone(), prefix),
        )
        .await
    }

    /// Runs a transaction, retried only on etcd's transient errors.
    pub async fn txn(&self, txn: Txn, cancel: &CancellationToken) -> Result<TxnResponse> {
        self.run("txn", is_retryable_txn, cancel, || {
            self.client.txn(txn.clone())
        })
        .await
    }

    /// Grants a lease of `ttl` seconds, retried.
    pub async fn lease_grant(&self, ttl: i64, cancel: &CancellationToken) -> Result<LeaseGrant> {
        self.run("lease_grant", is_retryable_read_or_put, cancel, || {
            self.client.lease_grant(ttl)
        })
        .await
    }

    /// Revokes a lease, retried; a missing lease is [`Error::LeaseNotFound`] at once.
    pub async fn lease_revoke(&self, id: LeaseId, cancel: &CancellationToken) -> Result<()> {
        self.run("lease_revoke", is_retryable_read_or_put, cancel, || {
            self.client.lease_revoke(id)
        })
        .await
    }

    /// Reads a lease's remaining TTL (`-1` when gone), retried.
    pub async fn lease_time_to_live(
        &self,
        id: LeaseId,
        cancel: &CancellationToken,
    ) -> Result<LeaseTimeToLive> {
        self.run(
            "lease_time_to_live",
            is_retryable_read_or_put,
            cancel,
            || self.client.lease_time_to_live(id),
        )
        .await
    }
}

#[cfg(test)]
mod tests;
