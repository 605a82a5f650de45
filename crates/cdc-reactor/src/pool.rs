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

    /// What the jobs of the test share: how many run now, the most that ever ran at once,
    /// and the permits that let one job finish each.
    struct Jobs {
        running: AtomicUsize,
        most_running: AtomicUsize,
        finished: AtomicUsize,
        finish: tokio::sync::Semaphore,
        changed: tokio::sync::Notify,
    }

    impl Jobs {
        fn new() -> Jobs {
            Jobs {
                running: AtomicUsize::new(0),
                most_running: AtomicUsize::new(0),
                finished: AtomicUsize::new(0),
                finish: tokio::sync::Semaphore::new(0),
                changed: tokio::sync::Notify::new(),
            }
        }

        async fn wait_until(&self, what: &str, check: impl Fn(&Jobs) -> bool) {
            tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    let changed = self.changed.notified();
                    if check(self) {
                        return;
                    }
                    changed.await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("{what} in time"));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_jobs_on_up_to_n_workers_until_cancelled() {
        const WORKERS: usize = 3;
        const N_JOBS: usize = 10;
        let pool = Arc::new(InitPool::new(WORKERS));
        let cancel = CancellationToken::new();
        let runner = tokio::spawn({
            let pool = Arc::clone(&pool);
            let cancel = cancel.clone();
            async move { pool.run(&cancel).await }
        });
        let jobs = Arc::new(Jobs::new());
        for _ in 0..N_JOBS {
            let jobs = Arc::clone(&jobs);
            let job: Job = Box::pin(async move {
                let running = jobs.running.fetch_add(1, Ordering::SeqCst) + 1;
                jobs.most_running.fetch_max(running, Ordering::SeqCst);
                jobs.changed.notify_waiters();
                jobs.finish
                    .acquire()
                    .await
                    .expect("the semaphore stays open")
                    .forget();
                jobs.running.fetch_sub(1, Ordering::SeqCst);
                jobs.finished.fetch_add(1, Ordering::SeqCst);
                jobs.changed.notify_waiters();
            });
            pool.submit(job, &cancel).await.unwrap();
        }
        // Every worker takes a job, and no other job starts while they all wait.
        jobs.wait_until("every worker busy", |jobs| {
            jobs.running.load(Ordering::SeqCst) == WORKERS
        })
        .await;
        // Then one job finishes at a time, and a freed worker takes the next one.
        for n in 1..=N_JOBS {
            jobs.finish.add_permits(1);
            jobs.wait_until("one more job finished", |jobs| {
                jobs.finished.load(Ordering::SeqCst) == n
            })
            .await;
            let queued = N_JOBS - n;
            jobs.wait_until("a freed worker takes the next job", |jobs| {
                jobs.running.load(Ordering::SeqCst) == WORKERS.min(queued)
            })
            .await;
        }
        assert_eq!(
            jobs.most_running.load(Ordering::SeqCst),
            WORKERS,
            "never more jobs at once than workers"
        );
        cancel.cancel();
        let result = tokio::time::timeout(Duration::from_secs(5), runner)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(result, Err(Error::Cancelled)));
    }
}
