//! Tests of changefeed info and status (§8 cases 3 and 4).

use super::*;
use crate::json::{from_json, to_go_json};

fn error_with_code(code: &str) -> RunningError {
    RunningError {
        code: code.to_owned(),
        ..RunningError::default()
    }
}

#[test]
fn get_ts() {
    let create_time = GoTime::parse("2020-02-02T00:00:00.123+08:00").unwrap();
    let mut info = ChangeFeedInfo {
        sink_uri: "blackhole://".to_owned(),
        create_time,
        ..ChangeFeedInfo::default()
    };
    let expected = (create_time.unix_millis() as u64) << 18;
    assert_eq!(info.start_ts(), expected);
    assert_eq!(info.target_ts(), u64::MAX);
    assert_eq!(info.checkpoint_ts(None), expected);
    let status = ChangeFeedStatus {
        checkpoint_ts: 10,
        ..ChangeFeedStatus::default()
    };
    assert_eq!(info.checkpoint_ts(Some(&status)), 10);

    info.start_ts = 417_136_892_416_622_595;
    info.target_ts = 417_136_892_416_622_999;
    assert_eq!(info.start_ts(), 417_136_892_416_622_595);
    assert_eq!(info.target_ts(), 417_136_892_416_622_999);
    assert_eq!(info.checkpoint_ts(None), 417_136_892_416_622_595);

    // The zero create-time does not panic or wrap.
    assert_eq!(ChangeFeedInfo::default().start_ts(), 0);
}

#[test]
fn clone_is_deep() {
    let info = ChangeFeedInfo {
        sink_uri: "blackhole://".to_owned(),
        config: Some(serde_json::json!({"filter": {"rules": ["*.*"]}})),
        error: Some(error_with_code("CDC:ErrX")),
        ..ChangeFeedInfo::default()
    };
    let mut cloned = info.clone();
    cloned.sink_uri = "mysql://root@127.0.0.1:3306/".to_owned();
    cloned.config.as_mut().unwrap()["filter"]["rules"][0] = "a.*".into();
    cloned.error.as_mut().unwrap().code.push('Y');
    assert_eq!(info.sink_uri, "blackhole://");
    assert_eq!(info.config.as_ref().unwrap()["filter"]["rules"][0], "*.*");
    assert_eq!(info.error.as_ref().unwrap().code, "CDC:ErrX");
}

#[test]
fn encodes_all_fields_in_go_order() {
    let info = ChangeFeedInfo {
        upstream_id: 1,
        namespace: "default".to_owned(),
        changefeed_id: "cf".to_owned(),
        sink_uri: "blackhole://?a=1&b=<2>".to_owned(),
        state: FeedState::Normal,
        ..ChangeFeedInfo::default()
    };
    let json = String::from_utf8(to_go_json(&info).unwrap()).unwrap();
    assert_eq!(
        json,
        r#"{"upstream-id":1,"namespace":"default","changefeed-id":"cf","sink-uri":"blackhole://?a=1\u0026b=\u003c2\u003e","create-time":"0001-01-01T00:00:00Z","start-ts":0,"target-ts":0,"admin-job-type":0,"sort-engine":"","sort-dir":"","config":null,"state":"normal","error":null,"warning":null,"creator-version":"","epoch":0}"#
    );
    let decoded: ChangeFeedInfo = from_json(json.as_bytes()).unwrap();
    assert_eq!(decoded, info);
    assert_eq!(decoded.id(), ChangeFeedId::default_namespace("cf"));
}

#[test]
fn need_block_gc_and_is_running() {
    let cases = [
        (FeedState::Normal, None, true, true),
        (FeedState::Warning, None, true, true),
        (FeedState::Stopped, None, true, false),
        (FeedState::Pending, None, true, false),
        (
            FeedState::Failed,
            Some("CDC:ErrSnapshotLostByGC"),
            false,
            false,
        ),
        (
            FeedState::Failed,
            Some("CDC:ErrStartTsBeforeGC"),
            false,
            false,
        ),
        (
            FeedState::Failed,
            Some("CDC:ErrGCTTLExceeded"),
            false,
            false,
        ),
        (
            FeedState::Failed,
            Some("CDC:ErrSinkURIInvalid"),
            true,
            false,
        ),
        (FeedState::Failed, None, true, false),
        (FeedState::Finished, None, false, false),
        (FeedState::Removed, None, false, false),
    ];
    for (state, code, block_gc, running) in cases {
        let info = ChangeFeedInfo {
            state: state.clone(),
            error: code.map(error_with_code),
            ..ChangeFeedInfo::default()
        };
        assert_eq!(info.need_block_gc(), block_gc, "{state:?} {code:?}");
        assert_eq!(info.is_running(), running, "{state:?}");
    }
}

#[test]
fn fix_state() {
    let cases = [
        (
            FeedState::Normal,
            AdminJobType::Noop,
            None,
            FeedState::Normal,
        ),
        (
            FeedState::Normal,
            AdminJobType::Resume,
            None,
            FeedState::Normal,
        ),
        (
            FeedState::Normal,
            AdminJobType::Noop,
            Some("CDC:ErrGCTTLExceeded"),
            FeedState::Failed,
        ),
        (
            FeedState::Normal,
            AdminJobType::Resume,
            Some("CDC:ErrSnapshotLostByGC"),
            FeedState::Failed,
        ),
        (
            FeedState::Normal,
            AdminJobType::Noop,
            Some("CDC:ErrClusterIDMismatch"),
            FeedState::Warning,
        ),
        (
            FeedState::Normal,
            AdminJobType::Stop,
            None,
            FeedState::Stopped,
        ),
        (
            FeedState::Normal,
            AdminJobType::Finish,
            None,
            FeedState::Finished,
        ),
        (
            FeedState::Normal,
            AdminJobType::Remove,
            Some("CDC:ErrX"),
            FeedState::Removed,
        ),
        (
            FeedState::Stopped,
            AdminJobType::Remove,
            None,
            FeedState::Stopped,
        ),
        (
            FeedState::Failed,
            AdminJobType::Noop,
            Some("CDC:ErrX"),
            FeedState::Failed,
        ),
    ];
    for (state, admin, code, expected) in cases {
        let mut info = ChangeFeedInfo {
            state: state.clone(),
            admin_job_type: admin,
            error: code.map(error_with_code),
            ..ChangeFeedInfo::default()
        };
        info.fix_state();
        assert_eq!(info.state, expected, "{state:?} {admin:?} {code:?}");
    }
}

#[test]
fn verify_and_complete_fills_engine_and_missing_sections() {
    let mut info: ChangeFeedInfo =
        from_json(br#"{"sort-engine":"","config":{"case-sensitive":true,"filter":{"rules":["a.b"]},"sink":null}}"#).unwrap();
    info.verify_and_complete().unwrap();
    assert_eq!(info.sort_engine, "unified");
    let config = info.config.as_ref().unwrap();
    // Present sections are kept as they are; missing or null ones get defaults.
    assert_eq!(config["filter"], serde_json::json!({"rules": ["a.b"]}));
    assert_eq!(config["mounter"], serde_json::json!({"worker-num": 16}));
    assert_eq!(config["sink"]["tidb-source-id"], 1);
    assert_eq!(config["consistent"]["level"], "none");
    assert_eq!(config["scheduler"]["region-threshold"], 100_000);
    assert_eq!(config["integrity"]["integrity-check-level"], "none");
    assert_eq!(
        config["changefeed-error-stuck-duration"],
        1_800_000_000_000_u64
    );
    assert_eq!(config["synced-status"]["checkpoint-interval"], 15);
    assert_eq!(config["case-sensitive"], true);
    // The first key keeps its place.
    assert_eq!(
        config.as_object().unwrap().keys().next().unwrap(),
        "case-sensitive"
    );

    let mut memory = ChangeFeedInfo {
        sort_engine: "memory".to_owned(),
        config: Some(serde_json::json!({})),
        ..ChangeFeedInfo::default()
    };
    memory.verify_and_complete().unwrap();
    assert_eq!(memory.sort_engine, "memory");
}

#[test]
fn verify_and_complete_rejects_null_or_non_object_config() {
    let mut info: ChangeFeedInfo =
        from_json(br#"{"namespace":"ns","changefeed-id":"cf","config":null}"#).unwrap();
    let err = info.verify_and_complete().unwrap_err();
    assert!(
        matches!(&err, Error::NullConfig { changefeed } if changefeed.to_string() == "ns/cf"),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    let mut info = ChangeFeedInfo::default();
    assert!(matches!(
        info.verify_and_complete(),
        Err(Error::NullConfig { .. })
    ));
    let mut info = ChangeFeedInfo {
        config: Some(serde_json::json!([1])),
        ..ChangeFeedInfo::default()
    };
    assert!(matches!(
        info.verify_and_complete(),
        Err(Error::ConfigNotObject { .. })
    ));
}

#[test]
fn admin_job_type_json_and_stop_state() {
    let all = [
        AdminJobType::Noop,
        AdminJobType::Stop,
        AdminJobType::Resume,
        AdminJobType::Remove,
        AdminJobType::Finish,
    ];
    for (n, admin) in all.into_iter().enumerate() {
        assert_eq!(serde_json::to_string(&admin).unwrap(), n.to_string());
        assert_eq!(
            serde_json::from_str::<AdminJobType>(&n.to_string()).unwrap(),
            admin
        );
    }
    assert_eq!(
        all.map(AdminJobType::is_stop_state),
        [false, true, false, true, true]
    );
    assert_eq!(
        all.map(|a| a.to_string()),
        ["noop", "stop", "resume", "remove", "finish"]
    );
    for bad in ["5", "-1", "1.5", "\"1\"", "18446744073709551615"] {
        assert!(serde_json::from_str::<AdminJobType>(bad).is_err(), "{bad}");
    }
}

#[test]
fn feed_state_strings_metrics_and_filter() {
    let cases = [
        (FeedState::Normal, "normal", 0),
        (FeedState::Pending, "pending", 1),
        (FeedState::Failed, "failed", 2),
        (FeedState::Stopped, "stopped", 3),
        (FeedState::Finished, "finished", 4),
        (FeedState::Removed, "removed", 5),
        (FeedState::Warning, "warning", 6),
        (FeedState::Uninitialized, "", 7),
        (FeedState::Unknown("paused".to_owned()), "paused", -1),
    ];
    for (state, text, metric) in cases.clone() {
        assert_eq!(state.as_str(), text);
        assert_eq!(FeedState::parse(text), state);
        assert_eq!(state.metric_value(), metric);
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<FeedState>(&json).unwrap(), state);
        assert!(state.is_needed("all"));
        assert!(state.is_needed(text) || text.is_empty());
    }
    let default_listed: Vec<&str> = cases
        .iter()
        .filter(|(s, _, _)| s.is_needed(""))
        .map(|(_, t, _)| *t)
        .collect();
    assert_eq!(
        default_listed,
        ["normal", "pending", "failed", "stopped", "warning"]
    );
    assert!(!FeedState::Normal.is_needed("stopped"));
    assert!(serde_json::from_str::<FeedState>("1").is_err());
}

#[test]
fn status_ignores_resolved_ts_and_encodes_in_order() {
    let status: ChangeFeedStatus =
        from_json(br#"{"resolved-ts":5,"checkpoint-ts":18446744073709551615,"admin-job-type":1}"#)
            .unwrap();
    assert_eq!(status.checkpoint_ts, u64::MAX);
    assert_eq!(status.admin_job_type, AdminJobType::Stop);
    assert_eq!(
        to_go_json(&status).unwrap(),
        br#"{"checkpoint-ts":18446744073709551615,"min-table-barrier-ts":0,"admin-job-type":1}"#
    );
}
