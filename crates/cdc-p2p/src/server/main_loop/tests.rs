//! The local receiver's flush timing, on tokio's paused clock.

use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::local::LocalClient;
use crate::topic::NamedTopic;

/// The time the next local batch reaches the main loop, and its size.
async fn next_batch(task_rx: &mut mpsc::Receiver<Task>) -> (Instant, usize) {
    let task = tokio::time::timeout(Duration::from_secs(10), task_rx.recv())
        .await
        .expect("a batch within 10 s")
        .expect("the receiver runs");
    match task {
        Task::LocalBatch(entries) => (Instant::now(), entries.len()),
        _ => panic!("only local batches are sent"),
    }
}

// While messages flow, batches leave on the flush interval's grid: a message that arrives just
// after a flush waits for the next tick of the grid, not a whole interval from its arrival
// (which raised the one-way p99 at 10k msg/s, `docs/benchmarks.md`). After an idle spell the
// next message starts a new grid.
#[tokio::test(start_paused = true)]
async fn local_batches_leave_on_the_flush_grid_while_messages_flow() {
    let (client, local_rx) = LocalClient::new();
    let (task_tx, mut task_rx) = mpsc::channel(8);
    let cancel = CancellationToken::new();
    let receiver = tokio::spawn(run_local_receiver(local_rx, task_tx, cancel.clone()));
    let topic: NamedTopic<u64> = NamedTopic::new("t");

    let start = Instant::now();
    client.send_message(&topic, 1, &cancel).await.unwrap();
    client.send_message(&topic, 2, &cancel).await.unwrap();
    assert_eq!(
        next_batch(&mut task_rx).await,
        (start + LOCAL_FLUSH_INTERVAL, 2)
    );
    for k in 2..6 {
        tokio::time::sleep(Duration::from_millis(2)).await;
        client.send_message(&topic, k, &cancel).await.unwrap();
        let due = start + LOCAL_FLUSH_INTERVAL * u32::try_from(k).unwrap();
        assert_eq!(next_batch(&mut task_rx).await, (due, 1), "message {k}");
    }

    // Idle past the grid's last tick, then a message: flushed one interval after it.
    tokio::time::sleep(LOCAL_FLUSH_INTERVAL * 10).await;
    let again = Instant::now();
    client.send_message(&topic, 6, &cancel).await.unwrap();
    assert_eq!(
        next_batch(&mut task_rx).await,
        (again + LOCAL_FLUSH_INTERVAL, 1)
    );

    cancel.cancel();
    receiver.await.unwrap().unwrap();
}
