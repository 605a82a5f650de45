//! Tests of the mirror comparison, by hand and against a real etcd.

use cdc_etcd::testing::EtcdServer;
use serde_json::json;

use super::*;
use crate::fixture::{Fixture, put, sink_put};

fn state(entries: &[(&str, &str)]) -> State {
    entries
        .iter()
        .map(|(key, value)| (key.as_bytes().to_vec(), value.as_bytes().to_vec()))
        .collect()
}

#[test]
fn equal_states_pass_and_each_differing_key_counts() {
    let upstream = state(&[("1", "a"), ("2", "b"), ("3", "c")]);
    assert_eq!(differences("cf", &upstream, &upstream.clone()).count, 0);
    let mirror = state(&[("1", "a"), ("2", "old"), ("4", "gone")]);
    let finding = differences("cf", &upstream, &mirror);
    assert_eq!(finding.count, 3, "{finding:?}");
    assert!(finding.details[0].contains("2 is \"old\" in the mirror, \"b\" upstream"));
    assert!(finding.details[1].contains("3 is missing from the mirror"));
    assert!(finding.details[2].contains("4 is in the mirror but deleted upstream"));
}

#[test]
fn prefix_ends() {
    assert_eq!(prefix_end(b"/b/"), b"/b0".to_vec());
    assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
    assert_eq!(prefix_end(b""), vec![0]);
}

#[tokio::test]
async fn check_compares_a_real_mirror_page_by_page() {
    let etcd = EtcdServer::start().await.unwrap();
    let client = etcd.client().await.unwrap();
    // More keys than a page, so the read goes on from the last key.
    for index in 0..1_200 {
        let value = format!("v{index}");
        client
            .put(format!("/b/{index:05}"), value.clone(), 0)
            .await
            .unwrap();
        client
            .put(format!("/mirror/{index:05}"), value, 0)
            .await
            .unwrap();
    }
    // Outside both prefixes.
    client.put("/b0", "x", 0).await.unwrap();
    let revision = client.put("/a/1", "v", 0).await.unwrap();

    let fixture = Fixture::new();
    fixture.write(
        "changefeeds.json",
        &json!([
            {"id": "cf-file", "prefixes": ["/a/"], "sink": "file", "dir": "sink",
             "start_revision": 1},
            {"id": "cf-mirror", "prefixes": ["/b/"], "sink": "etcd",
             "endpoints": etcd.endpoints(), "sink_prefix": "/mirror/", "start_revision": 1},
        ])
        .to_string(),
    );
    fixture.write_lines(
        "writer.jsonl",
        &[put("/a/1", u64::try_from(revision).unwrap())],
    );
    fixture.write_lines(
        "sink/cf-file/s0.00000000000000000000.jsonl",
        &[sink_put("/a/1", u64::try_from(revision).unwrap())],
    );
    fixture.write("metadata.jsonl", "");
    let report = crate::check(fixture.path(), &etcd.endpoints())
        .await
        .unwrap();
    assert!(report.passed(), "{report}: {:?}", report.details);

    client.put("/b/01100", "changed", 0).await.unwrap();
    client.delete("/mirror/00000", false).await.unwrap();
    let report = crate::check(fixture.path(), &etcd.endpoints())
        .await
        .unwrap();
    assert_eq!(report.lost, 2, "{:?}", report.details);
    assert!(!report.passed());
    assert_eq!(
        report.to_string(),
        "lost=2 reordered=0 double_run=0 checkpoint_regressions=0 stale_owner_writes=0"
    );
    // Without upstream endpoints the mirror is not compared.
    assert!(crate::check(fixture.path(), &[]).await.unwrap().passed());
}

#[tokio::test]
async fn an_unreachable_etcd_is_a_retryable_error() {
    let err = read_prefix(&["http://127.0.0.1:1".to_owned()], "/b/")
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
}
