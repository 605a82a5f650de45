//! The chaos oracles: independent checks that a run of the cluster lost, reordered or
//! double-ran nothing, that its checkpoints never lied and that only the owner of a term wrote
//! the owner's keys in that term.
//!
//! The oracles know nothing of the code under test: they read the files of a run directory
//! (written by the runner, the sinks and the captures' logs), and for the mirror an etcd with
//! `etcd-client` directly, so a bug in the product's own etcd client or key layout cannot hide
//! a loss. Each oracle is a function over a run directory returning a [`Finding`]; [`check`]
//! runs them all into a [`Report`]. `docs/guarantees.md` ("The chaos oracles") says what each
//! reads and counts.
//!
//! The run directory:
//! - `writer.jsonl`: one line per upstream write,
//!   `{"op":"put"|"delete","key","value"(puts),"revision","deleted"(deletes)}`; a write whose
//!   outcome is unknown is `{"op","key","ambiguous":true}` and is not required. A delete that
//!   deleted nothing (`"deleted":0`) made no change and is not required either.
//! - `changefeeds.json`: `[{"id","prefixes":[..],"sink":"file","dir","start_revision"}` or
//!   `{"id","prefixes","sink":"etcd","endpoints":[..],"sink_prefix","start_revision"}]`; `dir`
//!   is the file sink URI's directory (relative to the run directory unless absolute).
//! - the file sinks' directories, as `cdc-sink` writes them (`<span>.<sequence>.jsonl`).
//! - `metadata.jsonl`: every watch event under the metadata prefix for the whole run,
//!   `{"type":"put"|"delete","key","value"|"value_base64","mod_revision","create_revision",
//!   "mono_ns"}`.
//! - `sink_samples.jsonl`: `{"changefeed","checkpoint","mono_ns","files":{"<path under dir>":
//!   <size>}}`, read after the checkpoint was seen.
//! - `capture-<n>.log` (the capture's JSON log) and `capture-<n>.span.log` (its span log),
//!   `deaths.jsonl` (`{"capture":"<n>","pid","died_at_mono_ns"}`), `faults.jsonl`.
//!
//! Not here: running the cluster, the faults and the writer (`cdc-chaos`).
#![warn(missing_docs)]

mod check;
mod checkpoint;
mod delivery;
mod error;
mod fencing;
mod file_sink;
mod mirror;
mod report;
pub mod run;
pub mod span_log;

#[cfg(test)]
mod fixture;

pub use check::check;
pub use checkpoint::{checkpoint_regressions, dishonest_samples, stored_regressions};
pub use delivery::{lost_and_reordered, lost_in, reordered_in};
pub use error::{Error, Result};
pub use fencing::{
    OWNER_COMMIT_TARGET, Outcome, OwnerTxn, Term, logged_owner_txns, owner_only_cluster,
    owner_terms, owner_txns, stale_owner_writes, stale_writes,
};
pub use file_sink::{SinkFile, SinkLine, read_sink};
pub use mirror::{
    CALL_TIMEOUT, State, compare_mirror, differences, mirror_differences, read_prefix,
};
pub use report::{Finding, MAX_DETAILS, Report};
pub use span_log::{double_run, mono_ns};
