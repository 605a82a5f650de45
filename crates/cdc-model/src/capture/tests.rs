//! Tests of capture info and liveness (§8 cases 1 and 2).

use super::*;
use crate::json::{from_json, to_go_json};

#[test]
fn capture_info_marshal_exact() {
    let info = CaptureInfo {
        id: "9ff52aca-aea6-4022-8ec4-fbee3f2c7890".to_owned(),
        address: "127.0.0.1:8300".to_owned(),
        version: "dev".to_owned(),
        ..CaptureInfo::default()
    };
    let bytes = to_go_json(&info).unwrap();
    assert_eq!(
        String::from_utf8(bytes).unwrap(),
        r#"{"id":"9ff52aca-aea6-4022-8ec4-fbee3f2c7890","address":"127.0.0.1:8300","version":"dev","git-hash":"","deploy-path":"","start-timestamp":0}"#
    );
}

#[test]
fn capture_info_full_roundtrip() {
    let info = CaptureInfo {
        id: "9ff52aca-aea6-4022-8ec4-fbee3f2c7890".to_owned(),
        address: "127.0.0.1:8300".to_owned(),
        version: "v7.5.0".to_owned(),
        git_hash: "abcdef".to_owned(),
        deploy_path: "/usr/bin/cdc".to_owned(),
        start_timestamp: 1_234_567_890,
    };
    let bytes = to_go_json(&info).unwrap();
    let decoded: CaptureInfo = from_json(&bytes).unwrap();
    assert_eq!(decoded, info);
    assert_eq!(to_go_json(&decoded).unwrap(), bytes);
}

#[test]
fn capture_info_decodes_nulls_and_missing_fields_as_zero() {
    let decoded: CaptureInfo =
        from_json(br#"{"id":null,"start-timestamp":null,"extra":[1]}"#).unwrap();
    assert_eq!(decoded, CaptureInfo::default());
}

#[test]
fn list_versions_keeps_order_and_empties() {
    let captures = [
        CaptureInfo {
            version: "dev".to_owned(),
            ..CaptureInfo::default()
        },
        CaptureInfo {
            version: String::new(),
            ..CaptureInfo::default()
        },
    ];
    assert_eq!(
        list_versions(&captures),
        vec!["dev".to_owned(), String::new()]
    );
    assert!(list_versions(&[]).is_empty());
}

#[test]
fn liveness_is_one_way() {
    let liveness = AtomicLiveness::new();
    assert_eq!(liveness.load(), Liveness::Alive);
    assert!(liveness.store_stopping());
    assert_eq!(liveness.load(), Liveness::Stopping);
    assert!(!liveness.store_stopping());
    assert_eq!(liveness.load(), Liveness::Stopping);
    assert_eq!(Liveness::Alive.as_i32(), 0);
    assert_eq!(Liveness::Stopping.as_i32(), 1);
    assert_eq!(Liveness::Stopping.to_string(), "Stopping");
}
