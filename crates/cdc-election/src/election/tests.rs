//! Pure tests of the watch interpretation.

use cdc_etcd::{Event, EventKind, KeyValue, WatchResponse};

use super::{WatchOutcome, watch_outcome};

fn response(events: Vec<Event>) -> WatchResponse {
    WatchResponse {
        revision: 10,
        watch_id: 0,
        created: false,
        canceled: false,
        compact_revision: 0,
        cancel_reason: String::new(),
        events,
    }
}

fn event(kind: EventKind, key: &[u8]) -> Event {
    Event {
        kind,
        kv: KeyValue {
            key: key.to_vec(),
            value: Vec::new(),
            create_revision: 0,
            mod_revision: 10,
            version: 0,
            lease: 0,
        },
        prev_kv: None,
    }
}

#[test]
fn compaction_is_reported_even_without_a_reason() {
    let mut compacted = response(vec![]);
    compacted.canceled = true;
    compacted.compact_revision = 4;
    assert_eq!(
        watch_outcome(&compacted, b"/p/1"),
        WatchOutcome::Compacted(4)
    );
}

#[test]
fn only_a_delete_of_the_watched_key_ends_the_wait() {
    let key = b"/p/1";
    assert_eq!(
        watch_outcome(&response(vec![event(EventKind::Put, key)]), key),
        WatchOutcome::Nothing
    );
    assert_eq!(
        watch_outcome(&response(vec![event(EventKind::Delete, b"/p/2")]), key),
        WatchOutcome::Nothing
    );
    assert_eq!(
        watch_outcome(
            &response(vec![
                event(EventKind::Put, key),
                event(EventKind::Delete, key)
            ]),
            key
        ),
        WatchOutcome::Deleted
    );
    let mut progress = response(vec![]);
    progress.watch_id = -1;
    assert_eq!(watch_outcome(&progress, key), WatchOutcome::Nothing);
    let mut cancelled = response(vec![]);
    cancelled.canceled = true;
    assert_eq!(watch_outcome(&cancelled, key), WatchOutcome::Cancelled);
}
