//! The router's peers follow the capture keys through the state's capture events.

use std::time::Duration;

use cdc_p2p::ClientConfig;

use super::*;

const PEER_KEY: &[u8] = b"/tidb/cdc/default/__cdc_meta__/capture/peer-1";
const PEER_VALUE: &[u8] = br#"{"id":"peer-1","address":"127.0.0.1:1"}"#;

/// Waits up to 10 s for the router to forget `id` (a removed peer's client leaves the router
/// once its task has seen the cancellation).
async fn forgotten(router: &MessageRouter, id: &str) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        if router.client(id).is_none() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

// A capture key put makes the capture a peer at once; after the delete, it stays one until the
// removal delay has passed, then the router forgets it (TiCDC's capture hooks).
#[tokio::test]
async fn peers_follow_the_capture_keys() {
    let router = Arc::new(MessageRouter::new("self", ClientConfig::default()));
    let mut state = PeerSyncState::new(
        CaptureState(GlobalReactorState::new("default", 10)),
        Arc::clone(&router),
        None,
    );
    assert!(router.client("peer-1").is_none());
    state.update(PEER_KEY, Some(PEER_VALUE), false).unwrap();
    assert!(router.client("peer-1").is_some(), "a peer from the put on");

    // The router is not asked for peer-2 before the removal is due, so that a client it would
    // keep after a premature removal cannot answer for it.
    let key = b"/tidb/cdc/default/__cdc_meta__/capture/peer-2";
    let value = br#"{"id":"peer-2","address":"127.0.0.1:2"}"#;
    state.update(key, Some(value), false).unwrap();
    state.update(key, None, false).unwrap();
    let start = Instant::now();
    state.update_pending_change(start);
    state.update_pending_change(start + Duration::from_secs(4));
    assert!(router.client("peer-2").is_some(), "the removal is delayed");
    state.update_pending_change(start + Duration::from_secs(5));
    assert!(
        forgotten(&router, "peer-2").await,
        "removed after the delay"
    );
    assert!(router.client("peer-1").is_some(), "the other peer stays");
}
