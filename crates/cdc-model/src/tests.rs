//! Golden tests over every sample of `testdata/ticdc-etcd-samples.json`: values as TiCDC
//! writes them in etcd.

use serde_json::Value;

use crate::{
    CaptureInfo, ChangeFeedInfo, ChangeFeedStatus, FeedState, GoTime, TaskPosition, UpstreamInfo,
    from_json, to_go_json,
};

const SAMPLES: &str = include_str!("testdata/ticdc-etcd-samples.json");

/// The kind of value each sample holds; every sample in the file must be listed here.
#[derive(Debug, Clone, Copy)]
enum Kind {
    CaptureInfo,
    ChangeFeedInfo,
    ChangeFeedStatus,
    TaskPosition,
    UpstreamInfo,
    OwnerValue,
    Integer,
}

fn kind_of(name: &str) -> Kind {
    match name {
        "capture_info_exact" | "capture_info_partial" => Kind::CaptureInfo,
        "changefeed_info_with_unknown_fields" | "changefeed_info_v1" => Kind::ChangeFeedInfo,
        "changefeed_status" | "changefeed_status_with_resolved_ts" => Kind::ChangeFeedStatus,
        "task_position" | "task_position_error" => Kind::TaskPosition,
        "upstream_info" | "upstream_info_empty" => Kind::UpstreamInfo,
        "owner_key" => Kind::OwnerValue,
        "meta_version" | "delete_counter" => Kind::Integer,
        other => panic!("sample {other:?} has no kind: add it to kind_of"),
    }
}

/// `(name, value)` for every sample in the fixture.
fn samples() -> Vec<(String, String)> {
    let root: serde_json::Map<String, Value> = serde_json::from_str(SAMPLES).unwrap();
    root.into_iter()
        .filter(|(name, _)| name != "about")
        .map(|(name, sample)| {
            let value = sample["value"]
                .as_str()
                .unwrap_or_else(|| panic!("{name} has no string value"))
                .to_owned();
            (name, value)
        })
        .collect()
}

fn sample(name: &str) -> String {
    samples()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no sample {name}"))
        .1
}

/// Decodes a value as its kind and re-encodes it; errors are returned, never panics.
fn decode_and_encode(kind: Kind, value: &[u8]) -> crate::Result<Vec<u8>> {
    match kind {
        Kind::CaptureInfo => to_go_json(&from_json::<CaptureInfo>(value)?),
        Kind::ChangeFeedInfo => to_go_json(&from_json::<ChangeFeedInfo>(value)?),
        Kind::ChangeFeedStatus => to_go_json(&from_json::<ChangeFeedStatus>(value)?),
        Kind::TaskPosition => to_go_json(&from_json::<TaskPosition>(value)?),
        Kind::UpstreamInfo => to_go_json(&from_json::<UpstreamInfo>(value)?),
        Kind::OwnerValue => Ok(value.to_vec()),
        Kind::Integer => to_go_json(&from_json::<u64>(value)?),
    }
}

#[test]
fn every_sample_decodes_and_reencodes_stably() {
    let all = samples();
    assert_eq!(
        all.len(),
        13,
        "the fixture changed: review the golden tests"
    );
    for (name, value) in &all {
        let kind = kind_of(name);
        let encoded = decode_and_encode(kind, value.as_bytes())
            .unwrap_or_else(|err| panic!("{name}: {err:#?}"));
        // Encoding is a fixed point: decoding our own output gives the same bytes again.
        let again = decode_and_encode(kind, &encoded).unwrap();
        assert_eq!(again, encoded, "{name}");
    }
}

#[test]
fn capture_info_exact_reencodes_byte_for_byte() {
    let value = sample("capture_info_exact");
    let info: CaptureInfo = from_json(value.as_bytes()).unwrap();
    assert_eq!(info.id, "6bbc01c8-0605-4f86-a0f9-b3119109b225");
    assert_eq!(info.address, "127.0.0.1:8300");
    assert_eq!(info.version, "dev");
    assert_eq!(to_go_json(&info).unwrap(), value.as_bytes());
}

#[test]
fn capture_info_partial_fills_zero_values() {
    let info: CaptureInfo = from_json(sample("capture_info_partial").as_bytes()).unwrap();
    assert_eq!(info.address, "127.0.0.1:8300");
    assert_eq!(
        (
            info.version.as_str(),
            info.git_hash.as_str(),
            info.start_timestamp
        ),
        ("", "", 0)
    );
    assert_eq!(
        to_go_json(&info).unwrap(),
        sample("capture_info_exact")
            .replace("\"dev\"", "\"\"")
            .as_bytes()
    );
}

#[test]
fn changefeed_info_keeps_unknown_fields_and_precision() {
    let info: ChangeFeedInfo =
        from_json(sample("changefeed_info_with_unknown_fields").as_bytes()).unwrap();
    assert_eq!(info.start_ts, 421_980_685_886_554_116);
    assert_eq!(info.sink_uri, "blackhole://");
    assert_eq!(info.sort_engine, "memory");
    assert_eq!(info.state, FeedState::Normal);
    assert_eq!(info.error, None);
    assert_eq!(
        info.create_time,
        GoTime::parse("2020-02-02T00:00:00Z").unwrap()
    );
    let extra_keys: Vec<&str> = info.extra.keys().map(String::as_str).collect();
    assert_eq!(
        extra_keys,
        [
            "opts",
            "history",
            "sync-point-enabled",
            "sync-point-interval"
        ]
    );

    // A read-modify-write keeps every unknown field and the exact u64.
    let mut modified = info.clone();
    modified.state = FeedState::Stopped;
    let encoded = String::from_utf8(to_go_json(&modified).unwrap()).unwrap();
    assert!(
        encoded.contains(r#""start-ts":421980685886554116,"#),
        "{encoded}"
    );
    assert!(
        encoded.contains(r#""create-time":"2020-02-02T00:00:00Z""#),
        "{encoded}"
    );
    assert!(
        encoded.ends_with(
            r#""epoch":0,"opts":{},"history":null,"sync-point-enabled":false,"sync-point-interval":600000000000}"#
        ),
        "{encoded}"
    );
    let config = r#""config":{"case-sensitive":true,"force-replicate":false,"check-gc-safe-point":true,"filter":{"rules":["*.*"],"ignore-txn-start-ts":null},"mounter":{"worker-num":16}}"#;
    assert!(encoded.contains(config), "{encoded}");
    let decoded: ChangeFeedInfo = from_json(encoded.as_bytes()).unwrap();
    assert_eq!(decoded.state, FeedState::Stopped);
    assert_eq!(decoded.extra, info.extra);
    assert_eq!(decoded.config, info.config);
}

#[test]
fn changefeed_info_v1_decodes_and_completes() {
    let mut info: ChangeFeedInfo = from_json(sample("changefeed_info_v1").as_bytes()).unwrap();
    assert_eq!(info.start_ts, 417_136_892_416_622_595);
    assert!(info.create_time.is_zero());
    assert_eq!(info.state, FeedState::Uninitialized);
    assert!(info.extra.is_empty());
    info.verify_and_complete().unwrap();
    let config = info.config.as_ref().unwrap();
    assert_eq!(
        config["filter"],
        serde_json::json!({"ignore-txn-start-ts": [1, 2]})
    );
    assert_eq!(config["sink"]["dispatch-rules"][1]["rule"], "rowid");
    assert_eq!(config["scheduler"]["region-threshold"], 100_000);
}

#[test]
fn status_position_and_upstream_samples() {
    let status: ChangeFeedStatus =
        from_json(sample("changefeed_status_with_resolved_ts").as_bytes()).unwrap();
    assert_eq!(status.checkpoint_ts, 421_980_719_742_451_713);
    assert_eq!(
        to_go_json(&status).unwrap(),
        br#"{"checkpoint-ts":421980719742451713,"min-table-barrier-ts":0,"admin-job-type":0}"#
    );

    let position: TaskPosition = from_json(sample("task_position").as_bytes()).unwrap();
    assert_eq!(position.resolved_ts, 421_980_720_003_809_281);
    assert_eq!((position.error, position.warning), (None, None));
    let position: TaskPosition = from_json(sample("task_position_error").as_bytes()).unwrap();
    let error = position.error.as_ref().unwrap();
    assert_eq!(error.code, "CDC:ErrSinkURIInvalid");
    assert_eq!(error.time.unix_millis(), 1_672_531_200_000);
    assert_eq!(
        to_go_json(&position).unwrap(),
        sample("task_position_error").as_bytes()
    );

    let upstream_bytes = sample("upstream_info");
    let upstream: UpstreamInfo = from_json(upstream_bytes.as_bytes()).unwrap();
    assert_eq!(upstream.id, 12345);
    assert_eq!(
        upstream.pd_endpoint_list(),
        ["http://127.0.0.1:2379", "http://127.0.0.1:2380"]
    );
    assert_eq!(upstream.cert_allowed_cn, None);
    assert_eq!(to_go_json(&upstream).unwrap(), upstream_bytes.as_bytes());
    let empty: UpstreamInfo = from_json(sample("upstream_info_empty").as_bytes()).unwrap();
    assert_eq!(empty, UpstreamInfo::default());
}

#[test]
fn garbage_gives_errors_never_panics() {
    let kinds = [
        Kind::CaptureInfo,
        Kind::ChangeFeedInfo,
        Kind::ChangeFeedStatus,
        Kind::TaskPosition,
        Kind::UpstreamInfo,
    ];
    let garbage: [&[u8]; 14] = [
        b"",
        b"   ",
        b"null",
        b"[]",
        b"\"x\"",
        b"{",
        b"{\"start-ts\":-1}",
        b"{\"start-ts\":1e3}",
        b"{\"checkpoint-ts\":18446744073709551616}",
        b"{\"admin-job-type\":9}",
        b"{\"create-time\":\"yesterday\"}",
        b"{\"error\":{\"time\":12}}",
        b"{\"id\":\"\xff\"}",
        b"\xff\xfe{}",
    ];
    for kind in kinds {
        for input in garbage {
            // Some inputs are valid for some kinds (unknown fields are ignored); the point
            // is that nothing panics.
            let _ = decode_and_encode(kind, input);
        }
        assert!(decode_and_encode(kind, b"").is_err());
        assert!(decode_and_encode(kind, b"[]").is_err());
    }
    assert!(from_json::<ChangeFeedInfo>(b"{\"create-time\":\"yesterday\"}").is_err());
    assert!(from_json::<ChangeFeedInfo>(b"{\"admin-job-type\":9}").is_err());
    assert!(from_json::<ChangeFeedInfo>(b"{\"start-ts\":-1}").is_err());
    assert!(from_json::<TaskPosition>(b"{\"error\":{\"time\":12}}").is_err());

    // Every strict prefix of every JSON sample is an error.
    for (name, value) in samples() {
        let kind = kind_of(&name);
        if matches!(kind, Kind::OwnerValue | Kind::Integer) {
            continue;
        }
        for end in (0..value.len()).filter(|&end| value.is_char_boundary(end)) {
            assert!(
                decode_and_encode(kind, &value.as_bytes()[..end]).is_err(),
                "{name}[..{end}]"
            );
        }
    }
}

#[test]
fn null_fields_decode_to_zero_values_like_go() {
    let info: ChangeFeedInfo = from_json(
        br#"{"upstream-id":null,"sink-uri":null,"create-time":null,"start-ts":null,"admin-job-type":null,"state":null,"config":null,"error":null,"epoch":null}"#,
    )
    .unwrap();
    assert_eq!(info, ChangeFeedInfo::default());
    let position: TaskPosition =
        from_json(br#"{"checkpoint-ts":null,"error":{"time":null,"code":null}}"#).unwrap();
    assert_eq!(position.error.unwrap().time, GoTime::zero());
}
