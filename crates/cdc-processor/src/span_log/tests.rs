//! Tests of the span log: whole lines from writers sharing the file, on the monotonic clock.

use std::sync::Arc;

use cdc_model::ChangeFeedId;
use cdc_scheduler::{SpanId, SpanRef};

use super::{SpanEvent, SpanLog, monotonic_ns};

#[test]
fn writers_sharing_the_file_append_whole_lines_in_clock_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spans.jsonl");
    let n_lines = 300u64;
    // Two handles, as two processes would open the file.
    let writers: Vec<_> = ["capture-a", "capture-b"]
        .into_iter()
        .map(|capture| {
            let span_log = Arc::new(SpanLog::open(&path).unwrap());
            std::thread::spawn(move || {
                for i in 0..n_lines {
                    let span = SpanRef {
                        changefeed: ChangeFeedId::new("ns", "cf"),
                        span_id: SpanId(i),
                    };
                    let event = if i.is_multiple_of(2) {
                        SpanEvent::Start
                    } else {
                        SpanEvent::Stop
                    };
                    span_log.append(capture, &span, event).unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    let after = monotonic_ns().unwrap();

    let text = std::fs::read_to_string(&path).unwrap();
    let mut last_by_capture = std::collections::BTreeMap::new();
    let mut n_read = 0;
    for line in text.lines() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        let capture = value["capture"].as_str().unwrap().to_owned();
        let span_id = value["span_id"].as_u64().unwrap();
        let mono_ns = value["mono_ns"].as_u64().unwrap();
        assert_eq!(value["changefeed"], "ns/cf");
        let expected = if span_id.is_multiple_of(2) {
            "start"
        } else {
            "stop"
        };
        assert_eq!(value["event"], expected);
        assert!(mono_ns <= after);
        let last = last_by_capture.insert(capture, (span_id, mono_ns));
        if let Some((last_span_id, last_mono_ns)) = last {
            assert_eq!(
                span_id,
                last_span_id + 1,
                "lines of one writer keep their order"
            );
            assert!(mono_ns >= last_mono_ns);
        }
        n_read += 1;
    }
    assert_eq!(n_read, 2 * n_lines);
}
