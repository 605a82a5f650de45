//! The mirror comparison: an etcd-sink changefeed's mirror ends with the upstream's final
//! state. Both etcds are read with `etcd-client` directly (not through the product's client),
//! each in pages at one revision, every call under a deadline.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions};

use crate::error::{Error, Result};
use crate::report::Finding;
use crate::run::{Changefeed, SinkKind, changefeeds};

/// The deadline of one etcd call (a connect or a page).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Keys per page.
const PAGE: i64 = 1_000;

/// Keys (without their prefix) and values.
pub type State = BTreeMap<Vec<u8>, Vec<u8>>;

fn etcd_error(
    op: &'static str,
    endpoints: &[String],
    source: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::Etcd {
        op,
        endpoints: endpoints.join(","),
        source: Box::new(source),
    }
}

/// Runs one etcd call under [`CALL_TIMEOUT`].
async fn call<T>(
    op: &'static str,
    endpoints: &[String],
    future: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T> {
    match tokio::time::timeout(CALL_TIMEOUT, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(etcd_error(op, endpoints, err)),
        Err(elapsed) => Err(etcd_error(op, endpoints, elapsed)),
    }
}

/// The end of the range of keys that start with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte is 0xff (or the prefix is empty): to the end of the key space.
    vec![0]
}

/// The keys under `prefix` in the etcd at `endpoints`, read at one revision, keyed without
/// the prefix.
pub async fn read_prefix(endpoints: &[String], prefix: &str) -> Result<State> {
    let options = ConnectOptions::new()
        .with_connect_timeout(CALL_TIMEOUT)
        .with_timeout(CALL_TIMEOUT);
    let mut client = call(
        "connect",
        endpoints,
        Client::connect(endpoints, Some(options)),
    )
    .await?;
    let end = prefix_end(prefix.as_bytes());
    let mut state = State::new();
    let mut start = prefix.as_bytes().to_vec();
    let mut revision = 0;
    loop {
        let options = GetOptions::new()
            .with_range(end.clone())
            .with_limit(PAGE)
            .with_revision(revision);
        let response = call("get", endpoints, client.get(start.clone(), Some(options))).await?;
        if revision == 0 {
            revision = response.header().map_or(0, |header| header.revision());
        }
        for kv in response.kvs() {
            let key = kv.key().get(prefix.len()..).unwrap_or_default().to_vec();
            state.insert(key, kv.value().to_vec());
        }
        match response.kvs().last() {
            Some(last) if response.more() => {
                start = last.key().to_vec();
                start.push(0);
            }
            _ => return Ok(state),
        }
    }
}

/// The keys whose final value differs between `upstream` and `mirror` (missing, extra or
/// another value), one violation each.
pub fn differences(changefeed_id: &str, upstream: &State, mirror: &State) -> Finding {
    let mut finding = Finding::default();
    let show = |key: &[u8]| String::from_utf8_lossy(key).into_owned();
    for (key, value) in upstream {
        match mirror.get(key) {
            None => finding.add(|| {
                format!(
                    "changefeed {changefeed_id}: {} is missing from the mirror",
                    show(key)
                )
            }),
            Some(mirrored) if mirrored != value => finding.add(|| {
                format!(
                    "changefeed {changefeed_id}: {} is {:?} in the mirror, {:?} upstream",
                    show(key),
                    String::from_utf8_lossy(mirrored),
                    String::from_utf8_lossy(value)
                )
            }),
            Some(_) => {}
        }
    }
    for key in mirror.keys().filter(|key| !upstream.contains_key(*key)) {
        finding.add(|| {
            format!(
                "changefeed {changefeed_id}: {} is in the mirror but deleted upstream",
                show(key)
            )
        });
    }
    finding
}

/// Compares `changefeed`'s mirror with the upstream at `upstream_endpoints`: each of its
/// prefixes is replaced by the sink's prefix.
pub async fn compare_mirror(
    changefeed: &Changefeed,
    upstream_endpoints: &[String],
) -> Result<Finding> {
    let Some(sink_prefix) = &changefeed.sink_prefix else {
        return Ok(Finding::default());
    };
    let mut upstream = State::new();
    for prefix in &changefeed.prefixes {
        upstream.extend(read_prefix(upstream_endpoints, prefix).await?);
    }
    let mirror = read_prefix(&changefeed.endpoints, sink_prefix).await?;
    Ok(differences(&changefeed.id, &upstream, &mirror))
}

/// Every etcd-sink changefeed of the run compared with the upstream.
pub async fn mirror_differences(run_dir: &Path, upstream_endpoints: &[String]) -> Result<Finding> {
    let mut finding = Finding::default();
    for changefeed in changefeeds(run_dir)? {
        if changefeed.sink == SinkKind::Etcd {
            finding.merge(compare_mirror(&changefeed, upstream_endpoints).await?);
        }
    }
    Ok(finding)
}

#[cfg(test)]
mod tests;
