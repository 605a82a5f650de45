//! Tests of identifiers and validation (§8 case 5).

use super::*;

#[test]
fn changefeed_id_display_and_constructors() {
    let id = ChangeFeedId::new("ns", "cf-1");
    assert_eq!(id.to_string(), "ns/cf-1");
    let id = ChangeFeedId::default_namespace("cf-1");
    assert_eq!(id.namespace, DEFAULT_NAMESPACE);
    assert_eq!(id.to_string(), "default/cf-1");
}

#[test]
fn validate_changefeed_id_and_namespace() {
    let long_valid = "a".repeat(128);
    let long_invalid = "a".repeat(129);
    let valid = [
        "testTtTT",
        "01131323",
        "a-B-3-dEf",
        "sfa-adsf-ADSF-12",
        long_valid.as_str(),
    ];
    let invalid = [
        "",
        "   ",
        "test_task ",
        "job$ ",
        "test-",
        "-",
        "-sfsdfdf1",
        "a--b",
        long_invalid.as_str(),
    ];
    for id in valid {
        assert!(
            validate_changefeed_id(id).is_ok(),
            "{id:?} should be a valid changefeed id"
        );
        assert!(
            validate_namespace(id).is_ok(),
            "{id:?} should be a valid namespace"
        );
    }
    for id in invalid {
        let err = validate_changefeed_id(id).unwrap_err();
        assert!(
            err.to_string().starts_with("[CDC:ErrInvalidChangefeedID]"),
            "{err}"
        );
        let err = validate_namespace(id).unwrap_err();
        assert!(
            err.to_string().starts_with("[CDC:ErrInvalidNamespaceName]"),
            "{err}"
        );
    }
}

#[test]
fn validate_cluster_id_rejects_reserved_words_and_bad_patterns() {
    for id in ["default", "my-cluster-1", "OWNERS", "ownerx"] {
        assert!(validate_cluster_id(id).is_ok(), "{id:?}");
    }
    for id in RESERVED_CLUSTER_IDS {
        let err = validate_cluster_id(id).unwrap_err();
        assert!(err.to_string().contains("reserved"), "{err}");
    }
    for id in ["", "a_b", "-a", "a/b", &"x".repeat(129)] {
        assert!(validate_cluster_id(id).is_err(), "{id:?}");
    }
    // Non-ASCII letters are not in [a-zA-Z0-9].
    assert!(validate_cluster_id("é").is_err());
}

#[test]
fn new_capture_ids_are_canonical_uuid_v4() {
    let id = new_capture_id();
    let parsed = uuid::Uuid::parse_str(&id).unwrap();
    assert_eq!(parsed.get_version_num(), 4);
    assert_eq!(parsed.to_string(), id);
    assert_ne!(new_capture_id(), id);
}
