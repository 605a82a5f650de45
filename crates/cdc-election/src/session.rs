//! [`Session`]: an etcd lease kept alive by a watchdog that notices its loss within one TTL.
//!
//! The keep-alive runs on a dedicated OS thread with its own current-thread tokio runtime and its
//! own etcd connection, so a busy or blocked application runtime cannot delay a renewal (a
//! starved keep-alive is the classic cause of spurious lease loss). The thread renews every
//! TTL/3 and keeps a deadline: one granted TTL after the *send* of the last acknowledged
//! renewal. etcd expires the lease no earlier than that, so reporting loss at the deadline is
//! never late. A broken stream is reopened until the deadline (a restarted member keeps its
//! leases); a TTL-0 answer, an answer for another lease, or "lease not found" is loss at once.
//!
//! Nothing is revoked on drop: a process that dies must look like a crash to the cluster, and
//! only [`Session::close`] revokes. [`Session::close`] also joins the keep-alive thread; dropping
//! a session stops the thread without waiting for it (see `Drop`).
//!
//! A grant that is cancelled (its future dropped) after etcd granted the lease stops the keeper,
//! which then revokes the lease: no key is attached to it yet and nobody will ever hold it. A
//! grant dropped while the `LeaseGrant` call itself is in flight cannot know the id: that lease
//! expires by its TTL.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cdc_etcd::retry::{Backoff, BackoffPolicy, Jitter};
use cdc_etcd::{ConnectConfig, EtcdClient, KeepAliveResponse, LeaseId, LeaseKeepAlive};
use cdc_model::ErrorReport;
use tokio::sync::oneshot;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::hooks::{self, KeeperHooks};

/// TiCDC's default `capture-session-ttl`, in seconds.
pub const DEFAULT_SESSION_TTL_SECS: i64 = 10;
/// The smallest `capture-session-ttl` TiCDC accepts (PD's minimum lease TTL), in seconds.
pub const MIN_SESSION_TTL_SECS: i64 = 5;

/// The shortest renewal period, whatever the TTL.
const MIN_RENEW_INTERVAL: Duration = Duration::from_millis(200);
/// Pacing of keep-alive stream reconnects: from 100 ms, doubling up to 1 s, each pause up to
/// half as long again as its step.
const RECONNECT_BACKOFF: BackoffPolicy = BackoffPolicy {
    base: Duration::from_millis(100),
    max: Duration::from_secs(1),
    jitter: Jitter::Lengthen,
};

/// How a session is granted and closed.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// The requested TTL in seconds (`capture-session-ttl`).
    pub ttl_secs: i64,
    /// A requested TTL below this is raised to [`DEFAULT_SESSION_TTL_SECS`] with a warning.
    /// TiCDC uses [`MIN_SESSION_TTL_SECS`]; tests lower it to reach etcd's own floor.
    pub min_ttl_secs: i64,
    /// The bound on the revoke done by [`Session::close`] (and on its join of the keep-alive
    /// thread).
    pub revoke_timeout: Duration,
}

impl SessionConfig {
    /// TiCDC's rules for `capture-session-ttl = ttl_secs`.
    pub fn new(ttl_secs: i64) -> SessionConfig {
        SessionConfig {
            ttl_secs,
            min_ttl_secs: MIN_SESSION_TTL_SECS,
            revoke_timeout: Duration::from_secs(5),
        }
    }

    /// The TTL to request: `ttl_secs`, or the default when it is below the minimum.
    pub fn effective_ttl_secs(&self) -> i64 {
        if self.ttl_secs < self.min_ttl_secs {
            tracing::warn!(
                configured = self.ttl_secs,
                minimum = self.min_ttl_secs,
                using = DEFAULT_SESSION_TTL_SECS,
                "capture-session-ttl is below the minimum; using the default"
            );
            DEFAULT_SESSION_TTL_SECS
        } else {
            self.ttl_secs
        }
    }
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// [`Session::close`] stopped the keep-alive and revoked the lease.
    Closed,
    /// No renewal was acknowledged within one TTL of its send.
    DeadlineExceeded,
    /// etcd answered that the lease is gone (a TTL-0 answer or "lease not found").
    LeaseNotFound,
    /// etcd answered about another lease on our stream.
    ForeignLease {
        /// The lease the answer was about.
        id: LeaseId,
    },
}

impl SessionEnd {
    /// Whether the lease was lost, as opposed to closed on purpose.
    pub fn is_loss(&self) -> bool {
        match self {
            SessionEnd::Closed => false,
            SessionEnd::DeadlineExceeded
            | SessionEnd::LeaseNotFound
            | SessionEnd::ForeignLease { .. } => true,
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    end: Mutex<Option<SessionEnd>>,
    renewals: AtomicU64,
    /// Set when the grant was dropped before the session was built: nobody holds the lease.
    abandoned: AtomicBool,
}

impl Shared {
    fn set_end(&self, end: SessionEnd) {
        let mut slot = self.end.lock().unwrap_or_else(|poison| poison.into_inner());
        slot.get_or_insert(end);
    }
}

/// A wait-only view of a session's end ([`Session::done`]): it can be awaited and checked,
/// never used to end the session.
#[derive(Clone, Debug)]
pub struct SessionDone {
    token: CancellationToken,
}

impl SessionDone {
    /// Whether the session has ended.
    pub fn is_done(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Waits until the session ends.
    ///
    /// # Cancel safety
    /// Cancel-safe: dropping the future loses nothing.
    pub async fn wait(&self) {
        self.token.cancelled().await;
    }

    /// A new token that is cancelled when the session ends, for APIs that take a
    /// [`CancellationToken`]. Cancelling it affects only it and its children, never the session.
    pub fn child_token(&self) -> CancellationToken {
        self.token.child_token()
    }
}

/// A granted lease and the keep-alive that holds it. See the module docs.
#[derive(Debug)]
pub struct Session {
    client: EtcdClient,
    lease_id: LeaseId,
    ttl_secs: i64,
    revoke_timeout: Duration,
    done: CancellationToken,
    stop: CancellationToken,
    shared: Arc<Shared>,
    /// Taken and joined by [`Session::close`].
    keeper: Mutex<Option<KeeperThread>>,
    closed: AtomicBool,
}

/// The keep-alive thread and the signal it sends as its last act.
#[derive(Debug)]
struct KeeperThread {
    thread: std::thread::JoinHandle<()>,
    exited: oneshot::Receiver<()>,
}

impl KeeperThread {
    /// Waits up to `limit` for the thread to end, then joins it (reporting a panic). A thread
    /// that does not end in time is left detached, with a warning.
    async fn join(self, limit: Duration) {
        if tokio::time::timeout(limit, self.exited).await.is_err() {
            tracing::warn!(
                ?limit,
                "the keep-alive thread did not end in time; detached"
            );
            return;
        }
        // The thread has signalled (or unwound past) its last statement: the join returns at
        // once, but it is still a blocking call, so it runs on the blocking pool.
        let thread = self.thread;
        match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(())) => {}
            Ok(Err(_panic)) => tracing::error!("the keep-alive thread panicked"),
            Err(err) => tracing::warn!(error = %ErrorReport(&err), "join the keep-alive thread"),
        }
    }
}

/// Armed from the keeper's spawn until the session is built. Dropped armed (the grant's caller
/// was cancelled), it marks the lease abandoned and stops the keeper, which then revokes it.
struct PendingGrant {
    stop: CancellationToken,
    shared: Arc<Shared>,
    armed: bool,
}

impl Drop for PendingGrant {
    fn drop(&mut self) {
        if self.armed {
            // Before `stop`: the keeper reads the flag once it has seen `stop`.
            self.shared.abandoned.store(true, Ordering::SeqCst);
            self.stop.cancel();
        }
    }
}

impl Session {
    /// Grants a lease of `capture-session-ttl = ttl_secs` and starts keeping it alive.
    pub async fn grant(client: EtcdClient, ttl_secs: i64) -> Result<Session> {
        Session::grant_with(client, SessionConfig::new(ttl_secs)).await
    }

    /// Grants a lease with explicit settings and starts keeping it alive. Returns once the
    /// keep-alive stream is open; on failure the lease is revoked (bounded) before returning.
    pub async fn grant_with(client: EtcdClient, config: SessionConfig) -> Result<Session> {
        // Boxed: the grant's future is large, and this one would inflate every caller's.
        Box::pin(Session::grant_observed(client, config, hooks::none())).await
    }

    /// [`Session::grant_with`], its keeper observed by `hooks`.
    pub(crate) async fn grant_observed(
        client: EtcdClient,
        config: SessionConfig,
        hooks: Arc<dyn KeeperHooks>,
    ) -> Result<Session> {
        let requested = config.effective_ttl_secs();
        let sent = Instant::now();
        // Boxed: etcd-client's futures are large, and this one would inflate every caller's.
        let grant = Box::pin(client.lease_grant(requested)).await?;
        if grant.ttl <= 0 {
            return Err(Error::LeaseExpired { lease_id: grant.id });
        }
        if grant.ttl != requested {
            tracing::warn!(
                requested,
                granted = grant.ttl,
                lease_id = %format_args!("{:x}", grant.id),
                "etcd granted another TTL than requested; timers use the granted one"
            );
        }
        let ttl = Duration::from_secs(grant.ttl.unsigned_abs());
        let done = CancellationToken::new();
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared::default());
        let keeper = Keeper {
            endpoints: client.endpoints().split(',').map(str::to_owned).collect(),
            connect: client.config().clone(),
            lease_id: grant.id,
            ttl,
            deadline: sent + ttl,
            revoke_timeout: config.revoke_timeout,
            stop: stop.clone(),
            done: done.clone(),
            shared: Arc::clone(&shared),
            hooks,
        };
        let (ready_tx, ready_rx) = oneshot::channel();
        let (exited_tx, exited_rx) = oneshot::channel();
        // Linux keeps 15 bytes of a thread name: the low 32 bits tell a member's leases apart.
        let spawned = std::thread::Builder::new()
            .name(format!("lease-{:08x}", grant.id as u32))
            .spawn(move || keeper.run_on_own_runtime(ready_tx, exited_tx));
        let keeper = match spawned {
            Ok(thread) => KeeperThread {
                thread,
                exited: exited_rx,
            },
            Err(err) => {
                Box::pin(revoke_bounded(&client, grant.id, config.revoke_timeout)).await;
                return Err(Error::Thread(err));
            }
        };
        // Declared after `ready_rx`, so a dropped grant drops it first: the keeper sees the
        // lease abandoned no later than it sees the handshake answer go nowhere.
        let mut pending = PendingGrant {
            stop: stop.clone(),
            shared: Arc::clone(&shared),
            armed: true,
        };
        let started = ready_rx.await.unwrap_or_else(|_| {
            Err(Error::Thread(std::io::Error::other(
                "the keep-alive thread exited before starting",
            )))
        });
        if let Err(err) = started {
            // The keeper has answered (or unwound) and is ending.
            keeper.join(config.revoke_timeout).await;
            Box::pin(revoke_bounded(&client, grant.id, config.revoke_timeout)).await;
            return Err(err);
        }
        pending.armed = false;
        tracing::info!(
            lease_id = %format_args!("{:x}", grant.id),
            ttl_secs = grant.ttl,
            "session started"
        );
        Ok(Session {
            client,
            lease_id: grant.id,
            ttl_secs: grant.ttl,
            revoke_timeout: config.revoke_timeout,
            done,
            stop,
            shared,
            keeper: Mutex::new(Some(keeper)),
            closed: AtomicBool::new(false),
        })
    }

    /// The lease.
    pub fn lease_id(&self) -> LeaseId {
        self.lease_id
    }

    /// The TTL etcd granted, in seconds (every timer uses it).
    pub fn ttl(&self) -> i64 {
        self.ttl_secs
    }

    /// The connection the lease was granted on (elections on this session use it).
    pub fn client(&self) -> &EtcdClient {
        &self.client
    }

    /// Signalled when the session ends: on loss of the lease, on [`Session::close`], or when
    /// the session is dropped. [`Session::end`] tells which. Holders can wait, not end it.
    pub fn done(&self) -> SessionDone {
        SessionDone {
            token: self.done.clone(),
        }
    }

    /// How the session ended, or `None` while it runs.
    pub fn end(&self) -> Option<SessionEnd> {
        *self
            .shared
            .end
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// How many renewals etcd has acknowledged (the keep-alive handshakes included).
    pub fn renewals(&self) -> u64 {
        self.shared.renewals.load(Ordering::Relaxed)
    }

    /// Stops the keep-alive, joins its thread, and revokes the lease, which deletes every key
    /// attached to it. The join and the revoke are each bounded by
    /// [`SessionConfig::revoke_timeout`]; a lease that is already gone is fine. Calling it again
    /// does nothing.
    pub async fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.stop.cancel();
        let keeper = self
            .keeper
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take();
        if let Some(keeper) = keeper {
            // The keeper observes `stop` at every await point; the join is bounded all the same.
            keeper.join(self.revoke_timeout).await;
        }
        self.shared.set_end(SessionEnd::Closed);
        let revoked =
            tokio::time::timeout(self.revoke_timeout, self.client.lease_revoke(self.lease_id))
                .await;
        self.done.cancel();
        match revoked {
            Ok(Ok(())) | Ok(Err(cdc_etcd::Error::LeaseNotFound { .. })) => {
                tracing::info!(lease_id = %format_args!("{:x}", self.lease_id), "session closed");
                Ok(())
            }
            Ok(Err(err)) => Err(err.into()),
            Err(_) => Err(Error::Etcd(cdc_etcd::Error::Timeout {
                op: "lease_revoke",
                endpoints: self.client.endpoints().to_owned(),
                after: self.revoke_timeout,
            })),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Stop renewing but revoke nothing: the lease expires as if the process had died.
        // The keeper thread sees `stop` at its next await point and ends on its own; it is
        // detached here on purpose (its handle dropped with `self.keeper`): joining would block
        // the dropping thread, often an async worker, on another thread's runtime shutdown.
        // [`Session::close`] is the way to wait for it.
        self.stop.cancel();
        self.done.cancel();
    }
}

async fn revoke_bounded(client: &EtcdClient, lease_id: LeaseId, timeout: Duration) {
    match tokio::time::timeout(timeout, client.lease_revoke(lease_id)).await {
        Ok(Ok(())) | Ok(Err(cdc_etcd::Error::LeaseNotFound { .. })) => {
            tracing::info!(lease_id = %format_args!("{lease_id:x}"), "revoked an unused lease");
        }
        Ok(Err(err)) => tracing::warn!(error = %ErrorReport(&err), "revoke an unused lease"),
        Err(_) => tracing::warn!(?timeout, "revoke an unused lease timed out"),
    }
}

/// What the keep-alive loop needs from etcd: the seam that lets unit tests script answers.
trait LeaseTransport {
    type Stream: LeaseStream;

    /// Opens a keep-alive stream; its handshake is one acknowledged renewal.
    async fn open(&self, lease_id: LeaseId) -> cdc_etcd::Result<Self::Stream>;
}

/// An open keep-alive stream ([`LeaseKeepAlive`] in production).
trait LeaseStream {
    async fn send(&mut self) -> cdc_etcd::Result<()>;

    /// Cancel-safe.
    async fn next(&mut self) -> cdc_etcd::Result<Option<KeepAliveResponse>>;
}

impl LeaseTransport for EtcdClient {
    type Stream = LeaseKeepAlive;

    async fn open(&self, lease_id: LeaseId) -> cdc_etcd::Result<LeaseKeepAlive> {
        self.lease_keep_alive(lease_id).await
    }
}

impl LeaseStream for LeaseKeepAlive {
    async fn send(&mut self) -> cdc_etcd::Result<()> {
        LeaseKeepAlive::send(self).await
    }

    async fn next(&mut self) -> cdc_etcd::Result<Option<KeepAliveResponse>> {
        LeaseKeepAlive::next(self).await
    }
}

/// The keep-alive loop, run on its own thread.
struct Keeper {
    endpoints: Vec<String>,
    connect: ConnectConfig,
    lease_id: LeaseId,
    ttl: Duration,
    /// The lease is surely alive until then: one TTL after the send of the last acknowledged
    /// renewal (armed by the grant).
    deadline: Instant,
    /// The bound on the revoke of an abandoned lease.
    revoke_timeout: Duration,
    stop: CancellationToken,
    done: CancellationToken,
    shared: Arc<Shared>,
    /// Observes the handshake ([`hooks::NoHooks`] but in tests).
    hooks: Arc<dyn KeeperHooks>,
}

/// Why a keep-alive stream could not be opened.
enum OpenFailure {
    Stopped,
    Deadline,
    /// etcd answered "lease not found".
    Gone,
    Failed(cdc_etcd::Error),
}

/// What one turn of the loop observed.
enum Step {
    Stop,
    Deadline,
    Renew,
    Answer(cdc_etcd::Result<Option<KeepAliveResponse>>),
}

impl Keeper {
    fn run_on_own_runtime(self, ready: oneshot::Sender<Result<()>>, exited: oneshot::Sender<()>) {
        // However the keeper ends, a panic included, nobody renews the lease any more: say so.
        let done_on_exit = self.done.clone().drop_guard();
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => {
                runtime.block_on(self.run(ready));
                // Shut the runtime (and the connection's tasks) down before signalling the end.
                drop(runtime);
            }
            Err(err) => {
                let _ = ready.send(Err(Error::Thread(err)));
            }
        }
        drop(done_on_exit);
        let _ = exited.send(());
    }

    async fn run(mut self, ready: oneshot::Sender<Result<()>>) {
        // Our own connection: its HTTP/2 task runs on this runtime, not the application's.
        // (Lazy, so it fails only on malformed endpoints; bounded by the connect timeout.)
        let client = match EtcdClient::connect(&self.endpoints, self.connect.clone()).await {
            Ok(client) => client,
            Err(err) => {
                let _ = ready.send(Err(err.into()));
                return;
            }
        };
        let opened = self.open(&client).await;
        if let Some(pause) = self.hooks.before_answer(self.lease_id) {
            pause.await;
        }
        let (answer, stream) = match opened {
            Ok(stream) => (Ok(()), Some(stream)),
            Err(failure) => (
                Err(match failure {
                    OpenFailure::Stopped => Error::Cancelled,
                    OpenFailure::Deadline | OpenFailure::Gone => Error::LeaseExpired {
                        lease_id: self.lease_id,
                    },
                    OpenFailure::Failed(err) => err.into(),
                }),
                None,
            ),
        };
        let unheard = ready.send(answer).is_err();
        self.hooks.answered();
        let Some(stream) = stream.filter(|_| !unheard) else {
            // An unheard answer means the grant was dropped: nobody will ever hold this lease.
            if unheard || self.is_abandoned() {
                self.revoke_abandoned(&client).await;
            }
            return;
        };
        match self.keep_alive(&client, stream).await {
            Some(end) => {
                tracing::warn!(
                    lease_id = %format_args!("{:x}", self.lease_id),
                    ?end,
                    "session lost"
                );
                self.shared.set_end(end);
                self.done.cancel();
            }
            // Stopped before the session was built: the grant was dropped after our answer.
            None if self.is_abandoned() => self.revoke_abandoned(&client).await,
            None => {}
        }
    }

    fn is_abandoned(&self) -> bool {
        self.shared.abandoned.load(Ordering::SeqCst)
    }

    /// Revokes (bounded) the lease of a grant that never completed: no key of ours is attached.
    async fn revoke_abandoned(&self, client: &EtcdClient) {
        tracing::info!(
            lease_id = %format_args!("{:x}", self.lease_id),
            "the grant was cancelled; revoking its lease"
        );
        Box::pin(revoke_bounded(client, self.lease_id, self.revoke_timeout)).await;
    }

    /// Opens a keep-alive stream: its handshake is one acknowledged renewal.
    async fn open<T: LeaseTransport>(&mut self, transport: &T) -> Result<T::Stream, OpenFailure> {
        let sent = Instant::now();
        let opened = tokio::select! {
            biased;
            _ = self.stop.cancelled() => return Err(OpenFailure::Stopped),
            _ = sleep_until(self.deadline) => return Err(OpenFailure::Deadline),
            opened = transport.open(self.lease_id) => opened,
        };
        match opened {
            Ok(stream) => {
                self.acknowledged(sent);
                Ok(stream)
            }
            Err(cdc_etcd::Error::LeaseNotFound { .. }) => Err(OpenFailure::Gone),
            Err(err) => Err(OpenFailure::Failed(err)),
        }
    }

    fn acknowledged(&mut self, sent: Instant) {
        self.deadline = self.deadline.max(sent + self.ttl);
        self.shared.renewals.fetch_add(1, Ordering::Relaxed);
    }

    /// Renews until stopped (`None`) or lost (`Some(why)`).
    async fn keep_alive<T: LeaseTransport>(
        &mut self,
        transport: &T,
        stream: T::Stream,
    ) -> Option<SessionEnd> {
        let renew_every = (self.ttl / 3).max(MIN_RENEW_INTERVAL);
        let mut stream = Some(stream);
        // Send times of the renewals still waiting for their answer (answers come in order).
        let mut in_flight: VecDeque<Instant> = VecDeque::new();
        let mut next_renewal = Instant::now() + renew_every;
        let mut backoff = Backoff::new(RECONNECT_BACKOFF);
        loop {
            let Some(open) = stream.as_mut() else {
                tokio::select! {
                    biased;
                    _ = self.stop.cancelled() => return None,
                    _ = sleep_until(self.deadline) => return Some(SessionEnd::DeadlineExceeded),
                    _ = sleep(backoff.next_delay()) => {}
                }
                match self.open(transport).await {
                    Ok(reopened) => {
                        tracing::info!(
                            lease_id = %format_args!("{:x}", self.lease_id),
                            "keep-alive stream reopened"
                        );
                        stream = Some(reopened);
                        in_flight.clear();
                        next_renewal = Instant::now() + renew_every;
                        backoff.reset();
                    }
                    Err(OpenFailure::Stopped) => return None,
                    Err(OpenFailure::Deadline) => return Some(SessionEnd::DeadlineExceeded),
                    Err(OpenFailure::Gone) => return Some(SessionEnd::LeaseNotFound),
                    Err(OpenFailure::Failed(err)) => {
                        tracing::debug!(error = %ErrorReport(&err), "reopen the keep-alive stream");
                    }
                }
                continue;
            };
            let step = tokio::select! {
                biased;
                _ = self.stop.cancelled() => Step::Stop,
                _ = sleep_until(self.deadline) => Step::Deadline,
                answer = open.next() => Step::Answer(answer),
                _ = sleep_until(next_renewal) => Step::Renew,
            };
            match step {
                Step::Stop => return None,
                Step::Deadline => return Some(SessionEnd::DeadlineExceeded),
                Step::Renew => {
                    let sent = Instant::now();
                    // Scheduled from the send, not from the last answer (a delayed tick).
                    next_renewal = sent + renew_every;
                    let result = tokio::select! {
                        biased;
                        _ = self.stop.cancelled() => return None,
                        _ = sleep_until(self.deadline) => return Some(SessionEnd::DeadlineExceeded),
                        result = open.send() => result,
                    };
                    match result {
                        Ok(()) => in_flight.push_back(sent),
                        Err(err) => {
                            tracing::info!(error = %ErrorReport(&err), "keep-alive send failed; reopening");
                            stream = None;
                        }
                    }
                }
                Step::Answer(Ok(Some(answer))) => {
                    if answer.id != self.lease_id {
                        return Some(SessionEnd::ForeignLease { id: answer.id });
                    }
                    if answer.ttl <= 0 {
                        return Some(SessionEnd::LeaseNotFound);
                    }
                    match in_flight.pop_front() {
                        Some(sent) => self.acknowledged(sent),
                        None => tracing::debug!("keep-alive answer without a request"),
                    }
                }
                Step::Answer(Err(cdc_etcd::Error::LeaseNotFound { .. })) => {
                    return Some(SessionEnd::LeaseNotFound);
                }
                Step::Answer(Ok(None)) => {
                    tracing::info!("keep-alive stream ended; reopening");
                    stream = None;
                }
                Step::Answer(Err(err)) => {
                    tracing::info!(error = %ErrorReport(&err), "keep-alive stream broke; reopening");
                    stream = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
