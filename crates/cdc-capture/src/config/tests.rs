//! Case 86: the server configuration's validation.

use super::*;

fn message(config: &mut Config) -> String {
    config.validate_and_adjust().unwrap_err().to_string()
}

#[test]
fn server_config_validate_and_adjust() {
    let mut config = Config {
        cluster_id: String::new(),
        addr: String::new(),
        gc_ttl: 0,
        ..Config::default()
    };
    assert!(message(&mut config).contains("bad cluster-id"));
    config.cluster_id = "__backup__".to_owned();
    assert!(message(&mut config).contains("bad cluster-id"));
    config.cluster_id = "owner".to_owned();
    assert!(message(&mut config).contains("bad cluster-id"));
    config.cluster_id = "default".to_owned();
    assert!(message(&mut config).contains("empty address"));
    config.addr = "cdc:1234".to_owned();
    assert!(message(&mut config).contains("empty GC TTL is not allowed"));
    config.gc_ttl = 60;
    config.validate_and_adjust().unwrap();
    assert_eq!(config.advertise_addr, config.addr);

    config.advertise_addr = "advertise:1234".to_owned();
    config.validate_and_adjust().unwrap();
    assert_eq!(config.addr, "cdc:1234");
    assert_eq!(config.advertise_addr, "advertise:1234");

    config.advertise_addr = "0.0.0.0:1234".to_owned();
    assert!(message(&mut config).contains("must be specified"));
    config.addr = "0.0.0.0:1234".to_owned();
    config.advertise_addr = String::new();
    assert!(message(&mut config).contains("must be specified"));
    config.advertise_addr = "advertise".to_owned();
    assert!(message(&mut config).contains("does not contain a port"));
}

#[test]
fn session_ttl_below_minimum_is_reset() {
    let mut config = Config {
        capture_session_ttl: 3,
        ..Config::default()
    };
    let warnings = config.validate_and_adjust().unwrap();
    assert_eq!(config.capture_session_ttl, 10);
    assert_eq!(warnings.len(), 1);
    let mut config = Config {
        capture_session_ttl: 5,
        ..Config::default()
    };
    config.validate_and_adjust().unwrap();
    assert_eq!(config.capture_session_ttl, 5);
}

#[test]
fn cluster_id_rules() {
    assert!(is_valid_cluster_id("default"));
    assert!(is_valid_cluster_id("a-1-b"));
    assert!(is_valid_cluster_id(&"a".repeat(128)));
    assert!(!is_valid_cluster_id(&"a".repeat(129)));
    assert!(!is_valid_cluster_id("a-"));
    assert!(!is_valid_cluster_id("a_b"));
    assert!(!is_valid_cluster_id("meta"));
}

#[test]
fn debug_messages_are_validated_and_adjusted() {
    let mut config = Config::default();
    config.debug.messages.server_worker_pool_size = 0;
    config.validate_and_adjust().unwrap();
    assert_eq!(
        config.debug.messages,
        cdc_p2p::MessagesConfig::default(),
        "worker pool 0 -> default"
    );
    config.debug.messages.server_ack_interval = Duration::from_secs(20);
    assert!(message(&mut config).contains("[debug.messages]"));
}

#[test]
fn a_listen_address_may_name_a_host() {
    // TiCDC listens on `--addr localhost:8300` as `net.Listen` resolves it.
    let addr = parse_listen_addr("localhost:8300").unwrap();
    assert!(addr.ip().is_loopback(), "{addr}");
    assert_eq!(addr.port(), 8300);
    assert_eq!(
        parse_listen_addr("127.0.0.1:1").unwrap(),
        "127.0.0.1:1".parse().unwrap()
    );
    assert!(parse_listen_addr("no port").is_err());
}
