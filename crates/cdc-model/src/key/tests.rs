//! Key layout tests: TiCDC's `etcdkey_test.go` cases and the malformed keys on which the reference
//! panics.

use super::*;

const CAPTURE: &str = "6bbc01c8-0605-4f86-a0f9-b3119109b225";

fn key(kind: CdcKeyKind) -> CdcKey {
    CdcKey {
        cluster_id: "default".to_owned(),
        kind,
    }
}

fn changefeed_info(namespace: &str, changefeed_id: &str) -> CdcKeyKind {
    CdcKeyKind::ChangefeedInfo {
        namespace: namespace.to_owned(),
        changefeed_id: changefeed_id.to_owned(),
    }
}

fn task_position(namespace: &str, changefeed_id: &str) -> CdcKeyKind {
    CdcKeyKind::TaskPosition {
        namespace: namespace.to_owned(),
        capture_id: CAPTURE.to_owned(),
        changefeed_id: changefeed_id.to_owned(),
    }
}

/// Case 6: the ten keys of the reference test parse to the expected key and format back.
#[test]
fn round_trip() {
    let cases = [
        (
            "/tidb/cdc/default/__cdc_meta__/owner/223176cb44d20a13",
            key(CdcKeyKind::Owner {
                lease: Some("223176cb44d20a13".to_owned()),
            }),
        ),
        (
            "/tidb/cdc/default/__cdc_meta__/owner",
            key(CdcKeyKind::Owner { lease: None }),
        ),
        (
            "/tidb/cdc/default/__cdc_meta__/capture/6bbc01c8-0605-4f86-a0f9-b3119109b225",
            key(CdcKeyKind::Capture {
                capture_id: CAPTURE.to_owned(),
            }),
        ),
        (
            "/tidb/cdc/default/default/changefeed/info/test-_@#$%changefeed",
            key(changefeed_info("default", "test-_@#$%changefeed")),
        ),
        (
            "/tidb/cdc/default/default/changefeed/info/test/changefeed",
            key(changefeed_info("default", "test/changefeed")),
        ),
        (
            "/tidb/cdc/default/default/changefeed/status/test-changefeed",
            key(CdcKeyKind::ChangefeedStatus {
                namespace: "default".to_owned(),
                changefeed_id: "test-changefeed".to_owned(),
            }),
        ),
        (
            "/tidb/cdc/default/name/task/position/6bbc01c8-0605-4f86-a0f9-b3119109b225/test-changefeed",
            key(task_position("name", "test-changefeed")),
        ),
        (
            "/tidb/cdc/default/default/task/position/6bbc01c8-0605-4f86-a0f9-b3119109b225/test/changefeed",
            key(task_position("default", "test/changefeed")),
        ),
        (
            "/tidb/cdc/default/default/upstream/12345",
            key(CdcKeyKind::Upstream {
                namespace: "default".to_owned(),
                upstream_id: 12345,
            }),
        ),
        (
            "/tidb/cdc/default/__cdc_meta__/meta/meta-version",
            key(CdcKeyKind::MetaVersion),
        ),
        (
            "/tidb/cdc/default/__cdc_meta__/meta/ticdc-delete-etcd-key-count",
            key(CdcKeyKind::DeleteCounter),
        ),
    ];
    for (text, expected) in cases {
        let parsed = CdcKey::parse("default", text).unwrap();
        assert_eq!(parsed, expected, "{text}");
        assert_eq!(parsed.to_string(), text);
        assert_eq!(
            CdcKey::parse_bytes("default", text.as_bytes()).unwrap(),
            expected
        );
    }
}

/// Case 7, plus every bare key on which the reference panics and the prefix collisions it
/// accepts (`pkg/etcd/etcdkey.go` in pingcap/tiflow; `docs/etcd-keys.md`).
#[test]
fn parse_errors() {
    let ok = [
        format!("/tidb/cdc/default/default/task/position/{CAPTURE}/test/changefeed"),
        format!("/tidb/cdc/default/default/task/position/{CAPTURE}/"),
    ];
    for text in &ok {
        let parsed = CdcKey::parse("default", text).unwrap();
        assert_eq!(&parsed.to_string(), text);
    }
    let bad = [
        format!("/tidb/cdc/default/default/task/position/{CAPTURE}"),
        "/tidb/cd".to_owned(),
        "/tidb/cdc/".to_owned(),
        "/tidb/cdc/default/__meta_data__/abcd".to_owned(),
        "/tidb/cdc/default/default/abcd".to_owned(),
        // Bare keys: the reference panics on each of these.
        "/tidb/cdc/default".to_owned(),
        "/tidb/cdc/default/".to_owned(),
        "/tidb/cdc/default/__cdc_meta__".to_owned(),
        "/tidb/cdc/default/__cdc_meta__/capture".to_owned(),
        "/tidb/cdc/default/default/changefeed/info".to_owned(),
        "/tidb/cdc/default/default/changefeed/status".to_owned(),
        "/tidb/cdc/default/default/upstream".to_owned(),
        "/tidb/cdc/default/default/task/position".to_owned(),
        "/tidb/cdc/default-2".to_owned(),
        // Prefix collisions the reference accepts.
        "/tidb/cdc/default-2/__cdc_meta__/capture/x".to_owned(),
        "/tidb/cdc/defaultx/default/changefeed/info/x".to_owned(),
        "/tidb/cdc/default/__cdc_meta__/owners/x".to_owned(),
        "/tidb/cdc/default/__cdc_meta__/owner/".to_owned(),
        "/tidb/cdc/default/__cdc_meta__/capturex/y".to_owned(),
        "/tidb/cdc/default/default/changefeed/infox/y".to_owned(),
        "/tidb/cdcdefault/default/changefeed/info/y".to_owned(),
        // Upstream IDs that would not format back to the same key.
        "/tidb/cdc/default/default/upstream/abc".to_owned(),
        "/tidb/cdc/default/default/upstream/012".to_owned(),
        "/tidb/cdc/default/default/upstream/+12".to_owned(),
        "/tidb/cdc/default/default/upstream/18446744073709551616".to_owned(),
        "/tidb/cdc/default//changefeed/info/x".to_owned(),
        "/tidb/cdc/default/__cdc_meta__/meta/other".to_owned(),
        String::new(),
    ];
    for text in &bad {
        let err = CdcKey::parse("default", text).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidEtcdKey { key, .. } if key == text),
            "{text}: {err}"
        );
        assert!(
            err.to_string()
                .starts_with("[CDC:ErrInvalidEtcdKey]invalid key: ")
        );
    }
    assert!(matches!(
        CdcKey::parse_bytes("default", b"/tidb/cdc/default/\xff"),
        Err(Error::InvalidEtcdKey { .. })
    ));
    // An unknown key kind cannot be formatted because it cannot be constructed: `CdcKeyKind` is
    // a closed enum, so the reference's "format an unknown type" failure has no counterpart.
}

/// The same key parses for its own cluster and is rejected for a cluster whose name is a prefix
/// of it.
#[test]
fn cluster_boundary() {
    let text = "/tidb/cdc/default-2/__cdc_meta__/capture/x";
    let parsed = CdcKey::parse("default-2", text).unwrap();
    assert_eq!(parsed.cluster_id, "default-2");
    assert_eq!(parsed.to_string(), text);
    assert!(CdcKey::parse("default", text).is_err());
    assert_eq!(
        prefix_with_boundary(&base_key("default")),
        "/tidb/cdc/default/"
    );
    assert_eq!(
        prefix_with_boundary("/tidb/cdc/default/"),
        "/tidb/cdc/default/"
    );
    assert!(!"/tidb/cdc/default-2/x".starts_with(&prefix_with_boundary(&base_key("default"))));
}

/// Case 8.
#[test]
fn key_suffix() {
    assert_eq!(
        extract_key_suffix("/tidb/cdc/capture/info/6a6c6dd290bc8732").unwrap(),
        "6a6c6dd290bc8732"
    );
    assert_eq!(extract_key_suffix("/tidb/cdc/capture/info/").unwrap(), "");
    assert_eq!(extract_key_suffix("/tidb/cdc").unwrap(), "cdc");
    assert_eq!(extract_key_suffix("/tidb").unwrap(), "tidb");
    assert!(matches!(
        extract_key_suffix(""),
        Err(Error::InvalidEtcdKey { .. })
    ));
}

/// Case 9.
#[test]
fn backup_key() {
    assert_eq!(
        migrate_backup_key(1, "/tidb/cdc/capture/abcd"),
        "/tidb/cdc/__backup__/1/tidb/cdc/capture/abcd"
    );
    assert_eq!(
        migrate_backup_key(1, "abcdc"),
        "/tidb/cdc/__backup__/1/abcdc"
    );
}

/// The helpers produce the keys that parse to their kinds.
#[test]
fn helpers() {
    let lease: LeaseId = 0x2231_76cb_44d2_0a13;
    assert_eq!(base_key("c"), "/tidb/cdc/c");
    assert_eq!(owner_prefix("c"), "/tidb/cdc/c/__cdc_meta__/owner");
    let owner = owner_key("c", lease);
    assert_eq!(owner, "/tidb/cdc/c/__cdc_meta__/owner/223176cb44d20a13");
    assert_eq!(
        CdcKey::parse("c", &owner).unwrap().owner_lease_id(),
        Some(lease)
    );
    assert_eq!(capture_prefix("c"), "/tidb/cdc/c/__cdc_meta__/capture");
    assert_eq!(capture_key("c", "x"), "/tidb/cdc/c/__cdc_meta__/capture/x");
    assert_eq!(
        meta_version_key("c"),
        "/tidb/cdc/c/__cdc_meta__/meta/meta-version"
    );
    assert_eq!(
        delete_counter_key(&base_key("c")),
        "/tidb/cdc/c/__cdc_meta__/meta/ticdc-delete-etcd-key-count"
    );
    assert_eq!(
        changefeed_info_prefix("c", "ns"),
        "/tidb/cdc/c/ns/changefeed/info"
    );
    assert_eq!(
        changefeed_status_prefix("c", "ns"),
        "/tidb/cdc/c/ns/changefeed/status"
    );
    assert_eq!(
        task_position_prefix("c", "ns", "cap"),
        "/tidb/cdc/c/ns/task/position/cap"
    );
    assert_eq!(upstream_key("c", "ns", 7), "/tidb/cdc/c/ns/upstream/7");
    assert_eq!(upstream_prefix("c", "ns"), "/tidb/cdc/c/ns/upstream");
    let changefeed = ChangeFeedId::new("ns", "a/b");
    let info = changefeed_info_key("c", &changefeed);
    assert_eq!(info, "/tidb/cdc/c/ns/changefeed/info/a/b");
    let status = changefeed_status_key("c", &changefeed);
    assert_eq!(status, "/tidb/cdc/c/ns/changefeed/status/a/b");
    let position = task_position_key("c", &"cap".to_owned(), &changefeed);
    assert_eq!(position, "/tidb/cdc/c/ns/task/position/cap/a/b");
    for text in [&info, &status, &position] {
        assert_eq!(
            CdcKey::parse("c", text).unwrap().changefeed(),
            Some(changefeed.clone())
        );
    }
    assert_eq!(
        CdcKey::parse("c", &capture_key("c", "x"))
            .unwrap()
            .changefeed(),
        None
    );
    for text in [
        info,
        status,
        position,
        owner,
        capture_key("c", "x"),
        meta_version_key("c"),
        delete_counter_key(&base_key("c")),
        upstream_key("c", "ns", 7),
    ] {
        assert_eq!(CdcKey::parse("c", &text).unwrap().to_string(), text);
    }
}
