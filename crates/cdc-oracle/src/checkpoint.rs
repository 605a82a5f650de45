//! Checkpoint honesty: a changefeed's stored checkpoint never moves back (read from the
//! metadata watch), and never passes a change its file sink did not have yet (read from the
//! sink samples, each taken after its checkpoint was seen, so a sample can only hold more
//! than the sink held when the checkpoint was written: the check is lenient, never wrong).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::delivery::required;
use crate::error::{Error, Result};
use crate::file_sink::read_sink;
use crate::report::Finding;
use crate::run::{
    Changefeed, EventType, METADATA_FILE, MetadataEvent, Op, SinkKind, SinkSample, WriterOp,
    changefeeds, metadata_events, sink_samples, writer_ops,
};

/// `<namespace>/<id>` of a changefeed status key (`/tidb/cdc/<C>/<NS>/changefeed/status/<id>`).
fn status_changefeed(key: &str) -> Option<String> {
    let (before, id) = key.split_once("/changefeed/status/")?;
    let namespace = before.rsplit('/').next()?;
    Some(format!("{namespace}/{id}"))
}

#[derive(serde::Deserialize)]
struct Status {
    #[serde(rename = "checkpoint-ts")]
    checkpoint: u64,
}

/// Every stored checkpoint lower than the one stored before it for the same changefeed (a
/// deleted status starts over).
pub fn stored_regressions(events: &[MetadataEvent]) -> Result<Finding> {
    let mut ordered: Vec<&MetadataEvent> = events.iter().collect();
    ordered.sort_by_key(|event| event.mod_revision);
    ordered.dedup_by(|a, b| a.mod_revision == b.mod_revision && a.key == b.key);
    let mut last: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut finding = Finding::default();
    for event in ordered {
        let Some(changefeed) = status_changefeed(&event.key) else {
            continue;
        };
        if event.kind == EventType::Delete {
            last.remove(&changefeed);
            continue;
        }
        let status: Status = serde_json::from_slice(&event.value).map_err(|err| {
            Error::malformed(
                Path::new(METADATA_FILE),
                0,
                format!(
                    "the status of {changefeed} at revision {}: {err}",
                    event.mod_revision
                ),
            )
        })?;
        if let Some((before, at)) = last.get(&changefeed)
            && status.checkpoint < *before
        {
            let before = *before;
            let at = *at;
            finding.add(|| {
                format!(
                    "changefeed {changefeed}: the stored checkpoint moved back from {before} \
                     (revision {at}) to {} (revision {})",
                    status.checkpoint, event.mod_revision
                )
            });
        }
        last.insert(changefeed, (status.checkpoint, event.mod_revision));
    }
    Ok(finding)
}

/// Where a change was written: the file (its path under the sink's directory) and the offset
/// just past its line.
type Place<'a> = (&'a str, u64);

/// The samples of `changefeed` in which its checkpoint covers a change of `ops` that its file
/// sink (under `dir`) did not hold yet: one per such sample, described by its first missing
/// change.
pub fn dishonest_samples(
    changefeed: &Changefeed,
    dir: &Path,
    ops: &[WriterOp],
    samples: &[SinkSample],
) -> Result<Finding> {
    let files = read_sink(dir)?;
    let mut written: HashMap<(&str, u64, Op), Vec<Place<'_>>> = HashMap::new();
    for file in &files {
        for line in &file.lines {
            written
                .entry((line.key.as_str(), line.revision, line.op))
                .or_default()
                .push((file.path.as_str(), line.end));
        }
    }
    let mut samples: Vec<&SinkSample> = samples
        .iter()
        .filter(|sample| changefeed.is_named(&sample.changefeed))
        .collect();
    samples.sort_by_key(|sample| sample.mono_ns);
    // Sample index -> its first missing change.
    let mut dishonest: BTreeMap<usize, String> = BTreeMap::new();
    for (op, revision) in required(changefeed, ops) {
        let places = written
            .get(&(op.key.as_str(), revision, op.op))
            .map_or(&[][..], Vec::as_slice);
        for (index, sample) in samples.iter().enumerate() {
            if sample.checkpoint < revision {
                continue;
            }
            let held = places
                .iter()
                .any(|(path, end)| sample.files.get(*path).is_some_and(|size| size >= end));
            // Files only grow: once held, held in every later sample.
            if held {
                break;
            }
            dishonest.entry(index).or_insert_with(|| {
                format!(
                    "changefeed {}: checkpoint {} (seen at {} ns) passes {:?} of {} at revision \
                     {revision}, not in the file sink then",
                    changefeed.id, sample.checkpoint, sample.mono_ns, op.op, op.key
                )
            });
        }
    }
    let mut finding = Finding::default();
    for (_, detail) in dishonest {
        finding.add(|| detail);
    }
    Ok(finding)
}

/// The checkpoint-regression oracle over the run: stored checkpoints that moved back, and
/// sampled checkpoints that passed a change not yet in the file sink.
pub fn checkpoint_regressions(run_dir: &Path) -> Result<Finding> {
    let mut finding = stored_regressions(&metadata_events(run_dir)?)?;
    let samples = sink_samples(run_dir)?;
    if samples.is_empty() {
        return Ok(finding);
    }
    let ops = writer_ops(run_dir)?;
    for changefeed in changefeeds(run_dir)? {
        if let (SinkKind::File, Some(dir)) = (changefeed.sink, &changefeed.dir) {
            finding.merge(dishonest_samples(&changefeed, dir, &ops, &samples)?);
        }
    }
    Ok(finding)
}

#[cfg(test)]
mod tests;
