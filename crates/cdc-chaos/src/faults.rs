//! The fault schedule drawn from the seed, and each fault's injection and repair.
//!
//! A schedule is a list of (start, kind, duration) drawn up front from the seed; faults overlap
//! freely, but a target (a capture slot, the etcd cluster, the sink etcd, the file sink) takes
//! one fault at a time: a fault whose target is busy when it falls due is skipped and not
//! counted.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use cdc_etcd::{EtcdClient, GetOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::sync::Mutex;

use crate::cluster::{CLUSTER_ID, CaptureSpec, EtcdMember, Slot, TTL_SECS, start_capture};
use crate::proxy::Mode;
use crate::record::{Checkpoints, Jsonl, mono_ns};

/// What a fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    KillCapture,
    KillOwner,
    PauseCaptureShort,
    PauseCaptureLong,
    RevokeLease,
    DeleteOwnerKey,
    DeleteCaptureKey,
    RestartEtcdMember,
    RestartEtcdLeader,
    KillEtcdMajority,
    PauseEtcdMember,
    CompactWhileLagging,
    SinkEtcdDown,
    FileSinkFull,
    CutEtcdLink,
    DelayEtcdLink,
    BlackHoleEtcdLink,
    CutPeerLink,
    DelayPeerLink,
    BlackHolePeerLink,
}

const KINDS: [Kind; 20] = [
    Kind::KillCapture,
    Kind::KillOwner,
    Kind::PauseCaptureShort,
    Kind::PauseCaptureLong,
    Kind::RevokeLease,
    Kind::DeleteOwnerKey,
    Kind::DeleteCaptureKey,
    Kind::RestartEtcdMember,
    Kind::RestartEtcdLeader,
    Kind::KillEtcdMajority,
    Kind::PauseEtcdMember,
    Kind::CompactWhileLagging,
    Kind::SinkEtcdDown,
    Kind::FileSinkFull,
    Kind::CutEtcdLink,
    Kind::DelayEtcdLink,
    Kind::BlackHoleEtcdLink,
    Kind::CutPeerLink,
    Kind::DelayPeerLink,
    Kind::BlackHolePeerLink,
];

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::KillCapture => "kill-capture",
            Kind::KillOwner => "kill-owner",
            Kind::PauseCaptureShort => "sigstop-capture-short",
            Kind::PauseCaptureLong => "sigstop-capture-long",
            Kind::RevokeLease => "revoke-lease",
            Kind::DeleteOwnerKey => "delete-owner-key",
            Kind::DeleteCaptureKey => "delete-capture-key",
            Kind::RestartEtcdMember => "restart-etcd-member",
            Kind::RestartEtcdLeader => "restart-etcd-leader",
            Kind::KillEtcdMajority => "kill-etcd-majority",
            Kind::PauseEtcdMember => "sigstop-etcd-member",
            Kind::CompactWhileLagging => "compact-while-lagging",
            Kind::SinkEtcdDown => "sink-etcd-down",
            Kind::FileSinkFull => "file-sink-full",
            Kind::CutEtcdLink => "cut-capture-etcd",
            Kind::DelayEtcdLink => "delay-capture-etcd",
            Kind::BlackHoleEtcdLink => "black-hole-capture-etcd",
            Kind::CutPeerLink => "cut-capture-capture",
            Kind::DelayPeerLink => "delay-capture-capture",
            Kind::BlackHolePeerLink => "black-hole-capture-capture",
        }
    }
}

/// One scheduled fault.
#[derive(Clone, Debug)]
pub(crate) struct Planned {
    pub(crate) at: Duration,
    pub(crate) kind: Kind,
    /// How long the fault lasts (a pause, a partition, a downtime); unused by instant faults.
    pub(crate) hold: Duration,
    /// Picks the target among the candidates when the fault falls due.
    pub(crate) pick: u64,
}

/// The schedule of a run: about one fault every two seconds of `duration`, each kind at
/// least once in every run long enough for all of them, in an order drawn from the seed.
pub(crate) fn schedule(seed: u64, duration: Duration) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(seed);
    let count = usize::try_from(duration.as_secs() / 2).unwrap_or(1).max(1);
    let mut kinds: Vec<Kind> = Vec::new();
    while kinds.len() < count {
        let mut round = KINDS.to_vec();
        // Fisher-Yates with the run's generator, so the order is the seed's.
        for i in (1..round.len()).rev() {
            let j = rng.random_range(0..=i);
            round.swap(i, j);
        }
        kinds.extend(round);
    }
    kinds.truncate(count);
    let window = duration.as_millis().max(1) as u64;
    let mut planned: Vec<Planned> = kinds
        .into_iter()
        .map(|kind| {
            let hold_ms = match kind {
                Kind::PauseCaptureShort => rng.random_range(1_000..(TTL_SECS * 1000 - 1500)),
                Kind::PauseCaptureLong => rng.random_range(TTL_SECS * 1000 + 1500..TTL_SECS * 2500),
                Kind::KillCapture | Kind::KillOwner => rng.random_range(500..3_000),
                Kind::KillEtcdMajority => rng.random_range(1_500..4_000),
                Kind::RestartEtcdMember | Kind::RestartEtcdLeader => rng.random_range(500..4_000),
                Kind::PauseEtcdMember => rng.random_range(1_000..6_000),
                Kind::CompactWhileLagging => rng.random_range(2_000..5_000),
                Kind::SinkEtcdDown | Kind::FileSinkFull => rng.random_range(1_000..5_000),
                Kind::CutEtcdLink | Kind::BlackHoleEtcdLink => rng.random_range(1_000..9_000),
                Kind::DelayEtcdLink | Kind::DelayPeerLink => rng.random_range(1_000..6_000),
                Kind::CutPeerLink | Kind::BlackHolePeerLink => rng.random_range(1_000..8_000),
                Kind::DeleteOwnerKey => rng.random_range(1_000..3_000),
                Kind::RevokeLease | Kind::DeleteCaptureKey => 0,
            };
            Planned {
                at: Duration::from_millis(rng.random_range(0..window)),
                kind,
                hold: Duration::from_millis(hold_ms),
                pick: rng.random(),
            }
        })
        .collect();
    planned.sort_by_key(|fault| fault.at);
    planned
}

/// Everything a fault may touch.
pub(crate) struct Targets {
    pub(crate) slots: Vec<Mutex<Slot>>,
    pub(crate) members: Vec<Mutex<EtcdMember>>,
    /// Held by every fault of the etcd cluster: one at a time, so a majority stays the rule.
    pub(crate) etcd_cluster: Mutex<()>,
    pub(crate) sink_etcd: Mutex<EtcdMember>,
    /// The file sink's tmpfs (when mounted) and the filler file that fills it.
    pub(crate) file_sink: Mutex<Option<PathBuf>>,
    pub(crate) admin: EtcdClient,
    pub(crate) http: reqwest::Client,
    pub(crate) binary: PathBuf,
    pub(crate) run_dir: PathBuf,
    pub(crate) next_process: AtomicUsize,
    pub(crate) deaths: Jsonl,
    pub(crate) faults: Jsonl,
    pub(crate) checkpoints: Checkpoints,
}

impl Targets {
    pub(crate) fn process_number(&self) -> usize {
        self.next_process.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Kills slot's process and starts a new one after `hold`.
    async fn kill_and_restart(&self, slot: &mut Slot, hold: Duration) -> Result<String> {
        let process = slot.process.take().context("no process in the slot")?;
        let n = process.n;
        process.kill(&self.deaths).await?;
        tokio::time::sleep(hold).await;
        let spec = CaptureSpec {
            binary: &self.binary,
            run_dir: &self.run_dir,
        };
        start_capture(&spec, slot, self.process_number()).await?;
        Ok(format!("capture-{n}"))
    }

    /// The slot whose process reports itself owner, locked; `None` when it is busy or unknown.
    async fn owner_slot(&self) -> Option<tokio::sync::MutexGuard<'_, Slot>> {
        for slot in &self.slots {
            let Ok(guard) = slot.try_lock() else { continue };
            let process = guard.process.as_ref()?;
            if process.paused {
                continue;
            }
            if let Some(status) = process.get(&self.http, "/status").await
                && status["is_owner"] == true
            {
                return Some(guard);
            }
        }
        None
    }

    /// A free slot with a running process, chosen by `pick`.
    fn free_slot(&self, pick: u64) -> Option<tokio::sync::MutexGuard<'_, Slot>> {
        let n = self.slots.len();
        (0..n).find_map(|i| {
            let slot = &self.slots[(pick as usize + i) % n];
            let guard = slot.try_lock().ok()?;
            guard.process.is_some().then_some(guard)
        })
    }

    async fn keys(&self, what: &str) -> Result<Vec<(String, i64, i64)>> {
        let prefix = format!("/tidb/cdc/{CLUSTER_ID}/__cdc_meta__/{what}/");
        let response = self.admin.get(prefix, GetOptions::prefix()).await?;
        Ok(response
            .kvs
            .into_iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    kv.lease,
                    kv.create_revision,
                )
            })
            .collect())
    }

    /// Runs one fault to its end (injected, held, repaired) and logs it; `Ok(false)` when its
    /// target was busy.
    pub(crate) async fn run(&self, fault: &Planned) -> Result<bool> {
        let start = mono_ns();
        let outcome = self.inject(fault).await;
        let end = mono_ns();
        let (target, error) = match outcome {
            Ok(None) => return Ok(false),
            Ok(Some(target)) => (target, None),
            Err(err) => ("?".to_owned(), Some(format!("{err:#}"))),
        };
        self.faults.write_now(&json!({
            "fault": fault.kind.name(),
            "target": target,
            "start_mono_ns": start,
            "end_mono_ns": end,
            "error": error,
        }))?;
        Ok(true)
    }

    /// Injects, holds and repairs; returns the target's name, `None` when it was busy.
    async fn inject(&self, fault: &Planned) -> Result<Option<String>> {
        let hold = fault.hold;
        let pick = fault.pick;
        match fault.kind {
            Kind::KillCapture => {
                let Some(mut slot) = self.free_slot(pick) else {
                    return Ok(None);
                };
                Ok(Some(self.kill_and_restart(&mut slot, hold).await?))
            }
            Kind::KillOwner => {
                let Some(mut slot) = self.owner_slot().await else {
                    return Ok(None);
                };
                Ok(Some(self.kill_and_restart(&mut slot, hold).await?))
            }
            Kind::PauseCaptureShort | Kind::PauseCaptureLong => {
                // Half the pauses freeze the owner: a frozen owner that wakes after a new
                // term began is what the owner fence is for.
                let slot = if pick.is_multiple_of(2) {
                    self.owner_slot().await
                } else {
                    None
                };
                let Some(mut slot) = slot.or_else(|| self.free_slot(pick)) else {
                    return Ok(None);
                };
                let process = slot.process.as_mut().context("no process")?;
                let target = format!("capture-{}", process.n);
                process.pause()?;
                tokio::time::sleep(hold).await;
                process.resume()?;
                Ok(Some(target))
            }
            Kind::RevokeLease => {
                let keys = self.keys("capture").await?;
                let Some((key, lease, _)) = pick_one(&keys, pick) else {
                    return Ok(None);
                };
                self.admin.lease_revoke(*lease).await?;
                Ok(Some(key.clone()))
            }
            Kind::DeleteOwnerKey => {
                // A third of the time the owner is frozen around the delete, so it wakes with a
                // live session in a term that is not its own; a third of the time its etcd links
                // hold what it sends from before the delete until just after it, so its
                // transactions in flight arrive in the next term. Only the owner fence stops
                // those writes.
                let variant = pick % 3;
                let mut frozen = if variant == 0 {
                    self.owner_slot().await
                } else {
                    None
                };
                if let Some(process) = frozen.as_mut().and_then(|slot| slot.process.as_mut()) {
                    process.pause()?;
                }
                let slowed = if variant == 1 {
                    self.owner_slot().await
                } else {
                    None
                };
                if let Some(slot) = &slowed {
                    slot.set_etcd_mode(Mode::BlackHole);
                    tokio::time::sleep(Duration::from_millis(1_500)).await;
                }
                let deleted = async {
                    let mut keys = self.keys("owner").await?;
                    keys.sort_by_key(|(_, _, create)| *create);
                    let Some((key, _, _)) = keys.first() else {
                        return Ok(None);
                    };
                    self.admin.delete(key.clone(), false).await?;
                    Ok::<_, anyhow::Error>(Some(key.clone()))
                }
                .await;
                if let Some(process) = frozen.as_mut().and_then(|slot| slot.process.as_mut()) {
                    tokio::time::sleep(hold).await;
                    process.resume()?;
                }
                if let Some(slot) = &slowed {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    slot.set_etcd_mode(Mode::Pass);
                }
                deleted
            }
            Kind::DeleteCaptureKey => {
                let keys = self.keys("capture").await?;
                let Some((key, _, _)) = pick_one(&keys, pick) else {
                    return Ok(None);
                };
                self.admin.delete(key.clone(), false).await?;
                Ok(Some(key.clone()))
            }
            Kind::RestartEtcdMember | Kind::RestartEtcdLeader | Kind::PauseEtcdMember => {
                let Ok(_cluster) = self.etcd_cluster.try_lock() else {
                    return Ok(None);
                };
                let index = if fault.kind == Kind::RestartEtcdLeader {
                    self.leader()
                        .await
                        .unwrap_or(pick as usize % self.members.len())
                } else {
                    pick as usize % self.members.len()
                };
                let mut member = self.members[index].lock().await;
                let target = member.name.clone();
                if fault.kind == Kind::PauseEtcdMember {
                    member.pause()?;
                    tokio::time::sleep(hold).await;
                    member.resume()?;
                } else {
                    member.kill().await?;
                    tokio::time::sleep(hold).await;
                    member.restart().await?;
                }
                Ok(Some(target))
            }
            Kind::KillEtcdMajority => {
                let Ok(_cluster) = self.etcd_cluster.try_lock() else {
                    return Ok(None);
                };
                let spared = pick as usize % self.members.len();
                let mut names = Vec::new();
                let mut killed = Vec::new();
                for (index, member) in self.members.iter().enumerate() {
                    if index == spared {
                        continue;
                    }
                    let mut member = member.lock().await;
                    member.kill().await?;
                    names.push(member.name.clone());
                    killed.push(member);
                }
                tokio::time::sleep(hold).await;
                for member in &mut killed {
                    member.restart().await?;
                }
                Ok(Some(names.join("+")))
            }
            Kind::CompactWhileLagging => {
                // A span lags behind a paused capture; the history is then compacted up to the
                // changefeeds' checkpoint, as far as a GC safepoint would allow.
                let Some(mut slot) = self.free_slot(pick) else {
                    return Ok(None);
                };
                let process = slot.process.as_mut().context("no process")?;
                let target = format!("capture-{}", process.n);
                process.pause()?;
                tokio::time::sleep(hold / 2).await;
                let floor = self
                    .checkpoints
                    .lock()
                    .ok()
                    .and_then(|map| map.values().copied().min());
                let compacted = match floor {
                    Some(revision) if revision > 0 => {
                        let revision = i64::try_from(revision).unwrap_or(0);
                        self.admin.compact(revision).await.map(|()| revision)
                    }
                    _ => Ok(0),
                };
                tokio::time::sleep(hold / 2).await;
                process.resume()?;
                Ok(Some(format!("{target} at {}", compacted?)))
            }
            Kind::SinkEtcdDown => {
                let Ok(mut sink) = self.sink_etcd.try_lock() else {
                    return Ok(None);
                };
                sink.kill().await?;
                tokio::time::sleep(hold).await;
                sink.restart().await?;
                Ok(Some(sink.name.clone()))
            }
            Kind::FileSinkFull => {
                let Ok(mount) = self.file_sink.try_lock() else {
                    return Ok(None);
                };
                let Some(mount) = mount.as_ref() else {
                    return Ok(None);
                };
                let filler = mount.join("filler");
                let filled = fill(&filler).await;
                tokio::time::sleep(hold).await;
                let _ = std::fs::remove_file(&filler);
                filled?;
                Ok(Some("file sink".to_owned()))
            }
            Kind::CutEtcdLink | Kind::DelayEtcdLink | Kind::BlackHoleEtcdLink => {
                let Some(slot) = self.free_slot(pick) else {
                    return Ok(None);
                };
                let target = format!("capture-{}", slot.process.as_ref().map_or(0, |p| p.n));
                slot.set_etcd_mode(link_mode(fault.kind, pick));
                tokio::time::sleep(hold).await;
                slot.set_etcd_mode(Mode::Pass);
                Ok(Some(target))
            }
            Kind::CutPeerLink | Kind::DelayPeerLink | Kind::BlackHolePeerLink => {
                let Some(slot) = self.free_slot(pick) else {
                    return Ok(None);
                };
                let target = format!("capture-{}", slot.process.as_ref().map_or(0, |p| p.n));
                slot.p2p_proxy.set_mode(link_mode(fault.kind, pick));
                tokio::time::sleep(hold).await;
                slot.p2p_proxy.set_mode(Mode::Pass);
                Ok(Some(target))
            }
        }
    }

    /// The index of the member that every answering member names leader.
    async fn leader(&self) -> Option<usize> {
        let mut ids = Vec::new();
        let mut leader = None;
        for member in &self.members {
            let member = member.try_lock().ok()?;
            let (id, leads) = member.status(&self.http).await.unzip();
            ids.push(id);
            leader = leader.or(leads);
        }
        let leader = leader?;
        ids.iter()
            .position(|id| id.as_deref() == Some(leader.as_str()))
    }
}

fn link_mode(kind: Kind, pick: u64) -> Mode {
    match kind {
        Kind::CutEtcdLink | Kind::CutPeerLink => Mode::Cut,
        Kind::BlackHoleEtcdLink | Kind::BlackHolePeerLink => Mode::BlackHole,
        _ => Mode::Delay(Duration::from_millis(100 + pick % 400)),
    }
}

fn pick_one<T>(items: &[T], pick: u64) -> Option<&T> {
    if items.is_empty() {
        return None;
    }
    items.get(pick as usize % items.len())
}

/// Fills the file system of `path` by writing zeros to it until a write fails (ENOSPC).
async fn fill(path: &std::path::Path) -> Result<()> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let mut file = std::fs::File::create(&path)?;
        let chunk = vec![0_u8; 64 << 10];
        // Bounded: the tmpfs is small; a file system that never fills stops at 1 GiB.
        for _ in 0..16 * 1024 {
            if file.write_all(&chunk).is_err() {
                break;
            }
        }
        // The last bytes the big chunks left.
        for _ in 0..64 * 1024 {
            if file.write_all(&chunk[..512]).is_err() {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_draws_one_schedule_with_every_kind_before_repeats() {
        let duration = Duration::from_secs(40);
        let first = schedule(7, duration);
        let again = schedule(7, duration);
        let other = schedule(8, duration);
        let kinds = |plan: &[Planned]| plan.iter().map(|fault| fault.kind).collect::<Vec<_>>();
        let times = |plan: &[Planned]| plan.iter().map(|fault| fault.at).collect::<Vec<_>>();
        assert_eq!(kinds(&first), kinds(&again));
        assert_eq!(times(&first), times(&again));
        assert_ne!(times(&first), times(&other));
        assert_eq!(first.len(), 20);
        for kind in KINDS {
            assert!(kinds(&first).contains(&kind), "{kind:?} missing");
        }
        assert!(first.windows(2).all(|pair| pair[0].at <= pair[1].at));
        assert!(first.iter().all(|fault| fault.at < duration));
        let ttl = Duration::from_secs(TTL_SECS);
        for fault in &first {
            match fault.kind {
                Kind::PauseCaptureShort => assert!(fault.hold < ttl, "{fault:?}"),
                Kind::PauseCaptureLong => assert!(fault.hold > ttl, "{fault:?}"),
                _ => {}
            }
        }
    }
}
