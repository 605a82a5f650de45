//! Tests of the checkpoint oracle on hand-written run directories.

use serde_json::{Value, json};

use super::*;
use crate::fixture::{Fixture, put, sink_put};

const STATUS: &str = "/tidb/cdc/default/default/changefeed/status/cf-file";

fn status(checkpoint: u64, revision: u64) -> Value {
    let value =
        json!({"checkpoint-ts": checkpoint, "min-table-barrier-ts": 0, "admin-job-type": 0});
    json!({"type": "put", "key": STATUS, "value": value.to_string(), "mod_revision": revision,
           "create_revision": 5, "mono_ns": revision * 10})
}

fn sample(checkpoint: u64, mono_ns: u64, files: &[(&str, u64)]) -> Value {
    let files: serde_json::Map<String, Value> = files
        .iter()
        .map(|(path, size)| ((*path).to_owned(), json!(size)))
        .collect();
    json!({"changefeed": "default/cf-file", "checkpoint": checkpoint, "mono_ns": mono_ns,
           "files": files})
}

const FILE: &str = "cf-file/s0.00000000000000000000.jsonl";

/// A run whose writer put /a/1 at 10 and /a/2 at 11, both in the sink's one file.
fn run(metadata: &[Value], samples: &[Value]) -> Fixture {
    let fixture = Fixture::new();
    fixture.changefeeds();
    fixture.write_lines("writer.jsonl", &[put("/a/1", 10), put("/a/2", 11)]);
    fixture.write_lines(
        &format!("sink/{FILE}"),
        &[sink_put("/a/1", 10), sink_put("/a/2", 11)],
    );
    fixture.write_lines("metadata.jsonl", metadata);
    fixture.write_lines("sink_samples.jsonl", samples);
    fixture
}

fn first_line_size() -> u64 {
    sink_put("/a/1", 10).to_string().len() as u64 + 1
}

#[test]
fn a_checkpoint_that_only_advances_over_held_changes_passes() {
    let full = 2 * first_line_size() + 10;
    let fixture = run(
        &[
            status(9, 20),
            status(10, 21),
            status(10, 22),
            status(12, 23),
        ],
        &[
            sample(9, 100, &[]),
            sample(10, 200, &[(FILE, first_line_size())]),
            sample(12, 300, &[(FILE, full)]),
        ],
    );
    let finding = checkpoint_regressions(fixture.path()).unwrap();
    assert_eq!(finding.count, 0, "{finding:?}");
}

#[test]
fn a_stored_checkpoint_that_moves_back_is_a_regression() {
    let fixture = run(&[status(12, 20), status(11, 21), status(12, 22)], &[]);
    let finding = checkpoint_regressions(fixture.path()).unwrap();
    assert_eq!(finding.count, 1);
    assert!(
        finding.details[0].contains("moved back from 12 (revision 20) to 11 (revision 21)"),
        "{finding:?}"
    );
}

#[test]
fn a_deleted_status_starts_over() {
    let delete = json!({"type": "delete", "key": STATUS, "mod_revision": 21,
                        "create_revision": 0, "mono_ns": 1});
    let fixture = run(&[status(12, 20), delete, status(3, 22)], &[]);
    assert_eq!(checkpoint_regressions(fixture.path()).unwrap().count, 0);
}

#[test]
fn a_checkpoint_past_a_change_not_in_the_sink_yet_is_a_regression() {
    // At 200 the checkpoint is 11 but the sink held only the first line.
    let fixture = run(
        &[],
        &[
            sample(11, 200, &[(FILE, first_line_size())]),
            sample(11, 300, &[(FILE, 2 * first_line_size())]),
        ],
    );
    let finding = checkpoint_regressions(fixture.path()).unwrap();
    assert_eq!(finding.count, 1, "{finding:?}");
    assert!(
        finding.details[0].contains("checkpoint 11 (seen at 200 ns) passes Put of /a/2"),
        "{finding:?}"
    );
}

#[test]
fn samples_of_other_changefeeds_and_unfinished_lines_do_not_count() {
    let mut other = sample(11, 200, &[]);
    other["changefeed"] = json!("default/cf-mirror");
    let fixture = run(&[], &[other]);
    assert_eq!(checkpoint_regressions(fixture.path()).unwrap().count, 0);
    // One byte short of the second line's newline: not held.
    let fixture = run(
        &[],
        &[sample(11, 200, &[(FILE, 2 * first_line_size() - 1)])],
    );
    assert_eq!(checkpoint_regressions(fixture.path()).unwrap().count, 1);
}

#[test]
fn a_malformed_status_is_an_error() {
    let mut bad = status(1, 20);
    bad["value"] = json!("{");
    let fixture = run(&[bad], &[]);
    assert!(checkpoint_regressions(fixture.path()).is_err());
}
