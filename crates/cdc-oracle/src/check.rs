//! All the oracles over one run directory.

use std::path::Path;

use crate::checkpoint::checkpoint_regressions;
use crate::delivery::lost_and_reordered;
use crate::error::Result;
use crate::fencing::stale_owner_writes;
use crate::mirror::mirror_differences;
use crate::report::Report;
use crate::span_log::double_run;

/// Runs every oracle over `run_dir`. The etcd-sink changefeeds' mirrors are compared with
/// the upstream at `upstream_endpoints` (skipped when empty); call it once the run has
/// converged (every checkpoint past the writer's last revision), or the tail still on its
/// way counts as lost.
pub async fn check(run_dir: &Path, upstream_endpoints: &[String]) -> Result<Report> {
    let (mut lost, reordered) = lost_and_reordered(run_dir)?;
    if !upstream_endpoints.is_empty() {
        lost.merge(mirror_differences(run_dir, upstream_endpoints).await?);
    }
    Ok(Report::from_findings(
        lost,
        reordered,
        double_run(run_dir)?,
        checkpoint_regressions(run_dir)?,
        stale_owner_writes(run_dir)?,
    ))
}
