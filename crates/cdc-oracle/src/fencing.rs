//! Owner fencing: every owner write lands inside its owner's term.
//!
//! The terms come from the election keys in the metadata watch
//! (`/tidb/cdc/<C>/__cdc_meta__/owner/<lease hex>`, `docs/etcd-keys.md`): as in Go's
//! `concurrency.Election`, the live key with the smallest create revision is the owner, from
//! the revision at which it became the smallest (its creation, or the deletion of the last
//! key before it) to the revision at which it was deleted, excluded. The writes come from the
//! captures' logs: the owner's worker logs each transaction on target `cdc::owner_commit`
//! with the create revision of the owner key it was elected with (`owner_revision`), once
//! before it is sent (`outcome` `sending`) and once answered (`committed` or `refused`, with
//! the header `revision`).
//!
//! Counted: a committed transaction whose revision is outside its term (or whose term was
//! never recorded), and a write to a key only the owner writes (a changefeed's info or
//! status, an upstream, the meta version) at a revision no committed transaction logged,
//! unless a transaction of the owner of that revision was sent without an answer (it may
//! have committed unseen: a cut connection, a kill, a cancellation), each such transaction
//! excusing one revision.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::report::Finding;
use crate::run::{EventType, MetadataEvent, capture_files, metadata_events, read_text};

/// The log target of owner transactions.
pub const OWNER_COMMIT_TARGET: &str = "cdc::owner_commit";

/// The cluster of a metadata key (`/tidb/cdc/<C>/...`) and the rest of it, split at `/`.
fn cluster_key(key: &str) -> Option<(&str, Vec<&str>)> {
    let rest = key.strip_prefix("/tidb/cdc/")?;
    let mut parts = rest.split('/');
    let cluster = parts.next()?;
    Some((cluster, parts.collect()))
}

/// The owner key's cluster, if `key` is an election key.
fn owner_key_cluster(key: &str) -> Option<&str> {
    match cluster_key(key)? {
        (cluster, parts) if parts.len() == 3 && parts[..2] == ["__cdc_meta__", "owner"] => {
            Some(cluster)
        }
        _ => None,
    }
}

/// Whether only the owner writes `key`: a changefeed's info or status, an upstream's info,
/// the meta version. Returns the cluster.
pub fn owner_only_cluster(key: &str) -> Option<&str> {
    let (cluster, parts) = cluster_key(key)?;
    let owner_only = match parts.as_slice() {
        ["__cdc_meta__", "meta", "meta-version"] => true,
        ["__cdc_meta__", ..] => false,
        [_namespace, "changefeed", "info" | "status", _id, ..] => true,
        [_namespace, "upstream", _id] => true,
        _ => false,
    };
    (owner_only && cluster != "__backup__").then_some(cluster)
}

/// One owner's term.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Term {
    /// The cluster.
    pub cluster: String,
    /// The election key.
    pub key: String,
    /// Its create revision: the `owner_revision` its owner's transactions carry.
    pub create_revision: u64,
    /// The capture ID the key holds.
    pub capture: String,
    /// The revision from which the key was the owner.
    pub start: u64,
    /// The revision of its deletion (`None`: owner to the end of the run).
    pub end: Option<u64>,
}

impl Term {
    /// Whether a transaction at `revision` is inside the term.
    pub fn contains(&self, revision: u64) -> bool {
        revision >= self.start && self.end.is_none_or(|end| revision < end)
    }
}

/// The owner terms of every cluster, from the election keys' events.
pub fn owner_terms(events: &[MetadataEvent]) -> Vec<Term> {
    let mut ordered: Vec<&MetadataEvent> = events
        .iter()
        .filter(|event| owner_key_cluster(&event.key).is_some())
        .collect();
    ordered.sort_by_key(|event| event.mod_revision);
    ordered.dedup_by(|a, b| a.mod_revision == b.mod_revision && a.key == b.key);
    // Per cluster: live key -> (create revision, capture).
    let mut live: BTreeMap<String, BTreeMap<String, (u64, String)>> = BTreeMap::new();
    // Per cluster: the index in `terms` of the current owner's term.
    let mut current: BTreeMap<String, usize> = BTreeMap::new();
    let mut terms: Vec<Term> = Vec::new();
    let mut index = 0;
    while index < ordered.len() {
        let revision = ordered[index].mod_revision;
        let mut touched = BTreeSet::new();
        while index < ordered.len() && ordered[index].mod_revision == revision {
            let event = ordered[index];
            index += 1;
            let Some(cluster) = owner_key_cluster(&event.key) else {
                continue;
            };
            let keys = live.entry(cluster.to_owned()).or_default();
            match event.kind {
                EventType::Put => {
                    let capture = String::from_utf8_lossy(&event.value).into_owned();
                    let create_revision = if event.create_revision == 0 {
                        event.mod_revision
                    } else {
                        event.create_revision
                    };
                    keys.insert(event.key.clone(), (create_revision, capture));
                }
                EventType::Delete => {
                    keys.remove(&event.key);
                }
            }
            touched.insert(cluster.to_owned());
        }
        for cluster in touched {
            let keys = &live[&cluster];
            let leader = keys
                .iter()
                .min_by_key(|(_, (create_revision, _))| *create_revision);
            let unchanged = match (current.get(&cluster), leader) {
                (Some(&at), Some((key, (create_revision, _)))) => {
                    terms[at].key == *key && terms[at].create_revision == *create_revision
                }
                (None, None) => true,
                _ => false,
            };
            if unchanged {
                continue;
            }
            if let Some(at) = current.remove(&cluster) {
                terms[at].end = Some(revision);
            }
            if let Some((key, (create_revision, capture))) = leader {
                current.insert(cluster.clone(), terms.len());
                terms.push(Term {
                    cluster: cluster.clone(),
                    key: key.clone(),
                    create_revision: *create_revision,
                    capture: capture.clone(),
                    start: revision,
                    end: None,
                });
            }
        }
    }
    terms
}

/// What an owner transaction's log line says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// About to be sent.
    Sending,
    /// Committed at `revision`.
    Committed,
    /// Refused by its compares.
    Refused,
}

/// One `cdc::owner_commit` line of a capture's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerTxn {
    /// Where it was logged (`capture-<n>.log:<line>`).
    pub place: String,
    /// The capture ID (from the log's `capture` span), if the line has it.
    pub capture: Option<String>,
    /// What happened.
    pub outcome: Outcome,
    /// The election key the owner won with.
    pub owner_key: Option<String>,
    /// Its create revision: the term.
    pub owner_revision: u64,
    /// The header revision of the answer.
    pub revision: Option<u64>,
}

fn field<'a>(line: &'a Value, name: &str) -> Option<&'a Value> {
    line.get("fields")
        .and_then(|fields| fields.get(name))
        .or_else(|| line.get(name))
}

fn capture_of(line: &Value) -> Option<String> {
    let from_span = |span: &Value| {
        span.get("capture_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    line.get("span").and_then(from_span).or_else(|| {
        line.get("spans")?
            .as_array()?
            .iter()
            .rev()
            .find_map(from_span)
    })
}

/// The owner transactions logged in a capture's JSON log.
pub fn owner_txns(path: &Path, text: &str) -> Result<Vec<OwnerTxn>> {
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    );
    let mut txns = Vec::new();
    for (index, text) in crate::run::complete_lines(text).enumerate() {
        if !text.contains(OWNER_COMMIT_TARGET) {
            continue;
        }
        let malformed = |reason: &str| Error::malformed(path, index + 1, reason);
        let Ok(line) = serde_json::from_str::<Value>(text) else {
            return Err(malformed("an owner transaction not logged as JSON"));
        };
        if line.get("target").and_then(Value::as_str) != Some(OWNER_COMMIT_TARGET) {
            continue;
        }
        let outcome = match field(&line, "outcome").and_then(Value::as_str) {
            Some("sending") => Outcome::Sending,
            Some("committed") => Outcome::Committed,
            Some("refused") => Outcome::Refused,
            _ => return Err(malformed("an owner transaction without a known outcome")),
        };
        let owner_revision = field(&line, "owner_revision")
            .and_then(Value::as_u64)
            .ok_or_else(|| malformed("an owner transaction without its owner_revision"))?;
        let revision = field(&line, "revision").and_then(Value::as_u64);
        if outcome != Outcome::Sending && revision.is_none() {
            return Err(malformed(
                "an answered owner transaction without its revision",
            ));
        }
        txns.push(OwnerTxn {
            place: format!("{name}:{}", index + 1),
            capture: capture_of(&line),
            outcome,
            owner_key: field(&line, "owner_key")
                .and_then(Value::as_str)
                .map(str::to_owned),
            owner_revision,
            revision,
        });
    }
    Ok(txns)
}

/// The fencing oracle over recorded metadata events and logged owner transactions.
pub fn stale_writes(events: &[MetadataEvent], txns: &[OwnerTxn]) -> Finding {
    let terms = owner_terms(events);
    let mut finding = Finding::default();
    let mut committed_at: BTreeSet<u64> = BTreeSet::new();
    // owner_revision -> transactions sent without a known answer.
    let mut in_doubt: BTreeMap<u64, i64> = BTreeMap::new();
    for txn in txns {
        let unanswered = in_doubt.entry(txn.owner_revision).or_default();
        match (txn.outcome, txn.revision) {
            (Outcome::Sending, _) => *unanswered += 1,
            (Outcome::Refused, _) | (Outcome::Committed, None) => *unanswered -= 1,
            (Outcome::Committed, Some(revision)) => {
                *unanswered -= 1;
                committed_at.insert(revision);
                let term = terms.iter().find(|term| {
                    term.create_revision == txn.owner_revision
                        && txn.owner_key.as_ref().is_none_or(|key| *key == term.key)
                });
                let capture = txn.capture.as_deref().unwrap_or("?");
                match term {
                    None => finding.add(|| {
                        format!(
                            "{} (capture {capture}) committed at revision {revision} for owner \
                             revision {}, a term the metadata never showed",
                            txn.place, txn.owner_revision
                        )
                    }),
                    Some(term) if !term.contains(revision) => finding.add(|| {
                        format!(
                            "{} (capture {capture}) committed at revision {revision} outside \
                             its term {} of {} [{}, {})",
                            txn.place,
                            term.create_revision,
                            term.key,
                            term.start,
                            term.end.map_or("-".to_owned(), |end| end.to_string())
                        )
                    }),
                    Some(_) => {}
                }
            }
        }
    }
    // Owner-only writes per revision, with the keys written.
    let mut writes: BTreeMap<u64, (String, Vec<&str>)> = BTreeMap::new();
    for event in events {
        if let Some(cluster) = owner_only_cluster(&event.key)
            && !committed_at.contains(&event.mod_revision)
        {
            let (_, keys) = writes
                .entry(event.mod_revision)
                .or_insert_with(|| (cluster.to_owned(), Vec::new()));
            if !keys.contains(&event.key.as_str()) {
                keys.push(&event.key);
            }
        }
    }
    for (revision, (cluster, keys)) in writes {
        let term = terms
            .iter()
            .find(|term| term.cluster == cluster && term.contains(revision));
        if let Some(term) = term
            && let Some(unanswered) = in_doubt.get_mut(&term.create_revision)
            && *unanswered > 0
        {
            *unanswered -= 1;
            continue;
        }
        finding.add(|| {
            let owner = term.map_or("no owner".to_owned(), |term| {
                format!("owner {} of term {}", term.capture, term.create_revision)
            });
            format!(
                "revision {revision} wrote {} but no committed owner transaction logged it \
                 ({owner})",
                keys.join(", ")
            )
        });
    }
    finding
}

/// The stale-owner-write oracle over the run: `metadata.jsonl` and every `capture-<n>.log`.
pub fn stale_owner_writes(run_dir: &Path) -> Result<Finding> {
    let events = metadata_events(run_dir)?;
    Ok(stale_writes(&events, &logged_owner_txns(run_dir)?))
}

/// The owner transactions logged in the captures' logs of `run_dir`.
pub fn logged_owner_txns(run_dir: &Path) -> Result<Vec<OwnerTxn>> {
    let mut txns = Vec::new();
    for path in capture_files(run_dir, ".log")?.into_values() {
        txns.extend(owner_txns(&path, &read_text(&path)?)?);
    }
    Ok(txns)
}

#[cfg(test)]
mod tests;
