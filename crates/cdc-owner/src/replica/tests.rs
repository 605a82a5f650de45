//! Tests of the stored replica spec.

use cdc_model::ChangeFeedInfo;

use super::*;

fn spec() -> ReplicaSpec {
    ReplicaSpec {
        rules: vec!["/a/".to_owned(), "/b/".to_owned()],
        rules_base64: vec![b"\xfe\x01".to_vec()],
        spans_per_prefix: 2,
        split_keys: vec![vec![b"/a/m".to_vec()], vec![b"/b/\x80".to_vec()], vec![]],
        span_id_base: 0,
    }
}

#[test]
fn the_spec_round_trips_through_the_stored_config() {
    let config = spec().new_config();
    assert_eq!(config["filter"]["rules"], json!(["/a/", "/b/"]));
    assert_eq!(config["filter"]["rules_base64"], json!(["/gE="]));
    assert_eq!(config["scheduler"]["spans_per_prefix"], json!(2));
    assert_eq!(
        config["scheduler"]["split_keys_base64"],
        json!([["L2EvbQ=="], ["L2IvgA=="], []])
    );
    assert_eq!(ReplicaSpec::from_config(Some(&config)), Ok(spec()));
    let moved = ReplicaSpec {
        span_id_base: 5,
        ..spec()
    };
    let config = moved.new_config();
    assert_eq!(config["scheduler"]["span_id_base"], json!(5));
    assert_eq!(ReplicaSpec::from_config(Some(&config)), Ok(moved.clone()));
    let ids: Vec<u64> = moved
        .spans(&ChangeFeedId::default_namespace("cf"))
        .iter()
        .map(|span| span.span_id.0)
        .collect();
    assert_eq!(ids, vec![5, 6, 7, 8, 9]);
}

#[test]
fn the_spec_survives_verify_and_complete() {
    let mut info = ChangeFeedInfo {
        config: Some(spec().new_config()),
        ..ChangeFeedInfo::default()
    };
    info.verify_and_complete().unwrap();
    let json = cdc_model::to_go_json(&info).unwrap();
    let back: ChangeFeedInfo = cdc_model::from_json(&json).unwrap();
    assert_eq!(ReplicaSpec::from_config(back.config.as_ref()), Ok(spec()));
    assert_eq!(
        back.config.as_ref().unwrap()["mounter"]["worker-num"],
        json!(16)
    );
}

#[test]
fn spans_follow_rules_then_rules_base64() {
    let spans = spec().spans(&ChangeFeedId::default_namespace("cf"));
    let starts: Vec<&[u8]> = spans.iter().map(|s| s.start_key.as_slice()).collect();
    assert_eq!(
        starts,
        vec![&b"/a/"[..], b"/a/m", b"/b/", b"/b/\x80", b"\xfe\x01"]
    );
    assert_eq!(spans[4].end_key, b"\xfe\x02".to_vec());
}

#[test]
fn a_config_without_the_spec_reads_as_no_prefix_and_bad_fields_are_named() {
    assert_eq!(
        ReplicaSpec::from_config(Some(&json!({"filter": {"rules": ["*.*"]}}))),
        Ok(ReplicaSpec {
            rules: vec!["*.*".to_owned()],
            spans_per_prefix: 1,
            ..ReplicaSpec::default()
        })
    );
    assert_eq!(
        ReplicaSpec::from_config(Some(&json!({"scheduler": {"spans_per_prefix": 0}}))),
        Err("scheduler.spans_per_prefix".to_owned())
    );
    assert!(ReplicaSpec::from_config(None).is_err());
}
