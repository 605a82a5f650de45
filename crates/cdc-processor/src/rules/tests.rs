//! Tests of reading a changefeed's rules.

use cdc_model::ChangeFeedInfo;
use serde_json::json;

use super::{changefeed_rules, decode_base64};

fn info(config: serde_json::Value) -> ChangeFeedInfo {
    ChangeFeedInfo {
        config: Some(config),
        ..ChangeFeedInfo::default()
    }
}

#[test]
fn rules_come_in_order_text_first_then_base64() {
    let rules = changefeed_rules(&info(json!({
        "filter": {"rules": ["/a/", "/b/"], "rules_base64": ["/w==", "AAEC"]}
    })))
    .unwrap();
    assert_eq!(
        rules,
        [b"/a/".to_vec(), b"/b/".to_vec(), vec![0xff], vec![0, 1, 2]]
    );
    assert!(changefeed_rules(&info(json!({}))).unwrap().is_empty());
    assert!(
        changefeed_rules(&ChangeFeedInfo::default())
            .unwrap()
            .is_empty()
    );
}

#[test]
fn malformed_rules_are_named() {
    let err = changefeed_rules(&info(json!({"filter": {"rules": "/a/"}}))).unwrap_err();
    assert_eq!(err, "filter.rules is not a list");
    let err = changefeed_rules(&info(json!({"filter": {"rules": [1]}}))).unwrap_err();
    assert_eq!(err, "filter.rules holds a non-string");
    let err = changefeed_rules(&info(json!({"filter": {"rules_base64": ["%%"]}}))).unwrap_err();
    assert_eq!(err, "filter.rules_base64 \"%%\" is not base64");
}

#[test]
fn base64_decodes_with_and_without_padding() {
    for (text, expected) in [
        ("", &b""[..]),
        ("Zg==", b"f"),
        ("Zg", b"f"),
        ("Zm8=", b"fo"),
        ("Zm8", b"fo"),
        ("Zm9v", b"foo"),
        ("Zm9vYmFy", b"foobar"),
        ("L2RlbW8v", b"/demo/"),
    ] {
        assert_eq!(decode_base64(text).as_deref(), Some(expected), "{text}");
    }
    for text in ["Z", "Zh==", "Zm9v=", "Zm 9", "Zg=", "Zm9vY"] {
        assert_eq!(decode_base64(text), None, "{text}");
    }
}
