//! The changefeed-initialisation pool: a fixed number of workers running submitted jobs, one
//! pool per incarnation, run in the incarnation's task group.

use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// Jobs waiting for a worker, at most.
const QUEUE_CAPACITY: usize = 64;

/// A job: a future run to completion by one worker (dropped if the pool stops first).
pub type Job = BoxFuture<'static, ()>;

/// A bounded pool of `workers` job runners.
#[derive(Debug)]
pub struct InitPool {
    workers: usize,
    tx: mpsc::Sender<Job>,
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
}

impl InitPool {
    /// A pool of `workers` runners (at least one).
    pub fn new(workers: usize) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        InitPool {
            workers: workers.max(1),
            tx,
            rx: Arc::new(Mutex::new(rx)),
        }
    }

    /// The number of runners.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Queues `job`, waiting while the queue is full; [`Error::Cancelled`] if `cancel` fires
    /// first.
    pub async fn submit(&self, job: Job, cancel: &CancellationToken) -> Result<()> {
        tokio::select! {
            () = cancel.cancelled() => Err(Error::Cancelled),
            sent = self.tx.send(job) => sent.map_err(|_| Error::Cancelled),
        }
    }

    /// Runs the workers until `cancel`; queued and running jobs are dropped then.
    pub async fn run(&self, cancel: &CancellationToken) -> Result<()> {
        let runners = (0..self.workers).map(|_| {
            let rx = Arc::clone(&self.rx);
            async move {
                loop {
                    let job = {
                        let mut rx = rx.lock().await;
                        tokio::select! {
                            () = cancel.cancelled() => return,
                            job = rx.recv() => job,
                        }
                    };
                    let Some(job) = job else { return };
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = job => {}
                    }
                }
            }
        });
        futures::future::join_all(runners).await;
        Err(Error::Cancelled)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn runs_jobs_on_up_to_n_workers_until_cancelled() {
        let pool = Arc::new(InitPool::new(8));
        let cancel = CancellationToken::new();
        let runner = tokio::spawn({
            let pool = Arc::clone(&pool);
            let cancel = cancel.clone();
            async move { pool.run(&cancel).await }
        });
        let done = Arc::new(AtomicUsize::new(0));
        let (all_tx, mut all_rx) = mpsc::channel(20);
        for _ in 0..20 {
            let done = Arc::clone(&done);
            let all_tx = all_tx.clone();
            let job: Job = Box::pin(async move {
                done.fetch_add(1, Ordering::SeqCst);
                let _ = all_tx.send(()).await;
            });
            pool.submit(job, &cancel).await.unwrap();
        }
        for _ in 0..20 {
            tokio::time::timeout(Duration::from_secs(5), all_rx.recv())
                .await
                .unwrap()
                .unwrap();
        }
        assert_eq!(done.load(Ordering::SeqCst), 20);
        cancel.cancel();
        let result = tokio::time::timeout(Duration::from_secs(5), runner)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(result, Err(Error::Cancelled)));
    }
}
