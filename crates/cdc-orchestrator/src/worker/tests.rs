//! Unit tests of the worker: the commit backoff, the delete counter, the snapshot deadline.

use super::commit::{
    COMMIT_BACKOFF, COMMIT_BACKOFF_MAX, CommitBackoff, counter_value, repaired_counter,
};
use super::*;

/// The pause after `failures` (at least 1) consecutive failures before jitter.
fn nominal_backoff(failures: u32) -> Duration {
    COMMIT_BACKOFF.step(failures)
}

/// The pause drawn from `nominal`: in `[nominal / 2, nominal]`.
fn jittered(nominal: Duration, rng: &mut impl rand::Rng) -> Duration {
    COMMIT_BACKOFF.jitter.apply(nominal, rng)
}

#[test]
fn commit_backoff_doubles_up_to_its_cap() {
    let nominal: Vec<_> = (1..=8).map(nominal_backoff).collect();
    let millis: Vec<u128> = nominal.iter().map(Duration::as_millis).collect();
    assert_eq!(millis, [50, 100, 200, 400, 800, 1600, 2000, 2000]);
    assert_eq!(nominal_backoff(u32::MAX), COMMIT_BACKOFF_MAX);

    let mut rng = rand::rng();
    for failures in 1..=8 {
        let nominal = nominal_backoff(failures);
        for _ in 0..100 {
            let delay = jittered(nominal, &mut rng);
            assert!(
                delay >= nominal / 2 && delay <= nominal,
                "{delay:?} of {nominal:?}"
            );
        }
    }
}

#[test]
fn counter_values() {
    assert_eq!(counter_value(b"1"), Some(1));
    assert_eq!(counter_value(b"9223372036854775806"), Some(i64::MAX - 1));
    // Valid as an i64, but one more delete would overflow it.
    assert_eq!(counter_value(b"9223372036854775807"), None);
    assert_eq!(counter_value(b"9223372036854775808"), None);
    for bad in [&b"0"[..], b"-3", b"", b"x", b" 1", b"\xff"] {
        assert_eq!(counter_value(bad), None, "{bad:?}");
    }
}

#[test]
fn repaired_counters_never_go_back() {
    assert_eq!(repaired_counter(0, 7), Some(7));
    assert_eq!(repaired_counter(5, 3), Some(6));
    assert_eq!(repaired_counter(5, 100), Some(100));
    assert_eq!(repaired_counter(i64::MAX - 2, 3), Some(i64::MAX - 1));
    // Nothing at or above the bound is left that can be incremented.
    assert_eq!(repaired_counter(i64::MAX - 1, 3), None);
    assert_eq!(repaired_counter(i64::MAX, 3), None);
    assert_eq!(repaired_counter(0, i64::MAX), None);
}

/// A state that ignores everything.
struct Nothing;

impl ReactorState for Nothing {
    fn update(&mut self, _key: &[u8], _value: Option<&[u8]>, _is_init: bool) -> Result<()> {
        Ok(())
    }

    fn update_pending_change(&mut self, _now: std::time::Instant) {}

    fn get_patches(&mut self) -> Vec<PatchGroup> {
        Vec::new()
    }
}

impl Reactor<Nothing> for Nothing {
    async fn tick(&mut self, _state: &mut Nothing) -> Result<NextTick> {
        Ok(NextTick::Idle)
    }
}

// The snapshot read of a worker whose etcd never answers is retried, then gives up at the
// deadline of a retried etcd call, with that deadline in its error.
#[tokio::test(start_paused = true)]
async fn snapshot_read_gives_up_at_the_retried_call_deadline() {
    let unreachable = vec!["127.0.0.1:1".to_owned()];
    let client = EtcdClient::connect(&unreachable, cdc_etcd::ConnectConfig::default())
        .await
        .unwrap();
    let worker = EtcdWorker::new(client, "/deadline");
    let metrics = worker.metrics().clone();
    let cancel = CancellationToken::new();
    let started = Instant::now();
    let result = worker
        .run(&mut Nothing, Nothing, Duration::from_millis(10), &cancel)
        .await;
    let deadline = RetryPolicy::default().deadline;
    match result {
        Err(Error::Etcd(cdc_etcd::Error::DeadlineExceeded { after, .. })) => {
            assert_eq!(after, deadline);
        }
        Err(err) => panic!("expected the read's deadline, got {err:?}"),
        Ok(_) => panic!("expected the read's deadline, got a finished worker"),
    }
    assert!(started.elapsed() >= deadline, "{:?}", started.elapsed());
    assert!(metrics.snapshot_reads() > 1, "{}", metrics.snapshot_reads());
}

#[test]
fn commit_backoff_holds_until_reset() {
    let mut backoff = CommitBackoff::default();
    let now = Instant::now();
    assert!(backoff.is_over(now));
    let first = backoff.fail(now);
    assert!(!backoff.is_over(now));
    assert!(backoff.is_over(now + first));
    backoff.fail(now);
    assert_eq!(backoff.failures, 2);
    backoff.reset();
    assert_eq!(backoff.failures, 0);
    assert!(backoff.is_over(now));
}
