//! Tests of the lost and reordered oracles on hand-written run directories.

use serde_json::json;

use super::*;
use crate::fixture::{Fixture, delete, put, sink_delete, sink_put};

fn run(writer: &[serde_json::Value], files: &[(&str, &[serde_json::Value])]) -> Fixture {
    let fixture = Fixture::new();
    fixture.changefeeds();
    fixture.write_lines("writer.jsonl", writer);
    for (name, lines) in files {
        fixture.write_lines(&format!("sink/cf-file/{name}"), lines);
    }
    fixture
}

#[test]
fn everything_delivered_in_order_passes() {
    let fixture = run(
        &[put("/a/1", 2), put("/b/1", 3), delete("/a/1", 4, 1)],
        &[(
            "s0.00000000000000000000.jsonl",
            &[sink_put("/a/1", 2), sink_delete("/a/1", 4)],
        )],
    );
    let (lost, reordered) = lost_and_reordered(fixture.path()).unwrap();
    assert_eq!(
        (lost.count, reordered.count),
        (0, 0),
        "{lost:?} {reordered:?}"
    );
}

#[test]
fn a_missing_change_is_lost() {
    let fixture = run(
        &[put("/a/1", 2), put("/a/2", 3), delete("/a/1", 4, 1)],
        &[("s0.00000000000000000000.jsonl", &[sink_put("/a/1", 2)])],
    );
    let (lost, reordered) = lost_and_reordered(fixture.path()).unwrap();
    assert_eq!((lost.count, reordered.count), (2, 0));
    assert!(lost.details[0].contains("/a/2 at revision 3"), "{lost:?}");
    assert!(
        lost.details[1].contains("Delete of /a/1 at revision 4"),
        "{lost:?}"
    );
}

#[test]
fn ambiguous_and_empty_writes_and_other_prefixes_are_not_required() {
    let fixture = run(
        &[
            json!({"op": "put", "key": "/a/1", "ambiguous": true}),
            // A delete of an absent key: its header revision is another write's.
            delete("/a/2", 5, 0),
            // Before the start revision, and under the mirror's prefix.
            put("/a/3", 1),
            put("/b/1", 6),
        ],
        &[],
    );
    let (lost, _) = lost_and_reordered(fixture.path()).unwrap();
    assert_eq!(lost.count, 0, "{lost:?}");
}

#[test]
fn a_change_in_an_unfinished_last_line_is_lost() {
    let fixture = run(&[put("/a/1", 2)], &[]);
    fixture.write(
        "sink/cf-file/s0.00000000000000000000.jsonl",
        &sink_put("/a/1", 2).to_string(),
    );
    let (lost, _) = lost_and_reordered(fixture.path()).unwrap();
    assert_eq!(lost.count, 1);
}

#[test]
fn a_replay_after_a_failover_is_no_reorder() {
    // The first capture wrote 2, 3, 4 and died; the next resumed from checkpoint 2 and wrote
    // 3, 4, 5 into a file with a larger sequence.
    let fixture = run(
        &[
            put("/a/1", 2),
            put("/a/1", 3),
            put("/a/1", 4),
            put("/a/1", 5),
        ],
        &[
            (
                "s0.00000000000000000000.jsonl",
                &[
                    sink_put("/a/1", 2),
                    sink_put("/a/1", 3),
                    sink_put("/a/1", 4),
                ],
            ),
            (
                "s0.00000000000000000001.jsonl",
                &[
                    sink_put("/a/1", 3),
                    sink_put("/a/1", 4),
                    sink_put("/a/1", 5),
                ],
            ),
        ],
    );
    let (lost, reordered) = lost_and_reordered(fixture.path()).unwrap();
    assert_eq!((lost.count, reordered.count), (0, 0), "{reordered:?}");
}

#[test]
fn a_change_first_seen_after_a_later_one_is_reordered() {
    let fixture = run(
        &[put("/a/1", 2), put("/a/1", 3), put("/a/2", 4)],
        &[
            ("s0.00000000000000000000.jsonl", &[sink_put("/a/1", 3)]),
            // The next file sorts later: 2 appears for the first time after 3.
            (
                "s0.00000000000000000001.jsonl",
                &[sink_put("/a/2", 4), sink_put("/a/1", 2)],
            ),
        ],
    );
    let (lost, reordered) = lost_and_reordered(fixture.path()).unwrap();
    assert_eq!((lost.count, reordered.count), (0, 1));
    assert!(
        reordered.details[0].contains("/a/1 at revision 2 first appears in cf-file/s0.00000000000000000001.jsonl after revision 3"),
        "{reordered:?}"
    );
}

#[test]
fn spans_are_ordered_separately() {
    // Two spans' files interleave by name, but each key's order is within its span.
    let fixture = run(
        &[put("/a/1", 2), put("/a/2", 3)],
        &[
            ("s0.00000000000000000000.jsonl", &[sink_put("/a/2", 3)]),
            ("s1.00000000000000000000.jsonl", &[sink_put("/a/1", 2)]),
        ],
    );
    let (lost, reordered) = lost_and_reordered(fixture.path()).unwrap();
    assert_eq!((lost.count, reordered.count), (0, 0));
}

#[test]
fn a_malformed_sink_line_is_an_error() {
    let fixture = run(&[put("/a/1", 2)], &[]);
    fixture.write("sink/cf-file/s0.00000000000000000000.jsonl", "{oops\n");
    let err = lost_and_reordered(fixture.path()).unwrap_err();
    assert!(!err.is_retryable());
    assert!(
        err.to_string().contains("s0.00000000000000000000.jsonl:1"),
        "{err}"
    );
}

#[test]
fn a_missing_writer_log_is_an_error() {
    let fixture = Fixture::new();
    fixture.changefeeds();
    assert!(lost_and_reordered(fixture.path()).is_err());
}
