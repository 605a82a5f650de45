//! One run: the cluster up, the changefeeds created, the writer and the faults for the run's
//! duration, then convergence, the oracles and the run's line.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cdc_etcd::{ConnectConfig, EtcdClient, GetOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::{self, CLUSTER_ID, CaptureSpec, start_capture};
use crate::faults::{self, Targets};
use crate::record::{self, Jsonl, PREFIXES, WRITERS, WriterProgress};

/// The changefeed into the file sink.
pub(crate) const FILE_CHANGEFEED: &str = "to-files";
/// The changefeed into the sink etcd, under [`MIRROR_PREFIX`].
pub(crate) const MIRROR_CHANGEFEED: &str = "to-etcd";
pub(crate) const MIRROR_PREFIX: &str = "/mirror/";
/// Spans per prefix of each changefeed.
const SPANS_PER_PREFIX: usize = 2;
/// The size of the file sink's tmpfs.
const SINK_FS_BYTES: u64 = 64 << 20;

/// What one run is asked to do.
pub(crate) struct RunConfig {
    pub(crate) seed: u64,
    pub(crate) duration: Duration,
    pub(crate) server_binary: PathBuf,
    pub(crate) dir: PathBuf,
    /// How long convergence may take after the last fault.
    pub(crate) converge_within: Duration,
    /// Keep the directory (the sink's files included) even when the run passes.
    pub(crate) keep: bool,
}

/// What the oracles and the convergence found.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) faults: usize,
    pub(crate) lost: u64,
    pub(crate) reordered: u64,
    pub(crate) double_run: u64,
    pub(crate) checkpoint_regressions: u64,
    pub(crate) stale_owner_writes: u64,
    /// Seconds from the end of the last fault to convergence (the deadline when it never
    /// converged).
    pub(crate) recovery: f64,
    pub(crate) converged: bool,
    pub(crate) details: Vec<String>,
}

impl Outcome {
    pub(crate) fn failed(&self) -> bool {
        !self.converged
            || self.lost > 0
            || self.reordered > 0
            || self.double_run > 0
            || self.checkpoint_regressions > 0
            || self.stale_owner_writes > 0
    }
}

/// The file sink's directory: a small tmpfs when this machine lets us mount one (so that
/// "directory full" is a real ENOSPC), a plain directory otherwise.
fn mount_sink_fs(dir: &Path) -> Result<bool> {
    std::fs::create_dir_all(dir)?;
    let options = format!("size={SINK_FS_BYTES}");
    let mounted = nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some(options.as_str()),
    );
    Ok(mounted.is_ok())
}

/// Copies a tmpfs's contents next to it, unmounts it and puts the copy in its place, so a
/// kept run directory holds the sink's files.
fn unmount_sink_fs(dir: &Path, keep: bool) -> Result<()> {
    let copy = dir.with_extension("kept");
    if keep {
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(dir)
            .arg(&copy)
            .status()?;
        if !status.success() {
            bail!("copy {} failed", dir.display());
        }
        let _ = std::fs::remove_file(copy.join("filler"));
    }
    nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH)
        .with_context(|| format!("unmount {}", dir.display()))?;
    if keep {
        std::fs::remove_dir_all(dir)?;
        std::fs::rename(&copy, dir)?;
    }
    Ok(())
}

/// Unmounts the sink's tmpfs of the run in `dir`, if it is mounted.
pub(crate) fn unmount_sink(dir: &Path) {
    let _ = nix::mount::umount2(&dir.join("sink"), nix::mount::MntFlags::MNT_DETACH);
}

/// Removes what a crashed earlier run may have left in `dir` (a mounted tmpfs included).
pub(crate) fn clean(dir: &Path) -> Result<()> {
    unmount_sink(dir);
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err).with_context(|| format!("remove {}", dir.display())),
    }
}

/// Runs one seed; the run directory is left for the caller to keep or remove.
pub(crate) async fn run(config: &RunConfig) -> Result<Outcome> {
    clean(&config.dir)?;
    std::fs::create_dir_all(&config.dir)?;
    let sink_root = config.dir.join("sink");
    let mounted = mount_sink_fs(&sink_root)?;
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    let result = Box::pin(run_mounted(config, &sink_root, mounted, &tracker, &cancel)).await;
    cancel.cancel();
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(30), tracker.wait()).await;
    if mounted {
        let keep = config.keep || result.as_ref().map_or(true, Outcome::failed);
        unmount_sink_fs(&sink_root, keep)?;
    }
    result
}

async fn run_mounted(
    config: &RunConfig,
    sink_root: &Path,
    mounted: bool,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> Result<Outcome> {
    let dir = &config.dir;
    let mut rng = StdRng::seed_from_u64(config.seed);
    let members = cluster::start_etcd(dir, "etcd", 3).await?;
    let endpoints: Vec<String> = members.iter().map(|member| member.endpoint()).collect();
    let mut sinks = cluster::start_etcd(dir, "sink-etcd", 1).await?;
    let sink_etcd = sinks.pop().context("the sink etcd")?;
    let sink_endpoint = sink_etcd.endpoint();
    let admin = EtcdClient::connect(
        &endpoints,
        ConnectConfig {
            request_timeout: Duration::from_secs(3),
            ..ConnectConfig::default()
        },
    )
    .await?;
    let http = reqwest::Client::new();

    let metadata = Jsonl::create(&dir.join("metadata.jsonl"))?;
    let checkpoints: record::Checkpoints = Arc::default();
    let recorder_stop = CancellationToken::new();
    tracker.spawn(record::metadata_recorder(
        endpoints.clone(),
        1,
        metadata.clone(),
        checkpoints.clone(),
        recorder_stop.clone(),
    ));

    let captures = rng.random_range(3..=5);
    let slots = cluster::make_slots(captures, &members, tracker, cancel).await?;
    let targets = Arc::new(Targets {
        slots: slots.into_iter().map(Mutex::new).collect(),
        members: members.into_iter().map(Mutex::new).collect(),
        etcd_cluster: Mutex::new(()),
        sink_etcd: Mutex::new(sink_etcd),
        file_sink: Mutex::new(mounted.then(|| sink_root.to_owned())),
        admin: admin.clone(),
        http: http.clone(),
        binary: config.server_binary.clone(),
        run_dir: dir.clone(),
        next_process: Default::default(),
        deaths: Jsonl::create(&dir.join("deaths.jsonl"))?,
        faults: Jsonl::create(&dir.join("faults.jsonl"))?,
        checkpoints: checkpoints.clone(),
    });
    let spec = CaptureSpec {
        binary: &config.server_binary,
        run_dir: dir,
    };
    for slot in &targets.slots {
        let mut slot = slot.lock().await;
        start_capture(&spec, &mut slot, targets.process_number()).await?;
    }
    let result = drive(
        config,
        &targets,
        &admin,
        &http,
        &endpoints,
        &sink_endpoint,
        sink_root,
        &checkpoints,
        tracker,
    )
    .await;
    recorder_stop.cancel();
    // The captures stop (their span logs end with their stops), the logs are complete, then
    // the oracles read them and the etcds; the etcd members stop last.
    // SIGKILL, each death recorded: their open intervals end there.
    for slot in &targets.slots {
        if let Some(mut process) = slot.lock().await.process.take() {
            if process.paused {
                let _ = process.resume();
            }
            process.kill(&targets.deaths).await?;
        }
    }
    metadata.flush()?;
    targets.deaths.flush()?;
    targets.faults.flush()?;
    let result = match result {
        Ok(mut outcome) => {
            crate::judge::judge(dir, &endpoints, &mut outcome).await;
            Ok(outcome)
        }
        Err(err) => Err(err),
    };
    for member in &targets.members {
        let _ = member.lock().await.kill().await;
    }
    let _ = targets.sink_etcd.lock().await.kill().await;
    result
}

#[allow(clippy::too_many_arguments, reason = "the run's parts, passed once")]
async fn drive(
    config: &RunConfig,
    targets: &Arc<Targets>,
    admin: &EtcdClient,
    http: &reqwest::Client,
    endpoints: &[String],
    sink_endpoint: &str,
    sink_root: &Path,
    checkpoints: &record::Checkpoints,
    tracker: &TaskTracker,
) -> Result<Outcome> {
    let dir = &config.dir;
    wait_converged(targets, http, None, Duration::from_secs(60))
        .await
        .context("the cluster starts")?;
    // Keys to split the spans on: every key exists once before the changefeeds start.
    for prefix in 0..PREFIXES.len() {
        for i in 0..record::KEYS {
            let key = record::key(prefix, i);
            retried(|| admin.put(key.clone(), "initial", 0)).await?;
        }
    }
    let from = store_revision(admin).await?;
    let sink_host = sink_endpoint.trim_start_matches("http://");
    let changefeeds = [
        (
            FILE_CHANGEFEED,
            format!(
                "file://{}?flush-interval=200ms&max-file-size=256KiB",
                sink_root.display()
            ),
        ),
        (
            MIRROR_CHANGEFEED,
            format!("etcd://{sink_host}{MIRROR_PREFIX}?flush-interval=200ms"),
        ),
    ];
    for (id, sink_uri) in &changefeeds {
        let body = json!({
            "changefeed_id": id,
            "start_ts": from,
            "sink_uri": sink_uri,
            "replica_config": {
                "filter": {"rules": PREFIXES},
                "scheduler": {"spans_per_prefix": SPANS_PER_PREFIX},
            },
        });
        create_changefeed(targets, http, &body).await?;
    }
    std::fs::write(
        dir.join("changefeeds.json"),
        serde_json::to_string_pretty(&json!([
            {"id": FILE_CHANGEFEED, "prefixes": PREFIXES, "sink": "file",
             "dir": sink_root.join(FILE_CHANGEFEED), "start_revision": from},
            {"id": MIRROR_CHANGEFEED, "prefixes": PREFIXES, "sink": "etcd",
             "endpoints": [sink_endpoint], "sink_prefix": MIRROR_PREFIX, "start_revision": from},
        ]))?,
    )?;
    wait_converged(targets, http, Some(0), Duration::from_secs(60))
        .await
        .context("the changefeeds start")?;

    // The writer and the sink sampler for the whole run.
    let writer_log = Jsonl::create(&dir.join("writer.jsonl"))?;
    let samples = Jsonl::create(&dir.join("sink_samples.jsonl"))?;
    let progress = WriterProgress::default();
    let writer_stop = CancellationToken::new();
    let mut writers = Vec::new();
    for id in 0..WRITERS {
        writers.push(tokio::spawn(record::writer(
            id,
            endpoints.to_vec(),
            config.seed,
            writer_log.clone(),
            progress.clone(),
            writer_stop.clone(),
        )));
    }
    let sampler_stop = CancellationToken::new();
    tracker.spawn(record::sink_sampler(
        FILE_CHANGEFEED.to_owned(),
        sink_root.join(FILE_CHANGEFEED),
        samples.clone(),
        checkpoints.clone(),
        sampler_stop.clone(),
    ));

    // The faults, each at its time, overlapping.
    let started = Instant::now();
    let schedule = faults::schedule(config.seed, config.duration);
    let mut running = Vec::new();
    for fault in schedule {
        let due = started + fault.at;
        tokio::time::sleep_until(due.into()).await;
        let targets = targets.clone();
        running.push(tokio::spawn(async move { targets.run(&fault).await }));
    }
    tokio::time::sleep_until((started + config.duration).into()).await;
    let mut injected = 0;
    let mut errors = Vec::new();
    for fault in running {
        match fault.await? {
            Ok(true) => injected += 1,
            Ok(false) => {}
            Err(err) => errors.push(format!("{err:#}")),
        }
    }
    let last_fault_end = Instant::now();
    writer_stop.cancel();
    for writer in writers {
        writer.await??;
    }
    writer_log.flush()?;

    // Convergence: every change written so far replicated, one owner, every capture in.
    let target = u64::try_from(store_revision(admin).await?)?;
    let converged = wait_converged(targets, http, Some(target), config.converge_within).await;
    let recovery = last_fault_end.elapsed().as_secs_f64();
    // The last status writes reach the recorder and the sampler.
    tokio::time::sleep(Duration::from_secs(1)).await;
    sampler_stop.cancel();
    samples.flush()?;
    let mut outcome = Outcome {
        faults: injected,
        recovery,
        converged: converged.is_ok(),
        details: errors,
        ..Outcome::default()
    };
    if let Err(err) = converged {
        outcome.details.push(format!("no convergence: {err:#}"));
    }
    outcome.details.push(format!(
        "writer: {} acknowledged ops, last revision {}; target {target}",
        progress.acked(),
        progress.last_revision()
    ));
    Ok(outcome)
}

/// Retries an etcd call for up to 30 s: right after the faults a member may still be starting
/// and the client's connection to it broken.
async fn retried<T, F, Fut>(mut call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = cdc_etcd::Result<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(err) if Instant::now() < deadline => {
                let _ = err;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// The upstream's store revision.
async fn store_revision(admin: &EtcdClient) -> Result<i64> {
    Ok(retried(|| admin.get("/", GetOptions::default()))
        .await?
        .revision)
}

async fn create_changefeed(targets: &Targets, http: &reqwest::Client, body: &Value) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        for slot in &targets.slots {
            let slot = slot.lock().await;
            let Some(process) = slot.process.as_ref() else {
                continue;
            };
            let sent = http
                .post(format!("http://{}/api/v2/changefeeds", process.addr))
                .json(body)
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            match sent {
                Ok(response) if response.status().is_success() => return Ok(()),
                Ok(response) => {
                    last = format!(
                        "{}: {}",
                        response.status(),
                        response.text().await.unwrap_or_default()
                    );
                }
                Err(err) => last = err.to_string(),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("create changefeed {body}: {last}")
}

/// Waits until one capture is owner, every running capture is registered and, when `target` is
/// set, both changefeeds replicate every span on a running capture with a checkpoint at or past
/// `target`.
async fn wait_converged(
    targets: &Targets,
    http: &reqwest::Client,
    target: Option<u64>,
    within: Duration,
) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let last = match converged(targets, http, target).await {
            Ok(()) => return Ok(()),
            Err(err) => format!("{err:#}"),
        };
        if Instant::now() > deadline {
            bail!("not converged within {within:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn converged(targets: &Targets, http: &reqwest::Client, target: Option<u64>) -> Result<()> {
    let mut ids = BTreeSet::new();
    let mut owners = Vec::new();
    let mut any = None;
    for slot in &targets.slots {
        let slot = slot.lock().await;
        let process = slot.process.as_ref().context("a slot without a process")?;
        let status = process
            .get(http, "/status")
            .await
            .with_context(|| format!("capture-{} answers /status", process.n))?;
        let id = status["id"].as_str().unwrap_or_default().to_owned();
        if id.is_empty() {
            bail!("capture-{} has no capture ID yet", process.n);
        }
        if status["is_owner"] == true {
            owners.push(id.clone());
        }
        ids.insert(id);
        any = Some(process.addr);
    }
    if owners.len() != 1 {
        bail!("owners {owners:?}");
    }
    let registered: BTreeSet<String> = targets
        .admin
        .get(
            format!("/tidb/cdc/{CLUSTER_ID}/__cdc_meta__/capture/"),
            GetOptions::prefix(),
        )
        .await?
        .kvs
        .iter()
        .filter_map(|kv| {
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            key.rsplit('/').next().map(str::to_owned)
        })
        .collect();
    if !ids.is_subset(&registered) {
        bail!("captures {ids:?}, registered {registered:?}");
    }
    let Some(target) = target else { return Ok(()) };
    let addr = any.context("no capture")?;
    for id in [FILE_CHANGEFEED, MIRROR_CHANGEFEED] {
        let detail: Value = http
            .get(format!("http://{addr}/api/v2/changefeeds/{id}"))
            .timeout(Duration::from_secs(3))
            .send()
            .await?
            .json()
            .await?;
        let spans = detail["spans"].as_array().context("spans")?;
        let all = spans.len() == PREFIXES.len() * SPANS_PER_PREFIX
            && spans.iter().all(|span| {
                span["state"] == "replicating"
                    && span["capture_id"]
                        .as_str()
                        .is_some_and(|capture| ids.contains(capture))
            });
        if !all {
            bail!("{id}: spans {}", detail["spans"]);
        }
        let checkpoint = detail["checkpoint_ts"].as_u64().unwrap_or(0);
        if checkpoint < target {
            bail!(
                "{id}: checkpoint {checkpoint} < {target} (state {})",
                detail["state"]
            );
        }
    }
    Ok(())
}
