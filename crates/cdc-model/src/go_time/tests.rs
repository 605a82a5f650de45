//! Tests of Go time parsing and formatting.

use super::*;

fn roundtrip(input: &str) -> String {
    GoTime::parse(input).unwrap().to_rfc3339_nano().unwrap()
}

#[test]
fn zero_time_formats_like_go() {
    assert_eq!(GoTime::zero().to_string(), "0001-01-01T00:00:00Z");
    assert_eq!(GoTime::default(), GoTime::zero());
    assert!(GoTime::parse("0001-01-01T00:00:00Z").unwrap().is_zero());
    assert!(!GoTime::from_unix_millis(0).unwrap().is_zero());
}

#[test]
fn formats_like_go_rfc3339_nano() {
    // Go's `Z07:00` writes `Z` for a zero offset, even if the input said `+00:00`, and
    // trims trailing zeros of the fraction, dropping the dot when nothing is left.
    assert_eq!(
        roundtrip("2020-02-02T00:00:00.000000+00:00"),
        "2020-02-02T00:00:00Z"
    );
    assert_eq!(
        roundtrip("2020-02-02T00:00:00-00:00"),
        "2020-02-02T00:00:00Z"
    );
    assert_eq!(roundtrip("2023-01-01T00:00:00Z"), "2023-01-01T00:00:00Z");
    assert_eq!(
        roundtrip("2023-01-01T08:00:00.120+08:00"),
        "2023-01-01T08:00:00.12+08:00"
    );
    assert_eq!(
        roundtrip("2023-01-01T08:00:00.123456789-05:30"),
        "2023-01-01T08:00:00.123456789-05:30"
    );
    assert_eq!(
        roundtrip("2023-01-01T08:00:00.000000001Z"),
        "2023-01-01T08:00:00.000000001Z"
    );
}

#[test]
fn equality_is_by_instant_and_offset_is_kept() {
    let utc = GoTime::parse("2020-02-02T00:00:00Z").unwrap();
    let plus8 = GoTime::parse("2020-02-02T08:00:00+08:00").unwrap();
    assert_eq!(utc, plus8);
    assert_eq!(plus8.as_datetime().offset().local_minus_utc(), 8 * 3600);
    assert_eq!(utc.unix_millis(), 1_580_601_600_000);
}

#[test]
fn rejects_what_go_rejects() {
    for input in [
        "",
        "2020-02-02",
        "2020-02-02T00:00:00",
        "2020-13-02T00:00:00Z",
        "2020-02-02T23:59:60Z",
        "garbage",
    ] {
        assert!(GoTime::parse(input).is_err(), "{input:?}");
    }
}

#[test]
fn json_accepts_string_and_null_and_rejects_other_types() {
    let time: GoTime = serde_json::from_str("\"2020-02-02T00:00:00.5+01:00\"").unwrap();
    assert_eq!(
        serde_json::to_string(&time).unwrap(),
        "\"2020-02-02T00:00:00.5+01:00\""
    );
    let time: GoTime = serde_json::from_str("null").unwrap();
    assert!(time.is_zero());
    for input in ["1", "true", "{}", "[]", "\"x\""] {
        assert!(serde_json::from_str::<GoTime>(input).is_err(), "{input}");
    }
}

#[test]
fn year_outside_go_range_fails_to_encode() {
    let far = GoTime::from_unix_millis(400_000_000_000_000).unwrap();
    assert!(far.to_rfc3339_nano().is_err());
    assert!(serde_json::to_string(&far).is_err());
}
