//! The retry loop with synthetic errors under paused time: TiCDC's TestRetry (`pkg/etcd`), the
//! backoff formula, the deadline and cancellation.

use std::sync::atomic::{AtomicU32, Ordering};

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;

fn rpc(code: RpcCode, message: &str) -> Error {
    Error::Rpc {
        op: "test",
        code,
        message: message.to_owned(),
        endpoints: "http://127.0.0.1:1".to_owned(),
    }
}

fn two_tries() -> RetryPolicy {
    RetryPolicy {
        max_tries: 2,
        ..RetryPolicy::default()
    }
}

/// Runs `retry` with an attempt that fails with `make_error()` every time, returning the result
/// and the number of attempts.
async fn always_failing(
    policy: &RetryPolicy,
    is_retryable: fn(&Error) -> bool,
    make_error: impl Fn() -> Error,
) -> (Result<()>, u32) {
    let calls = AtomicU32::new(0);
    let cancel = CancellationToken::new();
    let result = retry(
        "test",
        "http://127.0.0.1:1",
        policy,
        is_retryable,
        &cancel,
        || {
            calls.fetch_add(1, Ordering::SeqCst);
            let err = make_error();
            async move { Err::<(), _>(err) }
        },
    )
    .await;
    (result, calls.load(Ordering::SeqCst))
}

/// Case 11, with max tries 2.
#[tokio::test(start_paused = true)]
async fn retry_rules() {
    let cancel = CancellationToken::new();
    // Get ok: no error, one attempt.
    let calls = AtomicU32::new(0);
    let value = retry(
        "get",
        "",
        &two_tries(),
        is_retryable_read_or_put,
        &cancel,
        || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Ok(7) }
        },
    )
    .await
    .unwrap();
    assert_eq!((value, calls.load(Ordering::SeqCst)), (7, 1));

    // Put with a persistent "mock error": retried, then ReachMaxTry whose cause is the mock.
    let (result, calls) = always_failing(&two_tries(), is_retryable_read_or_put, || {
        rpc(RpcCode::Unknown, "mock error")
    })
    .await;
    let err = result.unwrap_err();
    assert_eq!(calls, 2);
    assert!(matches!(err, Error::ReachMaxTry { tries: 2, .. }), "{err}");
    assert!(err.root_cause().to_string().contains("mock error"));
    assert!(
        err.to_string()
            .starts_with("[CDC:ErrReachMaxTry]reach maximum try: 2, error: ")
    );

    // Txn on ErrNoSpace and ErrTimeoutDueToLeaderFail: ReachMaxTry.
    for message in [
        "etcdserver: mvcc: database space exceeded",
        "etcdserver: request timed out, possibly due to previous leader failure",
    ] {
        let (result, calls) = always_failing(&two_tries(), is_retryable_txn, || {
            rpc(RpcCode::Unavailable, message)
        })
        .await;
        assert!(
            matches!(result, Err(Error::ReachMaxTry { .. })),
            "{message}"
        );
        assert_eq!(calls, 2);
    }

    // Txn on DeadlineExceeded, on a generic error and on our per-attempt timeout: as is.
    let deadline = || rpc(RpcCode::DeadlineExceeded, "context deadline exceeded");
    let (result, calls) = always_failing(&two_tries(), is_retryable_txn, deadline).await;
    assert!(matches!(
        result,
        Err(Error::Rpc {
            code: RpcCode::DeadlineExceeded,
            ..
        })
    ));
    assert_eq!(calls, 1);
    let (result, calls) = always_failing(&two_tries(), is_retryable_txn, || {
        rpc(RpcCode::Unknown, "mock error")
    })
    .await;
    assert!(matches!(
        result,
        Err(Error::Rpc {
            code: RpcCode::Unknown,
            ..
        })
    ));
    assert_eq!(calls, 1);
    let (result, calls) = always_failing(&two_tries(), is_retryable_txn, || Error::Timeout {
        op: "txn",
        endpoints: String::new(),
        after: Duration::from_secs(10),
    })
    .await;
    assert!(matches!(result, Err(Error::Timeout { .. })));
    assert_eq!(calls, 1);

    // Get and put never retry a cancelled or deadline-exceeded RPC, nor a missing lease.
    for make_error in [
        deadline as fn() -> Error,
        || rpc(RpcCode::Cancelled, "context canceled"),
        || Error::LeaseNotFound { lease_id: 1 },
        || Error::Cancelled,
    ] {
        let (result, calls) =
            always_failing(&two_tries(), is_retryable_read_or_put, make_error).await;
        assert!(result.is_err());
        assert_eq!(calls, 1);
    }
}

/// With the default policy a persistently failing call makes exactly 12 attempts when they fail
/// fast enough; with slow backoff the 30 s deadline ends it first, naming the endpoint and the
/// last error.
#[tokio::test(start_paused = true)]
async fn deadline_covers_all_tries() {
    let policy = RetryPolicy {
        base_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(2),
        ..RetryPolicy::default()
    };
    let (result, calls) = always_failing(&policy, is_retryable_read_or_put, || {
        rpc(RpcCode::Unavailable, "tcp connect error")
    })
    .await;
    assert_eq!(calls, 12);
    assert!(matches!(result, Err(Error::ReachMaxTry { tries: 12, .. })));

    let started = Instant::now();
    let (result, calls) = always_failing(&RetryPolicy::default(), is_retryable_read_or_put, || {
        rpc(RpcCode::Unavailable, "tcp connect error")
    })
    .await;
    let elapsed = started.elapsed();
    let err = result.unwrap_err();
    assert!(matches!(err, Error::DeadlineExceeded { .. }), "{err}");
    assert!(calls < 12, "{calls}");
    assert!(elapsed <= Duration::from_secs(30), "{elapsed:?}");
    let message = err.to_string();
    assert!(message.contains("http://127.0.0.1:1"), "{message}");
    assert!(message.contains("tcp connect error"), "{message}");
}

/// An attempt that hangs is cut by the deadline of the whole call.
#[tokio::test(start_paused = true)]
async fn deadline_cuts_a_hung_attempt() {
    let cancel = CancellationToken::new();
    let started = Instant::now();
    let result: Result<()> = retry(
        "get",
        "http://127.0.0.1:1",
        &RetryPolicy::default(),
        is_retryable_read_or_put,
        &cancel,
        std::future::pending,
    )
    .await;
    assert!(matches!(
        result,
        Err(Error::DeadlineExceeded { last: None, .. })
    ));
    assert_eq!(started.elapsed(), Duration::from_secs(30));
}

/// Cancellation interrupts a backoff sleep and is never retried.
#[tokio::test(start_paused = true)]
async fn cancel_interrupts_backoff() {
    let cancel = CancellationToken::new();
    let calls = AtomicU32::new(0);
    let canceller = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            cancel.cancel();
        })
    };
    let started = Instant::now();
    let result: Result<()> = retry(
        "get",
        "",
        &RetryPolicy::default(),
        is_retryable_read_or_put,
        &cancel,
        || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(rpc(RpcCode::Unavailable, "tcp connect error")) }
        },
    )
    .await;
    canceller.await.unwrap();
    assert!(matches!(result, Err(Error::Cancelled)));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(started.elapsed(), Duration::from_millis(100));
}

/// The backoff stays within TiCDC's bounds for every retry number.
#[test]
fn backoff_bounds() {
    let policy = RetryPolicy::default();
    let mut rng = StdRng::seed_from_u64(7);
    for retry in 1..=12u32 {
        let t = (500u64 << retry).min(60_000) / 2;
        let upper = (t * 2 - 1) * 3 - 1 + 500;
        for _ in 0..200 {
            let delay = backoff_delay(retry, &policy, &mut rng).as_millis() as u64;
            assert!(delay >= 500, "retry {retry}: {delay}");
            assert!(delay <= upper.min(60_000), "retry {retry}: {delay}");
        }
    }
}

#[test]
fn backoff_steps_double_up_to_the_cap_and_reset() {
    let policy = BackoffPolicy {
        base: Duration::from_millis(50),
        max: Duration::from_secs(2),
        jitter: Jitter::None,
    };
    let steps: Vec<u128> = (1..=8).map(|n| policy.step(n).as_millis()).collect();
    assert_eq!(steps, [50, 100, 200, 400, 800, 1600, 2000, 2000]);
    assert_eq!(policy.step(u32::MAX), policy.max);

    let mut backoff = Backoff::new(policy);
    let delays: Vec<u128> = (0..8).map(|_| backoff.next_delay().as_millis()).collect();
    assert_eq!(delays, steps);
    assert_eq!(backoff.attempts(), 8);
    backoff.reset();
    assert_eq!(backoff.attempts(), 0);
    assert_eq!(backoff.next_delay(), policy.base);
}

#[test]
fn backoff_jitter_stays_in_its_range() {
    let mut rng = StdRng::seed_from_u64(7);
    let step = Duration::from_millis(400);
    for _ in 0..200 {
        let lower = Jitter::Shorten.apply(step, &mut rng);
        assert!(lower >= step / 2 && lower <= step, "{lower:?}");
        let upper = Jitter::Lengthen.apply(step, &mut rng);
        assert!(upper >= step && upper < step * 3 / 2, "{upper:?}");
        assert_eq!(Jitter::None.apply(step, &mut rng), step);
    }
}
