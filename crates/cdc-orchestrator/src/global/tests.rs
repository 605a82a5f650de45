//! State tests after TiCDC's `pkg/orchestrator/reactor_state_test.go`, patched as the worker does.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cdc_model::{AdminJobType, ChangeFeedId, ChangeFeedStatus, TaskPosition};

use super::*;
use crate::patch::{RawEntry, RawState, evaluate_group};

const C: &str = "default";

/// Commits every queued group on `raw` like the worker: a TryAgain attempt is retried once,
/// then every change is fed back to the state.
fn apply<S: ReactorState>(state: &mut S, raw: &mut RawState) -> Result<()> {
    for group in state.get_patches() {
        let empty = BTreeMap::new();
        let changes = match evaluate_group(raw, &empty, &group) {
            Err(Error::EtcdTryAgain) => evaluate_group(raw, &empty, &group)?,
            other => other?,
        };
        for (key, value) in changes {
            write_raw(raw, &key, value.as_deref());
            state.update(&key, value.as_deref(), false)?;
        }
    }
    Ok(())
}

/// Writes `value` under `key` in `raw` (at revision 1); `None` deletes.
fn write_raw(raw: &mut RawState, key: &[u8], value: Option<&[u8]>) {
    match value {
        Some(value) => {
            raw.insert(
                key.to_vec(),
                RawEntry {
                    value: value.to_vec(),
                    mod_revision: 1,
                    create_revision: 1,
                },
            );
        }
        None => {
            raw.remove(key);
        }
    }
}

fn put<S: ReactorState>(state: &mut S, raw: &mut RawState, key: &str, value: Option<&str>) {
    let value = value.map(str::as_bytes);
    write_raw(raw, key.as_bytes(), value);
    state.update(key.as_bytes(), value, false).unwrap();
}

fn cf(id: &str) -> ChangeFeedId {
    ChangeFeedId::new("default", id)
}

/// A new changefeed's info: sink `123`, an empty config, defaults elsewhere.
fn info_with_sink_123() -> cdc_model::ChangeFeedInfo {
    cdc_model::ChangeFeedInfo {
        sink_uri: "123".to_owned(),
        config: Some(serde_json::json!({})),
        ..Default::default()
    }
}

/// Queues a patch that sets the checkpoint of the existing status.
fn set_checkpoint(state: &mut ChangefeedReactorState, checkpoint_ts: u64) {
    state.patch_status(move |status| {
        let mut status = status.unwrap();
        status.checkpoint_ts = checkpoint_ts;
        Ok((Some(status), true))
    });
}

const INFO: &str = r#"{"sink-uri":"blackhole://","opts":{},"create-time":"2020-02-02T00:00:00.000000+08:00","start-ts":421980685886554116,"target-ts":0,"admin-job-type":0,"sort-engine":"memory","sort-dir":"","config":{"case-sensitive":true},"state":"normal","history":null,"error":null,"sync-point-enabled":false,"sync-point-interval":600000000000}"#;

// Case 36 (CheckCaptureAlive).
#[test]
fn check_capture_alive() {
    let mut raw = RawState::new();
    let mut state = ChangefeedReactorState::new(C, cf("test1"));
    state.check_capture_alive("6bbc01c8-0605-4f86-a0f9-b3119109b225");
    let err = apply(&mut state, &mut raw).unwrap_err();
    assert!(err.to_string().contains("[CDC:ErrLeaseExpired]"), "{err}");
    put(
        &mut state,
        &mut raw,
        "/tidb/cdc/default/__cdc_meta__/capture/6bbc01c8-0605-4f86-a0f9-b3119109b225",
        Some(r#"{"id":"6bbc01c8-0605-4f86-a0f9-b3119109b225","address":"127.0.0.1:8300"}"#),
    );
    state.check_capture_alive("6bbc01c8-0605-4f86-a0f9-b3119109b225");
    apply(&mut state, &mut raw).unwrap();
}

// Case 37 (ChangefeedStateUpdate).
#[test]
fn changefeed_state_update() {
    let mut raw = RawState::new();
    let mut state = ChangefeedReactorState::new(C, cf("test1"));
    put(
        &mut state,
        &mut raw,
        "/tidb/cdc/default/default/changefeed/info/test1",
        Some(INFO),
    );
    put(
        &mut state,
        &mut raw,
        "/tidb/cdc/default/default/changefeed/status/test1",
        Some(r#"{"checkpoint-ts":421980719742451713,"admin-job-type":0}"#),
    );
    put(
        &mut state,
        &mut raw,
        "/tidb/cdc/default/default/task/position/6bbc01c8/test1",
        Some(
            r#"{"checkpoint-ts":421980720003809281,"resolved-ts":421980720003809281,"count":0,"error":null}"#,
        ),
    );
    put(
        &mut state,
        &mut raw,
        "/tidb/cdc/default/default/task/position/666777888/test1",
        Some(r#"{"checkpoint-ts":11332244,"resolved-ts":312321,"count":8}"#),
    );
    put(
        &mut state,
        &mut raw,
        "/tidb/cdc/default/default/changefeed/info/test-fake",
        Some("fake value"),
    );
    put(
        &mut state,
        &mut raw,
        "/tidb/cdc/default/default/task/position/666777888/test-fake",
        Some("fake value"),
    );
    let info = state.info.as_ref().unwrap();
    assert_eq!(info.sink_uri, "blackhole://");
    assert_eq!(info.sort_engine, "memory");
    assert_eq!(
        state.status.as_ref().unwrap().checkpoint_ts,
        421980719742451713
    );
    assert_eq!(state.task_positions.len(), 2);
    assert_eq!(state.task_positions["666777888"].count, 8);

    put(
        &mut state,
        &mut raw,
        "/tidb/cdc/default/default/changefeed/info/test1",
        None,
    );
    put(
        &mut state,
        &mut raw,
        "/tidb/cdc/default/default/changefeed/status/test1",
        None,
    );
    put(
        &mut state,
        &mut raw,
        "/tidb/cdc/default/default/task/position/6bbc01c8/test1",
        None,
    );
    put(
        &mut state,
        &mut raw,
        "/tidb/cdc/default/__cdc_meta__/capture/6bbc01c8",
        None,
    );
    assert!(state.info.is_none() && state.status.is_none());
    assert_eq!(
        state.task_positions.keys().collect::<Vec<_>>(),
        ["666777888"]
    );

    // A null config is a typed error, not a panic.
    let err = state
        .update(
            b"/tidb/cdc/default/default/changefeed/info/test1",
            Some(br#"{"config":null}"#),
            false,
        )
        .unwrap_err();
    assert!(matches!(err, Error::Model(_)), "{err:?}");
}

// Case 38 (PatchInfo).
#[test]
fn patch_info() {
    let mut raw = RawState::new();
    let mut state = ChangefeedReactorState::new(C, cf("test1"));
    state.patch_info(|info| {
        assert!(info.is_none());
        Ok((Some(info_with_sink_123()), true))
    });
    apply(&mut state, &mut raw).unwrap();
    let info = state.info.clone().unwrap();
    assert_eq!(info.sort_engine, "unified");
    assert_eq!(info.sink_uri, "123");
    state.patch_info(|info| {
        let mut info = info.unwrap();
        info.start_ts = 6;
        Ok((Some(info), true))
    });
    apply(&mut state, &mut raw).unwrap();
    assert_eq!(state.info.as_ref().unwrap().start_ts, 6);
    state.patch_info(|_| Ok((None, true)));
    apply(&mut state, &mut raw).unwrap();
    assert!(state.info.is_none());
}

// Case 39 (PatchStatus).
#[test]
fn patch_status() {
    let mut raw = RawState::new();
    let mut state = ChangefeedReactorState::new(C, cf("test1"));
    state.patch_status(|_| {
        Ok((
            Some(ChangeFeedStatus {
                checkpoint_ts: 5,
                ..Default::default()
            }),
            true,
        ))
    });
    apply(&mut state, &mut raw).unwrap();
    assert_eq!(state.status.as_ref().unwrap().checkpoint_ts, 5);
    set_checkpoint(&mut state, 6);
    apply(&mut state, &mut raw).unwrap();
    assert_eq!(state.status.as_ref().unwrap().checkpoint_ts, 6);
    state.patch_status(|_| Ok((None, true)));
    apply(&mut state, &mut raw).unwrap();
    assert!(state.status.is_none());
}

// Case 40 (PatchTaskPosition).
#[test]
fn patch_task_position() {
    let mut raw = RawState::new();
    let mut state = ChangefeedReactorState::new(C, cf("test1"));
    for (capture, checkpoint) in [("capture1", 1), ("capture2", 2)] {
        state.patch_task_position(capture, move |position| {
            assert!(position.is_none());
            Ok((
                Some(TaskPosition {
                    checkpoint_ts: checkpoint,
                    ..Default::default()
                }),
                true,
            ))
        });
    }
    apply(&mut state, &mut raw).unwrap();
    for capture in ["capture1", "capture2"] {
        state.patch_task_position(capture, |position| {
            let mut position = position.unwrap();
            position.checkpoint_ts += 1;
            Ok((Some(position), true))
        });
    }
    apply(&mut state, &mut raw).unwrap();
    state.patch_task_position("capture1", |_| Ok((None, false)));
    state.patch_task_position("capture2", |_| Ok((None, true)));
    state.patch_task_position("capture1", |position| {
        let mut position = position.unwrap();
        position.count = 6;
        Ok((Some(position), true))
    });
    apply(&mut state, &mut raw).unwrap();
    assert_eq!(state.task_positions.len(), 1);
    let position = &state.task_positions["capture1"];
    assert_eq!((position.checkpoint_ts, position.count), (2, 6));
}

// Case 41 (GlobalStateUpdate).
#[test]
fn global_state_update() {
    let mut raw = RawState::new();
    let mut state = GlobalReactorState::new(C, 10);
    let owner1 = "/tidb/cdc/default/__cdc_meta__/owner/22317526c4fc9a37";
    put(
        &mut state,
        &mut raw,
        owner1,
        Some("6bbc01c8-0605-4f86-a0f9-b3119109b225"),
    );
    put(
        &mut state,
        &mut raw,
        "/tidb/cdc/default/__cdc_meta__/owner/22317526c4fc9a38",
        Some("6bbc01c8-0605-4f86-a0f9-b3119109b225"),
    );
    put(
        &mut state,
        &mut raw,
        "/tidb/cdc/default/__cdc_meta__/capture/6bbc01c8",
        Some(r#"{"id":"6bbc01c8","address":"127.0.0.1:8300"}"#),
    );
    put(
        &mut state,
        &mut raw,
        "/tidb/cdc/default/default/task/position/6bbc01c8/test1",
        Some(r#"{"checkpoint-ts":1,"resolved-ts":1,"count":0}"#),
    );
    put(
        &mut state,
        &mut raw,
        "/tidb/cdc/default/default/task/position/6bbc01c8/test2",
        Some(r#"{"checkpoint-ts":1,"resolved-ts":1,"count":0}"#),
    );
    put(
        &mut state,
        &mut raw,
        "/tidb/cdc/default/default/upstream/12345",
        Some("{}"),
    );
    assert_eq!(state.owner.len(), 2);
    assert_eq!(state.captures.len(), 1);
    assert_eq!(state.upstreams[&12345], cdc_model::UpstreamInfo::default());
    assert_eq!(state.changefeeds.len(), 2);

    put(&mut state, &mut raw, owner1, None);
    put(
        &mut state,
        &mut raw,
        "/tidb/cdc/default/default/task/position/6bbc01c8/test1",
        None,
    );
    put(
        &mut state,
        &mut raw,
        "/tidb/cdc/default/__cdc_meta__/capture/6bbc01c8",
        None,
    );
    let start = Instant::now();
    state.update_pending_change(start);
    assert_eq!(state.captures.len(), 1, "removal is delayed");
    state.update_pending_change(start + Duration::from_secs(6));
    assert_eq!(state.owner.len(), 1);
    assert!(state.captures.is_empty());
    assert_eq!(
        state.changefeeds.keys().cloned().collect::<Vec<_>>(),
        [cf("test2")]
    );

    // A malformed key is an error, not a panic.
    assert!(
        state
            .update(b"/tidb/cdc/default/__meta_data__/abcd", Some(b"x"), false)
            .is_err()
    );
}

// Case 42 (CaptureChangeHooks) as events, plus a capture that comes back before the delay.
#[test]
fn capture_change_events() {
    let mut state = GlobalReactorState::new(C, 10);
    let mut raw = RawState::new();
    let key = "/tidb/cdc/default/__cdc_meta__/capture/capture-1";
    let value = r#"{"id":"capture-1","address":"ip-1:8300"}"#;
    let added = |address: &str| CaptureEvent::Added {
        id: "capture-1".to_owned(),
        address: address.to_owned(),
    };
    let removed = CaptureEvent::Removed {
        id: "capture-1".to_owned(),
    };
    assert!(state.take_capture_events().is_empty());
    put(&mut state, &mut raw, key, Some(value));
    assert_eq!(state.take_capture_events(), [added("ip-1:8300")]);
    assert!(state.take_capture_events().is_empty(), "drained");
    // The same address again announces nothing new; a new address does.
    put(&mut state, &mut raw, key, Some(value));
    assert!(state.take_capture_events().is_empty());
    let moved = r#"{"id":"capture-1","address":"ip-2:8300"}"#;
    put(&mut state, &mut raw, key, Some(moved));
    assert_eq!(state.take_capture_events(), [added("ip-2:8300")]);

    let start = Instant::now();
    put(&mut state, &mut raw, key, None);
    assert!(state.take_capture_events().is_empty(), "removal is delayed");
    state.update_pending_change(start);
    state.update_pending_change(start + Duration::from_secs(4));
    assert!(state.take_capture_events().is_empty());
    state.update_pending_change(start + Duration::from_secs(5));
    assert_eq!(state.take_capture_events(), [removed]);
    assert!(state.take_capture_events().is_empty(), "drained");

    // Back before the delay: the removal is cancelled.
    put(&mut state, &mut raw, key, Some(value));
    assert_eq!(state.take_capture_events(), [added("ip-1:8300")]);
    put(&mut state, &mut raw, key, None);
    state.update_pending_change(start);
    put(&mut state, &mut raw, key, Some(value));
    state.update_pending_change(start + Duration::from_secs(60));
    assert!(state.take_capture_events().is_empty());
    assert!(state.captures.contains_key("capture-1"));

    // Events not drained in between are the net change: several captures appear at once in
    // capture order, and one that came and went before the drain is not announced.
    let mut state = GlobalReactorState::new(C, 10);
    for (id, address) in [("c", "ip-c"), ("a", "ip-a"), ("b", "ip-b")] {
        let value = format!(r#"{{"id":"{id}","address":"{address}"}}"#);
        let key = format!("/tidb/cdc/default/__cdc_meta__/capture/{id}");
        put(&mut state, &mut raw, &key, Some(&value));
    }
    put(
        &mut state,
        &mut raw,
        "/tidb/cdc/default/__cdc_meta__/capture/b",
        None,
    );
    state.update_pending_change(start);
    state.update_pending_change(start + Duration::from_secs(5));
    let event = |id: &str| CaptureEvent::Added {
        id: id.to_owned(),
        address: format!("ip-{id}"),
    };
    assert_eq!(state.take_capture_events(), [event("a"), event("c")]);
    for id in ["a", "c"] {
        let key = format!("/tidb/cdc/default/__cdc_meta__/capture/{id}");
        put(&mut state, &mut raw, &key, None);
    }
    state.update_pending_change(start + Duration::from_secs(5));
    state.update_pending_change(start + Duration::from_secs(10));
    assert_eq!(
        state.take_capture_events(),
        [
            CaptureEvent::Removed { id: "a".to_owned() },
            CaptureEvent::Removed { id: "c".to_owned() }
        ]
    );
    assert!(state.captures.is_empty());
}

// Case 43 (CheckChangefeedNormal).
#[test]
fn check_changefeed_normal() {
    let mut raw = RawState::new();
    let mut state = ChangefeedReactorState::new(C, cf("test1"));
    state.check_changefeed_normal();
    apply(&mut state, &mut raw).unwrap();
    assert!(state.info.is_none() && state.status.is_none());

    state.patch_info(|_| Ok((Some(info_with_sink_123()), true)));
    state.patch_status(|_| {
        Ok((
            Some(ChangeFeedStatus {
                checkpoint_ts: 1,
                ..Default::default()
            }),
            true,
        ))
    });
    state.check_changefeed_normal();
    apply(&mut state, &mut raw).unwrap();
    assert_eq!(state.status.as_ref().unwrap().checkpoint_ts, 1);

    state.patch_info(|info| {
        let mut info = info.unwrap();
        info.admin_job_type = AdminJobType::Stop;
        Ok((Some(info), true))
    });
    set_checkpoint(&mut state, 2);
    state.check_changefeed_normal();
    apply(&mut state, &mut raw).unwrap();
    assert_eq!(state.status.as_ref().unwrap().checkpoint_ts, 1);

    set_checkpoint(&mut state, 2);
    state.check_changefeed_normal();
    apply(&mut state, &mut raw).unwrap();
    assert_eq!(state.status.as_ref().unwrap().checkpoint_ts, 2);
}
