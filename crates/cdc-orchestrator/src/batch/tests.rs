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

/// What [`next_batch`] makes of a case's groups.
#[derive(Debug)]
enum Expected {
    /// A batch of the first `n_groups` groups with `n_changes` keys, holding `key = value` when
    /// given.
    Batch {
        n_groups: usize,
        n_changes: usize,
        holds: Option<(&'static str, &'static str)>,
    },
    /// The first group alone exceeds a limit: the error says this.
    Refused(&'static str),
}

/// Groups, the limits they are batched under, and the expected batch.
struct BatchCase {
    name: &'static str,
    groups: fn() -> Vec<PatchGroup>,
    limits: TxnLimits,
    expected: Expected,
}

/// One group per key `/key<i>` for `i` in `0..n`, each of value `abc<i>`.
fn single_key_groups(n: usize) -> Vec<PatchGroup> {
    (0..n)
        .map(|i| {
            vec![put_patch(
                &format!("/key{i}"),
                format!("abc{i}").into_bytes(),
            )]
        })
        .collect()
}

/// One group of `n` keys `/<prefix><i>`, each of value `v`.
fn wide_group(prefix: &str, n: usize) -> PatchGroup {
    (0..n)
        .map(|i| put_patch(&format!("/{prefix}{i}"), b"v".to_vec()))
        .collect()
}

fn batch_cases() -> Vec<BatchCase> {
    vec![
        // Case 35 (GetBatchChangeState): many small groups fill one transaction's keys.
        BatchCase {
            name: "1000 single-key groups",
            groups: || single_key_groups(1000),
            limits: limits(),
            expected: Expected::Batch {
                n_groups: 128,
                n_changes: 128,
                holds: Some(("/key0", "abc0")),
            },
        },
        BatchCase {
            name: "one group larger than a transaction",
            groups: || vec![vec![put_patch("/key", vec![b'a'; TXN_MAX_SIZE])]],
            limits: limits(),
            expected: Expected::Refused("a single changefeed exceed etcd txn max size"),
        },
        BatchCase {
            name: "one group of more keys than a transaction",
            groups: || vec![wide_group("key", 257)],
            limits: limits(),
            expected: Expected::Refused("a single changefeed exceed etcd txn max ops"),
        },
        // QUIRK (a) fixed: a group of exactly the limit is committed alone instead of spinning.
        BatchCase {
            name: "a group at exactly the limit",
            groups: || {
                let limits = TxnLimits::for_worker(false);
                vec![
                    wide_group("k", limits.max_keys),
                    vec![put_patch("/other", b"v".to_vec())],
                ]
            },
            limits: TxnLimits::for_worker(false),
            expected: Expected::Batch {
                n_groups: 1,
                n_changes: TxnLimits::for_worker(false).max_keys,
                holds: None,
            },
        },
        // The owner key's compare leaves a fenced worker one key less.
        BatchCase {
            name: "a group at the unfenced limit in a fenced worker",
            groups: || vec![wide_group("k", TxnLimits::for_worker(false).max_keys)],
            limits: TxnLimits::for_worker(true),
            expected: Expected::Refused("a single changefeed exceed etcd txn max ops"),
        },
        // A group that would push the batch over the size limit waits for the next batch.
        BatchCase {
            name: "two groups of 700 KiB",
            groups: || {
                vec![
                    vec![put_patch("/big1", vec![b'a'; 700 * 1024])],
                    vec![put_patch("/big2", vec![b'b'; 700 * 1024])],
                ]
            },
            limits: limits(),
            expected: Expected::Batch {
                n_groups: 1,
                n_changes: 1,
                holds: None,
            },
        },
    ]
}

#[test]
fn batch_limits() {
    let base = RawState::new();
    for case in batch_cases() {
        let groups = (case.groups)();
        let name = case.name;
        match (next_batch(&base, &groups, case.limits), case.expected) {
            (
                Ok(batch),
                Expected::Batch {
                    n_groups,
                    n_changes,
                    holds,
                },
            ) => {
                assert!(batch.n_groups <= groups.len(), "{name}");
                assert!(batch.size <= case.limits.max_size, "{name}");
                assert!(batch.changes.len() <= case.limits.max_keys, "{name}");
                assert_eq!(batch.n_groups, n_groups, "{name}");
                assert_eq!(batch.changes.len(), n_changes, "{name}");
                if let Some((key, value)) = holds {
                    assert_eq!(
                        batch.changes.get(key.as_bytes()).unwrap().as_deref(),
                        Some(value.as_bytes()),
                        "{name}"
                    );
                }
            }
            (Err(err), Expected::Refused(message)) => {
                assert!(err.to_string().contains(message), "{name}: {err}");
            }
            (result, expected) => panic!("{name}: {result:?}, expected {expected:?}"),
        }
    }
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
