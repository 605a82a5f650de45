//! Lost and reordered changes in the file sinks: every change the writer certainly made under a
//! changefeed's prefixes after its start revision is in the sink, and per key the first
//! appearances of the changes are in revision order (a replay after a failure repeats a
//! suffix, which is not a reorder: the delivery is at-least-once, `docs/guarantees.md`).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

use crate::error::Result;
use crate::file_sink::{SinkFile, read_sink};
use crate::report::Finding;
use crate::run::{Changefeed, Op, SinkKind, WriterOp, changefeeds, writer_ops};

/// The changes of `files`, as (key, revision, op).
fn delivered(files: &[SinkFile]) -> HashSet<(&str, u64, Op)> {
    files
        .iter()
        .flat_map(|file| &file.lines)
        .map(|line| (line.key.as_str(), line.revision, line.op))
        .collect()
}

/// The changes of `ops` that `changefeed` must deliver.
pub(crate) fn required<'a>(
    changefeed: &'a Changefeed,
    ops: &'a [WriterOp],
) -> impl Iterator<Item = (&'a WriterOp, u64)> + 'a {
    ops.iter().filter_map(move |op| {
        let revision = op.certain_revision()?;
        changefeed
            .requires(&op.key, revision)
            .then_some((op, revision))
    })
}

/// The writer's changes missing from `changefeed`'s file sink.
pub fn lost_in(changefeed: &Changefeed, ops: &[WriterOp], files: &[SinkFile]) -> Finding {
    let delivered = delivered(files);
    let mut finding = Finding::default();
    for (op, revision) in required(changefeed, ops) {
        if !delivered.contains(&(op.key.as_str(), revision, op.op)) {
            finding.add(|| {
                format!(
                    "changefeed {}: {:?} of {} at revision {revision} is not in the file sink",
                    changefeed.id, op.op, op.key
                )
            });
        }
    }
    finding
}

/// The changes of `files` whose first appearance follows the first appearance of a later
/// change of the same key in the same span (files in sequence order, lines in file order).
pub fn reordered_in(changefeed_id: &str, files: &[SinkFile]) -> Finding {
    let mut finding = Finding::default();
    // (span, key) -> (revisions seen, highest revision seen).
    let mut seen: BTreeMap<(&str, &str), (BTreeSet<u64>, u64)> = BTreeMap::new();
    for file in files {
        for line in &file.lines {
            let (revisions, highest) = seen
                .entry((file.span.as_str(), line.key.as_str()))
                .or_default();
            if !revisions.insert(line.revision) {
                continue;
            }
            if line.revision < *highest {
                let highest = *highest;
                finding.add(|| {
                    format!(
                        "changefeed {changefeed_id}: {} at revision {} first appears in {} after \
                         revision {highest}",
                        line.key, line.revision, file.path
                    )
                });
            } else {
                *highest = line.revision;
            }
        }
    }
    finding
}

/// Lost and reordered changes over every file-sink changefeed of the run.
pub fn lost_and_reordered(run_dir: &Path) -> Result<(Finding, Finding)> {
    let ops = writer_ops(run_dir)?;
    let mut lost = Finding::default();
    let mut reordered = Finding::default();
    for changefeed in changefeeds(run_dir)? {
        let (SinkKind::File, Some(dir)) = (changefeed.sink, &changefeed.dir) else {
            continue;
        };
        let files = read_sink(dir)?;
        lost.merge(lost_in(&changefeed, &ops, &files));
        reordered.merge(reordered_in(&changefeed.id, &files));
    }
    Ok((lost, reordered))
}

#[cfg(test)]
mod tests;
