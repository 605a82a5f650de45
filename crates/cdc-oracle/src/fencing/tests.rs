//! Tests of the fencing oracle on hand-written run directories.

use serde_json::{Value, json};

use super::*;
use crate::fixture::Fixture;

const OWNER_A: &str = "/tidb/cdc/default/__cdc_meta__/owner/22a";
const OWNER_B: &str = "/tidb/cdc/default/__cdc_meta__/owner/22b";
const STATUS: &str = "/tidb/cdc/default/default/changefeed/status/cf";
const POSITION: &str = "/tidb/cdc/default/default/task/position/cap-a/cf";

fn put(key: &str, value: &str, revision: u64, create_revision: u64) -> Value {
    json!({"type": "put", "key": key, "value": value, "mod_revision": revision,
           "create_revision": create_revision, "mono_ns": revision})
}

fn delete(key: &str, revision: u64) -> Value {
    json!({"type": "delete", "key": key, "mod_revision": revision, "create_revision": 0,
           "mono_ns": revision})
}

/// A's key at 10 (owner from 10), B's at 15 (a candidate), A's deleted at 20 (B owner from 20).
fn elections() -> Vec<Value> {
    vec![
        put(OWNER_A, "cap-a", 10, 10),
        put(OWNER_B, "cap-b", 15, 15),
        delete(OWNER_A, 20),
    ]
}

/// A line as `tracing-subscriber`'s JSON format writes it, inside the capture's span.
fn logged(
    capture: &str,
    outcome: &str,
    owner_key: &str,
    owner_revision: u64,
    revision: Option<u64>,
) -> Value {
    let mut fields = json!({"message": "owner transaction", "outcome": outcome,
                            "owner_key": owner_key, "owner_revision": owner_revision, "keys": 1});
    if let Some(revision) = revision {
        fields["revision"] = json!(revision);
    }
    json!({"timestamp": "2026-01-01T00:00:00.000000Z", "level": "INFO", "fields": fields,
           "target": "cdc::owner_commit",
           "span": {"name": "owner"},
           "spans": [{"capture_id": capture, "name": "capture"}, {"name": "owner"}]})
}

/// A committed transaction of A (term 10) at `revision`, sent and answered.
fn a_commit(revision: u64) -> Vec<Value> {
    vec![
        logged("cap-a", "sending", OWNER_A, 10, None),
        logged("cap-a", "committed", OWNER_A, 10, Some(revision)),
    ]
}

fn b_commit(revision: u64) -> Vec<Value> {
    vec![
        logged("cap-b", "sending", OWNER_B, 15, None),
        logged("cap-b", "committed", OWNER_B, 15, Some(revision)),
    ]
}

fn run(metadata: &[Value], log_a: &[Value], log_b: &[Value]) -> Finding {
    let fixture = Fixture::new();
    let mut metadata = metadata.to_vec();
    metadata.sort_by_key(|event| event["mod_revision"].as_u64());
    fixture.write_lines("metadata.jsonl", &metadata);
    let noise = json!({"level": "INFO", "fields": {"message": "capture joined"},
                       "target": "cdc_capture::reactor"});
    let mut log_a = log_a.to_vec();
    log_a.insert(0, noise);
    fixture.write_lines("capture-1.log", &log_a);
    fixture.write_lines("capture-2.log", log_b);
    fixture.write("capture-1.span.log", "");
    stale_owner_writes(fixture.path()).unwrap()
}

fn with(events: &[Value]) -> Vec<Value> {
    let mut all = elections();
    all.extend_from_slice(events);
    all
}

#[test]
fn the_terms_follow_the_smallest_create_revision() {
    let events: Vec<MetadataEvent> = {
        let fixture = Fixture::new();
        fixture.write_lines("metadata.jsonl", &elections());
        crate::run::metadata_events(fixture.path()).unwrap()
    };
    let terms = owner_terms(&events);
    assert_eq!(terms.len(), 2, "{terms:?}");
    assert_eq!(
        (terms[0].create_revision, terms[0].start, terms[0].end),
        (10, 10, Some(20))
    );
    assert_eq!(terms[0].capture, "cap-a");
    assert_eq!(
        (terms[1].create_revision, terms[1].start, terms[1].end),
        (15, 20, None)
    );
}

#[test]
fn writes_of_each_owner_inside_its_term_pass() {
    let metadata = with(&[
        put(STATUS, "{}", 12, 12),
        // Not an owner-only key: no commit needs to account for it.
        put(POSITION, "{}", 13, 13),
        put(STATUS, "{}", 21, 12),
    ]);
    let finding = run(&metadata, &a_commit(12), &b_commit(21));
    assert_eq!(finding.count, 0, "{finding:?}");
}

#[test]
fn a_commit_after_the_term_ended_is_stale() {
    // A, deposed at 20, still committed at 22 (as an unfenced write would).
    let metadata = with(&[put(STATUS, "{}", 22, 12)]);
    let finding = run(&metadata, &a_commit(22), &[]);
    assert_eq!(finding.count, 1, "{finding:?}");
    assert!(
        finding.details[0].contains(
            "capture-1.log:3 (capture cap-a) committed at revision 22 outside its term 10"
        ),
        "{finding:?}"
    );
}

#[test]
fn a_commit_at_the_term_s_delete_revision_is_stale() {
    let finding = run(&elections(), &a_commit(20), &[]);
    assert_eq!(finding.count, 1, "{finding:?}");
    // One revision earlier is inside.
    let finding = run(&elections(), &a_commit(19), &[]);
    assert_eq!(finding.count, 0, "{finding:?}");
}

#[test]
fn a_candidate_s_commit_before_it_leads_is_stale() {
    // B's key exists from 15, but A leads until 20.
    let finding = run(&elections(), &[], &b_commit(17));
    assert_eq!(finding.count, 1, "{finding:?}");
}

#[test]
fn a_commit_of_an_unrecorded_term_is_stale() {
    let lines = vec![logged(
        "cap-c",
        "committed",
        "/tidb/cdc/default/__cdc_meta__/owner/99",
        99,
        Some(12),
    )];
    let finding = run(&elections(), &lines, &[]);
    assert_eq!(finding.count, 1);
    assert!(
        finding.details[0].contains("a term the metadata never showed"),
        "{finding:?}"
    );
}

#[test]
fn an_owner_only_write_nobody_logged_is_stale() {
    let metadata = with(&[put(STATUS, "{}", 12, 12)]);
    let finding = run(&metadata, &[], &[]);
    assert_eq!(finding.count, 1, "{finding:?}");
    assert!(
        finding.details[0].contains(&format!("revision 12 wrote {STATUS}")),
        "{finding:?}"
    );
    assert!(
        finding.details[0].contains("owner cap-a of term 10"),
        "{finding:?}"
    );
    // Refused transactions excuse nothing.
    let refused = vec![
        logged("cap-a", "sending", OWNER_A, 10, None),
        logged("cap-a", "refused", OWNER_A, 10, Some(11)),
    ];
    assert_eq!(run(&metadata, &refused, &[]).count, 1);
}

#[test]
fn a_transaction_sent_without_an_answer_excuses_one_write_of_its_term() {
    // A sent a transaction and was killed (or cut off) before the answer: it may have
    // committed at 12. It excuses one revision of A's term, not two, and none of B's.
    let unanswered = vec![logged("cap-a", "sending", OWNER_A, 10, None)];
    let metadata = with(&[put(STATUS, "{}", 12, 12)]);
    assert_eq!(run(&metadata, &unanswered, &[]).count, 0);
    let metadata = with(&[put(STATUS, "{}", 12, 12), put(STATUS, "{}", 13, 12)]);
    assert_eq!(run(&metadata, &unanswered, &[]).count, 1);
    let metadata = with(&[put(STATUS, "{}", 21, 12)]);
    assert_eq!(run(&metadata, &unanswered, &[]).count, 1);
}

#[test]
fn an_owner_only_write_with_no_owner_is_stale() {
    let metadata = vec![put(
        "/tidb/cdc/default/__cdc_meta__/meta/meta-version",
        "1",
        5,
        5,
    )];
    let finding = run(&metadata, &[], &[]);
    assert_eq!(finding.count, 1);
    assert!(finding.details[0].contains("(no owner)"), "{finding:?}");
}

#[test]
fn the_owner_only_keys() {
    for key in [
        "/tidb/cdc/c/__cdc_meta__/meta/meta-version",
        "/tidb/cdc/c/default/changefeed/info/cf",
        "/tidb/cdc/c/ns/changefeed/status/a/b",
        "/tidb/cdc/c/default/upstream/7",
    ] {
        assert_eq!(owner_only_cluster(key), Some("c"), "{key}");
    }
    for key in [
        "/tidb/cdc/c/__cdc_meta__/owner/22a",
        "/tidb/cdc/c/__cdc_meta__/capture/x",
        "/tidb/cdc/c/__cdc_meta__/meta/ticdc-delete-etcd-key-count",
        "/tidb/cdc/c/default/task/position/x/cf",
        "/tidb/cdc/__backup__/1/tidb/cdc/changefeed/info/cf",
        "/chaos/a/1",
    ] {
        assert_eq!(owner_only_cluster(key), None, "{key}");
    }
}

#[test]
fn owner_transactions_logged_as_text_are_an_error() {
    let fixture = Fixture::new();
    fixture.write_lines("metadata.jsonl", &elections());
    fixture.write(
        "capture-1.log",
        "2026-01-01T00:00:00Z INFO cdc::owner_commit: owner transaction outcome=\"sending\"\n",
    );
    assert!(stale_owner_writes(fixture.path()).is_err());
}
