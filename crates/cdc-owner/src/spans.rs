//! The spans of a changefeed: its key prefixes, each cut into `spans_per_prefix` sub-ranges at
//! split keys chosen once, at creation, from the keys present then (equal key counts).
//!
//! Every owner computes the same spans from the stored info: span IDs are assigned in prefix
//! order, then split order.

use cdc_model::ChangeFeedId;
use cdc_scheduler::{Span, SpanId};

/// The most spans one prefix may be cut into.
pub const MAX_SPANS_PER_PREFIX: u32 = 1024;

/// The end of the key range of every key that starts with `prefix` (etcd's
/// `clientv3.GetPrefixRangeEnd`): the prefix without its trailing `0xff` bytes, last byte plus
/// one. `None` for an empty prefix or one of `0xff` bytes only, whose range has no finite end.
pub fn prefix_range_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let last = prefix.iter().rposition(|byte| *byte < 0xff)?;
    let mut end = prefix[..=last].to_vec();
    end[last] += 1;
    Some(end)
}

/// Why a list of prefixes cannot be a changefeed's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrefixProblem {
    /// No prefix at all.
    Empty,
    /// A prefix whose range has no finite end (empty, or `0xff` bytes only).
    Unbounded(Vec<u8>),
    /// Two prefixes whose ranges overlap (one starts with the other).
    Overlap(Vec<u8>, Vec<u8>),
}

/// Checks that `prefixes` is non-empty, that each has a finite range and that no two overlap.
pub fn check_prefixes(prefixes: &[Vec<u8>]) -> Result<(), PrefixProblem> {
    if prefixes.is_empty() {
        return Err(PrefixProblem::Empty);
    }
    for prefix in prefixes {
        if prefix_range_end(prefix).is_none() {
            return Err(PrefixProblem::Unbounded(prefix.clone()));
        }
    }
    // In sorted order every key between a prefix and a key that starts with it starts with it
    // too, so comparing neighbours finds every overlap.
    let mut sorted: Vec<&Vec<u8>> = prefixes.iter().collect();
    sorted.sort();
    for pair in sorted.windows(2) {
        if pair[1].starts_with(pair[0]) {
            return Err(PrefixProblem::Overlap(pair[0].clone(), pair[1].clone()));
        }
    }
    Ok(())
}

/// The split keys that cut the range of `prefix` into `n` spans.
///
/// `keys` are the keys present in the range, sorted and distinct. With at least `n` of them, the
/// split keys are the keys at indexes `j * m / n` for `j` in `1..n` (`m` keys), so each span holds
/// about `m / n` of them. With fewer, the range is cut evenly by the two bytes after the prefix,
/// so the changefeed still gets `n` spans. Every split key is larger than the prefix and smaller
/// than its range end, and they are strictly increasing.
pub fn choose_split_keys(prefix: &[u8], keys: &[Vec<u8>], n: u32) -> Vec<Vec<u8>> {
    let n = n.clamp(1, MAX_SPANS_PER_PREFIX) as usize;
    if n == 1 {
        return Vec::new();
    }
    let end = prefix_range_end(prefix);
    let in_range: Vec<&Vec<u8>> = keys
        .iter()
        .filter(|key| {
            key.starts_with(prefix)
                && end
                    .as_ref()
                    .is_none_or(|end| key.as_slice() < end.as_slice())
        })
        .collect();
    let m = in_range.len();
    if m >= n {
        let mut splits: Vec<Vec<u8>> = (1..n).map(|j| in_range[j * m / n].clone()).collect();
        splits.dedup();
        // The first key may be the prefix itself; a split there would leave an empty span.
        splits.retain(|key| key.as_slice() > prefix);
        return splits;
    }
    (1..n)
        .map(|j| {
            let step = u16::try_from(j * 65536 / n).unwrap_or(u16::MAX);
            let mut key = prefix.to_vec();
            key.extend_from_slice(&step.to_be_bytes());
            key
        })
        .collect()
}

/// The spans of `changefeed`: for each prefix in order, the sub-ranges cut at its split keys
/// (`split_keys[i]` for prefix `i`; missing lists mean no split). Span IDs count from 0.
///
/// Prefixes without a finite range end are skipped (creation refuses them).
pub fn compute_spans(
    changefeed: &ChangeFeedId,
    prefixes: &[Vec<u8>],
    split_keys: &[Vec<Vec<u8>>],
) -> Vec<Span> {
    let mut spans = Vec::new();
    for (index, prefix) in prefixes.iter().enumerate() {
        let Some(end) = prefix_range_end(prefix) else {
            continue;
        };
        let splits: &[Vec<u8>] = split_keys.get(index).map_or(&[], Vec::as_slice);
        let mut start = prefix.clone();
        for split in splits
            .iter()
            .filter(|split| {
                split.as_slice() > prefix.as_slice() && split.as_slice() < end.as_slice()
            })
            .chain(std::iter::once(&end))
        {
            if split.as_slice() <= start.as_slice() {
                continue;
            }
            spans.push(Span {
                span_id: SpanId(spans.len() as u64),
                changefeed: changefeed.clone(),
                start_key: start.clone(),
                end_key: split.clone(),
            });
            start = split.clone();
        }
    }
    spans
}

#[cfg(test)]
mod tests;
