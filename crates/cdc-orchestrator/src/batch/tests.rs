//! Batching tests: case 35 and the batching properties.

use proptest::prelude::*;

use super::*;
use crate::patch::{PatchOutcome, RawEntry, SingleDataPatch};

fn put_patch(key: &str, value: Vec<u8>) -> Box<dyn crate::patch::DataPatch> {
    Box::new(SingleDataPatch::new(key.as_bytes().to_vec(), move |_| {
        Ok(PatchOutcome::Set(Some(value.clone())))
    }))
}

fn limits() -> TxnLimits {
    TxnLimits {
        max_keys: TXN_MAX_OPS,
        max_size: TXN_MAX_SIZE,
    }
}

// Case 35 (GetBatchChangeState).
#[test]
fn batch_limits() {
    let base = RawState::new();
    let groups: Vec<PatchGroup> = (0..1000)
        .map(|i| {
            vec![put_patch(
                &format!("/key{i}"),
                format!("abc{i}").into_bytes(),
            )]
        })
        .collect();
    let batch = next_batch(&base, &groups, limits()).unwrap();
    assert!(batch.n_groups <= 1000);
    assert!(batch.size <= TXN_MAX_SIZE);
    assert!(batch.changes.len() <= 128);
    assert_eq!(
        batch.changes.get(b"/key0".as_slice()).unwrap().as_deref(),
        Some(b"abc0".as_slice())
    );

    let big = vec![vec![put_patch("/key", vec![b'a'; TXN_MAX_SIZE])]];
    let err = next_batch(&base, &big, limits()).unwrap_err();
    assert!(
        err.to_string()
            .contains("a single changefeed exceed etcd txn max size"),
        "{err}"
    );

    let wide = vec![
        (0..257)
            .map(|i| put_patch(&format!("/key{i}"), b"v".to_vec()))
            .collect::<PatchGroup>(),
    ];
    let err = next_batch(&base, &wide, limits()).unwrap_err();
    assert!(
        err.to_string()
            .contains("a single changefeed exceed etcd txn max ops"),
        "{err}"
    );
}

// QUIRK (a) fixed: a group of exactly the limit is committed alone instead of spinning.
#[test]
fn group_at_exact_limit_is_taken() {
    let base = RawState::new();
    let limits = TxnLimits::for_worker(false);
    let group: PatchGroup = (0..limits.max_keys)
        .map(|i| put_patch(&format!("/k{i}"), b"v".to_vec()))
        .collect();
    let second: PatchGroup = vec![put_patch("/other", b"v".to_vec())];
    let batch = next_batch(&base, &[group, second], limits).unwrap();
    assert_eq!(batch.n_groups, 1);
    assert_eq!(batch.changes.len(), limits.max_keys);
}

/// An append patch: not idempotent, so a double application shows in the value.
fn append_patch(key: Vec<u8>, marker: u32) -> Box<dyn crate::patch::DataPatch> {
    Box::new(SingleDataPatch::new(key, move |old| {
        let mut value = old.map(<[u8]>::to_vec).unwrap_or_default();
        value.extend_from_slice(format!("{marker},").as_bytes());
        Ok(PatchOutcome::Set(Some(value)))
    }))
}

/// The production limits of an unfenced and a fenced worker (1.25 MiB, 127 and 126 keys),
/// and smaller ones that the generated groups hit more often.
fn any_limits() -> impl Strategy<Value = TxnLimits> {
    prop_oneof![
        Just(TxnLimits::for_worker(false)),
        Just(TxnLimits::for_worker(true)),
        (20usize..128).prop_map(|max_keys| TxnLimits {
            max_keys,
            max_size: 256 * 1024,
        }),
    ]
}

#[test]
fn production_limits() {
    assert_eq!(
        TxnLimits::for_worker(false),
        TxnLimits {
            max_keys: 127,
            max_size: 1280 * 1024
        }
    );
    assert_eq!(TxnLimits::for_worker(true).max_keys, 126);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    // Batching never exceeds the limits, never applies a group twice, and commits every
    // accepted group exactly once. Padded keys (up to 12 KB a patch, up to 1,140 keys)
    // reach both the key and the size limit of production.
    #[test]
    fn batching_properties(
        groups in prop::collection::vec(
            prop::collection::vec((0u8..40, 0usize..6_000), 1..20),
            1..60,
        ),
        limits in any_limits(),
    ) {
        // Each patch appends its group's marker, padded so that sizes matter.
        let build = |groups: &[Vec<(u8, usize)>], from: usize| -> Vec<PatchGroup> {
            groups[from..]
                .iter()
                .enumerate()
                .map(|(offset, patches)| {
                    let marker = u32::try_from(from + offset).unwrap();
                    patches
                        .iter()
                        .map(|(key, pad)| {
                            let key = format!("/k{key}/{}", "p".repeat(*pad)).into_bytes();
                            append_patch(key, marker)
                        })
                        .collect()
                })
                .collect()
        };
        let mut base = RawState::new();
        let mut committed = 0usize;
        let mut rounds = 0;
        while committed < groups.len() {
            rounds += 1;
            prop_assert!(rounds <= groups.len(), "batching made no progress");
            let pending = build(&groups, committed);
            let batch = next_batch(&base, &pending, limits).unwrap();
            prop_assert!(batch.n_groups >= 1);
            prop_assert!(batch.changes.len() <= limits.max_keys);
            prop_assert!(batch.size <= limits.max_size);
            // Commit: the batch becomes the new base.
            for (key, value) in batch.changes {
                match value {
                    Some(value) => { base.insert(key, RawEntry { value, mod_revision: 1, create_revision: 1 }); }
                    None => { base.remove(&key); }
                }
            }
            committed += batch.n_groups;
        }
        // Every group's marker appears in each key it touched exactly as often as the group
        // patched that key.
        for (index, patches) in groups.iter().enumerate() {
            for (key, pad) in patches {
                let key = format!("/k{key}/{}", "p".repeat(*pad)).into_bytes();
                let expected = patches
                    .iter()
                    .filter(|(other, other_pad)| format!("/k{other}/{}", "p".repeat(*other_pad)).into_bytes() == key)
                    .count();
                let value = String::from_utf8(base[&key].value.clone()).unwrap();
                let found = value.split(',').filter(|m| *m == index.to_string()).count();
                prop_assert_eq!(found, expected);
            }
        }
    }
}
