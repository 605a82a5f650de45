//! Tests of the span computation.

use super::*;

fn cf() -> ChangeFeedId {
    ChangeFeedId::default_namespace("cf")
}

#[test]
fn range_end_increments_the_last_byte_below_0xff() {
    assert_eq!(prefix_range_end(b"/demo/"), Some(b"/demo0".to_vec()));
    assert_eq!(prefix_range_end(b"a\xff\xff"), Some(b"b".to_vec()));
    assert_eq!(prefix_range_end(b""), None);
    assert_eq!(prefix_range_end(b"\xff"), None);
}

#[test]
fn prefixes_must_be_present_bounded_and_disjoint() {
    assert_eq!(check_prefixes(&[]), Err(PrefixProblem::Empty));
    assert_eq!(
        check_prefixes(&[b"".to_vec()]),
        Err(PrefixProblem::Unbounded(Vec::new()))
    );
    assert_eq!(
        check_prefixes(&[b"/a/".to_vec(), b"/a/b".to_vec()]),
        Err(PrefixProblem::Overlap(b"/a/".to_vec(), b"/a/b".to_vec()))
    );
    assert_eq!(
        check_prefixes(&[b"/a".to_vec(), b"/a".to_vec()]),
        Err(PrefixProblem::Overlap(b"/a".to_vec(), b"/a".to_vec()))
    );
    assert_eq!(
        check_prefixes(&[b"/c/x".to_vec(), b"/b/".to_vec(), b"/c/".to_vec()]),
        Err(PrefixProblem::Overlap(b"/c/".to_vec(), b"/c/x".to_vec()))
    );
    assert_eq!(check_prefixes(&[b"/a/".to_vec(), b"/b/".to_vec()]), Ok(()));
    // Many prefixes are checked quickly.
    let many: Vec<Vec<u8>> = (0..100_000)
        .map(|i| format!("/p/{i}/").into_bytes())
        .collect();
    assert_eq!(check_prefixes(&many), Ok(()));
}

#[test]
fn split_keys_cut_present_keys_into_equal_counts() {
    let keys: Vec<Vec<u8>> = (0..12).map(|i| format!("/p/{i:02}").into_bytes()).collect();
    let splits = choose_split_keys(b"/p/", &keys, 4);
    assert_eq!(
        splits,
        vec![b"/p/03".to_vec(), b"/p/06".to_vec(), b"/p/09".to_vec()]
    );
    let spans = compute_spans(&cf(), &[b"/p/".to_vec()], &[splits]);
    assert_eq!(spans.len(), 4);
    for span in &spans {
        let n = keys
            .iter()
            .filter(|k| **k >= span.start_key && **k < span.end_key)
            .count();
        assert_eq!(n, 3, "{span:?}");
    }
}

#[test]
fn split_keys_ignore_keys_outside_the_prefix_and_the_prefix_itself() {
    let keys = vec![
        b"/a".to_vec(),
        b"/p/".to_vec(),
        b"/p/1".to_vec(),
        b"/p/2".to_vec(),
        b"/q".to_vec(),
    ];
    let splits = choose_split_keys(b"/p/", &keys, 3);
    assert_eq!(splits, vec![b"/p/1".to_vec(), b"/p/2".to_vec()]);
}

#[test]
fn too_few_keys_split_evenly_by_the_next_two_bytes() {
    let splits = choose_split_keys(b"/p/", &[], 4);
    assert_eq!(
        splits,
        vec![
            b"/p/\x40\x00".to_vec(),
            b"/p/\x80\x00".to_vec(),
            b"/p/\xc0\x00".to_vec()
        ]
    );
    assert_eq!(choose_split_keys(b"/p/", &[], 1), Vec::<Vec<u8>>::new());
}

#[test]
fn spans_are_numbered_in_prefix_then_split_order_with_explicit_ends() {
    let prefixes = vec![b"/a/".to_vec(), b"/b/".to_vec()];
    let splits = vec![vec![b"/a/m".to_vec()], vec![]];
    let spans = compute_spans(&cf(), &prefixes, &splits);
    let got: Vec<(u64, &[u8], &[u8])> = spans
        .iter()
        .map(|s| (s.span_id.0, s.start_key.as_slice(), s.end_key.as_slice()))
        .collect();
    assert_eq!(
        got,
        vec![
            (0, &b"/a/"[..], &b"/a/m"[..]),
            (1, &b"/a/m"[..], &b"/a0"[..]),
            (2, &b"/b/"[..], &b"/b0"[..]),
        ]
    );
    // Every owner computes the same spans.
    assert_eq!(spans, compute_spans(&cf(), &prefixes, &splits));
}

#[test]
fn split_keys_out_of_range_are_ignored() {
    let spans = compute_spans(
        &cf(),
        &[b"/a/".to_vec()],
        &[vec![b"/a/".to_vec(), b"/z".to_vec()]],
    );
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].end_key, b"/a0".to_vec());
}
