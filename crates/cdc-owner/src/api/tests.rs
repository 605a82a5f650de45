//! Tests of the API's pure half.

use super::*;

#[test]
fn routes() {
    assert_eq!(route("GET", "/changefeeds"), Ok(Route::ListChangefeeds));
    assert_eq!(route("POST", "/changefeeds/"), Ok(Route::CreateChangefeed));
    assert_eq!(
        route("POST", "/changefeeds/cf1/pause"),
        Ok(Route::PauseChangefeed("cf1".to_owned()))
    );
    assert_eq!(
        route("GET", "/processors/cf1/c%2D1"),
        Ok(Route::GetProcessor("cf1".to_owned(), "c-1".to_owned()))
    );
    assert_eq!(
        route("POST", "/captures/abc/drain"),
        Ok(Route::DrainCapture("abc".to_owned()))
    );
    assert_eq!(route("PATCH", "/changefeeds").unwrap_err().status, 404);
}

#[test]
fn query_and_changefeed_id() {
    let query = parse_query("namespace=ns1&state=all&x");
    assert_eq!(query["namespace"], "ns1");
    assert_eq!(query["x"], "");
    assert_eq!(
        changefeed_id("cf1", &query),
        Ok(ChangeFeedId::new("ns1", "cf1"))
    );
    assert_eq!(
        changefeed_id("cf1", &BTreeMap::new()),
        Ok(ChangeFeedId::default_namespace("cf1"))
    );
    let err = changefeed_id("bad_id", &BTreeMap::new()).unwrap_err();
    assert_eq!((err.status, err.code), (400, "CDC:ErrAPIInvalidParam"));
    assert!(err.message.contains("changefeed_id"), "{}", err.message);
}

#[test]
fn a_create_body_is_parsed_with_defaults() {
    let plan = parse_create(
        br#"{"changefeed_id": "cf1", "sink_uri": "blackhole://",
            "replica_config": {"filter": {"rules": ["/a/", "/b/"]}, "scheduler": {"spans_per_prefix": 3}}}"#,
    )
    .unwrap();
    assert_eq!(plan.id, ChangeFeedId::default_namespace("cf1"));
    assert_eq!(plan.start_ts, 0);
    assert_eq!(plan.spec.rules, vec!["/a/".to_owned(), "/b/".to_owned()]);
    assert_eq!(plan.spec.spans_per_prefix, 3);
    assert_eq!(plan.upstream, None);
}

#[test]
fn another_upstream_carries_its_tls_files() {
    let plan = parse_create(
        br#"{"changefeed_id": "cf1", "sink_uri": "blackhole://",
            "replica_config": {"filter": {"rules": ["/a/"]}},
            "pd_addrs": ["https://10.0.0.1:2379", " https://10.0.0.2:2379 "],
            "ca_path": "/tls/ca.pem", "cert_path": "/tls/cdc.pem", "key_path": "/tls/cdc-key.pem",
            "cert_allowed_cn": ["etcd"]}"#,
    )
    .unwrap();
    let upstream = plan.upstream.unwrap();
    assert_eq!(
        upstream.pd_endpoints,
        "https://10.0.0.1:2379,https://10.0.0.2:2379"
    );
    assert_eq!(upstream.ca_path, "/tls/ca.pem");
    assert_eq!(upstream.cert_path, "/tls/cdc.pem");
    assert_eq!(upstream.key_path, "/tls/cdc-key.pem");
    assert_eq!(upstream.cert_allowed_cn, Some(vec!["etcd".to_owned()]));
    // Without pd_addrs the TLS fields are ignored: the cluster's own etcd is read.
    let plan = parse_create(
        br#"{"changefeed_id": "cf1", "sink_uri": "blackhole://",
            "replica_config": {"filter": {"rules": ["/a/"]}}, "ca_path": "/tls/ca.pem"}"#,
    )
    .unwrap();
    assert_eq!(plan.upstream, None);
}

#[test]
fn another_upstreams_tls_must_be_consistent() {
    for (body, needle) in [
        (
            r#""pd_addrs": ["https://10.0.0.1:2379"]"#,
            "pd_addrs https://10.0.0.1:2379 is https:// but ca_path is empty",
        ),
        (
            r#""pd_addrs": ["http://10.0.0.1:2379"], "ca_path": "/ca.pem""#,
            "ca_path is set but pd_addrs http://10.0.0.1:2379 is not https://",
        ),
        (
            r#""pd_addrs": ["https://10.0.0.1:2379"], "ca_path": "/ca.pem", "cert_path": "/c.pem""#,
            "cert_path and key_path go together",
        ),
    ] {
        let err = create_error(&format!(
            r#"{{"changefeed_id": "cf1", "sink_uri": "blackhole://",
                "replica_config": {{"filter": {{"rules": ["/a/"]}}}}, {body}}}"#
        ));
        assert_eq!(err.status, 400, "{body}");
        assert!(err.message.contains(needle), "{body}: {}", err.message);
    }
}

fn create_error(body: &str) -> ApiError {
    parse_create(body.as_bytes()).unwrap_err()
}

#[test]
fn bad_create_bodies_name_the_field() {
    let err = create_error(r#"{"changefeed_id": "cf1", "sink_uri": "blackhole://", "bogus": 1}"#);
    assert_eq!(err.status, 400);
    assert!(err.message.contains("bogus"), "{}", err.message);

    let err = create_error(
        r#"{"changefeed_id": "cf1", "sink_uri": "blackhole://", "replica_config": {"filter": {"rulez": []}}}"#,
    );
    assert!(err.message.contains("rulez"), "{}", err.message);

    let err = create_error(
        r#"{"changefeed_id": "a_b", "sink_uri": "blackhole://", "replica_config": {"filter": {"rules": ["/a/"]}}}"#,
    );
    assert!(err.message.contains("changefeed_id"), "{}", err.message);

    let err = create_error(
        r#"{"changefeed_id": "cf1", "sink_uri": "nope://x", "replica_config": {"filter": {"rules": ["/a/"]}}}"#,
    );
    assert_eq!(err.code, "CDC:ErrSinkURIInvalid");
    assert!(err.message.contains("sink_uri"), "{}", err.message);

    let err = create_error(r#"{"changefeed_id": "cf1", "sink_uri": "blackhole://"}"#);
    assert!(err.message.contains("rules"), "{}", err.message);

    let err = create_error(
        r#"{"changefeed_id": "cf1", "sink_uri": "blackhole://", "replica_config": {"filter": {"rules": ["/a/", "/a/b"]}}}"#,
    );
    assert!(err.message.contains("overlap"), "{}", err.message);

    let err = create_error(
        r#"{"changefeed_id": "cf1", "sink_uri": "blackhole://", "start_ts": 10, "target_ts": 5, "replica_config": {"filter": {"rules": ["/a/"]}}}"#,
    );
    assert!(err.message.contains("target_ts"), "{}", err.message);

    let err = create_error(
        r#"{"changefeed_id": "cf1", "sink_uri": "blackhole://", "replica_config": {"filter": {"rules": ["/a/"]}, "scheduler": {"spans_per_prefix": 0}}}"#,
    );
    assert!(err.message.contains("spans_per_prefix"), "{}", err.message);

    let err = create_error("not json");
    assert_eq!(err.status, 400);
}

#[test]
fn non_utf8_prefixes_come_in_base64() {
    let plan = parse_create(
        br#"{"changefeed_id": "cf1", "sink_uri": "blackhole://",
            "replica_config": {"filter": {"rules_base64": ["/gE="]}}}"#,
    )
    .unwrap();
    assert_eq!(plan.spec.prefixes(), vec![b"\xfe\x01".to_vec()]);
    let err = create_error(
        r#"{"changefeed_id": "cf1", "sink_uri": "blackhole://", "replica_config": {"filter": {"rules_base64": ["***"]}}}"#,
    );
    assert!(err.message.contains("rules_base64"), "{}", err.message);
}

#[test]
fn updates_and_resumes() {
    let spec = ReplicaSpec {
        rules: vec!["/a/".to_owned()],
        spans_per_prefix: 1,
        ..ReplicaSpec::default()
    };
    let info = ChangeFeedInfo {
        start_ts: 10,
        config: Some(spec.new_config()),
        ..ChangeFeedInfo::default()
    };
    let plan = parse_update(br#"{"target_ts": 20, "sink_uri": "blackhole://"}"#, &info).unwrap();
    assert_eq!(plan.target_ts, Some(20));
    assert_eq!(plan.spec, None);
    assert!(parse_update(br#"{"target_ts": 5}"#, &info).is_err());
    let plan = parse_update(
        br#"{"replica_config": {"filter": {"rules": ["/b/"]}}}"#,
        &info,
    )
    .unwrap();
    let spec = plan.spec.unwrap();
    assert_eq!(spec.rules, vec!["/b/".to_owned()]);
    // The new span gets an ID the former one did not have.
    assert_eq!(spec.span_id_base, 1);
    assert_eq!(
        spec.spans(&ChangeFeedId::default_namespace("cf"))[0].span_id,
        SpanId(1)
    );
    // The same rules change nothing.
    let plan = parse_update(
        br#"{"replica_config": {"filter": {"rules": ["/a/"]}}}"#,
        &info,
    )
    .unwrap();
    assert_eq!(plan.spec, None);

    assert_eq!(parse_resume(b""), Ok(None));
    assert_eq!(
        parse_resume(br#"{"overwrite_checkpoint_ts": 7}"#),
        Ok(Some(7))
    );
    assert!(parse_resume(br#"{"nope": 7}"#).is_err());
}

#[test]
fn answers_use_ticdc_field_names() {
    let spec = ReplicaSpec {
        rules: vec!["/a/".to_owned()],
        spans_per_prefix: 1,
        ..ReplicaSpec::default()
    };
    let info = ChangeFeedInfo {
        upstream_id: 7,
        namespace: "default".to_owned(),
        changefeed_id: "cf1".to_owned(),
        sink_uri: "blackhole://".to_owned(),
        start_ts: 10,
        config: Some(spec.new_config()),
        ..ChangeFeedInfo::default()
    };
    let changefeed = info.id();
    let span = spec.spans(&changefeed).remove(0);
    let view = FeedView {
        info: &info,
        state: &FeedState::Normal,
        checkpoint: 12,
        resolved: 13,
        checkpoint_time: None,
        spans: vec![SpanView {
            span,
            capture_id: Some("c1".to_owned()),
            state: cdc_scheduler::SpanState::Replicating,
            checkpoint: cdc_scheduler::Checkpoint::at(12),
        }],
        task_status: BTreeMap::from([("c1".to_owned(), vec![SpanId(0)])]),
    };
    let item = list_item(&view);
    assert_eq!(
        item,
        json!({"upstream_id": 7, "namespace": "default", "id": "cf1", "state": "normal",
               "checkpoint_tso": 12, "checkpoint_time": "", "error": null})
    );
    let detail = detail(&view);
    assert_eq!(detail["checkpoint_ts"], json!(12));
    assert_eq!(detail["resolved_ts"], json!(13));
    assert_eq!(detail["config"]["filter"]["rules"], json!(["/a/"]));
    assert_eq!(
        detail["task_status"],
        json!([{"capture_id": "c1", "table_ids": [0]}])
    );
    assert_eq!(
        detail["spans"],
        json!([{"span_id": 0, "start_key": "/a/", "end_key": "/a0", "capture_id": "c1",
                "state": "replicating", "checkpoint_ts": 12}])
    );
    assert_eq!(
        ApiError::changefeed_not_exists(&changefeed).body(),
        json!({"error_msg": "changefeed not exists, default/cf1", "error_code": "CDC:ErrChangeFeedNotExists"})
    );
}
