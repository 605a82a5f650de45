//! Tests of the Go-compatible JSON helpers.

use super::*;

#[test]
fn escapes_html_characters_and_line_separators_like_go() {
    let value = serde_json::json!({"k": "a<b>&c\u{2028}d\u{2029}e\u{2027}é\n"});
    let bytes = to_go_json(&value).unwrap();
    assert_eq!(
        String::from_utf8(bytes.clone()).unwrap(),
        "{\"k\":\"a\\u003cb\\u003e\\u0026c\\u2028d\\u2029e\u{2027}é\\n\"}"
    );
    // Decoders accept both the escaped and the raw form.
    let decoded: serde_json::Value = from_json(&bytes).unwrap();
    assert_eq!(decoded, value);
    let raw: serde_json::Value =
        from_json("{\"k\":\"a<b>&c\u{2028}d\u{2029}e\u{2027}é\\n\"}".as_bytes()).unwrap();
    assert_eq!(raw, value);
}

#[test]
fn leaves_plain_output_alone() {
    assert_eq!(
        to_go_json(&serde_json::json!({"a": [1, "x"]})).unwrap(),
        b"{\"a\":[1,\"x\"]}"
    );
}

#[test]
fn decode_errors_name_the_type() {
    let err = from_json::<std::collections::BTreeMap<String, u64>>(b"{").unwrap_err();
    assert!(
        err.to_string()
            .contains("[CDC:ErrUnmarshalFailed] decode BTreeMap"),
        "{err}"
    );
    assert!(!err.is_retryable());
}
