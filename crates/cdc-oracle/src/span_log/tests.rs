//! Tests of the span-log checker and the double-run oracle.

use serde_json::json;

use super::*;
use crate::fixture::Fixture;

fn line(capture: &str, span_id: u64, event: &str, mono_ns: u64) -> String {
    format!(
        "{{\"capture\":\"{capture}\",\"changefeed\":\"default/cf\",\"span_id\":{span_id},\"event\":\"{event}\",\"mono_ns\":{mono_ns}}}\n"
    )
}

fn log(lines: &[String], died_at: Option<u64>) -> ProcessLog {
    ProcessLog {
        name: "test".to_owned(),
        text: lines.concat(),
        died_at,
    }
}

#[test]
fn a_move_that_stops_before_it_starts_passes() {
    let a = log(&[line("a", 1, "start", 10), line("a", 1, "stop", 20)], None);
    let b = log(&[line("b", 1, "start", 21)], None);
    let history = parse(&[a, b]).unwrap();
    history.check_no_overlap().unwrap();
    assert_eq!(history.starts(), 2);
    assert_eq!(history.moves(), 1);
}

#[test]
fn a_start_before_the_other_stop_is_an_overlap() {
    let a = log(&[line("a", 1, "start", 10), line("a", 1, "stop", 20)], None);
    let b = log(&[line("b", 1, "start", 19)], None);
    let err = parse(&[a, b]).unwrap().check_no_overlap().unwrap_err();
    let message = err.to_string();
    assert!(message.contains("span 1 of default/cf"), "{message}");
    assert!(message.contains("a from 10 to 20"), "{message}");
    assert!(message.contains("b from 19 on"), "{message}");
}

#[test]
fn a_killed_process_runs_its_spans_until_its_death() {
    // a was killed at 30 without writing a stop: b starting at 25 overlaps, at 31 not.
    let a = || log(&[line("a", 1, "start", 10)], Some(30));
    let early = log(&[line("b", 1, "start", 25)], None);
    assert!(parse(&[a(), early]).unwrap().check_no_overlap().is_err());
    let late = log(&[line("b", 1, "start", 31)], None);
    parse(&[a(), late]).unwrap().check_no_overlap().unwrap();
}

#[test]
fn a_running_span_overlaps_every_later_start() {
    // a never stopped and was not killed: it runs to the end.
    let a = log(&[line("a", 1, "start", 10)], None);
    let b = log(
        &[line("b", 1, "start", 1_000), line("b", 1, "stop", 2_000)],
        None,
    );
    assert!(parse(&[a, b]).unwrap().check_no_overlap().is_err());
}

#[test]
fn an_overlap_with_an_earlier_long_interval_is_found() {
    // c overlaps a (long), not b (which a contains, itself an overlap, reported first).
    let a = log(
        &[line("a", 1, "start", 10), line("a", 1, "stop", 100)],
        None,
    );
    let c = log(&[line("c", 1, "start", 60), line("c", 1, "stop", 70)], None);
    let err = parse(&[a, c]).unwrap().check_no_overlap().unwrap_err();
    assert!(err.to_string().contains("c from 60 to 70"), "{err}");
}

#[test]
fn every_overlap_is_counted() {
    let a = log(
        &[line("a", 1, "start", 10), line("a", 1, "stop", 100)],
        None,
    );
    let b = log(&[line("b", 1, "start", 20), line("b", 1, "stop", 30)], None);
    let c = log(&[line("c", 1, "start", 60), line("c", 1, "stop", 70)], None);
    assert_eq!(parse(&[a, b, c]).unwrap().overlaps().len(), 2);
}

#[test]
fn other_spans_and_other_changefeeds_do_not_overlap() {
    let a = log(&[line("a", 1, "start", 10)], None);
    let b = log(
        &[
            line("b", 2, "start", 11),
            line("b", 1, "start", 12).replace("default/cf", "default/other"),
        ],
        None,
    );
    parse(&[a, b]).unwrap().check_no_overlap().unwrap();
}

#[test]
fn the_same_capture_restarting_a_span_is_no_overlap() {
    let a = log(
        &[
            line("a", 1, "start", 10),
            line("a", 1, "stop", 20),
            line("a", 1, "start", 30),
        ],
        None,
    );
    let history = parse(&[a]).unwrap();
    history.check_no_overlap().unwrap();
    assert_eq!(history.moves(), 0);
}

#[test]
fn malformed_logs_are_errors() {
    let cases = [
        log(&["{not json\n".to_owned()], None),
        log(&[line("a", 1, "stop", 10)], None),
        log(
            &[line("a", 1, "start", 10), line("a", 1, "start", 11)],
            None,
        ),
        log(&[line("a", 1, "start", 10), line("a", 1, "stop", 5)], None),
        log(&[line("a", 1, "pause", 10)], None),
        log(&[line("a", 1, "start", 40)], Some(30)),
    ];
    for case in cases {
        let text = case.text.clone();
        assert!(parse(&[case]).is_err(), "{text}");
    }
}

#[test]
fn the_clock_is_monotonic_and_shared() {
    let first = mono_ns();
    let second = mono_ns();
    assert!(first > 0 && second >= first);
}

#[test]
fn a_restarted_slot_splits_at_each_death() {
    // Process 1 of slot 1 ran span 1 and died at 30; process 2 started it again at 40.
    let text = [
        line("a", 1, "start", 10),
        line("a2", 1, "start", 40),
        line("a2", 1, "stop", 50),
        line("a3", 1, "start", 70),
    ]
    .concat();
    let logs = split_by_deaths(Path::new("capture-1.span.log"), &text, vec![60, 30]);
    assert_eq!(logs.len(), 3);
    assert_eq!(logs[0].died_at, Some(30));
    assert_eq!(logs[0].text, line("a", 1, "start", 10));
    assert_eq!(logs[1].died_at, Some(60));
    assert_eq!(logs[2].died_at, None);
    let history = parse(&logs).unwrap();
    history.check_no_overlap().unwrap();
    assert_eq!(history.starts(), 3);
}

fn death(capture: &str, died_at: u64) -> serde_json::Value {
    json!({"capture": capture, "pid": 1234, "died_at_mono_ns": died_at})
}

#[test]
fn double_run_passes_when_a_dead_capture_s_span_moves_after_its_death() {
    let fixture = Fixture::new();
    fixture.write("capture-1.span.log", &line("a", 1, "start", 10));
    fixture.write("capture-2.span.log", &line("b", 1, "start", 31));
    // Not a span log: ignored.
    fixture.write("capture-1.log", "{}\n");
    fixture.write_lines("deaths.jsonl", &[death("1", 30)]);
    let finding = double_run(fixture.path()).unwrap();
    assert_eq!(finding.count, 0, "{finding:?}");
}

#[test]
fn double_run_counts_a_span_started_before_the_other_s_death() {
    let fixture = Fixture::new();
    fixture.write("capture-1.span.log", &line("a", 1, "start", 10));
    fixture.write("capture-2.span.log", &line("b", 1, "start", 25));
    fixture.write_lines("deaths.jsonl", &[death("1", 30)]);
    let finding = double_run(fixture.path()).unwrap();
    assert_eq!(finding.count, 1);
    assert!(
        finding.details[0].contains("a from 10 to 30 and b from 25 on"),
        "{finding:?}"
    );
}

#[test]
fn double_run_without_deaths_file_runs_every_span_to_the_end() {
    let fixture = Fixture::new();
    fixture.write("capture-1.span.log", &line("a", 1, "start", 10));
    fixture.write("capture-2.span.log", &line("b", 1, "start", 25));
    assert_eq!(double_run(fixture.path()).unwrap().count, 1);
}
